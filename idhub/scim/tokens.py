"""Provisioning tokens: long-lived SCIM bearer tokens an operator creates for an HR system."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.crypto.secrets import SecretHasher, random_token
from idhub.storage.models import ProvisioningToken

TOKEN_PREFIX = "idhub_pt_"  # recognisable in secret scanners; never a JWT, so no confusion with access tokens


async def create_provisioning_token(
    session: AsyncSession, *, tenant_id: uuid.UUID, name: str, hasher: SecretHasher
) -> tuple[ProvisioningToken, str]:
    """Create a token; return the row and the token itself (shown once, only its keyed hash is stored)."""
    token = TOKEN_PREFIX + random_token(32)
    row = ProvisioningToken(tenant_id=tenant_id, name=name, token_hash=hasher.hash(token))
    session.add(row)
    await session.flush()
    return row, token


async def find_provisioning_token(
    session: AsyncSession, *, tenant_id: uuid.UUID, token: str, hasher: SecretHasher
) -> ProvisioningToken | None:
    """Return the live token of this tenant whose hash matches (lookup by keyed hash: no timing oracle)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    row = await session.scalar(select(ProvisioningToken).where(ProvisioningToken.token_hash == hasher.hash(token)))
    if row is None or row.tenant_id != tenant_id or row.revoked_at is not None:
        return None
    return row
