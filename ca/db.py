"""Database set-up: engines configured per backend, and Alembic migrations to head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine

from ca.store import configure_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def engine_options(url: str) -> dict[str, object]:
    """Ping pooled connections before use only over a network: a SQLite file needs no
    liveness check, and the ping is a query on every checkout (the OCSP hot path)."""
    return {"pool_pre_ping": not url.startswith("sqlite")}


def make_engine(url: str) -> Engine:
    engine = create_engine(url, **engine_options(url))
    configure_engine(engine)
    return engine


def upgrade(url: str) -> None:
    """Bring the schema at ``url`` to the latest Alembic revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
