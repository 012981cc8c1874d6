"""Signed checkpoints of the issuance transparency log.

A checkpoint is a C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint) note
text: the log's origin line, the tree size in decimal, the base64 RFC 9162 root
hash, then optional non-empty extension lines, each ending in a newline. It is
published as a C2SP signed note (https://c2sp.org/signed-note): the text, a blank
line, then signature lines ``— <key name> <base64(key ID || signature)>``. The log
signs with Ed25519 (signature type 0x01); its key ID is
``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]``, and its verifier
key string is ``<name>+<hex key ID>+<base64(0x01 || public key)>``.

The log key never needs to be in this process: :func:`sign_note` takes any
:class:`NoteKey` (a software key, a sealed CA signer, a PKCS#11 token).

A log key lost (or compromised) is replaced by the root quorum (``REPLACE-LOG-KEY``): its
replacement checkpoint also carries a line by the joint root CA's key
(:func:`add_root_signature`), key name :data:`ROOT_KEY_NAME`, key ID the first four bytes
of the SHA-256 of the root's DER SubjectPublicKeyInfo (C2SP signed-note's rule for keys
other than Ed25519), signature as the root signs certificates (ECDSA as DER, RSA PKCS#1
v1.5, with the hash of the root certificate's own signature; Ed25519). Verifiers that do
not know the root key ignore that line, as the spec requires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca.errors import BadRequest

__all__ = [
    "ED25519_SIGNATURE_TYPE",
    "MAX_SIGNATURES",
    "ROOT_KEY_NAME",
    "Checkpoint",
    "CheckpointError",
    "NoteKey",
    "add_root_signature",
    "key_id",
    "open_note",
    "parse_verifier_key",
    "sign_note",
    "verifier_key",
    "verify_note",
]

ED25519_SIGNATURE_TYPE = 0x01
"""C2SP signed-note signature type identifier byte of Ed25519."""

ROOT_KEY_NAME = "eport-root-ca"
"""The key name of the joint root CA's signature line on a replacement checkpoint."""

MAX_SIGNATURES = 100
"""Signature lines accepted in one note (C2SP signed-note: at least 16 MUST be accepted)."""

ROOT_HASH_SIZE = 32
"""The log hashes with SHA-256 (RFC 9162 §2.1.1)."""

_SIGNATURE_PREFIX = "\u2014 "  # U+2014 EM DASH, U+0020 SPACE
_CONTROL_CHARACTERS = re.compile("[\x00-\x09\x0b-\x1f]")
_TREE_SIZE = re.compile("0|[1-9][0-9]*")
_MAX_TREE_SIZE = (1 << 64) - 1


class CheckpointError(BadRequest):
    """A checkpoint or signed note is malformed, or lacks a valid signature by the expected key."""

    slug = "invalid-checkpoint"
    title = "Invalid signed checkpoint"


class NoteKey(Protocol):
    """An Ed25519 private key, wherever it lives: ``sign`` returns the 64-byte RFC 8032 signature.

    ``cryptography``'s ``Ed25519PrivateKey`` fits, and so does ``ca.signer.Signer``
    over an Ed25519 key (a sealed software key or a PKCS#11 token).
    """

    def sign(self, data: bytes, /) -> bytes: ...

    def public_key(self) -> object: ...


# -- checkpoint body (C2SP tlog-checkpoint) ----------------------------------------------


def _check_line(what: str, line: str) -> None:
    if not isinstance(line, str) or not line:
        raise CheckpointError(f"checkpoint {what} must be a non-empty string")
    if "\n" in line or _CONTROL_CHARACTERS.search(line):
        raise CheckpointError(f"checkpoint {what} must not contain control characters")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"checkpoint {what} is not encodable as UTF-8") from None


def _b64decode_canonical(text: str, what: str) -> bytes:
    """Standard base64 with padding (RFC 4648 §4), refusing any other spelling."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return raw


@dataclass(frozen=True)
class Checkpoint:
    """A C2SP tlog-checkpoint: the log's signed statement of its tree head."""

    origin: str
    """Identifies the log (first line); a schema-less URL such as ``eport.example/log``."""
    size: int
    """Number of leaves in the tree, ``0 <= size < 2**64``."""
    root_hash: bytes
    """The RFC 9162 §2.1.1 ``MTH`` of those leaves, 32 bytes."""
    extensions: tuple[str, ...] = ()
    """Opaque extension lines, each non-empty (NOT RECOMMENDED by the spec; kept for parsing)."""

    def __post_init__(self) -> None:
        _check_line("origin", self.origin)
        if type(self.size) is not int or not 0 <= self.size <= _MAX_TREE_SIZE:
            raise CheckpointError(f"checkpoint tree size {self.size!r} is not a uint64")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != ROOT_HASH_SIZE:
            raise CheckpointError(f"checkpoint root hash must be {ROOT_HASH_SIZE} bytes")
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for line in self.extensions:
            _check_line("extension line", line)

    def body(self) -> bytes:
        """The note text: origin, size, base64 root hash, extension lines, each + newline."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root_hash).decode("ascii"),
            *self.extensions,
        ]
        return "".join(line + "\n" for line in lines).encode("utf-8")

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """Read a checkpoint note text; anything but the exact format raises CheckpointError."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("checkpoint is not valid UTF-8") from None
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint has fewer than three lines")
        origin, size_line, root_line, *extensions = lines
        if not _TREE_SIZE.fullmatch(size_line):
            raise CheckpointError(
                f"checkpoint tree size {size_line[:30]!r} is not decimal without leading zeroes"
            )
        root_hash = _b64decode_canonical(root_line, "checkpoint root hash")
        return cls(origin, int(size_line), root_hash, tuple(extensions))


# -- keys (C2SP signed-note) -------------------------------------------------------------


def _check_key_name(name: str) -> None:
    # C2SP signed-note: "Key names MUST be non-empty and MUST NOT contain any
    # Unicode spaces or plus (U+002B) characters."
    if (
        not isinstance(name, str)
        or not name
        or "+" in name
        or any(c.isspace() for c in name)
        or _CONTROL_CHARACTERS.search(name)
    ):
        raise CheckpointError(f"{name!r} is not a valid note key name")


def _raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte key ID ``SHA-256(name || 0x0A || 0x01 || public key)[:4]`` (C2SP signed-note)."""
    _check_key_name(name)
    material = name.encode("utf-8") + b"\n" + bytes([ED25519_SIGNATURE_TYPE])
    return hashlib.sha256(material + _raw_public_key(public_key)).digest()[:4]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
    encoded = base64.b64encode(bytes([ED25519_SIGNATURE_TYPE]) + _raw_public_key(public_key))
    return f"{name}+{key_id(name, public_key).hex()}+{encoded.decode('ascii')}"


def parse_verifier_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """Read a verifier key string; its key ID must match the name and key it carries."""
    name, sep, rest = text.strip().partition("+")
    hex_id, sep2, encoded = rest.partition("+")
    if not sep or not sep2:
        raise CheckpointError("a verifier key reads <name>+<hex key ID>+<base64 key>")
    _check_key_name(name)
    if not re.fullmatch("[0-9a-f]{8}", hex_id):
        raise CheckpointError(f"verifier key ID {hex_id!r} is not 8 lowercase hex digits")
    raw = _b64decode_canonical(encoded, "verifier key")
    if len(raw) != 33 or raw[0] != ED25519_SIGNATURE_TYPE:
        raise CheckpointError("verifier key is not an Ed25519 (type 0x01) note key")
    public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if not hmac.compare_digest(key_id(name, public_key), bytes.fromhex(hex_id)):
        raise CheckpointError(f"verifier key ID {hex_id} does not match its name and key")
    return name, public_key


# -- signed notes (C2SP signed-note) -----------------------------------------------------


def _check_note_text(text: bytes) -> str:
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("note is not valid UTF-8") from None
    if _CONTROL_CHARACTERS.search(decoded):
        raise CheckpointError("note contains control characters other than newline")
    return decoded


def sign_note(text: bytes, name: str, key: NoteKey, *more: NoteKey) -> bytes:
    """The C2SP signed note of ``text`` with one Ed25519 signature by ``key`` as ``name``,
    and one by each of ``more`` under the same name (their key IDs tell them apart: a
    log's hand-over checkpoint is signed by its retiring key and its successor).

    ``text`` must be valid UTF-8, end in a newline and hold no other ASCII control
    character. Each signature is checked against its key's public key before the note
    is returned, so a faulty token cannot publish a checkpoint nobody can verify.
    """
    decoded = _check_note_text(text)
    if not decoded.endswith("\n"):
        raise CheckpointError("note text must end with a newline")
    lines = []
    for signer in (key, *more):
        public_key = signer.public_key()
        if not isinstance(public_key, Ed25519PublicKey):
            raise CheckpointError("signed notes of this log are signed with an Ed25519 key")
        ident = key_id(name, public_key)
        signature = signer.sign(text)
        try:
            public_key.verify(signature, text)
        except InvalidSignature:
            raise CheckpointError("the log key produced a signature that does not verify") from None
        encoded = base64.b64encode(ident + signature).decode("ascii")
        lines.append(f"{_SIGNATURE_PREFIX}{name} {encoded}\n")
    return text + ("\n" + "".join(lines)).encode()


def open_note(note: bytes, name: str, public_key: Ed25519PublicKey) -> bytes:
    """The text of ``note`` once its signature by ``name``/``public_key`` is verified.

    C2SP signed-note: the text ends at the last blank line; signatures by unknown
    keys (other name or key ID) are ignored; a signature by the known key that
    fails rejects the note; so does a note with no signature by the known key.
    """
    decoded = _check_note_text(note)
    split = decoded.rfind("\n\n")
    if split < 0:
        raise CheckpointError("note has no blank line before its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block.endswith("\n"):
        raise CheckpointError("note does not end with a signature line")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"note has more than {MAX_SIGNATURES} signatures")
    expected = key_id(name, public_key)
    text_bytes = text.encode("utf-8")
    verified = False
    for line in lines:
        if not line.startswith(_SIGNATURE_PREFIX):
            raise CheckpointError(f"malformed signature line {line[:60]!r}")
        signer, _, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
        _check_key_name(signer)
        blob = _b64decode_canonical(encoded, f"signature by {signer}")
        if len(blob) < 5:
            raise CheckpointError(f"signature by {signer} is too short")
        if signer != name or blob[:4] != expected:
            continue  # another key: a witness, or the log's next key
        try:
            public_key.verify(blob[4:], text_bytes)
        except InvalidSignature:
            raise CheckpointError(f"signature by {name}+{expected.hex()} does not verify") from None
        verified = True
    if not verified:
        raise CheckpointError(f"note has no signature by {name}+{expected.hex()}")
    return text_bytes


def verify_note(
    note: bytes, name: str, public_key: Ed25519PublicKey, *, origin: str | None = None
) -> Checkpoint:
    """The checkpoint in ``note`` once the log's signature is verified (C2SP tlog-checkpoint).

    ``origin``, when given, must equal the checkpoint's origin line.
    """
    checkpoint = Checkpoint.parse(open_note(note, name, public_key))
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(
            f"checkpoint is for log {checkpoint.origin!r}, not the expected {origin!r}"
        )
    return checkpoint


# -- the root's signature (REPLACE-LOG-KEY) -----------------------------------------------


def root_key_id(certificate: x509.Certificate) -> bytes:
    """The root's note key ID: ``SHA-256(DER SubjectPublicKeyInfo)[:4]``."""
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()[:4]


def _check_root_signature(certificate: x509.Certificate, signature: bytes, text: bytes) -> None:
    public = certificate.public_key()
    digest = certificate.signature_hash_algorithm
    try:
        if isinstance(public, ec.EllipticCurvePublicKey) and digest is not None:
            public.verify(signature, text, ec.ECDSA(digest))
        elif isinstance(public, rsa.RSAPublicKey) and digest is not None:
            public.verify(signature, text, padding.PKCS1v15(), digest)
        elif isinstance(public, Ed25519PublicKey):
            public.verify(signature, text)
        else:
            raise CheckpointError(f"a root key of type {type(public).__name__} signs no note")
    except InvalidSignature:
        raise CheckpointError("the root key produced a signature that does not verify") from None


def add_root_signature(note: bytes, root: NoteKey, certificate: x509.Certificate) -> bytes:
    """``note`` with one more signature line, by the joint root CA's key ``root`` (whose
    certificate is ``certificate``) over the same text: the root quorum vouches for the
    checkpoint (a replacement of the log's key). ``root`` is the root's
    :class:`ca.signer.Signer` (ECDSA, RSA or Ed25519, not a note key: only its ``sign``
    is used, signing as it signs certificates). Checked before it is returned."""
    text = note[: note.rindex(b"\n\n") + 1]
    signature = root.sign(text)
    _check_root_signature(certificate, signature, text)
    encoded = base64.b64encode(root_key_id(certificate) + signature).decode("ascii")
    return note + f"{_SIGNATURE_PREFIX}{ROOT_KEY_NAME} {encoded}\n".encode()
