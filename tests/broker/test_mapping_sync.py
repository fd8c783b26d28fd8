"""Mapping rules applied at sign-in through the directory, and the read-only preview (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import func, select

from idhub.broker.connector import Identity
from idhub.broker.linking import link_identity
from idhub.broker.mapping import parse_mapping
from idhub.broker.providers import ProviderInfo, info_of
from idhub.broker.sync import Preview, Synced, preview_claims, source_of, sync_user
from idhub.directory.groups import MemberIds
from idhub.storage.models import AuditEvent, Group, GroupMember, IdentityProvider, User
from idhub.storage.models.broker import FederatedIdentity
from idhub.tenants.service import TenantInfo
from tests.audit.test_audit import audit_rows, with_action
from tests.conftest import Env

MAPPING: dict[str, Any] = {
    "rules": [
        {"kind": "attribute", "target": "displayName", "template": "{family_name}, {given_name}"},
        {"kind": "attribute", "target": "department", "claim": "department"},
        {"kind": "attribute", "target": "userName", "template": "{given_name}.{family_name}"},
        {"kind": "group", "claim": "groups", "match": r"sales-([a-z]+)", "replace": r"Sales \1"},
        {"kind": "group", "claim": "groups", "value": "admin", "group": "Admins"},
        {"kind": "group", "claim": "groups", "value": "ghost", "group": "Ghosts"},
    ]
}


def _identity(subject: str, *, email: str = "", verified: bool = True, **claims: Any) -> Identity:
    claims.setdefault("department", "Sales")
    claims.setdefault("groups", ["sales-emea", "ghost"])
    return Identity(
        issuer="https://idp.corp.example",
        subject=subject,
        email=email or f"{subject}@corp.example",
        email_verified=verified,
        given_name="Alice",
        family_name=f"L{subject[-6:]}",
        name="Alice",
        claims={"sub": subject, **claims},
    )


def _provider(env: Env, tenant: TenantInfo, mapping: dict[str, Any] | None = MAPPING) -> ProviderInfo:
    config: dict[str, Any] = {"issuer": "https://idp.corp.example", "email_domains": ["corp.example"]}
    if mapping is not None:
        config["mapping"] = parse_mapping(mapping).describe()

    async def work() -> ProviderInfo:
        async with env.uow() as uow:
            row = IdentityProvider(tenant_id=tenant.id, alias="corp", type="oidc", display_name="Corp", config=config)
            uow.session.add(row)
            await uow.session.flush()
            return info_of(row)

    result: ProviderInfo = env.run(work)
    return result


def _groups(env: Env, tenant: TenantInfo, *names: str) -> dict[str, uuid.UUID]:
    async def work() -> dict[str, uuid.UUID]:
        async with env.uow() as uow:
            groups = env.ctx.directory(uow).groups
            return {name: (await groups.create(tenant.id, name=name)).id for name in names}

    result: dict[str, uuid.UUID] = env.run(work)
    return result


def _sign_in(env: Env, provider: ProviderInfo, identity: Identity) -> tuple[uuid.UUID, str, Synced]:
    """Link and sync as :meth:`Broker._finish` does, in one unit of work; return (user, how, changes)."""

    async def work() -> tuple[uuid.UUID, str, Synced]:
        async with env.uow() as uow:
            directory = env.ctx.directory(uow)
            linked = await link_identity(uow, directory=directory, provider=provider, identity=identity)
            synced = await sync_user(uow, directory=directory, provider=provider, identity=identity, linked=linked)
            return linked.user_id, linked.how, synced

    result: tuple[uuid.UUID, str, Synced] = env.run(work)
    return result


def _user(env: Env, user_id: uuid.UUID) -> User:
    async def work() -> User:
        async with env.ctx.sessionmaker() as session:
            found = await session.get(User, user_id)
            assert found is not None
            return found

    result: User = env.run(work)
    return result


def _memberships(env: Env, user_id: uuid.UUID) -> dict[str, str | None]:
    async def work() -> dict[str, str | None]:
        async with env.ctx.sessionmaker() as session:
            rows = await session.execute(
                select(Group.display_name, GroupMember.source)
                .join(GroupMember, GroupMember.group_id == Group.id)
                .where(GroupMember.user_id == user_id)
            )
            return {name: source for name, source in rows}

    result: dict[str, str | None] = env.run(work)
    return result


def _counts(env: Env, tenant: TenantInfo) -> dict[str, int]:
    async def work() -> dict[str, int]:
        await env.ctx.audit.writer.flush()
        async with env.ctx.sessionmaker() as session:
            members = select(func.count()).select_from(GroupMember).join(Group, Group.id == GroupMember.group_id)
            return {
                "users": await session.scalar(select(func.count()).where(User.tenant_id == tenant.id)) or 0,
                "links": await session.scalar(select(func.count()).where(FederatedIdentity.tenant_id == tenant.id))
                or 0,
                "groups": await session.scalar(select(func.count()).where(Group.tenant_id == tenant.id)) or 0,
                "members": await session.scalar(members.where(Group.tenant_id == tenant.id)) or 0,
                "audit": await session.scalar(select(func.count()).where(AuditEvent.tenant_id == tenant.id)) or 0,
            }

    result: dict[str, int] = env.run(work)
    return result


def test_mapping_sync_jit_user_made_from_mapping_joins_existing_groups_only(env: Env) -> None:
    tenant = env.tenant()
    provider = _provider(env, tenant)
    groups = _groups(env, tenant, "Sales EMEA", "Admins")
    identity = _identity(f"u-{uuid.uuid4().hex[:8]}")
    user_id, how, synced = _sign_in(env, provider, identity)
    assert how == "jit"
    user = _user(env, user_id)
    assert user.user_name == f"Alice.{identity.family_name}"  # the mapped userName
    assert (user.display_name, user.department) == (f"{identity.family_name}, Alice", "Sales")
    assert user.email == identity.email and user.email_verified  # authoritative for corp.example
    assert synced.joined == ("Sales EMEA",) and synced.unknown_groups == ("Ghosts",)
    assert _memberships(env, user_id) == {"Sales EMEA": source_of(provider)}
    assert _counts(env, tenant)["groups"] == len(groups)  # an upstream never creates a group


def test_mapping_sync_later_sign_in_updates_attributes_and_removes_only_its_own_memberships(env: Env) -> None:
    tenant = env.tenant()
    provider = _provider(env, tenant)
    groups = _groups(env, tenant, "Sales EMEA", "Sales APAC", "Admins", "Auditors")
    subject = f"u-{uuid.uuid4().hex[:8]}"
    user_id, _, _ = _sign_in(env, provider, _identity(subject, groups=["sales-emea", "admin"]))
    assert set(_memberships(env, user_id)) == {"Sales EMEA", "Admins"}

    async def admin_adds() -> None:  # an admin confirms Admins and adds Auditors (not the upstream's)
        async with env.uow() as uow:
            directory = env.ctx.directory(uow)
            for name in ("Admins", "Auditors"):
                group = await directory.groups.get(tenant.id, groups[name])
                await directory.groups.add_members(group, MemberIds(users=frozenset({user_id})))

    env.run(admin_adds)
    before = _user(env, user_id)
    user_id_again, how, synced = _sign_in(
        env, provider, _identity(subject, department="Finance", groups=["sales-apac"], email="other@elsewhere.example")
    )
    assert (user_id_again, how) == (user_id, "existing")
    assert synced.joined == ("Sales APAC",) and synced.left == ("Sales EMEA",)
    assert _memberships(env, user_id) == {"Sales APAC": source_of(provider), "Admins": None, "Auditors": None}
    after = _user(env, user_id)
    assert after.department == "Finance" and "department" in synced.attributes
    assert after.user_name == before.user_name  # never renamed from upstream input
    assert after.email == before.email  # the upstream is not authoritative for elsewhere.example

    rows = audit_rows(env, tenant, with_action("group.members", count=5))
    assert any(row["action"] == "user.update" and "department" in json.dumps(row["details"]) for row in rows)


def test_mapping_sync_email_written_only_when_upstream_owns_it(env: Env) -> None:
    tenant = env.tenant()
    provider = _provider(env, tenant)
    subject = f"u-{uuid.uuid4().hex[:8]}"
    user_id, _, _ = _sign_in(env, provider, _identity(subject))
    _, _, synced = _sign_in(env, provider, _identity(subject, email=f"new-{subject}@corp.example"))
    assert "email" in synced.attributes and _user(env, user_id).email == f"new-{subject}@corp.example"
    _, _, synced = _sign_in(env, provider, _identity(subject, email=f"x-{subject}@corp.example", verified=False))
    assert "email" not in synced.attributes and _user(env, user_id).email == f"new-{subject}@corp.example"


def test_mapping_sync_without_configured_mapping_changes_nothing_after_jit(env: Env) -> None:
    tenant = env.tenant()
    provider = _provider(env, tenant, mapping=None)
    subject = f"u-{uuid.uuid4().hex[:8]}"
    user_id, how, _ = _sign_in(env, provider, _identity(subject))
    assert how == "jit" and _user(env, user_id).user_name == f"{subject}@corp.example"  # defaults: email name
    _, _, synced = _sign_in(env, provider, _identity(subject, department="Finance"))
    assert synced == Synced() and _user(env, user_id).department is None


def test_mapping_sync_off_maps_only_at_jit(env: Env) -> None:
    tenant = env.tenant()
    provider = _provider(env, tenant, mapping={**MAPPING, "sync": False})
    _groups(env, tenant, "Sales EMEA")
    subject = f"u-{uuid.uuid4().hex[:8]}"
    user_id, _, synced = _sign_in(env, provider, _identity(subject))
    assert synced.joined == ("Sales EMEA",) and _user(env, user_id).department == "Sales"
    _, _, synced = _sign_in(env, provider, _identity(subject, department="Finance", groups=[]))
    assert synced == Synced() and "Sales EMEA" in _memberships(env, user_id)


def _preview(env: Env, provider: ProviderInfo, sample: dict[str, Any]) -> Preview:
    async def work() -> Preview:
        async with env.uow() as uow:  # commits at the end: only the preview's own rollback protects
            return await preview_claims(
                uow, directory=env.ctx.directory(uow), provider=provider, sample=json.dumps(sample)
            )

    result: Preview = env.run(work)
    return result


def test_mapping_preview_of_new_person_changes_nothing(env: Env) -> None:
    tenant = env.tenant()
    provider = _provider(env, tenant)
    _groups(env, tenant, "Sales EMEA")
    before = _counts(env, tenant)
    sample = {"sub": "preview-1", "email": "p1@corp.example", "email_verified": True, "given_name": "Pat",
              "family_name": "Q", "department": "Ops", "groups": ["sales-emea", "ghost"]}  # fmt: skip
    preview = _preview(env, provider, sample)
    described = preview.describe()
    assert described["link"]["rule"] == "jit" and described["link"]["userName"] == "Pat.Q"
    assert described["attributes"]["department"] == "Ops" and described["groups"] == ["Sales emea", "Ghosts"]
    assert described["changes"]["join"] == ["Sales EMEA"] and described["changes"]["unknown_groups"] == ["Ghosts"]
    assert _counts(env, tenant) == before  # no user, link, membership or audit row


def test_mapping_preview_of_linked_person_names_them_and_changes_nothing(env: Env) -> None:
    tenant = env.tenant()
    provider = _provider(env, tenant)
    subject = f"u-{uuid.uuid4().hex[:8]}"
    user_id, _, _ = _sign_in(env, provider, _identity(subject))
    before, user_before = _counts(env, tenant), _user(env, user_id)
    preview = _preview(env, provider, {"sub": subject, "department": "Legal", "given_name": "Alice"})
    assert (preview.link, preview.user_id) == ("existing", user_id)
    assert "department" in preview.changes.attributes
    assert _counts(env, tenant) == before
    after = _user(env, user_id)
    assert (after.department, after.version) == (user_before.department, user_before.version)


def test_mapping_preview_without_jit_says_proof_required(env: Env) -> None:
    tenant = env.tenant()
    provider = _provider(env, tenant)

    async def no_jit() -> ProviderInfo:
        async with env.uow() as uow:
            return await env.ctx.broker.providers(uow).update(tenant.id, "corp", jit=False)

    provider = env.run(no_jit)
    preview = _preview(env, provider, {"sub": "nobody"})
    assert (preview.link, preview.refused, preview.user_id) == ("proof_required", "no_account", None)
