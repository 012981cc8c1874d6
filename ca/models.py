"""SQLAlchemy models: the thin storage adapter's tables (schema managed by Alembic).

Uniqueness that matters is enforced by the database, never by process memory:
certificate serials (primary key), one-time codes (a conditional UPDATE), and
signed-request ``jti`` values (primary key of ``seen_jti``).
"""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, DateTime, Index, Integer, LargeBinary, SmallInteger, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(datetime.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime.datetime: UTCDateTime}


# Listing keys. Why applications and certificates are listed by ``log_index``.
#
# The RA's and the enterprises' listings page by a cursor: the key of the last row seen.
# A row's key is the leaf index of the first event that names it, the event recorded in
# the transaction that made the row. Indices are handed out under the log head's row lock
# (:func:`ca.translog.lock_head`), held to the commit: a row can only get a higher index
# than another after that other committed, so a reader that saw index N has seen every
# row below it, on PostgreSQL too (``created_at`` or an id from a sequence is taken at
# insert, and an earlier one may commit after a reader passed it). A row that leaves the
# listed state (a pending application decided) moves no other row, as it did an offset.
# A row written without its key (by a server of a release before 0009, still running
# after the upgrade) gets it at the next start (:func:`ca.store.fill_listing_keys`).


class ApplicationRow(Base):
    __tablename__ = "applications"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subject_class: Mapped[str] = mapped_column(String(20))
    uscc: Mapped[str | None] = mapped_column(String(18))
    vetted: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime.datetime]
    applicant: Mapped[str] = mapped_column(String(120))
    decided_by: Mapped[str | None] = mapped_column(String(120))
    decided_at: Mapped[datetime.datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)
    operator_id: Mapped[str | None] = mapped_column(String(64))
    """An operator's application: the operator id it authorizes, folded to lower case
    (``vetted`` keeps it as typed; X.520 compares the serialNumber it becomes ignoring
    case), so that an enterprise's earlier authorizations of one operator are found by
    index, not by reading every operator application of the enterprise."""
    log_index: Mapped[int | None] = mapped_column(BigInteger)
    """The leaf index of the first event naming this application (its submission or
    authorization), written in the transaction that made it: its listing key (see
    "Listing keys" above)."""

    # Listings page by log_index, per state or all (eport ra list): read in index order
    # from a cursor, not sorted whole for every page. (uscc, ...) serves the USCC lookups.
    __table_args__ = (
        Index("ix_applications_uscc_operator", "uscc", "operator_id"),
        Index("ix_applications_state_log_index", "state", "log_index"),
        Index("ix_applications_log_index", "log_index", unique=True),
    )


class EnrollmentCodeRow(Base):
    __tablename__ = "enrollment_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    application_id: Mapped[str] = mapped_column(String(40), index=True)
    profiles: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime.datetime]
    used_at: Mapped[datetime.datetime | None]
    withdrawn_at: Mapped[datetime.datetime | None]
    """When this unused code was withdrawn: a newer code replaced it (eport ra new-code,
    eport operator add again), its approval was withdrawn (eport ra withdraw), or its
    enterprise ceased operation (an operator's code)."""


class CertificateRow(Base):
    __tablename__ = "certificates"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    """Lower-case hex without leading zeros (serials exceed 64-bit integers)."""
    issuer_id: Mapped[str] = mapped_column(String(40))
    profile: Mapped[str] = mapped_column(String(40))
    application_id: Mapped[str | None] = mapped_column(String(40), index=True)
    uscc: Mapped[str | None] = mapped_column(String(18))
    subject: Mapped[str] = mapped_column(Text)
    spki_sha256: Mapped[str] = mapped_column(String(64), index=True)
    cert_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    not_before: Mapped[datetime.datetime]
    not_after: Mapped[datetime.datetime]
    der: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime.datetime]
    log_index: Mapped[int | None] = mapped_column(BigInteger)
    """The leaf index of the event that recorded this certificate's issuance, written in
    the same transaction: its listing key (see "Listing keys" above)."""

    # An enterprise's listing (uscc, log_index) and an officer's of every certificate
    # (log_index) page from a cursor in index order, not a sort of them all. The check of
    # an enterprise's one legal-person credential, made under the issuances' lock, reads
    # (uscc, profile, not_after): its enterprise certificates not expired, not every
    # operator certificate of the USCC (migration 0010).
    __table_args__ = (
        Index("ix_certificates_uscc_log_index", "uscc", "log_index"),
        Index("ix_certificates_uscc_profile_not_after", "uscc", "profile", "not_after"),
        Index("ix_certificates_log_index", "log_index", unique=True),
    )


class EventRow(Base):
    """Append-only: the code never updates or deletes a row (retention: ESL Art. 24), but
    to set a missing ``log_index`` once.

    ``log_index`` is the leaf index of the event's entry in the transparency log
    (``log_entries.idx``), written with the row (the writer holds the log head's lock, so
    it knows the index before the insert); set afterwards, from the log, only for an event
    older than the log or written by a release before 0008. The auditor's listings
    filter and order on this table alone: ``(type, log_index)``, ``(uscc, log_index)``
    and ``(serial, log_index)`` serve a filtered page in index order, ``log_index`` an
    unfiltered one, with no sort of every matching event."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime.datetime]
    type: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(120))
    uscc: Mapped[str | None] = mapped_column(String(18))
    subject: Mapped[str | None] = mapped_column(Text)
    profile: Mapped[str | None] = mapped_column(String(40))
    issuer: Mapped[str | None] = mapped_column(String(40))
    serial: Mapped[str | None] = mapped_column(String(40))
    cert_sha256: Mapped[str | None] = mapped_column(String(64))
    application_id: Mapped[str | None] = mapped_column(String(40))
    details: Mapped[str] = mapped_column(Text, default="{}")
    log_index: Mapped[int | None] = mapped_column(BigInteger)
    """The leaf index of this event's log entry; None only for an event not logged (yet)."""

    __table_args__ = (
        Index("ix_events_log_index", "log_index", unique=True),
        Index("ix_events_type_log_index", "type", "log_index"),
        Index("ix_events_uscc_log_index", "uscc", "log_index"),
        Index("ix_events_serial_log_index", "serial", "log_index"),
    )


class SeenJtiRow(Base):
    __tablename__ = "seen_jti"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[datetime.datetime] = mapped_column(index=True)


# -- certificate status (RFC 5280 §5, RFC 6960) -------------------------------------------------


class CertificateStatusRow(Base):
    """Current revocation status of a certificate; absent means good.

    ``state`` is ``revoked`` (final) or ``hold`` (certificateHold, reversible by
    resume). History lives in ``events``; this row is the answer OCSP and CRLs give.
    """

    __tablename__ = "certificate_status"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    issuer_id: Mapped[str] = mapped_column(String(40), index=True)
    state: Mapped[str] = mapped_column(String(8))
    revoked_at: Mapped[datetime.datetime]
    reason: Mapped[int | None] = mapped_column(Integer)
    invalidity_date: Mapped[datetime.datetime | None]
    changed_at: Mapped[datetime.datetime] = mapped_column(index=True)
    """Last change (revocation, hold, or lifting of a hold): what delta CRLs select on."""


class CRLStateRow(Base):
    """Per issuer: the CRL number sequence (never reused, never backwards) and the latest CRL."""

    __tablename__ = "crl_state"

    issuer_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    crl_number: Mapped[int] = mapped_column(BigInteger)
    this_update: Mapped[datetime.datetime | None]
    next_update: Mapped[datetime.datetime | None]
    der: Mapped[bytes | None] = mapped_column(LargeBinary)
    stale: Mapped[bool] = mapped_column(default=True)
    """Set in the transaction of any status change; cleared when a new CRL is signed."""


class OCSPResponseRow(Base):
    """Pre-signed OCSP responses shared by every server process (RFC 6960 §2.4)."""

    __tablename__ = "ocsp_responses"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    issuer_id: Mapped[str] = mapped_column(String(40))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    this_update: Mapped[datetime.datetime]
    next_update: Mapped[datetime.datetime] = mapped_column(index=True)


# -- the issuance transparency log (RFC 9162 §2.1) ----------------------------------------------


class LogEntryRow(Base):
    """Leaf ``idx`` of the Merkle tree: the canonical serialization of one event."""

    __tablename__ = "log_entries"

    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[int] = mapped_column(Integer, unique=True)
    entry: Mapped[bytes] = mapped_column(LargeBinary)


class LogNodeRow(Base):
    """Hash of the perfect subtree at (level, idx); level 0 holds the leaf hashes."""

    __tablename__ = "log_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary)


class LogHeadRow(Base):
    """The single row (id = 1) locked by every append: one linear log across processes."""

    __tablename__ = "log_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary)


class CheckpointRow(Base):
    """Signed checkpoints (C2SP tlog-checkpoint); one per tree size, never two roots."""

    __tablename__ = "checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary)
    note: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime.datetime]


# -- the hierarchy's files as every host of one database should have them -------------------


class HierarchyHeadRow(Base):
    """The single row (id = 1) of the hierarchy record (:mod:`ca.crosshost`): its
    generation, raised by each host that publishes a change of its ``ca/`` files, and the
    token of the last forced OCSP responder renewal, which every host follows."""

    __tablename__ = "hierarchy_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(Integer)
    published_at: Mapped[datetime.datetime]
    published_by: Mapped[str] = mapped_column(String(120))
    responders_token: Mapped[str | None] = mapped_column(String(32))
    responders_forced_at: Mapped[datetime.datetime | None]


class HierarchyFileRow(Base):
    """One file of ``ca/`` as the last publishing host had it: its SHA-256, and its bytes
    when it is public (certificates, CRL, records); a key file's bytes are never stored."""

    __tablename__ = "hierarchy_files"

    path: Mapped[str] = mapped_column(String(200), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
