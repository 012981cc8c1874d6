"""The CLI against an https:// server whose certificate it does not trust: it said
"cannot make a TLS connection (an http:// server given as https://?)", pointing at the
wrong cause; the way to trust a private CA (REQUESTS_CA_BUNDLE) was said nowhere."""

from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import EPORT, TEST_SETTINGS
from tests.test_introspection_mtls import proxy_certificate


@contextmanager
def _https(tmp: Path) -> Iterator[tuple[str, Path]]:
    crt, key = proxy_certificate(tmp)  # self-signed, for 127.0.0.1

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"type": "about:blank", "title": "Not Found", "status": 404, "detail": "here"}'
            self.send_response(404)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", crt
    finally:
        server.shutdown()
        server.server_close()


def _show(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EPORT_", "REQUESTS_"))}
    return subprocess.run(
        [EPORT, "application", "show", "app_aaaaaaaaaaaaaaaa"],
        capture_output=True,
        text=True,
        env={**clean, **TEST_SETTINGS, "EPORT_SERVER": url, **env},
        timeout=60,
    )


def test_an_untrusted_server_certificate_is_named_with_its_remedy(tmp_path: Path) -> None:
    with _https(tmp_path) as (url, crt):
        refused = _show(url)
        assert refused.returncode == 1, refused
        assert refused.stderr.strip() == (
            f"eport: error: the TLS certificate of {url} is not trusted here: give the CA "
            "that issued it in REQUESTS_CA_BUNDLE (a PEM file), or check EPORT_SERVER"
        ), refused.stderr
        trusted = _show(url, REQUESTS_CA_BUNDLE=str(crt))
        # trusted, the request reached the server (its 404 for this path)
        assert "not trusted" not in trusted.stderr, trusted.stderr
        assert "has no /ca/v1/applications/" in trusted.stderr, trusted.stderr
