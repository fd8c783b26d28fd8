"""Declarative mapping rules per upstream: what an upstream's claims or SAML attributes make of a person.

An operator writes the rules as JSON (``idhub idp create|update --mapping-file F``); they are stored in
the upstream's ``config["mapping"]`` and parsed strictly here (unknown keys, bad regexes, too many rules
and over-long templates are refused with :class:`~idhub.errors.Invalid`). :func:`apply` turns one
:class:`~idhub.broker.connector.Identity` into a :class:`MappedProfile` with no I/O; linking and the
sign-in sync then write it through the directory.

Rule kinds:

* ``attribute``: a source value -> one user attribute of :data:`TARGETS`, optionally through
  ``regex`` + ``replace`` (the whole value must match; ``\\1`` and ``\\g<name>`` refer to groups), or a
  ``template`` such as ``"{given_name}.{family_name}"``;
* ``group``: every value of a source -> a group's displayName: the value itself, the values that
  fully match ``match`` (renamed by ``replace`` when given), or the fixed ``group`` when a value equals
  ``value``;
* ``constant``: a fixed ``value`` for a ``target`` attribute, or a fixed ``group``.

A source is exactly one of ``claim`` (a top-level claim name, or a list of names for a nested path),
``saml_attribute`` (a SAML attribute by name) and ``field`` (what the connector normalised: ``email``,
``name``, ``given_name``, ``family_name``, ``username``, ``subject``, ``groups``).

Regexes run on upstream input, so they are bounded: patterns of at most 200 characters with no
backreferences, no quantified group that itself holds a quantifier or an alternation (the shapes that
backtrack exponentially), at most three unbounded quantifiers, full matches only, and input values
longer than 256 characters are skipped, never matched.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from idhub.broker.connector import Identity
from idhub.directory.profile import UserProfile, ValueRecord
from idhub.errors import Invalid

MAX_RULES = 64
MAX_PATTERN = 200
MAX_TEMPLATE = 256
MAX_PLACEHOLDERS = 8
MAX_INPUT = 256  # longer upstream values are skipped: they never reach a regex
MAX_VALUES = 200  # values of one source considered (group claims can be long lists)
MAX_GROUPS = 100  # groups one sign-in may name
MAX_UNBOUNDED = 3
MAX_DOCUMENT = 64_000

# Target attribute -> (UserProfile field, longest value stored). ``email`` is the primary work email.
TARGETS: dict[str, tuple[str, int]] = {
    "userName": ("user_name", 255),
    "displayName": ("display_name", 255),
    "formattedName": ("name", 255),
    "givenName": ("given_name", 255),
    "familyName": ("family_name", 255),
    "middleName": ("middle_name", 255),
    "honorificPrefix": ("honorific_prefix", 255),
    "honorificSuffix": ("honorific_suffix", 255),
    "nickName": ("nick_name", 255),
    "email": ("email", 320),
    "externalId": ("external_id", 255),
    "title": ("title", 255),
    "userType": ("user_type", 255),
    "department": ("department", 255),
    "division": ("division", 255),
    "organization": ("organization", 255),
    "costCenter": ("cost_center", 255),
    "employeeNumber": ("employee_number", 255),
    "preferredLanguage": ("preferred_language", 255),
    "locale": ("locale", 255),
    "timezone": ("timezone", 255),
    "profileUrl": ("profile_url", 1024),
}
FIELDS = ("email", "name", "given_name", "family_name", "username", "subject", "groups")
# The OIDC claim each normalised field is read from (the OIDC connector's Identity).
FIELD_CLAIMS = {"email": "email", "name": "name", "given_name": "given_name", "family_name": "family_name",
                "username": "preferred_username", "subject": "sub", "groups": "groups"}  # fmt: skip
_SOURCE_KEYS = ("claim", "saml_attribute", "field")
_ALLOWED_KEYS: dict[str, frozenset[str]] = {
    "attribute": frozenset({"kind", "target", *_SOURCE_KEYS, "regex", "replace", "template"}),
    "group": frozenset({"kind", *_SOURCE_KEYS, "match", "replace", "value", "group"}),
    "constant": frozenset({"kind", "target", "group", "value"}),
}
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_.:/#-]{1,128})\}|\{[^{}]*\}?|\}|[^{}]+")
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
_REPLACE_REF = re.compile(r"\\(?:g<([^>]*)>|(\d{1,2})|(.)|$)", re.DOTALL)

Kind = Literal["attribute", "group", "constant"]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a rule reads its values: a claim path, a SAML attribute, or a normalised identity field."""

    claim: tuple[str, ...] | None = None
    saml_attribute: str | None = None
    field: str | None = None

    def values(self, identity: Identity) -> list[str]:
        """Return the source's values in ``identity`` as strings (lists flattened, at most MAX_VALUES)."""
        raw: object
        if self.field is not None:
            raw = list(identity.groups) if self.field == "groups" else getattr(identity, self.field)
        elif self.saml_attribute is not None:
            attributes = identity.claims.get("attributes")
            raw = attributes.get(self.saml_attribute) if isinstance(attributes, Mapping) else None
        else:
            raw = identity.claims
            for step in self.claim or ():
                raw = raw.get(step) if isinstance(raw, Mapping) else None
        return list(_strings(raw))[:MAX_VALUES]

    def describe(self) -> dict[str, Any]:
        """Return the source as it is written in JSON."""
        if self.field is not None:
            return {"field": self.field}
        if self.saml_attribute is not None:
            return {"saml_attribute": self.saml_attribute}
        path = self.claim or ()
        return {"claim": path[0] if len(path) == 1 else list(path)}


@dataclass(frozen=True, slots=True)
class Transform:
    """A full-match regex and what a match becomes (``None``: the value itself)."""

    pattern: re.Pattern[str]
    replace: str | None

    def __call__(self, value: str) -> str | None:
        """Return the transformed value, or ``None`` when it does not match (or is too long to try)."""
        if len(value) > MAX_INPUT:
            return None
        found = self.pattern.fullmatch(value)
        if found is None:
            return None
        return value if self.replace is None else found.expand(self.replace)


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``{name}`` placeholders (``{{`` and ``}}`` are literal braces), split once at parse time."""

    text: str
    parts: tuple[tuple[bool, str], ...]  # (is a placeholder, literal text or placeholder name)

    def render(self, identity: Identity) -> str | None:
        """Return the filled-in template, or ``None`` when a placeholder has no value."""
        out: list[str] = []
        for placeholder, text in self.parts:
            if not placeholder:
                out.append(text)
                continue
            value = _lookup(identity, text)
            if value is None:
                return None
            out.append(value)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed mapping rule."""

    kind: Kind
    target: str | None = None  # attribute name (attribute, constant)
    group: str | None = None  # fixed group (group with value, constant)
    value: str | None = None  # constant value, or the value a group rule looks for
    source: Source | None = None
    transform: Transform | None = None
    template: Template | None = None

    def describe(self) -> dict[str, Any]:
        """Return the rule as it is written in JSON (what ``idp show`` prints)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.target is not None:
            out["target"] = self.target
        if self.source is not None:
            out |= self.source.describe()
        if self.template is not None:
            out["template"] = self.template.text
        if self.transform is not None:
            out["regex" if self.kind == "attribute" else "match"] = self.transform.pattern.pattern
            if self.transform.replace is not None:
                out["replace"] = self.transform.replace
        if self.value is not None:
            out["value"] = self.value
        if self.group is not None:
            out["group"] = self.group
        return out


@dataclass(frozen=True, slots=True)
class MappingRules:
    """An upstream's parsed rules.

    ``defaults`` puts :data:`DEFAULT_RULES` before the configured ones (a configured rule for the same
    target wins). ``sync`` writes mapped attributes and groups on every sign-in, not only when a user is
    made just in time. ``configured`` is False for an upstream without a mapping (today's behaviour:
    the defaults, at just-in-time creation only).
    """

    rules: tuple[Rule, ...] = ()
    defaults: bool = True
    sync: bool = True
    configured: bool = False

    def effective(self) -> tuple[Rule, ...]:
        """Return the rules that run, defaults first."""
        return (*DEFAULT_RULES, *self.rules) if self.defaults else self.rules

    def describe(self) -> dict[str, Any]:
        """Return the mapping as it is stored (and accepted back by :func:`parse_mapping`)."""
        return {"defaults": self.defaults, "sync": self.sync, "rules": [rule.describe() for rule in self.rules]}

    def claim_names(self) -> frozenset[str]:
        """Return the top-level upstream claims the rules read (fields by their OIDC claim names)."""
        names: set[str] = set()
        for rule in self.effective():
            source = rule.source
            if source is not None and source.claim:
                names.add(source.claim[0])
            elif source is not None and source.field is not None:
                names.add(FIELD_CLAIMS[source.field])
            if rule.template is not None:
                names.update(FIELD_CLAIMS.get(text, text) for placeholder, text in rule.template.parts if placeholder)
        return frozenset(names)

    @property
    def manages_groups(self) -> bool:
        """Tell whether any rule names groups (only then are memberships synchronised)."""
        return any(rule.kind == "group" or (rule.kind == "constant" and rule.group) for rule in self.effective())


@dataclass(frozen=True, slots=True)
class MappedProfile:
    """What a mapping makes of one identity: user attributes by target name, and group names."""

    attributes: dict[str, str] = field(default_factory=dict)
    groups: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """Return JSON-ready values."""
        return {"attributes": dict(sorted(self.attributes.items())), "groups": list(self.groups)}


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("attribute", target="email", source=Source(field="email")),
    Rule("attribute", target="displayName", source=Source(field="name")),
    Rule("attribute", target="givenName", source=Source(field="given_name")),
    Rule("attribute", target="familyName", source=Source(field="family_name")),
)
NO_MAPPING = MappingRules()


def apply(mapping: MappingRules, identity: Identity) -> MappedProfile:
    """Return the attributes and groups ``mapping`` makes of ``identity`` (later rules win per attribute)."""
    attributes: dict[str, str] = {}
    groups: dict[str, str] = {}  # case-folded -> as first named
    for rule in mapping.effective():
        if rule.kind == "constant":
            if rule.target is not None and rule.value is not None:
                attributes[rule.target] = rule.value
            if rule.group is not None:
                groups.setdefault(rule.group.casefold(), rule.group)
        elif rule.kind == "attribute":
            value = _attribute_value(rule, identity)
            if value is not None and rule.target is not None:
                attributes[rule.target] = value
        else:
            for name in _group_names(rule, identity):
                groups.setdefault(name.casefold(), name)
    return MappedProfile(attributes, tuple(list(groups.values())[:MAX_GROUPS]))


def _attribute_value(rule: Rule, identity: Identity) -> str | None:
    if rule.template is not None:
        value = rule.template.render(identity)
    else:
        assert rule.source is not None
        found = rule.source.values(identity)
        value = found[0] if found else None
        if value is not None and rule.transform is not None:
            value = rule.transform(value)
    value = value.strip() if value is not None else None
    if not value or rule.target is None or len(value) > TARGETS[rule.target][1] or not value.isprintable():
        return None
    return value


def _group_names(rule: Rule, identity: Identity) -> Iterator[str]:
    assert rule.source is not None
    for value in rule.source.values(identity):
        if rule.value is not None:
            name: str | None = rule.group if value == rule.value else None
        elif rule.transform is not None:
            name = rule.transform(value)
        else:
            name = value
        if name is not None:
            name = name.strip()
            if name and len(name) <= 255 and name.isprintable():
                yield name


# -- parsing ------------------------------------------------------------------------------------------


def parse_mapping(document: object) -> MappingRules:
    """Return the mapping described by ``document`` (a JSON object or a list of rules), strictly checked."""
    if isinstance(document, list):
        document = {"rules": document}
    if not isinstance(document, dict):
        raise Invalid('a mapping is a JSON object with "rules" (or a list of rules)')
    _known(document, {"rules", "defaults", "sync"}, "the mapping")
    rules = document.get("rules", [])
    if not isinstance(rules, list):
        raise Invalid('mapping "rules" must be a list')
    if len(rules) > MAX_RULES:
        raise Invalid(f"a mapping has at most {MAX_RULES} rules")
    parsed = tuple(_rule(rule, index) for index, rule in enumerate(rules, 1))
    return MappingRules(
        rules=parsed,
        defaults=_flag(document, "defaults"),
        sync=_flag(document, "sync"),
        configured=True,
    )


def load_mapping(text: str | bytes) -> MappingRules:
    """Parse a mapping file's JSON text."""
    if len(text) > MAX_DOCUMENT:
        raise Invalid(f"a mapping file has at most {MAX_DOCUMENT} bytes")
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"the mapping is not JSON: {str(exc)[:120]}") from None
    return parse_mapping(document)


def mapping_of(config: Mapping[str, Any]) -> MappingRules:
    """Return the mapping stored in an upstream's config (:data:`NO_MAPPING` when none is), parsed once."""
    stored = config.get("mapping")
    if stored is None:
        return NO_MAPPING
    return _parsed(json.dumps(stored, sort_keys=True, separators=(",", ":")))


@functools.lru_cache(maxsize=256)
def _parsed(canonical: str) -> MappingRules:
    """Parse a stored mapping once per distinct content (regexes compiled once, not per sign-in)."""
    return parse_mapping(json.loads(canonical))


def profile_for(mapped: MappedProfile, *, user_name: str) -> UserProfile:
    """Return the directory profile of a new user made from ``mapped`` (``email`` as the primary work email)."""
    columns: dict[str, Any] = {
        TARGETS[target][0]: value for target, value in mapped.attributes.items() if target not in ("userName", "email")
    }
    email = mapped.attributes.get("email")
    values = (ValueRecord(attribute="emails", value=email, type="work", primary=True),) if email else ()
    return UserProfile(user_name=user_name, values=values, **columns)


def _rule(raw: object, index: int) -> Rule:
    where = f"rule {index}"
    if not isinstance(raw, dict):
        raise Invalid(f"{where}: a rule is a JSON object")
    kind = raw.get("kind")
    if kind not in _ALLOWED_KEYS:
        raise Invalid(f'{where}: "kind" is one of attribute, group, constant')
    _known(raw, _ALLOWED_KEYS[kind], where)
    if kind == "constant":
        return _constant(raw, where)
    if kind == "attribute":
        return _attribute(raw, where)
    return _group(raw, where)


def _attribute(raw: dict[str, Any], where: str) -> Rule:
    target = _target(raw, where)
    template = raw.get("template")
    has_source = any(key in raw for key in _SOURCE_KEYS)
    if template is not None:
        if has_source or "regex" in raw or "replace" in raw:
            raise Invalid(f"{where}: a template takes no source, regex or replace")
        return Rule("attribute", target=target, template=_template(template, where))
    source = _source(raw, where)
    transform = _transform(raw, "regex", where)
    if "replace" in raw and transform is None:
        raise Invalid(f'{where}: "replace" needs "regex"')
    return Rule("attribute", target=target, source=source, transform=transform)


def _group(raw: dict[str, Any], where: str) -> Rule:
    source = _source(raw, where)
    if "value" in raw or "group" in raw:
        if "match" in raw or "replace" in raw:
            raise Invalid(f'{where}: a fixed "value" -> "group" rule takes no match or replace')
        return Rule("group", source=source, value=_text(raw, "value", where), group=_group_name(raw, where))
    transform = _transform(raw, "match", where)
    if "replace" in raw and transform is None:
        raise Invalid(f'{where}: "replace" needs "match"')
    return Rule("group", source=source, transform=transform)


def _constant(raw: dict[str, Any], where: str) -> Rule:
    if ("target" in raw) == ("group" in raw):
        raise Invalid(f'{where}: a constant sets exactly one of "target" (with "value") and "group"')
    if "group" in raw:
        if "value" in raw:
            raise Invalid(f'{where}: a constant group takes no "value"')
        return Rule("constant", group=_group_name(raw, where))
    target = _target(raw, where)
    value = _text(raw, "value", where).strip()
    if not value or len(value) > TARGETS[target][1] or not value.isprintable():
        raise Invalid(f'{where}: "value" must be 1-{TARGETS[target][1]} printable characters')
    return Rule("constant", target=target, value=value)


def _source(raw: dict[str, Any], where: str) -> Source:
    given = [key for key in _SOURCE_KEYS if key in raw]
    if len(given) != 1:
        raise Invalid(f'{where}: give exactly one source: "claim", "saml_attribute" or "field"')
    key = given[0]
    value = raw[key]
    if key == "field":
        if value not in FIELDS:
            raise Invalid(f'{where}: "field" is one of {", ".join(FIELDS)}')
        return Source(field=value)
    if key == "saml_attribute":
        return Source(saml_attribute=_name(value, where, key))
    path = [value] if isinstance(value, str) else value
    if not isinstance(path, list) or not 1 <= len(path) <= 8:
        raise Invalid(f'{where}: "claim" is a claim name or a list of 1 to 8 names (a nested path)')
    return Source(claim=tuple(_name(step, where, key) for step in path))


def _target(raw: dict[str, Any], where: str) -> str:
    target = raw.get("target")
    if target not in TARGETS:
        raise Invalid(f'{where}: "target" is one of {", ".join(TARGETS)}')
    assert isinstance(target, str)
    return target


def _template(value: object, where: str) -> Template:
    if not isinstance(value, str) or not value or len(value) > MAX_TEMPLATE:
        raise Invalid(f"{where}: a template is 1-{MAX_TEMPLATE} characters")
    parts: list[tuple[bool, str]] = []
    for token in _TEMPLATE_TOKEN.finditer(value):
        text, name = token.group(0), token.group(1)
        if name is not None:
            parts.append((True, name))
        elif text in ("{{", "}}"):
            parts.append((False, text[0]))
        elif text in ("{", "}") or text.startswith("{"):
            raise Invalid(f"{where}: a placeholder is {{name}} (letters, digits, _ . : / # -); write {{{{ for a brace")
        else:
            parts.append((False, text))
    count = sum(1 for placeholder, _ in parts if placeholder)
    if not 1 <= count <= MAX_PLACEHOLDERS:
        raise Invalid(f"{where}: a template has 1 to {MAX_PLACEHOLDERS} {{placeholders}}")
    return Template(value, tuple(parts))


def _transform(raw: dict[str, Any], key: str, where: str) -> Transform | None:
    pattern = raw.get(key)
    if pattern is None:
        return None
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
        raise Invalid(f'{where}: "{key}" is a regex of 1-{MAX_PATTERN} characters')
    check_safe_regex(pattern, where)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise Invalid(f'{where}: "{key}" is not a valid regex: {exc}') from None
    replace = raw.get("replace")
    if replace is not None:
        if not isinstance(replace, str) or len(replace) > MAX_TEMPLATE:
            raise Invalid(f'{where}: "replace" is a string of at most {MAX_TEMPLATE} characters')
        _check_replace(compiled, replace, where)
    return Transform(compiled, replace)


def _check_replace(pattern: re.Pattern[str], replace: str, where: str) -> None:
    """Refuse a replacement that names a group the regex lacks or uses an unknown escape."""
    for found in _REPLACE_REF.finditer(replace):
        named, number, other = found.groups()
        if named is not None:
            ok = named in pattern.groupindex or (named.isdigit() and int(named) <= pattern.groups)
        elif number is not None:
            ok = int(number) <= pattern.groups
        else:
            ok = other == "\\"
        if not ok:
            raise Invalid(f'{where}: "replace" refers to a group the regex does not have ({found.group(0)!r})')


_BACKREFERENCE = frozenset("123456789gk")
_QUANTIFIER = re.compile(r"\*|\+|\?|\{(\d{1,4})(,(\d{0,4}))?\}")


def check_safe_regex(pattern: str, where: str = "regex") -> None:
    """Refuse regex shapes that backtrack catastrophically (nested or over-many unbounded quantifiers).

    A quantified group may hold no quantifier and no alternation (``(a+)+``, ``(a|aa)*``); at most
    three unbounded quantifiers in all; no backreferences or conditionals. Conservative: some harmless
    patterns are refused too, and a character class does the same job (``[ab]*`` for ``(a|b)*``).
    """
    # stack of [has_quantifier, has_alternation] per open group; index 0 is the whole pattern
    stack: list[list[bool]] = [[False, False]]
    unbounded = 0
    last_group: list[bool] | None = None  # the group that just closed (a quantifier may follow it)
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        closed: list[bool] | None = None
        if char == "\\":
            if pattern[i + 1 : i + 2] in _BACKREFERENCE:
                raise Invalid(f"{where}: backreferences are not allowed")
            i += 2
        elif char == "[":
            i = _class_end(pattern, i, where)
        elif char == "(":
            if pattern.startswith(("(?P=", "(?("), i):
                raise Invalid(f"{where}: backreferences and conditionals are not allowed")
            i, opens = _group_start(pattern, i, where)
            if opens:
                stack.append([False, False])
        elif char == ")":
            if len(stack) == 1:
                raise Invalid(f"{where}: unbalanced parenthesis")
            closed = stack.pop()
            stack[-1][0] |= closed[0]
            stack[-1][1] |= closed[1]
            i += 1
        elif char == "|":
            stack[-1][1] = True
            i += 1
        else:
            found = _QUANTIFIER.match(pattern, i)
            if found is None or found.start() != i:
                i += 1
            else:
                low = int(found.group(1)) if found.group(1) else 0
                high: int | None
                if char in "*+":
                    high = None
                elif char == "?":
                    high = 1
                elif found.group(2) is None:
                    high = low
                else:
                    high = int(found.group(3)) if found.group(3) else None
                repeats = high is None or high > 1
                if high is None or high - low > 16:
                    unbounded += 1
                if repeats and last_group is not None and (last_group[0] or last_group[1]):
                    raise Invalid(
                        f"{where}: a repeated group may not hold a quantifier or '|' (catastrophic backtracking)"
                    )
                stack[-1][0] = True
                i = found.end()
                if i < n and pattern[i] in "?+":  # lazy or possessive suffix
                    i += 1
        last_group = closed
    if unbounded > MAX_UNBOUNDED:
        raise Invalid(f"{where}: at most {MAX_UNBOUNDED} unbounded quantifiers")


def _group_start(pattern: str, start: int, where: str) -> tuple[int, bool]:
    """Return the index after a group's opening syntax, and whether a group opens (not inline flags or a comment)."""
    i = start + 1
    if pattern[i : i + 1] != "?":
        return i, True
    i += 1
    if pattern.startswith("P<", i):
        end = pattern.find(">", i)
        if end < 0:
            raise Invalid(f"{where}: unterminated group name")
        return end + 1, True
    if pattern.startswith(("<=", "<!"), i):
        return i + 2, True
    if pattern[i : i + 1] in (":", "=", "!", ">"):
        return i + 1, True
    if pattern[i : i + 1] == "#":
        end = pattern.find(")", i)
        if end < 0:
            raise Invalid(f"{where}: unterminated comment")
        return end + 1, False
    while i < len(pattern) and (pattern[i].isalpha() or pattern[i] == "-"):
        i += 1
    if pattern[i : i + 1] == ")":
        return i + 1, False  # inline flags for the whole pattern: no group
    return i + 1, True  # (?flags:...)


def _class_end(pattern: str, start: int, where: str) -> int:
    """Return the index after the character class that opens at ``start``."""
    i = start + 1
    if pattern[i : i + 1] == "^":
        i += 1
    if pattern[i : i + 1] == "]":
        i += 1
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i + 1
        i += 1
    raise Invalid(f"{where}: unterminated character class")


def _known(raw: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise Invalid(f"{where}: unknown key {unknown[0][:64]!r}")


def _flag(raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key, True)
    if not isinstance(value, bool):
        raise Invalid(f'mapping "{key}" must be true or false')
    return value


def _name(value: object, where: str, key: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise Invalid(f'{where}: "{key}" names must be 1-256 characters without control characters')
    return value


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value or len(value) > 255:
        raise Invalid(f'{where}: "{key}" is a string of 1-255 characters')
    return value


def _group_name(raw: Mapping[str, Any], where: str) -> str:
    name = _text(raw, "group", where).strip()
    if not name or not name.isprintable():
        raise Invalid(f'{where}: "group" is a group\'s displayName (printable characters)')
    return name


# -- values ---------------------------------------------------------------------------------------------


def _strings(raw: object) -> Iterator[str]:
    """Yield a claim's scalar values as strings (a list's elements, one level deep)."""
    items: Sequence[object] = raw if isinstance(raw, list | tuple) else [raw]
    for item in items[:MAX_VALUES]:
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, str | int | float):
            text = str(item)
            if text:
                yield text


def _lookup(identity: Identity, name: str) -> str | None:
    """Return a template placeholder's value: a normalised field, else a claim, else a SAML attribute."""
    if name in FIELDS and name != "groups":
        value: object = getattr(identity, name)
    else:
        value = identity.claims.get(name)
        if value is None:
            attributes = identity.claims.get("attributes")
            value = attributes.get(name) if isinstance(attributes, Mapping) else None
    found = next(_strings(value), None)
    return found if found is not None and len(found) <= MAX_INPUT else None


def sample_identity(*, issuer: str, protocol: str, sample: Mapping[str, Any]) -> Identity:
    """Return the identity a connector would make of ``sample`` (for ``idhub idp preview``).

    The sample is the upstream's claims as the connector keeps them: OIDC ID token / UserInfo claims;
    for SAML ``{"name_id": ..., "attributes": {name: [values]}}`` plus, optionally, the normalised
    ``email``, ``name``, ``given_name``, ``family_name`` and ``groups`` the connector would find.
    """

    def text(key: str) -> str | None:
        value = sample.get(key)
        return value[:320] if isinstance(value, str) and value else None

    groups = sample.get("groups")
    subject = text("sub") or (text("name_id") if protocol == "saml" else None) or "preview-subject"
    email = text("email")
    return Identity(
        issuer=issuer,
        subject=subject,
        email=email,
        email_verified=bool(email) and sample.get("email_verified") is True,
        name=text("name"),
        given_name=text("given_name"),
        family_name=text("family_name"),
        username=text("preferred_username"),
        groups=tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
        claims=dict(sample),
    )
