"""Differential test: idhub's SCIM filter parser against scim2-models' on one corpus (RFC 7644 §3.4.2.2).

Both parsers read every filter of :data:`CORPUS`. They must agree on accept/reject and, when both accept, on
the tree once each is brought to one neutral form (:func:`idhub_normal`, :func:`scim2_normal`): nested tuples,
and/or chains flattened (idhub builds balanced binary trees, scim2-models n-ary ``LogicalExpr``), operators
lower-cased, values tagged with their JSON type (``1``, ``1.0`` and ``true`` differ). The filters on which they
differ on purpose are listed in :data:`KNOWN_DIFFERENCES`, with the side that accepts and why; exactly those must
differ, so an upgrade of either parser that changes behaviour fails here. ``bench/filter_parsers.py`` times both
parsers over the same corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pytest

from idhub.scim.errors import InvalidFilter
from idhub.scim.filter import MAX_DEPTH, MAX_FILTER_LENGTH, And, AttrPath, Compare, Expr, Not, Or, Present, ValuePath
from idhub.scim.filter import parse_filter as idhub_parse_filter

try:  # private in scim2-models, stable in 0.12; if it moves, skip with the reason rather than error out
    from scim2_models.exceptions import InvalidFilterException
    from scim2_models.path import expressions as s2
    from scim2_models.path.grammar import _parse_filter as scim2_parse_filter
except ImportError as exc:  # pragma: no cover - depends on the installed scim2-models
    pytest.skip(
        f"scim2-models' filter parser is no longer at scim2_models.path.grammar._parse_filter ({exc}); "
        "update the imports of tests/scim/test_filter_differential.py",
        allow_module_level=True,
    )

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
ENTRA = 'emails[type eq "work"].value eq "Test_User_1@contoso.com"'


def _padded(length: int) -> str:
    """Return ``userName eq "aaa..."`` exactly ``length`` characters long."""
    prefix = 'userName eq "'
    return prefix + "a" * (length - len(prefix) - 1) + '"'


def _nested(levels: int, opening: str = "(") -> str:
    """Return ``title pr`` inside ``levels`` levels of ``opening`` (``"("`` or ``"not ("``)."""
    return opening * levels + "title pr" + ")" * levels


def _or_chain(terms: int) -> str:
    """Return ``userName eq "u0" or userName eq "u1" or ...`` with ``terms`` comparisons."""
    return " or ".join(f'userName eq "u{i}"' for i in range(terms))


@dataclass(frozen=True, slots=True)
class Case:
    """One corpus filter; ``name`` is its pytest id and its key in :data:`KNOWN_DIFFERENCES`."""

    name: str
    text: str


# fmt: off
CORPUS: tuple[Case, ...] = (
    # Every comparison operator, and pr (RFC 7644 §3.4.2.2 examples).
    Case("op_eq", 'userName eq "bjensen"'),
    Case("op_ne", 'userType ne "Employee"'),
    Case("op_co", 'name.familyName co "O\'Malley"'),
    Case("op_sw", 'userName sw "J"'),
    Case("op_ew", 'emails.value ew "@example.com"'),
    Case("op_gt", 'meta.lastModified gt "2011-05-13T04:42:34Z"'),
    Case("op_ge", 'meta.lastModified ge "2011-05-13T04:42:34Z"'),
    Case("op_lt", 'meta.lastModified lt "2011-05-13T04:42:34Z"'),
    Case("op_le", 'meta.lastModified le "2011-05-13T04:42:34Z"'),
    Case("op_pr", "title pr"),
    Case("op_unknown", 'userName xx "a"'),
    Case("op_missing", "userName"),
    Case("op_missing_value", "userName eq"),
    # Logical operators, precedence (not > and > or) and grouping.
    Case("rfc_and", 'title pr and userType eq "Employee"'),
    Case("rfc_or", 'title pr or userType eq "Intern"'),
    Case("rfc_schemas", f'schemas eq "{ENTERPRISE}"'),
    Case("rfc_grouping", 'userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")'),
    Case("rfc_not", 'userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")'),
    Case("rfc_parenthesised_attr", 'userType eq "Employee" and (emails.type eq "work")'),
    Case("prec_and_over_or", "a pr or b pr and c pr"),
    Case("prec_and_then_or", "a pr and b pr or c pr"),
    Case("prec_parens_override", "(a pr or b pr) and c pr"),
    Case("prec_parens_middle", "a pr and (b pr or c pr) and d pr"),
    Case("prec_not_over_and", "not (a pr) and b pr"),
    Case("prec_not_group_or", "not (a pr and b pr) or c pr"),
    Case("chain_or_5", "a pr or b pr or c pr or d pr or e pr"),
    Case("chain_and_5", "a pr and b pr and c pr and d pr and e pr"),
    Case("chain_or_120", _or_chain(120)),
    Case("parens_double", "((a pr))"),
    Case("parens_nested_chain", "(a pr and b pr) and (c pr and (d pr or e pr))"),
    Case("not_not", "not (not (a pr))"),
    Case("not_no_space", "not(a pr)"),
    Case("not_without_parens", 'not userName eq "x"'),
    Case("not_empty", "not ()"),
    Case("not_alone", "not"),
    Case("and_dangling", 'userName eq "x" and'),
    Case("or_leading", 'or userName eq "x"'),
    Case("and_or_adjacent", 'userName eq "x" and or b pr'),
    Case("parens_unclosed", '(userName eq "x"'),
    Case("parens_extra_close", 'userName eq "x")'),
    Case("parens_empty", "()"),
    # Keywords in any case; attributes named like keywords.
    Case("case_mixed_keywords", 'userName EQ "x" And title PR Or not (a Pr)'),
    Case("case_upper_and", "a pr AND b pr"),
    Case("case_upper_not", "NOT (a pr)"),
    Case("case_literals", "active eq TRUE or active eq False or manager eq NULL"),
    Case("attr_named_and", "and pr"),
    Case("attr_named_eq", 'eq eq "x"'),
    Case("attr_named_pr", "pr pr"),
    Case("attr_named_not", 'not eq "x"'),
    Case("attr_prefixed_ne", "never pr"),
    Case("attr_prefixed_not", "notes pr"),
    Case("attr_kept_as_written", 'USERNAME eq "x"'),
    # Attribute paths: sub-attributes, URNs, the enterprise extension, $ref.
    Case("urn_core_user", f'{CORE_USER}:userName sw "J"'),
    Case("urn_core_group", f'{CORE_GROUP}:displayName eq "Admins"'),
    Case("urn_upper_case", "URN:ietf:params:scim:schemas:core:2.0:User:userName pr"),
    Case("enterprise_attr", f'{ENTERPRISE}:employeeNumber eq "701984"'),
    Case("enterprise_sub_attr", f'{ENTERPRISE}:manager.value eq "26118915-6090-4610-87e4-49d8ca9f808d"'),
    Case("enterprise_and_core", f'{ENTERPRISE}:department eq "Sales" and {CORE_USER}:active eq true'),
    Case("urn_too_short", 'urn:userName eq "x"'),
    Case("urn_empty_segment", 'urn::x:userName eq "x"'),
    Case("urn_nid_starts_with_dash", "urn:-x:userName pr"),
    Case("path_not_urn", 'foo:bar eq "x"'),
    Case("path_two_subs", 'name.given.family eq "x"'),
    Case("path_leading_digit", '1abc eq "x"'),
    Case("path_leading_underscore", '_name eq "x"'),
    Case("path_plus_sign", 'a-b+c eq "x"'),
    Case("path_quoted", '"userName" eq "x"'),
    Case("ref_sub_attr", 'members.$ref eq "https://example.com/v2/Users/1"'),
    Case("ref_in_brackets", "members[$ref pr]"),
    Case("dollar_other_name", "$foo pr"),
    # valuePaths.
    Case("vp_rfc_and", 'userType eq "Employee" and emails[type eq "work" and value co "@example.com"]'),
    Case("vp_rfc_or", 'emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@x"]'),
    Case("vp_grouping_inside", 'emails[type eq "work" and (primary eq true or value ew ".org")]'),
    Case("vp_not_inside", 'emails[not (type eq "work")]'),
    Case("vp_urn", f'{CORE_USER}:emails[type eq "work"]'),
    Case("vp_in_not", 'not (emails[type eq "work"])'),
    Case("vp_inner_spaces", 'emails[ type eq "work" ]'),
    Case("vp_two", 'addresses[type eq "work" and postalCode sw "75"] and emails[primary eq true]'),
    Case("vp_nested", 'emails[addresses[type eq "work"]]'),
    Case("vp_nested_deeper", "emails[value pr and x[y pr]]"),
    Case("vp_twice", 'emails[type eq "work"][value pr]'),
    Case("vp_empty", "emails[]"),
    Case("vp_unclosed", 'emails[type eq "work"'),
    Case("vp_after_sub_attr", 'name.givenName[type eq "x"]'),
    Case("vp_then_attr", 'emails[type eq "work"] title pr'),
    Case("vp_urn_inside", f'emails[{CORE_USER}:emails.type eq "work"]'),
    Case("vp_sub_attr_inside", 'emails[name.first eq "x"]'),
    # Entra ID's valuePath "." subAttr form.
    Case("entra_work_email", ENTRA),
    Case("entra_pr", 'emails[type eq "work"].value pr'),
    Case("entra_and_in_brackets", 'emails[type eq "work" and primary eq true].value ew "@contoso.com"'),
    Case("entra_or_in_brackets", 'emails[type eq "work" or type eq "home"].value co "@contoso"'),
    Case("entra_urn", f'{CORE_USER}:emails[type eq "work"].value eq "x"'),
    Case("entra_ref", 'members[type eq "User"].$ref pr'),
    Case("entra_in_logic", f'active eq true and ({ENTRA}) or not ({ENTRA})'),
    Case("entra_no_operator", 'emails[type eq "work"].value'),
    Case("entra_then_bracket", 'emails[type eq "work"].value[type pr]'),
    Case("entra_dot_only", 'emails[type eq "work"]. eq "x"'),
    Case("entra_two_subs", 'emails[type eq "work"].value.display eq "x"'),
    Case("entra_space_before_dot", 'emails[type eq "work"] .value eq "x"'),
    # Filters Microsoft Entra ID and Okta send (their SCIM provisioning documentation).
    Case("entra_user_name", 'userName eq "Test_User_dfeef4c5-5681-4387-b016-bdf221e82081"'),
    Case("entra_external_id", 'externalId eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"'),
    Case("entra_group_display_name", 'displayName eq "Group1DisplayName"'),
    Case("entra_enterprise_employee", f'{ENTERPRISE}:employeeNumber eq "1234"'),
    Case("entra_group_member_check", 'id eq "40734ae6-8bf5-4c3d-90a8-a8a2f5d4f7a1" and members eq "c0a8d3e6"'),
    Case("okta_user_name", 'userName eq "isaac.brock@example.com"'),
    Case("okta_group_display_name", 'displayName eq "Test SCIMv2"'),
    Case("okta_id", 'id eq "23a35c27-23d3-4c03-b4c5-6443c09e7173"'),
    # compValue: JSON strings with escapes, numbers, literals.
    Case("str_escaped_quote", r'displayName eq "a\"b"'),
    Case("str_u_escape", r'displayName eq "caf\u00e9"'),
    Case("str_surrogate_pair", r'displayName eq "\ud83d\ude00"'),
    Case("str_backslash_slash", r'displayName eq "back\\slash\/"'),
    Case("str_tab_escape", r'displayName eq "tab\there"'),
    Case("str_raw_unicode", 'displayName eq "Ærøskøbing 東京"'),
    Case("str_empty", 'displayName eq ""'),
    Case("str_keywords_inside", 'displayName eq "  a ) and [ b or "'),
    Case("str_bad_escape", r'displayName eq "\x"'),
    Case("str_lone_surrogate", r'displayName eq "\ud800"'),
    Case("str_nul_escape", r'displayName eq "a\u0000b"'),
    Case("str_raw_control", 'displayName eq "a\x01b"'),
    Case("str_unterminated", 'displayName eq "abc'),
    Case("str_single_quotes", "userName eq 'x' or '1'='1'"),
    Case("str_unquoted", "userName eq bjensen"),
    Case("num_zero", "count eq 0"),
    Case("num_minus_zero", "count eq -0"),
    Case("num_negative", "count gt -17"),
    Case("num_fraction", "count ge 1.5"),
    Case("num_exponent", "count lt -2.25e3"),
    Case("num_exponent_plus", "count le 1E+2"),
    Case("num_int_vs_float", "count eq 1 or count eq 1.0"),
    Case("num_leading_zero", "count eq 01"),
    Case("num_trailing_dot", "count eq 1."),
    Case("num_leading_dot", "count eq .5"),
    Case("num_plus_sign", "count eq +1"),
    Case("num_overflow", "count gt 1e999"),
    Case("num_glued", "count gt 5abc"),
    Case("lit_true", "active eq true"),
    Case("lit_false", "active ne false"),
    Case("lit_null", "manager eq null"),
    Case("lit_ordering_bool", "active gt true"),
    Case("lit_ordering_null", "manager lt null"),
    Case("lit_substring_number", "userName co 5"),
    Case("lit_substring_null", "userName sw null"),
    # Whitespace.
    Case("ws_padding", '   userName eq "x"   '),
    Case("ws_many_spaces", 'userName   eq   "x"    and  ( title  pr )'),
    Case("ws_empty", ""),
    Case("ws_spaces_only", "    "),
    Case("ws_tab", 'userName\teq "x"'),
    Case("ws_newline", 'userName eq "x"\nand title pr'),
    Case("ws_carriage_return", 'userName eq "x"\r'),
    Case("ws_none_before_value", 'userName eq"x"'),
    Case("ws_none_before_and", 'userName eq "x"and title pr'),
    Case("ws_none_around_parens", "(a pr)and(b pr)"),
    Case("ws_space_before_bracket", 'emails [type eq "work"]'),
    # Junk and injection attempts.
    Case("junk_trailing_word", 'userName eq "x" xyz'),
    Case("junk_equals", 'userName eq "x" = "y"'),
    Case("junk_sql_comment", 'userName eq "x" --'),
    Case("junk_semicolon", 'userName eq "x"; DROP TABLE user'),
    Case("junk_sql_in_string", 'userName eq "x\'; DROP TABLE user; --"'),
    # idhub's limits: MAX_FILTER_LENGTH characters, MAX_DEPTH levels of (), not () and [].
    Case("limit_length_at_max", _padded(MAX_FILTER_LENGTH)),
    Case("limit_length_over_max", _padded(MAX_FILTER_LENGTH + 1)),
    Case("limit_parens_at_max", _nested(MAX_DEPTH)),
    Case("limit_parens_over_max", _nested(MAX_DEPTH + 1)),
    Case("limit_not_at_max", _nested(MAX_DEPTH, "not (")),
    Case("limit_not_over_max", _nested(MAX_DEPTH + 1, "not (")),
    Case("limit_not_33", _nested(33, "not (")),
    Case("limit_parens_1000", _nested(1000)),
    Case("limit_parens_unbalanced", "(" * 2000),
)
# fmt: on

Side = Literal["idhub only", "scim2-models only", "both, trees differ"]

IDHUB: Side = "idhub only"
SCIM2: Side = "scim2-models only"

# Filters the parsers treat differently: which side accepts, and why. "RFC" is RFC 7644 §3.4.2.2 (Figure 1).
# fmt: off
KNOWN_DIFFERENCES: dict[str, tuple[Side, str]] = {
    # Limits: idhub bounds length and nesting before building anything; scim2-models only nested expressions (32).
    "limit_length_over_max":    (SCIM2, "idhub caps length at MAX_FILTER_LENGTH 4096; scim2-models has no cap"),
    "limit_parens_over_max":    (SCIM2, "idhub counts each ( toward MAX_DEPTH 16; scim2-models ignores parens"),
    "limit_parens_1000":        (SCIM2, "1000 parens: no nesting to scim2-models, 1000 levels to idhub"),
    "limit_not_over_max":       (SCIM2, "17 nested not (): over idhub's MAX_DEPTH 16, under scim2-models' 32"),
    # Whitespace: the RFC separates tokens with SP; idhub follows it, scim2-models skips any whitespace or none.
    "ws_tab":                   (SCIM2, "RFC separates tokens with SP; scim2-models also skips tab"),
    "ws_newline":               (SCIM2, "RFC separates tokens with SP; scim2-models also skips LF"),
    "ws_carriage_return":       (SCIM2, "RFC separates tokens with SP; scim2-models also skips CR"),
    "ws_none_before_value":     (SCIM2, "RFC attrExp has SP before compValue; scim2-models needs none"),
    "ws_none_before_and":       (SCIM2, "RFC logExp has SP before and/or; scim2-models needs none"),
    "ws_space_before_bracket":  (SCIM2, 'RFC valuePath is attrPath "[" with no SP; scim2-models skips it'),
    "entra_space_before_dot":   (SCIM2, "not RFC; idhub takes Entra's form as Entra sends it, unspaced"),
    # Operand checks: the grammar admits any compValue; idhub refuses meaningless pairs when parsing.
    "lit_ordering_bool":        (SCIM2, "RFC: gt/ge/lt/le on booleans SHALL be invalidFilter; idhub checks early"),
    "lit_ordering_null":        (SCIM2, "gt/ge/lt/le with null have no meaning; idhub refuses when parsing"),
    "lit_substring_number":     (SCIM2, "co/sw/ew are substring matches (RFC Table 3); idhub needs a string"),
    "lit_substring_null":       (SCIM2, "co/sw/ew are substring matches (RFC Table 3); idhub needs a string"),
    # Strings: both decode JSON (RFC 8259 §7); idhub also refuses values no backend can store.
    "str_lone_surrogate":       (SCIM2, "valid JSON, not UTF-8 (RFC 8259 §8.2); idhub cannot store it"),
    "str_nul_escape":           (SCIM2, "valid JSON; idhub refuses NUL (PostgreSQL text cannot hold it)"),
    # Names.
    "vp_urn_inside":            (SCIM2, "RFC valFilter admits any attrPath; idhub: [] holds sub-attribute names"),
    "vp_sub_attr_inside":       (SCIM2, "RFC valFilter admits a.b; sub-attributes have none (RFC 7643 §2.3.8)"),
    "dollar_other_name":        (SCIM2, "RFC ATTRNAME has no $; idhub allows $ref only (RFC 7643 §2.3.7)"),
    "attr_named_not":           (IDHUB, "RFC: 'not' is an ATTRNAME, a keyword only before '('; lark lexes it"),
    "urn_nid_starts_with_dash": (IDHUB, "not deliberate: RFC 8141 NIDs start alphanumeric; query.py refuses it"),
}
# fmt: on

Normal = tuple[Any, ...]


def _value(value: object) -> Normal:
    """Tag a compValue with its JSON type, so ``1``, ``1.0`` and ``true`` stay apart (``True == 1`` in Python)."""
    kinds = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}
    return (kinds.get(type(value), repr(type(value))), value)


def _flatten(op: str, terms: list[Normal]) -> Normal:
    """Build ``(op, term, ...)`` with nested terms of the same op spliced in: both and/or are associative."""
    flat: list[Normal] = []
    for term in terms:
        flat.extend(term[1:] if term[0] == op else [term])
    return (op, *flat)


def _idhub_path(path: AttrPath) -> Normal:
    """Return ``(urn, attr, sub)`` for an idhub attribute path."""
    return (path.urn, path.attr, path.sub)


def idhub_normal(expr: Expr) -> Normal:
    """Return idhub's tree in the neutral form."""
    if isinstance(expr, And | Or):
        op = "and" if isinstance(expr, And) else "or"
        return _flatten(op, [idhub_normal(expr.left), idhub_normal(expr.right)])
    if isinstance(expr, Not):
        return ("not", idhub_normal(expr.expr))
    if isinstance(expr, ValuePath):
        return ("valuePath", _idhub_path(expr.path), None, idhub_normal(expr.filter))
    if isinstance(expr, Present):
        return ("pr", _idhub_path(expr.path))
    assert isinstance(expr, Compare)
    return (expr.op.lower(), _idhub_path(expr.path), _value(expr.value))


def _scim2_path(path: s2.AttrPath) -> Normal:
    """Return ``(urn, attr, sub)`` for a scim2-models attribute path."""
    return (path.uri, path.attr, path.sub_attr)


def scim2_normal(node: s2.FilterNode) -> Normal:
    """Return scim2-models' tree in the neutral form."""
    if isinstance(node, s2.LogicalExpr):
        op = str(node.op.value).lower()
        return _flatten(op, [scim2_normal(term) for term in node.terms])
    if isinstance(node, s2.Not):
        return ("not", scim2_normal(node.expr))
    if isinstance(node, s2.ValuePath):
        return ("valuePath", _scim2_path(node.attr_path), node.sub_attr, scim2_normal(node.val_filter))
    if isinstance(node, s2.Present):
        return ("pr", _scim2_path(node.attr_path))
    assert isinstance(node, s2.Comparison), node
    return (str(node.op.value).lower(), _scim2_path(node.attr_path), _value(node.value))


def idhub_outcome(text: str) -> Normal | None:
    """Return idhub's neutral tree for ``text``, or None when it rejects it (invalidFilter)."""
    try:
        return idhub_normal(idhub_parse_filter(text))
    except InvalidFilter:
        return None


def scim2_outcome(text: str) -> Normal | None:
    """Return scim2-models' neutral tree for ``text``, or None when it rejects it."""
    try:
        return scim2_normal(scim2_parse_filter(text))
    except InvalidFilterException:
        return None


def _params() -> list[Any]:
    """Return the corpus as pytest params named after each case."""
    return [pytest.param(case, id=case.name) for case in CORPUS]


@pytest.mark.parametrize("case", _params())
def test_parsers_same_filter_agree_or_differ_as_listed(case: Case) -> None:
    ours, theirs = idhub_outcome(case.text), scim2_outcome(case.text)
    known = KNOWN_DIFFERENCES.get(case.name)
    if known is None:
        assert ours == theirs, f"parsers disagree on {case.text[:200]!r}: idhub {ours}, scim2-models {theirs}"
        return
    side, reason = known
    if side == "idhub only":
        observed = ours is not None and theirs is None
    elif side == "scim2-models only":
        observed = ours is None and theirs is not None
    else:
        observed = ours is not None and theirs is not None and ours != theirs
    assert observed, f"known difference ({side}: {reason}) no longer holds: idhub {ours}, scim2-models {theirs}"


def test_corpus_names_are_unique_and_cover_the_known_differences() -> None:
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names))
    assert len(CORPUS) >= 80
    assert set(KNOWN_DIFFERENCES) <= set(names), set(KNOWN_DIFFERENCES) - set(names)


def test_corpus_holds_both_accepted_and_rejected_filters() -> None:
    agreed = [idhub_outcome(case.text) for case in CORPUS if case.name not in KNOWN_DIFFERENCES]
    assert sum(tree is None for tree in agreed) >= 20
    assert sum(tree is not None for tree in agreed) >= 60
