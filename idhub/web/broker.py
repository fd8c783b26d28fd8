"""The browser side of brokering: off to the upstream, and back from it into the interaction.

``GET {issuer}/broker/{alias}/login?interaction=ID`` sends the browser to the upstream for a pending
interaction (from the login page's button, or from ``idp_hint``); ``GET {issuer}/broker/{alias}/callback``
takes the upstream's answer, lets the broker validate it and find the user, and resumes the
interaction exactly as a password sign-in does (:func:`idhub.oidc.interaction.resume_after_login`).
A refused answer is an error page, an audit entry with the reason, and no session.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from idhub.deps import ContextDep, TenantDep, UnitOfWorkDep
from idhub.events import Actor
from idhub.oidc.interaction import BROWSER_COOKIE, InteractionError, resume_after_login, usable_browser_secret
from idhub.web.cookies import set_session_cookie
from idhub.web.forms import BadForm, read_params, single
from idhub.web.render import error_page
from idhub.web.router import open_interaction
from idhub.web.routing import PageRoute

router = APIRouter(tags=["broker"], route_class=PageRoute)

Alias = Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
_RESPONSES: dict[int | str, dict[str, object]] = {
    303: {"description": "To the upstream, or on with the interaction"},
    400: {"description": "HTML error page", "content": {"text/html": {}}},
    404: {"description": "HTML error page (unknown upstream)", "content": {"text/html": {}}},
    503: {"description": "HTML error page (the upstream is not responding)", "content": {"text/html": {}}},
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
    row, _request, _client, secret = await open_interaction(request, ctx, tenant, uow.session, interaction)
    url = await ctx.broker.start(
        uow,
        tenant_id=tenant.id,
        alias=alias,
        interaction_id=row.id,
        browser_secret=secret,
        callback_url=f"{tenant.issuer}/broker/{alias}/callback",
    )
    return _see_other(url)


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
    row, auth_request, client, _secret = await open_interaction(
        request, ctx, tenant, uow.session, finished.interaction_id
    )
    if row.user_id is not None:  # signed in already (another tab): one sign-in per interaction
        raise InteractionError("This sign-in request was already completed. Return to the application.")
    uow.actor = Actor("user", str(finished.linked.user_id))
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
