"""The UserInfo endpoint ``GET``/``POST {issuer}/userinfo`` (OIDC Core §5.3).

The access token comes only from the ``Authorization: Bearer`` header (RFC 6750 §2.1); a token in the
query or the body is refused, so tokens do not end up in logs and caches.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response

from idhub.context import AppContext
from idhub.directory.rules import is_live
from idhub.oidc.claims import user_claims
from idhub.oidc.errors import InsufficientScope, InvalidRequest, InvalidToken, MissingToken
from idhub.oidc.params import (
    NoStoreJSON,
    is_form,
    json_response,
    oauth_error_responses,
    read_form,
    read_query,
    tenant_of,
)
from idhub.oidc.routing import OAuthRoute
from idhub.routing import context_of, uow_of
from idhub.storage.models import User
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo
from idhub.tokens.service import TokenInvalid

router = APIRouter(tags=["oidc"], route_class=OAuthRoute)

USERINFO_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["sub"],
    "properties": {
        "sub": {"type": "string"},
        "name": {"type": "string"},
        "given_name": {"type": "string"},
        "family_name": {"type": "string"},
        "preferred_username": {"type": "string"},
        "updated_at": {"type": "integer"},
        "email": {"type": "string"},
        "email_verified": {"type": "boolean"},
    },
}
BEARER_PARAMETER = [
    {
        "name": "Authorization",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "Bearer access token (RFC 6750 §2.1); the only accepted way to send the token",
    }
]


def bearer_token(authorization: str | None) -> str:
    """Return the token of an ``Authorization: Bearer`` header (RFC 6750 §2.1)."""
    if authorization is None:
        raise MissingToken("a bearer access token is required")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or len(token) > 16384:
        raise InvalidToken("malformed Authorization header")
    return token


def userinfo_url(tenant: TenantInfo) -> str:
    """Return the UserInfo endpoint's URL, the identifier it answers to as a resource (RFC 8707 §2)."""
    return f"{tenant.issuer}/userinfo"


def check_audience(tenant: TenantInfo, claims: dict[str, Any]) -> None:
    """Refuse an access token meant for another resource server (RFC 9068 §4).

    The UserInfo endpoint is the audience of a token that names it (``{issuer}/userinfo``, which a
    client may register and request as a resource), and of a token issued without any resource
    indicator: for those idhub's grants set ``aud`` to the client's own id (``default_audience``). A
    token narrowed with ``resource`` to an API (or defaulted to the client's registered API) is not.
    """
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if userinfo_url(tenant) in audiences or claims.get("client_id") in audiences:
        return
    raise InvalidToken("the access token is not meant for the UserInfo endpoint", internal=f"aud={aud!r}")


async def userinfo_claims(ctx: AppContext, uow: UnitOfWork, tenant: TenantInfo, token: str) -> dict[str, Any]:
    """Return the claims about the token's user that its scopes release (OIDC Core §5.3.2)."""
    try:
        claims = await ctx.tokens.validate_access_token(tenant=tenant, token=token)
    except TokenInvalid as exc:
        raise InvalidToken("the access token is invalid", internal=exc.internal) from exc
    check_audience(tenant, claims)
    scopes = str(claims.get("scope", "")).split()
    if "openid" not in scopes:
        raise InsufficientScope("the access token lacks the openid scope")  # OIDC Core §5.3.1
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError as exc:
        raise InvalidToken("the access token does not belong to a user") from exc
    user = await uow.session.get(User, user_id)
    if user is None or user.tenant_id != tenant.id or not is_live(user):
        raise InvalidToken("the access token is invalid", internal=f"user {user_id} is gone or not active")
    return {"sub": str(user.id), **user_claims(user, scopes)}


async def _userinfo(tenant: str, request: Request) -> Response:
    ctx = context_of(request)
    info = await tenant_of(ctx, tenant)
    # RFC 6750 §2.2/§2.3 are not supported: refuse a token sent anywhere but the header.
    if "access_token" in read_query(request):
        raise InvalidRequest("send the access token in the Authorization header only")
    if request.method == "POST" and is_form(request) and "access_token" in await read_form(request):
        raise InvalidRequest("send the access token in the Authorization header only")
    token = bearer_token(request.headers.get("authorization"))
    body = await userinfo_claims(ctx, uow_of(request), info, token)
    return NoStoreJSON(body)


_DOC: dict[str, Any] = {
    "response_class": Response,
    "openapi_extra": {"parameters": BEARER_PARAMETER},
    "responses": {
        200: json_response("claims about the user (OIDC Core §5.3.2)", USERINFO_RESPONSE),
        **oauth_error_responses(400, 401, 403),
    },
}


@router.get("/userinfo", summary="UserInfo (OIDC Core §5.3)", **_DOC)
async def userinfo_get(tenant: str, request: Request) -> Response:
    """Return claims about the authenticated user."""
    return await _userinfo(tenant, request)


@router.post("/userinfo", summary="UserInfo (OIDC Core §5.3)", **_DOC)
async def userinfo_post(tenant: str, request: Request) -> Response:
    """Return claims about the authenticated user (POST form of the same request)."""
    return await _userinfo(tenant, request)
