"""Who calls the admin API, and what their role lets them do.

Callers present an access token (RFC 6750 §2.1) from a tenant's own token endpoint. The role comes from
the token's scopes, so it follows from the same client registrations and access policies as every other
token (a person gets ``idhub:helpdesk`` at an admin console because a group entitles it):

* ``idhub:admin``    tenant administrator: everything in its own tenant (what ``idhub init`` hands out);
* ``idhub:helpdesk`` helpdesk: people, their sessions and linked accounts; groups read-only; no clients,
  keys, identity providers or policies;
* ``idhub:audit``    auditor: read-only, the audit log and the reports;
* ``idhub:system``   system administrator: every tenant, and tenants themselves; honoured only in a token
  of the system tenant (``IDHUB_SYSTEM_TENANT``, default ``system``).

There are no default credentials: a tenant has an admin only after an operator runs ``idhub init``. A
token of another tenant is not valid here; an object of another tenant is simply not found (404), so
callers cannot probe which tenants or ids exist.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

import orjson

from idhub.admin.problems import NotPermitted, Unauthorized
from idhub.context import AppContext
from idhub.errors import NotFound
from idhub.events import Actor
from idhub.tenants.service import TenantInfo
from idhub.tokens.service import TokenInvalid

MAX_TOKEN_LENGTH = 8192


class Permission(enum.StrEnum):
    """What a route needs; roles are sets of these."""

    USERS_READ = "users:read"
    USERS_WRITE = "users:write"
    GROUPS_READ = "groups:read"
    GROUPS_WRITE = "groups:write"
    SESSIONS = "sessions"
    LINKS = "links"
    CLIENTS = "clients"
    KEYS = "keys"
    PROVISIONING = "provisioning"
    IDENTITY_PROVIDERS = "identity-providers"
    POLICIES = "policies"
    AUDIT_READ = "audit:read"
    REPORTS = "reports"
    TENANT = "tenant"
    TENANTS = "tenants"  # across tenants: the system administrator only


P = Permission
TENANT_ADMIN = frozenset(p for p in Permission if p is not P.TENANTS)
HELPDESK = frozenset({P.USERS_READ, P.USERS_WRITE, P.GROUPS_READ, P.SESSIONS, P.LINKS})
AUDITOR = frozenset({P.AUDIT_READ, P.REPORTS})
SYSTEM = frozenset(Permission)

# scope -> (role name, permissions); a token's permissions are the union over its role scopes.
ROLES: dict[str, tuple[str, frozenset[Permission]]] = {
    "idhub:admin": ("tenant-admin", TENANT_ADMIN),
    "idhub:helpdesk": ("helpdesk", HELPDESK),
    "idhub:audit": ("auditor", AUDITOR),
}
SYSTEM_SCOPE = "idhub:system"
ADMIN_SCOPES = frozenset({*ROLES, SYSTEM_SCOPE})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated admin caller: who, from which tenant, with which roles and permissions."""

    actor: Actor
    home_tenant: TenantInfo
    roles: tuple[str, ...]
    permissions: frozenset[Permission]

    @property
    def is_system(self) -> bool:
        """Tell whether the caller administers every tenant."""
        return P.TENANTS in self.permissions

    def require(self, permission: Permission, tenant: TenantInfo | None = None) -> None:
        """Raise 403 unless the caller holds ``permission``; 404 for a tenant not the caller's own."""
        if tenant is not None and tenant.id != self.home_tenant.id and not self.is_system:
            raise NotFound("unknown tenant")
        if permission not in self.permissions:
            raise NotPermitted()


def bearer(authorization: str | None) -> str:
    """Return the bearer token of an ``Authorization`` header (RFC 6750 §2.1) or raise 401."""
    if not authorization:
        raise Unauthorized()
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH or " " in token:
        raise Unauthorized(error="invalid_request")
    return token


async def authenticate(ctx: AppContext, authorization: str | None) -> Principal:
    """Return the caller of an admin request, or raise 401.

    The token names its issuer; it must be a live access token of that tenant (signature, expiry,
    revocation: :meth:`TokenService.validate_access_token`). Which tenants it may act on is decided per
    route (:meth:`Principal.require`): its own, or every tenant for the system administrator. A token
    without any admin scope is valid but permits nothing (403 on every route).
    """
    token = bearer(authorization)
    home = await _issuer_tenant(ctx, token)
    claims = await _validate(ctx, home, token) if home is not None else None
    if claims is None or home is None:
        raise Unauthorized("the access token is not valid", error="invalid_token")
    return principal_of(claims, home, is_system_tenant=home.slug == ctx.settings.system_tenant)


async def _issuer_tenant(ctx: AppContext, token: str) -> TenantInfo | None:
    """Return the tenant whose issuer the token names (read unverified: the signature is checked next)."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > MAX_TOKEN_LENGTH:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    prefix = ctx.settings.public_url.rstrip("/") + "/tenants/"
    if not isinstance(issuer, str) or not issuer.startswith(prefix):
        return None
    slug = issuer[len(prefix) :]
    if not slug or "/" in slug or len(slug) > 63:
        return None
    return await ctx.tenants.get(slug)


def principal_of(claims: dict[str, object], home: TenantInfo, *, is_system_tenant: bool) -> Principal:
    """Build the caller from verified claims: a client's own token acts as the client, else as the person."""
    scopes = _scopes(claims)
    roles: list[str] = []
    permissions: set[Permission] = set()
    for scope, (role, granted) in ROLES.items():
        if scope in scopes:
            roles.append(role)
            permissions |= granted
    if is_system_tenant and SYSTEM_SCOPE in scopes:
        roles.append("system-admin")
        permissions |= SYSTEM
    subject, client_id = str(claims.get("sub", "")), str(claims.get("client_id", ""))
    actor = Actor("client", client_id) if subject == client_id else Actor("user", subject)
    return Principal(actor=actor, home_tenant=home, roles=tuple(roles), permissions=frozenset(permissions))


def _scopes(claims: dict[str, object]) -> set[str]:
    return set(str(claims.get("scope", "")).split())


async def _validate(ctx: AppContext, tenant: TenantInfo, token: str) -> dict[str, object] | None:
    try:
        return await ctx.tokens.validate_access_token(tenant=tenant, token=token)
    except TokenInvalid:
        return None
