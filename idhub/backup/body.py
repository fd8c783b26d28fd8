"""Read a backup's body: the manifest, then each table's rows in batches, then the trailer, all checked.

The chunks are authentic already (:mod:`idhub.backup.sealed`); this checks the body's own structure, so a
file written by a broken or foreign writer is refused too: tables in the manifest's order, each with
exactly its announced number of rows of the announced width, a trailer that repeats the counts, and
nothing after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from idhub.backup.schema import DECODERS, TAGS
from idhub.backup.sealed import BackupFileError


@dataclass(frozen=True, slots=True)
class TableEntry:
    """One table of the manifest: its name, tagged columns and row count."""

    name: str
    columns: tuple[tuple[str, str], ...]
    rows: int

    @property
    def names(self) -> tuple[str, ...]:
        """Return the column names in row order."""
        return tuple(name for name, _tag in self.columns)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the body announces: its tables in foreign-key order and the tenants it holds."""

    tables: tuple[TableEntry, ...]
    tenants: tuple[tuple[str, str], ...]  # (id, slug)

    def counts(self) -> dict[str, int]:
        """Return the rows per table."""
        return {table.name: table.rows for table in self.tables}


def _load(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BackupFileError("damaged backup body (a record is not JSON)") from None


def read_manifest(lines: Iterator[bytes]) -> Manifest:
    """Read the first record, which must be the manifest."""
    first = next(lines, None)
    record = _load(first) if first is not None else None
    if not isinstance(record, dict) or record.get("kind") != "manifest":
        raise BackupFileError("damaged backup body (no manifest)")
    try:
        tables = tuple(
            TableEntry(str(t["name"]), tuple((str(n), str(tag)) for n, tag in t["columns"]), int(t["rows"]))
            for t in record["tables"]
        )
        tenants = tuple((str(t["id"]), str(t["slug"])) for t in record["tenants"])
    except (KeyError, TypeError, ValueError):
        raise BackupFileError("damaged backup body (manifest incomplete)") from None
    for table in tables:
        unknown = {tag for _name, tag in table.columns} - set(TAGS)
        if unknown:
            raise BackupFileError(f"backup body uses unknown column types {sorted(unknown)}")
    return Manifest(tables, tenants)


def decode_row(values: list[Any], decoders: list[tuple[int, Any]]) -> list[Any]:
    """Turn one row's JSON values back into Python values by the columns' tags."""
    for index, decode in decoders:
        value = values[index]
        if value is not None:
            values[index] = decode(value)
    return values


def batches(
    manifest: Manifest, lines: Iterator[bytes], size: int, *, as_text: frozenset[str] = frozenset()
) -> Iterator[tuple[TableEntry, list[list[Any]]]]:
    """Yield ``(table, rows)`` batches of decoded rows; raise :class:`BackupFileError` on any mismatch.

    Values of the tags in ``as_text`` stay as written (PostgreSQL's ``COPY`` parses a UUID's text itself,
    faster than Python builds a ``uuid.UUID``).
    """
    expected = iter(manifest.tables)
    table: TableEntry | None = None
    decoders: list[tuple[int, Any]] = []
    width = seen = 0
    batch: list[list[Any]] = []

    def close_table() -> Iterator[tuple[TableEntry, list[list[Any]]]]:
        if table is not None:
            if batch:
                yield table, batch
            if seen != table.rows:
                raise BackupFileError(
                    f"backup body: table {table.name} has {seen} rows, the manifest says {table.rows}"
                )

    for line in lines:
        if line.startswith(b"["):
            if table is None:
                raise BackupFileError("damaged backup body (rows before a table)")
            values = _load(line)
            if len(values) != width:
                raise BackupFileError(f"damaged backup body (a row of {table.name} has the wrong width)")
            try:
                batch.append(decode_row(values, decoders))
            except (ValueError, TypeError):
                raise BackupFileError(f"damaged backup body (a value of {table.name} does not fit its type)") from None
            seen += 1
            if len(batch) >= size:
                yield table, batch
                batch = []
            continue
        record = _load(line)
        kind = record.get("kind") if isinstance(record, dict) else None
        if kind == "table":
            yield from close_table()
            table = next(expected, None)
            if table is None or record.get("name") != table.name:
                raise BackupFileError("damaged backup body (tables out of order)")
            decoders = [
                (i, DECODERS[tag])
                for i, (_n, tag) in enumerate(table.columns)
                if DECODERS.get(tag) and tag not in as_text
            ]
            width, seen, batch = len(table.columns), 0, []
        elif kind == "end":
            yield from close_table()
            if next(expected, None) is not None:
                raise BackupFileError("backup body ends before every table of the manifest")
            if record.get("counts") != manifest.counts():
                raise BackupFileError("backup body: the trailer's counts differ from the manifest's")
            if next(lines, None) is not None:
                raise BackupFileError("damaged backup body (records after the end)")
            return
        else:
            raise BackupFileError("damaged backup body (unknown record)")
    raise BackupFileError("backup body is cut short (no trailer)")
