"""SSO sessions: one row per signed-in browser, the cookie carries a secret stored only as a keyed hash."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.crypto.secrets import SecretHasher, random_token
from idhub.errors import NotFound
from idhub.events import SessionRevoked
from idhub.settings import SessionSettings
from idhub.storage.base import utcnow
from idhub.storage.engine import is_postgresql
from idhub.storage.models import Grant, RefreshToken, UserSession
from idhub.storage.tables import USER_SESSIONS, USERS
from idhub.storage.uow import UnitOfWork

# Writing last_seen_at on every page view would cost a write per request; a coarse step is enough
# for an idle timeout measured in minutes.
TOUCH_INTERVAL = timedelta(seconds=30)
MAX_COOKIE_LENGTH = 256
MAX_ACR_LENGTH = 255  # the width of ``user_session.acr``

# Built once, the values given at execute time, on the table (not the mapped class: no ORM step), see
# idhub.storage.tables. Parameters are named apart from the columns, which SQLAlchemy reserves in
# INSERT and UPDATE.
_END_BY_HASH = (
    update(USER_SESSIONS)
    .where(
        USER_SESSIONS.c.tenant_id == bindparam("p_tenant_id"),
        USER_SESSIONS.c.token_hash == bindparam("p_hash"),
        USER_SESSIONS.c.revoked_at.is_(None),
    )
    .values(revoked_at=bindparam("p_now"))
)
_NEW_SESSION = insert(USER_SESSIONS)
_SESSION_COLUMNS = (
    "id", "tenant_id", "user_id", "token_hash", "auth_time", "amr", "acr", "link_id", "created_at",
    "last_seen_at", "expires_at",
)  # fmt: skip
_NEW_ENDING_PREVIOUS = (
    insert(USER_SESSIONS)
    .values({name: bindparam(f"p_{name}") for name in _SESSION_COLUMNS})
    .add_cte(_END_BY_HASH.returning(USER_SESSIONS.c.id).cte("ended"))
)
# The session a cookie names, with whether its user may still sign in; touched at most every TOUCH_INTERVAL.
_BY_HASH = (
    select(
        USER_SESSIONS.c.id,
        USER_SESSIONS.c.user_id,
        USER_SESSIONS.c.auth_time,
        USER_SESSIONS.c.amr,
        USER_SESSIONS.c.acr,
        USER_SESSIONS.c.revoked_at,
        USER_SESSIONS.c.expires_at,
        USER_SESSIONS.c.last_seen_at,
        USERS.c.enabled,
    )
    .join(USERS, USERS.c.id == USER_SESSIONS.c.user_id)
    .where(USER_SESSIONS.c.token_hash == bindparam("p_hash"), USER_SESSIONS.c.tenant_id == bindparam("p_tenant_id"))
)
_TOUCH = update(USER_SESSIONS).where(USER_SESSIONS.c.id == bindparam("p_id")).values(last_seen_at=bindparam("p_now"))


@dataclass(frozen=True, slots=True)
class SsoSession:
    """A live SSO session as seen by the authorization and logout endpoints."""

    id: str
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    auth_time: datetime
    amr: tuple[str, ...]
    acr: str | None = None

    @property
    def subject(self) -> str:
        """Return the ``sub`` of the signed-in user."""
        return str(self.user_id)


def cookie_path(tenant_slug: str) -> str:
    """Return the cookie path: one tenant's cookies never reach another tenant's pages."""
    return f"/tenants/{tenant_slug}"


async def create_session(
    session: AsyncSession,
    *,
    hasher: SecretHasher,
    settings: SessionSettings,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    amr: list[str],
    acr: str | None = None,
    link_id: uuid.UUID | None = None,
    previous_cookie: str | None = None,
) -> tuple[SsoSession, str]:
    """Start a new SSO session and return it with its cookie value.

    ``amr`` and ``acr`` say how the person signed in (RFC 8176, OIDC Core §2; an ``acr`` longer than
    255 characters is not kept); ``link_id`` is the linked upstream account of a brokered sign-in
    (removing the link ends the session).

    Session regeneration (OWASP session fixation defence): every login gets a new id and secret and
    the session this browser presented before, if any, is revoked.
    """
    now = utcnow()
    secret = random_token(32)
    session_id = random_token(16)
    # acr is compared as a whole value (OIDC Core §2): one too long for the column is dropped, never cut.
    acr = acr if acr and len(acr) <= MAX_ACR_LENGTH else None
    values = {
        "id": session_id,
        "tenant_id": tenant_id,
        "user_id": user_id,
        "token_hash": hasher.hash(secret),
        "auth_time": now,
        "amr": list(amr),
        "acr": acr,
        "link_id": link_id,
        "created_at": now,
        "last_seen_at": now,
        "expires_at": now + timedelta(seconds=settings.absolute_ttl),
    }
    previous = hasher.hash(previous_cookie) if previous_cookie and len(previous_cookie) <= MAX_COOKIE_LENGTH else None
    if previous is not None and is_postgresql(session):
        # One statement: the previous session ends in a data-modifying WITH of the new one's INSERT.
        parameters = {f"p_{name}": value for name, value in values.items()} | {"p_hash": previous, "p_now": now}
        await session.execute(_NEW_ENDING_PREVIOUS, parameters)
    else:
        if previous is not None:
            await session.execute(_END_BY_HASH, {"p_tenant_id": tenant_id, "p_hash": previous, "p_now": now})
        await session.execute(_NEW_SESSION, values)
    return SsoSession(session_id, tenant_id, user_id, now, tuple(amr), acr), secret


async def load_session(
    session: AsyncSession,
    *,
    hasher: SecretHasher,
    settings: SessionSettings,
    tenant_id: uuid.UUID,
    cookie: str | None,
) -> SsoSession | None:
    """Return the live session named by ``cookie`` or ``None``.

    A session is dead once revoked, past its absolute lifetime, idle longer than ``idle_ttl``, or
    when its user is disabled or gone.
    """
    if not cookie or len(cookie) > MAX_COOKIE_LENGTH:
        return None
    found = (await session.execute(_BY_HASH, {"p_hash": hasher.hash(cookie), "p_tenant_id": tenant_id})).first()
    if found is None:
        return None
    now = utcnow()
    if (
        found.revoked_at is not None
        or not found.enabled
        or found.expires_at <= now
        or found.last_seen_at + timedelta(seconds=settings.idle_ttl) <= now
    ):
        return None
    if now - found.last_seen_at >= TOUCH_INTERVAL:
        await session.execute(_TOUCH, {"p_id": found.id, "p_now": now})
    return SsoSession(found.id, tenant_id, found.user_id, found.auth_time, tuple(found.amr or ()), found.acr)


async def end_session(session: AsyncSession, *, tenant_id: uuid.UUID, session_id: str) -> bool:
    """Revoke one session; tell whether it was live."""
    result = await session.execute(
        update(UserSession)
        .where(UserSession.tenant_id == tenant_id, UserSession.id == session_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(getattr(result, "rowcount", 0))


async def end_session_by_cookie(
    session: AsyncSession, *, hasher: SecretHasher, tenant_id: uuid.UUID, cookie: str
) -> bool:
    """Revoke the session a cookie names (whatever its state); tell whether one was live."""
    if len(cookie) > MAX_COOKIE_LENGTH:
        return False
    parameters = {"p_tenant_id": tenant_id, "p_hash": hasher.hash(cookie), "p_now": utcnow()}
    result = await session.execute(_END_BY_HASH, parameters)
    return bool(getattr(result, "rowcount", 0))


async def revoke_session(uow: UnitOfWork, *, tenant_id: uuid.UUID, session_id: str) -> None:
    """End a person's SSO session for an operator, with the grants made in it; audited.

    Refresh tokens of those grants stop working at once; access tokens expire on their own (short-lived).
    A session that is unknown in this tenant is :class:`NotFound`; ending an ended one changes nothing.
    """
    session = uow.session
    row = await session.scalar(
        select(UserSession).where(UserSession.tenant_id == tenant_id, UserSession.id == session_id)
    )
    if row is None:
        raise NotFound("session not found")
    if not await end_session(session, tenant_id=tenant_id, session_id=session_id):
        return
    now = utcnow()
    grant_ids = select(Grant.id).where(Grant.tenant_id == tenant_id, Grant.session_id == session_id)
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.grant_id.in_(grant_ids), RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Grant)
        .where(Grant.tenant_id == tenant_id, Grant.session_id == session_id, Grant.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    uow.raise_event(SessionRevoked(tenant_id=tenant_id, session_id=session_id, user_id=row.user_id))
