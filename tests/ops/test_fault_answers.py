"""Which errors are dependency faults, and how callers hear of them: a 503 with Retry-After, never a 500."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc

from idhub.app import create_app
from idhub.errors import Unavailable
from idhub.storage.faults import as_unavailable, is_fault
from tests.conftest import PUBLIC_URL, Env, make_settings
from tests.oidc.grants.helpers import REDIRECT_URI, basic, post
from tests.ops.faults_support import free_port


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def _wrapped(orig: BaseException, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError("SELECT 1", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
        OSError(113, "No route to host"),
        sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached"),
        _wrapped(Exception("connection was closed in the middle of operation"), invalidated=True),
        _wrapped(sqlite3.OperationalError("database is locked")),
        _wrapped(_PgError("57P01")),  # admin_shutdown
        _wrapped(_PgError("57014")),  # statement_timeout
        _wrapped(_PgError("08006")),  # connection failure
        _wrapped(_PgError("40P01")),  # deadlock detected (once retries are spent)
        _wrapped(_PgError("25006")),  # read-only transaction: a replica after failover
    ],
    ids=lambda error: type(error).__name__ + ":" + str(error)[:30],
)
def test_classifier_dependency_fault_unavailable(error: Exception) -> None:
    unavailable = as_unavailable(error)
    assert isinstance(unavailable, Unavailable)
    assert unavailable.retry_after > 0
    assert "SELECT" not in unavailable.detail


def test_classifier_fault_as_cause_of_another_error_found() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("loading failed") from inner
    except RuntimeError as outer:
        assert is_fault(outer)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad"),
        KeyError("x"),
        _wrapped(_PgError("23505")),  # unique violation: a conflict, not an outage
        _wrapped(_PgError("42P01")),  # undefined table: a bug
        _wrapped(sqlite3.OperationalError("no such table: user")),
        OSError(2, "No such file or directory"),
    ],
    ids=lambda error: type(error).__name__ + ":" + str(error)[:30],
)
def test_classifier_bug_or_refusal_not_a_fault(error: Exception) -> None:
    assert as_unavailable(error) is None


@pytest.fixture(scope="module")
def locked_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Path]]:
    root = tmp_path_factory.mktemp("locked")
    database = root / "idhub.db"
    settings = make_settings(f"sqlite+aiosqlite:///{database}", root, database_command_timeout=0.2)
    app = create_app(settings)

    async def down() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    # A route of no surface whose dependency is down (as middleware or a background task's caller would see it).
    app.add_api_route("/test-only/down", down, include_in_schema=False)
    with TestClient(app, base_url=PUBLIC_URL, raise_server_exceptions=False) as client:
        yield Env(client=client, ctx=app.state.ctx, backend="sqlite"), database


def test_readyz_body_names_database_and_redis_states(env: Env) -> None:
    response = env.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "schema": "ok", "redis": "disabled"}


def test_fault_outside_any_surface_503_with_retry_after(locked_app: tuple[Env, Path]) -> None:
    env, _ = locked_app
    response = env.client.get("/test-only/down")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0


def test_sqlite_database_locked_503_in_each_surface_format(locked_app: tuple[Env, Path]) -> None:
    env, database = locked_app
    tenant = env.tenant()
    client_id, secret = env.oauth_client(
        tenant, redirect_uris=[REDIRECT_URI], grant_types=["authorization_code", "client_credentials"], scope="scim"
    )
    auth = basic(client_id, secret or "")
    scim_token = post(env, tenant, "token", {"grant_type": "client_credentials", "scope": "scim"}, auth)
    access = scim_token.json()["access_token"]
    holder = sqlite3.connect(database, timeout=0.1)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock longer than the busy timeout
        scim = env.client.post(
            f"/tenants/{tenant.slug}/scim/v2/Users",
            json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "locked-out"},
            headers={"authorization": f"Bearer {access}", "content-type": "application/scim+json"},
        )
        revoked = post(env, tenant, "revoke", {"token": access}, auth)  # records a revocation: a write
    finally:
        holder.rollback()
        holder.close()
    assert revoked.status_code == 503, revoked.text
    assert revoked.json()["error"] == "temporarily_unavailable" and "retry-after" in revoked.headers
    assert scim.status_code == 503, scim.text
    assert scim.json()["status"] == "503" and "retry-after" in scim.headers


def test_redis_unreachable_startup_works_readyz_degraded(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'idhub.db'}", tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    app = create_app(settings)
    with TestClient(app, base_url=PUBLIC_URL) as client:
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "degraded", "database": "ok", "schema": "ok", "redis": "unavailable"}
        assert app.state.ctx.revocations.broadcast_state == "unavailable"
        assert app.state.ctx.metrics.faults("redis", "revocation_poll_fallback") >= 1
