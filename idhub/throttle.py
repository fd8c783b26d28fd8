"""Abuse limits: attempts reserved atomically per account, address and device, in fixed windows.

In-memory by default; with Redis configured, counters are shared by every process, and while Redis is
unreachable they fall back to this process's memory (README "Abuse limits"; design: losing Redis loses
nothing and stops nothing).

Sign-in (OWASP Authentication and Credential Stuffing Prevention cheat sheets): an attempt is reserved
*before* the password is checked, in one atomic step against every limit that applies, so no number of
parallel requests on any number of processes gets more checks than the limits allow. A browser without
the account's device cookie reserves from three budgets: the account from this address, the address
across accounts, and the account's budget for unknown browsers (which bounds guessing from unlimited
addresses); a browser with the device cookie reserves only from its own, so failures made elsewhere
never lock it out. A failure keeps its reservation; a success gives it back.

Client authentication (RFC 6749 §2.3, §5.2): failures are limited per source address; a client's
failures only slow its next failures down, so the right secret is never refused because of them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from idhub.settings import ThrottleSettings

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# Belt and braces over the client's own socket timeouts (set where the client is built).
REDIS_OP_TIMEOUT = 1.0
HOUR = 3600


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``limit`` reservations on ``key`` per ``window`` seconds."""

    key: str
    window: int
    limit: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """Attempts reserved by one call; ``release`` gives them back, ``reset`` clears those counters."""

    release: tuple[str, ...]
    reset: tuple[str, ...] = ()


class FailureCounter(Protocol):
    """Fixed-window counters: a key's window starts with its first hit and lasts ``window`` seconds."""

    async def count(self, key: str, window: int) -> int:
        """Return the hits recorded for ``key`` in its current window."""
        ...

    async def add(self, key: str, window: int) -> int:
        """Record one hit for ``key``; return the new count."""
        ...

    async def reserve(self, limits: Sequence[Limit]) -> bool:
        """Add one hit to every key unless one of them is at its limit (all or nothing, atomically)."""
        ...

    async def release(self, keys: Sequence[str]) -> None:
        """Take one hit back from each key (never below zero)."""
        ...

    async def reset(self, key: str) -> None:
        """Forget ``key``'s hits."""
        ...


class MemoryCounter:
    """Per-process fixed-window counters.

    ``reserve`` checks and adds without an ``await`` in between, so on one event loop it is atomic.
    """

    def __init__(self, max_keys: int = 100_000, *, clock: Clock = time.monotonic) -> None:
        # Account budgets are kept apart so a flood of addresses cannot push them out; when a map is
        # full its oldest keys go, never the whole map. Entry: [count, window end].
        self._maps: dict[str, dict[str, list[float]]] = {"acct": {}, "other": {}}
        self._max_keys = max_keys
        self._clock = clock

    def _map(self, key: str) -> dict[str, list[float]]:
        return self._maps["acct" if key.startswith("acct:") else "other"]

    def _current(self, key: str, now: float) -> list[float] | None:
        table = self._map(key)
        entry = table.get(key)
        if entry is not None and entry[1] <= now:
            del table[key]
            return None
        return entry

    def _hit(self, key: str, window: int, now: float) -> int:
        entry = self._current(key, now)
        if entry is None:
            table = self._map(key)
            if len(table) >= self._max_keys:
                # Evict the oldest tenth (dicts keep insertion order), not everything.
                for old in list(itertools.islice(table, max(1, self._max_keys // 10))):
                    del table[old]
            entry = table[key] = [0, now + window]
        entry[0] += 1
        return int(entry[0])

    async def count(self, key: str, window: int) -> int:
        """Return the hits recorded for ``key`` in its current window."""
        entry = self._current(key, self._clock())
        return int(entry[0]) if entry else 0

    async def add(self, key: str, window: int) -> int:
        """Record one hit for ``key``; return the new count."""
        return self._hit(key, window, self._clock())

    async def reserve(self, limits: Sequence[Limit]) -> bool:
        """Add one hit to every key unless one is at its limit; no await, so no interleaving."""
        now = self._clock()
        for limit in limits:
            entry = self._current(limit.key, now)
            if entry is not None and entry[0] >= limit.limit:
                return False
        for limit in limits:
            self._hit(limit.key, limit.window, now)
        return True

    async def release(self, keys: Sequence[str]) -> None:
        """Take one hit back from each key."""
        now = self._clock()
        for key in keys:
            entry = self._current(key, now)
            if entry is not None:
                entry[0] -= 1
                if entry[0] <= 0:
                    del self._map(key)[key]

    async def reset(self, key: str) -> None:
        """Forget ``key``'s hits."""
        self._map(key).pop(key, None)


# KEYS: counters; ARGV: limit and window of each. Check every key, then count on every key: one
# atomic step on the server, however many processes ask at once.
_RESERVE = """
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[2 * i - 1]) then return 0 end
end
for i = 1, #KEYS do
  redis.call('INCR', KEYS[i])
  if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i]) end
end
return 1
"""
_ADD = """
local n = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""
_RELEASE = """
for i = 1, #KEYS do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n > 1 then redis.call('DECR', KEYS[i]) elseif n == 1 then redis.call('DEL', KEYS[i]) end
end
return 0
"""


class RedisCounter:
    """Fixed-window counters shared through Redis (``INCR`` + ``EXPIRE`` in server-side scripts)."""

    def __init__(self, redis: Any, prefix: str = "idhub:throttle:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._reserve = redis.register_script(_RESERVE)
        self._add = redis.register_script(_ADD)
        self._release = redis.register_script(_RELEASE)

    async def count(self, key: str, window: int) -> int:
        """Return the hits recorded for ``key``."""
        value = await self._redis.get(self._prefix + key)
        return int(value or 0)

    async def add(self, key: str, window: int) -> int:
        """Record one hit; the counter expires ``window`` seconds after its first hit."""
        return int(await self._add(keys=[self._prefix + key], args=[window]))

    async def reserve(self, limits: Sequence[Limit]) -> bool:
        """Add one hit to every key unless one is at its limit (one atomic script)."""
        keys = [self._prefix + limit.key for limit in limits]
        args = [value for limit in limits for value in (limit.limit, limit.window)]
        return bool(await self._reserve(keys=keys, args=args))

    async def release(self, keys: Sequence[str]) -> None:
        """Take one hit back from each key."""
        if keys:
            await self._release(keys=[self._prefix + key for key in keys])

    async def reset(self, key: str) -> None:
        """Forget ``key``'s hits."""
        await self._redis.delete(self._prefix + key)


class FallbackCounter:
    """Use Redis while it answers and this process's memory while it does not (never an error).

    The first failure of an outage logs one warning and switches to memory; Redis is tried again
    every ``retry_seconds`` (by one request, the others stay on memory meanwhile) and used again as
    soon as it answers. Every operation served from memory because of an outage is counted in
    ``idhub_throttle_fallback_total``. Counts made during an outage stay in the memory of the process
    that made them.
    """

    def __init__(
        self,
        primary: FailureCounter,
        fallback: FailureCounter | None = None,
        *,
        retry_seconds: float = 5.0,
        on_fallback: Callable[[], None] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback: FailureCounter = fallback or MemoryCounter()
        self._retry_seconds = retry_seconds
        self._on_fallback = on_fallback
        self._clock = clock
        self._down = False
        self._retry_at = 0.0

    @property
    def degraded(self) -> bool:
        """Tell whether counters are per-process right now because Redis is unreachable."""
        return self._down

    async def _run(self, name: str, *args: Any) -> Any:
        if self._down:
            now = self._clock()
            if now < self._retry_at:
                return await self._serve_locally(name, *args)
            self._retry_at = now + self._retry_seconds  # one probe at a time
        try:
            async with asyncio.timeout(REDIS_OP_TIMEOUT):
                result = await getattr(self.primary, name)(*args)
        except Exception as exc:  # any Redis failure: connection, timeout, protocol
            if not self._down:
                self._down = True
                self._retry_at = self._clock() + self._retry_seconds
                log.warning(
                    "Redis unreachable for abuse-limit counters (%s); counting per process until it answers",
                    type(exc).__name__,
                )
            return await self._serve_locally(name, *args)
        if self._down:
            self._down = False
            log.warning("Redis answers again; abuse-limit counters are shared again")
        return result

    async def _serve_locally(self, name: str, *args: Any) -> Any:
        if self._on_fallback is not None:
            self._on_fallback()
        return await getattr(self.fallback, name)(*args)

    async def count(self, key: str, window: int) -> int:
        """Return the hits recorded for ``key``."""
        return int(await self._run("count", key, window))

    async def add(self, key: str, window: int) -> int:
        """Record one hit for ``key``; return the new count."""
        return int(await self._run("add", key, window))

    async def reserve(self, limits: Sequence[Limit]) -> bool:
        """Add one hit to every key unless one is at its limit."""
        return bool(await self._run("reserve", limits))

    async def release(self, keys: Sequence[str]) -> None:
        """Take one hit back from each key."""
        await self._run("release", keys)

    async def reset(self, key: str) -> None:
        """Forget ``key``'s hits."""
        await self._run("reset", key)


def max_guesses_per_account_per_hour(settings: ThrottleSettings) -> int:
    """Return the most passwords an attacker with unlimited addresses can try on one account per hour.

    Without the account's device cookie every attempt reserves from the account's unknown-browser
    budget ``L`` per window of ``w`` seconds; a window starts with its first hit. Windows starting
    inside one hour start at least ``w`` apart, so at most ``ceil(3600 / w)`` of them, each allowing
    ``L``; the window already open when the hour starts had its first hit before it, so it adds at
    most ``L - 1``. (Per process while Redis is unreachable.)
    """
    budget = settings.max_unknown_device_failures_per_account
    return budget * math.ceil(HOUR / settings.window_seconds) + budget - 1


class Throttle:
    """Reserve sign-in attempts and count client-authentication failures against the limits."""

    def __init__(self, settings: ThrottleSettings, counter: FailureCounter | None = None) -> None:
        self.settings = settings
        self.counter: FailureCounter = counter or MemoryCounter()

    @property
    def degraded(self) -> bool:
        """Tell whether the shared counters are unreachable and this process counts alone."""
        return isinstance(self.counter, FallbackCounter) and self.counter.degraded

    # --- sign-in ------------------------------------------------------------------------------
    def sign_in_limits(self, *, account: str, address: str | None, device: str | None) -> list[Limit]:
        """Return the limits one sign-in attempt reserves from.

        A browser holding the account's device cookie counts only against that device (OWASP
        Authentication CS, "device cookies": a known browser is not locked out by failures from
        elsewhere). Any other browser counts against the account from its address, the address
        across accounts, and the account's budget for unknown browsers.
        """
        window = self.settings.window_seconds
        if device is not None:
            return [Limit(f"dev:{account}|{device}", window, self.settings.max_failures_per_device)]
        limits = [Limit(f"acct:{account}", window, self.settings.max_unknown_device_failures_per_account)]
        if address is not None:
            limits.append(Limit(f"pair:{account}|{address}", window, self.settings.max_failures_per_account))
            limits.append(Limit(f"addr:{address}", window, self.settings.max_failures_per_address))
        return limits

    async def reserve_sign_in(self, *, account: str, address: str | None, device: str | None) -> Reservation | None:
        """Reserve one attempt before the password is checked, or return ``None`` when a limit is reached."""
        limits = self.sign_in_limits(account=account, address=address, device=device)
        if not await self.counter.reserve(limits):
            return None
        # On success the attempt is given back. The counters of this account from this address or
        # device start over (whoever is there knows the password); the account's unknown-browser
        # budget and the address's budget only get this one attempt back, so signing in to one's own
        # account does not buy more guesses at others.
        scoped = tuple(limit.key for limit in limits if limit.key.startswith(("pair:", "dev:")))
        shared = tuple(limit.key for limit in limits if limit.key not in scoped)
        return Reservation(release=shared, reset=scoped)

    async def sign_in_succeeded(self, reservation: Reservation) -> None:
        """Give a successful attempt's reservation back."""
        await self.counter.release(reservation.release)
        for key in reservation.reset:
            await self.counter.reset(key)

    async def malformed_sign_in(self, *, address: str | None) -> None:
        """Count a malformed attempt against its address."""
        if address is not None:
            await self.counter.add(f"addr:{address}", self.settings.window_seconds)

    # --- client authentication ----------------------------------------------------------------
    async def client_address_blocked(self, address: str | None) -> bool:
        """Tell whether client authentication from ``address`` failed too often (RFC 6819 §5.1.4.2.3)."""
        if address is None:
            return False
        count = await self.counter.count(f"caddr:{address}", self.settings.window_seconds)
        return count >= self.settings.max_failures_per_address

    async def client_failed(self, *, client: str | None, address: str | None) -> float:
        """Count a failed client authentication; return how long to hold its answer back (seconds).

        ``client`` is ``None`` for unknown and public clients: there is no secret to guess, so
        nothing is counted for them. The delay grows with the client's failures past
        ``max_failures_per_account`` and never exceeds ``client_failure_max_delay``.
        """
        window = self.settings.window_seconds
        if address is not None:
            await self.counter.add(f"caddr:{address}", window)
        if client is None:
            return 0.0
        return self.client_delay(await self.counter.add(f"client:{client}", window))

    def client_delay(self, failures: int) -> float:
        """Return the delay after a client's ``failures``-th failure in the window."""
        over = failures - self.settings.max_failures_per_account
        if over <= 0:
            return 0.0
        return min(self.settings.client_failure_max_delay, 0.05 * 2.0 ** min(over - 1, 16))
