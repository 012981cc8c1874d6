"""The token service end to end, and the attacks it must refuse (each test fails if the
attack works). Real server (gunicorn, CA and token service mounted), real CLI."""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import create_engine, select

from authsvc.models import SigningKeyRow
from authsvc.principal import x5t_s256
from tests.conftest import Server
from tests.helpers import (
    cert_of,
    creds,
    dev_issuer_key,
    enroll_enterprise,
    fresh_uscc,
    jrun,
    serial_clone,
    serial_of,
)

SERVICE = "customs-declaration"


@pytest.fixture(scope="module")
def world(sqlite_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An enterprise and an operator with the declaration role, logged in."""
    tmp = tmp_path_factory.mktemp("auth")
    srv = sqlite_server
    ent = enroll_enterprise(srv, tmp, "Token Flow Co.")
    grant = jrun(srv, "operator", "add", "--name", "Chen Jie", "--id", "T100", *creds(ent))
    op = tmp / "op"
    jrun(
        srv, "enroll", "--code", grant["enrollment_code"], "--profile", "operator", "--out", str(op)
    )
    jrun(srv, "roles", "grant", "--operator", "T100", "--role", "declaration", *creds(ent))
    return {"ent": ent, "op": op, "tmp": tmp}


def test_a_refused_role_grant_says_why(sqlite_server: Server, world: dict[str, Any]) -> None:
    """The token service's OAuth-style error (RFC 6749 §5.2: error_description) reaches
    the user in one line, not only its HTTP status."""
    res = sqlite_server.eport(
        "roles",
        "grant",
        "--operator",
        "T100",
        "--role",
        "declaratoin",
        *creds(world["ent"]),
        check=False,
    )
    assert res.returncode == 1
    assert res.stderr.startswith("eport: error: unknown role 'declaratoin' (known: "), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def cli(srv: Server, cfg: Path, *args: str, check: bool = True) -> Any:
    return srv.eport(*args, check=check, EPORT_CONFIG_DIR=str(cfg))


def login(srv: Server, who: Path, cfg: Path) -> dict[str, Any]:
    return json.loads(cli(srv, cfg, "login", *creds(who), "--json").stdout)


def token_for(srv: Server, cfg: Path, service: str = SERVICE) -> str:
    return str(cli(srv, cfg, "token", "--service", service).stdout.strip())


def validate(
    srv: Server, token: str, service: str = SERVICE, scope: str | None = None
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", "X-Eport-Service": service}
    if scope:
        headers["X-Eport-Scope"] = scope
    return requests.get(srv.url + "/auth/validate", headers=headers, timeout=10)


def test_login_once_tokens_for_every_service(
    sqlite_server: Server, world: dict[str, Any], tmp_path: Path
) -> None:
    srv = sqlite_server
    info = login(srv, world["op"], tmp_path)
    session_file = Path(info["file"])
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    # The key file is not needed any more: move it away.
    key = world["op"] / "key.pem"
    hidden = key.with_suffix(".away")
    key.rename(hidden)
    try:
        tok = token_for(srv, tmp_path)
        claims = jwt.decode(tok, options={"verify_signature": False})
        header = jwt.get_unverified_header(tok)
        assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
        assert claims["sub"] == "op:" + claims["uscc"] + ":T100" and claims["operator_id"] == "T100"
        assert claims["aud"].startswith("https://customs-declaration")
        assert claims["exp"] - claims["iat"] == 600
        cert = x509.load_pem_x509_certificate((world["op"] / "cert.pem").read_bytes())
        assert claims["cnf"] == {"x5t#S256": x5t_s256(cert)}
        assert "declaration:submit" in claims["scope"].split()
        r = validate(srv, tok)
        assert r.status_code == 200 and r.headers["X-Eport-Subject"] == claims["sub"]
        assert validate(srv, tok, scope="declaration:submit").status_code == 200
        assert validate(srv, tok, scope="manifest:read").status_code == 403
        # Fewer scopes than the user has (a service's least privilege tested): --scope
        narrow = cli(
            srv, tmp_path, "token", "--service", SERVICE, "--scope", "declaration:read",
            "--scope", "declaration:draft", "--json",
        )  # fmt: skip
        narrowed = jwt.decode(
            json.loads(narrow.stdout)["access_token"], options={"verify_signature": False}
        )
        assert sorted(narrowed["scope"].split()) == ["declaration:draft", "declaration:read"]
        least = json.loads(narrow.stdout)["access_token"]
        assert validate(srv, least, scope="declaration:submit").status_code == 403
        res = cli(srv, tmp_path, "token", "--service", SERVICE, "--scope", "admin", check=False)
        assert res.returncode == 1 and "'admin'" in res.stderr, res.stderr
        res = cli(srv, tmp_path, "token", "--service", SERVICE, "--scope", " ", check=False)
        assert res.returncode == 2 and "must not be blank" in res.stderr, res.stderr
        # Another registered service, same session, no key.
        portal = token_for(srv, tmp_path, "portal")
        assert validate(srv, portal, "portal").status_code == 200
        who = json.loads(cli(srv, tmp_path, "whoami", "--json").stdout)
        assert who["subject"] == claims["sub"] and who["sid"] == claims["sid"]
        # No access where policy gives none: a clear one-line error.
        res = cli(srv, tmp_path, "token", "--service", "tax-refund", check=False)
        assert res.returncode == 1 and "no access to tax-refund" in res.stderr
        # A mistyped service id is named with the ones there are.
        res = cli(srv, tmp_path, "token", "--service", "customs-declaraton", check=False)
        assert res.returncode == 1, res.stderr
        assert "unknown service 'customs-declaraton' (known: audit, customs-declaration, " in (
            res.stderr
        )
    finally:
        hidden.rename(key)
    # A second login over the kept session ends that one (it stayed open 8 hours, its
    # tokens validating, with nothing left to end it).
    again = login(srv, world["op"], tmp_path)
    assert again["ended_previous_session"] == claims["sid"] != again["session"]["sid"]
    assert validate(srv, tok).status_code == 401
    tok = token_for(srv, tmp_path)
    portal = token_for(srv, tmp_path, "portal")
    assert validate(srv, tok).status_code == 200
    # Logout ends everything from the session at once.
    cli(srv, tmp_path, "logout")
    assert validate(srv, tok).status_code == 401
    assert validate(srv, portal, "portal").status_code == 401
    assert cli(srv, tmp_path, "whoami", check=False).returncode == 1
    # Logging out again is what was asked, not a failure: exit 0, saying so.
    again = cli(srv, tmp_path, "logout", check=False)
    assert again.returncode == 0 and "Not logged in to" in again.stdout, again


def test_discovery_and_jwks(sqlite_server: Server) -> None:
    srv = sqlite_server
    for path in (
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/auth",  # RFC 8414 §3.1
        "/auth/.well-known/openid-configuration",  # OpenID Connect Discovery 1.0 §4
    ):
        doc = requests.get(srv.url + path, timeout=10).json()
        assert doc["issuer"] == srv.url + "/auth"
        assert doc["jwks_uri"] == srv.url + "/auth/jwks.json"
        assert "urn:ietf:params:oauth:grant-type:jwt-bearer" in doc["grant_types_supported"]
    keys = requests.get(srv.url + "/auth/jwks.json", timeout=10).json()["keys"]
    # The ES256 keys of access tokens, and the RS256 keys of ID tokens for the OpenID
    # Connect clients registered for RS256 (test_oidc_rs256.py); each says its alg.
    kinds = {(k["alg"], k["kty"]) for k in keys}
    assert kinds == {("ES256", "EC"), ("RS256", "RSA")}
    assert sum(k["alg"] == "ES256" for k in keys) >= 2
    assert all("d" not in k for k in keys)


def test_gateway_fast_path_answers_as_the_flask_view(
    sqlite_server: Server, world: dict[str, Any], tmp_path: Path
) -> None:
    """GET /auth/validate is answered by a WSGI fast path (authsvc.fastpath); HEAD reaches
    the Flask view. Both must give the same decision and identity headers."""
    srv = sqlite_server
    login(srv, world["op"], tmp_path)
    tok = token_for(srv, tmp_path)
    names = ("X-Eport-Subject", "X-Eport-Scope", "X-Eport-Client", "X-Eport-USCC")
    names += ("X-Eport-Operator", "WWW-Authenticate", "Cache-Control", "Content-Type")
    cases = [
        ({"Authorization": f"Bearer {tok}", "X-Eport-Service": SERVICE}, 200),
        (
            {
                "Authorization": f"Bearer {tok}",
                "X-Eport-Service": SERVICE,
                "X-Eport-Scope": "manifest:read",
            },
            403,
        ),
        ({"Authorization": f"Bearer {tok}", "X-Eport-Service": "portal"}, 401),  # other aud
        # the gateway's own mistakes (no service, or one the server does not know): 400
        ({"Authorization": f"Bearer {tok}", "X-Eport-Service": "no-such-service"}, 400),
        ({"Authorization": f"Bearer {tok}"}, 400),
        ({"Authorization": f"Bearer {tok}x", "X-Eport-Service": SERVICE}, 401),
        ({"Authorization": f"Basic {tok}", "X-Eport-Service": SERVICE}, 401),
        ({"X-Eport-Service": SERVICE}, 401),
        # a client certificate header from an untrusted address: refused, not ignored
        (
            {"Authorization": f"Bearer {tok}", "X-Eport-Service": SERVICE, "Client-Cert": ":AAAA:"},
            401,
        ),
    ]
    for headers, status in cases:
        fast = requests.get(srv.url + "/auth/validate", headers=headers, timeout=10)
        view = requests.head(srv.url + "/auth/validate", headers=headers, timeout=10)
        assert fast.status_code == view.status_code == status, headers
        assert fast.content == b""
        for name in names:
            assert fast.headers.get(name) == view.headers.get(name), (name, headers)
        # RFC 6750 §3.1: no bearer token at all is challenged without an error code.
        if status == 401:
            no_token = not headers.get("Authorization", "").startswith("Bearer ")
            challenge = fast.headers["WWW-Authenticate"]
            assert ('error="invalid_token"' in challenge) is not no_token, (challenge, headers)
    ok = requests.get(srv.url + "/auth/validate", headers=cases[0][0], timeout=10)
    assert ok.headers["X-Eport-Operator"] == "T100" and ok.headers["Cache-Control"] == "no-store"


@pytest.mark.slow
def test_refresh_token_reuse_ends_the_session(
    sqlite_server: Server, world: dict[str, Any], tmp_path: Path
) -> None:
    srv = sqlite_server
    login(srv, world["op"], tmp_path)
    stolen = json.loads(next(tmp_path.glob("session-*.json")).read_text())["refresh_token"]
    tok = token_for(srv, tmp_path)  # the legitimate client rotates the token
    time.sleep(0.1)

    def refresh(rt: str) -> requests.Response:
        return requests.post(
            srv.url + "/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": rt, "audience": SERVICE},
            timeout=10,
        )

    # Within the grace window a repeat is refused but the session lives (concurrent refresh).
    r = refresh(stolen)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert r.headers["Cache-Control"] == "no-store"
    assert validate(srv, tok).status_code == 200
    # After the grace window the reuse is theft: the whole session ends.
    time.sleep(10.5)
    r = refresh(stolen)
    assert r.status_code == 400 and "session is ended" in r.json()["error_description"]
    assert validate(srv, tok).status_code == 401
    assert cli(srv, tmp_path, "token", "--service", SERVICE, check=False).returncode == 1


def test_revocation_reaches_tokens_within_5_seconds(
    sqlite_server: Server, world: dict[str, Any], tmp_path: Path
) -> None:
    srv = sqlite_server
    grant = jrun(srv, "operator", "add", "--name", "Zhou Min", "--id", "T200", *creds(world["ent"]))
    op = tmp_path / "op2"
    jrun(
        srv, "enroll", "--code", grant["enrollment_code"], "--profile", "operator", "--out", str(op)
    )
    login(srv, op, tmp_path)
    tok = token_for(srv, tmp_path, "portal")
    assert validate(srv, tok, "portal").status_code == 200
    jrun(
        srv,
        "revoke",
        "--serial",
        serial_of(op),
        "--reason",
        "affiliationChanged",
        *creds(world["ent"]),
    )
    start = time.monotonic()
    while validate(srv, tok, "portal").status_code != 401:
        assert time.monotonic() - start < 5, "token still active 5 s after revocation"
        time.sleep(0.05)
    # The session is ended: no new tokens either.
    res = cli(srv, tmp_path, "token", "--service", "portal", check=False)
    assert res.returncode == 1


def test_rfc7009_revocation(sqlite_server: Server, world: dict[str, Any], tmp_path: Path) -> None:
    srv = sqlite_server
    login(srv, world["op"], tmp_path)
    a = token_for(srv, tmp_path)
    b = token_for(srv, tmp_path)
    r = requests.post(
        srv.url + "/auth/revoke", data={"token": a, "token_type_hint": "access_token"}, timeout=10
    )
    assert r.status_code == 200
    assert validate(srv, a).status_code == 401 and validate(srv, b).status_code == 200
    # Unknown tokens: still 200 (RFC 7009 §2.2), nothing happens.
    assert (
        requests.post(srv.url + "/auth/revoke", data={"token": "nonsense"}, timeout=10).status_code
        == 200
    )
    rt = json.loads(next(tmp_path.glob("session-*.json")).read_text())["refresh_token"]
    requests.post(
        srv.url + "/auth/revoke", data={"token": rt, "token_type_hint": "refresh_token"}, timeout=10
    )
    assert validate(srv, b).status_code == 401


# -- attacks on access tokens -------------------------------------------------------------


def _signing_key(srv: Server) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """The token service's own active key, read as an insider would: for tokens that are
    validly signed but wrong in one claim."""
    from ca.devinit import read_passphrases

    pw = read_passphrases(srv.data_dir)["auth_key_passphrase"].encode()
    engine = create_engine(f"sqlite:///{srv.data_dir / 'auth.db'}")
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
    return row.kid, key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return (
        f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"
    )


@pytest.fixture
def good(sqlite_server: Server, world: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    login(sqlite_server, world["op"], tmp_path)
    tok = token_for(sqlite_server, tmp_path)
    assert validate(sqlite_server, tok).status_code == 200
    return {
        "token": tok,
        "claims": jwt.decode(tok, options={"verify_signature": False}),
        "header": jwt.get_unverified_header(tok),
    }


def test_attack_alg_none_and_key_confusion(sqlite_server: Server, good: dict[str, Any]) -> None:
    srv, claims, header = sqlite_server, good["claims"], good["header"]
    assert validate(srv, _forge({**header, "alg": "none"}, claims)).status_code == 401
    assert validate(srv, _forge({**header, "alg": "None"}, claims)).status_code == 401
    # HS256 "signed" with the published public key (the classic key confusion).
    jwk = next(
        k
        for k in requests.get(srv.url + "/auth/jwks.json", timeout=10).json()["keys"]
        if k["kid"] == header["kid"]
    )
    pub = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(jwk)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hmac

    signing_input = _forge({**header, "alg": "HS256"}, claims).rsplit(".", 1)[0]
    sig = hmac.new(pub, signing_input.encode(), "sha256").digest()
    assert validate(srv, f"{signing_input}.{_b64(sig)}").status_code == 401


def test_attack_kid_and_key_url_headers(sqlite_server: Server, good: dict[str, Any]) -> None:
    srv, claims, header = sqlite_server, good["claims"], good["header"]
    attacker = ec.generate_private_key(ec.SECP256R1())
    for kid in ("../../etc/passwd", "' OR '1'='1", "x" * 300, ""):
        tok = jwt.encode(claims, attacker, algorithm="ES256", headers={"typ": "at+jwt", "kid": kid})
        assert validate(srv, tok).status_code == 401
    # jku / x5u / jwk pointing at the attacker's key are never followed.
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    for extra in (
        {"jku": "http://127.0.0.1:1/jwks"},
        {"x5u": "http://127.0.0.1:1/cert"},
        {"jwk": jwk},
    ):
        tok = jwt.encode(
            claims,
            attacker,
            algorithm="ES256",
            headers={"typ": "at+jwt", "kid": header["kid"], **extra},
        )
        assert validate(srv, tok).status_code == 401
    # The genuine token with an extra jku header attached is rejected (its signature no
    # longer covers the header), showing the header is part of what is verified.
    _, p, s = good["token"].split(".")
    tampered_header = _b64(json.dumps({**header, "jku": "http://127.0.0.1:1/"}).encode())
    assert validate(srv, f"{tampered_header}.{p}.{s}").status_code == 401


def test_attack_tampered_payload_and_wrong_audience(
    sqlite_server: Server, good: dict[str, Any], tmp_path: Path
) -> None:
    srv, claims = sqlite_server, good["claims"]
    h, _, s = good["token"].split(".")
    evil = _b64(json.dumps({**claims, "scope": claims["scope"] + " admin:all"}).encode())
    assert validate(srv, f"{h}.{evil}.{s}").status_code == 401
    # A token for one service presented to another.
    assert validate(srv, good["token"], "manifest").status_code == 401
    assert validate(srv, good["token"], "portal").status_code == 401


def test_attack_validly_signed_but_wrong(sqlite_server: Server, good: dict[str, Any]) -> None:
    srv, claims = sqlite_server, good["claims"]
    kid, key = _signing_key(srv)
    now = int(time.time())

    def signed(**changes: Any) -> str:
        c = {**claims, **changes, "jti": secrets.token_urlsafe(8)}
        c = {k: v for k, v in c.items() if v is not None}
        return jwt.encode(c, key, algorithm="ES256", headers={"typ": "at+jwt", "kid": kid})

    assert validate(srv, signed()).status_code == 200  # the control: the forgery kit works
    assert validate(srv, signed(exp=now - 120, iat=now - 800)).status_code == 401  # expired
    assert validate(srv, signed(nbf=now + 600)).status_code == 401  # not yet valid
    assert validate(srv, signed(iss="https://evil.example/auth")).status_code == 401
    assert validate(srv, signed(aud="https://manifest.eport.example")).status_code == 401
    assert validate(srv, signed(exp=None)).status_code == 401  # exp required
    assert validate(srv, signed(sid="no-such-session")).status_code == 401
    untyped = jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
    assert validate(srv, untyped).status_code == 401  # typ at+jwt required (RFC 9068 §4)
    # Times that are no NumericDate, or past the lifetime this service gives (10 min):
    # Python's JSON reader takes NaN and Infinity, and comparisons with NaN are false.
    odd: list[dict[str, Any]] = [
        {"nbf": float("nan")},
        {"exp": float("nan")},
        {"iat": float("nan")},
        {"exp": float("inf")},
        {"iat": float("-inf")},
        {"exp": 1e308},
        {"exp": 1e20},
        {"exp": 10**400},  # no float holds it: OverflowError in math.isfinite
        {"nbf": -(10**400)},
        {"exp": now + 3600, "iat": now},
        {"exp": now + 601, "iat": now},
    ]
    for changes in odd:
        tok = signed(**changes)
        assert validate(srv, tok).status_code == 401, changes
        # RFC 7009: answered 200 whatever the token, and such a token is not revoked
        # (its exp was turned into a date: a 500 for an infinite one)
        r = requests.post(srv.url + "/auth/revoke", data={"token": tok}, timeout=10)
        assert r.status_code == 200, (changes, r.text)
    assert validate(srv, signed(exp=now + 600, iat=now)).status_code == 200  # the bound itself


# -- attacks on login -----------------------------------------------------------------------


def _assertion(
    srv: Server, cert: x509.Certificate, key: Any, chain: list[x509.Certificate], **changes: Any
) -> str:
    now = int(time.time())
    claims = {
        "iss": "x",
        "sub": x5t_s256(cert),
        "aud": srv.url + "/auth/token",
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(12),
    }
    claims.update(changes)
    x5c = [
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
        for c in [cert, *chain]
    ]
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "JWT", "x5c": x5c})


def _login(srv: Server, assertion: str) -> requests.Response:
    return requests.post(
        srv.url + "/auth/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
        timeout=10,
    )


def _load(d: Path) -> tuple[x509.Certificate, Any, list[x509.Certificate]]:
    cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((d / "key.pem").read_bytes(), b"test-passphrase-123")
    chain = x509.load_pem_x509_certificates((d / "chain.pem").read_bytes())[:1]
    return cert, key, chain


def test_attack_assertions(sqlite_server: Server, world: dict[str, Any], tmp_path: Path) -> None:
    srv = sqlite_server
    cert, key, chain = _load(world["ent"])
    a = _assertion(srv, cert, key, chain)
    assert _login(srv, a).status_code == 200  # control
    r = _login(srv, a)  # replayed
    assert (
        r.status_code == 400
        and r.json()["error"] == "invalid_grant"
        and "already used" in r.json()["error_description"]
    )
    assert (
        _login(srv, _assertion(srv, cert, key, chain, aud="https://other/token")).status_code == 400
    )
    assert (
        _login(srv, _assertion(srv, cert, key, chain, exp=int(time.time()) + 3600)).status_code
        == 400
    )  # > 5 min
    assert (
        _login(
            srv,
            _assertion(
                srv, cert, key, chain, exp=int(time.time()) - 120, iat=int(time.time()) - 180
            ),
        ).status_code
        == 400
    )
    other = ec.generate_private_key(ec.SECP256R1())
    assert _login(srv, _assertion(srv, cert, other, chain)).status_code == 400  # not the cert's key
    # Signed with another alg than the key's: said which one it signs with (key types
    # probe, session 27: PyJWT's "The specified alg value is not allowed" named neither)
    head, body, sig = _assertion(srv, cert, key, chain).split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    swapped = base64.urlsafe_b64encode(json.dumps({**header, "alg": "ES384"}).encode())
    r = _login(srv, ".".join((swapped.decode().rstrip("="), body, sig)))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert "a p256 key signs with ES256 (x5c[0]'s key), not 'ES384'" in r.text, r.text
    # A certificate from a foreign CA with the same names.
    fkey = ec.generate_private_key(ec.SECP256R1())
    foreign_ca = (
        x509.CertificateBuilder()
        .subject_name(chain[0].subject)
        .issuer_name(chain[0].subject)
        .public_key(fkey.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2040, 1, 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(fkey, hashes.SHA256())
    )
    fleaf = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(foreign_ca.subject)
        .public_key(other.public_key())
        .serial_number(2)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2040, 1, 1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            cert.extensions.get_extension_for_class(x509.CertificatePolicies).value, critical=False
        )
        .sign(fkey, hashes.SHA256())
    )
    assert _login(srv, _assertion(srv, fleaf, other, [foreign_ca])).status_code == 400
    # A certificate with the wrong EKU: the issuing CA's own OCSP responder certificate.
    from ca import hierarchy
    from ca.devinit import read_passphrases

    h = hierarchy.load(srv.data_dir, read_passphrases(srv.data_dir)["ca_key_passphrase"].encode())
    responder = h.responders["enterprise"]
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        not in responder.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    priv = serialization.load_pem_private_key(
        (srv.data_dir / "ca" / "responders" / "enterprise.key").read_bytes(),
        read_passphrases(srv.data_dir)["ca_key_passphrase"].encode(),
    )
    assert _login(srv, _assertion(srv, responder.certificate, priv, chain)).status_code == 400
    # An expired certificate: issued by the real issuing CA, validity in the past.
    from ca.issuance import CertificateFactory
    from ca.policy import load_policies

    old_key = ec.generate_private_key(ec.SECP256R1())
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=800)
    expired = CertificateFactory().issue(
        load_policies(Path(__file__).parent.parent / "policies").profile("enterprise"),
        h.issuers["enterprise"],
        old_key.public_key(),
        {"uscc": "91350100M000100Y43", "legal_name": "Expired Co."},
        past,
    )
    assert expired.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    assert _login(srv, _assertion(srv, expired, old_key, chain)).status_code == 400


def test_a_certificate_the_ca_never_recorded_signs_nothing(
    sqlite_server: Server, world: dict[str, Any]
) -> None:
    """A certificate signed by the live issuing CA's key but never issued (no record: made
    outside issuance, or lost with a database restored from before it) was taken by the CA
    as good, being on no deny list: it could add operators, approve, revoke. The token
    service already refused it as unknown. Now the CA refuses it too, and the enterprise's
    own certificate still signs."""
    from ca import hierarchy
    from ca.devinit import read_passphrases
    from ca.issuance import CertificateFactory
    from ca.policy import load_policies
    from cli.client import CAClient, CLIError, Identity

    srv = sqlite_server
    cert, key, chain = _load(world["ent"])
    uscc = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_IDENTIFIER)[0].value
    h = hierarchy.load(srv.data_dir, read_passphrases(srv.data_dir)["ca_key_passphrase"].encode())
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = CertificateFactory().issue(
        load_policies(Path(__file__).parent.parent / "policies").profile("enterprise"),
        h.issuers["enterprise"],
        rogue_key.public_key(),
        {"uscc": str(uscc).removeprefix("NTRCN-"), "legal_name": "Rogue Co."},
        datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1),
    )
    client = CAClient(srv.url)
    body = {"name": "Rogue Operator", "operator_id": "ROGUE1"}
    with pytest.raises(CLIError, match="not one this CA issued"):
        client.call("POST", "/ca/v1/operators", body, Identity([rogue, *chain], rogue_key))
    # The rightful certificate still signs.
    ok = client.call("POST", "/ca/v1/operators", body, Identity([cert, *chain], key))
    assert ok["enrollment_code"], ok


def test_a_certificate_that_copies_a_recorded_serial_cannot_log_in(
    sqlite_server: Server, world: dict[str, Any], tmp_path: Path
) -> None:
    """Made with the issuing CA's key outside issuance (a stolen key, a mis-issuance), a
    certificate copying an issued one's serial, with another enterprise's subject or with
    only its key changed, logged in as that subject: the token service asked the status
    of the serial. It is not the certificate the CA recorded, so it is unknown (security
    probe, session 26); the CA refused it as a signer already."""
    srv = sqlite_server
    cert, key, chain = _load(world["ent"])
    other = cert_of(enroll_enterprise(srv, tmp_path, "Beta Clone Trading Co."))
    ca_key = dev_issuer_key(srv.data_dir, "enterprise")
    assert _login(srv, _assertion(srv, cert, key, chain)).status_code == 200  # control
    for subject in (other.subject, cert.subject):
        clone, clone_key = serial_clone(cert, ca_key, subject)
        clone.verify_directly_issued_by(chain[0])  # a chain the token service accepts
        r = _login(srv, _assertion(srv, clone, clone_key, chain))
        assert r.status_code == 400, r.text
        assert r.json() == {
            "error": "invalid_grant",
            "error_description": "the certificate is unknown",
        }, r.text


def test_a_certificate_from_another_profiles_issuing_ca_cannot_log_in(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """An enterprise credential made by the agency issuing CA (the dev hierarchy's own,
    so its chain is valid) and on the CA's records as good, is refused at login, as the
    CA's own signed requests refuse it. Without the check it signed in as ``ent:<USCC>``."""
    from sqlalchemy.orm import sessionmaker

    from ca import hierarchy
    from ca.authority import certificate_record
    from ca.db import make_engine
    from ca.devinit import read_passphrases
    from ca.issuance import CertificateFactory
    from ca.policy import load_policies
    from ca.store import SqlStore

    srv = sqlite_server
    passphrase = read_passphrases(srv.data_dir)["ca_key_passphrase"].encode()
    h = hierarchy.load(srv.data_dir, passphrase)
    profile = load_policies(Path(__file__).parent.parent / "policies").profile("enterprise")
    assert profile.issuer == "enterprise"
    key = ec.generate_private_key(ec.SECP256R1())
    uscc = fresh_uscc()
    wrong = h.issuers["agency"]
    cert = CertificateFactory().issue(
        profile,
        wrong,
        key.public_key(),
        {"uscc": uscc, "legal_name": "Misissued Trading Co."},
        datetime.datetime.now(datetime.UTC),
    )
    engine = make_engine(srv.database_url)
    try:
        store = SqlStore(sessionmaker(engine, expire_on_commit=False))
        with store.transaction() as tx:  # as a misconfigured or misused CA would have
            tx.add_certificate(certificate_record(cert, "agency", "enterprise", None))
    finally:
        engine.dispose()
    d = tmp_path / "misissued"
    d.mkdir()
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "chain.pem").write_bytes(wrong.certificate.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"test-passphrase-123"),
        )
    )
    (d / "key.pem").chmod(0o600)  # as eport writes a key: a looser one is warned of
    why = "the certificate was not issued by its profile's issuing CA"
    res = cli(srv, tmp_path / "cfg", "login", *creds(d), check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == f"eport: error: {why} (invalid_grant)\n", res.stderr
    # The same answer on the wire, without the CLI (RFC 7523 assertion).
    r = _login(srv, _assertion(srv, cert, key, [wrong.certificate]))
    assert r.status_code == 400
    assert r.json() == {"error": "invalid_grant", "error_description": why}


def test_attack_revoked_and_held_certificates_cannot_log_in(
    sqlite_server: Server, world: dict[str, Any], tmp_path: Path
) -> None:
    srv = sqlite_server
    for i, action in enumerate(("suspend", "revoke")):
        grant = jrun(
            srv, "operator", "add", "--name", f"Op {i}", "--id", f"X{i}", *creds(world["ent"])
        )
        d = tmp_path / f"x{i}"
        jrun(
            srv,
            "enroll",
            "--code",
            grant["enrollment_code"],
            "--profile",
            "operator",
            "--out",
            str(d),
        )
        extra = ["--reason", "keyCompromise"] if action == "revoke" else []
        jrun(srv, action, "--serial", serial_of(d), *extra, *creds(world["ent"]))
        cert, key, chain = _load(d)
        r = _login(srv, _assertion(srv, cert, key, chain))
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_failed_logins_are_rate_limited(sqlite_server: Server, world: dict[str, Any]) -> None:
    """Per certificate: 10 failures of its holder in 5 minutes, then 429 even for a correct
    assertion. Forgeries naming the (public) certificate do not count against it: they
    cannot lock its holder out (they count against their address)."""
    srv = sqlite_server
    grant = jrun(
        srv, "operator", "add", "--name", "Brute Force", "--id", "BF1", *creds(world["ent"])
    )
    d = world["tmp"] / "bf"
    jrun(
        srv, "enroll", "--code", grant["enrollment_code"], "--profile", "operator", "--out", str(d)
    )
    cert, key, chain = _load(d)
    # A good login and a logout first, so this test's events do not depend on others'.
    session_cfg = world["tmp"] / "bf-cfg"
    login(srv, d, session_cfg)
    token_for(srv, session_cfg, "portal")
    cli(srv, session_cfg, "logout")
    login(srv, d, session_cfg)  # and a session ended by revoking its refresh token
    rt = json.loads(next(session_cfg.glob("session-*.json")).read_text())["refresh_token"]
    requests.post(
        srv.url + "/auth/revoke", data={"token": rt, "token_type_hint": "refresh_token"}, timeout=10
    )
    # the CLI, holding that session, says what to do (new user walk-through, session 26)
    who = cli(srv, session_cfg, "whoami", check=False)
    assert who.returncode == 1 and "; log in again: eport login" in who.stderr, who.stderr
    wrong = ec.generate_private_key(ec.SECP256R1())
    forged = [_login(srv, _assertion(srv, cert, wrong, chain)) for _ in range(11)]
    assert [r.status_code for r in forged] == [400] * 11
    assert _login(srv, _assertion(srv, cert, key, chain)).status_code == 200  # not locked out
    # The holder's own failures (signed with its key, refused after: a wrong sub) count.
    statuses = [
        _login(srv, _assertion(srv, cert, key, chain, sub="op:nobody")).status_code
        for _ in range(11)
    ]
    assert statuses[:10] == [400] * 10 and statuses[10] == 429
    r = _login(srv, _assertion(srv, cert, key, chain))
    assert r.status_code == 429 and r.json()["error"] == "slow_down"
    # Every failure is on record for auditors.
    from cli.client import CAClient
    from cli.keyfiles import load_identity

    auditor = srv.data_dir / "dev" / "auditors" / "customs"
    pw = auditor / "DEV-ONLY-passphrase.txt"
    ident = load_identity(auditor / "auditor.pem", auditor / "auditor.key", pw)
    ent_pw = world["tmp"] / "ent-pass.txt"
    ent_pw.write_text("test-passphrase-123")
    events = CAClient(srv.url).call("GET", "/auth/v1/events?limit=1000", identity=ident)["events"]
    kinds = {e["type"] for e in events}
    assert {"login", "login.failed", "logout", "token.issued", "session.ended"} <= kinds
    failed = [e for e in events if e["type"] == "login.failed"]
    assert failed and all(e["client_addr"] == "127.0.0.1" for e in failed)
    # An enterprise sees only its own events.
    mine = CAClient(srv.url).call(
        "GET",
        "/auth/v1/events?limit=1000",
        identity=load_identity(world["ent"] / "cert.pem", world["ent"] / "key.pem", ent_pw),
    )["events"]
    assert mine and all(e["subject"] == mine[0]["subject"] for e in mine)


def test_token_service_errors_are_problems(sqlite_server: Server) -> None:
    """The token service renders errors as the CA does (one set of handlers), but at
    its OAuth endpoints (RFC 6749 §5.2, tests/test_auth_refusals.py)."""
    r = requests.post(
        sqlite_server.url + "/auth/v1/roles",
        data=b"x" * 100_000,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 413 and r.headers["Content-Type"] == "application/problem+json"
    assert "bytes" in r.json()["detail"] and r.json()["status"] == 413
    r = requests.get(sqlite_server.url + "/auth/no-such-thing", timeout=10)
    assert r.status_code == 404 and r.json()["status"] == 404
    # A wrong method is a problem too, and says which methods the path takes (RFC 9110
    # §15.5.6 requires Allow on a 405).
    r = requests.get(sqlite_server.url + "/auth/token", timeout=10)
    assert r.status_code == 405 and r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["status"] == 405
    assert {m.strip() for m in r.headers["Allow"].split(",")} >= {"POST"}
    assert "GET" not in {m.strip() for m in r.headers["Allow"].split(",")}


def test_a_host_with_another_token_key_passphrase_is_refused(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """A host of the shared database started with another EPORT_AUTH_KEY_PASSPHRASE (a
    ``_FILE`` naming the wrong file) served: health ok, every token request a 500; and its
    rotate-keys stored next keys no other host could open, which a rotation elsewhere
    then made active: every host's token requests failed (PostgreSQL probe, F1). Both
    are refused in one line, the development start too, and no key is stored."""
    srv = sqlite_server

    def stored_keys() -> list[Any]:
        engine = create_engine(f"sqlite:///{srv.data_dir / 'auth.db'}")
        try:
            with engine.connect() as conn:
                return sorted(conn.execute(select(SigningKeyRow.kid, SigningKeyRow.state)))
        finally:
            engine.dispose()

    before = stored_keys()
    wrong = {"EPORT_AUTH_KEY_PASSPHRASE": "another host's passphrase, mistyped"}
    for args in (
        ("auth", "rotate-keys", "--data-dir", str(srv.data_dir), "--dev", "--force"),
        ("serve", "--dev", "--data-dir", str(srv.data_dir), "--port", "1"),
    ):
        res = srv.eport(*args, check=False, **wrong)
        assert res.returncode == 1, res.stdout + res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith("eport: error: EPORT_AUTH_KEY_PASSPHRASE does not open the "), line
        assert "every host of the database uses the same one" in line, line
    assert stored_keys() == before


def test_an_enterprise_takes_every_role_from_an_operator(
    sqlite_server: Server, world: dict[str, Any], tmp_path: Path
) -> None:
    """Grants replace earlier ones, but `roles grant` needs a --role: an operator who left
    could not be left with none (business rules probe, session 26). `roles clear` takes
    them all; the operator's next token carries none of their scopes."""
    from tests.helpers import enroll_operator, grant_roles

    srv = sqlite_server
    op = enroll_operator(srv, world["ent"], tmp_path, "CLR1")
    grant_roles(srv, world["ent"], "CLR1", "declaration")
    login(srv, op, tmp_path)
    assert (
        "declaration:submit"
        in jwt.decode(token_for(srv, tmp_path), options={"verify_signature": False})[
            "scope"
        ].split()
    )
    done = jrun(srv, "roles", "clear", "--operator", "CLR1", *creds(world["ent"]))
    assert done["roles"] == [] and done["operator_id"] == "CLR1", done
    res = cli(srv, tmp_path, "token", "--service", SERVICE, check=False)
    assert res.returncode == 1 and "no access to customs-declaration" in res.stderr, res.stderr


def test_roles_stay_with_the_operator_they_were_granted_to(
    sqlite_server: Server, world: dict[str, Any], tmp_path: Path
) -> None:
    """Roles were kept per operator id alone, so the next person the enterprise gave a
    departed operator's id got that operator's roles (business rules probe, session 26).
    An operator certificate names its authorization (dnQualifier: the application id);
    renewals keep it, the id authorized again gets another, and a grant names the
    authorization it is for (eport roles grant reads the current one from the CA): the
    successor has no roles until granted them, even from a grant its predecessor never
    used (roles probe, session 27: a grant bound at its first use went to the successor)."""
    from cryptography.x509.oid import NameOID

    from tests.helpers import grant_roles

    srv, ent = sqlite_server, world["ent"]
    first = jrun(srv, "operator", "add", "--name", "Wu Fang", "--id", "RE1", *creds(ent))
    old = tmp_path / "old"
    jrun(srv, "enroll", "--code", first["enrollment_code"], "--profile", "operator",
         "--out", str(old))  # fmt: skip

    def authorization(d: Path) -> str:
        (value,) = cert_of(d).subject.get_attributes_for_oid(NameOID.DN_QUALIFIER)
        return str(value.value)

    def scopes(who: Path, cfg: Path) -> list[str] | None:
        login(srv, who, cfg)
        res = cli(srv, cfg, "token", "--service", SERVICE, check=False)
        if res.returncode != 0:
            assert "no access to customs-declaration" in res.stderr, res.stderr
            return None
        return list(
            jwt.decode(res.stdout.strip(), options={"verify_signature": False})["scope"].split()
        )

    assert "app_" + authorization(old) == first["application"]["id"]
    granted = jrun(srv, "roles", "grant", "--operator", "RE1", "--role", "declaration",
                   *creds(ent))  # fmt: skip
    assert granted["authorization"] == authorization(old), granted
    assert "declaration:submit" in (scopes(old, tmp_path / "a") or [])
    # The same person authorized again before enrolling (a lost code): the same
    # authorization, the grant stands (review, session 27: it was lost)
    lost = jrun(srv, "operator", "add", "--name", "Lost Code", "--id", "RE3", *creds(ent))
    grant_roles(srv, ent, "RE3", "declaration")
    shown = srv.eport("operator", "add", "--name", "Lost Code", "--id", "RE3", *creds(ent))
    assert "roles: those granted to RE3 stand" in shown.stdout, shown.stdout
    code = shown.stdout.split("Enrollment code: ")[1].split()[0]
    again_in = tmp_path / "again-in"
    jrun(srv, "enroll", "--code", code, "--profile", "operator", "--out", str(again_in))
    assert "app_" + authorization(again_in) == lost["application"]["id"]
    assert "declaration:submit" in (scopes(again_in, tmp_path / "f") or [])
    # A grant that is never used before its holder leaves (below: RE2)
    never = jrun(srv, "operator", "add", "--name", "Zhao Yi", "--id", "RE2", *creds(ent))
    unused = tmp_path / "unused"
    jrun(srv, "enroll", "--code", never["enrollment_code"], "--profile", "operator",
         "--out", str(unused))  # fmt: skip
    grant_roles(srv, ent, "RE2", "declaration")
    # An id the enterprise has not authorized gets no grant: nothing to bind it to
    res = srv.eport("roles", "grant", "--operator", "NOBODY9", "--role", "declaration",
                    *creds(ent), check=False)  # fmt: skip
    assert res.returncode == 1 and "has no authorization of operator NOBODY9" in res.stderr
    # A renewal is the same authorization: it keeps the roles.
    new = tmp_path / "renewed"
    jrun(srv, "renew", *creds(old), "--out", str(new))
    assert authorization(new) == authorization(old)
    assert "declaration:submit" in (scopes(new, tmp_path / "b") or [])
    # The operator leaves; the id is given to someone else.
    for d in (old, new, unused):
        jrun(srv, "revoke", "--serial", serial_of(d), "--reason", "affiliationChanged",
             *creds(ent))  # fmt: skip
    second = jrun(srv, "operator", "add", "--name", "Sun Li", "--id", "RE1", *creds(ent))
    successor = tmp_path / "successor"
    jrun(srv, "enroll", "--code", second["enrollment_code"], "--profile", "operator",
         "--out", str(successor))  # fmt: skip
    assert authorization(successor) != authorization(old)
    assert scopes(successor, tmp_path / "c") is None  # the portal only, as any operator
    again = jrun(srv, "operator", "add", "--name", "Qian Er", "--id", "RE2", *creds(ent))
    heir = tmp_path / "heir"
    jrun(srv, "enroll", "--code", again["enrollment_code"], "--profile", "operator",
         "--out", str(heir))  # fmt: skip
    assert scopes(heir, tmp_path / "e") is None  # RE2's grant was never used: still not theirs
    # The enterprise grants them again: now the successor's (the id typed in another
    # case, as the CA finds it: the grant is made as the certificate spells it)
    grant_roles(srv, ent, "re1", "declaration")
    assert "declaration:submit" in (scopes(successor, tmp_path / "d") or [])
