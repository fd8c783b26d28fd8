"""What a backup holds: the live tables, their columns with a portable type tag, and each table's tenant scope.

The tables and columns are read from the live database (reflected), not from the models: a database
at an older schema revision is backed up as it is, and a restore migrates it forward. Each column gets
a logical type tag (``uuid``, ``datetime``, ``date``, ``json``, ``bytes``, ``int``, ``float``, ``bool``,
``str``) from the current model's column of the same name (which knows that a ``CHAR(32)`` on SQLite is
a UUID), else from the reflected type. The tag decides how a value is written as JSON and how it is read
back, so UUIDs, datetimes and JSON documents cross between SQLite and PostgreSQL unchanged.

Tenant scope is derived from the foreign keys: a table with ``tenant_id`` belongs to that tenant; a table
without one belongs to the tenant of the parent its non-nullable foreign key points at (``user_value``
through ``user``, ``group_member`` through ``group``). A table that reaches no tenant is global: it would
only be in full backups, and :func:`unscoped_tables` names it (a test keeps that list empty on purpose).
"""

from __future__ import annotations

import base64
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    LargeBinary,
    MetaData,
    String,
    Table,
    Uuid,
    column,
    select,
    table,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SAWarning
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import TableClause
from sqlalchemy.types import TypeEngine

from idhub.storage import models  # noqa: F401  (registers every table)
from idhub.storage.base import Base, UTCDateTime

# Never backed up: Alembic's own bookkeeping (the revision travels in the file's header).
SKIPPED_TABLES = frozenset({"alembic_version"})
TAGS = ("uuid", "datetime", "date", "json", "bytes", "int", "float", "bool", "str")


def tag_of(type_: TypeEngine[Any]) -> str:
    """Return the logical type tag of a column type (the model's or a reflected one)."""
    checks: tuple[tuple[type[Any], str], ...] = (
        (Uuid, "uuid"),
        (UTCDateTime, "datetime"),
        (JSON, "json"),
        (LargeBinary, "bytes"),
        (Boolean, "bool"),
    )
    for kind, tag in checks:
        if isinstance(type_, kind):
            return tag
    try:
        python = type_.python_type
    except NotImplementedError:
        return "str"
    by_python: dict[type[Any], str] = {
        uuid.UUID: "uuid",
        datetime: "datetime",
        date: "date",
        dict: "json",
        list: "json",
        bytes: "bytes",
        bool: "bool",
        int: "int",
        float: "float",
    }
    return by_python.get(python, "str")


def sql_type(tag: str) -> TypeEngine[Any]:
    """Return the column type that reads and writes a tag's values the same way on every dialect."""
    types: dict[str, TypeEngine[Any]] = {
        "uuid": Uuid(),
        "datetime": UTCDateTime(),
        "date": Date(),
        # SQL NULL for None: a NULL column stays NULL (not the JSON text "null") across a restore.
        "json": JSON(none_as_null=True),
        "bytes": LargeBinary(),
        "int": BigInteger(),
        "float": Float(),
        "bool": Boolean(),
        "str": String(),
    }
    return types[tag]


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _from_b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


# Values orjson writes natively (UUIDs and aware datetimes as RFC 3339 strings) need no encoder.
ENCODERS: dict[str, Callable[[Any], Any] | None] = {"bytes": _b64, "date": date.isoformat}
DECODERS: dict[str, Callable[[Any], Any] | None] = {
    "uuid": uuid.UUID,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "bytes": _from_b64,
}


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One table as the backup sees it: name, columns with tags, and how to keep one tenant's rows."""

    name: str
    columns: tuple[tuple[str, str], ...]
    reflected: Table | None = None  # the live table (a backup's); None when built from a manifest

    def clause(self) -> TableClause:
        """Return a table clause whose columns carry the tags' types (typed reads and writes)."""
        return table(self.name, *(column(name, sql_type(tag)) for name, tag in self.columns))


def reflect(connection: Connection) -> list[TableSpec]:
    """Return the live database's tables in foreign-key order (parents first), with tagged columns."""
    live = MetaData()
    with warnings.catch_warnings():
        # Expression indexes (lower(email)) are not reflected; a backup needs columns and keys only.
        warnings.filterwarnings("ignore", message=".*expression-based index", category=SAWarning)
        live.reflect(connection)
    model_tables = Base.metadata.tables
    specs = []
    for reflected in live.sorted_tables:
        if reflected.name in SKIPPED_TABLES:
            continue
        model = model_tables.get(reflected.name)
        columns = []
        for col in reflected.columns:
            type_ = model.c[col.name].type if model is not None and col.name in model.c else col.type
            columns.append((str(col.name), tag_of(type_)))  # plain str: orjson takes no str subclasses
        specs.append(TableSpec(str(reflected.name), tuple(columns), reflected))
    return specs


def _tenant_filter(
    reflected: Table, tenant_id: uuid.UUID, typed: Callable[[Table], TableClause], seen: frozenset[str]
) -> ColumnElement[bool] | None:
    """Return the condition that keeps one tenant's rows of ``reflected``, or ``None`` if it reaches no tenant.

    Conditions are built on the typed clauses (``typed``), so a UUID binds as the dialect stores it.
    """
    clause = typed(reflected)
    if reflected.name == "tenant":
        return clause.c.id == tenant_id
    if "tenant_id" in reflected.c:
        return clause.c.tenant_id == tenant_id
    for fk in sorted(reflected.foreign_keys, key=lambda fk: fk.parent.name):
        if fk.parent.nullable or fk.column.table.name in seen:
            continue
        parent = fk.column.table
        condition = _tenant_filter(parent, tenant_id, typed, seen | {reflected.name})
        if condition is not None:
            parent_clause = typed(parent)
            return clause.c[fk.parent.name].in_(select(parent_clause.c[fk.column.name]).where(condition))
    return None


def _typed_from(clauses: dict[str, TableClause]) -> Callable[[Table], TableClause]:

    def typed(reflected: Table) -> TableClause:
        found = clauses.get(reflected.name)
        if found is None:
            columns = [(col.name, tag_of(col.type)) for col in reflected.columns]
            found = clauses[reflected.name] = TableSpec(reflected.name, tuple(columns), reflected).clause()
        return found

    return typed


def tenant_filters(
    specs: list[TableSpec], tenant_id: uuid.UUID, clauses: dict[str, TableClause] | None = None
) -> dict[str, ColumnElement[bool] | None]:
    """Return, per table, the condition on its typed clause that keeps one tenant's rows (``None``: global).

    ``clauses`` are the typed clauses the rows will be selected from (the conditions must name the same ones).
    """
    typed = _typed_from(clauses if clauses is not None else {spec.name: spec.clause() for spec in specs})
    filters: dict[str, ColumnElement[bool] | None] = {}
    for spec in specs:
        if spec.reflected is None:
            raise ValueError("tenant scope needs the live tables")
        filters[spec.name] = _tenant_filter(spec.reflected, tenant_id, typed, frozenset())
    return filters


def unscoped_tables(tables: list[Table]) -> list[str]:
    """Return the tables whose rows no tenant owns (only full backups hold them)."""
    specs = [TableSpec(t.name, tuple((c.name, tag_of(c.type)) for c in t.columns), t) for t in tables]
    filters = tenant_filters([s for s in specs if s.name not in SKIPPED_TABLES], uuid.UUID(int=0))
    return sorted(name for name, condition in filters.items() if condition is None)
