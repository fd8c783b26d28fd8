"""A small in-process read-through cache that refreshes in the background while serving.

Hot paths (the token endpoint resolving its tenant and client) must not wait on the database every
few seconds when an entry expires; a slightly stale entry is served while one task reloads it.
Entries much older than the lifetime (an idle process) are reloaded before use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Past this multiple of the lifetime an entry is reloaded before it is served.
STALE_LIMIT = 4.0


class RefreshingCache(Generic[K, V]):
    """Map keys to values loaded by ``loader``; fresh for ``ttl`` seconds, then refreshed behind the scenes."""

    def __init__(self, loader: Callable[[K], Awaitable[V]], *, ttl: float, max_entries: int = 50_000) -> None:
        self._loader = loader
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._refreshing: dict[K, asyncio.Task[None]] = {}

    async def get(self, key: K) -> V:
        """Return the value for ``key``, loading it when missing or too old."""
        hit = self._entries.get(key)
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age < self._ttl:
                return hit[1]
            if age < self._ttl * STALE_LIMIT:
                if key not in self._refreshing:
                    self._refreshing[key] = asyncio.create_task(self._refresh(key))
                return hit[1]
        return await self._load(key)

    async def _load(self, key: K) -> V:
        value = await self._loader(key)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic(), value)
        return value

    async def _refresh(self, key: K) -> None:
        try:
            await self._load(key)
        except Exception:
            log.exception("background cache refresh failed; the next request reloads")
            self._entries.pop(key, None)
        finally:
            self._refreshing.pop(key, None)

    def invalidate(self, match: Callable[[K], bool] | None = None) -> None:
        """Forget every entry, or those whose key satisfies ``match``."""
        if match is None:
            self._entries.clear()
            return
        for key in [k for k in self._entries if match(k)]:
            del self._entries[key]
