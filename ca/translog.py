"""The issuance transparency log in SQL: tree storage, the append sink, signed checkpoints.

The storage adapter of the framework-free pieces: :mod:`ca.merkle` (RFC 9162 §2.1
tree over a :class:`~ca.merkle.TreeStore`), :mod:`ca.checkpoint` (C2SP
tlog-checkpoint and signed-note) and :mod:`ca.logentry` (the entry bytes).

* :class:`SqlTreeStore` keeps the perfect-subtree hashes in ``log_nodes``; every
  :meth:`~SqlTreeStore.get_many` is one ``SELECT``.
* :func:`append_event` is the :data:`ca.store.EventSink`: it runs inside the
  transaction that records a change, right after the event row is flushed, so the
  change, its event and its log entry commit together or not at all. Appends are
  serialized across processes and hosts by a row lock on the single ``log_head``
  row (``SELECT … FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` serializes writers
  anyway), and the primary keys of ``log_entries`` and ``log_nodes`` turn a missed
  lock into a failed transaction rather than a forked tree.
* :class:`CheckpointSigner` signs tree heads, one checkpoint per tree size
  (``checkpoints`` is keyed by size): it refuses to sign a second root for a size
  it signed before.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session

from ca import logentry
from ca.checkpoint import Checkpoint, NoteKey, add_root_signature, sign_note, verifier_key
from ca.errors import Conflict, EPortError, Sealed
from ca.merkle import EMPTY_ROOT, MerkleTree, NodeKey
from ca.models import CheckpointRow, EventRow, HierarchyFileRow, LogEntryRow, LogHeadRow
from ca.store import StoredEvent

__all__ = [
    "HANDOVER",
    "HEAD_ID",
    "LOG_KEY_CEREMONIES",
    "REPLACED",
    "CheckpointSigner",
    "ConnectionSql",
    "CursorSql",
    "DriverSql",
    "ForkRefused",
    "LogCorrupted",
    "LogKeyRetired",
    "SignedHead",
    "SqlTreeStore",
    "append_entries",
    "append_event",
    "append_events",
    "check_log_key",
    "driver_text",
    "entry_of",
    "handovers",
    "lock_head_sql",
    "log_key_pem",
    "origin_for",
    "read_head",
    "tree_at",
]

HEAD_ID = 1
"""The key of the single ``log_head`` row."""

HANDOVER = "log-key-successor "
"""A hand-over checkpoint's extension line (C2SP tlog-checkpoint) starts with this, then
the verifier key of the log's next key: :meth:`CheckpointSigner.hand_over`."""

REPLACED = "log-key-replaced "
"""A replacement checkpoint's second extension line starts with this, then the verifier
key of the log key it retires without that key's signature (lost or compromised): the
joint root CA's key signs it instead (:meth:`CheckpointSigner.replace`)."""

LOG_KEY_CEREMONIES = ("ROTATE-LOG-KEY", "REPLACE-LOG-KEY")
"""The ceremonies that end with a hand-over checkpoint (:func:`handovers`)."""

Clock = Callable[[], datetime.datetime]


class ForkRefused(Conflict):
    """The log was asked to sign a second, different root for a tree size it signed before."""

    slug = "checkpoint-fork-refused"
    title = "Refused to sign two roots for one tree size"


class LogKeyRetired(EPortError):
    """This host's log key is not the one the database's hierarchy record names: another
    host rotated it (``ROTATE-LOG-KEY``) and this host has not been given the new one."""

    status = 503
    slug = "log-key-retired"
    title = "This host's log key was rotated elsewhere"


class LogCorrupted(EPortError):
    """The stored log contradicts itself (a head, node or entry changed or went missing)."""

    status = 500
    slug = "log-corrupted"
    title = "The stored transparency log is inconsistent"


def origin_for(public_base_url: str) -> str:
    """The log's origin line and key name: ``<host>[:port][/path]/log`` (C2SP tlog-checkpoint).

    Derived from the CA's public base URL, which certificates already carry (AIA), so
    it is as stable as the CA's name.
    """
    parts = urlsplit(public_base_url)
    host = parts.netloc or parts.path
    return f"{host}{parts.path if parts.netloc else ''}".rstrip("/") + "/log"


class DriverSql(Protocol):
    """Statements straight to the database driver, ``?`` placeholders adapted by the caller
    (:func:`driver_text`): integers and bytes only, which need no conversion by
    SQLAlchemy's types. Implemented over a SQLAlchemy connection and over a DBAPI cursor
    (the group-commit writer of :mod:`ca.groupwrite`)."""

    qmark: bool

    def rows(self, sql: str, params: tuple[Any, ...], /) -> Iterable[Sequence[Any]]: ...

    def run(self, sql: str, params: Any, /) -> None:
        """Execute ``sql`` (``executemany`` when ``params`` is a list)."""
        ...


class ConnectionSql:
    """:class:`DriverSql` over a SQLAlchemy connection (``exec_driver_sql``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.qmark = conn.dialect.paramstyle == "qmark"

    def rows(self, sql: str, params: tuple[Any, ...], /) -> Iterable[Sequence[Any]]:
        return self._conn.exec_driver_sql(sql, params)

    def run(self, sql: str, params: Any, /) -> None:
        self._conn.exec_driver_sql(sql, params)


class CursorSql:
    """:class:`DriverSql` over a DBAPI cursor."""

    def __init__(self, cursor: Any, qmark: bool) -> None:
        self._cur = cursor
        self.qmark = qmark

    def rows(self, sql: str, params: tuple[Any, ...], /) -> Iterable[Sequence[Any]]:
        self._cur.execute(sql, params)
        return self._cur.fetchall()  # type: ignore[no-any-return]

    def run(self, sql: str, params: Any, /) -> None:
        if isinstance(params, list):
            self._cur.executemany(sql, params)
        else:
            self._cur.execute(sql, params)


@functools.cache
def driver_text(sql: str, qmark: bool) -> str:
    """``sql`` written with ``?`` placeholders in the driver's own (``%s`` for psycopg2)."""
    return sql if qmark else sql.replace("?", "%s")


class SqlTreeStore:
    """A :class:`ca.merkle.TreeStore` over ``log_nodes``, in one SQLAlchemy session (or on
    any :class:`DriverSql`).

    ``size`` is the tree size this store stands for: the locked head's size when
    appending, or a checkpoint's size when proving. Left out, it is read from
    ``log_head`` once. Nodes read or written are remembered for the life of the store
    (they never change), so the root after an append costs no further query.
    """

    def __init__(
        self, source: Session | scoped_session[Session] | DriverSql, size: int | None = None
    ) -> None:
        # A session (plain or Flask-SQLAlchemy's scoped one), or driver SQL already.
        if isinstance(source, Session | scoped_session):
            self._sql: DriverSql = ConnectionSql(source.connection())
        else:
            self._sql = source
        self._size = size
        self._known: dict[NodeKey, bytes] = {}

    def size(self) -> int:
        if self._size is None:
            self._size = _head(self._sql)[0]
        return self._size

    def get_many(self, keys: Sequence[NodeKey], /) -> list[bytes]:
        known = self._known
        missing = [key for key in dict.fromkeys(keys) if key not in known]
        if missing:
            sql = _select_nodes(len(missing), self._sql.qmark)
            params = tuple(n for key in missing for n in key)
            for level, idx, digest in self._sql.rows(sql, params):
                known[(int(level), int(idx))] = bytes(digest)
        try:
            return [known[key] for key in keys]
        except KeyError as exc:
            raise LookupError(f"no stored node at (level, index) {exc.args[0]}") from None

    def put_many(self, items: Sequence[tuple[int, int, bytes]], /) -> None:
        if not items:
            return
        _insert_rows(self._sql, _INSERT_NODES, list(items))
        size = self.size()
        for level, idx, digest in items:
            self._known[(level, idx)] = digest
            if level == 0 and idx >= size:
                size = idx + 1
        self._size = size


_INSERT_NODES = "INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)"
_INSERT_ENTRIES = "INSERT INTO log_entries (idx, event_id, entry) VALUES (?, ?, ?)"
_SET_LOG_INDEX = "UPDATE events SET log_index = ? WHERE id = ?"
_MOVE_HEAD = f"UPDATE log_head SET size = ?, root_hash = ? WHERE id = {HEAD_ID}"  # noqa: S608
_READ_HEAD = f"SELECT size, root_hash FROM log_head WHERE id = {HEAD_ID}"  # noqa: S608
_SELECT_SIZE = f"SELECT size FROM log_head WHERE id = {HEAD_ID}"  # noqa: S608
_SELECT_SIZE_FOR_UPDATE = _SELECT_SIZE + " FOR UPDATE"
_CREATE_HEAD = insert(LogHeadRow).values(id=HEAD_ID, size=0, root_hash=EMPTY_ROOT)


_MANY_ROWS = 64
"""From this many rows on, :func:`_insert_rows` writes multi-row statements (PostgreSQL)."""
_ROWS_PER_STATEMENT = 500
"""Rows per multi-row ``INSERT`` (1,500 parameters: far below every driver's limit)."""


def _insert_rows(sql: DriverSql, insert: str, rows: list[tuple[Any, ...]]) -> None:
    """Run ``insert`` (``INSERT … VALUES (?, …)``, ``?`` placeholders) for each of ``rows``.

    A few rows (an issuance group's) go by ``executemany``, as do any number on SQLite,
    whose driver runs them in process. Many on PostgreSQL (a cessation's thousands of log
    entries and nodes) go as multi-row ``VALUES`` lists: psycopg2's ``executemany`` makes
    one round trip per row."""
    if not rows:
        return
    if sql.qmark or len(rows) < _MANY_ROWS:
        sql.run(driver_text(insert, sql.qmark), rows if len(rows) > 1 else rows[0])
        return
    head, _, one = insert.rpartition(" VALUES ")
    for i in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[i : i + _ROWS_PER_STATEMENT]
        statement = head + " VALUES " + ", ".join([one] * len(chunk))
        # Only placeholders go into the text; the values are bound parameters.
        sql.run(statement.replace("?", "%s"), tuple(v for row in chunk for v in row))


@functools.cache
def _select_nodes(count: int, qmark: bool) -> str:
    """One SELECT of ``count`` nodes: ``(level = ? AND idx = ?) OR …``, in the driver's
    placeholders (integers in, bytes out: no type conversion needed).

    Not a row-value IN list: SQLite scans the whole table for that, while it answers
    an OR of equalities with one primary-key search per key, as PostgreSQL does. The
    statement text depends only on ``count`` (at most ``2·log2 n``), so it is built
    once per count (and the driver's statement cache keeps it prepared).
    """
    mark = "?" if qmark else "%s"
    terms = " OR ".join([f"(level = {mark} AND idx = {mark})"] * count)
    # Only placeholders go into the text; the values are bound parameters.
    return f"SELECT level, idx, hash FROM log_nodes WHERE {terms}"  # noqa: S608


def _head(sql: DriverSql) -> tuple[int, bytes]:
    for size, root in sql.rows(_READ_HEAD, ()):
        return int(size), bytes(root)
    return 0, EMPTY_ROOT


def read_head(session: Session) -> tuple[int, bytes]:
    """``(size, root)`` of the log as committed (no lock); ``(0, SHA-256())`` before any entry."""
    return _head(ConnectionSql(session.connection()))


def tree_at(session: Session, size: int | None = None) -> MerkleTree:
    """The tree as of ``size`` (default: the head), for roots and proofs."""
    return MerkleTree(SqlTreeStore(session, size))


def lock_head(session: Session) -> int:
    """Lock the head row for the rest of this transaction; its size. Call it before this
    transaction writes any event: a database whose log has no head yet gets one here, with
    every event made before the log (as :func:`append_events` does).

    Every issuance takes this lock first (:class:`ca.groupwrite.IssuanceWriter`); a
    transaction that then changes codes or certificates an issuance also writes takes it
    before them too, so that the two never wait on each other's rows (a deadlock)."""
    return _lock_head(session, ())


def _lock_head(session: Session, appending: Sequence[int]) -> int:
    """Lock the head row for this transaction; its size. When there is none, create it
    and log every event made before the log, in event order, except ``appending`` (the
    caller's own, appended next)."""
    conn = session.connection()
    sql, for_update = ConnectionSql(conn), conn.dialect.name != "sqlite"
    size = lock_head_sql(sql, for_update)
    if size is not None:
        return size
    # The first append of a database: insert the head in a savepoint, so that a
    # concurrent first append that wins the primary key only costs us a retry.
    try:
        with session.begin_nested():
            session.connection().execute(_CREATE_HEAD)
    except IntegrityError:
        pass
    size = lock_head_sql(sql, for_update)
    assert size is not None
    if size == 0:
        logged = select(LogEntryRow.event_id)
        earlier = session.scalars(
            select(EventRow)
            .where(EventRow.id.not_in(appending), EventRow.id.not_in(logged))
            .order_by(EventRow.id)
        ).all()
        if earlier:
            size = append_entries(ConnectionSql(session.connection()), 0, earlier).stop
    return size


def lock_head_sql(sql: DriverSql, for_update: bool) -> int | None:
    """The head's size, locked for this transaction (``FOR UPDATE`` where the database has
    row locks; SQLite's ``BEGIN IMMEDIATE`` already holds the only write lock); None when
    the log has no head yet (the first append creates it: :func:`append_events`)."""
    for (size,) in sql.rows(_SELECT_SIZE_FOR_UPDATE if for_update else _SELECT_SIZE, ()):
        return int(size)
    return None


def entry_of(row: EventRow | StoredEvent) -> bytes:
    """The canonical v1 entry of an event row (:mod:`ca.logentry`)."""
    assert row.id is not None, "the event row must be flushed first"
    return logentry.encode(
        logentry.LogEntry(
            event_id=row.id,
            type=row.type,
            time=row.at,
            actor=row.actor,
            uscc=row.uscc,
            subject=row.subject,
            profile=row.profile,
            issuer=row.issuer,
            serial=int(row.serial, 16) if row.serial else None,
            cert_sha256=row.cert_sha256,
            application_id=row.application_id,
            details=json.loads(row.details or "{}"),
        )
    )


def append_events(session: Session, rows: Sequence[EventRow | StoredEvent]) -> range:
    """Append the entries of flushed event rows, in order, under the head lock.

    Returns the leaf indices they received. On the first append of a database any
    earlier events (a database that predates the log) are appended first, in event
    order, so the log covers every event from the very first.
    """
    rows = list(rows)
    size = _lock_head(session, [r.id for r in rows])
    return append_entries(ConnectionSql(session.connection()), size, rows)


def append_entries(sql: DriverSql, size: int, rows: Sequence[EventRow | StoredEvent]) -> range:
    """Append the entries of ``rows`` to a log whose head (of ``size``) this transaction
    has locked; move the head. Returns the leaf indices they received.

    A row written with its leaf index (``log_index``, known under the head's lock) must
    get that leaf; a row written without one (an event older than the log, or one made
    outside the issuance paths) has it set here."""
    if not rows:
        return range(size, size)
    entries = [entry_of(r) for r in rows]
    tree = MerkleTree(SqlTreeStore(sql, size))
    span = range(size, size + len(rows))
    unset: list[tuple[int, int]] = []
    for idx, row in zip(span, rows, strict=True):
        if row.log_index is None:
            unset.append((idx, row.id))
        elif row.log_index != idx:
            raise LogCorrupted(
                f"event {row.id} was written as leaf {row.log_index}, but the log's next "
                f"leaf for it is {idx}: nothing was appended"
            )
    span = tree.append_many(entries)
    values = [(idx, row.id, entry) for idx, row, entry in zip(span, rows, entries, strict=True)]
    _insert_rows(sql, _INSERT_ENTRIES, values)
    if unset:
        sql.run(driver_text(_SET_LOG_INDEX, sql.qmark), unset if len(unset) > 1 else unset[0])
    # The new root folds the right edge the append just read and wrote: no query.
    sql.run(driver_text(_MOVE_HEAD, sql.qmark), (span.stop, tree.root(span.stop)))
    return span


def append_event(session: Session, row: EventRow | StoredEvent) -> None:
    """The event sink: append ``row``'s entry in the transaction that wrote it."""
    append_events(session, [row])


@dataclass(frozen=True)
class SignedHead:
    """A tree head and the C2SP signed note that publishes it."""

    size: int
    root_hash: bytes
    note: bytes


def log_key_pem(public: object) -> bytes:
    """``public`` as ``log.pub`` holds it (PEM SubjectPublicKeyInfo); empty for anything
    but an Ed25519 key, which no ``log.pub`` can be."""
    if not isinstance(public, Ed25519PublicKey):
        return b""
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def check_log_key(session: Session, public: object, what: str) -> None:
    """Raise :class:`LogKeyRetired` if the database's hierarchy record (:mod:`ca.crosshost`)
    names a log key (``log.pub``) other than ``public``, this host's: ``ROTATE-LOG-KEY``
    ran on another host. No record (a database before migration 0007, or not yet
    published): no check. The record is no authority for the key: a host never signs
    with, nor names, a key it was not given in its own files; it refuses instead."""
    recorded = session.execute(
        select(HierarchyFileRow.sha256).where(HierarchyFileRow.path == "log.pub")
    ).scalar()
    if recorded is None:
        return
    if hashlib.sha256(log_key_pem(public)).hexdigest() != recorded:
        raise LogKeyRetired(
            "this host's transparency-log key is not the one the database's hierarchy "
            f"record names (ROTATE-LOG-KEY ran on another host): {what} until the ceremony "
            "host's ca/ is copied here; ask a current host for the log's key"
        )


class CheckpointSigner:
    """Signs checkpoints of the log with its Ed25519 key (C2SP signed-note), one per size.

    The key name is the origin. ``key`` is any :class:`ca.checkpoint.NoteKey`: the
    unsealed log key of the hierarchy, or a token.
    """

    def __init__(self, origin: str, key: NoteKey, clock: Clock | None = None) -> None:
        self.configured_origin = origin
        self._origin: str | None = None
        self.key = key
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))

    def origin(self, session: Session) -> str:
        """The log's origin: the one of its first checkpoint once there is one.

        A log keeps its name for life, even if the CA's public URL (the configured
        origin's source) changes later: auditors pin it with the key.
        """
        if self._origin is None:
            first = session.execute(
                select(CheckpointRow.note).order_by(CheckpointRow.size).limit(1)
            ).scalar()
            if first is None:
                return self.configured_origin
            self._origin = bytes(first).split(b"\n", 1)[0].decode("utf-8")
        return self._origin

    def sign(self, session: Session, size: int, root_hash: bytes) -> bytes:
        """The signed checkpoint of ``(size, root_hash)``, stored in ``checkpoints``.

        A size signed before returns its stored note when the root is the same and
        raises :class:`ForkRefused` when it differs: the log never signs two roots
        for one size. The caller commits the session.
        """
        stored = self.stored(session, size)
        if stored is not None:
            self._same_root(stored, root_hash)
            return stored.note
        self._check_key(session)
        self._refuse_unextended(session, size, root_hash)
        origin = self.origin(session)
        note = sign_note(Checkpoint(origin, size, root_hash).body(), origin, self.key)
        try:
            with session.begin_nested():
                session.execute(
                    insert(CheckpointRow).values(
                        size=size, root_hash=root_hash, note=note, created_at=self.clock()
                    )
                )
        except IntegrityError:
            # Another process signed this size meanwhile; its root must be ours.
            stored = self.stored(session, size)
            if stored is None:
                raise
            self._same_root(stored, root_hash)
            return stored.note
        return note

    def _check_key(self, session: Session) -> None:
        """Refuse to sign with a key the database's hierarchy record no longer names as
        the log's (:func:`check_log_key`): after ``ROTATE-LOG-KEY`` on another host, this
        one would otherwise store checkpoints under the retired key, one per size and for
        good. The record is read in the signing transaction, not from the host's last
        comparison, so no refresher interval is left open."""
        check_log_key(session, self.key.public_key(), "it signs no checkpoint")

    def _refuse_unextended(self, session: Session, size: int, root_hash: bytes) -> None:
        """Refuse (:class:`LogCorrupted`) to sign a log that does not extend the newest
        checkpoint signed before: a smaller one, or one whose first entries no longer give
        that checkpoint's root. Such a log was rolled back (a restore over newer entries),
        truncated or rewritten with its nodes rebuilt: signed, it is a second history under
        the log's key, which only auditors holding the older checkpoint would catch (log
        tamper probe, session 26). ``O(log n)``: one root from the stored subtrees."""
        newest = self.newest_stored(session)
        if newest is None:
            return
        if newest.size > size:
            # A head read before another process appended and signed (PostgreSQL's READ
            # COMMITTED shows this statement the newer checkpoint; review of session 26):
            # the log did not shrink if its head now reaches the newest checkpoint, and
            # what was read is then a prefix of it, which may be signed.
            now = read_head(session)[0]
            if now < newest.size:
                raise LogCorrupted(
                    f"the log has {now} entries, but a checkpoint of {newest.size} was "
                    "signed: refusing to sign a log that shrank (a database restored over "
                    "newer entries, or entries deleted); docs/emergency-plan.md"
                )
            tree = tree_at(session, newest.size)
            if tree.root(newest.size) != newest.root_hash or tree.root(size) != root_hash:
                raise LogCorrupted(
                    f"the log's first {newest.size} entries no longer give the root signed "
                    f"for them ({newest.root_hash.hex()}), or its first {size} not the root "
                    f"{root_hash.hex()} read for them: refusing to sign another history "
                    "(an entry or node rewritten); docs/emergency-plan.md"
                )
            return
        if newest.size < size and tree_at(session, size).root(newest.size) != newest.root_hash:
            raise LogCorrupted(
                f"the log's first {newest.size} entries no longer give the root signed for "
                f"them ({newest.root_hash.hex()}): refusing to sign root {root_hash.hex()} "
                f"for {size} entries, another history (an entry or node rewritten); "
                "docs/emergency-plan.md"
            )

    @staticmethod
    def _same_root(stored: SignedHead, root_hash: bytes) -> None:
        if stored.root_hash != root_hash:
            raise ForkRefused(
                f"a checkpoint of tree size {stored.size} was signed with root "
                f"{stored.root_hash.hex()}; refusing to sign root {root_hash.hex()} for it",
                tree_size=stored.size,
            )

    @staticmethod
    def stored(session: Session, size: int) -> SignedHead | None:
        """The checkpoint signed for ``size``, if any."""
        row = session.execute(
            select(CheckpointRow.root_hash, CheckpointRow.note).where(CheckpointRow.size == size)
        ).first()
        return SignedHead(size, bytes(row[0]), bytes(row[1])) if row else None

    @staticmethod
    def newest_stored(session: Session) -> SignedHead | None:
        size = session.execute(select(func.max(CheckpointRow.size))).scalar()
        return None if size is None else CheckpointSigner.stored(session, int(size))

    def latest(self, session: Session) -> SignedHead:
        """A checkpoint of the current head, signed now if this size has none yet.

        The head's root is first recomputed from the stored subtrees (``O(log n)``),
        so a head that disagrees with its nodes is never signed. With the log key
        sealed, or rotated on another host and not yet here, the newest stored
        checkpoint is returned instead.
        """
        size, root = _checked_head(session)
        try:
            return SignedHead(size, root, self.sign(session, size, root))
        except (Sealed, LogKeyRetired):
            newest = self.newest_stored(session)
            if newest is None:
                raise
            return newest

    def hand_over(self, session: Session, successor: NoteKey) -> SignedHead:
        """Sign the log's head, in the transaction of ``ROTATE-LOG-KEY`` and after its
        ``ceremony.completed`` event, as the **hand-over checkpoint**: its one extension
        line names the successor's verifier key (:data:`HANDOVER`), and it is signed by
        this signer's key, which retires with the ceremony, and by ``successor``.

        An auditor who trusts the retiring key verifies the hand-over with it (the
        successor is then named by the key it already trusts), checks the successor's
        signature on it (its holder signs for the log), and from then on trusts the
        successor alone: every checkpoint of a larger size is the successor's, every
        smaller one the retiring key's, and this size both. The caller's transaction
        holds the log head, so no other checkpoint of this size can exist; if one did,
        the insert fails and so does the ceremony.
        """
        size, root = _checked_head(session)
        origin = self.origin(session)
        body = Checkpoint(origin, size, root, (HANDOVER + _vkey(origin, successor.public_key()),))
        return self._store(session, sign_note(body.body(), origin, self.key, successor), body)

    def replace(
        self,
        session: Session,
        successor: NoteKey,
        retired: object,
        root: NoteKey,
        root_cert: x509.Certificate,
    ) -> SignedHead:
        """Sign the log's head, in the transaction of ``REPLACE-LOG-KEY`` and after its
        ``ceremony.completed`` event, as a **replacement checkpoint**: the log key
        ``retired`` (its public key) is lost or compromised, so it does not sign; the
        joint root CA's key ``root`` (certificate ``root_cert``), which the ceremony's
        quorum opened, vouches instead (:func:`ca.checkpoint.add_root_signature`).

        Its extension lines name the successor (:data:`HANDOVER`) and the key retired
        (:data:`REPLACED`); it is signed by the successor and by the root. An auditor who
        trusts the retired key and the root certificate follows it to the successor."""
        size, root_hash = _checked_head(session)
        origin = self.origin(session)
        lines = (
            HANDOVER + _vkey(origin, successor.public_key()),
            REPLACED + _vkey(origin, retired),
        )
        body = Checkpoint(origin, size, root_hash, lines)
        note = add_root_signature(sign_note(body.body(), origin, successor), root, root_cert)
        return self._store(session, note, body)

    def _store(self, session: Session, note: bytes, body: Checkpoint) -> SignedHead:
        self._refuse_unextended(session, body.size, body.root_hash)
        session.execute(
            insert(CheckpointRow).values(
                size=body.size, root_hash=body.root_hash, note=note, created_at=self.clock()
            )
        )
        return SignedHead(body.size, body.root_hash, note)


def _vkey(origin: str, public_key: object) -> str:
    if not isinstance(public_key, Ed25519PublicKey):
        raise TypeError("the log key must be Ed25519 (C2SP signed-note type 0x01)")
    return verifier_key(origin, public_key)


def _checked_head(session: Session) -> tuple[int, bytes]:
    """The log head, once its root is recomputed from the stored subtrees (``O(log n)``):
    a head that disagrees with its nodes is never signed."""
    size, root = read_head(session)
    recomputed = tree_at(session, size).root(size)
    if recomputed != root:
        raise LogCorrupted(
            f"the log head says root {root.hex()} for size {size}, but its stored "
            f"subtrees give {recomputed.hex()}"
        )
    return size, root


def handovers(session: Session) -> list[SignedHead]:
    """The log's hand-over checkpoints (:meth:`CheckpointSigner.hand_over`), oldest first:
    each signed at the size that ends with a ``ROTATE-LOG-KEY`` or ``REPLACE-LOG-KEY``
    ceremony's ``ceremony.completed`` entry. A rotation made before hand-overs were signed has
    none and is left out: its auditors start anew with the next key (docs/audit.md)."""
    rows = session.execute(
        select(EventRow.log_index, EventRow.details)
        .where(EventRow.type == "ceremony.completed", EventRow.log_index.is_not(None))
        .order_by(EventRow.log_index)
    ).all()
    out: list[SignedHead] = []
    for index, details in rows:
        if index is None or json.loads(details).get("operation") not in LOG_KEY_CEREMONIES:
            continue
        stored = CheckpointSigner.stored(session, index + 1)
        if stored is None:
            continue
        extensions = Checkpoint.parse(stored.note[: stored.note.rindex(b"\n\n") + 1]).extensions
        if any(line.startswith(HANDOVER) for line in extensions):
            out.append(stored)
    return out
