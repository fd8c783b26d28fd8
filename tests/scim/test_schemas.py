"""SCIM schema definitions, path resolution, discovery representations and input normalisation (RFC 7643)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from idhub.scim.errors import InvalidFilter, InvalidPath, InvalidSyntax, InvalidValue, Mutability, ScimError
from idhub.scim.filter import AttrPath
from idhub.scim.schemas import (
    ENTERPRISE_URN,
    GROUP_TYPE,
    GROUP_URN,
    MAX_STRING_LENGTH,
    MAX_USER_NAME_LENGTH,
    USER_TYPE,
    USER_URN,
    Attribute,
    ResourceType,
    Schema,
    coerce_simple,
    normalise_resource,
    resource_type_representation,
    schema_representation,
)

BASE = "https://idp.example/tenants/acme/scim/v2"


def user(**attrs: Any) -> dict[str, Any]:
    return {"schemas": [USER_URN], "userName": "alice", **attrs}


def norm_user(body: dict[str, Any], existing: dict[str, Any] | None = None) -> dict[str, Any]:
    return normalise_resource(USER_TYPE, body, existing=existing)


def existing_user() -> dict[str, Any]:
    return {
        "schemas": [USER_URN],
        "id": "2819c223-7f76-453a-919d-413861904646",
        "userName": "alice",
        "active": True,
        "groups": [{"value": "g1", "$ref": f"{BASE}/Groups/g1", "display": "Staff", "type": "direct"}],
        "meta": {
            "resourceType": "User",
            "created": "2024-01-01T00:00:00.000Z",
            "lastModified": "2024-01-02T00:00:00.000Z",
            "location": f"{BASE}/Users/2819c223-7f76-453a-919d-413861904646",
            "version": 'W/"3"',
        },
    }


def existing_group() -> dict[str, Any]:
    return {
        "schemas": [GROUP_URN],
        "id": "g1",
        "displayName": "Staff",
        "members": [
            {"value": "u1", "$ref": f"{BASE}/Users/u1", "display": "Alice", "type": "User"},
            {"value": "g2", "$ref": f"{BASE}/Groups/g2", "display": "Sub", "type": "Group"},
        ],
        "meta": {"resourceType": "Group", "location": f"{BASE}/Groups/g1", "version": 'W/"1"'},
    }


# ------------------------------------------------------------------------------------------------- definitions


def test_attribute_sub_any_case_finds_sub_attribute() -> None:
    name = USER_TYPE.schema.attribute("name")
    assert name is not None
    given = name.sub("GIVENNAME")
    assert given is not None and given.name == "givenName"
    assert name.sub("nope") is None


def test_schema_attribute_any_case_finds_attribute() -> None:
    attr = USER_TYPE.schema.attribute("USERNAME")
    assert attr is not None and attr.name == "userName"
    assert USER_TYPE.schema.attribute("nope") is None


def test_user_schema_attributes_exactly_what_idhub_stores() -> None:
    names = [a.name for a in USER_TYPE.schema.attributes]
    assert names == [
        "userName",
        "name",
        "displayName",
        "nickName",
        "profileUrl",
        "title",
        "userType",
        "preferredLanguage",
        "locale",
        "timezone",
        "active",
        "password",
        "emails",
        "phoneNumbers",
        "ims",
        "photos",
        "addresses",
        "groups",
        "entitlements",
        "roles",
        "x509Certificates",
    ]


def test_enterprise_schema_attributes_exactly_what_idhub_stores() -> None:
    ext = USER_TYPE.extension(ENTERPRISE_URN)
    assert ext is not None
    assert [a.name for a in ext.attributes] == [
        "employeeNumber",
        "costCenter",
        "organization",
        "division",
        "department",
        "manager",
    ]
    manager = ext.attribute("manager")
    assert manager is not None
    assert [s.name for s in manager.sub_attributes] == ["value", "$ref", "displayName"]
    assert manager.sub("displayName") is not None and manager.sub("displayName").mutability == "readOnly"  # type: ignore[union-attr]


def test_group_schema_members_characteristics_per_rfc() -> None:
    assert [a.name for a in GROUP_TYPE.schema.attributes] == ["displayName", "members"]
    display = GROUP_TYPE.schema.attribute("displayName")
    assert display is not None and display.required
    members = GROUP_TYPE.schema.attribute("members")
    assert members is not None and members.multi_valued and members.type == "complex"
    mut = {s.name: s.mutability for s in members.sub_attributes}
    assert mut == {"value": "immutable", "$ref": "immutable", "display": "readOnly", "type": "immutable"}
    type_ = members.sub("type")
    assert type_ is not None and type_.canonical_values == ("User", "Group")


def test_user_schema_characteristics_per_rfc() -> None:
    schema = USER_TYPE.schema
    user_name = schema.attribute("userName")
    assert user_name is not None
    assert (user_name.required, user_name.case_exact, user_name.uniqueness) == (True, False, "server")
    password = schema.attribute("password")
    assert password is not None and (password.mutability, password.returned) == ("writeOnly", "never")
    groups = schema.attribute("groups")
    assert groups is not None and groups.mutability == "readOnly"
    assert {s.name for s in groups.sub_attributes} == {"value", "$ref", "display", "type"}
    active = schema.attribute("active")
    assert active is not None and active.type == "boolean"
    photos = schema.attribute("photos")
    assert photos is not None and photos.sub("value").type == "reference"  # type: ignore[union-attr]
    certs = schema.attribute("x509Certificates")
    assert certs is not None and certs.sub("value").type == "binary"  # type: ignore[union-attr]
    profile = schema.attribute("profileUrl")
    assert profile is not None and profile.type == "reference" and profile.reference_types == ("external",)
    addresses = schema.attribute("addresses")
    assert addresses is not None
    assert [s.name for s in addresses.sub_attributes] == [
        "formatted",
        "streetAddress",
        "locality",
        "region",
        "postalCode",
        "country",
        "type",
        "primary",
    ]


@pytest.mark.parametrize(
    ("attr", "canonical"),
    [
        ("emails", ("work", "home", "other")),
        ("phoneNumbers", ("work", "home", "mobile", "fax", "pager", "other")),
        ("ims", ("aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo")),
        ("photos", ("photo", "thumbnail")),
        ("addresses", ("work", "home", "other")),
    ],
)
def test_user_schema_plural_type_has_rfc_canonical_values(attr: str, canonical: tuple[str, ...]) -> None:
    definition = USER_TYPE.schema.attribute(attr)
    assert definition is not None
    type_ = definition.sub("type")
    assert type_ is not None and type_.canonical_values == canonical


# ------------------------------------------------------------------------------------------------- resolve


def test_resolve_core_attribute_returns_core_urn() -> None:
    resolved = USER_TYPE.resolve(AttrPath(None, "USERNAME"))
    assert resolved.urn == USER_URN and resolved.attribute.name == "userName" and resolved.sub is None


def test_resolve_sub_attribute_returns_sub() -> None:
    resolved = USER_TYPE.resolve(AttrPath(None, "name", "familyname"))
    assert resolved.attribute.name == "name"
    assert resolved.sub is not None and resolved.sub.name == "familyName"
    assert resolved.target is resolved.sub and resolved.label == "name.familyName"


def test_resolve_enterprise_urn_returns_extension_attribute() -> None:
    resolved = USER_TYPE.resolve(AttrPath(ENTERPRISE_URN, "manager", "value"))
    assert resolved.urn == ENTERPRISE_URN
    assert resolved.attribute.name == "manager" and resolved.sub is not None and resolved.sub.name == "value"


def test_resolve_urn_other_case_matches_schema() -> None:
    resolved = USER_TYPE.resolve(AttrPath(ENTERPRISE_URN.upper(), "department"))
    assert resolved.urn == ENTERPRISE_URN


def test_resolve_core_urn_qualified_returns_core_attribute() -> None:
    resolved = USER_TYPE.resolve(AttrPath(USER_URN, "emails", "value"))
    assert resolved.urn == USER_URN and resolved.attribute.name == "emails"


def test_resolve_unqualified_extension_attribute_searches_extensions() -> None:
    resolved = USER_TYPE.resolve(AttrPath(None, "employeeNumber"))
    assert resolved.urn == ENTERPRISE_URN


@pytest.mark.parametrize(
    ("path", "name", "mutability"),
    [
        (AttrPath(None, "id"), "id", "readOnly"),
        (AttrPath(None, "externalId"), "externalId", "readWrite"),
        (AttrPath(None, "meta", "lastModified"), "meta", "readOnly"),
        (AttrPath(USER_URN, "id"), "id", "readOnly"),
    ],
)
def test_resolve_common_attribute_returns_its_characteristics(path: AttrPath, name: str, mutability: str) -> None:
    resolved = USER_TYPE.resolve(path)
    assert resolved.urn == USER_URN and resolved.attribute.name == name
    assert resolved.attribute.mutability == mutability


def test_resolve_external_id_is_case_exact() -> None:
    assert USER_TYPE.resolve(AttrPath(None, "externalid")).attribute.case_exact


def test_resolve_id_returned_always() -> None:
    resolved = GROUP_TYPE.resolve(AttrPath(None, "id"))
    assert resolved.attribute.returned == "always" and resolved.attribute.case_exact


@pytest.mark.parametrize(
    "path",
    [
        AttrPath(None, "nope"),
        AttrPath(None, "name", "nope"),
        AttrPath(None, "userName", "x"),
        AttrPath("urn:example:unknown", "userName"),
        AttrPath(ENTERPRISE_URN, "userName"),
        AttrPath(ENTERPRISE_URN, "id"),
        AttrPath(None, "meta", "nope"),
    ],
)
@pytest.mark.parametrize("error", [InvalidFilter, InvalidPath])
def test_resolve_unknown_path_raises_caller_error(path: AttrPath, error: type[ScimError]) -> None:
    with pytest.raises(error) as info:
        USER_TYPE.resolve(path, error=error)
    assert info.value.scim_type == error.scim_type


def test_resolve_user_attribute_on_group_raises() -> None:
    with pytest.raises(InvalidFilter):
        GROUP_TYPE.resolve(AttrPath(None, "userName"), InvalidFilter)


def test_resolve_default_error_is_invalid_path() -> None:
    with pytest.raises(InvalidPath):
        USER_TYPE.resolve(AttrPath(None, "nope"))


# ------------------------------------------------------------------------------------------------- representations


def test_schema_representation_user_follows_rfc7643_section7() -> None:
    rep = schema_representation(USER_TYPE.schema, BASE)
    assert rep["schemas"] == ["urn:ietf:params:scim:schemas:core:2.0:Schema"]
    assert (rep["id"], rep["name"]) == (USER_URN, "User")
    assert rep["meta"] == {"resourceType": "Schema", "location": f"{BASE}/Schemas/{USER_URN}"}
    by_name = {a["name"]: a for a in rep["attributes"]}
    assert by_name["userName"] == {
        "name": "userName",
        "type": "string",
        "multiValued": False,
        "description": by_name["userName"]["description"],
        "required": True,
        "caseExact": False,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": "server",
    }
    assert by_name["password"]["returned"] == "never" and by_name["password"]["mutability"] == "writeOnly"
    emails = by_name["emails"]
    assert emails["multiValued"] is True and emails["type"] == "complex"
    subs = {s["name"]: s for s in emails["subAttributes"]}
    assert subs["type"]["canonicalValues"] == ["work", "home", "other"]
    assert subs["primary"]["type"] == "boolean"
    assert by_name["profileUrl"]["referenceTypes"] == ["external"]
    assert "id" not in by_name  # common attributes belong to no schema (RFC 7643 §3.1)
    for attr in rep["attributes"]:
        assert attr["description"]


def test_schema_representation_enterprise_manager_has_ref_types() -> None:
    ext = USER_TYPE.extension(ENTERPRISE_URN)
    assert ext is not None
    rep = schema_representation(ext, BASE)
    manager = next(a for a in rep["attributes"] if a["name"] == "manager")
    subs = {s["name"]: s for s in manager["subAttributes"]}
    assert subs["$ref"]["referenceTypes"] == ["User"]
    assert subs["displayName"]["mutability"] == "readOnly"


def test_resource_type_representation_user_lists_enterprise_extension() -> None:
    rep = resource_type_representation(USER_TYPE, BASE)
    assert rep == {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "User Account",
        "schema": USER_URN,
        "schemaExtensions": [{"schema": ENTERPRISE_URN, "required": False}],
        "meta": {"resourceType": "ResourceType", "location": f"{BASE}/ResourceTypes/User"},
    }


def test_resource_type_representation_group_has_no_extensions() -> None:
    rep = resource_type_representation(GROUP_TYPE, BASE)
    assert rep["schema"] == GROUP_URN and rep["endpoint"] == "/Groups"
    assert "schemaExtensions" not in rep


# ------------------------------------------------------------------------------------------------- normalise: schemas


def test_normalise_resource_minimal_user_returns_canonical_dict() -> None:
    assert norm_user(user()) == {"schemas": [USER_URN], "userName": "alice"}


def test_normalise_resource_missing_schemas_raises_invalid_syntax() -> None:
    with pytest.raises(InvalidSyntax) as info:
        norm_user({"userName": "alice"})
    assert info.value.scim_type == "invalidSyntax"


@pytest.mark.parametrize("schemas", [USER_URN, [USER_URN, 3], {"a": 1}, None])
def test_normalise_resource_malformed_schemas_raises_invalid_syntax(schemas: Any) -> None:
    with pytest.raises(InvalidSyntax):
        norm_user({"schemas": schemas, "userName": "alice"})


def test_normalise_resource_unknown_schema_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue) as info:
        norm_user({"schemas": [USER_URN, "urn:example:custom"], "userName": "alice"})
    assert info.value.scim_type == "invalidValue"


def test_normalise_resource_without_core_urn_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue):
        norm_user({"schemas": [ENTERPRISE_URN], "userName": "alice"})


def test_normalise_resource_group_urn_for_user_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue):
        norm_user({"schemas": [GROUP_URN], "userName": "alice"})


def test_normalise_resource_schemas_any_case_accepted() -> None:
    out = norm_user({"schemas": [USER_URN.upper()], "userName": "alice"})
    assert out["schemas"] == [USER_URN]


def test_normalise_resource_non_object_body_raises_invalid_syntax() -> None:
    with pytest.raises(InvalidSyntax):
        normalise_resource(USER_TYPE, [user()], existing=None)  # type: ignore[arg-type]


def test_normalise_resource_declared_extension_without_data_omitted_from_schemas() -> None:
    out = norm_user({"schemas": [USER_URN, ENTERPRISE_URN], "userName": "alice"})
    assert out["schemas"] == [USER_URN] and ENTERPRISE_URN not in out


def test_normalise_resource_extension_data_undeclared_added_to_schemas() -> None:
    out = norm_user({"schemas": [USER_URN], "userName": "alice", ENTERPRISE_URN: {"department": "R&D"}})
    assert out["schemas"] == [USER_URN, ENTERPRISE_URN]
    assert out[ENTERPRISE_URN] == {"department": "R&D"}


# ------------------------------------------------------------------------------------------------- normalise: names


def test_normalise_resource_attribute_names_any_case_rewritten_canonical() -> None:
    out = norm_user(
        {
            "SCHEMAS": [USER_URN],
            "USERNAME": "alice",
            "Name": {"GIVENNAME": "Alice", "familyname": "Smith"},
            "EMAILS": [{"VALUE": "a@example.com", "Type": "work", "PRIMARY": True}],
            "externalid": "E-1",
        }
    )
    assert out == {
        "schemas": [USER_URN],
        "externalId": "E-1",
        "userName": "alice",
        "name": {"familyName": "Smith", "givenName": "Alice"},
        "emails": [{"value": "a@example.com", "type": "work", "primary": True}],
    }


def test_normalise_resource_extension_nested_and_qualified_keys_accepted() -> None:
    out = norm_user(
        {
            "schemas": [USER_URN, ENTERPRISE_URN],
            "userName": "alice",
            ENTERPRISE_URN: {"employeeNumber": "701984", "manager": {"value": "m1"}},
            f"{ENTERPRISE_URN}:department": "Tour Operations",
            f"{ENTERPRISE_URN.upper()}:costCenter": "4130",
        }
    )
    assert out[ENTERPRISE_URN] == {
        "employeeNumber": "701984",
        "costCenter": "4130",
        "department": "Tour Operations",
        "manager": {"value": "m1"},
    }


def test_normalise_resource_core_urn_qualified_key_accepted() -> None:
    out = norm_user({"schemas": [USER_URN], f"{USER_URN}:userName": "bob"})
    assert out["userName"] == "bob"


def test_normalise_resource_same_attribute_twice_raises_invalid_syntax() -> None:
    with pytest.raises(InvalidSyntax):
        norm_user({"schemas": [USER_URN], "userName": "a", "USERNAME": "b"})


def test_normalise_resource_extension_attribute_nested_and_qualified_raises_invalid_syntax() -> None:
    with pytest.raises(InvalidSyntax):
        norm_user(user(**{ENTERPRISE_URN: {"department": "a"}, f"{ENTERPRISE_URN}:department": "b"}))


def test_normalise_resource_dotted_sub_attribute_key_merged_into_complex() -> None:
    out = norm_user(user(**{"name": {"familyName": "Smith"}, "name.givenName": "Alice"}))
    assert out["name"] == {"familyName": "Smith", "givenName": "Alice"}


def test_normalise_resource_dotted_key_conflicting_with_nested_raises_invalid_syntax() -> None:
    with pytest.raises(InvalidSyntax):
        norm_user(user(**{"name": {"givenName": "A"}, "name.givenname": "B"}))


def test_normalise_resource_unknown_attributes_ignored_not_stored() -> None:
    out = norm_user(
        user(
            favouriteColour="blue",
            name={"givenName": "Alice", "nickname2": "x"},
            emails=[{"value": "a@example.com", "verified": True}],
            **{
                "urn:ietf:params:scim:schemas:extension:Microsoft:Entra:2.0:User:x": 1,
                f"{ENTERPRISE_URN}:shoeSize": "44",
            },
        )
    )
    assert out == {
        "schemas": [USER_URN],
        "userName": "alice",
        "name": {"givenName": "Alice"},
        "emails": [{"value": "a@example.com"}],
    }


def test_normalise_resource_extension_not_object_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue):
        norm_user(user(**{ENTERPRISE_URN: "R&D"}))


# ------------------------------------------------------------------------------------------------- normalise: types


@pytest.mark.parametrize(("given", "expected"), [("False", False), ("true", True), ("TRUE", True), (False, False)])
def test_normalise_resource_boolean_strings_accepted_for_entra(given: Any, expected: bool) -> None:
    assert norm_user(user(active=given))["active"] is expected


@pytest.mark.parametrize("given", ["yes", 1, 0, [True], {"value": True}])
def test_normalise_resource_non_boolean_active_raises_invalid_value(given: Any) -> None:
    with pytest.raises(InvalidValue) as info:
        norm_user(user(active=given))
    assert info.value.scim_type == "invalidValue"


@pytest.mark.parametrize("given", [5, True, ["a"], {"a": 1}])
def test_normalise_resource_non_string_raises_invalid_value(given: Any) -> None:
    with pytest.raises(InvalidValue):
        norm_user(user(displayName=given))


def test_normalise_resource_complex_not_object_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue):
        norm_user(user(name="Alice Smith"))


def test_normalise_resource_sub_attribute_wrong_type_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue):
        norm_user(user(emails=[{"value": "a@example.com", "primary": "sometimes"}]))


def test_normalise_resource_single_object_for_multi_valued_wrapped_in_list() -> None:
    out = norm_user(user(emails={"value": "a@example.com", "type": "work"}))
    assert out["emails"] == [{"value": "a@example.com", "type": "work"}]


def test_normalise_resource_multi_valued_element_not_object_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue):
        norm_user(user(emails=[5]))


def test_normalise_resource_string_for_value_complex_taken_as_value() -> None:
    out = norm_user(user(**{ENTERPRISE_URN: {"manager": "m1"}}))
    assert out[ENTERPRISE_URN] == {"manager": {"value": "m1"}}


def test_normalise_resource_one_element_list_for_single_complex_unwrapped() -> None:
    out = norm_user(user(**{ENTERPRISE_URN: {"manager": [{"value": "m1", "$ref": None}]}}))
    assert out[ENTERPRISE_URN] == {"manager": {"value": "m1"}}


def test_normalise_resource_canonical_value_spelling_restored() -> None:
    out = norm_user(
        user(emails=[{"value": "a@example.com", "type": "Work"}], phoneNumbers=[{"value": "1", "type": "x"}])
    )
    assert out["emails"][0]["type"] == "work"
    assert out["phoneNumbers"][0]["type"] == "x"  # canonical values are suggestions, not a closed set


def test_normalise_resource_binary_not_base64_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue):
        norm_user(user(x509Certificates=[{"value": "not base64!"}]))


def test_normalise_resource_binary_base64_accepted() -> None:
    out = norm_user(user(x509Certificates=[{"value": "Y2Vy\ndA=="}]))
    assert out["x509Certificates"] == [{"value": "Y2Vy\ndA=="}]  # line breaks (PEM bodies) are tolerated


def test_normalise_resource_nulls_and_empties_dropped() -> None:
    out = norm_user(
        user(displayName=None, emails=[], name={}, phoneNumbers=[None, {"value": None}], **{ENTERPRISE_URN: {}})
    )
    assert out == {"schemas": [USER_URN], "userName": "alice"}


def test_normalise_resource_exact_duplicate_elements_collapsed() -> None:
    out = norm_user(user(emails=[{"value": "a@example.com"}, {"value": "a@example.com"}]))
    assert out["emails"] == [{"value": "a@example.com"}]


def test_normalise_resource_password_kept_for_caller_to_hash() -> None:
    assert norm_user(user(password="correct horse battery"))["password"] == "correct horse battery"


@pytest.mark.parametrize(
    "value",
    [
        {"integer": 1, "decimal": 1.5, "dateTime": "2024-01-01T00:00:00Z"},
        {"integer": -3, "decimal": 2, "dateTime": "2024-01-01T12:30:00.123+02:00"},
    ],
)
def test_coerce_simple_valid_values_returned(value: dict[str, Any]) -> None:
    for type_, given in value.items():
        assert coerce_simple(Attribute("x", type_), given, "x") == given  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("type_", "given"),
    [
        ("integer", 1.5),
        ("integer", True),
        ("integer", "1"),
        ("decimal", "1.5"),
        ("decimal", float("nan")),
        ("decimal", False),
        ("dateTime", "yesterday"),
        ("dateTime", 5),
        ("reference", 5),
    ],
)
def test_coerce_simple_wrong_type_raises_invalid_value(type_: Any, given: Any) -> None:
    with pytest.raises(InvalidValue):
        coerce_simple(Attribute("x", type_), given, "x")


# ------------------------------------------------------------------------------------------------- normalise: limits


def test_normalise_resource_user_name_at_limit_accepted() -> None:
    assert norm_user(user(userName="a" * MAX_USER_NAME_LENGTH))["userName"] == "a" * MAX_USER_NAME_LENGTH


def test_normalise_resource_user_name_too_long_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue):
        norm_user(user(userName="a" * (MAX_USER_NAME_LENGTH + 1)))


def test_normalise_resource_string_too_long_raises_invalid_value() -> None:
    norm_user(user(title="t" * MAX_STRING_LENGTH))
    with pytest.raises(InvalidValue):
        norm_user(user(title="t" * (MAX_STRING_LENGTH + 1)))


def test_normalise_resource_nul_character_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue):
        norm_user(user(displayName="a\x00b"))


# ------------------------------------------------------------------------------------------------- normalise: required


@pytest.mark.parametrize("body", [{"schemas": [USER_URN]}, user(userName=None), user(userName=""), user(userName="  ")])
def test_normalise_resource_user_name_missing_raises_invalid_value(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidValue) as info:
        norm_user(body)
    assert "userName" in info.value.detail


def test_normalise_resource_group_display_name_missing_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue):
        normalise_resource(GROUP_TYPE, {"schemas": [GROUP_URN], "members": []}, existing=None)


# ------------------------------------------------------------------------------------------------- normalise: primary


def test_normalise_resource_two_primaries_raises_invalid_value() -> None:
    with pytest.raises(InvalidValue) as info:
        norm_user(user(emails=[{"value": "a@x.example", "primary": True}, {"value": "b@x.example", "primary": "True"}]))
    assert "primary" in info.value.detail


def test_normalise_resource_one_primary_per_attribute_accepted() -> None:
    out = norm_user(
        user(
            emails=[{"value": "a@x.example", "primary": True}, {"value": "b@x.example", "primary": False}],
            phoneNumbers=[{"value": "+1 555", "primary": True}],
        )
    )
    assert out["emails"][0]["primary"] is True and out["phoneNumbers"][0]["primary"] is True


# --------------------------------------------------------------------------------------------- normalise: mutability


def test_normalise_resource_read_only_input_ignored_on_create() -> None:
    out = norm_user(
        user(
            id="chosen-by-client",
            meta={"resourceType": "User", "version": 'W/"9"'},
            groups=[{"value": "admins"}],
        )
    )
    assert out == {"schemas": [USER_URN], "userName": "alice"}


def test_normalise_resource_read_only_taken_from_existing_on_replace() -> None:
    existing = existing_user()
    out = norm_user(user(id="other", groups=[], meta={"version": "x"}, userName="alice2"), existing)
    assert out["id"] == existing["id"]
    assert out["groups"] == existing["groups"]
    assert out["meta"] == existing["meta"]
    assert out["userName"] == "alice2"
    assert list(out)[:2] == ["schemas", "id"] and list(out)[-1] == "meta"


def test_normalise_resource_replace_omitted_attributes_cleared() -> None:
    existing = {**existing_user(), "displayName": "Alice", ENTERPRISE_URN: {"department": "R&D"}}
    out = norm_user(user(), existing)
    assert "displayName" not in out and ENTERPRISE_URN not in out and "active" not in out


def test_normalise_resource_manager_display_name_read_only() -> None:
    existing = {**existing_user(), ENTERPRISE_URN: {"manager": {"value": "m1", "displayName": "Boss"}}}
    same = norm_user(user(**{ENTERPRISE_URN: {"manager": {"value": "m1", "displayName": "Other"}}}), existing)
    assert same[ENTERPRISE_URN]["manager"] == {"value": "m1", "displayName": "Boss"}
    changed = norm_user(user(**{ENTERPRISE_URN: {"manager": {"value": "m2", "displayName": "Other"}}}), existing)
    assert changed[ENTERPRISE_URN]["manager"] == {"value": "m2"}


def test_normalise_resource_member_display_taken_from_existing_member() -> None:
    body = {
        "schemas": [GROUP_URN],
        "displayName": "Staff",
        "members": [{"value": "u1", "display": "Mallory"}, {"value": "u3", "display": "New"}],
    }
    out = normalise_resource(GROUP_TYPE, body, existing=existing_group())
    assert out["members"] == [
        {"value": "u1", "$ref": f"{BASE}/Users/u1", "display": "Alice", "type": "User"},
        {"value": "u3"},
    ]
    assert out["id"] == "g1"


def test_normalise_resource_member_type_changed_raises_mutability() -> None:
    body = {"schemas": [GROUP_URN], "displayName": "Staff", "members": [{"value": "u1", "type": "Group"}]}
    with pytest.raises(Mutability) as info:
        normalise_resource(GROUP_TYPE, body, existing=existing_group())
    assert info.value.scim_type == "mutability"


def test_normalise_resource_member_type_canonical_spelling() -> None:
    body = {"schemas": [GROUP_URN], "displayName": "Staff", "members": [{"value": "u9", "type": "user"}]}
    assert normalise_resource(GROUP_TYPE, body, existing=None)["members"] == [{"value": "u9", "type": "User"}]


def _immutable_type() -> ResourceType:
    schema = Schema(
        "urn:example:params:scim:schemas:Thing",
        "Thing",
        "A test resource",
        (
            Attribute("code", "string", mutability="immutable"),
            Attribute("label", "string"),
        ),
    )
    return ResourceType("Thing", "/Things", schema)


def test_normalise_resource_immutable_changed_raises_mutability() -> None:
    rt = _immutable_type()
    existing = {"schemas": [rt.schema.id], "id": "t1", "code": "A"}
    with pytest.raises(Mutability):
        normalise_resource(rt, {"schemas": [rt.schema.id], "code": "B"}, existing=existing)
    with pytest.raises(Mutability):
        normalise_resource(rt, {"schemas": [rt.schema.id], "code": None}, existing=existing)


def test_normalise_resource_immutable_same_or_omitted_keeps_value() -> None:
    rt = _immutable_type()
    existing = {"schemas": [rt.schema.id], "id": "t1", "code": "A"}
    assert normalise_resource(rt, {"schemas": [rt.schema.id], "code": "A"}, existing=existing)["code"] == "A"
    assert normalise_resource(rt, {"schemas": [rt.schema.id], "label": "x"}, existing=existing)["code"] == "A"


def test_normalise_resource_immutable_without_existing_value_set() -> None:
    rt = _immutable_type()
    out = normalise_resource(rt, {"schemas": [rt.schema.id], "code": "B"}, existing={"id": "t1"})
    assert out == {"schemas": [rt.schema.id], "id": "t1", "code": "B"}


# ------------------------------------------------------------------------------------------------- normalise: purity


def test_normalise_resource_inputs_not_mutated() -> None:
    body = user(
        USERNAME="x",
        emails=[{"value": "a@x.example", "type": "Work", "primary": "true"}],
        **{ENTERPRISE_URN: {"manager": "m1"}},
    )
    del body["userName"]
    existing = existing_user()
    snapshot_body, snapshot_existing = copy.deepcopy(body), copy.deepcopy(existing)
    out = norm_user(body, existing)
    assert body == snapshot_body and existing == snapshot_existing
    out["groups"].append({"value": "new"})
    assert existing == snapshot_existing


def test_normalise_resource_entra_create_user_body_accepted() -> None:
    # Microsoft Entra ID's create-user request (SCIM provisioning docs), with its usual extras.
    body = {
        "schemas": [USER_URN, ENTERPRISE_URN],
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1",
        "active": True,
        "emails": [{"primary": True, "type": "work", "value": "Test_User_fd0ea19b@testuser.com"}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
        "roles": [],
    }
    out = norm_user(body)
    assert out == {
        "schemas": [USER_URN],
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1",
        "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
        "active": True,
        "emails": [{"value": "Test_User_fd0ea19b@testuser.com", "type": "work", "primary": True}],
    }


def test_normalise_resource_group_with_members_accepted() -> None:
    body = {"schemas": [GROUP_URN], "displayName": "Group1DisplayName", "externalId": "8aa1a0c0", "members": []}
    out = normalise_resource(GROUP_TYPE, body, existing=None)
    assert out == {"schemas": [GROUP_URN], "externalId": "8aa1a0c0", "displayName": "Group1DisplayName"}


def test_normalise_resource_member_value_other_case_pairs_without_mutability() -> None:
    body = {"schemas": [GROUP_URN], "displayName": "Staff", "members": [{"value": "U1", "type": "USER"}]}
    out = normalise_resource(GROUP_TYPE, body, existing=existing_group())
    assert out["members"] == [{"value": "U1", "$ref": f"{BASE}/Users/u1", "display": "Alice", "type": "User"}]
