"""SAML 2.0 sign-in through idhub's own routes, with pysaml2 as the real IdP (SQLite and PostgreSQL).

app -> /authorize (idp_hint) -> /broker/{alias}/login (AuthnRequest on HTTP-Redirect, RelayState of at
most 80 bytes, sealed state in a cookie) -> pysaml2 signs a Response -> cross-site POST to the ACS
(no cookies: it only hands the Response back to the browser) -> same-site POST to ``continue`` (the
browser binding, the Response, the single-use state and the assertion replay cache) -> the app's code.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from lxml import etree
from saml2 import BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_PERSISTENT, NAMEID_FORMAT_TRANSIENT
from saml2.server import Server

from idhub.app import create_app
from idhub.broker.providers import NewProvider
from idhub.broker.saml_xml import NS
from idhub.oidc.interaction import BROWSER_COOKIE
from idhub.web.broker import SAML_STATE_COOKIE
from tests.audit.test_audit import audit_rows, with_action
from tests.broker.test_saml import ATTRIBUTES, IDP, PPT, RSA_SHA256, SHA256, SSO, XMLSEC1, FixtureKeys, make_keys
from tests.conftest import PUBLIC_URL, TEST_ACTOR, Env, make_settings
from tests.flows import authorize_params, parse_forms, pkce_pair, query_of

pytestmark = pytest.mark.skipif(
    XMLSEC1 is None, reason="pysaml2, the test IdP, signs with the xmlsec1 binary (Debian package xmlsec1)"
)
APP_REDIRECT = "https://app.example/cb"
ALIAS = "corp"


def _idp_config(folder: Path, keys: FixtureKeys, sp_metadata: str | None, **service: Any) -> IdPConfig:
    (folder / "idp.key").write_text(keys.key_pem)
    (folder / "idp.crt").write_text(keys.cert_pem)
    conf = IdPConfig()
    conf.load(
        {
            "entityid": IDP,
            "service": {
                "idp": {
                    "endpoints": {"single_sign_on_service": [(SSO, BINDING_HTTP_REDIRECT)]},
                    "policy": {"default": {"lifetime": {"minutes": 15}, "name_form": NAME_FORMAT_URI}},
                    "name_id_format": [NAMEID_FORMAT_PERSISTENT, NAMEID_FORMAT_TRANSIENT],
                    **service,
                }
            },
            "key_file": str(folder / "idp.key"),
            "cert_file": str(folder / "idp.crt"),
            "xmlsec_binary": XMLSEC1,
            "metadata": {"inline": [sp_metadata]} if sp_metadata else {},
        }
    )
    return conf


class Saml:
    """A tenant with an app and a SAML upstream served by pysaml2."""

    def __init__(self, env: Env, folder: Path, *, idp_initiated: bool = False) -> None:
        self.env = env
        self.tenant = env.tenant()
        self.client_id, self.secret = env.oauth_client(
            self.tenant,
            redirect_uris=[APP_REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            first_party=True,
        )
        keys = make_keys("test-idp")
        metadata = create_metadata_string(None, config=_idp_config(folder, keys, None), sign=False)
        new = NewProvider(
            alias=ALIAS,
            type="saml",
            metadata_xml=metadata,
            tenant_issuer=self.tenant.issuer,
            allow_idp_initiated=idp_initiated,
        )

        async def create() -> None:
            async with env.ctx.uow(actor=TEST_ACTOR, surface="test") as uow:
                await env.ctx.broker.providers(uow).create(self.tenant.id, new)

        env.run(create)
        base = f"/tenants/{self.tenant.slug}/broker/{ALIAS}/saml"
        self.metadata_path, self.acs_path, self.continue_path = f"{base}/metadata", f"{base}/acs", f"{base}/continue"
        sp_metadata = env.client.get(self.metadata_path)
        assert sp_metadata.status_code == 200, sp_metadata.text
        assert sp_metadata.headers["content-type"].startswith("application/samlmetadata+xml")
        self.idp = Server(config=_idp_config(folder, keys, sp_metadata.text))

    def start(self) -> tuple[dict[str, str], str]:
        """Start a sign-in in ``env.client``; return the IdP's query (SAMLRequest, RelayState) and the verifier."""
        verifier, challenge = pkce_pair()
        params = authorize_params(
            client_id=self.client_id, redirect_uri=APP_REDIRECT, code_challenge=challenge,
            extra_params={"idp_hint": ALIAS},
        )  # fmt: skip
        http = self.env.client
        # idp_hint: the authorization request answers with the AuthnRequest itself (and the state cookie).
        login = http.get(f"/tenants/{self.tenant.slug}/authorize", params=params, follow_redirects=False)
        assert login.status_code == 303, login.text
        location = login.headers["location"]
        assert location.startswith(SSO + "?")
        assert SAML_STATE_COOKIE in login.headers["set-cookie"]
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}, verifier

    def answer(
        self, query: dict[str, str], *, unsolicited: bool = False, name_id_format: str | None = None, **response: Any
    ) -> str:
        """Let pysaml2 answer the AuthnRequest; return the base64 SAMLResponse."""
        request = self.idp.parse_authn_request(query["SAMLRequest"], BINDING_HTTP_REDIRECT)
        policy = request.message.name_id_policy
        if name_id_format is not None:
            policy = copy.copy(policy)
            policy.format = name_id_format
        acs = f"{PUBLIC_URL}{self.acs_path}"
        assert request.message.assertion_consumer_service_url == acs
        xml = self.idp.create_authn_response(
            dict(ATTRIBUTES),
            None if unsolicited else request.message.id,
            acs,
            f"{PUBLIC_URL}{self.metadata_path}",
            name_id_policy=policy,
            userid="alice",
            authn={"class_ref": PPT, "authn_auth": IDP},
            sign_assertion=True,
            sign_alg=RSA_SHA256,
            digest_alg=SHA256,
            **response,
        )
        return base64.b64encode(str(xml).encode()).decode()

    def post_back(self, saml_response: str, relay_state: str, **headers: str) -> Any:
        """POST at the ACS (cross-site: no cookies), then submit its form to ``continue`` from the browser."""
        page = self.env.client.post(
            self.acs_path,
            data={"SAMLResponse": saml_response, "RelayState": relay_state},
            headers={"cookie": ""},  # a cross-site POST carries none of idhub's SameSite=Lax cookies
            follow_redirects=False,
        )
        assert page.status_code == 200, page.text
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        form = parse_forms(page.text)[0]
        assert form.action == f"{self.tenant.issuer}/broker/{ALIAS}/saml/continue"
        return self.env.client.post(form.action, data=form.inputs, headers=headers, follow_redirects=False)


def reasons(env: Env, saml: Saml, expected: str, *, count: int = 1) -> list[str]:
    """Return the reasons of the tenant's refused brokered sign-ins, once ``expected`` was seen ``count`` times."""

    def found(rows: list[dict[str, Any]]) -> list[str]:
        return [row["details"].get("reason") for row in rows if row["action"] == "signin.broker"]

    return found(audit_rows(env, saml.tenant, lambda rows: found(rows).count(expected) >= count))


@pytest.fixture
def saml(env: Env, tmp_path: Path) -> Iterator[Saml]:
    env.client.cookies.clear()
    yield Saml(env, tmp_path)
    env.client.cookies.clear()


def test_saml_sign_in_through_routes_reaches_the_app(saml: Saml, env: Env) -> None:
    query, verifier = saml.start()
    assert len(query["RelayState"].encode()) <= 80  # Bindings §3.4.3
    response = saml.post_back(saml.answer(query), query["RelayState"])
    assert response.status_code == 303, [row["details"] for row in audit_rows(env, saml.tenant)]
    back = query_of(response.headers["location"])
    assert response.headers["location"].startswith(APP_REDIRECT) and "code" in back
    assert SAML_STATE_COOKIE in response.headers["set-cookie"]  # cleared
    token = env.client.post(
        f"/tenants/{saml.tenant.slug}/token",
        data={"grant_type": "authorization_code", "code": back["code"], "redirect_uri": APP_REDIRECT,
              "code_verifier": verifier},
        auth=(saml.client_id, saml.secret or ""),
    )  # fmt: skip
    assert token.status_code == 200, token.text
    payload = token.json()["id_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert "fed" in claims["amr"] and claims["acr"] == PPT
    refreshed = env.client.post(
        f"/tenants/{saml.tenant.slug}/token",
        data={"grant_type": "refresh_token", "refresh_token": token.json()["refresh_token"]},
        auth=(saml.client_id, saml.secret or ""),
    )
    assert refreshed.status_code == 200, refreshed.text
    payload = refreshed.json()["id_token"].split(".")[1]
    again = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert again["acr"] == PPT and again["amr"] == claims["amr"]  # OIDC Core §12.2: still how they signed in
    rows = [
        row for row in audit_rows(env, saml.tenant, with_action("signin.broker")) if row["action"] == "signin.broker"
    ]
    assert rows and rows[-1]["outcome"] == "success" and rows[-1]["details"]["alias"] == ALIAS


def test_saml_response_replayed_is_refused(saml: Saml, env: Env) -> None:
    query, _ = saml.start()
    answer = saml.answer(query)
    # the browser's own cookies, kept by whoever replays (continue clears the state cookie)
    cookie = f"{BROWSER_COOKIE}={env.client.cookies.get(BROWSER_COOKIE)}; "
    cookie += f"{SAML_STATE_COOKIE}={env.client.cookies.get(SAML_STATE_COOKIE)}"
    assert saml.post_back(answer, query["RelayState"], cookie=cookie).status_code == 303
    again = saml.post_back(answer, query["RelayState"], cookie=cookie)
    assert again.status_code == 400
    assert "state_replayed" in reasons(env, saml, "state_replayed")


def test_saml_continue_in_another_browser_is_refused(saml: Saml, env: Env) -> None:
    query, _ = saml.start()
    state = env.client.cookies.get(SAML_STATE_COOKIE)
    cookie = f"{BROWSER_COOKIE}={'b' * 43}; {SAML_STATE_COOKIE}={state}"
    response = saml.post_back(saml.answer(query), query["RelayState"], cookie=cookie)
    assert response.status_code == 400
    assert "cross_browser_state" in reasons(env, saml, "cross_browser_state")
    assert "code=" not in response.headers.get("location", "")


def test_saml_transient_name_id_is_never_a_link_key(saml: Saml, env: Env) -> None:
    query, _ = saml.start()
    response = saml.post_back(saml.answer(query, name_id_format=NAMEID_FORMAT_TRANSIENT), query["RelayState"])
    assert response.status_code == 400
    assert "transient_subject" in reasons(env, saml, "transient_subject")


def test_saml_relay_state_of_another_sign_in_is_refused(saml: Saml, env: Env) -> None:
    query, _ = saml.start()
    response = saml.post_back(saml.answer(query), "_" + "0" * 40)
    assert response.status_code == 400
    assert "bad_relay_state" in reasons(env, saml, "bad_relay_state")


def test_saml_unsolicited_response_refused_when_idp_initiated_is_off(saml: Saml, env: Env) -> None:
    query, _ = saml.start()
    answer = saml.answer(query, unsolicited=True)
    env.client.cookies.clear()
    response = saml.post_back(answer, "")
    assert response.status_code == 400


def test_saml_acs_refuses_long_relay_state_and_oversized_body(saml: Saml, env: Env) -> None:
    too_long = env.client.post(saml.acs_path, data={"SAMLResponse": "PHg+", "RelayState": "r" * 81})
    assert too_long.status_code == 400
    huge = env.client.post(saml.acs_path, data={"SAMLResponse": "A" * 500_000})
    assert huge.status_code == 413
    garbage = env.client.post(
        saml.continue_path, data={"SAMLResponse": "!!!", "RelayState": "x"}, follow_redirects=False
    )
    assert garbage.status_code == 400


def test_saml_acs_escapes_what_it_echoes(saml: Saml, env: Env) -> None:
    page = env.client.post(saml.acs_path, data={"SAMLResponse": '"><script>alert(1)</script>', "RelayState": "x"})
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text


def test_saml_metadata_names_the_acs_and_unknown_alias_is_404(saml: Saml, env: Env) -> None:
    document = etree.fromstring(env.client.get(saml.metadata_path).content)
    acs = document.find("md:SPSSODescriptor/md:AssertionConsumerService", NS)
    assert acs is not None and acs.get("Location") == f"{PUBLIC_URL}{saml.acs_path}"
    assert env.client.get(f"/tenants/{saml.tenant.slug}/broker/nope/saml/metadata").status_code == 404


@contextlib.contextmanager
def _second_process(env: Env, tmp_path: Path) -> Iterator[TestClient]:
    """Another idhub on the same database (another process, or this one after a restart)."""
    app = create_app(make_settings(env.ctx.settings.database_url, tmp_path / "second"))
    with TestClient(app, base_url=PUBLIC_URL) as client:
        yield client


def test_saml_idp_initiated_sign_in_and_replay_across_processes(env: Env, tmp_path: Path) -> None:
    env.client.cookies.clear()
    saml = Saml(env, tmp_path, idp_initiated=True)
    query, _ = saml.start()
    answer = saml.answer(query, unsolicited=True)
    env.client.cookies.clear()
    response = saml.post_back(answer, "https://evil.example/steal")
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"{saml.tenant.issuer}/account"  # RelayState is never followed
    assert env.ctx.settings.sessions.cookie_name in response.headers["set-cookie"]
    # The same assertion again, here and at another idhub on the same database (a restart looks the same).
    env.client.cookies.clear()
    assert saml.post_back(answer, "").status_code == 400
    (tmp_path / "second").mkdir()
    with _second_process(env, tmp_path) as other:
        replay = other.post(saml.continue_path, data={"SAMLResponse": answer}, follow_redirects=False)
    assert replay.status_code == 400
    assert reasons(env, saml, "assertion_replayed", count=2).count("assertion_replayed") == 2
    env.client.cookies.clear()


def test_saml_idp_create_validates_metadata(env: Env) -> None:
    tenant = env.tenant()

    async def create(metadata: bytes | None, url: str | None = None) -> None:
        async with env.ctx.uow(actor=TEST_ACTOR, surface="test") as uow:
            await env.ctx.broker.providers(uow).create(
                tenant.id,
                NewProvider(
                    alias=f"s{uuid.uuid4().hex[:6]}", type="saml", metadata_xml=metadata, metadata_url=url,
                    tenant_issuer=tenant.issuer,
                ),
            )  # fmt: skip

    from idhub.errors import Invalid

    for bad in (b"<x/>", b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>', b"not xml"):
        with pytest.raises(Invalid):
            env.run(create, bad)
    with pytest.raises(Invalid):
        env.run(create, None)
