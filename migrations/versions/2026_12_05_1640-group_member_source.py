"""group member source: which upstream's mapping made a membership

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 16:40:00

* ``group_member`` gains ``source``: NULL for a membership an admin, the CLI or SCIM made; ``idp:<id>``
  for one an upstream's mapping rules made at sign-in. A sign-in removes only the memberships its own
  upstream made, so memberships from SCIM or admins are never touched by a brokered sign-in.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("group_member") as batch:
        batch.add_column(sa.Column("source", sa.String(length=96), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("group_member") as batch:
        batch.drop_column("source")
