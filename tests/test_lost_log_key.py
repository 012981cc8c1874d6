"""The transparency log's key lost: the server serves without it (issuance and its log
entries go on; the newest signed checkpoint is served), and the REPLACE-LOG-KEY ceremony
makes a new one whose hand-over the joint root CA's key vouches for, since the lost key
cannot sign it. An auditor who pinned the lost key follows the replacement only with the
root certificate it trusts (``eport audit verify --root``). Before, a lost log key
refused the start, and ROTATE-LOG-KEY, which needs the old key's signature, could not
replace it (docs/emergency-plan.md §7)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from ca.checkpoint import Checkpoint, add_root_signature, sign_note, verifier_key
from ca.translog import HANDOVER, REPLACED
from cli.audit import VerificationFailed, handover_step
from cli.auditproof import VerifierKey
from tests.conftest import need, start_server, stop
from tests.helpers import enroll_enterprise, health_of, until
from tests.test_ca_init import init_ca, start_sealed, unseal
from tests.test_custody_ceremonies import enroll, join, start

ORIGIN = "ca.example/log"


def _root(name: str = "Test Root") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = x509.CertificateBuilder(
        subject, subject, key.public_key(), 1, now, now + datetime.timedelta(days=1)
    ).sign(key, hashes.SHA384())
    return key, cert


class _RootSigner:
    """The root key as ``ca.signer.Signer`` signs: ECDSA P-384 with SHA-384, DER."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA384()))

    def public_key(self) -> object:
        return self.key.public_key()


def _replacement(
    old: Ed25519PrivateKey, new: Ed25519PrivateKey, root: _RootSigner, cert: x509.Certificate
) -> bytes:
    lines = (
        HANDOVER + verifier_key(ORIGIN, new.public_key()),
        REPLACED + verifier_key(ORIGIN, old.public_key()),
    )
    body = Checkpoint(ORIGIN, 7, bytes(32), lines).body()
    return add_root_signature(sign_note(body, ORIGIN, new), root, cert)


def test_a_replacement_is_followed_only_with_the_root_that_signed_it() -> None:
    old, new, other = (Ed25519PrivateKey.generate() for _ in range(3))
    key, cert = _root()
    note = _replacement(old, new, _RootSigner(key), cert)
    trusted = VerifierKey.parse(verifier_key(ORIGIN, old.public_key()))
    successor = verifier_key(ORIGIN, new.public_key())

    step = handover_step(note, trusted, cert)
    assert step is not None and str(step[1]) == successor and step[0].size == 7
    # Without a root: refused, saying what to give.
    with pytest.raises(VerificationFailed, match="--root FILE"):
        handover_step(note, trusted)
    # Another root (a forger's): refused.
    _, forged = _root("Forger Root")
    with pytest.raises(VerificationFailed, match="no signature by the root key given"):
        handover_step(note, trusted, forged)
    # The root's line over another text (the successor swapped after it signed): refused.
    swapped = note.replace(successor.encode(), verifier_key(ORIGIN, other.public_key()).encode(), 1)
    with pytest.raises(VerificationFailed, match="does not verify"):
        handover_step(swapped, trusted, cert)
    # A replacement of another key: not this key's step.
    elsewhere = VerifierKey.parse(verifier_key(ORIGIN, other.public_key()))
    assert handover_step(note, elsewhere, cert) is None
    # Signed by the root but not by the successor it names: refused.
    lines = note.decode().split("\n")
    unsigned = "\n".join(line for line in lines if not line.startswith(f"\u2014 {ORIGIN} "))
    with pytest.raises(VerificationFailed, match="by its successor"):
        handover_step(unsigned.encode(), trusted, cert)


@pytest.mark.slow
def test_a_lost_log_key_is_replaced_by_the_root_quorum(tmp_path: Path) -> None:
    data, out, _ = init_ca(tmp_path)
    d = data / "ca"
    srv, proc, fp = start_sealed(tmp_path, data)
    state = tmp_path / "auditor.json"
    try:
        for m in ("commerce", "tax", "forex"):
            unseal(srv, out, m, fp)
        enroll(srv, out, tmp_path, "Before The Loss Co")
        first = json.loads(
            srv.eport("audit", "verify", "--state", str(state), "--log-key",
                      str(out / "log.pub"), "--json").stdout
        )  # fmt: skip
    finally:
        stop(proc)

    (d / "log.key").unlink()  # lost: no backup of it
    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        for m in ("commerce", "tax", "forex"):
            res = unseal(srv, out, m, fp)
        done = json.loads(res.stdout)
        assert done["sealed"] is False and done["missing_keys"] == ["log"], done
        health = health_of(srv.url)
        assert health["status"] == "degraded" and health["missing_keys"] == ["log"], health
        warnings = health["warnings"]
        assert isinstance(warnings, list) and len(warnings) == 1, warnings
        warning = str(warnings[0])
        assert "log.key: No such file or directory" in warning, warning
        assert "REPLACE-LOG-KEY" in warning
        # Issuance goes on, its entries in the log; the newest signed checkpoint is served.
        enroll(srv, out, tmp_path, "During The Loss Co")
        r = requests.get(srv.url + "/ca/v1/audit/checkpoint", timeout=10)
        assert (
            r.status_code == 200 and r.content.split(b"\n")[1] == str(first["tree_size"]).encode()
        )
        # ROTATE-LOG-KEY would need the lost key's signature: refused at the opening.
        refused = srv.eport(
            "ca", "ceremony", "start", "ROTATE-LOG-KEY", *_officer(out), check=False,
            EPORT_PASSPHRASE="officer passphrase",
        )  # fmt: skip
        assert refused.returncode != 0 and "open REPLACE-LOG-KEY" in refused.stderr

        cid = str(start(srv, out, "REPLACE-LOG-KEY")["id"])
        for m in ("customs", "tax", "inspection"):
            done = json.loads(join(srv, out, cid, m).stdout)
        assert done["state"] == "done", done
        root_pem = (out / "root.crt").read_bytes()
        root = x509.load_pem_x509_certificate(root_pem)
        assert done["result"]["vouched_by_root_sha256"] == root.fingerprint(hashes.SHA256()).hex()
        assert until(lambda: "missing_keys" not in health_of(srv.url))
        assert health_of(srv.url)["status"] == "ok"
        new_pub = (d / "log.pub").read_bytes()
        assert (d / "log-1.pub").read_bytes() == (out / "log.pub").read_bytes()
        assert done["result"]["key_sha256"] == hashlib.sha256(new_pub).hexdigest()

        # The root's line checked by openssl: the note's text, signed by the root's key.
        [handover] = requests.get(srv.url + "/ca/v1/audit/log-key/handovers", timeout=10).json()[
            "handovers"
        ]
        note = handover["checkpoint"].encode()
        text, sigs = note[: note.rindex(b"\n\n") + 1], note[note.rindex(b"\n\n") + 2 :]
        [line] = [s for s in sigs.decode().splitlines() if s.startswith("\u2014 eport-root-ca ")]
        (tmp_path / "text").write_bytes(text)
        (tmp_path / "sig").write_bytes(base64.b64decode(line.split(" ")[2])[4:])
        (tmp_path / "root.pub").write_bytes(
            root.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        digest = root.signature_hash_algorithm
        assert digest is not None
        ok = subprocess.run(
            [need("openssl"), "dgst", f"-{digest.name}", "-verify", str(tmp_path / "root.pub"),
             "-signature", str(tmp_path / "sig"), str(tmp_path / "text")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert ok.returncode == 0 and "Verified OK" in ok.stdout, ok.stdout + ok.stderr

        # The auditor who pinned the lost key: refused without the root, followed with it.
        kept = state.read_text()
        res = srv.eport("audit", "verify", "--state", str(state), check=False)
        assert res.returncode != 0 and "--root FILE" in res.stderr, res.stderr
        assert state.read_text() == kept
        res = srv.eport(
            "audit", "verify", "--state", str(state), "--root", str(out / "root.crt"), "--json"
        )
        doc = json.loads(res.stdout)
        new_key = requests.get(srv.url + "/ca/v1/audit/log-key", timeout=10).json()
        assert doc["log_key"] == new_key["verifier_key"] != first["log_key"]
        assert doc["handovers"] == [
            {"tree_size": handover["tree_size"], "from": first["log_key"],
             "to": new_key["verifier_key"], "vouched_by_root": True}
        ]  # fmt: skip
        assert doc["previous_size"] == first["tree_size"]
        # The new key signs: the log grows and is verified under it, no --root needed now.
        enroll(srv, out, tmp_path, "After The Replacement Co")
        again = json.loads(srv.eport("audit", "verify", "--state", str(state), "--json").stdout)
        assert again["tree_size"] > doc["tree_size"] and again["handovers"] == []
        assert "Traceback" not in srv.log.read_text()
    finally:
        stop(proc)


def _officer(out: Path) -> list[str]:
    from tests.test_custody_ceremonies import officer_args

    return officer_args(out)


@pytest.mark.slow
def test_a_development_ca_serves_without_its_log_key_file(tmp_path: Path) -> None:
    """The development CA (keys under a passphrase) with its log key file gone: it starts
    with one warning (a new development CA is the advice: it has no custodians), issues,
    and serves the newest checkpoint signed before the loss."""
    data = tmp_path / "data"
    srv, proc = start_server(data, workers=1)
    try:
        enroll_enterprise(srv, tmp_path / "before")
        signed = requests.get(srv.url + "/ca/v1/audit/checkpoint", timeout=10)
        assert signed.status_code == 200
    finally:
        stop(proc)
    (data / "ca" / "log.key").unlink()
    srv, proc = start_server(data, workers=1)
    try:
        log = srv.log.read_text()
        # the workers' periodic notice (a development start prints no WARNING: lines)
        assert "The transparency log's key cannot be opened (ca/log.key: No such" in log, log
        health = health_of(srv.url)
        assert health["missing_keys"] == ["log"] and health["status"] == "degraded", health
        assert "remove its data directory" in str(health["warnings"])
        enroll_enterprise(srv, tmp_path / "after")
        served = requests.get(srv.url + "/ca/v1/audit/checkpoint", timeout=10)
        assert served.status_code == 200 and served.content == signed.content
        # A full verification cannot check what was issued after that checkpoint: said
        # so, not as tampering (emergency-plan probe, session 27: "its issuance is not in
        # the log", of an issuance that is)
        res = srv.eport("audit", "verify", "--full", "--state", str(tmp_path / "s.json"),
                        *srv.auditor(), check=False)  # fmt: skip
        assert res.returncode == 1, res.stdout + res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith("eport: error: cannot verify the 1 certificate records"), line
        assert "signs no newer one (its log key is missing" in line and "FAILED" not in line
        assert "Traceback" not in srv.log.read_text()
    finally:
        stop(proc)
