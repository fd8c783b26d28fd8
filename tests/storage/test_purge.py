"""The purge: expired single-use, revocation and interaction rows go; live ones (and replay evidence) stay."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from idhub.storage.base import utcnow
from idhub.storage.models import AuthorizationCode, Client, Grant, Interaction, RefreshToken, Revocation, UsedValue
from idhub.storage.purge import REPLAY_EVIDENCE, Purger
from idhub.tenants.service import TenantInfo
from tests.conftest import Env


@dataclass
class Rows:
    """Keys of the rows one test stored, by whether the purge must delete them."""

    gone: dict[str, set[Any]] = field(default_factory=dict)
    kept: dict[str, set[Any]] = field(default_factory=dict)

    def add(self, table: str, key: Any, *, gone: bool) -> None:
        (self.gone if gone else self.kept).setdefault(table, set()).add(key)


def _purger(env: Env, **kw: Any) -> Purger:
    return Purger(env.ctx.uow_factory, interval=0, **kw)


def _seed(env: Env) -> tuple[TenantInfo, uuid.UUID, uuid.UUID, str]:
    tenant = env.tenant()
    client_id, _secret = env.oauth_client(tenant, redirect_uris=["https://rp.example/cb"])
    user_id = uuid.UUID(env.user(tenant, "purged", password=None))

    async def work() -> tuple[uuid.UUID, str]:
        async with env.uow() as uow:
            client = await uow.session.scalar(select(Client.id).where(Client.client_id == client_id))
            assert client is not None
            grant = Grant(id=secrets.token_hex(8), tenant_id=tenant.id, client_id=client, user_id=user_id)
            uow.session.add(grant)
        return client, grant.id

    client, grant_id = env.run(work)
    return tenant, client, user_id, grant_id


def _store(env: Env) -> tuple[TenantInfo, Rows]:
    """Store expired and live rows of every purged table in a fresh tenant."""
    tenant, client, user_id, grant_id = _seed(env)
    rows = Rows()
    now = utcnow()
    past, future = now - timedelta(seconds=5), now + timedelta(hours=1)
    beyond_evidence = now - REPLAY_EVIDENCE - timedelta(minutes=5)
    within_evidence = now - REPLAY_EVIDENCE + timedelta(minutes=5)

    async def work() -> None:
        async with env.uow() as uow:
            session = uow.session
            revocations = [
                Revocation(tenant_id=tenant.id, kind="jti", value=f"jti-{i}", expires_at=expires_at)
                for i, expires_at in enumerate((past, future))
            ]
            session.add_all(revocations)
            for name, expires_at in (("old", past), ("new", future)):
                session.add(UsedValue(tenant_id=tenant.id, namespace="ns", value=name, expires_at=expires_at))
                rows.add("used_value", (tenant.id, "ns", name), gone=expires_at < now)
                interaction_id = secrets.token_hex(8)
                session.add(
                    Interaction(
                        id=interaction_id,
                        tenant_id=tenant.id,
                        client_id=client,
                        params={},
                        browser_hash="b",
                        expires_at=expires_at,
                    )
                )
                rows.add("interaction", interaction_id, gone=expires_at < now)
            # Codes and refresh tokens stay a day past expiry, as evidence that recognises a replay.
            for expires_at in (beyond_evidence, within_evidence, past, future):
                code_hash = secrets.token_hex(16)
                session.add(
                    AuthorizationCode(
                        code_hash=code_hash,
                        tenant_id=tenant.id,
                        client_id=client,
                        user_id=user_id,
                        grant_id=grant_id,
                        redirect_uri="https://rp.example/cb",
                        scope="openid",
                        code_challenge="c" * 43,
                        code_challenge_method="S256",
                        auth_time=now,
                        expires_at=expires_at,
                        consumed_at=now,
                    )
                )
                rows.add("authorization_code", code_hash, gone=expires_at is beyond_evidence)
                refresh = RefreshToken(
                    token_hash=secrets.token_hex(16),
                    tenant_id=tenant.id,
                    client_id=client,
                    grant_id=grant_id,
                    user_id=user_id,
                    scope="openid",
                    expires_at=expires_at,
                )
                session.add(refresh)
                await session.flush()
                rows.add("refresh_token", refresh.id, gone=expires_at is beyond_evidence)
            await session.flush()
            for revocation in revocations:
                rows.add("revocation", revocation.id, gone=revocation.expires_at < now)

    env.run(work)
    return tenant, rows


async def _present(env: Env, tenant: TenantInfo) -> dict[str, set[Any]]:
    """Return the keys of the tenant's rows in every purged table."""
    async with env.ctx.sessionmaker() as session:

        async def keys(statement: Any) -> set[Any]:
            return {tuple(row) if len(row) > 1 else row[0] for row in (await session.execute(statement)).all()}

        return {
            "revocation": await keys(select(Revocation.id).where(Revocation.tenant_id == tenant.id)),
            "used_value": await keys(
                select(UsedValue.tenant_id, UsedValue.namespace, UsedValue.value).where(
                    UsedValue.tenant_id == tenant.id
                )
            ),
            "authorization_code": await keys(
                select(AuthorizationCode.code_hash).where(AuthorizationCode.tenant_id == tenant.id)
            ),
            "refresh_token": await keys(select(RefreshToken.id).where(RefreshToken.tenant_id == tenant.id)),
            "interaction": await keys(select(Interaction.id).where(Interaction.tenant_id == tenant.id)),
        }


def test_purge_deletes_expired_rows_and_keeps_live_ones(env: Env) -> None:
    tenant, rows = _store(env)
    before = env.run(_present, env, tenant)
    for table, keys in rows.gone.items():
        assert keys <= before[table], table
    counts = env.run(_purger(env).run_once)
    assert set(counts) == {"revocation", "used_value", "authorization_code", "refresh_token", "interaction"}
    after = env.run(_present, env, tenant)
    for table in counts:
        assert counts[table] >= len(rows.gone[table]), table  # other tests' expired rows may go too
        assert after[table] == rows.kept[table], table
    assert {table: len(keys) for table, keys in rows.kept.items()} == {
        "revocation": 1,
        "used_value": 1,
        "authorization_code": 3,  # live, just expired, and expired less than a day ago
        "refresh_token": 3,
        "interaction": 1,
    }
    # Idempotent: a second run finds nothing more of this tenant's.
    env.run(_purger(env).run_once)
    assert env.run(_present, env, tenant) == after


def test_purge_deletes_in_bounded_batches(env: Env) -> None:
    tenant = env.tenant()
    env.run(_purger(env).run_once)  # start from a table without expired rows
    expired = utcnow() - timedelta(seconds=5)

    async def store() -> None:
        async with env.uow() as uow:
            uow.session.add_all(
                UsedValue(tenant_id=tenant.id, namespace="batch", value=str(i), expires_at=expired) for i in range(5)
            )

    async def left() -> int:
        async with env.ctx.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).where(UsedValue.tenant_id == tenant.id)) or 0)

    env.run(store)
    assert env.run(_purger(env, batch=2, rounds=1).run_once)["used_value"] == 2  # one bounded statement
    assert env.run(left) == 3
    assert env.run(_purger(env, batch=2, rounds=20).run_once)["used_value"] == 3  # 2 + 1, then it stops
    assert env.run(left) == 0


def test_purge_start_and_stop(env: Env) -> None:
    async def work() -> None:
        idle = _purger(env)
        idle.start()  # interval 0: never runs in the background
        assert idle._task is None
        purger = Purger(env.ctx.uow_factory, interval=3600)
        purger.start()
        assert purger._task is not None and not purger._task.done()
        await purger.stop()
        assert purger._task is None
        await purger.stop()  # stopping twice is harmless

    env.run(work)
