"""Token introspection ``POST {issuer}/introspect`` (RFC 7662).

Access tokens are our own JWTs: they are checked in memory (cached signature check, expiry, the
revocation state), without a database round trip. Refresh tokens are looked up by their keyed hash.
Only authenticated confidential clients may ask (RFC 7662 §2.1); anything inactive, unknown or not
meant for the caller is just ``{"active": false}`` (RFC 7662 §2.2).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from idhub.clients.service import ClientInfo
from idhub.context import AppContext
from idhub.directory.rules import is_live
from idhub.oidc.client_auth import authenticated_request
from idhub.oidc.params import (
    CLIENT_AUTH_FIELDS,
    NoStoreJSON,
    form_request_body,
    json_response,
    oauth_error_responses,
)
from idhub.oidc.routing import OAuthRoute
from idhub.routing import uow_of
from idhub.storage.models import User
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo
from idhub.tokens.refresh import find_refresh_token
from idhub.tokens.service import TokenInvalid

router = APIRouter(tags=["oidc"], route_class=OAuthRoute)

INACTIVE = b'{"active":false}'
MAX_TOKEN = 16384
# Claims copied from an access token into the answer (RFC 7662 §2.2).
JWT_FIELDS = ("scope", "client_id", "exp", "iat", "nbf", "sub", "aud", "iss", "jti")

_S: dict[str, Any] = {"type": "string"}
INTROSPECTION_FIELDS: dict[str, Any] = {
    "token": _S,
    "token_type_hint": {**_S, "description": "access_token or refresh_token (RFC 7662 §2.1)"},
    **CLIENT_AUTH_FIELDS,
}
INTROSPECTION_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["active"],
    "properties": {
        "active": {"type": "boolean"},
        "scope": _S,
        "client_id": _S,
        "username": _S,
        "token_type": _S,
        "exp": {"type": "integer"},
        "iat": {"type": "integer"},
        "nbf": {"type": "integer"},
        "sub": _S,
        "aud": {"oneOf": [_S, {"type": "array", "items": _S}]},
        "iss": _S,
        "jti": _S,
    },
}


def visible_to(client: ClientInfo, claims: dict[str, Any]) -> bool:
    """Tell whether ``client`` may learn about an access token: it was issued to it, or names it as audience.

    RFC 7662 §4 leaves this to the server; a token's details go to its own client or a resource server
    (a client whose client_id is in ``aud``), never to any other client of the tenant.
    """
    if claims.get("client_id") == client.client_id:
        return True
    aud = claims.get("aud")
    return aud == client.client_id or (isinstance(aud, list) and client.client_id in aud)


async def introspect_access_token(ctx: AppContext, tenant: TenantInfo, client: ClientInfo, token: str) -> bytes:
    """Answer for a JWT access token from memory only (RFC 7662 §2.2, RFC 9068 §2.2)."""
    try:
        claims = await ctx.tokens.validate_access_token(tenant=tenant, token=token)
    except TokenInvalid:
        return INACTIVE
    if not visible_to(client, claims):
        return INACTIVE
    body: dict[str, Any] = {"active": True, "token_type": "Bearer"}
    for name in JWT_FIELDS:
        value = claims.get(name)
        if value is not None:
            body[name] = value
    return orjson.dumps(body)


async def introspect_refresh_token(
    ctx: AppContext, uow: UnitOfWork, tenant: TenantInfo, client: ClientInfo, token: str
) -> bytes:
    """Answer for an opaque refresh token: only its own client sees it active."""
    session = uow.session
    found = await find_refresh_token(session, hasher=ctx.secret_hasher, tenant_id=tenant.id, token=token)
    if found is None:
        return INACTIVE
    info, live = found
    if not live or info.client_pk != client.id:
        return INACTIVE
    user = await session.get(User, info.user_id) if info.user_id is not None else None
    if info.user_id is not None and not is_live(user):
        return INACTIVE
    body: dict[str, Any] = {
        "active": True,
        "token_type": "refresh_token",
        "scope": info.scope,
        "client_id": client.client_id,
        "exp": int(info.expires_at.timestamp()),
        "iat": int(info.created_at.timestamp()),
        "iss": tenant.issuer,
    }
    if user is not None:
        body["sub"] = str(user.id)
        body["username"] = user.username
    return orjson.dumps(body)


async def introspect_token(
    ctx: AppContext, uow: UnitOfWork, tenant: TenantInfo, client: ClientInfo, *, token: str, hint: str | None
) -> bytes:
    """Introspect ``token`` for ``client``; the hint only orders the lookups (RFC 7662 §2.1)."""
    if len(token) > MAX_TOKEN:
        return INACTIVE
    # Our access tokens are compact JWS (three dot-separated parts); refresh tokens never contain a dot.
    if token.count(".") == 2:
        return await introspect_access_token(ctx, tenant, client, token)
    return await introspect_refresh_token(ctx, uow, tenant, client, token)


@router.post(
    "/introspect",
    summary="Token introspection (RFC 7662)",
    response_class=Response,
    openapi_extra=form_request_body(INTROSPECTION_FIELDS, required=["token"]),
    responses={
        200: json_response("token state (RFC 7662 §2.2)", INTROSPECTION_RESPONSE),
        **oauth_error_responses(400, 401),
    },
)
async def introspect(tenant: str, request: Request) -> Response:
    """Tell an authenticated client whether a token is active and what it carries."""
    ctx, info, params, client = await authenticated_request(request, tenant, endpoint="introspect", allow_public=False)
    token = params.require("token")
    body = await introspect_token(ctx, uow_of(request), info, client, token=token, hint=params.get("token_type_hint"))
    return NoStoreJSON(body)
