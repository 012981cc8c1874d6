"""``GET /auth/v1/events?after=N`` never skips a committed event.

On PostgreSQL an event's id comes from a sequence when it is inserted, not when it
commits: a transaction that took id 101 can commit after one that took id 102. A consumer
(a SIEM, a service watching revocations) that read a page ending at 102 and then asked
``after=102`` never saw 101. Here one event's transaction is held open while a later one
commits, the real server is paged over HTTP as an auditor, the first transaction commits,
and the next page must hold it. SQLite serialises its writers (``BEGIN IMMEDIATE``), so
there only the paging itself is checked; the schema revision that records each event's
writing transaction (a003) is taken up and down on PostgreSQL with rows in it."""

from __future__ import annotations

import datetime
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from authsvc.app import MIGRATIONS as AUTH_MIGRATIONS
from authsvc.app import upgrade as auth_upgrade
from authsvc.service import AuthEvent
from authsvc.store import SqlAuthStore, event_row
from ca.db import make_engine
from tests.conftest import Postgres, Server, start_server, stop
from tests.test_upgrades import alembic_config

NOW = datetime.datetime(2026, 11, 27, 8, 0, tzinfo=datetime.UTC)
_names = itertools.count()


def _ev(kind: str) -> AuthEvent:
    return AuthEvent(type=kind, at=NOW, subject="test:events-paging", detail={"k": kind})


def _insert_old_event(url: str, kind: str) -> None:
    """An event as a release before a003 wrote it (no writing transaction recorded)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO auth_events (at, type, subject, detail) VALUES (:at, :t, :s, '{}')"
                ),
                {"at": NOW, "t": kind, "s": "test:events-paging"},
            )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def pg_auth(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    """The e-port server whose token service keeps its database on PostgreSQL: one made
    by the release before a003, with two events in it, upgraded by ``eport serve``."""
    url = postgres.createdb("eport_events_paging_auth")
    command.upgrade(alembic_config(AUTH_MIGRATIONS, url), "a002")
    _insert_old_event(url, "test.old.1")
    _insert_old_event(url, "test.old.2")
    root = tmp_path_factory.mktemp("events-paging")
    srv, proc = start_server(
        root / "data", workers=1, extra_env={"EPORT_AUTH_DATABASE_URL": url, "HOME": str(root)}
    )
    try:
        yield srv, url
    finally:
        stop(proc)


def _page(srv: Server, after: int, limit: int = 1000) -> list[dict[str, Any]]:
    """One page of the token service's events, as the development customs auditor reads it."""
    from cli.client import CAClient
    from cli.keyfiles import load_identity

    d = srv.data_dir / "dev" / "auditors" / "customs"
    ident = load_identity(d / "auditor.pem", d / "auditor.key", d / "DEV-ONLY-passphrase.txt")
    page: list[dict[str, Any]] = CAClient(srv.url).call(
        "GET", f"/auth/v1/events?after={after}&limit={limit}", identity=ident
    )["events"]
    return page


def _last(srv: Server) -> int:
    """The id a consumer that read every page so far asks ``after`` next."""
    after = 0
    while page := _page(srv, after, 1000):
        after = page[-1]["id"]
    return after


def _held(url: str) -> tuple[Session, Any]:
    engine = make_engine(url)
    return sessionmaker(engine, expire_on_commit=False)(), engine


def _ids_of(pages: list[list[dict[str, Any]]], kinds: set[str]) -> list[str]:
    return [e["type"] for page in pages for e in page if e["type"] in kinds]


def _follow(srv: Server, after: int, kinds: set[str], seconds: float = 10.0) -> list[str]:
    """Page on from ``after`` as a consumer does (each page asked ``after`` the last event
    it got) until every one of ``kinds`` was served, or ``seconds`` passed: the kinds
    served. A page may hold back events while any older writer of the database runs (the
    server's own sweeper, on a loaded machine, for a moment); it never skips one."""
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while set(got) < kinds and time.monotonic() < deadline:
        page = _page(srv, after)
        if page:
            after = page[-1]["id"]
            got += _ids_of([page], kinds)
        else:
            time.sleep(0.1)
    return got


def test_events_of_a_release_before_a003_are_served(pg_auth: tuple[Server, str]) -> None:
    srv, _url = pg_auth
    kinds = [e["type"] for e in _page(srv, 0)]
    assert kinds[:2] == ["test.old.1", "test.old.2"], kinds


def test_an_event_committed_after_a_later_one_is_not_skipped(pg_auth: tuple[Server, str]) -> None:
    """Event A takes its id first and commits last: the page read while A is open ends
    at B; the next page, asked ``after`` it, holds A."""
    srv, url = pg_auth
    start = _last(srv)
    held, engine = _held(url)
    store = SqlAuthStore(sessionmaker(engine, expire_on_commit=False))
    try:
        held.add(a := event_row(_ev("test.a.first-id-last-commit")))
        held.flush()  # A's id is taken; its transaction stays open
        store.add_event(_ev("test.b.later-id-committed"))
        first = _page(srv, start)
        after = first[-1]["id"] if first else start
        held.commit()
        kinds = {"test.a.first-id-last-commit", "test.b.later-id-committed"}
        got = _ids_of([first], kinds) + _follow(srv, after, kinds)
    finally:
        held.close()
        engine.dispose()
    assert sorted(got) == sorted(kinds), (a.id, first, got)


def test_a_writer_that_began_first_but_took_a_later_id_is_not_skipped(
    pg_auth: tuple[Server, str],
) -> None:
    """X's transaction began writing first (as ``set_roles`` upserts before its event)
    and took the later id; R took the earlier id and commits last. Paging by id alone,
    with events of unfinished writers held back, would still serve X, then skip R."""
    srv, url = pg_auth
    start = _last(srv)
    x, engine_x = _held(url)
    r, engine_r = _held(url)
    try:
        x.execute(text("SELECT pg_current_xact_id()"))  # X's transaction id: the older
        r.add(event_row(_ev("test.r.earlier-id-last-commit")))
        r.flush()
        x.add(event_row(_ev("test.x.later-id-older-writer")))
        x.flush()
        x.commit()
        first = _page(srv, start)
        after = first[-1]["id"] if first else start
        r.commit()
        kinds = {"test.r.earlier-id-last-commit", "test.x.later-id-older-writer"}
        got = _ids_of([first], kinds) + _follow(srv, after, kinds)
    finally:
        x.close()
        r.close()
        engine_x.dispose()
        engine_r.dispose()
    assert sorted(got) == sorted(kinds), (first, got)


@pytest.fixture(params=["sqlite", "postgres"])
def auth_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'auth.db'}"
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.createdb(f"eport_events_paging_{next(_names)}")
    auth_upgrade(url)
    return url


def _all_pages(store: SqlAuthStore, limit: int, after: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while page := store.events(subject=None, limit=limit, after_id=after):
        out += page
        after = page[-1]["id"]
    return out


def test_small_pages_serve_every_event_once(auth_url: str) -> None:
    """Pages of three over ten events, on SQLite and PostgreSQL: each event once, in the
    order written (one writer at a time); ``after`` an id past the last: nothing."""
    engine = make_engine(auth_url)
    try:
        store = SqlAuthStore(sessionmaker(engine, expire_on_commit=False))
        for i in range(10):
            store.add_event(_ev(f"test.{i}"))
        got = _all_pages(store, 3)
        assert [e["type"] for e in got] == [f"test.{i}" for i in range(10)]
        assert store.events(subject=None, limit=10, after_id=2**63 - 1) == []
        assert [e["type"] for e in _all_pages(store, 3, got[4]["id"])][:1] == ["test.5"]
    finally:
        engine.dispose()


def test_events_copied_from_another_database_server_are_served_after_a_start(
    postgres: Postgres,
) -> None:
    """A ``pg_restore`` into a new cluster brings events whose writers' ids are far past
    the new cluster's: they would be held back until its ids caught up, and events
    written there would page before them. The upgrade every start runs settles them."""
    url = postgres.createdb(f"eport_events_paging_{next(_names)}")
    auth_upgrade(url)
    engine = make_engine(url)
    try:
        store = SqlAuthStore(sessionmaker(engine, expire_on_commit=False))
        store.add_event(_ev("test.copied.1"))
        store.add_event(_ev("test.copied.2"))
        with engine.begin() as conn:  # written by a server 2**40 transactions ahead
            conn.execute(text("UPDATE auth_events SET writer_xact = writer_xact + 1099511627776"))
        assert _all_pages(store, 10) == []
        auth_upgrade(url)
        store.add_event(_ev("test.written.here"))
        got = [e["type"] for e in _all_pages(store, 10)]
        assert got == ["test.copied.1", "test.copied.2", "test.written.here"]
    finally:
        engine.dispose()


def test_a003_goes_down_and_up_keeping_every_event(auth_url: str) -> None:
    """Down to a002 every event stays (without its writer); up again they are all
    served, before the events written after."""
    from tests.test_upgrades import rows, without

    engine = make_engine(auth_url)
    try:
        store = SqlAuthStore(sessionmaker(engine, expire_on_commit=False))
        for i in range(3):
            store.add_event(_ev(f"test.{i}"))
        before = rows(auth_url)
        command.downgrade(alembic_config(AUTH_MIGRATIONS, auth_url), "a002")
        assert rows(auth_url) == without(before, "auth_events", "writer_xact")
        auth_upgrade(auth_url)
        store.add_event(_ev("test.3"))
        got = [e["type"] for e in _all_pages(store, 2)]
        assert got == [f"test.{i}" for i in range(4)]
    finally:
        engine.dispose()
