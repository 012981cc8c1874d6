"""Alembic environment of the token service (its own version table)."""

from __future__ import annotations

from alembic import context

import authsvc.oidc_models  # noqa: F401  (the OpenID Connect tables, revision a002)
from authsvc.app import MIGRATION_LOCK, VERSION_TABLE
from authsvc.models import AuthBase
from ca.db import lock_for_migrations, make_engine

config = context.config


def run() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=AuthBase.metadata,
            version_table=VERSION_TABLE,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            lock_for_migrations(connection, MIGRATION_LOCK)
            context.run_migrations()
    engine.dispose()


run()
