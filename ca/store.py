"""The SQLAlchemy implementation of :class:`ca.records.Store`."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
import unicodedata
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    Text,
    bindparam,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.sql.functions import FunctionElement

from ca.errors import Conflict, InvalidCode, SchemaMoved, opened_read_only
from ca.models import (
    ApplicationRow,
    CertificateRow,
    CertificateStatusRow,
    CRLStateRow,
    EnrollmentCodeRow,
    EventRow,
    OCSPResponseRow,
    SeenJtiRow,
)
from ca.names import dn_key
from ca.privatefiles import create_sqlite_file
from ca.records import (
    CODE_USED,
    KEY_CERTIFIED,
    Application,
    ApplicationState,
    CertificateRecord,
    EnrollmentCode,
    Event,
    EventType,
    IssuanceWrite,
    StatusRecord,
    StatusState,
    code_refusal,
    credential_refusal,
    refuse_held_enterprise,
    same_name_refusal,
    signer_refusal,
)

if TYPE_CHECKING:
    from ca.groupwrite import IssuanceWriter

READ_ONLY = "eport_read_only"
"""Execution option of connections that only read (SQLite: a deferred transaction)."""


FOLD_FUNCTION = "eport_fold"


def search_fold(text: str) -> str:
    """A text as searches compare it: NFKC (full-width letters and digits, the ideographic
    space, compatibility forms become their plain ones), then lower case."""
    return unicodedata.normalize("NFKC", text).lower()


def _fold_or_none(text: str | None) -> str | None:
    return None if text is None else search_fold(text)


class folded(FunctionElement[str]):
    """``column`` as :func:`search_fold` folds it, in SQL: SQLite calls the Python function
    each connection registers (:func:`configure_engine`); PostgreSQL has ``normalize`` and
    a ``lower`` of its database's character type."""

    type = Text()
    name = FOLD_FUNCTION
    inherit_cache = True


@compiles(folded)
def _folded_sqlite(element: folded, compiler: Any, **kw: Any) -> str:
    return f"{FOLD_FUNCTION}({compiler.process(element.clauses, **kw)})"


@compiles(folded, "postgresql")
def _folded_postgresql(element: folded, compiler: Any, **kw: Any) -> str:
    return f"lower(normalize({compiler.process(element.clauses, **kw)}, NFKC))"


def configure_engine(engine: Engine) -> None:
    """SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` so that concurrent writers
    from several processes queue for the lock instead of failing an upgrade."""
    if engine.dialect.name != "sqlite":
        return
    create_sqlite_file(engine.url)  # 0600 before SQLite first opens it (ca.privatefiles)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        # folded() below, for SQLite, which has no Unicode normalization or case folding
        dbapi_conn.create_function(FOLD_FUNCTION, 1, _fold_or_none, deterministic=True)

    @event.listens_for(engine, "handle_error")
    def _on_error(ctx: Any) -> None:
        # A connection SQLite opened read-only (the file was not writable when a worker
        # opened it) stays read-only after the file is made writable again: taken as a
        # disconnect, it and the pool's others of that time are closed, and the next
        # request opens the file anew. The request itself still gets its 503.
        if opened_read_only(ctx.original_exception):
            ctx.is_disconnect = True

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Read-only lookups on the hot paths (OCSP) must not queue behind writers.
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _app(row: ApplicationRow) -> Application:
    return Application(
        id=row.id,
        subject_class=row.subject_class,
        uscc=row.uscc,
        vetted=json.loads(row.vetted),
        state=ApplicationState(row.state),
        created_at=row.created_at,
        applicant=row.applicant,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        reason=row.reason,
    )


def _cert(row: CertificateRow) -> CertificateRecord:
    return CertificateRecord(
        serial=int(row.serial, 16),
        issuer_id=row.issuer_id,
        profile=row.profile,
        application_id=row.application_id,
        uscc=row.uscc,
        subject=row.subject,
        spki_sha256=row.spki_sha256,
        cert_sha256=row.cert_sha256,
        not_before=row.not_before,
        not_after=row.not_after,
        der=row.der,
        created_at=row.created_at,
    )


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as its row was written (the columns of :class:`~ca.models.EventRow`, ``id``
    assigned): what the event sinks get, without an ORM object per event."""

    id: int
    at: datetime.datetime
    type: str
    actor: str
    uscc: str | None
    subject: str | None
    profile: str | None
    issuer: str | None
    serial: str | None
    cert_sha256: str | None
    application_id: str | None
    details: str
    log_index: int | None = None
    """The leaf index its log entry gets, written with the row by a writer that holds the
    log head's lock; None when the row was written without one (the log sink fills it)."""


# Core statements of the issuance path, built once. Executed on the transaction's
# connection they skip the ORM's unit of work and identity map (each ``add`` + ``flush``
# cost more than the statement itself); the column types still convert the values
# (UTC datetimes), and the rows they write are the rows the ORM would write.
_C, _A, _CERT, _E = EnrollmentCodeRow, ApplicationRow, CertificateRow, EventRow
_CODE_COLUMNS = (
    _C.code_hash,
    _C.application_id,
    _C.profiles,
    _C.expires_at,
    _C.used_at,
    _C.withdrawn_at,
)
_FIND_CODE = select(*_CODE_COLUMNS).where(_C.code_hash == bindparam("code_hash"))
_REDEEM_CODE = (
    update(_C)
    .where(
        _C.code_hash == bindparam("b_code_hash"),
        _C.used_at.is_(None),
        _C.withdrawn_at.is_(None),
        _C.expires_at > bindparam("now"),
    )
    .values(used_at=bindparam("used"))
    .returning(*_CODE_COLUMNS)
)
_WITHDRAW_CODES = (
    update(_C)
    .where(
        _C.application_id.in_(bindparam("app_ids", expanding=True)),
        _C.used_at.is_(None),
        _C.withdrawn_at.is_(None),
        _C.expires_at > bindparam("now"),
    )
    .values(withdrawn_at=bindparam("withdrawn"))
)


def _withdraw_codes_where(*apps: Any) -> Any:
    """Withdraw the live codes (unused, not withdrawn, unexpired) of the applications
    ``apps`` select, by one statement."""
    return (
        update(_C)
        .where(
            _C.application_id.in_(select(_A.id).where(*apps)),
            _C.used_at.is_(None),
            _C.withdrawn_at.is_(None),
            _C.expires_at > bindparam("now"),
        )
        .values(withdrawn_at=bindparam("withdrawn"))
    )


_OF_CLASS = (_A.uscc == bindparam("uscc"), _A.subject_class == bindparam("cls"))
_WITHDRAW_CODES_OF = _withdraw_codes_where(*_OF_CLASS)
_WITHDRAW_CODES_BY = _withdraw_codes_where(*_OF_CLASS, _A.applicant == bindparam("applicant"))
_APP_COLUMNS = (
    _A.id,
    _A.subject_class,
    _A.uscc,
    _A.vetted,
    _A.state,
    _A.created_at,
    _A.applicant,
    _A.decided_by,
    _A.decided_at,
    _A.reason,
)
_GET_APP = select(*_APP_COLUMNS).where(_A.id == bindparam("app_id"))
_APPS_OF = (
    select(*_APP_COLUMNS)
    .where(
        _A.uscc == bindparam("uscc"),
        # only operators' rows carry an operator id: the (uscc, operator_id) index then
        # reads the enterprise's own applications, not its thousands of operators'
        _A.operator_id.is_(None),
        _A.subject_class == bindparam("cls"),
    )
    .order_by(_A.created_at, _A.id)
)
_OPERATOR_APPS = (
    select(*_APP_COLUMNS)
    .where(
        _A.uscc == bindparam("uscc"),
        _A.operator_id == bindparam("operator_id"),
        _A.subject_class == "operator",
    )
    .order_by(_A.created_at, _A.id)
)
_CERT_COLUMNS = (
    _CERT.serial,
    _CERT.issuer_id,
    _CERT.profile,
    _CERT.application_id,
    _CERT.uscc,
    _CERT.subject,
    _CERT.spki_sha256,
    _CERT.cert_sha256,
    _CERT.not_before,
    _CERT.not_after,
    _CERT.der,
    _CERT.created_at,
)
_KEY_HOLDERS = select(*_CERT_COLUMNS).where(_CERT.spki_sha256 == bindparam("spki"))
_CERTS_OF_APP = (
    select(*_CERT_COLUMNS)
    .where(_CERT.application_id == bindparam("app_id"))
    .order_by(_CERT.not_after, _CERT.serial)
)
_CERTS_OF_CLASS = (
    select(*_CERT_COLUMNS)
    .where(_CERT.uscc == bindparam("uscc"), _CERT.profile == bindparam("profile"))
    .order_by(_CERT.serial)
)
_INSERT_CERT = insert(_CERT)
_KEY_APP = (
    update(_A)
    .where(_A.id == bindparam("k_id"), _A.log_index.is_(None))
    .values(log_index=bindparam("k_idx"))
)
_KEY_CERT = (
    update(_CERT)
    .where(_CERT.serial == bindparam("k_id"), _CERT.log_index.is_(None))
    .values(log_index=bindparam("k_idx"))
)
_INSERT_EVENTS = insert(_E).returning(_E.id, sort_by_parameter_order=True)
_STATUS_BATCH = 500
"""Serials per ``IN`` list of a batch read (well under every database's parameter limit)."""


# Row readers for Core results and raw DBAPI rows alike (the hot paths read through the
# driver): timestamps go through utc_from_db (SQLite gives ISO text), blobs through bytes
# (psycopg2 gives memoryview).


def code_of(row: Any) -> EnrollmentCode:
    """An enrollment code from a row of its columns, in table order (Core or DBAPI)."""
    return EnrollmentCode(
        code_hash=row[0],
        application_id=row[1],
        profiles=tuple(row[2].split(",")),
        expires_at=_utc(row[3]),
        used_at=utc_from_db(row[4]),
        withdrawn_at=utc_from_db(row[5]),
    )


def _app_of(row: Any) -> Application:
    return Application(
        id=row[0],
        subject_class=row[1],
        uscc=row[2],
        vetted=json.loads(row[3]),
        state=ApplicationState(row[4]),
        created_at=_utc(row[5]),
        applicant=row[6],
        decided_by=row[7],
        decided_at=utc_from_db(row[8]),
        reason=row[9],
    )


def _cert_of(row: Any) -> CertificateRecord:
    return CertificateRecord(
        serial=int(row[0], 16),
        issuer_id=row[1],
        profile=row[2],
        application_id=row[3],
        uscc=row[4],
        subject=row[5],
        spki_sha256=row[6],
        cert_sha256=row[7],
        not_before=_utc(row[8]),
        not_after=_utc(row[9]),
        der=bytes(row[10]),
        created_at=utc_from_db(row[11]),
    )


def upsert(session: Session, table: Any, values: dict[str, Any], key: Sequence[str]) -> Any:
    """An ``INSERT … ON CONFLICT (key)`` statement for ``table`` in ``session``'s dialect
    (SQLite and PostgreSQL, and the engines that speak its dialect): add ``.on_conflict_do_
    nothing()`` or ``.on_conflict_do_update(set_=…)``. A row's first write by two hosts at
    once then waits for the other's and takes its conflict branch, where a read of the row
    and an insert when missing made the later one fail on the primary key (HTTP 500)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(table).values(**values)
    return _Upsert(stmt, list(key))


@dataclass(frozen=True)
class _Upsert:
    stmt: Any
    key: list[str]

    def do_nothing(self) -> Any:
        return self.stmt.on_conflict_do_nothing(index_elements=self.key)

    def do_update(self, columns: Sequence[str], where: Any = None) -> Any:
        excluded = self.stmt.excluded
        return self.stmt.on_conflict_do_update(
            index_elements=self.key, set_={c: excluded[c] for c in columns}, where=where
        )


def upsert_rows(session: Session, table: Any, key: Sequence[str]) -> Any:
    """:func:`upsert` for many rows: the statement without values, executed with a list of
    them, whose keys must differ. On PostgreSQL it returns the key of each row written:
    with RETURNING, SQLAlchemy sends the rows in a few multi-row statements; without, an
    upsert goes row by row, one round trip each (SQLite's driver runs them in process)."""
    from sqlalchemy.dialects import postgresql, sqlite

    if session.get_bind().dialect.name == "sqlite":
        return _Upsert(sqlite.insert(table), list(key))
    returning = [getattr(table, column) for column in key]
    return _Upsert(postgresql.insert(table).returning(*returning), list(key))


@contextmanager
def writing(session_factory: Callable[[], Session]) -> Iterator[Session]:
    """One transaction that may write (SQLite: ``BEGIN IMMEDIATE``); commit or roll back."""
    session = session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


@contextmanager
def reading(session_factory: Callable[[], Session]) -> Iterator[Session]:
    """One transaction that only reads (SQLite: a deferred ``BEGIN``): it never queues
    for, or holds, the write lock. Inside an open transaction it simply joins it."""
    session = session_factory()
    try:
        real = session() if isinstance(session, scoped_session) else session
        if not real.in_transaction():
            real.connection(execution_options={READ_ONLY: True})
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


def sqlite_file(engine: Engine) -> bool:
    """Whether ``engine`` is SQLite on a file (not in memory)."""
    database = engine.url.database
    return engine.dialect.name == "sqlite" and bool(database) and database != ":memory:"


class _Held:
    """A thread's connection; when the thread ends (its local goes) the connection is
    closed (:class:`ThreadConnections`)."""

    __slots__ = ("__weakref__", "conn", "key")

    def __init__(self, conn: Any, key: tuple[int, int]) -> None:
        self.conn = conn
        self.key = key


def _close_if_ours(conn: Any, pid: int) -> None:
    """Close ``conn`` unless this is a forked child of the process that made it (closing
    an inherited SQLite connection could touch the parent's files)."""
    if os.getpid() == pid:
        with contextlib.suppress(Exception):  # already closed or broken
            conn.close()


class ThreadConnections:
    """A DBAPI connection per thread of ``engine`` (SQLite on a file), taken out of the
    engine's pool for good.

    On the hot paths a pool checkout and its return (with the pool's rollback) cost more
    than the statement: a primary-key read, an issuance's rows. Each connection is made
    by the pool (so its connect hooks ran: WAL, busy timeout) and detached. It is closed
    when its thread ends (a server that starts a thread per request does not pile them
    up) or the engine is disposed; a forked process makes its own. Callers leave no
    transaction open on them.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._made: list[weakref.finalize[Any, Any]] = []  # closers of the live ones
        self._lock = threading.Lock()
        self._generation = 0
        event.listen(engine, "engine_disposed", self._disposed)

    def get(self) -> Any:
        key = (os.getpid(), self._generation)
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.key != key:
            raw = self._engine.raw_connection()
            raw.detach()
            conn = raw.dbapi_connection
            assert conn is not None
            held = self._local.held = _Held(conn, key)
            closer = weakref.finalize(held, _close_if_ours, conn, key[0])
            with self._lock:
                self._made = [c for c in self._made if c.alive]
                self._made.append(closer)
        return held.conn

    def drop(self) -> None:
        """Close this thread's connection (after an error that may have broken it)."""
        held: _Held | None = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None:
            _close_if_ours(held.conn, held.key[0])

    def _disposed(self, _engine: Engine) -> None:
        with self._lock:
            made, self._made = self._made, []
            self._generation += 1
        for closer in made:
            closer()  # closes it now (once), unless made by a parent process


class DbapiReads:
    """Primary-key reads on a raw DBAPI connection (this thread's own for SQLite on a
    file, else a pooled one), for the hot paths (enrollment checks, OCSP answers, token
    validation) where SQLAlchemy's statement machinery costs more than the read.

    The engine comes from the first session (or :meth:`bind`); SQL is written with ``?``
    placeholders and adapted to the driver's paramstyle."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self._factory = session_factory
        self._bound: Engine | None = None
        self._threads: ThreadConnections | None = None
        self._lock = threading.Lock()

    def bind(self, engine: Engine) -> None:
        self._bound = engine
        self._threads = None

    def engine(self) -> Engine:
        if self._bound is None:
            bind = self._factory().get_bind()
            assert isinstance(bind, Engine)
            self._bound = bind
        return self._bound

    def connections(self) -> ThreadConnections | None:
        """The engine's per-thread connections (SQLite on a file), shared with the issuance
        writer of the same store; None for other databases."""
        if self._threads is None:
            engine = self.engine()
            if sqlite_file(engine):
                with self._lock:
                    if self._threads is None:
                        self._threads = ThreadConnections(engine)
        return self._threads

    def fetch(self, *queries: tuple[str, tuple[Any, ...]]) -> list[tuple[Any, ...] | None]:
        """The first row (or None) of each query, all on one connection: this thread's own
        (:class:`ThreadConnections`) for SQLite on a file, else a pooled one."""
        threads = self.connections()
        if threads is not None:
            try:
                cur = threads.get().cursor()
                try:
                    return [cur.execute(sql, params).fetchone() for sql, params in queries]
                finally:
                    cur.close()  # resets the statements: no read snapshot is kept
            except BaseException:
                threads.drop()
                raise
        engine = self.engine()
        qmark = engine.dialect.paramstyle == "qmark"
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            rows = []
            for sql, params in queries:
                cur.execute(sql if qmark else sql.replace("?", "%s"), params)
                rows.append(cur.fetchone())
            cur.close()
        except BaseException as exc:
            release_broken(raw, exc)
            raise
        finally:
            raw.close()  # back to the pool, which rolls back whatever was opened
        return rows


def release_broken(raw: Any, exc: BaseException) -> None:
    """After ``exc`` on the pooled DBAPI connection ``raw``: roll it back, or, when the
    server closed it (PostgreSQL restarted or stopped) or the rollback fails, invalidate
    it, so that the pool discards it instead of resetting it: the reset of a closed
    connection logged SQLAlchemy's 'Exception during reset or similar' with three
    tracebacks per request during an outage (PostgreSQL probe, session 22). A connection
    to a database opened read-only is invalidated too (never writable again)."""
    dbapi = getattr(raw, "dbapi_connection", raw)
    if getattr(dbapi, "closed", 0):
        raw.invalidate()
        return
    try:
        raw.rollback()
    except Exception:
        raw.invalidate()
        return
    if opened_read_only(exc):
        raw.invalidate()  # closed, not back to the pool


_FILL_CERT_KEYS = text(
    "UPDATE certificates SET log_index ="
    " (SELECT MIN(events.log_index) FROM events WHERE events.serial = certificates.serial)"
    " WHERE certificates.log_index IS NULL AND EXISTS (SELECT 1 FROM events"
    " WHERE events.serial = certificates.serial AND events.log_index IS NOT NULL)"
)
_UNKEYED_APPS = text("SELECT id FROM applications WHERE log_index IS NULL")
_FIRST_EVENTS_OF_APPS = text(
    "SELECT application_id, MIN(log_index) FROM events"
    " WHERE application_id IN :ids AND log_index IS NOT NULL GROUP BY application_id"
).bindparams(bindparam("ids", expanding=True))


def fill_listing_keys(conn: Connection) -> int:
    """Set the listing key (``ca/models.py``, "Listing keys") of every logged application
    and certificate that lacks it, from the first logged event naming it; how many.

    Only a server of a release before 0009, still writing after the upgrade, leaves such
    rows (every start runs this: :func:`ca.db.upgrade`); the listings do not show them
    until then. Nothing to do costs a probe of the NULL range of each ``log_index`` index.
    """
    filled = int(conn.execute(_FILL_CERT_KEYS).rowcount)
    ids = [r[0] for r in conn.execute(_UNKEYED_APPS)]
    for i in range(0, len(ids), _STATUS_BATCH):
        firsts = conn.execute(_FIRST_EVENTS_OF_APPS, {"ids": ids[i : i + _STATUS_BATCH]}).all()
        if firsts:
            keys = [{"k_id": app_id, "k_idx": int(idx)} for app_id, idx in firsts]
            filled += int(conn.execute(_KEY_APP, keys).rowcount)
    return filled


def utc_from_db(value: Any) -> datetime.datetime | None:
    """A timestamp as a DBAPI returns it (SQLite: ISO text), timezone-aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    assert isinstance(value, datetime.datetime)
    return value.astimezone(datetime.UTC) if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def _utc(value: Any) -> datetime.datetime:
    out = utc_from_db(value)
    assert out is not None
    return out


# The enrollment's checks before signing, as DBAPI reads (``?`` placeholders, see
# DbapiReads): the code with its application in one join, and one certificate of the key.
_ENROLL_CODE_SQL = (
    "SELECT c.code_hash, c.application_id, c.profiles, c.expires_at, c.used_at, c.withdrawn_at,"
    " a.id, a.subject_class, a.uscc, a.vetted, a.state, a.created_at, a.applicant,"
    " a.decided_by, a.decided_at, a.reason"
    " FROM enrollment_codes c LEFT JOIN applications a ON a.id = c.application_id"
    " WHERE c.code_hash = ?"
)
_KEY_HOLDER_SQL = (
    "SELECT serial, issuer_id, profile, application_id, uscc, subject, spki_sha256,"
    " cert_sha256, not_before, not_after, der, created_at"
    " FROM certificates WHERE spki_sha256 = ? LIMIT 1"
)


def _facts_code(row: tuple[Any, ...]) -> tuple[EnrollmentCode, Application | None]:
    """The code and its application from one row of ``_ENROLL_CODE_SQL`` (a LEFT JOIN)."""
    return code_of(row[:6]), (_app_of(row[6:]) if row[6] is not None else None)


def _event_values(ev: Event) -> dict[str, Any]:
    """The columns of ``ev``'s row (its id aside), as the event sinks get them."""
    return {
        "at": ev.at,
        "type": ev.type.value,
        "actor": ev.actor,
        "uscc": ev.uscc,
        "subject": ev.subject,
        "profile": ev.profile,
        "issuer": ev.issuer,
        "serial": format(ev.serial, "x") if ev.serial is not None else None,
        "cert_sha256": ev.cert_sha256,
        "application_id": ev.application_id,
        "details": json.dumps(dict(ev.details), sort_keys=True, ensure_ascii=False),
    }


_S = CertificateStatusRow
_STATUS_COLUMNS = (
    _S.serial,
    _S.issuer_id,
    _S.state,
    _S.revoked_at,
    _S.reason,
    _S.invalidity_date,
    _S.changed_at,
)


def _status_of(row: Any) -> StatusRecord:
    return StatusRecord(
        serial=int(row[0], 16),
        issuer_id=row[1],
        state=StatusState(row[2]),
        revoked_at=_utc(row[3]),
        reason=row[4],
        invalidity_date=utc_from_db(row[5]),
        changed_at=_utc(row[6]),
    )


EventSink = Callable[[Session, StoredEvent], None]
"""Called inside the transaction after an event row is written (e.g. the Merkle log append)."""


class SqlTransaction:
    def __init__(self, session: Session, sinks: tuple[EventSink, ...] = ()) -> None:
        self.s = session
        self.sinks = sinks
        self._connection: Connection | None = None
        # Rows made in this transaction whose listing key (the log index of the first
        # event naming them) is not written yet: set by append_events.
        self._unkeyed_apps: set[str] = set()
        self._unkeyed_certs: set[str] = set()

    def _conn(self) -> Connection:
        """The connection of this transaction, for the Core statements of the hot paths.

        Every ORM write here flushes at once, so nothing is pending that a Core
        statement could miss; Core writes leave no stale object behind (they load none).
        """
        if self._connection is None:
            self._connection = self.s.connection()
        return self._connection

    def add_application(self, app: Application) -> None:
        self.s.add(
            ApplicationRow(
                id=app.id,
                subject_class=app.subject_class,
                uscc=app.uscc,
                vetted=json.dumps(dict(app.vetted), sort_keys=True, ensure_ascii=False),
                state=app.state.value,
                created_at=app.created_at,
                applicant=app.applicant,
                decided_by=app.decided_by,
                decided_at=app.decided_at,
                reason=app.reason,
                # the lookup key, folded (migration 0011): E1 and e1 are one operator
                operator_id=str(app.vetted.get("operator_id", "")).lower()
                if app.subject_class == "operator"
                else None,
            )
        )
        self.s.flush()
        self._unkeyed_apps.add(app.id)

    def get_application(self, app_id: str, *, for_update: bool = False) -> Application | None:
        if not for_update:
            found = self._conn().execute(_GET_APP, {"app_id": app_id}).first()
            return _app_of(found) if found else None
        q = select(ApplicationRow).where(ApplicationRow.id == app_id).with_for_update()
        row = self.s.scalars(q).first()
        return _app(row) if row else None

    def set_application_state(
        self,
        app_id: str,
        expected: ApplicationState,
        new: ApplicationState,
        decided_by: str,
        at: datetime.datetime,
        reason: str | None,
    ) -> bool:
        res = self.s.execute(
            update(ApplicationRow)
            .where(ApplicationRow.id == app_id, ApplicationRow.state == expected.value)
            .values(state=new.value, decided_by=decided_by, decided_at=at, reason=reason)
            .execution_options(synchronize_session=False)
        )
        self.s.expire_all()
        return res.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def applications_of(self, uscc: str, subject_class: str) -> list[Application]:
        """The applications of a USCC in a class other than operator (those have their
        own lookup, :meth:`operator_applications`)."""
        if subject_class == "operator":
            raise ValueError("operator applications are looked up by operator id")
        rows = self._conn().execute(_APPS_OF, {"uscc": uscc, "cls": subject_class})
        return [_app_of(r) for r in rows]

    def operator_applications(self, uscc: str, operator_id: str) -> list[Application]:
        folded = operator_id.lower()  # X.520 caseIgnoreMatch of the serialNumber it becomes
        rows = self._conn().execute(_OPERATOR_APPS, {"uscc": uscc, "operator_id": folded})
        return [_app_of(r) for r in rows]

    def list_applications(
        self, state: ApplicationState | None, limit: int, after: int = -1, offset: int = 0
    ) -> list[tuple[int, Application]]:
        """A page of applications in listing-key order (``ca/models.py``, "Listing keys"),
        those after the key ``after``, each with its key: a range of ``(state, log_index)``
        or ``log_index``. ``offset`` (older clients' paging) skips rows first."""
        q = select(*_APP_COLUMNS, _A.log_index).where(_A.log_index > after)
        if state is not None:
            q = q.where(_A.state == state.value)
        q = q.order_by(_A.log_index).limit(limit).offset(offset)
        return [(int(r.log_index), _app_of(r)) for r in self._conn().execute(q)]

    def add_code(self, code: EnrollmentCode) -> None:
        self.s.add(
            EnrollmentCodeRow(
                code_hash=code.code_hash,
                application_id=code.application_id,
                profiles=",".join(code.profiles),
                expires_at=code.expires_at,
                used_at=None,
            )
        )
        self.s.flush()

    def find_code(self, code_hash: str) -> EnrollmentCode | None:
        row = self._conn().execute(_FIND_CODE, {"code_hash": code_hash}).first()
        return code_of(row) if row else None

    def hold_issuance(self) -> None:
        # The Merkle log's head row is what every issuance locks first (PostgreSQL: a row
        # lock; SQLite: BEGIN IMMEDIATE already made this the only writer). Without the log
        # an issuance takes no lock before the code's row, and there is nothing to wait for.
        self._next_leaf()

    def _next_leaf(self) -> int | None:
        """With the Merkle log as a sink: lock its head for this transaction and return
        its size, the leaf index the next event gets. None without the log."""
        from ca import translog  # it imports this module

        return translog.lock_head(self.s) if translog.append_event in self.sinks else None

    def holds_events(self) -> bool:
        return self._conn().execute(select(EventRow.id).limit(1)).first() is not None

    def last_codes(self, app_ids: list[str]) -> dict[str, EnrollmentCode]:
        last: dict[str, EnrollmentCode] = {}
        if app_ids:
            q = select(*_CODE_COLUMNS).where(_C.application_id.in_(app_ids))
            for code in map(code_of, self._conn().execute(q.order_by(_C.expires_at))):
                last[code.application_id] = code  # the latest expiry wins
        return last

    def withdraw_codes(self, app_ids: Sequence[str], now: datetime.datetime) -> int:
        if not app_ids:
            return 0
        values = {"app_ids": list(app_ids), "now": now, "withdrawn": now}
        return int(self._conn().execute(_WITHDRAW_CODES, values).rowcount)

    def redeem_code(self, code_hash: str, now: datetime.datetime) -> EnrollmentCode | None:
        """Mark the code used if it is unused and unexpired: one compare-and-set (the
        database decides between concurrent redemptions); the redeemed code, or None."""
        row = (
            self._conn()
            .execute(_REDEEM_CODE, {"b_code_hash": code_hash, "now": now, "used": now})
            .first()
        )
        return code_of(row) if row else None

    def add_certificate(self, rec: CertificateRecord) -> None:
        try:
            self._conn().execute(
                _INSERT_CERT,
                {
                    "serial": rec.serial_hex,
                    "issuer_id": rec.issuer_id,
                    "profile": rec.profile,
                    "application_id": rec.application_id,
                    "uscc": rec.uscc,
                    "subject": rec.subject,
                    "spki_sha256": rec.spki_sha256,
                    "cert_sha256": rec.cert_sha256,
                    "not_before": rec.not_before,
                    "not_after": rec.not_after,
                    "der": rec.der,
                    "created_at": rec.created_at or rec.not_before,
                },
            )
        except IntegrityError as exc:
            raise Conflict("serial number collision; nothing was issued") from exc
        self._unkeyed_certs.add(rec.serial_hex)

    def get_certificate(self, serial: int) -> CertificateRecord | None:
        row = self.s.get(CertificateRow, format(serial, "x"))
        return _cert(row) if row else None

    def certificates(
        self, *, uscc: str | None, limit: int, after: int = -1, offset: int = 0
    ) -> list[tuple[int, CertificateRecord]]:
        """A page of certificates in listing-key order, as :meth:`list_applications`: a
        range of ``(uscc, log_index)`` or ``log_index``."""
        q = select(*_CERT_COLUMNS, _CERT.log_index).where(_CERT.log_index > after)
        if uscc is not None:
            q = q.where(_CERT.uscc == uscc)
        q = q.order_by(_CERT.log_index).limit(limit).offset(offset)
        return [(int(r.log_index), _cert_of(r)) for r in self._conn().execute(q)]

    def withdraw_codes_of(
        self,
        uscc: str,
        subject_class: str,
        now: datetime.datetime,
        applicant: str | None = None,
    ) -> int:
        values = {"uscc": uscc, "cls": subject_class, "now": now, "withdrawn": now}
        if applicant is None:
            return int(self._conn().execute(_WITHDRAW_CODES_OF, values).rowcount)
        values["applicant"] = applicant
        return int(self._conn().execute(_WITHDRAW_CODES_BY, values).rowcount)

    def operators_not_enrolled(self, uscc: str, after: str, limit: int) -> list[Application]:
        """The enterprise's operator authorizations in force and not enrolled yet (approved,
        no certificate issued on them, a code not withdrawn: lapsed ones are listed, to be
        given again), by application id after ``after``."""
        enrolled = select(_CERT.serial).where(_CERT.application_id == _A.id).exists()
        # not one a newer authorization of the operator replaced (its codes withdrawn)
        coded = (
            select(_C.code_hash)
            .where(_C.application_id == _A.id, _C.withdrawn_at.is_(None))
            .exists()
        )
        q = (
            select(*_APP_COLUMNS)
            .where(
                _A.uscc == uscc,
                _A.subject_class == "operator",
                _A.state == ApplicationState.APPROVED.value,
                _A.id > after,
                ~enrolled,
                coded,
            )
            .order_by(_A.id)
            .limit(limit)
        )
        return [_app_of(r) for r in self._conn().execute(q)]

    def certificates_of_application(self, app_id: str) -> list[CertificateRecord]:
        return [_cert_of(r) for r in self._conn().execute(_CERTS_OF_APP, {"app_id": app_id})]

    def key_holders(self, spki_sha256: str) -> list[CertificateRecord]:
        return [_cert_of(r) for r in self._conn().execute(_KEY_HOLDERS, {"spki": spki_sha256})]

    def renewed_from(self, serial: int) -> int | None:
        q = select(EventRow.details).where(
            EventRow.serial == format(serial, "x"),
            EventRow.type == EventType.CERTIFICATE_RENEWED.value,
        )
        for details in self.s.scalars(q):
            previous = json.loads(details).get("previous_serial")
            if isinstance(previous, str):
                return int(previous, 16)
        return None

    def append_event(self, ev: Event) -> int:
        (event_id,) = self.append_events([ev])
        return event_id

    def append_events(self, events: Sequence[Event]) -> list[int]:
        """Write the events' rows in order, each with the leaf index its log entry gets
        (the log head is locked first, as its sink would lock it right after), and hand
        them to the sinks: the Merkle log appends them all at once (one head move, each
        tree node written once); any other sink sees them one by one. Their ids, in order."""
        from ca import translog  # it imports this module

        if not events:
            return []
        values = [_event_values(ev) for ev in events]
        size = self._next_leaf()
        if size is not None:
            for i, v in enumerate(values):
                v["log_index"] = size + i
        ids = self._conn().execute(_INSERT_EVENTS, values).scalars().all()
        stored = [StoredEvent(id=int(i), **v) for i, v in zip(ids, values, strict=True)]
        if size is not None:
            self._key_new_rows(stored)
        for sink in self.sinks:
            if sink is translog.append_event:
                translog.append_events(self.s, stored)
            else:
                for one in stored:
                    sink(self.s, one)
        return [e.id for e in stored]

    def _key_new_rows(self, stored: Sequence[StoredEvent]) -> None:
        """Give the applications and certificates made in this transaction the log index
        of the first of ``stored`` that names them: their listing key, under the head's
        lock (``ca/models.py``, "Listing keys")."""
        if not (self._unkeyed_apps or self._unkeyed_certs):
            return
        apps: list[dict[str, Any]] = []
        certs: list[dict[str, Any]] = []
        for ev in stored:
            if ev.application_id in self._unkeyed_apps:
                self._unkeyed_apps.discard(ev.application_id)
                apps.append({"k_id": ev.application_id, "k_idx": ev.log_index})
            if ev.serial in self._unkeyed_certs:
                self._unkeyed_certs.discard(ev.serial)
                certs.append({"k_id": ev.serial, "k_idx": ev.log_index})
        if apps:
            self._conn().execute(_KEY_APP, apps)
        if certs:
            self._conn().execute(_KEY_CERT, certs)

    def get_status(self, serial: int, *, for_update: bool = False) -> StatusRecord | None:
        return self.get_statuses([serial], for_update=for_update).get(serial)

    def put_status(self, rec: StatusRecord) -> None:
        self.put_statuses([rec])

    def get_statuses(
        self, serials: Sequence[int], *, for_update: bool = False
    ) -> dict[int, StatusRecord]:
        """The status rows of those of ``serials`` that have one (a few ``IN`` reads), locked
        like :meth:`get_status` with ``for_update``."""
        out: dict[int, StatusRecord] = {}
        keys = [format(n, "x") for n in serials]
        for i in range(0, len(keys), _STATUS_BATCH):
            q = select(*_STATUS_COLUMNS).where(_S.serial.in_(keys[i : i + _STATUS_BATCH]))
            if for_update:
                q = q.with_for_update()
            for row in self._conn().execute(q):
                out[int(row[0], 16)] = _status_of(row)
        return out

    def put_statuses(self, recs: Sequence[StatusRecord]) -> None:
        """:meth:`put_status` for many certificates: one statement executed for all."""
        if not recs:
            return
        rows = [
            {
                "serial": format(r.serial, "x"),
                "issuer_id": r.issuer_id,
                "state": r.state.value,
                "revoked_at": r.revoked_at,
                "reason": r.reason,
                "invalidity_date": r.invalidity_date,
                "changed_at": r.changed_at,
            }
            for r in recs
        ]
        stmt = upsert_rows(self.s, CertificateStatusRow, ["serial"]).do_update(
            ["issuer_id", "state", "revoked_at", "reason", "invalidity_date", "changed_at"]
        )
        self._conn().execute(stmt, rows)

    def delete_status(self, serial: int) -> None:
        self.s.execute(
            delete(CertificateStatusRow).where(CertificateStatusRow.serial == format(serial, "x"))
        )

    def mark_crl_stale(self, issuer_id: str) -> None:
        # One upsert: the issuer's first status change may meet its first CRL on another
        # host, both making the row (crl() reads it with populate_existing once locked).
        first = {"issuer_id": issuer_id, "crl_number": 0, "stale": True}
        self.s.execute(
            upsert(self.s, CRLStateRow, first, ["issuer_id"]).do_update(["stale"]),
            execution_options={"synchronize_session": False},
        )

    def certificates_of_class(self, uscc: str, profile: str) -> list[CertificateRecord]:
        # Core rows, not ORM objects: a cessation reads every operator of the enterprise.
        rows = self._conn().execute(_CERTS_OF_CLASS, {"uscc": uscc, "profile": profile})
        return [_cert_of(r) for r in rows]

    def staff_in_force(
        self, profiles: Sequence[str], now: datetime.datetime
    ) -> list[CertificateRecord]:
        if not profiles:
            return []
        q = select(*_CERT_COLUMNS).where(
            _CERT.uscc.is_(None), _CERT.profile.in_(list(profiles)), _CERT.not_after > now
        )
        found = list(map(_cert_of, self._conn().execute(q)))
        statuses = self.get_statuses([c.serial for c in found])
        return [c for c in found if statuses.get(c.serial) is None]

    def named_in_force(
        self,
        subject: str,
        profiles: Sequence[str],
        now: datetime.datetime,
        void_issuers: Collection[str] = (),
    ) -> CertificateRecord | None:
        if not profiles:
            return None
        # distinguishedNameMatch (RFC 5280 §7.1, RFC 4518): "wang fang" is "Wang Fang"'s
        # DN to a relying party (enrollment probe, F2), and 王⼯ (KANGXI RADICAL WORK) or
        # full-width "Ｌｉ Ｗｅｉ" the DN of 王工 or "Li Wei" (name look-alike probe). SQL
        # folds no such forms, so the staff of these profiles in force (every member's: some
        # hundreds; one approval at a time) are compared here by their keys.
        wanted = dn_key(subject)
        q = select(*_CERT_COLUMNS).where(
            _CERT.uscc.is_(None), _CERT.profile.in_(list(profiles)), _CERT.not_after > now
        )
        found = [
            c
            for c in map(_cert_of, self._conn().execute(q))
            if dn_key(c.subject) == wanted and c.issuer_id not in void_issuers
        ]
        statuses = self.get_statuses([c.serial for c in found])
        for c in found:
            st = statuses.get(c.serial)
            if st is None or st.state is StatusState.HOLD:
                return c
        return None

    def credential_in_force(
        self,
        uscc: str,
        profiles: Sequence[str],
        now: datetime.datetime,
        besides: int | None = None,
        void_issuers: Collection[str] = (),
    ) -> tuple[CertificateRecord, bool] | None:
        if not profiles:
            return None
        # the longest-lasting first; of two ending in the same second (notAfter has whole
        # seconds: a renewal soon after the issuance), the later issued, which its holder
        # keeps: the log's order (as the group writer's _CREDENTIAL_IN_FORCE)
        q = (
            select(*_CERT_COLUMNS)
            .where(_CERT.uscc == uscc, _CERT.profile.in_(list(profiles)), _CERT.not_after > now)
            .order_by(_CERT.not_after.desc(), func.coalesce(_CERT.log_index, -1).desc())
        )
        unexpired = [
            c
            for c in map(_cert_of, self._conn().execute(q))
            if c.serial != besides and c.issuer_id not in void_issuers
        ]
        statuses = self.get_statuses([c.serial for c in unexpired])
        in_force = [
            (c, st is not None)
            for c in unexpired
            if (st := statuses.get(c.serial)) is None or st.state is StatusState.HOLD
        ]
        return in_force[0] if in_force else None

    # -- status artifacts (ca/status.py) ---------------------------------------------------

    def cached_ocsp(self, serial: int) -> tuple[bytes, datetime.datetime, datetime.datetime] | None:
        row = self.s.get(OCSPResponseRow, format(serial, "x"))
        return (row.der, row.this_update, row.next_update) if row else None

    def store_ocsp(
        self,
        serial: int,
        issuer_id: str,
        der: bytes,
        this_update: datetime.datetime,
        next_update: datetime.datetime,
        *,
        replace: bool = True,
        superseding: datetime.datetime | None = None,
    ) -> None:
        """Store the pre-signed response; with ``replace=False`` only if the certificate
        has none yet (a first answer signed on two hosts at once: the first stored stays,
        and neither overwrites the response of a status change made meanwhile). With
        ``superseding`` (the thisUpdate of the response a refresh read), replace only that
        response: a revocation or hold committed since stored its own, which a refresh
        signed from the status read before it must not overwrite (PostgreSQL's read
        committed lets the two interleave; the conflict clause sees the committed row)."""
        values = {
            "serial": format(serial, "x"),
            "issuer_id": issuer_id,
            "der": der,
            "this_update": this_update,
            "next_update": next_update,
        }
        stmt = upsert(self.s, OCSPResponseRow, values, ["serial"])
        unchanged = None if superseding is None else OCSPResponseRow.this_update == superseding
        self.s.execute(
            stmt.do_update(["issuer_id", "der", "this_update", "next_update"], where=unchanged)
            if replace
            else stmt.do_nothing(),
            execution_options={"synchronize_session": False},
        )

    def store_ocsp_many(
        self,
        responses: Sequence[tuple[int, str, bytes, datetime.datetime, datetime.datetime]],
        *,
        superseding: datetime.datetime | None = None,
    ) -> None:
        """:meth:`store_ocsp` (replacing; with ``superseding``, only a response of that
        thisUpdate) for many certificates at once: ``(serial, issuer_id, der, this_update,
        next_update)`` each, one statement executed for all."""
        if not responses:
            return
        rows = [
            {
                "serial": format(serial, "x"),
                "issuer_id": issuer_id,
                "der": der,
                "this_update": this_update,
                "next_update": next_update,
            }
            for serial, issuer_id, der, this_update, next_update in responses
        ]
        unchanged = None if superseding is None else OCSPResponseRow.this_update == superseding
        stmt = upsert_rows(self.s, OCSPResponseRow, ["serial"]).do_update(
            ["issuer_id", "der", "this_update", "next_update"], where=unchanged
        )
        self._conn().execute(stmt, rows)

    def make_ocsp_due(self, issuer_id: str, at: datetime.datetime) -> int:
        """Every stored OCSP response of ``issuer_id`` made due (``this_update`` and
        ``next_update`` set to ``at``, long past, its bytes dropped): no process serves one
        from the pre-signed path again; each is answered anew. How many."""
        res = self._conn().execute(
            update(OCSPResponseRow)
            .where(OCSPResponseRow.issuer_id == issuer_id)
            .values(der=b"", this_update=at, next_update=at)
        )
        return int(res.rowcount)

    def crl_state(self, issuer_id: str, *, for_update: bool = False) -> CRLStateRow | None:
        q = select(CRLStateRow).where(CRLStateRow.issuer_id == issuer_id)
        if for_update:
            # The row as it is once locked, not as this session loaded it before (the
            # identity map keeps an object's loaded values, and ensure_crl_state loads it
            # before the lock): another process may have signed the next CRL meanwhile,
            # and a stale number would be signed a second time (RFC 5280 §5.2.3).
            q = q.with_for_update().execution_options(populate_existing=True)
        return self.s.scalars(q).first()

    def ensure_crl_state(self, issuer_id: str) -> None:
        # An issuer's first CRL asked of two hosts at once: the later insert waits for the
        # other's row and leaves it (it then locks and reads that row).
        first = {"issuer_id": issuer_id, "crl_number": 0, "stale": True}
        self.s.execute(upsert(self.s, CRLStateRow, first, ["issuer_id"]).do_nothing())

    def revoked_entries(
        self, issuer_id: str, expired_before: datetime.datetime | None = None
    ) -> Iterator[StatusRecord]:
        """Every revoked or held certificate of ``issuer_id``, streamed in serial order;
        with ``expired_before``, not those whose notAfter is earlier (a CRL leaves them out
        once they were on one issued after they expired: RFC 5280 §3.3)."""
        q = select(*_STATUS_COLUMNS).where(_S.issuer_id == issuer_id)
        if expired_before is not None:
            q = q.where(
                ~select(_CERT.serial)
                .where(_CERT.serial == _S.serial, _CERT.not_after < expired_before)
                .exists()
            )
        q = q.order_by(_S.serial).execution_options(yield_per=5000)
        for row in self._conn().execute(q):
            yield _status_of(row)


SCHEMA_CHECK_SECONDS = 2.0
"""How often a server re-reads its database's schema revision (:meth:`SqlStore.check_schema`)."""


class SchemaFence:
    """Whether a database's recorded schema revision is still this release's, re-read at
    most every :data:`SCHEMA_CHECK_SECONDS` (each service's store checks its own before
    it writes: :meth:`SqlStore.check_schema`, ``authsvc.store.SqlAuthStore``)."""

    def __init__(self, dbapi: DbapiReads) -> None:
        self.dbapi = dbapi
        self._next = 0.0
        self._fenced = True
        """False for a database with no such version table (tests' create_all)."""

    def check(self, version_table: str, head: str) -> None:
        """Raise :class:`~ca.errors.SchemaMoved` once ``version_table`` names another
        revision than ``head``."""
        now = time.monotonic()
        if not self._fenced or now < self._next:
            return
        try:
            with self.dbapi.engine().connect().execution_options(**{READ_ONLY: True}) as conn:
                query = text(f"SELECT version_num FROM {version_table}")  # noqa: S608
                found = {str(r[0]) for r in conn.execute(query)}
                conn.rollback()
        except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                self._fenced = False  # no migrations here: nothing to follow
                return
            raise
        self._refuse_lost_file()
        if found and found != {head}:
            raise SchemaMoved(
                f"the database is at schema revision {', '.join(sorted(found))}, not this "
                f"server's {head}: another release upgraded it while this server ran, "
                "so this server writes nothing more; stop it and start that release"
            )
        self._next = now + SCHEMA_CHECK_SECONDS

    def _refuse_lost_file(self) -> None:
        """:class:`~ca.errors.DatabaseDamaged` once the SQLite file written to was deleted
        while this process had it open (:func:`ca.privatefiles.sqlite_files_lost`):
        health said "damaged", and writes went on into the deleted file."""
        from ca.errors import DatabaseDamaged
        from ca.privatefiles import sqlite_file, sqlite_files_lost

        path = sqlite_file(self.dbapi.engine().url)
        lost = sqlite_files_lost(path) if path is not None else None
        if lost is not None:
            raise DatabaseDamaged(
                f"{lost}: this server writes nothing more, as what it wrote would be lost; "
                "restore the database (docs/emergency-plan.md, runbook 4)"
            )


class SqlStore:
    """Transactions over sessions from ``session_factory`` (Flask: ``db.session``)."""

    def __init__(
        self, session_factory: Callable[[], Session], event_sinks: tuple[EventSink, ...] = ()
    ) -> None:
        self.session_factory = session_factory
        self.event_sinks = event_sinks
        self.dbapi = DbapiReads(session_factory)
        self._writer: IssuanceWriter | None = None
        self._writer_lock = threading.Lock()
        self._grouped = True
        self._fence = SchemaFence(self.dbapi)

    def check_schema(self) -> None:
        """Refuse to write (:class:`~ca.errors.SchemaMoved`) once the database's recorded
        schema revision is not this release's: an old server left running while a newer
        release upgraded the database went on writing by its own rules (it enrolled a code
        the new release had withdrawn, issued a second legal-person certificate: upgrade
        probe). Read at most every :data:`SCHEMA_CHECK_SECONDS`, so a server goes on
        writing for that long at most; reads are never refused."""
        from ca.db import SCHEMA_HEAD, VERSION_TABLE

        self._fence.check(VERSION_TABLE, SCHEMA_HEAD)

    def bind(self, engine: Engine) -> None:
        """The engine the DBAPI fast paths use (else taken from the first session)."""
        self.dbapi.bind(engine)

    def enrollment_facts(
        self, code_hash: str, spki_sha256: str
    ) -> tuple[EnrollmentCode | None, Application | None, CertificateRecord | None]:
        """The code, its application and a certificate of the key: two reads on one pooled
        DBAPI connection, outside any write lock (SQLite: each its own autocommit read).

        No transaction spans them, and none is needed: an application never changes its
        id, and the code's redemption is decided again by the compare-and-set that
        commits with the certificate. Cheaper than :meth:`reading` by the session,
        ``BEGIN`` and ``COMMIT`` it saves.
        """
        code_row, holder_row = self.dbapi.fetch(
            (_ENROLL_CODE_SQL, (code_hash,)), (_KEY_HOLDER_SQL, (spki_sha256,))
        )
        code, app = _facts_code(code_row) if code_row else (None, None)
        return code, app, _cert_of(holder_row) if holder_row else None

    def read_ocsp(self, serial: int) -> tuple[bytes, datetime.datetime] | None:
        """The pre-signed OCSP response of ``serial`` and its thisUpdate: one primary-key
        read outside any write transaction (the responder's hot path)."""
        (row,) = self.dbapi.fetch(
            ("SELECT der, this_update FROM ocsp_responses WHERE serial = ?", (format(serial, "x"),))
        )
        if row is None:
            return None
        this_update = utc_from_db(row[1])
        assert this_update is not None
        return bytes(row[0]), this_update

    def not_good(self, serials: list[int]) -> set[int]:
        """Which of ``serials`` are revoked or on hold: one read per 500 serials, outside
        any write lock (the token service's session sweep asks for all of its sessions)."""
        out: set[int] = set()
        with self.dbapi.engine().connect().execution_options(**{READ_ONLY: True}) as conn:
            for i in range(0, len(serials), 500):
                chunk = [format(n, "x") for n in serials[i : i + 500]]
                rows = conn.execute(
                    select(CertificateStatusRow.serial).where(
                        CertificateStatusRow.serial.in_(chunk)
                    )
                )
                out.update(int(r[0], 16) for r in rows)
            conn.rollback()
        return out

    @contextmanager
    def reading(self) -> Iterator[SqlTransaction]:
        """Reads only: checks made before the slow part of a request (signing, linting)
        never queue behind, or hold up, the writers."""
        with reading(self.session_factory) as session:
            yield SqlTransaction(session, self.event_sinks)

    @contextmanager
    def transaction(self) -> Iterator[SqlTransaction]:
        self.check_schema()
        with writing(self.session_factory) as session:
            yield SqlTransaction(session, self.event_sinks)

    def commit_issuance(self, item: IssuanceWrite) -> int:
        """Group commit on raw DBAPI connections (:mod:`ca.groupwrite`) when the only event
        sink is the Merkle log (or there is none); else one session transaction, so that
        every other sink still sees each event."""
        self.check_schema()
        if self._grouped:
            writer = self._writer or self._make_writer()
            if writer is not None:
                return writer.commit(item)
        return self.commit_by_session(item)

    def _make_writer(self) -> IssuanceWriter | None:
        from ca import groupwrite, translog  # they import this module

        logged = self.event_sinks == (translog.append_event,)
        if not logged and self.event_sinks:
            self._grouped = False  # decided once: other sinks need the session's path
            return None
        with self._writer_lock:  # one writer (one group queue) per store
            if self._writer is None:
                self._writer = groupwrite.IssuanceWriter(
                    self.dbapi.engine(),
                    self.commit_by_session,
                    log=logged,
                    connections=self.dbapi.connections(),
                )
            return self._writer

    def commit_by_session(self, item: IssuanceWrite) -> int:
        """:meth:`commit_issuance` in one session transaction, through the event sinks."""
        with self.transaction() as tx:
            tx.hold_issuance()  # the head before the code's row, as the group writer does
            if item.code_hash is not None:
                assert item.now is not None
                if tx.redeem_code(item.code_hash, item.now) is None:
                    # Checked before signing: another redemption or a withdrawal came first.
                    found = tx.find_code(item.code_hash)
                    raise code_refusal(found, item.now) or InvalidCode(CODE_USED)
            if item.signed_by is not None:  # as the group writer decides it
                status = tx.get_status(item.signed_by)
                if status is not None:
                    raise signer_refusal(item.signed_by, status.state.value)
            if tx.key_holders(item.record.spki_sha256):
                raise Conflict(KEY_CERTIFIED)
            if item.sole_credential and item.record.uscc is not None:
                assert item.now is not None
                other = tx.credential_in_force(
                    item.record.uscc,
                    item.sole_credential,
                    item.now,
                    besides=item.signed_by,
                    void_issuers=item.void_issuers,
                )
                if other is not None:  # as the group writer decides it
                    held, on_hold = other
                    raise credential_refusal(
                        item.record.uscc,
                        held.serial_hex,
                        held.not_after,
                        on_hold=on_hold,
                        renewing=item.signed_by,
                    )
            if item.enterprise_not_held and item.record.uscc is not None:
                assert item.now is not None  # an operator's enterprise not on hold, as above
                refuse_held_enterprise(
                    tx, item.record.uscc, item.enterprise_not_held, item.now, item.void_issuers
                )
            if item.sole_name:  # the one-name rule, as the group writer decides it
                assert item.now is not None
                subject = item.record.subject
                named = tx.named_in_force(subject, item.sole_name, item.now, item.void_issuers)
                if named is not None:
                    raise same_name_refusal(
                        subject, named.subject, named.serial_hex, named.profile, named.not_after
                    )
            tx.add_certificate(item.record)
            return tx.append_event(item.event)

    def remembered(self, jti: str) -> bool:
        """Whether :meth:`remember` stored ``jti`` and it has not expired (read only)."""
        (row,) = self.dbapi.fetch(("SELECT expires_at FROM seen_jti WHERE jti = ?", (jti,)))
        expires = utc_from_db(row[0]) if row is not None else None
        return expires is not None and expires >= datetime.datetime.now(datetime.UTC)

    def remember(self, jti: str, expires_at: datetime.datetime) -> bool:
        session = self.session_factory()
        try:
            now = datetime.datetime.now(datetime.UTC)
            session.execute(delete(SeenJtiRow).where(SeenJtiRow.expires_at < now))
            session.add(SeenJtiRow(jti=jti, expires_at=expires_at))
            session.commit()
            return True
        except IntegrityError:
            session.rollback()
            return False
        except BaseException:
            session.rollback()
            raise
