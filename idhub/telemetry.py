"""Domain events as metrics and as security log lines: one consumer, wired in :func:`idhub.context.build_context`.

Committed events reach :class:`Telemetry` through the event bus; refused attempts whose transaction
rolled back (a wrong password, a refused token request) reach it through the unit of work's
``after_rollback`` hook instead. A unit of work either commits (the bus gets every event) or rolls
back (the hook gets the refusals only), never both, so nothing is counted twice; an attempt whose
transaction collided and was run again is cleared before it ends and counted once, for the run
that ended.

Security events go to the ``idhub.security`` logger, one record each, with their fields in ``extra``
and an ``event`` key naming them (``signin.failure``, ``signin.lockout``, ``client.auth_failure``,
``token.reuse``, ``user.disabled``, ``user.deleted``). They carry identifiers and reason codes only:
never a password, token or secret, and never the username a failed sign-in typed (people type their
password into that field). The request id comes with every record (the log record factory); the
audit entry with the same request id says who acted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from idhub import request_context
from idhub.events import (
    BrokeredSignIn,
    DomainEvent,
    GrantRevoked,
    RevocationRecorded,
    SignIn,
    TokenRequestRefused,
    TokensIssued,
    UserDeleted,
    UserDisabled,
)
from idhub.metrics import Metrics
from idhub.storage.uow import EventBus, UnitOfWork

security = logging.getLogger("idhub.security")

# Grant types a label may name (idhub.oidc.grants.GRANTS; a test keeps them equal). The grant_type of a
# refused request is whatever the client sent: anything else is ``other``, so labels stay few.
GRANT_TYPES = frozenset({"authorization_code", "refresh_token", "client_credentials"})
# GrantRevoked reasons that mean a single-use credential was presented twice (RFC 9700 §4.14.2,
# RFC 6749 §4.1.2): the grant was revoked because its tokens may be in the wrong hands.
REUSE_REASONS = {"refresh token reused": "refresh_token", "authorization code replayed": "authorization_code"}
MAX_FIELD = 64  # a client-chosen value (a claimed client_id) is cut to this many characters


class Telemetry:
    """Count sign-ins, token requests and revocations, and log the security events among them."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._refusals: dict[type[DomainEvent], Callable[[Any], None]] = {
            SignIn: self.on_sign_in,
            BrokeredSignIn: self.on_brokered_sign_in,
            TokenRequestRefused: self.on_token_refused,
        }

    def subscribe(self, bus: EventBus) -> None:
        """Consume the committed events this module counts or logs (one consumer per event type)."""
        bus.subscribe(SignIn, self.on_sign_in)
        bus.subscribe(BrokeredSignIn, self.on_brokered_sign_in)
        bus.subscribe(TokensIssued, self.on_tokens_issued)
        bus.subscribe(TokenRequestRefused, self.on_token_refused)
        bus.subscribe(RevocationRecorded, self.on_revocation)
        bus.subscribe(GrantRevoked, self.on_grant_revoked)
        bus.subscribe(UserDisabled, self.on_user_disabled)
        bus.subscribe(UserDeleted, self.on_user_deleted)

    async def after_rollback(self, uow: UnitOfWork, events: Sequence[DomainEvent]) -> None:
        """Count and log the refused attempts of a unit of work that rolled back (the unit of work's hook)."""
        for event in events:
            handler = self._refusals.get(type(event))
            if handler is not None:
                handler(event)

    # --- sign-in ----------------------------------------------------------------------------------
    def on_sign_in(self, event: SignIn) -> None:
        """Count a password sign-in; log a failure or a lockout (never the username typed)."""
        outcome = event.result
        self.metrics.count_sign_in("password", outcome)
        if outcome == "success" or not security.isEnabledFor(logging.WARNING):
            return
        user_id = str(event.user_id) if event.user_id is not None else None
        fields = {
            "event": "signin.lockout" if outcome == "blocked" else "signin.failure",
            "method": "password",
            "tenant_id": str(event.tenant_id),
            "user_id": user_id,
            "reason": event.reason,
            "client_address": _address(),
        }
        if outcome == "blocked":
            security.warning("sign-in refused by the abuse limits (user %s)", user_id or "unknown", extra=fields)
        else:
            security.warning("sign-in failed (user %s): %s", user_id or "unknown", event.reason, extra=fields)

    def on_brokered_sign_in(self, event: BrokeredSignIn) -> None:
        """Count a sign-in through an upstream; log a refusal."""
        outcome = event.result
        self.metrics.count_sign_in("upstream", outcome)
        if outcome == "success" or not security.isEnabledFor(logging.WARNING):
            return
        fields = {
            "event": "signin.lockout" if outcome == "blocked" else "signin.failure",
            "method": "upstream",
            "tenant_id": str(event.tenant_id),
            "alias": event.alias,
            "user_id": str(event.user_id) if event.user_id is not None else None,
            "reason": event.reason,
            "client_address": _address(),
        }
        security.warning("sign-in through upstream %s refused: %s", event.alias, event.reason, extra=fields)

    # --- tokens -----------------------------------------------------------------------------------
    def on_tokens_issued(self, event: TokensIssued) -> None:
        """Count a token request that issued tokens."""
        grant_type = event.grant_type
        self.metrics.count_token_request("token", grant_type if grant_type in GRANT_TYPES else "other", "issued")

    def on_token_refused(self, event: TokenRequestRefused) -> None:
        """Count a refused token, introspection or revocation request; log a client authentication failure."""
        grant_type = event.grant_type
        label = "" if grant_type is None else (grant_type if grant_type in GRANT_TYPES else "other")
        self.metrics.count_token_request(event.endpoint, label, event.error)
        if event.error != "invalid_client" or not security.isEnabledFor(logging.WARNING):
            return
        client_id = _clip(event.client_id)
        fields = {
            "event": "client.auth_failure",
            "tenant_id": str(event.tenant_id),
            "client_id": client_id,
            "endpoint": event.endpoint,
            "reason": event.reason,
            "client_address": _address(),
        }
        security.warning(
            "client authentication failed at %s (client %s): %s",
            event.endpoint,
            client_id,
            event.reason or "invalid_client",
            extra=fields,
        )

    # --- revocation -------------------------------------------------------------------------------
    def on_revocation(self, event: RevocationRecorded) -> None:
        """Count a revocation recorded by this process."""
        self.metrics.count_revocation(event.kind)

    def on_grant_revoked(self, event: GrantRevoked) -> None:
        """Log a grant revoked because a refresh token or an authorization code was used twice."""
        token_type = REUSE_REASONS.get(event.reason)
        if token_type is None:
            return
        security.warning(
            "%s reuse detected: grant %s revoked",
            token_type,
            event.grant_id,
            extra={
                "event": "token.reuse",
                "tenant_id": str(event.tenant_id),
                "grant_id": event.grant_id,
                "token_type": token_type,
                "client_address": _address(),
            },
        )

    # --- directory --------------------------------------------------------------------------------
    def on_user_disabled(self, event: UserDisabled) -> None:
        """Log that a user was deactivated (SCIM, the admin API or the CLI)."""
        security.info(
            "user %s deactivated",
            event.user_id,
            extra={"event": "user.disabled", "tenant_id": str(event.tenant_id), "user_id": str(event.user_id)},
        )

    def on_user_deleted(self, event: UserDeleted) -> None:
        """Log that a user was deleted (archived and cut off)."""
        security.info(
            "user %s deleted",
            event.user_id,
            extra={"event": "user.deleted", "tenant_id": str(event.tenant_id), "user_id": str(event.user_id)},
        )


def _address() -> str | None:
    """Return the caller's address of the request being served (``None`` outside a request)."""
    info = request_context.current()
    return info.address if info is not None else None


def _clip(value: str) -> str:
    """Return a client-chosen value fit for a log line: printable, at most :data:`MAX_FIELD` characters."""
    if len(value) <= MAX_FIELD and value.isprintable():
        return value
    return repr(value[:MAX_FIELD])
