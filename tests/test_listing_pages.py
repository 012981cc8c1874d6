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
    first = len(pending) - 3

    page = jrun(srv, "ra", "list", "--limit", "2", "--offset", str(first), *srv.officer())
    assert [a["id"] for a in page["applications"]] == ids[:2]
    assert page["next_offset"] == first + 2
    res = srv.eport("ra", "list", "--limit", "2", "--offset", str(first), *srv.officer())
    assert ids[0] in res.stdout and ids[2] not in res.stdout
    assert f"run the command again with --offset {first + 2}" in res.stderr

    last = srv.eport("ra", "list", "--limit", "2", "--offset", str(first + 2), *srv.officer())
    assert ids[2] in last.stdout and ids[0] not in last.stdout
    assert "--offset" not in last.stderr  # the last page says no more
    doc = jrun(srv, "ra", "list", "--limit", "2", "--offset", str(first + 2), *srv.officer())
    assert doc["next_offset"] is None

    past = srv.eport("ra", "list", "--offset", str(first + 3), *srv.officer())
    assert past.stdout.strip() == f"No pending applications from offset {first + 3}."

    bad = srv.eport("ra", "list", "--offset", "-1", *srv.officer(), check=False)
    assert bad.returncode == 2 and "--offset" in bad.stderr


def test_an_enterprise_lists_all_its_certificates_page_by_page(
    sqlite_server: Server, tmp_path: Path
) -> None:
    srv = sqlite_server
    uscc = fresh_uscc()
    ent = enroll_enterprise(srv, tmp_path, "Many Operators Co.", uscc=uscc)
    ops = [enroll_operator(srv, ent, tmp_path, f"P{i}") for i in range(2)]
    serials = [serial_of(d) for d in (ent, *ops)]

    seen: list[str] = []
    offset = 0
    while True:
        doc = json.loads(
            srv.eport(
                "cert",
                "list",
                "--uscc",
                uscc,
                "--limit",
                "2",
                "--offset",
                str(offset),
                "--json",
                *creds(ent),
            ).stdout
        )
        seen += [c["serial"] for c in doc["certificates"]]
        if doc["next_offset"] is None:
            break
        offset = doc["next_offset"]
    # Every certificate once. Their order is by issuance time (whole seconds), then
    # serial: certificates issued within one second may come in any order.
    assert sorted(seen) == sorted(serials) and len(seen) == len(set(seen))

    res = srv.eport("cert", "list", "--uscc", uscc, "--limit", "2", *creds(ent))
    first = [s for s in serials if s in res.stdout]
    assert len(first) == 2
    assert "More certificates follow: run the command again with --offset 2." in res.stderr
    rest = srv.eport("cert", "list", "--uscc", uscc, "--limit", "2", "--offset", "2", *creds(ent))
    last = [s for s in serials if s in rest.stdout]
    assert len(last) == 1 and last[0] not in first and not rest.stderr
