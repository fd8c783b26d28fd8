"""Create and look up tenants."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idhub.cache import STALE_LIMIT
from idhub.crypto.encryption import Sealer
from idhub.crypto.jwt import SIGNING_ALGS
from idhub.crypto.keys import create_initial_keys
from idhub.errors import Invalid, NotFound
from idhub.events import TenantChanged, TenantCreated
from idhub.storage.faults import FaultCounter, OutageLog, is_fault
from idhub.storage.models import Tenant
from idhub.storage.uow import UnitOfWork

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
TENANT_SETTING_DEFAULTS: dict[str, Any] = {"access_token_alg": "ES256"}

log = logging.getLogger(__name__)


class _Unset:
    """A keyword left out (as opposed to ``None``, which clears a setting)."""


UNSET = _Unset()


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """An immutable snapshot of a tenant, safe to cache and share between requests."""

    id: uuid.UUID
    slug: str
    name: str
    issuer: str
    settings: dict[str, Any]
    # ``str(id)``, computed once: hot paths key caches and counters by it.
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", str(self.id))

    @property
    def access_token_alg(self) -> str:
        """Return the tenant's default access-token signing algorithm."""
        return str(self.settings.get("access_token_alg", "ES256"))


def issuer_for(public_url: str, slug: str) -> str:
    """Return the issuer identifier of tenant ``slug``."""
    return f"{public_url}/tenants/{slug}"


async def get_or_create_tenant(
    uow: UnitOfWork, *, slug: str, sealer: Sealer, name: str | None = None
) -> tuple[Tenant, bool]:
    """Return the tenant ``slug``, creating it (with its first signing keys) if missing."""
    if not SLUG_RE.fullmatch(slug):
        raise Invalid("tenant slug must be 1-63 lowercase letters, digits or hyphens")
    session = uow.session
    tenant = await session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is not None:
        return tenant, False
    tenant = Tenant(slug=slug, name=name or slug, settings=dict(TENANT_SETTING_DEFAULTS))
    session.add(tenant)
    await session.flush()
    await create_initial_keys(session, tenant_id=tenant.id, sealer=sealer)
    uow.raise_event(TenantCreated(tenant_id=tenant.id, slug=slug))
    return tenant, True


async def require_tenant(session: AsyncSession, slug: str) -> Tenant:
    """Return tenant ``slug`` or raise :class:`NotFound`."""
    tenant = await session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"unknown tenant {slug!r}")
    return tenant


async def update_tenant(
    uow: UnitOfWork,
    *,
    slug: str,
    name: str | None = None,
    access_token_alg: str | None = None,
    key_rotation_days: int | _Unset | None = UNSET,
) -> Tenant:
    """Change a tenant's name, default access-token algorithm or key rotation schedule (``None``: on demand)."""
    session = uow.session
    tenant = await require_tenant(session, slug)
    changed: list[str] = []
    if name is not None:
        if not name.strip() or len(name) > 200:
            raise Invalid("tenant name must be 1-200 characters")
        tenant.name = name.strip()
        changed.append("name")
    if access_token_alg is not None:
        if access_token_alg not in SIGNING_ALGS:
            raise Invalid(f"access_token_alg must be one of {', '.join(SIGNING_ALGS)}")
        tenant.settings = {**(tenant.settings or {}), "access_token_alg": access_token_alg}
        changed.append("access_token_alg")
    if not isinstance(key_rotation_days, _Unset):
        if key_rotation_days is not None and not 1 <= key_rotation_days <= 3650:
            raise Invalid("key_rotation_days must be 1-3650 (or null: rotate on demand only)")
        settings = {k: v for k, v in (tenant.settings or {}).items() if k != "key_rotation_days"}
        if key_rotation_days is not None:
            settings["key_rotation_days"] = key_rotation_days
        tenant.settings = settings
        changed.append("key_rotation_days")
    await session.flush()
    uow.raise_event(TenantChanged(tenant_id=tenant.id, slug=tenant.slug, changed=tuple(changed)))
    return tenant


class TenantCache:
    """Resolve tenant slugs to snapshots with a short in-process cache of the tenants that exist.

    Only tenants that exist are remembered, so slugs made up by a caller cost one indexed lookup each
    and can neither grow the cache nor push real tenants out of it; a tenant created after a miss is
    found on the next request. Beyond ``max_entries`` real tenants the least recently used is dropped,
    never the whole cache. An entry is fresh for ``ttl`` seconds, then served while one background task
    reloads it; an entry much older (an idle process) is reloaded before use. When a reload fails
    because the database is down or too slow, the tenant as last loaded is served for up to
    ``stale_if_error`` seconds past its freshness (stale-if-error, as RFC 5861 §4 defines it for HTTP).
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        public_url: str,
        ttl: float = 5.0,
        *,
        stale_if_error: float = 60.0,
        max_entries: int = 10_000,
        faults: FaultCounter | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._public_url = public_url
        self._ttl = ttl
        self._stale_if_error = stale_if_error
        self._max_entries = max_entries
        self._faults = faults
        self._outage = OutageLog(log, "loading tenants from the database")
        # slug -> (monotonic time of the last successful load, snapshot); most recently used last.
        self._entries: OrderedDict[str, tuple[float, TenantInfo]] = OrderedDict()
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        # Bumped by invalidate(): a load that began before an invalidation must not store what it read.
        self._generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def on_change(self, event: TenantChanged) -> None:
        """Drop a changed tenant once its change commits (the unit of work's consumer)."""
        self.invalidate(event.slug)

    def invalidate(self, slug: str | None = None) -> None:
        """Forget cached tenants."""
        self._generation += 1
        if slug is None:
            self._entries.clear()
        else:
            self._entries.pop(slug, None)

    async def get(self, slug: str) -> TenantInfo | None:
        """Return the tenant ``slug`` or ``None`` when it does not exist."""
        if not SLUG_RE.fullmatch(slug):
            return None
        entry = self._entries.get(slug)
        if entry is not None:
            loaded_at, info = entry
            age = time.monotonic() - loaded_at
            if age < self._ttl:
                self._entries.move_to_end(slug)
                return info
            if age < self._ttl * STALE_LIMIT or (self._outage.down and age < self._ttl + self._stale_if_error):
                # Served as is while one task reloads it; during an outage nobody waits for the database.
                if slug not in self._refreshing:
                    self._refreshing[slug] = asyncio.create_task(self._refresh(slug))
                return info
        return await self._reload(slug)

    async def _reload(self, slug: str) -> TenantInfo | None:
        generation = self._generation
        try:
            info = await self._fetch(slug)
        except Exception as exc:
            stale = self._stale(slug, exc)
            if stale is None:
                raise
            return stale
        self._store(slug, info, generation)
        return info

    async def _refresh(self, slug: str) -> None:
        generation = self._generation
        try:
            info = await self._fetch(slug)
        except Exception as exc:
            if self._stale(slug, exc) is None:
                log.warning("reloading tenant %r failed; the next request reloads it", slug, exc_info=True)
                self._entries.pop(slug, None)
        else:
            self._store(slug, info, generation)
        finally:
            self._refreshing.pop(slug, None)

    def _stale(self, slug: str, exc: Exception) -> TenantInfo | None:
        """Return the last known tenant when ``exc`` is a database fault within the stale-if-error window."""
        entry = self._entries.get(slug)
        if entry is None or not is_fault(exc) or time.monotonic() - entry[0] >= self._ttl + self._stale_if_error:
            return None
        self._outage.failed(exc, f"serving tenants as last loaded for up to {self._stale_if_error:g} s")
        if self._faults is not None:
            self._faults.count_fault("database", "stale_tenant")
        return entry[1]

    def _store(self, slug: str, info: TenantInfo | None, generation: int) -> None:
        self._outage.recovered()
        if info is None:
            self._entries.pop(slug, None)  # misses are never stored (a deleted tenant is forgotten)
            return
        if generation != self._generation:
            return
        self._entries[slug] = (time.monotonic(), info)
        self._entries.move_to_end(slug)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def _fetch(self, slug: str) -> TenantInfo | None:
        """Look one tenant up by its unique slug (one indexed query)."""
        async with self._sessionmaker() as session:
            row = await session.scalar(select(Tenant).where(Tenant.slug == slug))
        if row is None:
            return None
        return TenantInfo(
            id=row.id,
            slug=row.slug,
            name=row.name,
            issuer=issuer_for(self._public_url, row.slug),
            settings={**TENANT_SETTING_DEFAULTS, **(row.settings or {})},
        )
