"""RP-initiated logout: exact post_logout_redirect_uri, id_token_hint, confirmation with CSRF."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import select

from idhub.crypto import jwt
from idhub.storage.models import UserSession
from tests.conftest import Env
from tests.flows import login_and_get_code, parse_forms, pkce_pair, query_of, submit_first_form

REDIRECT = "https://app.example/cb"
AFTER_LOGOUT = "https://app.example/bye"
PASSWORD = "correct horse"


def signed_in(env: Env) -> tuple[Any, str, str]:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(
        tenant, redirect_uris=[REDIRECT], post_logout_redirect_uris=[AFTER_LOGOUT], first_party=True
    )
    user_id = env.user(tenant, password=PASSWORD)
    result = login_and_get_code(
        env.client, tenant_slug=tenant.slug, client_id=client_id, redirect_uri=REDIRECT, username="alice",
        password=PASSWORD, code_challenge=pkce_pair()[1],
    )  # fmt: skip
    assert result["code"]
    return tenant, client_id, user_id


def id_token(env: Env, tenant: Any, client_id: str, subject: str, *, expired: bool = False) -> str:
    async def work() -> str:
        key = (await env.ctx.keys.get(tenant.id)).active("RS256")
        now = int(time.time()) - (7200 if expired else 0)
        claims = {"iss": tenant.issuer, "sub": subject, "aud": client_id, "iat": now, "exp": now + 600}
        return jwt.sign(claims, key.key, alg="RS256", kid=key.kid)

    return env.run(work)


def live_sessions(env: Env, tenant: Any) -> int:
    async def work() -> int:
        async with env.ctx.sessionmaker() as session:
            rows = await session.scalars(
                select(UserSession).where(UserSession.tenant_id == tenant.id, UserSession.revoked_at.is_(None))
            )
            return len(rows.all())

    return env.run(work)


def logout(env: Env, tenant: Any, **params: str) -> Any:
    return env.client.get(f"/tenants/{tenant.slug}/logout", params=params, follow_redirects=False)


def test_logout_hint_of_current_user_redirects_with_state(env: Env) -> None:
    tenant, client_id, user_id = signed_in(env)
    hint = id_token(env, tenant, client_id, user_id, expired=True)
    response = logout(env, tenant, id_token_hint=hint, post_logout_redirect_uri=AFTER_LOGOUT, state="s1")
    assert response.status_code == 303
    assert response.headers["location"] == f"{AFTER_LOGOUT}?state=s1"
    assert live_sessions(env, tenant) == 0
    cleared = [c for c in response.headers.get_list("set-cookie") if c.startswith("idhub_session=")]
    assert cleared and ("max-age=0" in cleared[0].lower() or "expires=" in cleared[0].lower())
    # The session is gone: prompt=none now says login_required.
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": "openid",
        "code_challenge": pkce_pair()[1], "code_challenge_method": "S256", "prompt": "none",
    }  # fmt: skip
    again = env.client.get(f"/tenants/{tenant.slug}/authorize", params=params, follow_redirects=False)
    assert query_of(again.headers["location"])["error"] == "login_required"


def test_logout_unregistered_post_logout_redirect_uri_error_page(env: Env) -> None:
    tenant, client_id, user_id = signed_in(env)
    hint = id_token(env, tenant, client_id, user_id)
    for uri in ("https://evil.example/bye", AFTER_LOGOUT + "/", AFTER_LOGOUT + "?x=1"):
        response = logout(env, tenant, id_token_hint=hint, post_logout_redirect_uri=uri)
        assert response.status_code == 400 and "location" not in response.headers
        assert response.headers["content-type"].startswith("text/html")
    assert live_sessions(env, tenant) == 1


def test_logout_redirect_uri_without_client_error_page(env: Env) -> None:
    tenant, _, _ = signed_in(env)
    assert logout(env, tenant, post_logout_redirect_uri=AFTER_LOGOUT).status_code == 400


def test_logout_invalid_hint_error_page(env: Env) -> None:
    tenant, _, _ = signed_in(env)
    assert logout(env, tenant, id_token_hint="a.b.c").status_code == 400
    assert live_sessions(env, tenant) == 1


def test_logout_hint_client_mismatch_error_page(env: Env) -> None:
    tenant, client_id, user_id = signed_in(env)
    hint = id_token(env, tenant, client_id, user_id)
    assert logout(env, tenant, id_token_hint=hint, client_id="other").status_code == 400


def test_logout_without_hint_asks_confirmation_with_csrf(env: Env) -> None:
    tenant, client_id, _ = signed_in(env)
    page = logout(env, tenant, client_id=client_id, post_logout_redirect_uri=AFTER_LOGOUT, state="s2")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert live_sessions(env, tenant) == 1
    form = parse_forms(page.text)[0]
    assert form.inputs["csrf_token"] and form.inputs["post_logout_redirect_uri"] == AFTER_LOGOUT
    bad = submit_first_form(env.client, page, csrf_token="forged")
    assert bad.status_code == 400 and live_sessions(env, tenant) == 1
    response = submit_first_form(env.client, page)
    assert response.status_code == 303 and response.headers["location"] == f"{AFTER_LOGOUT}?state=s2"
    assert live_sessions(env, tenant) == 0


def test_logout_hint_of_other_user_asks_confirmation(env: Env) -> None:
    tenant, client_id, _ = signed_in(env)
    hint = id_token(env, tenant, client_id, str(uuid.uuid4()))
    page = logout(env, tenant, id_token_hint=hint)
    assert page.status_code == 200 and "csrf_token" in page.text
    assert live_sessions(env, tenant) == 1


def test_logout_confirmation_without_post_logout_uri_shows_signed_out(env: Env) -> None:
    tenant, _, _ = signed_in(env)
    page = logout(env, tenant)
    response = submit_first_form(env.client, page)
    assert response.status_code == 200 and "signed out" in response.text
    assert live_sessions(env, tenant) == 0


def test_logout_without_session_redirects(env: Env) -> None:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, redirect_uris=[REDIRECT], post_logout_redirect_uris=[AFTER_LOGOUT])
    response = logout(env, tenant, client_id=client_id, post_logout_redirect_uri=AFTER_LOGOUT)
    assert response.status_code == 303 and response.headers["location"] == AFTER_LOGOUT


def test_logout_duplicated_parameter_error_page(env: Env) -> None:
    tenant, client_id, _ = signed_in(env)
    response = env.client.get(
        f"/tenants/{tenant.slug}/logout", params=[("client_id", client_id), ("client_id", client_id)]
    )
    assert response.status_code == 400


def test_logout_access_token_as_hint_refused(env: Env) -> None:
    tenant, client_id, user_id = signed_in(env)

    async def work() -> str:
        key = (await env.ctx.keys.get(tenant.id)).active("ES256")
        now = int(time.time())
        claims = {"iss": tenant.issuer, "sub": user_id, "aud": client_id, "client_id": client_id, "iat": now,
                  "exp": now + 600, "jti": "j", "scope": "openid"}  # fmt: skip
        return jwt.sign(claims, key.key, alg="ES256", kid=key.kid, typ="at+jwt")

    access_token = env.run(work)
    response = logout(env, tenant, id_token_hint=access_token, post_logout_redirect_uri=AFTER_LOGOUT)
    assert response.status_code == 400 and "location" not in response.headers
    assert live_sessions(env, tenant) == 1
