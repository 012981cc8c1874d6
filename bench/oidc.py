"""Benchmark: the full browserless OpenID Connect code flow per second, against the HTTP
ceiling of the same stack measured in the same run.

On 127.0.0.1 only, with every server started (and stopped) here:

- **ours**: ``eport serve --dev`` (``--workers`` gunicorn workers x ``--threads``), which
  trusts 127.0.0.1 as its TLS-terminating proxy. Each of the ``--clients`` (16) clients is
  one browser: it signs in once at ``/portal/`` with an operator's certificate in
  ``X-SSL-Client-Cert`` (as nginx forwards it) and keeps the SSO cookie. One flow is then
  ``GET /auth/authorize`` with the cookie (PKCE S256, state, nonce) → 302 with a code →
  ``POST /auth/token`` (code, redirect URI, verifier) → 200 with an ID token and an access
  token: a code written and redeemed once in the database, two ES256 signatures, the
  session and the certificate's status checked. A flow counts only if every answer is right
  (the state comes back, the code is redeemed, an ``id_token`` is in the answer).
- **hello**: a hello-world Flask app under the same gunicorn settings, sent the same two
  requests per flow (a GET, then a form POST of the same size): the ceiling, in flows/s.

The load client is this process: one thread per client, each with its own keep-alive
HTTP/1.1 connection (``http.client``), opened anew every ``--per-connection`` flows so that
connections spread over the gunicorn workers. Latency is per flow (both requests). Server
CPU comes from ``/proc`` (every process of the server's session); the client's own CPU is
reported too, since it shares the machine's cores with the server.

Usage: ``python bench/oidc.py [--seconds 10] [--quick] [--threads 4]``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from issuance import (  # the load-test plumbing of bench/issuance.py
    BIN,
    GUNICORN_COMMON,
    HOST,
    Servers,
    free_port,
    session_cpu,
    worker_config,
)

CLIENT = "sample-a"
REDIRECT = "https://sample-a.eport.example:8443/callback"
PASSPHRASE = "bench-passphrase-123"
HELLO_APP = '''\
"""Hello world under the same WSGI server: the HTTP ceiling of the benchmark."""
from flask import Flask, request

app = Flask("hello")


@app.get("/health")
def health():
    return "ok"


@app.get("/auth/authorize")
def authorize():
    return "Hello, world!\\n"


@app.post("/auth/token")
def token():
    request.get_data()
    return "Hello, world!\\n"
'''


@dataclass
class Stats:
    flows: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


@dataclass
class Result:
    rate: float
    p50: float
    p99: float
    failures: Counter[str]
    server_cpu: float
    client_cpu: float
    seconds: float

    def line(self, name: str) -> str:
        fails = sum(self.failures.values())
        return (
            f"{name:<34} {self.rate:8.1f} flows/s   p50 {self.p50:6.1f} ms   p99 "
            f"{self.p99:6.1f} ms   server CPU {self.server_cpu / self.seconds:4.2f} cores, "
            f"client {self.client_cpu / self.seconds:4.2f}   failed {fails}"
        )


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OurFlow:
    """authorize (cookie) → code → token, on one connection."""

    def __init__(self, cookie: str) -> None:
        self.cookie = cookie

    def __call__(self, conn: http.client.HTTPConnection) -> str | None:
        verifier, challenge = pkce()
        state = secrets.token_urlsafe(12)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": CLIENT,
                "redirect_uri": REDIRECT,
                "scope": "openid profile",
                "state": state,
                "nonce": secrets.token_urlsafe(12),
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        conn.request(
            "GET", "/auth/authorize?" + query, headers={"Cookie": f"__Host-eport-sso={self.cookie}"}
        )
        r = conn.getresponse()
        r.read()
        if r.status != 302:
            return f"authorize {r.status}"
        back = parse_qs(urlsplit(r.getheader("Location", "")).query)
        if back.get("state") != [state] or "code" not in back:
            return "authorize: no code or wrong state"
        body = urlencode(
            {
                "grant_type": "authorization_code",
                "code": back["code"][0],
                "client_id": CLIENT,
                "redirect_uri": REDIRECT,
                "code_verifier": verifier,
            }
        )
        conn.request(
            "POST",
            "/auth/token",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            return f"token {r.status}"
        if "id_token" not in json.loads(data):
            return "token: no id_token"
        return None


def hello_flow(conn: http.client.HTTPConnection) -> str | None:
    """The same two requests, of the same sizes, to the hello-world app."""
    verifier, challenge = pkce()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": CLIENT,
            "redirect_uri": REDIRECT,
            "scope": "openid profile",
            "state": secrets.token_urlsafe(12),
            "nonce": secrets.token_urlsafe(12),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    conn.request("GET", "/auth/authorize?" + query, headers={"Cookie": "x=" + "y" * 43})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        return f"hello GET {r.status}"
    body = urlencode(
        {
            "grant_type": "authorization_code",
            "code": secrets.token_urlsafe(32),
            "client_id": CLIENT,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        }
    )
    conn.request(
        "POST",
        "/auth/token",
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    r = conn.getresponse()
    r.read()
    return None if r.status == 200 else f"hello POST {r.status}"


def drive(
    port: int,
    flows: list[object],
    warmup: float,
    seconds: float,
    per_connection: int,
    server_sid: int,
) -> Result:
    """A closed loop: each client runs flows back to back on its own connection."""
    start = time.monotonic() + 0.2
    t_measure = start + warmup
    t_end = t_measure + seconds
    stats = [Stats() for _ in flows]
    barrier = threading.Barrier(len(flows) + 1)
    cpu: dict[str, float] = {}

    def client(i: int) -> None:
        run = flows[i]
        st = stats[i]
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        done = 0
        barrier.wait()
        while True:
            t0 = time.monotonic()
            if t0 >= t_end:
                break
            try:
                error = run(conn)  # type: ignore[operator]
            except (OSError, http.client.HTTPException) as exc:
                error = type(exc).__name__
                conn.close()
            t1 = time.monotonic()
            if t0 >= t_measure and t1 <= t_end:
                if error is None:
                    st.flows += 1
                    st.latencies.append(t1 - t0)
                else:
                    st.failures[error] += 1
            done += 1
            if done % per_connection == 0:
                conn.close()
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(flows))]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(max(0.0, t_measure - time.monotonic()))
    cpu["server0"] = sum(session_cpu(server_sid).values())
    own0 = os.times()
    time.sleep(max(0.0, t_end - time.monotonic()))
    cpu["server1"] = sum(session_cpu(server_sid).values())
    own1 = os.times()
    for t in threads:
        t.join()
    latencies = sorted(x for s in stats for x in s.latencies)
    failures: Counter[str] = Counter()
    for s in stats:
        failures.update(s.failures)
    total = sum(s.flows for s in stats)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Result(
        rate=total / seconds,
        p50=q[49] * 1000,
        p99=q[98] * 1000,
        failures=failures,
        server_cpu=cpu["server1"] - cpu["server0"],
        client_cpu=(own1.user + own1.system) - (own0.user + own0.system),
        seconds=seconds,
    )


def eport(env: dict[str, str], *args: str) -> dict[str, object]:
    res = subprocess.run(
        [str(BIN / "eport"), *args, "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    if res.returncode != 0:
        raise RuntimeError(f"eport {' '.join(args)}: {res.stderr}")
    out: dict[str, object] = json.loads(res.stdout)
    return out


def enroll_operator(data: Path, url: str, work: Path) -> str:
    """An enterprise (approved by the dev customs officer) and its operator, granted data
    entry; the operator's certificate (PEM)."""
    from ca.uscc import check_character

    env = {k: v for k, v in os.environ.items() if not k.startswith("EPORT_")}
    env.update(EPORT_SERVER=url, EPORT_PASSPHRASE=PASSPHRASE)
    officer = data / "dev" / "officers" / "customs"
    officer_args = [
        "--cert",
        str(officer / "officer.pem"),
        "--key",
        str(officer / "officer.key"),
        "--passphrase-file",
        str(officer / "DEV-ONLY-passphrase.txt"),
    ]
    body = f"91350100MB{secrets.randbelow(10**7):07d}"
    uscc = body + check_character(body)
    app = eport(env, "apply", "--uscc", uscc, "--name", "Bench Trading Co.")
    grant = eport(env, "ra", "approve", str(app["id"]), *officer_args)
    ent = work / "ent"
    code = str(grant["enrollment_code"])
    eport(env, "enroll", "--code", code, "--profile", "enterprise", "--out", str(ent))
    ent_args = ["--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    op_grant = eport(env, "operator", "add", "--name", "Bench Operator", "--id", "B1", *ent_args)
    # The sample services are for the enterprise and operators granted data entry.
    eport(env, "roles", "grant", "--operator", "B1", "--role", "data-entry", *ent_args)
    op = work / "op"
    eport(
        env,
        "enroll",
        "--code",
        str(op_grant["enrollment_code"]),
        "--profile",
        "operator",
        "--out",
        str(op),
    )
    return (op / "cert.pem").read_text()


def sign_in(port: int, pem: str) -> str:
    """A certificate login at the portal through the trusted-proxy header: the cookie."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.request("GET", "/portal/", headers={"X-SSL-Client-Cert": quote(pem)})
    r = conn.getresponse()
    r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"portal sign-in answered {r.status}")
    for name, value in r.getheaders():
        if name.lower() == "set-cookie" and value.startswith("__Host-eport-sso="):
            return value.split(";", 1)[0].split("=", 1)[1]
    raise RuntimeError("no SSO cookie")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    p.add_argument("--quick", action="store_true", help="a smoke run: 3 s runs, 1 s warm-up")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (browsers)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--threads", type=int, default=4, help="threads per worker")
    p.add_argument("--per-connection", type=int, default=100, help="flows per connection")
    a = p.parse_args(argv)
    if a.quick:
        a.seconds, a.warmup = 3.0, 1.0
    label, kind = worker_config(a.workers, a.threads)
    print(f"OpenID Connect code flow, {a.clients} clients, {label}, {a.seconds:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="eport-bench-oidc-") as tmp:
        work = Path(tmp)
        servers = Servers(work)
        try:
            port = free_port()
            data = work / "data"
            cmd = [str(BIN / "eport"), "serve", "--dev", "--data-dir", str(data)]
            cmd += ["--port", str(port), "--workers", str(a.workers), "--threads", str(a.threads)]
            env = {"EPORT_AUTH_TRUSTED_PROXIES": "127.0.0.1/32"}
            ours_rows: list[tuple[str, Result]] = []
            with servers.running_server("eport", cmd, port, ("GET", "/ca/v1/health"), env) as srv:
                pem = enroll_operator(data, f"http://{HOST}:{port}", work)
                cookies = [sign_in(port, pem) for _ in range(a.clients)]
                flows: list[object] = [OurFlow(c) for c in cookies]
                res = drive(port, flows, a.warmup, a.seconds, a.per_connection, srv.proc.pid)
                ours_rows.append(("ours: authorize → code → token", res))
                print("  " + res.line("ours"), flush=True)
            app_dir = work / "hello"
            app_dir.mkdir()
            (app_dir / "hello_app.py").write_text(HELLO_APP)
            hport = free_port()
            hcmd = [str(BIN / "gunicorn"), "--chdir", str(app_dir), "--bind", f"{HOST}:{hport}"]
            hcmd += ["--workers", str(a.workers), "--threads", str(a.threads), *kind]
            hcmd += [*GUNICORN_COMMON, "hello_app:app"]
            with servers.running_server("hello", hcmd, hport, ("GET", "/health")) as hsrv:
                hello = drive(
                    hport,
                    [hello_flow] * a.clients,
                    a.warmup,
                    a.seconds,
                    a.per_connection,
                    hsrv.proc.pid,
                )
                print("  " + hello.line("hello"), flush=True)
        finally:
            servers.stop_all()
    print()
    print(f"{'':<34} {'rate':>8}")
    for name, res in ours_rows:
        print(res.line(name))
        share = res.rate / hello.rate if hello.rate else 0.0
        print(f"{'':<34} = {share:.1%} of the hello-world ceiling")
        if res.rate:
            print(
                f"{'':<34} server CPU {1000 * res.server_cpu / res.seconds / res.rate:.2f} ms/flow"
            )
        if res.failures:
            print(f"{'':<34} failures: {dict(res.failures)}")
    print(hello.line("hello-world Flask (HTTP ceiling)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
