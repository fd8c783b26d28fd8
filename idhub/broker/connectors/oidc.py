"""The OpenID Connect connector: authorization code flow with PKCE against an upstream provider.

Everything the upstream answers is checked before anything is believed (OIDC Core §3.1.3.7 for the
ID token, RFC 9207 for the callback's ``iss``, OIDC Core §5.3.2 for UserInfo), and a failed check
fails closed with :class:`UpstreamRefused` and a reason code for the audit log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import quote_plus, urlencode

from joserfc.jwk import KeySet

from idhub.broker.connector import CallbackInput, Identity, LoginSecrets, LoginStart
from idhub.broker.errors import UpstreamRefused
from idhub.broker.fetch import Fetcher, FetchPolicy
from idhub.broker.jwks import JwksCache
from idhub.crypto import jwt

# Asymmetric algorithms only: ``none`` and the HMAC family are never accepted from an upstream, so a
# token "signed" with the provider's public key as an HMAC secret cannot pass (RFC 8725 §2.1, §3.1).
UPSTREAM_ALGS: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
CLOCK_SKEW = 120
MAX_ID_TOKEN_AGE = 600  # an ID token issued longer ago than this is refused (OIDC Core §3.1.3.7 item 10)
_HASH_FOR_ALG = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """One upstream OpenID provider, as found in its discovery document and registered by the operator."""

    issuer: str
    client_id: str
    client_secret: str | None
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    token_auth_method: str = "client_secret_basic"  # or client_secret_post
    algorithms: tuple[str, ...] = UPSTREAM_ALGS
    iss_parameter_supported: bool = False  # the upstream sends ``iss`` on its authorization responses (RFC 9207)
    email_verified_claim: bool = True  # False: the upstream's email_verified claim is not to be believed
    # Google: ``email_verified`` is also true for a consumer account made with someone's company address;
    # Google vouches for an address only when ``hd`` (its Workspace domain) is the address's domain, or
    # for its own gmail.com (Google Identity docs, "ID token payload": email, email_verified, hd).
    hosted_domain_claim: str | None = None
    own_domains: tuple[str, ...] = ()
    policy: FetchPolicy = field(default_factory=FetchPolicy)
    # Claims beyond the standard scopes' that idhub reads (mapping rules, link_claim): UserInfo is read
    # when the ID token lacks one of them (see OidcConnector.needs_userinfo).
    wanted_claims: frozenset[str] = frozenset()
    userinfo_always: bool = False


# OIDC Core §5.4: the claims each standard scope value asks for (sub aside).
SCOPE_CLAIMS: dict[str, frozenset[str]] = {
    "email": frozenset({"email", "email_verified"}),
    "profile": frozenset({
        "name", "family_name", "given_name", "middle_name", "nickname", "preferred_username", "profile",
        "picture", "website", "gender", "birthdate", "zoneinfo", "locale", "updated_at",
    }),
    "address": frozenset({"address"}),
    "phone": frozenset({"phone_number", "phone_number_verified"}),
}  # fmt: skip


def pkce_challenge(verifier: str) -> str:
    """Return the S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _left_half_hash(value: str, alg: str) -> str:
    digest = _HASH_FOR_ALG.get(alg[-3:], hashlib.sha256)(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


class OidcConnector:
    """Sign people in at an upstream OpenID provider (code flow, PKCE S256, ``state``, ``nonce``)."""

    def __init__(
        self, config: OidcConfig, *, fetcher: Fetcher, jwks: JwksCache, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.fetcher = fetcher
        self.jwks = jwks
        self.clock = clock

    async def login_url(self, *, state: str, callback_url: str, secrets: LoginSecrets) -> LoginStart:
        """Return the upstream authorization URL for this sign-in (OIDC Core §3.1.2.1, RFC 7636 §4.3)."""
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": callback_url,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": secrets.nonce,
            "code_challenge": pkce_challenge(secrets.code_verifier),
            "code_challenge_method": "S256",
        }
        endpoint = self.config.authorization_endpoint
        url = f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"
        return LoginStart(url=url)

    async def handle_callback(self, answer: CallbackInput, *, callback_url: str) -> Identity:
        """Check the authorization response, redeem the code, validate the ID token, read UserInfo."""
        params = answer.params
        self._check_response_issuer(params.get("iss"))
        if "error" in params:
            raise UpstreamRefused("upstream_error", f"authorization error from upstream: {params['error'][:64]}")
        code = params.get("code")
        if not code or answer.nonce is None or answer.code_verifier is None:
            raise UpstreamRefused("bad_response", "authorization response without a code, or no sign-in pending")
        tokens = await self._redeem(code, callback_url=callback_url, verifier=answer.code_verifier)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise UpstreamRefused("no_id_token", "the token answer carries no ID token")
        access_token = tokens.get("access_token")
        claims = await self.validate_id_token(id_token, nonce=answer.nonce, access_token=access_token)
        if self.config.userinfo_endpoint and isinstance(access_token, str) and self.needs_userinfo(claims):
            claims = {**await self._userinfo(access_token, subject=claims["sub"]), **claims}
        return self.identity(claims)

    def needs_userinfo(self, claims: Mapping[str, Any]) -> bool:
        """Tell whether UserInfo can add anything idhub reads to the validated ID token's ``claims``.

        With the code flow an OP returns the scopes' claims from UserInfo and may also put them in the
        ID token (OIDC Core §5.4); many do (Keycloak, Google, idhub itself). An ID token that carries
        claims of every standard scope requested shows an OP of the second kind, and one that also
        carries every other claim idhub reads leaves UserInfo nothing to tell: the request (an outbound
        round trip per sign-in, and work for the upstream) is spared. The signed ID token is the stronger
        evidence of the two; where both are read, the ID token's claims win.
        """
        if self.config.userinfo_always:
            return True
        if "email" in claims and "email_verified" not in claims and self.config.email_verified_claim:
            return True  # an address without its verification: UserInfo may vouch for it (or not)
        for scope in self.config.scopes:
            asked = SCOPE_CLAIMS.get(scope)
            if asked is not None and asked.isdisjoint(claims):
                return True
        return not self.config.wanted_claims.issubset(claims)

    def _check_response_issuer(self, iss: str | None) -> None:
        """RFC 9207 §2.4: an ``iss`` must be this upstream's; one that says it sends ``iss`` must send it."""
        if iss is None:
            if self.config.iss_parameter_supported:
                raise UpstreamRefused("mix_up", "authorization response without iss from an upstream that sends it")
            return
        if not hmac.compare_digest(iss.encode(), self.config.issuer.encode()):
            raise UpstreamRefused("mix_up", f"authorization response from issuer {iss[:200]!r}")

    async def _redeem(self, code: str, *, callback_url: str, verifier: str) -> dict[str, Any]:
        """Exchange the code at the upstream's token endpoint (RFC 6749 §4.1.3, RFC 7636 §4.5)."""
        config = self.config
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": callback_url,
            "code_verifier": verifier,
        }
        headers: dict[str, str] = {}
        if config.client_secret is not None and config.token_auth_method == "client_secret_basic":
            # RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
            pair = f"{_form_encode(config.client_id)}:{_form_encode(config.client_secret)}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = config.client_id
            if config.client_secret is not None:
                form["client_secret"] = config.client_secret
        answer = await self.fetcher.post_form(config.token_endpoint, form, policy=config.policy, headers=headers)
        if "error" in answer:
            raise UpstreamRefused("token_error", f"upstream token endpoint: {str(answer.get('error'))[:64]}")
        return answer

    async def validate_id_token(self, token: str, *, nonce: str, access_token: object = None) -> dict[str, Any]:
        """Validate an ID token as OIDC Core §3.1.3.7 says; return its claims."""
        config = self.config
        try:
            header = jwt.peek_header(token)
        except jwt.InvalidJWT as exc:
            raise UpstreamRefused("malformed_id_token", str(exc)) from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in config.algorithms:  # item 6/7: only the expected algorithms
            raise UpstreamRefused("bad_alg", f"ID token signed with {str(alg)[:16]!r}")
        kid = header.get("kid")
        key = await self.jwks.key_for(config.jwks_uri, kid if isinstance(kid, str) else None, alg, policy=config.policy)
        try:
            claims = jwt.verify(token, KeySet([key]), algorithms=(alg,))
        except jwt.InvalidJWT as exc:
            raise UpstreamRefused("bad_signature", str(exc)) from exc
        self._check_claims(claims, nonce=nonce)
        at_hash = claims.get("at_hash")
        expected = _left_half_hash(access_token, alg).encode() if isinstance(access_token, str) else None
        if at_hash is not None and expected is not None and not hmac.compare_digest(str(at_hash).encode(), expected):
            raise UpstreamRefused("bad_at_hash", "at_hash does not match the access token")  # §3.1.3.8
        return claims

    def _check_claims(self, claims: Mapping[str, Any], *, nonce: str) -> None:
        config, now = self.config, self.clock()
        if claims.get("iss") != config.issuer:  # item 2: exact match
            raise UpstreamRefused("wrong_issuer", f"ID token issuer {str(claims.get('iss'))[:200]!r}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if config.client_id not in audiences:  # item 3
            raise UpstreamRefused("wrong_audience", "ID token not issued to this client")
        azp = claims.get("azp")
        if (len(audiences) > 1 and azp is None) or (azp is not None and azp != config.client_id):  # items 4, 5
            raise UpstreamRefused("wrong_azp", "ID token with several audiences and another authorized party")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not _is_number(exp) or exp <= now - CLOCK_SKEW:  # item 9
            raise UpstreamRefused("expired", "ID token expired or without exp")
        if not _is_number(iat) or iat > now + CLOCK_SKEW or iat < now - MAX_ID_TOKEN_AGE:  # item 10
            raise UpstreamRefused("bad_iat", "ID token iat missing, in the future, or too old")
        presented = claims.get("nonce")
        if not isinstance(presented, str) or not hmac.compare_digest(presented.encode(), nonce.encode()):  # item 11
            raise UpstreamRefused("bad_nonce", "ID token nonce does not match this sign-in")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise UpstreamRefused("no_subject", "ID token without a usable sub")

    async def _userinfo(self, access_token: str, *, subject: str) -> dict[str, Any]:
        """Read UserInfo; its ``sub`` must be the ID token's (OIDC Core §5.3.2), else it is not this person."""
        assert self.config.userinfo_endpoint is not None
        info = await self.fetcher.get_json(
            self.config.userinfo_endpoint,
            policy=self.config.policy,
            headers={"authorization": f"Bearer {access_token}"},
        )
        if info.get("sub") != subject:
            raise UpstreamRefused("userinfo_sub_mismatch", "UserInfo sub differs from the ID token's")
        return info

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        """Normalise the claims into an :class:`Identity` (email verified only when the claim says true)."""
        email = _text(claims.get("email"))
        verified = self.config.email_verified_claim and claims.get("email_verified") is True
        if verified and email and self.config.hosted_domain_claim:
            domain = email.rsplit("@", 1)[-1].lower()
            hosted = claims.get(self.config.hosted_domain_claim)
            verified = domain in self.config.own_domains or (isinstance(hosted, str) and hosted.lower() == domain)
        amr = claims.get("amr")
        groups = claims.get("groups")
        return Identity(
            issuer=self.config.issuer,
            subject=str(claims["sub"]),
            email=email,
            email_verified=bool(email) and verified,
            name=_text(claims.get("name")),
            given_name=_text(claims.get("given_name")),
            family_name=_text(claims.get("family_name")),
            username=_text(claims.get("preferred_username")),
            groups=tuple(str(g) for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
            amr=tuple(str(a) for a in amr if isinstance(a, str)) if isinstance(amr, list) else (),
            acr=_text(claims.get("acr")),
            claims=dict(claims),
        )


def _form_encode(value: str) -> str:
    return quote_plus(value)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: object, limit: int = 320) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


async def discover(fetcher: Fetcher, issuer: str, *, policy: FetchPolicy) -> dict[str, Any]:
    """Fetch the upstream's discovery document; its ``issuer`` must be exactly ``issuer`` (OIDC Discovery §4.3)."""
    document = await fetcher.get_json(f"{issuer.rstrip('/')}/.well-known/openid-configuration", policy=policy)
    if document.get("issuer") != issuer:
        raise UpstreamRefused("wrong_issuer", f"discovery names issuer {str(document.get('issuer'))[:200]!r}")
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(document.get(name), str):
            raise UpstreamRefused("bad_discovery", f"discovery document without {name}")
    return document
