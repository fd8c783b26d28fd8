"""Headless Chromium clicks through app -> idhub -> upstream -> idhub -> app for OIDC, SAML and a social preset.

Everything runs over real HTTP on loopback: idhub is the ``live`` server; the upstreams are a second
idhub tenant (OIDC), pysaml2 served by :mod:`tests.interop.saml_idp` (SAML 2.0) and a GitHub-style
OAuth 2 stand-in (social). The app is not running: Playwright serves its home page (whose button
starts the sign-in), the test reads the authorization response from the browser's request to the
app's redirect URI and redeems the code at ``/token`` like the app would, and the tokens must carry
``amr: fed``, the linked user and what the upstream's mapping rules made of the person's upstream
claims. Chromium resolves no name but loopback ones.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select

from idhub.broker.linking import list_links
from idhub.broker.providers import NewProvider
from idhub.events import Actor
from idhub.storage.models import Group, GroupMember
from idhub.tenants.service import TenantInfo
from tests.broker.social_standin import SocialStandIn, serve
from tests.conftest import Env
from tests.flows import authorize_params, pkce_pair, query_of
from tests.interop.test_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.interop, pytest.mark.browser]

APP_ORIGIN = "https://app.example"
APP_HOME = f"{APP_ORIGIN}/"
APP_REDIRECT = f"{APP_ORIGIN}/cb"
PASSWORD = "correct horse battery"
TIMEOUT_MS = 10_000
OPERATOR = Actor("cli", "test")
_INTERACTION = re.compile(r"/interaction/[A-Za-z0-9_-]+")
# Loopback only: the upstreams and idhub are on 127.0.0.1 or localhost; nothing else resolves (app.example
# included: the app is not running, and no DNS query leaves the machine).
LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"


def _claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


class App:
    """An app (confidential, first party) registered at ``tenant``, and its authorization requests."""

    def __init__(self, live: Env, tenant: TenantInfo) -> None:
        self.live = live
        self.tenant = tenant
        self.client_id, self.secret = live.oauth_client(
            tenant,
            redirect_uris=[APP_REDIRECT],
            grant_types=["authorization_code"],
            scope="openid profile email",
            first_party=True,
        )
        self.verifier = ""

    def authorization_url(self, **extra: str) -> str:
        """Return a code + PKCE authorization request of the app (a fresh verifier each time)."""
        self.verifier, challenge = pkce_pair()
        params = authorize_params(
            client_id=self.client_id, redirect_uri=APP_REDIRECT, code_challenge=challenge,
            scope="openid profile email", state="app-state", extra_params=extra,
        )  # fmt: skip
        return f"{self.tenant.issuer}/authorize?{urlencode(params)}"

    def redeem(self, code: str) -> dict[str, Any]:
        """Redeem ``code`` at the token endpoint as the app; return the token response."""
        response = httpx.post(
            f"{self.tenant.issuer}/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT,
                  "code_verifier": self.verifier},
            auth=(self.client_id, self.secret or ""),
            timeout=10,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Launch Debian's Chromium through Playwright (names other than loopback do not resolve), or skip."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, LOOPBACK_ONLY]
        )
        try:
            yield instance
        finally:
            instance.close()


class Browser:
    """One browser context (no cookies yet) and its page; it records every request the page makes."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.page = context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: list[Any] = []
        self.home = ""
        self.page.on("request", self._seen)
        # The app is not running: its pages are answered here. Playwright hands a route handler only the
        # first request of a redirect chain, so the redirect back to the app is answered only sometimes;
        # the authorization response is read from the request log instead (``until_app``).
        context.route(APP_ORIGIN + "/**", self._app)

    def _seen(self, request: Any) -> None:
        self.requests.append(request)

    def _app(self, route: Any) -> None:
        body = self.home if route.request.url == APP_HOME else "<p>back at the app</p>"
        route.fulfill(status=200, content_type="text/html", body=f"<!doctype html><title>App</title>{body}")

    def open_app(self, authorization_url: str) -> None:
        """Open the app's home page: its one button starts ``authorization_url``."""
        href = html.escape(authorization_url, quote=True)
        self.home = f'<h1>App</h1><a id="app-sign-in" href="{href}">Sign in</a>'
        self.page.goto(APP_HOME)

    def until_app(self, action: Callable[[], None]) -> tuple[dict[str, str], Any]:
        """Run ``action`` and wait until the browser is sent to the app's redirect URI.

        Return the authorization response (its query) and the request that redirected there.
        """
        with self.page.expect_request(lambda request: request.url.startswith(APP_REDIRECT + "?")) as arrival:
            action()
        request = arrival.value
        assert request.redirected_from is not None and request.redirected_from.response().status == 303
        return query_of(request.url), request.redirected_from

    def documents(self) -> list[str]:
        """Return ``METHOD url-without-query`` of every document the page requested (redirects included).

        Interaction ids are shown as ``ID``.
        """
        return [
            f"{r.method} {_INTERACTION.sub('/interaction/ID', r.url.split('?')[0])}"
            for r in self.requests
            if r.resource_type == "document"
        ]

    def request_to(self, method: str, url: str) -> Any:
        """Return the last request the page made with ``method`` to ``url``."""
        found = [r for r in self.requests if r.method == method and r.url.split("?")[0] == url]
        assert found, f"no {method} {url} in {self.documents()}"
        return found[-1]


@contextmanager
def browsing(browser: Any) -> Iterator[Browser]:
    """Open a fresh browser context (no cookies) for one sign-in."""
    context = browser.new_context()
    try:
        yield Browser(context)
    finally:
        context.close()


def _create_provider(live: Env, tenant: TenantInfo, new: NewProvider) -> Any:
    async def work() -> Any:
        async with live.ctx.uow(actor=OPERATOR, surface="cli") as uow:
            return await live.ctx.broker.providers(uow).create(tenant.id, new)

    return live.run(work)


def _create_group(live: Env, tenant: TenantInfo, name: str) -> uuid.UUID:
    async def work() -> uuid.UUID:
        async with live.uow() as uow:
            group_id: uuid.UUID = (await live.ctx.directory(uow).groups.create(tenant.id, name=name)).id
            return group_id

    return live.run(work)  # type: ignore[no-any-return]


def _groups_of(live: Env, user_id: str) -> list[tuple[str, str | None]]:
    """Return the (group name, membership source) of a user's direct memberships."""

    async def work() -> list[tuple[str, str | None]]:
        async with live.ctx.sessionmaker() as session:
            rows = await session.execute(
                select(Group.display_name, GroupMember.source)
                .join(Group, Group.id == GroupMember.group_id)
                .where(GroupMember.user_id == uuid.UUID(user_id))
            )
            return sorted((name, source) for name, source in rows)

    return live.run(work)  # type: ignore[no-any-return]


def _links(live: Env, tenant: TenantInfo) -> list[Any]:
    async def work() -> list[Any]:
        async with live.uow() as uow:
            return await list_links(uow, tenant_id=tenant.id)

    return live.run(work)  # type: ignore[no-any-return]


def _check_tokens(app: App, tokens: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Check the ID and access tokens of a brokered sign-in; return the ID token's claims."""
    id_token, access = _claims(tokens["id_token"]), _claims(tokens["access_token"])
    assert id_token["iss"] == app.tenant.issuer and id_token["aud"] == app.client_id
    assert id_token["amr"][0] == "fed"  # RFC 8176: signed in through a federated upstream
    assert access["sub"] == id_token["sub"] and access["client_id"] == app.client_id
    assert set(access["scope"].split()) >= {"openid", "email", "profile"}
    check(id_token)
    return id_token


# -- OpenID Connect: a second idhub tenant is the upstream; the person clicks its button ----------------


def test_browser_broker_oidc_login_page_button_to_corp_and_back_with_mapped_claims(live: Env, browser: Any) -> None:
    corp, apps = live.tenant(), live.tenant()
    username = f"alice-{uuid.uuid4().hex[:6]}"
    email = f"{username}@corp.example"
    corp_user = live.user(corp, username, PASSWORD, email=email, email_verified=True)
    broker_client, broker_secret = live.oauth_client(
        corp, redirect_uris=[f"{apps.issuer}/broker/corp/callback"], grant_types=["authorization_code"],
        scope="openid profile email", first_party=True,
    )  # fmt: skip
    mapping = {
        "rules": [
            {"kind": "attribute", "target": "formattedName", "template": "{preferred_username} of Corp"},
            {"kind": "attribute", "target": "givenName", "claim": "email", "regex": r"([a-z]+)-\w+@corp\.example",
             "replace": r"\1"},
            {"kind": "constant", "target": "familyName", "value": "Corporate"},
            {"kind": "constant", "group": "Corp staff"},
        ]
    }  # fmt: skip
    provider = _create_provider(
        live, apps,
        NewProvider(alias="corp", type="oidc", issuer=corp.issuer, client_id=broker_client,
                    client_secret=broker_secret, internal=True, display_name="Corp", mapping=json.dumps(mapping),
                    email_domains=("corp.example",)),
    )  # fmt: skip
    _create_group(live, apps, "Corp staff")
    app = App(live, apps)

    with browsing(browser) as tab:
        page = tab.page
        tab.open_app(app.authorization_url())  # no idp_hint: idhub's own login page, one button per upstream
        page.click("a#app-sign-in")
        page.wait_for_url(f"{apps.issuer}/interaction/**")
        page.click("a#upstream-corp")
        page.wait_for_url(f"{corp.issuer}/interaction/**")  # corp's own sign-in page
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        answer, last = tab.until_app(lambda: page.click("button#sign-in"))
        assert last.url.startswith(f"{apps.issuer}/broker/corp/callback?")  # the broker sent the browser on
        assert query_of(last.url)["iss"] == corp.issuer  # RFC 9207 on the way back from corp
        documents = tab.documents()
    assert documents == [
        f"GET {APP_HOME}",
        f"GET {apps.issuer}/authorize",  # the app's authorization request
        f"GET {apps.issuer}/interaction/ID",  # idhub's login page
        f"GET {apps.issuer}/broker/corp/login",  # the person chose "Sign in with Corp"
        f"GET {corp.issuer}/authorize",  # the upstream's authorization request
        f"GET {corp.issuer}/interaction/ID",  # corp's login page
        f"POST {corp.issuer}/interaction/ID/login",  # the person signs in at corp
        f"GET {apps.issuer}/broker/corp/callback",  # corp's answer, through the broker
        f"GET {APP_REDIRECT}",  # and back at the app
    ], documents
    assert answer["state"] == "app-state" and answer["iss"] == apps.issuer

    def mapped(claims: dict[str, Any]) -> None:
        assert "pwd" in claims["amr"]  # what corp said about how the person signed in
        assert claims["email"] == email and claims["email_verified"] is True  # corp owns corp.example here
        assert claims["name"] == f"{username} of Corp"  # template over the upstream's preferred_username
        assert claims["given_name"] == "alice"  # regex over the upstream's email claim
        assert claims["family_name"] == "Corporate"  # constant

    claims = _check_tokens(app, app.redeem(answer["code"]), mapped)
    (link,) = _links(live, apps)
    assert str(link.user_id) == claims["sub"] and link.subject == corp_user and link.alias == "corp"
    assert claims["sub"] != corp_user  # a user of the apps directory (made just in time), linked to corp's
    assert _groups_of(live, claims["sub"]) == [("Corp staff", f"idp:{provider.id}")]


# -- SAML 2.0: pysaml2 on another site (localhost), reached by idp_hint --------------------------------

XMLSEC1 = shutil.which("xmlsec1")
DISPLAY_NAME_OID = "urn:oid:2.16.840.1.113730.3.1.241"  # displayName (eduPerson / inetOrgPerson)
IS_MEMBER_OF_OID = "urn:oid:1.3.6.1.4.1.5923.1.5.1.1"  # isMemberOf


@pytest.fixture
def saml_idp_module() -> Any:
    """Import the pysaml2 stand-in, or skip with the reason."""
    if XMLSEC1 is None:
        pytest.skip("pysaml2, the test IdP, signs with the xmlsec1 binary (Debian package xmlsec1)")
    pytest.importorskip("saml2", reason="pysaml2 is not installed")
    from tests.interop import saml_idp

    return saml_idp


def test_browser_broker_saml_idp_hint_through_pysaml2_and_back_with_mapped_claims(
    live: Env, browser: Any, saml_idp_module: Any, tmp_path: Path
) -> None:
    attributes = {
        "mail": ["alice@corp.example"],
        "givenName": ["Alice"],
        "sn": ["Liddell"],
        "displayName": ["Alice Liddell"],
        "isMemberOf": ["staff", "admins"],
    }
    idp = saml_idp_module.SamlIdp(tmp_path, {"alice": saml_idp_module.IdpUser(PASSWORD, attributes)})
    assert idp.sso_url.startswith("http://localhost:")  # another site than idhub's 127.0.0.1
    apps = live.tenant()
    # pysaml2 names attributes in the URI format, as Shibboleth and most IdPs do: rules use those names.
    mapping = {
        "rules": [
            {"kind": "attribute", "target": "formattedName", "saml_attribute": DISPLAY_NAME_OID,
             "regex": r"(\w+) (\w+)", "replace": r"\2, \1"},
            {"kind": "group", "saml_attribute": IS_MEMBER_OF_OID, "match": "admins", "replace": "Corp admins"},
        ]
    }  # fmt: skip
    provider = _create_provider(
        live, apps,
        NewProvider(alias="corp-saml", type="saml", metadata_xml=idp.metadata(), tenant_issuer=apps.issuer,
                    internal=True, mapping=json.dumps(mapping)),
    )  # fmt: skip
    _create_group(live, apps, "Corp admins")
    _create_group(live, apps, "staff")  # exists, but no rule maps the upstream's "staff" to it
    base = f"{apps.issuer}/broker/corp-saml/saml"
    sp_metadata = httpx.get(f"{base}/metadata", timeout=10)
    assert sp_metadata.status_code == 200, sp_metadata.text
    idp.trust(sp_metadata.text)
    app = App(live, apps)

    with idp.running(), browsing(browser) as tab:
        page = tab.page
        tab.open_app(app.authorization_url(idp_hint="corp-saml"))  # the app's own "Sign in with Corp" button
        page.click("a#app-sign-in")
        page.wait_for_url(f"{idp.sso_url}?**")  # straight to the IdP: no idhub login page
        page.fill("#idp-username", "alice")
        page.fill("#idp-password", PASSWORD)
        # The IdP's page auto-posts to the ACS, whose page auto-posts to continue, which redirects to the app.
        answer, proceed = tab.until_app(lambda: page.click("#idp-sign-in"))
        assert proceed.method == "POST" and proceed.url == f"{base}/continue"
        acs = tab.request_to("POST", f"{base}/acs")
        acs_headers, continue_headers = acs.all_headers(), proceed.all_headers()
        cookie_names = {cookie["name"] for cookie in tab.context.cookies(apps.issuer)}
        documents = tab.documents()
    assert documents == [
        f"GET {APP_HOME}",
        f"GET {apps.issuer}/authorize",  # idp_hint: straight to the upstream
        f"GET {idp.sso_url}",  # AuthnRequest on the HTTP-Redirect binding: the IdP's sign-in page
        f"POST {idp.sso_url}",  # the person signs in at the IdP
        f"POST {base}/acs",  # the IdP's page auto-posts the Response (HTTP-POST binding)
        f"POST {base}/continue",  # idhub's page auto-posts it on, same-site
        f"GET {APP_REDIRECT}",
    ], documents
    assert answer["state"] == "app-state" and answer["iss"] == apps.issuer
    assert idp.issued == ["alice"] and [(s.method, s.path) for s in idp.seen] == [("GET", "/sso"), ("POST", "/sso")]
    # SameSite=Lax at work: the IdP's cross-site POST reaches the ACS with none of idhub's cookies, and the
    # ACS's own same-site auto-post carries them to ``continue``, which ties the Response to this browser.
    assert acs_headers["origin"] == idp.base_url  # a POST from the IdP's site, which is not idhub's
    assert cookie_names and not any(f"{name}=" in acs_headers.get("cookie", "") for name in cookie_names)
    assert "idhub_broker_saml=" in continue_headers.get("cookie", "")
    assert "idhub_broker_saml" not in cookie_names  # continue cleared the sign-in's state cookie

    def mapped(claims: dict[str, Any]) -> None:
        assert claims["acr"] == "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
        assert claims["email"] == "alice@corp.example"
        assert claims["name"] == "Liddell, Alice"  # regex over the SAML displayName attribute (by its OID)
        assert (claims["given_name"], claims["family_name"]) == ("Alice", "Liddell")  # default rules

    claims = _check_tokens(app, app.redeem(answer["code"]), mapped)
    (link,) = _links(live, apps)
    assert str(link.user_id) == claims["sub"] and link.alias == "corp-saml"
    assert _groups_of(live, claims["sub"]) == [("Corp admins", f"idp:{provider.id}")]


# -- A social preset: GitHub (OAuth 2 + REST profile API), its stand-in on loopback, reached by idp_hint --


@pytest.fixture
def github() -> Iterator[SocialStandIn]:
    """Serve the GitHub (and Facebook) stand-in of ``tests.broker.social_standin`` on a loopback port."""
    yield from serve(SocialStandIn())


def test_browser_broker_github_preset_through_its_standin_and_back_with_mapped_claims(
    live: Env, browser: Any, github: SocialStandIn
) -> None:
    apps = live.tenant()
    mapping = {
        "rules": [
            {"kind": "attribute", "target": "formattedName", "template": "{name} (@{login})"},
            {"kind": "attribute", "target": "familyName", "claim": "name", "regex": r"The (\w+)", "replace": r"\1"},
            {"kind": "group", "claim": "type", "value": "User", "group": "GitHub users"},
        ]
    }  # fmt: skip
    provider = _create_provider(
        live, apps,
        NewProvider(alias="github", type="github", client_id=github.github_client_id,
                    client_secret=github.github_client_secret, internal=True, endpoints=github.endpoints("github"),
                    email_domains=("corp.example",), mapping=json.dumps(mapping)),
    )  # fmt: skip
    _create_group(live, apps, "GitHub users")
    app = App(live, apps)

    with browsing(browser) as tab:
        tab.open_app(app.authorization_url(idp_hint="github"))  # the app's own "Sign in with GitHub" button
        # The stand-in's authorization page consents at once and redirects back with code and state.
        answer, last = tab.until_app(lambda: tab.page.click("a#app-sign-in"))
        assert last.url.startswith(f"{apps.issuer}/broker/github/callback?")
        documents = tab.documents()
    assert documents == [
        f"GET {APP_HOME}",
        f"GET {apps.issuer}/authorize",  # idp_hint: straight to the upstream
        f"GET {github.base_url}/login/oauth/authorize",  # GitHub's authorization page
        f"GET {apps.issuer}/broker/github/callback",
        f"GET {APP_REDIRECT}",
    ], documents
    assert answer["state"] == "app-state" and answer["iss"] == apps.issuer
    # idhub redeemed GitHub's code once, then read the profile and the verified addresses.
    assert len(github.token_requests) == 1 and github.token_requests[0]["client_id"] == github.github_client_id
    assert [call["path"] for call in github.api_requests] == ["/user", "/user/emails"]

    def mapped(claims: dict[str, Any]) -> None:
        assert claims["email"] == "octocat@corp.example"  # GitHub's primary, verified address
        assert claims["email_verified"] is True  # and this upstream owns corp.example here
        assert claims["name"] == "The Octocat (@octocat)"  # template over GitHub's name and login
        assert claims["family_name"] == "Octocat"  # regex over GitHub's name

    claims = _check_tokens(app, app.redeem(answer["code"]), mapped)
    (link,) = _links(live, apps)
    assert str(link.user_id) == claims["sub"] and link.alias == "github"
    assert link.subject == "583231"  # GitHub's numeric id, never the renameable login
    assert _groups_of(live, claims["sub"]) == [("GitHub users", f"idp:{provider.id}")]
