"""Grant handlers of the token endpoint, found by ``grant_type`` (RFC 6749 §4, §6)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from idhub.context import AppContext
from idhub.oidc.client_auth import authenticate_client
from idhub.oidc.errors import UnauthorizedClient, UnsupportedGrantType
from idhub.oidc.grants import authorization_code, client_credentials, refresh_token
from idhub.oidc.grants.base import TokenRequest, UnitOfWork
from idhub.oidc.params import Params
from idhub.tenants.service import TenantInfo

GrantHandler = Callable[[TokenRequest], Awaitable[dict[str, Any]]]

# grant_type -> handler; an unknown grant_type is unsupported_grant_type (RFC 6749 §5.2).
GRANTS: dict[str, GrantHandler] = {
    authorization_code.GRANT_TYPE: authorization_code.handle,
    refresh_token.GRANT_TYPE: refresh_token.handle,
    client_credentials.GRANT_TYPE: client_credentials.handle,
}

__all__ = ["GRANTS", "GrantHandler", "TokenRequest", "UnitOfWork", "exchange"]


async def exchange(
    ctx: AppContext, tenant: TenantInfo, params: Params, *, authorization: str | None, address: str | None
) -> dict[str, Any]:
    """Run one token request and return the JSON body of the answer (RFC 6749 §3.2, §5.1).

    Order: a known ``grant_type``; the client authenticated with its registered method; the client
    registered for that grant (``unauthorized_client``); then the grant's own handler. The unit of
    work commits only when the handler succeeds (or when it commits a refusal on purpose).
    """
    grant_type = params.require("grant_type")
    handler = GRANTS.get(grant_type)
    if handler is None:
        raise UnsupportedGrantType("this grant_type is not supported")
    client = await authenticate_client(ctx, tenant, authorization=authorization, params=params, address=address)
    if grant_type not in client.grant_types:
        raise UnauthorizedClient(f"the client may not use {grant_type}")
    uow = UnitOfWork(ctx)
    treq = TokenRequest(ctx=ctx, tenant=tenant, client=client, params=params, uow=uow)
    try:
        body = await handler(treq)
        await uow.commit()
    finally:
        await uow.close()
    ctx.metrics.count_issued(grant_type, treq.issued)
    return body
