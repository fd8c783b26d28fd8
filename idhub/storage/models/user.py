"""Local accounts of the directory, their multi-valued attributes, and archived (deleted) accounts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from idhub.storage.base import Base, new_uuid, utcnow

_S = String(255)


class User(Base):
    """A person in a tenant's directory.

    ``username`` is stored case-folded (unique per tenant among live accounts, RFC 7643 §4.1.1 says
    ``userName`` is case-insensitive); ``user_name`` keeps the form the HR system or admin wrote. The
    SCIM attributes that are single-valued are columns so filters run in SQL; multi-valued ones
    (emails, phone numbers, ...) are :class:`UserValue` rows. A deleted account keeps its row with
    ``deleted_at`` set (history is archived, not erased) and frees its username.
    """

    __tablename__ = "user"
    __table_args__ = (
        Index(
            "uq_user_tenant_id_username_live",
            "tenant_id",
            "username",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        # Not (tenant_id, external_id): a second index led by tenant_id lures the planner away from the
        # username index when statistics are stale (as right after a bulk onboarding).
        Index("ix_user_external_id", "external_id"),
        # Brokered sign-ins look accounts up by email, case-insensitively (migration 0007).
        Index("ix_user_tenant_email_lower", "tenant_id", text("lower(email)")),
        # PostgreSQL only: GIN over the username's two-character substrings, so SCIM ``co``/``sw``/``ew``
        # filters on userName with a needle of two or more characters use an index, not a scan
        # (``idhub_bigrams`` is created by migration 0003; see there).
        Index(
            "ix_user_username_bigrams",
            text("idhub_bigrams(username)"),
            postgresql_using="gin",
            postgresql_where=text("deleted_at IS NULL"),
        ).ddl_if(dialect="postgresql"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    username: Mapped[str] = mapped_column(_S)
    user_name: Mapped[str | None] = mapped_column(_S)
    external_id: Mapped[str | None] = mapped_column(_S)
    email: Mapped[str | None] = mapped_column(String(320))
    email_verified: Mapped[bool] = mapped_column(default=False)
    name: Mapped[str | None] = mapped_column(_S)
    given_name: Mapped[str | None] = mapped_column(_S)
    family_name: Mapped[str | None] = mapped_column(_S)
    middle_name: Mapped[str | None] = mapped_column(_S)
    honorific_prefix: Mapped[str | None] = mapped_column(_S)
    honorific_suffix: Mapped[str | None] = mapped_column(_S)
    display_name: Mapped[str | None] = mapped_column(_S)
    nick_name: Mapped[str | None] = mapped_column(_S)
    profile_url: Mapped[str | None] = mapped_column(String(1024))
    title: Mapped[str | None] = mapped_column(_S)
    user_type: Mapped[str | None] = mapped_column(_S)
    preferred_language: Mapped[str | None] = mapped_column(_S)
    locale: Mapped[str | None] = mapped_column(_S)
    timezone: Mapped[str | None] = mapped_column(_S)
    # Enterprise extension (urn:ietf:params:scim:schemas:extension:enterprise:2.0:User).
    employee_number: Mapped[str | None] = mapped_column(_S)
    cost_center: Mapped[str | None] = mapped_column(_S)
    organization: Mapped[str | None] = mapped_column(_S)
    division: Mapped[str | None] = mapped_column(_S)
    department: Mapped[str | None] = mapped_column(_S)
    manager_id: Mapped[str | None] = mapped_column(_S)
    password_hash: Mapped[str | None] = mapped_column(_S)
    # SCIM ``active``: NULL when a provisioning client removed the attribute (unassigned), which the
    # directory treats like false: only ``enabled IS TRUE`` may sign in (idhub.directory.rules.is_live).
    enabled: Mapped[bool | None] = mapped_column(default=True)
    # meta.version: bumped on every write; If-Match compares it in a conditional UPDATE (RFC 7644 §3.14).
    version: Mapped[int] = mapped_column(default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    created_by: Mapped[str | None] = mapped_column(_S)
    deleted_at: Mapped[datetime | None] = mapped_column()
    deleted_by: Mapped[str | None] = mapped_column(_S)
    archive: Mapped[dict[str, Any] | None] = mapped_column()

    # Every ORM UPDATE is ``... WHERE version = :seen`` and bumps it: concurrent writers get exactly one winner.
    __mapper_args__ = {"version_id_col": version}

    values: Mapped[list[UserValue]] = relationship(
        back_populates="user", cascade="all, delete-orphan", order_by="UserValue.position", lazy="raise"
    )


class UserValue(Base):
    """One element of a multi-valued SCIM attribute of a user (``emails``, ``phoneNumbers``, ``addresses``...).

    ``attribute`` is the SCIM attribute name; address parts use their own columns, every other kind
    uses ``value``. One table keeps filters such as ``emails[type eq "work" and value co "@x"]`` a
    single ``EXISTS`` in SQL.
    """

    __tablename__ = "user_value"
    __table_args__ = (
        Index("ix_user_value_user_id_attribute", "user_id", "attribute"),
        Index("ix_user_value_attribute_value", "attribute", "value"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    attribute: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(default=0)
    value: Mapped[str | None] = mapped_column(String(2048))
    type: Mapped[str | None] = mapped_column(String(64))
    # NULL when the client did not say; false is kept as written (what a client writes reads back the same).
    primary: Mapped[bool | None] = mapped_column()
    display: Mapped[str | None] = mapped_column(_S)
    formatted: Mapped[str | None] = mapped_column(String(1024))
    street_address: Mapped[str | None] = mapped_column(String(1024))
    locality: Mapped[str | None] = mapped_column(_S)
    region: Mapped[str | None] = mapped_column(_S)
    postal_code: Mapped[str | None] = mapped_column(String(64))
    country: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship(back_populates="values")
