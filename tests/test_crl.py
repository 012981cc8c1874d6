"""Tests of ca.crl: RFC 5280 §5 CRLs checked by three independent implementations.

cryptography parses and verifies them, the openssl CLI verifies them and uses them
for path validation, and pkilint lints them against RFC 5280.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from asn1crypto import crl as asn1_crl
from asn1crypto import parser as asn1_parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ca.crl import MAX_CRL_NUMBER, MAX_SERIAL, ReasonCode, RevokedEntry, build_crl
from ca.keys import KeyType
from ca.signer import SoftwareSigner

THIS_UPDATE = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
NEXT_UPDATE = THIS_UPDATE + timedelta(days=7)

SIGNATURE_OIDS = {
    KeyType.P256: SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    KeyType.P384: SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    KeyType.ED25519: SignatureAlgorithmOID.ED25519,
    KeyType.RSA2048: SignatureAlgorithmOID.RSA_WITH_SHA256,
}


@dataclass(frozen=True)
class ThrowawayCA:
    key_type: KeyType
    key: CertificateIssuerPrivateKeyTypes
    cert: x509.Certificate
    signer: SoftwareSigner

    def issue(self, serial: int, now: datetime) -> x509.Certificate:
        """A leaf certificate for path validation with openssl."""
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"leaf {serial}")]))
            .issuer_name(self.cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(serial)
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self.key, self.key_type.hash_algorithm)  # type: ignore[arg-type]
        )


@functools.cache
def make_ca(key_type: KeyType, crl_sign: bool = True) -> ThrowawayCA:
    """A throwaway self-signed CA (cached: RSA key generation is slow)."""
    key = key_type.generate()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "E-Port Trust Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Test CA {key_type.value}"),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=crl_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, key_type.hash_algorithm)  # type: ignore[arg-type]
    )
    return ThrowawayCA(key_type, key, cert, SoftwareSigner(key))


@pytest.fixture(params=list(SIGNATURE_OIDS), ids=lambda kt: kt.value)
def ca(request: pytest.FixtureRequest) -> ThrowawayCA:
    return make_ca(request.param)


@pytest.fixture
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl CLI is not installed (make sysdeps installs it)")
    return path


def sample_entries() -> list[RevokedEntry]:
    when = datetime(2030, 5, 1, 8, 30, 15, tzinfo=UTC)
    return [
        RevokedEntry(0x1234, when),
        RevokedEntry(0x05, when + timedelta(minutes=1), ReasonCode.KEY_COMPROMISE, when),
        RevokedEntry(0xABCDEF, when + timedelta(hours=1), ReasonCode.CERTIFICATE_HOLD),
        RevokedEntry(0x77, when + timedelta(days=1), ReasonCode.UNSPECIFIED),
        RevokedEntry(0x01, when + timedelta(days=2), ReasonCode.SUPERSEDED),
        RevokedEntry(
            0x7FFF,
            when + timedelta(days=3),
            ReasonCode.CA_COMPROMISE,
            datetime(2029, 12, 31, 23, 59, 59, tzinfo=UTC),
        ),
    ]


def parse(der: bytes) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(der)


def tbs_of(der: bytes) -> asn1_crl.TbsCertList:
    return asn1_crl.CertificateList.load(der)["tbs_cert_list"]


def top_level_identifiers(contents: bytes) -> list[int]:
    """The identifier octet of each TLV in ``contents`` (X.690 §8.1.2)."""
    identifiers, offset = [], 0
    while offset < len(contents):
        _class, _method, _tag, header, body, trailer = asn1_parser.parse(
            contents[offset:], strict=False
        )
        identifiers.append(header[0])
        offset += len(header) + len(body) + len(trailer)
    return identifiers


def assert_entry_matches(revoked: x509.RevokedCertificate, entry: RevokedEntry) -> None:
    """``revoked`` as cryptography parsed it says exactly what ``entry`` says."""
    assert revoked.serial_number == entry.serial
    assert revoked.revocation_date_utc == entry.revoked_at.replace(microsecond=0)
    expected_oids = []
    if entry.reason is not None and entry.reason.is_encoded:
        expected_oids.append(x509.CRLReason.oid)
        reason = revoked.extensions.get_extension_for_class(x509.CRLReason)
        assert not reason.critical
        assert reason.value.reason == x509.ReasonFlags(entry.reason.rfc_name)
    if entry.invalidity_date is not None:
        expected_oids.append(x509.InvalidityDate.oid)
        invalidity = revoked.extensions.get_extension_for_class(x509.InvalidityDate)
        assert not invalidity.critical
        assert invalidity.value.invalidity_date_utc == entry.invalidity_date.replace(microsecond=0)
    assert [ext.oid for ext in revoked.extensions] == expected_oids


# -- cryptography ---------------------------------------------------------------------


def test_crl_parses_and_verifies(ca: ThrowawayCA) -> None:
    entries = sample_entries()
    der = build_crl(ca.cert, ca.signer, entries, 42, THIS_UPDATE, NEXT_UPDATE)
    crl = parse(der)

    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert crl.signature_algorithm_oid == SIGNATURE_OIDS[ca.key_type]
    assert crl.issuer == ca.cert.subject
    assert crl.last_update_utc == THIS_UPDATE
    assert crl.next_update_utc == NEXT_UPDATE
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not aki.critical
    assert aki.value.key_identifier == ski.value.digest
    assert aki.value.authority_cert_issuer is None
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert [ext.oid for ext in crl.extensions] == [
        x509.AuthorityKeyIdentifier.oid,
        x509.CRLNumber.oid,
    ]
    assert len(crl) == len(entries)
    for revoked, entry in zip(crl, entries, strict=True):  # iteration order is kept
        assert_entry_matches(revoked, entry)
    assert tbs_of(der)["version"].native == "v2"


def test_issuer_is_the_certificate_subject_byte_for_byte(ca: ThrowawayCA) -> None:
    """RFC 5280 §5.1.2.3: the issuer field names the entity that signed the CRL."""
    der = build_crl(ca.cert, ca.signer, [], 1, THIS_UPDATE, NEXT_UPDATE)
    issuer = tbs_of(der)["issuer"].dump()
    assert issuer == ca.cert.subject.public_bytes()
    assert issuer in ca.cert.tbs_certificate_bytes


def test_unspecified_reason_is_absent_not_encoded() -> None:
    """RFC 5280 §5.3.1: the extension SHOULD be absent instead of unspecified (0)."""
    ca = make_ca(KeyType.P256)
    when = THIS_UPDATE - timedelta(days=1)
    entries = [RevokedEntry(1, when, ReasonCode.UNSPECIFIED), RevokedEntry(2, when, None)]
    der = build_crl(ca.cert, ca.signer, entries, 1, THIS_UPDATE, NEXT_UPDATE)
    for revoked in tbs_of(der)["revoked_certificates"]:
        assert revoked["crl_entry_extensions"].native is None
    assert all(len(revoked.extensions) == 0 for revoked in parse(der))


def test_empty_crl_omits_revoked_certificates(ca: ThrowawayCA) -> None:
    """RFC 5280 §5.1.2.6: with no revoked certificate the list MUST be absent."""
    der = build_crl(ca.cert, ca.signer, iter(()), 1, THIS_UPDATE, NEXT_UPDATE)
    crl = parse(der)
    assert len(crl) == 0
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    # version, signature, issuer, thisUpdate, nextUpdate, then crlExtensions [0]:
    # no revokedCertificates SEQUENCE, not even an empty one
    assert top_level_identifiers(tbs_of(der).contents) == [0x02, 0x30, 0x30, 0x17, 0x17, 0xA0]


def test_delta_crl(ca: ThrowawayCA) -> None:
    """RFC 5280 §5.2.4: a critical deltaCRLIndicator naming the base CRL's number."""
    when = THIS_UPDATE - timedelta(hours=2)
    entries = [
        RevokedEntry(10, when, ReasonCode.REMOVE_FROM_CRL),
        RevokedEntry(11, when, ReasonCode.PRIVILEGE_WITHDRAWN),
    ]
    der = build_crl(ca.cert, ca.signer, entries, 8, THIS_UPDATE, NEXT_UPDATE, delta_base=7)
    crl = parse(der)
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    delta = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert delta.critical
    assert delta.value.crl_number == 7
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 8
    for revoked, entry in zip(crl, entries, strict=True):
        assert_entry_matches(revoked, entry)


@pytest.mark.parametrize(
    "serial",
    [
        1,
        0x7F,
        0x80,  # high bit: encoded with a leading zero octet
        0xFF,
        1 << 63,
        (1 << 159) - 1,  # the largest 20-octet INTEGER
        1 << 159,  # 20 octets of magnitude with the high bit set: 21 content octets
        MAX_SERIAL,
    ],
    ids=hex,
)
def test_serial_number_edges(serial: int) -> None:
    ca = make_ca(KeyType.P256)
    entry = RevokedEntry(serial, THIS_UPDATE - timedelta(days=1), ReasonCode.KEY_COMPROMISE)
    der = build_crl(ca.cert, ca.signer, [entry], 1, THIS_UPDATE, NEXT_UPDATE)
    (revoked,) = parse(der)
    assert_entry_matches(revoked, entry)
    encoded = tbs_of(der)["revoked_certificates"][0]["user_certificate"]
    content = encoded.contents
    assert content == serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    assert content[0] < 0x80  # non-negative
    assert content[0] != 0 or content[1] >= 0x80  # minimal (X.690 §8.3.2)
    if serial.bit_length() == 160:
        assert len(content) == 21 and content[0] == 0


def test_dates_from_2050_are_generalized_time() -> None:
    """RFC 5280 §4.1.2.5 / §5.1.2.4: UTCTime through 2049, GeneralizedTime from 2050."""
    ca = make_ca(KeyType.P256)
    this_update = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
    next_update = datetime(2050, 1, 1, 0, 0, 0, tzinfo=UTC)
    entries = [
        RevokedEntry(1, datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)),
        RevokedEntry(2, datetime(2050, 1, 1, tzinfo=UTC)),
        RevokedEntry(3, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        RevokedEntry(4, datetime(1950, 1, 1, tzinfo=UTC)),
        RevokedEntry(
            5,
            datetime(2040, 1, 1, tzinfo=UTC),
            ReasonCode.KEY_COMPROMISE,
            datetime(2039, 1, 1, tzinfo=UTC),  # invalidityDate: GeneralizedTime even so
        ),
    ]
    der = build_crl(ca.cert, ca.signer, entries, 1, this_update, next_update)
    tbs = tbs_of(der)
    assert tbs["this_update"].name == "utc_time"
    assert tbs["next_update"].name == "general_time"
    kinds = [revoked["revocation_date"].name for revoked in tbs["revoked_certificates"]]
    assert kinds == ["utc_time", "general_time", "general_time", "utc_time", "utc_time"]
    invalidity = tbs["revoked_certificates"][4]["crl_entry_extensions"][1]
    assert invalidity["extn_value"].parsed.contents == b"20390101000000Z"
    crl = parse(der)
    assert crl.next_update_utc == next_update
    for revoked, entry in zip(crl, entries, strict=True):
        assert_entry_matches(revoked, entry)


def test_times_are_whole_seconds_in_utc() -> None:
    """RFC 5280 §5.1.2.4: UTC, seconds present, no fractional seconds."""
    ca = make_ca(KeyType.P256)
    beijing = timezone(timedelta(hours=8))
    entry = RevokedEntry(
        9,
        datetime(2030, 1, 1, 8, 0, 0, 999_999, tzinfo=beijing),
        ReasonCode.KEY_COMPROMISE,
        datetime(2060, 1, 1, 8, 0, 0, 500_000, tzinfo=beijing),
    )
    assert entry.revoked_at.tzinfo is UTC
    der = build_crl(
        ca.cert,
        ca.signer,
        [entry],
        1,
        THIS_UPDATE.replace(microsecond=123) + timedelta(hours=3),
        NEXT_UPDATE.astimezone(beijing),
    )
    revoked = tbs_of(der)["revoked_certificates"][0]
    assert revoked["revocation_date"].chosen.contents == b"300101000000Z"
    invalidity = revoked["crl_entry_extensions"][1]["extn_value"].parsed
    assert invalidity.contents == b"20600101000000Z"
    crl = parse(der)
    assert crl.last_update_utc == THIS_UPDATE + timedelta(hours=3)
    assert crl.next_update_utc == NEXT_UPDATE


def test_entries_are_read_lazily_and_memory_stays_bounded() -> None:
    """No per-entry object is kept: peak memory is a small multiple of the CRL size."""
    ca = make_ca(KeyType.P256)
    when = THIS_UPDATE - timedelta(days=1)
    count = 20_000

    def entries() -> Iterator[RevokedEntry]:
        for i in range(count):
            yield RevokedEntry(
                (i + 1) << 120, when - timedelta(seconds=i), ReasonCode(i % 6 or 1), None
            )

    tracemalloc.start()
    try:
        der = build_crl(ca.cert, ca.signer, entries(), 1, THIS_UPDATE, NEXT_UPDATE)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(parse(der)) == count
    # the entries' encoding, then the TBSCertList, then the CertificateList: at most
    # two copies at a time, plus the bytearray's over-allocation
    assert peak < 3 * len(der) + 512 * 1024


def test_reason_codes_match_rfc_5280() -> None:
    assert {reason.rfc_name for reason in ReasonCode} == {flag.value for flag in x509.ReasonFlags}
    assert [int(reason) for reason in ReasonCode] == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]
    assert not ReasonCode.UNSPECIFIED.is_encoded


# -- what build_crl and RevokedEntry refuse ------------------------------------------

WHEN = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, WHEN), ValueError),
        ((-5, WHEN), ValueError),
        ((MAX_SERIAL + 1, WHEN), ValueError),
        ((True, WHEN), TypeError),
        (("12", WHEN), TypeError),
        ((1, datetime(2030, 1, 1)), ValueError),  # naive
        ((1, "2030-01-01"), TypeError),
        ((1, datetime(1949, 12, 31, 23, 59, 59, tzinfo=UTC)), ValueError),
        ((1, WHEN, 1), TypeError),
        ((1, WHEN, ReasonCode.KEY_COMPROMISE, datetime(2029, 1, 1)), ValueError),
    ],
)
def test_revoked_entry_refuses(args: tuple[object, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        RevokedEntry(*args)  # type: ignore[arg-type]


def test_remove_from_crl_only_in_delta_crls() -> None:
    """RFC 5280 §5.3.1: removeFromCRL is for delta CRLs only."""
    ca = make_ca(KeyType.P256)
    entries = [RevokedEntry(1, WHEN), RevokedEntry(2, WHEN, ReasonCode.REMOVE_FROM_CRL)]
    with pytest.raises(ValueError, match="delta CRLs only"):
        build_crl(ca.cert, ca.signer, entries, 1, THIS_UPDATE, NEXT_UPDATE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crl_number": -1}, "crl_number"),
        ({"crl_number": MAX_CRL_NUMBER + 1}, "crl_number"),
        ({"crl_number": 5, "delta_base": 5}, "delta_base"),
        ({"crl_number": 5, "delta_base": -1}, "delta_base"),
        ({"next_update": THIS_UPDATE}, "later"),
        ({"next_update": THIS_UPDATE - timedelta(seconds=1)}, "later"),
        ({"next_update": THIS_UPDATE + timedelta(microseconds=5)}, "later"),
        ({"this_update": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"next_update": datetime(2030, 1, 1)}, "timezone-aware"),
    ],
)
def test_build_crl_refuses(kwargs: dict[str, object], message: str) -> None:
    ca = make_ca(KeyType.P256)
    args: dict[str, object] = {
        "crl_number": 1,
        "this_update": THIS_UPDATE,
        "next_update": NEXT_UPDATE,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        build_crl(ca.cert, ca.signer, [], **args)  # type: ignore[arg-type]


def test_build_crl_refuses_what_is_not_a_revoked_entry() -> None:
    ca = make_ca(KeyType.P256)
    with pytest.raises(TypeError, match="RevokedEntry"):
        build_crl(ca.cert, ca.signer, [(1, WHEN)], 1, THIS_UPDATE, NEXT_UPDATE)  # type: ignore[list-item]


def test_build_crl_refuses_a_signer_that_is_not_the_issuer() -> None:
    ca, other = make_ca(KeyType.P256), make_ca(KeyType.P384)
    with pytest.raises(ValueError, match="signer's key"):
        build_crl(ca.cert, other.signer, [], 1, THIS_UPDATE, NEXT_UPDATE)


def test_build_crl_refuses_an_issuer_without_crl_sign() -> None:
    """RFC 5280 §4.2.1.3: a CRL issuer's keyUsage must assert cRLSign."""
    ca = make_ca(KeyType.P256, crl_sign=False)
    with pytest.raises(ValueError, match="cRLSign"):
        build_crl(ca.cert, ca.signer, [], 1, THIS_UPDATE, NEXT_UPDATE)


# -- property: every entry round-trips ------------------------------------------------

offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)),
)
revocation_dates = st.datetimes(
    min_value=datetime(1950, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
)
invalidity_dates = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
)
entries_strategy = st.lists(
    st.builds(
        RevokedEntry,
        serial=st.integers(min_value=1, max_value=MAX_SERIAL),
        revoked_at=revocation_dates,
        reason=st.none() | st.sampled_from(ReasonCode),
        invalidity_date=st.none() | invalidity_dates,
    ),
    max_size=20,
    unique_by=lambda entry: entry.serial,
)


@settings(max_examples=200, deadline=None)
@given(entries=entries_strategy, crl_number=st.integers(min_value=1, max_value=MAX_CRL_NUMBER))
def test_entries_round_trip_through_cryptography(
    entries: list[RevokedEntry], crl_number: int
) -> None:
    ca = make_ca(KeyType.P256)
    delta = any(entry.reason is ReasonCode.REMOVE_FROM_CRL for entry in entries)
    der = build_crl(
        ca.cert,
        ca.signer,
        entries,
        crl_number,
        THIS_UPDATE,
        NEXT_UPDATE,
        delta_base=crl_number - 1 if delta else None,
    )
    crl = parse(der)
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == crl_number
    assert len(crl) == len(entries)
    for revoked, entry in zip(crl, entries, strict=True):
        assert_entry_matches(revoked, entry)


def asn1crypto_entry(entry: RevokedEntry) -> bytes:
    """The same entry encoded with asn1crypto objects: the slow reference encoder."""
    when = entry.revoked_at.replace(microsecond=0)
    extensions = []
    if entry.reason is not None and entry.reason.is_encoded:
        extensions.append({"extn_id": "crl_reason", "extn_value": int(entry.reason)})
    if entry.invalidity_date is not None:
        extensions.append(
            {
                "extn_id": "invalidity_date",
                "extn_value": entry.invalidity_date.replace(microsecond=0),
            }
        )
    value = {
        "user_certificate": entry.serial,
        "revocation_date": asn1_x509.Time(
            {"utc_time" if when.year < 2050 else "general_time": when}
        ),
    }
    if extensions:
        value["crl_entry_extensions"] = extensions
    der: bytes = asn1_crl.RevokedCertificate(value).dump()
    return der


def asn1crypto_encodable(entries: list[RevokedEntry]) -> bool:
    # asn1crypto writes a year before 1000 with fewer than the four digits of a
    # GeneralizedTime (it formats with strftime's %Y), so it is no reference there
    return all(e.invalidity_date is None or e.invalidity_date.year >= 1000 for e in entries)


@settings(max_examples=200, deadline=None)
@given(entries=entries_strategy.filter(lambda entries: len(entries) > 0))
def test_entry_encoding_equals_asn1crypto(entries: list[RevokedEntry]) -> None:
    """The hand-written DER is byte for byte what asn1crypto encodes."""
    assume(asn1crypto_encodable(entries))
    ca = make_ca(KeyType.P256)
    der = build_crl(ca.cert, ca.signer, entries, 2, THIS_UPDATE, NEXT_UPDATE, delta_base=1)
    encoded = tbs_of(der)["revoked_certificates"]
    assert [revoked.dump() for revoked in encoded] == [asn1crypto_entry(e) for e in entries]


# -- openssl -----------------------------------------------------------------------------


def write_pem(path: Path, der: bytes, label: str) -> Path:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    path.write_text(f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    return path


def test_openssl_verifies_the_crl_signature(ca: ThrowawayCA, openssl: str, tmp_path: Path) -> None:
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    for name, der in {
        "full": build_crl(ca.cert, ca.signer, sample_entries(), 3, THIS_UPDATE, NEXT_UPDATE),
        "empty": build_crl(ca.cert, ca.signer, [], 4, THIS_UPDATE, NEXT_UPDATE),
        "delta": build_crl(
            ca.cert, ca.signer, sample_entries(), 5, THIS_UPDATE, NEXT_UPDATE, delta_base=4
        ),
    }.items():
        crl_der = tmp_path / f"{name}.der"
        crl_der.write_bytes(der)
        result = subprocess.run(
            [openssl, "crl", "-inform", "DER", "-in", crl_der, "-CAfile", ca_pem, "-noout"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "verify OK" in result.stdout + result.stderr, name


def test_openssl_path_validation_uses_the_crl(
    ca: ThrowawayCA, openssl: str, tmp_path: Path
) -> None:
    """``openssl verify -crl_check`` accepts a good leaf and refuses a revoked one."""
    now = datetime.now(UTC).replace(microsecond=0)
    good, revoked = ca.issue(0x1001, now), ca.issue(0x1002, now)
    entries = [
        RevokedEntry(0x0FFF, now - timedelta(minutes=5), ReasonCode.SUPERSEDED),
        RevokedEntry(0x1002, now - timedelta(minutes=1), ReasonCode.KEY_COMPROMISE, now),
    ]
    der = build_crl(ca.cert, ca.signer, entries, 9, now - timedelta(minutes=1), now + timedelta(7))
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    crl_pem = write_pem(tmp_path / "crl.pem", der, "X509 CRL")

    def verify(cert: x509.Certificate) -> subprocess.CompletedProcess[str]:
        path = tmp_path / f"{cert.serial_number:x}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return subprocess.run(
            [openssl, "verify", "-crl_check", "-CAfile", ca_pem, "-CRLfile", crl_pem, path],
            capture_output=True,
            text=True,
            check=False,
        )

    ok = verify(good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith(": OK")
    refused = verify(revoked)
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr


# -- pkilint -----------------------------------------------------------------------------


def pkilint_findings(der: bytes) -> list[tuple[str, str, str | None]]:
    """Lint ``der`` as pkilint's ``lint_crl -t CRL -p PKIX`` does, plus two checks.

    The CRL type is CRL (an issuing CA's CRL, not an ARL), which sets the validity
    period limit (10 days); the unspecified-reason check is RFC 5280 §5.3.1's SHOULD.
    The CA/B Forum reason allowlist is not applied: it forbids certificateHold,
    which this CA needs for suspension.
    """
    from pkilint import loader, pkix
    from pkilint.cabf import cabf_crl
    from pkilint.pkix import crl, extension, name
    from pkilint.pkix.crl import crl_extension

    crl_type = crl.CertificateRevocationListType.CRL
    validator = crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container(
                [cabf_crl.create_validity_period_validator(crl_type)]
            ),
            crl.create_extensions_validator_container([]),
            crl_extension.CrlReasonCodeValidator(),
        ],
    )
    document = loader.RFC5280CertificateListDocumentLoader().load_der_document(der, "crl")
    return [
        (finding.finding.severity.name, finding.finding.code, finding.message)
        for result in validator.validate(document.root)
        for finding in result.finding_descriptions
    ]


def serious(findings: list[tuple[str, str, str | None]]) -> list[tuple[str, str, str | None]]:
    return [finding for finding in findings if finding[0] in ("FATAL", "ERROR", "WARNING")]


def test_pkilint_finds_nothing(ca: ThrowawayCA) -> None:
    entries = [*sample_entries(), RevokedEntry((1 << 159) - 1, WHEN, ReasonCode.SUPERSEDED)]
    late = [RevokedEntry(77, datetime(2051, 3, 1, tzinfo=UTC), ReasonCode.AA_COMPROMISE)]
    crls = {
        "full": build_crl(ca.cert, ca.signer, entries, 3, THIS_UPDATE, NEXT_UPDATE),
        "empty": build_crl(ca.cert, ca.signer, [], 4, THIS_UPDATE, NEXT_UPDATE),
        "delta": build_crl(ca.cert, ca.signer, entries, 5, THIS_UPDATE, NEXT_UPDATE, delta_base=4),
        "2050": build_crl(
            ca.cert,
            ca.signer,
            late,
            MAX_CRL_NUMBER,
            datetime(2051, 3, 2, tzinfo=UTC),
            datetime(2051, 3, 9, tzinfo=UTC),
        ),
    }
    for kind, der in crls.items():
        assert pkilint_findings(der) == [], kind


def test_pkilint_counts_serials_in_content_octets() -> None:
    """A serial with 20 octets of magnitude and its top bit set takes 21 content octets.

    RFC 5280 §4.1.2.2 limits serials to 20 octets without saying which; pkilint
    counts the encoded INTEGER, zlint the magnitude. Such a certificate must still
    be revocable, so build_crl lists it and pkilint reports exactly that.
    """
    ca = make_ca(KeyType.P256)
    der = build_crl(ca.cert, ca.signer, [RevokedEntry(1 << 159, WHEN)], 1, THIS_UPDATE, NEXT_UPDATE)
    assert [code for _severity, code, _message in serious(pkilint_findings(der))] == [
        "pkix.certificate_serial_number_out_of_range"
    ]


def test_pkilint_would_catch_a_long_validity_period() -> None:
    """The lint above has teeth: a CRL valid for 30 days breaks the CRL-type limit."""
    ca = make_ca(KeyType.P256)
    der = build_crl(ca.cert, ca.signer, [], 1, THIS_UPDATE, THIS_UPDATE + timedelta(days=30))
    codes = [code for _severity, code, _message in serious(pkilint_findings(der))]
    assert codes == ["cabf.crl_invalid_validity_period"]
