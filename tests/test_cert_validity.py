"""A certificate's validity period bounds what it can do, on a real server: an expired or
not yet valid certificate is refused in words its holder understands (renew, login), and
a session (and every token from it) ends at the login certificate's notAfter."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import EPORT, Server, start_server, stop
from tests.helpers import cert_of, creds, enroll_enterprise

STAMP = "%Y-%m-%dT%H:%M:%SZ"
LONG = str(1000 * 86400)  # longer than any end-entity profile's validity


@pytest.fixture(scope="module")
def long_sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A dev server whose sessions and access tokens would outlive any certificate."""
    root = tmp_path_factory.mktemp("validity")
    srv, proc = start_server(
        root / "data",
        workers=1,
        extra_env={
            "EPORT_AUTH_SESSION_SECONDS": LONG,
            "EPORT_AUTH_ACCESS_TOKEN_SECONDS": LONG,
        },
    )
    try:
        yield srv
    finally:
        stop(proc)


def _claims(token: str) -> dict[str, object]:
    body = token.split(".")[1]
    out = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert isinstance(out, dict)
    return out


def test_session_and_tokens_end_with_the_certificate(long_sessions: Server, tmp_path: Path) -> None:
    srv = long_sessions
    ent = enroll_enterprise(srv, tmp_path, "Validity Trading Co., Ltd.")
    not_after = cert_of(ent).not_valid_after_utc
    login = json.loads(srv.eport("login", *creds(ent), "--json", HOME=str(tmp_path)).stdout)
    assert login["session"]["expires_at"] == f"{not_after:{STAMP}}"
    who = json.loads(srv.eport("whoami", "--json", HOME=str(tmp_path)).stdout)
    assert who["expires_at"] == f"{not_after:{STAMP}}"
    res = srv.eport("token", "--service", "portal", "--json", HOME=str(tmp_path))
    doc = json.loads(res.stdout)
    claims = _claims(doc["access_token"])
    assert claims["exp"] == int(not_after.timestamp())
    assert doc["expires_in"] == claims["exp"] - claims["iat"]  # type: ignore[operator]


def _certificate_at(
    srv: Server, ent: Path, out: Path, when: datetime.datetime
) -> tuple[Path, x509.Certificate]:
    """A certificate for a new key, issued by the server's enterprise CA as if at
    ``when``; its key encrypted with the passphrase the CLI is given."""
    from ca import hierarchy
    from ca.devinit import read_passphrases
    from ca.issuance import CertificateFactory
    from ca.policy import load_policies

    passphrase = read_passphrases(srv.data_dir)["ca_key_passphrase"].encode()
    h = hierarchy.load(srv.data_dir, passphrase)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = CertificateFactory().issue(
        load_policies(Path(__file__).resolve().parent.parent / "policies").profile("enterprise"),
        h.issuers["enterprise"],
        key.public_key(),
        {"uscc": "91350100M000100Y43", "legal_name": "Validity Trading Co., Ltd."},
        when,
    )
    out.mkdir()
    (out / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(srv.env()["EPORT_PASSPHRASE"].encode()),
        )
    )
    (out / "key.pem").chmod(0o600)  # as eport writes a key: a looser one is warned of
    shutil.copy(ent / "chain.pem", out / "chain.pem")
    return out, cert


def test_expired_and_future_certificates_are_refused_by_name(
    long_sessions: Server, tmp_path: Path
) -> None:
    srv = long_sessions
    ent = enroll_enterprise(srv, tmp_path, "Validity Trading Co., Ltd.")
    now = datetime.datetime.now(datetime.UTC)
    old, expired = _certificate_at(srv, ent, tmp_path / "old", now - datetime.timedelta(days=800))
    for args in (("renew", *creds(old)), ("login", *creds(old))):
        res = srv.eport(*args, check=False, HOME=str(tmp_path))
        assert res.returncode == 1 and res.stdout == "", res.stderr
        line = res.stderr.strip()
        assert len(line.splitlines()) == 1 and "<Certificate" not in line
        assert f"it expired at {expired.not_valid_after_utc:{STAMP}} (server time 20" in line
        assert "signs nothing, and cannot be renewed" in line and "ra new-code APP_ID" in line
    assert not (tmp_path / f"renewed-{expired.serial_number:x}").exists()
    soon, future = _certificate_at(srv, ent, tmp_path / "soon", now + datetime.timedelta(days=1))
    res = srv.eport("login", *creds(soon), check=False, HOME=str(tmp_path))
    assert res.returncode == 1
    assert f"it is not valid before {future.not_valid_before_utc:{STAMP}}" in res.stderr


def test_invalidity_dates_need_their_offset_and_are_read_in_utc(
    long_sessions: Server, tmp_path: Path
) -> None:
    """RFC 5280 §5.3.2 records an instant: a bare date or local time is refused on the
    command line (exit 2, nothing sent), an offset is honoured (TZ of the CLI does not
    matter), and a future instant, or one before the certificate's notBefore (a wrong
    year), is refused by the server; none of these changes the certificate's status."""
    srv = long_sessions
    ent = enroll_enterprise(srv, tmp_path, "Invalidity Trading Co., Ltd.")
    not_before = cert_of(ent).not_valid_before_utc
    revoke = ("revoke", *creds(ent), "--reason", "keyCompromise", "--json")
    for bad in ("2026-11-20", "2026-11-20T08:00:00", "yesterday"):
        res = srv.eport(*revoke, "--invalidity-date", bad, check=False, TZ="Asia/Shanghai")
        assert res.returncode == 2 and "--invalidity-date" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2)
    ahead = future.astimezone(datetime.timezone(datetime.timedelta(hours=8)))
    res = srv.eport(*revoke, "--invalidity-date", f"{ahead:%Y-%m-%dT%H:%M:%S%z}", check=False)
    assert res.returncode == 1 and "cannot be in the future" in res.stderr
    typo = not_before - datetime.timedelta(days=365)  # a wrong year
    res = srv.eport(*revoke, "--invalidity-date", f"{typo:{STAMP}}", check=False)
    assert res.returncode == 1 and res.stdout == "", res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert (
        f"the invalidity date {typo:{STAMP}} cannot be before the certificate's notBefore, "
        f"{not_before:{STAMP}}"
    ) in res.stderr
    status = json.loads(srv.eport("status", "--cert", str(ent / "cert.pem"), "--json").stdout)
    assert status["status"] == "good"
    # The certificate's first second is a valid invalidity date, given in +08:00.
    east = not_before.astimezone(datetime.timezone(datetime.timedelta(hours=8)))
    doc = json.loads(
        srv.eport(
            *revoke, "--invalidity-date", f"{east:%Y-%m-%dT%H:%M:%S%z}", TZ="Asia/Shanghai"
        ).stdout
    )
    assert doc["status"] == "revoked" and doc["invalidity_date"] == f"{not_before:{STAMP}}"
    crl = x509.load_der_x509_crl(requests.get(f"{srv.url}/crl/enterprise.crl", timeout=10).content)
    entry = crl.get_revoked_certificate_by_serial_number(cert_of(ent).serial_number)
    assert entry is not None
    when = entry.extensions.get_extension_for_class(x509.InvalidityDate).value
    assert when.invalidity_date_utc == not_before


def test_cert_show_and_list_print_utc_and_say_expired(
    long_sessions: Server, tmp_path: Path
) -> None:
    """Times in UTC with Z whatever TZ says; cert show says when a file's certificate is
    outside its validity period."""
    srv = long_sessions
    ent = enroll_enterprise(srv, tmp_path, "Clock Trading Co., Ltd.")
    now = datetime.datetime.now(datetime.UTC)
    _, old = _certificate_at(srv, ent, tmp_path / "old", now - datetime.timedelta(days=800))
    _, soon = _certificate_at(srv, ent, tmp_path / "soon", now + datetime.timedelta(days=1))
    shanghai = {"TZ": "Asia/Shanghai"}
    for d, c, mark in (
        (ent, cert_of(ent), ""),
        (tmp_path / "old", old, "  (expired)"),
        (tmp_path / "soon", soon, "  (not yet valid)"),
    ):
        out = srv.eport("cert", "show", str(d / "cert.pem"), **shanghai).stdout
        valid = f"{c.not_valid_before_utc:{STAMP}} → {c.not_valid_after_utc:{STAMP}}{mark}"
        assert f"Valid:       {valid}\n" in out
    uscc = cert_of(ent).subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_IDENTIFIER)
    code = str(uscc[0].value).removeprefix("NTRCN-")
    listing = srv.eport("cert", "list", "--uscc", code, *creds(ent), **shanghai).stdout
    assert f"{cert_of(ent).not_valid_after_utc:{STAMP}}  " in listing


def test_cert_show_marks_what_a_certificate_lacks(tmp_path: Path) -> None:
    """A certificate with no key usage extension (a partner's, say) showed 'Key usage:'
    followed by nothing, where the lines below it say '-' for an extension it lacks."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "No Extensions")])
    now = datetime.datetime.now(datetime.UTC)
    cert = x509.CertificateBuilder(
        name, name, key.public_key(), 1, now, now + datetime.timedelta(days=1)
    ).sign(key, hashes.SHA256())
    path = tmp_path / "bare.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    res = subprocess.run([EPORT, "cert", "show", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    shown = dict(line.split(":", 1) for line in res.stdout.splitlines())
    for field in ("Key usage", "Ext. usage", "Policies"):
        assert shown[field].strip() == "-", res.stdout
