"""Password sign-in with abuse limits that cannot be turned against the people they protect.

Limits follow the OWASP Authentication and Credential Stuffing Prevention cheat sheets (see
:mod:`idhub.throttle`): per account and source address, per address, a per-account budget for
browsers the account has never signed in from, and a device cookie that lets a browser which signed
in to the account before keep signing in while others fail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

from idhub.directory.passwords import PasswordHasher
from idhub.directory.rules import is_live, normalise_username
from idhub.directory.users import find_by_username
from idhub.events import SignIn
from idhub.settings import ThrottleSettings
from idhub.storage.uow import UnitOfWork
from idhub.throttle import Throttle

MAX_USERNAME = 255
MAX_PASSWORD = 1024
DEVICE_COOKIE = "idhub_device"
# Browsers shared by a few people keep a device entry for each; the oldest beyond this go.
MAX_DEVICE_ENTRIES = 5
MAX_DEVICE_COOKIE = 2048


@dataclass(frozen=True, slots=True)
class LoginResult:
    """Outcome of a sign-in attempt; failures carry no reason on purpose (no account enumeration).

    ``device_cookie`` is the new value of the device cookie after a success (``None`` otherwise).
    """

    user_id: uuid.UUID | None
    device_cookie: str | None = None

    @property
    def ok(self) -> bool:
        """Tell whether the credentials were accepted."""
        return self.user_id is not None


FAILED = LoginResult(None)


def account_key(tenant_id: uuid.UUID, username: str) -> str:
    """Return the throttle key of an account (tenant-scoped, case-folded username)."""
    return f"{tenant_id}:{normalise_username(username)}"


@dataclass(frozen=True, slots=True)
class DeviceTrust:
    """Issue and recognise device cookies (OWASP Authentication CS, device cookies for lockout).

    The cookie lists up to :data:`MAX_DEVICE_ENTRIES` entries ``user.nonce.issued.mac`` joined by
    ``~``; the mac is an HMAC-SHA256 under the cookie key over tenant, user, nonce and issue time, so
    an entry is bound to one account of one tenant and cannot be forged or moved. The nonce names the
    device: a stolen cookie gets its own failure budget and no more.
    """

    key: bytes
    max_age: int

    @classmethod
    def from_settings(cls, key: bytes, settings: ThrottleSettings) -> DeviceTrust:
        """Build from the cookie key and the throttle settings."""
        return cls(key, settings.device_cookie_days * 86_400)

    def _mac(self, tenant_id: uuid.UUID, user_hex: str, nonce: str, issued: str) -> str:
        message = f"idhub-device-v1|{tenant_id}|{user_hex}|{nonce}|{issued}".encode()
        digest = hmac.new(self.key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _entries(self, cookie: str | None, tenant_id: uuid.UUID, now: float) -> list[tuple[str, str, str]]:
        """Return the valid entries ``(user_hex, nonce, entry)`` of a cookie, newest first."""
        if not cookie or len(cookie) > MAX_DEVICE_COOKIE:
            return []
        valid = []
        for entry in cookie.split("~")[:MAX_DEVICE_ENTRIES]:
            parts = entry.split(".")
            if len(parts) != 4:
                continue
            user_hex, nonce, issued, mac = parts
            if not (issued.isascii() and issued.isdigit()) or not now - self.max_age < int(issued) <= now + 60:
                continue
            if hmac.compare_digest(mac.encode(), self._mac(tenant_id, user_hex, nonce, issued).encode()):
                valid.append((user_hex, nonce, entry))
        return valid

    def device(self, cookie: str | None, *, tenant_id: uuid.UUID, user_id: uuid.UUID, now: float) -> str | None:
        """Return the device nonce when the cookie says this browser signed in to this user before."""
        for user_hex, nonce, _ in self._entries(cookie, tenant_id, now):
            if user_hex == user_id.hex:
                return nonce
        return None

    def remember(self, cookie: str | None, *, tenant_id: uuid.UUID, user_id: uuid.UUID, now: float) -> str:
        """Return the cookie with a fresh entry for this user first (same device nonce if it had one)."""
        entries = self._entries(cookie, tenant_id, now)
        nonce = next((n for user_hex, n, _ in entries if user_hex == user_id.hex), None) or secrets.token_urlsafe(12)
        issued = str(int(now))
        fresh = f"{user_id.hex}.{nonce}.{issued}.{self._mac(tenant_id, user_id.hex, nonce, issued)}"
        others = [entry for user_hex, _, entry in entries if user_hex != user_id.hex]
        return "~".join([fresh, *others][:MAX_DEVICE_ENTRIES])


async def authenticate_password(
    uow: UnitOfWork,
    *,
    passwords: PasswordHasher,
    throttle: Throttle,
    tenant_id: uuid.UUID,
    username: str,
    password: str,
    address: str,
    devices: DeviceTrust | None = None,
    device_cookie: str | None = None,
) -> LoginResult:
    """Check a username and password; every attempt is an audit event (success, failure, or blocked).

    Unknown users, disabled users and wrong passwords all fail the same way and cost one argon2
    verification (the hasher verifies against a dummy hash when there is none). The attempt is
    reserved against the limits before the password is checked; an attempt over a limit is refused
    without checking the password, but still costs one (dummy) verification, so its answer takes as
    long as a checked one (no timing tell). A hash with outdated parameters is replaced on success
    (rehash on login).
    """
    if not username or not password or len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        await throttle.malformed_sign_in(address=address)
        uow.raise_event(SignIn(tenant_id=tenant_id, user_id=None, result="failure", reason="malformed"))
        return FAILED
    account = account_key(tenant_id, username)
    user = await find_by_username(uow, tenant_id=tenant_id, username=username)
    user_id = user.id if user is not None else None
    now = time.time()
    device = None
    if devices is not None and user_id is not None:
        device = devices.device(device_cookie, tenant_id=tenant_id, user_id=user_id, now=now)
    reservation = await throttle.reserve_sign_in(account=account, address=address, device=device)
    if reservation is None:
        await passwords.verify_off_loop(password, None)
        uow.raise_event(SignIn(tenant_id=tenant_id, user_id=user_id, result="blocked", reason="throttled"))
        return FAILED
    stored = user.password_hash if user is not None else None
    # A failure (or a cancelled check) keeps the reservation: it counts against the limits.
    ok, new_hash = await passwords.verify_off_loop(password, stored)
    if not ok or not is_live(user):
        reason = "unknown account" if user is None else ("bad password" if not ok else "account not active")
        uow.raise_event(SignIn(tenant_id=tenant_id, user_id=user_id, result="failure", reason=reason))
        return FAILED
    assert user is not None
    if new_hash:
        user.password_hash = new_hash
    await throttle.sign_in_succeeded(reservation)
    uow.raise_event(SignIn(tenant_id=tenant_id, user_id=user.id, result="success"))
    cookie = devices.remember(device_cookie, tenant_id=tenant_id, user_id=user.id, now=now) if devices else None
    return LoginResult(user.id, cookie)
