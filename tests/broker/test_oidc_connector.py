"""The OIDC connector against a stand-in OpenID provider on loopback: the good answer, then every lie.

Each refusal must fail closed with its reason code (which the broker writes to the audit log).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import fields, replace
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from idhub.broker.connector import CallbackInput, LoginSecrets
from idhub.broker.connectors.oidc import OidcConfig, OidcConnector, discover, pkce_challenge
from idhub.broker.errors import UpstreamRefused
from idhub.broker.fetch import Fetcher, FetchPolicy
from idhub.broker.jwks import JwksCache
from tests.broker.standin import StandInProvider, serve
from tests.flows import query_of

CALLBACK = "https://broker.example/tenants/apps/broker/corp/callback"
INTERNAL = FetchPolicy(internal=True)
_DEFAULTS = StandInProvider()


@pytest.fixture(scope="module")
def upstream() -> Iterator[StandInProvider]:
    yield from serve(StandInProvider())


@pytest.fixture
def provider(upstream: StandInProvider) -> StandInProvider:
    """The stand-in with its default behaviour (keys and issuer kept)."""
    for spec in fields(StandInProvider):
        if spec.name not in ("issuer", "rsa", "ec", "codes", "token_requests"):
            setattr(upstream, spec.name, getattr(_DEFAULTS, spec.name))
    upstream.token_requests.clear()
    return upstream


@pytest.fixture
async def connector(provider: StandInProvider) -> AsyncIterator[OidcConnector]:
    fetcher = Fetcher()
    document = await discover(fetcher, provider.issuer, policy=INTERNAL)
    config = OidcConfig(
        issuer=provider.issuer,
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        authorization_endpoint=document["authorization_endpoint"],
        token_endpoint=document["token_endpoint"],
        jwks_uri=document["jwks_uri"],
        userinfo_endpoint=document["userinfo_endpoint"],
        iss_parameter_supported=document["authorization_response_iss_parameter_supported"],
        policy=INTERNAL,
    )
    try:
        yield OidcConnector(config, fetcher=fetcher, jwks=JwksCache(fetcher))
    finally:
        await fetcher.aclose()


async def callback(provider: StandInProvider, connector: OidcConnector, nonce: str = "n-1", **params: str) -> Any:
    code = provider.issue_code(nonce)
    answer = {"code": code, "state": "s", "iss": provider.issuer, **params}
    answer = {name: value for name, value in answer.items() if value != "-"}
    inputs = CallbackInput(params=answer, nonce="n-1", code_verifier="v" * 43, request_id="_r")
    return await connector.handle_callback(inputs, callback_url=CALLBACK)


async def refused(reason: str, provider: StandInProvider, connector: OidcConnector, **kw: Any) -> None:
    with pytest.raises(UpstreamRefused) as caught:
        await callback(provider, connector, **kw)
    assert caught.value.reason == reason, caught.value.internal


async def test_oidc_login_url_carries_pkce_nonce_state(connector: OidcConnector) -> None:
    secrets = LoginSecrets(nonce="n-1", code_verifier="v" * 43, request_id="_r")
    start = await connector.login_url(state="st", callback_url=CALLBACK, secrets=secrets)
    query = query_of(start.url)
    assert start.url.startswith(f"{connector.config.authorization_endpoint}?")
    assert query["code_challenge"] == pkce_challenge("v" * 43) and query["code_challenge_method"] == "S256"
    assert (query["state"], query["nonce"], query["redirect_uri"]) == ("st", "n-1", CALLBACK)
    assert query["response_type"] == "code" and "openid" in query["scope"].split()


async def test_oidc_good_answer_becomes_identity(provider: StandInProvider, connector: OidcConnector) -> None:
    identity = await callback(provider, connector)
    assert (identity.issuer, identity.subject) == (provider.issuer, provider.subject)
    assert identity.email == "alice@corp.example" and identity.email_verified is True
    assert identity.amr == ("pwd", "mfa") and identity.name == "Alice Corp"  # name from UserInfo
    sent = provider.token_requests[-1]
    assert sent["code_verifier"] == "v" * 43 and sent["redirect_uri"] == CALLBACK
    assert "client_secret" not in sent  # client_secret_basic: the secret went in the Authorization header


async def test_oidc_userinfo_spared_when_the_id_token_carries_every_scope(
    provider: StandInProvider, connector: OidcConnector
) -> None:
    # OIDC Core §5.4: an OP may put the scopes' claims in the ID token; then UserInfo has nothing to add.
    provider.extra_claims = {"name": "Alice From The ID Token"}
    identity = await callback(provider, connector)
    assert provider.userinfo_requests == 0
    assert identity.name == "Alice From The ID Token" and identity.email == "alice@corp.example"


async def test_oidc_userinfo_read_when_a_scope_has_no_claim_in_the_id_token(
    provider: StandInProvider, connector: OidcConnector
) -> None:
    identity = await callback(provider, connector)  # email in the ID token, nothing of ``profile``
    assert provider.userinfo_requests == 1 and identity.name == "Alice Corp"


async def test_oidc_userinfo_read_for_an_address_without_its_verification(
    provider: StandInProvider, connector: OidcConnector
) -> None:
    provider.extra_claims = {"name": "Alice From The ID Token"}
    provider.raw_id_token = lambda claims: provider.sign({k: v for k, v in claims.items() if k != "email_verified"})
    await callback(provider, connector)
    assert provider.userinfo_requests == 1


@pytest.mark.parametrize(
    "change", [{"wanted_claims": frozenset({"department"})}, {"userinfo_always": True}], ids=["wanted", "always"]
)
async def test_oidc_userinfo_read_for_a_wanted_claim_or_when_told(
    provider: StandInProvider, connector: OidcConnector, change: dict[str, Any]
) -> None:
    provider.extra_claims = {"name": "Alice From The ID Token"}
    told = OidcConnector(replace(connector.config, **change), fetcher=connector.fetcher, jwks=connector.jwks)
    identity = await callback(provider, told)
    assert provider.userinfo_requests == 1
    assert identity.name == "Alice From The ID Token"  # the signed ID token's claim wins over UserInfo's


async def test_oidc_es256_tokens_verify_too(provider: StandInProvider, connector: OidcConnector) -> None:
    provider.alg = "ES256"
    assert (await callback(provider, connector)).subject == provider.subject


async def test_oidc_email_verified_only_when_the_claim_is_true(
    provider: StandInProvider, connector: OidcConnector
) -> None:
    provider.email_verified = False
    assert (await callback(provider, connector)).email_verified is False
    provider.extra_claims = {"email_verified": "true"}  # a string is not a boolean true
    assert (await callback(provider, connector)).email_verified is False


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://evil.example"}, "wrong_issuer"),
        ({"aud": "someone-else"}, "wrong_audience"),
        ({"aud": ["broker-client", "other"]}, "wrong_azp"),
        ({"azp": "other"}, "wrong_azp"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"iat": int(time.time()) + 3600}, "bad_iat"),
        ({"iat": int(time.time()) - 7200}, "bad_iat"),
        ({"nonce": "another-sign-in"}, "bad_nonce"),
        ({"sub": ""}, "no_subject"),
    ],
)
async def test_oidc_id_token_claims_checked(
    provider: StandInProvider, connector: OidcConnector, claims: dict[str, Any], reason: str
) -> None:
    provider.extra_claims = claims
    await refused(reason, provider, connector)


async def test_oidc_missing_nonce_refused(provider: StandInProvider, connector: OidcConnector) -> None:
    provider.raw_id_token = lambda claims: provider.sign({k: v for k, v in claims.items() if k != "nonce"})
    await refused("bad_nonce", provider, connector)


async def test_oidc_alg_none_refused(provider: StandInProvider, connector: OidcConnector) -> None:
    provider.raw_id_token = StandInProvider.unsigned
    await refused("bad_alg", provider, connector)


async def test_oidc_hs256_with_public_key_refused(provider: StandInProvider, connector: OidcConnector) -> None:
    provider.raw_id_token = provider.hs256_with_public_key
    await refused("bad_alg", provider, connector)


async def test_oidc_signature_by_another_key_refused(provider: StandInProvider, connector: OidcConnector) -> None:
    forger = RSAKey.generate_key(2048, parameters={"kid": provider.rsa.kid})

    def forged(claims: dict[str, Any]) -> str:
        import json

        from joserfc import jws

        return jws.serialize_compact({"alg": "RS256", "kid": forger.kid}, json.dumps(claims).encode(), forger)

    provider.raw_id_token = forged
    await refused("bad_signature", provider, connector)


async def test_oidc_unknown_kid_refused(provider: StandInProvider, connector: OidcConnector) -> None:
    provider.header_extra = {"kid": "not-published"}
    await refused("unknown_key", provider, connector)


async def test_oidc_userinfo_for_another_subject_refused(provider: StandInProvider, connector: OidcConnector) -> None:
    provider.userinfo_sub = "someone-else"
    await refused("userinfo_sub_mismatch", provider, connector)


async def test_oidc_callback_from_another_issuer_refused_mix_up(
    provider: StandInProvider, connector: OidcConnector
) -> None:
    await refused("mix_up", provider, connector, iss="https://other-upstream.example")
    await refused("mix_up", provider, connector, iss="-")  # RFC 9207: it says it sends iss, so it must


async def test_oidc_error_answers_refused(provider: StandInProvider, connector: OidcConnector) -> None:
    await refused("upstream_error", provider, connector, error="access_denied")
    provider.token_error = {"error": "invalid_grant"}
    await refused("token_error", provider, connector)


async def test_oidc_discovery_issuer_must_match_exactly(provider: StandInProvider) -> None:
    fetcher = Fetcher()
    try:
        with pytest.raises(UpstreamRefused) as caught:
            await discover(fetcher, provider.issuer + "/", policy=INTERNAL)
        assert caught.value.reason == "wrong_issuer"
    finally:
        await fetcher.aclose()


@pytest.mark.parametrize(
    ("email", "hd", "verified"),
    [
        ("alice@corp.example", "corp.example", True),  # a Workspace account of the address's own domain
        ("alice@corp.example", None, False),  # a consumer account made with a company address
        ("alice@corp.example", "other.example", False),
        ("alice@gmail.com", None, True),  # Google's own domain
    ],
)
def test_google_preset_believes_email_only_where_google_is_authoritative(
    connector: OidcConnector, email: str, hd: str | None, verified: bool
) -> None:
    google = OidcConnector(
        replace(connector.config, hosted_domain_claim="hd", own_domains=("gmail.com", "googlemail.com")),
        fetcher=connector.fetcher,
        jwks=connector.jwks,
    )
    claims = {"sub": "1", "email": email, "email_verified": True, **({"hd": hd} if hd else {})}
    assert google.identity(claims).email_verified is verified
