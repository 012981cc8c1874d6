"""The CA alone reads the token service's keys to accept auditors' access tokens at its
audit API: from EPORT_TOKEN_JWKS_URL when set (the token service's own address, when the
public one is not reached from the CA's host), and a key set that cannot be had is a 503
fault, not a 401 that tells a client its good token is bad."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.conftest import Server, base_env, free_port, stop
from tests.helpers import Relay
from tests.test_apart import AUTH_PASSPHRASE, copy_public_files, serve_auth, serve_ca_alone


def test_the_ca_alone_checks_audit_tokens_by_the_key_set_it_is_told(tmp_path: Path) -> None:
    auth_port = free_port()
    auth_url = f"http://127.0.0.1:{auth_port}"
    relay = Relay(auth_url)
    ca_data, auth_data = tmp_path / "ca-data", tmp_path / "auth-data"
    ca_srv, ca_proc = serve_ca_alone(
        ca_data,
        EPORT_TOKEN_ISSUER=auth_url + "/auth",
        EPORT_TOKEN_JWKS_URL=relay.url + "/auth/jwks.json",
    )
    auth_proc = None
    try:
        copy_public_files(ca_data, auth_data)
        env = base_env() | {
            "EPORT_PUBLIC_BASE_URL": auth_url,
            "EPORT_AUTH_STATUS_MODE": "ocsp",
            "EPORT_AUTH_KEY_PASSPHRASE": AUTH_PASSPHRASE,
        }
        auth_proc = serve_auth(auth_data, auth_port, env, tmp_path / "auth.log")
        auditor = ca_data / "dev" / "auditors" / "tax"
        cfg = str(tmp_path / "cfg")
        at_auth = Server(auth_url, ca_data, ca_srv.database_url, ca_srv.log)
        pw = (auditor / "DEV-ONLY-passphrase.txt").read_text().strip()
        creds = ["--cert", str(auditor / "auditor.pem"), "--key", str(auditor / "auditor.key")]
        at_auth.eport("login", *creds, EPORT_CONFIG_DIR=cfg, EPORT_PASSPHRASE=pw)
        token = at_auth.eport("token", "--service", "audit", EPORT_CONFIG_DIR=cfg).stdout.strip()
        url = ca_srv.url + "/ca/v1/audit/events?limit=5"
        bearer = {"Authorization": f"Bearer {token}"}
        relay.down = True  # the key set cannot be had: a fault, asked again later
        r = requests.get(url, headers=bearer, timeout=30)
        assert r.status_code == 503 and r.headers["Retry-After"], (r.status_code, r.text)
        problem = r.json()
        assert problem["type"] == "urn:eport:problem:token-check-unavailable", problem
        assert relay.url not in r.text  # the CA's log has the address, not the client
        assert relay.taken()["other"] >= 1  # the key set was asked for there
        relay.down = False
        deadline = time.monotonic() + 30  # the verifier asks again after its back-off
        while (r := requests.get(url, headers=bearer, timeout=30)).status_code != 200:
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.5)
        assert r.json()["events"]
        # a bad token is still a 401 verdict
        r = requests.get(url, headers={"Authorization": f"Bearer {token[:-4]}AAAA"}, timeout=30)
        assert r.status_code == 401
    finally:
        relay.close()
        if auth_proc is not None:
            stop(auth_proc)
        stop(ca_proc)
