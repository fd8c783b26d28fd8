"""Revocations reach other processes: through Redis at once, and by polling without it."""

from __future__ import annotations

import asyncio
import time
import uuid

from idhub.tokens.revocation import RevocationState, record_revocation
from tests.conftest import Env, uow_publishing_to
from tests.redis_support import redis_url_or_skip


def _claims(tenant_id: str, jti: str) -> dict[str, object]:
    return {"jti": jti, "sub": "s", "client_id": "c", "iat": int(time.time()), "exp": int(time.time()) + 60}


def test_revocation_other_process_via_redis_applied_at_once(env: Env) -> None:
    url = redis_url_or_skip()
    tenant = env.tenant()
    jti = uuid.uuid4().hex

    async def work() -> tuple[bool, bool]:
        # Two states stand for two processes; polling is slowed so only Redis can deliver in time.
        writer = RevocationState(env.ctx.sessionmaker, poll_seconds=60, redis_url=url)
        reader = RevocationState(env.ctx.sessionmaker, poll_seconds=60, redis_url=url)
        await writer.start()
        await reader.start()
        try:
            await asyncio.sleep(0.2)  # let the subscription settle
            before = reader.is_revoked(str(tenant.id), _claims(str(tenant.id), jti))
            async with uow_publishing_to(env, writer) as uow:
                await record_revocation(uow, tenant_id=tenant.id, kind="jti", value=jti, expires_in=60)
            for _ in range(50):
                if reader.is_revoked(str(tenant.id), _claims(str(tenant.id), jti)):
                    break
                await asyncio.sleep(0.02)
            return before, reader.is_revoked(str(tenant.id), _claims(str(tenant.id), jti))
        finally:
            await writer.stop()
            await reader.stop()

    before, after = env.run(work)
    assert before is False
    assert after is True


def test_revocation_other_process_without_redis_caught_up_by_poll(env: Env) -> None:
    tenant = env.tenant()
    jti = uuid.uuid4().hex

    async def work() -> bool:
        reader = RevocationState(env.ctx.sessionmaker, poll_seconds=0.1)
        await reader.start()
        try:
            async with uow_publishing_to(env) as uow:
                await record_revocation(uow, tenant_id=tenant.id, kind="jti", value=jti, expires_in=60)
            for _ in range(50):
                if reader.is_revoked(str(tenant.id), _claims(str(tenant.id), jti)):
                    return True
                await asyncio.sleep(0.05)
            return False
        finally:
            await reader.stop()

    assert env.run(work) is True
