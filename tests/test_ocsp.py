"""Tests of ca.ocsp: RFC 6960 responses checked by three independent implementations.

A throwaway PKI is built with cryptography's CertificateBuilder: a root, an issuing
CA under it (SKI/AKI), a delegated OCSP responder issued by the issuing CA
(id-kp-OCSPSigning, id-pkix-ocsp-nocheck) and two leaves. Responses are parsed and
verified by cryptography, verified by ``openssl ocsp`` against requests that
openssl itself made, and linted by pkilint. Requests are parsed from openssl,
cryptography and asn1crypto, and every malformed one (including fuzzed ones) must
raise MalformedRequest and nothing else.

The clock is the wall clock (``NOW``, taken once): openssl checks the responder
certificate and the response times against the time it runs.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from asn1crypto import algos as asn1_algos
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.crl import ReasonCode
from ca.errors import BadRequest
from ca.keys import KeyType
from ca.ocsp import (
    DEFAULT_MAX_REQUESTS,
    CertID,
    CertIDHash,
    CertStatus,
    Good,
    MalformedRequest,
    OCSPRequestInfo,
    OnHold,
    Responder,
    ResponseStatus,
    Revoked,
    Unknown,
    build_response,
    build_response_multi,
    error_response,
    match_issuer,
    parse_request,
    request_from_get_path,
)
from ca.signer import SoftwareSigner

NOW = datetime.now(UTC).replace(microsecond=0)
THIS_UPDATE = NOW - timedelta(minutes=1)
NEXT_UPDATE = THIS_UPDATE + timedelta(days=1)
PRODUCED_AT = NOW
REVOKED_AT = NOW - timedelta(days=2, hours=3, seconds=7)
DAY = timedelta(days=1)

Key = CertificateIssuerPrivateKeyTypes

SIGNATURE_OIDS = {
    KeyType.P256: SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    KeyType.P384: SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    KeyType.ED25519: SignatureAlgorithmOID.ED25519,
    KeyType.RSA2048: SignatureAlgorithmOID.RSA_WITH_SHA256,
}


# -- a throwaway PKI ---------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "E-Port Trust Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key_usage(*, digital_signature: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _sign(builder: x509.CertificateBuilder, key: Key) -> x509.Certificate:
    return builder.sign(key, KeyType.of(key).hash_algorithm)  # type: ignore[arg-type]


def _builder(
    subject: str, key: Key, issuer: x509.Certificate | None, issuer_key: Key
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 30 * DAY)
        .not_valid_after(NOW + 365 * DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            False,
        )
    )


def make_responder_cert(
    key: Key,
    issuer: x509.Certificate,
    issuer_key: Key,
    *,
    eku: bool = True,
    nocheck: bool = True,
    digital_signature: bool = True,
) -> x509.Certificate:
    """A delegated OCSP responder certificate (RFC 6960 §4.2.2.2)."""
    builder = (
        _builder("Test OCSP Responder", key, issuer, issuer_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=digital_signature), critical=True)
    )
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
        )
    if nocheck:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    return _sign(builder, issuer_key)


@dataclass(frozen=True)
class PKI:
    root: x509.Certificate
    issuing: x509.Certificate
    issuing_key: Key
    responder_key: Key
    responder: Responder
    leaves: tuple[x509.Certificate, x509.Certificate]

    def cert_id(self, leaf: int = 0, algorithm: CertIDHash = CertIDHash.SHA1) -> CertID:
        return self.responder.cert_id(self.leaves[leaf].serial_number, algorithm)

    def write(self, directory: Path) -> dict[str, Path]:
        """PEM files for openssl: root, issuing CA, responder and both leaves."""
        directory.mkdir(parents=True, exist_ok=True)
        files = {
            "root": self.root,
            "issuing": self.issuing,
            "responder": self.responder.certificate,
            "leaf0": self.leaves[0],
            "leaf1": self.leaves[1],
        }
        paths = {}
        for name, cert in files.items():
            path = directory / f"{name}.pem"
            path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            paths[name] = path
        return paths


@functools.cache
def make_pki(responder_type: KeyType = KeyType.P256, label: str = "Test") -> PKI:
    """Root → issuing CA → (OCSP responder, two leaves); cached: RSA keys are slow."""
    root_key = KeyType.P384.generate()
    root = _sign(
        _builder(f"{label} Root CA", root_key, None, root_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True),
        root_key,
    )
    issuing_key = KeyType.P256.generate()
    issuing = _sign(
        _builder(f"{label} Issuing CA", issuing_key, root, root_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True),
        root_key,
    )
    responder_key = responder_type.generate()
    responder_cert = make_responder_cert(responder_key, issuing, issuing_key)
    leaves = tuple(
        _sign(
            _builder(f"{label} leaf {i}", KeyType.P256.generate(), issuing, issuing_key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True),
            issuing_key,
        )
        for i in range(2)
    )
    responder = Responder(issuing, responder_cert, SoftwareSigner(responder_key))
    return PKI(root, issuing, issuing_key, responder_key, responder, (leaves[0], leaves[1]))


@pytest.fixture
def pki() -> PKI:
    return make_pki()


@pytest.fixture(params=list(SIGNATURE_OIDS), ids=lambda kt: kt.value)
def any_pki(request: pytest.FixtureRequest) -> PKI:
    """The PKI with a responder key of each type the CA knows."""
    return make_pki(request.param)


@pytest.fixture
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl CLI is not installed (make sysdeps installs it)")
    return path


def respond(
    pki: PKI,
    status: CertStatus,
    leaf: int = 0,
    nonce: bytes | None = None,
    algorithm: CertIDHash = CertIDHash.SHA1,
) -> bytes:
    return build_response(
        pki.responder,
        pki.cert_id(leaf, algorithm),
        status,
        THIS_UPDATE,
        NEXT_UPDATE,
        PRODUCED_AT,
        nonce,
    )


def parse(der: bytes) -> x509_ocsp.OCSPResponse:
    response = x509_ocsp.load_der_ocsp_response(der)
    assert response.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    return response


def verify_signature(response: x509_ocsp.OCSPResponse, public_key: Any) -> None:
    """Raise InvalidSignature unless ``public_key`` signed ``tbs_response_bytes``."""
    data, signature = response.tbs_response_bytes, response.signature
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        assert response.signature_hash_algorithm is not None
        public_key.verify(signature, data, ec.ECDSA(response.signature_hash_algorithm))
    elif isinstance(public_key, rsa.RSAPublicKey):
        assert response.signature_hash_algorithm is not None
        public_key.verify(signature, data, padding.PKCS1v15(), response.signature_hash_algorithm)
    else:
        assert isinstance(public_key, ed25519.Ed25519PublicKey)
        public_key.verify(signature, data)


# -- encoding requests ------------------------------------------------------------------


ABSENT_PARAMETERS = {
    CertIDHash.SHA1: bytes.fromhex("300706052b0e03021a"),
    CertIDHash.SHA256: bytes.fromhex("300b0609608648016503040201"),
    CertIDHash.SHA384: bytes.fromhex("300b0609608648016503040202"),
    CertIDHash.SHA512: bytes.fromhex("300b0609608648016503040203"),
}


def asn1_cert_id(cert_id: CertID) -> asn1_ocsp.CertId:
    """``cert_id`` encoded by asn1crypto, with NULL or absent hash parameters as it says."""
    encoded = asn1_ocsp.CertId(
        {
            "hash_algorithm": {"algorithm": cert_id.hash_algorithm.value},
            "issuer_name_hash": cert_id.issuer_name_hash,
            "issuer_key_hash": cert_id.issuer_key_hash,
            "serial_number": cert_id.serial_number,
        }
    )
    # asn1crypto insists on NULL parameters for SHA-1 and SHA-2 when it encodes them
    if not cert_id.null_parameters:
        encoded["hash_algorithm"] = asn1_algos.DigestAlgorithm.load(
            ABSENT_PARAMETERS[cert_id.hash_algorithm]
        )
    return encoded


def asn1_request(cert_ids: list[CertID], extensions: list[dict[str, Any]] | None = None) -> bytes:
    """An OCSPRequest encoded by asn1crypto."""
    tbs: dict[str, Any] = {"request_list": [{"req_cert": asn1_cert_id(c)} for c in cert_ids]}
    if extensions is not None:
        tbs["request_extensions"] = extensions
    der: bytes = asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump(force=True)
    return der


def tlv(tag: int, *parts: bytes) -> bytes:
    """A DER TLV, for requests asn1crypto would refuse to encode."""
    body = b"".join(parts)
    if len(body) < 0x80:
        return bytes((tag, len(body))) + body
    size = (len(body).bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + len(body).to_bytes(size, "big") + body


NONCE_OID = bytes.fromhex("06092b0601050507300102")
UNKNOWN_OID = bytes.fromhex("06032a0304")  # 1.2.3.4
SHA1_OID = bytes.fromhex("06052b0e03021a")
MD5_OID = bytes.fromhex("06082a864886f70d0205")


def extension(oid: bytes, value: bytes, critical: bool = False) -> bytes:
    return tlv(0x30, oid, b"\x01\x01\xff" if critical else b"", tlv(0x04, value))


def raw_request(
    requests: list[bytes], extensions: list[bytes] | None = None, prefix: bytes = b""
) -> bytes:
    """``OCSPRequest { TBSRequest { prefix, requestList, [2] requestExtensions } }``.

    Each of ``requests`` is the contents of a ``Request``: a CertID, then its
    singleRequestExtensions if any.
    """
    request_list = tlv(0x30, *(tlv(0x30, request) for request in requests))
    exts = b"" if extensions is None else tlv(0xA2, tlv(0x30, *extensions))
    return tlv(0x30, tlv(0x30, prefix, request_list, exts))


def raw_cert_id(algorithm: bytes, name_hash: bytes, key_hash: bytes, serial: bytes) -> bytes:
    """``CertID { AlgorithmIdentifier { algorithm }, name hash, key hash, serial }``."""
    return tlv(0x30, tlv(0x30, algorithm), tlv(0x04, name_hash), tlv(0x04, key_hash), serial)


def valid_request_der() -> bytes:
    """A well-formed request: two CertIDs and a 16-octet nonce (cryptography cannot do two)."""
    pki = make_pki()
    return raw_request(
        [
            asn1_cert_id(pki.cert_id(0)).dump(force=True),
            asn1_cert_id(pki.cert_id(1, CertIDHash.SHA256)).dump(force=True),
        ],
        [extension(NONCE_OID, tlv(0x04, b"0123456789abcdef"))],
    )


def cryptography_request(pki: PKI, digest: hashes.HashAlgorithm) -> bytes:
    """A request for the first leaf made by cryptography (which asks about one only)."""
    return (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate(pki.leaves[0], pki.issuing, digest)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )


# -- cryptography parses and verifies the responses --------------------------------------


def test_good_response(any_pki: PKI) -> None:
    der = respond(any_pki, Good())
    response = parse(der)
    responder_cert = any_pki.responder.certificate

    verify_signature(response, responder_cert.public_key())
    assert (
        response.signature_algorithm_oid == SIGNATURE_OIDS[KeyType.of(responder_cert.public_key())]
    )
    assert response.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == any_pki.leaves[0].serial_number
    assert response.hash_algorithm.name == "sha1"
    # RFC 6960 §4.2.1: byKey, the SHA-1 of the responder's subjectPublicKey, which is
    # also method (1) of RFC 5280 §4.2.1.2 for a key identifier
    ski = x509.SubjectKeyIdentifier.from_public_key(responder_cert.public_key())
    assert response.responder_key_hash == ski.digest
    assert response.responder_name is None
    assert response.certificates == [responder_cert]
    assert response.produced_at_utc == PRODUCED_AT
    assert response.this_update_utc == THIS_UPDATE
    assert response.next_update_utc == NEXT_UPDATE
    assert response.revocation_time_utc is None
    assert len(response.extensions) == 0
    assert len(response.single_extensions) == 0


def test_cert_id_hashes_match_cryptography(pki: PKI) -> None:
    """RFC 6960 §4.1.1: the name hash and key hash as cryptography computes them."""
    for algorithm, digest in (
        (CertIDHash.SHA1, hashes.SHA1()),
        (CertIDHash.SHA256, hashes.SHA256()),
        (CertIDHash.SHA384, hashes.SHA384()),
        (CertIDHash.SHA512, hashes.SHA512()),
    ):
        request = (
            x509_ocsp.OCSPRequestBuilder()
            .add_certificate(pki.leaves[1], pki.issuing, digest)
            .build()
        )
        cert_id = pki.cert_id(1, algorithm)
        assert cert_id.issuer_name_hash == request.issuer_name_hash
        assert cert_id.issuer_key_hash == request.issuer_key_hash
        assert cert_id.serial_number == request.serial_number


@pytest.mark.parametrize(
    "reason",
    [r for r in ReasonCode if r not in (ReasonCode.CERTIFICATE_HOLD, ReasonCode.REMOVE_FROM_CRL)],
    ids=lambda r: r.rfc_name,
)
def test_revoked_response(pki: PKI, reason: ReasonCode) -> None:
    response = parse(respond(pki, Revoked(REVOKED_AT, reason)))
    verify_signature(response, pki.responder.certificate.public_key())
    assert response.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == REVOKED_AT
    if reason is ReasonCode.UNSPECIFIED:
        # RFC 5280 §5.3.1: absent rather than unspecified
        assert response.revocation_reason is None
    else:
        assert response.revocation_reason == x509.ReasonFlags(reason.rfc_name)


def test_revoked_without_reason(pki: PKI) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 999999, tzinfo=timezone(timedelta(hours=8)))
    response = parse(respond(pki, Revoked(when)))
    assert response.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
    # whole seconds, in UTC
    assert response.revocation_time_utc == datetime(2030, 1, 1, 19, 4, 5, tzinfo=UTC)
    assert response.revocation_reason is None


def test_on_hold_is_revoked_with_certificate_hold(pki: PKI) -> None:
    """RFC 6960 §2.2 / RFC 5280 §5.3.1: a suspension is revoked, reason certificateHold."""
    response = parse(respond(pki, OnHold(REVOKED_AT)))
    assert response.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == REVOKED_AT
    assert response.revocation_reason == x509.ReasonFlags.certificate_hold


def test_unknown_response(pki: PKI) -> None:
    response = parse(respond(pki, Unknown()))
    verify_signature(response, pki.responder.certificate.public_key())
    assert response.certificate_status == x509_ocsp.OCSPCertStatus.UNKNOWN
    assert response.revocation_time_utc is None


@pytest.mark.parametrize("size", [1, 16, 32])
def test_nonce_is_echoed(pki: PKI, size: int) -> None:
    nonce = bytes(range(size))
    response = parse(respond(pki, Good(), nonce=nonce))
    verify_signature(response, pki.responder.certificate.public_key())
    extension = response.extensions.get_extension_for_class(x509.OCSPNonce)
    assert not extension.critical
    assert extension.value.nonce == nonce


def test_sha256_cert_id(pki: PKI) -> None:
    response = parse(respond(pki, Good(), algorithm=CertIDHash.SHA256))
    assert response.hash_algorithm.name == "sha256"
    cert_id = pki.cert_id(0, CertIDHash.SHA256)
    assert response.issuer_name_hash == cert_id.issuer_name_hash
    assert response.issuer_key_hash == cert_id.issuer_key_hash


def test_several_single_responses(pki: PKI) -> None:
    """RFC 6960 §4.2.1: one SingleResponse per CertID, in order."""
    statuses: list[CertStatus] = [Good(), Revoked(REVOKED_AT, ReasonCode.SUPERSEDED), Unknown()]
    cert_ids = [pki.cert_id(0), pki.cert_id(1, CertIDHash.SHA256), pki.responder.cert_id(12345)]
    der = build_response_multi(
        pki.responder,
        list(zip(cert_ids, statuses, strict=True)),
        THIS_UPDATE,
        NEXT_UPDATE,
        PRODUCED_AT,
        b"n" * 20,
    )
    response = parse(der)
    verify_signature(response, pki.responder.certificate.public_key())
    singles = list(response.responses)
    assert [s.serial_number for s in singles] == [c.serial_number for c in cert_ids]
    assert [s.certificate_status for s in singles] == [
        x509_ocsp.OCSPCertStatus.GOOD,
        x509_ocsp.OCSPCertStatus.REVOKED,
        x509_ocsp.OCSPCertStatus.UNKNOWN,
    ]
    assert singles[1].revocation_reason == x509.ReasonFlags.superseded
    assert singles[1].hash_algorithm.name == "sha256"
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 20


def test_responses_are_der(any_pki: PKI) -> None:
    """asn1crypto re-encodes every part of each response to the same bytes (X.690 DER)."""
    statuses: list[CertStatus] = [Good(), Revoked(REVOKED_AT, ReasonCode.KEY_COMPROMISE)]
    statuses += [OnHold(REVOKED_AT), Unknown()]
    for status in statuses:
        der = respond(any_pki, status, nonce=b"\x00\xff" * 8)
        loaded = asn1_ocsp.OCSPResponse.load(der, strict=True)
        assert loaded.native["response_status"] == "successful"
        assert loaded.dump(force=True) == der
        basic = loaded["response_bytes"]["response"].parsed
        assert basic.dump(force=True) == loaded["response_bytes"]["response"].contents
        # version v1 is the DEFAULT and so absent (X.690 §11.5)
        assert basic["tbs_response_data"].contents[0] == 0xA2


def test_response_repeats_the_requested_cert_id_encoding(pki: PKI) -> None:
    """The hash AlgorithmIdentifier comes back with the requester's parameters."""
    for null in (True, False):
        cert_id = CertID(
            CertIDHash.SHA1,
            pki.cert_id().issuer_name_hash,
            pki.cert_id().issuer_key_hash,
            pki.leaves[0].serial_number,
            null_parameters=null,
        )
        request = asn1_request([cert_id])
        parsed = parse_request(request)
        assert parsed.cert_ids == (cert_id,)
        assert parsed.cert_ids[0].null_parameters is null
        der = build_response(
            pki.responder, parsed.cert_ids[0], Good(), THIS_UPDATE, NEXT_UPDATE, PRODUCED_AT
        )
        single = asn1_ocsp.OCSPResponse.load(der).basic_ocsp_response["tbs_response_data"]
        assert single["responses"][0]["cert_id"].dump() == asn1_cert_id(cert_id).dump(force=True)


# -- openssl verifies responses to requests it made --------------------------------------


def openssl_ocsp(openssl: str, *args: str | Path) -> tuple[int, str]:
    """Run ``openssl ocsp`` with ``args``: its exit status and its output."""
    result = subprocess.run(
        [openssl, "ocsp", *map(str, args)], capture_output=True, text=True, check=False
    )
    return result.returncode, result.stdout + result.stderr


def openssl_request(openssl: str, files: dict[str, Path], out: Path, *args: str) -> bytes:
    """A request openssl makes for both leaves (options in ``args`` come before -cert,
    since a digest option applies to the -cert options after it)."""
    status, output = openssl_ocsp(
        openssl, "-issuer", files["issuing"], *args, "-cert", files["leaf0"],
        "-cert", files["leaf1"], "-reqout", out,
    )  # fmt: skip
    assert status == 0, output
    return out.read_bytes()


def openssl_verify(openssl: str, files: dict[str, Path], req: Path, resp: Path) -> str:
    """Verify ``resp`` as the answer to ``req`` (the nonce included); the output."""
    _, output = openssl_ocsp(
        openssl, "-reqin", req, "-respin", resp, "-issuer", files["issuing"],
        "-CAfile", files["root"], "-verify_other", files["issuing"], "-resp_text",
    )  # fmt: skip
    return output


OPENSSL_STATUS_LINES: list[tuple[CertStatus, str]] = [
    (Revoked(REVOKED_AT, ReasonCode.KEY_COMPROMISE), "revoked\n.*Reason: keyCompromise"),
    (Revoked(REVOKED_AT), "revoked\n(?!.*Reason)"),
    (OnHold(REVOKED_AT), "revoked\n.*Reason: certificateHold"),
    (Unknown(), "unknown"),
]


def test_openssl_verifies_responses_to_its_requests(
    any_pki: PKI, openssl: str, tmp_path: Path
) -> None:
    """``openssl ocsp`` checks the signature, the delegation and each status line."""
    pki = any_pki
    files = pki.write(tmp_path)
    for digest in ("-sha1", "-sha256"):
        req = tmp_path / f"req{digest}.der"
        info = parse_request(openssl_request(openssl, files, req, digest, "-no_nonce"))
        assert info.nonce is None
        algorithm = CertIDHash.SHA1 if digest == "-sha1" else CertIDHash.SHA256
        assert info.cert_ids == (pki.cert_id(0, algorithm), pki.cert_id(1, algorithm))
        for second, expected in OPENSSL_STATUS_LINES:
            der = build_response_multi(
                pki.responder,
                [(info.cert_ids[0], Good()), (info.cert_ids[1], second)],
                THIS_UPDATE,
                NEXT_UPDATE,
                PRODUCED_AT,
            )
            resp = tmp_path / "resp.der"
            resp.write_bytes(der)
            # without -reqin, openssl makes the CertIDs itself from -issuer and -cert
            # (with the digest before them) and prints the status of each
            status, output = openssl_ocsp(
                openssl, "-respin", resp, "-no_nonce", "-issuer", files["issuing"], digest,
                "-cert", files["leaf0"], "-cert", files["leaf1"],
                "-CAfile", files["root"], "-verify_other", files["issuing"],
            )  # fmt: skip
            assert status == 0, output
            assert "Response verify OK" in output
            assert f"{files['leaf0']}: good\n" in output
            leaf1 = output[output.index(f"{files['leaf1']}: ") :]
            assert re.match(f"{re.escape(str(files['leaf1']))}: {expected}", leaf1, re.S), output
            assert "WARNING" not in output


def test_openssl_checks_the_echoed_nonce(pki: PKI, openssl: str, tmp_path: Path) -> None:
    files = pki.write(tmp_path)
    req = tmp_path / "req.der"
    info = parse_request(openssl_request(openssl, files, req))
    assert info.nonce is not None and len(info.nonce) == 16  # openssl's default nonce
    answers: list[tuple[CertID, CertStatus]] = [(cert_id, Good()) for cert_id in info.cert_ids]
    resp = tmp_path / "resp.der"

    resp.write_bytes(
        build_response_multi(
            pki.responder, answers, THIS_UPDATE, NEXT_UPDATE, PRODUCED_AT, info.nonce
        )
    )
    output = openssl_verify(openssl, files, req, resp)
    assert "Response verify OK" in output
    assert "Nonce Verify error" not in output and "no nonce" not in output
    assert output.count("Cert Status: good") == 2

    wrong = bytes(b ^ 1 for b in info.nonce)
    resp.write_bytes(
        build_response_multi(pki.responder, answers, THIS_UPDATE, NEXT_UPDATE, PRODUCED_AT, wrong)
    )
    assert "Nonce Verify error" in openssl_verify(openssl, files, req, resp)


def test_openssl_refuses_a_tampered_response(pki: PKI, openssl: str, tmp_path: Path) -> None:
    """Control: the verification above is not vacuous."""
    files = pki.write(tmp_path)
    req = tmp_path / "req.der"
    info = parse_request(openssl_request(openssl, files, req, "-no_nonce"))
    answers: list[tuple[CertID, CertStatus]] = [(cert_id, Good()) for cert_id in info.cert_ids]
    der = build_response_multi(pki.responder, answers, THIS_UPDATE, NEXT_UPDATE, PRODUCED_AT)
    response = asn1_ocsp.OCSPResponse.load(der)
    basic = response["response_bytes"]["response"].parsed
    # the same response with the second certificate said revoked, signature unchanged
    basic["tbs_response_data"]["responses"][1]["cert_status"] = asn1_ocsp.CertStatus(
        name="revoked", value={"revocation_time": THIS_UPDATE}
    )
    response["response_bytes"]["response"] = basic
    resp = tmp_path / "resp.der"
    resp.write_bytes(response.dump(force=True))
    output = openssl_verify(openssl, files, req, resp)
    assert "Response verify OK" not in output
    assert "Response Verify Failure" in output


# -- pkilint -----------------------------------------------------------------------------


def pkilint_findings(der: bytes) -> list[tuple[str, str, str | None]]:
    """Lint ``der`` as pkilint's ``lint_ocsp_response`` does."""
    from pkilint import loader, pkix
    from pkilint.pkix import extension, name, ocsp

    validator = ocsp.create_pkix_ocsp_response_validator_container(
        [
            ocsp.create_response_decoder(),
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [],
    )
    document = loader.RFC6960OCSPResponseDocumentLoader().load_der_document(der, "ocsp")
    return [
        (finding.finding.severity.name, finding.finding.code, finding.message)
        for result in validator.validate(document.root)
        for finding in result.finding_descriptions
    ]


def serious(findings: list[tuple[str, str, str | None]]) -> list[tuple[str, str, str | None]]:
    return [finding for finding in findings if finding[0] in ("FATAL", "ERROR", "WARNING")]


def test_pkilint_finds_nothing(any_pki: PKI) -> None:
    statuses: list[CertStatus] = [Good(), Revoked(REVOKED_AT, ReasonCode.CA_COMPROMISE)]
    statuses += [Revoked(REVOKED_AT), OnHold(REVOKED_AT), Unknown()]
    for status in statuses:
        for nonce in (None, b"\x42" * 32):
            assert serious(pkilint_findings(respond(any_pki, status, nonce=nonce))) == []


def test_pkilint_is_live(pki: PKI) -> None:
    """Control: a ResponderID byKey that is not a SHA-1 hash is an ERROR for pkilint."""
    response = asn1_ocsp.OCSPResponse.load(respond(pki, Good()))
    basic = response["response_bytes"]["response"].parsed
    basic["tbs_response_data"]["responder_id"] = asn1_ocsp.ResponderId({"by_key": b"\x01" * 32})
    response["response_bytes"]["response"] = basic
    findings = pkilint_findings(response.dump(force=True))
    assert ("ERROR", "pkix.ocsp_responderid_keyhash_is_not_sha1") in [f[:2] for f in findings]


# -- requests ----------------------------------------------------------------------------


def test_parse_cryptography_request_with_nonce(pki: PKI) -> None:
    nonce = b"\x00" + bytes(range(1, 32))
    der = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate(pki.leaves[1], pki.issuing, hashes.SHA256())
        .add_extension(x509.OCSPNonce(nonce), critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    info = parse_request(der)
    assert info == OCSPRequestInfo((pki.cert_id(1, CertIDHash.SHA256),), nonce)
    assert match_issuer([pki.responder], info.cert_ids[0]) is pki.responder


def test_parse_many_and_odd_cert_ids(pki: PKI) -> None:
    """Up to the limit; serial numbers of any size and sign are still well-formed."""
    serials = [1, 0, -1, 0x80, (1 << 160) - 1, 1 << 200, *range(2, DEFAULT_MAX_REQUESTS - 4)]
    cert_ids = [pki.responder.cert_id(serial) for serial in serials]
    assert len(cert_ids) == DEFAULT_MAX_REQUESTS
    info = parse_request(asn1_request(cert_ids))
    assert info == OCSPRequestInfo(tuple(cert_ids), None)
    assert [c.der for c in info.cert_ids] == [asn1_cert_id(c).dump(force=True) for c in cert_ids]
    with pytest.raises(MalformedRequest, match="1 to 3 allowed"):
        parse_request(asn1_request(cert_ids[:4]), max_requests=3)


def test_extensions_that_are_understood_or_ignored(pki: PKI) -> None:
    """RFC 6960 §4.4: other non-critical extensions are ignored, whatever their value;
    the nonce and AcceptableResponses (§4.4.3) may be critical."""
    cert_id = asn1_cert_id(pki.cert_id()).dump(force=True)
    acceptable = bytes.fromhex("06092b0601050507300104")  # id-pkix-ocsp-response
    basic = tlv(0x30, bytes.fromhex("06092b0601050507300101"))  # SEQUENCE { id-pkix-ocsp-basic }
    preferred = bytes.fromhex("06092b0601050507300108")  # id-pkix-ocsp-pref-sig-algs
    service_locator = bytes.fromhex("06092b0601050507300107")
    der = raw_request(
        [cert_id],
        [
            extension(UNKNOWN_OID, b"\x05\x00"),
            extension(preferred, b"not even DER"),
            extension(acceptable, basic, critical=True),
            extension(NONCE_OID, tlv(0x04, b"n"), critical=True),
        ],
    )
    assert parse_request(der) == OCSPRequestInfo((pki.cert_id(),), b"n")
    der = raw_request([cert_id + tlv(0xA0, tlv(0x30, extension(service_locator, b"\x30\x00")))])
    assert parse_request(der) == OCSPRequestInfo((pki.cert_id(),), None)


def test_requestor_name_and_signature_are_accepted(pki: PKI) -> None:
    """RFC 6960 §4.1.2: a signed request; this responder does not require signatures."""
    request = asn1_ocsp.OCSPRequest(
        {
            "tbs_request": {
                "requestor_name": {
                    "directory_name": asn1_x509.Name.build({"common_name": "requestor"})
                },
                "request_list": [{"req_cert": asn1_cert_id(pki.cert_id())}],
            },
            "optional_signature": {
                "signature_algorithm": {"algorithm": "sha256_ecdsa"},
                "signature": b"\x30\x00",
                "certs": [
                    asn1_x509.Certificate.load(
                        pki.leaves[0].public_bytes(serialization.Encoding.DER)
                    )
                ],
            },
        }
    )
    assert parse_request(request.dump(force=True)).cert_ids == (pki.cert_id(),)


def malformed_cases() -> dict[str, tuple[bytes, str]]:
    """Malformed requests, each with what the MalformedRequest must say."""
    pki = make_pki()
    cert_id = pki.cert_id()
    good = asn1_cert_id(cert_id).dump(force=True)
    names, keys = cert_id.issuer_name_hash, cert_id.issuer_key_hash
    serial = b"\x02\x01\x05"
    not_der = "not a DER OCSPRequest"
    critical = [extension(UNKNOWN_OID, b"\x05\x00", critical=True)]
    return {
        "empty": (b"", "empty"),
        "one zero octet": (b"\x00", not_der),
        "garbage": (b"this is not DER at all", not_der),
        "empty SEQUENCE": (b"\x30\x00", not_der),
        "trailing data": (valid_request_der() + b"\x00", not_der),
        "indefinite length garbage": (b"\x30\x80\x30\x80\x00\x00", not_der),
        "an OCSPResponse": (respond(pki, Good()), not_der),
        "an error OCSPResponse": (error_response(ResponseStatus.TRY_LATER), not_der),
        "a certificate": (pki.leaves[0].public_bytes(serialization.Encoding.DER), not_der),
        "no request": (raw_request([]), "asks about 0 certificates"),
        "too many requests": (
            raw_request([good] * (DEFAULT_MAX_REQUESTS + 1)),
            f"asks about {DEFAULT_MAX_REQUESTS + 1} certificates",
        ),
        "nonce of 33 octets": (
            raw_request([good], [extension(NONCE_OID, tlv(0x04, b"x" * 33))]),
            "nonce must be 1 to 32 octets",
        ),
        "empty nonce": (
            raw_request([good], [extension(NONCE_OID, tlv(0x04))]),
            "nonce must be 1 to 32 octets",
        ),
        "nonce not an OCTET STRING": (
            raw_request([good], [extension(NONCE_OID, b"0123456789abcdef")]),
            "nonce is not an OCTET STRING",
        ),
        "nonce with trailing data": (
            raw_request([good], [extension(NONCE_OID, tlv(0x04, b"n") + b"\x00")]),
            "nonce is not an OCTET STRING",
        ),
        "two nonces": (
            raw_request(
                [good],
                [extension(NONCE_OID, tlv(0x04, b"a")), extension(NONCE_OID, tlv(0x04, b"b"))],
            ),
            "appears twice",
        ),
        "unknown critical extension": (
            raw_request([good], critical),
            "critical extension 1.2.3.4 is not supported",
        ),
        "unknown critical single extension": (
            raw_request([good + tlv(0xA0, tlv(0x30, *critical))]),
            "critical extension 1.2.3.4 is not supported",
        ),
        "critical nonce in a single request": (
            raw_request([good + tlv(0xA0, tlv(0x30, extension(NONCE_OID, tlv(0x04, b"n"), True)))]),
            "critical extension 1.3.6.1.5.5.7.48.1.2 is not supported",
        ),
        "version v2": (
            raw_request([good], prefix=tlv(0xA0, b"\x02\x01\x01")),
            "unsupported OCSPRequest version",
        ),
        "SHA-224 CertID": (
            cryptography_request(pki, hashes.SHA224()),
            "unsupported CertID hash algorithm sha224",
        ),
        "MD5 CertID": (
            raw_request([raw_cert_id(MD5_OID + b"\x05\x00", names[:16], keys[:16], serial)]),
            "unsupported CertID hash algorithm md5",
        ),
        "SHA-1 CertID with 32-octet hashes": (
            raw_request([raw_cert_id(SHA1_OID, b"a" * 32, b"b" * 32, serial)]),
            "issuer_name_hash must be 20 bytes",
        ),
        "SHA-1 CertID with a short key hash": (
            raw_request([raw_cert_id(SHA1_OID, names, keys[:19], serial)]),
            "issuer_key_hash must be 20 bytes",
        ),
        "hash parameters not NULL": (
            raw_request([raw_cert_id(SHA1_OID + b"\x02\x01\x00", names, keys, serial)]),
            not_der + "|has parameters",
        ),
        "CertID without serial": (raw_request([raw_cert_id(SHA1_OID, names, keys, b"")]), not_der),
        "serial not an INTEGER": (
            raw_request([raw_cert_id(SHA1_OID, names, keys, b"\x04\x01\x05")]),
            not_der,
        ),
        "a Request that is not a CertID": (
            raw_request([tlv(0x30, SHA1_OID) + tlv(0x04, names) + tlv(0x04, keys) + serial]),
            not_der,
        ),
    }


@pytest.mark.parametrize("case", list(malformed_cases()))
def test_malformed_requests(case: str) -> None:
    der, message = malformed_cases()[case]
    with pytest.raises(MalformedRequest, match=message) as info:
        parse_request(der)
    assert isinstance(info.value, BadRequest)
    assert info.value.problem()["status"] == 400


def test_every_truncation_is_malformed() -> None:
    der = valid_request_der()
    assert parse_request(der).nonce == b"0123456789abcdef"
    for end in range(len(der)):
        with pytest.raises(MalformedRequest):
            parse_request(der[:end])


@pytest.mark.parametrize("value", ["MEUw", None, 12, [b"0"]], ids=repr)
def test_not_bytes_is_malformed(value: Any) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(value)


def check_fuzzed(data: bytes) -> None:
    """Parse ``data``: a MalformedRequest or a result within the limits, nothing else."""
    try:
        info = parse_request(data)
    except MalformedRequest:
        return
    assert 1 <= len(info.cert_ids) <= DEFAULT_MAX_REQUESTS
    assert info.nonce is None or 1 <= len(info.nonce) <= 32


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_fuzzed(data)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = bytearray(valid_request_der())
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "flip", "insert", "delete", "cut"]))
        if action == "set":
            data[position] = draw(st.integers(0, 255))
        elif action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            del data[position:]
        if not data:
            break
    return bytes(data)


@settings(max_examples=1500, deadline=None)
@given(mutated_requests())
def test_fuzz_mutated_requests(data: bytes) -> None:
    check_fuzzed(data)


# DER trees built from the tags an OCSPRequest uses, so that fuzzing reaches deep fields
_TAGS = [0x30, 0x02, 0x04, 0x06, 0x05, 0x01, 0x0A, 0x18, 0x03, 0xA0, 0xA1, 0xA2, 0x80, 0x82]
der_trees = st.recursive(
    st.builds(lambda tag, body: tlv(tag, body), st.sampled_from(_TAGS), st.binary(max_size=33)),
    lambda children: st.builds(
        lambda tag, parts: tlv(tag, *parts),
        st.sampled_from([0x30, 0xA0, 0xA1, 0xA2, 0x04]),
        st.lists(children, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(der_trees)
def test_fuzz_der_trees(data: bytes) -> None:
    check_fuzzed(data)


@st.composite
def cert_id_values(draw: st.DrawFn) -> CertID:
    algorithm = draw(st.sampled_from(CertIDHash))
    size = algorithm.digest_size
    return CertID(
        algorithm,
        draw(st.binary(min_size=size, max_size=size)),
        draw(st.binary(min_size=size, max_size=size)),
        draw(st.integers(-(1 << 170), 1 << 170)),
        null_parameters=draw(st.booleans()),
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(cert_id_values(), min_size=1, max_size=DEFAULT_MAX_REQUESTS),
    st.none() | st.binary(min_size=1, max_size=32),
)
def test_request_round_trip(cert_ids: list[CertID], nonce: bytes | None) -> None:
    """What asn1crypto encodes, parse_request gives back, hash parameters included."""
    extensions = (
        None if nonce is None else [{"extn_id": "nonce", "critical": False, "extn_value": nonce}]
    )
    info = parse_request(asn1_request(cert_ids, extensions))
    assert info == OCSPRequestInfo(tuple(cert_ids), nonce)
    assert [c.null_parameters for c in info.cert_ids] == [c.null_parameters for c in cert_ids]


# -- build_response: a round trip and the arguments it refuses ---------------------------


aware_times = st.datetimes(
    min_value=datetime(1950, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
)


statuses: st.SearchStrategy[CertStatus] = st.one_of(
    st.just(Good()),
    st.just(Unknown()),
    st.builds(OnHold, aware_times),
    st.builds(
        Revoked,
        aware_times,
        st.none()
        | st.sampled_from(
            [
                r
                for r in ReasonCode
                if r not in (ReasonCode.CERTIFICATE_HOLD, ReasonCode.REMOVE_FROM_CRL)
            ]
        ),
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, (1 << 160) - 1), statuses), min_size=1, max_size=4),
    aware_times,
    st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=365)),
    st.none() | st.binary(min_size=1, max_size=32),
)
def test_response_round_trip(
    answers: list[tuple[int, CertStatus]],
    this_update: datetime,
    validity: timedelta,
    nonce: bytes | None,
) -> None:
    """What build_response_multi encodes, cryptography reads back (STYLE: property tests)."""
    pki = make_pki()
    next_update = this_update + validity
    pairs = [(pki.responder.cert_id(serial), status) for serial, status in answers]
    der = build_response_multi(pki.responder, pairs, this_update, next_update, PRODUCED_AT, nonce)
    response = parse(der)
    verify_signature(response, pki.responder.certificate.public_key())
    if nonce is None:
        assert len(response.extensions) == 0
    else:
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    for single, (serial, status) in zip(response.responses, answers, strict=True):
        assert single.serial_number == serial
        assert single.this_update_utc == this_update.replace(microsecond=0)
        assert single.next_update_utc == next_update.replace(microsecond=0)
        if isinstance(status, Good):
            assert single.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
        elif isinstance(status, Unknown):
            assert single.certificate_status == x509_ocsp.OCSPCertStatus.UNKNOWN
        else:
            assert single.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
            when = status.since if isinstance(status, OnHold) else status.revoked_at
            assert single.revocation_time_utc == when.replace(microsecond=0)
            if isinstance(status, OnHold):
                assert single.revocation_reason == x509.ReasonFlags.certificate_hold
            elif status.reason is None or status.reason is ReasonCode.UNSPECIFIED:
                assert single.revocation_reason is None
            else:
                assert single.revocation_reason == x509.ReasonFlags(status.reason.rfc_name)


def build(pki: PKI, **changes: Any) -> bytes:
    arguments: dict[str, Any] = {
        "responder": pki.responder,
        "cert_id": pki.cert_id(),
        "status": Good(),
        "this_update": THIS_UPDATE,
        "next_update": NEXT_UPDATE,
        "produced_at": PRODUCED_AT,
        "nonce": None,
    }
    return build_response(**(arguments | changes))


BAD_ARGUMENTS: dict[str, tuple[type[Exception], dict[str, Any]]] = {
    "naive this_update": (ValueError, {"this_update": THIS_UPDATE.replace(tzinfo=None)}),
    "naive produced_at": (ValueError, {"produced_at": PRODUCED_AT.replace(tzinfo=None)}),
    "next_update not later": (ValueError, {"next_update": THIS_UPDATE + timedelta(microseconds=5)}),
    "next_update earlier": (ValueError, {"next_update": THIS_UPDATE - DAY}),
    "produced before the responder was valid": (ValueError, {"produced_at": NOW - 60 * DAY}),
    "produced after the responder expired": (ValueError, {"produced_at": NOW + 400 * DAY}),
    "empty nonce": (ValueError, {"nonce": b""}),
    "33-byte nonce": (ValueError, {"nonce": b"x" * 33}),
    "str nonce": (ValueError, {"nonce": "nonce"}),
    "time not a datetime": (TypeError, {"this_update": "2030-01-01"}),
    "status not a CertStatus": (TypeError, {"status": "good"}),
    "cert_id not a CertID": (TypeError, {"cert_id": b"\x30\x00"}),
    "responder not a Responder": (TypeError, {"responder": None}),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_build_response_refuses(pki: PKI, case: str) -> None:
    error, changes = BAD_ARGUMENTS[case]
    with pytest.raises(error):
        build(pki, **changes)


def test_build_response_refuses_a_cert_id_of_another_issuer(pki: PKI) -> None:
    foreign = make_pki(KeyType.P256, "Foreign")
    with pytest.raises(ValueError, match="another issuer"):
        build(pki, cert_id=foreign.cert_id())
    with pytest.raises(ValueError, match="at least one"):
        build_response_multi(pki.responder, [], THIS_UPDATE, NEXT_UPDATE, PRODUCED_AT)


def test_status_values_check_themselves() -> None:
    with pytest.raises(ValueError, match="OnHold"):
        Revoked(REVOKED_AT, ReasonCode.CERTIFICATE_HOLD)
    with pytest.raises(ValueError, match="delta CRLs"):
        Revoked(REVOKED_AT, ReasonCode.REMOVE_FROM_CRL)
    with pytest.raises(TypeError):
        Revoked(REVOKED_AT, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        Revoked(REVOKED_AT.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone-aware"):
        OnHold(REVOKED_AT.replace(tzinfo=None))
    east = REVOKED_AT.astimezone(timezone(timedelta(hours=8)))
    assert Revoked(east).revoked_at.tzinfo is UTC
    assert OnHold(east) == OnHold(REVOKED_AT)
    assert Good() == Good() and Unknown() == Unknown()


def test_cert_id_checks_itself() -> None:
    with pytest.raises(ValueError, match="20 bytes"):
        CertID(CertIDHash.SHA1, b"a" * 32, b"b" * 20, 1)
    with pytest.raises(ValueError, match="32 bytes"):
        CertID(CertIDHash.SHA256, b"a" * 32, b"b" * 20, 1)
    with pytest.raises(TypeError):
        CertID(CertIDHash.SHA1, b"a" * 20, b"b" * 20, "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CertID("sha1", b"a" * 20, b"b" * 20, 1)  # type: ignore[arg-type]
    # the encoding of the parameters is not part of a CertID's identity
    assert CertID(CertIDHash.SHA1, b"a" * 20, b"b" * 20, 1, null_parameters=False) == CertID(
        CertIDHash.SHA1, b"a" * 20, b"b" * 20, 1
    )


# -- Responder -------------------------------------------------------------------------


def test_responder_refuses_a_bad_delegation(pki: PKI) -> None:
    """RFC 6960 §4.2.2.2: the responder certificate is issued by the CA, for OCSP signing."""
    key = KeyType.P256.generate()
    signer = SoftwareSigner(key)
    cases = {
        "id-kp-OCSPSigning": make_responder_cert(key, pki.issuing, pki.issuing_key, eku=False),
        "nocheck": make_responder_cert(key, pki.issuing, pki.issuing_key, nocheck=False),
        "digitalSignature": make_responder_cert(
            key, pki.issuing, pki.issuing_key, digital_signature=False
        ),
    }
    for message, cert in cases.items():
        with pytest.raises(ValueError, match=message):
            Responder(pki.issuing, cert, signer)
    foreign = make_pki(KeyType.P256, "Foreign")
    with pytest.raises(ValueError, match="not issued by"):
        Responder(pki.issuing, foreign.responder.certificate, foreign.responder.signer)
    # same subject name, another key: the signature does not verify
    with pytest.raises(ValueError, match="not issued by"):
        Responder(foreign.issuing, pki.responder.certificate, pki.responder.signer)
    with pytest.raises(ValueError, match="signer's key"):
        Responder(pki.issuing, pki.responder.certificate, signer)
    with pytest.raises(TypeError):
        Responder(pki.issuing, pki.responder.certificate, key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        der = pki.issuing.public_bytes(serialization.Encoding.DER)
        Responder(der, pki.responder.certificate, signer)  # type: ignore[arg-type]


# -- error responses, issuer matching, GET paths ----------------------------------------


@pytest.mark.parametrize(
    "status",
    [s for s in ResponseStatus if s is not ResponseStatus.SUCCESSFUL],
    ids=lambda s: s.name,
)
def test_error_response(status: ResponseStatus) -> None:
    """RFC 6960 §2.3: an unsigned OCSPResponse with only the status."""
    der = error_response(status)
    assert der == bytes((0x30, 0x03, 0x0A, 0x01, status))
    response = x509_ocsp.load_der_ocsp_response(der)
    assert response.response_status.value == status
    assert response.response_status.name == status.name
    with pytest.raises(ValueError):
        response.certificate_status  # noqa: B018
    assert asn1_ocsp.OCSPResponse.load(der)["response_bytes"].native is None


def test_error_response_refuses_success() -> None:
    with pytest.raises(ValueError):
        error_response(ResponseStatus.SUCCESSFUL)
    with pytest.raises(ValueError):
        error_response(4)  # type: ignore[arg-type]


def test_match_issuer(pki: PKI) -> None:
    foreign = make_pki(KeyType.P256, "Foreign")
    responders = [foreign.responder, pki.responder]
    for algorithm in CertIDHash:
        assert match_issuer(responders, pki.cert_id(0, algorithm)) is pki.responder
        assert match_issuer(responders, foreign.cert_id(1, algorithm)) is foreign.responder
        # a CertID from a CA we do not run: the HTTP layer answers unauthorized
        assert match_issuer([pki.responder], foreign.cert_id(0, algorithm)) is None
    assert match_issuer([], pki.cert_id()) is None
    # the name hash and the key hash must both match
    ours, theirs = pki.cert_id(), foreign.cert_id()
    mixed = CertID(CertIDHash.SHA1, ours.issuer_name_hash, theirs.issuer_key_hash, 1)
    assert match_issuer(responders, mixed) is None
    # a CertID from a request that openssl made for a foreign CA
    der = cryptography_request(foreign, hashes.SHA1())
    assert match_issuer([pki.responder], parse_request(der).cert_ids[0]) is None


def test_request_from_get_path(pki: PKI) -> None:
    """RFC 6960 Appendix A.1: url-encoded base64 of the DER, in either alphabet."""
    der = valid_request_der()
    standard = base64.b64encode(der).decode()
    urlsafe = base64.urlsafe_b64encode(der).decode()
    for path in (
        quote(standard, safe=""),
        standard,
        urlsafe,
        urlsafe.rstrip("="),
        quote(standard.rstrip("="), safe=""),
    ):
        assert request_from_get_path(path) == der
    assert (
        parse_request(request_from_get_path(quote(standard, safe=""))).nonce == b"0123456789abcdef"
    )


@pytest.mark.parametrize(
    "path",
    [
        "",
        "=",
        "%",
        "%zz",
        "%ff%fe",
        "abc*",
        "MEU w",
        "MEUw\n",
        "QQ===",
        "A",
        "QUJD=RA",
        "Q%00",
        "Ω",
    ],
)
def test_request_from_bad_get_path(path: str) -> None:
    with pytest.raises(MalformedRequest):
        request_from_get_path(path)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans(), st.booleans(), st.booleans())
def test_get_path_round_trip(data: bytes, urlsafe: bool, strip: bool, encode: bool) -> None:
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()
    text = text.rstrip("=") if strip else text
    text = quote(text, safe="") if encode else text
    if data:
        assert request_from_get_path(text) == data
    else:
        with pytest.raises(MalformedRequest):
            request_from_get_path(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_get_path(text: str) -> None:
    with contextlib.suppress(MalformedRequest):
        request_from_get_path(text)


def test_a_revoked_issuing_ca_revokes_what_it_issued_from_its_own_time() -> None:
    """RFC 6960 §2.7, as the responder of a generation revoked on the root CRL answers:
    good and on hold become revoked at the CA's time (cACompromise for a compromised key,
    else the CA's reason); a certificate's own earlier revocation stands, a later one does
    not move the time (a suspension or revocation after the CA's gave a later one)."""
    from ca.crl import ReasonCode
    from ca.ocsp import Good, OnHold, Revoked, Unknown
    from ca.status import under_revoked_issuer

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    ca_time = t0 + timedelta(days=10)
    compromised = Revoked(ca_time, ReasonCode.KEY_COMPROMISE)
    superseded = Revoked(ca_time, ReasonCode.SUPERSEDED)
    as_ca = Revoked(ca_time, ReasonCode.CA_COMPROMISE)
    assert under_revoked_issuer(Good(), None) == Good()
    assert under_revoked_issuer(Good(), compromised) == as_ca
    assert under_revoked_issuer(OnHold(t0), compromised) == as_ca
    assert under_revoked_issuer(Good(), superseded) == superseded
    assert under_revoked_issuer(Good(), Revoked(ca_time)) == Revoked(ca_time)
    own_earlier = Revoked(t0, ReasonCode.AFFILIATION_CHANGED)
    assert under_revoked_issuer(own_earlier, compromised) == own_earlier
    own_later = Revoked(ca_time + timedelta(days=1), ReasonCode.KEY_COMPROMISE)
    assert under_revoked_issuer(own_later, compromised) == as_ca
    assert under_revoked_issuer(Unknown(), compromised) == Unknown()
