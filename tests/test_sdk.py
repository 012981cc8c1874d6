"""The service SDK (``authsvc.client``) against a real e-port server.

Tokens come from the real CLI (``eport login`` / ``eport token``) of an operator whose
enterprise enrolled it and granted it roles; the sample service
(``examples/customs_declaration``) runs under a real WSGI server; keys are rotated with
``eport auth rotate-keys``; introspection is signed with a real service-tls certificate.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from werkzeug.serving import make_server

from authsvc.client import (
    CertificateMismatch,
    ExpiredToken,
    InsufficientScope,
    IntrospectionFailed,
    Introspector,
    InvalidToken,
    KeySetUnavailable,
    TokenVerifier,
    UnknownKey,
    certificate_thumbprint,
    init_app,
    require_token,
)
from tests.conftest import Server
from tests.helpers import (
    cert_of,
    creds,
    enroll_enterprise,
    enroll_operator,
    enroll_service,
    grant_roles,
    jrun,
)

CUSTOMS = "https://customs-declaration.eport.example"
MANIFEST = "https://manifest.eport.example"
PASSPHRASE = b"test-passphrase-123"  # what tests.conftest.Server gives the CLI for new keys


# -- helpers shared with the gateway and interop tests ------------------------------------


@dataclass
class Session:
    """One ``eport login`` of a certificate holder, in its own CLI config directory."""

    server: Server
    holder: Path
    config_dir: Path

    @property
    def cli_env(self) -> dict[str, str]:
        return {"EPORT_CONFIG_DIR": str(self.config_dir)}

    def token(self, service: str = "customs-declaration") -> str:
        res = self.server.eport(
            "token", "--service", service, EPORT_CONFIG_DIR=str(self.config_dir)
        )
        return res.stdout.strip()

    def logout(self) -> None:
        self.server.eport("logout", EPORT_CONFIG_DIR=str(self.config_dir))


def login(server: Server, holder: Path, tmp: Path) -> Session:
    config_dir = tmp / f"cfg-{secrets.token_hex(4)}"
    server.eport("login", *creds(holder), EPORT_CONFIG_DIR=str(config_dir))
    return Session(server, holder, config_dir)


def issuer(server: Server) -> str:
    return server.url + "/auth"


def header_of(token: str) -> dict[str, Any]:
    seg = token.split(".")[0]
    out = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    assert isinstance(out, dict)
    return out


def payload_of(token: str) -> dict[str, Any]:
    out = jwt.decode(token, options={"verify_signature": False})
    assert isinstance(out, dict)
    return out


def signing_key(server: Server) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """The token service's active signing key, read from its database the way
    ``eport auth rotate-keys`` does: to mint tokens the server would have minted
    (expired ones, other ``typ``) without waiting for the clock."""
    from sqlalchemy.orm import sessionmaker

    from authsvc.app import key_passphrase
    from authsvc.config import AuthConfig
    from authsvc.store import SqlAuthStore
    from ca.db import make_engine

    cfg = AuthConfig.load({"data_dir": server.data_dir, "dev": True}, environ={})
    engine = make_engine(cfg.sqlalchemy_url)
    try:
        keys = SqlAuthStore(sessionmaker(engine, expire_on_commit=False)).list_keys()
    finally:
        engine.dispose()
    # The access tokens' (ES256) key; the RS256 family signs only ID tokens.
    active = next(k for k in keys if k.state == "active" and k.alg == "ES256")
    key = serialization.load_pem_private_key(active.private_pem, key_passphrase(cfg))
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return active.kid, key


def resign(
    server: Server, token: str, *, header: dict[str, Any] | None = None, **claims: Any
) -> str:
    """``token`` with claims changed, signed again with the server's own key."""
    kid, key = signing_key(server)
    payload = {**payload_of(token), **claims}
    return jwt.encode(
        payload, key, algorithm="ES256", headers={"typ": "at+jwt", "kid": kid, **(header or {})}
    )


def hs256(body: dict[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 JWT keyed with ``secret`` (PyJWT refuses to make one from a public key)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
    signing_input = b64(json.dumps(head).encode()) + "." + b64(json.dumps(body).encode())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def expired(server: Server, token: str) -> str:
    now = int(time.time())
    return resign(server, token, iat=now - 900, exp=now - 300)


def forged(token: str) -> str:
    """The same header and claims, signed by a key the issuer never published."""
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(payload_of(token), key, algorithm="ES256", headers=header_of(token))


@contextlib.contextmanager
def serve_wsgi(app: Flask) -> Iterator[str]:
    """``app`` under werkzeug's threaded WSGI server on a free loopback port."""
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, name="wsgi", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def example_app(server: Server, **config: Any) -> Iterator[str]:
    """The sample customs declaration service, configured for ``server``."""
    from authsvc.client.flask_ext import EXTENSION
    from examples.customs_declaration.app import create_app

    app = create_app({"EPORT_ISSUER": issuer(server), "EPORT_AUDIENCE": CUSTOMS, **config})
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        app.extensions[EXTENSION].close()


class CountingSession(requests.Session):
    """A requests session that counts what it fetched (by URL path)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []
        self._count_lock = threading.Lock()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kw: Any) -> Any:
        with self._count_lock:
            self.paths.append(urlsplit(str(url)).path)
        return super().request(method, url, *args, **kw)

    def count(self, suffix: str) -> int:
        with self._count_lock:
            return sum(p.endswith(suffix) for p in self.paths)


# -- fixtures ------------------------------------------------------------------------------


@dataclass
class World:
    server: Server
    ent: Path
    reader: Path
    """An operator with the data-entry role: declaration:read and :draft, no :submit."""
    session: Session
    token: str


@pytest.fixture(scope="module")
def world(sqlite_server: Server, tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("sdk")
    ent = enroll_enterprise(sqlite_server, tmp)
    reader = enroll_operator(sqlite_server, ent, tmp, "reader1", "data-entry")
    session = login(sqlite_server, reader, tmp)
    return World(sqlite_server, ent, reader, session, session.token())


@pytest.fixture
def http() -> Iterator[CountingSession]:
    s = CountingSession()
    try:
        yield s
    finally:
        s.close()


# -- offline verification --------------------------------------------------------------------


def test_sdk_verifies_a_cli_token(world: World, http: CountingSession) -> None:
    v = TokenVerifier(issuer(world.server), CUSTOMS, http=http)  # jwks_uri discovered
    claims = v.verify(world.token, required_scopes=["declaration:read"])
    uscc = x509.load_pem_x509_certificate((world.ent / "cert.pem").read_bytes()).subject
    assert claims.subject.startswith("op:") and claims.subject.endswith(":reader1")
    assert claims.operator_id == "reader1" and claims.subject_class == "operator"
    assert claims.uscc is not None and claims.uscc in uscc.rfc4514_string()
    assert claims.audience == CUSTOMS and claims.issuer == issuer(world.server)
    assert claims.scopes == {"declaration:read", "declaration:draft"}
    assert claims.client_id == "eport-cli" and claims.session_id
    assert claims.expires_at - claims.issued_at == 600
    # RFC 8705: bound to the operator's login certificate, and to no other.
    reader_cert = cert_of(world.reader)
    assert claims.certificate_thumbprint == certificate_thumbprint(reader_cert)
    v.verify(world.token, client_certificate=reader_cert)
    # as a TLS front forwards it: PEM text (was AttributeError) or PEM bytes
    pem = reader_cert.public_bytes(serialization.Encoding.PEM)
    v.verify(world.token, client_certificate=pem.decode())
    v.verify(world.token, client_certificate=pem)
    with pytest.raises(CertificateMismatch):
        v.verify(world.token, client_certificate="-----BEGIN CERTIFICATE-----\nnot\n")
    with pytest.raises(CertificateMismatch):
        v.verify(world.token, client_certificate=cert_of(world.ent))
    # one scope as a string is that scope (it was checked a character at a time)
    v.verify(world.token, required_scopes="declaration:read")
    with pytest.raises(InsufficientScope):
        v.verify(world.token, required_scopes="declaration:submit")
    with pytest.raises(InsufficientScope) as exc:
        v.verify(world.token, required_scopes=["declaration:read", "declaration:submit"])
    assert exc.value.status == 403 and exc.value.error == "insufficient_scope"
    # Discovery once, JWKS once, however many tokens.
    for _ in range(50):
        v.verify(world.token)
    assert http.count("/jwks.json") == 1
    assert v.jwks_url() == issuer(world.server) + "/jwks.json"


def test_a_mistyped_issuer_is_named(world: World, http: CountingSession) -> None:
    """RFC 8414 §3.3 wants the issuer exactly: a trailing slash fails, and the error says
    which issuer the server describes, so the typo can be seen."""
    wrong = issuer(world.server) + "/"
    with pytest.raises(KeySetUnavailable) as exc:
        TokenVerifier(wrong, CUSTOMS, http=http).verify(world.token)
    assert f"describes issuer {issuer(world.server)!r}, not {wrong!r}" in str(exc.value)


def test_sdk_refuses_bad_tokens(world: World, http: CountingSession) -> None:
    server, token = world.server, world.token
    v = TokenVerifier(issuer(server), CUSTOMS, server.url + "/auth/jwks.json", http=http)
    kid = header_of(token)["kid"]
    body = payload_of(token)
    pub = v.keys.get(kid).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    h, p, s = token.split(".")
    tampered_body = dict(body, scope="declaration:read declaration:submit")
    tampered = ".".join(
        [h, base64.urlsafe_b64encode(json.dumps(tampered_body).encode()).rstrip(b"=").decode(), s]
    )
    unsigned = ".".join(
        [
            base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode(),
            p,
            "",
        ]
    )
    bad = {
        "garbage": "not-a-token",
        "empty": "",
        "five parts (JWE)": "a.b.c.d.e",
        "alg none": unsigned,
        # RFC 8725 §2.1: HS256 keyed with the public key the verifier knows.
        "key confusion": hs256(body, pub, kid),
        "tampered": tampered,
        "forged": forged(token),
        "typ JWT": resign(server, token, header={"typ": "JWT"}),
        "jku elsewhere": jwt.encode(
            body,
            ec.generate_private_key(ec.SECP256R1()),
            algorithm="ES256",
            headers={"kid": kid, "typ": "at+jwt", "jku": "http://127.0.0.1:1/jwks.json"},
        ),
        "crit header": resign(server, token, header={"crit": ["exp"]}),
        "wrong issuer": resign(server, token, iss="https://evil.example/auth"),
        "no jti": resign(server, token, jti=None),
        "nbf in the future": resign(server, token, nbf=int(time.time()) + 3600),
        "iat in the future": resign(server, token, iat=int(time.time()) + 3600),
        # NaN compares false with every time (was accepted); int() of NaN or Infinity
        # raised ValueError / OverflowError out of verify()
        # nested past the JSON parser's stack: RecursionError, not InvalidToken
        "nested header": base64.urlsafe_b64encode(b"[" * 5_000).rstrip(b"=").decode() + ".e30.AA",
        "nbf NaN": resign(server, token, nbf=float("nan")),
        "exp NaN": resign(server, token, exp=float("nan")),
        "exp Infinity": resign(server, token, exp=float("inf")),
        "exp of 400 digits": resign(server, token, exp=10**400),  # math.isfinite overflowed
        "another service's token": world.session.token("manifest"),
    }
    for what, tok in bad.items():
        with pytest.raises(InvalidToken):
            v.verify(tok)
            pytest.fail(f"accepted: {what}")
    with pytest.raises(ExpiredToken):
        v.verify(expired(server, token))
    # The verifier's clock is passed in: 11 minutes on, a real token has expired; the
    # leeway (30 s) still accepts it just after exp.
    exp = payload_of(token)["exp"]
    with pytest.raises(ExpiredToken):
        TokenVerifier(issuer(server), CUSTOMS, http=http, clock=lambda: exp + 31.0).verify(token)
    TokenVerifier(issuer(server), CUSTOMS, http=http, clock=lambda: exp + 29.0).verify(token)
    # A service verifying for another audience refuses a customs token.
    with pytest.raises(InvalidToken, match="audience"):
        TokenVerifier(issuer(server), MANIFEST, http=http).verify(token)
    # Bad tokens cost no fetch (the forged ones reuse the real kid): one JWKS per verifier.
    assert http.count("/jwks.json") == 4


def test_unknown_kids_refetch_at_most_once_per_interval(
    world: World, http: CountingSession
) -> None:
    interval = 1.0
    v = TokenVerifier(
        issuer(world.server),
        CUSTOMS,
        world.server.url + "/auth/jwks.json",
        http=http,
        min_refetch_interval=interval,
    )
    t_first = time.monotonic()
    v.verify(world.token)
    assert http.count("/jwks.json") == 1
    key = ec.generate_private_key(ec.SECP256R1())
    body = payload_of(world.token)
    outcomes: list[str] = []

    def burst(n: int) -> None:
        for _ in range(n):
            tok = jwt.encode(
                body,
                key,
                algorithm="ES256",
                headers={"typ": "at+jwt", "kid": secrets.token_urlsafe(32)},
            )
            try:
                v.verify(tok)
                outcomes.append("accepted")
            except UnknownKey:
                outcomes.append("unknown key")
            except Exception as exc:
                outcomes.append(repr(exc))

    def refetches() -> int:
        return http.count("/jwks.json") - 1

    def most() -> int:  # each refetch waits an interval after the attempt before it
        return int((time.monotonic() - t_first) / interval)

    # Right after a fetch: unknown kids are refused without asking again.
    burst(50)
    first = refetches()
    assert first <= most()
    # An interval later: 200 unknown kids from 4 threads at once cause one refetch.
    time.sleep(interval)
    start = time.monotonic()
    threads = [threading.Thread(target=burst, args=(50,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    assert outcomes == ["unknown key"] * 250
    assert refetches() - first >= 1 and refetches() <= most()
    print(
        f"unknown kids: 50 right after a fetch -> {first} refetch, "
        f"then 200 from 4 threads in {took:.2f} s -> {refetches() - first}"
    )
    v.verify(world.token)  # the good key is still there


@pytest.mark.slow
def test_key_rotation_has_no_gap(world: World, http: CountingSession) -> None:
    server = world.server
    v = TokenVerifier(issuer(server), CUSTOMS, http=http, cache_ttl=3600, min_refetch_interval=0.5)
    old = world.session.token()
    v.verify(old)
    fetched_kids = v.keys.kids
    assert http.count("/jwks.json") == 1 and len(fetched_kids) == 2  # active + next
    # A rotation right after the next key was published is refused: relying parties may
    # have cached the JWKS from before it appeared (max-age 300 s).
    early = server.eport(
        "auth", "rotate-keys", "--data-dir", str(server.data_dir), "--dev", check=False
    )
    assert early.returncode == 1 and "published" in early.stderr and "--force" in early.stderr
    # First rotation (forced): the new signer is the key published as "next", already known.
    first = jrun(
        server, "auth", "rotate-keys", "--data-dir", str(server.data_dir), "--dev", "--force"
    )
    assert first["active"] in fetched_kids and first["active"] != header_of(old)["kid"]
    # Second rotation: a signer this verifier has never seen.
    second = jrun(
        server, "auth", "rotate-keys", "--data-dir", str(server.data_dir), "--dev", "--force"
    )
    assert second["active"] not in fetched_kids
    deadline = time.monotonic() + 20  # every server process re-reads its keys within 5 s
    new = world.session.token()
    while header_of(new)["kid"] != second["active"]:
        assert time.monotonic() < deadline, "the server did not start signing with the new key"
        time.sleep(0.5)
        new = world.session.token()
    # The new kid triggers exactly one refetch; the old token stays valid (its key is
    # still published as retired until every token it signed has expired).
    assert v.verify(new).subject == v.verify(old).subject
    assert http.count("/jwks.json") == 2
    published = {
        k["kid"] for k in requests.get(server.url + "/auth/jwks.json", timeout=5).json()["keys"]
    }
    assert {header_of(old)["kid"], first["active"], second["active"]} <= published
    for _ in range(20):
        v.verify(old)
        v.verify(new)
    assert http.count("/jwks.json") == 2


def test_example_app_accepts_and_refuses(world: World, tmp_path: Path) -> None:
    server = world.server
    with example_app(server) as url:
        ok = requests.get(
            url + "/declarations", headers={"Authorization": f"Bearer {world.token}"}, timeout=10
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["subject"].endswith(":reader1") and ok.json()["gateway_subject"] is None

        # A reader may not submit: 403 insufficient_scope (RFC 6750 §3.1).
        post = requests.post(
            url + "/declarations",
            json={"goods": "tea"},
            headers={"Authorization": f"Bearer {world.token}"},
            timeout=10,
        )
        assert post.status_code == 403
        assert 'error="insufficient_scope"' in post.headers["WWW-Authenticate"]
        assert 'scope="declaration:submit"' in post.headers["WWW-Authenticate"]
        assert post.json()["error"] == "insufficient_scope"

        # No token: 401 with a bare challenge (RFC 6750 §3.1: no error code).
        none = requests.get(url + "/declarations", timeout=10)
        assert none.status_code == 401
        assert none.headers["WWW-Authenticate"].startswith('Bearer realm="')
        assert "error=" not in none.headers["WWW-Authenticate"]
        basic = requests.get(url + "/declarations", auth=("a", "b"), timeout=10)
        assert basic.status_code == 401

        for tok in (
            "garbage",
            forged(world.token),
            expired(server, world.token),
            world.session.token("manifest"),
        ):
            r = requests.get(
                url + "/declarations", headers={"Authorization": f"Bearer {tok}"}, timeout=10
            )
            assert r.status_code == 401, tok
            assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
            assert r.headers["Cache-Control"] == "no-store"
        empty = requests.get(
            url + "/declarations", headers={"Authorization": "Bearer "}, timeout=10
        )
        assert empty.status_code == 400 and empty.json()["error"] == "invalid_request"

        # The enterprise grants the declaration role: the next token may submit.
        grant_roles(server, world.ent, "reader1", "data-entry", "declaration")
        submitter = world.session.token()
        post = requests.post(
            url + "/declarations",
            json={"goods": "tea"},
            headers={"Authorization": f"Bearer {submitter}"},
            timeout=10,
        )
        assert post.status_code == 201, post.text
        assert post.json()["declared_by"].endswith(":reader1")
        listed = requests.get(
            url + "/declarations", headers={"Authorization": f"Bearer {submitter}"}, timeout=10
        )
        assert [d["goods"] for d in listed.json()["declarations"]] == ["tea"]
        grant_roles(server, world.ent, "reader1", "data-entry")


# -- introspection ------------------------------------------------------------------------


def test_introspection_with_the_service_certificate(world: World, tmp_path: Path) -> None:
    server = world.server
    svc = enroll_service(server, tmp_path)
    pw = PASSPHRASE
    with Introspector(server.url, svc / "cert.pem", svc / "key.pem", passphrase=pw) as intro:
        result = intro.introspect(world.token)
        assert result.active and result.claims is not None
        assert result.claims.subject.endswith(":reader1")
        assert result.claims.scopes >= {"declaration:read"}
        assert intro.verify(world.token, required_scopes=["declaration:read"]).audience == CUSTOMS
        with pytest.raises(InsufficientScope):
            intro.verify(world.token, required_scopes=["declaration:submit"])
        # A service sees only tokens of its own audience (RFC 7662 §4: no data goes out).
        manifest = world.session.token("manifest")
        assert not intro.introspect(manifest).active
        assert intro.introspect(manifest).raw == {"active": False}
        assert not intro.introspect("garbage").active
        assert not intro.introspect(forged(world.token)).active
        assert not intro.introspect(expired(server, world.token)).active

        # Logout ends the session everywhere: the token is inactive within 5 s, while
        # offline verification keeps accepting it until its exp.
        other = login(server, world.reader, tmp_path)
        tok = other.token()
        assert intro.introspect(tok).active
        other.logout()
        start = time.monotonic()
        while intro.introspect(tok).active:
            assert time.monotonic() - start < 5, "still active 5 s after logout"
            time.sleep(0.1)
        print(f"introspection inactive {time.monotonic() - start:.2f} s after logout")
        with TokenVerifier(issuer(server), CUSTOMS) as v:
            v.verify(tok)

    # An operator's certificate is no service credential: the token service says so (the
    # SDK's own guess is only for a refusal without a reason, tests/test_sdk_probe24.py).
    with (
        Introspector(
            server.url, world.reader / "cert.pem", world.reader / "key.pem", passphrase=pw
        ) as wrong,
        pytest.raises(IntrospectionFailed, match="registered e-port service") as refused,
    ):
        wrong.introspect(world.token)
    assert "HTTP 401" in str(refused.value)


# -- faults ----------------------------------------------------------------------------------


def test_jwks_outage_keeps_cached_keys_and_answers_503() -> None:
    """The JWKS server going down: cached keys go on working past cache_ttl; a verifier
    with no keys yet raises KeySetUnavailable, which a service answers with 503."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwks = {"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}
    up = threading.Event()
    up.set()
    app = Flask("jwks")

    @app.get("/jwks.json")
    def serve_jwks() -> Any:
        return (jwks, 200) if up.is_set() else ("down", 503)

    @app.get("/nested.json")  # nested past the JSON parser's stack: was a RecursionError
    def serve_nested() -> Any:
        return "[" * 100_000, 200, {"Content-Type": "application/json"}

    now = int(time.time())
    iss = "https://eport.example/auth"
    claims: dict[str, Any] = {
        "iss": iss,
        "sub": "ent:x",
        "aud": CUSTOMS,
        "exp": now + 300,
        "iat": now,
        "jti": "t1",
        "client_id": "eport-cli",
        "scope": "declaration:read",
    }
    token = jwt.encode(claims, key, algorithm="ES256", headers={"typ": "at+jwt", "kid": "k1"})
    with serve_wsgi(app) as url:
        v = TokenVerifier(
            claims["iss"], CUSTOMS, url + "/jwks.json", cache_ttl=0.2, min_refetch_interval=0.2
        )
        with v:
            v.verify(token)
            up.clear()
            time.sleep(0.3)
            assert v.verify(token).subject == "ent:x"  # stale but usable
            assert v.keys.fetches == 2  # the failed refresh was tried once
            with TokenVerifier(iss, CUSTOMS, url + "/jwks.json") as cold:
                with pytest.raises(KeySetUnavailable) as exc:
                    cold.verify(token)
                assert exc.value.status == 503
            nested = TokenVerifier(iss, CUSTOMS, url + "/nested.json")
            with nested, pytest.raises(KeySetUnavailable, match="did not answer JSON"):
                nested.verify(token)
        flask_app = Flask("svc")
        init_app(flask_app, TokenVerifier(iss, CUSTOMS, url + "/jwks.json"))
        flask_app.get("/r")(require_token("declaration:read")(lambda: "ok"))
        r = flask_app.test_client().get("/r", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503 and r.headers["Retry-After"]
        flask_app.extensions["eport.token_verifier"].close()


def test_an_issuer_at_a_bare_host_is_discovered_by_its_openid_configuration() -> None:
    """An issuer without a path (``https://idp.example``) that publishes only OpenID
    Connect Discovery's ``/.well-known/openid-configuration``: the SDK skipped that
    location for a bare host and found no metadata."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    app = Flask("bare-issuer")
    issuer: dict[str, str] = {}

    @app.get("/.well-known/openid-configuration")
    def openid() -> Any:
        return {"issuer": issuer["url"], "jwks_uri": issuer["url"] + "/keys"}

    @app.get("/keys")
    def keys() -> Any:
        return {"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}

    with serve_wsgi(app) as url:
        issuer["url"] = url
        now = int(time.time())
        claims = {"iss": url, "sub": "ent:x", "aud": CUSTOMS, "exp": now + 300, "iat": now}
        claims |= {"jti": "t1", "client_id": "eport-cli", "scope": "declaration:read"}
        token = jwt.encode(claims, key, algorithm="ES256", headers={"typ": "at+jwt", "kid": "k1"})
        with TokenVerifier(url, CUSTOMS) as v:
            assert v.verify(token).subject == "ent:x"
