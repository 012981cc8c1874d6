"""The auditor's own checks of the issuance transparency log.

This module is the verifier half of the log, written apart from the server on
purpose: it shares no code with ``ca/`` (only ``hashlib`` and the Ed25519
primitive of ``cryptography``), so that a bug in the server's tree or checkpoint
code cannot hide itself by being trusted twice.

* RFC 9162 §2.1.1 hashing, and :func:`root_from_leaf_hashes` to recompute the
  root of a whole log from its leaf hashes in ``O(log n)`` memory;
* RFC 9162 §2.1.3.2 inclusion and §2.1.4.2 consistency proof verification;
* C2SP signed-note (Ed25519, signature type 0x01) and tlog-checkpoint parsing,
  with verifier keys in the ``<name>+<hex key ID>+<base64(0x01 || key)>`` form;
* the joint root CA's signature line on a replacement checkpoint (the log key lost,
  ``REPLACE-LOG-KEY``: :func:`verify_root_checkpoint`), checked with the root
  certificate the auditor trusts (``cryptography``'s signature primitives).

Every check raises an :class:`AuditError` (a :class:`ValueError`) with a message
fit for one CLI line; none returns a bool.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "AuditError",
    "CheckpointError",
    "NotANoteError",
    "ProofError",
    "VerifiedCheckpoint",
    "VerifierKey",
    "leaf_hash",
    "open_note",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""``MTH({})``: SHA-256 of the empty string (RFC 9162 §2.1.1)."""

ED25519_TYPE = 0x01
"""Signature type byte of plain Ed25519 signed-note signatures (C2SP signed-note)."""

MAX_SIGNATURES = 100
"""Signature lines read per note; C2SP signed-note requires accepting at least 16."""

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")
_DECIMAL = re.compile("0|[1-9][0-9]*")
_UINT64_MAX = (1 << 64) - 1


class AuditError(ValueError):
    """Evidence from the log failed a check; the message says which and why."""


class ProofError(AuditError):
    """An inclusion or consistency proof does not prove its claim (RFC 9162 §2.1.3.2, §2.1.4.2)."""


class CheckpointError(AuditError):
    """A signed checkpoint is malformed, unsigned by the expected key, or has a bad signature."""


class NotANoteError(CheckpointError):
    """The bytes do not even have a signed note's outline (UTF-8 text, a blank line, lines
    after it to the end): another file given where a checkpoint goes, not a checkpoint
    that failed to verify."""


# -- RFC 9162 §2.1.1 hashing -------------------------------------------------------------


def leaf_hash(entry: bytes) -> bytes:
    """``HASH(0x00 || entry)``, the leaf hash of a log entry (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_leaf_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """``MTH`` of the leaves whose hashes come in order, in ``O(log n)`` memory.

    Keeps a stack of the perfect subtrees on the right edge of the tree read so
    far: leaf ``i`` completes one parent per trailing one bit of ``i``. At the end
    the stack folds right to left, which is the RFC 9162 §2.1.1 split at the
    largest power of two. ``n - 1`` node hashes in all.
    """
    sha256 = hashlib.sha256
    stack: list[bytes] = []
    push = stack.append
    pop = stack.pop
    for count, digest in enumerate(leaf_hashes, 1):
        if len(digest) != HASH_SIZE:
            raise ProofError(f"leaf hash {count - 1} is {len(digest)} bytes, not {HASH_SIZE}")
        carry = count
        while not carry & 1:
            digest = sha256(b"\x01" + pop() + digest).digest()
            carry >>= 1
        push(digest)
    if not stack:
        return EMPTY_ROOT
    digest = pop()
    while stack:
        digest = sha256(b"\x01" + pop() + digest).digest()
    return digest


# -- RFC 9162 §2.1.3.2 and §2.1.4.2 verification -----------------------------------------


def _check_hash(what: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte SHA-256 hash")


def _check_path(proof: Sequence[bytes]) -> None:
    for position, node in enumerate(proof):
        _check_hash(f"proof node {position}", node)


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` leads to from leaf ``index`` of a tree of ``size`` leaves.

    RFC 9162 §2.1.3.2 steps 1 to 4, plus the step 5 check that the path reached
    the top (``sn == 0``); raises :class:`ProofError` when the proof cannot be
    an audit path of that shape.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    _check_hash("leaf hash", leaf_hash)
    _check_path(proof)
    fn, sn = index, size - 1
    digest = leaf_hash
    for node in proof:
        if sn == 0:
            raise ProofError(
                f"inclusion proof has {len(proof)} nodes: too many for leaf {index} "
                f"of a tree of size {size}"
            )
        if fn & 1 or fn == sn:
            digest = _node(node, digest)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            digest = _node(digest, node)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"inclusion proof has {len(proof)} nodes: too few for leaf {index} "
            f"of a tree of size {size}"
        )
    return digest


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2. Raises :class:`ProofError`; returns nothing on success.
    """
    _check_hash("root hash", root)
    computed = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if not hmac.compare_digest(computed, root):
        raise ProofError(
            f"inclusion proof for leaf {index} leads to root {computed.hex()}, "
            f"not to the root {root.hex()} of the tree of size {size}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` is a prefix of the tree of ``new_size``.

    RFC 9162 §2.1.4.2 for ``0 < old_size < new_size``. The cases the RFC leaves
    out are decided so that nothing unproven passes: equal sizes need equal roots
    and an empty proof; the empty tree (root ``SHA-256()``) is a prefix of every
    tree, with an empty proof. Raises :class:`ProofError`.
    """
    _check_hash("old root hash", old_root)
    _check_hash("new root hash", new_root)
    _check_path(proof)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"tree size went from {old_size} to {new_size}: a log never shrinks")
    if old_size == new_size:
        if proof:
            raise ProofError(f"consistency proof between equal sizes {old_size} must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise ProofError(
                f"two different roots for the same tree size {old_size}: "
                f"{old_root.hex()} and {new_root.hex()}"
            )
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        if not hmac.compare_digest(old_root, EMPTY_ROOT):
            raise ProofError(f"root {old_root.hex()} is not the root of the empty tree")
        return
    # Step 1: an empty path proves nothing.
    if not proof:
        raise ProofError(f"empty consistency proof from size {old_size} to {new_size}")
    # Step 2: when the old tree is perfect its root is a node of the new tree and
    # the proof leaves it out.
    path = [old_root, *proof] if old_size & (old_size - 1) == 0 else list(proof)
    # Steps 3 and 4.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Steps 5 and 6.
    old_digest = new_digest = path[0]
    for node in path[1:]:
        if sn == 0:
            raise ProofError(
                f"consistency proof has {len(proof)} nodes: too many for sizes "
                f"{old_size} to {new_size}"
            )
        if fn & 1 or fn == sn:
            old_digest = _node(node, old_digest)
            new_digest = _node(node, new_digest)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            new_digest = _node(new_digest, node)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise ProofError(
            f"consistency proof has {len(proof)} nodes: too few for sizes {old_size} to {new_size}"
        )
    if not hmac.compare_digest(old_digest, old_root):
        raise ProofError(
            f"consistency proof does not lead to the old root of size {old_size} "
            f"(got {old_digest.hex()}, expected {old_root.hex()})"
        )
    if not hmac.compare_digest(new_digest, new_root):
        raise ProofError(
            f"consistency proof does not lead to the new root of size {new_size} "
            f"(got {new_digest.hex()}, expected {new_root.hex()})"
        )


# -- C2SP signed-note and tlog-checkpoint ------------------------------------------------


def _strict_b64decode(text: str) -> bytes:
    """Standard base64 with padding (RFC 4648 §4), refusing non-canonical encodings."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"{text[:60]!r} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise CheckpointError(f"{text[:60]!r} is not canonical base64")
    return raw


def _valid_key_name(name: str) -> bool:
    # C2SP signed-note: non-empty, no Unicode spaces, no plus.
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


@dataclass(frozen=True)
class VerifierKey:
    """An Ed25519 note verifier key: the signer's name, key ID and public key."""

    name: str
    """The key name signature lines carry (C2SP signed-note)."""
    key_id: bytes
    """``SHA-256(name || 0x0A || 0x01 || public key)[:4]``."""
    public_key: bytes
    """The 32-byte RFC 8032 public key."""

    def __post_init__(self) -> None:
        if not _valid_key_name(self.name):
            raise CheckpointError(f"{self.name!r} is not a valid note key name")
        if len(self.key_id) != 4 or len(self.public_key) != 32:
            raise CheckpointError("a note key ID is 4 bytes and an Ed25519 public key 32 bytes")

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Read ``<name>+<8 hex digits key ID>+<base64(0x01 || 32-byte key)>``.

        The key ID is recomputed from the name and key and must match.
        """
        parts = text.strip().split("+")
        # The base64 part may itself contain "+": only the first two are separators.
        if len(parts) < 3:
            raise CheckpointError("a verifier key reads <name>+<key ID>+<base64 key>")
        name, hex_id, b64 = parts[0], parts[1], "+".join(parts[2:])
        if not _valid_key_name(name):
            raise CheckpointError(f"verifier key name {name!r} is not a valid note key name")
        if not re.fullmatch("[0-9a-f]{8}", hex_id):
            raise CheckpointError(f"verifier key ID {hex_id!r} is not 8 lowercase hex digits")
        raw = _strict_b64decode(b64)
        if len(raw) != 33 or raw[0] != ED25519_TYPE:
            raise CheckpointError("verifier key is not an Ed25519 (type 0x01) note key")
        key = cls(name=name, key_id=bytes.fromhex(hex_id), public_key=raw[1:])
        if not hmac.compare_digest(key.key_id, _key_id(name, raw[1:])):
            raise CheckpointError(f"verifier key ID {hex_id} does not match its name and key")
        return key

    def __str__(self) -> str:
        encoded = base64.b64encode(bytes([ED25519_TYPE]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{encoded}"


def _key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_TYPE]) + public_key).digest()[:4]


def open_note(note: bytes, key: VerifierKey) -> bytes:
    """The text of a C2SP signed note that ``key`` signed, after checking that signature.

    Signatures by other keys (another name or another key ID) are ignored, as the
    spec requires; a signature by ``key`` that does not verify rejects the note,
    and so does a note without one.
    """
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise NotANoteError("signed note is not valid UTF-8") from None
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NotANoteError("signed note has no blank line before its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block.endswith("\n"):
        raise NotANoteError("signed note does not end with a signature line")
    if _CONTROL.search(decoded):
        raise CheckpointError("signed note contains control characters other than newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"signed note has more than {MAX_SIGNATURES} signatures")
    text_bytes = text.encode("utf-8")
    public_key = Ed25519PublicKey.from_public_bytes(key.public_key)
    verified = False
    others: list[str] = []
    for line in lines:
        if not line.startswith(_SIGNATURE_PREFIX):
            raise CheckpointError(f"malformed signature line {line[:60]!r}")
        name, _, b64 = line[len(_SIGNATURE_PREFIX) :].partition(" ")
        if not _valid_key_name(name) or not b64:
            raise CheckpointError(f"malformed signature line {line[:60]!r}")
        blob = _strict_b64decode(b64)
        if len(blob) < 5:
            raise CheckpointError(f"signature by {name} is too short")
        if name != key.name or blob[:4] != key.key_id:
            others.append(f"{name}+{blob[:4].hex()}")
            continue
        try:
            public_key.verify(blob[4:], text_bytes)
        except InvalidSignature:
            raise CheckpointError(
                f"signature by {key.name}+{key.key_id.hex()} does not verify"
            ) from None
        verified = True
    if not verified:
        by = f"signed note has no signature by {key.name}+{key.key_id.hex()}"
        if not others:
            raise CheckpointError(by)
        # Say whose it is: after ROTATE-LOG-KEY a state file (or --log-key) still holds
        # the retired key, and the checkpoints are the new key's.
        raise CheckpointError(
            f"{by}; it is signed by {', '.join(others)} only: another key than the one "
            "trusted, as after the log's key was rotated or replaced (ROTATE-LOG-KEY: start "
            "a new --state with the new key; a checkpoint signed before it is checked with "
            "the key that signed it, --log-key of the old log.pub: docs/audit.md), or "
            "another log"
        )
    return text_bytes


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A C2SP tlog-checkpoint whose signature by the log key was verified."""

    origin: str
    """The log's identity, first line of the note."""
    size: int
    """The number of leaves in the tree."""
    root_hash: bytes
    """``MTH`` of those leaves (RFC 9162 §2.1.1)."""
    extensions: tuple[str, ...] = ()
    """Extension lines, opaque, in order."""


def _parse_checkpoint(text: str) -> VerifiedCheckpoint:
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint has fewer than three lines")
    origin, size_line, root_line, *extensions = lines
    if not origin:
        raise CheckpointError("checkpoint origin line is empty")
    if not _DECIMAL.fullmatch(size_line) or int(size_line) > _UINT64_MAX:
        raise CheckpointError(f"checkpoint tree size {size_line[:30]!r} is not a decimal size")
    root = _strict_b64decode(root_line)
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"checkpoint root hash is {len(root)} bytes, not {HASH_SIZE}")
    if any(not line for line in extensions):
        raise CheckpointError("checkpoint has an empty extension line")
    return VerifiedCheckpoint(origin, int(size_line), root, tuple(extensions))


def verify_checkpoint(
    note: bytes, key: VerifierKey | str, *, origin: str | None = None
) -> VerifiedCheckpoint:
    """Verify the log's signature on a checkpoint note and parse its body.

    ``key`` is the log's verifier key (or its string form); ``origin``, when
    given, must equal the checkpoint's origin line (C2SP tlog-checkpoint).
    """
    if isinstance(key, str):
        key = VerifierKey.parse(key)
    checkpoint = _parse_checkpoint(open_note(note, key).decode("utf-8"))
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(
            f"checkpoint is for log {checkpoint.origin!r}, not the expected {origin!r}"
        )
    return checkpoint


ROOT_KEY_NAME = "eport-root-ca"
"""The key name of the joint root CA's signature line (docs/log-format.md)."""


def _split_note(note: bytes) -> tuple[bytes, list[str]]:
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise NotANoteError("signed note is not valid UTF-8") from None
    split = decoded.rfind("\n\n")
    if split < 0 or not decoded.endswith("\n"):
        raise NotANoteError("signed note has no blank line before its signature lines")
    if _CONTROL.search(decoded):
        raise CheckpointError("signed note contains control characters other than newline")
    lines = decoded[split + 2 : -1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"signed note has more than {MAX_SIGNATURES} signatures")
    return decoded[: split + 1].encode("utf-8"), lines


def _root_verify(root: x509.Certificate, signature: bytes, text: bytes) -> None:
    """Raise InvalidSignature unless ``signature`` is the root key's over ``text``, made as
    the root signs certificates (the hash of its own certificate's signature)."""
    public = root.public_key()
    digest = root.signature_hash_algorithm
    if isinstance(public, ec.EllipticCurvePublicKey) and digest is not None:
        public.verify(signature, text, ec.ECDSA(digest))
    elif isinstance(public, rsa.RSAPublicKey) and digest is not None:
        public.verify(signature, text, padding.PKCS1v15(), digest)
    elif isinstance(public, Ed25519PublicKey):
        public.verify(signature, text)
    else:
        raise CheckpointError(f"a root key of type {type(public).__name__} cannot vouch")


LOG_KEY_SIGNATURE_FORMAT = "eport-log-key-signature/v1"
"""The format of the root's signature of the log key (``GET /ca/v1/audit/log-key``'s
``root_signature``; docs/audit.md)."""


def verify_root_log_key(key: VerifierKey, root: x509.Certificate, signature: object) -> None:
    """Raise :class:`CheckpointError` unless ``signature`` (the server's ``root_signature``
    document) is ``root``'s signature of ``key``: over the message
    ``eport-log-key-signature/v1\\nsha256 <hex of the key's PEM SubjectPublicKeyInfo>\\n``.
    Only the signature is trusted; the document's ``root_sha256`` only words a refusal."""
    if not isinstance(signature, dict) or signature.get("format") != LOG_KEY_SIGNATURE_FORMAT:
        raise CheckpointError(f"the root's signature is not of format {LOG_KEY_SIGNATURE_FORMAT}")
    pem = Ed25519PublicKey.from_public_bytes(key.public_key).public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(pem).hexdigest()
    message = f"{LOG_KEY_SIGNATURE_FORMAT}\nsha256 {digest}\n".encode()
    try:
        _root_verify(root, _strict_b64decode(str(signature.get("signature", ""))), message)
    except InvalidSignature:
        given = root.fingerprint(hashes.SHA256()).hex()
        named = signature.get("root_sha256")
        if isinstance(named, str) and named != given:
            raise CheckpointError(
                f"it names the root whose SHA-256 is {named[:16]}…, not the one given "
                f"({given[:16]}…)"
            ) from None
        raise CheckpointError("its signature does not verify under that root") from None


def verify_root_checkpoint(note: bytes, root: x509.Certificate) -> VerifiedCheckpoint:
    """The checkpoint of ``note`` once the signature line by the joint root CA's key
    (name :data:`ROOT_KEY_NAME`, key ID ``SHA-256(DER SubjectPublicKeyInfo)[:4]`` of
    ``root``) is verified: what a replacement of the log's key carries. A note without
    such a line, or whose line does not verify, is refused."""
    text, lines = _split_note(note)
    spki = root.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    expected = hashlib.sha256(spki).digest()[:4]
    verified = False
    for line in lines:
        if not line.startswith(_SIGNATURE_PREFIX):
            raise CheckpointError(f"malformed signature line {line[:60]!r}")
        name, _, b64 = line[len(_SIGNATURE_PREFIX) :].partition(" ")
        if name != ROOT_KEY_NAME:
            continue
        blob = _strict_b64decode(b64)
        if blob[:4] != expected:
            continue  # another root's line
        try:
            _root_verify(root, blob[4:], text)
        except InvalidSignature:
            raise CheckpointError(
                f"the signature by the root key ({ROOT_KEY_NAME}+{expected.hex()}) does not verify"
            ) from None
        verified = True
    if not verified:
        raise CheckpointError(
            f"signed note has no signature by the root key given ({ROOT_KEY_NAME}+{expected.hex()})"
        )
    return _parse_checkpoint(text.decode("utf-8"))
