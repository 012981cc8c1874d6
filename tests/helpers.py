"""World-building helpers the integration tests share: enterprises, operators and
services enrolled through the real CLI against a running server."""

from __future__ import annotations

import base64
import contextlib
import http.server
import itertools
import json
import socket
import subprocess
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from tests.conftest import Server, need

SERVICE_HOST = "customs-declaration.eport.example"


_counter = itertools.count()


def fresh_uscc() -> str:
    """A valid USCC that no other test of this process uses."""
    from ca.uscc import check_character

    body = f"91350100MB{next(_counter) % 10000:04d}{(time.monotonic_ns() // 1000) % 1000:03d}"
    return body + check_character(body)


def jrun(server: Server, *args: str) -> dict[str, Any]:
    out = json.loads(server.eport(*args, "--json").stdout)
    assert isinstance(out, dict)
    return out


def creds(d: Path) -> list[str]:
    return ["--cert", str(d / "cert.pem"), "--key", str(d / "key.pem")]


def serial_of(d: Path) -> str:
    return format(x509.load_pem_x509_certificate((d / "cert.pem").read_bytes()).serial_number, "x")


def cert_of(d: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())


def serial_clone(
    cert: x509.Certificate, issuer_key: Any, subject: x509.Name | None = None
) -> tuple[x509.Certificate, Any]:
    """A copy of ``cert`` made with its issuing CA's key outside issuance (a stolen key, a
    mis-issuance): the same serial, extensions and validity, a new key, and ``subject``
    (default: the same). Its chain verifies; it is not the certificate the CA recorded."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or cert.subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        if ext.oid != x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            builder = builder.add_extension(ext.value, ext.critical)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return builder.add_extension(ski, critical=False).sign(issuer_key, hashes.SHA256()), key


def dev_issuer_key(data_dir: Path, issuer: str) -> Any:
    """A development CA's issuing CA key (``issuer``: its id), as a thief would use it."""
    from cryptography.hazmat.primitives import serialization

    from ca.devinit import read_passphrases

    passphrase = read_passphrases(data_dir)["ca_key_passphrase"].encode()
    pem = (data_dir / "ca" / "issuers" / f"{issuer}.key").read_bytes()
    return serialization.load_pem_private_key(pem, passphrase)


def enroll_enterprise(
    server: Server,
    tmp: Path,
    name: str = "SDK Trading Co., Ltd.",
    *,
    uscc: str | None = None,
    officer: list[str] | None = None,
    key_type: str | None = None,
    **env: str,
) -> Path:
    """An enterprise applies, an RA officer approves (``officer``: its credential
    options, the development officer by default; ``env``: e.g. its key's passphrase) and
    it enrolls (``key_type``: ``eport enroll --key-type``, else its default): its
    directory (cert.pem, key.pem, chain.pem)."""
    app = jrun(server, "apply", "--uscc", uscc or fresh_uscc(), "--name", name)
    approver = server.officer() if officer is None else officer
    grant = json.loads(server.eport("ra", "approve", app["id"], *approver, "--json", **env).stdout)
    out = tmp / f"ent-{app['id']}"
    jrun(
        server,
        "enroll",
        "--code",
        grant["enrollment_code"],
        "--profile",
        "enterprise",
        "--out",
        str(out),
        *(["--key-type", key_type] if key_type else []),
    )
    return out


def enroll_operator(server: Server, ent: Path, tmp: Path, op_id: str, *roles: str) -> Path:
    grant = jrun(
        server, "operator", "add", "--name", f"Operator {op_id}", "--id", op_id, *creds(ent)
    )
    out = tmp / f"op-{op_id}-{ent.name}"
    jrun(
        server,
        "enroll",
        "--code",
        grant["enrollment_code"],
        "--profile",
        "operator",
        "--out",
        str(out),
    )
    if roles:
        grant_roles(server, ent, op_id, *roles)
    return out


def grant_roles(server: Server, ent: Path, op_id: str, *roles: str) -> None:
    args = [a for r in roles for a in ("--role", r)]
    jrun(server, "roles", "grant", "--operator", op_id, *args, *creds(ent))


def enroll_service(
    server: Server, tmp: Path, host: str = SERVICE_HOST, *, key_type: str | None = None
) -> Path:
    """A service-tls certificate for ``host``, vetted by a customs RA officer (``key_type``:
    ``eport enroll --key-type``, else its default)."""
    app = jrun(server, "apply", "--class", "service", "--agency", "customs", "--name", host)
    grant = jrun(server, "ra", "approve", app["id"], *server.officer())
    out = tmp / f"svc-{app['id']}"
    jrun(
        server,
        "enroll",
        "--code",
        grant["enrollment_code"],
        "--profile",
        "service-tls",
        "--out",
        str(out),
        *(["--key-type", key_type] if key_type else []),
    )
    return out


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited ({proc.returncode}):\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen:\n{log.read_text()}")


@contextlib.contextmanager
def nginx(tmp: Path, site: str, port: int) -> Iterator[None]:
    """nginx in the foreground, one process, everything under ``tmp``; ``site`` is the
    server block(s) to include, listening on ``port``."""
    binary = need("nginx", "/usr/sbin/nginx")
    (tmp / "site.conf").write_text(site)
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""
    )
    base = [binary, "-p", f"{tmp}/", "-c", str(conf), "-e", str(tmp / "error.log")]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    with open(tmp / "nginx.out", "wb") as fh:
        proc = subprocess.Popen(base, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, tmp / "error.log")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- no secret in clear ----------------------------------------------------------------------

PRIVATE_PEM = (b"BEGIN PRIVATE KEY", b"BEGIN EC PRIVATE KEY", b"BEGIN RSA PRIVATE KEY")
"""Markers of an unencrypted PEM private key (PKCS#8, SEC 1, PKCS#1); an encrypted PKCS#8
key reads ``BEGIN ENCRYPTED PRIVATE KEY`` and the CA's wrapped keys their own marker."""
VANISHING = ("-wal", "-shm", "-journal")
"""SQLite's side files: they go when the last connection closes, maybe mid-scan."""


def secret_forms(secret: bytes) -> list[bytes]:
    """``secret`` as it could be written down: raw, hex, base64 and base64url (unpadded,
    so a secret inside a longer encoded string is found too at an aligned offset)."""
    assert secret, "an empty secret matches everything"
    forms = [secret, secret.hex().encode(), base64.b64encode(secret).rstrip(b"=")]
    forms.append(base64.urlsafe_b64encode(secret).rstrip(b"="))
    return list(dict.fromkeys(forms))


def tree_files(roots: Iterable[Path]) -> Iterator[tuple[Path, bytes]]:
    """Every file under ``roots`` (a root may be a file itself) and its bytes."""
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if not path.is_file():
                continue
            try:
                blob = path.read_bytes()
            except FileNotFoundError:
                if path.name.endswith(VANISHING):
                    continue
                raise
            yield path, blob


def assert_no_secret(blobs: Iterable[tuple[object, bytes]], secrets: Iterable[bytes]) -> int:
    """No blob holds an unencrypted PEM private key or any of ``secrets`` in any of its
    :func:`secret_forms`; a failure names the place and the secret's index, not its bytes.
    Returns how many blobs were read (callers assert the scan saw enough)."""
    needles = [(i, form) for i, s in enumerate(secrets) for form in secret_forms(s)]
    count = 0
    for where, blob in blobs:
        count += 1
        for marker in PRIVATE_PEM:
            assert marker not in blob, (where, marker)
        for i, needle in needles:
            assert needle not in blob, (where, f"secret #{i}")
    return count


def assert_no_secret_in_tree(roots: Iterable[Path], secrets: Iterable[bytes]) -> int:
    """:func:`assert_no_secret` over every file under ``roots``; SQLite's side files that
    vanish while it runs are skipped. Returns how many files were read."""
    return assert_no_secret(tree_files(roots), secrets)


@contextlib.contextmanager
def in_process_ca(
    data_dir: Path, store_class: type[Any] | None = None, database_url: str = ""
) -> Iterator[tuple[Any, Any, Any]]:
    """A development joint CA in this process (no server): ``(authority, store, sessions)``
    over a fresh database (SQLite in ``data_dir`` or ``database_url``), its store wired
    to the Merkle log as the app's is."""
    import datetime

    from sqlalchemy.orm import sessionmaker

    from ca import hierarchy, translog
    from ca.app import build_authority
    from ca.config import CAConfig
    from ca.db import make_engine, upgrade
    from ca.issuance import CertificateFactory
    from ca.policy import load_policies
    from ca.store import SqlStore

    overrides: dict[str, Any] = {"data_dir": data_dir}
    if database_url:
        overrides["database_url"] = database_url
    cfg = CAConfig.load(overrides)
    upgrade(cfg.sqlalchemy_url)
    policies = load_policies(Path(__file__).resolve().parent.parent / "policies")
    h = hierarchy.create(
        policies,
        data_dir,
        root_passphrase=b"root-pass",
        ca_passphrase=b"ca-pass",
        factory=CertificateFactory(),
        now=datetime.datetime.now(datetime.UTC),
    )
    engine = make_engine(cfg.sqlalchemy_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    store = (store_class or SqlStore)(sessions, event_sinks=(translog.append_event,))
    try:
        yield build_authority(cfg, policies, h, store), store, sessions
    finally:
        engine.dispose()


@contextlib.contextmanager
def server_authority(server: Server) -> Iterator[Any]:
    """The joint CA of a running development server, in this process: its hierarchy (keys
    opened with the development passphrase) over its database, with the store wired to the
    Merkle log as the server's is. For set-ups too slow through the CLI."""
    from sqlalchemy.orm import sessionmaker

    from ca import hierarchy, translog
    from ca.app import build_authority, ca_passphrase
    from ca.config import CAConfig
    from ca.db import make_engine
    from ca.policy import load_policies
    from ca.store import SqlStore

    overrides = {
        "data_dir": server.data_dir,
        "dev": True,
        "database_url": server.database_url,
        "public_base_url": server.url,  # the status URLs its certificates name
    }
    cfg = CAConfig.load(overrides, environ={})
    h = hierarchy.load(cfg.data_dir, ca_passphrase(cfg))
    engine = make_engine(cfg.sqlalchemy_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    store = SqlStore(sessions, event_sinks=(translog.append_event,))
    try:
        yield build_authority(cfg, load_policies(cfg.policies_dir), h, store)
    finally:
        engine.dispose()


def add_operators(ca: Any, uscc: str, legal_name: str, n: int) -> list[x509.Certificate]:
    """``n`` operator certificates of the enterprise ``uscc`` made by the joint CA ``ca``
    (an :class:`~ca.authority.JointCA`) directly: each with its approved application, signed
    unlinted by the operators' issuing CA, and stored with its ``certificate.issued`` event
    and log entry, all in one transaction. A large enterprise in seconds, where enrolling
    each operator through the CLI takes about one."""
    return [cert for cert, _ in add_operators_with_keys(ca, uscc, legal_name, n)]


def add_operators_with_keys(
    ca: Any, uscc: str, legal_name: str, n: int
) -> list[tuple[x509.Certificate, Any]]:
    """:func:`add_operators`, each certificate with its private key (to log in with)."""
    import os

    from ca.authority import certificate_record
    from ca.keys import KeyType
    from ca.records import Application, ApplicationState, Event, EventType

    profile = ca.policies.profile("operator")
    issuer = ca.issuers[profile.issuer]
    sampler, ca.factory.lint_sampler = ca.factory.lint_sampler, lambda: False
    now = ca.clock()
    made: list[tuple[x509.Certificate, Any]] = []
    try:
        with ca.store.transaction() as tx:
            for i in range(n):
                vetted = {
                    "uscc": uscc,
                    "legal_name": legal_name,
                    "operator_name": f"Operator {i}",
                    "operator_id": f"BULK{i}",
                }
                app = Application(
                    id="app_" + base64.b32encode(os.urandom(10)).decode().lower(),
                    subject_class="operator",
                    uscc=uscc,
                    vetted=vetted,
                    state=ApplicationState.APPROVED,
                    created_at=now,
                    applicant="test",
                    decided_by="test",
                    decided_at=now,
                )
                tx.add_application(app)
                key = KeyType.P256.generate()
                cert = ca.factory.issue(
                    profile, issuer, key.public_key(), vetted, now, authorization=app.id
                )
                rec = certificate_record(cert, issuer.id, profile.name, app, None)
                tx.add_certificate(rec)
                tx.append_event(
                    Event.about(EventType.CERTIFICATE_ISSUED, rec, actor="test", at=now)
                )
                made.append((cert, key))
    finally:
        ca.factory.lint_sampler = sampler
    return made


def row_counts(url: str, tables: Iterable[Any]) -> dict[str, int]:
    """The number of rows of each of ``tables`` (models or tables) in the database at
    ``url``, by table name: what a refused request must leave unchanged."""
    from sqlalchemy import create_engine, func, select

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                getattr(t, "__table__", t).name: conn.execute(
                    select(func.count()).select_from(getattr(t, "__table__", t))
                ).scalar_one()
                for t in tables
            }
    finally:
        engine.dispose()


@contextlib.contextmanager
def dev_ca_service(overrides: dict[str, Any]) -> Iterator[Any]:
    """The development CA (made on first use) as ``create_app`` wires it, in this process
    and within its app context: its ``CAService``. No server, no HTTP."""
    from ca.app import EXTENSION, create_app, db
    from ca.config import CAConfig
    from ca.devinit import ensure_dev_ca

    cfg = CAConfig.load({"dev": True, **overrides}, environ={})
    ensure_dev_ca(cfg)
    app = create_app(cfg)
    with app.app_context():
        yield app.extensions[EXTENSION]
        db.session.remove()
        db.engine.dispose()


def enterprise_at_ceremony(ca: Any, uscc: str, name: str) -> Any:
    """An enterprise applied, approved at a ceremony and enrolled (a P-256 key), through
    the CA core (``ca``: a ``JointCA``): its ``Issued``."""
    from cryptography.hazmat.primitives import hashes, serialization

    from ca.keys import KeyType

    grant = ca.approve_at_ceremony(
        ca.apply("enterprise", {"uscc": uscc, "legal_name": name}).id, "test"
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    csr = builder.sign(KeyType.P256.generate(), hashes.SHA256())  # type: ignore[arg-type]
    return ca.enroll(grant.code, "enterprise", csr.public_bytes(serialization.Encoding.PEM))


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` (a file or a directory) made immutable (``chattr +i``) for the block: the
    tests run as root, whom file modes do not stop."""
    from tests.conftest import IN_CI

    chattr = need("chattr")
    made = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:  # a file system without the attribute (tmpfs, overlayfs)
        reason = f"chattr +i is not supported here: {made.stderr.strip()}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def until(ok: Callable[[], bool], seconds: float = 15.0) -> bool:
    """Whether ``ok()`` holds within ``seconds``, asked every 0.2 s (the workers of a
    server reload the CA files within about a second of a ceremony or a renewal)."""
    deadline = time.monotonic() + seconds
    while not ok():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def health_of(url: str) -> dict[str, object]:
    """``GET /ca/v1/health`` of the server at ``url``, as a monitor reads it."""
    doc: dict[str, object] = requests.get(url + "/ca/v1/health", timeout=10).json()
    return doc


def unsealed_by_passphrase(data_dir: Path) -> dict[str, str]:
    """The settings that serve the development CA in ``data_dir`` without --dev, as a CA
    not under custody is served: its keys unsealed with EPORT_CA_KEY_PASSPHRASE (and
    nothing renews its root CRL at start)."""
    pw = tomllib.loads((data_dir / "dev" / "DEV-ONLY-passphrases.toml").read_text())
    return {
        "EPORT_CA_KEY_PASSPHRASE": pw["ca_key_passphrase"],
        "EPORT_AUTH_KEY_PASSPHRASE": pw["auth_key_passphrase"],
    }


def _record_guards(engine: Any, action: str) -> None:
    """Run migration 0012's ``upgrade`` or ``downgrade`` (its triggers only) on ``engine``,
    without Alembic: the schema revision a running server watches stays as it is."""
    import importlib.util

    from sqlalchemy import text

    path = Path(__file__).resolve().parent.parent / "ca/migrations/versions/0012_records_kept.py"
    spec = importlib.util.spec_from_file_location("eport_migration_0012", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with engine.begin() as conn:

        class Op:
            def get_bind(self) -> Any:
                return conn

            def execute(self, sql: str) -> None:
                conn.execute(text(sql))

        module.op = Op()
        getattr(module, action)()


@contextlib.contextmanager
def records_unguarded(engine: Any) -> Iterator[Any]:
    """``engine`` with the database's guards of the CA's records dropped (migration 0012),
    as someone who may run DDL on it would do first; put back on leaving. The tamper tests
    play that someone: what they check is that the Merkle log and ``eport audit verify``
    detect what the guards no longer stop."""
    _record_guards(engine, "downgrade")
    try:
        yield engine
    finally:
        _record_guards(engine, "upgrade")


def self_signed(common_name: str, *alt_names: x509.GeneralName) -> tuple[x509.Certificate, Any]:
    """A self-signed P-256 certificate (a day long, ``alt_names`` as its SAN) and its key:
    a stand-in nothing trusts, for calls checked before any chain is."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(key, hashes.SHA256()), key


# -- small HTTP servers: a stub, and a relay that fails as the network may -------------------


class HttpStub:
    """A plain HTTP server on 127.0.0.1, in a thread, whose every request is answered by
    ``answer(method, path, body)`` -> ``(status, content type, body)``: a server that is
    not the e-port one, or a relay in front of it. ``url`` is its base."""

    def __init__(self, answer: Callable[[str, str, bytes], tuple[int, str, bytes]]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, kind, out = answer(self.command, self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _any

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HttpStub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


TRY_LATER = b"\x30\x03\x0a\x01\x03"
"""An OCSPResponse of status tryLater (RFC 6960 §2.3), which carries no responseBytes."""


class Relay:
    """An HTTP relay to ``target`` (the CA's OCSP and CRLs, the token service's key set)
    that counts what passes (``taken()``: "ocsp" for a POST, "crl" for ``/crl/…``,
    "other") and fails as a network, a front proxy or a busy responder does: ``down``
    answers every request with a proxy's 502 page, ``crl_down`` every CRL, and the OCSP
    requests for the serial ``later`` (hex) get tryLater."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.down = False
        self.crl_down = False
        self.later: str | None = None
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stub = HttpStub(self._answer)
        self.url = self._stub.url

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        from cryptography.x509 import ocsp

        what = "ocsp" if method == "POST" else "crl" if path.startswith("/crl/") else "other"
        with self._lock:
            self._counts[what] += 1
        if self.down or (what == "crl" and self.crl_down):
            return 502, "text/html", b"<html>502 Bad Gateway</html>"
        if (
            what == "ocsp"
            and self.later is not None
            and format(ocsp.load_der_ocsp_request(body).serial_number, "x") == self.later
        ):
            return 200, "application/ocsp-response", TRY_LATER
        headers = {"Content-Type": "application/ocsp-request"} if method == "POST" else {}
        r = requests.request(
            method, self.target + path, data=body or None, headers=headers, timeout=10
        )
        return r.status_code, r.headers.get("Content-Type", "application/octet-stream"), r.content

    def taken(self) -> Counter[str]:
        """The counts since the last call."""
        with self._lock:
            out, self._counts = self._counts, Counter()
        return out

    def close(self) -> None:
        self._stub.close()


CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium, which Playwright drives (no ``playwright install``)."""


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright browser on :data:`CHROMIUM`, launched as it runs as root here; the
    caller's environment (a CA for Node, a host-name shim) is taken as it is."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    need("chromium", CHROMIUM)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()
