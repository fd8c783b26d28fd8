"""Upstream providers by (tenant, alias), kept in process for a few seconds.

A brokered sign-in names its upstream three times (the authorization request's ``idp_hint``, the login
redirect, the callback); reading the row each time was three round trips to the database per sign-in,
and the callback's read opened a transaction that then stayed open while the upstream answered. The
rows change rarely and only through :class:`idhub.broker.providers.Providers`, which raises
:class:`idhub.events.IdentityProviderChanged` (and its ``Created``/``Deleted`` kinds) on every change:
this process forgets the tenant's entries as soon as that change commits; other processes see it
within ``ttl`` seconds, as with the client cache (:class:`idhub.clients.service.ClientCache`). An
unknown alias is remembered too (``None``), so a stream of bad aliases costs no database work.

Loads run on the caller's session (no second connection); a load that was under way when an
invalidation came is used for that caller but not kept, so a change is never papered over by a read
that started before it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.broker.providers import ALIAS, ProviderInfo, info_of
from idhub.events import IdentityProviderChanged
from idhub.storage.models import IdentityProvider

DEFAULT_TTL = 5.0


class ProviderCache:
    """The providers this process read lately, each for at most ``ttl`` seconds."""

    def __init__(
        self, *, ttl: float = DEFAULT_TTL, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[tuple[uuid.UUID, str], tuple[float, ProviderInfo | None]] = {}
        self._generation = 0  # bumped by every invalidation: a load begun before one is not kept

    async def get(self, session: AsyncSession, tenant_id: uuid.UUID, alias: str) -> ProviderInfo | None:
        """Return the tenant's upstream ``alias`` (enabled or not), or ``None`` when there is none."""
        key = (tenant_id, alias)
        hit = self._entries.get(key)
        if hit is not None and self.clock() - hit[0] < self.ttl:
            return hit[1]
        generation, started = self._generation, self.clock()
        row = await session.scalar(
            select(IdentityProvider).where(IdentityProvider.tenant_id == tenant_id, IdentityProvider.alias == alias)
        )
        provider = info_of(row) if row is not None else None
        if generation == self._generation:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (started, provider)
        return provider

    async def enabled(self, session: AsyncSession, tenant_id: uuid.UUID, alias: str) -> ProviderInfo | None:
        """Return the tenant's enabled upstream ``alias``, or ``None`` (unknown, malformed or disabled alias)."""
        if not ALIAS.fullmatch(alias):
            return None
        provider = await self.get(session, tenant_id, alias)
        return provider if provider is not None and provider.enabled else None

    def on_change(self, event: IdentityProviderChanged) -> None:
        """Forget the changed provider's tenant once the change commits (the unit of work's consumer)."""
        self.invalidate(event.tenant_id)

    def invalidate(self, tenant_id: uuid.UUID | None = None) -> None:
        """Forget one tenant's providers, or every provider."""
        self._generation += 1
        if tenant_id is None:
            self._entries.clear()
            return
        for key in [key for key in self._entries if key[0] == tenant_id]:
            del self._entries[key]
