"""The client credentials grant (RFC 6749 §4.4): a confidential client gets a token for itself.

This is the token endpoint's hot path: no database access, one signature, nothing else.
"""

from __future__ import annotations

from typing import Any

from idhub.oidc.errors import InvalidScope, UnauthorizedClient
from idhub.oidc.grants.base import USER_ONLY_SCOPES, TokenRequest, choose_audience, default_audience, requested_scopes

GRANT_TYPE = "client_credentials"


def granted_scope(treq: TokenRequest) -> str:
    """Return requested ∩ allowed (RFC 6749 §3.3: the answer's ``scope`` says what was granted).

    Without a ``scope`` parameter the client gets its whole allowed set (minus user-only scopes); a
    request of which nothing is allowed is ``invalid_scope``.
    """
    allowed = treq.client.scopes
    requested = requested_scopes(treq.params)
    if requested is None:
        return " ".join(sorted(allowed - USER_ONLY_SCOPES))
    granted = [scope for scope in requested if scope in allowed and scope not in USER_ONLY_SCOPES]
    if not granted:
        raise InvalidScope("none of the requested scopes is allowed for this client")
    return " ".join(granted)


async def handle(treq: TokenRequest) -> dict[str, Any]:
    """Issue an access token whose subject is the client (RFC 6749 §4.4.3, RFC 9068 §2.2); no refresh token."""
    client = treq.client
    if client.is_public:
        raise UnauthorizedClient("public clients cannot use client_credentials")  # RFC 6749 §4.4
    scope = granted_scope(treq)
    treq.subject = client.client_id
    audience = choose_audience(treq.params, allowed=client.resources, default=default_audience(client))
    token, ttl = await treq.ctx.tokens.issue_access_token(
        tenant=treq.tenant, client=client, subject=client.client_id, scope=scope, audience=audience
    )
    treq.issued.append("access_token")
    return {"access_token": token, "token_type": "Bearer", "expires_in": ttl, "scope": scope}
