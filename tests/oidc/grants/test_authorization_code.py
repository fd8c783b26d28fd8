"""The authorization code grant (RFC 6749 §4.1.3, RFC 7636 §4.6)."""

from __future__ import annotations

from idhub.crypto import jwt
from idhub.tokens.service import left_half_hash
from tests.conftest import Env
from tests.flows import pkce_pair
from tests.oidc.grants.helpers import (
    REDIRECT_URI,
    basic,
    code_setup,
    exchange_code,
    introspect,
    make_code,
    post,
)


def _claims(env: Env, tenant_id: object, token: str, typ: str) -> dict[str, object]:
    async def work() -> dict[str, object]:
        keys = await env.ctx.keys.get(tenant_id)  # type: ignore[arg-type]
        return jwt.verify(token, keys.verify_set, typ=typ)

    claims: dict[str, object] = env.run(work)
    return claims


def test_authorization_code_valid_exchange_issues_all_tokens(env: Env) -> None:
    setup = code_setup(env)
    response = exchange_code(env, setup)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "openid profile email"
    assert body["refresh_token"]
    access = _claims(env, setup.tenant.id, body["access_token"], "at+jwt")
    assert access["sub"] == setup.user_id and access["client_id"] == setup.client_id
    assert access["aud"] == setup.client_id and "auth_time" in access and access["sid"] == "sid-1"
    id_token = _claims(env, setup.tenant.id, body["id_token"], "JWT")
    assert id_token["aud"] == setup.client_id and id_token["nonce"] == "n-1"
    assert id_token["at_hash"] == left_half_hash(body["access_token"])
    assert id_token["amr"] == ["pwd"] and id_token["sid"] == "sid-1"
    assert id_token["email"] == "alice@example.com" and id_token["name"] == "Alice Liddell"
    assert id_token["preferred_username"] == "alice"


def test_authorization_code_reused_code_invalid_grant_and_revokes_issued(env: Env) -> None:
    setup = code_setup(env)
    first = exchange_code(env, setup).json()
    assert introspect(env, setup.tenant, first["access_token"], setup.client_id, setup.secret)["active"] is True
    replay = exchange_code(env, setup)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # Everything the code yielded is dead at once.
    assert introspect(env, setup.tenant, first["access_token"], setup.client_id, setup.secret) == {"active": False}
    refresh = post(
        env,
        setup.tenant,
        "token",
        {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        basic(setup.client_id, setup.secret),
    )
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"


def test_authorization_code_wrong_verifier_invalid_grant(env: Env) -> None:
    setup = code_setup(env)
    other_verifier, _ = pkce_pair()
    response = exchange_code(env, setup, code_verifier=other_verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_authorization_code_missing_or_short_verifier_invalid_request(env: Env) -> None:
    setup = code_setup(env)
    data = setup.exchange_data()
    del data["code_verifier"]
    response = post(env, setup.tenant, "token", data, basic(setup.client_id, setup.secret))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    response = exchange_code(env, setup, code_verifier="short")
    assert response.json()["error"] == "invalid_request"
    # The code was not consumed by malformed requests.
    assert exchange_code(env, setup).status_code == 200


def test_authorization_code_wrong_redirect_uri_invalid_grant(env: Env) -> None:
    setup = code_setup(env)
    response = exchange_code(env, setup, redirect_uri="https://rp.example/other")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_authorization_code_another_clients_code_invalid_grant(env: Env) -> None:
    setup = code_setup(env)
    other_id, other_secret = env.oauth_client(setup.tenant, redirect_uris=[REDIRECT_URI])
    data = setup.exchange_data()
    response = post(env, setup.tenant, "token", data, basic(other_id, other_secret or ""))
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    # The owner can still use its code.
    assert exchange_code(env, setup).status_code == 200


def test_authorization_code_expired_code_invalid_grant(env: Env) -> None:
    setup = code_setup(env)
    verifier, challenge = pkce_pair()
    code = make_code(env, setup.tenant, setup.client_id, setup.user_id, challenge=challenge, ttl=-1)
    response = exchange_code(env, setup, code=code, code_verifier=verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_authorization_code_disabled_user_invalid_grant(env: Env) -> None:

    setup = code_setup(env)

    env.disable_user(setup.tenant, setup.user_id)
    response = exchange_code(env, setup)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_authorization_code_resource_indicator_sets_audience(env: Env) -> None:
    setup = code_setup(env, resources=["https://api.example", "https://other.example"])
    verifier, challenge = pkce_pair()
    code = make_code(
        env, setup.tenant, setup.client_id, setup.user_id, challenge=challenge, resources=["https://api.example"]
    )
    response = exchange_code(env, setup, code=code, code_verifier=verifier, resource="https://other.example")
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"
    response = exchange_code(env, setup, code=code, code_verifier=verifier, resource="https://api.example")
    assert response.status_code == 200, response.text
    assert _claims(env, setup.tenant.id, response.json()["access_token"], "at+jwt")["aud"] == "https://api.example"


def test_authorization_code_without_openid_no_id_token(env: Env) -> None:
    setup = code_setup(env, scope="profile")
    body = exchange_code(env, setup).json()
    assert "id_token" not in body and body["scope"] == "profile"


def test_authorization_code_public_client_with_pkce_gets_tokens(env: Env) -> None:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, redirect_uris=[REDIRECT_URI], public=True)
    user_id = env.user(tenant, password=None)
    verifier, challenge = pkce_pair()
    code = make_code(env, tenant, client_id, user_id, challenge=challenge)
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
        "client_id": client_id,
    }
    response = post(env, tenant, "token", data)
    assert response.status_code == 200, response.text
    assert response.json()["refresh_token"]
