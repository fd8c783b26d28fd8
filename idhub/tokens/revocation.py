"""Revocation of JWT access tokens: an append-only log in the database, followed in memory.

Access tokens are self-contained JWTs, so introspection and UserInfo must not need a database
round trip per call; instead every process keeps the live revocations in memory. Writers append to
the ``revocation`` table in the request's unit of work and raise :class:`RevocationRecorded`; after the
commit the unit of work hands that event to :meth:`RevocationState.on_revocation`, which applies the
entry at once and (when Redis is configured) broadcasts it. Every process also polls the table, so a
process that missed a broadcast catches up within ``revocation_poll_seconds``.

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
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idhub.events import RevocationRecorded
from idhub.storage.base import utcnow
from idhub.storage.models import Revocation
from idhub.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

KINDS = ("jti", "grant", "subject", "client", "credential")
CHANNEL = "idhub:revocations"


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
    ) -> None:
        self._sessionmaker = sessionmaker
        self._poll_seconds = poll_seconds
        self._redis_url = redis_url
        self._redis: Any = None
        # key: (tenant_id, kind, value) -> (created_at, expires_at)
        self._entries: dict[tuple[str, str, str], tuple[float, float]] = {}
        self._last_poll: float = 0.0
        self._tasks: list[asyncio.Task[None]] = []

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
    def apply(self, entry: RevocationEntry) -> None:
        """Apply one revocation in this process."""
        key = (entry.tenant_id, entry.kind, entry.value)
        current = self._entries.get(key)
        if current is None or entry.created_at > current[0]:
            self._entries[key] = (entry.created_at, entry.expires_at)

    async def on_revocation(self, event: RevocationRecorded) -> None:
        """Apply a committed revocation in this process and broadcast it (the unit of work's consumer)."""
        entry = RevocationEntry(str(event.tenant_id), event.kind, event.value, event.created_at, event.expires_at)
        self.apply(entry)
        if self._redis is not None:
            try:
                await self._redis.publish(CHANNEL, entry.to_json())
            except Exception:  # Redis only speeds things up; the poll catches up.
                log.warning("revocation broadcast failed; processes will catch up by polling")

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

    async def _fetch(self, since: float | None) -> None:
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
                )
            )

    async def poll_once(self) -> None:
        """Fetch revocations recorded since the last poll (by any process)."""
        started = time.time()
        await self._fetch(since=self._last_poll)
        self._last_poll = started

    async def start(self) -> None:
        """Load state and start following the log (and the Redis channel when configured)."""
        await self.load()
        if self._redis_url:
            try:
                import redis.asyncio as aioredis

                self._redis = aioredis.from_url(self._redis_url)
                await self._redis.ping()
                self._tasks.append(asyncio.create_task(self._listen()))
            except Exception:
                log.warning("Redis unreachable; revocations propagate by polling only")
                self._redis = None
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
                if time.monotonic() - last_prune > prune_every:
                    self.prune()
                    last_prune = time.monotonic()
            except Exception:
                log.exception("revocation poll failed")

    async def _listen(self) -> None:
        assert self._redis is not None
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(CHANNEL)
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            try:
                self.apply(RevocationEntry.from_json(message["data"]))
            except (ValueError, TypeError):
                log.warning("ignored a malformed revocation broadcast")
