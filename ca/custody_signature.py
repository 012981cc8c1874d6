"""The root's signature of the custody record: ``<data_dir>/ca/custody.json.sig``.

``custody.json`` decides which share files open the root and seal KEKs. With several
hosts on one database, a host takes it from the database's hierarchy record
(:mod:`ca.crosshost`); the database is no authority for it (whoever can write the
database could plant a record that makes every host refuse the real custodians). So
the ceremonies that hold the root key (``eport ca init`` with custodians and ``eport ca
reshare``, both of which open ``root.key``) sign the **exact bytes** of the record with
the root key, and a host takes a record from the database only with a signature that
verifies under its **own** ``ca/root.crt``. The record's order
(:attr:`ca.custody.CustodyRecord.sequence`) is among those bytes, so an older record,
genuinely signed, cannot pass for a newer one.

The format is a small JSON document beside the record, not a CMS (RFC 5652) detached
signature: ``cryptography``'s PKCS#7 builder wants the private key object, and the
root key may be a PKCS#11 token key that only :class:`~ca.signer.Signer` reaches; and a
raw X.509-style signature over the file's bytes can be checked with the root
certificate alone, by this code or by ``openssl dgst -verify`` (an EC or RSA root)::

    {"format": "eport-custody-signature/v1", "algorithm": "ecdsa-with-SHA384",
     "record_sha256": "<hex>", "root_sha256": "<hex>", "signature": "<base64>"}

``signature`` is what :meth:`~ca.signer.Signer.sign` returns for the root's key type
(RFC 5480 / RFC 5758 ECDSA as DER ``Ecdsa-Sig-Value`` with SHA-256 or SHA-384, RFC 8017
PKCS #1 v1.5 with SHA-256, RFC 8410 Ed25519). Only ``signature`` is trusted, and only
once it verifies; the algorithm comes from the root certificate's key, never from the
file (the file's ``algorithm`` must agree). ``record_sha256`` and ``root_sha256`` let a
refusal say *why* in words (another record, another root) and are not trusted.

No domain separation is needed: the root otherwise signs DER (certificates, CRLs),
which starts with a SEQUENCE tag (``0x30``), and the message of ``issuers/active.json``'s
signature (:mod:`ca.active_signature`, which shares this module's checks), which starts
with its format tag (``e``); a custody record is a JSON object (``{``).

A record written before this file existed has none: it keeps working on its own host,
is never taken from the database, and the next re-share signs its successor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ca.custody import CustodyError
from ca.errors import EPortError
from ca.hierarchy import ca_dir
from ca.keys import KeyType
from ca.signer import Signer

SIGNATURE_FILE = "custody.json.sig"
FORMAT = "eport-custody-signature/v1"

_ALGORITHMS = {
    KeyType.P256: "ecdsa-with-SHA256",
    KeyType.P384: "ecdsa-with-SHA384",
    KeyType.ED25519: "Ed25519",
    KeyType.RSA2048: "sha256WithRSAEncryption",
    KeyType.RSA3072: "sha256WithRSAEncryption",
    KeyType.RSA4096: "sha256WithRSAEncryption",
}
"""The signature algorithm of each root key type (RFC 5758 §3.2, RFC 8410 §6, RFC 4055),
named as RFC 5280 names them in a certificate's signatureAlgorithm."""


class RecordSignatureRefused(CustodyError):
    """A custody record whose signature is missing, malformed, or not the root's."""

    slug = "custody-signature-refused"
    title = "The custody record is not signed by this CA's root"


def signature_path(data_dir: Path) -> Path:
    return ca_dir(data_dir) / SIGNATURE_FILE


def archived_signature_path(data_dir: Path, custody_id: str) -> Path:
    """The signature kept beside ``ca/custody-<id>.json`` (a re-share's archive)."""
    return ca_dir(data_dir) / f"custody-{custody_id}.json.sig"


def _sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def sign_record(signer: Signer, root: x509.Certificate, record: bytes) -> bytes:
    """The signature file of ``record`` (the exact bytes of ``custody.json``), made with
    the root key behind ``signer``; raises unless that key is ``root``'s and the
    signature verifies (a token that signed with another key is caught here)."""
    doc = {
        "format": FORMAT,
        "record_sha256": hashlib.sha256(record).hexdigest(),
        **root_signature(signer, root, record, RecordSignatureRefused, "the custody record"),
    }
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    verify_record(root, record, data)
    return data


def verify_record(root: x509.Certificate, record: bytes, signature_file: bytes) -> None:
    """Raise :class:`RecordSignatureRefused`, saying why, unless ``signature_file`` holds
    a signature of exactly ``record`` by ``root``'s key."""
    doc = signature_document(signature_file, FORMAT, RecordSignatureRefused)
    verify_root_signature(
        root,
        record,
        doc,
        RecordSignatureRefused,
        changed=str(doc.get("record_sha256", "")) != hashlib.sha256(record).hexdigest(),
        other="its signature is of another custody record (the record was changed after it)",
    )


# -- what every signature file of the root has in common (``issuers/active.json.sig``
# too: :mod:`ca.active_signature`) ------------------------------------------------------


def root_signature(
    signer: Signer,
    root: x509.Certificate,
    message: bytes,
    refused: type[EPortError],
    what: str,
) -> dict[str, str]:
    """The members ``algorithm``, ``root_sha256`` and ``signature`` of a signature file:
    ``message`` signed by the root key behind ``signer``; raises ``refused`` unless that
    key is ``root``'s (``what``: the signed thing, in words)."""
    if signer.public_key() != root.public_key():
        raise refused(f"the key that would sign {what} is not the root's")
    return {
        "algorithm": _ALGORITHMS[KeyType.of(root.public_key())],
        "root_sha256": _sha256(root),
        "signature": base64.b64encode(signer.sign(message)).decode(),
    }


def signature_document(
    signature_file: bytes, fmt: str, refused: type[EPortError]
) -> dict[str, object]:
    """The JSON object of a signature file of format ``fmt``; raises ``refused`` otherwise."""
    try:
        doc = json.loads(signature_file)
    except ValueError:
        raise refused("its signature file is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise refused(f"its signature file is not of format {fmt}")
    return doc


def verify_root_signature(
    root: x509.Certificate,
    message: bytes,
    doc: dict[str, object],
    refused: type[EPortError],
    *,
    changed: bool,
    other: str,
) -> None:
    """Raise ``refused``, saying why, unless ``doc``'s ``signature`` is ``root``'s key's
    over ``message``. ``changed``: whether the file's (untrusted) digest names other bytes
    than the ones checked, and ``other`` the words for it, chosen only once the signature
    failed."""
    public = root.public_key()
    expected = _ALGORITHMS[KeyType.of(public)]
    if doc.get("algorithm") != expected:
        raise refused(
            f"its signature is {doc.get('algorithm')!r}, but this root's key signs "
            f"{expected!r}: it was made by another key"
        )
    try:
        sig = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise refused("its signature is not base64") from None
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            h = KeyType.of(public).hash_algorithm
            assert h is not None
            public.verify(sig, message, ec.ECDSA(h))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(sig, message)
        else:  # KeyType.of refused any other type above
            raise refused(f"a root key of type {type(public).__name__}")
    except InvalidSignature:
        raise refused(_why_not(root, doc, changed, other)) from None


def _why_not(root: x509.Certificate, doc: dict[str, object], changed: bool, other: str) -> str:
    """Words for a signature that does not verify (the file's hints are not trusted:
    they only choose the words)."""
    ours = _sha256(root)
    theirs = str(doc.get("root_sha256", ""))
    if theirs != ours:
        return (
            f"its signature names another root (certificate SHA-256 {theirs[:16]}…, this "
            f"host's is {ours[:16]}…) and does not verify under this host's root.crt"
        )
    if changed:
        return other
    return "its signature does not verify under this host's root.crt"


def check_local(data_dir: Path) -> str | None:
    """Why this host's own ``custody.json`` is not signed by its root (None: it is);
    for status displays. A record without a signature file says so."""
    d = ca_dir(data_dir)
    try:
        sig = signature_path(data_dir).read_bytes()
    except FileNotFoundError:
        return (
            "unsigned (a record written before signed custody records; the next re-share signs it)"
        )
    root = x509.load_pem_x509_certificate((d / "root.crt").read_bytes())
    try:
        verify_record(root, (d / "custody.json").read_bytes(), sig)
    except RecordSignatureRefused as exc:
        return exc.detail
    return None
