"""Alembic environment of the token service (its own version table)."""

from __future__ import annotations

from alembic import context

import authsvc.oidc_models  # noqa: F401  (the OpenID Connect tables, revision a002)
from authsvc.models import AuthBase
from ca.db import make_engine

config = context.config
VERSION_TABLE = "authsvc_alembic_version"


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
            context.run_migrations()
    engine.dispose()


run()
