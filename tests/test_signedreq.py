"""Signed requests (compact JWS with x5c): a good request verifies; every attack is refused.

A throwaway PKI is built here with cryptography's CertificateBuilder: a P-256 root, an
issuing CA under it (pathLen 0), and end-entity certificates for client authentication.
The clock is fixed (``NOW``), far from the wall clock, so every time check must use the
``now`` passed in.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.errors import Replayed, Unauthenticated
from ca.signedreq import (
    MAX_LIFETIME,
    SCHEME,
    TYP,
    SignedRequest,
    TrustAnchors,
    audience,
    body_hash,
    parse_authorization,
    sign_request,
    unverified_header,
    verify_request,
)

NOW = datetime.datetime(2031, 5, 17, 8, 30, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
METHOD = "POST"
PATH = "/v1/applications/42/approve"
BODY = b'{"decision": "approve", "note": "documents checked"}'
ROLE_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.13.4")

Key = CertificateIssuerPrivateKeyTypes


# --- a throwaway PKI --------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Joint CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _hash_for(key: Key) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


def _serial() -> int:
    return x509.random_serial_number()


def make_ca(
    cn: str,
    key: Key,
    issuer: tuple[x509.Certificate, Key] | None = None,
    path_length: int | None = None,
) -> x509.Certificate:
    """A CA certificate: self-signed root when ``issuer`` is None, else signed by it."""
    issuer_name = issuer[0].subject if issuer else _name(cn)
    signing_key = issuer[1] if issuer else key
    aki_source = issuer[1].public_key() if issuer else key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(NOW - 365 * DAY)
        .not_valid_after(NOW + 3650 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_source), False)
    )
    return builder.sign(signing_key, _hash_for(signing_key))


def make_leaf(
    key: Key,
    issuer: tuple[x509.Certificate, Key] | None,
    *,
    cn: str = "Li Lei",
    eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    not_before: datetime.datetime = NOW - 30 * DAY,
    not_after: datetime.datetime = NOW + 335 * DAY,
) -> x509.Certificate:
    """An end-entity certificate for client authentication (``issuer`` None: self-signed;
    ``eku`` None: no extendedKeyUsage extension)."""
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(cn))
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(ROLE_OID, None)]), critical=False
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(issuer_key, _hash_for(issuer_key))


@dataclass
class MemoryReplay:
    """The ReplayStore protocol over a set, recording what it was asked."""

    seen: set[str] = field(default_factory=set)
    calls: list[tuple[str, datetime.datetime]] = field(default_factory=list)

    def remember(self, jti: str, expires_at: datetime.datetime) -> bool:
        self.calls.append((jti, expires_at))
        if jti in self.seen:
            return False
        self.seen.add(jti)
        return True


@dataclass(frozen=True)
class PKI:
    root: x509.Certificate
    issuing: x509.Certificate
    issuing_key: Key
    trust: TrustAnchors
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    def issue(self, key: Key, **kwargs: Any) -> x509.Certificate:
        return make_leaf(key, (self.issuing, self.issuing_key), **kwargs)


@pytest.fixture(scope="module")
def pki() -> PKI:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_ca("Test Root CA", root_key)
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    issuing = make_ca("Test Agency CA", issuing_key, (root, root_key), path_length=0)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_leaf(leaf_key, (issuing, issuing_key))
    return PKI(
        root=root,
        issuing=issuing,
        issuing_key=issuing_key,
        trust=TrustAnchors(roots=(root,), intermediates=(issuing,)),
        leaf=leaf,
        leaf_key=leaf_key,
    )


@pytest.fixture(scope="module")
def foreign() -> tuple[x509.Certificate, x509.Certificate, Key]:
    """Another root and issuing CA with the same names: (root, issuing, issuing key)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_ca("Test Root CA", root_key)
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    issuing = make_ca("Test Agency CA", issuing_key, (root, root_key), path_length=0)
    return root, issuing, issuing_key


@pytest.fixture
def replay() -> MemoryReplay:
    return MemoryReplay()


# --- helpers ----------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def der_b64(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


def claims(now: datetime.datetime = NOW, /, **overrides: Any) -> dict[str, Any]:
    iat = int(now.timestamp())
    c: dict[str, Any] = {
        "aud": audience(METHOD, PATH),
        "iat": iat,
        "exp": iat + 120,
        "jti": "jti-" + hashlib.sha256(repr(overrides).encode()).hexdigest()[:16],
        "bsh": body_hash(BODY),
    }
    c.update(overrides)
    return {k: v for k, v in c.items() if v is not None}


def header(*x5c_certs: x509.Certificate, **extra: Any) -> dict[str, Any]:
    h: dict[str, Any] = {"typ": TYP, "x5c": der_b64(*x5c_certs)}
    h.update(extra)
    return {k: v for k, v in h.items() if v is not None}


def encode(payload: dict[str, Any], key: Key, alg: str, headers: dict[str, Any]) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=headers)  # type: ignore[arg-type]


def sign_raw(
    header_: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A compact JWS built by hand (no library checks), signature computed by ``sign``."""
    signing_input = f"{b64json(header_)}.{b64json(payload)}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def verify(
    token: str,
    pki: PKI,
    replay: MemoryReplay,
    *,
    method: str = METHOD,
    path: str = PATH,
    body: bytes = BODY,
    now: datetime.datetime = NOW,
    **kwargs: Any,
) -> SignedRequest:
    return verify_request(
        token,
        method=method,
        path=path,
        body=body,
        trust=pki.trust,
        replay=replay,
        now=now,
        **kwargs,
    )


def good_token(pki: PKI, now: datetime.datetime = NOW) -> str:
    return sign_request(pki.leaf_key, [pki.leaf, pki.issuing], METHOD, PATH, BODY, now)


def assert_refused(token: str, pki: PKI, replay: MemoryReplay, match: str, **kw: Any) -> None:
    with pytest.raises(Unauthenticated, match=match):
        verify(token, pki, replay, **kw)
    # A refused request never reaches (and so never burns) the replay store.
    assert replay.seen == set()


# --- the good path ----------------------------------------------------------------------


def test_good_request_verifies(pki: PKI, replay: MemoryReplay) -> None:
    token = good_token(pki)
    req = verify(token, pki, replay)
    assert req.certificate == pki.leaf
    assert req.chain == (pki.leaf, pki.issuing, pki.root)
    assert req.claims["aud"] == "POST " + PATH
    assert req.claims["bsh"] == body_hash(BODY)
    assert req.claims["exp"] - req.claims["iat"] == 120
    assert replay.seen == {req.claims["jti"]}
    [(jti, expires)] = replay.calls
    assert jti == req.claims["jti"]
    # Remembered until the token can no longer be accepted: exp plus the leeway.
    assert expires == NOW.replace(microsecond=0) + datetime.timedelta(seconds=120 + 30)


def test_header_and_claims_shape(pki: PKI) -> None:
    token = good_token(pki)
    h = jwt.get_unverified_header(token)
    assert h["alg"] == "ES256"
    assert h["typ"] == TYP
    assert h["x5c"] == der_b64(pki.leaf, pki.issuing)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"aud", "iat", "exp", "jti", "bsh"}
    assert 8 <= len(payload["jti"]) <= 128
    # Two signatures of the same request carry distinct jtis.
    assert payload["jti"] != jwt.decode(good_token(pki), options={"verify_signature": False})["jti"]


def test_body_hash_is_base64url_sha256() -> None:
    assert body_hash(b"") == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    assert "=" not in body_hash(BODY)


def test_audience_upper_cases_method() -> None:
    assert audience("post", "/x") == "POST /x"


def test_method_case_does_not_matter(pki: PKI, replay: MemoryReplay) -> None:
    assert verify(good_token(pki), pki, replay, method="post").certificate == pki.leaf


def test_leaf_alone_in_x5c_verifies(pki: PKI, replay: MemoryReplay) -> None:
    # Intermediates come from the trust anchors, not from the caller.
    token = sign_request(pki.leaf_key, [pki.leaf], METHOD, PATH, BODY, NOW)
    assert verify(token, pki, replay).chain == (pki.leaf, pki.issuing, pki.root)


def test_empty_body(pki: PKI, replay: MemoryReplay) -> None:
    token = sign_request(pki.leaf_key, [pki.leaf], "GET", "/v1/me", b"", NOW)
    assert verify(token, pki, replay, method="GET", path="/v1/me", body=b"").certificate == pki.leaf


def test_within_leeway(pki: PKI, replay: MemoryReplay) -> None:
    # Expired 20 s ago, and issued 20 s "in the future": both within the 30 s leeway.
    later = sign_request(
        pki.leaf_key, [pki.leaf], METHOD, PATH, BODY, NOW + datetime.timedelta(seconds=20)
    )
    assert verify(later, pki, replay).certificate == pki.leaf
    old = good_token(pki, NOW - datetime.timedelta(seconds=140))
    assert verify(old, pki, replay).certificate == pki.leaf


def test_expected_aud_overrides_method_and_path(pki: PKI, replay: MemoryReplay) -> None:
    token = sign_request(pki.leaf_key, [pki.leaf], "POST", "/token", BODY, NOW)
    req = verify(token, pki, replay, method="GET", path="/other", expected_aud="POST /token")
    assert req.claims["aud"] == "POST /token"


@pytest.mark.parametrize(
    ("make_key", "alg"),
    [
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
    ],
)
def test_ed25519_and_p384_leaves(
    pki: PKI, replay: MemoryReplay, make_key: Callable[[], Key], alg: str
) -> None:
    key = make_key()
    leaf = pki.issue(key)
    token = sign_request(key, [leaf], METHOD, PATH, BODY, NOW)
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert verify(token, pki, replay).certificate == leaf


# --- replay and binding -----------------------------------------------------------------


def test_replay_refused(pki: PKI, replay: MemoryReplay) -> None:
    token = good_token(pki)
    verify(token, pki, replay)
    with pytest.raises(Replayed, match="already used"):
        verify(token, pki, replay)
    # Replayed is an Unauthenticated: the HTTP layer answers 401 either way.
    with pytest.raises(Unauthenticated):
        verify(token, pki, replay)


def test_replay_with_another_token_same_jti(pki: PKI, replay: MemoryReplay) -> None:
    first = encode(claims(jti="same-jti-123"), pki.leaf_key, "ES256", header(pki.leaf))
    verify(first, pki, replay)
    second = encode(
        claims(jti="same-jti-123", exp=int(NOW.timestamp()) + 60),
        pki.leaf_key,
        "ES256",
        header(pki.leaf),
    )
    with pytest.raises(Replayed):
        verify(second, pki, replay)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", PATH),
        ("PUT", PATH),
        (METHOD, "/v1/applications/43/approve"),
        (METHOD, PATH + "?x=1"),
    ],
)
def test_wrong_method_or_path(pki: PKI, replay: MemoryReplay, method: str, path: str) -> None:
    assert_refused(good_token(pki), pki, replay, "(?i)audience", method=method, path=path)


def test_missing_aud(pki: PKI, replay: MemoryReplay) -> None:
    token = encode(claims(aud=None), pki.leaf_key, "ES256", header(pki.leaf))
    assert_refused(token, pki, replay, "aud")


@pytest.mark.parametrize("body", [b"", BODY + b" ", BODY.replace(b"approve", b"reject")])
def test_body_tampered(pki: PKI, replay: MemoryReplay, body: bytes) -> None:
    assert_refused(good_token(pki), pki, replay, "bsh", body=body)


def test_body_hash_with_a_non_ascii_character(pki: PKI, replay: MemoryReplay) -> None:
    """A signer's bsh may hold any text: refused as a mismatch (401), not a TypeError
    from hmac.compare_digest (500)."""
    token = encode(claims(bsh="\u00e9" * 43), pki.leaf_key, "ES256", header(pki.leaf))
    assert_refused(token, pki, replay, "bsh")


def test_refused_request_does_not_burn_its_jti(pki: PKI, replay: MemoryReplay) -> None:
    token = good_token(pki)
    assert_refused(token, pki, replay, "bsh", body=b"tampered")
    assert verify(token, pki, replay).certificate == pki.leaf


# --- time -------------------------------------------------------------------------------


def test_expired(pki: PKI, replay: MemoryReplay) -> None:
    token = good_token(pki)
    # exp is NOW + 120 s; with the 30 s leeway it is dead at NOW + 150 s.
    assert_refused(token, pki, replay, "expired", now=NOW + datetime.timedelta(seconds=151))
    assert_refused(token, pki, replay, "expired", now=NOW + datetime.timedelta(minutes=10))


@pytest.mark.parametrize("offset", [180, 600])
def test_a_client_clock_off_by_minutes_is_told_so(
    pki: PKI, replay: MemoryReplay, offset: int
) -> None:
    ahead = NOW + datetime.timedelta(seconds=offset)
    token = good_token(pki, ahead)
    with pytest.raises(Unauthenticated) as err:
        verify(token, pki, replay)
    assert err.value.detail == (
        f"signed request issued in the future (iat {ahead:%Y-%m-%dT%H:%M:%SZ}, server time "
        "2031-05-17T08:30:00Z): is the client's clock right? (leeway 30 s)"
    )
    behind = NOW - datetime.timedelta(seconds=offset)
    with pytest.raises(Unauthenticated) as err:
        verify(good_token(pki, behind), pki, replay)
    exp = behind + datetime.timedelta(minutes=2)
    assert err.value.detail == (
        f"signed request expired (exp {exp:%Y-%m-%dT%H:%M:%SZ}, server time "
        "2031-05-17T08:30:00Z): is the client's clock right? (leeway 30 s)"
    )
    assert replay.seen == set()


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_a_time_no_datetime_holds_is_refused_in_words(
    pki: PKI, replay: MemoryReplay, claim: str
) -> None:
    for far in (1e300, 10**300, 253402300800):  # the last one: 10000-01-01T00:00:00Z
        payload = claims(**{claim: far}) if claim == "nbf" else claims(iat=far, exp=far + 60)
        token = encode(payload, pki.leaf_key, "ES256", header(pki.leaf))
        assert_refused(token, pki, replay, "before the year 10000")


def test_expired_with_zero_leeway(pki: PKI, replay: MemoryReplay) -> None:
    token = good_token(pki)
    late = NOW + datetime.timedelta(seconds=121)
    assert_refused(token, pki, replay, "expired", now=late, leeway=datetime.timedelta(0))


def test_lifetime_over_five_minutes(pki: PKI, replay: MemoryReplay) -> None:
    iat = int(NOW.timestamp())
    token = encode(claims(exp=iat + 301), pki.leaf_key, "ES256", header(pki.leaf))
    assert_refused(token, pki, replay, "longer than 5 minutes")
    # sign_request itself does not stop a caller asking for more; the verifier does.
    long = sign_request(
        pki.leaf_key, [pki.leaf], METHOD, PATH, BODY, NOW, lifetime=datetime.timedelta(hours=1)
    )
    assert_refused(long, pki, replay, "longer than 5 minutes")


def test_lifetime_of_exactly_five_minutes_is_allowed(pki: PKI, replay: MemoryReplay) -> None:
    assert datetime.timedelta(minutes=5) == MAX_LIFETIME
    iat = int(NOW.timestamp())
    token = encode(claims(exp=iat + 300), pki.leaf_key, "ES256", header(pki.leaf))
    assert verify(token, pki, replay).certificate == pki.leaf


def test_iat_in_the_future(pki: PKI, replay: MemoryReplay) -> None:
    token = good_token(pki, NOW + datetime.timedelta(minutes=2))
    assert_refused(token, pki, replay, "future")


def test_nbf_in_the_future(pki: PKI, replay: MemoryReplay) -> None:
    nbf = int(NOW.timestamp()) + 90
    token = encode(claims(nbf=nbf), pki.leaf_key, "ES256", header(pki.leaf))
    assert_refused(token, pki, replay, "nbf")


@pytest.mark.parametrize(
    "overrides",
    [
        {"iat": "now"},
        {"exp": "later"},
        {"exp": [1]},
        {"iat": None},
        {"exp": None},
        # more digits than a float holds: math.isfinite raised OverflowError (a 500)
        {"exp": 10**400},
        {"iat": 10**400, "exp": 10**400 + 60},
        {"nbf": -(10**400)},
    ],
)
def test_bad_time_claims(pki: PKI, replay: MemoryReplay, overrides: dict[str, Any]) -> None:
    token = encode(claims(**overrides), pki.leaf_key, "ES256", header(pki.leaf))
    assert_refused(token, pki, replay, "iat|exp")


def test_nan_exp_refused(pki: PKI, replay: MemoryReplay) -> None:
    # Python's json reads NaN; it compares false to everything, so it must not slip through.
    payload = claims()
    raw = json.dumps(payload).replace(str(payload["exp"]), "NaN").encode()
    h = {"alg": "ES256", **header(pki.leaf)}

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(pki.leaf_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    signing_input = f"{b64json(h)}.{b64url(raw)}"
    token = f"{signing_input}.{b64url(sign(signing_input.encode()))}"
    assert_refused(token, pki, replay, "exp")


# --- algorithm and key attacks ----------------------------------------------------------


def test_alg_none_with_valid_x5c(pki: PKI, replay: MemoryReplay) -> None:
    for alg in ("none", "None", "NONE"):
        token = sign_raw({"alg": alg, **header(pki.leaf, pki.issuing)}, claims(), lambda _: b"")
        assert token.endswith(".")
        assert_refused(token, pki, replay, "rejected")


def test_hs256_with_leaf_public_key_as_secret(pki: PKI, replay: MemoryReplay) -> None:
    pem = pki.leaf.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = pki.leaf.public_bytes(serialization.Encoding.DER)
    for secret in (pem, der):
        token = sign_raw(
            {"alg": "HS256", **header(pki.leaf)},
            claims(),
            lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest(),  # type: ignore[misc]
        )
        assert_refused(token, pki, replay, "rejected")


def test_signed_by_another_key_than_the_leaf(pki: PKI, replay: MemoryReplay) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = encode(claims(), attacker, "ES256", header(pki.leaf, pki.issuing))
    assert_refused(token, pki, replay, "Signature verification failed")


def test_signed_by_issuing_ca_key_with_leaf_x5c(pki: PKI, replay: MemoryReplay) -> None:
    token = encode(claims(), pki.issuing_key, "ES256", header(pki.leaf))
    assert_refused(token, pki, replay, "Signature verification failed")


def test_es256_claimed_for_p384_leaf(pki: PKI, replay: MemoryReplay) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    leaf = pki.issue(key)

    def es256_with_p384(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(48, "big") + s.to_bytes(48, "big")

    token = sign_raw({"alg": "ES256", **header(leaf)}, claims(), es256_with_p384)
    assert_refused(token, pki, replay, "rejected")


def test_es384_claimed_for_p256_leaf(pki: PKI, replay: MemoryReplay) -> None:
    def es384_with_p256(data: bytes) -> bytes:
        sig = pki.leaf_key.sign(data, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(sig)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    token = sign_raw({"alg": "ES384", **header(pki.leaf)}, claims(), es384_with_p256)
    assert_refused(token, pki, replay, "rejected")


def test_eddsa_claimed_for_p256_leaf(pki: PKI, replay: MemoryReplay) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    token = sign_raw({"alg": "EdDSA", **header(pki.leaf)}, claims(), ed.sign)
    assert_refused(token, pki, replay, "rejected")


def test_key_headers_are_ignored(pki: PKI, replay: MemoryReplay) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    extra = {
        "jku": "https://attacker.example/jwks.json",
        "jwk": attacker_jwk,
        "x5u": "https://attacker.example/chain.pem",
        "kid": "attacker",
    }
    # Signed with the real leaf key: still verifies, the extra headers change nothing.
    token = encode(claims(), pki.leaf_key, "ES256", header(pki.leaf, **extra))
    assert verify(token, pki, replay).certificate == pki.leaf
    # Signed with the attacker's key, announced by jwk, beside the victim's x5c: refused.
    forged = encode(claims(jti="forged-jti-1"), attacker, "ES256", header(pki.leaf, **extra))
    with pytest.raises(Unauthenticated, match="Signature verification failed"):
        verify(forged, pki, replay)


def test_tampered_payload_breaks_signature(pki: PKI, replay: MemoryReplay) -> None:
    h, _, sig = good_token(pki).split(".")
    forged = f"{h}.{b64json(claims(aud=audience('POST', '/v1/ca/revoke')))}.{sig}"
    assert_refused(forged, pki, replay, "Signature verification failed", path="/v1/ca/revoke")


# --- certificate attacks ----------------------------------------------------------------


def test_leaf_from_foreign_root(
    pki: PKI, replay: MemoryReplay, foreign: tuple[x509.Certificate, x509.Certificate, Key]
) -> None:
    root, issuing, issuing_key = foreign
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_leaf(key, (issuing, issuing_key))
    # Even with the foreign chain (root included) in x5c.
    token = sign_request(key, [leaf, issuing, root], METHOD, PATH, BODY, NOW)
    assert_refused(token, pki, replay, "not trusted")


def test_self_signed_leaf(pki: PKI, replay: MemoryReplay) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_leaf(key, None)
    token = sign_request(key, [leaf], METHOD, PATH, BODY, NOW)
    assert_refused(token, pki, replay, "not trusted")


def test_ca_certificate_as_leaf(pki: PKI, replay: MemoryReplay) -> None:
    # The issuing CA's own key and certificate are not a client credential.
    token = sign_request(pki.issuing_key, [pki.issuing], METHOD, PATH, BODY, NOW)
    assert_refused(token, pki, replay, "not trusted")
    # In the verifier's words, without the Python repr of the certificate they ended with
    # ("... EE certificate (encountered processing <Certificate(subject=<Name(CN=...)>, ...)>)")
    with pytest.raises(Unauthenticated) as err:
        verify(token, pki, replay)
    assert err.value.detail == (
        "certificate is not trusted: validation failed: basicConstraints.cA must not be "
        "asserted in an EE certificate"
    )


def test_expired_leaf_certificate(pki: PKI, replay: MemoryReplay) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.issue(key, not_after=NOW + DAY)
    later = NOW + 2 * DAY
    # Fresh token, valid in every claim; only the certificate is out of date.
    token = sign_request(key, [leaf], METHOD, PATH, BODY, later)
    assert_refused(token, pki, replay, "not trusted", now=later)
    # Said in the holder's words: when it expired, the server's time, what to do.
    with pytest.raises(Unauthenticated) as err:
        verify(token, pki, replay, now=later)
    assert err.value.detail == (
        f"certificate is not trusted: it expired at {NOW + DAY:%Y-%m-%dT%H:%M:%SZ} "
        f"(server time {later:%Y-%m-%dT%H:%M:%SZ}); an expired certificate signs nothing, "
        "and cannot be renewed: its holder enrolls again with a new code (an RA officer's "
        "eport ra new-code APP_ID; for an operator, the enterprise's eport operator add)"
    )
    # The same certificate works while it is valid.
    assert (
        verify(sign_request(key, [leaf], METHOD, PATH, BODY, NOW), pki, replay).certificate == leaf
    )


def test_not_yet_valid_leaf_certificate(pki: PKI, replay: MemoryReplay) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.issue(key, not_before=NOW + DAY)
    token = sign_request(key, [leaf], METHOD, PATH, BODY, NOW)
    assert_refused(token, pki, replay, "not trusted")
    with pytest.raises(Unauthenticated, match=r"not valid before 2031-05-18T08:30:00Z \(server"):
        verify(token, pki, replay)


def test_expired_foreign_leaf_is_not_called_expired(
    pki: PKI, replay: MemoryReplay, foreign: tuple[x509.Certificate, x509.Certificate, Key]
) -> None:
    # Only a certificate one of our issuing CAs signed is refused as "expired": any other
    # keeps the verifier's words (it would not be trusted at any time).
    _, issuing, issuing_key = foreign
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_leaf(key, (issuing, issuing_key), not_after=NOW - DAY)
    token = sign_request(key, [leaf, issuing], METHOD, PATH, BODY, NOW)
    with pytest.raises(Unauthenticated) as err:
        verify(token, pki, replay)
    assert "not trusted" in err.value.detail and "expired at" not in err.value.detail


@pytest.mark.parametrize(
    "eku",
    [
        [ExtendedKeyUsageOID.SERVER_AUTH],
        [ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION],
        [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE],
        None,
    ],
    ids=["serverAuth", "codeSigning+email", "anyExtendedKeyUsage", "no-EKU-extension"],
)
def test_leaf_without_client_auth(
    pki: PKI, replay: MemoryReplay, eku: list[x509.ObjectIdentifier] | None
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.issue(key, eku=eku)
    token = sign_request(key, [leaf], METHOD, PATH, BODY, NOW)
    assert_refused(token, pki, replay, "not trusted")


def test_client_and_server_auth_leaf_verifies(pki: PKI, replay: MemoryReplay) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.issue(key, eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    token = sign_request(key, [leaf], METHOD, PATH, BODY, NOW)
    assert verify(token, pki, replay).certificate == leaf


# --- malformed headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "x5c",
    [
        None,
        [],
        "MIIB...",
        {"0": "MIIB"},
        [123],
        ["!!! not base64 !!!"],
        ["TUlJQg="],
        [base64.b64encode(b"not a certificate").decode()],
    ],
    ids=["missing", "empty", "string", "object", "number", "not-base64", "bad-padding", "not-der"],
)
def test_bad_x5c(pki: PKI, replay: MemoryReplay, x5c: Any) -> None:
    h: dict[str, Any] = {"typ": TYP}
    if x5c is not None:
        h["x5c"] = x5c
    token = encode(claims(), pki.leaf_key, "ES256", h)
    assert_refused(token, pki, replay, "x5c")


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("!!! not base64 !!!", "x5c[1] is not base64"),
        (base64.b64encode(b"not a certificate").decode(), "x5c[1] is not a DER X.509"),
    ],
)
def test_an_unreadable_x5c_is_said_in_the_headers_terms(
    pki: PKI, replay: MemoryReplay, item: str, words: str
) -> None:
    """The detail quoted the parsers ("Only base64 data is allowed", "ParseError { kind:
    ShortData … }"); now it names the entry and what it is not."""
    h = header(pki.leaf)
    h["x5c"].append(item)
    token = encode(claims(), pki.leaf_key, "ES256", h)
    with pytest.raises(Unauthenticated) as e:
        verify(token, pki, replay)
    assert words in e.value.detail, e.value.detail
    assert "ParseError" not in e.value.detail and "Only base64" not in e.value.detail


@pytest.mark.parametrize(
    ("token", "words"),
    [("a.b.c", "its header is not base64url"), ("e1.e30.AA", "its header is not a JSON object")],
)
def test_a_malformed_header_is_said_in_the_jws_terms(token: str, words: str) -> None:
    """The base64 and JSON parsers' own messages went out ("number of data characters
    (1) cannot be 1 more than a multiple of 4", "Expecting property name …")."""
    with pytest.raises(Unauthenticated) as e:
        unverified_header(token)
    assert e.value.detail == f"malformed signed request: {words} (RFC 7515 §" + (
        "2)" if "base64" in words else "4)"
    )


def test_a_header_nested_past_the_parsers_stack_is_refused() -> None:
    """``[[[…`` nested deeper than the JSON parser's stack raised RecursionError out of
    the header's parse: a 500 wherever a token or a signed request is read, with no
    credential needed. Now the header is "not a JSON object"."""
    segment = base64.urlsafe_b64encode(b"[" * 100_000).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated, match="its header is not a JSON object"):
        unverified_header(segment + ".e30.AA")


def test_x5c_too_long(pki: PKI, replay: MemoryReplay) -> None:
    token = encode(claims(), pki.leaf_key, "ES256", header(*[pki.leaf] * 5))
    assert_refused(token, pki, replay, "too long")


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "EPORT-REQ+JWT"])
def test_wrong_typ(pki: PKI, replay: MemoryReplay, typ: str | None) -> None:
    h = header(pki.leaf)
    h["typ"] = typ
    if typ is None:
        del h["typ"]
    token = encode(claims(), pki.leaf_key, "ES256", h)
    assert_refused(token, pki, replay, "typ")


@pytest.mark.parametrize("missing", ["jti", "bsh", "iat", "exp"])
def test_missing_claim(pki: PKI, replay: MemoryReplay, missing: str) -> None:
    token = encode(claims(**{missing: None}), pki.leaf_key, "ES256", header(pki.leaf))
    assert_refused(token, pki, replay, missing)


@pytest.mark.parametrize("jti", ["short", "x" * 129, 12345678])
def test_bad_jti(pki: PKI, replay: MemoryReplay, jti: Any) -> None:
    token = encode(claims(jti=jti), pki.leaf_key, "ES256", header(pki.leaf))
    assert_refused(token, pki, replay, "(?i)jti|JWT ID")


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "..", "e30.e30.", "%%%.%%%.%%%"])
def test_malformed_token(pki: PKI, replay: MemoryReplay, token: str) -> None:
    assert_refused(token, pki, replay, "malformed|typ")


# --- the Authorization header -----------------------------------------------------------


def test_parse_authorization_returns_token() -> None:
    assert parse_authorization(f"{SCHEME} abc.def.ghi") == "abc.def.ghi"
    assert parse_authorization(f"{SCHEME}  abc.def.ghi ") == "abc.def.ghi"


@pytest.mark.parametrize("value", [None, ""])
def test_parse_authorization_missing(value: str | None) -> None:
    with pytest.raises(Unauthenticated, match="needs a signed request"):
        parse_authorization(value)


@pytest.mark.parametrize(
    "value",
    [
        "Bearer abc.def.ghi",
        "Basic dXNlcjpwYXNz",
        SCHEME,
        f"{SCHEME} ",
        f"{SCHEME}   ",
        "abc.def.ghi",
    ],
)
def test_parse_authorization_wrong_scheme(value: str) -> None:
    with pytest.raises(Unauthenticated, match=f"expected the {SCHEME} authorization scheme"):
        parse_authorization(value)


def test_end_to_end_through_the_header(pki: PKI, replay: MemoryReplay) -> None:
    authorization = f"{SCHEME} {good_token(pki)}"
    req = verify(parse_authorization(authorization), pki, replay)
    assert req.certificate == pki.leaf


def test_a_validated_chain_is_reused_only_within_validity(pki: PKI) -> None:
    """TrustAnchors remembers a validated chain per leaf, never outside the validity of
    every certificate in it, and never for another certificate or another trust set."""
    trust = TrustAnchors(roots=(pki.root,), intermediates=(pki.issuing,))
    chain = trust.verify_chain(pki.leaf, NOW)
    assert chain == [pki.leaf, pki.issuing, pki.root]
    assert trust.verify_chain(pki.leaf, NOW + DAY) == chain  # from the cache
    for when in (NOW + 336 * DAY, NOW - 31 * DAY):  # after / before the leaf's validity
        with pytest.raises(Unauthenticated, match="not trusted"):
            trust.verify_chain(pki.leaf, when)
    # Same names and key, another certificate (no clientAuth): validated on its own.
    twin = make_leaf(
        pki.leaf_key, (pki.issuing, pki.issuing_key), eku=(ExtendedKeyUsageOID.SERVER_AUTH,)
    )
    with pytest.raises(Unauthenticated, match="not trusted"):
        trust.verify_chain(twin, NOW)
    # A trust set without that issuing CA starts from nothing.
    with pytest.raises(Unauthenticated, match="not trusted"):
        TrustAnchors(roots=(pki.root,), intermediates=()).verify_chain(pki.leaf, NOW)


def test_expired_chains_leave_the_cache(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain is reused for CHAIN_CACHE_SECONDS: past that it is dropped with the next
    insertion (and the certificates it holds freed), not kept until 4,096 leaves have
    signed in (soak probe: a worker stayed about 90 MB larger for good)."""
    import ca.signedreq as signedreq

    clock = [1000.0]
    monkeypatch.setattr(signedreq.time, "monotonic", lambda: clock[0])
    trust = TrustAnchors(roots=(pki.root,), intermediates=(pki.issuing,))
    leaves = [
        make_leaf(ec.generate_private_key(ec.SECP256R1()), (pki.issuing, pki.issuing_key))
        for _ in range(3)
    ]
    for leaf in leaves[:2]:
        trust.verify_chain(leaf, NOW)
    assert len(trust._verified) == 2
    clock[0] += signedreq.CHAIN_CACHE_SECONDS + 1
    trust.verify_chain(leaves[2], NOW)
    assert list(trust._verified) == [leaves[2]]


def test_a_certificate_issued_a_few_seconds_ahead_is_taken(pki: PKI) -> None:
    """A host whose clock is a little behind the issuing host's refused a new certificate
    for its first seconds ("not valid before"), though it grants iat that leeway (time
    probe, finding 10): a notBefore up to 30 s ahead is judged at the notBefore."""
    trust = TrustAnchors(roots=(pki.root,), intermediates=(pki.issuing,))
    seconds = datetime.timedelta(seconds=1)
    fresh = pki.issue(ec.generate_private_key(ec.SECP256R1()), not_before=NOW + 20 * seconds)
    assert trust.verify_chain(fresh, NOW)[0] == fresh
    later = pki.issue(ec.generate_private_key(ec.SECP256R1()), not_before=NOW + 31 * seconds)
    with pytest.raises(Unauthenticated, match="not valid before"):
        trust.verify_chain(later, NOW)


def test_a_member_named_twice_is_refused_in_the_header_or_the_claims(
    pki: PKI, replay: MemoryReplay
) -> None:
    """A validly signed request naming ``aud`` twice was taken with the last value (PyJWT's
    reading), where a log or a proxy reading the first sees another audience. Refused in
    the claims and in the header (RFC 7515 §4), before the jti is spent."""
    es256 = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256)
    head = json.dumps(header(pki.leaf, pki.issuing, alg="ES256"), separators=(",", ":"))
    body = json.dumps(claims(), separators=(",", ":"))

    def signed(header_text: str, claims_text: str) -> str:
        signing_input = f"{b64url(header_text.encode())}.{b64url(claims_text.encode())}"
        signature = es256.sign(signing_input.encode(), pki.leaf_key)
        return f"{signing_input}.{b64url(signature)}"

    twice = '{"aud":"POST /elsewhere",' + body[1:]
    assert verify(signed(head, body), pki, replay)  # the control: it verifies
    replay.seen.clear()
    assert_refused(signed(head, twice), pki, replay, "member 'aud' appears twice")
    typ_twice = '{"typ":"JWT",' + head[1:]
    assert_refused(signed(typ_twice, body), pki, replay, "member 'typ' appears twice")
