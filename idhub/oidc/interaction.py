"""Interactions: a validated authorization request parked while the user signs in or consents.

An interaction is bound to the browser that started it by a random cookie whose keyed hash is stored
in ``Interaction.browser_hash``; every form carries a CSRF token derived (HMAC) from the interaction
id and that browser secret, so a form can be submitted only from the browser the request began in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.clients.service import ClientInfo
from idhub.context import AppContext
from idhub.crypto.secrets import constant_time_equals, random_token
from idhub.directory.entitlements import person_scopes
from idhub.oidc.codes import create_authorization_code
from idhub.oidc.errors import AccessDenied, LoginRequired, OAuthError
from idhub.sessions.service import SsoSession, create_session
from idhub.storage.base import utcnow
from idhub.storage.models import Consent
from idhub.storage.single_use import consume, consuming
from idhub.storage.tables import INTERACTIONS
from idhub.tenants.service import TenantInfo

BROWSER_COOKIE = "idhub_interaction"
# The key of an authorization code's ``extra`` that carries the session's ``acr`` (no column of its own).
CODE_ACR = "acr"
MAX_BROWSER_SECRET = 128
MAX_INTERACTION_ID = 64
_NEW = insert(INTERACTIONS)
# Completing an interaction (single use); the second also binds it to the session a sign-in just started.
_BINDING = ("user_id", "session_id")
_COMPLETE_WHERE = (INTERACTIONS.c.id == bindparam("p_id"),)
_COMPLETE = consuming(INTERACTIONS, used="completed_at", where=_COMPLETE_WHERE, returning=(INTERACTIONS.c.id,))
_COMPLETE_BINDING = consuming(
    INTERACTIONS, used="completed_at", where=_COMPLETE_WHERE, returning=(INTERACTIONS.c.id,), also=_BINDING
)


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """An authorization request that passed every check (OIDC Core §3.1.2.1)."""

    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    code_challenge: str
    code_challenge_method: str
    state: str | None = None
    nonce: str | None = None
    resources: tuple[str, ...] = ()
    prompt: tuple[str, ...] = ()
    max_age: int | None = None
    login_hint: str | None = None
    id_token_hint_sub: str | None = None
    idp_hint: str | None = None  # the alias of the upstream to sign in with
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scope_string(self) -> str:
        """Return the scopes as the space-separated wire value."""
        return " ".join(self.scope)

    def to_params(self) -> dict[str, Any]:
        """Serialise for ``Interaction.params``."""
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> AuthorizationRequest:
        """Rebuild from ``Interaction.params``."""
        values = dict(params)
        for name in ("scope", "resources", "prompt"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)


class InteractionError(Exception):
    """An interaction cannot continue; rendered as an HTML error page (never a redirect)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# --- redirects back to the client ----------------------------------------------------------------


def authorization_response_url(redirect_uri: str, params: dict[str, str | None]) -> str:
    """Append response parameters to the redirect URI, keeping its own query (RFC 6749 §3.1.2)."""
    parts = urlsplit(redirect_uri)
    extra = urlencode([(name, value) for name, value in params.items() if value is not None])
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query, fragment=""))


def error_redirect_url(*, redirect_uri: str, issuer: str, error: OAuthError, state: str | None) -> str:
    """Return the error response location (RFC 6749 §4.1.2.1), with ``iss`` (RFC 9207 §2)."""
    return authorization_response_url(
        redirect_uri,
        {"error": error.error, "error_description": error.description, "state": state, "iss": issuer},
    )


# --- browser binding and CSRF ----------------------------------------------------------------------


def usable_browser_secret(value: str | None) -> str | None:
    """Return the browser secret from the cookie when it is well-formed."""
    if value and 16 <= len(value) <= MAX_BROWSER_SECRET and value.isascii():
        return value
    return None


def csrf_token(cookie_key: bytes, purpose: str, browser_secret: str) -> str:
    """Derive the CSRF token of a form from its purpose (e.g. the interaction id) and the browser secret."""
    mac = hmac.new(cookie_key, f"csrf\x00{purpose}\x00{browser_secret}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def csrf_valid(cookie_key: bytes, purpose: str, browser_secret: str | None, presented: str | None) -> bool:
    """Check a presented CSRF token in constant time."""
    if not browser_secret or not presented or len(presented) > 128:
        return False
    return constant_time_equals(csrf_token(cookie_key, purpose, browser_secret), presented)


async def create_interaction(
    session: AsyncSession,
    *,
    ctx: AppContext,
    tenant: TenantInfo,
    client: ClientInfo,
    request: AuthorizationRequest,
    browser_secret: str,
    sso: SsoSession | None,
) -> str:
    """Park ``request`` until the user has signed in or consented; return the interaction id.

    ``sso`` is set when the user is already signed in and only consent is missing.
    """
    now = utcnow()
    interaction_id = random_token(24)
    parameters = {
        "id": interaction_id,
        "tenant_id": tenant.id,
        "client_id": client.id,
        "params": request.to_params(),
        "browser_hash": ctx.secret_hasher.hash(browser_secret),
        "user_id": sso.user_id if sso else None,
        "session_id": sso.id if sso else None,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ctx.settings.sessions.interaction_ttl),
    }
    await session.execute(_NEW, parameters)
    return interaction_id


@dataclass(frozen=True, slots=True)
class PendingInteraction:
    """A parked authorization request, as loaded for the browser that started it."""

    id: str
    client_id: uuid.UUID
    params: dict[str, Any]
    user_id: uuid.UUID | None  # set once someone signed in and consent is still to be given
    session_id: str | None


_LOAD = select(
    INTERACTIONS.c.id,
    INTERACTIONS.c.client_id,
    INTERACTIONS.c.params,
    INTERACTIONS.c.user_id,
    INTERACTIONS.c.session_id,
    INTERACTIONS.c.browser_hash,
    INTERACTIONS.c.expires_at,
    INTERACTIONS.c.completed_at,
).where(INTERACTIONS.c.id == bindparam("p_id"), INTERACTIONS.c.tenant_id == bindparam("p_tenant_id"))
# Binds an interaction waiting for consent to the session that signed in.
_BIND = (
    update(INTERACTIONS)
    .where(INTERACTIONS.c.id == bindparam("p_id"))
    .values(user_id=bindparam("p_user_id"), session_id=bindparam("p_session_id"))
)


async def load_interaction(
    session: AsyncSession, *, ctx: AppContext, tenant: TenantInfo, interaction_id: str, browser_secret: str | None
) -> PendingInteraction:
    """Return the pending interaction bound to this browser or raise :class:`InteractionError`."""
    if not interaction_id or len(interaction_id) > MAX_INTERACTION_ID:
        raise InteractionError("This sign-in request is unknown or has expired.", 404)
    row = (await session.execute(_LOAD, {"p_id": interaction_id, "p_tenant_id": tenant.id})).first()
    if row is None:
        raise InteractionError("This sign-in request is unknown or has expired.", 404)
    if row.completed_at is not None:
        raise InteractionError("This sign-in request was already completed. Return to the application.")
    if row.expires_at <= utcnow():
        raise InteractionError("This sign-in request has expired. Return to the application and try again.")
    if browser_secret is None or not ctx.secret_hasher.verify(browser_secret, row.browser_hash):
        raise InteractionError("This sign-in request was started in another browser.", 403)
    return PendingInteraction(row.id, row.client_id, row.params, row.user_id, row.session_id)


async def complete_interaction(
    session: AsyncSession, *, interaction_id: str, also: Mapping[str, Any] | None = None
) -> None:
    """Mark an interaction used with the single-use primitive: of two parallel submissions exactly one wins.

    ``also`` binds the interaction to the sign-in that completes it (``user_id`` and ``session_id``, both
    set by the winning statement).
    """
    parameters = {"p_id": interaction_id, "p_now": utcnow()}
    if also:
        won = await consume(session, _COMPLETE_BINDING, parameters | {f"p_{name}": also[name] for name in _BINDING})
    else:
        won = await consume(session, _COMPLETE, parameters)
    if won is None:
        raise InteractionError("This sign-in request was already completed. Return to the application.")


# --- login and consent decisions -------------------------------------------------------------------


def hint_names_other_user(request: AuthorizationRequest, sso: SsoSession) -> bool:
    """Tell whether ``id_token_hint`` named someone other than the signed-in user (OIDC Core §3.1.2.1)."""
    return request.id_token_hint_sub is not None and request.id_token_hint_sub != sso.subject


def login_needed(request: AuthorizationRequest, sso: SsoSession | None, *, now_ts: float) -> bool:
    """Tell whether the user must (re-)authenticate (OIDC Core §3.1.2.1 ``prompt``, ``max_age``, ``id_token_hint``)."""
    if sso is None or "login" in request.prompt:
        return True
    if request.max_age is not None and sso.auth_time.timestamp() + request.max_age < now_ts:
        return True
    return hint_names_other_user(request, sso)


async def consented_scopes(session: AsyncSession, *, client: ClientInfo, user_id: uuid.UUID) -> set[str]:
    """Return the scopes the user already approved for the client."""
    scope = await session.scalar(
        select(Consent.scope).where(Consent.user_id == user_id, Consent.client_id == client.id)
    )
    return set((scope or "").split())


async def entitled_request(
    session: AsyncSession, *, client: ClientInfo, request: AuthorizationRequest, user_id: uuid.UUID
) -> AuthorizationRequest:
    """Return ``request`` keeping only the scopes the person may be granted at the client (one statement).

    design.md: requested ∩ allowed for the client ∩ entitled by the person's groups
    (:func:`idhub.directory.entitlements.granted_scopes`). The consent page shows these, and the code
    carries these; none at all left is :func:`not_entitled_url`.
    """
    scopes = await person_scopes(
        session, client_pk=client.id, allowed=client.scopes, user_id=user_id, requested=request.scope
    )
    return request if scopes == request.scope else replace(request, scope=scopes)


def not_entitled_url(tenant: TenantInfo, request: AuthorizationRequest) -> str:
    """Return the error redirect for a person entitled to none of the requested scopes (RFC 6749 §4.1.2.1)."""
    error = AccessDenied("the user may not obtain any of the requested scopes for this application")
    return error_redirect_url(redirect_uri=request.redirect_uri, issuer=tenant.issuer, error=error, state=request.state)


async def consent_needed(
    session: AsyncSession, *, client: ClientInfo, request: AuthorizationRequest, user_id: uuid.UUID
) -> bool:
    """Tell whether the consent page must be shown.

    ``prompt=consent`` always asks, first-party clients included (OIDC Core §3.1.2.1); otherwise
    first-party clients never ask, and others only for scopes beyond those already approved.
    """
    if "consent" in request.prompt:
        return True
    if client.first_party:
        return False
    return not set(request.scope) <= await consented_scopes(session, client=client, user_id=user_id)


async def record_consent(
    session: AsyncSession, *, tenant: TenantInfo, client: ClientInfo, user_id: uuid.UUID, scope: tuple[str, ...]
) -> None:
    """Store or extend the user's consent for the client (the union of old and new scopes)."""
    for _attempt in range(2):
        row = await session.scalar(select(Consent).where(Consent.user_id == user_id, Consent.client_id == client.id))
        if row is not None:
            row.scope = " ".join(dict.fromkeys([*row.scope.split(), *scope]))
            row.updated_at = utcnow()
            await session.flush()
            return
        try:
            async with session.begin_nested():
                session.add(Consent(tenant_id=tenant.id, user_id=user_id, client_id=client.id, scope=" ".join(scope)))
                await session.flush()
            return
        except IntegrityError:  # approved in parallel: extend the other row instead
            continue


async def finish_authorization(
    session: AsyncSession,
    *,
    ctx: AppContext,
    tenant: TenantInfo,
    client: ClientInfo,
    request: AuthorizationRequest,
    sso: SsoSession,
) -> str:
    """Issue the authorization code and return the success redirect (RFC 6749 §4.1.2, RFC 9207 §2).

    ``request`` comes from :func:`entitled_request`: its scopes are what the person may be granted.
    """
    code = await create_authorization_code(
        session,
        hasher=ctx.secret_hasher,
        tenant_id=tenant.id,
        client_pk=client.id,
        user_id=sso.user_id,
        session_id=sso.id,
        redirect_uri=request.redirect_uri,
        scope=request.scope_string,
        nonce=request.nonce,
        code_challenge=request.code_challenge,
        code_challenge_method=request.code_challenge_method,
        resources=list(request.resources),
        auth_time=sso.auth_time,
        amr=list(sso.amr),
        ttl=ctx.settings.tokens.authorization_code_ttl,
        # The code has no acr column; its JSON ``extra`` carries it to the ID token (OIDC Core §2).
        extra={CODE_ACR: sso.acr} if sso.acr else None,
    )
    return authorization_response_url(
        request.redirect_uri, {"code": code, "state": request.state, "iss": tenant.issuer}
    )


async def consent_or_finish(
    session: AsyncSession,
    *,
    ctx: AppContext,
    tenant: TenantInfo,
    client: ClientInfo,
    request: AuthorizationRequest,
    sso: SsoSession,
    interaction_id: str | None = None,
    also: Mapping[str, Any] | None = None,
) -> str | None:
    """Finish a request of a signed-in user unless consent is still missing; ``None`` means "ask first".

    The one consent-or-finish decision of every way to the code: a browser already signed in
    (:func:`idhub.oidc.authorize.process_authorization`) and a fresh sign-in (:func:`resume_after_login`).
    When finishing a parked request, ``interaction_id`` is completed first with the single-use primitive,
    so of two parallel finishes exactly one issues a code (:class:`InteractionError` for the other);
    ``also`` are columns of the interaction that statement sets too. Only the scopes the person is
    entitled to are asked for and granted; none at all is ``access_denied`` back to the client.
    """
    request = await entitled_request(session, client=client, request=request, user_id=sso.user_id)
    if not request.scope:
        if interaction_id is not None:
            await complete_interaction(session, interaction_id=interaction_id, also=also)
        return not_entitled_url(tenant, request)
    if await consent_needed(session, client=client, request=request, user_id=sso.user_id):
        return None
    if interaction_id is not None:
        await complete_interaction(session, interaction_id=interaction_id, also=also)
    return await finish_authorization(session, ctx=ctx, tenant=tenant, client=client, request=request, sso=sso)


# --- the one way back from any sign-in ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resumed:
    """Where the browser goes after a sign-in (303), and the new SSO session's cookie."""

    location: str
    session_cookie: str


async def resume_after_login(
    session: AsyncSession,
    *,
    ctx: AppContext,
    tenant: TenantInfo,
    interaction: PendingInteraction,
    request: AuthorizationRequest,
    client: ClientInfo,
    user_id: uuid.UUID,
    amr: Sequence[str],
    acr: str | None = None,
    link_id: uuid.UUID | None = None,
    previous_cookie: str | None = None,
) -> Resumed:
    """Go on with an interaction once someone signed in, however they did (password, upstream, later MFA).

    Starts a new SSO session (regenerated, OWASP session fixation) that records how the person signed
    in (``amr``/``acr``, RFC 8176; ``link_id`` for a brokered sign-in), binds it to the interaction,
    then: a different user than ``id_token_hint`` named gets ``login_required`` (OIDC Core §3.1.2.1); a
    client still to be approved gets the consent page; otherwise the interaction is completed (single
    use) and the client gets its code. An interaction completed meanwhile raises :class:`InteractionError`.
    """
    sso, cookie = await create_session(
        session,
        hasher=ctx.secret_hasher,
        settings=ctx.settings.sessions,
        tenant_id=tenant.id,
        user_id=user_id,
        amr=list(amr),
        acr=acr,
        link_id=link_id,
        previous_cookie=previous_cookie,
    )
    # The interaction is bound to the new session in the statement that completes it (one round trip), or
    # on its own when the consent page comes first.
    bound = {"user_id": sso.user_id, "session_id": sso.id}
    if hint_names_other_user(request, sso):
        await complete_interaction(session, interaction_id=interaction.id, also=bound)
        error = LoginRequired("the signed-in user is not the one named by id_token_hint")
        location = error_redirect_url(
            redirect_uri=request.redirect_uri, issuer=tenant.issuer, error=error, state=request.state
        )
        return Resumed(location, cookie)
    finished = await consent_or_finish(
        session,
        ctx=ctx,
        tenant=tenant,
        client=client,
        request=request,
        sso=sso,
        interaction_id=interaction.id,
        also=bound,
    )
    if finished is None:
        await session.execute(_BIND, {"p_id": interaction.id, "p_user_id": sso.user_id, "p_session_id": sso.id})
    return Resumed(finished or f"{tenant.issuer}/interaction/{interaction.id}", cookie)
