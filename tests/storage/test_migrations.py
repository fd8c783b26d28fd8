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


def test_migration_0004_carries_data_up_and_down(empty_database: str) -> None:
    """0004 keeps what rows said: used client-assertion ``jti``s become ``used_value`` rows and come back on
    downgrade; ``primary`` false (stored for "false" and "not said" alike) becomes NULL and back; an
    unassigned ``active`` (NULL) goes down as disabled, never as enabled."""
    import datetime as dt

    import sqlalchemy as sa

    config = alembic_config(empty_database)
    command.upgrade(config, "0003")
    tenant_id, live_id, gone_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    later = now + dt.timedelta(minutes=5)
    tenant = sa.table(
        "tenant",
        sa.column("id", sa.Uuid),
        sa.column("slug", sa.String),
        sa.column("name", sa.String),
        sa.column("settings", sa.JSON),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    user = sa.table(
        "user",
        sa.column("id", sa.Uuid),
        sa.column("tenant_id", sa.Uuid),
        sa.column("username", sa.String),
        sa.column("email_verified", sa.Boolean),
        sa.column("enabled", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
        sa.column("version", sa.Integer),
    )
    value = sa.table(
        "user_value",
        sa.column("id", sa.Uuid),
        sa.column("user_id", sa.Uuid),
        sa.column("attribute", sa.String),
        sa.column("position", sa.Integer),
        sa.column("primary", sa.Boolean),
    )
    used_jti = sa.table(
        "used_jti",
        sa.column("tenant_id", sa.Uuid),
        sa.column("client_id", sa.String),
        sa.column("jti", sa.String),
        sa.column("expires_at", sa.DateTime(timezone=True)),
    )
    used_value = sa.table(
        "used_value", sa.column("namespace", sa.String), sa.column("value", sa.String), sa.column("tenant_id", sa.Uuid)
    )

    async def run(statements: list[Any]) -> list[list[Any]]:
        engine = create_engine(empty_database)
        try:
            async with engine.begin() as connection:
                results = [await connection.execute(s) for s in statements]
                return [list(r.all()) if r.returns_rows else [] for r in results]
        finally:
            await engine.dispose()

    def user_row(user_id: uuid.UUID, name: str) -> dict[str, Any]:
        return {
            "id": user_id,
            "tenant_id": tenant_id,
            "username": name,
            "email_verified": False,
            "enabled": True,
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }

    asyncio.run(
        run(
            [
                tenant.insert().values(id=tenant_id, slug="m4", name="m4", settings={}, created_at=now),
                user.insert().values([user_row(live_id, "live"), user_row(gone_id, "gone")]),
                value.insert().values(
                    [
                        {"id": uuid.uuid4(), "user_id": live_id, "attribute": "emails", "position": i, "primary": p}
                        for i, p in enumerate((True, False))
                    ]
                ),
                used_jti.insert().values(tenant_id=tenant_id, client_id="c-1", jti="j-1", expires_at=later),
            ]
        )
    )

    command.upgrade(config, "0004")
    [values, used] = asyncio.run(
        run(
            [
                sa.select(value.c.position, value.c.primary).order_by(value.c.position),
                sa.select(used_value.c.namespace, used_value.c.value, used_value.c.tenant_id),
                user.update().where(user.c.id == gone_id).values(enabled=None),
            ]
        )
    )[:2]
    assert values == [(0, True), (1, None)]
    assert used == [("client_assertion:c-1", "j-1", tenant_id)]

    command.downgrade(config, "0003")
    [users, values, jtis] = asyncio.run(
        run(
            [
                sa.select(user.c.username, user.c.enabled).order_by(user.c.username),
                sa.select(value.c.position, value.c.primary).order_by(value.c.position),
                sa.select(used_jti.c.client_id, used_jti.c.jti),
            ]
        )
    )
    assert users == [("gone", False), ("live", True)]
    assert values == [(0, True), (1, False)]
    assert jtis == [("c-1", "j-1")]
