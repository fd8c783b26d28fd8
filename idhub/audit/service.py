"""Record audit events (the same unit of work as the change, so an event exists iff the change does)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from idhub.storage.base import new_uuid, utcnow
from idhub.storage.models import AuditEvent


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an OAuth client (``client``), a provisioning token (``provisioning_token``), an operator (``cli``)."""

    type: str
    id: str

    def label(self) -> str:
        """Return ``type:id``, the form kept on archived records."""
        return f"{self.type}:{self.id}"


def event_row(
    *, tenant_id: uuid.UUID, actor: Actor, action: str, target_type: str, target_id: str, details: dict[str, Any]
) -> dict[str, Any]:
    """Return one audit row as a dict for a multi-row INSERT (bulk writes record many at once)."""
    return {
        "id": new_uuid(),
        "tenant_id": tenant_id,
        "occurred_at": utcnow(),
        "actor_type": actor.type,
        "actor_id": actor.id,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "details": details,
    }


async def record(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Record one event; never put secrets in ``details``."""
    await record_many(
        session,
        [
            event_row(
                tenant_id=tenant_id,
                actor=actor,
                action=action,
                target_type=target_type,
                target_id=target_id,
                details=details or {},
            )
        ],
    )


async def record_many(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Record prepared events with one statement."""
    if rows:
        await session.execute(insert(AuditEvent), rows)
