"""Shared fixtures: one migrated app per database backend per session, fresh tenants per test.

Every test that takes ``env`` runs on SQLite and, when ``IDHUB_TEST_DATABASE_URL`` points at a
reachable PostgreSQL, on PostgreSQL too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from idhub.app import create_app
from idhub.clients.service import create_client
from idhub.context import AppContext
from idhub.directory.profile import UserProfile, ValueRecord
from idhub.events import Actor, RevocationRecorded
from idhub.settings import Settings, ThrottleSettings
from idhub.storage.uow import EventBus, UnitOfWork, UnitOfWorkFactory
from idhub.tenants.service import TenantInfo, get_or_create_tenant
from idhub.throttle import Throttle
from idhub.tokens.revocation import RevocationState

TEST_ACTOR = Actor("test", "fixture")

# Throwaway master key for tests only (never used outside the test suite).
TEST_MASTER_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()
PUBLIC_URL = "http://testserver"
PG_ENV = "IDHUB_TEST_DATABASE_URL"


def postgres_url() -> str | None:
    """Return the PostgreSQL URL for tests, or None when not configured."""
    return os.environ.get(PG_ENV) or None


def _pg_reachable(url: str) -> str | None:
    import asyncpg

    async def probe() -> None:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def reset_postgres(url: str) -> None:
    """Drop every table of the test database so migrations start from empty."""
    import asyncpg

    async def reset() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        finally:
            await conn.close()

    asyncio.run(reset())


def backend_url(backend: str, tmp_root: Path) -> str:
    """Return a fresh database URL for ``backend`` or skip with the reason."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_root / 'idhub-test.db'}"
    url = postgres_url()
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)")
    problem = _pg_reachable(url)
    if problem:
        pytest.skip(f"PostgreSQL at {PG_ENV} is unreachable: {problem}")
    reset_postgres(url)
    return url


TEST_PEER = ("127.0.0.1", 50000)  # the address every TestClient request comes from


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test app."""
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "public_url": PUBLIC_URL,
        "master_key": TEST_MASTER_KEY,
        "data_dir": data_dir,
        "auto_migrate": True,
        "revocation_poll_seconds": 0.2,
        # Every TestClient request comes from one address; tests of address throttling set their own.
        "throttle": {"max_failures_per_address": 100_000},
        # The test client stands in for a trusted proxy, so tests may choose their request ids.
        "trusted_proxies": [TEST_PEER[0]],
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Env:
    """A running app plus helpers to create tenants, clients and users in it."""

    client: TestClient
    ctx: AppContext
    backend: str
    runner: Callable[..., Any] | None = None
    base_url: str = PUBLIC_URL

    def run(self, coro_fn: Any, *args: Any) -> Any:
        """Run an async callable on the app's event loop."""
        if self.runner is not None:
            return self.runner(coro_fn, *args)
        return self.client.portal.call(coro_fn, *args)  # type: ignore[union-attr]

    @contextlib.contextmanager
    def swapped_throttle(self, **settings: Any) -> Iterator[Throttle]:
        """Serve with a fresh throttle built from ``settings`` for the ``with`` block (tests of limits)."""
        original = self.ctx.throttle
        self.ctx.throttle = throttle = Throttle(ThrottleSettings(**settings))
        try:
            yield throttle
        finally:
            self.ctx.throttle = original

    def tenant(self, slug: str | None = None) -> TenantInfo:
        """Create a fresh tenant (unique slug) and return its snapshot."""
        slug = slug or f"t-{uuid.uuid4().hex[:12]}"

        async def work() -> TenantInfo:
            async with self.ctx.uow(actor=TEST_ACTOR, surface="test") as uow:
                await get_or_create_tenant(uow, slug=slug, sealer=self.ctx.sealer)
            info = await self.ctx.tenants.get(slug)
            assert info is not None
            return info

        return self.run(work)

    def oauth_client(self, tenant: TenantInfo, **kwargs: Any) -> tuple[str, str | None]:
        """Register a client in ``tenant``; return ``(client_id, secret)``."""
        kwargs.setdefault("name", "test app")

        async def work() -> tuple[str, str | None]:
            async with self.ctx.uow(actor=TEST_ACTOR, surface="test") as uow:
                row, secret = await create_client(uow, tenant_id=tenant.id, hasher=self.ctx.secret_hasher, **kwargs)
            return row.client_id, secret

        return self.run(work)

    def user(
        self,
        tenant: TenantInfo,
        username: str = "alice",
        password: str | None = "correct horse",
        *,
        email: str | None = None,
        email_verified: bool = False,
        **profile: Any,
    ) -> str:
        """Create a user in ``tenant`` through the directory; return its id."""
        values = (ValueRecord("emails", value=email, type="work", primary=True),) if email else ()

        async def work() -> str:
            async with self.ctx.uow(actor=TEST_ACTOR, surface="test") as uow:
                row = await self.ctx.directory(uow).users.create(
                    tenant.id,
                    UserProfile(user_name=username, values=values, **profile),
                    password=password,
                    email_verified=email_verified,
                )
            return str(row.id)

        return self.run(work)

    def disable_user(self, tenant: TenantInfo, user_id: str) -> None:
        """Disable a user through the directory's one disabling path (revocations applied on commit)."""

        async def work() -> None:
            async with self.uow() as uow:
                users = self.ctx.directory(uow).users
                await users.set_active(await users.get(tenant.id, uuid.UUID(user_id)), False)

        self.run(work)

    def uow(self) -> Any:
        """Start a unit of work acting as the test fixture (``async with env.uow() as uow``)."""
        return self.ctx.uow(actor=TEST_ACTOR, surface="test")


def uow_publishing_to(env: Env, state: RevocationState | None = None) -> UnitOfWork:
    """Return a unit of work whose committed revocations reach ``state`` only (another process's view)."""
    bus = EventBus()
    if state is not None:
        bus.subscribe(RevocationRecorded, state.on_revocation)
    return UnitOfWorkFactory(env.ctx.sessionmaker, bus=bus)(actor=TEST_ACTOR, surface="test")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One migrated app per backend for the whole session."""
    root = tmp_path_factory.mktemp(f"idhub-{request.param}")
    url = backend_url(request.param, root)
    app = create_app(make_settings(url, root))
    with TestClient(app, base_url=PUBLIC_URL, client=TEST_PEER) as client:
        yield Env(client=client, ctx=app.state.ctx, backend=request.param)
