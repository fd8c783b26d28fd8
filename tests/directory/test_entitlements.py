"""Access policies and entitlements, through the directory's service (not through a surface)."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import insert, select

from idhub.directory import Directory
from idhub.directory.entitlements import (
    UNGOVERNED,
    Entitlement,
    granted_scopes,
    person_entitlement,
)
from idhub.directory.profile import UserProfile
from idhub.errors import Conflict, Invalid, NotFound
from idhub.events import GrantRevoked, PolicyChanged, PolicyCreated, PolicyDeleted
from idhub.storage.base import utcnow
from idhub.storage.models import Client
from idhub.storage.tables import GRANTS, REFRESH_TOKENS
from idhub.tenants.service import TenantInfo
from tests.conftest import Env
from tests.directory.helpers import Recorder, audit_actions
from tests.directory.policy_helpers import (
    delete_policy,
    grant_revoked,
    make_group,
    make_policy,
    remove_member,
    seed_refresh,
    update_policy,
)

T = TypeVar("T")
APP = {"redirect_uris": ["https://rp.example/cb"], "scope": "openid profile email x y z"}


def _in_uow(env: Env, work: Callable[[Directory], Awaitable[T]]) -> T:
    async def run() -> T:
        async with env.uow() as uow:
            return await work(env.ctx.directory(uow))

    result: T = env.run(run)
    return result


def _client_pk(env: Env, tenant: TenantInfo, client_id: str) -> uuid.UUID:
    async def work() -> uuid.UUID:
        async with env.ctx.sessionmaker() as session:
            found = await session.scalar(
                select(Client.id).where(Client.tenant_id == tenant.id, Client.client_id == client_id)
            )
            assert found is not None
            return found

    result: uuid.UUID = env.run(work)
    return result


def _entitlement(env: Env, tenant: TenantInfo, client_id: str, user_id: str) -> Entitlement:
    client_pk = _client_pk(env, tenant, client_id)

    async def work() -> Entitlement:
        async with env.ctx.sessionmaker() as session:
            return await person_entitlement(session, client_pk=client_pk, user_id=uuid.UUID(user_id))

    result: Entitlement = env.run(work)
    return result


def _setup(env: Env) -> tuple[TenantInfo, str]:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, **APP)
    return tenant, client_id


# --- the rule ------------------------------------------------------------------------------------------


def test_granted_scopes_ungoverned_requested_intersect_allowed() -> None:
    granted = granted_scopes(["openid", "x", "nope", "x"], allowed={"openid", "x", "y"}, entitlement=UNGOVERNED)
    assert granted == ("openid", "x")


def test_granted_scopes_governed_keeps_openid_and_entitled_only() -> None:
    entitlement = Entitlement(governed=True, scopes=frozenset({"x", "z"}))
    granted = granted_scopes(["openid", "x", "y", "z"], allowed={"openid", "x", "y"}, entitlement=entitlement)
    assert granted == ("openid", "x")


def test_person_entitlement_client_without_policy_ungoverned(env: Env) -> None:
    tenant, client_id = _setup(env)
    alice = env.user(tenant, "alice", password=None)
    assert _entitlement(env, tenant, client_id, alice) == UNGOVERNED


def test_person_entitlement_union_of_groups_nested_included(env: Env) -> None:
    tenant, client_id = _setup(env)
    alice, bob = env.user(tenant, "alice", password=None), env.user(tenant, "bob", password=None)
    inner = make_group(env, tenant, "inner", users=[alice])
    outer = make_group(env, tenant, "outer", groups=[inner])
    other = make_group(env, tenant, "other", users=[alice, bob])
    make_policy(env, tenant, client_id, outer, "x")
    make_policy(env, tenant, client_id, other, "y")
    assert _entitlement(env, tenant, client_id, alice) == Entitlement(True, frozenset({"x", "y"}))
    assert _entitlement(env, tenant, client_id, bob) == Entitlement(True, frozenset({"y"}))
    nobody = env.user(tenant, "carol", password=None)
    assert _entitlement(env, tenant, client_id, nobody) == Entitlement(True, frozenset())


def test_machine_policy_alone_governs_people_too(env: Env) -> None:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(
        tenant, scope="openid x", redirect_uris=["https://rp.example/cb"],
        grant_types=["authorization_code", "client_credentials"],
    )  # fmt: skip
    alice = env.user(tenant, "alice", password=None)
    make_policy(env, tenant, client_id, None, "x")
    assert _entitlement(env, tenant, client_id, alice) == Entitlement(True, frozenset())


# --- policies: validation, tenancy, listing, audit -------------------------------------------------------


@pytest.mark.parametrize("scope", ["", "  ", 'x"y', "x\\y", "ünï"])
def test_policy_create_malformed_scope_invalid(env: Env, scope: str) -> None:
    tenant, client_id = _setup(env)
    group = make_group(env, tenant, "g")
    with pytest.raises(Invalid):
        make_policy(env, tenant, client_id, group, scope)


def test_policy_create_scope_outside_client_allowed_invalid(env: Env) -> None:
    tenant, client_id = _setup(env)
    group = make_group(env, tenant, "g")
    with pytest.raises(Invalid, match="admin"):
        make_policy(env, tenant, client_id, group, "x admin")


def test_policy_machine_needs_client_credentials_and_no_person_scopes(env: Env) -> None:
    tenant, client_id = _setup(env)  # a code client
    with pytest.raises(Invalid, match="client_credentials"):
        make_policy(env, tenant, client_id, None, "x")
    machine_id, _ = env.oauth_client(tenant, scope="openid api", grant_types=["client_credentials"])
    with pytest.raises(Invalid, match="openid"):
        make_policy(env, tenant, machine_id, None, "api openid")
    make_policy(env, tenant, machine_id, None, "api")


def test_policy_duplicate_subject_conflict(env: Env) -> None:
    tenant, client_id = _setup(env)
    group = make_group(env, tenant, "g")
    make_policy(env, tenant, client_id, group, "x")
    with pytest.raises(Conflict):
        make_policy(env, tenant, client_id, group, "y")
    machine_id, _ = env.oauth_client(tenant, scope="api", grant_types=["client_credentials"])
    make_policy(env, tenant, machine_id, None, "api")
    with pytest.raises(Conflict):
        make_policy(env, tenant, machine_id, None, "api")


def test_policy_other_tenants_objects_not_found(env: Env) -> None:
    tenant, client_id = _setup(env)
    other, other_client = _setup(env)
    group = make_group(env, tenant, "g")
    other_group = make_group(env, other, "g")
    with pytest.raises(NotFound):
        make_policy(env, tenant, other_client, group, "x")
    with pytest.raises(NotFound):
        make_policy(env, tenant, client_id, other_group, "x")
    policy_id = make_policy(env, other, other_client, other_group, "x")
    with pytest.raises(NotFound):
        _in_uow(env, lambda d: d.entitlements.get(tenant.id, policy_id))
    with pytest.raises(NotFound):
        update_policy(env, tenant, policy_id, "y")
    with pytest.raises(NotFound):
        delete_policy(env, tenant, policy_id)
    with pytest.raises(NotFound):
        _in_uow(env, lambda d: d.entitlements.report(tenant.id, client_id=other_client))
    assert _in_uow(env, lambda d: d.entitlements.get(other.id, policy_id)).scopes == ("x",)


def test_policy_list_filters_by_client_and_group(env: Env) -> None:
    tenant, first = _setup(env)
    second, _ = env.oauth_client(tenant, **APP)
    a, b = make_group(env, tenant, "A"), make_group(env, tenant, "B")
    p1 = make_policy(env, tenant, first, a, "x")
    p2 = make_policy(env, tenant, first, b, "y z")
    p3 = make_policy(env, tenant, second, a, "profile")
    assert {p.id for p in _in_uow(env, lambda d: d.entitlements.list(tenant.id))} == {p1, p2, p3}
    by_client = _in_uow(env, lambda d: d.entitlements.list(tenant.id, client_id=first))
    assert [(p.id, p.group_name, p.scopes) for p in by_client] == [(p1, "A", ("x",)), (p2, "B", ("y", "z"))]
    assert {p.id for p in _in_uow(env, lambda d: d.entitlements.list(tenant.id, group_id=a))} == {p1, p3}


def test_policy_writes_audited_and_published_after_commit(env: Env) -> None:
    tenant, client_id = _setup(env)
    group = make_group(env, tenant, "g")
    rec = Recorder(env)

    async def run(work: Callable[[Directory], Awaitable[Any]]) -> Any:
        async with rec.uow() as uow:
            return await work(rec.directory(uow))

    view = env.run(run, lambda d: d.entitlements.create(tenant.id, client_id=client_id, group_id=group, scopes="x"))
    env.run(run, lambda d: d.entitlements.update(tenant.id, view.id, scopes="x y"))
    env.run(run, lambda d: d.entitlements.delete(tenant.id, view.id))
    assert [type(e) for e in rec.of(PolicyChanged)] == [PolicyCreated, PolicyChanged, PolicyDeleted]
    assert rec.of(PolicyChanged)[1].details() == {"client_id": client_id, "group_id": str(group), "scope": "x y"}
    assert env.run(audit_actions, env, tenant.id, view.id) == ["policy.create", "policy.update", "policy.delete"]


def test_policy_change_reaches_cached_client_at_once(env: Env) -> None:
    tenant = env.tenant()
    client_id, _ = env.oauth_client(tenant, scope="api read", grant_types=["client_credentials"])
    before = env.run(env.ctx.clients.get, tenant.id, client_id)
    assert before is not None and not before.governed
    policy = make_policy(env, tenant, client_id, None, "read")
    after = env.run(env.ctx.clients.get, tenant.id, client_id)
    assert after is not None and after.governed and after.machine_scopes == {"read"}
    delete_policy(env, tenant, policy)
    last = env.run(env.ctx.clients.get, tenant.id, client_id)
    assert last is not None and not last.governed


# --- revocation when an entitlement goes away ------------------------------------------------------------


def test_policy_delete_revokes_refresh_tokens_carrying_its_scope(env: Env) -> None:
    tenant, client_id = _setup(env)
    alice, bob = env.user(tenant, "alice", password=None), env.user(tenant, "bob", password=None)
    a = make_group(env, tenant, "A", users=[alice, bob])
    b = make_group(env, tenant, "B", users=[alice])
    make_policy(env, tenant, client_id, a, "x")
    policy_b = make_policy(env, tenant, client_id, b, "y")
    alice_xy = seed_refresh(env, tenant, client_id, alice, "openid x y")
    alice_x = seed_refresh(env, tenant, client_id, alice, "openid x")
    bob_x = seed_refresh(env, tenant, client_id, bob, "openid x")
    rec = Recorder(env)

    async def run() -> None:
        async with rec.uow() as uow:
            await rec.directory(uow).entitlements.delete(tenant.id, policy_b)

    env.run(run)
    assert grant_revoked(env, alice_xy)
    assert not grant_revoked(env, alice_x) and not grant_revoked(env, bob_x)
    assert [e.grant_id for e in rec.of(GrantRevoked)] == [alice_xy]
    assert rec.of(GrantRevoked)[0].reason == "entitlement removed"
    assert env.ctx.revocations.is_revoked(str(tenant.id), {"gid": alice_xy, "iat": time.time()})


def test_policy_narrowed_revokes_widened_does_not(env: Env) -> None:
    tenant, client_id = _setup(env)
    alice = env.user(tenant, "alice", password=None)
    group = make_group(env, tenant, "A", users=[alice])
    policy = make_policy(env, tenant, client_id, group, "x y")
    with_x = seed_refresh(env, tenant, client_id, alice, "x")
    with_y = seed_refresh(env, tenant, client_id, alice, "openid y")
    update_policy(env, tenant, policy, "x y z")
    assert not grant_revoked(env, with_x) and not grant_revoked(env, with_y)
    update_policy(env, tenant, policy, "x")
    assert grant_revoked(env, with_y) and not grant_revoked(env, with_x)


def test_first_policy_revokes_people_outside_its_group(env: Env) -> None:
    tenant, client_id = _setup(env)
    alice, carol = env.user(tenant, "alice", password=None), env.user(tenant, "carol", password=None)
    group = make_group(env, tenant, "A", users=[alice])
    alices = seed_refresh(env, tenant, client_id, alice, "openid profile")
    carols = seed_refresh(env, tenant, client_id, carol, "openid profile")
    carol_openid = seed_refresh(env, tenant, client_id, carol, "openid")
    make_policy(env, tenant, client_id, group, "profile")
    assert grant_revoked(env, carols)
    assert not grant_revoked(env, alices) and not grant_revoked(env, carol_openid)  # openid is never governed


def test_last_policy_deleted_client_open_again_nothing_revoked(env: Env) -> None:
    tenant, client_id = _setup(env)
    alice = env.user(tenant, "alice", password=None)
    group = make_group(env, tenant, "A", users=[alice])
    policy = make_policy(env, tenant, client_id, group, "x")
    grant = seed_refresh(env, tenant, client_id, alice, "openid x profile")  # profile: not entitled, but open soon
    delete_policy(env, tenant, policy)
    assert not grant_revoked(env, grant)
    assert _entitlement(env, tenant, client_id, alice) == UNGOVERNED


def test_member_removed_revokes_tokens_of_that_person_only(env: Env) -> None:
    tenant, client_id = _setup(env)
    alice, bob = env.user(tenant, "alice", password=None), env.user(tenant, "bob", password=None)
    group = make_group(env, tenant, "A", users=[alice, bob])
    make_policy(env, tenant, client_id, group, "x")
    alices, bobs = seed_refresh(env, tenant, client_id, alice, "x"), seed_refresh(env, tenant, client_id, bob, "x")
    other_client, _ = env.oauth_client(tenant, **APP)  # ungoverned: untouched
    alice_elsewhere = seed_refresh(env, tenant, other_client, alice, "x")
    remove_member(env, tenant, group, alice)
    assert grant_revoked(env, alices)
    assert not grant_revoked(env, bobs) and not grant_revoked(env, alice_elsewhere)


def test_member_removed_still_entitled_through_nesting_keeps_tokens(env: Env) -> None:
    tenant, client_id = _setup(env)
    alice = env.user(tenant, "alice", password=None)
    inner = make_group(env, tenant, "inner", users=[alice])
    outer = make_group(env, tenant, "outer", users=[alice], groups=[inner])
    make_policy(env, tenant, client_id, outer, "x")
    grant = seed_refresh(env, tenant, client_id, alice, "x")
    remove_member(env, tenant, outer, alice)
    assert not grant_revoked(env, grant)


def test_nested_group_removed_revokes_its_people(env: Env) -> None:
    tenant, client_id = _setup(env)
    alice = env.user(tenant, "alice", password=None)
    inner = make_group(env, tenant, "inner", users=[alice])
    outer = make_group(env, tenant, "outer", groups=[inner])
    make_policy(env, tenant, client_id, outer, "x")
    grant = seed_refresh(env, tenant, client_id, alice, "x")

    async def work(d: Directory) -> None:
        from idhub.directory.groups import MemberIds

        await d.groups.remove_members(await d.groups.get(tenant.id, outer), MemberIds(groups=frozenset({inner})))

    _in_uow(env, work)
    assert grant_revoked(env, grant)


def test_group_deleted_revokes_its_members_tokens(env: Env) -> None:
    tenant, client_id = _setup(env)
    alice = env.user(tenant, "alice", password=None)
    inner = make_group(env, tenant, "inner", users=[alice])
    outer = make_group(env, tenant, "outer", groups=[inner])
    keep = make_group(env, tenant, "keep")
    make_policy(env, tenant, client_id, outer, "x")
    make_policy(env, tenant, client_id, keep, "y")  # the client stays governed once outer is gone
    grant = seed_refresh(env, tenant, client_id, alice, "x")

    async def work(d: Directory) -> None:
        await d.groups.delete(await d.groups.get(tenant.id, outer))

    _in_uow(env, work)
    assert grant_revoked(env, grant)


def test_member_removed_from_large_group_bounded_statements(env: Env) -> None:
    """Removing a nested group of 1200 people revokes their 1200 grants in a few statements."""
    tenant, client_id = _setup(env)
    people = 1200
    ids = _in_uow(
        env,
        lambda d: d.users.create_many(tenant.id, [UserProfile(user_name=f"u{i:05d}") for i in range(people)]),
    )
    user_ids = [i for i in ids if isinstance(i, uuid.UUID)]
    assert len(user_ids) == people
    inner = make_group(env, tenant, "inner", users=user_ids)
    outer = make_group(env, tenant, "outer", groups=[inner])
    make_policy(env, tenant, client_id, outer, "x")
    client_pk = _client_pk(env, tenant, client_id)
    grants = [secrets.token_hex(8) for _ in user_ids]

    async def seed() -> None:
        now = utcnow()
        async with env.ctx.sessionmaker() as session:
            await session.execute(
                insert(GRANTS),
                [
                    {
                        "id": g,
                        "tenant_id": tenant.id,
                        "client_id": client_pk,
                        "user_id": u,
                        "scope": "x",
                        "created_at": now,
                    }
                    for g, u in zip(grants, user_ids, strict=True)
                ],
            )
            await session.execute(
                insert(REFRESH_TOKENS),
                [
                    {
                        "id": uuid.uuid4(),
                        "token_hash": secrets.token_hex(16),
                        "tenant_id": tenant.id,
                        "client_id": client_pk,
                        "grant_id": g,
                        "user_id": u,
                        "scope": "x",
                        "resources": [],
                        "amr": [],
                        "created_at": now,
                        "expires_at": now + timedelta(days=1),
                    }
                    for g, u in zip(grants, user_ids, strict=True)
                ],
            )
            await session.commit()

    env.run(seed)
    statements: list[str] = []

    async def work(d: Directory) -> None:
        from sqlalchemy import event

        from idhub.directory.groups import MemberIds

        sync_engine = d.groups.uow.session.bind.sync_engine  # type: ignore[union-attr]

        def count(*args: Any) -> None:
            statements.append(str(args[2])[:40])

        event.listen(sync_engine, "before_cursor_execute", count)
        try:
            group = await d.groups.get(tenant.id, outer)
            await d.groups.remove_members(group, MemberIds(groups=frozenset({inner})))
        finally:
            event.remove(sync_engine, "before_cursor_execute", count)

    started = time.perf_counter()
    _in_uow(env, work)
    elapsed = time.perf_counter() - started
    assert all(grant_revoked(env, g) for g in (grants[0], grants[people // 2], grants[-1]))
    # Fixed cost plus a few per chunk of 500 people / 1000 grants: never one per token.
    assert len(statements) < 40, statements
    print(f"\n[{env.backend}] removed a nested group of {people}: {len(statements)} statements, {elapsed:.2f} s")


# --- the report ---------------------------------------------------------------------------------------


def test_report_lists_open_governed_machine_and_people(env: Env) -> None:
    tenant = env.tenant()
    app, _ = env.oauth_client(tenant, name="App", **APP)
    open_app, _ = env.oauth_client(tenant, name="Open", redirect_uris=["https://rp.example/cb"], scope="openid profile")
    robot, _ = env.oauth_client(tenant, name="Robot", scope="api read", grant_types=["client_credentials"])
    alice, bob = env.user(tenant, "alice", password=None), env.user(tenant, "bob", password=None)
    gone = env.user(tenant, "gone", password=None)
    inner = make_group(env, tenant, "Inner", users=[alice, gone])
    outer = make_group(env, tenant, "Outer", users=[bob], groups=[inner])
    sales = make_group(env, tenant, "Sales", users=[alice])
    make_policy(env, tenant, app, outer, "x profile")
    make_policy(env, tenant, app, sales, "x y")
    make_policy(env, tenant, robot, None, "read")
    env.disable_user(tenant, gone)

    report = _in_uow(env, lambda d: d.entitlements.report(tenant.id, people=True)).to_dict()
    clients = {c["client_id"]: c for c in report["clients"]}
    assert clients[open_app]["governed"] is False
    assert clients[open_app]["open_to_all_users"] == ["openid", "profile"]
    assert clients[open_app]["machine_scopes"] is None and "people" not in clients[open_app]
    governed = clients[app]
    assert governed["governed"] is True and governed["open_to_all_users"] == ["openid"]
    assert governed["scopes"] == [
        {"scope": "profile", "groups": [{"id": str(outer), "name": "Outer"}]},
        {"scope": "x", "groups": [{"id": str(outer), "name": "Outer"}, {"id": str(sales), "name": "Sales"}]},
        {"scope": "y", "groups": [{"id": str(sales), "name": "Sales"}]},
    ]
    people = {
        p["username"]: {s["scope"]: [g["name"] for g in s["groups"]] for s in p["scopes"]} for p in governed["people"]
    }
    assert people == {
        "alice": {"profile": ["Outer"], "x": ["Outer", "Sales"], "y": ["Sales"]},
        "bob": {"profile": ["Outer"], "x": ["Outer"]},
    }  # "gone" is disabled: not listed
    assert clients[robot]["governed"] is True and clients[robot]["machine_scopes"] == ["read"]

    one = _in_uow(env, lambda d: d.entitlements.report(tenant.id, client_id=robot)).to_dict()
    assert [c["client_id"] for c in one["clients"]] == [robot] and "people" not in one["clients"][0]
