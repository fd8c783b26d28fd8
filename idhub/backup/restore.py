"""Check a backup file (``verify``) and rebuild a database from one (``restore``).

A restore:

1. opens the file with the master key and reads its manifest (a wrong key or a changed header stops here,
   before the target is touched);
2. refuses a target that holds any tenant (a full backup) or the backed-up tenant (a tenant's backup);
3. migrates the target to the backup's schema revision (an empty target ahead of it is taken back down);
4. inserts every row in one transaction, in foreign-key order, in batches typed by the manifest's tags, so
   UUIDs, datetimes and JSON cross between SQLite and PostgreSQL; the counts must match the manifest and
   the trailer, and a damaged chunk anywhere rolls the whole insert back;
5. sets PostgreSQL sequences past the restored ids, then migrates the target to this code's head.

If step 4 fails, the target is left migrated and empty, and the restore can simply be run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from idhub.backup.body import Manifest, TableEntry, batches, read_manifest
from idhub.backup.schema import TableSpec
from idhub.backup.sealed import BackupFileError, Header, lines, open_chunks, read_header
from idhub.errors import Conflict, Invalid
from idhub.storage.migrate import downgrade, lineage, upgrade

BATCH = 2000  # rows per executemany


@dataclass(slots=True)
class Verified:
    """What a verified (or restored) backup held."""

    header: Header
    manifest: Manifest
    counts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Return the header's fields and the counts as JSON-ready values."""
        fields = self.header.fields
        return {
            "file_id": fields.get("file_id"),
            "created_at": fields.get("created_at"),
            "revision": fields.get("revision"),
            "dialect": fields.get("dialect"),
            "scope": self.header.tenant or "all",
            "tenants": [slug for _id, slug in self.manifest.tenants],
            "rows": sum(self.counts.values()),
            "tables": self.counts,
        }


@dataclass(slots=True)
class _Opened:
    header: Header
    manifest: Manifest
    lines: Iterator[bytes]


def _open(source: BinaryIO, master_key: bytes) -> _Opened:
    header = read_header(source)
    body = lines(open_chunks(source, master_key, header))
    return _Opened(header, read_manifest(body), body)


def verify_backup(path: Path, *, master_key: bytes) -> Verified:
    """Decrypt and check a whole backup file without writing anything; raise :class:`BackupFileError`."""
    with path.open("rb") as source:
        opened = _open(source, master_key)
        result = Verified(opened.header, opened.manifest)
        for table, rows in batches(opened.manifest, opened.lines, BATCH):
            result.counts[table.name] = result.counts.get(table.name, 0) + len(rows)
    result.counts = {table.name: result.counts.get(table.name, 0) for table in opened.manifest.tables}
    return result


async def _target_state(engine: AsyncEngine) -> tuple[str | None, list[tuple[str, str]]]:
    """Return the target's schema revision and its tenants (id, slug)."""
    async with engine.connect() as connection:

        def tables(sync: Any) -> set[str]:
            from sqlalchemy import inspect

            return set(inspect(sync).get_table_names())

        present = await connection.run_sync(tables)
        revision = None
        if "alembic_version" in present:
            revision = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        tenants: list[tuple[str, str]] = []
        if "tenant" in present:
            clause = TableSpec("tenant", (("id", "uuid"), ("slug", "str")), None).clause()
            rows = await connection.execute(select(clause.c.id, clause.c.slug))
            tenants = [(str(row.id), row.slug) for row in rows]
    return revision, tenants


async def _prepare_target(engine: AsyncEngine, url: str, header: Header, manifest: Manifest) -> None:
    """Refuse a target that already holds what the backup would bring; migrate it to the backup's revision."""
    wanted = header.revision
    if wanted is None or not lineage(wanted):
        raise Invalid(f"the backup's schema revision {wanted!r} is unknown to this idhub: upgrade idhub first")
    current, tenants = await _target_state(engine)
    scoped = header.tenant is not None
    if not scoped and tenants:
        raise Conflict(f"the target database is not empty ({len(tenants)} tenants): restore needs an empty database")
    ids = {tid for tid, _slug in manifest.tenants}
    slugs = {slug for _tid, slug in manifest.tenants}
    clash = [slug for tid, slug in tenants if tid in ids or slug in slugs]
    if clash:
        raise Conflict(f"the target database already holds tenant {clash[0]!r}")
    if current is None or current in lineage(wanted):
        await asyncio.to_thread(upgrade, url, wanted)
    elif wanted in lineage(current) and not tenants:
        # An empty target already migrated further (``idhub migrate`` run first): take it back to the
        # backup's revision, restore, and migrate forward with the rows in place.
        await asyncio.to_thread(downgrade, url, wanted)
    else:
        raise Invalid(
            f"the target database is at schema revision {current}, the backup at {wanted}: "
            "restore a tenant only into a database at the backup's revision or older"
        )


def _insert_table(entry: TableEntry, skip: str | None) -> tuple[Any, Callable[[list[Any]], dict[str, Any]]]:
    columns = tuple((name, tag) for name, tag in entry.columns if name != skip)
    clause = TableSpec(entry.name, columns, None).clause()
    names = entry.names
    keep = [index for index, name in enumerate(names) if name != skip]
    kept_names = [names[index] for index in keep]
    if skip is None:
        return insert(clause), lambda row: dict(zip(names, row, strict=True))
    return insert(clause), lambda row: dict(zip(kept_names, [row[i] for i in keep], strict=True))


async def _autoincrement_columns(connection: AsyncConnection, manifest: Manifest) -> dict[str, str]:
    """Return, per table, the integer primary key the database numbers itself (from the migrated target)."""

    def find(sync: Any) -> dict[str, str]:
        from sqlalchemy import inspect

        inspector = inspect(sync)
        found = {}
        for entry in manifest.tables:
            pk = inspector.get_pk_constraint(entry.name).get("constrained_columns") or []
            tags = dict(entry.columns)
            if len(pk) == 1 and tags.get(pk[0]) == "int":
                fks = {c for fk in inspector.get_foreign_keys(entry.name) for c in fk["constrained_columns"]}
                if pk[0] not in fks:
                    found[entry.name] = pk[0]
        return found

    return await connection.run_sync(find)


async def _reset_sequences(connection: AsyncConnection, numbered: dict[str, str]) -> None:
    """Move PostgreSQL sequences past the restored ids, so the next row does not collide."""
    quote = connection.dialect.identifier_preparer.quote
    for table_name, column_name in numbered.items():
        table_sql, column_sql = quote(table_name), quote(column_name)
        await connection.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence(:t, :c), "  # noqa: S608  (quoted identifiers, no input)
                f"COALESCE((SELECT MAX({column_sql}) FROM {table_sql}), 0) + 1, false)"
            ),
            {"t": table_sql, "c": column_name},
        )


def _copy_records(
    entry: TableEntry, skip: str | None
) -> tuple[tuple[str, ...], Callable[[list[Any]], tuple[Any, ...]]]:
    """Return the columns and a row converter for PostgreSQL's ``COPY`` (asyncpg encodes by the server's types)."""
    keep = [index for index, (name, _tag) in enumerate(entry.columns) if name != skip]
    json_columns = [index for index in keep if entry.columns[index][1] == "json"]
    names = tuple(entry.columns[index][0] for index in keep)

    def convert(row: list[Any]) -> tuple[Any, ...]:
        for index in json_columns:
            if row[index] is not None:
                row[index] = orjson.dumps(row[index]).decode()  # asyncpg takes json as text
        return tuple(row[index] for index in keep)

    return names, convert


class _Writer:
    """Writes decoded batches into the target: ``COPY`` on PostgreSQL, an executemany ``INSERT`` elsewhere.

    :meth:`prepare` runs in the read-ahead thread (the CPU work of turning rows into what the driver takes);
    :meth:`write` runs on the connection.
    """

    def __init__(self, connection: AsyncConnection, numbered: dict[str, str], scoped: bool) -> None:
        self._connection = connection
        self.postgresql = connection.dialect.name == "postgresql"
        # Into a database that holds other tenants, the database numbers such rows anew (ids of its own
        # rows may equal the backed-up ones); nothing refers to those ids.
        self._skip = numbered if scoped else {}
        self._copies: dict[str, tuple[tuple[str, ...], Callable[[list[Any]], tuple[Any, ...]]]] = {}
        self._inserts: dict[str, tuple[Any, Callable[[list[Any]], dict[str, Any]]]] = {}

    def prepare(self, entry: TableEntry, rows: list[list[Any]]) -> list[Any]:
        """Return the batch as the driver takes it (tuples for ``COPY``, dicts for ``INSERT``)."""
        skip = self._skip.get(entry.name)
        if self.postgresql:
            if entry.name not in self._copies:
                self._copies[entry.name] = _copy_records(entry, skip)
            convert = self._copies[entry.name][1]
            return [convert(row) for row in rows]
        if entry.name not in self._inserts:
            self._inserts[entry.name] = _insert_table(entry, skip)
        as_dict = self._inserts[entry.name][1]
        return [as_dict(row) for row in rows]

    async def write(self, entry: TableEntry, records: list[Any]) -> None:
        """Write one prepared batch in the connection's transaction.

        On PostgreSQL with ``COPY``: a restore of 100,000 users through parameterised INSERTs spends most of
        its time building statements and processing parameters in Python; asyncpg's
        ``copy_records_to_table`` encodes plain tuples in C.
        """
        if self.postgresql:
            raw = (await self._connection.get_raw_connection()).driver_connection
            assert raw is not None
            columns = self._copies[entry.name][0]
            await raw.copy_records_to_table(entry.name, records=records, columns=columns)
        else:
            await self._connection.execute(self._inserts[entry.name][0], records)


async def _insert_rows(connection: AsyncConnection, opened: _Opened) -> dict[str, int]:
    """Insert every batch; the next one is read, decrypted and decoded in a thread while this one is written."""
    scoped = opened.header.tenant is not None
    numbered = await _autoincrement_columns(connection, opened.manifest)
    writer = _Writer(connection, numbered, scoped)
    counts = {entry.name: 0 for entry in opened.manifest.tables}
    as_text = frozenset({"uuid"}) if writer.postgresql else frozenset()
    prepared = (
        (entry, writer.prepare(entry, rows))
        for entry, rows in batches(opened.manifest, opened.lines, BATCH, as_text=as_text)
    )
    ahead = asyncio.ensure_future(asyncio.to_thread(next, prepared, None))
    try:
        while (item := await ahead) is not None:
            ahead = asyncio.ensure_future(asyncio.to_thread(next, prepared, None))
            entry, records = item
            await writer.write(entry, records)
            counts[entry.name] += len(records)
    finally:
        if not ahead.done():  # a failed write: let the reader's step end before the file closes
            await asyncio.gather(ahead, return_exceptions=True)
    if writer.postgresql and not scoped:
        await _reset_sequences(connection, numbered)
    for entry in opened.manifest.tables:
        if counts[entry.name] != entry.rows:  # batches() checked already; kept as the last word before COMMIT
            raise BackupFileError(f"table {entry.name}: restored {counts[entry.name]} rows of {entry.rows}")
    return counts


async def restore_backup(engine: AsyncEngine, path: Path, *, master_key: bytes) -> Verified:
    """Rebuild the database behind ``engine`` from the backup at ``path``; return what it held."""
    url = engine.url.render_as_string(hide_password=False)
    with path.open("rb") as source:
        opened = await asyncio.to_thread(_open, source, master_key)
        await _prepare_target(engine, url, opened.header, opened.manifest)
        async with engine.connect() as connection, connection.begin():
            counts = await _insert_rows(connection, opened)
    await asyncio.to_thread(upgrade, url, "head")
    return Verified(opened.header, opened.manifest, counts)


async def restored_tenants(engine: AsyncEngine, manifest: Manifest) -> list[tuple[str, str]]:
    """Return the restored tenants (id, slug) that the target now holds."""
    async with engine.connect() as connection:
        clause = TableSpec("tenant", (("id", "uuid"), ("slug", "str")), None).clause()
        slugs = [slug for _tid, slug in manifest.tenants]
        if not slugs:
            return []
        rows = await connection.execute(select(clause.c.id, clause.c.slug).where(clause.c.slug.in_(slugs)))
        return [(str(row.id), row.slug) for row in rows]


__all__ = ["BackupFileError", "Verified", "restore_backup", "restored_tenants", "verify_backup"]
