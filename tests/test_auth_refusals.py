"""How the token service refuses, over real HTTP: in the right format for the endpoint
(RFC 6749 §5.2 at the OAuth endpoints, RFC 9457 elsewhere), naming the rule, and with
nothing changed by the refused request. Each case was found by probing the running
server; the role grant's operator id is checked on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from requests.adapters import HTTPAdapter

from authsvc.models import (
    AuthEventRow,
    LoginFailureRow,
    OperatorRolesRow,
    RefreshTokenRow,
    SeenAssertionRow,
    SessionRow,
)
from authsvc.principal import x5t_s256
from authsvc.service import ACCESS_TOKEN_TYPE, JWT_BEARER, TOKEN_EXCHANGE
from ca.signedreq import SCHEME, sign_request
from cli.client import Identity
from cli.keyfiles import load_identity
from cli.session import assertion
from tests.conftest import Postgres, Server, start_server, stop
from tests.helpers import enroll_enterprise, enroll_service, row_counts

PROXY = "127.0.0.2"
"""The address the test server trusts as its TLS proxy; requests from 127.0.0.1 come
from an untrusted address."""


@dataclass
class World:
    server: Server
    auth_db: str
    tmp: Path
    ent: Path
    enterprise: Identity


def _world(root: Path, database_url: str = "", auth_db: str = "") -> tuple[World, Any]:
    extra = {"EPORT_AUTH_TRUSTED_PROXIES": f"{PROXY}/32"}
    if auth_db:
        extra["EPORT_AUTH_DATABASE_URL"] = auth_db
    srv, proc = start_server(root / "data", database_url, workers=1, extra_env=extra)
    try:
        ent = enroll_enterprise(srv, root, "Refusals Trading Co.")
        pw = root / "pw.txt"
        pw.write_text("test-passphrase-123")
        ident = load_identity(ent / "cert.pem", ent / "key.pem", pw)
    except BaseException:
        stop(proc)
        raise
    auth = auth_db or f"sqlite:///{srv.data_dir / 'auth.db'}"
    return World(srv, auth, root, ent, ident), proc


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server on SQLite that trusts :data:`PROXY` as its TLS proxy, and an enterprise."""
    w, proc = _world(tmp_path_factory.mktemp("refusals"))
    try:
        yield w
    finally:
        stop(proc)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def on_each_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """:func:`world` on SQLite, and the same on PostgreSQL (both services' databases)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("world")
        return
    pg: Postgres = request.getfixturevalue("postgres")
    w, proc = _world(
        tmp_path_factory.mktemp("refusals-pg"),
        pg.createdb("eport_refusals"),
        pg.createdb("eport_refusals_auth"),
    )
    try:
        yield w
    finally:
        stop(proc)


def signed(
    w: World,
    path: str,
    body: bytes,
    content_type: str,
    signer: Identity | None = None,
) -> requests.Response:
    """A POST signed (``EPort-Signed``) over these exact bytes, by the enterprise unless
    ``signer`` is given."""
    who = signer or w.enterprise
    now = datetime.datetime.now(datetime.UTC)
    jws = sign_request(who.key, who.chain, "POST", path, body, now)
    return requests.post(
        w.server.url + path,
        data=body,
        headers={"Content-Type": content_type, "Authorization": f"{SCHEME} {jws}"},
        timeout=30,
    )


def grant(w: World, operator_id: Any, roles: Any, authorization: Any = "x1") -> requests.Response:
    """A role grant, naming an authorization as ``eport roles grant`` does (any here: the
    token service keeps what it is given for the enterprise's operator id)."""
    body = json.dumps(
        {"operator_id": operator_id, "roles": roles, "authorization": authorization}
    ).encode()
    return signed(w, "/auth/v1/roles", body, "application/json")


def assert_problem(r: requests.Response, status: int, *words: str) -> None:
    assert r.status_code == status, (r.request.url, r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/problem+json", r.headers
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, (detail, word)


def assert_oauth(r: requests.Response, status: int, error: str, *words: str) -> None:
    """An RFC 6749 §5.2 error: ``{error, error_description}``, not to be cached."""
    assert r.status_code == status, (r.request.url, r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/json", (r.headers, r.text)
    assert r.headers["Cache-Control"] == "no-store", r.headers
    doc = r.json()
    assert set(doc) == {"error", "error_description"} and doc["error"] == error, doc
    for word in words:
        assert word in doc["error_description"], (doc, word)


class _FromAddress(HTTPAdapter):
    """Connections from a chosen local address (the trusted proxy's)."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def from_proxy() -> requests.Session:
    s = requests.Session()
    s.mount("http://", _FromAddress(PROXY))
    return s


# -- role grants -----------------------------------------------------------------------------


def test_a_role_grant_to_an_operator_id_the_ca_would_refuse_is_400(on_each_db: World) -> None:
    """The operator id is held to the CA's rule for ``eport operator add --id``. Over 64
    characters it was a 500 on PostgreSQL (a String(64) column) and stored on SQLite."""
    w = on_each_db
    before = row_counts(w.auth_db, [OperatorRolesRow])
    cases = [
        ("E" * 65, ["operator id", "65 characters", "64"]),
        ("E" * 5000, ["operator id", "5000 characters", "64"]),
        ("E1024\u202e", ["operator id", "invisible or control character", "U+202E"]),
        ("王小明", ["operator id may use only"]),
        ("   ", ["operator id is required"]),
    ]
    for operator_id, words in cases:
        assert_problem(grant(w, operator_id, ["declaration"]), 400, *words)
    # The authorization is a dnQualifier: 200 characters answered 500 on PostgreSQL
    for authorization in ("a" * 65, "a" * 200, "王", "", 7):
        r = grant(w, "E1024", ["declaration"], authorization)
        assert_problem(r, 400, "authorization")
    assert row_counts(w.auth_db, [OperatorRolesRow]) == before
    # At the limit, and with blanks as the CA collapses them: granted, stored as the CA
    # would write the certificate's serialNumber.
    r = grant(w, "E" * 64, ["declaration"])
    assert r.status_code == 200 and r.json()["operator_id"] == "E" * 64, r.text
    # An answer to a signed request is kept by no cache, and sniffed as nothing else.
    assert r.headers["Cache-Control"] == "no-store", r.headers
    assert r.headers["X-Content-Type-Options"] == "nosniff", r.headers
    r = grant(w, "  E  1024 ", ["declaration"])
    assert r.status_code == 200 and r.json()["operator_id"] == "E 1024", r.text
    after = row_counts(w.auth_db, [OperatorRolesRow])
    assert after[OperatorRolesRow.__tablename__] == before[OperatorRolesRow.__tablename__] + 2
    assert "Traceback" not in w.server.log.read_text()


def test_a_role_grant_naming_an_unknown_role_is_a_problem(world: World) -> None:
    """/auth/v1/roles answers every refusal as RFC 9457 problem+json; an unknown role
    was an OAuth error (it is no OAuth endpoint)."""
    before = row_counts(world.auth_db, [OperatorRolesRow, AuthEventRow])
    r = grant(world, "E1024", ["declaration", "admin"])
    assert_problem(r, 400, "unknown role 'admin' (known: ", "declaration")
    assert r.json()["type"] == "urn:eport:problem:bad-request"
    assert row_counts(world.auth_db, [OperatorRolesRow, AuthEventRow]) == before


# -- login -----------------------------------------------------------------------------------

LOGIN_TABLES = [SessionRow, RefreshTokenRow, AuthEventRow, SeenAssertionRow, LoginFailureRow]
"""What a login writes: its session and refresh token, its event, its spent jti, and a
failure's count."""


def login(w: World, jws: str, **extra: str) -> requests.Response:
    data = {"grant_type": JWT_BEARER, "assertion": jws, **extra}
    return requests.post(w.server.url + "/auth/token", data=data, timeout=30)


def test_a_login_refused_for_its_audience_leaves_nothing_behind(world: World) -> None:
    """An RFC 7523 login naming a service the subject may not use, or none this server
    knows, opened an 8-hour session, logged ``login`` and spent the jti before the
    service was checked. Refused now before anything is written: the same assertion
    then logs in."""
    w = world
    leaf = w.enterprise.chain[0]
    jws = assertion(w.enterprise, w.server.url + "/auth/token", x5t_s256(leaf))
    before = row_counts(w.auth_db, LOGIN_TABLES)
    r = login(w, jws, audience="audit")  # the auditors' service: no enterprise access
    # RFC 6749 §5.2: 400, as every token endpoint error but invalid_client (it was 403)
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope", r.text
    assert "no access to audit" in r.json()["error_description"]
    r = login(w, jws, audience="no-such-service")
    assert r.status_code == 400 and r.json()["error"] == "invalid_target", r.text
    assert row_counts(w.auth_db, LOGIN_TABLES) == before
    # The same assertion, for a service the enterprise may use: one session, one login
    # event, one spent jti, and the access token with it.
    r = login(w, jws, audience="portal")
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "Bearer" and r.json()["access_token"]
    after = row_counts(w.auth_db, LOGIN_TABLES)
    grown = {name: after[name] - before[name] for name in after}
    assert grown == {
        SessionRow.__tablename__: 1,
        RefreshTokenRow.__tablename__: 1,
        AuthEventRow.__tablename__: 1,
        SeenAssertionRow.__tablename__: 1,
        LoginFailureRow.__tablename__: 0,
    }
    r = login(w, jws, audience="portal")
    assert r.status_code == 400 and "already used" in r.json()["error_description"]


# -- OAuth endpoints answer in their RFC's format --------------------------------------------

EXCHANGE = {
    "grant_type": TOKEN_EXCHANGE,
    "subject_token": "not-a-token",
    "subject_token_type": ACCESS_TOKEN_TYPE,
    "audience": "manifest",
}


def test_oauth_endpoints_refuse_callers_as_rfc_6749_errors(world: World) -> None:
    """Token exchange, mTLS login and introspection answered a caller they could not
    authenticate, or one that is not a service, as RFC 9457 problems."""
    w = world
    url = w.server.url
    # Token exchange by nobody, by a bearer token, by a signed request that is junk.
    for headers in ({}, {"Authorization": "Bearer abc"}, {"Authorization": f"{SCHEME} x.y.z"}):
        r = requests.post(url + "/auth/token", data=EXCHANGE, headers=headers, timeout=30)
        assert_oauth(r, 401, "invalid_client")
        assert r.headers["WWW-Authenticate"].startswith(SCHEME), r.headers
    # Signed, by a certificate that is not a registered service's: authenticated, but
    # not allowed this grant.
    body = "&".join(f"{k}={v}" for k, v in EXCHANGE.items()).encode()
    r = signed(w, "/auth/token", body, "application/x-www-form-urlencoded")
    assert_oauth(r, 400, "unauthorized_client", "registered e-port service")
    # A forwarded client certificate from an address that is not a trusted proxy.
    pem = w.enterprise.chain[0].public_bytes(serialization.Encoding.PEM).decode()
    forwarded = {"X-SSL-Client-Cert": quote(pem)}
    r = requests.post(url + "/auth/login/mtls", headers=forwarded, timeout=30)
    assert_oauth(r, 401, "invalid_client", "not a trusted proxy")
    assert "WWW-Authenticate" in r.headers
    r = requests.post(url + "/auth/token", data=EXCHANGE, headers=forwarded, timeout=30)
    assert_oauth(r, 401, "invalid_client", "not a trusted proxy")
    # From the trusted proxy, a certificate header that cannot be read.
    proxy = from_proxy()
    for junk in ({"X-SSL-Client-Cert": "garbage"}, {"Client-Cert": ":AAAA:"}):
        r = proxy.post(url + "/auth/login/mtls", headers=junk, timeout=30)
        assert_oauth(r, 400, "invalid_request", "unreadable")
        r = proxy.post(url + "/auth/introspect", data={"token": "x"}, headers=junk, timeout=30)
        assert_oauth(r, 400, "invalid_request", "unreadable")
        r = proxy.post(url + "/auth/token", data=EXCHANGE, headers=junk, timeout=30)
        assert_oauth(r, 400, "invalid_request", "unreadable")
    # The control: the same certificate, forwarded by the proxy, logs in.
    r = proxy.post(url + "/auth/login/mtls", headers=forwarded, timeout=30)
    assert r.status_code == 200, r.text


def test_a_body_over_the_limit_at_an_oauth_endpoint_is_an_rfc_6749_error(world: World) -> None:
    """413 at an OAuth endpoint is ``invalid_request`` (it was a problem); elsewhere it
    stays a problem."""
    w = world
    big = "a" * 70_000
    for path, data in (
        ("/auth/token", {"grant_type": "refresh_token", "refresh_token": big}),
        ("/auth/introspect", {"token": big}),
        ("/auth/revoke", {"token": big}),
        ("/auth/session", {"refresh_token": big}),
        ("/auth/logout", {"refresh_token": big}),
        ("/auth/login/mtls", {"x": big}),
    ):
        r = requests.post(w.server.url + path, data=data, timeout=30)
        assert_oauth(r, 413, "invalid_request", "bytes")
    r = requests.post(
        w.server.url + "/auth/v1/roles",
        data=json.dumps({"operator_id": big, "roles": []}),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert_problem(r, 413, "bytes")


# -- a parameter given twice -----------------------------------------------------------------


def session_of(w: World) -> dict[str, Any]:
    """A fresh login of the enterprise, with an access token for customs-declaration."""
    leaf = w.enterprise.chain[0]
    jws = assertion(w.enterprise, w.server.url + "/auth/token", x5t_s256(leaf))
    r = login(w, jws, audience="customs-declaration")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.fixture(scope="module")
def service(world: World) -> Identity:
    """The customs-declaration service's certificate (a registered service)."""
    d = enroll_service(world.server, world.tmp)
    return load_identity(d / "cert.pem", d / "key.pem", world.tmp / "pw.txt")


def test_a_parameter_given_twice_is_refused_at_every_oauth_endpoint(
    world: World, service: Identity
) -> None:
    """RFC 6749 §3.1: "MUST NOT be included more than once". Only the
    authorization_code grant refused repeats; elsewhere the first value won silently, so
    a proxy reading the last one and this server disagreed on what was asked."""
    w = world
    url = w.server.url
    s = session_of(w)
    rt, at = s["refresh_token"], s["access_token"]
    other = session_of(w)["access_token"]

    def post(path: str, fields: list[tuple[str, str]]) -> requests.Response:
        return requests.post(url + path, data=fields, timeout=30)

    refresh = [("grant_type", "refresh_token"), ("refresh_token", rt)]
    cases: list[tuple[str, list[tuple[str, str]], str]] = [
        ("/auth/token", [("grant_type", "password"), *refresh], "grant_type"),
        (
            "/auth/token",
            [*refresh, ("refresh_token", rt), ("audience", "portal")],
            "refresh_token",
        ),
        (
            "/auth/token",
            [*refresh, ("audience", "customs-declaration"), ("audience", "manifest")],
            "audience",
        ),
        ("/auth/token", [*refresh, ("resource", "portal"), ("resource", "manifest")], "resource"),
        ("/auth/revoke", [("token", "junk"), ("token", at)], "token"),
        ("/auth/logout", [("refresh_token", "junk"), ("refresh_token", rt)], "refresh_token"),
        ("/auth/session", [("refresh_token", rt), ("refresh_token", rt)], "refresh_token"),
    ]
    for path, fields, name in cases:
        assert_oauth(post(path, fields), 400, "invalid_request", f"{name} is given more than once")
    # Introspection, signed by a registered service, and by its certificate forwarded by
    # the trusted proxy (the WSGI fast path, which hands repeats to the Flask view).
    body = f"token={at}&token={other}".encode()
    form = "application/x-www-form-urlencoded"
    r = signed(w, "/auth/introspect", body, form, signer=service)
    assert_oauth(r, 400, "invalid_request", "token is given more than once")
    pem = service.chain[0].public_bytes(serialization.Encoding.PEM).decode()
    forwarded = {"X-SSL-Client-Cert": quote(pem), "Content-Type": form}
    proxy = from_proxy()
    for twice in (body, f"token=&token={at}".encode()):
        r = proxy.post(url + "/auth/introspect", data=twice, headers=forwarded, timeout=30)
        assert_oauth(r, 400, "invalid_request", "token is given more than once")
    # None of those did anything: the token is active, the refresh token unused.
    r = proxy.post(url + "/auth/introspect", data={"token": at}, headers=forwarded, timeout=30)
    assert r.status_code == 200 and r.json()["active"] is True, r.text
    r = post("/auth/token", [*refresh, ("audience", "portal")])
    assert r.status_code == 200 and r.json()["aud"] == "https://portal.eport.example", r.text


# -- a used refresh token ----------------------------------------------------------------------


def whoami(w: World, rt: str) -> requests.Response:
    return requests.post(w.server.url + "/auth/session", data={"refresh_token": rt}, timeout=30)


def rotate(w: World, rt: str) -> str:
    fields = {"grant_type": "refresh_token", "refresh_token": rt, "audience": "portal"}
    r = requests.post(w.server.url + "/auth/token", data=fields, timeout=30)
    assert r.status_code == 200, r.text
    successor: str = r.json()["refresh_token"]
    return successor


def test_a_used_refresh_token_does_not_name_its_session(world: World) -> None:
    """/auth/session (``eport whoami``) answered a rotated refresh token with the
    session's identity for as long as the session lived."""
    s = session_of(world)
    first = s["refresh_token"]
    second = rotate(world, first)
    r = whoami(world, first)
    assert_oauth(r, 400, "invalid_grant", "already used", "successor")
    # Within the grace of a concurrent refresh: nothing else happens.
    r = whoami(world, second)
    assert r.status_code == 200 and r.json()["sid"] == s["session"]["sid"], r.text


@pytest.mark.slow
def test_a_used_refresh_token_after_the_grace_ends_the_session(world: World) -> None:
    """Presented again later than the 10 s grace, at /auth/session as at the token
    endpoint, a used refresh token is theft: the session ends, its tokens stop."""
    s = session_of(world)
    first = s["refresh_token"]
    second = rotate(world, first)
    time.sleep(10.5)
    assert_oauth(whoami(world, first), 400, "invalid_grant", "the session is ended")
    assert_oauth(whoami(world, second), 400, "invalid_grant", "ended")
    r = requests.get(
        world.server.url + "/auth/validate",
        headers={
            "Authorization": "Bearer " + s["access_token"],
            "X-Eport-Service": "customs-declaration",
        },
        timeout=30,
    )
    assert r.status_code == 401


# -- small answers -----------------------------------------------------------------------------


def test_revocation_answers_200_with_no_body_and_no_type(world: World) -> None:
    """RFC 7009 §2.2: 200 whether or not the token was known. It was answered
    ``text/html`` with an empty body, the only such answer of the JSON endpoints."""
    s = session_of(world)
    for token in ("abc", s["access_token"], s["refresh_token"]):
        r = requests.post(world.server.url + "/auth/revoke", data={"token": token}, timeout=30)
        assert r.status_code == 200 and r.content == b"", r.text
        assert "Content-Type" not in r.headers, r.headers
        assert r.headers["Cache-Control"] == "no-store"
    assert_oauth(whoami(world, s["refresh_token"]), 400, "invalid_grant")  # it did revoke


def test_slow_down_says_when_to_try_again(world: World) -> None:
    """429 ``slow_down`` names the seconds left in the failure window (``Retry-After``);
    it had none, and the client could not tell when the 5 minutes end."""
    w = world
    ent = enroll_enterprise(w.server, w.tmp, "Locked Out Co.")
    ident = load_identity(ent / "cert.pem", ent / "key.pem", w.tmp / "pw.txt")
    endpoint = w.server.url + "/auth/token"
    # Failures its holder signed (a wrong sub) count against the certificate: 10 in 5 min.
    started = time.monotonic()
    for _ in range(10):
        r = login(w, assertion(ident, endpoint, "ent:not-this-one"))
        assert_oauth(r, 400, "invalid_grant", "sub")
    r = login(w, assertion(ident, endpoint, x5t_s256(ident.chain[0])))
    assert_oauth(r, 429, "slow_down")
    window = 300 - (time.monotonic() - started)
    retry_after = int(r.headers["Retry-After"])
    assert window - 5 <= retry_after <= 300, (retry_after, window)
    assert f"in {retry_after} s" in r.json()["error_description"]


# -- plain words -------------------------------------------------------------------------------

PARSER_WORDS = ("Invalid base64", "multiple of 4", "Expecting", "line 1 column", "(char ")
"""What Python's base64 and JSON parsers say, which a client cannot act on."""


def test_a_malformed_jws_is_refused_in_plain_words(world: World, service: Identity) -> None:
    """A login assertion, a signed request or a subject token that is no compact JWS was
    refused with the base64 or JSON parser's own message."""
    w = world
    url = w.server.url
    form = "application/x-www-form-urlencoded"
    cases = [
        ("a.b.c", "not a compact JWS: its parts are not base64url"),
        ("e1.e30.AA", "the JOSE header is not a JSON object"),
        ("W10.e30.AA", "the JOSE header is not a JSON object"),
        ("abc", "not a compact JWS (three base64url parts separated by dots)"),
    ]
    for jws, words in cases:
        answers = [
            (login(w, jws), 400, "invalid_grant"),
            (
                requests.post(
                    url + "/auth/token",
                    data=EXCHANGE,
                    headers={"Authorization": f"{SCHEME} {jws}"},
                    timeout=30,
                ),
                401,
                "invalid_client",
            ),
            (
                signed(
                    w,
                    "/auth/token",
                    urlencode({**EXCHANGE, "subject_token": jws}).encode(),
                    form,
                    signer=service,
                ),
                400,
                "invalid_grant",
            ),
        ]
        for r, status, error in answers:
            assert_oauth(r, status, error, words)
            said = r.json()["error_description"]
            assert not any(p in said for p in PARSER_WORDS), said


def test_replays_of_a_used_assertion_do_not_lock_its_holder_out(world: World) -> None:
    """Anyone who saw one used assertion (a log, a middlebox, the holder's own retry)
    could replay it ten times and lock its holder out of login for five minutes: a
    replay counted against the certificate as the holder's own failure (races probe,
    F2). Replays now count against the address alone."""
    w = world
    ent = enroll_enterprise(w.server, w.tmp, "Replayed Assertion Co.")
    ident = load_identity(ent / "cert.pem", ent / "key.pem", w.tmp / "pw.txt")
    endpoint = w.server.url + "/auth/token"
    used = assertion(ident, endpoint, x5t_s256(ident.chain[0]))
    assert login(w, used).status_code == 200
    for _ in range(12):
        assert_oauth(login(w, used), 400, "invalid_grant", "already used")
    fresh = login(w, assertion(ident, endpoint, x5t_s256(ident.chain[0])))
    assert fresh.status_code == 200, fresh.text
