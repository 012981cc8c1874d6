"""A token-signing key taken from the token service: what still holds, and how it is
withdrawn.

* Online validation (the gateway's ``/auth/validate``, introspection) refuses a token
  whose subject claims or ``cnf`` are not its session's, even when signed with the
  service's own key: the service mints none, so only a stolen key makes one. Before, a
  token naming another enterprise in the forger's own live session passed the gateway.
* ``eport auth rotate-keys --compromised`` withdraws the keys at once: within seconds no
  server accepts a token they signed, and the JWKS no longer publishes them. Before,
  ``--force`` (what the docs advised for a compromised key) kept the old key published,
  and accepted, for 15 minutes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import Server, start_server, stop
from tests.helpers import enroll_enterprise, enroll_operator, fresh_uscc
from tests.test_sdk import header_of, login, payload_of, resign


def _gateway(srv: Server, token: str) -> requests.Response:
    return requests.get(
        srv.url + "/auth/validate",
        headers={"Authorization": "Bearer " + token, "X-Eport-Service": "customs-declaration"},
        timeout=10,
    )


@pytest.mark.slow
def test_a_stolen_key_is_bounded_by_sessions_and_withdrawn_at_once(tmp_path: Path) -> None:
    srv, proc = start_server(tmp_path / "data")
    try:
        ent = enroll_enterprise(srv, tmp_path)
        op = enroll_operator(srv, ent, tmp_path, "E1", "declaration")
        session = login(srv, op, tmp_path)
        token = session.token()
        assert _gateway(srv, token).status_code == 200
        claims = payload_of(token)

        # Re-signed with the service's key (as a thief would), its claims unchanged: good.
        same = resign(srv, token, jti="another-jti-of-the-thief")
        assert _gateway(srv, same).status_code == 200
        # Naming another subject, another enterprise, or another certificate, in the
        # forger's own live session: refused.
        other = fresh_uscc()
        for forged in (
            {"sub": f"ent:{other}"},
            {"uscc": other},
            {"sub": f"op:{other}:E1", "uscc": other},
            {"operator_id": "E2"},
            {"cnf": {"x5t#S256": "A" * 43}},
        ):
            r = _gateway(srv, resign(srv, token, **forged))
            assert r.status_code == 401, (forged, r.status_code, r.headers)
        assert claims["sub"].endswith(":E1")

        # The key withdrawn: its tokens stop validating, the session goes on.
        old_kid = header_of(token)["kid"]
        res = srv.eport(
            "auth", "rotate-keys", "--data-dir", str(srv.data_dir), "--dev", "--compromised",
            "--json",
        )  # fmt: skip
        doc = json.loads(res.stdout)
        assert doc["withdrawn"] is True and doc["active"] != old_kid
        deadline = time.monotonic() + 20  # every process reloads its keys within 5 s

        def refused_everywhere() -> bool:  # by every worker: ten requests in a row
            return all(_gateway(srv, t).status_code == 401 for t in (token, same) * 5)

        while not refused_everywhere():
            assert time.monotonic() < deadline, "a withdrawn key's token still validates"
            time.sleep(0.5)
        published = {
            k["kid"] for k in requests.get(srv.url + "/auth/jwks.json", timeout=10).json()["keys"]
        }
        assert old_kid not in published and doc["active"] in published
        fresh = session.token()  # the session is still open: a new token, new key
        assert header_of(fresh)["kid"] == doc["active"]
        assert _gateway(srv, fresh).status_code == 200
    finally:
        stop(proc)
