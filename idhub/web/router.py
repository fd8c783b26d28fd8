"""Interaction pages: login and consent (thin: parse, call the services, render)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.broker.discovery import (
    MAX_EMAIL,
    discovers_by_email,
    email_domain,
    enabled_providers,
    provider_for_email_domain,
)
from idhub.broker.providers import ProviderInfo
from idhub.clients.service import ClientInfo
from idhub.context import AppContext
from idhub.deps import ContextDep, TenantDep, UnitOfWorkDep, client_address
from idhub.events import Actor
from idhub.oidc.errors import AccessDenied
from idhub.oidc.interaction import (
    BROWSER_COOKIE,
    AuthorizationRequest,
    InteractionError,
    PendingInteraction,
    complete_interaction,
    csrf_token,
    csrf_valid,
    entitled_request,
    error_redirect_url,
    finish_authorization,
    load_interaction,
    not_entitled_url,
    record_consent,
    resume_after_login,
    usable_browser_secret,
)
from idhub.sessions.login import DEVICE_COOKIE, DeviceTrust, authenticate_password
from idhub.sessions.service import cookie_path, load_session
from idhub.tenants.service import TenantInfo
from idhub.web.cookies import set_session_cookie
from idhub.web.forms import BadForm, read_form, single
from idhub.web.render import STATIC, error_page, render_page
from idhub.web.routing import PageRoute

router = APIRouter(tags=["interaction"], route_class=PageRoute)

LOGIN_FAILED = "Incorrect username or password, or too many attempts. Please try again later."
BAD_EMAIL = "Enter your email address, like name@example.com."
SCOPE_DESCRIPTIONS = {
    "openid": "Sign you in with your account",
    "profile": "See your name and username",
    "email": "See your email address",
    "offline_access": "Stay connected when you are not using it",
}
STATIC_FILES = {"idhub.css": "text/css"}
InteractionId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
_FORM_RESPONSES: dict[int | str, dict[str, object]] = {
    303: {"description": "Next step of the interaction, or back to the client"},
    400: {"description": "HTML error page", "content": {"text/html": {}}},
    403: {"description": "HTML error page (another browser)", "content": {"text/html": {}}},
}


def _form_body(*fields: str) -> dict[str, object]:
    schema = {"type": "object", "properties": {name: {"type": "string"} for name in fields}}
    return {"content": {"application/x-www-form-urlencoded": {"schema": schema}}}


def _see_other(location: str) -> RedirectResponse:
    """Redirect with 303 so the browser follows with GET (no re-POST of credentials)."""
    return RedirectResponse(location, status_code=303, headers={"cache-control": "no-store"})


async def open_interaction(
    request: Request, ctx: AppContext, tenant: TenantInfo, session: AsyncSession, interaction_id: str
) -> tuple[PendingInteraction, AuthorizationRequest, ClientInfo, str]:
    """Load the interaction bound to this browser, its request and its (still enabled) client."""
    secret = usable_browser_secret(request.cookies.get(BROWSER_COOKIE))
    row = await load_interaction(session, ctx=ctx, tenant=tenant, interaction_id=interaction_id, browser_secret=secret)
    assert secret is not None
    try:
        auth_request = AuthorizationRequest.from_params(row.params)
    except (TypeError, ValueError) as exc:
        raise InteractionError("This sign-in request is damaged. Return to the application.") from exc
    client = await ctx.clients.get(tenant.id, auth_request.client_id)
    if client is None:
        raise InteractionError("The application that sent you here is no longer available.")
    return row, auth_request, client, secret


async def _form_and_interaction(
    request: Request, ctx: AppContext, tenant: TenantInfo, session: AsyncSession, interaction_id: str
) -> tuple[dict[str, list[str]], PendingInteraction, AuthorizationRequest, ClientInfo]:
    """Parse a form post, load its interaction and check the CSRF token."""
    try:
        form = await read_form(request)
        presented = single(form, "csrf_token")
    except BadForm as exc:
        raise InteractionError("The form is malformed.") from exc
    row, auth_request, client, secret = await open_interaction(request, ctx, tenant, session, interaction_id)
    if not csrf_valid(ctx.cookie_key, row.id, secret, presented):
        raise InteractionError("The form has expired or was not sent by this site. Go back and try again.")
    return form, row, auth_request, client


def _upstream_buttons(tenant: TenantInfo, interaction_id: str, providers: list[ProviderInfo]) -> list[dict[str, str]]:
    """Return one sign-in button per enabled upstream."""
    return [
        {"alias": p.alias, "name": p.display_name, "url": broker_login_url(tenant, p.alias, interaction_id)}
        for p in providers
        if p.enabled
    ]


def broker_login_url(tenant: TenantInfo, alias: str, interaction_id: str) -> str:
    """Return where the browser starts signing in at upstream ``alias`` for an interaction."""
    return f"{tenant.issuer}/broker/{alias}/login?interaction={interaction_id}"


def _login_page(
    tenant: TenantInfo,
    interaction_id: str,
    client: ClientInfo,
    token: str,
    providers: list[ProviderInfo],
    *,
    username: str,
    error: str | None = None,
) -> Response:
    """Render the password form with one button per upstream."""
    return render_page(
        "login.html",
        tenant=tenant,
        action=f"{tenant.issuer}/interaction/{interaction_id}/login",
        username=username,
        error=error,
        client_name=client.name,
        csrf_token=token,
        upstreams=_upstream_buttons(tenant, interaction_id, providers),
    )


def _email_page(
    tenant: TenantInfo,
    interaction_id: str,
    client: ClientInfo,
    token: str,
    providers: list[ProviderInfo],
    *,
    email: str,
    error: str | None = None,
    status: int = 200,
) -> Response:
    """Render the email-first step of home-realm discovery."""
    base = f"{tenant.issuer}/interaction/{interaction_id}"
    return render_page(
        "login_email.html",
        tenant=tenant,
        status=status,
        action=f"{base}/discover",
        email=email,
        error=error,
        client_name=client.name,
        csrf_token=token,
        password_url=f"{base}?step=password",
        upstreams=_upstream_buttons(tenant, interaction_id, providers),
    )


@router.get(
    "/interaction/{interaction_id}",
    summary="Login or consent page of a pending authorization request",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}}, **_FORM_RESPONSES},
)
async def interaction_page(
    interaction_id: InteractionId, request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep
) -> Response:
    """Show the login page, or the consent page once the user is signed in."""
    session = uow.session
    try:
        row, auth_request, client, secret = await open_interaction(request, ctx, tenant, session, interaction_id)
    except InteractionError as exc:
        return error_page(exc.message, tenant=tenant, status=exc.status)
    base = f"{tenant.issuer}/interaction/{row.id}"
    token = csrf_token(ctx.cookie_key, row.id, secret)
    if row.user_id is None:
        failed = request.query_params.get("error") == "login"
        providers = await enabled_providers(session, tenant.id)
        if discovers_by_email(providers) and not failed and request.query_params.get("step") != "password":
            return _email_page(tenant, row.id, client, token, providers, email=auth_request.login_hint or "")
        return _login_page(
            tenant, row.id, client, token, providers,
            username=auth_request.login_hint or "", error=LOGIN_FAILED if failed else None,
        )  # fmt: skip
    # Only what will be granted: the scopes this person is entitled to at the client.
    entitled = await entitled_request(session, client=client, request=auth_request, user_id=row.user_id)
    scopes = [(scope, SCOPE_DESCRIPTIONS.get(scope, scope)) for scope in entitled.scope]
    return render_page(
        "consent.html",
        tenant=tenant,
        action=f"{base}/consent",
        scopes=scopes,
        client_name=client.name,
        csrf_token=token,
    )


@router.post(
    "/interaction/{interaction_id}/discover",
    summary="Submit the email address of the login page's first step (home-realm discovery)",
    response_class=Response,
    responses={
        200: {"description": "The password form and upstream buttons", "content": {"text/html": {}}},
        **_FORM_RESPONSES,
    },
    openapi_extra={"requestBody": _form_body("email", "csrf_token")},
)
async def discover_submit(
    interaction_id: InteractionId, request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep
) -> Response:
    """Send the person to the upstream that owns their address's domain (303), else show every way to sign in."""
    session = uow.session
    try:
        form, row, _auth_request, client = await _form_and_interaction(request, ctx, tenant, session, interaction_id)
        email = single(form, "email") or ""
    except InteractionError as exc:
        return error_page(exc.message, tenant=tenant, status=exc.status)
    except BadForm:
        return error_page("The form is malformed.", tenant=tenant)
    if row.user_id is not None:
        return _see_other(f"{tenant.issuer}/interaction/{row.id}")
    secret = usable_browser_secret(request.cookies.get(BROWSER_COOKIE))
    assert secret is not None  # checked with the CSRF token
    token = csrf_token(ctx.cookie_key, row.id, secret)
    if email_domain(email) is None:
        providers = await enabled_providers(session, tenant.id)
        return _email_page(tenant, row.id, client, token, providers, email=email[:MAX_EMAIL], error=BAD_EMAIL,
                           status=400)  # fmt: skip
    owner = await provider_for_email_domain(session, tenant.id, email)
    if owner is not None:
        return _see_other(broker_login_url(tenant, owner.alias, row.id))
    # No upstream owns the domain: every way to sign in, the same answer whether or not an account exists.
    providers = await enabled_providers(session, tenant.id)
    return _login_page(tenant, row.id, client, token, providers, username=email)


@router.post(
    "/interaction/{interaction_id}/login",
    summary="Submit the login form",
    response_class=Response,
    responses=_FORM_RESPONSES,
    openapi_extra={"requestBody": _form_body("username", "password", "csrf_token")},
)
async def login_submit(
    interaction_id: InteractionId, request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep
) -> Response:
    """Check the credentials; on success start a new SSO session and continue (always 303)."""
    session = uow.session
    try:
        form, row, auth_request, client = await _form_and_interaction(request, ctx, tenant, session, interaction_id)
        username, password = single(form, "username"), single(form, "password")
    except InteractionError as exc:
        return error_page(exc.message, tenant=tenant, status=exc.status)
    except BadForm:
        return error_page("The form is malformed.", tenant=tenant)
    page = f"{tenant.issuer}/interaction/{row.id}"
    if row.user_id is not None:
        return _see_other(page)
    result = await authenticate_password(
        uow,
        passwords=ctx.passwords,
        throttle=ctx.throttle,
        tenant_id=tenant.id,
        username=username or "",
        password=password or "",
        address=client_address(request),
        devices=DeviceTrust.from_settings(ctx.cookie_key, ctx.settings.throttle),
        device_cookie=request.cookies.get(DEVICE_COOKIE),
    )
    if result.user_id is None:
        return _see_other(f"{page}?error=login")
    uow.actor = Actor("user", str(result.user_id))
    try:
        resumed = await resume_after_login(
            session,
            ctx=ctx,
            tenant=tenant,
            interaction=row,
            request=auth_request,
            client=client,
            user_id=result.user_id,
            amr=["pwd"],
            previous_cookie=request.cookies.get(ctx.settings.sessions.cookie_name),
        )
    except InteractionError as exc:
        return error_page(exc.message, tenant=tenant, status=exc.status)
    response = _see_other(resumed.location)
    set_session_cookie(response, ctx, tenant, resumed.session_cookie)
    if result.device_cookie is not None:
        _set_device_cookie(response, ctx, tenant, result.device_cookie)
    return response


def _set_device_cookie(response: Response, ctx: AppContext, tenant: TenantInfo, value: str) -> None:
    """Remember this browser for the accounts it signed in to (OWASP Authentication CS, device cookies).

    Long-lived (unlike the session cookie), HttpOnly, SameSite=Lax, Secure behind https, and sent only
    to this tenant's pages.
    """
    response.set_cookie(
        DEVICE_COOKIE,
        value,
        max_age=ctx.settings.throttle.device_cookie_days * 86_400,
        path=cookie_path(tenant.slug),
        httponly=True,
        samesite="lax",
        secure=ctx.settings.secure_cookies,
    )


@router.post(
    "/interaction/{interaction_id}/consent",
    summary="Approve or deny the consent request",
    response_class=Response,
    responses=_FORM_RESPONSES,
    openapi_extra={"requestBody": _form_body("action", "csrf_token")},
)
async def consent_submit(
    interaction_id: InteractionId, request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep
) -> Response:
    """Record the user's decision and send the browser back to the client (303)."""
    session = uow.session
    try:
        form, row, auth_request, client = await _form_and_interaction(request, ctx, tenant, session, interaction_id)
        action = single(form, "action")
        if action not in ("approve", "deny"):
            raise InteractionError("Choose whether to allow or deny access.")
        if row.user_id is None:
            return _see_other(f"{tenant.issuer}/interaction/{row.id}")
        sso = await load_session(
            session,
            hasher=ctx.secret_hasher,
            settings=ctx.settings.sessions,
            tenant_id=tenant.id,
            cookie=request.cookies.get(ctx.settings.sessions.cookie_name),
        )
        if sso is None or sso.id != row.session_id:
            raise InteractionError("Your session has ended. Return to the application and sign in again.")
        await complete_interaction(session, interaction_id=row.id)
    except InteractionError as exc:
        return error_page(exc.message, tenant=tenant, status=exc.status)
    except BadForm:
        return error_page("The form is malformed.", tenant=tenant)
    if action == "deny":
        # RFC 6749 §4.1.2.1: the resource owner denied the request.
        error = AccessDenied("the user denied access")
        return _see_other(
            error_redirect_url(
                redirect_uri=auth_request.redirect_uri, issuer=tenant.issuer, error=error, state=auth_request.state
            )
        )
    entitled = await entitled_request(session, client=client, request=auth_request, user_id=sso.user_id)
    if not entitled.scope:
        return _see_other(not_entitled_url(tenant, entitled))
    await record_consent(session, tenant=tenant, client=client, user_id=sso.user_id, scope=entitled.scope)
    return _see_other(
        await finish_authorization(session, ctx=ctx, tenant=tenant, client=client, request=entitled, sso=sso)
    )


@router.get("/static/{name}", summary="Static files of the pages", include_in_schema=False)
async def static_file(name: str) -> Response:
    """Serve one of the known static files."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        return Response(status_code=404)
    return FileResponse(STATIC / name, media_type=media_type, headers={"cache-control": "public, max-age=3600"})
