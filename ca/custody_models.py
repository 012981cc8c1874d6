"""Tables of quorum ceremonies (Alembic 0003): a ceremony and the shares it received.

Shares are stored only as received: sealed to the ceremony's X25519 key, which only
the server instance that opened the ceremony can derive (:mod:`ca.bootkey`). They are
deleted when the ceremony completes. The primary key of ``custody_ceremony_shares``
makes "one share per custodian" a database rule.
"""

from __future__ import annotations

import datetime

from sqlalchemy import Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ca.models import Base


class CeremonyRow(Base):
    __tablename__ = "custody_ceremonies"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    operation: Mapped[str] = mapped_column(String(40))
    params: Mapped[str] = mapped_column(Text, default="{}")
    custody_id: Mapped[str] = mapped_column(String(40))
    boot_id: Mapped[str] = mapped_column(String(32), index=True)
    threshold: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(10), index=True)
    opened_by: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime.datetime]
    expires_at: Mapped[datetime.datetime]
    completed_at: Mapped[datetime.datetime | None]
    result: Mapped[str] = mapped_column(Text, default="{}")
    secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The unseal ceremony's seal KEK, wrapped by the boot key (never anything else)."""


class CeremonyShareRow(Base):
    __tablename__ = "custody_ceremony_shares"

    ceremony_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    member: Mapped[str] = mapped_column(String(40), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime.datetime]
