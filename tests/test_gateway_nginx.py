"""A real nginx (Debian's) in front of the sample customs declaration service, asking the
token service ``GET /auth/validate`` for every request (``auth_request``).

The gateway configuration is ``examples/customs_declaration/nginx.conf`` itself, with
free ports put in; the test measures how long a logout and a certificate revocation
take to turn a good token into a 401 at the gateway (the documented bound: 5 s).

Last, nginx in front of the e-port server itself, forwarding to it as a TLS-terminating
proxy does (``X-Forwarded-Proto: https``, the ``Host`` it was asked for): the audit
view's sign-in link and the portal's and OpenID provider's links and cookies follow the
configured https public base URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.conftest import REPO, Server, free_port, start_server, stop
from tests.helpers import (
    HttpStub,
    cert_of,
    creds,
    enroll_enterprise,
    enroll_operator,
    grant_roles,
    jrun,
    nginx,
    serial_of,
)
from tests.test_sdk import example_app, expired, forged, login

SITE = REPO / "examples" / "customs_declaration" / "nginx.conf"
BOUND = 5.0  # seconds: the documented revocation-to-inactive bound


@dataclass
class Gateway:
    url: str
    server: Server
    ent: Path
    tmp: Path

    def get(self, token: str | None, **headers: str) -> requests.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.get(self.url + "/declarations", headers=headers, timeout=10)


@contextlib.contextmanager
def gateway_nginx(tmp: Path, eport: str, app: str) -> Iterator[str]:
    """The example's nginx.conf, pointed at this test's e-port server and sample app."""
    port = free_port()
    site = (
        SITE.read_text()
        .replace("127.0.0.1:8000", eport)
        .replace("127.0.0.1:5080", app)
        .replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    )
    with nginx(tmp, site, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def gateway(sqlite_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw")
    ent = enroll_enterprise(sqlite_server, tmp, "Gateway Trading Co., Ltd.")
    eport = sqlite_server.url.removeprefix("http://")
    with (
        example_app(sqlite_server) as app_url,
        gateway_nginx(tmp, eport, app_url.removeprefix("http://")) as url,
    ):
        yield Gateway(url, sqlite_server, ent, tmp)


def submit(gw: Gateway, token: str) -> requests.Response:
    return requests.post(
        gw.url + "/declarations",
        json={"goods": "tea"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def wait_refused(gw: Gateway, token: str, since: float) -> float:
    """Seconds from ``since`` until the gateway refuses ``token`` (401)."""
    while True:
        r = gw.get(token)
        if r.status_code == 401:
            return time.monotonic() - since
        assert r.status_code == 200, r.text
        assert time.monotonic() - since < BOUND, f"still accepted {BOUND} s later"
        time.sleep(0.05)


def test_gateway_passes_identity_to_the_service(gateway: Gateway, tmp_path: Path) -> None:
    op = enroll_operator(gateway.server, gateway.ent, tmp_path, "gw-reader", "data-entry")
    session = login(gateway.server, op, tmp_path)
    token = session.token()
    ok = gateway.get(token)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["gateway_subject"] == body["subject"] and body["subject"].endswith(":gw-reader")
    # A client cannot name itself: the gateway replaces the header.
    forged = {
        "X-Eport-Subject": "op:91350100M000100Y43:boss",
        "X-Eport-USCC": "91350100M000100Y43X",
        "X-Eport-Operator": "boss",
        "X-Eport-Agency": "customs",
        "X-Eport-Scope": "declaration:submit",
        "X-Eport-Client": "svc:portal.eport.example",
    }
    spoofed = gateway.get(token, **forged).json()
    assert spoofed["gateway_subject"] == body["subject"]
    # Each of the six identity headers /auth/validate answers is the gateway's, or absent
    # when the token has none (an operator has no agency): never the client's.
    seen = {k.lower(): v for k, v in spoofed["gateway_headers"].items()}
    assert seen == {k.lower(): v for k, v in body["gateway_headers"].items()}
    assert seen["x-eport-operator"] == "gw-reader" and "x-eport-agency" not in seen
    for name, value in forged.items():
        assert seen.get(name.lower()) != value, name
    # The gateway asks for declaration:submit on POST: a reader gets 403 from the gateway.
    post = submit(gateway, token)
    assert post.status_code == 403  # (nginx forwards the challenge header on 401 only)
    # Once granted the declaration role, the operator's next token may submit.
    grant_roles(gateway.server, gateway.ent, "gw-reader", "data-entry", "declaration")
    submitter = session.token()
    post = submit(gateway, submitter)
    assert post.status_code == 201, post.text
    assert post.json()["declared_by"] == body["subject"]
    assert gateway.get(submitter).json()["declarations"] == [post.json()]


def test_gateway_refuses_bad_tokens(gateway: Gateway, tmp_path: Path) -> None:
    op = enroll_operator(gateway.server, gateway.ent, tmp_path, "gw-bad", "data-entry")
    session = login(gateway.server, op, tmp_path)
    token = session.token()
    none = gateway.get(None)
    assert none.status_code == 401
    assert none.headers.get("WWW-Authenticate", "").startswith("Bearer")
    for what, tok in {
        "garbage": "garbage",
        "forged": forged(token),
        "expired": expired(gateway.server, token),
        "another service's": session.token("manifest"),
    }.items():
        r = gateway.get(tok)
        assert r.status_code == 401, what
    assert gateway.get(token).status_code == 200


def test_a_token_service_that_cannot_judge_is_a_503_at_the_gateway(tmp_path: Path) -> None:
    """The example maps auth_request's 500 for a validation that got no answer (502: the
    token service down) or a 503 (it could not judge) to a 503 with Retry-After: a fault
    the client retries, not a refused token; the service behind is not reached."""
    hits: list[str] = []

    def service(_method: str, path: str, _body: bytes) -> tuple[int, str, bytes]:
        hits.append(path)
        return 200, "text/plain", b"served"

    app = HttpStub(service)
    down = f"127.0.0.1:{free_port()}"  # no token service listens there
    try:
        with gateway_nginx(tmp_path, down, app.url.removeprefix("http://")) as url:
            r = requests.get(
                url + "/declarations", headers={"Authorization": "Bearer x.y.z"}, timeout=10
            )
            assert r.status_code == 503 and r.headers["Retry-After"] == "5", (r, r.headers)
    finally:
        app.close()
    assert hits == []


def test_logout_reaches_the_gateway(gateway: Gateway, tmp_path: Path) -> None:
    op = enroll_operator(gateway.server, gateway.ent, tmp_path, "gw-logout", "data-entry")
    session = login(gateway.server, op, tmp_path)
    token = session.token()
    assert gateway.get(token).status_code == 200
    session.logout()
    delay = wait_refused(gateway, token, time.monotonic())
    print(f"\nlogout -> 401 at the nginx gateway: {delay:.2f} s")


def test_revocation_reaches_the_gateway(gateway: Gateway, tmp_path: Path) -> None:
    op = enroll_operator(gateway.server, gateway.ent, tmp_path, "gw-revoked", "data-entry")
    session = login(gateway.server, op, tmp_path)
    token = session.token()
    assert gateway.get(token).status_code == 200
    # The enterprise revokes its operator's certificate through the CA; the revocation
    # commits somewhere while the command runs, between t0 and t1.
    t0 = time.monotonic()
    done = jrun(
        gateway.server,
        "revoke",
        "--serial",
        serial_of(op),
        "--reason",
        "keyCompromise",
        *creds(gateway.ent),
    )
    t1 = time.monotonic()
    assert done["status"] == "revoked"
    delay = wait_refused(gateway, token, t1)
    print(
        f"\ncertificate revocation -> 401 at the nginx gateway: {delay:.2f} s after "
        f"`eport revoke` returned ({delay + t1 - t0:.2f} s after it started)"
    )
    # The session is ended: no new token is minted from it.
    res = gateway.server.eport(
        "token", "--service", "customs-declaration", check=False, **session.cli_env
    )
    assert res.returncode != 0


def proxy_site(port: int, upstream: str) -> str:
    """What a TLS-terminating nginx sends upstream (examples/web_service/nginx.conf),
    without the TLS: the e-port server sees the same plain HTTP request either way."""
    return f"""
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://{upstream};
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
}}
"""


def cookie_attributes(set_cookie: str) -> set[str]:
    return {part.strip().lower() for part in set_cookie.split(";")[1:]}


@pytest.mark.slow
def test_links_and_cookies_behind_a_tls_proxy(tmp_path: Path) -> None:
    port = free_port()
    public = f"https://eport.example:{port}"
    env = {"EPORT_PUBLIC_BASE_URL": public, "EPORT_TRUSTED_PROXIES": "127.0.0.1"}
    srv, proc = start_server(tmp_path / "data", extra_env=env)
    try:
        ent = enroll_enterprise(srv, tmp_path, "Proxy Trading Co., Ltd.")
        op = enroll_operator(srv, ent, tmp_path, "px-1", "data-entry")
        (tmp_path / "nginx").mkdir()
        with nginx(tmp_path / "nginx", proxy_site(port, srv.url.removeprefix("http://")), port):
            proxy = f"http://127.0.0.1:{port}"
            via = dataclasses.replace(srv, url=proxy)
            # The audit view: the link is on the public base URL, not on the Host nginx
            # forwarded over http; the session cookie it opens is Secure.
            doc = json.loads(via.eport("audit", "web-login", *srv.auditor(), "--json").stdout)
            assert doc["url"].startswith(public + "/audit/login?token="), doc["url"]
            # The trailing-slash redirect is relative: the browser stays on the scheme and
            # host it came in with (nginx's https), whatever a header says.
            r = requests.get(proxy + "/audit", allow_redirects=False, timeout=10)
            assert r.headers["Location"] == "/audit/", r.headers
            opened = requests.get(
                proxy + doc["url"].removeprefix(public), allow_redirects=False, timeout=10
            )
            assert opened.status_code == 303 and opened.headers["Location"] == "/audit/"
            raw = opened.headers["Set-Cookie"]
            assert raw.startswith("eport_audit=")
            attrs = cookie_attributes(raw)
            assert {"secure", "httponly", "samesite=lax", "path=/audit"} <= attrs, raw
            session = {"Cookie": raw.split(";")[0]}
            page = requests.get(proxy + "/audit/", headers=session, timeout=10)
            assert page.status_code == 200 and "Checkpoint" in page.text
            out = requests.post(
                proxy + "/audit/logout", headers=session, allow_redirects=False, timeout=10
            )
            assert "secure" in cookie_attributes(out.headers["Set-Cookie"])
            # The token service: its metadata names the public URLs, and the portal's SSO
            # cookie (the operator's certificate forwarded by the trusted proxy) is Secure.
            meta = requests.get(proxy + "/.well-known/openid-configuration", timeout=10).json()
            assert meta["issuer"] == public + "/auth"
            assert meta["authorization_endpoint"] == public + "/auth/authorize"
            assert meta["token_endpoint"] == public + "/auth/token"
            pem = (op / "cert.pem").read_text()
            portal = requests.get(
                proxy + "/portal/", headers={"X-SSL-Client-Cert": quote(pem)}, timeout=10
            )
            assert portal.status_code == 200, portal.text
            assert format(cert_of(op).serial_number, "x") in portal.text
            raw = portal.headers["Set-Cookie"]
            assert raw.startswith("__Host-eport-sso=")
            assert {"secure", "httponly", "samesite=lax", "path=/"} <= cookie_attributes(raw)
    finally:
        stop(proc)
