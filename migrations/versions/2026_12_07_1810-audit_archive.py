"""audit archive: where each tenant's archived audit prefix ends (#15)

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-07 18:10:00

* ``audit_chain_head.archived_seq`` and ``archived_hash``: retention moves a tenant's oldest audit
  entries into sealed archive files (``idhub audit archive``); the head keeps where the archived prefix
  ended, under the head's MAC. Existing heads keep NULLs (nothing archived), and their MAC, computed
  over the number and hash alone, stays valid: the anchor enters the MAC only when there is one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_chain_head") as batch:
        batch.add_column(sa.Column("archived_seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("archived_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    # Heads with an anchor lose it: their MAC no longer matches and verify reports them, as it should
    # for a log whose archived prefix the database no longer accounts for.
    with op.batch_alter_table("audit_chain_head") as batch:
        batch.drop_column("archived_hash")
        batch.drop_column("archived_seq")
