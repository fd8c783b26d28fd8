"""Access policies: which scopes a group (for people) or the client itself (machine tokens) may get at a client."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from idhub.storage.base import Base, new_uuid, utcnow


class AccessPolicy(Base):
    """Scopes one subject may get at one client: a group's members, or (``group_id`` NULL) the client itself.

    A client with at least one policy is governed: people get only what their groups' policies grant
    (``openid`` aside), machine tokens only what its machine policy grants (``idhub.directory.entitlements``).
    """

    __tablename__ = "access_policy"
    __table_args__ = (
        UniqueConstraint("client_id", "group_id"),
        # NULLs are distinct in a unique constraint: one machine policy per client needs its own index.
        Index(
            "ux_access_policy_machine",
            "client_id",
            unique=True,
            sqlite_where=text("group_id IS NULL"),
            postgresql_where=text("group_id IS NULL"),
        ),
        Index("ix_access_policy_group_id", "group_id"),
        Index("ix_access_policy_tenant_id", "tenant_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    client_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"))
    group_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("group.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
