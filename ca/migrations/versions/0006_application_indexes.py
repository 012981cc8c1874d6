"""applications: operator_id; applications and certificates: indexes in listing order

At scale (an enterprise with thousands of operators, tens of thousands of applications)
``eport operator add`` read and parsed every operator application of the enterprise, in
its write transaction, to find the earlier authorizations of one operator id; and every
page of ``eport ra list`` sorted all applications of its state. The operator id becomes a
column (filled from ``vetted`` here), indexed with the USCC; the listings read
``(state, created_at, id)`` or ``(created_at, id)`` in index order, and an officer's
listing of all certificates ``(created_at, serial)``. The two single-column indexes of
applications are the prefixes of the new ones and go.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 14:00:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("operator_id", sa.String(length=64), nullable=True))
    conn = op.get_bind()
    apps = sa.table(
        "applications",
        sa.column("id", sa.String),
        sa.column("subject_class", sa.String),
        sa.column("vetted", sa.Text),
        sa.column("operator_id", sa.String),
    )
    rows = conn.execute(
        sa.select(apps.c.id, apps.c.vetted).where(apps.c.subject_class == "operator")
    ).all()
    filled = [
        {"app_id": app_id, "operator_id": json.loads(vetted).get("operator_id")}
        for app_id, vetted in rows
    ]
    if filled:
        conn.execute(
            apps.update()
            .where(apps.c.id == sa.bindparam("app_id"))
            .values(operator_id=sa.bindparam("operator_id")),
            filled,
        )
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_applications_uscc"))
        batch_op.drop_index(batch_op.f("ix_applications_state"))
        batch_op.create_index(
            "ix_applications_uscc_operator", ["uscc", "operator_id"], unique=False
        )
        batch_op.create_index(
            "ix_applications_state_created", ["state", "created_at", "id"], unique=False
        )
        batch_op.create_index("ix_applications_created", ["created_at", "id"], unique=False)
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index("ix_certificates_created", ["created_at", "serial"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_certificates_created")
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.drop_index("ix_applications_created")
        batch_op.drop_index("ix_applications_state_created")
        batch_op.drop_index("ix_applications_uscc_operator")
        batch_op.create_index(batch_op.f("ix_applications_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_applications_uscc"), ["uscc"], unique=False)
        batch_op.drop_column("operator_id")
