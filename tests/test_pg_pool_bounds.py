"""The PostgreSQL connection pools of ``eport serve`` bounded by ``EPORT_DB_POOL_SIZE`` and
``EPORT_DB_MAX_OVERFLOW`` (the token service's: ``EPORT_AUTH_DB_*``), counted in
``pg_stat_activity`` of a real PostgreSQL 15 under concurrent requests; and a request
that gets no connection within ``EPORT_DB_POOL_TIMEOUT_SECONDS`` answered 503
``database-unavailable`` then, not left waiting (SQLAlchemy's pool ``TimeoutError`` was a
500 "nothing was changed", with a traceback). Every pool was SQLAlchemy's default, 5 + 10
per engine and worker, whatever PostgreSQL's ``max_connections``: one worker's four
threads held four connections to the CA's database here."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg2
import pytest
import requests

from ca.config import PoolBounds
from ca.db import PG_CONNECT_DEFAULTS, engine_options
from tests.conftest import Postgres, Server, start_server, stop

POOL_WAIT = 4.0
"""``EPORT_DB_POOL_TIMEOUT_SECONDS`` (and the token service's) of the server here."""
CONCURRENT = 12
"""Requests sent at once: three times the server's threads (``eport serve``'s 4)."""
APPLICATION = {"uscc": "91350100M000100Y43", "legal_name": "Pool Bound Trading Co."}
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class Bounded:
    server: Server
    pg: Postgres
    ca_db: str
    auth_db: str


@pytest.fixture(scope="module")
def bounded(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bounded]:
    """One worker whose every pool holds one connection and opens none beyond it."""
    ca_url, auth_url = postgres.createdb("pool_ca"), postgres.createdb("pool_auth")
    one = {"POOL_SIZE": "1", "MAX_OVERFLOW": "0", "POOL_TIMEOUT_SECONDS": str(POOL_WAIT)}
    env = {f"EPORT_DB_{k}": v for k, v in one.items()}
    env.update({f"EPORT_AUTH_DB_{k}": v for k, v in one.items()})
    env.update(
        EPORT_AUTH_DATABASE_URL=auth_url,
        EPORT_CRL_REFRESH_SECONDS="0",  # no background user of the CA's pool mid-count
        EPORT_AUTH_STATUS_TTL_SECONDS="0",  # every login asks the CA's database
    )
    root = tmp_path_factory.mktemp("pool")
    srv, proc = start_server(root / "data", ca_url, workers=1, extra_env=env)
    try:
        yield Bounded(srv, postgres, "pool_ca", "pool_auth")
    finally:
        stop(proc)


def _connect(pg: Postgres, db: str) -> psycopg2.extensions.connection:
    return psycopg2.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname=db)


@contextlib.contextmanager
def locked(pg: Postgres, db: str, table: str) -> Iterator[int]:
    """``table`` of ``db`` locked against every other session (ACCESS EXCLUSIVE): a
    request that touches it waits in the database, holding its pooled connection. The
    lock's own backend id, left out of the counts."""
    conn = _connect(pg, db)
    try:
        with conn.cursor() as cur:
            cur.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # a transaction
            cur.execute("SELECT pg_backend_pid()")
            row = cur.fetchone()
            assert row is not None
            yield int(row[0])
    finally:
        conn.rollback()
        conn.close()


@dataclass
class Seen:
    most: int = 0
    """The most connections to the database at once (the test's own left out)."""
    waiting: int = 0
    """The most of them waiting for the lock at once: requests inside the database."""


def count(pg: Postgres, db: str, mine: int) -> tuple[int, int]:
    """Connections to ``db`` now (but ``mine``), and those of them waiting for a lock."""
    conn = _connect(pg, "postgres")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') "
                "FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                (db, mine),
            )
            row = cur.fetchone()
            assert row is not None
            return int(row[0]), int(row[1])
    finally:
        conn.close()


def watch(pg: Postgres, db: str, mine: int, seconds: float) -> Seen:
    seen = Seen()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        total, waiting = count(pg, db, mine)
        seen.most, seen.waiting = max(seen.most, total), max(seen.waiting, waiting)
        time.sleep(0.05)
    return seen


def during_lock(
    pg: Postgres, db: str, table: str, call: Callable[[], requests.Response]
) -> tuple[list[requests.Response], Seen]:
    """:data:`CONCURRENT` calls of ``call`` sent together while ``table`` is locked (for
    1.5 s of counting), and their answers once it is not."""
    with ThreadPoolExecutor(CONCURRENT) as ex:
        with locked(pg, db, table) as mine:
            sent = [ex.submit(call) for _ in range(CONCURRENT)]
            seen = watch(pg, db, mine, 1.5)
        return [f.result() for f in sent], seen


def apply(srv: Server) -> requests.Response:
    return requests.post(srv.url + "/ca/v1/applications", json=APPLICATION, timeout=60)


def test_only_postgresql_engines_get_the_bounds() -> None:
    bounds = PoolBounds(size=2, overflow=0, timeout=1.5)
    pg = engine_options("postgresql+psycopg2://u@db.example/e", bounds)
    assert (pg["pool_size"], pg["max_overflow"], pg["pool_timeout"]) == (2, 0, 1.5)
    assert pg["connect_args"] == PG_CONNECT_DEFAULTS
    # SQLite keeps the pool it had (a file: SQLAlchemy's; its per-thread connections
    # are taken out of it); the CLI's short-lived engines keep SQLAlchemy's defaults
    for url in ("sqlite:////srv/eport/eport.db", "sqlite://"):
        assert engine_options(url, bounds) == {"pool_pre_ping": False}
    assert "pool_size" not in engine_options("postgresql+psycopg2://u@db.example/e")


def test_the_ca_holds_no_more_connections_than_its_bound(bounded: Bounded) -> None:
    """Twelve applications at once while their table is locked: one request at a time
    reaches the database (the others wait in the pool), each is stored once the lock
    goes, and the worker keeps one connection to the CA's database."""
    srv, pg = bounded.server, bounded.pg
    answers, seen = during_lock(pg, bounded.ca_db, "applications", lambda: apply(srv))
    assert [r.status_code for r in answers] == [201] * CONCURRENT, [r.text for r in answers]
    # One in the database; the count may include the token service's reader of the CA's
    # database (its own bound of one), never the 4 a thread each took before.
    assert seen.waiting == 1, seen
    assert seen.most <= 2, seen
    assert count(pg, bounded.ca_db, 0)[0] <= 2  # kept open afterwards: the pool's one


def test_a_request_that_gets_no_connection_in_time_is_a_503(bounded: Bounded) -> None:
    """The CA pool's one connection held by a request waiting on a lock: another request
    gets its 503 ``database-unavailable`` after EPORT_DB_POOL_TIMEOUT_SECONDS, with
    Retry-After and one log line; the first is answered once the lock goes."""
    srv, pg = bounded.server, bounded.pg
    with ThreadPoolExecutor(1) as ex, locked(pg, bounded.ca_db, "applications") as mine:
        first = ex.submit(apply, srv)
        deadline = time.monotonic() + 30
        while count(pg, bounded.ca_db, mine)[1] < 1:  # the first is in the database
            assert time.monotonic() < deadline and not first.done()
            time.sleep(0.05)
        started = time.monotonic()
        try:
            second = requests.post(
                srv.url + "/ca/v1/applications", json=APPLICATION, timeout=POOL_WAIT + 10
            )
        except requests.Timeout:
            pytest.fail("a request waited for a pooled connection with no end")
        waited = time.monotonic() - started
    assert first.result().status_code == 201
    assert second.status_code == 503, second.text
    assert second.headers["Content-Type"] == "application/problem+json"
    assert second.headers["Retry-After"] == "5"
    assert second.json()["type"] == "urn:eport:problem:database-unavailable"
    assert POOL_WAIT - 0.5 <= waited < POOL_WAIT + 5, waited
    log = srv.log.read_text(errors="replace")
    assert "database unavailable on POST /ca/v1/applications: TimeoutError" in log
    assert "Traceback" not in log, log[-3000:]


def login(srv: Server) -> requests.Response:
    from authsvc.principal import x5t_s256
    from cli.keyfiles import load_identity
    from cli.session import assertion

    d = srv.dev / "officers" / "customs"
    ident = load_identity(d / "officer.pem", d / "officer.key", d / "DEV-ONLY-passphrase.txt")
    signed = assertion(ident, srv.url + "/auth/token", x5t_s256(ident.chain[0]))
    form = {"grant_type": JWT_BEARER, "assertion": signed}
    return requests.post(srv.url + "/auth/token", data=form, timeout=60)


def test_the_token_service_holds_no_more_connections_than_its_bound(bounded: Bounded) -> None:
    """Logins at once while the token service's failure counts are locked, then while the
    CA's certificate status is: one login at a time in its own database, and one in the
    CA's through the status reader of local mode; a login that gets no connection in
    time is OAuth's ``temporarily_unavailable`` (RFC 6749 §5.2), a 503."""
    srv, pg = bounded.server, bounded.pg
    assert login(srv).status_code == 200  # the identity and the service work
    for db, table in (
        (bounded.auth_db, "auth_login_failures"),
        (bounded.ca_db, "certificate_status"),
    ):
        answers, seen = during_lock(pg, db, table, lambda: login(srv))
        assert [r.status_code for r in answers] == [200] * CONCURRENT, [r.text for r in answers]
        assert seen.waiting == 1, (db, seen)
    with ThreadPoolExecutor(1) as ex, locked(pg, bounded.auth_db, "auth_login_failures") as mine:
        first = ex.submit(login, srv)
        deadline = time.monotonic() + 30
        while count(pg, bounded.auth_db, mine)[1] < 1:
            assert time.monotonic() < deadline and not first.done()
            time.sleep(0.05)
        second = login(srv)
    assert first.result().status_code == 200
    assert second.status_code == 503, second.text
    assert second.json()["error"] == "temporarily_unavailable", second.text
