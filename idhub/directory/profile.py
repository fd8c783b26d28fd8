"""What the directory stores about a person, as typed values every surface builds (SCIM, CLI, broker, admin)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# Single-valued attributes that are columns of ``user`` (profile field name = column name).
PROFILE_COLUMNS = (
    "external_id",
    "display_name",
    "nick_name",
    "profile_url",
    "title",
    "user_type",
    "preferred_language",
    "locale",
    "timezone",
    "name",
    "given_name",
    "family_name",
    "middle_name",
    "honorific_prefix",
    "honorific_suffix",
    "employee_number",
    "cost_center",
    "organization",
    "division",
    "department",
    "manager_id",
)
# Multi-valued attributes the directory keeps as ``user_value`` rows.
MULTI_VALUED = ("emails", "phoneNumbers", "ims", "photos", "addresses", "entitlements", "roles", "x509Certificates")
ADDRESS_COLUMNS = ("formatted", "street_address", "locality", "region", "postal_code", "country")


@dataclass(frozen=True, slots=True)
class ValueRecord:
    """One element of a multi-valued attribute (an email, a phone number, an address...).

    ``primary`` is ``None`` when the writer did not say; ``False`` is kept as written. Addresses use the
    address columns; every other kind uses ``value`` and ``display``.
    """

    attribute: str
    value: str | None = None
    type: str | None = None
    primary: bool | None = None
    display: str | None = None
    formatted: str | None = None
    street_address: str | None = None
    locality: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: str | None = None

    def row(self, position: int) -> dict[str, Any]:
        """Return the ``user_value`` columns of this element at ``position``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["position"] = position
        return out


VALUE_FIELDS = tuple(f.name for f in fields(ValueRecord))


@dataclass(frozen=True, slots=True, kw_only=True)
class UserProfile:
    """Everything about a person that a writer may set; ``None`` fields are unassigned.

    ``user_name`` is the username as written (stored case-folded for lookups, and as written for
    display). ``active`` ``None`` is unassigned, which the directory treats as not active.
    """

    user_name: str
    active: bool | None = True
    values: tuple[ValueRecord, ...] = ()
    external_id: str | None = None
    display_name: str | None = None
    nick_name: str | None = None
    profile_url: str | None = None
    title: str | None = None
    user_type: str | None = None
    preferred_language: str | None = None
    locale: str | None = None
    timezone: str | None = None
    name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    middle_name: str | None = None
    honorific_prefix: str | None = None
    honorific_suffix: str | None = None
    employee_number: str | None = None
    cost_center: str | None = None
    organization: str | None = None
    division: str | None = None
    department: str | None = None
    manager_id: str | None = None

    def columns(self) -> dict[str, Any]:
        """Return the profile's single-valued columns (unassigned ones as ``None``: replace semantics)."""
        return {name: getattr(self, name) for name in PROFILE_COLUMNS}

    def value_rows(self) -> list[dict[str, Any]]:
        """Return the ``user_value`` rows, positions counted per attribute."""
        positions: dict[str, int] = {}
        rows = []
        for record in self.values:
            position = positions.get(record.attribute, 0)
            positions[record.attribute] = position + 1
            rows.append(record.row(position))
        return rows

    def email(self) -> str | None:
        """Return the person's address: the primary email, else the first (OIDC ``email`` claim)."""
        first: str | None = None
        for record in self.values:
            if record.attribute == "emails" and record.value:
                if record.primary:
                    return record.value
                first = first or record.value
        return first
