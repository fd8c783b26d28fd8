"""SCIM schemas (RFC 7643 §2, §4, §7, §8.7): the attributes idhub stores, their characteristics, input checks.

The definitions below are exactly what the directory stores, nothing more: the discovery endpoints publish
them (:func:`schema_representation`, :func:`resource_type_representation`), filters and PATCH paths resolve
against them (:meth:`ResourceType.resolve`), and every write goes through :func:`normalise_resource`, which
turns a POST/PUT body, or a resource PATCH produced in memory, into the canonical resource dict.

Decisions where the RFCs leave a choice (all in :func:`normalise_resource`):

* Unknown attributes, sub-attributes and undeclared URN-prefixed keys are ignored, never stored
  (RFC 7644 §3.3 lets a service provider ignore what it does not support; HR feeds send extras).
* ``readOnly`` input is ignored and the current value kept (RFC 7643 §2.2).
* An ``immutable`` value that differs from the current one is a ``mutability`` error; an omitted one keeps
  the current value (RFC 7644 §3.5.1). In multi-valued complex attributes (``members``) an element is paired
  with the current element of the same ``value``, and only such pairs are compared.
* ``null``, ``[]`` and ``{}`` mean "unassigned" (RFC 7643 §2.5) and are dropped.
* Booleans also accept the strings ``"true"``/``"false"`` in any case (Microsoft Entra ID sends ``"False"``).
* A single object given for a multi-valued attribute is taken as a one-element list; a string given for a
  complex attribute with a ``value`` sub-attribute (Entra's ``manager``) is taken as ``{"value": ...}``; a
  one-element list given for a single-valued complex attribute is taken as its element.
* Extension data without its URN in ``schemas`` is accepted; the output ``schemas`` lists the core URN and
  the extensions that have data.
"""

from __future__ import annotations

import base64
import binascii
import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from idhub.scim.errors import InvalidPath, InvalidSyntax, InvalidValue, Mutability, ScimError
from idhub.scim.filter import AttrPath

Resource = dict[str, Any]

AttributeType = Literal["string", "boolean", "decimal", "integer", "dateTime", "reference", "complex", "binary"]
MutabilityKind = Literal["readOnly", "readWrite", "immutable", "writeOnly"]
ReturnedKind = Literal["always", "never", "default", "request"]
UniquenessKind = Literal["none", "server", "global"]

USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_URN = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_URN = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
SCHEMA_URN = "urn:ietf:params:scim:schemas:core:2.0:Schema"
RESOURCE_TYPE_URN = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"

MAX_STRING_LENGTH = 1024
MAX_USER_NAME_LENGTH = 255
MAX_REFERENCE_LENGTH = 2048
MAX_BINARY_LENGTH = 16384  # base64 characters; an X.509 certificate is a few kilobytes


@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute definition with its characteristics (RFC 7643 §2.2, §7)."""

    name: str
    type: AttributeType
    multi_valued: bool = False
    required: bool = False
    case_exact: bool = False
    mutability: MutabilityKind = "readWrite"
    returned: ReturnedKind = "default"
    uniqueness: UniquenessKind = "none"
    sub_attributes: tuple[Attribute, ...] = ()
    canonical_values: tuple[str, ...] = ()
    reference_types: tuple[str, ...] = ()
    description: str = ""
    _subs: dict[str, Attribute] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_subs", {sub.name.casefold(): sub for sub in self.sub_attributes})

    def sub(self, name: str) -> Attribute | None:
        """Return the sub-attribute called ``name`` (case-insensitive, RFC 7643 §2.1), or None."""
        return self._subs.get(name.casefold())


@dataclass(frozen=True, slots=True)
class Schema:
    """A schema (RFC 7643 §7): its URN, name, description and attributes."""

    id: str
    name: str
    description: str
    attributes: tuple[Attribute, ...]
    _by_name: dict[str, Attribute] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {attr.name.casefold(): attr for attr in self.attributes})

    def attribute(self, name: str) -> Attribute | None:
        """Return the attribute called ``name`` (case-insensitive), or None."""
        return self._by_name.get(name.casefold())


@dataclass(frozen=True, slots=True)
class ResolvedAttribute:
    """An attribute path resolved against a resource type: the schema URN, the attribute and its sub-attribute.

    Common attributes (``id``, ``externalId``, ``meta``) resolve with the core schema's URN: they sit at the
    top level of the resource like core attributes do.
    """

    urn: str
    attribute: Attribute
    sub: Attribute | None = None

    @property
    def target(self) -> Attribute:
        """Return the attribute the path ends on (the sub-attribute when there is one)."""
        return self.sub or self.attribute

    @property
    def label(self) -> str:
        """Return the canonical ``attr`` or ``attr.sub`` name, for error details."""
        return f"{self.attribute.name}.{self.sub.name}" if self.sub else self.attribute.name


@dataclass(frozen=True, slots=True)
class ResourceType:
    """A resource type (RFC 7643 §6): its core schema and schema extensions (schema, required)."""

    name: str
    endpoint: str
    schema: Schema
    extensions: tuple[tuple[Schema, bool], ...] = ()
    description: str = ""
    # The core schema followed by the extensions.
    schemas: tuple[Schema, ...] = field(init=False, repr=False, compare=False, hash=False)
    # Whether some attribute or sub-attribute is ``returned: request``: then even a response without
    # ``attributes``/``excludedAttributes`` must be projected (RFC 7643 §2.2).
    has_request_only: bool = field(init=False, repr=False, compare=False, hash=False)
    _by_urn: dict[str, Schema] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        schemas = (self.schema, *(ext for ext, _required in self.extensions))
        object.__setattr__(self, "schemas", schemas)
        object.__setattr__(self, "_by_urn", {schema.id.casefold(): schema for schema in schemas})
        request_only = any(
            a.returned == "request" or any(s.returned == "request" for s in a.sub_attributes)
            for schema in schemas
            for a in schema.attributes
        )
        object.__setattr__(self, "has_request_only", request_only)

    def find_schema(self, urn: str) -> Schema | None:
        """Return the core or extension schema whose URN is ``urn`` (case-insensitive), or None."""
        return self._by_urn.get(urn.casefold())

    def extension(self, urn: str) -> Schema | None:
        """Return the extension schema whose URN is ``urn`` (case-insensitive), or None."""
        schema = self.find_schema(urn)
        return None if schema is None or schema is self.schema else schema

    def core_attribute(self, name: str) -> Attribute | None:
        """Return the common (``id``, ``externalId``, ``meta``) or core attribute ``name``, or None."""
        folded = name.casefold()
        return _COMMON_BY_NAME.get(folded) or self.schema._by_name.get(folded)

    def resolve(self, path: AttrPath, error: type[ScimError] = InvalidPath) -> ResolvedAttribute:
        """Resolve a filter or PATCH attribute path; raise ``error`` when it names nothing this type has.

        Without a URN the core schema (and the common attributes) is searched first, then the extensions
        (RFC 7644 §3.10); with one, only that schema is (URNs compare case-insensitively).
        """
        shown = _show_path(path)
        if path.urn is not None:
            schema = self.find_schema(path.urn)
            if schema is None:
                raise error(f"unknown schema in {shown}")
            candidates: tuple[Schema, ...] = (schema,)
        else:
            candidates = self.schemas
        found: tuple[Schema, Attribute] | None = None
        for schema in candidates:
            attr = self.core_attribute(path.attr) if schema is self.schema else schema.attribute(path.attr)
            if attr is not None:
                found = (schema, attr)
                break
        if found is None:
            raise error(f"unknown attribute {shown}")
        schema, attr = found
        if path.sub is None:
            return ResolvedAttribute(schema.id, attr)
        if attr.type != "complex":
            raise error(f"{attr.name} has no sub-attributes: {shown}")
        sub = attr.sub(path.sub)
        if sub is None:
            raise error(f"unknown sub-attribute {shown}")
        return ResolvedAttribute(schema.id, attr, sub)


def _show_path(path: AttrPath) -> str:
    text = f"{path.attr}.{path.sub}" if path.sub else path.attr
    if path.urn:
        text = f"{path.urn}:{text}"
    return repr(text if len(text) <= 200 else text[:200] + "...")


# --------------------------------------------------------------------------------------------------------------------
# Definitions (RFC 7643 §3.1 common attributes, §4.1 User, §4.2 Group, §4.3 enterprise extension, §8.7)
# --------------------------------------------------------------------------------------------------------------------


def _string(name: str, description: str, **kw: Any) -> Attribute:
    return Attribute(name, "string", description=description, **kw)


def _plural(
    name: str,
    description: str,
    *,
    value_type: AttributeType = "string",
    canonical: tuple[str, ...] = (),
    reference_types: tuple[str, ...] = (),
) -> Attribute:
    """Build a multi-valued complex attribute with ``value``, ``display``, ``type`` and ``primary`` (RFC 7643 §2.4)."""
    return Attribute(
        name,
        "complex",
        multi_valued=True,
        description=description,
        sub_attributes=(
            Attribute("value", value_type, reference_types=reference_types, description=f"The value of {name}."),
            _string("display", "A human-readable name, primarily used for display purposes."),
            _string("type", "A label indicating the attribute's function.", canonical_values=canonical),
            Attribute("primary", "boolean", description="Whether this is the primary value of the attribute."),
        ),
    )


ID = Attribute(
    "id",
    "string",
    case_exact=True,
    mutability="readOnly",
    returned="always",
    uniqueness="server",
    description="A unique identifier for the resource, assigned by the service provider.",
)
EXTERNAL_ID = _string(
    "externalId", "An identifier for the resource as defined by the provisioning client.", case_exact=True
)
META = Attribute(
    "meta",
    "complex",
    mutability="readOnly",
    description="Resource metadata.",
    sub_attributes=(
        _string("resourceType", "The name of the resource type.", case_exact=True, mutability="readOnly"),
        Attribute("created", "dateTime", mutability="readOnly", description="When the resource was added."),
        Attribute("lastModified", "dateTime", mutability="readOnly", description="When the resource last changed."),
        Attribute(
            "location",
            "reference",
            case_exact=True,
            mutability="readOnly",
            reference_types=("uri",),
            description="The URI of the resource.",
        ),
        _string("version", "The version (entity tag) of the resource.", case_exact=True, mutability="readOnly"),
    ),
)
COMMON_ATTRIBUTES = (ID, EXTERNAL_ID, META)
_COMMON_BY_NAME = {attr.name.casefold(): attr for attr in COMMON_ATTRIBUTES}

USER_NAME = _string(
    "userName",
    "Unique identifier for the User, typically used by the user to directly authenticate to the service provider.",
    required=True,
    uniqueness="server",
)
PASSWORD = _string(
    "password",
    "The User's cleartext password, used to set or replace it; never returned.",
    mutability="writeOnly",
    returned="never",
)

USER_SCHEMA = Schema(
    id=USER_URN,
    name="User",
    description="User Account",
    attributes=(
        USER_NAME,
        Attribute(
            "name",
            "complex",
            description="The components of the user's real name.",
            sub_attributes=(
                _string("formatted", "The full name, including all middle names, titles and suffixes."),
                _string("familyName", "The family name of the User, or last name."),
                _string("givenName", "The given name of the User, or first name."),
                _string("middleName", "The middle name(s) of the User."),
                _string("honorificPrefix", "The honorific prefix(es) of the User, or title."),
                _string("honorificSuffix", "The honorific suffix(es) of the User, or suffix."),
            ),
        ),
        _string("displayName", "The name of the User, suitable for display to end-users."),
        _string("nickName", "The casual way to address the user in real life."),
        Attribute(
            "profileUrl",
            "reference",
            reference_types=("external",),
            description="A fully qualified URL pointing to a page representing the User's online profile.",
        ),
        _string("title", "The user's title, such as 'Vice President'."),
        _string("userType", "The relationship between the organization and the user, e.g. 'Employee'."),
        _string("preferredLanguage", "The User's preferred written or spoken language (RFC 7231 §5.3.5)."),
        _string("locale", "The User's default location for localization, e.g. 'en-US'."),
        _string("timezone", "The User's time zone in IANA Time Zone database format, e.g. 'Europe/Berlin'."),
        Attribute("active", "boolean", description="The User's administrative status."),
        PASSWORD,
        _plural("emails", "Email addresses for the user.", canonical=("work", "home", "other")),
        _plural(
            "phoneNumbers",
            "Phone numbers for the User.",
            canonical=("work", "home", "mobile", "fax", "pager", "other"),
        ),
        _plural(
            "ims",
            "Instant messaging addresses for the User.",
            canonical=("aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"),
        ),
        _plural(
            "photos",
            "URLs of images of the User.",
            value_type="reference",
            canonical=("photo", "thumbnail"),
            reference_types=("external",),
        ),
        Attribute(
            "addresses",
            "complex",
            multi_valued=True,
            description="A physical mailing address for this User.",
            sub_attributes=(
                _string("formatted", "The full mailing address, formatted for display."),
                _string("streetAddress", "The full street address component."),
                _string("locality", "The city or locality component."),
                _string("region", "The state or region component."),
                _string("postalCode", "The zip code or postal code component."),
                _string("country", "The country name component (ISO 3166-1 alpha-2)."),
                _string(
                    "type", "A label indicating the attribute's function.", canonical_values=("work", "home", "other")
                ),
                Attribute("primary", "boolean", description="Whether this is the primary address."),
            ),
        ),
        Attribute(
            "groups",
            "complex",
            multi_valued=True,
            mutability="readOnly",
            description="A list of groups to which the user belongs, directly or through nested groups.",
            sub_attributes=(
                _string("value", "The identifier of the User's group.", mutability="readOnly"),
                Attribute(
                    "$ref",
                    "reference",
                    mutability="readOnly",
                    reference_types=("User", "Group"),
                    description="The URI of the corresponding Group resource.",
                ),
                _string("display", "A human-readable name of the group.", mutability="readOnly"),
                _string(
                    "type",
                    "Whether the membership is direct or indirect.",
                    mutability="readOnly",
                    canonical_values=("direct", "indirect"),
                ),
            ),
        ),
        _plural("entitlements", "A list of entitlements for the User."),
        _plural("roles", "A list of roles for the User."),
        _plural("x509Certificates", "A list of certificates issued to the User.", value_type="binary"),
    ),
)

ENTERPRISE_SCHEMA = Schema(
    id=ENTERPRISE_URN,
    name="EnterpriseUser",
    description="Enterprise User",
    attributes=(
        _string("employeeNumber", "A string identifier, typically numeric or alphanumeric, assigned to a person."),
        _string("costCenter", "Identifies the name of a cost center."),
        _string("organization", "Identifies the name of an organization."),
        _string("division", "Identifies the name of a division."),
        _string("department", "Identifies the name of a department."),
        Attribute(
            "manager",
            "complex",
            description="The User's manager.",
            sub_attributes=(
                _string("value", "The id of the SCIM resource representing the User's manager."),
                Attribute(
                    "$ref",
                    "reference",
                    reference_types=("User",),
                    description="The URI of the SCIM resource representing the User's manager.",
                ),
                _string("displayName", "The displayName of the User's manager.", mutability="readOnly"),
            ),
        ),
    ),
)

GROUP_SCHEMA = Schema(
    id=GROUP_URN,
    name="Group",
    description="Group",
    attributes=(
        _string("displayName", "A human-readable name for the Group.", required=True, uniqueness="server"),
        Attribute(
            "members",
            "complex",
            multi_valued=True,
            description="A list of members of the Group.",
            sub_attributes=(
                _string("value", "Identifier of the member of this Group.", mutability="immutable"),
                Attribute(
                    "$ref",
                    "reference",
                    mutability="immutable",
                    reference_types=("User", "Group"),
                    description="The URI of the member resource.",
                ),
                # The member's name, derived by idhub (a user's displayName, else userName; a group's
                # displayName). Returned only when asked for (attributes=members.display): a client reads
                # back the members it wrote, as it wrote them, and a large group is not read with a join.
                _string(
                    "display",
                    "A human-readable name of the member; returned only when requested.",
                    mutability="readOnly",
                    returned="request",
                ),
                _string(
                    "type",
                    "The type of the member.",
                    mutability="immutable",
                    canonical_values=("User", "Group"),
                ),
            ),
        ),
    ),
)

USER_TYPE = ResourceType(
    name="User",
    endpoint="/Users",
    schema=USER_SCHEMA,
    extensions=((ENTERPRISE_SCHEMA, False),),
    description="User Account",
)
GROUP_TYPE = ResourceType(name="Group", endpoint="/Groups", schema=GROUP_SCHEMA, description="Group")


# --------------------------------------------------------------------------------------------------------------------
# Discovery representations
# --------------------------------------------------------------------------------------------------------------------


def _attribute_representation(attr: Attribute) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": attr.name,
        "type": attr.type,
        "multiValued": attr.multi_valued,
        "description": attr.description,
        "required": attr.required,
        "caseExact": attr.case_exact,
        "mutability": attr.mutability,
        "returned": attr.returned,
        "uniqueness": attr.uniqueness,
    }
    if attr.canonical_values:
        out["canonicalValues"] = list(attr.canonical_values)
    if attr.type == "reference":
        out["referenceTypes"] = list(attr.reference_types)
    if attr.sub_attributes:
        out["subAttributes"] = [_attribute_representation(sub) for sub in attr.sub_attributes]
    return out


def schema_representation(schema: Schema, base_url: str) -> dict[str, Any]:
    """Return the ``/Schemas`` representation of ``schema`` (RFC 7643 §7)."""
    return {
        "schemas": [SCHEMA_URN],
        "id": schema.id,
        "name": schema.name,
        "description": schema.description,
        "attributes": [_attribute_representation(attr) for attr in schema.attributes],
        "meta": {"resourceType": "Schema", "location": f"{base_url}/Schemas/{schema.id}"},
    }


def resource_type_representation(rt: ResourceType, base_url: str) -> dict[str, Any]:
    """Return the ``/ResourceTypes`` representation of ``rt`` (RFC 7643 §6)."""
    out: dict[str, Any] = {
        "schemas": [RESOURCE_TYPE_URN],
        "id": rt.name,
        "name": rt.name,
        "endpoint": rt.endpoint,
        "description": rt.description,
        "schema": rt.schema.id,
    }
    if rt.extensions:
        out["schemaExtensions"] = [{"schema": ext.id, "required": required} for ext, required in rt.extensions]
    out["meta"] = {"resourceType": "ResourceType", "location": f"{base_url}/ResourceTypes/{rt.name}"}
    return out


# --------------------------------------------------------------------------------------------------------------------
# Values (RFC 7643 §2.3 data types)
# --------------------------------------------------------------------------------------------------------------------


def max_length(attr: Attribute) -> int:
    """Return the longest string accepted for ``attr``."""
    if attr is USER_NAME:
        return MAX_USER_NAME_LENGTH
    if attr.type == "reference":
        return MAX_REFERENCE_LENGTH
    if attr.type == "binary":
        return MAX_BINARY_LENGTH
    return MAX_STRING_LENGTH


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_string(attr: Attribute, value: object, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"{where} must be a string, not {_json_type(value)}")
    if len(value) > max_length(attr):
        raise InvalidValue(f"{where} is longer than {max_length(attr)} characters")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; never a legitimate value
        raise InvalidValue(f"{where} contains a NUL character")
    return value


def coerce_simple(attr: Attribute, value: object, where: str) -> Any:
    """Return one non-null, non-complex value checked against ``attr``'s type; raise InvalidValue otherwise."""
    if attr.type == "boolean":
        if isinstance(value, bool):
            return value
        # Microsoft Entra ID sends "True"/"False" for active (a documented quirk); accept any case.
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise InvalidValue(f"{where} must be a boolean, not {_json_type(value)}")
    if attr.type == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InvalidValue(f"{where} must be an integer, not {_json_type(value)}")
    if attr.type == "decimal":
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return value
        raise InvalidValue(f"{where} must be a number, not {_json_type(value)}")
    text = _check_string(attr, value, where)
    if attr.type == "dateTime":
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidValue(f"{where} must be an xsd:dateTime (RFC 7643 §2.3.5)") from None
    elif attr.type == "binary":
        try:
            base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidValue(f"{where} must be base64 encoded (RFC 7643 §2.3.6)") from None
    elif attr.canonical_values and not attr.case_exact:
        # Canonical values keep their published spelling ("Work" -> "work", "user" -> "User").
        for canonical in attr.canonical_values:
            if canonical.casefold() == text.casefold():
                return canonical
    return text


def coerce_complex(attr: Attribute, value: object, where: str) -> dict[str, Any]:
    """Return one complex value with canonical sub-attribute names and checked values.

    Unknown sub-attributes, ``readOnly`` ones (RFC 7643 §2.2: input SHALL be ignored) and nulls are dropped;
    a string is taken as the ``value`` sub-attribute when there is one. The result may be empty.
    """
    if isinstance(value, str) and attr.sub("value") is not None:
        value = {"value": value}
    if not isinstance(value, dict):
        raise InvalidValue(f"{where} must be an object, not {_json_type(value)}")
    out: dict[str, Any] = {}
    for key, raw in value.items():
        sub = attr.sub(key) if isinstance(key, str) else None
        if sub is None or sub.mutability == "readOnly" or raw is None:
            continue
        if sub.name in out:
            raise InvalidSyntax(f"{where}.{sub.name} is given more than once")
        out[sub.name] = coerce_simple(sub, raw, f"{where}.{sub.name}")
    return out


def coerce_element(attr: Attribute, value: object, where: str) -> Any:
    """Return one value of ``attr`` (one element when multi-valued), or None when it is unassigned."""
    if value is None:
        return None
    if attr.type == "complex":
        if not attr.multi_valued and isinstance(value, list) and len(value) == 1:
            value = value[0]  # Entra ID has sent single-valued complex attributes as one-element arrays
        element = coerce_complex(attr, value, where)
        return element or None
    return coerce_simple(attr, value, where)


def coerce_values(attr: Attribute, value: object, where: str) -> list[Any]:
    """Return the elements of multi-valued ``attr``, checked, without nulls, empties and exact duplicates."""
    items = value if isinstance(value, list) else [value]
    out: list[Any] = []
    for index, item in enumerate(items):
        element = coerce_element(attr, item, f"{where}[{index}]")
        if element is not None and element not in out:
            out.append(element)
    return out


def check_primary(attr: Attribute, elements: Iterable[Any], where: str) -> None:
    """Refuse more than one element with ``primary`` true (RFC 7643 §2.4)."""
    if attr.sub("primary") is None:
        return
    count = sum(1 for e in elements if isinstance(e, dict) and e.get("primary") is True)
    if count > 1:
        raise InvalidValue(f"{where} has more than one primary value (RFC 7643 §2.4)")


def same_value(attr: Attribute, a: object, b: object) -> bool:
    """Tell whether two simple values of ``attr`` are equal, folding case unless ``caseExact`` (RFC 7643 §2.3.1)."""
    if isinstance(a, str) and isinstance(b, str) and not attr.case_exact:
        return a.casefold() == b.casefold()
    return type(a) is type(b) and a == b


def find_paired(attr: Attribute, elements: Iterable[Any], element: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return the element of multi-valued complex ``attr`` with the same ``value`` as ``element``, or None."""
    value_attr = attr.sub("value")
    if value_attr is None or element.get("value") is None:
        return None
    for candidate in elements:
        if isinstance(candidate, dict) and same_value(value_attr, candidate.get("value"), element["value"]):
            return candidate
    return None


# --------------------------------------------------------------------------------------------------------------------
# Input normalisation
# --------------------------------------------------------------------------------------------------------------------


def split_name(rt: ResourceType, name: str) -> tuple[Schema, str] | None:
    """Split a possibly URN-qualified attribute name into (schema, ``attr`` or ``attr.sub``).

    ``urn:...:enterprise:2.0:User:department`` gives the enterprise schema and ``department``; a bare name
    gives the core schema. A name with an unknown URN prefix gives None.
    """
    folded = name.casefold()
    for schema in rt.schemas:
        prefix = schema.id.casefold() + ":"
        if folded.startswith(prefix):
            return schema, name[len(prefix) :]
    if folded.startswith("urn:"):
        return None
    return rt.schema, name


_Collected = dict[str, dict[str, Any]]  # schema URN -> canonical attribute name -> raw input value


def _declared_schemas(rt: ResourceType, body: Mapping[str, Any]) -> list[Schema]:
    """Check ``schemas`` (RFC 7643 §3): present, a list of strings, the core URN in it, nothing unknown."""
    key = next((k for k in body if isinstance(k, str) and k.casefold() == "schemas"), None)
    if key is None or body[key] is None:
        raise InvalidSyntax("schemas is required (RFC 7643 §3)")
    declared = body[key]
    if not isinstance(declared, list) or not all(isinstance(urn, str) for urn in declared):
        raise InvalidSyntax("schemas must be an array of strings")
    found: list[Schema] = []
    for urn in declared:
        schema = rt.find_schema(urn)
        if schema is None:
            raise InvalidValue(f"unknown schema {urn[:200]!r} for {rt.name} resources")
        if schema not in found:
            found.append(schema)
    if rt.schema not in found:
        raise InvalidValue(f"schemas must contain {rt.schema.id}")
    return found


def _collect(rt: ResourceType, body: Mapping[str, Any]) -> _Collected:
    """Group the body's attributes by schema under canonical names; ``attr.sub`` keys merge into ``attr``.

    Extension attributes may come nested under the extension URN or as URN-qualified top-level keys. An
    attribute given twice (names differing only in case, or both nested and qualified) is invalidSyntax.
    """
    whole: _Collected = {schema.id: {} for schema in rt.schemas}
    dotted: dict[tuple[str, str], dict[str, Any]] = {}

    def place(schema: Schema, name: str, raw: Any) -> None:
        attr_name, _, sub_name = name.partition(".")
        attr = rt.core_attribute(attr_name) if schema is rt.schema else schema.attribute(attr_name)
        if attr is None:
            return  # unknown attributes are ignored, never stored (RFC 7644 §3.3 leaves this to the server)
        if not sub_name:
            if attr.name in whole[schema.id]:
                raise InvalidSyntax(f"{attr.name} is given more than once")
            whole[schema.id][attr.name] = raw
            return
        sub = attr.sub(sub_name)
        if sub is None or attr.multi_valued:
            return  # "emails.value" names no single place to store a value: ignored like unknown names
        parts = dotted.setdefault((schema.id, attr.name), {})
        if sub.name in parts:
            raise InvalidSyntax(f"{attr.name}.{sub.name} is given more than once")
        parts[sub.name] = raw

    for key, raw in body.items():
        if not isinstance(key, str) or key.casefold() == "schemas":
            continue
        schema = rt.find_schema(key)
        if schema is not None:  # an extension (or, leniently, the core schema) as a nested object
            if raw is None:
                continue
            if not isinstance(raw, dict):
                raise InvalidValue(f"{schema.id} must be an object, not {_json_type(raw)}")
            for name, value in raw.items():
                if isinstance(name, str):
                    place(schema, name, value)
            continue
        split = split_name(rt, key)
        if split is not None:
            place(split[0], split[1], raw)

    for (urn, attr_name), parts in dotted.items():
        current = whole[urn].get(attr_name)
        if current is None:
            whole[urn][attr_name] = parts
            continue
        if not isinstance(current, dict):
            raise InvalidSyntax(f"{attr_name} is given more than once")
        given = {k.casefold() for k in current if isinstance(k, str)}
        for sub_name in parts:
            if sub_name.casefold() in given:
                raise InvalidSyntax(f"{attr_name}.{sub_name} is given more than once")
        whole[urn][attr_name] = {**current, **parts}
    return whole


def _existing_part(rt: ResourceType, existing: Mapping[str, Any] | None, schema: Schema) -> Mapping[str, Any]:
    if existing is None:
        return {}
    if schema is rt.schema:
        return existing
    part = existing.get(schema.id)
    return part if isinstance(part, dict) else {}


def _check_immutable(attr: Attribute, given: object, current: object, where: str) -> None:
    """Refuse a value that differs from the current one of an ``immutable`` attribute (RFC 7644 §3.5.1)."""
    if current is not None and not (given == current or same_value(attr, given, current)):
        raise Mutability(f"{where} is immutable and already has a value")


def _normalise_complex(attr: Attribute, raw: object, current: object, where: str) -> dict[str, Any] | None:
    """Return one complex value with read-only sub-attributes from ``current`` and immutable ones checked.

    Read-only sub-attributes (``manager.displayName``) are kept only while ``value`` stays the same.
    """
    given = coerce_element(attr, raw, where)
    if given is None:
        return None  # unassigned: read-only leftovers of the current value go with it
    current_dict: dict[str, Any] = current if isinstance(current, dict) else {}
    paired = current_dict if attr.sub("value") is None else (find_paired(attr, [current_dict], given) or {})
    out: dict[str, Any] = {}
    for sub in attr.sub_attributes:
        if sub.mutability == "readOnly":
            value = paired.get(sub.name)  # RFC 7643 §2.2: input ignored, the current value stays
        elif sub.mutability == "immutable" and given.get(sub.name) is None:
            value = current_dict.get(sub.name)
        else:
            value = given.get(sub.name)
            if sub.mutability == "immutable":
                _check_immutable(sub, value, current_dict.get(sub.name), f"{where}.{sub.name}")
        if value is not None:
            out[sub.name] = value
    return out or None


def _normalise_multi(attr: Attribute, raw: object, current: object, where: str) -> list[Any] | None:
    """Return the elements of a multi-valued attribute, pairing complex elements with current ones by value."""
    elements = coerce_values(attr, raw, where)
    current_list = current if isinstance(current, list) else []
    if attr.type == "complex":
        keeps = any(s.mutability in ("readOnly", "immutable") for s in attr.sub_attributes)
        merged: list[Any] = []
        for index, element in enumerate(elements):
            if keeps:
                paired = find_paired(attr, current_list, element) or {}
                out: dict[str, Any] = {}
                for sub in attr.sub_attributes:
                    if sub.mutability == "readOnly":
                        value = paired.get(sub.name)
                    elif sub.mutability == "immutable":
                        value = element.get(sub.name)
                        if value is None:
                            value = paired.get(sub.name)
                        else:
                            _check_immutable(sub, value, paired.get(sub.name), f"{where}[{index}].{sub.name}")
                    else:
                        value = element.get(sub.name)
                    if value is not None:
                        out[sub.name] = value
                element = out
            if element not in merged:
                merged.append(element)
        elements = merged
        check_primary(attr, elements, where)
    return elements or None


def _normalise_attribute(attr: Attribute, present: bool, raw: object, current: object, where: str) -> Any:
    """Return the canonical value of one attribute (None when unassigned), applying its mutability."""
    if attr.mutability == "readOnly":
        return copy.deepcopy(current)  # RFC 7643 §2.2: "any values provided SHALL be ignored"
    if attr.mutability == "immutable" and current is not None:
        if not present:
            return copy.deepcopy(current)  # omitted: the value stays (RFC 7644 §3.5.1)
        value = _normalise_attribute_value(attr, raw, current, where)
        _check_immutable(attr, value, current, where)
        return value
    if not present:
        raw = None
    return _normalise_attribute_value(attr, raw, current, where)


def _normalise_attribute_value(attr: Attribute, raw: object, current: object, where: str) -> Any:
    if attr.multi_valued:
        if raw is None:
            return None
        return _normalise_multi(attr, raw, current, where)
    if attr.type == "complex":
        return _normalise_complex(attr, raw, current, where)
    value = coerce_element(attr, raw, where)
    if attr.required and isinstance(value, str) and not value.strip():
        raise InvalidValue(f"{where} must not be empty")
    return value


def normalise_resource(rt: ResourceType, body: Mapping[str, Any], *, existing: Mapping[str, Any] | None) -> Resource:
    """Validate a POST/PUT body (or a PATCHed resource) and return it as a canonical resource dict.

    ``existing`` is the current resource for PUT and PATCH (None on create): read-only attributes (``id``,
    ``meta``, ``groups``, ``members.display``, ``manager.displayName``) come from it and immutable ones are
    checked against it. ``password`` is kept (write-only; the caller hashes it). Never mutates its inputs.
    """
    if not isinstance(body, Mapping):
        raise InvalidSyntax("the request body must be a JSON object")
    _declared_schemas(rt, body)
    collected = _collect(rt, body)
    out: Resource = {"schemas": [rt.schema.id]}
    for schema in rt.schemas:
        given = collected[schema.id]
        current = _existing_part(rt, existing, schema)
        attrs = (*COMMON_ATTRIBUTES, *schema.attributes) if schema is rt.schema else schema.attributes
        part: dict[str, Any] = {}
        for attr in attrs:
            present, was = attr.name in given, current.get(attr.name)
            where = attr.name if schema is rt.schema else f"{schema.id}:{attr.name}"
            # Neither given nor held: unassigned, whatever its mutability (the common case, kept cheap).
            value = (
                None
                if not present and was is None
                else _normalise_attribute(attr, present, given.get(attr.name), was, where)
            )
            if value is None:
                if attr.required:  # RFC 7643 §2.2 required
                    raise InvalidValue(f"{where} is required")
                continue
            part[attr.name] = value
        if schema is rt.schema:
            meta = part.pop("meta", None)
            out.update(part)
            if meta is not None:
                out["meta"] = meta
        elif part:
            out["schemas"].append(schema.id)
            out[schema.id] = part
    if "meta" in out:  # meta last, after the extensions, as the service renders it
        out["meta"] = out.pop("meta")
    return out
