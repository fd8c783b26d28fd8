"""Revocation log and replay guards."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from idhub.storage.base import Base, utcnow


class Revocation(Base):
    """Append-only log of revocations that JWT access tokens must honour until they expire.

    ``kind`` is ``jti`` (one token), ``grant`` (every token of a grant), ``subject`` (every token of a
    user issued before ``created_at``) or ``client``. Processes keep it in memory and follow it.
    """

    __tablename__ = "revocation"
    __table_args__ = (Index("ix_revocation_created", "created_at"), Index("ix_revocation_expires_at", "expires_at"))

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Nothing it revokes outlives this; the row may be deleted afterwards.
    expires_at: Mapped[datetime]


class UsedValue(Base):
    """Values that may be used once, recorded when first used (see :mod:`idhub.storage.single_use`).

    ``namespace`` says what the value is: ``client_assertion:<client_id>`` for the ``jti`` of a client
    assertion (RFC 7523 §3 replay defence), later SAML assertion IDs. Rows are purged once expired.
    """

    __tablename__ = "used_value"
    __table_args__ = (Index("ix_used_value_expires_at", "expires_at"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(96), primary_key=True)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime]
