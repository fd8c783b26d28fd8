"""Provisioning tokens: created shown once and stored hashed, listed without secrets, revoked at once everywhere.

A revoked token must be refused from the revoking commit on: in the revoking process whatever its token
cache holds, in every other process through the Redis broadcast (not when a cache entry expires), and
by the revocation poll where there is no Redis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from idhub.app import create_app
from idhub.credentials.provisioning import (
    TOKEN_PREFIX,
    ProvisioningTokenCache,
    TokenListing,
    create_provisioning_token,
    list_provisioning_tokens,
    revoke_provisioning_token,
)
from idhub.errors import Invalid, NotFound
from idhub.storage.models import AuditEvent, ProvisioningToken, Revocation
from idhub.tenants.service import TenantInfo
from idhub.tokens.revocation import RevocationState
from tests.conftest import Env, make_settings, uow_publishing_to
from tests.redis_support import redis_url_or_skip


def create(env: Env, tenant: TenantInfo, name: str = "Workday") -> tuple[uuid.UUID, str]:
    async def work() -> tuple[uuid.UUID, str]:
        async with env.uow() as uow:
            row, token = await create_provisioning_token(
                uow, tenant_id=tenant.id, name=name, hasher=env.ctx.secret_hasher
            )
        return row.id, token

    result: tuple[uuid.UUID, str] = env.run(work)
    return result


def revoke(env: Env, tenant: TenantInfo, token_id: uuid.UUID) -> TokenListing:
    async def work() -> TokenListing:
        async with env.uow() as uow:
            return await revoke_provisioning_token(uow, tenant_id=tenant.id, token_id=token_id)

    result: TokenListing = env.run(work)
    return result


def listing(env: Env, tenant: TenantInfo) -> list[TokenListing]:
    async def work() -> list[TokenListing]:
        async with env.uow() as uow:
            return await list_provisioning_tokens(uow, tenant_id=tenant.id)

    result: list[TokenListing] = env.run(work)
    return result


def scim_status(client: TestClient, tenant: TenantInfo, token: str) -> int:
    response = client.get(f"/tenants/{tenant.slug}/scim/v2/Users", headers={"authorization": f"Bearer {token}"})
    status: int = response.status_code
    return status


def wait_for_status(client: TestClient, tenant: TenantInfo, token: str, wanted: int, within: float) -> int:
    deadline = time.monotonic() + within
    while (status := scim_status(client, tenant, token)) != wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    return status


# --- create / list / revoke --------------------------------------------------------------------------
def test_create_token_shown_once_stored_as_keyed_hash(env: Env) -> None:
    tenant = env.tenant()
    token_id, token = create(env, tenant)
    assert token.startswith(TOKEN_PREFIX) and len(token) >= 40

    async def stored() -> Any:
        async with env.ctx.sessionmaker() as session:
            return await session.get(ProvisioningToken, token_id)

    row = env.run(stored)
    assert row.token_hash == env.ctx.secret_hasher.hash(token) and token not in row.token_hash
    assert (row.name, row.revoked_at) == ("Workday", None)
    assert scim_status(env.client, tenant, token) == 200
    assert create(env, tenant)[1] != token  # every token is new


@pytest.mark.parametrize("name", ["", "   ", "x" * 256, "line\nbreak"])
def test_create_token_bad_name_invalid(env: Env, name: str) -> None:
    tenant = env.tenant()
    with pytest.raises(Invalid):
        create(env, tenant, name)
    assert listing(env, tenant) == []


def test_list_tokens_newest_first_without_secrets_only_this_tenant(env: Env) -> None:
    tenant, other = env.tenant(), env.tenant()
    first_id, _ = create(env, tenant, "first")
    second_id, _ = create(env, tenant, "second")
    create(env, other, "elsewhere")
    listed = listing(env, tenant)
    assert {t.id for t in listed} == {first_id, second_id}
    assert all(isinstance(t, TokenListing) for t in listed)
    assert set(TokenListing.__dataclass_fields__) == {"id", "name", "created_at", "revoked_at"}
    created = [t.created_at for t in listed]
    assert created == sorted(created, reverse=True)


def test_revoke_token_refused_idempotent_and_audited_once(env: Env) -> None:
    tenant = env.tenant()
    token_id, token = create(env, tenant)
    other_id, other = create(env, tenant, "other")
    first = revoke(env, tenant, token_id)
    assert first.id == token_id and first.revoked_at is not None
    assert scim_status(env.client, tenant, token) == 401
    assert scim_status(env.client, tenant, other) == 200
    again = revoke(env, tenant, token_id)
    assert again.revoked_at == first.revoked_at
    assert {t.id: t.revoked_at is not None for t in listing(env, tenant)} == {token_id: True, other_id: False}

    async def recorded() -> tuple[list[str], list[tuple[str, str, dict[str, Any]]]]:
        async with env.ctx.sessionmaker() as session:
            kinds = await session.scalars(select(Revocation.kind).where(Revocation.value == str(token_id)))
            audited = await session.execute(
                select(AuditEvent.action, AuditEvent.target_type, AuditEvent.details).where(
                    AuditEvent.target_id == str(token_id)
                )
            )
            return list(kinds.all()), [tuple(r) for r in audited.all()]

    kinds, audited = env.run(recorded)
    assert kinds == ["credential"]  # once, though revoked twice
    assert sorted(audited) == [
        ("provisioning_token.create", "ProvisioningToken", {"name": "Workday"}),
        ("provisioning_token.revoke", "ProvisioningToken", {"name": "Workday"}),
    ]


def test_revoke_unknown_or_other_tenants_token_not_found(env: Env) -> None:
    tenant, other = env.tenant(), env.tenant()
    foreign_id, foreign = create(env, other)
    for token_id in (uuid.uuid4(), foreign_id):
        with pytest.raises(NotFound):
            revoke(env, tenant, token_id)
    assert scim_status(env.client, other, foreign) == 200


def test_token_of_another_tenant_refused(env: Env) -> None:
    tenant, other = env.tenant(), env.tenant()
    _id, token = create(env, other)
    assert scim_status(env.client, tenant, token) == 401


# --- in process: at once, whatever the cache holds ------------------------------------------------------
def test_revoked_token_refused_at_once_in_process_with_warm_cache(env: Env) -> None:
    tenant = env.tenant()
    token_id, token = create(env, tenant)
    assert scim_status(env.client, tenant, token) == 200  # the app's token cache now holds it (5 s)
    revoke(env, tenant, token_id)
    assert scim_status(env.client, tenant, token) == 401  # no wait at all


def test_cache_refuses_revoked_token_at_once_and_after_reload(env: Env) -> None:
    tenant = env.tenant()
    token_id, token = create(env, tenant)

    async def work() -> tuple[bool, bool, bool, bool]:
        state = RevocationState(env.ctx.sessionmaker, poll_seconds=3600)
        # An hour-long cache: only the revocation state can make it refuse in time.
        cache = ProvisioningTokenCache(env.ctx.sessionmaker, env.ctx.secret_hasher, state, ttl=3600)
        before = await cache.find(tenant_id=tenant.id, tenant_key=tenant.key, token=token)
        async with uow_publishing_to(env, state) as uow:
            await revoke_provisioning_token(uow, tenant_id=tenant.id, token_id=token_id)
        after = await cache.find(tenant_id=tenant.id, tenant_key=tenant.key, token=token)
        # A process that starts later (or after the revocation entry expired) reads revoked_at itself.
        fresh = ProvisioningTokenCache(
            env.ctx.sessionmaker, env.ctx.secret_hasher, RevocationState(env.ctx.sessionmaker), ttl=3600
        )
        later = await fresh.find(tenant_id=tenant.id, tenant_key=tenant.key, token=token)
        wrong_tenant = await fresh.find(tenant_id=uuid.uuid4(), tenant_key="x", token=token)
        return before is not None, after is None, later is None, wrong_tenant is None

    assert env.run(work) == (True, True, True, True)


@pytest.mark.parametrize("token", ["", "idhub_pt_", "idhub_pt_" + "a" * 200, "Bearer idhub_pt_x", "not-ours"])
def test_cache_malformed_tokens_refused(env: Env, token: str) -> None:
    tenant = env.tenant()

    async def work() -> bool:
        found = await env.ctx.provisioning_tokens.find(tenant_id=tenant.id, tenant_key=tenant.key, token=token)
        return found is None

    assert env.run(work)


# --- across processes -----------------------------------------------------------------------------------
@contextmanager
def second_instance(env: Env, tmp_path: Any, **overrides: Any) -> Iterator[Env]:
    """Another app instance on the same database (its own caches and revocation state)."""
    settings = make_settings(env.ctx.settings.database_url, tmp_path, **overrides)
    app = create_app(settings)
    with TestClient(app, base_url="http://testserver") as client:
        yield Env(client=client, ctx=app.state.ctx, backend=env.backend)


def test_revoked_token_refused_at_once_by_other_instance_via_redis(env: Env, tmp_path: Any) -> None:
    url = redis_url_or_skip()
    # Both instances poll once a minute and cache tokens for seconds: only the broadcast can be in time.
    with (
        second_instance(env, tmp_path / "a", redis_url=url, revocation_poll_seconds=60) as revoker,
        second_instance(env, tmp_path / "b", redis_url=url, revocation_poll_seconds=60) as server,
    ):
        tenant = env.tenant()
        token_id, token = create(revoker, tenant)
        assert scim_status(server.client, tenant, token) == 200  # warm the serving instance's cache
        time.sleep(0.2)  # let the subscriptions settle
        revoke(revoker, tenant, token_id)
        assert scim_status(revoker.client, tenant, token) == 401
        assert wait_for_status(server.client, tenant, token, 401, within=1.0) == 401


def test_revoked_token_refused_by_other_instance_without_redis_within_poll(env: Env, tmp_path: Any) -> None:
    with second_instance(env, tmp_path, revocation_poll_seconds=0.1) as server:
        tenant = env.tenant()
        token_id, token = create(env, tenant)
        assert scim_status(server.client, tenant, token) == 200
        revoke(env, tenant, token_id)
        # Within the poll interval, well before the serving instance's cache entry (5 s) expires.
        assert wait_for_status(server.client, tenant, token, 401, within=2.0) == 401


def test_other_instance_started_after_revocation_refuses(env: Env, tmp_path: Any) -> None:
    tenant = env.tenant()
    token_id, token = create(env, tenant)
    revoke(env, tenant, token_id)
    with second_instance(env, tmp_path, revocation_poll_seconds=60) as server:
        assert scim_status(server.client, tenant, token) == 401
