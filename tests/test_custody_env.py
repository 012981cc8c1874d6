"""A member id may hold ``-`` (policies/members.toml); the passphrase variables named
after it must be ones a POSIX shell can ``export``: ``-`` becomes ``_``. The name with
the ``-`` kept (settable only through ``env``) is still read."""

from __future__ import annotations

import subprocess

import pytest

from cli.custody import _member_secret, member_env


def test_member_env_names_can_be_exported_by_a_shell() -> None:
    name = member_env("EPORT_SHARE_PASSPHRASE_", "foreign-exchange")
    assert name == "EPORT_SHARE_PASSPHRASE_FOREIGN_EXCHANGE"
    done = subprocess.run(
        ["sh", "-c", f'export {name}=x && printf %s "${name}"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "x"


def test_both_spellings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = "EPORT_CUSTODIAN_PASSPHRASE_"
    monkeypatch.delenv(prefix + "FOREIGN_EXCHANGE", raising=False)
    monkeypatch.delenv(prefix + "FOREIGN-EXCHANGE", raising=False)
    assert _member_secret(prefix, "foreign-exchange") is None
    monkeypatch.setenv(prefix + "FOREIGN-EXCHANGE", "kept dash")
    assert _member_secret(prefix, "foreign-exchange") == "kept dash"
    monkeypatch.setenv(prefix + "FOREIGN_EXCHANGE", "underscore first")
    assert _member_secret(prefix, "foreign-exchange") == "underscore first"
    monkeypatch.setenv(prefix + "CUSTOMS", "plain")
    assert _member_secret(prefix, "customs") == "plain"
