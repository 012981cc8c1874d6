"""Key types the joint CA knows, and the rules that refuse weak keys.

RFC 5480 (EC), RFC 8410 (Ed25519), RFC 4055 / RFC 8017 (RSA). No RSA below 2048
bits and no curve weaker than P-256: such types cannot even be named in a profile.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)

from ca.errors import WeakKey


@enum.unique
class KeyType(enum.Enum):
    """A key algorithm and size a profile may allow."""

    P256 = "p256"
    P384 = "p384"
    ED25519 = "ed25519"
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"

    @classmethod
    def of(cls, key: PublicKeyTypes | PrivateKeyTypes) -> KeyType:
        """The type of ``key``; any key we do not accept raises :class:`WeakKey`."""
        if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
            name = key.curve.name
            if name == "secp256r1":
                return cls.P256
            if name == "secp384r1":
                return cls.P384
            raise WeakKey(f"elliptic curve {name} is not accepted (use P-256 or P-384)")
        if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
            return cls.ED25519
        if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
            size = key.key_size
            if isinstance(key, rsa.RSAPublicKey) and key.public_numbers().e != 65537:
                raise WeakKey("RSA public exponent must be 65537")
            if size in (2048, 3072, 4096):
                return cls(f"rsa{size}")
            raise WeakKey(f"RSA key of {size} bits is not accepted (2048, 3072 or 4096)")
        kind = type(key).__name__.removeprefix("_").removesuffix("PublicKey")
        kind = kind.removesuffix("PrivateKey")
        raise WeakKey(
            f"{kind} keys are not accepted (P-256, P-384, Ed25519, or RSA of 2048 to 4096 bits)"
        )

    def generate(self) -> CertificateIssuerPrivateKeyTypes:
        """A fresh private key of this type."""
        if self is KeyType.P256:
            return ec.generate_private_key(ec.SECP256R1())
        if self is KeyType.P384:
            return ec.generate_private_key(ec.SECP384R1())
        if self is KeyType.ED25519:
            return ed25519.Ed25519PrivateKey.generate()
        return rsa.generate_private_key(public_exponent=65537, key_size=int(self.value[3:]))

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm | None:
        """The digest a CA key of this type signs with (None: Ed25519 hashes itself)."""
        if self is KeyType.P384:
            return hashes.SHA384()
        if self is KeyType.ED25519:
            return None
        return hashes.SHA256()

    @property
    def jws_alg(self) -> str:
        """The RFC 7518 / RFC 8037 JWS algorithm a key of this type signs with."""
        return {
            KeyType.P256: "ES256",
            KeyType.P384: "ES384",
            KeyType.ED25519: "EdDSA",
        }.get(self, "RS256")


def sign_bytes(key: CertificateIssuerPrivateKeyTypes, data: bytes) -> bytes:
    """Sign ``data`` as an X.509 signature of ``key``'s type (ECDSA DER, PKCS#1 v1.5, Ed25519)."""
    kt = KeyType.of(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        h = kt.hash_algorithm
        assert h is not None
        return key.sign(data, ec.ECDSA(h))
    if isinstance(key, rsa.RSAPrivateKey):
        h = kt.hash_algorithm
        assert h is not None
        return key.sign(data, padding.PKCS1v15(), h)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise WeakKey(f"cannot sign with {type(key).__name__}")


def public_key_of(key: CertificateIssuerPrivateKeyTypes) -> CertificatePublicKeyTypes:
    return key.public_key()
