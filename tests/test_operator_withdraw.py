"""An enterprise takes back an operator authorization before the operator enrolls: it
could only add them (an officer's `eport ra withdraw` was the one way back, and an
enterprise's certificate is refused there). `eport operator list` shows what waits for
its operator; `eport operator withdraw` ends its code, recorded like an officer's."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Server
from tests.helpers import creds, enroll_enterprise, fresh_uscc, jrun


def test_an_enterprise_lists_and_withdraws_its_operators_not_enrolled(
    sqlite_server: Server, tmp_path: Path
) -> None:
    srv = sqlite_server
    ent = enroll_enterprise(srv, tmp_path, "Withdrawing Co.", uscc=fresh_uscc())
    other = enroll_enterprise(srv, tmp_path, "Other Co.", uscc=fresh_uscc())
    grants = {
        op: jrun(srv, "operator", "add", "--name", f"Clerk {op}", "--id", op, *creds(ent))
        for op in ("W1", "W2")
    }
    listed = jrun(srv, "operator", "list", *creds(ent))
    assert sorted(r["operator_id"] for r in listed["operators"]) == ["W1", "W2"]
    assert {r["code"]["state"] for r in listed["operators"]} == {"live"}
    assert listed["next"] is None
    # Pages: one at a time, the last one full and with no next.
    first = jrun(srv, "operator", "list", "--limit", "1", *creds(ent))
    assert len(first["operators"]) == 1 and first["next"] == first["operators"][0]["application"]
    shown = srv.eport("operator", "list", "--limit", "1", *creds(ent))
    assert f"--after {first['next']}" in shown.stderr and "--after" not in shown.stdout
    second = jrun(srv, "operator", "list", "--limit", "1", "--after", first["next"].upper(),
                  *creds(ent))  # fmt: skip
    assert len(second["operators"]) == 1 and second["next"] is None
    assert {first["operators"][0]["operator_id"], second["operators"][0]["operator_id"]} == {
        "W1",
        "W2",
    }
    assert jrun(srv, "operator", "list", *creds(other))["operators"] == []
    w1 = grants["W1"]["application"]["id"]
    w2 = grants["W2"]["application"]["id"]
    text = srv.eport("operator", "list", *creds(ent)).stdout
    assert text.splitlines()[0].startswith("APPLICATION") and w1 in text and w2 in text

    # Another enterprise cannot take back this one's operator, nor an officer here (it
    # withdraws an approval with eport ra withdraw), nor an enterprise at the officers' RA
    # endpoint.
    res = srv.eport("operator", "withdraw", w1, "--reason", "not ours", *creds(other), check=False)
    assert res.returncode == 1 and "not an operator authorization of this enterprise" in res.stderr
    res = srv.eport("operator", "withdraw", w1, "--reason", "x", *srv.officer(), check=False)
    assert res.returncode == 1 and "needs an enterprise certificate" in res.stderr, res.stderr
    res = srv.eport("ra", "withdraw", w1, "--reason", "x", *creds(ent), check=False)
    assert res.returncode == 1 and "needs an agency certificate" in res.stderr, res.stderr
    # Nor an officer at its own RA endpoint: the enterprise alone withdraws its operators
    # (any member's officer could; probe 24).
    res = srv.eport("ra", "withdraw", w1, "--reason", "x", *srv.officer(), check=False)
    assert res.returncode == 1 and "the enterprise withdraws it" in res.stderr, res.stderr
    assert jrun(srv, "application", "show", w1)["state"] == "approved"

    done = jrun(srv, "operator", "withdraw", w1, "--reason", "left before enrolling", *creds(ent))
    assert done["state"] == "rejected" and done["reason"] == "left before enrolling"
    assert jrun(srv, "application", "show", w1)["state"] == "rejected"
    code = grants["W1"]["enrollment_code"]
    res = srv.eport(
        "enroll", "--code", code, "--profile", "operator", "--out", str(tmp_path / "w1"),
        check=False,
    )  # fmt: skip
    assert res.returncode == 1 and "withdrawn" in res.stderr, res.stderr
    listed = jrun(srv, "operator", "list", *creds(ent))
    assert [r["operator_id"] for r in listed["operators"]] == ["W2"]
    # Authorized again (a lost code): the new one is listed, not the one it replaced.
    again = jrun(srv, "operator", "add", "--name", "Clerk W2", "--id", "W2", *creds(ent))
    states = {
        r["application"]: r["code"]["state"]
        for r in jrun(srv, "operator", "list", *creds(ent))["operators"]
    }
    assert states == {again["application"]["id"]: "live"}, (states, w2)
    grants["W2"] = again

    # Once enrolled, it is no longer listed, and withdrawing it is refused: revoke instead.
    out = tmp_path / "w2"
    jrun(srv, "enroll", "--code", grants["W2"]["enrollment_code"], "--profile", "operator",
         "--out", str(out))  # fmt: skip
    assert jrun(srv, "operator", "list", *creds(ent))["operators"] == []
    w2 = again["application"]["id"]
    res = srv.eport("operator", "withdraw", w2, "--reason", "late", *creds(ent), check=False)
    assert res.returncode == 1 and "(eport revoke)" in res.stderr, res.stderr
    # The withdrawal is in the audit log: the enterprise's, with its reason.
    log = srv.eport("audit", "log", *creds(ent), "--type", "application.withdrawn",
                    "--format", "json").stdout  # fmt: skip
    (event,) = [e for e in json.loads(log) if e["application_id"] == w1]
    assert event["details"]["reason"] == "left before enrolling"
    assert "enterprise" in event["details"] and "officer" not in event["details"]
