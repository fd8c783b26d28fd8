"""Scheduled key rotation: tenants with ``key_rotation_days`` rotate once their active keys are that old."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select, update

from idhub.crypto.rotation import KeyRotationSchedule
from idhub.storage.base import utcnow
from idhub.storage.models import SigningKey
from idhub.tenants.service import update_tenant
from tests.conftest import Env


def _schedule(env: Env) -> KeyRotationSchedule:
    return KeyRotationSchedule(
        env.ctx.uow_factory, sealer=env.ctx.sealer, max_token_lifetime=timedelta(minutes=10), interval=0
    )


def _set_days(env: Env, slug: str, days: int | None) -> None:
    async def work() -> None:
        async with env.uow() as uow:
            await update_tenant(uow, slug=slug, key_rotation_days=days)

    env.run(work)


def _age_active_keys(env: Env, tenant_id: object, days: int) -> None:
    async def work() -> None:
        async with env.uow() as uow:
            await uow.session.execute(
                update(SigningKey)
                .where(SigningKey.tenant_id == tenant_id, SigningKey.state == "active")
                .values(activated_at=utcnow() - timedelta(days=days))
            )

    env.run(work)


def _active(env: Env, tenant_id: object) -> set[str]:
    async def work() -> set[str]:
        async with env.uow() as uow:
            rows = await uow.session.scalars(
                select(SigningKey.kid).where(SigningKey.tenant_id == tenant_id, SigningKey.state == "active")
            )
            return set(rows.all())

    result: set[str] = env.run(work)
    return result


def test_rotation_schedule_rotates_due_tenants_only_once(env: Env) -> None:
    due, fresh, manual = env.tenant(), env.tenant(), env.tenant()
    _set_days(env, due.slug, 30)
    _set_days(env, fresh.slug, 30)
    _age_active_keys(env, due.id, 31)
    _age_active_keys(env, manual.id, 400)  # no schedule: never rotated by it
    before = {t.slug: _active(env, t.id) for t in (due, fresh, manual)}
    schedule = _schedule(env)

    async def twice() -> list[dict[str, list[str]]]:
        return list(await asyncio.gather(schedule.run_once(), schedule.run_once()))

    results = env.run(twice)
    rotated = [r for r in results if due.slug in r]
    assert len(rotated) == 1, results  # two checks at once: one rotation
    assert all(fresh.slug not in r and manual.slug not in r for r in results)
    assert _active(env, due.id) != before[due.slug]
    assert _active(env, fresh.id) == before[fresh.slug] and _active(env, manual.id) == before[manual.slug]
    assert env.run(schedule.run_once) == {}  # the new keys are fresh


def test_rotation_schedule_setting_validated_and_cleared(env: Env) -> None:
    import pytest

    from idhub.errors import Invalid

    tenant = env.tenant()
    for bad in (0, -1, 4000):
        with pytest.raises(Invalid):
            _set_days(env, tenant.slug, bad)
    _set_days(env, tenant.slug, 7)
    _set_days(env, tenant.slug, None)
    _age_active_keys(env, tenant.id, 30)
    assert env.run(_schedule(env).run_once) == {}
