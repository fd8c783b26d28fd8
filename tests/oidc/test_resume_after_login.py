"""resume_after_login: the one step every sign-in ends in (session, id_token_hint, consent or code)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from idhub.clients.service import ClientInfo
from idhub.crypto import jwt
from idhub.oidc.interaction import (
    AuthorizationRequest,
    InteractionError,
    Resumed,
    create_interaction,
    record_consent,
    resume_after_login,
)
from idhub.sessions.service import create_session, load_session
from idhub.storage.models import (
    AuthorizationCode,
    FederatedIdentity,
    IdentityProvider,
    Interaction,
    UserSession,
)
from idhub.tenants.service import TenantInfo
from tests.conftest import Env
from tests.flows import authorize_params, pkce_pair, query_of
from tests.oidc.grants.helpers import basic, post

REDIRECT = "https://app.example/cb"
STATE = "st-1"
LOA2 = "urn:example:loa:2"


@dataclass
class Setup:
    """A tenant with one confidential code client and one user."""

    tenant: TenantInfo
    client: ClientInfo
    secret: str
    user_id: uuid.UUID
    verifier: str
    challenge: str

    def request(self, **overrides: Any) -> AuthorizationRequest:
        values: dict[str, Any] = dict(
            client_id=self.client.client_id,
            redirect_uri=REDIRECT,
            scope=("openid", "profile"),
            code_challenge=self.challenge,
            code_challenge_method="S256",
            state=STATE,
            nonce="n-1",
        )
        values.update(overrides)
        return AuthorizationRequest(**values)


def make_setup(env: Env, *, first_party: bool = True) -> Setup:
    tenant = env.tenant()
    client_id, secret = env.oauth_client(
        tenant,
        redirect_uris=[REDIRECT],
        grant_types=["authorization_code"],
        scope="openid profile",
        first_party=first_party,
    )

    async def info() -> ClientInfo:
        found = await env.ctx.clients.get(tenant.id, client_id)
        assert found is not None
        return found

    user_id = uuid.UUID(env.user(tenant, password=None))
    verifier, challenge = pkce_pair()
    return Setup(tenant, env.run(info), secret or "", user_id, verifier, challenge)


def park(env: Env, setup: Setup, request: AuthorizationRequest | None = None) -> str:
    """Park an authorization request as the login page would see it; return the interaction id."""

    async def work() -> str:
        async with env.uow() as uow:
            return await create_interaction(
                uow.session,
                ctx=env.ctx,
                tenant=setup.tenant,
                client=setup.client,
                request=request or setup.request(),
                browser_secret="b" * 32,
                sso=None,
            )

    result: str = env.run(work)
    return result


def resume(env: Env, setup: Setup, interaction_id: str, **kwargs: Any) -> Resumed:
    """Resume the interaction in its own unit of work (committed unless it raises)."""
    kwargs.setdefault("user_id", setup.user_id)
    kwargs.setdefault("amr", ["pwd"])

    async def work() -> Resumed:
        async with env.uow() as uow:
            # Loaded as a request that raced another would hold it: no "already completed" check here.
            row = await uow.session.get(Interaction, interaction_id)
            assert row is not None
            return await resume_after_login(
                uow.session,
                ctx=env.ctx,
                tenant=setup.tenant,
                interaction=row,
                request=AuthorizationRequest.from_params(row.params),
                client=setup.client,
                **kwargs,
            )

    result: Resumed = env.run(work)
    return result


def interaction_row(env: Env, interaction_id: str) -> Interaction:
    async def work() -> Interaction | None:
        async with env.ctx.sessionmaker() as session:
            return await session.get(Interaction, interaction_id)

    row = env.run(work)
    assert row is not None
    return row


def session_rows(env: Env, tenant: TenantInfo) -> list[UserSession]:
    async def work() -> list[UserSession]:
        async with env.ctx.sessionmaker() as session:
            found = await session.scalars(select(UserSession).where(UserSession.tenant_id == tenant.id))
            return list(found.all())

    result: list[UserSession] = env.run(work)
    return result


def code_count(env: Env, setup: Setup) -> int:
    async def work() -> int:
        async with env.ctx.sessionmaker() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(AuthorizationCode)
                .where(AuthorizationCode.client_id == setup.client.id)
            )
            return int(count or 0)

    result: int = env.run(work)
    return result


def exchange(env: Env, setup: Setup, code: str) -> dict[str, Any]:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": setup.verifier}
    response = post(env, setup.tenant, "token", data, basic(setup.client.client_id, setup.secret))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def id_token_claims(env: Env, setup: Setup, token: str) -> dict[str, Any]:
    async def work() -> dict[str, Any]:
        keys = await env.ctx.keys.get(setup.tenant.id)
        return jwt.verify(token, keys.verify_set, typ="JWT")

    result: dict[str, Any] = env.run(work)
    return result


def link(env: Env, setup: Setup) -> uuid.UUID:
    """Create an upstream and a link of the setup's user to it; return the link id."""

    async def work() -> uuid.UUID:
        async with env.uow() as uow:
            provider = IdentityProvider(
                tenant_id=setup.tenant.id, alias="corp", type="oidc", display_name="Corp", config={}
            )
            uow.session.add(provider)
            await uow.session.flush()
            found = FederatedIdentity(
                tenant_id=setup.tenant.id, provider_id=provider.id, user_id=setup.user_id, subject="upstream-sub"
            )
            uow.session.add(found)
            await uow.session.flush()
            return found.id

    result: uuid.UUID = env.run(work)
    return result


# --- consent or code ------------------------------------------------------------------------------


def test_resume_after_login_consent_needed_consent_page_interaction_open(env: Env) -> None:
    setup = make_setup(env, first_party=False)
    interaction_id = park(env, setup)
    resumed = resume(env, setup, interaction_id)
    assert resumed.location == f"{setup.tenant.issuer}/interaction/{interaction_id}"
    row = interaction_row(env, interaction_id)
    assert row.completed_at is None
    [sso] = session_rows(env, setup.tenant)
    assert row.user_id == setup.user_id and row.session_id == sso.id
    assert code_count(env, setup) == 0


def test_resume_after_login_prompt_consent_first_party_consent_page(env: Env) -> None:
    setup = make_setup(env, first_party=True)
    interaction_id = park(env, setup, setup.request(prompt=("consent",)))
    resumed = resume(env, setup, interaction_id)
    assert resumed.location == f"{setup.tenant.issuer}/interaction/{interaction_id}"
    assert interaction_row(env, interaction_id).completed_at is None
    assert code_count(env, setup) == 0


def test_resume_after_login_no_consent_needed_code_with_iss_interaction_completed(env: Env) -> None:
    setup = make_setup(env, first_party=True)
    interaction_id = park(env, setup)
    resumed = resume(env, setup, interaction_id)
    assert resumed.location.startswith(REDIRECT + "?")
    query = query_of(resumed.location)
    assert query["code"] and query["state"] == STATE
    assert query["iss"] == setup.tenant.issuer  # RFC 9207 §2
    assert "error" not in query
    row = interaction_row(env, interaction_id)
    assert row.completed_at is not None and row.user_id == setup.user_id
    assert code_count(env, setup) == 1


def test_resume_after_login_consent_already_given_code(env: Env) -> None:
    setup = make_setup(env, first_party=False)

    async def consent() -> None:
        async with env.uow() as uow:
            await record_consent(
                uow.session,
                tenant=setup.tenant,
                client=setup.client,
                user_id=setup.user_id,
                scope=("openid", "profile"),
            )

    env.run(consent)
    interaction_id = park(env, setup)
    resumed = resume(env, setup, interaction_id)
    assert query_of(resumed.location)["code"]
    assert interaction_row(env, interaction_id).completed_at is not None


# --- id_token_hint (OIDC Core §3.1.2.1) -----------------------------------------------------------


def test_resume_after_login_id_token_hint_other_user_login_required(env: Env) -> None:
    setup = make_setup(env, first_party=True)
    interaction_id = park(env, setup, setup.request(id_token_hint_sub=str(uuid.uuid4())))
    resumed = resume(env, setup, interaction_id)
    assert resumed.location.startswith(REDIRECT + "?")
    query = query_of(resumed.location)
    assert query["error"] == "login_required" and query["state"] == STATE
    assert query["iss"] == setup.tenant.issuer
    assert "code" not in query
    assert interaction_row(env, interaction_id).completed_at is not None  # not usable for another try
    assert code_count(env, setup) == 0
    # The person did sign in: their session stands (the page sets its cookie).
    [sso] = session_rows(env, setup.tenant)
    assert sso.user_id == setup.user_id and resumed.session_cookie


def test_resume_after_login_id_token_hint_same_user_code(env: Env) -> None:
    setup = make_setup(env, first_party=True)
    interaction_id = park(env, setup, setup.request(id_token_hint_sub=str(setup.user_id)))
    resumed = resume(env, setup, interaction_id)
    assert query_of(resumed.location)["code"]


# --- the session it starts ------------------------------------------------------------------------


def test_resume_after_login_session_row_stores_amr_acr_link(env: Env) -> None:
    setup = make_setup(env, first_party=False)
    link_id = link(env, setup)
    interaction_id = park(env, setup)
    resumed = resume(env, setup, interaction_id, amr=["fed", "mfa"], acr=LOA2, link_id=link_id)
    [row] = session_rows(env, setup.tenant)
    assert row.amr == ["fed", "mfa"] and row.acr == LOA2 and row.link_id == link_id
    assert row.user_id == setup.user_id and row.revoked_at is None
    assert interaction_row(env, interaction_id).session_id == row.id

    async def load() -> Any:
        async with env.ctx.sessionmaker() as session:
            return await load_session(
                session,
                hasher=env.ctx.secret_hasher,
                settings=env.ctx.settings.sessions,
                tenant_id=setup.tenant.id,
                cookie=resumed.session_cookie,
            )

    sso = env.run(load)
    assert sso is not None and sso.id == row.id
    assert sso.amr == ("fed", "mfa") and sso.acr == LOA2


def test_resume_after_login_password_session_amr_pwd_no_acr_no_link(env: Env) -> None:
    setup = make_setup(env)
    resume(env, setup, park(env, setup))
    [row] = session_rows(env, setup.tenant)
    assert row.amr == ["pwd"] and row.acr is None and row.link_id is None


def test_resume_after_login_acr_too_long_not_kept(env: Env) -> None:
    setup = make_setup(env)
    resume(env, setup, park(env, setup), amr=["fed"], acr="urn:" + "x" * 300)
    [row] = session_rows(env, setup.tenant)
    assert row.acr is None and row.amr == ["fed"]


def test_resume_after_login_previous_session_revoked(env: Env) -> None:
    setup = make_setup(env)

    async def earlier() -> str:
        async with env.uow() as uow:
            _sso, cookie = await create_session(
                uow.session,
                hasher=env.ctx.secret_hasher,
                settings=env.ctx.settings.sessions,
                tenant_id=setup.tenant.id,
                user_id=setup.user_id,
                amr=["pwd"],
            )
        return cookie

    previous = env.run(earlier)
    resumed = resume(env, setup, park(env, setup), previous_cookie=previous)
    rows = {row.revoked_at is None: row for row in session_rows(env, setup.tenant)}
    assert set(rows) == {True, False}  # the old one revoked, the new one live (OWASP session fixation)
    assert resumed.session_cookie != previous


# --- how the person signed in reaches the tokens --------------------------------------------------


def test_resume_after_login_amr_acr_auth_time_reach_id_token(env: Env) -> None:
    setup = make_setup(env, first_party=True)
    resumed = resume(env, setup, park(env, setup), amr=["fed", "mfa"], acr=LOA2)
    body = exchange(env, setup, query_of(resumed.location)["code"])
    claims = id_token_claims(env, setup, body["id_token"])
    [row] = session_rows(env, setup.tenant)
    assert claims["sub"] == str(setup.user_id) and claims["sid"] == row.id
    assert claims["amr"] == ["fed", "mfa"] and claims["acr"] == LOA2
    assert claims["auth_time"] == int(row.auth_time.timestamp())


def test_resume_after_login_password_id_token_amr_pwd_no_acr(env: Env) -> None:
    setup = make_setup(env, first_party=True)
    resumed = resume(env, setup, park(env, setup))
    claims = id_token_claims(env, setup, exchange(env, setup, query_of(resumed.location)["code"])["id_token"])
    assert claims["amr"] == ["pwd"] and "acr" not in claims


def test_resume_after_login_signed_in_browser_gets_code_with_same_acr(env: Env) -> None:
    """A later request of the signed-in browser takes the shared consent-or-finish step with the session's acr."""
    setup = make_setup(env, first_party=True)
    resumed = resume(env, setup, park(env, setup), amr=["fed"], acr=LOA2)
    params = authorize_params(client_id=setup.client.client_id, redirect_uri=REDIRECT, code_challenge=setup.challenge)
    cookie = f"{env.ctx.settings.sessions.cookie_name}={resumed.session_cookie}"
    response = env.client.get(
        f"/tenants/{setup.tenant.slug}/authorize", params=params, headers={"cookie": cookie}, follow_redirects=False
    )
    assert response.status_code in (302, 303), response.text
    query = query_of(response.headers["location"])
    assert query["iss"] == setup.tenant.issuer
    claims = id_token_claims(env, setup, exchange(env, setup, query["code"])["id_token"])
    assert claims["amr"] == ["fed"] and claims["acr"] == LOA2


# --- single use -----------------------------------------------------------------------------------


def test_resume_after_login_twice_second_refused_one_code(env: Env) -> None:
    setup = make_setup(env, first_party=True)
    interaction_id = park(env, setup)
    first = resume(env, setup, interaction_id)
    assert query_of(first.location)["code"]
    with pytest.raises(InteractionError):
        resume(env, setup, interaction_id)
    assert code_count(env, setup) == 1
    [row] = session_rows(env, setup.tenant)  # the refused call's session rolled back with it
    assert interaction_row(env, interaction_id).session_id == row.id


def test_resume_after_login_after_login_required_second_refused(env: Env) -> None:
    setup = make_setup(env, first_party=True)
    interaction_id = park(env, setup, setup.request(id_token_hint_sub=str(uuid.uuid4())))
    assert query_of(resume(env, setup, interaction_id).location)["error"] == "login_required"
    with pytest.raises(InteractionError):
        resume(env, setup, interaction_id)
    assert code_count(env, setup) == 0
