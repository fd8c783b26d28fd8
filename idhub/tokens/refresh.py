"""Refresh tokens (RFC 6749 §6, RFC 9700 §4.14.2) and revocation by grant.

Refresh tokens are opaque random strings stored only as keyed hashes. Each use rotates the token with
a conditional ``UPDATE`` that exactly one request can win; presenting a token that was already rotated
means it leaked, so the whole family (every refresh token of the grant, the grant, and every access
token it yielded) is revoked.

Lock order: whatever changes a grant's family locks the ``grant`` row first (:func:`lock_grant_of`, or
the ``UPDATE grant`` that starts :func:`revoke_grant`), and only then its authorization code or refresh
token rows. Parallel requests on one family therefore queue on one row instead of locking the token rows
in opposite orders (a deadlock: the rotation's losers lock the rotated token, then the grant; a later
reuse locks the grant, then the tokens).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.crypto.secrets import SecretHasher, random_token
from idhub.errors import Invalid
from idhub.events import GrantRevoked
from idhub.storage.base import utcnow
from idhub.storage.models import Grant, RefreshToken, User
from idhub.storage.single_use import consume
from idhub.storage.uow import UnitOfWork
from idhub.tokens.revocation import record_revocation

# Covers the longest access token lifetime the settings allow (TokenSettings.access_token_ttl <= 1 day).
GRANT_REVOCATION_TTL = 86400 + 60


class RefreshTokenRejected(Invalid):
    """The refresh token is unknown, expired, revoked, foreign, or was replayed (``reused`` is then true).

    The caller learns only that the token is not valid; ``internal`` says why, for the log.
    """

    def __init__(self, reason: str, *, reused: bool = False, grant_id: str | None = None) -> None:
        super().__init__("the refresh token is invalid or expired", internal=reason)
        self.reused = reused
        self.grant_id = grant_id


@dataclass(frozen=True, slots=True)
class RefreshTokenInfo:
    """What a refresh token carries (a snapshot of its row)."""

    tenant_id: uuid.UUID
    client_pk: uuid.UUID
    grant_id: str
    user_id: uuid.UUID | None
    session_id: str | None
    scope: str
    resources: tuple[str, ...]
    auth_time: datetime | None
    amr: tuple[str, ...]
    created_at: datetime
    expires_at: datetime


_COLUMNS = (
    RefreshToken.tenant_id,
    RefreshToken.client_id,
    RefreshToken.grant_id,
    RefreshToken.user_id,
    RefreshToken.session_id,
    RefreshToken.scope,
    RefreshToken.resources,
    RefreshToken.auth_time,
    RefreshToken.amr,
    RefreshToken.created_at,
    RefreshToken.expires_at,
)


def _info(row: tuple[Any, ...]) -> RefreshTokenInfo:
    tenant_id, client_pk, grant_id, user_id, session_id, scope, resources, auth_time, amr, created, expires = row
    return RefreshTokenInfo(
        tenant_id=tenant_id,
        client_pk=client_pk,
        grant_id=str(grant_id),
        user_id=user_id,
        session_id=session_id,
        scope=str(scope),
        resources=tuple(resources or ()),
        auth_time=auth_time,
        amr=tuple(amr or ()),
        created_at=created,
        expires_at=expires,
    )


def refresh_expiry(*, grant_created_at: datetime, now: datetime, ttl: int, idle_ttl: int) -> datetime:
    """Return when a new refresh token expires: the earlier of the absolute and the idle deadline."""
    return min(grant_created_at + timedelta(seconds=ttl), now + timedelta(seconds=idle_ttl))


async def issue_refresh_token(
    session: AsyncSession,
    *,
    hasher: SecretHasher,
    tenant_id: uuid.UUID,
    client_pk: uuid.UUID,
    grant_id: str,
    user_id: uuid.UUID | None,
    session_id: str | None,
    scope: str,
    resources: tuple[str, ...] | list[str],
    auth_time: datetime | None,
    amr: tuple[str, ...] | list[str],
    expires_at: datetime,
    now: datetime | None = None,
) -> str:
    """Store a new refresh token (only its keyed hash) and return it."""
    token = random_token(32)
    session.add(
        RefreshToken(
            token_hash=hasher.hash(token),
            tenant_id=tenant_id,
            client_id=client_pk,
            grant_id=grant_id,
            user_id=user_id,
            session_id=session_id,
            scope=scope,
            resources=list(resources),
            auth_time=auth_time,
            amr=list(amr),
            created_at=now or utcnow(),
            expires_at=expires_at,
        )
    )
    await session.flush()
    return token


async def lock_grant_of(
    session: AsyncSession, model: Any, *, tenant_id: uuid.UUID, where: ColumnElement[bool]
) -> str | None:
    """Lock the grant of the ``model`` row (a code or a refresh token) matching ``where``; return its id.

    The first step of every change to a grant's family (see the lock order above). ``FOR NO KEY UPDATE``
    queues writers of the same family behind each other but not the foreign-key checks of new rows that
    point at the grant. ``None``: no such row in this tenant. SQLite has no row locks (and needs none:
    it runs one writer at a time).
    """
    found = (await session.execute(_grant_lock(select(Grant.id), model, tenant_id=tenant_id, where=where))).scalar()
    return None if found is None else str(found)


def _grant_lock(columns: Any, model: Any, *, tenant_id: uuid.UUID, where: ColumnElement[bool]) -> Any:
    """Return ``columns`` (a select on the grant) restricted to the grant of the ``model`` row ``where``, locked."""
    return (
        columns.join(model, model.grant_id == Grant.id)
        .where(model.tenant_id == tenant_id, Grant.tenant_id == tenant_id, where)
        .with_for_update(of=Grant, key_share=True)
    )


async def lock_grant_with_user(
    session: AsyncSession, model: Any, *, tenant_id: uuid.UUID, where: ColumnElement[bool]
) -> Any:
    """Do :func:`lock_grant_of`, reading the locked grant's ``id``, ``created_at``, ``revoked_at`` and ``User``.

    One round trip instead of two: the grant is read under the lock that keeps its revocation out
    meanwhile, and its user in the same statement (not locked, as a separate read would not be either).
    ``None``: no such row in this tenant.
    """
    columns = select(Grant.id, Grant.created_at, Grant.revoked_at, User).join(User, User.id == Grant.user_id)
    return (await session.execute(_grant_lock(columns, model, tenant_id=tenant_id, where=where))).first()


async def rotate_refresh_token(
    session: AsyncSession, *, hasher: SecretHasher, tenant_id: uuid.UUID, client_pk: uuid.UUID, token: str
) -> RefreshTokenInfo:
    """Mark a live refresh token of this client rotated and return what it carried (RFC 9700 §4.14.2).

    The family's grant is locked first, so parallel uses of one token queue up; then the conditional
    ``UPDATE`` has exactly one winner across processes. When it does not win, the token is looked at:
    one that was already rotated (whether long ago or by a parallel request a moment earlier) raises
    ``RefreshTokenRejected(reused=True)`` and the caller revokes the family; anything else is a plain
    rejection.
    """
    if len(token) > 512:
        raise RefreshTokenRejected("unknown refresh token")
    token_hash = hasher.hash(token)
    grant_id = await lock_grant_of(
        session, RefreshToken, tenant_id=tenant_id, where=RefreshToken.token_hash == token_hash
    )
    if grant_id is None:
        raise RefreshTokenRejected("unknown refresh token")
    now = utcnow()
    row = await consume(
        session,
        RefreshToken,
        used=RefreshToken.rotated_at,
        where=(
            RefreshToken.token_hash == token_hash,
            RefreshToken.tenant_id == tenant_id,
            RefreshToken.client_id == client_pk,
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > now,
        ),
        now=now,
        returning=_COLUMNS,
    )
    if row is not None:
        return _info(tuple(row))
    existing = await session.execute(
        select(RefreshToken.rotated_at, RefreshToken.grant_id).where(
            RefreshToken.token_hash == token_hash, RefreshToken.tenant_id == tenant_id
        )
    )
    found = existing.first()
    if found is None:
        raise RefreshTokenRejected("unknown refresh token")
    if found.rotated_at is not None:
        # A rotated token came back: it leaked (whoever presents it). RFC 9700 §4.14.2.
        raise RefreshTokenRejected("refresh token was already used", reused=True, grant_id=str(found.grant_id))
    raise RefreshTokenRejected("refresh token is expired, revoked or belongs to another client")


async def find_refresh_token(
    session: AsyncSession, *, hasher: SecretHasher, tenant_id: uuid.UUID, token: str
) -> tuple[RefreshTokenInfo, bool] | None:
    """Return a refresh token's data and whether it is live (not rotated, revoked or expired), or ``None``."""
    if len(token) > 512:
        return None
    result = await session.execute(
        select(*_COLUMNS, RefreshToken.rotated_at, RefreshToken.revoked_at, Grant.revoked_at)
        .join(Grant, Grant.id == RefreshToken.grant_id)
        .where(RefreshToken.token_hash == hasher.hash(token), RefreshToken.tenant_id == tenant_id)
    )
    row = result.first()
    if row is None:
        return None
    values = tuple(row)
    info = _info(values[: len(_COLUMNS)])
    rotated_at, revoked_at, grant_revoked_at = values[len(_COLUMNS) :]
    live = rotated_at is None and revoked_at is None and grant_revoked_at is None and info.expires_at > utcnow()
    return info, live


async def revoke_grant(
    uow: UnitOfWork, tenant_id: uuid.UUID, grant_id: str, *, reason: str, expires_in: int = GRANT_REVOCATION_TTL
) -> None:
    """Revoke a grant with every refresh token and access token it yielded (RFC 7009 §2.1, RFC 9700 §4.14.2).

    Access tokens are JWTs: a ``grant`` revocation entry makes every process refuse them at once
    after commit. ``expires_in`` must cover the longest access token lifetime.
    """
    session = uow.session
    now = utcnow()
    await session.execute(
        update(Grant)
        .where(Grant.tenant_id == tenant_id, Grant.id == grant_id, Grant.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.tenant_id == tenant_id, RefreshToken.grant_id == grant_id, RefreshToken.revoked_at.is_(None)
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    await record_revocation(uow, tenant_id=tenant_id, kind="grant", value=grant_id, expires_in=expires_in)
    uow.raise_event(GrantRevoked(tenant_id=tenant_id, grant_id=grant_id, reason=reason))
