"""Shares in transit: sealed to a ceremony's ephemeral X25519 key (ECIES-style).

A custodian's CLI never sends a share in the clear, even over TLS: it makes an
ephemeral X25519 key pair (RFC 7748), derives an AES-256-GCM key with HKDF-SHA256
(RFC 5869) from the shared secret, both public keys and the ceremony id, and
encrypts the share's index and value. The custody id, purpose and member travel in
the clear and are bound as associated data, so a share sealed for one ceremony,
custody set or custodian does not open as another.

The ceremony's private key is derived by the server from its per-boot secret
(:mod:`ca.unseal`); it is never stored or sent.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ca.custody import KEK_SIZE, Purpose, Share, ShareRejected, wipe

FORMAT = "eport-sealed-share/v1"


def raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(public: bytes) -> str:
    """What custodians compare out of band: 16 hex groups of SHA-256 of the raw key."""
    digest = hashlib.sha256(b"eport-ceremony-key/v1\x00" + public).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def _key(shared: bytes, epk: bytes, server: bytes, ceremony_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=epk + server,
        info=b"eport-ceremony-share/v1\x00" + ceremony_id.encode(),
    ).derive(shared)


def _aad(ceremony_id: str, custody_id: str, purpose: str, member: str) -> bytes:
    return b"\x00".join(
        [
            FORMAT.encode(),
            ceremony_id.encode(),
            custody_id.encode(),
            purpose.encode(),
            member.encode(),
        ]
    )


def seal_share(share: Share, ceremony_id: str, ceremony_public: bytes) -> dict[str, Any]:
    """The JSON object a custodian posts to join ``ceremony_id``."""
    server = X25519PublicKey.from_public_bytes(ceremony_public)
    eph = X25519PrivateKey.generate()
    epk = raw_public(eph.public_key())
    key = bytearray(_key(eph.exchange(server), epk, ceremony_public, ceremony_id))
    plain = bytearray(bytes([share.index]) + share.value)
    try:
        nonce = hashlib.sha256(epk).digest()[:12]  # the key is single-use: any fixed nonce is safe
        ct = AESGCM(bytes(key)).encrypt(
            nonce,
            bytes(plain),
            _aad(ceremony_id, share.custody_id, share.purpose.value, share.member),
        )
    finally:
        wipe(key)
        wipe(plain)
    return {
        "format": FORMAT,
        "ceremony": ceremony_id,
        "custody_id": share.custody_id,
        "purpose": share.purpose.value,
        "member": share.member,
        "epk": base64.b64encode(epk).decode(),
        "ciphertext": base64.b64encode(ct).decode(),
    }


def open_share(sealed: Any, ceremony_id: str, ceremony_private: X25519PrivateKey) -> Share:
    """The share inside ``sealed``; anything else than a share sealed for this ceremony raises."""
    if not isinstance(sealed, dict) or sealed.get("format") != FORMAT:
        raise ShareRejected(f"the share must be sealed to the ceremony key ({FORMAT})")
    try:
        if sealed["ceremony"] != ceremony_id:
            raise ShareRejected("the share was sealed for another ceremony")
        custody_id = str(sealed["custody_id"])
        purpose = Purpose(sealed["purpose"])
        member = str(sealed["member"])
        epk = base64.b64decode(str(sealed["epk"]), validate=True)
        ct = base64.b64decode(str(sealed["ciphertext"]), validate=True)
        peer = X25519PublicKey.from_public_bytes(epk)
    except (KeyError, TypeError, ValueError):
        raise ShareRejected("malformed sealed share") from None
    server = raw_public(ceremony_private.public_key())
    key = bytearray(_key(ceremony_private.exchange(peer), epk, server, ceremony_id))
    try:
        plain = bytearray(
            AESGCM(bytes(key)).decrypt(
                hashlib.sha256(epk).digest()[:12],
                ct,
                _aad(ceremony_id, custody_id, purpose.value, member),
            )
        )
    except InvalidTag:
        raise ShareRejected(
            "the share does not open with this ceremony's key (sealed for another "
            "ceremony or server, or changed in transit)"
        ) from None
    finally:
        wipe(key)
    try:
        if len(plain) != 1 + KEK_SIZE:
            raise ShareRejected("malformed sealed share")
        return Share(custody_id, purpose, member, plain[0], bytes(plain[1:]))
    finally:
        wipe(plain)
