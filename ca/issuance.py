"""Building and signing certificates from a profile and vetted data (RFC 5280 §4).

The subject comes from vetted data through the profile's template; from the CSR
only the public key is taken. Signing goes through :class:`~ca.signer.Signer`:
the TBSCertificate is produced by ``cryptography``'s builder signed with a
throwaway key of the issuing key's type (pre-issuance linting runs on that
certificate), then the same TBS bytes are signed by the CA key and assembled.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from ca.errors import IssuerExpired, LintFailed, PolicyError, WeakKey
from ca.keys import KeyType, refuse_weak_public_key
from ca.lint import CertificateLinter, Finding
from ca.policy import Profile, authorization_label
from ca.sample_keys import sample_rsa_key
from ca.signer import Signer, in_memory_key


@dataclass(frozen=True)
class IssuingCA:
    """A CA certificate and the signer of its key (the root is one too, at ceremonies)."""

    id: str
    certificate: x509.Certificate
    signer: Signer = field(repr=False)

    @cached_property
    def ski(self) -> bytes:
        ext = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return ext.value.digest

    @cached_property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


def last_second(not_before: datetime.datetime, validity: datetime.timedelta) -> datetime.datetime:
    """The notAfter of a certificate valid for exactly ``validity`` from ``not_before``.

    RFC 5280 §4.1.2.5: "The validity period for a certificate is the period of time from
    notBefore through notAfter, inclusive", so notAfter is the period's last second, not
    the first second after it (which would make a 397-day profile 397 days and 1 s).
    """
    return not_before + validity - datetime.timedelta(seconds=1)


def random_serial() -> int:
    """A positive serial of 127 random bits (RFC 5280 §4.1.2.2: ≤ 20 octets; CA/B ≥ 64 bits)."""
    return secrets.randbits(127) | (1 << 126)


def spki_sha256(public_key: CertificatePublicKeyTypes) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo: one key, one holder."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


TEMPLATE_SAMPLE: Mapping[str, str] = {
    "uscc": "91350100M000100Y43",
    "legal_name": "厦门港贸易有限公司",
    "operator_name": "李伟",
    "operator_id": "E1024",
    "agency_id": "customs",
    "agency_name": "Customs Authority",
    "person_name": "Zhang Min",
    "service_host": "service.eport.example",
    "ca_name": "E-Port Template Check CA",
    "authorization": "a" * 16,
}
"""Sample vetted data for linting a profile's template before any real issuance."""


MIN_ISSUED_VALIDITY = datetime.timedelta(days=1)
"""Nothing is issued from an issuing CA with less than this left: a certificate is cut
to its issuer's end, and one of minutes or hours is not worth the code it uses."""


class _ThrowawayKeys:
    """One throwaway private key per key type, made on first use."""

    def __init__(self) -> None:
        self._keys: dict[KeyType, CertificateIssuerPrivateKeyTypes] = {}
        self._lock = threading.Lock()

    def get(self, kt: KeyType) -> CertificateIssuerPrivateKeyTypes:
        key = self._keys.get(kt)
        if key is None:
            with self._lock:
                key = self._keys.setdefault(kt, kt.generate())
        return key


_THROWAWAY = _ThrowawayKeys()


class TemplateMemo:
    """Template lints already passed in this process, by the SHA-256 of the template's
    TBSCertificate: what pkilint read, save the throwaway signature's value.

    ``eport serve`` lints every profile's template once in its master process before
    gunicorn forks the workers (:func:`ca.app.prelint_templates`); the workers inherit this
    memo and the throwaway keys, build the same TBS bytes, and skip pkilint for them (a
    worker's start fell from 0.87-0.95 s of CPU to 0.35 s). A template that differs in anything
    (profile, issuer, base URL, key, the hour it is dated from) is linted again.
    """

    def __init__(self) -> None:
        self._passed: dict[bytes, list[Finding]] = {}

    def get(self, tbs: bytes) -> list[Finding] | None:
        found = self._passed.get(hashlib.sha256(tbs).digest())
        return None if found is None else list(found)

    def passed(self, tbs: bytes, findings: list[Finding]) -> None:
        self._passed[hashlib.sha256(tbs).digest()] = list(findings)


TEMPLATES_LINTED = TemplateMemo()
"""The process's memo, shared by every authority :func:`ca.app.build_authority` makes."""


_Extensions = tuple[x509.Extension[x509.ExtensionType], ...]


def _ext(value: x509.ExtensionType, critical: bool) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(value.oid, critical, value)


class CertificateFactory:
    """Turns (profile, issuer, public key, vetted data) into a signed, linted certificate.

    ``lint_sampler`` decides per certificate whether pkilint runs (default: always).
    """

    def __init__(
        self,
        linter: CertificateLinter | None = None,
        lint_sampler: Callable[[], bool] | None = None,
        public_base_url: str | None = None,
        template_memo: TemplateMemo | None = None,
    ) -> None:
        self.linter = linter or CertificateLinter()
        self.template_memo = template_memo
        self.lint_sampler = lint_sampler or (lambda: True)
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self._fixed: dict[tuple[Profile, str, bytes], tuple[_Extensions, _Extensions]] = {}

    def check_key(self, profile: Profile, public_key: CertificatePublicKeyTypes) -> KeyType:
        kt = KeyType.of(public_key)
        refuse_weak_public_key(public_key)
        if kt not in profile.key_types:
            allowed = ", ".join(sorted(k.value for k in profile.key_types))
            raise WeakKey(f"profile {profile.name!r} does not allow {kt.value} keys ({allowed})")
        return kt

    def tbs_builder(
        self,
        profile: Profile,
        issuer: IssuingCA,
        public_key: CertificatePublicKeyTypes,
        vetted: Mapping[str, str],
        serial: int,
        now: datetime.datetime,
        authorization: str | None = None,
    ) -> x509.CertificateBuilder:
        """The certificate builder for ``profile``; every extension appears once, none empty.
        The subject key is the caller's to check (:meth:`check_key`: :meth:`issue` does).
        ``authorization``: the id of the application issued on, the template's
        ``{authorization}`` (:func:`ca.policy.authorization_label`)."""
        if authorization is not None:
            vetted = {**vetted, "authorization": authorization_label(authorization)}
        try:
            subject = profile.build_subject(vetted)
            dns_names = profile.build_dns_names(vetted)
        except KeyError as exc:
            raise PolicyError(
                f"profile {profile.name}", "subject", f"vetted data lacks {exc.args[0]!r}"
            ) from None
        not_before = now.replace(microsecond=0)
        not_after = min(
            last_second(not_before, profile.validity), issuer.certificate.not_valid_after_utc
        )
        if not_after <= not_before:  # the authority refuses MIN_ISSUED_VALIDITY before
            raise IssuerExpired(
                f"issuing CA {issuer.id} expired at {not_after:%Y-%m-%dT%H:%M:%SZ}: nothing "
                "is issued from it"
            )
        head, tail = self._fixed_extensions(profile, issuer)
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
        extensions = [*head, x509.Extension(ski.oid, False, ski), *tail]
        if dns_names:
            san = x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names])
            extensions.append(x509.Extension(san.oid, False, san))
        return x509.CertificateBuilder(
            issuer_name=issuer.certificate.subject,
            subject_name=subject,
            public_key=public_key,
            serial_number=serial,
            not_valid_before=not_before,
            not_valid_after=not_after,
            extensions=extensions,
        )

    def _fixed_extensions(
        self, profile: Profile, issuer: IssuingCA
    ) -> tuple[_Extensions, _Extensions]:
        """The extensions that depend only on the profile and the issuer, made once: those
        before the subject key identifier, and those after it (the SAN comes last)."""
        key = (profile, issuer.id, issuer.ski)
        fixed = self._fixed.get(key)
        if fixed is None:
            ku = profile.key_usage
            head = (
                _ext(x509.BasicConstraints(ca=profile.ca, path_length=profile.path_length), True),
                _ext(
                    x509.KeyUsage(
                        digital_signature="digitalSignature" in ku,
                        content_commitment="contentCommitment" in ku,
                        key_encipherment="keyEncipherment" in ku,
                        data_encipherment="dataEncipherment" in ku,
                        key_agreement="keyAgreement" in ku,
                        key_cert_sign="keyCertSign" in ku,
                        crl_sign="cRLSign" in ku,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    True,
                ),
            )
            tail = [
                _ext(x509.AuthorityKeyIdentifier(issuer.ski, None, None), False),
                _ext(
                    x509.CertificatePolicies(
                        [x509.PolicyInformation(oid, None) for oid in profile.policy_oids]
                    ),
                    False,
                ),
            ]
            if profile.ocsp_nocheck:
                tail.append(_ext(x509.OCSPNoCheck(), False))
            if profile.status_urls and self.public_base_url:
                tail.extend(self._status_urls(issuer.id))
            if profile.extended_key_usage:
                tail.append(_ext(x509.ExtendedKeyUsage(list(profile.extended_key_usage)), False))
            fixed = self._fixed[key] = (head, tuple(tail))
        return fixed

    def _status_urls(self, issuer_id: str) -> _Extensions:
        """AIA (RFC 5280 §4.2.2.1: OCSP and caIssuers) and CRL distribution points (§4.2.1.13).

        Certificates of the root (issuing CAs) point at the root's CRL only: the root
        has no OCSP responder; it signs a CRL at each ceremony.
        """
        base = self.public_base_url
        assert base is not None
        access = []
        if issuer_id != "root":
            access.append(
                x509.AccessDescription(
                    x509.oid.AuthorityInformationAccessOID.OCSP,
                    x509.UniformResourceIdentifier(f"{base}/ocsp"),
                )
            )
        access.append(
            x509.AccessDescription(
                x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(f"{base}/ca/v1/issuers/{issuer_id}.cer"),
            )
        )
        crl = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(f"{base}/crl/{issuer_id}.crl")],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        return (
            _ext(x509.AuthorityInformationAccess(access), False),
            _ext(x509.CRLDistributionPoints([crl]), False),
        )

    def lint_template(
        self, profile: Profile, issuer: IssuingCA, now: datetime.datetime
    ) -> list[Finding]:
        """Lint throwaway certificates of ``profile`` filled with sample data, one for each
        kind of subject key the profile allows (each curve, Ed25519, and RSA at its
        smallest allowed size: the subject key and its identifier are the parts of the
        template that change with it); every finding, or :class:`LintFailed`.

        Run for every profile when the policies are loaded, so that a template change
        is linted before its first real certificate even when only a sample of
        issuances is linted in-line. Nothing is signed with the CA key. The templates are
        dated from the start of ``now``'s hour, so that the same template is the same
        bytes within it: one a :class:`TemplateMemo` has seen pass is not linted again.
        """
        now = now.replace(minute=0, second=0, microsecond=0)
        ikt = issuer.signer.key_type
        found: list[Finding] = []
        kinds: dict[str, KeyType] = {}
        for kt in sorted(profile.key_types, key=lambda k: (len(k.value), k.value)):
            kinds.setdefault("rsa" if kt.value.startswith("rsa") else kt.value, kt)
        for kt in kinds.values():
            # RSA: a sample public key (ca.sample_keys), not a key pair made at each start.
            # Not check_key: the key is a sample or one cryptography just made, of a type
            # the profile allows, and the weak-key checks cost about 0.36 s of CPU per
            # process, paid in every gunicorn worker at every start.
            rsa = kt.value.startswith("rsa")
            public_key = sample_rsa_key(kt) if rsa else _THROWAWAY.get(kt).public_key()
            builder = self.tbs_builder(profile, issuer, public_key, TEMPLATE_SAMPLE, 1 << 100, now)
            draft = builder.sign(_THROWAWAY.get(ikt), ikt.hash_algorithm)  # type: ignore[arg-type]
            tbs = draft.tbs_certificate_bytes
            memo = self.template_memo
            seen = memo.get(tbs) if memo is not None else None
            if seen is None:
                seen = self.linter.check(draft.public_bytes(serialization.Encoding.DER))
                if memo is not None:
                    memo.passed(tbs, seen)
            found += seen
        return found

    def issue(
        self,
        profile: Profile,
        issuer: IssuingCA,
        public_key: CertificatePublicKeyTypes,
        vetted: Mapping[str, str],
        now: datetime.datetime,
        serial: int | None = None,
        authorization: str | None = None,
    ) -> x509.Certificate:
        """Lint (when sampled) and sign a certificate; raises before anything is signed.

        A linted certificate is first signed with a throwaway key (pkilint reads a whole
        certificate), then its TBS bytes with the CA key. One that is not linted is signed
        by the builder with the CA key directly when this process holds that key in
        memory; a key in a token still signs the TBS bytes of a throwaway draft.
        """
        self.check_key(profile, public_key)
        serial = serial if serial is not None else random_serial()
        builder = self.tbs_builder(profile, issuer, public_key, vetted, serial, now, authorization)
        kt = issuer.signer.key_type
        linted = self.lint_sampler()
        if not linted:
            key = in_memory_key(issuer.signer)
            if key is not None:
                return checked(builder.sign(key, kt.hash_algorithm), issuer)  # type: ignore[arg-type]
        draft = builder.sign(_THROWAWAY.get(kt), kt.hash_algorithm)  # type: ignore[arg-type]
        if linted:
            self.linter.check(draft.public_bytes(serialization.Encoding.DER))
        return sign_draft(draft, issuer)


def _der_length(n: int) -> bytes:
    """A DER length octet string (X.690 §8.1.3: short form below 128, else long form)."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _der_tlv_end(der: bytes, start: int) -> int:
    """The offset just past the DER element (single-octet tag) that starts at ``start``."""
    first = der[start + 1]
    if first < 0x80:
        return start + 2 + first
    count = first & 0x7F
    length = int.from_bytes(der[start + 2 : start + 2 + count], "big")
    return start + 2 + count + length


def _assemble(draft: x509.Certificate, signer: Signer) -> x509.Certificate:
    """Sign the TBSCertificate of ``draft`` with ``signer`` (RFC 5280 §4.1.1.3).

    The certificate is ``SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }``:
    the first two are taken as bytes from the draft (the algorithm identifier is the same
    for both keys: same key type, same hash), and only the BIT STRING is new.
    """
    tbs = draft.tbs_certificate_bytes
    signature = signer.sign(tbs)
    der = draft.public_bytes(serialization.Encoding.DER)
    tbs_start = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    if der[0] != 0x30 or der[tbs_start : tbs_start + len(tbs)] != tbs:
        raise LintFailed("the draft certificate is not a DER SEQUENCE around its TBS")
    alg_start = tbs_start + len(tbs)
    algorithm = der[alg_start : _der_tlv_end(der, alg_start)]
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + algorithm + bit_string
    return x509.load_der_x509_certificate(b"\x30" + _der_length(len(body)) + body)


def sign_draft(draft: x509.Certificate, issuer: IssuingCA) -> x509.Certificate:
    """Re-sign the TBS part of ``draft`` with the issuer's real key and check the result."""
    return checked(_assemble(draft, issuer.signer), issuer)


def checked(cert: x509.Certificate, issuer: IssuingCA) -> x509.Certificate:
    """``cert`` once its signature verifies under the issuer's certificate."""
    try:
        # Never hand out a certificate the issuer's public key does not verify
        # (a faulty HSM or a wrong key would otherwise go unnoticed).
        cert.verify_directly_issued_by(issuer.certificate)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise LintFailed(f"the signed certificate does not verify: {exc!r}") from exc
    return cert


def self_signed_root(
    signer: Signer, subject: x509.Name, now: datetime.datetime, validity: datetime.timedelta
) -> x509.Certificate:
    """The root CA certificate (RFC 5280 §4.2.1.9: CA, no pathLen; keyCertSign and cRLSign)."""
    public_key = signer.public_key()
    kt = signer.key_type
    not_before = now.replace(microsecond=0)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    draft = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(last_second(not_before, validity))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(_THROWAWAY.get(kt), kt.hash_algorithm)  # type: ignore[arg-type]
    )
    cert = _assemble(draft, signer)
    cert.verify_directly_issued_by(cert)
    return cert
