"""Signing keys: encrypted at rest, rotation next -> active -> retired, JWKS publishing, no silent generation."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from idhub.crypto.keys import ALGORITHMS, KeyStore, rotate_keys
from idhub.storage.base import utcnow
from idhub.storage.models import SigningKey
from idhub.tenants.service import TenantInfo
from tests.conftest import Env

LIFETIME = timedelta(minutes=20)


def _rows(env: Env, tenant_id: uuid.UUID) -> list[SigningKey]:
    async def work() -> list[SigningKey]:
        async with env.ctx.sessionmaker() as session:
            return list((await session.scalars(select(SigningKey).where(SigningKey.tenant_id == tenant_id))).all())

    return env.run(work)


def _rotate(env: Env, tenant_id: uuid.UUID) -> list[str]:
    async def work() -> list[str]:
        async with env.uow() as uow:  # the commit reloads this process's keys (KeysRotated)
            return await rotate_keys(uow, tenant_id=tenant_id, sealer=env.ctx.sealer, max_token_lifetime=LIFETIME)

    return env.run(work)


def _jwks_kids(env: Env, tenant: TenantInfo) -> set[str]:
    env.ctx.keys.invalidate(tenant.id)
    response = env.client.get(f"/tenants/{tenant.slug}/jwks")
    assert response.status_code == 200
    return {k["kid"] for k in response.json()["keys"]}


def _by_state(rows: list[SigningKey]) -> dict[tuple[str, str], list[SigningKey]]:
    result: dict[tuple[str, str], list[SigningKey]] = {}
    for row in rows:
        result.setdefault((row.alg, row.state), []).append(row)
    return result


def test_keys_new_tenant_one_active_one_next_per_alg(env: Env) -> None:
    tenant = env.tenant()
    states = _by_state(_rows(env, tenant.id))
    for alg in ALGORITHMS:
        assert len(states[(alg, "active")]) == 1
        assert len(states[(alg, "next")]) == 1
    assert not any(state == "retired" for _alg, state in states)


def test_keys_private_part_sealed_with_kid_context(env: Env) -> None:
    tenant = env.tenant()
    for row in _rows(env, tenant.id):
        assert b"PRIVATE KEY" not in row.private_key_encrypted
        assert b"PRIVATE KEY" in env.ctx.sealer.open(row.private_key_encrypted, context=f"signing-key:{row.kid}")
        assert not {"d", "p", "q"} & set(row.public_jwk)


def test_rotate_keys_next_becomes_active_active_retired_new_next(env: Env) -> None:
    tenant = env.tenant()
    before = _by_state(_rows(env, tenant.id))
    started = utcnow()
    activated = _rotate(env, tenant.id)
    after_rows = _rows(env, tenant.id)
    after = _by_state(after_rows)
    for alg in ALGORITHMS:
        old_active, old_next = before[(alg, "active")][0], before[(alg, "next")][0]
        assert [r.kid for r in after[(alg, "active")]] == [old_next.kid]
        assert [r.kid for r in after[(alg, "retired")]] == [old_active.kid]
        retired = after[(alg, "retired")][0]
        assert retired.publish_until is not None
        assert started + LIFETIME - timedelta(seconds=5) <= retired.publish_until <= utcnow() + LIFETIME
        new_next = after[(alg, "next")]
        assert len(new_next) == 1 and new_next[0].kid not in {old_active.kid, old_next.kid}
        assert old_next.kid in activated
    assert len(after_rows) == 6


def test_jwks_after_rotation_publishes_next_active_and_retired(env: Env) -> None:
    tenant = env.tenant()
    first = {r.kid for r in _rows(env, tenant.id)}
    _rotate(env, tenant.id)
    published = _jwks_kids(env, tenant)
    assert published == {r.kid for r in _rows(env, tenant.id)}
    assert first <= published
    assert len(published) == 6


def test_jwks_retired_key_past_publish_until_dropped(env: Env) -> None:
    tenant = env.tenant()
    _rotate(env, tenant.id)

    async def expire_retired() -> None:
        async with env.ctx.sessionmaker() as session:
            await session.execute(
                update(SigningKey)
                .where(SigningKey.tenant_id == tenant.id, SigningKey.state == "retired")
                .values(publish_until=utcnow() - timedelta(seconds=1))
            )
            await session.commit()

    env.run(expire_retired)
    live = {r.kid for r in _rows(env, tenant.id) if r.state != "retired"}
    assert _jwks_kids(env, tenant) == live
    assert len(live) == 4


def test_rotate_twice_first_retired_still_published_until_expiry(env: Env) -> None:
    tenant = env.tenant()
    original_active = {r.kid for r in _rows(env, tenant.id) if r.state == "active"}
    _rotate(env, tenant.id)
    _rotate(env, tenant.id)
    rows = _rows(env, tenant.id)
    assert len(rows) == 8
    assert original_active <= _jwks_kids(env, tenant)


def test_token_signed_before_rotation_still_verifies(env: Env) -> None:
    tenant = env.tenant()
    client_id, _secret = env.oauth_client(tenant, grant_types=["client_credentials"])

    async def issue() -> str:
        info = await env.ctx.clients.get(tenant.id, client_id)
        assert info is not None
        token, _ttl = await env.ctx.tokens.issue_access_token(
            tenant=tenant, client=info, subject=client_id, scope="", audience=client_id
        )
        return token

    token = env.run(issue)
    _rotate(env, tenant.id)

    async def validate() -> dict[str, Any]:
        return await env.ctx.tokens.validate_access_token(tenant=tenant, token=token)

    env.ctx.tokens._verified.clear()  # force a real signature check against the reloaded key set
    assert env.run(validate)["sub"] == client_id


def test_key_store_tenant_without_keys_generates_nothing(env: Env) -> None:
    tenant = env.tenant()

    async def drop_keys() -> None:
        async with env.ctx.sessionmaker() as session:
            await session.execute(delete(SigningKey).where(SigningKey.tenant_id == tenant.id))
            await session.commit()

    async def load_with_fresh_store() -> tuple[int, int]:
        store = KeyStore(env.ctx.sessionmaker, env.ctx.sealer)  # as after a restart
        loaded = await store.get(tenant.id)
        async with env.ctx.sessionmaker() as session:
            count = await session.scalar(
                select(func.count()).select_from(SigningKey).where(SigningKey.tenant_id == tenant.id)
            )
        return len(loaded.keys), int(count or 0)

    env.run(drop_keys)
    assert env.run(load_with_fresh_store) == (0, 0)
    env.ctx.keys.invalidate(tenant.id)
    assert env.client.get(f"/tenants/{tenant.slug}/jwks").status_code == 503
    assert _rows(env, tenant.id) == []


def test_key_store_restart_loads_same_keys(env: Env) -> None:
    tenant = env.tenant()

    async def load() -> list[tuple[str, str, str]]:
        store = KeyStore(env.ctx.sessionmaker, env.ctx.sealer)
        return sorted((k.kid, k.alg, k.state) for k in (await store.get(tenant.id)).keys)

    first, second = env.run(load), env.run(load)
    assert first == second
    assert sorted((r.kid, r.alg, r.state) for r in _rows(env, tenant.id)) == first


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_key_store_active_key_per_alg_signs(env: Env, alg: str) -> None:
    tenant = env.tenant()

    async def active() -> str | None:
        keys = await env.ctx.keys.get(tenant.id)
        key = keys.active(alg)
        return None if key is None else key.kid

    kid = env.run(active)
    assert kid in {r.kid for r in _rows(env, tenant.id) if r.state == "active" and r.alg == alg}
