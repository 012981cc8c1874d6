"""The database going away under a running server (PostgreSQL stopped at once): every
request that needs it gets a 503 problem+json with ``Retry-After`` (a client retries an
outage; it does not report a bug), said in one log line rather than a traceback per
request, and the server serves again by itself once the database is back. Found by
probing: each such request was a 500 "the server failed; nothing was changed", false
when the lost answer was that of a COMMIT that had reached the database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.conftest import (
    PG_BIN,
    Postgres,
    Server,
    pg_ctl,
    postgres_cluster,
    start_server,
    stop,
)
from tests.test_config_checks import child_pids, gunicorn_master, refused, serve
from tests.test_enroll_fastpath import csr

APPLICATION = {"uscc": "91350100M000100Y43", "legal_name": "Outage Trading Co."}


def test_a_stopped_database_is_a_503_with_retry_after_and_the_server_heals(
    tmp_path: Path,
) -> None:
    with postgres_cluster() as pg:
        ca_db, auth_db = pg.createdb("outage_ca"), pg.createdb("outage_auth")
        # One worker, up before the database goes (health answers once it has booted).
        srv, proc = start_server(
            tmp_path / "data", ca_db, workers=1, extra_env={"EPORT_AUTH_DATABASE_URL": auth_db}
        )
        try:
            url = srv.url
            r = requests.post(url + "/ca/v1/applications", json=APPLICATION, timeout=30)
            assert r.status_code == 201, r.text
            pg_ctl(pg, "-m", "immediate", "stop")
            asks = [
                ("POST", "/ca/v1/applications", {"json": APPLICATION}),
                ("GET", f"/ca/v1/applications/{r.json()['id']}", {}),
                # the enrollment's fast path, before Flask
                (
                    "POST",
                    "/ca/v1/enroll",
                    {"json": {"code": "A" * 32, "profile": "enterprise", "csr": csr()}},
                ),
            ]
            for method, path, kw in asks:
                got = requests.request(method, url + path, timeout=60, **kw)  # type: ignore[arg-type]
                assert got.status_code == 503, (path, got.status_code, got.text)
                assert got.headers["Content-Type"] == "application/problem+json"
                assert got.headers["Retry-After"] == "5"
                doc = got.json()
                assert doc["type"] == "urn:eport:problem:database-unavailable", doc
                assert "whether it took effect is not known" in doc["detail"]
                assert "nothing was changed" not in doc["detail"]
            # The token service's own database, at an OAuth endpoint: RFC 6749's error
            # shape ({error, error_description}), which OAuth clients read.
            refresh = {
                "grant_type": "refresh_token",
                "refresh_token": "x" * 43,
                "audience": "customs-declaration",
            }
            got = requests.post(url + "/auth/token", data=refresh, timeout=60)
            assert got.status_code == 503, got.text
            assert got.headers["Content-Type"] == "application/json"
            assert got.headers["Retry-After"] == "5" and got.headers["Cache-Control"] == "no-store"
            oauth = got.json()
            assert oauth["error"] == "temporarily_unavailable", oauth
            assert "whether it took effect is not known" in oauth["error_description"]
            # OCSP answers in its own terms: tryLater (RFC 6960 §2.3), not an HTTP error.
            officer = srv.dev / "officers" / "customs"
            cert = x509.load_pem_x509_certificate((officer / "officer.pem").read_bytes())
            issuer = x509.load_pem_x509_certificates((officer / "chain.pem").read_bytes())[0]
            for nonce in (False, True):
                builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
                if nonce:
                    builder = builder.add_extension(x509.OCSPNonce(b"n" * 16), critical=False)
                r = requests.post(
                    url + "/ocsp",
                    data=builder.build().public_bytes(serialization.Encoding.DER),
                    headers={"Content-Type": "application/ocsp-request"},
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                answer = ocsp.load_der_ocsp_response(r.content)
                assert answer.response_status is ocsp.OCSPResponseStatus.TRY_LATER
            # Health: alive (200), and says the database is unavailable; as a readiness
            # check (?ready), 503.
            health = requests.get(url + "/ca/v1/health", timeout=30)
            assert health.status_code == 200
            assert health.json()["database"] == "unavailable"
            assert health.json()["status"] == "degraded"
            ready = requests.get(url + "/ca/v1/health?ready", timeout=30)
            assert ready.status_code == 503 and ready.headers["Retry-After"] == "5"
            # the token service's, on its own database: alive, and not ready
            health = requests.get(url + "/auth/health", timeout=30)
            assert health.status_code == 200 and health.json()["database"] == "unavailable"
            assert health.json()["status"] == "degraded"
            ready = requests.get(url + "/auth/health?ready", timeout=30)
            assert ready.status_code == 503 and ready.headers["Retry-After"] == "5"
            log = srv.log.read_text(errors="replace")
            assert "database unavailable on POST /ca/v1/applications" in log
            assert "database unavailable on POST /auth/token" in log
            assert "Traceback" not in log, log[-3000:]
            pg_ctl(pg, *pg.start_args)
            deadline = time.monotonic() + 30
            while True:  # the pool reconnects by itself: no restart
                again = requests.post(url + "/ca/v1/applications", json=APPLICATION, timeout=30)
                if again.status_code == 201 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert again.status_code == 201, again.text
            assert json.loads(again.text)["state"] == "pending"
            ready = requests.get(url + "/ca/v1/health?ready", timeout=30)
            assert ready.status_code == 200 and ready.json()["database"] == "ok", ready.text
            ready = requests.get(url + "/auth/health?ready", timeout=30)
            assert ready.status_code == 200 and ready.json()["database"] == "ok", ready.text
        finally:
            stop(proc)


def _stop_signal(pg: Postgres, sig: signal.Signals) -> None:
    """``sig`` to the cluster's postmaster and every process it started."""
    pid = int((pg.data / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    for p in [pid, *map(int, children.stdout.split())]:
        os.kill(p, sig)


@pytest.mark.slow
def test_a_database_that_stops_answering_is_a_503_in_seconds_not_a_hang(tmp_path: Path) -> None:
    """PostgreSQL stopped (SIGSTOP: its host still acknowledges every byte, so TCP
    keepalives and tcp_user_timeout never end the wait): each request held its thread
    for ever, health included. With database_answer_seconds (2 here), a request is a 503
    within seconds, health says the database is unavailable, and once the server goes
    on the pool connects anew by itself."""
    with postgres_cluster() as pg:
        ca_db, auth_db = pg.createdb("hung_ca"), pg.createdb("hung_auth")
        env = {"EPORT_AUTH_DATABASE_URL": auth_db, "EPORT_DATABASE_ANSWER_SECONDS": "2"}
        srv, proc = start_server(tmp_path / "data", ca_db, workers=1, extra_env=env)
        try:
            url = srv.url
            r = requests.post(url + "/ca/v1/applications", json=APPLICATION, timeout=30)
            assert r.status_code == 201, r.text
            _stop_signal(pg, signal.SIGSTOP)
            try:
                for method, path, kw in (
                    ("POST", "/ca/v1/applications", {"json": APPLICATION}),
                    ("GET", f"/ca/v1/applications/{r.json()['id']}", {}),
                ):
                    t0 = time.monotonic()
                    got = requests.request(method, url + path, timeout=60, **kw)  # type: ignore[arg-type]
                    took = time.monotonic() - t0
                    assert got.status_code == 503, (path, got.status_code, got.text)
                    assert got.json()["type"] == "urn:eport:problem:database-unavailable"
                    assert took < 15, (path, took)  # the answer deadline and a reconnect's
                health = requests.get(url + "/ca/v1/health", timeout=60)
                assert health.status_code == 200 and health.json()["database"] == "unavailable"
            finally:
                _stop_signal(pg, signal.SIGCONT)
            deadline = time.monotonic() + 30
            while True:  # no restart: the pool connects anew
                again = requests.post(url + "/ca/v1/applications", json=APPLICATION, timeout=30)
                if again.status_code == 201 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert again.status_code == 201, again.text
            log = srv.log.read_text(errors="replace")
            assert "the database did not answer within 2 s" in log
            assert "Traceback" not in log, log[-3000:]
        finally:
            stop(proc)


@pytest.mark.slow
def test_a_database_server_that_never_answers_is_a_clear_error_not_a_hang(
    tmp_path: Path,
) -> None:
    """A PostgreSQL address that takes the TCP connection and says nothing (a hung
    server, a black hole): `eport serve` printed nothing and waited for ever. libpq's
    connect timeout now ends it with the one-line database error."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(silent.accept()[0])  # and never a byte back

    threading.Thread(target=accept, daemon=True).start()
    url = f"postgresql+psycopg2://eport@127.0.0.1:{port}/eport"
    try:  # within serve()'s 60 s, or it hung
        done = serve(tmp_path / "d", EPORT_DATABASE_URL=url, EPORT_AUTH_DATABASE_URL=url)
    finally:
        silent.close()
        for conn in accepted:
            conn.close()
    assert "timeout" in refused(done, "cannot use the database").lower()


def test_public_reads_do_not_wait_for_a_writer_holding_the_sqlite_lock(
    sqlite_server: Server,
) -> None:
    """The CRL and the log's public reads took SQLite's write lock (``BEGIN IMMEDIATE``):
    a writer holding it (a long CLI command, a maintenance script) held up relying
    parties and auditors, and after the 30 s busy timeout they failed. They read in a
    deferred transaction now, which WAL lets run beside a writer."""
    url = sqlite_server.url
    reads = [
        "/crl/enterprise.crl",
        "/ca/v1/audit/log-key",
        "/ca/v1/audit/log-key/handovers",
        "/ca/v1/audit/proof/consistency?from=1",
        "/ca/v1/audit/leaf-hashes?start=0&count=1",
        "/ca/v1/audit/checkpoint",
    ]
    for path in reads:  # the CRL signed, a checkpoint stored: what needs writing is done
        assert requests.get(url + path, timeout=60).status_code == 200, path
    holder = sqlite3.connect(sqlite_server.data_dir / "eport.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer holds the write lock
    try:
        for path in reads:
            t0 = time.monotonic()
            r = requests.get(url + path, timeout=60)
            assert r.status_code == 200, (path, r.text)
            assert time.monotonic() - t0 < 5, path
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_role_that_cannot_create_tables_is_one_clear_line(
    postgres: Postgres, tmp_path: Path
) -> None:
    """A PostgreSQL role without CREATE on the schema (PostgreSQL 15's default for any
    role but the database's owner) was an "unexpected error" with escaped SQL."""
    url = postgres.createdb("eport_limited")
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(postgres.port),
            "-d",
            "eport_limited",
            "-c",
            "CREATE ROLE limited LOGIN",
        ],
        check=True,
        capture_output=True,
    )
    limited = url.replace("postgres@", "limited@")
    done = serve(tmp_path / "d", EPORT_DATABASE_URL=limited, EPORT_AUTH_DATABASE_URL=limited)
    refused(done, "cannot use the database", "permission denied", "create tables")


@pytest.mark.slow
def test_a_worker_restarted_during_an_outage_waits_for_the_database(tmp_path: Path) -> None:
    """A worker that gunicorn restarted while PostgreSQL was down failed to boot, and
    gunicorn's master then stopped the whole server ("Worker failed to boot"). It exits
    for a fresh one now, and the server serves again once the database is back."""
    with postgres_cluster() as pg:
        ca_db, auth_db = pg.createdb("outage_ca"), pg.createdb("outage_auth")
        srv, proc = start_server(
            tmp_path / "data", ca_db, workers=2, extra_env={"EPORT_AUTH_DATABASE_URL": auth_db}
        )
        try:
            url = srv.url
            port = int(url.rsplit(":", 1)[1])
            deadline = time.monotonic() + 30
            while (
                len(child_pids(gunicorn_master(port))) < 2
            ):  # both booted before the database goes
                assert time.monotonic() < deadline
                time.sleep(0.2)
            time.sleep(1.0)
            pg_ctl(pg, "-m", "immediate", "stop")
            victim = min(child_pids(gunicorn_master(port)))
            os.kill(victim, 9)
            time.sleep(4)  # the master respawns it; it cannot reach the database
            assert proc.poll() is None, srv.log.read_text(errors="replace")[-3000:]
            assert "worker booting: the database is unavailable" in srv.log.read_text(
                errors="replace"
            )
            pg_ctl(pg, *pg.start_args)
            ok = 0
            deadline = time.monotonic() + 60
            while ok < 8 and time.monotonic() < deadline:
                r = requests.post(url + "/ca/v1/applications", json=APPLICATION, timeout=30)
                ok = ok + 1 if r.status_code == 201 else 0
                time.sleep(0.1)
            assert ok == 8, r.text
            assert proc.poll() is None
            assert victim not in child_pids(gunicorn_master(port))
        finally:
            stop(proc)


def test_a_connection_the_server_closed_is_discarded_not_reset() -> None:
    """A pooled connection PostgreSQL closed under a request (a restart under load) is
    invalidated, so that the pool discards it: resetting it logged SQLAlchemy's
    'Exception during reset or similar' with three tracebacks per request (PostgreSQL
    probe, session 22). One that rolls back goes back to the pool."""
    from ca.store import release_broken

    class Raw:
        def __init__(self, closed: int, rollback_fails: bool = False) -> None:
            self.dbapi_connection = type("C", (), {"closed": closed})()
            self.rollback_fails = rollback_fails
            self.calls: list[str] = []

        def rollback(self) -> None:
            self.calls.append("rollback")
            if self.rollback_fails:
                raise RuntimeError("connection already closed")

        def invalidate(self) -> None:
            self.calls.append("invalidate")

    closed, failing, fine = Raw(2), Raw(0, rollback_fails=True), Raw(0)
    for raw in (closed, failing, fine):
        release_broken(raw, RuntimeError("terminating connection"))
    assert closed.calls == ["invalidate"]
    assert failing.calls == ["rollback", "invalidate"]
    assert fine.calls == ["rollback"]
