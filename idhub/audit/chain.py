"""The tamper-evident audit chain: numbered, chained and keyed entries per tenant, and their check.

Each tenant's audit entries are numbered without gaps (``seq``); each carries the ``hash`` of the entry
before it (``prev_hash``; the first one carries :data:`GENESIS`) and its own ``hash``: HMAC-SHA256, with a
key derived from the master key, over a canonical encoding of every column of the entry, ``seq`` and
``prev_hash`` included. Whoever can write to the database but does not hold the master key cannot change,
insert, delete or reorder an entry without :func:`verify` noticing: a changed entry fails its MAC, a
removed one leaves a gap in the numbers or a ``prev_hash`` that points nowhere, a reordered one fails
both. The head row (``audit_chain_head``) holds the last number and hash with a MAC over both, so a log
cut short at its end, whose head was set back by hand, is found too (short of putting back an old head
row, which only an external copy of it, like a backup, can expose).

A keyed MAC rather than a plain hash chain: a plain chain can be recomputed from the altered entry on by
anyone with write access. Hand-written (no library keeps hash-chained logs in a relational table); the
primitives are the standard library's ``hmac`` and ``hashlib``.

Appends are serialised per tenant by the head row: :meth:`AuditChain.append` moves it on (an upsert, or
on PostgreSQL for a single entry a conditional UPDATE in the entry's own INSERT) and so locks it until
the transaction ends; entries are chained in commit order, and other tenants, and transactions that write
no audit entry, do not wait.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, event, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.storage.tables import AUDIT_CHAIN_HEADS, AUDIT_EVENTS

GENESIS = "0" * 64
TURN_WAIT = 1.0  # seconds a process's append waits for its turn before going the long way
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Every column an entry is written with, in the order of the MAC's encoding (``hash`` itself excluded).
CHAINED_COLUMNS = (
    "id", "tenant_id", "seq", "prev_hash", "occurred_at", "actor_type", "actor_id", "action", "target_type",
    "target_id", "outcome", "surface", "source_address", "request_id", "details",
)  # fmt: skip

_HEAD = AUDIT_CHAIN_HEADS.c


def _take_numbers(builder: Any) -> Any:
    statement = builder(AUDIT_CHAIN_HEADS).values(
        tenant_id=bindparam("p_tenant_id"), seq=bindparam("p_count"), hash=GENESIS, mac=""
    )
    # On conflict the number moves on and the hash stays: RETURNING gives the new last number and the
    # hash the first new entry chains to. A new head returns (count, GENESIS).
    return statement.on_conflict_do_update(
        index_elements=[_HEAD.tenant_id], set_={"seq": _HEAD.seq + statement.excluded.seq}
    ).returning(_HEAD.seq, _HEAD.hash, _HEAD.archived_seq, _HEAD.archived_hash)


_TAKE_NUMBERS = {"postgresql": _take_numbers(postgresql_insert), "sqlite": _take_numbers(sqlite_insert)}
_SET_HEAD = (
    update(AUDIT_CHAIN_HEADS)
    .where(_HEAD.tenant_id == bindparam("p_tenant_id"))
    .values(hash=bindparam("p_hash"), mac=bindparam("p_mac"))
)
_INSERT = insert(AUDIT_EVENTS)
_ENTRY_COLUMNS = (*CHAINED_COLUMNS, "hash")
# PostgreSQL, one entry (a request's usual case): the head's new end is set by a data-modifying WITH of
# the entry's INSERT, one round trip for both.
_INSERT_ONE_SETTING_HEAD = (
    insert(AUDIT_EVENTS)
    .values({name: bindparam(f"p_{name}") for name in _ENTRY_COLUMNS})
    .add_cte(_SET_HEAD.returning(_HEAD.tenant_id).cte("head"))
)


def _encode(value: Any) -> Any:
    """Return the canonical form of one column value (the same whether just written or read back)."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC) - _EPOCH) // _MICROSECOND
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


# PostgreSQL, one entry, the head known: the entry goes in only if the head is still where this process
# last left it, moved on in the same statement (a data-modifying WITH). No row: someone else appended
# meanwhile (another process, or a transaction that rolled back), and the entry is chained the long way.
# The archive anchor is part of the head's MAC, so it must be the one this process knows too (0: none);
# an archiving run elsewhere moves it, and the next append goes the long way once.
_MOVE_HEAD = (
    update(AUDIT_CHAIN_HEADS)
    .where(
        _HEAD.tenant_id == bindparam("p_tenant_id"),
        _HEAD.seq == bindparam("p_head_seq"),
        _HEAD.hash == bindparam("p_prev_hash"),
        func.coalesce(_HEAD.archived_seq, 0) == bindparam("p_archived_seq"),
    )
    .values(seq=bindparam("p_seq"), hash=bindparam("p_hash"), mac=bindparam("p_mac"))
    .returning(_HEAD.tenant_id)
    .cte("moved")
)
_APPEND_IF_HEAD = (
    insert(AUDIT_EVENTS)
    .from_select(
        _ENTRY_COLUMNS,
        select(*(bindparam(f"p_{name}", type_=AUDIT_EVENTS.c[name].type) for name in _ENTRY_COLUMNS)).select_from(
            _MOVE_HEAD
        ),
    )
    .returning(AUDIT_EVENTS.c.id)
)


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where a tenant's archived prefix ends: its last number and hash (the head's ``archived_*``)."""

    seq: int
    hash: str

    @classmethod
    def of(cls, seq: int | None, last_hash: str | None) -> Anchor | None:
        """Return the anchor of a head row's two columns (None: nothing archived)."""
        return None if seq is None or last_hash is None else cls(seq, last_hash)


class AuditChain:
    """Computes and checks the MACs of one installation's audit chain (the key comes from the master key).

    It remembers where each tenant's chain ended after this process's last append (``_heads``), so the
    next single entry on PostgreSQL needs one statement instead of two (:data:`_APPEND_IF_HEAD`); the
    database's head decides, the memory is only a guess.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._heads: dict[uuid.UUID, tuple[int, str, Anchor | None]] = {}
        self._turns: dict[uuid.UUID, asyncio.Lock] = {}

    def entry_hash(self, row: Any) -> str:
        """Return the MAC of an entry (a row dict, or a row read back), over :data:`CHAINED_COLUMNS`."""
        get = row.get if isinstance(row, dict) else row._mapping.get
        content = [_encode(get(name)) for name in CHAINED_COLUMNS]
        data = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def head_mac(self, tenant_id: uuid.UUID, seq: int, last_hash: str, anchor: Anchor | None = None) -> str:
        """Return the MAC of a tenant's head (its last number and hash, and where its archived prefix ends).

        Without an anchor the input is what it was before archiving existed, so heads written then
        still verify; with one, the anchor is appended, so it cannot be set, moved or removed by hand.
        """
        data = f"audit-head\x00{tenant_id}\x00{seq}\x00{last_hash}"
        if anchor is not None:
            data += f"\x00archived\x00{anchor.seq}\x00{anchor.hash}"
        return hmac.new(self._key, data.encode(), hashlib.sha256).hexdigest()

    def forget(self, tenant_id: uuid.UUID) -> None:
        """Drop what this process remembers of a tenant's head (its anchor moved: archiving)."""
        self._heads.pop(tenant_id, None)

    async def append(
        self,
        session: AsyncSession,
        rows: list[dict[str, Any]],
        write: Callable[[AsyncSession, list[dict[str, Any]]], Awaitable[None]] | None = None,
    ) -> None:
        """Number, chain and insert audit rows in the session's transaction (one upsert per tenant first).

        Tenants are taken in a fixed order so that two transactions writing for the same tenants lock
        their heads in the same order. ``write`` inserts the finished rows instead of an ``INSERT`` (the
        background writer's ``COPY``).
        """
        if not rows:
            return
        by_tenant: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_tenant[row["tenant_id"]].append(row)
        dialect = session.get_bind().dialect.name
        one = len(rows) == 1 and dialect == "postgresql" and write is None
        if one and await self._turn(session, rows[0]["tenant_id"]) and await self._append_if_head(session, rows[0]):
            return
        take = _TAKE_NUMBERS[dialect]
        heads = []
        anchors: dict[uuid.UUID, Anchor | None] = {}
        for tenant_id in sorted(by_tenant, key=str):
            entries = by_tenant[tenant_id]
            head = (await session.execute(take, {"p_tenant_id": tenant_id, "p_count": len(entries)})).one()
            previous, number = head.hash, head.seq - len(entries)
            anchor = Anchor.of(head.archived_seq, head.archived_hash)
            for entry in entries:
                number += 1
                entry["seq"], entry["prev_hash"] = number, previous
                entry["hash"] = previous = self.entry_hash(entry)
            mac = self.head_mac(tenant_id, number, previous, anchor)
            heads.append({"p_tenant_id": tenant_id, "p_seq": number, "p_hash": previous, "p_mac": mac})
            anchors[tenant_id] = anchor
        for head_values in heads:
            tenant_id = head_values["p_tenant_id"]
            self._heads[tenant_id] = (head_values["p_seq"], head_values["p_hash"], anchors[tenant_id])
        if write is not None:
            for head_values in heads:
                await session.execute(_SET_HEAD, head_values)
            await write(session, rows)
            return
        if len(rows) == 1 and dialect == "postgresql":
            await session.execute(
                _INSERT_ONE_SETTING_HEAD, {f"p_{name}": rows[0][name] for name in _ENTRY_COLUMNS} | heads[0]
            )
            return
        for head_values in heads:
            await session.execute(_SET_HEAD, head_values)
        await session.execute(_INSERT, rows)

    async def _turn(self, session: AsyncSession, tenant_id: uuid.UUID) -> bool:
        """Wait for this process's other appends to the tenant's chain to end, then hold the turn until the
        session's transaction ends (commit or rollback).

        The database's head row already serialises appends; this only keeps a process's own parallel
        transactions from all guessing the same end of the chain, where all but one guess would be a
        wasted statement and a fallback. The turn is taken as the transaction's last statement is sent
        (its audit entries are written just before it commits), so it is held for that statement and
        the commit, and no lock of this transaction's is waited for while holding it. ``False``: the turn
        did not come within :data:`TURN_WAIT` (a commit hanging on a database that froze, until its own
        timeout ends it); the append then goes the long way, which the database serialises anyway.
        """
        lock = self._turns.setdefault(tenant_id, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), TURN_WAIT)
        except TimeoutError:
            return False

        sync_session = session.sync_session
        loop = asyncio.get_running_loop()
        held = [True]

        def release(_session: Any, transaction: Any) -> None:
            if transaction.parent is None and held[0]:  # the outermost transaction ended
                held[0] = False
                lock.release()
                # Not removed while SQLAlchemy iterates over the listeners: right after.
                loop.call_soon(event.remove, sync_session, "after_transaction_end", release)

        event.listen(sync_session, "after_transaction_end", release)
        return True

    async def _append_if_head(self, session: AsyncSession, entry: dict[str, Any]) -> bool:
        """Append one entry where this process last left its tenant's chain; tell whether that was still the end."""
        tenant_id = entry["tenant_id"]
        known = self._heads.get(tenant_id)
        if known is None:
            return False
        head_seq, previous, anchor = known
        entry["seq"], entry["prev_hash"] = head_seq + 1, previous
        entry["hash"] = self.entry_hash(entry)
        parameters = {f"p_{name}": entry[name] for name in _ENTRY_COLUMNS} | {
            "p_head_seq": head_seq,
            "p_archived_seq": anchor.seq if anchor is not None else 0,
            "p_mac": self.head_mac(tenant_id, head_seq + 1, entry["hash"], anchor),
        }
        if (await session.execute(_APPEND_IF_HEAD, parameters)).first() is None:
            self._heads.pop(tenant_id, None)  # a parallel append of this process may have dropped it already
            return False
        self._heads[tenant_id] = (head_seq + 1, entry["hash"], anchor)
        return True


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`verify` found for one tenant."""

    tenant_id: uuid.UUID
    entries: int  # chained entries checked
    unchained: int  # entries from before the chain existed (no seq)
    broken_at: uuid.UUID | None = None  # the first entry that does not check out (None: intact, or the head)
    broken_seq: int | None = None
    reason: str | None = None
    anchor: Anchor | None = None  # where the archived prefix ends (the database's entries start after it)
    # The hashes of the entries at the numbers asked for (``points``): where archive files meet the database.
    hashes: dict[int, str] = field(default_factory=dict)

    @property
    def intact(self) -> bool:
        """Tell whether the tenant's chain checked out completely."""
        return self.reason is None


async def _entries(session: AsyncSession, tenant_id: uuid.UUID, batch: int, after: int = -1) -> AsyncIterator[Any]:
    """Yield a tenant's chained entries numbered above ``after`` in number order, a batch at a time (keyset pages)."""
    last = after
    while True:
        page = (
            await session.execute(
                select(AUDIT_EVENTS)
                .where(AUDIT_EVENTS.c.tenant_id == tenant_id, AUDIT_EVENTS.c.seq > last)
                .order_by(AUDIT_EVENTS.c.seq)
                .limit(batch)
            )
        ).all()
        for row in page:
            yield row
        if len(page) < batch:
            return
        last = page[-1].seq


async def verify(
    session: AsyncSession,
    chain: AuditChain,
    tenant_id: uuid.UUID,
    *,
    batch: int = 1000,
    points: Collection[int] = (),
) -> Verdict:
    """Check one tenant's chain from its anchor (or first entry) to its head; name the first entry that breaks it.

    The head's MAC is checked first, since it vouches for the anchor: with an archived prefix the first
    entry left must be number ``archived_seq + 1`` and chain to ``archived_hash``. Entries still in the
    database at or below the anchor (an archiving run that died between its file and its delete leaves
    none: the delete and the anchor commit together) are not expected and break the chain.
    """
    unchained = (
        await session.execute(
            select(AUDIT_EVENTS.c.id).where(AUDIT_EVENTS.c.tenant_id == tenant_id, AUDIT_EVENTS.c.seq.is_(None))
        )
    ).all()
    head = (await session.execute(select(AUDIT_CHAIN_HEADS).where(_HEAD.tenant_id == tenant_id))).first()
    anchor = Anchor.of(head.archived_seq, head.archived_hash) if head is not None else None
    if head is not None and not hmac.compare_digest(head.mac, chain.head_mac(tenant_id, head.seq, head.hash, anchor)):
        return Verdict(tenant_id, 0, len(unchained), reason="the head was changed (its MAC does not match)")
    expected, previous = (anchor.seq + 1, anchor.hash) if anchor is not None else (1, GENESIS)
    count, hashes, wanted = 0, {}, set(points)
    if anchor is not None and anchor.seq in wanted:
        hashes[anchor.seq] = anchor.hash

    def broken(row: Any, reason: str) -> Verdict:
        return Verdict(tenant_id, count, len(unchained), row.id, row.seq, reason, anchor, hashes)

    async for row in _entries(session, tenant_id, batch):
        if row.seq != expected:
            if row.seq > expected:
                reason = f"entry {expected} is missing" + (
                    f" (the archived prefix ends at {anchor.seq})" if anchor is not None else ""
                )
            elif anchor is not None and row.seq <= anchor.seq:
                reason = f"the entry is at or below the archived prefix's end ({anchor.seq})"
            else:
                reason = "numbers repeat"
            return broken(row, reason)
        if row.prev_hash != previous:
            return broken(row, "its prev_hash is not the hash of the entry before it")
        if not hmac.compare_digest(row.hash or "", chain.entry_hash(row)):
            return broken(row, "its content does not match its hash (changed after it was written)")
        if row.seq in wanted:
            hashes[row.seq] = row.hash
        previous, expected, count = row.hash, expected + 1, count + 1
    last = expected - 1
    if head is None:
        missing = None if last == 0 else "the chain has entries but no head"
        return Verdict(tenant_id, count, len(unchained), reason=missing, hashes=hashes)
    if head.seq != last or head.hash != previous:
        reason = f"the head says {head.seq} entries, the log ends at {last} (entries removed from the end)"
        return Verdict(tenant_id, count, len(unchained), reason=reason, anchor=anchor, hashes=hashes)
    return Verdict(tenant_id, count, len(unchained), anchor=anchor, hashes=hashes)


async def tenants_with_entries(session: AsyncSession) -> Sequence[uuid.UUID]:
    """Return every tenant that has audit entries or a chain head."""
    from_events = select(AUDIT_EVENTS.c.tenant_id).distinct()
    from_heads = select(_HEAD.tenant_id)
    found = {*(await session.scalars(from_events)), *(await session.scalars(from_heads))}
    return sorted(found, key=str)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def row_json(row: Any) -> str:
    """Return one entry as its export line (every column; times in ISO 8601 UTC, ids as strings)."""
    return json.dumps({name: _json_value(value) for name, value in row._mapping.items()})


async def export_lines(session: AsyncSession, tenant_id: uuid.UUID, *, batch: int = 1000) -> AsyncIterator[str]:
    """Yield a tenant's audit entries as JSON lines: the unchained ones (oldest first), then the chain in order.

    Each line holds every column, ``seq``, ``prev_hash`` and ``hash`` included, so an exported log can be
    checked against the chain's key later.
    """
    unchained = await session.execute(
        select(AUDIT_EVENTS)
        .where(AUDIT_EVENTS.c.tenant_id == tenant_id, AUDIT_EVENTS.c.seq.is_(None))
        .order_by(AUDIT_EVENTS.c.occurred_at, AUDIT_EVENTS.c.id)
    )
    for row in unchained:
        yield row_json(row)
    async for row in _entries(session, tenant_id, batch):
        yield row_json(row)
