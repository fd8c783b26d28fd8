"""Take a backup: one consistent snapshot of a tenant or of everything, written sealed as it is read.

The whole dump reads in one transaction: on PostgreSQL ``REPEATABLE READ, READ ONLY`` (one snapshot
for every statement, and no write can slip in), on SQLite one read transaction (WAL gives it a snapshot
as of its first read). Rows are streamed (a server-side cursor on PostgreSQL) and written through the
sealing writer in chunks, so a large directory never sits in memory at once.

The body is JSON lines: a manifest (tables in foreign-key order, their tagged columns, row counts), then
per table a ``table`` record followed by its rows (JSON arrays in the manifest's column order), then a
trailer repeating the counts. Secrets stay as they are at rest: hashes, and ciphertexts sealed with the
master key; so restoring needs the same master key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import TableClause

from idhub.backup.schema import ENCODERS, TableSpec, reflect, tenant_filters
from idhub.backup.sealed import SealedWriter
from idhub.errors import Invalid, NotFound

FETCH = 2000  # rows per fetch from the server-side cursor


@dataclass(slots=True)
class BackupSummary:
    """What a backup holds: the header's fields, the rows per table, the file's size."""

    file_id: str
    created_at: str
    revision: str | None
    dialect: str
    tenant: str | None
    tenants: list[tuple[uuid.UUID, str]]
    counts: dict[str, int] = field(default_factory=dict)
    size: int = 0

    def describe(self) -> dict[str, Any]:
        """Return the summary as JSON-ready values."""
        return {
            "file_id": self.file_id,
            "created_at": self.created_at,
            "revision": self.revision,
            "dialect": self.dialect,
            "scope": self.tenant or "all",
            "tenants": [slug for _id, slug in self.tenants],
            "rows": sum(self.counts.values()),
            "tables": self.counts,
            "bytes": self.size,
        }


async def _begin_snapshot(connection: AsyncConnection) -> None:
    """Open the one transaction the whole dump reads in."""
    if connection.dialect.name == "postgresql":
        await connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        await connection.begin()
    else:
        await connection.begin()
        # The driver sends BEGIN only before a write: without it every SELECT would be its own snapshot.
        await connection.exec_driver_sql("BEGIN")


async def _revision(connection: AsyncConnection) -> str | None:
    has = await connection.run_sync(lambda c: c.dialect.has_table(c, "alembic_version"))
    if not has:
        return None
    return (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()


def _row_encoder(spec: TableSpec) -> Callable[[Any], bytes]:
    """Return a function that writes one row as a JSON array line (only bytes and dates need help)."""
    helpers = [(index, ENCODERS.get(tag)) for index, (_name, tag) in enumerate(spec.columns)]
    converting = [(index, encode) for index, encode in helpers if encode is not None]
    dumps = orjson.dumps
    if not converting:
        # ``default=str``: asyncpg hands UUIDs as its own class, which orjson does not know.
        return lambda row: dumps(tuple(row), default=str) + b"\n"

    def encode(row: Any) -> bytes:
        values = list(row)
        for index, convert in converting:
            if values[index] is not None:
                values[index] = convert(values[index])
        return dumps(values, default=str) + b"\n"

    return encode


async def write_backup(
    engine: AsyncEngine, out: BinaryIO, *, master_key: bytes, tenant: str | None = None
) -> BackupSummary:
    """Write a sealed backup of every tenant, or of the tenant with slug ``tenant``, to ``out``."""
    async with engine.connect() as connection:
        await _begin_snapshot(connection)
        specs = await connection.run_sync(reflect)
        names = {spec.name for spec in specs}
        if "tenant" not in names:
            raise Invalid("the database holds no idhub schema (run idhub migrate first)")
        tenants = await _tenants(connection, specs, tenant)
        clauses = {spec.name: spec.clause() for spec in specs}
        filters: dict[str, ColumnElement[bool] | None] = dict.fromkeys(names)
        if tenant is not None:
            filters = tenant_filters(specs, tenants[0][0], clauses)
            unscoped = [name for name, condition in filters.items() if condition is None]
            if unscoped:
                raise Invalid(f"tables {', '.join(unscoped)} belong to no tenant: take a full backup")
        counts = {}
        for spec in specs:
            statement = select(func.count()).select_from(clauses[spec.name])
            if filters[spec.name] is not None:
                statement = statement.where(filters[spec.name])  # type: ignore[arg-type]
            counts[spec.name] = int((await connection.execute(statement)).scalar_one())
        summary = BackupSummary(
            file_id=uuid.uuid4().hex,
            created_at=datetime.now(UTC).isoformat(),
            revision=await _revision(connection),
            dialect=connection.dialect.name,
            tenant=tenant,
            tenants=tenants,
        )
        scope: Any = "all" if tenant is None else {"tenant": tenant, "tenant_id": str(tenants[0][0])}
        writer = SealedWriter(
            out,
            master_key,
            {
                "file_id": summary.file_id,
                "created_at": summary.created_at,
                "revision": summary.revision,
                "dialect": summary.dialect,
                "scope": scope,
            },
        )
        manifest = {
            "kind": "manifest",
            "tables": [
                {"name": spec.name, "columns": [list(pair) for pair in spec.columns], "rows": counts[spec.name]}
                for spec in specs
            ],
            "tenants": [{"id": str(tid), "slug": slug} for tid, slug in tenants],
        }
        writer.write(orjson.dumps(manifest) + b"\n")
        for spec in specs:
            writer.write(orjson.dumps({"kind": "table", "name": spec.name}) + b"\n")
            written = await _dump_table(connection, spec, clauses[spec.name], filters[spec.name], writer)
            if written != counts[spec.name]:  # cannot happen in one snapshot; a guard, not a branch
                raise Invalid(f"table {spec.name} changed during the backup ({written} != {counts[spec.name]})")
            summary.counts[spec.name] = written
        writer.write(orjson.dumps({"kind": "end", "counts": summary.counts}) + b"\n")
        writer.close()
        await connection.rollback()  # read only: nothing to keep
    summary.size = writer.size
    return summary


async def _tenants(
    connection: AsyncConnection, specs: list[TableSpec], slug: str | None
) -> list[tuple[uuid.UUID, str]]:
    clause = next(spec for spec in specs if spec.name == "tenant").clause()
    statement = select(clause.c.id, clause.c.slug).order_by(clause.c.slug)
    if slug is not None:
        statement = statement.where(clause.c.slug == slug)
    found = [(row.id, row.slug) for row in await connection.execute(statement)]
    if slug is not None and not found:
        raise NotFound(f"no tenant {slug!r}")
    return found


async def _dump_table(
    connection: AsyncConnection,
    spec: TableSpec,
    clause: TableClause,
    condition: ColumnElement[bool] | None,
    writer: SealedWriter,
) -> int:
    statement = select(*clause.c).select_from(clause)
    if condition is not None:
        statement = statement.where(condition)
    encode = _row_encoder(spec)
    written = 0
    result = await connection.stream(statement.execution_options(yield_per=FETCH))
    async for partition in result.partitions(FETCH):
        writer.write(b"".join([encode(row) for row in partition]))
        written += len(partition)
    return written
