"""SQLAlchemy models: the thin storage adapter's tables (schema managed by Alembic).

Uniqueness that matters is enforced by the database, never by process memory:
certificate serials (primary key), one-time codes (a conditional UPDATE), and
signed-request ``jti`` values (primary key of ``seen_jti``).
"""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

from sqlalchemy import DateTime, Index, Integer, LargeBinary, String, Text
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


class ApplicationRow(Base):
    __tablename__ = "applications"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subject_class: Mapped[str] = mapped_column(String(20))
    uscc: Mapped[str | None] = mapped_column(String(18), index=True)
    vetted: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(12), index=True)
    created_at: Mapped[datetime.datetime]
    applicant: Mapped[str] = mapped_column(String(120))
    decided_by: Mapped[str | None] = mapped_column(String(120))
    decided_at: Mapped[datetime.datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)


class EnrollmentCodeRow(Base):
    __tablename__ = "enrollment_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    application_id: Mapped[str] = mapped_column(String(40), index=True)
    profiles: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime.datetime]
    used_at: Mapped[datetime.datetime | None]


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

    __table_args__ = (Index("ix_certificates_uscc_created", "uscc", "created_at"),)


class EventRow(Base):
    """Append-only: the code never updates or deletes a row (retention: ESL Art. 24)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime.datetime]
    type: Mapped[str] = mapped_column(String(40), index=True)
    actor: Mapped[str] = mapped_column(String(120))
    uscc: Mapped[str | None] = mapped_column(String(18), index=True)
    subject: Mapped[str | None] = mapped_column(Text)
    profile: Mapped[str | None] = mapped_column(String(40))
    issuer: Mapped[str | None] = mapped_column(String(40))
    serial: Mapped[str | None] = mapped_column(String(40), index=True)
    cert_sha256: Mapped[str | None] = mapped_column(String(64))
    application_id: Mapped[str | None] = mapped_column(String(40))
    details: Mapped[str] = mapped_column(Text, default="{}")


class SeenJtiRow(Base):
    __tablename__ = "seen_jti"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[datetime.datetime] = mapped_column(index=True)
