"""Discovery and JWKS."""

from tests.conftest import Env


def test_discovery_tenant_issuer_and_endpoints_under_issuer(env: Env) -> None:
    tenant = env.tenant()
    response = env.client.get(f"/tenants/{tenant.slug}/.well-known/openid-configuration")
    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == tenant.issuer
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        assert meta[name].startswith(tenant.issuer + "/")
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert "max-age" in response.headers["cache-control"]
    rfc8414 = env.client.get(f"/tenants/{tenant.slug}/.well-known/oauth-authorization-server").json()
    assert rfc8414 == meta


def test_jwks_new_tenant_publishes_active_and_next_keys(env: Env) -> None:
    tenant = env.tenant()
    keys = env.client.get(f"/tenants/{tenant.slug}/jwks").json()["keys"]
    assert sorted(k["alg"] for k in keys) == ["ES256", "ES256", "RS256", "RS256"]
    assert all("d" not in k and "p" not in k for k in keys)


def test_jwks_other_tenant_has_other_keys(env: Env) -> None:
    a, b = env.tenant(), env.tenant()
    keys_a = {k["kid"] for k in env.client.get(f"/tenants/{a.slug}/jwks").json()["keys"]}
    keys_b = {k["kid"] for k in env.client.get(f"/tenants/{b.slug}/jwks").json()["keys"]}
    assert not keys_a & keys_b


def test_discovery_unknown_tenant_404(env: Env) -> None:
    assert env.client.get("/tenants/nope-nope/.well-known/openid-configuration").status_code == 404
