"""Benchmark: the token service over HTTP and the SDK in-process, against their ceilings.

One run measures, on 127.0.0.1 only, with every server started (and stopped) here, against
one ``eport serve --dev`` (gunicorn, ``--workers`` x ``--threads``) with 16 concurrent
clients:

- **validate**: ``GET /auth/validate`` (the gateway sub-request) with an operator's access
  token for ``customs-declaration`` (a pool of tokens from distinct sessions, cycled);
- **validate, uncached**: the same, with a fresh token on every request (re-signed
  in-process with the token service's own key from the tokens above, new ``jti``): every
  request pays the full ES256 verification, none is answered from the per-process cache of
  verified signatures;
- **introspect**: ``POST /auth/introspect`` (RFC 7662) of those tokens, each request signed
  with the ``customs-declaration`` service's own certificate (``ca.signedreq``): every request
  has a fresh ``jti``, so all are signed before the clock starts;
- **introspect over mTLS**: the same call as a TLS-terminating proxy forwards it after
  checking the service's client certificate: the RFC 9440 ``Client-Cert`` header from a
  configured trusted proxy (the server runs with ``EPORT_TRUSTED_PROXIES=127.0.0.1``; the load
  client stands in for the proxy, so the TLS handshake is not in the measurement, as it is
  not in the hello-world ceiling either);
- **refresh**: access tokens minted from a session (``refresh_token`` grant): each answer
  rotates the refresh token, so every client chains its own session (one session per
  concurrent client, plus spares: any live refresh token is used exactly once);
- **login**: RFC 7523 logins, each assertion signed before the clock with the operator's key
  as ``eport login`` does (``cli.session.assertion``: fresh ``jti``, chain in ``x5c``).
  Every login opens a session that stays open; this row runs last, and the server's idle CPU
  afterwards (the session sweeper with that many open sessions) is shown;
- **hello**: a hello-world Flask view under gunicorn with the same workers, threads and worker
  class, sent the very same request bytes as validate, then as introspect: the HTTP ceiling.

For the pre-signed rows a 1-second pilot finds the rate, then enough requests for the run
are signed (the total is capped by the hello-world rate); should they still run out, the
window ends there and the row says so.

In-process, one thread each (per core), on the same tokens: the SDK's offline validation
(``authsvc.client.TokenVerifier.verify``, JWKS fetched once from the server) against raw
PyJWT ``jwt.decode`` of ES256 with the same key, audience and issuer; and, for context, the
bare ECDSA P-256 verification of the same signatures with ``cryptography``.

If a goal is missed, the endpoint is profiled in-process (cProfile, the Flask test client on
the token service app over the same data directory) and the functions that dominate a
request are printed.

The load client is ``bench/issuance.py``'s (one process, one thread, epoll, one request in
flight per connection, requests pre-encoded; a connection is closed by the client after
``--per-connection`` answers and opened anew, so that both gunicorn workers get work). The
enterprise, operator and service certificates are issued in-process before the server starts
(the CA's own ``enroll``, pkilint off for set-up speed); the operator's role is granted and the
sessions opened over HTTP before the clock.

Each run first waits (at most ``--quiet-wait`` s) for the rest of the machine to go idle, and
is repeated (``--retries``) when other processes used more than a quarter of a core during
it; the least disturbed attempt is kept, and a goal computed from a disturbed run is flagged
UNRELIABLE. Server CPU per request, shown beside each rate, is the steadier comparison on a
busy machine. ``--time-limit`` (300 s) aborts a run that would go on longer; every server is
stopped (its process group, then whatever is left of its session) on any exit.

Usage: ``python bench/auth.py [--quick] [--seconds 10] [--threads 4] [--no-profile]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import datetime
import json
import os
import pstats
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
import issuance as kit
from runs import add_run_options, disturbed, load_report, run_in_workdir, steady, stop

HOST = kit.HOST
BIN = kit.BIN
SERVICE = "customs-declaration"
SERVICE_HOST = "customs-declaration.eport.example"
OPERATOR_ID = "B100"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOAL_ONLINE_VS_HELLO = 0.60
GOAL_SDK_VS_PYJWT = 0.80
SPARE_SESSIONS = 16
WRAPPERS = ("werkzeug/test.py", "flask/app.py", "werkzeug/wrappers", "<sqlalchemy generated")
SIGNED_LIFETIME = datetime.timedelta(minutes=4)
HELLO_APP = '''\
"""Hello world under the same WSGI server: the HTTP ceiling of the benchmark."""
from flask import Flask, request

app = Flask("hello")


@app.get("/health")
def health():
    return "ok"


@app.route("/auth/<path:rest>", methods=["GET", "POST"])
def hello(rest):
    request.get_data()
    return "Hello, world!\\n"
'''


# -- machine ------------------------------------------------------------------------------------


# -- requests -----------------------------------------------------------------------------------


def form(path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> bytes:
    data = urlencode(fields).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"{extra}Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def get(path: str, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()


def validate_request(token: str) -> bytes:
    return get("/auth/validate", {"Authorization": f"Bearer {token}", "X-Eport-Service": SERVICE})


def status_is(code: int) -> Callable[[int, bytes], bool]:
    return lambda status, _body: status == code


def active(status: int, body: bytes) -> bool:
    return status == 200 and b'"active":true' in body


# -- parties ------------------------------------------------------------------------------------


@dataclass
class Party:
    key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate]  # the leaf, then its issuing CA (the root is not sent)

    @property
    def cert(self) -> x509.Certificate:
        return self.chain[0]


def key_and_csr(cn: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def issue_parties(data_dir: Path) -> tuple[Party, Party, Party]:
    """The enterprise, its operator and the customs-declaration service, issued in-process
    by the dev CA (no server running)."""
    from ca.signedreq import SignedRequest

    mint = kit.CodeMint(data_dir)
    try:
        authority = mint.authority
        authority.factory.lint_sampler = lambda: False  # set-up speed; not what is measured

        def enroll(code: str, profile: str, cn: str) -> Party:
            key, csr = key_and_csr(cn)
            issued = authority.enroll(code, profile, csr)
            return Party(key, [issued.certificate, issued.chain[0]])

        ent = enroll(mint.codes(1)[0], "enterprise", "Bench Trading Co.")
        caller = authority.caller(SignedRequest(ent.cert, tuple(ent.chain), {}))
        grant = authority.authorize_operator(caller, "Bench Operator", OPERATOR_ID)
        op = enroll(grant.code, "operator", "Bench Operator")
        app = authority.apply(
            "service",
            {"agency_id": "customs", "service_host": SERVICE_HOST},
            applicant="bench",
        )
        code = authority.approve_at_ceremony(app.id, "ceremony:bench").code
        svc = enroll(code, "service-tls", SERVICE_HOST)
        mint.db.session.remove()
        return ent, op, svc
    finally:
        mint.close()


def assertions(op: Party, endpoint: str, n: int) -> list[str]:
    from authsvc.principal import x5t_s256
    from cli.client import Identity
    from cli.session import assertion

    ident = Identity(op.chain, op.key)
    subject = x5t_s256(op.cert)
    return [assertion(ident, endpoint, subject) for _ in range(n)]


def login_requests(op: Party, endpoint: str, n: int) -> list[bytes]:
    return [
        form("/auth/token", {"grant_type": JWT_BEARER, "assertion": a})
        for a in assertions(op, endpoint, n)
    ]


def introspect_requests(svc: Party, tokens: list[str], n: int) -> list[bytes]:
    from ca.signedreq import SCHEME, sign_request

    out = []
    for i in range(n):
        fields = {"token": tokens[i % len(tokens)]}
        body = urlencode(fields).encode()
        now = datetime.datetime.now(datetime.UTC)
        jws = sign_request(
            svc.key, svc.chain, "POST", "/auth/introspect", body, now, SIGNED_LIFETIME
        )
        out.append(form("/auth/introspect", fields, {"Authorization": f"{SCHEME} {jws}"}))
    return out


def mtls_introspect_requests(svc: Party, tokens: list[str]) -> list[bytes]:
    """Introspection as the trusted proxy forwards it: RFC 9440 ``Client-Cert``."""
    der = svc.cert.public_bytes(serialization.Encoding.DER)
    header = {"Client-Cert": ":" + base64.b64encode(der).decode() + ":"}
    return [form("/auth/introspect", {"token": tok}, header) for tok in tokens]


def fresh_tokens(data_dir: Path, templates: list[str], n: int) -> list[str]:
    """``n`` distinct access tokens, each a copy of one of ``templates`` (same session,
    audience and binding) with a new ``jti``, signed with the token service's active key
    read from its database as the service itself would (dev passphrase)."""
    from sqlalchemy import create_engine, select

    from authsvc.models import SigningKeyRow
    from authsvc.tokens import mint
    from ca.devinit import read_passphrases

    pw = read_passphrases(data_dir)["auth_key_passphrase"].encode()
    engine = create_engine(f"sqlite:///{data_dir / 'auth.db'}")
    with engine.connect() as conn:
        # The access tokens' (ES256) key; the RS256 family signs only ID tokens.
        (row,) = [
            r
            for r in conn.execute(
                select(
                    SigningKeyRow.kid, SigningKeyRow.private_pem, SigningKeyRow.public_jwk
                ).where(SigningKeyRow.state == "active")
            )
            if json.loads(r.public_jwk)["alg"] == "ES256"
        ]
    engine.dispose()
    key = serialization.load_pem_private_key(row.private_pem, pw)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    bodies = [jwt.decode(t, options={"verify_signature": False}) for t in templates]
    out = []
    for i in range(n):
        claims = dict(bodies[i % len(bodies)])
        claims["jti"] = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        out.append(mint(claims, row.kid, key))
    return out


class Chains:
    """Refresh-token grants for sessions that each rotate on every answer: every live refresh
    token is used exactly once, whichever connection its successor comes back on."""

    def __init__(self, refresh_tokens: list[str]) -> None:
        self.live: deque[str] = deque(refresh_tokens)
        self.tokens: list[str] = []

    def next(self) -> bytes | None:
        if not self.live:
            return None
        rt = self.live.popleft()
        return form(
            "/auth/token",
            {"grant_type": "refresh_token", "refresh_token": rt, "audience": SERVICE},
        )

    def ok(self, status: int, body: bytes) -> bool:
        if status != 200:
            return False
        doc = json.loads(body)
        self.live.append(doc["refresh_token"])
        if len(self.tokens) < 256:
            self.tokens.append(doc["access_token"])
        return True


# -- in-process baselines -----------------------------------------------------------------------


def cycle_rate(
    fn: Callable[[Any], object], items: list[Any], seconds: float
) -> tuple[float, float]:
    """Calls per second of ``fn`` over ``items`` (cycled) on this thread, and the cores the
    rest of the machine used meanwhile."""
    fn(items[0])  # warm
    n = 0
    count = len(items)
    start = time.perf_counter()
    own0, busy0 = time.process_time(), kit.machine_busy_seconds()
    deadline = start + seconds
    while True:
        for item in items:
            fn(item)
        n += count
        now = time.perf_counter()
        if now >= deadline:
            took = now - start
            own, busy = time.process_time() - own0, kit.machine_busy_seconds() - busy0
            return n / took, max(0.0, busy - own) / took


def raw_ecdsa(token: str) -> tuple[bytes, bytes]:
    """The signing input and DER signature of a compact ES256 JWS."""
    head, payload, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    return f"{head}.{payload}".encode(), encode_dss_signature(r, s)


# -- profiling ----------------------------------------------------------------------------------


def profile_endpoint(
    data_dir: Path, base: str, name: str, send: Callable[[Any, int], Any], n: int
) -> None:
    """Time, then cProfile, ``n`` requests each (``send(client, i)``, i < 2n + 20) through the
    Flask test client on the token service app over the benchmark's data directory; print
    what dominates per request."""
    from authsvc.app import create_app
    from authsvc.config import AuthConfig

    cfg = AuthConfig.load(
        {"data_dir": data_dir, "dev": True, "public_base_url": base, "sweep_seconds": 0},
        environ={},
    )
    app = create_app(cfg)
    client = app.test_client()
    for i in range(20):  # warm: imports, pools, caches
        send(client, 2 * n + i)
    start = time.perf_counter()
    for i in range(n):
        send(client, n + i)
    bare = time.perf_counter() - start
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for i in range(n):
        send(client, i)
    prof.disable()
    took = time.perf_counter() - start
    print(
        f"\nProfile of {name}: {n} requests in-process (Flask test client, 1 thread): "
        f"{bare / n * 1e6:,.0f} us per request; {took / n * 1e6:,.0f} us under cProfile"
    )
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, calls, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((ct, tt, calls, _short(file, line, func)))
    print("  by cumulative time (us per request, calls per request):")
    shown = 0
    for ct, tt, calls, where in sorted(rows, reverse=True):
        if where.startswith(WRAPPERS) or "cProfile" in where:
            continue  # the request loop, the test client and Flask's dispatch
        print(
            f"    {ct / n * 1e6:8.0f} us cum {tt / n * 1e6:7.0f} us own {calls / n:5.1f}x  {where}"
        )
        shown += 1
        if shown >= 22:
            break
    print("  by own time:")
    for ct, tt, calls, where in sorted(rows, key=lambda r: r[1], reverse=True)[:12]:
        print(
            f"    {tt / n * 1e6:8.0f} us own {ct / n * 1e6:7.0f} us cum {calls / n:5.1f}x  {where}"
        )


def _short(file: str, line: int, func: str) -> str:
    if file == "~":
        return func
    parts = Path(file).parts
    for anchor in ("site-packages", "main", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return f"{'/'.join(parts[i + 1 :])}:{line}({func})"
    return f"{file}:{line}({func})"


# -- the run ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, servers: kit.Servers) -> None:
        self.args = args
        self.workdir = workdir
        self.servers = servers
        self.data_dir = workdir / "eport"
        self.label, self.kind = kit.worker_config(args.workers, args.threads)
        self.span = args.warmup + args.seconds

    def load(
        self,
        server: kit.Server,
        nxt: Callable[[], bytes | None],
        ok: Callable[[int, bytes], bool],
        warmup: float | None = None,
        seconds: float | None = None,
    ) -> kit.LoadResult:
        a = self.args
        return kit.run_load(
            server,
            nxt,
            ok,
            a.clients,
            a.warmup if warmup is None else warmup,
            a.seconds if seconds is None else seconds,
            a.per_connection,
        )

    def row(self, name: str, res: kit.LoadResult, note: str = "") -> kit.Row:
        notes = [note] if note else []
        if res.exhausted:
            notes.append("pre-signed requests ran out: shorter window")
        if res.failure_sample:
            notes.append(f"{res.total_failed} failed, e.g. {res.failure_sample[:100]!r}")
        print(
            f"  {name}: {res.rate:,.0f}/s, server CPU {res.cpu_split()}, "
            f"others {res.other_cpu:.2f}",
            flush=True,
        )
        return kit.Row(name, self.label, res.rate, res, "; ".join(notes))

    def presigned(
        self,
        server: kit.Server,
        name: str,
        make: Callable[[int], list[bytes]],
        ok: Callable[[int, bytes], bool],
        ceiling: float,
    ) -> kit.Row:
        """A pilot second for the rate, then enough requests signed for the measured run."""
        a = self.args
        pilot_pool = make(int(ceiling * 1.6) + 4 * a.clients)
        pilot = self.load(server, kit.OneEach(pilot_pool), ok, warmup=0.3, seconds=1.0)
        need = int(min(max(pilot.rate * 3, 100), ceiling * 1.2) * self.span) + 8 * a.clients
        t = time.monotonic()
        pool = make(need)
        signing = time.monotonic() - t
        print(
            f"  {name}: pilot {pilot.rate:,.0f}/s; {need:,} requests signed in {signing:.1f} s "
            "(untimed)",
            flush=True,
        )
        res = self.load(server, kit.OneEach(pool), ok)
        return self.row(name, res, f"{need:,} pre-signed")

    def start_ours(self) -> kit.Server:
        a = self.args
        port = kit.free_port()
        cmd = [str(BIN / "eport"), "serve", "--dev", "--data-dir", str(self.data_dir)]
        cmd += ["--host", HOST, "--port", str(port)]
        cmd += ["--workers", str(a.workers), "--threads", str(a.threads)]
        env = {"EPORT_TRUSTED_PROXIES": HOST}  # the load client stands in for the TLS proxy
        return self.servers.start("ours", cmd, port, ("GET", "/ca/v1/health"), env=env)

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

    def run(self, started: float) -> int:
        a = self.args
        print(
            f"E-Port token service benchmark: {os.cpu_count()} CPUs, {a.clients} clients, "
            f"{a.seconds:g} s measured after {a.warmup:g} s warm-up per run; {kit._source()}",
            flush=True,
        )
        load_report("at start")
        t = time.monotonic()
        ent, op, svc = issue_parties(self.data_dir)
        print(f"  set-up: enterprise, operator and service issued ({time.monotonic() - t:.1f} s)")

        ours = self.start_ours()
        base = f"http://{HOST}:{ours.port}"
        endpoint = base + "/auth/token"
        http = requests.Session()
        self.grant_role(http, base, ent, op)
        sessions = a.clients + SPARE_SESSIONS
        refresh_tokens = []
        for req in login_requests(op, endpoint, sessions):
            doc = _send(http, base, req)
            refresh_tokens.append(doc["refresh_token"])
        chains = Chains(refresh_tokens)
        tokens = []
        for _ in range(sessions):
            grant = chains.next()
            assert grant is not None
            doc = _send(http, base, grant)
            chains.ok(200, json.dumps(doc).encode())
            tokens.append(doc["access_token"])
        print(f"  set-up: role granted, {sessions} sessions opened, {len(tokens)} access tokens")

        hello = self.start_hello()
        rows: list[kit.Row] = []
        validate_reqs = [validate_request(tok) for tok in tokens]
        sample_introspect = introspect_requests(svc, tokens, len(tokens))

        def steadily(run: Callable[[], kit.Row]) -> kit.Row:
            return steady(run, a.quiet_wait, a.retries)

        h_val = steadily(
            lambda: self.row(
                "hello-world, validate's bytes",
                self.load(hello, kit.cycling(validate_reqs), status_is(200)),
                "HTTP ceiling",
            )
        )
        val = steadily(
            lambda: self.row(
                "GET /auth/validate",
                self.load(ours, kit.cycling(validate_reqs), status_is(200)),
                f"{len(tokens)} tokens cycled",
            )
        )
        need = int(max(h_val.rate, 1000) * 1.3 * self.span) + 1000
        t = time.monotonic()
        fresh = [validate_request(tok) for tok in fresh_tokens(self.data_dir, tokens, need)]
        print(f"  {need:,} fresh tokens signed in {time.monotonic() - t:.1f} s (untimed)")
        val_cold = steadily(
            lambda: self.row(
                "GET /auth/validate, uncached",
                self.load(ours, kit.OneEach(list(fresh)), status_is(200)),
                f"{need:,} distinct tokens",
            )
        )
        h_int = steadily(
            lambda: self.row(
                "hello-world, introspect's bytes",
                self.load(hello, kit.cycling(sample_introspect), status_is(200)),
                "HTTP ceiling",
            )
        )
        intro = steadily(
            lambda: self.presigned(
                ours,
                "POST /auth/introspect (signed)",
                lambda n: introspect_requests(svc, tokens, n),
                active,
                h_int.rate,
            )
        )
        mtls_reqs = mtls_introspect_requests(svc, tokens)
        h_mtls = steadily(
            lambda: self.row(
                "hello-world, mTLS introspect's bytes",
                self.load(hello, kit.cycling(mtls_reqs), status_is(200)),
                "HTTP ceiling",
            )
        )
        intro_mtls = steadily(
            lambda: self.row(
                "POST /auth/introspect (mTLS at proxy)",
                self.load(ours, kit.cycling(mtls_reqs), active),
                "Client-Cert from a trusted proxy",
            )
        )
        refresh = steadily(
            lambda: self.row(
                "POST /auth/token refresh_token",
                self.load(ours, chains.next, chains.ok),
                f"{sessions} sessions chained",
            )
        )
        login = steadily(
            lambda: self.presigned(
                ours,
                "POST /auth/token jwt-bearer (login)",
                lambda n: login_requests(op, endpoint, n),
                status_is(200),
                h_int.rate,
            )
        )
        rows += [h_val, val, val_cold, h_int, intro, h_mtls, intro_mtls, refresh, login]
        stop(self.servers, hello)
        open_sessions = _open_sessions(self.data_dir)
        idle = _idle_cores(ours, 3.0)
        print(f"  after the logins: {open_sessions:,} open sessions; idle server {idle:.2f} cores")

        # the SDK: keys fetched from the server once, then offline
        from authsvc.client import TokenVerifier

        issuer = base + "/auth"
        audience = jwt.decode(tokens[0], options={"verify_signature": False})["aud"]
        verifier = TokenVerifier(issuer, audience, jwks_url=base + "/auth/jwks.json")
        verifier.verify(tokens[0])
        kid = jwt.get_unverified_header(tokens[0])["kid"]
        key = verifier.keys.get(kid)
        stop(self.servers, ours)

        seconds = a.seconds
        cfg = "1 thread, in-process"

        def in_process(
            name: str, fn: Callable[[Any], object], items: list[Any], secs: float, note: str
        ) -> kit.Row:
            def run() -> kit.Row:
                rate, other = cycle_rate(fn, items, secs)
                print(f"  {name}: {rate:,.0f}/s, others {other:.2f}", flush=True)
                return kit.Row(name, cfg, rate, note=note, other_cpu=other)

            return steadily(run)

        sdk = in_process(
            "SDK TokenVerifier.verify (offline)", verifier.verify, tokens, seconds, "JWKS cached"
        )
        pyjwt = in_process(
            "raw PyJWT jwt.decode ES256",
            lambda tok: jwt.decode(
                tok, key, algorithms=["ES256"], audience=audience, issuer=issuer
            ),
            tokens,
            seconds,
            "same tokens, key, aud, iss",
        )
        ecdsa = in_process(
            "raw ECDSA P-256 verify (context)",
            lambda pair: key.verify(pair[1], pair[0], ec.ECDSA(hashes.SHA256())),
            [raw_ecdsa(tok) for tok in tokens],
            min(seconds, 3.0),
            "cryptography only, same signatures",
        )
        rows += [sdk, pyjwt, ecdsa]

        print()
        kit.print_table(rows)
        print(
            "fail = non-success responses in the window; srv CPU, cli CPU, other = cores used\n"
            "while measuring by the server, the load client, and anything else on the machine;\n"
            f"ms/req = server CPU milliseconds per successful request; every client closes its\n"
            f"connection after {a.per_connection} answers and opens a new one."
        )
        noisy = [r for r in rows if r.other_cpu > kit.NOISY_CORES]
        if noisy:
            worst = max(r.other_cpu for r in noisy)
            print(
                f"WARNING: other processes used up to {worst:.2f} cores during {len(noisy)} of "
                "the runs: those numbers are low and not comparable across runs."
            )
        print()
        online = [
            ("validate", val, h_val),
            ("validate, uncached", val_cold, h_val),
            ("introspect (mTLS at proxy)", intro_mtls, h_mtls),
            ("introspect (signed)", intro, h_int),
        ]
        missed = self.goals(online, h_int, refresh, login, sdk, pyjwt, ecdsa, idle)
        if missed and not a.no_profile:
            self.profile(missed, base, op, svc, tokens)
        print()
        load_report("at the end")
        print(f"Total run time {time.monotonic() - started:.0f} s.")
        return 0

    def grant_role(self, http: requests.Session, base: str, ent: Party, op: Party) -> None:
        from ca.policy import authorization_of
        from ca.signedreq import SCHEME, sign_request

        # a grant names the operator's authorization (its certificate's dnQualifier)
        grant = {
            "operator_id": OPERATOR_ID,
            "roles": ["declaration"],
            "authorization": authorization_of(op.cert),
        }
        body = json.dumps(grant).encode()
        now = datetime.datetime.now(datetime.UTC)
        jws = sign_request(ent.key, ent.chain, "POST", "/auth/v1/roles", body, now)
        r = http.post(
            base + "/auth/v1/roles",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"{SCHEME} {jws}"},
            timeout=30,
        )
        if r.status_code != 200:
            raise RuntimeError(f"granting the role failed: HTTP {r.status_code} {r.text[:300]}")

    def goals(
        self,
        online: list[tuple[str, kit.Row, kit.Row]],
        h_int: kit.Row,
        refresh: kit.Row,
        login: kit.Row,
        sdk: kit.Row,
        pyjwt: kit.Row,
        ecdsa: kit.Row,
        idle: float,
    ) -> list[str]:
        print("Goals")
        missed = []

        def line(text: str, goal: str, ok: bool, *rows: kit.Row) -> None:
            print(f"  {text}".ljust(80) + f"goal {goal}: {kit.verdict(ok)}{disturbed(*rows)}")

        for key, row, hello in online:
            share = row.rate / hello.rate if hello.rate else 0.0
            line(
                f"{key}: {kit.fmt_rate(row.rate)}/s = {share:.1%} of hello-world "
                f"{kit.fmt_rate(hello.rate)}/s",
                f">= {GOAL_ONLINE_VS_HELLO:.0%}",
                share >= GOAL_ONLINE_VS_HELLO,
                row,
                hello,
            )
            if share < GOAL_ONLINE_VS_HELLO:
                missed.append(key.split()[0].rstrip(","))
        share = sdk.rate / pyjwt.rate if pyjwt.rate else 0.0
        line(
            f"SDK offline: {kit.fmt_rate(sdk.rate)}/s = {share:.1%} of raw PyJWT "
            f"{kit.fmt_rate(pyjwt.rate)}/s (per core)",
            f">= {GOAL_SDK_VS_PYJWT:.0%}",
            share >= GOAL_SDK_VS_PYJWT,
            sdk,
            pyjwt,
        )
        if share < GOAL_SDK_VS_PYJWT:
            missed.append("sdk")
        print("Context")
        for row, hello in [(r, h) for _, r, h in online] + [(refresh, h_int), (login, h_int)]:
            if row.result and hello.result and row.result.server_cpu > 0:
                mine, theirs = row.result.cpu_ms_per_request(), hello.result.cpu_ms_per_request()
                print(
                    f"  {row.name}: {mine:.2f} ms server CPU per request, hello-world "
                    f"{theirs:.2f}: by CPU per request {theirs / mine:.1%} of the ceiling"
                )
        for row in (login, refresh):
            print(
                f"  {row.name}: {kit.fmt_rate(row.rate)}/s = "
                f"{row.rate / h_int.rate if h_int.rate else 0:.1%} of hello-world (introspect's "
                "bytes)"
            )
        print(
            f"  raw PyJWT = {pyjwt.rate / ecdsa.rate if ecdsa.rate else 0:.1%} of bare ECDSA "
            f"verify ({kit.fmt_rate(ecdsa.rate)}/s): what JWT parsing and claim checks cost"
        )
        print(f"  idle server after the logins (session sweeper): {idle:.2f} cores")
        return missed

    def profile(
        self, missed: list[str], base: str, op: Party, svc: Party, tokens: list[str]
    ) -> None:
        n = max(200, int(self.args.seconds * 50))
        if "validate" in missed:
            reqs = [
                {"Authorization": f"Bearer {tok}", "X-Eport-Service": SERVICE} for tok in tokens
            ]

            def send_validate(client: Any, i: int) -> Any:
                r = client.get(
                    "/auth/validate",
                    headers=reqs[i % len(reqs)],
                    environ_base={"REMOTE_ADDR": HOST},
                )
                assert r.status_code == 200, r.status_code
                return r

            profile_endpoint(self.data_dir, base, "GET /auth/validate", send_validate, n)
        if "introspect" in missed:
            signed = introspect_requests(svc, tokens, 2 * n + 20)
            bodies = [_split(raw) for raw in signed]

            def send_introspect(client: Any, i: int) -> Any:
                headers, body = bodies[i]
                r = client.post(
                    "/auth/introspect",
                    data=body,
                    headers=headers,
                    environ_base={"REMOTE_ADDR": HOST},
                )
                assert r.status_code == 200 and r.json["active"], r.data[:200]
                return r

            profile_endpoint(self.data_dir, base, "POST /auth/introspect", send_introspect, n)


def _split(raw: bytes) -> tuple[dict[str, str], bytes]:
    """Headers and body of a pre-encoded request (for the Flask test client)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode().split("\r\n")[1:]:
        name, _, value = line.partition(": ")
        if name.lower() not in ("host", "content-length"):
            headers[name] = value
    return headers, body


def _send(http: requests.Session, base: str, raw: bytes) -> dict[str, Any]:
    """Send one pre-encoded form POST with ``requests`` (set-up only)."""
    line, _, _ = raw.partition(b"\r\n")
    path = line.split(b" ")[1].decode()
    headers, body = _split(raw)
    r = http.post(base + path, data=body, headers=headers, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"{path}: HTTP {r.status_code} {r.text[:300]}")
    doc: dict[str, Any] = r.json()
    return doc


def _open_sessions(data_dir: Path) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(data_dir / "auth.db")) as db:
        return int(
            db.execute("SELECT count(*) FROM auth_sessions WHERE ended_at IS NULL").fetchone()[0]
        )


def _idle_cores(server: kit.Server, seconds: float) -> float:
    c0 = sum(kit.session_cpu(server.proc.pid).values())
    t0 = time.perf_counter()
    time.sleep(seconds)
    c1 = sum(kit.session_cpu(server.proc.pid).values())
    return (c1 - c0) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    p.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up")
    p.add_argument("--clients", type=int, default=16, help="concurrent connections")
    p.add_argument(
        "--per-connection",
        type=int,
        default=20,
        help="requests a client sends on one connection before opening a new one",
    )
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    p.add_argument("--no-profile", action="store_true", help="do not profile a missed goal")
    add_run_options(p)
    args = p.parse_args(argv)
    return run_in_workdir(
        args,
        "eport-bench-auth-",
        lambda workdir, servers, started: Bench(args, workdir, servers).run(started),
    )


if __name__ == "__main__":
    sys.exit(main())
