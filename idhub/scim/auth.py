"""Who is calling the SCIM endpoints: a provisioning token or a client's access token with scope ``scim``."""

from __future__ import annotations

from idhub.context import AppContext
from idhub.credentials.provisioning import TOKEN_PREFIX
from idhub.events import Actor
from idhub.scim import errors
from idhub.tenants.service import TenantInfo
from idhub.tokens.service import TokenInvalid

SCIM_SCOPE = "scim"


def bearer(authorization: str | None) -> str:
    """Return the bearer token of an ``Authorization`` header (RFC 6750 §2.1) or raise 401."""
    if authorization is None:
        raise errors.Unauthorized("a bearer token is required")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 8192:
        raise errors.Unauthorized("a bearer token is required")
    return token


async def authenticate(ctx: AppContext, tenant: TenantInfo, authorization: str | None) -> Actor:
    """Return the caller of a SCIM request, or raise 401 (wrong tenant, revoked, expired) / 403 (no ``scim``).

    A provisioning token is looked up by its keyed hash within this tenant only; an access token must
    be this tenant's, live, a client's own token (client_credentials: ``sub`` is the client) and carry
    the ``scim`` scope.
    """
    token = bearer(authorization)
    if token.startswith(TOKEN_PREFIX):
        info = await ctx.provisioning_tokens.find(tenant_id=tenant.id, tenant_key=tenant.key, token=token)
        if info is None:
            raise errors.Unauthorized("the provisioning token is not valid")
        return Actor(type="provisioning_token", id=str(info.id))
    try:
        claims = await ctx.tokens.validate_access_token(tenant=tenant, token=token)
    except TokenInvalid as exc:
        raise errors.Unauthorized("the access token is not valid") from exc
    if claims.get("sub") != claims.get("client_id"):
        raise errors.Forbidden("SCIM takes a client's own token (client_credentials), not a user's")
    if SCIM_SCOPE not in str(claims.get("scope", "")).split():
        raise errors.Forbidden("the access token lacks the scim scope")
    return Actor(type="client", id=str(claims["client_id"]))
