"""The one small interface behind which every CA key lives.

Issuance, CRL and OCSP code only ever call :meth:`Signer.sign` on the bytes to be
signed (a TBSCertificate, a TBSCertList, a ResponseData) and read the public key;
they never hold the private key. A software key (sealed at rest as encrypted
PKCS#8), an M-of-N reconstructed root key, or a PKCS#11 token all fit behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from ca.errors import KeyLost, Sealed
from ca.keys import KeyType, sign_bytes


@runtime_checkable
class Signer(Protocol):
    """A CA key that signs X.509 structures (RFC 5280 §4.1.1.3 signatureValue)."""

    @property
    def key_type(self) -> KeyType: ...

    def public_key(self) -> CertificatePublicKeyTypes: ...

    def sign(self, data: bytes) -> bytes:
        """The signature over ``data`` in X.509 encoding (ECDSA as DER ``Ecdsa-Sig-Value``)."""
        ...


class SoftwareSigner:
    """A private key held in this process's memory (after unsealing)."""

    def __init__(self, key: CertificateIssuerPrivateKeyTypes) -> None:
        self._key = key
        self._type = KeyType.of(key)

    @property
    def key_type(self) -> KeyType:
        return self._type

    def public_key(self) -> CertificatePublicKeyTypes:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return sign_bytes(self._key, data)

    def in_memory_key(self) -> CertificateIssuerPrivateKeyTypes:
        """The key itself, for ``cryptography``'s builders to sign with directly."""
        return self._key

    def __repr__(self) -> str:
        return f"SoftwareSigner({self._type.value})"


class SealedSigner:
    """Stands for a key that has not been unsealed: signing raises :class:`Sealed`.

    :meth:`unseal` opens it in place, so every holder of this object (issuance, CRLs,
    OCSP, checkpoints) can sign from then on without being rebuilt.
    """

    def __init__(self, public_key: CertificatePublicKeyTypes) -> None:
        self._public = public_key
        self._type = KeyType.of(public_key)
        self._inner: Signer | None = None
        self.lost: str | None = None
        """Why the key cannot be unsealed while the others could (:meth:`lose`): its slot's
        file and the error, ``issuers/enterprise.key: No such file or directory``."""

    @property
    def sealed(self) -> bool:
        return self._inner is None and self.lost is None

    @property
    def missing(self) -> bool:
        """Whether the key was found missing or damaged when the others were unsealed."""
        return self.lost is not None

    def lose(self, why: str) -> None:
        """The key cannot be unsealed (its file missing, unreadable or damaged) while the
        others were: signing raises :class:`~ca.errors.KeyLost` (503 key-missing) rather
        than :class:`~ca.errors.Sealed`, and the CA counts as unsealed without it."""
        self.lost = why

    def unseal(self, inner: Signer) -> None:
        """Sign with ``inner`` from now on; it must hold this signer's key."""
        if inner.public_key() != self._public:
            raise Sealed("the unsealed key is not the key of this certificate")
        self._inner = inner

    @property
    def key_type(self) -> KeyType:
        return self._type

    def public_key(self) -> CertificatePublicKeyTypes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        inner = self._inner
        if inner is None and self.lost is not None:
            raise KeyLost(f"cannot sign: the CA key file {self.lost}")
        if inner is None:
            raise Sealed(
                "the CA keys are sealed: nothing can be signed until M custodians unseal the "
                "CA (eport ca unseal)"
            )
        return inner.sign(data)

    def in_memory_key(self) -> CertificateIssuerPrivateKeyTypes | None:
        """The unsealed key when it is held in memory (not in a token), else None."""
        return in_memory_key(self._inner) if self._inner is not None else None


def in_memory_key(signer: Signer) -> CertificateIssuerPrivateKeyTypes | None:
    """``signer``'s private key object when this process holds it (a software key), so a
    ``cryptography`` builder can sign with it directly; None for a token or a sealed key."""
    get = getattr(signer, "in_memory_key", None)
    return get() if callable(get) else None


def seal_key(key: CertificateIssuerPrivateKeyTypes, path: Path, passphrase: bytes) -> None:
    """Write ``key`` as encrypted PKCS#8 (RFC 5958, PBES2), readable by its owner only."""
    from ca import pkcs8

    write_private(path, pkcs8.encrypt(key, passphrase))


def unseal_key(path: Path, passphrase: bytes) -> SoftwareSigner:
    """Read an encrypted PKCS#8 key written by :func:`seal_key`."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), passphrase)
    except (ValueError, TypeError) as exc:
        raise Sealed(f"cannot unseal {path.name}: wrong passphrase or damaged key file") from exc
    if not hasattr(key, "sign"):
        raise Sealed(f"{path.name} does not hold a signing key")
    return SoftwareSigner(key)  # type: ignore[arg-type]


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` as a new regular file with mode 0600 before any byte is written,
    atomically replaced.

    The bytes go to a temporary file of a unique name in the same directory, made with
    ``O_CREAT|O_EXCL|O_NOFOLLOW`` (:func:`tempfile.mkstemp`), fsynced, then renamed over
    ``path``. A fixed ``<name>.tmp`` was opened with ``O_TRUNC`` and no ``O_EXCL``: one
    left behind kept its own mode (a key written 0644), and a symlink there was followed
    (the key written wherever it pointed). The temporary file ends in ``.tmp``, so that
    a backup of the data directory leaves it out if a crash leaves it behind.
    """
    import contextlib
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o600)  # mkstemp's mode, whatever a platform's default
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    with contextlib.suppress(OSError):  # the rename survives a power loss, where it can
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
