"""Database set-up: engines configured per backend, and Alembic migrations to head."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from ca.config import PoolBounds
from ca.errors import EPortError
from ca.privatefiles import sqlite_file
from ca.store import READ_ONLY, configure_engine, fill_listing_keys

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("eport.ca")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
SCHEMA_HEAD = "0012"
"""The newest revision of the CA's migrations (``tests/test_upgrades.py`` checks that it
is Alembic's head). A database recorded at it is not handed to Alembic: importing Alembic
and reading the migration scripts took about 0.3 s of CPU from every ``eport serve``."""
MIGRATION_LOCK = 0x6570_6F72_7401
"""PostgreSQL advisory lock key of the CA's migrations ("eport" and 1)."""


PG_CONNECT_TIMEOUT = 10
"""Seconds libpq waits for a new connection to PostgreSQL."""

PG_CONNECT_DEFAULTS: dict[str, object] = {
    "connect_timeout": PG_CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
"""libpq's bounds on a PostgreSQL server that does not answer: 10 s to connect; a silent
peer (a network partition, a host gone) is found by TCP keepalives after about a minute,
and data left unacknowledged for 30 s drops the connection. Without them a request, and
the worker thread serving it, waited for ever; and ``eport serve`` started against such
a server printed nothing. The database URL's own parameters win."""


def install_answer_deadline(answer_seconds: float) -> None:
    """Make this process's psycopg2 connections wait through a callback (psycopg2's
    "green" mode, ``set_wait_callback``) that gives up on a PostgreSQL server after
    ``answer_seconds`` without an answer to one statement, or :data:`PG_CONNECT_TIMEOUT`
    for a new connection (libpq ignores its own ``connect_timeout`` in this mode). libpq
    has no bound on an answer: TCP keepalives and ``tcp_user_timeout`` end a silent
    peer, but not a server whose host still acknowledges the bytes (a stopped
    postmaster, hung storage).

    Giving up raises psycopg2's ``OperationalError`` and psycopg2 closes the
    connection, which SQLAlchemy takes as a disconnect: the request answers 503
    (``database-unavailable``) and the pool connects anew once the server answers.
    Called in each ``eport serve`` worker that uses PostgreSQL; the start's migrations
    and the CLI keep libpq's own waiting."""
    import select
    import time

    import psycopg2
    from psycopg2 import extensions

    connect_seconds = min(float(PG_CONNECT_TIMEOUT), answer_seconds)

    def wait(conn: Any) -> None:
        limit = connect_seconds if conn.status == extensions.STATUS_SETUP else answer_seconds
        deadline = time.monotonic() + limit
        while True:
            state = conn.poll()
            if state == extensions.POLL_OK:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise psycopg2.OperationalError(
                    f"the database did not answer within {limit:g} s (database_answer_seconds)"
                )
            if state == extensions.POLL_READ:
                select.select([conn.fileno()], [], [], left)
            elif state == extensions.POLL_WRITE:
                select.select([], [conn.fileno()], [], left)
            else:  # psycopg2 answers only these
                raise psycopg2.OperationalError(f"unexpected poll state {state}")

    extensions.set_wait_callback(wait)


def engine_options(url: str, pool: PoolBounds | None = None) -> dict[str, object]:
    """Ping pooled connections before use only over a network: a SQLite file needs no
    liveness check, and the ping is a query on every checkout (the OCSP hot path).
    PostgreSQL connections get :data:`PG_CONNECT_DEFAULTS` unless the URL sets them, and
    the server's ``pool`` bounds (``EPORT_DB_POOL_SIZE``, ``EPORT_DB_MAX_OVERFLOW``,
    ``EPORT_DB_POOL_TIMEOUT_SECONDS``; none: SQLAlchemy's 5, 10 and 30 s, for the CLI's
    short-lived engines). A SQLite engine keeps SQLAlchemy's pool for a file (its
    connections per thread are taken out of it: :class:`ca.store.ThreadConnections`) and
    flask-sqlalchemy's for ``:memory:``."""
    options: dict[str, object] = {"pool_pre_ping": not url.startswith("sqlite")}
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        given = set(parsed.query)
        options["connect_args"] = {k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in given}
        if pool is not None:
            options["pool_size"] = pool.size
            options["max_overflow"] = pool.overflow
            options["pool_timeout"] = pool.timeout
    return options


def make_engine(url: str, pool: PoolBounds | None = None) -> Engine:
    engine = create_engine(url, **engine_options(url, pool))
    configure_engine(engine)
    return engine


def upgrade(url: str) -> None:
    """Bring the schema at ``url`` to the latest Alembic revision."""
    refuse_other_encoding(url, "CA")
    before = recorded_revisions(url, VERSION_TABLE)
    if before != {SCHEMA_HEAD}:
        migrate(url, MIGRATIONS, VERSION_TABLE, "CA")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            filled = conn.execute(text(_FILL_LOG_INDEX)).rowcount
            keyed = fill_listing_keys(conn)
            folded = conn.execute(text(FOLD_OPERATOR_IDS)).rowcount
            twice = (
                operator_ids_in_force_twice(conn)
                if folded or any(rev < "0011" for rev in before)
                else []
            )
    finally:
        engine.dispose()
    if twice:
        shown = ", ".join(f"{uscc} {op_id!r} ({n})" for uscc, op_id, n in twice[:10])
        more = f" and {len(twice) - 10} more" if len(twice) > 10 else ""
        log.warning(
            "%d operator ids have certificates in force from more than one authorization "
            "(ids that differ only in case, which releases before 0011 told apart, are one "
            "operator): %s%s. The enterprise revokes those of the authorizations it does not "
            "want (eport cert list --uscc, eport revoke; docs/ca.md, Upgrading)",
            len(twice),
            shown,
            more,
        )
    if folded:
        log.warning(
            "%d operator authorizations had an operator id not folded to lower case "
            "(written by a server of a release before 0011 after the upgrade?); folded, "
            "eport operator add finds them again. Check with eport cert list --uscc that no "
            "operator id has two certificates in force (docs/ca.md, Upgrading)",
            folded,
        )
    if filled:
        log.warning(
            "%d logged events had no log index (written by a server of a release before "
            "0008 after the upgrade?); set from the log, the audit listings show them now",
            filled,
        )
    if keyed:
        log.warning(
            "%d applications or certificates had no listing key (written by a server of a "
            "release before 0009 after the upgrade?); set from the log, eport ra list and "
            "eport cert list show them now",
            keyed,
        )


_FILL_LOG_INDEX = (
    "UPDATE events SET log_index ="
    " (SELECT log_entries.idx FROM log_entries WHERE log_entries.event_id = events.id)"
    " WHERE events.log_index IS NULL"
    " AND EXISTS (SELECT 1 FROM log_entries WHERE log_entries.event_id = events.id)"
)
"""Every start: the leaf index of a logged event whose row lacks it, read from the log.
Only a server of an earlier release, still writing after the upgrade, leaves one; the
audit listings (which read ``events.log_index``) would never show it. Reads the NULL
range of ``ix_events_log_index``: nothing to do costs one index probe."""


FOLD_OPERATOR_IDS = (
    "UPDATE applications SET operator_id = lower(operator_id) "
    "WHERE operator_id IS NOT NULL AND operator_id <> lower(operator_id)"
)
"""Migration 0011's statement, again at every start: a server of a release before 0011
still writing after the upgrade stores an operator id as typed (``E5``), which this
release's folded lookup (``e5``) never finds, so authorizing the id again while the
first's certificate is in force was not refused (upgrade probe, session 24). Operator
ids are PrintableString, ASCII only, so SQL's ``lower()`` folds them as Python does. A
scan of the applications (about 50 ms for 200,000 on SQLite), once per start."""


def operator_ids_in_force_twice(conn: Connection) -> list[tuple[str, str, int]]:
    """(USCC, operator id, authorizations) of each operator id (folded) with certificates
    in force (not expired, not revoked; on hold counts) from more than one authorization.
    Releases before 0011 compared ids by case, so ``E5`` and ``e5`` were authorized and
    certified apart; migration 0011 folds them to one id silently, and both stay in force
    (upgrade probe, session 27). Asked when a start upgrades from before 0011, or folds an
    id an old server wrote since."""
    import datetime

    from sqlalchemy import distinct, func, or_, select

    from ca.models import ApplicationRow, CertificateRow, CertificateStatusRow

    count = func.count(distinct(ApplicationRow.id))
    rows = conn.execute(
        select(ApplicationRow.uscc, ApplicationRow.operator_id, count)
        .join(CertificateRow, CertificateRow.application_id == ApplicationRow.id)
        .outerjoin(CertificateStatusRow, CertificateStatusRow.serial == CertificateRow.serial)
        .where(
            ApplicationRow.operator_id.is_not(None),
            CertificateRow.not_after > datetime.datetime.now(datetime.UTC),
            or_(CertificateStatusRow.state.is_(None), CertificateStatusRow.state != "revoked"),
        )
        .group_by(ApplicationRow.uscc, ApplicationRow.operator_id)
        .having(count > 1)
        .order_by(ApplicationRow.uscc, ApplicationRow.operator_id)
    ).all()
    return [(str(u), str(o), int(n)) for u, o, n in rows]


def recorded_revisions(url: str, version_table: str) -> set[str]:
    """The schema revisions ``version_table`` records (none: a new database)."""
    engine = make_engine(url)
    try:
        with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            if not inspect(conn).has_table(version_table):
                return set()
            rows = conn.execute(text(f"SELECT version_num FROM {version_table}"))  # noqa: S608
            return {str(row[0]) for row in rows}
    finally:
        engine.dispose()


def _alembic_config(url: str, migrations: Path) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def migrate(url: str, migrations: Path, version_table: str, what: str) -> None:
    """Alembic's upgrade to the head of ``migrations``, after refusing a revision it does
    not know (:func:`refuse_unknown_revision`)."""
    from alembic import command

    cfg = _alembic_config(url, migrations)
    refuse_unknown_revision(cfg, url, version_table, what)
    with _one_migration_at_a_time(url):
        command.upgrade(cfg, "head")


@contextmanager
def _one_migration_at_a_time(url: str) -> Iterator[None]:
    """A SQLite database's migrations, one process at a time: an ``flock`` on a file beside
    it. Alembic runs each SQLite migration in its own transaction and reads the revision
    before the first (SQLite's DDL is not transactional to it), so two servers starting
    together on a new data directory both read "none", and the second failed on the
    first's tables ("table oidc_browser_sessions already exists": clean-clone CI, session
    24). Under the lock the second reads the revision the first left. PostgreSQL has its
    advisory lock in the migrations' transaction (:func:`lock_for_migrations`)."""
    path = sqlite_file(url)
    try:
        fd = (
            os.open(
                path.with_name(path.name + ".migrating"),
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
            if path is not None
            else -1
        )
    except FileNotFoundError:  # no directory yet: SQLite fails on it first, in its words
        fd = -1
    if fd < 0:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # the lock goes with it


def check_known_revision(url: str, migrations: Path, version_table: str, what: str) -> None:
    """:func:`refuse_unknown_revision` alone, changing nothing: ``eport serve`` asks it of
    both databases before it upgrades either (a CA database of a newer release was
    refused only after the token service's had been upgraded). No SQLite file yet: fine."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        return
    refuse_unknown_revision(_alembic_config(url, migrations), url, version_table, what)


def lock_for_migrations(connection: Connection, key: int) -> None:
    """Make the migrations of one schema run one process at a time, in the migrations'
    transaction. Several hosts starting ``eport serve`` together on one PostgreSQL
    database each run them: without this, the one that read the old revision second
    failed on the first's work (a table that exists, a column already renamed).
    PostgreSQL: a transaction-scoped advisory lock, after which Alembic reads the
    revision the winner committed. SQLite: a file lock around the whole upgrade
    (:func:`_one_migration_at_a_time`), as Alembic reads its revision there outside the
    migrations' transactions."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def refuse_other_encoding(url: str, what: str) -> None:
    """Refuse, in one line, a PostgreSQL database whose encoding is not UTF8, before any
    migration: it cannot store the names the CA certifies (厦门港务贸易有限公司), and
    every application or login with one would fail with a 500 (psycopg2 encodes for
    SQL_ASCII, which a cluster made under the C locale has, as ASCII; LATIN1 holds no
    Chinese). SQLite stores text as UTF-8 always."""
    if make_url(url).get_backend_name() != "postgresql":
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            encoding = conn.exec_driver_sql("SHOW server_encoding").scalar()
    finally:
        engine.dispose()
    if str(encoding).upper() not in ("UTF8", "UTF-8"):
        where = make_url(url).render_as_string(hide_password=True)
        raise EPortError(
            f"the {what} database {where} is in the encoding {encoding}, which cannot hold "
            "Chinese names: use a database created with ENCODING 'UTF8' "
            "(createdb -E UTF8 -T template0 NAME)"
        )


def refuse_unknown_revision(cfg: Config, url: str, version_table: str, what: str) -> None:
    """Refuse, in one line, a database whose schema revision this release's migrations
    do not know: a newer release upgraded it (a release rolled back after an upgrade).
    Alembic would only say that it cannot locate the revision; nothing is changed."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    known = {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}
    engine = make_engine(url)
    try:
        with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            opts = {"version_table": version_table}
            heads = MigrationContext.configure(conn, opts=opts).get_current_heads()
    finally:
        engine.dispose()
    unknown = sorted(set(heads) - known)
    if unknown:
        where = make_url(url).render_as_string(hide_password=True)
        raise EPortError(
            f"the {what} database {where} is at schema revision {', '.join(unknown)}, which "
            "this release does not know (a newer release upgraded it): run that release or a "
            "newer one, or restore the backup taken before the upgrade"
        )


def other_ca_records(url: str) -> str | None:
    """If the CA database at ``url`` already holds events (another CA's: one database
    holds one CA), a one-line refusal naming it (without its password); else None. For
    a new CA (``eport ca init``, the development CA's first start): its log would be
    woven into the other's, and an auditor's check would not tell them apart."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return None  # no database file yet: nothing in it
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("events"):
                return None
            if conn.execute(text("SELECT 1 FROM events LIMIT 1")).first() is None:
                return None
    finally:
        engine.dispose()
    return f"the database {parsed.render_as_string(hide_password=True)} {ANOTHER_CA}"


ANOTHER_CA = (
    "already holds another CA's records: a new CA needs a database of its own (an empty "
    "PostgreSQL database, or a new data directory's SQLite file)"
)
"""Why a new CA refuses a database that holds events (after "the database ...")."""


def _root_serials(url: str) -> set[str]:
    """The serials of the root certificates the CA database at ``url`` records (none
    before its schema exists, nor when its SQLite file does not exist: none is made)."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        return set()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("certificates"):
                return set()
            rows = conn.execute(text("SELECT serial FROM certificates WHERE profile = 'root'"))
            return {str(r[0]) for r in rows}
    finally:
        engine.dispose()


def made_elsewhere(url: str, data_dir: Path) -> str | None:
    """If the CA in ``data_dir`` was made with its records in the data directory's own
    SQLite database (``eport ca init`` or a development CA without
    ``EPORT_DATABASE_URL``) while ``url``, another database, records no root: a one-line
    refusal; else None. Served there, the CA's first certificates and events (its root,
    issuing CAs, officers) would be missing from the database's log, and the certificates
    name the URLs init was given."""
    from cryptography import x509

    root_file = Path(data_dir) / "ca" / "root.crt"
    own_db = Path(data_dir) / "eport.db"
    if not root_file.is_file() or not own_db.is_file():
        return None
    target = sqlite_file(url)
    if target is not None and target.resolve() == own_db.resolve():
        return None
    ours = format(x509.load_pem_x509_certificate(root_file.read_bytes()).serial_number, "x")
    if ours not in _root_serials(f"sqlite:///{own_db.resolve()}") or _root_serials(url):
        return None
    where = make_url(url).render_as_string(hide_password=True)
    return (
        f"the CA in {data_dir} was made with its records in {own_db} (eport ca init without "
        f"EPORT_DATABASE_URL), not in {where}, which holds none of them: served there, its "
        "root, issuing CAs and officers would be missing from the log. Make the CA with "
        "EPORT_DATABASE_URL (and EPORT_PUBLIC_BASE_URL) set for eport ca init, or unset "
        "EPORT_DATABASE_URL to serve it from its own database"
    )


def foreign_root(url: str, data_dir: Path) -> str | None:
    """If the CA database at ``url`` records a root certificate and none of its roots is
    the one in ``data_dir`` (this server's CA), a one-line refusal; else None. A server
    must not serve one CA's keys over another CA's records and log. A database that
    records no root at all: :func:`unrecorded_root`."""
    from cryptography import x509

    root_file = Path(data_dir) / "ca" / "root.crt"
    if not root_file.is_file():
        return None
    ours = format(x509.load_pem_x509_certificate(root_file.read_bytes()).serial_number, "x")
    roots = _root_serials(url)
    if not roots:
        return unrecorded_root(url, data_dir)
    if ours in roots:
        return None
    where = make_url(url).render_as_string(hide_password=True)
    return (
        f"the database {where} holds the records of another CA (its root is not the one in "
        f"{root_file}): point EPORT_DATABASE_URL at this CA's own database"
    )


def unrecorded_root(url: str, data_dir: Path) -> str | None:
    """If ``data_dir`` holds a CA under joint custody (made by ``eport ca init``) while
    the CA database at ``url`` records no root certificate at all, a one-line refusal;
    else None. ``eport ca init`` records its root in the run that writes
    ``ca/custody.json``: such a directory is what an init of a release before
    :data:`ca.hierarchy.UNFINISHED_FILE` left when it was cut short after the keys and
    before the records (served, a CA with no root, issuing CA or custody record in its
    log, and no RA officer), or a CA pointed at the wrong database."""
    from ca import hierarchy

    d = hierarchy.ca_dir(data_dir)
    if not (d / "root.crt").is_file() or not (d / "custody.json").is_file():
        return None
    if _root_serials(url):
        return None
    where = make_url(url).render_as_string(hide_password=True)
    unfinished = (
        f"its `eport ca init` did not finish (remove {data_dir} and that init's --out "
        "directory, and run it again)"
    )
    own = sqlite_file(url)
    if own is not None and own.absolute().is_relative_to(Path(data_dir).absolute()):
        return f"the database {where} records no root certificate: {unfinished}"
    return (
        f"the database {where} records no root certificate, so the CA in {d} was never "
        f"recorded there: either {unfinished}, or EPORT_DATABASE_URL names another "
        "database than the one init recorded it in"
    )
