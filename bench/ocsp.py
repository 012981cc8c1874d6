"""Benchmark: our OCSP responder over HTTP, against the HTTP ceiling and OpenSSL's responder.

One run measures, on 127.0.0.1 only, with every server started (and stopped) here:

- **ours**: ``POST /ocsp`` (and ``GET /ocsp/<base64>``) against ``eport serve --dev``
  (gunicorn, ``--workers`` x ``--threads``), 16 concurrent clients, a shuffled mix of
  canonical requests (one SHA-1 CertID, no nonce: what OpenSSL, browsers and our own client
  send) for ``--certs`` real certificates of the enterprise issuing CA, some revoked with
  various reasons and some on hold. Each certificate is asked once before the clock starts,
  so that every answer in the window is the stored pre-signed one (``ca/status.py``
  ``_pre_signed``): the responder's steady state. Two connection modes: a **new connection
  per request**, and **keep-alive** (a connection is closed by the client after
  ``--per-connection`` answers and opened anew, so that the two gunicorn workers share the
  load; see ``bench/issuance.py``).
- **hello**: a hello-world Flask view under gunicorn with the same workers, threads and
  worker class, sent the very same request bytes, in both connection modes: the HTTP ceiling
  of this stack on this machine.
- **openssl**: ``openssl ocsp -index index.txt -port P -rsigner responder.pem -rkey
  responder.key -CA issuing.pem`` (plus ``-ndays 1`` so that its answers carry a nextUpdate
  like ours, and ``-ignore_err`` so that a bad request does not stop it), on the same
  revocation data: our issuing CA certificate and its delegated OCSP responder's certificate
  and key are exported from the dev data dir, and ``index.txt`` is written from our database
  (serial, expiry, revocation time and reason of every certificate in the mix). It signs
  every answer and closes the connection after each (HTTP/1.0), so it is compared with our
  new-connection mode. The goal is against the command above (one process); the same with
  ``-multi 2`` (two forked responder processes, like our two workers) is shown for context.
  Before the clock, every request is sent to both responders and the answers compared
  (status, revocation time and reason): the peer serves the same data. OpenSSL's ``-port``
  has no bind address: it listens on every interface for the few seconds of its runs (the
  load client talks only to 127.0.0.1).
- **revocation delay**: ``eport revoke`` (the real CLI, as an RA officer) on ``--revocations``
  certificates whose good answer was pre-signed and served just before; from the moment the
  command returns, a fresh request on a new connection every 10 ms until the answer is
  revoked. p50 and max of that delay.

The load client is ``bench/issuance.py``'s: one process, one thread, an epoll closed loop, one
request in flight per connection, every request pre-encoded to bytes before the clock starts;
the same client for every row. Server CPU is read from ``/proc`` per process, and so is
the rest of the machine's ("other": anything else running, which makes a run unreliable and
is warned about, as is a high load average at the start). Rows of different servers are
interleaved so that a change of the machine's load over the run hits all of them alike.

Each run first waits (at most ``--quiet-wait`` s) for the rest of the machine to go idle, and
is repeated (``--retries``) when other processes used more than a quarter of a core during
it; the least disturbed attempt is kept, and a goal computed from a disturbed run is flagged
UNRELIABLE. Server CPU per request, shown beside each rate, is the steadier comparison on a
busy machine. ``--time-limit`` (300 s) aborts a run that would go on longer; every server is
stopped (its process group, then whatever is left of its session) on any exit.

Usage: ``python bench/ocsp.py [--quick] [--seconds 10] [--certs 400] [--threads 4]``
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as xocsp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import issuance as kit
from runs import add_run_options, disturbed, load_report, run_in_workdir, steady, stop

HOST = kit.HOST
BIN = kit.BIN
ISSUER = "enterprise"  # the issuing CA of the enterprise and operator profiles
GOAL_VS_OPENSSL = 1.0
GOAL_VS_HELLO = 0.70
GOAL_REVOCATION_DELAY = 1.0  # seconds
POLL_INTERVAL = 0.010
# OpenSSL's index.txt names reasons as apps/ca.c does; privilegeWithdrawn has no name there,
# so the mix uses only reasons both responders can state.
REVOKE_REASONS = ["keyCompromise", "superseded", "affiliationChanged", "cessationOfOperation"]
OPENSSL_REASON = {
    x509.ReasonFlags.key_compromise: "keyCompromise",
    x509.ReasonFlags.superseded: "superseded",
    x509.ReasonFlags.affiliation_changed: "affiliationChanged",
    x509.ReasonFlags.cessation_of_operation: "cessationOfOperation",
    x509.ReasonFlags.certificate_hold: "certificateHold",
    x509.ReasonFlags.unspecified: "unspecified",
}
MULTI_WRAPPER = (
    '"$@" & pid=$!; '
    "trap 'kill -TERM -$pid 2>/dev/null; wait $pid; exit 143' TERM INT HUP; "
    "wait $pid; exit $?"
)
HELLO_APP = '''\
"""Hello world under the same WSGI server: the HTTP ceiling of the benchmark."""
from flask import Flask, request

app = Flask("hello")


@app.get("/health")
def health():
    return "ok"


@app.post("/ocsp")
def hello():
    request.get_data()
    return "Hello, world!\\n"


@app.get("/ocsp/<path:encoded>")
def hello_get(encoded):
    return "Hello, world!\\n"
'''


# -- machine ------------------------------------------------------------------------------------


# -- requests -----------------------------------------------------------------------------------


def post_ocsp(der: bytes, path: str = "/ocsp") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/ocsp-request\r\n"
        f"Content-Length: {len(der)}\r\n\r\n"
    )
    return head.encode() + der


def get_ocsp(der: bytes) -> bytes:
    encoded = quote(base64.b64encode(der).decode(), safe="")
    return f"GET /ocsp/{encoded} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def ocsp_ok(status: int, body: bytes) -> bool:
    """HTTP 200 with an OCSPResponse whose responseStatus is successful (ENUMERATED 0)."""
    if status != 200 or len(body) < 5 or body[0] != 0x30:
        return False
    start = 2 if body[1] < 0x80 else 2 + (body[1] & 0x7F)
    return body[start : start + 3] == b"\x0a\x01\x00"


def hello_ok(status: int, _body: bytes) -> bool:
    return status == 200


def ask(port: int, der: bytes, timeout: float = 10.0) -> xocsp.OCSPResponse:
    """One OCSP request on a new connection; the parsed response."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(
            "POST", "/ocsp", body=der, headers={"Content-Type": "application/ocsp-request"}
        )
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"OCSP on port {port}: HTTP {resp.status}")
    return xocsp.load_der_ocsp_response(body)


def answer_of(resp: xocsp.OCSPResponse) -> tuple[str, ...]:
    """What a relying party reads from a response: status, revocation time and reason."""
    if resp.response_status is not xocsp.OCSPResponseStatus.SUCCESSFUL:
        return (resp.response_status.name,)
    st = resp.certificate_status
    if st is xocsp.OCSPCertStatus.REVOKED:
        when = resp.revocation_time_utc
        reason = resp.revocation_reason
        return (
            "revoked",
            when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else "?",
            reason.name if reason is not None else "-",
        )
    return (st.name.lower(),)


# -- set-up: certificates and their status in our CA (no server running, not timed) -----------


@dataclass
class Cert:
    serial: int
    cert: x509.Certificate
    request: bytes  # DER OCSPRequest, canonical


class Fixture:
    """Certificates issued and revoked in the dev CA's database, in-process, before any server
    runs (the CA's own ``enroll``, ``revoke`` and ``suspend``, as an RA officer), and what the
    peer needs: the issuing CA, its responder's certificate and key, and ``index.txt``."""

    def __init__(self, data_dir: Path, workdir: Path) -> None:
        self.data_dir = data_dir
        self.workdir = workdir
        self.mint = kit.CodeMint(data_dir)  # creates the dev CA on first use
        self.issuer = x509.load_pem_x509_certificate(
            (data_dir / "ca" / "issuers" / f"{ISSUER}.crt").read_bytes()
        )

    def close(self) -> None:
        self.mint.close()

    def issue(self, n: int, tag: str) -> list[Cert]:
        authority = self.mint.authority
        authority.factory.lint_sampler = lambda: False  # set-up speed; not what is measured
        codes = self.mint.codes(n)
        csrs = kit.make_csrs(n, tag)
        out = []
        for code, csr in zip(codes, csrs, strict=True):
            issued = authority.enroll(code, "enterprise", csr)
            der = (
                xocsp.OCSPRequestBuilder()
                .add_certificate(issued.certificate, self.issuer, hashes.SHA1())
                .build()
                .public_bytes(serialization.Encoding.DER)
            )
            out.append(Cert(issued.certificate.serial_number, issued.certificate, der))
        self.mint.db.session.remove()
        return out

    def canonical(self, requests: list[bytes]) -> int:
        """How many requests the responder's fast path takes (``ca.ocsp.canonical_request``)."""
        from ca import ocsp

        responders = list(self.mint.service.status.responders.values())
        return sum(ocsp.canonical_request(r, responders) is not None for r in requests)

    def officer(self, agency: str = "customs") -> list[str]:
        d = self.data_dir / "dev" / "officers" / agency
        return [
            "--cert",
            str(d / "officer.pem"),
            "--key",
            str(d / "officer.key"),
            "--passphrase-file",
            str(d / "DEV-ONLY-passphrase.txt"),
        ]

    def change_status(self, certs: list[Cert], revoked: int, held: int, seed: int) -> None:
        """Revoke ``revoked`` of ``certs`` (reasons in turn) and suspend ``held`` more."""
        from ca.signedreq import SignedRequest

        officer = x509.load_pem_x509_certificate(
            (self.data_dir / "dev" / "officers" / "customs" / "officer.pem").read_bytes()
        )
        caller = self.mint.authority.caller(SignedRequest(officer, (officer,), {}))
        revocation = self.mint.service.revocation
        picked = random.Random(seed).sample(certs, revoked + held)
        for i, c in enumerate(picked[:revoked]):
            revocation.revoke(caller, c.serial, REVOKE_REASONS[i % len(REVOKE_REASONS)])
        for c in picked[revoked:]:
            revocation.suspend(caller, c.serial)
        self.mint.db.session.remove()

    def export_peer(self, certs: list[Cert]) -> Path:
        """OpenSSL's responder directory: issuing.pem, responder.pem/.key, index.txt."""
        d = self.workdir / "openssl"
        d.mkdir()
        ca_dir = self.data_dir / "ca"
        passphrases = tomllib.loads(
            (self.data_dir / "dev" / "DEV-ONLY-passphrases.toml").read_text()
        )
        key = serialization.load_pem_private_key(
            (ca_dir / "responders" / f"{ISSUER}.key").read_bytes(),
            passphrases["ca_key_passphrase"].encode(),
        )
        (d / "responder.key").touch(mode=0o600)
        (d / "responder.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        shutil.copyfile(ca_dir / "responders" / f"{ISSUER}.crt", d / "responder.pem")
        shutil.copyfile(ca_dir / "issuers" / f"{ISSUER}.crt", d / "issuing.pem")
        revocation = self.mint.service.revocation
        lines = []
        for c in certs:
            rec, st = revocation.status_of(c.serial)
            assert rec is not None
            expiry = c.cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
            serial = f"{c.serial:X}"
            serial = "0" * (len(serial) % 2) + serial
            subject = f"/CN=bench {c.serial:x}"  # informational in index.txt
            if st is None:
                lines.append(f"V\t{expiry}\t\t{serial}\tunknown\t{subject}\n")
                continue
            revinfo = st.revoked_at.strftime("%y%m%d%H%M%SZ")
            if st.reason is not None:
                revinfo += "," + OPENSSL_REASON[_reason_flag(st.reason)]
            lines.append(f"R\t{expiry}\t{revinfo}\t{serial}\tunknown\t{subject}\n")
        self.mint.db.session.remove()
        (d / "index.txt").write_text("".join(lines))
        (d / "index.txt.attr").write_text("unique_subject = no\n")
        return d


def _reason_flag(code: int) -> x509.ReasonFlags:
    from ca.crl import ReasonCode

    names = {
        ReasonCode.UNSPECIFIED: x509.ReasonFlags.unspecified,
        ReasonCode.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
        ReasonCode.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
        ReasonCode.SUPERSEDED: x509.ReasonFlags.superseded,
        ReasonCode.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
        ReasonCode.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    }
    return names[ReasonCode(code)]


def _listens_any(server: kit.Server) -> bool:
    """Whether a socket listening on the server's port on any address (IPv4 0.0.0.0 or IPv6
    ``::``) belongs to the server's processes."""
    inodes = set()
    for table, anywhere in (("/proc/net/tcp", "00000000"), ("/proc/net/tcp6", "0" * 32)):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if cols[1] == f"{anywhere}:{server.port:04X}" and cols[3] == "0A":
                    inodes.add(f"socket:[{cols[9]}]")
    for pid in kit.session_cpu(server.proc.pid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
            except OSError:
                continue
    return False


def stored_responses(data_dir: Path) -> int:
    with closing(sqlite3.connect(data_dir / "eport.db")) as db:
        return int(db.execute("SELECT count(*) FROM ocsp_responses").fetchone()[0])


# -- the run ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, servers: kit.Servers) -> None:
        self.args = args
        self.workdir = workdir
        self.servers = servers
        self.data_dir = workdir / "eport"
        self.label, self.kind = kit.worker_config(args.workers, args.threads)

    def load(
        self,
        server: kit.Server,
        requests: list[bytes],
        ok: Callable[[int, bytes], bool],
        per_connection: int,
    ) -> kit.LoadResult:
        a = self.args
        order = list(requests)
        random.Random(7).shuffle(order)
        return kit.run_load(
            server, kit.cycling(order), ok, a.clients, a.warmup, a.seconds, per_connection
        )

    def start_ours(self) -> kit.Server:
        a = self.args
        port = kit.free_port()
        cmd = [str(BIN / "eport"), "serve", "--dev", "--data-dir", str(self.data_dir)]
        cmd += ["--host", HOST, "--port", str(port)]
        cmd += ["--workers", str(a.workers), "--threads", str(a.threads)]
        return self.servers.start("ours", cmd, port, ("GET", "/ca/v1/health"))

    def start_hello(self) -> kit.Server:
        a = self.args
        app_dir = self.workdir / "hello"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "hello_app.py").write_text(HELLO_APP)
        port = kit.free_port()
        cmd = [str(BIN / "gunicorn"), "--chdir", str(app_dir), "--bind", f"{HOST}:{port}"]
        cmd += ["--workers", str(a.workers), "--threads", str(a.threads), *self.kind]
        cmd += [*kit.GUNICORN_COMMON, "hello_app:app"]
        return self.servers.start("hello", cmd, port, ("GET", "/health"))

    def start_openssl(self, peer: Path, multi: int, probe: bytes) -> kit.Server:
        """OpenSSL's responder, in its own session like every server here.

        ``kit.Servers.start`` cannot be used: it proves the port is the server's through
        ``/proc/net/tcp`` (IPv4), and ``openssl ocsp -port`` listens on ``[::]``.
        """
        port = kit.free_port()
        cmd = ["openssl", "ocsp", "-index", "index.txt", "-port", str(port)]
        cmd += ["-rsigner", "responder.pem", "-rkey", "responder.key", "-CA", "issuing.pem"]
        cmd += ["-ndays", "1", "-ignore_err"]
        if multi > 1:
            # -multi makes the responder a process group of its own (setpgid), which a
            # session leader may not: it runs under a shell that leads the session and, when
            # told to stop (or when this benchmark dies), stops the responder's whole group.
            cmd = ["sh", "-c", MULTI_WRAPPER, "openssl-multi", *cmd, "-multi", str(multi)]
        name = "openssl" if multi <= 1 else f"openssl-multi{multi}"
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=peer,
                start_new_session=True,
                preexec_fn=kit._die_with_parent,
            )
        server = kit.Server(name, proc, port, log)
        self.servers.running.append(server)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
            if _listens_any(server):
                try:
                    answer_of(ask(port, probe, timeout=5))
                    kit.wait_settled(server)
                    return server
                except (OSError, ValueError):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not come up on port {port}:\n{server.log_tail()}")
            time.sleep(0.1)

    def run(self, started: float) -> int:
        a = self.args
        print(
            f"E-Port OCSP benchmark: {os.cpu_count()} CPUs, {a.clients} clients, "
            f"{a.seconds:g} s measured after {a.warmup:g} s warm-up per run; "
            f"{kit._source()}; {_openssl_version()}",
            flush=True,
        )
        load_report("at start")

        # set-up, no server running
        t = time.monotonic()
        fx = Fixture(self.data_dir, self.workdir)
        try:
            mix = fx.issue(a.certs, "ocsp")
            spare = fx.issue(a.revocations, "delay")
            n_revoked = max(1, a.certs * 12 // 100)
            n_held = max(1, a.certs * 3 // 100)
            fx.change_status(mix, n_revoked, n_held, seed=6960)
            peer = fx.export_peer(mix)
            canonical = fx.canonical([c.request for c in mix])
        finally:
            fx.close()
        print(
            f"  set-up: {len(mix)} certificates in the mix ({n_revoked} revoked, {n_held} on "
            f"hold), {len(spare)} more for the revocation delay "
            f"({time.monotonic() - t:.1f} s, untimed)",
            flush=True,
        )

        posts = [post_ocsp(c.request) for c in mix]
        gets = [get_ocsp(c.request) for c in mix]
        ka = a.per_connection
        rows: list[kit.Row] = []

        ours = self.start_ours()
        hello = self.start_hello()
        # every certificate asked once: all answers are then the stored pre-signed ones
        ours_answers = [answer_of(ask(ours.port, c.request)) for c in mix + spare]
        stored = stored_responses(self.data_dir)
        print(
            f"  primed: {stored} pre-signed responses stored; {canonical} of {len(mix)} "
            "requests are canonical (served pre-signed)",
            flush=True,
        )

        with_openssl = shutil.which("openssl") is not None
        peers: list[kit.Server] = []
        same = "-"
        if with_openssl:
            peers.append(self.start_openssl(peer, 1, mix[0].request))
            theirs = [answer_of(ask(peers[0].port, c.request)) for c in mix]
            agree = sum(x == y for x, y in zip(ours_answers, theirs, strict=False))
            first_bad = next(
                ((x, y) for x, y in zip(ours_answers, theirs, strict=False) if x != y),
                None,
            )
            same = f"{agree}/{len(mix)} answers agree with ours"
            print(
                f"  openssl: {same}"
                + (f", e.g. ours {first_bad[0]} vs {first_bad[1]}" if first_bad else ""),
                flush=True,
            )
            peers.append(self.start_openssl(peer, 2, mix[0].request))
        else:
            print("  openssl is not installed: no peer row", flush=True)
        census = _census(ours_answers[: len(mix)])
        a = self.args

        def measure(
            name: str,
            server: kit.Server,
            reqs: list[bytes],
            ok: Any,
            per: int,
            config: str,
            note: str = "",
        ) -> kit.Row:
            def once() -> kit.Row:
                res = self.load(server, reqs, ok, per)
                notes = [note] if note else []
                if res.failure_sample:
                    sample = res.failure_sample.encode("utf-8", "replace")[:60]
                    notes.append(f"{res.total_failed} failed, e.g. {sample!r}")
                print(
                    f"  {name}: {res.rate:,.0f}/s, server CPU {res.cpu_split()}, "
                    f"others {res.other_cpu:.2f}",
                    flush=True,
                )
                return kit.Row(name, config, res.rate, res, "; ".join(notes))

            return steady(once, a.quiet_wait, a.retries)

        new_cfg = f"{self.label}, new conn"
        ka_cfg = f"{self.label}, keep-alive/{ka}"
        # interleaved: new connection per request first, then keep-alive
        h_new = measure(
            "hello-world Flask (HTTP ceiling)",
            hello,
            posts,
            hello_ok,
            1,
            new_cfg,
            "same request bytes",
        )
        o_new = measure("ours POST /ocsp", ours, posts, ocsp_ok, 1, new_cfg, census)
        p_new = p_multi = None
        if with_openssl:
            p_new = measure(
                "openssl ocsp (peer)", peers[0], posts, ocsp_ok, 1, "1 process, closes each", same
            )
            p_multi = measure(
                "openssl ocsp -multi 2 (context)",
                peers[1],
                posts,
                ocsp_ok,
                1,
                "2 processes, closes each",
            )
        h_ka = measure(
            "hello-world Flask (HTTP ceiling)",
            hello,
            posts,
            hello_ok,
            ka,
            ka_cfg,
            "same request bytes",
        )
        o_ka = measure("ours POST /ocsp", ours, posts, ocsp_ok, ka, ka_cfg)
        o_get = measure("ours GET /ocsp/<base64> (context)", ours, gets, ocsp_ok, ka, ka_cfg)
        for p in peers:
            stop(self.servers, p)
        stop(self.servers, hello)
        rows += [h_new, o_new] + [r for r in (p_new, p_multi) if r is not None]
        rows += [h_ka, o_ka, o_get]

        delays, cli_times = self.revocation_delays(ours, fx, spare)
        stop(self.servers, ours)

        print()
        kit.print_table(rows)
        print(
            "fail = non-success responses in the window; srv CPU, cli CPU, other = cores used\n"
            "while measuring by the server, the load client, and anything else on the machine;\n"
            "ms/req = server CPU milliseconds per successful request; keep-alive/N = a client\n"
            "closes its connection after N answers and opens a new one."
        )
        noisy = [r for r in rows if r.other_cpu > kit.NOISY_CORES]
        if noisy:
            worst = max(r.other_cpu for r in noisy)
            print(
                f"WARNING: other processes used up to {worst:.2f} cores during {len(noisy)} of "
                f"the {len(rows)} runs: those numbers are low and not comparable across runs."
            )
        print()
        print("Revocation to OCSP answering revoked (fresh request on a new connection / 10 ms)")
        if delays:
            finite = [d for d in delays if d != float("inf")]
            p50 = statistics.median(delays) if delays else float("nan")
            print(
                f"  {len(delays)} revocations: p50 {p50 * 1000:.1f} ms, max "
                f"{max(delays) * 1000:.1f} ms ({len(finite)} seen revoked within 5 s); "
                f"`eport revoke` itself took p50 {statistics.median(cli_times):.2f} s"
            )
        print()
        return self.goals(h_new, o_new, p_new, p_multi, h_ka, o_ka, delays, started)

    def revocation_delays(
        self, ours: kit.Server, fx: Fixture, spare: list[Cert]
    ) -> tuple[list[float], list[float]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPORT_")}
        env["EPORT_SERVER"] = f"http://{HOST}:{ours.port}"
        env["EPORT_CONFIG_DIR"] = str(self.workdir / "cli-config")
        delays: list[float] = []
        cli_times: list[float] = []
        for c in spare:
            before = answer_of(ask(ours.port, c.request))
            if before != ("good",):
                raise RuntimeError(f"{c.serial:x} is {before} before its revocation")
            t0 = time.perf_counter()
            cmd = [str(BIN / "eport"), "revoke", "--serial", format(c.serial, "x")]
            cmd += ["--reason", "keyCompromise", *fx.officer(), "--json"]
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            returned = time.perf_counter()
            if done.returncode != 0:
                raise RuntimeError(f"eport revoke failed: {done.stderr.strip()}")
            cli_times.append(returned - t0)
            delay = float("inf")
            tick = returned
            while time.perf_counter() - returned < 5.0:
                got = answer_of(ask(ours.port, c.request))
                if got[0] == "revoked":
                    delay = time.perf_counter() - returned
                    break
                tick += POLL_INTERVAL
                time.sleep(max(0.0, tick - time.perf_counter()))
            delays.append(delay)
        shown = ", ".join(f"{d * 1000:.1f}" for d in delays)
        print(f"  revocation delays (ms): {shown}", flush=True)
        return delays, cli_times

    def goals(
        self,
        h_new: kit.Row,
        o_new: kit.Row,
        p_new: kit.Row | None,
        p_multi: kit.Row | None,
        h_ka: kit.Row,
        o_ka: kit.Row,
        delays: list[float],
        started: float,
    ) -> int:
        print("Goals")

        def line(text: str, goal: str, ok: bool, *rows: kit.Row | None) -> None:
            print(f"  {text}".ljust(78) + f"goal {goal}: {kit.verdict(ok)}{disturbed(*rows)}")

        if p_new is not None and p_new.rate:
            x = o_new.rate / p_new.rate
            line(
                f"new conn: ours {kit.fmt_rate(o_new.rate)}/s = {x:.2f}x openssl "
                f"{kit.fmt_rate(p_new.rate)}/s",
                f">= {GOAL_VS_OPENSSL:g}x",
                x >= GOAL_VS_OPENSSL,
                o_new,
                p_new,
            )
        else:
            print("  openssl: not measured, so the OpenSSL goal is a MISS (no peer number)")
        for mode, h, o in (("new conn", h_new, o_new), ("keep-alive", h_ka, o_ka)):
            share = o.rate / h.rate if h.rate else 0.0
            line(
                f"{mode}: ours {kit.fmt_rate(o.rate)}/s = {share:.1%} of hello-world "
                f"{kit.fmt_rate(h.rate)}/s",
                f">= {GOAL_VS_HELLO:.0%}",
                share >= GOAL_VS_HELLO,
                o,
                h,
            )
        if delays:
            p50, worst = statistics.median(delays), max(delays)
            line(
                f"revocation delay: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms",
                f"< {GOAL_REVOCATION_DELAY:g} s",
                worst < GOAL_REVOCATION_DELAY,
            )
        print("Context")
        for mode, h, o in (("new conn", h_new, o_new), ("keep-alive", h_ka, o_ka)):
            if o.result and h.result and o.result.server_cpu > 0:
                mine, theirs = o.result.cpu_ms_per_request(), h.result.cpu_ms_per_request()
                print(
                    f"  {mode}: {mine:.3f} ms server CPU per answer, hello-world {theirs:.3f}: "
                    f"by CPU per request ours is {theirs / mine:.1%} of the ceiling"
                )
        if p_new is not None and p_new.result and o_new.result and p_new.result.server_cpu > 0:
            print(
                f"  openssl: {p_new.result.cpu_ms_per_request():.3f} ms server CPU per answer "
                "(signing each)"
            )
        if p_multi is not None and p_multi.rate:
            print(
                f"  ours new conn = {o_new.rate / p_multi.rate:.2f}x openssl -multi 2 "
                f"({kit.fmt_rate(p_multi.rate)}/s, two responder processes like our two workers)"
            )
        if p_new is not None and p_new.rate:
            print(
                f"  hello-world new conn / openssl = {h_new.rate / p_new.rate:.2f}x: no handler "
                "in this WSGI stack and config can do more than that"
            )
        load_report("at the end")
        print(f"Total run time {time.monotonic() - started:.0f} s.")
        return 0


def _census(answers: list[tuple[str, ...]]) -> str:
    kinds: dict[str, int] = {}
    for a in answers:
        key = a[0] if a[0] != "revoked" else ("hold" if a[2] == "certificate_hold" else "revoked")
        kinds[key] = kinds.get(key, 0) + 1
    return "mix: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))


def _openssl_version() -> str:
    try:
        out = subprocess.run(["openssl", "version"], capture_output=True, text=True)
    except OSError:
        return "openssl missing"
    return out.stdout.strip() or "openssl ?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    p.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up")
    p.add_argument("--clients", type=int, default=16, help="concurrent connections")
    p.add_argument(
        "--per-connection",
        type=int,
        default=100,
        help="keep-alive mode: answers a client takes on one connection before a new one",
    )
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    p.add_argument("--certs", type=int, default=400, help="certificates in the request mix")
    p.add_argument("--revocations", type=int, default=10, help="revocations timed to OCSP")
    add_run_options(p)
    args = p.parse_args(argv)
    return run_in_workdir(
        args,
        "eport-bench-ocsp-",
        lambda workdir, servers, started: Bench(args, workdir, servers).run(started),
    )


if __name__ == "__main__":
    sys.exit(main())
