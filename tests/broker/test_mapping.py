"""Mapping rules: strict parsing, bounded regexes, and what they make of an identity (no I/O)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from idhub.broker.connector import Identity
from idhub.broker.mapping import (
    MAX_INPUT,
    MAX_RULES,
    NO_MAPPING,
    apply,
    check_safe_regex,
    load_mapping,
    mapping_of,
    parse_mapping,
    profile_for,
    sample_identity,
)
from idhub.broker.providers import ProviderInfo
from idhub.errors import Invalid

ALICE = Identity(
    issuer="https://idp.example",
    subject="sub-1",
    email="alice@corp.example",
    email_verified=True,
    name="Alice Liddell",
    given_name="Alice",
    family_name="Liddell",
    username="alice",
    groups=("staff",),
    claims={
        "sub": "sub-1",
        "department": "Sales EMEA",
        "employee_id": "E00042",
        "address": {"country": "GB"},
        "groups": ["sales-emea", "sales-apac", "admins", "x" * (MAX_INPUT + 1)],
        "roles": "admin",
        "attributes": {"urn:oid:2.5.4.12": ["Director"], "isMemberOf": ["cn=ops,ou=groups"]},
    },
)


def _rules(*rules: dict[str, Any], **top: Any) -> Any:
    return parse_mapping({"rules": list(rules), **top})


# -- what the rules make -------------------------------------------------------------------------------


def test_mapping_none_configured_gives_defaults_of_linking() -> None:
    mapped = apply(NO_MAPPING, ALICE)
    assert mapped.attributes == {
        "email": "alice@corp.example",
        "displayName": "Alice Liddell",
        "givenName": "Alice",
        "familyName": "Liddell",
    }
    assert mapped.groups == ()
    assert mapping_of({}) is NO_MAPPING and not NO_MAPPING.configured


def test_mapping_claim_regex_replace_transforms_value() -> None:
    mapping = _rules(
        {
            "kind": "attribute",
            "target": "employeeNumber",
            "claim": "employee_id",
            "regex": r"E0*(\d+)",
            "replace": r"\1",
        }
    )
    assert apply(mapping, ALICE).attributes["employeeNumber"] == "42"


def test_mapping_regex_must_match_whole_value_else_nothing() -> None:
    mapping = _rules({"kind": "attribute", "target": "employeeNumber", "claim": "employee_id", "regex": r"\d+"})
    assert "employeeNumber" not in apply(mapping, ALICE).attributes


def test_mapping_named_group_replace() -> None:
    mapping = _rules(
        {
            "kind": "attribute",
            "target": "division",
            "claim": "department",
            "regex": r"(?P<d>\w+) (?P<r>\w+)",
            "replace": r"\g<r>/\g<d>",
        }
    )
    assert apply(mapping, ALICE).attributes["division"] == "EMEA/Sales"


def test_mapping_template_fills_fields_claims_and_saml_attributes() -> None:
    mapping = _rules(
        {"kind": "attribute", "target": "userName", "template": "{given_name}.{family_name}"},
        {"kind": "attribute", "target": "title", "template": "{urn:oid:2.5.4.12} ({department}) {{x}}"},
    )
    mapped = apply(mapping, ALICE)
    assert mapped.attributes["userName"] == "Alice.Liddell"
    assert mapped.attributes["title"] == "Director (Sales EMEA) {x}"


def test_mapping_template_with_missing_placeholder_gives_nothing() -> None:
    mapping = _rules({"kind": "attribute", "target": "nickName", "template": "{nickname}!"})
    assert "nickName" not in apply(mapping, ALICE).attributes


def test_mapping_template_value_braces_are_not_reinterpreted() -> None:
    identity = Identity(issuer="i", subject="s", given_name="{family_name}", family_name="X")
    mapping = _rules({"kind": "attribute", "target": "displayName", "template": "{given_name} {family_name}"})
    assert apply(mapping, identity).attributes["displayName"] == "{family_name} X"


def test_mapping_nested_claim_path_and_saml_attribute_source() -> None:
    mapping = _rules(
        {"kind": "attribute", "target": "locale", "claim": ["address", "country"]},
        {"kind": "attribute", "target": "title", "saml_attribute": "urn:oid:2.5.4.12"},
    )
    attributes = apply(mapping, ALICE).attributes
    assert (attributes["locale"], attributes["title"]) == ("GB", "Director")


def test_mapping_groups_match_replace_value_and_constants() -> None:
    mapping = _rules(
        {"kind": "group", "claim": "groups", "match": r"sales-([a-z]+)", "replace": r"Sales \1"},
        {"kind": "group", "claim": "roles", "value": "admin", "group": "Administrators"},
        {"kind": "group", "saml_attribute": "isMemberOf", "match": r"cn=([^,]+),ou=groups", "replace": r"\1"},
        {"kind": "group", "field": "groups"},
        {"kind": "constant", "group": "Corp staff"},
        {"kind": "constant", "target": "organization", "value": "Corp"},
    )
    mapped = apply(mapping, ALICE)
    assert mapped.groups == ("Sales emea", "Sales apac", "Administrators", "ops", "staff", "Corp staff")
    assert mapped.attributes["organization"] == "Corp"


def test_mapping_group_names_deduplicated_case_insensitively() -> None:
    mapping = _rules({"kind": "constant", "group": "Staff"}, {"kind": "group", "field": "groups"})
    assert apply(mapping, ALICE).groups == ("Staff",)


def test_mapping_overlong_input_skipped_never_matched() -> None:
    mapping = _rules({"kind": "group", "claim": "groups", "match": r"x+"})
    assert apply(mapping, ALICE).groups == ()


def test_mapping_later_rule_wins_and_defaults_can_be_turned_off() -> None:
    override = _rules({"kind": "attribute", "target": "displayName", "template": "{family_name}, {given_name}"})
    assert apply(override, ALICE).attributes["displayName"] == "Liddell, Alice"
    bare = _rules({"kind": "constant", "target": "organization", "value": "Corp"}, defaults=False)
    assert apply(bare, ALICE).attributes == {"organization": "Corp"}


def test_mapping_value_longer_than_the_column_is_dropped() -> None:
    identity = Identity(issuer="i", subject="s", claims={"t": "y" * 300})
    mapping = _rules({"kind": "attribute", "target": "title", "claim": "t"})
    assert "title" not in apply(mapping, identity).attributes


def test_mapping_describe_round_trips() -> None:
    mapping = _rules(
        {"kind": "attribute", "target": "locale", "claim": ["address", "country"]},
        {"kind": "group", "claim": "groups", "match": r"sales-(.+)", "replace": r"S \1"},
        {"kind": "group", "claim": "roles", "value": "admin", "group": "Admins"},
        {"kind": "attribute", "target": "userName", "template": "{given_name}"},
        {"kind": "constant", "group": "G"},
        sync=False,
    )
    again = load_mapping(json.dumps(mapping.describe()))
    assert again.describe() == mapping.describe() and again.sync is False


def test_mapping_profile_for_new_user() -> None:
    mapped = apply(_rules({"kind": "constant", "target": "department", "value": "R&D"}), ALICE)
    profile = profile_for(mapped, user_name="alice")
    assert profile.email() == "alice@corp.example" and profile.department == "R&D"
    assert (profile.display_name, profile.given_name, profile.family_name) == ("Alice Liddell", "Alice", "Liddell")


def test_mapping_sample_identity_like_a_connector() -> None:
    identity = sample_identity(issuer="i", protocol="saml", sample={"name_id": "n-1", "attributes": {"a": ["b"]}})
    assert identity.subject == "n-1" and identity.claims["attributes"] == {"a": ["b"]}
    oidc = sample_identity(
        issuer="i", protocol="oidc", sample={"sub": "s", "email": "a@b.example", "email_verified": True}
    )
    assert oidc.email_verified and oidc.email == "a@b.example"


# -- refusals --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        "not a mapping",
        {"rules": {}},
        {"rules": [], "extra": 1},
        {"rules": [], "sync": "yes"},
        {"rules": [{"kind": "attribute", "target": "email", "claim": "mail", "unknown": 1}]},
        {"rules": [{"kind": "script", "target": "email"}]},
        {"rules": [{"kind": "attribute", "target": "passwordHash", "claim": "x"}]},
        {"rules": [{"kind": "attribute", "target": "email"}]},  # no source
        {"rules": [{"kind": "attribute", "target": "email", "claim": "a", "field": "email"}]},  # two sources
        {"rules": [{"kind": "attribute", "target": "email", "field": "password"}]},
        {"rules": [{"kind": "attribute", "target": "email", "claim": []}]},
        {"rules": [{"kind": "attribute", "target": "email", "claim": "a", "replace": "b"}]},  # replace without regex
        {"rules": [{"kind": "attribute", "target": "email", "claim": "a", "regex": "(unclosed"}]},
        {"rules": [{"kind": "attribute", "target": "email", "claim": "a", "regex": "(a)", "replace": r"\2"}]},
        {"rules": [{"kind": "attribute", "target": "email", "claim": "a", "regex": "(a)", "replace": r"\g<x>"}]},
        {"rules": [{"kind": "attribute", "target": "email", "claim": "a", "regex": "a" * 201}]},
        {"rules": [{"kind": "attribute", "target": "email", "template": "{a}" + "x" * 300}]},
        {"rules": [{"kind": "attribute", "target": "email", "template": "no placeholders"}]},
        {"rules": [{"kind": "attribute", "target": "email", "template": "{bad name}"}]},
        {"rules": [{"kind": "attribute", "target": "email", "template": "{a}{b}{c}{d}{e}{f}{g}{h}{i}"}]},
        {"rules": [{"kind": "attribute", "target": "email", "template": "{a}", "claim": "a"}]},
        {"rules": [{"kind": "group", "claim": "g", "value": "x"}]},  # value without group
        {"rules": [{"kind": "group", "claim": "g", "value": "x", "group": "G", "match": "x"}]},
        {"rules": [{"kind": "constant", "target": "title"}]},
        {"rules": [{"kind": "constant", "target": "title", "value": "x", "group": "G"}]},
        {"rules": [{"kind": "constant", "group": "G", "value": "x"}]},
        {"rules": [{"kind": "constant", "group": "bad\nname"}]},
        {"rules": [{"kind": "constant", "target": "organization", "value": 3}]},
        {"rules": [{"kind": "constant", "group": "G"}] * (MAX_RULES + 1)},
    ],
)
def test_mapping_bad_document_refused(document: Any) -> None:
    with pytest.raises(Invalid):
        parse_mapping(document)


@pytest.mark.parametrize("text", ["{not json", "[1, 2", "x" * 70_000])
def test_mapping_bad_json_refused(text: str) -> None:
    with pytest.raises(Invalid):
        load_mapping(text)


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a+)+$",
        r"(a|aa)*b",
        r"(?:\w+\.)+com",
        r"(a*)*",
        r"(\d?){2,}",
        r"(a)\1",
        r"(?P<x>a)(?P=x)",
        r"\w*\w*\w*\w*x",
        r"[unterminated",
    ],
)
def test_mapping_catastrophic_or_backreferencing_regex_refused(pattern: str) -> None:
    with pytest.raises(Invalid):
        check_safe_regex(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        r"E0*(\d+)",
        r"(?i)cn=([^,]+),ou=(?:groups|teams)",
        r"(?P<d>\w+) (?P<r>\w+)",
        r"[()+*]+",
        r"(ab)?c",
        r"a{1,5}(bc){3}",
        r"(?#note)x+",
    ],
)
def test_mapping_ordinary_regex_accepted(pattern: str) -> None:
    check_safe_regex(pattern)


def test_mapping_worst_accepted_regex_is_fast_on_longest_input() -> None:
    mapping = _rules({"kind": "attribute", "target": "title", "claim": "t", "regex": r"\w*\w*\w*!x"})
    identity = Identity(issuer="i", subject="s", claims={"t": "a" * (MAX_INPUT - 1) + "!"})
    started = time.perf_counter()
    assert "title" not in apply(mapping, identity).attributes
    assert time.perf_counter() - started < 2.0


def test_mapping_claim_names_are_what_the_rules_read() -> None:
    # The OIDC connector reads UserInfo when the ID token lacks one of these (beyond the standard scopes').
    mapping = _rules(
        {"kind": "attribute", "target": "department", "claim": ["org", "unit"]},
        {"kind": "attribute", "target": "title", "template": "{job_title} of {username}"},
        {"kind": "group", "field": "groups"},
    )
    names = mapping.claim_names()
    assert {"org", "job_title", "preferred_username", "groups"} <= names
    assert {"email", "name", "given_name", "family_name"} <= names  # the default rules
    assert "unit" not in names  # only the top-level claim is fetched
    assert NO_MAPPING.claim_names() == {"email", "name", "given_name", "family_name"}


def test_broker_wants_non_standard_claims_of_mapping_and_link_claim() -> None:
    from idhub.broker.service import _wanted_claims

    provider = ProviderInfo(
        id=uuid.uuid4(), tenant_id=uuid.uuid4(), alias="corp", type="oidc", display_name="Corp", enabled=True,
        internal=False, jit=True, secret_sealed=None,
        config={"link_claim": "oid", "mapping": _rules({"kind": "group", "claim": "roles"}).describe()},
    )  # fmt: skip
    assert _wanted_claims(provider) == {"oid", "roles"}
