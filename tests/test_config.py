"""Settings of the two apps: TOML file, environment and overrides, validated at load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from authsvc.config import AuthConfig
from ca.config import CAConfig
from ca.errors import PolicyError


def test_sources_and_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "eport.toml"
    toml.write_text('[ca]\ndata_dir = "/srv/ca"\n[auth]\nsession_seconds = 120\n')
    env = {"EPORT_CONFIG": str(toml), "EPORT_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"}
    ca = CAConfig.load(environ=env)
    assert ca.data_dir == Path("/srv/ca") and ca.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    auth = AuthConfig.load(environ={**env, "EPORT_DATABASE_URL": "sqlite:///ca.db"})
    assert auth.session_seconds == 120 and auth.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert auth.ca_database_url == "sqlite:///ca.db"  # the CA's database, read for status
    # The token service's own variable wins over the shared one; overrides win over both.
    env["EPORT_AUTH_TRUSTED_PROXIES"] = "192.0.2.1"
    assert AuthConfig.load(environ=env).trusted_proxies == ("192.0.2.1",)
    assert AuthConfig.load({"session_seconds": 5}, environ=env).session_seconds == 5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nope": 1}, "nope: unknown setting"),
        ({"status_mode": "push"}, "status_mode: EPORT_AUTH_STATUS_MODE is local or ocsp"),
        ({"session_seconds": "ten"}, "session_seconds: expected int"),
    ],
)
def test_bad_settings_name_the_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        AuthConfig.load(values, environ={})


def test_a_bad_file_setting_names_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "eport.toml"
    toml.write_text('[ca]\nclock_skew_seconds = "soon"\n')
    with pytest.raises(PolicyError, match=f"{toml}: clock_skew_seconds: expected int"):
        CAConfig.load(environ={"EPORT_CONFIG": str(toml)})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read: No such file or directory"),
        (b"[ca\n", "not valid TOML"),
        (b"\xff\xfe[ca]\n", "not UTF-8: byte 0"),
    ],
)
def test_a_config_file_that_cannot_be_read_names_it(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    """EPORT_CONFIG naming a missing file, or one that is not TOML, was a bare
    FileNotFoundError or TOMLDecodeError ('unexpected error' in eport serve, no file
    named); it is a PolicyError naming the file, as a bad setting in it is."""
    toml = tmp_path / "eport.toml"
    if content is not None:
        toml.write_bytes(content)
    for load in (CAConfig.load, AuthConfig.load):
        with pytest.raises(
            PolicyError, match=f"{re.escape(str(toml))}: configuration file .*{message}"
        ):
            load(environ={"EPORT_CONFIG": str(toml)})


@pytest.mark.parametrize("rate", ["2", "-1", "nan"])
def test_a_lint_sample_rate_outside_0_to_1_is_refused(rate: str) -> None:
    """EPORT_LINT_SAMPLE_RATE=2 linted every certificate and -1 none, without a word (the
    CA compared rate >= 1.0); a share outside 0..1 is refused, naming the variable."""
    with pytest.raises(PolicyError, match="lint_sample_rate: a share from 0 to 1"):
        CAConfig.load(environ={"EPORT_LINT_SAMPLE_RATE": rate})
    assert CAConfig.load(environ={"EPORT_LINT_SAMPLE_RATE": "0.01"}).lint_sample_rate == 0.01


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    """EPORT_CODE_TTL_SECONDS=abc was refused as "configuration: code_ttl_seconds:
    expected int" (or under the EPORT_CONFIG file's name when one was set, though the
    value was not in it); the line names the variable."""
    toml = tmp_path / "eport.toml"
    toml.write_text("[ca]\n[auth]\n")
    for env in ({}, {"EPORT_CONFIG": str(toml)}):
        bad = {**env, "EPORT_CODE_TTL_SECONDS": "abc", "EPORT_AUTH_SESSION_SECONDS": "x"}
        with pytest.raises(PolicyError, match=r"^EPORT_CODE_TTL_SECONDS: code_ttl_seconds: "):
            CAConfig.load(environ=bad)
        with pytest.raises(PolicyError, match=r"^EPORT_AUTH_SESSION_SECONDS: session_seconds: "):
            AuthConfig.load(environ=bad)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("EPORT_PUBLIC_BASE_URL", "", "public_base_url: empty"),
        ("EPORT_PUBLIC_BASE_URL", "ftp://eport.example", "not an absolute http"),
        ("EPORT_PUBLIC_BASE_URL", "https://u:p@eport.example", "user name or password"),
        ("EPORT_PUBLIC_BASE_URL", "https://eport.example:99999", "not a URL"),
        ("EPORT_AUDIT_TOKEN_AUDIENCE", "audit", "not an absolute http"),
        ("EPORT_CRL_REFRESH_SECONDS", "0.0001", "0 (only on fetch) or from 0.1 to 86400"),
        ("EPORT_CRL_REFRESH_SECONDS", "nan", "finite"),
        ("EPORT_REQUEST_MAX_LIFETIME_SECONDS", "-1", "from 1 to 300 seconds"),
        ("EPORT_MAX_BODY_BYTES", "0", "from 1024 to"),
        ("EPORT_DEV", "maybe", "true or false"),
        ("EPORT_TRUSTED_PROXIES", "10.0.0.0/8, 0.0.0.0/0", "trusts every address"),
        ("EPORT_TRUSTED_PROXIES", "::ffff:0:0/96", "trusts every address"),
        ("EPORT_PUBLIC_BASE_URL", "http://ca.example:0", "port 0"),
        ("EPORT_DB_POOL_SIZE", "0", "from 1 to 1000 connections, not 0"),
        ("EPORT_DB_POOL_SIZE", "2.5", "expected int"),
        ("EPORT_DB_MAX_OVERFLOW", "-1", "from 0 to 1000 connections, not -1"),
        ("EPORT_DB_POOL_TIMEOUT_SECONDS", "0", "from 0.1 to 600 seconds, not 0"),
        ("EPORT_DB_POOL_TIMEOUT_SECONDS", "inf", "finite"),
    ],
)
def test_a_ca_setting_out_of_its_range_names_the_variable(
    variable: str, value: str, message: str
) -> None:
    """An empty or non-http(s) base URL issued certificates without (or with useless)
    status pointers; negative, zero, NaN, infinite or huge numbers were taken as they
    were; ``maybe`` was false; 0.0.0.0/0 trusted everyone's forwarded certificate."""
    with pytest.raises(PolicyError, match=f"^{variable}: .*{re.escape(message)}"):
        CAConfig.load(environ={variable: value})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("EPORT_AUTH_ACCESS_TOKEN_SECONDS", "0", "from 1 to"),
        ("EPORT_AUTH_SESSION_SECONDS", "-1", "from 1 to"),
        ("EPORT_AUTH_LEEWAY_SECONDS", "-30", "from 0 to 600 seconds"),
        ("EPORT_AUTH_STATUS_TTL_SECONDS", "inf", "finite"),
        ("EPORT_AUTH_SWEEP_SECONDS", "nan", "finite"),
        ("EPORT_AUTH_KEY_ROTATION_DAYS", "-1", "from 1 to"),
        ("EPORT_AUTH_MAX_BODY_BYTES", "-1", "bytes"),
        ("EPORT_AUTH_DEV", "maybe", "true or false"),
        ("EPORT_AUTH_PUBLIC_BASE_URL", "auth.example", "not an absolute http"),
        ("EPORT_AUTH_TRUSTED_PROXIES", "::/0", "trusts every address"),
        ("EPORT_AUTH_POLICIES_DIR", "/nonexistent", "does not exist"),
        ("EPORT_AUTH_DB_POOL_SIZE", "0", "from 1 to 1000 connections"),
        ("EPORT_AUTH_DB_MAX_OVERFLOW", "1001", "from 0 to 1000 connections"),
        ("EPORT_AUTH_DB_POOL_TIMEOUT_SECONDS", "-1", "from 0.1 to 600 seconds"),
        # the CA's variable, when the token service is given none of its own
        ("EPORT_DB_MAX_OVERFLOW", "-1", "from 0 to 1000 connections"),
    ],
)
def test_a_token_service_setting_out_of_its_range_names_the_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(PolicyError, match=f"^{variable}: .*{re.escape(message)}"):
        AuthConfig.load(environ={variable: value})


def test_ranges_hold_for_file_and_override_values_too(tmp_path: Path) -> None:
    toml = tmp_path / "eport.toml"
    toml.write_text("[ca]\ncode_ttl_seconds = -5\n")
    with pytest.raises(PolicyError, match=f"^{re.escape(str(toml))}: code_ttl_seconds: from 60"):
        CAConfig.load(environ={"EPORT_CONFIG": str(toml)})
    toml.write_text("[ca]\nclock_skew_seconds = true\n")
    with pytest.raises(PolicyError, match="clock_skew_seconds: expected int: a number"):
        CAConfig.load(environ={"EPORT_CONFIG": str(toml)})
    with pytest.raises(PolicyError, match=r"^configuration: session_seconds: from 1 to"):
        AuthConfig.load({"session_seconds": 0}, environ={})
    # the edges, and the documented zeros
    assert CAConfig.load({"crl_refresh_seconds": 0}, environ={}).crl_refresh_seconds == 0
    assert AuthConfig.load({"sweep_seconds": 0}, environ={}).sweep_seconds == 0
    assert CAConfig.load(environ={"EPORT_CODE_TTL_SECONDS": "60"}).code_ttl_seconds == 60


def test_pool_bounds_default_to_sqlalchemys_and_are_shared_unless_given(tmp_path: Path) -> None:
    """EPORT_DB_POOL_SIZE, EPORT_DB_MAX_OVERFLOW and EPORT_DB_POOL_TIMEOUT_SECONDS bound
    the CA's PostgreSQL pools and, unless EPORT_AUTH_DB_* say otherwise, the token
    service's; unset, each pool is what it was (SQLAlchemy's QueuePool defaults)."""
    import inspect

    from sqlalchemy.pool import QueuePool

    from ca.config import PoolBounds

    given = inspect.signature(QueuePool.__init__).parameters
    sqlalchemys = PoolBounds(
        given["pool_size"].default, given["max_overflow"].default, given["timeout"].default
    )
    assert CAConfig.load(environ={}).pool_bounds == sqlalchemys == PoolBounds()
    assert AuthConfig.load(environ={}).pool_bounds == sqlalchemys
    env = {
        "EPORT_DB_POOL_SIZE": "1",
        "EPORT_DB_MAX_OVERFLOW": "0",
        "EPORT_DB_POOL_TIMEOUT_SECONDS": "2.5",
    }
    assert CAConfig.load(environ=env).pool_bounds == PoolBounds(1, 0, 2.5)
    assert AuthConfig.load(environ=env).pool_bounds == PoolBounds(1, 0, 2.5)
    env["EPORT_AUTH_DB_POOL_SIZE"] = "3"
    assert AuthConfig.load(environ=env).pool_bounds == PoolBounds(3, 0, 2.5)
    assert CAConfig.load(environ=env).pool_bounds == PoolBounds(1, 0, 2.5)
    toml = tmp_path / "eport.toml"
    toml.write_text("[ca]\ndb_pool_size = 2\n[auth]\ndb_max_overflow = 4\n")
    file_only = {"EPORT_CONFIG": str(toml)}
    assert CAConfig.load(environ=file_only).pool_bounds == PoolBounds(2, 10, 30.0)
    assert AuthConfig.load(environ=file_only).pool_bounds == PoolBounds(5, 4, 30.0)
    toml.write_text("[ca]\ndb_max_overflow = -1\n")  # SQLAlchemy's "no bound": refused
    with pytest.raises(PolicyError, match=f"^{re.escape(str(toml))}: db_max_overflow: from 0"):
        CAConfig.load(environ=file_only)


@pytest.mark.parametrize(("word", "value"), [("1", True), ("Yes", True), ("off", False)])
def test_booleans_take_the_documented_spellings(word: str, value: bool) -> None:
    assert CAConfig.load(environ={"EPORT_DEV": word}).dev is value
    assert AuthConfig.load(environ={"EPORT_AUTH_DEV": word}).dev is value


def test_an_unknown_config_section_is_refused(tmp_path: Path) -> None:
    """A ``[cA]`` table was ignored, its settings with it."""
    toml = tmp_path / "eport.toml"
    toml.write_text('[cA]\npublic_base_url = "https://ca.example"\n')
    for load in (CAConfig.load, AuthConfig.load):
        with pytest.raises(
            PolicyError, match=r"unknown section \[cA\] \(known: \[auth\], \[ca\]\)"
        ):
            load(environ={"EPORT_CONFIG": str(toml)})


def test_a_configured_base_url_beats_the_servers_default(tmp_path: Path) -> None:
    """``eport serve`` gives http://HOST:PORT as the base URL when EPORT_PUBLIC_BASE_URL
    is unset; EPORT_AUTH_PUBLIC_BASE_URL (or the file's) was replaced by it."""
    default = {"public_base_url": "http://127.0.0.1:8000"}
    env = {"EPORT_AUTH_PUBLIC_BASE_URL": "https://auth.example.org"}
    assert AuthConfig.load(default, environ=env).issuer == "https://auth.example.org/auth"
    toml = tmp_path / "eport.toml"
    toml.write_text('[ca]\npublic_base_url = "https://ca.example"\n')
    cfg = CAConfig.load(default, environ={"EPORT_CONFIG": str(toml)})
    assert cfg.public_base_url == "https://ca.example"
    assert AuthConfig.load(default, environ={}).issuer == "http://127.0.0.1:8000/auth"


def test_secrets_come_from_files_named_by_FILE_variables(tmp_path: Path) -> None:
    """Docker secrets and systemd credentials hand a secret over as a file: each secret
    setting is also read from the file its variable with ``_FILE`` names (one trailing
    newline dropped), so it need not sit in the environment of every process."""
    (tmp_path / "ca-pass").write_text("ca passphrase from a file\n")
    (tmp_path / "auth-pass").write_text("auth passphrase\r\n")
    (tmp_path / "proxy").write_text("p" * 32)
    (tmp_path / "db").write_text("postgresql://eport:s3cret@db.example:5432/eport\n")
    env = {
        "EPORT_CA_KEY_PASSPHRASE_FILE": str(tmp_path / "ca-pass"),
        "EPORT_AUTH_KEY_PASSPHRASE_FILE": str(tmp_path / "auth-pass"),
        "EPORT_AUTH_PROXY_SECRET_FILE": str(tmp_path / "proxy"),
        "EPORT_DATABASE_URL_FILE": str(tmp_path / "db"),
    }
    ca = CAConfig.load(environ=env)
    assert ca.ca_key_passphrase == "ca passphrase from a file"
    assert ca.database_url == "postgresql://eport:s3cret@db.example:5432/eport"
    auth = AuthConfig.load(environ=env)
    assert auth.key_passphrase == "auth passphrase" and auth.proxy_secret == "p" * 32
    # the shared URL is the CA's database, read for status; the token service's own is unset
    assert auth.ca_database_url == ca.database_url and auth.database_url == ""
    # no secret in the settings' repr, which a traceback or a log line may print
    for cfg in (ca, auth):
        assert "s3cret" not in repr(cfg) and "passphrase" not in repr(cfg).replace(
            "_passphrase", ""
        )
    # a setting that is no secret has no _FILE form: it is not read from one
    (tmp_path / "url").write_text("https://elsewhere.example\n")
    env["EPORT_PUBLIC_BASE_URL_FILE"] = str(tmp_path / "url")
    assert CAConfig.load(environ=env).public_base_url == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("content", "extra", "said"),
    [
        (None, {}, "EPORT_CA_KEY_PASSPHRASE_FILE: {f}: cannot be read: No such file"),
        ("", {}, "EPORT_CA_KEY_PASSPHRASE_FILE: {f}: is empty"),
        ("\n", {}, "EPORT_CA_KEY_PASSPHRASE_FILE: {f}: is empty"),
        (b"\xff\xfe", {}, "EPORT_CA_KEY_PASSPHRASE_FILE: {f}: is not UTF-8 text"),
        (
            "x",
            {"EPORT_CA_KEY_PASSPHRASE": "y"},
            "EPORT_CA_KEY_PASSPHRASE and EPORT_CA_KEY_PASSPHRASE_FILE: both set",
        ),
    ],
)
def test_a_secret_file_that_cannot_be_used_names_the_variable(
    tmp_path: Path, content: str | bytes | None, extra: dict[str, str], said: str
) -> None:
    f = tmp_path / "secret"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    env = {"EPORT_CA_KEY_PASSPHRASE_FILE": str(f), **extra}
    with pytest.raises(PolicyError) as caught:
        CAConfig.load(environ=env)
    assert str(caught.value).startswith(said.format(f=f)), str(caught.value)


def test_a_short_proxy_secret_from_a_file_names_the_file_variable(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("short\n")
    with pytest.raises(PolicyError) as caught:
        AuthConfig.load(environ={"EPORT_AUTH_PROXY_SECRET_FILE": str(tmp_path / "s")})
    assert str(caught.value).startswith("EPORT_AUTH_PROXY_SECRET_FILE: proxy_secret: at least 32")
