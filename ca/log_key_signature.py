"""The root's signature of the transparency log's key: ``<data_dir>/ca/log.pub.sig``.

An auditor's first ``eport audit verify`` had nothing to check the log's key against but
the ceremony's public record (``log.pub``, whose hash ``ceremony.json`` names, signed by
nobody): it trusted the key the server named on first use. The root is the one anchor
every member agency publishes through its own channels, so the ceremonies that make a
log key and hold the root key (``eport ca init``, the development CA's first start,
``ROTATE-LOG-KEY`` and ``REPLACE-LOG-KEY``: :mod:`ca.root_ops`) sign it with the root
key, and ``eport audit verify --root ROOT.crt`` pins a key only with a signature that
verifies under that root.

What the root signs is the canonical message::

    eport-log-key-signature/v1\\n
    sha256 <hex of log.pub, the key's PEM SubjectPublicKeyInfo>\\n

in the format of the custody record's signature (:mod:`ca.custody_signature`, whose
checks this module shares)::

    {"format": "eport-log-key-signature/v1", "algorithm": "ecdsa-with-SHA384",
     "log_key_sha256": "<hex>", "root_sha256": "<hex>", "signature": "<base64>"}

Only ``signature`` is trusted, once it verifies over the message rebuilt from the key;
the message starts with its format tag, so it is taken for nothing else the root signs.
A CA made before this file existed has none: its auditors trust its key on first use
(and compare it with the ceremony record) until its next log key ceremony signs one.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from cryptography import x509

from ca.custody_signature import root_signature, signature_document, verify_root_signature
from ca.errors import EPortError
from ca.hierarchy import ca_dir
from ca.signer import Signer

SIGNATURE_FILE = "log.pub.sig"
FORMAT = "eport-log-key-signature/v1"


class LogKeySignatureRefused(EPortError):
    """A log key whose signature is missing, malformed, or not the root's."""

    slug = "log-key-signature-refused"
    title = "The log key is not signed by this CA's root"


def signature_path(data_dir: Path) -> Path:
    return ca_dir(data_dir) / SIGNATURE_FILE


def _message(log_pub: bytes) -> bytes:
    return f"{FORMAT}\nsha256 {hashlib.sha256(log_pub).hexdigest()}\n".encode()


def sign_log_key(signer: Signer, root: x509.Certificate, log_pub: bytes) -> bytes:
    """The signature file of ``log_pub`` (the exact bytes of ``log.pub``), made with the
    root key behind ``signer``; raises unless that key is ``root``'s and it verifies."""
    doc = {
        "format": FORMAT,
        "log_key_sha256": hashlib.sha256(log_pub).hexdigest(),
        **root_signature(signer, root, _message(log_pub), LogKeySignatureRefused, "the log key"),
    }
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    verify_log_key(root, log_pub, data)
    return data


def verify_log_key(root: x509.Certificate, log_pub: bytes, signature_file: bytes) -> None:
    """Raise :class:`LogKeySignatureRefused`, saying why, unless ``signature_file`` holds
    ``root``'s signature of exactly ``log_pub``."""
    doc = signature_document(signature_file, FORMAT, LogKeySignatureRefused)
    verify_root_signature(
        root,
        _message(log_pub),
        doc,
        LogKeySignatureRefused,
        changed=str(doc.get("log_key_sha256", "")) != hashlib.sha256(log_pub).hexdigest(),
        other="its signature is of another log key (the key was replaced after it)",
    )


def state_of(data_dir: Path, log_pub: bytes) -> tuple[dict[str, object] | None, str | None]:
    """This host's root signature of ``log_pub`` (the log key it serves): the signature
    document and None when it verifies under this host's ``ca/root.crt``; None and why
    when the file is there but does not (changed, damaged, or of a key a rotation
    replaced); None and None when there is none (a CA made before its root signed its log
    key). The verification is kept per file contents: health asks on every call."""
    d = ca_dir(data_dir)
    try:
        signature = signature_path(data_dir).read_bytes()
        root_pem = (d / "root.crt").read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{exc.strerror or exc}"
    why = _verdict(root_pem, log_pub, signature)
    if why is not None:
        return None, why
    doc: dict[str, object] = json.loads(signature)
    return doc, None


@functools.lru_cache(maxsize=8)
def _verdict(root_pem: bytes, log_pub: bytes, signature: bytes) -> str | None:
    try:
        verify_log_key(x509.load_pem_x509_certificate(root_pem), log_pub, signature)
    except LogKeySignatureRefused as exc:
        return exc.detail
    except ValueError as exc:  # root.crt not PEM
        return str(exc)
    return None
