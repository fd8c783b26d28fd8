"""Faults of the database: answers, not hangs (design: "Faults are answers, not hangs").

One app runs on a private PostgreSQL cluster behind a proxy this module controls, with one-second
timeouts so a frozen database costs each request about a second. The tests freeze the proxy (a
network partition: connections stay open, nothing arrives), stop the cluster (connections drop,
new ones are refused) and resume, and check what callers get meanwhile and afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from idhub.app import create_app
from idhub.storage.engine import Timeouts, create_engine
from idhub.storage.faults import is_fault
from idhub.tenants.service import TenantInfo
from tests.conftest import PUBLIC_URL, Env, make_settings
from tests.flows import authorize_params, pkce_pair
from tests.oidc.grants.helpers import REDIRECT_URI, basic, post
from tests.ops.faults_support import FaultProxy, PrivateCluster

SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
TIMEOUT = 1.0  # the app's connect, command and pool timeouts in this module


@dataclass
class Outage:
    """The app, the cluster under it and the proxy between them."""

    env: Env
    cluster: PrivateCluster
    proxy: FaultProxy

    def wait_ready(self, within: float = 20.0) -> None:
        """Wait until ``/readyz`` says the database answers again."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.env.client.get("/readyz").status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError("the app did not become ready again")


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    cluster = PrivateCluster.start_or_skip()
    proxy = FaultProxy(cluster.port)
    try:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/postgres"
        settings = make_settings(
            url,
            tmp_path_factory.mktemp("faults"),
            database_connect_timeout=TIMEOUT,
            database_command_timeout=TIMEOUT,
            database_pool_timeout=TIMEOUT,
            client_cache_ttl=0.5,  # refreshed during an outage; 4 x 0.5 s (served while refreshing) > TIMEOUT
            stale_if_error_seconds=30,
        )
        app = create_app(settings)
        with TestClient(app, base_url=PUBLIC_URL) as client:
            yield Outage(Env(client=client, ctx=app.state.ctx, backend="postgresql"), cluster, proxy)
    finally:
        proxy.close()
        cluster.remove()


@dataclass
class Callers:
    """One caller per surface, each with what it needs prepared while the database was up."""

    tenant: TenantInfo
    client_id: str
    secret: str
    scim_token: str


def _callers(env: Env) -> Callers:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(
        tenant,
        redirect_uris=[REDIRECT_URI],
        grant_types=["authorization_code", "client_credentials"],
        scope="openid profile scim",
    )
    assert secret is not None
    token = post(env, tenant, "token", {"grant_type": "client_credentials", "scope": "scim"}, basic(client_id, secret))
    assert token.status_code == 200, token.text
    return Callers(tenant, client_id, secret, token.json()["access_token"])


def _token_call(env: Env, c: Callers) -> Any:
    """Redeem an unknown authorization code: the single-use consume needs the database."""
    data = {"grant_type": "authorization_code", "code": "x" * 43, "redirect_uri": REDIRECT_URI}
    data["code_verifier"] = "v" * 43
    return post(env, c.tenant, "token", data, basic(c.client_id, c.secret))


def _scim_call(env: Env, c: Callers) -> Any:
    return env.client.get(
        f"/tenants/{c.tenant.slug}/scim/v2/Users", headers={"authorization": f"Bearer {c.scim_token}"}
    )


def _page_call(env: Env, c: Callers) -> Any:
    _verifier, challenge = pkce_pair()
    params = authorize_params(client_id=c.client_id, redirect_uri=REDIRECT_URI, code_challenge=challenge)
    return env.client.get(f"/tenants/{c.tenant.slug}/authorize", params=params, follow_redirects=False)


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    response = call()
    return response, time.perf_counter() - started


def _assert_unavailable_answers(env: Env, c: Callers, *, within: float) -> dict[str, float]:
    """Each surface answers 503 with Retry-After in its own format, within ``within`` seconds."""
    took: dict[str, float] = {}
    token, took["token"] = _timed(lambda: _token_call(env, c))
    assert token.status_code == 503, token.text
    assert token.json()["error"] == "temporarily_unavailable"
    assert int(token.headers["retry-after"]) > 0
    scim, took["scim"] = _timed(lambda: _scim_call(env, c))
    assert scim.status_code == 503, scim.text
    assert scim.headers["content-type"].startswith("application/scim+json")
    assert scim.json()["schemas"] == [SCIM_ERROR] and scim.json()["status"] == "503"
    assert int(scim.headers["retry-after"]) > 0
    page, took["page"] = _timed(lambda: _page_call(env, c))
    assert page.status_code == 503, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert int(page.headers["retry-after"]) > 0
    assert max(took.values()) < within, took
    return took


def _healthy(env: Env, c: Callers) -> bool:
    return (
        _token_call(env, c).status_code == 400
        and _scim_call(env, c).status_code == 200
        and _page_call(env, c).status_code in (302, 303)
    )


def test_readyz_database_frozen_503_within_a_second(outage: Outage) -> None:
    env = outage.env
    assert env.client.get("/readyz").json() == {"status": "ok", "database": "ok", "schema": "ok", "redis": "disabled"}
    outage.proxy.freeze()
    try:
        for _ in range(3):
            response, took = _timed(lambda: env.client.get("/readyz"))
            assert response.status_code == 503
            expected = {"status": "unavailable", "database": "unavailable", "schema": "unknown", "redis": "disabled"}
            assert response.json() == expected
            assert took < 1.0, took
    finally:
        outage.proxy.resume()
    outage.wait_ready()


def test_endpoints_database_frozen_503_in_own_format_then_recover(outage: Outage) -> None:
    env = outage.env
    callers = _callers(env)
    assert _healthy(env, callers)
    outage.proxy.freeze()
    try:
        _assert_unavailable_answers(env, callers, within=3 * TIMEOUT + 1)
    finally:
        outage.proxy.resume()
    outage.wait_ready()
    assert _healthy(env, callers)


def test_endpoints_database_stopped_503_in_own_format_then_recover_without_restart(outage: Outage) -> None:
    env = outage.env
    callers = _callers(env)
    assert _healthy(env, callers)
    outage.cluster.stop()
    try:
        _assert_unavailable_answers(env, callers, within=2.0)
        assert env.client.get("/readyz").status_code == 503
    finally:
        outage.cluster.start()
    deadline = time.monotonic() + 15
    while not _healthy(env, callers):
        assert time.monotonic() < deadline, "no recovery without a restart"
        time.sleep(0.2)
    assert env.client.get("/readyz").status_code == 200


def test_client_credentials_and_introspection_database_frozen_served_from_stale_caches(outage: Outage) -> None:
    env = outage.env
    callers = _callers(env)
    auth = basic(callers.client_id, callers.secret)

    def client_credentials() -> Any:
        return post(env, callers.tenant, "token", {"grant_type": "client_credentials", "scope": "scim"}, auth)

    def introspect(token: str) -> Any:
        return post(env, callers.tenant, "introspect", {"token": token}, auth)

    revoked = client_credentials().json()["access_token"]
    assert post(env, callers.tenant, "revoke", {"token": revoked}, auth).status_code == 200
    live = client_credentials().json()["access_token"]
    keys = env.ctx.keys
    keys_ttl, keys._ttl = keys._ttl, 0.2  # make the signing keys due for a reload during the outage
    outage.proxy.freeze()
    slowest = 0.0
    try:
        # Longer than every cache lifetime in play (clients 0.5 s, keys 0.2 s, tenants 5 s).
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            issued, took = _timed(client_credentials)
            assert issued.status_code == 200, issued.text
            checked, took_introspection = _timed(lambda: introspect(live))
            assert checked.status_code == 200 and checked.json()["active"] is True, checked.text
            refused = introspect(revoked)
            assert refused.status_code == 200 and refused.json() == {"active": False}
            slowest = max(slowest, took, took_introspection)
            time.sleep(0.1)
    finally:
        outage.proxy.resume()
        keys._ttl = keys_ttl
    assert slowest < TIMEOUT, slowest
    assert env.ctx.metrics.faults("database", "stale_client") > 0
    assert env.ctx.metrics.faults("database", "stale_keys") > 0
    outage.wait_ready()


def test_engine_slow_statement_and_empty_pool_bounded_by_timeouts(outage: Outage) -> None:
    async def work() -> dict[str, Any]:
        engine = create_engine(outage.cluster.url, pool_size=1, timeouts=Timeouts(connect=1, command=0.5, pool=0.3))
        found: dict[str, Any] = {}
        try:
            async with engine.connect() as connection:
                found["statement_timeout"] = (await connection.exec_driver_sql("SHOW statement_timeout")).scalar()
                started = time.perf_counter()
                try:
                    await connection.exec_driver_sql("SELECT pg_sleep(5)")
                except Exception as exc:
                    found["slow"] = (time.perf_counter() - started, is_fault(exc))
            async with engine.connect() as connection:  # the pool still lends a working connection
                found["after"] = (await connection.exec_driver_sql("SELECT 1")).scalar()
            async with engine.connect(), engine.connect():  # pool_size=1 plus one overflow: both taken
                started = time.perf_counter()
                try:
                    async with engine.connect():
                        pass
                except Exception as exc:
                    found["pool"] = (time.perf_counter() - started, is_fault(exc))
        finally:
            await engine.dispose()
        return found

    found = asyncio.run(work())
    assert found["statement_timeout"] == "500ms"
    slow_took, slow_is_fault = found["slow"]
    assert slow_took < 2.0 and slow_is_fault
    assert found["after"] == 1
    pool_took, pool_is_fault = found["pool"]
    assert 0.25 < pool_took < 1.5 and pool_is_fault


def test_settings_fault_defaults_bounded(tmp_path: Path) -> None:
    settings = make_settings("sqlite+aiosqlite:///" + str(tmp_path / "x.db"), tmp_path)
    assert (settings.database_connect_timeout, settings.database_command_timeout) == (3.0, 10.0)
    assert (settings.database_pool_timeout, settings.redis_timeout) == (3.0, 0.5)
    assert settings.stale_if_error_seconds == 60.0
