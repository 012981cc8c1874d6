"""Tables of the OpenID Connect provider (Alembic revision a002)."""

from __future__ import annotations

import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.models import AuthBase


class BrowserSessionRow(AuthBase):
    """A browser's SSO cookie (SHA-256 only) and the session it holds, with the CSRF
    token of the forms it posts."""

    __tablename__ = "oidc_browser_sessions"

    cookie_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    sid: Mapped[str] = mapped_column(String(64), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime.datetime]


class AuthorizationCodeRow(AuthBase):
    """An authorization code (SHA-256 only), what it is bound to, and what it produced."""

    __tablename__ = "oidc_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(32))
    redirect_uri: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[str | None] = mapped_column(Text)
    sid: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime.datetime]
    expires_at: Mapped[datetime.datetime] = mapped_column(index=True)
    used_at: Mapped[datetime.datetime | None]
    access_jti: Mapped[str | None] = mapped_column(String(64), unique=True)
    access_expires_at: Mapped[datetime.datetime | None]
    replayed_at: Mapped[datetime.datetime | None]


class SessionClientRow(AuthBase):
    """A client that got a code in an SSO session: owed a back-channel logout when the
    session ends (an outbox row: leased by ``next_at``, finished by ``done_at``)."""

    __tablename__ = "oidc_session_clients"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    first_at: Mapped[datetime.datetime]
    next_at: Mapped[datetime.datetime]
    """Not before this time (a lease while a process delivers, or a retry's backoff)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime.datetime | None]
    done_at: Mapped[datetime.datetime | None]
    """Delivered, not needed (no back-channel URI) or given up."""

    __table_args__ = (Index("ix_oidc_session_clients_pending", "done_at", "next_at"),)
