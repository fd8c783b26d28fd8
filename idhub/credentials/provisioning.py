"""Provisioning tokens: long-lived bearer tokens an operator creates for an HR system's SCIM client.

Only a keyed hash of a token is stored; the token is shown once. Requests look tokens up through a
short cache, so that a revocation takes effect at once everywhere it is also recorded in the revocation
log (kind ``credential``): the revoking process refuses the token from its commit on, other processes
within milliseconds through the Redis broadcast, or within the revocation poll interval without Redis.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idhub.cache import RefreshingCache
from idhub.crypto.secrets import SecretHasher, random_token
from idhub.errors import Invalid, NotFound
from idhub.events import ProvisioningTokenCreated, ProvisioningTokenRevoked
from idhub.storage.base import utcnow
from idhub.storage.models import ProvisioningToken
from idhub.storage.uow import UnitOfWork
from idhub.tokens.revocation import RevocationState, record_revocation

TOKEN_PREFIX = "idhub_pt_"  # recognisable in secret scanners; never a JWT, so no confusion with access tokens
# A revocation entry must outlive every cached copy of the token (the cache serves stale entries for up
# to four lifetimes while it refreshes); an hour is ample, after which the row's revoked_at alone decides.
REVOCATION_TTL = 3600


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a request needs to know about a provisioning token."""

    id: uuid.UUID
    tenant_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class TokenListing:
    """A provisioning token as listed to operators (never the token or its hash)."""

    id: uuid.UUID
    name: str
    created_at: datetime
    revoked_at: datetime | None


async def create_provisioning_token(
    uow: UnitOfWork, *, tenant_id: uuid.UUID, name: str, hasher: SecretHasher
) -> tuple[ProvisioningToken, str]:
    """Create a token; return the row and the token itself (shown once, only its keyed hash is stored)."""
    name = name.strip()
    if not name or len(name) > 255 or not name.isprintable():
        raise Invalid("the token name must be 1-255 printable characters")
    token = TOKEN_PREFIX + random_token(32)
    row = ProvisioningToken(tenant_id=tenant_id, name=name, token_hash=hasher.hash(token))
    uow.session.add(row)
    await uow.session.flush()
    uow.raise_event(ProvisioningTokenCreated(tenant_id=tenant_id, credential_id=row.id, name=name))
    return row, token


async def list_provisioning_tokens(uow: UnitOfWork, *, tenant_id: uuid.UUID) -> list[TokenListing]:
    """Return the tenant's tokens, newest first, without secrets."""
    rows = await uow.session.execute(
        select(ProvisioningToken.id, ProvisioningToken.name, ProvisioningToken.created_at, ProvisioningToken.revoked_at)
        .where(ProvisioningToken.tenant_id == tenant_id)
        .order_by(ProvisioningToken.created_at.desc(), ProvisioningToken.id)
    )
    return [TokenListing(*row) for row in rows]


async def revoke_provisioning_token(uow: UnitOfWork, *, tenant_id: uuid.UUID, token_id: uuid.UUID) -> TokenListing:
    """Revoke a token; every process refuses it from this commit on. Revoking twice changes nothing."""
    row = await uow.session.scalar(
        select(ProvisioningToken).where(ProvisioningToken.tenant_id == tenant_id, ProvisioningToken.id == token_id)
    )
    if row is None:
        raise NotFound("provisioning token not found")
    if row.revoked_at is None:
        now = utcnow()
        result = await uow.session.execute(
            update(ProvisioningToken)
            .where(ProvisioningToken.id == token_id, ProvisioningToken.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0):
            row.revoked_at = now
            await record_revocation(
                uow, tenant_id=tenant_id, kind="credential", value=str(token_id), expires_in=REVOCATION_TTL
            )
            uow.raise_event(ProvisioningTokenRevoked(tenant_id=tenant_id, credential_id=token_id, name=row.name))
    return TokenListing(row.id, row.name, row.created_at, row.revoked_at)


class ProvisioningTokenCache:
    """Provisioning tokens by keyed hash, cached for a few seconds (every SCIM request looks one up).

    Misses are cached too, so a caller spraying wrong tokens costs one query per token per lifetime.
    A revoked token is refused at once through the revocation state, whatever the cache holds.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        hasher: SecretHasher,
        revocations: RevocationState,
        ttl: float = 5.0,
    ):
        self._sessionmaker = sessionmaker
        self._hasher = hasher
        self._revocations = revocations
        self._cache: RefreshingCache[str, TokenInfo | None] = RefreshingCache(self._load, ttl=ttl)

    async def _load(self, token_hash: str) -> TokenInfo | None:
        async with self._sessionmaker() as session:
            row = await session.scalar(select(ProvisioningToken).where(ProvisioningToken.token_hash == token_hash))
        if row is None or row.revoked_at is not None:
            return None
        return TokenInfo(id=row.id, tenant_id=row.tenant_id)

    async def find(self, *, tenant_id: uuid.UUID, tenant_key: str, token: str) -> TokenInfo | None:
        """Return the live token of this tenant, ``None`` for anything else."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        info = await self._cache.get(self._hasher.hash(token))
        if info is None or info.tenant_id != tenant_id:
            return None
        if self._revocations.is_credential_revoked(tenant_key, str(info.id)):
            return None
        return info
