"""Faults an operator meets on a real ``eport serve --dev``: a full disk, a killed server.

Each drives the server over HTTP and the ``eport`` CLI as users do, then checks the
database directly: every certificate answered 201 is stored with its event and log entry,
no code is redeemed without its certificate, and ``eport audit verify --full`` passes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine

from ca.keys import KeyType
from cli import keyfiles
from cli.client import CAClient
from tests.conftest import Server, start_server, stop
from tests.helpers import fresh_uscc
from tests.test_audit_cli import officer_identity


def approved_codes(server: Server, n: int) -> list[str]:
    """``n`` enterprise applications approved by the development customs officer."""
    officer = officer_identity(server)
    client = CAClient(server.url)
    codes = []
    for i in range(n):
        app = client.call(
            "POST",
            "/ca/v1/applications",
            {"subject_class": "enterprise", "uscc": fresh_uscc(), "legal_name": f"Fault Co {i}"},
        )
        grant = client.call("POST", f"/ca/v1/ra/applications/{app['id']}/approve", {}, officer)
        codes.append(grant["enrollment_code"])
    return codes


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
                    " AND type IN ('certificate.issued', 'ca.initialized')"
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
    assert "Traceback" not in log
    assert len(serials) >= 2
