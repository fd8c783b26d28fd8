"""SCIM operations on Users and Groups (RFC 7644 §3.3-§3.6, §3.14): a translation layer over the directory.

SCIM resources come in, directory commands run, SCIM resources go out. A write loads the current
resource, builds the new one (POST/PUT body, or PATCH applied in memory), normalises it against the
schema, turns it into the directory's types and calls the directory, which holds every rule: the
username rule, conditional writes on the version (``If-Match``), the one disabling path that revokes
sessions, refresh and access tokens in the same transaction, the archive of a deleted account, group
membership and its closure. Nothing here commits; the request's unit of work does.

``active`` (RFC 7643 §4.1.1) is decided here because its SCIM semantics are SCIM's: omitted on POST it
is ``true``; omitted on PUT it is "not asserted by the client" (RFC 7644 §3.5.1) and keeps its value, so
a PUT never re-enables or disables anyone by accident; removed by PATCH it becomes unassigned, which
the directory treats as not active (the person is cut off, and only an explicit ``true`` lets them in).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, exists, func, select

from idhub.directory import Directory
from idhub.directory.groups import MemberIds
from idhub.directory.profile import UserProfile
from idhub.directory.tables import GROUP_MEMBERS, GROUPS, USER_VALUES, USERS
from idhub.directory.users import KEEP_PASSWORD, check_version
from idhub.errors import DomainError
from idhub.routing import etag, parse_etag
from idhub.scim import mapping, patch, query, schemas
from idhub.scim.errors import ScimError
from idhub.scim.filter import parse_filter
from idhub.scim.schemas import Resource
from idhub.storage.engine import read_only
from idhub.storage.models import Group, User
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo

# What a resource shows (never the password hash or the archive of a deleted account).
_USER_READ_COLUMNS = tuple(USERS.c[name] for name in mapping.READ_COLUMNS)
# A value's own columns; none shares a name with a user column, so both fit in one result row.
_VALUE_READ_COLUMNS = tuple(c for c in USER_VALUES.c if c.key not in ("id", "user_id"))
# Live users by id, each with its multi-valued rows (one row per value; a user without values once).
_PAGE_USERS = (
    select(
        *_USER_READ_COLUMNS,
        exists().where(GROUP_MEMBERS.c.user_id == USERS.c.id).label("is_member"),
        *_VALUE_READ_COLUMNS,
    )
    .select_from(USERS.outerjoin(USER_VALUES, USER_VALUES.c.user_id == USERS.c.id))
    .where(
        USERS.c.id.in_(bindparam("ids", expanding=True)),
        USERS.c.tenant_id == bindparam("tenant_id"),  # the ids come from this tenant's page; checked anyway
        USERS.c.deleted_at.is_(None),
    )
)
MAX_RESULTS = 1000  # advertised as filter.maxResults; larger ``count`` values are capped (RFC 7644 §3.4.2.4)
DEFAULT_COUNT = 100


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The query parameters of a list or ``/.search`` request (RFC 7644 §3.4.2, §3.4.3)."""

    filter: str | None = None
    sort_by: str | None = None
    sort_order: str | None = None
    start_index: int = 1
    count: int | None = None


def _versions(if_match: str | None) -> set[int] | None:
    """Return the versions ``If-Match`` allows (``None``: any, as for ``*`` or no header)."""
    return None if if_match is None else parse_etag(if_match)


@dataclass(slots=True)
class ScimService:
    """SCIM operations for one tenant in one request's unit of work."""

    uow: UnitOfWork
    directory: Directory
    tenant: TenantInfo
    base_url: str

    # --- Users ----------------------------------------------------------------------------------
    async def create_user(self, body: Resource) -> Resource:
        """Create a user (RFC 7644 §3.3); 409 ``uniqueness`` when the userName is taken."""
        resource = schemas.normalise_resource(schemas.USER_TYPE, body, existing=None)
        profile = mapping.user_profile(resource, active=_active(resource, default=True))
        user = await self.directory.users.create(self.tenant.id, profile, password=resource.get("password"))
        return await self.user_resource(user)

    async def create_users(self, bodies: Sequence[Resource]) -> list[Resource | ScimError | DomainError]:
        """Create many users at once (Bulk): each one's resource stub (id, version) or the error that refused it."""
        profiles: list[UserProfile | ScimError | DomainError] = []
        for body in bodies:
            try:
                resource = schemas.normalise_resource(schemas.USER_TYPE, body, existing=None)
                profiles.append(mapping.user_profile(resource, active=_active(resource, default=True)))
            except (ScimError, DomainError) as exc:  # refuses this one operation only
                profiles.append(exc)
        valid = [p for p in profiles if isinstance(p, UserProfile)]
        created = iter(await self.directory.users.create_many(self.tenant.id, valid))
        out: list[Resource | ScimError | DomainError] = []
        for profile in profiles:
            if not isinstance(profile, UserProfile):
                out.append(profile)
                continue
            result = next(created)
            if isinstance(result, DomainError):
                out.append(result)
            else:
                out.append({"id": str(result), "meta": {"location": f"{self.base_url}/Users/{result}",
                                                        "version": etag(1)}})  # fmt: skip
        return out

    async def get_user(self, user_id: str) -> Resource:
        """Return one user (RFC 7644 §3.4.1)."""
        return await self.user_resource(await self._load_user(user_id))

    async def replace_user(self, user_id: str, body: Resource, if_match: str | None) -> Resource:
        """Replace a user's attributes (PUT, RFC 7644 §3.5.1)."""
        user = await self._load_user(user_id)
        expected = _versions(if_match)
        check_version(user.version, expected)
        existing = await self.user_resource(user)
        resource = schemas.normalise_resource(schemas.USER_TYPE, body, existing=existing)
        # Omitted ``active`` is not asserted by the client (RFC 7644 §3.5.1): the account keeps its state.
        active = resource.get("active", user.enabled)
        return await self._write_user(user, resource, active, expected)

    async def patch_user(self, user_id: str, body: Resource, if_match: str | None) -> Resource:
        """Modify a user with PATCH operations, all or nothing (RFC 7644 §3.5.2)."""
        user = await self._load_user(user_id)
        expected = _versions(if_match)
        check_version(user.version, expected)
        existing = await self.user_resource(user)
        patched = patch.apply_patch(schemas.USER_TYPE, existing, body)
        resource = schemas.normalise_resource(schemas.USER_TYPE, patched, existing=existing)
        # A removed ``active`` is unassigned (RFC 7644 §3.5.2.2), which the directory treats as not active.
        return await self._write_user(user, resource, resource.get("active"), expected)

    async def delete_user(self, user_id: str, if_match: str | None) -> None:
        """Delete a user (RFC 7644 §3.6): disabled everywhere at once, kept as an archived record."""
        user = await self._load_user(user_id)
        await self.directory.users.delete(user, expected_versions=_versions(if_match))

    async def _write_user(
        self, user: User, resource: Resource, active: bool | None, expected: set[int] | None
    ) -> Resource:
        profile = mapping.user_profile(resource, active=active)
        password = resource.get("password", KEEP_PASSWORD)
        await self.directory.users.update(user, profile, password=password, expected_versions=expected)
        return await self.user_resource(user)

    async def list_users(self, q: ListQuery) -> tuple[int, list[Resource]]:
        """Return the total and one page of users matching the query (RFC 7644 §3.4.2)."""
        # Core columns, not ORM entities: a page is read, never written, so the ORM's compile and
        # identity-map steps would be pure overhead.
        conditions = [USERS.c.tenant_id == self.tenant.id, USERS.c.deleted_at.is_(None)]
        if q.filter is not None:
            conditions.append(query.user_filter(parse_filter(q.filter), tenant_id=self.tenant.id))
        count = _page_size(q.count)
        session = self.uow.session
        if count == 0:
            return await self._count(USERS, conditions), []
        # Two statements, both without a transaction (read_only): the page's ids in order, with the
        # total riding along as a window count (a filter that must scan does so once); then those users
        # with their multi-valued rows, through one statement built once at import (building a wide
        # SELECT costs more than a round trip). Only page rows are checked for group membership.
        sort_key = query.user_sort(q.sort_by) if q.sort_by else None
        page = (
            select(USERS.c.id, func.count().over())
            .where(*conditions)
            .order_by(*_order(sort_key, q.sort_order), USERS.c.created_at, USERS.c.id)
            .offset(max(q.start_index, 1) - 1)
            .limit(count)
        )
        await read_only(session)
        ids = (await session.execute(page)).all()
        if not ids:
            return await self._total(USERS, conditions, q.start_index, count, 0), []
        rows = (await session.execute(_PAGE_USERS, {"ids": [uid for uid, _ in ids], "tenant_id": self.tenant.id})).all()
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
            values = await self.directory.users.values_of(ids)
        in_groups = ids if members is None else [uid for uid in ids if uid in members]
        groups = await self.directory.groups.groups_of(in_groups) if in_groups else {}
        return [
            mapping.user_resource(
                u, values[u.id], mapping.groups_attribute(groups.get(u.id, []), self.base_url), self.base_url
            )
            for u in users
        ]

    async def _load_user(self, user_id: str) -> User:
        return await self.directory.users.get(self.tenant.id, mapping.parse_uuid(user_id))

    # --- Groups ---------------------------------------------------------------------------------
    async def create_group(self, body: Resource) -> Resource:
        """Create a group with its members (RFC 7644 §3.3)."""
        resource = schemas.normalise_resource(schemas.GROUP_TYPE, body, existing=None)
        members = await self._members(resource)
        group = await self.directory.groups.create(
            self.tenant.id, name=str(resource["displayName"]), external_id=resource.get("externalId"), members=members
        )
        return await self.group_resource(group)

    async def get_group(self, group_id: str, *, with_members: bool = True) -> Resource:
        """Return one group."""
        return await self.group_resource(await self._load_group(group_id), with_members=with_members)

    async def replace_group(self, group_id: str, body: Resource, if_match: str | None) -> Resource:
        """Replace a group (PUT)."""
        group = await self._load_group(group_id)
        expected = _versions(if_match)
        check_version(group.version, expected)
        existing = await self.group_resource(group)
        resource = schemas.normalise_resource(schemas.GROUP_TYPE, body, existing=existing)
        return await self._write_group(group, resource, expected)

    async def patch_group(self, group_id: str, body: Resource, if_match: str | None) -> Resource:
        """Modify a group with PATCH operations, all or nothing."""
        group = await self._load_group(group_id)
        expected = _versions(if_match)
        check_version(group.version, expected)
        existing = await self.group_resource(group)
        patched = patch.apply_patch(schemas.GROUP_TYPE, existing, body)
        resource = schemas.normalise_resource(schemas.GROUP_TYPE, patched, existing=existing)
        return await self._write_group(group, resource, expected)

    async def delete_group(self, group_id: str, if_match: str | None) -> None:
        """Delete a group and its memberships."""
        group = await self._load_group(group_id)
        await self.directory.groups.delete(group, expected_versions=_versions(if_match))

    async def list_groups(self, q: ListQuery, *, with_members: bool = True) -> tuple[int, list[Resource]]:
        """Return the total and one page of groups matching the query."""
        conditions = [GROUPS.c.tenant_id == self.tenant.id]
        if q.filter is not None:
            conditions.append(query.group_filter(parse_filter(q.filter), tenant_id=self.tenant.id))
        count = _page_size(q.count)
        if count == 0:
            return await self._count(GROUPS, conditions), []
        order = _order(query.group_sort(q.sort_by) if q.sort_by else None, q.sort_order)
        stmt = (
            select(Group)
            .where(*conditions)
            .order_by(*order, Group.created_at, Group.id)
            .offset(max(q.start_index, 1) - 1)
            .limit(count)
        )
        groups = list((await self.uow.session.scalars(stmt)).all())
        total = await self._total(GROUPS, conditions, q.start_index, count, len(groups))
        return total, [await self.group_resource(g, with_members=with_members) for g in groups]

    async def group_resource(self, group: Group, *, with_members: bool = True) -> Resource:
        """Return the SCIM representation of a loaded group."""
        members: list[dict[str, Any]] = []
        if with_members:
            members = mapping.members_attribute(await self.directory.groups.members_of(group.id), self.base_url)
        return mapping.group_resource(group, members, self.base_url)

    async def _write_group(self, group: Group, resource: Resource, expected: set[int] | None) -> Resource:
        members = await self._members(resource)
        await self.directory.groups.update(
            group,
            name=str(resource["displayName"]),
            external_id=resource.get("externalId"),
            members=members,
            expected_versions=expected,
        )
        return await self.group_resource(group)

    async def _members(self, resource: Resource) -> MemberIds:
        return await self.directory.groups.resolve_members(self.tenant.id, mapping.member_references(resource))

    async def _load_group(self, group_id: str) -> Group:
        return await self.directory.groups.get(self.tenant.id, mapping.parse_uuid(group_id))

    # --- shared ---------------------------------------------------------------------------------
    async def _count(self, table: Table, conditions: list[ColumnElement[bool]]) -> int:
        return await self.uow.session.scalar(select(func.count()).select_from(table).where(*conditions)) or 0

    async def _total(
        self, table: Table, conditions: list[ColumnElement[bool]], start_index: int, count: int, found: int
    ) -> int:
        """Return ``totalResults``; a short first page already is the whole result, so no COUNT runs."""
        if (start_index <= 1 and found < count) or (found and found < count):
            return max(start_index, 1) - 1 + found
        return await self._count(table, conditions)


def _active(resource: Resource, *, default: bool) -> bool | None:
    """Return the resource's ``active``, ``default`` when it does not say."""
    value = resource.get("active", default)
    return value if isinstance(value, bool) else default


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
