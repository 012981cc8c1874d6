"""Independence check: our access tokens judged by a second JOSE implementation.

joserfc (not PyJWT, which both the token service and the SDK use) verifies real access
tokens from a real server against the JWKS fetched over HTTP: signature, ``alg``,
``typ``, ``kid`` (an RFC 7638 thumbprint), and the RFC 9068 claims. The other way round,
the SDK verifies tokens that joserfc made, with a JWKS that joserfc serialized.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, jsonify
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError, InvalidClaimError, JoseError
from joserfc.jwk import ECKey, KeySet

from authsvc.client import InvalidToken, TokenVerifier
from tests.conftest import Server
from tests.helpers import cert_of, enroll_enterprise, enroll_operator
from tests.test_sdk import CUSTOMS, MANIFEST, login, serve_wsgi


@dataclass
class Tokens:
    server: Server
    operator: Path
    customs: str
    manifest: str

    @property
    def issuer(self) -> str:
        return self.server.url + "/auth"


@pytest.fixture(scope="module")
def tokens(sqlite_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    tmp = tmp_path_factory.mktemp("interop")
    ent = enroll_enterprise(sqlite_server, tmp, "Interop Trading Co., Ltd.")
    op = enroll_operator(sqlite_server, ent, tmp, "interop1", "data-entry")
    session = login(sqlite_server, op, tmp)
    return Tokens(sqlite_server, op, session.token(), session.token("manifest"))


def fetch_key_set(server: Server) -> tuple[KeySet, dict[str, Any]]:
    """The JWKS, found the way a relying party finds it: metadata, then jwks_uri."""
    meta = requests.get(server.url + "/.well-known/openid-configuration", timeout=10).json()
    assert meta["issuer"] == server.url + "/auth"
    assert "ES256" in meta["access_token_signing_alg_values_supported"]
    jwks = requests.get(meta["jwks_uri"], timeout=10).json()
    return KeySet.import_key_set(jwks), jwks


def registry(issuer: str, audience: str) -> jose_jwt.JWTClaimsRegistry:
    return jose_jwt.JWTClaimsRegistry(
        now=int(time.time()),
        leeway=30,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
        client_id={"essential": True},
        scope={"essential": True},
    )


def test_joserfc_verifies_our_access_tokens(tokens: Tokens) -> None:
    key_set, jwks = fetch_key_set(tokens.server)
    # Every kid is the key's RFC 7638 thumbprint, as joserfc computes it. The RS256 keys
    # sign only ID tokens (test_oidc_rs256.py); access tokens are ES256.
    for jwk in jwks["keys"]:
        assert "d" not in jwk  # no private part is ever published
        if jwk["alg"] == "RS256":
            assert jwk["kty"] == "RSA"
            continue
        assert jwk["kty"] == "EC" and jwk["crv"] == "P-256" and jwk["alg"] == "ES256"
        assert ECKey.import_key(jwk).thumbprint() == jwk["kid"]

    token = jose_jwt.decode(tokens.customs, key_set, algorithms=["ES256"])
    assert token.header["alg"] == "ES256"
    assert token.header["typ"] == "at+jwt"  # RFC 9068 §2.1
    assert token.header["kid"] in {k["kid"] for k in jwks["keys"]}
    assert set(token.header) == {"alg", "typ", "kid"}  # no jku, x5u, jwk, crit
    registry(tokens.issuer, CUSTOMS).validate(token.claims)
    claims = token.claims
    assert claims["sub"].endswith(":interop1") and claims["operator_id"] == "interop1"
    assert set(claims["scope"].split()) == {"declaration:read", "declaration:draft"}
    assert claims["exp"] - claims["iat"] == 600
    # RFC 8705 §3.1: x5t#S256 is the SHA-256 of the login certificate's DER.
    from cryptography.hazmat.primitives import serialization

    der = cert_of(tokens.operator).public_bytes(serialization.Encoding.DER)
    thumb = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert claims["cnf"] == {"x5t#S256": thumb}

    # The other service's token verifies too, but not for our audience.
    other = jose_jwt.decode(tokens.manifest, key_set, algorithms=["ES256"])
    registry(tokens.issuer, MANIFEST).validate(other.claims)
    with pytest.raises(InvalidClaimError):
        registry(tokens.issuer, CUSTOMS).validate(other.claims)


def test_joserfc_refuses_what_it_should(tokens: Tokens) -> None:
    key_set, _ = fetch_key_set(tokens.server)
    head, body, sig = tokens.customs.split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    with pytest.raises(BadSignatureError):
        jose_jwt.decode(f"{head}.{body}.{flipped}", key_set, algorithms=["ES256"])
    with pytest.raises(JoseError):
        jose_jwt.decode(tokens.customs, key_set, algorithms=["RS256"])
    token = jose_jwt.decode(tokens.customs, key_set, algorithms=["ES256"])
    with pytest.raises(InvalidClaimError):
        registry("https://elsewhere.example/auth", CUSTOMS).validate(token.claims)


def test_sdk_verifies_tokens_joserfc_made() -> None:
    """The SDK against another implementation's JWKS serialization and ES256 signatures."""
    key = ECKey.generate_key("P-256", auto_kid=True)
    jwks = KeySet([key]).as_dict(private=False)
    for k in jwks["keys"]:
        k.update(alg="ES256", use="sig")
    app = Flask("jwks")
    app.get("/jwks.json")(lambda: jsonify(jwks))
    issuer = "https://eport.example/auth"
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": "op:91350100M000100Y43:op1",
        "aud": CUSTOMS,
        "exp": now + 300,
        "iat": now,
        "jti": "joserfc-made-1",
        "scope": "declaration:read",
        "client_id": "eport-cli",
    }
    good = jose_jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, claims, key)
    plain_jwt = jose_jwt.encode({"alg": "ES256", "typ": "JWT", "kid": key.kid}, claims, key)
    with serve_wsgi(app) as url, TokenVerifier(issuer, CUSTOMS, url + "/jwks.json") as v:
        got = v.verify(good, required_scopes=["declaration:read"])
        assert got.subject == claims["sub"] and got.token_id == "joserfc-made-1"
        with pytest.raises(InvalidToken):
            v.verify(plain_jwt)  # RFC 9068 §4: typ must be at+jwt


def test_a_generic_oauth_client_reads_the_login_answer(
    tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An RFC 7523 login read by oauthlib's RFC 6749 §5.1 token-response parser (the one
    requests-oauthlib uses): with ``audience=<service id>`` the answer is a token response
    whose access token joserfc verifies; without it, it is the session-only login of
    ``eport login`` (token_type N_A, no access_token), which such a client refuses, as
    docs/token-service.md says."""
    from oauthlib.oauth2.rfc6749.errors import MissingTokenError
    from oauthlib.oauth2.rfc6749.parameters import parse_token_response

    from authsvc.principal import x5t_s256
    from cli import keyfiles, session

    monkeypatch.setenv("EPORT_PASSPHRASE", "test-passphrase-123")
    holder = keyfiles.load_identity(tokens.operator / "cert.pem", tokens.operator / "key.pem", None)
    endpoint = tokens.issuer + "/token"

    def log_in(**extra: str) -> requests.Response:
        grant = {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": session.assertion(holder, endpoint, x5t_s256(holder.chain[0])),
        }
        return requests.post(endpoint, data={**grant, **extra}, timeout=10)

    answer = parse_token_response(log_in(audience="customs-declaration").text)
    assert answer["token_type"] == "Bearer" and answer["refresh_token"]
    key_set, _ = fetch_key_set(tokens.server)
    token = jose_jwt.decode(answer["access_token"], key_set, algorithms=["ES256"])
    registry(tokens.issuer, CUSTOMS).validate(token.claims)

    session_only = log_in()
    assert session_only.status_code == 200
    assert session_only.json()["token_type"] == "N_A" and "access_token" not in session_only.json()
    with pytest.raises(MissingTokenError):
        parse_token_response(session_only.text)
