"""Group commit of issuances (ca.groupwrite): concurrent enrollments share transactions,
each one still stored whole or not at all, on SQLite and on a real PostgreSQL.

The groups are forced: the first leader's transaction is held back until every other
thread has queued, so the next leader writes all of them in one transaction.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from ca import groupwrite, translog
from ca.authority import JointCA
from ca.errors import Conflict, InvalidCode
from ca.groupwrite import GroupCommit, HostLock
from ca.keys import KeyType
from ca.models import CertificateRow, EnrollmentCodeRow, EventRow, LogEntryRow, LogHeadRow
from cli import auditproof
from tests.conftest import Postgres
from tests.helpers import fresh_uscc, in_process_ca

REPO = Path(__file__).resolve().parent.parent


def csr_pem(key: Any) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


# -- the leader/follower mechanics, without a database ---------------------------------------


def test_group_commit_writes_what_queued_while_the_leader_wrote() -> None:
    """The first caller writes alone; the callers that arrive meanwhile are the next group,
    each gets its own outcome, and nobody returns before its group was written."""
    release = threading.Event()
    groups: list[list[int]] = []
    written: set[int] = set()

    def write(items: Any) -> tuple[list[Any], None]:
        if not groups:
            release.wait(10)  # the first leader is slow: the others queue behind it
        groups.append(list(items))
        written.update(items)
        return [ValueError(f"bad {i}") if i % 5 == 0 else i * 10 for i in items], None

    gc: GroupCommit[int, int, None] = GroupCommit(write)
    results: dict[int, Any] = {}
    early: list[int] = []  # callers that returned before their group was written

    def call(i: int) -> None:
        try:
            results[i] = gc.submit(i)
        except ValueError as exc:
            results[i] = exc
        if i not in written:
            early.append(i)

    first = threading.Thread(target=call, args=(1,))
    first.start()
    while not groups and gc._leading is False:
        time.sleep(0.001)
    others = [threading.Thread(target=call, args=(i,)) for i in range(2, 12)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while len(gc._queue) < 10 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert early == [] and groups[0] == [1]
    assert sorted(groups[1]) == list(range(2, 12)) and len(groups) == 2
    for i in range(1, 12):
        if i % 5 == 0:
            assert isinstance(results[i], ValueError) and str(results[i]) == f"bad {i}"
        else:
            assert results[i] == i * 10


def test_group_commit_failure_fails_the_whole_group() -> None:
    def write(_items: Any) -> tuple[list[Any], None]:
        raise OSError("disk full")

    gc: GroupCommit[int, int, None] = GroupCommit(write)
    with pytest.raises(OSError, match="disk full"):
        gc.submit(1)
    # The next caller leads again (the failed leader gave the lead back).
    gc._write = lambda items: ([i + 1 for i in items], None)
    assert gc.submit(1) == 2


def _submit(gc: GroupCommit[int, int, Any], i: int, results: dict[int, Any]) -> None:
    """Submit ``i``; its outcome (result or exception) lands in ``results`` on return."""
    try:
        results[i] = gc.submit(i)
    except Exception as exc:
        results[i] = exc


def _submit_all(gc: GroupCommit[int, int, Any], items: range) -> dict[int, Any]:
    """Each item submitted by a thread of its own; the outcome per item."""
    results: dict[int, Any] = {}
    threads = [threading.Thread(target=_submit, args=(gc, i, results), daemon=True) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def _wait_for(check: Any) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_group_commit_takes_what_queued_while_the_leader_waited_for_the_gate() -> None:
    """The leader takes its group once it holds the gate: the callers that arrived while
    it waited for the gate (another process writing) are written with it, in one group."""
    gate = threading.Lock()
    groups: list[list[int]] = []

    def write(items: Any) -> tuple[list[int], None]:
        assert gate.locked()
        groups.append(list(items))
        return [i * 2 for i in items], None

    gc: GroupCommit[int, int, None] = GroupCommit(write, gate=lambda: gate)
    out: dict[int, Any] = {}
    runner = threading.Thread(target=lambda: out.update(_submit_all(gc, range(6))))
    with gate:  # another writer holds the gate
        runner.start()
        _wait_for(lambda: len(gc._queue) == 6)
        assert groups == []
    runner.join(10)
    assert groups == [sorted(groups[0])] and sorted(groups[0]) == list(range(6))
    assert out == {i: i * 2 for i in range(6)}


def test_group_commit_next_group_writes_while_the_last_settles() -> None:
    """``settle`` (the WAL flush) runs after the gate is left and the lead handed on: the
    next group is written meanwhile, and no caller returns before its own group settled;
    a failed settle fails its group only."""
    gate = threading.Lock()
    first_settling = threading.Event()
    release_first = threading.Event()
    written: list[int] = []
    settled: set[int] = set()

    def write(items: Any) -> tuple[list[int], int]:
        written.extend(items)
        return list(items), items[0]

    def settle(token: int) -> None:
        if token == 0:
            first_settling.set()
            assert release_first.wait(10)
            raise OSError("flush failed")
        settled.add(token)

    gc: GroupCommit[int, int, int] = GroupCommit(write, gate=lambda: gate, settle=settle)
    results: dict[int, Any] = {}
    first = threading.Thread(target=_submit, args=(gc, 0, results))
    first.start()
    assert first_settling.wait(10)
    second = threading.Thread(target=_submit, args=(gc, 1, results))
    second.start()
    second.join(10)  # written and settled while group 0 is still settling
    assert results[1] == 1 and 1 in settled and written == [0, 1]
    assert 0 not in results  # not returned before its own settle ended
    release_first.set()
    first.join(10)
    assert isinstance(results[0], OSError)


def test_group_commit_a_gate_that_fails_fails_the_queued_group() -> None:
    """If the gate cannot be entered (the lock file cannot be opened), the callers queued
    get its error instead of waiting for ever; the next caller leads again."""
    broken = [True]

    @contextmanager
    def gate() -> Iterator[None]:
        if broken[0]:
            raise PermissionError("eport.db.writelock: permission denied")
        yield

    gc: GroupCommit[int, int, None] = GroupCommit(lambda items: (list(items), None), gate=gate)
    assert isinstance(_submit_all(gc, range(1))[0], PermissionError)
    assert not gc._leading and gc._queue == []
    broken[0] = False
    assert gc.submit(7) == 7


def test_group_commit_max_group_leaves_the_rest_to_the_next_leader() -> None:
    sizes: list[int] = []
    gate = threading.Lock()

    def write(items: Any) -> tuple[list[int], None]:
        sizes.append(len(items))
        return list(items), None

    gc: GroupCommit[int, int, None] = GroupCommit(write, gate=lambda: gate, max_group=3)
    out: dict[int, Any] = {}
    runner = threading.Thread(target=lambda: out.update(_submit_all(gc, range(8))))
    with gate:
        runner.start()
        _wait_for(lambda: len(gc._queue) == 8)
    runner.join(10)
    assert out == {i: i for i in range(8)}
    assert sizes == [3, 3, 2] and not gc._leading and gc._queue == []


def test_host_lock_excludes_other_processes(tmp_path: Path) -> None:
    """The flock is held by one process at a time: a child blocks until we release it."""
    import subprocess
    import sys

    lock = HostLock(tmp_path / "db.writelock")
    child = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "print('ready', flush=True)\n"
        "t = time.monotonic(); fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print(round(time.monotonic() - t, 3))\n"
    )
    with lock.held():
        proc = subprocess.Popen(
            [sys.executable, "-c", child, str(tmp_path / "db.writelock")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        # Timed from the child's own start, however long a busy machine takes to start it.
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting for our lock
    out, _ = proc.communicate(timeout=10)
    assert float(out) >= 0.4


def test_wal_sync_shares_one_flush_among_the_commits_it_covers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush covers every commit counted before it began, whoever counted it: a writer
    whose commit another writer's flush covered does not flush again; one counted after
    it does. A failed flush marks nothing synced. The counts survive a restart."""
    import os

    wal = tmp_path / "db-wal"
    wal.write_bytes(b"frames")
    flushed: list[str] = []
    real_fsync = os.fdatasync

    def spy(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", spy)
    a = groupwrite.WalSync(wal, tmp_path / "db.walsync")
    b = groupwrite.WalSync(wal, tmp_path / "db.walsync")  # another writer, its own lock file
    first, second = a.committed(), b.committed()
    assert (first, second) == (1, 2)
    assert b.sync(second) is True  # flushes both commits
    assert a.sync(first) is False  # covered by b's flush: no flush of its own
    assert flushed == [str(wal)]
    third = a.committed()  # after b's flush: not covered by it
    assert a.sync(third) is True and flushed == [str(wal)] * 2
    flushed.clear()

    def failing(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    fourth = b.committed()
    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError, match="Input/output"):
        b.sync(fourth)
    monkeypatch.setattr(os, "fdatasync", spy)
    assert b.sync(fourth) is True and flushed == [str(wal)]  # the failure marked nothing
    restarted = groupwrite.WalSync(wal, tmp_path / "db.walsync")
    assert restarted.committed() == fourth + 1
    assert restarted.sync(fourth) is False  # synced before the restart
    assert restarted.sync(fourth + 1) is True


def test_wal_sync_is_shared_between_processes(tmp_path: Path) -> None:
    """The counts live in the shared file: a child process's flush, begun after our commit
    was counted, covers it."""
    import subprocess
    import sys

    ours = groupwrite.WalSync(tmp_path / "db-wal", tmp_path / "db.walsync")
    (tmp_path / "db-wal").write_bytes(b"frames")
    seq = ours.committed()
    child = (
        "import sys\nfrom pathlib import Path\nfrom ca.groupwrite import WalSync\n"
        "w = WalSync(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "n = w.committed(); print(n, w.sync(n))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path / "db-wal"), str(tmp_path / "db.walsync")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert out.split() == [str(seq + 1), "True"]
    assert ours.sync(seq) is False


# -- real enrollments, grouped --------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def joint(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[JointCA, sessionmaker]]:  # type: ignore[type-arg]
    url = ""
    if request.param == "postgres":
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.createdb("eport_gw_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:10])
    with in_process_ca(tmp_path, database_url=url) as (ca, _store, sessions):
        yield ca, sessions


def count(sessions: sessionmaker, table: type) -> int:  # type: ignore[type-arg]
    with sessions() as s:
        return int(s.execute(select(func.count()).select_from(table)).scalar_one())


def codes(ca: JointCA, n: int) -> list[str]:
    out = []
    for i in range(n):
        app = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": f"Group {i} Co."})
        out.append(ca.approve_at_ceremony(app.id, "test").code)
    return out


class Groups:
    """Records the size of every group the writer commits; the first group is the first
    caller alone (the others who arrived as soon stay queued), held back until
    ``expected`` callers are queued behind it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, expected: int) -> None:
        self.sizes: list[int] = []
        self.expected = expected
        real = groupwrite.IssuanceWriter._transaction
        real_take = groupwrite.GroupCommit._take
        groups = self

        def take(gc: GroupCommit[Any, Any, Any]) -> Any:
            if groups.sizes:
                return real_take(gc)
            with gc._mutex:
                first, gc._queue = gc._queue[:1], gc._queue[1:]
            return first

        monkeypatch.setattr(groupwrite.GroupCommit, "_take", take)

        def transaction(writer: groupwrite.IssuanceWriter, items: Any) -> Any:
            if not groups.sizes:
                deadline = time.monotonic() + 10
                while len(writer._group._queue) < groups.expected and time.monotonic() < deadline:
                    time.sleep(0.002)
            groups.sizes.append(len(items))
            return real(writer, items)

        monkeypatch.setattr(groupwrite.IssuanceWriter, "_transaction", transaction)


def enroll_all(ca: JointCA, jobs: list[tuple[str, bytes]]) -> list[Any]:
    out: list[Any] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = ca.enroll(jobs[i][0], "enterprise", jobs[i][1])
        except (InvalidCode, Conflict) as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def log_matches_events(sessions: sessionmaker) -> None:  # type: ignore[type-arg]
    """Every event has exactly one entry, in event order, and the head is the root the
    auditor's own code recomputes from the entries."""
    with sessions() as s:
        entries = s.execute(
            select(LogEntryRow.idx, LogEntryRow.event_id, LogEntryRow.entry).order_by(
                LogEntryRow.idx
            )
        ).all()
        event_ids = s.scalars(select(EventRow.id).order_by(EventRow.id)).all()
        head = s.get(LogHeadRow, translog.HEAD_ID)
    assert [e.idx for e in entries] == list(range(len(entries)))
    assert [e.event_id for e in entries] == list(event_ids)
    assert head is not None and head.size == len(entries)
    leaves = [hashlib.sha256(b"\x00" + bytes(e.entry)).digest() for e in entries]
    assert auditproof.root_from_leaf_hashes(leaves) == bytes(head.root_hash)


def test_concurrent_enrollments_commit_in_groups(
    joint: tuple,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twelve enrollments at once, two of them racing for one code and one reusing another
    enrollment's key: grouped into shared transactions, each redemption, certificate,
    event and log entry is stored exactly when its enrollment succeeded."""
    ca, sessions = joint
    cs = codes(ca, 10)
    keys = [KeyType.P256.generate() for _ in range(11)]
    jobs = [(cs[i], csr_pem(keys[i])) for i in range(10)]
    jobs.append((cs[0], csr_pem(keys[10])))  # a second redemption of code 0
    before = {t: count(sessions, t) for t in (CertificateRow, EventRow, LogEntryRow)}
    groups = Groups(monkeypatch, expected=len(jobs) - 1)

    results = enroll_all(ca, jobs)

    assert groups.sizes[0] == 1 and max(groups.sizes) > 1, groups.sizes
    assert sum(groups.sizes) == len(jobs)
    refused = [r for r in results if isinstance(r, Exception)]
    issued = [r for r in results if not isinstance(r, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], InvalidCode), results
    assert len(issued) == 10
    assert count(sessions, CertificateRow) == before[CertificateRow] + 10
    assert count(sessions, EventRow) == before[EventRow] + 10
    assert count(sessions, LogEntryRow) == before[LogEntryRow] + 10
    with sessions() as s:
        used = s.scalars(select(EnrollmentCodeRow.used_at)).all()
        stored = {
            r.serial: r.cert_sha256
            for r in s.execute(select(CertificateRow.serial, CertificateRow.cert_sha256))
        }
        logged = {
            r.serial: r.cert_sha256
            for r in s.execute(
                select(EventRow.serial, EventRow.cert_sha256).where(
                    EventRow.type == "certificate.issued"
                )
            )
        }
    assert all(u is not None for u in used)
    for r in issued:
        assert stored[r.record.serial_hex] == logged[r.record.serial_hex] == r.record.cert_sha256
    log_matches_events(sessions)


def test_a_failed_group_commit_stores_nothing_of_any_member(
    joint: tuple,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The COMMIT of a group of several fails: every enrollment of it fails, no code is
    redeemed, nothing is stored; the same codes then enroll normally."""
    ca, sessions = joint
    cs = codes(ca, 6)
    before = {t: count(sessions, t) for t in (CertificateRow, EventRow, LogEntryRow)}
    groups = Groups(monkeypatch, expected=5)
    real_commit = groupwrite.IssuanceWriter._commit

    def commit(writer: groupwrite.IssuanceWriter, raw: Any, cur: Any) -> None:
        if len(groups.sizes) > 1:
            raise OSError("disk I/O error at COMMIT")
        real_commit(writer, raw, cur)

    monkeypatch.setattr(groupwrite.IssuanceWriter, "_commit", commit)
    out: list[Any] = [None] * 6
    start = threading.Barrier(6)

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = ca.enroll(cs[i], "enterprise", csr_pem(KeyType.P256.generate()))
        except OSError as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert groups.sizes[0] == 1 and groups.sizes[1] == 5
    failed = [i for i, r in enumerate(out) if isinstance(r, OSError)]
    assert len(failed) == 5
    after = {t: count(sessions, t) for t in before}
    assert after == {t: n + 1 for t, n in before.items()}  # only the first, alone
    monkeypatch.setattr(groupwrite.IssuanceWriter, "_commit", real_commit)
    for i in failed:  # their codes were not redeemed
        ca.enroll(cs[i], "enterprise", csr_pem(KeyType.P256.generate()))
    assert count(sessions, CertificateRow) == before[CertificateRow] + 6
    log_matches_events(sessions)


def first_key(rec: Any, serial: int) -> Any:
    """``rec`` as a new certificate (serial, digest) of the same key."""
    import dataclasses

    return dataclasses.replace(rec, serial=serial, cert_sha256=f"{serial:064x}")


def test_a_serial_collision_in_a_group_fails_that_issuance_alone(
    joint: tuple,  # type: ignore[type-arg]
) -> None:
    """Four issuances written as one group, the second reusing a serial already stored and
    the fourth a key already certified: they alone fail (Conflict), the others are stored
    with their events and log entries."""
    import dataclasses

    from ca.records import Event, EventType, IssuanceWrite

    ca, sessions = joint
    first = ca.enroll(codes(ca, 1)[0], "enterprise", csr_pem(KeyType.P256.generate())).record
    before = {t: count(sessions, t) for t in (CertificateRow, EventRow, LogEntryRow)}

    def item(serial: int) -> IssuanceWrite:
        digest = f"{serial:064x}"  # a key of its own: only the serial may collide
        rec = dataclasses.replace(first, serial=serial, cert_sha256=digest, spki_sha256=digest)
        ev = Event.about(EventType.CERTIFICATE_RENEWED, rec, actor="test", at=rec.not_before)
        return IssuanceWrite(rec, ev)

    writer = ca.store._writer
    assert isinstance(writer, groupwrite.IssuanceWriter)
    # The fourth: a new serial for the key the first enrollment holds (one key, one holder).
    same_key = dataclasses.replace(item((1 << 80) + 2), record=first_key(first, (1 << 80) + 2))
    outcomes, _ = writer._write_group(
        [item(1 << 80), item(first.serial), item((1 << 80) + 1), same_key]
    )
    assert isinstance(outcomes[1], Conflict) and "serial" in str(outcomes[1])
    assert isinstance(outcomes[3], Conflict) and "already certified" in str(outcomes[3])
    assert isinstance(outcomes[0], int) and isinstance(outcomes[2], int)
    assert outcomes[2] > outcomes[0]
    assert {t: count(sessions, t) for t in before} == {t: n + 2 for t, n in before.items()}
    log_matches_events(sessions)


@pytest.mark.parametrize("joint", ["sqlite"], indirect=True)
def test_sqlite_wal_is_synced_before_the_certificate_is_returned(
    joint: tuple,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The group commits without syncing and releases the write lock; its WAL is synced
    before any of its issuances returns. A failed sync fails the issuance (no certificate
    is handed out), and the pooled connections keep synchronous=FULL for other writers."""
    import os

    ca, sessions = joint
    c1, c2 = codes(ca, 2)
    synced: list[tuple[str, int, bool]] = []
    returned = False
    real_fsync = os.fdatasync

    def spy(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        # the transaction is committed (another connection sees it), not yet returned
        synced.append((path, count(sessions, CertificateRow), returned))
        real_fsync(fd)

    before = count(sessions, CertificateRow)
    monkeypatch.setattr(os, "fdatasync", spy)
    issued = ca.enroll(c1, "enterprise", csr_pem(KeyType.P256.generate()))
    returned = True
    assert [(Path(p).name, n, r) for p, n, r in synced] == [("eport.db-wal", before + 1, False)]
    assert issued.record.serial_hex
    writer = ca.store._writer
    assert isinstance(writer, groupwrite.IssuanceWriter) and writer._threads is not None
    own = writer._threads.get()  # this thread's: the group wrote on it, set to NORMAL once
    assert own.execute("PRAGMA synchronous").fetchone()[0] == 1

    def failing(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    from ca.errors import NotDurable

    # a 503 that says it may be stored: it is committed, its durability unknown
    with pytest.raises(NotDurable, match=r"Input/output error.*may or may not be"):
        ca.enroll(c2, "enterprise", csr_pem(KeyType.P256.generate()))
    monkeypatch.setattr(os, "fdatasync", real_fsync)

    engine = sessions.kw["bind"]
    raws = [engine.raw_connection() for _ in range(engine.pool.size())]  # every pooled one
    try:
        for raw in raws:
            assert raw.cursor().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        for raw in raws:
            raw.close()


@pytest.mark.parametrize("joint", ["sqlite", "postgres"], indirect=True)
def test_the_first_issuance_of_a_database_creates_the_log_head(
    joint: tuple,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database without a log head yet (nothing logged): the group writer hands the
    issuance to the session's path, which creates the head; the next one is grouped."""
    import dataclasses

    from ca.records import CertificateRecord, Event, EventType, IssuanceWrite

    ca, sessions = joint
    assert count(sessions, LogHeadRow) == 0 and count(sessions, EventRow) == 0
    transactions: list[int] = []
    real = groupwrite.IssuanceWriter._transaction

    def spy(writer: groupwrite.IssuanceWriter, items: Any) -> Any:
        transactions.append(len(items))
        return real(writer, items)

    monkeypatch.setattr(groupwrite.IssuanceWriter, "_transaction", spy)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    base = CertificateRecord(
        serial=1 << 90,
        issuer_id="enterprise",
        profile="enterprise",
        application_id=None,
        uscc=None,
        subject="CN=first",
        spki_sha256="00" * 32,
        cert_sha256="11" * 32,
        not_before=now,
        not_after=now + datetime.timedelta(days=1),
        der=b"\x30\x00",
    )
    for n in range(2):
        digest = f"{n:064x}"
        rec = dataclasses.replace(
            base, serial=base.serial + n, cert_sha256=digest, spki_sha256=digest
        )
        ev = Event.about(EventType.CERTIFICATE_ISSUED, rec, actor="test", at=now)
        ca.store.commit_issuance(IssuanceWrite(rec, ev))
    assert transactions == [1, 1]  # tried twice; the first found no head and fell back
    assert count(sessions, LogHeadRow) == 1 and count(sessions, LogEntryRow) == 2
    log_matches_events(sessions)


def test_a_real_server_answers_no_issuance_before_its_flush(tmp_path: Path) -> None:
    """``eport serve`` with 2 workers (gthread), enrollments at once from 8 clients: once
    every answer is in, the shared counts say every counted commit was flushed (each
    writer flushed, or found its commit covered, before answering), and every certificate
    answered is stored."""
    import struct

    from sqlalchemy import create_engine

    from tests.conftest import start_server, stop
    from tests.test_audit_cli import enroll_concurrently

    counts = tmp_path / "data" / "eport.db.walsync"
    server, proc = start_server(tmp_path / "data", workers=2)
    try:
        before, _ = struct.unpack("=QQ", counts.read_bytes())  # the dev officers' issuances
        issued = enroll_concurrently(server, 12)
    finally:
        stop(proc)
    committed, synced = struct.unpack("=QQ", counts.read_bytes())
    assert 1 <= committed - before <= len(issued)  # one count per group commit
    assert synced == committed
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            stored = set(conn.exec_driver_sql("SELECT serial FROM certificates").scalars())
    finally:
        engine.dispose()
    assert {i["serial"] for i in issued} <= stored


def test_a_flush_that_fails_after_the_commit_is_not_called_a_full_disk() -> None:
    """The group is committed before its WAL is flushed: an fdatasync's ENOSPC there was
    a 507 (storage-full), which the CLI reads as "nothing was issued" (review, session
    27). It is a 503 that says the write may be stored."""
    import errno
    import types

    from ca.errors import NotDurable, storage_full_cause

    class Failing:
        def sync(self, seq: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    writer = types.SimpleNamespace(wal_sync=Failing())
    with pytest.raises(NotDurable, match="may or may not be stored") as failed:
        groupwrite.IssuanceWriter._settle(writer, 7)  # type: ignore[arg-type]
    assert storage_full_cause(failed.value) is None
