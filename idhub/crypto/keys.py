"""Per-tenant signing keys: generation, encryption at rest, rotation, JWKS, in-process cache."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idhub.crypto.encryption import Sealer
from idhub.crypto.jwt import SigningKeyType
from idhub.crypto.secrets import random_token
from idhub.events import KeysRotated
from idhub.storage.base import utcnow
from idhub.storage.faults import FaultCounter, OutageLog, is_fault
from idhub.storage.models import SigningKey
from idhub.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
STATE_NEXT, STATE_ACTIVE, STATE_RETIRED = "next", "active", "retired"
RETRY_PAUSE = 1.0  # seconds: after a reload failed, an unknown kid does not make the next wait for the database


def _generate(alg: str) -> SigningKeyType:
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    if alg == "RS256":
        return RSAKey.generate_key(2048, private=True)
    raise ValueError(f"unsupported signing algorithm {alg}")


def _new_row(*, tenant_id: uuid.UUID, alg: str, state: str, sealer: Sealer, now: datetime) -> SigningKey:
    key = _generate(alg)
    kid = random_token(12)
    public = key.as_dict(private=False)
    public.update(kid=kid, alg=alg, use="sig")
    pem = key.as_pem(private=True)
    return SigningKey(
        tenant_id=tenant_id,
        kid=kid,
        alg=alg,
        state=state,
        public_jwk=public,
        private_key_encrypted=sealer.seal(pem, context=f"signing-key:{kid}"),
        created_at=now,
        activated_at=now if state == STATE_ACTIVE else None,
    )


async def create_initial_keys(session: AsyncSession, *, tenant_id: uuid.UUID, sealer: Sealer) -> None:
    """Give a new tenant an active and a next key for every algorithm."""
    now = utcnow()
    for alg in ALGORITHMS:
        session.add(_new_row(tenant_id=tenant_id, alg=alg, state=STATE_ACTIVE, sealer=sealer, now=now))
        session.add(_new_row(tenant_id=tenant_id, alg=alg, state=STATE_NEXT, sealer=sealer, now=now))
    await session.flush()


async def rotate_keys(
    uow: UnitOfWork, *, tenant_id: uuid.UUID, sealer: Sealer, max_token_lifetime: timedelta
) -> list[str]:
    """Move next -> active -> retired for every algorithm and create a new next key.

    A retired key stays published until every token it may have signed has expired. Returns the kids
    that became active; every process reloads the tenant's keys once the rotation commits.
    """
    session = uow.session
    now = utcnow()
    rows = await _lock_current(session, tenant_id)
    return await _rotate_locked(
        uow, rows, tenant_id=tenant_id, sealer=sealer, max_token_lifetime=max_token_lifetime, now=now
    )


async def rotate_if_due(
    uow: UnitOfWork, *, tenant_id: uuid.UUID, sealer: Sealer, max_token_lifetime: timedelta, every: timedelta
) -> list[str] | None:
    """Rotate the tenant's keys when its active ones are ``every`` old; return the new active kids, or ``None``.

    The first statement retires the active keys only if they are still due (a conditional UPDATE, the
    transaction's first write): of processes checking the same schedule at once, one wins; the others find
    nothing due once the winner commits, on SQLite as on PostgreSQL.
    """
    session = uow.session
    now = utcnow()
    retired = await session.execute(
        update(SigningKey)
        .where(
            SigningKey.tenant_id == tenant_id,
            SigningKey.state == STATE_ACTIVE,
            func.coalesce(SigningKey.activated_at, SigningKey.created_at) <= now - every,
        )
        .values(state=STATE_RETIRED, retired_at=now, publish_until=now + max_token_lifetime)
        .execution_options(synchronize_session=False)
    )
    if not getattr(retired, "rowcount", 0):
        return None
    rows = await _lock_current(session, tenant_id)
    lifetime = max_token_lifetime
    return await _rotate_locked(uow, rows, tenant_id=tenant_id, sealer=sealer, max_token_lifetime=lifetime, now=now)


async def _lock_current(session: AsyncSession, tenant_id: uuid.UUID) -> list[SigningKey]:
    rows = await session.scalars(
        select(SigningKey)
        .where(SigningKey.tenant_id == tenant_id, SigningKey.state.in_([STATE_NEXT, STATE_ACTIVE]))
        .with_for_update()
    )
    return list(rows.all())


async def _rotate_locked(
    uow: UnitOfWork,
    rows: list[SigningKey],
    *,
    tenant_id: uuid.UUID,
    sealer: Sealer,
    max_token_lifetime: timedelta,
    now: datetime,
) -> list[str]:
    session = uow.session
    activated: list[str] = []
    for alg in ALGORITHMS:
        for row in rows:
            if row.alg != alg:
                continue
            if row.state == STATE_ACTIVE:
                row.state = STATE_RETIRED
                row.retired_at = now
                row.publish_until = now + max_token_lifetime
            elif row.state == STATE_NEXT:
                row.state = STATE_ACTIVE
                row.activated_at = now
                activated.append(row.kid)
        session.add(_new_row(tenant_id=tenant_id, alg=alg, state=STATE_NEXT, sealer=sealer, now=now))
    await session.flush()
    uow.raise_event(KeysRotated(tenant_id=tenant_id, active_kids=tuple(activated)))
    return activated


@dataclass(frozen=True, slots=True)
class LoadedKey:
    """A decrypted signing key ready for use."""

    kid: str
    alg: str
    state: str
    key: SigningKeyType
    public_jwk: dict[str, Any]


@dataclass(slots=True)
class TenantKeys:
    """The keys of one tenant as loaded at ``loaded_at``."""

    keys: list[LoadedKey]
    loaded_at: float
    jwks: dict[str, Any] = field(default_factory=dict)
    verify_set: KeySet = field(default_factory=lambda: KeySet([]))

    def active(self, alg: str) -> LoadedKey | None:
        """Return the active key for ``alg``."""
        for key in self.keys:
            if key.state == STATE_ACTIVE and key.alg == alg:
                return key
        return None


class KeyStore:
    """Load tenants' keys from the database and keep them decrypted in memory for a short while.

    Keys are never generated here: a tenant without keys is an operator's problem to fix with
    ``idhub keys rotate``/``idhub init``, not something to paper over on restart.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        sealer: Sealer,
        ttl: float = 30.0,
        *,
        stale_if_error: float = 60.0,
        faults: FaultCounter | None = None,
    ):
        self._sessionmaker = sessionmaker
        self._sealer = sealer
        self._ttl = ttl
        self._stale_if_error = stale_if_error
        self._faults = faults
        self._outage = OutageLog(log, "reloading signing keys")
        self._failed_at = 0.0
        self._cache: dict[uuid.UUID, TenantKeys] = {}
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._refreshing: dict[uuid.UUID, asyncio.Task[None]] = {}
        # Decrypted keys by kid: a reload re-imports only keys it has not seen (RSA imports are slow).
        self._imported: dict[uuid.UUID, dict[str, SigningKeyType]] = {}

    def on_rotation(self, event: KeysRotated) -> None:
        """Reload a tenant's keys once their rotation commits (the unit of work's consumer)."""
        self.invalidate(event.tenant_id)

    def invalidate(self, tenant_id: uuid.UUID | None = None) -> None:
        """Forget cached keys (after a rotation in this process)."""
        if tenant_id is None:
            self._cache.clear()
        else:
            self._cache.pop(tenant_id, None)

    async def get(self, tenant_id: uuid.UUID, *, max_age: float | None = None) -> TenantKeys:
        """Return the tenant's keys.

        A stale entry is served while one background task reloads it, so signing never waits on the
        database; ``max_age`` forces a synchronous reload of an older entry (an unknown ``kid``). When
        reloading fails because the database is down or too slow, the keys as last loaded are served
        until ``stale_if_error`` seconds past their lifetime (stale-if-error); beyond that the fault is
        raised (the caller's 503).
        """
        cached = self._cache.get(tenant_id)
        if cached is not None:
            age = time.monotonic() - cached.loaded_at
            if max_age is None:
                if age < self._ttl + self._stale_if_error:
                    if age >= self._ttl and tenant_id not in self._refreshing:
                        self._refreshing[tenant_id] = asyncio.create_task(self._refresh(tenant_id))
                    return cached
            elif age < max_age or (self._outage.down and self._usable(cached, pause=True)):
                return cached  # while the database is down, not every unknown kid waits for it
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(tenant_id)
            if cached is not None and time.monotonic() - cached.loaded_at < (max_age or self._ttl):
                return cached
            try:
                loaded = await self._load(tenant_id)
            except Exception as exc:
                if cached is None or not is_fault(exc) or not self._usable(cached):
                    raise
                self._failed(exc)
                return cached
            self._outage.recovered()
            self._cache[tenant_id] = loaded
            return loaded

    def _usable(self, cached: TenantKeys, *, pause: bool = False) -> bool:
        """Tell whether ``cached`` may stand in for a reload that failed (or, with ``pause``, that just failed)."""
        now = time.monotonic()
        if pause and now - self._failed_at >= RETRY_PAUSE:
            return False
        return now - cached.loaded_at < self._ttl + self._stale_if_error

    def _failed(self, exc: Exception) -> None:
        self._failed_at = time.monotonic()
        limit = f"{self._ttl + self._stale_if_error:g}"
        self._outage.failed(exc, f"serving the keys as last loaded until they are {limit} s old")
        if self._faults is not None:
            self._faults.count_fault("database", "stale_keys")

    async def _refresh(self, tenant_id: uuid.UUID) -> None:
        try:
            self._cache[tenant_id] = await self._load(tenant_id)
            self._outage.recovered()
        except Exception as exc:
            if is_fault(exc):
                self._failed(exc)
            else:
                log.exception("reloading signing keys failed; serving the previous set")
        finally:
            self._refreshing.pop(tenant_id, None)

    async def _load(self, tenant_id: uuid.UUID) -> TenantKeys:
        now = utcnow()
        async with self._sessionmaker() as session:
            rows = (await session.scalars(select(SigningKey).where(SigningKey.tenant_id == tenant_id))).all()
        keys: list[LoadedKey] = []
        known = self._imported.get(tenant_id, {})
        imported: dict[str, SigningKeyType] = {}
        for row in rows:
            if row.state == STATE_RETIRED and (row.publish_until is None or row.publish_until <= now):
                continue
            key = known.get(row.kid)
            if key is None:
                pem = self._sealer.open(row.private_key_encrypted, context=f"signing-key:{row.kid}")
                key = ECKey.import_key(pem) if row.alg == "ES256" else RSAKey.import_key(pem)
            imported[row.kid] = key
            keys.append(LoadedKey(kid=row.kid, alg=row.alg, state=row.state, key=key, public_jwk=row.public_jwk))
        self._imported[tenant_id] = imported
        order = {STATE_ACTIVE: 0, STATE_NEXT: 1, STATE_RETIRED: 2}
        keys.sort(key=lambda k: (order.get(k.state, 3), k.alg))
        public_keys = [k.public_jwk for k in keys]
        verify_set = KeySet.import_key_set({"keys": public_keys}) if public_keys else KeySet([])
        return TenantKeys(keys=keys, loaded_at=time.monotonic(), jwks={"keys": public_keys}, verify_set=verify_set)
