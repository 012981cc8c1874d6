"""The organizationIdentifier of every profile, judged by pkilint's ETSI EN 319 412-1 rules.

``lint_etsi_cert`` applies its §5.1.4 legal-person check (the semantics identifier's
scheme, country and reference) only to certificates that carry an ETSI qcStatements
legal-person semantics id; ours are not EU qualified certificates and carry none, so
the check is run here on every organizationIdentifier directly: on certificates the
real factory makes from the repository's profiles, and on the development officers'
and auditors' certificates that ``eport serve --dev`` issued. Those certificates must
still work: an officer acts at the CA and an auditor signs in to the token service.
Certificates in the earlier ``GOVCN-<member>`` form are honoured until they expire.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from pkilint import loader
from pkilint.etsi.en_319_412_1 import LegalPersonOrganizationIdentifierValidator
from pkilint.itu import x520_name
from pkilint.pkix import certificate, extension, name

from authsvc.principal import identify
from ca import hierarchy
from ca.issuance import CertificateFactory
from ca.keys import KeyType
from ca.names import member_agency_of
from ca.policy import Policies, load_policies
from tests.conftest import Server

REPO = Path(__file__).resolve().parent.parent
APP = "app_" + "e" * 16
"""A sample application id: an operator certificate names its authorization."""
NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)
VETTED = {
    "uscc": "91350100M000100Y43",
    "legal_name": "Xiamen Harbour Trading Co., Ltd.",
    "operator_name": "Li Wei",
    "operator_id": "E1024",
    "agency_id": "customs",
    "agency_name": "Customs Authority",
    "person_name": "Zhang Min",
}
NATIONAL_SCHEME = "etsi.en_319_412_1.leg-5.1.4-03.national_identifier_scheme_detected"
INVALID_SCHEME = "etsi.en_319_412_1.leg-5.1.4-03.invalid_scheme"


class _EveryOrganizationIdentifier(LegalPersonOrganizationIdentifierValidator):
    """pkilint's validator, applied whether or not a qcStatement asks for it."""

    def match(self, node):  # type: ignore[no-untyped-def]
        return isinstance(node.pdu, x520_name.X520OrganizationIdentifier) and any(node.children)


_VALIDATOR = certificate.create_pkix_certificate_validator_container(
    certificate.create_decoding_validators(
        name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
    ),
    [_EveryOrganizationIdentifier()],
)


def etsi_findings(cert: x509.Certificate) -> list[tuple[str, str]]:
    """(severity, code) of every ETSI EN 319 412-1 §5.1.4 finding on ``cert``."""
    der = cert.public_bytes(serialization.Encoding.DER)
    doc = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "cert")
    return [
        (fd.finding.severity.name, fd.finding.code)
        for result in _VALIDATOR.validate(doc.root)
        for fd in result.finding_descriptions
    ]


@pytest.fixture(scope="module")
def policies() -> Policies:
    return load_policies(REPO / "policies")


@pytest.fixture(scope="module")
def pki(policies: Policies, tmp_path_factory: pytest.TempPathFactory) -> hierarchy.Hierarchy:
    return hierarchy.create(
        policies,
        tmp_path_factory.mktemp("pki"),
        root_passphrase=b"root-pass",
        ca_passphrase=b"ca-pass",
        factory=CertificateFactory(),
        now=NOW,
    )


def issuing_cas(pki: hierarchy.Hierarchy) -> dict[str, x509.Certificate]:
    return {i: ca.certificate for i, ca in pki.issuers.items()}


def issue(policies: Policies, pki: hierarchy.Hierarchy, profile_name: str) -> x509.Certificate:
    profile = policies.profile(profile_name)
    key = KeyType.P256.generate()
    return CertificateFactory().issue(
        profile, pki.issuers[profile.issuer], key.public_key(), VETTED, NOW, authorization=APP
    )


@pytest.mark.parametrize("profile_name", ["enterprise", "operator"])
def test_enterprises_carry_an_ntr_identifier(
    profile_name: str, policies: Policies, pki: hierarchy.Hierarchy
) -> None:
    cert = issue(policies, pki, profile_name)
    org_id = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)[0].value
    assert org_id == "NTRCN-91350100M000100Y43"
    assert etsi_findings(cert) == []


@pytest.mark.parametrize("profile_name", ["agency", "auditor"])
def test_agencies_carry_a_national_scheme_identifier(
    profile_name: str, policies: Policies, pki: hierarchy.Hierarchy
) -> None:
    cert = issue(policies, pki, profile_name)
    org_id = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)[0].value
    assert org_id == "GV:CN-customs"
    # A national scheme is what §5.1.4 provides for identifiers outside VAT/NTR/PSD/LEI:
    # pkilint notes it, and finds nothing wrong.
    assert etsi_findings(cert) == [("NOTICE", NATIONAL_SCHEME)]
    prefix = {"agency": "agency", "auditor": "audit"}[profile_name]
    assert identify(cert, policies, issuing_cas(pki)).subject == f"{prefix}:customs:Zhang Min"


def test_the_earlier_form_is_refused_by_pkilint_and_still_honoured(
    policies: Policies, pki: hierarchy.Hierarchy
) -> None:
    """Control and compatibility: ``GOVCN-customs`` is the ERROR this check catches, and an
    officer's certificate issued in that form before still names its agency."""
    profile = policies.profile("agency")
    legacy = dataclasses.replace(
        profile,
        subject=tuple(
            (oid, "GOVCN-{agency_id}" if oid == NameOID.ORGANIZATION_IDENTIFIER else tmpl)
            for oid, tmpl in profile.subject
        ),
    )
    cert = CertificateFactory().issue(
        legacy, pki.issuers["agency"], KeyType.P256.generate().public_key(), VETTED, NOW
    )
    assert ("ERROR", INVALID_SCHEME) in etsi_findings(cert)
    assert identify(cert, policies, issuing_cas(pki)).agency_id == "customs"
    assert member_agency_of("GOVCN-customs") == "customs"
    assert member_agency_of("GV:CN-customs") == "customs"
    for other in ("NTRCN-91350100M000100Y43", "GV:CN-", "GOVCN-", "GV:US-customs", ""):
        assert member_agency_of(other) is None, other


def test_development_officers_and_auditors_conform_and_work(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """The credentials ``eport serve --dev`` issued: pkilint's ETSI check finds no error,
    the officer acts at the CA, the auditor signs in to the token service."""
    for role in ("officer", "auditor"):
        pem = (sqlite_server.dev / f"{role}s" / "customs" / f"{role}.pem").read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        org_id = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)[0].value
        assert org_id == "GV:CN-customs", role
        assert etsi_findings(cert) == [("NOTICE", NATIONAL_SCHEME)], role
    listed = json.loads(
        sqlite_server.eport("ra", "list", *sqlite_server.officer(), "--json").stdout
    )
    assert isinstance(listed, dict | list)
    home = tmp_path / "home"
    home.mkdir()
    login = sqlite_server.eport("login", *sqlite_server.auditor(), "--json", HOME=str(home))
    assert json.loads(login.stdout)["session"]["subject"].startswith("audit:customs:")
