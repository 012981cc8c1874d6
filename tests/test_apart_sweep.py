"""The token service alone (``eport serve --only auth``, status by OCSP) sweeps its sessions
by the issuing CAs' CRLs (RFC 5280 §6.3), not by one OCSP request per certificate; it
follows the CA's public files as they are copied, in whatever order; a half-copied file
is one line in its log, not a traceback a second.

The integration test runs the CA and the token service apart, a relay between the token
service and the CA's status endpoints counting the OCSP and CRL requests; the unit tests
drive :mod:`ca.crl`'s verifier, :class:`ca.ocsp_client.IssuingCRLs`,
:class:`ca.generation.GenerationWatch` and :class:`authsvc.trust.LiveTrust` directly."""

from __future__ import annotations

import base64
import datetime
import logging
import secrets
import shutil
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authsvc.principal import x5t_s256
from ca.crl import RevokedEntry, UnusableCRL, build_crl, verify_crl
from ca.errors import Unauthenticated
from ca.ocsp_client import IssuingCRLs, OCSPStatusSource, StatusUnavailable
from ca.signer import SoftwareSigner
from tests.conftest import Server, base_env, free_port, stop
from tests.helpers import Relay, add_operators_with_keys, jrun
from tests.test_apart import AUTH_PASSPHRASE, copy_public_files, serve_ca_alone
from tests.test_apart import serve_auth as serve_apart

WORKERS = 2
SESSIONS = 24
IDLE = 8.0
"""Seconds the token service is left idle while the relay counts (four sweeps of 2 s)."""


def serve_auth(data: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return serve_apart(data, port, env, log, workers=WORKERS)


def operators(srv: Server, status_base: str, n: int) -> list[tuple[x509.Certificate, Any]]:
    """``n`` operator certificates and their keys, made by the running CA's joint CA in
    this process (:func:`tests.helpers.add_operators_with_keys`), naming
    ``status_base`` as their OCSP responder and CRL distribution point."""
    from sqlalchemy.orm import sessionmaker

    from ca import hierarchy, translog
    from ca.app import build_authority, ca_passphrase
    from ca.config import CAConfig
    from ca.db import make_engine
    from ca.policy import load_policies
    from ca.store import SqlStore

    overrides = {
        "data_dir": srv.data_dir,
        "dev": True,
        "database_url": srv.database_url,
        "public_base_url": srv.url,
        "status_base_url": status_base,
    }
    cfg = CAConfig.load(overrides, environ={})
    h = hierarchy.load(cfg.data_dir, ca_passphrase(cfg))
    engine = make_engine(cfg.sqlalchemy_url)
    store = SqlStore(
        sessionmaker(engine, expire_on_commit=False), event_sinks=(translog.append_event,)
    )
    ca = build_authority(cfg, load_policies(cfg.policies_dir), h, store)
    try:
        return add_operators_with_keys(ca, "91350200MA2XYZ0001", "Sweep Trading Co.", n)
    finally:
        engine.dispose()


def login(url: str, cert: x509.Certificate, key: Any) -> requests.Response:
    """An RFC 7523 assertion login, as ``eport login`` makes it."""
    from ca.keys import KeyType

    now = int(time.time())
    claims = {"sub": x5t_s256(cert), "iss": x5t_s256(cert), "aud": url + "/auth/token"}
    claims |= {"iat": now, "exp": now + 60, "jti": secrets.token_urlsafe(12)}
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    alg = KeyType.of(key).jws_alg
    assertion = jwt.encode(claims, key, algorithm=alg, headers={"x5c": x5c})
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    return requests.post(
        url + "/auth/token", data={"grant_type": grant, "assertion": assertion}, timeout=30
    )


def open_serials(auth_data: Path) -> Counter[str]:
    """Open sessions by certificate serial, from the token service's database."""
    with sqlite3.connect(auth_data / "auth.db") as db:
        rows = db.execute("SELECT cert_serial FROM auth_sessions WHERE ended_at IS NULL")
        return Counter(r[0] for r in rows)


def hexserial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


@dataclass
class Apart:
    """The CA (``--only ca``, its status URLs naming the relay) and the token service
    alone (``--only auth``, OCSP, WORKERS workers), started without the agency issuing
    CA's certificate among the files copied to it."""

    relay: Relay
    ca: Server
    auth_url: str
    auth_data: Path
    ca_files: Path
    log: Path


@pytest.fixture(scope="module")
def apart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apart]:
    tmp = tmp_path_factory.mktemp("apart-sweep")
    ca_port = free_port()
    relay = Relay(f"http://127.0.0.1:{ca_port}")
    ca_data, auth_data = tmp / "ca-data", tmp / "auth-data"
    ca_srv, ca_proc = serve_ca_alone(ca_data, ca_port, EPORT_STATUS_BASE_URL=relay.url)
    auth_proc = None
    try:
        copy_public_files(ca_data, auth_data)
        (auth_data / "ca" / "issuers" / "agency.crt").unlink()
        auth_port = free_port()
        auth_url = f"http://127.0.0.1:{auth_port}"
        env = base_env() | {
            "EPORT_PUBLIC_BASE_URL": auth_url,
            "EPORT_AUTH_STATUS_MODE": "ocsp",
            "EPORT_AUTH_KEY_PASSPHRASE": AUTH_PASSPHRASE,
        }
        log = tmp / "auth.log"
        auth_proc = serve_auth(auth_data, auth_port, env, log)
        yield Apart(relay, ca_srv, auth_url, auth_data, ca_data / "ca", log)
    finally:
        relay.close()
        if auth_proc is not None:
            stop(auth_proc)
        stop(ca_proc)


def lines_with(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if text in line]


@pytest.mark.slow
def test_idle_sweeps_read_crls_not_one_ocsp_request_per_session(apart: Apart) -> None:
    """With SESSIONS sessions of as many certificates in WORKERS workers, idle sweeps ask
    no OCSP at all and one CRL per issuing CA per sweep per worker (before: one OCSP
    request per certificate per sweep per worker); a revoked and a held certificate's
    sessions still end by the sweep, nobody asking; while the CRL cannot be had nothing
    is ended for lack of it and the log says so in one line per worker."""
    relay, ca_srv, auth_data = apart.relay, apart.ca, apart.auth_data
    certs = operators(ca_srv, relay.url, SESSIONS)
    before = sum(open_serials(auth_data).values())
    for cert, key in certs:
        r = login(apart.auth_url, cert, key)
        assert r.status_code == 200, r.text
    assert sum(open_serials(auth_data).values()) == before + SESSIONS
    time.sleep(2.5)  # the logins' status checks are behind us
    relay.taken()
    time.sleep(IDLE)
    idle = relay.taken()
    print(f"\n{SESSIONS} sessions, {WORKERS} workers, {IDLE:g} s idle: {dict(idle)}")
    assert idle["ocsp"] == 0, idle  # nothing asked per session
    sweeps = WORKERS * (IDLE / 2 + 1)
    assert 0 < idle["crl"] <= sweeps, idle  # one issuing CA: at most one CRL per sweep

    # A revoked and a held certificate: their sessions end by the sweep alone
    revoked, held = hexserial(certs[0][0]), hexserial(certs[1][0])
    jrun(ca_srv, "revoke", "--serial", revoked, "--reason", "keyCompromise", *ca_srv.officer())
    jrun(ca_srv, "suspend", "--serial", held, *ca_srv.officer())
    t0 = time.monotonic()
    while {revoked, held} & set(open_serials(auth_data)):
        assert time.monotonic() < t0 + 30, open_serials(auth_data)
        time.sleep(0.1)
    print(f"revoked and held sessions ended by the sweep {time.monotonic() - t0:.1f} s later")
    assert sum(open_serials(auth_data).values()) == before + SESSIONS - 2
    asked = relay.taken()
    # each worker confirms each suspect by one fresh OCSP request before ending it
    assert asked["ocsp"] <= 2 * WORKERS, asked

    # The CRL cannot be had: nothing is ended for lack of it, and the log says so once
    # per worker (not a line, nor a traceback, a sweep)
    relay.crl_down = True
    unseen = hexserial(certs[2][0])
    jrun(ca_srv, "revoke", "--serial", unseen, "--reason", "keyCompromise", *ca_srv.officer())
    time.sleep(IDLE)
    t0 = time.monotonic()
    while not lines_with(apart.log, "session sweep: the CRL at"):  # a busy machine
        assert time.monotonic() < t0 + 30, apart.log.read_text()[-2000:]
        time.sleep(0.2)
    assert unseen in open_serials(auth_data)
    assert relay.taken()["ocsp"] == 0
    down = lines_with(apart.log, "session sweep: the CRL at")
    assert 1 <= len(down) <= WORKERS and "HTTP 502" in down[0], down
    relay.crl_down = False
    t0 = time.monotonic()
    while unseen in open_serials(auth_data):
        assert time.monotonic() < t0 + 30
        time.sleep(0.2)
    assert sum(open_serials(auth_data).values()) == before + SESSIONS - 3
    assert "Traceback" not in apart.log.read_text()


@pytest.mark.slow
def test_public_files_copied_in_any_order_are_taken_up(apart: Apart) -> None:
    """The token service was started without the agency issuing CA's certificate: an
    auditor's login is refused saying what to copy. The CA's ``generation`` is copied
    first (a reload without it), then ``issuers/agency.crt``: the login works a second
    later (before, never: nothing reloaded again). A root CRL copied by halves is one
    line per worker in the log, the trust loaded before kept, until it is whole."""
    auditor = apart.ca_files.parent / "dev" / "auditors" / "tax"
    cert = x509.load_pem_x509_certificate((auditor / "auditor.pem").read_bytes())
    secret = (auditor / "DEV-ONLY-passphrase.txt").read_text().strip().encode()
    key = serialization.load_pem_private_key((auditor / "auditor.key").read_bytes(), secret)
    r = login(apart.auth_url, cert, key)
    assert r.status_code in (400, 401), r.text
    assert "copy the CA's issuers/*.crt" in r.text, r.text
    dst = apart.auth_data / "ca"
    (dst / "generation").write_text("after-a-rollover\n")
    time.sleep(2.5)  # every worker reloads (its sweeper polls every 2 s)
    assert "copy the CA's issuers/*.crt" in login(apart.auth_url, cert, key).text
    shutil.copy2(apart.ca_files / "issuers" / "agency.crt", dst / "issuers" / "agency.crt")
    t0 = time.monotonic()
    streak = 0  # every worker has taken it up (each polls on its own): several in a row
    while streak < 8:
        r = login(apart.auth_url, cert, key)
        streak = streak + 1 if r.status_code == 200 else 0
        assert time.monotonic() < t0 + 30, r.text  # a second or two, more on a busy machine
        time.sleep(0.2)
    whole = (dst / "root.crl").read_bytes()
    (dst / "root.crl").write_bytes(whole[: len(whole) // 2])
    t0 = time.monotonic()
    while not (half := lines_with(apart.log, "reloading the CA hierarchy")):
        assert time.monotonic() < t0 + 20, apart.log.read_text()[-2000:]
        time.sleep(0.2)
    time.sleep(4.5)  # four and more reloads tried in each worker: still one line each
    r = login(apart.auth_url, cert, key)
    assert r.status_code == 200, r.text  # on the trust it had
    half = lines_with(apart.log, "reloading the CA hierarchy")
    assert 1 <= len(half) <= WORKERS and "ValueError" in half[0], half
    (dst / "root.crl").write_bytes(whole)
    t0 = time.monotonic()
    while len(lines_with(apart.log, "reloaded after all")) < len(half):
        assert time.monotonic() < t0 + 20, apart.log.read_text()[-2000:]
        time.sleep(0.2)
    assert login(apart.auth_url, cert, key).status_code == 200
    assert "Traceback" not in apart.log.read_text()


# -- unit tests --------------------------------------------------------------------------

NOW = datetime.datetime(2026, 11, 26, 8, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)
CRL_URL = "http://ca.internal/crl/enterprise.crl"


def issuing_ca(
    name: str = "Test Issuing CA",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 24 * HOUR)
        .not_valid_after(NOW + 24 * HOUR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def leaf(
    issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, serial: int, url: str | None
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"leaf {serial}")]))
        .issuer_name(issuer.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(serial)
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
    )
    if url is not None:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), False)
    return builder.sign(key, hashes.SHA256())


def crl_of(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    revoked: dict[int, Any],
    *,
    number: int = 1,
    this_update: datetime.datetime = NOW - HOUR,
    next_update: datetime.datetime = NOW + 47 * HOUR,
    delta_base: int | None = None,
) -> bytes:
    """A CRL as the CA makes it (:func:`ca.crl.build_crl`): serial → reason (None)."""
    entries = [RevokedEntry(serial=n, revoked_at=this_update, reason=r) for n, r in revoked.items()]
    signer = SoftwareSigner(key)
    return build_crl(
        issuer, signer, entries, number, this_update, next_update, delta_base=delta_base
    )


def test_a_crl_is_used_only_complete_current_and_signed_by_its_issuer() -> None:
    from ca.crl import ReasonCode

    ca, key = issuing_ca()
    good = crl_of(ca, key, {7: ReasonCode.KEY_COMPROMISE, 8: ReasonCode.CERTIFICATE_HOLD, 9: None})
    assert verify_crl(good, ca, NOW).listed == {7, 8, 9}  # revoked, on hold, no reason
    pem = x509.load_der_x509_crl(good).public_bytes(serialization.Encoding.PEM)
    assert verify_crl(pem, ca, NOW).number == 1
    other, other_key = issuing_ca()  # the same name, another key (another generation)
    cases = [
        (crl_of(other, other_key, {}), ca, "signature does not verify"),
        (crl_of(ca, key, {}), issuing_ca("Another CA")[0], "it is issued by CN=Test Issuing CA"),
        (
            crl_of(ca, key, {}, next_update=NOW - HOUR, this_update=NOW - 2 * HOUR),
            ca,
            "not current",
        ),
        (crl_of(ca, key, {}, this_update=NOW + HOUR), ca, "not current"),
        (crl_of(ca, key, {}, number=5, delta_base=4), ca, "delta CRL"),
        (b"<html>502 Bad Gateway</html>", ca, "not a CRL"),
        (good[: len(good) // 2], ca, "not a CRL"),
    ]
    for data, issuer, why in cases:
        with pytest.raises(UnusableCRL, match=why):
            verify_crl(data, issuer, NOW)
    # A CRL in the issuer's name whose cRLNumber does not parse, signed by anyone who
    # answers at the CRL's address (or by the issuer itself): unusable, never a
    # ValueError out of the sweep, which stopped it for good (review)
    for signing_key in (other_key, key):
        garbled = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.subject)
            .last_update(NOW - HOUR)
            .next_update(NOW + HOUR)
            .add_extension(
                x509.UnrecognizedExtension(x509.oid.ExtensionOID.CRL_NUMBER, b"\x04\x01\xff"),
                False,
            )
            .sign(signing_key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        with pytest.raises(ValueError):
            _ = x509.load_der_x509_crl(garbled).extensions  # what escaped before
        with pytest.raises(UnusableCRL):
            verify_crl(garbled, ca, NOW)


class FakeCRLs:
    """``get(url)`` for :class:`IssuingCRLs`: ``answer`` (bytes, or an exception)."""

    def __init__(self, answer: bytes | Exception) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.asked.append(url)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_crl_is_fetched_once_every_two_seconds_and_a_fault_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca, key = issuing_ca()
    get = FakeCRLs(crl_of(ca, key, {7: None}))
    mono = [0.0]
    crls = IssuingCRLs(get, clock=lambda: NOW, monotonic=lambda: mono[0])
    for _ in range(50):
        assert crls.listed(CRL_URL, ca) == {7}
    assert len(get.asked) == 1
    mono[0] = 2.0
    get.answer = crl_of(ca, key, {7: None, 8: None}, number=2)  # a revocation since
    assert crls.listed(CRL_URL, ca) == {7, 8} and len(get.asked) == 2
    # It cannot be had: the last one verified answers while current, and the log says so
    # once (not once a sweep)
    caplog.set_level(logging.WARNING)
    caplog.clear()
    get.answer = StatusUnavailable(f"the CRL at {CRL_URL} answered HTTP 502")
    for i in range(5):
        mono[0] = 4.0 + 2 * i
        assert crls.listed(CRL_URL, ca) == {7, 8}
    assert len(get.asked) == 7
    assert [r.getMessage() for r in caplog.records] == [
        f"session sweep: the CRL at {CRL_URL} answered HTTP 502; it ends no session of those "
        "certificates by this CRL until it can be used (each is still checked by OCSP when used)"
    ]
    assert all(r.exc_info is None for r in caplog.records)
    # had again: said once
    caplog.clear()
    mono[0] = 20.0
    get.answer = crl_of(ca, key, {7: None, 8: None, 9: None}, number=3)
    assert crls.listed(CRL_URL, ca) == {7, 8, 9}
    assert [r.getMessage() for r in caplog.records] == [
        f"session sweep: the CRL at {CRL_URL} is read and verified again"
    ]
    # An older CRL (replayed over plain HTTP) is not used: the one before answers
    mono[0] = 22.0
    get.answer = crl_of(ca, key, {7: None}, number=1)
    assert crls.listed(CRL_URL, ca) == {7, 8, 9}
    assert "cRLNumber 1 is below the 3" in caplog.records[-1].getMessage()
    # ... and nothing once it is past its nextUpdate
    later = IssuingCRLs(get, clock=lambda: NOW + 60 * HOUR, monotonic=lambda: mono[0])
    later._held = crls._held
    assert later.listed(CRL_URL, ca) is None


def test_the_sweep_batch_reads_each_certificate_once_and_each_crl_once() -> None:
    ca, key = issuing_ca()
    other, other_key = issuing_ca("Revoked Since CA")
    certs = {n: leaf(ca, key, n, CRL_URL) for n in range(100, 400)}
    certs[999] = leaf(other, other_key, 999, "http://ca.internal/crl/other.crl")
    get = FakeCRLs(crl_of(ca, key, {101: None, 150: None, 5000: None}))
    mono = [0.0]
    crls = IssuingCRLs(get, clock=lambda: NOW, monotonic=lambda: mono[0])

    def post(url: str, body: bytes) -> bytes:
        raise AssertionError("the sweep asks no OCSP")

    source = OCSPStatusSource([ca], post, clock=lambda: NOW, crls=crls)
    read: Counter[int] = Counter()

    def certificate_of(serial: int) -> x509.Certificate | None:
        read[serial] += 1
        return certs.get(serial)

    serials = [*certs, 12345]  # and one whose session went meanwhile
    for beat in range(3):
        mono[0] = 2.0 * beat
        # 101, 150: listed; 999: none of the issuing CAs at hand issued it (a revoked one)
        assert source.not_good_on_crls(serials, certificate_of) == {101, 150, 999}
    assert len(get.asked) == 3  # one GET a sweep, whatever the number of sessions
    assert read.pop(12345) == 3  # asked again: a session gone is not named next time
    assert set(read.values()) == {1} and len(read) == len(certs)
    # The CRL cannot be had and none was before: nothing is suspected for lack of it
    fresh = OCSPStatusSource(
        [ca],
        post,
        clock=lambda: NOW,
        crls=IssuingCRLs(FakeCRLs(StatusUnavailable("down")), clock=lambda: NOW),
    )
    assert fresh.not_good_on_crls(list(certs)[:5], certificate_of) == set()


def test_the_sweep_ends_only_the_sessions_a_crl_names_asking_nothing_else() -> None:
    from authsvc.service import TokenService
    from authsvc.tokens import InvalidToken

    sessions = {f"s{i}": format(0x1000 + i % 7, "x") for i in range(700)}  # 7 certificates

    class Store:
        def open_session_serials(self, now: datetime.datetime) -> list[tuple[str, str]]:
            return list(sessions.items())

        def get_session(self, sid: str) -> Any:
            return type("Rec", (), {"certificate": f"cert of {sessions[sid]}"})()

    class RemoteStatus:
        def __init__(self) -> None:
            self.calls: list[list[int]] = []

        def not_good_on_crls(self, serials: list[int], certificate_of: Any) -> set[int]:
            self.calls.append(sorted(serials))
            assert certificate_of(0x1003) == "cert of 1003"
            return {0x1003}

        def status(self, cert: Any) -> Any:
            raise AssertionError("the sweep must not ask certificate by certificate")

    status = RemoteStatus()
    svc = TokenService.__new__(TokenService)
    svc.store = Store()  # type: ignore[assignment]
    svc.status_source = status  # type: ignore[assignment]
    svc.clock = lambda: NOW
    checked: list[str] = []

    def live_session(sid: str, *, fresh_status: bool = False) -> None:
        assert fresh_status  # a suspect is asked again, fresh, before its session ends
        checked.append(sid)
        raise InvalidToken("certificate revoked")

    svc.live_session = live_session  # type: ignore[method-assign]
    ended = svc.sweep()
    assert status.calls == [list(range(0x1000, 0x1007))]
    expected = {sid for sid, serial in sessions.items() if serial == "1003"}
    assert set(checked) == expected and ended == len(expected)


@pytest.fixture(scope="module")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ca.config import CAConfig
    from ca.devinit import ensure_dev_ca

    data = tmp_path_factory.mktemp("dev-ca")
    ensure_dev_ca(CAConfig.load({"data_dir": data, "dev": True}, environ={}))
    return data


class NoStatus:
    def status(self, cert: x509.Certificate) -> Any:
        raise AssertionError("not asked")


def test_live_trust_follows_the_files_in_any_order_and_logs_a_half_copy_once(
    dev_ca: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from authsvc.trust import LiveTrust

    copy = tmp_path / "auth-data"
    copy_public_files(dev_ca, copy)
    (copy / "ca" / "issuers" / "agency.crt").unlink()
    auditor = x509.load_pem_x509_certificate(
        (dev_ca / "dev" / "auditors" / "tax" / "auditor.pem").read_bytes()
    )
    now = datetime.datetime.now(datetime.UTC)
    live = LiveTrust(copy, lambda issuers: NoStatus(), every=0.0)
    with pytest.raises(
        Unauthenticated, match=r"does not have \(.*Agency.*\): copy the CA's issuers"
    ):
        live.refresh().verify_chain(auditor, now)
    (copy / "ca" / "generation").write_text("g2\n")  # the generation first
    assert live.refresh().generation == "g2"
    with pytest.raises(Unauthenticated, match="copy the CA's issuers/"):
        live.refresh().verify_chain(auditor, now)
    shutil.copy2(dev_ca / "ca" / "issuers" / "agency.crt", copy / "ca" / "issuers")
    assert live.refresh().verify_chain(auditor, now)[0] == auditor  # then the certificate
    # Nothing changed: nothing is reloaded
    material = live.refresh()
    assert all(live.refresh() is material for _ in range(5))
    # A root CRL copied by halves: one line, however often it is tried; the trust kept
    caplog.set_level(logging.WARNING)
    caplog.clear()
    crl = copy / "ca" / "root.crl"
    whole = crl.read_bytes()
    crl.write_bytes(whole[:100])
    for _ in range(10):
        assert live.refresh() is material
    assert len(caplog.records) == 1, caplog.records
    assert caplog.records[0].exc_info is None
    assert "ValueError" in caplog.records[0].getMessage()
    crl.write_bytes(whole[:200])  # more of it: a change, said again
    assert live.refresh() is material and len(caplog.records) == 2
    crl.write_bytes(whole)
    assert live.refresh() is not material
    assert caplog.records[-1].getMessage() == "the CA hierarchy (generation g2) reloaded after all"


def test_crls_are_asked_for_conditionally_when_the_answer_allows() -> None:
    """The CA's /crl/ sends no validator (each sweep gets the bytes); a server or cache
    that sends an ETag is asked conditionally, and its 304 gives the bytes held."""
    from authsvc.responders import Responders

    seen: list[dict[str, str]] = []
    answer = {"status": 200, "etag": '"v1"'}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            if answer["status"] == 200 and self.headers.get("If-None-Match") == answer["etag"]:
                self.send_response(304)
                self.end_headers()
                return
            body = b"crl bytes" if answer["status"] == 200 else b"<html>bad gateway</html>"
            self.send_response(int(answer["status"]))
            if answer["etag"]:
                self.send_header("ETag", str(answer["etag"]))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/crl/enterprise.crl"
    try:
        responders = Responders(pause=0.0)
        assert responders.get(url) == b"crl bytes"
        assert seen[-1]["Cache-Control"] == "no-cache" and "If-None-Match" not in seen[-1]
        assert responders.get(url) == b"crl bytes"  # a 304
        assert seen[-1]["If-None-Match"] == '"v1"'
        answer["etag"] = ""  # no validator: asked in full, and nothing held
        assert responders.get(url) == b"crl bytes" and responders.get(url) == b"crl bytes"
        assert "If-None-Match" not in seen[-1]
        answer["status"] = 502
        with pytest.raises(StatusUnavailable, match="answered HTTP 502"):
            responders.get(url)
    finally:
        httpd.shutdown()
        httpd.server_close()
