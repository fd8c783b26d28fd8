"""Metric families and security log lines: names, labels, and what each event adds (once)."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from idhub.events import SignIn
from idhub.metrics import Metrics
from idhub.oidc.grants import GRANTS
from idhub.sessions.login import authenticate_password
from idhub.settings import ThrottleSettings
from idhub.storage.engine import CountingPool, create_engine, pool_stats
from idhub.telemetry import GRANT_TYPES, Telemetry
from idhub.throttle import Throttle
from idhub.tokens.revocation import RevocationEntry, RevocationState, record_revocation
from tests.conftest import Env, uow_publishing_to
from tests.oidc.grants.helpers import basic, code_setup, exchange_code, post
from tests.redis_support import redis_url_or_skip
from tests.scim.conftest import PATCH_URN, Scim, provisioning_token

PASSWORD = "correct horse"
SECRET_PASSWORD = "Pw-never-in-logs-7f3a"  # a test value that must not appear in a log
TYPED_USERNAME = "typed-password-in-username-9c1e"


def _families(env: Env) -> dict[str, Any]:
    """Scrape ``/metrics`` and return the parsed families by name."""
    response = env.client.get("/metrics")
    assert response.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def _labels(family: Any) -> set[tuple[tuple[str, str], ...]]:
    return {tuple(sorted(sample.labels.items())) for sample in family.samples if sample.name.endswith("_total")}


def _sign_in(env: Env, tenant: Any, username: str, password: str, throttle: Throttle, *, fail: bool = False) -> bool:
    """Sign in once through the one password check; ``fail``: the request then fails and rolls back."""

    async def work() -> bool:
        try:
            async with env.ctx.uow(surface="test") as uow:
                result = await authenticate_password(
                    uow,
                    passwords=env.ctx.passwords,
                    throttle=throttle,
                    tenant_id=tenant.id,
                    username=username,
                    password=password,
                    address="192.0.2.7",
                )
                if fail:
                    raise RuntimeError("the request failed after the sign-in")
        except RuntimeError:
            return False
        return result.ok

    ok: bool = env.run(work)
    return ok


def test_metrics_families_after_security_events_names_labels_and_logs(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="idhub.security")
    metrics = env.ctx.metrics
    tenant = env.tenant()
    user_id = env.user(tenant, password=PASSWORD)
    before = {
        "failure": metrics.sign_ins("password", "failure"),
        "success": metrics.sign_ins("password", "success"),
        "blocked": metrics.sign_ins("password", "blocked"),
        "lockouts": metrics.lockouts,
        "issued": metrics.token_requests("token", "client_credentials", "issued"),
        "invalid_client": metrics.token_requests("token", "client_credentials", "invalid_client"),
        "introspect": metrics.token_requests("introspect", "", "invalid_client"),
    }
    throttle = Throttle(ThrottleSettings(max_failures_per_account=2, max_failures_per_address=1000))

    # Sign-ins: a failure committed, a failure rolled back (each counted once), a success, then a lockout.
    assert not _sign_in(env, tenant, TYPED_USERNAME, SECRET_PASSWORD, throttle)
    assert not _sign_in(env, tenant, "alice", SECRET_PASSWORD, throttle, fail=True)
    assert _sign_in(env, tenant, "alice", PASSWORD, throttle)
    for _ in range(3):  # the success cleared the account's failures: two more, then over the limit
        assert not _sign_in(env, tenant, "alice", SECRET_PASSWORD, throttle)
    assert metrics.sign_ins("password", "failure") - before["failure"] == 4
    assert metrics.sign_ins("password", "success") - before["success"] == 1
    assert metrics.sign_ins("password", "blocked") - before["blocked"] == 1
    assert metrics.lockouts - before["lockouts"] == 1

    # Tokens: one issued, one refused with invalid_client (a rolled-back request), one refused introspection.
    client_id, secret = env.oauth_client(tenant, grant_types=["client_credentials"], scope="api")
    assert secret is not None
    granted = post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, secret))
    assert granted.status_code == 200, granted.text
    wrong = secret[::-1]
    refused = post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, wrong))
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    introspect = post(env, tenant, "introspect", {"token": "x"}, basic(client_id, wrong))
    assert introspect.status_code == 401
    assert metrics.token_requests("token", "client_credentials", "issued") - before["issued"] == 1
    assert metrics.token_requests("token", "client_credentials", "invalid_client") - before["invalid_client"] == 1
    assert metrics.token_requests("introspect", "", "invalid_client") - before["introspect"] == 1

    # Refresh token reuse: the grant is revoked (a revocation of kind grant) and logged.
    setup = code_setup(env)
    first = exchange_code(env, setup).json()
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    assert post(env, setup.tenant, "token", refresh, basic(setup.client_id, setup.secret)).status_code == 200
    reused = post(env, setup.tenant, "token", refresh, basic(setup.client_id, setup.secret))
    assert reused.json()["error"] == "invalid_grant"

    # SCIM: create, patch (deactivate), a conflict, delete.
    scim = Scim(env=env, tenant=tenant, token=provisioning_token(env, tenant))
    created = scim.create_user("bob")
    patch = {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "active", "value": False}]}
    assert scim.request("PATCH", f"/Users/{created['id']}", patch).status_code == 200
    conflict = scim.request("POST", "/Users", {"schemas": created["schemas"], "userName": "bob"})
    assert conflict.status_code == 409
    assert scim.request("DELETE", f"/Users/{created['id']}").status_code == 204
    assert scim.request("GET", f"/Users/{created['id']}").status_code == 404
    assert metrics.scim("User", "create", "success") >= 1
    assert metrics.scim("User", "create", "uniqueness") >= 1
    assert metrics.scim("User", "get", "404") >= 1

    families = _families(env)
    expected = {
        "idhub_signins": {"method", "outcome"},
        "idhub_signin_lockouts": set(),
        "idhub_token_requests": {"endpoint", "grant_type", "outcome"},
        "idhub_tokens_issued": {"grant_type", "kind"},
        "idhub_scim_operations": {"resource", "operation", "outcome"},
        "idhub_revocations": {"kind"},
        "idhub_revocations_applied": {"source"},
        "idhub_http_requests": {"route", "method", "status"},
    }
    for name, labels in expected.items():
        assert families[name].type == "counter", name
        assert all(set(sample.labels) == labels for sample in families[name].samples), name
    for name in ("idhub_http_request_duration_seconds", "idhub_revocation_propagation_seconds"):
        assert families[name].type == "histogram"
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "python_info", "python_gc_collections"):
        assert name in families, name
    from idhub.storage.engine import pool_stats

    if pool_stats(env.ctx.engine) is not None:  # a queue pool (SQLAlchemy before 2.1 gives file SQLite none)
        for name in ("size", "max", "in_use", "idle", "overflow", "waiting"):
            assert families[f"idhub_db_pool_{name}"].type == "gauge"
    scim_labels = _labels(families["idhub_scim_operations"])
    for operation, outcome in (("create", "success"), ("patch", "success"), ("delete", "success")):
        assert (("operation", operation), ("outcome", outcome), ("resource", "User")) in scim_labels
    assert (("kind", "subject"),) in _labels(families["idhub_revocations"])  # deactivation and deletion
    assert (("kind", "grant"),) in _labels(families["idhub_revocations"])  # the reused refresh token's grant
    assert (("source", "local"),) in _labels(families["idhub_revocations_applied"])

    # Security log lines: one per event, fields in extra, no secret and no typed username anywhere.
    records = [record for record in caplog.records if record.name == "idhub.security"]
    by_event: dict[str, list[logging.LogRecord]] = {}
    for record in records:
        by_event.setdefault(getattr(record, "event", ""), []).append(record)
    ours = [r for r in by_event.get("signin.failure", []) if r.__dict__.get("tenant_id") == str(tenant.id)]
    assert len(ours) == 4
    assert {r.__dict__["reason"] for r in ours} == {"unknown account", "bad password"}
    assert all(r.__dict__["method"] == "password" for r in ours)
    lockouts = [r for r in by_event.get("signin.lockout", []) if r.__dict__.get("tenant_id") == str(tenant.id)]
    assert len(lockouts) == 1 and lockouts[0].__dict__["user_id"] == user_id
    auth_failures = [r for r in by_event["client.auth_failure"] if r.__dict__.get("client_id") == client_id]
    assert {r.__dict__["endpoint"] for r in auth_failures} == {"token", "introspect"}
    reuse = [r for r in by_event["token.reuse"] if r.__dict__.get("tenant_id") == str(setup.tenant.id)]
    assert len(reuse) == 1 and reuse[0].__dict__["token_type"] == "refresh_token"
    for event in ("user.disabled", "user.deleted"):
        assert [r for r in by_event[event] if r.__dict__.get("user_id") == created["id"]], event
    assert all(record.levelno >= logging.INFO for record in records)
    text = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in records)
    for secret_value in (SECRET_PASSWORD, TYPED_USERNAME, PASSWORD, secret, wrong, first["refresh_token"]):
        assert secret_value not in text


def test_http_metrics_route_templates_for_every_kind_of_route(env: Env) -> None:
    tenant = env.tenant()
    slug = tenant.slug
    client_id, secret = env.oauth_client(tenant, grant_types=["client_credentials"], scope="api")
    scim = Scim(env=env, tenant=tenant, token=provisioning_token(env, tenant))
    env.client.get(f"/tenants/{slug}/.well-known/openid-configuration")
    post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, secret or ""))  # fast route
    env.client.get(f"/tenants/{slug}/static/idhub.css")
    env.client.get(f"/tenants/{slug}/jwks")
    env.client.get("/admin/v1/tenants/acme/users")  # no token: 401, still labelled by its template
    scim.request("GET", "/Users")
    env.client.get("/no/such/path")
    env.client.request("BREW", "/healthz")  # a method nobody registered: never a label of its own
    body = env.client.get("/metrics").text
    routes = set(re.findall(r'idhub_http_requests_total\{method="([^"]+)",route="([^"]+)"', body))
    for method, route in (
        ("GET", "/tenants/{tenant}/.well-known/openid-configuration"),
        ("POST", "/tenants/{tenant}/token"),
        ("GET", "/tenants/{tenant}/static/{name}"),
        ("GET", "/admin/v1/tenants/{tenant}/users"),
        ("GET", "/tenants/{tenant}/scim/v2/Users"),
        ("GET", "unmatched"),
        ("other", "/healthz"),
    ):
        assert (method, route) in routes, (method, route)
    assert not any(slug in route for _method, route in routes)  # a template, never a tenant's slug
    assert "BREW" not in body
    assert (
        'idhub_http_request_duration_seconds_bucket{le="0.001",method="POST",route="/tenants/{tenant}/token"}' in body
    )


def test_revocation_propagation_counted_once_per_entry_by_source(env: Env) -> None:
    metrics = Metrics()
    state = RevocationState(env.ctx.sessionmaker, observer=metrics)
    entry = RevocationEntry(str(uuid.uuid4()), "jti", "j-1", created_at=1.0, expires_at=2e10)
    assert state.apply(entry, "broadcast")
    assert not state.apply(entry, "poll")  # known already: the poll's overlap, an own broadcast
    state.apply(RevocationEntry(entry.tenant_id, "jti", "j-2", 1e10, 2e10), "poll")  # from a clock ahead
    assert metrics.revocations_applied("broadcast") == 1 and metrics.revocations_applied("poll") == 1
    text = metrics.render().decode()
    assert 'idhub_revocation_propagation_seconds_bucket{le="+Inf",source="broadcast"} 1.0' in text
    assert 'idhub_revocation_propagation_seconds_bucket{le="0.005",source="poll"} 1.0' in text  # clamped to 0


def test_telemetry_rolled_back_refusals_counted_and_successes_ignored() -> None:
    metrics = Metrics()
    telemetry = Telemetry(metrics)
    tenant_id = uuid.uuid4()

    async def run() -> None:
        await telemetry.after_rollback(
            None,  # type: ignore[arg-type]
            [SignIn(tenant_id=tenant_id, user_id=None, result="failure", reason="unknown account")],
        )

    asyncio.run(run())
    assert metrics.sign_ins("password", "failure") == 1


def test_telemetry_grant_types_are_the_registered_grants() -> None:
    assert set(GRANTS) == GRANT_TYPES


def test_pool_waiting_counts_checkouts_not_yet_served(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}")
    if not isinstance(engine.sync_engine.pool, CountingPool):
        pytest.skip("SQLAlchemy before 2.1 gives file SQLite a NullPool: no queue to wait on")

    async def run() -> tuple[Any, Any, Any]:
        pool = engine.sync_engine.pool
        pool._max_overflow = 0  # type: ignore[attr-defined]  # no overflow: one checkout beyond the size waits
        held = [await engine.connect() for _ in range(pool.size())]  # type: ignore[attr-defined]
        waiter = asyncio.create_task(engine.connect().start())
        await asyncio.sleep(0.1)
        during = pool_stats(engine)
        await held.pop().close()
        held.append(await waiter)
        after = pool_stats(engine)
        for connection in held:
            await connection.close()
        idle = pool_stats(engine)
        await engine.dispose()
        return during, after, idle

    during, after, idle = asyncio.run(run())
    assert during.waiting == 1 and during.in_use == during.size == during.limit
    assert after.waiting == 0 and after.in_use == after.size
    assert idle.in_use == 0 and idle.idle == idle.size


def test_revocation_propagation_by_broadcast_and_poll_each_counted_once(env: Env) -> None:
    url = redis_url_or_skip()
    tenant = env.tenant()

    async def work() -> tuple[Metrics, Metrics, Metrics]:
        # Three processes: one writes, one hears Redis (and polls too), one only polls.
        seen = Metrics(), Metrics(), Metrics()
        writer = RevocationState(env.ctx.sessionmaker, poll_seconds=0.1, redis_url=url, observer=seen[0])
        listener = RevocationState(env.ctx.sessionmaker, poll_seconds=0.1, redis_url=url, observer=seen[1])
        poller = RevocationState(env.ctx.sessionmaker, poll_seconds=0.1, observer=seen[2])
        for state in (writer, listener, poller):
            await state.start()
        try:
            await asyncio.sleep(0.2)  # let the subscriptions settle
            async with uow_publishing_to(env, writer) as uow:
                await record_revocation(uow, tenant_id=tenant.id, kind="jti", value=uuid.uuid4().hex, expires_in=60)
            await asyncio.sleep(0.6)  # several polls: known entries are not counted again
        finally:
            for state in (writer, listener, poller):
                await state.stop()
        return seen

    writer, listener, poller = env.run(work)
    assert writer.revocations_applied("local") == 1
    assert sum(writer.revocations_applied(source) for source in ("broadcast", "poll")) == 0
    assert listener.revocations_applied("broadcast") + listener.revocations_applied("poll") == 1
    assert poller.revocations_applied("poll") == 1 and poller.revocations_applied("broadcast") == 0
    text = poller.render().decode()
    assert 'idhub_revocation_propagation_seconds_count{source="poll"} 1.0' in text
