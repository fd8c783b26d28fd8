"""SCIM PATCH (RFC 7644 §3.5.2) applied in memory to a full resource dict, all operations or none.

:func:`apply_patch` works on a deep copy and raises on the first failing operation, so the caller's
resource is never touched. The result is not yet normalised: the caller runs
:func:`idhub.scim.schemas.normalise_resource` on it (with the original as ``existing``) before storing it.

Decisions where the RFC leaves a choice, or where real clients need leniency:

* ``op`` is case-insensitive (Microsoft Entra ID sends ``Add``/``Replace``/``Remove``); so are the
  ``Operations``/``op``/``path``/``value`` member names (RFC 7643 §2.1).
* A path-less ``add``/``replace`` value is an object whose keys are each treated as a path: plain names,
  ``name.givenName``, ``emails[type eq "work"].value`` and URN-qualified names (all sent by Entra ID), or an
  extension URN whose value is an object of that extension's attributes. A ``schemas`` key is not an
  attribute: at the top of a pathless value it is ignored; inside an extension object it must name that extension.
* Setting a ``readOnly`` attribute to its current value is a no-op (Okta sends the group's own ``id`` in a
  path-less replace); any other change to a ``readOnly`` attribute, or a change to an ``immutable`` one that
  already has a value, is ``mutability``. ``readOnly`` sub-attributes inside element values
  (``members[].display``) are ignored, as for POST/PUT (RFC 7643 §2.2).
* Removing a required attribute (``userName``, a Group's ``displayName``) is ``invalidValue``: the result
  could not be stored, and the value is what is wrong.
* ``remove`` with a value filter that matches nothing is a no-op (provisioning clients retry removals);
  ``replace`` with one is ``noTarget`` (RFC 7644 §3.5.2.3).
* ``remove`` of a multi-valued attribute with a ``value`` array removes only the listed elements (Entra ID
  removes group members as ``{"op": "Remove", "path": "members", "value": [{"value": "<id>"}]}``).
* ``add`` with a value filter that matches nothing creates an element when the filter is a conjunction of
  ``eq`` comparisons (Entra ID adds ``emails[type eq "work"].value`` to a user without one); else ``noTarget``.
* Adding an element whose ``value`` equals an existing element's updates that element instead of adding a
  duplicate (RFC 7644 §3.5.2.1: identical values SHALL NOT be duplicated).
* A ``null`` value for ``add``/``replace`` unassigns the target (RFC 7643 §2.5).
* Setting ``primary`` to true clears it on the other elements (RFC 7644 §3.5.2).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from idhub.scim.errors import InvalidPath, InvalidSyntax, InvalidValue, Mutability, NoTarget, ScimError
from idhub.scim.filter import And, AttrPath, Compare, Expr, Not, Or, Present, ValuePath, matches, parse_path
from idhub.scim.schemas import (
    Attribute,
    Resource,
    ResourceType,
    Schema,
    coerce_element,
    coerce_values,
    find_paired,
    same_value,
)

PATCH_OP_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

OpName = Literal["add", "remove", "replace"]
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one operation acts: an attribute, optionally a sub-attribute, optionally filtered elements.

    ``elements`` is true when the path selects elements of a multi-valued attribute: with a value filter
    (``filter`` set) or, for ``emails.value``, all of them (``filter`` None).
    """

    schema: Schema
    core: bool
    attr: Attribute
    sub: Attribute | None
    filter: Expr | None
    elements: bool
    text: str


def apply_patch(rt: ResourceType, resource: Mapping[str, Any], body: Mapping[str, Any]) -> Resource:
    """Apply a PatchOp request body to ``resource`` and return the new resource (RFC 7644 §3.5.2).

    All operations succeed or none do: the input is never modified and the first failure is raised.
    """
    operations = _operations(body)
    result: Resource = copy.deepcopy(dict(resource))
    for index, operation in enumerate(operations):
        try:
            _apply_operation(rt, result, operation)
        except ScimError as exc:
            raise type(exc)(f"Operations[{index}]: {exc.detail}") from None
    _sync_schemas(rt, result)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Request structure
# --------------------------------------------------------------------------------------------------------------------


def _member(obj: Mapping[str, Any], name: str) -> Any:
    """Return the member ``name`` of a JSON object, matching case-insensitively, or _MISSING."""
    if name in obj:
        return obj[name]
    for key, value in obj.items():
        if isinstance(key, str) and key.casefold() == name.casefold():
            return value
    return _MISSING


def _operations(body: object) -> list[Mapping[str, Any]]:
    """Check the PatchOp envelope (RFC 7644 §3.5.2) and return its operations."""
    if not isinstance(body, Mapping):
        raise InvalidSyntax("the request body must be a JSON object")
    declared = _member(body, "schemas")
    if not isinstance(declared, list) or not any(
        isinstance(urn, str) and urn.casefold() == PATCH_OP_URN.casefold() for urn in declared
    ):
        raise InvalidSyntax(f"schemas must be [{PATCH_OP_URN!r}]")
    operations = _member(body, "Operations")
    if not isinstance(operations, list) or not operations:
        raise InvalidSyntax("Operations must be a non-empty array")
    for index, operation in enumerate(operations):
        if not isinstance(operation, Mapping):
            raise InvalidSyntax(f"Operations[{index}] must be an object")
    return operations


def _apply_operation(rt: ResourceType, resource: Resource, operation: Mapping[str, Any]) -> None:
    raw_op = _member(operation, "op")
    op = raw_op.casefold() if isinstance(raw_op, str) else None
    if op not in ("add", "remove", "replace"):
        raise InvalidSyntax('op must be "add", "remove" or "replace"')
    path = _member(operation, "path")
    value = _member(operation, "value")
    if path is _MISSING or path is None:
        if op == "remove":
            raise NoTarget("remove needs a path (RFC 7644 §3.5.2.2)")
        if value is _MISSING:
            raise InvalidValue(f"{op} needs a value (RFC 7644 §3.5.2)")
        _apply_pathless(rt, resource, op, value)
        return
    if not isinstance(path, str) or not path.strip():
        raise InvalidPath("path must be a non-empty string")
    if op != "remove" and value is _MISSING:
        raise InvalidValue(f"{op} needs a value (RFC 7644 §3.5.2)")
    _apply_path(rt, resource, op, path.strip(), None if value is _MISSING else value)


def _apply_pathless(rt: ResourceType, resource: Resource, op: str, value: object) -> None:
    """Apply ``add``/``replace`` without a path: each key of ``value`` names a target (RFC 7644 §3.5.2.1)."""
    if not isinstance(value, Mapping):
        raise InvalidSyntax(f"{op} without a path needs an object value")
    for key, item in value.items():
        if not isinstance(key, str) or key.casefold() == "schemas":
            continue
        schema = rt.find_schema(key)
        if schema is not None:  # {"urn:...:enterprise:2.0:User": {"department": ...}}
            _apply_schema_object(rt, resource, op, schema, item)
        else:
            _apply_path(rt, resource, op, key, item)


def _apply_schema_object(rt: ResourceType, resource: Resource, op: str, schema: Schema, value: object) -> None:
    """Apply ``add``/``replace`` of a whole schema's object: each key is an attribute of that schema."""
    if value is None:
        _remove_extension(rt, resource, schema)
        return
    if not isinstance(value, Mapping):
        raise InvalidValue(f"{schema.id} must be an object")
    for key, item in value.items():
        if not isinstance(key, str):
            continue
        if key.casefold() == "schemas":
            # A client may serialise the extension object with its own "schemas" (scim2-models does); it
            # is not an attribute (RFC 7643 §3.3), but when present it must name this very extension.
            if not (isinstance(item, list) and [str(u).casefold() for u in item] == [schema.id.casefold()]):
                raise InvalidValue(f"{schema.id}: schemas must be [{schema.id!r}]")
            continue
        _apply_path(rt, resource, op, f"{schema.id}:{key}", item)


def _remove_extension(rt: ResourceType, resource: Resource, schema: Schema) -> None:
    if schema is rt.schema:
        raise NoTarget("the core schema cannot be removed")
    resource.pop(schema.id, None)


# --------------------------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------------------------


def _resolve_target(rt: ResourceType, text: str) -> _Target:
    """Parse and resolve a PATCH path (RFC 7644 §3.5.2 ``PATH``); raise InvalidPath when it names nothing."""
    parsed = parse_path(text)
    resolved = rt.resolve(parsed.attr, error=InvalidPath)
    schema = rt.find_schema(resolved.urn)
    assert schema is not None
    attr = resolved.attribute
    sub = resolved.sub
    value_filter = parsed.value_filter
    if value_filter is not None:
        if not attr.multi_valued:
            raise InvalidPath(f"{attr.name} is not multi-valued and takes no value filter")
        value_filter = _canonical_filter(attr, value_filter)
        if parsed.sub is not None:
            sub = attr.sub(parsed.sub)
            if sub is None:
                raise InvalidPath(f"unknown sub-attribute {attr.name}.{parsed.sub}")
    elements = value_filter is not None or (attr.multi_valued and sub is not None)
    return _Target(schema, schema is rt.schema, attr, sub, value_filter, elements, text)


def _canonical_filter(attr: Attribute, expr: Expr) -> Expr:
    """Return a value filter with canonical sub-attribute names; raise InvalidPath for unknown ones."""
    if isinstance(expr, And):
        return And(_canonical_filter(attr, expr.left), _canonical_filter(attr, expr.right))
    if isinstance(expr, Or):
        return Or(_canonical_filter(attr, expr.left), _canonical_filter(attr, expr.right))
    if isinstance(expr, Not):
        return Not(_canonical_filter(attr, expr.expr))
    if isinstance(expr, ValuePath):
        raise InvalidPath("value filters cannot nest")
    path = expr.path
    sub = attr.sub(path.attr) if path.urn is None and path.sub is None else None
    if sub is None:
        raise InvalidPath(f"{attr.name} has no sub-attribute {path.attr!r}")
    canonical = AttrPath(None, sub.name)
    if isinstance(expr, Present):
        return Present(canonical)
    return Compare(canonical, expr.op, expr.value)


def _case_exact(attr: Attribute) -> frozenset[str]:
    return frozenset(s.name for s in attr.sub_attributes if s.case_exact)


def _eq_constraints(expr: Expr) -> dict[str, Any] | None:
    """Return ``{sub: value}`` when ``expr`` is a conjunction of ``eq`` comparisons, else None."""
    if isinstance(expr, Compare) and expr.op == "eq" and expr.value is not None:
        return {expr.path.attr: expr.value}
    if isinstance(expr, And):
        left, right = _eq_constraints(expr.left), _eq_constraints(expr.right)
        if left is None or right is None or any(k in left and left[k] != v for k, v in right.items()):
            return None
        return {**left, **right}
    return None


# --------------------------------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------------------------------


def _container(resource: Resource, target: _Target, *, create: bool) -> dict[str, Any] | None:
    """Return the dict holding the target attribute: the resource, or the extension object under its URN."""
    if target.core:
        return resource
    part = resource.get(target.schema.id)
    if not isinstance(part, dict):
        if not create:
            return None
        part = {}
        resource[target.schema.id] = part
    return part


def _apply_path(rt: ResourceType, resource: Resource, op: str, text: str, value: object) -> None:
    extension = rt.find_schema(text)
    if extension is not None:  # the path is a schema URN: the whole extension object
        if op == "remove" or value is None:
            _remove_extension(rt, resource, extension)
        else:
            _apply_schema_object(rt, resource, op, extension, value)
        return
    target = _resolve_target(rt, text)
    if op == "remove" or value is None:
        _remove(target, resource, value if op == "remove" else None)
    elif op == "add":
        _add(target, resource, value)
    else:
        _replace(target, resource, value)


def _check_writable(target: _Target, container: Mapping[str, Any], value: object) -> bool:
    """Refuse changes to read-only attributes and to immutable ones that have a value (RFC 7644 §3.5.2).

    Return True when the operation would set the attribute to its current value (then it changes nothing).
    """
    attr = target.attr
    current = container.get(attr.name)
    whole = target.sub is None and not target.elements
    if attr.mutability in ("readOnly", "immutable") and whole and current is not None:
        coerced = coerce_element(attr, value, target.text) if attr.type != "complex" else value
        if coerced == current:
            return True
    if attr.mutability == "readOnly":
        raise Mutability(f"{attr.name} is read-only")
    if target.sub is not None and target.sub.mutability == "readOnly":
        raise Mutability(f"{attr.name}.{target.sub.name} is read-only")
    if attr.mutability == "immutable" and current is not None:
        raise Mutability(f"{attr.name} is immutable and already has a value")
    return False


def _check_immutable_sub(attr: Attribute, sub: Attribute, element: Mapping[str, Any], value: object) -> None:
    current = element.get(sub.name)
    if sub.mutability == "immutable" and current is not None and not same_value(sub, current, value):
        raise Mutability(f"{attr.name}.{sub.name} is immutable and already has a value")


def _merge(attr: Attribute, current: Mapping[str, Any], value: object, where: str) -> dict[str, Any]:
    """Return ``current`` with the sub-attributes of complex ``value`` set; null sub-values unassign.

    For a single-valued complex attribute whose ``value`` changes (a new ``manager``) the other
    sub-attributes described the old value and are dropped rather than merged.
    """
    if isinstance(value, str) and attr.sub("value") is not None:
        value = {"value": value}
    if isinstance(value, list) and len(value) == 1 and not attr.multi_valued:
        value = value[0]  # Entra ID has sent single-valued complex attributes as one-element arrays
    if not isinstance(value, Mapping):
        raise InvalidValue(f"{where} must be an object")
    given = coerce_element(attr, dict(value), where) or {}
    value_attr = attr.sub("value")
    merged = dict(current)
    if (
        not attr.multi_valued
        and value_attr is not None
        and given.get("value") is not None
        and not same_value(value_attr, merged.get("value"), given["value"])
    ):
        merged = {}
    for key, raw in value.items():
        sub = attr.sub(key) if isinstance(key, str) else None
        if raw is None and sub is not None and sub.mutability != "readOnly":
            _check_immutable_sub(attr, sub, merged, None)
            merged.pop(sub.name, None)
    for name, new in given.items():
        sub = attr.sub(name)
        assert sub is not None
        _check_immutable_sub(attr, sub, merged, new)
        merged[name] = new
    return merged


def _set_primary(attr: Attribute, elements: list[Any], touched: list[dict[str, Any]]) -> None:
    """Clear ``primary`` on the other elements once a touched one became primary (RFC 7644 §3.5.2)."""
    if attr.sub("primary") is None:
        return
    primaries = [e for e in touched if e.get("primary") is True]
    if len(primaries) != 1:
        return  # none, or several at once: normalise_resource refuses the latter
    for element in elements:
        if isinstance(element, dict) and element is not primaries[0] and element.get("primary") is True:
            element["primary"] = False


def _store(container: dict[str, Any], attr: Attribute, value: Any) -> None:
    if value in (None, [], {}):
        container.pop(attr.name, None)
    else:
        container[attr.name] = value


def _add_elements(target: _Target, elements: list[Any], value: object) -> list[dict[str, Any]]:
    """Append the elements of ``value`` to ``elements``, updating the element with the same ``value`` instead."""
    attr = target.attr
    touched: list[dict[str, Any]] = []
    for element in coerce_values(attr, value, target.text):
        if not isinstance(element, dict):
            if not any(same_value(attr, e, element) for e in elements):
                elements.append(element)
            continue
        existing = find_paired(attr, elements, element)
        if existing is None:
            existing = next((e for e in elements if isinstance(e, dict) and element.items() <= e.items()), None)
        if existing is None:
            elements.append(element)
            touched.append(element)
            continue
        for name, new in element.items():
            sub = attr.sub(name)
            assert sub is not None
            _check_immutable_sub(attr, sub, existing, new)
            existing[name] = new
        touched.append(existing)
    return touched


def _selected(target: _Target, elements: list[Any]) -> list[dict[str, Any]]:
    """Return the elements the target's value filter selects (all complex elements without a filter)."""
    chosen = [e for e in elements if isinstance(e, dict)]
    if target.filter is None:
        return chosen
    exact = _case_exact(target.attr)
    return [e for e in chosen if matches(target.filter, e, case_exact=exact)]


def _set_in_elements(target: _Target, selected: list[dict[str, Any]], value: object) -> None:
    """Set the target sub-attribute, or merge the complex ``value``, into each selected element."""
    attr = target.attr
    for element in selected:
        if target.sub is not None:
            new = coerce_element(target.sub, value, target.text)
            _check_immutable_sub(attr, target.sub, element, new)
            element[target.sub.name] = new
        else:
            merged = _merge(attr, element, value, target.text)
            element.clear()
            element.update(merged)


def _create_element(target: _Target, elements: list[Any], value: object) -> dict[str, Any]:
    """Create the element an ``add`` through a non-matching ``eq`` filter describes, or raise NoTarget."""
    constraints = {} if target.filter is None else _eq_constraints(target.filter)
    if constraints is None:
        raise NoTarget(f"{target.text} matches no value")
    element = coerce_element(target.attr, constraints, target.text) or {}
    if target.sub is not None:
        element[target.sub.name] = coerce_element(target.sub, value, target.text)
    else:
        element = _merge(target.attr, element, value, target.text)
    elements.append(element)
    return element


def _add(target: _Target, resource: Resource, value: object) -> None:
    """Apply ``add`` (RFC 7644 §3.5.2.1)."""
    container = _container(resource, target, create=True)
    assert container is not None
    attr = target.attr
    if _check_writable(target, container, value):
        return  # the current value: nothing to do
    if attr.multi_valued:
        current = container.get(attr.name)
        elements: list[Any] = current if isinstance(current, list) else []
        if not target.elements:
            touched = _add_elements(target, elements, value)
        else:
            touched = _selected(target, elements)
            if touched:
                _set_in_elements(target, touched, value)
            else:
                touched = [_create_element(target, elements, value)]
        _set_primary(attr, elements, touched)
        _store(container, attr, elements)
    else:
        _set_single(target, container, value)


def _replace(target: _Target, resource: Resource, value: object) -> None:
    """Apply ``replace`` (RFC 7644 §3.5.2.3); a missing attribute is added."""
    container = _container(resource, target, create=True)
    assert container is not None
    attr = target.attr
    if _check_writable(target, container, value):
        return
    if not attr.multi_valued:
        _set_single(target, container, value)
        return
    current = container.get(attr.name)
    elements: list[Any] = current if isinstance(current, list) else []
    if not target.elements:
        # Without a filter the whole set of values is replaced.
        elements = []
        touched = _add_elements(target, elements, value)
    else:
        touched = _selected(target, elements)
        if touched:
            _set_in_elements(target, touched, value)
        elif target.filter is None:
            touched = [_create_element(target, elements, value)]  # "emails.value" on no emails: an add
        else:
            raise NoTarget(f"{target.text} matches no value (RFC 7644 §3.5.2.3)")
    _set_primary(attr, elements, touched)
    _store(container, attr, elements)


def _set_single(target: _Target, container: dict[str, Any], value: object) -> None:
    """Set a single-valued attribute, merge into a complex one, or set one of its sub-attributes."""
    attr = target.attr
    if attr.type != "complex":
        _store(container, attr, coerce_element(attr, value, target.text))
        return
    current = container.get(attr.name)
    current_dict: dict[str, Any] = current if isinstance(current, dict) else {}
    if target.sub is not None:
        new = coerce_element(target.sub, value, target.text)
        _check_immutable_sub(attr, target.sub, current_dict, new)
        current_dict = {**current_dict, target.sub.name: new}
    else:
        # RFC 7644 §3.5.2.1/§3.5.2.3: sub-attributes not in the value are left unchanged.
        current_dict = _merge(attr, current_dict, value, target.text)
    _store(container, attr, current_dict)


def _remove(target: _Target, resource: Resource, value: object) -> None:
    """Apply ``remove`` (RFC 7644 §3.5.2.2); ``value`` lists the elements to remove, if given."""
    container = _container(resource, target, create=False)
    attr = target.attr
    if attr.mutability == "readOnly":
        raise Mutability(f"{attr.name} is read-only")
    if target.sub is not None and target.sub.mutability == "readOnly":
        raise Mutability(f"{attr.name}.{target.sub.name} is read-only")
    if container is None:
        return
    current = container.get(attr.name)
    if attr.mutability == "immutable" and current is not None:
        raise Mutability(f"{attr.name} is immutable and already has a value")
    if not attr.multi_valued:
        if target.sub is None:
            if attr.required:
                raise InvalidValue(f"{attr.name} is required and cannot be removed")
            container.pop(attr.name, None)
            return
        if isinstance(current, dict):
            _check_immutable_sub(attr, target.sub, current, None)
            remaining = {k: v for k, v in current.items() if k != target.sub.name}
            _store(container, attr, remaining)
        return
    if not isinstance(current, list):
        return
    if not target.elements:
        if attr.required:
            raise InvalidValue(f"{attr.name} is required and cannot be removed")
        if value is None:
            container.pop(attr.name, None)
            return
        doomed = coerce_values(attr, value, target.text)
        kept = [e for e in current if not any(_same_element(attr, e, d) for d in doomed)]
        _store(container, attr, kept)
        return
    selected = _selected(target, current)
    if target.sub is None:
        kept = [e for e in current if not any(e is s for s in selected)]
    else:
        for element in selected:
            _check_immutable_sub(attr, target.sub, element, None)
            element.pop(target.sub.name, None)
        kept = [e for e in current if e != {}]
    if attr.required and not kept:
        raise InvalidValue(f"{attr.name} is required and cannot be removed")
    _store(container, attr, kept)


def _same_element(attr: Attribute, element: object, doomed: object) -> bool:
    """Tell whether ``element`` is the one ``doomed`` names: same ``value``, or all of doomed's sub-attributes."""
    if not isinstance(element, dict) or not isinstance(doomed, dict):
        return same_value(attr, element, doomed)
    if doomed.get("value") is not None:
        return find_paired(attr, [element], doomed) is not None
    return doomed.items() <= element.items()


def _sync_schemas(rt: ResourceType, resource: Resource) -> None:
    """List exactly the extensions that have data in ``schemas`` (RFC 7643 §3) and drop empty extension objects."""
    declared = resource.get("schemas")
    urns: list[Any] = list(declared) if isinstance(declared, list) else [rt.schema.id]
    for extension, _required in rt.extensions:
        present = [u for u in urns if isinstance(u, str) and u.casefold() == extension.id.casefold()]
        if resource.get(extension.id):
            if not present:
                urns.append(extension.id)
        else:
            resource.pop(extension.id, None)
            urns = [u for u in urns if u not in present]
    resource["schemas"] = urns
