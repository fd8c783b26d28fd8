"""The OAuth 2 connector: social networks that sign people in with OAuth 2 plus a profile API.

GitHub and Facebook are not OpenID providers: there is no ID token to verify, so who signed in is
whatever the network's profile API says to the access token that the code was redeemed for. The flow
is RFC 6749 §4.1 (authorization code) with PKCE S256 (RFC 7636), the code going straight from our
callback to the network's token endpoint over TLS, so the profile answer comes from the network itself.
``state`` carries the broker's sealed state as it does for OIDC; the broker checks it.

One connector serves every such network; what differs (where the profile is, how it is read, what it
says about email verification) is a small :class:`Network` per network, found in :data:`NETWORKS` by
the provider's type. Every refusal is :class:`UpstreamRefused` with a reason code for the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import orjson

from idhub.broker.connector import CallbackInput, Identity, LoginSecrets, LoginStart
from idhub.broker.connectors.oidc import pkce_challenge
from idhub.broker.errors import UpstreamRefused
from idhub.broker.fetch import Fetcher, FetchPolicy

ENDPOINT_NAMES = ("authorization_endpoint", "token_endpoint", "profile_endpoint", "emails_endpoint")
_MAX_SUBJECT = 64


@dataclass(frozen=True, slots=True)
class OAuth2Config:
    """One OAuth 2 upstream: the network it is, the registered client, and the network's endpoints."""

    network: str  # a key of NETWORKS: how the profile is read
    issuer: str  # fixed per network: with ``subject`` the link key (never the email)
    client_id: str
    client_secret: str
    authorization_endpoint: str
    token_endpoint: str
    profile_endpoint: str
    emails_endpoint: str | None = None
    scopes: tuple[str, ...] = ()
    pkce: bool = True
    policy: FetchPolicy = field(default_factory=FetchPolicy)


class Network(Protocol):
    """What one network's profile API says about the person an access token belongs to."""

    async def identity(self, api: ProfileApi, access_token: str) -> Identity:
        """Read the profile with ``access_token`` and return the normalised identity."""
        ...


class ProfileApi:
    """The profile calls of one upstream: through the fetcher, under the upstream's policy, bearer-authorised."""

    def __init__(self, config: OAuth2Config, fetcher: Fetcher) -> None:
        self.config = config
        self.fetcher = fetcher

    async def get(self, url: str, access_token: str, *, headers: Mapping[str, str] | None = None) -> object:
        """GET a JSON value with the access token as a bearer token (RFC 6750 §2.1, never in the query)."""
        sent = {"accept": "application/json", **(headers or {}), "authorization": f"Bearer {access_token}"}
        body = await self.fetcher.get_bytes(url, policy=self.config.policy, headers=sent)
        try:
            # RFC 8259: orjson refuses NaN, bad UTF-8 and trailing data.
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UpstreamRefused("bad_json", "the profile API answered something that is not JSON") from exc

    async def get_object(
        self, url: str, access_token: str, *, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """GET a JSON object; an ``error`` member in it is a refusal, whatever the status said."""
        value = await self.get(url, access_token, headers=headers)
        if not isinstance(value, dict):
            raise UpstreamRefused("bad_json", "the profile API answered JSON that is not an object")
        if "error" in value:
            raise UpstreamRefused("profile_error", f"profile API error: {_error_code(value['error'])}")
        return value


class OAuth2Connector:
    """Sign people in at an OAuth 2 social network (code flow, PKCE S256, ``state``) and read their profile."""

    def __init__(self, config: OAuth2Config, *, fetcher: Fetcher) -> None:
        if config.network not in NETWORKS:
            raise UpstreamRefused("unsupported_provider", f"no OAuth 2 profile for {config.network[:32]!r}")
        self.config = config
        self.fetcher = fetcher
        self.network = NETWORKS[config.network]

    async def login_url(self, *, state: str, callback_url: str, secrets: LoginSecrets) -> LoginStart:
        """Return the network's authorization URL for this sign-in (RFC 6749 §4.1.1, RFC 7636 §4.3)."""
        config = self.config
        params = {
            "response_type": "code",
            "client_id": config.client_id,
            "redirect_uri": callback_url,
            "scope": " ".join(config.scopes),
            "state": state,
        }
        if config.pkce:
            params |= {"code_challenge": pkce_challenge(secrets.code_verifier), "code_challenge_method": "S256"}
        endpoint = config.authorization_endpoint
        return LoginStart(url=f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}")

    async def handle_callback(self, answer: CallbackInput, *, callback_url: str) -> Identity:
        """Check the authorization response, redeem the code, and read who signed in from the profile API."""
        params = answer.params
        if "error" in params:  # RFC 6749 §4.1.2.1 (Facebook adds error_reason and error_code)
            raise UpstreamRefused("upstream_error", f"authorization error from upstream: {params['error'][:64]}")
        code = params.get("code")
        if not code or (self.config.pkce and answer.code_verifier is None):
            raise UpstreamRefused("bad_response", "authorization response without a code, or no sign-in pending")
        access_token = await self._redeem(code, callback_url=callback_url, verifier=answer.code_verifier)
        return await self.network.identity(ProfileApi(self.config, self.fetcher), access_token)

    async def _redeem(self, code: str, *, callback_url: str, verifier: str | None) -> str:
        """Exchange the code for a bearer access token (RFC 6749 §4.1.3 and §5.1, RFC 7636 §4.5).

        Both networks take the client's credentials in the form body (RFC 6749 §2.3.1). GitHub answers
        form-encoded unless asked for JSON (the fetcher always sends ``Accept: application/json``) and
        reports errors as a 200 whose body has ``error``: the answer is checked for ``error`` whatever
        its status.
        """
        config = self.config
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": callback_url,
            "client_id": config.client_id,
            "client_secret": config.client_secret,
        }
        if config.pkce and verifier is not None:
            form["code_verifier"] = verifier
        answer = await self.fetcher.post_form(config.token_endpoint, form, policy=config.policy)
        if "error" in answer:
            raise UpstreamRefused("token_error", f"upstream token endpoint: {_error_code(answer['error'])}")
        token = answer.get("access_token")
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise UpstreamRefused("no_access_token", "the token answer carries no usable access token")
        # RFC 6749 §7.1: a client must not use a token whose type it does not understand.
        token_type = answer.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise UpstreamRefused("bad_token_type", f"token type {str(token_type)[:16]!r} is not bearer")
        return token


@dataclass(frozen=True, slots=True)
class GitHub:
    """GitHub: ``GET /user`` for the account, ``GET /user/emails`` for what GitHub verified.

    The subject is the numeric ``id``, never ``login``: a login can be renamed and then registered by
    someone else. ``/user``'s ``email`` is only the address the person chose to show publicly; whether
    GitHub verified an address is said only by ``/user/emails`` (REST API "List email addresses for the
    authenticated user", scope ``user:email``). An address is believed only when its entry there is
    both ``primary`` and ``verified``: a secondary address is one the account merely lists.
    """

    api_headers: Mapping[str, str] = field(
        default_factory=lambda: {"accept": "application/vnd.github+json", "x-github-api-version": "2022-11-28"}
    )

    async def identity(self, api: ProfileApi, access_token: str) -> Identity:
        """Read ``/user`` and ``/user/emails``; return the identity with the verified primary address."""
        profile = await api.get_object(api.config.profile_endpoint, access_token, headers=self.api_headers)
        subject = _subject(profile.get("id"))
        email, verified = _text(profile.get("email")), False
        if api.config.emails_endpoint:
            emails_url = _with_query(api.config.emails_endpoint, per_page="100")
            emails = await api.get(emails_url, access_token, headers=self.api_headers)
            if not isinstance(emails, list):
                raise UpstreamRefused("bad_json", "the emails API answered JSON that is not a list")
            for entry in emails:
                address = _text(entry.get("email")) if isinstance(entry, dict) else None
                if address and entry.get("primary") is True and entry.get("verified") is True:
                    email, verified = address, True
                    break
        return Identity(
            issuer=api.config.issuer,
            subject=subject,
            email=email,
            email_verified=bool(email) and verified,
            name=_text(profile.get("name")),
            username=_text(profile.get("login")),
            claims=profile,
        )


@dataclass(frozen=True, slots=True)
class Facebook:
    """Facebook: the Graph API's ``/me`` with the fields asked for, ``appsecret_proof`` on the call.

    The subject is the app-scoped ``id`` (a numeric string). ``email`` is never taken as verified here.
    The Graph API reference describes it as the primary address listed on the profile, left out when
    no *valid* address is available; nowhere does it promise that the account's owner confirmed that
    address, there is no verification flag beside it (the old user ``verified`` field spoke of the
    account, not the address, and is gone), and accounts can be opened with a phone number and given
    an address later. Trusting it would let an address typed into Facebook link to, or block, the
    directory account that owns it: the takeover class that linking rule 2 exists to stop. So the
    address is carried unverified; a person whose address is already in the directory proves they own
    that account once (linking rule 4).
    """

    async def identity(self, api: ProfileApi, access_token: str) -> Identity:
        """Read ``/me``; return the identity with its address marked unverified."""
        # The appsecret_proof (HMAC-SHA256 of the token, keyed by the app secret) lets an app that turns
        # on "Require App Secret" refuse tokens used without its secret (Graph API, "Securing Requests").
        proof = hmac.new(api.config.client_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()
        profile = await api.get_object(_with_query(api.config.profile_endpoint, appsecret_proof=proof), access_token)
        return Identity(
            issuer=api.config.issuer,
            subject=_subject(profile.get("id")),
            email=_text(profile.get("email")),
            email_verified=False,
            name=_text(profile.get("name")),
            given_name=_text(profile.get("first_name")),
            family_name=_text(profile.get("last_name")),
            claims=profile,
        )


NETWORKS: dict[str, Network] = {"github": GitHub(), "facebook": Facebook()}


def _subject(value: object) -> str:
    """Return the account id as a string: GitHub's is an integer, Facebook's a numeric string."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= _MAX_SUBJECT:
        return value
    raise UpstreamRefused("no_subject", "the profile carries no usable account id")


def _error_code(value: object) -> str:
    """Return a short code for an OAuth error (a string) or a Graph API error (an object with type and code)."""
    if isinstance(value, dict):
        return f"{str(value.get('type'))[:40]}:{str(value.get('code'))[:16]}"
    return str(value)[:64]


def _text(value: object, limit: int = 320) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _with_query(url: str, **params: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
