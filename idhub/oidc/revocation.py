"""Token revocation ``POST {issuer}/revoke`` (RFC 7009).

A refresh token revokes its whole grant (every refresh and access token it yielded, RFC 7009 §2.1);
an access token is revoked on its own (a ``jti`` entry that every process honours at once). Tokens of
other clients and unknown tokens are ignored, and the answer is always 200 (RFC 7009 §2.2).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response

from idhub.clients.service import ClientInfo
from idhub.context import AppContext
from idhub.events import AccessTokenRevoked
from idhub.oidc.client_auth import authenticated_request
from idhub.oidc.params import (
    CLIENT_AUTH_FIELDS,
    NO_STORE,
    form_request_body,
    oauth_error_responses,
)
from idhub.oidc.routing import OAuthRoute
from idhub.routing import uow_of
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo
from idhub.tokens.refresh import find_refresh_token, revoke_grant
from idhub.tokens.revocation import record_revocation
from idhub.tokens.service import CLOCK_SKEW, TokenInvalid

router = APIRouter(tags=["oidc"], route_class=OAuthRoute)

MAX_TOKEN = 16384
_S: dict[str, Any] = {"type": "string"}
REVOCATION_FIELDS: dict[str, Any] = {
    "token": _S,
    "token_type_hint": {**_S, "description": "access_token or refresh_token (RFC 7009 §2.1)"},
    **CLIENT_AUTH_FIELDS,
}


async def revoke_access_token(
    ctx: AppContext, uow: UnitOfWork, tenant: TenantInfo, client: ClientInfo, token: str
) -> None:
    """Revoke one live access token of ``client`` until it would have expired anyway."""
    try:
        claims = await ctx.tokens.validate_access_token(tenant=tenant, token=token)
    except TokenInvalid:
        return  # invalid, expired or already revoked: nothing to do (RFC 7009 §2.2)
    if claims.get("client_id") != client.client_id:
        return
    remaining = int(float(claims["exp"]) - time.time()) + CLOCK_SKEW
    await record_revocation(uow, tenant_id=tenant.id, kind="jti", value=str(claims["jti"]), expires_in=remaining)
    uow.raise_event(AccessTokenRevoked(tenant_id=tenant.id, jti=str(claims["jti"])))


async def revoke_refresh_token(
    uow: UnitOfWork, ctx: AppContext, tenant: TenantInfo, client: ClientInfo, token: str
) -> None:
    """Revoke the grant of a refresh token of ``client``: the whole family and its access tokens."""
    found = await find_refresh_token(uow.session, hasher=ctx.secret_hasher, tenant_id=tenant.id, token=token)
    if found is None or found[0].client_pk != client.id:
        return
    await revoke_grant(uow, tenant.id, found[0].grant_id, reason="revoked by the client (RFC 7009)")


async def revoke_token(ctx: AppContext, uow: UnitOfWork, tenant: TenantInfo, client: ClientInfo, *, token: str) -> None:
    """Revoke ``token`` if it is one of ``client``'s; the kind is recognised by its format (RFC 7009 §2.1)."""
    if len(token) > MAX_TOKEN:
        return
    if token.count(".") == 2:
        await revoke_access_token(ctx, uow, tenant, client, token)
    else:
        await revoke_refresh_token(uow, ctx, tenant, client, token)


@router.post(
    "/revoke",
    summary="Token revocation (RFC 7009)",
    response_class=Response,
    openapi_extra=form_request_body(REVOCATION_FIELDS, required=["token"]),
    responses={
        200: {"description": "revoked, or nothing to revoke (RFC 7009 §2.2)"},
        **oauth_error_responses(400, 401),
    },
)
async def revoke(tenant: str, request: Request) -> Response:
    """Revoke a refresh token (with its grant) or an access token of the calling client."""
    ctx, info, params, client = await authenticated_request(request, tenant, endpoint="revoke")
    await revoke_token(ctx, uow_of(request), info, client, token=params.require("token"))
    return Response(status_code=200, headers=NO_STORE)
