"""The audit log, end to end: token grants and their refusals, sign-ins, SCIM changes; never a secret.

Entries of stateless requests (a ``client_credentials`` token, a refused request whose transaction
rolled back) are written by the batched background writer, so the helpers flush it and wait a little.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from idhub.settings import ThrottleSettings
from idhub.storage.models import AuditEvent
from idhub.tenants.service import TenantInfo
from idhub.throttle import Throttle
from tests.conftest import Env
from tests.flows import authorize_params, parse_forms, pkce_pair, query_of
from tests.oidc.grants.helpers import REDIRECT_URI, basic, code_setup, exchange_code, post
from tests.scim.conftest import USER_URN, Scim, provisioning_token

Row = dict[str, Any]
ADDRESS = "127.0.0.1"  # the peer address of every TestClient request (tests/conftest.py TEST_PEER)
PASSWORD = "correct horse"


def _rid() -> str:
    return f"req-{uuid.uuid4().hex[:16]}"


def audit_rows(
    env: Env, tenant: TenantInfo, until: Callable[[list[Row]], bool] = bool, timeout: float = 5.0
) -> list[Row]:
    """Return the tenant's audit entries (oldest first) once ``until`` holds for them (or the timeout ends)."""

    async def fetch() -> list[Row]:
        await env.ctx.audit.writer.flush()
        async with env.ctx.sessionmaker() as session:
            found = await session.scalars(
                select(AuditEvent).where(AuditEvent.tenant_id == tenant.id).order_by(AuditEvent.occurred_at)
            )
            return [
                {column.key: getattr(row, column.key) for column in AuditEvent.__table__.columns} for row in found.all()
            ]

    deadline = time.monotonic() + timeout
    while True:
        rows: list[Row] = env.run(fetch)
        if until(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def with_action(action: str, *, count: int = 1) -> Callable[[list[Row]], bool]:
    return lambda rows: sum(row["action"] == action for row in rows) >= count


def only(rows: list[Row], action: str) -> Row:
    found = [row for row in rows if row["action"] == action]
    assert len(found) == 1, rows
    return found[0]


def cc_client(env: Env, tenant: TenantInfo) -> tuple[str, str]:
    client_id, secret = env.oauth_client(tenant, grant_types=["client_credentials"], scope="scim api")
    assert secret
    return client_id, secret


# --- token grants ------------------------------------------------------------------------------------
def test_audit_client_credentials_grant_success(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = cc_client(env, tenant)
    rid = _rid()
    response = post(
        env, tenant, "token", {"grant_type": "client_credentials"}, {**basic(client_id, secret), "x-request-id": rid}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == rid
    row = only(audit_rows(env, tenant, with_action("token.grant")), "token.grant")
    assert (row["actor_type"], row["actor_id"]) == ("client", client_id)
    assert (row["target_type"], row["target_id"]) == ("Client", client_id)
    assert (row["outcome"], row["surface"]) == ("success", "oidc")
    assert (row["source_address"], row["request_id"]) == (ADDRESS, rid)
    assert row["details"] == {"grant_type": "client_credentials", "sub": client_id, "issued": ["access_token"]}


def test_audit_client_credentials_burst_folded_every_request_id_kept(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = cc_client(env, tenant)
    rids = [_rid() for _ in range(6)]
    for rid in rids:
        headers = {**basic(client_id, secret), "x-request-id": rid}
        response = post(env, tenant, "token", {"grant_type": "client_credentials"}, headers)
        assert response.status_code == 200, response.text

    def counted(rows: list[Row]) -> int:
        return sum(row["details"].get("count", 1) for row in rows if row["action"] == "token.grant")

    rows = [row for row in audit_rows(env, tenant, lambda rows: counted(rows) >= 6) if row["action"] == "token.grant"]
    assert counted(rows) == 6
    listed = [rid for row in rows for rid in row["details"].get("request_ids", [row["request_id"]])]
    assert sorted(listed) == sorted(rids)
    for row in rows:
        assert (row["actor_id"], row["target_id"], row["source_address"]) == (client_id, client_id, ADDRESS)
        assert row["request_id"] == row["details"].get("request_ids", [row["request_id"]])[0]
        assert {"grant_type": "client_credentials", "sub": client_id, "issued": ["access_token"]}.items() <= (
            row["details"].items()
        )


def test_audit_writer_fold_equal_successes_one_entry_other_addresses_apart(env: Env) -> None:
    from idhub import request_context
    from idhub.events import Actor, TokensIssued
    from idhub.request_context import RequestInfo

    tenant = env.tenant()
    event = TokensIssued(
        tenant_id=tenant.id, client_id="c1", grant_type="client_credentials", subject="c1", kinds=("access_token",)
    )
    actor = Actor("client", "c1")
    calls = [("r-0001-aaaa", "10.0.0.1"), ("r-0002-aaaa", "10.0.0.1"), ("r-0003-aaaa", "10.0.0.2")]

    async def work() -> None:
        writer = env.ctx.audit.writer
        await writer.flush()
        for request_id, address in calls:
            token = request_context.enter(RequestInfo(request_id, address))
            try:
                writer.defer([event], actor=actor, surface="oidc")
            finally:
                request_context.leave(token)
        await writer.flush()

    env.run(work)
    found = audit_rows(env, tenant, with_action("token.grant", count=2))
    rows = sorted((row for row in found if row["action"] == "token.grant"), key=lambda row: row["source_address"])
    assert [(row["source_address"], row["request_id"]) for row in rows] == [
        ("10.0.0.1", "r-0001-aaaa"),
        ("10.0.0.2", "r-0003-aaaa"),
    ]
    assert rows[0]["details"]["count"] == 2
    assert rows[0]["details"]["request_ids"] == ["r-0001-aaaa", "r-0002-aaaa"]
    assert "count" not in rows[1]["details"]


def test_audit_authorization_code_grant_success(env: Env) -> None:
    setup = code_setup(env, grant_types=["authorization_code", "refresh_token"])
    rid = _rid()
    response = post(
        env, setup.tenant, "token", setup.exchange_data(), {**basic(setup.client_id, setup.secret), "x-request-id": rid}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == rid
    # The code exchange has a transaction of its own: its entry is written in it, at once.
    row = only(audit_rows(env, setup.tenant, timeout=0), "token.grant")
    assert (row["actor_type"], row["actor_id"], row["target_id"]) == ("client", setup.client_id, setup.client_id)
    assert (row["outcome"], row["surface"], row["source_address"], row["request_id"]) == (
        "success",
        "oidc",
        ADDRESS,
        rid,
    )
    assert row["details"] == {
        "grant_type": "authorization_code",
        "sub": setup.user_id,
        "issued": ["access_token", "id_token", "refresh_token"],
    }


def test_audit_bad_client_secret_refusal(env: Env) -> None:
    tenant = env.tenant()
    client_id, _secret = cc_client(env, tenant)
    rid = _rid()
    headers = {**basic(client_id, "not-the-secret-" + uuid.uuid4().hex), "x-request-id": rid}
    response = post(env, tenant, "token", {"grant_type": "client_credentials"}, headers)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["x-request-id"] == rid
    rows = audit_rows(env, tenant, with_action("token.refuse"))
    row = only(rows, "token.refuse")
    assert not [r for r in rows if r["action"] == "token.grant"]
    # Nobody was authenticated: the entry names the client only as the target the caller claimed.
    assert row["actor_type"] == "anonymous"
    assert (row["target_type"], row["target_id"]) == ("Client", client_id)
    assert (row["outcome"], row["surface"], row["source_address"], row["request_id"]) == (
        "failure",
        "oidc",
        ADDRESS,
        rid,
    )
    assert row["details"]["endpoint"] == "token"
    assert row["details"]["error"] == "invalid_client"
    assert row["details"]["grant_type"] == "client_credentials"


def test_audit_invalid_code_refusal_scrubbed_description(env: Env) -> None:
    setup = code_setup(env)
    rid = _rid()
    bad = setup.exchange_data(code="no-such-code-" + uuid.uuid4().hex)
    response = post(env, setup.tenant, "token", bad, {**basic(setup.client_id, setup.secret), "x-request-id": rid})
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "the authorization code is invalid or expired",
    }
    row = only(audit_rows(env, setup.tenant, with_action("token.refuse")), "token.refuse")
    assert (row["actor_type"], row["actor_id"], row["target_id"]) == ("client", setup.client_id, setup.client_id)
    assert (row["outcome"], row["request_id"], row["source_address"]) == ("failure", rid, ADDRESS)
    assert row["details"]["error"] == "invalid_grant"
    assert row["details"]["grant_type"] == "authorization_code"
    assert row["details"].get("reason")  # what the client was not told, for operators


def test_audit_replayed_code_refusal_and_grant_revocation(env: Env) -> None:
    setup = code_setup(env)
    assert exchange_code(env, setup).status_code == 200
    replay = exchange_code(env, setup)
    assert replay.status_code == 400
    # The client learns only that the code is not valid, not that it was already used.
    assert replay.json()["error_description"] == "the authorization code is invalid or expired"
    assert "used" not in replay.text
    rows = audit_rows(
        env, setup.tenant, lambda rows: with_action("token.refuse")(rows) and with_action("grant.revoke")(rows)
    )
    refusal, revocation = only(rows, "token.refuse"), only(rows, "grant.revoke")
    assert refusal["outcome"] == "failure" and "replayed" in refusal["details"]["reason"]
    assert revocation["outcome"] == "success"
    assert revocation["details"] == {"reason": "authorization code replayed"}
    assert revocation["request_id"] == refusal["request_id"]


@pytest.mark.parametrize("sent", [None, "short", "has space in it", "x" * 65, "bad/slash/request-id"])
def test_audit_request_id_generated_when_missing_or_unusable(env: Env, sent: str | None) -> None:
    tenant = env.tenant()
    client_id, secret = cc_client(env, tenant)
    headers = basic(client_id, secret)
    if sent is not None:
        headers["x-request-id"] = sent
    response = post(env, tenant, "token", {"grant_type": "client_credentials"}, headers)
    assert response.status_code == 200
    echoed = response.headers["x-request-id"]
    assert echoed and echoed != sent
    assert only(audit_rows(env, tenant, with_action("token.grant")), "token.grant")["request_id"] == echoed


# --- sign-in -----------------------------------------------------------------------------------------
def _login(env: Env, tenant: TenantInfo, client_id: str, username: str, password: str, rid: str) -> httpx.Response:
    """Open the login page of a fresh authorization request and post the form with ``X-Request-ID``."""
    params = authorize_params(client_id=client_id, redirect_uri=REDIRECT_URI, code_challenge=pkce_pair()[1])
    start = env.client.get(f"/tenants/{tenant.slug}/authorize", params=params, follow_redirects=False)
    assert start.status_code == 303, start.text
    page = env.client.get(start.headers["location"], follow_redirects=False)
    form = parse_forms(page.text)[0]
    data = {**form.inputs, "username": username, "password": password}
    response: httpx.Response = env.client.post(
        form.action, data=data, headers={"x-request-id": rid}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    assert response.headers["x-request-id"] == rid
    return response


def _signin_setup(env: Env) -> tuple[TenantInfo, str, str]:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, redirect_uris=[REDIRECT_URI], first_party=True)
    return tenant, client_id, env.user(tenant, password=PASSWORD)


def _signins(rows: list[Row]) -> list[Row]:
    return [row for row in rows if row["action"] == "signin.password"]


def test_audit_signin_success(env: Env) -> None:
    tenant, client_id, user_id = _signin_setup(env)
    rid = _rid()
    response = _login(env, tenant, client_id, "alice", PASSWORD, rid)
    assert "code" in query_of(response.headers["location"])
    [row] = _signins(audit_rows(env, tenant, with_action("signin.password")))
    assert (row["actor_type"], row["actor_id"]) == ("user", user_id)
    assert (row["target_type"], row["target_id"]) == ("User", user_id)
    assert (row["outcome"], row["surface"], row["source_address"], row["request_id"]) == (
        "success",
        "web",
        ADDRESS,
        rid,
    )


def test_audit_signin_failures_wrong_password_and_unknown_account(env: Env) -> None:
    tenant, client_id, user_id = _signin_setup(env)
    first, second = _rid(), _rid()
    for username, rid in (("alice", first), ("nobody", second)):
        response = _login(env, tenant, client_id, username, "wrong password", rid)
        assert response.headers["location"].endswith("?error=login")
    rows = {
        row["request_id"]: row for row in _signins(audit_rows(env, tenant, with_action("signin.password", count=2)))
    }
    assert set(rows) == {first, second}
    wrong, unknown = rows[first], rows[second]
    assert (wrong["outcome"], wrong["target_id"], wrong["details"]) == ("failure", user_id, {"reason": "bad password"})
    assert (unknown["outcome"], unknown["target_id"], unknown["details"]) == (
        "failure",
        "",
        {"reason": "unknown account"},
    )
    assert {(r["actor_type"], r["surface"], r["source_address"]) for r in rows.values()} == {
        ("anonymous", "web", ADDRESS)
    }


def test_audit_signin_lockout(env: Env) -> None:
    original = env.ctx.throttle
    env.ctx.throttle = Throttle(ThrottleSettings(max_failures_per_account=2, max_failures_per_address=1000))
    try:
        tenant, client_id, user_id = _signin_setup(env)
        for _ in range(2):
            _login(env, tenant, client_id, "alice", "wrong password", _rid())
        rid = _rid()
        response = _login(env, tenant, client_id, "alice", PASSWORD, rid)  # right password, but locked out
        assert response.headers["location"].endswith("?error=login")
    finally:
        env.ctx.throttle = original
    rows = _signins(audit_rows(env, tenant, with_action("signin.password", count=3)))
    assert [row["outcome"] for row in rows] == ["failure", "failure", "blocked"]
    blocked = rows[-1]
    assert (blocked["target_id"], blocked["request_id"], blocked["details"]) == (user_id, rid, {"reason": "throttled"})
    assert (blocked["actor_type"], blocked["surface"], blocked["source_address"]) == ("anonymous", "web", ADDRESS)


# --- SCIM --------------------------------------------------------------------------------------------
def test_audit_scim_mutation(env: Env) -> None:
    tenant = env.tenant()
    scim = Scim(env=env, tenant=tenant, token=provisioning_token(env, tenant))
    token_row = only(audit_rows(env, tenant, timeout=0), "provisioning_token.create")
    rid = _rid()
    response = scim.request("POST", "/Users", {"schemas": [USER_URN], "userName": "kim"}, headers={"x-request-id": rid})
    assert response.status_code == 201, response.text
    assert response.headers["x-request-id"] == rid
    user_id = response.json()["id"]
    row = only(audit_rows(env, tenant, timeout=0), "user.create")
    assert (row["actor_type"], row["actor_id"]) == ("provisioning_token", token_row["target_id"])
    assert (row["target_type"], row["target_id"]) == ("User", user_id)
    assert (row["outcome"], row["surface"], row["source_address"], row["request_id"]) == (
        "success",
        "scim",
        ADDRESS,
        rid,
    )
    assert row["details"] == {"userName": "kim"}


def test_audit_scim_refused_change_leaves_no_success_entry(env: Env) -> None:
    tenant = env.tenant()
    scim = Scim(env=env, tenant=tenant, token=provisioning_token(env, tenant))
    scim.create_user("lee")
    duplicate = scim.request("POST", "/Users", {"schemas": [USER_URN], "userName": "LEE"})
    assert duplicate.status_code == 409
    assert len([row for row in audit_rows(env, tenant, timeout=0) if row["action"] == "user.create"]) == 1


# --- no secrets, ever ----------------------------------------------------------------------------------
def test_audit_never_records_secrets(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    secrets: list[str] = []
    setup = code_setup(env, grant_types=["authorization_code", "refresh_token"], first_party=True)
    tenant = setup.tenant
    secrets += [setup.secret, setup.code, setup.verifier]
    body = exchange_code(env, setup).json()
    secrets += [body["access_token"], body["id_token"], body["refresh_token"]]
    wrong_secret = "wrong-" + uuid.uuid4().hex
    secrets.append(wrong_secret)
    post(
        env,
        tenant,
        "token",
        {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        basic(setup.client_id, wrong_secret),
    )
    refreshed = post(
        env,
        tenant,
        "token",
        {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        basic(setup.client_id, setup.secret),
    )
    assert refreshed.status_code == 200, refreshed.text
    secrets += [refreshed.json()["access_token"], refreshed.json()["refresh_token"]]
    exchange_code(env, setup)  # replayed code: the grant is revoked
    client_id, secret = cc_client(env, tenant)
    secrets.append(secret)
    cc = post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, secret))
    secrets.append(cc.json()["access_token"])
    post(
        env,
        tenant,
        "token",
        {"grant_type": "client_credentials", "client_id": client_id, "client_secret": wrong_secret + "2"},
    )
    secrets.append(wrong_secret + "2")

    login_client, _ = env.oauth_client(tenant, redirect_uris=[REDIRECT_URI], first_party=True)
    password = "pw-" + uuid.uuid4().hex
    env.user(tenant, username="mo", password=password)
    wrong_password = "bad-pw-" + uuid.uuid4().hex
    secrets += [password, wrong_password]
    _login(env, tenant, login_client, "mo", wrong_password, _rid())
    _login(env, tenant, login_client, "mo", password, _rid())

    token = provisioning_token(env, tenant)
    secrets.append(token)
    scim_password = "scim-pw-" + uuid.uuid4().hex
    secrets.append(scim_password)
    scim = Scim(env=env, tenant=tenant, token=token)
    scim.create_user("nia", password=scim_password)
    scim.request("GET", "/Users", headers={"authorization": f"Bearer {token}x"})

    actions = {
        "token.grant",
        "token.refuse",
        "grant.revoke",
        "signin.password",
        "user.create",
        "provisioning_token.create",
    }
    rows = audit_rows(env, tenant, lambda rows: actions <= {row["action"] for row in rows})
    assert actions <= {row["action"] for row in rows}
    hashes = [env.ctx.secret_hasher.hash(value) for value in secrets]
    for row in rows:
        text = json.dumps(row, default=str)
        for value in [*secrets, *hashes]:
            assert value not in text, f"a secret is in the audit entry {row['action']}: {text}"
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("idhub"))
    for value in secrets:
        assert value not in logged
