"""Archived records of deleted users: kept for a retention period, then purged; and a person's data export.

Deleting a user keeps the row as an archived record (who deleted it, when, what it held, its links and
last sign-ins: :meth:`idhub.directory.users.Users.delete`). :func:`purge_archived` removes the records
whose retention period has ended (``IDHUB_ARCHIVE__RETENTION_DAYS``, or the tenant's own
``archive_retention_days``), in bounded batches, each batch one unit of work with an audit entry per
purged person; the database's cascades take the rows that hang off the user with it.

:func:`export_person` gathers everything idhub holds about one person as one JSON document: the right
of access and the right to data portability (GDPR Art. 15 and Art. 20: "a structured, commonly used
and machine-readable format"). Secrets never leave: no password hash, no token or cookie hash.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select

from idhub.errors import Invalid, NotFound
from idhub.events import ArchivedUserPurged, UserDataExported
from idhub.storage.base import utcnow
from idhub.storage.models import (
    AuditEvent,
    Client,
    Consent,
    FederatedIdentity,
    Grant,
    Group,
    GroupMember,
    IdentityProvider,
    Tenant,
    User,
    UserSession,
    UserValue,
)
from idhub.storage.uow import UnitOfWork

PURGE_BATCH = 500
EXPORT_FORMAT = "urn:idhub:user-export:1"
TENANT_RETENTION_SETTING = "archive_retention_days"


def retention_days(tenant: Tenant, default_days: int) -> int:
    """Return how long the tenant keeps archived records: its own setting, else the installation's."""
    own = (tenant.settings or {}).get(TENANT_RETENTION_SETTING)
    if own is None:
        return default_days
    if isinstance(own, bool) or not isinstance(own, int) or own < 1:
        raise Invalid(f"tenant {tenant.slug}: {TENANT_RETENTION_SETTING} must be a whole number of days, at least 1")
    return own


@dataclass(slots=True)
class PurgeCount:
    """What a purge found (and, unless a dry run, removed) in one tenant."""

    tenant: str
    retention_days: int
    cutoff: datetime
    purged: int = 0


async def purge_batch(
    uow: UnitOfWork, *, tenant_id: uuid.UUID, cutoff: datetime, limit: int, dry_run: bool = False
) -> int:
    """Purge up to ``limit`` archived users of the tenant deleted before ``cutoff``; return how many.

    Each purged person gets an audit entry (``user.purge``) in the same transaction.
    """
    session = uow.session
    due = (
        await session.execute(
            select(User.id, User.deleted_at)
            .where(User.tenant_id == tenant_id, User.deleted_at.is_not(None), User.deleted_at < cutoff)
            .order_by(User.deleted_at, User.id)
            .limit(limit)
        )
    ).all()
    if dry_run or not due:
        return len(due)
    await session.execute(
        delete(User).where(User.id.in_([row.id for row in due])).execution_options(synchronize_session=False)
    )
    uow.raise_events(
        [ArchivedUserPurged(tenant_id=tenant_id, user_id=row.id, deleted_at=row.deleted_at.isoformat()) for row in due]
    )
    return len(due)


async def purge_archived(
    new_uow: Callable[[], UnitOfWork],
    *,
    default_days: int,
    tenant: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    batch: int = PURGE_BATCH,
) -> list[PurgeCount]:
    """Purge every tenant's (or one tenant's) archived records older than its retention period.

    One unit of work per batch of ``batch`` people, so no transaction grows with the archive; a dry run
    only counts.
    """
    now = now or utcnow()
    async with new_uow() as uow:
        statement = select(Tenant).order_by(Tenant.slug)
        if tenant is not None:
            statement = statement.where(Tenant.slug == tenant)
        tenants = list((await uow.session.scalars(statement)).all())
        if tenant is not None and not tenants:
            raise NotFound(f"no tenant {tenant!r}")
        counts = []
        for row in tenants:
            days = retention_days(row, default_days)
            counts.append(PurgeCount(row.slug, days, now - timedelta(days=days)))
        ids = {row.slug: row.id for row in tenants}
        if dry_run:
            for count in counts:
                count.purged = int(
                    await uow.session.scalar(
                        select(func.count())
                        .select_from(User)
                        .where(
                            User.tenant_id == ids[count.tenant],
                            User.deleted_at.is_not(None),
                            User.deleted_at < count.cutoff,
                        )
                    )
                    or 0
                )
            return counts
    for count in counts:
        while True:
            async with new_uow() as uow:
                done = await purge_batch(uow, tenant_id=ids[count.tenant], cutoff=count.cutoff, limit=batch)
            count.purged += done
            if done < batch:
                break
    return counts


# --- export ------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


_VALUE_KEYS = (
    "attribute", "value", "type", "primary", "display", "formatted", "street_address", "locality", "region",
    "postal_code", "country",
)  # fmt: skip
_NOT_EXPORTED = frozenset({"password_hash", "archive", "version", "tenant_id"})


async def find_person(
    uow: UnitOfWork, *, tenant_id: uuid.UUID, username: str | None = None, user_id: uuid.UUID | None = None
) -> User:
    """Return the person by username or id, a deleted (archived) one included; the live one wins a username."""
    statement = select(User).where(User.tenant_id == tenant_id)
    if user_id is not None:
        statement = statement.where(User.id == user_id)
    elif username is not None:
        statement = statement.where(User.username == username.casefold()).order_by(
            User.deleted_at.is_not(None), User.deleted_at.desc()
        )
    else:
        raise Invalid("name the person by username or id")
    found = (await uow.session.scalars(statement.limit(1))).first()
    if found is None:
        raise NotFound("no such user in this tenant")
    return found


async def export_person(uow: UnitOfWork, *, tenant: Tenant, user: User) -> dict[str, Any]:
    """Return everything held about ``user`` as one JSON-ready document, and audit the export."""
    session = uow.session
    profile = {
        column.key: _iso(value)
        if isinstance(value, datetime)
        else (str(value) if isinstance(value, uuid.UUID) else value)
        for column in User.__table__.columns
        if column.key not in _NOT_EXPORTED
        for value in (getattr(user, column.key),)
    }
    profile["has_password"] = user.password_hash is not None
    values = await session.scalars(select(UserValue).where(UserValue.user_id == user.id).order_by(UserValue.position))
    attributes = [{key: getattr(row, key) for key in _VALUE_KEYS if getattr(row, key) is not None} for row in values]
    groups = await session.execute(
        select(Group.id, Group.display_name, GroupMember.source)
        .join(GroupMember, GroupMember.group_id == Group.id)
        .where(GroupMember.user_id == user.id)
        .order_by(Group.display_name)
    )
    links = await session.execute(
        select(FederatedIdentity, IdentityProvider.alias, IdentityProvider.type)
        .join(IdentityProvider, IdentityProvider.id == FederatedIdentity.provider_id)
        .where(FederatedIdentity.tenant_id == tenant.id, FederatedIdentity.user_id == user.id)
        .order_by(FederatedIdentity.created_at)
    )
    sessions = await session.scalars(
        select(UserSession)
        .where(UserSession.tenant_id == tenant.id, UserSession.user_id == user.id)
        .order_by(UserSession.auth_time.desc())
    )
    consents = await session.execute(
        select(Consent, Client.client_id, Client.name)
        .join(Client, Client.id == Consent.client_id)
        .where(Consent.tenant_id == tenant.id, Consent.user_id == user.id)
    )
    grants = await session.execute(
        select(Grant, Client.client_id, Client.name)
        .join(Client, Client.id == Grant.client_id)
        .where(Grant.tenant_id == tenant.id, Grant.user_id == user.id)
        .order_by(Grant.created_at)
    )
    who = str(user.id)
    events = await session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.tenant_id == tenant.id,
            or_(AuditEvent.target_id == who, (AuditEvent.actor_type == "user") & (AuditEvent.actor_id == who)),
        )
        .order_by(AuditEvent.occurred_at, AuditEvent.id)
    )
    document: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "exported_at": _iso(utcnow()),
        "tenant": tenant.slug,
        "user": profile,
        "attributes": attributes,
        "groups": [{"id": str(gid), "displayName": name, "source": source} for gid, name, source in groups],
        "linked_accounts": [
            {
                "id": str(link.id),
                "provider": alias,
                "provider_type": kind,
                "subject": link.subject,
                "email": link.email,
                "created_at": _iso(link.created_at),
                "last_login_at": _iso(link.last_login_at),
            }
            for link, alias, kind in links
        ],
        "sessions": [
            {
                "id": row.id,
                "auth_time": _iso(row.auth_time),
                "amr": list(row.amr or []),
                "acr": row.acr,
                "link_id": str(row.link_id) if row.link_id else None,
                "created_at": _iso(row.created_at),
                "last_seen_at": _iso(row.last_seen_at),
                "expires_at": _iso(row.expires_at),
                "revoked_at": _iso(row.revoked_at),
            }
            for row in sessions
        ],
        "consents": [
            {
                "client_id": client_id,
                "client_name": name,
                "scope": row.scope,
                "created_at": _iso(row.created_at),
                "updated_at": _iso(row.updated_at),
            }
            for row, client_id, name in consents
        ],
        "grants": [
            {
                "id": row.id,
                "client_id": client_id,
                "client_name": name,
                "scope": row.scope,
                "created_at": _iso(row.created_at),
                "revoked_at": _iso(row.revoked_at),
            }
            for row, client_id, name in grants
        ],
        "audit_events": [
            {
                "id": str(row.id),
                "occurred_at": _iso(row.occurred_at),
                "actor": f"{row.actor_type}:{row.actor_id}",
                "action": row.action,
                "target": f"{row.target_type}:{row.target_id}",
                "outcome": row.outcome,
                "surface": row.surface,
                "source_address": row.source_address,
                "details": row.details,
            }
            for row in events
        ],
        "archive": user.archive,
    }
    uow.raise_event(UserDataExported(tenant_id=tenant.id, user_id=user.id))
    return document
