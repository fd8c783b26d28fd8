"""Errors of brokering: the upstream is unreachable, or what it answered must not be trusted.

Both are :class:`~idhub.errors.DomainError`\\ s: ``detail`` is what the person may be shown (nothing
about which check failed), ``internal`` is what the operator reads in the log and the audit entry.
"""

from __future__ import annotations

from idhub.errors import Invalid, Unavailable


class UpstreamUnavailable(Unavailable):
    """The upstream did not answer in time, answered with a server error, or could not be reached."""

    def __init__(self, internal: str, *, retry_after: int = 30) -> None:
        super().__init__(
            "The identity provider is not responding. Try again later.", internal=internal, retry_after=retry_after
        )


class UpstreamRefused(Invalid):
    """The upstream's answer failed a check (signature, issuer, audience, nonce, state, ...): fail closed.

    ``reason`` is a short machine-readable code for the audit entry (``bad_signature``, ``wrong_issuer``...).
    """

    def __init__(self, reason: str, internal: str | None = None) -> None:
        super().__init__("Sign-in with the identity provider failed.", internal=internal or reason)
        self.reason = reason


class UpstreamConfigError(Invalid):
    """An upstream's configuration is unusable (bad metadata, an address that is not allowed, ...)."""
