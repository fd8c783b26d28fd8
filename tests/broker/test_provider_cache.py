"""The provider cache: one read per (tenant, alias) per TTL, forgotten on a committed change, never refilled stale.

The cache reads through the caller's session; a stand-in session counts the reads and a hand-driven
clock stands for time.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from idhub.broker.provider_cache import ProviderCache
from idhub.events import IdentityProviderChanged, IdentityProviderCreated
from idhub.storage.models import IdentityProvider

TENANT = uuid.uuid4()
OTHER_TENANT = uuid.uuid4()


def _row(alias: str, *, enabled: bool = True, tenant_id: uuid.UUID = TENANT) -> IdentityProvider:
    now = datetime.now(UTC)
    return IdentityProvider(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        alias=alias,
        type="oidc",
        display_name=alias,
        enabled=enabled,
        internal=False,
        jit=True,
        config={"issuer": "https://idp.example"},
        secret_encrypted=None,
        created_at=now,
        updated_at=now,
    )


class _Session:
    """Answers ``scalar`` with the row it holds, counting the reads; ``gate`` holds a read until set."""

    def __init__(self, row: IdentityProvider | None) -> None:
        self.row = row
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def scalar(self, _statement: Any) -> IdentityProvider | None:
        self.reads += 1
        row = self.row
        if self.gate is not None:
            await self.gate.wait()
        return row


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_provider_cache_reads_once_per_ttl() -> None:
    clock, session = _Clock(), _Session(_row("corp"))
    cache = ProviderCache(ttl=5.0, clock=clock)
    first = await cache.get(session, TENANT, "corp")  # type: ignore[arg-type]
    again = await cache.get(session, TENANT, "corp")  # type: ignore[arg-type]
    assert first is not None and again is first and session.reads == 1
    clock.now += 5.0
    await cache.get(session, TENANT, "corp")  # type: ignore[arg-type]
    assert session.reads == 2


async def test_provider_cache_unknown_alias_remembered_until_created() -> None:
    session = _Session(None)
    cache = ProviderCache(clock=_Clock())
    assert await cache.get(session, TENANT, "corp") is None  # type: ignore[arg-type]
    assert await cache.get(session, TENANT, "corp") is None  # type: ignore[arg-type]
    assert session.reads == 1
    session.row = _row("corp")
    cache.on_change(IdentityProviderCreated(tenant_id=TENANT, provider_id=session.row.id, alias="corp"))
    assert await cache.get(session, TENANT, "corp") is not None  # type: ignore[arg-type]


async def test_provider_cache_change_forgets_only_that_tenant() -> None:
    session = _Session(_row("corp"))
    cache = ProviderCache(clock=_Clock())
    await cache.get(session, TENANT, "corp")  # type: ignore[arg-type]
    await cache.get(session, OTHER_TENANT, "corp")  # type: ignore[arg-type]
    assert session.reads == 2
    session.row = _row("corp", enabled=False)
    cache.on_change(IdentityProviderChanged(tenant_id=TENANT, provider_id=session.row.id, alias="corp"))
    assert await cache.enabled(session, TENANT, "corp") is None  # type: ignore[arg-type]
    await cache.get(session, OTHER_TENANT, "corp")  # type: ignore[arg-type]
    assert session.reads == 3


async def test_provider_cache_read_begun_before_a_change_is_not_kept() -> None:
    session = _Session(_row("corp"))
    cache = ProviderCache(clock=_Clock())
    session.gate = asyncio.Event()
    reading = asyncio.create_task(cache.get(session, TENANT, "corp"))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    session.row = _row("corp", enabled=False)  # the change commits while the old row is on its way
    cache.on_change(IdentityProviderChanged(tenant_id=TENANT, provider_id=session.row.id, alias="corp"))
    session.gate.set()
    old = await reading
    assert old is not None and old.enabled  # the caller that asked before the change gets what it read
    session.gate = None
    assert await cache.enabled(session, TENANT, "corp") is None  # type: ignore[arg-type]
    assert session.reads == 2


async def test_provider_cache_enabled_refuses_malformed_alias_without_reading() -> None:
    session = _Session(_row("corp"))
    cache = ProviderCache(clock=_Clock())
    assert await cache.enabled(session, TENANT, "../corp") is None  # type: ignore[arg-type]
    assert session.reads == 0
