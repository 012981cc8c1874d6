"""The root's signature of which issuing CA generations issue:
``<data_dir>/ca/issuers/active.json.sig``.

``issuers/active.json`` maps an issuing CA id to the generation that issues now
(``{"enterprise": "enterprise-2"}`` after a rollover, ``""`` once ``REVOKE-INTERMEDIATE``
stopped it). With several hosts on one database, a host takes it from the database's
hierarchy record (:mod:`ca.crosshost`); the database is no authority for it (whoever can
write the database could switch every host back to an older generation the root has not
revoked, or stop issuance). So the ceremonies that write it (``ROTATE-ISSUER``,
``ISSUE-INTERMEDIATE``, ``REVOKE-INTERMEDIATE``: :mod:`ca.root_ops`), which hold the
root key, sign it, and a host takes the file from the database only with a signature
that verifies under its **own** ``ca/root.crt`` and is ordered after its own.

The signature covers the file's exact bytes **and an order**: ``sequence``, one more than
the previous signature's (1 for the first), so that an older file, genuinely signed,
cannot pass for a newer one. ``active.json`` keeps its format (every key is an issuer id
to its readers); the sequence is in the signature file, and what the root signs is the
canonical message::

    eport-active-signature/v1\\n
    sequence <n>\\n
    sha256 <hex of active.json>\\n

beside it, in the format of the custody record's signature (:mod:`ca.custody_signature`,
whose checks this module shares)::

    {"format": "eport-active-signature/v1", "algorithm": "ecdsa-with-SHA384",
     "sequence": 2, "active_sha256": "<hex>", "root_sha256": "<hex>",
     "signature": "<base64>"}

Only ``signature`` is trusted, once it verifies over the message rebuilt from the
file's bytes and the ``sequence``; ``active_sha256`` and ``root_sha256`` only choose the
words of a refusal. The message starts with its format tag, so it can be taken for
nothing else the root signs (DER, which starts with ``0x30``; a custody record, ``{``).

A file without a signature (written before this one existed, or edited by hand) keeps
working on its own host and is never taken by another.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography import x509

from ca.custody_signature import root_signature, signature_document, verify_root_signature
from ca.errors import EPortError
from ca.hierarchy import ACTIVE_FILE, ca_dir
from ca.signer import Signer

SIGNATURE_FILE = f"{ACTIVE_FILE}.sig"
FORMAT = "eport-active-signature/v1"


class ActiveSignatureRefused(EPortError):
    """An ``issuers/active.json`` whose signature is missing, malformed, or not the root's."""

    slug = "active-signature-refused"
    title = "The issuing CA generations in force are not signed by this CA's root"


def signature_path(data_dir: Path) -> Path:
    return ca_dir(data_dir) / "issuers" / SIGNATURE_FILE


def _message(sequence: int, active: bytes) -> bytes:
    digest = hashlib.sha256(active).hexdigest()
    return f"{FORMAT}\nsequence {sequence}\nsha256 {digest}\n".encode()


def sign_active(signer: Signer, root: x509.Certificate, active: bytes, sequence: int) -> bytes:
    """The signature file of ``active`` (the exact bytes of ``issuers/active.json``) as
    the ``sequence``-th, made with the root key behind ``signer``; raises unless that key
    is ``root``'s and the signature verifies."""
    if sequence < 1:
        raise ValueError("an active.json signature's sequence starts at 1")
    doc = {
        "format": FORMAT,
        "sequence": sequence,
        "active_sha256": hashlib.sha256(active).hexdigest(),
        **root_signature(
            signer, root, _message(sequence, active), ActiveSignatureRefused, "active.json"
        ),
    }
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    verify_active(root, active, data)
    return data


def verify_active(root: x509.Certificate, active: bytes, signature_file: bytes) -> int:
    """The sequence of ``signature_file``; raises :class:`ActiveSignatureRefused`, saying
    why, unless it holds ``root``'s signature of exactly ``active`` in that order."""
    doc = signature_document(signature_file, FORMAT, ActiveSignatureRefused)
    sequence = doc.get("sequence")
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
        raise ActiveSignatureRefused("its signature file names no sequence (a whole number ≥ 1)")
    verify_root_signature(
        root,
        _message(sequence, active),
        doc,
        ActiveSignatureRefused,
        changed=str(doc.get("active_sha256", "")) != hashlib.sha256(active).hexdigest(),
        other="its signature is of another active.json (the file was changed after it)",
    )
    return sequence


def sequence_of(signature_file: bytes | None) -> int:
    """The sequence a signature file names (0: none, or no file): this host's own order.
    Not verified: the file is this host's own, and a higher number only makes the host
    take less from the database."""
    if signature_file is None:
        return 0
    try:
        doc = json.loads(signature_file)
    except ValueError:
        return 0
    sequence = doc.get("sequence") if isinstance(doc, dict) else None
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
        return 0
    return sequence


def next_signature(data_dir: Path, signer: Signer, root: x509.Certificate, active: bytes) -> bytes:
    """The signature file of ``active`` as written by a ceremony on this host: ordered one
    after this host's own signature (1 when it has none)."""
    try:
        previous = signature_path(data_dir).read_bytes()
    except FileNotFoundError:
        previous = None
    return sign_active(signer, root, active, sequence_of(previous) + 1)
