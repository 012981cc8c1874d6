"""Alembic environment for the joint CA's schema (run by ``ca.db.upgrade``)."""

from __future__ import annotations

from alembic import context

from ca.db import MIGRATION_LOCK, lock_for_migrations, make_engine
from ca.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            lock_for_migrations(connection, MIGRATION_LOCK)
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
