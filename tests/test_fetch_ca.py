"""cli.fetchca against a server that is not the CA it claims to be: an issuing CA the
root did not sign, or a root CRL it did not sign, is refused and nothing is written."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from cli.client import CLIError
from cli.fetchca import fetch_ca, root_digest
from tests.helpers import self_signed

PEM = serialization.Encoding.PEM


@contextmanager
def serving(doc: dict[str, object], crl: bytes) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/ca/v1/ca":
                body, kind = json.dumps(doc).encode(), "application/json"
            elif self.path == "/crl/root.crl":
                body, kind = crl, "application/pkix-crl"
            else:
                body, kind = b"{}", "application/json"
                self.send_response(404)
            if self.path in ("/ca/v1/ca", "/crl/root.crl"):
                self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_what_the_root_did_not_sign_is_refused(tmp_path: Path) -> None:
    root, _ = self_signed("E-Port Root CA (test)")
    stranger, _ = self_signed("E-Port Enterprise Issuing CA (test)")
    digest = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    doc = {
        "root": root.public_bytes(PEM).decode(),
        "generations": {"enterprise": stranger.public_bytes(PEM).decode()},
    }
    data = tmp_path / "auth-data"
    with serving(doc, b"not a CRL") as url:
        with pytest.raises(CLIError, match="enterprise's certificate is not signed by the root"):
            fetch_ca(url, data, digest)
        doc["generations"] = {"../../etc/x": root.public_bytes(PEM).decode()}
        with pytest.raises(CLIError, match="names an issuing CA"):
            fetch_ca(url, data, digest)
        doc["generations"] = {"root-again": root.public_bytes(PEM).decode()}
        with pytest.raises(CLIError, match="root CRL the server sent cannot be used"):
            fetch_ca(url, data, digest)
    assert not data.exists()


def test_a_root_digest_is_read_as_openssl_prints_it() -> None:
    hexed = "ab" * 32
    assert root_digest(":".join(["AB"] * 32)) == hexed
    assert root_digest(f"sha256={hexed}") == hexed
    openssl = "sha256 Fingerprint=" + ":".join(["AB"] * 32)  # its whole line, pasted
    assert root_digest(openssl) == hexed
    with pytest.raises(CLIError, match="64 digits"):
        root_digest("abcd")
