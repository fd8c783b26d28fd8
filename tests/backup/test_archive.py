"""Archived records of deleted users: what they hold, their purge after retention, and a person's export."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from idhub.backup.archive import export_person, find_person, purge_archived
from idhub.storage.base import utcnow
from idhub.storage.models import AuditEvent, Tenant, User, UserValue
from idhub.tenants.service import TenantInfo
from tests.backup.helpers import seed
from tests.conftest import Env


def _delete(env: Env, tenant: TenantInfo, user_id: str, *, days_ago: int = 0) -> None:
    async def work() -> None:
        async with env.uow() as uow:
            users = env.ctx.directory(uow).users
            await users.delete(await users.get(tenant.id, uuid.UUID(user_id)))
        if days_ago:
            async with env.uow() as uow:
                await uow.session.execute(
                    update(User)
                    .where(User.id == uuid.UUID(user_id))
                    .values(deleted_at=utcnow() - timedelta(days=days_ago))
                    .execution_options(synchronize_session=False)
                )

    env.run(work)


def _purge(env: Env, tenant: TenantInfo, **kwargs: Any) -> Any:
    async def work() -> Any:
        return await purge_archived(lambda: env.uow(), tenant=tenant.slug, **kwargs)

    return env.run(work)


def _user(env: Env, user_id: str) -> User | None:
    async def work() -> User | None:
        async with env.ctx.sessionmaker() as session:
            return await session.get(User, uuid.UUID(user_id))

    result: User | None = env.run(work)
    return result


def _actions(env: Env, tenant: TenantInfo, action: str) -> list[AuditEvent]:
    async def work() -> list[AuditEvent]:
        async with env.ctx.sessionmaker() as session:
            rows = await session.scalars(
                select(AuditEvent).where(AuditEvent.tenant_id == tenant.id, AuditEvent.action == action)
            )
            return list(rows.all())

    result: list[AuditEvent] = env.run(work)
    return result


def test_delete_archive_holds_who_when_links_and_last_sign_ins(env: Env) -> None:
    seeded = seed(env)
    _delete(env, seeded.tenant, seeded.alice)
    gone = _user(env, seeded.alice)
    assert gone is not None and gone.archive is not None and gone.deleted_at is not None
    archive = gone.archive
    assert archive["deletedBy"] == "test:fixture" and archive["deleted"] == gone.deleted_at.isoformat()
    assert [(link["provider"], link["subject"]) for link in archive["links"]] == [("corp", "corp-alice")]
    assert archive["lastSignIns"] and archive["lastSignIns"][0]["amr"] == ["pwd"]
    assert archive["groups"] == [{"id": seeded.group_id, "displayName": "Engineering"}]


def test_archive_purge_removes_records_past_retention_and_audits(env: Env) -> None:
    tenant = env.tenant()
    old, recent, live = (env.user(tenant, name, None, email=f"{name}@example.com") for name in ("old", "new", "live"))
    _delete(env, tenant, old, days_ago=400)
    _delete(env, tenant, recent, days_ago=30)
    dry = _purge(env, tenant, default_days=365, dry_run=True)
    assert [(c.tenant, c.purged) for c in dry] == [(tenant.slug, 1)]
    assert _user(env, old) is not None  # a dry run only counts
    done = _purge(env, tenant, default_days=365)
    assert done[0].purged == 1 and done[0].retention_days == 365
    assert _user(env, old) is None and _user(env, recent) is not None and _user(env, live) is not None

    async def values_left() -> int:
        async with env.ctx.sessionmaker() as session:
            return len((await session.scalars(select(UserValue).where(UserValue.user_id == uuid.UUID(old)))).all())

    assert env.run(values_left) == 0  # what hung off the record went with it
    purged = _actions(env, tenant, "user.purge")
    assert [event.target_id for event in purged] == [old]


def test_archive_purge_tenant_retention_overrides_default(env: Env) -> None:
    tenant = env.tenant()

    async def shorten() -> None:
        async with env.uow() as uow:
            await uow.session.execute(
                update(Tenant).where(Tenant.id == tenant.id).values(settings={"archive_retention_days": 10})
            )

    env.run(shorten)
    gone = env.user(tenant, "gone", None)
    _delete(env, tenant, gone, days_ago=20)
    assert _purge(env, tenant, default_days=365)[0].purged == 1


def test_archive_purge_works_in_bounded_batches(env: Env) -> None:
    tenant = env.tenant()
    ids = [env.user(tenant, f"u{index}", None) for index in range(5)]
    for user_id in ids:
        _delete(env, tenant, user_id, days_ago=500)
    assert _purge(env, tenant, default_days=365, batch=2)[0].purged == 5
    assert all(_user(env, user_id) is None for user_id in ids)


def _export(env: Env, tenant: TenantInfo, **who: Any) -> dict[str, Any]:
    async def work() -> dict[str, Any]:
        async with env.uow() as uow:
            row = await uow.session.get(Tenant, tenant.id)
            assert row is not None
            person = await find_person(uow, tenant_id=tenant.id, **who)
            return await export_person(uow, tenant=row, user=person)

    result: dict[str, Any] = env.run(work)
    return result


def test_user_export_holds_a_persons_data_without_secrets(env: Env) -> None:
    seeded = seed(env)
    document = _export(env, seeded.tenant, username="ALICE")
    assert document["format"] == "urn:idhub:user-export:1" and document["user"]["id"] == seeded.alice
    assert document["user"]["has_password"] is True and "password_hash" not in document["user"]
    assert document["attributes"][0]["value"] == "alice@example.com"
    assert [g["displayName"] for g in document["groups"]] == ["Engineering"]
    assert document["linked_accounts"][0]["subject"] == "corp-alice"
    assert document["sessions"] and document["consents"] and document["grants"]
    assert {"user.create", "signin.password"} <= {event["action"] for event in document["audit_events"]}
    text = json.dumps(document)
    assert "token_hash" not in text and "$argon2" not in text and "secret" not in text
    assert [event.target_id for event in _actions(env, seeded.tenant, "user.export")] == [seeded.alice]


def test_user_export_of_deleted_user_holds_the_archive(env: Env) -> None:
    seeded = seed(env)
    _delete(env, seeded.tenant, seeded.bob)
    document = _export(env, seeded.tenant, username="bob")
    assert document["user"]["deleted_at"] is not None
    assert document["archive"]["userName"] == "bob"
