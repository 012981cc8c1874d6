"""The status interface over OCSP (RFC 6960), for relying parties of a remote CA.

``OCSPStatusSource.status(cert) -> Good | Revoked | OnHold | Unknown`` asks the
responder named in the certificate's AIA (RFC 5280 §4.2.2.1), and believes the answer
only after checking it: a successful basic response, signed by the issuer itself or
by a delegated responder certificate that the issuer signed and that carries
id-kp-OCSPSigning (RFC 6960 §4.2.2.2); the CertID and the nonce (RFC 8954) match the
request; thisUpdate is not in the future and nextUpdate not in the past. Any failure
raises :class:`OCSPError`; it never falls back to "good".

The transport is passed in (``post(url, body) -> bytes``), so the token service can
reuse its HTTP session and tests can point it anywhere.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp as xocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from ca.crl import ReasonCode
from ca.errors import EPortError
from ca.ocsp import CertStatus, Good, OnHold, Revoked, Unknown

Post = Callable[[str, bytes], bytes]


class OCSPError(EPortError):
    status = 502
    slug = "ocsp-error"
    title = "Certificate status could not be established"


STATUS_UNAVAILABLE_DETAIL = (
    "the certificate's status could not be had from the CA's OCSP responder just now; "
    "try again shortly"
)


class StatusUnavailable(OCSPError):
    """No answer to judge: the responder could not be reached, failed (an HTTP error), or
    said to ask later (``tryLater``, ``internalError``; RFC 6960 §2.3). A fault, not a
    verdict on the certificate: 503, to be retried. ``detail`` names the responder, for
    the server's log; clients get :data:`STATUS_UNAVAILABLE_DETAIL`."""

    status = 503
    slug = "status-unavailable"
    title = "Certificate status is unavailable"
    public_detail = STATUS_UNAVAILABLE_DETAIL


_ASK_LATER = (xocsp.OCSPResponseStatus.TRY_LATER, xocsp.OCSPResponseStatus.INTERNAL_ERROR)


def ocsp_url(cert: x509.Certificate) -> str:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        raise OCSPError("the certificate names no OCSP responder (no AIA extension)") from None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP:
            return str(desc.access_location.value)
    raise OCSPError("the certificate's AIA has no OCSP responder")


def _verify_signature(
    public_key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        assert algorithm is not None
        public_key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
    elif isinstance(public_key, rsa.RSAPublicKey):
        assert algorithm is not None
        public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
    else:
        raise OCSPError("unsupported responder key type")


def check_response(
    der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None,
    now: datetime.datetime,
    leeway: datetime.timedelta = datetime.timedelta(minutes=5),
) -> CertStatus:
    """Verify an OCSP response for ``cert`` and return what it says."""
    try:
        resp = xocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise OCSPError(f"unreadable OCSP response: {exc}") from None
    if resp.response_status in _ASK_LATER:
        raise StatusUnavailable(f"the responder answered {resp.response_status.name}")
    if resp.response_status is not xocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OCSPError(f"the responder answered {resp.response_status.name}")
    signer = issuer
    if resp.certificates:
        delegate = resp.certificates[0]
        try:
            delegate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise OCSPError("the responder certificate is not issued by the issuer") from None
        try:
            eku = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise OCSPError("the responder certificate lacks id-kp-OCSPSigning")
        if not delegate.not_valid_before_utc <= now <= delegate.not_valid_after_utc:
            raise OCSPError("the responder certificate is not valid now")
        signer = delegate
    try:
        _verify_signature(
            signer.public_key(),
            resp.signature,
            resp.tbs_response_bytes,
            resp.signature_hash_algorithm,
        )
    except InvalidSignature:
        raise OCSPError("the OCSP response's signature does not verify") from None
    if resp.serial_number != cert.serial_number:
        raise OCSPError("the response is about another certificate")
    expected = xocsp.OCSPRequestBuilder().add_certificate(cert, issuer, resp.hash_algorithm).build()
    if (
        resp.issuer_key_hash != expected.issuer_key_hash
        or resp.issuer_name_hash != expected.issuer_name_hash
    ):
        raise OCSPError("the response names another issuer")
    if nonce is not None:
        try:
            got = resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            raise OCSPError("the responder did not echo the nonce") from None
        if got != nonce:
            raise OCSPError("the responder echoed another nonce (replayed response?)")
    if resp.this_update_utc > now + leeway:
        raise OCSPError("the response's thisUpdate is in the future")
    if resp.next_update_utc is not None and resp.next_update_utc < now - leeway:
        raise OCSPError("the response is stale (nextUpdate passed)")
    if resp.certificate_status is xocsp.OCSPCertStatus.GOOD:
        return Good()
    if resp.certificate_status is xocsp.OCSPCertStatus.UNKNOWN:
        return Unknown()
    assert resp.revocation_time_utc is not None
    reason = resp.revocation_reason
    if reason is x509.ReasonFlags.certificate_hold:
        return OnHold(resp.revocation_time_utc)
    code = None
    if reason is not None:
        code = next((r for r in ReasonCode if r.rfc_name == reason.value), None)
    return Revoked(resp.revocation_time_utc, code)


def issuer_among(
    cert: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """The candidate whose key signed ``cert`` (and whose subject it names), or None."""
    for issuer in candidates:
        if issuer.subject == cert.issuer:
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return issuer
    return None


class OCSPStatusSource:
    """``status(cert)`` for a CA reached over HTTP: the token service's remote mode."""

    def __init__(
        self,
        issuers: list[x509.Certificate],
        post: Post,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.issuers = issuers
        self.post = post
        self.clock = clock

    def issuer_of(self, cert: x509.Certificate) -> x509.Certificate:
        issuer = issuer_among(cert, self.issuers)
        if issuer is not None:
            return issuer
        raise OCSPError(
            "none of the issuing CA certificates at hand issued this certificate (it names "
            f"{cert.issuer.rfc4514_string()} as its issuer)"
        )

    def status(self, cert: x509.Certificate) -> CertStatus:
        issuer = self.issuer_of(cert)
        nonce = os.urandom(16)
        req = (
            xocsp.OCSPRequestBuilder()
            .add_certificate(cert, issuer, hashes.SHA256())
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .build()
        )
        body = req.public_bytes(serialization.Encoding.DER)
        der = self.post(ocsp_url(cert), body)
        return check_response(der, cert, issuer, nonce=nonce, now=self.clock())
