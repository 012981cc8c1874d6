"""The service SDK after its probe (24): what a relying party's callers can make of it.

* a token holding a lone surrogate (what ``json.loads`` makes of ``"\\ud800"`` in a
  request body) raised UnicodeEncodeError out of ``TokenVerifier.verify`` (inside PyJWT)
  and ``Introspector.introspect`` (inside ``urlencode``), not :class:`InvalidToken`;
* a token without ``client_id`` was accepted offline (RFC 9068 §2.2 requires it);
* ``Introspector.verify`` took no ``client_certificate=``, so a service checking tokens
  online could not hold them to the client's certificate (RFC 8705 §3);
* ``require_token`` with an :class:`Introspector` challenged without ``realm``;
* a 503 told the service's caller the internal JWKS or introspection URL, host, port and
  urllib3's words, and a 401 PyJWT's ("Invalid crypto padding");
* every 401/403 of the introspection endpoint got the hint "check its certificate and
  that it is a registered service", even when the token service said the clock was off;
* the JWKS and metadata fetch followed redirects to other origins, and read a whole
  5 MiB body before applying its 256 KiB limit.
"""

from __future__ import annotations

import datetime
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, Response

from authsvc.client import (
    CertificateMismatch,
    InsufficientScope,
    IntrospectionFailed,
    Introspector,
    InvalidToken,
    KeySetUnavailable,
    TokenVerifier,
    ValidationUnavailable,
    init_app,
    require_token,
)
from authsvc.client.keyset import MAX_DOCUMENT_BYTES
from tests.conftest import Server
from tests.helpers import cert_of, enroll_enterprise, enroll_operator, enroll_service, self_signed
from tests.test_sdk import (
    CUSTOMS,
    MANIFEST,
    PASSPHRASE,
    CountingSession,
    login,
    serve_wsgi,
)

ISSUER = "https://eport.example/auth"
GENERIC_503 = "the token could not be checked now; try again"
SETUP_HINT = "check its certificate and that it is a registered service"


# -- a local issuer: its key, its JWKS, tokens it signs ----------------------------------


@dataclass
class LocalIssuer:
    """A JWKS served by a local WSGI server, the key its tokens are signed with, and the
    claims its tokens carry unless a test changes them (``defaults``)."""

    url: str
    key: ec.EllipticCurvePrivateKey
    defaults: dict[str, Any] = field(default_factory=dict)

    def token(self, **changes: Any) -> str:
        """A token as the token service mints it; a change of None drops the claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "ent:x",
            "aud": CUSTOMS,
            "exp": now + 300,
            "iat": now,
            "jti": f"t{time.monotonic_ns()}",
            "client_id": "eport-cli",
            "scope": "declaration:read",
            **self.defaults,
        }
        claims = {k: v for k, v in {**claims, **changes}.items() if v is not None}
        return jwt.encode(
            claims, self.key, algorithm="ES256", headers={"typ": "at+jwt", "kid": "k1"}
        )

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks.json"

    def verifier(self, **kw: Any) -> TokenVerifier:
        return TokenVerifier(ISSUER, CUSTOMS, self.jwks_url, **kw)


@contextmanager
def serving_local_issuer(**defaults: Any) -> Iterator[LocalIssuer]:
    """A :class:`LocalIssuer` whose tokens carry ``defaults`` (claims), its JWKS served
    on loopback while the block runs."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    app = Flask("local-issuer")

    @app.get("/jwks.json")
    def jwks() -> Any:
        return {"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}

    with serve_wsgi(app) as url:
        yield LocalIssuer(url, key, defaults)


@pytest.fixture
def local_issuer() -> Iterator[LocalIssuer]:
    with serving_local_issuer() as issuer:
        yield issuer


def closed_port_url() -> str:
    """An http:// URL on a loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def service_credential(
    host: str = "customs-declaration.eport.example",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed stand-in for a service-tls certificate (for calls that never reach
    a token service: nothing trusts it)."""
    cert, key = self_signed(host, x509.DNSName(host))
    return cert, key


def flask_service(verifier: Any, **kw: Any) -> Flask:
    app = Flask("svc")
    init_app(app, verifier)
    app.get("/r")(require_token("declaration:read", **kw)(lambda: "ok"))
    return app


# -- 1. a lone surrogate --------------------------------------------------------------------


def test_a_lone_surrogate_is_an_invalid_token(local_issuer: LocalIssuer) -> None:
    token = local_issuer.token()
    h, p, s = token.split(".")
    with local_issuer.verifier() as v:
        assert v.verify(token).subject == "ent:x"
        # in the payload it reached PyJWT, which raised UnicodeEncodeError
        for bad in (f"{h}.{p}\ud800.{s}", f"{h}.{p}.{s}\ud800", f"{h}\ud800.{p}.{s}"):
            with pytest.raises(InvalidToken, match="not a compact JWS"):
                v.verify(bad)
        assert v.verify(token).subject == "ent:x"

    cert, key = service_credential()
    http = CountingSession()
    with Introspector(closed_port_url(), cert, key, http=http) as intro:
        with pytest.raises(InvalidToken, match="not a compact JWS"):
            intro.introspect(f"{h}.{p}\ud800.{s}")  # was UnicodeEncodeError from urlencode
        with pytest.raises(InvalidToken):
            intro.verify("\ud800")
    assert http.paths == []  # refused before anything was sent
    http.close()


# -- 2. client_id is required ------------------------------------------------------------


def test_a_token_without_client_id_is_refused(local_issuer: LocalIssuer) -> None:
    """RFC 9068 §2.2: client_id is REQUIRED, as iss, exp, aud, sub, iat and jti are. The
    token service's tokens carry it (``test_sdk.py`` checks ``eport-cli``)."""
    with local_issuer.verifier() as v:
        assert v.verify(local_issuer.token()).client_id == "eport-cli"
        with pytest.raises(InvalidToken, match="lacks the claim client_id"):
            v.verify(local_issuer.token(client_id=None))
        with pytest.raises(InvalidToken, match="client_id must be a non-empty string"):
            v.verify(local_issuer.token(client_id=""))
        with pytest.raises(InvalidToken, match="client_id must be a string"):
            v.verify(local_issuer.token(client_id=7))


# -- 5. what a service's callers are told -----------------------------------------------


def test_an_unreachable_issuer_is_not_named_to_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The 503 says "try again" and nothing of the internal address; the detail stays on
    the exception and goes to the ``eport.client`` log at warning level."""
    down = closed_port_url()
    port = down.rsplit(":", 1)[1]
    token = jwt.encode(
        {"sub": "x"},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"typ": "at+jwt", "kid": "k1"},
    )
    cert, key = service_credential()
    verifiers: dict[str, Callable[[], TokenVerifier | Introspector]] = {
        "JWKS": lambda: TokenVerifier(ISSUER, CUSTOMS, down + "/jwks.json"),
        "issuer metadata": lambda: TokenVerifier(down + "/auth", CUSTOMS),
        "introspection": lambda: Introspector(down, cert, key),
    }
    for what, make in verifiers.items():
        with make() as verifier, pytest.raises(ValidationUnavailable) as exc:
            verifier.verify(token)
        assert port in exc.value.description, what  # the detail stays on the exception
        caplog.clear()
        with make() as verifier, caplog.at_level(logging.WARNING, logger="eport.client"):
            r = (
                flask_service(verifier)
                .test_client()
                .get("/r", headers={"Authorization": f"Bearer {token}"})
            )
        assert r.status_code == 503 and r.headers["Retry-After"], what
        assert r.json == {"error": "temporarily_unavailable", "error_description": GENERIC_503}
        said = r.get_data(as_text=True)
        assert port not in said and "127.0.0.1" not in said and "WWW-Authenticate" not in r.headers
        logged = [
            rec.getMessage()
            for rec in caplog.records
            if rec.name == "eport.client" and rec.levelno == logging.WARNING
        ]
        assert any(port in m for m in logged), (what, logged)


def test_a_malformed_token_is_said_without_pyjwt_words(local_issuer: LocalIssuer) -> None:
    h, p, _ = local_issuer.token().split(".")
    padding = f"{h}.{p}.A"  # PyJWT: "Invalid crypto padding"
    with local_issuer.verifier() as v:
        with pytest.raises(InvalidToken) as exc:
            v.verify(padding)
        assert exc.value.description == "the token is malformed"
        assert isinstance(exc.value.__cause__, jwt.DecodeError)  # the detail, for a debugger
        r = flask_service(v).test_client().get("/r", headers={"Authorization": f"Bearer {padding}"})
    assert r.status_code == 401
    assert r.json == {"error": "invalid_token", "error_description": "the token is malformed"}
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="{CUSTOMS}", error="invalid_token", '
        'error_description="the token is malformed"'
    )


# -- 6. the set-up hint ----------------------------------------------------------------------


def test_the_setup_hint_is_given_only_when_the_refusal_says_no_reason() -> None:
    """A refusal that says why (a wrong clock, an unregistered service) is quoted as it
    is; the guess "check its certificate" is added only to one that gives no reason (a
    TLS proxy's error page)."""
    skew = (
        "signed request issued in the future (iat 2026-01-01T00:10:00Z, server time "
        "2026-01-01T00:00:00Z): is the client's clock right? (leeway 30 s)"
    )
    app = Flask("refusing-endpoint")

    @app.post("/clock")
    def clock() -> Any:
        return {"error": "invalid_client", "error_description": skew}, 401

    @app.post("/blank")
    def blank() -> Any:
        return {"error": "invalid_client", "error_description": " "}, 401

    @app.post("/proxy")
    def proxy() -> Any:
        return Response("<html>403 Forbidden</html>", status=403, mimetype="text/html")

    cert, key = service_credential()
    with serve_wsgi(app) as url:
        said = {}
        for path in ("/clock", "/blank", "/proxy"):
            with (
                Introspector(url, cert, key, endpoint=url + path) as intro,
                pytest.raises(IntrospectionFailed) as exc,
            ):
                intro.introspect("a.b.c")
            said[path] = exc.value.description
    assert said["/clock"] == f"introspection answered HTTP 401: {skew}"
    assert SETUP_HINT in said["/blank"] and "HTTP 401" in said["/blank"]
    assert SETUP_HINT in said["/proxy"] and "HTTP 403" in said["/proxy"]


# -- 7. the JWKS and metadata fetch ------------------------------------------------------


def test_keys_are_not_fetched_through_a_redirect(local_issuer: LocalIssuer) -> None:
    """A JWKS URL (or a metadata location) that redirects elsewhere: the SDK took the
    keys at the other end, so whoever controls the redirect chose which tokens are good."""
    app = Flask("redirecting")
    issuer: dict[str, str] = {}

    @app.get("/jwks.json")
    def moved() -> Any:
        return Response(status=302, headers={"Location": local_issuer.url + "/jwks.json"})

    @app.get("/.well-known/openid-configuration")
    def metadata_moved() -> Any:
        return Response(status=301, headers={"Location": local_issuer.url + "/meta"})

    token = local_issuer.token()
    with serve_wsgi(app) as url:
        issuer["url"] = url
        with (
            TokenVerifier(ISSUER, CUSTOMS, url + "/jwks.json") as v,
            pytest.raises(KeySetUnavailable) as exc,
        ):
            v.verify(token)  # signed by the redirect target's key: was accepted
        assert f"{url}/jwks.json answered HTTP 302, a redirect to " in exc.value.description
        assert "redirects are not followed" in exc.value.description
        with TokenVerifier(url, CUSTOMS) as v, pytest.raises(KeySetUnavailable) as exc:
            v.verify(token)
        assert "HTTP 301, a redirect to" in exc.value.description


def test_a_huge_key_document_is_not_downloaded() -> None:
    """The 256 KiB limit stops the reading: the body is streamed and counted. The server
    sends 1 MiB, then holds the rest back until the SDK has answered; reading it all (as
    before) waited for the rest until the read timeout."""
    release = threading.Event()
    app = Flask("huge")

    def body() -> Iterator[bytes]:
        yield b'{"keys": [], "padding": "'
        for _ in range(16):
            yield b"a" * 65536
        release.wait(10)  # the other 4 MiB only once the SDK has given up
        for _ in range(64):
            yield b"a" * 65536
        yield b'"}'

    @app.get("/chunked.json")
    def chunked() -> Any:
        return Response(body(), mimetype="application/json")

    @app.get("/declared.json")
    def declared() -> Any:
        headers = {"Content-Length": str(5 * 1024 * 1024 + 27)}
        return Response(body(), mimetype="application/json", headers=headers)

    with serve_wsgi(app) as url:
        for path in ("/chunked.json", "/declared.json"):
            release.clear()
            start = time.monotonic()
            try:
                with (
                    TokenVerifier(ISSUER, CUSTOMS, url + path, timeout=3) as v,
                    pytest.raises(KeySetUnavailable) as exc,
                ):
                    v.keys.refresh()
            finally:
                release.set()
            took = time.monotonic() - start
            assert f"larger than {MAX_DOCUMENT_BYTES} bytes" in exc.value.description, path
            assert took < 2, (path, took)


# -- 3 and 4. introspection: the certificate binding and the realm ------------------------


@dataclass
class World:
    server: Server
    ent: Path
    reader: Path
    service: Path
    token: str


@pytest.fixture(scope="module")
def world(sqlite_server: Server, tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("sdk-probe24")
    ent = enroll_enterprise(sqlite_server, tmp)
    reader = enroll_operator(sqlite_server, ent, tmp, "reader1", "data-entry")
    token = login(sqlite_server, reader, tmp).token()
    return World(sqlite_server, ent, reader, enroll_service(sqlite_server, tmp), token)


def introspector(world: World, **kw: Any) -> Introspector:
    svc = world.service
    return Introspector(
        world.server.url, svc / "cert.pem", svc / "key.pem", passphrase=PASSPHRASE, **kw
    )


def test_introspection_holds_the_token_to_the_client_certificate(world: World) -> None:
    """RFC 8705 §3 online as offline: ``verify(..., client_certificate=)`` compares the
    answer's ``cnf.x5t#S256`` with the certificate the client presented."""
    reader, ent = cert_of(world.reader), cert_of(world.ent)
    with introspector(world) as intro:
        claims = intro.verify(world.token, client_certificate=reader)
        assert claims.subject.endswith(":reader1")
        intro.verify(world.token, required_scopes=["declaration:read"], client_certificate=reader)
        with pytest.raises(CertificateMismatch, match="another certificate"):
            intro.verify(world.token, client_certificate=ent)
        # the scopes are judged first, as TokenVerifier.verify does
        with pytest.raises(InsufficientScope):
            intro.verify(world.token, required_scopes="declaration:submit", client_certificate=ent)

    # require_token passes the request's certificate to the introspector's verify, as to a
    # TokenVerifier's; a request without one is refused before an introspection is spent
    # (a signed call and a jti written at the token service), not after.
    http = CountingSession()
    presented: dict[str, x509.Certificate | None] = {}
    app = Flask("mtls-svc")
    auth = {"Authorization": f"Bearer {world.token}"}
    answers, calls = {}, {}
    with introspector(world, http=http) as intro:
        app.get("/r")(
            require_token(
                "declaration:read", verifier=intro, client_certificate=lambda: presented["cert"]
            )(lambda: "ok")
        )
        for who, cert in (("reader", reader), ("enterprise", ent), ("nobody", None)):
            presented["cert"] = cert
            before = http.count("/introspect")
            answers[who] = app.test_client().get("/r", headers=auth)
            calls[who] = http.count("/introspect") - before
    http.close()
    assert answers["reader"].status_code == 200
    for who in ("enterprise", "nobody"):
        assert answers[who].status_code == 401, who
        assert 'error="invalid_token"' in answers[who].headers["WWW-Authenticate"]
    assert calls == {"reader": 1, "enterprise": 1, "nobody": 0}


def test_an_introspecting_service_challenges_with_its_realm(world: World) -> None:
    """RFC 6750 §3: ``realm="<audience>"`` for an :class:`Introspector` as for a
    :class:`TokenVerifier`: the one it is given, else ``https://`` and its certificate's
    DNS name (the registry's convention)."""
    with introspector(world) as intro, introspector(world, audience=MANIFEST) as named:
        assert intro.audience == CUSTOMS and named.audience == MANIFEST
        for v, realm in ((intro, CUSTOMS), (named, MANIFEST)):
            client = flask_service(v).test_client()
            none = client.get("/r")
            assert none.status_code == 401
            assert none.headers["WWW-Authenticate"] == (
                f'Bearer realm="{realm}", scope="declaration:read"'
            )
            bad = client.get("/r", headers={"Authorization": "Bearer garbage"})
            assert bad.headers["WWW-Authenticate"].startswith(
                f'Bearer realm="{realm}", error="invalid_token"'
            )
        # an audience given is checked: the token service judged this token for customs
        with pytest.raises(IntrospectionFailed, match="not this service's audience"):
            named.verify(world.token)
        with introspector(world, audience=CUSTOMS) as right:
            assert right.verify(world.token).audience == CUSTOMS


def test_a_wrong_clock_is_not_called_a_wrong_certificate(world: World) -> None:
    """The token service refuses a signed request dated 10 minutes ahead and says the
    clock may be wrong; the SDK quotes that, without its guess about the certificate."""
    ahead = datetime.timedelta(minutes=10)
    with (
        introspector(world, clock=lambda: datetime.datetime.now(datetime.UTC) + ahead) as intro,
        pytest.raises(IntrospectionFailed) as exc,
    ):
        intro.verify(world.token)
    assert "HTTP 401" in exc.value.description and "clock" in exc.value.description
    assert SETUP_HINT not in exc.value.description and "retrying" not in exc.value.description
    # an operator's certificate is no service credential: the token service says so
    reader = world.reader
    with (
        Introspector(
            world.server.url, reader / "cert.pem", reader / "key.pem", passphrase=PASSPHRASE
        ) as wrong,
        pytest.raises(IntrospectionFailed, match=r"HTTP 401: .*registered e-port service"),
    ):
        wrong.introspect(world.token)


def test_a_real_token_verifies_with_client_id(world: World) -> None:
    """What the token service mints still verifies with client_id required."""
    with TokenVerifier(world.server.url + "/auth", CUSTOMS) as v:
        assert v.verify(world.token).client_id == "eport-cli"
