"""The client credentials grant (RFC 6749 §4.4)."""

from __future__ import annotations

from idhub.crypto import jwt
from tests.conftest import Env
from tests.oidc.grants.helpers import basic, post


def _jwt_claims(env: Env, tenant_id: object, token: str) -> dict[str, object]:
    async def work() -> dict[str, object]:
        keys = await env.ctx.keys.get(tenant_id)  # type: ignore[arg-type]
        return jwt.verify(token, keys.verify_set, typ="at+jwt")

    claims: dict[str, object] = env.run(work)
    return claims


def test_client_credentials_valid_client_issues_access_token(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api read", resources=["https://api.example"])
    response = post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, secret or ""))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == env.ctx.settings.tokens.access_token_ttl
    assert body["scope"] == "api read"
    assert "refresh_token" not in body and "id_token" not in body
    claims = _jwt_claims(env, tenant.id, body["access_token"])
    assert claims["sub"] == client_id and claims["client_id"] == client_id
    assert claims["aud"] == "https://api.example"
    assert claims["iss"] == tenant.issuer


def test_client_credentials_requested_scope_narrows(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api read write")
    response = post(
        env, tenant, "token", {"grant_type": "client_credentials", "scope": "read"}, basic(client_id, secret or "")
    )
    assert response.status_code == 200
    assert response.json()["scope"] == "read"
    claims = _jwt_claims(env, tenant.id, response.json()["access_token"])
    assert claims["aud"] == client_id


def test_client_credentials_nothing_allowed_invalid_scope(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    for scope in ("admin", "openid admin"):
        response = post(
            env, tenant, "token", {"grant_type": "client_credentials", "scope": scope}, basic(client_id, secret or "")
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_scope"


def test_client_credentials_scope_beyond_allowed_intersected(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    data = {"grant_type": "client_credentials", "scope": "api admin openid"}
    response = post(env, tenant, "token", data, basic(client_id, secret or ""))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "api"


def test_client_credentials_unregistered_resource_invalid_target(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api", resources=["https://api.example"])
    data = {"grant_type": "client_credentials", "resource": "https://evil.example"}
    response = post(env, tenant, "token", data, basic(client_id, secret or ""))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


def test_client_credentials_client_without_grant_unauthorized_client(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, redirect_uris=["https://rp.example/cb"])
    response = post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, secret or ""))
    assert response.status_code == 400
    assert response.json()["error"] == "unauthorized_client"


def test_client_credentials_counts_issued_tokens(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    before = env.ctx.metrics.issued("client_credentials", "access_token")
    post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, secret or ""))
    assert env.ctx.metrics.issued("client_credentials", "access_token") == before + 1
    exposition = env.client.get("/metrics").text
    assert 'idhub_tokens_issued_total{grant_type="client_credentials",kind="access_token"}' in exposition


def test_client_credentials_tenant_rs256_setting_signs_rs256_unless_client_overrides(env: Env) -> None:
    from idhub.tenants.service import update_tenant

    tenant = env.tenant()

    async def switch() -> None:
        async with env.uow() as uow:  # the commit drops this process's cached tenant (TenantChanged)
            await update_tenant(uow, slug=tenant.slug, access_token_alg="RS256")

    env.run(switch)
    plain_id, plain_secret = env.oauth_client(tenant, scope="api")
    es_id, es_secret = env.oauth_client(tenant, scope="api", access_token_alg="ES256")
    for client_id, secret, alg in ((plain_id, plain_secret, "RS256"), (es_id, es_secret, "ES256")):
        response = post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, secret or ""))
        assert response.status_code == 200, response.text
        assert jwt.peek_header(response.json()["access_token"])["alg"] == alg
