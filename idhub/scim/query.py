"""SCIM filters and ``sortBy`` (RFC 7644 §3.4.2.2, §3.4.2.3) translated to SQLAlchemy expressions over the directory.

Filtering runs in the database, never in Python after loading rows: a list request pages through
``SELECT ... WHERE <filter> ORDER BY <sortBy> LIMIT``, which only SQL can do correctly and cheaply.
The grammar is parsed by our own :mod:`idhub.scim.filter`: it is small, the same tree also serves
PATCH paths and in-memory matching of value filters, owning it lets us bound length and nesting,
and the SCIM filter libraries available either evaluate in memory or emit SQL text for their own
table layout rather than SQLAlchemy expressions over ours. This module only maps the parsed tree.

Mapping. Each resource type has a schema: attribute names (case-insensitive, RFC 7643 §2.1),
optionally URN-qualified, resolve to

* a column of the ``user``/``group`` row (``userName`` -> ``username``, ``name.familyName`` ->
  ``family_name``, enterprise ``department`` -> ``department``, ``meta.created`` -> ``created_at``);
* an element row of a multi-valued attribute: ``emails``, ``phoneNumbers``... are ``user_value``
  rows, ``groups``/``members`` are ``group_member`` rows. A comparison on such an attribute is
  ``EXISTS (SELECT ... WHERE <element belongs to the row> AND <conditions on that element>)``,
  and every condition inside ``attr[...]`` applies to the same element.

Semantics (all predicates are two-valued, so ``not`` is an exact complement):

* String attributes compare case-insensitively (``lower()`` on both sides, or the stored case-folded
  key for ``userName`` and group ``displayName``) except ``id``, ``externalId`` and certificate
  values, which are caseExact (RFC 7643 §2.3.1). ``co``/``sw``/``ew`` are ``LIKE`` with ``%``,
  ``_`` and the escape character escaped; caseExact ones add a substring check because SQLite's
  ``LIKE`` ignores ASCII case. ``gt``/``lt``... order by the database collation. SQLite's
  ``lower()`` only folds ASCII, so non-ASCII case-insensitive matches are exact there.
* ``ne`` is ``attribute absent OR attribute != value``; ``eq null`` is ``IS NULL``, ``ne null`` ``IS NOT NULL``.
  ``pr`` means present and not the empty string (for ``primary``: true, since false is not rendered).
* A multi-valued attribute matches when any element matches (RFC 7644 §3.4.2.2); a resource with no
  element is treated as one whose sub-attributes are all absent, so ``emails ne "x"`` and
  ``emails eq null`` match it. ``emails[...]`` needs an element that matches.
* dateTime values are compared at the precision they are written in: ``meta.lastModified eq
  "2025-01-01T10:00:00.123Z"`` matches the whole millisecond and ``gt`` it means after it. Resources
  show millisecond timestamps, so a client that filters on a value it saw gets that resource for
  ``eq`` and not for ``gt`` (incremental sync does not loop on the same resource).
* ``id``, ``groups.value`` and ``members.value`` compare as the canonical UUID string; a value that
  is not one matches nothing. ``groups`` holds direct and indirect (nested) memberships, as the
  resource shows them (RFC 7643 §4.1.2); ``members`` only direct members, as the group shows them.
* ``sortBy`` on a multi-valued attribute uses the primary element, else the first (RFC 7644 §3.4.2.3);
  case-insensitive strings sort by ``lower()``. Resources without a value sort where the database
  puts NULLs (PostgreSQL: last ascending, first descending, as the RFC asks; SQLite: the reverse),
  unless the caller adds ``nulls_last()``/``nulls_first()``.
* ``password`` is never filterable; unknown attributes, operators that do not apply to the type
  (``gt`` on a boolean, ``co`` on a dateTime) and values of the wrong JSON type raise
  :class:`InvalidFilter`. Values are always bound parameters.
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import Boolean, Integer, String, Uuid, and_, case, false, func, literal, not_, or_, select, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from idhub.scim.errors import InvalidFilter, InvalidPath
from idhub.scim.filter import And, AttrPath, CompareOp, Expr, Not, Or, Present, ValuePath, parse_path
from idhub.scim.schemas import ENTERPRISE_URN, GROUP_URN, USER_URN
from idhub.storage.tables import GROUP_MEMBERS, GROUPS, USER_VALUES, USERS

Kind = Literal["string", "boolean", "datetime", "uuid"]

Value = str | bool | int | float | None
Op = CompareOp | Literal["pr"]


# ------------------------------------------------------------------------------------------------- portable SQL


class _Instr(FunctionElement[int]):
    """``instr(haystack, needle)``: 1-based position of ``needle``, 0 when absent (``strpos`` on PostgreSQL)."""

    type = Integer()
    inherit_cache = True


@compiles(_Instr)
def _compile_instr(element: _Instr, compiler: SQLCompiler, **kw: Any) -> str:
    return f"instr({compiler.process(element.clauses, **kw)})"


@compiles(_Instr, "postgresql")
def _compile_strpos(element: _Instr, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strpos({compiler.process(element.clauses, **kw)})"


class _UuidText(FunctionElement[str]):
    """A UUID column as its canonical lowercase ``8-4-4-4-12`` string."""

    type = String()
    inherit_cache = True


@compiles(_UuidText)
def _compile_uuid_text(element: _UuidText, compiler: SQLCompiler, **kw: Any) -> str:
    # Without a native UUID type SQLAlchemy stores 32 lowercase hex digits.
    x = compiler.process(element.clauses, **kw)
    parts = [f"substr({x}, {start}, {length})" for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))]
    return "(" + " || '-' || ".join(parts) + ")"


@compiles(_UuidText, "postgresql")
def _compile_uuid_text_pg(element: _UuidText, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS TEXT)"


class _HasBigrams(FunctionElement[bool]):
    """``idhub_bigrams(column) @> ARRAY[<bigrams>]`` on PostgreSQL, true elsewhere.

    Added next to a ``LIKE`` on ``username`` so the bigram GIN index (migration 0003) can serve it; the
    ``LIKE`` stays the exact check. Every substring of the column holds the needle's bigrams, so the
    conjunction never drops a match.
    """

    type = Boolean()
    inherit_cache = True


@compiles(_HasBigrams)
def _compile_has_bigrams(element: _HasBigrams, compiler: SQLCompiler, **kw: Any) -> str:
    return "1 = 1"


@compiles(_HasBigrams, "postgresql")
def _compile_has_bigrams_pg(element: _HasBigrams, compiler: SQLCompiler, **kw: Any) -> str:
    column, *grams = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"idhub_bigrams({column}) @> CAST(ARRAY[{', '.join(grams)}] AS TEXT[])"


def _bigrams(needle: str) -> list[str]:
    """Return the distinct two-character substrings of ``needle`` (none below two characters)."""
    return sorted({needle[i : i + 2] for i in range(len(needle) - 1)})


# ------------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True, slots=True)
class _Scalar:
    """A comparable SQL value: a column of the resource or element row, and how SCIM compares it."""

    expr: ColumnElement[Any]
    kind: Kind = "string"
    case_exact: bool = False
    folded: bool = False  # stored case-folded: compare with ``value.casefold()``, no ``lower()``
    bigram_index: bool = False  # substring filters may use the bigram GIN index (``username``, PostgreSQL)
    # ``primary``: unspecified "SHALL be assumed to be false" (RFC 7643 §2.4), so NULL compares as false and
    # only true is "present" (a written false reads back as written, yet means the same as none).
    true_only: bool = False


@dataclass(frozen=True, slots=True)
class _Const:
    """An attribute with the same value on every resource (``meta.resourceType``)."""

    value: str


Leaf = _Scalar | _Const


@dataclass(frozen=True, slots=True)
class _Complex:
    """A singular complex attribute (``name``, ``manager``, ``meta``) stored on the resource row."""

    subs: Mapping[str, Leaf]
    default: str | None = None  # sub-attribute meant when none is written (``manager`` -> ``value``)


@dataclass(frozen=True, slots=True)
class _Multi:
    """A multi-valued attribute whose elements are rows of another table."""

    subs: Mapping[str, _Scalar]
    default: str | None
    exists: Callable[[ColumnElement[bool]], ColumnElement[bool]]  # EXISTS an element satisfying the condition
    first: Callable[[ColumnElement[Any]], ColumnElement[Any]] | None = None  # sort key of the primary/first element


Attr = _Scalar | _Const | _Complex | _Multi


@dataclass(frozen=True, slots=True)
class _Schema:
    """Attributes of one resource type, by lowercase schema URN then lowercase name (core URN first)."""

    attrs: Mapping[str, Mapping[str, Attr]]
    never: frozenset[str] = field(default_factory=frozenset)  # names that exist but are never filterable


def _user_value_multi(attribute: str, subs: Mapping[str, _Scalar], default: str | None) -> _Multi:
    def exists(cond: ColumnElement[bool]) -> ColumnElement[bool]:
        return (
            select(USER_VALUES.c.id)
            .where(USER_VALUES.c.user_id == USERS.c.id, USER_VALUES.c.attribute == attribute, cond)
            .correlate(USERS)
            .exists()
        )

    def first(key: ColumnElement[Any]) -> ColumnElement[Any]:
        # RFC 7644 §3.4.2.3: a multi-valued attribute sorts by its primary value, else its first.
        return (
            select(key)
            .where(USER_VALUES.c.user_id == USERS.c.id, USER_VALUES.c.attribute == attribute)
            .order_by(USER_VALUES.c.primary.desc().nulls_last(), USER_VALUES.c.position, USER_VALUES.c.id)
            .limit(1)
            .correlate(USERS)
            .scalar_subquery()
        )

    return _Multi(subs, default, exists, first)


_ELEMENT_COMMON = {
    "type": _Scalar(USER_VALUES.c.type),
    "primary": _Scalar(USER_VALUES.c.primary, kind="boolean", true_only=True),
}
_PLAIN_ELEMENT = {"value": _Scalar(USER_VALUES.c.value), "display": _Scalar(USER_VALUES.c.display), **_ELEMENT_COMMON}
_CERT_ELEMENT = {**_PLAIN_ELEMENT, "value": _Scalar(USER_VALUES.c.value, case_exact=True)}
_ADDRESS_ELEMENT = {
    "formatted": _Scalar(USER_VALUES.c.formatted),
    "streetaddress": _Scalar(USER_VALUES.c.street_address),
    "locality": _Scalar(USER_VALUES.c.locality),
    "region": _Scalar(USER_VALUES.c.region),
    "postalcode": _Scalar(USER_VALUES.c.postal_code),
    "country": _Scalar(USER_VALUES.c.country),
    **_ELEMENT_COMMON,
}


def _meta(created: ColumnElement[Any], modified: ColumnElement[Any], resource_type: str) -> _Complex:
    return _Complex(
        {
            "created": _Scalar(created, kind="datetime"),
            "lastmodified": _Scalar(modified, kind="datetime"),
            "resourcetype": _Const(resource_type),
        }
    )


def _user_groups(tenant_id: uuid.UUID | None) -> _Multi:
    """``groups``: the user's direct groups and every group containing one of them (RFC 7643 §4.1.2)."""
    direct = GROUP_MEMBERS.alias()
    is_direct = (
        select(direct.c.id)
        .where(direct.c.user_id == USERS.c.id, direct.c.group_id == GROUPS.c.id)
        .correlate(USERS, GROUPS)
        .exists()
    )
    subs = {
        "value": _Scalar(GROUPS.c.id, kind="uuid"),
        "display": _Scalar(GROUPS.c.display_name_key, folded=True),
        "type": _Scalar(case((is_direct, "direct"), else_="indirect")),
    }

    def exists(cond: ColumnElement[bool]) -> ColumnElement[bool]:
        if tenant_id is None:
            raise InvalidFilter("groups cannot be used here")
        # (descendant, ancestor) pairs over the tenant's groups, each group its own ancestor; UNION stops on cycles.
        base = select(GROUPS.c.id.label("descendant"), GROUPS.c.id.label("ancestor")).where(
            GROUPS.c.tenant_id == tenant_id
        )
        tree = base.cte(recursive=True, nesting=True)
        link = GROUP_MEMBERS.alias()
        tree = tree.union(
            select(tree.c.descendant, link.c.group_id).join(link, link.c.member_group_id == tree.c.ancestor)
        )
        return (
            select(GROUP_MEMBERS.c.id)
            .join(tree, tree.c.descendant == GROUP_MEMBERS.c.group_id)
            .join(GROUPS, GROUPS.c.id == tree.c.ancestor)
            .where(GROUP_MEMBERS.c.user_id == USERS.c.id, cond)
            .correlate(USERS)
            .exists()
        )

    return _Multi(subs, "value", exists)


@lru_cache(maxsize=256)
def _user_schema(tenant_id: uuid.UUID | None) -> _Schema:
    """Return the user schema; built once per tenant (the ``groups`` tree is scoped to it), then reused."""
    multi = {
        name.lower(): _user_value_multi(name, _PLAIN_ELEMENT, "value")
        for name in ("emails", "phoneNumbers", "ims", "photos", "entitlements", "roles")
    }
    multi["x509certificates"] = _user_value_multi("x509Certificates", _CERT_ELEMENT, "value")
    multi["addresses"] = _user_value_multi("addresses", _ADDRESS_ELEMENT, None)
    core: dict[str, Attr] = {
        "id": _Scalar(USERS.c.id, kind="uuid"),
        "externalid": _Scalar(USERS.c.external_id, case_exact=True),
        "username": _Scalar(USERS.c.username, folded=True, bigram_index=True),
        "name": _Complex(
            {
                "formatted": _Scalar(USERS.c.name),
                "familyname": _Scalar(USERS.c.family_name),
                "givenname": _Scalar(USERS.c.given_name),
                "middlename": _Scalar(USERS.c.middle_name),
                "honorificprefix": _Scalar(USERS.c.honorific_prefix),
                "honorificsuffix": _Scalar(USERS.c.honorific_suffix),
            }
        ),
        "displayname": _Scalar(USERS.c.display_name),
        "nickname": _Scalar(USERS.c.nick_name),
        "profileurl": _Scalar(USERS.c.profile_url),
        "title": _Scalar(USERS.c.title),
        "usertype": _Scalar(USERS.c.user_type),
        "preferredlanguage": _Scalar(USERS.c.preferred_language),
        "locale": _Scalar(USERS.c.locale),
        "timezone": _Scalar(USERS.c.timezone),
        "active": _Scalar(USERS.c.enabled, kind="boolean"),
        "meta": _meta(USERS.c.created_at, USERS.c.updated_at, "User"),
        "groups": _user_groups(tenant_id),
        **multi,
    }
    enterprise: dict[str, Attr] = {
        "employeenumber": _Scalar(USERS.c.employee_number),
        "costcenter": _Scalar(USERS.c.cost_center),
        "organization": _Scalar(USERS.c.organization),
        "division": _Scalar(USERS.c.division),
        "department": _Scalar(USERS.c.department),
        "manager": _Complex({"value": _Scalar(USERS.c.manager_id)}, default="value"),
    }
    return _Schema({USER_URN.lower(): core, ENTERPRISE_URN.lower(): enterprise}, frozenset({"password"}))


def _group_members() -> _Multi:
    """``members``: the group's direct members, users or groups (RFC 7643 §4.2)."""
    member_group = GROUPS.alias()
    subs = {
        "value": _Scalar(
            func.coalesce(GROUP_MEMBERS.c.user_id, GROUP_MEMBERS.c.member_group_id, type_=Uuid()), kind="uuid"
        ),
        "type": _Scalar(case((GROUP_MEMBERS.c.user_id.is_not(None), "User"), else_="Group")),
        "display": _Scalar(
            func.coalesce(USERS.c.display_name, USERS.c.user_name, USERS.c.username, member_group.c.display_name)
        ),
    }

    def exists(cond: ColumnElement[bool]) -> ColumnElement[bool]:
        return (
            select(GROUP_MEMBERS.c.id)
            .outerjoin(USERS, USERS.c.id == GROUP_MEMBERS.c.user_id)
            .outerjoin(member_group, member_group.c.id == GROUP_MEMBERS.c.member_group_id)
            .where(GROUP_MEMBERS.c.group_id == GROUPS.c.id, cond)
            .correlate(GROUPS)
            .exists()
        )

    return _Multi(subs, "value", exists)


@lru_cache(maxsize=1)
def _group_schema() -> _Schema:
    core: dict[str, Attr] = {
        "id": _Scalar(GROUPS.c.id, kind="uuid"),
        "externalid": _Scalar(GROUPS.c.external_id, case_exact=True),
        "displayname": _Scalar(GROUPS.c.display_name_key, folded=True),
        "members": _group_members(),
        "meta": _meta(GROUPS.c.created_at, GROUPS.c.updated_at, "Group"),
    }
    return _Schema({GROUP_URN.lower(): core})


# ------------------------------------------------------------------------------------------------- resolution


def _lookup(schema: _Schema, path: AttrPath) -> Attr:
    name = path.attr.lower()
    if path.urn is None:
        tables = list(schema.attrs.values())  # unqualified names may also name extension attributes
    else:
        table = schema.attrs.get(path.urn.lower())
        if table is None:
            raise InvalidFilter(f"unknown schema {path.urn!r}")
        tables = [table]
    for table in tables:
        if name in table:
            return table[name]
    if name in schema.never:
        raise InvalidFilter(f"{path.attr!r} cannot be used in a filter")
    raise InvalidFilter(f"unknown attribute {path.attr!r}")


def _resolve(schema: _Schema, path: AttrPath) -> tuple[Attr, Leaf | None]:
    """Return the attribute ``path`` names and its leaf (the sub-attribute, or the default one; None if neither)."""
    attr = _lookup(schema, path)
    if isinstance(attr, _Scalar | _Const):
        if path.sub is not None:
            raise InvalidFilter(f"{path.attr!r} has no sub-attributes")
        return attr, attr
    if path.sub is None:
        return attr, None if attr.default is None else attr.subs[attr.default]
    sub = attr.subs.get(path.sub.lower())
    if sub is None:
        raise InvalidFilter(f"unknown sub-attribute {path.attr}.{path.sub}")
    return attr, sub


# ------------------------------------------------------------------------------------------------- predicates


_DATETIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))?"
)


def _parse_datetime(value: Value) -> tuple[datetime, datetime]:
    """Return the instants ``[start, end)`` an xsd:dateTime (RFC 7643 §2.3.5) stands for at its written precision."""
    match = _DATETIME_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidFilter("dateTime values must be strings like 2025-01-31T12:00:00Z")
    year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = match.groups()
    fraction = fraction or ""
    tz = UTC  # a value without an offset is taken as UTC
    if sign:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-offset if sign == "-" else offset)
    try:
        when = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int(fraction[:6].ljust(6, "0")), tzinfo=tz,
        ).astimezone(UTC)  # fmt: skip
        return when, when + timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
    except (ValueError, OverflowError) as exc:
        raise InvalidFilter("invalid dateTime value") from exc


def _invalid_op(op: Op, what: str) -> InvalidFilter:
    return InvalidFilter(f"operator {op!r} does not apply to {what}")


def _const_compare(const: _Const, op: CompareOp, value: Value) -> ColumnElement[bool]:
    if value is None and op in ("eq", "ne"):
        return false() if op == "eq" else true()
    if not isinstance(value, str):
        raise InvalidFilter("this attribute takes a string value")
    c = const.value  # caseExact (RFC 7643 §3.1 meta.resourceType)
    results = {
        "eq": c == value,
        "ne": c != value,
        "co": value in c,
        "sw": c.startswith(value),
        "ew": c.endswith(value),
        "gt": c > value,
        "ge": c >= value,
        "lt": c < value,
        "le": c <= value,
    }
    return true() if results[op] else false()


def _null_compare(col: ColumnElement[Any], op: CompareOp) -> ColumnElement[bool]:
    if op == "eq":
        return col.is_(None)
    if op == "ne":
        return col.is_not(None)
    raise InvalidFilter(f"operator {op!r} cannot compare with null")


def _exact_substring(col: ColumnElement[Any], op: CompareOp, value: str) -> ColumnElement[bool]:
    """Check ``co``/``sw``/``ew`` case-sensitively (SQLite's ``LIKE`` folds ASCII case)."""
    if op == "co":
        return _Instr(col, value) > 0
    if op == "sw":
        return func.substr(col, 1, len(value)) == value
    return and_(func.length(col) >= len(value), func.substr(col, func.length(col) - len(value) + 1) == value)


_ORDERING = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def _string_compare(target: _Scalar, col: ColumnElement[Any], op: CompareOp, value: str) -> ColumnElement[bool]:
    lhs: ColumnElement[Any]
    exact = target.case_exact or target.kind == "uuid"
    if target.folded:
        lhs, value = col, value.casefold()
    elif exact:
        lhs = col
    else:
        lhs, value = func.lower(col, type_=String()), value.lower()
    if op == "ne":
        return or_(col.is_(None), lhs != value)
    pred: ColumnElement[bool]
    if op == "eq":
        pred = lhs == value
    elif op in ("co", "sw", "ew"):
        # RFC 7644 §3.4.2.2 substring operators as LIKE; autoescape escapes %, _ and the escape character.
        if op == "co":
            pred = lhs.contains(value, autoescape=True)
        elif op == "sw":
            pred = lhs.startswith(value, autoescape=True)
        else:
            pred = lhs.endswith(value, autoescape=True)
        if exact:
            pred = and_(pred, _exact_substring(col, op, value))
        # U+0001 separates the indexed bigrams, so a needle holding it is left to the LIKE alone.
        if target.bigram_index and "\x01" not in value and (grams := _bigrams(value)):
            pred = and_(_HasBigrams(col, *(literal(g, String()) for g in grams)), pred)
    else:
        pred = _ORDERING[op](lhs, value)
    # Two-valued for NOT: an absent value fails every comparison (a NOT NULL column is never absent).
    return and_(col.is_not(None), pred) if getattr(col, "nullable", True) else pred


def _compare(target: Leaf, op: CompareOp, value: Value) -> ColumnElement[bool]:
    """Return the two-valued SQL condition ``target op value`` on one row."""
    if isinstance(target, _Const):
        return _const_compare(target, op, value)
    col = target.expr
    if value is None:
        return _null_compare(col, op)
    if target.kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidFilter("this attribute takes a boolean value")
        if op not in ("eq", "ne"):
            raise _invalid_op(op, "booleans")
        if target.true_only:
            return col.is_(True) if (op == "eq") == value else or_(col.is_(None), col.is_not(True))
        return and_(col.is_not(None), col == value) if op == "eq" else or_(col.is_(None), col != value)
    if target.kind == "datetime":
        start, end = _parse_datetime(value)
        if op == "ne":
            return or_(col.is_(None), col < start, col >= end)
        preds: dict[str, Callable[[], ColumnElement[bool]]] = {
            "eq": lambda: and_(col >= start, col < end),
            "gt": lambda: col >= end,
            "ge": lambda: col >= start,
            "lt": lambda: col < start,
            "le": lambda: col < end,
        }
        if op not in preds:
            raise _invalid_op(op, "dateTime attributes")
        return and_(col.is_not(None), preds[op]())
    if not isinstance(value, str):
        raise InvalidFilter("this attribute takes a string value")
    if target.kind == "uuid":
        if op in ("eq", "ne"):
            # Compared as its canonical string: anything else (not a UUID, other spelling) equals no id.
            try:
                parsed: uuid.UUID | None = uuid.UUID(value)
            except ValueError:
                parsed = None
            if parsed is None or str(parsed) != value:
                return false() if op == "eq" else true()
            return and_(col.is_not(None), col == parsed) if op == "eq" else or_(col.is_(None), col != parsed)
        return _string_compare(target, _UuidText(col), op, value)
    return _string_compare(target, col, op, value)


def _present(target: Leaf) -> ColumnElement[bool]:
    """Return the condition "has a non-empty value" (RFC 7644 §3.4.2.2 ``pr``)."""
    if isinstance(target, _Const):
        return true()
    if target.true_only:
        return target.expr.is_(True)
    if target.kind == "string":
        return and_(target.expr.is_not(None), target.expr != "")
    return target.expr.is_not(None)


def _matches_absent(op: CompareOp, value: Value) -> bool:
    """Tell whether ``op value`` holds for an absent value (``ne "x"``, ``eq null``)."""
    return (op == "ne") == (value is not None)


# ------------------------------------------------------------------------------------------------- translation


def _translate(expr: Expr, schema: _Schema) -> ColumnElement[bool]:
    if isinstance(expr, And):
        return and_(_translate(expr.left, schema), _translate(expr.right, schema))
    if isinstance(expr, Or):
        return or_(_translate(expr.left, schema), _translate(expr.right, schema))
    if isinstance(expr, Not):
        return not_(_translate(expr.expr, schema))
    if isinstance(expr, ValuePath):
        return _value_path(expr, schema)
    attr, leaf = _resolve(schema, expr.path)
    if isinstance(expr, Present):
        if expr.path.sub is None and isinstance(attr, _Multi):
            return attr.exists(true())  # any element
        if expr.path.sub is None and isinstance(attr, _Complex):
            return or_(*(_present(sub) for sub in attr.subs.values()))
        assert leaf is not None
        return attr.exists(_present(leaf)) if isinstance(attr, _Multi) else _present(leaf)
    if leaf is None:
        raise InvalidFilter(f"{expr.path.attr!r} needs a sub-attribute")
    if isinstance(attr, _Multi):
        # RFC 7644 §3.4.2.2: a multi-valued attribute matches when any of its values does.
        cond = attr.exists(_compare(leaf, expr.op, expr.value))
        return or_(cond, not_(attr.exists(true()))) if _matches_absent(expr.op, expr.value) else cond
    return _compare(leaf, expr.op, expr.value)


def _value_path(expr: ValuePath, schema: _Schema) -> ColumnElement[bool]:
    """Translate ``attr[filter]``: every condition applies to the same element (RFC 7644 §3.4.2.2)."""
    attr = _lookup(schema, expr.path)
    if expr.path.sub is not None or isinstance(attr, _Scalar | _Const):
        raise InvalidFilter(f"{expr.path.attr!r} is not a complex attribute")
    cond = _element(expr.filter, attr.subs, expr.path.attr)
    return attr.exists(cond) if isinstance(attr, _Multi) else cond


def _element(expr: Expr, subs: Mapping[str, Leaf], parent: str) -> ColumnElement[bool]:
    if isinstance(expr, And):
        return and_(_element(expr.left, subs, parent), _element(expr.right, subs, parent))
    if isinstance(expr, Or):
        return or_(_element(expr.left, subs, parent), _element(expr.right, subs, parent))
    if isinstance(expr, Not):
        return not_(_element(expr.expr, subs, parent))
    if isinstance(expr, ValuePath) or expr.path.urn is not None or expr.path.sub is not None:
        raise InvalidFilter("only sub-attribute names may appear inside brackets")
    leaf = subs.get(expr.path.attr.lower())
    if leaf is None:
        raise InvalidFilter(f"unknown sub-attribute {parent}.{expr.path.attr}")
    if isinstance(expr, Present):
        return _present(leaf)
    return _compare(leaf, expr.op, expr.value)


def _sort(schema: _Schema, sort_by: str) -> ColumnElement[Any]:
    try:
        path = parse_path(sort_by)
    except InvalidPath as exc:
        raise InvalidFilter(f"invalid sortBy: {exc.detail}") from exc
    if path.value_filter is not None or path.sub is not None:
        raise InvalidFilter("sortBy must be an attribute path without a value filter")
    attr, leaf = _resolve(schema, path.attr)
    if leaf is None:
        raise InvalidFilter(f"sortBy {path.attr.attr!r} needs a sub-attribute")  # RFC 7644 §3.4.2.3
    if isinstance(leaf, _Const):
        return literal(leaf.value, String())
    plain = leaf.folded or leaf.case_exact or leaf.kind != "string"
    key = leaf.expr if plain else func.lower(leaf.expr, type_=String())  # case-insensitive order (RFC 7644 §3.4.2.3)
    if isinstance(attr, _Multi):
        if attr.first is None:
            raise InvalidFilter(f"cannot sort by {path.attr.attr!r}")
        return attr.first(key)
    return key


def user_filter(expr: Expr, *, tenant_id: uuid.UUID) -> ColumnElement[bool]:
    """Return the WHERE condition on :class:`User` rows for a parsed filter (the caller adds the tenant)."""
    return _translate(expr, _user_schema(tenant_id))


def group_filter(expr: Expr, *, tenant_id: uuid.UUID) -> ColumnElement[bool]:
    """Return the WHERE condition on :class:`Group` rows for a parsed filter (the caller adds the tenant)."""
    del tenant_id  # members are direct rows of the (tenant-scoped) group; kept for symmetry with user_filter
    return _translate(expr, _group_schema())


def user_sort(sort_by: str) -> ColumnElement[Any]:
    """Return the ORDER BY expression for a user ``sortBy`` (RFC 7644 §3.4.2.3)."""
    return _sort(_user_schema(None), sort_by)


def group_sort(sort_by: str) -> ColumnElement[Any]:
    """Return the ORDER BY expression for a group ``sortBy`` (RFC 7644 §3.4.2.3)."""
    return _sort(_group_schema(), sort_by)
