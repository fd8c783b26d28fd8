"""Stale-if-error: clients and signing keys as last loaded stand in for a reload that failed, for a bounded time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idhub.clients.service import ClientCache
from idhub.crypto.keys import KeyStore
from idhub.metrics import Metrics
from tests.conftest import Env


class Switchable:
    """A session factory whose database can be switched off (connections refused)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self.down = False
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.down:
            return _Refused()
        return self._sessionmaker()


class _Refused:
    async def __aenter__(self) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    async def __aexit__(self, *_exc: object) -> None:
        return None


def test_client_cache_reload_fails_serves_last_known_until_stale_limit(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, grant_types=["client_credentials"], scope="api")
    database = Switchable(env.ctx.sessionmaker)
    metrics = Metrics()
    cache = ClientCache(database, ttl=0.05, stale_if_error=0.6, faults=metrics)  # type: ignore[arg-type]

    async def work() -> tuple[list[bool], bool]:
        assert await cache.get(tenant.id, client_id) is not None
        database.down = True
        served = []
        for _ in range(8):  # 0.4 s: every lookup's entry is due for a reload that fails
            await asyncio.sleep(0.05)
            served.append(await cache.get(tenant.id, client_id) is not None)
        await asyncio.sleep(0.4)  # now past the stale limit (0.6 s after the last load)
        try:
            await cache.get(tenant.id, client_id)
            await asyncio.sleep(0.1)
            await cache.get(tenant.id, client_id)
            beyond = True
        except ConnectionRefusedError:
            beyond = False
        return served, beyond

    with caplog.at_level(logging.WARNING, logger="idhub.clients.service"):
        served, beyond = env.run(work)
    assert all(served)
    assert beyond is False  # bounded: a fault once the stale period is over
    assert metrics.faults("database", "stale_client") > 0
    assert len([r for r in caplog.records if r.name == "idhub.clients.service"]) == 1  # logged once


def test_client_cache_changed_in_this_process_not_served_stale(env: Env) -> None:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, grant_types=["client_credentials"], scope="api")
    database = Switchable(env.ctx.sessionmaker)
    cache = ClientCache(database, ttl=0.05, stale_if_error=60)  # type: ignore[arg-type]

    async def work() -> bool:
        assert await cache.get(tenant.id, client_id) is not None
        database.down = True
        cache.invalidate(tenant.id, client_id)  # e.g. the client was disabled here
        try:
            await cache.get(tenant.id, client_id)
        except ConnectionRefusedError:
            return False
        return True

    assert env.run(work) is False


def test_key_store_reload_fails_serves_last_keys_until_stale_limit(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    tenant = env.tenant()
    database = Switchable(env.ctx.sessionmaker)
    metrics = Metrics()
    keys = KeyStore(database, env.ctx.sealer, ttl=0.05, stale_if_error=0.5, faults=metrics)  # type: ignore[arg-type]

    async def work() -> tuple[list[str], str]:
        first = await keys.get(tenant.id)
        kid = first.keys[0].kid
        database.down = True
        served = []
        for _ in range(6):
            await asyncio.sleep(0.05)
            served.append((await keys.get(tenant.id)).keys[0].kid)
        # An unknown kid asks for a synchronous reload: still the last keys, not an error.
        served.append((await keys.get(tenant.id, max_age=0.01)).keys[0].kid)
        await asyncio.sleep(0.5)
        try:
            await keys.get(tenant.id)
            beyond = "served"
        except ConnectionRefusedError:
            beyond = "refused"
        assert all(value == kid for value in served)
        return served, beyond

    with caplog.at_level(logging.WARNING, logger="idhub.crypto.keys"):
        served, beyond = env.run(work)
    assert len(served) == 7
    assert beyond == "refused"
    assert metrics.faults("database", "stale_keys") > 0
    assert len([r for r in caplog.records if r.name == "idhub.crypto.keys"]) == 1
