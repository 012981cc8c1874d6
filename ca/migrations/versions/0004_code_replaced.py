"""enrollment codes: when a newer code replaced an unused one

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 08:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ca.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollment_codes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("replaced_at", ca.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    # Releases before 0004 ended an unused code by moving its expiry to the moment it
    # was replaced; do the same, so a code withdrawn (replaced, its approval withdrawn,
    # its enterprise ceased) does not come back to life when the mark is dropped.
    op.execute(
        "UPDATE enrollment_codes SET expires_at = replaced_at "
        "WHERE replaced_at IS NOT NULL AND replaced_at < expires_at"
    )
    with op.batch_alter_table("enrollment_codes", schema=None) as batch_op:
        batch_op.drop_column("replaced_at")
