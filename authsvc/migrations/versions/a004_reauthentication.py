"""auth_sessions.authenticated_at: when the session's holder last proved its key

Revision ID: a004
Revises: a003
Create Date: 2026-11-28

A relying party's ``prompt=login`` or ``max_age`` (OpenID Connect Core §3.1.2.1) asks the
browser's holder to sign in again. With the certificate the session was opened with,
the session is re-authenticated in place rather than ended (which logged the user out
of every other service): this column records when. NULL (sessions of earlier
releases, and every session until it is re-authenticated) reads as ``created_at``. A
nullable column: a release before this one, still running, ignores it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ca.models

revision = "a004"
down_revision = "a003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("authenticated_at", ca.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.drop_column("authenticated_at")
