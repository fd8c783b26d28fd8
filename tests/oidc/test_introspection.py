"""Token introspection (RFC 7662)."""

from __future__ import annotations

from tests.conftest import Env
from tests.oidc.grants.helpers import REDIRECT_URI, basic, code_setup, exchange_code, introspect, post


def test_introspection_live_access_token_active_with_claims(env: Env) -> None:
    setup = code_setup(env)
    tokens = exchange_code(env, setup).json()
    result = introspect(env, setup.tenant, tokens["access_token"], setup.client_id, setup.secret)
    assert result["active"] is True
    assert result["client_id"] == setup.client_id and result["sub"] == setup.user_id
    assert result["scope"] == "openid profile email" and result["iss"] == setup.tenant.issuer
    assert result["token_type"] == "Bearer" and {"exp", "iat", "jti", "aud"} <= set(result)


def test_introspection_refresh_token_active_for_owner_only(env: Env) -> None:
    setup = code_setup(env)
    tokens = exchange_code(env, setup).json()
    result = introspect(env, setup.tenant, tokens["refresh_token"], setup.client_id, setup.secret)
    assert result["active"] is True and result["token_type"] == "refresh_token"
    assert result["username"] == "alice" and result["sub"] == setup.user_id
    other_id, other_secret = env.oauth_client(setup.tenant, scope="api")
    assert introspect(env, setup.tenant, tokens["refresh_token"], other_id, other_secret or "") == {"active": False}
    assert introspect(env, setup.tenant, tokens["access_token"], other_id, other_secret or "") == {"active": False}


def test_introspection_unknown_token_inactive(env: Env) -> None:
    setup = code_setup(env)
    for token in ("nope", "a.b.c", "x" * 20000):
        assert introspect(env, setup.tenant, token, setup.client_id, setup.secret) == {"active": False}


def test_introspection_revoked_access_token_inactive_at_once(env: Env) -> None:
    setup = code_setup(env)
    tokens = exchange_code(env, setup).json()
    response = post(
        env, setup.tenant, "revoke", {"token": tokens["access_token"]}, basic(setup.client_id, setup.secret)
    )
    assert response.status_code == 200
    assert introspect(env, setup.tenant, tokens["access_token"], setup.client_id, setup.secret) == {"active": False}


def test_introspection_disabled_user_inactive_at_once(env: Env) -> None:
    setup = code_setup(env)
    tokens = exchange_code(env, setup).json()

    env.disable_user(setup.tenant, setup.user_id)
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert introspect(env, setup.tenant, token, setup.client_id, setup.secret) == {"active": False}


def test_introspection_public_client_invalid_client(env: Env) -> None:
    setup = code_setup(env)
    tokens = exchange_code(env, setup).json()
    public_id, _ = env.oauth_client(setup.tenant, redirect_uris=[REDIRECT_URI], public=True)
    response = post(env, setup.tenant, "introspect", {"token": tokens["access_token"], "client_id": public_id})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    response = post(env, setup.tenant, "introspect", {"token": tokens["access_token"]})
    assert response.status_code == 401


def test_introspection_missing_token_invalid_request(env: Env) -> None:
    setup = code_setup(env)
    response = post(
        env, setup.tenant, "introspect", {"token_type_hint": "access_token"}, basic(setup.client_id, setup.secret)
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
