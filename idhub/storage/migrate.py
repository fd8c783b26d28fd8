"""Run Alembic migrations programmatically (``idhub migrate``, and ``idhub serve`` at start-up).

On PostgreSQL the migrations run under a transaction-level advisory lock (``migrations/env.py``), so
several processes starting at once against one database migrate it once: the others wait for the lock,
then find the schema at head and have nothing to do.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config


def migrations_dir() -> Path:
    """Locate the Alembic scripts: in the wheel (``idhub/_migrations``) or the source tree."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("Alembic migrations not found")


def alembic_config(database_url: str) -> Config:
    """Build an Alembic config pointing at ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the database at ``database_url`` to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the database at ``database_url`` to ``revision`` (an empty database a restore takes back)."""
    command.downgrade(alembic_config(database_url), revision)


def lineage(revision: str) -> list[str]:
    """Return ``revision`` and every revision below it, newest first; ``[]`` when this code does not know it."""
    from alembic.script import ScriptDirectory
    from alembic.script.revision import ResolutionError
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    try:
        return [found.revision for found in script.iterate_revisions(revision, "base")]
    except (CommandError, ResolutionError):
        return []


@functools.cache
def head_revision() -> str:
    """Return the schema revision this code needs (the newest migration; read once per process)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


@functools.cache
def known_revisions() -> frozenset[str]:
    """Return every revision this code knows (a database at another one was migrated by a newer release)."""
    return frozenset(lineage(head_revision()))


def current_revision(database_url: str) -> str | None:
    """Return the database's schema revision (``None`` for an empty database)."""
    import asyncio

    from alembic.runtime.migration import MigrationContext

    from idhub.storage.engine import create_engine

    async def read() -> str | None:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def holds_tenants(database_url: str) -> bool:
    """Tell whether the (migrated) database already holds a tenant, whose keys a master key sealed."""
    import asyncio

    from sqlalchemy import inspect, text

    from idhub.storage.engine import create_engine

    async def read() -> bool:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                if not await connection.run_sync(lambda sync: inspect(sync).has_table("tenant")):
                    return False  # not migrated yet: nothing sealed
                return (await connection.execute(text("SELECT 1 FROM tenant LIMIT 1"))).first() is not None
        finally:
            await engine.dispose()

    return asyncio.run(read())


class SchemaBehind(RuntimeError):
    """The database's schema is older than this code (and start-up may not migrate it)."""


def check_schema(database_url: str) -> None:
    """Raise :class:`SchemaBehind` unless the database is at the revision this code needs."""
    current, head = current_revision(database_url), head_revision()
    if current != head:
        raise SchemaBehind(
            f"the database schema is at revision {current or 'none (empty database)'} and this idhub needs {head}: "
            "run `idhub migrate` (IDHUB_AUTO_MIGRATE=false keeps start-up from doing it)"
        )
