"""Encrypted private key files: PKCS#8 ``EncryptedPrivateKeyInfo`` (RFC 5958 §3) under PBES2
(RFC 8018 §6.2) with PBKDF2-HMAC-SHA256 (RFC 8018 §5.2, RFC 8018 appendix B.1.2) and
AES-256-CBC (RFC 8018 appendix B.2.5), PEM-armoured as ``ENCRYPTED PRIVATE KEY`` (RFC 7468
§11).

Why not ``cryptography``'s ``BestAvailableEncryption``: for PKCS#8 it fixes PBKDF2 at 2,048
iterations (OpenSSL's old default), and its ``encryption_builder`` (which takes a count) is
offered for PKCS#12 and OpenSSH keys only. 2,048 iterations of SHA-256 cost an attacker who
holds a stolen key file about a millisecond of one core per guessed passphrase; the
600,000 here (OWASP's figure for PBKDF2-HMAC-SHA256) cost a few hundred times that, and the
owner about 0.1 s at each opening. The structure is the one OpenSSL and ``cryptography``
write themselves with other counts, so ``openssl pkey``, ``openssl pkcs8`` and
``serialization.load_pem_private_key`` read these files as they are; files written with any
other count or by either tool still open everywhere the CA reads a key.

The count is ``EPORT_KEY_KDF_ITERATIONS`` when set (an integer from 2,048 to 100,000,000),
else :data:`DEFAULT_ITERATIONS`; it is written into each file, so a file keeps the count it
was made with and a reader needs no setting. The development CA writes its own keys, whose
passphrases it keeps in the clear beside them, with the least count
(:func:`passphrase_beside_key`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from asn1crypto import algos as asn1_algos
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

DEFAULT_ITERATIONS = 600_000
MIN_ITERATIONS = 2_048  # what OpenSSL and ``cryptography`` write by default
MAX_ITERATIONS = 100_000_000
ITERATIONS_ENV = "EPORT_KEY_KDF_ITERATIONS"
PEM_LABEL = "ENCRYPTED PRIVATE KEY"


_COUNT: ContextVar[int | None] = ContextVar("pkcs8_count", default=None)


class KdfSettingError(ValueError):
    """``EPORT_KEY_KDF_ITERATIONS`` is not a count this module will write."""


@contextlib.contextmanager
def passphrase_beside_key() -> Iterator[None]:
    """Within this block (this thread), key files take the least count: for keys whose
    passphrase is written in the clear next to them (the development CA's ``dev/``), where
    a slow derivation would protect nothing and cost every start and every signed call."""
    token = _COUNT.set(MIN_ITERATIONS)
    try:
        yield
    finally:
        _COUNT.reset(token)


def iterations() -> int:
    """The PBKDF2 count for new key files: the environment's, or the default."""
    raw = os.environ.get(ITERATIONS_ENV, "").strip()
    if not raw:
        return DEFAULT_ITERATIONS
    try:
        value = int(raw, 10)
    except ValueError:
        value = -1
    if not MIN_ITERATIONS <= value <= MAX_ITERATIONS:
        raise KdfSettingError(
            f"{ITERATIONS_ENV} must be a whole number from {MIN_ITERATIONS:,} to "
            f"{MAX_ITERATIONS:,} (got {raw!r}); unset, it is {DEFAULT_ITERATIONS:,}"
        )
    return value


def encrypt(
    key: PrivateKeyTypes,
    passphrase: bytes,
    *,
    count: int | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """``key`` as a PEM ``ENCRYPTED PRIVATE KEY`` that ``passphrase`` opens."""
    if not passphrase:
        raise ValueError("an encrypted key file needs a non-empty passphrase")
    n = count if count is not None else _COUNT.get() or iterations()
    if not MIN_ITERATIONS <= n <= MAX_ITERATIONS:
        raise ValueError(f"PBKDF2 count {n} is outside {MIN_ITERATIONS}..{MAX_ITERATIONS}")
    salt = random_bytes(16)  # RFC 8018 §4.1: at least 64 bits
    iv = random_bytes(16)
    secret = PBKDF2HMAC(hashes.SHA256(), 32, salt, n).derive(passphrase)
    plain = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    padder = padding.PKCS7(128).padder()  # RFC 8018 §6.2.1 step 4 (RFC 5652 §6.3 padding)
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES256(secret), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    info = asn1_keys.EncryptedPrivateKeyInfo(
        {
            "encryption_algorithm": {
                "algorithm": "pbes2",
                "parameters": {
                    "key_derivation_func": {
                        "algorithm": "pbkdf2",
                        "parameters": {
                            "salt": asn1_algos.Pbkdf2Salt(name="specified", value=salt),
                            "iteration_count": n,
                            "prf": {"algorithm": "sha256", "parameters": None},
                        },
                    },
                    "encryption_scheme": {"algorithm": "aes256_cbc", "parameters": iv},
                },
            },
            "encrypted_data": ciphertext,
        }
    )
    return bytes(asn1_pem.armor(PEM_LABEL, info.dump()))


def count_of(pem: bytes) -> int | None:
    """The PBKDF2 count of an encrypted key file (None: not PBES2 with PBKDF2)."""
    try:
        label, _, der = asn1_pem.unarmor(pem)
        if label != PEM_LABEL:
            return None
        info = asn1_keys.EncryptedPrivateKeyInfo.load(der)
        algorithm = info["encryption_algorithm"]
        if algorithm["algorithm"].native != "pbes2":
            return None
        kdf = algorithm["parameters"]["key_derivation_func"]
        if kdf["algorithm"].native != "pbkdf2":
            return None
        return int(kdf["parameters"]["iteration_count"].native)
    except (ValueError, TypeError, KeyError):
        return None
