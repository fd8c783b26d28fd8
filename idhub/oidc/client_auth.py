"""Client authentication at the token, introspection and revocation endpoints (RFC 6749 §2.3, OIDC Core §9).

One function per method. A client must use exactly the method it registered; a request that carries
more than one method is ``invalid_request`` (RFC 6749 §2.3). Every failure is the same ``invalid_client``
(401 with ``WWW-Authenticate``, RFC 6749 §5.2). Failures are limited per source address (an address
over the limit is refused without its credentials being checked); a client's own failures only slow
its next failures down, so a request with valid credentials is never refused because someone else
failed, and public clients, having no secret to guess, are never counted or refused.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from fastapi import Request
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from idhub import request_context
from idhub.broker.errors import UpstreamRefused
from idhub.broker.fetch import FetchPolicy
from idhub.clients.redirects import is_public_host
from idhub.clients.service import ClientInfo
from idhub.context import AppContext
from idhub.crypto import jwt
from idhub.events import Actor, TokenRequestRefused
from idhub.oidc.errors import InvalidClient, InvalidRequest, OAuthError
from idhub.oidc.params import Params, header, read_form, tenant_of
from idhub.routing import context_of, uow_of
from idhub.storage.single_use import claim
from idhub.tenants.service import TenantInfo

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = 30
MAX_CLIENT_ID = 64
MAX_SECRET = 512
MAX_JTI = 255


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """What the request presented, before anything is checked."""

    method: str
    client_id: str
    secret: str | None = None
    assertion: str | None = None


def extract_credentials(authorization: str | None, params: Params) -> ClientCredentials:
    """Work out which single method the request uses (RFC 6749 §2.3: only one method per request)."""
    basic = authorization is not None and authorization[:6].lower() == "basic "
    has_secret = "client_secret" in params
    has_assertion = "client_assertion" in params or "client_assertion_type" in params
    if basic + has_secret + has_assertion > 1:
        raise InvalidRequest("use exactly one client authentication method")
    form_client_id = params.get("client_id")
    if basic:
        assert authorization is not None
        client_id, secret = parse_basic(authorization[6:])
        # The body may repeat the client_id; it must then be the same client.
        if form_client_id is not None and form_client_id != client_id:
            raise InvalidRequest("client_id does not match the authenticated client")
        return ClientCredentials("client_secret_basic", client_id, secret=secret)
    if has_assertion:
        if params.get("client_assertion_type") != JWT_BEARER:
            raise InvalidClient("unsupported client_assertion_type")
        assertion = params.get("client_assertion")
        if assertion is None:
            raise InvalidClient("client_assertion is missing")
        return ClientCredentials(
            "private_key_jwt", form_client_id or _assertion_subject(assertion), assertion=assertion
        )
    if form_client_id is None:
        raise InvalidClient("client authentication is required")
    if has_secret:
        return ClientCredentials("client_secret_post", form_client_id, secret=params.get("client_secret"))
    return ClientCredentials("none", form_client_id)


def parse_basic(encoded: str) -> tuple[str, str]:
    """Decode HTTP Basic credentials whose parts are form-urlencoded first (RFC 6749 §2.3.1)."""
    try:
        raw = binascii.a2b_base64(encoded.strip(), strict_mode=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise InvalidClient("malformed Basic credentials") from exc
    client_id, sep, secret = raw.partition(":")
    if not sep:
        raise InvalidClient("malformed Basic credentials")
    if "%" in raw or "+" in raw:
        client_id, secret = unquote_plus(client_id), unquote_plus(secret)
    if not client_id or not secret:
        raise InvalidClient("malformed Basic credentials")
    return client_id, secret


def _assertion_claims(assertion: str) -> dict[str, Any]:
    """Return the unverified claims of a client assertion (only to find the client's keys)."""
    if len(assertion) > 8192:
        raise InvalidClient("client assertion too large")
    try:
        payload = jws.extract_compact(assertion.encode()).payload
        claims = json.loads(payload)
    except (JoseError, ValueError, TypeError, UnicodeError) as exc:
        raise InvalidClient("malformed client assertion") from exc
    if not isinstance(claims, dict):
        raise InvalidClient("malformed client assertion")
    return claims


def _assertion_subject(assertion: str) -> str:
    sub = _assertion_claims(assertion).get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidClient("client assertion has no subject")
    return sub


def check_client_secret(ctx: AppContext, client: ClientInfo, secret: str | None) -> None:
    """Check a client secret with the keyed hash, in constant time (RFC 6749 §2.3.1)."""
    if secret is None or len(secret) > MAX_SECRET or not ctx.secret_hasher.verify(secret, client.secret_hash):
        raise InvalidClient("client authentication failed")


async def client_secret_basic(
    ctx: AppContext, client: ClientInfo, creds: ClientCredentials, *, tenant: TenantInfo, endpoint: str
) -> None:
    """Authenticate with id and secret in the Basic header (RFC 6749 §2.3.1)."""
    check_client_secret(ctx, client, creds.secret)


async def client_secret_post(
    ctx: AppContext, client: ClientInfo, creds: ClientCredentials, *, tenant: TenantInfo, endpoint: str
) -> None:
    """Authenticate with ``client_id`` and ``client_secret`` in the body (RFC 6749 §2.3.1)."""
    check_client_secret(ctx, client, creds.secret)


async def none(
    ctx: AppContext, client: ClientInfo, creds: ClientCredentials, *, tenant: TenantInfo, endpoint: str
) -> None:
    """Identify a public client by ``client_id`` only (RFC 6749 §2.1); its grants require PKCE."""
    if not client.is_public:
        raise InvalidClient("client authentication failed")


def verify_client_assertion(
    client: ClientInfo,
    assertion: str,
    *,
    audiences: tuple[str, ...],
    max_age: int,
    now: float | None = None,
    keys: KeySet | None = None,
) -> dict[str, Any]:
    """Verify a ``private_key_jwt`` assertion except its single use (RFC 7523 §3, OIDC Core §9).

    Signed by a key of the client's JWKS with an allow-listed asymmetric algorithm (never ``none`` or
    HMAC); ``iss`` = ``sub`` = client_id; ``aud`` names the token endpoint or the issuer; ``exp``
    present and not further ahead than ``max_age``; ``jti`` present.
    """
    if keys is None and not client.jwks:
        raise InvalidClient("client has no registered keys")
    try:
        if keys is None:
            keys = KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
        claims = jwt.verify(assertion, keys, algorithms=jwt.CLIENT_ASSERTION_ALGS)
    except (jwt.InvalidJWT, JoseError, ValueError, TypeError, KeyError) as exc:
        raise InvalidClient("client assertion signature invalid") from exc
    now = time.time() if now is None else now
    if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
        raise InvalidClient("client assertion iss and sub must be the client_id")
    aud = claims.get("aud")
    aud_values = aud if isinstance(aud, list) else [aud]
    if not any(isinstance(value, str) and value in audiences for value in aud_values):
        raise InvalidClient("client assertion audience is not this server")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
        raise InvalidClient("client assertion needs exp")
    if exp <= now - CLOCK_SKEW:
        raise InvalidClient("client assertion expired")
    if exp > now + max_age + CLOCK_SKEW:
        raise InvalidClient("client assertion lives too long")
    for name in ("iat", "nbf"):
        value = claims.get(name)
        if value is not None and (
            not isinstance(value, int | float) or not math.isfinite(value) or value > now + CLOCK_SKEW
        ):
            raise InvalidClient(f"client assertion {name} is in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI:
        raise InvalidClient("client assertion needs a jti")
    return claims


async def private_key_jwt(
    ctx: AppContext, client: ClientInfo, creds: ClientCredentials, *, tenant: TenantInfo, endpoint: str
) -> None:
    """Authenticate with a signed assertion; its ``jti`` is consumed atomically (RFC 7523 §3 item 7)."""
    assert creds.assertion is not None
    keys = await published_keys(ctx, client, creds.assertion) if client.jwks_uri else None
    claims = verify_client_assertion(
        client,
        creds.assertion,
        audiences=assertion_audiences(tenant, endpoint),
        max_age=ctx.settings.tokens.client_assertion_max_age,
        keys=keys,
    )
    expires_at = datetime.fromtimestamp(float(claims["exp"]) + CLOCK_SKEW, UTC)
    # A unit of work of its own: the jti is used up even if the rest of the request fails.
    async with ctx.uow(actor=Actor("client", client.client_id), surface="oidc") as uow:
        won = await claim(
            uow.session,
            tenant_id=client.tenant_id,
            namespace=f"client_assertion:{client.client_id}",
            value=claims["jti"],
            expires_at=expires_at,
        )
    if not won:
        raise InvalidClient("client authentication failed", internal="client assertion jti replayed")


async def published_keys(ctx: AppContext, client: ClientInfo, assertion: str) -> KeySet:
    """Return the key of the client's ``jwks_uri`` that the assertion names (fetched, cached, refetched on rotation).

    The set is cached per URI; an unknown ``kid`` refetches it at most once a minute, so random key ids
    cannot make this server hammer the client's host. A host that is not public was allowed at registration
    by an operator (:func:`idhub.clients.redirects.check_jwks_uri`); any other name is fetched through the
    guard that refuses private addresses, so a name cannot later be pointed inside the network.
    """
    assert client.jwks_uri is not None
    try:
        header = jws.extract_compact(assertion.encode()).headers()
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidClient("client assertion is not a JWS") from exc
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in jwt.CLIENT_ASSERTION_ALGS or (kid is not None and not isinstance(kid, str)):
        raise InvalidClient("client assertion algorithm not allowed")
    host = urlsplit(client.jwks_uri).hostname or ""
    policy = FetchPolicy(internal=not is_public_host(host))
    try:
        key = await ctx.broker.jwks.key_for(client.jwks_uri, kid, alg, policy=policy)
    except UpstreamRefused as exc:
        raise InvalidClient("client assertion signature invalid", internal=f"jwks_uri: {exc.internal}") from exc
    # UpstreamUnavailable (the keys cannot be fetched and none are cached) is a 503 with Retry-After.
    return KeySet([key])


def assertion_audiences(tenant: TenantInfo, endpoint: str) -> tuple[str, ...]:
    """Return the audiences a client assertion may name: the issuer, the token endpoint, this endpoint."""
    return (tenant.issuer, f"{tenant.issuer}/token", f"{tenant.issuer}/{endpoint}")


AuthMethod = Callable[..., Awaitable[None]]
# token_endpoint_auth_method -> checker (OIDC Core §9).
METHODS: dict[str, AuthMethod] = {
    "client_secret_basic": client_secret_basic,
    "client_secret_post": client_secret_post,
    "private_key_jwt": private_key_jwt,
    "none": none,
}


def claimed_client_id(authorization: str | None, params: Params) -> str:
    """Return the client_id a request claims, for the audit log of a refusal (never raises; unverified)."""
    try:
        client_id = extract_credentials(authorization, params).client_id
    except OAuthError:
        client_id = params.get("client_id") or ""
    return client_id[:MAX_CLIENT_ID] if client_id.isprintable() else ""


async def authenticate_client(
    ctx: AppContext,
    tenant: TenantInfo,
    *,
    authorization: str | None,
    params: Params,
    endpoint: str = "token",
    allow_public: bool = True,
) -> ClientInfo:
    """Authenticate the calling client with its registered method; throttle failures (RFC 6749 §2.3)."""
    info = request_context.current()
    address = info.address if info is not None else None
    creds = extract_credentials(authorization, params)
    if len(creds.client_id) > MAX_CLIENT_ID or not creds.client_id.isprintable():
        raise InvalidClient("client authentication failed")
    throttle = ctx.throttle
    client = await ctx.clients.get(tenant.id, creds.client_id)
    # A public client identifying itself has no secret to guess: never limited (RFC 6749 §2.1).
    public = client is not None and client.is_public and creds.method == "none"
    if not public and await throttle.client_address_blocked(address):
        raise InvalidClient("client authentication failed", internal="too many failures from this address")
    try:
        if client is None:
            raise InvalidClient("client authentication failed", internal="unknown or disabled client")
        # A client uses exactly its registered method (OIDC Core §9, token_endpoint_auth_method).
        if creds.method != client.token_endpoint_auth_method:
            raise InvalidClient(
                "client authentication failed", internal=f"used {creds.method}, registered for another method"
            )
        await METHODS[creds.method](ctx, client, creds, tenant=tenant, endpoint=endpoint)
    except InvalidClient:
        # Counted per address; per client only for a confidential one, and only as a delay of its
        # failures, never a refusal of the right secret (the issue #13 "client lockout").
        counted = client if client is not None and not client.is_public else None
        delay = await throttle.client_failed(
            client=f"{tenant.key}:{counted.client_id}" if counted else None, address=address
        )
        if delay:
            await asyncio.sleep(delay)
        raise
    if client.is_public and not allow_public:
        raise InvalidClient("public clients cannot use this endpoint")
    return client


async def authenticated_request(
    request: Request, tenant_slug: str, *, endpoint: str, allow_public: bool = True
) -> tuple[AppContext, TenantInfo, Params, ClientInfo]:
    """Resolve the tenant, read the form and authenticate the calling client (back-channel endpoints).

    A refused client is audited; the request's unit of work then acts for the authenticated client.
    """
    ctx = context_of(request)
    tenant = await tenant_of(ctx, tenant_slug)
    params = await read_form(request)
    uow = uow_of(request)
    authorization = header(request, b"authorization")
    try:
        client = await authenticate_client(
            ctx, tenant, authorization=authorization, params=params, endpoint=endpoint, allow_public=allow_public
        )
    except OAuthError as exc:
        uow.raise_event(
            TokenRequestRefused(
                tenant_id=tenant.id,
                client_id=claimed_client_id(authorization, params),
                endpoint=endpoint,
                error=exc.error,
                reason=exc.internal,
            )
        )
        raise
    uow.actor = Actor("client", client.client_id)
    return ctx, tenant, params, client
