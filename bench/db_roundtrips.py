"""What a sign-in's database work costs the Python process, by data-access layer.

The brokered sign-in's callback sends ten statements in one transaction (see ``bench/README.md``). This
runs a sequence shaped like it (``BEGIN``; an ``INSERT ... ON CONFLICT DO NOTHING RETURNING``; a join
``SELECT``; an ``UPDATE``; a ``SELECT`` of a JSON row; four ``INSERT``s of 5-15 columns; an ``UPDATE ...
RETURNING``; ``COMMIT``: 11 round trips) against scratch tables on PostgreSQL,
through three layers, and prints the client's CPU time per sequence (``time.process_time``):

* ``orm``: an ``AsyncSession`` with mapped objects, ``session.add`` + flush, as most of idhub is written;
* ``core``: SQLAlchemy Core statements on an ``AsyncConnection`` (compiled-statement cache warm);
* ``prebuilt``: Core constructs built once, the values given at execute time;
* ``session_entity``: the same prebuilt constructs run through an ``AsyncSession`` (as idhub's services
  do): statements on mapped classes take the ORM's compile and bulk-persistence route even with no object;
* ``session_table``: prebuilt constructs on the tables (``Model.__table__``) through an ``AsyncSession``:
  plain Core, what ``idhub.storage.tables`` is for;
* ``text``: the same SQL text as ``text()`` constructs (``:name`` parameters, portable to SQLite);
* ``driver_sql``: the same SQL text as below through SQLAlchemy's ``exec_driver_sql`` (no compiling);
* ``asyncpg``: the driver alone, prepared statements.

It measures the layers, not idhub: the figure is the price of each layer per round trip on this machine,
for deciding whether the hot paths should leave the ORM. Usage: ``python bench/db_roundtrips.py
[--sequences 2000] [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench_rt]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import JSON, DateTime, ForeignKey, String, bindparam, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_rt"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: DateTime(timezone=True)}


class Used(Base):
    __tablename__ = "rt_used"
    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[datetime]


class Person(Base):
    __tablename__ = "rt_person"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    active: Mapped[bool]


class Link(Base):
    __tablename__ = "rt_link"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rt_person.id"))
    subject: Mapped[str] = mapped_column(String(255), index=True)
    last_login_at: Mapped[datetime | None]


class Pending(Base):
    __tablename__ = "rt_pending"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    params: Mapped[dict[str, Any]]
    person_id: Mapped[uuid.UUID | None]
    completed_at: Mapped[datetime | None]


class Sso(Base):
    __tablename__ = "rt_sso"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_id: Mapped[uuid.UUID]
    token_hash: Mapped[str] = mapped_column(String(128))
    auth_time: Mapped[datetime]
    amr: Mapped[list[str]]
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class Permit(Base):
    __tablename__ = "rt_permit"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_id: Mapped[uuid.UUID]
    sso_id: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime]


class Code(Base):
    __tablename__ = "rt_code"
    code_hash: Mapped[str] = mapped_column(String(128), primary_key=True)
    permit_id: Mapped[str] = mapped_column(String(64))
    person_id: Mapped[uuid.UUID]
    sso_id: Mapped[str] = mapped_column(String(64))
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(String(2000))
    nonce: Mapped[str | None] = mapped_column(String(512))
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(8))
    resources: Mapped[list[str]]
    auth_time: Mapped[datetime]
    amr: Mapped[list[str]]
    extra: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class Event(Base):
    __tablename__ = "rt_event"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime]
    actor_type: Mapped[str] = mapped_column(String(32))
    actor_id: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))
    surface: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]]


def _row_values(person_id: uuid.UUID) -> dict[str, Any]:
    """Fresh values for one sequence (what differs between sign-ins)."""
    now = datetime.now(UTC)
    return {
        "now": now,
        "state": secrets.token_urlsafe(18),
        "sso": secrets.token_urlsafe(16),
        "permit": secrets.token_urlsafe(16),
        "code": secrets.token_hex(32),
        "pending": secrets.token_urlsafe(24),
        "person": person_id,
    }


PARAMS = {"client_id": "app", "redirect_uri": "https://app.example/cb", "scope": ["openid"], "state": "s" * 16}


async def orm_sequence(session: AsyncSession, subject: str, v: dict[str, Any]) -> None:
    now = v["now"]
    async with session.begin():
        await session.execute(
            pg_insert(Used).values(namespace="state", value=v["state"], expires_at=now).on_conflict_do_nothing()
            .returning(Used.value)
        )  # fmt: skip
        joined = select(Link, Person).join(Person, Person.id == Link.person_id).where(Link.subject == subject)
        link, person = (await session.execute(joined)).one()
        link.last_login_at = now
        pending = await session.get(Pending, v["pending"])
        assert pending is not None and person.active
        session.add(Sso(id=v["sso"], person_id=person.id, token_hash=v["code"], auth_time=now, amr=["fed"],
                        created_at=now, last_seen_at=now, expires_at=now + timedelta(hours=8)))  # fmt: skip
        await session.flush()
        await session.execute(
            update(Pending).where(Pending.id == v["pending"], Pending.completed_at.is_(None))
            .values(person_id=person.id, completed_at=now).returning(Pending.id)
        )  # fmt: skip
        session.add(Permit(id=v["permit"], person_id=person.id, sso_id=v["sso"], scope="openid", created_at=now))
        await session.flush()
        session.add(Code(code_hash=v["code"], permit_id=v["permit"], person_id=person.id, sso_id=v["sso"],
                         redirect_uri="https://app.example/cb", scope="openid", nonce="n", code_challenge="c" * 43,
                         code_challenge_method="S256", resources=[], auth_time=now, amr=["fed"], extra={},
                         created_at=now, expires_at=now + timedelta(minutes=1)))  # fmt: skip
        session.add(Event(id=uuid.uuid4(), occurred_at=now, actor_type="user", actor_id=str(person.id),
                          action="signin.broker", target_type="User", target_id=str(person.id), outcome="success",
                          surface="pages", request_id="r", details={"alias": "corp", "how": "existing"}))  # fmt: skip


async def core_sequence(conn: Any, subject: str, v: dict[str, Any]) -> None:
    now = v["now"]
    async with conn.begin():
        await conn.execute(
            pg_insert(Used).values(namespace="state", value=v["state"], expires_at=now).on_conflict_do_nothing()
            .returning(Used.value)
        )  # fmt: skip
        found = (
            await conn.execute(
                select(Link.id, Person.id.label("person_id"), Person.active)
                .join(Person, Person.id == Link.person_id).where(Link.subject == subject)
            )
        ).one()  # fmt: skip
        await conn.execute(update(Link).where(Link.id == found.id).values(last_login_at=now))
        pending = (await conn.execute(select(Pending).where(Pending.id == v["pending"]))).one()
        assert pending is not None and found.active
        await conn.execute(insert(Sso).values(id=v["sso"], person_id=found.person_id, token_hash=v["code"],
                                              auth_time=now, amr=["fed"], created_at=now, last_seen_at=now,
                                              expires_at=now + timedelta(hours=8)))  # fmt: skip
        await conn.execute(
            update(Pending).where(Pending.id == v["pending"], Pending.completed_at.is_(None))
            .values(person_id=found.person_id, completed_at=now).returning(Pending.id)
        )  # fmt: skip
        await conn.execute(insert(Permit).values(id=v["permit"], person_id=found.person_id, sso_id=v["sso"],
                                                 scope="openid", created_at=now))  # fmt: skip
        await conn.execute(insert(Code).values(code_hash=v["code"], permit_id=v["permit"], person_id=found.person_id,
                                               sso_id=v["sso"], redirect_uri="https://app.example/cb", scope="openid",
                                               nonce="n", code_challenge="c" * 43, code_challenge_method="S256",
                                               resources=[], auth_time=now, amr=["fed"], extra={}, created_at=now,
                                               expires_at=now + timedelta(minutes=1)))  # fmt: skip
        await conn.execute(insert(Event).values(id=uuid.uuid4(), occurred_at=now, actor_type="user",
                                                actor_id=str(found.person_id), action="signin.broker",
                                                target_type="User", target_id=str(found.person_id),
                                                outcome="success", surface="pages", request_id="r",
                                                details={"alias": "corp", "how": "existing"}))  # fmt: skip


# Built once: the values come at execute time, so each statement's cache key is computed from a constant.
_USED = pg_insert(Used).on_conflict_do_nothing().returning(Used.value)
_LINK = (
    select(Link.id, Person.id.label("person_id"), Person.active)
    .join(Person, Person.id == Link.person_id)
    .where(Link.subject == bindparam("subject"))
)
_TOUCH = update(Link).where(Link.id == bindparam("link_id")).values(last_login_at=bindparam("now"))
_PENDING = select(Pending).where(Pending.id == bindparam("pending_id"))
_COMPLETE = (
    update(Pending)
    .where(Pending.id == bindparam("pending_id"), Pending.completed_at.is_(None))
    .values(person_id=bindparam("person"), completed_at=bindparam("now"))
    .returning(Pending.id)
)


_T = {model: model.__table__ for model in (Used, Link, Person, Pending, Sso, Permit, Code, Event)}
_TABLES: dict[str, Any] = {
    "used": pg_insert(_T[Used]).on_conflict_do_nothing().returning(_T[Used].c.value),
    "link": select(_T[Link].c.id, _T[Person].c.id.label("person_id"), _T[Person].c.active)
    .join(_T[Person], _T[Person].c.id == _T[Link].c.person_id)
    .where(_T[Link].c.subject == bindparam("subject")),
    "touch": update(_T[Link]).where(_T[Link].c.id == bindparam("link_id")).values(last_login_at=bindparam("now")),
    "pending": select(_T[Pending]).where(_T[Pending].c.id == bindparam("pending_id")),
    "complete": update(_T[Pending])
    .where(_T[Pending].c.id == bindparam("pending_id"), _T[Pending].c.completed_at.is_(None))
    .values(person_id=bindparam("person"), completed_at=bindparam("now"))
    .returning(_T[Pending].c.id),
    **{name: insert(_T[model]) for name, model in (("sso", Sso), ("permit", Permit), ("code", Code), ("event", Event))},
}
_ENTITIES: dict[str, Any] = {
    "used": _USED, "link": _LINK, "touch": _TOUCH, "pending": _PENDING, "complete": _COMPLETE,
    "sso": insert(Sso), "permit": insert(Permit), "code": insert(Code), "event": insert(Event),
}  # fmt: skip


async def prebuilt_sequence(conn: Any, subject: str, v: dict[str, Any], statements: dict[str, Any] = _ENTITIES) -> None:
    """Core constructs built once, parameters given at execute time (``conn.execute(insert(T), {...})``).

    ``conn`` is an ``AsyncConnection`` or an ``AsyncSession``; ``statements`` target mapped classes or tables.
    """
    now, s = v["now"], statements
    async with conn.begin():
        await conn.execute(s["used"], {"namespace": "state", "value": v["state"], "expires_at": now})
        found = (await conn.execute(s["link"], {"subject": subject})).one()
        await conn.execute(s["touch"], {"link_id": found.id, "now": now})
        pending = (await conn.execute(s["pending"], {"pending_id": v["pending"]})).one()
        assert pending is not None and found.active
        person = found.person_id
        await conn.execute(s["sso"], {"id": v["sso"], "person_id": person, "token_hash": v["code"], "auth_time": now,
                                         "amr": ["fed"], "created_at": now, "last_seen_at": now,
                                         "expires_at": now + timedelta(hours=8)})  # fmt: skip
        await conn.execute(s["complete"], {"pending_id": v["pending"], "person": person, "now": now})
        await conn.execute(s["permit"], {"id": v["permit"], "person_id": person, "sso_id": v["sso"],
                                            "scope": "openid", "created_at": now})  # fmt: skip
        await conn.execute(s["code"], {"code_hash": v["code"], "permit_id": v["permit"], "person_id": person,
                                          "sso_id": v["sso"], "redirect_uri": "https://app.example/cb",
                                          "scope": "openid", "nonce": "n", "code_challenge": "c" * 43,
                                          "code_challenge_method": "S256", "resources": [], "auth_time": now,
                                          "amr": ["fed"], "extra": {}, "created_at": now,
                                          "expires_at": now + timedelta(minutes=1)})  # fmt: skip
        event = {"id": uuid.uuid4(), "occurred_at": now, "actor_type": "user", "actor_id": str(person),
                 "action": "signin.broker", "target_type": "User", "target_id": str(person), "outcome": "success",
                 "surface": "pages", "request_id": "r", "details": {"alias": "corp", "how": "existing"}}  # fmt: skip
        await conn.execute(s["event"], event)


async def asyncpg_sequence(conn: asyncpg.Connection, subject: str, v: dict[str, Any]) -> None:
    async with conn.transaction():
        await sql_sequence(conn.fetch, conn.fetchrow, conn.execute, subject, v)


async def driver_sql_sequence(conn: Any, subject: str, v: dict[str, Any]) -> None:
    """The same SQL text through SQLAlchemy's ``exec_driver_sql`` (no compiling, no cache key)."""

    async def fetch(sql: str, *args: Any) -> Any:
        return (await conn.exec_driver_sql(sql, args)).all()

    async def fetchrow(sql: str, *args: Any) -> Any:
        return (await conn.exec_driver_sql(sql, args)).mappings().first()

    async with conn.begin():
        await sql_sequence(fetch, fetchrow, fetch_none(conn), subject, v)


_TEXTS: dict[str, Any] = {}


def _text(sql: str) -> Any:
    """The SQL as a portable ``text()`` construct (``:pN`` parameters), made once per string."""
    found = _TEXTS.get(sql)
    if found is None:
        found = _TEXTS[sql] = text(re.sub(r"\$(\d+)", r":p\1", sql))
    return found


async def text_sequence(conn: Any, subject: str, v: dict[str, Any]) -> None:
    """The same SQL text as ``text()`` constructs (portable across dialects; compiled once, cached)."""

    def bind(args: tuple[Any, ...]) -> dict[str, Any]:
        return {f"p{i}": value for i, value in enumerate(args, 1)}

    async def fetch(sql: str, *args: Any) -> Any:
        return (await conn.execute(_text(sql), bind(args))).all()

    async def fetchrow(sql: str, *args: Any) -> Any:
        return (await conn.execute(_text(sql), bind(args))).mappings().first()

    async def execute(sql: str, *args: Any) -> None:
        await conn.execute(_text(sql), bind(args))

    async with conn.begin():
        await sql_sequence(fetch, fetchrow, execute, subject, v)


def fetch_none(conn: Any) -> Any:
    async def execute(sql: str, *args: Any) -> None:
        await conn.exec_driver_sql(sql, args)

    return execute


async def sql_sequence(fetch: Any, fetchrow: Any, execute: Any, subject: str, v: dict[str, Any]) -> None:
    """The sequence as SQL text with ``$n`` parameters (asyncpg's style)."""
    now = v["now"]
    dumps = json.dumps
    await fetch(
        "INSERT INTO rt_used (namespace, value, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING "
        "RETURNING value", "state", v["state"], now)  # fmt: skip
    found = await fetchrow(
        "SELECT rt_link.id, rt_person.id AS person_id, rt_person.active FROM rt_link JOIN rt_person "
        "ON rt_person.id = rt_link.person_id WHERE rt_link.subject = $1", subject)  # fmt: skip
    await execute("UPDATE rt_link SET last_login_at = $1 WHERE id = $2", now, found["id"])
    pending = await fetchrow("SELECT * FROM rt_pending WHERE id = $1", v["pending"])
    assert pending is not None and found["active"]
    person = found["person_id"]
    await execute(
        "INSERT INTO rt_sso (id, person_id, token_hash, auth_time, amr, created_at, last_seen_at, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        v["sso"], person, v["code"], now, dumps(["fed"]), now, now, now + timedelta(hours=8))  # fmt: skip
    await fetch(
        "UPDATE rt_pending SET person_id = $1, completed_at = $2 WHERE id = $3 AND completed_at IS NULL "
        "RETURNING id", person, now, v["pending"])  # fmt: skip
    await execute(
        "INSERT INTO rt_permit (id, person_id, sso_id, scope, created_at) VALUES ($1, $2, $3, $4, $5)",
        v["permit"], person, v["sso"], "openid", now)  # fmt: skip
    await execute(
        "INSERT INTO rt_code (code_hash, permit_id, person_id, sso_id, redirect_uri, scope, nonce, "
        "code_challenge, code_challenge_method, resources, auth_time, amr, extra, created_at, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        v["code"], v["permit"], person, v["sso"], "https://app.example/cb", "openid", "n", "c" * 43, "S256",
        "[]", now, dumps(["fed"]), "{}", now, now + timedelta(minutes=1))  # fmt: skip
    await execute(
        "INSERT INTO rt_event (id, occurred_at, actor_type, actor_id, action, target_type, target_id, outcome, "
        "surface, request_id, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        uuid.uuid4(), now, "user", str(person), "signin.broker", "User", str(person), "success", "pages", "r",
        dumps({"alias": "corp", "how": "existing"}))  # fmt: skip


async def run(url: str, sequences: int) -> dict[str, float]:
    engine = create_async_engine(url, pool_size=2, max_overflow=0)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    person_id, subject = uuid.uuid4(), "upstream-subject-1"
    async with engine.begin() as conn:
        await conn.execute(insert(Person).values(id=person_id, name="Alice", email="a@corp.example", active=True))
        await conn.execute(insert(Link).values(id=uuid.uuid4(), person_id=person_id, subject=subject))

    async def pending(count: int) -> list[dict[str, Any]]:
        values = [_row_values(person_id) for _ in range(count)]
        async with engine.begin() as conn:
            await conn.execute(insert(Pending), [{"id": v["pending"], "params": PARAMS} for v in values])
        return values

    figures: dict[str, float] = {}

    async def measure(name: str, one: Any) -> None:
        warm = await pending(200)
        for v in warm:
            await one(v)
        values = await pending(sequences)
        started_cpu, started = time.process_time(), time.perf_counter()
        for v in values:
            await one(v)
        figures[f"{name}_cpu_ms"] = 1000 * (time.process_time() - started_cpu) / sequences
        figures[f"{name}_wall_ms"] = 1000 * (time.perf_counter() - started) / sequences

    async with AsyncSession(engine, expire_on_commit=False) as session:

        async def orm_one(v: dict[str, Any]) -> None:
            await orm_sequence(session, subject, v)
            session.expunge_all()

        await measure("orm", orm_one)
    async with engine.connect() as conn:
        await measure("core", lambda v: core_sequence(conn, subject, v))
    async with engine.connect() as conn:
        await measure("prebuilt", lambda v: prebuilt_sequence(conn, subject, v))
    async with AsyncSession(engine, expire_on_commit=False) as session:
        await measure("session_entity", lambda v: prebuilt_sequence(session, subject, v, _ENTITIES))
    async with AsyncSession(engine, expire_on_commit=False) as session:
        await measure("session_table", lambda v: prebuilt_sequence(session, subject, v, _TABLES))
    async with engine.connect() as conn:
        await measure("text", lambda v: text_sequence(conn, subject, v))
    async with engine.connect() as conn:
        await measure("driver_sql", lambda v: driver_sql_sequence(conn, subject, v))
    await engine.dispose()
    raw = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await measure("asyncpg", lambda v: asyncpg_sequence(raw, subject, v))
    finally:
        await raw.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=2000)
    parser.add_argument("--database-url", default=os.environ.get("IDHUB_BENCH_RT_DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args()
    figures = asyncio.run(run(args.database_url, args.sequences))
    print(f"{args.sequences} sequences of 11 round trips each (BEGIN, 9 statements, COMMIT), one connection:")
    for name in ("orm", "core", "prebuilt", "session_entity", "session_table", "text", "driver_sql", "asyncpg"):
        cpu, wall = figures[f"{name}_cpu_ms"], figures[f"{name}_wall_ms"]
        print(f"  {name:10} client CPU {cpu:.2f} ms per sequence ({1000 * cpu / 11:.0f} µs per round trip), "
              f"wall {wall:.2f} ms")  # fmt: skip
    print(f"machine: nproc={os.cpu_count()}, python={'.'.join(map(str, __import__('sys').version_info[:3]))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
