"""The responder's hot path recognizes only what the full parser would read the same way."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as xocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ca import ocsp
from ca.keys import KeyType
from ca.signer import SoftwareSigner

NOW = datetime.datetime(2026, 11, 26, tzinfo=datetime.UTC)


def _pki() -> tuple[ocsp.Responder, x509.Certificate, list[x509.Certificate]]:
    ca_key, r_key = KeyType.P256.generate(), KeyType.P256.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Issuing CA")])

    def build(subject: str, key: object, *, ca: bool = False, serial: int = 5, eku=None):  # type: ignore[no-untyped-def]
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(name)
            .public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(serial)
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False).add_extension(
                x509.OCSPNoCheck(), critical=False
            )
        return b.sign(ca_key, hashes.SHA256())

    issuer = build("Issuing CA", ca_key, ca=True, serial=1)
    responder_cert = build("Responder", r_key, serial=2, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    leaves = [build(f"leaf {s}", KeyType.P256.generate(), serial=s) for s in (3, 0x80, 2**120 + 7)]
    return (
        ocsp.Responder(issuer=issuer, certificate=responder_cert, signer=SoftwareSigner(r_key)),
        issuer,
        leaves,
    )


RESPONDER, ISSUER, LEAVES = _pki()


def _req(cert: x509.Certificate, algo: hashes.HashAlgorithm, nonce: bytes | None = None) -> bytes:
    b = xocsp.OCSPRequestBuilder().add_certificate(cert, ISSUER, algo)
    if nonce:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


def test_canonical_requests_are_recognized() -> None:
    for leaf in LEAVES:
        der = _req(leaf, hashes.SHA1())
        assert ocsp.canonical_request(der, [RESPONDER]) == (RESPONDER, leaf.serial_number)
        info = ocsp.parse_request(der)
        assert info.nonce is None and info.cert_ids[0].serial_number == leaf.serial_number


def test_everything_else_takes_the_full_path() -> None:
    leaf = LEAVES[0]
    assert ocsp.canonical_request(_req(leaf, hashes.SHA256()), [RESPONDER]) is None
    assert ocsp.canonical_request(_req(leaf, hashes.SHA1(), b"n" * 16), [RESPONDER]) is None
    der = _req(leaf, hashes.SHA1())
    assert ocsp.canonical_request(der + b"\x00", [RESPONDER]) is None
    assert ocsp.canonical_request(der[:-1], [RESPONDER]) is None
    assert ocsp.canonical_request(b"", [RESPONDER]) is None
    other, _, _ = _pki()
    assert ocsp.canonical_request(der, [other]) is None  # another issuer


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fast_path_never_disagrees_with_the_parser(data: st.DataObject) -> None:
    der = bytearray(_req(data.draw(st.sampled_from(LEAVES)), hashes.SHA1()))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(der) - 1))
        der[i] = data.draw(st.integers(0, 255))
    hit = ocsp.canonical_request(bytes(der), [RESPONDER])
    if hit is not None:
        info = ocsp.parse_request(bytes(der))
        assert info.nonce is None and len(info.cert_ids) == 1
        cid = info.cert_ids[0]
        assert cid.hash_algorithm is ocsp.CertIDHash.SHA1 and cid.null_parameters
        assert RESPONDER.answers_for(cid) and cid.serial_number == hit[1]
