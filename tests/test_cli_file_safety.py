"""Files the ``eport`` command writes or reads that are the user's to keep safe, driven
through the real command: an audit export never replaces a file by surprise nor leaves
half of one; a key file others may read is used with a warning (it is encrypted); a
session file others may read is refused (its refresh token is a bearer secret in the
clear)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from cli import keyfiles
from cli.client import CLIError
from tests.conftest import EPORT_CMD, Server, base_env

EXISTS = "exists: choose another --out, or pass --force to replace it"


def run_eport(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EPORT_CMD, *args],
        capture_output=True,
        text=True,
        env=base_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- eport audit log --out ---------------------------------------------------------------


def test_audit_log_out_refuses_an_existing_file(sqlite_server: Server, tmp_path: Path) -> None:
    """An export to a file that exists (the one handed to an inspector) was written over
    silently; it is refused in one line, before a key is read or anything is sent, and
    the file is left as it was. A dangling symlink there is refused, not followed."""
    srv = sqlite_server
    who = srv.auditor()
    out = tmp_path / "events.csv"
    out.write_text("the export handed to the inspector\n")
    res = srv.eport("audit", "log", *who, "--format", "csv", "--out", str(out), check=False)
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == f"eport: error: {out} {EXISTS}\n"
    assert out.read_text() == "the export handed to the inspector\n"
    # said before the key is read: a key file that is not there is not the error
    missing_key = ["--cert", who[1], "--key", str(tmp_path / "no-key.pem")]
    res = srv.eport("audit", "log", *missing_key, "--out", str(out), check=False)
    assert res.returncode == 1 and res.stderr == f"eport: error: {out} {EXISTS}\n"
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "elsewhere.csv")
    res = srv.eport("audit", "log", *who, "--format", "csv", "--out", str(link), check=False)
    assert res.returncode == 1 and res.stderr == f"eport: error: {link} {EXISTS}\n"
    assert not (tmp_path / "elsewhere.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv", "link.csv"]


def test_audit_log_force_replaces_a_file_only_with_a_complete_export(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """--force replaces the file, once the export is complete: one the server refuses
    leaves the file it would have replaced as it was, and no part file beside it.
    --force without --out is a usage error."""
    srv = sqlite_server
    who = srv.auditor()
    out = tmp_path / "events.csv"
    out.write_text("older export\n")
    res = srv.eport("audit", "log", *who, "--format", "csv", "--force", "--out", str(out))
    assert res.stdout == "" and res.stderr == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows and [int(r["log_index"]) for r in rows] == list(range(len(rows)))
    before = out.read_bytes()
    res = srv.eport(
        "audit", "log", *who, "--type", "nope", "--force", "--out", str(out), check=False
    )
    assert res.returncode == 1 and "(HTTP 400)" in res.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]  # no part left
    res = srv.eport("audit", "log", *who, "--force", check=False)
    assert res.returncode == 2 and "--force goes with --out only" in res.stderr, res.stderr


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_an_export_stopped_by_sigterm_or_sighup_leaves_no_part(
    sqlite_server: Server, tmp_path: Path, stop: signal.Signals
) -> None:
    """A service manager's stop (SIGTERM) or a closed terminal (SIGHUP) during an export
    ended it at once and left its part file, a whole copy of the events by then, for good
    (crash probe, session 26). They unwind as Ctrl-C does: no part, no file, a non-zero
    exit. The server here answers nothing, so the export is caught mid-way."""
    import threading
    import time

    from tests.conftest import EPORT
    from tests.helpers import HttpStub

    released = threading.Event()

    def never(method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        released.wait(60)
        return 503, "text/plain", b""

    out = tmp_path / "exports" / "events.csv"
    out.parent.mkdir()
    with HttpStub(never) as stub:
        env = base_env() | {"EPORT_SERVER": stub.url}
        who = sqlite_server.auditor()  # a real key and its passphrase file: the request is signed
        proc = subprocess.Popen(
            [EPORT, "audit", "log", *who, "--format", "csv", "--out", str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not list(out.parent.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert next(p.name for p in out.parent.iterdir()).endswith(".part")
            proc.send_signal(stop)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            released.set()
    assert proc.returncode != 0, err
    assert list(out.parent.iterdir()) == [], err


def test_an_export_does_not_replace_a_file_made_while_it_ran(tmp_path: Path) -> None:
    """The file checked for at the start may be made by the time the export is complete
    (another export to the same name): the export is not moved over it."""
    from cli.audit import _move_into_place

    part, out = tmp_path / ".events.csv.1234.part", tmp_path / "events.csv"
    part.write_text("this export\n")
    out.write_text("made meanwhile\n")
    with pytest.raises(CLIError, match="made while the export ran"):
        _move_into_place(part, out, force=False)
    assert out.read_text() == "made meanwhile\n"
    out.unlink()
    _move_into_place(part, out, force=False)
    assert out.read_text() == "this export\n" and not part.exists()


# -- key files -----------------------------------------------------------------------------


def test_a_key_file_others_can_read_is_used_with_a_warning(tmp_path: Path) -> None:
    """An encrypted key file of mode 0644 is used, with one warning line naming its mode
    and the chmod that fixes it (the path quoted for a shell); the passphrase never
    appears. ``eport key passwd`` writes it back 0600, and then nothing is said."""
    folder = tmp_path / "my keys"
    folder.mkdir()
    key = folder / "key.pem"
    keyfiles.write_key(key, ec.generate_private_key(ec.SECP256R1()), b"old passphrase")
    key.chmod(0o644)
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text("old passphrase\n")
    new.write_text("new passphrase\n")
    res = run_eport(
        "key", "passwd", str(key), "--passphrase-file", str(old), "--new-passphrase-file", str(new)
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        f"WARNING: {key} is readable by others (mode 0644); chmod 600 '{key}'"
    ]
    assert "old passphrase" not in res.stderr
    assert mode_of(key) == 0o600
    res = run_eport(
        "key", "passwd", str(key), "--passphrase-file", str(new), "--new-passphrase-file", str(old)
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_a_signing_key_its_group_can_read_is_used_with_a_warning(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """A command that signs with a key of mode 0640 does its work and says so once; with
    the key 0600 it says nothing."""
    srv = sqlite_server
    who = srv.auditor()
    key = tmp_path / "auditor.key"
    shutil.copyfile(who[3], key)
    key.chmod(0o640)
    args = ["audit", "log", *who[:3], str(key), *who[4:], "--format", "json", "--limit", "1"]
    res = srv.eport(*args)
    assert len(json.loads(res.stdout)) == 1
    assert res.stderr.splitlines() == [
        f"WARNING: {key} is readable by its group (mode 0640); chmod 600 {key}"
    ]
    key.chmod(0o600)
    res = srv.eport(*args)
    assert len(json.loads(res.stdout)) == 1 and res.stderr == ""


# -- session files -------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_session_file_others_can_read_is_refused(sqlite_server: Server, tmp_path: Path) -> None:
    """The session file holds the refresh token in the clear, which gets tokens without
    the key: one others may read (or write) is refused by every command that would use
    it, without the token in the message and without rotating it. ``eport login`` again
    ends that session and keeps the new one 0600; chmod 600 is the other way back."""
    srv = sqlite_server
    cfg = {"EPORT_CONFIG_DIR": str(tmp_path / "cfg")}
    login = json.loads(srv.eport("login", *srv.auditor(), "--json", **cfg).stdout)
    file = Path(login["file"])
    refresh = json.loads(file.read_text())["refresh_token"]
    for mode, how in ((0o644, "readable by others"), (0o620, "writable by its group")):
        file.chmod(mode)
        for args in (("token", "--service", "audit"), ("whoami",), ("logout",)):
            res = srv.eport(*args, check=False, **cfg)
            assert (res.returncode, res.stdout) == (1, ""), args
            assert res.stderr.splitlines() == [
                f"eport: error: the session file {file} is {how} (mode {mode:04o}), and its "
                "refresh token works for anyone who copied it: run `eport login` again (it "
                f"ends this session), or chmod 600 {file} if no one else can have read it"
            ], args
            assert refresh not in res.stderr
    assert json.loads(file.read_text())["refresh_token"] == refresh  # not used: not rotated
    file.chmod(0o644)
    again = json.loads(srv.eport("login", *srv.auditor(), "--json", **cfg).stdout)
    assert again["ended_previous_session"] == login["session"]["sid"]
    assert mode_of(file) == 0o600
    ended = requests.post(f"{srv.url}/auth/session", data={"refresh_token": refresh}, timeout=10)
    assert ended.status_code == 400 and ended.json()["error"] == "invalid_grant"
    assert srv.eport("token", "--service", "audit", **cfg).stdout.count(".") == 2
    file.chmod(0o640)
    assert srv.eport("whoami", check=False, **cfg).returncode == 1
    file.chmod(0o600)
    assert "Subject:" in srv.eport("whoami", **cfg).stdout
