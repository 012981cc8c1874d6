"""applications: the operator id lookup column folded to lower case

X.520 compares a subject's serialNumber (an operator certificate's operator id) ignoring
case, so ``E1`` and ``e1`` name one operator to a relying party; ``eport operator add
--id e1`` while E1's certificate was in force issued a second credential of that name
(enrollment probe, session 22). The column is only the index's lookup key (the id as
typed stays in ``vetted``): it is stored folded, and looked up folded, on the same
``(uscc, operator_id)`` index. Operator ids are PrintableString, ASCII only, so SQL's
``lower()`` folds them as Python does.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 04:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ca.db.FOLD_OPERATOR_IDS runs the same statement at every start, for what a server of
    # an earlier release still writes after the upgrade; written out here, as a
    # migration must not change with later code
    op.execute(
        "UPDATE applications SET operator_id = lower(operator_id) "
        "WHERE operator_id IS NOT NULL AND operator_id <> lower(operator_id)"
    )


def downgrade() -> None:
    pass  # the ids as typed are in vetted; a folded key matches them as before
