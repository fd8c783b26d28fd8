"""Password sign-in with brute-force defence (throttled per account and per source address)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from idhub.directory.passwords import PasswordHasher
from idhub.directory.users import find_user_by_username, normalise_username
from idhub.throttle import Throttle

MAX_USERNAME = 255
MAX_PASSWORD = 1024


@dataclass(frozen=True, slots=True)
class LoginResult:
    """Outcome of a sign-in attempt; failures carry no reason on purpose (no account enumeration)."""

    user_id: uuid.UUID | None

    @property
    def ok(self) -> bool:
        """Tell whether the credentials were accepted."""
        return self.user_id is not None


FAILED = LoginResult(None)


def account_key(tenant_id: uuid.UUID, username: str) -> str:
    """Return the throttle key of an account (tenant-scoped, case-folded username)."""
    return f"{tenant_id}:{normalise_username(username)}"


async def authenticate_password(
    session: AsyncSession,
    *,
    passwords: PasswordHasher,
    throttle: Throttle,
    tenant_id: uuid.UUID,
    username: str,
    password: str,
    address: str,
) -> LoginResult:
    """Check a username and password.

    Unknown users, disabled users and wrong passwords all fail the same way and cost one argon2
    verification (the hasher verifies against a dummy hash when there is none). While the account or
    the address is throttled the password is not even checked. A hash with outdated parameters is
    replaced on success (rehash on login).
    """
    if not username or not password or len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        await throttle.failed(account=None, address=address)
        return FAILED
    account = account_key(tenant_id, username)
    if await throttle.blocked(account=account, address=address):
        return FAILED
    user = await find_user_by_username(session, tenant_id=tenant_id, username=username)
    stored = user.password_hash if user is not None else None
    # argon2 releases the GIL, so a thread keeps the event loop serving other requests.
    ok, new_hash = await asyncio.to_thread(passwords.verify, password, stored)
    if not ok or user is None or not user.enabled:
        await throttle.failed(account=account, address=address)
        return FAILED
    if new_hash:
        user.password_hash = new_hash
    await throttle.succeeded(account=account)
    return LoginResult(user.id)
