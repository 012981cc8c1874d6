"""Every profile's output conforms to RFC 5280, judged by independent tools.

Certificates are made in-process by the real factory and hierarchy code, then
checked by pkilint's own command line (``lint_pkix_cert``), by ``openssl verify
-x509_strict``, and by direct inspection of the DER.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca import hierarchy
from ca.errors import LintFailed, WeakKey
from ca.issuance import CertificateFactory, IssuingCA, TemplateMemo
from ca.keys import KeyType
from ca.lint import CertificateLinter
from ca.policy import Policies, authorization_of, load_policies
from ca.signer import SoftwareSigner, in_memory_key

REPO = Path(__file__).resolve().parent.parent
NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)
VETTED = {
    "uscc": "91350100M000100Y43",
    "legal_name": "厦门港贸易有限公司 Xiamen Harbour Trading Co., Ltd.",
    "operator_name": "李伟",
    "operator_id": "E1024",
    "agency_id": "customs",
    "agency_name": "Customs Authority",
    "person_name": "Zhang Min",
    "service_host": "declare.eport.example",
    "ca_name": "Test Issuing CA",
}


@pytest.fixture(scope="module")
def policies() -> Policies:
    return load_policies(REPO / "policies")


@pytest.fixture(scope="module")
def pki(policies: Policies, tmp_path_factory: pytest.TempPathFactory) -> hierarchy.Hierarchy:
    d = tmp_path_factory.mktemp("pki")
    return hierarchy.create(
        policies,
        d,
        root_passphrase=b"root-pass",
        ca_passphrase=b"ca-pass",
        factory=CertificateFactory(),
        now=NOW,
    )


def lint_cli(der: bytes, tmp: Path) -> str:
    """pkilint's command line, run as a separate program."""
    path = tmp / "cert.der"
    path.write_bytes(der)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pkilint.bin.lint_pkix_cert",
            "lint",
            "-s",
            "WARNING",
            "--document-format",
            "DER",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


PROFILES = ["enterprise", "operator", "agency", "auditor", "service-tls"]
KEY_TYPES = [KeyType.P256, KeyType.P384, KeyType.ED25519, KeyType.RSA3072]
# Every (profile, key type) pair the repository's policies allow.
CASES = [
    (name, kt)
    for name in PROFILES
    for kt in KEY_TYPES
    if kt in load_policies(REPO / "policies").profile(name).key_types
]


@pytest.mark.parametrize(("profile_name", "key_type"), CASES)
def test_profile_output_conforms(
    profile_name: str,
    key_type: KeyType,
    policies: Policies,
    pki: hierarchy.Hierarchy,
    tmp_path: Path,
) -> None:
    profile = policies.profile(profile_name)
    issuer = pki.issuers[profile.issuer]
    key = key_type.generate()
    cert = CertificateFactory().issue(
        profile, issuer, key.public_key(), VETTED, NOW, authorization="app_" + "q" * 16
    )
    der = cert.public_bytes(serialization.Encoding.DER)

    assert lint_cli(der, tmp_path).strip() == "", "pkilint reported findings at WARNING or above"

    (tmp_path / "leaf.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "issuer.pem").write_bytes(
        issuer.certificate.public_bytes(serialization.Encoding.PEM)
    )
    (tmp_path / "root.pem").write_bytes(pki.root.public_bytes(serialization.Encoding.PEM))
    res = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-attime",
            str(int(NOW.timestamp()) + 60),
            "-CAfile",
            str(tmp_path / "root.pem"),
            "-untrusted",
            str(tmp_path / "issuer.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr

    # RFC 5280 details, read from the DER with a second parser (asn1crypto).
    parsed = ax509.Certificate.load(der)
    tbs = parsed["tbs_certificate"]
    assert tbs["version"].native == "v3"
    serial = tbs["serial_number"].native
    assert serial > 0 and serial.bit_length() >= 64 and len(tbs["serial_number"].contents) <= 20
    names = [e["extn_id"].dotted for e in tbs["extensions"]]
    assert len(names) == len(set(names)), "duplicate extension"
    for ext in tbs["extensions"]:
        # basicConstraints of an end entity is legitimately SEQUENCE {} (cA DEFAULT FALSE);
        # every other extension must carry content (no empty SAN, EKU, policies...).
        if ext["extn_id"].native != "basic_constraints":
            assert len(ext["extn_value"].contents) > 2, f"empty {ext['extn_id'].native}"
    crit = {e["extn_id"].native: e["critical"].native for e in tbs["extensions"]}
    assert crit["key_usage"] is True and crit["basic_constraints"] is True
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == issuer.ski
    for rdn in tbs["subject"].chosen:
        for atv in rdn:
            kind = atv["value"].name
            if atv["type"].native in ("country_name", "serial_number", "dn_qualifier"):
                assert kind == "printable_string"  # X.520: PrintableString only
            else:
                assert kind == "utf8_string", (atv["type"].native, kind)
    # The subject comes from the vetted data through the profile's template, and an
    # operator's names its authorization: the application issued on, in dnQualifier
    # (a PrintableString, checked above).
    assert cert.subject == profile.build_subject({**VETTED, "authorization": "q" * 16})
    assert authorization_of(cert) == ("q" * 16 if profile_name == "operator" else None)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= profile.validity


def test_hierarchy_constraints(pki: hierarchy.Hierarchy, tmp_path: Path) -> None:
    root_bc = pki.root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_bc.critical and root_bc.value.ca
    for issuer in pki.issuers.values():
        c = issuer.certificate
        bc = c.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == 0
        ku = c.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        assert c.issuer == pki.root.subject
        c.verify_directly_issued_by(pki.root)
        lint_cli(c.public_bytes(serialization.Encoding.DER), tmp_path)
    assert {"enterprise", "agency", "service"} <= set(pki.issuers)


def test_root_key_is_sealed_at_rest(
    pki: hierarchy.Hierarchy, tmp_path_factory: pytest.TempPathFactory, policies: Policies
) -> None:
    d = tmp_path_factory.mktemp("sealed")
    hierarchy.create(
        policies,
        d,
        root_passphrase=b"root-pass",
        ca_passphrase=b"ca-pass",
        factory=CertificateFactory(),
        now=NOW,
    )
    for key_file in [d / "ca" / "root.key", *(d / "ca" / "issuers").glob("*.key")]:
        data = key_file.read_bytes()
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert key_file.stat().st_mode & 0o077 == 0
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(data, None)
    sealed = hierarchy.load(d, None)
    assert sealed.sealed
    unsealed = hierarchy.load(d, b"ca-pass")
    assert not unsealed.sealed


def test_lint_failure_signs_nothing(policies: Policies, pki: hierarchy.Hierarchy) -> None:
    """A to-be-signed certificate that fails linting never reaches the CA key."""
    calls: list[bytes] = []
    issuer = pki.issuers["service"]

    class Spy(SoftwareSigner):
        def sign(self, data: bytes) -> bytes:
            calls.append(data)
            return super().sign(data)

    key = KeyType.P256.generate()
    spy_issuer = IssuingCA("service", issuer.certificate, Spy(KeyType.P256.generate()))
    profile = policies.profile("service-tls")
    # A dNSName that is not a preferred-name-syntax host (RFC 5280 §4.2.1.6) fails pkilint.
    vetted = dict(VETTED, service_host="not a host")
    with pytest.raises(LintFailed) as err:
        CertificateFactory().issue(profile, spy_issuer, key.public_key(), vetted, NOW)
    assert calls == []
    assert "lint" in err.value.detail


def test_wrong_ca_key_is_caught(policies: Policies, pki: hierarchy.Hierarchy) -> None:
    """A signer whose key is not the issuer's (a faulty HSM slot) never yields a certificate."""
    issuer = pki.issuers["enterprise"]
    wrong = IssuingCA("enterprise", issuer.certificate, SoftwareSigner(KeyType.P256.generate()))
    with pytest.raises(LintFailed, match="does not verify"):
        CertificateFactory().issue(
            policies.profile("enterprise"), wrong, KeyType.P256.generate().public_key(), VETTED, NOW
        )


def test_profile_refuses_key_types(policies: Policies, pki: hierarchy.Hierarchy) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa

    factory = CertificateFactory()
    issuer = pki.issuers["enterprise"]
    with pytest.raises(WeakKey, match="1024"):
        factory.issue(
            policies.profile("enterprise"),
            issuer,
            rsa.generate_private_key(65537, 1024).public_key(),
            VETTED,
            NOW,
        )
    with pytest.raises(WeakKey, match=r"^Ed448 keys are not accepted \(P-256, P-384, Ed25519"):
        factory.issue(
            policies.profile("enterprise"),
            issuer,
            ed448.Ed448PrivateKey.generate().public_key(),
            VETTED,
            NOW,
        )
    with pytest.raises(WeakKey, match=r"secp521r1 is not accepted"):
        factory.issue(
            policies.profile("enterprise"),
            issuer,
            ec.generate_private_key(ec.SECP521R1()).public_key(),
            VETTED,
            NOW,
        )
    with pytest.raises(WeakKey, match="does not allow rsa2048"):
        factory.issue(
            policies.profile("agency"),
            pki.issuers["agency"],
            rsa.generate_private_key(65537, 2048).public_key(),
            VETTED,
            NOW,
        )


def test_linter_reports_real_problems() -> None:
    """The in-line linter is not a no-op: it flags an empty subject and a missing SKI."""
    key = KeyType.P256.generate()
    bad = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .sign(key, KeyType.P256.hash_algorithm)  # type: ignore[arg-type]
    )
    with pytest.raises(LintFailed):
        CertificateLinter().check(bad.public_bytes(serialization.Encoding.DER))


def test_every_template_is_linted_at_load(policies: Policies, pki: hierarchy.Hierarchy) -> None:
    factory = CertificateFactory()
    # One throwaway per kind of subject key the profile allows (RSA once, at its smallest).
    linted: list[x509.Certificate] = []
    real_check = factory.linter.check

    def check(der: bytes) -> list:  # type: ignore[type-arg]
        linted.append(x509.load_der_x509_certificate(der))
        return real_check(der)

    factory.linter.check = check  # type: ignore[method-assign]
    operator = policies.profile("operator")  # p256 p384 ed25519 rsa2048 rsa3072 rsa4096
    factory.lint_template(operator, pki.issuers[operator.issuer], NOW)
    keys = sorted(KeyType.of(c.public_key()).value for c in linted)  # type: ignore[arg-type]
    assert keys == ["ed25519", "p256", "p384", "rsa2048"]
    # the RSA subject is the sample public key, not a key pair made at each start
    from ca.sample_keys import sample_rsa_key

    (rsa_cert,) = [c for c in linted if KeyType.of(c.public_key()) is KeyType.RSA2048]  # type: ignore[arg-type]
    assert rsa_cert.public_key() == sample_rsa_key(KeyType.RSA2048)
    for kt in (KeyType.RSA2048, KeyType.RSA3072, KeyType.RSA4096):
        assert sample_rsa_key(kt).key_size == int(kt.value[3:])
    factory.linter.check = real_check  # type: ignore[method-assign]
    for profile in policies.profiles.values():
        if not profile.ca:
            issuer = pki.issuers["agency" if profile.issuer == "*" else profile.issuer]
            findings = factory.lint_template(profile, issuer, NOW)
            assert all(f.severity not in ("ERROR", "FATAL") for f in findings)
    # A template that makes an invalid certificate is caught without a real signature.
    import dataclasses

    broken = dataclasses.replace(
        policies.profile("service-tls"), san_dns=("bad host {service_host}",)
    )
    with pytest.raises(LintFailed, match="domain_name"):
        factory.lint_template(broken, pki.issuers["service"], NOW)


def test_a_template_memo_skips_templates_already_passed(
    policies: Policies, pki: hierarchy.Hierarchy
) -> None:
    """``eport serve``'s master lints the templates and its forked workers find them passed
    (a fresh factory and linter of their own, the same memo); anything that changes the
    template (the hour it is dated from, the profile) is linted again, and a template
    that fails is never taken as passed."""
    memo = TemplateMemo()
    calls: list[bytes] = []

    def counting_factory() -> CertificateFactory:
        factory = CertificateFactory(template_memo=memo)
        real = factory.linter.check

        def check(der: bytes) -> list:  # type: ignore[type-arg]
            calls.append(der)
            return real(der)

        factory.linter.check = check  # type: ignore[method-assign]
        return factory

    enterprise = policies.profile("enterprise")
    issuer = pki.issuers[enterprise.issuer]
    master = counting_factory()
    first = master.lint_template(enterprise, issuer, NOW)
    linted = len(calls)
    assert linted == 4  # one per kind of subject key (p256, p384, ed25519, rsa)
    worker = counting_factory()
    assert worker.lint_template(enterprise, issuer, NOW + datetime.timedelta(minutes=59)) == first
    assert len(calls) == linted  # the same bytes: pkilint not run again
    worker.lint_template(enterprise, issuer, NOW + datetime.timedelta(hours=1))
    assert len(calls) == 2 * linted  # dated from another hour: linted
    operator = policies.profile("operator")
    worker.lint_template(operator, pki.issuers[operator.issuer], NOW)
    assert len(calls) == 3 * linted  # another profile (its four kinds of key): linted
    # Without a memo every call lints, as before.
    plain = CertificateFactory()
    plain.lint_template(enterprise, issuer, NOW)
    plain.lint_template(enterprise, issuer, NOW)
    import dataclasses

    broken = dataclasses.replace(
        policies.profile("service-tls"), san_dns=("bad host {service_host}",)
    )
    for _ in range(2):  # refused each time: a failure is not remembered as a pass
        with pytest.raises(LintFailed, match="domain_name"):
            worker.lint_template(broken, pki.issuers["service"], NOW)


def test_unlinted_certificates_are_signed_and_checked_the_same_way(
    policies: Policies, pki: hierarchy.Hierarchy
) -> None:
    """Not sampled for linting, a certificate is signed by the builder with an in-memory
    CA key directly, or (a key in a token) over the TBS of a throwaway draft: the same
    TBS bytes either way, verified under the issuer, and a wrong key is still caught."""
    issuer = pki.issuers["enterprise"]
    profile = policies.profile("enterprise")
    public_key = KeyType.P256.generate().public_key()
    unlinted = CertificateFactory(lint_sampler=lambda: False)
    assert in_memory_key(issuer.signer) is not None  # the direct path is the one taken

    class TokenLike:  # signs bytes only, like Pkcs11Signer: no key object to hand out
        def __init__(self, inner: SoftwareSigner) -> None:
            self.inner, self.key_type = inner, inner.key_type

        def public_key(self) -> object:
            return self.inner.public_key()

        def sign(self, data: bytes) -> bytes:
            return self.inner.sign(data)

    token_issuer = IssuingCA("enterprise", issuer.certificate, TokenLike(issuer.signer))  # type: ignore[arg-type]
    direct = unlinted.issue(profile, issuer, public_key, VETTED, NOW, serial=1 << 70)
    via_draft = unlinted.issue(profile, token_issuer, public_key, VETTED, NOW, serial=1 << 70)
    linted = CertificateFactory().issue(profile, issuer, public_key, VETTED, NOW, serial=1 << 70)
    assert direct.tbs_certificate_bytes == via_draft.tbs_certificate_bytes
    assert direct.tbs_certificate_bytes == linted.tbs_certificate_bytes
    for cert in (direct, via_draft, linted):
        cert.verify_directly_issued_by(issuer.certificate)
    wrong = IssuingCA("enterprise", issuer.certificate, SoftwareSigner(KeyType.P256.generate()))
    with pytest.raises(LintFailed, match="does not verify"):
        unlinted.issue(profile, wrong, public_key, VETTED, NOW)


def test_certificate_pem_is_rfc7468_as_cryptography_writes_it(pki: hierarchy.Hierarchy) -> None:
    """The CA's answers build PEM from the stored DER (64-character lines, RFC 7468): the
    same text ``cryptography`` writes, for every certificate of the hierarchy."""
    from ca.api import certificate_pem

    for cert in (pki.root, *(i.certificate for i in pki.issuers.values())):
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        assert certificate_pem(cert.public_bytes(serialization.Encoding.DER)) == pem
