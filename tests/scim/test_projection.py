"""Response projection: ``attributes``, ``excludedAttributes`` and ``returned`` (RFC 7644 §3.9, RFC 7643 §2.2)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from idhub.scim.projection import parse_attribute_list, project
from idhub.scim.schemas import (
    ENTERPRISE_URN,
    GROUP_TYPE,
    GROUP_URN,
    USER_TYPE,
    USER_URN,
    Attribute,
    ResourceType,
    Schema,
)

BASE = "https://idp.example/scim/v2"


def full_user() -> dict[str, Any]:
    return {
        "schemas": [USER_URN, ENTERPRISE_URN],
        "id": "u1",
        "externalId": "E-1",
        "userName": "alice",
        "name": {"givenName": "Alice", "familyName": "Smith"},
        "displayName": "Alice Smith",
        "active": True,
        "password": "must never leave",
        "emails": [
            {"value": "alice@work.example", "type": "work", "primary": True},
            {"value": "alice@home.example", "type": "home"},
        ],
        "groups": [{"value": "g1", "$ref": f"{BASE}/Groups/g1", "display": "Staff", "type": "direct"}],
        ENTERPRISE_URN: {"department": "R&D", "manager": {"value": "m1", "$ref": f"{BASE}/Users/m1"}},
        "meta": {"resourceType": "User", "location": f"{BASE}/Users/u1", "version": 'W/"1"'},
    }


def group() -> dict[str, Any]:
    return {
        "schemas": [GROUP_URN],
        "id": "g1",
        "displayName": "Staff",
        "members": [{"value": "u1", "$ref": f"{BASE}/Users/u1", "display": "Alice", "type": "User"}],
        "meta": {"resourceType": "Group", "location": f"{BASE}/Groups/g1"},
    }


def proj(attributes: list[str] | None = None, excluded: list[str] | None = None) -> dict[str, Any]:
    return project(USER_TYPE, full_user(), attributes=attributes, excluded=excluded)


# ------------------------------------------------------------------------------------------------- parse_attribute_list


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        (" , ,", None),
        ("userName", ["userName"]),
        ("userName, name.givenName ,emails.value", ["userName", "name.givenName", "emails.value"]),
        (f"{ENTERPRISE_URN}:manager,,id", [f"{ENTERPRISE_URN}:manager", "id"]),
    ],
)
def test_parse_attribute_list_comma_separated_splits(text: str | None, expected: list[str] | None) -> None:
    assert parse_attribute_list(text) == expected


# ------------------------------------------------------------------------------------------------- defaults


def test_project_no_parameters_returns_default_attributes_without_password() -> None:
    expected = full_user()
    del expected["password"]
    assert proj() == expected


def test_project_password_requested_still_never_returned() -> None:
    out = proj(attributes=["password", "userName"])
    assert "password" not in out and out["userName"] == "alice"


def test_project_result_is_a_copy_input_unchanged() -> None:
    resource = full_user()
    snapshot = copy.deepcopy(resource)
    out = project(USER_TYPE, resource, attributes=None, excluded=["name.givenName"])
    assert resource == snapshot
    out["emails"][0]["value"] = "changed"
    out["schemas"].append("x")
    assert resource == snapshot


# ------------------------------------------------------------------------------------------------- attributes


def test_project_attributes_returns_always_plus_requested() -> None:
    assert proj(attributes=["userName"]) == {"schemas": [USER_URN, ENTERPRISE_URN], "id": "u1", "userName": "alice"}


def test_project_attributes_names_any_case() -> None:
    out = proj(attributes=["USERNAME", "DisplayName"])
    assert out == {
        "schemas": [USER_URN, ENTERPRISE_URN],
        "id": "u1",
        "userName": "alice",
        "displayName": "Alice Smith",
    }


def test_project_attributes_dotted_sub_attribute_returns_only_it() -> None:
    out = proj(attributes=["name.givenName"])
    assert out["name"] == {"givenName": "Alice"}
    assert "userName" not in out


def test_project_attributes_dotted_multi_valued_sub_applies_to_each_element() -> None:
    out = proj(attributes=["emails.value"])
    assert out["emails"] == [{"value": "alice@work.example"}, {"value": "alice@home.example"}]


def test_project_attributes_whole_and_sub_returns_whole() -> None:
    out = proj(attributes=["emails.type", "emails"])
    assert out["emails"] == full_user()["emails"]


def test_project_attributes_two_subs_returns_both() -> None:
    out = proj(attributes=["emails.type", "EMAILS.PRIMARY"])
    assert out["emails"] == [{"type": "work", "primary": True}, {"type": "home"}]


def test_project_attributes_urn_qualified_extension_attribute_returned() -> None:
    out = proj(attributes=[f"{ENTERPRISE_URN}:department"])
    assert out == {"schemas": [USER_URN, ENTERPRISE_URN], "id": "u1", ENTERPRISE_URN: {"department": "R&D"}}


def test_project_attributes_urn_qualified_sub_attribute_returned() -> None:
    out = proj(attributes=[f"{ENTERPRISE_URN}:manager.value"])
    assert out[ENTERPRISE_URN] == {"manager": {"value": "m1"}}


def test_project_attributes_bare_extension_urn_returns_whole_extension() -> None:
    out = proj(attributes=[ENTERPRISE_URN.lower()])
    assert out[ENTERPRISE_URN] == full_user()[ENTERPRISE_URN]
    assert "userName" not in out


def test_project_attributes_core_urn_qualified_returned() -> None:
    out = proj(attributes=[f"{USER_URN}:userName", f"{USER_URN}:name.familyName"])
    assert out["userName"] == "alice" and out["name"] == {"familyName": "Smith"}


def test_project_attributes_unqualified_extension_attribute_returned() -> None:
    assert proj(attributes=["department"])[ENTERPRISE_URN] == {"department": "R&D"}


def test_project_attributes_unknown_names_ignored() -> None:
    out = proj(attributes=["nope", "name.nope", "urn:example:x:y", "userName"])
    assert out == {"schemas": [USER_URN, ENTERPRISE_URN], "id": "u1", "userName": "alice"}


def test_project_attributes_meta_and_external_id_returned_when_named() -> None:
    out = proj(attributes=["meta.version", "externalId"])
    assert out["meta"] == {"version": 'W/"1"'} and out["externalId"] == "E-1"


def test_project_attributes_absent_attribute_not_invented() -> None:
    assert "nickName" not in proj(attributes=["nickName"])


# ------------------------------------------------------------------------------------------------- excludedAttributes


def test_project_excluded_removes_attribute() -> None:
    out = proj(excluded=["emails", "GROUPS"])
    assert "emails" not in out and "groups" not in out and out["userName"] == "alice"


def test_project_excluded_sub_attribute_removes_only_it() -> None:
    out = proj(excluded=["name.givenName", "emails.primary"])
    assert out["name"] == {"familyName": "Smith"}
    assert out["emails"] == [
        {"value": "alice@work.example", "type": "work"},
        {"value": "alice@home.example", "type": "home"},
    ]


def test_project_excluded_always_attributes_still_returned() -> None:
    out = proj(excluded=["id", "schemas"])
    assert out["id"] == "u1" and out["schemas"] == [USER_URN, ENTERPRISE_URN]


def test_project_excluded_extension_attribute_removed_and_empty_extension_dropped() -> None:
    out = proj(excluded=[f"{ENTERPRISE_URN}:department", "manager"])
    assert ENTERPRISE_URN not in out


def test_project_excluded_bare_extension_urn_removes_extension() -> None:
    assert ENTERPRISE_URN not in proj(excluded=[ENTERPRISE_URN])


def test_project_attributes_and_excluded_both_applied() -> None:
    out = proj(attributes=["name", "emails"], excluded=["name.familyName"])
    assert out["name"] == {"givenName": "Alice"} and "emails" in out and "userName" not in out


def test_project_excluded_all_subs_drops_attribute() -> None:
    out = proj(excluded=["name.givenName", "name.familyName"])
    assert "name" not in out


# ------------------------------------------------------------------------------------------------- groups and returned


def test_project_group_excluded_members_omits_them() -> None:
    out = project(GROUP_TYPE, group(), attributes=None, excluded=["members"])
    assert out == {
        "schemas": [GROUP_URN],
        "id": "g1",
        "displayName": "Staff",
        "meta": {"resourceType": "Group", "location": f"{BASE}/Groups/g1"},
    }


def test_project_group_attributes_display_name_only() -> None:
    out = project(GROUP_TYPE, group(), attributes=["displayName"], excluded=None)
    assert out == {"schemas": [GROUP_URN], "id": "g1", "displayName": "Staff"}


def test_project_group_members_value_only() -> None:
    out = project(GROUP_TYPE, group(), attributes=["members.value"], excluded=None)
    assert out["members"] == [{"value": "u1"}]


def test_project_unknown_resource_keys_never_returned() -> None:
    resource = {**group(), "internalFlag": True}
    assert "internalFlag" not in project(GROUP_TYPE, resource, attributes=None, excluded=None)


def _returned_type() -> ResourceType:
    schema = Schema(
        "urn:example:params:scim:schemas:Thing",
        "Thing",
        "A test resource",
        (
            Attribute("label", "string"),
            Attribute("secretish", "string", returned="request"),
            Attribute("code", "string", returned="always"),
            Attribute(
                "parts",
                "complex",
                sub_attributes=(
                    Attribute("a", "string"),
                    Attribute("b", "string", returned="request"),
                    Attribute("c", "string", returned="always"),
                    Attribute("d", "string", returned="never"),
                ),
            ),
        ),
    )
    return ResourceType("Thing", "/Things", schema)


def _thing() -> dict[str, Any]:
    return {
        "schemas": ["urn:example:params:scim:schemas:Thing"],
        "id": "t1",
        "label": "L",
        "secretish": "S",
        "code": "C",
        "parts": {"a": "1", "b": "2", "c": "3", "d": "4"},
    }


def test_project_request_attribute_only_when_named() -> None:
    rt = _returned_type()
    default = project(rt, _thing(), attributes=None, excluded=None)
    assert "secretish" not in default and default["parts"] == {"a": "1", "c": "3"}
    named = project(rt, _thing(), attributes=["secretish", "parts.b"], excluded=None)
    assert named == {
        "schemas": ["urn:example:params:scim:schemas:Thing"],
        "id": "t1",
        "secretish": "S",
        "code": "C",
        "parts": {"b": "2", "c": "3"},
    }


def test_project_always_attribute_survives_exclusion() -> None:
    rt = _returned_type()
    out = project(rt, _thing(), attributes=None, excluded=["code", "parts.c", "label"])
    assert out["code"] == "C" and out["parts"] == {"a": "1", "c": "3"} and "label" not in out
