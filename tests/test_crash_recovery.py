"""Faults an operator meets on a real ``eport serve --dev``: a full disk, a killed server.

Each drives the server over HTTP and the ``eport`` CLI as users do, then checks the
database directly: every certificate answered 201 is stored with its event and log entry,
no code is redeemed without its certificate, and ``eport audit verify --full`` passes.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as xocsp
from sqlalchemy import create_engine

from ca.authority import hash_code
from ca.keys import KeyType
from ca.signedreq import SCHEME, sign_request
from cli import keyfiles
from cli.client import Identity
from tests import test_audit_cli as audit_cli
from tests.conftest import Server, kill_hard, start_server, stop
from tests.helpers import creds, enroll_enterprise, fresh_uscc, serial_of


def approved_codes(server: Server, n: int) -> list[str]:
    """``n`` enterprise applications approved by the development customs officer."""
    return audit_cli.approved_codes(server, n, name="Fault Co")


def enroll_body(code: str) -> dict[str, str]:
    return {
        "code": code,
        "profile": "enterprise",
        "csr": keyfiles.csr_for(KeyType.P256.generate()).decode(),
    }


def consistency(server: Server) -> dict[str, Any]:
    """What the CA database holds, and every way it could disagree with itself."""
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            q = conn.exec_driver_sql
            certs = dict(q("SELECT serial, application_id FROM certificates").all())
            events = dict(
                q(
                    "SELECT serial, id FROM events WHERE serial IS NOT NULL"
                    " AND type IN ('certificate.issued', 'certificate.renewed', 'ca.initialized')"
                ).all()
            )
            logged = set(q("SELECT event_id FROM log_entries").scalars())
            n_events = q("SELECT count(*) FROM events").scalar_one()
            head = q("SELECT size FROM log_head").scalar_one()
            codes = q("SELECT application_id, used_at FROM enrollment_codes").all()
    finally:
        engine.dispose()
    enrolled = set(certs.values())
    return {
        "serials": set(certs),
        "without_event": sorted(set(certs) - set(events)),
        "event_without_cert": sorted(set(events) - set(certs)),
        "unlogged_events": n_events - len(logged),
        "head_vs_entries": head - len(logged),
        "redeemed_without_cert": sorted(a for a, used in codes if used and a not in enrolled),
        "cert_with_unused_code": sorted(a for a, used in codes if not used and a in enrolled),
    }


def assert_consistent(server: Server) -> set[str]:
    found = consistency(server)
    serials = found.pop("serials")
    assert found == {
        "without_event": [],
        "event_without_cert": [],
        "unlogged_events": 0,
        "head_vs_entries": 0,
        "redeemed_without_cert": [],
        "cert_with_unused_code": [],
    }
    return serials


def audit_verify_full(server: Server, state: Path) -> None:
    server.eport("audit", "verify", "--full", "--state", str(state), *server.auditor())


# -- a full disk ----------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs (a disk that fills) needs root and mount(8)")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until its file system has no space left."""
    chunk = b"\0" * 65536
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        with contextlib.suppress(OSError):
            fh.close()


def test_a_full_disk_is_answered_507_stores_nothing_and_recovers(tmp_path: Path) -> None:
    """The data directory's file system fills while enterprises apply and enroll: each
    write is refused 507 ``storage-full`` in problem+json (no traceback, no SQL), the CLI
    says so in one line, the server logs one line per refusal, and nothing half-written
    is left. Once space is freed the very code refused enrolls, the server issues again,
    and ``eport audit verify --full`` passes."""
    with small_tmpfs(tmp_path / "small", "12m") as small:
        server, proc = start_server(small / "data", log_dir=tmp_path)
        try:
            codes = approved_codes(server, 3)
            # A certificate revoked before the disk fills: the CRL is to be signed anew.
            revoked = enroll_enterprise(server, tmp_path, "Revoked Before Co.", uscc=fresh_uscc())
            crl_url = server.url + "/crl/enterprise.crl"
            last_crl = requests.get(crl_url, timeout=30).content
            server.eport(
                "revoke", "--serial", serial_of(revoked), "--reason", "superseded",
                *server.officer(),
            )  # fmt: skip
            recent = requests.post(
                server.url + "/ca/v1/enroll", json=enroll_body(codes[2]), timeout=30
            )
            assert recent.status_code == 201, recent.text
            fill(small / "filler")
            # Writes go on into the space SQLite's files already hold, then fail.
            refused = None
            for i in range(2000):
                resp = requests.post(
                    server.url + "/ca/v1/applications",
                    json={
                        "subject_class": "enterprise",
                        "uscc": fresh_uscc(),
                        "legal_name": f"F {i}",
                    },
                    timeout=30,
                )
                if resp.status_code != 201:
                    refused = resp
                    break
            assert refused is not None, "the disk never filled"
            assert refused.status_code == 507, refused.text
            assert refused.headers["Content-Type"] == "application/problem+json"
            doc = refused.json()
            assert doc["type"] == "urn:eport:problem:storage-full"
            assert doc["status"] == 507 and "storage is full" in doc["detail"]
            for leak in ("Traceback", "sqlite", "SQL", "OperationalError"):
                assert leak not in refused.text

            answer = requests.post(
                server.url + "/ca/v1/enroll", json=enroll_body(codes[0]), timeout=30
            )
            assert answer.status_code == 507, answer.text
            assert answer.json()["type"] == "urn:eport:problem:storage-full"
            out = tmp_path / "ent"
            cli = server.eport(
                "enroll",
                "--code",
                codes[1],
                "--profile",
                "enterprise",
                "--out",
                str(out),
                check=False,
            )
            assert cli.returncode == 1, cli.stdout + cli.stderr
            lines = cli.stderr.strip().splitlines()
            assert len(lines) == 1 and "storage is full" in lines[0] and "HTTP 507" in lines[0]
            assert "nothing was issued" in lines[0] and "may have issued" not in lines[0]
            # Relying parties: the last CRL signed (valid until its nextUpdate), not a 507
            # problem a CRL client cannot read; OCSP signs the answer it cannot store (it
            # answered tryLater: emergency-plan probe, session 27), never an HTTP problem.
            crl = requests.get(crl_url, timeout=30)
            assert crl.status_code == 200 and crl.content == last_crl, crl.text[:200]
            issuer = x509.load_pem_x509_certificates((revoked / "chain.pem").read_bytes())[0]
            recent_cert = x509.load_pem_x509_certificate(recent.json()["certificate"].encode())
            revoked_cert = x509.load_pem_x509_certificate((revoked / "cert.pem").read_bytes())
            for cert, want in (
                (recent_cert, xocsp.OCSPCertStatus.GOOD),  # no answer stored yet: signed
                (revoked_cert, xocsp.OCSPCertStatus.REVOKED),  # signed at revocation
            ):
                req = xocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
                answer = requests.post(
                    server.url + "/ocsp",
                    data=req.build().public_bytes(serialization.Encoding.DER),
                    headers={"Content-Type": "application/ocsp-request"},
                    timeout=30,
                )
                assert answer.status_code == 200, answer.text[:300]
                parsed = xocsp.load_der_ocsp_response(answer.content)
                assert parsed.response_status is xocsp.OCSPResponseStatus.SUCCESSFUL
                assert parsed.certificate_status is want
            assert_consistent(server)

            (small / "filler").unlink()
            # The codes refused were not spent: they enroll now, through the CLI.
            for code in codes[:2]:
                server.eport(
                    "enroll", "--code", code, "--profile", "enterprise", "--out", str(out / code)
                )
            serials = assert_consistent(server)
            audit_verify_full(server, tmp_path / "audit.json")
        finally:
            stop(proc)
    log = server.log.read_text()
    assert "storage full on POST /ca/v1/applications" in log
    assert "storage full on POST /ca/v1/enroll" in log
    assert log.count("answers are signed, not stored") == 1  # once a minute at most
    assert "Traceback" not in log
    assert len(serials) >= 2


def test_a_background_task_on_a_full_disk_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """The CRL refresher, responder renewal and the token service's sweeps log a failure
    by ``log_retry``: a full disk was a traceback every 30 s while it lasted (crash probe,
    session 26), where the emergency plan (§5) says one line; anything unforeseen keeps
    its traceback."""
    import errno
    import logging

    from ca.problems import log_retry

    logger = logging.getLogger("eport.test.retry")
    for exc, words, traced in (
        (OSError(errno.ENOSPC, "No space left on device"), "the storage is full", False),
        (RuntimeError("a bug"), "", True),
    ):
        caplog.clear()
        try:
            try:
                raise exc
            except Exception as inner:
                raise ValueError("wrapped") from inner
        except ValueError:
            with caplog.at_level(logging.ERROR, logger=logger.name):
                log_retry("CRL refresh failed; will retry", logger)
        (record,) = caplog.records
        assert record.getMessage().startswith("CRL refresh failed; will retry")
        assert words in record.getMessage()
        assert (record.exc_info is not None) is traced


# -- a lost answer ----------------------------------------------------------------------------


def _read_message(sock: socket.socket, buf: bytearray) -> bytes | None:
    """One HTTP/1.1 message with a Content-Length body from ``sock`` (``buf`` holds what
    was read beyond the last one); None when the peer closed first."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    end = len(head) + 4 + length
    while len(buf) < end:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    message = bytes(buf[:end])
    del buf[:end]
    return message


BAD_GATEWAY = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 27\r\n"
    b"Connection: close\r\n\r\nupstream connection reset\r\n"
)
"""What a gateway says when its upstream's answer was lost (a reset after the work)."""


@contextlib.contextmanager
def answer_dropping_proxy(
    upstream: str, drop: bytes, instead: bytes | None = None
) -> Iterator[str]:
    """A proxy to ``upstream`` that sends every request on, and drops the connection
    instead of returning the answer to a request whose first line starts with ``drop``
    (or sends ``instead``, e.g. :data:`BAD_GATEWAY`): the server did the work, the
    client never hears of it."""
    host, port = upstream.removeprefix("http://").split(":")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve(client: socket.socket) -> None:
        with client, socket.create_connection((host, int(port))) as server:
            from_client, from_server = bytearray(), bytearray()
            while (request := _read_message(client, from_client)) is not None:
                server.sendall(request)
                answer = _read_message(server, from_server)
                if answer is None or request.startswith(drop):
                    if answer is not None and instead is not None:
                        client.sendall(instead)
                    return
                client.sendall(answer)

    def accept() -> None:
        while not done.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        listener.close()


def enrollment_with_its_answer_lost(server: Server, tmp: Path) -> tuple[str, Path, list[str]]:
    """``eport enroll`` whose answer the proxy drops after the CA committed: one line
    saying the key is kept, OUT/key.pem and no cert.pem. The code, OUT and the command."""
    (code,) = approved_codes(server, 1)
    out = tmp / "ent"
    args = ["enroll", "--code", code, "--profile", "enterprise", "--out", str(out)]
    with answer_dropping_proxy(server.url, b"POST /ca/v1/enroll ") as proxy:
        lost = server.eport("--server", proxy, *args, check=False)
    assert lost.returncode == 1, lost.stdout + lost.stderr
    lines = lost.stderr.strip().splitlines()
    assert len(lines) == 1 and f"kept in {out / 'key.pem'}" in lines[0], lost.stderr
    assert (out / "key.pem").is_file() and not (out / "cert.pem").exists()
    return code, out, args


def rerun_with_the_kept_key(
    server: Server, args: list[str], out: Path
) -> tuple[x509.Certificate, Any]:
    """The same command again: it uses OUT/key.pem and saves a certificate of that key."""
    again = server.eport(*args)
    assert "Using the key kept in" in again.stderr
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), b"test-passphrase-123")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    return cert, key


def test_an_enrollment_whose_answer_is_lost_is_got_by_running_it_again(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """The CA issues, then the answer never reaches ``eport enroll`` (the server killed
    after its commit, a dropped connection): the code is spent and the certificate
    stored. The CLI keeps the new key (it wrote it before sending the CSR) and says so in
    one line; the same command again gets that very certificate (200, nothing new
    issued or logged). Another key with the spent code is still refused."""
    server = sqlite_server
    code, out, args = enrollment_with_its_answer_lost(server, tmp_path)

    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            used, app_id = conn.exec_driver_sql(
                "SELECT used_at, application_id FROM enrollment_codes WHERE code_hash = ?",
                (hash_code(code),),
            ).one()
            assert used is not None  # the CA did issue: the answer alone was lost
            before = conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
    finally:
        engine.dispose()

    cert, key = rerun_with_the_kept_key(server, args, out)
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            serials = (
                conn.exec_driver_sql(
                    "SELECT serial FROM certificates WHERE application_id = ?", (app_id,)
                )
                .scalars()
                .all()
            )
            after = conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
    finally:
        engine.dispose()
    assert serials == [format(cert.serial_number, "x")]  # one certificate, the one sent again
    assert after == before
    replay = requests.post(
        server.url + "/ca/v1/enroll",
        json={"code": code, "profile": "enterprise", "csr": keyfiles.csr_for(key).decode()},
        timeout=30,
    )
    assert replay.status_code == 200 and replay.json()["serial"] == serials[0]
    other = requests.post(server.url + "/ca/v1/enroll", json=enroll_body(code), timeout=30)
    assert other.status_code == 403 and "already used" in other.json()["detail"]
    assert_consistent(server)


@pytest.mark.parametrize("torn", [b"", b"-----BEGIN CERTIFICATE-----\nMIIC"], ids=["empty", "cut"])
def test_a_cert_pem_torn_by_a_killed_run_is_an_answer_not_received(
    sqlite_server: Server, tmp_path: Path, torn: bytes
) -> None:
    """A run killed (or a power cut) while writing cert.pem after the issuance left it
    empty or cut short beside the kept key: the same command again said "cert.pem exists;
    choose another --out directory", and another --out found the code spent. Now such a
    file is an answer not received: the rerun fetches the certificate and writes it whole."""
    server = sqlite_server
    _, out, args = enrollment_with_its_answer_lost(server, tmp_path)
    (out / "cert.pem").write_bytes(torn)
    cert, _ = rerun_with_the_kept_key(server, args, out)
    chain = x509.load_pem_x509_certificates((out / "chain.pem").read_bytes())
    assert cert.issuer == chain[0].subject
    # A whole certificate there is an answer received: nothing is sent or overwritten.
    again = server.eport(*args, check=False)
    assert again.returncode == 1 and "exists; choose another --out" in again.stderr, again.stderr
    assert x509.load_pem_x509_certificate((out / "cert.pem").read_bytes()) == cert


@pytest.mark.parametrize(
    ("change", "says"),
    [(("revoke", "--reason", "keyCompromise"), "has been revoked"), (("suspend",), "on hold")],
    ids=["revoked", "held"],
)
def test_a_lost_enrollment_answer_is_not_sent_again_once_revoked_or_held(
    sqlite_server: Server, tmp_path: Path, change: tuple[str, ...], says: str
) -> None:
    """The answer is lost, then the certificate is revoked (or put on hold) before the
    rerun: the CA does not send it again as if it were good (no 200, no cert.pem, no
    'Issued'); the CLI says so in one line and keeps the key."""
    server = sqlite_server
    code, out, args = enrollment_with_its_answer_lost(server, tmp_path)
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            (serial,) = conn.exec_driver_sql(
                "SELECT c.serial FROM certificates c JOIN enrollment_codes e"
                " ON e.application_id = c.application_id WHERE e.code_hash = ?",
                (hash_code(code),),
            ).one()
    finally:
        engine.dispose()
    server.eport(change[0], "--serial", serial, *change[1:], *server.officer())

    again = server.eport(*args, check=False)
    assert again.returncode == 1 and again.stdout == "", again.stdout + again.stderr
    last = again.stderr.strip().splitlines()[-1]
    assert f"certificate {serial} issued for this key" in last and says in last, again.stderr
    assert "(HTTP 409)" in last, last
    assert (out / "key.pem").is_file() and not (out / "cert.pem").exists()
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), b"test-passphrase-123")
    replay = requests.post(
        server.url + "/ca/v1/enroll",
        json={"code": code, "profile": "enterprise", "csr": keyfiles.csr_for(key).decode()},
        timeout=30,
    )
    assert replay.status_code == 409 and says in replay.json()["detail"], replay.text
    assert replay.headers["Content-Type"].startswith("application/problem+json")
    if change[0] == "suspend":  # a hold is lifted: then the certificate is sent again
        server.eport("resume", "--serial", serial, *server.officer())
        cert, _ = rerun_with_the_kept_key(server, args, out)
        assert format(cert.serial_number, "x") == serial
    assert_consistent(server)


NAMES = ("cert.pem", "key.pem")


def signed_post(server: Server, path: str, body: dict[str, Any], ident: Identity) -> Any:
    """``POST path`` signed with ``ident``, as the CLI signs it: the raw answer."""
    data = json.dumps(body).encode()
    token = sign_request(
        ident.key, ident.chain, "POST", path, data, datetime.datetime.now(datetime.UTC)
    )
    headers = {"Content-Type": "application/json", "Authorization": f"{SCHEME} {token}"}
    return requests.post(server.url + path, data=data, headers=headers, timeout=30)


@pytest.mark.parametrize("instead", [None, BAD_GATEWAY], ids=["dropped", "502"])
def test_a_renewal_whose_answer_is_lost_is_got_by_running_it_again(
    sqlite_server: Server, tmp_path: Path, instead: bytes | None
) -> None:
    """The CA renews, then the answer never reaches ``eport renew`` (a dropped
    connection, or a gateway's 502): the new certificate is stored. The CLI keeps the new
    key (written before the request) and says so in one line; the same command again
    signs a new request (a new jti) and gets that very certificate (200, nothing new
    issued or logged). The key is refused to any other signer, even another renewal of
    the same certificate."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Lost Renewal Co.")
    pw = tmp_path / "passphrase"
    pw.write_text("test-passphrase-123\n")
    old = keyfiles.load_identity(ent / "cert.pem", ent / "key.pem", pw)
    old_serial = format(old.chain[0].serial_number, "x")
    out = tmp_path / "renewed"
    args = ["renew", "--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    args += ["--out", str(out)]
    with answer_dropping_proxy(server.url, b"POST /ca/v1/renew ", instead) as proxy:
        lost = server.eport("--server", proxy, *args, check=False)
    assert lost.returncode == 1, lost.stdout + lost.stderr
    lines = lost.stderr.strip().splitlines()
    assert len(lines) == 1 and f"kept in {out / 'key.pem'}" in lines[0], lost.stderr
    assert "run the same command again" in lines[0]
    assert ("HTTP 502" in lines[0]) == (instead is not None), lines[0]
    assert (out / "key.pem").is_file() and not (out / "cert.pem").exists()

    def renewals() -> tuple[list[tuple[str, str]], int]:
        engine = create_engine(server.database_url)
        try:
            with engine.connect() as conn:
                q = conn.exec_driver_sql
                found = q(
                    "SELECT serial, details FROM events WHERE type = 'certificate.renewed'"
                ).all()
                count = q("SELECT count(*) FROM events").scalar_one()
        finally:
            engine.dispose()
        return [(s, json.loads(d)["previous_serial"]) for s, d in found], count

    found, before = renewals()
    (new_serial,) = [s for s, prev in found if prev == old_serial]  # the CA did renew

    cert, key = rerun_with_the_kept_key(server, args, out)
    assert format(cert.serial_number, "x") == new_serial
    assert renewals() == (found, before)  # nothing new issued or logged

    csr = {"csr": keyfiles.csr_for(key).decode()}
    replay = signed_post(server, "/ca/v1/renew", csr, old)
    assert replay.status_code == 200 and replay.json()["serial"] == new_serial, replay.text
    # A second renewal of the same certificate (its first revoked: an enterprise holds
    # one legal-person credential, so a certificate renewed once renews again only then):
    # same subject, another signer.
    server.eport("revoke", "--serial", new_serial, "--reason", "superseded", *server.officer())
    server.eport(*args[:-1], str(tmp_path / "sibling"))
    sibling = keyfiles.load_identity(*(tmp_path / "sibling" / n for n in NAMES), pw)
    elsewhere = enroll_enterprise(server, tmp_path, "Other Renewal Co.")
    other = keyfiles.load_identity(*(elsewhere / n for n in NAMES), pw)
    for signer, says in ((sibling, "already certified"), (other, "another subject")):
        refused = signed_post(server, "/ca/v1/renew", csr, signer)
        assert refused.status_code == 409 and says in refused.json()["detail"], refused.text
    assert [r for r in renewals()[0] if r[0] == new_serial] == [(new_serial, old_serial)]
    assert_consistent(server)


def test_a_lost_renewal_answer_is_not_sent_again_once_revoked(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """The renewal's answer is lost, then its new certificate is revoked: the rerun of
    ``eport renew`` is refused in one line (409), not answered with the revoked
    certificate as a renewal; the new key stays."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Revoked Renewal Co.")
    out = tmp_path / "renewed"
    args = ["renew", "--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    args += ["--out", str(out)]
    with answer_dropping_proxy(server.url, b"POST /ca/v1/renew ") as proxy:
        lost = server.eport("--server", proxy, *args, check=False)
    assert lost.returncode == 1 and not (out / "cert.pem").exists(), lost.stderr
    old_serial = serial_of(ent)
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            found = conn.exec_driver_sql(
                "SELECT serial, details FROM events WHERE type = 'certificate.renewed'"
            ).all()
    finally:
        engine.dispose()
    # the server is the module's: other tests renew too
    (serial,) = [s for s, d in found if json.loads(d)["previous_serial"] == old_serial]
    server.eport("revoke", "--serial", serial, "--reason", "superseded", *server.officer())

    again = server.eport(*args, check=False)
    assert again.returncode == 1 and again.stdout == "", again.stdout + again.stderr
    last = again.stderr.strip().splitlines()[-1]
    assert f"certificate {serial} issued for this key has been revoked" in last, last
    assert (out / "key.pem").is_file() and not (out / "cert.pem").exists()
    assert_consistent(server)


def test_a_refused_renewal_leaves_no_new_key(sqlite_server: Server, tmp_path: Path) -> None:
    """A renewal the CA refuses (4xx: the signing certificate is revoked) issued nothing:
    the new key written before the request is deleted, and the directories made for it,
    so the same --out is free again."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Refused Renewal Co.")
    server.eport("revoke", "--serial", serial_of(ent), "--reason", "superseded", *server.officer())
    out = tmp_path / "made" / "renewed"
    args = ["renew", "--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    refused = server.eport(*args, "--out", str(out), check=False)
    assert refused.returncode == 1 and refused.stdout == "", refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "(HTTP 4" in lines[0] and "kept" not in lines[0], lines
    assert not (tmp_path / "made").exists()


# -- kill -9 under load ------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_under_enrollment_load_loses_nothing_and_restarts(tmp_path: Path) -> None:
    """``kill -9`` of the whole server (its process group) while 6 clients enroll: every
    201 is stored with its event and log entry, no code is redeemed without its
    certificate; the server restarts on the same data directory (no stale lock, the WAL
    recovered), ``eport audit verify --full`` passes, each request that got no answer
    sent again gets its certificate (200 if the CA had issued it, else 201), and
    issuance goes on."""
    data = tmp_path / "data"
    server, proc = start_server(data, workers=2)
    try:
        codes = approved_codes(server, 40)
        bodies = {code: enroll_body(code) for code in codes}
        pending = list(codes)
        answers: dict[str, tuple[int, str | None]] = {}
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    code = pending.pop()
                try:
                    resp = requests.post(
                        server.url + "/ca/v1/enroll", json=bodies[code], timeout=30
                    )
                    got = resp.status_code, resp.json().get("serial")
                except requests.RequestException:
                    got = -1, None
                with lock:
                    answers[code] = got

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with lock:
                if sum(1 for s, _ in answers.values() if s == 201) >= 8:
                    break
            time.sleep(0.01)
        kill_hard(proc)
        for t in threads:
            t.join(60)
    finally:
        stop(proc)
    answered = {code: serial for code, (status, serial) in answers.items() if status == 201}
    assert answered and all(s in (201, -1) for s, _ in answers.values()), answers
    assert set(answered.values()) <= assert_consistent(server)

    server, proc = start_server(data, workers=2)
    try:
        audit_verify_full(server, tmp_path / "audit.json")
        unanswered = [code for code, (status, _) in answers.items() if status != 201]
        for code in unanswered + pending:
            resp = requests.post(server.url + "/ca/v1/enroll", json=bodies[code], timeout=30)
            assert resp.status_code in (200, 201), resp.text
        assert len(assert_consistent(server)) >= len(answered) + len(unanswered) + len(pending)
        audit_verify_full(server, tmp_path / "audit.json")
    finally:
        stop(proc)


@pytest.mark.parametrize("database", ["eport.db", "auth.db"])
def test_a_deleted_wal_file_is_a_damaged_database_not_ok(tmp_path: Path, database: str) -> None:
    """The SQLite ``-wal`` file deleted under a running server: SQLite writes on into the
    deleted file, so every 201 since was lost at the next start while health said the
    database was ok (crash probe, finding 1). Health now says ``damaged`` and what to do,
    and the readiness check is 503; the token service's database beside it too."""
    server, proc = start_server(tmp_path / "data", workers=1, log_dir=tmp_path)
    try:
        ent = enroll_enterprise(server, tmp_path, "Before The Deletion Co.")
        cfg = tmp_path / "cfg"
        server.eport("login", *creds(ent), EPORT_CONFIG_DIR=str(cfg))  # the token service writes
        health = requests.get(server.url + "/ca/v1/health?ready", timeout=10)
        assert health.status_code == 200 and health.json()["database"] == "ok", health.text
        wal = server.data_dir / f"{database}-wal"
        assert wal.exists()
        wal.unlink()
        health = requests.get(server.url + "/ca/v1/health?ready", timeout=10)
        doc = health.json()
        assert health.status_code == 503 and doc["database"] == "damaged", doc
        assert doc["status"] == "degraded"
        said = [w for w in doc["warnings"] if "was deleted while the server had it open" in w]
        assert said and "restore the database from a backup" in said[0], doc
        assert str(wal.resolve()) in said[0]
        # Nothing more is written into the deleted file, to be lost with it (emergency-plan
        # probe, session 27: certificates issued after health said "damaged", then never
        # revocable): the writes are refused, each service's where its file went.
        deadline = time.monotonic() + 10  # the schema fence looks every 2 s
        while True:
            if database == "eport.db":
                body = {
                    "subject_class": "enterprise",
                    "uscc": fresh_uscc(),
                    "legal_name": "Late Co.",
                }
                r = requests.post(server.url + "/ca/v1/applications", json=body, timeout=10)
            else:  # a login opens a session
                res = server.eport("login", *creds(ent), EPORT_CONFIG_DIR=str(cfg), check=False)
                r = requests.Response()
                r.status_code, r._content = (503 if res.returncode else 200), res.stderr.encode()
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.status_code == 503, (r.status_code, r.text[:300])
        assert "was deleted while the server had it open: this server writes nothing" in r.text
    finally:
        stop(proc)


def test_a_damaged_database_file_is_one_line_naming_the_restore(tmp_path: Path) -> None:
    """A database file that is no longer one (the probe's: its -wal deleted under load,
    then written on by a new connection) stopped ``eport serve`` with "unexpected error
    ... (rerun with --verbose)"; it is one line that says to restore it."""
    server, proc = start_server(tmp_path / "data", workers=1, log_dir=tmp_path)
    stop(proc)
    db = server.data_dir / "eport.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x01" * 8192)  # the header, then garbage
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    res = server.eport(
        "serve", "--dev", "--data-dir", str(server.data_dir), "--port", "1", check=False
    )
    assert res.returncode == 1, res.stdout + res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("eport: error: the database is damaged ("), res.stderr
    assert "restore the database from a backup (eport restore" in line, line
    assert "unexpected" not in res.stderr and "Traceback" not in res.stderr
