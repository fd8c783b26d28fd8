"""Abuse limits: one contract suite for the memory and Redis counters, the limits, and Redis outages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from idhub.metrics import Metrics
from idhub.settings import ThrottleSettings
from idhub.throttle import (
    FailureCounter,
    FallbackCounter,
    Limit,
    MemoryCounter,
    RedisCounter,
    Throttle,
    max_guesses_per_account_per_hour,
)
from tests.redis_support import redis_url_or_skip

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
README = Path(__file__).resolve().parents[1] / "README.md"


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


def _redis_client(url: str) -> Any:
    import redis.asyncio as aioredis

    return aioredis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)


@contextlib.contextmanager
def _logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture ``idhub.throttle`` records even after a logging setup elsewhere disabled or detached it."""
    logger = logging.getLogger("idhub.throttle")
    level, disabled, propagate = logger.level, logger.disabled, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.WARNING)
    logger.disabled, logger.propagate = False, False  # the handler sees each record once
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
        logger.disabled, logger.propagate = disabled, propagate


# --- counters (contract: memory and Redis behave the same) -------------------------------------
async def test_counter_reserve_stops_at_limit_all_or_nothing(counter: FailureCounter) -> None:
    limits = [Limit("a", 60, 3), Limit("b", 60, 100)]
    assert [await counter.reserve(limits) for _ in range(4)] == [True, True, True, False]
    # A refused reservation adds nothing to any key.
    assert (await counter.count("a", 60), await counter.count("b", 60)) == (3, 3)
    await counter.release(["a", "b"])
    assert (await counter.count("a", 60), await counter.count("b", 60)) == (2, 2)
    assert await counter.reserve(limits)


async def test_counter_release_never_below_zero_add_returns_count(counter: FailureCounter) -> None:
    await counter.release(["fresh"])
    assert await counter.count("fresh", 60) == 0
    assert [await counter.add("fresh", 60) for _ in range(3)] == [1, 2, 3]
    await counter.reset("fresh")
    assert await counter.count("fresh", 60) == 0


async def test_counter_parallel_reservations_limit_holds(counter: FailureCounter) -> None:
    limits = [Limit("acct:x", 60, 5), Limit("addr:y", 60, 1000)]
    results = await asyncio.gather(*(counter.reserve(limits) for _ in range(100)))
    assert results.count(True) == 5
    assert await counter.count("acct:x", 60) == 5


async def test_counter_window_expires_fixed_from_first_hit() -> None:
    now = [1000.0]
    counter = MemoryCounter(clock=lambda: now[0])
    limits = [Limit("k", 10, 2)]
    assert await counter.reserve(limits) and await counter.reserve(limits)
    now[0] += 9.9
    assert not await counter.reserve(limits)
    now[0] += 0.1
    assert await counter.reserve(limits)


async def test_redis_counter_window_expires() -> None:
    client = _redis_client(redis_url_or_skip())
    try:
        counter = RedisCounter(client, prefix=f"idhub-test:{uuid.uuid4().hex}:")
        assert await counter.reserve([Limit("k", 1, 1)])
        assert not await counter.reserve([Limit("k", 1, 1)])
        await asyncio.sleep(1.2)
        assert await counter.reserve([Limit("k", 1, 1)])
    finally:
        await client.aclose()


async def test_memory_counter_address_flood_keeps_account_budget() -> None:
    throttle = Throttle(
        ThrottleSettings(max_unknown_device_failures_per_account=2, max_failures_per_address=1000),
        MemoryCounter(max_keys=50),
    )
    for i in range(2):
        assert await throttle.reserve_sign_in(account="victim", address=f"10.0.0.{i}", device=None)
    for i in range(500):  # many fresh addresses: the address map evicts its oldest keys only
        await throttle.malformed_sign_in(address=f"2001:db8::{i:x}")
    assert await throttle.reserve_sign_in(account="victim", address="10.9.9.9", device=None) is None


# --- sign-in limits ------------------------------------------------------------------------------
async def test_throttle_account_and_address_limit_other_addresses_unaffected() -> None:
    throttle = Throttle(ThrottleSettings(max_failures_per_account=3, max_unknown_device_failures_per_account=10))
    for _ in range(3):
        assert await throttle.reserve_sign_in(account="acct", address="10.0.0.1", device=None)
    assert await throttle.reserve_sign_in(account="acct", address="10.0.0.1", device=None) is None
    assert await throttle.reserve_sign_in(account="acct", address="10.0.0.2", device=None)
    assert await throttle.reserve_sign_in(account="other", address="10.0.0.1", device=None)


async def test_throttle_unknown_browsers_budget_known_device_unaffected() -> None:
    throttle = Throttle(ThrottleSettings(max_unknown_device_failures_per_account=4, max_failures_per_device=2))
    for i in range(4):
        assert await throttle.reserve_sign_in(account="acct", address=f"198.51.100.{i}", device=None)
    assert await throttle.reserve_sign_in(account="acct", address="198.51.100.99", device=None) is None
    # The account's own browser counts only against itself: failures elsewhere do not lock it out...
    assert await throttle.reserve_sign_in(account="acct", address="198.51.100.1", device="dev1")
    assert await throttle.reserve_sign_in(account="acct", address="198.51.100.1", device="dev1")
    # ...but a stolen device cookie gets its own small budget and no more.
    assert await throttle.reserve_sign_in(account="acct", address="198.51.100.1", device="dev1") is None
    assert await throttle.reserve_sign_in(account="acct", address="198.51.100.1", device="dev2")


async def test_throttle_address_limit_across_accounts() -> None:
    throttle = Throttle(ThrottleSettings(max_failures_per_address=4))
    for i in range(4):
        assert await throttle.reserve_sign_in(account=f"user{i}", address="10.0.0.9", device=None)
    assert await throttle.reserve_sign_in(account="fresh", address="10.0.0.9", device=None) is None
    assert await throttle.reserve_sign_in(account="fresh", address="10.0.0.10", device=None)


async def test_throttle_success_gives_attempt_back_resets_pair() -> None:
    throttle = Throttle(ThrottleSettings(max_failures_per_account=2, max_unknown_device_failures_per_account=3))
    assert await throttle.reserve_sign_in(account="acct", address="10.0.0.1", device=None)  # a failure
    success = await throttle.reserve_sign_in(account="acct", address="10.0.0.1", device=None)
    assert success is not None
    await throttle.sign_in_succeeded(success)
    counter = throttle.counter
    assert await counter.count("pair:acct|10.0.0.1", 900) == 0  # this address knows the password
    assert await counter.count("acct:acct", 900) == 1  # the failure still counts for the account
    assert await counter.count("addr:10.0.0.1", 900) == 1


async def test_throttle_client_failures_delay_bounded() -> None:
    throttle = Throttle(ThrottleSettings(max_failures_per_account=2, client_failure_max_delay=0.3))
    delays = [await throttle.client_failed(client="t:app", address=f"10.0.0.{i}") for i in range(8)]
    assert delays[:2] == [0.0, 0.0]
    assert 0 < delays[2] < delays[3] and max(delays) == 0.3
    assert await throttle.client_failed(client=None, address="10.0.0.1") == 0.0


# --- the bound on guessing ---------------------------------------------------------------------
def test_guess_bound_default_settings_matches_readme() -> None:
    settings = ThrottleSettings()
    bound = max_guesses_per_account_per_hour(settings)
    # 10 unknown-browser attempts per 15 minutes: 4 windows start within an hour, plus 9 left in the
    # window open when it began.
    assert bound == 10 * 4 + 9 == 49
    assert f"at most **{bound}** password guesses per account per hour" in README.read_text()


@pytest.mark.parametrize("window", [900, 600, 3600, 7])
async def test_guess_bound_attacker_unlimited_addresses_reaches_never_exceeds(window: int) -> None:
    """The best attacker, a fresh address per guess: open a window, spend it at its end, then hammer."""
    settings = ThrottleSettings(window_seconds=window, max_unknown_device_failures_per_account=10)
    bound = max_guesses_per_account_per_hour(settings)
    now = [0.0]
    throttle = Throttle(settings, MemoryCounter(clock=lambda: now[0]))
    accepted: list[float] = []
    address = 0
    step = 0.5
    while now[0] < 2 * 3600 + window:
        burst = 1 if now[0] == 0 else (20 if now[0] >= window - step else 0)
        for _ in range(burst):
            address += 1
            if await throttle.reserve_sign_in(account="victim", address=f"a{address}", device=None):
                accepted.append(now[0])
        now[0] += step
    most, first = 0, 0
    for last, t in enumerate(accepted):  # the most accepted guesses in any hour [start, start + 3600)
        while accepted[first] <= t - 3600:
            first += 1
        most = max(most, last - first + 1)
    assert most == bound


# --- Redis outages -------------------------------------------------------------------------------
async def test_fallback_counter_unreachable_redis_memory_warns_once_counts(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    client = _redis_client(UNREACHABLE_REDIS)
    counter = FallbackCounter(RedisCounter(client), retry_seconds=60, on_fallback=metrics.count_throttle_fallback)
    throttle = Throttle(ThrottleSettings(max_failures_per_account=3), counter)
    try:
        with _logs(caplog):
            started = time.monotonic()
            results = [await throttle.reserve_sign_in(account="a", address="10.0.0.1", device=None) for _ in range(5)]
            elapsed = time.monotonic() - started
        assert [r is not None for r in results] == [True, True, True, False, False]  # limits still hold
        assert throttle.degraded
        assert elapsed < 2
        warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert len(warnings) == 1  # once per outage, not per request
        assert metrics.throttle_fallbacks == 5
        assert b"idhub_throttle_fallback_total 5.0" in metrics.render()
    finally:
        await client.aclose()


class PrivateRedis:
    """A ``redis-server`` of this test's own on a free port, that the test can stop and start."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed: cannot stop and restart a private Redis")
        self.binary = binary
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="idhub-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the server's URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*args, "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        """Stop the server (clients see their connections drop)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.remove()


async def test_fallback_counter_redis_stops_and_returns_shared_again(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    client = _redis_client(private_redis.url)
    counter = FallbackCounter(RedisCounter(client), retry_seconds=0.2, on_fallback=metrics.count_throttle_fallback)
    limits = [Limit("k", 60, 100)]
    try:
        with _logs(caplog):
            assert await counter.reserve(limits)
            assert not counter.degraded and metrics.throttle_fallbacks == 0
            private_redis.stop()
            for _ in range(3):
                assert await counter.reserve(limits)  # served from memory, no error
            assert counter.degraded and metrics.throttle_fallbacks == 3
            private_redis.start()
            await asyncio.sleep(0.3)
            assert await counter.reserve(limits)
            assert not counter.degraded
            assert metrics.throttle_fallbacks == 3
        messages = [r.getMessage() for r in caplog.records]
        assert sum("Redis unreachable" in m for m in messages) == 1
        assert sum("Redis answers again" in m for m in messages) == 1
        # Back on Redis: the count lives in the (restarted, empty) server again.
        assert await counter.primary.count("k", 60) == 1
    finally:
        await client.aclose()
