"""Map directory rows to SCIM resources (RFC 7643 §4) and canonical SCIM resources back onto rows.

The SCIM surface works on whole resources: a write arrives as (or, for PATCH, is turned into) a
canonical resource dict, which this module copies onto the ``User``/``Group`` row and the user's
multi-valued rows. Reads build the dict from the rows. Attribute names here are the canonical ones
that :func:`idhub.scim.schemas.normalise_resource` produces.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row

from idhub.directory.users import USERNAME_RE, normalise_username
from idhub.scim.errors import InvalidValue
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


def etag(version: int) -> str:
    """Return the weak entity tag of a resource version (RFC 7644 §3.14, RFC 7232 §2.3)."""
    return f'W/"{version}"'


def parse_etag(header: str) -> set[int] | None:
    """Return the versions an ``If-Match``/``If-None-Match`` header names, ``None`` for ``*``.

    Unparseable tags name no version (they can never match), so a garbled header fails safe.
    """
    if header.strip() == "*":
        return None
    versions: set[int] = set()
    for raw in header.split(","):
        tag = raw.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if len(tag) >= 2 and tag[0] == '"' and tag[-1] == '"' and tag[1:-1].isdigit() and len(tag) < 20:
            versions.add(int(tag[1:-1]))
    return versions


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
    if row.primary:
        element["primary"] = True
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


def user_columns(resource: Resource) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return the user-row columns a canonical resource sets, and its multi-valued rows (as column dicts).

    Every SCIM-managed column is in the result, ``None`` when the resource lacks the attribute: this
    implements PUT's replace semantics (RFC 7644 §3.5.1) and, since PATCH is applied to the whole
    resource first, PATCH too. ``email`` is the primary (else first) work address of ``emails``.
    """
    user_name = str(resource["userName"])
    username = normalise_username(user_name)
    if not USERNAME_RE.fullmatch(username):
        # The directory's one rule for usernames, whichever surface creates the account.
        raise InvalidValue("userName must be 1-255 characters without spaces or control characters")
    columns: dict[str, Any] = {"username": username, "user_name": user_name}
    for attr, column in USER_COLUMNS.items():
        columns[column] = resource.get(attr)
    name = resource.get("name") or {}
    for attr, column in NAME_COLUMNS.items():
        columns[column] = name.get(attr)
    enterprise = resource.get(ENTERPRISE_URN) or {}
    for attr, column in ENTERPRISE_COLUMNS.items():
        columns[column] = enterprise.get(attr)
    manager = enterprise.get("manager")
    columns["manager_id"] = str(manager["value"]) if isinstance(manager, dict) and manager.get("value") else None
    rows: list[dict[str, Any]] = []
    primary_email: str | None = None
    first_email: str | None = None
    for attr in MULTI_VALUED:
        for position, element in enumerate(resource.get(attr) or ()):
            row: dict[str, Any] = {
                "attribute": attr,
                "position": position,
                "type": element.get("type"),
                "primary": bool(element.get("primary", False)),
            }
            if attr == "addresses":
                for name_, column in ADDRESS_PARTS.items():
                    row[column] = element.get(name_)
            else:
                row["value"] = None if element.get("value") is None else str(element["value"])
                row["display"] = element.get("display")
            rows.append(row)
            if attr == "emails" and row["value"]:
                first_email = first_email or row["value"]
                if row["primary"]:
                    primary_email = row["value"]
    columns["email"] = primary_email or first_email
    return columns, rows


def apply_user_resource(user: User, resource: Resource) -> list[dict[str, Any]]:
    """Copy a canonical resource onto ``user`` (see :func:`user_columns`); return the multi-valued rows."""
    columns, rows = user_columns(resource)
    email = columns.pop("email")
    for column, value in columns.items():
        setattr(user, column, value)
    if email != user.email:
        user.email = email
        user.email_verified = False  # an HR feed asserts an address, it does not prove the person controls it
    return rows


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


def member_ids(resource: Resource) -> list[tuple[str | None, str]]:
    """Return ``(type, value)`` for each member of a canonical group resource."""
    out: list[tuple[str | None, str]] = []
    for member in resource.get("members") or []:
        if isinstance(member, dict) and member.get("value") is not None:
            out.append((member.get("type"), str(member["value"])))
    return out


def parse_uuid(value: str) -> uuid.UUID | None:
    """Return ``value`` as a UUID, ``None`` when it is not one (ids in URLs and references)."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None
