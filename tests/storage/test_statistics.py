"""Planner statistics are refreshed after bulk loads on PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text

from idhub.storage.statistics import MIN_ROWS, StatisticsRefresher
from tests.conftest import Env


def test_statistics_refresher_analyzes_after_enough_rows_on_postgresql(env: Env) -> None:
    async def work() -> tuple[bool, int]:
        refresher = StatisticsRefresher(env.ctx.engine)
        await refresher.inserted(("user",), MIN_ROWS - 1)
        started_early = bool(refresher._running)
        await refresher.inserted(("user",), 1)
        await refresher.wait()
        if env.backend != "postgresql":
            return started_early, 1
        async with env.ctx.engine.connect() as connection:
            analyzed = await connection.scalar(
                text("SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'user' AND last_analyze IS NOT NULL")
            )
        return started_early, int(analyzed or 0)

    started_early, analyzed = env.run(work)
    assert not started_early
    assert analyzed == 1
