"""auth_events.writer_xact: the transaction that wrote each event (PostgreSQL)

Revision ID: a003
Revises: a002
Create Date: 2026-11-27

On PostgreSQL an event's id is taken from a sequence when it is inserted, not when it
commits, so events commit out of id order and a consumer paging ``after`` an id could
skip one. Each event now records its writing transaction (``pg_current_xact_id()``, by
the column's default, so a process of the previous release writing during a rolling
upgrade records it too), and :meth:`authsvc.store.SqlAuthStore.events` serves events in
(writer, id) order up to the oldest transaction still writing. Events written before
this revision read 0: written long ago, served first, in id order. On SQLite (writers
one at a time, ids in commit order) the column is always 0.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a003"
down_revision = "a002"
branch_labels = None
depends_on = None

WRITER_DEFAULT = "(pg_current_xact_id()::text)::bigint"
"""PostgreSQL 13 or later: the 64-bit (epoch-extended) id of the inserting transaction."""


def upgrade() -> None:
    # NOT NULL DEFAULT 0 is a catalogue change on PostgreSQL 11+ (no rewrite of the
    # table) and an ALTER TABLE ADD COLUMN on SQLite; old rows read 0.
    with op.batch_alter_table("auth_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("writer_xact", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.create_index("ix_auth_events_writer_xact_id", ["writer_xact", "id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # Only rows inserted from now on take the writer's id; set after the column
        # exists, so the existing rows keep 0 and the table is not rewritten.
        op.execute(f"ALTER TABLE auth_events ALTER COLUMN writer_xact SET DEFAULT {WRITER_DEFAULT}")


def downgrade() -> None:
    with op.batch_alter_table("auth_events", schema=None) as batch_op:
        batch_op.drop_index("ix_auth_events_writer_xact_id")
        batch_op.drop_column("writer_xact")
