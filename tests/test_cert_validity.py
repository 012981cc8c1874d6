"""A certificate's validity period bounds what it can do, on a real server: a session
(and every token from it) ends at the login certificate's notAfter."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, start_server, stop
from tests.helpers import cert_of, creds, enroll_enterprise

STAMP = "%Y-%m-%dT%H:%M:%SZ"
LONG = str(1000 * 86400)  # longer than any end-entity profile's validity


@pytest.fixture(scope="module")
def long_sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A dev server whose sessions and access tokens would outlive any certificate."""
    root = tmp_path_factory.mktemp("validity")
    srv, proc = start_server(
        root / "data",
        workers=1,
        extra_env={
            "EPORT_AUTH_SESSION_SECONDS": LONG,
            "EPORT_AUTH_ACCESS_TOKEN_SECONDS": LONG,
        },
    )
    try:
        yield srv
    finally:
        stop(proc)


def _claims(token: str) -> dict[str, object]:
    body = token.split(".")[1]
    out = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert isinstance(out, dict)
    return out


def test_session_and_tokens_end_with_the_certificate(long_sessions: Server, tmp_path: Path) -> None:
    srv = long_sessions
    ent = enroll_enterprise(srv, tmp_path, "Validity Trading Co., Ltd.")
    not_after = cert_of(ent).not_valid_after_utc
    login = json.loads(srv.eport("login", *creds(ent), "--json", HOME=str(tmp_path)).stdout)
    assert login["session"]["expires_at"] == f"{not_after:{STAMP}}"
    who = json.loads(srv.eport("whoami", "--json", HOME=str(tmp_path)).stdout)
    assert who["expires_at"] == f"{not_after:{STAMP}}"
    res = srv.eport("token", "--service", "portal", "--json", HOME=str(tmp_path))
    doc = json.loads(res.stdout)
    claims = _claims(doc["access_token"])
    assert claims["exp"] == int(not_after.timestamp())
    assert doc["expires_in"] == claims["exp"] - claims["iat"]  # type: ignore[operator]
