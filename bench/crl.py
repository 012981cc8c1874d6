"""Benchmark: ca.crl.build_crl against ``openssl ca -gencrl`` on the same revocation list.

For each size N the script draws N revoked entries (fixed seed), times
:func:`ca.crl.build_crl` and, in the same run, ``openssl ca -gencrl`` on an
``index.txt`` holding the same N revocations (same serials, times, reasons and
invalidity dates) signed with the same P-256 key. The peak memory of build_crl
is measured in a second, separate call under tracemalloc (which slows Python
allocation down, so it is not timed). A second table compares per-entry
encoders on a small sample: the hand-written DER path, one asn1crypto object
per entry, and cryptography's CertificateRevocationListBuilder.

Usage: ``python bench/crl.py [--sizes 100000,1000000] [--reference-size 10000]``
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.crl import ReasonCode, RevokedEntry, build_crl
from ca.signer import SoftwareSigner

NOW = datetime.now(UTC).replace(microsecond=0)
CRL_NUMBER = 1000

# (reason, share of entries); keyCompromise entries alternately carry an invalidityDate
REASONS: list[tuple[ReasonCode | None, float]] = [
    (None, 0.30),
    (ReasonCode.SUPERSEDED, 0.25),
    (ReasonCode.CESSATION_OF_OPERATION, 0.20),
    (ReasonCode.KEY_COMPROMISE, 0.10),
    (ReasonCode.AFFILIATION_CHANGED, 0.10),
    (ReasonCode.CERTIFICATE_HOLD, 0.05),
]


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "E-Port Trust Bench"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Bench Issuing CA"),
        ]
    )
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def revocations(count: int, seed: int = 5280) -> Iterator[tuple[int, datetime, int, bool]]:
    """(serial, revoked_at, reason index, has invalidity date): plain data, drawn once."""
    rng = random.Random(seed)
    reasons = list(range(len(REASONS)))
    weights = [share for _reason, share in REASONS]
    drawn = rng.choices(reasons, weights, k=count)
    for i in range(count):
        # unique (low 32 bits are the index) and up to 159 bits, like random serials
        serial = (rng.getrandbits(127) << 32) | i
        serial = serial or 1
        revoked_at = NOW - timedelta(seconds=rng.randrange(1, 2 * 365 * 86400))
        yield serial, revoked_at, drawn[i], i % 2 == 0


def to_entries(rows: list[tuple[int, datetime, int, bool]]) -> list[RevokedEntry]:
    entries = []
    for serial, revoked_at, reason_index, flag in rows:
        reason = REASONS[reason_index][0]
        invalidity = (
            revoked_at - timedelta(days=1) if reason is ReasonCode.KEY_COMPROMISE and flag else None
        )
        entries.append(RevokedEntry(serial, revoked_at, reason, invalidity))
    return entries


def utc_time(value: datetime) -> str:
    return value.strftime("%y%m%d%H%M%SZ")


def write_openssl_ca(
    directory: Path,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    entries: list[RevokedEntry],
) -> Path:
    """An ``openssl ca`` directory whose index.txt revokes exactly ``entries``."""
    (directory / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "crlnumber").write_text(f"{CRL_NUMBER:04X}\n")
    expiry = utc_time(NOW + timedelta(days=365))
    with (directory / "index.txt").open("w") as index:
        for entry in entries:
            revinfo = utc_time(entry.revoked_at)
            if entry.invalidity_date is not None:
                # openssl ca: "keyTime,<GeneralizedTime>" is keyCompromise with invalidityDate
                revinfo += ",keyTime," + entry.invalidity_date.strftime("%Y%m%d%H%M%SZ")
            elif entry.reason is not None:
                revinfo += "," + entry.reason.rfc_name
            serial = f"{entry.serial:X}"
            serial = "0" * (len(serial) % 2) + serial
            index.write(f"R\t{expiry}\t{revinfo}\t{serial}\tunknown\t/CN=x\n")
    (directory / "index.txt.attr").write_text("unique_subject = no\n")
    config = directory / "openssl.cnf"
    config.write_text(
        f"""[ ca ]
default_ca = bench

[ bench ]
dir = {directory}
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
new_certs_dir = $dir
default_md = sha256
default_crl_days = 7
unique_subject = no
crl_extensions = crl_ext

[ crl_ext ]
authorityKeyIdentifier = keyid:always
"""
    )
    return config


def time_openssl(openssl: str, config: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [openssl, "ca", "-config", config, "-gencrl", "-out", out, "-batch"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def pem_to_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)


def revoked_list(der: bytes) -> bytes:
    """The revokedCertificates field of a CRL, read without parsing its entries."""
    revoked: bytes = asn1_crl.CertificateList.load(der)["tbs_cert_list"][
        "revoked_certificates"
    ].dump()
    return revoked


def entry_set(crl: x509.CertificateRevocationList) -> set[tuple[object, ...]]:
    return {
        (
            revoked.serial_number,
            revoked.revocation_date_utc,
            *sorted((ext.oid.dotted_string, repr(ext.value)) for ext in revoked.extensions),
        )
        for revoked in crl
    }


def same_revocations(
    ours: bytes, theirs: bytes, size: int, key: ec.EllipticCurvePrivateKey, *, full: bool
) -> None:
    """Check that both CRLs revoke the same N certificates the same way."""
    ours_crl, their_crl = x509.load_der_x509_crl(ours), x509.load_der_x509_crl(theirs)
    assert ours_crl.is_signature_valid(key.public_key())
    assert their_crl.is_signature_valid(key.public_key())
    assert len(ours_crl) == len(their_crl) == size, (len(ours_crl), len(their_crl))
    # openssl sorts by serial, we keep the given order: the encodings' total length
    # must still agree, entry for entry
    assert len(revoked_list(ours)) == len(revoked_list(theirs))
    if full:
        assert entry_set(ours_crl) == entry_set(their_crl)


def asn1crypto_entry(entry: RevokedEntry) -> bytes:
    """One entry encoded through an asn1crypto object: the slow alternative."""
    extensions: list[dict[str, object]] = []
    if entry.reason is not None and entry.reason.is_encoded:
        extensions.append({"extn_id": "crl_reason", "extn_value": int(entry.reason)})
    if entry.invalidity_date is not None:
        extensions.append({"extn_id": "invalidity_date", "extn_value": entry.invalidity_date})
    value: dict[str, object] = {
        "user_certificate": entry.serial,
        "revocation_date": asn1_x509.Time({"utc_time": entry.revoked_at}),
    }
    if extensions:
        value["crl_entry_extensions"] = extensions
    der: bytes = asn1_crl.RevokedCertificate(value).dump()
    return der


def cryptography_builder(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, entries: list[RevokedEntry]
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(NOW)
        .next_update(NOW + timedelta(days=7))
        .add_extension(x509.CRLNumber(CRL_NUMBER), critical=False)
    )
    for entry in entries:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason is not None and entry.reason.is_encoded:
            flag = x509.ReasonFlags(entry.reason.rfc_name)
            revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
        if entry.invalidity_date is not None:
            revoked = revoked.add_extension(
                x509.InvalidityDate(entry.invalidity_date), critical=False
            )
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated entry counts")
    parser.add_argument(
        "--reference-size",
        type=int,
        default=10_000,
        help="entries for the per-entry encoder comparison (0 skips it)",
    )
    parser.add_argument(
        "--compare-up-to",
        type=int,
        default=100_000,
        help="compare every entry of both CRLs for sizes up to this (slow in Python)",
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size]
    openssl = shutil.which("openssl")
    if openssl is None:
        print("openssl not found (make sysdeps installs it)", file=sys.stderr)
        return 1
    version = subprocess.run([openssl, "version"], capture_output=True, text=True, check=True)
    print(f"python {sys.version.split()[0]}, {version.stdout.strip()}, P-256 / ECDSA-SHA256")

    key, cert = make_ca()
    signer = SoftwareSigner(key)
    this_update, next_update = NOW, NOW + timedelta(days=7)
    rows = []
    for size in sizes:
        drawn = list(revocations(size))
        started = time.perf_counter()
        entries = to_entries(drawn)
        make_entries = time.perf_counter() - started
        del drawn

        started = time.perf_counter()
        ours = build_crl(cert, signer, entries, CRL_NUMBER, this_update, next_update)
        ours_seconds = time.perf_counter() - started

        tracemalloc.start()
        again = build_crl(cert, signer, iter(entries), CRL_NUMBER, this_update, next_update)
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del again

        with tempfile.TemporaryDirectory(prefix="crl-bench-") as tmp:
            directory = Path(tmp)
            config = write_openssl_ca(directory, key, cert, entries)
            out = directory / "crl.pem"
            openssl_seconds = time_openssl(openssl, config, out)
            theirs = pem_to_der(out.read_bytes())

        same_revocations(ours, theirs, size, key, full=size <= args.compare_up_to)
        rows.append(
            (
                f"{size:,}",
                f"{make_entries:.2f}",
                f"{ours_seconds:.3f}",
                f"{ours_seconds / size * 1e6:.2f}",
                f"{openssl_seconds:.3f}",
                f"{openssl_seconds / ours_seconds:.1f}x",
                f"{len(ours) / 2**20:.1f}",
                f"{len(theirs) / 2**20:.1f}",
                f"{peak / 2**20:.1f}",
                f"{peak / len(ours):.2f}",
            )
        )
        del entries, ours, theirs

    headers = (
        "entries",
        "make entries s",
        "build_crl s",
        "us/entry",
        "openssl s",
        "openssl/ours",
        "ours MiB",
        "openssl MiB",
        "peak MiB",
        "peak/CRL",
    )
    print_table(headers, rows)
    print(
        "build_crl s: build_crl alone (entries already made); make entries s: constructing"
        " and checking the RevokedEntry objects;\nopenssl s: the whole `openssl ca -gencrl`"
        " process (reads index.txt, sorts, signs, writes PEM); peak: tracemalloc during"
        " a separate build_crl call."
    )

    if args.reference_size:
        sample = to_entries(list(revocations(args.reference_size, seed=1)))
        encoders = [
            (
                "hand-written DER (build_crl)",
                lambda: build_crl(cert, signer, sample, CRL_NUMBER, this_update, next_update),
            ),
            ("asn1crypto object per entry", lambda: [asn1crypto_entry(e) for e in sample]),
            ("cryptography CRL builder", lambda: cryptography_builder(key, cert, sample)),
        ]
        reference_rows = []
        for label, encode in encoders:
            started = time.perf_counter()
            encode()
            seconds = time.perf_counter() - started
            reference_rows.append((label, f"{seconds:.3f}", f"{seconds / len(sample) * 1e6:.1f}"))
        print()
        print_table((f"encoder, {len(sample):,} entries", "s", "us/entry"), reference_rows)
    return 0


def print_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]
    line = "  ".join(
        f"{{:<{width}}}" if index == 0 else f"{{:>{width}}}" for index, width in enumerate(widths)
    )
    print(line.format(*headers))
    print(line.format(*("-" * width for width in widths)))
    for row in rows:
        print(line.format(*row))


if __name__ == "__main__":
    sys.exit(main())
