"""Who a certificate names, for the token service: a stable subject and its class.

The class comes from the certificate's first policy OID (the profile, ``policies/``);
the subject id is stable across renewals and re-keys:

* enterprise (legal person): ``ent:<USCC>``
* operator: ``op:<USCC>:<operator id>``
* agency officer / auditor: ``agency:<member id>:<common name>`` / ``audit:<member id>:<CN>``
* service: ``svc:<DNS name>``
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from ca.errors import Forbidden
from ca.names import member_agency_of
from ca.policy import Policies, SubjectClass


@dataclass(frozen=True)
class Principal:
    subject: str
    subject_class: SubjectClass
    name: str
    uscc: str | None = None
    operator_id: str | None = None
    agency_id: str | None = None
    service_host: str | None = None
    service_agency: str | None = None
    """A service certificate's vetting member agency (its O, a member's name)."""


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if not values:
        return None
    v = values[0].value
    return v if isinstance(v, str) else v.decode()


@functools.lru_cache(maxsize=4096)
def x5t_s256(cert: x509.Certificate) -> str:
    """The certificate's SHA-256 thumbprint, base64url (RFC 8705 §3.1 ``x5t#S256``)."""
    import base64

    digest = cert.fingerprint(hashes.SHA256())
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issued_by_profile_issuer(
    cert: x509.Certificate, issuer: str, issuing_cas: Mapping[str, x509.Certificate]
) -> bool:
    """Whether ``cert`` names as its issuer (RFC 5280 §4.1.2.4) the issuing CA ``issuer``
    that its profile is issued by, in any of its generations (``issuer``, and
    ``issuer-2``… after a rollover, which keep the name). ``issuing_cas``: every issuing
    CA generation by its id, as the CA publishes them (``<data_dir>/ca/issuers/``)."""
    for ca_id, ca_cert in issuing_cas.items():
        base, _, generation = ca_id.rpartition("-")
        same = ca_id == issuer or (base == issuer and generation.isdigit())
        if same and cert.issuer == ca_cert.subject:
            return True
    return False


def identify(
    cert: x509.Certificate, policies: Policies, issuing_cas: Mapping[str, x509.Certificate]
) -> Principal:
    """The principal of a certificate already validated to the joint CA.

    Raises :class:`~ca.errors.Forbidden` for a certificate whose profile cannot sign in,
    whose subject lacks what its profile puts there, or that an issuing CA other than its
    profile's issued (a valid chain to the joint CA is not enough: an agency issuing CA
    must not make enterprise credentials, as the CA's own ``JointCA.caller`` refuses).
    ``issuing_cas``: see :func:`issued_by_profile_issuer`."""
    try:
        pols = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound:
        raise Forbidden("the certificate names no e-port profile") from None
    profile = None
    for info in pols:
        profile = policies.profile_for_oid(info.policy_identifier)
        if profile is not None:
            break
    if profile is None or profile.ca or profile.subject_class is SubjectClass.RESPONDER:
        raise Forbidden("the certificate's profile cannot sign in")
    if not issued_by_profile_issuer(cert, profile.issuer, issuing_cas):
        raise Forbidden("the certificate was not issued by its profile's issuing CA")
    cls = profile.subject_class
    cn = _attr(cert.subject, NameOID.COMMON_NAME) or ""
    org_id = _attr(cert.subject, NameOID.ORGANIZATION_IDENTIFIER) or ""
    if cls in (SubjectClass.ENTERPRISE, SubjectClass.OPERATOR):
        if not org_id.startswith("NTRCN-"):
            raise Forbidden("the certificate lacks the enterprise's USCC")
        uscc = org_id[6:]
        if cls is SubjectClass.ENTERPRISE:
            return Principal(f"ent:{uscc}", cls, cn, uscc=uscc)
        op_id = _attr(cert.subject, NameOID.SERIAL_NUMBER)
        if not op_id:
            raise Forbidden("the operator certificate lacks the operator id")
        return Principal(f"op:{uscc}:{op_id}", cls, cn, uscc=uscc, operator_id=op_id)
    if cls in (SubjectClass.AGENCY, SubjectClass.AUDITOR):
        agency = member_agency_of(org_id)
        if agency is None:
            raise Forbidden("the certificate lacks the member agency")
        if policies.members.get(agency) is None:
            raise Forbidden(f"agency {agency!r} is not a member of the joint CA")
        prefix = "agency" if cls is SubjectClass.AGENCY else "audit"
        return Principal(f"{prefix}:{agency}:{cn}", cls, cn, agency_id=agency)
    if cls is SubjectClass.SERVICE:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            host = san.get_values_for_type(x509.DNSName)[0]
        except (x509.ExtensionNotFound, IndexError):
            raise Forbidden("the service certificate names no DNS name") from None
        # the member whose officers vetted it: its O is that member's name (service-tls)
        org = _attr(cert.subject, NameOID.ORGANIZATION_NAME)
        vetted_by = next((m.id for m in policies.members.members if m.name == org), None)
        return Principal(f"svc:{host}", cls, cn, service_host=host, service_agency=vetted_by)
    raise Forbidden(f"{cls.value} certificates cannot sign in")
