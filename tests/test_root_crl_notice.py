"""The root CRL is signed only at quorum ceremonies and lives 365 days: a real server
says when it ends, and warns (health, log) once that is 30 days away or past, instead
of serving an expired root CRL in silence. A development CA, which has no custodians,
signs a new one itself when it starts within those 30 days (ca/devinit.py)."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.conftest import start_server, stop
from tests.helpers import health_of, unsealed_by_passphrase

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


AHEAD = 366
"""A root CRL whose nextUpdate is this many days off was signed a day in the future (its
thisUpdate is 365 days before): the clock ran ahead when it was signed, then corrected."""


@pytest.mark.parametrize("days_left", [10, -3, AHEAD])
@pytest.mark.slow
def test_a_root_crl_near_or_past_its_next_update_is_warned_of(
    tmp_path: Path, days_left: int
) -> None:
    data = tmp_path / "data"
    srv, proc = start_server(data, workers=1)
    try:
        health = health_of(srv.url)
        due = datetime.datetime.strptime(str(health["root_crl_next_update"]), STAMP).replace(
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
    srv, proc = start_server(
        data, workers=1, dev=False, extra_env=unsealed_by_passphrase(data)
    )  # fmt: skip
    try:
        health = health_of(srv.url)
        state = "expires" if days_left > 0 else "expired"
        state += f" at {next_update:{STAMP}} (nextUpdate)"
        if days_left == AHEAD:
            signed = next_update - datetime.timedelta(days=365)
            state = f"is not valid until {signed:{STAMP}} (thisUpdate, in the future)"
        notice = (
            f"the root CRL {state}; M custodians sign "
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


@pytest.mark.parametrize("days_left", [10, -3, AHEAD])
@pytest.mark.slow
def test_a_development_ca_renews_its_root_crl_when_it_starts_near_or_past_its_end(
    tmp_path: Path, days_left: int
) -> None:
    """Nothing renewed a development CA's root CRL (it has no custodians): a year after
    its first start every chain check against the root CRL failed. A start within 30 days
    of its nextUpdate, or past it, signs the next one (number above the last), which
    openssl verifies under the root; a start after that signs none."""
    data = tmp_path / "data"
    srv, proc = start_server(data, workers=1)
    stop(proc)
    next_update = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    next_update += datetime.timedelta(days=days_left)
    _resign_root_crl(data, next_update)  # number 2
    started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    srv, proc = start_server(data, workers=1)
    try:
        health = health_of(srv.url)
        assert "warnings" not in health, health
        served = x509.load_der_x509_crl(requests.get(srv.url + "/crl/root.crl", timeout=10).content)
    finally:
        stop(proc)
    number = served.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number >= int(started.timestamp()) * 1000  # above 2, and by the clock (ms)
    assert served.last_update_utc >= started
    assert served.next_update_utc == served.last_update_utc + datetime.timedelta(days=365)
    assert health["root_crl_next_update"] == f"{served.next_update_utc:{STAMP}}"
    root = data / "ca" / "root.crt"
    assert (data / "ca" / "root.crl").read_bytes() == served.public_bytes(
        serialization.Encoding.DER
    )
    checked = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(data / "ca" / "root.crl"),
         "-CAfile", str(root), "-noout"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0 and "verify OK" in checked.stderr + checked.stdout, checked
    said = srv.log.read_text()
    why = f"it {'ended' if days_left < 0 else 'was to end'} at {next_update:{STAMP}}"
    if days_left == AHEAD:
        why = (
            f"its thisUpdate {next_update - datetime.timedelta(days=365):{STAMP}} was in the future"
        )
    assert (
        f"Renewed the development CA's root CRL ({why}): "
        f"number {number}, next update {served.next_update_utc:{STAMP}}"
    ) in said, said

    again, proc = start_server(data, workers=1)
    try:
        assert health_of(again.url)["root_crl_next_update"] == health["root_crl_next_update"]
    finally:
        stop(proc)
    assert "Renewed" not in again.log.read_text()


def test_a_development_server_running_into_the_notice_says_to_restart(tmp_path: Path) -> None:
    """A development server that runs into the 30 days is told to restart (its start
    renews the root CRL), never to hold a ceremony it has no custodians for."""
    from ca import hierarchy
    from ca.crl import build_crl
    from ca.keys import KeyType
    from ca.signer import SoftwareSigner

    key = KeyType.P256.generate()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "root")])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    root = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    signed = now - datetime.timedelta(days=40)
    crl = build_crl(root, SoftwareSigner(key), [], 2, signed, now + datetime.timedelta(days=10))
    when = f"{now + datetime.timedelta(days=10):{STAMP}}"
    assert hierarchy.root_crl_notice(crl, now, dev=True) == (
        f"the root CRL expires at {when} (nextUpdate); the development CA signs a new one "
        "when it next starts (restart eport serve --dev)"
    )
    assert "M custodians" in str(hierarchy.root_crl_notice(crl, now))
    assert hierarchy.root_crl_notice(crl, now - datetime.timedelta(days=30), dev=True) is None
    # Signed a day ahead of the clock: not valid yet, so said too, in dev as elsewhere.
    ahead = build_crl(root, SoftwareSigner(key), [], 3, now + datetime.timedelta(days=1),
                      now + datetime.timedelta(days=60))  # fmt: skip
    said = str(hierarchy.root_crl_notice(ahead, now, dev=True))
    assert said.startswith(
        f"the root CRL is not valid until {now + datetime.timedelta(days=1):{STAMP}} (thisUpdate"
    ) and said.endswith("(restart eport serve --dev)"), said
