"""Token revocation (RFC 7009)."""

from __future__ import annotations

from tests.conftest import Env
from tests.oidc.grants.helpers import REDIRECT_URI, basic, code_setup, exchange_code, introspect, post


def test_revocation_refresh_token_revokes_grant_family(env: Env) -> None:
    setup = code_setup(env)
    tokens = exchange_code(env, setup).json()
    response = post(
        env,
        setup.tenant,
        "revoke",
        {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        basic(setup.client_id, setup.secret),
    )
    assert response.status_code == 200 and response.content == b""
    assert introspect(env, setup.tenant, tokens["access_token"], setup.client_id, setup.secret) == {"active": False}
    refresh = post(
        env,
        setup.tenant,
        "token",
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        basic(setup.client_id, setup.secret),
    )
    assert refresh.json()["error"] == "invalid_grant"


def test_revocation_access_token_only_that_token(env: Env) -> None:
    setup = code_setup(env)
    tokens = exchange_code(env, setup).json()
    assert (
        post(
            env, setup.tenant, "revoke", {"token": tokens["access_token"]}, basic(setup.client_id, setup.secret)
        ).status_code
        == 200
    )
    assert introspect(env, setup.tenant, tokens["access_token"], setup.client_id, setup.secret) == {"active": False}
    # The refresh token still works.
    refresh = post(
        env,
        setup.tenant,
        "token",
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        basic(setup.client_id, setup.secret),
    )
    assert refresh.status_code == 200


def test_revocation_other_clients_token_ignored(env: Env) -> None:
    setup = code_setup(env)
    tokens = exchange_code(env, setup).json()
    other_id, other_secret = env.oauth_client(setup.tenant, scope="api")
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert (
            post(env, setup.tenant, "revoke", {"token": token}, basic(other_id, other_secret or "")).status_code == 200
        )
    assert introspect(env, setup.tenant, tokens["access_token"], setup.client_id, setup.secret)["active"] is True
    assert introspect(env, setup.tenant, tokens["refresh_token"], setup.client_id, setup.secret)["active"] is True


def test_revocation_unknown_token_ok(env: Env) -> None:
    setup = code_setup(env)
    for token in ("unknown", "a.b.c"):
        assert (
            post(env, setup.tenant, "revoke", {"token": token}, basic(setup.client_id, setup.secret)).status_code == 200
        )


def test_revocation_public_client_revokes_own_refresh_token(env: Env) -> None:
    from tests.flows import pkce_pair
    from tests.oidc.grants.helpers import make_code

    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, redirect_uris=[REDIRECT_URI], public=True)
    user_id = env.user(tenant, password=None)
    verifier, challenge = pkce_pair()
    code = make_code(env, tenant, client_id, user_id, challenge=challenge)
    tokens = post(
        env,
        tenant,
        "token",
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "client_id": client_id,
        },
    ).json()
    assert post(env, tenant, "revoke", {"token": tokens["refresh_token"], "client_id": client_id}).status_code == 200
    refresh = post(
        env,
        tenant,
        "token",
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id},
    )
    assert refresh.json()["error"] == "invalid_grant"


def test_revocation_unauthenticated_invalid_client(env: Env) -> None:
    setup = code_setup(env)
    response = post(env, setup.tenant, "revoke", {"token": "x"}, basic(setup.client_id, "wrong"))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
