"""Certificates are valid for exactly their profile's period, as pkilint counts it.

RFC 5280 §4.1.2.5: the validity period runs "from notBefore through notAfter,
inclusive". pkilint's certificate document computes it that way (notAfter - notBefore +
1 s, ``RFC5280Certificate.validity_period``); every certificate a real ``eport serve
--dev`` made (the root, the issuing CAs, the OCSP responders, the development officers
and auditors) and the ones enrolled through the CLI must come out at exactly the
``validity_days`` of their profile, not one second longer.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkilint import loader

from ca.hierarchy import ROOT_VALIDITY
from ca.policy import load_policies
from tests.conftest import Server
from tests.helpers import enroll_enterprise, enroll_operator, enroll_service

REPO = Path(__file__).resolve().parent.parent


def pkilint_validity_period(cert: x509.Certificate) -> datetime.timedelta:
    der = cert.public_bytes(serialization.Encoding.DER)
    doc = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "cert")
    period = doc.validity_period
    assert isinstance(period, datetime.timedelta)
    return period


def pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def issued(sqlite_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("validity")
    ent = enroll_enterprise(sqlite_server, tmp, "Validity Trading Co., Ltd.")
    return {
        "enterprise": ent / "cert.pem",
        "operator": enroll_operator(sqlite_server, ent, tmp, "V1") / "cert.pem",
        "service-tls": enroll_service(sqlite_server, tmp) / "cert.pem",
    }


def test_every_certificate_lasts_exactly_its_profiles_period(
    sqlite_server: Server, issued: dict[str, Path]
) -> None:
    policies = load_policies(REPO / "policies")
    ca_dir = sqlite_server.data_dir / "ca"
    dev = sqlite_server.dev
    expected: list[tuple[Path, datetime.timedelta]] = [(ca_dir / "root.crt", ROOT_VALIDITY)]
    for issuer in ("enterprise", "agency", "service"):
        expected.append(
            (ca_dir / "issuers" / f"{issuer}.crt", policies.profile("issuing-ca").validity)
        )
        expected.append(
            (ca_dir / "responders" / f"{issuer}.crt", policies.profile("ocsp-responder").validity)
        )
    expected.append(
        (dev / "officers" / "customs" / "officer.pem", policies.profile("agency").validity)
    )
    expected.append(
        (dev / "auditors" / "customs" / "auditor.pem", policies.profile("auditor").validity)
    )
    for profile, path in issued.items():
        expected.append((path, policies.profile(profile).validity))
    wrong = {
        str(path.relative_to(path.parents[2])): (pkilint_validity_period(pem(path)), want)
        for path, want in expected
        if pkilint_validity_period(pem(path)) != want
    }
    assert wrong == {}
