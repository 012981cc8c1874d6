"""``eport renew`` and ``eport enroll`` answered by a server that is not the CA: a wrong
EPORT_SERVER (another site's 404 page), or a proxy that refused the request (nginx's 429
page). The CA never got it, so the new key is not kept as if a certificate might exist;
a proxy's 5xx page still keeps it (the CA may have answered behind it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Server
from tests.helpers import HttpStub, enroll_enterprise
from tests.test_cli_errors import one_line


def answering(status: int) -> HttpStub:
    """A web server answering every request with ``status`` and an HTML page."""
    page = b"<html><body><h1>Not the e-port</h1></body></html>"
    return HttpStub(lambda _method, _path, _body: (status, "text/html", page))


@pytest.mark.parametrize("status", [404, 429])
def test_a_renewal_refused_by_another_server_keeps_no_key(
    sqlite_server: Server, tmp_path: Path, status: int
) -> None:
    ent = enroll_enterprise(sqlite_server, tmp_path, "Foreign Answer Co.")
    out = tmp_path / "renewed"
    renew = ["renew", "--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    with answering(status) as stub:
        url = stub.url
        res = sqlite_server.eport("--server", url, *renew, "--out", str(out), check=False)
    said = "is limiting requests (HTTP 429" if status == 429 else f"answered HTTP {status}"
    line = one_line(res, 1, f"the server at {url} {said}")
    assert line.endswith("the CA did not get it, so nothing was issued"), line
    assert "may have issued" not in line
    assert not out.exists()


def test_a_proxy_error_page_still_keeps_the_key(sqlite_server: Server, tmp_path: Path) -> None:
    ent = enroll_enterprise(sqlite_server, tmp_path, "Proxy Error Co.")
    out = tmp_path / "renewed"
    renew = ["renew", "--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    with answering(502) as stub:
        url = stub.url
        res = sqlite_server.eport("--server", url, *renew, "--out", str(out), check=False)
    line = one_line(res, 1, "the CA may have issued the certificate")
    assert (out / "key.pem").exists(), line
