"""Brute-force defence: count failures per account and per source address in a sliding window.

In-memory by default; with Redis configured, counters are shared by every process.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any, Protocol

from idhub.settings import ThrottleSettings


class FailureCounter(Protocol):
    """Counts failures of one key inside a window."""

    async def count(self, key: str, window: int) -> int:
        """Return the failures recorded for ``key`` within the last ``window`` seconds."""
        ...

    async def add(self, key: str, window: int) -> None:
        """Record one failure for ``key``."""
        ...

    async def reset(self, key: str) -> None:
        """Forget ``key``'s failures (after a success)."""
        ...


class MemoryCounter:
    """Per-process sliding-window counter."""

    def __init__(self, max_keys: int = 100_000) -> None:
        # Accounts and addresses are kept apart so a flood of addresses cannot push account
        # lockouts out; when a map is full its oldest keys go, never the whole map.
        self._maps: dict[str, dict[str, deque[float]]] = {"acct": {}, "other": {}}
        self._max_keys = max_keys

    def _map(self, key: str) -> dict[str, deque[float]]:
        return self._maps["acct" if key.startswith("acct:") else "other"]

    def _trim(self, key: str, window: int) -> deque[float] | None:
        table = self._map(key)
        hits = table.get(key)
        if hits is None:
            return None
        cutoff = time.monotonic() - window
        while hits and hits[0] < cutoff:
            hits.popleft()
        if not hits:
            del table[key]
            return None
        return hits

    async def count(self, key: str, window: int) -> int:
        """Return the failures recorded for ``key`` within the window."""
        hits = self._trim(key, window)
        return len(hits) if hits else 0

    async def add(self, key: str, window: int) -> None:
        """Record one failure for ``key``."""
        table = self._map(key)
        if key not in table and len(table) >= self._max_keys:
            # Evict the oldest tenth (dicts keep insertion order), not everything.
            for old in list(itertools.islice(table, max(1, self._max_keys // 10))):
                del table[old]
        hits = table.setdefault(key, deque(maxlen=10_000))
        hits.append(time.monotonic())

    async def reset(self, key: str) -> None:
        """Forget ``key``'s failures."""
        self._map(key).pop(key, None)


class RedisCounter:
    """Fixed-window counter shared through Redis (``INCR`` + ``EXPIRE``)."""

    def __init__(self, redis: Any, prefix: str = "idhub:throttle:") -> None:
        self._redis = redis
        self._prefix = prefix

    async def count(self, key: str, window: int) -> int:
        """Return the failures recorded for ``key``."""
        value = await self._redis.get(self._prefix + key)
        return int(value or 0)

    async def add(self, key: str, window: int) -> None:
        """Record one failure for ``key``; the counter expires ``window`` seconds after its first hit."""
        name = self._prefix + key
        pipe = self._redis.pipeline()
        pipe.incr(name)
        pipe.expire(name, window, nx=True)
        await pipe.execute()

    async def reset(self, key: str) -> None:
        """Forget ``key``'s failures."""
        await self._redis.delete(self._prefix + key)


class Throttle:
    """Decide whether an account or an address has failed too often, and record outcomes."""

    def __init__(self, settings: ThrottleSettings, counter: FailureCounter | None = None) -> None:
        self.settings = settings
        self.counter: FailureCounter = counter or MemoryCounter()

    async def blocked(self, *, account: str | None, address: str | None) -> bool:
        """Tell whether further attempts for this account or from this address are refused."""
        window = self.settings.window_seconds
        if account is not None and await self.counter.count("acct:" + account, window) >= (
            self.settings.max_failures_per_account
        ):
            return True
        return address is not None and await self.counter.count("addr:" + address, window) >= (
            self.settings.max_failures_per_address
        )

    async def failed(self, *, account: str | None, address: str | None) -> None:
        """Record a failed attempt."""
        window = self.settings.window_seconds
        if account is not None:
            await self.counter.add("acct:" + account, window)
        if address is not None:
            await self.counter.add("addr:" + address, window)

    async def succeeded(self, *, account: str | None) -> None:
        """Clear the account's failures after a successful attempt."""
        if account is not None:
            await self.counter.reset("acct:" + account)
