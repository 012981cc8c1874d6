"""Delegated OCSP responder certificates are renewed on a running server.

* Joint custody (a real ``eport ca init``, a sealed start, unseal by 3 of 5): a sealed
  server refuses ``eport ca renew-responders`` with 503 and changes nothing; unsealed, a
  forced renewal makes new responder keys sealed under the seal KEK, logs each
  certificate in the transparency log, and every worker answers from the new
  responders (``openssl ocsp -VAfile``); the response pre-signed by the old responder is
  still served and still verifies against the old certificate, kept in ``retired/``.
* Passphrase-sealed keys (production without joint custody): a hierarchy whose
  responders expire within the window is renewed by the server itself at start, once
  across its two workers.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import ocsp as xocsp
from sqlalchemy import select

from ca import hierarchy
from ca.config import CAConfig
from ca.db import make_engine, upgrade
from ca.issuance import CertificateFactory
from ca.models import EventRow, LogEntryRow
from ca.policy import load_policies
from tests.conftest import REPO, Server, need, start_server, stop
from tests.test_ca_init import init_ca, start_sealed, unseal
from tests.test_custody_ceremonies import officer_args

RELOAD_CHECK = 1.1


def responder(data: Path, issuer_id: str) -> x509.Certificate:
    path = data / "ca" / "responders" / f"{issuer_id}.crt"
    return x509.load_pem_x509_certificate(path.read_bytes())


def ask(
    srv: Server, issuer: Path, target: list[str], trust: list[str], out: Path, nonce: bool = True
) -> tuple[subprocess.CompletedProcess[str], xocsp.OCSPResponse]:
    """``openssl ocsp`` against the server; the response is kept in ``out``."""
    args = [need("openssl"), "ocsp", "-issuer", str(issuer), *target, "-url", srv.url + "/ocsp"]
    args += [*trust, "-respout", str(out)] + ([] if nonce else ["-no_nonce"])
    res = subprocess.run(args, capture_output=True, text=True, timeout=30)
    return res, xocsp.load_der_ocsp_response(out.read_bytes())


def events(srv: Server, **where: str) -> list[EventRow]:
    engine = make_engine(srv.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(EventRow).filter_by(profile="ocsp-responder", type="certificate.issued")
            ).all()
            logged = set(conn.execute(select(LogEntryRow.event_id)).scalars())
    finally:
        engine.dispose()
    out = [r for r in rows if all(getattr(r, k) == v for k, v in where.items())]
    assert all(r.id in logged for r in out)  # each is an entry of the transparency log
    return out  # type: ignore[return-value]


def renew(srv: Server, out: Path, *extra: str, check: bool = True) -> Any:
    return srv.eport(
        "ca",
        "renew-responders",
        *extra,
        *officer_args(out),
        "--json",
        check=check,
        EPORT_PASSPHRASE="officer passphrase",
    )


@pytest.mark.slow
def test_forced_renewal_on_an_unsealed_custody_server(tmp_path: Path) -> None:
    data, out, _ = init_ca(tmp_path)
    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        d = data / "ca" / "responders"
        ids = sorted(p.stem for p in d.glob("*.crt"))
        before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
        sealed = renew(srv, out, "--force", check=False)
        assert sealed.returncode == 1 and "(HTTP 503)" in sealed.stderr, sealed.stderr
        assert "unsealed" in sealed.stderr and "\n" not in sealed.stderr.strip()
        assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before

        for m in ("customs", "tax", "forex"):
            unseal(srv, out, m, fp)
        issuer = data / "ca" / "issuers" / "agency.crt"
        chain = tmp_path / "chain.pem"
        chain.write_bytes((out / "root.crt").read_bytes() + issuer.read_bytes())
        officer = ["-cert", str(out / "officers" / "customs" / "officer.pem")]
        old = responder(data, "agency")
        res, pre_signed = ask(
            srv, issuer, officer, ["-CAfile", str(chain)], tmp_path / "old.der", nonce=False
        )
        assert "Response verify OK" in res.stderr and ": good" in res.stdout, res
        assert pre_signed.certificates[0].serial_number == old.serial_number
        gen_file = data / "ca" / "generation"
        generation = gen_file.read_text() if gen_file.exists() else ""

        t0 = time.perf_counter()
        doc = json.loads(renew(srv, out, "--force").stdout)
        print(f"\nforced renewal of {len(ids)} responders (CLI): {time.perf_counter() - t0:.2f} s")
        assert sorted(r["issuer"] for r in doc["renewed"]) == ids and doc["skipped"] == {}
        assert gen_file.read_text() != generation
        new = responder(data, "agency")
        renewed = {r["issuer"]: r for r in doc["renewed"]}
        assert renewed["agency"]["serial"] == format(new.serial_number, "x")
        assert renewed["agency"]["previous_serial"] == format(old.serial_number, "x")
        assert new.public_key() != old.public_key()
        new.verify_directly_issued_by(x509.load_pem_x509_certificate(issuer.read_bytes()))
        assert new.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(
            days=89
        )
        # The new keys are sealed like the others; the old certificate is kept.
        for i in ids:
            key = d / f"{i}.key"
            assert key.read_bytes().startswith(b"-----BEGIN EPORT WRAPPED PRIVATE KEY-----")
            assert key.stat().st_mode & 0o077 == 0
        kept = d / "retired" / f"agency-{old.serial_number:x}.crt"
        assert kept.read_bytes() == before["agency.crt"]
        assert not list(d.glob("*.new"))
        # Logged in the transparency log, with who asked and what each one replaces.
        rows = events(srv)
        forced = [r for r in rows if json.loads(r.details).get("trigger") == "forced"]
        assert len(forced) == len(ids)
        assert {json.loads(r.details)["renews"] for r in forced} == {
            r["previous_serial"] for r in doc["renewed"]
        }
        assert all(r.actor.startswith("agency:") for r in forced)

        # Every worker answers fresh requests (a nonce: signed now) from the new
        # responder; openssl trusts exactly the new responder certificate (-VAfile).
        new_file = tmp_path / "new-responder.pem"
        new_file.write_bytes((d / "agency.crt").read_bytes())
        for n in range(4):
            res, resp = ask(
                srv, issuer, officer, ["-VAfile", str(new_file)], tmp_path / f"new{n}.der"
            )
            assert "Response verify OK" in res.stderr and ": good" in res.stdout, res
            assert resp.certificates[0].serial_number == new.serial_number
        # The response pre-signed by the old responder is still served until it is due
        # for re-signing, and still verifies against the old (still valid) certificate.
        res, again = ask(
            srv, issuer, officer, ["-VAfile", str(kept)], tmp_path / "again.der", nonce=False
        )
        assert again.certificates[0].serial_number == old.serial_number
        assert (tmp_path / "again.der").read_bytes() == (tmp_path / "old.der").read_bytes()
        assert "Response verify OK" in res.stderr, res
        res, _ = ask(
            srv, issuer, officer, ["-VAfile", str(new_file)], tmp_path / "x.der", nonce=False
        )
        assert "Response verify OK" not in res.stderr

        # Nothing is due now: an ordinary request renews nothing.
        doc = json.loads(renew(srv, out).stdout)
        assert doc["renewed"] == [] and set(doc["skipped"].values()) == {"not due"}
    finally:
        stop(proc)


def test_expiring_responders_are_renewed_by_the_server_itself(tmp_path: Path) -> None:
    """Passphrase-sealed keys: responders made 70 days ago (20 days left, inside the
    30-day window) are renewed when the server starts, by one of its two workers."""
    data = tmp_path / "data"
    data.mkdir()
    cfg = CAConfig.load({"data_dir": data}, environ={})
    upgrade(cfg.sqlalchemy_url)
    passphrase = "ca keys passphrase"
    hierarchy.create(
        load_policies(REPO / "policies"),
        data,
        root_passphrase=b"root key passphrase",
        ca_passphrase=passphrase.encode(),
        factory=CertificateFactory(),
        now=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=70),
    )
    ids = sorted(p.stem for p in (data / "ca" / "responders").glob("*.crt"))
    old = {i: responder(data, i) for i in ids}
    srv, proc = start_server(
        data,
        dev=False,
        log_dir=tmp_path,
        extra_env={
            "EPORT_CA_KEY_PASSPHRASE": passphrase,
            "EPORT_AUTH_KEY_PASSPHRASE": "token signing keys passphrase",
        },
    )
    try:
        now = datetime.datetime.now(datetime.UTC)
        for i in ids:
            cert = responder(data, i)
            assert cert.serial_number != old[i].serial_number
            assert cert.not_valid_after_utc - now > datetime.timedelta(days=89)
        rows = events(srv, actor="system:responder-renewal")
        assert sorted(r.issuer for r in rows) == ids  # once each, across both workers
        assert {json.loads(r.details)["trigger"] for r in rows} == {"expiring"}
        time.sleep(RELOAD_CHECK)  # the other worker reloads at its next check
        issuer = data / "ca" / "issuers" / "agency.crt"
        new_file = tmp_path / "agency-responder.pem"
        new_file.write_bytes((data / "ca" / "responders" / "agency.crt").read_bytes())
        for n in range(4):
            res, resp = ask(
                srv,
                issuer,
                ["-serial", "0x5eed"],
                ["-VAfile", str(new_file)],
                tmp_path / f"r{n}.der",
            )
            assert "Response verify OK" in res.stderr and ": unknown" in res.stdout, res
            assert resp.certificates[0].serial_number == responder(data, "agency").serial_number
    finally:
        stop(proc)


def test_a_renewal_cut_short_is_settled_at_start(tmp_path: Path) -> None:
    from ca.responders import settle

    d = tmp_path / "ca" / "responders"
    d.mkdir(parents=True)
    for name in ("a.crt", "a.key", "b.crt", "b.key", "c.crt", "c.key"):
        (d / name).write_text("old " + name)
    (d / "a.crt.new").write_text("new a.crt")  # its key was already moved into place
    (d / "b.crt.new").write_text("new b.crt")  # nothing moved yet
    (d / "b.key.new").write_text("new b.key")
    (d / "c.key.new").write_text("new c.key")  # the certificate was never written
    assert sorted(settle(tmp_path)) == ["a", "b", "c"]
    assert (d / "a.crt").read_text() == "new a.crt"
    assert (d / "b.crt").read_text() == "old b.crt" and (d / "b.key").read_text() == "old b.key"
    assert (d / "c.key").read_text() == "old c.key"
    assert not list(d.glob("*.new")) and settle(tmp_path) == []
