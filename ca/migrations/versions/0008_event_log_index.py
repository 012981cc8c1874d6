"""events: log_index, the leaf index of each event's log entry, and indexes in log order

The auditor's listings (``GET /ca/v1/audit/events``, the web view, ``eport audit log``)
joined ``log_entries`` to ``events`` and ordered by ``log_entries.idx``: a page filtered
by type (every ``certificate.revoked``) or USCC sorted every matching event first. The
index is now kept on the event row, written with it; pages filter and order on
``(type, log_index)``, ``(uscc, log_index)``, ``(serial, log_index)`` or ``log_index``
in index order. These replace the single-column indexes on type, uscc and serial (their
prefixes). Existing rows are filled from ``log_entries`` (one portable UPDATE).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log_index", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE events SET log_index ="
        " (SELECT log_entries.idx FROM log_entries WHERE log_entries.event_id = events.id)"
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_serial")
        batch_op.drop_index("ix_events_type")
        batch_op.drop_index("ix_events_uscc")
        batch_op.create_index("ix_events_log_index", ["log_index"], unique=True)
        batch_op.create_index("ix_events_type_log_index", ["type", "log_index"], unique=False)
        batch_op.create_index("ix_events_uscc_log_index", ["uscc", "log_index"], unique=False)
        batch_op.create_index("ix_events_serial_log_index", ["serial", "log_index"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_serial_log_index")
        batch_op.drop_index("ix_events_uscc_log_index")
        batch_op.drop_index("ix_events_type_log_index")
        batch_op.drop_index("ix_events_log_index")
        batch_op.create_index("ix_events_uscc", ["uscc"], unique=False)
        batch_op.create_index("ix_events_type", ["type"], unique=False)
        batch_op.create_index("ix_events_serial", ["serial"], unique=False)
        batch_op.drop_column("log_index")
