"""Project SCIM responses: RFC 7644 §3.9 ``attributes``/``excludedAttributes`` and RFC 7643 §2.2 ``returned``.

Rules, in order:

* ``schemas`` and attributes whose ``returned`` is ``always`` (``id``) are always in the response; neither
  parameter removes them (RFC 7644 §3.9).
* ``returned: never`` (``password``) is never in a response, even when asked for.
* Without ``attributes`` every ``default`` attribute is returned; ``request`` ones only when named.
* With ``attributes`` only the named ones are returned (plus ``always``). ``name.givenName`` or
  ``emails.value`` return just that sub-attribute; a bare schema URN names all of that schema's attributes.
* ``excludedAttributes`` then removes what it names (whole attributes or single sub-attributes).

Names are case-insensitive (RFC 7643 §2.1) and may be URN-qualified. Names this resource type does not
have are ignored (the RFCs define no error for them and a client asking for ``nickName`` of a Group should
still get an answer).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from idhub.scim.errors import ScimError
from idhub.scim.filter import AttrPath
from idhub.scim.schemas import Attribute, Resource, ResourceType, split_name

_ALL: frozenset[str] = frozenset({"*"})  # the whole attribute, as opposed to a set of sub-attribute names

_Selection = dict[tuple[str, str], frozenset[str]]  # (schema URN, canonical attribute) -> _ALL or sub names


def parse_attribute_list(text: str | None) -> list[str] | None:
    """Split a comma-separated ``attributes``/``excludedAttributes`` value; None when absent or empty."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",")]
    names = [name for name in names if name]
    return names or None


def _add(selection: _Selection, key: tuple[str, str], subs: frozenset[str]) -> None:
    current = selection.get(key)
    if current is _ALL or subs is _ALL:
        selection[key] = _ALL
    else:
        selection[key] = (current or frozenset()) | subs


def _selection(rt: ResourceType, names: list[str]) -> _Selection:
    """Resolve attribute names to canonical (URN, attribute) keys, ignoring names the type does not have."""
    selection: _Selection = {}
    for raw in names:
        name = raw.strip()
        whole = rt.find_schema(name)
        if whole is not None:  # a bare schema URN: every attribute of that schema
            for each in whole.attributes:
                _add(selection, (whole.id, each.name), _ALL)
            continue
        split = split_name(rt, name)
        if split is None:
            continue
        schema, rest = split
        attr_name, _, sub_name = rest.partition(".")
        qualified = len(rest) < len(name)
        try:
            resolved = rt.resolve(AttrPath(schema.id if qualified else None, attr_name, sub_name or None), ScimError)
        except ScimError:
            continue  # a name this resource type does not have
        subs = _ALL if resolved.sub is None else frozenset({resolved.sub.name})
        _add(selection, (resolved.urn, resolved.attribute.name), subs)
    return selection


def _keep_subs(attr: Attribute, value: Any, keep: set[str]) -> Any:
    """Return ``value`` (a complex value or a list of them) with only the sub-attributes in ``keep``."""

    def one(element: Any) -> Any:
        if not isinstance(element, dict):
            return element
        return {k: copy.deepcopy(v) for k, v in element.items() if k in keep}

    if isinstance(value, list):
        elements = [one(e) for e in value]
        return [e for e in elements if e not in ({}, None)] or None
    result = one(value)
    return result or None


def _project_attribute(
    attr: Attribute,
    key: tuple[str, str],
    value: Any,
    requested: _Selection | None,
    excluded: _Selection,
) -> Any:
    """Return the projected value of one attribute, or None when it is left out."""
    if attr.returned == "never":
        return None  # RFC 7643 §2.2: never returned
    # Sub-attributes that may appear at all: never-returned ones are dropped; "request" ones only when named.
    subs = {s.name for s in attr.sub_attributes if s.returned != "never"}
    if attr.returned != "always":
        if requested is not None:
            chosen = requested.get(key)
            if chosen is None:
                return None
            if chosen is not _ALL:
                subs &= set(chosen) | {s.name for s in attr.sub_attributes if s.returned == "always"}
            else:
                subs -= {s.name for s in attr.sub_attributes if s.returned == "request"}
        elif attr.returned == "request":
            return None
        else:
            subs -= {s.name for s in attr.sub_attributes if s.returned == "request"}
        dropped = excluded.get(key)
        if dropped is _ALL:
            return None
        if dropped:
            subs -= {name for name in dropped if (s := attr.sub(name)) is not None and s.returned != "always"}
    if attr.type != "complex":
        return copy.deepcopy(value)
    return _keep_subs(attr, value, subs)


def project(
    rt: ResourceType,
    resource: Mapping[str, Any],
    *,
    attributes: list[str] | None,
    excluded: list[str] | None,
) -> Resource:
    """Return the representation of ``resource`` to send, per ``attributes`` and ``excludedAttributes``."""
    requested = _selection(rt, attributes) if attributes else None
    dropped = _selection(rt, excluded) if excluded else {}
    out: Resource = {}
    for key, value in resource.items():
        if key == "schemas":
            out[key] = list(value) if isinstance(value, list) else value  # always returned (RFC 7643 §3)
            continue
        extension = rt.extension(key)
        if extension is not None:
            if not isinstance(value, dict):
                continue
            part: dict[str, Any] = {}
            for name, sub_value in value.items():
                attr = extension.attribute(name)
                if attr is None:
                    continue
                projected = _project_attribute(attr, (extension.id, attr.name), sub_value, requested, dropped)
                if projected is not None:
                    part[attr.name] = projected
            if part:
                out[extension.id] = part
            continue
        attr = rt.core_attribute(key)
        if attr is None:
            continue  # not in the schema: never leaves the server
        projected = _project_attribute(attr, (rt.schema.id, attr.name), value, requested, dropped)
        if projected is not None:
            out[attr.name] = projected
    return out
