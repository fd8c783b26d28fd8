"""Users of a tenant's directory: creation, lookup, disabling (one function for every surface)."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.directory.passwords import PasswordHasher
from idhub.errors import Conflict, Invalid, NotFound
from idhub.storage.base import utcnow
from idhub.storage.models import Grant, RefreshToken, User, UserSession
from idhub.tokens.revocation import record_revocation

USERNAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,255}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def normalise_username(username: str) -> str:
    """Case-fold a username so lookups are case-insensitive (RFC 7643 §4.1.1 ``userName``)."""
    return username.strip().casefold()


async def create_user(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    username: str,
    hasher: PasswordHasher,
    email: str | None = None,
    password: str | None = None,
    name: str | None = None,
    given_name: str | None = None,
    family_name: str | None = None,
    email_verified: bool = False,
) -> User:
    """Create a local user; raise :class:`Conflict` when the username is taken."""
    normalised = normalise_username(username)
    if not USERNAME_RE.fullmatch(normalised):
        raise Invalid("username must be 1-255 characters without spaces or control characters")
    if email is not None and not EMAIL_RE.fullmatch(email):
        raise Invalid("email is not a valid address")
    if password is not None and not 8 <= len(password) <= 1024:
        raise Invalid("password must be 8 to 1024 characters")
    user = User(
        tenant_id=tenant_id,
        username=normalised,
        email=email,
        email_verified=email_verified,
        name=name,
        given_name=given_name,
        family_name=family_name,
        password_hash=hasher.hash(password) if password else None,
    )
    session.add(user)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"username {normalised!r} is already taken") from exc
    return user


async def find_user_by_username(session: AsyncSession, *, tenant_id: uuid.UUID, username: str) -> User | None:
    """Return the live (not deleted) user with ``username`` (case-insensitive) in the tenant."""
    return await session.scalar(
        select(User).where(
            User.tenant_id == tenant_id, User.username == normalise_username(username), User.deleted_at.is_(None)
        )
    )


async def get_user(session: AsyncSession, *, tenant_id: uuid.UUID, user_id: uuid.UUID) -> User:
    """Return the user or raise :class:`NotFound`."""
    user = await session.scalar(select(User).where(User.tenant_id == tenant_id, User.id == user_id))
    if user is None:
        raise NotFound("user not found")
    return user


async def revoke_user_access(
    session: AsyncSession, *, tenant_id: uuid.UUID, user_id: uuid.UUID, expires_in: int
) -> None:
    """End every session, grant and refresh token of a user and revoke the access tokens already issued.

    Shared by every surface that disables or deletes a user (SCIM, admin API, CLI).
    """
    now = utcnow()
    await session.execute(
        update(UserSession)
        .where(UserSession.tenant_id == tenant_id, UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await session.execute(
        update(Grant)
        .where(Grant.tenant_id == tenant_id, Grant.user_id == user_id, Grant.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.tenant_id == tenant_id, RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await record_revocation(session, tenant_id=tenant_id, kind="subject", value=str(user_id), expires_in=expires_in)


async def set_user_enabled(
    session: AsyncSession, *, tenant_id: uuid.UUID, user_id: uuid.UUID, enabled: bool, expires_in: int
) -> User:
    """Enable or disable a user; disabling cuts off every session and token from this commit on."""
    user = await get_user(session, tenant_id=tenant_id, user_id=user_id)
    user.enabled = enabled
    if not enabled:
        await revoke_user_access(session, tenant_id=tenant_id, user_id=user_id, expires_in=expires_in)
    await session.flush()
    return user
