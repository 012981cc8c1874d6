"""A warning any client can cause is logged at most once a minute per process: 20,000
gateway sub-requests naming an unknown service wrote 20,000 lines (exhaustion probe,
F6). Each request is still refused."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.conftest import start_server, stop


def test_an_unknown_service_flood_is_one_log_line(tmp_path: Path) -> None:
    srv, proc = start_server(tmp_path / "d", workers=1)
    try:
        with requests.Session() as http:
            for i in range(200):
                r = http.get(
                    srv.url + "/auth/validate",
                    headers={"X-Eport-Service": f"nope-{i}", "Authorization": "Bearer x"},
                    timeout=10,
                )
                assert r.status_code == 400
        lines = [
            line
            for line in srv.log.read_text(errors="replace").splitlines()
            if "gateway sub-request for unknown service" in line
        ]
        assert len(lines) == 1 and "'nope-0'" in lines[0], lines
    finally:
        stop(proc)
