"""SCIM filters and attribute paths (RFC 7644 §3.4.2.2 grammar, §3.5.2 PATCH ``path``): parsing and in-memory matching.

Behaviour notes:

* Operator, logical and literal keywords are case-insensitive; attribute names are kept as written.
* Tokens are separated by one or more spaces (SP only); leading and trailing spaces are ignored.
* Inside ``[...]`` paths are bare sub-attribute names: no schema URN, no ``a.b``, no nested ``[...]``.
* ``gt``/``ge``/``lt``/``le`` with ``true``/``false``/``null`` and ``co``/``sw``/``ew`` with a non-string value
  are rejected when parsing (RFC 7644 §3.4.2.2; invalidFilter).
* and/or chains come back as balanced trees (``a and b and c`` is ``And(And(a, b), c)``).
* In filters (not PATCH paths) Microsoft Entra ID's ``emails[type eq "work"].value eq "x"`` is accepted: a valuePath
  followed, with no space, by ``.subAttr`` and ``pr`` or ``compareOp compValue``. It means one element matching both
  and is built as ``ValuePath(emails, And(type eq "work", value eq "x"))``, the reading scim2-models also gives it.
* :func:`matches`: a comparison holds when any value of a multi-valued attribute satisfies it; a missing
  attribute satisfies ``ne`` with a non-null value and ``eq null``; strings compare case-insensitively
  (``str.casefold``) unless the attribute's lower-cased name is in ``case_exact``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, assert_never

from idhub.scim.errors import InvalidFilter, InvalidPath

CompareOp = Literal["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"]
MAX_FILTER_LENGTH = 4096
MAX_DEPTH = 16


@dataclass(frozen=True, slots=True)
class AttrPath:
    """``[URI ":"] ATTRNAME ["." subAttr]``; ``urn`` is the schema URN when the path was fully qualified.

    Names are kept as written (attribute names are case-insensitive, RFC 7643 §2.1; resolving them
    against a schema is the caller's job).
    """

    urn: str | None
    attr: str
    sub: str | None = None


@dataclass(frozen=True, slots=True)
class Compare:
    """``attrPath compareOp compValue``; ``value`` is a JSON value: str, bool, int, float or None (null)."""

    path: AttrPath
    op: CompareOp
    value: str | bool | int | float | None


@dataclass(frozen=True, slots=True)
class Present:
    """``attrPath pr``."""

    path: AttrPath


@dataclass(frozen=True, slots=True)
class And:
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Or:
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Not:
    expr: Expr


@dataclass(frozen=True, slots=True)
class ValuePath:
    """``attrPath "[" valFilter "]"``: elements of the multi-valued ``path`` matching ``filter``.

    Inside ``filter`` paths are relative to the element (``AttrPath(urn=None, attr="type")``).
    """

    path: AttrPath
    filter: Expr


Expr = Compare | Present | And | Or | Not | ValuePath


@dataclass(frozen=True, slots=True)
class PatchPath:
    """A PATCH ``path`` (RFC 7644 §3.5.2): ``attrPath`` or ``valuePath ["." subAttr]``.

    ``attr`` is the attribute path (with ``attr.sub`` when the path is ``name.givenName``);
    ``value_filter`` the bracketed filter, if any; ``sub`` the sub-attribute after the brackets
    (``emails[type eq "work"].value`` -> attr=AttrPath(None, "emails"), value_filter=..., sub="value").
    """

    attr: AttrPath
    value_filter: Expr | None = None
    sub: str | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Parsing
#
# Hand-written rather than a library parser. Here input length is capped at MAX_FILTER_LENGTH and nesting at
# MAX_DEPTH before any tree is built, and/or chains are built as balanced trees (neither the parser nor code walking
# the tree can hit RecursionError), and one tree serves filters, PATCH paths (parse_path), in-memory matching
# (matches) and the SQL translation (query.py), so a fix to the grammar reaches all four.
#
# * scim2-filter-parser (its sly lexer upstream; not installed here): strings are ``"[^"]*"`` with no JSON escapes
#   (``"a\"b"`` fails, ``\u00e9`` stays undecoded), a number is one digit, no bound on length or nesting, and it
#   transpiles to SQL text for its own table layout rather than giving a tree query.py could map.
# * scim2-models (0.12.3, scim2_models.path.grammar, a lark LALR grammar): where both accept a filter of the corpus
#   of tests/scim/test_filter_differential.py they build the same tree (Entra's ``emails[...].value eq`` included),
#   but it is 3.3x slower per filter of up to 200 characters (bench/filter_parsers.py: 16.6 vs 54.5 us uncached; its
#   LRU cache only helps a filter seen before), has no length cap (a 100,000-character filter costs it 90 ms, here
#   2 us to refuse), does not count parentheses toward its nesting bound of 32, skips tabs/newlines and missing
#   spaces where RFC 7644 §3.4.2.2 requires SP, accepts NUL and lone surrogates in strings and ``gt true``, and its
#   parser is private (``_parse_filter``) and its n-ary tree is not the one shared here.
#
# Re-check when either library moves: run tests/scim/test_filter_differential.py (its KNOWN_DIFFERENCES table
# fails on any change of behaviour, its import on a moved parser) and bench/filter_parsers.py (speed ratio, the
# 4,096-character and 17-level cases); scim2-models becomes a candidate if it gets a public parser, a length cap
# and RFC whitespace, and is within reach of this parser's speed.
# ---------------------------------------------------------------------------------------------------------------------

_OPS: dict[str, CompareOp] = {
    "eq": "eq",
    "ne": "ne",
    "co": "co",
    "sw": "sw",
    "ew": "ew",
    "gt": "gt",
    "ge": "ge",
    "lt": "lt",
    "le": "le",
}
_OPS_OR_PR = frozenset(_OPS) | {"pr"}
_ORDERING_OPS = frozenset({"gt", "ge", "lt", "le"})
_SUBSTRING_OPS = frozenset({"co", "sw", "ew"})
_LITERALS: dict[str, bool | None] = {"true": True, "false": False, "null": None}

# A token: a JSON string, an "atom" (attribute path, keyword, number or literal) or one of ( ) [ ].
# Only SP separates tokens: tabs, newlines and other control characters outside strings are rejected.
_TOKEN_RE = re.compile(r'(?P<str>"(?:[^"\\]|\\.)*")|(?P<atom>[A-Za-z0-9_.:$+\-]+)|(?P<punct>[()\[\]])', re.DOTALL)
# JSON number (RFC 8259 §6); ASCII digits only.
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# ATTRNAME = ALPHA *(nameChar), plus "$ref" (RFC 7643 §2.3.7 reference sub-attribute).
_NAME = r"(?:[A-Za-z][A-Za-z0-9_\-]*|(?i:\$ref))"
_NAME_RE = re.compile(_NAME)
_PATH_RE = re.compile(rf"({_NAME})(?:\.({_NAME}))?")
_URN_RE = re.compile(r"urn(?::[A-Za-z0-9_.\-]+)+", re.IGNORECASE)
_SHOW_MAX = 32


class _SyntaxError(Exception):
    """Raised inside the parser; the public functions turn it into InvalidFilter or InvalidPath."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "str", "num", "word", "(", ")", "[", "]" or "eof"
    text: str
    pos: int
    spaced: bool  # preceded by a space (or the start of the input)


def _show(text: str) -> str:
    """Quote ``text`` for an error detail, escaping control characters and truncating long input."""
    return repr(text if len(text) <= _SHOW_MAX else text[:_SHOW_MAX] + "...")


def _tokenize(text: str) -> list[_Token]:
    """Split ``text`` into tokens; two word-like tokens must be separated by at least one space."""
    tokens: list[_Token] = []
    pos, spaced, prev_word_like = 0, True, False
    while pos < len(text):
        if text[pos] == " ":
            pos, spaced = pos + 1, True
            continue
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            if text[pos] == '"':
                raise _SyntaxError(f"unterminated string at position {pos}")
            raise _SyntaxError(f"unexpected {_show(text[pos])} at position {pos}")
        kind = m.lastgroup or ""
        tok_text = m.group()
        if kind == "atom":
            kind = "num" if _NUMBER_RE.fullmatch(tok_text) else "word"
        elif kind == "punct":
            kind = tok_text
        word_like = kind in ("str", "num", "word")
        if word_like and prev_word_like and not spaced:  # attrExp and logExp separate their parts with SP
            raise _SyntaxError(f"expected a space before {_show(tok_text)} at position {pos}")
        tokens.append(_Token(kind, tok_text, pos, spaced))
        pos, spaced, prev_word_like = m.end(), False, word_like
    tokens.append(_Token("eof", "", len(text), spaced))
    return tokens


def _decode_string(tok: _Token) -> str:
    """Decode a JSON string token (RFC 7644 §3.4.2.2: compValue string is a JSON string, RFC 8259 §7)."""
    try:
        value = json.loads(tok.text)
    except ValueError:
        raise _SyntaxError(f"invalid string at position {tok.pos}") from None
    if not isinstance(value, str):  # pragma: no cover - the token regex only admits "..."
        raise _SyntaxError(f"invalid string at position {tok.pos}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800"
        raise _SyntaxError(f"invalid string at position {tok.pos}") from None
    if "\x00" in value:  # valid JSON but unstorable (PostgreSQL text cannot hold NUL): never a real value
        raise _SyntaxError(f"NUL character in string at position {tok.pos}")
    return value


def _decode_number(tok: _Token) -> int | float:
    """Decode a JSON number token; integers stay ``int``, anything with a fraction or exponent is ``float``."""
    if any(c in tok.text for c in ".eE"):
        value = float(tok.text)
        if math.isinf(value):
            raise _SyntaxError(f"number out of range at position {tok.pos}")
        return value
    try:
        return int(tok.text)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        raise _SyntaxError(f"number out of range at position {tok.pos}") from None


def _attr_path(tok: _Token, *, relative: bool) -> AttrPath:
    """Parse ``[URI ":"] ATTRNAME *1subAttr`` (RFC 7644 §3.4.2.2); ``relative`` paths are bare sub-attribute names."""
    text, urn = tok.text, None
    if text[:4].lower() == "urn:":
        if relative:  # inside "[...]" paths name sub-attributes of the element
            raise _SyntaxError(f"schema URN not allowed inside brackets at position {tok.pos}")
        # The URN is everything before the last ':'; attribute names never contain ':'.
        urn, _, text = text.rpartition(":")
        if not _URN_RE.fullmatch(urn):
            raise _SyntaxError(f"invalid attribute path {_show(tok.text)} at position {tok.pos}")
    m = _PATH_RE.fullmatch(text)
    if m is None:
        raise _SyntaxError(f"invalid attribute path {_show(tok.text)} at position {tok.pos}")
    if relative and m.group(2) is not None:  # sub-attributes have no sub-attributes (RFC 7643 §2.3.8)
        raise _SyntaxError(f"sub-attribute path not allowed inside brackets at position {tok.pos}")
    return AttrPath(urn, m.group(1), m.group(2))


def _balanced(make: Callable[[Expr, Expr], Expr], terms: list[Expr]) -> Expr:
    """Join ``terms`` with ``make`` as a balanced tree (same meaning as a left fold, logarithmic depth)."""
    if len(terms) == 1:
        return terms[0]
    mid = (len(terms) + 1) // 2
    return make(_balanced(make, terms[:mid]), _balanced(make, terms[mid:]))


class _Parser:
    """Recursive-descent parser over the token list; ``noun`` names the input in error details."""

    def __init__(self, text: str, noun: str) -> None:
        if not isinstance(text, str):
            raise _SyntaxError(f"{noun} must be a string")
        if len(text) > MAX_FILTER_LENGTH:
            raise _SyntaxError(f"{noun} longer than {MAX_FILTER_LENGTH} characters")
        self.noun = noun
        self.tokens = _tokenize(text)
        if self.tokens[0].kind == "eof":
            raise _SyntaxError(f"empty {noun}")
        self.index = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> _Token:
        """Return the token ``ahead`` positions on without consuming anything."""
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        """Consume and return the next token (``eof`` is never consumed)."""
        tok = self.tokens[self.index]
        if tok.kind != "eof":
            self.index += 1
        return tok

    def unexpected(self, tok: _Token) -> _SyntaxError:
        """Build the error for a token that does not fit here."""
        if tok.kind == "eof":
            return _SyntaxError(f"unexpected end of {self.noun}")
        return _SyntaxError(f"unexpected {_show(tok.text)} at position {tok.pos}")

    def keyword(self, word: str) -> bool:
        """Consume the next token if it is the (case-insensitive) keyword ``word``."""
        tok = self.peek()
        if tok.kind == "word" and tok.text.lower() == word:
            self.index += 1
            return True
        return False

    def enter(self, tok: _Token) -> None:
        """Open one nesting level (parenthesis, ``not (`` or bracket), refusing to go past MAX_DEPTH."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _SyntaxError(f"{self.noun} nested deeper than {MAX_DEPTH} levels at position {tok.pos}")

    def close(self, kind: str) -> None:
        """Consume the closing ``kind`` token of the current level."""
        tok = self.take()
        if tok.kind != kind:
            if tok.kind == "eof":
                raise _SyntaxError(f"missing {kind!r} at end of {self.noun}")
            raise _SyntaxError(f"expected {kind!r} but found {_show(tok.text)} at position {tok.pos}")
        self.depth -= 1

    def end(self) -> None:
        """Require the end of input (trailing garbage is an error)."""
        tok = self.peek()
        if tok.kind != "eof":
            raise self.unexpected(tok)

    # RFC 7644 §3.4.2.2: precedence is grouping/not, then "and", then "or".
    def or_expr(self, inside: bool) -> Expr:
        """Parse ``term *("or" term)``."""
        terms = [self.and_expr(inside)]
        while self.keyword("or"):
            terms.append(self.and_expr(inside))
        return _balanced(Or, terms)

    def and_expr(self, inside: bool) -> Expr:
        """Parse ``factor *("and" factor)``."""
        terms = [self.unary(inside)]
        while self.keyword("and"):
            terms.append(self.unary(inside))
        return _balanced(And, terms)

    def unary(self, inside: bool) -> Expr:
        """Parse ``"(" FILTER ")"``, ``"not" "(" FILTER ")"``, a valuePath or an attrExp."""
        tok = self.peek()
        if tok.kind == "(":
            self.take()
            self.enter(tok)
            expr = self.or_expr(inside)
            self.close(")")
            return expr
        if tok.kind == "word" and tok.text.lower() == "not":
            following = self.peek(1)
            if following.kind == "(":  # "not" always takes a parenthesised filter (Figure 1)
                self.take()
                self.take()
                self.enter(following)
                expr = self.or_expr(inside)
                self.close(")")
                return Not(expr)
            if following.kind != "[" and not (following.kind == "word" and following.text.lower() in _OPS_OR_PR):
                raise _SyntaxError(f"expected '(' after 'not' at position {following.pos}")
        return self.attr_exp(inside)

    def attr_exp(self, inside: bool) -> Expr:
        """Parse ``attrPath "pr"``, ``attrPath compareOp compValue`` or ``attrPath "[" valFilter "]"``."""
        tok = self.take()
        if tok.kind != "word":
            raise self.unexpected(tok)
        path = _attr_path(tok, relative=inside)
        nxt = self.peek()
        if nxt.kind == "[" and not nxt.spaced:
            if inside:  # valFilter has no valuePath alternative (Figure 1)
                raise _SyntaxError(f"nested value filter at position {nxt.pos}")
            expr = self.value_filter(path)
            dot = self.peek()
            if dot.kind == "word" and not dot.spaced and dot.text.startswith("."):
                # Entra ID's valuePath "." subAttr (pr / compareOp compValue): not in Figure 1, which gives a
                # filter's valuePath no subAttr. The same element must satisfy both, so it joins the brackets.
                return ValuePath(path, And(expr, self.element_exp(dot)))
            return ValuePath(path, expr)
        return self.operation(path, tok)

    def element_exp(self, dot: _Token) -> Expr:
        """Parse Entra ID's ``"." subAttr`` and its operation after ``attrPath "[" valFilter "]"`` in a filter."""
        self.take()
        name = dot.text[1:]
        if not _NAME_RE.fullmatch(name):  # one bare sub-attribute name: no URN, no "a.b" (RFC 7643 §2.3.8)
            raise _SyntaxError(f"invalid sub-attribute {_show(dot.text)} at position {dot.pos}")
        nxt = self.peek()
        if nxt.kind == "[" and not nxt.spaced:  # valuePaths do not nest (Figure 1)
            raise _SyntaxError(f"value filter after a sub-attribute at position {nxt.pos}")
        return self.operation(AttrPath(None, name), dot)

    def operation(self, path: AttrPath, path_tok: _Token) -> Expr:
        """Parse ``"pr"`` or ``compareOp compValue`` after ``path`` (written as ``path_tok``)."""
        nxt = self.peek()
        if nxt.kind == "word":
            op = nxt.text.lower()
            if op == "pr":
                self.take()
                return Present(path)
            if op in _OPS:
                self.take()
                return Compare(path, _OPS[op], self.comp_value(nxt))
        if nxt.kind == "eof":
            raise _SyntaxError(f"missing operator after {_show(path_tok.text)}")
        raise _SyntaxError(f"expected an operator but found {_show(nxt.text)} at position {nxt.pos}")

    def value_filter(self, path: AttrPath) -> Expr:
        """Parse ``"[" valFilter "]"`` after the multi-valued attribute ``path``."""
        bracket = self.take()
        if path.sub is not None:  # only multi-valued attributes take a filter; sub-attributes are never complex
            raise _SyntaxError(f"value filter after a sub-attribute at position {bracket.pos}")
        self.enter(bracket)
        expr = self.or_expr(inside=True)
        self.close("]")
        return expr

    def comp_value(self, op_tok: _Token) -> str | bool | int | float | None:
        """Parse ``compValue = false / null / true / number / string`` and check it suits the operator."""
        tok = self.take()
        value: str | bool | int | float | None
        if tok.kind == "str":
            value = _decode_string(tok)
        elif tok.kind == "num":
            value = _decode_number(tok)
        elif tok.kind == "word" and tok.text.lower() in _LITERALS:
            value = _LITERALS[tok.text.lower()]
        elif tok.kind == "eof":
            raise _SyntaxError(f"missing value after {_show(op_tok.text)} at position {op_tok.pos}")
        else:
            raise _SyntaxError(f"invalid value {_show(tok.text)} at position {tok.pos} (strings must be quoted)")
        _check_operand(op_tok.text.lower(), value, _SyntaxError, f" at position {tok.pos}")
        return value


def _check_operand(op: str, value: object, error: Callable[[str], Exception], where: str = "") -> None:
    """Refuse operator/value pairs that can never be evaluated (RFC 7644 §3.4.2.2: gt/ge/lt/le on booleans)."""
    if op in _ORDERING_OPS and (value is None or isinstance(value, bool)):
        raise error(f"{op!r} cannot compare with {json.dumps(value)}{where}")
    if op in _SUBSTRING_OPS and not isinstance(value, str):
        raise error(f"{op!r} needs a string value{where}")


def parse_filter(text: str) -> Expr:
    """Parse a filter; raise :class:`idhub.scim.errors.InvalidFilter` for anything not in the grammar."""
    try:
        parser = _Parser(text, "filter")
        expr = parser.or_expr(inside=False)
        parser.end()
    except _SyntaxError as exc:
        raise InvalidFilter(str(exc)) from None
    return expr


def parse_path(text: str) -> PatchPath:
    """Parse a PATCH path; raise :class:`idhub.scim.errors.InvalidPath` when malformed."""
    # RFC 7644 §3.5.2 (Figure 7): PATH = attrPath / valuePath [subAttr]
    try:
        parser = _Parser(text, "path")
        tok = parser.take()
        if tok.kind != "word":
            raise parser.unexpected(tok)
        attr = _attr_path(tok, relative=False)
        value_filter: Expr | None = None
        sub: str | None = None
        nxt = parser.peek()
        if nxt.kind == "[" and not nxt.spaced:
            value_filter = parser.value_filter(attr)
            nxt = parser.peek()
            if nxt.kind == "word" and not nxt.spaced and nxt.text.startswith("."):
                if not _NAME_RE.fullmatch(nxt.text[1:]):
                    raise _SyntaxError(f"invalid sub-attribute {_show(nxt.text)} at position {nxt.pos}")
                sub = nxt.text[1:]
                parser.take()
        parser.end()
    except _SyntaxError as exc:
        raise InvalidPath(str(exc)) from None
    return PatchPath(attr, value_filter, sub)


# ---------------------------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------------------------


def matches(expr: Expr, element: Any, *, case_exact: frozenset[str] = frozenset()) -> bool:
    """Evaluate ``expr`` against one JSON object (a multi-valued attribute's element, for PATCH value filters)."""
    return _eval(expr, element, frozenset(name.lower() for name in case_exact))


def _eval(expr: Expr, element: Any, exact: frozenset[str]) -> bool:
    """Evaluate ``expr`` against ``element``; ``exact`` holds the lower-cased caseExact attribute names."""
    if isinstance(expr, And):
        return _eval(expr.left, element, exact) and _eval(expr.right, element, exact)
    if isinstance(expr, Or):
        return _eval(expr.left, element, exact) or _eval(expr.right, element, exact)
    if isinstance(expr, Not):
        return not _eval(expr.expr, element, exact)
    if isinstance(expr, Present):
        return any(_present(v) for v in _values(expr.path, element))
    if isinstance(expr, ValuePath):
        return any(_eval(expr.filter, item, exact) for item in _values(expr.path, element))
    if isinstance(expr, Compare):
        return _compare(expr, element, exact)
    assert_never(expr)


def _lookup(obj: dict[Any, Any], name: str) -> Any:
    """Return ``obj[name]`` matching the key case-insensitively (RFC 7643 §2.1), or None."""
    if name in obj:
        return obj[name]
    folded = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == folded:
            return value
    return None


def _flatten(value: Any) -> list[Any]:
    """Return the non-null values of a single or multi-valued attribute value."""
    if value is None:
        return []
    if isinstance(value, list):
        return [v for v in value if v is not None]
    return [value]


def _values(path: AttrPath, element: Any) -> list[Any]:
    """Resolve ``path`` in ``element`` and return its values (several when an attribute is multi-valued)."""
    if not isinstance(element, dict):
        # A scalar element (e.g. a member given as a bare id) is its own "value" sub-attribute.
        if path.urn is None and path.sub is None and path.attr.lower() == "value":
            return _flatten(element)
        return []
    base = element
    if path.urn is not None:
        # An extension's attributes sit under its URN key; core schema attributes sit at the top level.
        extension = _lookup(element, path.urn)
        if isinstance(extension, dict):
            base = extension
    values = _flatten(_lookup(base, path.attr))
    if path.sub is not None:
        values = [v for item in values if isinstance(item, dict) for v in _flatten(_lookup(item, path.sub))]
    return values


def _present(value: Any) -> bool:
    """Tell whether ``value`` counts as assigned (RFC 7643 §2.5: null, "" and [] are unassigned)."""
    return not (value is None or (isinstance(value, str | list | dict) and len(value) == 0))


def _is_number(value: Any) -> bool:
    """Tell whether ``value`` is a JSON number (bool is not, NaN is not comparable)."""
    if isinstance(value, float):
        return not math.isnan(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _equal(value: Any, literal: str | bool | int | float, fold: bool) -> bool:
    """Compare one attribute value with a non-null literal for ``eq``; different JSON types are never equal."""
    if isinstance(literal, bool):
        return isinstance(value, bool) and value is literal
    if isinstance(literal, str):
        if not isinstance(value, str):
            return False
        return value.casefold() == literal.casefold() if fold else value == literal
    return _is_number(value) and value == literal


def _order(value: Any, literal: str | int | float, fold: bool) -> int | None:
    """Return -1/0/1 comparing ``value`` with ``literal``, or None when they are not comparable."""
    if isinstance(literal, str):
        if not isinstance(value, str):
            return None
        a, b = (value.casefold(), literal.casefold()) if fold else (value, literal)
        return (a > b) - (a < b)
    if not _is_number(value):
        return None
    number: float = value
    return (number > literal) - (number < literal)


def _compare(expr: Compare, element: Any, exact: frozenset[str]) -> bool:
    """Evaluate ``attrPath compareOp compValue``: true when any value of the attribute satisfies it."""
    op, literal = expr.op, expr.value
    _check_operand(op, literal, InvalidFilter)
    # A complex value compared without a sub-attribute is compared by its "value" sub-attribute.
    values = [_lookup(v, "value") if isinstance(v, dict) else v for v in _values(expr.path, element)]
    values = [v for v in values if v is not None]
    if literal is None:  # "eq null" is "not present", "ne null" is "present"
        present = any(_present(v) for v in values)
        return present if op == "ne" else not present
    # String comparisons follow the attribute's caseExact (RFC 7643 §2.3.1, §7); default case-insensitive.
    fold = (expr.path.sub or expr.path.attr).lower() not in exact
    if op == "eq":
        return any(_equal(v, literal, fold) for v in values)
    if op == "ne":
        # No value at all is "not identical" to a non-null literal; otherwise any differing value matches.
        return not values or any(not _equal(v, literal, fold) for v in values)
    if isinstance(literal, str) and op in _SUBSTRING_OPS:
        needle = literal.casefold() if fold else literal
        for v in values:
            if isinstance(v, str):
                hay = v.casefold() if fold else v
                if (op == "co" and needle in hay) or (op == "sw" and hay.startswith(needle)):
                    return True
                if op == "ew" and hay.endswith(needle):
                    return True
        return False
    if isinstance(literal, bool):  # pragma: no cover - _check_operand refused it
        return False
    for v in values:
        cmp = _order(v, literal, fold)
        if cmp is not None and (
            (op == "gt" and cmp > 0)
            or (op == "ge" and cmp >= 0)
            or (op == "lt" and cmp < 0)
            or (op == "le" and cmp <= 0)
        ):
            return True
    return False
