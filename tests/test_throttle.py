"""Brute-force throttle: one contract suite for the memory and the Redis counters."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from idhub.settings import ThrottleSettings
from idhub.throttle import FailureCounter, MemoryCounter, RedisCounter, Throttle
from tests.redis_support import redis_url_or_skip


@pytest.fixture(params=["memory", "redis"])
async def counter(request: pytest.FixtureRequest) -> AsyncIterator[FailureCounter]:
    if request.param == "memory":
        yield MemoryCounter()
        return
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url_or_skip())
    try:
        yield RedisCounter(client, prefix=f"idhub-test:{uuid.uuid4().hex}:")
    finally:
        await client.aclose()


async def test_throttle_account_failures_reach_limit_blocked(counter: FailureCounter) -> None:
    throttle = Throttle(ThrottleSettings(max_failures_per_account=3, max_failures_per_address=100), counter)
    for _ in range(2):
        await throttle.failed(account="acct", address="10.0.0.1")
    assert not await throttle.blocked(account="acct", address="10.0.0.1")
    await throttle.failed(account="acct", address="10.0.0.1")
    assert await throttle.blocked(account="acct", address="10.0.0.2")
    assert not await throttle.blocked(account="other", address="10.0.0.2")


async def test_throttle_address_failures_across_accounts_blocked(counter: FailureCounter) -> None:
    throttle = Throttle(ThrottleSettings(max_failures_per_account=100, max_failures_per_address=4), counter)
    for i in range(4):
        await throttle.failed(account=f"user{i}", address="10.0.0.9")
    assert await throttle.blocked(account="fresh", address="10.0.0.9")
    assert not await throttle.blocked(account="fresh", address="10.0.0.10")


async def test_throttle_success_clears_account_not_blocked(counter: FailureCounter) -> None:
    throttle = Throttle(ThrottleSettings(max_failures_per_account=2, max_failures_per_address=100), counter)
    await throttle.failed(account="acct", address=None)
    await throttle.succeeded(account="acct")
    await throttle.failed(account="acct", address=None)
    assert not await throttle.blocked(account="acct", address=None)


async def test_memory_counter_address_flood_keeps_account_lockout() -> None:
    throttle = Throttle(
        ThrottleSettings(max_failures_per_account=2, max_failures_per_address=1000), MemoryCounter(max_keys=50)
    )
    for _ in range(2):
        await throttle.failed(account="victim", address="10.0.0.1")
    for i in range(500):  # many fresh addresses: the address map evicts its oldest keys only
        await throttle.failed(account=None, address=f"2001:db8::{i:x}")
    assert await throttle.blocked(account="victim", address="10.9.9.9")
