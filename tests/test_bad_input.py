"""Bad input over real HTTP, on SQLite and PostgreSQL: a 4xx that says what is wrong, and
nothing changed. Never a 500.

The cases of the tests on unstorable strings, NUL and times were 500s before
:mod:`ca.wellformed` refused them at the edge: a lone surrogate (``"\\ud800"``, which
Python's JSON reader accepts and no UTF-8 writer or database driver takes), NUL (which
PostgreSQL refuses in text; SQLite stored it), or a time whose UTC value no ``datetime``
holds. The I-JSON cases (RFC 7493) pin what else the edge refuses. The CLI part drives
``eport`` with times out of range and damaged policy files."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from urllib.parse import quote, urlencode

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authsvc.models import AuthBase
from authsvc.oidc_models import AuthorizationCodeRow
from authsvc.service import JWT_BEARER
from ca.config import CAConfig
from ca.keys import KeyType
from ca.models import ApplicationRow, CertificateRow, EnrollmentCodeRow, EventRow
from ca.signedreq import SCHEME, TYP, audience, body_hash, sign_request
from cli.client import Identity
from cli.keyfiles import load_identity
from cli.session import assertion
from tests.conftest import EPORT_CMD, Postgres, Server, base_env, free_port, start_server, stop
from tests.helpers import enroll_enterprise, fresh_uscc, jrun, row_counts, serial_of

PORTAL_CALLBACK = "https://portal.eport.example/oidc/callback"


@dataclass
class World:
    server: Server
    auth_db: str
    ent: Path
    officer: Identity
    auditor: Identity
    enterprise: Identity


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One server (both services on the database under test, behind a trusted TLS proxy
    for the browser sign-in) and an enrolled enterprise."""
    root = tmp_path_factory.mktemp(f"bad-{request.param}")
    db = auth_db = ""
    extra = {"EPORT_AUTH_TRUSTED_PROXIES": "127.0.0.1/32"}
    if request.param == "postgres":
        pg: Postgres = request.getfixturevalue("postgres")
        db = pg.createdb("eport_bad_input")
        auth_db = pg.createdb("eport_bad_input_auth")
        extra["EPORT_AUTH_DATABASE_URL"] = auth_db
    srv, proc = start_server(root / "data", db, workers=1, extra_env=extra)
    try:
        ent = enroll_enterprise(srv, root, "Bad Input Trading Co.")
        dev = srv.dev

        def dev_identity(role: str) -> Identity:
            d = dev / f"{role}s" / "customs"
            return load_identity(
                d / f"{role}.pem", d / f"{role}.key", d / "DEV-ONLY-passphrase.txt"
            )

        pw = root / "pw.txt"
        pw.write_text("test-passphrase-123")
        yield World(
            srv,
            auth_db or f"sqlite:///{srv.data_dir / 'auth.db'}",
            ent,
            dev_identity("officer"),
            dev_identity("auditor"),
            load_identity(ent / "cert.pem", ent / "key.pem", pw),
        )
    finally:
        stop(proc)


def counts(world: World) -> dict[str, int]:
    """Rows of every table that a request could change: the CA's applications,
    certificates, codes and events (the audit log's source), and every token-service table
    (AuthorizationCodeRow's among them) but its replay store."""
    out = row_counts(
        world.server.database_url, (ApplicationRow, CertificateRow, EnrollmentCodeRow, EventRow)
    )
    out |= row_counts(
        world.auth_db, [t for t in AuthBase.metadata.sorted_tables if t.name != "auth_seen_jti"]
    )
    assert AuthorizationCodeRow.__tablename__ in out
    return out


def send(
    world: World,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    signer: Identity | None = None,
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """One request as a client sends it; ``signer`` signs it (``EPort-Signed``) over
    these exact bytes, so the bad body is what the server reads after authentication."""
    h = dict(headers or {})
    if content_type:
        h["Content-Type"] = content_type
    if signer is not None:
        now = datetime.datetime.now(datetime.UTC)
        jws = sign_request(signer.key, signer.chain, method, path, body, now)
        h["Authorization"] = f"{SCHEME} {jws}"
    return requests.request(
        method, world.server.url + path, data=body, headers=h, timeout=30, allow_redirects=False
    )


def pending_application(world: World) -> str:
    app = jrun(world.server, "apply", "--uscc", fresh_uscc(), "--name", "Pending Co.")
    return str(app["id"])


def assert_problem(r: requests.Response, status: int, *words: str) -> None:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/problem+json", r.headers
    detail = r.json()["detail"]
    for w in words:
        assert w in detail, (detail, w)


SURROGATE = b'"\\ud800"'
NUL = b'"a\\u0000b"'


def test_json_bodies_with_unstorable_strings_are_400(world: World) -> None:
    """A lone surrogate or NUL in any field of a JSON body: 400 naming the field, whether
    the CA's enrollment fast path, a Flask view or the token service reads it."""
    serial = format(world.enterprise.chain[0].serial_number, "x")
    app_id = pending_application(world)
    before = counts(world)
    cases: list[tuple[str, str, bytes, Identity | None, str]] = []
    for bad in (SURROGATE, NUL):
        cases += [
            # the enrollment's WSGI fast path (application/json) ...
            (
                "POST",
                "/ca/v1/enroll",
                b'{"code": "ABCD-EFGH", "profile": "enterprise", "csr": ' + bad + b"}",
                None,
                "'csr'",
            ),
            ("POST", "/ca/v1/renew", b'{"csr": ' + bad + b"}", world.enterprise, "'csr'"),
            (
                "POST",
                f"/ca/v1/ra/applications/{app_id}/reject",
                b'{"reason": ' + bad + b"}",
                world.officer,
                "'reason'",
            ),
            (
                "POST",
                f"/ca/v1/ra/applications/{app_id}/withdraw",
                b'{"reason": ' + bad + b"}",
                world.officer,
                "'reason'",
            ),
            (
                "POST",
                f"/ca/v1/ra/applications/{app_id}/approve",
                b'{"profiles": [' + bad + b"]}",
                world.officer,
                "'profiles'[0]",
            ),
            (
                "POST",
                f"/ca/v1/certificates/{serial}/revoke",
                b'{"reason": "keyCompromise", "invalidity_date": ' + bad + b"}",
                world.officer,
                "'invalidity_date'",
            ),
            (
                "POST",
                "/auth/v1/roles",
                b'{"operator_id": ' + bad + b', "roles": ["data-entry"]}',
                world.enterprise,
                "'operator_id'",
            ),
            ("POST", "/ca/v1/applications", b'{"legal_name": "X", ' + bad + b": 1}", None, "name"),
        ]
    for method, path, body, signer, where in cases:
        r = send(world, method, path, body, signer=signer)
        assert_problem(r, 400, where)
        assert "U+0000" in r.json()["detail"] or "lone surrogate" in r.json()["detail"]
    # ... and Flask's view of the enrollment (a query string: the fast path hands it on)
    body = b'{"code": "ABCD-EFGH", "profile": "enterprise", "csr": "\\udfff"}'
    assert_problem(send(world, "POST", "/ca/v1/enroll?via=flask", body), 400, "'csr'")
    assert counts(world) == before
    status = requests.get(world.server.url + f"/ca/v1/applications/{app_id}", timeout=10)
    assert status.json()["state"] == "pending"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"\xff\xfe{}", ["not UTF-8"]),
        (b'{"uscc": "\xed\xa0\x80"}', ["not UTF-8"]),  # a surrogate encoded (CESU-8)
        (b'{"uscc": NaN}', ["NaN"]),
        (b'{"uscc": -Infinity}', ["-Infinity"]),
        (b'{"uscc": 1e400}', ["out of range"]),
        (b'{"uscc": "a", "uscc": "b"}', ["twice"]),
        (b"[" * 10000 + b"]" * 10000, ["nested too deeply"]),
        (b"[]", ["JSON object"]),
        (b"\xef\xbb\xbf[]", ["JSON object"]),  # a BOM is ignored (RFC 8259 §8.1)
        (b"not json", ["not JSON"]),
        # Python's cap on integer digits, said without its advice to the interpreter
        (b'{"uscc": ' + b"1" * 5000 + b"}", ["a number of more than 4300 digits"]),
    ],
)
def test_bodies_that_are_not_i_json_are_400(world: World, body: bytes, words: list[str]) -> None:
    """RFC 7493 (I-JSON): UTF-8, finite numbers, unique member names; refused alike by
    the CA and the token service."""
    before = counts(world)
    r = send(world, "POST", "/ca/v1/applications", body)
    assert_problem(r, 400, *words)
    assert "sys." not in r.json()["detail"], r.json()
    assert_problem(send(world, "POST", "/auth/v1/roles", body, signer=world.enterprise), 400)
    assert counts(world) == before


def test_bodies_not_sent_as_json_are_415(world: World) -> None:
    """A JSON endpoint reads a body only when it is sent as application/json. As
    text/plain or a form (what another web site's form or fetch() makes a visitor's
    browser send, without a CORS preflight) it is 415 problem+json naming what to send,
    whether the enrollment's fast path, a Flask view, a signed view or the token service
    would read it; nothing is stored, and the code stays good. With a charset parameter
    it is JSON, and each of the same requests goes through: the signed ones with the
    signatures the 415s refused (the media type is checked before the jti is spent)."""
    srv = world.server
    app_id = pending_application(world)
    approved = jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", "Cross-Site Co.")
    code = jrun(srv, "ra", "approve", approved["id"], *srv.officer())["enrollment_code"]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    uscc = fresh_uscc()
    cases: list[tuple[str, dict[str, object], Identity | None, int]] = [
        ("/ca/v1/applications", {"uscc": uscc, "legal_name": "Cross-Site Co."}, None, 201),
        ("/ca/v1/enroll", {"code": code, "profile": "enterprise", "csr": pem}, None, 201),
        (f"/ca/v1/ra/applications/{app_id}/reject", {"reason": "x"}, world.officer, 200),
        (
            "/auth/v1/roles",
            {"operator_id": "op-415", "roles": ["data-entry"], "authorization": "a415"},
            world.enterprise,
            200,
        ),
    ]
    before = counts(world)
    signed: dict[str, dict[str, str]] = {}  # one signature (one jti) per signed case
    for path, doc, signer, _ in cases:
        body = json.dumps(doc).encode()
        if signer is not None:
            now = datetime.datetime.now(datetime.UTC)
            jws = sign_request(signer.key, signer.chain, "POST", path, body, now)
            signed[path] = {"Authorization": f"{SCHEME} {jws}"}
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            r = send(world, "POST", path, body, content_type=ctype, headers=signed.get(path))
            assert_problem(r, 415, "send the body as application/json")
            assert r.json()["type"] == "urn:eport:problem:unsupported-media-type"
        # the enrollment again, by Flask's view (a query string takes it off the fast path)
        if path == "/ca/v1/enroll":
            r = send(world, "POST", path + "?via=flask", body, content_type="text/plain")
            assert_problem(r, 415, "send the body as application/json")
    assert counts(world) == before
    assert (
        requests.get(srv.url + f"/ca/v1/applications/{app_id}", timeout=10).json()["state"]
        == "pending"
    )
    # The signed ones with the very signatures refused above: a 415 spent no jti.
    for path, doc, _, status in cases:
        body = json.dumps(doc).encode()
        ctype = "application/json; charset=utf-8"
        r = send(world, "POST", path, body, content_type=ctype, headers=signed.get(path))
        assert r.status_code == status, (path, r.text)
    assert counts(world) != before


def test_nul_in_paths_queries_and_forms_is_400(world: World) -> None:
    """NUL in a URL path, a query parameter or a form field is refused before any view
    reads it (PostgreSQL refuses it in text: these were 500s there); the OAuth token
    endpoint says so in RFC 6749 §5.2's words."""
    before = counts(world)
    for path, signer in (
        ("/ca/v1/applications/app_%00", None),
        ("/ca/v1/audit/events?subject=%00", world.auditor),
        ("/ca/v1/audit/events?profile=a%00", world.auditor),
        ("/ca/v1/audit/events?issuer=%00&actor=x", world.auditor),
        ("/ca/v1/certificates?uscc=%00", world.officer),
        ("/auth/v1/events?subject=%00", world.auditor),
    ):
        r = send(world, "GET", path, signer=signer, content_type=None)
        assert_problem(r, 400, "U+0000")
    # The gateway's fast path read no query, and answered 200 (or 401) where its HEAD said
    # 400: both go to the edge check now (fuzzing probe 24).
    for method in ("GET", "HEAD"):
        r = requests.request(
            method,
            world.server.url + "/auth/validate?x=%00",
            headers={"X-Eport-Service": "customs-declaration"},
            timeout=10,
        )
        assert r.status_code == 400, (method, r.status_code)
    r = send(
        world,
        "POST",
        "/auth/token",
        b"grant_type=refresh_token&refresh_token=%00",
        content_type="application/x-www-form-urlencoded",
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    assert "refresh_token" in r.json()["error_description"]
    # A raw byte that is not UTF-8: said so, not "grant_type is required" (Werkzeug read
    # such a form as empty; fuzzing probe 24).
    for body in (b"grant_type=client_credentials&x=\xff", b"token=abc\xff"):
        path = "/auth/token" if body.startswith(b"grant") else "/auth/revoke"
        r = send(world, "POST", path, body, content_type="application/x-www-form-urlencoded")
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        assert "the form is not UTF-8" in r.json()["error_description"], r.text
    # Where no view reads a form, the router answers first: a path that is not there is
    # a 404, a method the path does not take a 405 with Allow (both were this 400)
    bad_form = b"x=\xff"
    form = "application/x-www-form-urlencoded"
    r = send(world, "POST", "/ca/v1/nothing-here", bad_form, content_type=form)
    assert r.status_code == 404, r.text
    r = send(world, "PUT", "/ca/v1/health", bad_form, content_type=form)
    assert r.status_code == 405 and "GET" in r.headers["Allow"], r.text
    assert counts(world) == before


def test_an_ocsp_request_sent_as_a_form_is_answered(world: World) -> None:
    """curl --data-binary sends a form's Content-Type: an OCSP request with a nonce (not
    the pre-signed fast path) was a 400 problem+json about the form (standards probe,
    session 26). RFC 6960 §A.1: it is DER; the responder answers it, and answers garbage
    with its own malformedRequest, never an HTTP error."""
    from cryptography.x509 import ocsp as xocsp

    leaf, issuer = world.enterprise.chain[0], world.enterprise.chain[1]
    req = (
        xocsp.OCSPRequestBuilder()
        .add_certificate(leaf, issuer, hashes.SHA256())
        .add_extension(x509.OCSPNonce(b"n" * 16), critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = requests.post(world.server.url + "/ocsp", data=req, headers=form, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/ocsp-response"
    answer = xocsp.load_der_ocsp_response(r.content)
    assert answer.response_status is xocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status is xocsp.OCSPCertStatus.GOOD
    r = requests.post(world.server.url + "/ocsp", data=b"x=\xff", headers=form, timeout=10)
    assert r.status_code == 200, r.text
    assert (
        xocsp.load_der_ocsp_response(r.content).response_status
        is xocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )


def test_times_out_of_range_are_400(world: World) -> None:
    """An ISO 8601 time whose UTC value falls outside the years 1 to 9999: the revocation
    is not made, the audit filter not run (both were OverflowError 500s)."""
    serial = format(world.enterprise.chain[0].serial_number, "x")
    before = counts(world)
    body = json.dumps({"reason": "keyCompromise", "invalidity_date": "0001-01-01T00:00:00+23:59"})
    r = send(
        world,
        "POST",
        f"/ca/v1/certificates/{serial}/revoke",
        body.encode(),
        signer=world.officer,
    )
    assert_problem(r, 400, "invalidity_date", "out of range")
    for q in ("since=9999-12-31T23:59:59-23:59", "until=0001-01-01T00:00:00%2B23:59"):
        r = send(world, "GET", "/ca/v1/audit/events?" + q, signer=world.auditor, content_type=None)
        assert_problem(r, 400, "out of range")
    assert counts(world) == before


def test_an_invalidity_date_before_the_certificate_is_400(world: World) -> None:
    """RFC 5280 §5.3.2: an invalidity date before the certificate's notBefore (a wrong
    year) is refused naming that notBefore; the certificate stays good, nothing written."""
    cert = world.enterprise.chain[0]
    serial = format(cert.serial_number, "x")
    not_before = cert.not_valid_before_utc
    earlier = not_before - datetime.timedelta(seconds=1)
    before = counts(world)
    body = json.dumps({"reason": "keyCompromise", "invalidity_date": earlier.isoformat()})
    r = send(
        world, "POST", f"/ca/v1/certificates/{serial}/revoke", body.encode(), signer=world.officer
    )
    assert_problem(
        r, 400, f"cannot be before the certificate's notBefore, {not_before:%Y-%m-%dT%H:%M:%SZ}"
    )
    assert counts(world) == before
    assert jrun(world.server, "status", "--cert", str(world.ent / "cert.pem"))["status"] == "good"


def test_authorization_request_with_nul_is_400(world: World) -> None:
    """A browser signed in with its certificate asks for a code with a NUL in its nonce:
    400, no code stored (PostgreSQL refused the nonce: a 500)."""
    pem = (world.ent / "cert.pem").read_text()
    verifier = "v" * 43
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {
        "response_type": "code",
        "client_id": "portal",
        "redirect_uri": PORTAL_CALLBACK,
        "scope": "openid",
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        "state": "s1",
    }
    headers = {"X-SSL-Client-Cert": quote(pem)}
    before = counts(world)
    for method in ("GET", "POST"):
        query = urlencode({**params, "nonce": "n\x00"})
        if method == "GET":
            r = send(world, "GET", "/auth/authorize?" + query, content_type=None, headers=headers)
        else:
            ctype = "application/x-www-form-urlencoded"
            r = send(
                world,
                "POST",
                "/auth/authorize",
                query.encode(),
                content_type=ctype,
                headers=headers,
            )
        # a page, as the browser is shown it (browser probe 24), naming the parameter
        assert r.status_code == 400 and r.headers["Content-Type"].startswith("text/html")
        assert "nonce" in r.text and "U+0000" in r.text, r.text
    assert counts(world) == before
    good = send(
        world, "GET", "/auth/authorize?" + urlencode(params), content_type=None, headers=headers
    )
    assert good.status_code == 302 and "code=" in good.headers["Location"]


def test_audit_web_filter_with_nul_is_400(world: World, tmp_path: Path) -> None:
    """The audit web view's filters go through the same edge (its page says why)."""
    srv = world.server
    doc = json.loads(srv.eport("audit", "web-login", *srv.auditor(), "--json").stdout)
    browser = requests.Session()
    assert browser.get(doc["url"], timeout=10).status_code == 200
    r = browser.get(srv.url + "/audit/events?q=%00", timeout=10)
    assert r.status_code == 400 and "U+0000" in r.text
    r = browser.get(srv.url + "/audit/events?since=0001-01-01T00:00:00%2B23:59", timeout=10)
    assert r.status_code == 400 and "out of range" in r.text


def test_a_reason_with_terminal_controls_is_400(world: World) -> None:
    """A rejection's reason is shown as it is to the applicant (``eport application show``
    at a terminal): an escape sequence or BEL in it was stored and sent on; now 400, the
    application stays pending."""
    app_id = pending_application(world)
    before = counts(world)
    for reason in ("bad \u001b[2J\u001b[31mRED", "ring \u0007", "flip \u202e", "c1 \u009b2J"):
        body = json.dumps({"reason": reason}).encode()
        path = f"/ca/v1/ra/applications/{app_id}/reject"
        assert_problem(send(world, "POST", path, body, signer=world.officer), 400, "U+")
    assert counts(world) == before
    status = requests.get(world.server.url + f"/ca/v1/applications/{app_id}", timeout=10)
    assert status.json()["state"] == "pending" and status.json()["reason"] is None


def signed_with_jti(signer: Identity, method: str, path: str, jti: str) -> str:
    """A signed request (empty body) as :func:`ca.signedreq.sign_request` makes it, but
    with this ``jti``: what a certificate holder's own client could send."""
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    claims = {"aud": audience(method, path), "iat": now, "exp": now + 60, "jti": jti}
    claims["bsh"] = body_hash(b"")
    x5c = [
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in signer.chain
    ]
    alg = KeyType.of(signer.key).jws_alg
    return jwt.encode(claims, signer.key, algorithm=alg, headers={"typ": TYP, "x5c": x5c})  # type: ignore[arg-type]


@pytest.mark.parametrize("jti", ["\ud800" * 10, "abcd\x00efgh"])
def test_a_jti_no_database_stores_is_refused(world: World, jti: str) -> None:
    """A correctly signed request or login assertion whose jti holds a lone surrogate or
    NUL: the replay store was asked to keep it (a 500 on every signed endpoint; NUL on
    PostgreSQL); now 401 (invalid_grant at the token endpoint), nothing stored but the
    refused login's record."""
    before = counts(world)
    for path, signer in (
        ("/ca/v1/ra/applications", world.officer),
        ("/ca/v1/audit/events", world.auditor),
        ("/auth/v1/events", world.auditor),
    ):
        jws = signed_with_jti(signer, "GET", path, jti)
        r = send(
            world, "GET", path, content_type=None, headers={"Authorization": f"{SCHEME} {jws}"}
        )
        assert_problem(r, 401, "jti")
    uscc = world.enterprise.chain[0].subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
    subject = "ent:" + str(uscc[0].value).removeprefix("NTRCN-")
    token_endpoint = world.server.url + "/auth/token"
    with mock.patch("secrets.token_urlsafe", return_value=jti):
        grant = assertion(world.enterprise, token_endpoint, subject)
    form = urlencode({"grant_type": JWT_BEARER, "assertion": grant}).encode()
    r = send(world, "POST", "/auth/token", form, content_type="application/x-www-form-urlencoded")
    assert r.status_code in (400, 401) and "jti" in r.json()["error_description"], r.text
    after = counts(world)
    # A refused login is recorded as any other is: its event, and the client's failure
    # counter (one row per client address, made by its first failure)
    assert after.pop("auth_events") == before.pop("auth_events") + 1
    assert after.pop("auth_login_failures") <= before.pop("auth_login_failures") + 1
    assert after == before


def raw_http(world: World, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as written (what requests would not send) and read the answer."""
    host, port = world.server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_a_body_whose_chunked_framing_is_broken_is_400(world: World) -> None:
    """A chunked body whose chunk size is not hex (gunicorn's InvalidChunkSize, raised
    from wsgi.input as the view reads it) was a 500 with a traceback in the log, on every
    endpoint that reads a body; now 400 problem+json and one log line."""
    before = counts(world)
    logged = len(world.server.log.read_bytes())
    for path, ctype in (
        ("/ca/v1/applications", "application/json"),
        ("/ca/v1/enroll", "application/json"),
        ("/auth/v1/roles", "application/json"),
        ("/auth/token", "application/x-www-form-urlencoded"),
    ):
        status, headers, body = raw_http(
            world,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + b'5\r\n{"a":\r\nZZ\r\n1}\r\n0\r\n\r\n',
        )
        assert status == 400, (path, status, body)
        if path == "/auth/token":  # an OAuth endpoint: in RFC 6749 §5.2's words (probe 24)
            assert headers["Content-Type"] == "application/json", (path, headers)
            doc = json.loads(body)
            assert doc["error"] == "invalid_request" and "framed" in doc["error_description"]
            continue
        assert headers["Content-Type"] == "application/problem+json", (path, headers)
        assert "framed" in json.loads(body)["detail"], body
    # A body shorter than its Content-Length, at an OAuth endpoint: the same.
    status, headers, body = raw_http(
        world,
        b"POST /auth/introspect HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n"
        b"Connection: close\r\n\r\ntoken=abc",
    )
    assert status == 400 and headers["Content-Type"] == "application/json", (status, body)
    assert json.loads(body)["error"] == "invalid_request", body
    assert counts(world) == before
    assert b"Traceback" not in world.server.log.read_bytes()[logged:]


def test_a_suspension_or_resumption_with_a_body_it_cannot_mean_is_400(world: World) -> None:
    """Suspend and resume take no parameters, and read no body: one that was not JSON,
    not UTF-8, an array, or held a member changed the certificate's status all the same,
    where every other endpoint answers 400. Now they read it as the others do: none, or
    ``{}``; anything else is a 400 and the status stays as it was."""
    serial = serial_of(world.ent)
    before = counts(world)
    for action in ("suspend", "resume"):
        path = f"/ca/v1/certificates/{serial}/{action}"
        for body, words in (
            (b"garbage", "not JSON"),
            (b"[1, 2]", "JSON object"),
            (b"\xff\xfe", "not UTF-8"),
            (b'{"x": "\\ud800"}', "surrogate"),
            (b'{"reason": "keyCompromise"}', "takes no parameters"),
        ):
            r = send(world, "POST", path, body, signer=world.officer)
            assert_problem(r, 400, words)
    assert counts(world) == before
    path = f"/ca/v1/certificates/{serial}"
    r = send(world, "POST", path + "/suspend", b"{}", signer=world.officer)
    assert r.status_code == 200 and r.json()["status"] == "on-hold", r.text
    r = send(world, "POST", path + "/resume", b"", signer=world.officer)
    assert r.status_code == 200 and r.json()["status"] == "good", r.text


def test_an_application_says_its_class_and_only_the_fields_of_it(world: World) -> None:
    """``subject_class`` of "" or null was taken as the default (enterprise) and stored,
    and a member the class does not take was dropped without a word (an enterprise
    application "with" a ``person_name``, a mistyped ``legal_nam`` refused only as a
    missing name). Now only a missing class means enterprise, and an unknown member is
    named in the 400; nothing is stored."""
    uscc = fresh_uscc()
    base = {"uscc": uscc, "legal_name": "Class Test Co."}
    before = counts(world)
    for doc, words in (
        ({"subject_class": "", **base}, "cannot apply for class ''"),
        ({"subject_class": None, **base}, "'subject_class' must be a string"),
        ({**base, "person_name": "Li Wei"}, "takes legal_name, uscc; not 'person_name'"),
        # a member it does not take is named as such, whatever its JSON type
        ({**base, "bogus": 1}, "takes legal_name, uscc; not 'bogus'"),
        ({**base, "legal_name": 7}, "'legal_name' must be a string"),
        (
            {"subject_class": "agency", "agency_id": "customs", "person_name": "X", "uscc": uscc},
            "not 'uscc'",
        ),
    ):
        r = send(world, "POST", "/ca/v1/applications", json.dumps(doc).encode())
        assert_problem(r, 400, words)
    assert counts(world) == before
    r = send(world, "POST", "/ca/v1/applications", json.dumps(base).encode())
    assert r.status_code == 201 and r.json()["subject_class"] == "enterprise", r.text


def test_a_request_signed_over_its_escaped_path_gets_that_paths_answer(world: World) -> None:
    """A client that signs the path as it sends it, escapes and all (``app_%E5%8E%A6``,
    ``a%20b``), was refused 401 "Audience doesn't match" (the server compared the decoded
    path) instead of getting the answer for that path; one that signs the decoded form
    (as the CLI does for a character its HTTP library escapes) still matches."""
    for path, status, words in (
        ("/ca/v1/ra/applications/app_%E5%8E%A6/approve", 404, "no application"),
        ("/ca/v1/certificates/a%20b/revoke", 400, "serial"),
    ):
        r = send(world, "POST", path, b"{}", signer=world.officer)
        assert_problem(r, status, words)
    decoded = "/ca/v1/ra/applications/app_厦/approve"
    now = datetime.datetime.now(datetime.UTC)
    jws = sign_request(world.officer.key, world.officer.chain, "POST", decoded, b"{}", now)
    r = requests.post(
        world.server.url + quote(decoded),
        data=b"{}",
        headers={"Content-Type": "application/json", "Authorization": f"{SCHEME} {jws}"},
        timeout=30,
    )
    assert_problem(r, 404, "no application")


def test_what_the_http_server_refuses_is_problem_json_too(world: World) -> None:
    """A request line or header over gunicorn's limits, or framing it cannot read, was
    answered with gunicorn's own HTML page; now problem+json like every other error."""
    long_path = "/ca/v1/applications/app_" + "a" * 5000
    for request, status in (
        (f"GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 414),
        (b"GET /ca/v1/health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"POST /ca/v1/applications HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (b"GET /ca/v1/health HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ):
        code, headers, body = raw_http(world, request)
        assert code == status, (request[:40], code, body[:200])
        assert headers["Content-Type"] == "application/problem+json", (request[:40], headers)
        doc = json.loads(body)
        assert doc["status"] == status and doc["detail"], doc
        assert "<" not in doc["detail"], doc


def test_an_unknown_path_or_method_is_a_problem_in_the_apis_words(world: World) -> None:
    """Werkzeug's 404 and 405 went out with its stock texts (for someone who typed a URL)
    and no ``instance``; now they say what was asked, the 405 the methods allowed."""
    r = send(world, "GET", "/ca/v1/nope-x")
    assert_problem(r, 404, "nothing is at '/ca/v1/nope-x': the CA's API is described at ")
    assert r.json()["instance"] == "/ca/v1/nope-x"
    # Each service names where its own paths are described, and that document is there.
    r = send(world, "GET", "/auth/openapi.json")
    assert_problem(r, 404, "endpoints are listed at /auth/.well-known/openid-configuration")
    for where in ("/ca/v1/openapi.json", "/auth/.well-known/openid-configuration"):
        assert send(world, "GET", where).status_code == 200, where
    # The audit view's pages answer a 405 in HTML, and say what is allowed too.
    r = send(world, "PUT", "/audit/login", b"")
    assert r.status_code == 405 and r.headers["Content-Type"].startswith("text/html")
    assert "GET" in [m.strip() for m in r.headers["Allow"].split(",")], r.headers
    r = send(world, "PUT", "/ca/v1/enroll", b"{}")
    assert_problem(r, 405, "PUT is not allowed here (allowed: OPTIONS, POST)")
    assert r.json()["instance"] == "/ca/v1/enroll"
    r = send(world, "DELETE", "/auth/token")
    assert_problem(r, 405, "DELETE is not allowed here")


def test_numbers_in_a_query_or_path_are_read_one_way_everywhere(world: World) -> None:
    """``limit`` took what Python's int() takes (a full-width "１", " 1", "+5", "1_0"),
    and a serial of -5 was a 404 from the log's proof ("no logged issuance of certificate
    -5") but a 400 from revoke. Now ASCII digits only, and one reading of a serial."""
    for raw in ("%EF%BC%91", "%201", "+5", "1_0"):
        r = send(world, "GET", f"/ca/v1/ra/applications?limit={raw}", signer=world.officer)
        assert_problem(r, 400, "limit must be an integer (ASCII digits)")
    # Given twice, the first was taken (log tamper probe, session 26): which one is meant?
    r = send(world, "GET", "/ca/v1/audit/proof/inclusion?index=1&index=2")
    assert_problem(r, 400, "index is given 2 times: give it once")
    for raw, words in (("-5", "not a hexadecimal serial"), ("0", "positive integer")):
        for path in (
            f"/ca/v1/audit/proof/inclusion?serial={raw}",
            f"/ca/v1/audit/events?serial={raw}",
        ):
            assert_problem(send(world, "GET", path, signer=world.auditor), 400, words)
        r = send(world, "POST", f"/ca/v1/certificates/{raw}/revoke", b"{}", signer=world.officer)
        assert_problem(r, 400, words)
    r = send(world, "GET", "/ca/v1/ra/applications?limit=2", signer=world.officer)
    assert r.status_code == 200, r.text


def test_a_member_an_endpoint_does_not_read_is_named_not_dropped(world: World) -> None:
    """A member an endpoint does not read was dropped without a word: an officer's
    ``{"profile": "operator"}`` (for ``profiles``) approved with the default profiles, an
    enrollment with a misspelt member went ahead. Now a 400 naming it; nothing changes."""
    app_id = pending_application(world)
    serial = serial_of(world.ent)
    before = counts(world)
    for method, path, doc, signer, words in (
        (
            "POST",
            f"/ca/v1/ra/applications/{app_id}/approve",
            {"profile": "operator"},
            world.officer,
            "an approval takes profiles; not 'profile'",
        ),
        (
            "POST",
            f"/ca/v1/ra/applications/{app_id}/reject",
            {"reason": "r", "note": "n"},
            world.officer,
            "not 'note'",
        ),
        (
            "POST",
            "/ca/v1/enroll",
            {"code": "ABCD", "profile": "enterprise", "csr": "x", "key": "k"},
            None,
            "an enrollment takes code, profile, csr; not 'key'",
        ),
        (
            "POST",
            f"/ca/v1/certificates/{serial}/revoke",
            {"reason": "superseded", "when": "now"},
            world.officer,
            "not 'when'",
        ),
        ("POST", "/ca/v1/operators", {"name": "A", "id": "E1"}, world.enterprise, "not 'id'"),
    ):
        r = send(world, method, path, json.dumps(doc).encode(), signer=signer)
        assert_problem(r, 400, words)
    assert counts(world) == before
    r = send(world, "GET", f"/ca/v1/applications/{app_id}")
    assert r.json()["state"] == "pending", r.text


def test_an_event_query_that_cannot_mean_what_it_says_is_400(world: World) -> None:
    """A misspelt filter (``usc=``) was ignored and every event answered: an export
    silently unfiltered. A ``since`` not before ``until`` answered "no events", where the
    CLI refuses it. Both are 400s now."""
    for query, words in (
        ("usc=91350100M000100Y43", "unknown query parameter 'usc'"),
        ("type=ca.initialized&limt=5", "unknown query parameter 'limt'"),
        ("since=2026-11-28T11:00:00Z&until=2026-11-28T10:00:00Z", "is not before until"),
    ):
        r = send(world, "GET", f"/ca/v1/audit/events?{query}", signer=world.auditor)
        assert_problem(r, 400, words)
    r = send(world, "GET", "/ca/v1/audit/events?type=ca.initialized&limit=5", signer=world.auditor)
    assert r.status_code == 200 and r.json()["events"], r.text


def a_csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")])
    req = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return req.public_bytes(serialization.Encoding.PEM).decode()


def an_enrollment_code(world: World) -> str:
    app_id = pending_application(world)
    grant = jrun(world.server, "ra", "approve", app_id, *world.server.officer())
    return str(grant["enrollment_code"])


def test_a_body_shorter_than_its_content_length_is_400_and_changes_nothing(world: World) -> None:
    """A client that declares more octets than it sends and closes its side: gunicorn's
    input reads to the end without a word, so each endpoint stored what it got (an
    application; an enrollment that spent its code). Now a 400 naming both lengths, and
    the code still enrolls afterwards."""
    code = an_enrollment_code(world)
    enroll = json.dumps({"code": code, "profile": "enterprise", "csr": a_csr()}).encode()
    application = json.dumps(
        {"subject_class": "enterprise", "uscc": fresh_uscc(), "legal_name": "Short Body Co."}
    ).encode()
    form = b"grant_type=refresh_token&refresh_token=x"
    before = counts(world)
    for path, ctype, body in (
        ("/ca/v1/applications", "application/json", application),
        ("/ca/v1/enroll", "application/json", enroll),
        ("/auth/token", "application/x-www-form-urlencoded", form),
    ):
        status, headers, answer = raw_http(
            world,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n".encode()
            + f"Content-Length: {len(body) + 20}\r\n\r\n".encode()
            + body,
        )
        assert status == 400, (path, status, answer)
        oauth = path == "/auth/token"  # RFC 6749 §5.2's words there (fuzzing probe 24)
        kind = "application/json" if oauth else "application/problem+json"
        assert headers["Content-Type"] == kind, (path, headers)
        detail = json.loads(answer)["error_description" if oauth else "detail"]
        assert f"after {len(body)} of the {len(body) + 20} bytes" in detail, (path, detail)
    assert counts(world) == before
    r = send(world, "POST", "/ca/v1/enroll", enroll)
    assert r.status_code == 201, r.text


def chunked(path: str, body: bytes) -> bytes:
    """A POST of ``body`` as chunks of 8 KiB, framed by Transfer-Encoding."""
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (body[i : i + 8192] for i in range(0, len(body), 8192))
    )
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )


def test_a_chunked_body_is_held_to_the_limit_its_length_would_be(world: World) -> None:
    """A chunked body has no declared length, so Werkzeug stopped reading it at the 64 KiB
    limit without a word, and the view parsed what came before: JSON padded with blanks
    past the limit was stored (201) where the same bytes with a Content-Length were a 413.
    Now a 413 either way, nothing stored; within the limit a chunked body is read whole,
    by the enrollment's fast path as well."""
    doc = {"subject_class": "enterprise", "uscc": fresh_uscc(), "legal_name": "Padded Co."}
    padded = json.dumps(doc).encode() + b" " * 70_000
    before = counts(world)
    status, headers, answer = raw_http(world, chunked("/ca/v1/applications", padded))
    assert status == 413, (status, answer)
    assert headers["Content-Type"] == "application/problem+json", headers
    assert "65536 bytes" in json.loads(answer)["detail"], answer
    r = send(world, "POST", "/ca/v1/applications", padded)
    assert r.status_code == 413, r.text
    assert counts(world) == before

    code = an_enrollment_code(world)
    enroll = json.dumps({"code": code, "profile": "enterprise", "csr": a_csr()}).encode()
    status, _, answer = raw_http(world, chunked("/ca/v1/enroll", enroll + b" " * 20_000))
    assert status == 201, (status, answer)
    assert json.loads(answer)["certificate"].startswith("-----BEGIN CERTIFICATE-----")


def test_a_problem_names_its_path_percent_encoded(world: World) -> None:
    """A problem's ``instance`` is a URI reference (RFC 9457 §3.1.5): the path as it was
    sent, percent-encoded, from either service; a NUL, another control character, a
    byte that is not UTF-8 or a literal "%" in it was written decoded (``\u0000``)."""
    for path, status in (
        ("/ca/v1/applications/app_%00", 400),  # refused at the edge (NUL)
        ("/ca/v1/applications/app_%07%7F%C2%85%E4%B8%AD%25", 404),  # refused by the view
        ("/ca/v1/applications/app_%FF", 404),
        ("/auth/v1/roles%00", 400),
        ("/auth/v1/%1B%5B31m%E4%B8%AD%FF%25%00", 400),
    ):
        code, headers, body = raw_http(
            world, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert code == status, (path, code, body)
        assert headers["Content-Type"] == "application/problem+json", (path, headers)
        assert json.loads(body)["instance"] == path, (path, body)


# -- the CLI ------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_bad_times_and_files_are_one_line(tmp_path: Path) -> None:
    """Times out of range, and argument bytes that are not UTF-8, are usage errors (exit
    2) before a file is read or anything is sent; a policy directory with a file that is
    not UTF-8, or a directory where a file goes, is one line naming the file (``eport ca
    init`` and ``eport serve``, which read them in every gunicorn worker); bad certificate,
    key and passphrase files are one line. Never a traceback; no server is needed."""
    env = base_env()
    env.update(HOME=str(tmp_path), EPORT_SERVER="http://127.0.0.1:9")

    def eport(args: tuple[str, ...], **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*EPORT_CMD, *args],
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    (tmp_path / "cert.pem").write_text("not read\n")
    files = ["--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "cert.pem")]
    # (arguments, result, the exit code expected: 0 for "1 or 2")
    results: list[tuple[tuple[str, ...], subprocess.CompletedProcess[str], int]] = []
    for args in (
        ("revoke", "--reason", "keyCompromise", "--invalidity-date", "0001-01-01T00:00:00+23:59"),
        ("audit", "log", "--since", "9999-12-31T23:59:59-23:59"),
        ("audit", "log", "--until", "0001-01-01T00:00:00+00:01"),
    ):
        res = eport((*args, *files))
        results.append((args, res, 2))
        assert "is out of range: in UTC" in res.stderr, (args, res.stderr)
    # Bytes that are not UTF-8 in an argument bound for a JSON body (Python hands them on
    # as lone surrogates): the server refused them (a 500 before, 400 now); now they are
    # not sent at all
    args = ("apply", "--uscc", "91350100M000100Y43", "--name", "N\udcffame")
    res = eport(args)
    results.append((args, res, 2))
    assert "is not UTF-8 text (it has the byte 0xff)" in res.stderr, res.stderr
    # Bad files where a certificate, a key or a passphrase file goes (these already were
    # one line; kept so): not UTF-8, empty, a directory, a PEM of garbage or cut short
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "binary.pem").write_bytes(b"\xff\xfe\x00garbage\xc0")
    (bad / "empty.pem").write_bytes(b"")
    (bad / "dir.pem").mkdir()
    pem = "-----BEGIN {0}-----\n{1}\n-----END {0}-----\n"
    (bad / "garbage.pem").write_text(pem.format("CERTIFICATE", "ZZZZ!!!!"))
    (bad / "short.pem").write_text(pem.format("CERTIFICATE", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"))
    (bad / "key.pem").write_text(pem.format("ENCRYPTED PRIVATE KEY", "AAAA"))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Self-Signed")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder(name, name, key.public_key(), 1, now, now)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    good = tmp_path / "self-signed.pem"  # a readable certificate: the key is read next
    good.write_bytes(cert)
    for f in sorted(bad.iterdir()):
        for args in (
            ("cert", "show", str(f)),
            ("status", "--cert", str(f)),
            ("login", "--cert", str(f), "--key", str(bad / "key.pem")),
            ("login", "--cert", str(good), "--key", str(f)),
            ("login", *files, "--passphrase-file", str(f)),
        ):
            res = eport(args)
            results.append((args, res, 0))  # 1, or 2 for a usage error (a directory)
    policies = CAConfig.load({}).policies_dir
    port = str(free_port())
    for name, damage in (
        ("members.toml", "not-utf8"),
        ("profiles/enterprise.toml", "not-utf8"),
        ("services.toml", "not-utf8"),
        ("members.toml", "dir"),
        ("access.toml", "dir"),
    ):
        pol = tmp_path / f"pol-{name.replace('/', '-')}-{damage}"
        shutil.copytree(policies, pol)
        target = pol / name
        target.unlink()
        if damage == "dir":
            target.mkdir()
        else:
            target.write_bytes(b"\xff\xfe[x]\n")
        commands = [("serve", "--dev", "--data-dir", str(tmp_path / f"srv-{pol.name}"))]
        commands[0] += ("--port", port)
        if name not in ("services.toml", "access.toml"):  # the token service's files
            out = tmp_path / f"out-{pol.name}"
            commands.append(
                ("ca", "init", "--data-dir", str(tmp_path / f"ca-{pol.name}"), "--out", str(out))
            )
            commands[-1] += ("--policies", str(pol))
        for args in commands:
            res = eport(args, EPORT_POLICIES_DIR=str(pol))
            results.append((args, res, 1))
            assert str(target) in res.stderr, (args, res.stderr)
    for args, res, code in results:
        assert "Traceback" not in res.stderr, (args, res.stderr)
        assert "unexpected error" not in res.stderr, (args, res.stderr)
        assert res.returncode in ((code,) if code else (1, 2)), (args, res.returncode, res.stderr)
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("eport: error: "), (args, res.stderr)


def test_a_body_in_a_coding_nothing_decodes_is_refused(world: World) -> None:
    """``Transfer-Encoding: gzip, chunked`` and ``Content-Encoding: gzip`` bodies were read
    as if neither coding were there: plain JSON so labelled was stored (201), and a body
    really gzipped got a misleading "not UTF-8". Now a transfer coding other than chunked
    is a 501 problem (RFC 9112 §6.1), a content coding a 415 with ``Accept-Encoding:
    identity`` (RFC 7694 §3), on either service and on the enrollment's fast path; nothing
    is stored. A coding gunicorn does not know at all is its own 501, titled as one."""
    doc = json.dumps({"uscc": fresh_uscc(), "legal_name": "Coded Co."}).encode()
    before = counts(world)
    for path, ctype in (
        ("/ca/v1/applications", "application/json"),
        ("/ca/v1/enroll", "application/json"),
        ("/auth/token", "application/x-www-form-urlencoded"),
    ):
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n".encode()
        chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(doc), doc)
        for framing, body, want in (
            (b"Transfer-Encoding: gzip, chunked\r\n", chunk, 501),
            (b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(doc), doc, 415),
            (b"Transfer-Encoding: chunked\r\nContent-Encoding: br\r\n", chunk, 415),
        ):
            status, headers, answer = raw_http(
                world, head + framing + b"Connection: close\r\n\r\n" + body
            )
            assert status == want, (path, framing, status, answer)
            if path == "/auth/token":  # an OAuth endpoint: RFC 6749 §5.2's words
                assert headers["Content-Type"] == "application/json", headers
                oauth = json.loads(answer)
                assert oauth["error"] == "invalid_request", oauth
                assert "coding" in oauth["error_description"], oauth
            else:
                assert headers["Content-Type"] == "application/problem+json", headers
                problem = json.loads(answer)
                assert problem["status"] == want and "coding" in problem["detail"], problem
            if want == 415:
                assert headers["Accept-Encoding"] == "identity", headers
    status, headers, answer = raw_http(
        world,
        b"POST /ca/v1/applications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Transfer-Encoding: x-bogus, chunked\r\nConnection: close\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(doc), doc),
    )
    assert status == 501 and json.loads(answer)["title"] == "Not Implemented", answer
    # An empty body has nothing coded: chunked or Content-Length 0, the same answer.
    for framing in (b"Transfer-Encoding: chunked\r\n", b"Content-Length: 0\r\n"):
        status, _, answer = raw_http(
            world,
            b"GET /ca/v1/health HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
            + framing
            + b"Connection: close\r\n\r\n"
            + (b"0\r\n\r\n" if b"chunked" in framing else b""),
        )
        assert status == 200, (framing, status, answer)
    assert counts(world) == before
    r = send(world, "POST", "/ca/v1/applications", doc)  # the same body, as it is
    assert r.status_code == 201, r.text
