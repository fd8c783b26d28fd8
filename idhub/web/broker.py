"""The browser side of brokering: off to the upstream, and back from it into the interaction.

``GET {issuer}/broker/{alias}/login?interaction=ID`` sends the browser to the upstream for a pending
interaction (from the login page's buttons and email step; an ``idp_hint`` is sent upstream by
``/authorize`` itself); ``GET {issuer}/broker/{alias}/callback``
takes the upstream's answer, lets the broker validate it and find the user, and resumes the
interaction exactly as a password sign-in does (:func:`idhub.oidc.interaction.resume_after_login`).
A refused answer is an error page, an audit entry with the reason, and no session.

SAML answers arrive as a cross-site POST at the ACS (Bindings §3.5), which carries none of idhub's
``SameSite=Lax`` cookies, so nothing can be tied to the browser there. The ACS only hands the Response
back to the browser in a form that posts it to ``.../saml/continue`` on idhub's own site, where the
cookies come along: that step checks the browser binding, validates the Response and resumes. Nothing
is believed at the ACS itself.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from idhub.broker.service import Finished, ProofRequired
from idhub.context import AppContext
from idhub.deps import ContextDep, TenantDep, UnitOfWorkDep, client_address
from idhub.events import Actor
from idhub.oidc.interaction import (
    BROWSER_COOKIE,
    InteractionError,
    csrf_token,
    csrf_valid,
    resume_after_login,
    usable_browser_secret,
)
from idhub.sessions.login import DEVICE_COOKIE, DeviceTrust, authenticate_password
from idhub.sessions.service import create_session
from idhub.storage.engine import read_only
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo
from idhub.web.cookies import clear_cookie, set_cookie, set_session_cookie
from idhub.web.forms import BadForm, read_form, read_params, single
from idhub.web.render import PAGE_HEADERS, error_page, render_page
from idhub.web.router import LOGIN_FAILED, open_interaction
from idhub.web.routing import PageRoute

router = APIRouter(tags=["broker"], route_class=PageRoute)

Alias = Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
_RESPONSES: dict[int | str, dict[str, object]] = {
    303: {"description": "To the upstream, or on with the interaction"},
    400: {"description": "HTML error page", "content": {"text/html": {}}},
    404: {"description": "HTML error page (unknown upstream)", "content": {"text/html": {}}},
    503: {"description": "HTML error page (the upstream is not responding)", "content": {"text/html": {}}},
}


SAML_STATE_COOKIE = "idhub_broker_saml"
_INTERACTION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_SAML_FORM = 400_000  # the connector's 256 kB Response cap, base64-encoded, plus the form's own fields
_AUTOPOST = "document.forms[0].submit();"
# The one script idhub's pages run, allowed by its hash only (CSP Level 3 §8.3); without JavaScript the
# person presses the button.
_AUTOPOST_CSP = PAGE_HEADERS["content-security-policy"].replace(
    "script-src 'none'",
    "script-src 'sha256-" + base64.b64encode(hashlib.sha256(_AUTOPOST.encode()).digest()).decode() + "'",
)
_SAML_RESPONSES: dict[int | str, dict[str, object]] = {
    **_RESPONSES,
    413: {"description": "HTML error page (the Response is too large)", "content": {"text/html": {}}},
}


def _see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers={"cache-control": "no-store"})


@router.get(
    "/broker/{alias}/login",
    summary="Sign in at an upstream identity provider for a pending interaction",
    response_class=Response,
    responses=_RESPONSES,
)
async def broker_login(
    alias: Alias,
    request: Request,
    tenant: TenantDep,
    ctx: ContextDep,
    uow: UnitOfWorkDep,
    interaction: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")],
) -> Response:
    """Send the browser to the upstream's sign-in (303)."""
    # Nothing is written here (the state travels sealed): the reads need no transaction, BEGIN/COMMIT spared.
    await read_only(uow.session)
    row, _request, _client, secret = await open_interaction(request, ctx, tenant, uow.session, interaction)
    redirect = await ctx.broker.start(
        uow.session,
        tenant_id=tenant.id,
        alias=alias,
        interaction_id=row.id,
        browser_secret=secret,
        callback_url=f"{tenant.issuer}/broker/{alias}/callback",
    )
    response = _see_other(redirect.url)
    if redirect.saml_state is not None:
        set_cookie(response, ctx, tenant, SAML_STATE_COOKIE, redirect.saml_state)
    return response


@router.get(
    "/broker/{alias}/callback",
    summary="Redirection endpoint for an upstream OpenID provider (RFC 6749 §3.1.2)",
    response_class=Response,
    responses=_RESPONSES,
)
async def broker_callback(
    alias: Alias, request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep
) -> Response:
    """Validate the upstream's answer, find the user, and go on with the interaction (303)."""
    try:
        fields = await read_params(request)
        params = {name: single(fields, name) or "" for name in fields}  # a repeated parameter is malformed
    except BadForm:
        return error_page("The request is malformed.", tenant=tenant)
    finished = await ctx.broker.finish(
        uow,
        directory=ctx.directory(uow),
        tenant_id=tenant.id,
        alias=alias,
        params=params,
        browser_secret=usable_browser_secret(request.cookies.get(BROWSER_COOKIE)),
        callback_url=f"{tenant.issuer}/broker/{alias}/callback",
    )
    return await _next_step(request, ctx, tenant, uow, finished)


@router.get(
    "/broker/{alias}/saml/metadata",
    summary="SAML 2.0 metadata of idhub as the service provider of this upstream",
    response_class=Response,
    responses={
        200: {"content": {"application/samlmetadata+xml": {}}},
        404: {"description": "HTML error page (unknown upstream)", "content": {"text/html": {}}},
    },
)
async def saml_metadata(alias: Alias, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep) -> Response:
    """Return the SP metadata to register at the IdP (SAML Metadata §2.4.4, its media type per §4.1)."""
    document = await ctx.broker.saml_metadata(uow, tenant.id, alias)
    return Response(document, media_type="application/samlmetadata+xml", headers={"cache-control": "max-age=300"})


@router.post(
    "/broker/{alias}/saml/acs",
    summary="Assertion Consumer Service of a SAML 2.0 upstream (HTTP-POST binding)",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}}, **_SAML_RESPONSES},
)
async def saml_acs(alias: Alias, request: Request, tenant: TenantDep) -> Response:
    """Hand the POSTed Response back to the browser, to be posted on to ``continue`` with its cookies."""
    fields = await _saml_form(request)
    if fields is None:
        return error_page("The request is malformed.", tenant=tenant)
    response = render_page(
        "saml_post.html",
        tenant=tenant,
        action=f"{tenant.issuer}/broker/{alias}/saml/continue",
        saml_response=fields["SAMLResponse"],
        relay_state=fields.get("RelayState", ""),
        script=_AUTOPOST,
    )
    response.headers["content-security-policy"] = _AUTOPOST_CSP
    return response


@router.post(
    "/broker/{alias}/saml/continue",
    summary="Validate a SAML 2.0 Response in the browser that started the sign-in, and go on",
    response_class=Response,
    responses=_SAML_RESPONSES,
)
async def saml_continue(
    alias: Alias, request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep
) -> Response:
    """Validate the Response for this browser's pending SAML sign-in and go on with the interaction (303)."""
    fields = await _saml_form(request)
    if fields is None:
        return error_page("The request is malformed.", tenant=tenant)
    finished = await ctx.broker.finish(
        uow,
        directory=ctx.directory(uow),
        tenant_id=tenant.id,
        alias=alias,
        params=fields,
        browser_secret=usable_browser_secret(request.cookies.get(BROWSER_COOKIE)),
        callback_url=f"{tenant.issuer}/broker/{alias}/saml/acs",
        saml_state=request.cookies.get(SAML_STATE_COOKIE),
    )
    response = await _next_step(request, ctx, tenant, uow, finished)
    clear_cookie(response, ctx, tenant, SAML_STATE_COOKIE)
    return response


@router.post(
    "/broker/{alias}/link",
    summary="Sign in with an existing account to link an upstream account to it",
    response_class=Response,
    responses={200: {"description": "The form again", "content": {"text/html": {}}}, **_RESPONSES},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            name: {"type": "string"}
                            for name in ("interaction", "proof", "csrf_token", "username", "password")
                        },
                    }
                }
            }
        }
    },
)
async def link_submit(
    alias: Alias, request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep
) -> Response:
    """Check the existing account's password, link the upstream account to it and go on (303)."""
    try:
        form = await read_form(request)
        fields = {
            name: single(form, name) or "" for name in ("interaction", "proof", "csrf_token", "username", "password")
        }
    except BadForm:
        return error_page("The form is malformed.", tenant=tenant)
    if not _INTERACTION_ID.fullmatch(fields["interaction"]):
        return error_page("The form is malformed.", tenant=tenant)
    row, _auth_request, _client, secret = await open_interaction(
        request, ctx, tenant, uow.session, fields["interaction"]
    )
    if not csrf_valid(ctx.cookie_key, row.id, secret, fields["csrf_token"]):
        raise InteractionError("The form has expired or was not sent by this site. Go back and try again.")
    result = await authenticate_password(
        uow,
        passwords=ctx.passwords,
        throttle=ctx.throttle,
        tenant_id=tenant.id,
        username=fields["username"],
        password=fields["password"],
        address=client_address(request),
        devices=DeviceTrust.from_settings(ctx.cookie_key, ctx.settings.throttle),
        device_cookie=request.cookies.get(DEVICE_COOKIE),
    )
    if result.user_id is None:
        provider = await ctx.broker.enabled_provider(uow, tenant.id, alias)
        return _link_page(
            ctx, tenant, alias, row.id, secret, provider.display_name, fields["proof"], reason="", email=None,
            error=LOGIN_FAILED,
        )  # fmt: skip
    finished = await ctx.broker.prove(
        uow,
        tenant_id=tenant.id,
        alias=alias,
        token=fields["proof"],
        browser_secret=secret,
        interaction_id=row.id,
        user_id=result.user_id,
    )
    return await _resume(request, ctx, tenant, uow, finished)


def _link_page(
    ctx: AppContext,
    tenant: TenantInfo,
    alias: str,
    interaction_id: str,
    secret: str,
    upstream_name: str,
    proof: str,
    *,
    reason: str,
    email: str | None,
    error: str | None = None,
) -> Response:
    return render_page(
        "link_account.html",
        tenant=tenant,
        action=f"{tenant.issuer}/broker/{alias}/link",
        upstream_name=upstream_name,
        reason=reason,
        email=email,
        error=error,
        csrf_token=csrf_token(ctx.cookie_key, interaction_id, secret),
        interaction=interaction_id,
        proof=proof,
    )


async def _next_step(
    request: Request, ctx: AppContext, tenant: TenantInfo, uow: UnitOfWork, result: Finished | ProofRequired
) -> Response:
    """Resume the interaction, or ask the person to prove they own the existing account first."""
    if isinstance(result, Finished):
        return await _resume(request, ctx, tenant, uow, result)
    row, _auth_request, _client, secret = await open_interaction(
        request, ctx, tenant, uow.session, result.interaction_id
    )
    return _link_page(
        ctx, tenant, result.provider.alias, row.id, secret, result.provider.display_name, result.token,
        reason=result.reason, email=result.email,
    )  # fmt: skip


async def _saml_form(request: Request) -> dict[str, str] | None:
    """Return ``SAMLResponse`` and ``RelayState`` of a POST (each at most once), or None when malformed."""
    try:
        form = await read_form(request, max_bytes=MAX_SAML_FORM)
        fields = {name: single(form, name) or "" for name in ("SAMLResponse", "RelayState")}
    except BadForm:
        return None
    if not fields["SAMLResponse"] or len(fields["RelayState"]) > 80:  # RelayState: Bindings §3.5.3
        return None
    return fields


async def _resume(
    request: Request, ctx: AppContext, tenant: TenantInfo, uow: UnitOfWork, finished: Finished
) -> Response:
    """Resume the interaction a brokered sign-in finished, exactly as a password sign-in does."""
    uow.actor = Actor("user", str(finished.linked.user_id))
    if finished.interaction_id is None:  # IdP-initiated: an SSO session, then the person's account page
        _sso, cookie = await create_session(
            uow.session,
            hasher=ctx.secret_hasher,
            settings=ctx.settings.sessions,
            tenant_id=tenant.id,
            user_id=finished.linked.user_id,
            amr=finished.amr,
            acr=finished.identity.acr,
            link_id=finished.linked.link_id,
            previous_cookie=request.cookies.get(ctx.settings.sessions.cookie_name),
        )
        response = _see_other(f"{tenant.issuer}/account")
        set_session_cookie(response, ctx, tenant, cookie)
        return response
    row, auth_request, client, _secret = await open_interaction(
        request, ctx, tenant, uow.session, finished.interaction_id
    )
    if row.user_id is not None:  # signed in already (another tab): one sign-in per interaction
        raise InteractionError("This sign-in request was already completed. Return to the application.")
    resumed = await resume_after_login(
        uow.session,
        ctx=ctx,
        tenant=tenant,
        interaction=row,
        request=auth_request,
        client=client,
        user_id=finished.linked.user_id,
        amr=finished.amr,
        acr=finished.identity.acr,
        link_id=finished.linked.link_id,
        previous_cookie=request.cookies.get(ctx.settings.sessions.cookie_name),
    )
    response = _see_other(resumed.location)
    set_session_cookie(response, ctx, tenant, resumed.session_cookie)
    return response
