"""The token service's tables (its own database and Alembic history; never the CA's)."""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, FetchedValue, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ca.models import UTCDateTime


class AuthBase(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime.datetime: UTCDateTime}


class SigningKeyRow(AuthBase):
    """A token-signing key (ES256). ``next`` keys are published before they sign; a
    ``retired`` key stays published until every token it signed has expired."""

    __tablename__ = "auth_signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(8), index=True)
    public_jwk: Mapped[str] = mapped_column(Text)
    private_pem: Mapped[bytes] = mapped_column(LargeBinary)
    """Encrypted PKCS#8 (the auth key passphrase)."""
    created_at: Mapped[datetime.datetime]
    activated_at: Mapped[datetime.datetime | None]
    retired_at: Mapped[datetime.datetime | None]
    unpublish_at: Mapped[datetime.datetime | None]


class SessionRow(AuthBase):
    """A single sign-on session opened by a certificate login."""

    __tablename__ = "auth_sessions"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), index=True)
    subject_class: Mapped[str] = mapped_column(String(20))
    uscc: Mapped[str | None] = mapped_column(String(18))
    operator_id: Mapped[str | None] = mapped_column(String(64))
    agency_id: Mapped[str | None] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(Text)
    cert_serial: Mapped[str] = mapped_column(String(40), index=True)
    cert_sha256: Mapped[str] = mapped_column(String(64))
    cert_der: Mapped[bytes] = mapped_column(LargeBinary)
    client_addr: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime.datetime]
    expires_at: Mapped[datetime.datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime.datetime | None] = mapped_column(index=True)
    end_reason: Mapped[str | None] = mapped_column(String(60))
    authenticated_at: Mapped[datetime.datetime | None]
    """When its holder last proved the key again (``prompt=login``, ``max_age``); NULL
    reads as ``created_at`` (revision a004)."""


class RefreshTokenRow(AuthBase):
    """Opaque refresh tokens, stored only as SHA-256; rotated on every use."""

    __tablename__ = "auth_refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    sid: Mapped[str] = mapped_column(String(64), index=True)
    issued_at: Mapped[datetime.datetime]
    used_at: Mapped[datetime.datetime | None]
    successor_hash: Mapped[str | None] = mapped_column(String(64))


class RevokedTokenRow(AuthBase):
    """Access tokens revoked before they expire (RFC 7009), kept until their exp."""

    __tablename__ = "auth_revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime.datetime] = mapped_column(index=True)


class SeenAssertionRow(AuthBase):
    """jti values of login assertions and signed requests: single use across processes."""

    __tablename__ = "auth_seen_jti"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[datetime.datetime] = mapped_column(index=True)


class OperatorRolesRow(AuthBase):
    """Roles an enterprise's legal person granted to one of its operators."""

    __tablename__ = "auth_operator_roles"

    uscc: Mapped[str] = mapped_column(String(18), primary_key=True)
    operator_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    roles: Mapped[str] = mapped_column(Text)
    granted_by: Mapped[str] = mapped_column(String(120))
    granted_at: Mapped[datetime.datetime]
    bound_authorization: Mapped[str | None] = mapped_column(String(64), default=None)
    """The operator authorization these roles are for (an operator certificate's
    dnQualifier: :func:`ca.policy.authorization_of`), bound at the first login after the
    grant; NULL until then (revision a005)."""


class LoginFailureRow(AuthBase):
    """Failed logins per key (certificate fingerprint or client address) and window."""

    __tablename__ = "auth_login_failures"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    window_start: Mapped[datetime.datetime]
    count: Mapped[int] = mapped_column(Integer)


class AuthEventRow(AuthBase):
    """Logins, failures, token exchanges, revocations and logouts, for auditors."""

    __tablename__ = "auth_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime.datetime] = mapped_column(index=True)
    type: Mapped[str] = mapped_column(String(40), index=True)
    subject: Mapped[str | None] = mapped_column(String(200), index=True)
    sid: Mapped[str | None] = mapped_column(String(64))
    cert_serial: Mapped[str | None] = mapped_column(String(40))
    client_addr: Mapped[str | None] = mapped_column(String(64))
    service: Mapped[str | None] = mapped_column(String(80))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    writer_xact: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())
    """The transaction that wrote the event, filled in by the database: on PostgreSQL
    ``pg_current_xact_id()``, the column's default since revision a003; 0 on SQLite and
    for events written before a003. Events are paged in (writer_xact, id) order: the
    order in which they became visible (:meth:`authsvc.store.SqlAuthStore.events`)."""

    __table_args__ = (
        Index("ix_auth_events_sid", "sid"),
        Index("ix_auth_events_writer_xact_id", "writer_xact", "id"),
    )
