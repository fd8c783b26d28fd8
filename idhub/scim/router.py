"""SCIM 2.0 endpoints under ``{issuer}/scim/v2`` (RFC 7644 §3): parse, authenticate, call the service, render."""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, BackgroundTasks, Depends, Header, Request, Response

from idhub.deps import ContextDep, TenantDep, UnitOfWorkDep
from idhub.routing import parse_etag
from idhub.scim import discovery, errors, schemas
from idhub.scim.auth import authenticate
from idhub.scim.bulk import run_bulk
from idhub.scim.projection import parse_attribute_list, project
from idhub.scim.routing import SCIM_MEDIA_TYPE, ScimRoute
from idhub.scim.schemas import Resource
from idhub.scim.service import ListQuery, ScimService
from idhub.tenants.service import TenantInfo

SEARCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
MAX_BODY = 1024 * 1024
MAX_START_INDEX = 2**31 - 1  # a single resource; /Bulk has its own advertised maxPayloadSize

router = APIRouter(prefix="/scim/v2", tags=["scim"], route_class=ScimRoute)

_OBJECT = {"type": "object"}
# Bodies are read and checked by hand (strict JSON, size limits, SCIM errors), so they are declared here.
BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {SCIM_MEDIA_TYPE: {"schema": _OBJECT}, "application/json": {"schema": _OBJECT}},
    }
}
_ERROR = {"description": "SCIM error (RFC 7644 §3.12)", "content": {SCIM_MEDIA_TYPE: {"schema": _OBJECT}}}
ERRORS: dict[int | str, dict[str, Any]] = {status: _ERROR for status in (400, 401, 403, 404, 409, 412, 413)}


def scim_json(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Answer with ``application/scim+json`` (RFC 7644 §3.1)."""
    return Response(orjson.dumps(body), status_code=status, media_type=SCIM_MEDIA_TYPE, headers=headers)


def base_url(tenant: TenantInfo) -> str:
    """Return the SCIM base URL of the tenant (``{issuer}/scim/v2``)."""
    return f"{tenant.issuer}/scim/v2"


async def scim_service(request: Request, ctx: ContextDep, uow: UnitOfWorkDep, tenant: TenantDep) -> ScimService:
    """Authenticate the caller; the request's unit of work then acts (and is audited) as that HR client."""
    uow.actor = await authenticate(ctx, tenant, request.headers.get("authorization"))
    return ScimService(uow=uow, directory=ctx.directory(uow), tenant=tenant, base_url=base_url(tenant))


ServiceDep = Annotated[ScimService, Depends(scim_service)]
IfMatch = Annotated[str | None, Header(alias="if-match")]
IfNoneMatch = Annotated[str | None, Header(alias="if-none-match")]


async def read_json(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """Read a JSON object body; 413 beyond ``limit``, 400 ``invalidSyntax`` for anything but a JSON object.

    RFC 7644 §3.12: an oversized body is 413 without a ``scimType``, whether its declared length says so
    up front (checked first, before reading or judging anything else) or a chunked body grows past it.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.PayloadTooLarge(f"the body exceeds {limit} bytes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (SCIM_MEDIA_TYPE, "application/json"):
        raise errors.InvalidSyntax("the body must be application/scim+json")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidSyntax("the body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise errors.InvalidSyntax("the body must be a JSON object")
    return body


def _int_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise errors.InvalidValue(f"{name} must be an integer") from exc


def list_query(params: dict[str, Any]) -> ListQuery:
    """Build a :class:`ListQuery` from query parameters or a SearchRequest body (RFC 7644 §3.4.2, §3.4.3)."""

    def text(name: str) -> str | None:
        value = params.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise errors.InvalidValue(f"{name} must be a string")
        return value

    def number(name: str) -> int | None:
        value = params.get(name)
        if isinstance(value, bool):
            raise errors.InvalidValue(f"{name} must be an integer")
        if isinstance(value, int) or value is None:
            return value
        return _int_param(str(value), name)

    sort_order = text("sortOrder")
    if sort_order is not None and sort_order.lower() not in ("ascending", "descending"):
        raise errors.InvalidValue("sortOrder must be ascending or descending")
    start = number("startIndex")
    return ListQuery(
        filter=text("filter"),
        sort_by=text("sortBy"),
        sort_order=sort_order,
        # RFC 7644 §3.4.2.4: < 1 is 1; past any real result set is simply an empty page.
        start_index=1 if start is None or start < 1 else min(start, MAX_START_INDEX),
        count=number("count"),
    )


def _projection(params: dict[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    def names(key: str) -> list[str] | None:
        value = params.get(key)
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise errors.InvalidValue(f"{key} must be strings")
            return value
        if value is not None and not isinstance(value, str):
            raise errors.InvalidValue(f"{key} must be a string")
        return parse_attribute_list(value)

    return names("attributes"), names("excludedAttributes")


def _project(
    rt: schemas.ResourceType, resource: Resource, attributes: list[str] | None, excluded: list[str] | None
) -> Resource:
    """Apply ``attributes``/``excludedAttributes`` (RFC 7644 §3.9).

    Without either, the default set of a type with no ``returned: request`` attribute (User) is the whole
    stored resource: the service never puts ``password`` (``returned: never``) into one, so projecting would
    copy it unchanged (and a page of 100 users would spend milliseconds doing so). A Group is projected to
    drop ``members.display``.
    """
    if attributes is None and excluded is None and not rt.has_request_only:
        return resource
    return project(rt, resource, attributes=attributes, excluded=excluded)


def _list_response(
    rt: schemas.ResourceType, total: int, start: int, resources: list[Resource], params: dict[str, Any]
) -> Response:
    attributes, excluded = _projection(params)
    body = {
        "schemas": [discovery.LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": len(resources),
        "Resources": [_project(rt, r, attributes, excluded) for r in resources],
    }
    return scim_json(body)


async def _query_users(service: ScimService, params: dict[str, Any]) -> Response:
    """Answer a user query given as query parameters or a SearchRequest (RFC 7644 §3.4.2, §3.4.3)."""
    q = list_query(params)
    total, resources = await service.list_users(q)
    return _list_response(schemas.USER_TYPE, total, q.start_index, resources, params)


async def _query_groups(service: ScimService, params: dict[str, Any]) -> Response:
    """Answer a group query; members are loaded only when the answer shows them."""
    q = list_query(params)
    total, resources = await service.list_groups(q, with_members=_members_wanted(params))
    return _list_response(schemas.GROUP_TYPE, total, q.start_index, resources, params)


def _resource_response(
    rt: schemas.ResourceType, resource: Resource, request: Request, *, status: int = 200
) -> Response:
    attributes, excluded = _projection(dict(request.query_params))
    headers = {"etag": resource["meta"]["version"], "location": resource["meta"]["location"]}
    return scim_json(project(rt, resource, attributes=attributes, excluded=excluded), status=status, headers=headers)


def _members_wanted(params: dict[str, Any]) -> bool:
    """Whether a group answer needs its members (Entra ID asks for groups with ``excludedAttributes=members``)."""
    attributes, excluded = _projection(params)
    if excluded and any(name.lower() == "members" for name in excluded):
        return False
    return not (attributes and not any(name.lower().split(".")[0] == "members" for name in attributes))


# --- discovery (RFC 7644 §4): open to anyone, they describe the server, not the tenant's data ---------
@router.get("/ServiceProviderConfig", summary="Service provider configuration (RFC 7644 §4)", responses=ERRORS)
async def service_provider_config(tenant: TenantDep) -> Response:
    """Describe what this SCIM service supports."""
    return scim_json(discovery.service_provider_config(base_url(tenant)))


@router.get("/ResourceTypes", summary="Resource types (RFC 7644 §4)", responses=ERRORS)
async def resource_types(tenant: TenantDep) -> Response:
    """List the resource types."""
    return scim_json(discovery.resource_types(base_url(tenant)))


@router.get("/ResourceTypes/{name}", summary="One resource type", responses=ERRORS)
async def resource_type(name: str, tenant: TenantDep) -> Response:
    """Return one resource type."""
    return scim_json(discovery.resource_type(base_url(tenant), name))


@router.get("/Schemas", summary="Schemas (RFC 7644 §4, RFC 7643 §7)", responses=ERRORS)
async def schemas_list(tenant: TenantDep) -> Response:
    """List the schemas."""
    return scim_json(discovery.schemas_list(base_url(tenant)))


@router.get("/Schemas/{schema_id}", summary="One schema", responses=ERRORS)
async def schema_one(schema_id: str, tenant: TenantDep) -> Response:
    """Return one schema."""
    return scim_json(discovery.schema(base_url(tenant), schema_id))


# --- Users ------------------------------------------------------------------------------------------
@router.get("/Users", summary="List or filter users (RFC 7644 §3.4.2)", responses=ERRORS)
async def list_users(request: Request, service: ServiceDep) -> Response:
    """Query users."""
    return await _query_users(service, dict(request.query_params))


@router.post("/Users/.search", summary="Search users with POST (RFC 7644 §3.4.3)", responses=ERRORS, openapi_extra=BODY)
async def search_users(request: Request, service: ServiceDep) -> Response:
    """Query users with a SearchRequest body."""
    return await _query_users(service, _search_params(await read_json(request)))


@router.api_route("/Users/.search", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
@router.api_route("/Groups/.search", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def search_other_methods() -> Response:
    """Refuse other methods on ``/.search`` before they are taken for a resource id (RFC 7644 §3.4.3: POST)."""
    raise errors.MethodNotAllowed("/.search takes POST", headers={"allow": "POST"})


@router.post("/Users", status_code=201, summary="Create a user (RFC 7644 §3.3)", responses=ERRORS, openapi_extra=BODY)
async def create_user(request: Request, service: ServiceDep) -> Response:
    """Create a user."""
    resource = await service.create_user(await read_json(request))
    return _resource_response(schemas.USER_TYPE, resource, request, status=201)


@router.get("/Users/{user_id}", summary="Get a user (RFC 7644 §3.4.1)", responses=ERRORS)
async def get_user(user_id: str, request: Request, service: ServiceDep, if_none_match: IfNoneMatch = None) -> Response:
    """Return a user; 304 when ``If-None-Match`` names the current version (RFC 7644 §3.14)."""
    resource = await service.get_user(user_id)
    return _conditional(schemas.USER_TYPE, resource, request, if_none_match)


@router.put("/Users/{user_id}", summary="Replace a user (RFC 7644 §3.5.1)", responses=ERRORS, openapi_extra=BODY)
async def replace_user(user_id: str, request: Request, service: ServiceDep, if_match: IfMatch = None) -> Response:
    """Replace a user."""
    resource = await service.replace_user(user_id, await read_json(request), if_match)
    return _resource_response(schemas.USER_TYPE, resource, request)


@router.patch("/Users/{user_id}", summary="Modify a user (RFC 7644 §3.5.2)", responses=ERRORS, openapi_extra=BODY)
async def patch_user(user_id: str, request: Request, service: ServiceDep, if_match: IfMatch = None) -> Response:
    """Modify a user."""
    resource = await service.patch_user(user_id, await read_json(request), if_match)
    return _resource_response(schemas.USER_TYPE, resource, request)


@router.delete("/Users/{user_id}", status_code=204, summary="Delete a user (RFC 7644 §3.6)", responses=ERRORS)
async def delete_user(user_id: str, service: ServiceDep, if_match: IfMatch = None) -> Response:
    """Delete (archive and cut off) a user."""
    await service.delete_user(user_id, if_match)
    return Response(status_code=204)


# --- Groups -----------------------------------------------------------------------------------------
@router.get("/Groups", summary="List or filter groups (RFC 7644 §3.4.2)", responses=ERRORS)
async def list_groups(request: Request, service: ServiceDep) -> Response:
    """Query groups."""
    return await _query_groups(service, dict(request.query_params))


@router.post(
    "/Groups/.search", summary="Search groups with POST (RFC 7644 §3.4.3)", responses=ERRORS, openapi_extra=BODY
)
async def search_groups(request: Request, service: ServiceDep) -> Response:
    """Query groups with a SearchRequest body."""
    return await _query_groups(service, _search_params(await read_json(request)))


@router.post("/Groups", status_code=201, summary="Create a group (RFC 7644 §3.3)", responses=ERRORS, openapi_extra=BODY)
async def create_group(request: Request, service: ServiceDep) -> Response:
    """Create a group."""
    resource = await service.create_group(await read_json(request))
    return _resource_response(schemas.GROUP_TYPE, resource, request, status=201)


@router.get("/Groups/{group_id}", summary="Get a group (RFC 7644 §3.4.1)", responses=ERRORS)
async def get_group(
    group_id: str, request: Request, service: ServiceDep, if_none_match: IfNoneMatch = None
) -> Response:
    """Return a group."""
    resource = await service.get_group(group_id, with_members=_members_wanted(dict(request.query_params)))
    return _conditional(schemas.GROUP_TYPE, resource, request, if_none_match)


@router.put("/Groups/{group_id}", summary="Replace a group (RFC 7644 §3.5.1)", responses=ERRORS, openapi_extra=BODY)
async def replace_group(group_id: str, request: Request, service: ServiceDep, if_match: IfMatch = None) -> Response:
    """Replace a group."""
    resource = await service.replace_group(group_id, await read_json(request), if_match)
    return _resource_response(schemas.GROUP_TYPE, resource, request)


@router.patch("/Groups/{group_id}", summary="Modify a group (RFC 7644 §3.5.2)", responses=ERRORS, openapi_extra=BODY)
async def patch_group(group_id: str, request: Request, service: ServiceDep, if_match: IfMatch = None) -> Response:
    """Modify a group."""
    resource = await service.patch_group(group_id, await read_json(request), if_match)
    return _resource_response(schemas.GROUP_TYPE, resource, request)


@router.delete("/Groups/{group_id}", status_code=204, summary="Delete a group (RFC 7644 §3.6)", responses=ERRORS)
async def delete_group(group_id: str, service: ServiceDep, if_match: IfMatch = None) -> Response:
    """Delete a group."""
    await service.delete_group(group_id, if_match)
    return Response(status_code=204)


# --- root search and bulk ---------------------------------------------------------------------------
@router.post("/.search", summary="Search every resource type (RFC 7644 §3.4.3)", responses=ERRORS, openapi_extra=BODY)
async def search_all(request: Request, service: ServiceDep) -> Response:
    """Query users and groups at once; the page runs over users first, then groups."""
    params = _search_params(await read_json(request))
    q = list_query(params)
    attributes, excluded = _projection(params)
    found: list[Resource] = []
    total = 0
    start, count = q.start_index, q.count
    refused: list[errors.InvalidFilter] = []
    for rt, runner in ((schemas.USER_TYPE, service.list_users), (schemas.GROUP_TYPE, service.list_groups)):
        try:
            sub_total, _ = await runner(ListQuery(filter=q.filter, count=0))
        except errors.InvalidFilter as exc:
            # An attribute this resource type lacks matches none of its resources (RFC 7644 §3.4.2:
            # a root query covers every type "subject to filtering"); a filter no type knows is an error.
            refused.append(exc)
            continue
        offset = max(start - 1 - total, 0)
        want = (100 if count is None else min(max(count, 0), 1000)) - len(found)
        if want > 0 and offset < sub_total:
            _, page = await runner(
                ListQuery(
                    filter=q.filter, sort_by=q.sort_by, sort_order=q.sort_order, start_index=offset + 1, count=want
                )
            )
            found.extend(project(rt, r, attributes=attributes, excluded=excluded) for r in page)
        total += sub_total
    if len(refused) == 2:
        raise refused[0]
    body = {
        "schemas": [discovery.LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": len(found),
        "Resources": found,
    }
    return scim_json(body)


@router.post("/Bulk", summary="Bulk operations (RFC 7644 §3.7)", responses=ERRORS, openapi_extra=BODY)
async def bulk(request: Request, ctx: ContextDep, service: ServiceDep, background: BackgroundTasks) -> Response:
    """Run up to ``maxOperations`` operations; 413 before anything runs when over the advertised limits."""
    body = await read_json(request, limit=discovery.BULK_MAX_PAYLOAD)
    answer = await run_bulk(service, body)
    created = sum(1 for op in answer["Operations"] if op.get("status") == "201")
    # After the response (so after the commit): refresh planner statistics once enough rows arrived.
    background.add_task(ctx.statistics.inserted, ("user", "user_value"), created)
    return scim_json(answer)


def _search_params(body: dict[str, Any]) -> dict[str, Any]:
    """Check a SearchRequest (RFC 7644 §3.4.3) and return its parameters."""
    declared = body.get("schemas")
    if not isinstance(declared, list) or SEARCH_SCHEMA not in declared:
        raise errors.InvalidSyntax(f"a search request must declare {SEARCH_SCHEMA}")
    return {key: value for key, value in body.items() if key != "schemas"}


def _conditional(rt: schemas.ResourceType, resource: Resource, request: Request, if_none_match: str | None) -> Response:
    if if_none_match is not None:
        # RFC 7232 §3.2 (weak comparison): "*" or any listed tag of the current version is 304.
        wanted = parse_etag(if_none_match)
        current = parse_etag(resource["meta"]["version"]) or set()
        if wanted is None or wanted & current:
            return Response(status_code=304, headers={"etag": resource["meta"]["version"]})
    return _resource_response(rt, resource, request)


# The methods each endpoint takes; the routes above serve them, so a request that reaches the catch-all
# with a known path used another method (RFC 9110 §15.5.6: 405 with ``Allow``).
_ENDPOINT_METHODS = (
    (re.compile(r"ServiceProviderConfig"), "GET"),
    (re.compile(r"(ResourceTypes|Schemas)(/[^/]+)?"), "GET"),
    (re.compile(r"(Users|Groups)"), "GET, POST"),
    (re.compile(r"((Users|Groups)/)?\.search|Bulk"), "POST"),
    (re.compile(r"(Users|Groups)/[^/]+"), "GET, PUT, PATCH, DELETE"),
)


@router.api_route(
    "/{rest:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def unknown(rest: str) -> Response:
    """Answer other methods on SCIM endpoints with 405, and unknown SCIM paths with a SCIM 404.

    ``/Me`` is answered 501: RFC 7644 §3.11 asks a provider without it to say so (callers of this service
    are HR systems, not the people themselves).
    """
    path = rest.rstrip("/")
    if path == "Me" or path.startswith("Me/"):
        raise errors.NotImplementedOperation("/Me is not supported: this SCIM service serves provisioning clients")
    for pattern, allowed in _ENDPOINT_METHODS:
        if pattern.fullmatch(path):
            raise errors.MethodNotAllowed(f"/{path[:100]} takes {allowed}", headers={"allow": allowed})
    raise errors.NotFound(f"no SCIM endpoint at /{rest[:100]}")


# RFC 7644 §3.13: a version segment before the endpoint names the protocol version, and a service
# provider "MUST perform the operation using the desired version or reject the request".
versions = APIRouter(prefix="/scim", include_in_schema=False, route_class=ScimRoute)
_VERSION_SEGMENT = re.compile(r"v\d{1,9}")
_ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@versions.api_route("/{version}", methods=_ANY_METHOD)
@versions.api_route("/{version}/{rest:path}", methods=_ANY_METHOD)
async def other_version(version: str) -> Response:
    """Refuse SCIM versions other than 2 with 400 ``invalidVers``; anything else here is a SCIM 404."""
    if _VERSION_SEGMENT.fullmatch(version) and version != "v2":
        raise errors.InvalidVersion(f"SCIM version {version[1:]} is not supported; this service speaks v2 at /scim/v2")
    raise errors.NotFound("no SCIM endpoint here; the SCIM base URL is /scim/v2")
