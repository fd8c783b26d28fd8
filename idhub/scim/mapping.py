"""Translate between SCIM resources (RFC 7643 §4) and the directory's own types.

The SCIM surface works on whole resources: a write arrives as (or, for PATCH, is turned into) a
canonical resource dict, which this module turns into a :class:`~idhub.directory.profile.UserProfile`
for the directory's commands. Reads build the dict from the directory's rows. Attribute names here are
the canonical ones that :func:`idhub.scim.schemas.normalise_resource` produces. No rule of the
directory lives here (usernames, emails, passwords and who is active are the directory's).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row

from idhub.directory.groups import Member, Membership
from idhub.directory.profile import UserProfile, ValueRecord
from idhub.errors import Invalid
from idhub.routing import etag
from idhub.scim.schemas import ENTERPRISE_URN, GROUP_URN, USER_URN, Resource
from idhub.storage.models import Group, User, UserValue

# Single-valued core attributes stored in a column of the same meaning.
USER_COLUMNS = {
    "externalId": "external_id",
    "displayName": "display_name",
    "nickName": "nick_name",
    "profileUrl": "profile_url",
    "title": "title",
    "userType": "user_type",
    "preferredLanguage": "preferred_language",
    "locale": "locale",
    "timezone": "timezone",
}
NAME_COLUMNS = {
    "formatted": "name",
    "familyName": "family_name",
    "givenName": "given_name",
    "middleName": "middle_name",
    "honorificPrefix": "honorific_prefix",
    "honorificSuffix": "honorific_suffix",
}
ENTERPRISE_COLUMNS = {
    "employeeNumber": "employee_number",
    "costCenter": "cost_center",
    "organization": "organization",
    "division": "division",
    "department": "department",
}
# The user columns a resource is built from (list pages read exactly these).
READ_COLUMNS = (
    "id",
    "external_id",
    "user_name",
    "username",
    "enabled",
    "manager_id",
    "created_at",
    "updated_at",
    "version",
    *USER_COLUMNS.values(),
    *NAME_COLUMNS.values(),
    *ENTERPRISE_COLUMNS.values(),
)
MULTI_VALUED = ("emails", "phoneNumbers", "ims", "photos", "addresses", "entitlements", "roles", "x509Certificates")
ADDRESS_PARTS = {
    "formatted": "formatted",
    "streetAddress": "street_address",
    "locality": "locality",
    "region": "region",
    "postalCode": "postal_code",
    "country": "country",
}


def timestamp(value: datetime) -> str:
    """Return an RFC 3339 UTC timestamp with milliseconds (``meta.created``/``lastModified``, RFC 7643 §3.1)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


# A user or value as an ORM entity (writes) or as a plain row of the same columns (list pages).
UserRow = User | Row[*tuple[Any, ...]]
ValueRow = UserValue | Row[*tuple[Any, ...]]


def _value_element(row: ValueRow) -> dict[str, Any]:
    element: dict[str, Any] = {}
    if row.attribute == "addresses":
        for name, column in ADDRESS_PARTS.items():
            if getattr(row, column) is not None:
                element[name] = getattr(row, column)
    else:
        if row.value is not None:
            element["value"] = row.value
        if row.display is not None:
            element["display"] = row.display
    if row.type is not None:
        element["type"] = row.type
    if row.primary is not None:
        element["primary"] = row.primary  # false too, when the client wrote it: it reads back the same
    return element


def _columns_of(user: UserRow) -> Mapping[Any, Any]:
    if isinstance(user, Row):
        return user._mapping
    return {column: getattr(user, column) for column in READ_COLUMNS}


def user_resource(user: UserRow, values: list[ValueRow], groups: list[dict[str, Any]], base_url: str) -> Resource:
    """Return the full SCIM representation of a user (every attribute it has; ``password`` never)."""
    u = _columns_of(user)
    uid = str(u["id"])
    resource: Resource = {"schemas": [USER_URN], "id": uid}
    if u["external_id"] is not None:
        resource["externalId"] = u["external_id"]
    resource["userName"] = u["user_name"] or u["username"]
    name = {attr: u[column] for attr, column in NAME_COLUMNS.items() if u[column] is not None}
    if name:
        resource["name"] = name
    for attr, column in USER_COLUMNS.items():
        if attr != "externalId" and u[column] is not None:
            resource[attr] = u[column]
    if u["enabled"] is not None:  # NULL: a client removed ``active``; it stays unassigned (and not active)
        resource["active"] = u["enabled"]
    for row in sorted(values, key=lambda v: v.position):
        resource.setdefault(row.attribute, []).append(_value_element(row))
    if groups:
        resource["groups"] = groups
    enterprise = {attr: u[column] for attr, column in ENTERPRISE_COLUMNS.items() if u[column] is not None}
    if u["manager_id"] is not None:
        enterprise["manager"] = {"value": u["manager_id"], "$ref": f"{base_url}/Users/{u['manager_id']}"}
    if enterprise:
        resource["schemas"].append(ENTERPRISE_URN)
        resource[ENTERPRISE_URN] = enterprise
    resource["meta"] = {
        "resourceType": "User",
        "created": timestamp(u["created_at"]),
        "lastModified": timestamp(u["updated_at"]),
        "location": f"{base_url}/Users/{uid}",
        "version": etag(u["version"]),
    }
    return resource


def user_profile(resource: Resource, *, active: bool | None) -> UserProfile:
    """Return the directory profile a canonical resource describes; ``active`` as the caller decided it.

    Every SCIM-managed attribute is in the profile, ``None`` when the resource lacks it: this implements
    PUT's replace semantics (RFC 7644 §3.5.1) and, since PATCH is applied to the whole resource first,
    PATCH too.
    """
    columns: dict[str, Any] = {column: resource.get(attr) for attr, column in USER_COLUMNS.items()}
    name = resource.get("name") or {}
    for attr, column in NAME_COLUMNS.items():
        columns[column] = name.get(attr)
    enterprise = resource.get(ENTERPRISE_URN) or {}
    for attr, column in ENTERPRISE_COLUMNS.items():
        columns[column] = enterprise.get(attr)
    manager = enterprise.get("manager")
    columns["manager_id"] = str(manager["value"]) if isinstance(manager, dict) and manager.get("value") else None
    values: list[ValueRecord] = []
    for attr in MULTI_VALUED:
        for element in resource.get(attr) or ():
            primary = element.get("primary")
            if attr == "addresses":
                parts = {column: element.get(part) for part, column in ADDRESS_PARTS.items()}
                values.append(ValueRecord(attr, type=element.get("type"), primary=primary, **parts))
            else:
                value = element.get("value")
                values.append(
                    ValueRecord(
                        attr,
                        value=None if value is None else str(value),
                        type=element.get("type"),
                        primary=primary,
                        display=element.get("display"),
                    )
                )
    return UserProfile(user_name=str(resource["userName"]), active=active, values=tuple(values), **columns)


def groups_attribute(memberships: list[Membership], base_url: str) -> list[dict[str, Any]]:
    """Return a user's ``groups`` (RFC 7643 §4.1.2): direct and indirect memberships."""
    return [
        {
            "value": str(m.group_id),
            "$ref": f"{base_url}/Groups/{m.group_id}",
            "display": m.name,
            "type": "direct" if m.direct else "indirect",
        }
        for m in memberships
    ]


def members_attribute(members: list[Member], base_url: str) -> list[dict[str, Any]]:
    """Return a group's ``members`` (RFC 7643 §4.2): users first, then nested groups."""
    return [
        {
            "value": str(m.id),
            "$ref": f"{base_url}/{'Users' if m.kind == 'User' else 'Groups'}/{m.id}",
            "display": m.name,
            "type": m.kind,
        }
        for m in members
    ]


def group_resource(group: Group, members: list[dict[str, Any]], base_url: str) -> Resource:
    """Return the SCIM representation of a group (RFC 7643 §4.2)."""
    resource: Resource = {"schemas": [GROUP_URN], "id": str(group.id)}
    if group.external_id is not None:
        resource["externalId"] = group.external_id
    resource["displayName"] = group.display_name
    if members:
        resource["members"] = members
    resource["meta"] = {
        "resourceType": "Group",
        "created": timestamp(group.created_at),
        "lastModified": timestamp(group.updated_at),
        "location": f"{base_url}/Groups/{group.id}",
        "version": etag(group.version),
    }
    return resource


def member_references(resource: Resource) -> list[tuple[str | None, uuid.UUID]]:
    """Return ``(type, id)`` for each member of a canonical group resource; a non-UUID value is no member."""
    out: list[tuple[str | None, uuid.UUID]] = []
    for member in resource.get("members") or []:
        if isinstance(member, dict) and member.get("value") is not None:
            member_id = parse_uuid(str(member["value"]))
            if member_id is None:
                raise Invalid(f"member {str(member['value'])[:64]!r} does not exist")
            out.append((member.get("type"), member_id))
    return out


def parse_uuid(value: str) -> uuid.UUID | None:
    """Return ``value`` as a UUID, ``None`` when it is not one (ids in URLs and references)."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None
