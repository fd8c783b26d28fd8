"""OAuth 2.0 / OIDC clients (relying parties)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from idhub.storage.base import Base, new_uuid, utcnow


class Client(Base):
    """A registered client; the secret is stored only as a keyed hash."""

    __tablename__ = "client"
    __table_args__ = (UniqueConstraint("tenant_id", "client_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str | None] = mapped_column(String(128))
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(32))
    application_type: Mapped[str] = mapped_column(String(16), default="web")
    redirect_uris: Mapped[list[str]] = mapped_column(default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(default=list)
    grant_types: Mapped[list[str]] = mapped_column(default=list)
    scope: Mapped[str] = mapped_column(String(2000), default="")
    # RFC 8707 resource indicators the client may ask for; the first is its default audience.
    resources: Mapped[list[str]] = mapped_column(default=list)
    access_token_alg: Mapped[str | None] = mapped_column(String(16))
    id_token_alg: Mapped[str] = mapped_column(String(16), default="RS256")
    jwks: Mapped[dict[str, Any] | None]
    # The client's public keys by reference (RFC 7591 §2): fetched and cached, never both with ``jwks``.
    jwks_uri: Mapped[str | None] = mapped_column(String(2000))
    first_party: Mapped[bool] = mapped_column(default=False)
    backchannel_logout_uri: Mapped[str | None] = mapped_column(String(2000))
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
