"""The authorization endpoint's protocol logic (OIDC Core §3.1.2.1, RFC 6749 §4.1.1) as ordered check steps.

The browser-facing route (``GET``/``POST {issuer}/authorize``) lives with the pages
(:mod:`idhub.web.authorize`): it parses the request, calls :func:`process_authorization` and renders
its outcome (a redirect, or an error page when the client cannot be trusted).

The first steps establish whether the client and its redirect URI can be trusted; until then an
error is an HTML page and never a redirect (RFC 6749 §4.1.2.1). After that every error goes back to
the redirect URI with ``error``, ``error_description``, ``state`` and ``iss`` (RFC 9207 §2).
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from idhub.broker.discovery import provider_for_email_domain
from idhub.clients.service import ClientInfo, redirect_uri_matches
from idhub.context import AppContext
from idhub.crypto.secrets import random_token
from idhub.errors import DomainError
from idhub.oidc.errors import (
    ConsentRequired,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    LoginRequired,
    OAuthError,
    RequestNotSupported,
    RequestUriNotSupported,
    UnauthorizedClient,
    UnsupportedResponseType,
)
from idhub.oidc.interaction import (
    AuthorizationRequest,
    consent_or_finish,
    create_interaction,
    error_redirect_url,
    login_needed,
    usable_browser_secret,
)
from idhub.sessions.service import load_session
from idhub.storage.engine import one_statement
from idhub.tenants.service import TenantInfo
from idhub.tokens.service import TokenInvalid

# RFC 7636 §4.2: a S256 challenge is base64url without padding; 43-128 characters.
CODE_CHALLENGE_RE = re.compile(r"^[A-Za-z0-9_-]{43,128}$")
PROMPT_VALUES = frozenset({"none", "login", "consent"})
# RFC 8707 §2: ``resource`` is the one parameter that may be repeated.
REPEATABLE = frozenset({"resource"})
MAX_LENGTHS = {
    "state": 2048,
    "nonce": 512,
    "login_hint": 255,
    "id_token_hint": 16384,
    "scope": 2000,
    "idp_hint": 64,
}


class UntrustedRequest(Exception):
    """The client or redirect URI cannot be trusted: show an error page, never redirect."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True)
class AuthorizationContext:
    """What the checks learn about one authorization request, step by step."""

    ctx: AppContext
    tenant: TenantInfo
    params: dict[str, list[str]]
    client: ClientInfo | None = None
    redirect_uri: str | None = None
    state: str | None = None
    scope: tuple[str, ...] = ()
    code_challenge: str = ""
    resources: tuple[str, ...] = ()
    prompt: tuple[str, ...] = ()
    max_age: int | None = None
    id_token_hint_sub: str | None = None

    def one(self, name: str) -> str | None:
        """Return the first value of a parameter (duplicates are refused by :func:`check_no_duplicates`)."""
        values = self.params.get(name)
        return values[0] if values else None

    def build(self) -> AuthorizationRequest:
        """Return the validated request."""
        assert self.client is not None and self.redirect_uri is not None
        return AuthorizationRequest(
            client_id=self.client.client_id,
            redirect_uri=self.redirect_uri,
            scope=self.scope,
            code_challenge=self.code_challenge,
            code_challenge_method="S256",
            state=self.state,
            nonce=self.one("nonce"),
            resources=self.resources,
            prompt=self.prompt,
            max_age=self.max_age,
            login_hint=self.one("login_hint"),
            id_token_hint_sub=self.id_token_hint_sub,
            idp_hint=self.one("idp_hint"),
        )


Step = Callable[[AuthorizationContext], Awaitable[None] | None]


# --- steps that decide whether the client can be trusted (errors never redirect) -----------------


async def check_client(actx: AuthorizationContext) -> None:
    """Resolve ``client_id`` to an enabled client of this tenant (RFC 6749 §4.1.2.1)."""
    values = actx.params.get("client_id") or []
    if len(values) != 1:
        raise UntrustedRequest("The request is missing a valid client_id.")
    client = await actx.ctx.clients.get(actx.tenant.id, values[0])
    if client is None or client.tenant_id != actx.tenant.id:
        raise UntrustedRequest("The application that sent you here is unknown.")
    actx.client = client


def check_redirect_uri(actx: AuthorizationContext) -> None:
    """Require a registered redirect URI, matched exactly (RFC 9700 §4.1.3; loopback port, RFC 8252 §7.3)."""
    assert actx.client is not None
    values = actx.params.get("redirect_uri") or []
    try:
        matches = len(values) == 1 and len(values[0]) <= 2000 and redirect_uri_matches(actx.client, values[0])
    except ValueError:  # unparsable URI (e.g. a broken IPv6 literal)
        matches = False
    if not matches:
        raise UntrustedRequest("The application sent you with a redirect URI that is not registered.")
    actx.redirect_uri = values[0]
    state = actx.params.get("state") or []
    actx.state = state[0] if len(state) == 1 and len(state[0]) <= MAX_LENGTHS["state"] else None


# --- steps whose errors go back to the client -----------------------------------------------------


def check_no_duplicates(actx: AuthorizationContext) -> None:
    """Refuse any repeated parameter except ``resource`` (RFC 6749 §3.1, RFC 8707 §2)."""
    for name, values in actx.params.items():
        if len(values) > 1 and name not in REPEATABLE:
            raise InvalidRequest(f"parameter {name} is repeated")
    for name, limit in MAX_LENGTHS.items():
        value = actx.one(name)
        if value is not None and len(value) > limit:
            raise InvalidRequest(f"{name} is too long")


def check_response_type(actx: AuthorizationContext) -> None:
    """Allow only the authorization code flow (OIDC Core §3.1.2.1) with query response mode."""
    response_type = actx.one("response_type")
    if response_type is None:
        raise InvalidRequest("response_type is required")
    if response_type != "code":
        raise UnsupportedResponseType("only response_type=code is supported")
    mode = actx.one("response_mode")
    if mode is not None and mode != "query":
        raise InvalidRequest("only response_mode=query is supported")


def check_request_object(actx: AuthorizationContext) -> None:
    """Refuse request objects (OIDC Core §6; errors per §3.1.2.6)."""
    if "request" in actx.params:
        raise RequestNotSupported("the request parameter is not supported")
    if "request_uri" in actx.params:
        raise RequestUriNotSupported("the request_uri parameter is not supported")


def check_grant_type(actx: AuthorizationContext) -> None:
    """Require that the client may use the authorization code grant (RFC 6749 §4.1.2.1 unauthorized_client)."""
    assert actx.client is not None
    if "authorization_code" not in actx.client.grant_types:
        raise UnauthorizedClient("the client may not use the authorization code grant")


def check_scope(actx: AuthorizationContext) -> None:
    """Grant requested ∩ allowed (RFC 6749 §3.3; OIDC Core §3.1.2.1: unknown scopes SHOULD be ignored).

    Malformed scopes, or none left after the intersection, are ``invalid_scope``.
    """
    assert actx.client is not None
    raw = actx.one("scope")
    if raw is None:
        raise InvalidScope("scope is required")
    requested = tuple(dict.fromkeys(raw.split(" ")))
    if "" in requested or not all(token.isprintable() and '"' not in token for token in requested):
        raise InvalidScope("scope is malformed")
    granted = tuple(token for token in requested if token in actx.client.scopes)
    if not granted:
        raise InvalidScope("none of the requested scopes is allowed for this client")
    actx.scope = granted


def check_pkce(actx: AuthorizationContext) -> None:
    """Require PKCE with S256 (RFC 7636 §4.3, §4.2; RFC 9700 §2.1.1: ``plain`` refused)."""
    challenge = actx.one("code_challenge")
    method = actx.one("code_challenge_method")
    if challenge is None:
        raise InvalidRequest("code_challenge is required (PKCE)")
    if method != "S256":
        raise InvalidRequest("code_challenge_method must be S256")
    if not CODE_CHALLENGE_RE.fullmatch(challenge):
        raise InvalidRequest("code_challenge must be 43-128 base64url characters")
    actx.code_challenge = challenge


def check_resource(actx: AuthorizationContext) -> None:
    """Accept resource indicators the client may use: absolute, no fragment (RFC 8707 §2)."""
    assert actx.client is not None
    resources = tuple(dict.fromkeys(actx.params.get("resource") or []))
    for resource in resources:
        try:
            parts = urlsplit(resource)
        except ValueError as exc:
            raise InvalidTarget("resource is not a valid URI") from exc
        if not parts.scheme or "#" in resource or resource not in actx.client.resources:
            raise InvalidTarget("resource is not an absolute URI this client may use")
    actx.resources = resources


def check_prompt(actx: AuthorizationContext) -> None:
    """Validate ``prompt`` (OIDC Core §3.1.2.1): known values, ``none`` only alone."""
    raw = actx.one("prompt")
    if raw is None:
        return
    values = tuple(dict.fromkeys(raw.split(" ")))
    if "" in values or not set(values) <= PROMPT_VALUES:
        raise InvalidRequest("prompt has an unsupported value")
    if "none" in values and len(values) > 1:
        raise InvalidRequest("prompt=none cannot be combined with other values")
    actx.prompt = values


def check_max_age(actx: AuthorizationContext) -> None:
    """Parse ``max_age``: a non-negative integer number of seconds (OIDC Core §3.1.2.1)."""
    raw = actx.one("max_age")
    if raw is None:
        return
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10:
        raise InvalidRequest("max_age must be a non-negative integer")
    actx.max_age = int(raw)


async def check_id_token_hint(actx: AuthorizationContext) -> None:
    """Verify ``id_token_hint`` as one of our ID tokens; expired ones are fine (OIDC Core §3.1.2.1)."""
    hint = actx.one("id_token_hint")
    if hint is None:
        return
    try:
        claims = await actx.ctx.tokens.verify_own_jwt(tenant=actx.tenant, token=hint, typ="JWT")
    except TokenInvalid as exc:
        raise InvalidRequest("id_token_hint is not a valid ID token of this issuer") from exc
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidRequest("id_token_hint has no subject")
    actx.id_token_hint_sub = sub


TRUST_STEPS: tuple[Step, ...] = (check_client, check_redirect_uri)
REQUEST_STEPS: tuple[Step, ...] = (
    check_no_duplicates,
    check_response_type,
    check_request_object,
    check_grant_type,
    check_scope,
    check_pkce,
    check_resource,
    check_prompt,
    check_max_age,
    check_id_token_hint,
)


async def run_steps(actx: AuthorizationContext, steps: tuple[Step, ...]) -> None:
    """Run steps in order; the first one that raises ends the request."""
    for step in steps:
        result = step(actx)
        if inspect.isawaitable(result):
            await result


# --- outcomes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the browser back to the client (success or error response)."""

    location: str


@dataclass(frozen=True, slots=True)
class ErrorPage:
    """Show an error page; the request cannot be answered by redirect."""

    message: str
    status: int = 400


@dataclass(frozen=True, slots=True)
class StartInteraction:
    """Send the browser to the login or consent page."""

    location: str
    browser_secret: str
    new_browser: bool
    saml_state: str | None = None  # a SAML upstream's sealed state, for the browser's state cookie


Outcome = Redirect | ErrorPage | StartInteraction


async def process_authorization(
    session: AsyncSession,
    *,
    ctx: AppContext,
    tenant: TenantInfo,
    params: dict[str, list[str]],
    session_cookie: str | None,
    browser_cookie: str | None,
) -> Outcome:
    """Validate an authorization request and decide: redirect, error page, or interaction."""
    actx = AuthorizationContext(ctx=ctx, tenant=tenant, params=params)
    try:
        await run_steps(actx, TRUST_STEPS)
    except UntrustedRequest as exc:
        return ErrorPage(exc.message)
    assert actx.client is not None and actx.redirect_uri is not None
    client, redirect_uri = actx.client, actx.redirect_uri

    def fail(error: OAuthError) -> Redirect:
        return Redirect(
            error_redirect_url(redirect_uri=redirect_uri, issuer=tenant.issuer, error=error, state=actx.state)
        )

    try:
        await run_steps(actx, REQUEST_STEPS)
        request = actx.build()
        # ``prompt=login`` signs in again whatever session there is (login_needed): none is read.
        sso = (
            None
            if "login" in request.prompt
            else await load_session(
                session,
                hasher=ctx.secret_hasher,
                settings=ctx.settings.sessions,
                tenant_id=tenant.id,
                cookie=session_cookie,
            )
        )
        prompt_none = "none" in request.prompt
        needs_login = login_needed(request, sso, now_ts=time.time())
        if needs_login and prompt_none:
            raise LoginRequired("the user is not signed in or must sign in again")
        if not needs_login:
            assert sso is not None
            # The same consent-or-finish step as after a fresh sign-in (resume_after_login).
            finished = await consent_or_finish(session, ctx=ctx, tenant=tenant, client=client, request=request, sso=sso)
            if finished is not None:
                return Redirect(finished)
            if prompt_none:
                raise ConsentRequired("the user has not approved this application yet")
    except OAuthError as exc:
        return fail(exc)
    existing = usable_browser_secret(browser_cookie)
    secret = existing or random_token(32)
    if needs_login:
        # Nothing written so far, and the interaction row is this request's one write (no events): it
        # needs no transaction of its own (a no-op where an SSO read has begun one).
        await one_statement(session)
    interaction_id = await create_interaction(
        session,
        ctx=ctx,
        tenant=tenant,
        client=client,
        request=request,
        browser_secret=secret,
        sso=None if needs_login else sso,
    )
    location = f"{tenant.issuer}/interaction/{interaction_id}"
    if needs_login and (alias := await _upstream_for(session, ctx, tenant, request)) is not None:
        # Straight to the upstream (what /broker/{alias}/login would answer, one round trip sooner): the
        # sealed state is bound to the browser secret this very response sets, if it is a new one.
        try:
            upstream = await ctx.broker.start(
                session,
                tenant_id=tenant.id,
                alias=alias,
                interaction_id=interaction_id,
                browser_secret=secret,
                callback_url=f"{tenant.issuer}/broker/{alias}/callback",
            )
        except DomainError:
            pass  # gone or refused since it was chosen: the login page offers what is left
        else:
            return StartInteraction(upstream.url, secret, existing is None, saml_state=upstream.saml_state)
    return StartInteraction(location, secret, existing is None)


async def _upstream_for(
    session: AsyncSession, ctx: AppContext, tenant: TenantInfo, request: AuthorizationRequest
) -> str | None:
    """Return the alias of the upstream the request goes straight to, or ``None`` for the login page.

    ``idp_hint`` is the app's own "Sign in with ..." button; else a ``login_hint`` that is an email address
    in a domain an enabled upstream owns is home-realm discovery done by the app (as the login page's
    email step does). Decided once, here: the login page a person comes back to offers every way to sign
    in. An unknown or disabled alias, or a hint no upstream owns, shows the login page.
    """
    if request.idp_hint and await ctx.broker.provider_cache.enabled(session, tenant.id, request.idp_hint):
        return request.idp_hint
    if request.login_hint:
        owner = await provider_for_email_domain(session, tenant.id, request.login_hint)
        if owner is not None:
            return owner.alias
    return None
