"""Groups of a tenant's directory and their members (users or nested groups)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from idhub.storage.base import Base, new_uuid, utcnow


class Group(Base):
    """A group (RFC 7643 §4.2); ``display_name_key`` is the case-folded name, unique per tenant."""

    __tablename__ = "group"
    __table_args__ = (
        UniqueConstraint("tenant_id", "display_name_key"),
        Index("ix_group_tenant_id_external_id", "tenant_id", "external_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    display_name: Mapped[str] = mapped_column(String(255))
    display_name_key: Mapped[str] = mapped_column(String(255))
    external_id: Mapped[str | None] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}  # conditional UPDATEs: one winner among concurrent writers


class GroupMember(Base):
    """A direct member of a group: exactly one of ``user_id`` and ``member_group_id``, and who made it."""

    __tablename__ = "group_member"
    __table_args__ = (
        UniqueConstraint("group_id", "user_id"),
        UniqueConstraint("group_id", "member_group_id"),
        CheckConstraint("(user_id IS NULL) <> (member_group_id IS NULL)", name="one_member"),
        Index("ix_group_member_user_id", "user_id"),
        Index("ix_group_member_member_group_id", "member_group_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    group_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("group.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    member_group_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("group.id", ondelete="CASCADE"))
    # Who made the membership: NULL for admins, the CLI and SCIM; ``idp:<provider id>`` for an upstream's
    # mapping rules, so a sign-in removes only the memberships its own upstream made.
    source: Mapped[str | None] = mapped_column(String(96))
