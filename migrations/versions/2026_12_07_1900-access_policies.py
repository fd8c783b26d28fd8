"""access policies: which groups get which scopes at which client (#15)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 18:00:00

* ``access_policy``: (tenant, client, subject) -> scopes, the subject a group (its members, nested ones
  included) or, with ``group_id`` NULL, the client itself (its client_credentials tokens). One policy per
  client and group (``uq_access_policy_client_id_group_id``) and one machine policy per client
  (``ux_access_policy_machine``, partial). A client with no policy behaves as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_policy",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.Uuid(), nullable=False),
        sa.Column("group_id", sa.Uuid(), nullable=True),
        sa.Column("scope", sa.String(length=2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_access_policy_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["client_id"], ["client.id"], name=op.f("fk_access_policy_client_id_client"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["group_id"], ["group.id"], name=op.f("fk_access_policy_group_id_group"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_policy")),
        sa.UniqueConstraint("client_id", "group_id", name=op.f("uq_access_policy_client_id_group_id")),
    )
    op.create_index(
        "ux_access_policy_machine",
        "access_policy",
        ["client_id"],
        unique=True,
        sqlite_where=sa.text("group_id IS NULL"),
        postgresql_where=sa.text("group_id IS NULL"),
    )
    op.create_index("ix_access_policy_group_id", "access_policy", ["group_id"], unique=False)
    op.create_index("ix_access_policy_tenant_id", "access_policy", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_access_policy_tenant_id", table_name="access_policy")
    op.drop_index("ix_access_policy_group_id", table_name="access_policy")
    op.drop_index("ux_access_policy_machine", table_name="access_policy")
    op.drop_table("access_policy")
