"""Browser single sign-on end to end: Debian's chromium (Playwright for Python) presents an
operator's client certificate to a real nginx that terminates TLS, verifies the
certificate to the joint CA and forwards it to the e-port server; two instances of the
sample web service (Authlib's Flask client) sign the user in through the OpenID Connect
provider.

certificate → portal → service A → service B without a prompt → logout at B → both
services signed out; then a revoked certificate ends the browser session within the token
service's 5 s bound. Every TLS certificate here comes from our own CA: a service-tls
certificate for each of nginx's host names, an operator certificate for the browser.

Name resolution: the host names are ``*.eport.example`` (RFC 2606) on 127.0.0.1. Python
(this process: the sample services and the test's own requests) gets them from a patched
``socket.getaddrinfo``; Playwright's driver, which makes the TLS connections that carry
the client certificate, from a ``--require``'d ``dns.lookup`` shim. Both are what an
``/etc/hosts`` line would do, without touching the machine. TLS is verified for real:
Playwright's driver trusts the joint CA's root (``NODE_EXTRA_CA_CERTS``) and checks every
origin with ``ignore_https_errors=False``; the sample services verify with ``CA_BUNDLE``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from werkzeug.serving import make_server

from tests.conftest import REPO, Server, free_port, need, start_server, stop
from tests.helpers import (
    chromium,
    creds,
    enroll_enterprise,
    enroll_operator,
    enroll_service,
    jrun,
    nginx,
    serial_of,
)
from tests.test_oidc import BOUND, write_policies

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
SITE = REPO / "examples" / "web_service" / "nginx.conf"
# The picture in docs/ is refreshed only on request (EPORT_UPDATE_SCREENSHOTS=1), so a
# test run never leaves the work tree changed; otherwise it goes to a temporary file.
SCREENSHOT = (
    REPO / "docs" / "portal.png"
    if os.environ.get("EPORT_UPDATE_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "eport-portal.png"
)
PASSPHRASE = "test-passphrase-123"  # what tests.conftest.Server gives the CLI for new keys
HOSTS = ("sso", "sample-a", "sample-b")
SUFFIX = ".eport.example"

NODE_HOSTS = """
// Resolve *.eport.example to 127.0.0.1 in Playwright's driver (what /etc/hosts would do).
const dns = require('dns');
const match = (h) => typeof h === 'string' && h.toLowerCase().endsWith('.eport.example');
const lookup = dns.promises.lookup;
dns.promises.lookup = function (host, options) {
  if (!match(host)) return lookup.apply(this, arguments);
  const family = options && typeof options === 'object' ? options.family : options;
  const all = options && typeof options === 'object' && options.all;
  if (family === 6) return all ? Promise.resolve([]) : Promise.reject(new Error('no AAAA'));
  const a = { address: '127.0.0.1', family: 4 };
  return Promise.resolve(all ? [a] : a);
};
const cb = dns.lookup;
dns.lookup = function (host, options, callback) {
  if (!match(host)) return cb.apply(this, arguments);
  if (typeof options === 'function') { callback = options; options = {}; }
  const a = { address: '127.0.0.1', family: 4 };
  if (options && options.all) return process.nextTick(callback, null, [a]);
  process.nextTick(callback, null, a.address, a.family);
};
"""


@contextlib.contextmanager
def eport_hosts() -> Iterator[None]:
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.lower().endswith(SUFFIX):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    socket.getaddrinfo = resolve
    try:
        yield
    finally:
        socket.getaddrinfo = real


@contextlib.contextmanager
def sample_service(config: dict[str, str], port: int) -> Iterator[Any]:
    from examples.web_service.app import create_app

    app = create_app(config)
    http = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield app
    finally:
        http.shutdown()
        http.server_close()


@dataclass
class Deployment:
    server: Server
    port: int
    ent: Path
    op: Path
    root_ca: Path
    tmp: Path

    def origin(self, host: str) -> str:
        return f"https://{host}{SUFFIX}:{self.port}"


def issue_tls(srv: Server, tmp: Path) -> Path:
    """A service-tls certificate for each host name, in the layout nginx.conf expects."""
    tls = tmp / "tls"
    tls.mkdir()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        issued = dict(
            zip(
                HOSTS,
                pool.map(lambda h: enroll_service(srv, tmp, h + SUFFIX), HOSTS),
                strict=True,
            )
        )
    for host, d in issued.items():
        out = tls / (host + SUFFIX)
        out.mkdir()
        (out / "fullchain.pem").write_text(
            (d / "cert.pem").read_text() + (d / "chain.pem").read_text()
        )
        shutil.copy(d / "key.pem", out / "key.pem")
    (tls / "passphrase.txt").write_text(PASSPHRASE + "\n")
    ca = srv.data_dir / "ca"
    bundle = [(ca / "root.crt").read_text()]
    bundle += [p.read_text() for p in sorted((ca / "issuers").glob("*.crt"))]
    (tls / "eport-ca.pem").write_text("".join(bundle))
    return tls


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    need("nginx", "/usr/sbin/nginx")
    need("chromium", CHROMIUM)
    tmp = tmp_path_factory.mktemp("sso")
    port, port_a, port_b = free_port(), free_port(), free_port()
    policies = write_policies(
        tmp / "policies",
        https_port=port,
        backchannel={
            "sample-a": f"http://127.0.0.1:{port_a}/backchannel-logout",
            "sample-b": f"http://127.0.0.1:{port_b}/backchannel-logout",
        },
    )
    srv, proc = start_server(
        tmp / "data",
        extra_env={
            "EPORT_AUTH_TRUSTED_PROXIES": "127.0.0.1/32",
            "EPORT_PUBLIC_BASE_URL": f"https://sso{SUFFIX}:{port}",
            "EPORT_POLICIES_DIR": str(policies),
        },
    )
    try:

        def operator() -> tuple[Path, Path]:
            ent = enroll_enterprise(srv, tmp, "Browser Trading Co.")
            op = enroll_operator(srv, ent, tmp, "B1")
            jrun(srv, "roles", "grant", "--operator", "B1", "--role", "data-entry", *creds(ent))
            return ent, op

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            people = pool.submit(operator)
            tls = issue_tls(srv, tmp)
            ent, op = people.result()
        root = srv.data_dir / "ca" / "root.crt"
        site = (
            SITE.read_text()
            .replace("127.0.0.1:8443", f"127.0.0.1:{port}")
            .replace("127.0.0.1:8000", srv.url.removeprefix("http://"))
            .replace("127.0.0.1:5101", f"127.0.0.1:{port_a}")
            .replace("127.0.0.1:5102", f"127.0.0.1:{port_b}")
            .replace("/etc/eport/tls", str(tls))
        )
        issuer = f"https://sso{SUFFIX}:{port}/auth"
        (tmp / "nginx").mkdir()
        apps = {}
        with (
            eport_hosts(),
            nginx(tmp / "nginx", site, port),
            sample_service(
                {
                    "EPORT_ISSUER": issuer,
                    "OIDC_CLIENT_ID": "sample-a",
                    "PUBLIC_URL": f"https://sample-a{SUFFIX}:{port}",
                    "SERVICE_NAME": "Sample Web Service A",
                    "CA_BUNDLE": str(root),
                },
                port_a,
            ) as apps["a"],
            sample_service(
                {
                    "EPORT_ISSUER": issuer,
                    "OIDC_CLIENT_ID": "sample-b",
                    "PUBLIC_URL": f"https://sample-b{SUFFIX}:{port}",
                    "SERVICE_NAME": "Sample Web Service B",
                    "CA_BUNDLE": str(root),
                },
                port_b,
            ) as apps["b"],
        ):
            yield Deployment(srv, port, ent, op, root, tmp)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser(deployment: Deployment) -> Iterator[Any]:
    shim = deployment.tmp / "eport-hosts.js"
    shim.write_text(NODE_HOSTS)
    with pytest.MonkeyPatch.context() as mp:
        # Read by Playwright's driver (Node) when it starts: trust the joint CA's root,
        # resolve the test's host names.
        mp.setenv("NODE_EXTRA_CA_CERTS", str(deployment.root_ca))
        mp.setenv("NODE_OPTIONS", f"--require {shim}")
        with chromium() as b:
            yield b


def new_context(browser: Any, d: Deployment) -> Any:
    cert = {
        "certPath": str(d.op / "cert.pem"),
        "keyPath": str(d.op / "key.pem"),
        "passphrase": PASSPHRASE,
    }
    # Playwright carries client certificates in its driver, which then makes (and checks)
    # the TLS connections of the origins listed here; the sample services are listed too
    # so that their server certificates are checked as strictly (they ask for no client
    # certificate, so none is sent to them).
    return browser.new_context(
        client_certificates=[{"origin": d.origin(h), **cert} for h in HOSTS],
        ignore_https_errors=False,
        viewport={"width": 1280, "height": 900},
    )


def check_tls_and_proxy_headers(d: Deployment) -> None:
    """nginx serves certificates of our CA, and strips certificate headers a client sends."""
    with eport_hosts():
        for host, path in zip(HOSTS, ("/auth/jwks.json", "/", "/"), strict=True):
            r = requests.get(d.origin(host) + path, verify=str(d.root_ca), timeout=10)
            assert r.status_code == 200, (host, r.status_code)
        cert = x509.load_pem_x509_certificate((d.op / "cert.pem").read_bytes())
        der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        for spoof in ({"Client-Cert": f":{der}:"}, {"X-SSL-Client-Cert": pem.replace("\n", "%0A")}):
            r = requests.post(
                d.origin("sso") + "/auth/login/mtls",
                headers=spoof,
                verify=str(d.root_ca),
                timeout=10,
            )
            assert r.status_code == 401 and r.json()["error"] == "invalid_client", spoof
        # Without the CA's root, the same TLS connection is refused.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(d.origin("sso") + "/portal/", timeout=10)


def test_browser_single_sign_on(deployment: Deployment, browser: Any) -> None:
    """One test, in order (one deployment, however pytest-xdist spreads the tests)."""
    check_tls_and_proxy_headers(deployment)
    sign_on_and_logout(deployment, browser)
    revocation_ends_the_session(deployment, browser)


def sign_on_and_logout(d: Deployment, browser: Any) -> None:
    context = new_context(browser, d)
    page = context.new_page()
    documents: list[tuple[str, int]] = []
    page.on(
        "response",
        lambda r: (
            documents.append((r.url, r.status)) if r.request.resource_type == "document" else None
        ),
    )

    # The certificate signs in at the portal.
    resp = page.goto(d.origin("sso") + "/portal/")
    assert resp is not None and resp.status == 200, page.content()
    assert page.locator("#who-name").inner_text() == "Operator B1"
    assert page.locator("#cert-serial").inner_text() == serial_of(d.op)
    assert page.locator("#subject-class").inner_text() == "operator"
    names = page.locator("li.service .service-name").all_inner_texts()
    assert {"Sample Web Service A", "Sample Web Service B", "Customs Declaration"} <= set(names)
    assert "Export Tax Rebate" not in names
    sso = next(c for c in context.cookies() if c["name"] == "__Host-eport-sso")
    assert sso["secure"] and sso["httpOnly"] and sso["sameSite"] == "Lax"
    assert sso["path"] == "/" and sso["domain"] == f"sso{SUFFIX}"

    # Service A: its sign-in link goes through the provider and back, signed in.
    page.locator("li.service[data-service=sample-a] a").click()
    page.wait_for_url(d.origin("sample-a") + "/")
    assert page.locator("#anonymous").count() == 1
    page.click("#login")
    page.wait_for_url(d.origin("sample-a") + "/")
    assert page.locator("#user-name").inner_text() == "Operator B1"
    sid = page.locator("#user-sid").inner_text()

    # Service B: no prompt, no page of the provider's: straight back with a code.
    page.goto(d.origin("sample-b") + "/")
    documents.clear()
    page.click("#login")
    page.wait_for_url(d.origin("sample-b") + "/")
    assert page.locator("#user-name").inner_text() == "Operator B1"
    assert page.locator("#user-sid").inner_text() == sid  # one SSO session
    at_provider = [(u, s) for u, s in documents if u.startswith(d.origin("sso"))]
    assert at_provider and all(s == 302 for _, s in at_provider), documents

    # The portal knows where this session signed in; its picture goes in the docs.
    page.goto(d.origin("sso") + "/portal/")
    assert page.locator(".badge").count() == 2
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Logout at B: RP-initiated logout, then back-channel logout reaches A as well.
    page.goto(d.origin("sample-b") + "/")
    page.click("#logout")
    page.wait_for_url(d.origin("sample-b") + "/signed-out*")
    assert "You are signed out of the e-port" in page.locator("#note").inner_text()
    assert not [c for c in context.cookies() if c["name"] == "__Host-eport-sso"]
    page.goto(d.origin("sample-a") + "/")
    assert page.locator("#anonymous").count() == 1
    page.goto(d.origin("sample-b") + "/")
    assert page.locator("#anonymous").count() == 1

    # The portal's own sign-out: a form with its CSRF token, posted by the browser itself
    # (with its Origin header). The certificate opened a new session first.
    page.goto(d.origin("sso") + "/portal/")
    page.click("#logout")
    page.wait_for_url(d.origin("sso") + "/portal/signed-out")
    assert page.locator("h1").inner_text() == "You are signed out"
    assert not [c for c in context.cookies() if c["name"] == "__Host-eport-sso"]
    context.close()


def revocation_ends_the_session(d: Deployment, browser: Any) -> None:
    srv = d.server
    context = new_context(browser, d)
    page = context.new_page()
    assert page.goto(d.origin("sso") + "/portal/").status == 200
    page.goto(d.origin("sample-a") + "/")
    page.click("#login")
    page.wait_for_url(d.origin("sample-a") + "/")
    assert page.locator("#user-name").inner_text() == "Operator B1"

    t0 = time.monotonic()
    jrun(srv, "revoke", "--serial", serial_of(d.op), "--reason", "keyCompromise", *creds(d.ent))
    t1 = time.monotonic()
    while True:  # the portal: the session is gone and the certificate refused
        status = page.goto(d.origin("sso") + "/portal/").status
        if status == 403:
            portal = time.monotonic() - t1
            break
        assert status == 200
        assert time.monotonic() - t1 < BOUND, "the browser session outlived the bound"
        time.sleep(0.1)
    assert "revoked" in page.content()
    while True:  # service A: told by the back channel
        page.goto(d.origin("sample-a") + "/")
        if page.locator("#anonymous").count() == 1:
            service = time.monotonic() - t1
            break
        assert time.monotonic() - t1 < BOUND + 2, "service A was not told"
        time.sleep(0.1)
    print(
        f"\nrevocation -> portal refuses the browser {portal:.2f} s, service A signed out "
        f"{service:.2f} s after `eport revoke` returned ({t1 - t0:.2f} s to run it)"
    )
    context.close()
