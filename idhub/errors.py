"""Domain errors raised by services; each wire surface renders them in its own format.

``detail`` is written for the caller and says what the caller can fix; it never names internal state
(that an account is disabled, that a code was already used). What an operator needs to know goes in
``internal``, which the surfaces log with the request id and never send.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a domain service raises on purpose."""

    def __init__(self, detail: str = "", *, internal: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.internal = internal


class NotFound(DomainError):
    """The addressed object does not exist (or is not visible to the caller)."""


class Conflict(DomainError):
    """The change collides with existing state (uniqueness, concurrent write)."""


class PreconditionFailed(Conflict):
    """The object changed since the version the caller named (``If-Match``, RFC 7232 §3.1)."""


class Forbidden(DomainError):
    """The caller may not perform this change."""


class Invalid(DomainError):
    """The input breaks a rule of the domain."""


class Unavailable(DomainError):
    """A dependency (the database, a key, an upstream) cannot serve the request now; retry later."""

    def __init__(self, detail: str = "", *, internal: str | None = None, retry_after: int = 5) -> None:
        super().__init__(detail, internal=internal)
        self.retry_after = retry_after
