"""cli.fetchca against a server that is not the CA it claims to be: an issuing CA the
root did not sign, or a root CRL it did not sign, is refused and nothing is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from cli.client import CLIError
from cli.fetchca import fetch_ca, root_digest
from tests.helpers import HttpStub, self_signed

PEM = serialization.Encoding.PEM


def serving(doc: dict[str, object], crl: bytes) -> HttpStub:
    """A server that says it is the CA: ``doc`` at /ca/v1/ca, ``crl`` at /crl/root.crl."""

    def answer(_method: str, path: str, _body: bytes) -> tuple[int, str, bytes]:
        if path == "/ca/v1/ca":
            return 200, "application/json", json.dumps(doc).encode()
        if path == "/crl/root.crl":
            return 200, "application/pkix-crl", crl
        return 404, "application/json", b"{}"

    return HttpStub(answer)


def test_what_the_root_did_not_sign_is_refused(tmp_path: Path) -> None:
    root, _ = self_signed("E-Port Root CA (test)")
    stranger, _ = self_signed("E-Port Enterprise Issuing CA (test)")
    digest = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    doc = {
        "root": root.public_bytes(PEM).decode(),
        "generations": {"enterprise": stranger.public_bytes(PEM).decode()},
    }
    data = tmp_path / "auth-data"
    with serving(doc, b"not a CRL") as stub:
        url = stub.url
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
