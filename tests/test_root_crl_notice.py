"""The root CRL is signed only at quorum ceremonies and lives 365 days: a real server
says when it ends, and warns (health, log) once that is 30 days away or past, instead
of serving an expired root CRL in silence."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import start_server, stop

STAMP = "%Y-%m-%dT%H:%M:%SZ"


def _resign_root_crl(data_dir: Path, next_update: datetime.datetime) -> None:
    """What a ROOT-CRL ceremony would write, with the nextUpdate chosen (the development
    CA keeps its root key under a development passphrase)."""
    from ca.crl import build_crl
    from ca.devinit import read_passphrases
    from ca.signer import SoftwareSigner

    d = data_dir / "ca"
    key = serialization.load_pem_private_key(
        (d / "root.key").read_bytes(),
        read_passphrases(data_dir)["root_key_passphrase"].encode(),
    )
    root = x509.load_pem_x509_certificate((d / "root.crt").read_bytes())
    this_update = next_update - datetime.timedelta(days=365)
    der = build_crl(root, SoftwareSigner(key), [], 2, this_update, next_update)  # type: ignore[arg-type]
    (d / "root.crl").write_bytes(der)


@pytest.mark.parametrize("days_left", [10, -3])
@pytest.mark.slow
def test_a_root_crl_near_or_past_its_next_update_is_warned_of(
    tmp_path: Path, days_left: int
) -> None:
    data = tmp_path / "data"
    srv, proc = start_server(data, workers=1)
    try:
        health = requests.get(srv.url + "/ca/v1/health", timeout=10).json()
        due = datetime.datetime.strptime(health["root_crl_next_update"], STAMP).replace(
            tzinfo=datetime.UTC
        )
        left = due - datetime.datetime.now(datetime.UTC)
        assert datetime.timedelta(days=364) < left <= datetime.timedelta(days=365)
        assert "warnings" not in health
    finally:
        stop(proc)
    next_update = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    next_update += datetime.timedelta(days=days_left)
    _resign_root_crl(data, next_update)
    srv, proc = start_server(data, workers=1)
    try:
        health = requests.get(srv.url + "/ca/v1/health", timeout=10).json()
        state = "expires" if days_left > 0 else "expired"
        notice = (
            f"the root CRL {state} at {next_update:{STAMP}} (nextUpdate); M custodians sign "
            "a new one with a ROOT-CRL ceremony (eport ca ceremony start ROOT-CRL)"
        )
        assert health["root_crl_next_update"] == f"{next_update:{STAMP}}"
        assert health["warnings"] == [notice]
        assert health["status"] == "ok"  # the server still serves what it has
        served = requests.get(srv.url + "/crl/root.crl", timeout=10)
        assert x509.load_der_x509_crl(served.content).next_update_utc == next_update
    finally:
        stop(proc)
    assert srv.log.read_text().count("The root CRL " + notice[len("the root CRL ") :]) == 1
