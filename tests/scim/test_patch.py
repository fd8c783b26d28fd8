"""SCIM PATCH applied in memory (RFC 7644 §3.5.2), including what Microsoft Entra ID and Okta send."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from idhub.scim.errors import InvalidPath, InvalidSyntax, InvalidValue, Mutability, NoTarget, ScimError
from idhub.scim.patch import PATCH_OP_URN, apply_patch
from idhub.scim.schemas import ENTERPRISE_URN, GROUP_TYPE, GROUP_URN, USER_TYPE, USER_URN, normalise_resource

BASE = "https://idp.example/scim/v2"
UID = "2819c223-7f76-453a-919d-413861904646"


def alice() -> dict[str, Any]:
    return {
        "schemas": [USER_URN],
        "id": UID,
        "externalId": "E-1",
        "userName": "alice",
        "name": {"givenName": "Alice", "familyName": "Smith"},
        "displayName": "Alice Smith",
        "active": True,
        "emails": [
            {"value": "alice@work.example", "type": "work", "primary": True},
            {"value": "alice@home.example", "type": "home"},
        ],
        "groups": [{"value": "g1", "$ref": f"{BASE}/Groups/g1", "display": "Staff", "type": "direct"}],
        "meta": {"resourceType": "User", "location": f"{BASE}/Users/{UID}", "version": 'W/"1"'},
    }


def staff() -> dict[str, Any]:
    return {
        "schemas": [GROUP_URN],
        "id": "g1",
        "displayName": "Staff",
        "members": [
            {"value": "u1", "$ref": f"{BASE}/Users/u1", "display": "Alice", "type": "User"},
            {"value": "u2", "$ref": f"{BASE}/Users/u2", "display": "Bob", "type": "User"},
        ],
        "meta": {"resourceType": "Group", "location": f"{BASE}/Groups/g1"},
    }


def ops(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP_URN], "Operations": list(operations)}


def patch_user(*operations: dict[str, Any], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    return apply_patch(USER_TYPE, resource if resource is not None else alice(), ops(*operations))


def patch_group(*operations: dict[str, Any]) -> dict[str, Any]:
    return apply_patch(GROUP_TYPE, staff(), ops(*operations))


def fails(error: type[ScimError], *operations: dict[str, Any], rt: Any = USER_TYPE) -> ScimError:
    resource = alice() if rt is USER_TYPE else staff()
    with pytest.raises(error) as info:
        apply_patch(rt, resource, ops(*operations))
    assert info.value.scim_type == error.scim_type
    return info.value


# ------------------------------------------------------------------------------------------------- envelope


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"Operations": [{"op": "add", "path": "title", "value": "x"}]},
        {"schemas": [USER_URN], "Operations": [{"op": "add", "path": "title", "value": "x"}]},
        {"schemas": PATCH_OP_URN, "Operations": [{"op": "add", "path": "title", "value": "x"}]},
        {"schemas": [PATCH_OP_URN]},
        {"schemas": [PATCH_OP_URN], "Operations": []},
        {"schemas": [PATCH_OP_URN], "Operations": {"op": "add"}},
        {"schemas": [PATCH_OP_URN], "Operations": ["add"]},
    ],
)
def test_apply_patch_malformed_envelope_raises_invalid_syntax(body: Any) -> None:
    with pytest.raises(InvalidSyntax) as info:
        apply_patch(USER_TYPE, alice(), body)
    assert info.value.scim_type == "invalidSyntax"


@pytest.mark.parametrize("op", ["move", "", None, 3, "copy"])
def test_apply_patch_unknown_op_raises_invalid_syntax(op: Any) -> None:
    fails(InvalidSyntax, {"op": op, "path": "title", "value": "x"})


def test_apply_patch_missing_op_raises_invalid_syntax() -> None:
    fails(InvalidSyntax, {"path": "title", "value": "x"})


@pytest.mark.parametrize("op", ["add", "Add", "ADD", "replace", "Replace", "REPLACE"])
def test_apply_patch_op_any_case_accepted(op: str) -> None:
    assert patch_user({"op": op, "path": "title", "value": "CTO"})["title"] == "CTO"


def test_apply_patch_member_names_any_case_accepted() -> None:
    body = {"SCHEMAS": [PATCH_OP_URN.upper()], "operations": [{"OP": "Replace", "Path": "title", "VALUE": "CTO"}]}
    assert apply_patch(USER_TYPE, alice(), body)["title"] == "CTO"


def test_apply_patch_missing_value_raises_invalid_value() -> None:
    fails(InvalidValue, {"op": "add", "path": "title"})
    fails(InvalidValue, {"op": "replace"})


def test_apply_patch_pathless_value_not_object_raises_invalid_syntax() -> None:
    fails(InvalidSyntax, {"op": "replace", "value": "x"})
    fails(InvalidSyntax, {"op": "add", "value": [{"title": "x"}]})


def test_apply_patch_error_detail_names_operation_index() -> None:
    error = fails(InvalidPath, {"op": "add", "path": "title", "value": "x"}, {"op": "add", "path": "nope", "value": 1})
    assert error.detail.startswith("Operations[1]: ")


# ------------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "path",
    [
        "nope",
        "name.nope",
        "title.sub",
        'emails[type eq "work"',
        "emails[type eq work]",
        'title[value eq "x"]',
        'emails[nope eq "x"]',
        'emails[type eq "work"].nope',
        "urn:example:unknown:attr",
        f"{ENTERPRISE_URN}:userName",
        "",
        "  ",
    ],
)
def test_apply_patch_bad_path_raises_invalid_path(path: str) -> None:
    fails(InvalidPath, {"op": "replace", "path": path, "value": "x"})


def test_apply_patch_path_not_string_raises_invalid_path() -> None:
    fails(InvalidPath, {"op": "replace", "path": 5, "value": "x"})


def test_apply_patch_user_attribute_on_group_raises_invalid_path() -> None:
    fails(InvalidPath, {"op": "replace", "path": "userName", "value": "x"}, rt=GROUP_TYPE)


# ------------------------------------------------------------------------------------------------- add


def test_apply_patch_add_single_value_sets_it() -> None:
    out = patch_user({"op": "add", "path": "nickName", "value": "Ali"})
    assert out["nickName"] == "Ali"


def test_apply_patch_add_existing_single_value_replaces_it() -> None:
    assert patch_user({"op": "add", "path": "displayName", "value": "A. S."})["displayName"] == "A. S."


def test_apply_patch_add_complex_merges_sub_attributes() -> None:
    out = patch_user({"op": "add", "path": "name", "value": {"middleName": "J", "givenName": "Alicia"}})
    assert out["name"] == {"givenName": "Alicia", "familyName": "Smith", "middleName": "J"}


def test_apply_patch_add_sub_attribute_sets_it() -> None:
    resource = alice()
    del resource["name"]
    out = patch_user({"op": "add", "path": "name.givenName", "value": "Alice"}, resource=resource)
    assert out["name"] == {"givenName": "Alice"}


def test_apply_patch_add_multi_valued_appends() -> None:
    out = patch_user({"op": "add", "path": "phoneNumbers", "value": [{"value": "+1 555 0100", "type": "work"}]})
    assert out["phoneNumbers"] == [{"value": "+1 555 0100", "type": "work"}]
    out = patch_user({"op": "add", "path": "emails", "value": [{"value": "alice@other.example", "type": "other"}]})
    assert [e["value"] for e in out["emails"]] == ["alice@work.example", "alice@home.example", "alice@other.example"]


def test_apply_patch_add_multi_valued_single_object_appended() -> None:
    out = patch_user({"op": "add", "path": "roles", "value": {"value": "admin"}})
    assert out["roles"] == [{"value": "admin"}]


def test_apply_patch_add_existing_element_not_duplicated() -> None:
    out = patch_user({"op": "add", "path": "emails", "value": [{"value": "ALICE@home.example", "type": "home"}]})
    assert len(out["emails"]) == 2
    assert out["emails"][1] == {"value": "ALICE@home.example", "type": "home"}


def test_apply_patch_add_primary_element_clears_other_primaries() -> None:
    out = patch_user({"op": "add", "path": "emails", "value": [{"value": "new@x.example", "primary": True}]})
    assert [e.get("primary") for e in out["emails"]] == [False, None, True]


def test_apply_patch_add_primary_to_existing_element_clears_others() -> None:
    out = patch_user({"op": "add", "path": "emails", "value": [{"value": "alice@home.example", "primary": "True"}]})
    assert [e.get("primary") for e in out["emails"]] == [False, True]


def test_apply_patch_add_filter_sub_attribute_sets_on_matching() -> None:
    out = patch_user({"op": "add", "path": 'emails[type eq "home"].display', "value": "Home"})
    assert out["emails"][1] == {"value": "alice@home.example", "type": "home", "display": "Home"}


def test_apply_patch_add_eq_filter_no_match_creates_element() -> None:
    out = patch_user({"op": "Add", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+1 555 0199"})
    assert out["phoneNumbers"] == [{"type": "mobile", "value": "+1 555 0199"}]


def test_apply_patch_add_non_eq_filter_no_match_raises_no_target() -> None:
    fails(NoTarget, {"op": "add", "path": 'emails[type co "x"].value', "value": "a@b.example"})
    fails(NoTarget, {"op": "add", "path": 'emails[type eq "x" or type eq "y"].value', "value": "a@b.example"})


def test_apply_patch_add_wrong_type_raises_invalid_value() -> None:
    fails(InvalidValue, {"op": "add", "path": "nickName", "value": 5})
    fails(InvalidValue, {"op": "add", "path": "name", "value": 5})
    fails(InvalidValue, {"op": "add", "path": "emails", "value": [5]})
    fails(InvalidValue, {"op": "add", "path": "active", "value": "yes"})
    fails(InvalidValue, {"op": "add", "path": 'emails[type eq "work"].primary', "value": "maybe"})


def test_apply_patch_add_extension_attribute_declares_schema() -> None:
    out = patch_user({"op": "add", "path": f"{ENTERPRISE_URN}:department", "value": "R&D"})
    assert out[ENTERPRISE_URN] == {"department": "R&D"}
    assert out["schemas"] == [USER_URN, ENTERPRISE_URN]


def test_apply_patch_add_extension_urn_path_with_object_sets_attributes() -> None:
    out = patch_user({"op": "add", "path": ENTERPRISE_URN, "value": {"costCenter": "4130", "division": "Ops"}})
    assert out[ENTERPRISE_URN] == {"costCenter": "4130", "division": "Ops"}


def test_apply_patch_add_password_kept_for_caller() -> None:
    assert patch_user({"op": "add", "path": "password", "value": "new secret pass"})["password"] == "new secret pass"


# ------------------------------------------------------------------------------------------------- replace


def test_apply_patch_replace_single_value_sets_it() -> None:
    assert patch_user({"op": "replace", "path": "userName", "value": "alice2"})["userName"] == "alice2"


def test_apply_patch_replace_missing_attribute_adds_it() -> None:
    assert patch_user({"op": "replace", "path": "title", "value": "CTO"})["title"] == "CTO"


def test_apply_patch_replace_complex_leaves_other_sub_attributes() -> None:
    out = patch_user({"op": "replace", "path": "name", "value": {"familyName": "Jones"}})
    assert out["name"] == {"givenName": "Alice", "familyName": "Jones"}


def test_apply_patch_replace_complex_null_sub_attribute_unassigns_it() -> None:
    out = patch_user({"op": "replace", "path": "name", "value": {"familyName": None}})
    assert out["name"] == {"givenName": "Alice"}


def test_apply_patch_replace_multi_valued_without_filter_replaces_all() -> None:
    out = patch_user({"op": "replace", "path": "emails", "value": [{"value": "only@x.example", "type": "work"}]})
    assert out["emails"] == [{"value": "only@x.example", "type": "work"}]


def test_apply_patch_replace_multi_valued_with_empty_list_unassigns() -> None:
    assert "emails" not in patch_user({"op": "replace", "path": "emails", "value": []})


def test_apply_patch_replace_filter_merges_into_matching_elements() -> None:
    out = patch_user({"op": "replace", "path": 'emails[type eq "home"]', "value": {"value": "new@home.example"}})
    assert out["emails"][1] == {"value": "new@home.example", "type": "home"}
    assert out["emails"][0] == alice()["emails"][0]


def test_apply_patch_replace_filter_sub_attribute_sets_on_matching() -> None:
    out = patch_user({"op": "replace", "path": 'emails[type eq "work"].value', "value": "new@work.example"})
    assert out["emails"][0] == {"value": "new@work.example", "type": "work", "primary": True}


def test_apply_patch_replace_filter_case_insensitive_value_matches() -> None:
    out = patch_user({"op": "replace", "path": 'emails[value eq "ALICE@HOME.EXAMPLE"].type', "value": "other"})
    assert out["emails"][1]["type"] == "other"


def test_apply_patch_replace_filter_any_case_sub_attribute_names() -> None:
    out = patch_user({"op": "replace", "path": 'EMAILS[TYPE eq "home"].DISPLAY', "value": "Home"})
    assert out["emails"][1]["display"] == "Home"


def test_apply_patch_replace_filter_and_expression_matches() -> None:
    out = patch_user(
        {"op": "replace", "path": 'emails[type eq "work" and primary eq true].display', "value": "Work"},
    )
    assert out["emails"][0]["display"] == "Work" and "display" not in out["emails"][1]


def test_apply_patch_replace_filter_primary_true_clears_others() -> None:
    out = patch_user({"op": "replace", "path": 'emails[type eq "home"].primary', "value": True})
    assert [e.get("primary") for e in out["emails"]] == [False, True]


def test_apply_patch_replace_filter_no_match_raises_no_target() -> None:
    error = fails(NoTarget, {"op": "replace", "path": 'emails[type eq "other"].value', "value": "x@y.example"})
    assert "noTarget" == error.scim_type


def test_apply_patch_replace_all_elements_sub_attribute_sets_on_each() -> None:
    out = patch_user({"op": "replace", "path": "emails.display", "value": "Mail"})
    assert [e["display"] for e in out["emails"]] == ["Mail", "Mail"]


def test_apply_patch_replace_null_value_unassigns() -> None:
    assert "displayName" not in patch_user({"op": "replace", "path": "displayName", "value": None})


def test_apply_patch_replace_manager_with_new_value_drops_old_ref() -> None:
    resource = alice()
    resource["schemas"].append(ENTERPRISE_URN)
    resource[ENTERPRISE_URN] = {"manager": {"value": "m1", "$ref": f"{BASE}/Users/m1"}}
    out = patch_user({"op": "replace", "path": f"{ENTERPRISE_URN}:manager", "value": "m2"}, resource=resource)
    assert out[ENTERPRISE_URN] == {"manager": {"value": "m2"}}


# ------------------------------------------------------------------------------------------------- remove


def test_apply_patch_remove_without_path_raises_no_target() -> None:
    fails(NoTarget, {"op": "remove"})
    fails(NoTarget, {"op": "remove", "value": {"title": "x"}})


def test_apply_patch_remove_single_attribute_unassigns_it() -> None:
    out = patch_user({"op": "remove", "path": "displayName"})
    assert "displayName" not in out


def test_apply_patch_remove_absent_attribute_no_change() -> None:
    out = patch_user({"op": "remove", "path": "nickName"})
    assert out == alice()


def test_apply_patch_remove_sub_attribute_unassigns_it() -> None:
    assert patch_user({"op": "remove", "path": "name.givenName"})["name"] == {"familyName": "Smith"}


def test_apply_patch_remove_last_sub_attribute_unassigns_complex() -> None:
    out = patch_user({"op": "remove", "path": "name.givenName"}, {"op": "remove", "path": "name.familyName"})
    assert "name" not in out


def test_apply_patch_remove_multi_valued_unassigns_all() -> None:
    assert "emails" not in patch_user({"op": "remove", "path": "emails"})


def test_apply_patch_remove_filter_removes_matching_elements() -> None:
    out = patch_user({"op": "remove", "path": 'emails[type eq "work"]'})
    assert out["emails"] == [{"value": "alice@home.example", "type": "home"}]


def test_apply_patch_remove_filter_last_element_unassigns_attribute() -> None:
    out = patch_user({"op": "remove", "path": 'emails[type eq "work" or type eq "home"]'})
    assert "emails" not in out


def test_apply_patch_remove_filter_no_match_no_change() -> None:
    assert patch_user({"op": "remove", "path": 'emails[type eq "other"]'}) == alice()


def test_apply_patch_remove_filter_sub_attribute_removes_it_from_matching() -> None:
    out = patch_user({"op": "remove", "path": 'emails[type eq "work"].primary'})
    assert out["emails"][0] == {"value": "alice@work.example", "type": "work"}


def test_apply_patch_remove_required_attribute_raises_invalid_value() -> None:
    error = fails(InvalidValue, {"op": "remove", "path": "userName"})
    assert "userName" in error.detail
    fails(InvalidValue, {"op": "replace", "path": "userName", "value": None})
    fails(InvalidValue, {"op": "remove", "path": "displayName"}, rt=GROUP_TYPE)


def test_apply_patch_remove_extension_attribute_last_drops_schema() -> None:
    resource = alice()
    resource["schemas"].append(ENTERPRISE_URN)
    resource[ENTERPRISE_URN] = {"department": "R&D"}
    out = patch_user({"op": "remove", "path": f"{ENTERPRISE_URN}:department"}, resource=resource)
    assert ENTERPRISE_URN not in out and out["schemas"] == [USER_URN]


def test_apply_patch_remove_extension_urn_path_drops_extension() -> None:
    resource = alice()
    resource["schemas"].append(ENTERPRISE_URN)
    resource[ENTERPRISE_URN] = {"department": "R&D", "costCenter": "1"}
    out = patch_user({"op": "remove", "path": ENTERPRISE_URN}, resource=resource)
    assert ENTERPRISE_URN not in out and out["schemas"] == [USER_URN]


# ------------------------------------------------------------------------------------------------- mutability


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "replace", "path": "id", "value": "other-id"},
        {"op": "remove", "path": "id"},
        {"op": "replace", "path": "meta.version", "value": 'W/"9"'},
        {"op": "replace", "path": "meta", "value": {"version": 'W/"9"'}},
        {"op": "add", "path": "groups", "value": [{"value": "admins"}]},
        {"op": "remove", "path": "groups"},
        {"op": "remove", "path": 'groups[value eq "g1"]'},
        {"op": "replace", "path": f"{ENTERPRISE_URN}:manager.displayName", "value": "Boss"},
        {"op": "replace", "value": {"id": "other-id"}},
    ],
)
def test_apply_patch_read_only_attribute_raises_mutability(operation: dict[str, Any]) -> None:
    fails(Mutability, operation)


def test_apply_patch_read_only_set_to_current_value_ignored() -> None:
    # Okta's group rename sends the group's own id along with the new name.
    out = patch_group({"op": "replace", "value": {"id": "g1", "displayName": "Employees"}})
    assert out["id"] == "g1" and out["displayName"] == "Employees"


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "replace", "path": 'members[value eq "u1"].value', "value": "u9"},
        {"op": "replace", "path": 'members[value eq "u1"].type', "value": "Group"},
        {"op": "replace", "path": 'members[value eq "u1"]', "value": {"value": "u9"}},
        {"op": "remove", "path": 'members[value eq "u1"].value'},
        {"op": "replace", "path": 'members[value eq "u1"].display', "value": "Mallory"},
        {"op": "add", "path": "members", "value": [{"value": "u1", "type": "Group"}]},
    ],
)
def test_apply_patch_member_immutable_or_read_only_raises_mutability(operation: dict[str, Any]) -> None:
    fails(Mutability, operation, rt=GROUP_TYPE)


# ------------------------------------------------------------------------------------------------- groups


def test_apply_patch_group_add_members_entra_appends() -> None:
    out = patch_group({"op": "Add", "path": "members", "value": [{"value": "u3"}]})
    assert [m["value"] for m in out["members"]] == ["u1", "u2", "u3"]


def test_apply_patch_group_add_existing_member_not_duplicated() -> None:
    out = patch_group({"op": "add", "path": "members", "value": [{"value": "u1", "display": "ignored"}]})
    assert out["members"] == staff()["members"]


def test_apply_patch_group_remove_member_by_filter() -> None:
    out = patch_group({"op": "remove", "path": 'members[value eq "u1"]'})
    assert [m["value"] for m in out["members"]] == ["u2"]


def test_apply_patch_group_remove_members_entra_value_list() -> None:
    out = patch_group({"op": "Remove", "path": "members", "value": [{"value": "u2"}, {"value": "absent"}]})
    assert [m["value"] for m in out["members"]] == ["u1"]


def test_apply_patch_group_remove_all_members() -> None:
    assert "members" not in patch_group({"op": "remove", "path": "members"})


def test_apply_patch_group_replace_members_okta_sets_list() -> None:
    out = patch_group({"op": "replace", "path": "members", "value": [{"value": "u3", "display": "Carol"}]})
    assert out["members"] == [{"value": "u3"}]


def test_apply_patch_group_replace_display_name() -> None:
    assert patch_group({"op": "Replace", "path": "displayName", "value": "1879db59"})["displayName"] == "1879db59"


def test_apply_patch_group_then_normalise_restores_member_details() -> None:
    original = staff()
    patched = apply_patch(GROUP_TYPE, original, ops({"op": "replace", "path": "members", "value": [{"value": "u2"}]}))
    out = normalise_resource(GROUP_TYPE, patched, existing=original)
    assert out["members"] == [original["members"][1]]


# ------------------------------------------------------------------------------------------------- Entra ID examples


def test_apply_patch_entra_replace_active_string_false_normalised_to_boolean() -> None:
    original = alice()
    patched = patch_user({"op": "Replace", "path": "active", "value": "False"}, resource=original)
    assert patched["active"] is False
    assert normalise_resource(USER_TYPE, patched, existing=original)["active"] is False


def test_apply_patch_entra_update_user_multi_and_single_valued() -> None:
    # "Update user [Multi-valued properties]" from Microsoft's SCIM endpoint guide.
    out = patch_user(
        {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "updatedEmail@microsoft.com"},
        {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
    )
    assert out["emails"][0]["value"] == "updatedEmail@microsoft.com"
    assert out["name"] == {"givenName": "Alice", "familyName": "updatedFamilyName"}


def test_apply_patch_entra_pathless_value_with_dotted_and_urn_keys() -> None:
    out = patch_user(
        {
            "op": "Add",
            "value": {
                "displayName": "Alice S.",
                "name.givenName": "Alicia",
                'emails[type eq "work"].value': "alicia@work.example",
                f"{ENTERPRISE_URN}:employeeNumber": "701984",
                f"{ENTERPRISE_URN}:manager": "m1",
            },
        }
    )
    assert out["displayName"] == "Alice S."
    assert out["name"] == {"givenName": "Alicia", "familyName": "Smith"}
    assert out["emails"][0]["value"] == "alicia@work.example"
    assert out[ENTERPRISE_URN] == {"employeeNumber": "701984", "manager": {"value": "m1"}}
    assert out["schemas"] == [USER_URN, ENTERPRISE_URN]


def test_apply_patch_pathless_extension_object_sets_its_attributes() -> None:
    out = patch_user({"op": "replace", "value": {ENTERPRISE_URN: {"department": "Sales", "manager": {"value": "m1"}}}})
    assert out[ENTERPRISE_URN] == {"department": "Sales", "manager": {"value": "m1"}}


def test_apply_patch_pathless_schemas_key_ignored() -> None:
    out = patch_user({"op": "replace", "value": {"schemas": ["x"], "title": "CTO"}})
    assert out["schemas"] == [USER_URN] and out["title"] == "CTO"


def test_apply_patch_pathless_unknown_attribute_raises_invalid_path() -> None:
    fails(InvalidPath, {"op": "replace", "value": {"favouriteColour": "blue"}})


def test_apply_patch_entra_manager_add_and_remove() -> None:
    added = patch_user({"op": "Add", "path": f"{ENTERPRISE_URN}:manager", "value": "m1"})
    assert added[ENTERPRISE_URN] == {"manager": {"value": "m1"}}
    removed = patch_user(
        {"op": "Remove", "path": f"{ENTERPRISE_URN}:manager", "value": [{"$ref": None, "value": "m1"}]},
        resource=added,
    )
    assert ENTERPRISE_URN not in removed and removed["schemas"] == [USER_URN]


def test_apply_patch_entra_manager_as_one_element_list_accepted() -> None:
    out = patch_user({"op": "Replace", "path": f"{ENTERPRISE_URN}:manager", "value": [{"value": "m1"}]})
    assert out[ENTERPRISE_URN] == {"manager": {"value": "m1"}}


def test_apply_patch_entra_disable_user_boolean() -> None:
    out = patch_user({"op": "Replace", "path": "active", "value": False})
    assert out["active"] is False


# ------------------------------------------------------------------------------------------------- atomicity


def test_apply_patch_second_operation_fails_original_unchanged() -> None:
    original = alice()
    snapshot = copy.deepcopy(original)
    with pytest.raises(NoTarget):
        apply_patch(
            USER_TYPE,
            original,
            ops(
                {"op": "replace", "path": "displayName", "value": "changed"},
                {"op": "remove", "path": 'emails[type eq "work"]'},
                {"op": "replace", "path": 'emails[type eq "work"].value', "value": "x@y.example"},
            ),
        )
    assert original == snapshot


def test_apply_patch_success_does_not_mutate_input() -> None:
    original = alice()
    snapshot = copy.deepcopy(original)
    out = patch_user(
        {"op": "replace", "path": 'emails[type eq "work"].value', "value": "x@y.example"},
        {"op": "add", "path": f"{ENTERPRISE_URN}:department", "value": "R&D"},
        resource=original,
    )
    assert original == snapshot and out is not original
    out["groups"].append({"value": "g9"})
    assert original == snapshot


def test_apply_patch_operations_applied_in_order() -> None:
    out = patch_user(
        {"op": "remove", "path": "emails"},
        {"op": "add", "path": "emails", "value": [{"value": "a@x.example"}]},
        {"op": "replace", "path": 'emails[value eq "a@x.example"].type', "value": "work"},
    )
    assert out["emails"] == [{"value": "a@x.example", "type": "work"}]


def test_apply_patch_then_normalise_two_primaries_raises_invalid_value() -> None:
    original = alice()
    patched = patch_user(
        {
            "op": "add",
            "path": "emails",
            "value": [{"value": "a@x.example", "primary": True}, {"value": "b@x.example", "primary": True}],
        },
        resource=original,
    )
    with pytest.raises(InvalidValue):
        normalise_resource(USER_TYPE, patched, existing=original)


def test_apply_patch_group_add_member_other_case_updates_existing() -> None:
    out = patch_group({"op": "add", "path": "members", "value": [{"value": "U1", "type": "user"}]})
    assert len(out["members"]) == 2 and out["members"][0]["type"] == "User"
