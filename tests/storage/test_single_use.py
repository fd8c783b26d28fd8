"""Single-use consumption: ``consume()`` and ``claim()`` give exactly one winner, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Table, bindparam, select

from idhub.storage.base import utcnow
from idhub.storage.models import AuthorizationCode, Client, Grant, Interaction, RefreshToken
from idhub.storage.single_use import claim, consume, consuming
from idhub.storage.tables import AUTHORIZATION_CODES, INTERACTIONS, REFRESH_TOKENS
from idhub.tenants.service import TenantInfo
from tests.conftest import Env

RACERS = 8


@dataclass(frozen=True)
class Seed:
    """A tenant with a client, a user and a grant to hang single-use rows on."""

    tenant: TenantInfo
    client_id: uuid.UUID
    user_id: uuid.UUID
    grant_id: str


def _seed(env: Env) -> Seed:
    tenant = env.tenant()
    client_id, _secret = env.oauth_client(tenant, redirect_uris=["https://rp.example/cb"])
    user_id = uuid.UUID(env.user(tenant, "racer", password=None))

    async def work() -> Seed:
        async with env.uow() as uow:
            client = await uow.session.scalar(select(Client.id).where(Client.client_id == client_id))
            assert client is not None
            grant = Grant(id=secrets.token_hex(8), tenant_id=tenant.id, client_id=client, user_id=user_id)
            uow.session.add(grant)
        return Seed(tenant, client, user_id, grant.id)

    seed: Seed = env.run(work)
    return seed


def _code(env: Env, seed: Seed, *, expires_in: float = 60) -> str:
    """Store an authorization code expiring in ``expires_in`` seconds; return its hash."""
    code_hash = secrets.token_hex(16)

    async def work() -> None:
        now = utcnow()
        async with env.uow() as uow:
            uow.session.add(
                AuthorizationCode(
                    code_hash=code_hash,
                    tenant_id=seed.tenant.id,
                    client_id=seed.client_id,
                    user_id=seed.user_id,
                    grant_id=seed.grant_id,
                    redirect_uri="https://rp.example/cb",
                    scope="openid",
                    code_challenge="c" * 43,
                    code_challenge_method="S256",
                    auth_time=now,
                    expires_at=now + timedelta(seconds=expires_in),
                )
            )

    env.run(work)
    return code_hash


_CODE = AUTHORIZATION_CODES.c
_CONSUME_CODE = consuming(
    AUTHORIZATION_CODES,
    used="consumed_at",
    where=(
        _CODE.code_hash == bindparam("p_hash"),
        _CODE.tenant_id == bindparam("p_tenant_id"),
        _CODE.expires_at > bindparam("p_now"),
    ),
    returning=(_CODE.grant_id, _CODE.scope),
)


async def _consume_code(env: Env, seed: Seed, code_hash: str, barrier: asyncio.Barrier | None = None) -> Any:
    """Consume the code in a unit of work of its own, as the token endpoint does; return (row, now)."""
    async with env.uow() as uow:
        await uow.session.connection()  # hold a connection before the race starts
        if barrier is not None:
            await barrier.wait()
        now = utcnow()
        parameters = {"p_hash": code_hash, "p_tenant_id": seed.tenant.id, "p_now": now}
        row = await consume(uow.session, _CONSUME_CODE, parameters)
    return row, now


async def _consumed_at(env: Env, code_hash: str) -> datetime | None:
    async with env.ctx.sessionmaker() as session:
        return await session.scalar(
            select(AuthorizationCode.consumed_at).where(AuthorizationCode.code_hash == code_hash)
        )


# --- consume -----------------------------------------------------------------------------------------


def test_consume_concurrent_callers_get_exactly_one_winner(env: Env) -> None:
    seed = _seed(env)
    code_hash = _code(env, seed)

    async def race() -> list[tuple[Row[Any] | None, datetime]]:
        barrier = asyncio.Barrier(RACERS)
        return list(await asyncio.gather(*(_consume_code(env, seed, code_hash, barrier) for _ in range(RACERS))))

    results = env.run(race)
    winners = [(row, now) for row, now in results if row is not None]
    assert len(winners) == 1, results
    (row, won_at) = winners[0]
    assert (row.grant_id, row.scope) == (seed.grant_id, "openid")
    assert env.run(_consumed_at, env, code_hash) == won_at  # the winner's mark, nobody else's


def test_consume_second_call_loses(env: Env) -> None:
    seed = _seed(env)
    code_hash = _code(env, seed)
    first, first_at = env.run(_consume_code, env, seed, code_hash)
    second, _ = env.run(_consume_code, env, seed, code_hash)
    assert first is not None and first.grant_id == seed.grant_id
    assert second is None
    assert env.run(_consumed_at, env, code_hash) == first_at


def test_consume_expired_row_loses_and_stays_unused(env: Env) -> None:
    seed = _seed(env)
    code_hash = _code(env, seed, expires_in=-1)
    row, _ = env.run(_consume_code, env, seed, code_hash)
    assert row is None
    assert env.run(_consumed_at, env, code_hash) is None


def test_consume_unknown_or_other_tenants_row_loses(env: Env) -> None:
    seed, other = _seed(env), _seed(env)
    code_hash = _code(env, seed)
    assert env.run(_consume_code, env, seed, "no-such-code")[0] is None
    assert env.run(_consume_code, env, other, code_hash)[0] is None  # the tenant is part of the condition
    assert env.run(_consume_code, env, seed, code_hash)[0] is not None


def test_consume_rolled_back_win_leaves_the_row_for_the_next_caller(env: Env) -> None:
    seed = _seed(env)
    code_hash = _code(env, seed)

    async def win_then_fail() -> None:
        async with env.uow() as uow:
            parameters = {"p_hash": code_hash, "p_tenant_id": seed.tenant.id, "p_now": utcnow()}
            row = await consume(uow.session, _CONSUME_CODE, parameters)
            assert row is not None
            raise RuntimeError("the request failed after consuming")

    try:
        env.run(win_then_fail)
    except RuntimeError:
        pass
    assert env.run(_consumed_at, env, code_hash) is None
    assert env.run(_consume_code, env, seed, code_hash)[0] is not None


def test_consume_works_on_every_single_use_table(env: Env) -> None:
    seed = _seed(env)
    interaction_id, token_hash = secrets.token_hex(8), secrets.token_hex(16)

    async def setup() -> None:
        now = utcnow()
        async with env.uow() as uow:
            uow.session.add(
                Interaction(
                    id=interaction_id,
                    tenant_id=seed.tenant.id,
                    client_id=seed.client_id,
                    params={},
                    browser_hash="b",
                    expires_at=now + timedelta(minutes=5),
                )
            )
            uow.session.add(
                RefreshToken(
                    token_hash=token_hash,
                    tenant_id=seed.tenant.id,
                    client_id=seed.client_id,
                    grant_id=seed.grant_id,
                    user_id=seed.user_id,
                    scope="openid",
                    expires_at=now + timedelta(days=1),
                )
            )

    async def twice(table: Table, used: str, key: str, value: str) -> list[bool]:
        statement = consuming(table, used=used, where=(table.c[key] == bindparam("p_key"),), returning=(table.c[key],))
        won = []
        for _ in range(2):
            async with env.uow() as uow:
                row = await consume(uow.session, statement, {"p_key": value, "p_now": utcnow()})
                won.append(row is not None)
        return won

    env.run(setup)
    assert env.run(twice, INTERACTIONS, "completed_at", "id", interaction_id) == [True, False]
    assert env.run(twice, REFRESH_TOKENS, "rotated_at", "token_hash", token_hash) == [True, False]


# --- claim -------------------------------------------------------------------------------------------


async def _claim(
    env: Env, tenant_id: uuid.UUID, namespace: str, value: str, barrier: asyncio.Barrier | None = None
) -> bool:
    async with env.uow() as uow:
        await uow.session.connection()
        if barrier is not None:
            await barrier.wait()
        return await claim(
            uow.session,
            tenant_id=tenant_id,
            namespace=namespace,
            value=value,
            expires_at=utcnow() + timedelta(minutes=5),
        )


def test_claim_first_wins_duplicate_loses(env: Env) -> None:
    tenant = env.tenant()
    jti = secrets.token_hex(8)
    assert env.run(_claim, env, tenant.id, "client_assertion:c1", jti) is True
    assert env.run(_claim, env, tenant.id, "client_assertion:c1", jti) is False


def test_claim_duplicate_in_the_same_unit_of_work_loses(env: Env) -> None:
    tenant = env.tenant()

    async def work() -> tuple[bool, bool]:
        async with env.uow() as uow:
            expires_at = utcnow() + timedelta(minutes=5)
            kw: dict[str, Any] = {"tenant_id": tenant.id, "namespace": "ns", "value": "v", "expires_at": expires_at}
            return await claim(uow.session, **kw), await claim(uow.session, **kw)

    assert env.run(work) == (True, False)


def test_claim_namespaces_and_tenants_are_independent(env: Env) -> None:
    tenant, other = env.tenant(), env.tenant()
    jti = secrets.token_hex(8)
    assert env.run(_claim, env, tenant.id, "client_assertion:c1", jti) is True
    assert env.run(_claim, env, tenant.id, "client_assertion:c2", jti) is True
    assert env.run(_claim, env, tenant.id, "saml_assertion", jti) is True
    assert env.run(_claim, env, other.id, "client_assertion:c1", jti) is True
    assert env.run(_claim, env, tenant.id, "client_assertion:c1", jti + "x") is True
    for tenant_id, namespace in ((tenant.id, "client_assertion:c1"), (other.id, "client_assertion:c1")):
        assert env.run(_claim, env, tenant_id, namespace, jti) is False


def test_claim_concurrent_callers_get_exactly_one_winner(env: Env) -> None:
    tenant = env.tenant()
    jti = secrets.token_hex(8)

    async def race() -> list[bool]:
        barrier = asyncio.Barrier(RACERS)
        return list(await asyncio.gather(*(_claim(env, tenant.id, "ns", jti, barrier) for _ in range(RACERS))))

    assert sorted(env.run(race)) == [False] * (RACERS - 1) + [True]


def test_claim_rolled_back_is_not_used(env: Env) -> None:
    tenant = env.tenant()

    async def claim_then_fail() -> None:
        async with env.uow() as uow:
            expires_at = utcnow() + timedelta(minutes=5)
            assert await claim(uow.session, tenant_id=tenant.id, namespace="ns", value="v", expires_at=expires_at)
            raise RuntimeError("failed after claiming")

    try:
        env.run(claim_then_fail)
    except RuntimeError:
        pass
    assert env.run(_claim, env, tenant.id, "ns", "v") is True
