"""Quorum ceremonies against a real sealed server: unseal, ROOT-CRL, a rollover with
certificates of both generations validating, REVOKE-INTERMEDIATE; refusals of fewer
than M, a repeated custodian and a share of another custody set. Prints the timings
quoted in docs/custody.md."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp as xocsp

from ca.custody import CustodyRecord, Purpose, open_share_file
from ca.generation import bump_generation
from ca.signedreq import TrustAnchors
from cli import auditproof
from tests.conftest import Server, stop
from tests.helpers import (
    assert_no_secret_in_tree,
    cert_of,
    creds,
    enroll_enterprise,
    fresh_uscc,
)
from tests.test_ca_init import MEMBERS, init_ca, present_share, start_sealed, unseal


def officer_args(out: Path, member: str = "customs") -> list[str]:
    d = out / "officers" / member
    return ["--cert", str(d / "officer.pem"), "--key", str(d / "officer.key")]


def read_out(srv: Server, ceremony: str) -> str:
    """The ceremony key's fingerprint, as its opener reads it out to the custodians."""
    doc = json.loads(srv.eport("ca", "ceremony", "status", ceremony, "--json").stdout)
    return str(doc["key_fingerprint"])


def join(
    srv: Server,
    out: Path,
    ceremony: str,
    member: str,
    check: bool = True,
    passphrase: str = "share passphrase of {}",
) -> subprocess.CompletedProcess[str]:
    """``member`` joins ``ceremony``, checking the fingerprint the opener reads out."""
    command = ("ca", "ceremony", "join", ceremony)
    return present_share(srv, command, out, member, read_out(srv, ceremony), check, passphrase)


def rotate(srv: Server, out: Path, issuer: str = "enterprise") -> str:
    """An RA officer (commerce) opens the rollover of ``issuer``: the ceremony's id."""
    res = srv.eport(
        "ca",
        "rotate",
        issuer,
        *officer_args(out, "commerce"),
        "--json",
        EPORT_PASSPHRASE="officer passphrase",
    )
    return str(json.loads(res.stdout)["id"])


def start(srv: Server, out: Path, *args: str) -> dict[str, object]:
    res = srv.eport(
        "ca",
        "ceremony",
        "start",
        *args,
        *officer_args(out),
        "--json",
        EPORT_PASSPHRASE="officer passphrase",
    )
    doc: dict[str, object] = json.loads(res.stdout)
    return doc


def enroll(srv: Server, out: Path, tmp: Path, name: str, uscc: str | None = None) -> Path:
    """An enterprise approved by the custody server's RA officer (tax): its directory."""
    return enroll_enterprise(
        srv,
        tmp,
        name,
        uscc=uscc,
        officer=officer_args(out, "tax"),
        EPORT_PASSPHRASE="officer passphrase",
    )


def add_operator(
    srv: Server, enterprise: Path, op_id: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """A signed request of the enterprise (``eport operator add``)."""
    return srv.eport(
        "operator",
        "add",
        "--name",
        f"Operator {op_id}",
        "--id",
        op_id,
        *creds(enterprise),
        "--json",
        check=check,
    )


def validates(
    cert: x509.Certificate, root: x509.Certificate, pool: list[x509.Certificate]
) -> x509.Certificate:
    """Path validation (cryptography's verifier, as signed requests use it): the issuer."""
    chain = TrustAnchors((root,), tuple(pool)).verify_chain(
        cert, datetime.datetime.now(datetime.UTC)
    )
    return chain[1]


def ask_ocsp(
    srv: Server,
    tmp: Path,
    issuer: x509.Certificate,
    cert: x509.Certificate,
    root: Path,
    nonce: bool,
) -> tuple[subprocess.CompletedProcess[str], xocsp.OCSPResponse]:
    """``openssl ocsp`` for ``cert`` against the server's responder: ``root`` trusted, the
    responder certified by ``issuer``."""
    files = tmp / "ocsp"
    files.mkdir(exist_ok=True)
    (files / "issuer.pem").write_bytes(issuer.public_bytes(serialization.Encoding.PEM))
    (files / "trust.pem").write_bytes(root.read_bytes() + (files / "issuer.pem").read_bytes())
    serial = format(cert.serial_number, "x")
    target = files / f"{serial}.pem"
    target.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    args = ["openssl", "ocsp", "-issuer", str(files / "issuer.pem"), "-cert", str(target)]
    args += [
        "-url",
        srv.url + "/ocsp",
        "-CAfile",
        str(files / "trust.pem"),
        "-respout",
        str(files / "r.der"),
    ]
    res = subprocess.run(
        args + ([] if nonce else ["-no_nonce"]), capture_output=True, text=True, timeout=30
    )
    return res, xocsp.load_der_ocsp_response((files / "r.der").read_bytes())


def root_crl(srv: Server) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(requests.get(srv.url + "/crl/root.crl", timeout=5).content)


@contextlib.contextmanager
def unsealed_custody_server(tmp: Path) -> Iterator[tuple[Server, Path, Path]]:
    """A real ``eport ca init`` in ``tmp``, its server started sealed and unsealed by 3
    custodians: (server, ceremony output directory, ``tmp``)."""
    data, out, _ = init_ca(tmp)
    srv, proc, fp = start_sealed(tmp, data)
    try:
        t0 = time.perf_counter()
        for m in ("commerce", "tax", "forex"):
            unseal(srv, out, m, fp)
        print(f"\nunseal by 3 custodians (3 CLI runs): {time.perf_counter() - t0:.2f} s")
        yield srv, out, tmp
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def ceremony_ca(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with unsealed_custody_server(tmp_path_factory.mktemp("custody")) as world:
        yield world


@pytest.mark.slow
def test_root_crl_needs_m_distinct_custodians(ceremony_ca) -> None:  # type: ignore[no-untyped-def]
    srv, out, tmp = ceremony_ca
    before = root_crl(srv)
    t0 = time.perf_counter()
    doc = start(srv, out, "ROOT-CRL")
    cid = str(doc["id"])
    assert doc["state"] == "open" and doc["threshold"] == 3 and doc["purpose"] == "root"
    assert json.loads(join(srv, out, cid, "customs").stdout)["progress"] == 1
    again = join(srv, out, cid, "customs", check=False)
    assert again.returncode == 1 and "already joined" in again.stderr
    assert json.loads(join(srv, out, cid, "tax").stdout)["progress"] == 2
    # Fewer than M: nothing was signed.
    assert root_crl(srv).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == (
        before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    )
    # A share of another custody set (another init) is refused.
    _, other_out, _ = init_ca(tmp / "other")
    foreign = srv.eport(
        "ca",
        "ceremony",
        "join",
        cid,
        "--share",
        str(other_out / "shares" / "forex.share"),
        check=False,
        EPORT_SHARE_PASSPHRASE="share passphrase of forex",
    )
    assert foreign.returncode == 1 and "custody set" in foreign.stderr
    done = json.loads(join(srv, out, cid, "inspection").stdout)
    elapsed = time.perf_counter() - t0
    print(f"\nROOT-CRL ceremony (start + 3 joins, CLI): {elapsed:.2f} s")
    assert done["state"] == "done" and done["joined"] == ["customs", "tax", "inspection"]
    crl = root_crl(srv)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    # numbered above the one before and by the clock (a restore cannot reuse a number)
    assert (
        number == done["result"]["root_crl_number"] >= int(crl.last_update_utc.timestamp()) * 1000
    )
    assert number > before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    root = x509.load_pem_x509_certificate((out / "root.crt").read_bytes())
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    # It ran exactly once: a later join is refused.
    late = join(srv, out, cid, "forex", check=False)
    assert late.returncode == 1 and "done" in late.stderr


def test_start_refuses_what_the_operation_would_refuse(ceremony_ca) -> None:  # type: ignore[no-untyped-def]
    """Parameters the operation would refuse at the M-th join are refused when the
    ceremony is opened, in one line, and nothing is stored: no custodian is called to
    a ceremony that cannot complete, and `eport ca rotate` of a misspelt issuer does not
    make a new issuing CA under the root."""
    import sqlite3

    srv, out, _ = ceremony_ca
    issuers = srv.data_dir / "ca" / "issuers"
    db = srv.data_dir / "eport.db"

    def stored() -> tuple[list[str], int]:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            (n,) = conn.execute("SELECT count(*) FROM custody_ceremonies").fetchone()
        return sorted(p.name for p in issuers.iterdir()), n

    before = stored()
    refusals = {
        ("ROTATE-ISSUER", "issuer=enterprisee"): "no issuing CA 'enterprisee' to rotate",
        # a new issuing CA only for an issuer the profiles name
        ("ISSUE-INTERMEDIATE", "issuer=newone"): (
            "no issuing CA 'newone', and no profile in the policies issues from it"
        ),
        # a key the operation does not read was stored and ignored ("reson=": the
        # ceremony revoked with the default reason)
        ("ISSUE-INTERMEDIATE", "name=enterprise"): "ISSUE-INTERMEDIATE takes issuer; not 'name'",
        ("REVOKE-INTERMEDIATE", "issuer=service", "reson=superseded"): (
            "REVOKE-INTERMEDIATE takes issuer, reason; not 'reson'"
        ),
        ("ROOT-CRL", "foo=bar"): "ROOT-CRL takes no parameters; not 'foo'",
        ("REVOKE-INTERMEDIATE", "issuer=nosuch"): "no issuing CA 'nosuch'",
        ("REVOKE-INTERMEDIATE", "issuer=agency", "reason=affiliationChanged"): (
            "reason 'affiliationChanged' does not apply to a CA certificate"
        ),
    }
    for args, message in refusals.items():
        res = srv.eport(
            "ca",
            "ceremony",
            "start",
            *args,
            *officer_args(out),
            check=False,
            EPORT_PASSPHRASE="officer passphrase",
        )
        assert res.returncode == 1 and message in res.stderr, (args, res.stderr)
        assert "(HTTP 400)" in res.stderr and "\n" not in res.stderr.strip()
    res = srv.eport(
        "ca",
        "rotate",
        "enterprisee",
        *officer_args(out),
        check=False,
        EPORT_PASSPHRASE="officer passphrase",
    )
    assert res.returncode == 1 and "one of: agency, enterprise, service" in res.stderr
    # a key given twice: the last one won (a rotation of agency, not enterprise)
    res = srv.eport(
        "ca",
        "ceremony",
        "start",
        "ROTATE-ISSUER",
        "issuer=enterprise",
        "issuer=agency",
        *officer_args(out),
        check=False,
        EPORT_PASSPHRASE="officer passphrase",
    )
    assert res.returncode == 2 and "'issuer' is given twice" in res.stderr, res.stderr
    assert stored() == before


def test_an_expired_ceremony_says_so_and_takes_no_share(ceremony_ca) -> None:  # type: ignore[no-untyped-def]
    """An open ceremony past its expiry was shown as "open": a custodian opened their
    share (passphrase and all) and sent it before the server refused it (409). Its state
    reads "expired" now, and join refuses before the share is opened."""
    import sqlite3

    srv, out, _ = ceremony_ca
    cid = str(start(srv, out, "ROOT-CRL")["id"])
    assert json.loads(join(srv, out, cid, "customs").stdout)["progress"] == 1
    with contextlib.closing(sqlite3.connect(srv.data_dir / "eport.db")) as conn, conn:
        conn.execute(
            "UPDATE custody_ceremonies SET expires_at = '2001-01-01 00:00:00.000000' WHERE id = ?",
            (cid,),
        )
    doc = json.loads(srv.eport("ca", "ceremony", "status", cid, "--json").stdout)
    assert doc["state"] == "expired" and doc["progress"] == 1, doc
    text = srv.eport("ca", "ceremony", "status", cid).stdout
    assert "expired" in text and " open" not in text, text
    res = join(srv, out, cid, "tax", check=False, passphrase="not the passphrase of {}")
    # refused on the state, before the share file is opened: the passphrase goes unread
    assert res.returncode == 1 and f"ceremony {cid} is expired" in res.stderr, res.stderr
    # The share customs sent is not kept once the ceremony expired (it would never be
    # combined; wiped when any ceremony is opened or joined, and by each worker every
    # minute); who joined is.
    start(srv, out, "ROOT-CRL")
    with contextlib.closing(sqlite3.connect(srv.data_dir / "eport.db")) as conn:
        kept = conn.execute(
            "SELECT member, length(sealed) FROM custody_ceremony_shares WHERE ceremony_id = ?",
            (cid,),
        ).fetchall()
    assert kept == [("customs", 0)], kept
    doc = json.loads(srv.eport("ca", "ceremony", "status", cid, "--json").stdout)
    assert doc["state"] == "expired" and doc["progress"] == 1, doc


@pytest.mark.slow
def test_rollover_both_generations_validate_then_revoke_old(ceremony_ca) -> None:  # type: ignore[no-untyped-def]
    srv, out, tmp = ceremony_ca
    root = x509.load_pem_x509_certificate((out / "root.crt").read_bytes())
    old_uscc = fresh_uscc()
    old = enroll(srv, out, tmp, "Old Generation Co", uscc=old_uscc)
    held = enroll(srv, out, tmp, "Held Old Generation Co")
    srv.eport(
        "suspend",
        "--serial",
        format(cert_of(held).serial_number, "x"),
        *officer_args(out, "tax"),
        EPORT_PASSPHRASE="officer passphrase",
    )
    old_cert = cert_of(old)
    old_issuer = x509.load_pem_x509_certificate(
        (srv.data_dir / "ca" / "issuers" / "enterprise.crt").read_bytes()
    )
    cid = rotate(srv, out)
    for m in ("forex", "customs"):
        join(srv, out, cid, m)
    done = json.loads(join(srv, out, cid, "commerce").stdout)
    assert done["result"]["generation"] == "enterprise-2"
    assert done["result"]["replaces"] == "enterprise"
    new_issuer = x509.load_pem_x509_certificate(
        (srv.data_dir / "ca" / "issuers" / "enterprise-2.crt").read_bytes()
    )
    assert new_issuer.public_key() != old_issuer.public_key()
    # New certificates come from the new generation at once, in every worker.
    new = [enroll(srv, out, tmp, f"New Generation Co {i}") for i in range(3)]
    for d in new:
        cert = cert_of(d)
        cert.verify_directly_issued_by(new_issuer)
    # Both generations validate, with both in the pool (same name, different keys).
    assert validates(cert, root, [old_issuer, new_issuer]) == new_issuer
    assert validates(old_cert, root, [new_issuer, old_issuer]) == old_issuer
    # The old generation still answers for its certificates: CRL and OCSP.
    old_crl = x509.load_der_x509_crl(
        requests.get(srv.url + "/crl/enterprise.crl", timeout=5).content
    )
    assert old_crl.is_signature_valid(old_issuer.public_key())  # type: ignore[arg-type]
    for d in (old, new[0]):
        st = srv.eport("status", "--cert", str(d / "cert.pem"), "--json")
        assert json.loads(st.stdout)["status"] == "good", st.stdout

    # Their answers are pre-signed and stored (a canonical request, no nonce), in each
    # worker's reach: the revocation must not leave them served.
    for _ in range(4):
        for d, expect in ((old, ": good\n"), (held, ": revoked\n")):
            res, _ = ask_ocsp(srv, tmp, old_issuer, cert_of(d), out / "root.crt", False)
            assert expect in res.stdout, res.stdout + res.stderr
    # The old generation's key is compromised: revoke it by a quorum root CRL.
    doc = start(srv, out, "REVOKE-INTERMEDIATE", "issuer=enterprise", "reason=keyCompromise")
    # The first custodian's answer is lost after the server took the join: the custodian
    # is told it may or may not have been taken, and where to look.
    from tests.test_crash_recovery import answer_dropping_proxy

    cid = str(doc["id"])
    with answer_dropping_proxy(srv.url, f"POST /ca/v1/custody/ceremonies/{cid}/join".encode()) as p:
        lost = present_share(
            srv, ("--server", p, "ca", "ceremony", "join", cid), out, "inspection",
            read_out(srv, cid), check=False,
        )  # fmt: skip
    assert lost.returncode == 1, lost.stdout + lost.stderr
    assert (
        "may or may not have been taken; see where the ceremony stands "
        f"(eport ca ceremony status {cid})" in lost.stderr
    )
    status = srv.eport("ca", "ceremony", "status", cid).stdout
    assert "1 of 3 custodians (inspection)" in status, status
    for m in ("tax", "customs"):
        last = join(srv, out, cid, m)
    result = json.loads(last.stdout)["result"]
    assert result["serial"] == format(old_issuer.serial_number, "x")
    # The ceremony dropped the generation's pre-signed answers as it committed: a worker
    # that has not reloaded yet cannot serve one from the pre-signed path.
    import sqlite3

    with contextlib.closing(sqlite3.connect(srv.data_dir / "eport.db")) as conn:
        (kept,) = conn.execute(
            "SELECT count(*) FROM ocsp_responses WHERE issuer_id = 'enterprise' AND length(der) > 0"
        ).fetchone()
    assert kept == 0, kept
    crl = root_crl(srv)
    revoked = crl.get_revoked_certificate_by_serial_number(old_issuer.serial_number)
    assert revoked is not None
    # A second revocation of it is refused at the opening, as its M-th join would refuse
    # it (custodians were called, shares stored, then a 409 at the last join).
    again = srv.eport(
        "ca", "ceremony", "start", "REVOKE-INTERMEDIATE", "issuer=enterprise",
        *officer_args(out), check=False, EPORT_PASSPHRASE="officer passphrase",
    )  # fmt: skip
    assert again.returncode == 1, again.stdout + again.stderr
    assert "issuing CA enterprise is already revoked on the root CRL" in again.stderr
    assert crl.get_revoked_certificate_by_serial_number(new_issuer.serial_number) is None
    # The revoked generation's responder now answers revoked (cACompromise, from the
    # CA's revocation on) for its certificates, the held one too, in every worker and
    # with or without a nonce (RFC 6960 §2.7); openssl checks the signed answers.
    ca_revoked_at = revoked.revocation_date_utc
    for _ in range(2):  # two workers answer
        for d in (old, held):
            for nonce in (True, False):
                res, resp = ask_ocsp(srv, tmp, old_issuer, cert_of(d), out / "root.crt", nonce)
                assert res.returncode == 0 and "Response verify OK" in res.stderr, res.stderr
                assert ": revoked\n" in res.stdout, res.stdout
                assert "Reason: cACompromise" in res.stdout, res.stdout
                assert resp.certificate_status is xocsp.OCSPCertStatus.REVOKED
                assert resp.revocation_time_utc == ca_revoked_at
    res, _ = ask_ocsp(srv, tmp, new_issuer, cert_of(new[0]), out / "root.crt", True)
    assert ": good\n" in res.stdout, res.stdout + res.stderr
    # A hold on a certificate of the revoked generation can no longer be lifted.
    lifted = srv.eport(
        "resume",
        "--serial",
        format(cert_of(held).serial_number, "x"),
        *officer_args(out, "tax"),
        EPORT_PASSPHRASE="officer passphrase",
        check=False,
    )
    assert lifted.returncode == 1 and "(HTTP 409)" in lifted.stderr, lifted.stderr
    assert "its issuing CA enterprise was revoked on the root CRL" in lifted.stderr
    # Revoked for a reason of its own after its CA was: said, and listed, as revoked
    # since its CA was, as OCSP answers (revocation probe, session 27: the later time)
    held_serial = format(cert_of(held).serial_number, "x")
    officer = (*officer_args(out, "tax"),)
    gone = srv.eport(
        "revoke", "--serial", held_serial, "--reason", "affiliationChanged", *officer,
        EPORT_PASSPHRASE="officer passphrase",
    ).stdout  # fmt: skip
    assert f"its issuing CA enterprise was revoked at {ca_revoked_at:%Y-%m-%dT%H:%M:%S}" in gone
    (org,) = cert_of(held).subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_IDENTIFIER)
    listing = srv.eport(
        "cert", "list", "--uscc", str(org.value).removeprefix("NTRCN-"), *officer, "--json",
        EPORT_PASSPHRASE="officer passphrase",
    ).stdout  # fmt: skip
    (row,) = [c for c in json.loads(listing)["certificates"] if c["serial"] == held_serial]
    since = datetime.datetime.fromisoformat(row["since"].replace("Z", "+00:00"))
    assert row["status"] == "revoked" and since == ca_revoked_at, row
    # A relying party asking eport status: the root's CRL says its CA is revoked.
    res = srv.eport("status", "--cert", str(old / "cert.pem"), "--json", check=False)
    assert res.returncode == 3  # eport status's exit status for revoked
    st = json.loads(res.stdout)
    assert st["status"] == "revoked" and st["issuing_ca_revoked"] is True
    assert st["reason"] == "keyCompromise"
    res = srv.eport("status", "--cert", str(old / "cert.pem"), check=False)
    assert res.returncode == 3 and "its issuing CA was revoked on the root CRL" in res.stdout
    # One on hold is revoked too: a hold is reversible, a revoked CA's certificate is not.
    res = srv.eport("status", "--cert", str(held / "cert.pem"), "--json", check=False)
    assert res.returncode == 3, res.stdout + res.stderr
    assert json.loads(res.stdout)["issuing_ca_revoked"] is True
    st = json.loads(srv.eport("status", "--cert", str(new[0] / "cert.pem"), "--json").stdout)
    assert st["status"] == "good" and "issuing_ca_revoked" not in st
    # Issuance goes on from the new generation.
    after = enroll(srv, out, tmp, "After Revocation Co")
    cert_of(after).verify_directly_issued_by(new_issuer)
    # The runbook's step 4: the enterprise of the revoked generation is vetted and
    # enrolled again; its certificate under the revoked CA is in force for nobody.
    again = enroll(srv, out, tmp, "Old Generation Co", uscc=old_uscc)
    cert_of(again).verify_directly_issued_by(new_issuer)
    # The CA no longer takes signed requests from certificates under the revoked
    # generation (in any worker), and still does from the new one.
    for n in range(2):
        refused = add_operator(srv, old, f"OLD{n}", check=False)
        assert refused.returncode == 1 and "(HTTP 401)" in refused.stderr, refused.stderr
        assert "issuing CA enterprise was revoked on the root CRL (keyCompromise)" in (
            refused.stderr
        )
        assert "\n" not in refused.stderr.strip()
        assert add_operator(srv, new[0], f"NEW{n}").returncode == 0
    # issuers/active.json naming the revoked generation again (edited by hand, or taken
    # from a database someone changed): nothing is issued from it, in any worker.
    active = srv.data_dir / "ca" / "issuers" / "active.json"
    kept = active.read_bytes()
    active.write_text(json.dumps({"enterprise": "enterprise"}))
    bump_generation(srv.data_dir)
    for n in range(2):
        with pytest.raises(AssertionError, match="which the root's CRL revokes") as failed:
            enroll(srv, out, tmp, f"Planted Active Co {n}")
        assert "HTTP 503" in str(failed.value), failed.value
    active.write_bytes(kept)
    bump_generation(srv.data_dir)
    cert_of(enroll(srv, out, tmp, "Active Again Co")).verify_directly_issued_by(new_issuer)


def assert_root_signs_log_key(srv: Server, out: Path) -> None:
    """The log key the server names carries the root's signature (ca/log.pub.sig), which
    ``openssl dgst`` verifies under the ceremony's root.crt over the documented message."""
    doc = requests.get(srv.url + "/ca/v1/audit/log-key", timeout=10).json()
    vouched = doc["root_signature"]
    pem = doc["public_key"].encode()
    assert vouched["log_key_sha256"] == hashlib.sha256(pem).hexdigest()
    work = srv.data_dir.parent / "log-key-check"
    work.mkdir(exist_ok=True)
    root = x509.load_pem_x509_certificate((out / "root.crt").read_bytes())
    (work / "root.pub").write_bytes(
        root.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    message = f"eport-log-key-signature/v1\nsha256 {hashlib.sha256(pem).hexdigest()}\n"
    (work / "message").write_text(message)
    (work / "sig").write_bytes(base64.b64decode(vouched["signature"]))
    checked = subprocess.run(
        ["openssl", "dgst", "-sha384", "-verify", str(work / "root.pub"), "-signature",
         str(work / "sig"), str(work / "message")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0 and "Verified OK" in checked.stdout, checked


def audit_verify(srv: Server, state: Path, *extra: str) -> dict[str, Any]:
    res = srv.eport("audit", "verify", "--state", str(state), "--json", *extra)
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


@pytest.mark.slow
def test_an_auditor_s_state_follows_the_log_key_s_rotation(  # type: ignore[no-untyped-def]
    ceremony_ca, tmp_path: Path
) -> None:
    """ROTATE-LOG-KEY signs the log's hand-over to the new key with the old one and the
    new one (in its own transaction); an auditor's state file pinning the old key then
    follows it to the new key: no new state, no --full."""
    srv, out, tmp = ceremony_ca
    state = tmp_path / "audit.json"
    root = str(out / "root.crt")
    # The init's root signed the log key: a first verification with --root pins it by
    # that signature (no trust on first use); under another root it is refused.
    first_use = srv.eport("audit", "verify", "--state", str(state), "--json", "--root", root)
    assert "is signed by the root" in first_use.stderr and "on first use" not in first_use.stderr
    first = json.loads(first_use.stdout)
    assert_root_signs_log_key(srv, out)
    old_key = first["log_key"]
    cid = str(start(srv, out, "ROTATE-LOG-KEY")["id"])
    for m in ("customs", "tax", "forex"):
        done = json.loads(join(srv, out, cid, m).stdout)
    assert done["state"] == "done", done
    new_key = requests.get(srv.url + "/ca/v1/audit/log-key", timeout=10).json()["verifier_key"]
    assert new_key != old_key
    handovers = requests.get(srv.url + "/ca/v1/audit/log-key/handovers", timeout=10).json()
    [handover] = handovers["handovers"]
    # Signed by both keys (each verified by the independent verifier), naming the new one.
    note = handover["checkpoint"].encode()
    for key in (old_key, new_key):
        cp = auditproof.verify_checkpoint(note, auditproof.VerifierKey.parse(key))
    assert cp.size == handover["tree_size"] > first["tree_size"]
    assert cp.extensions == (f"log-key-successor {new_key}",)
    # Its size ends with the ceremony's own entry, which names the new key's log.pub.
    events = srv.eport(
        "audit",
        "log",
        "--type",
        "ceremony.completed",
        "--format",
        "json",
        *officer_args(out),
        EPORT_PASSPHRASE="officer passphrase",
    )
    event = json.loads(events.stdout)[-1]
    assert event["log_index"] == cp.size - 1
    assert event["details"]["operation"] == "ROTATE-LOG-KEY"
    pub = (srv.data_dir / "ca" / "log.pub").read_bytes()
    assert event["details"]["result"]["key_sha256"] == hashlib.sha256(pub).hexdigest()
    # The ceremony's root signed the new key too: a new auditor pins it under the root.
    assert_root_signs_log_key(srv, out)
    fresh = srv.eport(
        "audit", "verify", "--state", str(tmp_path / "fresh.json"), "--root", str(out / "root.crt")
    )
    assert "is signed by the root" in fresh.stderr, fresh.stderr

    enroll(srv, out, tmp, "After The Rotation Co")  # the log grows under the new key
    kept = state.read_text()
    after = audit_verify(srv, state)
    assert after["log_key"] == new_key and after["tree_size"] > cp.size
    assert after["handovers"] == [
        {"tree_size": cp.size, "from": old_key, "to": new_key, "vouched_by_root": False}
    ]
    assert after["previous_size"] == first["tree_size"]
    assert json.loads(state.read_text())["verifier_key"] == new_key
    assert audit_verify(srv, state)["handovers"] == []  # the state pins the new key now
    # The old state with the new key pinned out of band (--log-key): followed to it too.
    state.write_text(kept)
    assert audit_verify(srv, state, "--log-key", new_key)["log_key"] == new_key


@pytest.mark.slow
def test_two_rotations_completing_at_once_both_complete(  # type: ignore[no-untyped-def]
    ceremony_ca,
) -> None:
    """Two rotations of one issuing CA whose last custodians join at the same moment (on
    two workers): each completes, one generation after the other; neither answers 500
    because the other's new generation appeared while it ran."""
    import threading

    srv, out, _ = ceremony_ca
    issuers = srv.data_dir / "ca" / "issuers"
    for _ in range(3):
        ids = [rotate(srv, out, "service") for _ in range(2)]
        for cid in ids:
            for m in ("customs", "tax"):
                join(srv, out, cid, m)
        before = {p.name for p in issuers.glob("service*.crt")}
        prints = {cid: read_out(srv, cid) for cid in ids}
        results: dict[str, subprocess.CompletedProcess[str]] = {}

        def last(cid: str, fp: str, results: dict[str, subprocess.CompletedProcess[str]]) -> None:
            command = ("ca", "ceremony", "join", cid)
            results[cid] = present_share(srv, command, out, "forex", fp, False)

        threads = [threading.Thread(target=last, args=(cid, prints[cid], results)) for cid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for cid in ids:
            assert results[cid].returncode == 0, results[cid].stderr
        gens = {json.loads(results[cid].stdout)["result"]["generation"] for cid in ids}
        made = {p.name for p in issuers.glob("service*.crt")} - before
        assert len(gens) == 2 and made == {f"{g}.crt" for g in gens}, (gens, made)


def test_no_secret_in_clear_after_the_run(ceremony_ca) -> None:  # type: ignore[no-untyped-def]
    """After init, unseal, ceremonies and issuance: no private key, share, KEK or
    passphrase appears in clear in the data directory, the ceremony output (outside the
    encrypted share files and keys) or the server's log."""
    srv, out, tmp = ceremony_ca
    record = CustodyRecord.from_json(json.loads((out / "custody.json").read_text()))
    shares = {}
    for m in MEMBERS:
        blob = (out / "shares" / f"{m}.share").read_bytes()
        shares[m] = open_share_file(blob, f"share passphrase of {m}".encode())
    secrets: list[bytes] = []
    for purpose in Purpose:
        kek = record.combine([shares[m].share(purpose) for m in MEMBERS], purpose)
        secrets.append(bytes(kek))
        for f in shares.values():
            secrets.append(f.share(purpose).value)
    secrets += [b"share passphrase of", b"officer passphrase"]
    scanned = assert_no_secret_in_tree([srv.data_dir, *tmp.rglob("*.log"), out], secrets)
    assert scanned > 20


@pytest.mark.slow
def test_a_member_left_without_officers_gets_one_by_quorum(ceremony_ca) -> None:  # type: ignore[no-untyped-def]
    """Only a member's own officers approve its staff, and no other member may change
    their status: a member whose officers are all revoked or expired gets a new one by
    an APPROVE-OFFICER ceremony of M custodians (authorization probe, F4)."""
    srv, out, tmp = ceremony_ca
    pw = {"EPORT_PASSPHRASE": "officer passphrase"}
    forex = officer_args(out, "forex")
    srv.eport("revoke", "--reason", "keyCompromise", *forex, **pw)  # its last officer
    app = json.loads(
        srv.eport(
            "apply", "--class", "agency", "--agency", "forex", "--name", "Wang Fang", "--json"
        ).stdout
    )["id"]
    other = srv.eport("ra", "approve", app, *officer_args(out, "customs"), check=False, **pw)
    assert other.returncode == 1 and "only an officer of agency 'forex'" in other.stderr
    # Opened only for a pending officer's application: an enterprise's is refused.
    ent_app = json.loads(
        srv.eport("apply", "--uscc", fresh_uscc(), "--name", "Quorum Check Co.", "--json").stdout
    )["id"]
    wrong = srv.eport(
        "ca",
        "ceremony",
        "start",
        "APPROVE-OFFICER",
        f"application={ent_app}",
        *officer_args(out),
        check=False,
        **pw,
    )
    assert wrong.returncode == 1 and "approves only an RA officer" in wrong.stderr, wrong
    # Not for a member that has an officer in force: its own officers approve its staff.
    customs_app = json.loads(
        srv.eport(
            "apply", "--class", "agency", "--agency", "customs", "--name", "Zhao Lei", "--json"
        ).stdout
    )["id"]
    has_one = srv.eport(
        "ca",
        "ceremony",
        "start",
        "APPROVE-OFFICER",
        f"application={customs_app}",
        *officer_args(out),
        check=False,
        **pw,
    )
    assert has_one.returncode == 1 and "customs has an RA officer certificate in force" in (
        has_one.stderr
    ), has_one
    opened = start(srv, out, "APPROVE-OFFICER", f"application={app}")
    cid = str(opened["id"])
    # custodians see whom they approve, not only an application id
    assert opened["approving"] == {
        "application": app,
        "agency_id": "forex",
        "person_name": "Wang Fang",
        "state": "pending",
    }
    for member in ("customs", "tax"):
        res = join(srv, out, cid, member)
        assert f"approves RA officer Wang Fang of member agency forex (application {app})" in (
            res.stderr
        )
        doc = json.loads(res.stdout)
        assert doc["state"] == "open" and "enrollment_code" not in doc
    done = json.loads(join(srv, out, cid, "inspection").stdout)
    assert done["state"] == "done" and done["result"]["agency_id"] == "forex"
    code = done["enrollment_code"]
    # Shown once: neither the ceremony's record nor the log holds it.
    shown = srv.eport("ca", "ceremony", "status", cid, "--json").stdout
    assert code not in shown and "enrollment_code" not in json.loads(shown)
    assert assert_no_secret_in_tree([srv.data_dir], [code.encode()]) > 0
    new = tmp / "new-forex-officer"
    srv.eport("enroll", "--code", code, "--profile", "agency", "--out", str(new))
    listed = srv.eport("ra", "list", *creds(new), "--json")
    assert "applications" in json.loads(listed.stdout)
    shown_app = json.loads(srv.eport("application", "show", app, "--json").stdout)
    assert shown_app["state"] == "approved"
