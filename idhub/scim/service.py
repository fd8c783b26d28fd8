"""SCIM operations on Users and Groups (RFC 7644 §3.3-§3.6, §3.14): one unit of work per call, never commits.

Every write goes through the same steps: load the current resource, build the new one (POST/PUT body,
or PATCH applied in memory), normalise it against the schema, copy it onto the rows, bump the
version with a conditional UPDATE (SQLAlchemy's ``version_id_col``), and record an audit event. A
user whose ``active`` turns false, or who is deleted, goes through the directory's one disabling
function, which revokes sessions, refresh and access tokens in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, delete, exists, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from idhub.audit.service import Actor, record
from idhub.context import AppContext
from idhub.directory.users import normalise_username, set_user_enabled
from idhub.scim import errors, mapping, patch, query, schemas
from idhub.scim.filter import parse_filter
from idhub.scim.schemas import Resource
from idhub.storage.base import utcnow
from idhub.storage.engine import read_only
from idhub.storage.models import Group, GroupMember, User, UserValue
from idhub.tenants.service import TenantInfo

_USERS, _VALUES, _MEMBERS = query.USERS, query.USER_VALUES, query.GROUP_MEMBERS
# What a resource shows (never the password hash or the archive of a deleted account).
_USER_READ_COLUMNS = tuple(_USERS.c[name] for name in mapping.READ_COLUMNS)
# A value's own columns; none shares a name with a user column, so both fit in one result row.
_VALUE_READ_COLUMNS = tuple(c for c in _VALUES.c if c.key not in ("id", "user_id"))
# Live users by id, each with its multi-valued rows (one row per value; a user without values once).
_PAGE_USERS = (
    select(
        *_USER_READ_COLUMNS,
        exists().where(_MEMBERS.c.user_id == _USERS.c.id).label("is_member"),
        *_VALUE_READ_COLUMNS,
    )
    .select_from(_USERS.outerjoin(_VALUES, _VALUES.c.user_id == _USERS.c.id))
    .where(
        _USERS.c.id.in_(bindparam("ids", expanding=True)),
        _USERS.c.tenant_id == bindparam("tenant_id"),  # the ids come from this tenant's page; checked anyway
        _USERS.c.deleted_at.is_(None),
    )
)
MAX_RESULTS = 1000  # advertised as filter.maxResults; larger ``count`` values are capped (RFC 7644 §3.4.2.4)
DEFAULT_COUNT = 100
MAX_NESTING = 32  # group nesting depth followed when computing indirect memberships


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The query parameters of a list or ``/.search`` request (RFC 7644 §3.4.2, §3.4.3)."""

    filter: str | None = None
    sort_by: str | None = None
    sort_order: str | None = None
    start_index: int = 1
    count: int | None = None


@dataclass(slots=True)
class ScimService:
    """SCIM operations for one tenant, one caller and one request's session."""

    ctx: AppContext
    session: AsyncSession
    tenant: TenantInfo
    actor: Actor
    base_url: str

    # --- Users ----------------------------------------------------------------------------------
    async def create_user(self, body: Resource) -> Resource:
        """Create a user (RFC 7644 §3.3); 409 ``uniqueness`` when the userName is taken."""
        resource = schemas.normalise_resource(schemas.USER_TYPE, body, existing=None)
        await self._check_user_name_free(str(resource["userName"]), None)
        user = User(tenant_id=self.tenant.id, created_by=self.actor.label())
        rows = mapping.apply_user_resource(user, resource)
        user.enabled = bool(resource.get("active", True))
        self._set_password(user, resource)
        self.session.add(user)
        try:
            async with self.session.begin_nested():
                await self.session.flush()
        except IntegrityError as exc:
            raise errors.Uniqueness("userName is already taken") from exc
        await self._store_values(user.id, rows)
        await self._audit("user.create", "User", user.id)
        return await self.user_resource(user)

    async def get_user(self, user_id: str) -> Resource:
        """Return one user (RFC 7644 §3.4.1)."""
        return await self.user_resource(await self._load_user(user_id))

    async def replace_user(self, user_id: str, body: Resource, if_match: str | None) -> Resource:
        """Replace a user's attributes (PUT, RFC 7644 §3.5.1)."""
        user = await self._load_user(user_id)
        self._check_if_match(user.version, if_match)
        existing = await self.user_resource(user)
        resource = schemas.normalise_resource(schemas.USER_TYPE, body, existing=existing)
        return await self._write_user(user, resource, "user.replace")

    async def patch_user(self, user_id: str, body: Resource, if_match: str | None) -> Resource:
        """Modify a user with PATCH operations, all or nothing (RFC 7644 §3.5.2)."""
        user = await self._load_user(user_id)
        self._check_if_match(user.version, if_match)
        existing = await self.user_resource(user)
        patched = patch.apply_patch(schemas.USER_TYPE, existing, body)
        resource = schemas.normalise_resource(schemas.USER_TYPE, patched, existing=existing)
        return await self._write_user(user, resource, "user.patch")

    async def delete_user(self, user_id: str, if_match: str | None) -> None:
        """Delete a user (RFC 7644 §3.6): disabled everywhere at once, kept as an archived record."""
        user = await self._load_user(user_id)
        self._check_if_match(user.version, if_match)
        snapshot = await self.user_resource(user)
        now = utcnow()
        user.deleted_at = now
        user.deleted_by = self.actor.label()
        user.archive = {key: value for key, value in snapshot.items() if key != "groups"}
        user.password_hash = None
        user.updated_at = now
        await self._flush_versioned()  # first: a concurrent writer makes this one 412 before anything else
        await set_user_enabled(
            self.session,
            tenant_id=self.tenant.id,
            user_id=user.id,
            enabled=False,
            expires_in=self.ctx.settings.tokens.access_token_ttl,
        )
        await self.session.execute(delete(GroupMember).where(GroupMember.user_id == user.id))
        await self._audit("user.delete", "User", user.id, {"userName": snapshot.get("userName")})

    async def list_users(self, q: ListQuery) -> tuple[int, list[Resource]]:
        """Return the total and one page of users matching the query (RFC 7644 §3.4.2)."""
        # Core columns, not ORM entities: a page is read, never written, so the ORM's compile and
        # identity-map steps would be pure overhead.
        users = _USERS
        conditions = [users.c.tenant_id == self.tenant.id, users.c.deleted_at.is_(None)]
        if q.filter is not None:
            conditions.append(query.user_filter(parse_filter(q.filter), tenant_id=self.tenant.id))
        count = _page_size(q.count)
        if count == 0:
            return await self._count(users, conditions), []
        # Two statements, both without a transaction (read_only): the page's ids in order, with the
        # total riding along as a window count (a filter that must scan does so once); then those users
        # with their multi-valued rows, through one statement built once at import (building a wide
        # SELECT costs more than a round trip). Only page rows are checked for group membership.
        sort_key = query.user_sort(q.sort_by) if q.sort_by else None
        page = (
            select(users.c.id, func.count().over())
            .where(*conditions)
            .order_by(*_order(sort_key, q.sort_order), users.c.created_at, users.c.id)
            .offset(max(q.start_index, 1) - 1)
            .limit(count)
        )
        await read_only(self.session)
        ids = (await self.session.execute(page)).all()
        if not ids:
            return await self._total(users, conditions, q.start_index, count, 0), []
        rows = (
            await self.session.execute(_PAGE_USERS, {"ids": [uid for uid, _ in ids], "tenant_id": self.tenant.id})
        ).all()
        found: dict[uuid.UUID, mapping.UserRow] = {}
        values: dict[uuid.UUID, list[mapping.ValueRow]] = {}
        members: set[uuid.UUID] = set()
        for row in rows:
            if row.id not in found:
                found[row.id] = row
                values[row.id] = []
                if row.is_member:
                    members.add(row.id)
            if row.attribute is not None:
                values[row.id].append(row)
        # A user deleted between the two statements is left out, as if deleted before the request.
        page_users = [found[uid] for uid, _ in ids if uid in found]
        return int(ids[0][1]), await self._user_resources(page_users, members, values)

    async def user_resource(self, user: User) -> Resource:
        """Return the SCIM representation of one loaded user."""
        return (await self._user_resources([user]))[0]

    async def _user_resources(
        self,
        users: Sequence[mapping.UserRow],
        members: set[uuid.UUID] | None = None,
        values: dict[uuid.UUID, list[mapping.ValueRow]] | None = None,
    ) -> list[Resource]:
        """Build resources; ``members`` (when known) are the users in any group, the others skip that query.

        ``values`` are the users' multi-valued rows when the caller already read them.
        """
        if not users:
            return []
        ids = [user.id for user in users]
        if values is None:
            values = {uid: [] for uid in ids}
            for row in (await self.session.execute(select(_VALUES).where(_VALUES.c.user_id.in_(ids)))).all():
                values[row.user_id].append(row)
        in_groups = ids if members is None else [uid for uid in ids if uid in members]
        groups = await self._groups_of(in_groups) if in_groups else {}
        return [mapping.user_resource(u, values[u.id], groups.get(u.id, []), self.base_url) for u in users]

    async def _groups_of(self, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, Any]]]:
        """Return each user's groups, direct and (through nested groups) indirect (RFC 7643 §4.1.2)."""
        direct = (
            await self.session.execute(
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
            rows = (
                await self.session.execute(
                    select(GroupMember.member_group_id, GroupMember.group_id).where(
                        GroupMember.member_group_id.in_(frontier)
                    )
                )
            ).all()
            frontier = set()
            for child, parent in rows:
                assert child is not None
                parents.setdefault(child, set()).add(parent)
                if parent not in seen:
                    seen.add(parent)
                    frontier.add(parent)
        group_rows = await self.session.execute(select(Group.id, Group.display_name).where(Group.id.in_(seen)))
        names = {gid: name for gid, name in group_rows}
        out: dict[uuid.UUID, list[dict[str, Any]]] = {}
        by_user: dict[uuid.UUID, set[uuid.UUID]] = {}
        for uid, gid in direct:
            assert uid is not None
            by_user.setdefault(uid, set()).add(gid)
        for uid, direct_ids in by_user.items():
            indirect: set[uuid.UUID] = set()
            stack = list(direct_ids)
            while stack:
                for parent in parents.get(stack.pop(), ()):
                    if parent not in direct_ids and parent not in indirect:
                        indirect.add(parent)
                        stack.append(parent)
            entries = [(gid, "direct") for gid in sorted(direct_ids)] + [(gid, "indirect") for gid in sorted(indirect)]
            out[uid] = [
                {"value": str(gid), "$ref": f"{self.base_url}/Groups/{gid}", "display": names.get(gid), "type": kind}
                for gid, kind in entries
            ]
        return out

    async def _write_user(self, user: User, resource: Resource, action: str) -> Resource:
        # Checks that query run before the row changes (a query would autoflush the pending UPDATE).
        await self._check_user_name_free(str(resource["userName"]), user.id)
        was_enabled = user.enabled
        rows = mapping.apply_user_resource(user, resource)
        self._set_password(user, resource)
        active = bool(resource.get("active", True))
        user.enabled = active
        user.updated_at = utcnow()  # always an UPDATE of the row, so the version moves on every write
        try:
            await self._flush_versioned()  # the conditional UPDATE first: a stale writer stops here
        except IntegrityError as exc:
            raise errors.Uniqueness("userName is already taken") from exc
        if was_enabled and not active:
            # The one disabling function of the directory: sessions, grants, refresh and access tokens.
            await set_user_enabled(
                self.session,
                tenant_id=self.tenant.id,
                user_id=user.id,
                enabled=False,
                expires_in=self.ctx.settings.tokens.access_token_ttl,
            )
        await self.session.execute(delete(UserValue).where(UserValue.user_id == user.id))
        await self._store_values(user.id, rows)
        await self._audit(action, "User", user.id)
        return await self.user_resource(user)

    async def _store_values(self, user_id: uuid.UUID, rows: list[dict[str, Any]]) -> None:
        if rows:
            await self.session.execute(insert(UserValue), [{"user_id": user_id, **row} for row in rows])

    async def _check_user_name_free(self, username: str, own_id: uuid.UUID | None) -> None:
        taken = await self.session.scalar(
            select(User.id).where(
                User.tenant_id == self.tenant.id,
                User.username == normalise_username(username),
                User.deleted_at.is_(None),
            )
        )
        if taken is not None and taken != own_id:
            raise errors.Uniqueness("userName is already taken")  # RFC 7644 §3.3: 409 uniqueness

    def _set_password(self, user: User, resource: Resource) -> None:
        password = resource.get("password")
        if password is None:
            return
        if not isinstance(password, str) or not 8 <= len(password) <= 1024:
            raise errors.InvalidValue("password must be 8 to 1024 characters")
        user.password_hash = self.ctx.passwords.hash(password)  # argon2id; write-only, never returned

    async def _load_user(self, user_id: str) -> User:
        uid = mapping.parse_uuid(user_id)
        user = None
        if uid is not None:
            user = await self.session.scalar(
                select(User).where(User.tenant_id == self.tenant.id, User.id == uid, User.deleted_at.is_(None))
            )
        if user is None:
            raise errors.NotFound(f"User {user_id} not found")
        return user

    # --- Groups ---------------------------------------------------------------------------------
    async def create_group(self, body: Resource) -> Resource:
        """Create a group with its members (RFC 7644 §3.3)."""
        resource = schemas.normalise_resource(schemas.GROUP_TYPE, body, existing=None)
        group = Group(tenant_id=self.tenant.id)
        self._apply_group(group, resource)
        self.session.add(group)
        try:
            async with self.session.begin_nested():
                await self.session.flush()
        except IntegrityError as exc:
            raise errors.Uniqueness("displayName is already taken") from exc
        await self._set_members(group, resource)
        await self._audit("group.create", "Group", group.id)
        return await self.group_resource(group)

    async def get_group(self, group_id: str, *, with_members: bool = True) -> Resource:
        """Return one group."""
        return await self.group_resource(await self._load_group(group_id), with_members=with_members)

    async def replace_group(self, group_id: str, body: Resource, if_match: str | None) -> Resource:
        """Replace a group (PUT)."""
        group = await self._load_group(group_id)
        self._check_if_match(group.version, if_match)
        existing = await self.group_resource(group)
        resource = schemas.normalise_resource(schemas.GROUP_TYPE, body, existing=existing)
        return await self._write_group(group, resource, "group.replace")

    async def patch_group(self, group_id: str, body: Resource, if_match: str | None) -> Resource:
        """Modify a group with PATCH operations, all or nothing."""
        group = await self._load_group(group_id)
        self._check_if_match(group.version, if_match)
        existing = await self.group_resource(group)
        patched = patch.apply_patch(schemas.GROUP_TYPE, existing, body)
        resource = schemas.normalise_resource(schemas.GROUP_TYPE, patched, existing=existing)
        return await self._write_group(group, resource, "group.patch")

    async def delete_group(self, group_id: str, if_match: str | None) -> None:
        """Delete a group and its memberships."""
        group = await self._load_group(group_id)
        self._check_if_match(group.version, if_match)
        await self.session.delete(group)
        await self.session.flush()
        await self._audit("group.delete", "Group", group.id, {"displayName": group.display_name})

    async def list_groups(self, q: ListQuery, *, with_members: bool = True) -> tuple[int, list[Resource]]:
        """Return the total and one page of groups matching the query."""
        conditions = [Group.tenant_id == self.tenant.id]
        if q.filter is not None:
            conditions.append(query.group_filter(parse_filter(q.filter), tenant_id=self.tenant.id))
        count = _page_size(q.count)
        if count == 0:
            return await self._count(Group, conditions), []
        order = _order(query.group_sort(q.sort_by) if q.sort_by else None, q.sort_order)
        stmt = (
            select(Group)
            .where(*conditions)
            .order_by(*order, Group.created_at, Group.id)
            .offset(max(q.start_index, 1) - 1)
            .limit(count)
        )
        groups = list((await self.session.scalars(stmt)).all())
        total = await self._total(Group, conditions, q.start_index, count, len(groups))
        return total, [await self.group_resource(g, with_members=with_members) for g in groups]

    async def group_resource(self, group: Group, *, with_members: bool = True) -> Resource:
        """Return the SCIM representation of a loaded group."""
        members: list[dict[str, Any]] = []
        if with_members:
            users = (
                await self.session.execute(
                    select(User.id, User.display_name, User.user_name, User.username)
                    .join(GroupMember, GroupMember.user_id == User.id)
                    .where(GroupMember.group_id == group.id)
                    .order_by(User.id)
                )
            ).all()
            for uid, display_name, user_name, username in users:
                members.append(
                    {
                        "value": str(uid),
                        "$ref": f"{self.base_url}/Users/{uid}",
                        "display": display_name or user_name or username,
                        "type": "User",
                    }
                )
            subgroups = (
                await self.session.execute(
                    select(Group.id, Group.display_name)
                    .join(GroupMember, GroupMember.member_group_id == Group.id)
                    .where(GroupMember.group_id == group.id)
                    .order_by(Group.id)
                )
            ).all()
            for gid, name in subgroups:
                members.append(
                    {"value": str(gid), "$ref": f"{self.base_url}/Groups/{gid}", "display": name, "type": "Group"}
                )
        return mapping.group_resource(group, members, self.base_url)

    def _apply_group(self, group: Group, resource: Resource) -> None:
        group.display_name = str(resource["displayName"])
        group.display_name_key = str(resource["displayName"]).casefold()
        group.external_id = resource.get("externalId")

    async def _write_group(self, group: Group, resource: Resource, action: str) -> Resource:
        self._apply_group(group, resource)
        group.updated_at = utcnow()
        try:
            await self._flush_versioned()
        except IntegrityError as exc:
            raise errors.Uniqueness("displayName is already taken") from exc
        await self._set_members(group, resource)
        await self._audit(action, "Group", group.id)
        return await self.group_resource(group)

    async def _set_members(self, group: Group, resource: Resource) -> None:
        """Make the stored members exactly the resource's; every member must exist in this tenant."""
        wanted_users: set[uuid.UUID] = set()
        wanted_groups: set[uuid.UUID] = set()
        unresolved: list[uuid.UUID] = []
        for kind, value in mapping.member_ids(resource):
            uid = mapping.parse_uuid(value)
            if uid is None:
                raise errors.InvalidValue(f"member {value!r} does not exist")
            if kind == "User":
                wanted_users.add(uid)
            elif kind == "Group":
                wanted_groups.add(uid)
            else:
                unresolved.append(uid)
        if unresolved:
            users = set(
                (
                    await self.session.scalars(
                        select(User.id).where(
                            User.tenant_id == self.tenant.id, User.id.in_(unresolved), User.deleted_at.is_(None)
                        )
                    )
                ).all()
            )
            wanted_users |= users
            wanted_groups |= {uid for uid in unresolved if uid not in users}
        if wanted_users:
            found = set(
                (
                    await self.session.scalars(
                        select(User.id).where(
                            User.tenant_id == self.tenant.id, User.id.in_(wanted_users), User.deleted_at.is_(None)
                        )
                    )
                ).all()
            )
            if missing := wanted_users - found:
                raise errors.InvalidValue(f"member {sorted(map(str, missing))[0]} does not exist")
        if wanted_groups:
            found = set(
                (
                    await self.session.scalars(
                        select(Group.id).where(Group.tenant_id == self.tenant.id, Group.id.in_(wanted_groups))
                    )
                ).all()
            )
            if missing := wanted_groups - found:
                raise errors.InvalidValue(f"member {sorted(map(str, missing))[0]} does not exist")
            await self._refuse_cycles(group.id, wanted_groups)
        current = (
            await self.session.execute(
                select(GroupMember.id, GroupMember.user_id, GroupMember.member_group_id).where(
                    GroupMember.group_id == group.id
                )
            )
        ).all()
        have_users = {uid for _, uid, _ in current if uid is not None}
        have_groups = {gid for _, _, gid in current if gid is not None}
        stale = [
            mid for mid, uid, gid in current if (uid and uid not in wanted_users) or (gid and gid not in wanted_groups)
        ]
        if stale:
            await self.session.execute(delete(GroupMember).where(GroupMember.id.in_(stale)))
        rows = [{"group_id": group.id, "user_id": uid} for uid in wanted_users - have_users]
        rows += [{"group_id": group.id, "member_group_id": gid} for gid in wanted_groups - have_groups]
        if rows:
            await self.session.execute(insert(GroupMember), rows)

    async def _refuse_cycles(self, group_id: uuid.UUID, members: set[uuid.UUID]) -> None:
        """Refuse a nested group that contains (directly or not) the group itself."""
        frontier, seen = set(members), set(members)
        for _ in range(MAX_NESTING):
            if group_id in frontier:
                raise errors.InvalidValue("a group cannot be a member of itself, directly or through nesting")
            if not frontier:
                return
            children = set(
                (
                    await self.session.scalars(
                        select(GroupMember.member_group_id).where(
                            GroupMember.group_id.in_(frontier), GroupMember.member_group_id.is_not(None)
                        )
                    )
                ).all()
            )
            frontier = {c for c in children if c is not None and c not in seen}
            seen |= frontier
        raise errors.InvalidValue("groups are nested too deeply")

    async def _load_group(self, group_id: str) -> Group:
        gid = mapping.parse_uuid(group_id)
        group = None
        if gid is not None:
            group = await self.session.scalar(select(Group).where(Group.tenant_id == self.tenant.id, Group.id == gid))
        if group is None:
            raise errors.NotFound(f"Group {group_id} not found")
        return group

    # --- shared ---------------------------------------------------------------------------------
    async def _count(self, model: type[User] | type[Group] | Table, conditions: list[ColumnElement[bool]]) -> int:
        return await self.session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0

    async def _total(
        self,
        model: type[User] | type[Group] | Table,
        conditions: list[ColumnElement[bool]],
        start_index: int,
        count: int,
        found: int,
    ) -> int:
        """Return ``totalResults``; a short first page already is the whole result, so no COUNT runs."""
        if (start_index <= 1 and found < count) or (found and found < count):
            return max(start_index, 1) - 1 + found
        return await self._count(model, conditions)

    @staticmethod
    def _check_if_match(version: int, if_match: str | None) -> None:
        """Refuse a write whose ``If-Match`` names another version (RFC 7644 §3.14, RFC 7232 §3.1)."""
        if if_match is None:
            return
        versions = mapping.parse_etag(if_match)
        if versions is not None and version not in versions:
            raise errors.PreconditionFailed("the resource has changed since that version")

    async def _flush_versioned(self) -> None:
        """Flush; a concurrent writer that bumped the version first makes this one fail with 412."""
        try:
            async with self.session.begin_nested():
                await self.session.flush()
        except StaleDataError as exc:
            raise errors.PreconditionFailed("the resource was changed by a concurrent request") from exc

    async def _audit(
        self, action: str, target_type: str, target_id: uuid.UUID, details: dict[str, Any] | None = None
    ) -> None:
        await record(
            self.session,
            tenant_id=self.tenant.id,
            actor=self.actor,
            action=f"scim.{action}",
            target_type=target_type,
            target_id=str(target_id),
            details=details,
        )


def _order(key: ColumnElement[Any] | None, sort_order: str | None) -> list[ColumnElement[Any]]:
    """Order by ``key``; resources without a value sort last ascending, first descending (RFC 7644 §3.4.2.3)."""
    if key is None:
        return []
    if (sort_order or "ascending").lower() == "descending":
        return [key.desc().nulls_first()]
    return [key.asc().nulls_last()]


def _page_size(count: int | None) -> int:
    """Apply the default and the cap to ``count`` (RFC 7644 §3.4.2.4: negative is 0)."""
    if count is None:
        return DEFAULT_COUNT
    return max(0, min(count, MAX_RESULTS))
