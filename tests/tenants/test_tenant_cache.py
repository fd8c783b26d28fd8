"""The tenant cache: misses are never stored, real tenants are never flushed, stale-if-error on outages."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from idhub.tenants.service import TenantCache, get_or_create_tenant
from tests.conftest import PUBLIC_URL, Env, uow_publishing_to


class CountingSessions:
    """A sessionmaker that counts the sessions it opens and can play a database that is down."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.opened = 0
        self.failure: Exception | None = None

    def __call__(self) -> Any:
        self.opened += 1
        if self.failure is not None:
            failure = self.failure

            class _Failing:
                async def __aenter__(self) -> Any:
                    raise failure

                async def __aexit__(self, *exc: object) -> None:
                    return None

            return _Failing()
        return self.real()


def _cache(env: Env, **kwargs: Any) -> tuple[TenantCache, CountingSessions]:
    sessions = CountingSessions(env.ctx.sessionmaker)
    return TenantCache(sessions, PUBLIC_URL, **kwargs), sessions  # type: ignore[arg-type]


def _slug() -> str:
    return f"r-{uuid.uuid4().hex[:16]}"


def test_tenant_cache_random_slugs_one_lookup_each_no_growth_no_eviction(env: Env) -> None:
    known = [env.tenant() for _ in range(3)]
    cache, sessions = _cache(env, ttl=60, max_entries=10)

    async def work() -> None:
        for tenant in known:
            assert await cache.get(tenant.slug) == tenant
        assert len(cache) == 3
        before = sessions.opened
        for _ in range(200):
            assert await cache.get(_slug()) is None
        assert sessions.opened - before == 200  # one lookup per made-up slug, nothing more
        assert len(cache) == 3  # misses are not stored
        before = sessions.opened
        for tenant in known:
            assert await cache.get(tenant.slug) == tenant
        assert sessions.opened == before  # the real tenants were neither evicted nor flushed
        # A malformed slug costs nothing at all.
        assert await cache.get("Not A Slug!") is None and sessions.opened == before

    env.run(work)


def test_tenant_cache_full_drops_least_recently_used_only(env: Env) -> None:
    tenants = [env.tenant() for _ in range(4)]
    cache, sessions = _cache(env, ttl=60, max_entries=3)

    async def work() -> None:
        for tenant in tenants[:3]:
            await cache.get(tenant.slug)
        await cache.get(tenants[0].slug)  # now the most recently used
        await cache.get(tenants[3].slug)  # pushes out tenants[1] only
        assert len(cache) == 3
        before = sessions.opened
        for tenant in (tenants[0], tenants[2], tenants[3]):
            assert await cache.get(tenant.slug) == tenant
        assert sessions.opened == before
        assert await cache.get(tenants[1].slug) == tenants[1]
        assert sessions.opened == before + 1

    env.run(work)


def _create_elsewhere(env: Env, slug: str) -> None:
    """Create tenant ``slug`` as another process would: no event reaches this app's cache."""

    async def work() -> None:
        async with uow_publishing_to(env) as uow:
            await get_or_create_tenant(uow, slug=slug, sealer=env.ctx.sealer)

    env.run(work)


def test_tenant_created_after_miss_found_at_once(env: Env) -> None:
    slug = _slug()
    discovery = f"/tenants/{slug}/.well-known/openid-configuration"
    assert env.client.get(discovery).status_code == 404
    _create_elsewhere(env, slug)
    response = env.client.get(discovery)
    assert response.status_code == 200 and response.json()["issuer"] == f"{PUBLIC_URL}/tenants/{slug}"


def test_tenant_cache_many_misses_keep_app_tenants(env: Env) -> None:
    tenant = env.tenant()

    async def work() -> None:
        assert await env.ctx.tenants.get(tenant.slug) == tenant
        size = len(env.ctx.tenants)
        for _ in range(300):
            assert await env.ctx.tenants.get(_slug()) is None
        assert len(env.ctx.tenants) == size

    env.run(work)


def test_tenant_cache_stale_if_error_serves_last_known_while_database_down(env: Env) -> None:
    tenant = env.tenant()
    cache, sessions = _cache(env, ttl=0.05, stale_if_error=30)

    async def work() -> None:
        assert await cache.get(tenant.slug) == tenant
        sessions.failure = ConnectionRefusedError(111, "Connection refused")
        await asyncio.sleep(0.07)  # stale: served while a background reload fails
        assert await cache.get(tenant.slug) == tenant
        await asyncio.sleep(0.3)  # past the idle limit: still served from the last load
        assert await cache.get(tenant.slug) == tenant
        await asyncio.sleep(0.05)
        assert await cache.get(tenant.slug) == tenant
        with pytest.raises(ConnectionRefusedError):
            await cache.get(_slug())  # an unknown slug has nothing to fall back on: the fault is the answer
        sessions.failure = None
        await asyncio.sleep(0.3)
        assert await cache.get(tenant.slug) == tenant  # recovered without a restart
        assert len(cache) == 1

    env.run(work)


def test_tenant_cache_stale_if_error_window_bounded(env: Env) -> None:
    tenant = env.tenant()
    cache, sessions = _cache(env, ttl=0.05, stale_if_error=0.1)

    async def work() -> None:
        assert await cache.get(tenant.slug) == tenant
        sessions.failure = ConnectionRefusedError(111, "Connection refused")
        await asyncio.sleep(0.3)  # past ttl + stale_if_error
        with pytest.raises(ConnectionRefusedError):
            await cache.get(tenant.slug)

    env.run(work)


def test_tenant_cache_stale_if_error_not_for_bugs(env: Env) -> None:
    tenant = env.tenant()
    cache, sessions = _cache(env, ttl=0.05, stale_if_error=30)

    async def work() -> None:
        assert await cache.get(tenant.slug) == tenant
        sessions.failure = RuntimeError("a bug, not an outage")
        await asyncio.sleep(0.3)
        with pytest.raises(RuntimeError):
            await cache.get(tenant.slug)

    env.run(work)


def test_tenant_cache_settings_wire_stale_if_error(env: Env) -> None:
    assert env.ctx.tenants._stale_if_error == env.ctx.settings.stale_if_error_seconds
