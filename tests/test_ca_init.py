"""`eport ca init` under M-of-N custody, then `eport serve` without --dev: the server
starts sealed, answers status, refuses issuance with a 503 problem, and is unsealed
by M custodians (`eport ca unseal`) in every worker process."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as xocsp

from tests.conftest import EPORT, Server, base_env, free_port, start_server, stop

MEMBERS = ("customs", "commerce", "tax", "forex", "inspection")


def custodian_env() -> dict[str, str]:
    env = base_env()
    env.update(
        EPORT_OFFICER_PASSPHRASE="officer passphrase",
        EPORT_AUTH_KEY_PASSPHRASE="token signing keys passphrase",
    )
    for m in MEMBERS:
        env[f"EPORT_CUSTODIAN_PASSPHRASE_{m.upper()}"] = f"share passphrase of {m}"
    return env


def _port_file(data: Path) -> Path:
    """Where :func:`init_ca` notes the port its CA's URLs name, beside the data directory."""
    return data.parent / f"{data.name}.port"


def init_ca(tmp_path: Path) -> tuple[Path, Path, dict[str, object]]:
    """``eport ca init`` of a CA whose certificates name their CRL and OCSP URLs on a port
    chosen now, which :func:`start_sealed` serves on (the default, 127.0.0.1:8000, may be
    another server's: its CRL would then be the one a relying party fetches)."""
    data, out = tmp_path / "data", tmp_path / "ceremony"
    port = free_port()
    res = subprocess.run(
        [EPORT, "ca", "init", "--data-dir", str(data), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        env={**custodian_env(), "EPORT_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    # the log key auditors pin is in the public record, not only on the CA host
    log_pub = (out / "log.pub").read_bytes()
    assert log_pub == (data / "ca" / "log.pub").read_bytes()
    assert record["log_key_sha256"] == hashlib.sha256(log_pub).hexdigest()
    # the repository's policies carry RFC 7229 test OIDs: said, as a production CA's must not
    assert "carry RFC 7229 test policy OIDs" in res.stderr, res.stderr
    # and a loopback base URL printed into the issuing CAs' certificates is said too
    assert f"certificates name http://127.0.0.1:{port} for their CRLs" in res.stderr
    _port_file(data).write_text(str(port))
    return data, out, record


def start_sealed(
    tmp_path: Path, data: Path, workers: int = 2, extra_env: dict[str, str] | None = None
) -> tuple[Server, subprocess.Popen[bytes], str]:
    env = {**custodian_env(), **(extra_env or {})}
    noted = _port_file(data)
    port = int(noted.read_text()) if noted.exists() else None
    if port is not None:
        env["EPORT_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    srv, proc = start_server(data, workers=workers, dev=False, env=env, log_dir=tmp_path, port=port)
    log = srv.log
    found = re.search(r"Unseal key fingerprint: ([0-9a-f:]+)", log.read_text())
    assert found, log.read_text()
    return srv, proc, found.group(1)


def present_share(
    srv: Server,
    command: Sequence[str],
    out: Path,
    member: str,
    fp: str,
    check: bool = True,
    passphrase: str = "share passphrase of {}",
) -> subprocess.CompletedProcess[str]:
    """``member``'s custodian runs ``eport COMMAND`` with its share file in ``out``/shares
    (``passphrase``: a format string of the member's id), checking the ceremony key's
    fingerprint ``fp``."""
    return srv.eport(
        *command,
        "--share",
        str(out / "shares" / f"{member}.share"),
        "--fingerprint",
        fp,
        "--json",
        check=check,
        EPORT_SHARE_PASSPHRASE=passphrase.format(member),
    )


def unseal(
    srv: Server,
    out: Path,
    member: str,
    fp: str,
    check: bool = True,
    passphrase: str = "share passphrase of {}",
) -> subprocess.CompletedProcess[str]:
    """``member`` sends its share to the server's unseal ceremony of fingerprint ``fp``."""
    return present_share(srv, ("ca", "unseal"), out, member, fp, check, passphrase)


@pytest.mark.slow
def test_init_then_serve_sealed_then_unseal(tmp_path: Path) -> None:
    data, out, record = init_ca(tmp_path)
    assert set(record["officers"]) == set(MEMBERS)  # type: ignore[arg-type]
    assert record["threshold"] == 3
    assert set(record["shares"]) == set(MEMBERS)  # type: ignore[arg-type]
    custody = json.loads((out / "custody.json").read_text())
    assert custody == json.loads((data / "ca" / "custody.json").read_text())
    assert custody["threshold"] == 3 and len(custody["custodians"]) == 5
    # No key is stored in the clear: CA keys are wrapped by the custody KEKs, officer keys
    # are encrypted PKCS#8, share files are encrypted to their custodian's passphrase.
    for path in (data / "ca").rglob("*.key"):
        assert path.read_bytes().startswith(b"-----BEGIN EPORT WRAPPED PRIVATE KEY-----"), path
        assert path.stat().st_mode & 0o077 == 0
    for path in out.rglob("*.key"):
        assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"), path
    for m in MEMBERS:
        share = json.loads((out / "shares" / f"{m}.share").read_text())
        assert share["member"] == m and "ciphertext" in share
    for path in [*data.rglob("*"), *out.rglob("*")]:
        if path.is_file():
            blob = path.read_bytes()
            assert b"share passphrase of" not in blob and b"officer passphrase" not in blob
    # A second init refuses.
    again = subprocess.run(
        [EPORT, "ca", "init", "--data-dir", str(data), "--out", str(tmp_path / "o2")],
        capture_output=True,
        text=True,
        env=custodian_env(),
    )
    assert again.returncode == 1 and "already holds a CA" in again.stderr

    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        url = srv.url
        assert requests.get(url + "/ca/v1/health", timeout=5).json()["sealed"] is True
        # Status is served from what was signed at the ceremony.
        for issuer in ("enterprise", "agency", "service"):
            r = requests.get(f"{url}/crl/{issuer}.crl", timeout=5)
            assert r.status_code == 200 and r.headers["Content-Type"] == "application/pkix-crl"
        assert requests.get(url + "/crl/root.crl", timeout=5).status_code == 200
        # Issuance is refused with a 503 problem while sealed.
        app = json.loads(
            srv.eport(
                "apply", "--uscc", "91350100M000100Y43", "--name", "Prod Co.", "--json"
            ).stdout
        )
        officer = out / "officers" / "tax"
        ident = ["--cert", str(officer / "officer.pem"), "--key", str(officer / "officer.key")]
        grant = json.loads(
            srv.eport(
                "ra", "approve", app["id"], *ident, "--json", EPORT_PASSPHRASE="officer passphrase"
            ).stdout
        )
        enroll_dir = tmp_path / "ent"
        sealed_try = srv.eport(
            "enroll",
            "--code",
            grant["enrollment_code"],
            "--profile",
            "enterprise",
            "--out",
            str(enroll_dir),
            check=False,
        )
        assert sealed_try.returncode == 1 and "sealed" in sealed_try.stderr
        # Sealed is said before anything is signed: no "may have issued" doubt.
        assert "nothing was issued" in sealed_try.stderr, sealed_try.stderr
        assert "may have issued" not in sealed_try.stderr
        doc = requests.post(
            url + "/ca/v1/enroll",
            json={"code": "x" * 20, "profile": "enterprise", "csr": "x"},
            timeout=5,
        )
        # (an unknown code is refused before the key is needed; the sealed refusal above
        # came from the issuing key)
        assert doc.status_code in (400, 403)
        # A status change is recorded while sealed (a lost key is suspended before the
        # custodians have gathered); its responder cannot sign yet: tryLater.
        held = out / "officers" / "commerce"
        held_serial = format(_cert(held / "officer.pem").serial_number, "x")
        # its holder suspends it (a tax officer may not: only commerce's own officers)
        own = ["--cert", str(held / "officer.pem"), "--key", str(held / "officer.key")]
        srv.eport("suspend", "--serial", held_serial, *own, EPORT_PASSPHRASE="officer passphrase")
        for _ in range(4):  # every worker
            answer = _ocsp(url, held)
            assert answer.response_status is xocsp.OCSPResponseStatus.TRY_LATER

        # A wrong fingerprint: the share is not sent.
        wrong = srv.eport(
            "ca",
            "unseal",
            "--share",
            str(out / "shares" / "customs.share"),
            "--fingerprint",
            "0000:" + fp[5:],
            check=False,
            EPORT_SHARE_PASSPHRASE="share passphrase of customs",
        )
        assert wrong.returncode == 1 and "refusing to send" in wrong.stderr
        # A wrong passphrase opens nothing.
        bad = srv.eport(
            "ca",
            "unseal",
            "--share",
            str(out / "shares" / "customs.share"),
            check=False,
            EPORT_SHARE_PASSPHRASE="not the passphrase",
        )
        assert bad.returncode == 1 and "wrong passphrase" in bad.stderr
        # No terminal to confirm the fingerprint, and no --fingerprint: nothing is sent
        # (the first real unseal below is the first share the server sees).
        blind = srv.eport(
            "ca",
            "unseal",
            "--share",
            str(out / "shares" / "customs.share"),
            check=False,
            EPORT_SHARE_PASSPHRASE="share passphrase of customs",
        )
        assert blind.returncode == 1 and "pass it with --fingerprint" in blind.stderr
        assert "the share was not sent" in blind.stderr

        first = json.loads(unseal(srv, out, "customs", fp).stdout)
        assert first["sealed"] is True and first["ceremony"]["progress"] == 1
        repeated = unseal(srv, out, "customs", fp, check=False)
        assert repeated.returncode == 1 and "already joined" in repeated.stderr  # type: ignore[attr-defined]
        second = json.loads(unseal(srv, out, "forex", fp).stdout)
        assert second["sealed"] is True and second["ceremony"]["progress"] == 2
        assert requests.get(url + "/ca/v1/health", timeout=5).json()["sealed"] is True
        third = json.loads(unseal(srv, out, "inspection", fp).stdout)
        assert third["sealed"] is False and third["ceremony"]["joined"] == [
            "customs",
            "forex",
            "inspection",
        ]
        # Every worker process learns of the unseal.
        for _ in range(20):
            assert requests.get(url + "/ca/v1/health", timeout=5).json()["sealed"] is False
        srv.eport(
            "enroll",
            "--code",
            grant["enrollment_code"],
            "--profile",
            "enterprise",
            "--out",
            str(enroll_dir),
        )
        assert (enroll_dir / "cert.pem").exists()
        # Unsealed, the responder answers for the hold, and for its lifting.
        assert _ocsp(url, held).certificate_status is xocsp.OCSPCertStatus.REVOKED
        lift = srv.eport(
            "resume",
            "--serial",
            held_serial,
            *ident,
            check=False,
            EPORT_PASSPHRASE="officer passphrase",
        )
        assert lift.returncode == 1 and "agency 'commerce'" in lift.stderr, lift
        assert _ocsp(url, held).certificate_status is xocsp.OCSPCertStatus.REVOKED
        # The unseal is in the log, with the custodians' identities.
        events = srv.eport(
            "audit",
            "log",
            "--format",
            "json",
            *ident,
            EPORT_PASSPHRASE="officer passphrase",
        )
        log = json.loads(events.stdout)
        done = [e for e in log if e["type"] == "ceremony.completed"]
        assert len(done) == 1 and done[0]["details"]["operation"] == "UNSEAL"
        assert [c["member"] for c in done[0]["details"]["custodians"]] == [
            "customs",
            "forex",
            "inspection",
        ]
        (established,) = [e for e in log if e["type"] == "custody.established"]
        assert established["details"]["sequence"] == 1  # the first custody record's order
        # A ceremony left open when the server stops (one custodian joined).
        from tests.test_custody_ceremonies import join, start

        left_open = str(start(srv, out, "ROOT-CRL")["id"])
        join(srv, out, left_open, "customs")
    finally:
        stop(proc)

    # A wrong token-service passphrase: one line, before any unseal fingerprint, no server.
    wrong = subprocess.run(
        [EPORT, "serve", "--data-dir", str(data), "--port", "1"],
        capture_output=True,
        text=True,
        env={**custodian_env(), "EPORT_AUTH_KEY_PASSPHRASE": "not the passphrase at all"},
        timeout=60,
    )
    assert wrong.returncode == 1, wrong
    said = wrong.stderr.strip()
    assert said.startswith(
        "eport: error: EPORT_AUTH_KEY_PASSPHRASE does not open the token service's active "
    ) and said.endswith("every host of the database uses the same one)"), said
    assert len(said.splitlines()) == 1, said
    assert "Unseal key fingerprint" not in wrong.stdout
    # A restarted server is sealed again, with a new unseal key.
    srv2, proc2, fp2 = start_sealed(tmp_path, data, workers=1)
    try:
        assert fp2 != fp
        assert requests.get(srv2.url + "/ca/v1/health", timeout=5).json()["sealed"] is True
        stale = unseal(srv2, out, "tax", fp, check=False)  # the old fingerprint
        assert stale.returncode == 1  # type: ignore[attr-defined]
        # The ceremony left open died with the old instance (its key is gone): said so,
        # and a custodian's share is not sent to it.
        shown = srv2.eport("ca", "ceremony", "status", left_open).stdout
        assert "opened by another server instance (this one restarted since" in shown, shown
        late = srv2.eport(
            "ca",
            "ceremony",
            "join",
            left_open,
            "--share",
            str(out / "shares" / "tax.share"),
            check=False,
            EPORT_SHARE_PASSPHRASE="share passphrase of tax",
        )
        assert late.returncode == 1 and "cannot complete here" in late.stderr
        assert "the share was not sent" in late.stderr
    finally:
        stop(proc2)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ocsp(url: str, officer: Path) -> xocsp.OCSPResponse:
    """The server's OCSP answer for an officer's certificate (issuer: its chain's first)."""
    cert = _cert(officer / "officer.pem")
    issuer = x509.load_pem_x509_certificates((officer / "chain.pem").read_bytes())[0]
    req = xocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    r = requests.post(
        url + "/ocsp",
        data=req.public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return xocsp.load_der_ocsp_response(r.content)


def test_one_database_holds_one_ca(tmp_path: Path) -> None:
    """A second CA pointed at the database of a first (EPORT_DATABASE_URL) would weave
    its root, issuers and events into the first one's log, and an auditor's check would
    not tell them apart: ca init and the development CA's first start refuse it."""
    from ca.config import CAConfig
    from ca.devinit import ensure_dev_ca
    from ca.errors import EPortError

    first = tmp_path / "first"
    ensure_dev_ca(CAConfig(data_dir=first, dev=True))
    shared = f"sqlite:///{(first / 'eport.db').resolve()}"
    with sqlite3.connect(first / "eport.db") as conn:
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
    with pytest.raises(EPortError, match="already holds another CA's records"):
        ensure_dev_ca(CAConfig(data_dir=tmp_path / "second", dev=True, database_url=shared))
    res = subprocess.run(
        [EPORT, "ca", "init", "--data-dir", str(tmp_path / "third"), "--out", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        env={**custodian_env(), "EPORT_DATABASE_URL": shared},
        timeout=120,
    )
    assert res.returncode == 1 and "already holds another CA's records" in res.stderr
    assert not (tmp_path / "third" / "ca").exists()
    # An existing CA served over another CA's database: refused before serving.
    own = tmp_path / "own"
    ensure_dev_ca(CAConfig(data_dir=own, dev=True))
    res = subprocess.run(
        [EPORT, "serve", "--dev", "--data-dir", str(own), "--port", "1"],
        capture_output=True,
        text=True,
        env={**custodian_env(), "EPORT_DATABASE_URL": shared},
        timeout=60,
    )
    assert res.returncode == 1 and "holds the records of another CA" in res.stderr, res.stderr
    with sqlite3.connect(first / "eport.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (events,)


def test_a_ca_made_in_its_own_database_is_not_served_from_an_empty_one(tmp_path: Path) -> None:
    """A CA made without EPORT_DATABASE_URL keeps its first records (root, issuing CAs,
    officers, their events) in the data directory's eport.db. Served with
    EPORT_DATABASE_URL set to another, empty database (the several-hosts set-up with the
    settings given to serve but not to init), it started without a word and its log
    lacked them. Refused in one line, before the empty database is touched."""
    from ca.config import CAConfig
    from ca.devinit import ensure_dev_ca

    own = tmp_path / "own"
    ensure_dev_ca(CAConfig(data_dir=own, dev=True))
    empty = tmp_path / "shared.db"
    res = subprocess.run(
        [EPORT, "serve", "--dev", "--data-dir", str(own), "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={**custodian_env(), "EPORT_DATABASE_URL": f"sqlite:///{empty}"},
        timeout=60,
    )
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1 and "was made with its records in" in res.stderr
    assert "eport ca init" in res.stderr and "Serving" not in res.stdout
    assert not empty.exists()


def test_a_sealed_ca_refused_at_start_prints_no_unseal_fingerprint(tmp_path: Path) -> None:
    """`eport serve` of a CA under custody whose start is refused (here: the database
    holds another CA's records; a host whose CA files are behind the database's record is
    refused at the same place) says so in one line and announces no unseal fingerprint:
    before, it printed "The CA starts SEALED" and a fingerprint, for a server that never
    started, which custodians could be read out to unseal."""
    from ca.config import CAConfig
    from ca.devinit import ensure_dev_ca

    other = tmp_path / "other"
    ensure_dev_ca(CAConfig(data_dir=other, dev=True))
    shared = f"sqlite:///{(other / 'eport.db').resolve()}"
    data, out = tmp_path / "data", tmp_path / "ceremony"
    made = subprocess.run(
        [EPORT, "ca", "init", "--data-dir", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        env=custodian_env(),
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    res = subprocess.run(
        [EPORT, "serve", "--data-dir", str(data), "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={**custodian_env(), "EPORT_DATABASE_URL": shared},
        timeout=60,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "holds the records of another CA" in res.stderr, res.stderr
    assert "Unseal key fingerprint" not in res.stdout + res.stderr
    assert "starts SEALED" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_database_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    """libpq's postgresql:// form works (with the driver installed), and a database that
    refuses, or a URL scheme nobody knows, is one line naming the setting, never the
    password; nothing is created in the data directory's database."""
    from ca.config import with_driver

    assert with_driver("postgresql://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert with_driver("postgres://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert with_driver("postgresql+psycopg2://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert with_driver("sqlite:///x.db") == "sqlite:///x.db"
    for i, (url, expect) in enumerate(
        (
            ("postgresql://eport:s3cret-pw@127.0.0.1:1/eport", "cannot use the database"),
            ("postgressql://eport:s3cret-pw@127.0.0.1/eport", "is not one this eport can use"),
            # a scheme SQLAlchemy knows, whose driver is not installed (was: unexpected error)
            ("mysql://eport:s3cret-pw@127.0.0.1/eport", "is not one this eport can use"),
            # a port that is no number (was: unexpected error, ValueError)
            ("postgresql://eport:s3cret-pw@127.0.0.1:notaport/eport", "cannot be read"),
        )
    ):
        data = tmp_path / f"d{i}"
        res = subprocess.run(
            [EPORT, "serve", "--dev", "--data-dir", str(data), "--port", "1"],
            capture_output=True,
            text=True,
            env={**custodian_env(), "EPORT_DATABASE_URL": url},
            timeout=60,
        )
        lines = [line for line in res.stderr.splitlines() if not line.startswith("WARNING")]
        assert res.returncode == 1 and len(lines) == 1, res.stderr
        assert lines[0].startswith("eport: error: ") and expect in lines[0]
        assert "EPORT_DATABASE_URL" in lines[0] and "s3cret-pw" not in res.stderr + res.stdout
        if expect != "cannot use the database":  # refused with the settings: nothing made
            assert not data.exists()


def test_a_quorum_of_one_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    """members.toml with threshold 1 made a "1-of-5 custody" without a word: any one
    custodian alone would unseal the CA and sign as the root."""
    import shutil

    policies = tmp_path / "policies"
    shutil.copytree(Path(__file__).resolve().parent.parent / "policies", policies)
    members = policies / "members.toml"
    members.write_text(re.sub(r"(?m)^threshold = \d+$", "threshold = 1", members.read_text()))
    data, out = tmp_path / "data", tmp_path / "ceremony"
    done = subprocess.run(
        [EPORT, "ca", "init", "--data-dir", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**custodian_env(), "EPORT_POLICIES_DIR": str(policies)},
        timeout=120,
    )
    assert done.returncode == 1, done
    assert done.stderr == (
        f"eport: error: {members}: threshold: 1 is no joint custody (one custodian alone "
        "would unseal the CA and sign as the root); set it to 2 or more\n"
    )
    assert not (data / "ca").exists() and not out.exists()


def test_a_short_token_key_passphrase_makes_no_keys(tmp_path: Path) -> None:
    """EPORT_AUTH_KEY_PASSPHRASE=a was taken to encrypt the token service's new signing
    keys, which live in its database and in every backup of it."""
    data, _, _ = init_ca(tmp_path)
    res = subprocess.run(
        [EPORT, "serve", "--data-dir", str(data), "--port", "1"],
        capture_output=True,
        text=True,
        env={**custodian_env(), "EPORT_AUTH_KEY_PASSPHRASE": "eleven char"},
        timeout=60,
    )
    assert res.returncode == 1, res
    assert res.stderr.strip() == (
        "eport: error: EPORT_AUTH_KEY_PASSPHRASE must have at least 12 characters: it "
        "encrypts the token service's signing keys, kept in its database and its backups"
    ), res.stderr
