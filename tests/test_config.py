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
        ({"status_mode": "push"}, "status_mode: local or ocsp"),
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
