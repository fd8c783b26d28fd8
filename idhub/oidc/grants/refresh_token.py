"""The refresh token grant (RFC 6749 §6) with rotation and reuse detection (RFC 9700 §4.14.2)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from idhub.oidc.claims import user_claims
from idhub.oidc.errors import InvalidGrant, InvalidScope
from idhub.oidc.grants.base import (
    TokenRequest,
    entitled_scopes,
    grant_audience,
    live_grant_user,
    narrow_scope,
    requested_scopes,
)
from idhub.storage.base import utcnow
from idhub.storage.models import UserSession
from idhub.tokens.refresh import (
    RefreshTokenRejected,
    issue_refresh_token,
    refresh_expiry,
    revoke_grant,
    rotate_refresh_token,
)

GRANT_TYPE = "refresh_token"


async def handle(treq: TokenRequest) -> dict[str, Any]:
    """Rotate the refresh token and issue new tokens; a reused token revokes its whole family."""
    ctx, tenant, client = treq.ctx, treq.tenant, treq.client
    token = treq.params.require("refresh_token")
    requested = requested_scopes(treq.params)
    session = treq.uow.session
    try:
        info = await rotate_refresh_token(
            session, hasher=ctx.secret_hasher, tenant_id=tenant.id, client_pk=client.id, token=token
        )
    except RefreshTokenRejected as exc:
        if exc.reused and exc.grant_id is not None:
            # Also when it lost a parallel race: the server cannot tell the client from an attacker holding
            # a copy, so any second presentation of one token revokes the family (RFC 9700 §4.14.2).
            await revoke_grant(treq.uow, tenant.id, exc.grant_id, reason="refresh token reused")
            treq.uow.keep_on_error()  # the family stays revoked although the request fails
        raise InvalidGrant(exc.detail, internal=exc.internal) from exc

    # Failures from here on roll the rotation back: the token stays usable.
    scope = narrow_scope(requested, info.scope)  # RFC 6749 §6: may only narrow.
    grant_created_at, user = await live_grant_user(
        session, tenant_id=tenant.id, grant_id=info.grant_id, described="the refresh token"
    )
    # Re-evaluated at each refresh: the tokens carry what the refresh token does ∩ what the person is
    # entitled to now; a scope lost since is dropped (and the new refresh token no longer carries it).
    carried = await entitled_scopes(treq, user_id=user.id, requested=info.scope.split())
    if not carried:
        raise InvalidGrant(
            "the refresh token is invalid or expired", internal=f"user {user.id} has no entitled scope left"
        )
    scope = " ".join(token for token in scope.split() if token in carried)
    if not scope:
        raise InvalidScope("the requested scope is no longer granted")
    treq.subject = str(user.id)
    audience = grant_audience(treq.params, client, info.resources)
    auth_time = int(info.auth_time.timestamp()) if info.auth_time is not None else None
    access_token, ttl = await ctx.tokens.issue_access_token(
        tenant=tenant,
        client=client,
        subject=str(user.id),
        scope=scope,
        audience=audience,
        grant_id=info.grant_id,
        auth_time=auth_time,
        session_id=info.session_id,
    )
    treq.issued.append("access_token")
    now = utcnow()
    settings = ctx.settings.tokens
    # The new refresh token keeps the original scope (RFC 6749 §6) less what the person lost, and the
    # grant's absolute deadline.
    refresh_token = await issue_refresh_token(
        session,
        hasher=ctx.secret_hasher,
        tenant_id=tenant.id,
        client_pk=client.id,
        grant_id=info.grant_id,
        user_id=user.id,
        session_id=info.session_id,
        scope=" ".join(carried),
        resources=info.resources,
        auth_time=info.auth_time,
        amr=info.amr,
        expires_at=refresh_expiry(
            grant_created_at=grant_created_at,
            now=now,
            ttl=settings.refresh_token_ttl,
            idle_ttl=settings.refresh_token_idle_ttl,
        ),
        now=now,
    )
    treq.issued.append("refresh_token")
    body: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": scope,
        "refresh_token": refresh_token,
    }
    scopes = scope.split()
    if "openid" in scopes and auth_time is not None:
        # OIDC Core §12.2: a refreshed ID token keeps sub, auth_time and has no nonce; it keeps saying how
        # the person signed in (``acr`` from the session the grant came from, while that is on record).
        acr = (
            await session.scalar(
                select(UserSession.acr).where(UserSession.id == info.session_id, UserSession.tenant_id == tenant.id)
            )
            if info.session_id
            else None
        )
        body["id_token"] = await ctx.tokens.issue_id_token(
            tenant=tenant,
            client=client,
            subject=str(user.id),
            auth_time=auth_time,
            amr=list(info.amr),
            acr=acr,
            session_id=info.session_id,
            access_token=access_token,
            extra_claims=user_claims(user, scopes),
        )
        treq.issued.append("id_token")
    return body
