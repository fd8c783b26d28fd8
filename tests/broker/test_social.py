"""GitHub and Facebook upstreams against loopback stand-ins that speak each network's wire format.

First the OAuth 2 connector alone (the good answers, what each network says about email verification,
then every bad answer and its reason code), then the provider commands, then whole sign-ins through
idhub's own routes: app -> /authorize (idp_hint) -> /broker/{alias}/login -> the network -> callback.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from idhub.broker.connector import CallbackInput, Identity, LoginSecrets
from idhub.broker.connectors.oauth2 import OAuth2Config, OAuth2Connector
from idhub.broker.connectors.oidc import pkce_challenge
from idhub.broker.errors import UpstreamRefused, UpstreamUnavailable
from idhub.broker.fetch import Fetcher, FetchPolicy
from idhub.broker.providers import PRESETS, NewProvider
from idhub.errors import Invalid
from tests.audit.test_audit import audit_rows
from tests.broker.social_standin import GITHUB_TOKEN, SocialStandIn, serve
from tests.conftest import TEST_ACTOR, Env
from tests.flows import authorize_params, pkce_pair, query_of

CALLBACK = "https://broker.example/tenants/apps/broker/social/callback"
INTERNAL = FetchPolicy(internal=True)
VERIFIER = "v" * 43
APP_REDIRECT = "https://app.example/cb"


@pytest.fixture(scope="module")
def upstream() -> Iterator[SocialStandIn]:
    yield from serve(SocialStandIn())


@pytest.fixture
def standin(upstream: SocialStandIn) -> SocialStandIn:
    """The stand-in with its default behaviour (address kept)."""
    upstream.reset()
    return upstream


def config_for(standin: SocialStandIn, network: str, **changes: Any) -> OAuth2Config:
    """Return the preset's configuration pointed at the stand-in."""
    preset = PRESETS[network]
    assert preset.issuer is not None
    github = network == "github"
    values: dict[str, Any] = {
        "network": network,
        "issuer": preset.issuer,
        "client_id": standin.github_client_id if github else standin.facebook_client_id,
        "client_secret": standin.github_client_secret if github else standin.facebook_client_secret,
        "scopes": preset.scopes,
        "policy": INTERNAL,
        **standin.endpoints(network),
        **changes,
    }
    return OAuth2Config(**values)


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    fetcher = Fetcher()
    try:
        yield fetcher
    finally:
        await fetcher.aclose()


@pytest.fixture
def github(standin: SocialStandIn, fetcher: Fetcher) -> OAuth2Connector:
    return OAuth2Connector(config_for(standin, "github"), fetcher=fetcher)


@pytest.fixture
def facebook(standin: SocialStandIn, fetcher: Fetcher) -> OAuth2Connector:
    return OAuth2Connector(config_for(standin, "facebook"), fetcher=fetcher)


async def callback(standin: SocialStandIn, connector: OAuth2Connector, **params: str) -> Identity:
    """Run the callback with a fresh code of the connector's network (``"-"`` drops a parameter)."""
    code = standin.issue_code(connector.config.network, CALLBACK, VERIFIER)
    answer = {name: value for name, value in {"code": code, "state": "s", **params}.items() if value != "-"}
    inputs = CallbackInput(params=answer, nonce="n", code_verifier=VERIFIER, request_id="_r")
    return await connector.handle_callback(inputs, callback_url=CALLBACK)


async def refused(reason: str, standin: SocialStandIn, connector: OAuth2Connector, **params: str) -> UpstreamRefused:
    with pytest.raises(UpstreamRefused) as caught:
        await callback(standin, connector, **params)
    assert caught.value.reason == reason, caught.value.internal
    return caught.value


# The connector alone


@pytest.mark.parametrize("network", ["github", "facebook"])
async def test_oauth2_login_url_carries_pkce_state_and_scope(
    standin: SocialStandIn, fetcher: Fetcher, network: str
) -> None:
    connector = OAuth2Connector(config_for(standin, network), fetcher=fetcher)
    secrets = LoginSecrets(nonce="n", code_verifier=VERIFIER, request_id="_r")
    start = await connector.login_url(state="sealed-state", callback_url=CALLBACK, secrets=secrets)
    query = query_of(start.url)
    assert start.url.startswith(connector.config.authorization_endpoint + "?")
    assert query["code_challenge"] == pkce_challenge(VERIFIER) and query["code_challenge_method"] == "S256"
    assert (query["state"], query["redirect_uri"], query["response_type"]) == ("sealed-state", CALLBACK, "code")
    assert query["scope"].split() == list(PRESETS[network].scopes)
    assert "nonce" not in query  # no ID token to bind it to


async def test_github_good_answer_becomes_identity(standin: SocialStandIn, github: OAuth2Connector) -> None:
    identity = await callback(standin, github)
    assert (identity.issuer, identity.subject, identity.username) == ("https://github.com", "583231", "octocat")
    assert identity.email == "octocat@corp.example" and identity.email_verified is True  # the verified primary
    assert identity.name == "The Octocat" and identity.claims["node_id"] == "MDQ6VXNlcjU4MzIzMQ=="
    sent = standin.token_requests[-1]
    assert sent["code_verifier"] == VERIFIER and sent["redirect_uri"] == CALLBACK
    assert sent["client_secret"] == standin.github_client_secret  # GitHub takes it in the form body
    calls = {call["path"]: call for call in standin.api_requests}
    for path in ("/user", "/user/emails"):
        assert calls[path]["authorization"].startswith("Bearer ")
        assert calls[path]["accept"] == "application/vnd.github+json" and calls[path]["api_version"] == "2022-11-28"
        assert "access_token" not in calls[path]["query"]  # RFC 6750 §2.1: the header, never the query


async def test_github_subject_is_the_numeric_id_never_the_login(
    standin: SocialStandIn, github: OAuth2Connector
) -> None:
    first = await callback(standin, github)
    standin.github_user = {**standin.github_user, "login": "renamed-octocat"}
    again = await callback(standin, github)
    assert first.subject == again.subject == "583231" and again.username == "renamed-octocat"


@pytest.mark.parametrize(
    ("emails", "email", "verified"),
    [
        # the primary address, not yet verified: carried, but never believed
        ([{"email": "new@corp.example", "primary": True, "verified": False}], "octocat@public.example", False),
        # a verified address that is not the primary one is only listed by the account: not trusted
        ([{"email": "side@corp.example", "primary": False, "verified": True}], "octocat@public.example", False),
        # "true" as a string is not the JSON true GitHub sends
        ([{"email": "x@corp.example", "primary": "true", "verified": "true"}], "octocat@public.example", False),
        ([], "octocat@public.example", False),
        ([{"email": "me@corp.example", "primary": True, "verified": True}], "me@corp.example", True),
    ],
)
async def test_github_email_trusted_only_when_primary_and_verified(
    standin: SocialStandIn, github: OAuth2Connector, emails: list[dict[str, Any]], email: str, verified: bool
) -> None:
    standin.github_emails = emails
    identity = await callback(standin, github)
    assert (identity.email, identity.email_verified) == (email, verified)


async def test_github_public_email_alone_is_not_verified(standin: SocialStandIn, github: OAuth2Connector) -> None:
    standin.github_emails = [{"email": "other@corp.example", "primary": True, "verified": False}]
    standin.github_user = {**standin.github_user, "email": None}
    identity = await callback(standin, github)
    assert identity.email is None and identity.email_verified is False


async def test_github_token_error_in_a_200_refused(standin: SocialStandIn, github: OAuth2Connector) -> None:
    standin.token_error = "bad_verification_code"
    caught = await refused("token_error", standin, github)
    assert "bad_verification_code" in (caught.internal or "")


async def test_github_wrong_client_secret_refused(standin: SocialStandIn, fetcher: Fetcher) -> None:
    connector = OAuth2Connector(config_for(standin, "github", client_secret="not-the-secret"), fetcher=fetcher)
    caught = await refused("token_error", standin, connector)
    assert "incorrect_client_credentials" in (caught.internal or "")


async def test_github_pkce_verifier_must_match_the_challenge(standin: SocialStandIn, github: OAuth2Connector) -> None:
    code = standin.issue_code("github", CALLBACK, "another-verifier-" + "x" * 30)
    inputs = CallbackInput(params={"code": code, "state": "s"}, code_verifier=VERIFIER)
    with pytest.raises(UpstreamRefused) as caught:
        await github.handle_callback(inputs, callback_url=CALLBACK)
    assert caught.value.reason == "token_error"


async def test_github_token_answer_is_form_encoded_unless_json_is_asked_for(
    standin: SocialStandIn, github: OAuth2Connector
) -> None:
    code = standin.issue_code("github", CALLBACK, None)
    form = {"client_id": standin.github_client_id, "client_secret": standin.github_client_secret, "code": code,
            "redirect_uri": CALLBACK}  # fmt: skip
    async with httpx.AsyncClient() as client:
        plain = await client.post(f"{standin.base_url}{GITHUB_TOKEN}", data=form)
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert "access_token=" in plain.text
    # A network that answered form-encoded anyway: refused as not JSON, never half-parsed.
    standin.ignore_accept = True
    await refused("bad_json", standin, github)


@pytest.mark.parametrize("network", ["github", "facebook"])
async def test_oauth2_token_type_must_be_bearer(standin: SocialStandIn, fetcher: Fetcher, network: str) -> None:
    standin.token_type = "mac"
    await refused("bad_token_type", standin, OAuth2Connector(config_for(standin, network), fetcher=fetcher))


async def test_oauth2_authorization_errors_and_missing_code_refused(
    standin: SocialStandIn, github: OAuth2Connector, facebook: OAuth2Connector
) -> None:
    await refused("upstream_error", standin, github, error="access_denied", code="-")
    await refused("upstream_error", standin, facebook, error="access_denied", error_reason="user_denied", code="-")
    await refused("bad_response", standin, github, code="-")
    inputs = CallbackInput(params={"code": "c", "state": "s"})  # no sign-in pending: no verifier
    with pytest.raises(UpstreamRefused) as caught:
        await github.handle_callback(inputs, callback_url=CALLBACK)
    assert caught.value.reason == "bad_response"


@pytest.mark.parametrize(
    ("status", "raw", "user", "reason"),
    [
        (401, None, None, "upstream_error"),
        (200, b"<html>rate limited</html>", None, "bad_json"),
        (200, b"[1, 2]", None, "bad_json"),
        (200, b'{"id": 1} trailing', None, "bad_json"),
        (200, None, {"login": "octocat", "name": "no id"}, "no_subject"),
        (200, None, {"id": True, "login": "octocat"}, "no_subject"),
        (200, None, {"id": "octocat", "login": "octocat"}, "no_subject"),
        (200, None, {"id": -5, "login": "octocat"}, "no_subject"),
        (200, None, {"id": 1, "error": "bad"}, "profile_error"),
    ],
)
async def test_github_bad_profile_answers_refused(
    standin: SocialStandIn,
    github: OAuth2Connector,
    status: int,
    raw: bytes | None,
    user: dict[str, Any] | None,
    reason: str,
) -> None:
    standin.profile_status, standin.profile_raw = status, raw
    if user is not None:
        standin.github_user = user
    await refused(reason, standin, github)


async def test_github_profile_server_error_and_oversize_are_unavailable(
    standin: SocialStandIn, github: OAuth2Connector
) -> None:
    standin.profile_status = 502
    with pytest.raises(UpstreamUnavailable):
        await callback(standin, github)
    standin.profile_status, standin.profile_raw = 200, b'{"pad": "' + b"x" * 1_100_000 + b'"}'
    with pytest.raises(UpstreamUnavailable) as caught:
        await callback(standin, github)
    assert "bytes" in (caught.value.internal or "")


@pytest.mark.parametrize("raw", [b'{"email": "x@corp.example"}', b"not json", b"null"])
async def test_github_emails_answer_must_be_a_json_list(
    standin: SocialStandIn, github: OAuth2Connector, raw: bytes
) -> None:
    standin.emails_raw = raw
    await refused("bad_json", standin, github)


async def test_facebook_good_answer_email_never_verified(standin: SocialStandIn, facebook: OAuth2Connector) -> None:
    standin.require_appsecret_proof = True  # an app with "Require App Secret" on: the proof must be right
    identity = await callback(standin, facebook)
    assert (identity.issuer, identity.subject) == ("https://www.facebook.com", "10158000000000001")
    assert identity.email == "alice@social.example" and identity.email_verified is False
    assert (identity.name, identity.given_name, identity.family_name) == ("Alice Example", "Alice", "Example")
    assert identity.username is None and identity.claims["first_name"] == "Alice"
    me = standin.api_requests[-1]
    assert me["authorization"].startswith("Bearer ") and "access_token" not in me["query"]
    assert "appsecret_proof=" in me["query"] and "fields=id%2Cname%2Cemail" in me["query"].replace(",", "%2C")
    assert standin.token_requests[-1]["code_verifier"] == VERIFIER


async def test_facebook_without_email_permission_has_no_email(
    standin: SocialStandIn, facebook: OAuth2Connector
) -> None:
    standin.facebook_user = {"id": "10158000000000002", "name": "No Mail"}
    identity = await callback(standin, facebook)
    assert identity.email is None and identity.subject == "10158000000000002"


async def test_facebook_token_error_object_refused(standin: SocialStandIn, facebook: OAuth2Connector) -> None:
    standin.token_error = "expired"
    caught = await refused("token_error", standin, facebook)
    assert "OAuthException:100" in (caught.internal or "")


async def test_facebook_wrong_app_secret_refused(standin: SocialStandIn, fetcher: Fetcher) -> None:
    connector = OAuth2Connector(config_for(standin, "facebook", client_secret="rotated-away"), fetcher=fetcher)
    await refused("token_error", standin, connector)


async def test_facebook_graph_errors_refused(standin: SocialStandIn, facebook: OAuth2Connector) -> None:
    # A Graph API error object on a 200 is still an error.
    standin.profile_error_ok = {"message": "Unsupported get request.", "type": "GraphMethodException", "code": 100}
    await refused("profile_error", standin, facebook)
    standin.profile_error_ok = None
    standin.profile_raw, standin.profile_status = (
        json.dumps({"error": {"message": "(#4) Application request limit reached", "type": "OAuthException",
                              "code": 4}}).encode(),
        400,
    )  # fmt: skip
    await refused("upstream_error", standin, facebook)
    standin.profile_raw, standin.profile_status = None, 200
    standin.facebook_user = {"name": "No Id"}
    await refused("no_subject", standin, facebook)
    standin.facebook_user = {"id": "10158 or something", "name": "Bad Id"}
    await refused("no_subject", standin, facebook)


def test_oauth2_connector_refuses_an_unknown_network(standin: SocialStandIn) -> None:
    with pytest.raises(UpstreamRefused):
        OAuth2Connector(replace(config_for(standin, "github"), network="myspace"), fetcher=Fetcher())


# The provider commands


def _create(env: Env, tenant_id: uuid.UUID, new: NewProvider) -> Any:
    async def work() -> Any:
        async with env.ctx.uow(actor=TEST_ACTOR, surface="test") as uow:
            return await env.ctx.broker.providers(uow).create(tenant_id, new)

    return env.run(work)


def test_providers_create_github_from_its_preset(env: Env) -> None:
    tenant = env.tenant()
    created = _create(env, tenant.id, NewProvider(alias="gh", type="github", client_id="id", client_secret="s3cret"))
    assert created.protocol == "oauth2" and created.secret_sealed is not None
    config = created.config
    assert config["issuer"] == "https://github.com"
    assert config["token_endpoint"] == "https://github.com/login/oauth/access_token"
    assert config["emails_endpoint"] == "https://api.github.com/user/emails"
    assert config["scopes"] == ["read:user", "user:email"] and "s3cret" not in json.dumps(config)
    assert created.describe(tenant.issuer)["callback_url"] == f"{tenant.issuer}/broker/gh/callback"


@pytest.mark.parametrize(
    ("new", "message"),
    [
        (NewProvider(alias="fb", type="facebook", client_id="id"), "client-secret"),
        (NewProvider(alias="fb", type="facebook", client_secret="s"), "client-id"),
        (
            NewProvider(alias="fb", type="facebook", client_id="id", client_secret="s",
                        endpoints={"token_endpoint": "https://elsewhere.example/token"}),
            "internal",
        ),
        (
            NewProvider(alias="fb", type="facebook", client_id="id", client_secret="s", internal=True,
                        endpoints={"emails_endpoint": "http://127.0.0.1:1/emails"}),
            "unknown endpoint",
        ),
        (
            NewProvider(alias="gh", type="github", client_id="id", client_secret="s", internal=True,
                        endpoints={"token_endpoint": "ftp://127.0.0.1/token"}),
            "refused endpoint",
        ),
        (NewProvider(alias="gh", type="github", issuer="https://ghe.corp.example", client_id="i", client_secret="s"),
         "issuer"),
    ],
)  # fmt: skip
def test_providers_create_oauth2_refusals(env: Env, new: NewProvider, message: str) -> None:
    tenant = env.tenant()
    with pytest.raises(Invalid) as caught:
        _create(env, tenant.id, new)
    assert message in caught.value.detail


# Whole sign-ins through idhub's routes


class Social:
    """A tenant with an app and one social upstream pointed at the stand-in."""

    def __init__(self, env: Env, standin: SocialStandIn, network: str, **provider: Any) -> None:
        self.env, self.standin, self.network, self.alias = env, standin, network, network
        self.tenant = env.tenant()
        self.client_id, self.secret = env.oauth_client(
            self.tenant,
            redirect_uris=[APP_REDIRECT],
            grant_types=["authorization_code"],
            scope="openid profile email",
            first_party=True,
        )
        github = network == "github"
        new = NewProvider(
            alias=self.alias,
            type=network,
            client_id=standin.github_client_id if github else standin.facebook_client_id,
            client_secret=standin.github_client_secret if github else standin.facebook_client_secret,
            internal=True,
            endpoints=standin.endpoints(network),
            **provider,
        )
        _create(env, self.tenant.id, new)
        self.callback_path = f"/tenants/{self.tenant.slug}/broker/{self.alias}/callback"

    def upstream_answer(self, alias: str | None = None) -> dict[str, str]:
        """Start a sign-in at the app; return what the network sends back to the broker's callback."""
        verifier, challenge = pkce_pair()
        self.verifier = verifier
        params = authorize_params(
            client_id=self.client_id, redirect_uri=APP_REDIRECT, code_challenge=challenge,
            scope="openid profile email", extra_params={"idp_hint": alias or self.alias},
        )  # fmt: skip
        http = self.env.client
        # idp_hint: the authorization request goes straight to the network.
        login = http.get(f"/tenants/{self.tenant.slug}/authorize", params=params, follow_redirects=False)
        assert login.status_code == 303, login.text
        upstream = login.headers["location"]
        assert upstream.startswith(self.standin.base_url)
        query = query_of(upstream)
        assert query["code_challenge_method"] == "S256" and query["redirect_uri"].endswith(self.callback_path)
        back = httpx.get(upstream, follow_redirects=False, timeout=10)
        assert back.status_code == 302
        return query_of(back.headers["location"])

    def finish(self, answer: dict[str, str], alias: str | None = None) -> Any:
        path = f"/tenants/{self.tenant.slug}/broker/{alias or self.alias}/callback"
        return self.env.client.get(path, params=answer, follow_redirects=False)

    def id_token_claims(self, code: str) -> dict[str, Any]:
        token = self.env.client.post(
            f"/tenants/{self.tenant.slug}/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT,
                  "code_verifier": self.verifier},
            auth=(self.client_id, self.secret or ""),
        )  # fmt: skip
        assert token.status_code == 200, token.text
        payload = token.json()["id_token"].split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return claims

    def refusals(self, expected: str) -> list[str]:
        def found(rows: list[dict[str, Any]]) -> list[str]:
            return [row["details"].get("reason") for row in rows if row["action"] == "signin.broker"]

        return found(audit_rows(self.env, self.tenant, lambda rows: expected in found(rows)))


@pytest.fixture
def browser(env: Env) -> Iterator[Env]:
    env.client.cookies.clear()
    yield env
    env.client.cookies.clear()


@pytest.mark.parametrize(
    ("network", "domain", "verified"),
    [
        ("github", "corp.example", True),
        # Even for a domain the operator marked as this upstream's, Facebook's address is not believed.
        ("facebook", "social.example", False),
    ],
)
def test_social_sign_in_through_routes_reaches_the_app(
    browser: Env, standin: SocialStandIn, network: str, domain: str, verified: bool
) -> None:
    social = Social(browser, standin, network, email_domains=(domain,))
    response = social.finish(social.upstream_answer())
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith(APP_REDIRECT)
    claims = social.id_token_claims(query_of(response.headers["location"])["code"])
    assert "fed" in claims["amr"]
    expected_email = "octocat@corp.example" if network == "github" else "alice@social.example"
    assert claims.get("email") == expected_email and claims.get("email_verified", False) is verified


def test_social_callback_with_a_tampered_state_refused(browser: Env, standin: SocialStandIn) -> None:
    social = Social(browser, standin, "github")
    answer = social.upstream_answer()
    response = social.finish({**answer, "state": answer["state"][:-4] + "AAAA"})
    assert response.status_code == 400 and "text/html" in response.headers["content-type"]
    assert "bad_state" in social.refusals("bad_state")
    assert standin.token_requests == []  # nothing was redeemed for a state that does not open


def test_social_state_of_one_network_refused_at_the_others_callback(browser: Env, standin: SocialStandIn) -> None:
    social = Social(browser, standin, "github")
    _create(
        browser,
        social.tenant.id,
        NewProvider(alias="facebook", type="facebook", client_id=standin.facebook_client_id,
                    client_secret=standin.facebook_client_secret, internal=True,
                    endpoints=standin.endpoints("facebook")),
    )  # fmt: skip
    answer = social.upstream_answer()
    response = social.finish(answer, alias="facebook")
    assert response.status_code == 400
    assert "mix_up" in social.refusals("mix_up")


def test_social_declined_at_the_network_refused(browser: Env, standin: SocialStandIn) -> None:
    social = Social(browser, standin, "facebook")
    standin.deny = True
    answer = social.upstream_answer()
    assert answer["error_reason"] == "user_denied"
    response = social.finish(answer)
    assert response.status_code == 400
    assert "upstream_error" in social.refusals("upstream_error")
