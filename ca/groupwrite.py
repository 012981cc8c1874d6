"""Group commit of issuances: many certificates, one transaction, one ``COMMIT``.

Every issuance writes, in one transaction, the code's redemption (enrollment), the
certificate, its event and the event's entry in the Merkle log. Written one by one,
each pays for a ``BEGIN``, the log head's lock, a ``COMMIT`` and its fsync, and the
writers of all worker processes queue, one at a time, for the database's single write
lock. :class:`GroupCommit` lets the issuances that are ready at the same moment share
all of that: the first thread to arrive becomes the leader; once it holds the host's
write lock it writes everything queued by then, so the threads that arrived while it
waited for the lock are in its group; those that arrive while it writes are the next
leader's, which may wait for the lock while this group's write-ahead log is flushed.

Each issuance of a group is written in its own savepoint, so one that fails (a code
redeemed meanwhile, a serial collision) rolls back alone and gets its own error, while
the others commit. The log entries of the group are appended after the last savepoint,
in one pass over the tree. No thread returns before the ``COMMIT`` of its group is
durable: a certificate is never handed out before it, its event and its log entry are
on disk, and if the ``COMMIT`` fails, every issuance of the group fails with nothing
stored.

On SQLite the group commits with ``synchronous=NORMAL`` (SQLite writes the WAL but does
not sync it at ``COMMIT``), releases the write lock, and then has the write-ahead log
synced (:class:`WalSync`): the next group does not wait for this one's disk flush while
holding the lock. The writers of a host share their flushes: one covers every group
committed before it began, so a group that another process's flush covered returns
without one of its own. If the sync fails, every issuance of the group fails too; its
rows may then be stored without a certificate having been handed out, as when a client
loses the answer. Durability is prefix-closed: the WAL is one file written in order, so
a flush that covers a transaction covers every transaction committed before it, and
SQLite syncs the WAL before it checkpoints frames into the database (and the database
after), so frames a checkpoint moved are durable already. Other writers keep
``synchronous=FULL``.

:class:`HostLock` queues this host's writers of a SQLite file on an ``flock`` before
they ask SQLite for its write lock: a writer that finds SQLite's lock taken sleeps 1, 2,
5, 10 … ms and retries, leaving the CPU idle under load, while the kernel wakes the next
``flock`` waiter the moment it is released. (Other writers, such as the CLI, still wait
on SQLite's busy timeout, as before; PostgreSQL queues on the log head's row lock.)
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine

from ca import translog
from ca.errors import Conflict, InvalidCode, opened_read_only
from ca.models import CertificateRow
from ca.names import dn_key
from ca.records import (
    CODE_USED,
    KEY_CERTIFIED,
    Event,
    IssuanceWrite,
    StatusState,
    code_refusal,
    credential_refusal,
    held_enterprise_refusal,
    same_name_refusal,
    signer_refusal,
)
from ca.store import (
    StoredEvent,
    ThreadConnections,
    code_of,
    release_broken,
    sqlite_file,
    utc_from_db,
)

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K")

MAX_GROUP = 64
"""Issuances written in one transaction at most (the rest wait for the next one)."""


class _Slot(Generic[T, R]):
    __slots__ = ("done", "error", "item", "result", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None
        self.wake = threading.Lock()  # released once: the item is done, or it is to lead
        self.wake.acquire()


class GroupCommit(Generic[T, R, K]):
    """Leader-based group commit inside one process (framework-free).

    ``write(items)`` writes a group in one transaction and returns, per item, its result
    or the exception it failed with, and a token for ``settle`` (an exception it raises
    fails the whole group). :meth:`submit` returns the item's result or raises its
    exception once its group is written and settled.

    The leader enters ``gate`` (a lock among writers, e.g. :class:`HostLock`) first and
    only then takes the queue as its group: the callers that arrive while it waits for
    the gate join its group rather than the next one. It hands the lead on when it leaves
    the gate, so the next group can wait for the gate while this one runs ``settle(token)``
    (e.g. a disk flush, which may fail the whole group). Each waiting thread sleeps on a
    lock of its own and is woken once, to lead or because its item is done, so a group
    wakes its members and no one else. With one thread per process every group is a
    single item.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], tuple[Sequence[R | BaseException], K]],
        *,
        gate: Callable[[], AbstractContextManager[object]] = nullcontext,
        settle: Callable[[K], object] = lambda _token: None,
        max_group: int = MAX_GROUP,
    ) -> None:
        self._write = write
        self._gate = gate
        self._settle = settle
        self._max = max_group
        self._mutex = threading.Lock()
        self._queue: list[_Slot[T, R]] = []
        self._leading = False

    def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._mutex:
            self._queue.append(slot)
            lead = not self._leading
            self._leading = True
        while not slot.done:
            if lead:
                self._lead()  # its group may have left this item queued (max_group)
                lead = False
            else:
                slot.wake.acquire()
                lead = True  # woken: done (the loop ends) or handed the lead
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self) -> None:
        group: list[_Slot[T, R]] = []
        outcomes: Sequence[R | BaseException] = []
        settling = False
        token: K | None = None
        try:
            with self._gate():
                group = self._take()
                outcomes, token = self._write([s.item for s in group])
                if len(outcomes) != len(group):
                    raise RuntimeError("group write returned the wrong number of outcomes")
                settling = True
        except BaseException as exc:  # the whole group failed: each gets the error
            group = group or self._take()
            outcomes = [exc] * len(group)
        finally:
            self._hand_on()
        if settling:
            try:
                self._settle(token)  # type: ignore[arg-type]
            except BaseException as exc:
                outcomes = [exc] * len(group)
        for slot, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                slot.error = outcome
            else:
                slot.result = outcome
            slot.done = True
            slot.wake.release()

    def _take(self) -> list[_Slot[T, R]]:
        """The queue's first items, as this leader's group."""
        with self._mutex:
            group, self._queue = self._queue[: self._max], self._queue[self._max :]
        return group

    def _hand_on(self) -> None:
        """Wake the first queued caller to lead the next group, or give the lead up."""
        with self._mutex:
            if self._queue:
                self._queue[0].wake.release()
            else:
                self._leading = False


class HostLock:
    """An exclusive lock among this host's processes and threads: an ``flock`` on
    ``path`` (one open file per process, opened anew after a fork), or nothing when
    ``path`` is None."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0
        self._threads = threading.Lock()

    def fd(self) -> int:
        """This process's open file of ``path``."""
        assert self.path is not None
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        with self._threads:
            fd = self.fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


class WalSync:
    """The flushes of one SQLite write-ahead log, shared by this host's writers.

    A flush of the WAL makes durable every frame written to it before the flush began,
    whichever process wrote it. Writers count their commits in a small shared file
    (``state``, two 64-bit counters, memory-mapped): :meth:`committed` is called under
    the write lock right after a ``COMMIT`` and returns that commit's number;
    :meth:`sync` makes commit ``seq`` durable. The syncing writers queue on a
    :class:`HostLock` of the same file: the first reads how many commits there are,
    flushes, and records that number as synced; a writer it covered finds its number
    synced when its turn comes and returns without flushing. While one flush runs, the
    commits that land meanwhile are covered by the next one alone.

    The counters only grow: a commit counted is in the WAL (its ``write`` returned), and
    ``synced`` is only raised to a count read before a flush that then succeeded. After a
    crash the file keeps its counts, and a new commit's number is above every synced one.
    The counters are aligned 64-bit words, each written by one process at a time (the
    commit count under the write lock, the synced count under the sync lock); a reader
    of the commit count takes it once two reads agree.
    """

    def __init__(self, wal: Path, state: Path) -> None:
        # Flushed: the WAL, or, when it is gone, the database it was checkpointed to.
        self._files = (wal, wal.with_name(wal.name.removesuffix("-wal")))
        self._queue = HostLock(state)
        self._pid = 0
        self._counts: tuple[ctypes.c_uint64, ctypes.c_uint64] | None = None

    def _counters(self) -> tuple[ctypes.c_uint64, ctypes.c_uint64]:
        """(commits, synced), mapped from the state file in this process."""
        if self._counts is None or self._pid != os.getpid():
            fd = self._queue.fd()
            if os.fstat(fd).st_size < 16:
                os.ftruncate(fd, 16)  # zeros: nothing committed, nothing synced
            shared = mmap.mmap(fd, 16)
            self._counts = (
                ctypes.c_uint64.from_buffer(shared, 0),
                ctypes.c_uint64.from_buffer(shared, 8),
            )
            self._pid = os.getpid()
        return self._counts

    def committed(self) -> int:
        """Count a commit just made (call under the write lock); its number."""
        commits, _ = self._counters()
        commits.value += 1
        return commits.value

    def sync(self, seq: int) -> bool:
        """Return once commit ``seq`` is durable; whether this call flushed the WAL."""
        with self._queue.held():
            commits, synced = self._counters()
            if synced.value >= seq:
                return False  # a flush that began after our commit has ended
            target = commits.value
            while (again := commits.value) != target:
                target = again
            self._flush()
            if target > synced.value:
                synced.value = target
            return True

    def _flush(self) -> None:
        """``fdatasync``, as SQLite itself syncs its files on Linux: the data and the
        metadata needed to read it back (the size), not the modification time."""
        for path in self._files:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # no WAL: every frame was checkpointed (and synced) already
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            return


class _NoLogHead(Exception):
    """The log has no head row yet: its first append goes the session's way, which
    creates it (and logs the events that predate the log)."""


_REDEEM = (
    "UPDATE enrollment_codes SET used_at = ?"
    " WHERE code_hash = ? AND used_at IS NULL AND withdrawn_at IS NULL AND expires_at > ?"
)
_FIND_CODE = (
    "SELECT code_hash, application_id, profiles, expires_at, used_at, withdrawn_at"
    " FROM enrollment_codes WHERE code_hash = ?"
)
_KEY_HELD = "SELECT 1 FROM certificates WHERE spki_sha256 = ? LIMIT 1"
_STATUS_OF = "SELECT state FROM certificate_status WHERE serial = ?"
_CREDENTIAL_IN_FORCE = (
    "SELECT c.serial, c.not_after, s.state, c.issuer_id FROM certificates c"
    " LEFT JOIN certificate_status s ON s.serial = c.serial"
    " WHERE c.uscc = ? AND c.profile = ? AND c.not_after > ? AND c.serial <> ?"
    " AND (s.state IS NULL OR s.state <> ?)"
    " ORDER BY c.not_after DESC, COALESCE(c.log_index, -1) DESC"
)
"""An enterprise's legal-person certificates in force (a few rows at most), the
longest-lasting first; those of generations revoked on the root CRL are passed over."""
_NAMED_IN_FORCE = (
    "SELECT c.serial, c.subject, c.not_after, c.issuer_id FROM certificates c"
    " LEFT JOIN certificate_status s ON s.serial = c.serial"
    " WHERE c.uscc IS NULL AND c.profile = ? AND c.not_after > ?"
    " AND (s.state IS NULL OR s.state <> ?)"
)
"""A profile's staff certificates in force (every member agency's: some hundreds, read
only for an enrollment of agency staff), compared by name in Python: SQL folds no
look-alike forms (:meth:`ca.store.SqlTransaction.named_in_force`)."""
_INSERT_CERT = (
    "INSERT INTO certificates (serial, issuer_id, profile, application_id, uscc, subject,"
    " spki_sha256, cert_sha256, not_before, not_after, der, created_at, log_index)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENT = (
    "INSERT INTO events (at, type, actor, uscc, subject, profile, issuer, serial,"
    " cert_sha256, application_id, details, log_index)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
)


class IssuanceWriter:
    """Writes :class:`IssuanceWrite` items by group commit on raw DBAPI connections of
    ``engine`` (SQLite or PostgreSQL), appending their events to the Merkle log.

    ``fallback`` writes one item the session's way; it is used while the log has no head
    row (a database's very first log append). ``log=False``: no Merkle log (a store
    without event sinks, as some tests build). ``connections``: the per-thread SQLite
    connections the store reads on (a file database); else a pooled connection per
    group."""

    def __init__(
        self,
        engine: Engine,
        fallback: Callable[[IssuanceWrite], int],
        *,
        log: bool = True,
        connections: ThreadConnections | None = None,
    ) -> None:
        self._engine = engine
        self._fallback = fallback
        self._log = log
        self._sqlite = engine.dialect.name == "sqlite"
        self._qmark = engine.dialect.paramstyle == "qmark"
        on_disk = sqlite_file(engine)
        database = engine.url.database
        self.lock = HostLock(Path(f"{database}.writelock") if on_disk else None)
        self.wal_sync = (
            WalSync(Path(f"{database}-wal"), Path(f"{database}.walsync")) if on_disk else None
        )
        self._threads = connections if on_disk else None
        dt = CertificateRow.__table__.c.not_before.type.bind_processor(engine.dialect)
        self._dt: Callable[[Any], Any] = dt or (lambda v: v)
        self._integrity: type[Exception] = engine.dialect.dbapi.IntegrityError  # type: ignore[union-attr]
        # the statements in the driver's placeholders
        self._redeem_sql = translog.driver_text(_REDEEM, self._qmark)
        self._find_code_sql = translog.driver_text(_FIND_CODE, self._qmark)
        self._key_held_sql = translog.driver_text(_KEY_HELD, self._qmark)
        self._status_sql = translog.driver_text(_STATUS_OF, self._qmark)
        self._credential_sql = translog.driver_text(_CREDENTIAL_IN_FORCE, self._qmark)
        self._named_sql = translog.driver_text(_NAMED_IN_FORCE, self._qmark)
        self._insert_cert_sql = translog.driver_text(_INSERT_CERT, self._qmark)
        self._insert_event_sql = translog.driver_text(_INSERT_EVENT, self._qmark)
        self._tuned = threading.local()  # the connection this thread set synchronous on
        self._group: GroupCommit[IssuanceWrite, int, int | None] = GroupCommit(
            self._write_group, gate=self.lock.held, settle=self._settle
        )

    def commit(self, item: IssuanceWrite) -> int:
        """Store ``item`` durably; its event id. Raises :class:`InvalidCode` when the code
        was redeemed or expired meanwhile, :class:`Conflict` on a serial collision."""
        return self._group.submit(item)

    def _write_group(
        self, items: Sequence[IssuanceWrite]
    ) -> tuple[list[int | BaseException], int | None]:
        """Write a group (under the host's write lock): the outcomes, and on SQLite the
        commit's number, which :meth:`_settle` makes durable before anyone is answered."""
        try:
            return self._transaction(items)
        except _NoLogHead:
            pass
        out: list[int | BaseException] = []
        for item in items:
            try:
                out.append(self._fallback(item))
            except Exception as exc:
                out.append(exc)
        return out, None

    def _settle(self, seq: int | None) -> None:
        if seq is None or self.wal_sync is None:
            return
        try:
            self.wal_sync.sync(seq)
            return
        except OSError as exc:
            why = exc.strerror or str(exc)
        # After the COMMIT: the group is written, its durability unknown. Said as a
        # database that could not answer (503: the change may have been made), never as a
        # full disk's 507, which says nothing was (review, session 27: an fdatasync's
        # ENOSPC told the CLI nothing was issued). Raised outside the handler: the OSError
        # is not its context, where storage_full_cause would find a full disk.
        from ca.errors import NotDurable

        raise NotDurable(
            f"the database committed the write but could not make it durable ({why}); it "
            "may or may not be stored: look before sending it again"
        )

    def _transaction(
        self, items: Sequence[IssuanceWrite]
    ) -> tuple[list[int | BaseException], int | None]:
        """Write ``items`` in one transaction and commit it: the outcomes, and on SQLite the
        commit's number for :meth:`WalSync.sync` (the commit is not durable before it)."""
        if self._threads is not None:
            # This thread's own connection (the store's reads use it too).
            conn = self._threads.get()
            try:
                return self._write(conn, conn.cursor(), items)
            except BaseException as exc:
                try:
                    conn.rollback()
                except BaseException:
                    self._threads.drop()
                else:
                    if opened_read_only(exc):  # never writable again: the next one is
                        self._threads.drop()
                raise
        raw = self._engine.raw_connection()
        try:
            return self._write(raw, raw.cursor(), items)
        except BaseException as exc:
            release_broken(raw, exc)
            raise
        finally:
            raw.close()  # back to the pool (an invalidated one is discarded)

    def _write(
        self, raw: Any, cur: Any, items: Sequence[IssuanceWrite]
    ) -> tuple[list[int | BaseException], int | None]:
        if self._threads is not None and getattr(self._tuned, "conn", None) is not raw:
            # The COMMIT writes the WAL without syncing it; WalSync.sync does, after the
            # write lock is released (see the module's notes). These connections commit
            # nothing else: the reads on them never write. Set once per connection.
            cur.execute("PRAGMA synchronous=NORMAL")
            self._tuned.conn = raw
        if self._sqlite:
            cur.execute("BEGIN IMMEDIATE")
        sql = translog.CursorSql(cur, self._qmark)
        size = translog.lock_head_sql(sql, for_update=not self._sqlite) if self._log else 0
        if size is None:
            raise _NoLogHead
        out: list[int | BaseException] = []
        events: list[StoredEvent] = []
        # Each event row is written with the leaf its entry gets: the locked head's size
        # plus the events of this group stored before it (a failed item stores none).
        if len(items) == 1:  # alone: its failure is the transaction's
            events.append(self._write_one(cur, items[0], size if self._log else None))
            out.append(events[0].id)
        else:
            for item in items:
                cur.execute("SAVEPOINT eport_issue")
                try:
                    stored = self._write_one(cur, item, size + len(events) if self._log else None)
                except Exception as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT eport_issue")
                    out.append(exc)
                else:
                    events.append(stored)
                    out.append(stored.id)
                cur.execute("RELEASE SAVEPOINT eport_issue")
        if events and self._log:
            translog.append_entries(sql, size, events)
        self._commit(raw, cur)
        cur.close()
        return out, (self.wal_sync.committed() if self.wal_sync is not None else None)

    def _commit(self, raw: Any, cur: Any) -> None:
        if self._sqlite:
            cur.execute("COMMIT")
        else:
            raw.commit()

    def _write_one(self, cur: Any, item: IssuanceWrite, log_index: int | None) -> StoredEvent:
        dt = self._dt
        if item.code_hash is not None:
            assert item.now is not None, "a redemption carries its time"
            now = dt(item.now)
            cur.execute(self._redeem_sql, (now, item.code_hash, now))
            if cur.rowcount != 1:
                # Checked before signing, so another redemption or a withdrawal came first.
                cur.execute(self._find_code_sql, (item.code_hash,))
                row = cur.fetchone()
                found = code_of(row) if row is not None else None
                raise code_refusal(found, item.now) or InvalidCode(CODE_USED)
        if item.signed_by is not None:
            # A revocation or hold committed since the request was checked refuses it; one
            # committing later waits for this group (it appends to the log after it).
            cur.execute(self._status_sql, (format(item.signed_by, "x"),))
            status = cur.fetchone()
            if status is not None:
                raise signer_refusal(item.signed_by, status[0])
        rec = item.record
        # One key, one holder: checked before signing, when another issuance of the same
        # key may still be in flight; decided here, where the groups are one at a time.
        cur.execute(self._key_held_sql, (rec.spki_sha256,))
        if cur.fetchone() is not None:
            raise Conflict(KEY_CERTIFIED)
        if item.sole_credential and rec.uscc is not None:
            self._refuse_second_credential(cur, item, rec.uscc)
        if item.sole_name:
            self._refuse_same_name(cur, item)
        if item.enterprise_not_held and rec.uscc is not None:
            self._refuse_held_enterprise(cur, item, rec.uscc)
        try:
            cur.execute(
                self._insert_cert_sql,
                (
                    rec.serial_hex,
                    rec.issuer_id,
                    rec.profile,
                    rec.application_id,
                    rec.uscc,
                    rec.subject,
                    rec.spki_sha256,
                    rec.cert_sha256,
                    dt(rec.not_before),
                    dt(rec.not_after),
                    rec.der,
                    dt(rec.created_at or rec.not_before),
                    log_index,  # its listing key: its event's leaf (ca/models.py)
                ),
            )
        except self._integrity as exc:
            raise Conflict("serial number collision; nothing was issued") from exc
        return self._insert_event(cur, item.event, log_index)

    def _refuse_second_credential(self, cur: Any, item: IssuanceWrite, uscc: str) -> None:
        """One legal-person credential per enterprise (:attr:`IssuanceWrite.sole_credential`):
        decided here, as the key's holder is, where groups are written one at a time (the
        host's lock and ``BEGIN IMMEDIATE`` on SQLite, the log head's row lock on
        PostgreSQL) and each item of a group sees the ones stored before it."""
        assert item.now is not None, "an enrollment or renewal carries its time"
        now = self._dt(item.now)
        signer = "" if item.signed_by is None else format(item.signed_by, "x")
        for profile in item.sole_credential:
            cur.execute(
                self._credential_sql, (uscc, profile, now, signer, StatusState.REVOKED.value)
            )
            row = next((r for r in cur.fetchall() if r[3] not in item.void_issuers), None)
            if row is not None:
                not_after = utc_from_db(row[1])
                assert not_after is not None
                raise credential_refusal(
                    uscc, row[0], not_after, on_hold=row[2] is not None, renewing=item.signed_by
                )

    def _refuse_held_enterprise(self, cur: Any, item: IssuanceWrite, uscc: str) -> None:
        """An operator's enrollment while its enterprise's legal-person credential is on
        hold (:attr:`IssuanceWrite.enterprise_not_held`): decided here, as the status
        changes are ordered with the groups (a hold appends to the log after them)."""
        assert item.now is not None, "an enrollment carries its time"
        now = self._dt(item.now)
        for profile in item.enterprise_not_held:
            cur.execute(self._credential_sql, (uscc, profile, now, "", StatusState.REVOKED.value))
            # the one credential in force that lasts longest, as the check before signing
            # and the session path read it (Transaction.credential_in_force): a renewal's
            # old certificate on hold does not hold its operators (review, session 27)
            row = next((r for r in cur.fetchall() if r[3] not in item.void_issuers), None)
            if row is not None and row[2] is not None:
                raise held_enterprise_refusal(uscc, row[0])

    def _refuse_same_name(self, cur: Any, item: IssuanceWrite) -> None:
        """The one-name rule of a member agency's staff (:attr:`IssuanceWrite.sole_name`),
        decided here as :meth:`_refuse_second_credential` decides an enterprise's."""
        assert item.now is not None, "an enrollment carries its time"
        wanted = dn_key(item.record.subject)
        for profile in item.sole_name:
            cur.execute(self._named_sql, (profile, self._dt(item.now), StatusState.REVOKED.value))
            for serial, subject, not_after, issuer_id in cur.fetchall():
                if dn_key(subject) == wanted and issuer_id not in item.void_issuers:
                    ends = utc_from_db(not_after)
                    assert ends is not None
                    raise same_name_refusal(item.record.subject, subject, serial, profile, ends)

    def _insert_event(self, cur: Any, ev: Event, log_index: int | None) -> StoredEvent:
        serial = format(ev.serial, "x") if ev.serial is not None else None
        details = json.dumps(dict(ev.details), sort_keys=True, ensure_ascii=False)
        values = (
            ev.at,
            ev.type.value,
            ev.actor,
            ev.uscc,
            ev.subject,
            ev.profile,
            ev.issuer,
            serial,
            ev.cert_sha256,
            ev.application_id,
            details,
            log_index,
        )
        cur.execute(self._insert_event_sql, (self._dt(ev.at), *values[1:]))
        (event_id,) = cur.fetchone()
        return StoredEvent(int(event_id), *values)
