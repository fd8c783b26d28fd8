"""What the admin routes call: the directory, client, credential, key and audit services, plus the reads.

The rules live in the domain services (:mod:`idhub.directory`, :mod:`idhub.clients.service`, ...); this
module turns admin requests into their calls and their results into the API's JSON, and holds the list
queries (keyset pagination on indexed columns, so a page costs the same at any depth).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, func, or_, select, update

from idhub.admin.auth import ADMIN_SCOPES, SYSTEM_SCOPE, Principal
from idhub.admin.pagination import decode_cursor
from idhub.admin.problems import NotPermitted, Problem
from idhub.admin.schemas import UserCreate, UserPatch
from idhub.crypto.rotation import rotation_days
from idhub.directory import Directory
from idhub.directory.entitlements import PolicyView
from idhub.directory.profile import PROFILE_COLUMNS, UserProfile, ValueRecord
from idhub.directory.users import KEEP_PASSWORD
from idhub.errors import NotFound, PreconditionFailed
from idhub.storage.base import utcnow
from idhub.storage.models import (
    AccessPolicy,
    AuditEvent,
    Client,
    FederatedIdentity,
    Group,
    IdentityProvider,
    SigningKey,
    Tenant,
    User,
    UserSession,
)
from idhub.storage.uow import UnitOfWork
from idhub.tenants.service import TenantInfo, issuer_for

T = TypeVar("T")
PROFILE_FIELDS = tuple(name for name in PROFILE_COLUMNS if name in UserPatch.model_fields)


def _page(rows: Sequence[T], limit: int) -> tuple[Sequence[T], T | None]:
    """Cut a keyset query's ``limit + 1`` rows to the page; return it and its last row when more follow."""
    return rows[:limit], (rows[limit - 1] if len(rows) > limit else None)


def parse_id(value: str, what: str) -> uuid.UUID:
    """Return ``value`` as a UUID; a malformed id names nothing, so it is :class:`NotFound` (404)."""
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise NotFound(f"{what} not found") from exc


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


# --- users -------------------------------------------------------------------------------------------
def user_out(user: User) -> dict[str, Any]:
    """Return a person as the admin API shows them."""
    out: dict[str, Any] = {
        "id": str(user.id),
        "username": user.user_name or user.username,
        "email": user.email,
        "email_verified": bool(user.email_verified),
        "active": bool(user.enabled),
        "created_at": user.created_at,
        "updated_at": user.updated_at,
        "version": user.version,
    }
    for name in PROFILE_FIELDS:
        out[name] = getattr(user, name)
    return out


async def list_users(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    cursor: str | None,
    limit: int,
    prefix: str | None = None,
    email: str | None = None,
    active: bool | None = None,
) -> tuple[list[dict[str, Any]], tuple[str] | None]:
    """Return a page of live people ordered by username (case-folded, unique), and the next page's key."""
    after = decode_cursor(cursor, parts=1)
    query = select(User).where(User.tenant_id == tenant_id, User.deleted_at.is_(None))
    if after is not None:
        query = query.where(User.username > after[0])
    if prefix:
        query = query.where(User.username.like(_like_prefix(prefix.casefold()), escape="\\"))
    if email:
        query = query.where(func.lower(User.email) == email.lower())  # ix_user_tenant_email_lower
    if active is True:
        query = query.where(User.enabled.is_(True))
    elif active is False:
        query = query.where(or_(User.enabled.is_(False), User.enabled.is_(None)))
    rows = (await uow.session.scalars(query.order_by(User.username).limit(limit + 1))).all()
    rows, last = _page(rows, limit)
    return [user_out(user) for user in rows], ((last.username,) if last else None)


async def list_archived_users(
    uow: UnitOfWork, *, tenant_id: uuid.UUID, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """Return a page of deleted people's archived records, most recently deleted first."""
    after = decode_cursor(cursor, parts=2)
    query = select(User).where(User.tenant_id == tenant_id, User.deleted_at.is_not(None))
    if after is not None:
        moment, last_id = _time_key(after)
        query = query.where(or_(User.deleted_at < moment, and_(User.deleted_at == moment, User.id < last_id)))
    query = query.order_by(User.deleted_at.desc(), User.id.desc()).limit(limit + 1)
    rows, last = _page((await uow.session.scalars(query)).all(), limit)
    items = [
        {
            "id": str(user.id),
            "username": user.user_name or user.username,
            "deleted_at": user.deleted_at,
            "deleted_by": user.deleted_by,
            "archive": user.archive,
        }
        for user in rows
    ]
    return items, ((_iso(last.deleted_at), str(last.id)) if last is not None else None)


def _iso(moment: datetime | None) -> str:
    assert moment is not None
    return moment.isoformat()


def profile_from(body: UserCreate) -> UserProfile:
    """Build the profile of a new person from the request."""
    values: tuple[ValueRecord, ...] = ()
    if body.email:
        values = (ValueRecord(attribute="emails", value=body.email, type="work", primary=True),)
    columns = {name: getattr(body, name) for name in PROFILE_FIELDS}
    return UserProfile(user_name=body.username, active=body.active, values=values, **columns)


async def patch_user(directory: Directory, user: User, body: UserPatch, *, expected_versions: set[int] | None) -> User:
    """Apply a merge patch to a person through the directory (one rule set with SCIM and the CLI)."""
    sent = body.model_fields_set
    current = await directory.users.profile_of(user)
    changes: dict[str, Any] = {name: getattr(body, name) for name in PROFILE_FIELDS if name in sent}
    if "username" in sent and body.username is not None:
        changes["user_name"] = body.username
    if "active" in sent and body.active is not None:
        changes["active"] = body.active
    if "email" in sent:
        changes["values"] = _with_email(current.values, user.email, body.email)
    profile = replace(current, **changes)
    password: Any = KEEP_PASSWORD if "password" not in sent else _secret(body)
    return await directory.users.update(user, profile, password=password, expected_versions=expected_versions)


def _secret(body: UserPatch) -> str | None:
    return body.password.get_secret_value() if body.password is not None else None


def _with_email(values: tuple[ValueRecord, ...], old: str | None, new: str | None) -> tuple[ValueRecord, ...]:
    """Return ``values`` with the person's address ``old`` replaced by ``new`` (removed when ``None``)."""
    rest = tuple(v for v in values if not (v.attribute == "emails" and old is not None and v.value == old))
    if new is None:
        return rest
    return (ValueRecord(attribute="emails", value=new, type="work", primary=True), *rest)


# --- groups ------------------------------------------------------------------------------------------
def group_out(group: Group) -> dict[str, Any]:
    """Return a group as the admin API shows it."""
    return {
        "id": str(group.id),
        "name": group.display_name,
        "external_id": group.external_id,
        "created_at": group.created_at,
        "updated_at": group.updated_at,
        "version": group.version,
    }


async def list_groups(
    uow: UnitOfWork, *, tenant_id: uuid.UUID, cursor: str | None, limit: int, prefix: str | None = None
) -> tuple[list[dict[str, Any]], tuple[str] | None]:
    """Return a page of groups ordered by name (case-folded, unique)."""
    after = decode_cursor(cursor, parts=1)
    query = select(Group).where(Group.tenant_id == tenant_id)
    if after is not None:
        query = query.where(Group.display_name_key > after[0])
    if prefix:
        query = query.where(Group.display_name_key.like(_like_prefix(prefix.casefold()), escape="\\"))
    rows = (await uow.session.scalars(query.order_by(Group.display_name_key).limit(limit + 1))).all()
    rows, last = _page(rows, limit)
    return [group_out(group) for group in rows], ((last.display_name_key,) if last else None)


# --- clients -----------------------------------------------------------------------------------------
def client_out(client: Client) -> dict[str, Any]:
    """Return a client's registration (never its secret or its hash)."""
    return {
        "client_id": client.client_id,
        "name": client.name,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "application_type": client.application_type,
        "redirect_uris": list(client.redirect_uris or []),
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris or []),
        "backchannel_logout_uri": client.backchannel_logout_uri,
        "grant_types": list(client.grant_types or []),
        "scope": client.scope,
        "resources": list(client.resources or []),
        "access_token_alg": client.access_token_alg,
        "jwks": client.jwks,
        "jwks_uri": client.jwks_uri,
        "first_party": client.first_party,
        "enabled": client.enabled,
        "created_at": client.created_at,
        "updated_at": client.updated_at,
    }


def client_etag(client: Client) -> str:
    """Return a client's entity tag: its last change, to the microsecond (RFC 9110 §8.8.3)."""
    return change_etag(client)


def change_etag(row: Client | IdentityProvider | AccessPolicy | PolicyView) -> str:
    """Return the entity tag of an object without a version number: its last change, to the microsecond."""
    return f'"{int(_aware(row.updated_at).timestamp() * 1_000_000)}"'


async def check_unchanged(uow: UnitOfWork, row: Client | IdentityProvider | AccessPolicy, if_match: str | None) -> None:
    """Refuse a change made against an older read (``If-Match``, RFC 9110 §13.1.1), atomically.

    The tag must name the object's last change; then a conditional UPDATE on that same moment is the
    transaction's first write to the row, so of two writers holding the same tag exactly one goes on.
    """
    if if_match is None:
        return
    if if_match.strip() != "*" and if_match.strip() != change_etag(row):
        raise PreconditionFailed("the object changed since you read it")
    model = type(row)
    result = await uow.session.execute(
        update(model)
        .where(model.id == row.id, model.updated_at == row.updated_at)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        raise PreconditionFailed("the object changed since you read it")


async def provider_row(uow: UnitOfWork, *, tenant_id: uuid.UUID, alias: str) -> IdentityProvider:
    """Return the tenant's upstream row ``alias`` (for its entity tag), or raise :class:`NotFound`."""
    row = await uow.session.scalar(
        select(IdentityProvider).where(IdentityProvider.tenant_id == tenant_id, IdentityProvider.alias == alias)
    )
    if row is None:
        raise NotFound("no identity provider with this alias")
    return row


async def policy_row(uow: UnitOfWork, *, tenant_id: uuid.UUID, policy_id: uuid.UUID) -> AccessPolicy:
    """Return the tenant's access policy row (for its entity tag), or raise :class:`NotFound`."""
    row = await uow.session.scalar(
        select(AccessPolicy).where(AccessPolicy.tenant_id == tenant_id, AccessPolicy.id == policy_id)
    )
    if row is None:
        raise NotFound("access policy not found")
    return row


def check_grantable_scopes(principal: Principal, scope: str | None, *, in_system_tenant: bool) -> None:
    """Refuse handing a client admin scopes beyond the caller's reach (no escalation through a client).

    ``idhub:system`` is registered only by a system administrator, and only in the system tenant;
    the tenant roles (``idhub:admin``, ``idhub:helpdesk``, ``idhub:audit``) are within a tenant
    administrator's own reach.
    """
    wanted = set((scope or "").split()) & ADMIN_SCOPES
    if SYSTEM_SCOPE in wanted and not (principal.is_system and in_system_tenant):
        raise NotPermitted("only a system administrator may register idhub:system, in the system tenant")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def list_clients(
    uow: UnitOfWork, *, tenant_id: uuid.UUID, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], tuple[str] | None]:
    """Return a page of clients ordered by ``client_id``."""
    after = decode_cursor(cursor, parts=1)
    query = select(Client).where(Client.tenant_id == tenant_id)
    if after is not None:
        query = query.where(Client.client_id > after[0])
    rows = (await uow.session.scalars(query.order_by(Client.client_id).limit(limit + 1))).all()
    rows, last = _page(rows, limit)
    return [client_out(client) for client in rows], ((last.client_id,) if last else None)


# --- sessions, keys, audit ---------------------------------------------------------------------------
def session_out(row: UserSession) -> dict[str, Any]:
    """Return an SSO session (never its cookie hash)."""
    return {
        "id": row.id,
        "user_id": str(row.user_id),
        "auth_time": row.auth_time,
        "amr": list(row.amr or []),
        "acr": row.acr,
        "link_id": str(row.link_id) if row.link_id else None,
        "created_at": row.created_at,
        "last_seen_at": row.last_seen_at,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
    }


async def list_sessions(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    cursor: str | None,
    limit: int,
    user_id: uuid.UUID | None = None,
    include_ended: bool = False,
) -> tuple[list[dict[str, Any]], tuple[str] | None]:
    """Return a page of SSO sessions ordered by id (random, stable)."""
    after = decode_cursor(cursor, parts=1)
    query = select(UserSession).where(UserSession.tenant_id == tenant_id)
    if user_id is not None:
        query = query.where(UserSession.user_id == user_id)
    if not include_ended:
        query = query.where(UserSession.revoked_at.is_(None))
    if after is not None:
        query = query.where(UserSession.id > after[0])
    rows = (await uow.session.scalars(query.order_by(UserSession.id).limit(limit + 1))).all()
    rows, last = _page(rows, limit)
    return [session_out(row) for row in rows], ((last.id,) if last else None)


async def list_keys(uow: UnitOfWork, *, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """Return the tenant's signing keys (public parts and lifecycle only), newest first."""
    rows = await uow.session.scalars(
        select(SigningKey).where(SigningKey.tenant_id == tenant_id).order_by(SigningKey.created_at.desc())
    )
    return [
        {
            "kid": row.kid,
            "alg": row.alg,
            "state": row.state,
            "public_jwk": row.public_jwk,
            "created_at": row.created_at,
            "activated_at": row.activated_at,
            "retired_at": row.retired_at,
            "publish_until": row.publish_until,
        }
        for row in rows
    ]


async def list_links(
    uow: UnitOfWork, *, tenant_id: uuid.UUID, cursor: str | None, limit: int, user_id: uuid.UUID | None = None
) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """Return a page of linked upstream accounts, newest first (keyset on creation time and id)."""
    after = decode_cursor(cursor, parts=2)
    query = (
        select(FederatedIdentity, IdentityProvider.alias)
        .join(IdentityProvider, IdentityProvider.id == FederatedIdentity.provider_id)
        .where(FederatedIdentity.tenant_id == tenant_id)
    )
    if user_id is not None:
        query = query.where(FederatedIdentity.user_id == user_id)
    if after is not None:
        moment, last_id = _time_key(after)
        query = query.where(
            or_(
                FederatedIdentity.created_at < moment,
                and_(FederatedIdentity.created_at == moment, FederatedIdentity.id < last_id),
            )
        )
    query = query.order_by(FederatedIdentity.created_at.desc(), FederatedIdentity.id.desc()).limit(limit + 1)
    rows, last_row = _page((await uow.session.execute(query)).all(), limit)
    items = [
        {
            "id": str(link.id),
            "user_id": str(link.user_id),
            "alias": alias,
            "subject": link.subject,
            "email": link.email,
            "created_at": link.created_at,
            "last_login_at": link.last_login_at,
        }
        for link, alias in rows
    ]
    last = last_row[0] if last_row is not None else None
    return items, ((last.created_at.isoformat(), str(last.id)) if last is not None else None)


def rotation_of(tenant: TenantInfo, keys: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the tenant's rotation schedule: its period and when the active keys are next due."""
    days = rotation_days(tenant.settings)
    active = [_aware(k["activated_at"] or k["created_at"]) for k in keys if k["state"] == "active"]
    due = min(active) + timedelta(days=days) if days is not None and active else None
    return {"every_days": days, "next_at": due}


def audit_out(row: AuditEvent) -> dict[str, Any]:
    """Return an audit entry."""
    return {
        "id": str(row.id),
        "seq": row.seq,
        "occurred_at": row.occurred_at,
        "actor": {"type": row.actor_type, "id": row.actor_id},
        "action": row.action,
        "target": {"type": row.target_type, "id": row.target_id},
        "outcome": row.outcome,
        "surface": row.surface,
        "source_address": row.source_address,
        "request_id": row.request_id,
        "details": row.details,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


async def list_audit(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    cursor: str | None,
    limit: int,
    action: str | None = None,
    actor_id: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """Return a page of audit entries, newest first (keyset on time and id)."""
    after = decode_cursor(cursor, parts=2)
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if action:
        query = query.where(AuditEvent.action == action)
    if actor_id:
        query = query.where(AuditEvent.actor_id == actor_id)
    if target_id:
        query = query.where(AuditEvent.target_id == target_id)
    if since is not None:
        query = query.where(AuditEvent.occurred_at >= since)
    if until is not None:
        query = query.where(AuditEvent.occurred_at < until)
    if after is not None:
        moment, last_id = _time_key(after)
        query = query.where(
            or_(AuditEvent.occurred_at < moment, and_(AuditEvent.occurred_at == moment, AuditEvent.id < last_id))
        )
    query = query.order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc()).limit(limit + 1)
    rows = (await uow.session.scalars(query)).all()
    rows, last = _page(rows, limit)
    return [audit_out(row) for row in rows], ((last.occurred_at.isoformat(), str(last.id)) if last else None)


def _time_key(after: list[str]) -> tuple[datetime, uuid.UUID]:
    try:
        return datetime.fromisoformat(after[0]), uuid.UUID(after[1])
    except ValueError as exc:
        raise Problem(400, "the cursor is not valid", kind="bad-cursor") from exc


# --- tenants -----------------------------------------------------------------------------------------
async def list_tenants(
    uow: UnitOfWork, *, cursor: str | None, limit: int, public_url: str
) -> tuple[list[dict[str, Any]], tuple[str] | None]:
    """Return a page of tenants ordered by slug (system administrators)."""
    after = decode_cursor(cursor, parts=1)
    query = select(Tenant)
    if after is not None:
        query = query.where(Tenant.slug > after[0])
    rows = (await uow.session.scalars(query.order_by(Tenant.slug).limit(limit + 1))).all()
    rows, last = _page(rows, limit)
    items = [{"id": str(t.id), "slug": t.slug, "name": t.name, "issuer": issuer_for(public_url, t.slug)} for t in rows]
    return items, ((last.slug,) if last else None)
