"""Two hosts, one PostgreSQL database: two ``eport serve`` processes, each with its own
copy of the data directory (made by the development CA's first start, then copied, as a
second host gets it), both serving at once under concurrent load (docs/ca.md, "Several
hosts").

What must hold across the hosts: every enrollment stored once with its event and log
entry, the Merkle log without gap or double index and both hosts' checkpoints consistent;
CRL numbers that only grow whichever host signs, each host's CRL listing the other's
revocations and their OCSP answers agreeing; a signed request accepted once in all; a
session of the token service usable, ended and its refresh token rotated across hosts.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, text

from ca.signedreq import SCHEME, sign_request
from cli.keyfiles import Identity, load_identity
from tests.conftest import (
    EPORT,
    Postgres,
    Server,
    base_env,
    free_port,
    start_server,
    stop,
    wait_http,
)
from tests.helpers import fresh_uscc

PUBLIC = "https://eport.example"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
"""The public base URL both hosts serve under (a load balancer's name)."""


@dataclass
class Hosts:
    a: Server
    b: Server
    database_url: str
    auth_database_url: str
    officer: Identity

    def both(self) -> tuple[Server, Server]:
        return self.a, self.b


@contextlib.contextmanager
def two_hosts(
    postgres: Postgres, root: Path, name: str, extra_env: dict[str, str] | None = None
) -> Iterator[Hosts]:
    """Two hosts on new databases ``name`` (the CA's) and ``name``_auth: host A's first
    start makes the development CA, host B gets a copy of its data directory
    (``extra_env``: more settings of both)."""
    ca_db = postgres.createdb(name)
    auth_db = postgres.createdb(name + "_auth")
    port_a, port_b = free_port(), free_port()
    # One public name for both, as behind a load balancer: it is the token issuer and the
    # base of the certificates' CRL and OCSP URLs.
    env = {"EPORT_AUTH_DATABASE_URL": auth_db, "EPORT_PUBLIC_BASE_URL": PUBLIC}
    env.update(extra_env or {})
    (root / "a").mkdir()
    (root / "b").mkdir()
    # Host A's first start makes the development CA in its data directory and the database.
    _srv, proc = start_server(root / "a" / "data", ca_db, extra_env=env, port=port_a)
    stop(proc)
    # Host B gets a copy of that data directory (not its lock file).
    shutil.copytree(
        root / "a" / "data", root / "b" / "data", ignore=shutil.ignore_patterns("serve.lock")
    )
    procs = []
    try:
        a, pa = start_server(root / "a" / "data", ca_db, extra_env=env, port=port_a)
        procs.append(pa)
        b, pb = start_server(root / "b" / "data", ca_db, extra_env=env, port=port_b)
        procs.append(pb)
        d = a.dev / "officers" / "customs"
        officer = load_identity(d / "officer.pem", d / "officer.key", d / "DEV-ONLY-passphrase.txt")
        yield Hosts(a, b, ca_db, auth_db, officer)
    finally:
        for p in procs:
            stop(p)


@pytest.fixture(scope="module")
def hosts(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    with two_hosts(postgres, tmp_path_factory.mktemp("two-hosts"), "eport_two_hosts") as h:
        yield h


def signed_post(
    srv: Server, path: str, body: dict[str, Any], ident: Identity, token: str | None = None
) -> requests.Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    if token is None:
        token = sign_request(
            ident.key, ident.chain, "POST", path, data, datetime.datetime.now(datetime.UTC)
        )
    headers = {"Content-Type": "application/json", "Authorization": f"{SCHEME} {token}"}
    return requests.post(srv.url + path, data=data, headers=headers, timeout=60)


def csr_pem(name: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def approved_code(hosts: Hosts, srv: Server) -> str:
    """An enterprise applies on ``srv`` and the customs officer approves it there."""
    app = requests.post(
        srv.url + "/ca/v1/applications",
        json={"uscc": fresh_uscc(), "legal_name": "Two Hosts Trading Co."},
        timeout=60,
    )
    assert app.status_code == 201, app.text
    app_id = app.json()["id"]
    grant = signed_post(srv, f"/ca/v1/ra/applications/{app_id}/approve", {}, hosts.officer)
    assert grant.status_code == 200, grant.text
    return str(grant.json()["enrollment_code"])


def enroll(srv: Server, code: str) -> requests.Response:
    _key, csr = csr_pem("two hosts")
    return requests.post(
        srv.url + "/ca/v1/enroll",
        json={"code": code, "profile": "enterprise", "csr": csr},
        timeout=60,
    )


def enterprise(hosts: Hosts) -> Identity:
    """An enterprise approved on host A and enrolled on host B: its key and chain."""
    key, csr = csr_pem("two hosts enterprise")
    r = requests.post(
        hosts.b.url + "/ca/v1/enroll",
        json={"code": approved_code(hosts, hosts.a), "profile": "enterprise", "csr": csr},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    doc = r.json()
    chain = x509.load_pem_x509_certificates((doc["certificate"] + doc["chain"]).encode())
    return Identity(chain, key)


def at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda f: f(), calls))


def rows(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        engine.dispose()


def enrolled(hosts: Hosts, per_host: int) -> list[x509.Certificate]:
    """``per_host`` codes approved on each host, all enrolled at once, each on the host
    that did not approve it; their certificates."""
    pairs = [(hosts.a, hosts.b), (hosts.b, hosts.a)] * per_host
    codes = at_once([lambda p=p: (approved_code(hosts, p[0]), p[1]) for p in pairs])
    answers = at_once([lambda c=c: enroll(c[1], c[0]) for c in codes])
    assert [r.status_code for r in answers] == [201] * len(answers), [
        r.text for r in answers if r.status_code != 201
    ]
    return [x509.load_pem_x509_certificate(r.json()["certificate"].encode()) for r in answers]


def test_enrollments_on_both_hosts_are_each_stored_and_logged_once(
    hosts: Hosts, tmp_path: Path
) -> None:
    certs = enrolled(hosts, 12)
    serials = {format(c.serial_number, "x") for c in certs}
    assert len(serials) == len(certs)
    url = hosts.database_url
    stored = rows(url, "SELECT serial FROM certificates")
    assert serials <= {r[0] for r in stored}
    # every certificate has one issuance event, every event one log entry
    unlogged = rows(
        url,
        "SELECT c.serial FROM certificates c LEFT JOIN events e ON e.serial = c.serial"
        " AND e.type = 'certificate.issued' LEFT JOIN log_entries l ON l.event_id = e.id"
        " WHERE l.idx IS NULL",
    )
    assert serials.isdisjoint({r[0] for r in unlogged})
    twice = rows(
        url,
        "SELECT serial FROM events WHERE type = 'certificate.issued'"
        " GROUP BY serial HAVING count(*) > 1",
    )
    assert twice == []
    (events,) = rows(url, "SELECT count(*) FROM events")[0:1]
    (entries, lo, hi, distinct_events) = rows(
        url, "SELECT count(*), min(idx), max(idx), count(DISTINCT event_id) FROM log_entries"
    )[0]
    (size,) = rows(url, "SELECT size FROM log_head")[0]
    assert (entries, lo, hi, distinct_events) == (size, 0, size - 1, size)
    assert events[0] == size
    # an auditor verifies the whole log on each host, one state file: host B's checkpoint
    # must be consistent with the one host A gave
    state = tmp_path / "auditor.json"
    for srv in hosts.both():
        srv.eport("audit", "verify", "--full", "--state", str(state), *srv.auditor())
    enrolled(hosts, 2)
    for srv in (hosts.b, hosts.a):
        srv.eport("audit", "verify", "--state", str(state), *srv.auditor())


SIGNED_CRLS: dict[int, set[bytes]] = {}
"""CRL number → the CRLs (DER) either host served with it: one each, RFC 5280 §5.2.3."""


def crl_of(srv: Server, issuer: str) -> x509.CertificateRevocationList:
    r = requests.get(f"{srv.url}/crl/{issuer}.crl", timeout=60)
    assert r.status_code == 200, r.text
    crl = x509.load_der_x509_crl(r.content)
    SIGNED_CRLS.setdefault(crl_number(crl), set()).add(r.content)
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def ocsp_status(srv: Server, cert: x509.Certificate, issuer: x509.Certificate) -> str:
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    r = requests.post(
        srv.url + "/ocsp",
        data=req.public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    resp = ocsp.load_der_ocsp_response(r.content)
    status = resp.certificate_status.name
    if status == "REVOKED" and resp.revocation_reason == x509.ReasonFlags.certificate_hold:
        return "HOLD"
    return status


def test_revocations_on_both_hosts_reach_both_crls_and_ocsp(hosts: Hosts) -> None:
    certs = enrolled(hosts, 4)
    issuer = x509.load_pem_x509_certificate(
        (hosts.a.data_dir / "ca" / "issuers" / "enterprise.crt").read_bytes()
    )
    before = max(crl_number(crl_of(srv, "enterprise")) for srv in hosts.both())
    numbers: list[tuple[str, int]] = []

    def change(i: int, cert: x509.Certificate) -> requests.Response:
        srv = hosts.both()[i % 2]
        serial = format(cert.serial_number, "x")
        if i % 4 < 2:
            path = f"/ca/v1/certificates/{serial}/revoke"
            return signed_post(srv, path, {"reason": "superseded"}, hosts.officer)
        return signed_post(srv, f"/ca/v1/certificates/{serial}/suspend", {}, hosts.officer)

    def fetch(i: int) -> None:
        srv = hosts.both()[i % 2]
        numbers.append((srv.url, crl_number(crl_of(srv, "enterprise"))))

    calls: list[Callable[[], Any]] = [lambda i=i, c=c: change(i, c) for i, c in enumerate(certs)]
    calls += [lambda i=i: fetch(i) for i in range(8)]
    done = at_once(calls)
    assert [r.status_code for r in done[: len(certs)]] == [200] * len(certs), [
        r.text for r in done[: len(certs)]
    ]
    # after the changes, each host's CRL lists every change made on either host, and the
    # numbers only grow, whichever host signed
    revoked = {format(c.serial_number, "x") for i, c in enumerate(certs) if i % 4 < 2}
    held = {format(c.serial_number, "x") for i, c in enumerate(certs) if i % 4 >= 2}
    last = before
    for srv in (hosts.a, hosts.b, hosts.a):
        crl = crl_of(srv, "enterprise")
        number = crl_number(crl)
        assert number >= last, (srv.url, number, last)
        last = number
        listed = {format(e.serial_number, "x") for e in crl}
        assert revoked | held <= listed, srv.url
        assert crl.is_signature_valid(issuer.public_key())
    assert all(n >= before for _url, n in numbers)
    for i, cert in enumerate(certs):
        got = {ocsp_status(srv, cert, issuer) for srv in hosts.both()}
        assert got == {"REVOKED" if i % 4 < 2 else "HOLD"}, (i, got)
    # a hold made on host B (index 3) lifted on host A: it leaves both CRLs, both say good
    lifted = format(certs[3].serial_number, "x")
    r = signed_post(hosts.a, f"/ca/v1/certificates/{lifted}/resume", {}, hosts.officer)
    assert r.status_code == 200, r.text
    for srv in (hosts.b, hosts.a):
        crl = crl_of(srv, "enterprise")
        assert crl_number(crl) > last
        assert lifted not in {format(e.serial_number, "x") for e in crl}, srv.url
        assert ocsp_status(srv, certs[3], issuer) == "GOOD", srv.url
    # no CRL number was ever given to two different CRLs, whichever host signed them
    assert all(len(ders) == 1 for ders in SIGNED_CRLS.values()), {
        n: len(d) for n, d in SIGNED_CRLS.items()
    }


def test_a_crl_number_is_signed_once_when_both_hosts_re_sign_at_once(hosts: Hosts) -> None:
    """After each revocation, both hosts' workers are asked for the stale CRL at once:
    one signs the next number and the others serve that same CRL. Before, a worker that
    had read the CRL's row before the signer committed kept that read under its row lock
    (the session's identity map), signed the same number again with other content, and
    overwrote it: two different CRLs with one number (RFC 5280 §5.2.3)."""
    certs = enrolled(hosts, 4)
    served: dict[int, set[bytes]] = {}

    def fetch(srv: Server) -> None:
        r = requests.get(f"{srv.url}/crl/enterprise.crl", timeout=60)
        assert r.status_code == 200, r.text
        served.setdefault(crl_number(x509.load_der_x509_crl(r.content)), set()).add(r.content)

    for i, cert in enumerate(certs):
        srv = hosts.both()[i % 2]
        path = f"/ca/v1/certificates/{format(cert.serial_number, 'x')}/revoke"
        r = signed_post(srv, path, {"reason": "superseded"}, hosts.officer)
        assert r.status_code == 200, r.text
        at_once([lambda s=s: fetch(s) for s in hosts.both() for _ in range(6)])
    twice = {n: len(ders) for n, ders in served.items() if len(ders) > 1}
    assert not twice, f"CRL numbers served with more than one CRL: {twice}"
    numbers = sorted(served)
    assert len(numbers) >= len(certs), numbers  # a new number after each revocation


def test_a_signed_request_is_accepted_by_one_host_only(hosts: Hosts) -> None:
    app = requests.post(
        hosts.a.url + "/ca/v1/applications",
        json={"uscc": fresh_uscc(), "legal_name": "Replay Trading Co."},
        timeout=60,
    )
    app_id = app.json()["id"]
    assert signed_post(hosts.a, f"/ca/v1/ra/applications/{app_id}/approve", {}, hosts.officer)
    # A new code may be asked for again and again: only the jti's single use refuses a copy.
    path = f"/ca/v1/ra/applications/{app_id}/code"
    for _ in range(3):
        data = b"{}"
        token = sign_request(
            hosts.officer.key,
            hosts.officer.chain,
            "POST",
            path,
            data,
            datetime.datetime.now(datetime.UTC),
        )
        answers = at_once(
            [lambda s=s, t=token: signed_post(s, path, {}, hosts.officer, t) for s in hosts.both()]
        )
        codes = sorted(r.status_code for r in answers)
        assert codes == [201, 401], [r.text for r in answers]
        refused = next(r for r in answers if r.status_code == 401)
        assert "replay" in refused.json()["type"], refused.text


def token_request(srv: Server, **form: str) -> requests.Response:
    return requests.post(srv.url + "/auth/token", data=form, timeout=60)


def login_assertion(ident: Identity) -> str:
    """The RFC 7523 assertion `eport login` signs, for the hosts' common token endpoint."""
    from authsvc.principal import x5t_s256
    from cli.session import assertion

    return assertion(ident, PUBLIC + "/auth/token", x5t_s256(ident.chain[0]))


def login_with(srv: Server, assertion: str) -> requests.Response:
    return token_request(srv, grant_type=JWT_BEARER, assertion=assertion)


def login(srv: Server, ident: Identity) -> dict[str, Any]:
    r = login_with(srv, login_assertion(ident))
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def refresh(srv: Server, rt: str) -> requests.Response:
    return token_request(
        srv, grant_type="refresh_token", refresh_token=rt, audience="customs-declaration"
    )


def validate(srv: Server, token: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", "X-Eport-Service": "customs-declaration"}
    return requests.get(srv.url + "/auth/validate", headers=headers, timeout=60)


def test_a_session_opened_on_one_host_is_used_and_ended_on_the_other(hosts: Hosts) -> None:
    ident = enterprise(hosts)
    doc = login(hosts.a, ident)
    r = refresh(hosts.b, doc["refresh_token"])
    assert r.status_code == 200, r.text
    rt = r.json()["refresh_token"]
    access = r.json()["access_token"]
    for srv in hosts.both():
        assert validate(srv, access).status_code == 200, srv.url
    shown = requests.post(hosts.b.url + "/auth/session", data={"refresh_token": rt}, timeout=60)
    assert shown.status_code == 200 and shown.json()["sid"] == doc["session"]["sid"]
    out = requests.post(hosts.a.url + "/auth/logout", data={"refresh_token": rt}, timeout=60)
    assert out.status_code == 200 and out.json()["ended"], out.text
    after = refresh(hosts.b, rt)
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant", after.text
    for srv in hosts.both():
        assert validate(srv, access).status_code == 401, srv.url


def test_a_hold_placed_on_one_host_ends_the_session_on_the_other(hosts: Hosts) -> None:
    """The token service reads status through the CA's database: a hold placed on host B
    ends, within the status cache's bound (5 s documented), the session opened on host A
    and its tokens on both hosts."""
    ident = enterprise(hosts)
    doc = login(hosts.a, ident)
    r = refresh(hosts.a, doc["refresh_token"])
    assert r.status_code == 200, r.text
    access, rt = r.json()["access_token"], r.json()["refresh_token"]
    for srv in hosts.both():
        assert validate(srv, access).status_code == 200, srv.url
    serial = format(ident.chain[0].serial_number, "x")
    held = signed_post(hosts.b, f"/ca/v1/certificates/{serial}/suspend", {}, hosts.officer)
    assert held.status_code == 200, held.text
    deadline = time.monotonic() + 5
    while any(validate(srv, access).status_code != 401 for srv in hosts.both()):
        assert time.monotonic() < deadline, "a token of a held certificate still validates"
        time.sleep(0.2)
    after = refresh(hosts.a, rt)
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant", after.text


def test_one_login_assertion_sent_to_both_hosts_at_once_opens_one_session(
    hosts: Hosts,
) -> None:
    ident = enterprise(hosts)
    for _ in range(3):
        assertion = login_assertion(ident)
        answers = at_once([lambda s=s, a=assertion: login_with(s, a) for s in hosts.both()])
        assert sorted(r.status_code for r in answers) == [200, 400], [r.text for r in answers]
        refused = next(r for r in answers if r.status_code == 400)
        assert refused.json()["error"] == "invalid_grant", refused.text


def test_a_certificate_s_first_failed_logins_on_both_hosts_at_once_are_both_counted(
    hosts: Hosts,
) -> None:
    """Two signed assertions with a wrong ``sub`` (failures that count against the
    certificate) sent to both hosts at once, the certificate's first failures: both are
    refused as invalid_grant, both counted and both logged. Before, the certificate's
    failure counter had no row yet, both hosts inserted one, and the later answered
    HTTP 500 with neither its count nor its login.failed event stored."""
    from cli.session import assertion

    url = hosts.auth_database_url
    failed = "SELECT count(*) FROM auth_events WHERE type = 'login.failed'"
    for _ in range(8):
        ident = enterprise(hosts)
        der = ident.chain[0].public_bytes(serialization.Encoding.DER)
        key = "cert:" + base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode()
        bad = [assertion(ident, PUBLIC + "/auth/token", "not-the-subject") for _ in range(2)]
        (before,) = rows(url, failed)[0]
        answers = at_once(
            [lambda s=s, a=a: login_with(s, a) for s, a in zip(hosts.both(), bad, strict=True)]
        )
        assert [r.status_code for r in answers] == [400, 400], [r.text for r in answers]
        assert {r.json()["error"] for r in answers} == {"invalid_grant"}
        counted = rows(
            url, f"SELECT count FROM auth_login_failures WHERE key = '{key.rstrip('=')}'"
        )
        assert counted == [(2,)]
        assert rows(url, failed) == [(before + 2,)]


def test_one_refresh_token_used_on_both_hosts_at_once_succeeds_once(hosts: Hosts) -> None:
    ident = enterprise(hosts)
    for _ in range(4):
        rt = login(hosts.a, ident)["refresh_token"]
        answers = at_once([lambda s=s, t=rt: refresh(s, t) for s in hosts.both()])
        assert sorted(r.status_code for r in answers) == [200, 400], [r.text for r in answers]


def test_two_first_starts_at_once_on_one_empty_database_make_one_ca(
    postgres: Postgres, tmp_path: Path
) -> None:
    """Two hosts started together, each with an empty data directory, on one empty
    database: one makes the development CA; the other is refused in one line and records
    nothing (before, both made a CA in the one database, their logs woven together)."""
    db = postgres.createdb("eport_two_first_starts")
    env = base_env()
    env.update(EPORT_DATABASE_URL=db, HOME=str(tmp_path))
    procs: list[tuple[subprocess.Popen[bytes], Path, str]] = []
    try:
        for name in ("x", "y"):
            port = free_port()
            log = tmp_path / f"{name}.log"
            cmd = [EPORT, "serve", "--dev", "--data-dir", str(tmp_path / name)]
            with open(log, "wb") as fh:
                proc = subprocess.Popen(
                    [*cmd, "--port", str(port), "--workers", "1"],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            procs.append((proc, log, f"http://127.0.0.1:{port}"))
        outcomes = []
        for proc, log, url in procs:
            try:
                wait_http(url + "/ca/v1/health", proc, log)
                outcomes.append("serving")
            except RuntimeError:
                outcomes.append(log.read_text())
    finally:
        for proc, _log, _url in procs:
            stop(proc)
    assert outcomes.count("serving") == 1, outcomes
    (refused,) = [o for o in outcomes if o != "serving"]
    errors = [line for line in refused.splitlines() if line.startswith("eport: error:")]
    assert len(errors) == 1 and "already holds another CA's records" in errors[0], refused
    assert "Traceback" not in refused
    assert len(rows(db, "SELECT serial FROM certificates WHERE profile = 'root'")) == 1
    # one CA's: its root, its three issuing CAs and their three OCSP responders
    assert rows(db, "SELECT count(*) FROM events WHERE type = 'ca.initialized'") == [(7,)]


def test_a_key_rotation_on_one_host_is_followed_by_the_other(hosts: Hosts) -> None:
    """`eport auth rotate-keys` run on host A (its data directory, the shared database):
    host B signs with the new key within seconds, and both publish it."""
    ident = enterprise(hosts)
    rt = login(hosts.a, ident)["refresh_token"]
    env = {"EPORT_AUTH_DATABASE_URL": hosts.auth_database_url}
    args = ["auth", "rotate-keys", "--data-dir", str(hosts.a.data_dir), "--dev", "--force"]
    active = json.loads(hosts.a.eport(*args, "--json", **env).stdout)["active"]
    deadline = time.monotonic() + 20
    while True:
        r = refresh(hosts.b, rt)
        assert r.status_code == 200, r.text
        rt = r.json()["refresh_token"]
        token = r.json()["access_token"]
        if jwt.get_unverified_header(token)["kid"] == active:
            break
        assert time.monotonic() < deadline, "host B did not sign with the rotated key"
        time.sleep(0.5)
    for srv in hosts.both():
        kids = {
            k["kid"] for k in requests.get(srv.url + "/auth/jwks.json", timeout=60).json()["keys"]
        }
        assert active in kids, srv.url
        assert validate(srv, token).status_code == 200, srv.url


def test_a_revocation_and_a_hold_of_one_certificate_on_both_hosts_at_once(hosts: Hosts) -> None:
    """A good certificate revoked on host A and put on hold on host B at the same moment:
    the changes are made one after the other. The revocation always succeeds (a held
    certificate may be revoked); the hold succeeds only if it came first, and the
    certificate ends revoked, with its events in the log in that order. Before, neither
    locked anything (a good certificate has no status row), and the later one often
    failed with HTTP 500, the revocation included (and could have overwritten the
    earlier change)."""
    certs = enrolled(hosts, 4)
    for cert in certs:
        serial = format(cert.serial_number, "x")
        revoke = f"/ca/v1/certificates/{serial}/revoke"
        hold = f"/ca/v1/certificates/{serial}/suspend"
        revoked, held = at_once(
            [
                lambda p=revoke: signed_post(hosts.a, p, {"reason": "superseded"}, hosts.officer),
                lambda p=hold: signed_post(hosts.b, p, {}, hosts.officer),
            ]
        )
        assert revoked.status_code == 200, revoked.text
        assert held.status_code in (200, 409), held.text
        (state,) = rows(
            hosts.database_url, f"SELECT state FROM certificate_status WHERE serial = '{serial}'"
        )[0]
        assert state == "revoked", (state, held.status_code)
        logged = rows(
            hosts.database_url,
            "SELECT e.type FROM events e JOIN log_entries l ON l.event_id = e.id"
            f" WHERE e.serial = '{serial}' AND e.type IN"
            " ('certificate.revoked', 'certificate.suspended') ORDER BY l.idx",
        )
        expected = ["certificate.revoked"]
        if held.status_code == 200:
            expected.insert(0, "certificate.suspended")
        assert [t for (t,) in logged] == expected, (logged, held.status_code)
    # a held certificate resumed on one host and revoked on the other at once: no deadlock
    for cert in enrolled(hosts, 2):
        serial = format(cert.serial_number, "x")
        r = signed_post(hosts.a, f"/ca/v1/certificates/{serial}/suspend", {}, hosts.officer)
        assert r.status_code == 200, r.text
        answers = at_once(
            [
                lambda s=serial: signed_post(
                    hosts.a, f"/ca/v1/certificates/{s}/resume", {}, hosts.officer
                ),
                lambda s=serial: signed_post(
                    hosts.b,
                    f"/ca/v1/certificates/{s}/revoke",
                    {"reason": "superseded"},
                    hosts.officer,
                ),
            ]
        )
        assert all(r.status_code in (200, 409) for r in answers), [r.text for r in answers]


def test_an_operator_s_first_role_grants_on_both_hosts_at_once(hosts: Hosts) -> None:
    """An enterprise grants one operator, who has no roles yet, different roles on both
    hosts at once, three requests on each: every grant is answered 200 and logged once,
    and the last one logged is what the operator holds (the last writer wins, in the
    order of the ``roles.granted`` events)."""
    ident = enterprise(hosts)
    choices = [["data-entry"], ["declaration"], ["data-entry", "declaration"]]
    for round_ in range(4):
        op = f"op-{os.urandom(6).hex()}-{round_}"
        calls: list[Callable[[], Any]] = [
            lambda s=s, r=r, o=op: signed_post(
                s,
                "/auth/v1/roles",
                {"operator_id": o, "roles": r, "authorization": "a" * 16},
                ident,
            )
            for r in choices
            for s in hosts.both()
        ]
        answers = at_once(calls)
        assert [r.status_code for r in answers] == [200] * len(calls), [r.text for r in answers]
        granted = [
            json.loads(detail)["roles"]
            for (detail,) in rows(
                hosts.auth_database_url,
                "SELECT detail FROM auth_events WHERE type = 'roles.granted' ORDER BY id",
            )
            if json.loads(detail)["operator_id"] == op
        ]
        assert len(granted) == len(calls), granted
        held = rows(
            hosts.auth_database_url,
            f"SELECT roles FROM auth_operator_roles WHERE operator_id = '{op}'",
        )
        assert [json.loads(r) for (r,) in held] == [granted[-1]], (held, granted)


def test_one_access_token_revoked_on_both_hosts_at_once_is_revoked_once(hosts: Hosts) -> None:
    """RFC 7009 revocation of one access token sent to both hosts at once, three times
    each: every answer is 200, the token is refused on both hosts, and one
    ``token.revoked`` event is logged."""
    ident = enterprise(hosts)
    for _ in range(4):
        r = refresh(hosts.a, login(hosts.a, ident)["refresh_token"])
        assert r.status_code == 200, r.text
        access = r.json()["access_token"]
        jti = jwt.decode(access, options={"verify_signature": False})["jti"]
        answers = at_once(
            [
                lambda s=s, t=access: requests.post(
                    s.url + "/auth/revoke", data={"token": t}, timeout=60
                )
                for s in hosts.both()
                for _ in range(3)
            ]
        )
        assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
        for srv in hosts.both():
            assert validate(srv, access).status_code == 401, srv.url
        logged = [
            d
            for (d,) in rows(
                hosts.auth_database_url,
                "SELECT detail FROM auth_events WHERE type = 'token.revoked'",
            )
            if json.loads(d)["jti"] == jti
        ]
        assert len(logged) == 1, logged


@pytest.mark.slow
def test_first_crls_and_ocsp_answers_on_both_hosts_at_once(
    postgres: Postgres, tmp_path: Path
) -> None:
    """Two hosts on a new database, where no issuer has a CRL yet and no certificate a
    pre-signed OCSP response: each issuer's first CRL asked of both hosts at once (with a
    revocation and a hold on each host at the same moment), and each certificate's first
    OCSP answer asked of both at once. Every answer is 200 (not 500 for the host whose
    first row came second), one CRL per number, and both hosts' CRLs list both changes."""
    with two_hosts(postgres, tmp_path, "eport_first_writes") as fresh:
        assert rows(fresh.database_url, "SELECT issuer_id FROM crl_state") == []
        certs = enrolled(fresh, 4)
        assert rows(fresh.database_url, "SELECT serial FROM ocsp_responses") == []
        issuer = x509.load_pem_x509_certificate(
            (fresh.a.data_dir / "ca" / "issuers" / "enterprise.crt").read_bytes()
        )
        served: dict[tuple[str, int], set[bytes]] = {}

        def fetch(srv: Server, issuer_id: str) -> int:
            r = requests.get(f"{srv.url}/crl/{issuer_id}.crl", timeout=60)
            if r.status_code == 200:
                crl = x509.load_der_x509_crl(r.content)
                served.setdefault((issuer_id, crl_number(crl)), set()).add(r.content)
            return r.status_code

        def ocsp_answer(srv: Server, cert: x509.Certificate) -> int:
            req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
            r = requests.post(
                srv.url + "/ocsp",
                data=req.public_bytes(serialization.Encoding.DER),
                headers={"Content-Type": "application/ocsp-request"},
                timeout=60,
            )
            return r.status_code

        def change(srv: Server, cert: x509.Certificate, action: str) -> int:
            path = f"/ca/v1/certificates/{format(cert.serial_number, 'x')}/{action}"
            body = {"reason": "superseded"} if action == "revoke" else {}
            return signed_post(srv, path, body, fresh.officer).status_code

        calls: list[Callable[[], Any]] = [
            lambda s=s, i=i: fetch(s, i)
            for i in ("enterprise", "agency", "service")
            for s in fresh.both()
            for _ in range(3)
        ]
        calls += [lambda: change(fresh.a, certs[0], "revoke")]
        calls += [lambda: change(fresh.b, certs[1], "suspend")]
        calls += [lambda s=s, c=c: ocsp_answer(s, c) for c in certs[2:] for s in fresh.both()]
        codes = at_once(calls)
        assert codes == [200] * len(calls), codes
        twice = {k: len(d) for k, d in served.items() if len(d) > 1}
        assert not twice, f"CRL numbers served with more than one CRL: {twice}"
        states = rows(fresh.database_url, "SELECT issuer_id FROM crl_state ORDER BY issuer_id")
        assert [i for (i,) in states] == ["agency", "enterprise", "service"]
        changed = {format(c.serial_number, "x") for c in certs[:2]}
        for srv in fresh.both():
            listed = {format(e.serial_number, "x") for e in crl_of(srv, "enterprise")}
            assert changed <= listed, srv.url
            assert ocsp_status(srv, certs[0], issuer) == "REVOKED"
            assert ocsp_status(srv, certs[1], issuer) == "HOLD"
            assert ocsp_status(srv, certs[2], issuer) == "GOOD"


@pytest.mark.slow
def test_two_hosts_first_started_at_once_on_an_empty_token_database_make_one_key(
    postgres: Postgres, tmp_path: Path
) -> None:
    """Both hosts of one CA started at the same moment on a new, empty database of the
    token service (three times, each a new one): one active and one next signing key of
    each family (ES256, RS256) are made between them. Before, both found no key and each
    added its own pair (measured: two active and two next keys)."""
    ca_db = postgres.createdb("eport_first_keys")
    made = tmp_path / "made" / "data"
    made.parent.mkdir()
    _srv, proc = start_server(made, ca_db, extra_env={"EPORT_PUBLIC_BASE_URL": PUBLIC})
    stop(proc)
    for n in range(3):
        auth_db = postgres.createdb(f"eport_first_keys_auth{n}")
        env = {"EPORT_AUTH_DATABASE_URL": auth_db, "EPORT_PUBLIC_BASE_URL": PUBLIC}
        dirs = [tmp_path / f"{n}{h}" / "data" for h in "ab"]
        for d in dirs:
            shutil.copytree(made, d, ignore=shutil.ignore_patterns("serve.lock"))

        def start(d: Path, env: dict[str, str] = env) -> Any:
            try:
                return start_server(d, ca_db, extra_env=env, port=free_port())
            except Exception as exc:  # the other host's server is stopped all the same
                return exc

        started = at_once([lambda d=d: start(d) for d in dirs])
        try:
            failed = [r for r in started if isinstance(r, Exception)]
            assert not failed, failed
            kids = [
                {
                    k["kid"]
                    for k in requests.get(srv.url + "/auth/jwks.json", timeout=60).json()["keys"]
                }
                for srv, _p in started
            ]
        finally:
            for r in started:
                if not isinstance(r, Exception):
                    stop(r[1])
        keys = rows(
            auth_db,
            "SELECT state, public_jwk::json->>'alg' AS alg, count(*) FROM auth_signing_keys "
            "GROUP BY state, alg ORDER BY state, alg",
        )
        expected = [("active", "ES256", 1), ("active", "RS256", 1)]
        assert keys == [*expected, ("next", "ES256", 1), ("next", "RS256", 1)], (n, keys)
        assert kids[0] == kids[1], kids
