"""The client credentials grant (RFC 6749 §4.4): a confidential client gets a token for itself.

This is the token endpoint's hot path: no database access, one signature, nothing else. The client's
access policies come with its cached snapshot (``ClientInfo.machine_entitlement``).
"""

from __future__ import annotations

from typing import Any

from idhub.directory.entitlements import granted_scopes
from idhub.oidc.errors import InvalidScope, UnauthorizedClient
from idhub.oidc.grants.base import USER_ONLY_SCOPES, TokenRequest, choose_audience, default_audience, requested_scopes

GRANT_TYPE = "client_credentials"


def granted_scope(treq: TokenRequest) -> str:
    """Return requested ∩ allowed ∩ the machine policy (RFC 6749 §3.3: the answer's ``scope`` says what was granted).

    Without a ``scope`` parameter the client gets all it may get (minus user-only scopes); a governed
    client without a machine policy gets nothing. A request of which nothing is granted is ``invalid_scope``.
    """
    client = treq.client
    allowed = client.scopes - USER_ONLY_SCOPES
    requested = requested_scopes(treq.params)
    granted = granted_scopes(
        sorted(allowed) if requested is None else requested, allowed=allowed, entitlement=client.machine_entitlement
    )
    if not granted:
        if requested is None and not client.governed:
            return ""
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
