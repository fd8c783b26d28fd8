"""Grant handlers of the token endpoint, found by ``grant_type`` (RFC 6749 §4, §6)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from idhub.context import AppContext
from idhub.events import Actor, TokenRequestRefused, TokensIssued
from idhub.oidc.client_auth import authenticate_client, claimed_client_id
from idhub.oidc.errors import OAuthError, UnauthorizedClient, UnsupportedGrantType
from idhub.oidc.grants import authorization_code, client_credentials, refresh_token
from idhub.oidc.grants.base import TokenRequest
from idhub.oidc.params import Params
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo

GrantHandler = Callable[[TokenRequest], Awaitable[dict[str, Any]]]

# grant_type -> handler; an unknown grant_type is unsupported_grant_type (RFC 6749 §5.2).
GRANTS: dict[str, GrantHandler] = {
    authorization_code.GRANT_TYPE: authorization_code.handle,
    refresh_token.GRANT_TYPE: refresh_token.handle,
    client_credentials.GRANT_TYPE: client_credentials.handle,
}

__all__ = ["GRANTS", "GrantHandler", "TokenRequest", "exchange"]


async def exchange(
    ctx: AppContext, tenant: TenantInfo, params: Params, uow: UnitOfWork, *, authorization: str | None
) -> dict[str, Any]:
    """Run one token request in ``uow`` and return the JSON body of the answer (RFC 6749 §3.2, §5.1).

    Order: a known ``grant_type``; the client authenticated with its registered method; the client
    registered for that grant (``unauthorized_client``); then the grant's own handler. Issued tokens
    and refusals are both audited (a refusal even though the request's transaction rolls back).
    """
    grant_type = params.get("grant_type")
    try:
        if grant_type is None:
            params.require("grant_type")
        handler = GRANTS.get(str(grant_type))
        if handler is None:
            raise UnsupportedGrantType("this grant_type is not supported")
        client = await authenticate_client(ctx, tenant, authorization=authorization, params=params)
        uow.actor = Actor("client", client.client_id)
        if grant_type not in client.grant_types:
            raise UnauthorizedClient(f"the client may not use {grant_type}")
        treq = TokenRequest(ctx=ctx, tenant=tenant, client=client, params=params, uow=uow)
        body = await handler(treq)
    except OAuthError as exc:
        uow.raise_event(
            TokenRequestRefused(
                tenant_id=tenant.id,
                client_id=claimed_client_id(authorization, params),
                endpoint="token",
                error=exc.error,
                grant_type=grant_type,
                reason=exc.internal,
            )
        )
        raise
    uow.raise_event(
        TokensIssued(
            tenant_id=tenant.id,
            client_id=client.client_id,
            grant_type=str(grant_type),
            subject=treq.subject,
            kinds=tuple(treq.issued),
        )
    )
    ctx.metrics.count_issued(str(grant_type), treq.issued)
    return body
