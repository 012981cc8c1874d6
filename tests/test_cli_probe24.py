"""Defects found by probing the ``eport`` command (probe 24): a pipe that sends no
passphrase, a server that trickles its answer, another server's JSON, a closed standard
input, TLS trouble of the host name or the CA bundle, blanks in EPORT_SERVER, ``--json``
of backup and restore, and a wrong passphrase that did not say where it came from. Each
is driven through the real command (or, for timings, the client the commands use), with
small fake servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from ca.config import CAConfig
from ca.devinit import ensure_dev_ca
from cli import keyfiles, options
from cli.audit import AuditClient
from cli.client import CAClient, CLIError, NotTheAPI, fetch
from cli.session import post_form
from tests.conftest import EPORT_CMD, base_env, free_port
from tests.helpers import self_signed
from tests.test_cli_errors import one_line
from tests.test_cli_tls import _https, _show

USCC = "91350100M000100Y43"
CODE = "0AWT-8B9X-355M-QP7T-YBHB-Y1EN-EVK1-4Y77"
PASSPHRASE = "right-passphrase-1"

Answer = Callable[[str, str, socket.socket], None]
"""How a fake server answers a request: (method, path, connection)."""


@contextlib.contextmanager
def fake_server(answer: Answer) -> Iterator[str]:
    """A server on 127.0.0.1 (port 0), one thread per connection, that reads each
    request (its head and Content-Length body) and lets ``answer`` write the answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                (int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:")),
                0,
            )
            while len(body) < length:
                body += conn.recv(65536)
            method, path, _ = lines[0].split(" ", 2)
            answer(method, path, conn)

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        listener.close()


def json_answer(conn: socket.socket, doc: Any, status: str = "200 OK") -> None:
    body = json.dumps(doc).encode()
    conn.sendall(
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def trickle(conn: socket.socket, *, close: bool, every: float, give_up: float) -> None:
    """Headers of a 100,000-byte JSON answer, then one byte every ``every`` seconds; the
    connection is dropped after ``give_up`` seconds (a client that waits that long
    fails otherwise, so a test without the deadline ends)."""
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
    )
    end = time.monotonic() + give_up
    while time.monotonic() < end:
        conn.sendall(b" ")
        time.sleep(every)


def run(
    *args: str, stdin: Any = subprocess.DEVNULL, input: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """The real ``eport ARGS``, without the user's EPORT_* settings, with ``env``."""
    full = base_env()
    full.setdefault("EPORT_SERVER", f"http://127.0.0.1:{free_port()}")
    full.update(env)
    return subprocess.run(
        [*EPORT_CMD, *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=90,
        stdin=None if input is not None else stdin,
        input=input,
    )


@pytest.fixture
def credential(tmp_path: Path) -> list[str]:
    """--cert and --key of a self-signed certificate and its key, encrypted with
    :data:`PASSPHRASE`: what a command loads before it sends anything."""
    cert, key = self_signed("probe 24")
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        )
    )
    (tmp_path / "key.pem").chmod(0o600)  # as eport writes a key: a looser one is warned of
    return ["--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem")]


# -- 1. a pipe that sends no passphrase ------------------------------------------------------


@pytest.mark.slow
def test_a_pipe_that_sends_no_passphrase_is_waited_for_30_seconds(
    credential: list[str],
) -> None:
    """``(sleep 600) | eport cert list …`` waited silently for as long as the pipe stayed
    open. It says after two seconds what it waits for, and gives up after 30 with one
    line naming the other ways to give the passphrase."""
    full = base_env()
    full["EPORT_SERVER"] = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = subprocess.Popen(
        [*EPORT_CMD, "cert", "list", "--uscc", USCC, *credential],
        stdin=subprocess.PIPE,  # kept open, nothing written
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.wait(timeout=60)  # (communicate would close the pipe at once)
        took = time.monotonic() - start
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    assert 29 <= took < 45, took
    assert proc.returncode == 1 and out == ""
    assert err.splitlines() == [
        "eport: waiting up to 30 s for a line on standard input (not a terminal): "
        "Passphrase for the key key.pem",
        "eport: error: a passphrase is needed: use --passphrase-file, EPORT_PASSPHRASE, a "
        "terminal or a pipe (standard input, not a terminal, sent no line in 30 s "
        "(EPORT_PIPE_WAIT_SECONDS sets the wait))",
    ], err


def test_a_passphrase_waited_for_on_a_pipe(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """The wait on a pipe, shortened: a line sent in time is the passphrase (a second
    line is left for the next reader, as ``eport key passwd`` reads two), and a pipe that
    stays open with nothing is given up on, after saying once what is waited for."""
    monkeypatch.delenv("EPORT_PASSPHRASE", raising=False)
    monkeypatch.setattr(options, "PIPE_WAIT", 1.5)
    monkeypatch.setattr(options, "PIPE_NOTICE", 0.3)
    read, write = os.pipe()
    stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(read, "r")))
    monkeypatch.setattr(sys, "stdin", stdin)
    try:
        # a pipe that stays open after two lines
        os.write(write, b"first-passphrase\r\nsecond-passphrase\n")
        assert keyfiles.passphrase(None, new=False) == b"first-passphrase"
        assert keyfiles.passphrase(None, new=False) == b"second-passphrase"
        assert capsys.readouterr().err == ""
        # then nothing: the old reader waited until the pipe closed (here after 3 s)
        closer = threading.Timer(3, os.close, (write,))
        closer.start()
        start = time.monotonic()
        with pytest.raises(CLIError) as caught:
            keyfiles.passphrase(None, new=False, what="key k.pem")
        took = time.monotonic() - start
        closer.join()
    finally:
        stdin.close()
    assert str(caught.value) == (
        "a passphrase is needed: use --passphrase-file, EPORT_PASSPHRASE, a terminal or a "
        "pipe (standard input, not a terminal, sent no line in 1.5 s "
        "(EPORT_PIPE_WAIT_SECONDS sets the wait))"
    )
    assert 1.4 < took < 3, took
    assert capsys.readouterr().err == (
        "eport: waiting up to 1.5 s for a line on standard input (not a terminal): "
        "Passphrase for the key k.pem\n"
    )


def test_the_pipe_wait_is_a_setting(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """A password tool that asks its own passphrase first (``gpg -d pass.gpg | eport …``)
    may take longer than the wait (review probe 24): EPORT_PIPE_WAIT_SECONDS sets it, 0
    waits for as long as the pipe is open; a value that is no number is a usage error."""
    monkeypatch.delenv("EPORT_PASSPHRASE", raising=False)
    monkeypatch.setattr(options, "PIPE_NOTICE", 0.2)
    read, write = os.pipe()
    stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(read, "r")))
    monkeypatch.setattr(sys, "stdin", stdin)
    try:
        monkeypatch.setenv("EPORT_PIPE_WAIT_SECONDS", "0.5")
        start = time.monotonic()
        with pytest.raises(CLIError, match=r"sent no line in 0\.5 s"):
            keyfiles.passphrase(None, new=False, what="key k.pem")
        assert time.monotonic() - start < 2
        capsys.readouterr()
        monkeypatch.setenv("EPORT_PIPE_WAIT_SECONDS", "0")
        # the line comes after the default wait would have ended, shortened here to 1 s
        monkeypatch.setattr(options, "PIPE_WAIT", 1.0)
        later = threading.Timer(1.5, os.write, (write, b"slow-passphrase\n"))
        later.start()
        assert keyfiles.passphrase(None, new=False) == b"slow-passphrase"
        later.join()
        assert "waiting as long as it is open" in capsys.readouterr().err
        monkeypatch.setenv("EPORT_PIPE_WAIT_SECONDS", "soon")
        with pytest.raises(click.UsageError, match="EPORT_PIPE_WAIT_SECONDS"):
            keyfiles.passphrase(None, new=False)
    finally:
        stdin.close()
        os.close(write)


def test_a_passphrase_piped_promptly_still_opens_the_key(credential: list[str]) -> None:
    """The usual ``printf '%s\\n' "$PASS" | eport …``: the key opens and the command goes
    on to the server (none listens here), with no notice."""
    res = run("cert", "list", "--uscc", USCC, *credential, input=PASSPHRASE + "\n")
    line = one_line(res, 1, "cannot reach the e-port server")
    assert res.stderr.strip() == line


# -- 2. a server that trickles its answer ----------------------------------------------------


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
def test_an_answer_that_trickles_is_cut_off_at_the_deadline(close: bool) -> None:
    """A server that sends its headers, then a byte every half second, held every request
    (requests' timeout bounds each read, not the answer). Each client the commands use
    gives up at its deadline (here 2 s), as 'did not answer in time'; without the
    deadline the fake server drops the connection after 8 s."""

    def answer(method: str, path: str, conn: socket.socket) -> None:
        trickle(conn, close=close, every=0.5, give_up=8)

    with fake_server(answer) as url:
        calls: list[Callable[[], object]] = [
            lambda: CAClient(url, timeout=2).call("GET", "/ca/v1/applications/app_x"),
            lambda: AuditClient(url, None, timeout=2).json("/ca/v1/audit/checkpoint"),
            lambda: post_form(url, "/auth/token", {"grant_type": "x"}, timeout=2),
        ]
        for call in calls:
            start = time.monotonic()
            with pytest.raises(CLIError) as caught:
                call()
            assert str(caught.value) == f"the server at {url} did not answer in time"
            assert time.monotonic() - start < 3.5
        # an OCSP responder's, a CRL's or a checkpoint's URL (cert status, restore)
        start = time.monotonic()
        with pytest.raises(requests.ReadTimeout):
            fetch("GET", url + "/ocsp", timeout=2)
        assert time.monotonic() - start < 3.5


def test_a_slow_answer_that_comes_whole_in_time_is_read() -> None:
    """The deadline cuts off only what does not come: an answer sent in pieces (and one
    sent in chunks) within it is read whole."""

    def answer(method: str, path: str, conn: socket.socket) -> None:
        body = json.dumps({"state": "pending", "pad": "x" * 200_000}).encode()
        if path.endswith("chunked"):
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            for i in range(0, len(body), 70_000):
                piece = body[i : i + 70_000]
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(0.2)
            conn.sendall(b"0\r\n\r\n")
            return
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        for i in range(0, len(body), 70_000):
            conn.sendall(body[i : i + 70_000])
            time.sleep(0.2)

    with fake_server(answer) as url:
        client = CAClient(url, timeout=5)
        for path in ("/ca/v1/x", "/ca/v1/chunked"):
            doc = client.call("GET", path)
            assert doc["state"] == "pending" and len(doc["pad"]) == 200_000


@pytest.mark.slow
def test_an_enrollment_whose_answer_trickles_keeps_its_key(tmp_path: Path) -> None:
    """``eport enroll`` against a server that trickles the answer to the CSR: after the
    30 s deadline it says the answer was lost and keeps the new key, as the CA may have
    issued (the command run again gets the certificate)."""

    def answer(method: str, path: str, conn: socket.socket) -> None:
        if path == "/ca/v1/enroll/check":
            json_answer(conn, {"ok": True})
        else:
            trickle(conn, close=True, every=1, give_up=60)

    out = tmp_path / "ent"
    with fake_server(answer) as url:
        start = time.monotonic()
        res = run(
            "enroll", "--code", CODE, "--profile", "enterprise", "--out", str(out),
            EPORT_SERVER=url, EPORT_PASSPHRASE=PASSPHRASE,
        )  # fmt: skip
        took = time.monotonic() - start
    assert took < 45, took
    one_line(
        res,
        1,
        f"the server at {url} did not answer in time; the CA may have issued the "
        f"certificate before the answer was lost: the new key is kept in {out / 'key.pem'}",
    )
    assert (out / "key.pem").exists()


# -- 3. another server's JSON ----------------------------------------------------------------


def test_json_that_is_not_the_api_s_names_what_it_lacks(
    tmp_path: Path, credential: list[str]
) -> None:
    """A server answering ``{"hello": "world"}`` to everything: each command said
    ``unexpected error: KeyError('state')`` (or 'id', ...). The client's answers say,
    whatever member a command reads, that the server is not the e-port API."""

    def answer(method: str, path: str, conn: socket.socket) -> None:
        json_answer(conn, {"hello": {"world": 1}})

    with fake_server(answer) as url:
        hint = (
            "it is not the e-port API's (is EPORT_SERVER or --server the e-port server's base URL?)"
        )
        env = {"EPORT_SERVER": url, "EPORT_PASSPHRASE": PASSPHRASE, "HOME": str(tmp_path)}
        for args, member in [
            (["application", "show", "app_aaaaaaaaaaaaaaaa"], "state"),
            (["apply", "--uscc", USCC, "--name", "Foreign JSON Co."], "id"),
            (["cert", "list", "--uscc", USCC, *credential], "certificates"),
            (["login", *credential], "refresh_token"),  # the token service's form POST
        ]:
            one_line(
                run(*args, **env), 1, f"the answer of the server at {url} has no '{member}': {hint}"
            )
        # nested objects are the client's answers too
        doc = CAClient(url).call("GET", "/ca/v1/x")
        assert doc["hello"] == {"world": 1}
        with pytest.raises(NotTheAPI, match="has no 'state'"):
            doc["hello"]["state"]


# -- 4. standard input closed ----------------------------------------------------------------


def test_a_closed_standard_input_is_one_line(credential: list[str]) -> None:
    """``eport cert list … <&-``: 'unexpected error: AttributeError("'NoneType' object has
    no attribute 'isatty'")'. The passphrase is said to be needed, standard input closed."""
    full = base_env()
    full["EPORT_SERVER"] = f"http://127.0.0.1:{free_port()}"
    res = subprocess.run(
        [
            "sh",
            "-c",
            'exec "$@" <&-',
            "sh",
            *EPORT_CMD,
            "cert",
            "list",
            "--uscc",
            USCC,
            *credential,
        ],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )
    one_line(
        res,
        1,
        "a passphrase is needed: use --passphrase-file, EPORT_PASSPHRASE, a terminal or a "
        "pipe (standard input is closed)",
    )


def test_no_terminal_is_said_when_standard_input_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ceremony's fingerprint check asks a terminal: a closed standard input is none."""
    from cli.custody import _check_fingerprint

    monkeypatch.setattr(sys, "stdin", None)
    assert not options.stdin_is_terminal()
    with pytest.raises(CLIError, match="without a terminal to confirm"):
        _check_fingerprint("ab:cd", None)


# -- 5. TLS ----------------------------------------------------------------------------------


def test_tls_trouble_names_its_cause(tmp_path: Path) -> None:
    """A trusted certificate for another host name was 'not trusted here: give the CA in
    REQUESTS_CA_BUNDLE'; REQUESTS_CA_BUNDLE naming no file was 'unexpected error:
    OSError(...)', and naming a file that is not PEM 'an http:// server given as
    https://?'. Each is one line naming what is wrong."""
    missing = tmp_path / "none.pem"
    not_pem = tmp_path / "bundle.txt"
    not_pem.write_text("not a certificate\n")
    with _https(tmp_path) as (url, crt):  # a certificate for 127.0.0.1
        other = url.replace("127.0.0.1", "localhost")
        res = _show(other, REQUESTS_CA_BUNDLE=str(crt))
        assert res.returncode == 1 and res.stderr == (
            f"eport: error: the TLS certificate of {other} does not match its host name "
            "localhost: it was issued for another name; check EPORT_SERVER (or --server)\n"
        ), res.stderr
        res = _show(url, REQUESTS_CA_BUNDLE=str(missing))
        assert res.returncode == 1 and res.stderr == (
            f"eport: error: REQUESTS_CA_BUNDLE names {missing}, which does not exist: give "
            "there the PEM file of the CA that issued the server's TLS certificate, or "
            "unset REQUESTS_CA_BUNDLE\n"
        ), res.stderr
        res = _show(url, REQUESTS_CA_BUNDLE=str(not_pem))
        assert res.returncode == 1 and res.stderr == (
            f"eport: error: REQUESTS_CA_BUNDLE names {not_pem}, which holds no PEM "
            f"certificate: give there the CA that issued the TLS certificate of {url}, as PEM\n"
        ), res.stderr


# -- 6. EPORT_SERVER -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://127.0.0.1 :9200", "has a blank or a control character in it"),
        (" http://127.0.0.1:9200", "has a blank or a control character in it"),
        ("http://127.0.0.1:9200\t", "has a blank or a control character in it"),
        (
            "",
            "is empty; give the e-port server's base URL, e.g. http://127.0.0.1:8000 (or "
            "unset EPORT_SERVER for it)",
        ),
    ],
)
def test_a_server_url_with_a_blank_or_empty_is_a_usage_error(value: str, why: str) -> None:
    """A blank in EPORT_SERVER's host passed the check and failed later (exit 1), a leading
    one was dropped without a word, and an empty EPORT_SERVER went to the default server:
    each is a usage error (exit 2) before anything is sent, as --help says."""
    res = run("application", "show", "app_aaaaaaaaaaaaaaaa", EPORT_SERVER=value)
    line = one_line(res, 2, f"Invalid value for EPORT_SERVER: {value!r} {why}")
    if value:
        assert "unset" not in line
        res = run("--server", value, "application", "show", "app_aaaaaaaaaaaaaaaa")
        one_line(res, 2, f"Invalid value for --server: {value!r} {why}")
    helped = run("--help")
    assert "must not be empty" in " ".join(helped.stdout.split())


# -- 7. backup and restore --json ------------------------------------------------------------


def test_backup_and_restore_json_print_names_as_they_are(tmp_path: Path) -> None:
    """``eport backup --json`` and ``restore --json`` escaped every Chinese name
    (``\\u5907\\u4efd``) while every other command prints them as they are."""
    data = tmp_path / "数据"
    ensure_dev_ca(CAConfig(data_dir=data, dev=True))
    archive = tmp_path / "备份" / "eport.tar.gz"
    archive.parent.mkdir()
    env = {"PYTHONIOENCODING": "utf-8"}
    res = run("backup", "--data-dir", str(data), "--out", str(archive), "--json", **env)
    assert res.returncode == 0, res.stderr
    assert f'"archive": "{archive}"' in res.stdout
    assert json.loads(res.stdout)["archive"] == str(archive)
    target = tmp_path / "恢复"
    res = run("restore", "--from", str(archive), "--data-dir", str(target), "--json", **env)
    assert res.returncode == 0, res.stderr
    assert "恢复" in res.stdout and "\\u" not in res.stdout
    assert json.loads(res.stdout)["databases"]["ca"] == str(target / "eport.db")


# -- 8. where a wrong passphrase came from ---------------------------------------------------


def test_a_wrong_passphrase_names_where_it_came_from(tmp_path: Path, credential: list[str]) -> None:
    """'wrong passphrase or not a PEM private key' did not say which passphrase: a stale
    EPORT_PASSPHRASE, or a file of another key, looked like a damaged key. The source is
    named (the file, the option or variable that named it), never the passphrase."""
    wrong = "not-the-passphrase-7"
    file = tmp_path / "pw.txt"
    file.write_text(wrong + "\n")
    args = ["cert", "list", "--uscc", USCC, *credential]
    key = credential[-1]
    for res, source in [
        (run(*args, EPORT_PASSPHRASE=wrong), "EPORT_PASSPHRASE"),
        (run(*args, "--passphrase-file", str(file)), f"--passphrase-file {file}"),
        (run(*args, EPORT_PASSPHRASE_FILE=str(file)), f"EPORT_PASSPHRASE_FILE {file}"),
        # the file first, as it is read first
        (
            run(*args, EPORT_PASSPHRASE_FILE=str(file), EPORT_PASSPHRASE=PASSPHRASE),
            f"EPORT_PASSPHRASE_FILE {file}",
        ),
        (run(*args, input=wrong + "\n"), "standard input"),
    ]:
        line = one_line(
            res,
            1,
            f"cannot load key {key}: wrong passphrase (from {source}) or not a PEM private key",
        )
        assert wrong not in line
