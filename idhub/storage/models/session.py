"""SSO sessions of the login pages."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from idhub.storage.base import Base, utcnow


class UserSession(Base):
    """A browser's SSO session; the cookie carries a secret whose hash is ``token_hash``."""

    __tablename__ = "user_session"
    __table_args__ = (Index("ix_user_session_user", "tenant_id", "user_id"),)

    # ``id`` is the public session id (the ``sid`` claim).
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    auth_time: Mapped[datetime]
    amr: Mapped[list[str]] = mapped_column(default=list)
    acr: Mapped[str | None] = mapped_column(String(255))
    # The linked upstream account the person signed in with (None: a local sign-in). Removing the link
    # ends its sessions first; the column is cleared if the row goes anyway.
    link_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("federated_identity.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
