"""The token endpoint's request handling (RFC 6749 §3.2, §5.2)."""

from __future__ import annotations

from tests.conftest import Env
from tests.oidc.grants.helpers import basic, post, url


def test_token_endpoint_unsupported_grant_unsupported_grant_type(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    for grant in ("password", "implicit", "urn:ietf:params:oauth:grant-type:device_code"):
        response = post(env, tenant, "token", {"grant_type": grant}, basic(client_id, secret or ""))
        assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"


def test_token_endpoint_duplicated_parameter_invalid_request(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api read")
    body = "grant_type=client_credentials&scope=api&scope=read"
    response = post(env, tenant, "token", body, basic(client_id, secret or ""))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    body = "grant_type=client_credentials&grant_type=client_credentials"
    assert post(env, tenant, "token", body, basic(client_id, secret or "")).json()["error"] == "invalid_request"


def test_token_endpoint_missing_grant_type_invalid_request(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    response = post(env, tenant, "token", {"scope": "api"}, basic(client_id, secret or ""))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert response.headers["cache-control"] == "no-store"


def test_token_endpoint_malformed_bodies_never_server_error(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    for body in (b"\xff\xfe", b"grant_type=client_credentials&scope=%00", b"a=" + b"x" * 70000, b"&" * 500):
        response = env.client.post(
            url(tenant, "token"),
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded", **basic(client_id, secret or "")},
        )
        # An oversized body is 413 (tests/test_body_limits.py), the other malformed ones 400.
        assert response.status_code == (413 if len(body) > 65536 else 400), (body[:20], response.text)
        assert response.json()["error"] == "invalid_request"


def test_token_endpoint_unknown_tenant_not_found(env: Env) -> None:
    response = post(env, env.tenant(), "token", {"grant_type": "client_credentials"})
    assert response.status_code == 401
    response = env.client.post(
        "/tenants/no-such-tenant/token",
        content="grant_type=client_credentials",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 404


def test_token_endpoint_metrics_label_route(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, secret or ""))
    text = env.client.get("/metrics").text
    assert 'route="/tenants/{tenant}/token"' in text
