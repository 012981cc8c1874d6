"""The per-boot secret that lets the worker processes of one server share an unseal.

``eport serve`` makes 32 random bytes in the gunicorn master **before** it forks its
workers, so every worker inherits the same :class:`BootKey` through memory; it is
never written to disk, the database, the environment or a log. From it each worker
derives, without talking to the others:

* the **boot id** (public), which names this server instance's unseal ceremony;
* each ceremony's **X25519 private key** (RFC 7748), by HKDF (RFC 5869) over the
  ceremony id: custodians seal their shares to the public half, so any worker can
  open a share another worker received, and nobody without the boot secret can;
* a **wrapping key** (AES-GCM) for the seal KEK once M custodians have unsealed: the
  unseal ceremony's row keeps the KEK wrapped by it, and every worker that finds the
  row unwraps the KEK and unseals its own copy of the CA keys.

Risk, accepted and documented in ``docs/custody.md``: while the server runs, whoever
can read a worker's memory and the database can recover the seal KEK (as they could
read the unsealed keys in that memory anyway). When the master stops, the boot secret
is gone and what the database holds is undecryptable: a restarted server is sealed.
The root KEK is never wrapped this way; it exists only during one quorum operation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ca.errors import Sealed

UNSEAL_PREFIX = "unseal-"


class BootKey:
    """A server instance's secret; see the module docstring."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("a boot secret has 32 bytes")
        self._secret = bytes(secret)
        self.id = hmac.new(self._secret, b"eport-boot-id/v1", hashlib.sha256).hexdigest()[:16]

    def _derive(self, info: bytes, length: int = 32) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(
            self._secret
        )

    @property
    def unseal_ceremony_id(self) -> str:
        return UNSEAL_PREFIX + self.id

    def ceremony_key(self, ceremony_id: str) -> X25519PrivateKey:
        """The ceremony's private key: the same in every worker of this boot."""
        raw = self._derive(b"eport-ceremony-x25519/v1\x00" + ceremony_id.encode())
        return X25519PrivateKey.from_private_bytes(raw)

    def wrap(self, secret: bytes | bytearray, label: str) -> bytes:
        nonce = os.urandom(12)
        key = self._derive(b"eport-boot-wrap/v1")
        return nonce + AESGCM(key).encrypt(nonce, bytes(secret), label.encode())

    def unwrap(self, blob: bytes, label: str) -> bytearray:
        key = self._derive(b"eport-boot-wrap/v1")
        try:
            return bytearray(AESGCM(key).decrypt(blob[:12], blob[12:], label.encode()))
        except InvalidTag:
            raise Sealed("the unseal record was made by another server instance") from None

    def __repr__(self) -> str:
        return f"BootKey(id={self.id})"


_current: BootKey | None = None
_lock = threading.Lock()


def current() -> BootKey:
    """This process's boot key, made on first use (``eport serve`` calls this before fork)."""
    global _current
    with _lock:
        if _current is None:
            _current = BootKey(os.urandom(32))
        return _current
