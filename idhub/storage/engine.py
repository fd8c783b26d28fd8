"""Engine and session factory built from settings (never at import time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, foreign keys and a busy timeout."""
    url = make_url(database_url)
    kwargs: dict[str, Any] = {"pool_pre_ping": False}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "savepoint")
        def _sqlite_begin_before_savepoint(connection: Any, _name: Any) -> None:
            # The driver sends BEGIN only before a write. A SAVEPOINT sent first would open the transaction
            # itself, and its RELEASE would commit: the unit of work could no longer roll back what it did.
            if not connection.connection.driver_connection.in_transaction:
                connection.exec_driver_sql("BEGIN")

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Return the session factory; objects stay usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def read_only(session: AsyncSession) -> None:
    """Run the rest of a unit of work that only reads without a transaction (autocommit).

    For requests that read what they answer with in a single statement (one snapshot anyway): no
    ``BEGIN`` and no ``COMMIT``, two round trips to the database fewer. Only takes effect before the
    session's first statement; the pool restores the isolation level when the connection goes back.
    """
    if not session.in_transaction():
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
