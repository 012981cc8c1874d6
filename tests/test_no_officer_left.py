"""No member agency has an RA officer certificate in force (all revoked, or all expired
with the issuing CA that issued them): nobody is left to sign a ceremony's opening, so
the ceremonies that bring officers back are opened unsigned (``--no-officer``) and the
custodians' quorum authorizes them (ca/quorum_api.py, docs/emergency-plan.md runbook 8).
A real ``eport ca init``, its sealed server unsealed by three custodians, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from ca.quorum_api import UNSIGNED_ACTOR
from tests.helpers import fresh_uscc
from tests.test_ca_init import MEMBERS
from tests.test_custody_ceremonies import join, officer_args, unsealed_custody_server

PW = {"EPORT_PASSPHRASE": "officer passphrase"}


@pytest.mark.slow
def test_with_no_officer_in_force_the_custodians_open_and_approve_a_new_one(
    tmp_path: Path,
) -> None:
    with unsealed_custody_server(tmp_path) as (srv, out, _):

        def start(*args: str) -> tuple[int, str, str]:
            res = srv.eport("ca", "ceremony", "start", *args, "--json", check=False, **PW)
            return res.returncode, res.stdout, res.stderr

        def customs_officer_application(name: str) -> str:
            res = srv.eport(
                "apply", "--class", "agency", "--agency", "customs", "--name", name, "--json"
            )
            app_id: str = json.loads(res.stdout)["id"]
            return app_id

        app = customs_officer_application("Sun Li")
        # While an officer is in force, an unsigned opening is refused (401), and so is
        # --no-officer beside an officer's credentials (the CLI's usage error).
        rc, _, err = start("APPROVE-OFFICER", f"application={app}", "--no-officer")
        assert rc == 1 and "(HTTP 401)" in err and "no member agency has an RA officer" in err
        rc, _, err = start("ROOT-CRL", "--no-officer", *officer_args(out))
        assert rc == 2 and "--no-officer opens the ceremony unsigned" in err, err
        rc, _, err = start("ROOT-CRL")
        assert rc == 2 and "give --cert and --key" in err, err
        body = {"operation": "APPROVE-OFFICER", "params": {"application": app}}
        r = requests.post(srv.url + "/ca/v1/custody/ceremonies", json=body, timeout=10)
        assert r.status_code == 401 and r.headers["Content-Type"] == "application/problem+json"

        # Every member's last officer revokes its own certificate.
        for m in MEMBERS:
            srv.eport("revoke", "--reason", "superseded", *officer_args(out, m), **PW)
        rc, _, err = start("APPROVE-OFFICER", f"application={app}", *officer_args(out))
        assert rc == 1 and "(HTTP 401)" in err, err  # a revoked officer signs nothing

        # Unsigned now, but only what brings officers back.
        for refused in (["REVOKE-INTERMEDIATE", "issuer=enterprise"], ["ROTATE-LOG-KEY"]):
            rc, _, err = start(*refused, "--no-officer")
            assert rc == 1 and "(HTTP 403)" in err and "brings officers back" in err, err
        res = srv.eport("ca", "rotate", "enterprise", "--no-officer", check=False, **PW)
        assert res.returncode == 1 and "ROTATE-ISSUER issuer=agency" in res.stderr, res.stderr
        rotation = json.loads(
            srv.eport("ca", "rotate", "agency", "--no-officer", "--json", **PW).stdout
        )
        assert rotation["operation"] == "ROTATE-ISSUER" and rotation["opened_by"] == UNSIGNED_ACTOR
        # check_params still holds for an unsigned opening: an enterprise's application is
        # no officer's.
        ent = json.loads(
            srv.eport("apply", "--uscc", fresh_uscc(), "--name", "X Co.", "--json").stdout
        )["id"]
        rc, _, err = start("APPROVE-OFFICER", f"application={ent}", "--no-officer")
        assert rc == 1 and "approves only an RA officer" in err, err

        rc, opened, err = start("APPROVE-OFFICER", f"application={app}", "--no-officer")
        assert rc == 0, err
        doc = json.loads(opened)
        assert doc["opened_by"] == UNSIGNED_ACTOR and doc["approving"]["person_name"] == "Sun Li"
        for m in ("commerce", "tax"):
            assert "approves RA officer Sun Li of member agency customs" in (
                join(srv, out, doc["id"], m).stderr
            )
        done = json.loads(join(srv, out, doc["id"], "inspection").stdout)
        assert done["state"] == "done" and done["result"]["agency_id"] == "customs", done

        # The new officer enrolls and signs again: openings are signed from now on.
        new = out / "new-customs-officer"
        srv.eport(
            "enroll", "--code", done["enrollment_code"], "--profile", "agency", "--out", str(new),
            **PW,
        )  # fmt: skip
        creds = ["--cert", str(new / "cert.pem"), "--key", str(new / "key.pem")]
        assert "applications" in json.loads(srv.eport("ra", "list", *creds, "--json", **PW).stdout)
        again = customs_officer_application("Zhou Min")
        rc, _, err = start("APPROVE-OFFICER", f"application={again}", "--no-officer")
        assert rc == 1 and "(HTTP 401)" in err, err
        rc, opened, err = start("ROOT-CRL", *creds)
        assert rc == 0 and json.loads(opened)["opened_by"] != UNSIGNED_ACTOR, err
