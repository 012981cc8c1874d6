"""Keys the CA must never certify, found by the key-type probe: an Ed25519 point of
small order (anyone can sign under it: F7), keys whose private half anyone can work out
(F6), a key of an algorithm the certificate would misstate (RSASSA-PSS: F1), and CSRs
that were a 500 or got a misleading refusal (F5, F4). Checked over HTTP against a real
server: each is a 400 problem naming why, and the code stays unused."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest
import requests
from asn1crypto import algos, csr, keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ca.errors import WeakKey
from ca.keys import KeyType, ed25519_weakness, refuse_weak_public_key
from tests.conftest import Server
from tests.helpers import creds, enroll_enterprise, enroll_service, fresh_uscc, jrun

# The eight points of small order and two non-canonical encodings (y >= p) of them,
# as libsodium's blocklist has them.
SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]

P = 2**255 - 19
D = (-121665 * pow(121666, P - 2, P)) % P


def _times_eight_is_identity(encoded: bytes) -> bool:
    """The definition, computed independently of ca.keys (RFC 8032 decoding, then three
    affine doublings on -x^2 + y^2 = 1 + d x^2 y^2)."""
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)
    sign = encoded[31] >> 7
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if x & 1 != sign:
        x = P - x
    for _ in range(3):
        t = D * x * x * y * y % P
        x, y = 2 * x * y * pow(1 + t, P - 2, P) % P, (y * y + x * x) * pow(1 - t, P - 2, P) % P
    return x == 0 and y == 1


def test_small_order_ed25519_points_are_refused_and_real_keys_are_not() -> None:
    for h in SMALL_ORDER:
        assert ed25519_weakness(bytes.fromhex(h)) is not None, h
    for h in SMALL_ORDER[:8]:
        assert _times_eight_is_identity(bytes.fromhex(h)), h
    for _ in range(200):
        raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        assert ed25519_weakness(raw) is None and not _times_eight_is_identity(raw)
    with pytest.raises(WeakKey, match="small order"):  # where every key's type is read
        KeyType.of(ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(SMALL_ORDER[0])))


def _prime(bits: int) -> int:
    """A random prime of ``bits`` bits: one of the two primes of a new RSA key of twice
    the size (OpenSSL's generator; ``openssl prime -generate`` took seconds each)."""
    numbers = rsa.generate_private_key(65537, 2 * bits).private_numbers()
    return max(numbers.p, numbers.q)


def _next_prime(n: int) -> int:
    n += 2 if n % 2 else 1
    while pow(2, n - 1, n) != 1 or pow(3, n - 1, n) != 1:
        n += 2
    return n


def test_rsa_and_ec_keys_anyone_can_work_out_are_refused() -> None:
    p = _prime(1024)
    small = 0
    while small.bit_length() != 2048:  # 9973 times a 2,034-bit modulus with no small factor
        small = 9973 * rsa.generate_private_key(65537, 2034).public_key().public_numbers().n
    cases = {
        "Fermat": p * _next_prime(p + 2**20),  # two primes 2^20 apart
        "small factor 9973": small,
        "is a prime": _prime(2048),
    }
    for said, n in cases.items():
        assert n.bit_length() == 2048, said
        with pytest.raises(WeakKey, match=said):
            refuse_weak_public_key(rsa.RSAPublicNumbers(65537, n).public_key())
    refuse_weak_public_key(rsa.generate_private_key(65537, 2048).public_key())
    for k in (1, 2, 256):
        with pytest.raises(WeakKey, match="small number"):
            refuse_weak_public_key(ec.derive_private_key(k, ec.SECP256R1()).public_key())
    refuse_weak_public_key(ec.derive_private_key(257, ec.SECP384R1()).public_key())
    refuse_weak_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())


def _identity_point_csr() -> bytes:
    """A CSR whose "key" is the Ed25519 identity point, "signed" by the one signature
    that verifies for every message under it."""
    spki = keys.PublicKeyInfo(
        {
            "algorithm": keys.PublicKeyAlgorithm({"algorithm": "ed25519"}),
            "public_key": bytes.fromhex(SMALL_ORDER[0]),
        }
    )
    info = csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": x509_name(),
            "subject_pk_info": spki,
            "attributes": csr.CRIAttributes([]),
        }
    )
    return csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "ed25519"}),
            "signature": bytes.fromhex(SMALL_ORDER[0]) + bytes(32),
        }
    ).dump()


def x509_name() -> object:
    from asn1crypto import x509 as ax509

    return ax509.Name.build({"common_name": "anyone"})


def _csr(key: object, algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, algorithm)  # type: ignore[arg-type]
        .public_bytes(serialization.Encoding.DER)
    )


def _openssl_csr(tmp: Path, *args: str, digest: str = "-sha256") -> bytes:
    key, out = tmp / f"k{secrets.token_hex(4)}.pem", tmp / f"r{secrets.token_hex(4)}.der"
    subprocess.run(["openssl", "genpkey", *args, "-out", str(key)], check=True, capture_output=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            digest,
            "-key",
            str(key),
            "-subj",
            "/CN=x",
            "-outform",
            "DER",
            "-out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def _pem(der: bytes) -> str:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"


def test_the_ca_refuses_them_over_http(sqlite_server: Server, tmp_path: Path) -> None:
    server = sqlite_server
    app = jrun(server, "apply", "--uscc", fresh_uscc(), "--name", "Weak Key Co.")["id"]
    code = jrun(server, "ra", "approve", app, *server.officer())["enrollment_code"]
    ec_key = ec.generate_private_key(ec.SECP256R1())
    sha1 = _openssl_csr(
        tmp_path, "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", digest="-sha1"
    )
    refused = {
        "small order": _identity_point_csr(),
        "algorithm 1.2.840.113549.1.1.10": _openssl_csr(
            tmp_path, "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048"
        ),
        "signed with SHA1": sha1,
        "small number": _csr(ec.derive_private_key(7, ec.SECP256R1()), hashes.SHA256()),
    }
    for said, der in refused.items():
        body = {"code": code, "profile": "enterprise", "csr": _pem(der)}
        r = requests.post(server.url + "/ca/v1/enroll", json=body, timeout=30)
        assert r.status_code == 400 and said in r.json()["detail"], (said, r.status_code, r.text)
    # a request of version 1 (RFC 2986 knows only 0), correctly signed: a 500 it was
    info = csr.CertificationRequest.load(_csr(ec_key, hashes.SHA256()))
    info["certification_request_info"]["version"] = 1
    tbs = info["certification_request_info"].dump(force=True)
    from cryptography.hazmat.primitives.asymmetric.ec import ECDSA

    info["signature"] = ec_key.sign(tbs, ECDSA(hashes.SHA256()))
    body = {
        "code": code,
        "profile": "enterprise",
        "csr": _pem(info.dump(force=True)),
    }
    r = requests.post(server.url + "/ca/v1/enroll", json=body, timeout=30)
    assert r.status_code == 400 and "PKCS#10 knows only v1" in r.json()["detail"], r.text
    # the code was used by none of them
    good = {
        "code": code,
        "profile": "enterprise",
        "csr": _pem(_csr(ec_key, hashes.SHA256())),
    }
    assert requests.post(server.url + "/ca/v1/enroll", json=good, timeout=30).status_code == 201


def test_certificate_policies_chain_for_policy_aware_validation(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """The issuing CAs asserted only their own test OID, so path validation requiring a
    leaf's policy (RFC 5280 §6.1, explicit policy) failed for every certificate (key-type
    probe, F9). Each issuing CA now asserts the OIDs of the profiles it issues; checked
    with openssl verify -policy -explicit_policy."""
    from tests.helpers import enroll_enterprise, enroll_operator

    ent = enroll_enterprise(sqlite_server, tmp_path, "Policy Chain Co.")
    op = enroll_operator(sqlite_server, ent, tmp_path, "P1")
    root = sqlite_server.data_dir / "ca" / "root.crt"
    for d, oid in ((ent, "1.3.6.1.5.5.7.13.2"), (op, "1.3.6.1.5.5.7.13.3")):
        res = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(root),
                "-untrusted",
                str(d / "chain.pem"),
                "-policy",
                oid,
                "-explicit_policy",
                "-policy_check",
                str(d / "cert.pem"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0 and "OK" in res.stdout, (oid, res.stdout, res.stderr)
    res = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(root),
            "-untrusted",
            str(ent / "chain.pem"),
            "-policy",
            "1.3.6.1.5.5.7.13.4",
            "-explicit_policy",
            str(ent / "cert.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode != 0  # the agency officers' policy is not the enterprise's


def test_a_renewal_keeps_the_key_type_and_rsa_sizes_can_be_chosen(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """eport renew made a P-256 key whatever the current one was, without a word
    (key-type probe, F2); the CLI could not make the rsa2048 and rsa4096 keys profiles
    allow. A renewal now keeps the current key's type unless --key-type says otherwise."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "P384 Keeper Co.", key_type="p384")
    out = tmp_path / "renewed"
    text = server.eport("renew", *creds(ent), "--out", str(out)).stdout
    assert "p384 key" in text, text
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert cert.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]
    svc = enroll_service(server, tmp_path, "rsa.eport.example", key_type="rsa2048")
    cert = x509.load_pem_x509_certificate((svc / "cert.pem").read_bytes())
    assert cert.public_key().key_size == 2048  # type: ignore[union-attr]
