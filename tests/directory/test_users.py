"""Users of the directory, through its commands (not through SCIM): rules, versions, cut-off, archive."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select

from idhub.directory.groups import MemberIds
from idhub.directory.profile import UserProfile, ValueRecord
from idhub.directory.rules import is_live
from idhub.errors import Conflict, Invalid, NotFound, PreconditionFailed
from idhub.events import (
    Actor,
    RevocationRecorded,
    UserCreated,
    UserDeleted,
    UserDisabled,
    UserEnabled,
    UserUpdated,
)
from idhub.storage.models import GroupMember, Revocation, User, UserValue
from idhub.tenants.service import TenantInfo
from tests.conftest import TEST_ACTOR, Env
from tests.directory.helpers import Recorder, audit_actions, count, revoked, seed_access

PASSWORD = "correct horse battery"


def _profile(user_name: str, **kw: Any) -> UserProfile:
    return UserProfile(user_name=user_name, **kw)


def _email(address: str, primary: bool | None = True) -> ValueRecord:
    return ValueRecord("emails", value=address, type="work", primary=primary)


def _create(rec: Recorder, tenant: TenantInfo, profile: UserProfile, **kw: Any) -> User:
    async def work() -> User:
        async with rec.uow() as uow:
            return await rec.directory(uow).users.create(tenant.id, profile, **kw)

    user: User = rec.env.run(work)
    return user


async def _load(rec: Recorder, tenant: TenantInfo, user_id: uuid.UUID) -> User:
    async with rec.env.ctx.sessionmaker() as session:
        user = await session.scalar(select(User).where(User.tenant_id == tenant.id, User.id == user_id))
        assert user is not None
        return user


def _reload(rec: Recorder, tenant: TenantInfo, user_id: uuid.UUID) -> User:
    user: User = rec.env.run(_load, rec, tenant, user_id)
    return user


# --- create ------------------------------------------------------------------------------------------


def test_create_stores_profile_and_publishes_user_created_after_commit(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    profile = _profile(
        "Alice.Liddell",
        display_name="Alice",
        title="Explorer",
        values=(_email("alice@example.com", primary=None), _email("a.l@example.com")),
    )

    async def work() -> tuple[User, list[str], list[Any]]:
        async with rec.uow() as uow:
            users = rec.directory(uow).users
            user = await users.create(tenant.id, profile)
            assert rec.published == []  # raised, not yet handed on
            raised = [type(e).__name__ for e in uow.events]
            values = (await users.values_of([user.id]))[user.id]
        return user, raised, values

    user, raised, values = env.run(work)
    assert raised == ["UserCreated"]
    assert rec.kinds() == ["UserCreated"]
    assert rec.published[0] == UserCreated(tenant_id=tenant.id, user_id=user.id, username="alice.liddell")
    stored = _reload(rec, tenant, user.id)
    assert (stored.username, stored.user_name) == ("alice.liddell", "Alice.Liddell")
    assert stored.email == "a.l@example.com"  # the primary one, not the first
    assert stored.email_verified is False and stored.password_hash is None
    assert (stored.display_name, stored.title, stored.version) == ("Alice", "Explorer", 1)
    assert stored.enabled is True and is_live(stored)
    assert stored.created_by == TEST_ACTOR.label()
    assert [(v.value, v.position, v.primary) for v in values] == [
        ("alice@example.com", 0, None),
        ("a.l@example.com", 1, True),
    ]
    assert env.run(audit_actions, env, tenant.id, user.id) == ["user.create"]


def test_create_with_password_stores_an_argon2id_hash_that_verifies(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("hasher"), password=PASSWORD, email_verified=True)
    stored = _reload(rec, tenant, user.id)
    assert stored.password_hash is not None and stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash
    assert env.ctx.passwords.verify(PASSWORD, stored.password_hash)[0] is True
    assert env.ctx.passwords.verify(PASSWORD + "!", stored.password_hash)[0] is False
    assert stored.email_verified is True


@pytest.mark.parametrize("password", ["", "short", "x" * 7, "x" * 1025])
def test_create_password_outside_the_rule_is_invalid_and_nothing_is_stored(env: Env, password: str) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    with pytest.raises(Invalid, match="password"):
        _create(rec, tenant, _profile("weak"), password=password)
    assert env.run(count, env, select(User).where(User.tenant_id == tenant.id)) == 0
    assert rec.published == []


def test_create_password_at_the_bounds_is_accepted(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    short = _create(rec, tenant, _profile("eight"), password="x" * 8)
    long = _create(rec, tenant, _profile("long"), password="y" * 1024)
    assert env.ctx.passwords.verify("x" * 8, _reload(rec, tenant, short.id).password_hash)[0] is True
    assert env.ctx.passwords.verify("y" * 1024, _reload(rec, tenant, long.id).password_hash)[0] is True


def test_username_is_stripped_and_case_folded_and_found_case_insensitively(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("  Straße.Ørsted@Example.COM\t"))
    elsewhere = env.tenant()

    async def work() -> list[uuid.UUID | None]:
        async with rec.uow() as uow:
            users = rec.directory(uow).users
            found = [
                await users.find(tenant.id, name)
                for name in ("STRASSE.ørsted@example.com", "strasse.ØRSTED@EXAMPLE.com ")
            ]
            other = await users.find(elsewhere.id, "strasse.ørsted@example.com")
        return [f.id if f is not None else None for f in [*found, other]]

    assert _reload(rec, tenant, user.id).username == "strasse.ørsted@example.com"
    assert env.run(work) == [user.id, user.id, None]


@pytest.mark.parametrize(
    "user_name",
    ["", "   ", "two words", "tab\there", "nul\x00byte", "bell\x07", "del\x7f", "line\nbreak", "x" * 256],
)
def test_username_breaking_the_rule_is_invalid(env: Env, user_name: str) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    with pytest.raises(Invalid, match="userName"):
        _create(rec, tenant, _profile(user_name))
    assert env.run(count, env, select(User).where(User.tenant_id == tenant.id)) == 0


def test_username_of_255_characters_is_accepted(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    assert _create(rec, tenant, _profile("u" * 255)).username == "u" * 255


def test_invalid_email_is_refused(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    with pytest.raises(Invalid, match="email"):
        _create(rec, tenant, _profile("mailer", values=(_email("not an address"),)))


def test_username_taken_case_insensitively_is_a_conflict_other_tenants_unaffected(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    first = _create(rec, tenant, _profile("Bob"))
    rec.clear()
    with pytest.raises(Conflict):
        _create(rec, tenant, _profile("BOB"))
    with pytest.raises(Conflict):
        _create(rec, tenant, _profile(" bob "))
    assert rec.published == []
    assert env.run(count, env, select(User).where(User.tenant_id == tenant.id)) == 1
    other = _create(rec, env.tenant(), _profile("bob"))
    assert other.id != first.id


# --- create_many -------------------------------------------------------------------------------------


@contextmanager
def _user_inserts(env: Env) -> Iterator[list[str]]:
    """Collect the INSERT statements into ``user`` sent while the block runs."""
    seen: list[str] = []

    def listener(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        head = " ".join(statement.split())[:40].lower()
        if head.startswith(('insert into "user" ', "insert into user ")):
            seen.append(statement)

    engine = env.ctx.engine.sync_engine
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def test_create_many_one_insert_with_per_row_answers(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    existing = _create(rec, tenant, _profile("Existing"))
    rec.clear()
    profiles = [
        _profile("Ann", values=(_email("ann@example.com"),), department="R&D"),
        _profile("EXISTING"),  # held by a live account: the index refuses it in the same statement
        _profile("ben"),
        _profile("ANN"),  # twice in the batch: the second one is refused
        _profile("no good"),  # breaks the username rule
        _profile("carl", active=None),
    ]

    async def work() -> list[Any]:
        async with rec.uow() as uow:
            results = await rec.directory(uow).users.create_many(tenant.id, profiles)
            assert rec.published == []
        return results

    with _user_inserts(env) as inserts:
        results = env.run(work)
    assert len(inserts) == 1 and "on conflict" in inserts[0].lower()
    ann, dup_existing, ben, dup_batch, bad, carl = results
    assert all(isinstance(r, uuid.UUID) for r in (ann, ben, carl))
    assert isinstance(dup_existing, Conflict) and isinstance(dup_batch, Conflict)
    assert isinstance(bad, Invalid)

    created = rec.of(UserCreated)
    assert [(e.user_id, e.username, e.bulk) for e in created] == [
        (ann, "ann", True),
        (ben, "ben", True),
        (carl, "carl", True),
    ]
    stored = {uid: _reload(rec, tenant, uid) for uid in (ann, ben, carl)}
    assert stored[ann].username == "ann" and stored[ann].user_name == "Ann"
    assert stored[ann].email == "ann@example.com" and stored[ann].department == "R&D"
    assert stored[ann].created_by == TEST_ACTOR.label() and stored[ann].version == 1
    assert stored[carl].enabled is None and not is_live(stored[carl])
    emails = env.run(count, env, select(UserValue).where(UserValue.user_id == ann, UserValue.attribute == "emails"))
    assert emails == 1
    live = select(User).where(User.tenant_id == tenant.id, User.deleted_at.is_(None))
    assert env.run(count, env, live) == 4  # Existing, Ann, ben, carl
    assert _reload(rec, tenant, existing.id).user_name == "Existing"  # untouched


def test_create_many_all_refused_raises_no_event(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    _create(rec, tenant, _profile("dora"))
    rec.clear()

    async def work() -> list[Any]:
        async with rec.uow() as uow:
            return await rec.directory(uow).users.create_many(tenant.id, [_profile("Dora"), _profile("")])

    conflict, invalid = env.run(work)
    assert isinstance(conflict, Conflict) and isinstance(invalid, Invalid)
    assert rec.published == []


def test_create_many_then_failure_stores_nothing(env: Env) -> None:
    """The bulk INSERT runs in a savepoint that is the unit of work's first write: it rolls back with it."""
    tenant, rec = env.tenant(), Recorder(env)

    async def work() -> None:
        async with rec.uow() as uow:
            users = rec.directory(uow).users
            await users.create_many(tenant.id, [_profile("first"), _profile("second")])
            await users.create(tenant.id, _profile("third"))
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        env.run(work)
    assert env.run(count, env, select(User).where(User.tenant_id == tenant.id)) == 0
    assert rec.published == []


# --- update ------------------------------------------------------------------------------------------


def _update(rec: Recorder, tenant: TenantInfo, user_id: uuid.UUID, profile: UserProfile, **kw: Any) -> User:
    async def work() -> User:
        async with rec.uow() as uow:
            users = rec.directory(uow).users
            return await users.update(await users.get(tenant.id, user_id), profile, **kw)

    user: User = rec.env.run(work)
    return user


def test_update_replaces_fields_and_bumps_the_version(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("eve", title="Intern", values=(_email("eve@example.com"),)))
    rec.clear()
    updated = _update(
        rec,
        tenant,
        user.id,
        _profile("Eve.New", display_name="Eve", values=(_email("eve@new.example"),)),
        expected_versions=[1],
    )
    assert updated.version == 2
    stored = _reload(rec, tenant, user.id)
    assert (stored.username, stored.user_name) == ("eve.new", "Eve.New")
    assert stored.title is None and stored.display_name == "Eve"  # replace: unassigned is cleared
    assert stored.email == "eve@new.example" and stored.email_verified is False
    (event_,) = rec.of(UserUpdated)
    assert set(event_.changed) == {"userName", "display_name", "title", "email", "emails"}
    assert rec.kinds() == ["UserUpdated"]  # still live: no cut-off
    assert env.run(audit_actions, env, tenant.id, user.id) == ["user.create", "user.update"]


def test_update_with_stale_version_is_precondition_failed_and_changes_nothing(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("fay"))
    _update(rec, tenant, user.id, _profile("fay", title="v2"), expected_versions=[1])
    rec.clear()
    with pytest.raises(PreconditionFailed):
        _update(rec, tenant, user.id, _profile("fay", title="stale"), expected_versions=[1])
    stored = _reload(rec, tenant, user.id)
    assert (stored.title, stored.version) == ("v2", 2)
    assert rec.published == []
    assert _update(rec, tenant, user.id, _profile("fay", title="v3"), expected_versions=[1, 2]).version == 3


def test_update_loses_to_a_concurrent_writer_with_precondition_failed(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("gus"))

    async def work() -> None:
        slow = rec.uow()
        try:
            slow_users = rec.directory(slow).users
            seen = await slow_users.get(tenant.id, user.id)  # reads version 1
            async with rec.uow() as fast:
                users = rec.directory(fast).users
                await users.update(await users.get(tenant.id, user.id), _profile("gus", title="fast"))
            with pytest.raises(PreconditionFailed):
                await slow_users.update(seen, _profile("gus", title="slow"))
        finally:
            await slow.finish(RuntimeError("lost"))

    env.run(work)
    stored = _reload(rec, tenant, user.id)
    assert (stored.title, stored.version) == ("fast", 2)


def test_update_to_a_username_taken_by_another_live_account_is_a_conflict(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    _create(rec, tenant, _profile("hal"))
    ida = _create(rec, tenant, _profile("ida"))
    with pytest.raises(Conflict):
        _update(rec, tenant, ida.id, _profile("HAL"))
    assert _update(rec, tenant, ida.id, _profile("IDA")).user_name == "IDA"  # its own name, another case


def test_update_password_is_checked_hashed_and_removable(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("jo"), password=PASSWORD)
    with pytest.raises(Invalid):
        _update(rec, tenant, user.id, _profile("jo"), password="short")
    _update(rec, tenant, user.id, _profile("jo"), password="another good one")
    stored = _reload(rec, tenant, user.id)
    assert env.ctx.passwords.verify("another good one", stored.password_hash)[0] is True
    assert env.ctx.passwords.verify(PASSWORD, stored.password_hash)[0] is False
    kept = _update(rec, tenant, user.id, _profile("jo", title="kept"))  # KEEP_PASSWORD by default
    assert kept.password_hash == stored.password_hash
    _update(rec, tenant, user.id, _profile("jo"), password=None)
    assert _reload(rec, tenant, user.id).password_hash is None


# --- disable, enable, unassigned ---------------------------------------------------------------------


def _set_active(rec: Recorder, tenant: TenantInfo, user_id: uuid.UUID, active: bool, **kw: Any) -> User:
    async def work() -> User:
        async with rec.uow() as uow:
            users = rec.directory(uow).users
            return await users.set_active(await users.get(tenant.id, user_id), active, **kw)

    user: User = rec.env.run(work)
    return user


def _subject_revoked(env: Env, tenant: TenantInfo, user_id: uuid.UUID, iat: float) -> bool:
    return env.ctx.revocations.is_revoked(tenant.key, {"sub": str(user_id), "jti": uuid.uuid4().hex, "iat": iat})


def test_disable_revokes_every_session_grant_refresh_and_access_token(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("kim"))
    access = seed_access(env, tenant, user.id)
    issued = time.time() - 5
    assert env.run(revoked, env, access) == (False, False, False)
    rec.clear()

    disabled = _set_active(rec, tenant, user.id, False, expected_versions=[1])
    assert disabled.enabled is False and not is_live(disabled) and disabled.version == 2
    assert rec.kinds() == ["RevocationRecorded", "UserDisabled"]
    assert rec.published[-1] == UserDisabled(tenant_id=tenant.id, user_id=user.id)
    (revocation,) = rec.of(RevocationRecorded)
    assert (revocation.kind, revocation.value) == ("subject", str(user.id))
    assert revocation.expires_at - revocation.created_at == pytest.approx(env.ctx.settings.tokens.access_token_ttl)
    assert env.run(revoked, env, access) == (True, True, True)
    rows = select(Revocation).where(Revocation.tenant_id == tenant.id, Revocation.value == str(user.id))
    assert env.run(count, env, rows) == 1
    assert _subject_revoked(env, tenant, user.id, issued)  # tokens already issued are refused
    assert env.run(audit_actions, env, tenant.id, user.id) == ["user.create", "user.disable"]

    # Disabling again changes nothing and says nothing.
    rec.clear()
    assert _set_active(rec, tenant, user.id, False).version == 2
    assert rec.published == []


def test_enable_raises_user_enabled_and_does_not_restore_revoked_access(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("lea", active=False))
    assert not is_live(_reload(rec, tenant, user.id))
    rec.clear()
    enabled = _set_active(rec, tenant, user.id, True)
    assert enabled.enabled is True and is_live(enabled)
    assert rec.kinds() == ["UserEnabled"]
    assert rec.published[0] == UserEnabled(tenant_id=tenant.id, user_id=user.id)
    rec.clear()
    _set_active(rec, tenant, user.id, True)
    assert rec.published == []
    with pytest.raises(PreconditionFailed):
        _set_active(rec, tenant, user.id, False, expected_versions=[1])


def test_update_to_inactive_cuts_off_in_the_same_commit(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("max"))
    access = seed_access(env, tenant, user.id)
    rec.clear()
    _update(rec, tenant, user.id, _profile("max", active=False))
    assert rec.kinds() == ["UserUpdated", "RevocationRecorded", "UserDisabled"]
    assert "active" in rec.of(UserUpdated)[0].changed
    assert env.run(revoked, env, access) == (True, True, True)


def test_active_unassigned_is_not_live(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    # Created unassigned: stored NULL, not live, and nothing to cut off.
    created = _create(rec, tenant, _profile("ned", active=None))
    stored = _reload(rec, tenant, created.id)
    assert stored.enabled is None and not is_live(stored)
    assert rec.kinds() == ["UserCreated"]

    # A live account whose ``active`` becomes unassigned is cut off like a disabled one.
    live = _create(rec, tenant, _profile("ola"))
    access = seed_access(env, tenant, live.id)
    rec.clear()
    _update(rec, tenant, live.id, _profile("ola", active=None))
    assert _reload(rec, tenant, live.id).enabled is None
    assert rec.kinds() == ["UserUpdated", "RevocationRecorded", "UserDisabled"]
    assert env.run(revoked, env, access) == (True, True, True)

    # Only an explicit true lets it back in.
    rec.clear()
    _set_active(rec, tenant, live.id, True)
    assert rec.kinds() == ["UserEnabled"]
    assert is_live(_reload(rec, tenant, live.id))


def test_is_live_rule() -> None:
    class Row:
        def __init__(self, enabled: bool | None, deleted: bool = False) -> None:
            self.enabled, self.deleted_at = enabled, (time.time() if deleted else None)

    assert is_live(Row(True)) is True
    assert is_live(Row(False)) is False
    assert is_live(Row(None)) is False
    assert is_live(Row(True, deleted=True)) is False
    assert is_live(None) is False


# --- delete ------------------------------------------------------------------------------------------


def test_delete_archives_cuts_off_and_frees_the_username_for_a_rehire(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(
        rec,
        tenant,
        _profile("Pam", title="Clerk", values=(_email("pam@example.com"),)),
        password=PASSWORD,
    )
    access = seed_access(env, tenant, user.id)
    operator = Actor("cli", "ops-anna")

    async def setup_group() -> uuid.UUID:
        async with rec.uow() as uow:
            groups = rec.directory(uow).groups
            group = await groups.create(tenant.id, name="Sales")
            await groups.add_members(group, MemberIds(users=frozenset({user.id})))
        return group.id

    group_id = env.run(setup_group)
    rec.clear()

    async def delete() -> None:
        async with rec.uow(actor=operator) as uow:
            users = rec.directory(uow).users
            await users.delete(await users.get(tenant.id, user.id), expected_versions=[1])
            assert rec.published == []

    env.run(delete)
    assert rec.kinds() == ["RevocationRecorded", "UserDeleted"]
    assert rec.of(UserDeleted)[0].username == "pam"
    gone = _reload(rec, tenant, user.id)
    assert gone.deleted_at is not None and gone.deleted_by == "cli:ops-anna"
    assert gone.password_hash is None and gone.enabled is False and not is_live(gone)
    archive = gone.archive
    assert archive is not None
    assert archive["userName"] == "Pam" and archive["active"] is True and archive["title"] == "Clerk"
    assert archive["email"] == "pam@example.com"
    assert archive["values"] == [{"attribute": "emails", "value": "pam@example.com", "type": "work", "primary": True}]
    assert archive["groups"] == [{"id": str(group_id), "displayName": "Sales"}]
    assert archive["created"] == gone.created_at.isoformat()
    assert env.run(revoked, env, access) == (True, True, True)
    assert env.run(count, env, select(GroupMember).where(GroupMember.group_id == group_id)) == 0

    async def lookups() -> tuple[bool, Any]:
        async with rec.uow() as uow:
            users = rec.directory(uow).users
            try:
                await users.get(tenant.id, user.id)
                missing = False
            except NotFound:
                missing = True
            return missing, await users.find(tenant.id, "pam")

    assert env.run(lookups) == (True, None)

    # Re-hire: the same username is free again; the archived row stays.
    rehired = _create(rec, tenant, _profile("PAM"))
    assert rehired.id != user.id and rehired.username == "pam"
    rows = select(User).where(User.tenant_id == tenant.id, User.username == "pam")
    assert env.run(count, env, rows) == 2
    actions = env.run(audit_actions, env, tenant.id, user.id)
    assert actions[0] == "user.create" and actions[-1] == "user.delete"


def test_delete_with_stale_version_is_precondition_failed(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("quinn"))
    _update(rec, tenant, user.id, _profile("quinn", title="v2"))
    rec.clear()

    async def delete() -> None:
        async with rec.uow() as uow:
            users = rec.directory(uow).users
            await users.delete(await users.get(tenant.id, user.id), expected_versions=[1])

    with pytest.raises(PreconditionFailed):
        env.run(delete)
    assert _reload(rec, tenant, user.id).deleted_at is None
    assert rec.published == []


def test_deleted_user_can_not_be_disabled_or_found_by_get(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    user = _create(rec, tenant, _profile("rae"))

    async def delete() -> None:
        async with rec.uow() as uow:
            users = rec.directory(uow).users
            await users.delete(await users.get(tenant.id, user.id))

    env.run(delete)
    with pytest.raises(NotFound):
        _set_active(rec, tenant, user.id, False)
    with pytest.raises(NotFound):
        _update(rec, tenant, user.id, _profile("rae"))
