"""applications, certificates: log_index, the listing key, and indexes in its order

``eport ra list`` (``GET /ca/v1/ra/applications``) and ``eport cert list`` (``GET
/ca/v1/certificates``) paged by offset in ``created_at`` order. Deciding pending
applications between two pages moved every later one up, so the next offset skipped as
many; and ``created_at`` is taken at insert, not at commit, so on PostgreSQL a row that
committed after a reader passed its time was never shown to it. The listings now page
by a cursor on ``log_index``: the leaf index of the first event naming the row (its
submission, authorization or issuance), handed out under the log head's lock in the
transaction that makes the row (see ``ca/models.py``, "Listing keys"). Existing rows
are filled from ``events``; ``(state, log_index)``, ``log_index``, ``(uscc,
log_index)`` and ``log_index`` replace the ``created_at`` indexes of 0006.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_CHUNK = 5000


def upgrade() -> None:
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log_index", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log_index", sa.BigInteger(), nullable=True))
    # A certificate's first event is its issuance: one probe of (serial, log_index) each.
    op.execute(
        "UPDATE certificates SET log_index ="
        " (SELECT MIN(events.log_index) FROM events WHERE events.serial = certificates.serial)"
    )
    # events has no index on application_id: one pass over them, grouped. PostgreSQL
    # joins it in one UPDATE; an executemany of one UPDATE per application (SQLite's
    # way, in-process) made a round trip each there: about 90 s for 200,000.
    conn = op.get_bind()
    firsts_sql = (
        "SELECT application_id, MIN(log_index) AS idx FROM events"
        " WHERE application_id IS NOT NULL AND log_index IS NOT NULL"
        " GROUP BY application_id"
    )
    if conn.dialect.name == "postgresql":
        op.execute(
            "UPDATE applications SET log_index = firsts.idx FROM ("
            "SELECT application_id, MIN(log_index) AS idx FROM events"
            " WHERE application_id IS NOT NULL AND log_index IS NOT NULL"
            " GROUP BY application_id) AS firsts"
            " WHERE applications.id = firsts.application_id"
        )
    else:
        firsts = conn.execute(sa.text(firsts_sql)).all()
        update = sa.text("UPDATE applications SET log_index = :idx WHERE id = :app_id")
        for i in range(0, len(firsts), _CHUNK):
            chunk = firsts[i : i + _CHUNK]
            conn.execute(update, [{"app_id": app_id, "idx": int(idx)} for app_id, idx in chunk])
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.drop_index("ix_applications_created")
        batch_op.drop_index("ix_applications_state_created")
        batch_op.create_index(
            "ix_applications_state_log_index", ["state", "log_index"], unique=False
        )
        batch_op.create_index("ix_applications_log_index", ["log_index"], unique=True)
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_certificates_created")
        batch_op.drop_index("ix_certificates_uscc_created")
        batch_op.create_index("ix_certificates_uscc_log_index", ["uscc", "log_index"], unique=False)
        batch_op.create_index("ix_certificates_log_index", ["log_index"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_certificates_log_index")
        batch_op.drop_index("ix_certificates_uscc_log_index")
        batch_op.create_index("ix_certificates_uscc_created", ["uscc", "created_at"], unique=False)
        batch_op.create_index("ix_certificates_created", ["created_at", "serial"], unique=False)
        batch_op.drop_column("log_index")
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.drop_index("ix_applications_log_index")
        batch_op.drop_index("ix_applications_state_log_index")
        batch_op.create_index(
            "ix_applications_state_created", ["state", "created_at", "id"], unique=False
        )
        batch_op.create_index("ix_applications_created", ["created_at", "id"], unique=False)
        batch_op.drop_column("log_index")
