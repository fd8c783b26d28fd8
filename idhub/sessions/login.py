"""Password sign-in with brute-force defence (throttled per account and per source address)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from idhub.directory.passwords import PasswordHasher
from idhub.directory.rules import is_live, normalise_username
from idhub.directory.users import find_by_username
from idhub.events import SignIn
from idhub.storage.uow import UnitOfWork
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
    uow: UnitOfWork,
    *,
    passwords: PasswordHasher,
    throttle: Throttle,
    tenant_id: uuid.UUID,
    username: str,
    password: str,
    address: str,
) -> LoginResult:
    """Check a username and password; every attempt is an audit event (success, failure, or blocked).

    Unknown users, disabled users and wrong passwords all fail the same way and cost one argon2
    verification (the hasher verifies against a dummy hash when there is none). While the account or
    the address is throttled the password is not even checked. A hash with outdated parameters is
    replaced on success (rehash on login).
    """
    if not username or not password or len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        await throttle.failed(account=None, address=address)
        uow.raise_event(SignIn(tenant_id=tenant_id, user_id=None, result="failure", reason="malformed"))
        return FAILED
    account = account_key(tenant_id, username)
    user = await find_by_username(uow, tenant_id=tenant_id, username=username)
    user_id = user.id if user is not None else None
    if await throttle.blocked(account=account, address=address):
        uow.raise_event(SignIn(tenant_id=tenant_id, user_id=user_id, result="blocked", reason="throttled"))
        return FAILED
    stored = user.password_hash if user is not None else None
    ok, new_hash = await passwords.verify_off_loop(password, stored)
    if not ok or not is_live(user):
        await throttle.failed(account=account, address=address)
        reason = "unknown account" if user is None else ("bad password" if not ok else "account not active")
        uow.raise_event(SignIn(tenant_id=tenant_id, user_id=user_id, result="failure", reason=reason))
        return FAILED
    assert user is not None
    if new_hash:
        user.password_hash = new_hash
    await throttle.succeeded(account=account)
    uow.raise_event(SignIn(tenant_id=tenant_id, user_id=user.id, result="success"))
    return LoginResult(user.id)
