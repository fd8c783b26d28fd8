"""Brokered sign-in end to end: one idhub tenant signs people in through another idhub tenant.

``apps`` is the OpenID provider of a social app; ``corp`` plays the company's identity provider
(a second idhub tenant on the same live server, speaking real OIDC over loopback HTTP). A person
signs in to the app with their corp account: app -> apps/authorize (idp_hint=corp) -> corp login ->
apps callback -> app, and the app's tokens carry ``amr: ["fed", "pwd"]`` and the linked user.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import pytest

from idhub.broker.linking import list_links, remove_link
from idhub.broker.providers import NewProvider
from idhub.events import Actor
from tests.audit.test_audit import audit_rows, only, with_action
from tests.conftest import Env
from tests.flows import authorize_params, follow_to_client, parse_forms, pkce_pair, query_of

APP_REDIRECT = "https://app.example/cb"
PASSWORD = "correct horse battery"


def _claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


class Setup:
    """Two tenants wired together, plus an app registered at ``apps``."""

    def __init__(self, live: Env, *, jit: bool = True, email_domains: tuple[str, ...] = ()) -> None:
        self.live = live
        self.corp = live.tenant()
        self.apps = live.tenant()
        self.alias = "corp"
        self.username = f"alice-{uuid.uuid4().hex[:6]}"
        self.email = f"{self.username}@corp.example"
        self.corp_user = live.user(self.corp, self.username, PASSWORD, email=self.email, email_verified=True)
        callback = f"{self.apps.issuer}/broker/{self.alias}/callback"
        self.broker_client, self.broker_secret = live.oauth_client(
            self.corp,
            redirect_uris=[callback],
            grant_types=["authorization_code"],
            scope="openid profile email",
            first_party=True,
        )
        self.app_client, self.app_secret = live.oauth_client(
            self.apps,
            redirect_uris=[APP_REDIRECT],
            grant_types=["authorization_code"],
            scope="openid profile email",
            first_party=True,
        )
        new = NewProvider(
            alias=self.alias,
            type="oidc",
            issuer=self.corp.issuer,
            client_id=self.broker_client,
            client_secret=self.broker_secret,
            internal=True,
            jit=jit,
            email_domains=email_domains,
        )

        async def create() -> None:
            async with live.ctx.uow(actor=Actor("cli", "test"), surface="cli") as uow:
                await live.ctx.broker.providers(uow).create(self.apps.id, new)

        live.run(create)

    def upstream_answer(self, http: httpx.Client) -> dict[str, str]:
        """Start a brokered sign-in and sign in at corp; return what corp sends to the broker's callback."""
        _verifier, challenge = pkce_pair()
        params = authorize_params(
            client_id=self.app_client, redirect_uri=APP_REDIRECT, code_challenge=challenge,
            extra_params={"idp_hint": self.alias},
        )  # fmt: skip
        start = http.get(f"/tenants/{self.apps.slug}/authorize", params=params)
        upstream = http.get(start.headers["location"]).headers["location"]
        return follow_to_client(
            http, http.get(upstream), tenant_slug=self.corp.slug, username=self.username, password=PASSWORD
        )

    def sign_in(self, http: httpx.Client, **extra: str) -> dict[str, str]:
        """Run the app's authorization request through corp; return the query the app receives."""
        response = self.callback(http, **extra)
        assert response.status_code == 303, response.text
        return query_of(response.headers["location"])

    def callback(self, http: httpx.Client, **extra: str) -> httpx.Response:
        """Run the app's authorization request through corp; return the broker callback's answer."""
        verifier, challenge = pkce_pair()
        self.verifier = verifier
        params = authorize_params(
            client_id=self.app_client,
            redirect_uri=APP_REDIRECT,
            code_challenge=challenge,
            scope="openid profile email",
            extra_params={"idp_hint": self.alias, **extra},
        )
        # idp_hint: the authorization request goes straight to the upstream (no login page in between).
        response = http.get(f"/tenants/{self.apps.slug}/authorize", params=params)
        assert response.status_code == 303, response.text
        upstream = response.headers["location"]
        assert upstream.startswith(f"{self.corp.issuer}/authorize?")
        back = follow_to_client(
            http, http.get(upstream), tenant_slug=self.corp.slug, username=self.username, password=PASSWORD
        )
        assert set(back) >= {"code", "state", "iss"} and back["iss"] == self.corp.issuer  # RFC 9207
        return http.get(f"/tenants/{self.apps.slug}/broker/{self.alias}/callback", params=back)

    def tokens(self, code: str) -> dict[str, Any]:
        response = httpx.post(
            f"{self.apps.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": APP_REDIRECT,
                "code_verifier": self.verifier,
            },
            auth=(self.app_client, self.app_secret or ""),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def browser(live: Env) -> Any:
    with httpx.Client(base_url=live.base_url, follow_redirects=False, timeout=15) as client:
        yield client


def test_broker_oidc_round_trip_through_a_second_tenant_jit_user(live: Env, browser: httpx.Client) -> None:
    setup = Setup(live)
    answer = setup.sign_in(browser)
    assert set(answer) >= {"code", "state", "iss"} and answer["iss"] == setup.apps.issuer
    tokens = setup.tokens(answer["code"])
    claims = _claims(tokens["id_token"])
    assert claims["iss"] == setup.apps.issuer and claims["aud"] == setup.app_client
    assert claims["amr"][0] == "fed" and "pwd" in claims["amr"]  # RFC 8176: federated, upstream said pwd
    assert claims["sub"] != setup.corp_user  # a new user of the apps directory, linked to the corp account

    again = setup.sign_in(browser, prompt="login")  # again through corp: the existing link, the same user
    assert _claims(setup.tokens(again["code"])["id_token"])["sub"] == claims["sub"]


def test_broker_oidc_links_by_verified_email_of_an_authoritative_domain(live: Env, browser: httpx.Client) -> None:
    setup = Setup(live, email_domains=("corp.example",))
    existing = live.user(setup.apps, f"local-{setup.username}", None, email=setup.email, email_verified=True)
    answer = setup.sign_in(browser)
    assert _claims(setup.tokens(answer["code"])["id_token"])["sub"] == existing


def _no_session(live: Env, setup: Setup, browser: httpx.Client) -> bool:
    return not any(c.name == live.ctx.settings.sessions.cookie_name and setup.apps.slug in (c.path or "")
                   for c in browser.cookies.jar)  # fmt: skip


def test_broker_oidc_unverifiable_email_of_an_account_asks_for_proof(live: Env, browser: httpx.Client) -> None:
    setup = Setup(live)  # corp is not authoritative for corp.example here: its email links nothing by itself
    local = f"local-{setup.username}"
    existing = live.user(setup.apps, local, "local password 123", email=setup.email, email_verified=True)
    page = setup.callback(browser)
    assert page.status_code == 200 and setup.email in page.text and _no_session(live, setup, browser)
    (form,) = parse_forms(page.text)
    assert form.action.endswith(f"/broker/{setup.alias}/link")
    wrong = browser.post(form.action, data={**form.inputs, "username": local, "password": "not it"})
    assert wrong.status_code == 200 and "Incorrect" in wrong.text and _no_session(live, setup, browser)
    with httpx.Client(base_url=live.base_url, follow_redirects=False, timeout=15) as other:
        stolen = other.post(form.action, data={**form.inputs, "username": local, "password": "local password 123"})
        assert stolen.status_code in (400, 403)  # the proof and its interaction belong to the first browser
    done = browser.post(form.action, data={**form.inputs, "username": local, "password": "local password 123"})
    assert done.status_code == 303, done.text
    claims = _claims(setup.tokens(query_of(done.headers["location"])["code"])["id_token"])
    assert claims["sub"] == existing and claims["amr"][:2] == ["fed", "pwd"]
    assert browser.post(form.action, data={**form.inputs, "username": local, "password": "local password 123"}
                        ).status_code in (400, 403)  # fmt: skip  # one link per proof
    again = setup.sign_in(browser, prompt="login")  # from now on the link is enough
    assert _claims(setup.tokens(again["code"])["id_token"])["sub"] == existing
    rows = audit_rows(live, setup.apps, with_action("link.create"))
    assert only(rows, "link.create")["details"]["how"] == "proof"


def test_broker_oidc_no_jit_and_no_match_asks_for_an_account_with_no_session(live: Env, browser: httpx.Client) -> None:
    setup = Setup(live, jit=False)
    page = setup.callback(browser)
    assert page.status_code == 200 and "not linked" in page.text
    assert _no_session(live, setup, browser)


def test_broker_oidc_state_replayed_or_in_another_browser_refused(live: Env, browser: httpx.Client) -> None:
    setup = Setup(live)
    back = setup.upstream_answer(browser)
    callback = f"/tenants/{setup.apps.slug}/broker/{setup.alias}/callback"
    with httpx.Client(base_url=live.base_url, follow_redirects=False, timeout=15) as other:
        assert other.get(callback, params=back).status_code == 400  # another browser: no binding cookie
    assert browser.get(callback, params=back).status_code == 303
    assert browser.get(callback, params=back).status_code in (400, 403)  # replay: state already used
    forged = {**back, "state": back["state"][:-4] + "AAAA"}
    assert browser.get(callback, params=forged).status_code == 400


def test_broker_oidc_mixed_up_callback_refused(live: Env, browser: httpx.Client) -> None:
    setup = Setup(live)
    back = setup.upstream_answer(browser)
    forged_iss = {**back, "iss": "https://attacker.example"}
    response = browser.get(f"/tenants/{setup.apps.slug}/broker/{setup.alias}/callback", params=forged_iss)
    assert response.status_code == 400 and "text/html" in response.headers["content-type"]


def test_broker_decisions_are_audited_with_upstream_and_reason(live: Env, browser: httpx.Client) -> None:
    setup = Setup(live)
    setup.sign_in(browser)
    rows = audit_rows(live, setup.apps, with_action("signin.broker"))
    signin, created = only(rows, "signin.broker"), only(rows, "link.create")
    assert signin["outcome"] == "success" and signin["details"] == {"alias": "corp", "how": "jit"}
    assert created["details"]["how"] == "jit" and created["target_id"] == signin["target_id"]
    assert only(rows, "idp.create")["details"]["alias"] == "corp"

    refused = Setup(live, jit=False)
    assert refused.callback(browser).status_code == 200  # the page that asks for an existing account
    rows = audit_rows(live, refused.apps, with_action("signin.broker"))
    entry = only(rows, "signin.broker")
    assert (entry["outcome"], entry["details"]) == (
        "failure",
        {"alias": "corp", "reason": "proof_required:no_account"},
    )
    assert not [row for row in rows if row["action"] == "link.create"]


def test_broker_link_removal_ends_its_sessions(live: Env, browser: httpx.Client) -> None:
    setup = Setup(live)
    setup.sign_in(browser)

    async def links() -> list[Any]:
        async with live.uow() as uow:
            return await list_links(uow, tenant_id=setup.apps.id)

    (found,) = live.run(links)
    assert found.alias == "corp" and found.subject == setup.corp_user

    async def remove() -> None:
        async with live.uow() as uow:
            await remove_link(uow, tenant_id=setup.apps.id, link_id=found.id, how="operator")

    live.run(remove)
    assert live.run(links) == []
    # The apps session this link made is over: a new authorization request must sign in again.
    _verifier, challenge = pkce_pair()
    params = authorize_params(client_id=setup.app_client, redirect_uri=APP_REDIRECT, code_challenge=challenge)
    response = browser.get(f"/tenants/{setup.apps.slug}/authorize", params=params)
    assert response.status_code == 303 and "/interaction/" in response.headers["location"]
