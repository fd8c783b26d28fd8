"""The tamper-evident audit chain: every entry numbered and chained per tenant; tampering by SQL is found.

Each test makes a tenant with a few audited changes through the directory (the same path every surface
takes), then changes, deletes, reorders or cuts the log with plain SQL as someone with database access
but without the master key would, and checks that :func:`idhub.audit.chain.verify` names the first
broken entry. Parallel writers (one tenant, many transactions) keep the chain whole on both backends.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select, update

from idhub.audit.chain import GENESIS, AuditChain, Verdict, verify
from idhub.cli import main
from idhub.directory.profile import UserProfile
from idhub.storage.tables import AUDIT_CHAIN_HEADS, AUDIT_EVENTS
from idhub.tenants.service import TenantInfo
from tests.conftest import Env


def _tenant_with_entries(env: Env, users: int = 4) -> TenantInfo:
    tenant = env.tenant()
    for index in range(users):
        env.user(tenant, f"user{index}", password=None)
    return tenant


def _verify(env: Env, tenant: TenantInfo) -> Verdict:
    async def work() -> Verdict:
        async with env.ctx.sessionmaker() as session:
            return await verify(session, env.ctx.audit.chain, tenant.id, batch=2)  # small pages: paging tested

    return env.run(work)


def _sql(env: Env, statement: Any) -> None:
    async def work() -> None:
        async with env.ctx.sessionmaker() as session, session.begin():
            await session.execute(statement)

    env.run(work)


def _entries(env: Env, tenant: TenantInfo) -> list[Any]:
    async def work() -> list[Any]:
        async with env.ctx.sessionmaker() as session:
            query = select(AUDIT_EVENTS).where(AUDIT_EVENTS.c.tenant_id == tenant.id).order_by(AUDIT_EVENTS.c.seq)
            return list((await session.execute(query)).all())

    return env.run(work)


def _at(tenant: TenantInfo, seq: int) -> Any:
    return (AUDIT_EVENTS.c.tenant_id == tenant.id) & (AUDIT_EVENTS.c.seq == seq)


def test_entries_are_numbered_and_chained_per_tenant(env: Env) -> None:
    first, second = _tenant_with_entries(env, 3), _tenant_with_entries(env, 2)
    for tenant in (first, second):
        entries = _entries(env, tenant)
        assert [entry.seq for entry in entries] == list(range(1, len(entries) + 1))
        assert entries[0].prev_hash == GENESIS
        assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(entries))
        verdict = _verify(env, tenant)
        assert verdict.intact and verdict.entries == len(entries) and verdict.unchained == 0


def test_a_changed_entry_is_found(env: Env) -> None:
    tenant = _tenant_with_entries(env)
    entries = _entries(env, tenant)
    _sql(env, update(AUDIT_EVENTS).where(_at(tenant, 3)).values(actor_id="someone-else"))
    verdict = _verify(env, tenant)
    assert not verdict.intact
    assert (verdict.broken_seq, verdict.broken_at) == (3, entries[2].id)
    assert "does not match its hash" in (verdict.reason or "")


def test_a_changed_detail_or_time_is_found(env: Env) -> None:
    tenant = _tenant_with_entries(env)
    _sql(env, update(AUDIT_EVENTS).where(_at(tenant, 2)).values(details={"forged": True}))
    assert _verify(env, tenant).broken_seq == 2


def test_a_rehashed_entry_is_found_without_the_key(env: Env) -> None:
    # Someone recomputes the MAC with a key of their own choosing: without the master key it cannot match.
    tenant = _tenant_with_entries(env)
    entry = _entries(env, tenant)[1]
    forged = dict(entry._mapping) | {"actor_id": "someone-else"}
    forged_hash = AuditChain(b"\x00" * 32).entry_hash(forged)
    _sql(env, update(AUDIT_EVENTS).where(_at(tenant, 2)).values(actor_id="someone-else", hash=forged_hash))
    assert _verify(env, tenant).broken_seq == 2


def test_a_deleted_entry_is_found(env: Env) -> None:
    tenant = _tenant_with_entries(env)
    entries = _entries(env, tenant)
    _sql(env, delete(AUDIT_EVENTS).where(_at(tenant, 2)))
    verdict = _verify(env, tenant)
    assert (verdict.broken_seq, verdict.broken_at) == (3, entries[2].id)
    assert verdict.reason == "entry 2 is missing"


def test_reordered_entries_are_found(env: Env) -> None:
    tenant = _tenant_with_entries(env)
    entries = _entries(env, tenant)
    # Swap the numbers of entries 2 and 3 (through a free number: seq is unique per tenant).
    _sql(env, update(AUDIT_EVENTS).where(_at(tenant, 2)).values(seq=1000))
    _sql(env, update(AUDIT_EVENTS).where(_at(tenant, 3)).values(seq=2))
    _sql(env, update(AUDIT_EVENTS).where(_at(tenant, 1000)).values(seq=3))
    verdict = _verify(env, tenant)
    assert (verdict.broken_seq, verdict.broken_at) == (2, entries[2].id)


def test_entries_cut_from_the_end_are_found(env: Env) -> None:
    tenant = _tenant_with_entries(env)
    last = len(_entries(env, tenant))
    _sql(env, delete(AUDIT_EVENTS).where(_at(tenant, last)))
    verdict = _verify(env, tenant)
    assert not verdict.intact and verdict.broken_at is None
    assert "removed from the end" in (verdict.reason or "")
    # Setting the head back by hand to the new end does not hide it: the head carries a MAC.
    previous = _entries(env, tenant)[-1]
    _sql(
        env,
        update(AUDIT_CHAIN_HEADS)
        .where(AUDIT_CHAIN_HEADS.c.tenant_id == tenant.id)
        .values(seq=previous.seq, hash=previous.hash),
    )
    assert "head was changed" in (_verify(env, tenant).reason or "")


def test_an_inserted_entry_is_found(env: Env) -> None:
    tenant = _tenant_with_entries(env)
    entries = _entries(env, tenant)
    extra = dict(entries[-1]._mapping) | {"id": uuid.uuid4(), "seq": entries[-1].seq + 1, "prev_hash": entries[-1].hash}
    _sql(env, AUDIT_EVENTS.insert().values(extra))
    verdict = _verify(env, tenant)
    assert verdict.broken_seq == entries[-1].seq + 1


def test_parallel_appends_keep_one_chain(env: Env) -> None:
    tenant = env.tenant()

    async def create(index: int) -> None:
        async with env.uow() as uow:
            await env.ctx.directory(uow).users.create(tenant.id, UserProfile(user_name=f"racer{index}"))

    async def race() -> None:
        await asyncio.gather(*(create(index) for index in range(12)))

    env.run(race)
    verdict = _verify(env, tenant)
    assert verdict.intact and verdict.entries == 13  # the tenant's creation and twelve users


def test_background_writer_entries_are_chained(env: Env) -> None:
    # Entries without a transaction of their own (refusals, stateless grants) go through the batched writer.
    tenant = _tenant_with_entries(env, 1)
    row = {
        "id": uuid.uuid4(),
        "tenant_id": tenant.id,
        "occurred_at": _entries(env, tenant)[0].occurred_at,
        "actor_type": "client",
        "actor_id": "c1",
        "action": "token.issue",
        "target_type": "Client",
        "target_id": "c1",
        "outcome": "failure",
        "surface": "oidc",
        "source_address": "127.0.0.1",
        "request_id": "r1",
        "details": {"count": 2},
    }

    async def write() -> None:
        await env.ctx.audit.writer.submit([dict(row), dict(row, id=uuid.uuid4())])
        await env.ctx.audit.writer.flush()

    env.run(write)
    verdict = _verify(env, tenant)
    assert verdict.intact and verdict.entries == 4


@pytest.mark.parametrize("tampered", [False, True])
def test_cli_audit_verify_and_export(tmp_path: Any, tampered: bool) -> None:
    import base64
    import os
    import sqlite3

    data = tmp_path / "data"
    environ = {
        "IDHUB_DATA_DIR": str(data),
        "IDHUB_DATABASE_URL": f"sqlite+aiosqlite:///{data}/idhub.db",
        "IDHUB_MASTER_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
    runner = CliRunner()
    for args in (["init", "--tenant", "acme"], ["user", "create", "--tenant", "acme", "--username", "alice"]):
        assert runner.invoke(main, args, env=environ).exit_code == 0
    if tampered:
        with sqlite3.connect(data / "idhub.db") as database:
            database.execute("UPDATE audit_event SET actor_id = 'mallory' WHERE seq = 2")
    result = runner.invoke(main, ["audit", "verify", "--json"], env=environ)
    report = json.loads(result.output)
    if tampered:
        assert result.exit_code == 1 and not report["intact"]
        assert report["tenants"][0]["broken_seq"] == 2
        text = runner.invoke(main, ["audit", "verify", "--tenant", "acme"], env=environ)
        assert text.exit_code == 1 and "acme: BROKEN at entry 2" in text.output
    else:
        # init: tenant.create, client.create, policy.create (the admin client's machine policy); then user.create
        assert result.exit_code == 0 and report["intact"] and report["tenants"][0]["entries"] == 4
        exported = runner.invoke(main, ["audit", "export", "--tenant", "acme"], env=environ)
        lines = [json.loads(line) for line in exported.output.splitlines()]
        assert [line["seq"] for line in lines] == [1, 2, 3, 4]
        assert [line["action"] for line in lines] == ["tenant.create", "client.create", "policy.create", "user.create"]
        assert all(len(line["hash"]) == 64 for line in lines)


def _entry(tenant: TenantInfo, occurred_at: Any, actor: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant.id,
        "occurred_at": occurred_at,
        "actor_type": "cli",
        "actor_id": actor,
        "action": "test.append",
        "target_type": "Tenant",
        "target_id": str(tenant.id),
        "outcome": "success",
        "surface": "cli",
        "source_address": None,
        "request_id": None,
        "details": {},
    }


def test_processes_that_remember_different_ends_keep_one_chain(env: Env) -> None:
    # Each process remembers where it last left a tenant's chain; another process's appends (here: a
    # second AuditChain with the same key), and a rolled-back append, make that memory stale.
    tenant = _tenant_with_entries(env, 1)
    first = env.ctx.audit.chain
    second = AuditChain(first._key)
    at = _entries(env, tenant)[0].occurred_at

    async def append(chain: AuditChain, actor: str, *, roll_back: bool = False) -> None:
        async with env.ctx.sessionmaker() as session:
            transaction = await session.begin()
            await chain.append(session, [_entry(tenant, at, actor)])
            await (transaction.rollback() if roll_back else transaction.commit())

    async def interleave() -> None:
        for index in range(3):
            await append(first, f"first{index}")
            await append(first, f"first{index}b")
            await append(second, f"second{index}")
        await append(first, "rolled-back", roll_back=True)
        await append(first, "after-rollback")
        await append(second, "second-last")

    env.run(interleave)
    verdict = _verify(env, tenant)
    assert verdict.intact and verdict.entries == 2 + 9 + 2
    actors = [entry.actor_id for entry in _entries(env, tenant)]
    assert "rolled-back" not in actors and actors[-2:] == ["after-rollback", "second-last"]


_WRITER = """
import asyncio, json, sys, uuid
from idhub.context import build_context
from idhub.directory.profile import UserProfile
from idhub.events import Actor
from idhub.settings import Settings

settings, tenant_id, prefix = Settings(**json.loads(sys.argv[1])), uuid.UUID(sys.argv[2]), sys.argv[3]

async def main():
    ctx = build_context(settings)
    async def create(index):
        async with ctx.uow(actor=Actor("test", prefix), surface="test") as uow:
            await ctx.directory(uow).users.create(tenant_id, UserProfile(user_name=f"{prefix}{index}"))
    try:
        for start in range(0, 15, 3):  # three transactions at a time, five times
            await asyncio.gather(*(create(index) for index in range(start, start + 3)))
    finally:
        await ctx.close()

asyncio.run(main())
"""


def test_two_processes_append_to_one_chain(env: Env, tmp_path: Any) -> None:
    # Two processes, each with its own memory of where the chain ends, write to one tenant at once.
    import subprocess
    import sys

    if env.backend != "postgresql":
        pytest.skip("two processes on one database: PostgreSQL (SQLite runs one writer at a time)")
    tenant = env.tenant()
    settings = env.ctx.settings
    values = json.dumps(
        {
            "environment": "test",
            "database_url": settings.database_url,
            "public_url": settings.public_url,
            "master_key": settings.master_key.get_secret_value() if settings.master_key else None,
            "data_dir": str(tmp_path),
            "auto_migrate": False,
        }
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, values, str(tenant.id), prefix])
        for prefix in ("first", "second")
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    verdict = _verify(env, tenant)
    assert verdict.intact and verdict.entries == 1 + 30
