"""The tests' way of running ``eport`` (a child of the CLI zygote, tests/zygote.py) gives
what the installed script gives: the same stdout, stderr and exit status for the same
command line, stdin, working directory and environment; it dies by the signal
that killed the command; SIGINT and SIGTERM reach the command; and killing the launcher
(as a test's timeout does) kills the command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import EPORT, EPORT_CMD, REPO, ZYGOTE_SOCKET, base_env, free_port
from tests.test_introspection_mtls import proxy_certificate

pytestmark = pytest.mark.skipif(EPORT_CMD == [EPORT], reason="EPORT_TEST_EXEC=1")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = base_env()
    env.update(HOME=str(tmp_path), EPORT_SERVER=f"http://127.0.0.1:{free_port()}")
    env.update(extra)
    return env


def _credential(d: Path) -> None:
    """A certificate (``proxy.crt``) and its key (``key.pem``), encrypted under another
    passphrase than the one on stdin."""
    _, plain = proxy_certificate(d)
    key = serialization.load_pem_private_key(plain.read_bytes(), None)
    encryption = serialization.BestAvailableEncryption(b"not what stdin says")
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


def _both(
    args: list[str], tmp_path: Path, stdin: str = "", **extra: str
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    env = _env(tmp_path, **extra)
    run = [
        subprocess.run(
            [*cmd, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        for cmd in (EPORT_CMD, [EPORT])
    ]
    return run[0], run[1]


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["cert", "--help"],
        ["apply", "--uscc", "91350100M000100Y44", "--name", "Check Character Co"],
        ["apply", "--uscc", "91350100M000100Y43"],  # no --name: usage error, exit 2
        ["no-such-command"],
        ["cert", "show", "relative.pem"],  # read from the working directory
        ["cert", "show", "-"],  # read from stdin
        ["application", "show", "app_aaaaaaaaaaaaaaaa", "--json"],  # a server nobody listens on
        # the key's passphrase prompted for, read from stdin (a wrong one)
        ["renew", "--cert", "proxy.crt", "--key", "key.pem", "--out", "renewed"],
    ],
)
def test_the_same_output_and_status_as_the_installed_script(
    tmp_path: Path, args: list[str]
) -> None:
    (tmp_path / "relative.pem").write_text("not a certificate\n")
    _credential(tmp_path)
    forked, real = _both(args, tmp_path, stdin="garbage on stdin\n")
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        real.returncode,
        real.stdout,
        real.stderr,
    )
    assert real.returncode != 0 or real.stdout  # each case says something


def _hanging(tmp_path: Path, silent: socket.socket) -> subprocess.Popen[str]:
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    return subprocess.Popen(
        [*EPORT_CMD, "application", "show", "app_aaaaaaaaaaaaaaaa", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_env(tmp_path, EPORT_SERVER=url),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler) and None,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signals_reach_the_command(tmp_path: Path, signum: signal.Signals) -> None:
    """While the command waits on a server that never answers: SIGINT is 'Aborted.' and
    exit 130 (the CLI's own handling, 128 + SIGINT as a shell reports it); SIGTERM kills
    it, and the launcher dies by SIGTERM too; SIGKILL of the launcher kills the command
    (its connection closes)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(60)
        proc = _hanging(tmp_path, silent)
        try:
            conn, _ = silent.accept()  # the request has been sent
        except TimeoutError:
            proc.kill()
            raise
        with conn:
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=30)
            conn.settimeout(30)
            assert conn.recv(65536, socket.MSG_PEEK) is not None
            while conn.recv(65536):  # EOF: the command is gone
                pass
    if signum == signal.SIGINT:
        assert proc.returncode == 130 and out == "", (out, err)
        assert err.strip().splitlines()[-1] == "Aborted." and "Traceback" not in err, err
    else:
        assert proc.returncode == -signum, (proc.returncode, err)


def test_the_runs_are_forked_by_the_zygote(tmp_path: Path) -> None:
    """The zygote is up and answers the launcher's protocol (were it not, every run would
    fall back to the installed script: the same results, only slower, and unnoticed)."""
    read_out, write_out = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(ZYGOTE_SOCKET)
        request = {
            "argv": [EPORT, "--version"],
            "env": _env(tmp_path),
            "cwd": str(tmp_path),
            "umask": 0o022,
            "sigint_ignored": False,
        }
        with open(os.devnull, "rb") as devnull:
            fds = [devnull.fileno(), write_out, write_out]
            socket.send_fds(sock, [json.dumps(request).encode()], fds)
        os.close(write_out)
        reply = sock.recv(64).decode()
        assert reply.startswith("pid "), reply
        status = sock.recv(64).decode()
    with os.fdopen(read_out, "rb") as out:
        printed = out.read().decode()
    assert status == "exit 0", (status, printed)
    real = subprocess.run([EPORT, "--version"], capture_output=True, text=True, timeout=60)
    assert printed == real.stdout + real.stderr and real.returncode == 0


def test_the_zygote_ends_with_the_test_process(tmp_path: Path) -> None:
    """A test process killed by SIGKILL runs no teardown: its zygote sees its stdin pipe
    close and ends (removing its socket) rather than linger."""
    path = tmp_path / "z.sock"
    zygote = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "zygote.py"), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert zygote.poll() is None and time.monotonic() < deadline, "no zygote"
            time.sleep(0.02)
        assert zygote.stdin is not None
        zygote.stdin.close()  # as the kernel does for a killed test process
        assert zygote.wait(timeout=10) == 0
        assert not path.exists()
    finally:
        if zygote.poll() is None:
            zygote.kill()
            zygote.wait()
