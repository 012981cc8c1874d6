"""How a CA key file is sealed at rest: to a passphrase, or under a custody KEK.

:class:`PassphraseSealer` writes encrypted PKCS#8 (RFC 5958, PBES2): the development
CA and hierarchies made before joint custody. :class:`KekSealer` wraps the key with a
key-encryption key rebuilt from M custodian shares (:mod:`ca.custody`). Both give a
:class:`~ca.signer.SoftwareSigner` back; :func:`open_key` tells the two formats apart.
A key file that names a PKCS#11 token key (:mod:`ca.pkcs11`) holds nothing to unseal:
either sealer gives that token key's signer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca import custody
from ca.errors import Sealed
from ca.signer import Signer, SoftwareSigner, seal_key, unseal_key, write_private


def slot_of(path: Path) -> str:
    """The name a key is bound to: ``issuers/enterprise``, ``responders/tax``, ``ca/log``.

    Temporary suffixes (``.key.new``) do not change it, so a key written beside its
    final place and renamed still opens there.
    """
    return f"{path.parent.name}/{path.name.split('.', 1)[0]}"


class KeySealer(Protocol):
    def seal(self, key: CertificateIssuerPrivateKeyTypes, path: Path) -> None: ...

    def unseal(self, path: Path) -> Signer: ...


def _token_key(path: Path) -> Signer | None:
    from ca import pkcs11

    return pkcs11.read_reference(path) if pkcs11.is_reference(path) else None


class PassphraseSealer:
    """Encrypted PKCS#8 under a passphrase."""

    def __init__(self, passphrase: bytes) -> None:
        self._passphrase = passphrase

    def seal(self, key: CertificateIssuerPrivateKeyTypes, path: Path) -> None:
        seal_key(key, path, self._passphrase)

    def unseal(self, path: Path) -> Signer:
        return _token_key(path) or unseal_key(path, self._passphrase)

    def __repr__(self) -> str:
        return "PassphraseSealer(***)"


class KekSealer:
    """AES-GCM under a custody KEK, bound to the custody set, the KEK's purpose and the slot."""

    def __init__(self, kek: bytes | bytearray, custody_id: str, purpose: custody.Purpose) -> None:
        self._kek = kek
        self.custody_id = custody_id
        self.purpose = purpose

    def seal(self, key: CertificateIssuerPrivateKeyTypes, path: Path) -> None:
        blob = custody.wrap_key(self._kek, self.custody_id, self.purpose, slot_of(path), key)
        write_private(path, blob)

    def unseal(self, path: Path) -> Signer:
        in_token = _token_key(path)
        if in_token is not None:
            return in_token
        blob = path.read_bytes()
        if not custody.is_wrapped(blob):
            raise Sealed(f"{path.name} is not sealed under the custody key-encryption key")
        try:
            key = custody.unwrap_key(self._kek, self.custody_id, self.purpose, slot_of(path), blob)
        except custody.CustodyError as exc:
            raise Sealed(f"cannot unseal {path.name}: {exc.detail}") from None
        return SoftwareSigner(key)

    def __repr__(self) -> str:
        return f"KekSealer({self.custody_id}, {self.purpose.value})"


def sealer_of(secret: bytes | KeySealer) -> KeySealer:
    """A passphrase (bytes) becomes a :class:`PassphraseSealer`; a sealer is itself."""
    if isinstance(secret, bytes | bytearray):
        return PassphraseSealer(bytes(secret))
    return secret
