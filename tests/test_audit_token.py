"""Auditors read the issuance log with a token of the token service (scope audit:read)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import Server, start_server, stop
from tests.helpers import creds, enroll_enterprise


def test_audit_read_token(sqlite_server: Server, tmp_path: Path) -> None:
    srv = sqlite_server
    auditor = srv.data_dir / "dev" / "auditors" / "tax"
    cfg = tmp_path / "cfg"
    pw = (auditor / "DEV-ONLY-passphrase.txt").read_text().strip()
    srv.eport(
        "login",
        "--cert",
        str(auditor / "auditor.pem"),
        "--key",
        str(auditor / "auditor.key"),
        EPORT_CONFIG_DIR=str(cfg),
        EPORT_PASSPHRASE=pw,
    )
    token = srv.eport("token", "--service", "audit", EPORT_CONFIG_DIR=str(cfg)).stdout.strip()
    url = srv.url + "/ca/v1/audit/events?limit=5"
    r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["events"]
    # A token for another service, a tampered token, no token: refused.
    portal = srv.eport("token", "--service", "portal", EPORT_CONFIG_DIR=str(cfg), check=False)
    if portal.returncode == 0:
        other = portal.stdout.strip()
        r = requests.get(url, headers={"Authorization": f"Bearer {other}"}, timeout=10)
        assert r.status_code == 401
    r = requests.get(url, headers={"Authorization": f"Bearer {token[:-4]}AAAA"}, timeout=10)
    assert r.status_code == 401
    assert requests.get(url, timeout=10).status_code == 401
    # An enterprise gets no audit:read token at all: policy gives it no access.
    ent = enroll_enterprise(srv, tmp_path, "No Audit Co.")
    ecfg = tmp_path / "ecfg"
    srv.eport("login", *creds(ent), EPORT_CONFIG_DIR=str(ecfg))
    res = srv.eport("token", "--service", "audit", EPORT_CONFIG_DIR=str(ecfg), check=False)
    assert res.returncode == 1 and "no access to audit" in res.stderr


@pytest.mark.slow
def test_web_session_from_a_token_ends_with_the_token(tmp_path: Path) -> None:
    """A web view session opened with an access token (POST /audit/session, Bearer) ends
    when that token expires, not 30 minutes later: the API itself stops taking the token
    then, and a logout at the token service reaches the CA no sooner."""
    srv, proc = start_server(tmp_path / "data", extra_env={"EPORT_AUTH_ACCESS_TOKEN_SECONDS": "8"})
    try:
        auditor = srv.data_dir / "dev" / "auditors" / "tax"
        cfg = tmp_path / "cfg"
        srv.eport(
            "login",
            "--cert",
            str(auditor / "auditor.pem"),
            "--key",
            str(auditor / "auditor.key"),
            EPORT_CONFIG_DIR=str(cfg),
            EPORT_PASSPHRASE=(auditor / "DEV-ONLY-passphrase.txt").read_text().strip(),
        )
        token = srv.eport("token", "--service", "audit", EPORT_CONFIG_DIR=str(cfg)).stdout.strip()
        payload = token.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
        r = requests.post(
            srv.url + "/audit/session", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert r.status_code == 200, r.text
        web = requests.Session()
        r = web.get(r.json()["url"], timeout=10, allow_redirects=False)
        assert r.status_code == 303
        assert 0 < int(r.headers["Set-Cookie"].split("Max-Age=")[1].split(";")[0]) <= 8
        assert web.get(srv.url + "/audit/events", timeout=10).status_code == 200
        kept = {"eport_audit": web.cookies["eport_audit"]}  # a copy past its Max-Age too
        time.sleep(max(exp - time.time(), 0) + 1.5)
        r = requests.get(srv.url + "/audit/events", cookies=kept, timeout=10)
        assert r.status_code == 401 and "has expired" in r.text
    finally:
        stop(proc)
