"""Everything one app instance builds at start-up and shares between requests."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from idhub.clients.service import ClientCache
from idhub.crypto.encryption import Sealer, derive_key
from idhub.crypto.keys import KeyStore
from idhub.crypto.secrets import SecretHasher
from idhub.directory.passwords import PasswordHasher
from idhub.metrics import Metrics
from idhub.scim.tokens import ProvisioningTokenCache
from idhub.settings import Settings
from idhub.storage.engine import create_engine, create_sessionmaker
from idhub.storage.statistics import StatisticsRefresher
from idhub.tenants.service import TenantCache
from idhub.throttle import RedisCounter, Throttle
from idhub.tokens.revocation import RevocationState
from idhub.tokens.service import TokenService

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AppContext:
    """Shared services of one running app (or one CLI invocation)."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    sealer: Sealer
    secret_hasher: SecretHasher
    cookie_key: bytes
    passwords: PasswordHasher
    keys: KeyStore
    tenants: TenantCache
    clients: ClientCache
    revocations: RevocationState
    tokens: TokenService
    throttle: Throttle
    metrics: Metrics
    statistics: StatisticsRefresher
    provisioning_tokens: ProvisioningTokenCache
    redis: Any = None

    async def close(self) -> None:
        """Stop background work and release connections."""
        await self.revocations.stop()
        await self.statistics.wait()
        self.tokens.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


def build_context(settings: Settings, *, metrics: Metrics | None = None) -> AppContext:
    """Build the shared services from settings (no I/O beyond reading the master key)."""
    master = settings.master_key_bytes()
    engine = create_engine(settings.database_url)
    sessionmaker = create_sessionmaker(engine)
    sealer = Sealer(master)
    keys = KeyStore(sessionmaker, sealer)
    secret_hasher = SecretHasher(derive_key(master, "secret-hash"))
    revocations = RevocationState(
        sessionmaker, poll_seconds=settings.revocation_poll_seconds, redis_url=settings.redis_url
    )
    redis = None
    throttle = Throttle(settings.throttle)
    if settings.redis_url:
        import redis.asyncio as aioredis

        redis = aioredis.from_url(settings.redis_url)
        throttle = Throttle(settings.throttle, RedisCounter(redis))
    return AppContext(
        settings=settings,
        engine=engine,
        sessionmaker=sessionmaker,
        sealer=sealer,
        secret_hasher=secret_hasher,
        cookie_key=derive_key(master, "cookies"),
        passwords=PasswordHasher(settings.passwords),
        keys=keys,
        tenants=TenantCache(sessionmaker, settings.public_url),
        clients=ClientCache(sessionmaker, ttl=settings.client_cache_ttl),
        revocations=revocations,
        tokens=TokenService(keys=keys, revocations=revocations, settings=settings.tokens),
        throttle=throttle,
        metrics=metrics or Metrics(),
        statistics=StatisticsRefresher(engine),
        provisioning_tokens=ProvisioningTokenCache(sessionmaker, secret_hasher),
        redis=redis,
    )
