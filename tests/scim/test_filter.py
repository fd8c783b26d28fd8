"""SCIM filter and PATCH path parsing (RFC 7644 §3.4.2.2, §3.5.2) and in-memory matching."""

from __future__ import annotations

import random
from typing import Any

import pytest

from idhub.scim.errors import InvalidFilter, InvalidPath
from idhub.scim.filter import (
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    And,
    AttrPath,
    Compare,
    Not,
    Or,
    PatchPath,
    Present,
    ValuePath,
    matches,
    parse_filter,
    parse_path,
)

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def cmp(attr: str, op: Any, value: Any, sub: str | None = None, urn: str | None = None) -> Compare:
    return Compare(AttrPath(urn, attr, sub), op, value)


def pr(attr: str) -> Present:
    return Present(AttrPath(None, attr))


# ------------------------------------------------------------------------------------------------- parse_filter


@pytest.mark.parametrize("op", ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"])
def test_parse_filter_each_compare_operator_returns_compare(op: str) -> None:
    assert parse_filter(f'userName {op} "bjensen"') == cmp("userName", op, "bjensen")


def test_parse_filter_pr_returns_present() -> None:
    assert parse_filter("title pr") == Present(AttrPath(None, "title"))


def test_parse_filter_sub_attribute_returns_attr_path_with_sub() -> None:
    assert parse_filter('name.familyName co "O\'Malley"') == cmp("name", "co", "O'Malley", sub="familyName")


def test_parse_filter_and_binds_tighter_than_or() -> None:
    assert parse_filter("a pr or b pr and c pr") == Or(pr("a"), And(pr("b"), pr("c")))
    assert parse_filter("a pr and b pr or c pr") == Or(And(pr("a"), pr("b")), pr("c"))


def test_parse_filter_grouping_overrides_precedence() -> None:
    assert parse_filter("(a pr or b pr) and c pr") == And(Or(pr("a"), pr("b")), pr("c"))


def test_parse_filter_chain_of_same_operator_keeps_order() -> None:
    assert parse_filter("a pr and b pr and c pr") == And(And(pr("a"), pr("b")), pr("c"))
    assert parse_filter("a pr or b pr or c pr or d pr") == Or(Or(pr("a"), pr("b")), Or(pr("c"), pr("d")))


def test_parse_filter_long_chain_builds_shallow_tree() -> None:
    text = " or ".join(f"a{i} pr" for i in range(350))
    assert len(text) <= MAX_FILTER_LENGTH

    def depth(expr: Any) -> int:
        if isinstance(expr, Or):
            return 1 + max(depth(expr.left), depth(expr.right))
        return 0

    expr = parse_filter(text)
    assert depth(expr) <= 10
    assert matches(expr, {"a349": "x"})
    assert not matches(expr, {"b": "x"})


def test_parse_filter_not_returns_not() -> None:
    assert parse_filter('not (userName eq "x")') == Not(cmp("userName", "eq", "x"))
    assert parse_filter('not(userName eq "x")') == Not(cmp("userName", "eq", "x"))


def test_parse_filter_not_binds_tighter_than_and() -> None:
    assert parse_filter("a pr and not (b pr or c pr)") == And(pr("a"), Not(Or(pr("b"), pr("c"))))


def test_parse_filter_not_without_parentheses_raises() -> None:
    with pytest.raises(InvalidFilter, match=r"expected '\(' after 'not'"):
        parse_filter('not userName eq "x"')


def test_parse_filter_attribute_named_like_keyword_is_a_path() -> None:
    assert parse_filter('not eq "x"') == cmp("not", "eq", "x")
    assert parse_filter("and pr") == pr("and")


def test_parse_filter_rfc_example_returns_expected_tree() -> None:
    text = 'userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")'
    assert parse_filter(text) == And(
        cmp("userType", "eq", "Employee"),
        Or(cmp("emails", "co", "example.com"), cmp("emails", "co", "example.org", sub="value")),
    )


def test_parse_filter_valuepath_and_returns_valuepath() -> None:
    assert parse_filter('emails[type eq "work" and value co "@acme.com"]') == ValuePath(
        AttrPath(None, "emails"), And(cmp("type", "eq", "work"), cmp("value", "co", "@acme.com"))
    )


def test_parse_filter_valuepath_combined_with_or() -> None:
    text = 'emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]'
    expr = parse_filter(text)
    assert isinstance(expr, Or)
    assert expr.left == ValuePath(
        AttrPath(None, "emails"), And(cmp("type", "eq", "work"), cmp("value", "co", "@example.com"))
    )
    assert isinstance(expr.right, ValuePath)
    assert expr.right.path == AttrPath(None, "ims")


def test_parse_filter_valuepath_with_not_and_grouping_inside() -> None:
    assert parse_filter('emails[not (type eq "work") and (primary eq true)]') == ValuePath(
        AttrPath(None, "emails"), And(Not(cmp("type", "eq", "work")), cmp("primary", "eq", True))
    )


def test_parse_filter_valuepath_with_urn_prefix() -> None:
    expr = parse_filter(f'{CORE_USER}:emails[type eq "work"]')
    assert expr == ValuePath(AttrPath(CORE_USER, "emails"), cmp("type", "eq", "work"))


def test_parse_filter_entra_value_path_sub_attribute_compare_joins_bracket_filter() -> None:
    assert parse_filter('emails[type eq "work"].value eq "x@acme.com"') == ValuePath(
        AttrPath(None, "emails"), And(cmp("type", "eq", "work"), cmp("value", "eq", "x@acme.com"))
    )


def test_parse_filter_entra_value_path_sub_attribute_pr_returns_present() -> None:
    assert parse_filter('emails[type eq "work"].value pr') == ValuePath(
        AttrPath(None, "emails"), And(cmp("type", "eq", "work"), pr("value"))
    )


@pytest.mark.parametrize("op", ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"])
def test_parse_filter_entra_form_each_compare_operator_returns_compare(op: str) -> None:
    expr = parse_filter(f'emails[type eq "work"].value {op.upper()} "x"')
    assert expr == ValuePath(AttrPath(None, "emails"), And(cmp("type", "eq", "work"), cmp("value", op, "x")))


def test_parse_filter_entra_form_keeps_bracket_filter_as_one_operand() -> None:
    work_or_home = Or(cmp("type", "eq", "work"), cmp("type", "eq", "home"))
    assert parse_filter('emails[type eq "work" or type eq "home"].value co "@acme"') == ValuePath(
        AttrPath(None, "emails"), And(work_or_home, cmp("value", "co", "@acme"))
    )
    assert parse_filter('emails[type eq "work" and primary eq true].display eq null') == ValuePath(
        AttrPath(None, "emails"),
        And(And(cmp("type", "eq", "work"), cmp("primary", "eq", True)), cmp("display", "eq", None)),
    )


def test_parse_filter_entra_form_with_urn_and_ref_sub_attribute() -> None:
    assert parse_filter(f'{CORE_USER}:emails[type eq "work"].value eq "x"') == ValuePath(
        AttrPath(CORE_USER, "emails"), And(cmp("type", "eq", "work"), cmp("value", "eq", "x"))
    )
    assert parse_filter('members[type eq "User"].$ref pr') == ValuePath(
        AttrPath(None, "members"), And(cmp("type", "eq", "User"), Present(AttrPath(None, "$ref")))
    )


def test_parse_filter_entra_form_inside_and_or_not() -> None:
    entra = ValuePath(AttrPath(None, "emails"), And(cmp("type", "eq", "work"), cmp("value", "eq", "x")))
    text = 'emails[type eq "work"].value eq "x"'
    assert parse_filter(f"active eq true and {text}") == And(cmp("active", "eq", True), entra)
    assert parse_filter(f"{text} or userName pr") == Or(entra, pr("userName"))
    assert parse_filter(f"not ({text})") == Not(entra)
    assert parse_filter(f"({text}) and not({text})") == And(entra, Not(entra))


def test_parse_filter_entra_form_counts_bracket_toward_depth() -> None:
    text = 'emails[type eq "work"].value eq "x"'
    inner = "(" * (MAX_DEPTH - 1) + text + ")" * (MAX_DEPTH - 1)
    assert isinstance(parse_filter(inner), ValuePath)
    with pytest.raises(InvalidFilter, match="nested deeper"):
        parse_filter(f"({inner})")


def test_parse_path_entra_filter_form_raises_invalid_path() -> None:
    # PATCH paths keep RFC 7644 §3.5.2's valuePath [subAttr]: no operator after the sub-attribute.
    with pytest.raises(InvalidPath, match="unexpected 'eq'"):
        parse_path('emails[type eq "work"].value eq "x"')


def test_parse_filter_core_urn_path_splits_at_last_colon() -> None:
    assert parse_filter(f'{CORE_USER}:userName eq "bjensen"') == cmp("userName", "eq", "bjensen", urn=CORE_USER)


def test_parse_filter_extension_urn_with_sub_attribute() -> None:
    expr = parse_filter(f'{ENTERPRISE}:manager.value eq "26118915-6090-4610-87e4-49d8ca9f808d"')
    assert expr == cmp("manager", "eq", "26118915-6090-4610-87e4-49d8ca9f808d", sub="value", urn=ENTERPRISE)


def test_parse_filter_urn_prefix_is_case_insensitive() -> None:
    expr = parse_filter("URN:ietf:params:scim:schemas:core:2.0:User:userName pr")
    assert expr == Present(AttrPath("URN:ietf:params:scim:schemas:core:2.0:User", "userName"))


def test_parse_filter_ref_attribute_name_is_allowed() -> None:
    assert parse_filter('members.$ref eq "https://x/Users/1"') == cmp("members", "eq", "https://x/Users/1", sub="$ref")
    assert parse_filter("members[$ref pr]") == ValuePath(AttrPath(None, "members"), Present(AttrPath(None, "$ref")))


def test_parse_filter_json_escapes_are_decoded() -> None:
    assert parse_filter(r'displayName eq "a\"b"') == cmp("displayName", "eq", 'a"b')
    assert parse_filter(r'displayName eq "back\\slash\/"') == cmp("displayName", "eq", "back\\slash/")
    assert parse_filter(r'displayName eq "caf\u00e9 \ud83d\ude00"') == cmp("displayName", "eq", "café 😀")
    assert parse_filter(r'displayName eq "tab\there"') == cmp("displayName", "eq", "tab\there")


def test_parse_filter_string_keeps_spaces_brackets_and_keywords() -> None:
    assert parse_filter('displayName eq "  a ) and [ b or "') == cmp("displayName", "eq", "  a ) and [ b or ")


def test_parse_filter_unicode_string_value() -> None:
    assert parse_filter('displayName eq "Ærøskøbing 東京"') == cmp("displayName", "eq", "Ærøskøbing 東京")


@pytest.mark.parametrize(
    ("literal", "value"),
    [("true", True), ("false", False), ("null", None), ("TRUE", True), ("False", False), ("NULL", None)],
)
def test_parse_filter_literals_return_json_values(literal: str, value: Any) -> None:
    expr = parse_filter(f"active eq {literal}")
    assert isinstance(expr, Compare)
    assert expr.value is value


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("0", 0),
        ("-0", 0),
        ("42", 42),
        ("-17", -17),
        ("1.5", 1.5),
        ("-2.25e3", -2250.0),
        ("1E+2", 100.0),
        ("3e-2", 0.03),
    ],
)
def test_parse_filter_numbers_return_json_numbers(literal: str, value: float) -> None:
    expr = parse_filter(f"count ge {literal}")
    assert isinstance(expr, Compare)
    assert expr.value == value
    assert type(expr.value) is type(value)


def test_parse_filter_keywords_are_case_insensitive() -> None:
    assert parse_filter('userName EQ "x" And title PR Or not (a Pr)') == Or(
        And(cmp("userName", "eq", "x"), pr("title")), Not(pr("a"))
    )
    assert parse_filter("a pr AND b pr") == And(pr("a"), pr("b"))
    assert parse_filter("NOT (a pr)") == Not(pr("a"))


def test_parse_filter_attribute_names_kept_as_written() -> None:
    assert parse_filter('USERNAME eq "x"') == cmp("USERNAME", "eq", "x")


def test_parse_filter_multiple_spaces_and_padding_accepted() -> None:
    assert parse_filter('   userName   eq   "x"    and  ( title  pr )  ') == And(
        cmp("userName", "eq", "x"), pr("title")
    )


def test_parse_filter_sql_injection_in_string_is_a_plain_value() -> None:
    assert parse_filter('userName eq "x\'; DROP TABLE user; --"') == cmp("userName", "eq", "x'; DROP TABLE user; --")


@pytest.mark.parametrize(
    "text",
    [
        'userName eq "x" or 1=1',
        "userName eq 'x' or '1'='1'",
        'userName eq "x" --',
        'userName eq "x"; DROP TABLE user',
        'userName eq "x" /* */',
        'userName eq "x" union select 1',
    ],
)
def test_parse_filter_injection_attempts_raise(text: str) -> None:
    with pytest.raises(InvalidFilter):
        parse_filter(text)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", "empty filter"),
        ("    ", "empty filter"),
        ("userName eq", "missing value after 'eq'"),
        ("userName", "missing operator"),
        ("userName eq bjensen", "invalid value 'bjensen'"),
        ("userName eq 01", "invalid value '01'"),
        ('userName xx "a"', "expected an operator but found 'xx'"),
        ('userName eq "x" xyz', "unexpected 'xyz' at position 16"),
        ('userName eq "x")', r"unexpected '\)' at position 15"),
        ('(userName eq "x"', r"missing '\)' at end of filter"),
        ('userName eq "x" and', "unexpected end of filter"),
        ('userName eq "x" and or b pr', "expected an operator but found 'b'"),
        ('userName eq "x', "unterminated string at position 12"),
        ('userName eq "x"and title pr', "expected a space before 'and'"),
        ('userName eq"x"', "expected a space before"),
        ("count gt 5abc", "invalid value '5abc'"),
        ('count gt 5"x"', "expected a space before"),
        ('userName\teq "x"', r"unexpected '\\t' at position 8"),
        ('userName eq "x"\n', r"unexpected '\\n'"),
        ('userName eq "x"\x00', r"unexpected '\\x00'"),
        ('userName eq "a\x01b"', "invalid string"),
        (r'userName eq "\x"', "invalid string"),
        (r'userName eq "\ud800"', "invalid string"),
        (r'userName eq "a\u0000b"', "NUL character"),
        ("count gt 1e999", "number out of range"),
        ("emails[]", r"unexpected '\]'"),
        ('emails [type eq "work"]', "expected an operator but found '\\['"),
        ('emails[type eq "work"', r"missing '\]' at end of filter"),
        ('emails[type eq "work"] .value eq "x"', "unexpected '.value'"),
        ('emails[type eq "work"].value', "missing operator after '.value'"),
        ('emails[type eq "work"].value and a pr', "expected an operator but found 'and'"),
        ('emails[type eq "work"].value[type pr]', "value filter after a sub-attribute at position 28"),
        ('emails[type eq "work"].value[type pr] eq "x"', "value filter after a sub-attribute"),
        ('emails[type eq "work"]. eq "x"', "invalid sub-attribute '.' at position 22"),
        ('emails[type eq "work"].', "invalid sub-attribute '.'"),
        ('emails[type eq "work"]..value eq "x"', "invalid sub-attribute '..value'"),
        ('emails[type eq "work"].value.display eq "x"', "invalid sub-attribute '.value.display'"),
        ('emails[type eq "work"].1x eq "x"', "invalid sub-attribute '.1x'"),
        (f'emails[type eq "work"].{CORE_USER}:value eq "x"', "invalid sub-attribute"),
        ('emails[type eq "work"].value eq"x"', "expected a space before"),
        ('emails[type eq "work"].value eq work', "invalid value 'work'"),
        ('emails[type eq "work"].primary gt true', "'gt' cannot compare with true"),
        ('emails[x[type pr].value eq "y"]', "nested value filter"),
        ('name.givenName[type eq "x"].value eq "y"', "value filter after a sub-attribute at position 14"),
        ('emails[type eq "work"] title pr', "unexpected 'title'"),
        ('name.givenName[type eq "x"]', "value filter after a sub-attribute"),
        ('emails[addresses[type eq "work"]]', "nested value filter"),
        ("emails[value pr and x[y pr]]", "nested value filter"),
        (f'emails[{CORE_USER}:emails.type eq "work"]', "schema URN not allowed inside brackets"),
        ('emails[name.first eq "x"]', "sub-attribute path not allowed inside brackets"),
        ('1abc eq "x"', "invalid attribute path"),
        ('_name eq "x"', "invalid attribute path"),
        ('name.given.family eq "x"', "invalid attribute path"),
        ('foo:bar eq "x"', "invalid attribute path"),
        ('urn:userName eq "x"', "invalid attribute path"),
        ('urn::x:userName eq "x"', "invalid attribute path"),
        ('a-b+c eq "x"', "invalid attribute path"),
        ('"userName" eq "x"', "unexpected '\"userName\"'"),
        ("not", r"expected '\(' after 'not'"),
        ("not ()", r"unexpected '\)'"),
        ("()", r"unexpected '\)'"),
        ("active gt true", "'gt' cannot compare with true"),
        ("active le false", "'le' cannot compare with false"),
        ("manager lt null", "'lt' cannot compare with null"),
        ("userName co 5", "'co' needs a string value"),
        ("userName sw null", "'sw' needs a string value"),
        ("userName ew true", "'ew' needs a string value"),
        ('userName eq "x" = "y"', "unexpected '='"),
    ],
)
def test_parse_filter_invalid_raises_invalid_filter(text: str, detail: str) -> None:
    with pytest.raises(InvalidFilter, match=detail) as info:
        parse_filter(text)
    assert info.value.scim_type == "invalidFilter"
    assert info.value.status == 400


def test_parse_filter_too_long_raises() -> None:
    text = 'userName eq "' + "a" * 10_000 + '"'
    with pytest.raises(InvalidFilter, match="longer than 4096"):
        parse_filter(text)


def test_parse_filter_at_length_limit_is_accepted() -> None:
    prefix = 'userName eq "'
    text = prefix + "a" * (MAX_FILTER_LENGTH - len(prefix) - 1) + '"'
    assert len(text) == MAX_FILTER_LENGTH
    assert parse_filter(text) == cmp("userName", "eq", "a" * (MAX_FILTER_LENGTH - len(prefix) - 1))


def test_parse_filter_thousand_nested_parentheses_raises() -> None:
    text = "(" * 1000 + "a pr" + ")" * 1000
    with pytest.raises(InvalidFilter, match="nested deeper than 16"):
        parse_filter(text)


def test_parse_filter_unbalanced_deep_parentheses_raises() -> None:
    with pytest.raises(InvalidFilter, match="nested deeper"):
        parse_filter("(" * 4000)


def test_parse_filter_nesting_at_max_depth_accepted() -> None:
    assert parse_filter("(" * MAX_DEPTH + "a pr" + ")" * MAX_DEPTH) == pr("a")
    with pytest.raises(InvalidFilter, match="nested deeper"):
        parse_filter("(" * (MAX_DEPTH + 1) + "a pr" + ")" * (MAX_DEPTH + 1))


def test_parse_filter_deep_not_nesting_raises() -> None:
    with pytest.raises(InvalidFilter, match="nested deeper"):
        parse_filter("not (" * 500 + "a pr" + ")" * 500)


def test_parse_filter_brackets_count_toward_depth() -> None:
    inner = "(" * (MAX_DEPTH - 1) + "type pr" + ")" * (MAX_DEPTH - 1)
    assert parse_filter(f"emails[{inner}]") == ValuePath(AttrPath(None, "emails"), pr("type"))
    with pytest.raises(InvalidFilter, match="nested deeper"):
        parse_filter(f"emails[({inner})]")


def test_parse_filter_error_detail_truncates_long_tokens() -> None:
    with pytest.raises(InvalidFilter) as info:
        parse_filter('userName eq "x" ' + "z" * 1000)
    assert len(info.value.detail) < 100


def test_parse_filter_non_string_raises_invalid_filter() -> None:
    with pytest.raises(InvalidFilter):
        parse_filter(None)  # type: ignore[arg-type]


def test_parse_filter_random_garbage_only_raises_invalid_filter() -> None:
    pieces = [
        "a", "userName", " ", "  ", "(", ")", "[", "]", '"', '"x"', "\\", "eq", "pr", "and", "or", "not", "not (",
        "1", "-", ".", ":", "urn:", "$ref", "true", "null", "1e5", "\t", "\x00", "é", "\ud800", "'", "=", ".value",
    ]  # fmt: skip
    rng = random.Random(7644)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        try:
            parse_filter(text)
        except InvalidFilter:
            pass
        try:
            parse_path(text)
        except InvalidPath:
            pass


# --------------------------------------------------------------------------------------------------- parse_path


def test_parse_path_simple_attribute() -> None:
    assert parse_path("userName") == PatchPath(attr=AttrPath(None, "userName"))


def test_parse_path_sub_attribute() -> None:
    assert parse_path("name.givenName") == PatchPath(attr=AttrPath(None, "name", "givenName"))


def test_parse_path_valuepath_returns_filter() -> None:
    assert parse_path('members[value eq "2819c223"]') == PatchPath(
        attr=AttrPath(None, "members"), value_filter=cmp("value", "eq", "2819c223")
    )


def test_parse_path_valuepath_with_sub_attribute() -> None:
    assert parse_path('emails[type eq "work"].value') == PatchPath(
        attr=AttrPath(None, "emails"), value_filter=cmp("type", "eq", "work"), sub="value"
    )


def test_parse_path_valuepath_with_ref_sub_attribute() -> None:
    path = parse_path('members[value eq "1"].$ref')
    assert path.sub == "$ref"


def test_parse_path_valuepath_with_complex_filter() -> None:
    path = parse_path('addresses[type eq "work" and not (primary eq false)].streetAddress')
    assert path.value_filter == And(cmp("type", "eq", "work"), Not(cmp("primary", "eq", False)))
    assert path.sub == "streetAddress"


def test_parse_path_string_containing_bracket() -> None:
    path = parse_path('emails[value eq "a]b"].display')
    assert path.value_filter == cmp("value", "eq", "a]b")
    assert path.sub == "display"


def test_parse_path_extension_urn() -> None:
    assert parse_path(f"{ENTERPRISE}:manager") == PatchPath(attr=AttrPath(ENTERPRISE, "manager"))


def test_parse_path_extension_urn_with_sub_attribute() -> None:
    assert parse_path(f"{ENTERPRISE}:manager.value") == PatchPath(attr=AttrPath(ENTERPRISE, "manager", "value"))


def test_parse_path_core_urn_valuepath() -> None:
    assert parse_path(f'{CORE_USER}:emails[type eq "work"].value') == PatchPath(
        attr=AttrPath(CORE_USER, "emails"), value_filter=cmp("type", "eq", "work"), sub="value"
    )


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", "empty path"),
        ("   ", "empty path"),
        ("name.", "invalid attribute path"),
        ("name..givenName", "invalid attribute path"),
        ("name.givenName.x", "invalid attribute path"),
        ("1name", "invalid attribute path"),
        ('emails[type eq "work"].', "invalid sub-attribute"),
        ('emails[type eq "work"].1x', "invalid sub-attribute"),
        ('emails[type eq "work"].value.x', "invalid sub-attribute"),
        ('emails[type eq "work"] .value', "unexpected '.value'"),
        ('emails[type eq "work"]value', "unexpected 'value'"),
        ('emails[type eq "work"][value pr]', r"unexpected '\['"),
        ('emails[type eq "work"', r"missing '\]' at end of path"),
        ("emails[type eq work]", "invalid value 'work'"),
        ("emails[]", r"unexpected '\]'"),
        ("emails[x[y pr]]", "nested value filter"),
        ('name.givenName[type eq "x"]', "value filter after a sub-attribute"),
        ("userName eq", "unexpected 'eq'"),
        ("userName\t", r"unexpected '\\t'"),
        ('"userName"', "unexpected '\"userName\"'"),
        ("(userName)", r"unexpected '\('"),
    ],
)
def test_parse_path_invalid_raises_invalid_path(text: str, detail: str) -> None:
    with pytest.raises(InvalidPath, match=detail) as info:
        parse_path(text)
    assert info.value.scim_type == "invalidPath"


def test_parse_path_too_long_raises() -> None:
    with pytest.raises(InvalidPath, match="longer than 4096"):
        parse_path("a" * 10_000)


def test_parse_path_deep_nesting_raises() -> None:
    with pytest.raises(InvalidPath, match="nested deeper"):
        parse_path("emails[" + "(" * 1000 + "type pr" + ")" * 1000 + "]")


# ------------------------------------------------------------------------------------------------------ matches

WORK = {"value": "Bob@Acme.com", "type": "work", "primary": True}
HOME = {"value": "bob@home.org", "type": "home"}


def test_matches_eq_is_case_insensitive_by_default() -> None:
    assert matches(parse_filter('value eq "bob@acme.COM"'), WORK)
    assert not matches(parse_filter('value eq "bob@acme.net"'), WORK)


def test_matches_eq_respects_case_exact() -> None:
    expr = parse_filter('value eq "bob@acme.com"')
    assert not matches(expr, WORK, case_exact=frozenset({"value"}))
    assert matches(parse_filter('value eq "Bob@Acme.com"'), WORK, case_exact=frozenset({"value"}))
    assert not matches(expr, WORK, case_exact=frozenset({"Value"}))


def test_matches_attribute_lookup_is_case_insensitive() -> None:
    assert matches(parse_filter('TYPE eq "work"'), WORK)
    assert matches(parse_filter('type eq "work"'), {"Type": "work"})


def test_matches_ne() -> None:
    assert matches(parse_filter('type ne "home"'), WORK)
    assert not matches(parse_filter('type ne "WORK"'), WORK)


def test_matches_ne_missing_attribute_is_true() -> None:
    assert matches(parse_filter('display ne "x"'), WORK)


def test_matches_eq_missing_attribute_is_false() -> None:
    assert not matches(parse_filter('display eq "x"'), WORK)
    assert not matches(parse_filter('display co ""'), WORK)
    assert not matches(parse_filter("count gt 0"), WORK)


def test_matches_eq_null_means_not_present() -> None:
    expr = parse_filter("display eq null")
    assert matches(expr, WORK)
    assert matches(expr, {"display": None})
    assert matches(expr, {"display": ""})
    assert not matches(expr, {"display": "x"})


def test_matches_ne_null_means_present() -> None:
    expr = parse_filter("display ne null")
    assert not matches(expr, WORK)
    assert matches(expr, {"display": "x"})


def test_matches_co_sw_ew() -> None:
    assert matches(parse_filter('value co "@ACME."'), WORK)
    assert matches(parse_filter('value sw "bob@"'), WORK)
    assert matches(parse_filter('value ew ".COM"'), WORK)
    assert not matches(parse_filter('value sw "acme"'), WORK)
    assert not matches(parse_filter('value ew "acme"'), WORK)
    assert not matches(parse_filter('value co "@home"'), WORK)


def test_matches_co_respects_case_exact() -> None:
    assert not matches(parse_filter('value co "acme"'), WORK, case_exact=frozenset({"value"}))
    assert matches(parse_filter('value co "Acme"'), WORK, case_exact=frozenset({"value"}))


def test_matches_substring_on_non_string_value_is_false() -> None:
    assert not matches(parse_filter('primary co "t"'), WORK)


def test_matches_pr() -> None:
    assert matches(parse_filter("primary pr"), WORK)
    assert not matches(parse_filter("primary pr"), HOME)
    assert not matches(parse_filter("display pr"), {"display": ""})
    assert not matches(parse_filter("display pr"), {"display": None})
    assert not matches(parse_filter("tags pr"), {"tags": []})
    assert matches(parse_filter("tags pr"), {"tags": ["a"]})
    assert matches(parse_filter("flag pr"), {"flag": False})


def test_matches_boolean_eq() -> None:
    assert matches(parse_filter("primary eq true"), WORK)
    assert not matches(parse_filter("primary eq false"), WORK)
    assert matches(parse_filter("primary ne false"), WORK)
    assert not matches(parse_filter('primary eq "true"'), WORK)
    assert not matches(parse_filter("primary eq 1"), WORK)


def test_matches_numbers_compare_numerically() -> None:
    element = {"count": 10, "ratio": 0.5}
    assert matches(parse_filter("count gt 9"), element)
    assert matches(parse_filter("count ge 10"), element)
    assert not matches(parse_filter("count gt 10"), element)
    assert matches(parse_filter("count lt 1e2"), element)
    assert matches(parse_filter("count le 10.0"), element)
    assert matches(parse_filter("count eq 10.0"), element)
    assert matches(parse_filter("ratio lt 1"), element)
    assert not matches(parse_filter('count eq "10"'), element)
    assert not matches(parse_filter('count gt "9"'), element)


def test_matches_number_never_equals_boolean() -> None:
    assert not matches(parse_filter("flag eq 1"), {"flag": True})
    assert not matches(parse_filter("flag gt 0"), {"flag": True})


def test_matches_strings_order_lexicographically() -> None:
    element = {"created": "2024-05-01T10:00:00Z", "name": "Bob"}
    assert matches(parse_filter('created gt "2024-01-01T00:00:00Z"'), element)
    assert not matches(parse_filter('created lt "2024-01-01T00:00:00Z"'), element)
    assert matches(parse_filter('name gt "alice"'), element)
    assert matches(parse_filter('name le "BOB"'), element)
    assert not matches(parse_filter('name gt "alice"'), element, case_exact=frozenset({"name"}))


def test_matches_ordering_on_boolean_literal_raises() -> None:
    with pytest.raises(InvalidFilter, match="cannot compare with true"):
        matches(Compare(AttrPath(None, "primary"), "gt", True), WORK)
    with pytest.raises(InvalidFilter, match="needs a string value"):
        matches(Compare(AttrPath(None, "value"), "co", 5), WORK)


def test_matches_logical_operators() -> None:
    assert matches(parse_filter('type eq "work" and primary eq true'), WORK)
    assert not matches(parse_filter('type eq "work" and primary eq false'), WORK)
    assert matches(parse_filter('type eq "home" or primary eq true'), WORK)
    assert matches(parse_filter('not (type eq "home")'), WORK)
    assert not matches(parse_filter('not (type eq "work")'), WORK)
    assert matches(parse_filter('type eq "x" or type eq "y" and value pr or primary pr'), WORK)


def test_matches_list_value_any_item() -> None:
    element = {"tags": ["red", "Blue"]}
    assert matches(parse_filter('tags eq "blue"'), element)
    assert not matches(parse_filter('tags eq "green"'), element)
    assert matches(parse_filter('tags ne "red"'), element)
    assert not matches(parse_filter('tags ne "red"'), {"tags": ["red", "RED"]})
    assert matches(parse_filter('tags sw "bl"'), element)


def test_matches_scalar_element_is_value() -> None:
    assert matches(parse_filter('value eq "2819C223"'), "2819c223")
    assert not matches(parse_filter('value eq "other"'), "2819c223")
    assert matches(parse_filter("value pr"), "x")
    assert not matches(parse_filter('type eq "x"'), "2819c223")
    assert matches(parse_filter("value gt 3"), 5)


def test_matches_none_element_matches_nothing_positive() -> None:
    assert not matches(parse_filter("value pr"), None)
    assert matches(parse_filter("value eq null"), None)


def test_matches_valuepath_filter_against_resource() -> None:
    user = {"userName": "bob", "emails": [HOME, WORK]}
    assert matches(parse_filter('emails[type eq "work" and value co "@acme.com"]'), user)
    assert not matches(parse_filter('emails[type eq "home" and value co "@acme.com"]'), user)
    assert matches(parse_filter('emails.type eq "home"'), user)
    assert matches(parse_filter('emails co "@home.org"'), user)


def test_matches_entra_form_needs_one_element_matching_both() -> None:
    expr = parse_filter('emails[type eq "work"].value eq "x@acme.com"')
    assert matches(expr, {"emails": [{"type": "work", "value": "X@acme.com"}]})
    assert not matches(expr, {"emails": [{"type": "home", "value": "x@acme.com"}, {"type": "work", "value": "y"}]})
    assert not matches(expr, {"emails": [{"type": "work", "value": "y@acme.com"}]})
    assert matches(parse_filter('emails[type eq "home"].value pr'), {"emails": [HOME, WORK]})
    assert not matches(parse_filter('emails[type eq "home"].primary pr'), {"emails": [HOME, WORK]})


def test_matches_sub_attribute_and_urn_paths() -> None:
    user = {
        "name": {"givenName": "Barbara"},
        "userName": "bjensen",
        ENTERPRISE: {"manager": {"value": "42"}, "employeeNumber": "701984"},
    }
    assert matches(parse_filter('name.givenName sw "bar"'), user)
    assert matches(parse_filter(f'{ENTERPRISE}:manager.value eq "42"'), user)
    assert matches(parse_filter(f'{ENTERPRISE}:employeeNumber eq "701984"'), user)
    assert matches(parse_filter(f'{CORE_USER}:userName eq "BJENSEN"'), user)
    assert not matches(parse_filter(f'{ENTERPRISE}:userName eq "bjensen"'), user)


def test_matches_case_exact_uses_sub_attribute_name() -> None:
    user = {"name": {"givenName": "Barbara"}}
    assert not matches(parse_filter('name.givenName eq "barbara"'), user, case_exact=frozenset({"givenname"}))
    assert matches(parse_filter('name.givenName eq "barbara"'), user, case_exact=frozenset({"name"}))


def test_matches_nan_and_huge_numbers_do_not_crash() -> None:
    assert not matches(parse_filter("x gt 1"), {"x": float("nan")})
    assert not matches(parse_filter("x le 1"), {"x": float("nan")})
    assert matches(parse_filter("x gt 1.5"), {"x": 10**400})
