"""Conflict retries: real PostgreSQL deadlocks and serialization failures are recognised and retried, then 503."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi import Request, Response
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from idhub.errors import Unavailable
from idhub.oidc.routing import render_oauth_error
from idhub.routing import run_in_boundary, uow_of
from idhub.storage.base import utcnow
from idhub.storage.retry import DEFAULT_POLICY, RetryPolicy, exhausted, is_conflict, sqlstate_of
from idhub.storage.single_use import claim
from idhub.storage.uow import UnitOfWork
from tests.conftest import Env


class DriverError(Exception):
    """A driver error carrying a SQLSTATE, as asyncpg's (wrapped by SQLAlchemy) does."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _wrapped(sqlstate: str) -> DBAPIError:
    return DBAPIError("UPDATE t SET x = 1", {}, DriverError("aborted", sqlstate))


def _postgresql_only(env: Env) -> None:
    if env.backend != "postgresql":
        pytest.skip("deadlocks and serialization failures are PostgreSQL's; SQLite runs one writer at a time")


async def _lock(session: Any, tenant_id: uuid.UUID) -> None:
    await session.execute(text("UPDATE tenant SET name = name WHERE id = :id"), {"id": tenant_id})


def _real_deadlock(env: Env) -> DBAPIError:
    """Make PostgreSQL abort one of two transactions that lock two rows in opposite orders."""
    first, second = env.tenant().id, env.tenant().id

    async def work() -> DBAPIError:
        a, b = env.ctx.sessionmaker(), env.ctx.sessionmaker()
        try:
            await _lock(a, first)
            await _lock(b, second)
            results = await asyncio.gather(_lock(a, second), _lock(b, first), return_exceptions=True)
            errors = [result for result in results if isinstance(result, BaseException)]
            assert len(errors) == 1 and isinstance(errors[0], DBAPIError), results
            return errors[0]
        finally:
            await a.rollback()
            await b.rollback()
            await a.close()
            await b.close()

    result: DBAPIError = env.run(work)
    return result


def test_retry_real_deadlock_is_a_conflict(env: Env) -> None:
    _postgresql_only(env)
    error = _real_deadlock(env)
    assert sqlstate_of(error) == "40P01"
    assert is_conflict(error)
    assert DEFAULT_POLICY.should_retry(error, 1)


def test_retry_real_serialization_failure_is_a_conflict(env: Env) -> None:
    _postgresql_only(env)
    tenant_id = env.tenant().id

    async def work() -> BaseException:
        a, b = env.ctx.sessionmaker(), env.ctx.sessionmaker()
        try:
            await a.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            await a.execute(text("SELECT name FROM tenant WHERE id = :id"), {"id": tenant_id})  # takes the snapshot
            await _lock(b, tenant_id)
            await b.commit()
            with pytest.raises(DBAPIError) as caught:
                await _lock(a, tenant_id)
            return caught.value
        finally:
            await a.rollback()
            await a.close()
            await b.close()

    error = env.run(work)
    assert sqlstate_of(error) == "40001" and is_conflict(error)


def test_retry_classifier_finds_conflicts_anywhere_in_the_chain() -> None:
    try:
        try:
            raise _wrapped("40P01")
        except DBAPIError as exc:
            raise Unavailable("busy") from exc
    except Unavailable as outer:
        assert is_conflict(outer)
    assert is_conflict(_wrapped("40001"))
    for other in (_wrapped("23505"), _wrapped("57014"), ValueError("x"), Unavailable("down")):
        assert not is_conflict(other)
    assert sqlstate_of(ValueError("x")) is None


def test_retry_policy_bounded_attempts_and_jittered_delays() -> None:
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.015)
    conflict = _wrapped("40P01")
    assert [policy.should_retry(conflict, n) for n in (1, 2, 3)] == [True, True, False]
    assert not policy.should_retry(_wrapped("23505"), 1)
    for attempt in (1, 2, 3, 10):
        for _ in range(50):
            assert 0.0 <= policy.delay(attempt) <= min(0.015, 0.01 * 2 ** (attempt - 1))
    answer = exhausted(conflict, 3)
    assert isinstance(answer, Unavailable) and answer.retry_after >= 1 and "40P01" in (answer.internal or "")


async def _serve(env: Env, handler: Any, body: bytes) -> Response:
    """Run ``handler`` behind the OAuth boundary for a POST with ``body`` (the connection delivers it once)."""
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/t", "headers": [], "query_string": b"", "app": env.client.app}
    return await run_in_boundary(scope, receive, handler, surface="oauth", render=render_oauth_error)


def test_boundary_conflict_retried_in_a_fresh_unit_of_work_with_the_same_body(env: Env) -> None:
    tenant_id = env.tenant().id
    conflict = _real_deadlock(env) if env.backend == "postgresql" else _wrapped("40P01")
    seen: list[tuple[UnitOfWork, bytes, bool]] = []

    async def handler(request: Request) -> Response:
        uow = uow_of(request)
        body = await request.body()
        # The same single-use value each attempt: it is claimable again only if the failed attempt rolled back.
        won = await claim(uow.session, tenant_id=tenant_id, namespace="retry", value="v", expires_at=_later())
        seen.append((uow, body, won))
        if len(seen) < 3:
            raise conflict
        return Response(body)

    response: Response = env.run(_serve, env, handler, b"grant_type=x&y=z")
    assert response.status_code == 200 and response.body == b"grant_type=x&y=z"
    assert [(body, won) for _, body, won in seen] == [(b"grant_type=x&y=z", True)] * 3
    assert len({id(uow) for uow, _, _ in seen}) == 3


def test_boundary_conflict_on_every_attempt_answers_503_not_500(env: Env) -> None:
    calls = 0

    async def handler(request: Request) -> Response:
        nonlocal calls
        calls += 1
        await request.body()
        raise _wrapped("40P01")

    response: Response = env.run(_serve, env, handler, b"a=b")
    assert calls == DEFAULT_POLICY.attempts
    assert response.status_code == 503 and response.headers["retry-after"]
    assert b"temporarily_unavailable" in response.body


def test_boundary_other_errors_are_not_retried(env: Env) -> None:
    calls = 0

    async def handler(request: Request) -> Response:
        nonlocal calls
        calls += 1
        raise _wrapped("23505")

    response: Response = env.run(_serve, env, handler, b"")
    assert calls == 1 and response.status_code == 500


def _later() -> datetime:
    return utcnow() + timedelta(minutes=5)
