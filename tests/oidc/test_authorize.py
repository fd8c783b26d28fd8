"""Authorization endpoint: each check step alone, then the endpoint over HTTP."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from idhub.clients.service import ClientInfo
from idhub.crypto import jwt
from idhub.oidc import authorize as az
from idhub.oidc.errors import (
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    RequestNotSupported,
    RequestUriNotSupported,
    UnauthorizedClient,
    UnsupportedResponseType,
)
from idhub.oidc.interaction import AuthorizationRequest, login_needed
from idhub.sessions.service import SsoSession
from idhub.storage.base import utcnow
from tests.conftest import Env
from tests.flows import authorize_params, login_and_get_code, pkce_pair, query_of

REDIRECT = "https://app.example/cb"
PASSWORD = "correct horse"


def client_info(**overrides: Any) -> ClientInfo:
    values: dict[str, Any] = dict(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        client_id="c1",
        name="App",
        secret_hash=None,
        token_endpoint_auth_method="none",
        application_type="web",
        redirect_uris=(REDIRECT,),
        post_logout_redirect_uris=(),
        grant_types=frozenset({"authorization_code"}),
        scopes=frozenset({"openid", "profile", "email"}),
        resources=("https://api.example/",),
        access_token_alg=None,
        id_token_alg="RS256",
        jwks=None,
        jwks_uri=None,
        first_party=False,
        backchannel_logout_uri=None,
        enabled=True,
    )
    values.update(overrides)
    return ClientInfo(**values)


def actx(params: dict[str, Any], **client_overrides: Any) -> az.AuthorizationContext:
    grouped = {k: (v if isinstance(v, list) else [v]) for k, v in params.items()}
    ctx = az.AuthorizationContext(ctx=None, tenant=None, params=grouped)  # type: ignore[arg-type]
    ctx.client = client_info(**client_overrides)
    ctx.redirect_uri = REDIRECT
    return ctx


CHALLENGE = pkce_pair()[1]


# --- steps alone ------------------------------------------------------------------------------------


def test_check_redirect_uri_unregistered_untrusted() -> None:
    ctx = actx({"redirect_uri": "https://evil.example/cb"})
    with pytest.raises(az.UntrustedRequest):
        az.check_redirect_uri(ctx)


def test_check_redirect_uri_loopback_port_native_only() -> None:
    native = actx(
        {"redirect_uri": "http://127.0.0.1:5555/cb"}, application_type="native", redirect_uris=("http://127.0.0.1/cb",)
    )
    az.check_redirect_uri(native)
    web = actx({"redirect_uri": "http://127.0.0.1:5555/cb"}, redirect_uris=("http://127.0.0.1/cb",))
    with pytest.raises(az.UntrustedRequest):
        az.check_redirect_uri(web)


def test_check_redirect_uri_repeated_untrusted() -> None:
    with pytest.raises(az.UntrustedRequest):
        az.check_redirect_uri(actx({"redirect_uri": [REDIRECT, REDIRECT]}))


def test_check_no_duplicates_repeated_scope_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        az.check_no_duplicates(actx({"scope": ["openid", "openid"]}))


def test_check_no_duplicates_repeated_resource_allowed() -> None:
    az.check_no_duplicates(actx({"resource": ["https://a/", "https://b/"]}))


def test_check_response_type_token_unsupported() -> None:
    with pytest.raises(UnsupportedResponseType):
        az.check_response_type(actx({"response_type": "token"}))
    with pytest.raises(InvalidRequest):
        az.check_response_type(actx({}))


def test_check_request_object_present_not_supported() -> None:
    with pytest.raises(RequestNotSupported):
        az.check_request_object(actx({"request": "x.y.z"}))
    with pytest.raises(RequestUriNotSupported):
        az.check_request_object(actx({"request_uri": "urn:x"}))


def test_check_grant_type_without_code_grant_unauthorized_client() -> None:
    with pytest.raises(UnauthorizedClient):
        az.check_grant_type(actx({}, grant_types=frozenset({"client_credentials"})))


def test_check_scope_outside_allowed_intersected_or_invalid_scope() -> None:
    with pytest.raises(InvalidScope):
        az.check_scope(actx({"scope": "admin"}))
    mixed = actx({"scope": "openid admin"})
    az.check_scope(mixed)
    assert mixed.scope == ("openid",)
    ok = actx({"scope": "openid profile openid"})
    az.check_scope(ok)
    assert ok.scope == ("openid", "profile")


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"code_challenge": CHALLENGE},
        {"code_challenge": CHALLENGE, "code_challenge_method": "plain"},
        {"code_challenge": "short", "code_challenge_method": "S256"},
        {"code_challenge": "a" * 129, "code_challenge_method": "S256"},
        {"code_challenge": "=" * 43, "code_challenge_method": "S256"},
    ],
)
def test_check_pkce_missing_plain_or_malformed_invalid_request(params: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest):
        az.check_pkce(actx(params))


def test_check_pkce_s256_accepted() -> None:
    ctx = actx({"code_challenge": CHALLENGE, "code_challenge_method": "S256"})
    az.check_pkce(ctx)
    assert ctx.code_challenge == CHALLENGE


@pytest.mark.parametrize("resource", ["https://other.example/", "relative/path", "https://api.example/#frag"])
def test_check_resource_unregistered_or_malformed_invalid_target(resource: str) -> None:
    with pytest.raises(InvalidTarget):
        az.check_resource(actx({"resource": resource}))


def test_check_resource_registered_accepted() -> None:
    ctx = actx({"resource": "https://api.example/"})
    az.check_resource(ctx)
    assert ctx.resources == ("https://api.example/",)


@pytest.mark.parametrize("prompt", ["none login", "select_account", "none consent"])
def test_check_prompt_invalid_combination_invalid_request(prompt: str) -> None:
    with pytest.raises(InvalidRequest):
        az.check_prompt(actx({"prompt": prompt}))


@pytest.mark.parametrize("max_age", ["-1", "abc", "1.5", "٣"])
def test_check_max_age_not_non_negative_int_invalid_request(max_age: str) -> None:
    with pytest.raises(InvalidRequest):
        az.check_max_age(actx({"max_age": max_age}))


def _sso(auth_age: float = 0, user: uuid.UUID | None = None) -> SsoSession:
    from datetime import timedelta

    return SsoSession("s", uuid.uuid4(), user or uuid.uuid4(), utcnow() - timedelta(seconds=auth_age), ("pwd",))


def _request(**kw: Any) -> AuthorizationRequest:
    return AuthorizationRequest(
        client_id="c1",
        redirect_uri=REDIRECT,
        scope=("openid",),
        code_challenge=CHALLENGE,
        code_challenge_method="S256",
        **kw,
    )


def test_login_needed_rules() -> None:
    now = time.time()
    assert login_needed(_request(), None, now_ts=now)
    assert not login_needed(_request(), _sso(), now_ts=now)
    assert login_needed(_request(prompt=("login",)), _sso(), now_ts=now)
    assert login_needed(_request(max_age=10), _sso(auth_age=60), now_ts=now)
    assert not login_needed(_request(max_age=600), _sso(auth_age=60), now_ts=now)
    user = uuid.uuid4()
    assert not login_needed(_request(id_token_hint_sub=str(user)), _sso(user=user), now_ts=now)
    assert login_needed(_request(id_token_hint_sub=str(uuid.uuid4())), _sso(user=user), now_ts=now)


# --- over HTTP ------------------------------------------------------------------------------------


def setup_client(env: Env, **kwargs: Any) -> tuple[Any, str]:
    tenant = env.tenant()
    kwargs.setdefault("redirect_uris", [REDIRECT])
    kwargs.setdefault("first_party", True)
    client_id, _ = env.oauth_client(tenant, **kwargs)
    env.user(tenant, password=PASSWORD)
    return tenant, client_id


def get_authorize(env: Env, tenant: Any, params: dict[str, Any] | list[tuple[str, str]]) -> Any:
    return env.client.get(f"/tenants/{tenant.slug}/authorize", params=params, follow_redirects=False)


def sign_in(env: Env, tenant: Any, client_id: str, **extra: Any) -> dict[str, str]:
    return login_and_get_code(
        env.client, tenant_slug=tenant.slug, client_id=client_id, redirect_uri=REDIRECT, username="alice",
        password=PASSWORD, code_challenge=CHALLENGE, **extra,
    )  # fmt: skip


def base_params(client_id: str, **extra: Any) -> dict[str, Any]:
    return authorize_params(client_id=client_id, redirect_uri=REDIRECT, code_challenge=CHALLENGE, extra_params=extra)


def assert_error_redirect(response: Any, tenant: Any, error: str, state: str | None = "xyz") -> dict[str, str]:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    query = query_of(location)
    assert query["error"] == error
    assert query["iss"] == tenant.issuer
    assert query.get("state") == state
    return query


def test_authorize_full_flow_code_state_iss(env: Env) -> None:
    tenant, client_id = setup_client(env)
    result = sign_in(env, tenant, client_id)
    assert set(result) == {"code", "state", "iss"}
    assert result["state"] == "xyz" and result["iss"] == tenant.issuer


def test_authorize_registered_query_preserved(env: Env) -> None:
    tenant, client_id = setup_client(env, redirect_uris=[REDIRECT + "?app=1"])
    result = login_and_get_code(
        env.client, tenant_slug=tenant.slug, client_id=client_id, redirect_uri=REDIRECT + "?app=1",
        username="alice", password=PASSWORD, code_challenge=CHALLENGE,
    )  # fmt: skip
    assert result["app"] == "1" and result["code"]


def test_authorize_unregistered_redirect_uri_error_page_no_redirect(env: Env) -> None:
    tenant, client_id = setup_client(env)
    params = authorize_params(client_id=client_id, redirect_uri="https://evil.example/cb", code_challenge=CHALLENGE)
    response = get_authorize(env, tenant, params)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "evil.example" not in response.text


def test_authorize_unknown_client_error_page(env: Env) -> None:
    tenant, _ = setup_client(env)
    response = get_authorize(env, tenant, base_params("nope"))
    assert response.status_code == 400 and "location" not in response.headers


def test_authorize_disabled_client_error_page(env: Env) -> None:
    tenant, client_id = setup_client(env)

    async def disable() -> None:
        from sqlalchemy import update

        from idhub.storage.models import Client

        async with env.ctx.sessionmaker() as session:
            await session.execute(update(Client).where(Client.client_id == client_id).values(enabled=False))
            await session.commit()
        env.ctx.clients.invalidate()

    env.run(disable)
    response = get_authorize(env, tenant, base_params(client_id))
    assert response.status_code == 400 and "location" not in response.headers


def test_authorize_missing_redirect_uri_error_page(env: Env) -> None:
    tenant, client_id = setup_client(env)
    params = base_params(client_id)
    del params["redirect_uri"]
    assert get_authorize(env, tenant, params).status_code == 400


def test_authorize_plain_pkce_invalid_request(env: Env) -> None:
    tenant, client_id = setup_client(env)
    response = get_authorize(env, tenant, base_params(client_id, code_challenge_method="plain"))
    assert_error_redirect(response, tenant, "invalid_request")


def test_authorize_missing_pkce_invalid_request(env: Env) -> None:
    tenant, client_id = setup_client(env)
    params = base_params(client_id)
    del params["code_challenge"], params["code_challenge_method"]
    assert_error_redirect(get_authorize(env, tenant, params), tenant, "invalid_request")


def test_authorize_duplicated_parameter_invalid_request(env: Env) -> None:
    tenant, client_id = setup_client(env)
    items = [*base_params(client_id).items(), ("scope", "openid")]
    assert_error_redirect(get_authorize(env, tenant, items), tenant, "invalid_request")


def test_authorize_duplicated_client_id_error_page(env: Env) -> None:
    tenant, client_id = setup_client(env)
    items = [*base_params(client_id).items(), ("client_id", client_id)]
    response = get_authorize(env, tenant, items)
    assert response.status_code == 400 and "location" not in response.headers


def test_authorize_unsupported_response_type(env: Env) -> None:
    tenant, client_id = setup_client(env)
    response = get_authorize(env, tenant, base_params(client_id, response_type="id_token"))
    assert_error_redirect(response, tenant, "unsupported_response_type")


def test_authorize_no_allowed_scope_invalid_scope(env: Env) -> None:
    tenant, client_id = setup_client(env, scope="openid profile")
    response = get_authorize(env, tenant, base_params(client_id, scope="email phone"))
    assert_error_redirect(response, tenant, "invalid_scope")


def test_authorize_client_without_code_grant_unauthorized_client(env: Env) -> None:
    tenant, client_id = setup_client(env, grant_types=["refresh_token"])
    assert_error_redirect(get_authorize(env, tenant, base_params(client_id)), tenant, "unauthorized_client")


def test_authorize_request_object_not_supported(env: Env) -> None:
    tenant, client_id = setup_client(env)
    response = get_authorize(env, tenant, base_params(client_id, request="a.b.c"))
    assert_error_redirect(response, tenant, "request_not_supported")


def test_authorize_unknown_resource_invalid_target(env: Env) -> None:
    tenant, client_id = setup_client(env, resources=["https://api.example/"])
    response = get_authorize(env, tenant, base_params(client_id, resource="https://other.example/"))
    assert_error_redirect(response, tenant, "invalid_target")


def test_authorize_post_form_accepted(env: Env) -> None:
    tenant, client_id = setup_client(env)
    response = env.client.post(f"/tenants/{tenant.slug}/authorize", data=base_params(client_id), follow_redirects=False)
    assert response.status_code == 303
    assert urlsplit(response.headers["location"]).path.startswith(f"/tenants/{tenant.slug}/interaction/")


def test_authorize_prompt_none_without_session_login_required(env: Env) -> None:
    tenant, client_id = setup_client(env)
    response = get_authorize(env, tenant, base_params(client_id, prompt="none"))
    assert_error_redirect(response, tenant, "login_required")


def test_authorize_prompt_none_with_session_code(env: Env) -> None:
    tenant, client_id = setup_client(env)
    sign_in(env, tenant, client_id)
    response = get_authorize(env, tenant, base_params(client_id, prompt="none"))
    assert response.status_code == 303
    assert query_of(response.headers["location"])["code"]


def test_authorize_prompt_login_with_session_shows_login(env: Env) -> None:
    tenant, client_id = setup_client(env)
    sign_in(env, tenant, client_id)
    response = get_authorize(env, tenant, base_params(client_id, prompt="login"))
    assert "/interaction/" in response.headers["location"]


def test_authorize_max_age_exceeded_forces_login(env: Env) -> None:
    tenant, client_id = setup_client(env)
    sign_in(env, tenant, client_id)
    response = get_authorize(env, tenant, base_params(client_id, max_age="0"))
    assert "/interaction/" in response.headers["location"]
    none = get_authorize(env, tenant, base_params(client_id, max_age="0", prompt="none"))
    assert_error_redirect(none, tenant, "login_required")
    fresh = get_authorize(env, tenant, base_params(client_id, max_age="3600", prompt="none"))
    assert query_of(fresh.headers["location"])["code"]


def test_authorize_login_hint_prefills_username(env: Env) -> None:
    tenant, client_id = setup_client(env)
    response = get_authorize(env, tenant, base_params(client_id, login_hint="alice@example.org"))
    page = env.client.get(response.headers["location"], follow_redirects=False)
    assert 'value="alice@example.org"' in page.text


def _id_token(env: Env, tenant: Any, client_id: str, subject: str, *, expired: bool = False) -> str:
    async def work() -> str:
        keys = await env.ctx.keys.get(tenant.id)
        key = keys.active("RS256")
        now = int(time.time()) - (7200 if expired else 0)
        claims = {"iss": tenant.issuer, "sub": subject, "aud": client_id, "iat": now, "exp": now + 600}
        return jwt.sign(claims, key.key, alg="RS256", kid=key.kid)

    return env.run(work)


def test_authorize_id_token_hint_other_user_login_required(env: Env) -> None:
    tenant, client_id = setup_client(env)
    sign_in(env, tenant, client_id)
    hint = _id_token(env, tenant, client_id, str(uuid.uuid4()))
    response = get_authorize(env, tenant, base_params(client_id, prompt="none", id_token_hint=hint))
    assert_error_redirect(response, tenant, "login_required")
    forced = get_authorize(env, tenant, base_params(client_id, id_token_hint=hint))
    assert "/interaction/" in forced.headers["location"]


def test_authorize_id_token_hint_expired_same_user_code(env: Env) -> None:
    tenant, client_id = setup_client(env)
    sign_in(env, tenant, client_id)

    async def user_id() -> str:
        from idhub.directory.users import find_by_username

        async with env.uow() as uow:
            user = await find_by_username(uow, tenant_id=tenant.id, username="alice")
            assert user is not None
            return str(user.id)

    hint = _id_token(env, tenant, client_id, env.run(user_id), expired=True)
    response = get_authorize(env, tenant, base_params(client_id, prompt="none", id_token_hint=hint))
    assert query_of(response.headers["location"])["code"]


def test_authorize_invalid_id_token_hint_invalid_request(env: Env) -> None:
    tenant, client_id = setup_client(env)
    response = get_authorize(env, tenant, base_params(client_id, id_token_hint="not.a.jwt"))
    assert_error_redirect(response, tenant, "invalid_request")


def test_authorize_error_without_state_omits_state(env: Env) -> None:
    tenant, client_id = setup_client(env)
    params = base_params(client_id, response_type="token")
    del params["state"]
    assert_error_redirect(get_authorize(env, tenant, params), tenant, "unsupported_response_type", state=None)


def test_authorize_nul_character_error_page(env: Env) -> None:
    tenant, client_id = setup_client(env)
    response = get_authorize(env, tenant, base_params(client_id, nonce="a\x00b"))
    assert response.status_code == 400 and "location" not in response.headers
    assert get_authorize(env, tenant, base_params("a\x00b")).status_code == 400


def test_authorize_broken_uris_no_server_error(env: Env) -> None:
    tenant, client_id = setup_client(env, resources=["https://api.example/"])
    assert get_authorize(env, tenant, base_params(client_id, redirect_uri="http://[::1")).status_code == 400
    response = get_authorize(env, tenant, base_params(client_id, resource="http://[::1"))
    assert_error_redirect(response, tenant, "invalid_target")


def test_authorize_id_token_hint_other_user_signs_in_login_required(env: Env) -> None:
    tenant, client_id = setup_client(env)
    hint = _id_token(env, tenant, client_id, str(uuid.uuid4()))
    query = sign_in(env, tenant, client_id, extra_params={"id_token_hint": hint})
    assert query["error"] == "login_required" and "code" not in query
    assert query["iss"] == tenant.issuer
