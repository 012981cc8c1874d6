"""What an applicant and an RA officer are told of an application's age limit
(EPORT_APPLICATION_DAYS; the refusal itself: tests/test_authority.py), through the real
server and CLI."""

from __future__ import annotations

import datetime
import json

from tests.conftest import Server
from tests.helpers import fresh_uscc, jrun


def _at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_pending_application_says_until_when(sqlite_server: Server) -> None:
    srv = sqlite_server
    app = jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", "Patient Co.")
    until = app["pending_until"]
    assert _at(until) - _at(app["created_at"]) == datetime.timedelta(days=90)
    shown = srv.eport("application", "show", app["id"]).stdout
    assert f"unless approved by {until}, apply again" in shown, shown
    listed = json.loads(srv.eport("ra", "list", "--limit", "1000", *srv.officer(), "--json").stdout)
    mine = [a for a in listed["applications"] if a["id"] == app["id"]]
    assert mine and mine[0]["pending_until"] == until
    srv.eport("ra", "approve", app["id"], *srv.officer())
    status = jrun(srv, "application", "show", app["id"])
    assert status["state"] == "approved" and status["pending_until"] is None
