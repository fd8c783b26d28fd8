"""Everything one app instance builds at start-up and shares between requests: the composition root.

This is where the unit of work meets its consumers: the audit log writes each audited event in the
transaction, and after a commit the revocation state, the caches and the audit stream hear about it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from idhub.audit.chain import AuditChain
from idhub.audit.service import AuditLog, AuditWriter
from idhub.audit.sink import AuditSink, transport_for
from idhub.broker.service import Broker
from idhub.clients.service import ClientCache
from idhub.credentials.provisioning import ProvisioningTokenCache
from idhub.crypto.encryption import Sealer, derive_key
from idhub.crypto.keys import KeyStore
from idhub.crypto.rotation import KeyRotationSchedule
from idhub.crypto.secrets import SecretHasher
from idhub.directory import Directory
from idhub.directory.passwords import PasswordHasher
from idhub.events import (
    ANONYMOUS,
    Actor,
    ClientChanged,
    DomainEvent,
    IdentityProviderChanged,
    KeysRotated,
    RevocationRecorded,
    TenantChanged,
)
from idhub.metrics import Metrics
from idhub.settings import Settings
from idhub.storage.engine import Timeouts, create_engine, create_sessionmaker, pool_stats
from idhub.storage.purge import Purger
from idhub.storage.statistics import StatisticsRefresher
from idhub.storage.uow import EventBus, UnitOfWork, UnitOfWorkFactory
from idhub.telemetry import Telemetry
from idhub.tenants.service import TenantCache
from idhub.throttle import FallbackCounter, RedisCounter, Throttle
from idhub.tokens.revocation import RevocationState
from idhub.tokens.service import TokenService

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AppContext:
    """Shared services of one running app (or one CLI invocation)."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    uow_factory: UnitOfWorkFactory
    audit: AuditLog
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
    purger: Purger
    broker: Broker
    key_rotation: KeyRotationSchedule
    redis: Any = None

    def uow(self, *, actor: Actor = ANONYMOUS, surface: str = "") -> UnitOfWork:
        """Start a unit of work for ``actor`` acting through ``surface``."""
        return self.uow_factory(actor=actor, surface=surface)

    def directory(self, uow: UnitOfWork) -> Directory:
        """Return the directory's commands acting in ``uow``."""
        return Directory.open(uow, passwords=self.passwords, token_lifetime=self.settings.tokens.access_token_ttl)

    async def start(self) -> None:
        """Start background work: revocation following, batched audit writes, the purge."""
        await self.revocations.start()
        self.audit.writer.start()
        if self.audit.sink is not None:
            self.audit.sink.start()
        self.purger.start()
        self.key_rotation.start()

    async def close(self) -> None:
        """Stop background work and release connections."""
        await self.purger.stop()
        await self.key_rotation.stop()
        await self.revocations.stop()
        try:
            await self.audit.writer.stop()
        except Exception:
            log.exception("audit entries could not be written at shutdown")
        if self.audit.sink is not None:  # after the writer: its last entries are streamed too
            await self.audit.sink.stop()
        await self.statistics.wait()
        await self.broker.close()
        self.tokens.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


def _audit_sink(settings: Settings, metrics: Metrics) -> AuditSink | None:
    """Return the audit stream's sink when ``IDHUB_AUDIT__SINK`` names one."""
    audit = settings.audit
    if not audit.sink:
        return None
    token = audit.sink_token.get_secret_value() if audit.sink_token is not None else None
    transport = transport_for(audit.sink, timeout=audit.sink_timeout, token=token)
    return AuditSink(
        transport, limit=audit.sink_queue, batch=audit.sink_batch, timeout=audit.sink_timeout, counter=metrics
    )


def build_context(settings: Settings, *, metrics: Metrics | None = None) -> AppContext:
    """Build the shared services from settings (no I/O beyond reading the master key)."""
    master = settings.master_key_bytes()
    metrics = metrics or Metrics()
    timeouts = Timeouts(
        connect=settings.database_connect_timeout,
        command=settings.database_command_timeout,
        pool=settings.database_pool_timeout,
    )
    engine = create_engine(settings.database_url, pool_size=settings.database_pool_size, timeouts=timeouts)
    metrics.watch_pool(lambda: pool_stats(engine))
    sessionmaker = create_sessionmaker(engine)
    sealer = Sealer(master)
    cookie_key = derive_key(master, "cookies")
    stale = settings.stale_if_error_seconds
    keys = KeyStore(sessionmaker, sealer, stale_if_error=stale, faults=metrics)
    secret_hasher = SecretHasher(derive_key(master, "secret-hash"))
    revocations = RevocationState(
        sessionmaker,
        poll_seconds=settings.revocation_poll_seconds,
        redis_url=settings.redis_url,
        redis_timeout=settings.redis_timeout,
        faults=metrics,
        observer=metrics,
    )
    redis = None
    throttle = Throttle(settings.throttle)
    if settings.redis_url:
        import redis.asyncio as aioredis

        # Short timeouts: a Redis that is down or frozen costs a request at most half a second, and
        # the counters then fall back to this process (design: losing Redis stops nothing).
        redis = aioredis.from_url(
            settings.redis_url, socket_connect_timeout=settings.redis_timeout, socket_timeout=settings.redis_timeout
        )
        counter = FallbackCounter(
            RedisCounter(redis),
            retry_seconds=settings.throttle.redis_retry_seconds,
            on_fallback=metrics.count_throttle_fallback,
        )
        throttle = Throttle(settings.throttle, counter)
    tenants = TenantCache(sessionmaker, settings.public_url, stale_if_error=stale, faults=metrics)
    clients = ClientCache(sessionmaker, ttl=settings.client_cache_ttl, stale_if_error=stale, faults=metrics)
    audit = AuditLog(AuditWriter(), AuditChain(derive_key(master, "audit-chain")), _audit_sink(settings, metrics))

    bus = EventBus()
    bus.subscribe(RevocationRecorded, revocations.on_revocation)
    bus.subscribe(ClientChanged, clients.on_change)
    bus.subscribe(TenantChanged, tenants.on_change)
    bus.subscribe(KeysRotated, keys.on_rotation)
    broker = Broker(sealer=sealer, cookie_key=cookie_key)
    bus.subscribe(IdentityProviderChanged, broker.provider_cache.on_change)
    bus.subscribe(DomainEvent, audit.committed)
    telemetry = Telemetry(metrics)  # counts and security log lines: committed events and rolled-back refusals
    telemetry.subscribe(bus)
    uow_factory = UnitOfWorkFactory(
        sessionmaker,
        bus=bus,
        before_commit=[audit.before_commit],
        after_rollback=[audit.after_rollback, telemetry.after_rollback],
    )
    audit.writer.uow_factory = uow_factory
    return AppContext(
        settings=settings,
        engine=engine,
        sessionmaker=sessionmaker,
        uow_factory=uow_factory,
        audit=audit,
        sealer=sealer,
        secret_hasher=secret_hasher,
        cookie_key=cookie_key,
        passwords=PasswordHasher(settings.passwords),
        keys=keys,
        tenants=tenants,
        clients=clients,
        revocations=revocations,
        tokens=TokenService(keys=keys, revocations=revocations, settings=settings.tokens),
        throttle=throttle,
        metrics=metrics,
        statistics=StatisticsRefresher(engine),
        provisioning_tokens=ProvisioningTokenCache(sessionmaker, secret_hasher, revocations),
        purger=Purger(uow_factory, interval=settings.purge_interval_seconds),
        broker=broker,
        key_rotation=KeyRotationSchedule(
            uow_factory,
            sealer=sealer,
            max_token_lifetime=timedelta(seconds=max(settings.tokens.access_token_ttl, settings.tokens.id_token_ttl)),
            interval=settings.purge_interval_seconds,
        ),
        redis=redis,
    )
