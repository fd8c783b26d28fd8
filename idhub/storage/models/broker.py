"""Upstream identity providers of a tenant and the accounts linked through them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from idhub.storage.base import Base, new_uuid, utcnow


class IdentityProvider(Base):
    """An upstream identity provider (OIDC, SAML 2.0 or a social network preset), found by its alias.

    ``config`` holds what is not secret (issuer, client id, endpoints, SAML metadata, link policy,
    mapping rules); ``secret_encrypted`` holds the client secret or the SAML SP private key, sealed
    with the master key.
    """

    __tablename__ = "identity_provider"
    __table_args__ = (UniqueConstraint("tenant_id", "alias"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    display_name: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(default=True)
    internal: Mapped[bool] = mapped_column(default=False)
    jit: Mapped[bool] = mapped_column(default=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secret_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FederatedIdentity(Base):
    """A link: the upstream account (provider, subject) that signs in as one directory user.

    Keyed on the upstream's subject, never on an email address.
    """

    __tablename__ = "federated_identity"
    __table_args__ = (
        UniqueConstraint("provider_id", "subject"),
        Index("ix_federated_identity_user", "tenant_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("identity_provider.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column()
