"""Admin API routes under ``/admin/v1``: authenticate, check the role, call a service, render.

Every route names the permission it needs (:class:`~idhub.admin.auth.Permission`); the role checks,
the tenant's visibility and the problem rendering are the same everywhere. Lists are cursor-paginated
(``limit``, ``cursor`` -> ``next_cursor`` and a ``Link: rel="next"`` header, RFC 8288); single objects
carry an ``ETag``, and updates honour ``If-Match`` (RFC 9110 §13.1.1) atomically.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from idhub.admin import schemas, service
from idhub.admin.auth import Permission, Principal, authenticate
from idhub.admin.pagination import DEFAULT_LIMIT, MAX_LIMIT, page_body
from idhub.admin.problems import PROBLEM_MEDIA_TYPE, AdminRoute, NotPermitted, Problem
from idhub.audit.archive import set_retention
from idhub.backup.archive import export_person, find_person
from idhub.broker.linking import remove_link
from idhub.broker.providers import NewProvider, info_of
from idhub.broker.sync import preview_claims
from idhub.clients.service import create_client, delete_client, get_client, rotate_client_secret, update_client
from idhub.context import AppContext
from idhub.credentials.provisioning import (
    create_provisioning_token,
    list_provisioning_tokens,
    revoke_provisioning_token,
)
from idhub.crypto.keys import rotate_keys
from idhub.deps import ContextDep, UnitOfWorkDep
from idhub.directory import Directory
from idhub.errors import Conflict, NotFound
from idhub.routing import context_of, etag, parse_etag
from idhub.sessions.service import revoke_session
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo, get_or_create_tenant, issuer_for, require_tenant, update_tenant

P = Permission
JSON = "application/json"
_PROBLEM = {"description": "problem (RFC 9457)", "content": {PROBLEM_MEDIA_TYPE: {"schema": {"type": "object"}}}}
ERRORS: dict[int | str, dict[str, Any]] = {status: _PROBLEM for status in (400, 401, 403, 404, 409, 412, 422, 503)}

router = APIRouter(prefix="/admin/v1", tags=["admin"], route_class=AdminRoute, responses=ERRORS)
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="adminBearer",
    description="An access token from the tenant's token endpoint with an admin scope "
    "(idhub:admin, idhub:helpdesk, idhub:audit; idhub:system from the system tenant).",
)
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512)]
IfMatch = Annotated[str | None, Header(alias="if-match")]


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Answer with JSON (datetimes as RFC 3339, UUIDs as strings)."""
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def page_response(request: Request, items: list[dict[str, Any]], next_key: Any) -> Response:
    """Answer with one page, and a ``Link`` to the next (RFC 8288) when there is one."""
    body = page_body(items, next_key)
    headers = {}
    if body["next_cursor"] is not None:
        query = dict(request.query_params)
        query["cursor"] = body["next_cursor"]
        headers["link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'
    return json_response(body, headers=headers)


def expected(if_match: str | None) -> set[int] | None:
    """Return the versions ``If-Match`` allows (``None``: any; no header: any)."""
    return None if if_match is None else parse_etag(if_match)


# --- who is calling ----------------------------------------------------------------------------------
class Call:
    """An authenticated admin request on one tenant: the caller, the tenant, the unit of work."""

    __slots__ = ("ctx", "principal", "tenant", "uow")

    def __init__(self, ctx: AppContext, uow: UnitOfWork, principal: Principal, tenant: TenantInfo) -> None:
        self.ctx = ctx
        self.uow = uow
        self.principal = principal
        self.tenant = tenant

    @property
    def directory(self) -> Directory:
        """Return the directory acting in this request's unit of work."""
        return self.ctx.directory(self.uow)


async def _principal(
    ctx: ContextDep,
    uow: UnitOfWorkDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    request: Request,
) -> Principal:
    del credentials  # declared for the OpenAPI document; the header is parsed strictly by authenticate()
    principal = await authenticate(ctx, request.headers.get("authorization"))
    uow.actor = principal.actor
    return principal


PrincipalDep = Annotated[Principal, Depends(_principal)]


def allow(permission: Permission) -> Callable[..., Awaitable[Call]]:
    """Return the dependency of a tenant route that needs ``permission``."""

    async def dependency(tenant: str, ctx: ContextDep, uow: UnitOfWorkDep, principal: PrincipalDep) -> Call:
        info = await ctx.tenants.get(tenant) if len(tenant) <= 63 else None
        if info is None:
            raise NotFound("unknown tenant")
        principal.require(permission, info)
        return Call(ctx, uow, principal, info)

    return dependency


UsersRead = Annotated[Call, Depends(allow(P.USERS_READ))]
UsersWrite = Annotated[Call, Depends(allow(P.USERS_WRITE))]
GroupsRead = Annotated[Call, Depends(allow(P.GROUPS_READ))]
GroupsWrite = Annotated[Call, Depends(allow(P.GROUPS_WRITE))]
Sessions = Annotated[Call, Depends(allow(P.SESSIONS))]
Links = Annotated[Call, Depends(allow(P.LINKS))]
Clients = Annotated[Call, Depends(allow(P.CLIENTS))]
Keys = Annotated[Call, Depends(allow(P.KEYS))]
Provisioning = Annotated[Call, Depends(allow(P.PROVISIONING))]
AuditRead = Annotated[Call, Depends(allow(P.AUDIT_READ))]
TenantRead = Annotated[Call, Depends(allow(P.TENANT))]
IdentityProviders = Annotated[Call, Depends(allow(P.IDENTITY_PROVIDERS))]
Policies = Annotated[Call, Depends(allow(P.POLICIES))]
Reports = Annotated[Call, Depends(allow(P.REPORTS))]

T = "/tenants/{tenant}"


# --- users -------------------------------------------------------------------------------------------
@router.get(T + "/users", summary="List people", response_model=schemas.Page)
async def users_list(
    request: Request,
    call: UsersRead,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    username_prefix: Annotated[str | None, Query(max_length=255)] = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
    active: bool | None = None,
) -> Response:
    """List the tenant's people by username; filter by username prefix, email or state."""
    items, next_key = await service.list_users(
        call.uow,
        tenant_id=call.tenant.id,
        cursor=cursor,
        limit=limit,
        prefix=username_prefix,
        email=email,
        active=active,
    )
    return page_response(request, items, next_key)


@router.post(T + "/users", summary="Create a person", status_code=201, response_model=schemas.UserOut)
async def users_create(body: schemas.UserCreate, call: UsersWrite) -> Response:
    """Add a person to the directory (the same rules as SCIM and the CLI)."""
    password = body.password.get_secret_value() if body.password is not None else None
    user = await call.directory.users.create(call.tenant.id, service.profile_from(body), password=password)
    await call.uow.session.refresh(user)
    location = f"/admin/v1/tenants/{call.tenant.slug}/users/{user.id}"
    return json_response(service.user_out(user), status=201, headers={"etag": etag(user.version), "location": location})


@router.get(T + "/users/{user_id}", summary="Read a person", response_model=schemas.UserOut)
async def users_get(user_id: str, call: UsersRead) -> Response:
    """Return a person with the groups they belong to, directly and through nested groups."""
    user = await call.directory.users.get(call.tenant.id, service.parse_id(user_id, "user"))
    body = service.user_out(user)
    memberships = (await call.directory.groups.groups_of([user.id])).get(user.id, [])
    body["groups"] = [{"id": str(m.group_id), "name": m.name, "direct": m.direct} for m in memberships]
    return json_response(body, headers={"etag": etag(user.version)})


@router.patch(T + "/users/{user_id}", summary="Change a person", response_model=schemas.UserOut)
async def users_patch(user_id: str, body: schemas.UserPatch, call: UsersWrite, if_match: IfMatch = None) -> Response:
    """Change a person (JSON merge patch); deactivating cuts off every session and token at once."""
    user = await call.directory.users.get(call.tenant.id, service.parse_id(user_id, "user"))
    user = await service.patch_user(call.directory, user, body, expected_versions=expected(if_match))
    await call.uow.session.refresh(user)
    return json_response(service.user_out(user), headers={"etag": etag(user.version)})


@router.delete(T + "/users/{user_id}", summary="Delete a person", status_code=204)
async def users_delete(user_id: str, call: UsersWrite, if_match: IfMatch = None) -> Response:
    """Delete a person: cut off everywhere, kept as an archived record."""
    user = await call.directory.users.get(call.tenant.id, service.parse_id(user_id, "user"))
    await call.directory.users.delete(user, expected_versions=expected(if_match))
    return Response(status_code=204)


@router.get(T + "/users/{user_id}/export", summary="Export a person's data (GDPR Art. 15/20)")
async def users_export(user_id: str, call: UsersRead) -> Response:
    """Return everything held about a person, deleted (archived) ones included, as one JSON document; audited."""
    tenant = await require_tenant(call.uow.session, call.tenant.slug)
    person = await find_person(call.uow, tenant_id=call.tenant.id, user_id=service.parse_id(user_id, "user"))
    document = await export_person(call.uow, tenant=tenant, user=person)
    disposition = f'attachment; filename="user-{person.id}.json"'
    return json_response(document, headers={"cache-control": "no-store", "content-disposition": disposition})


@router.get(T + "/archived-users", summary="List archived (deleted) people", response_model=schemas.Page)
async def archived_users_list(
    request: Request, call: UsersRead, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> Response:
    """List deleted people's archived records, most recently deleted first (kept until the retention ends)."""
    items, next_key = await service.list_archived_users(call.uow, tenant_id=call.tenant.id, cursor=cursor, limit=limit)
    return page_response(request, items, next_key)


# --- groups ------------------------------------------------------------------------------------------
@router.get(T + "/groups", summary="List groups", response_model=schemas.Page)
async def groups_list(
    request: Request,
    call: GroupsRead,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    name_prefix: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    """List the tenant's groups by name."""
    items, next_key = await service.list_groups(
        call.uow, tenant_id=call.tenant.id, cursor=cursor, limit=limit, prefix=name_prefix
    )
    return page_response(request, items, next_key)


@router.post(T + "/groups", summary="Create a group", status_code=201, response_model=schemas.GroupOut)
async def groups_create(body: schemas.GroupCreate, call: GroupsWrite) -> Response:
    """Create a group."""
    group = await call.directory.groups.create(call.tenant.id, name=body.name, external_id=body.external_id)
    await call.uow.session.refresh(group)
    return json_response(service.group_out(group), status=201, headers={"etag": etag(group.version)})


@router.get(T + "/groups/{group_id}", summary="Read a group", response_model=schemas.GroupOut)
async def groups_get(group_id: str, call: GroupsRead) -> Response:
    """Return a group with its direct members."""
    group = await call.directory.groups.get(call.tenant.id, service.parse_id(group_id, "group"))
    body = service.group_out(group)
    members = await call.directory.groups.members_of(group.id)
    body["members"] = [{"type": m.kind, "id": str(m.id), "display": m.name} for m in members]
    return json_response(body, headers={"etag": etag(group.version)})


@router.patch(T + "/groups/{group_id}", summary="Change a group", response_model=schemas.GroupOut)
async def groups_patch(
    group_id: str, body: schemas.GroupPatch, call: GroupsWrite, if_match: IfMatch = None
) -> Response:
    """Rename a group or change its external id."""
    groups = call.directory.groups
    group = await groups.get(call.tenant.id, service.parse_id(group_id, "group"))
    sent = body.model_fields_set
    group = await groups.update(
        group,
        name=body.name if "name" in sent and body.name else group.display_name,
        external_id=body.external_id if "external_id" in sent else group.external_id,
        expected_versions=expected(if_match),
    )
    await call.uow.session.refresh(group)
    return json_response(service.group_out(group), headers={"etag": etag(group.version)})


@router.delete(T + "/groups/{group_id}", summary="Delete a group", status_code=204)
async def groups_delete(group_id: str, call: GroupsWrite, if_match: IfMatch = None) -> Response:
    """Delete a group (its memberships go with it)."""
    group = await call.directory.groups.get(call.tenant.id, service.parse_id(group_id, "group"))
    await call.directory.groups.delete(group, expected_versions=expected(if_match))
    return Response(status_code=204)


@router.post(T + "/groups/{group_id}/members", summary="Add members", status_code=204)
async def groups_add_members(group_id: str, body: schemas.MemberChange, call: GroupsWrite) -> Response:
    """Add people and groups to a group (already members stay)."""
    groups = call.directory.groups
    group = await groups.get(call.tenant.id, service.parse_id(group_id, "group"))
    members = await _members(call, body)
    await groups.add_members(group, members)
    return Response(status_code=204)


@router.delete(T + "/groups/{group_id}/members/{member_id}", summary="Remove a member", status_code=204)
async def groups_remove_member(group_id: str, member_id: str, call: GroupsWrite) -> Response:
    """Remove a person or a nested group from a group."""
    groups = call.directory.groups
    group = await groups.get(call.tenant.id, service.parse_id(group_id, "group"))
    wanted = service.parse_id(member_id, "member")
    current = {m.id for m in await groups.members_of(group.id)}
    if wanted not in current:
        raise NotFound("member not found")
    members = await groups.resolve_members(call.tenant.id, [(None, wanted)])
    await groups.remove_members(group, members)
    return Response(status_code=204)


async def _members(call: Call, body: schemas.MemberChange) -> Any:
    refs: list[tuple[str | None, uuid.UUID]] = [("User", service.parse_id(v, "user")) for v in body.users]
    refs += [("Group", service.parse_id(v, "group")) for v in body.groups]
    return await call.directory.groups.resolve_members(call.tenant.id, refs)


# --- clients -----------------------------------------------------------------------------------------
@router.get(T + "/clients", summary="List clients", response_model=schemas.Page)
async def clients_list(
    request: Request, call: Clients, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> Response:
    """List the tenant's OAuth clients (never their secrets)."""
    items, next_key = await service.list_clients(call.uow, tenant_id=call.tenant.id, cursor=cursor, limit=limit)
    return page_response(request, items, next_key)


@router.post(T + "/clients", summary="Register a client", status_code=201, response_model=schemas.ClientSecretOut)
async def clients_create(body: schemas.ClientCreate, call: Clients) -> Response:
    """Register a client; its secret (if it has one) is in this answer only, and stored only as a hash."""
    _check_admin_scopes(call, body.scope)
    client, secret = await create_client(
        call.uow,
        tenant_id=call.tenant.id,
        name=body.name,
        hasher=call.ctx.secret_hasher,
        redirect_uris=body.redirect_uris,
        grant_types=list(body.grant_types) if body.grant_types is not None else None,
        scope=body.scope,
        public=body.token_endpoint_auth_method == "none",
        token_endpoint_auth_method=body.token_endpoint_auth_method,
        post_logout_redirect_uris=body.post_logout_redirect_uris,
        backchannel_logout_uri=body.backchannel_logout_uri,
        resources=body.resources,
        access_token_alg=body.access_token_alg,
        jwks=body.jwks,
        jwks_uri=body.jwks_uri,
        first_party=body.first_party,
        application_type=body.application_type,
        # Private hosts are reachable only from inside: system administrators alone may register them.
        allow_private_jwks_uri=call.principal.is_system,
        allow_private_backchannel=call.principal.is_system,
    )
    await call.uow.session.refresh(client)
    out = service.client_out(client) | {"client_secret": secret}
    return json_response(out, status=201, headers={"etag": service.client_etag(client), "cache-control": "no-store"})


@router.get(T + "/clients/{client_id}", summary="Read a client", response_model=schemas.ClientOut)
async def clients_get(client_id: str, call: Clients) -> Response:
    """Return a client's registration."""
    client = await get_client(call.uow, tenant_id=call.tenant.id, client_id=client_id)
    return json_response(service.client_out(client), headers={"etag": service.client_etag(client)})


@router.patch(T + "/clients/{client_id}", summary="Change a client", response_model=schemas.ClientOut)
async def clients_patch(client_id: str, body: schemas.ClientPatch, call: Clients, if_match: IfMatch = None) -> Response:
    """Change a client's registration (checked as a whole, as at registration); disabling cuts it off."""
    client = await get_client(call.uow, tenant_id=call.tenant.id, client_id=client_id)
    await service.check_unchanged(call.uow, client, if_match)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    for name in ("name", "redirect_uris", "post_logout_redirect_uris", "grant_types", "resources", "first_party"):
        if name in changes and changes[name] is None:
            raise Problem(422, f"{name} cannot be null", kind="invalid")
    if "enabled" in changes and changes["enabled"] is None:
        raise Problem(422, "enabled cannot be null", kind="invalid")
    if "scope" in changes:
        _check_admin_scopes(call, changes["scope"])
    client = await update_client(call.uow, client, changes, token_lifetime=call.ctx.settings.tokens.access_token_ttl)
    await call.uow.session.refresh(client)
    return json_response(service.client_out(client), headers={"etag": service.client_etag(client)})


@router.delete(T + "/clients/{client_id}", summary="Delete a client", status_code=204)
async def clients_delete(client_id: str, call: Clients, if_match: IfMatch = None) -> Response:
    """Remove a client; its grants and tokens stop working at once."""
    client = await get_client(call.uow, tenant_id=call.tenant.id, client_id=client_id)
    await service.check_unchanged(call.uow, client, if_match)
    await delete_client(call.uow, client, token_lifetime=call.ctx.settings.tokens.access_token_ttl)
    return Response(status_code=204)


@router.post(
    T + "/clients/{client_id}/secret", summary="Rotate a client's secret", response_model=schemas.ClientSecretOut
)
async def clients_rotate_secret(client_id: str, call: Clients) -> Response:
    """Give a client a new secret, shown in this answer only; the old one stops working."""
    client = await get_client(call.uow, tenant_id=call.tenant.id, client_id=client_id)
    secret = await rotate_client_secret(call.uow, client, hasher=call.ctx.secret_hasher)
    await call.uow.session.refresh(client)
    out = service.client_out(client) | {"client_secret": secret}
    return json_response(out, headers={"etag": service.client_etag(client), "cache-control": "no-store"})


def _check_admin_scopes(call: Call, scope: str | None) -> None:
    service.check_grantable_scopes(
        call.principal, scope, in_system_tenant=call.tenant.slug == call.ctx.settings.system_tenant
    )


# --- provisioning tokens -----------------------------------------------------------------------------
@router.get(T + "/provisioning-tokens", summary="List provisioning tokens")
async def tokens_list(call: Provisioning) -> Response:
    """List the tenant's SCIM provisioning tokens (never the tokens)."""
    rows = await list_provisioning_tokens(call.uow, tenant_id=call.tenant.id)
    items = [{"id": str(r.id), "name": r.name, "created_at": r.created_at, "revoked_at": r.revoked_at} for r in rows]
    return json_response({"items": items, "next_cursor": None})


@router.post(
    T + "/provisioning-tokens",
    summary="Create a provisioning token",
    status_code=201,
    response_model=schemas.ProvisioningTokenSecretOut,
)
async def tokens_create(body: schemas.ProvisioningTokenCreate, call: Provisioning) -> Response:
    """Create a SCIM bearer token; it is in this answer only, and stored only as a keyed hash."""
    row, token = await create_provisioning_token(
        call.uow, tenant_id=call.tenant.id, name=body.name, hasher=call.ctx.secret_hasher
    )
    out = {"id": str(row.id), "name": row.name, "created_at": row.created_at, "revoked_at": None, "token": token}
    return json_response(out, status=201, headers={"cache-control": "no-store"})


@router.delete(T + "/provisioning-tokens/{token_id}", summary="Revoke a provisioning token", status_code=204)
async def tokens_revoke(token_id: str, call: Provisioning) -> Response:
    """Revoke a provisioning token; every process refuses it from now on."""
    await revoke_provisioning_token(
        call.uow, tenant_id=call.tenant.id, token_id=service.parse_id(token_id, "provisioning token")
    )
    return Response(status_code=204)


# --- sessions and links ------------------------------------------------------------------------------
@router.get(T + "/sessions", summary="List SSO sessions", response_model=schemas.Page)
async def sessions_list(
    request: Request,
    call: Sessions,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
    include_ended: bool = False,
) -> Response:
    """List SSO sessions (live ones unless ``include_ended``), optionally one person's."""
    uid = service.parse_id(user_id, "user") if user_id is not None else None
    items, next_key = await service.list_sessions(
        call.uow, tenant_id=call.tenant.id, cursor=cursor, limit=limit, user_id=uid, include_ended=include_ended
    )
    return page_response(request, items, next_key)


@router.delete(T + "/sessions/{session_id}", summary="End an SSO session", status_code=204)
async def sessions_revoke(session_id: str, call: Sessions) -> Response:
    """End a session and the grants made in it."""
    if len(session_id) > 64:
        raise NotFound("session not found")
    await revoke_session(call.uow, tenant_id=call.tenant.id, session_id=session_id)
    return Response(status_code=204)


@router.get(T + "/links", summary="List linked accounts", response_model=schemas.Page)
async def links_list(
    request: Request,
    call: Links,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """List links between people and their upstream (corporate or social) accounts, newest first."""
    uid = service.parse_id(user_id, "user") if user_id is not None else None
    items, next_key = await service.list_links(
        call.uow, tenant_id=call.tenant.id, cursor=cursor, limit=limit, user_id=uid
    )
    return page_response(request, items, next_key)


@router.delete(T + "/links/{link_id}", summary="Unlink an upstream account", status_code=204)
async def links_delete(link_id: str, call: Links) -> Response:
    """Remove a link; the sessions it started end."""
    await remove_link(call.uow, tenant_id=call.tenant.id, link_id=service.parse_id(link_id, "link"), how="admin")
    return Response(status_code=204)


# --- access policies and the entitlement report ------------------------------------------------------
@router.get(T + "/policies", summary="List access policies")
async def policies_list(
    call: Policies,
    client_id: Annotated[str | None, Query(max_length=64)] = None,
    group_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """List which groups (or clients themselves) get which scopes at which client."""
    gid = service.parse_id(group_id, "group") if group_id is not None else None
    listed = await call.directory.entitlements.list(call.tenant.id, client_id=client_id, group_id=gid)
    return json_response({"items": [p.to_dict() for p in listed], "next_cursor": None})


@router.post(T + "/policies", summary="Create an access policy", status_code=201)
async def policies_create(body: schemas.PolicyCreate, call: Policies) -> Response:
    """Entitle a group (or the client itself, ``machine``) to scopes at a client; governs the client from now on."""
    if body.machine == (body.group_id is not None):
        raise Problem(422, "name a group_id, or set machine for the client's own policy (not both)", kind="invalid")
    gid = service.parse_id(body.group_id, "group") if body.group_id is not None else None
    created = await call.directory.entitlements.create(
        call.tenant.id, client_id=body.client_id, group_id=gid, scopes=body.scope
    )
    return json_response(created.to_dict(), status=201)


@router.get(T + "/policies/{policy_id}", summary="Read an access policy")
async def policies_get(policy_id: str, call: Policies) -> Response:
    """Return one access policy."""
    pid = service.parse_id(policy_id, "policy")
    found = await call.directory.entitlements.get(call.tenant.id, pid)
    return json_response(found.to_dict(), headers={"etag": service.change_etag(found)})


@router.patch(T + "/policies/{policy_id}", summary="Change an access policy's scopes")
async def policies_patch(
    policy_id: str, body: schemas.PolicyPatch, call: Policies, if_match: IfMatch = None
) -> Response:
    """Replace a policy's scopes; refresh tokens carrying a scope someone loses are revoked at once."""
    pid = service.parse_id(policy_id, "policy")
    if if_match is not None:
        row = await service.policy_row(call.uow, tenant_id=call.tenant.id, policy_id=pid)
        await service.check_unchanged(call.uow, row, if_match)
    changed = await call.directory.entitlements.update(call.tenant.id, pid, scopes=body.scope)
    return json_response(changed.to_dict())


@router.delete(T + "/policies/{policy_id}", summary="Delete an access policy", status_code=204)
async def policies_delete(policy_id: str, call: Policies, if_match: IfMatch = None) -> Response:
    """Delete a policy; what it entitled is revoked from those who held it through it alone."""
    pid = service.parse_id(policy_id, "policy")
    if if_match is not None:
        row = await service.policy_row(call.uow, tenant_id=call.tenant.id, policy_id=pid)
        await service.check_unchanged(call.uow, row, if_match)
    await call.directory.entitlements.delete(call.tenant.id, pid)
    return Response(status_code=204)


@router.get(T + "/reports/entitlements", summary="Who can obtain which scopes, and through which group")
async def report_entitlements(
    call: Reports,
    client_id: Annotated[str | None, Query(max_length=64)] = None,
    people: bool = False,
) -> Response:
    """Report, per client, the scopes each group entitles and (``people``) every person's scopes and groups."""
    report = await call.directory.entitlements.report(call.tenant.id, client_id=client_id, people=people)
    return json_response(report.to_dict())


# --- keys and audit ----------------------------------------------------------------------------------
@router.get(T + "/keys", summary="List signing keys")
async def keys_list(call: Keys) -> Response:
    """List the tenant's signing keys: public parts and lifecycle (next, active, retired), and the schedule."""
    items = await service.list_keys(call.uow, tenant_id=call.tenant.id)
    return json_response({"items": items, "next_cursor": None, "rotation": service.rotation_of(call.tenant, items)})


@router.post(T + "/keys/rotate", summary="Rotate signing keys")
async def keys_rotate(call: Keys) -> Response:
    """Make the next keys active, retire the active ones (published until their tokens expire)."""
    ttl = max(call.ctx.settings.tokens.access_token_ttl, call.ctx.settings.tokens.id_token_ttl)
    activated = await rotate_keys(
        call.uow, tenant_id=call.tenant.id, sealer=call.ctx.sealer, max_token_lifetime=timedelta(seconds=ttl)
    )
    return json_response({"activated": activated})


@router.get(T + "/audit", summary="Read the audit log", response_model=schemas.Page)
async def audit_list(
    request: Request,
    call: AuditRead,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor_id: Annotated[str | None, Query(max_length=255)] = None,
    target_id: Annotated[str | None, Query(max_length=255)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Response:
    """List audit entries, newest first; filter by action, actor, target and time."""
    items, next_key = await service.list_audit(
        call.uow,
        tenant_id=call.tenant.id,
        cursor=cursor,
        limit=limit,
        action=action,
        actor_id=actor_id,
        target_id=target_id,
        since=since,
        until=until,
    )
    return page_response(request, items, next_key)


# --- identity providers ------------------------------------------------------------------------------
@router.get(T + "/identity-providers", summary="List upstream identity providers")
async def idps_list(call: IdentityProviders) -> Response:
    """List the tenant's upstream identity providers (never their secrets)."""
    listed = await call.ctx.broker.providers(call.uow).list(call.tenant.id)
    return json_response({"items": [p.describe(call.tenant.issuer) for p in listed], "next_cursor": None})


@router.post(T + "/identity-providers", summary="Add an upstream identity provider", status_code=201)
async def idps_create(body: schemas.IdentityProviderCreate, call: IdentityProviders) -> Response:
    """Add an upstream; the answer holds the URLs to register with it (callback, or SAML ACS and metadata)."""
    if body.internal and not call.principal.is_system:
        # Private and loopback addresses are reachable only from inside: a tenant admin could aim the
        # server's fetches at them (server-side request forgery). Operators and system admins only.
        raise NotPermitted("only a system administrator may allow private addresses (internal)")
    new = NewProvider(
        alias=body.alias,
        type=body.type,
        issuer=body.issuer,
        client_id=body.client_id,
        client_secret=body.client_secret.get_secret_value() if body.client_secret else None,
        metadata_xml=body.metadata_xml.encode() if body.metadata_xml is not None else None,
        metadata_url=body.metadata_url,
        internal=body.internal,
        jit=body.jit,
        display_name=body.display_name,
        email_domains=tuple(body.email_domains),
        link_claim=body.link_claim,
        tenant_issuer=call.tenant.issuer,
        allow_idp_initiated=body.allow_idp_initiated,
        userinfo=body.userinfo,
        mapping=orjson.dumps(body.mapping) if body.mapping is not None else None,
    )
    created = await call.ctx.broker.providers(call.uow).create(call.tenant.id, new)
    return json_response(created.describe(call.tenant.issuer), status=201)


@router.get(T + "/identity-providers/{alias}", summary="Read an upstream identity provider")
async def idps_get(alias: str, call: IdentityProviders) -> Response:
    """Return one upstream's settings and URLs (never its secret)."""
    row = await service.provider_row(call.uow, tenant_id=call.tenant.id, alias=alias)
    return json_response(info_of(row).describe(call.tenant.issuer), headers={"etag": service.change_etag(row)})


@router.patch(T + "/identity-providers/{alias}", summary="Change an upstream identity provider")
async def idps_patch(
    alias: str, body: schemas.IdentityProviderPatch, call: IdentityProviders, if_match: IfMatch = None
) -> Response:
    """Change an upstream's settings (a new SAML metadata document is a certificate rollover)."""
    if if_match is not None:
        row = await service.provider_row(call.uow, tenant_id=call.tenant.id, alias=alias)
        await service.check_unchanged(call.uow, row, if_match)
    sent = body.model_fields_set
    changed = await call.ctx.broker.providers(call.uow).update(
        call.tenant.id,
        alias,
        enabled=body.enabled,
        jit=body.jit,
        display_name=body.display_name,
        client_secret=body.client_secret.get_secret_value() if body.client_secret else None,
        email_domains=body.email_domains,
        link_claim=("" if body.link_claim is None else body.link_claim) if "link_claim" in sent else None,
        mapping=orjson.dumps(body.mapping) if body.mapping is not None else None,
        clear_mapping="mapping" in sent and body.mapping is None,
        metadata_xml=body.metadata_xml.encode() if body.metadata_xml is not None else None,
        metadata_url=body.metadata_url,
        allow_idp_initiated=body.allow_idp_initiated,
        userinfo=body.userinfo,
    )
    return json_response(changed.describe(call.tenant.issuer))


@router.delete(T + "/identity-providers/{alias}", summary="Remove an upstream identity provider", status_code=204)
async def idps_delete(alias: str, call: IdentityProviders, if_match: IfMatch = None) -> Response:
    """Remove an upstream with its links; the sessions that came through it end now."""
    if if_match is not None:
        row = await service.provider_row(call.uow, tenant_id=call.tenant.id, alias=alias)
        await service.check_unchanged(call.uow, row, if_match)
    await call.ctx.broker.providers(call.uow).delete(call.tenant.id, alias)
    return Response(status_code=204)


@router.post(T + "/identity-providers/{alias}/preview", summary="Preview an upstream's mapping")
async def idps_preview(alias: str, sample: dict[str, Any], call: IdentityProviders) -> Response:
    """Return what a sign-in with this sample assertion would map, link and change; nothing is changed."""
    try:
        provider = await call.ctx.broker.providers(call.uow).get(call.tenant.id, alias)
        preview = await preview_claims(
            call.uow, directory=call.directory, provider=provider, sample=orjson.dumps(sample)
        )
    finally:
        await call.uow.rollback()  # read-only, whatever happened above
    return json_response({"alias": provider.alias, **preview.describe()})


# --- tenants -----------------------------------------------------------------------------------------
def tenant_out(tenant: TenantInfo) -> dict[str, Any]:
    """Return a tenant as the admin API shows it."""
    return {
        "id": str(tenant.id),
        "slug": tenant.slug,
        "name": tenant.name,
        "issuer": tenant.issuer,
        "settings": tenant.settings,
    }


@router.get(T, summary="Read the tenant")
async def tenant_get(call: TenantRead) -> Response:
    """Return the tenant's name, issuer and settings."""
    return json_response(tenant_out(call.tenant))


@router.patch(T, summary="Change the tenant")
async def tenant_patch(body: schemas.TenantPatch, call: TenantRead) -> Response:
    """Change the tenant's name, default access-token algorithm or key rotation schedule."""
    extra: dict[str, Any] = {}
    if "key_rotation_days" in body.model_fields_set:
        extra["key_rotation_days"] = body.key_rotation_days
    tenant = await update_tenant(
        call.uow, slug=call.tenant.slug, name=body.name, access_token_alg=body.access_token_alg, **extra
    )
    if "audit_retention_days" in body.model_fields_set:
        days = body.audit_retention_days
        inherit = days == "default"
        tenant = await set_retention(
            call.uow, slug=call.tenant.slug, days=None if inherit or days is None else int(days), inherit=inherit
        )
    shown = tenant_out(call.tenant) | {"name": tenant.name, "settings": dict(tenant.settings or {})}
    return json_response(shown)


@router.get("/tenants", summary="List tenants (system administrators)", response_model=schemas.Page)
async def tenants_list(
    request: Request,
    principal: PrincipalDep,
    call_uow: UnitOfWorkDep,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Response:
    """List every tenant by slug."""
    principal.require(P.TENANTS)
    items, next_key = await service.list_tenants(call_uow, cursor=cursor, limit=limit, public_url=_public(request))
    return page_response(request, items, next_key)


@router.post("/tenants", summary="Create a tenant (system administrators)", status_code=201)
async def tenants_create(
    body: schemas.TenantCreate, ctx: ContextDep, principal: PrincipalDep, uow: UnitOfWorkDep
) -> Response:
    """Create a tenant with its first signing keys; its administrator comes from ``idhub init`` or this API."""
    principal.require(P.TENANTS)
    tenant, created = await get_or_create_tenant(uow, slug=body.slug, sealer=ctx.sealer, name=body.name)
    if not created:
        raise Conflict("a tenant with this slug exists")
    out = {"id": str(tenant.id), "slug": tenant.slug, "name": tenant.name}
    return json_response(out | {"issuer": issuer_for(ctx.settings.public_url, tenant.slug)}, status=201)


def _public(request: Request) -> str:
    return str(context_of(request).settings.public_url)
