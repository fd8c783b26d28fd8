"""Pending authorization requests waiting for the user (login, consent)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from idhub.storage.base import Base, utcnow


class Interaction(Base):
    """A validated authorization request parked while the user signs in or consents."""

    __tablename__ = "interaction"
    __table_args__ = (Index("ix_interaction_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    client_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"))
    # Validated authorization request parameters.
    params: Mapped[dict[str, Any]]
    # Hash of the browser-binding cookie value; the CSRF token is derived from it.
    browser_hash: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    session_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
