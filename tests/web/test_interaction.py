"""Login and consent pages: CSRF, browser binding, throttling, cookies, session regeneration, consent."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select

from idhub.oidc.interaction import BROWSER_COOKIE
from idhub.settings import ThrottleSettings
from idhub.storage.models import Consent, UserSession
from idhub.throttle import Throttle
from tests.conftest import Env
from tests.flows import authorize_params, parse_forms, pkce_pair, query_of, submit_first_form

REDIRECT = "https://app.example/cb"
PASSWORD = "correct horse"
CHALLENGE = pkce_pair()[1]
GENERIC = "Incorrect username or password"


def arrange(env: Env, **kwargs: Any) -> tuple[Any, str]:
    tenant = env.tenant()
    kwargs.setdefault("redirect_uris", [REDIRECT])
    client_id, _ = env.oauth_client(tenant, **kwargs)
    env.user(tenant, password=PASSWORD)
    return tenant, client_id


def open_login(env: Env, tenant: Any, client_id: str, **extra: Any) -> Any:
    params = authorize_params(client_id=client_id, redirect_uri=REDIRECT, code_challenge=CHALLENGE, extra_params=extra)
    start = env.client.get(f"/tenants/{tenant.slug}/authorize", params=params, follow_redirects=False)
    assert start.status_code == 303, start.text
    page = env.client.get(start.headers["location"], follow_redirects=False)
    assert page.status_code == 200
    return page


def session_cookie_header(response: Any, env: Env) -> str:
    name = env.ctx.settings.sessions.cookie_name
    headers = [value for value in response.headers.get_list("set-cookie") if value.startswith(name + "=")]
    assert len(headers) == 1, response.headers
    return headers[0]


def sessions_of(env: Env, tenant: Any) -> list[UserSession]:
    async def work() -> list[UserSession]:
        async with env.ctx.sessionmaker() as session:
            return list((await session.scalars(select(UserSession).where(UserSession.tenant_id == tenant.id))).all())

    return env.run(work)


def test_login_page_form_fields_and_headers(env: Env) -> None:
    tenant, client_id = arrange(env)
    page = open_login(env, tenant, client_id)
    form = parse_forms(page.text)[0]
    assert {"username", "password", "csrf_token"} <= set(form.inputs)
    assert form.method == "post"
    assert page.headers["cache-control"] == "no-store"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script" not in page.text


def test_login_success_303_and_cookie_attributes(env: Env) -> None:
    tenant, client_id = arrange(env, first_party=True)
    page = open_login(env, tenant, client_id)
    response = submit_first_form(env.client, page, username="ALICE", password=PASSWORD)
    assert response.status_code == 303
    assert query_of(response.headers["location"])["code"]
    cookie = session_cookie_header(response, env).lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert f"path=/tenants/{tenant.slug}" in cookie
    assert "secure" not in cookie  # http public URL in tests
    [row] = sessions_of(env, tenant)
    assert row.amr == ["pwd"] and row.revoked_at is None


def test_login_wrong_password_303_generic_error(env: Env) -> None:
    tenant, client_id = arrange(env)
    page = open_login(env, tenant, client_id)
    response = submit_first_form(env.client, page, username="alice", password="wrong password")
    assert response.status_code == 303
    again = env.client.get(response.headers["location"], follow_redirects=False)
    assert GENERIC in again.text
    assert not sessions_of(env, tenant)


def test_login_unknown_and_wrong_password_same_answer(env: Env) -> None:
    tenant, client_id = arrange(env)
    answers = []
    for username in ("alice", "nobody"):
        page = open_login(env, tenant, client_id)
        response = submit_first_form(env.client, page, username=username, password="wrong password")
        answers.append((response.status_code, urlsplit(response.headers["location"]).query))
    assert answers[0] == answers[1]


def test_login_disabled_user_refused(env: Env) -> None:
    tenant, client_id = arrange(env)
    env.user(tenant, username="bob", password=PASSWORD)

    async def disable() -> None:
        from sqlalchemy import update

        from idhub.storage.models import User

        async with env.ctx.sessionmaker() as session:
            await session.execute(update(User).where(User.username == "bob").values(enabled=False))
            await session.commit()

    env.run(disable)
    page = open_login(env, tenant, client_id)
    response = submit_first_form(env.client, page, username="bob", password=PASSWORD)
    assert response.headers["location"].endswith("?error=login")


def test_login_throttled_after_failures_generic_error(env: Env) -> None:
    original = env.ctx.throttle
    env.ctx.throttle = Throttle(ThrottleSettings(max_failures_per_account=3, max_failures_per_address=1000))
    try:
        tenant, client_id = arrange(env, first_party=True)
        for username in ("alice", "ghost"):
            for _ in range(3):
                page = open_login(env, tenant, client_id)
                submit_first_form(env.client, page, username=username, password="wrong password")
        # Now even the right password fails, with the same message as for an unknown account.
        locations = []
        for username, password in (("alice", PASSWORD), ("ghost", PASSWORD)):
            page = open_login(env, tenant, client_id)
            response = submit_first_form(env.client, page, username=username, password=password)
            assert response.status_code == 303
            locations.append(urlsplit(response.headers["location"]).query)
            assert GENERIC in env.client.get(response.headers["location"], follow_redirects=False).text
        assert locations == ["error=login", "error=login"]
        assert not sessions_of(env, tenant)
    finally:
        env.ctx.throttle = original


def test_login_throttled_per_address(env: Env) -> None:
    original = env.ctx.throttle
    env.ctx.throttle = Throttle(ThrottleSettings(max_failures_per_account=100, max_failures_per_address=2))
    try:
        tenant, client_id = arrange(env, first_party=True)
        for username in ("x1", "x2"):
            page = open_login(env, tenant, client_id)
            submit_first_form(env.client, page, username=username, password="wrong password")
        page = open_login(env, tenant, client_id)
        response = submit_first_form(env.client, page, username="alice", password=PASSWORD)
        assert response.headers["location"].endswith("?error=login")
    finally:
        env.ctx.throttle = original


def test_login_missing_csrf_400_nothing_changes(env: Env) -> None:
    tenant, client_id = arrange(env)
    page = open_login(env, tenant, client_id)
    form = parse_forms(page.text)[0]
    response = env.client.post(form.action, data={"username": "alice", "password": PASSWORD}, follow_redirects=False)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert not sessions_of(env, tenant)


def test_login_wrong_csrf_400(env: Env) -> None:
    tenant, client_id = arrange(env)
    page = open_login(env, tenant, client_id)
    response = submit_first_form(env.client, page, username="alice", password=PASSWORD, csrf_token="x" * 43)
    assert response.status_code == 400
    assert not sessions_of(env, tenant)


def test_login_other_browser_403(env: Env) -> None:
    tenant, client_id = arrange(env)
    page = open_login(env, tenant, client_id)
    form = parse_forms(page.text)[0]
    data = {**form.inputs, "username": "alice", "password": PASSWORD}
    response = env.client.post(
        form.action, data=data, headers={"cookie": f"{BROWSER_COOKIE}={'b' * 43}"}, follow_redirects=False
    )
    assert response.status_code == 403
    assert env.client.get(page.url, headers={"cookie": f"{BROWSER_COOKIE}={'b' * 43}"}).status_code == 403
    assert not sessions_of(env, tenant)


def test_interaction_unknown_id_404(env: Env) -> None:
    tenant, _ = arrange(env)
    assert env.client.get(f"/tenants/{tenant.slug}/interaction/unknown").status_code == 404


def test_login_regenerates_session(env: Env) -> None:
    tenant, client_id = arrange(env, first_party=True)
    first = submit_first_form(env.client, open_login(env, tenant, client_id), username="alice", password=PASSWORD)
    second = submit_first_form(
        env.client, open_login(env, tenant, client_id, prompt="login"), username="alice", password=PASSWORD
    )
    assert session_cookie_header(first, env) != session_cookie_header(second, env)
    rows = sorted(sessions_of(env, tenant), key=lambda row: row.created_at)
    assert len(rows) == 2
    assert rows[0].revoked_at is not None and rows[1].revoked_at is None
    assert rows[0].id != rows[1].id


def test_interaction_single_use(env: Env) -> None:
    tenant, client_id = arrange(env, first_party=True)
    page = open_login(env, tenant, client_id)
    assert submit_first_form(env.client, page, username="alice", password=PASSWORD).status_code == 303
    assert env.client.get(page.url, follow_redirects=False).status_code == 400


# --- consent -------------------------------------------------------------------------------------


def consent_page(env: Env, tenant: Any, client_id: str, **extra: Any) -> Any:
    page = open_login(env, tenant, client_id, **extra)
    response = submit_first_form(env.client, page, username="alice", password=PASSWORD)
    assert response.status_code == 303 and "/interaction/" in response.headers["location"]
    consent = env.client.get(response.headers["location"], follow_redirects=False)
    assert "Allow access" in consent.text
    return consent


def test_consent_third_party_lists_scopes_and_approve_code(env: Env) -> None:
    tenant, client_id = arrange(env)
    page = consent_page(env, tenant, client_id, scope="openid email")
    assert "<code>email</code>" in page.text and page.headers["cache-control"] == "no-store"
    response = submit_first_form(env.client, page, action="approve")
    assert response.status_code == 303
    query = query_of(response.headers["location"])
    assert query["code"] and query["iss"] == tenant.issuer and query["state"] == "xyz"

    async def consent() -> str | None:
        async with env.ctx.sessionmaker() as session:
            return await session.scalar(select(Consent.scope).where(Consent.tenant_id == tenant.id))

    assert set(env.run(consent).split()) == {"openid", "email"}
    # Already consented: straight back with a code.
    params = authorize_params(
        client_id=client_id, redirect_uri=REDIRECT, code_challenge=CHALLENGE, scope="openid", extra_params={}
    )
    again = env.client.get(f"/tenants/{tenant.slug}/authorize", params=params, follow_redirects=False)
    assert query_of(again.headers["location"])["code"]
    # A new scope asks again; prompt=none then says consent_required.
    params.update(scope="openid profile", prompt="none")
    more = env.client.get(f"/tenants/{tenant.slug}/authorize", params=params, follow_redirects=False)
    assert query_of(more.headers["location"])["error"] == "consent_required"


def test_consent_deny_access_denied(env: Env) -> None:
    tenant, client_id = arrange(env)
    page = consent_page(env, tenant, client_id)
    response = submit_first_form(env.client, page, action="deny")
    query = query_of(response.headers["location"])
    assert response.headers["location"].startswith(REDIRECT)
    assert query["error"] == "access_denied" and query["state"] == "xyz" and query["iss"] == tenant.issuer


def test_consent_prompt_consent_forces_page(env: Env) -> None:
    tenant, client_id = arrange(env)
    submit_first_form(env.client, consent_page(env, tenant, client_id), action="approve")
    params = authorize_params(
        client_id=client_id, redirect_uri=REDIRECT, code_challenge=CHALLENGE, extra_params={"prompt": "consent"}
    )
    start = env.client.get(f"/tenants/{tenant.slug}/authorize", params=params, follow_redirects=False)
    page = env.client.get(start.headers["location"], follow_redirects=False)
    assert "Allow access" in page.text


def test_consent_wrong_csrf_400(env: Env) -> None:
    tenant, client_id = arrange(env)
    page = consent_page(env, tenant, client_id)
    assert submit_first_form(env.client, page, action="approve", csrf_token="nope").status_code == 400


def test_consent_first_party_skipped(env: Env) -> None:
    tenant, client_id = arrange(env, first_party=True)
    page = open_login(env, tenant, client_id)
    response = submit_first_form(env.client, page, username="alice", password=PASSWORD)
    assert query_of(response.headers["location"])["code"]
