"""``userName`` substring filters (``co``/``sw``/``ew``) and the bigram index that serves them on PostgreSQL.

The filter adds ``idhub_bigrams(username) @> ARRAY[<the needle's bigrams>]`` to the ``LIKE`` (migration
0003). That condition must never drop a match, so the SQL function and the needle's bigrams must agree
exactly, for every length and any characters; and the condition must be the index's own expression, or
PostgreSQL scans the table.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.scim.filter import parse_filter
from idhub.scim.query import _bigrams, user_filter
from idhub.storage.base import utcnow
from idhub.storage.engine import read_only
from idhub.storage.models import User
from tests.conftest import Env

NAMES = ["alice", "bob", "user99@acme.example", "user199", "9", "99", "a9", "zoë.müller", "x%y_z", "ab", "abab"]


def _users(env: Env) -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
    tenant_id = env.tenant().id
    ids = {name: uuid.uuid4() for name in NAMES}

    async def work() -> None:
        async with env.ctx.sessionmaker() as session:
            now = utcnow()
            session.add_all(
                User(id=uid, tenant_id=tenant_id, username=name, created_at=now, updated_at=now)
                for name, uid in ids.items()
            )
            await session.commit()

    env.run(work)
    return tenant_id, ids


def _matching(env: Env, tenant_id: uuid.UUID, ids: dict[str, uuid.UUID], filter_text: str) -> set[str]:
    names = {uid: name for name, uid in ids.items()}
    where = user_filter(parse_filter(filter_text), tenant_id=tenant_id)

    async def work() -> list[uuid.UUID]:
        async with env.ctx.sessionmaker() as session:
            stmt = select(User.id).where(User.tenant_id == tenant_id, User.deleted_at.is_(None), where)
            return list((await session.scalars(stmt)).all())

    return {names[uid] for uid in env.run(work)}


def test_substring_filters_find_every_username_that_holds_the_needle(env: Env) -> None:
    tenant_id, ids = _users(env)
    needles = ["9", "99", "999", "user99", "ab", "aba", "ë", "zoë", "üll", "%", "_", "x%y", ".", "e", "abab", "zz"]
    for needle in needles:
        for op, holds in (("co", str.__contains__), ("sw", str.startswith), ("ew", str.endswith)):
            want = {name for name in NAMES if holds(name, needle)}
            assert _matching(env, tenant_id, ids, f'userName {op} "{needle}"') == want, (op, needle)
    assert _matching(env, tenant_id, ids, 'not (userName co "99")') == {n for n in NAMES if "99" not in n}
    assert _matching(env, tenant_id, ids, 'userName co "9\\u00019"') == set()  # the index's separator


def test_needle_bigrams() -> None:
    assert _bigrams("") == [] and _bigrams("9") == []
    assert _bigrams("99") == ["99"]
    assert _bigrams("abab") == ["ab", "ba"]
    assert _bigrams("zoë") == ["oë", "zo"]


def _pg(env: Env) -> None:
    if env.backend != "postgresql":
        pytest.skip("the bigram index exists on PostgreSQL only")


@pytest.mark.parametrize("value", ["", "a", "ab", "abc", "abcd", "user99@acme.example", "zoë.müller", "x" * 255])
def test_sql_bigrams_equal_python_bigrams(env: Env, value: str) -> None:
    _pg(env)

    async def work() -> list[str]:
        async with env.ctx.sessionmaker() as session:
            return list(await session.scalar(select(func.idhub_bigrams(value))) or [])

    grams = {g for g in env.run(work) if len(g) == 2}  # the splits also leave a last single character
    assert grams == set(_bigrams(value))


def test_username_substring_filter_uses_the_bigram_index(env: Env) -> None:
    _pg(env)
    tenant_id = env.tenant().id
    now = utcnow()
    rows = [
        {"id": uuid.uuid4(), "tenant_id": tenant_id, "username": f"person{i}@acme.example", "created_at": now,
         "updated_at": now, "enabled": True, "email_verified": False, "version": 1}
        for i in range(5000)
    ]  # fmt: skip
    where = user_filter(parse_filter('userName co "99"'), tenant_id=tenant_id)
    stmt = select(User.id).where(User.tenant_id == tenant_id, User.deleted_at.is_(None), where)

    async def work() -> str:
        async with env.ctx.sessionmaker() as session:
            await session.execute(insert(User), rows)
            await session.commit()
            await session.execute(text('ANALYZE "user"'))
            compiled = stmt.compile(dialect=env.ctx.engine.dialect, compile_kwargs={"literal_binds": True})
            plan = await session.execute(text(f"EXPLAIN {compiled}"))
            return "\n".join(row[0] for row in plan)

    plan = env.run(work)
    assert "ix_user_username_bigrams" in plan, plan


def test_read_only_runs_without_a_transaction_and_the_pool_restores_isolation(env: Env) -> None:
    _pg(env)  # now() is the transaction's start time: equal twice inside one, different without

    async def work() -> tuple[bool, bool]:
        async def two_clocks(session: AsyncSession) -> bool:
            first = await session.scalar(text("SELECT clock_timestamp() - now()"))
            await session.execute(text("SELECT pg_sleep(0.01)"))
            second = await session.scalar(text("SELECT clock_timestamp() - now()"))
            return bool(second > first)  # the transaction's start stayed put while the clock moved

        async with env.ctx.sessionmaker() as session:
            await read_only(session)
            inside = await two_clocks(session)
            await session.commit()
        async with env.ctx.sessionmaker() as session:  # the same pooled connection, back to transactions
            after = await two_clocks(session)
            await session.commit()
        return inside, after

    in_read_only, afterwards = env.run(work)
    assert not in_read_only, "read_only() kept a transaction open"
    assert afterwards, "the next unit of work on the pooled connection ran without a transaction"
