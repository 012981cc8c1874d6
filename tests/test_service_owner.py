"""A registered service is operated by one member agency: only a service-tls
certificate that agency's officers vetted speaks for it. Any member's RA officer can
certify any host name, so a customs-approved tax-refund.eport.example certificate read
every tax-refund token by introspection and got tokens elsewhere by exchange
(authorization probe, F1)."""

from __future__ import annotations

import datetime
from pathlib import Path
from urllib.parse import urlencode

import requests

from ca.signedreq import SCHEME, sign_request
from cli.keyfiles import load_identity
from tests.conftest import Server
from tests.helpers import jrun


def _service(server: Server, tmp: Path, host: str, agency: str) -> Path:
    app = jrun(server, "apply", "--class", "service", "--agency", agency, "--name", host)["id"]
    code = jrun(server, "ra", "approve", app, *server.officer(agency))["enrollment_code"]
    out = tmp / f"{agency}-{host}"
    jrun(server, "enroll", "--code", code, "--profile", "service-tls", "--out", str(out))
    return out


def _introspect(server: Server, svc: Path) -> requests.Response:
    pw = svc / "pw.txt"
    pw.write_text("test-passphrase-123\n")  # the suite's EPORT_PASSPHRASE (Server.env)
    who = load_identity(svc / "cert.pem", svc / "key.pem", pw)
    body = urlencode({"token": "not-a-token"}).encode()
    path = "/auth/introspect"
    jws = sign_request(
        who.key,  # type: ignore[arg-type]
        who.chain,
        "POST",
        path,
        body,
        datetime.datetime.now(datetime.UTC),
    )
    return requests.post(
        server.url + path,
        data=body,
        headers={
            "Authorization": f"{SCHEME} {jws}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        timeout=30,
    )


def test_only_the_operating_agencys_certificate_speaks_for_a_service(
    sqlite_server: Server, tmp_path: Path
) -> None:
    host = "tax-refund.eport.example"  # policies/services.toml: agency = "tax"
    forged = _service(sqlite_server, tmp_path, host, "customs")
    r = _introspect(sqlite_server, forged)
    assert r.status_code in (401, 403), r.text
    assert "operated by member agency tax" in r.text, r.text
    own = _service(sqlite_server, tmp_path, host, "tax")
    r = _introspect(sqlite_server, own)
    assert r.status_code == 200 and r.json() == {"active": False}, r.text


def test_a_service_naming_no_operating_agency_is_spoken_for_by_no_certificate(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """The audit API names no ``agency`` in policies/services.toml: a certificate for its
    host vetted by any member's officer was taken as the service, and read any audit
    token by introspection (token probe, F3). Fail closed: none speaks for it."""
    host = "audit.eport.example"
    for agency in ("commerce", "customs"):
        svc = _service(sqlite_server, tmp_path, host, agency)
        r = _introspect(sqlite_server, svc)
        assert r.status_code in (401, 403), r.text
        assert "names no operating member agency" in r.text, r.text
