"""The auditor's tools end to end: real server (2 gunicorn workers), real CLI, SQLite and
PostgreSQL.

Concurrent enrollments on both worker processes must give one linear log; ``eport audit``
must verify it, list and export it, prove inclusion; and every kind of tampering with
the stored log (an entry changed, deleted, two reordered, the log truncated, a forked
checkpoint served, an event record changed, a certificate hidden from the log) must make
``eport audit verify`` exit non-zero naming the first entry (or checkpoint) that breaks.
Each tamper test restores what it changed.
"""

from __future__ import annotations

import base64
import concurrent.futures
import csv
import datetime
import hashlib
import http.server
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, create_engine, delete, insert, select, update
from sqlalchemy.orm import Session

from ca import devinit, translog
from ca.checkpoint import Checkpoint, sign_note, verifier_key
from ca.keys import KeyType
from ca.models import (
    CertificateRow,
    CheckpointRow,
    EventRow,
    LogEntryRow,
    LogHeadRow,
    LogNodeRow,
)
from ca.signer import unseal_key
from cli import keyfiles
from cli.client import CAClient
from tests.conftest import Server
from tests.helpers import records_unguarded

ENTERPRISES = 12
_counter = iter(range(10**6))


def fresh_uscc() -> str:
    from ca.uscc import check_character

    body = f"91310000MA{next(_counter) + 5000:04d}{time.monotonic_ns() % 1000:03d}"
    return body + check_character(body)


def asker(server: Server) -> list[str]:
    """The auditor's identity as ``eport audit prove`` takes it (--as-cert)."""
    return ["--as-cert", *server.auditor()[1:]]


def verify(server: Server, state: Path, *extra: str, check: bool = True, **env: str) -> Any:
    return server.eport(
        "audit", "verify", "--state", str(state), *server.auditor(), *extra, check=check, **env
    )


def failed(res: Any, *needles: str) -> str:
    """The one error line of a verification that must have failed."""
    assert res.returncode != 0, res.stdout + res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("eport: error: "), line
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in line, line
    return line


def officer_identity(server: Server) -> Any:
    d = server.dev / "officers" / "customs"
    return keyfiles.load_identity(
        d / "officer.pem", d / "officer.key", d / "DEV-ONLY-passphrase.txt"
    )


def approved_codes(server: Server, n: int, name: str = "Audit Co") -> list[str]:
    """``n`` enterprise applications approved by the development customs officer."""
    officer = officer_identity(server)
    client = CAClient(server.url)
    codes = []
    for i in range(n):
        app = client.call(
            "POST",
            "/ca/v1/applications",
            {"subject_class": "enterprise", "uscc": fresh_uscc(), "legal_name": f"{name} {i}"},
        )
        grant = client.call("POST", f"/ca/v1/ra/applications/{app['id']}/approve", {}, officer)
        codes.append(grant["enrollment_code"])
    return codes


def enroll_concurrently(server: Server, n: int) -> list[dict[str, Any]]:
    """n enterprises applied and approved, then all enrolled at once across both workers."""
    codes = approved_codes(server, n)
    csrs = [keyfiles.csr_for(KeyType.P256.generate()).decode() for _ in codes]

    def enroll(job: tuple[str, str]) -> dict[str, Any]:
        return CAClient(server.url).call(
            "POST", "/ca/v1/enroll", {"code": job[0], "profile": "enterprise", "csr": job[1]}
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(enroll, zip(codes, csrs, strict=True)))


@pytest.fixture(scope="module")
def issued(server: Server) -> list[dict[str, Any]]:
    return enroll_concurrently(server, ENTERPRISES)


@contextmanager
def database(server: Server) -> Iterator[Engine]:
    """The server's database, its records' guards dropped (as a tamperer who may run DDL
    drops them first: migration 0012) while the test changes it."""
    engine = create_engine(server.database_url)
    try:
        with records_unguarded(engine):
            yield engine
    finally:
        engine.dispose()


def test_concurrent_appends_make_one_linear_log(
    server: Server, issued: list[dict[str, Any]]
) -> None:
    with database(server) as engine, Session(engine) as s:
        rows = s.execute(
            select(LogEntryRow.idx, LogEntryRow.event_id).order_by(LogEntryRow.idx)
        ).all()
        events = set(s.scalars(select(EventRow.id)))
        head = s.execute(select(LogHeadRow.size)).scalar_one()
    indices = [r[0] for r in rows]
    assert indices == list(range(len(rows))), "gaps or duplicates in the log"
    assert head == len(rows)
    assert sorted(r[1] for r in rows) == sorted(events), "every event is logged exactly once"
    assert rows[0][1] == 1, "the log starts with the ceremony's first event"
    serials = {i["serial"] for i in issued}
    assert len(serials) == ENTERPRISES


def test_verify_full_then_only_grown(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    first = json.loads(verify(server, state, "--full", "--events", "--json").stdout)
    assert first["ok"] and first["entries"] == first["tree_size"] > ENTERPRISES
    assert first["issuances"] == first["certificates"]
    assert first["log_key_trusted_on_first_use"] is True
    saved = json.loads(state.read_text())
    assert saved["tree_size"] == first["tree_size"]

    enroll_concurrently(server, 2)
    second = json.loads(verify(server, state, "--json").stdout)
    assert second["previous_size"] == first["tree_size"] < second["tree_size"]
    assert second["log_key_trusted_on_first_use"] is False
    # Said in words: that it did not grow (it said "only grown"), or by how much it did.
    same = verify(server, state).stdout
    assert f"of size {second['tree_size']} (the same tree: nothing added" in same, same
    enroll_concurrently(server, 1)
    grown = verify(server, state).stdout
    assert re.search(rf"of size {second['tree_size']} \(grown by [1-9][0-9]*\)", grown), grown

    # The log key from the ceremony's log.pub, pinned explicitly.
    pinned = verify(
        server, tmp_path / "other.json", "--log-key", str(server.data_dir / "ca" / "log.pub")
    )
    assert "OK" in pinned.stdout
    wrong = KeyType.ED25519.generate().public_key()
    wrong_pub = tmp_path / "wrong.pub"
    wrong_pub.write_bytes(
        wrong.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    # The checkpoint's own signer is named, and the rotation that explains it.
    log_key = requests.get(server.url + "/ca/v1/audit/log-key", timeout=10).json()
    signer = str(log_key["verifier_key"]).split("+")
    failed(
        verify(server, tmp_path / "third.json", "--log-key", str(wrong_pub), check=False),
        f"no signature by {signer[0]}+",
        f"; it is signed by {signer[0]}+{signer[1]} only: another key than the one trusted",
        "ROTATE-LOG-KEY: start a new --state with the new key; a checkpoint signed before it "
        "is checked with the key that signed it, --log-key of the old log.pub",
    )
    failed(
        verify(server, tmp_path / "fourth.json", "--log-key", "garbage", check=False),
        "--log-key garbage: neither a verifier key (NAME+HASH+KEY",
    )
    root = server.data_dir / "ca" / "root.crt"  # the wrong PEM file, an easy slip
    failed(
        verify(server, tmp_path / "fifth.json", "--log-key", str(root), check=False),
        f"--log-key {root} holds a certificate, not the log's key: give the log's verifier",
    )


def test_prove_by_serial_and_by_certificate(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    target = issued[3]
    state = tmp_path / "state.json"
    doc = json.loads(
        server.eport(
            "audit",
            "prove",
            target["serial"],
            "--state",
            str(state),
            "--json",
            *asker(server),
        ).stdout
    )
    assert doc["ok"] and doc["entry"]["serial"] == target["serial"]
    assert doc["entry"]["type"] == "certificate.issued"
    cert_file = tmp_path / "cert.pem"
    cert_file.write_text(target["certificate"])
    text = server.eport(
        "audit",
        "prove",
        "--cert",
        str(cert_file),
        "--state",
        str(state),
        *asker(server),
    ).stdout
    assert "matches the file" in text and "Verified against the checkpoint" in text
    # The CA's first OCSP responders are logged at its start, as its CA certificates are
    # (they were not: revocation probe, F4).
    responders = sorted((server.data_dir / "ca" / "responders").glob("*.crt"))
    assert len(responders) == 3
    for responder in responders:
        text = server.eport(
            "audit", "prove", "--cert", str(responder), "--state", str(state), *asker(server)
        ).stdout
        assert "matches the file" in text, text
    # A certificate the CA never issued is not in the log.
    other = tmp_path / "other.pem"
    other.write_bytes((server.data_dir / "ca" / "root.crt").read_bytes())
    res = server.eport(
        "audit", "prove", "ffff0000", "--state", str(state), *asker(server), check=False
    )
    assert res.returncode != 0 and "no logged issuance" in res.stderr


def test_enterprise_reads_only_its_own(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Enroll one enterprise through the CLI so that we hold its key.
    uscc = fresh_uscc()
    app = json.loads(server.eport("apply", "--uscc", uscc, "--name", "Own Co", "--json").stdout)
    grant = json.loads(server.eport("ra", "approve", app["id"], *server.officer(), "--json").stdout)
    out = tmp_path / "own"
    mine = json.loads(
        server.eport(
            "enroll",
            "--code",
            grant["enrollment_code"],
            "--profile",
            "enterprise",
            "--out",
            str(out),
            "--json",
        ).stdout
    )
    ent = ["--cert", str(out / "cert.pem"), "--key", str(out / "key.pem")]
    listed = json.loads(server.eport("audit", "log", *ent, "--format", "json").stdout)
    assert listed and {e["uscc"] for e in listed} == {uscc}
    assert {e["type"] for e in listed} >= {"application.submitted", "certificate.issued"}
    other = server.eport("audit", "log", *ent, "--uscc", issued[0]["uscc"], check=False)
    assert other.returncode != 0 and "own USCC" in other.stderr
    full = server.eport(
        "audit", "verify", "--full", "--state", str(tmp_path / "s.json"), *ent, check=False
    )
    assert full.returncode != 0 and "auditors and RA officers" in full.stderr
    proved = server.eport(
        "audit", "prove", mine["serial"], "--state", str(tmp_path / "s.json"), "--as-cert", *ent[1:]
    )
    assert "Verified against the checkpoint" in proved.stdout
    theirs = server.eport(
        "audit",
        "prove",
        issued[0]["serial"],
        "--state",
        str(tmp_path / "s.json"),
        "--as-cert",
        *ent[1:],
        check=False,
    )
    assert theirs.returncode != 0 and "no logged issuance" in theirs.stderr
    # Anonymous: hashes are public, records are not.
    assert requests.get(server.url + "/ca/v1/audit/checkpoint", timeout=10).status_code == 200
    assert (
        requests.get(server.url + "/ca/v1/audit/proof/inclusion?index=0", timeout=10).status_code
        == 200
    )
    for path in ("entries", "events", "certificates", "event-digests"):
        assert requests.get(f"{server.url}/ca/v1/audit/{path}", timeout=10).status_code == 401
    assert (
        requests.get(
            f"{server.url}/ca/v1/audit/proof/inclusion?serial={issued[0]['serial']}", timeout=10
        ).status_code
        == 401
    )


def test_log_filters_and_exports(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    who = server.auditor()
    table = server.eport(
        "audit", "log", *who, "--type", "certificate.issued", "--limit", "3"
    ).stdout
    assert "certificate.issued" in table and "application.submitted" not in table
    assert "of " in table.splitlines()[-1]  # "(3 of N events; …)"
    out = tmp_path / "events.csv"
    server.eport("audit", "log", *who, "--format", "csv", "--out", str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [int(r["log_index"]) for r in rows] == list(range(len(rows)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]  # no part left
    # An export it cannot write, or one the server refuses, leaves nothing behind.
    nowhere = tmp_path / "missing" / "events.csv"
    res = server.eport("audit", "log", *who, "--out", str(nowhere), check=False)
    assert res.returncode == 1
    assert res.stderr == f"eport: error: cannot write {nowhere}: No such file or directory\n"
    refused = tmp_path / "refused.csv"
    res = server.eport("audit", "log", *who, "--type", "nope", "--out", str(refused), check=False)
    assert res.returncode == 1 and "(HTTP 400)" in res.stderr
    # To standard output (a pipe into jq): no half an export before the refusal.
    for fmt in ("json", "csv"):
        res = server.eport("audit", "log", *who, "--type", "nope", "--format", fmt, check=False)
        assert res.returncode == 1 and "(HTTP 400)" in res.stderr
        assert res.stdout == "", res.stdout
    # Times and serials are checked here, in the options' names, before anything is asked.
    for args, expect in (
        (("--since", "yesterday"), "Invalid value for '--since': not an ISO 8601 date"),
        (("--since", "2026-11-28", "--until", "2026-11-27"), "is not before --until"),
        (("--serial", "zz", "--out", str(refused)), "Invalid value for '--serial'"),
    ):
        res = server.eport("audit", "log", *who, *args, check=False)
        assert res.returncode == 2 and expect in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]
    # Proving nothing is a command-line mistake; so is --events without --full (it was
    # ignored: exit 0, no event checked).
    res = server.eport("audit", "prove", check=False)
    assert res.returncode == 2 and "give a SERIAL or --cert FILE" in res.stderr
    res = server.eport("audit", "verify", *who, "--events", check=False)
    assert res.returncode == 2 and "during --full: give both" in res.stderr, res.stderr
    one = issued[5]
    by_serial = json.loads(
        server.eport("audit", "log", *who, "--serial", one["serial"], "--format", "json").stdout
    )
    assert [e["type"] for e in by_serial] == ["certificate.issued"]
    by_uscc = json.loads(
        server.eport("audit", "log", *who, "--uscc", one["uscc"], "--format", "json").stdout
    )
    assert [e["type"] for e in by_uscc] == [
        "application.submitted",
        "application.approved",
        "certificate.issued",
    ]
    by_name = json.loads(
        server.eport("audit", "log", *who, "--subject", "audit co 5", "--format", "json").stdout
    )
    assert {e["uscc"] for e in by_name} == {one["uscc"]}
    future = json.loads(
        server.eport("audit", "log", *who, "--since", "2999-01-01", "--format", "json").stdout
    )
    assert future == []
    actor = json.loads(
        server.eport(
            "audit",
            "log",
            *who,
            "--actor",
            "enrollment-code",
            "--profile",
            "enterprise",
            "--issuer",
            "enterprise",
            "--until",
            "2999-01-01",
            "--format",
            "json",
        ).stdout
    )
    assert len(actor) >= ENTERPRISES and {e["type"] for e in actor} == {"certificate.issued"}
    bad = server.eport("audit", "log", *who, "--since", "yesterday", check=False)
    assert bad.returncode != 0 and "ISO 8601" in bad.stderr
    anonymous = server.eport("audit", "log", check=False)
    assert anonymous.returncode != 0 and "--cert" in anonymous.stderr


# -- tampering ----------------------------------------------------------------------------


def some_index(s: Session, kind: str = "certificate.issued") -> int:
    return int(
        s.execute(
            select(LogEntryRow.idx)
            .join(EventRow, EventRow.id == LogEntryRow.event_id)
            .where(EventRow.type == kind)
            .order_by(LogEntryRow.idx)
            .offset(2)
            .limit(1)
        ).scalar_one()
    )


def entry_at(s: Session, idx: int) -> bytes:
    return bytes(s.execute(select(LogEntryRow.entry).where(LogEntryRow.idx == idx)).scalar_one())


def set_entry(engine: Engine, idx: int, data: bytes) -> None:
    with Session(engine) as s:
        s.execute(update(LogEntryRow).where(LogEntryRow.idx == idx).values(entry=data))
        s.commit()


def test_tamper_changed_entry(server: Server, issued: list[dict[str, Any]], tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    verify(server, state)
    with database(server) as engine:
        with Session(engine) as s:
            idx = some_index(s)
            original = entry_at(s, idx)
        set_entry(engine, idx, original.replace(b'"actor":"', b'"actor":"forged-', 1))
        try:
            failed(verify(server, state, "--full", check=False), f"entry {idx} was changed")
        finally:
            set_entry(engine, idx, original)
        if engine.dialect.name == "sqlite":
            # SQLite's replace() stores TEXT: served as its bytes, not a 500 (probe F8).
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    'UPDATE log_entries SET entry = replace(entry, \'"actor":"\', '
                    '\'"actor":"forged-\') WHERE idx = ?',
                    (idx,),
                )
            try:
                failed(verify(server, state, "--full", check=False), f"entry {idx} was changed")
            finally:
                set_entry(engine, idx, original)
    verify(server, state, "--full")


def test_tamper_deleted_entry(server: Server, issued: list[dict[str, Any]], tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with database(server) as engine:
        with Session(engine) as s:
            idx = some_index(s)
            row = (
                s.execute(select(LogEntryRow.__table__).where(LogEntryRow.idx == idx))
                .mappings()
                .one()
            )
            saved = dict(row)
            s.execute(delete(LogEntryRow).where(LogEntryRow.idx == idx))
            s.commit()
        try:
            failed(verify(server, state, "--full", check=False), f"entry {idx} is missing")
        finally:
            with Session(engine) as s:
                s.execute(insert(LogEntryRow), [saved])
                s.commit()
    verify(server, state, "--full")


def test_tamper_reordered_entries(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    with database(server) as engine:
        with Session(engine) as s:
            i = some_index(s)
            entries = {k: entry_at(s, k) for k in (i, i + 1, i + 3)}
        # Two entries swapped; then two neighbours, which read as out of order too, not as
        # one missing (probe F6).
        for j in (i + 3, i + 1):
            set_entry(engine, i, entries[j])
            set_entry(engine, j, entries[i])
            try:
                failed(
                    verify(server, state, "--full", check=False),
                    f"entries {i} and {j} are out of order",
                )
            finally:
                set_entry(engine, i, entries[i])
                set_entry(engine, j, entries[j])
    verify(server, state, "--full")


def test_tamper_deleted_entry_with_the_gap_closed(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    """An entry deleted and the later ones moved down: named where it went missing, not at
    the end of the log (before: "entry <size-1> is missing", probe F5)."""
    state = tmp_path / "state.json"
    with database(server) as engine, Session(engine) as s:
        idx = some_index(s)
        later = select(LogEntryRow.__table__).where(LogEntryRow.idx >= idx)
        rows = [dict(r) for r in s.execute(later.order_by(LogEntryRow.idx)).mappings()]

    def put(s: Session, kept: list[dict[str, Any]]) -> None:
        s.execute(delete(LogEntryRow).where(LogEntryRow.idx >= idx))
        s.execute(insert(LogEntryRow), kept)

    tampered(
        server,
        state,
        lambda s: put(s, [{**r, "idx": r["idx"] - 1} for r in rows[1:]]),
        lambda s: put(s, rows),
        f"entry {idx} is missing: the entry served at {idx} is the log's entry {idx + 1}",
    )
    verify(server, state, "--full")


def tampered(
    server: Server,
    state: Path,
    change: Callable[[Session], object],
    undo: Callable[[Session], object],
    *needles: str,
) -> None:
    """``change`` the database (one transaction), check that ``verify --full`` fails with
    every one of ``needles`` in its line, then ``undo`` it."""
    with database(server) as engine:
        with Session(engine) as s:
            change(s)
            s.commit()
        try:
            failed(verify(server, state, "--full", check=False), *needles)
        finally:
            with Session(engine) as s:
                undo(s)
                s.commit()


def test_tamper_truncated_log(server: Server, issued: list[dict[str, Any]], tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    before = json.loads(verify(server, state, "--json").stdout)["tree_size"]
    keep = before - 4
    with database(server) as engine:
        # 1. Only the tail of the entries is gone: the log serves fewer than it signed.
        with Session(engine) as s:
            tail = [
                dict(r)
                for r in s.execute(
                    select(LogEntryRow.__table__).where(LogEntryRow.idx >= keep)
                ).mappings()
            ]
            s.execute(delete(LogEntryRow).where(LogEntryRow.idx >= keep))
            s.commit()
        try:
            failed(
                verify(server, tmp_path / "fresh.json", "--full", check=False),
                f"entry {keep} is missing",
                f"serves {keep} of",
            )
            # 2. The whole log cut back to `keep` (entries, nodes, head, checkpoints).
            with Session(engine) as s:
                nodes = [dict(r) for r in s.execute(select(LogNodeRow.__table__)).mappings()]
                cps = [dict(r) for r in s.execute(select(CheckpointRow.__table__)).mappings()]
                head = dict(s.execute(select(LogHeadRow.__table__)).mappings().one())
                root = translog.tree_at(s, keep).root(keep)
                for n in nodes:
                    if (n["idx"] + 1) << n["level"] > keep:
                        s.execute(
                            delete(LogNodeRow).where(
                                LogNodeRow.level == n["level"], LogNodeRow.idx == n["idx"]
                            )
                        )
                s.execute(delete(CheckpointRow).where(CheckpointRow.size > keep))
                s.execute(update(LogHeadRow).values(size=keep, root_hash=root))
                s.commit()
            try:
                failed(
                    verify(server, state, check=False),
                    f"the log shrank from {before} to {keep} entries",
                    f"entry {keep}",
                    "truncated",
                )
            finally:
                with Session(engine) as s:
                    s.execute(delete(LogNodeRow))
                    s.execute(insert(LogNodeRow), nodes)
                    s.execute(delete(CheckpointRow))
                    s.execute(insert(CheckpointRow), cps)
                    s.execute(
                        update(LogHeadRow).values(size=head["size"], root_hash=head["root_hash"])
                    )
                    s.commit()
        finally:
            with Session(engine) as s:
                s.execute(insert(LogEntryRow), tail)
                s.commit()
    verify(server, state, "--full")


class ForkingProxy:
    """Forwards to the real server but serves ``note`` as the latest checkpoint."""

    def __init__(
        self, upstream: str, note: bytes, handovers: list[bytes] | bytes | None = None
    ) -> None:
        self.note = note
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/ca/v1/audit/checkpoint":
                    body, status, ctype = proxy.note, 200, "text/plain; charset=utf-8"
                elif self.path == "/ca/v1/audit/log-key/handovers" and handovers is not None:
                    body = (
                        handovers
                        if isinstance(handovers, bytes)  # as is, for a malformed answer
                        else json.dumps(
                            {
                                "handovers": [
                                    {"tree_size": int(n.split(b"\n")[1]), "checkpoint": n.decode()}
                                    for n in handovers
                                ]
                            }
                        ).encode()
                    )
                    status, ctype = 200, "application/json"
                else:
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() in ("authorization", "accept")
                    }
                    r = requests.get(upstream + self.path, headers=headers, timeout=30)
                    body, status = r.content, r.status_code
                    ctype = r.headers.get("Content-Type", "application/octet-stream")
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ForkingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def log_key_of(server: Server) -> tuple[str, Any]:
    """The log's origin and its real (unsealed) key."""
    passphrase = devinit.read_passphrases(server.data_dir)["ca_key_passphrase"].encode()
    key = unseal_key(server.data_dir / "ca" / "log.key", passphrase)
    origin = requests.get(server.url + "/ca/v1/audit/log-key", timeout=10).json()["origin"]
    return str(origin), key


def forked_note(server: Server, size: int) -> bytes:
    """A checkpoint for ``size`` with a root the log never had, signed with the real log key."""
    origin, key = log_key_of(server)
    root = hashlib.sha256(b"a different history").digest()
    return sign_note(Checkpoint(origin, size, root).body(), origin, key)


def test_tamper_forked_checkpoint(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    size = json.loads(verify(server, state, "--json").stdout)["tree_size"]
    saved = state.read_text()

    # A second checkpoint for the size verified last time, handed around (--since) ...
    fork = tmp_path / "fork.note"
    fork.write_bytes(forked_note(server, size))
    failed(
        verify(server, tmp_path / "x.json", "--since", str(fork), check=False),
        f"tree size {size}",
        "forked",
    )

    # A file that is not a checkpoint at all is an input slip, not a failed verification.
    for content in (b"", b"not a checkpoint\n", fork.read_bytes().split(b"\n\n")[0]):
        other = tmp_path / "other.note"
        other.write_bytes(content)
        res = verify(server, tmp_path / "x.json", "--since", str(other), check=False)
        assert res.returncode == 2 and "FAILED" not in res.stderr, res.stderr
        assert f"{other} is not a signed checkpoint" in res.stderr, res.stderr

    # The forked checkpoint served by a server that shows this auditor another history.
    with ForkingProxy(server.url, forked_note(server, size)) as proxy:
        res = verify(server, state, check=False, EPORT_SERVER=proxy.url)
        failed(res, f"two different signed roots for tree size {size}", "forked")
        assert state.read_text() == saved, "a failed verification must not move the state"
    with ForkingProxy(server.url, forked_note(server, size + 5)) as proxy:
        res = verify(server, state, check=False, EPORT_SERVER=proxy.url)
        failed(res, f"size {size}", "consistent")
    # The forked note is not one the CA stored: the CA itself never signed two roots.
    with database(server) as engine, Session(engine) as s:
        stored = s.execute(
            select(CheckpointRow.root_hash).where(CheckpointRow.size == size)
        ).scalar_one()
        assert base64.b64encode(bytes(stored)).decode() not in fork.read_text()
    verify(server, state)


def test_a_state_follows_the_log_s_hand_over_and_no_forged_one(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    """After ROTATE-LOG-KEY the log serves a hand-over checkpoint, signed by the retired
    key and its successor, naming the successor (tests/test_custody_ceremonies.py runs the
    real ceremony). Here a server that shows the auditor hand-overs is stood in for, with
    the log's real key as the retiring one: the state follows a sound hand-over to the
    new key, and refuses one its successor did not sign, one the pinned key did not sign,
    one of another history, and one older than the checkpoint the old key last signed."""
    state = tmp_path / "state.json"
    first = json.loads(verify(server, state, "--json").stdout)
    size, root = first["tree_size"], bytes.fromhex(first["root_hash"])
    kept = state.read_text()
    enroll_concurrently(server, 2)
    latest = requests.get(server.url + "/ca/v1/audit/checkpoint", timeout=10).content
    grown = Checkpoint.parse(latest[: latest.rindex(b"\n\n") + 1])
    origin, old = log_key_of(server)
    new, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    new_key = verifier_key(origin, new.public_key())
    newest = sign_note(Checkpoint(origin, grown.size, grown.root_hash).body(), origin, new)

    def hand_over(at: int, at_root: bytes, *signers: Any) -> bytes:
        line = f"log-key-successor {new_key}"
        return sign_note(Checkpoint(origin, at, at_root, (line,)).body(), origin, *signers)

    def attempt(handovers: list[bytes] | bytes, *extra: str) -> Any:
        state.write_text(kept)
        with ForkingProxy(server.url, newest, handovers) as proxy:
            return verify(server, state, "--json", *extra, check=False, EPORT_SERVER=proxy.url)

    res = attempt([hand_over(size, root, old, new)])
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["log_key"] == new_key and doc["tree_size"] == grown.size
    assert doc["handovers"] == [
        {"tree_size": size, "from": first["log_key"], "to": new_key, "vouched_by_root": False}
    ]
    assert json.loads(state.read_text())["verifier_key"] == new_key
    res = attempt([hand_over(size, root, old, new)], "--log-key", new_key)
    assert res.returncode == 0 and json.loads(res.stdout)["log_key"] == new_key, res.stderr

    old_id = first["log_key"].split("+")[1]
    refusals = {
        "not signed by its successor": (
            [hand_over(size, root, old)],
            f"the hand-over checkpoint of size {size}, by its successor {new_key}",
        ),
        "not signed by the pinned key": (
            [hand_over(size, root, stranger, new)],
            f"the log's checkpoint: signed note has no signature by {origin}+{old_id}",
        ),
        "of another history": (
            [hand_over(size, hashlib.sha256(b"another").digest(), old, new)],
            f"two different signed roots for tree size {size}",
        ),
        "older than the pinned key's last checkpoint": (
            [hand_over(size - 1, root, old, new)],
            "the retired key signed on",
        ),
        "a list that is not one": (
            b'{"handovers": ["not an object"]}',
            "the server's list of the log's hand-over checkpoints is not one",
        ),
    }
    for what, (handovers, needle) in refusals.items():
        failed(attempt(handovers), needle)
        assert state.read_text() == kept, what
    # --log-key with a key the hand-overs do not lead to.
    other = verifier_key(origin, stranger.public_key())
    failed(
        attempt([hand_over(size, root, old, new)], "--log-key", other),
        f"--log-key {other} differs from the key pinned in the state file",
        "the log's hand-overs do not lead from that key to it",
    )
    assert state.read_text() == kept


def test_tamper_changed_event_record(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The log is intact but the CA's events table says something else afterwards."""
    state = tmp_path / "state.json"
    with database(server) as engine:
        with Session(engine) as s:
            idx = some_index(s)
            event_id = s.execute(
                select(LogEntryRow.event_id).where(LogEntryRow.idx == idx)
            ).scalar_one()
            subject = s.execute(
                select(EventRow.subject).where(EventRow.id == event_id)
            ).scalar_one()
        # Its subject changed; then its log index moved past the log's end, or cleared
        # (which took it out of every listing and export: log tamper probe, session 26).
        changes: list[tuple[dict[str, Any], dict[str, Any]]] = [
            ({"subject": "CN=Someone Else"}, {"subject": subject}),
            ({"log_index": 10**6}, {"log_index": idx}),
            ({"log_index": None}, {"log_index": idx}),
        ]
        event_records_fail(server, state, engine, event_id, idx, changes)
    verify(server, state, "--full", "--events")


def event_records_fail(
    server: Server,
    state: Path,
    engine: Engine,
    event_id: int,
    idx: int,
    changes: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    """Each change of the event row ``event_id`` (the values to set, the values that
    undo it) makes ``verify --full --events`` fail naming entry ``idx``."""
    for changed, kept in changes:
        with Session(engine) as s:
            s.execute(update(EventRow).where(EventRow.id == event_id).values(**changed))
            s.commit()
        try:
            failed(
                verify(server, state, "--full", "--events", check=False),
                f"entry {idx}",
                "event record",
            )
        finally:
            with Session(engine) as s:
                s.execute(update(EventRow).where(EventRow.id == event_id).values(**kept))
                s.commit()


def test_tamper_respelled_event_record(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    """An event's stored serial in capitals (and, on SQLite, where times are text, its
    time written with a "T") reads as the same entry, so the digest check passed, while
    `audit log --serial` and `--since/--until`, which compare the stored text, no longer
    listed it (log tamper probe, session 26). A record not spelled as the CA writes it now
    reads as changed."""
    from sqlalchemy import func

    state = tmp_path / "state.json"
    serial = issued[2]["serial"]
    with database(server) as engine:
        with Session(engine) as s:
            event_id, idx = s.execute(
                select(EventRow.id, EventRow.log_index).where(
                    EventRow.serial == serial, EventRow.type == "certificate.issued"
                )
            ).one()
        changes: list[tuple[dict[str, Any], dict[str, Any]]] = [
            ({"serial": func.upper(EventRow.serial)}, {"serial": func.lower(EventRow.serial)})
        ]
        if engine.dialect.name == "sqlite":
            changes.append(
                (
                    {"at": func.replace(EventRow.at, " ", "T")},
                    {"at": func.replace(EventRow.at, "T", " ")},
                )
            )
        event_records_fail(server, state, engine, event_id, idx, changes)
    verify(server, state, "--full", "--events")


def test_a_forged_event_past_the_log_is_not_listed(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    """An event row written behind the CA's back with a log index past the log's end (no
    entry, no leaf) was exported by `audit log` as a logged event (log tamper probe,
    session 26): the listings take only events the log has."""
    serial = issued[2]["serial"]
    with database(server) as engine:
        with Session(engine) as s:
            real = (
                s.execute(
                    select(EventRow.__table__).where(
                        EventRow.serial == serial, EventRow.type == "certificate.issued"
                    )
                )
                .mappings()
                .one()
            )
            forged = {
                **real, "id": 10**6, "type": "certificate.revoked",
                "subject": "CN=Forged", "log_index": 10**6,
            }  # fmt: skip
            s.execute(insert(EventRow), [forged])
            s.commit()
        try:
            out = server.eport(
                "audit", "log", *server.auditor(), "--serial", serial, "--format", "json"
            ).stdout
            doc = json.loads(out)
            listed = doc if isinstance(doc, list) else doc["events"]
            assert listed and all(e["log_index"] < 10**6 for e in listed), listed
            assert "CN=Forged" not in out
        finally:
            with Session(engine) as s:
                s.execute(delete(EventRow).where(EventRow.id == 10**6))
                s.commit()


def test_tamper_certificate_missing_from_the_log(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    """A certificate in the CA's listings whose issuance was never logged, and the reverse."""
    state = tmp_path / "state.json"
    with database(server) as engine:
        with Session(engine) as s:
            row = dict(
                s.execute(
                    select(CertificateRow.__table__).where(
                        CertificateRow.serial == issued[1]["serial"]
                    )
                )
                .mappings()
                .one()
            )
            hidden = {
                **row,
                "serial": "7e57ab1e",
                "cert_sha256": "ee" * 32,
                "spki_sha256": "dd" * 32,
                "log_index": None,  # written behind the CA's back: no event, no listing key
            }
            s.execute(insert(CertificateRow), [hidden])
            s.commit()
        try:
            failed(
                verify(server, state, "--full", check=False),
                "certificate 7e57ab1e",
                "not in the log",
            )
        finally:
            with Session(engine) as s:
                s.execute(delete(CertificateRow).where(CertificateRow.serial == "7e57ab1e"))
                s.commit()
        with Session(engine) as s:
            s.execute(delete(CertificateRow).where(CertificateRow.serial == row["serial"]))
            s.commit()
        try:
            failed(
                verify(server, state, "--full", check=False),
                f"certificate {row['serial']} is missing from the CA's listings",
            )
        finally:
            with Session(engine) as s:
                s.execute(insert(CertificateRow), [row])
                s.commit()
    verify(server, state, "--full")


def test_log_table_columns_hold_the_longest_type(server: Server) -> None:
    """An application.code_reissued row (25 characters, the TYPE column 21) pushed its
    USCC, serial and subject out of their columns in eport audit log's table; the column
    is as wide as the page's longest type."""
    uscc = fresh_uscc()
    app = json.loads(
        server.eport("apply", "--uscc", uscc, "--name", "Wide Type Co", "--json").stdout
    )
    server.eport("ra", "approve", app["id"], *server.officer())
    server.eport("ra", "new-code", app["id"], *server.officer())
    table = server.eport("audit", "log", *server.auditor(), "--uscc", uscc).stdout
    header, *rows = table.splitlines()
    assert [r.split()[3] for r in rows] == [
        "application.submitted",
        "application.approved",
        "application.code_reissued",
    ], table
    for row in rows:  # each row's USCC starts under the header's
        assert row.index(uscc) == header.index("USCC"), table


def test_tamper_certificate_records_and_status(
    server: Server, issued: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The CA's records of a logged certificate changed behind its back: the status OCSP
    and CRLs answer (a revoked certificate reinstated, a good one marked revoked), its
    owner (which its owner's rights go by), and its stored bytes. Before, every one of
    these passed `verify --full --events` (revocation probe, F1-F3)."""
    from ca.models import CertificateStatusRow

    state = tmp_path / "state.json"
    officer = officer_identity(server)
    revoked, good, other = issued[2]["serial"], issued[3]["serial"], issued[4]["serial"]
    CAClient(server.url).call(
        "POST", f"/ca/v1/certificates/{revoked}/revoke", {"reason": "keyCompromise"}, officer
    )
    res = verify(server, state, "--full", "--events", "--json")
    doc = json.loads(res.stdout)
    assert doc["records_checked"] == doc["certificates"] > 0, doc

    with database(server) as engine, Session(engine) as s:
        status_row = dict(
            s.execute(
                select(CertificateStatusRow.__table__).where(CertificateStatusRow.serial == revoked)
            )
            .mappings()
            .one()
        )
        cert_row = dict(
            s.execute(select(CertificateRow.__table__).where(CertificateRow.serial == good))
            .mappings()
            .one()
        )
        other_der = s.execute(
            select(CertificateRow.der).where(CertificateRow.serial == other)
        ).scalar_one()
    by_serial = CertificateStatusRow.serial
    # 1. The revoked certificate reinstated: its status row deleted.
    tampered(
        server,
        state,
        lambda s: s.execute(delete(CertificateStatusRow).where(by_serial == revoked)),
        lambda s: s.execute(insert(CertificateStatusRow), [status_row]),
        f"certificate {revoked} is good in the CA's records",
        "revoked (keyCompromise",
    )
    # 2. Its reason changed (what relying parties weigh).
    tampered(
        server,
        state,
        lambda s: s.execute(
            update(CertificateStatusRow).where(by_serial == revoked).values(reason=4)
        ),
        lambda s: s.execute(
            update(CertificateStatusRow).where(by_serial == revoked).values(reason=1)
        ),
        f"certificate {revoked} is revoked (superseded",
    )
    # 3. A good certificate marked revoked without an event.
    tampered(
        server,
        state,
        lambda s: s.execute(insert(CertificateStatusRow), [{**status_row, "serial": good}]),
        lambda s: s.execute(delete(CertificateStatusRow).where(by_serial == good)),
        f"certificate {good} is revoked",
        "leave it good",
    )
    # 4. Its owner changed (another enterprise could then revoke it, and list it).
    by_cert = CertificateRow.serial == good
    tampered(
        server,
        state,
        lambda s: s.execute(
            update(CertificateRow).where(by_cert).values(uscc="91350100M000300Y4J")
        ),
        lambda s: s.execute(update(CertificateRow).where(by_cert).values(uscc=cert_row["uscc"])),
        f"certificate {good} is listed by the CA with uscc '91350100M000300Y4J'",
    )
    # 5. Its stored bytes swapped for another certificate's (its hash column kept).
    tampered(
        server,
        state,
        lambda s: s.execute(update(CertificateRow).where(by_cert).values(der=other_der)),
        lambda s: s.execute(update(CertificateRow).where(by_cert).values(der=cert_row["der"])),
        f"certificate {good}: the CA's stored certificate (DER) hashes to",
    )
    # 6. Its status row moved to another issuing CA: that CA's CRL, read by id, lists it
    # and its own leaves it out, while OCSP still answers revoked (log tamper probe, s26).
    tampered(
        server,
        state,
        lambda s: s.execute(
            update(CertificateStatusRow).where(by_serial == revoked).values(issuer_id="agency")
        ),
        lambda s: s.execute(
            update(CertificateStatusRow)
            .where(by_serial == revoked)
            .values(issuer_id=status_row["issuer_id"])
        ),
        f"certificate {revoked}: its status row in the CA's records names issuing CA 'agency'",
    )
    # 7. An invalidity date the revocation never had (its CRL entry carries it).
    backdated = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    tampered(
        server,
        state,
        lambda s: s.execute(
            update(CertificateStatusRow)
            .where(by_serial == revoked)
            .values(invalidity_date=backdated)
        ),
        lambda s: s.execute(
            update(CertificateStatusRow).where(by_serial == revoked).values(invalidity_date=None)
        ),
        f"certificate {revoked} is revoked (keyCompromise, since",
        "invalid since 2026-01-01T00:00:00+00:00",
    )
    verify(server, state, "--full", "--events")


def test_a_first_verification_pins_the_log_key_the_root_signed(
    server: Server, tmp_path: Path
) -> None:
    """The first verification trusted the server's log key on first use, its only check
    the ceremony record (conformance probe: the root did not sign the log key). The CA's
    root signs it now (ca/log.pub.sig) and --root pins it by that signature; a root that
    did not sign it refuses, and no state is written; without --root the auditor is told
    how to check it."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes as h
    from cryptography.hazmat.primitives.asymmetric import ec

    root = server.data_dir / "ca" / "root.crt"
    told = verify(server, tmp_path / "a.json")
    assert "on first use: give the root certificate (--root ROOT.crt)" in told.stderr
    pinned = verify(server, tmp_path / "b.json", "--root", str(root))
    assert "is signed by the root" in pinned.stderr and "first use" not in pinned.stderr
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Another Root")])
    now = datetime.datetime.now(datetime.UTC)
    other = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, h.SHA384())
    )  # fmt: skip
    other_file = tmp_path / "other-root.crt"
    other_file.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    failed(
        verify(server, tmp_path / "c.json", "--root", str(other_file), check=False),
        "the server names is not signed by the root given with --root: it names the root "
        "whose SHA-256 is",
    )
    assert not (tmp_path / "c.json").exists()
    # --root fails closed: a log key offered without the root's signature (a CA of an
    # earlier release, or the field left out on the way) is not trusted on first use.
    signature = server.data_dir / "ca" / "log.pub.sig"
    kept = signature.read_bytes()
    try:
        signature.unlink()
        failed(
            verify(server, tmp_path / "d.json", "--root", str(root), check=False),
            "the server offers no root signature of its log key",
            "(--log-key log.pub)",
        )
        assert not (tmp_path / "d.json").exists()
        # A changed signature file is offered to nobody, and health says so.
        doc = json.loads(kept)
        doc["signature"] = base64.b64encode(b"\x30" + b"\x00" * 70).decode()
        signature.write_text(json.dumps(doc))
        offered = requests.get(server.url + "/ca/v1/audit/log-key", timeout=10).json()
        assert "root_signature" not in offered
        health = requests.get(server.url + "/ca/v1/health", timeout=10).json()
        assert any(w.startswith("ca/log.pub.sig is not the root's") for w in health["warnings"])
    finally:
        signature.write_bytes(kept)
    health = requests.get(server.url + "/ca/v1/health", timeout=10).json()
    assert not any("log.pub.sig" in w for w in health.get("warnings", []))


def test_a_subject_search_folds_width_case_and_the_ideographic_space(server: Server) -> None:
    """--subject (and the web view's q) compare NFKC and lower case on both sides, on
    SQLite and PostgreSQL alike: before, SQLite's ASCII-only lower() made 'Ｗｅｉ' miss
    'Ｌｉ Ｗｅｉ', and '李　伟' as typed missed the stored '李 伟' (Chinese data probe)."""
    who = server.auditor()
    stamp = fresh_uscc()[-6:]
    names = {f"Ｌｉ Ｗｅｉ Trading {stamp}": fresh_uscc(), f"李 伟{stamp}报关行": fresh_uscc()}
    for name, uscc in names.items():
        server.eport("apply", "--uscc", uscc, "--name", name)

    def found(text: str) -> set[str]:
        out = server.eport("audit", "log", *who, "--subject", text, "--format", "json").stdout
        return {e["uscc"] for e in json.loads(out)}

    latin, chinese = names.values()
    for text in (
        f"ｗｅｉ trading {stamp}",
        f"WEI TRADING {stamp}",
        f"Ｗｅｉ Ｔｒａｄｉｎｇ {stamp}",
    ):
        assert found(text) == {latin}, text
    assert found(f"李　伟{stamp}") == {chinese}
    assert found(f"李伟{stamp}") == set()  # a blank is still a character to a search


def test_an_invalidity_date_is_compared_as_an_instant() -> None:
    """An event of a revocation made before times were kept in UTC recorded its
    invalidity date with the client's offset; the CA's record holds the same instant in
    UTC. Compared as text they differed, and verify --full failed an honest log (review
    of session 26); another instant still differs."""
    from cli.audit import _Logged, status_problem

    logged = _Logged({}, {}, {}, {})
    since = "2026-11-20T09:00:00.000000Z"
    logged.status["5e"] = (
        7,
        ("revoked", "keyCompromise", since, "2026-11-20T16:00:00.250000+08:00"),
    )
    row = ("5e", "aa", None, None, "CN=X", "operator", "enterprise", 3, "revoked")
    same = (*row, "keyCompromise", since, None, "2026-11-20T08:00:00.250000+00:00")
    assert status_problem("5e", same, logged) is None
    other = (*row, "keyCompromise", since, None, "2026-11-20T08:00:01.250000+00:00")
    problem = status_problem("5e", other, logged)
    assert problem is not None and "invalid since 2026-11-20T08:00:01.250000+00:00" in problem


def test_a_status_changed_twice_while_verifying_is_not_tampering(
    server: Server, issued: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing is read after the checkpoint verified and before the newer one that
    explains what changed meanwhile. A certificate put on hold before the listing and
    resumed after it was called tampering: only the log's last status was compared
    (race probe, session 27: 7 of 10 runs on a busy CA). Any status the log gave it
    between the two checkpoints is what a listing read then may show."""
    from cli import audit

    d = server.dev / "auditors" / "customs"
    pass_file = d / "DEV-ONLY-passphrase.txt"
    ident = keyfiles.load_identity(d / "auditor.pem", d / "auditor.key", pass_file)
    client = audit.AuditClient(server.url, ident)
    key = audit.VerifierKey.parse(client.json(f"{audit.API}/log-key")["verifier_key"])
    serial = issued[-1]["serial"]
    officer = server.officer()
    cp = audit.verify_note(client.get(f"{audit.API}/checkpoint").content, key, "the checkpoint")
    server.eport("suspend", "--serial", serial, *officer)  # after cp, before the listing

    lifted: list[str] = []

    class Now:  # read here, in this thread; once the listing is read, the hold lifted
        def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
            self.value = fn(*args)
            if not args and not lifted:  # the listing: the one read with no arguments
                lifted.append(server.eport("resume", "--serial", serial, *officer).stdout)

        def result(self) -> Any:
            return self.value

    monkeypatch.setattr(audit, "Ahead", Now)
    result, newer, _ = audit.verify_full(client, cp, key, events=False, progress=False)
    assert newer.size >= cp.size + 2 and result.records_checked > 0  # both status entries
    monkeypatch.undo()
    verify(server, Path(str(server.data_dir)) / "state-twice.json", "--full")
