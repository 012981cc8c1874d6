"""Typed configuration: defaults < TOML file < environment (``EPORT_*``) < explicit dict.

Tests pass a dict to ``create_app``; ``eport serve`` builds one from its flags.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ca.errors import PolicyError

_S = TypeVar("_S")

_REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"


def with_driver(url: str) -> str:
    """A database URL with the driver this project installs: ``postgresql://`` and
    ``postgres://`` (libpq's forms, which SQLAlchemy would give to psycopg 3, not
    installed) become ``postgresql+psycopg2://``; anything else is left as it is."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg2://" + url[len(plain) :]
    return url


@dataclass(frozen=True)
class CAConfig:
    """Settings of the joint CA service."""

    data_dir: Path = Path("var")
    """Where the embedded database and the CA's sealed key files live."""
    database_url: str = ""
    """SQLAlchemy URL; empty means SQLite ``<data_dir>/eport.db`` (WAL)."""
    policies_dir: Path = _REPO_POLICIES
    """Profiles, member agencies and rules (validated at load)."""
    public_base_url: str = "http://127.0.0.1:8000"
    """Public base URL of the CA: printed into certificates (AIA, CRL distribution points)."""
    ca_key_passphrase: str = field(default="", repr=False)
    """Unseals the issuing CA keys; in development read from ``<data_dir>/dev/``."""
    dev: bool = False
    """Embedded development default: a development joint CA is created on first start."""
    max_body_bytes: int = 64 * 1024
    """Request bodies above this size are refused with 413."""
    code_ttl_seconds: int = 7 * 24 * 3600
    """Lifetime of a one-time enrollment code (default 7 days)."""
    lint_sample_rate: float = 1.0
    """Share of certificates linted by pkilint before signing (1.0 = every one).

    Every profile's template is always linted once at start; see ``ca/lint.py``."""
    request_max_lifetime_seconds: int = 300
    """Upper bound on ``exp - iat`` of a signed request (RFC 7515 JWS)."""
    clock_skew_seconds: int = 30
    """Leeway for ``iat``/``exp`` of signed requests."""
    crl_refresh_seconds: float = 30.0
    """How often each server process re-signs stale or ageing CRLs (0: only on fetch)."""
    responder_renew_days: int = 30
    """An unsealed server renews an OCSP responder certificate expiring within this many
    days (checked at start and by the refresher; ``eport ca renew-responders``)."""
    token_issuer: str = ""
    """The token service's issuer (default ``<public_base_url>/auth``), for audit:read tokens."""
    audit_token_audience: str = "https://audit.eport.example"
    """The audience of access tokens for the audit API (``policies/services.toml``)."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses whose forwarded headers are believed; nobody else's are."""

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return with_driver(self.database_url)
        return f"sqlite:///{(self.data_dir / 'eport.db').resolve()}"

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        file: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> CAConfig:
        """Merge defaults, an optional TOML ``file``, ``EPORT_*`` variables and ``overrides``."""
        values, source = read_settings(
            cls, "ca", lambda name: ("EPORT_" + name.upper(),), file=file, environ=environ
        )
        values.update(overrides or {})
        return cls.from_mapping(values, source=source)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "configuration") -> CAConfig:
        cfg = build_settings(cls, values, source)
        # a share: 2 would lint every certificate and -1 none, neither said anywhere
        if not 0.0 <= cfg.lint_sample_rate <= 1.0:
            raise PolicyError(
                source,
                "lint_sample_rate",
                f"a share from 0 to 1 (EPORT_LINT_SAMPLE_RATE), not {cfg.lint_sample_rate}",
            )
        return cfg


def read_settings(
    cls: type,
    section: str,
    env_names: Callable[[str], tuple[str, ...]],
    *,
    file: Path | None,
    environ: Mapping[str, str] | None,
) -> tuple[dict[str, Any], str]:
    """The settings of dataclass ``cls`` found in the ``[section]`` of the TOML ``file``
    (default: ``EPORT_CONFIG``), then in the environment (the first of ``env_names(field)``
    that is set wins); and where they came from, for error messages."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = file or (Path(env["EPORT_CONFIG"]) if env.get("EPORT_CONFIG") else None)
    if path is not None:
        values.update(_read_toml(path).get(section, {}))
    for f in dataclasses.fields(cls):
        for name in env_names(f.name):
            if name in env:
                # a value that cannot be one is said in the variable's name, not as the
                # file's (or "configuration"), where nobody would look for it
                _coerce(name, f.name, f.type, env[name])
                values[f.name] = env[name]
                break
    return values, str(path or "configuration")


def _read_toml(path: Path) -> dict[str, Any]:
    """The configuration file's tables; a file that cannot be read or is not TOML is a
    :class:`PolicyError` naming it (``eport serve`` prints that one line; it was an
    "unexpected error: FileNotFoundError" that named no file)."""
    where = "configuration file (EPORT_CONFIG)"
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise PolicyError(str(path), where, f"cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(str(path), where, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (TOML 1.0 "Spec")
        raise PolicyError(str(path), where, f"not UTF-8: byte {exc.start} is not valid") from None


def build_settings(cls: type[_S], values: Mapping[str, Any], source: str) -> _S:
    """An instance of dataclass ``cls`` from raw ``values``; an unknown key or a value of
    the wrong type is a :class:`PolicyError` naming ``source`` and the key."""
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in known:
            raise PolicyError(source, key, "unknown setting")
        kwargs[key] = _coerce(source, key, known[key].type, raw)
    return cls(**kwargs)


def _coerce(source: str, key: str, typ: Any, raw: Any) -> Any:
    typ = str(typ)
    try:
        if typ == "Path":
            return Path(raw)
        if typ == "bool":
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in {"1", "true", "yes", "on"}
        if typ == "int":
            return int(raw)
        if typ == "float":
            return float(raw)
        if typ.startswith("tuple"):
            if isinstance(raw, str):
                return tuple(p.strip() for p in raw.split(",") if p.strip())
            return tuple(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise PolicyError(source, key, f"expected {typ}: {exc}") from exc
