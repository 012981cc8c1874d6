"""quorum ceremonies of joint custody

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ca.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "custody_ceremonies",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=40), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("custody_id", sa.String(length=40), nullable=False),
        sa.Column("boot_id", sa.String(length=32), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("opened_by", sa.String(length=120), nullable=False),
        sa.Column("created_at", ca.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", ca.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", ca.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("custody_ceremonies", schema=None) as batch_op:
        batch_op.create_index("ix_custody_ceremonies_boot_id", ["boot_id"], unique=False)
        batch_op.create_index("ix_custody_ceremonies_state", ["state"], unique=False)
    op.create_table(
        "custody_ceremony_shares",
        sa.Column("ceremony_id", sa.String(length=64), nullable=False),
        sa.Column("member", sa.String(length=40), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", ca.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ceremony_id", "member"),
    )


def downgrade() -> None:
    op.drop_table("custody_ceremony_shares")
    with op.batch_alter_table("custody_ceremonies", schema=None) as batch_op:
        batch_op.drop_index("ix_custody_ceremonies_state")
        batch_op.drop_index("ix_custody_ceremonies_boot_id")
    op.drop_table("custody_ceremonies")
