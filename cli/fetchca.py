"""``eport auth fetch-ca``: the CA's public files for a token service run apart.

A token service started with ``eport serve --only auth`` trusts the CA's public files in
its own ``DATA_DIR/ca/``: the root certificate, every issuing CA generation's certificate
and the root CRL. Copied by hand after each ceremony, in the right order, they went
wrong in ways the probes found (a generation copied first, a half-copied CRL). This
command fetches them from the CA's public API instead and writes them as the token
service reads them, ``generation`` last, so that running workers reload once.

Nothing fetched is believed for being fetched: the root must have the SHA-256 given
(the ceremony's transcript prints it: ``eport ca init``) or, on later runs, be the root
already there; every issuing CA certificate must be signed by that root, and the root
CRL too. A refusal writes nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from cli.client import CLIError, not_ours, send

_HEX = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")
"""An issuing CA generation's id, as a file name (``issuers/<id>.crt``)."""


def root_digest(text: str) -> str:
    """A SHA-256 as given: hex, any case, colons or blanks allowed (as ``openssl x509
    -fingerprint -sha256`` prints it)."""
    # openssl's whole line too: "sha256 Fingerprint=10:D5:..."
    digest = re.sub(r"[\s:]", "", text.rsplit("=", 1)[-1]).lower()
    if not _HEX.fullmatch(digest):
        raise CLIError(f"--root-sha256 is not a SHA-256 in hex (64 digits): {text!r}")
    return digest


def _pem(text: object, what: str, server: str) -> x509.Certificate:
    if not isinstance(text, str):
        raise CLIError(f"the server at {server} sent no {what} (is it the e-port CA?)")
    try:
        return x509.load_pem_x509_certificate(text.encode())
    except ValueError:
        raise CLIError(f"the {what} the server at {server} sent is not a certificate") from None


def _get(http: requests.Session, server: str, path: str, timeout: float) -> requests.Response:
    resp = send(http, "GET", server, server + path, timeout=timeout)
    foreign = not_ours(resp, server) if resp.status_code != 200 else None
    if foreign is not None:
        raise foreign
    if resp.status_code != 200:
        raise CLIError(f"the server at {server} answered HTTP {resp.status_code} for {path}")
    return resp


def fetch_ca(
    server: str, data_dir: Path, root_sha256: str | None, *, timeout: float = 30.0
) -> dict[str, Any]:
    """Fetch, check and write the CA's public files into ``data_dir/ca/``; what changed."""
    from ca import hierarchy
    from ca.generation import bump_generation
    from ca.trust import anchors_for

    server = server.rstrip("/")
    ca_dir = hierarchy.ca_dir(data_dir)
    here = ca_dir / "root.crt"
    held: x509.Certificate | None = None
    if here.is_file():
        held = x509.load_pem_x509_certificate(here.read_bytes())
    if root_sha256 is None and held is None:
        raise CLIError(
            f"{ca_dir} has no root certificate yet: give --root-sha256 with the root's "
            "SHA-256 from the CA's ceremony (eport ca init prints it), so that the root "
            "fetched is the CA's and not whoever answers at the address"
        )
    with requests.Session() as http:
        doc = _get(http, server, "/ca/v1/ca", timeout).json()
        if not isinstance(doc, dict):
            raise CLIError(f"the server at {server} sent no CA certificates")
        root = _pem(doc.get("root"), "root certificate", server)
        der = root.public_bytes(serialization.Encoding.DER)
        got = hashlib.sha256(der).hexdigest()
        if root_sha256 is not None and got != root_sha256:
            raise CLIError(
                f"the root the server at {server} sent has SHA-256 {got}, not the "
                f"{root_sha256} given: nothing was written"
            )
        if held is not None and held != root:
            raise CLIError(
                f"the root the server at {server} sent is not the one in {here} (SHA-256 "
                f"{got}): another CA, or a new root, which this command does not take; "
                "nothing was written"
            )
        generations = doc.get("generations")
        if not isinstance(generations, dict) or not generations:
            raise CLIError(
                f"the server at {server} lists no issuing CA generations (a CA of an earlier "
                "release: copy its ca/issuers/*.crt by hand, docs/token-service.md)"
            )
        issuers: dict[str, x509.Certificate] = {}
        for gen, text in sorted(generations.items()):
            if not isinstance(gen, str) or not _ID.fullmatch(gen):
                raise CLIError(f"the server at {server} names an issuing CA {gen!r}")
            cert = _pem(text, f"issuing CA {gen}'s certificate", server)
            try:
                cert.verify_directly_issued_by(root)
            except (InvalidSignature, ValueError, TypeError) as exc:
                raise CLIError(
                    f"issuing CA {gen}'s certificate is not signed by the root "
                    f"({type(exc).__name__}): nothing was written"
                ) from None
            issuers[gen] = cert
        crl = _get(http, server, "/crl/root.crl", timeout).content
    try:
        anchors_for(root, issuers, crl)  # the root CRL is the root's, as the service checks
    except ValueError as exc:
        raise CLIError(f"the root CRL the server sent cannot be used ({exc})") from None
    pem = serialization.Encoding.PEM
    wanted: dict[Path, bytes] = {
        ca_dir / "issuers" / f"{gen}.crt": cert.public_bytes(pem) for gen, cert in issuers.items()
    }
    wanted[ca_dir / "root.crl"] = crl
    if held is None:
        wanted[here] = root.public_bytes(pem)
    changed = sorted(
        str(path.relative_to(ca_dir))
        for path, data in wanted.items()
        if not path.is_file() or path.read_bytes() != data
    )
    if changed:
        (ca_dir / "issuers").mkdir(parents=True, exist_ok=True)
        for path, data in wanted.items():
            if str(path.relative_to(ca_dir)) in changed:
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)  # never half a file where the service reads
        bump_generation(data_dir)  # last: the workers reload once, the whole set there
    return {
        "server": server,
        "ca_dir": str(ca_dir),
        "root_sha256": got,
        "generations": sorted(issuers),
        "changed": changed,
    }
