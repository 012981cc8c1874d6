"""Trust in the issuing CAs as the root's CRL states it (RFC 5280 §6.3).

The root CRL (``<data_dir>/ca/root.crl``, signed only at quorum ceremonies) lists the
issuing CA generations revoked by ``REVOKE-INTERMEDIATE``. Whoever validates a
certificate of the hierarchy (the CA's signed requests, the token service's logins and
signed requests) builds its anchors with :func:`anchors_for`: the root and the issuing
CAs the CRL does not list. A certificate under a revoked one is refused with the CRL's
reason, not with the path builder's "no chain" message.

Framework-free; shared by :mod:`ca.app` and :mod:`authsvc.trust`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509

from ca.crl import ReasonCode
from ca.errors import Unauthenticated
from ca.ocsp import Revoked
from ca.signedreq import TrustAnchors


def revoked_on_root_crl(
    root: x509.Certificate, issuers: Mapping[str, x509.Certificate], root_crl: bytes
) -> dict[str, Revoked]:
    """The issuing CAs (id → certificate) that ``root_crl`` (DER) lists, with their
    revocation time and reason.

    The CRL must be the root's and verify under the root's key (RFC 5280 §6.3.3 (f),
    (g)); anything else raises ``ValueError``."""
    crl = x509.load_der_x509_crl(root_crl)
    if crl.issuer != root.subject:
        raise ValueError("root.crl is not issued by the root")
    if not crl.is_signature_valid(root.public_key()):  # type: ignore[arg-type]
        raise ValueError("root.crl's signature does not verify under the root key")
    out: dict[str, Revoked] = {}
    for issuer_id, cert in issuers.items():
        if cert.issuer != root.subject:
            continue
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is None:
            continue
        reason: ReasonCode | None = None
        try:
            flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            reason = next((r for r in ReasonCode if r.rfc_name == flag.value), None)
        except x509.ExtensionNotFound:
            pass
        out[issuer_id] = Revoked(entry.revocation_date_utc, reason)
    return out


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` issued ``cert``: same name, then the key identifiers (RFC 5280
    §4.2.1.1; generations of one issuing CA share their name), else the signature."""
    if cert.issuer != ca.subject:
        return False
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        aki = ski = None  # type: ignore[assignment]
    if aki is not None and ski is not None and aki.key_identifier is not None:
        return aki.key_identifier == ski.digest
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return False
    return True


RevokedIssuer = tuple[str, x509.Certificate, Revoked]
"""An issuing CA revoked on the root CRL: id, certificate, revocation."""


@dataclass(frozen=True)
class RootCheckedAnchors(TrustAnchors):
    """:class:`~ca.signedreq.TrustAnchors` (the root, the issuing CAs not revoked) that
    also know the revoked ones, so that a certificate under one is refused by name."""

    revoked: tuple[RevokedIssuer, ...] = ()

    def revoked_issuer(self, cert: x509.Certificate) -> tuple[str, Revoked] | None:
        """The revoked issuing CA that issued ``cert``, if any."""
        for issuer_id, ca, revocation in self.revoked:
            if issued_by(cert, ca):
                return issuer_id, revocation
        return None

    def verify_chain(
        self, leaf: x509.Certificate, now: datetime.datetime
    ) -> list[x509.Certificate]:
        hit = self.revoked_issuer(leaf)
        if hit is not None:
            issuer_id, revocation = hit
            why = f" ({revocation.reason.rfc_name})" if revocation.reason is not None else ""
            raise Unauthenticated(
                f"certificate is not trusted: its issuing CA {issuer_id} was revoked on the "
                f"root CRL{why}"
            )
        return super().verify_chain(leaf, now)


def anchors_for(
    root: x509.Certificate, issuers: Mapping[str, x509.Certificate], root_crl: bytes
) -> RootCheckedAnchors:
    """The anchors for the hierarchy: ``root``, every issuing CA (id → certificate) that
    ``root_crl`` does not list; the listed ones kept to refuse their certificates.
    Raises ``ValueError`` for a CRL the root did not sign."""
    revoked = revoked_on_root_crl(root, issuers, root_crl)
    return RootCheckedAnchors(
        roots=(root,),
        intermediates=tuple(c for i, c in issuers.items() if i not in revoked),
        revoked=tuple((i, issuers[i], r) for i, r in sorted(revoked.items())),
    )
