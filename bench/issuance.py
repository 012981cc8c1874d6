"""Benchmark: durable certificate issuance over HTTP, against its ceilings and a peer.

One run measures, on 127.0.0.1 only, with every server started (and stopped) here:

- **raw**: ``cryptography``'s ``CertificateBuilder.sign`` with a P-256 key (ECDSA-SHA256),
  certificates per second on one thread, for a certificate shaped like ours: the per-core
  signing ceiling.
- **in-process**: :meth:`ca.issuance.CertificateFactory.issue` on one thread with pkilint on
  and off (no HTTP, no database): what building, linting and signing cost per core; and
  whole unlinted enrollments through the app's WSGI callable (Flask's test client, with the
  database and the issuance's own WAL fsync, but no HTTP), as 1 / CPU seconds per enrollment.
- **ours**: ``POST /ca/v1/enroll`` against ``eport serve --dev`` with 16 concurrent clients,
  for every configuration of ``--configs`` (gunicorn workers x threads per worker; threads 1
  is gunicorn's sync worker, as ``eport serve`` picks it, which closes the connection after
  each response; with more, gthread workers, whose enrollments ready at the same moment share
  one transaction, ``ca/groupwrite.py``) at every ``EPORT_LINT_SAMPLE_RATE`` of
  ``--lint-rates``: 1.0 is the CA's default (every certificate linted by pkilint before it is
  signed); a lower rate is the sampled design (every profile's template linted at start, then
  that fraction of certificates). Every request redeems a fresh one-time code with a fresh
  CSR: the code is redeemed, the CSR checked, the certificate linted (or not, by the rate),
  signed and stored with its log event (SQLite, WAL, ``synchronous=FULL``). After each run the
  database is counted: every 201 must be a stored certificate and a ``certificate.issued``
  event.
- **hello**: a hello-world Flask view under gunicorn, once per configuration, sent the very
  same request bytes: the HTTP ceiling of this stack with that configuration on this machine.
  Each configuration's enrollment rates are judged against its own hello-world.
- **cfssl**: ``cfssl serve`` (Debian's golang-cfssl) with its SQLite certdb, a P-256 CA made
  by ``cfssl genkey -initca``, ``POST /api/v1/cfssl/sign`` with one CSR per request, logging
  warnings only (as ours); after each run its certdb is counted too. The goal is judged
  against the certdb as cfssl ships it, in SQLite's default rollback-journal mode: the issue's
  ~850/s for cfssl with SQLite matches that set-up, not a tuned one. The certdb switched to
  WAL is our own tuning of the peer, reported beside it with its ratio to the fastest
  hello-world (twice it is beyond what this WSGI stack answers even for hello-world).

The load client is one process and one thread: 16 keep-alive HTTP/1.1 connections on an
epoll selector, one request in flight on each (a closed loop), every request pre-encoded to
bytes before the clock starts. Each connection is closed and opened anew after
``--per-connection`` responses, as many clients would over time (kept-alive connections all
opened at once otherwise stay on whichever gunicorn worker accepted them first, leaving the
other idle). The client reports its own CPU use; the server's is read from ``/proc``, per
process, and so is the rest of the machine's ("other": anything else running at the same time,
which makes a run unreliable and is warned about). Before each run the benchmark waits up to
``--quiet-wait`` seconds for the rest of the machine to go idle, and with ``--retries N`` it
repeats a disturbed run up to N times and keeps the least disturbed attempt.

Latencies are from the first byte sent (including a reconnect) to the last byte of the
response; requests count when they complete inside the measured window, after a warm-up.
The hello-world and cfssl runs cycle through a pool of 4,000 distinct CSRs.

Codes (``JointCA.apply`` + ``approve_at_ceremony``) and client keys and CSRs are made before
the clock starts, directly against the server's database, while no server runs; codes never
sent in one run are used in the next. Each run is given codes for what the runs so far suggest
it can do, with a margin, but never more than a margin over a safe upper bound (the
hello-world rate of the same config, or every core doing only in-process issuance); a run
whose codes still run out is run once more with twice as many, and flagged in the table if
they ran out again (its rate is then over the shorter window).

The CA code measured is the ``ca`` package Python imports (the repository's, or another
checkout's through ``PYTHONPATH``); its path and git revision are printed.

Where the server's CPU goes inside one enrollment (per step, optionally under cProfile, and
robust on a busy machine because it counts CPU time, not requests per second):
``python bench/enroll_profile.py``.

Usage: ``python bench/issuance.py [--seconds 10] [--quick] [--configs 2x1,2x4,3x1,3x8]
[--lint-rates 1.0,0.01] [--no-cfssl] [--retries 2]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime
import functools
import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
ENROLL_PATH = "/ca/v1/enroll"
CFSSL_SIGN_PATH = "/api/v1/cfssl/sign"
GOAL_VS_CFSSL = 2.0
GOAL_VS_HELLO = 0.40
DEFAULT_CONFIGS = "2x1,2x4,3x1,3x8"  # gunicorn workers x threads per worker
DEFAULT_LINT_RATES = "1.0,0.01"  # EPORT_LINT_SAMPLE_RATE: the CA's default, a sampled design
MINT_MARGIN = 1.5  # codes are minted for this times the rate the runs seen so far suggest,
BOUND_MARGIN = 1.1  # but never for more than this times a bound: the same config's
# hello-world, or every core doing only in-process enrollments (see Bench.expect)
ENROLL_PROBE = 300  # unlinted in-process enrollments timed for that bound
# the cfssl certdb's journal modes, the issue's set-up first (see the module's docstring)
CFSSL_LABELS = {
    "delete": "certdb as shipped (journal=delete)",
    "wal": "certdb in WAL (our tuning)",
}
NOISY_CORES = 0.25  # other processes using more than this during a run make it unreliable
# gunicorn options as cli/serve.py sets them for `eport serve`, for the hello-world server
GUNICORN_COMMON = ["--log-level", "warning", "--timeout", "60", "--graceful-timeout", "5"]
HELLO_APP = '''\
"""Hello world under the same WSGI server: the HTTP ceiling of the benchmark."""
from flask import Flask, request

app = Flask("hello")


@app.get("/health")
def health():
    return "ok"


@app.post("{path}")
def hello():
    request.get_data()
    return "Hello, world!\\n"
'''
# cfssl's certdb schema for SQLite: its certdb/sqlite migrations 001 (certificates and
# ocsp_responses) and 002 (the nullable metadata columns newer releases write; the cfssl Debian
# ships, 1.2.0+git20160825, inserts only the columns of 001).
CFSSL_CERTDB_SCHEMA = """
CREATE TABLE certificates (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  ca_label                 blob,
  status                   blob NOT NULL,
  reason                   int,
  expiry                   timestamp,
  revoked_at               timestamp,
  pem                      blob NOT NULL,
  PRIMARY KEY(serial_number, authority_key_identifier)
);
CREATE TABLE ocsp_responses (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  body                     blob NOT NULL,
  expiry                   timestamp,
  PRIMARY KEY(serial_number, authority_key_identifier),
  FOREIGN KEY(serial_number, authority_key_identifier)
    REFERENCES certificates(serial_number, authority_key_identifier)
);
ALTER TABLE certificates ADD COLUMN "issued_at" timestamp;
ALTER TABLE certificates ADD COLUMN "not_before" timestamp;
ALTER TABLE certificates ADD COLUMN "metadata" text;
ALTER TABLE certificates ADD COLUMN "sans" text;
ALTER TABLE certificates ADD COLUMN "common_name" text;
"""


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child: be sent SIGTERM if the benchmark dies without cleaning up (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Servers:
    """Every server this benchmark starts, each in its own session (process group)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Server] = []

    def start(
        self,
        name: str,
        cmd: list[str],
        port: int,
        ready: tuple[str, str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Server:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        server = Server(name, proc, port, log)
        self.running.append(server)
        method, path = ready
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=5)
                conn.request(method, path, body=b"{}" if method == "POST" else None)
                status = conn.getresponse().status
                conn.close()
                if status < 500 and listens(server):
                    wait_settled(server)
                    return server
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not come up on port {port}:\n{server.log_tail()}")
            time.sleep(0.1)

    def stop(self, server: Server) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=5)
        # workers that outlived their master would still be in the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        if server in self.running:
            self.running.remove(server)

    def stop_all(self) -> None:
        for server in list(self.running):
            self.stop(server)

    @contextlib.contextmanager
    def running_server(self, *args: Any, **kwargs: Any) -> Iterator[Server]:
        server = self.start(*args, **kwargs)
        try:
            yield server
        finally:
            self.stop(server)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def session_cpu(sid: int) -> dict[int, float]:
    """User + system CPU seconds of each live process of session ``sid`` (from /proc)."""
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        rest = raw[raw.rfind(b")") + 2 :].split()
        # fields after "(comm)": state ppid pgrp session ... utime(14) stime(15), 1-based
        if int(rest[3]) == sid:
            out[int(entry)] = (int(rest[11]) + int(rest[12])) / _CLK_TCK
    return out


def listens(server: Server) -> bool:
    """Whether the socket listening on the server's port belongs to the server's processes.

    Other programs on the machine pick free ports too; an answer on the port proves nothing.
    """
    address = "".join(f"{int(octet):02X}" for octet in reversed(HOST.split(".")))
    wanted = f"{address}:{server.port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            cols = line.split()
            if cols[1] == wanted and cols[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    for pid in session_cpu(server.proc.pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return True
    return False


def machine_busy_seconds() -> float:
    """CPU seconds spent by the whole machine, all cores (from /proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLK_TCK


def wait_quiet(limit: float) -> float:
    """Wait (at most ``limit`` s) until the rest of the machine is idle; return its cores."""
    deadline = time.monotonic() + limit
    calm = 0
    while True:
        own0, busy0, t0 = time.process_time(), machine_busy_seconds(), time.monotonic()
        time.sleep(0.5)
        own, busy = time.process_time() - own0, machine_busy_seconds() - busy0
        cores = max(0.0, busy - own) / (time.monotonic() - t0)
        calm = calm + 1 if cores < NOISY_CORES / 2 else 0
        if calm >= 3 or time.monotonic() >= deadline:
            return cores


def wait_settled(server: Server, limit: float = 60.0) -> None:
    """Wait until the server's processes are idle: every worker has finished booting.

    The first answer to the readiness probe may come from one worker while the others still
    build their app; keep-alive connections opened then would all stay on that one worker.
    """
    deadline = time.monotonic() + limit
    quiet = 0
    last = sum(session_cpu(server.proc.pid).values())
    while quiet < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        now = sum(session_cpu(server.proc.pid).values())
        quiet = quiet + 1 if now - last < 0.01 else 0
        last = now


# -- load client -------------------------------------------------------------------------------


def _parse_response(buf: bytearray) -> tuple[int, bool, bytes] | None:
    """(status, server closes, body) once ``buf`` holds one whole HTTP/1.1 response."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    close = lines[0].startswith("HTTP/1.0")
    length = -1
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            close = value == "close"
    start = end + 4
    if chunked:
        body = bytearray()
        pos = start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", eol)
                return (status, close, bytes(body)) if trailer_end >= 0 else None
            if len(buf) < eol + 2 + size + 2:
                return None
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
    if length < 0:
        length = 0  # no body framing: only bodiless responses are expected here
    if len(buf) - start < length:
        return None
    return status, close, bytes(buf[start : start + length])


@dataclass
class LoadResult:
    ok: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    total_ok: int
    total_failed: int
    failure_sample: str
    client_cpu: float
    server_cpu: float
    process_cpu: list[float]
    other_cpu: float
    exhausted: bool

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def cpu_ms_per_request(self) -> float:
        """Server CPU milliseconds per successful request in the window."""
        return 1000 * self.server_cpu / self.rate if self.rate else float("nan")

    def cpu_split(self) -> str:
        """CPU cores used per server process, busiest first (idle ones left out)."""
        busy = [c for c in self.process_cpu if c >= 0.005] or [0.0]
        return "+".join(f"{c:.2f}" for c in busy)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0] * 1000
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(p) - 1] * 1000


@dataclass
class _Conn:
    sock: socket.socket | None = None
    req: bytes = b""
    sent: float = 0.0
    served: int = 0
    buf: bytearray = field(default_factory=bytearray)


def run_load(
    server: Server,
    next_request: Callable[[], bytes | None],
    ok: Callable[[int, bytes], bool],
    clients: int,
    warmup: float,
    seconds: float,
    per_connection: int,
) -> LoadResult:
    """A closed loop of ``clients`` connections, each with one request in flight.

    A connection is closed by the client after ``per_connection`` responses and opened anew,
    as by many clients over time: kept-alive connections opened at once would otherwise stay
    on whichever server process accepted them first.
    """
    sel = selectors.DefaultSelector()
    conns = [_Conn() for _ in range(clients)]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    total_ok = total_failed = 0
    sample = ""
    exhausted_at: float | None = None

    def connect(c: _Conn) -> None:
        try:
            c.sock = socket.create_connection((HOST, server.port))
        except OSError as exc:
            state = "running" if server.proc.poll() is None else f"exit {server.proc.returncode}"
            raise RuntimeError(
                f"{server.name} ({state}) refused a connection: {exc}\n{server.log_tail()}"
            ) from exc
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sel.register(c.sock, selectors.EVENT_READ, c)

    def drop(c: _Conn) -> None:
        if c.sock is not None:
            sel.unregister(c.sock)
            c.sock.close()
            c.sock = None

    def send(c: _Conn, req: bytes) -> None:
        c.req = req
        c.buf.clear()
        c.sent = time.perf_counter()
        if c.sock is None:
            connect(c)
            c.served = 0
        assert c.sock is not None
        c.sock.sendall(req)

    start = time.perf_counter()
    t0 = start + warmup
    t1 = t0 + seconds
    for c in conns:
        req = next_request()
        if req is None:
            raise RuntimeError("no requests to send")
        send(c, req)
    cpu: list[tuple[float, float, dict[int, float], float]] = []  # at t0 and at t1

    def sample_cpu() -> None:
        wall = time.perf_counter()
        cpu.append(
            (wall, time.process_time(), session_cpu(server.proc.pid), machine_busy_seconds())
        )

    while sel.get_map():
        now = time.perf_counter()
        if len(cpu) < 2 and now >= (t0, t1)[len(cpu)]:
            sample_cpu()
        if now > t1 + 60:
            raise RuntimeError(f"{server.name}: responses still missing 60 s after the end")
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} died under load:\n{server.log_tail()}")
        for key, _ in sel.select(timeout=0.5):
            c: _Conn = key.data
            assert c.sock is not None
            try:
                chunk = c.sock.recv(262144)
            except ConnectionError:
                chunk = b""
            if not chunk:
                drop(c)
                if not c.buf:  # an idle keep-alive connection closed by the server: resend
                    send(c, c.req)
                    continue
                raise RuntimeError(f"{server.name} closed a connection mid-response")
            c.buf += chunk
            parsed = _parse_response(c.buf)
            if parsed is None:
                continue
            status, close, body = parsed
            done = time.perf_counter()
            good = ok(status, body)
            if good:
                total_ok += 1
            else:
                total_failed += 1
                if not sample:
                    sample = f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
            if t0 <= done < t1 and exhausted_at is None:
                statuses[status if good else -status] += 1
                if good:
                    latencies.append(done - c.sent)
            c.served += 1
            if close or c.served >= per_connection:
                drop(c)
            if done >= t1:
                drop(c)
                continue
            req = next_request()
            if req is None:
                exhausted_at = exhausted_at or done
                drop(c)
                continue
            send(c, req)
    end = min(t1, exhausted_at) if exhausted_at is not None else t1
    window = end - t0
    if window <= 0 or not cpu:
        raise RuntimeError(f"{server.name}: the requests ran out during the warm-up")
    if len(cpu) == 1:
        sample_cpu()
    (w0, client0, server0, busy0), (w1, client1, server1, busy1) = cpu
    measured = w1 - w0
    client_cpu = client1 - client0
    per_process = sorted((server1[pid] - server0.get(pid, 0.0) for pid in server1), reverse=True)
    busy = busy1 - busy0
    return LoadResult(
        ok=len(latencies),
        seconds=window,
        latencies=latencies,
        statuses=statuses,
        total_ok=total_ok,
        total_failed=total_failed,
        failure_sample=sample,
        client_cpu=client_cpu / measured,
        server_cpu=sum(per_process) / measured,
        process_cpu=[c / measured for c in per_process],
        other_cpu=max(0.0, busy - client_cpu - sum(per_process)) / measured,
        exhausted=exhausted_at is not None and exhausted_at < t1,
    )


class OneEach:
    """Hands out each request once, then None; what was never handed out can be kept."""

    def __init__(self, items: list[bytes]) -> None:
        self.items = items
        self.i = 0

    def __call__(self) -> bytes | None:
        if self.i >= len(self.items):
            return None
        self.i += 1
        return self.items[self.i - 1]

    def unsent(self) -> list[bytes]:
        return self.items[self.i :]


def cycling(items: list[bytes]) -> Callable[[], bytes]:
    state = {"i": 0}

    def nxt() -> bytes:
        i = state["i"]
        state["i"] = i + 1
        return items[i % len(items)]

    return nxt


def post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


# -- client keys and CSRs ----------------------------------------------------------------------


def make_csrs(n: int, tag: str) -> list[str]:
    """``n`` PKCS#10 requests, each for a fresh P-256 key (made client-side, not timed)."""
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bench Trading Co."),
                x509.NameAttribute(NameOID.COMMON_NAME, f"bench {tag} {i}"),
            ]
        )
        csr = (
            x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


# -- our CA: set-up against its database (not timed) -------------------------------------------


def bench_uscc(i: int) -> str:
    from ca.uscc import check_character

    body = f"91110000{i:09d}"
    return body + check_character(body)


class CodeMint:
    """Approved applications and their one-time codes, made directly in the CA's database.

    The CA's own ``apply`` and ``approve_at_ceremony`` (the development set-up's path), on the
    very authority and store ``create_app`` wires for the server (so that every event also
    reaches whatever the server's store appends it to), with ``synchronous=OFF`` on this
    process's connections only: set-up speed is not what is measured.
    """

    def __init__(self, data_dir: Path) -> None:
        from sqlalchemy import event

        from ca.app import EXTENSION, create_app, db
        from ca.config import CAConfig
        from ca.devinit import ensure_dev_ca

        self.cfg = CAConfig.load({"data_dir": data_dir, "dev": True}, environ={})
        ensure_dev_ca(self.cfg)
        self.app = create_app(self.cfg)
        self.context = self.app.app_context()
        self.context.push()

        @event.listens_for(db.engine, "connect")
        def _fast(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA synchronous=OFF")

        db.engine.dispose()  # connections made before the listener would keep FULL
        self.db = db
        self.service = self.app.extensions[EXTENSION]
        self.authority = self.service.authority
        self.policies = self.authority.policies
        self.minted = 0
        self.db_path = data_dir / "eport.db"

    def codes(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            i = self.minted
            self.minted += 1
            app = self.authority.apply(
                "enterprise",
                {"uscc": bench_uscc(i), "legal_name": f"Bench Trading Co. {i}"},
                applicant="bench",
            )
            out.append(self.authority.approve_at_ceremony(app.id, "ceremony:bench").code)
        self.db.session.remove()
        return out

    def stored(self) -> tuple[int, int]:
        """Certificates in the database, and certificate-issued events in its log."""
        from ca.records import EventType

        with contextlib.closing(sqlite3.connect(self.db_path)) as db:
            certs = db.execute("SELECT count(*) FROM certificates").fetchone()[0]
            events = db.execute(
                "SELECT count(*) FROM events WHERE type = ?",
                (EventType.CERTIFICATE_ISSUED.value,),
            ).fetchone()[0]
        return int(certs), int(events)

    def close(self) -> None:
        self.db.session.remove()
        self.db.engine.dispose()
        self.context.pop()


# -- baselines ---------------------------------------------------------------------------------


def timed_loop(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """Calls of ``fn`` per second on this thread, and the cores the rest of the machine used."""
    fn()  # warm
    n = 0
    start = time.perf_counter()
    own0, busy0 = time.process_time(), machine_busy_seconds()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            took = now - start
            own, busy = time.process_time() - own0, machine_busy_seconds() - busy0
            return n / took, max(0.0, busy - own) / took


def raw_signing_rate(seconds: float) -> tuple[float, float]:
    """cryptography's CertificateBuilder.sign (P-256, ECDSA-SHA256), one thread."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Issuing CA")])
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    subject_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bench Trading Co."),
            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, "NTRCN-911100000000000017"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Bench Trading Co."),
        ]
    )
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    policies = x509.CertificatePolicies(
        [x509.PolicyInformation(x509.ObjectIdentifier("1.3.6.1.5.5.7.13.2"), None)]
    )

    def one() -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(subject_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=730))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), False)
            .add_extension(aki, critical=False)
            .add_extension(policies, critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca_key, hashes.SHA256())
        )

    return timed_loop(one, seconds)


def factory_rate(mint: CodeMint, lint: bool, seconds: float) -> tuple[float, float]:
    """CertificateFactory.issue for the enterprise profile in-process, one thread.

    The server's own factory (as ``create_app`` configured it), with linting forced on or off.
    """
    factory = copy.copy(mint.authority.factory)
    factory.lint_sampler = lambda: lint
    profile = mint.policies.profile("enterprise")
    issuer = mint.authority.issuers[profile.issuer]
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    vetted = {"uscc": bench_uscc(0), "legal_name": "Bench Trading Co."}
    now = datetime.datetime.now(datetime.UTC)
    return timed_loop(lambda: factory.issue(profile, issuer, key, vetted, now), seconds)


def enroll_cpu(mint: CodeMint, n: int) -> tuple[float, float]:
    """CPU seconds per unlinted enrollment on one thread in this process, and the cores the
    rest of the machine used meanwhile.

    ``POST /ca/v1/enroll`` through the server app's own WSGI callable (Flask's test client: no
    socket, no HTTP parsing, no gunicorn), each with a fresh code and CSR: the code redeemed,
    the CSR checked, the certificate signed and stored with its event and log entry (the
    minting connections run ``synchronous=OFF``, but the issuance writer syncs the WAL itself,
    as in the server: :mod:`ca.groupwrite`). CPU time, not wall time, so a busy machine
    does not change it much. What an HTTP server can do at most on every core is about the
    cores over this (plus the lint rate times pkilint's cost).
    """
    factory = mint.authority.factory
    sampler = factory.lint_sampler
    warm = 20
    codes = mint.codes(n + warm)
    bodies = [
        {"code": code, "profile": "enterprise", "csr": csr}
        for code, csr in zip(codes, make_csrs(n + warm, "probe"), strict=True)
    ]
    client = mint.app.test_client()
    own0 = busy0 = t0 = 0.0
    factory.lint_sampler = lambda: False
    try:
        for i, body in enumerate(bodies):
            if i == warm:
                own0, busy0, t0 = time.process_time(), machine_busy_seconds(), time.monotonic()
            resp = client.post(ENROLL_PATH, json=body)
            if resp.status_code != 201:
                raise RuntimeError(f"in-process enroll: HTTP {resp.status_code}: {resp.text}")
    finally:
        factory.lint_sampler = sampler
        mint.db.session.remove()
    own, busy = time.process_time() - own0, machine_busy_seconds() - busy0
    return own / n, max(0.0, busy - own) / (time.monotonic() - t0)


@dataclass
class Floor:
    """CPU seconds per enrollment of the work this design cannot skip, by part."""

    csr: float = 0.0
    sign: float = 0.0
    verify: float = 0.0
    store: float = 0.0
    flush: float = 0.0
    """Of ``store``: the WAL's ``fdatasync``."""

    @property
    def total(self) -> float:
        return self.csr + self.sign + self.verify + self.store

    def describe(self) -> str:
        return (
            f"CSR parse and proof of possession {1000 * self.csr:.3f}, sign "
            f"{1000 * self.sign:.3f}, verify under the issuer {1000 * self.verify:.3f}, "
            f"SQL {1000 * (self.store - self.flush):.3f} and WAL flush {1000 * self.flush:.3f} ms"
        )


SPKI_DER = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _right_edge(db: sqlite3.Connection, size: int) -> list[tuple[int, bytes]]:
    """The perfect subtrees of a log of ``size`` entries, largest first: (level, hash)."""
    edge, start = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            (digest,) = db.execute(
                "SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, start >> level)
            ).fetchone()
            edge.append((level, bytes(digest)))
            start += 1 << level
    return edge


def floor_cpu(mint: CodeMint, n: int) -> Floor:
    """The least CPU one enrollment of this design costs, whatever the code around it.

    Each part is only the library call that does it, timed on its own over ``n``
    enrollments (CPU time):

    - the CSR: ``load_pem_x509_csr`` and its signature check, on fresh CSRs;
    - the signature: ``CertificateBuilder.sign`` with the issuing CA's key, on builders the
      factory made beforehand (untimed: building the subject and extensions is glue);
    - the check of the signed certificate under the issuer (``verify_directly_issued_by``);
    - the storage, with the ``sqlite3`` module alone on a copy of the CA's database and
      the CA's own statements (``ca.store``, ``ca.groupwrite``, ``ca.translog``): the
      key's hash and the pre-signing reads (the code with its application, the key's
      holder), then one transaction (``BEGIN IMMEDIATE``, read the log head, redeem the
      code, insert the certificate, its event and its log entry, the leaf and the subtrees
      it completes, move the head to the new root, ``COMMIT``) and an ``fdatasync`` of
      the WAL, with the log's right edge kept in memory. Afterwards (untimed) the log's
      root is recomputed from all its entries by the auditor's code and must match.

    Nothing here is JSON, HTTP, records or objects of ours: it bounds what any handler in
    this language and stack, calling these libraries, spends per enrollment.
    """
    import hashlib

    from ca import groupwrite, store, translog
    from ca.authority import hash_code
    from ca.signer import in_memory_key
    from cli import auditproof

    factory = mint.authority.factory
    profile = mint.policies.profile("enterprise")
    issuer = mint.authority.issuers[profile.issuer]
    key = in_memory_key(issuer.signer)
    if key is None:
        raise RuntimeError("the floor needs the issuing key in memory (the dev CA's is)")
    algorithm = issuer.signer.key_type.hash_algorithm
    codes = mint.codes(n)
    pems = [c.encode() for c in make_csrs(n, "floor")]
    now = datetime.datetime.now(datetime.UTC)
    floor = Floor()

    start = time.process_time()
    csrs = [x509.load_pem_x509_csr(pem) for pem in pems]
    if not all(csr.is_signature_valid for csr in csrs):
        raise RuntimeError("a floor CSR does not verify")
    floor.csr = (time.process_time() - start) / n

    builders = [
        factory.tbs_builder(
            profile,
            issuer,
            csr.public_key(),
            {"uscc": bench_uscc(i), "legal_name": f"Bench Trading Co. {i}"},
            x509.random_serial_number(),
            now,
        )
        for i, csr in enumerate(csrs)
    ]
    start = time.process_time()
    certs = [b.sign(key, algorithm) for b in builders]
    ders = [c.public_bytes(serialization.Encoding.DER) for c in certs]
    floor.sign = (time.process_time() - start) / n
    start = time.process_time()
    for cert in certs:
        cert.verify_directly_issued_by(issuer.certificate)
    floor.verify = (time.process_time() - start) / n

    copy_path = mint.db_path.with_name("floor.db")
    with (
        contextlib.closing(sqlite3.connect(mint.db_path)) as src,
        contextlib.closing(sqlite3.connect(copy_path)) as dst,
    ):
        src.backup(dst)
    db = sqlite3.connect(copy_path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # the flush below is the commit's sync
        wal = f"{copy_path}-wal"
        hashes_ = [hash_code(c) for c in codes]
        at = now.isoformat(sep=" ")
        sha256 = hashlib.sha256
        (size,) = db.execute(translog._SELECT_SIZE).fetchone()
        edge = _right_edge(db, size)  # kept in memory from here on
        start = time.process_time()
        for i, (code_hash, cert, der) in enumerate(zip(hashes_, certs, ders, strict=True)):
            spki = sha256(cert.public_key().public_bytes(*SPKI_DER)).hexdigest()
            row = db.execute(store._ENROLL_CODE_SQL, (code_hash,)).fetchone()
            db.execute(store._KEY_HOLDER_SQL, (spki,)).fetchone()
            app_id, uscc = row[1], row[7]
            db.execute("BEGIN IMMEDIATE")
            (size,) = db.execute(translog._SELECT_SIZE).fetchone()
            db.execute(groupwrite._REDEEM, (at, code_hash, at))
            # one legal-person credential per enterprise, decided where it is stored
            db.execute(
                groupwrite._CREDENTIAL_IN_FORCE, (uscc, "enterprise", at, "", "revoked")
            ).fetchone()
            serial = format(cert.serial_number, "x")
            digest = sha256(der).hexdigest()
            subject = f"CN=Bench Trading Co. {i}"
            db.execute(
                groupwrite._INSERT_CERT,
                (
                    serial,
                    issuer.id,
                    "enterprise",
                    app_id,
                    uscc,
                    subject,
                    spki,
                    digest,
                    at,
                    at,
                    der,
                    at,
                    size,  # its listing key, its event's leaf (migration 0009)
                ),
            )
            (event_id,) = db.execute(
                groupwrite._INSERT_EVENT,
                (
                    at,
                    "certificate.issued",
                    "enrollment-code",
                    uscc,
                    subject,
                    "enterprise",
                    issuer.id,
                    serial,
                    digest,
                    app_id,
                    "{}",
                    size,  # the event's leaf index, written with it (migration 0008)
                ),
            ).fetchone()
            entry = b'{"event_id":%d,"serial":"%s"}' % (event_id, serial.encode())
            level, digest_ = 0, sha256(b"\x00" + entry).digest()
            nodes = [(0, size, digest_)]
            while edge and edge[-1][0] == level:  # the perfect subtrees the leaf completes
                digest_ = sha256(b"\x01" + edge.pop()[1] + digest_).digest()
                level += 1
                nodes.append((level, size >> level, digest_))
            edge.append((level, digest_))
            root = edge[-1][1]
            for _level, left in reversed(edge[:-1]):  # the new root, folded from the edge
                root = sha256(b"\x01" + left + root).digest()
            db.execute(translog._INSERT_ENTRIES, (size, event_id, entry))
            db.executemany(translog._INSERT_NODES, nodes)
            db.execute(translog._MOVE_HEAD, (size + 1, root))
            db.execute("COMMIT")
            flushing = time.process_time()
            fd = os.open(wal, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            floor.flush += time.process_time() - flushing
        floor.store = (time.process_time() - start) / n
        floor.flush /= n
        leaves = [
            sha256(b"\x00" + bytes(e)).digest()
            for (e,) in db.execute("SELECT entry FROM log_entries ORDER BY idx")
        ]
        (head,) = db.execute(translog._READ_HEAD).fetchone()[1:]
        if auditproof.root_from_leaf_hashes(leaves) != bytes(head):
            raise RuntimeError("the floor's log appends do not give the log's root")
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy_path}{suffix}").unlink(missing_ok=True)
    return floor


# -- cfssl -------------------------------------------------------------------------------------


def cfssl_setup(workdir: Path, journal: str) -> tuple[Path, Path]:
    """A P-256 CA from ``cfssl genkey -initca``, a signing config and an empty SQLite certdb."""
    d = Path(tempfile.mkdtemp(prefix=f"cfssl-{journal}-", dir=workdir))
    csr = {"CN": "Bench cfssl CA", "key": {"algo": "ecdsa", "size": 256}, "names": [{"C": "CN"}]}
    (d / "ca-csr.json").write_text(json.dumps(csr))
    out = subprocess.run(
        ["cfssl", "genkey", "-initca", str(d / "ca-csr.json")],
        check=True,
        capture_output=True,
    )
    made = json.loads(out.stdout)
    (d / "ca.pem").write_text(made["cert"])
    (d / "ca-key.pem").write_text(made["key"])
    (d / "ca-key.pem").chmod(0o600)
    config = {
        "signing": {"default": {"usages": ["digital signature", "client auth"], "expiry": "17520h"}}
    }
    (d / "config.json").write_text(json.dumps(config))
    db_path = d / "certdb.sqlite"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.executescript(CFSSL_CERTDB_SCHEMA)
        mode = db.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]
        if mode.lower() != journal:
            raise RuntimeError(f"could not set journal_mode={journal} on the certdb: {mode}")
        db.commit()
    (d / "db.json").write_text(json.dumps({"driver": "sqlite3", "data_source": str(db_path)}))
    return d, db_path


def cfssl_stored(db_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return int(db.execute("SELECT count(*) FROM certificates").fetchone()[0])


def cfssl_version() -> str:
    out = subprocess.run(["cfssl", "version"], capture_output=True, text=True)
    first = (out.stdout or "").splitlines()
    return first[0].replace("Version: ", "") if first else "?"


def ensure_cfssl() -> bool:
    if shutil.which("cfssl"):
        return True
    if os.geteuid() != 0:
        print("cfssl is missing and this is not root: skipping the cfssl peer", file=sys.stderr)
        return False
    print("installing golang-cfssl (apt-get)...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "golang-cfssl"], check=False, env=env)
    return shutil.which("cfssl") is not None


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    config: str
    rate: float
    result: LoadResult | None = None
    note: str = ""
    other_cpu: float = 0.0
    """Cores the rest of the machine used meanwhile (for HTTP runs, as in ``result``)."""

    def __post_init__(self) -> None:
        if self.result is not None:
            self.other_cpu = self.result.other_cpu


def fmt_rate(r: float) -> str:
    return f"{r:,.0f}" if r >= 100 else f"{r:,.1f}"


def print_table(rows: list[Row]) -> None:
    width = max([26, *(len(r.config) for r in rows)])
    head = (
        f"{'measurement':<36} {'config':<{width}} {'per s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'fail':>5} {'srv CPU':>7} {'ms/req':>6} {'cli CPU':>7} {'other':>5}  note"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.result is None:
            lat = f"{'':>7} {'':>7} {'':>5} {'':>7} {'':>6} {'':>7} {r.other_cpu:>5.2f}"
        else:
            res = r.result
            failed = sum(v for k, v in res.statuses.items() if k < 0)
            lat = (
                f"{res.percentile(50):>7.1f} {res.percentile(99):>7.1f} {failed:>5} "
                f"{res.server_cpu:>7.2f} {res.cpu_ms_per_request():>6.2f} {res.client_cpu:>7.2f} "
                f"{res.other_cpu:>5.2f}"
            )
        print(f"{r.name:<36} {r.config:<{width}} {fmt_rate(r.rate):>8} {lat}  {r.note}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def worker_config(workers: int, threads: int) -> tuple[str, list[str]]:
    kind = "gthread" if threads > 1 else "sync"
    return f"{workers}w x {threads}t ({kind})", ["-k", kind]


@dataclass(frozen=True)
class Config:
    """One gunicorn set-up, as ``eport serve --workers W --threads T`` makes it."""

    workers: int
    threads: int

    @property
    def label(self) -> str:
        return worker_config(self.workers, self.threads)[0]

    @property
    def short(self) -> str:
        return f"{self.workers}x{self.threads}"


def parse_configs(text: str) -> list[Config]:
    """``"2x1,2x4"`` -> gunicorn workers x threads per worker (1 thread: the sync worker)."""
    out: list[Config] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        w, sep, t = part.partition("x")
        if not (sep and w.isdigit() and t.isdigit() and 1 <= int(w) <= 64 and 1 <= int(t) <= 64):
            raise argparse.ArgumentTypeError(
                f"{part!r} is not WORKERSxTHREADS (each 1 to 64, as eport serve takes them), "
                "e.g. 2x4"
            )
        out.append(Config(int(w), int(t)))
    if not out:
        raise argparse.ArgumentTypeError("no configuration given")
    return list(dict.fromkeys(out))


def parse_lint_rates(text: str) -> list[float]:
    """``"1.0,0.01"`` -> the ``EPORT_LINT_SAMPLE_RATE`` values to measure, highest first."""
    out: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            rate = float(part)
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            raise argparse.ArgumentTypeError(f"{part!r} is not a lint rate between 0 and 1")
        out.append(rate)
    if not out:
        raise argparse.ArgumentTypeError("no lint rate given")
    # highest first: the codes minted for a low rate are estimated from the runs at a higher one
    return sorted(set(out), reverse=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    p.add_argument("--quick", action="store_true", help="a smoke run: 3 s runs, 1 s warm-up")
    p.add_argument("--clients", type=int, default=16, help="concurrent connections")
    p.add_argument(
        "--per-connection",
        type=int,
        default=20,
        help="requests a client sends on one connection before opening a new one",
    )
    p.add_argument(
        "--configs",
        type=parse_configs,
        default=DEFAULT_CONFIGS,
        metavar="WxT,...",
        help="gunicorn workers x threads per worker to measure, each with every lint rate and "
        f"its own hello-world (threads 1 = the sync worker, as eport serve picks it) "
        f"[default: {DEFAULT_CONFIGS}]",
    )
    p.add_argument(
        "--lint-rates",
        type=parse_lint_rates,
        default=DEFAULT_LINT_RATES,
        metavar="R,...",
        help="EPORT_LINT_SAMPLE_RATE values to measure each configuration with "
        f"(1.0 = every certificate linted, the CA's default) [default: {DEFAULT_LINT_RATES}]",
    )
    p.add_argument("--no-cfssl", action="store_true", help="skip the cfssl peer")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="seconds to wait, at most, for the rest of the machine to go idle before each run",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="runs disturbed by other processes are repeated up to this many times",
    )
    p.add_argument("--tmp", type=Path, default=None, help="parent of the temporary data dir")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = 3.0, 1.0
    with_cfssl = not args.no_cfssl and ensure_cfssl()

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="eport-bench-", dir=args.tmp))
    servers = Servers(workdir)

    def on_term(_sig: int, _frame: Any) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return Bench(args, workdir, servers).run(with_cfssl, started)
    finally:
        servers.stop_all()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _filesystem(path: Path) -> str:
    """The mount point and filesystem type holding ``path`` (fsync is real only on a disk)."""
    best = ("/", "?")
    target = str(path.resolve())
    with open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            mnt, kind = parts[1], parts[2]
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(
                best[0]
            ):
                best = (mnt, kind)
    return f"{best[1]} ({best[0]})"


def _source() -> str:
    """Where the ``ca`` package under test comes from, and its git revision if any."""
    import ca

    root = Path(ca.__file__).resolve().parent.parent
    out = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    rev = out.stdout.strip() if out.returncode == 0 else "not a git checkout"
    return f"{root} ({rev})"


def _default_lint_rate() -> float:
    """``EPORT_LINT_SAMPLE_RATE``'s default in the CA code measured."""
    from ca.config import CAConfig

    return float(CAConfig.lint_sample_rate)


def lint_design(rate: float, default: float) -> str:
    if rate == default:
        return "the CA's default: every certificate linted" if rate >= 1.0 else "the CA's default"
    if rate <= 0.0:
        return "no certificate linted; only each profile's template, at start"
    return (
        f"the sampled design: each profile's template linted at start, "
        f"then {rate:.0%} of certificates"
    )


@dataclass
class Measured:
    """One configuration's runs: its hello-world and ours at each lint rate."""

    config: Config
    hello: Row
    ours: dict[float, Row]


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, servers: Servers) -> None:
        self.args = args
        self.workdir = workdir
        self.servers = servers
        self.data_dir = workdir / "eport"
        self.span = float(args.warmup + args.seconds)
        self.mint: CodeMint
        self.pool: list[bytes] = []  # enrollment requests whose codes were never sent
        self.issue_cost = (0.0, 0.0)  # in-process seconds per certificate: lint, the rest
        self.enroll_cost = 0.0  # in-process CPU seconds per unlinted enrollment
        self.hello_rates: dict[Config, float] = {}
        # (config, lint rate): the best rate/s seen and the server's cores during it
        self.seen: dict[tuple[Config, float], tuple[float, float]] = {}

    def expect(self, config: Config, lint_rate: float) -> float:
        """Enrollments/s to mint codes for: a guess with a margin, under upper bounds.

        Only runs the rest of the machine left alone count as seen. The bounds: the hello-world
        rate of the same config (no handler in it answers faster), and every core doing
        nothing but in-process enrollments at this lint rate (the server pays for HTTP on
        top, which outweighs what group commit saves), each times
        :data:`BOUND_MARGIN`. The guess: the fastest run at this lint rate so far (any config)
        times :data:`MINT_MARGIN`; before any, from every run at another lint rate, its server
        CPU per certificate less or plus the in-process cost of the lint rate's difference, on
        at least one core, times the margin. Before any run: the bounds. (A run whose codes
        run out is repeated once, see :meth:`ours`.)
        """
        lint, rest = self.issue_cost
        cores = os.cpu_count() or 2
        cap = BOUND_MARGIN * cores / max(self.enroll_cost + lint_rate * lint, 1e-6)
        if self.hello_rates.get(config):
            cap = min(cap, BOUND_MARGIN * self.hello_rates[config])
        same = [rate for (_c, other), (rate, _u) in self.seen.items() if other == lint_rate]
        guesses = [MINT_MARGIN * rate for rate in same if rate > 0] or [
            MINT_MARGIN * max(used, 1.0) / max(used / rate + (lint_rate - other) * lint, rest)
            for (_config, other), (rate, used) in self.seen.items()
            if rate > 0
        ]
        return min(cap, max(guesses)) if guesses else cap

    def top_up(self, rate: float) -> int:
        """Mint codes (untimed) until the pool lasts a run at ``rate``/s; how many were made."""
        need = int(rate * self.span) + 4 * int(self.args.clients) - len(self.pool)
        if need <= 0:
            return 0
        codes = self.mint.codes(need)
        csrs = make_csrs(need, "ours")
        self.pool += [
            post(ENROLL_PATH, {"code": code, "profile": "enterprise", "csr": csr})
            for code, csr in zip(codes, csrs, strict=True)
        ]
        return need

    def measure(self, run: Callable[[], Row]) -> Row:
        """``run`` once the machine is quiet; again (``--retries``) if others used it meanwhile.

        Of the attempts, the one the rest of the machine disturbed least is kept.
        """
        kept: Row | None = None
        for attempt in range(1 + self.args.retries):
            wait_quiet(self.args.quiet_wait)
            row = run()
            if kept is None or row.other_cpu < kept.other_cpu:
                kept = row
            if row.other_cpu <= NOISY_CORES:
                break
            if attempt < self.args.retries:
                print(f"    (others used {row.other_cpu:.2f} cores meanwhile: again)", flush=True)
        assert kept is not None
        return kept

    def load(self, server: Server, nxt: Callable[[], bytes | None], status: int) -> LoadResult:
        a = self.args
        return run_load(
            server,
            nxt,
            lambda st, _b: st == status,
            a.clients,
            a.warmup,
            a.seconds,
            a.per_connection,
        )

    def ours(self, config: Config, lint_rate: float) -> Row:
        """Enrollments over HTTP; run once more, with more codes, if the codes ran out."""
        rate = self.expect(config, lint_rate)
        starved_before = False
        while True:
            res, stored, setup, minted = self._ours_once(config, lint_rate, rate)
            # a run others disturbed is no guide to what an undisturbed one needs
            quiet = res.other_cpu <= NOISY_CORES
            if quiet and res.rate > self.seen.get((config, lint_rate), (0.0, 0.0))[0]:
                self.seen[(config, lint_rate)] = (res.rate, res.server_cpu)
            print(
                f"  ours-{config.short}-lint{lint_rate:g}: {res.rate:,.1f}/s, "
                f"server CPU {res.cpu_split()} (set-up {setup:.1f} s untimed: {minted} codes "
                f"minted, {rate:,.0f}/s provisioned)",
                flush=True,
            )
            if not res.exhausted or starved_before:
                break
            starved_before = True
            rate = 2.0 * max(rate, res.rate)
            print("    (codes ran out before the end: again, with more)", flush=True)
        certs, events = stored
        notes = [f"{res.total_ok} x 201: {certs} certs, {events} events stored"]
        if not certs == events == res.total_ok:
            notes.append("MISMATCH")
        if res.exhausted:
            notes.append("codes ran out early")
        elif starved_before:
            notes.append("2nd try: codes ran out in the 1st")
        if res.failure_sample:
            notes.append(f"{res.total_failed} failed, e.g. {res.failure_sample}")
        row_name = f"ours enroll, lint rate {lint_rate:.2f}"
        return Row(row_name, config.label, res.rate, res, "; ".join(notes))

    def _ours_once(
        self, config: Config, lint_rate: float, rate: float
    ) -> tuple[LoadResult, tuple[int, int], float, int]:
        t = time.monotonic()
        minted = self.top_up(rate)
        before = self.mint.stored()
        setup = time.monotonic() - t
        port = free_port()
        cmd = [str(BIN / "eport"), "serve", "--dev", "--data-dir", str(self.data_dir)]
        cmd += ["--host", HOST, "--port", str(port)]
        cmd += ["--workers", str(config.workers), "--threads", str(config.threads)]
        env = {"EPORT_LINT_SAMPLE_RATE": repr(lint_rate)}
        name = f"ours-{config.short}-lint{lint_rate:g}"
        ready = ("GET", "/ca/v1/health")
        with self.servers.running_server(name, cmd, port, ready, env=env) as server:
            feed = OneEach(self.pool)
            res = self.load(server, feed, 201)
        self.pool = feed.unsent()
        after = self.mint.stored()
        certs, events = (now - then for now, then in zip(after, before, strict=True))
        return res, (certs, events), setup, minted

    def hello(self, config: Config, requests: list[bytes]) -> Row:
        app_dir = self.workdir / "hello"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "hello_app.py").write_text(HELLO_APP.replace("{path}", ENROLL_PATH))
        label, kind = worker_config(config.workers, config.threads)
        port = free_port()
        cmd = [str(BIN / "gunicorn"), "--chdir", str(app_dir), "--bind", f"{HOST}:{port}"]
        cmd += ["--workers", str(config.workers), "--threads", str(config.threads), *kind]
        cmd += [*GUNICORN_COMMON, "hello_app:app"]
        name = f"hello-{config.short}"
        with self.servers.running_server(name, cmd, port, ("GET", "/health")) as server:
            res = self.load(server, cycling(requests), 200)
        print(f"  {name}: {res.rate:,.1f}/s, server CPU {res.cpu_split()}", flush=True)
        note = "same request bytes as enroll"
        if res.failure_sample:
            note += f"; {res.total_failed} failed, e.g. {res.failure_sample}"
        return Row("hello-world Flask (HTTP ceiling)", label, res.rate, res, note)

    def cfssl(self, journal: str, csrs: list[str]) -> Row:
        d, db_path = cfssl_setup(self.workdir, journal)
        requests = [post(CFSSL_SIGN_PATH, {"certificate_request": c}) for c in csrs]
        port = free_port()
        cmd = ["cfssl", "serve", "-address", HOST, "-port", str(port)]
        cmd += ["-ca", str(d / "ca.pem"), "-ca-key", str(d / "ca-key.pem")]
        cmd += ["-config", str(d / "config.json"), "-db-config", str(d / "db.json")]
        cmd += ["-loglevel", "3"]  # warnings and up, as our gunicorn logs
        env = {"GOMAXPROCS": str(os.cpu_count() or 2)}
        name = f"cfssl-{journal}"
        ready = ("POST", "/api/v1/cfssl/info")
        with self.servers.running_server(name, cmd, port, ready, env=env) as server:
            res = run_load(
                server,
                cycling(requests),
                lambda st, body: st == 200 and b'"success":true' in body,
                self.args.clients,
                self.args.warmup,
                self.args.seconds,
                self.args.per_connection,
            )
        stored = cfssl_stored(db_path)
        notes = [f"{stored} stored / {res.total_ok} x 200"]
        if stored != res.total_ok:
            notes.append("MISMATCH")
        if res.failure_sample:
            notes.append(f"{res.total_failed} failed, e.g. {res.failure_sample}")
        print(f"  {name}: {res.rate:,.1f}/s, server CPU {res.cpu_split()}", flush=True)
        label = CFSSL_LABELS[journal]
        return Row(f"cfssl {cfssl_version()} sign", label, res.rate, res, "; ".join(notes))

    def run(self, with_cfssl: bool, started: float) -> int:
        a = self.args
        print(
            f"E-Port issuance benchmark: {os.cpu_count()} CPUs, {a.clients} clients, "
            f"{a.seconds:g} s measured after {a.warmup:g} s warm-up per run; "
            f"data on {_filesystem(self.workdir)}",
            flush=True,
        )
        print(f"Measuring the CA code in {_source()}", flush=True)
        print(
            f"Configs {', '.join(c.label for c in a.configs)}; lint rates "
            f"{', '.join(f'{r:.2f}' for r in a.lint_rates)}; cfssl "
            f"{'certdb as shipped and in WAL' if with_cfssl else 'not measured'}",
            flush=True,
        )
        self.mint = CodeMint(self.data_dir)
        try:
            return self._run(with_cfssl, started)
        finally:
            self.mint.close()

    def _run(self, with_cfssl: bool, started: float) -> int:
        a = self.args
        rows: list[Row] = []
        short = min(a.seconds, 3.0)

        def in_process(name: str, config: str, fn: Callable[[], tuple[float, float]]) -> Row:
            def run() -> Row:
                rate, other = fn()
                return Row(name, config, rate, other_cpu=other)

            return self.measure(run)

        raw_row = in_process(
            "raw cryptography sign, 1 thread",
            "P-256 ECDSA-SHA256",
            lambda: raw_signing_rate(short),
        )
        alone = "1 thread, no HTTP, no DB"
        on_row = in_process(
            "ours issue() in-process, linted", alone, lambda: factory_rate(self.mint, True, short)
        )
        off_row = in_process(
            "ours issue() in-process, unlinted",
            alone,
            lambda: factory_rate(self.mint, False, short),
        )
        probe: list[float] = []

        def enroll_probe() -> tuple[float, float]:
            cpu, other = enroll_cpu(self.mint, ENROLL_PROBE)
            probe.append(cpu)
            return 1 / cpu, other

        enroll_row = in_process(
            "ours enroll in-process, unlinted",
            "1 thread, test client, WAL fsync",
            enroll_probe,
        )
        enroll_row.note = f"1 / CPU s per enrollment, {ENROLL_PROBE} enrollments"
        rows += [raw_row, on_row, off_row, enroll_row]
        raw, lint_on, lint_off = raw_row.rate, on_row.rate, off_row.rate
        print(
            f"  in-process: raw sign {raw:,.0f}/s, issue() linted {lint_on:,.0f}/s, "
            f"unlinted {lint_off:,.0f}/s; enroll unlinted {enroll_row.rate:,.0f}/s of CPU",
            flush=True,
        )
        self.issue_cost = (max(1 / lint_on - 1 / lint_off, 0.0), 1 / lint_off)
        self.enroll_cost = min(probe)
        wait_quiet(a.quiet_wait)
        floor = min((floor_cpu(self.mint, ENROLL_PROBE) for _ in range(2)), key=lambda f: f.total)
        print(f"  floor: {1000 * floor.total:.3f} ms of CPU per enrollment ({floor.describe()})")

        pool = make_csrs(4000, "pool")
        hello_reqs = [
            post(ENROLL_PATH, {"code": "NOT-A-CODE", "profile": "enterprise", "csr": c})
            for c in pool
        ]
        measured: list[Measured] = []
        for config in a.configs:
            hello = self.measure(functools.partial(self.hello, config, hello_reqs))
            self.hello_rates[config] = hello.rate
            ours = {
                rate: self.measure(functools.partial(self.ours, config, rate))
                for rate in a.lint_rates
            }
            measured.append(Measured(config, hello, ours))
            rows += [hello, *ours.values()]
        peers: dict[str, Row] = {}
        if with_cfssl:
            for journal in CFSSL_LABELS:
                peers[journal] = self.measure(functools.partial(self.cfssl, journal, pool))
        rows += peers.values()

        print()
        print_table(rows)
        print()
        print(
            "fail = non-success responses in the window; srv CPU, cli CPU, other = cores used\n"
            "while measuring by the server, the load client, and anything else on the machine;\n"
            "ms/req = server CPU milliseconds per successful request."
        )
        noisy = [r for r in rows if r.other_cpu > NOISY_CORES]
        if noisy:
            worst = max(r.other_cpu for r in noisy)
            print(
                f"WARNING: other processes used up to {worst:.2f} cores during "
                f"{len(noisy)} of the runs: those numbers are low and not comparable."
            )
        print()
        self.report(measured, peers, raw, floor)
        print(f"\nTotal run time {time.monotonic() - started:.0f} s.")
        return 0

    def report(
        self, measured: list[Measured], peers: dict[str, Row], raw: float, floor: Floor
    ) -> None:
        """The goals, for each lint rate at its fastest config and for every config."""
        lint_rates: list[float] = self.args.lint_rates
        default = _default_lint_rate()
        shipped = peers.get("delete")
        wal = peers.get("wal")
        peer_name = f"cfssl, {CFSSL_LABELS['delete']}"

        def flags(row: Row) -> str:
            """Why a number may not be what it seems (the table's note says more)."""
            out = [w for w in ("MISMATCH", "codes ran out early") if w in row.note]
            if row.other_cpu > NOISY_CORES:
                out.append(f"disturbed: others used {row.other_cpu:.2f} cores")
            return f"  ({'; '.join(out)})" if out else ""

        print(
            f"Goals: ours >= {GOAL_VS_HELLO:.0%} of the hello-world of the same config, and "
            f">= {GOAL_VS_CFSSL:g}x {peer_name}"
        )
        if shipped is None:
            print("  cfssl: not measured, so the cfssl goal is a MISS (no peer number)")
        for lint_rate in lint_rates:
            best = max(measured, key=lambda m: m.ours[lint_rate].rate)
            row, hello = best.ours[lint_rate], best.hello
            print(f"  lint rate {lint_rate:.2f} ({lint_design(lint_rate, default)})")
            share = row.rate / hello.rate if hello.rate else 0.0
            head = f"    fastest config {best.config.label}: {fmt_rate(row.rate):>6}/s"
            print(
                f"{head} = {share:6.1%} of its hello-world {fmt_rate(hello.rate)}/s".ljust(96)
                + f"goal >= {GOAL_VS_HELLO:.0%}: {verdict(share >= GOAL_VS_HELLO)}"
                + flags(row)
            )
            if shipped is not None:
                times = row.rate / shipped.rate if shipped.rate else 0.0
                print(
                    f"{head} = {times:6.2f}x cfssl as shipped {fmt_rate(shipped.rate)}/s".ljust(96)
                    + f"goal >= {GOAL_VS_CFSSL:g}x: {verdict(times >= GOAL_VS_CFSSL)}"
                    + flags(shipped)
                )
        print(
            "Every config (ours/s, its share of the same config's hello-world"
            + (", and x cfssl as shipped)" if shipped is not None else ")")
        )
        width = max(len(m.config.label) for m in measured)
        cell = 24 if shipped is not None else 17
        print(
            (
                f"    {'config':<{width}} {'hello/s':>8}"
                + "".join(f"   {f'lint rate {r:.2f}':<{cell}}" for r in lint_rates)
            ).rstrip()
        )
        for m in measured:
            cells = []
            for lint_rate in lint_rates:
                row = m.ours[lint_rate]
                share = row.rate / m.hello.rate if m.hello.rate else 0.0
                text = f"{fmt_rate(row.rate):>6}/s {share:6.1%}"
                if shipped is not None:
                    text += f" {row.rate / shipped.rate if shipped.rate else 0.0:5.2f}x"
                cells.append(f"   {text + ('*' if flags(row) else ''):<{cell}}")
            star = "*" if flags(m.hello) else ""
            print(
                (
                    f"    {m.config.label:<{width}} {fmt_rate(m.hello.rate) + star:>8}"
                    + "".join(cells)
                ).rstrip()
            )
        if any(flags(r) for m in measured for r in [m.hello, *m.ours.values()]):
            print("    * flagged or disturbed: see the table's note and 'other' column")
        print("Context")
        fastest = max(measured, key=lambda m: m.hello.rate)
        if wal is not None and wal.rate:
            ceiling = fastest.hello.rate / wal.rate
            where = "above" if ceiling < GOAL_VS_CFSSL else "within"
            print(
                f"  cfssl, {CFSSL_LABELS['wal']}: {fmt_rate(wal.rate)}/s{flags(wal)}; "
                f"{GOAL_VS_CFSSL:g}x of it = {fmt_rate(GOAL_VS_CFSSL * wal.rate)}/s is {where} "
                "this stack's HTTP ceiling:\n"
                f"    fastest hello-world {fmt_rate(fastest.hello.rate)}/s "
                f"({fastest.config.label}) / cfssl-WAL = {ceiling:.2f}x"
                + (", so no handler could reach it" if ceiling < GOAL_VS_CFSSL else "")
            )
        for lint_rate in lint_rates:
            best = max(measured, key=lambda m: m.ours[lint_rate].rate)
            row = best.ours[lint_rate]
            if row.result and row.result.server_cpu > 0:
                per_cpu = row.rate / row.result.server_cpu
                print(
                    f"  lint rate {lint_rate:.2f} at {best.config.label}: {per_cpu:,.0f} "
                    f"certificates per server CPU-second = {per_cpu / raw:.1%} of raw signing "
                    "on one core"
                )
        self.report_floor(measured, peers.get("delete"), floor)

    def report_floor(self, measured: list[Measured], shipped: Row | None, floor: Floor) -> None:
        """What a handler doing nothing but the floor's work could reach, per lint rate at its
        fastest config: the hello-world's server CPU per request plus the floor (and the lint
        rate's share of pkilint), on as many cores as that config's hello-world or ours kept
        busy, whichever is more."""
        f = 1000 * floor.total
        print(
            f"Floor: the library calls of one enrollment alone cost {f:.2f} ms of CPU in-process"
            f" (floor_cpu):\n    {floor.describe()}.\n"
            "    A handler doing nothing else, on as many cores as the same config's hello-world"
            " or ours kept busy,\n    could reach:"
        )
        lint = 1000 * self.issue_cost[0]
        for lint_rate in sorted({r for m in measured for r in m.ours}, reverse=True):
            best = max(measured, key=lambda m: m.ours[lint_rate].rate)
            row, hello = best.ours[lint_rate], best.hello.result
            if hello is None or row.result is None or not hello.rate:
                continue
            h = hello.cpu_ms_per_request()
            cores = max(hello.server_cpu, row.result.server_cpu)
            bound = cores * 1000 / (h + f + lint_rate * lint)
            vs = f", {bound / shipped.rate:.2f}x cfssl as shipped" if shipped else ""
            above = row.result.cpu_ms_per_request() - h - f - lint_rate * lint
            print(
                f"    lint rate {lint_rate:.2f} at {best.config.label}: {fmt_rate(bound)}/s = "
                f"{bound / hello.rate:.0%} of its hello-world{vs}; ours spends "
                f"{above:.2f} ms per enrollment above that"
            )


if __name__ == "__main__":
    sys.exit(main())
