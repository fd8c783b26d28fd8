"""UserInfo (OIDC Core §5.3) with bearer tokens in the header only (RFC 6750 §2.1)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey

from tests.conftest import Env
from tests.flows import pkce_pair
from tests.oidc.grants.helpers import REDIRECT_URI, basic, code_setup, exchange_code, make_code, post, url


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _assert_invalid_token(response: object) -> None:
    assert response.status_code == 401, response.text  # type: ignore[attr-defined]
    assert response.json()["error"] == "invalid_token"  # type: ignore[attr-defined]
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'  # type: ignore[attr-defined]


def test_userinfo_valid_token_returns_claims_by_scope(env: Env) -> None:
    setup = code_setup(env)
    token = exchange_code(env, setup).json()["access_token"]
    for response in (
        env.client.get(url(setup.tenant, "userinfo"), headers=_bearer(token)),
        env.client.post(url(setup.tenant, "userinfo"), headers=_bearer(token)),
    ):
        assert response.status_code == 200, response.text
        claims = response.json()
        assert claims["sub"] == setup.user_id
        assert claims["email"] == "alice@example.com" and claims["email_verified"] is False
        assert claims["name"] == "Alice Liddell" and claims["preferred_username"] == "alice"
        assert isinstance(claims["updated_at"], int)


def test_userinfo_scope_limits_claims(env: Env) -> None:
    setup = code_setup(env, scope="openid")
    token = exchange_code(env, setup).json()["access_token"]
    claims = env.client.get(url(setup.tenant, "userinfo"), headers=_bearer(token)).json()
    assert claims == {"sub": setup.user_id}


def test_userinfo_without_openid_scope_insufficient_scope(env: Env) -> None:
    setup = code_setup(env, scope="profile")
    token = exchange_code(env, setup).json()["access_token"]
    response = env.client.get(url(setup.tenant, "userinfo"), headers=_bearer(token))
    assert response.status_code == 403 and response.json()["error"] == "insufficient_scope"


def test_userinfo_token_in_query_or_body_invalid_request(env: Env) -> None:
    setup = code_setup(env)
    token = exchange_code(env, setup).json()["access_token"]
    response = env.client.get(url(setup.tenant, "userinfo"), params={"access_token": token})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    response = post(env, setup.tenant, "userinfo", {"access_token": token})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_userinfo_missing_or_malformed_header_invalid_token(env: Env) -> None:
    tenant = env.tenant()
    bare = env.client.get(url(tenant, "userinfo"))
    assert bare.status_code == 401 and bare.content == b""  # RFC 6750 §3.1: no error code without a token
    assert bare.headers["www-authenticate"] == 'Bearer realm="idhub"'
    _assert_invalid_token(env.client.get(url(tenant, "userinfo"), headers={"authorization": "Basic abc"}))
    _assert_invalid_token(env.client.get(url(tenant, "userinfo"), headers=_bearer("not.a.jwt")))


def test_userinfo_alg_none_token_invalid_token(env: Env) -> None:
    setup = code_setup(env)
    token = exchange_code(env, setup).json()["access_token"]
    payload = token.split(".")[1]
    unsigned = f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{payload}."
    _assert_invalid_token(env.client.get(url(setup.tenant, "userinfo"), headers=_bearer(unsigned)))


def test_userinfo_resigned_token_invalid_token(env: Env) -> None:
    setup = code_setup(env)
    token = exchange_code(env, setup).json()["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    forged = jose_jwt.encode(header, claims, ECKey.generate_key("P-256", private=True))
    _assert_invalid_token(env.client.get(url(setup.tenant, "userinfo"), headers=_bearer(forged)))


def test_userinfo_expired_or_foreign_token_invalid_token(env: Env) -> None:
    setup = code_setup(env)
    other = env.tenant()
    token = exchange_code(env, setup).json()["access_token"]
    _assert_invalid_token(env.client.get(url(other, "userinfo"), headers=_bearer(token)))

    async def expired() -> str:
        client = await env.ctx.clients.get(setup.tenant.id, setup.client_id)
        assert client is not None
        token, _ = await env.ctx.tokens.issue_access_token(
            tenant=setup.tenant,
            client=client,
            subject=setup.user_id,
            scope="openid",
            audience=setup.client_id,
            now=int(time.time()) - 3600,
        )
        return token

    _assert_invalid_token(env.client.get(url(setup.tenant, "userinfo"), headers=_bearer(env.run(expired))))


def test_userinfo_disabled_user_invalid_token(env: Env) -> None:
    setup = code_setup(env)
    token = exchange_code(env, setup).json()["access_token"]

    env.disable_user(setup.tenant, setup.user_id)
    _assert_invalid_token(env.client.get(url(setup.tenant, "userinfo"), headers=_bearer(token)))


def test_userinfo_client_credentials_token_refused(env: Env) -> None:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, scope="api")
    token = post(env, tenant, "token", {"grant_type": "client_credentials"}, basic(client_id, secret or "")).json()[
        "access_token"
    ]
    response = env.client.get(url(tenant, "userinfo"), headers=_bearer(token))
    assert response.status_code == 403 and response.json()["error"] == "insufficient_scope"


def _code_token(env: Env, *, client_resources: list[str], code_resources: list[str]) -> tuple[Any, str]:
    """Return a tenant and an access token from a code bound to ``code_resources`` (RFC 8707)."""
    tenant = env.tenant()
    client_id, secret = env.oauth_client(tenant, redirect_uris=[REDIRECT_URI], resources=client_resources)
    user_id = env.user(tenant, email="alice@example.com", password=None)
    verifier, challenge = pkce_pair()
    code = make_code(env, tenant, client_id, user_id, challenge=challenge, resources=code_resources)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
    response = post(env, tenant, "token", data, basic(client_id, secret or ""))
    assert response.status_code == 200, response.text
    return tenant, response.json()["access_token"]


def test_userinfo_token_narrowed_to_other_resource_invalid_token(env: Env) -> None:
    tenant, token = _code_token(env, client_resources=["https://api.example"], code_resources=["https://api.example"])
    # RFC 9068 §4: the token is for https://api.example, not for the UserInfo endpoint.
    _assert_invalid_token(env.client.get(url(tenant, "userinfo"), headers=_bearer(token)))
    _assert_invalid_token(env.client.post(url(tenant, "userinfo"), headers=_bearer(token)))


def test_userinfo_token_issued_for_other_audience_invalid_token(env: Env) -> None:
    setup = code_setup(env)

    async def issue(audience: str | list[str]) -> str:
        client = await env.ctx.clients.get(setup.tenant.id, setup.client_id)
        assert client is not None
        token, _ = await env.ctx.tokens.issue_access_token(
            tenant=setup.tenant, client=client, subject=setup.user_id, scope="openid", audience=audience
        )
        return token

    for audience in ("https://api.example", ["https://api.example", "https://other.example"], setup.tenant.issuer):
        token = env.run(issue, audience)
        _assert_invalid_token(env.client.get(url(setup.tenant, "userinfo"), headers=_bearer(token)))
    ok = env.run(issue, ["https://api.example", f"{setup.tenant.issuer}/userinfo"])
    assert env.client.get(url(setup.tenant, "userinfo"), headers=_bearer(ok)).status_code == 200


def test_userinfo_token_with_userinfo_among_resources_accepted(env: Env) -> None:
    tenant = env.tenant()
    userinfo_resource = f"{tenant.issuer}/userinfo"
    client_id, secret = env.oauth_client(
        tenant, redirect_uris=[REDIRECT_URI], resources=["https://api.example", userinfo_resource]
    )
    user_id = env.user(tenant, email="alice@example.com", password=None)
    verifier, challenge = pkce_pair()
    code = make_code(
        env, tenant, client_id, user_id, challenge=challenge, resources=["https://api.example", userinfo_resource]
    )
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
    token = post(env, tenant, "token", data, basic(client_id, secret or "")).json()["access_token"]
    response = env.client.get(url(tenant, "userinfo"), headers=_bearer(token))
    assert response.status_code == 200 and response.json()["sub"] == user_id


def test_userinfo_refreshed_token_without_resource_accepted(env: Env) -> None:
    setup = code_setup(env, scope="openid offline_access")
    tokens = exchange_code(env, setup).json()
    refreshed = post(
        env,
        setup.tenant,
        "token",
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        basic(setup.client_id, setup.secret),
    )
    assert refreshed.status_code == 200, refreshed.text
    response = env.client.get(url(setup.tenant, "userinfo"), headers=_bearer(refreshed.json()["access_token"]))
    assert response.status_code == 200 and response.json()["sub"] == setup.user_id
