"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0 §2-§3).

The ``post_logout_redirect_uri`` must match one registered for the client exactly; otherwise the
user sees an error page and is not redirected (§3). Without an ``id_token_hint`` naming the signed-in
user the logout needs the user's confirmation on a CSRF-protected page (§2 "SHOULD ask").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.clients.service import ClientInfo
from idhub.context import AppContext
from idhub.deps import ContextDep, SessionDep, TenantDep
from idhub.oidc.interaction import authorization_response_url, csrf_token, csrf_valid
from idhub.sessions.service import SsoSession, end_session, load_session
from idhub.tenants.service import TenantInfo
from idhub.tokens.service import TokenInvalid
from idhub.web.cookies import clear_cookie
from idhub.web.forms import BadForm, read_form, read_query, single
from idhub.web.render import error_page, render_page

router = APIRouter(tags=["oidc"])

PARAMETERS = ("id_token_hint", "client_id", "post_logout_redirect_uri", "state", "logout_hint", "ui_locales")


class LogoutRefused(Exception):
    """The logout request is invalid; show an error page (never redirect)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    """A validated logout request."""

    client: ClientInfo | None
    post_logout_redirect_uri: str | None
    state: str | None
    hint_sub: str | None
    confirmation: str | None


def _audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [value for value in aud if isinstance(value, str)]
    return []


async def validate_logout(*, ctx: AppContext, tenant: TenantInfo, fields: dict[str, list[str]]) -> LogoutRequest:
    """Validate the parameters of RP-Initiated Logout 1.0 §2 or raise :class:`LogoutRefused`."""
    try:
        hint = single(fields, "id_token_hint")
        client_id = single(fields, "client_id")
        redirect_uri = single(fields, "post_logout_redirect_uri")
        state = single(fields, "state")
        confirmation = single(fields, "csrf_token")
    except BadForm as exc:
        raise LogoutRefused("The sign-out request repeats a parameter.") from exc
    hint_sub: str | None = None
    if hint is not None:
        try:
            # Expired ID tokens are fine here (§2): only signature and issuer are checked.
            claims = await ctx.tokens.verify_own_jwt(tenant=tenant, token=hint, typ="JWT")
        except TokenInvalid as exc:
            raise LogoutRefused("The sign-out request carries an invalid id_token_hint.") from exc
        sub = claims.get("sub")
        hint_sub = sub if isinstance(sub, str) else None
        audiences = _audiences(claims)
        if client_id is None:
            azp = claims.get("azp")
            client_id = azp if isinstance(azp, str) else (audiences[0] if len(audiences) == 1 else None)
        elif client_id not in audiences:
            raise LogoutRefused("The id_token_hint was not issued to this application.")
    client = await ctx.clients.get(tenant.id, client_id) if client_id else None
    if client_id and client is None:
        raise LogoutRefused("The application that sent you here is unknown.")
    if redirect_uri is not None:
        # §3: exact match against the client's registered post_logout_redirect_uris.
        if client is None:
            raise LogoutRefused("A post_logout_redirect_uri needs client_id or id_token_hint.")
        if redirect_uri not in client.post_logout_redirect_uris:
            raise LogoutRefused("The post_logout_redirect_uri is not registered for this application.")
    if state is not None and len(state) > 2048:
        raise LogoutRefused("The state parameter is too long.")
    return LogoutRequest(client, redirect_uri, state, hint_sub, confirmation)


def confirmation_needed(request: LogoutRequest, sso: SsoSession | None) -> bool:
    """Tell whether the user must confirm: only a valid hint naming the signed-in user skips it."""
    if sso is None:
        return False
    return request.hint_sub is None or request.hint_sub != sso.subject


def _purpose(sso: SsoSession) -> str:
    return f"logout:{sso.id}"


async def _handle(
    request: Request, *, ctx: AppContext, tenant: TenantInfo, session: AsyncSession, fields: dict[str, list[str]]
) -> Response:
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
            if request.method != "POST" or not csrf_valid(ctx.cookie_key, _purpose(sso), cookie, logout.confirmation):
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
                csrf_token=csrf_token(ctx.cookie_key, _purpose(sso), cookie),
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
async def logout_get(request: Request, tenant: TenantDep, ctx: ContextDep, session: SessionDep) -> Response:
    """End the SSO session (after confirmation unless the id_token_hint names the user)."""
    try:
        fields = read_query(request)
    except BadForm:
        return error_page("The sign-out request is malformed.", tenant=tenant)
    return await _handle(request, ctx=ctx, tenant=tenant, session=session, fields=fields)


@router.post(
    "/logout",
    summary="RP-initiated logout, form post (OpenID Connect RP-Initiated Logout 1.0)",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra={"requestBody": _FORM},
)
async def logout_post(request: Request, tenant: TenantDep, ctx: ContextDep, session: SessionDep) -> Response:
    """Form-post variant of the logout endpoint; also receives the confirmation form."""
    try:
        fields = await read_form(request)
    except BadForm:
        return error_page("The sign-out request is malformed.", tenant=tenant)
    return await _handle(request, ctx=ctx, tenant=tenant, session=session, fields=fields)
