"""Issuance and its event commit together or not at all; one-time codes are one-time.

These run the real core on a real SQLite database (the same code the server runs),
with a fault injected between "signed" and "stored".
"""

from __future__ import annotations

import concurrent.futures
import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from ca import hierarchy
from ca.app import build_authority
from ca.authority import JointCA
from ca.config import CAConfig
from ca.db import make_engine, upgrade
from ca.errors import Conflict, InvalidCode
from ca.issuance import CertificateFactory
from ca.keys import KeyType
from ca.models import CertificateRow, EnrollmentCodeRow, EventRow
from ca.policy import load_policies
from ca.records import Event
from ca.store import SqlStore, SqlTransaction
from tests.conftest import Server

REPO = Path(__file__).resolve().parent.parent


def csr_pem(key: object) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


class Crash(RuntimeError):
    """Stands for the process dying after the certificate was signed."""


class CrashingStore(SqlStore):
    """Fails the event insert of a certificate: the transaction must roll back whole."""

    armed = False

    @contextmanager
    def transaction(self) -> Iterator[SqlTransaction]:
        with super().transaction() as tx:
            if self.armed:
                original = tx.append_event

                def append_event(ev: Event) -> int:
                    if ev.serial is not None:
                        raise Crash("killed between storing the certificate and its event")
                    return original(ev)

                tx.append_event = append_event  # type: ignore[method-assign]
            yield tx


@pytest.fixture
def joint(tmp_path: Path) -> Iterator[tuple[JointCA, CrashingStore, sessionmaker]]:  # type: ignore[type-arg]
    cfg = CAConfig.load({"data_dir": tmp_path})
    upgrade(cfg.sqlalchemy_url)
    policies = load_policies(REPO / "policies")
    h = hierarchy.create(
        policies,
        tmp_path,
        root_passphrase=b"root-pass",
        ca_passphrase=b"ca-pass",
        factory=CertificateFactory(),
        now=datetime.datetime.now(datetime.UTC),
    )
    engine = make_engine(cfg.sqlalchemy_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    store = CrashingStore(sessions)
    yield build_authority(cfg, policies, h, store), store, sessions
    engine.dispose()


def count(sessions: sessionmaker, table: type) -> int:  # type: ignore[type-arg]
    with sessions() as s:
        return int(s.execute(select(func.count()).select_from(table)).scalar_one())


def test_crash_between_signed_and_stored_loses_nothing(joint: tuple) -> None:  # type: ignore[type-arg]
    ca, store, sessions = joint
    app = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Crash Test Co."})
    grant = ca.approve_at_ceremony(app.id, "test")
    certs, events = count(sessions, CertificateRow), count(sessions, EventRow)
    key = KeyType.P256.generate()

    store.armed = True
    with pytest.raises(Crash):
        ca.enroll(grant.code, "enterprise", csr_pem(key))
    # Neither the certificate nor its event nor the code's redemption survived.
    assert count(sessions, CertificateRow) == certs
    assert count(sessions, EventRow) == events
    with sessions() as s:
        assert s.scalars(select(EnrollmentCodeRow.used_at)).one() is None

    store.armed = False
    issued = ca.enroll(grant.code, "enterprise", csr_pem(key))
    assert count(sessions, CertificateRow) == certs + 1
    with sessions() as s:
        ev = s.scalars(select(EventRow).where(EventRow.serial == issued.record.serial_hex)).one()
        assert ev.type == "certificate.issued" and ev.cert_sha256 == issued.record.cert_sha256


def test_code_is_single_use_and_expires(joint: tuple) -> None:  # type: ignore[type-arg]
    ca, _, _ = joint
    app = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Once Co."})
    grant = ca.approve_at_ceremony(app.id, "test")
    ca.enroll(grant.code, "enterprise", csr_pem(KeyType.P256.generate()))
    with pytest.raises(InvalidCode, match="already used"):
        ca.enroll(grant.code, "enterprise", csr_pem(KeyType.P256.generate()))

    app2 = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Late Co."})
    grant2 = ca.approve_at_ceremony(app2.id, "test")
    real_clock = ca.clock
    ca.clock = lambda: real_clock() + datetime.timedelta(days=7, seconds=1)
    with pytest.raises(InvalidCode, match="expired"):
        ca.enroll(grant2.code, "enterprise", csr_pem(KeyType.P256.generate()))


def test_key_certified_to_another_subject_is_refused(joint: tuple) -> None:  # type: ignore[type-arg]
    ca, _, sessions = joint
    key = KeyType.P256.generate()
    a = ca.approve_at_ceremony(
        ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "A Co."}).id, "t"
    )
    b = ca.approve_at_ceremony(
        ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "B Co."}).id, "t"
    )
    ca.enroll(a.code, "enterprise", csr_pem(key))
    before = count(sessions, CertificateRow)
    with pytest.raises(Conflict, match="another subject"):
        ca.enroll(b.code, "enterprise", csr_pem(key))
    assert count(sessions, CertificateRow) == before


def test_codes_are_stored_only_as_hashes(joint: tuple) -> None:  # type: ignore[type-arg]
    ca, _, sessions = joint
    grant = ca.approve_at_ceremony(
        ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Hash Co."}).id, "t"
    )
    raw = grant.code.replace("-", "")
    with sessions() as s:
        stored = s.scalars(select(EnrollmentCodeRow.code_hash)).all()
    assert raw not in stored and grant.code not in stored and len(stored[0]) == 64
    assert len(raw) == 32  # 160 bits in Crockford base32


def test_concurrent_redemption_issues_once(sqlite_server: Server) -> None:
    """Eight clients race one code against two server processes: exactly one certificate."""
    srv = sqlite_server
    app = srv.eport("apply", "--uscc", "91350100M000100Y43", "--name", "Race Co.", "--json").stdout
    import json

    app_id = json.loads(app)["id"]
    code = json.loads(srv.eport("ra", "approve", app_id, *srv.officer(), "--json").stdout)[
        "enrollment_code"
    ]
    bodies = [
        {"code": code, "profile": "enterprise", "csr": csr_pem(KeyType.P256.generate()).decode()}
        for _ in range(8)
    ]

    def post(body: dict) -> int:  # type: ignore[type-arg]
        return requests.post(srv.url + "/ca/v1/enroll", json=body, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(post, bodies))
    assert statuses.count(201) == 1 and statuses.count(403) == 7, statuses
    engine = make_engine(srv.database_url)
    with engine.connect() as conn:
        n = conn.execute(
            select(func.count())
            .select_from(CertificateRow)
            .where(CertificateRow.application_id == app_id)
        ).scalar_one()
    engine.dispose()
    assert n == 1


def test_expiring_ocsp_responders_are_renewed_and_logged(tmp_path: Path) -> None:
    from ca.ceremony import renew_responders
    from ca.ocsp import Responder

    cfg = CAConfig.load({"data_dir": tmp_path})
    upgrade(cfg.sqlalchemy_url)
    policies = load_policies(REPO / "policies")
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=70)
    h = hierarchy.create(
        policies,
        tmp_path,
        root_passphrase=b"r" * 12,
        ca_passphrase=b"c" * 12,
        factory=CertificateFactory(),
        now=long_ago,
    )
    old = h.responders["enterprise"].certificate
    assert old.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < datetime.timedelta(
        days=30
    )
    engine = make_engine(cfg.sqlalchemy_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    ca = build_authority(cfg, policies, h, SqlStore(sessions))
    renewed = renew_responders(ca, h, tmp_path, b"c" * 12)
    assert sorted(renewed) == sorted(h.issuers)
    assert renew_responders(ca, hierarchy.load(tmp_path, None), tmp_path, b"c" * 12) == []
    fresh = hierarchy.load(tmp_path, b"c" * 12)
    new = fresh.responders["enterprise"]
    assert new.certificate.serial_number != old.serial_number
    assert new.certificate.not_valid_after_utc - datetime.datetime.now(
        datetime.UTC
    ) > datetime.timedelta(days=80)
    Responder(
        issuer=fresh.issuers["enterprise"].certificate,
        certificate=new.certificate,
        signer=new.signer,
    )
    with sessions() as s:
        rows = s.scalars(select(EventRow).where(EventRow.actor == "system:responder-renewal")).all()
    assert len(rows) == len(h.issuers)
    engine.dispose()


def test_reads_do_not_wait_for_the_write_lock(joint: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """A read-only transaction proceeds while another process holds SQLite's write lock."""
    import sqlite3
    import time

    _, store, _ = joint
    writer = sqlite3.connect(tmp_path / "eport.db", isolation_level=None, timeout=30)
    writer.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        with store.reading() as tx:
            assert tx.get_certificate(1) is None
        assert time.monotonic() - start < 1.0
        # A writing transaction, by contrast, waits for the lock (here: gives up quickly).
        blocked = sqlite3.connect(tmp_path / "eport.db", isolation_level=None, timeout=0.2)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            blocked.execute("BEGIN IMMEDIATE")
        blocked.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
