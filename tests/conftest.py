"""Shared fixtures: one migrated app per database backend per session, fresh tenants per test.

Every test that takes ``env`` runs on SQLite and, when ``IDHUB_TEST_DATABASE_URL`` points at a
reachable PostgreSQL, on PostgreSQL too.
"""

from __future__ import annotations

import asyncio
import base64
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
from idhub.directory.users import create_user
from idhub.settings import Settings
from idhub.tenants.service import TenantInfo, get_or_create_tenant

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

    def tenant(self, slug: str | None = None) -> TenantInfo:
        """Create a fresh tenant (unique slug) and return its snapshot."""
        slug = slug or f"t-{uuid.uuid4().hex[:12]}"

        async def work() -> TenantInfo:
            async with self.ctx.sessionmaker() as session:
                await get_or_create_tenant(session, slug=slug, sealer=self.ctx.sealer)
                await session.commit()
            info = await self.ctx.tenants.get(slug)
            assert info is not None
            return info

        return self.run(work)

    def oauth_client(self, tenant: TenantInfo, **kwargs: Any) -> tuple[str, str | None]:
        """Register a client in ``tenant``; return ``(client_id, secret)``."""
        kwargs.setdefault("name", "test app")

        async def work() -> tuple[str, str | None]:
            async with self.ctx.sessionmaker() as session:
                row, secret = await create_client(session, tenant_id=tenant.id, hasher=self.ctx.secret_hasher, **kwargs)
                await session.commit()
            return row.client_id, secret

        return self.run(work)

    def user(
        self, tenant: TenantInfo, username: str = "alice", password: str | None = "correct horse", **kw: Any
    ) -> str:
        """Create a user in ``tenant``; return its id."""

        async def work() -> str:
            async with self.ctx.sessionmaker() as session:
                row = await create_user(
                    session, tenant_id=tenant.id, username=username, password=password, hasher=self.ctx.passwords, **kw
                )
                await session.commit()
            return str(row.id)

        return self.run(work)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One migrated app per backend for the whole session."""
    root = tmp_path_factory.mktemp(f"idhub-{request.param}")
    url = backend_url(request.param, root)
    app = create_app(make_settings(url, root))
    with TestClient(app, base_url=PUBLIC_URL) as client:
        yield Env(client=client, ctx=app.state.ctx, backend=request.param)
