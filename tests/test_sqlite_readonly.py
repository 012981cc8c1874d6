"""A worker that opened the SQLite database while its file was not writable: SQLite opened
it read-only, and such a connection stays read-only after the file is writable again.
Every write of that worker was a 503 until it was restarted. Its connection is now closed
at the first refusal, so the request after the file is mended writes.

The file is made unwritable with ``chattr +i`` (the tests run as root, whom file modes do
not stop); a worker restart (SIGKILL, as a crash or the OOM killer) opens it anew."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import Server, start_server, stop
from tests.helpers import fresh_uscc, immutable, jrun
from tests.test_config_checks import child_pids, gunicorn_master

pytestmark = pytest.mark.slow


def restart_worker(srv: Server) -> None:
    master = gunicorn_master(int(srv.url.rsplit(":", 1)[1]))
    (worker,) = child_pids(master)
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = child_pids(master)
        if len(now) == 1 and worker not in now:
            try:
                if requests.get(srv.url + "/ca/v1/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
        assert time.monotonic() < deadline, "no new worker"
        time.sleep(0.2)


def tries_until_done(srv: Server, *args: str) -> list[str]:
    """Run ``eport ARGS`` until it succeeds, three times at most: each refusal's line."""
    refused: list[str] = []
    for _ in range(3):
        res = srv.eport(*args, check=False)
        if res.returncode == 0:
            return refused
        refused.append(res.stderr.strip())
    raise AssertionError(f"eport {' '.join(args)} still refused: {refused}")


def test_a_worker_that_opened_the_database_read_only_writes_once_it_is_writable(
    tmp_path: Path,
) -> None:
    srv, proc = start_server(tmp_path / "data", workers=1)
    db = tmp_path / "data" / "eport.db"
    try:
        app = jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", "Read Only Co.")
        grant = json.loads(srv.eport("ra", "approve", app["id"], *srv.officer(), "--json").stdout)
        enroll = ["enroll", "--code", grant["enrollment_code"], "--profile", "enterprise"]
        enroll += ["--out", str(tmp_path / "ent")]
        apply = ["apply", "--uscc", fresh_uscc(), "--name", "Second Co."]
        with immutable(db):
            restart_worker(srv)
            for args in (apply, enroll):  # an ORM write, and the issuance's group writer
                res = srv.eport(*args, check=False)
                assert res.returncode == 1 and "(HTTP 503)" in res.stderr, res.stderr
        # the file is writable again: at most the next request of each kind is refused
        for args in (apply, enroll):
            refused = tries_until_done(srv, *args)
            assert len(refused) <= 1 and all("(HTTP 503)" in r for r in refused), refused
        assert (tmp_path / "ent" / "cert.pem").exists()
    finally:
        stop(proc)
