"""Refresh tokens (RFC 6749 §6, RFC 9700 §4.14.2) and revocation by grant.

Refresh tokens are opaque random strings stored only as keyed hashes. Each use rotates the token with
a conditional ``UPDATE`` that exactly one request can win; presenting a token that was already rotated
means it leaked, so the whole family (every refresh token of the grant, the grant, and every access
token it yielded) is revoked.

Lock order: whatever changes a grant's family locks the ``grant`` row first (:func:`lock_grant_of_token`,
:func:`lock_grant_of_code_with_user`, or the ``UPDATE grant`` that starts :func:`revoke_grant`), and only
then its authorization code or refresh token rows. Parallel requests on one family therefore queue on one
row instead of locking the token rows in opposite orders (a deadlock: the rotation's losers lock the
rotated token, then the grant; a later reuse locks the grant, then the tokens).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.crypto.secrets import SecretHasher, random_token
from idhub.errors import Invalid
from idhub.events import GrantRevoked, RevocationRecorded
from idhub.storage.base import utcnow
from idhub.storage.models import Grant, RefreshToken
from idhub.storage.single_use import consume, consuming
from idhub.storage.tables import (
    AUTHORIZATION_CODES,
    GRANT_AND_USER_COLUMNS,
    GRANTS,
    REFRESH_TOKENS,
    REVOCATIONS,
    USERS,
)
from idhub.storage.uow import UnitOfWork
from idhub.tokens.revocation import record_revocation

# Covers the longest access token lifetime the settings allow (TokenSettings.access_token_ttl <= 1 day).
GRANT_REVOCATION_TTL = 86400 + 60
# Grants per statement of a bulk revocation: far below every driver's limit on bound parameters.
REVOKE_CHUNK = 1000


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
_TOKEN = REFRESH_TOKENS.c
_GRANT = GRANTS.c
_NEW_TOKEN = insert(REFRESH_TOKENS)
# Rotates a live refresh token of this client (RFC 9700 §4.14.2), returning what it carried.
_ROTATE = consuming(
    REFRESH_TOKENS,
    used="rotated_at",
    where=(
        _TOKEN.token_hash == bindparam("p_token_hash"),
        _TOKEN.tenant_id == bindparam("p_tenant_id"),
        _TOKEN.client_id == bindparam("p_client_id"),
        _TOKEN.revoked_at.is_(None),
        _TOKEN.expires_at > bindparam("p_now"),
    ),
    returning=tuple(_TOKEN[column.key] for column in _COLUMNS),
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
    values = {
        "token_hash": hasher.hash(token),
        "tenant_id": tenant_id,
        "client_id": client_pk,
        "grant_id": grant_id,
        "user_id": user_id,
        "session_id": session_id,
        "scope": scope,
        "resources": list(resources),
        "auth_time": auth_time,
        "amr": list(amr),
        "created_at": now or utcnow(),
        "expires_at": expires_at,
    }
    await session.execute(_NEW_TOKEN, values)
    return token


def _grant_lock(columns: Sequence[Any], family: Table, hashed: Any) -> Select[Any]:
    """Return a select of ``columns`` on the grant of the ``family`` row (a code or refresh token) whose
    hash is ``p_hash`` in tenant ``p_tenant_id``, locking the grant (see the lock order above).

    ``FOR NO KEY UPDATE`` queues writers of the same family behind each other but not the foreign-key
    checks of new rows that point at the grant. SQLite has no row locks (and needs none: it runs one
    writer at a time).
    """
    return (
        select(*columns)
        .select_from(GRANTS.join(family, family.c.grant_id == _GRANT.id))
        .where(
            hashed == bindparam("p_hash"),
            family.c.tenant_id == bindparam("p_tenant_id"),
            _GRANT.tenant_id == bindparam("p_tenant_id"),
        )
        .with_for_update(of=GRANTS, key_share=True)
    )


# The grant with what a token response reads of its user (liveness and claims), under the grant's lock.
_WITH_USER = (_GRANT.id.label("grant_id"), *GRANT_AND_USER_COLUMNS)
_LOCK_OF_TOKEN = _grant_lock((_GRANT.id,), REFRESH_TOKENS, _TOKEN.token_hash)
_LOCK_OF_CODE_WITH_USER = _grant_lock(_WITH_USER, AUTHORIZATION_CODES, AUTHORIZATION_CODES.c.code_hash).join(
    USERS, USERS.c.id == _GRANT.user_id
)


async def lock_grant_of_token(session: AsyncSession, *, tenant_id: uuid.UUID, token_hash: str) -> str | None:
    """Lock the grant of the refresh token with hash ``token_hash``; return its id (``None``: no such token here).

    The first step of every change to a grant's family (see the lock order above).
    """
    found = await session.execute(_LOCK_OF_TOKEN, {"p_hash": token_hash, "p_tenant_id": tenant_id})
    grant_id = found.scalar()
    return None if grant_id is None else str(grant_id)


async def lock_grant_of_code_with_user(session: AsyncSession, *, tenant_id: uuid.UUID, code_hash: str) -> Any:
    """Lock the grant of the authorization code with hash ``code_hash``, reading it and its user.

    One round trip instead of two: the grant is read under the lock that keeps its revocation out
    meanwhile, and its user in the same statement (not locked, as a separate read would not be either).
    The row has ``grant_id`` and the columns of ``GRANT_AND_USER_COLUMNS``; ``None``: no such code here.
    """
    return (await session.execute(_LOCK_OF_CODE_WITH_USER, {"p_hash": code_hash, "p_tenant_id": tenant_id})).first()


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
    grant_id = await lock_grant_of_token(session, tenant_id=tenant_id, token_hash=token_hash)
    if grant_id is None:
        raise RefreshTokenRejected("unknown refresh token")
    now = utcnow()
    parameters = {"p_token_hash": token_hash, "p_tenant_id": tenant_id, "p_client_id": client_pk, "p_now": now}
    row = await consume(session, _ROTATE, parameters)
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


_REVOKE_GRANTS = (
    update(GRANTS)
    .where(
        _GRANT.tenant_id == bindparam("p_tenant_id"),
        _GRANT.id.in_(bindparam("p_grant_ids", expanding=True)),
        _GRANT.revoked_at.is_(None),
    )
    .values(revoked_at=bindparam("p_now"))
    .returning(_GRANT.id)
)
_REVOKE_FAMILIES = (
    update(REFRESH_TOKENS)
    .where(
        _TOKEN.tenant_id == bindparam("p_tenant_id"),
        _TOKEN.grant_id.in_(bindparam("p_grant_ids", expanding=True)),
        _TOKEN.revoked_at.is_(None),
    )
    .values(revoked_at=bindparam("p_now"))
)
_NEW_REVOCATIONS = insert(REVOCATIONS)


async def revoke_grants(
    uow: UnitOfWork,
    tenant_id: uuid.UUID,
    grant_ids: Collection[str],
    *,
    reason: str,
    expires_in: int = GRANT_REVOCATION_TTL,
) -> list[str]:
    """Revoke many grants as :func:`revoke_grant` does one, with a few statements per thousand grants.

    Grants are locked in id order (every bulk revocation takes them in the same order), their refresh
    tokens revoked, and one ``grant`` revocation entry per grant makes every process refuse their access
    tokens once this commits. Returns the grants that were still live (already revoked ones are skipped).
    """
    session = uow.session
    now = utcnow()
    expires_at = now + timedelta(seconds=expires_in)
    ordered = sorted(set(grant_ids))
    revoked: list[str] = []
    for start in range(0, len(ordered), REVOKE_CHUNK):
        chunk = ordered[start : start + REVOKE_CHUNK]
        parameters = {"p_tenant_id": tenant_id, "p_grant_ids": chunk, "p_now": now}
        live = [str(grant_id) for grant_id in (await session.execute(_REVOKE_GRANTS, parameters)).scalars()]
        if not live:
            continue
        await session.execute(_REVOKE_FAMILIES, parameters | {"p_grant_ids": live})
        await session.execute(
            _NEW_REVOCATIONS,
            [
                {
                    "tenant_id": tenant_id,
                    "kind": "grant",
                    "value": grant_id,
                    "created_at": now,
                    "expires_at": expires_at,
                }
                for grant_id in live
            ],
        )
        for grant_id in live:
            uow.raise_event(
                RevocationRecorded(
                    tenant_id=tenant_id,
                    kind="grant",
                    value=grant_id,
                    created_at=now.timestamp(),
                    expires_at=expires_at.timestamp(),
                )
            )
            uow.raise_event(GrantRevoked(tenant_id=tenant_id, grant_id=grant_id, reason=reason))
        revoked.extend(live)
    return revoked
