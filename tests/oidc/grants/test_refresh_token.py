"""The refresh token grant with rotation and reuse detection (RFC 6749 §6, RFC 9700 §4.14.2)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Env
from tests.oidc.grants.helpers import REDIRECT_URI, CodeSetup, basic, code_setup, exchange_code, introspect, post


def _refresh(env: Env, setup: CodeSetup, token: str, **extra: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    return post(env, setup.tenant, "token", data, basic(setup.client_id, setup.secret))


def _tokens(env: Env) -> tuple[CodeSetup, dict[str, Any]]:
    setup = code_setup(env)
    body = exchange_code(env, setup).json()
    return setup, body


def test_refresh_token_rotation_issues_new_tokens(env: Env) -> None:
    setup, first = _tokens(env)
    response = _refresh(env, setup, first["refresh_token"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["scope"] == "openid profile email" and body["id_token"]
    assert response.headers["cache-control"] == "no-store"
    assert _refresh(env, setup, body["refresh_token"]).status_code == 200


def test_refresh_token_rotated_token_reuse_revokes_family(env: Env) -> None:
    setup, first = _tokens(env)
    second = _refresh(env, setup, first["refresh_token"]).json()
    reuse = _refresh(env, setup, first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # The whole family is gone: the newest refresh token and every access token of the grant.
    assert _refresh(env, setup, second["refresh_token"]).json()["error"] == "invalid_grant"
    for access in (first["access_token"], second["access_token"]):
        assert introspect(env, setup.tenant, access, setup.client_id, setup.secret) == {"active": False}


def test_refresh_token_another_clients_token_invalid_grant(env: Env) -> None:
    setup, first = _tokens(env)
    other_id, other_secret = env.oauth_client(setup.tenant, redirect_uris=[REDIRECT_URI])
    data = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    response = post(env, setup.tenant, "token", data, basic(other_id, other_secret or ""))
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    # Not consumed: the owner still refreshes.
    assert _refresh(env, setup, first["refresh_token"]).status_code == 200


def test_refresh_token_scope_may_only_narrow(env: Env) -> None:
    setup, first = _tokens(env)
    wider = _refresh(env, setup, first["refresh_token"], scope="openid admin")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    narrower = _refresh(env, setup, first["refresh_token"], scope="openid")
    assert narrower.status_code == 200 and narrower.json()["scope"] == "openid"
    # The rotated token keeps the original scope.
    again = _refresh(env, setup, narrower.json()["refresh_token"])
    assert again.json()["scope"] == "openid profile email"


def test_refresh_token_unknown_token_invalid_grant(env: Env) -> None:
    setup, _ = _tokens(env)
    response = _refresh(env, setup, "not-a-token")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_refresh_token_disabled_user_invalid_grant(env: Env) -> None:
    setup, first = _tokens(env)

    env.disable_user(setup.tenant, setup.user_id)
    assert _refresh(env, setup, first["refresh_token"]).json()["error"] == "invalid_grant"


def test_refresh_token_expired_token_invalid_grant(env: Env) -> None:
    from sqlalchemy import update

    from idhub.storage.base import utcnow
    from idhub.storage.models import RefreshToken

    setup, first = _tokens(env)

    async def expire() -> None:
        async with env.ctx.sessionmaker() as session:
            await session.execute(
                update(RefreshToken).where(RefreshToken.tenant_id == setup.tenant.id).values(expires_at=utcnow())
            )
            await session.commit()

    env.run(expire)
    assert _refresh(env, setup, first["refresh_token"]).json()["error"] == "invalid_grant"
