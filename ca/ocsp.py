"""The OCSP responder core: RFC 6960 requests parsed, responses built and signed.

Framework-free: the HTTP layer hands in request bytes (a POST body, or the path of
a GET decoded by :func:`request_from_get_path`, RFC 6960 Appendix A.1), asks its
status store about each :class:`CertID` of the :class:`OCSPRequestInfo` that
:func:`parse_request` returns, and sends back what :func:`build_response`,
:func:`build_response_multi` or :func:`error_response` made.

Every response is signed by a delegated responder (RFC 6960 §4.2.2.2): a
certificate issued by the CA it answers for, with the id-kp-OCSPSigning extended
key usage and the id-pkix-ocsp-nocheck extension (§4.2.2.2.1), whose key sits
behind a :class:`~ca.signer.Signer`. One :class:`Responder` per issuing CA.

The response profile (RFC 6960 §4.2.1, §4.2.2.3):

* ``OCSPResponse`` with responseStatus successful and responseBytes of type
  id-pkix-ocsp-basic;
* ``ResponseData`` version v1 (the DEFAULT, so absent), ResponderID byKey (the
  SHA-1 of the responder's subjectPublicKey, §4.2.1), producedAt, one
  ``SingleResponse`` per CertID, and the nonce (RFC 8954) echoed in
  responseExtensions when the request had one;
* each ``SingleResponse`` carries the CertID as the requester encoded its hash
  AlgorithmIdentifier (absent or NULL parameters), a certStatus, thisUpdate and
  nextUpdate; revoked carries revocationTime and a revocationReason unless the
  reason is unspecified (RFC 5280 §5.3.1); a suspended certificate is revoked
  with reason certificateHold (RFC 6960 §2.2);
* times as GeneralizedTime ``YYYYMMDDHHMMSSZ``, whole seconds (RFC 5280
  §4.1.2.5.2);
* signatureAlgorithm from the signer's key type: ecdsa-with-SHA256 or -SHA384
  (RFC 5758 §3.2, parameters absent), Ed25519 (RFC 8410 §3, parameters absent),
  sha256WithRSAEncryption (RFC 4055 §5, parameters NULL);
* certs holding the responder certificate, so that a client can check the
  delegation (§4.2.2.2);
* for a certificate the CA recorded, the SingleResponse's singleExtensions carry
  CertHash (Common PKI, ``1.3.36.8.3.13``, not critical): the SHA-256 of the whole
  certificate whose status this is. A request names a certificate by issuer and serial
  alone, so without it a certificate made with the issuing CA's key outside issuance
  that copies a recorded serial would read as the original's status
  (``ca.ocsp_client.check_response`` reads it back).

Why the DER is written by hand: everything in a response except the CertIDs,
the statuses, the times and the nonce is fixed per responder, so those
fragments are encoded once, when the :class:`Responder` is made, and a
response is a join of byte strings around one ``Signer.sign`` call. The tests
check that asn1crypto re-encodes every response to the same bytes (DER).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import unquote

from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.crl import ReasonCode, aware_utc, der_header
from ca.errors import BadRequest
from ca.keys import KeyType
from ca.signer import Signer

__all__ = [
    "DEFAULT_MAX_REQUESTS",
    "MAX_NONCE_LENGTH",
    "CertID",
    "CertIDHash",
    "CertStatus",
    "Good",
    "MalformedRequest",
    "OCSPRequestInfo",
    "OnHold",
    "Responder",
    "ResponseStatus",
    "Revoked",
    "Unknown",
    "build_response",
    "build_response_multi",
    "error_response",
    "match_issuer",
    "parse_request",
    "request_from_get_path",
]

#: How many CertIDs (``Request`` entries of the ``requestList``, RFC 6960 §4.1.1)
#: one request may ask about, unless the caller sets another limit.
DEFAULT_MAX_REQUESTS = 16

#: RFC 8954 §2.1: ``Nonce ::= OCTET STRING(SIZE(1..32))``; a request with a longer
#: (or empty) nonce is answered malformedRequest.
MAX_NONCE_LENGTH = 32


class MalformedRequest(BadRequest):
    """An OCSPRequest that cannot be parsed or is not acceptable (RFC 6960 §2.3).

    The HTTP layer answers it with :func:`error_response`\\ (``MALFORMED_REQUEST``):
    "the request received does not conform to the OCSP syntax".
    """

    slug = "ocsp-malformed-request"
    title = "Malformed OCSP request"


@enum.unique
class ResponseStatus(enum.IntEnum):
    """``OCSPResponseStatus`` (RFC 6960 §4.2.1); the value is the ENUMERATED code."""

    SUCCESSFUL = 0
    MALFORMED_REQUEST = 1
    INTERNAL_ERROR = 2
    TRY_LATER = 3
    # value 4 is not used
    SIG_REQUIRED = 5
    UNAUTHORIZED = 6


@enum.unique
class CertIDHash(enum.Enum):
    """A hash algorithm a CertID may use (RFC 6960 §4.1.1 ``hashAlgorithm``).

    SHA-1 is what most clients send (and OpenSSL by default); SHA-256, SHA-384 and
    SHA-512 are accepted too (``openssl ocsp -sha256``, ``-sha384``, ``-sha512``): a
    request hashed with one of them is as well formed as any, and answering it
    malformedRequest would tell the client its request was broken. The value is
    asn1crypto's name of the algorithm.
    """

    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self]

    def digest(self, data: bytes) -> bytes:
        # an identifier of the issuer, not a security function (RFC 6960 §4.1.1)
        return hashlib.new(self.value, data, usedforsecurity=False).digest()


# AlgorithmIdentifier DER of each hash (X.690), with the parameters absent (RFC 5754
# §2, RFC 3370 §2.1) or NULL (as OpenSSL and many clients send them).
_HASH_OID_DER = {
    CertIDHash.SHA1: bytes.fromhex("06052b0e03021a"),
    CertIDHash.SHA256: bytes.fromhex("0609608648016503040201"),
    CertIDHash.SHA384: bytes.fromhex("0609608648016503040202"),
    CertIDHash.SHA512: bytes.fromhex("0609608648016503040203"),
}
_DIGEST_SIZES = {
    CertIDHash.SHA1: 20,
    CertIDHash.SHA256: 32,
    CertIDHash.SHA384: 48,
    CertIDHash.SHA512: 64,
}
_NULL = b"\x05\x00"


def _tlv(tag: int, *parts: bytes) -> bytes:
    """One DER TLV around the concatenation of ``parts``."""
    body = b"".join(parts)
    return der_header(tag, len(body)) + body


def _integer(value: int) -> bytes:
    """An INTEGER in minimal two's complement (X.690 §8.3.2)."""
    magnitude = value if value >= 0 else ~value
    return _tlv(0x02, value.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True))


def _generalized_time(value: datetime) -> bytes:
    """A GeneralizedTime ``YYYYMMDDHHMMSSZ`` of an aware UTC datetime (RFC 5280 §4.1.2.5.2).

    Fractional seconds are dropped: "GeneralizedTime values MUST NOT include
    fractional seconds".
    """
    return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
    )


# -- status values ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Good:
    """certStatus good (RFC 6960 §2.2): "a positive response to the status inquiry"."""


@dataclass(frozen=True, slots=True)
class Revoked:
    """certStatus revoked (RFC 6960 §2.2), permanently; a suspension is :class:`OnHold`."""

    revoked_at: datetime
    """``revocationTime`` (RFC 6960 §4.2.1): timezone-aware, encoded in whole seconds."""

    reason: ReasonCode | None = None
    """``revocationReason`` (RFC 5280 §5.3.1); ``None`` and ``UNSPECIFIED`` are both
    encoded as an absent reason. certificateHold is :class:`OnHold`, and
    removeFromCRL belongs to delta CRLs only, so both are refused here."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "revoked_at", aware_utc(self.revoked_at, "revoked_at"))
        if self.reason is not None and not isinstance(self.reason, ReasonCode):
            raise TypeError(f"reason must be a ReasonCode or None, not {self.reason!r}")
        if self.reason is ReasonCode.CERTIFICATE_HOLD:
            raise ValueError("a certificate on hold is OnHold(since), not Revoked")
        if self.reason is ReasonCode.REMOVE_FROM_CRL:
            raise ValueError("removeFromCRL is for delta CRLs only (RFC 5280 §5.3.1)")


@dataclass(frozen=True, slots=True)
class OnHold:
    """A suspended certificate: revoked with reason certificateHold (RFC 6960 §2.2).

    RFC 5280 §5.3.1: certificateHold marks a temporary revocation; when the hold
    is released the certificate is :class:`Good` again.
    """

    since: datetime
    """``revocationTime``: when the hold was placed; timezone-aware."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "since", aware_utc(self.since, "since"))


@dataclass(frozen=True, slots=True)
class Unknown:
    """certStatus unknown (RFC 6960 §2.2): "the responder doesn't know about the
    certificate being requested", e.g. a serial number this CA never issued."""


CertStatus = Good | Revoked | OnHold | Unknown
"""The status of one certificate as the responder reports it."""

_GOOD_DER = b"\x80\x00"  # good [0] IMPLICIT NULL
_UNKNOWN_DER = b"\x82\x00"  # unknown [2] IMPLICIT UnknownInfo (NULL)


def _status_der(status: CertStatus) -> bytes:
    """``CertStatus`` (RFC 6960 §4.2.1); revoked is ``[1] IMPLICIT RevokedInfo``."""
    if isinstance(status, Good):
        return _GOOD_DER
    if isinstance(status, Unknown):
        return _UNKNOWN_DER
    if isinstance(status, Revoked):
        when, reason = status.revoked_at, status.reason
    elif isinstance(status, OnHold):
        when, reason = status.since, ReasonCode.CERTIFICATE_HOLD
    else:
        raise TypeError(f"status must be a CertStatus, not {type(status).__name__}")
    info = _generalized_time(when)
    if reason is not None and reason.is_encoded:
        # revocationReason [0] EXPLICIT CRLReason (an ENUMERATED)
        info += b"\xa0\x03\x0a\x01" + bytes((reason,))
    return _tlv(0xA1, info)


# -- CertID -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertID:
    """The identifier of a certificate in OCSP (RFC 6960 §4.1.1)::

    CertID ::= SEQUENCE { hashAlgorithm AlgorithmIdentifier, issuerNameHash OCTET STRING,
                          issuerKeyHash OCTET STRING, serialNumber CertificateSerialNumber }
    """

    hash_algorithm: CertIDHash
    """The algorithm of both issuer hashes."""

    issuer_name_hash: bytes
    """The hash of the DER of the issuer's distinguished name."""

    issuer_key_hash: bytes
    """The hash of the issuer's public key: the value of the subjectPublicKey BIT
    STRING, without tag, length and unused-bits octet."""

    serial_number: int
    """The certificate's serialNumber (RFC 5280 §4.1.2.2)."""

    null_parameters: bool = field(default=True, compare=False)
    """Whether the hash AlgorithmIdentifier has NULL parameters (True) or none.
    Both are allowed; the response repeats the requester's choice, since some
    clients compare the CertID of a response with theirs structurally."""

    der: bytes = field(init=False, repr=False, compare=False)
    """The DER of this CertID, as a response carries it."""

    def __post_init__(self) -> None:
        if not isinstance(self.hash_algorithm, CertIDHash):
            raise TypeError(f"hash_algorithm must be a CertIDHash, not {self.hash_algorithm!r}")
        size = self.hash_algorithm.digest_size
        for name in ("issuer_name_hash", "issuer_key_hash"):
            value = getattr(self, name)
            if type(value) is not bytes or len(value) != size:
                raise ValueError(f"{name} must be {size} bytes of {self.hash_algorithm.value}")
        if type(self.serial_number) is not int:
            raise TypeError(f"serial_number must be an int, not {self.serial_number!r}")
        algorithm = _HASH_OID_DER[self.hash_algorithm]
        if self.null_parameters:
            algorithm += _NULL
        der = _tlv(
            0x30,
            _tlv(0x30, algorithm),
            _tlv(0x04, self.issuer_name_hash),
            _tlv(0x04, self.issuer_key_hash),
            _integer(self.serial_number),
        )
        object.__setattr__(self, "der", der)


@dataclass(frozen=True, slots=True)
class OCSPRequestInfo:
    """What the responder needs from an OCSPRequest (RFC 6960 §4.1.1)."""

    cert_ids: tuple[CertID, ...]
    """The ``reqCert`` of each ``Request`` of the requestList, in order; at least one."""

    nonce: bytes | None
    """The nonce (RFC 8954, RFC 6960 §4.4.1): the value of the Nonce OCTET STRING,
    1 to 32 octets, or ``None`` when the request has no nonce extension."""


# -- the responder ----------------------------------------------------------------------

_ID_PKIX_OCSP_BASIC = bytes.fromhex("06092b0601050507300101")  # RFC 6960 §4.2.1
_ID_PKIX_OCSP_NONCE = bytes.fromhex("06092b0601050507300102")  # RFC 6960 §4.4.1
_SUCCESSFUL = b"\x0a\x01\x00"
_ID_CERT_HASH = bytes.fromhex("06052b2408030d")  # id-commonpki-at-certHash 1.3.36.8.3.13
_SHA256_ALGORITHM = _tlv(0x30, _HASH_OID_DER[CertIDHash.SHA256])  # parameters absent
CERT_HASH_OID = "1.3.36.8.3.13"

# signatureAlgorithm by key type (RFC 5758 §3.2, RFC 8410 §3, RFC 4055 §5)
_SIGNATURE_ALGORITHM_DER = {
    KeyType.P256: bytes.fromhex("300a06082a8648ce3d040302"),  # ecdsa-with-SHA256
    KeyType.P384: bytes.fromhex("300a06082a8648ce3d040303"),  # ecdsa-with-SHA384
    KeyType.ED25519: bytes.fromhex("300506032b6570"),  # id-Ed25519
    **{
        kt: bytes.fromhex("300d06092a864886f70d01010b0500")  # sha256WithRSAEncryption
        for kt in (KeyType.RSA2048, KeyType.RSA3072, KeyType.RSA4096)
    },
}


def _public_key_bits(cert: asn1_x509.Certificate) -> bytes:
    """The value of the subjectPublicKey BIT STRING (RFC 6960 §4.1.1, §4.2.1 KeyHash)."""
    contents: bytes = cert.public_key["public_key"].contents
    if not contents or contents[0] != 0:
        raise ValueError("the subjectPublicKey BIT STRING has unused bits")
    return contents[1:]


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


@dataclass(frozen=True)
class Responder:
    """A delegated OCSP responder for one issuing CA (RFC 6960 §4.2.2.2).

    The constructor checks the delegation: ``certificate`` is signed by
    ``issuer``, asserts id-kp-OCSPSigning in its extendedKeyUsage, carries
    id-pkix-ocsp-nocheck (§4.2.2.2.1, so clients need no status for it), has
    digitalSignature in its keyUsage if it has one, and holds the key of ``signer``.
    It then encodes every part of a response that depends only on the responder.
    """

    issuer: x509.Certificate
    """The issuing CA certificate whose certificates this responder answers for."""

    certificate: x509.Certificate
    """The delegated responder certificate, issued by ``issuer``."""

    signer: Signer
    """The key of ``certificate``; responses are signed by it and nothing else."""

    _issuer_hashes: dict[CertIDHash, tuple[bytes, bytes]] = field(
        init=False, repr=False, compare=False
    )
    _responder_id: bytes = field(init=False, repr=False, compare=False)
    _signature_algorithm: bytes = field(init=False, repr=False, compare=False)
    _certs: bytes = field(init=False, repr=False, compare=False)
    _valid_from: datetime = field(init=False, repr=False, compare=False)
    _valid_until: datetime = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, x509.Certificate):
            raise TypeError("issuer must be an x509.Certificate")
        if not isinstance(self.certificate, x509.Certificate):
            raise TypeError("certificate must be an x509.Certificate")
        if not isinstance(self.signer, Signer):
            raise TypeError("signer must be a ca.signer.Signer")
        self._check_delegation()

        issuer = asn1_x509.Certificate.load(self.issuer.public_bytes(serialization.Encoding.DER))
        responder_der = self.certificate.public_bytes(serialization.Encoding.DER)
        responder = asn1_x509.Certificate.load(responder_der)
        # §4.1.1: the issuer name as it is encoded in the certificates it issued, i.e.
        # the issuing certificate's subject byte for byte
        name = issuer["tbs_certificate"]["subject"].dump()
        key = _public_key_bits(issuer)
        hashes = {
            algorithm: (algorithm.digest(name), algorithm.digest(key)) for algorithm in CertIDHash
        }
        setattr_ = object.__setattr__
        setattr_(self, "_issuer_hashes", hashes)
        # ResponderID byKey [2] EXPLICIT KeyHash: "SHA-1 hash of responder's public
        # key (i.e., excluding the tag and length fields)" (§4.2.1)
        key_hash = CertIDHash.SHA1.digest(_public_key_bits(responder))
        setattr_(self, "_responder_id", _tlv(0xA2, _tlv(0x04, key_hash)))
        setattr_(self, "_signature_algorithm", _SIGNATURE_ALGORITHM_DER[self.signer.key_type])
        # certs [0] EXPLICIT SEQUENCE OF Certificate (§4.2.1)
        setattr_(self, "_certs", _tlv(0xA0, _tlv(0x30, responder_der)))
        setattr_(self, "_valid_from", self.certificate.not_valid_before_utc)
        setattr_(self, "_valid_until", self.certificate.not_valid_after_utc)

    def _check_delegation(self) -> None:
        cert = self.certificate
        try:
            cert.verify_directly_issued_by(self.issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ValueError(
                f"the responder certificate is not issued by the issuer: {exc}"
            ) from exc
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise ValueError("the responder certificate lacks id-kp-OCSPSigning (§4.2.2.2)")
        try:
            cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
        except x509.ExtensionNotFound:
            raise ValueError(
                "the responder certificate lacks id-pkix-ocsp-nocheck (§4.2.2.2.1)"
            ) from None
        try:
            key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            key_usage = None
        if key_usage is not None and not key_usage.digital_signature:
            raise ValueError("the responder certificate's keyUsage lacks digitalSignature")
        if _spki(self.signer.public_key()) != _spki(cert.public_key()):
            raise ValueError("the signer's key is not the responder certificate's public key")

    def answers_for(self, cert_id: CertID) -> bool:
        """Whether ``cert_id`` names this responder's issuer (RFC 6960 §4.1.1)."""
        name_hash, key_hash = self._issuer_hashes[cert_id.hash_algorithm]
        return cert_id.issuer_name_hash == name_hash and cert_id.issuer_key_hash == key_hash

    def cert_id(self, serial_number: int, algorithm: CertIDHash = CertIDHash.SHA1) -> CertID:
        """The CertID of the certificate ``serial_number`` of this issuer (RFC 6960 §4.1.1)."""
        name_hash, key_hash = self._issuer_hashes[algorithm]
        return CertID(algorithm, name_hash, key_hash, serial_number)


def match_issuer(responders: Iterable[Responder], cert_id: CertID) -> Responder | None:
    """The responder whose issuer ``cert_id`` names, or ``None`` for a foreign issuer.

    The HTTP layer answers a CertID no responder answers for with ``unauthorized``
    (RFC 6960 §2.3: "the client is not authorized to make this query to this
    server").
    """
    for responder in responders:
        if responder.answers_for(cert_id):
            return responder
    return None


# -- responses --------------------------------------------------------------------------

_ERROR_RESPONSES: dict[ResponseStatus, bytes] = {
    status: _tlv(0x30, b"\x0a\x01" + bytes((status,)))
    for status in ResponseStatus
    if status is not ResponseStatus.SUCCESSFUL
}


def error_response(status: ResponseStatus) -> bytes:
    """An OCSPResponse with an error status and no responseBytes (RFC 6960 §2.3, §4.2.1).

    "Messages of this type are not signed": malformedRequest, internalError,
    tryLater, sigRequired or unauthorized.
    """
    try:
        return _ERROR_RESPONSES[ResponseStatus(status)]
    except (KeyError, ValueError):
        raise ValueError(f"{status!r} is not an error status of an OCSPResponse") from None


def build_response(
    responder: Responder,
    cert_id: CertID,
    status: CertStatus,
    this_update: datetime,
    next_update: datetime,
    produced_at: datetime,
    nonce: bytes | None = None,
    cert_hash: bytes | None = None,
) -> bytes:
    """A signed OCSPResponse (successful, id-pkix-ocsp-basic) for one certificate, DER.

    RFC 6960 §4.2.1 and §4.2.2.3; the profile is in this module's docstring.
    ``this_update`` is when ``status`` was known to be correct, ``next_update``
    (later) when newer information will be available, and ``produced_at`` when the
    response is signed (§4.2.2.1); all timezone-aware, encoded in whole seconds.
    ``nonce``, the value from :attr:`OCSPRequestInfo.nonce`, is echoed (RFC 8954).
    ``cert_hash``: the SHA-256 of the certificate as the CA recorded it (CertHash).
    Raises :class:`ValueError` (or :class:`TypeError`) for arguments that would
    make a wrong response, e.g. a CertID of another issuer; nothing is signed then.
    """
    hashes = {cert_id.serial_number: cert_hash} if cert_hash is not None else None
    return build_response_multi(
        responder, [(cert_id, status)], this_update, next_update, produced_at, nonce, hashes
    )


def build_response_multi(
    responder: Responder,
    answers: Sequence[tuple[CertID, CertStatus]],
    this_update: datetime,
    next_update: datetime,
    produced_at: datetime,
    nonce: bytes | None = None,
    cert_hashes: Mapping[int, bytes] | None = None,
) -> bytes:
    """Like :func:`build_response`, with one SingleResponse per ``(CertID, status)``.

    RFC 6960 §4.1.1 lets one request ask about several certificates; the
    ResponseData then lists a SingleResponse for each, in the order given
    (§4.2.1). All of them must name ``responder``'s issuer. ``cert_hashes``: the
    SHA-256 of each recorded certificate by its serial, carried as CertHash.
    """
    if not isinstance(responder, Responder):
        raise TypeError("responder must be a Responder")
    if not answers:
        raise ValueError("a response answers for at least one CertID")
    this_update = aware_utc(this_update, "this_update")
    next_update = aware_utc(next_update, "next_update")
    produced_at = aware_utc(produced_at, "produced_at")
    if next_update.replace(microsecond=0) <= this_update.replace(microsecond=0):
        raise ValueError("next_update must be later than this_update (RFC 6960 §4.2.2.1)")
    if not responder._valid_from <= produced_at <= responder._valid_until:
        raise ValueError("produced_at is outside the responder certificate's validity")
    if nonce is not None and (type(nonce) is not bytes or not 1 <= len(nonce) <= MAX_NONCE_LENGTH):
        raise ValueError(f"nonce must be 1 to {MAX_NONCE_LENGTH} bytes (RFC 8954 §2.1)")

    # thisUpdate GeneralizedTime, nextUpdate [0] EXPLICIT GeneralizedTime
    times = _generalized_time(this_update) + b"\xa0\x11" + _generalized_time(next_update)
    singles = []
    for cert_id, status in answers:
        if not isinstance(cert_id, CertID):
            raise TypeError(f"expected a CertID, not {type(cert_id).__name__}")
        if not responder.answers_for(cert_id):
            raise ValueError(f"CertID of serial {cert_id.serial_number:#x} names another issuer")
        digest = (cert_hashes or {}).get(cert_id.serial_number)
        if digest is None:
            singles.append(_tlv(0x30, cert_id.der, _status_der(status), times))
        else:
            if type(digest) is not bytes or len(digest) != 32:
                raise ValueError("a CertHash is the 32-byte SHA-256 of the certificate")
            # singleExtensions [1] EXPLICIT Extensions { certHash, not critical:
            #   CertHash ::= SEQUENCE { hashAlgorithm, certificateHash OCTET STRING } }
            cert_hash = _tlv(0x30, _SHA256_ALGORITHM, _tlv(0x04, digest))
            extension = _tlv(0x30, _ID_CERT_HASH, _tlv(0x04, cert_hash))
            extensions = _tlv(0xA1, _tlv(0x30, extension))
            singles.append(_tlv(0x30, cert_id.der, _status_der(status), times, extensions))

    parts = [responder._responder_id, _generalized_time(produced_at), _tlv(0x30, *singles)]
    if nonce is not None:
        # responseExtensions [1] EXPLICIT Extensions: the nonce, not critical (RFC 8954 §2.1)
        extension = _tlv(0x30, _ID_PKIX_OCSP_NONCE, _tlv(0x04, _tlv(0x04, nonce)))
        parts.append(_tlv(0xA1, _tlv(0x30, extension)))
    tbs = _tlv(0x30, *parts)

    signature = responder.signer.sign(tbs)
    # The rest is headers around fixed fragments, joined once:
    # OCSPResponse { successful, [0] EXPLICIT ResponseBytes { id-pkix-ocsp-basic,
    #   OCTET STRING { BasicOCSPResponse { tbs, algorithm, BIT STRING, certs } } } }
    bit_string = der_header(0x03, len(signature) + 1) + b"\x00" + signature  # no unused bits
    algorithm, certs = responder._signature_algorithm, responder._certs
    basic_length = len(tbs) + len(algorithm) + len(bit_string) + len(certs)
    basic_header = der_header(0x30, basic_length)
    octets_header = der_header(0x04, len(basic_header) + basic_length)
    response_bytes_length = (
        len(_ID_PKIX_OCSP_BASIC) + len(octets_header) + len(basic_header) + basic_length
    )
    response_bytes_header = der_header(0x30, response_bytes_length)
    explicit_header = der_header(0xA0, len(response_bytes_header) + response_bytes_length)
    response_length = (
        len(_SUCCESSFUL) + len(explicit_header) + len(response_bytes_header) + response_bytes_length
    )
    return b"".join(
        (
            der_header(0x30, response_length),
            _SUCCESSFUL,
            explicit_header,
            response_bytes_header,
            _ID_PKIX_OCSP_BASIC,
            octets_header,
            basic_header,
            tbs,
            algorithm,
            bit_string,
            certs,
        )
    )


# -- requests ---------------------------------------------------------------------------

# The request structures of RFC 6960 §4.1.1, from asn1crypto's, except that every
# extnValue is an opaque OCTET STRING: asn1crypto's own classes start decoding the
# values of the extensions they know on access, and a value this responder does not
# use must not make a request malformed (§4.4: unrecognized extensions are ignored).


class _ExtensionSyntax(asn1_core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """``Extension ::= SEQUENCE { extnID, critical DEFAULT FALSE, extnValue }`` (RFC 5280 §4.1)."""

    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("extn_id", asn1_core.ObjectIdentifier),
        ("critical", asn1_core.Boolean, {"default": False}),
        ("extn_value", asn1_core.OctetString),
    ]


class _ExtensionsSyntax(asn1_core.SequenceOf):  # type: ignore[misc]  # asn1crypto is untyped
    _child_spec = _ExtensionSyntax


class _RequestSyntax(asn1_core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """``Request ::= SEQUENCE { reqCert CertID, singleRequestExtensions [0] EXPLICIT ... }``."""

    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("req_cert", asn1_ocsp.CertId),
        ("single_request_extensions", _ExtensionsSyntax, {"explicit": 0, "optional": True}),
    ]


class _RequestsSyntax(asn1_core.SequenceOf):  # type: ignore[misc]  # asn1crypto is untyped
    _child_spec = _RequestSyntax


class _TBSRequestSyntax(asn1_core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """``TBSRequest`` (RFC 6960 §4.1.1)."""

    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("version", asn1_ocsp.Version, {"explicit": 0, "default": "v1"}),
        ("requestor_name", asn1_x509.GeneralName, {"explicit": 1, "optional": True}),
        ("request_list", _RequestsSyntax),
        ("request_extensions", _ExtensionsSyntax, {"explicit": 2, "optional": True}),
    ]


class _OCSPRequestSyntax(asn1_core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """``OCSPRequest ::= SEQUENCE { tbsRequest, optionalSignature [0] EXPLICIT ... }``."""

    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("tbs_request", _TBSRequestSyntax),
        ("optional_signature", asn1_ocsp.Signature, {"explicit": 0, "optional": True}),
    ]


_NONCE = "1.3.6.1.5.5.7.48.1.2"  # id-pkix-ocsp-nonce (RFC 6960 §4.4.1)
_ACCEPTABLE_RESPONSES = "1.3.6.1.5.5.7.48.1.4"  # id-pkix-ocsp-response (§4.4.3)

# Extensions of a TBSRequest this responder understands (RFC 6960 §4.4): a critical
# extension other than these makes the request unacceptable. AcceptableResponses
# is understood: every response is id-pkix-ocsp-basic, which clients "SHALL be
# capable of receiving and processing" (§4.4.3).
_UNDERSTOOD_EXTENSIONS = frozenset({_NONCE, _ACCEPTABLE_RESPONSES})


@dataclass(frozen=True, slots=True)
class _Extension:
    """An extension of a request, its value left undecoded (RFC 5280 §4.1)."""

    oid: str  # the extnID, dotted
    critical: bool
    value: bytes  # the contents of extnValue


@dataclass(frozen=True, slots=True)
class _RawCertID:
    """A ``reqCert`` as decoded, before its values are checked."""

    algorithm: str
    parameters: bytes  # the DER of the AlgorithmIdentifier's parameters, b"" if absent
    name_hash: bytes
    key_hash: bytes
    serial: int
    extensions: tuple[_Extension, ...]  # its singleRequestExtensions


def parse_request(der: bytes, *, max_requests: int = DEFAULT_MAX_REQUESTS) -> OCSPRequestInfo:
    """The CertIDs and nonce of a DER ``OCSPRequest`` (RFC 6960 §4.1.1, §4.1.2).

    Raises :class:`MalformedRequest`, and nothing else, for any input that is not
    one well-formed OCSPRequest v1 (with no trailing data) asking about 1 to
    ``max_requests`` certificates with CertIDs of SHA-1, -256, -384 or -512, whose nonce
    (RFC 8954) is 1 to 32 octets, and with no critical extension this responder
    does not understand (§4.4). The values of other extensions are not decoded
    (§4.4: "Unrecognized extensions MUST be ignored"). requestorName and
    optionalSignature (§4.1.2) are not looked into: this responder never
    requires signed requests.
    """
    if not isinstance(der, bytes | bytearray | memoryview):
        raise MalformedRequest(f"an OCSP request is bytes, not {type(der).__name__}")
    version, raw_cert_ids, extensions = _decode(bytes(der), max_requests)
    if version != "v1":
        raise MalformedRequest(f"unsupported OCSPRequest version {version!r}")
    cert_ids = []
    for raw in raw_cert_ids:
        _check_extensions(raw.extensions, frozenset())
        cert_ids.append(_cert_id(raw))
    _check_extensions(extensions, _UNDERSTOOD_EXTENSIONS)
    nonce = next((_nonce(ext.value) for ext in extensions if ext.oid == _NONCE), None)
    return OCSPRequestInfo(tuple(cert_ids), nonce)


def _decode(
    der: bytes, max_requests: int
) -> tuple[object, list[_RawCertID], tuple[_Extension, ...]]:
    """The version, the CertIDs and the requestExtensions of a request, decoded.

    asn1crypto decodes lazily, on access, so every access to the parsed request
    is made here. It raises ValueError for bad encodings, and the fuzz tests have
    found nothing else; but what a third-party decoder raises on hostile input is
    not a contract, so any exception while decoding is a malformed request: the
    HTTP layer must only ever see that.
    """
    if not der:
        raise MalformedRequest("the OCSP request is empty")
    try:
        request = _OCSPRequestSyntax.load(der, strict=True)
        tbs = request["tbs_request"]
        request_list = tbs["request_list"]
        count = len(request_list)
        if not 1 <= count <= max_requests:
            raise MalformedRequest(
                f"the request asks about {count} certificates (1 to {max_requests} allowed)"
            )
        version = tbs["version"].native
        cert_ids = []
        for single in request_list:
            cert_id = single["req_cert"]
            algorithm = cert_id["hash_algorithm"]
            cert_ids.append(
                _RawCertID(
                    algorithm["algorithm"].native,
                    algorithm["parameters"].dump(),
                    cert_id["issuer_name_hash"].native,
                    cert_id["issuer_key_hash"].native,
                    cert_id["serial_number"].native,
                    _extensions(single["single_request_extensions"]),
                )
            )
        extensions = _extensions(tbs["request_extensions"])
    except MalformedRequest:
        raise
    except Exception as exc:
        raise MalformedRequest(f"not a DER OCSPRequest: {exc}") from exc
    return version, cert_ids, extensions


def _extensions(extensions: asn1_core.Asn1Value) -> tuple[_Extension, ...]:
    """The extensions of a SEQUENCE OF Extension (absent: none), values undecoded."""
    if isinstance(extensions, asn1_core.Void):
        return ()
    return tuple(
        _Extension(
            extension["extn_id"].dotted,
            bool(extension["critical"].native),
            extension["extn_value"].native,
        )
        for extension in extensions
    )


def _cert_id(raw: _RawCertID) -> CertID:
    """A :class:`CertID` from a decoded ``reqCert`` (RFC 6960 §4.1.1)."""
    try:
        hash_algorithm = CertIDHash(raw.algorithm)
    except ValueError:
        raise MalformedRequest(f"unsupported CertID hash algorithm {raw.algorithm}") from None
    if raw.parameters not in (b"", _NULL):
        raise MalformedRequest(f"the {raw.algorithm} AlgorithmIdentifier has parameters")
    try:
        return CertID(
            hash_algorithm,
            raw.name_hash,
            raw.key_hash,
            raw.serial,
            null_parameters=raw.parameters == _NULL,
        )
    except (ValueError, TypeError) as exc:
        raise MalformedRequest(f"bad CertID: {exc}") from exc


def _check_extensions(extensions: tuple[_Extension, ...], understood: frozenset[str]) -> None:
    """Refuse an extension twice, or a critical one that is not understood.

    RFC 6960 §4.4: "Unrecognized extensions MUST be ignored (unless they have the
    critical flag set and are not understood)"; RFC 5280 §4.2: "A certificate
    MUST NOT include more than one instance of a particular extension", which
    holds for requests as well.
    """
    oids = [extension.oid for extension in extensions]
    if len(set(oids)) != len(oids):
        raise MalformedRequest("an extension appears twice")
    for extension in extensions:
        if extension.critical and extension.oid not in understood:
            raise MalformedRequest(f"critical extension {extension.oid} is not supported")


def _nonce(value: bytes) -> bytes:
    """The nonce in an extnValue: ``Nonce ::= OCTET STRING(SIZE(1..32))`` (RFC 8954 §2.1).

    "Responders MUST reject any OCSP request that has a nonce with a length of
    either 0 octets or greater than 32 octets with the malformedRequest
    OCSPResponseStatus."
    """
    try:
        nonce = asn1_core.OctetString.load(value, strict=True).native
    except Exception as exc:
        raise MalformedRequest("the nonce is not an OCTET STRING") from exc
    if not isinstance(nonce, bytes) or not 1 <= len(nonce) <= MAX_NONCE_LENGTH:
        raise MalformedRequest(f"the nonce must be 1 to {MAX_NONCE_LENGTH} octets")
    return nonce


_BASE64_PATH = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")


def request_from_get_path(b64: str) -> bytes:
    """The DER request carried in the path of a GET (RFC 6960 Appendix A.1).

    "GET {url}/{url-encoding of base-64 encoding of the DER encoding of the
    OCSPRequest}": the path segment is percent-decoded (harmless if the HTTP
    layer did so already: base64 has no ``%``), and both the standard and the
    URL-safe base64 alphabets (RFC 4648 §4, §5) are accepted, with or without
    padding. Anything else raises :class:`MalformedRequest`. The result still
    goes through :func:`parse_request`.
    """
    if not isinstance(b64, str):
        raise MalformedRequest(f"a GET path is a str, not {type(b64).__name__}")
    try:
        text = unquote(b64, errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedRequest("the GET path is not base64") from exc
    if not text or _BASE64_PATH.fullmatch(text) is None:
        raise MalformedRequest("the GET path is not base64")
    text = text.rstrip("=").replace("-", "+").replace("_", "/")
    if not text or len(text) % 4 == 1:
        raise MalformedRequest("the GET path is truncated base64")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRequest(f"the GET path is not base64: {exc}") from exc


# -- the hot path: the canonical request ------------------------------------------------

_SHA1_ALGORITHM_NULL = bytes.fromhex("300906052b0e03021a0500")  # sha1, NULL parameters


def _read_tlv(buf: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, content start, content end) of the DER TLV at ``pos``, or None."""
    if pos + 2 > len(buf):
        return None
    tag, first = buf[pos], buf[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    elif first in (0x81, 0x82):
        n = first - 0x80
        if pos + 2 + n > len(buf):
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 2 + n], "big")
        if length < (0x80 if n == 1 else 0x100):
            return None  # not the shortest form: not DER
        start = pos + 2 + n
    else:
        return None
    end = start + length
    return (tag, start, end) if end <= len(buf) else None


def names_cert_id(response_der: bytes, responder: Responder, serial: int) -> bool:
    """Whether the stored response ``response_der`` is about ``serial`` of ``responder``'s
    issuer: its SHA-1 CertID's issuer hashes and serial are in it, as a response built for
    that CertID holds them (RFC 6960 §4.2.1). Responses are stored by serial alone, and
    two issuing CAs (or two generations of one) may each issue the same serial: a request
    naming one must never get the other's answer."""
    name_hash, key_hash = responder._issuer_hashes[CertIDHash.SHA1]
    value = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # minimal, non-negative
    integer = b"\x02" + _der_length(len(value)) + value
    return b"\x04\x14" + name_hash + b"\x04\x14" + key_hash + integer in response_der


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def canonical_request(der: bytes, responders: Iterable[Responder]) -> tuple[Responder, int] | None:
    """The responder and serial of the most common OCSPRequest, or None.

    "Canonical" is what OpenSSL, browsers and our clients send without a nonce: one
    Request whose CertID uses SHA-1 with NULL parameters, and no version, requestor
    name, extensions or signature. Anything else, including anything malformed,
    returns None and takes the full path (:func:`parse_request`). The answer to a
    canonical request depends only on the serial, so it can be served pre-signed.
    """
    layers = 0
    pos, end = 0, len(der)
    while layers < 5:  # OCSPRequest, TBSRequest, requestList, Request, CertID
        tlv = _read_tlv(der, pos)
        if tlv is None or tlv[0] != 0x30 or tlv[2] != end:
            return None
        pos, end = tlv[1], tlv[2]
        layers += 1
    for responder in responders:
        name_hash, key_hash = responder._issuer_hashes[CertIDHash.SHA1]
        prefix = _SHA1_ALGORITHM_NULL + b"\x04\x14" + name_hash + b"\x04\x14" + key_hash
        if der.startswith(prefix, pos):
            serial_tlv = _read_tlv(der, pos + len(prefix))
            if serial_tlv is None or serial_tlv[0] != 0x02 or serial_tlv[2] != end:
                return None
            raw = der[serial_tlv[1] : serial_tlv[2]]
            if not raw or raw[0] & 0x80 or (len(raw) > 1 and raw[0] == 0 and raw[1] < 0x80):
                return None  # negative or not minimally encoded
            serial = int.from_bytes(raw, "big")
            return (responder, serial) if serial else None
    return None
