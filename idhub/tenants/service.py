"""Create and look up tenants."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idhub.cache import RefreshingCache
from idhub.crypto.encryption import Sealer
from idhub.crypto.jwt import SIGNING_ALGS
from idhub.crypto.keys import create_initial_keys
from idhub.errors import Invalid, NotFound
from idhub.events import TenantChanged, TenantCreated
from idhub.storage.models import Tenant
from idhub.storage.uow import UnitOfWork

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
TENANT_SETTING_DEFAULTS: dict[str, Any] = {"access_token_alg": "ES256"}


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
    uow: UnitOfWork, *, slug: str, name: str | None = None, access_token_alg: str | None = None
) -> Tenant:
    """Change a tenant's name or default access-token algorithm."""
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
    await session.flush()
    uow.raise_event(TenantChanged(tenant_id=tenant.id, slug=tenant.slug, changed=tuple(changed)))
    return tenant


class TenantCache:
    """Resolve tenant slugs to snapshots with a short in-process cache."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], public_url: str, ttl: float = 5.0):
        self._sessionmaker = sessionmaker
        self._public_url = public_url
        self._cache: RefreshingCache[str, TenantInfo | None] = RefreshingCache(self._load, ttl=ttl, max_entries=10_000)

    def on_change(self, event: TenantChanged) -> None:
        """Drop a changed tenant once its change commits (the unit of work's consumer)."""
        self.invalidate(event.slug)

    def invalidate(self, slug: str | None = None) -> None:
        """Forget cached tenants."""
        self._cache.invalidate(None if slug is None else (lambda key: key == slug))

    async def get(self, slug: str) -> TenantInfo | None:
        """Return the tenant ``slug`` or ``None`` when it does not exist."""
        if not SLUG_RE.fullmatch(slug):
            return None
        return await self._cache.get(slug)

    async def _load(self, slug: str) -> TenantInfo | None:
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
