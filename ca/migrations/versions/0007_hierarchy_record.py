"""hierarchy_head, hierarchy_files: the CA files every host of one database should have

Several hosts of one PostgreSQL database each sign with the files of their own data
directory (``ca/``). A quorum ceremony or a forced OCSP responder renewal changed them on
one host only, and the others went on serving the old hierarchy without a word. The
host that changes them now publishes their digests (and the public files' bytes) here,
and the token of a forced responder renewal; the others compare (:mod:`ca.crosshost`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ca.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hierarchy_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("published_at", ca.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(length=120), nullable=False),
        sa.Column("responders_token", sa.String(length=32), nullable=True),
        sa.Column("responders_forced_at", ca.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "hierarchy_files",
        sa.Column("path", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("path"),
    )


def downgrade() -> None:
    op.drop_table("hierarchy_files")
    op.drop_table("hierarchy_head")
