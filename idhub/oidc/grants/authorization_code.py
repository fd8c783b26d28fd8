"""The authorization code grant at the token endpoint (RFC 6749 §4.1.3, RFC 7636 §4.6, OIDC Core §3.1.3).

The code's grant is locked first (the lock order of :mod:`idhub.tokens.refresh`), then the code is
consumed with the single-use primitive (one conditional ``UPDATE`` that exactly one request can win). A
code that comes back after it was consumed has leaked, so everything it yielded is revoked (RFC 6749
§4.1.2), also when it comes back in parallel with its one successful redemption. Every refusal tells
the client only that the code is not valid (or which parameter it got wrong); whether it was replayed,
expired or foreign goes to the log.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from sqlalchemy import bindparam, select

from idhub.crypto.secrets import constant_time_equals
from idhub.oidc.claims import user_claims
from idhub.oidc.errors import InvalidGrant, InvalidRequest
from idhub.oidc.grants.base import TokenRequest, check_live_grant, entitled_scopes, grant_audience
from idhub.oidc.interaction import CODE_ACR
from idhub.storage.base import utcnow
from idhub.storage.models import AuthorizationCode
from idhub.storage.single_use import consume, consuming
from idhub.storage.tables import AUTHORIZATION_CODES
from idhub.tokens.refresh import issue_refresh_token, lock_grant_of_code_with_user, refresh_expiry, revoke_grant

GRANT_TYPE = "authorization_code"
# RFC 7636 §4.1: code_verifier = 43*128unreserved
VERIFIER_RE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
MAX_CODE = 512
INVALID_CODE = "the authorization code is invalid or expired"
_CODE = AUTHORIZATION_CODES.c
# Uses up a live code of this client (single use, RFC 6749 §4.1.2), returning what the token response needs.
_CONSUME_CODE = consuming(
    AUTHORIZATION_CODES,
    used="consumed_at",
    where=(
        _CODE.code_hash == bindparam("p_code_hash"),
        _CODE.tenant_id == bindparam("p_tenant_id"),
        _CODE.client_id == bindparam("p_client_id"),
        _CODE.expires_at > bindparam("p_now"),
    ),
    returning=(
        _CODE.grant_id,
        _CODE.user_id,
        _CODE.session_id,
        _CODE.redirect_uri,
        _CODE.scope,
        _CODE.nonce,
        _CODE.code_challenge,
        _CODE.code_challenge_method,
        _CODE.resources,
        _CODE.auth_time,
        _CODE.amr,
        _CODE.extra,
    ),
)


def s256(verifier: str) -> str:
    """Return the S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_request(treq: TokenRequest) -> tuple[str, str, str]:
    """Return ``code``, ``redirect_uri`` and ``code_verifier``; PKCE is mandatory for every client (RFC 9700 §2.1.1)."""
    params = treq.params
    code = params.require("code")
    redirect_uri = params.require("redirect_uri")  # OIDC Core §3.1.3.1: required when it was in the request.
    verifier = params.get("code_verifier")
    if verifier is None:
        raise InvalidRequest("code_verifier is required (PKCE)")
    if not VERIFIER_RE.fullmatch(verifier):
        raise InvalidRequest("code_verifier must be 43-128 unreserved characters (RFC 7636 §4.1)")
    return code, redirect_uri, verifier


async def consume_code(treq: TokenRequest, code: str) -> tuple[Any, Any]:
    """Consume the code atomically; return its row and its locked grant read with the user (see
    :func:`idhub.tokens.refresh.lock_grant_of_code_with_user`). A replayed code revokes its grant (RFC 6749 §4.1.2)."""
    if len(code) > MAX_CODE:
        raise InvalidGrant(INVALID_CODE, internal="code too long")
    session = treq.uow.session
    code_hash = treq.ctx.secret_hasher.hash(code)
    # Grant row first: parallel redemptions queue on it, and a replay's revocation locks in the same order.
    # The grant's state and its user come with the lock (checked once the code is used up).
    grant = await lock_grant_of_code_with_user(session, tenant_id=treq.tenant.id, code_hash=code_hash)
    if grant is None:
        raise InvalidGrant(INVALID_CODE, internal="code unknown, expired, or issued to another client")
    now = utcnow()
    parameters = {"p_code_hash": code_hash, "p_tenant_id": treq.tenant.id, "p_client_id": treq.client.id, "p_now": now}
    row = await consume(session, _CONSUME_CODE, parameters)
    if row is not None:
        return row, grant
    found = (
        await session.execute(
            select(AuthorizationCode.consumed_at, AuthorizationCode.grant_id).where(
                AuthorizationCode.code_hash == code_hash, AuthorizationCode.tenant_id == treq.tenant.id
            )
        )
    ).first()
    if found is not None and found.consumed_at is not None:
        # Presented again after use: it leaked. Revoke what it issued, and keep that even though we fail.
        await revoke_grant(treq.uow, treq.tenant.id, found.grant_id, reason="authorization code replayed")
        treq.uow.keep_on_error()
        raise InvalidGrant(INVALID_CODE, internal=f"code of grant {found.grant_id} replayed; grant revoked")
    # Unknown, expired, or another client's code (left untouched for its owner).
    raise InvalidGrant(INVALID_CODE, internal="code unknown, expired, or issued to another client")


def code_acr(extra: dict[str, Any] | None) -> str | None:
    """Return the ``acr`` of the sign-in the code came from, kept in its JSON ``extra`` (no column of its own)."""
    value = (extra or {}).get(CODE_ACR)
    return value if isinstance(value, str) and value else None


def check_code(row: Any, *, redirect_uri: str, verifier: str) -> None:
    """Check the redirect URI is identical (RFC 6749 §4.1.3) and the PKCE proof (RFC 7636 §4.6)."""
    if not constant_time_equals(redirect_uri, row.redirect_uri):
        raise InvalidGrant("redirect_uri does not match the authorization request")
    if row.code_challenge_method != "S256" or not constant_time_equals(s256(verifier), row.code_challenge):
        raise InvalidGrant("code_verifier does not match the code_challenge (PKCE)")


async def handle(treq: TokenRequest) -> dict[str, Any]:
    """Exchange a code for an access token, an ID token (scope ``openid``) and a refresh token."""
    code, redirect_uri, verifier = check_request(treq)
    ctx, tenant, client = treq.ctx, treq.tenant, treq.client
    session = treq.uow.session
    row, grant = await consume_code(treq, code)
    try:
        check_code(row, redirect_uri=redirect_uri, verifier=verifier)
        grant_created_at, user = check_live_grant(grant, grant_id=row.grant_id, described="the authorization code")
    except InvalidGrant:
        treq.uow.keep_on_error()  # the code stays consumed (single use, RFC 6749 §4.1.2)
        raise
    # The person's entitlements may have changed since the code was issued: grant what they hold now.
    scopes = list(await entitled_scopes(treq, user_id=user.id, requested=row.scope.split()))
    if not scopes:
        treq.uow.keep_on_error()  # the code stays consumed (single use, RFC 6749 §4.1.2)
        raise InvalidGrant(INVALID_CODE, internal=f"user {user.id} is no longer entitled to any scope of the code")
    scope = " ".join(scopes)
    audience = grant_audience(treq.params, client, row.resources or [])
    treq.subject = str(user.id)

    auth_time = int(row.auth_time.timestamp())
    access_token, ttl = await ctx.tokens.issue_access_token(
        tenant=tenant,
        client=client,
        subject=str(user.id),
        scope=scope,
        audience=audience,
        grant_id=row.grant_id,
        auth_time=auth_time,
        session_id=row.session_id,
    )
    treq.issued.append("access_token")
    body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer", "expires_in": ttl, "scope": scope}
    if "openid" in scopes:
        body["id_token"] = await ctx.tokens.issue_id_token(
            tenant=tenant,
            client=client,
            subject=str(user.id),
            auth_time=auth_time,
            nonce=row.nonce,
            amr=list(row.amr or ()),
            acr=code_acr(row.extra),
            session_id=row.session_id,
            access_token=access_token,
            extra_claims=user_claims(user, scopes),
        )
        treq.issued.append("id_token")
    if "refresh_token" in client.grant_types:
        now = utcnow()
        settings = ctx.settings.tokens
        body["refresh_token"] = await issue_refresh_token(
            session,
            hasher=ctx.secret_hasher,
            tenant_id=tenant.id,
            client_pk=client.id,
            grant_id=row.grant_id,
            user_id=user.id,
            session_id=row.session_id,
            scope=scope,
            resources=list(row.resources or ()),
            auth_time=row.auth_time,
            amr=list(row.amr or ()),
            expires_at=refresh_expiry(
                grant_created_at=grant_created_at,
                now=now,
                ttl=settings.refresh_token_ttl,
                idle_ttl=settings.refresh_token_idle_ttl,
            ),
            now=now,
        )
        treq.issued.append("refresh_token")
    return body
