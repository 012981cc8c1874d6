"""Typed configuration of the token service: defaults < TOML ``[auth]`` < ``EPORT_AUTH_*``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ca.config import (
    _REPO_POLICIES,
    DAY,
    PoolBounds,
    bounded,
    build_settings,
    database_field,
    env_value,
    max_body,
    max_overflow,
    merge_overrides,
    pool_size,
    pool_timeout,
    read_settings,
    secret_field,
    url_field,
    with_driver,
)
from ca.errors import PolicyError


@dataclass(frozen=True)
class AuthConfig:
    data_dir: Path = Path("var")
    """Holds ``auth.db`` (embedded default) and, in embedded mode, the CA's public files."""
    database_url: str = database_field()
    """SQLAlchemy URL of the token service's own database (default SQLite ``auth.db``)."""
    public_base_url: str = url_field("http://127.0.0.1:8000")
    """The token service's public base URL; the issuer is ``<base>/auth``. An absolute
    http(s) URL with a host, no query or fragment."""
    policies_dir: Path = field(default=_REPO_POLICIES, metadata={"directory": True})
    status_mode: str = "local"
    """``local``: the embedded CA's status; ``ocsp``: the OCSP URL in each certificate."""
    ca_database_url: str = database_field()
    """The embedded CA's database, read only through ``ca.status`` (local status mode)."""
    key_passphrase: str = secret_field()
    """Encrypts the token-signing keys at rest (development: ``<data_dir>/dev/``)."""
    dev: bool = False
    trusted_proxies: tuple[str, ...] = field(default=(), metadata={"networks": True})
    """Addresses or networks (CIDR) whose client-certificate headers are believed."""
    proxy_secret: str = secret_field()
    """When set, a trusted proxy's forwarded headers are believed only with
    ``X-Eport-Proxy-Secret`` equal to it: on a host where other processes reach the
    service's loopback port too, they are not the proxy (:mod:`authsvc.proxy`)."""
    # Lifetimes up to ten years: a session never outlives its certificate anyway.
    access_token_seconds: int = bounded(600, 1, 3660 * DAY, "seconds")
    session_seconds: int = bounded(8 * 3600, 1, 3660 * DAY, "seconds")
    leeway_seconds: int = bounded(30, 0, 600, "seconds")
    status_ttl_seconds: float = bounded(2.0, 0, 3600, "seconds")
    sweep_seconds: float = bounded(2.0, 0.1, DAY, "seconds", zero="never")
    """How often each process ends sessions of revoked or held certificates (0: never)."""
    key_rotation_days: int = bounded(30, 1, 3660, "days")
    event_retention_days: int = bounded(0, 183, 36600, "days", zero="for ever")
    """How long login, token and logout events (``auth_events``) are kept: 0 (the default)
    for ever; else at least 183 days (six months, the least a network operator keeps its
    logs under the Cybersecurity Law of the PRC, Art. 21)."""
    max_body_bytes: int = max_body()
    db_pool_size: int = pool_size()
    """PostgreSQL connections each server process keeps open to the token service's
    database, and as many to the CA's in local status mode (SQLite's pool is not
    changed)."""
    db_max_overflow: int = max_overflow()
    """Connections each of those pools may open beyond ``db_pool_size`` under load."""
    db_pool_timeout_seconds: float = pool_timeout()
    """How long a request waits for a connection of those pools before it is answered
    503 (an OAuth endpoint: ``temporarily_unavailable``)."""

    @property
    def issuer(self) -> str:
        return self.public_base_url.rstrip("/") + "/auth"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return with_driver(self.database_url)
        return f"sqlite:///{(Path(self.data_dir) / 'auth.db').resolve()}"

    @property
    def pool_bounds(self) -> PoolBounds:
        """The bounds of each of the token service's PostgreSQL connection pools (its own
        database's, and the CA's read for status) in each server process."""
        return PoolBounds(self.db_pool_size, self.db_max_overflow, self.db_pool_timeout_seconds)

    @property
    def ca_sqlalchemy_url(self) -> str:
        if self.ca_database_url:
            return with_driver(self.ca_database_url)
        return f"sqlite:///{(Path(self.data_dir) / 'eport.db').resolve()}"

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        file: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> AuthConfig:
        shared = {
            "data_dir",
            "public_base_url",
            "policies_dir",
            "dev",
            "trusted_proxies",
            # one bound for the whole server unless the token service is given its own
            "db_pool_size",
            "db_max_overflow",
            "db_pool_timeout_seconds",
        }

        def env_names(name: str) -> tuple[str, ...]:
            own = ("EPORT_AUTH_" + name.upper(),)
            return (*own, "EPORT_" + name.upper()) if name in shared else own

        env = os.environ if environ is None else environ
        values, source = read_settings(cls, "auth", env_names, file=file, environ=env)
        shared_url = env_value(env, "EPORT_DATABASE_URL", secret=True)
        if shared_url is not None and "ca_database_url" not in values:
            values["ca_database_url"] = shared_url
        merge_overrides(values, overrides)
        cfg = build_settings(cls, values, source)
        if cfg.status_mode not in ("local", "ocsp"):
            raise PolicyError(
                source,
                "status_mode",
                f"EPORT_AUTH_STATUS_MODE is local or ocsp (lower case), not {cfg.status_mode!r}",
            )
        if cfg.proxy_secret and len(cfg.proxy_secret) < 32:
            given = next(
                (
                    n
                    for n in ("EPORT_AUTH_PROXY_SECRET", "EPORT_AUTH_PROXY_SECRET_FILE")
                    if n in env
                ),
                source,
            )
            raise PolicyError(given, "proxy_secret", "at least 32 characters (a random secret)")
        return cfg
