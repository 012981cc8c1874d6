"""The data directory and its SQLite databases are the server's user's alone.

A fresh ``eport serve --dev`` (under umask 0022, the common default) makes the data
directory 0700 and ``eport.db``, ``auth.db`` and their ``-wal``/``-shm`` files 0600; a
data directory whose databases an earlier release made 0644 has them tightened at the
next start, with one line saying so.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import start_server, stop
from tests.helpers import enroll_enterprise


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the servers started here inherit it
    try:
        yield
    finally:
        os.umask(old)


def databases(data: Path) -> list[Path]:
    return [data / "eport.db", data / "auth.db"]


def test_a_new_data_directory_is_private(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "data"
    srv, proc = start_server(data)
    try:
        enroll_enterprise(srv, tmp_path)  # both databases written to, in WAL mode
        assert mode(data) == 0o700
        files = [
            p.with_name(p.name + side) for p in databases(data) for side in ("", "-wal", "-shm")
        ]
        present = [p for p in files if p.exists()]
        assert data / "eport.db-wal" in present and data / "auth.db-wal" in present
        assert {str(p): mode(p) for p in present} == {str(p): 0o600 for p in present}
        assert "mode 0600" not in srv.log.read_text()  # nothing to tighten in a new one
    finally:
        stop(proc)


@pytest.mark.slow
def test_serve_tightens_the_databases_of_an_earlier_release(
    tmp_path: Path, umask_022: None
) -> None:
    data = tmp_path / "data"
    srv, proc = start_server(data)
    stop(proc)
    for db in databases(data):
        os.chmod(db, 0o644)  # as an earlier release left them
    srv, proc = start_server(data)
    try:
        assert [mode(db) for db in databases(data)] == [0o600, 0o600]
        notices = [line for line in srv.log.read_text().splitlines() if "mode 0600" in line]
        assert len(notices) == 1, srv.log.read_text()
        assert str(data / "eport.db") in notices[0] and str(data / "auth.db") in notices[0]
        enroll_enterprise(srv, tmp_path)  # and it serves on as before
    finally:
        stop(proc)
