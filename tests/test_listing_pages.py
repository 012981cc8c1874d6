"""Listings of a CA at scale: every row is reachable, page by page, through the real CLI.

An e-port CA has thousands of pending applications and enterprises with thousands of
operators, more than one page (--limit at most 1000). The pages here are small, so the
same paths run on a handful of rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Server
from tests.helpers import creds, enroll_enterprise, enroll_operator, fresh_uscc, jrun, serial_of


def test_an_officer_reaches_every_pending_application_page_by_page(
    sqlite_server: Server,
) -> None:
    srv = sqlite_server
    ids = [
        jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", f"Page Co. {i}")["id"]
        for i in range(3)
    ]
    pending = [
        a["id"] for a in jrun(srv, "ra", "list", "--limit", "1000", *srv.officer())["applications"]
    ]
    assert pending[-3:] == ids  # oldest first; earlier tests of the module may add more
    # the cursor after the application just before ours: the last of a page of the rest
    before = len(pending) - 3
    cursor = []
    if before:
        doc = jrun(srv, "ra", "list", "--limit", str(before), *srv.officer())
        cursor = ["--after", doc["next"]]

    page = jrun(srv, "ra", "list", "--limit", "2", *cursor, *srv.officer())
    assert [a["id"] for a in page["applications"]] == ids[:2]
    assert isinstance(page["next"], str) and "next_offset" not in page
    res = srv.eport("ra", "list", "--limit", "2", *cursor, *srv.officer())
    assert ids[0] in res.stdout and ids[2] not in res.stdout
    assert f"run the command again with --after {page['next']}" in res.stderr

    last = srv.eport("ra", "list", "--limit", "2", "--after", page["next"], *srv.officer())
    assert ids[2] in last.stdout and ids[0] not in last.stdout
    assert "--after" not in last.stderr  # the last page says no more
    doc = jrun(srv, "ra", "list", "--limit", "2", "--after", page["next"], *srv.officer())
    assert doc["next"] is None

    # the last one decided: the page after the cursor is empty, and says so
    srv.eport("ra", "reject", ids[2], "--reason", "test", *srv.officer())
    past = srv.eport("ra", "list", "--after", page["next"], *srv.officer())
    assert past.stdout.strip() == "No pending applications after that page."

    bad = srv.eport("ra", "list", "--offset", "2", *srv.officer(), check=False)
    assert bad.returncode == 2 and "--after" in bad.stderr


def test_an_enterprise_lists_all_its_certificates_page_by_page(
    sqlite_server: Server, tmp_path: Path
) -> None:
    srv = sqlite_server
    uscc = fresh_uscc()
    ent = enroll_enterprise(srv, tmp_path, "Many Operators Co.", uscc=uscc)
    ops = [enroll_operator(srv, ent, tmp_path, f"P{i}") for i in range(2)]
    serials = [serial_of(d) for d in (ent, *ops)]

    seen: list[str] = []
    after: list[str] = []
    while True:
        doc = json.loads(
            srv.eport(
                "cert", "list", "--uscc", uscc, "--limit", "2", *after, "--json", *creds(ent)
            ).stdout
        )
        seen += [c["serial"] for c in doc["certificates"]]
        if doc["next"] is None:
            break
        after = ["--after", doc["next"]]
    # Every certificate once, in the order they were issued (their log order).
    assert seen == serials

    res = srv.eport("cert", "list", "--uscc", uscc, "--limit", "2", *creds(ent))
    first = [s for s in serials if s in res.stdout]
    assert first == serials[:2]
    hint = "More certificates follow: run the command again with --after "
    assert res.stderr.startswith(hint), res.stderr
    cursor = res.stderr.strip().rsplit(" ", 1)[1]
    rest = srv.eport("cert", "list", "--uscc", uscc, "--limit", "2", "--after", cursor, *creds(ent))
    last = [s for s in serials if s in rest.stdout]
    assert last == serials[2:] and not rest.stderr
