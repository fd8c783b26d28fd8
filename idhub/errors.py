"""Domain errors raised by services; each wire surface renders them in its own format."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a domain service raises on purpose."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    """The addressed object does not exist (or is not visible to the caller)."""


class Conflict(DomainError):
    """The change collides with existing state (uniqueness, concurrent write)."""


class Forbidden(DomainError):
    """The caller may not perform this change."""


class Invalid(DomainError):
    """The input breaks a rule of the domain."""
