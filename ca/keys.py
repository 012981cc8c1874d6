"""Key types the joint CA knows, and the rules that refuse weak keys.

RFC 5480 (EC), RFC 8410 (Ed25519), RFC 4055 / RFC 8017 (RSA). No RSA below 2048
bits and no curve weaker than P-256: such types cannot even be named in a profile.
"""

from __future__ import annotations

import enum
import math

from cryptography.hazmat.primitives import hashes, serialization
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
        if isinstance(key, ed25519.Ed25519PublicKey):
            why = ed25519_weakness(key.public_bytes_raw())
            if why is not None:
                raise WeakKey(why)
            return cls.ED25519
        if isinstance(key, ed25519.Ed25519PrivateKey):
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


# -- keys anyone can sign with, or anyone can work out -------------------------------------

_P = 2**255 - 19
_ORDER_8_Y = int.from_bytes(
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"
)
_SMALL_ORDER_Y = frozenset({1, _P - 1, 0, _ORDER_8_Y, _P - _ORDER_8_Y})
"""The y coordinates of the eight points of small order (the cofactor is 8): the
identity (0, 1), the point of order 2 (0, -1), the two of order 4 (y = 0) and the four
of order 8 (y = ±y8). A point and its negation share y and order, so y alone decides."""


def ed25519_weakness(encoded: bytes) -> str | None:
    """Why the Ed25519 public key ``encoded`` (RFC 8032 §5.1.5) is refused, or None: a
    non-canonical encoding, or a point of small order. The identity point (``01 00…00``)
    with the signature ``R = 01 00…00, S = 0`` verifies for every message under
    cofactorless verification (OpenSSL, ``cryptography``): its certificate would let
    anyone sign as its subject (key-type probe, F7); the other small-order points admit
    forgeries for one message in eight. A few integer operations: it runs wherever a
    key's type is read, signed requests and logins included."""
    if len(encoded) != 32:
        return "an Ed25519 public key is 32 bytes"
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)
    if y >= _P:
        return "the Ed25519 public key is not canonically encoded (RFC 8032 §5.1.3)"
    if y in _SMALL_ORDER_Y:
        return (
            "the Ed25519 public key is a point of small order: signatures under it can be "
            "made without any private key"
        )
    return None


_SMALL_PRIMES = tuple(
    n for n in range(3, 10_000, 2) if all(n % f for f in range(3, int(n**0.5) + 1, 2))
)
_FERMAT_ROUNDS = 100
_SMALL_MULTIPLES = 256
_EC_MULTIPLES: dict[str, frozenset[bytes]] = {}


def refuse_weak_public_key(key: PublicKeyTypes) -> None:
    """Refuse (:class:`~ca.errors.WeakKey`) a key of an accepted type whose private key
    anyone can work out from the public one, before it is certified (as a public CA's
    checks do): an RSA modulus with a small factor, two close primes (Fermat), or a
    prime modulus; an EC point that is a small multiple of the generator (a private value
    of 1 to 256). A certificate of such a key let anyone log in as its subject (key-type
    probe, F6). Run only where a key is certified, after :meth:`KeyType.of` (which
    refuses the other weak keys, Ed25519's small-order points among them). Measured here:
    27 ms for RSA-2048, 76 ms for 3072 and 185 ms for 4096 (the primality test's modular
    power dominates); an EC key costs a set lookup (the set is made once per process and
    curve, 13 ms for P-256)."""
    if isinstance(key, rsa.RSAPublicKey):
        n = key.public_numbers().n
        why = _rsa_weakness(n)
        if why is not None:
            raise WeakKey(f"RSA key refused: {why}; generate a new key")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        point = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        if point in _small_multiples(key.curve):
            raise WeakKey(
                "EC key refused: its private value is a small number that anyone can find; "
                "generate a new key"
            )


def _rsa_weakness(n: int) -> str | None:
    if n % 2 == 0:
        return "its modulus is even"
    for f in _SMALL_PRIMES:
        if n % f == 0:
            return f"its modulus has the small factor {f}"
    if pow(2, n - 1, n) == 1:
        return "its modulus is a prime, not a product of two"
    a = math.isqrt(n)
    if a * a < n:
        a += 1
    for _ in range(_FERMAT_ROUNDS):
        b2 = a * a - n
        b = math.isqrt(b2)
        if b * b == b2:
            return "its two primes are so close that the modulus factors at once (Fermat)"
        a += 1
    return None


def _small_multiples(curve: ec.EllipticCurve) -> frozenset[bytes]:
    found = _EC_MULTIPLES.get(curve.name)
    if found is None:
        found = frozenset(
            ec.derive_private_key(k, curve)
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            for k in range(1, _SMALL_MULTIPLES + 1)
        )
        _EC_MULTIPLES[curve.name] = found
    return found
