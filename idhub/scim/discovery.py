"""SCIM discovery documents (RFC 7644 §4, RFC 7643 §5-§7): exactly what this server supports."""

from __future__ import annotations

from typing import Any

from idhub.scim import errors, schemas

SPC_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
BULK_MAX_OPERATIONS = 1000
BULK_MAX_PAYLOAD = 4 * 1024 * 1024
FILTER_MAX_RESULTS = 1000
RESOURCE_TYPES = (schemas.USER_TYPE, schemas.GROUP_TYPE)


def service_provider_config(base_url: str) -> dict[str, Any]:
    """Return the ServiceProviderConfig (RFC 7643 §5)."""
    return {
        "schemas": [SPC_SCHEMA],
        "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
        "patch": {"supported": True},
        "bulk": {"supported": True, "maxOperations": BULK_MAX_OPERATIONS, "maxPayloadSize": BULK_MAX_PAYLOAD},
        "filter": {"supported": True, "maxResults": FILTER_MAX_RESULTS},
        "changePassword": {"supported": True},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "An access token with scope scim (client_credentials), or a provisioning token",
                "specUri": "https://www.rfc-editor.org/rfc/rfc6750",
                "primary": True,
            }
        ],
        "meta": {"resourceType": "ServiceProviderConfig", "location": f"{base_url}/ServiceProviderConfig"},
    }


def _list(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": len(resources),
        "startIndex": 1,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


def resource_types(base_url: str) -> dict[str, Any]:
    """Return the ResourceTypes list (RFC 7644 §4, RFC 7643 §6)."""
    return _list([schemas.resource_type_representation(rt, base_url) for rt in RESOURCE_TYPES])


def resource_type(base_url: str, name: str) -> dict[str, Any]:
    """Return one resource type by name."""
    for rt in RESOURCE_TYPES:
        if rt.name == name:
            return schemas.resource_type_representation(rt, base_url)
    raise errors.NotFound(f"no resource type {name[:100]!r}")


def _all_schemas() -> list[schemas.Schema]:
    found: list[schemas.Schema] = []
    for rt in RESOURCE_TYPES:
        for schema in (rt.schema, *(ext for ext, _required in rt.extensions)):
            if schema not in found:
                found.append(schema)
    return found


def schemas_list(base_url: str) -> dict[str, Any]:
    """Return every schema (RFC 7643 §7)."""
    return _list([schemas.schema_representation(s, base_url) for s in _all_schemas()])


def schema(base_url: str, schema_id: str) -> dict[str, Any]:
    """Return one schema by its URN."""
    for s in _all_schemas():
        if s.id == schema_id:
            return schemas.schema_representation(s, base_url)
    raise errors.NotFound(f"no schema {schema_id[:200]!r}")
