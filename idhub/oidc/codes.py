"""Create authorization codes (RFC 6749 §4.1.2) together with the grant they belong to."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.crypto.secrets import SecretHasher, random_token
from idhub.storage.base import utcnow
from idhub.storage.engine import is_postgresql
from idhub.storage.tables import AUTHORIZATION_CODES, GRANTS

# Built once, the values given at execute time: a statement built per call costs as much again as the
# round trip (its cache key is computed from every value; bench/db_roundtrips.py). They target the
# tables, not the mapped classes: a statement on a mapped class goes through the ORM's bulk machinery
# even with no object in sight, another 60% of the client's cost (bench/db_roundtrips.py,
# ``session_entity``). The parameters are named apart from the columns (SQLAlchemy reserves those
# names), and shared where both rows hold the same value.
_SHARED: dict[str, Any] = {
    "tenant_id": bindparam("p_tenant_id"),
    "client_id": bindparam("p_client_id"),
    "user_id": bindparam("p_user_id"),
    "session_id": bindparam("p_session_id"),
    "scope": bindparam("p_scope"),
    "created_at": bindparam("p_now"),
}
_NEW_GRANT = insert(GRANTS).values(id=bindparam("p_grant_id"), **_SHARED)
_NEW_CODE = insert(AUTHORIZATION_CODES).values(
    code_hash=bindparam("p_code_hash"),
    grant_id=bindparam("p_grant_id"),
    redirect_uri=bindparam("p_redirect_uri"),
    nonce=bindparam("p_nonce"),
    code_challenge=bindparam("p_code_challenge"),
    code_challenge_method=bindparam("p_code_challenge_method"),
    resources=bindparam("p_resources"),
    auth_time=bindparam("p_auth_time"),
    amr=bindparam("p_amr"),
    extra=bindparam("p_extra"),
    expires_at=bindparam("p_expires_at"),
    **_SHARED,
)
# PostgreSQL: one statement, the grant's INSERT a data-modifying WITH of the code's (the code's foreign
# key is checked at the statement's end, when both rows are there).
_NEW_CODE_AND_GRANT = _NEW_CODE.add_cte(_NEW_GRANT.returning(GRANTS.c.id).cte("new_grant"))


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

    One statement on PostgreSQL; elsewhere (SQLite) the grant first, then the code, in the caller's
    transaction.
    """
    now = utcnow()
    code = random_token(32)
    values = {
        "p_grant_id": random_token(16),
        "p_tenant_id": tenant_id,
        "p_client_id": client_pk,
        "p_user_id": user_id,
        "p_session_id": session_id,
        "p_scope": scope,
        "p_now": now,
        "p_code_hash": hasher.hash(code),
        "p_redirect_uri": redirect_uri,
        "p_nonce": nonce,
        "p_code_challenge": code_challenge,
        "p_code_challenge_method": code_challenge_method,
        "p_resources": list(resources),
        "p_auth_time": auth_time,
        "p_amr": list(amr),
        "p_extra": dict(extra or {}),
        "p_expires_at": now + timedelta(seconds=ttl),
    }
    if is_postgresql(session):
        await session.execute(_NEW_CODE_AND_GRANT, values)
    else:
        await session.execute(_NEW_GRANT, values)
        await session.execute(_NEW_CODE, values)
    return code
