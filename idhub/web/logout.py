"""The logout pages (OpenID Connect RP-Initiated Logout 1.0 §2-§3): confirm, end the session, go back.

The rules (which ``post_logout_redirect_uri`` may be used, when the person must confirm) are
:mod:`idhub.oidc.logout`'s; this route renders the confirmation and signed-out pages.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from idhub.context import AppContext
from idhub.deps import ContextDep, TenantDep, UnitOfWorkDep
from idhub.oidc.interaction import authorization_response_url, csrf_token, csrf_valid
from idhub.oidc.logout import PARAMETERS, LogoutRefused, confirmation_needed, confirmation_purpose, validate_logout
from idhub.sessions.service import end_session, load_session
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo
from idhub.web.cookies import clear_cookie
from idhub.web.forms import BadForm, read_params
from idhub.web.render import error_page, render_page
from idhub.web.routing import PageRoute

router = APIRouter(tags=["oidc"], route_class=PageRoute)


async def _handle(request: Request, *, ctx: AppContext, tenant: TenantInfo, uow: UnitOfWork) -> Response:
    try:
        fields = await read_params(request)
    except BadForm:
        return error_page("The sign-out request is malformed.", tenant=tenant)
    session = uow.session
    try:
        logout = await validate_logout(ctx=ctx, tenant=tenant, fields=fields)
    except LogoutRefused as exc:
        return error_page(exc.message, tenant=tenant)
    cookie_name = ctx.settings.sessions.cookie_name
    cookie = request.cookies.get(cookie_name)
    sso = await load_session(
        session, hasher=ctx.secret_hasher, settings=ctx.settings.sessions, tenant_id=tenant.id, cookie=cookie
    )
    if sso is not None and cookie is not None:
        if logout.confirmation is not None:
            if request.method != "POST" or not csrf_valid(
                ctx.cookie_key, confirmation_purpose(sso), cookie, logout.confirmation
            ):
                return error_page("The form has expired or was not sent by this site.", tenant=tenant)
        elif confirmation_needed(logout, sso):
            fields_out = [
                (name, value)
                for name, value in (
                    ("client_id", logout.client.client_id if logout.client else None),
                    ("post_logout_redirect_uri", logout.post_logout_redirect_uri),
                    ("state", logout.state),
                )
                if value is not None
            ]
            return render_page(
                "logout_confirm.html",
                tenant=tenant,
                action=f"{tenant.issuer}/logout",
                client_name=logout.client.name if logout.client else None,
                csrf_token=csrf_token(ctx.cookie_key, confirmation_purpose(sso), cookie),
                fields=fields_out,
            )
        await end_session(session, tenant_id=tenant.id, session_id=sso.id)
    if logout.post_logout_redirect_uri is not None:
        response: Response = RedirectResponse(
            authorization_response_url(logout.post_logout_redirect_uri, {"state": logout.state}),
            status_code=303,
            headers={"cache-control": "no-store"},
        )
    else:
        response = render_page("logged_out.html", tenant=tenant)
    if cookie is not None:
        clear_cookie(response, ctx, tenant, cookie_name)
    return response


_QUERY = [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in PARAMETERS]
_FORM = {
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "properties": {name: {"type": "string"} for name in (*PARAMETERS, "csrf_token")},
            }
        }
    }
}
_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "Confirmation or signed-out page", "content": {"text/html": {}}},
    303: {"description": "Back to the registered post_logout_redirect_uri"},
    400: {"description": "HTML error page", "content": {"text/html": {}}},
}


@router.get(
    "/logout",
    summary="RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0)",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra={"parameters": _QUERY},
)
async def logout_get(request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep) -> Response:
    """End the SSO session (after confirmation unless the id_token_hint names the user)."""
    return await _handle(request, ctx=ctx, tenant=tenant, uow=uow)


@router.post(
    "/logout",
    summary="RP-initiated logout, form post (OpenID Connect RP-Initiated Logout 1.0)",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra={"requestBody": _FORM},
)
async def logout_post(request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep) -> Response:
    """Form-post variant of the logout endpoint; also receives the confirmation form."""
    return await _handle(request, ctx=ctx, tenant=tenant, uow=uow)
