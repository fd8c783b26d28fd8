"""Operational endpoints: liveness, readiness, Prometheus metrics.

With ``IDHUB_MANAGEMENT_PORT`` set, all three are answered on that port and ``/metrics`` is no longer
answered on the public one (:class:`idhub.routing.FrontDoor` splits them by the port a request came in
on); the families :mod:`idhub.metrics` exports are per process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from idhub.context import AppContext
from idhub.deps import ContextDep
from idhub.storage.migrate import head_revision, known_revisions

router = APIRouter(tags=["operations"])

# Each probe gets this long (seconds), run side by side: /readyz answers within a second whatever hangs.
PROBE_TIMEOUT = 0.8
# Probes given up on may still be closing their connection; they are kept here until they have.
_abandoned: set[asyncio.Task[None]] = set()


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """Answer while the process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    responses={
        200: {"description": "ready: `status` is `ok`, or `degraded` while a configured Redis is unreachable"},
        503: {"description": "database unreachable, or its schema behind this code (`status` is `unavailable`)"},
    },
)
async def readyz(ctx: ContextDep) -> Response:
    """Answer 200 only while the database answers (within a second) with the schema this code needs.

    ``{"status": "ok" | "degraded" | "unavailable", "database": "ok" | "unavailable",
    "schema": "ok" | "behind" | "ahead" | "unknown", "redis": "ok" | "unavailable" | "disabled"}``: losing
    Redis degrades idhub but stops nothing, so it stays ready. A schema behind the code (a migration not
    run) is not ready; one ahead of it (a newer release migrated during a rolling upgrade) still serves.
    """
    revision: list[str | None] = []
    database, redis = await asyncio.gather(_probe(_database(ctx, revision)), _probe(_redis(ctx)))
    redis_state = "disabled" if ctx.redis is None else ("ok" if redis else "unavailable")
    schema = schema_state(revision[0]) if database and revision else "unknown"
    if not database or schema == "behind":
        status = "unavailable"
    elif redis_state == "unavailable":
        status = "degraded"
    else:
        status = "ok"
    body = {"status": status, "database": "ok" if database else "unavailable", "schema": schema, "redis": redis_state}
    code = 503 if status == "unavailable" else 200
    return JSONResponse(body, status_code=code, headers={"cache-control": "no-store"})


def schema_state(revision: str | None) -> str:
    """Tell how the database's schema revision compares with this code's: ok, behind or ahead."""
    head = head_revision()
    if revision == head:
        return "ok"
    return "behind" if revision is None or revision in known_revisions() else "ahead"


async def _database(ctx: AppContext, revision: list[str | None]) -> None:
    async with ctx.engine.connect() as connection:
        found = await connection.execute(text("SELECT version_num FROM alembic_version"))
        row = found.first()
        revision.append(row[0] if row is not None else None)


async def _redis(ctx: AppContext) -> None:
    if ctx.redis is not None:
        await ctx.redis.ping()


async def _probe(check: Coroutine[Any, Any, None]) -> bool:
    """Tell whether ``check`` succeeded within :data:`PROBE_TIMEOUT`, without waiting for it to clean up."""
    task = asyncio.create_task(check)
    done, _ = await asyncio.wait({task}, timeout=PROBE_TIMEOUT)
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        return False
    return not task.cancelled() and task.exception() is None


def _forget(task: asyncio.Task[None]) -> None:
    _abandoned.discard(task)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.exception()  # retrieved: no "exception was never retrieved" warning


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(ctx: ContextDep) -> Response:
    """Expose metrics in the Prometheus text format."""
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
