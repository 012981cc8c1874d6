"""Defects found by probing the ``eport`` command (QA probe 3), each driven through the
real command against a real server: what a user typed, what the command did, and what
it left on disk or on the server."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.conftest import Server
from tests.test_cli_errors import approved_code
from tests.test_enrollment_flow import jrun


def _private_regular(path: Path) -> None:
    """``path`` is a regular file of its own (not a symlink) with mode 0600."""
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)


def test_a_stale_temporary_file_does_not_make_the_key_readable(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """key.pem (and bundle.p12) were written through a fixed ``<name>.tmp`` opened with
    O_TRUNC: one left behind with mode 0644 made the new key 0644, and a symlink there
    was followed, the key written to wherever it pointed (and key.pem made that
    symlink). The key is now always a new 0600 regular file; what was left there is not
    touched."""
    server = sqlite_server
    # a stale 0644 key.pem.tmp and a symlinked bundle.p12.tmp
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "key.pem.tmp").write_bytes(b"")
    os.chmod(loose / "key.pem.tmp", 0o644)
    stolen_p12 = tmp_path / "stolen.p12"
    (loose / "bundle.p12.tmp").symlink_to(stolen_p12)
    code = approved_code(server, "Stale Temporary Co.")
    args = ["--code", code, "--profile", "enterprise", "--out", str(loose), "--p12"]
    jrun(server, "enroll", *args)
    _private_regular(loose / "key.pem")
    _private_regular(loose / "bundle.p12")
    assert not stolen_p12.exists()
    assert stat.S_IMODE(os.stat(loose / "key.pem.tmp").st_mode) == 0o644  # left as it was

    # a symlinked key.pem.tmp, at enrollment and at renewal
    stolen = tmp_path / "stolen.pem"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "key.pem.tmp").symlink_to(stolen)
    code = approved_code(server, "Symlinked Temporary Co.")
    jrun(server, "enroll", "--code", code, "--profile", "enterprise", "--out", str(linked))
    _private_regular(linked / "key.pem")
    assert not stolen.exists()

    renewed = tmp_path / "renewed"
    renewed.mkdir()
    (renewed / "key.pem.tmp").symlink_to(stolen)
    creds = ["--cert", str(loose / "cert.pem"), "--key", str(loose / "key.pem")]
    jrun(server, "renew", *creds, "--out", str(renewed))
    _private_regular(renewed / "key.pem")
    assert not stolen.exists()
    # nothing else is left beside the files written
    assert sorted(p.name for p in renewed.iterdir()) == [
        "cert.pem",
        "chain.pem",
        "key.pem",
        "key.pem.tmp",
    ]
