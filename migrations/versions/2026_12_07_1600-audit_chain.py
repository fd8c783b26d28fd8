"""audit chain: tamper-evident audit entries (#15)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 16:00:00

* ``audit_event.seq``, ``prev_hash`` and ``hash``: each tenant's entries are numbered without gaps and
  chained by a MAC keyed from the master key (``idhub.audit.chain``). Entries written before this
  revision keep NULLs: they predate the chain, and ``idhub audit verify`` counts them apart.
* ``ux_audit_event_tenant_id_seq``: one entry per number and tenant (a second writer cannot reuse one).
* ``audit_chain_head``: each tenant's last number and hash with a MAC over both; appends lock it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_event") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
    op.create_index("ux_audit_event_tenant_id_seq", "audit_event", ["tenant_id", "seq"], unique=True)
    op.create_table(
        "audit_chain_head",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_audit_chain_head_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_audit_chain_head")),
    )


def downgrade() -> None:
    op.drop_table("audit_chain_head")
    op.drop_index("ux_audit_event_tenant_id_seq", table_name="audit_event")
    with op.batch_alter_table("audit_event") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
