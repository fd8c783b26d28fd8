"""Groups of a tenant's directory, their direct members (users or nested groups), and the closure.

A person's groups are their direct groups plus every group that contains one of those, however deep
(RFC 7643 §4.1.2 "direct" and "indirect"). Nesting is bounded and a group can never contain itself,
directly or through others. Every surface changes groups through :class:`Groups`.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from idhub.directory.entitlements import people_under, revoke_unentitled
from idhub.directory.users import check_version, flush_checked
from idhub.errors import Invalid, NotFound, PreconditionFailed
from idhub.events import GroupCreated, GroupDeleted, GroupUpdated, MembershipChanged
from idhub.storage.base import utcnow
from idhub.storage.models import Group, GroupMember, User
from idhub.storage.uow import UnitOfWork

MAX_NESTING = 32  # group nesting depth followed for indirect memberships and cycle checks
NAME_TAKEN = "displayName is already taken"


@dataclass(frozen=True, slots=True)
class Membership:
    """One group a person belongs to: ``direct`` or through nested groups."""

    group_id: uuid.UUID
    name: str
    direct: bool


@dataclass(frozen=True, slots=True)
class Member:
    """One direct member of a group: a user (``kind`` ``User``) or a nested group (``Group``)."""

    kind: str
    id: uuid.UUID
    name: str


@dataclass(frozen=True, slots=True)
class MemberIds:
    """Wanted direct members, by kind."""

    users: frozenset[uuid.UUID] = frozenset()
    groups: frozenset[uuid.UUID] = frozenset()


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 255 or not name.isprintable():
        raise Invalid("displayName must be 1-255 printable characters")
    return name


@dataclass(slots=True)
class Groups:
    """Commands on the groups of the directory, for one unit of work."""

    uow: UnitOfWork

    # --- reads ---------------------------------------------------------------------------------
    async def get(self, tenant_id: uuid.UUID, group_id: uuid.UUID | None) -> Group:
        """Return the group, or raise :class:`NotFound`."""
        group = None
        if group_id is not None:
            group = await self.uow.session.scalar(
                select(Group).where(Group.tenant_id == tenant_id, Group.id == group_id)
            )
        if group is None:
            raise NotFound("group not found")
        return group

    async def find(self, tenant_id: uuid.UUID, name: str) -> Group | None:
        """Return the group named ``name`` (case-insensitive), or ``None``."""
        return await self.uow.session.scalar(
            select(Group).where(Group.tenant_id == tenant_id, Group.display_name_key == name.strip().casefold())
        )

    async def members_of(self, group_id: uuid.UUID) -> list[Member]:
        """Return a group's direct members: users first, then nested groups, each by id."""
        session = self.uow.session
        users = await session.execute(
            select(User.id, User.display_name, User.user_name, User.username)
            .join(GroupMember, GroupMember.user_id == User.id)
            .where(GroupMember.group_id == group_id)
            .order_by(User.id)
        )
        members = [Member("User", uid, display or user_name or username) for uid, display, user_name, username in users]
        groups = await session.execute(
            select(Group.id, Group.display_name)
            .join(GroupMember, GroupMember.member_group_id == Group.id)
            .where(GroupMember.group_id == group_id)
            .order_by(Group.id)
        )
        members.extend(Member("Group", gid, name) for gid, name in groups)
        return members

    async def groups_of(self, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Membership]]:
        """Return each user's groups, direct and (through nested groups) indirect (RFC 7643 §4.1.2)."""
        session = self.uow.session
        direct = (
            await session.execute(
                select(GroupMember.user_id, GroupMember.group_id).where(GroupMember.user_id.in_(user_ids))
            )
        ).all()
        if not direct:
            return {}
        parents: dict[uuid.UUID, set[uuid.UUID]] = {}
        frontier = {gid for _, gid in direct}
        seen = set(frontier)
        for _ in range(MAX_NESTING):
            if not frontier:
                break
            rows = await session.execute(
                select(GroupMember.member_group_id, GroupMember.group_id).where(
                    GroupMember.member_group_id.in_(frontier)
                )
            )
            frontier = set()
            for child, parent in rows:
                assert child is not None
                parents.setdefault(child, set()).add(parent)
                if parent not in seen:
                    seen.add(parent)
                    frontier.add(parent)
        names = dict((await session.execute(select(Group.id, Group.display_name).where(Group.id.in_(seen)))).all())
        by_user: dict[uuid.UUID, set[uuid.UUID]] = {}
        for uid, gid in direct:
            assert uid is not None
            by_user.setdefault(uid, set()).add(gid)
        out: dict[uuid.UUID, list[Membership]] = {}
        for uid, direct_ids in by_user.items():
            indirect: set[uuid.UUID] = set()
            stack = list(direct_ids)
            while stack:
                for parent in parents.get(stack.pop(), ()):
                    if parent not in direct_ids and parent not in indirect:
                        indirect.add(parent)
                        stack.append(parent)
            out[uid] = [Membership(gid, names.get(gid, ""), True) for gid in sorted(direct_ids)] + [
                Membership(gid, names.get(gid, ""), False) for gid in sorted(indirect)
            ]
        return out

    # --- writes --------------------------------------------------------------------------------
    async def create(
        self, tenant_id: uuid.UUID, *, name: str, external_id: str | None = None, members: MemberIds | None = None
    ) -> Group:
        """Create a group (with its first members); :class:`Conflict` when the name is taken."""
        name = _checked_name(name)
        group = Group(tenant_id=tenant_id, display_name=name, display_name_key=name.casefold(), external_id=external_id)
        await flush_checked(self.uow, taken=NAME_TAKEN, new=group)
        self.uow.raise_event(GroupCreated(tenant_id=tenant_id, group_id=group.id, name=name))
        if members is not None:
            await self._set_members(group, members)
        return group

    async def update(
        self,
        group: Group,
        *,
        name: str,
        external_id: str | None,
        members: MemberIds | None = None,
        expected_versions: Collection[int] | None = None,
    ) -> Group:
        """Rename a group (and set its members when given) with one conditional write of its version."""
        check_version(group.version, expected_versions)
        name = _checked_name(name)
        pairs = (("displayName", group.display_name, name), ("externalId", group.external_id, external_id))
        changed = [label for label, old, new in pairs if old != new]
        group.display_name, group.display_name_key, group.external_id = name, name.casefold(), external_id
        group.updated_at = utcnow()  # the version moves on every write, members included
        await flush_checked(self.uow, taken=NAME_TAKEN)
        if changed:
            self.uow.raise_event(GroupUpdated(tenant_id=group.tenant_id, group_id=group.id, changed=tuple(changed)))
        if members is not None:
            await self._set_members(group, members)
        return group

    async def delete(self, group: Group, *, expected_versions: Collection[int] | None = None) -> None:
        """Delete a group and its memberships (its members stay)."""
        check_version(group.version, expected_versions)
        session = self.uow.session
        # Its members (nested ones too) lose what its policies gave them: found before they are gone.
        members = await people_under(session, [group.id])
        await session.delete(group)
        try:
            async with session.begin_nested():
                await session.flush()
        except StaleDataError as exc:
            raise PreconditionFailed("the resource was changed by a concurrent request") from exc
        self.uow.raise_event(GroupDeleted(tenant_id=group.tenant_id, group_id=group.id, name=group.display_name))
        await revoke_unentitled(self.uow, tenant_id=group.tenant_id, user_ids=members)

    async def add_members(self, group: Group, members: MemberIds) -> None:
        """Add direct members (already present ones are left as they are).

        An explicit add makes a membership an upstream's mapping made the operator's own (its source is
        cleared), so a later sign-in through that upstream no longer removes it.
        """
        await self._check_members(group, members)
        current = await self._current(group.id)
        if members.users & current.users:
            await self.uow.session.execute(
                update(GroupMember)
                .where(
                    GroupMember.group_id == group.id,
                    GroupMember.user_id.in_(members.users & current.users),
                    GroupMember.source.is_not(None),
                )
                .values(source=None)
                .execution_options(synchronize_session=False)
            )
        if await self._apply(group, add=_minus(members, current), remove=MemberIds()):
            await self._touch(group)

    async def sync_user_groups(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, *, source: str, wanted: Collection[uuid.UUID]
    ) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """Make the memberships ``source`` made for a user exactly ``wanted``; return (joined, left) groups.

        Memberships from any other source (admins, the CLI, SCIM, another upstream) are never removed,
        and a group the user is already in stays as it is. Every group must exist in the tenant.
        """
        rows = (
            await self.uow.session.execute(
                select(GroupMember.group_id, GroupMember.source).where(GroupMember.user_id == user_id)
            )
        ).all()
        member_of = {gid for gid, _ in rows}
        made_here = {gid for gid, made_by in rows if made_by == source}
        join = sorted(set(wanted) - member_of)
        leave = sorted(made_here - set(wanted))
        if not join and not leave:
            return [], []
        groups = {
            g.id: g
            for g in await self.uow.session.scalars(
                select(Group).where(Group.tenant_id == tenant_id, Group.id.in_([*join, *leave]))
            )
        }
        user = MemberIds(users=frozenset({user_id}))
        joined: list[uuid.UUID] = []
        left = [gid for gid in leave if gid in groups]
        for gid in (gid for gid in join if gid in groups):
            try:
                async with self.uow.session.begin_nested():
                    await self._apply(groups[gid], add=user, remove=MemberIds(), source=source)
            except IntegrityError:
                continue  # joined by a parallel request (or an admin) a moment ago: already a member
            await self._touch(groups[gid])
            joined.append(gid)
        for gid in left:
            await self._apply(groups[gid], add=MemberIds(), remove=user)
            await self._touch(groups[gid])
        return joined, left

    async def remove_members(self, group: Group, members: MemberIds) -> None:
        """Remove direct members (absent ones are ignored)."""
        current = await self._current(group.id)
        remove = MemberIds(users=members.users & current.users, groups=members.groups & current.groups)
        if await self._apply(group, add=MemberIds(), remove=remove):
            await self._touch(group)

    async def _touch(self, group: Group) -> None:
        # The members are part of the group's representation: its version (the SCIM ETag) and
        # lastModified move with them, or a conditional GET would answer 304 with the old members.
        group.updated_at = utcnow()
        await flush_checked(self.uow, taken=NAME_TAKEN)

    async def resolve_members(
        self, tenant_id: uuid.UUID, references: Iterable[tuple[str | None, uuid.UUID]]
    ) -> MemberIds:
        """Sort member references into users and groups; an untyped one is whichever exists."""
        users: set[uuid.UUID] = set()
        groups: set[uuid.UUID] = set()
        untyped: list[uuid.UUID] = []
        for kind, member_id in references:
            if kind == "User":
                users.add(member_id)
            elif kind == "Group":
                groups.add(member_id)
            else:
                untyped.append(member_id)
        if untyped:
            found = set(
                (
                    await self.uow.session.scalars(
                        select(User.id).where(
                            User.tenant_id == tenant_id, User.id.in_(untyped), User.deleted_at.is_(None)
                        )
                    )
                ).all()
            )
            users |= found
            groups |= {member_id for member_id in untyped if member_id not in found}
        return MemberIds(frozenset(users), frozenset(groups))

    # --- helpers -------------------------------------------------------------------------------
    async def _set_members(self, group: Group, wanted: MemberIds) -> None:
        """Make the direct members exactly ``wanted``; every member must exist in this tenant."""
        await self._check_members(group, wanted)
        current = await self._current(group.id)
        await self._apply(group, add=_minus(wanted, current), remove=_minus(current, wanted))

    async def _check_members(self, group: Group, wanted: MemberIds) -> None:
        session = self.uow.session
        if wanted.users:
            found = set(
                (
                    await session.scalars(
                        select(User.id).where(
                            User.tenant_id == group.tenant_id, User.id.in_(wanted.users), User.deleted_at.is_(None)
                        )
                    )
                ).all()
            )
            if missing := wanted.users - found:
                raise Invalid(f"member {sorted(map(str, missing))[0]} does not exist")
        if wanted.groups:
            found = set(
                (
                    await session.scalars(
                        select(Group.id).where(Group.tenant_id == group.tenant_id, Group.id.in_(wanted.groups))
                    )
                ).all()
            )
            if missing := wanted.groups - found:
                raise Invalid(f"member {sorted(map(str, missing))[0]} does not exist")
            await self._refuse_cycles(group.id, set(wanted.groups))

    async def _current(self, group_id: uuid.UUID) -> MemberIds:
        rows = await self.uow.session.execute(
            select(GroupMember.user_id, GroupMember.member_group_id).where(GroupMember.group_id == group_id)
        )
        users: set[uuid.UUID] = set()
        groups: set[uuid.UUID] = set()
        for uid, gid in rows:
            if uid is not None:
                users.add(uid)
            elif gid is not None:
                groups.add(gid)
        return MemberIds(frozenset(users), frozenset(groups))

    async def _apply(self, group: Group, *, add: MemberIds, remove: MemberIds, source: str | None = None) -> bool:
        """Write the membership change (new rows made by ``source``); whether anything changed."""
        session = self.uow.session
        if remove.users or remove.groups:
            await session.execute(
                delete(GroupMember).where(
                    GroupMember.group_id == group.id,
                    GroupMember.user_id.in_(remove.users) | GroupMember.member_group_id.in_(remove.groups),
                )
            )
        rows = [{"group_id": group.id, "user_id": uid, "source": source} for uid in add.users]
        rows += [{"group_id": group.id, "member_group_id": gid, "source": source} for gid in add.groups]
        if rows:
            await session.execute(insert(GroupMember), rows)
        if remove.users or remove.groups:
            # Whoever left (a person, or everyone in a nested group that left) loses what this group's
            # policies, and those of the groups above it, gave them: revoked in this unit of work.
            leaving = set(remove.users) | await people_under(session, remove.groups)
            await revoke_unentitled(self.uow, tenant_id=group.tenant_id, user_ids=leaving)
        if rows or remove.users or remove.groups:
            self.uow.raise_event(
                MembershipChanged(
                    tenant_id=group.tenant_id,
                    group_id=group.id,
                    added=tuple(sorted(map(str, add.users | add.groups))),
                    removed=tuple(sorted(map(str, remove.users | remove.groups))),
                )
            )
            return True
        return False

    async def _refuse_cycles(self, group_id: uuid.UUID, members: set[uuid.UUID]) -> None:
        """Refuse a nested group that contains (directly or not) the group itself."""
        frontier, seen = set(members), set(members)
        for _ in range(MAX_NESTING):
            if group_id in frontier:
                raise Invalid("a group cannot be a member of itself, directly or through nesting")
            if not frontier:
                return
            children = set(
                (
                    await self.uow.session.scalars(
                        select(GroupMember.member_group_id).where(
                            GroupMember.group_id.in_(frontier), GroupMember.member_group_id.is_not(None)
                        )
                    )
                ).all()
            )
            frontier = {c for c in children if c is not None and c not in seen}
            seen |= frontier
        raise Invalid("groups are nested too deeply")


def _minus(a: MemberIds, b: MemberIds) -> MemberIds:
    return MemberIds(a.users - b.users, a.groups - b.groups)
