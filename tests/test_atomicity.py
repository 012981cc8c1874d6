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

from ca import groupwrite, hierarchy, translog
from ca.authority import JointCA
from ca.db import make_engine
from ca.errors import Conflict, InvalidCode
from ca.keys import KeyType
from ca.models import CertificateRow, EnrollmentCodeRow, EventRow, LogEntryRow
from ca.records import Event
from ca.store import SqlStore, SqlTransaction
from tests.conftest import Server
from tests.helpers import fresh_uscc, in_process_ca

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
    spare = 0
    """Certificate events let through before the crash."""

    @contextmanager
    def transaction(self) -> Iterator[SqlTransaction]:
        with super().transaction() as tx:
            if self.armed:
                original = tx.append_event

                def append_event(ev: Event) -> int:
                    if ev.serial is not None and self.spare > 0:
                        self.spare -= 1
                    elif ev.serial is not None:
                        raise Crash("killed between storing the certificate and its event")
                    return original(ev)

                tx.append_event = append_event  # type: ignore[method-assign]
            yield tx


@pytest.fixture
def joint(tmp_path: Path) -> Iterator[tuple[JointCA, CrashingStore, sessionmaker]]:  # type: ignore[type-arg]
    with in_process_ca(tmp_path, CrashingStore) as joint:
        yield joint


def count(sessions: sessionmaker, table: type) -> int:  # type: ignore[type-arg]
    with sessions() as s:
        return int(s.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.mark.parametrize("point", ["event", "log", "commit"])
def test_crash_between_signed_and_stored_loses_nothing(
    joint: tuple,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
    point: str,
) -> None:
    """Killed after the certificate row was written but before its event, inside the log
    append, or at the COMMIT: the code's redemption, the certificate, its event and its
    log entry are all rolled back, and the same code and key then enroll normally."""
    ca, _, sessions = joint
    app = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Crash Test Co."})
    grant = ca.approve_at_ceremony(app.id, "test")
    before = {t: count(sessions, t) for t in (CertificateRow, EventRow, LogEntryRow)}
    key = KeyType.P256.generate()

    def crash(*_args: object, **_kwargs: object) -> None:
        raise Crash(f"killed at {point}")

    with monkeypatch.context() as m:
        if point == "event":
            m.setattr(groupwrite.IssuanceWriter, "_insert_event", crash)
        elif point == "log":
            m.setattr(translog, "append_entries", crash)
        else:
            m.setattr(groupwrite.IssuanceWriter, "_commit", crash)
        with pytest.raises(Crash):
            ca.enroll(grant.code, "enterprise", csr_pem(key))
    # Neither the certificate nor its event nor its log entry nor the redemption survived.
    assert {t: count(sessions, t) for t in before} == before
    with sessions() as s:
        assert s.scalars(select(EnrollmentCodeRow.used_at)).one() is None

    issued = ca.enroll(grant.code, "enterprise", csr_pem(key))
    assert count(sessions, CertificateRow) == before[CertificateRow] + 1
    assert count(sessions, LogEntryRow) == before[LogEntryRow] + 1
    with sessions() as s:
        ev = s.scalars(select(EventRow).where(EventRow.serial == issued.record.serial_hex)).one()
        assert ev.type == "certificate.issued" and ev.cert_sha256 == issued.record.cert_sha256


def test_code_is_single_use_and_expires(joint: tuple) -> None:  # type: ignore[type-arg]
    ca, _, _ = joint
    app = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Once Co."})
    grant = ca.approve_at_ceremony(app.id, "test")
    ca.enroll(grant.code, "enterprise", csr_pem(KeyType.P256.generate()))
    with pytest.raises(InvalidCode, match="already used"):
        ca.enroll(grant.code, "enterprise", csr_pem(KeyType.P256.generate()))

    app2 = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Late Co."})
    grant2 = ca.approve_at_ceremony(app2.id, "test")
    real_clock = ca.clock
    ca.clock = lambda: real_clock() + datetime.timedelta(days=7, seconds=1)
    with pytest.raises(InvalidCode, match="expired"):
        ca.enroll(grant2.code, "enterprise", csr_pem(KeyType.P256.generate()))


def test_a_lost_answer_is_not_sent_again_once_the_certificate_expired(joint: tuple) -> None:  # type: ignore[type-arg]
    """The replay of an enrollment whose answer was lost hands back the certificate while
    it is valid, and refuses (409, naming the expiry) once it has expired: a 200 would
    let the CLI save a dead certificate as if it had just been issued. Nothing is
    written either way."""
    ca, _, sessions = joint
    app = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Late Reply Co."})
    grant = ca.approve_at_ceremony(app.id, "test")
    key = KeyType.P256.generate()
    issued = ca.enroll(grant.code, "enterprise", csr_pem(key))
    again = ca.enroll(grant.code, "enterprise", csr_pem(key))
    assert again.replayed and again.record.serial == issued.record.serial
    before = {t: count(sessions, t) for t in (CertificateRow, EventRow, LogEntryRow)}
    not_after = issued.record.not_after
    real_clock = ca.clock
    ca.clock = lambda: not_after + datetime.timedelta(seconds=1)
    try:
        with pytest.raises(Conflict, match=f"{issued.record.serial_hex} .* expired on") as exc:
            ca.enroll(grant.code, "enterprise", csr_pem(key))
        assert f"{not_after:%Y-%m-%dT%H:%M:%SZ}" in str(exc.value)
        ca.clock = lambda: not_after  # notAfter is inclusive (RFC 5280 §4.1.2.5)
        assert ca.enroll(grant.code, "enterprise", csr_pem(key)).replayed
    finally:
        ca.clock = real_clock
    assert {t: count(sessions, t) for t in before} == before


def test_key_certified_to_another_subject_is_refused(joint: tuple) -> None:  # type: ignore[type-arg]
    ca, _, sessions = joint
    key = KeyType.P256.generate()
    a = ca.approve_at_ceremony(
        ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "A Co."}).id, "t"
    )
    b = ca.approve_at_ceremony(
        ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "B Co."}).id, "t"
    )
    ca.enroll(a.code, "enterprise", csr_pem(key))
    before = count(sessions, CertificateRow)
    with pytest.raises(Conflict, match="another subject"):
        ca.enroll(b.code, "enterprise", csr_pem(key))
    assert count(sessions, CertificateRow) == before


def test_codes_are_stored_only_as_hashes(joint: tuple) -> None:  # type: ignore[type-arg]
    ca, _, sessions = joint
    grant = ca.approve_at_ceremony(
        ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Hash Co."}).id, "t"
    )
    raw = grant.code.replace("-", "")
    with sessions() as s:
        stored = s.scalars(select(EnrollmentCodeRow.code_hash)).all()
    assert raw not in stored and grant.code not in stored and len(stored[0]) == 64
    assert len(raw) == 32  # 160 bits in Crockford base32


def test_concurrent_redemption_issues_once(sqlite_server: Server) -> None:
    """Eight clients race one code against two server processes: exactly one certificate."""
    srv = sqlite_server
    app = srv.eport("apply", "--uscc", fresh_uscc(), "--name", "Race Co.", "--json").stdout
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


def test_a_crash_mid_renewal_leaves_no_half_written_responder(
    joint: tuple,  # type: ignore[type-arg]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The live renewal path (:class:`ca.responders.ResponderRenewal`): each responder is
    renewed whole or not at all. A crash before the commit leaves its files and the
    database as they were; a crash between the two renames is finished at start by
    :func:`ca.responders.settle`; the responders renewed before the crash stay renewed
    and the generation file is bumped for them."""
    from ca import responders
    from ca.ocsp import Responder
    from ca.sealing import PassphraseSealer

    ca, store, sessions = joint
    d = tmp_path / "ca" / "responders"
    bumps: list[Path] = []

    def renewal() -> responders.ResponderRenewal:
        h = hierarchy.load(tmp_path, b"ca-pass")
        return responders.ResponderRenewal(
            data_dir=tmp_path,
            issuers=h.issuers,
            factory=ca.factory,
            profile=ca.policies.profile(responders.PROFILE),
            store=store,
            sealer=PassphraseSealer(b"ca-pass"),
            clock=ca.clock,
            bump=bumps.append,
        )

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name[0] != "."}

    def consistent() -> None:  # every key on disk belongs to its certificate
        h = hierarchy.load(tmp_path, b"ca-pass")
        for iid, r in h.responders.items():
            Responder(issuer=h.issuers[iid].certificate, certificate=r.certificate, signer=r.signer)

    ids = sorted(hierarchy.load(tmp_path, None).responders)
    first = ids[0]
    assert len(ids) > 1
    before, certs = files(), count(sessions, CertificateRow)

    # Killed inside the second responder's transaction: the first is renewed whole,
    # the second is as it was (no .new file, no certificate row, no event).
    store.armed, store.spare = True, 1
    with pytest.raises(Crash):
        renewal().run(force=True)
    store.armed = False
    after = files()
    assert after[f"{first}.crt"] != before[f"{first}.crt"]
    assert after[f"{first}.key"] != before[f"{first}.key"]
    assert {k: v for k, v in after.items() if not k.startswith(first)} == {
        k: v for k, v in before.items() if not k.startswith(first)
    }
    assert count(sessions, CertificateRow) == certs + 1 and bumps == [tmp_path]
    consistent()

    # Killed after the commit, between moving the key and the certificate into place:
    # settle() (run at every start) moves the certificate after its key.
    real_replace = responders.os.replace

    def dies_on_the_certificate(src: object, dst: object) -> None:
        if str(src).endswith(".crt.new"):
            raise Crash("killed between the key's rename and the certificate's")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(responders.os, "replace", dies_on_the_certificate)
    with pytest.raises(Crash):
        renewal().run(force=True)
    monkeypatch.setattr(responders.os, "replace", real_replace)
    assert sorted(p.name for p in d.glob("*.new")) == [f"{first}.crt.new"]
    assert responders.settle(tmp_path) == [first]
    assert not list(d.glob("*.new"))
    consistent()

    # Nothing is left over: an ordinary run renews every responder and logs each once.
    outcome = renewal().run(force=True)
    assert [r.issuer_id for r in outcome.renewed] == ids and not list(d.glob("*.new"))
    consistent()
    with sessions() as s:
        logged = s.scalars(select(EventRow).where(EventRow.actor == responders.ACTOR)).all()
    assert len(logged) == count(sessions, CertificateRow) - certs == 2 + len(outcome.renewed)


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
