"""enrollment codes: replaced_at becomes withdrawn_at

A code is withdrawn unused for three reasons (a newer code replaced it, its approval
was withdrawn, its enterprise ceased operation), not only when replaced.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollment_codes", schema=None) as batch_op:
        batch_op.alter_column("replaced_at", new_column_name="withdrawn_at")


def downgrade() -> None:
    with op.batch_alter_table("enrollment_codes", schema=None) as batch_op:
        batch_op.alter_column("withdrawn_at", new_column_name="replaced_at")
