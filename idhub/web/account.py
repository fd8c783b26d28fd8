"""The account page: a signed-in person sees the upstream accounts linked to theirs and removes one.

``GET {issuer}/account`` needs a live SSO session cookie; without one it says how to sign in (there is no
sign-in here without an application's request to return to). ``POST {issuer}/account/links/{id}/delete``
carries a CSRF token derived from the session (the logout confirmation's scheme) and removes only the
person's own link (:func:`idhub.broker.linking.remove_link` with their user id; another's is a 404).
Removing a link ends the sessions it created; when that includes this browser's, the session cookie is
cleared and the page says the person is signed out.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import RedirectResponse

from idhub.broker.linking import list_links, remove_link
from idhub.context import AppContext
from idhub.deps import ContextDep, TenantDep, UnitOfWorkDep
from idhub.errors import NotFound
from idhub.events import Actor
from idhub.oidc.interaction import csrf_token, csrf_valid
from idhub.sessions.service import SsoSession, load_session
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo
from idhub.web.cookies import clear_cookie
from idhub.web.forms import BadForm, read_form, single
from idhub.web.render import error_page, render_page
from idhub.web.routing import PageRoute

router = APIRouter(tags=["account"], route_class=PageRoute)

LinkId = Annotated[uuid.UUID, Path()]
NOTICES = {
    "removed": "The linked account was removed.",
    "signed-out": "The linked account was removed. You had signed in with it, so you are now signed out.",
}
_FORM = {
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {"type": "object", "properties": {"csrf_token": {"type": "string"}}}
        }
    }
}


def csrf_purpose(sso: SsoSession) -> str:
    """Return the purpose the account page's CSRF tokens are bound to (this session only)."""
    return f"account:{sso.id}"


def _when(value: str | None) -> str | None:
    """Return a stored ISO timestamp (UTC) as the page shows it."""
    if value is None:
        return None
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")


def _see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers={"cache-control": "no-store"})


async def _session(request: Request, ctx: AppContext, tenant: TenantInfo, uow: UnitOfWork) -> SsoSession | None:
    """Return this browser's live SSO session in the tenant, or ``None``."""
    return await load_session(
        uow.session,
        hasher=ctx.secret_hasher,
        settings=ctx.settings.sessions,
        tenant_id=tenant.id,
        cookie=request.cookies.get(ctx.settings.sessions.cookie_name),
    )


@router.get(
    "/account",
    summary="The signed-in person's account page: their linked upstream accounts",
    response_class=Response,
    responses={200: {"description": "Account page, or how to sign in", "content": {"text/html": {}}}},
)
async def account_page(request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep) -> Response:
    """Show the person's linked upstream accounts, each with a button to remove it."""
    notice = NOTICES.get(request.query_params.get("notice") or "")
    sso = await _session(request, ctx, tenant, uow)
    if sso is None:
        response = render_page("account.html", tenant=tenant, signed_in=False, notice=notice)
        if request.cookies.get(ctx.settings.sessions.cookie_name) is not None:
            clear_cookie(response, ctx, tenant, ctx.settings.sessions.cookie_name)
        return response
    user = await ctx.directory(uow).users.get(tenant.id, sso.user_id)
    names = {provider.alias: provider.display_name for provider in await ctx.broker.providers(uow).list(tenant.id)}
    cookie = request.cookies.get(ctx.settings.sessions.cookie_name) or ""
    links = [
        {
            "id": str(link.id),
            "upstream": names.get(link.alias, link.alias),
            "email": link.email,
            "linked_at": _when(link.created_at),
            "last_used": _when(link.last_login_at),
            "action": f"{tenant.issuer}/account/links/{link.id}/delete",
        }
        for link in await list_links(uow, tenant_id=tenant.id, user_id=sso.user_id)
    ]
    return render_page(
        "account.html",
        tenant=tenant,
        signed_in=True,
        notice=notice,
        username=user.username,
        links=links,
        csrf_token=csrf_token(ctx.cookie_key, csrf_purpose(sso), cookie),
        logout_url=f"{tenant.issuer}/logout",
    )


@router.post(
    "/account/links/{link_id}/delete",
    summary="Remove one of the signed-in person's linked upstream accounts",
    response_class=Response,
    responses={
        303: {"description": "Back to the account page"},
        400: {"description": "HTML error page", "content": {"text/html": {}}},
        404: {"description": "HTML error page (no such link of this person)", "content": {"text/html": {}}},
    },
    openapi_extra={"requestBody": _FORM},
)
async def delete_link(
    link_id: LinkId, request: Request, tenant: TenantDep, ctx: ContextDep, uow: UnitOfWorkDep
) -> Response:
    """Remove the link and the sessions it created, then go back to the account page (303)."""
    page = f"{tenant.issuer}/account"
    try:
        presented = single(await read_form(request), "csrf_token")
    except BadForm:
        return error_page("The form is malformed.", tenant=tenant)
    sso = await _session(request, ctx, tenant, uow)
    if sso is None:
        return _see_other(page)  # signed out meanwhile: the page says how to sign in
    cookie = request.cookies.get(ctx.settings.sessions.cookie_name)
    if not csrf_valid(ctx.cookie_key, csrf_purpose(sso), cookie, presented):
        return error_page("The form has expired or was not sent by this site. Go back and try again.", tenant=tenant)
    uow.actor = Actor("user", str(sso.user_id))
    try:
        await remove_link(uow, tenant_id=tenant.id, link_id=link_id, user_id=sso.user_id, how="self")
    except NotFound:
        return error_page("This linked account does not exist.", tenant=tenant, status=404)
    if await _session(request, ctx, tenant, uow) is not None:
        return _see_other(f"{page}?notice=removed")
    # The link removed was the one this browser signed in with: its session ended with it.
    response = _see_other(f"{page}?notice=signed-out")
    clear_cookie(response, ctx, tenant, ctx.settings.sessions.cookie_name)
    return response
