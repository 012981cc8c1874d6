"""Typed configuration: defaults < TOML file < environment (``EPORT_*``) < explicit dict.

Tests pass a dict to ``create_app``; ``eport serve`` builds one from its flags.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ca.errors import PolicyError

_S = TypeVar("_S")

_REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"

SECTIONS = ("auth", "ca")
"""The tables of an ``EPORT_CONFIG`` file; any other is refused (a typo such as ``[cA]``
was ignored, and its settings with it, without a word)."""

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
"""The spellings of a boolean setting (``EPORT_DEV``, ``EPORT_AUTH_DEV``); anything else
is refused (``maybe`` was read as false)."""

FALLBACK_KEYS = frozenset({"public_base_url"})
"""Settings an override gives only as a default: a value from the file or the
environment wins. ``eport serve`` passes ``http://HOST:PORT`` as the base URL it listens
on; a configured public name (``EPORT_AUTH_PUBLIC_BASE_URL``, ``[ca] public_base_url``)
was silently replaced by it."""


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric setting, checked wherever its value comes from."""

    low: float
    high: float
    unit: str
    zero: str = ""
    """When set, 0 is allowed too and means this (``only on fetch``)."""

    def check(self, value: float) -> str | None:
        """Why ``value`` is refused, or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number: {self.said()}, not {value}"
        if self.zero and value == 0:
            return None
        if not self.low <= value <= self.high:
            return f"{self.said()}, not {value}"
        return None

    def said(self) -> str:
        span = f"from {_num(self.low)} to {_num(self.high)} {self.unit}"
        return f"0 ({self.zero}) or {span}" if self.zero else span


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def bounded(default: Any, low: float, high: float, unit: str, zero: str = "") -> Any:
    """A numeric dataclass field whose value must lie in ``low..high``."""
    return field(default=default, metadata={"bounds": Bounds(low, high, unit, zero)})


def url_field(default: str, *, optional: bool = False) -> Any:
    """A field holding an absolute http(s) URL (``optional``: or empty, the default)."""
    return field(default=default, metadata={"url": "optional" if optional else "required"})


def secret_field(doc_default: str = "") -> Any:
    """A setting that is a secret (a passphrase, a database URL with its password): kept
    out of ``repr`` (and so out of logs and tracebacks), and also read from a file named
    by the variable with ``_FILE`` appended (``EPORT_CA_KEY_PASSPHRASE_FILE``), as Docker
    secrets and systemd credentials hand them over, so it need not sit in the
    environment of every process the server starts."""
    return field(default=doc_default, repr=False, metadata={"secret": True})


DATABASE_URL_FORMS = ("postgresql://", "postgres://", "postgresql+psycopg2://", "sqlite://")
"""The database URLs eport can use: PostgreSQL through the driver it installs, SQLite."""


def database_field() -> Any:
    """A database URL setting: a secret (it holds the password), and one of
    :data:`DATABASE_URL_FORMS` or empty (SQLite in the data directory)."""
    return field(default="", repr=False, metadata={"secret": True, "database": True})


DAY = 86400


def max_body() -> Any:
    """``max_body_bytes`` of either service: a CSR or a signed request fits in a few KiB."""
    return bounded(64 * 1024, 1024, 64 * 1024 * 1024, "bytes")


@dataclass(frozen=True)
class PoolBounds:
    """How many PostgreSQL connections one engine of one server process holds at most
    (SQLAlchemy's ``QueuePool``), and how long a request waits for one of them. Each
    ``eport serve`` worker has three such engines: the CA's, the token service's, and the
    token service's reader of the CA's database (local status mode)."""

    size: int = 5
    """Connections kept open once made (``pool_size``)."""
    overflow: int = 10
    """Connections opened beyond ``size`` under load, closed when given back
    (``max_overflow``)."""
    timeout: float = 30.0
    """Seconds a request waits for a connection when all are in use (``pool_timeout``)
    before it is answered 503 ``database-unavailable``."""


def pool_size() -> Any:
    """``db_pool_size`` of either service: SQLAlchemy's default, 5."""
    return bounded(PoolBounds.size, 1, 1000, "connections")


def max_overflow() -> Any:
    """``db_max_overflow`` of either service: SQLAlchemy's default, 10. Never SQLAlchemy's
    -1 (no bound): bounding is the point."""
    return bounded(PoolBounds.overflow, 0, 1000, "connections")


def pool_timeout() -> Any:
    """``db_pool_timeout_seconds`` of either service: SQLAlchemy's default, 30 s."""
    return bounded(PoolBounds.timeout, 0.1, 600.0, "seconds")


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
    database_url: str = database_field()
    """SQLAlchemy URL; empty means SQLite ``<data_dir>/eport.db`` (WAL)."""
    policies_dir: Path = field(default=_REPO_POLICIES, metadata={"directory": True})
    """Profiles, member agencies and rules (validated at load)."""
    public_base_url: str = url_field("http://127.0.0.1:8000")
    """Public base URL of the CA: printed into certificates (AIA, CRL distribution points).
    An absolute http(s) URL with a host and no query or fragment: empty, certificates were
    issued with no OCSP, caIssuers or CRL pointer at all."""
    status_base_url: str = url_field("", optional=True)
    """Where relying parties fetch status, printed into certificates instead of
    ``public_base_url`` (OCSP, CRL distribution points, caIssuers): RFC 5280 §4.2.1.13 and
    RFC 6960 use plain ``http://`` for them (fetching a CRL over TLS needs the status it
    carries). Empty: ``public_base_url``."""
    ca_key_passphrase: str = secret_field()
    """Unseals the issuing CA keys; in development read from ``<data_dir>/dev/``."""
    dev: bool = False
    """Embedded development default: a development joint CA is created on first start."""
    max_body_bytes: int = max_body()
    """Request bodies above this size are refused with 413."""
    code_ttl_seconds: int = bounded(7 * DAY, 60, 366 * DAY, "seconds")
    """Lifetime of a one-time enrollment code (default 7 days)."""
    application_days: int = bounded(90, 1, 3660, "days")
    """How long an application waits for an RA officer's decision (default 90 days): an
    older one is no longer approved (its vetting would rest on stale evidence); the
    applicant applies again. Rejecting it stays possible."""
    lint_sample_rate: float = 1.0
    """Share of certificates linted by pkilint before signing (1.0 = every one).

    Every profile's template is always linted once at start; see ``ca/lint.py``."""
    request_max_lifetime_seconds: int = bounded(300, 1, 300, "seconds")
    """Upper bound on ``exp - iat`` of a signed request (RFC 7515 JWS): at most the five
    minutes the CA allows any (it was range-checked up to an hour and read by nothing)."""
    clock_skew_seconds: int = bounded(30, 0, 600, "seconds")
    """Leeway for ``iat``/``exp`` of signed requests."""
    database_answer_seconds: float = bounded(30.0, 1.0, 3600.0, "seconds", zero="no limit")
    """How long a server process waits for PostgreSQL to answer one statement (or to
    finish a new connection: at most libpq's ``connect_timeout``) before it gives the
    connection up and answers 503: a server that takes queries and says nothing (stopped,
    its storage hung) held request threads for ever. Both services' connections; gunicorn's
    worker timeout is lengthened past it (:func:`cli.serve.worker_timeout`)."""
    db_pool_size: int = pool_size()
    """PostgreSQL connections each server process keeps open to the CA's database (for
    PostgreSQL's ``max_connections``; SQLite's pool is not changed)."""
    db_max_overflow: int = max_overflow()
    """Connections each server process may open to the CA's database beyond
    ``db_pool_size`` under load, closed again when given back."""
    db_pool_timeout_seconds: float = pool_timeout()
    """How long a request waits for one of those connections while all are in use before
    it is answered 503 (``database-unavailable``): SQLAlchemy's ``TimeoutError`` was a
    500 "the server failed" with a traceback."""
    crl_refresh_seconds: float = bounded(30.0, 0.1, DAY, "seconds", zero="only on fetch")
    """How often each server process re-signs stale or ageing CRLs (0: only on fetch)."""
    responder_renew_days: int = bounded(30, 1, 180, "days")
    """An unsealed server renews an OCSP responder certificate expiring within this many
    days (checked at start and by the refresher; ``eport ca renew-responders``)."""
    token_issuer: str = url_field("", optional=True)
    """The token service's issuer (default ``<public_base_url>/auth``), for audit:read tokens."""
    token_jwks_url: str = url_field("", optional=True)
    """Where the CA fetches the token service's keys (default ``<token_issuer>/jwks.json``):
    the token service's own address when it runs apart and the issuer's public one is not
    reached from the CA's host."""
    audit_token_audience: str = url_field("https://audit.eport.example")
    """The audience of access tokens for the audit API (``policies/services.toml``)."""
    trusted_proxies: tuple[str, ...] = field(default=(), metadata={"networks": True})
    """Addresses whose forwarded headers are believed; nobody else's are."""

    @property
    def certificate_base_url(self) -> str:
        """The base of the status URLs printed into certificates."""
        return self.status_base_url or self.public_base_url

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return with_driver(self.database_url)
        return f"sqlite:///{(self.data_dir / 'eport.db').resolve()}"

    @property
    def pool_bounds(self) -> PoolBounds:
        """The bounds of the CA's PostgreSQL connection pool in each server process."""
        return PoolBounds(self.db_pool_size, self.db_max_overflow, self.db_pool_timeout_seconds)

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
        merge_overrides(values, overrides)
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


def merge_overrides(values: dict[str, Any], overrides: Mapping[str, Any] | None) -> None:
    """``overrides`` over ``values`` (read from the file and the environment), except the
    :data:`FALLBACK_KEYS` those already hold."""
    for key, value in (overrides or {}).items():
        if key in FALLBACK_KEYS and key in values:
            continue
        values[key] = value


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
        values.update(_section(path, _read_toml(path), section))
    for f in dataclasses.fields(cls):
        for name in env_names(f.name):
            raw = env_value(env, name, secret=bool(f.metadata.get("secret")))
            if raw is not None:
                # a value that cannot be one is said in the variable's name, not as the
                # file's (or "configuration"), where nobody would look for it
                _check(name, f, _coerce(name, f.name, f.type, raw))
                values[f.name] = raw
                break
    return values, str(path or "configuration")


def env_value(env: Mapping[str, str], name: str, *, secret: bool) -> str | None:
    """The value of variable ``name``; for a secret, also the content of the file
    ``name_FILE`` names (one trailing newline dropped, as ``echo`` and editors leave
    one). Both set, an unreadable or empty file: a :class:`PolicyError` naming them."""
    file_name = name + "_FILE"
    if not secret or file_name not in env:
        return env.get(name)
    if name in env:
        raise PolicyError(f"{name} and {file_name}", "both set", "unset one of them")
    where = env[file_name]
    try:
        text = Path(where).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(file_name, where, f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(file_name, where, "is not UTF-8 text") from None
    value = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    if not value:
        raise PolicyError(file_name, where, "is empty")
    return value


def _section(path: Path, document: Mapping[str, Any], section: str) -> dict[str, Any]:
    """The ``[section]`` table of the file; a key outside the known tables is refused,
    naming it."""
    where = "configuration file (EPORT_CONFIG)"
    for name, table in document.items():
        if name not in SECTIONS:
            known = ", ".join(f"[{s}]" for s in SECTIONS)
            raise PolicyError(str(path), where, f"unknown section [{name}] (known: {known})")
        if not isinstance(table, dict):
            raise PolicyError(str(path), where, f"{name} must be a table ([{name}])")
    return dict(document.get(section, {}))


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
        _check(source, known[key], kwargs[key])
    return cls(**kwargs)


def _check(source: str, f: dataclasses.Field[Any], value: Any) -> None:
    """The checks a field's metadata asks for: its range, an http(s) URL, an existing
    directory, networks of proxies; a PolicyError naming ``source`` and the key."""
    bounds: Bounds | None = f.metadata.get("bounds")
    if bounds is not None:
        why = bounds.check(value)
        if why is not None:
            raise PolicyError(source, f.name, why)
    url = f.metadata.get("url")
    if url is not None and not (url == "optional" and value == ""):
        why = url_problem(value)
        if why is not None:
            raise PolicyError(source, f.name, why)
    if f.metadata.get("database") and value and not value.startswith(DATABASE_URL_FORMS):
        # never the value: it may hold a password. Said before anything is made (a
        # scheme SQLAlchemy knows without its driver, mysql://, was an unexpected error
        # after the data directory was)
        raise PolicyError(
            source,
            f.name,
            "the URL is not one this eport can use: write "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE, or leave it unset for SQLite",
        )
    if f.metadata.get("database") and value:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except (ArgumentError, ValueError):
            # a port that is no number was an unexpected error (ValueError) after the data
            # directory was made (data probe 24); never the value: it holds a password
            raise PolicyError(
                source,
                f.name,
                "the URL cannot be read (is its port a number?): write "
                "postgresql://USER:PASSWORD@HOST:PORT/DATABASE, or leave it unset for SQLite",
            ) from None
    if f.metadata.get("directory") and not Path(value).is_dir():
        said = "does not exist" if not Path(value).exists() else "is not a directory"
        raise PolicyError(source, f.name, f"{value} {said}")
    if f.metadata.get("networks"):
        for entry in value:
            why = proxy_problem(entry)
            if why is not None:
                raise PolicyError(source, f.name, why)


def url_problem(url: str) -> str | None:
    """Why ``url`` is not an absolute http(s) URL with a host and no query or fragment
    (what certificates, the issuer and audiences are built from), or None."""
    from urllib.parse import urlsplit

    if not url:
        return "empty: an absolute http(s) URL is required (unset: the default)"
    if url != url.strip() or any(c.isspace() or ord(c) < 0x21 for c in url):
        return f"{url!r} holds a blank or a control character"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    if port == 0:
        return f"{url!r} names port 0, which no client can reach"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} is not an absolute http:// or https:// URL"
    if not parts.hostname:
        return f"{url!r} names no host"
    if parts.username is not None or parts.password is not None:
        return f"{url!r} holds a user name or password"
    if "?" in url or "#" in url:
        return f"{url!r} has a query or a fragment"
    return None


def proxy_problem(entry: str) -> str | None:
    """Why ``entry`` cannot be a trusted proxy (an address or a CIDR network, read as
    :class:`authsvc.proxy.TrustedProxies` reads it), or None. A network holding every
    address (``0.0.0.0/0``, ``::/0``) is refused: anyone could then forward a client
    certificate header and be taken for its holder (certificates are public)."""
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError as exc:
        return f"a trusted proxy is not an address or a network: {exc}"
    mapped = ipaddress.IPv6Network("::ffff:0:0/96")  # every IPv4 address, mapped
    if network.prefixlen == 0 or (
        isinstance(network, ipaddress.IPv6Network) and mapped.subnet_of(network)
    ):
        return (
            f"{entry!r} trusts every address: anyone could send a client-certificate "
            "header and log in as its holder; name the proxies' own addresses"
        )
    return None


def _coerce(source: str, key: str, typ: Any, raw: Any) -> Any:
    typ = str(typ)
    try:
        if typ == "Path":
            if not str(raw).strip():
                raise ValueError("empty path")
            return Path(raw)
        if typ == "bool":
            if isinstance(raw, bool):
                return raw
            word = str(raw).strip().lower()
            if word in TRUE_WORDS or word in FALSE_WORDS:
                return word in TRUE_WORDS
            raise ValueError(f"true or false (1/0, yes/no, on/off), not {str(raw)[:40]!r}")
        if typ in ("int", "float") and isinstance(raw, bool):
            raise ValueError(f"a number, not {raw}")
        if typ == "int":
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(f"a whole number, not {raw}")
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
