"""The audit log: one row per change, written in the same transaction as the change."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from idhub.storage.base import Base, new_uuid, utcnow


class AuditEvent(Base):
    """Who (``actor_type``/``actor_id``) did what (``action``) to which object, when, with which outcome.

    ``surface`` is the way in (``scim``, ``oidc``, ``web``, ``cli``, ``admin``); ``source_address`` and
    ``request_id`` tie the entry to the request and its log lines. Rows are only ever inserted.

    Tamper evidence (:mod:`idhub.audit.chain`): ``seq`` numbers a tenant's entries without gaps,
    ``prev_hash`` is the ``hash`` of the entry before it, and ``hash`` is a MAC, keyed from the master
    key, over the entry with both. Entries written before the chain existed have none of the three.
    """

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_tenant_id_occurred_at", "tenant_id", "occurred_at"),
        Index("ux_audit_event_tenant_id_seq", "tenant_id", "seq", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(32))
    actor_id: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16), default="success", server_default="success")
    surface: Mapped[str | None] = mapped_column(String(16))
    source_address: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seq: Mapped[int | None] = mapped_column(BigInteger)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditChainHead(Base):
    """The end of a tenant's audit chain: its last ``seq`` and ``hash``, and a MAC over both.

    Appends lock this row (an upsert), so a tenant's entries are numbered and chained one transaction
    at a time; other tenants do not wait. The MAC makes a truncated log whose head was rewound by hand
    detectable.

    ``archived_seq`` and ``archived_hash`` anchor the log after retention moved its oldest entries to
    sealed archive files (:mod:`idhub.audit.archive`): the entries up to ``archived_seq`` left the
    database, and the first one left chains to ``archived_hash``. The MAC covers the anchor when there
    is one (heads written before it existed verify unchanged).
    """

    __tablename__ = "audit_chain_head"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))
    archived_seq: Mapped[int | None] = mapped_column(BigInteger)
    archived_hash: Mapped[str | None] = mapped_column(String(64))
