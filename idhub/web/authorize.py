"""The browser side of the authorization endpoint (OIDC Core §3.1.2.1): parse, decide, redirect or show an error.

The protocol decisions are :func:`idhub.oidc.authorize.process_authorization`'s; this route only turns
the request into parameters and the outcome into a 303 (to the client or to the login page, with the
browser-binding cookie) or into the error page shown when the client cannot be trusted.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from idhub.context import AppContext
from idhub.deps import ContextDep, TenantDep, UnitOfWorkDep
from idhub.oidc.authorize import ErrorPage, StartInteraction, process_authorization
from idhub.oidc.interaction import BROWSER_COOKIE
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo
from idhub.web.broker import SAML_STATE_COOKIE
from idhub.web.cookies import set_browser_cookie, set_cookie
from idhub.web.forms import BadForm, read_params
from idhub.web.render import error_page
from idhub.web.routing import PageRoute

router = APIRouter(tags=["oidc"], route_class=PageRoute)

_QUERY_PARAMETERS = [
    {"name": name, "in": "query", "required": name in ("client_id", "response_type"), "schema": {"type": "string"}}
    for name in (
        "client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code_challenge",
        "code_challenge_method", "prompt", "max_age", "login_hint", "id_token_hint", "resource", "idp_hint",
    )
]  # fmt: skip
_FORM_BODY = {
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {"type": "object", "properties": {p["name"]: {"type": "string"} for p in _QUERY_PARAMETERS}}
        }
    }
}
_HTML_RESPONSES: dict[int | str, dict[str, object]] = {
    303: {"description": "Redirect to the client, or to the login/consent page"},
    400: {"description": "HTML error page (client or redirect URI not trusted)", "content": {"text/html": {}}},
}


async def _respond(request: Request, *, ctx: AppContext, tenant: TenantInfo, uow: UnitOfWork) -> Response:
    try:
        params = await read_params(request)
    except BadForm:
        return error_page("The request is malformed.", tenant=tenant)
    outcome = await process_authorization(
        uow.session,
        ctx=ctx,
        tenant=tenant,
        params=params,
        session_cookie=request.cookies.get(ctx.settings.sessions.cookie_name),
        browser_cookie=request.cookies.get(BROWSER_COOKIE),
    )
    if isinstance(outcome, ErrorPage):
        return error_page(outcome.message, tenant=tenant, status=outcome.status)
    response = RedirectResponse(outcome.location, status_code=303, headers={"cache-control": "no-store"})
    if isinstance(outcome, StartInteraction):
        if outcome.new_browser:
            set_browser_cookie(response, ctx, tenant, outcome.browser_secret)
        if outcome.saml_state is not None:
            set_cookie(response, ctx, tenant, SAML_STATE_COOKIE, outcome.saml_state)
    return response


@router.get(
    "/authorize",
    summary="Authorization endpoint (OIDC Core §3.1.2.1)",
    response_class=Response,
    responses=_HTML_RESPONSES,
    openapi_extra={"parameters": _QUERY_PARAMETERS},
)
async def authorize_get(request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep) -> Response:
    """Start an authorization code flow from a query string."""
    return await _respond(request, ctx=ctx, tenant=tenant, uow=uow)


@router.post(
    "/authorize",
    summary="Authorization endpoint, form post (OIDC Core §3.1.2.1)",
    response_class=Response,
    responses=_HTML_RESPONSES,
    openapi_extra={"requestBody": _FORM_BODY},
)
async def authorize_post(request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep) -> Response:
    """Start an authorization code flow from a form body."""
    return await _respond(request, ctx=ctx, tenant=tenant, uow=uow)
