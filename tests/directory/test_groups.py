"""Groups of the directory, through its commands (not through SCIM): names, members, nesting, events."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from sqlalchemy import select

from idhub.directory import Directory
from idhub.directory.groups import MAX_NESTING, Member, MemberIds, Membership
from idhub.directory.profile import UserProfile
from idhub.errors import Conflict, Invalid, NotFound, PreconditionFailed
from idhub.events import GroupCreated, GroupDeleted, GroupUpdated, MembershipChanged
from idhub.storage.models import Group, GroupMember, User
from idhub.tenants.service import TenantInfo
from tests.conftest import Env
from tests.directory.helpers import Recorder, audit_actions, count

T = TypeVar("T")


def _in_uow(rec: Recorder, work: Callable[[Directory], Awaitable[T]]) -> T:
    """Run ``work`` with the directory of one recorded unit of work (committed when it returns)."""

    async def run() -> T:
        async with rec.uow() as uow:
            return await work(rec.directory(uow))

    result: T = rec.env.run(run)
    return result


def _users(rec: Recorder, tenant: TenantInfo, *names: str) -> list[uuid.UUID]:
    async def work(d: Directory) -> list[uuid.UUID]:
        return [(await d.users.create(tenant.id, UserProfile(user_name=name))).id for name in names]

    ids = _in_uow(rec, work)
    rec.clear()
    return ids


def _group(rec: Recorder, tenant: TenantInfo, name: str, members: MemberIds | None = None) -> Group:
    async def work(d: Directory) -> Group:
        return await d.groups.create(tenant.id, name=name, members=members)

    return _in_uow(rec, work)


def _users_of(*ids: uuid.UUID) -> MemberIds:
    return MemberIds(users=frozenset(ids))


def _groups_of(*ids: uuid.UUID) -> MemberIds:
    return MemberIds(groups=frozenset(ids))


async def _memberships(d: Directory, user_id: uuid.UUID) -> set[tuple[str, bool]]:
    found = await d.groups.groups_of([user_id])
    return {(m.name, m.direct) for m in found.get(user_id, [])}


async def _member_ids(d: Directory, group_id: uuid.UUID) -> set[uuid.UUID]:
    return {m.id for m in await d.groups.members_of(group_id)}


# --- create, rename, delete --------------------------------------------------------------------------


def test_create_group_strips_the_name_and_publishes_group_created_after_commit(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)

    async def work(d: Directory) -> Group:
        group = await d.groups.create(tenant.id, name="  Engineering ", external_id="hr-42")
        assert rec.published == []
        return group

    group = _in_uow(rec, work)
    assert (group.display_name, group.display_name_key, group.external_id) == ("Engineering", "engineering", "hr-42")
    assert rec.published == [GroupCreated(tenant_id=tenant.id, group_id=group.id, name="Engineering")]

    async def find(d: Directory) -> tuple[uuid.UUID | None, uuid.UUID]:
        found = await d.groups.find(tenant.id, " ENGINEERING")
        return (found.id if found else None), (await d.groups.get(tenant.id, group.id)).id

    assert _in_uow(rec, find) == (group.id, group.id)
    assert env.run(audit_actions, env, tenant.id, group.id) == ["group.create"]


def test_duplicate_group_name_is_a_conflict_case_insensitively(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    _group(rec, tenant, "Ops")
    rec.clear()
    with pytest.raises(Conflict):
        _group(rec, tenant, "OPS")
    assert rec.published == []
    assert env.run(lambda: _count_groups(env, tenant)) == 1
    _group(rec, env.tenant(), "Ops")  # another tenant's directory is independent


async def _count_groups(env: Env, tenant: TenantInfo) -> int:
    return await count(env, select(Group).where(Group.tenant_id == tenant.id))


def test_work_after_a_refused_duplicate_name_still_commits(env: Env) -> None:
    """A Conflict undoes only the refused command: the unit of work goes on and commits the rest."""
    tenant, rec = env.tenant(), Recorder(env)
    _group(rec, tenant, "Ops")
    rec.clear()

    async def work(d: Directory) -> None:
        await d.groups.create(tenant.id, name="Before")
        with pytest.raises(Conflict):
            await d.groups.create(tenant.id, name="ops")
        await d.groups.create(tenant.id, name="After")

    _in_uow(rec, work)
    assert sorted(e.name for e in rec.of(GroupCreated)) == ["After", "Before"]
    assert env.run(lambda: _count_groups(env, tenant)) == 3


@pytest.mark.parametrize("name", ["", "   ", "tab\tinside", "nul\x00", "x" * 256])
def test_group_name_breaking_the_rule_is_invalid(env: Env, name: str) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    with pytest.raises(Invalid, match="displayName"):
        _group(rec, tenant, name)


def test_rename_bumps_the_version_and_checks_it(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    group = _group(rec, tenant, "Sales")
    _group(rec, tenant, "Marketing")
    rec.clear()

    async def rename(d: Directory, name: str, external_id: str | None, versions: list[int] | None) -> Group:
        return await d.groups.update(
            await d.groups.get(tenant.id, group.id), name=name, external_id=external_id, expected_versions=versions
        )

    renamed = _in_uow(rec, lambda d: rename(d, "Sales EMEA", "x-1", [1]))
    assert (renamed.display_name, renamed.display_name_key, renamed.version) == ("Sales EMEA", "sales emea", 2)
    assert rec.published == [
        GroupUpdated(tenant_id=tenant.id, group_id=group.id, changed=("displayName", "externalId"))
    ]
    rec.clear()
    with pytest.raises(PreconditionFailed):
        _in_uow(rec, lambda d: rename(d, "Stale", None, [1]))
    with pytest.raises(Conflict):
        _in_uow(rec, lambda d: rename(d, "MARKETING", None, None))
    assert rec.published == []
    # Same name in another case: a change of the name as written, still its own key.
    assert _in_uow(rec, lambda d: rename(d, "SALES emea", "x-1", [2])).display_name == "SALES emea"
    # Nothing changed: no event, but the version still moves (every write is one).
    rec.clear()
    assert _in_uow(rec, lambda d: rename(d, "SALES emea", "x-1", None)).version == 4
    assert rec.published == []


def test_delete_group_removes_its_memberships_and_keeps_its_members(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    (uid,) = _users(rec, tenant, "uma")
    child = _group(rec, tenant, "Child", _users_of(uid))
    parent = _group(rec, tenant, "Parent", _groups_of(child.id))
    rec.clear()

    async def delete(d: Directory) -> None:
        await d.groups.delete(await d.groups.get(tenant.id, child.id), expected_versions=[1])

    _in_uow(rec, delete)
    assert rec.published == [GroupDeleted(tenant_id=tenant.id, group_id=child.id, name="Child")]

    async def after(d: Directory) -> tuple[set[uuid.UUID], set[tuple[str, bool]], uuid.UUID]:
        with pytest.raises(NotFound):
            await d.groups.get(tenant.id, child.id)
        return await _member_ids(d, parent.id), await _memberships(d, uid), (await d.users.get(tenant.id, uid)).id

    assert _in_uow(rec, after) == (set(), set(), uid)
    assert env.run(count, env, select(GroupMember).where(GroupMember.group_id == child.id)) == 0
    assert env.run(audit_actions, env, tenant.id, child.id) == ["group.create", "group.members", "group.delete"]


def test_delete_group_with_stale_version_is_precondition_failed(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    group = _group(rec, tenant, "Temp")

    async def rename(d: Directory) -> None:
        await d.groups.update(await d.groups.get(tenant.id, group.id), name="Temp2", external_id=None)

    async def delete(d: Directory) -> None:
        await d.groups.delete(await d.groups.get(tenant.id, group.id), expected_versions=[1])

    _in_uow(rec, rename)
    rec.clear()
    with pytest.raises(PreconditionFailed):
        _in_uow(rec, delete)
    assert rec.published == []
    assert env.run(lambda: _count_groups(env, tenant)) == 1


# --- members -----------------------------------------------------------------------------------------


def test_create_with_members_add_and_remove(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    a, b, c = _users(rec, tenant, "amy", "bo", "cy")
    group = _group(rec, tenant, "Team", _users_of(a, b))
    assert rec.kinds() == ["GroupCreated", "MembershipChanged"]
    assert rec.of(MembershipChanged)[0].added == tuple(sorted((str(a), str(b))))
    rec.clear()

    async def version(d: Directory) -> int:
        return (await d.groups.get(tenant.id, group.id)).version

    v1 = _in_uow(rec, version)

    async def add(d: Directory) -> set[uuid.UUID]:
        g = await d.groups.get(tenant.id, group.id)
        await d.groups.add_members(g, _users_of(b, c))  # b is already in: only c is added
        return await _member_ids(d, group.id)

    assert _in_uow(rec, add) == {a, b, c}
    v2 = _in_uow(rec, version)
    assert v2 == v1 + 1  # the members are part of the representation: its version (ETag) moves
    assert rec.published == [MembershipChanged(tenant_id=tenant.id, group_id=group.id, added=(str(c),), removed=())]
    rec.clear()

    async def remove(d: Directory) -> set[uuid.UUID]:
        g = await d.groups.get(tenant.id, group.id)
        await d.groups.remove_members(g, _users_of(a, uuid.uuid4()))  # an absent one is ignored
        return await _member_ids(d, group.id)

    assert _in_uow(rec, remove) == {b, c}
    assert _in_uow(rec, version) == v2 + 1
    assert rec.published == [MembershipChanged(tenant_id=tenant.id, group_id=group.id, added=(), removed=(str(a),))]
    rec.clear()

    async def nothing(d: Directory) -> None:
        g = await d.groups.get(tenant.id, group.id)
        await d.groups.add_members(g, _users_of(b))
        await d.groups.remove_members(g, _users_of(a))

    _in_uow(rec, nothing)
    assert rec.published == []  # no change, no event
    assert _in_uow(rec, version) == v2 + 1  # and no new version


def test_members_of_lists_users_then_groups_with_names(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)

    async def setup(d: Directory) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        named = await d.users.create(tenant.id, UserProfile(user_name="Dee", display_name="Dee Dee"))
        plain = await d.users.create(tenant.id, UserProfile(user_name="Eli"))
        inner = await d.groups.create(tenant.id, name="Inner")
        outer = await d.groups.create(
            tenant.id, name="Outer", members=MemberIds(frozenset({named.id, plain.id}), frozenset({inner.id}))
        )
        return outer.id, named.id, plain.id

    outer, named, plain = _in_uow(rec, setup)
    inner = _in_uow(rec, lambda d: d.groups.find(tenant.id, "inner"))
    assert inner is not None

    async def read(d: Directory) -> list[Member]:
        return await d.groups.members_of(outer)

    members = _in_uow(rec, read)
    assert members[-1] == Member("Group", inner.id, "Inner")
    assert sorted(members[:2], key=lambda m: m.name) == [Member("User", named, "Dee Dee"), Member("User", plain, "Eli")]


def test_set_members_replaces_them_in_one_event(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    a, b, c = _users(rec, tenant, "al", "bea", "cal")
    sub = _group(rec, tenant, "Sub")
    group = _group(rec, tenant, "Main", _users_of(a, b))
    rec.clear()

    async def replace(d: Directory) -> set[uuid.UUID]:
        g = await d.groups.get(tenant.id, group.id)
        await d.groups.update(
            g, name="Main", external_id=None, members=MemberIds(frozenset({b, c}), frozenset({sub.id}))
        )
        return await _member_ids(d, group.id)

    assert _in_uow(rec, replace) == {b, c, sub.id}
    assert rec.published == [
        MembershipChanged(
            tenant_id=tenant.id, group_id=group.id, added=tuple(sorted((str(c), str(sub.id)))), removed=(str(a),)
        )
    ]
    rec.clear()

    async def empty(d: Directory) -> set[uuid.UUID]:
        g = await d.groups.get(tenant.id, group.id)
        await d.groups.update(g, name="Main", external_id=None, members=MemberIds())
        return await _member_ids(d, group.id)

    assert _in_uow(rec, empty) == set()
    (changed,) = rec.of(MembershipChanged)
    assert set(changed.removed) == {str(b), str(c), str(sub.id)} and changed.added == ()


def test_members_must_exist_live_in_the_same_tenant(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    other = env.tenant()
    (stranger,) = _users(rec, other, "stranger")
    foreign_group = _group(rec, other, "Foreign")
    (gone,) = _users(rec, tenant, "gone")

    async def delete(d: Directory) -> None:
        await d.users.delete(await d.users.get(tenant.id, gone))

    _in_uow(rec, delete)
    group = _group(rec, tenant, "Home")
    rec.clear()
    for wanted in (_users_of(stranger), _users_of(gone), _users_of(uuid.uuid4()), _groups_of(foreign_group.id)):

        async def add(d: Directory, wanted: MemberIds = wanted) -> None:
            await d.groups.add_members(await d.groups.get(tenant.id, group.id), wanted)

        with pytest.raises(Invalid, match="does not exist"):
            _in_uow(rec, add)
    with pytest.raises(Invalid):
        _group(rec, tenant, "WithStranger", _users_of(stranger))
    assert rec.published == []
    assert env.run(count, env, select(GroupMember).where(GroupMember.group_id == group.id)) == 0


def test_resolve_members_sorts_untyped_references(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    (uid,) = _users(rec, tenant, "ref")
    group = _group(rec, tenant, "Ref")
    typed_group = uuid.uuid4()

    async def resolve(d: Directory) -> MemberIds:
        return await d.groups.resolve_members(tenant.id, [(None, uid), (None, group.id), ("Group", typed_group)])

    resolved = _in_uow(rec, resolve)
    assert resolved == MemberIds(frozenset({uid}), frozenset({group.id, typed_group}))


# --- nesting -----------------------------------------------------------------------------------------


def _nest(rec: Recorder, tenant: TenantInfo, parent: Group, child: Group) -> None:
    async def work(d: Directory) -> None:
        await d.groups.add_members(await d.groups.get(tenant.id, parent.id), _groups_of(child.id))

    _in_uow(rec, work)


def test_groups_of_returns_direct_and_indirect_memberships(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    u, v, w = _users(rec, tenant, "u", "v", "w")
    team = _group(rec, tenant, "Team", _users_of(u))
    dept = _group(rec, tenant, "Dept", _groups_of(team.id))
    org = _group(rec, tenant, "Org", MemberIds(frozenset({v}), frozenset({dept.id})))
    side = _group(rec, tenant, "Side", _groups_of(team.id))  # a second path up from Team
    _group(rec, tenant, "Unrelated", _users_of(w))

    async def read(d: Directory) -> dict[uuid.UUID, list[Membership]]:
        return await d.groups.groups_of([u, v, uuid.uuid4()])

    found = _in_uow(rec, read)
    assert set(found) == {u, v}
    assert found[u][0] == Membership(team.id, "Team", True)
    assert {(m.name, m.direct) for m in found[u]} == {("Team", True), ("Dept", False), ("Org", False), ("Side", False)}
    assert len(found[u]) == 4  # each group once, however many paths lead to it
    assert found[v] == [Membership(org.id, "Org", True)]

    # A direct membership is reported as direct even when a nested path also leads there.
    async def join_org(d: Directory) -> set[tuple[str, bool]]:
        await d.groups.add_members(await d.groups.get(tenant.id, org.id), _users_of(u))
        return await _memberships(d, u)

    assert _in_uow(rec, join_org) == {("Team", True), ("Org", True), ("Dept", False), ("Side", False)}
    assert side.id in {m.group_id for m in _in_uow(rec, read)[u]}
    assert _in_uow(rec, lambda d: d.groups.groups_of([w, u]))[w][0].name == "Unrelated"


def test_groups_of_without_memberships_is_empty(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    (loner,) = _users(rec, tenant, "loner")
    assert _in_uow(rec, lambda d: d.groups.groups_of([loner])) == {}


def test_a_group_can_not_contain_itself_directly_or_transitively(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    a = _group(rec, tenant, "A")
    b = _group(rec, tenant, "B")
    c = _group(rec, tenant, "C")
    _nest(rec, tenant, a, b)  # A contains B
    _nest(rec, tenant, b, c)  # B contains C
    rec.clear()
    for parent, child in ((a, a), (b, a), (c, a), (c, b)):
        with pytest.raises(Invalid, match="member of itself"):
            _nest(rec, tenant, parent, child)

    async def set_members(d: Directory) -> None:
        g = await d.groups.get(tenant.id, c.id)
        await d.groups.update(g, name="C", external_id=None, members=_groups_of(a.id))

    with pytest.raises(Invalid, match="member of itself"):
        _in_uow(rec, set_members)
    assert rec.published == []
    nested = select(GroupMember).where(GroupMember.member_group_id.in_([a.id, b.id, c.id]))
    assert env.run(count, env, nested) == 2  # only A>B and B>C
    # A diamond is not a cycle: A also contains C directly.
    _nest(rec, tenant, a, c)
    assert env.run(count, env, nested) == 3


def test_nesting_deeper_than_the_bound_is_refused(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)

    async def chain(d: Directory) -> list[uuid.UUID]:
        ids: list[uuid.UUID] = []
        for level in range(MAX_NESTING + 1):
            members = _groups_of(ids[-1]) if ids else None
            ids.append((await d.groups.create(tenant.id, name=f"level-{level}", members=members)).id)
        return ids

    with pytest.raises(Invalid, match="nested too deeply"):
        _in_uow(rec, chain)


# --- events and transactions -------------------------------------------------------------------------


def test_events_of_a_unit_of_work_that_fails_are_never_published(env: Env) -> None:
    tenant, rec = env.tenant(), Recorder(env)
    (uid,) = _users(rec, tenant, "zed")

    async def work() -> uuid.UUID:
        async with rec.uow() as uow:
            d = rec.directory(uow)
            group = await d.groups.create(tenant.id, name="Doomed", members=_users_of(uid))
            assert [type(e).__name__ for e in uow.events] == ["GroupCreated", "MembershipChanged"]
            raise RuntimeError(str(group.id))

    with pytest.raises(RuntimeError) as raised:
        env.run(work)
    assert rec.published == [] and rec.refused == []  # successes are not refusals
    assert env.run(lambda: _count_groups(env, tenant)) == 0
    assert env.run(audit_actions, env, tenant.id, str(raised.value)) == []
    assert env.run(count, env, select(User).where(User.tenant_id == tenant.id)) == 1
