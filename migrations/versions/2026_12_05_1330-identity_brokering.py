"""identity brokering: upstream identity providers, linked accounts, how a session signed in

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 13:30:00

* ``identity_provider``: a tenant's upstream providers by alias; non-secret configuration as JSON, the
  client secret or SAML SP key sealed with the master key.
* ``federated_identity``: linked accounts, unique per (provider, upstream subject).
* ``user_session`` gains ``acr`` and ``link_id`` (the linked account a brokered session came through).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_provider",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("internal", sa.Boolean(), nullable=False),
        sa.Column("jit", sa.Boolean(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("secret_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_identity_provider_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_provider")),
        sa.UniqueConstraint("tenant_id", "alias", name=op.f("uq_identity_provider_tenant_id_alias")),
    )
    op.create_table(
        "federated_identity",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_federated_identity_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["identity_provider.id"],
            name=op.f("fk_federated_identity_provider_id_identity_provider"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name=op.f("fk_federated_identity_user_id_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federated_identity")),
        sa.UniqueConstraint("provider_id", "subject", name=op.f("uq_federated_identity_provider_id_subject")),
    )
    op.create_index("ix_federated_identity_user", "federated_identity", ["tenant_id", "user_id"], unique=False)
    with op.batch_alter_table("user_session") as batch:
        batch.add_column(sa.Column("acr", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("link_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_user_session_link_id_federated_identity"),
            "federated_identity",
            ["link_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("user_session") as batch:
        batch.drop_constraint(op.f("fk_user_session_link_id_federated_identity"), type_="foreignkey")
        batch.drop_column("link_id")
        batch.drop_column("acr")
    op.drop_index("ix_federated_identity_user", table_name="federated_identity")
    op.drop_table("federated_identity")
    op.drop_table("identity_provider")
