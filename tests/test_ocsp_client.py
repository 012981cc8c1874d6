"""The OCSP status client believes only responses it has verified."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp as xocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca import ocsp
from ca.crl import ReasonCode
from ca.keys import KeyType
from ca.ocsp_client import OCSPError, OCSPStatusSource, check_response
from ca.signer import SoftwareSigner

NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)


def _cert(
    subject: str,
    issuer: str,
    key,
    signing_key,
    *,
    ca: bool = False,
    eku=None,
    nocheck=False,
    serial=None,
):  # type: ignore[no-untyped-def]
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, ca, ca, False, False), critical=True
        )
    )
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if nocheck:
        b = b.add_extension(x509.OCSPNoCheck(), critical=False)
    return b.sign(signing_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki():  # type: ignore[no-untyped-def]
    ca_key, resp_key, leaf_key = (KeyType.P256.generate() for _ in range(3))
    issuer = _cert("Issuing CA", "Issuing CA", ca_key, ca_key, ca=True)
    responder_cert = _cert(
        "Responder",
        "Issuing CA",
        resp_key,
        ca_key,
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        nocheck=True,
    )
    leaf = _cert("Leaf", "Issuing CA", leaf_key, ca_key, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    responder = ocsp.Responder(
        issuer=issuer, certificate=responder_cert, signer=SoftwareSigner(resp_key)
    )
    return issuer, responder, leaf, ca_key


def _answer(responder, leaf, status, nonce=None, this=NOW, nxt=NOW + datetime.timedelta(hours=1)):  # type: ignore[no-untyped-def]
    return ocsp.build_response(
        responder, responder.cert_id(leaf.serial_number), status, this, nxt, this, nonce
    )


def test_good_revoked_hold_unknown(pki) -> None:  # type: ignore[no-untyped-def]
    issuer, responder, leaf, _ = pki
    assert isinstance(
        check_response(_answer(responder, leaf, ocsp.Good()), leaf, issuer, nonce=None, now=NOW),
        ocsp.Good,
    )
    r = check_response(
        _answer(responder, leaf, ocsp.Revoked(NOW, ReasonCode.KEY_COMPROMISE)),
        leaf,
        issuer,
        nonce=None,
        now=NOW,
    )
    assert isinstance(r, ocsp.Revoked) and r.reason is ReasonCode.KEY_COMPROMISE
    h = check_response(
        _answer(responder, leaf, ocsp.OnHold(NOW)), leaf, issuer, nonce=None, now=NOW
    )
    assert isinstance(h, ocsp.OnHold)
    assert isinstance(
        check_response(_answer(responder, leaf, ocsp.Unknown()), leaf, issuer, nonce=None, now=NOW),
        ocsp.Unknown,
    )


def test_refuses_what_it_cannot_verify(pki) -> None:  # type: ignore[no-untyped-def]
    issuer, responder, leaf, ca_key = pki
    good = _answer(responder, leaf, ocsp.Good(), nonce=b"a" * 16)
    with pytest.raises(OCSPError, match="nonce"):
        check_response(good, leaf, issuer, nonce=b"b" * 16, now=NOW)
    with pytest.raises(OCSPError, match="stale"):
        check_response(
            _answer(responder, leaf, ocsp.Good()),
            leaf,
            issuer,
            nonce=None,
            now=NOW + datetime.timedelta(hours=2),
        )
    with pytest.raises(OCSPError, match="future"):
        check_response(
            _answer(
                responder,
                leaf,
                ocsp.Good(),
                this=NOW + datetime.timedelta(hours=1),
                nxt=NOW + datetime.timedelta(hours=2),
            ),
            leaf,
            issuer,
            nonce=None,
            now=NOW,
        )
    # A responder certificate from another CA with the same name: not trusted.
    rogue_ca = KeyType.P256.generate()
    rogue_key = KeyType.P256.generate()
    rogue_cert = _cert(
        "Responder",
        "Issuing CA",
        rogue_key,
        rogue_ca,
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        nocheck=True,
    )
    rogue_issuer = _cert("Issuing CA", "Issuing CA", rogue_ca, rogue_ca, ca=True)
    rogue = ocsp.Responder(
        issuer=rogue_issuer, certificate=rogue_cert, signer=SoftwareSigner(rogue_key)
    )
    forged = ocsp.build_response(
        rogue,
        rogue.cert_id(leaf.serial_number),
        ocsp.Good(),
        NOW,
        NOW + datetime.timedelta(hours=1),
        NOW,
    )
    with pytest.raises(OCSPError, match=r"not issued by the issuer|another issuer"):
        check_response(forged, leaf, issuer, nonce=None, now=NOW)
    # A tampered signature.
    der = bytearray(_answer(responder, leaf, ocsp.Good()))
    der[-3] ^= 0x01
    with pytest.raises(OCSPError):
        check_response(bytes(der), leaf, issuer, nonce=None, now=NOW)
    # An answer about another certificate.
    other = _cert("Other", "Issuing CA", KeyType.P256.generate(), ca_key)
    with pytest.raises(OCSPError, match="another certificate"):
        check_response(_answer(responder, other, ocsp.Good()), leaf, issuer, nonce=None, now=NOW)
    # Error statuses are errors.
    with pytest.raises(OCSPError, match="UNAUTHORIZED"):
        check_response(
            ocsp.error_response(ocsp.ResponseStatus.UNAUTHORIZED), leaf, issuer, nonce=None, now=NOW
        )


def test_status_source_sends_a_nonce(pki) -> None:  # type: ignore[no-untyped-def]
    issuer, responder, leaf, _ = pki
    seen: list[bytes] = []

    def post(url: str, body: bytes) -> bytes:
        req = xocsp.load_der_ocsp_request(body)
        nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        seen.append(nonce)
        info = ocsp.parse_request(body)
        return ocsp.build_response(
            responder,
            info.cert_ids[0],
            ocsp.Good(),
            NOW,
            NOW + datetime.timedelta(hours=1),
            NOW,
            info.nonce,
        )

    # This leaf has no AIA: the source refuses to guess a responder URL. (The nonce
    # round trip through the real responder is tested in test_status_flow.py.)
    src = OCSPStatusSource([issuer], post, clock=lambda: NOW)
    with pytest.raises(OCSPError, match="AIA"):
        src.status(leaf)
    assert seen == []


def test_a_cert_hash_tells_a_copy_of_a_serial_from_the_certificate(pki) -> None:  # type: ignore[no-untyped-def]
    """The CA's responders carry the SHA-256 of the certificate they recorded (CertHash,
    Common PKI 1.3.36.8.3.13): a certificate that copies its serial (made with the issuing
    CA's key outside issuance) is unknown, whatever the serial's status; the recorded one
    reads as it is; an answer without CertHash (an older responder) is taken by serial."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    issuer, responder, leaf, ca_key = pki
    copy = _cert(
        "Someone Else",
        "Issuing CA",
        KeyType.P256.generate(),
        ca_key,
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        serial=leaf.serial_number,
    )
    recorded = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()
    for status in (ocsp.Good(), ocsp.Revoked(NOW, ReasonCode.KEY_COMPROMISE), ocsp.OnHold(NOW)):
        der = ocsp.build_response(
            responder,
            responder.cert_id(leaf.serial_number),
            status,
            NOW,
            NOW + datetime.timedelta(hours=1),
            NOW,
            cert_hash=recorded,
        )
        assert type(check_response(der, leaf, issuer, nonce=None, now=NOW)) is type(status)
        assert check_response(der, copy, issuer, nonce=None, now=NOW) == ocsp.Unknown()
        # the extension as a reader of RFC 6960 and Common PKI sees it: not critical, in
        # the single response, SHA-256 with the recorded hash
        ext = xocsp.load_der_ocsp_response(der).single_extensions[0]
        assert (ext.oid.dotted_string, ext.critical) == ("1.3.36.8.3.13", False)
        assert ext.value.value == bytes.fromhex("302f300b06096086480165030402010420") + recorded
    plain = _answer(responder, leaf, ocsp.Good())
    assert check_response(plain, copy, issuer, nonce=None, now=NOW) == ocsp.Good()
    with pytest.raises(ValueError, match="32-byte"):
        ocsp.build_response(
            responder,
            responder.cert_id(leaf.serial_number),
            ocsp.Good(),
            NOW,
            NOW + datetime.timedelta(hours=1),
            NOW,
            cert_hash=b"short",
        )
