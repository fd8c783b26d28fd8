"""Revocation of JWT access tokens: an append-only log in the database, followed in memory.

Access tokens are self-contained JWTs, so introspection and UserInfo must not need a database
round trip per call; instead every process keeps the live revocations in memory. Writers append to
the ``revocation`` table in the request's unit of work and raise :class:`RevocationRecorded`; after the
commit the unit of work hands that event to :meth:`RevocationState.on_revocation`, which applies the
entry at once and (when Redis is configured) broadcasts it. Every process also polls the table, so a
process that missed a broadcast catches up within ``revocation_poll_seconds``.

Faults: while Redis is down, revocations reach other processes by that poll alone (logged once per
outage, counted as ``idhub_dependency_faults{dependency="redis"}``), and the broadcast resumes by
itself. While the database is down, the revocations already in memory stay enforced; the poll catches
up on what it missed once the database answers again.

Propagation: the first time a process applies a revocation it tells its observer how it arrived
(``local``: its own commit, ``broadcast``: Redis, ``poll``: the database) and how long after it was
recorded (``idhub_revocation_propagation_seconds``). Entries loaded at start-up are not propagation.

Kinds: ``jti`` (one access token), ``grant`` (every token of a grant), ``subject`` (every token of a user
issued up to that moment), ``client`` (every token of a client, likewise) and ``credential`` (a bearer
credential that is not a JWT, such as a SCIM provisioning token, refused from that moment on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idhub.events import RevocationRecorded
from idhub.storage.base import utcnow
from idhub.storage.faults import FaultCounter, OutageLog, is_fault
from idhub.storage.models import Revocation
from idhub.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

KINDS = ("jti", "grant", "subject", "client", "credential")
CHANNEL = "idhub:revocations"
REDIS_RETRY_SECONDS = (0.5, 10.0)  # first and longest pause between attempts to subscribe again


class PropagationObserver(Protocol):
    """Told about every revocation a process applies for the first time (:class:`idhub.metrics.Metrics`)."""

    def observe_revocation(self, source: str, lag: float) -> None:
        """Record that a revocation arrived by ``source``, ``lag`` seconds after it was recorded."""


@dataclass(frozen=True, slots=True)
class RevocationEntry:
    """One revocation as applied in memory."""

    tenant_id: str
    kind: str
    value: str
    created_at: float
    expires_at: float

    def to_json(self) -> str:
        """Serialise for the broadcast channel."""
        return json.dumps([self.tenant_id, self.kind, self.value, self.created_at, self.expires_at])

    @classmethod
    def from_json(cls, raw: str | bytes) -> RevocationEntry:
        """Parse a broadcast message."""
        tenant_id, kind, value, created_at, expires_at = json.loads(raw)
        return cls(str(tenant_id), str(kind), str(value), float(created_at), float(expires_at))


async def record_revocation(uow: UnitOfWork, *, tenant_id: uuid.UUID, kind: str, value: str, expires_in: int) -> None:
    """Append a revocation to the log in the unit of work's transaction; it applies everywhere on commit.

    ``expires_in`` (seconds) must cover the longest-lived token it revokes.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown revocation kind {kind}")
    now = utcnow()
    expires_at = now + timedelta(seconds=expires_in)
    uow.session.add(Revocation(tenant_id=tenant_id, kind=kind, value=value, created_at=now, expires_at=expires_at))
    uow.raise_event(
        RevocationRecorded(
            tenant_id=tenant_id, kind=kind, value=value, created_at=now.timestamp(), expires_at=expires_at.timestamp()
        )
    )


class RevocationState:
    """In-memory view of live revocations for fast checks on every token validation."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        poll_seconds: float = 1.0,
        redis_url: str | None = None,
        redis_timeout: float = 0.5,
        faults: FaultCounter | None = None,
        observer: PropagationObserver | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._observer = observer
        self._poll_seconds = poll_seconds
        self._redis_url = redis_url
        self._redis_timeout = redis_timeout
        self._redis: Any = None
        self._faults = faults
        self._broadcast = OutageLog(log, "revocation broadcast over Redis")
        self._polling = OutageLog(log, "polling revocations from the database")
        # key: (tenant_id, kind, value) -> (created_at, expires_at)
        self._entries: dict[tuple[str, str, str], tuple[float, float]] = {}
        self._last_poll: float = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    # --- state --------------------------------------------------------------------------------
    @property
    def broadcast_state(self) -> str:
        """Say how revocations reach other processes: ``disabled`` (no Redis), ``ok``, ``unavailable`` (poll only)."""
        if not self._redis_url:
            return "disabled"
        return "unavailable" if self._redis is None or self._broadcast.down else "ok"

    # --- checks -------------------------------------------------------------------------------
    def is_credential_revoked(self, tenant_id: str, credential_id: str) -> bool:
        """Tell whether a bearer credential (not a JWT) was revoked; it stays refused from then on."""
        return bool(self._entries) and (tenant_id, "credential", credential_id) in self._entries

    def is_revoked(self, tenant_id: str, claims: dict[str, Any]) -> bool:
        """Tell whether a token with ``claims`` is covered by a live revocation."""
        entries = self._entries
        if not entries:
            return False
        iat = float(claims.get("iat", 0))
        jti = claims.get("jti")
        if jti is not None and (tenant_id, "jti", str(jti)) in entries:
            return True
        gid = claims.get("gid")
        if gid is not None and (tenant_id, "grant", str(gid)) in entries:
            return True
        for kind, value in (("subject", claims.get("sub")), ("client", claims.get("client_id"))):
            if value is None:
                continue
            hit = entries.get((tenant_id, kind, str(value)))
            # Subject/client revocations cut off tokens issued up to that moment (iat has 1 s resolution).
            if hit is not None and iat <= hit[0]:
                return True
        return False

    # --- updates ------------------------------------------------------------------------------
    def apply(self, entry: RevocationEntry, source: str | None = None) -> bool:
        """Apply one revocation in this process; tell whether it was new here.

        ``source`` says how it arrived; a new entry is reported to the observer with its lag. A known
        one (this process's own broadcast coming back, the poll's overlap) is not.
        """
        key = (entry.tenant_id, entry.kind, entry.value)
        current = self._entries.get(key)
        if current is not None and entry.created_at <= current[0]:
            return False
        self._entries[key] = (entry.created_at, entry.expires_at)
        if source is not None and self._observer is not None:
            self._observer.observe_revocation(source, time.time() - entry.created_at)
        return True

    async def on_revocation(self, event: RevocationRecorded) -> None:
        """Apply a committed revocation in this process and broadcast it (the unit of work's consumer)."""
        entry = RevocationEntry(str(event.tenant_id), event.kind, event.value, event.created_at, event.expires_at)
        self.apply(entry, "local")
        if self._redis is not None and not self._broadcast.down:
            try:
                await self._redis.publish(CHANNEL, entry.to_json())
            except Exception as exc:  # Redis only speeds things up; the poll catches up.
                self._redis_failed(exc)

    def _redis_failed(self, exc: Exception) -> None:
        every = f"{self._poll_seconds:g}"
        self._broadcast.failed(exc, f"revocations reach other processes by the database poll (every {every} s)")
        if self._faults is not None:
            self._faults.count_fault("redis", "revocation_poll_fallback")

    def prune(self) -> None:
        """Drop entries whose tokens have all expired."""
        now = time.time()
        for key in [k for k, (_c, exp) in self._entries.items() if exp <= now]:
            del self._entries[key]

    async def load(self) -> None:
        """Load every live revocation (startup), then remember where to poll from."""
        started = time.time()
        await self._fetch(since=None)
        self._last_poll = started

    async def _fetch(self, since: float | None, source: str | None = None) -> None:
        now = utcnow()
        query = select(Revocation).where(Revocation.expires_at > now)
        if since is not None:
            # Overlap generously: sequence order is not commit order across transactions.
            query = query.where(Revocation.created_at >= now - timedelta(seconds=max(5.0, time.time() - since + 5)))
        async with self._sessionmaker() as session:
            rows = (await session.scalars(query)).all()
        for row in rows:
            self.apply(
                RevocationEntry(
                    str(row.tenant_id), row.kind, row.value, row.created_at.timestamp(), row.expires_at.timestamp()
                ),
                source,
            )

    async def poll_once(self) -> None:
        """Fetch revocations recorded since the last poll (by any process)."""
        started = time.time()
        await self._fetch(since=self._last_poll, source="poll")
        self._last_poll = started

    async def start(self) -> None:
        """Load state and start following the log (and the Redis channel when configured).

        Redis being down never stops the start: revocations then travel by the poll until it is back.
        """
        await self.load()
        if self._redis_url:
            import redis.asyncio as aioredis

            timeout = self._redis_timeout
            self._redis = aioredis.from_url(
                self._redis_url, socket_connect_timeout=timeout, socket_timeout=timeout, health_check_interval=5
            )
            pubsub = await self._subscribe()
            self._tasks.append(asyncio.create_task(self._listen(pubsub)))
        self._tasks.append(asyncio.create_task(self._poll_loop()))

    async def stop(self) -> None:
        """Stop background tasks and close Redis."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    async def _poll_loop(self) -> None:
        prune_every = 60.0
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self.poll_once()
            except Exception as exc:
                if not is_fault(exc):
                    log.exception("revocation poll failed")
                    continue
                self._polling.failed(exc, "revocations already known stay enforced; the poll catches up later")
                if self._faults is not None:
                    self._faults.count_fault("database", "revocation_poll")
                continue
            self._polling.recovered()
            if time.monotonic() - last_prune > prune_every:
                self.prune()
                last_prune = time.monotonic()

    async def _subscribe(self) -> Any:
        """Subscribe to the broadcast channel; on failure note the outage and return ``None``."""
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
        except Exception as exc:
            self._redis_failed(exc)
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            return None
        self._broadcast.recovered()
        return pubsub

    async def _listen(self, pubsub: Any) -> None:
        """Apply broadcasts as they come; while Redis is away, try to subscribe again now and then."""
        pause = REDIS_RETRY_SECONDS[0]
        try:
            while True:
                if pubsub is None:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, REDIS_RETRY_SECONDS[1])
                    pubsub = await self._subscribe()
                    continue
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except Exception as exc:
                    self._redis_failed(exc)
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                    pubsub = None
                    continue
                pause = REDIS_RETRY_SECONDS[0]
                if message is not None and message.get("type") == "message":
                    self._on_message(message["data"])
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _on_message(self, data: Any) -> None:
        try:
            self.apply(RevocationEntry.from_json(data), "broadcast")
        except (ValueError, TypeError):
            log.warning("ignored a malformed revocation broadcast")
