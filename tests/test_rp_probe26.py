"""A relying party's probe (26) of the service SDK, the sample service and the gateway.

* F1: a good token without ``uscc`` (an OpenID Connect code flow's with ``scope=openid``,
  an agency officer's, a service's) passed the sample service, which keys declarations by
  ``claims.uscc``: every such caller shared one ``None`` enterprise. The SDK has
  ``Claims.require_enterprise()`` and ``require_token(..., enterprise=True)`` (403
  ``insufficient_scope``, :class:`EnterpriseRequired`), and the sample uses them.
* F2: the sample service without its certificate checked ``verifier=online`` routes
  offline without a word: it warns at start, naming the routes and the settings.
* F3: an :class:`Introspector` without ``audience=`` checks no answer's audience: its
  constructor says so in a warning.
* F6: the gateway's 401 (``GET /auth/validate``) said ``invalid_token`` and not why: it
  has a fixed ``error_description`` per reason, nothing of the token.
* F7: a key file the :class:`Introspector` cannot decrypt raised cryptography's
  ``TypeError``/``ValueError``: :class:`ServiceKeyUnusable` names the file and the
  argument to fix.
* F8: a section sign in the SDK's texts became ``?`` in ``WWW-Authenticate``.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Flask

from authsvc.client import (
    Claims,
    EnterpriseRequired,
    InsufficientScope,
    IntrospectionFailed,
    Introspector,
    InvalidToken,
    ServiceKeyUnusable,
    TokenError,
    TokenVerifier,
    init_app,
    require_token,
)
from authsvc.client.claims import NO_ENTERPRISE
from authsvc.client.flask_ext import challenge
from authsvc.fastpath import (
    CERTIFICATE_REFUSED,
    EXPIRED,
    NO_CERTIFICATE,
    NOT_OURS,
    OTHER_AUDIENCE,
    OTHER_CERTIFICATE,
    REVOKED,
    SESSION_ENDED,
    gateway_answer,
)
from authsvc.proxy import TrustedProxies
from authsvc.tokens import InvalidToken as ServiceInvalidToken
from tests.conftest import Server
from tests.helpers import self_signed
from tests.test_sdk import CUSTOMS, MANIFEST, signing_key
from tests.test_sdk_probe24 import ISSUER, LocalIssuer, serving_local_issuer

USCC = "91350100M000100Y43"
OTHER_USCC = "91350200M000200Y40"
HOST = "customs-declaration.eport.example"


# -- a local issuer: a JWKS served on loopback, tokens of an operator signed with its key


@pytest.fixture
def local_issuer() -> Iterator[LocalIssuer]:
    operator = {
        "sub": f"op:{USCC}:E1024",
        "scope": "declaration:read declaration:submit",
        "subject_class": "operator",
        "uscc": USCC,
        "operator_id": "E1024",
    }
    with serving_local_issuer(**operator) as issuer:
        yield issuer


def sample_service(local: LocalIssuer, **config: Any) -> Flask:
    from examples.customs_declaration.app import create_app

    cfg = {"EPORT_ISSUER": ISSUER, "EPORT_AUDIENCE": CUSTOMS, "EPORT_JWKS_URL": local.jwks_url}
    return create_app({**cfg, **config})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- F1: a token that names no enterprise -------------------------------------------------


def test_claims_require_an_enterprise() -> None:
    base = {"iss": ISSUER, "aud": CUSTOMS, "exp": 2, "iat": 1, "jti": "j", "scope": ""}
    op = Claims(
        subject=f"op:{USCC}:E1", issuer=ISSUER, audience=CUSTOMS, expires_at=2, issued_at=1,
        token_id="j", scopes=frozenset(), uscc=USCC, raw=base,
    )  # fmt: skip
    assert op.require_enterprise() == USCC
    for uscc in (None, ""):
        officer = Claims(
            subject="agency:customs:Wang", issuer=ISSUER, audience=CUSTOMS, expires_at=2,
            issued_at=1, token_id="j", scopes=frozenset(), uscc=uscc, raw=base,
        )  # fmt: skip
        with pytest.raises(EnterpriseRequired) as exc:
            officer.require_enterprise()
        err = exc.value
        assert isinstance(err, InsufficientScope) and err.status == 403
        assert err.error == "insufficient_scope" and err.required == ()
        assert err.subject == "agency:customs:Wang" and "uscc" in err.description


def test_the_sample_service_refuses_a_token_without_uscc(local_issuer: LocalIssuer) -> None:
    """The code flow's access token with ``scope=openid`` carries ``sub`` but no
    ``uscc``, ``operator_id`` or ``subject_class`` (authsvc.oidc.CLAIMS_BY_SCOPE, pinned by
    test_authz_probe16.py): the sample refused neither the read nor the submission, and
    kept them under the enterprise ``None`` every such caller shared."""
    client = sample_service(local_issuer).test_client()
    openid_only = local_issuer.token(
        client_id="sample-a", uscc=None, operator_id=None, subject_class=None
    )
    officer = local_issuer.token(
        sub="agency:customs:Wang", subject_class="agency", agency_id="customs", uscc=None,
        operator_id=None,
    )  # fmt: skip
    for token in (openid_only, officer):
        for r in (
            client.get("/declarations", headers=bearer(token)),
            client.post("/declarations", json={"goods": "tea"}, headers=bearer(token)),
        ):
            assert r.status_code == 403, r.data
            assert r.headers["WWW-Authenticate"] == (
                f'Bearer realm="{CUSTOMS}", error="insufficient_scope", '
                f'error_description="{NO_ENTERPRISE}"'
            )
            assert r.json == {"error": "insufficient_scope", "error_description": NO_ENTERPRISE}
    # Tokens that name an enterprise work as before, each enterprise seeing its own.
    mine = local_issuer.token()
    posted = client.post("/declarations", json={"goods": "tea"}, headers=bearer(mine))
    assert posted.status_code == 201 and posted.json["uscc"] == USCC
    listed = client.get("/declarations", headers=bearer(mine)).json
    assert [d["goods"] for d in listed["declarations"]] == ["tea"]
    other = local_issuer.token(sub=f"ent:{OTHER_USCC}", uscc=OTHER_USCC, operator_id=None)
    assert client.get("/declarations", headers=bearer(other)).json["declarations"] == []


def test_require_token_takes_enterprise(local_issuer: LocalIssuer) -> None:
    """Off by default: a route that does not keep data per enterprise is unchanged."""
    app = Flask("svc")
    init_app(app, TokenVerifier(ISSUER, CUSTOMS, local_issuer.jwks_url))
    app.get("/any", endpoint="any")(require_token("declaration:read")(lambda: "ok"))
    own = require_token("declaration:read", enterprise=True)(lambda: "ok")
    app.get("/own", endpoint="own")(own)
    client = app.test_client()
    token = local_issuer.token(uscc=None)
    assert client.get("/any", headers=bearer(token)).status_code == 200
    assert client.get("/own", headers=bearer(token)).status_code == 403
    # the scope is judged first: a token without it is refused for the scope
    unscoped = local_issuer.token(uscc=None, scope="declaration:draft")
    r = client.get("/own", headers=bearer(unscoped))
    assert r.status_code == 403 and 'scope="declaration:read"' in r.headers["WWW-Authenticate"]


# -- F2: the sample service's offline fallback is said --------------------------------------


def test_the_sample_says_which_routes_fall_back_to_offline(
    local_issuer: LocalIssuer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        sample_service(local_issuer)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "customs_declaration"]
    assert "POST /declarations is checked OFFLINE" in line
    assert "EPORT_SERVICE_CERT" in line and "after a logout" in line
    # With the service's credential it introspects, and says nothing.
    cert, key = self_signed(HOST, x509.DNSName(HOST))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(pem_key(key, None))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        app = sample_service(
            local_issuer,
            EPORT_SERVER="http://127.0.0.1:9",
            EPORT_SERVICE_CERT=str(tmp_path / "cert.pem"),
            EPORT_SERVICE_KEY=str(tmp_path / "key.pem"),
        )
    # (nor does its Introspector, F3: the sample gives it the service's audience)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    assert "submit_declaration" in app.view_functions


# -- F3: an introspector without an audience --------------------------------------------------


def test_an_introspector_without_audience_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    cert, key = self_signed(HOST, x509.DNSName(HOST))
    with (
        caplog.at_level(logging.WARNING, logger="eport.client"),
        Introspector("http://127.0.0.1:9", cert, key, timeout=0.5) as intro,
    ):
        for _ in range(3):
            with pytest.raises(IntrospectionFailed):
                intro.verify("a.b.c")
    said = [r.getMessage() for r in caplog.records if "no audience= given" in r.getMessage()]
    assert len(said) == 1, said
    assert "http://127.0.0.1:9/auth/introspect" in said[0] and f"https://{HOST}" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="eport.client"):
        Introspector("http://127.0.0.1:9", cert, key, audience=CUSTOMS).close()
    assert not [r for r in caplog.records if "audience" in r.getMessage()]


# -- F6: the gateway's 401 says why ------------------------------------------------------------


def gateway(
    check: Any, *, require_certificate: bool = False, remote: str = "127.0.0.1", **headers: str
) -> Any:
    class Tokens:
        def check_access_token(self, token: str, audience: str) -> dict[str, Any]:
            out: dict[str, Any] = check(token, audience)
            return out

    service = SimpleNamespace(audience=CUSTOMS, require_certificate=require_certificate)
    access = SimpleNamespace(service=lambda _id: service)
    sent = {"Authorization": "Bearer a.b.c", "X-Eport-Service": "customs-declaration", **headers}
    return gateway_answer(Tokens(), access, sent, remote, TrustedProxies(["127.0.0.1/32"]))


def challenge_of(answer: Any) -> str:
    return str(dict(answer.headers)["WWW-Authenticate"])


def described(why: str) -> str:
    return f'Bearer error="invalid_token", error_description="{why}"'


def test_the_gateway_says_why_a_token_is_refused() -> None:
    """One fixed text per reason: never the reason's own words (a PyJWT message, a
    session's end reason) nor anything of the token."""

    def refusing(detail: str) -> Any:
        def check(_token: str, _aud: str) -> dict[str, Any]:
            raise ServiceInvalidToken(detail)

        return check

    for detail, why in (
        ("token expired", EXPIRED),
        ("the token was revoked", REVOKED),
        ("the session has ended", SESSION_ENDED),
        ("the session ended: certificate revoked", SESSION_ENDED),
        ("token rejected: Audience doesn't match", OTHER_AUDIENCE),
        ("malformed token: not a compact JWS: 'a.b.c\"'", NOT_OURS),
        ("token rejected: Signature verification failed", NOT_OURS),
        ("the token's uscc is not its session's", NOT_OURS),
    ):
        answer = gateway(refusing(detail))
        assert answer.status == 401 and challenge_of(answer) == described(why), detail
    # The certificate binding (RFC 8705): a token bound to another certificate, a service
    # that requires the certificate and got none, a certificate header not believed.
    cert, _key = self_signed("op", x509.DNSName("op.example"))
    der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    def good(_token: str, _aud: str) -> dict[str, Any]:
        return {"sub": "op:x", "scope": "", "cnf": {"x5t#S256": "another"}}

    assert challenge_of(gateway(good, **{"Client-Cert": f":{der}:"})) == described(
        OTHER_CERTIFICATE
    )
    assert challenge_of(gateway(good, require_certificate=True)) == described(NO_CERTIFICATE)
    refused = gateway(good, remote="192.0.2.1", **{"Client-Cert": f":{der}:"})
    assert challenge_of(refused) == described(CERTIFICATE_REFUSED)
    # Every text may stand in a quoted header value (RFC 6750 §3).
    for why in (EXPIRED, REVOKED, SESSION_ENDED, OTHER_AUDIENCE, NOT_OURS, OTHER_CERTIFICATE):
        assert why.isascii() and '"' not in why and "\\" not in why


def test_the_real_gateway_says_why(sqlite_server: Server) -> None:
    """Through the real server, its fast path (GET) and its Flask view (HEAD) alike."""
    kid, key = signing_key(sqlite_server)
    now = int(time.time())

    def minted(**changes: Any) -> str:
        claims = {
            "iss": sqlite_server.url + "/auth", "sub": f"op:{USCC}:E1", "aud": CUSTOMS,
            "exp": now + 300, "iat": now, "jti": f"j{time.monotonic_ns()}",
            "client_id": "eport-cli", "scope": "declaration:read", "sid": "no-such-session",
            "cnf": {"x5t#S256": "x"}, **changes,
        }  # fmt: skip
        return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "at+jwt", "kid": kid})

    for token, why in (
        ("garbage", NOT_OURS),
        (minted(iat=now - 900, exp=now - 300), EXPIRED),
        (minted(), SESSION_ENDED),
        (minted(aud=MANIFEST), OTHER_AUDIENCE),
    ):
        headers = {**bearer(token), "X-Eport-Service": "customs-declaration"}
        for method in ("GET", "HEAD"):
            r = requests.request(
                method, sqlite_server.url + "/auth/validate", headers=headers, timeout=10
            )
            assert r.status_code == 401, (method, why)
            assert r.headers["WWW-Authenticate"] == described(why), (method, why)
    # No token at all: the bare challenge, as before (RFC 6750 §3.1).
    r = requests.get(
        sqlite_server.url + "/auth/validate",
        headers={"X-Eport-Service": "customs-declaration"},
        timeout=10,
    )
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="eport"'


# -- F7: a key file the introspector cannot use -----------------------------------------------


def pem_key(key: Any, passphrase: bytes | None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


def test_a_key_file_that_cannot_be_used_is_named(tmp_path: Path) -> None:
    cert, key = self_signed(HOST, x509.DNSName(HOST))
    cert_file = tmp_path / "cert.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    locked, plain, junk = tmp_path / "key.pem", tmp_path / "plain.pem", tmp_path / "junk.pem"
    locked.write_bytes(pem_key(key, b"right-passphrase"))
    plain.write_bytes(pem_key(key, None))
    junk.write_text("not a key\n")
    for key_file, passphrase, said in (
        (locked, None, "is encrypted and no passphrase was given: pass its passphrase as"),
        (locked, b"wrong-passphrase", "the passphrase does not decrypt the service key"),
        (locked, b"right-passphrase\n", "a newline read from a file with it is part of it"),
        (plain, b"right-passphrase", "is not encrypted, but a passphrase was given"),
        (junk, None, "holds no PEM private key"),
        (tmp_path / "missing.pem", None, "cannot read the service key"),
    ):
        with pytest.raises(ServiceKeyUnusable) as exc:
            Introspector("http://127.0.0.1:9", cert_file, key_file, passphrase=passphrase)
        err = exc.value
        assert said in err.description and str(key_file) in err.description, err.description
        assert err.path == str(key_file) and isinstance(err, IntrospectionFailed)
        assert isinstance(err, TokenError)
    with Introspector(
        "http://127.0.0.1:9", cert_file, locked, passphrase=b"right-passphrase", audience=CUSTOMS
    ) as intro:
        assert intro.audience == CUSTOMS


# -- F8: a section sign in a WWW-Authenticate header ------------------------------------------


def test_a_section_sign_reads_as_a_word_in_the_header(local_issuer: LocalIssuer) -> None:
    app = Flask("svc")
    init_app(app, TokenVerifier(ISSUER, CUSTOMS, local_issuer.jwks_url))
    app.get("/r")(require_token("declaration:read")(lambda: "ok"))
    untyped = jwt.encode(
        {"iss": ISSUER}, local_issuer.key, algorithm="ES256", headers={"typ": "JWT", "kid": "k1"}
    )
    r = app.test_client().get("/r", headers=bearer(untyped))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="{CUSTOMS}", error="invalid_token", '
        'error_description="the token\'s typ must be at+jwt (RFC 9068 section 4)"'
    )
    # a service's own error text, too; other characters outside the set stay "?"
    with app.test_request_context():
        header = challenge(InvalidToken("see RFC 6750 §3 and \u00e9"), "r").headers
    assert header["WWW-Authenticate"].endswith('error_description="see RFC 6750 section 3 and ?"')
