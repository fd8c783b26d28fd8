"""The audit log: one row per audited domain event, written in the transaction of the change.

The unit of work calls :meth:`AuditLog.before_commit` just before it commits, so an entry exists if and
only if the change does. Two kinds of events have no transaction of their own to ride on: refused
attempts whose transaction rolled back (:meth:`AuditLog.after_rollback`), and events of requests that
changed nothing in the database (a ``client_credentials`` token opens no session, and must not pay
three round trips for its audit entry). Those go to :class:`AuditWriter`, which writes them in batches
from the background, within a fraction of a second; repeats of one such success within a batch (a
client fetching tokens in a loop) fold into one entry that counts them and lists every request id.
Every entry also goes to the ``idhub.audit`` log stream after its commit, for log shipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import operator
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from idhub import request_context
from idhub.audit.chain import AuditChain
from idhub.audit.sink import AuditSink
from idhub.events import ANONYMOUS, Actor, DomainEvent
from idhub.request_context import RequestInfo
from idhub.storage.base import new_uuid, utcnow
from idhub.storage.engine import is_postgresql
from idhub.storage.models import AuditEvent
from idhub.storage.tasks import cancel
from idhub.storage.uow import UnitOfWork, UnitOfWorkFactory

log = logging.getLogger(__name__)
stream = logging.getLogger("idhub.audit")

__all__ = ["ANONYMOUS", "Actor", "AuditLog", "AuditWriter", "audit_rows"]


def audit_rows(events: Sequence[DomainEvent], *, actor: Actor, surface: str) -> list[dict[str, Any]]:
    """Return the audit rows of the audited ``events`` (one multi-row INSERT writes them all)."""
    info = request_context.current()
    address = info.address if info is not None else None
    request_id = info.request_id if info is not None else None
    now = utcnow()
    return [
        audit_row(event, actor=actor, surface=surface, address=address, request_id=request_id, at=now)
        for event in events
        if event.action
    ]


def audit_row(
    event: DomainEvent, *, actor: Actor, surface: str, address: str | None, request_id: str | None, at: datetime
) -> dict[str, Any]:
    """Return the audit row of one event."""
    return {
        "id": new_uuid(),
        "tenant_id": event.tenant_id,
        "occurred_at": at,
        "actor_type": actor.type,
        "actor_id": actor.id[:255],
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id[:255],
        "outcome": event.outcome,
        "surface": surface or None,
        "source_address": address[:64] if address else None,
        "request_id": request_id,
        "details": event.details(),
    }


_PLAIN_COLUMNS = tuple(column.name for column in AuditEvent.__table__.columns if column.name != "details")
COPY_COLUMNS = (*_PLAIN_COLUMNS, "details")
_plain_values = operator.itemgetter(*_PLAIN_COLUMNS)


async def _copy(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Write finished rows with ``COPY`` (binary; PostgreSQL).

    The background batches are the audit entries of stateless grants: thousands a second under load. An
    ``INSERT`` of a thousand rows costs the event loop several milliseconds of statement building and
    parameter processing; asyncpg's ``copy_records_to_table`` takes plain tuples and encodes them in C.
    """
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None
    records = [(*_plain_values(row), json.dumps(row["details"])) for row in rows]
    await raw.copy_records_to_table(AuditEvent.__tablename__, records=records, columns=COPY_COLUMNS)


async def copy_rows(session: AsyncSession, chain: AuditChain, rows: list[dict[str, Any]]) -> None:
    """Chain and write a batch of prepared rows; on PostgreSQL with ``COPY``, else one INSERT."""
    if rows:
        write = _copy if is_postgresql(session) else None
        await chain.append(session, rows, write)


# Request ids one folded entry lists at most; a busier fold is written and a new one started.
MAX_FOLDED = 1000


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


class _Fold:
    """Repeats of one event within one write interval (see :meth:`AuditWriter.fold`)."""

    __slots__ = ("count", "first_at", "last_at", "request_ids")

    def __init__(self, at: float) -> None:
        self.first_at = at
        self.last_at = at
        self.count = 0
        self.request_ids: list[str] = []

    def add(self, request_id: str | None, at: float) -> None:
        self.count += 1
        self.last_at = at
        if request_id is not None:
            self.request_ids.append(request_id)

    def row(self, event: DomainEvent, actor: Actor, surface: str, address: str | None) -> dict[str, Any]:
        first = self.request_ids[0] if self.request_ids else None
        row = audit_row(event, actor=actor, surface=surface, address=address, request_id=first, at=_at(self.first_at))
        if self.count > 1:
            row["details"] = {
                **row["details"],
                "count": self.count,
                "last_at": _at(self.last_at).isoformat(),
                "request_ids": self.request_ids,
            }
        return row


class AuditWriter:
    """Write audit rows that have no transaction of their own, in batches, from one background task.

    The queue is bounded: when the database cannot keep up, the oldest waiting rows are dropped and
    counted (``dropped``), so a flood of refused requests cannot exhaust memory. Without a running task
    (a CLI command), rows are written at once.
    """

    def __init__(
        self, *, interval: float = 0.1, batch: int = 1000, limit: int = 50_000, fold_limit: int = MAX_FOLDED
    ) -> None:
        self.uow_factory: UnitOfWorkFactory | None = None  # set by the composition root
        self.chain: AuditChain | None = None  # set by the composition root
        self.sink: AuditSink | None = None  # set by the composition root when a sink is configured
        self._interval = interval
        self._batch = batch
        self._limit = limit
        self._fold_limit = fold_limit
        self._queue: deque[dict[str, Any]] = deque(maxlen=limit)
        self._deferred: list[tuple[Sequence[DomainEvent], Actor, str, RequestInfo | None, float]] = []
        self._folds: dict[tuple[DomainEvent, Actor, str, str | None], _Fold] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0

    @property
    def running(self) -> bool:
        """Tell whether the background task runs (else rows are written at once)."""
        return self._task is not None

    def defer(self, events: Sequence[DomainEvent], *, actor: Actor, surface: str) -> None:
        """Queue successes that changed nothing else; the background task folds and writes them.

        Within one write interval, equal events (a client's ``client_credentials`` grants: same client,
        subject and tokens) by the same actor, through the same surface, from the same address become one
        entry that records how many there were, when the first and the last happened, and every request
        id (``details.count``, ``details.last_at``, ``details.request_ids``). Under load that is one row
        per client and address every tenth of a second instead of thousands; nothing is lost: each
        request id is still found in the log. The request only appends to a list: comparing events
        costs the event loop less in one pass over a batch than one request at a time.
        """
        if len(self._deferred) >= self._limit:
            self.dropped += len(events)
            return
        self._deferred.append((events, actor, surface, request_context.current(), time.time()))
        if len(self._deferred) >= self._batch:
            self._wake.set()

    def _fold_deferred(self) -> None:
        """Fold the deferred events into ``_folds`` (full folds go to the queue)."""
        deferred, self._deferred = self._deferred, []
        folds = self._folds
        for events, actor, surface, info, at in deferred:
            address = info.address if info is not None else None
            request_id = info.request_id if info is not None else None
            for event in events:
                if not event.action:
                    continue
                key = (event, actor, surface, address)
                try:
                    entry = folds.get(key)
                except TypeError:  # an event with an unhashable field is never folded
                    row = audit_row(
                        event, actor=actor, surface=surface, address=address, request_id=request_id, at=_at(at)
                    )
                    self._queue.append(row)
                    continue
                if entry is None:
                    entry = folds[key] = _Fold(at)
                entry.add(request_id, at)
                if entry.count >= self._fold_limit:
                    self._queue.append(folds.pop(key).row(event, actor, surface, address))

    async def submit(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows for writing (or write them now when no background task runs)."""
        if not rows:
            return
        if self._task is None:
            await self._write(rows)
            return
        overflow = len(self._queue) + len(rows) - (self._queue.maxlen or 0)
        if overflow > 0:
            self.dropped += min(overflow, len(rows) + len(self._queue))
            log.warning("audit queue full: %d entries dropped", overflow)
        self._queue.extend(rows)
        if len(self._queue) >= self._batch:
            self._wake.set()

    def start(self) -> None:
        """Start the background task (the app's lifespan does)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="idhub-audit-writer")

    async def stop(self) -> None:
        """Stop the task and write what is still queued."""
        task, self._task = self._task, None
        await cancel(task)
        await self.flush()

    async def flush(self) -> None:
        """Write everything queued now."""
        if self._deferred:
            self._fold_deferred()
        if self._folds:
            folds, self._folds = self._folds, {}
            self._queue.extend(
                entry.row(event, actor, surface, address) for (event, actor, surface, address), entry in folds.items()
            )
        while self._queue:
            rows = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            try:
                await self._write(rows)
            except Exception:
                log.exception("could not write %d audit entries; they are retried", len(rows))
                self._queue.extendleft(reversed(rows))
                raise

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        assert self.uow_factory is not None and self.chain is not None, "set when the context is built"
        async with self.uow_factory(surface="audit") as uow:
            await copy_rows(uow.session, self.chain, rows)
        self.written += len(rows)
        if self.sink is not None:
            self.sink.offer(rows)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                await asyncio.sleep(1.0)  # the database is away; the rows stay queued


class AuditLog:
    """The unit of work's audit hooks and the consumer that streams committed entries to the log."""

    def __init__(self, writer: AuditWriter, chain: AuditChain, sink: AuditSink | None = None) -> None:
        self.writer = writer
        self.chain = chain
        self.sink = sink
        writer.chain = chain
        writer.sink = sink

    async def before_commit(self, uow: UnitOfWork, events: Sequence[DomainEvent]) -> None:
        """Write the entries in the unit of work's transaction, or queue them when it opened none."""
        if not uow.opened:
            if self.writer.running:
                self.writer.defer(events, actor=uow.actor, surface=uow.surface)
            else:  # a CLI command: no background writer
                await self.writer.submit(audit_rows(events, actor=uow.actor, surface=uow.surface))
            return
        rows = audit_rows(events, actor=uow.actor, surface=uow.surface)
        if rows:
            await self.chain.append(uow.session, rows)
            if self.sink is not None:  # streamed only once the transaction committed
                uow.on_commit(functools.partial(self.sink.offer, rows))

    async def after_rollback(self, uow: UnitOfWork, events: Sequence[DomainEvent]) -> None:
        """Record refused attempts whose transaction rolled back."""
        rows = audit_rows(events, actor=uow.actor, surface=uow.surface)
        await self.writer.submit(rows)
        for row in rows:
            _log_row(row)

    def committed(self, event: DomainEvent) -> None:
        """Stream one committed, audited event to the ``idhub.audit`` logger."""
        if event.action and stream.isEnabledFor(logging.INFO):
            stream.info(
                "%s %s %s:%s %s", event.action, event.outcome, event.target_type, event.target_id, event.details()
            )


def _log_row(row: dict[str, Any]) -> None:
    if stream.isEnabledFor(logging.INFO):
        stream.info(
            "%s %s %s:%s %s", row["action"], row["outcome"], row["target_type"], row["target_id"], row["details"]
        )
