"""user email index: find accounts by email address, case-insensitively, per tenant

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 17:00:00

* ``ix_user_tenant_email_lower`` on ``(tenant_id, lower(email))``: a brokered sign-in looks up existing
  accounts with the upstream's email address (linking by a verified, authoritative email, and the check
  that asks for proof of ownership instead of making a second account with the same address). Without
  it each first sign-in scanned the tenant's users.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_user_tenant_email_lower", "user", ["tenant_id", sa.text("lower(email)")])


def downgrade() -> None:
    op.drop_index("ix_user_tenant_email_lower", table_name="user")
