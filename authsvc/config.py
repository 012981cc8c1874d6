"""Typed configuration of the token service: defaults < TOML ``[auth]`` < ``EPORT_AUTH_*``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ca.config import _REPO_POLICIES, build_settings, read_settings, with_driver
from ca.errors import PolicyError


@dataclass(frozen=True)
class AuthConfig:
    data_dir: Path = Path("var")
    """Holds ``auth.db`` (embedded default) and, in embedded mode, the CA's public files."""
    database_url: str = ""
    """SQLAlchemy URL of the token service's own database (default SQLite ``auth.db``)."""
    public_base_url: str = "http://127.0.0.1:8000"
    """The token service's public base URL; the issuer is ``<base>/auth``."""
    policies_dir: Path = _REPO_POLICIES
    status_mode: str = "local"
    """``local``: the embedded CA's status; ``ocsp``: the OCSP URL in each certificate."""
    ca_database_url: str = ""
    """The embedded CA's database, read only through ``ca.status`` (local status mode)."""
    key_passphrase: str = field(default="", repr=False)
    """Encrypts the token-signing keys at rest (development: ``<data_dir>/dev/``)."""
    dev: bool = False
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks (CIDR) whose client-certificate headers are believed."""
    access_token_seconds: int = 600
    session_seconds: int = 8 * 3600
    leeway_seconds: int = 30
    status_ttl_seconds: float = 2.0
    sweep_seconds: float = 2.0
    """How often each process ends sessions of revoked or held certificates (0: never)."""
    key_rotation_days: int = 30
    max_body_bytes: int = 64 * 1024

    @property
    def issuer(self) -> str:
        return self.public_base_url.rstrip("/") + "/auth"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return with_driver(self.database_url)
        return f"sqlite:///{(Path(self.data_dir) / 'auth.db').resolve()}"

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
        shared = {"data_dir", "public_base_url", "policies_dir", "dev", "trusted_proxies"}

        def env_names(name: str) -> tuple[str, ...]:
            own = ("EPORT_AUTH_" + name.upper(),)
            return (*own, "EPORT_" + name.upper()) if name in shared else own

        env = os.environ if environ is None else environ
        values, source = read_settings(cls, "auth", env_names, file=file, environ=env)
        if "EPORT_DATABASE_URL" in env and "ca_database_url" not in values:
            values["ca_database_url"] = env["EPORT_DATABASE_URL"]
        values.update(overrides or {})
        cfg = build_settings(cls, values, source)
        if cfg.status_mode not in ("local", "ocsp"):
            raise PolicyError(source, "status_mode", "local or ocsp")
        return cfg
