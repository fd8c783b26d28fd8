"""unit of work: audit context, single-use values, tri-state SCIM flags, purge indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 17:00:00

* ``audit_event`` gains ``outcome``, ``surface``, ``source_address`` and ``request_id``.
* ``used_jti`` becomes ``used_value`` (namespace, value): the one table of values that may be used once
  (client-assertion ``jti`` today, SAML assertion IDs later). Live rows are carried over.
* ``user.enabled`` and ``user_value.primary`` become nullable. ``enabled`` NULL is SCIM's unassigned
  ``active`` (removed by a PATCH), which the directory treats as not active. ``primary`` NULL means the
  client did not say; rows written before this revision stored false for both "false" and "not said",
  and showed neither, so they become NULL and read back as before.
* ``expires_at`` indexes for the scheduled purge of expired rows.

On SQLite the two nullability changes recreate the tables (Alembic batch mode); the environment turns
foreign-key enforcement off for the migration so that dropping the old ``user`` table cannot cascade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

EXPIRY_INDEXES = (
    ("ix_revocation_expires_at", "revocation"),
    ("ix_authorization_code_expires_at", "authorization_code"),
    ("ix_refresh_token_expires_at", "refresh_token"),
    ("ix_interaction_expires_at", "interaction"),
)


def upgrade() -> None:
    with op.batch_alter_table("audit_event") as batch:
        batch.add_column(sa.Column("outcome", sa.String(length=16), server_default="success", nullable=False))
        batch.add_column(sa.Column("surface", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("source_address", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("request_id", sa.String(length=64), nullable=True))

    op.create_table(
        "used_value",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("namespace", sa.String(length=96), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_used_value_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "namespace", "value", name=op.f("pk_used_value")),
    )
    op.create_index("ix_used_value_expires_at", "used_value", ["expires_at"], unique=False)
    op.execute(
        "INSERT INTO used_value (tenant_id, namespace, value, expires_at) "
        "SELECT tenant_id, 'client_assertion:' || client_id, jti, expires_at FROM used_jti"
    )
    op.drop_table("used_jti")

    with op.batch_alter_table("user") as batch:
        batch.alter_column("enabled", existing_type=sa.Boolean(), nullable=True)
    with op.batch_alter_table("user_value") as batch:
        batch.alter_column("primary", existing_type=sa.Boolean(), nullable=True)
    op.execute('UPDATE user_value SET "primary" = NULL WHERE "primary" = false')

    for name, table in EXPIRY_INDEXES:
        op.create_index(name, table, ["expires_at"], unique=False)


def downgrade() -> None:
    for name, table in EXPIRY_INDEXES:
        op.drop_index(name, table_name=table)

    op.execute('UPDATE user_value SET "primary" = false WHERE "primary" IS NULL')
    with op.batch_alter_table("user_value") as batch:
        batch.alter_column("primary", existing_type=sa.Boolean(), nullable=False)
    # An unassigned ``active`` was treated as not active; the old schema says so explicitly.
    op.execute('UPDATE "user" SET enabled = false WHERE enabled IS NULL')
    with op.batch_alter_table("user") as batch:
        batch.alter_column("enabled", existing_type=sa.Boolean(), nullable=False)

    op.create_table(
        "used_jti",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_used_jti_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "client_id", "jti", name=op.f("pk_used_jti")),
    )
    op.execute(
        "INSERT INTO used_jti (tenant_id, client_id, jti, expires_at) "
        "SELECT tenant_id, substr(namespace, 18), value, expires_at FROM used_value "
        "WHERE namespace LIKE 'client_assertion:%' AND length(namespace) <= 81"
    )
    op.drop_index("ix_used_value_expires_at", table_name="used_value")
    op.drop_table("used_value")

    with op.batch_alter_table("audit_event") as batch:
        batch.drop_column("request_id")
        batch.drop_column("source_address")
        batch.drop_column("surface")
        batch.drop_column("outcome")
