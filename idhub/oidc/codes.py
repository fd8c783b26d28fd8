"""Create authorization codes (RFC 6749 §4.1.2) together with the grant they belong to."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.crypto.secrets import SecretHasher, random_token
from idhub.storage.base import utcnow
from idhub.storage.engine import is_postgresql
from idhub.storage.models import AuthorizationCode, Grant


async def create_authorization_code(
    session: AsyncSession,
    *,
    hasher: SecretHasher,
    tenant_id: uuid.UUID,
    client_pk: uuid.UUID,
    user_id: uuid.UUID,
    session_id: str | None,
    redirect_uri: str,
    scope: str,
    nonce: str | None,
    code_challenge: str,
    code_challenge_method: str,
    resources: list[str],
    auth_time: datetime,
    amr: list[str],
    ttl: int,
    extra: dict[str, Any] | None = None,
) -> str:
    """Store a new single-use code (only its keyed hash) and its grant; return the code.

    Two rows, written with Core statements (nothing reads them back as objects in this unit of work):
    on PostgreSQL in one statement, the grant's ``INSERT`` a data-modifying ``WITH`` of the code's
    (one round trip; the code's foreign key is checked at the statement's end, when both rows are
    there); elsewhere (SQLite) the grant first, then the code.
    """
    now = utcnow()
    grant_id = random_token(16)
    code = random_token(32)
    new_grant = insert(Grant).values(
        id=grant_id,
        tenant_id=tenant_id,
        client_id=client_pk,
        user_id=user_id,
        session_id=session_id,
        scope=scope,
        created_at=now,
    )
    new_code = insert(AuthorizationCode).values(
        code_hash=hasher.hash(code),
        tenant_id=tenant_id,
        client_id=client_pk,
        user_id=user_id,
        grant_id=grant_id,
        session_id=session_id,
        redirect_uri=redirect_uri,
        scope=scope,
        nonce=nonce,
        code_challenge=code_challenge,
        code_challenge_method=code_challenge_method,
        resources=list(resources),
        auth_time=auth_time,
        amr=list(amr),
        extra=dict(extra or {}),
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )
    if is_postgresql(session):
        await session.execute(new_code.add_cte(new_grant.returning(Grant.id).cte("new_grant")))
    else:
        await session.execute(new_grant)
        await session.execute(new_code)
    return code
