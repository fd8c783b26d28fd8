"""Create authorization codes (RFC 6749 §4.1.2) together with the grant they belong to."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from idhub.crypto.secrets import SecretHasher, random_token
from idhub.storage.base import utcnow
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
    """Store a new single-use code (only its keyed hash) and its grant; return the code."""
    now = utcnow()
    grant = Grant(
        id=random_token(16),
        tenant_id=tenant_id,
        client_id=client_pk,
        user_id=user_id,
        session_id=session_id,
        scope=scope,
        created_at=now,
    )
    session.add(grant)
    # No ORM relationship links the two rows, so flush the grant first for the code's foreign key.
    await session.flush()
    code = random_token(32)
    session.add(
        AuthorizationCode(
            code_hash=hasher.hash(code),
            tenant_id=tenant_id,
            client_id=client_pk,
            user_id=user_id,
            grant_id=grant.id,
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
    )
    await session.flush()
    return code
