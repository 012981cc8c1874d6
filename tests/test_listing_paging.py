"""The RA's and the enterprises' listings page by a cursor that skips and repeats nothing.

``eport ra list`` and ``eport cert list`` paged by offset in ``created_at`` order. An
officer paging the pending applications while another officer decided some on page 1
skipped as many on the next page (every later row moved up); and on PostgreSQL a row
whose transaction began first (an earlier ``created_at``) but committed after a reader
passed that time was never shown to it. Pages now follow an opaque cursor on each row's
log index (``ca/models.py``, "Listing keys"), handed out in commit order. Here a real
server is paged through the CLI and over HTTP, on SQLite and PostgreSQL: applications
decided between pages, writers held open while a reader pages past their time, the USCC
filter, a row written without its key (an older server's), bad cursors, and the
``offset`` older clients still send."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from ca import translog
from ca.db import make_engine
from ca.db import upgrade as ca_upgrade
from ca.records import Application, ApplicationState, Event, EventType
from ca.signedreq import SCHEME, sign_request
from ca.store import SqlStore, SqlTransaction
from cli.client import CAClient, Identity
from cli.keyfiles import load_identity
from tests.conftest import Server
from tests.helpers import (
    creds,
    enroll_enterprise,
    enroll_operator,
    fresh_uscc,
    jrun,
    serial_of,
    server_authority,
)

EARLIER = datetime.timedelta(hours=1)


def _officer(srv: Server) -> Identity:
    d = srv.dev / "officers" / "customs"
    return load_identity(d / "officer.pem", d / "officer.key", d / "DEV-ONLY-passphrase.txt")


def _get(srv: Server, path: str, **query: Any) -> dict[str, Any]:
    """One signed GET of a listing, as the development customs officer."""
    q = {k: v for k, v in query.items() if v is not None}
    doc: dict[str, Any] = CAClient(srv.url).call(
        "GET", f"{path}?{urlencode(q)}", identity=_officer(srv)
    )
    return doc


def _pages(
    srv: Server, path: str, rows: str, after: str | None = None, **query: Any
) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
    """The pages of a listing from ``after`` on, each with its ``next`` cursor."""
    while True:
        doc = _get(srv, path, after=after, **query)
        yield doc[rows], doc["next"]
        if doc["next"] is None:
            return
        after = doc["next"]


def _cli_pages(srv: Server, *args: str) -> list[list[dict[str, Any]]]:
    """Every page of an ``eport … list`` as the CLI shows it, following the ``--after``
    its "More … follow" line on standard error names; each page as ``--json`` gives it."""
    pages: list[list[dict[str, Any]]] = []
    after: list[str] = []
    while True:
        res = srv.eport(*args, *after)
        doc = json.loads(srv.eport(*args, *after, "--json").stdout)
        key = "applications" if "applications" in doc else "certificates"
        pages.append(doc[key])
        if doc["next"] is None:
            assert "More" not in res.stderr, res.stderr
            return pages
        hint = res.stderr.strip()
        assert hint.startswith("More ") and hint.endswith(f"--after {doc['next']}"), hint
        after = ["--after", hint.rsplit(" ", 1)[1]]


LATE_COMMITS = pytest.mark.parametrize("server", ["postgres"], indirect=True)
"""Only PostgreSQL lets a commit be late: SQLite runs one writer at a time (BEGIN
IMMEDIATE)."""


@pytest.fixture
def held(server: Server) -> Iterator[tuple[Any, list[AbstractContextManager[SqlTransaction]]]]:
    """A store on the server's database wired to the Merkle log as the server's is, and
    the transactions a test opened on it (rolled back if still open at the end)."""
    engine = make_engine(server.database_url)
    store = SqlStore(sessionmaker(engine, expire_on_commit=False), (translog.append_event,))
    opened: list[AbstractContextManager[SqlTransaction]] = []
    try:
        yield store, opened
    finally:
        for cm in opened:
            with suppress(RuntimeError):  # rolled back, and re-raised by the manager
                cm.__exit__(RuntimeError, RuntimeError("left open"), None)
        engine.dispose()


def _application(uscc: str, name: str, created_at: datetime.datetime) -> Application:
    return Application(
        id="app_" + base64.b32encode(os.urandom(10)).decode().lower(),
        subject_class="enterprise",
        uscc=uscc,
        vetted={"uscc": uscc, "legal_name": name},
        state=ApplicationState.PENDING,
        created_at=created_at,
        applicant="anonymous",
    )


@pytest.mark.slow
def test_deciding_pending_applications_between_pages_skips_none(server: Server) -> None:
    """Seven applications, pages of three through ``eport ra list``: the applications of
    each page are decided (approved or rejected) by another officer before the next page
    is asked, and one further on is decided before its page comes. Every other one is
    listed once; with offsets the next page started as many rows too far."""
    srv = server
    mine = [
        jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", f"Cursor Co. {i}")["id"]
        for i in range(7)
    ]
    early = mine.pop(5)  # decided before its page comes: rightly never listed
    seen: list[str] = []
    after: list[str] = []
    while True:
        doc = jrun(srv, "ra", "list", "--limit", "3", *after, *srv.officer())
        page = [a["id"] for a in doc["applications"]]
        assert all(a["state"] == "pending" for a in doc["applications"])
        seen += page
        for app_id in page:  # another officer decides what this page showed
            if app_id in mine:
                verb = ["approve"] if mine.index(app_id) % 2 else ["reject", "--reason", "test"]
                srv.eport("ra", *verb[:1], app_id, *verb[1:], *srv.officer("tax"))
            if app_id == mine[0]:
                srv.eport("ra", "reject", early, "--reason", "early", *srv.officer("tax"))
        if doc["next"] is None:
            break
        after = ["--after", doc["next"]]
    assert len(seen) == len(set(seen)), seen  # nothing twice
    assert [a for a in seen if a in mine] == mine, (seen, mine)  # nothing skipped, in order
    assert early not in seen
    left = jrun(srv, "ra", "list", "--limit", "1000", *srv.officer())["applications"]
    assert not {a["id"] for a in left} & {early, *mine}  # all decided: none pending now


def test_the_cli_names_the_next_page_and_follows_it(server: Server) -> None:
    """The "More applications follow" line names ``--after CURSOR``; following it lists
    every pending application once (the whole list in one page as control)."""
    srv = server
    for i in range(3):
        jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", f"Hint Co. {i}")
    whole = jrun(srv, "ra", "list", "--limit", "1000", *srv.officer())
    assert whole["next"] is None and "next_offset" not in whole
    pages = _cli_pages(srv, "ra", "list", "--limit", "2", *srv.officer())
    got = [a["id"] for page in pages for a in page]
    assert got == [a["id"] for a in whole["applications"]]
    assert all(len(page) == 2 for page in pages[:-1])


@LATE_COMMITS
def test_an_application_committed_after_a_reader_passed_its_time_is_listed(
    server: Server, held: tuple[SqlStore, list[Any]]
) -> None:
    """Application A's transaction begins first, with a time an hour before the others,
    and commits last: B1..B3 are applied and committed meanwhile, an officer pages the
    pending applications past B2, then A commits. The officer's next page holds B3 and A:
    A's key (its log index) is taken under the log head's lock, after B3's commit."""
    srv = server
    store, opened = held
    now = datetime.datetime.now(datetime.UTC)
    cm = store.transaction()
    opened.append(cm)
    tx = cm.__enter__()
    a = _application(fresh_uscc(), "Late Commit Co.", now - EARLIER)
    tx.add_application(a)  # its transaction is open; its time is the earliest
    bs = [
        jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", f"B{i} Co.")["id"] for i in (1, 2, 3)
    ]

    seen: list[str] = []
    cursor = None
    for page, nxt in _pages(srv, "/ca/v1/ra/applications", "applications", limit=1):
        seen += [x["id"] for x in page]
        cursor = nxt
        if bs[1] in seen:
            break  # the officer stops after B2, with the cursor of the page that follows
    assert cursor is not None and bs[2] not in seen
    tx.append_event(
        Event(
            type=EventType.APPLICATION_SUBMITTED,
            at=a.created_at,
            actor="anonymous",
            uscc=a.uscc,
            subject="Late Commit Co.",
            application_id=a.id,
            details={"subject_class": "enterprise"},
        )
    )
    opened.remove(cm)
    cm.__exit__(None, None, None)  # A commits
    for page, _ in _pages(srv, "/ca/v1/ra/applications", "applications", cursor, limit=1):
        seen += [x["id"] for x in page]
    assert len(seen) == len(set(seen)), seen
    assert {a.id, *bs} <= set(seen), (a.id, bs, seen)
    assert seen[-2:] == [bs[2], a.id]


@LATE_COMMITS
def test_a_certificate_committed_after_a_reader_passed_its_time_is_listed(
    server: Server, held: tuple[SqlStore, list[Any]], tmp_path: Path
) -> None:
    """The same for ``eport cert list --uscc``: a certificate of the enterprise stored in
    a transaction that began first (issued an hour before the others) and commits after
    two operators enrolled and an officer paged past them."""
    srv = server
    store, opened = held
    uscc = fresh_uscc()
    ent = enroll_enterprise(srv, tmp_path, "Late Certificate Co.", uscc=uscc)
    now = datetime.datetime.now(datetime.UTC)
    with server_authority(srv) as ca:  # a real certificate of the enterprise's operator
        from ca.authority import certificate_record
        from ca.keys import KeyType

        profile = ca.policies.profile("operator")
        issuer = ca.issuers[profile.issuer]
        vetted = {
            "uscc": uscc,
            "legal_name": "Late Certificate Co.",
            "operator_name": "Late Operator",
            "operator_id": "LATE1",
        }
        key = KeyType.P256.generate().public_key()
        cert = ca.factory.issue(
            profile, issuer, key, vetted, now - EARLIER, authorization="app_late0late0late0"
        )
        rec = certificate_record(cert, issuer.id, profile.name, None)
    rec = dataclasses.replace(rec, uscc=uscc, created_at=now - EARLIER)
    cm = store.transaction()
    opened.append(cm)
    tx = cm.__enter__()
    tx.add_certificate(rec)  # its transaction is open; its time is the earliest
    ops = [serial_of(enroll_operator(srv, ent, tmp_path, f"L{i}")) for i in (1, 2)]

    seen: list[str] = []
    cursor = None
    pages = _pages(srv, "/ca/v1/certificates", "certificates", uscc=uscc, limit=1)
    for page, nxt in pages:
        seen += [c["serial"] for c in page]
        cursor = nxt
        if ops[0] in seen:
            break
    assert cursor is not None and ops[1] not in seen
    tx.append_event(Event.about(EventType.CERTIFICATE_ISSUED, rec, actor="test", at=now))
    opened.remove(cm)
    cm.__exit__(None, None, None)  # the certificate commits
    for page, _ in _pages(srv, "/ca/v1/certificates", "certificates", cursor, uscc=uscc, limit=1):
        seen += [c["serial"] for c in page]
    assert seen == [serial_of(ent), ops[0], ops[1], rec.serial_hex], seen


@pytest.mark.slow
def test_an_enterprise_pages_only_its_own_certificates(server: Server, tmp_path: Path) -> None:
    """``eport cert list --uscc`` in pages of two: the enterprise's three certificates
    once each, in issuance order, none of another enterprise issued between them; an
    officer's listing of every certificate (no uscc) holds all four once."""
    srv = server
    uscc = fresh_uscc()
    ent = enroll_enterprise(srv, tmp_path, "Own Pages Co.", uscc=uscc)
    op1 = enroll_operator(srv, ent, tmp_path, "W1")
    other = enroll_enterprise(srv, tmp_path, "Other Pages Co.")
    op2 = enroll_operator(srv, ent, tmp_path, "W2")
    pages = _cli_pages(srv, "cert", "list", "--uscc", uscc, "--limit", "2", *creds(ent))
    assert [len(p) for p in pages] == [2, 1]
    got = [c["serial"] for page in pages for c in page]
    assert got == [serial_of(d) for d in (ent, op1, op2)]
    assert all(c["uscc"] == uscc for page in pages for c in page)

    everyone = [
        c["serial"]
        for page, _ in _pages(srv, "/ca/v1/certificates", "certificates", limit=50)
        for c in page
    ]
    assert len(everyone) == len(set(everyone))
    mine = [s for s in everyone if s in {serial_of(d) for d in (ent, op1, other, op2)}]
    assert mine == [serial_of(d) for d in (ent, op1, other, op2)]


def test_a_row_written_without_its_key_is_listed_after_the_next_start(server: Server) -> None:
    """A server of a release before 0009, still running after the upgrade, writes an
    application and a certificate without their key: the listings leave them out until
    the next start (its upgrade step) sets the key from their first logged event."""
    srv = server
    app = jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", "Old Server Co.")["id"]
    engine = make_engine(srv.database_url)
    try:
        with engine.begin() as conn:
            key = conn.execute(
                text("SELECT log_index FROM applications WHERE id = :id"), {"id": app}
            ).scalar_one()
            serial, cert_key = conn.execute(
                text("SELECT serial, log_index FROM certificates ORDER BY log_index DESC LIMIT 1")
            ).one()
            conn.execute(
                text("UPDATE applications SET log_index = NULL WHERE id = :id"), {"id": app}
            )
            conn.execute(
                text("UPDATE certificates SET log_index = NULL WHERE serial = :s"), {"s": serial}
            )
    finally:
        engine.dispose()

    def listed() -> tuple[bool, bool]:
        apps = _get(srv, "/ca/v1/ra/applications", limit=1000)["applications"]
        certs = [
            c["serial"]
            for page, _ in _pages(srv, "/ca/v1/certificates", "certificates", limit=1000)
            for c in page
        ]
        return app in {a["id"] for a in apps}, serial in certs

    assert listed() == (False, False)
    ca_upgrade(srv.database_url)  # what every start runs before serving
    assert listed() == (True, True)
    engine = make_engine(srv.database_url)
    try:
        with engine.connect() as conn:
            again = conn.execute(
                text("SELECT log_index FROM applications WHERE id = :id"), {"id": app}
            ).scalar_one()
            cert_again = conn.execute(
                text("SELECT log_index FROM certificates WHERE serial = :s"), {"s": serial}
            ).scalar_one()
    finally:
        engine.dispose()
    assert (again, cert_again) == (key, cert_key)  # the same key it was written with


@pytest.mark.parametrize(
    "after",
    [
        "not a cursor!",
        "12",
        base64.urlsafe_b64encode(b"v2:5").decode().rstrip("="),
        base64.urlsafe_b64encode(b"v1:-1").decode().rstrip("="),
        base64.urlsafe_b64encode(b"v1:" + b"9" * 30).decode().rstrip("="),
        "A" * 41,
    ],
)
def test_a_cursor_the_listing_did_not_give_is_refused(server: Server, after: str) -> None:
    """``after`` that is not a cursor of a listing: 400 problem+json that names it, for
    both listings; nothing else is read."""
    ident = _officer(server)
    for path in ("/ca/v1/ra/applications", "/ca/v1/certificates"):
        target = f"{path}?{urlencode({'after': after})}"
        now = datetime.datetime.now(datetime.UTC)
        token = sign_request(ident.key, ident.chain, "GET", target, b"", now)
        r = requests.get(
            server.url + target, headers={"Authorization": f"{SCHEME} {token}"}, timeout=10
        )
        assert r.status_code == 400, r.text
        assert r.headers["Content-Type"] == "application/problem+json"
        assert "'after' is not a cursor this listing gave" in r.json()["detail"]


def test_the_cli_refuses_a_bad_cursor_and_the_old_offset(server: Server) -> None:
    """``--after`` with a made-up cursor: one line, exit 1; ``--offset`` of earlier
    releases: a usage error (exit 2) that says to use ``--after``."""
    bad = server.eport("ra", "list", "--after", "xyz!", *server.officer(), check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert "is not a cursor this listing gave" in bad.stderr and "HTTP 400" in bad.stderr
    old = server.eport("ra", "list", "--offset", "5", *server.officer(), check=False)
    assert old.returncode == 2 and "--after" in old.stderr, old.stderr
    old = server.eport("cert", "list", "--uscc", fresh_uscc(), "--offset", "5", check=False)
    assert old.returncode == 2 and "--after" in old.stderr, old.stderr


def test_older_clients_offset_is_still_answered(server: Server) -> None:
    """A client of an earlier release sends ``offset`` and reads ``next_offset``: it is
    answered so (over the same order), with the cursor beside it; ``offset`` with
    ``after`` is refused."""
    srv = server
    for i in range(3):
        jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", f"Old Client Co. {i}")
    whole = [a["id"] for a in _get(srv, "/ca/v1/ra/applications", limit=1000)["applications"]]
    first = _get(srv, "/ca/v1/ra/applications", limit=2, offset=0)
    assert [a["id"] for a in first["applications"]] == whole[:2]
    assert first["next_offset"] == 2 and isinstance(first["next"], str)
    by_cursor = _get(srv, "/ca/v1/ra/applications", limit=1000, after=first["next"])
    by_offset = _get(srv, "/ca/v1/ra/applications", limit=1000, offset=2)
    assert by_cursor["applications"] == by_offset["applications"]
    assert [a["id"] for a in by_offset["applications"]] == whole[2:]
    assert by_offset["next_offset"] is None and by_offset["next"] is None
    from cli.client import RemoteError

    with pytest.raises(RemoteError) as refused:
        _get(srv, "/ca/v1/ra/applications", after=first["next"], offset=2)
    assert refused.value.status == 400 and "not both" in str(refused.value)
    # The API's description says so to client generators too (OpenAPI's 'deprecated').
    doc = requests.get(srv.url + "/ca/v1/openapi.json", timeout=10).json()
    for path in ("/ca/v1/ra/applications", "/ca/v1/certificates"):
        params = {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}
        assert params["offset"].get("deprecated") is True, params["offset"]
        assert not params["after"].get("deprecated"), params["after"]


@pytest.fixture
def older_release() -> Iterator[str]:
    """A server answering the listings as releases before cursors did (ca/api.py before
    3b36c47): no ``next``, ``next_offset`` when more follow; ``after`` ignored (the first
    page again). Only the answer's shape is of interest: the signed request is not read."""
    from flask import Flask, jsonify, request
    from werkzeug.serving import make_server

    app = Flask("older-release")
    rows = [{"id": f"app_old{i}"} for i in range(3)]

    def page(key: str, row: Any) -> Any:
        limit, offset = int(request.args["limit"]), int(request.args.get("offset", 0))
        more = offset + limit < len(rows)
        return jsonify(
            {
                key: [row(r) for r in rows[offset : offset + limit]],
                "next_offset": offset + limit if more else None,
            }
        )

    app.add_url_rule(
        "/ca/v1/ra/applications",
        "apps",
        lambda: page(
            "applications",
            lambda r: {
                **r,
                "state": "pending",
                "subject_class": "enterprise",
                "uscc": None,
                "subject": {"legal_name": "Old Release Co."},
                "code": None,
            },
        ),
    )
    app.add_url_rule(
        "/ca/v1/certificates",
        "certs",
        lambda: page(
            "certificates",
            lambda r: {"serial": r["id"], "profile": "operator", "not_after": "-", "subject": "-"},
        ),
    )
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        t.join(10)


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_the_cli_says_when_an_older_server_cannot_page_by_cursor(
    server: Server, older_release: str
) -> None:
    """A new CLI against a server of an older release (rolling upgrades): the first page
    is shown and says that more follow; a page asked with ``--after`` is refused rather
    than shown, since that server answers the first page again (before: the first page,
    silently, as if it were the last or the one asked)."""
    uscc = fresh_uscc()
    for args, what in (
        (("ra", "list", "--limit", "2", *server.officer()), "applications"),
        (("cert", "list", "--uscc", uscc, "--limit", "2", *server.officer()), "certificates"),
    ):
        first = server.eport("--server", older_release, *args)
        assert "app_old0" in first.stdout and "app_old2" not in first.stdout, first.stdout
        assert f"More {what} follow, but this server is of an older release" in first.stderr
        again = server.eport("--server", older_release, *args, "--after", "c1", check=False)
        assert again.returncode == 1 and again.stdout == "", again.stdout
        assert again.stderr.count("\n") == 1 and "answered the first page again" in again.stderr
