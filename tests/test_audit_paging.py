"""The auditor's filtered listings read the events in index order (revision 0008).

``eport audit log --type …`` (``GET /ca/v1/audit/events``) and the web view's pages used
to join ``log_entries`` to ``events`` and order by the leaf index: a page of one type
(every ``certificate.revoked``) sorted every event of that type first (100,000 events:
130-250 ms a page, 4.4 s to export one type as CSV). Each event row now carries its
leaf index (``events.log_index``), written with the row, and the pages read
``(type, log_index)``, ``(uscc, log_index)``, ``(serial, log_index)`` or ``log_index``.

Here a real server on SQLite and on PostgreSQL logs events, its database is taken down
to 0007 and up again (the index is filled from ``log_entries``), more events are logged
by the upgraded server (issuances by group commit, revocations in a session), and every
filtered listing, paged both ways with ``after`` and ``before``, must match what the log
itself says (``log_entries`` joined to ``events``); a full audit still passes. SQLite's
query plans must read an index in page order, with no sort of the matching events.
"""

from __future__ import annotations

import datetime
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from ca import translog
from ca.audit_api import EventFilter, count_events, find_events
from ca.db import MIGRATIONS as CA_MIGRATIONS
from ca.db import make_engine, upgrade
from ca.models import EventRow, LogEntryRow
from ca.records import Event, EventType
from ca.store import SqlStore
from cli.client import CAClient
from cli.keyfiles import load_identity
from tests.conftest import Postgres, Server, start_server, stop
from tests.test_audit_cli import enroll_concurrently
from tests.test_upgrades import alembic_config

_databases = itertools.count()
ISSUED = EventType.CERTIFICATE_ISSUED.value
REVOKED = EventType.CERTIFICATE_REVOKED.value


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str:
    """A new empty CA database: a PostgreSQL one, or "" for the data directory's SQLite."""
    if request.param == "sqlite":
        return ""
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.createdb(f"eport_audit_paging_{next(_databases)}")


def logged(url: str, **match: str) -> list[tuple[int, int]]:
    """``(leaf index, event id)`` of the logged events matching ``match``, as the log
    itself orders them (``log_entries`` joined to ``events``): what a listing must say."""
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            q = select(LogEntryRow.idx, EventRow.id).join(
                EventRow, EventRow.id == LogEntryRow.event_id
            )
            for column, value in match.items():
                q = q.where(getattr(EventRow, column) == value)
            return [(int(i), int(e)) for i, e in s.execute(q.order_by(LogEntryRow.idx))]
    finally:
        engine.dispose()


def api_pages(srv: Server, query: str, limit: int) -> tuple[list[tuple[int, int]], int]:
    """Every page of ``GET /ca/v1/audit/events?<query>`` read as the development auditor,
    ``after`` the last index of each page; the events and the first page's total."""
    d = srv.dev / "auditors" / "customs"
    ident = load_identity(d / "auditor.pem", d / "auditor.key", d / "DEV-ONLY-passphrase.txt")
    client = CAClient(srv.url)
    got: list[tuple[int, int]] = []
    doc = client.call("GET", f"/ca/v1/audit/events?{query}&limit={limit}", identity=ident)
    total = int(doc["total"])
    while True:
        got += [(e["log_index"], e["event_id"]) for e in doc["events"]]
        if doc["next"] is None:
            return got, total
        doc = client.call(
            "GET",
            f"/ca/v1/audit/events?{query}&limit={limit}&after={doc['next']}",
            identity=ident,
        )
        assert "total" not in doc  # the first page carries it


def test_an_empty_after_is_the_first_page(sqlite_server: Server) -> None:
    """``after=`` (an empty cursor, a client's first page) was read as 0: event 0 and the
    total were left out without a word (HTTP edges probe, session 27). Empty is absent,
    as every other listing reads its parameters."""
    d = sqlite_server.dev / "auditors" / "customs"
    ident = load_identity(d / "auditor.pem", d / "auditor.key", d / "DEV-ONLY-passphrase.txt")
    client = CAClient(sqlite_server.url)
    plain = client.call("GET", "/ca/v1/audit/events?limit=3", identity=ident)
    empty = client.call("GET", "/ca/v1/audit/events?limit=3&after=", identity=ident)
    assert plain["events"][0]["log_index"] == 0
    assert empty == plain


def test_an_actor_s_serial_is_read_as_any_serial(sqlite_server: Server) -> None:
    """``--actor agency:SERIAL`` with the serial as openssl prints it (upper case, with
    colons or 0x) found nothing: a false all-clear when looking for what a compromised
    officer did (emergency-plan probe, session 27). The serial reads as ``--serial``."""
    from cryptography import x509

    from tests.helpers import fresh_uscc

    srv = sqlite_server
    officer = x509.load_pem_x509_certificate(
        (srv.dev / "officers" / "customs" / "officer.pem").read_bytes()
    )
    app = CAClient(srv.url).call(
        "POST",
        "/ca/v1/applications",
        {"subject_class": "enterprise", "uscc": fresh_uscc(), "legal_name": "Actor Co."},
    )
    srv.eport("ra", "approve", app["id"], *srv.officer())
    d = srv.dev / "auditors" / "customs"
    ident = load_identity(d / "auditor.pem", d / "auditor.key", d / "DEV-ONLY-passphrase.txt")
    client = CAClient(srv.url)
    hex_serial = format(officer.serial_number, "x")
    number = officer.serial_number
    as_openssl = number.to_bytes((number.bit_length() + 7) // 8, "big").hex(":").upper()
    spellings = [hex_serial, hex_serial.upper(), "0x" + hex_serial.upper(), as_openssl]
    found = []
    for spelled in spellings:
        query = f"type=application.approved&actor=agency:{spelled}&limit=1000"
        doc = client.call("GET", f"/ca/v1/audit/events?{query}", identity=ident)
        found.append([e["log_index"] for e in doc["events"]])
    assert found[0] and all(f == found[0] for f in found), (spellings, found)


def pages_both_ways(url: str, flt: EventFilter, limit: int) -> tuple[list[Any], list[Any]]:
    """Every event of ``flt`` paged oldest first (``after``) and newest first (``before``,
    as the web view pages), by :func:`find_events` on the server's database."""
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            forward: list[tuple[int, int]] = []
            after = None
            while page := find_events(s, flt, after=after, limit=limit):
                forward += [(i, r.id) for i, r in page]
                after = page[-1][0]
            backward: list[tuple[int, int]] = []
            before = None
            while page := find_events(s, flt, before=before, limit=limit, newest_first=True):
                backward += [(i, r.id) for i, r in page]
                before = page[-1][0]
            assert count_events(s, flt) == len(forward)
            return forward, backward
    finally:
        engine.dispose()


@pytest.mark.slow
def test_filtered_pages_over_events_logged_before_and_after_the_upgrade(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    data = tmp_path / "data"
    env = {"HOME": str(home)}
    srv, proc = start_server(data, database, workers=1, extra_env=env)
    try:
        before = enroll_concurrently(srv, 4)
        srv.eport(
            "revoke", "--serial", before[0]["serial"], "--reason", "superseded", *srv.officer()
        )
    finally:
        stop(proc)
    url = srv.database_url
    # Down to 0007 (no log_index) and up again by the next start: every index backfilled.
    command.downgrade(alembic_config(CA_MIGRATIONS, url), "0007")
    srv, proc = start_server(data, database, workers=1, extra_env=env)
    try:
        after = enroll_concurrently(srv, 5)  # by group commit, with their indices
        for cert in (after[1], after[3], before[2]):  # in sessions
            srv.eport(
                "revoke", "--serial", cert["serial"], "--reason", "superseded", *srv.officer()
            )
        uscc = after[3]["uscc"]
        cases: list[tuple[str, dict[str, str], EventFilter]] = [
            (f"type={ISSUED}", {"type": ISSUED}, EventFilter(types=(ISSUED,))),
            (f"type={REVOKED}", {"type": REVOKED}, EventFilter(types=(REVOKED,))),
            (f"uscc={uscc}", {"uscc": uscc}, EventFilter(uscc=uscc)),
            (
                f"serial={before[2]['serial']}",
                {"serial": before[2]["serial"]},
                EventFilter(serial=before[2]["serial"]),
            ),
            ("", {}, EventFilter()),
        ]
        for query, match, flt in cases:
            expected = logged(url, **match)
            assert expected, query
            got, total = api_pages(srv, query, 2)
            assert (got, total) == (expected, len(expected)), query
            forward, backward = pages_both_ways(url, flt, 2)
            assert forward == expected and backward == expected[::-1], query
        # Two types: read type by type and merged in log order.
        both = sorted(logged(url, type=ISSUED) + logged(url, type=REVOKED))
        got, total = api_pages(srv, f"type={ISSUED}&type={REVOKED}", 3)
        assert (got, total) == (both, len(both))
        forward, backward = pages_both_ways(url, EventFilter(types=(REVOKED, ISSUED)), 3)
        assert forward == both and backward == both[::-1]
        revoked = [(i, e) for i, e in logged(url, type=REVOKED)]
        assert len(revoked) == 4  # one before the downgrade, three after the upgrade
        # The CLI's export of one type: the same events, in log order.
        out = tmp_path / "revoked.json"
        who = srv.auditor()
        srv.eport("audit", "log", *who, "--type", REVOKED, "--format", "json", "--out", str(out))
        exported = json.loads(out.read_text())
        assert [(e["log_index"], e["event_id"]) for e in exported] == revoked
        table = srv.eport("audit", "log", *who, "--type", ISSUED, "--limit", "3").stdout
        assert f"(3 of {len(logged(url, type=ISSUED))} events;" in table
        srv.eport("audit", "verify", "--full", *who, **env)
    finally:
        stop(proc)


# -- the query plans ----------------------------------------------------------------------


def log_with_events(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """The CA database at ``url`` (head revision), its log holding a few events of two kinds."""
    upgrade(url)
    engine = make_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    store = SqlStore(sessions, event_sinks=(translog.append_event,))
    now = datetime.datetime(2026, 11, 27, 8, 0, tzinfo=datetime.UTC)
    with store.transaction() as tx:
        for n, kind in enumerate([EventType.CERTIFICATE_ISSUED, EventType.CERTIFICATE_REVOKED] * 3):
            tx.append_event(
                Event(type=kind, at=now, actor="test:plan", uscc="91310000MA1FL4CT3U", serial=n + 1)
            )
    return engine, sessions


@pytest.fixture
def sqlite_log(tmp_path: Path) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    engine, sessions = log_with_events(f"sqlite:///{tmp_path / 'plan.db'}")
    try:
        yield engine, sessions
    finally:
        engine.dispose()


def page_statements(
    engine: Engine, sessions: sessionmaker[Session], flt: EventFilter
) -> list[tuple[str, Any]]:
    """The statements (and parameters) of pages of ``flt`` in every shape, and its total."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cur: Any, statement: str, params: Any, *_: Any) -> None:
        if " events" in statement and statement.lstrip().startswith("SELECT"):
            seen.append((statement, params))

    with sessions() as s:
        assert len(find_events(s, flt, limit=1)) == 1
        event.listen(engine, "before_cursor_execute", record)
        try:
            find_events(s, flt, limit=2)
            find_events(s, flt, after=1, limit=2)
            find_events(s, flt, limit=2, newest_first=True)
            find_events(s, flt, before=5, limit=2, newest_first=True)
            find_events(s, flt, after=1, before=5, limit=2)
            count_events(s, flt)
        finally:
            event.remove(engine, "before_cursor_execute", record)
    assert len(seen) == 1 + 5 * len(flt.types or [None]), seen  # a page per type
    return seen


PLAN_FILTERS = {
    "ix_events_type_log_index": EventFilter(types=(REVOKED,)),
    "ix_events_type_log_index (type=? AND": EventFilter(types=(REVOKED, ISSUED)),
    "ix_events_uscc_log_index": EventFilter(uscc="91310000MA1FL4CT3U"),
    "ix_events_serial_log_index": EventFilter(serial="3"),
    "ix_events_log_index": EventFilter(),
}
"""Each filter, by the index its pages must read (SQLite's plan names it so)."""


def test_filtered_pages_read_an_index_in_page_order(
    sqlite_log: tuple[Engine, sessionmaker[Session]],
) -> None:
    """SQLite's plan of each page (either direction, with ``after`` and ``before``) and
    of the total reads an index of ``events`` that ends in ``log_index``, with no
    ``USE TEMP B-TREE FOR ORDER BY`` (a sort of every matching event); two types are
    read type by type."""
    engine, sessions = sqlite_log

    def plan(statement: str, params: Any) -> str:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
        return " | ".join(str(r[-1]) for r in rows)

    for index, flt in PLAN_FILTERS.items():
        for p in [plan(*q) for q in page_statements(engine, sessions, flt)]:
            assert index in p and "TEMP B-TREE" not in p, (index, p)


def test_a_page_is_read_as_plain_rows(sqlite_log: tuple[Engine, sessionmaker[Session]]) -> None:
    """A page of an export is 10,000 events: read as plain rows, with no ORM object (and
    its identity-map entry, expired again at the rollback) per event, in every shape."""
    _, sessions = sqlite_log
    with sessions() as s:
        for flt in PLAN_FILTERS.values():
            pages = [find_events(s, flt, limit=100, newest_first=back) for back in (False, True)]
            assert all(pages) and len(s.identity_map) == 0, flt


def test_filtered_pages_need_no_sort_on_postgresql(postgres: Postgres) -> None:
    """PostgreSQL can serve each page shape from an index in page order: with sorts and
    sequential scans priced out (a table this small would rather be sorted), no plan of
    a page has a Sort node, and each reads the filter's index on ``events`` alone."""
    engine, sessions = log_with_events(postgres.createdb(f"eport_audit_plan_{next(_databases)}"))
    try:
        for index, flt in PLAN_FILTERS.items():
            name = index.split(" ")[0]
            for statement, params in page_statements(engine, sessions, flt):
                with engine.begin() as conn:
                    for off in ("enable_sort", "enable_seqscan", "enable_bitmapscan"):
                        conn.exec_driver_sql(f"SET LOCAL {off} = off")
                    rows = conn.exec_driver_sql("EXPLAIN " + statement, params).all()
                p = " | ".join(str(r[0]) for r in rows)
                if statement.lstrip().startswith("SELECT count"):
                    # Counting everything reads any index; a filtered count reads its own.
                    assert flt == EventFilter() or name in p, (name, p)
                else:  # events alone, in the index's order
                    assert name in p and "Sort" not in p and "log_entries" not in p, (name, p)
    finally:
        engine.dispose()


def test_an_event_logged_without_its_index_is_listed_after_a_start(
    sqlite_log: tuple[Engine, sessionmaker[Session]], caplog: pytest.LogCaptureFixture
) -> None:
    """A server of the release before 0008 still running after the upgrade writes events
    (and their log entries) without ``log_index``: the listings would never show them.
    The upgrade that every start runs sets them from the log, reading only the index's
    NULL range."""
    from ca.db import _FILL_LOG_INDEX

    engine, sessions = sqlite_log
    with sessions() as s:
        listed = [(i, r.id) for i, r in find_events(s, EventFilter(), limit=100)]
    with engine.begin() as conn:  # as a 0007 server wrote the last two
        conn.exec_driver_sql("UPDATE events SET log_index = NULL WHERE log_index >= 4")
    with sessions() as s:
        assert len(find_events(s, EventFilter(), limit=100)) == len(listed) - 2
    upgrade(engine.url.render_as_string(hide_password=False))
    assert "2 logged events had no log index" in caplog.text
    with sessions() as s:
        assert [(i, r.id) for i, r in find_events(s, EventFilter(), limit=100)] == listed
    with engine.connect() as conn:
        plan = " | ".join(
            str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + _FILL_LOG_INDEX)
        )
    assert "ix_events_log_index (log_index=?)" in plan and "SCAN events" not in plan, plan


def test_the_openapi_document_names_every_event_filter() -> None:
    """``GET /ca/v1/audit/events`` reads one query parameter per field of EventFilter
    (``types`` as ``type``); the OpenAPI document lists each, so a client generated
    from it can filter as ``eport audit log`` does. Before, six were missing."""
    import dataclasses

    from ca.openapi import openapi_document

    op = openapi_document()["paths"]["/ca/v1/audit/events"]["get"]
    listed = {p["name"] for p in op["parameters"] if p["in"] == "query"}
    wanted = {"type" if f.name == "types" else f.name for f in dataclasses.fields(EventFilter)}
    assert wanted <= listed, sorted(wanted - listed)
