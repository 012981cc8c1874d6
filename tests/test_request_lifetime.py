"""EPORT_REQUEST_MAX_LIFETIME_SECONDS tightens the five minutes a signed request may live
(exp - iat): it was range-checked and documented, and read by nothing (time probe,
finding 8). It can only tighten: above 300 is refused at start."""

from __future__ import annotations

import datetime
from pathlib import Path

import requests

from ca.signedreq import SCHEME, sign_request
from cli.keyfiles import load_identity
from tests.conftest import start_server, stop
from tests.test_config_checks import refused, serve


def test_a_server_may_allow_signed_requests_a_shorter_life(tmp_path: Path) -> None:
    srv, proc = start_server(
        tmp_path / "d", workers=1, extra_env={"EPORT_REQUEST_MAX_LIFETIME_SECONDS": "60"}
    )
    try:
        d = srv.dev / "officers" / "customs"
        who = load_identity(d / "officer.pem", d / "officer.key", d / "DEV-ONLY-passphrase.txt")
        path = "/ca/v1/ra/applications"
        for seconds, status in ((120, 401), (50, 200)):
            jws = sign_request(
                who.key,  # type: ignore[arg-type]
                who.chain,
                "GET",
                path,
                b"",
                datetime.datetime.now(datetime.UTC),
                lifetime=datetime.timedelta(seconds=seconds),
            )
            r = requests.get(
                srv.url + path, headers={"Authorization": f"{SCHEME} {jws}"}, timeout=30
            )
            assert r.status_code == status, r.text
            if status == 401:
                assert "lives longer than 60 s" in r.json()["detail"], r.text
    finally:
        stop(proc)


def test_it_cannot_lengthen_the_five_minutes(tmp_path: Path) -> None:
    refused(
        serve(tmp_path / "d", EPORT_REQUEST_MAX_LIFETIME_SECONDS="600"),
        "EPORT_REQUEST_MAX_LIFETIME_SECONDS",
        "from 1 to 300 seconds",
    )
