"""The unit of work: one commit site, events handed on only after it, audit rows in its transaction."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import idhub
from idhub.errors import Invalid
from idhub.events import DomainEvent, GroupCreated, TokenRequestRefused
from idhub.storage.base import utcnow
from idhub.storage.models import AuditEvent, Group, UsedValue
from idhub.storage.uow import EventBus, UnitOfWork, UnitOfWorkFactory
from idhub.tenants.service import TenantInfo
from tests.conftest import TEST_ACTOR, Env

IDHUB = Path(idhub.__file__).parent
UOW_MODULE = IDHUB / "storage" / "uow.py"


class Boom(Exception):
    """The work of a unit of work failed."""


class Recorded:
    """A unit-of-work factory with the app's hooks whose published and refused events are recorded."""

    def __init__(self, env: Env, *, sessionmaker: async_sessionmaker[AsyncSession] | None = None) -> None:
        app = env.ctx.uow_factory
        self.published: list[DomainEvent] = []
        self.refused: list[DomainEvent] = []
        self.bus = EventBus()
        self.bus.subscribe(DomainEvent, self.published.append)
        self.factory = UnitOfWorkFactory(
            sessionmaker or app.sessionmaker,
            bus=self.bus,
            before_commit=app.before_commit,
            after_rollback=[*app.after_rollback, self._after_rollback],
        )

    async def _after_rollback(self, _uow: UnitOfWork, events: Sequence[DomainEvent]) -> None:
        self.refused.extend(events)

    def uow(self) -> UnitOfWork:
        return self.factory(actor=TEST_ACTOR, surface="test")


def _refusal(tenant: TenantInfo) -> TokenRequestRefused:
    return TokenRequestRefused(tenant_id=tenant.id, client_id="c-1", endpoint="token", error="invalid_grant")


async def _groups(env: Env, tenant: TenantInfo) -> list[str]:
    async with env.ctx.sessionmaker() as session:
        return list(await session.scalars(select(Group.display_name).where(Group.tenant_id == tenant.id)))


async def _audit(env: Env, tenant: TenantInfo) -> list[tuple[str, str, str, str, str | None]]:
    async with env.ctx.sessionmaker() as session:
        rows = await session.execute(
            select(
                AuditEvent.action, AuditEvent.outcome, AuditEvent.actor_type, AuditEvent.actor_id, AuditEvent.surface
            ).where(AuditEvent.tenant_id == tenant.id, AuditEvent.target_type != "Tenant")  # not env.tenant()'s
        )
        return sorted(tuple(row) for row in rows)  # type: ignore[misc]


async def _audit_eventually(env: Env, tenant: TenantInfo, expected: int) -> list[Any]:
    """Wait for rows the background audit writer writes (a fraction of a second)."""
    for _ in range(100):
        rows = await _audit(env, tenant)
        if len(rows) >= expected:
            return rows
        await asyncio.sleep(0.05)
    return await _audit(env, tenant)


async def _create_group(uow: UnitOfWork, env: Env, tenant: TenantInfo, name: str) -> Group:
    return await env.ctx.directory(uow).groups.create(tenant.id, name=name)


# --- one commit site ---------------------------------------------------------------------------------


def test_commit_is_called_only_in_the_unit_of_work() -> None:
    sites = {
        (path.relative_to(IDHUB.parent).as_posix(), number)
        for path in sorted(IDHUB.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if ".commit(" in line
    }
    assert {path for path, _ in sites} == {"idhub/storage/uow.py"}, sites
    # And there, the session is committed in exactly one place: UnitOfWork.commit.
    text = UOW_MODULE.read_text(encoding="utf-8")
    assert len(re.findall(r"session\.commit\(", text)) == 1


# --- events after commit -----------------------------------------------------------------------------


def test_session_opens_on_first_use_only(env: Env) -> None:
    rec = Recorded(env)

    async def work() -> tuple[bool, bool]:
        async with rec.uow() as uow:
            before = uow.opened
            await uow.session.connection()
            return before, uow.opened

    assert env.run(work) == (False, True)


def test_events_are_published_only_after_the_commit(env: Env) -> None:
    tenant, rec = env.tenant(), Recorded(env)

    async def work() -> tuple[list[DomainEvent], list[DomainEvent], Group]:
        async with rec.uow() as uow:
            group = await _create_group(uow, env, tenant, "Early")
            raised, published = list(uow.events), list(rec.published)
        return raised, published, group

    raised, published_inside, group = env.run(work)
    assert published_inside == []
    assert raised == rec.published == [GroupCreated(tenant_id=tenant.id, group_id=group.id, name="Early")]
    assert env.run(_groups, env, tenant) == ["Early"]


def test_a_failing_consumer_is_logged_and_the_others_still_hear(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    tenant, rec = env.tenant(), Recorded(env)

    def broken(_event: DomainEvent) -> None:
        raise RuntimeError("consumer bug")

    heard: list[DomainEvent] = []

    async def async_consumer(event: DomainEvent) -> None:
        heard.append(event)

    rec.bus.subscribe(GroupCreated, broken)
    rec.bus.subscribe(GroupCreated, async_consumer)

    async def work() -> None:
        async with rec.uow() as uow:
            await _create_group(uow, env, tenant, "Heard")

    with caplog.at_level(logging.ERROR, logger="idhub.storage.uow"):
        env.run(work)  # the change is durable: the consumer's failure is not the request's
    assert [type(e) for e in heard] == [GroupCreated] and len(rec.published) == 1
    assert any("consumer of GroupCreated failed" in r.getMessage() for r in caplog.records)
    assert env.run(_groups, env, tenant) == ["Heard"]


def test_nothing_is_published_or_stored_when_the_work_raises(env: Env) -> None:
    tenant, rec = env.tenant(), Recorded(env)

    async def work() -> None:
        async with rec.uow() as uow:
            await _create_group(uow, env, tenant, "Doomed")
            raise Boom

    with pytest.raises(Boom):
        env.run(work)
    assert rec.published == [] and rec.refused == []
    assert env.run(_groups, env, tenant) == []
    assert env.run(_audit, env, tenant) == []


class RefusingSession(AsyncSession):
    """A session whose COMMIT the database refuses (a serialization failure, a lost connection)."""

    async def commit(self) -> None:
        raise OperationalError("COMMIT", {}, Exception("could not serialize access"))


def test_nothing_is_published_or_stored_when_the_commit_fails(env: Env) -> None:
    tenant = env.tenant()
    rec = Recorded(env, sessionmaker=async_sessionmaker(env.ctx.engine, class_=RefusingSession))

    async def work() -> None:
        async with rec.uow() as uow:
            await _create_group(uow, env, tenant, "Uncommitted")

    with pytest.raises(OperationalError):
        env.run(work)
    assert rec.published == []
    assert env.run(_groups, env, tenant) == []
    assert env.run(_audit, env, tenant) == []


def test_refusals_are_still_audited_when_the_commit_fails(env: Env) -> None:
    """A COMMIT the database refuses is a rollback: the successes did not happen, the refusal did."""
    tenant = env.tenant()
    rec = Recorded(env, sessionmaker=async_sessionmaker(env.ctx.engine, class_=RefusingSession))
    refusal = _refusal(tenant)

    async def work() -> None:
        async with rec.uow() as uow:
            await _create_group(uow, env, tenant, "Uncommitted")
            uow.raise_event(refusal)

    with pytest.raises(OperationalError):
        env.run(work)
    assert rec.published == []
    assert rec.refused == [refusal]
    assert env.run(_groups, env, tenant) == []
    assert env.run(_audit_eventually, env, tenant, 1) == [("token.refuse", "failure", "test", "fixture", "test")]


def test_audit_rows_are_written_in_the_transaction_of_the_change(env: Env) -> None:
    tenant, rec = env.tenant(), Recorded(env)

    async def work() -> None:
        async with rec.uow() as uow:
            await _create_group(uow, env, tenant, "Audited")

    env.run(work)
    assert env.run(_audit, env, tenant) == [("group.create", "success", "test", "fixture", "test")]

    # A hook after the audit hook fails: the audit row and the change roll back together.
    def failing_factory() -> UnitOfWorkFactory:
        async def fail(_uow: UnitOfWork, _events: Sequence[DomainEvent]) -> None:
            raise Boom

        return UnitOfWorkFactory(env.ctx.sessionmaker, bus=rec.bus, before_commit=[*rec.factory.before_commit, fail])

    async def doomed() -> None:
        async with failing_factory()(actor=TEST_ACTOR, surface="test") as uow:
            await _create_group(uow, env, tenant, "Not audited")
            await uow.session.flush()

    rec.published.clear()
    with pytest.raises(Boom):
        env.run(doomed)
    assert rec.published == []
    assert env.run(_groups, env, tenant) == ["Audited"]
    assert env.run(_audit, env, tenant) == [("group.create", "success", "test", "fixture", "test")]


def test_refusals_reach_the_failure_hooks_after_a_rollback(env: Env) -> None:
    tenant, rec = env.tenant(), Recorded(env)
    refusal = _refusal(tenant)

    async def work() -> None:
        async with rec.uow() as uow:
            await _create_group(uow, env, tenant, "Rolled back")
            uow.raise_event(refusal)
            raise Invalid("refused")

    with pytest.raises(Invalid):
        env.run(work)
    assert rec.published == []  # nothing committed, nothing handed on
    assert rec.refused == [refusal]  # the success (GroupCreated) did not happen; the refusal did
    assert env.run(_groups, env, tenant) == []
    # The app's failure hook audits the refusal outside the rolled-back transaction.
    assert env.run(_audit_eventually, env, tenant, 1) == [("token.refuse", "failure", "test", "fixture", "test")]


def test_refusals_of_a_committed_unit_of_work_are_audited_with_it(env: Env) -> None:
    tenant, rec = env.tenant(), Recorded(env)
    refusal = _refusal(tenant)

    async def work() -> None:
        async with rec.uow() as uow:
            await _create_group(uow, env, tenant, "Kept")
            uow.raise_event(refusal)

    env.run(work)
    assert [type(e) for e in rec.published] == [GroupCreated, TokenRequestRefused]
    assert rec.refused == []
    assert env.run(_audit, env, tenant) == [
        ("group.create", "success", "test", "fixture", "test"),
        ("token.refuse", "failure", "test", "fixture", "test"),
    ]


def test_keep_on_error_commits_the_refusal_and_still_raises(env: Env) -> None:
    tenant, rec = env.tenant(), Recorded(env)
    refusal = _refusal(tenant)

    async def work() -> None:
        async with rec.uow() as uow:
            await _create_group(uow, env, tenant, "Replay evidence")
            uow.raise_event(refusal)
            uow.keep_on_error()
            raise Invalid("the request fails, the revocation stays")

    with pytest.raises(Invalid):
        env.run(work)
    assert [type(e) for e in rec.published] == [GroupCreated, TokenRequestRefused]
    assert rec.refused == []
    assert env.run(_groups, env, tenant) == ["Replay evidence"]
    assert [row[0] for row in env.run(_audit, env, tenant)] == ["group.create", "token.refuse"]


def test_keep_on_error_does_not_survive_cancellation(env: Env) -> None:
    tenant, rec = env.tenant(), Recorded(env)

    async def work() -> None:
        uow = rec.uow()
        await _create_group(uow, env, tenant, "Cancelled")
        uow.keep_on_error()
        await uow.finish(asyncio.CancelledError())

    env.run(work)
    assert rec.published == []
    assert env.run(_groups, env, tenant) == []


def test_events_without_a_session_are_published_and_audited_by_the_writer(env: Env) -> None:
    tenant, rec = env.tenant(), Recorded(env)
    refusal = _refusal(tenant)

    async def work() -> bool:
        async with rec.uow() as uow:
            uow.raise_event(refusal)
            return uow.opened

    assert env.run(work) is False  # no round trip for the change itself
    assert rec.published == [refusal]
    assert env.run(_audit_eventually, env, tenant, 1) == [("token.refuse", "failure", "test", "fixture", "test")]


def test_a_savepoint_as_the_first_statement_rolls_back_with_the_unit_of_work(env: Env) -> None:
    """SQLite's driver opens no transaction before a SAVEPOINT; its RELEASE must not commit on its own."""
    tenant, rec = env.tenant(), Recorded(env)
    value = uuid.uuid4().hex

    async def work() -> None:
        async with rec.uow() as uow:
            async with uow.session.begin_nested():
                uow.session.add(UsedValue(tenant_id=tenant.id, namespace="sp", value=value, expires_at=utcnow()))
            raise Boom

    async def stored() -> int:
        async with env.ctx.sessionmaker() as session:
            return len((await session.scalars(select(UsedValue.value).where(UsedValue.value == value))).all())

    with pytest.raises(Boom):
        env.run(work)
    assert env.run(stored) == 0
