"""Provisioning tokens: long-lived SCIM bearer tokens an operator creates for an HR system."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idhub.cache import RefreshingCache
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


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a request needs to know about a provisioning token."""

    id: uuid.UUID
    tenant_id: uuid.UUID


class ProvisioningTokenCache:
    """Provisioning tokens by keyed hash, cached for a few seconds (every SCIM request looks one up).

    Misses are cached too, so a caller spraying wrong tokens costs one query per token per lifetime.
    There is no revocation command yet; when one comes, it must ``forget`` the token in every process
    (or the lifetime bounds how long a revoked token keeps working).
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], hasher: SecretHasher, ttl: float = 5.0):
        self._sessionmaker = sessionmaker
        self._hasher = hasher
        self._cache: RefreshingCache[str, TokenInfo | None] = RefreshingCache(self._load, ttl=ttl)

    async def _load(self, token_hash: str) -> TokenInfo | None:
        async with self._sessionmaker() as session:
            row = await session.scalar(select(ProvisioningToken).where(ProvisioningToken.token_hash == token_hash))
        if row is None or row.revoked_at is not None:
            return None
        return TokenInfo(id=row.id, tenant_id=row.tenant_id)

    async def find(self, *, tenant_id: uuid.UUID, token: str) -> TokenInfo | None:
        """Return the live token of this tenant, ``None`` for anything else."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        info = await self._cache.get(self._hasher.hash(token))
        if info is None or info.tenant_id != tenant_id:
            return None
        return info
