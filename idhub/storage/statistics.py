"""Refresh PostgreSQL planner statistics after bulk loads (SCIM onboarding of thousands of people).

Right after a large import, the planner still believes the tables are small, and picks plans (such
as a scan of every account of a tenant for a ``userName eq`` lookup) that are orders of magnitude
slower than an index probe. Autovacuum fixes that eventually (about once a minute at best, and never
where it is turned off); running ``ANALYZE`` on the tables a bulk load grew, after the load commits,
fixes it at once. PostgreSQL's own advice for bulk loads is the same ("Run ANALYZE Afterwards").
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

MIN_ROWS = 1000  # fewer new rows than this never triggers an ANALYZE
GROWTH = 0.2  # ... nor less than this fraction of the rows counted at the last ANALYZE


class StatisticsRefresher:
    """Count rows a process bulk-inserted per table set; ``ANALYZE`` them when they grew enough."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._enabled = engine.dialect.name == "postgresql"
        self._pending: dict[tuple[str, ...], int] = {}
        self._baseline: dict[tuple[str, ...], int] = {}
        self._running: dict[tuple[str, ...], asyncio.Task[None]] = {}

    async def inserted(self, tables: tuple[str, ...], rows: int) -> None:
        """Note ``rows`` new rows (committed) in ``tables``; start one background ANALYZE when due.

        A coroutine so that, as a background task, it runs on the event loop (not in a thread).
        """
        if not self._enabled or rows <= 0:
            return
        pending = self._pending.get(tables, 0) + rows
        self._pending[tables] = pending
        if pending < max(MIN_ROWS, int(self._baseline.get(tables, 0) * GROWTH)) or tables in self._running:
            return
        self._pending[tables] = 0
        self._baseline[tables] = self._baseline.get(tables, 0) + pending
        task = asyncio.get_running_loop().create_task(self._analyze(tables))
        self._running[tables] = task

    async def _analyze(self, tables: tuple[str, ...]) -> None:
        try:
            # Maintenance, not a unit of work: ANALYZE runs in autocommit, outside any transaction.
            async with self._engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                # Table names come from code, never from input; quoted as identifiers anyway.
                names = ", ".join(connection.dialect.identifier_preparer.quote(name) for name in tables)
                await connection.execute(text(f"ANALYZE {names}"))
        except Exception:
            log.exception("ANALYZE after a bulk load failed; the planner keeps its older statistics")
        finally:
            self._running.pop(tables, None)

    async def wait(self) -> None:
        """Wait for running ANALYZE tasks (shutdown and tests)."""
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
