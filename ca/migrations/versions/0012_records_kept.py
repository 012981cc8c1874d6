"""records kept: the database refuses to delete or rewrite the CA's records

The Electronic Signature Law (Art. 24) has a CA keep certification information five years
after a certificate becomes invalid, and DESIGN.md asks that storage make this "a policy,
not an accident". Nothing in eport deletes or rewrites these rows, but the database took
any statement that did: an operator's clean-up script, a mistyped ``DELETE`` in a SQL
shell, or a tool run against the wrong database removed certificates and log entries, and
only an auditor's ``eport audit verify --full`` would tell (upgrade probe, session 24).

Triggers now refuse, on SQLite and PostgreSQL alike:

* any ``DELETE`` from ``events``, ``log_entries``, ``certificates``, ``applications`` and
  ``checkpoints`` (and, on PostgreSQL, ``TRUNCATE``, which fires no row trigger);
* an ``UPDATE`` of what a row records: every column of ``log_entries`` and
  ``checkpoints``; every column of ``events`` and ``certificates`` but ``log_index`` (the
  listing key, filled in after the fact: ``ca.db.upgrade``); of ``applications``, the
  columns that say what was applied for and by whom (its state, decision, reason, listing
  key and folded operator id change as it is decided).

This is a guard against accidents, not against an attacker: whoever may run DDL on the
database (the CA's own role owns its tables) can drop a trigger first. The Merkle log and
``eport audit verify --full`` are what detect that. Restoring a backup replaces whole
tables (``pg_restore --clean`` drops them), which the triggers do not stop.

A later migration that rebuilds one of these tables on SQLite (Alembic's batch mode copies
it into a new table) drops its triggers with it, and must create them again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 08:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# table: the columns an UPDATE may not set (None: none may be set)
_GUARDED: dict[str, tuple[str, ...] | None] = {
    "events": (
        "id",
        "at",
        "type",
        "actor",
        "uscc",
        "subject",
        "profile",
        "issuer",
        "serial",
        "cert_sha256",
        "application_id",
        "details",
    ),
    "log_entries": None,
    "certificates": (
        "serial",
        "issuer_id",
        "profile",
        "application_id",
        "uscc",
        "subject",
        "spki_sha256",
        "cert_sha256",
        "not_before",
        "not_after",
        "der",
        "created_at",
    ),
    "applications": ("id", "subject_class", "uscc", "vetted", "created_at", "applicant"),
    "checkpoints": None,
}
_MESSAGE = "eport: the CA keeps its records: rows of this table are never deleted or rewritten"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute(
            "CREATE OR REPLACE FUNCTION eport_keep_records() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION "
            f"'{_MESSAGE} (% on %)', TG_OP, TG_TABLE_NAME "
            "USING ERRCODE = 'restrict_violation'; END $$"
        )
    for table, columns in _GUARDED.items():
        update_of = f"UPDATE OF {', '.join(columns)}" if columns else "UPDATE"
        if postgres:
            for name, when, each in (
                ("delete", "DELETE", "ROW"),
                ("update", update_of, "ROW"),
                ("truncate", "TRUNCATE", "STATEMENT"),
            ):
                op.execute(
                    f"CREATE TRIGGER eport_keep_{table}_{name} BEFORE {when} ON {table} "
                    f"FOR EACH {each} EXECUTE FUNCTION eport_keep_records()"
                )
        else:
            for name, when in (("delete", "DELETE"), ("update", update_of)):
                op.execute(
                    f"CREATE TRIGGER eport_keep_{table}_{name} BEFORE {when} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE} ({table})'); END"
                )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in _GUARDED:
        for name in ("delete", "update", "truncate") if postgres else ("delete", "update"):
            suffix = f" ON {table}" if postgres else ""
            op.execute(f"DROP TRIGGER IF EXISTS eport_keep_{table}_{name}{suffix}")
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS eport_keep_records()")
