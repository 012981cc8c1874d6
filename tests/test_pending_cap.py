"""Anyone may apply with no credential, and each application is a log entry for good:
5,000 applications for one USCC in 40 s buried the RA's list (exhaustion probe, F1).
An enterprise has at most five applications pending until an RA officer decides them;
the member agencies' classes a few hundred each."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from ca import authority
from ca.errors import Conflict
from tests.conftest import Server
from tests.helpers import fresh_uscc, in_process_ca, jrun


def _events(server: Server) -> int:
    """The transparency log's size, from its public checkpoint (origin, size, root)."""
    text = requests.get(server.url + "/ca/v1/audit/checkpoint", timeout=10).text
    return int(text.splitlines()[1])


def test_an_enterprise_has_at_most_five_applications_pending(
    sqlite_server: Server, tmp_path: Path
) -> None:
    server = sqlite_server
    uscc = fresh_uscc()
    apply = ["apply", "--uscc", uscc, "--name", "Busy Applicant Co."]
    ids = [jrun(server, *apply)["id"] for _ in range(authority.MAX_PENDING_PER_USCC)]
    size = _events(server)
    res = server.eport(*apply, check=False)
    assert res.returncode == 1, res
    line = res.stderr.strip()
    assert "\n" not in line and f"enterprise {uscc} has 5 applications pending" in line
    assert _events(server) == size  # nothing logged for the refusal
    assert jrun(server, "apply", "--uscc", fresh_uscc(), "--name", "Other Co.")["id"]
    # once an officer decides one, another is taken
    jrun(server, "ra", "reject", ids[0], "--reason", "duplicate", *server.officer())
    assert jrun(server, *apply)["id"]


def test_the_agencies_classes_are_capped_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(authority, "MAX_PENDING_STAFF", 2)
    with in_process_ca(tmp_path) as (ca, _, _):
        staff = {"agency_id": "customs", "service_host": "a.eport.example"}
        ca.apply("service", staff)
        ca.apply("service", {**staff, "service_host": "b.eport.example"})
        with pytest.raises(Conflict, match="the member agencies' service class has 2"):
            ca.apply("service", {**staff, "service_host": "c.eport.example"})
        assert ca.apply("agency", {"agency_id": "customs", "person_name": "Li Na"}).id
