"""An init cut short: `eport ca init` (and the development CA's first start under
`eport serve --dev`) interrupted by Ctrl-C or killed with SIGKILL after the hierarchy's
files (ca/root.crt among them) were written but before the database records, the custody
record's event and the RA officers were.

Ctrl-C: the run removes what it made and says so in one line, and the next init works.
SIGKILL: nothing can be cleaned up; the next init says, in one line, that the earlier one
did not finish and what to remove, and `eport serve` refuses the half CA (it used to
start it, and custodians unsealed a CA with no root in its log and no officer)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import EPORT, base_env, free_port, start_server, stop
from tests.test_ca_init import custodian_env
from tests.test_cli_errors import default_sigint

pytestmark = pytest.mark.slow  # each runs `eport ca init` or a first start, ~5 s


def _cut_short(cmd: list[str], data: Path, sig: signal.Signals) -> subprocess.CompletedProcess[str]:
    """Run ``eport CMD``, and send it ``sig`` as soon as ``data/ca/root.crt`` exists: after
    the keys and before the records and officers (about a second later)."""
    proc = subprocess.Popen(
        [EPORT, *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=custodian_env(),
        # a Ctrl-C reaches it even when the tests run with SIGINT ignored (a shell's
        # background job), which the command would inherit and never see the signal
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        while not (data / "ca" / "root.crt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no ca/root.crt"
            time.sleep(0.005)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _eport(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EPORT, *args], capture_output=True, text=True, env=custodian_env(), timeout=120
    )


def _events(data: Path) -> int:
    with sqlite3.connect(data / "eport.db") as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    """The one line of stderr (after --dev's warning), an error, and exit status 1."""
    lines = [
        line
        for line in res.stderr.strip().splitlines()
        if not line.startswith("WARNING: development mode")
    ]
    assert res.returncode == 1 and len(lines) == 1, res
    assert lines[0].startswith("eport: error: "), lines
    return lines[0]


def test_init_killed_after_the_keys_is_named_by_the_next_init_and_refused_by_serve(
    tmp_path: Path,
) -> None:
    data, out = tmp_path / "data", tmp_path / "ceremony"
    killed = _cut_short(
        ["ca", "init", "--data-dir", str(data), "--out", str(out)], data, signal.SIGKILL
    )
    assert killed.returncode == -signal.SIGKILL
    assert (data / "ca" / "root.crt").exists() and not (out / "ceremony.json").exists()

    again = _eport("ca", "init", "--data-dir", str(data), "--out", str(tmp_path / "o2"))
    line = _one_error_line(again)
    assert "did not finish" in line and "a second init would orphan it" not in line, line
    assert f"remove {data} and {out}" in line and "run `eport ca init` again" in line, line
    # Nothing was removed: the user does that, once told
    assert (data / "ca" / "root.key").exists() and (out / "shares").is_dir()
    assert not (tmp_path / "o2").exists()

    port = free_port()
    served = subprocess.run(
        [EPORT, "serve", "--data-dir", str(data), "--port", str(port)],
        capture_output=True,
        text=True,
        env=custodian_env(),
        timeout=120,
    )
    line = _one_error_line(served)
    assert "cannot be used" in line and "did not finish" in line, line
    assert "Unseal key fingerprint" not in served.stdout + served.stderr
    # Nor is it a CA to re-share.
    shares = [a for f in sorted((out / "shares").iterdir())[:3] for a in ("--share", str(f))]
    reshared = _eport(
        "ca", "reshare", "--data-dir", str(data), "--out", str(tmp_path / "o3"), *shares
    )
    line = _one_error_line(reshared)
    assert "cannot be used" in line and "did not finish" in line, line
    assert not (tmp_path / "o3").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_init_interrupted_removes_what_it_made_and_the_next_init_works(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl-C, or SIGTERM (a service manager's stop), which used to end it at once."""
    data, out = tmp_path / "data", tmp_path / "ceremony"
    cmd = ["ca", "init", "--data-dir", str(data), "--out", str(out)]
    stopped = _cut_short(cmd, data, sig)
    line = _one_error_line(stopped)
    how = "was interrupted" if sig == signal.SIGINT else "was stopped by SIGTERM"
    assert f"the init {how}: removed what it had made" in line, line
    assert "run `eport ca init` again" in line, line
    assert not data.exists() and not out.exists()
    if sig != signal.SIGINT:
        return  # the next init is the same after either

    done = _eport(*cmd, "--json")
    assert done.returncode == 0, done.stderr
    assert not (data / "ca" / "init.unfinished").exists()
    assert (out / "ceremony.json").exists() and _events(data) > 0


def test_init_killed_in_directories_of_the_users_own_names_only_what_it_made(
    tmp_path: Path,
) -> None:
    """A data directory and an --out directory that were there before (``--out .`` is
    one): the next init names only what the killed one made in them, never the
    directories themselves, which "remove DATA and OUT" did; once those are removed, the
    init runs, and the user's files are still there."""
    data, out = tmp_path / "data", tmp_path / "home"
    data.mkdir()
    out.mkdir()
    (data / "README.ops").write_text("our runbook\n")
    (out / "notes.txt").write_text("my own\n")
    cmd = ["ca", "init", "--data-dir", str(data), "--out", str(out)]
    assert _cut_short(cmd, data, signal.SIGKILL).returncode == -signal.SIGKILL

    line = _one_error_line(_eport(*cmd))
    assert "did not finish" in line and "only those: none of them was there before" in line
    listed = line.split("; remove ", 1)[1].split(" and run `eport ca init` again", 1)[0]
    named = {Path(p) for part in listed.split(", ") for p in part.split(" and ")}
    assert {data / "ca", data / "eport.db", out / "shares"} <= named, line
    assert all(p.is_relative_to(data) or p.is_relative_to(out) for p in named), line
    assert data not in named and out not in named, line
    for path in named:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()

    done = _eport(*cmd, "--json")
    assert done.returncode == 0, done.stderr
    assert (out / "ceremony.json").exists() and _events(data) > 0
    assert (data / "README.ops").read_text() == "our runbook\n"
    assert (out / "notes.txt").read_text() == "my own\n"


def test_init_cut_short_by_an_earlier_release_is_told_apart_from_a_ca(tmp_path: Path) -> None:
    """A release before the unfinished-init mark left no mark: a CA under custody whose
    database records no root is what its init left when killed after the keys."""
    data, out = tmp_path / "data", tmp_path / "ceremony"
    _cut_short(["ca", "init", "--data-dir", str(data), "--out", str(out)], data, signal.SIGKILL)
    (data / "ca" / "init.unfinished").unlink()  # what an earlier release left
    assert _events(data) == 0

    again = _eport("ca", "init", "--data-dir", str(data), "--out", str(tmp_path / "o2"))
    line = _one_error_line(again)
    assert "records no root certificate" in line and "did not finish" in line, line

    served = subprocess.run(
        [EPORT, "serve", "--data-dir", str(data), "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=custodian_env(),
        timeout=120,
    )
    line = _one_error_line(served)
    assert "records no root certificate" in line, line
    assert "Unseal key fingerprint" not in served.stdout


def _serve_dev(data: Path) -> list[str]:
    return ["serve", "--dev", "--data-dir", str(data), "--port", str(free_port())]


def test_dev_first_start_killed_is_refused_with_what_to_do(tmp_path: Path) -> None:
    data = tmp_path / "data"
    killed = _cut_short(_serve_dev(data), data, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    again = subprocess.run(
        [EPORT, *_serve_dev(data)], capture_output=True, text=True, env=custodian_env(), timeout=120
    )
    line = _one_error_line(again)
    assert "`eport serve --dev`" in line and "did not finish" in line, line
    assert f"remove {data} and start again" in line, line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "sighup"])
def test_dev_first_start_interrupted_is_made_afresh_next_time(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl-C, or SIGHUP (the terminal closed), which used to end it at once."""
    data = tmp_path / "data"
    stopped = _cut_short(_serve_dev(data), data, sig)
    line = _one_error_line(stopped)
    how = "was interrupted" if sig == signal.SIGINT else "was stopped by SIGHUP"
    assert f"first start {how}: removed what it had made" in line, line
    assert not (data / "ca").exists() and not (data / "dev").exists()
    assert not (data / "eport.db").exists()
    if sig != signal.SIGINT:
        return  # the next start is the same after either

    srv, proc = start_server(data, workers=1)
    try:
        assert requests.get(srv.url + "/ca/v1/health", timeout=5).json()["status"] == "ok"
        assert (data / "dev" / ".complete").exists()
        assert not (data / "ca" / "init.unfinished").exists()
        assert _events(data) > 0
    finally:
        stop(proc)


def test_a_complete_ca_has_no_unfinished_mark_and_a_rerun_removes_nothing(
    tmp_path: Path,
) -> None:
    data, out = tmp_path / "data", tmp_path / "ceremony"
    assert _eport("ca", "init", "--data-dir", str(data), "--out", str(out)).returncode == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert not (data / "ca" / "init.unfinished").exists()
    again = _eport("ca", "init", "--data-dir", str(data), "--out", str(tmp_path / "o2"))
    line = _one_error_line(again)
    assert "already holds a CA" in line, line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert os.path.exists(data / "ca" / "root.key")


@pytest.mark.slow
def test_two_first_starts_at_once_share_one_development_ca(tmp_path: Path) -> None:
    """Two servers may serve one data directory; started at once on a fresh one, the
    second took the first's CA in the making for an unfinished start ("remove that
    directory") and quit. The second now waits for the first start, and uses its CA."""
    data = tmp_path / "data"
    env = base_env()
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"serve-{p}.log" for p in ports]
    procs = []
    for port, log in zip(ports, logs, strict=True):
        with open(log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [EPORT, "serve", "--dev", "--data-dir", str(data), "--port", str(port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
    try:
        for port, proc, log in zip(ports, procs, logs, strict=True):
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log.read_text(errors="replace")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"http://127.0.0.1:{port}/ca/v1/health", timeout=2).ok:
                        break
                assert time.monotonic() < deadline
                time.sleep(0.2)
        roots = {
            requests.get(f"http://127.0.0.1:{p}/ca/v1/ca", timeout=5).json()["root"] for p in ports
        }
        assert len(roots) == 1  # one CA, served by both
    finally:
        for proc in procs:
            stop(proc)


@pytest.mark.slow
def test_serve_names_an_init_killed_before_the_root_certificate(tmp_path: Path) -> None:
    """An init killed before it wrote ca/root.crt: `eport serve` said "no CA in DIR:
    make one with eport ca init", and that init then refused ("did not finish")."""
    data, out = tmp_path / "data", tmp_path / "ceremony"
    killed = _cut_short(
        ["ca", "init", "--data-dir", str(data), "--out", str(out)], data, signal.SIGKILL
    )
    assert killed.returncode == -signal.SIGKILL
    (data / "ca" / "root.crt").unlink()  # as if killed a moment earlier
    served = subprocess.run(
        [EPORT, "serve", "--data-dir", str(data), "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=custodian_env(),
        timeout=120,
    )
    line = _one_error_line(served)
    assert "cannot be used" in line and "did not finish" in line, line
    assert "make one with `eport ca init" not in line


def test_stops_unwind_turns_sigterm_and_sighup_into_an_exception_for_its_block() -> None:
    from ca.stopping import Stopped, how_it_ended, stops_unwind

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(Stopped) as caught, stops_unwind():
            os.kill(os.getpid(), sig)
            time.sleep(1)  # the handler runs at the next bytecode: never reached
        assert how_it_ended(caught.value) == f"was stopped by {sig.name}"
        assert isinstance(caught.value, KeyboardInterrupt)
    assert {s: signal.getsignal(s) for s in before} == before
    assert how_it_ended(KeyboardInterrupt()) == "was interrupted"
    assert how_it_ended(ValueError()) == "failed"
