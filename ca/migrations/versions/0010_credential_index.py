"""certificates: (uscc, profile, not_after), the one-legal-person-credential check's index

An enterprise's legal-person credential is checked for every enterprise approval, new
code and enrollment (``credentials_in_force``, and the group writer's statement where the
issuance is stored): its ``enterprise`` certificates not expired. With only ``(uscc,
log_index)`` that read every certificate of the USCC, its operators' too, and it runs
under the issuances' lock (SQLite's write lock, the log head's row lock on PostgreSQL),
which every other issuance of the CA waits for. An enterprise of 5,000 operator
certificates: 1.7-6.8 ms a check on SQLite (25,000, as renewals kept for five years
make them: 20-28 ms), 1.7-2.2 ms on PostgreSQL; with this index 0.005 ms and 0.13-0.16
ms, whatever the enterprise's size. Cessation's search of the enterprise's other
certificates (``certificates_of_class``) reads it too.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 20:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(
            "ix_certificates_uscc_profile_not_after",
            ["uscc", "profile", "not_after"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_certificates_uscc_profile_not_after")
