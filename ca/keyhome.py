"""Where a CA key made after init goes: where the key it succeeds or sits beside is.

Responder renewal (:mod:`ca.responders`), ``ISSUE-INTERMEDIATE``/``ROTATE-ISSUER`` and
``ROTATE-LOG-KEY`` (:mod:`ca.root_ops`) make new keys. If the key file they look at
names a PKCS#11 token key (:mod:`ca.pkcs11`), the new key is generated in that same
token (sensitive, never extractable) and its key file gets a reference; otherwise it
is a software key sealed like the others (the seal KEK an unsealed worker holds, or
the CA passphrase). So an HSM hierarchy never gains a file key, and a token-held
server, which is never unsealed because it holds no sealed key, can make keys without
any seal KEK.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from ca import pkcs11
from ca.errors import Sealed
from ca.keys import KeyType
from ca.sealing import KeySealer, slot_of
from ca.signer import Signer, SoftwareSigner


@dataclass
class NewKey:
    """A key just made and not stored yet: :meth:`store` it at its key file, or
    :meth:`discard` it when the operation that made it fails."""

    signer: Signer
    _software: CertificateIssuerPrivateKeyTypes | None = None
    _sealer: KeySealer | None = None
    _token: pkcs11.Pkcs11Signer | None = None

    @property
    def public_key(self) -> CertificatePublicKeyTypes:
        return self.signer.public_key()

    @property
    def in_token(self) -> bool:
        return self._token is not None

    def store(self, path: Path) -> None:
        """Write the key file: the token reference, or the sealed software key."""
        if self._token is not None:
            pkcs11.write_reference(path, self._token)
        else:
            assert self._sealer is not None and self._software is not None
            self._sealer.seal(self._software, path)

    def discard(self) -> None:
        """Delete a token key that will not be used (a software key is just dropped)."""
        if self._token is not None:
            pkcs11.destroy(self._token.uri)


@dataclass(frozen=True)
class KeyHome:
    """A token (``token``) or a sealer: what :meth:`new` makes keys with."""

    token: pkcs11.Pkcs11Uri | None = None
    sealer: KeySealer | None = None

    def new(self, key_type: KeyType, path: Path) -> NewKey:
        """A new key for the key file ``path`` (which names its token label)."""
        if self.token is not None:
            signer = pkcs11.generate(self.token, key_type, f"eport {slot_of(path)}")
            return NewKey(signer, _token=signer)
        assert self.sealer is not None
        key = key_type.generate()
        return NewKey(SoftwareSigner(key), _software=key, _sealer=self.sealer)


def key_home(existing: Sequence[Path], sealer: KeySealer | None, what: str) -> KeyHome:
    """Where the new key goes: the token of the first of ``existing`` that exists, if its
    key file names a token key; else ``sealer``. Raises :class:`~ca.errors.Sealed`
    (503) when a software key is due and there is no sealer (a sealed server)."""
    for path in existing:
        if path.exists():
            if pkcs11.is_reference(path):
                return KeyHome(token=pkcs11.read_reference(path).uri.token_only())
            break
    if sealer is None:
        raise Sealed(f"{what} makes a key sealed by the seal KEK: unseal the CA first")
    return KeyHome(sealer=sealer)


def discard_file(path: Path) -> None:
    """Remove a key file left by an operation cut short, and its token key if it names one
    (best effort: a token that cannot be reached keeps an unused key)."""
    if pkcs11.is_reference(path):
        with contextlib.suppress(pkcs11.Pkcs11Error):
            pkcs11.destroy(pkcs11.read_reference(path).uri)
    path.unlink(missing_ok=True)
