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

For many certificates at once (the token service's session sweep),
:meth:`OCSPStatusSource.not_good_on_crls` reads the issuing CAs' CRLs instead (RFC 5280
§6.3): one GET per issuing CA, from the CRL distribution point its certificates name
(§4.2.1.13), at most every :data:`CRL_EVERY` seconds (:class:`IssuingCRLs`), each CRL
verified by :func:`ca.crl.verify_crl`, whatever the number of certificates. What a CRL
lists is a suspicion the caller confirms by OCSP; a CRL that cannot be had or verified
lists nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from asn1crypto import algos as asn1_algos
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp as xocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from ca.crl import ReasonCode, UnusableCRL, VerifiedCRL, verify_crl
from ca.errors import EPortError
from ca.ocsp import CERT_HASH_OID, CertStatus, Good, OnHold, Revoked, Unknown

Post = Callable[[str, bytes], bytes]
Get = Callable[[str], bytes]
"""``get(url) -> bytes``: a CRL over HTTP (RFC 5280 §4.2.1.13); raises
:class:`StatusUnavailable` when it cannot be had."""

CRL_EVERY = 2.0
"""Seconds a CRL fetched is used before it is fetched again: the CA signs a new one at
the first fetch after a revocation, so a revocation is on what is used within this (and
the caller's own period)."""


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


def crl_url(cert: x509.Certificate) -> str | None:
    """The first http(s) URI of the certificate's CRL distribution points (RFC 5280
    §4.2.1.13; ours name one), or None."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    for point in points:
        if point.crl_issuer or point.reasons:
            continue  # an indirect or partial CRL would not answer for every reason
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(
                ("http://", "https://")
            ):
                return str(name.value)
    return None


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
    if resp.certificate_status is xocsp.OCSPCertStatus.UNKNOWN:
        return Unknown()
    if _names_another_certificate(resp, cert):
        # The CA recorded another certificate under this serial: this one, made with the
        # issuing CA's key outside issuance, is none it issued (security probe, session 26)
        return Unknown()
    if resp.certificate_status is xocsp.OCSPCertStatus.GOOD:
        return Good()
    assert resp.revocation_time_utc is not None
    reason = resp.revocation_reason
    if reason is x509.ReasonFlags.certificate_hold:
        return OnHold(resp.revocation_time_utc)
    code = None
    if reason is not None:
        code = next((r for r in ReasonCode if r.rfc_name == reason.value), None)
    return Revoked(resp.revocation_time_utc, code)


class _CertHash(asn1_core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """``CertHash ::= SEQUENCE { hashAlgorithm AlgorithmIdentifier, certificateHash OCTET
    STRING }`` (Common PKI, a SingleResponse extension)."""

    _fields = [  # noqa: RUF012 - asn1crypto's declaration
        ("hash_algorithm", asn1_algos.DigestAlgorithm),
        ("certificate_hash", asn1_core.OctetString),
    ]


def _names_another_certificate(resp: xocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Whether the response's CertHash (if it has one: the CA's responders add it for
    every certificate they recorded, ``ca.ocsp``) is the hash of another certificate than
    ``cert``. An OCSP request names a certificate by its issuer and serial alone, so this
    is the only way to tell a copy of a recorded serial from the certificate recorded."""
    for ext in resp.single_extensions:
        if ext.oid.dotted_string != CERT_HASH_OID:
            continue
        raw = getattr(ext.value, "value", None)
        try:
            if not isinstance(raw, bytes):
                raise ValueError("not an unparsed extension value")
            parsed = _CertHash.load(raw, strict=True)
            algorithm = parsed["hash_algorithm"]["algorithm"].native
            expected: bytes = parsed["certificate_hash"].native
            digest = hashlib.new(algorithm, cert.public_bytes(serialization.Encoding.DER))
        except (ValueError, TypeError, KeyError) as exc:
            raise OCSPError(f"the response's CertHash cannot be read ({exc})") from None
        return digest.digest() != expected
    return False


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


@dataclass(frozen=True)
class _Placed:
    """Where a certificate's status is listed: its issuing CA (an index into
    :attr:`OCSPStatusSource.issuers`; None: none of them issued it) and CRL URL."""

    issuer: int | None
    crl_url: str | None


class OCSPStatusSource:
    """``status(cert)`` for a CA reached over HTTP: the token service's remote mode."""

    def __init__(
        self,
        issuers: list[x509.Certificate],
        post: Post,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        crls: IssuingCRLs | None = None,
    ) -> None:
        self.issuers = issuers
        self.post = post
        self.clock = clock
        self.crls = crls
        """The issuing CAs' CRLs, for :meth:`not_good_on_crls`."""
        self._placed: dict[int, _Placed] = {}

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

    def not_good_on_crls(
        self, serials: Iterable[int], certificate_of: Callable[[int], x509.Certificate | None]
    ) -> set[int]:
        """The serials among ``serials`` whose issuing CA's CRL lists them (revoked or on
        hold: RFC 5280 §6.3), or whose certificate none of :attr:`issuers` issued (one
        under an issuing CA revoked since is revoked with it). Suspects, for the caller to
        confirm one by one (:meth:`status`); a serial whose CRL cannot be had is not one.

        ``certificate_of(serial)`` is asked once per serial while it is asked about: where
        each certificate is listed is remembered, and forgotten when a call no longer
        names it. Each CRL is fetched by :attr:`crls` once per call at most."""
        if self.crls is None:
            raise OCSPError("no CRLs to read: this status source asks by OCSP only")
        placed: dict[int, _Placed] = {}
        for serial in serials:
            where = self._placed.get(serial)
            if where is None:
                cert = certificate_of(serial)
                if cert is None:
                    continue
                where = self._place(cert)
            placed[serial] = where
        self._placed = placed  # one thread (the sweep) calls this
        suspects = {serial for serial, where in placed.items() if where.issuer is None}
        by_crl: dict[tuple[int, str | None], set[int]] = {}
        for serial, where in placed.items():
            if where.issuer is not None:
                by_crl.setdefault((where.issuer, where.crl_url), set()).add(serial)
        for (index, url), group in by_crl.items():
            issuer = self.issuers[index]
            if url is None:
                name = issuer.subject.rfc4514_string()
                self.crls.failed(
                    name, f"the certificates of {name} name no http CRL distribution point"
                )
                continue
            listed = self.crls.listed(url, issuer)
            if listed is not None:
                suspects |= group & listed
        return suspects

    def _place(self, cert: x509.Certificate) -> _Placed:
        from ca.trust import issued_by  # key identifiers first: no signature to verify

        for index, issuer in enumerate(self.issuers):
            if issued_by(cert, issuer):
                return _Placed(index, crl_url(cert))
        return _Placed(None, None)


@dataclass
class _Held:
    digest: bytes
    crl: VerifiedCRL
    fetched: float


class IssuingCRLs:
    """The issuing CAs' CRLs as last fetched and verified, by URL and issuer: one GET of
    each at most every ``every`` seconds (in between the last one is used), however many
    certificates are judged by it.

    A CRL that cannot be had (``get`` raised :class:`StatusUnavailable`) or used
    (:class:`~ca.crl.UnusableCRL`, e.g. a proxy's page, another issuer's CRL, one past
    its nextUpdate, or one older than the last one used) is said once in the log, and once
    again when it is had again; meanwhile the last one verified answers while it is
    current, else nothing does (:meth:`listed` is None). The CA's CRLs carry an ETag, so a
    poll is a 304 until a new one is signed; bytes that are those used before are not
    parsed again.
    """

    def __init__(
        self,
        get: Get,
        *,
        every: float = CRL_EVERY,
        leeway: datetime.timedelta = datetime.timedelta(minutes=5),
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        monotonic: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.get = get
        self.every = every
        self.leeway = leeway
        self.clock = clock
        self.monotonic = monotonic
        self.log = logger or logging.getLogger("eport.ca")
        self._held: dict[tuple[str, bytes], _Held] = {}
        self._failing: dict[str, str] = {}
        """URL → why it failed, while it fails (said once)."""
        self._lock = threading.Lock()

    def listed(self, url: str, issuer: x509.Certificate) -> frozenset[int] | None:
        """The serials ``issuer``'s CRL at ``url`` lists (revoked or on hold), or None
        when no current one verified can be had."""
        key = (url, issuer.fingerprint(hashes.SHA256()))
        with self._lock:
            held = self._held.get(key)
            mono, now = self.monotonic(), self.clock()
            if held is not None and mono - held.fetched < self.every:
                return held.crl.listed if held.crl.current(now, self.leeway) else None
            try:
                crl, digest = self._fetch(url, issuer, held, now)
            except (StatusUnavailable, UnusableCRL) as exc:
                why = str(exc)
                if isinstance(exc, UnusableCRL):
                    why = f"the CRL at {url} cannot be used: {exc.why}"
                self._failed(url, why)
                if held is not None and held.crl.current(now, self.leeway):
                    return held.crl.listed
                return None
            self._held[key] = _Held(digest, crl, mono)
            if self._failing.pop(url, None) is not None:
                self.log.warning("session sweep: the CRL at %s is read and verified again", url)
            return crl.listed

    def _fetch(
        self, url: str, issuer: x509.Certificate, held: _Held | None, now: datetime.datetime
    ) -> tuple[VerifiedCRL, bytes]:
        data = self.get(url)
        digest = hashlib.sha256(data).digest()
        if held is not None and held.digest == digest:
            if not held.crl.current(now, self.leeway):
                raise UnusableCRL(issuer.subject.rfc4514_string(), "it is no longer current")
            return held.crl, digest
        crl = verify_crl(data, issuer, now, self.leeway)
        before = (
            held.crl.number if held is not None and held.crl.current(now, self.leeway) else None
        )
        if before is not None and crl.number is not None and crl.number < before:
            # RFC 5280 §5.2.3: the number only grows; an older CRL (over plain HTTP,
            # replayed) would hide a revocation
            raise UnusableCRL(
                issuer.subject.rfc4514_string(),
                f"its cRLNumber {crl.number} is below the {before} of one used before",
            )
        return crl, digest

    def _failed(self, url: str, why: str) -> None:
        if url in self._failing:
            return
        self._failing[url] = why
        self.log.warning(
            "session sweep: %s; it ends no session of those certificates by this CRL until "
            "it can be used (each is still checked by OCSP when used)",
            why,
        )

    def failed(self, url: str, why: str) -> None:
        """Say once (for ``url``, or another key) that certificates cannot be judged by
        a CRL, and ``why``."""
        with self._lock:
            self._failed(url, why)
