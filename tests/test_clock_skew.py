"""A client whose clock is off, against a real server: within the 30 s leeway its signed
requests and login assertions pass; minutes off, the refusal names both clocks."""

from __future__ import annotations

import base64
import datetime
import re
import secrets
from pathlib import Path

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authsvc.principal import x5t_s256
from ca.keys import KeyType
from ca.signedreq import SCHEME, sign_request
from cli.client import Identity
from cli.keyfiles import load_identity
from tests.conftest import Server

LIST = "/ca/v1/ra/applications?state=pending&limit=1"
SERVER_TIME = re.compile(r"server time (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")


def _officer(srv: Server) -> Identity:
    d = srv.dev / "officers" / "customs"
    return load_identity(d / "officer.pem", d / "officer.key", d / "DEV-ONLY-passphrase.txt")


def _b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def _near_now(text: str) -> None:
    m = SERVER_TIME.search(text)
    assert m, text
    when = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs(when - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(seconds=30)


@pytest.mark.parametrize("offset", [-600, -180, -30, 0, 29, 180, 600])
def test_signed_request_from_a_skewed_clock(sqlite_server: Server, offset: int) -> None:
    ident = _officer(sqlite_server)
    now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    token = sign_request(ident.key, ident.chain, "GET", LIST, b"", now)
    r = requests.get(
        sqlite_server.url + LIST, headers={"Authorization": f"{SCHEME} {token}"}, timeout=10
    )
    if abs(offset) <= 30:  # a 2-minute request 30 s behind is still alive
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 401 and r.headers["Content-Type"] == "application/problem+json"
    detail = r.json()["detail"]
    # The claim's own time, as the client's clock wrote it: iat is that clock's now, exp
    # two minutes on (sign_request's lifetime)
    claimed = now if offset > 0 else now + datetime.timedelta(seconds=120)
    what = "issued in the future (iat" if offset > 0 else "expired (exp"
    assert f"signed request {what} {claimed:%Y-%m-%dT%H:%M}" in detail
    assert "is the client's clock right? (leeway 30 s)" in detail
    _near_now(detail)


@pytest.mark.parametrize("offset", [-30, 29, 180, -600])
def test_login_from_a_skewed_clock(sqlite_server: Server, offset: int, tmp_path: Path) -> None:
    ident = _officer(sqlite_server)
    endpoint = sqlite_server.url + "/auth/token"
    iat = int(datetime.datetime.now(datetime.UTC).timestamp()) + offset
    sub = x5t_s256(ident.chain[0])
    claims = {"iss": sub, "sub": sub, "aud": endpoint, "iat": iat, "exp": iat + 120}
    claims["jti"] = secrets.token_urlsafe(18)
    assertion = jwt.encode(
        claims,
        ident.key,  # type: ignore[arg-type]
        algorithm=KeyType.of(ident.key).jws_alg,
        headers={"typ": "JWT", "x5c": [_b64(c) for c in ident.chain]},
    )
    r = requests.post(
        endpoint,
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
        timeout=10,
    )
    if abs(offset) <= 30:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert "is the client's clock right?" in r.json()["error_description"]
    _near_now(r.json()["error_description"])
