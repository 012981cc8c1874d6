"""Joint custody of the CA keys: M-of-N secret sharing of key-encryption keys.

Two 128-bit key-encryption keys (KEKs) protect the CA's private keys at rest, each
split by Shamir's secret sharing (pycryptodome's ``Crypto.Protocol.SecretSharing``,
GF(2^128)) into one share per member custodian, any ``threshold`` of which rebuild it:

* the **root KEK** wraps the root key; M custodians rebuild it for a root operation
  (a quorum ceremony) and it is wiped when the operation ends;
* the **seal KEK** wraps the issuing CA, OCSP responder and log keys; M custodians
  rebuild it to unseal a server (Vault-style). An unsealed server holds this KEK, never
  the root KEK: unsealing does not let it sign as the root.

Keys are wrapped with AES-GCM (NIST SP 800-38D); the associated data binds each
ciphertext to its custody set, its KEK's purpose and the key's name, so a wrapped key
cannot be moved to another slot or another CA.

Shares are authenticated before use: the public :class:`CustodyRecord` (written by
the init ceremony and logged) holds a fingerprint of every share, a SHA-256 bound to
the custody id, the purpose, the custodian and the share's x-coordinate. A corrupted
share, a share of another custody set or of another custodian is refused before any
interpolation; a rebuilt KEK is then checked against an AES-GCM check value, so fewer
than ``threshold`` shares (or a mix) fail that authentication check and reveal nothing.

Share files are encrypted to each custodian's passphrase (scrypt, RFC 7914, then
AES-GCM with the file's header as associated data), or by an AES key in the
custodian's own PKCS#11 token (:class:`ShareCipher`, AES-GCM computed by the token
with the same associated data). Nothing here logs or prints a
secret; secrets are kept in ``bytearray`` and overwritten (:func:`wipe`) as far as
Python allows (immutable copies made by libraries cannot be wiped).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ca.errors import Conflict, EPortError

__all__ = [
    "KEK_SIZE",
    "CustodianEntry",
    "CustodyError",
    "CustodyRecord",
    "NotEnoughShares",
    "Purpose",
    "ReconstructionFailed",
    "RepeatedCustodian",
    "Share",
    "ShareCipher",
    "ShareFile",
    "ShareRejected",
    "establish",
    "open_share_file",
    "seal_share_file",
    "share_file_protection",
    "unwrap_key",
    "wipe",
    "wrap_key",
]

KEK_SIZE = 16
"""pycryptodome's Shamir shares 16-byte secrets: an AES-128 key-encryption key."""

RECORD_FORMAT = "eport-custody-record/v1"
SHARE_FILE_FORMAT = "eport-custody-share/v1"
WRAPPED_KEY_LABEL = "EPORT WRAPPED PRIVATE KEY"
_CHECK_PLAINTEXT = b"e-port joint custody: key-encryption key check"
_SCRYPT_N = 2**15
_SCRYPT_LIMITS = (2**14, 2**20)

RandomBytes = Callable[[int], bytes]


class CustodyError(EPortError):
    """A custody operation failed; nothing was signed or unsealed."""

    status = 400
    slug = "custody"
    title = "Key custody error"


class ShareRejected(CustodyError):
    """A share that is corrupted, of another custody set or custodian, or unreadable."""

    slug = "share-rejected"
    title = "Share rejected"


class WrongPassphrase(ShareRejected):
    """A passphrase that does not open the share file (or a file changed since it was
    written: its header is the cipher's associated data, so the two cannot be told
    apart). At a terminal the custodian may type it again."""


class RepeatedCustodian(Conflict):
    """A custodian presented a share twice: M shares must come from M custodians."""

    slug = "repeated-custodian"
    title = "This custodian has already joined"


class NotEnoughShares(CustodyError):
    """Fewer than ``threshold`` shares from distinct custodians."""

    slug = "not-enough-shares"
    title = "Not enough shares"


class ReconstructionFailed(CustodyError):
    """The rebuilt key-encryption key failed its authentication check."""

    status = 500
    slug = "reconstruction-failed"
    title = "The shares do not rebuild the key-encryption key"


@enum.unique
class Purpose(enum.Enum):
    """Which key-encryption key a share belongs to."""

    ROOT = "root"
    """Wraps the root key; rebuilt only for a root operation (a quorum ceremony)."""
    SEAL = "seal"
    """Wraps the issuing CA, OCSP responder and log keys; rebuilt to unseal a server."""


def wipe(secret: bytearray | memoryview) -> None:
    """Overwrite a secret in place (the best Python offers: copies elsewhere may remain)."""
    for i in range(len(secret)):
        secret[i] = 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ShareRejected(f"{what} must be base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:
        raise ShareRejected(f"{what} is not valid base64") from None


def _by_purpose(items: Mapping[Purpose, Any]) -> list[tuple[Purpose, Any]]:
    return sorted(items.items(), key=lambda item: item[0].value)


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Share:
    """One custodian's share of one key-encryption key (a point of the Shamir polynomial)."""

    custody_id: str
    """The custody set (one per init ceremony or re-share) the share belongs to."""
    purpose: Purpose
    member: str
    """The member agency whose custodian holds the share."""
    index: int
    """The x-coordinate, 1..N."""
    value: bytes = field(repr=False)
    """The 16-byte y-coordinate: secret."""

    def __post_init__(self) -> None:
        if not 1 <= self.index <= 255 or len(self.value) != KEK_SIZE:
            raise ShareRejected("a share is an index 1..255 and 16 bytes")

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the share and everything it is bound to, hex (public)."""
        h = hashlib.sha256()
        parts = (b"eport-share-fingerprint/v1", self.custody_id, self.purpose.value, self.member)
        for part in parts:
            raw = part if isinstance(part, bytes) else part.encode()
            h.update(len(raw).to_bytes(2, "big") + raw)
        h.update(bytes([self.index]) + self.value)
        return h.hexdigest()


@dataclass(frozen=True)
class CustodianEntry:
    """The public facts about one custodian's shares."""

    member: str
    custodian: str
    """The custodian's name as ``policies/members.toml`` gives it."""
    index: int
    fingerprints: Mapping[Purpose, str]


@dataclass(frozen=True)
class CustodyRecord:
    """The public record of a custody set: who holds which share, and the KEK checks.

    Contains no secret: it is written beside the root certificate, given to every
    custodian and logged. Share verification and reconstruction go through it.
    """

    custody_id: str
    threshold: int
    custodians: tuple[CustodianEntry, ...]
    checks: Mapping[Purpose, bytes]
    """Per purpose, ``nonce || AES-GCM(KEK, constant)``: tells a right KEK from a wrong one."""
    keys_custody_id: str | None = None
    """The custody id the CA keys are wrapped under, when it is not ``custody_id``: a
    re-share keeps the KEKs and this binding, so no wrapped key is rewritten."""
    sequence: int = 0
    """The record's order among this CA's custody records: 1 from ``eport ca init``, one
    more at each re-share. Inside the bytes the root signs, so a host of a shared
    database can refuse an older record put back into it (:mod:`ca.crosshost`). 0: a
    record written before records were ordered (it has no ``sequence`` member)."""

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= len(self.custodians):
            raise CustodyError("the threshold must be between 1 and the number of custodians")
        if type(self.sequence) is not int or self.sequence < 0:
            raise CustodyError("a custody record's sequence is a whole number, 0 or more")

    @property
    def keys_id(self) -> str:
        """The custody id the wrapped CA keys are bound to (:func:`wrap_key`)."""
        return self.keys_custody_id or self.custody_id

    def entry(self, member: str) -> CustodianEntry:
        for c in self.custodians:
            if c.member == member:
                return c
        raise ShareRejected(f"{member!r} holds no share of custody set {self.custody_id}")

    def verify_share(self, share: Share) -> None:
        """Raise :class:`ShareRejected` unless ``share`` is the one this record names."""
        if share.custody_id != self.custody_id:
            raise ShareRejected(
                f"the share belongs to custody set {share.custody_id}, not {self.custody_id}"
            )
        entry = self.entry(share.member)
        expected = entry.fingerprints.get(share.purpose, "")
        if share.index != entry.index or not hmac.compare_digest(
            share.fingerprint.encode(), expected.encode()
        ):
            raise ShareRejected(
                f"the {share.purpose.value} share of {share.member} does not match the "
                "custody record (corrupted, or not this custodian's share)"
            )

    def combine(self, shares: Iterable[Share], purpose: Purpose) -> bytearray:
        """Rebuild the ``purpose`` KEK from ``threshold`` verified shares of distinct custodians.

        Each share is verified first; the result is checked against the record's check
        value. The caller wipes the returned ``bytearray`` (:func:`wipe`).
        """
        chosen: dict[str, Share] = {}
        for share in shares:
            if share.purpose is not purpose:
                raise ShareRejected(
                    f"a {share.purpose.value} share cannot rebuild the {purpose.value} key"
                )
            self.verify_share(share)
            if share.member in chosen:
                raise RepeatedCustodian(f"{share.member} presented a share twice")
            chosen[share.member] = share
        if len(chosen) < self.threshold:
            raise NotEnoughShares(
                f"{len(chosen)} of the {self.threshold} shares needed "
                f"({len(self.custodians)} custodians)"
            )
        points = [(s.index, s.value) for s in list(chosen.values())[: self.threshold]]
        kek = bytearray(Shamir.combine(points, ssss=False))
        try:
            self.check_kek(kek, purpose)
        except ReconstructionFailed:
            wipe(kek)
            raise
        return kek

    def check_kek(self, kek: bytes | bytearray, purpose: Purpose) -> None:
        """Raise :class:`ReconstructionFailed` unless ``kek`` is this set's ``purpose`` KEK."""
        blob = self.checks.get(purpose)
        if blob is None or len(kek) != KEK_SIZE:
            raise ReconstructionFailed(f"no {purpose.value} key check in the custody record")
        try:
            plain = AESGCM(bytes(kek)).decrypt(blob[:12], blob[12:], self._check_aad(purpose))
        except InvalidTag:
            raise ReconstructionFailed(
                f"the rebuilt {purpose.value} key-encryption key fails its check "
                "(too few shares, or shares of different custody sets)"
            ) from None
        if plain != _CHECK_PLAINTEXT:
            raise ReconstructionFailed("the key check value is not the expected one")

    def _check_aad(self, purpose: Purpose) -> bytes:
        return (
            b"eport-kek-check/v1\x00" + self.custody_id.encode() + b"\x00" + purpose.value.encode()
        )

    # -- the public record as JSON ------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": RECORD_FORMAT,
            "custody_id": self.custody_id,
            "threshold": self.threshold,
            "custodians": [
                {
                    "member": c.member,
                    "custodian": c.custodian,
                    "index": c.index,
                    "fingerprints": {p.value: fp for p, fp in _by_purpose(c.fingerprints)},
                }
                for c in self.custodians
            ],
            "checks": {p.value: _b64(b) for p, b in _by_purpose(self.checks)},
        }
        if self.keys_id != self.custody_id:
            doc["keys_custody_id"] = self.keys_id
        if self.sequence:  # absent from a record of before: its bytes, as signed, stay
            doc["sequence"] = self.sequence
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CustodyRecord:
        try:
            if doc.get("format") != RECORD_FORMAT:
                raise CustodyError(f"not a custody record ({RECORD_FORMAT})")
            return cls(
                custody_id=str(doc["custody_id"]),
                threshold=int(doc["threshold"]),
                custodians=tuple(
                    CustodianEntry(
                        member=str(c["member"]),
                        custodian=str(c["custodian"]),
                        index=int(c["index"]),
                        fingerprints={Purpose(p): str(fp) for p, fp in c["fingerprints"].items()},
                    )
                    for c in doc["custodians"]
                ),
                checks={Purpose(p): _unb64(v, "check") for p, v in doc["checks"].items()},
                keys_custody_id=str(doc["keys_custody_id"]) if "keys_custody_id" in doc else None,
                sequence=_sequence(doc.get("sequence", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CustodyError(f"malformed custody record: {exc}") from None

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(c.member for c in self.custodians)


def _sequence(value: Any) -> int:
    # JSON true would pass int(); a string or a fraction is no order either
    if type(value) is not int or value < 0:
        raise CustodyError(f"malformed custody record: sequence {value!r} is not a whole number")
    return value


@dataclass(frozen=True)
class Established:
    """What :func:`establish` made: the public record, the shares, and the KEKs."""

    record: CustodyRecord
    shares: Mapping[str, Mapping[Purpose, Share]] = field(repr=False)
    """Member id → its share of each KEK (secret: goes only into that member's share file)."""
    keks: Mapping[Purpose, bytearray] = field(repr=False)
    """The KEKs (secret): the ceremony wraps the keys with them, then wipes them."""

    def wipe(self) -> None:
        for kek in self.keks.values():
            wipe(kek)


def new_custody_id(random_bytes: RandomBytes = os.urandom) -> str:
    return "cust-" + random_bytes(10).hex()


def establish(
    custodians: Sequence[tuple[str, str]],
    threshold: int,
    *,
    custody_id: str | None = None,
    keks: Mapping[Purpose, bytes | bytearray] | None = None,
    sequence: int = 1,
    random_bytes: RandomBytes = os.urandom,
) -> Established:
    """New KEKs (or the given ones, to re-share) split ``threshold``-of-N among ``custodians``.

    ``custodians`` is ``[(member id, custodian name), …]`` in share-index order;
    ``sequence`` the record's order (:attr:`CustodyRecord.sequence`: 1 for a new CA).
    """
    if len({m for m, _ in custodians}) != len(custodians):
        raise CustodyError("each member holds exactly one share")
    if not 1 <= threshold <= len(custodians) <= 255:
        raise CustodyError("the threshold must be between 1 and the number of custodians")
    cid = custody_id or new_custody_id(random_bytes)
    made = {
        p: bytearray(keks[p]) if keks is not None else bytearray(random_bytes(KEK_SIZE))
        for p in Purpose
    }
    shares: dict[str, dict[Purpose, Share]] = {m: {} for m, _ in custodians}
    checks: dict[Purpose, bytes] = {}
    fingerprints: dict[str, dict[Purpose, str]] = {m: {} for m, _ in custodians}
    for purpose, kek in made.items():
        if len(kek) != KEK_SIZE:
            raise CustodyError("a key-encryption key is 16 bytes")
        points = Shamir.split(threshold, len(custodians), bytes(kek), ssss=False)
        for (member, _), (index, value) in zip(custodians, points, strict=True):
            share = Share(cid, purpose, member, index, value)
            shares[member][purpose] = share
            fingerprints[member][purpose] = share.fingerprint
        nonce = random_bytes(12)
        aad = b"eport-kek-check/v1\x00" + cid.encode() + b"\x00" + purpose.value.encode()
        checks[purpose] = nonce + AESGCM(bytes(kek)).encrypt(nonce, _CHECK_PLAINTEXT, aad)
    record = CustodyRecord(
        custody_id=cid,
        threshold=threshold,
        custodians=tuple(
            CustodianEntry(member, name, i + 1, fingerprints[member])
            for i, (member, name) in enumerate(custodians)
        ),
        checks=checks,
        sequence=sequence,
    )
    return Established(record, shares, made)


# -- wrapped keys -------------------------------------------------------------------------------


def _wrap_aad(custody_id: str, purpose: Purpose, name: str) -> bytes:
    return b"\x00".join(
        [b"eport-wrapped-key/v1", custody_id.encode(), purpose.value.encode(), name.encode()]
    )


def wrap_key(
    kek: bytes | bytearray,
    custody_id: str,
    purpose: Purpose,
    name: str,
    key: CertificateIssuerPrivateKeyTypes,
    random_bytes: RandomBytes = os.urandom,
) -> bytes:
    """``key`` as PKCS#8 DER under AES-GCM with ``kek``, in a PEM-style envelope.

    ``name`` (e.g. ``issuers/enterprise``) is bound as associated data with the custody
    id and purpose, so the blob only opens in its own slot.
    """
    der = bytearray(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    try:
        nonce = random_bytes(12)
        ct = AESGCM(bytes(kek)).encrypt(nonce, bytes(der), _wrap_aad(custody_id, purpose, name))
    finally:
        wipe(der)
    header = _canonical({"custody": custody_id, "purpose": purpose.value, "name": name})
    body = base64.encodebytes(len(header).to_bytes(2, "big") + header + nonce + ct).decode("ascii")
    return (
        f"-----BEGIN {WRAPPED_KEY_LABEL}-----\n{body}-----END {WRAPPED_KEY_LABEL}-----\n".encode()
    )


def is_wrapped(blob: bytes) -> bool:
    return blob.startswith(f"-----BEGIN {WRAPPED_KEY_LABEL}-----".encode())


def wrapped_header(blob: bytes) -> dict[str, str]:
    """The public header of a wrapped key: custody id, purpose, name."""
    raw = _envelope(blob)
    n = int.from_bytes(raw[:2], "big")
    try:
        doc = json.loads(raw[2 : 2 + n])
    except (ValueError, UnicodeDecodeError):
        raise CustodyError("malformed wrapped key header") from None
    if not isinstance(doc, dict):
        raise CustodyError("malformed wrapped key header")
    return {str(k): str(v) for k, v in doc.items()}


def _envelope(blob: bytes) -> bytes:
    text = blob.decode("ascii", "replace").strip()
    begin, end = f"-----BEGIN {WRAPPED_KEY_LABEL}-----", f"-----END {WRAPPED_KEY_LABEL}-----"
    if not (text.startswith(begin) and text.endswith(end)):
        raise CustodyError("not a wrapped key")
    try:
        return base64.b64decode("".join(text[len(begin) : -len(end)].split()), validate=True)
    except ValueError:
        raise CustodyError("a wrapped key's body is not base64") from None


def unwrap_key(
    kek: bytes | bytearray, custody_id: str, purpose: Purpose, name: str, blob: bytes
) -> CertificateIssuerPrivateKeyTypes:
    """Open a key written by :func:`wrap_key`; a wrong KEK, slot or custody set raises."""
    raw = _envelope(blob)
    n = int.from_bytes(raw[:2], "big")
    if wrapped_header(blob) != {"custody": custody_id, "purpose": purpose.value, "name": name}:
        raise CustodyError(f"{name}: the wrapped key's header names another slot")
    nonce, ct = raw[2 + n : 14 + n], raw[14 + n :]
    try:
        der = bytearray(AESGCM(bytes(kek)).decrypt(nonce, ct, _wrap_aad(custody_id, purpose, name)))
    except InvalidTag:
        raise CustodyError(
            f"cannot unwrap {name}: wrong key-encryption key, custody set or slot"
        ) from None
    try:
        key = serialization.load_der_private_key(bytes(der), None)
    finally:
        wipe(der)
    if not hasattr(key, "sign"):
        raise CustodyError(f"{name} does not hold a signing key")
    return key  # type: ignore[return-value]


# -- share files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareFile:
    """A custodian's share file, opened: its public header and its shares (secret)."""

    custody_id: str
    member: str
    custodian: str
    threshold: int
    total: int
    shares: Mapping[Purpose, Share] = field(repr=False)

    def share(self, purpose: Purpose) -> Share:
        try:
            return self.shares[purpose]
        except KeyError:
            raise ShareRejected(f"this share file holds no {purpose.value} share") from None


def _scrypt(passphrase: bytes, salt: bytes, n: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(passphrase)


class ShareCipher(Protocol):
    """Encrypts a share file in place of a passphrase: a key in the custodian's own
    PKCS#11 token (:class:`ca.pkcs11.TokenShareKey`, AES-GCM computed by the token)."""

    def header(self) -> dict[str, Any]:
        """The share file's public header entry that says how it is opened."""
        ...

    def encrypt(self, nonce: bytes, plain: bytes, aad: bytes) -> bytes: ...

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytearray: ...


def share_file_protection(header: Mapping[str, Any]) -> str:
    """``"token"`` if a share file is opened with its custodian's PKCS#11 token (its
    header names the key), ``"passphrase"`` if with a passphrase (scrypt)."""
    return "token" if "token" in header else "passphrase"


def seal_share_file(
    record: CustodyRecord,
    shares: Mapping[Purpose, Share],
    passphrase: bytes | ShareCipher,
    random_bytes: RandomBytes = os.urandom,
    *,
    work_factor: int = _SCRYPT_N,
) -> bytes:
    """The share file of one custodian: JSON whose ciphertext only the passphrase (or the
    custodian's token key, a :class:`ShareCipher`) opens."""
    members = {s.member for s in shares.values()}
    if len(members) != 1:
        raise CustodyError("a share file holds the shares of exactly one custodian")
    member = members.pop()
    entry = record.entry(member)
    for s in shares.values():
        record.verify_share(s)
    salt = random_bytes(16)
    header: dict[str, Any] = {
        "format": SHARE_FILE_FORMAT,
        "custody_id": record.custody_id,
        "member": member,
        "custodian": entry.custodian,
        "index": entry.index,
        "threshold": record.threshold,
        "total": len(record.custodians),
        "fingerprints": {p.value: s.fingerprint for p, s in _by_purpose(shares)},
    }
    if isinstance(passphrase, bytes):
        header["kdf"] = {"name": "scrypt", "salt": _b64(salt), "n": work_factor, "r": 8, "p": 1}
    else:
        header.update(passphrase.header())
    plain = bytearray()
    for p in sorted(shares, key=lambda x: x.value):
        plain += p.value.encode() + b"\x00" + bytes([shares[p].index]) + shares[p].value
    nonce = random_bytes(12)
    try:
        if isinstance(passphrase, bytes):
            key = bytearray(_scrypt(passphrase, salt, work_factor))
            try:
                ct = AESGCM(bytes(key)).encrypt(nonce, bytes(plain), _canonical(header))
            finally:
                wipe(key)
        else:
            ct = passphrase.encrypt(nonce, bytes(plain), _canonical(header))
    finally:
        wipe(plain)
    doc = dict(header, nonce=_b64(nonce), ciphertext=_b64(ct))
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def share_file_header(blob: bytes) -> dict[str, Any]:
    """The public part of a share file (no passphrase needed)."""
    try:
        doc = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        raise ShareRejected("not a share file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != SHARE_FILE_FORMAT:
        raise ShareRejected(f"not a share file ({SHARE_FILE_FORMAT})")
    return {k: v for k, v in doc.items() if k not in ("nonce", "ciphertext")}


def open_share_file(blob: bytes, passphrase: bytes | ShareCipher) -> ShareFile:
    """Decrypt a share file with its passphrase, or (a file whose header names a token
    key) with that key in the custodian's token; a wrong one or any change raises."""
    header = share_file_header(blob)
    doc = json.loads(blob)
    kind = share_file_protection(header)
    if kind != ("passphrase" if isinstance(passphrase, bytes) else "token"):
        raise ShareRejected(
            "this share file is opened with its custodian's PKCS#11 token, not a passphrase"
            if kind == "token"
            else "this share file is opened with a passphrase, not a PKCS#11 token"
        )
    # The refusal names the part of the file that is wrong: the parsers' own words
    # ("string indices must be integers") do not.
    field = "nonce"
    try:
        nonce = _unb64(doc["nonce"], "nonce")
        if len(nonce) != 12:  # as every share file is written; AES-GCM would raise
            raise ValueError("not 12 bytes")
        field = "ciphertext"
        ct = _unb64(doc["ciphertext"], "ciphertext")
        field = "custody_id and member"
        custody_id, member = str(header["custody_id"]), str(header["member"])
        if isinstance(passphrase, bytes):
            field = "kdf"
            kdf = header["kdf"]
            n = int(kdf["n"])
            if kdf.get("name") != "scrypt" or kdf.get("r") != 8 or kdf.get("p") != 1:
                raise ShareRejected("unsupported share file key derivation")
            if not _SCRYPT_LIMITS[0] <= n <= _SCRYPT_LIMITS[1] or n & (n - 1):
                raise ShareRejected("share file scrypt cost out of range")
            salt = _unb64(kdf["salt"], "salt")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ShareRejected(
            f"malformed share file: its {field} is not as eport writes it"
        ) from None
    if isinstance(passphrase, bytes):
        key = bytearray(_scrypt(passphrase, salt, n))
        try:
            plain = bytearray(AESGCM(bytes(key)).decrypt(nonce, ct, _canonical(header)))
        except InvalidTag:
            raise WrongPassphrase(
                "cannot open the share file: wrong passphrase, or the file was changed"
            ) from None
        finally:
            wipe(key)
    else:
        plain = passphrase.decrypt(nonce, ct, _canonical(header))
    shares: dict[Purpose, Share] = {}
    try:
        pos = 0
        while pos < len(plain):
            sep = plain.index(0, pos)
            purpose = Purpose(plain[pos:sep].decode())
            index = plain[sep + 1]
            value = bytes(plain[sep + 2 : sep + 2 + KEK_SIZE])
            shares[purpose] = Share(custody_id, purpose, member, index, value)
            pos = sep + 2 + KEK_SIZE
    except (ValueError, IndexError):
        raise ShareRejected("the share file's content is malformed") from None
    finally:
        wipe(plain)
    for p, s in shares.items():
        if header["fingerprints"].get(p.value) != s.fingerprint:
            raise ShareRejected("the share file's fingerprints do not match its shares")
    return ShareFile(
        custody_id=custody_id,
        member=member,
        custodian=str(header["custodian"]),
        threshold=int(header["threshold"]),
        total=int(header["total"]),
        shares=shares,
    )


def members_notice(
    record: CustodyRecord, members: Sequence[tuple[str, str]], threshold: int
) -> str | None:
    """For health: the custody record's members or threshold differ from the policies'
    (``members``: each member's id and custodian name, ``policies/members.toml``), or None.
    Until a re-share, the record's shares open the root: a member taken out of the
    policies keeps its share, and one put in has none."""
    held = {(c.member, c.custodian) for c in record.custodians}
    named = set(members)
    if held == named and record.threshold == threshold:
        return None
    gone = sorted(m for m, _ in held - named)
    new = sorted(m for m, _ in named - held)
    parts = []
    if gone:
        parts.append(f"shares held by {', '.join(gone)}, whom the policies no longer name")
    if new:
        parts.append(f"none held by {', '.join(new)}, whom the policies name")
    if record.threshold != threshold:
        parts.append(f"a quorum of {record.threshold}, not the policies' {threshold}")
    return (
        "the custody record does not match policies/members.toml (" + "; ".join(parts) + "): "
        "its shares open the root until a re-share (eport ca reshare) hands them out as the "
        "policies say"
    )
