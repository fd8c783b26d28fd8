"""Engine and session factory built from settings (never at import time)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long (seconds) to wait for a new connection, one statement, and a connection from the pool."""

    connect: float = 3.0
    command: float = 10.0
    pool: float = 3.0


@dataclass(frozen=True, slots=True)
class PoolStats:
    """What the connection pool is doing at one moment (for the ``idhub_db_pool_*`` gauges)."""

    size: int  # connections kept open
    limit: int  # most connections open at once (size plus overflow)
    in_use: int  # checked out
    idle: int  # open and waiting in the pool
    overflow: int  # open beyond ``size``
    waiting: int  # checkouts not served yet


class CountingPool(AsyncAdaptedQueuePool):
    """The async queue pool, counting the checkouts that have not got their connection yet.

    SQLAlchemy's pool does not say how many callers wait on it. Every checkout goes through
    :meth:`connect`, which the async engine runs in a greenlet: a checkout that finds an idle
    connection returns without yielding to the event loop, and one that has to wait (for a connection
    to come back, or for a new one to open) suspends there. Pool and scrape both run on the event
    loop's thread, so the count a scrape reads is exactly the checkouts suspended at that moment: no
    lock, and a cost of two integer updates per checkout.
    """

    # Log as SQLAlchemy's own pool does (``sqlalchemy.*``, warnings only unless echo_pool), not as idhub.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"

    waiting = 0

    def connect(self) -> PoolProxiedConnection:
        """Check a connection out, counted as waiting until it is handed over (or the wait fails)."""
        self.waiting += 1
        try:
            return super().connect()
        finally:
            self.waiting -= 1


def pool_stats(engine: AsyncEngine) -> PoolStats | None:
    """Read the pool's figures now (``None`` for a pool without a queue, as for in-memory SQLite).

    Read at every scrape from the engine's current pool: ``dispose()`` replaces it with a fresh one.
    """
    pool = engine.sync_engine.pool
    if not isinstance(pool, CountingPool):
        return None
    size = pool.size()
    return PoolStats(
        size=size,
        limit=size + max(pool._max_overflow, 0),  # the configured overflow has no public accessor
        in_use=pool.checkedout(),
        idle=pool.checkedin(),
        overflow=max(pool.overflow(), 0),  # negative while fewer than ``size`` are open
        waiting=pool.waiting,
    )


def create_engine(database_url: str, *, pool_size: int = 10, timeouts: Timeouts | None = None) -> AsyncEngine:
    """Create the async engine with every wait bounded; SQLite gets WAL, foreign keys and a busy timeout.

    On PostgreSQL the command timeout bounds each statement twice: asyncpg gives up on the client side
    (a partition, where the server never answers) and the server cancels it (``statement_timeout``), so a
    statement nobody waits for any more does not go on holding locks.
    """
    timeouts = timeouts or Timeouts()
    url = make_url(database_url)
    kwargs: dict[str, Any] = {"pool_pre_ping": False}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # owner only
        kwargs["connect_args"] = {"timeout": timeouts.command}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        if url.get_driver_name() == "asyncpg":
            kwargs["connect_args"] = {
                "timeout": timeouts.connect,
                "command_timeout": timeouts.command,
                "server_settings": {"statement_timeout": str(max(1, round(timeouts.command * 1000)))},
            }
    dialect = url.get_dialect()
    if issubclass(dialect, DefaultDialect) and issubclass(dialect.get_pool_class(url), AsyncAdaptedQueuePool):
        kwargs["poolclass"] = CountingPool  # the same pool, counting waiters (idhub_db_pool_waiting)
        # Only a queue pool takes a wait bound (SQLAlchemy before 2.1 gives file SQLite a NullPool).
        kwargs["pool_timeout"] = timeouts.pool
    engine = create_async_engine(url, **kwargs)
    event.listen(engine.sync_engine, "handle_error", _drop_timed_out_connection)
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


def is_postgresql(session: AsyncSession) -> bool:
    """Tell whether ``session`` talks to PostgreSQL (a data-modifying ``WITH`` makes two writes one statement)."""
    return session.get_bind().dialect.name == "postgresql"


async def one_statement(session: AsyncSession) -> None:
    """Run the rest of a unit of work whose one write is a single statement without a transaction.

    A single ``INSERT`` is atomic by itself: ``BEGIN`` and ``COMMIT`` around it are two round trips
    that buy nothing. Only for units of work that raise no events (whose audit rows would otherwise be
    written apart from the change) and that write once; reads before the write see committed data
    either way. Takes effect only before the session's first statement, like :func:`read_only`.
    """
    await read_only(session)


async def read_only(session: AsyncSession) -> None:
    """Run the rest of a unit of work that only reads without a transaction (autocommit).

    For requests that read what they answer with in a single statement (one snapshot anyway): no
    ``BEGIN`` and no ``COMMIT``, two round trips to the database fewer. Only takes effect before the
    session's first statement; the pool restores the isolation level when the connection goes back.
    """
    if not session.in_transaction():
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def _drop_timed_out_connection(context: ExceptionContext) -> None:
    """Close a connection whose statement timed out at once, and have the pool discard it.

    Nothing can be said about a connection the server stopped answering on (a partition): it must
    not go back to the pool. Closing it here spares the pool's graceful close, which waits for the
    silent server once more before giving up.
    """
    if not isinstance(context.original_exception, TimeoutError) or context.connection is None:
        return
    context.is_disconnect = True
    try:
        driver = context.connection.connection.driver_connection
    except Exception:  # already invalidated: nothing left to close
        return
    terminate = getattr(driver, "terminate", None)
    if terminate is not None:
        try:
            terminate()
        except Exception:
            log.debug("closing a timed-out connection failed", exc_info=True)
