"""Alembic migrations are the schema: ``upgrade head`` on an empty database yields exactly the models."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, make_url

from idhub.storage import models  # noqa: F401  (registers every table)
from idhub.storage.base import Base, include_for_dialect
from idhub.storage.engine import create_engine
from idhub.storage.migrate import alembic_config, upgrade
from tests.conftest import PG_ENV, _pg_reachable, postgres_url


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            "target_metadata": Base.metadata,
            "include_object": include_for_dialect(connection.dialect.name),
        },
    )
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _inspect(url: str) -> tuple[list[Any], set[str]]:
    """Return (autogenerate differences, table names) of the database at ``url``."""

    async def work() -> tuple[list[Any], set[str]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(_diff), await connection.run_sync(_tables)
        finally:
            await engine.dispose()

    return asyncio.run(work())


def _pg_admin(url: str, statement: str) -> None:
    import asyncpg

    async def work() -> None:
        admin = make_url(url).set(database="postgres").render_as_string(hide_password=False)
        conn = await asyncpg.connect(admin.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(work())


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a brand-new, empty database (a throwaway PostgreSQL database or SQLite file)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"
        return
    url = postgres_url()
    if not url:
        pytest.skip(f"PostgreSQL migration test needs {PG_ENV}")
    problem = _pg_reachable(url)
    if problem:
        pytest.skip(f"PostgreSQL at {PG_ENV} is unreachable: {problem}")
    base = make_url(url)
    name = f"{base.database}_migr_{uuid.uuid4().hex[:8]}"
    _pg_admin(url, f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        _pg_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrations_upgrade_head_empty_database_matches_models(empty_database: str) -> None:
    assert _inspect(empty_database)[1] == set()
    upgrade(empty_database)
    differences, tables = _inspect(empty_database)
    assert differences == [], "models and migrations differ; run `python migrations/dev_regenerate.py`"
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_migrations_downgrade_base_removes_everything_then_upgrade_again(empty_database: str) -> None:
    upgrade(empty_database)
    command.downgrade(alembic_config(empty_database), "base")
    assert _inspect(empty_database)[1] <= {"alembic_version"}
    upgrade(empty_database)
    differences, tables = _inspect(empty_database)
    assert differences == []
    assert set(Base.metadata.tables) <= tables


def test_migrations_upgrade_head_twice_is_a_no_op(empty_database: str) -> None:
    upgrade(empty_database)
    upgrade(empty_database)
    assert _inspect(empty_database)[0] == []


def test_migrations_single_head_every_revision_downgradable() -> None:
    scripts = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://"))
    assert len(scripts.get_heads()) == 1, "migrations must form a single line of revisions"
    for revision in scripts.walk_revisions():
        assert hasattr(revision.module, "downgrade"), f"revision {revision.revision} cannot be downgraded"
