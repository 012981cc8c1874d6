"""The ``eport`` command where a script author or a careless person meets it: every
failure is one line on stderr with no traceback, a non-zero exit (2 for a mistyped
command line), nothing on stdout, and nothing changed on the server."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import EPORT, EPORT_CMD, Server, base_env, free_port, stop
from tests.helpers import enroll_enterprise, fresh_uscc, serial_of
from tests.test_enrollment_flow import counts, jrun
from tests.test_pkcs11 import HSM, hsm  # noqa: F401  (a fixture)


def one_line(res: subprocess.CompletedProcess[str], code: int, expect: str) -> str:
    """``res`` failed with ``code`` in one ``eport: error:`` line holding ``expect``."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert res.stdout == "", res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eport: error: "), res.stderr
    assert expect in lines[0], lines[0]
    assert "Traceback" not in res.stderr and "unexpected error" not in res.stderr
    return lines[0]


def approved_code(server: Server, name: str) -> str:
    app = jrun(server, "apply", "--uscc", fresh_uscc(), "--name", name)
    grant = jrun(server, "ra", "approve", app["id"], *server.officer())
    return str(grant["enrollment_code"])


def test_an_out_that_cannot_be_written_spends_no_code(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """An enrollment or renewal whose --out cannot be written is refused before the CA
    issues anything: the code stays good and the current certificate is still the only
    one, rather than a certificate issued for a key that was then lost."""
    server = sqlite_server
    code = approved_code(server, "Unwritable Out Co.")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    before = counts(server)
    for out in (blocker / "sub", blocker / "sub" / "deeper"):
        args = ["--code", code, "--profile", "enterprise", "--out", str(out), "--json"]
        one_line(server.eport("enroll", *args, check=False), 1, f"cannot write {out}/key.pem")
    assert counts(server) == before
    # A refusal by the CA leaves no key file or directory behind either.
    refused = tmp_path / "new" / "dir"
    res = server.eport(
        "enroll", "--code", code, "--profile", "operator", "--out", str(refused), check=False
    )
    one_line(res, 1, "not 'operator'")
    assert not (tmp_path / "new").exists()
    # The code is still good.
    ok = tmp_path / "ok"
    jrun(server, "enroll", "--code", code, "--profile", "enterprise", "--out", str(ok))
    assert (ok / "key.pem").exists() and (ok / "cert.pem").exists()

    before = counts(server)
    res = server.eport(
        "renew",
        "--cert",
        str(ok / "cert.pem"),
        "--key",
        str(ok / "key.pem"),
        "--out",
        str(blocker / "renewed"),
        check=False,
    )
    one_line(res, 1, f"cannot write {blocker / 'renewed'}/key.pem")
    assert counts(server) == before
    renewed = jrun(server, "renew", "--cert", str(ok / "cert.pem"), "--key", str(ok / "key.pem"))
    assert renewed["previous_serial"] == serial_of(ok)


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m http.server``: a web server that is not the e-port server (HTML pages,
    404 for every API path, 501 for a POST)."""
    root = tmp_path_factory.mktemp("www")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def the_three(server: Server) -> list[list[str]]:
    """A GET of the CA API, a POST to the token service, a signed read of the audit API."""
    return [
        ["application", "show", "app_aaaaaaaaaaaaaaaa", "--json"],
        ["login", *server.officer(), "--json"],
        ["audit", "verify", *server.auditor(), "--json"],
    ]


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("127.0.0.1:8000", "is not an http:// or https:// URL"),
        ("localhost", "is not an http:// or https:// URL"),
        ("ftp://127.0.0.1:8000", "is not an http:// or https:// URL"),
        ("http://127.0.0.1:99999", "is not a URL"),
        ("http://[::1", "is not a URL"),
        ("http://", "names no host"),
    ],
)
def test_a_server_url_that_is_not_one_is_a_usage_error(
    sqlite_server: Server, url: str, expect: str
) -> None:
    """EPORT_SERVER or --server without a scheme (the usual slip) or with a broken port
    was an 'unexpected error: MissingSchema(...)'; it is a usage error in the name the
    value came from, before anything is read or sent."""
    for args in the_three(sqlite_server):
        line = one_line(sqlite_server.eport(*args, check=False, EPORT_SERVER=url), 2, expect)
        assert line.startswith("eport: error: Invalid value for EPORT_SERVER: ")
        line = one_line(sqlite_server.eport("--server", url, *args, check=False), 2, expect)
        assert line.startswith("eport: error: Invalid value for --server: ")


def test_a_malformed_server_url_stops_only_what_uses_it(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """EPORT_SERVER was checked before any command ran: a malformed one (in an
    environment file a systemd unit shares) stopped eport serve, every --help and the
    commands that contact no server (CLI probe, session 27). It stops what uses it."""
    from cli.main import _utc

    ent = enroll_enterprise(sqlite_server, tmp_path, "Local Only Co.")
    bad = {"EPORT_SERVER": "127.0.0.1:8000"}
    helped = sqlite_server.eport("ra", "list", "--help", **bad)
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: eport ra list")
    shown = sqlite_server.eport("cert", "show", str(ent / "cert.pem"), **bad)
    assert shown.returncode == 0 and "Subject:" in shown.stdout
    used = sqlite_server.eport("ra", "list", *sqlite_server.officer(), check=False, **bad)
    one_line(used, 2, "Invalid value for EPORT_SERVER")
    # and an invalidity date of the year 1 is written as ISO 8601 reads it
    assert _utc(datetime.datetime(1, 1, 2, tzinfo=datetime.UTC)) == "0001-01-02T00:00:00Z"


def test_a_server_that_is_not_the_e_port_server(sqlite_server: Server, web_server: str) -> None:
    """Every way EPORT_SERVER can point at the wrong place is one line naming it: the
    body of a web server's error page was printed as the error (many lines of HTML), and
    the token service's and audit client's answers that were not JSON were a KeyError or
    a JSONDecodeError."""
    server = sqlite_server
    host, port = server.url.removeprefix("http://").split(":")
    closed = f"http://127.0.0.1:{free_port()}"
    cases = [
        (closed, "cannot reach the e-port server at " + closed),
        (f"https://{host}:{port}", "cannot make a TLS connection"),
        ("http://no-such-host.invalid", "cannot find the host of http://no-such-host.invalid"),
        (server.url + "/some/path", "has no /some/path/"),
        (
            web_server,
            "with text/html, not the e-port API's JSON (is EPORT_SERVER",
        ),
    ]
    for url, expect in cases:
        for args in the_three(server):
            one_line(server.eport(*args, check=False, EPORT_SERVER=url), 1, expect)


def test_passphrases_from_files_and_the_environment(sqlite_server: Server, tmp_path: Path) -> None:
    """An empty --passphrase-file is said as such (it read as 'wrong passphrase'); a
    passphrase that is not UTF-8, in EPORT_PASSPHRASE or a file, is used as the bytes it
    is (it was 'unexpected error: UnicodeEncodeError/UnicodeDecodeError')."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Passphrase Bytes Co.")
    creds_ = ["--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    res = server.eport("login", *creds_, "--passphrase-file", str(empty), check=False)
    one_line(res, 1, f"the passphrase file {empty} is empty")
    missing = tmp_path / "missing.txt"
    res = server.eport("login", *creds_, "--passphrase-file", str(missing), check=False)
    one_line(res, 1, f"cannot read passphrase file {missing}: No such file or directory")
    res = server.eport("login", *creds_, check=False, EPORT_PASSPHRASE="not-the-passphrase")
    one_line(res, 1, "wrong passphrase")

    latin1 = "pässwörd-123".encode("latin-1")  # not UTF-8
    code = approved_code(server, "Latin-1 Passphrase Co.")
    out = tmp_path / "latin1"
    as_env = latin1.decode("utf-8", "surrogateescape")  # how the OS hands such bytes on
    args = ["--code", code, "--profile", "enterprise", "--out", str(out)]
    jrun(server, "enroll", *args, EPORT_PASSPHRASE=as_env)
    pw_file = tmp_path / "latin1.txt"
    pw_file.write_bytes(latin1 + b"\n")
    login = ["login", "--cert", str(out / "cert.pem"), "--key", str(out / "key.pem")]
    assert jrun(server, *login, "--passphrase-file", str(pw_file))["session"]["name"]
    assert jrun(server, *login, EPORT_PASSPHRASE=as_env)["session"]["name"]


def default_sigint() -> None:
    """In a child about to exec the command: SIGINT as a shell leaves it for a command at
    a terminal. When the tests run where SIGINT is ignored (a non-interactive shell's
    background job), the command would inherit the ignored SIGINT through exec and never
    see the Ctrl-C these tests type or send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def at_terminal(
    args: list[str],
    env: dict[str, str],
    *,
    ctrl_c_after: bytes | None = None,
    typed: Sequence[tuple[bytes, bytes]] = (),
) -> tuple[str, int]:
    """Run ``eport ARGS`` at a pseudo-terminal (stdin, stdout and stderr): what it wrote
    and its exit code; each ``(prompt, line)`` of ``typed`` types ``line`` (and Enter)
    once ``prompt`` shows after the last one; with ``ctrl_c_after``, Ctrl-C is typed once
    that text shows."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: eport at a terminal
        default_sigint()
        os.execve(EPORT, [EPORT, *args], env)
    seen = b""

    def read_until(what: bytes | None, timeout: float = 60, start: int = 0) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while (what is None or what not in seen[start:]) and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child is gone
                    return
                if not chunk:
                    return
                seen += chunk

    try:
        shown = 0  # each prompt is looked for in what came after the last one
        for prompt, line in typed:
            read_until(prompt, start=shown)
            assert prompt in seen[shown:], seen
            shown = len(seen)
            os.write(fd, line + b"\r")
        if ctrl_c_after is not None:
            read_until(ctrl_c_after)
            assert ctrl_c_after in seen, seen
            os.write(fd, b"\x03")
        read_until(None)
        deadline = time.monotonic() + 30
        done, status = os.waitpid(pid, os.WNOHANG)
        while done == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:  # hung (it ignored the Ctrl-C): fail, not wait for ever
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return seen.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def test_ctrl_c_at_the_passphrase_prompt_aborts(sqlite_server: Server, tmp_path: Path) -> None:
    """Ctrl-C at a terminal's passphrase prompt stops the command ('Aborted.', exit 130,
    as a shell reports SIGINT; it was 1, a failure's); it said 'a passphrase is needed:
    use --passphrase-file, ...' as if none could be typed."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Ctrl-C Co.")
    env = server.env()
    del env["EPORT_PASSPHRASE"]
    args = ["login", "--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    text, code = at_terminal(args, env, ctrl_c_after=b"Passphrase for the key")
    assert code == 130, text
    assert "Aborted." in text and "passphrase is needed" not in text, text
    assert "Traceback" not in text


def test_a_short_passphrase_typed_at_the_terminal_is_asked_again(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """A new key's passphrase under 8 characters, typed twice at the prompt, ended eport
    enroll ("the passphrase must have at least 8 characters"), to be run again from the
    start; at a terminal it is asked again, and the enrollment goes on."""
    server = sqlite_server
    code = approved_code(server, "Short Passphrase Co.")
    env = server.env()
    del env["EPORT_PASSPHRASE"]
    out = tmp_path / "ent"
    args = ["enroll", "--code", code, "--profile", "enterprise", "--out", str(out)]
    first, again = b"Passphrase for the new key", b"Repeat for confirmation"
    typed = [(first, b"short"), (again, b"short")]
    typed += [(first, b"long enough 1"), (again, b"long enough 1")]
    text, code_ = at_terminal(args, env, typed=typed)
    assert code_ == 0, text
    assert "at least 8 characters; type another" in text and "Issued enterprise" in text, text
    login = ["login", "--cert", str(out / "cert.pem"), "--key", str(out / "key.pem")]
    assert jrun(server, *login, EPORT_PASSPHRASE="long enough 1")["session"]["name"]


def test_no_color(sqlite_server: Server, tmp_path: Path) -> None:
    """NO_COLOR (https://no-color.org) turns the coloured warnings off at a terminal too;
    click, which colours them, does not read it."""
    server = sqlite_server
    args = ["backup", "--data-dir", str(server.data_dir), "--include-dev", "--out"]
    text, code = at_terminal([*args, str(tmp_path / "a.tgz")], server.env())
    assert code == 0 and "WARNING: this archive holds" in text and "\x1b[" in text, text
    text, code = at_terminal([*args, str(tmp_path / "b.tgz")], server.env(NO_COLOR="1"))
    assert code == 0 and "WARNING: this archive holds" in text and "\x1b[" not in text, text


@pytest.mark.parametrize(
    "args",
    [
        ["application", "show", "app_x/../../auth/v1/roles"],
        ["ra", "approve", "a/b"],
        ["ra", "new-code", "x?y"],
        ["ra", "reject", "../x", "--reason", "r"],
        ["ra", "withdraw", "app_\udcff", "--reason", "r"],
        ["revoke", "--serial", "../x", "--reason", "superseded"],
        ["suspend", "--serial", "7e23:f4"],
        ["resume", "--serial", "\udcff"],
        ["ca", "ceremony", "status", "cer-1/../../../ra/applications"],
        ["ca", "ceremony", "status", "cer-1?x=y"],
    ],
)
def test_ids_that_would_change_the_url_are_usage_errors(
    sqlite_server: Server, args: list[str]
) -> None:
    """An application id, a serial or a ceremony id goes into the request's path: one with '/', '?',
    '..' or bytes that are not UTF-8 addressed another path than the one named (the
    server's 404 for a route, or 'unexpected error: UnicodeEncodeError'). It is a usage
    error in the argument's name, and nothing is sent."""
    server = sqlite_server
    before = counts(server)
    creds_ = [] if args[0] in ("application", "ca") else server.officer()
    line = one_line(server.eport(*args, *creds_, check=False), 2, "Invalid value for ")
    assert any(
        f"is not {what}" in line
        for what in ("an application id", "a serial in hexadecimal", "a ceremony id")
    ), line
    assert counts(server) == before


def test_a_backup_out_that_cannot_be_written(sqlite_server: Server, tmp_path: Path) -> None:
    """eport backup into a directory that cannot be made (under a file, or on /proc) was
    'unexpected error: FileNotFoundError(2, ...)', naming no path; it is one line naming
    --out."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    for out in (blocker / "b.tgz", blocker / "sub" / "b.tgz", Path("/proc/eport-b.tgz")):
        args = ["backup", "--data-dir", str(sqlite_server.data_dir), "--out", str(out), "--json"]
        one_line(sqlite_server.eport(*args, check=False), 1, f"cannot write {out}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_text_that_is_not_utf8(sqlite_server: Server, tmp_path: Path) -> None:
    """Bytes that are not UTF-8 in an argument bound for a query string, or a --log-key
    file that is not text, were 'unexpected error: UnicodeEncodeError/UnicodeDecodeError';
    each is one line (a usage error for the argument), and nothing is sent."""
    server = sqlite_server
    before = counts(server)
    for option in ("--uscc", "--subject"):
        res = server.eport("audit", "log", *server.auditor(), option, "\udcff", check=False)
        one_line(res, 2, "is not UTF-8 text (it has the byte 0xff)")
    binary = tmp_path / "log.pub"
    binary.write_bytes(b"\xff\xfe\x00not a key")
    res = server.eport(
        "audit", "verify", *server.auditor(), "--log-key", str(binary), "--json", check=False
    )
    one_line(res, 1, f"--log-key {binary}: the file is not text")
    assert counts(server) == before


def _commands(cmd: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(click.Context(cmd)):
            sub = cmd.get_command(click.Context(cmd), name)
            assert sub is not None
            yield from _commands(sub, [*path, name])


def test_help_names_only_commands_and_options_that_exist() -> None:
    """Every command's --help says what it does, and every `eport ...` it shows (an
    example, a next step) names a command that exists with options that command takes:
    no stale references after an option or command is renamed."""
    from cli.main import cli

    root_options = {o for p in cli.params for o in p.opts}
    shown = re.compile(r"(?:^|[\s`(])eport ([a-z][a-z-]*(?: [^`)]*)?)")
    for path, cmd in _commands(cli, []):
        text = cmd.get_help(click.Context(cmd, info_name="eport"))
        assert (cmd.help or "").strip(), f"eport {' '.join(path)} has no help"
        for line in text.splitlines():
            for m in shown.finditer(line):
                words, target, used = m.group(1).split(), cli, 0
                while (
                    isinstance(target, click.Group)
                    and used < len(words)
                    and re.fullmatch(r"[a-z][a-z-]*", words[used])
                ):
                    sub = target.get_command(click.Context(target), words[used])
                    assert sub is not None, f"eport {' '.join(path)} --help: {line.strip()}"
                    target, used = sub, used + 1
                options = {o for p in target.params for o in p.opts} | root_options
                for w in words[used:]:
                    opt = w.strip(",.;").split("=")[0]
                    if re.fullmatch(r"--[a-z][a-z0-9-]*", opt):
                        assert opt in options, f"eport {' '.join(path)} --help: {line.strip()}"


def test_commands_load_only_the_modules_they_need() -> None:
    """The audit, backup and custody commands live in modules that ``eport apply`` and
    the like no longer import (about 8% of importing cli.main): they load when one
    of their commands is run or listed, under the name that command gives itself."""
    probe = """
import json, sys, click
from cli.main import cli
heavy = ("cli.audit", "cli.backup", "cli.custody")
before = [m for m in heavy if m in sys.modules]
ca = cli.commands["ca"]
lazy = [(g, n) for g in (cli, ca) for n in sorted(g.lazy)]
names = {f"{g.name} {n}": g.get_command(click.Context(g), n).name for g, n in lazy}
print(json.dumps({"before": before, "after": [m for m in heavy if m in sys.modules],
                  "names": names}))
"""
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["before"] == [] and out["after"] == ["cli.audit", "cli.backup", "cli.custody"]
    for where, name in out["names"].items():
        assert where.split()[-1] == name, out["names"]
    assert {"cli audit", "cli backup", "cli restore", "ca init", "ca ceremony"} <= set(out["names"])


def test_every_command_shows_an_example() -> None:
    """Every command's --help shows how it is run: an example line (indented, as click
    keeps a \\b block) that runs that very command. Half of them had none (eport
    enroll, renew, the ra commands, roles grant, cert list, audit log, backup, ...),
    and a new user had to assemble the options from their list."""
    from cli.main import cli

    missing = []
    for path, cmd in _commands(cli, []):
        if isinstance(cmd, click.Group):
            continue
        text = cmd.get_help(click.Context(cmd, info_name="eport"))
        name = " ".join(["eport", *path])
        example = re.compile(rf"^ {{4,}}.*(?<![\w-]){re.escape(name)}(?= |\)|$)")
        if not any(example.match(line) for line in text.splitlines()[1:]):
            missing.append(name)
    assert missing == [], missing


def test_every_environment_variable_the_cli_reads_is_in_its_help() -> None:
    """Each EPORT_* variable the eport command reads from the environment is named in the
    --help of a command that uses it. EPORT_CONFIG_DIR (where eport login keeps the
    session) was named nowhere but in an error message: not in any help, the README or
    docs/."""
    from cli.main import cli

    cli_dir = Path(__file__).resolve().parent.parent / "cli"
    read = re.compile(
        r"""(?:environ(?:\.get)?[\[(]|envvar=|getenv\()"(EPORT_[A-Z0-9_]+)"|"""
        r""""(EPORT_[A-Z0-9_]+)" (?:not )?in os\.environ"""
    )
    names = {a or b for f in cli_dir.glob("*.py") for a, b in read.findall(f.read_text())}
    assert "EPORT_SERVER" in names and "EPORT_CONFIG_DIR" in names  # the scan finds them
    helps = "\n".join(
        cmd.get_help(click.Context(cmd, info_name="eport")) for _, cmd in _commands(cli, [])
    )
    assert sorted(n for n in names if n not in helps) == []


def _sessions(server: Server) -> int:
    engine = create_engine(f"sqlite:///{server.data_dir / 'auth.db'}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM auth_sessions")).scalar_one())
    finally:
        engine.dispose()


def test_a_session_that_cannot_be_saved_is_not_opened(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """eport login with a config directory it cannot write opened a session on the server
    and then failed with 'unexpected error: FileNotFoundError', its refresh token lost;
    eport token rotated the refresh token it then could not keep. Both now say so in one
    line, naming the file and EPORT_CONFIG_DIR, before the request."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Session File Co.")
    login = ["login", "--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    before = _sessions(server)
    for where in (blocker, blocker / "eport", Path("/proc/eport-config")):
        res = server.eport(*login, "--json", check=False, EPORT_CONFIG_DIR=str(where))
        line = one_line(res, 1, f"cannot save the session in {where}/session-")
        assert "EPORT_CONFIG_DIR" in line
    assert _sessions(server) == before

    config = tmp_path / "config"
    jrun(server, *login, EPORT_CONFIG_DIR=str(config))
    saved = next(config.iterdir())
    config.chmod(0o500)  # the session file can be read, not replaced
    try:
        if not os.access(config, os.W_OK):  # root writes anyway: nothing to refuse
            res = server.eport(
                "token",
                "--service",
                "customs-declaration",
                check=False,
                EPORT_CONFIG_DIR=str(config),
            )
            one_line(res, 1, f"cannot save the session in {saved}")
    finally:
        config.chmod(0o700)
    # The refresh token was not spent: the session still gives tokens.
    assert jrun(server, "token", "--service", "customs-declaration", EPORT_CONFIG_DIR=str(config))


def test_serve_says_why_it_cannot_start(sqlite_server: Server, tmp_path: Path) -> None:
    """eport serve on a port in use printed 'Serving the joint CA on ...', then a page of
    gunicorn's bind retries; on a data directory it cannot make, 'unexpected error:
    FileNotFoundError'. Each is one line, before any development CA is made."""
    port = sqlite_server.url.rsplit(":", 1)[1]
    data = tmp_path / "data"
    cases = [
        (["--data-dir", str(data), "--port", port], f"port {port} on 127.0.0.1 is in use"),
        (
            ["--data-dir", "/proc/eport-data", "--port", str(free_port())],
            "cannot use the data directory /proc/eport-data",
        ),
    ]
    for args, expect in cases:
        res = subprocess.run(
            [EPORT, "serve", "--dev", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=sqlite_server.env(),
            stdin=subprocess.DEVNULL,
        )
        one_line(res, 1, expect)
    assert not data.exists()


def test_state_and_restore_directories_that_cannot_be_written(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """eport audit verify with a state file it cannot write, and eport restore into a data
    directory it cannot make, were 'unexpected error: FileNotFoundError/NotADirectoryError';
    each is one line naming the path (and, for the state, how to choose another)."""
    server = sqlite_server
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    # (a state under a file is already refused when it is read)
    for state in (Path("/proc/eport-state.json"), blocker / "s.json"):
        res = server.eport(
            "audit", "verify", *server.auditor(), "--state", str(state), "--json", check=False
        )
        assert res.returncode == 1 and res.stdout == "", res.stderr
        last = res.stderr.strip().splitlines()[-1]  # after the trust-on-first-use notice
        assert last.startswith("eport: error: ") and str(state) in last, res.stderr
        assert "--state or EPORT_AUDIT_STATE" in last or "cannot read" in last, last
    archive = tmp_path / "b.tgz"
    jrun(server, "backup", "--data-dir", str(server.data_dir), "--out", str(archive))
    for target in (Path("/proc/eport-restore"), blocker / "data"):
        res = server.eport(
            "restore", "--from", str(archive), "--data-dir", str(target), check=False
        )
        one_line(res, 1, f"cannot restore into {target}: ")


def test_ctrl_c_during_a_request(tmp_path: Path) -> None:
    """SIGINT while waiting on a server that does not answer: 'Aborted.' and exit 130 at
    once (128 + SIGINT, as a shell reports it), no traceback, nothing on stdout."""
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(60)  # an eport that never connects fails the test, never hangs it
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen(
            [EPORT, "application", "show", "app_aaaaaaaaaaaaaaaa", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "EPORT_SERVER": url, "HOME": str(tmp_path)},
            preexec_fn=default_sigint,
        )
        try:
            conn, _ = silent.accept()  # the request has been sent
        except TimeoutError:
            proc.kill()
            raise
        try:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            conn.close()
    assert proc.returncode == 130 and out == "", (out, err)
    assert err.strip().splitlines()[-1] == "Aborted." and "Traceback" not in err, err


def test_a_token_enrollment_into_an_out_that_cannot_be_made(
    sqlite_server: Server,
    hsm: HSM,  # noqa: F811  (the fixture imported from test_pkcs11)
    tmp_path: Path,
) -> None:
    """eport enroll --pkcs11-uri made --out only after the CA had issued: an --out that
    could not be made left a certificate issued, the code used and a key in the token with
    no key.uri naming it. It is now one line before a key is made or the code spent."""
    server = sqlite_server
    code = approved_code(server, "Token Out Co.")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    before = counts(server)
    out = blocker / "ent"
    args = ["--code", code, "--profile", "enterprise", "--pkcs11-uri", hsm.ent_uri]
    res = server.eport("enroll", *args, "--out", str(out), check=False, **hsm.env())
    one_line(res, 1, f"cannot write {out}/key.uri")
    assert counts(server) == before
    ok = tmp_path / "ok"
    jrun(server, "enroll", *args, "--out", str(ok), **hsm.env())
    assert (ok / "key.uri").exists()


def test_rotate_keys_names_the_data_directory(tmp_path: Path) -> None:
    """eport auth rotate-keys run where no data directory is (the default 'var' from the
    wrong directory) blamed EPORT_DATABASE_URL; with --dev on a directory without dev/ it
    was 'unexpected error: FileNotFoundError'. Each is one line naming the directory, and
    no database is made there."""
    env = base_env()
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([], "no data directory var: give the one eport serve uses"),
        (["--data-dir", str(tmp_path / "none")], f"no data directory {tmp_path / 'none'}"),
        (["--data-dir", str(empty), "--dev"], f"--dev reads the key passphrase from {empty}"),
    ]
    for args, expect in cases:
        res = subprocess.run(
            [EPORT, "auth", "rotate-keys", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
        )
        one_line(res, 1, expect)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert list(empty.iterdir()) == []
    # A development data directory without --dev: said, with the flag to add.
    dev = tmp_path / "devdata"
    (dev / "dev").mkdir(parents=True)
    (dev / "dev" / "DEV-ONLY-passphrases.toml").write_text('auth_key_passphrase = "x"\n')
    res = subprocess.run(
        [EPORT, "auth", "rotate-keys", "--data-dir", str(dev)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    one_line(res, 1, f"EPORT_AUTH_KEY_PASSPHRASE to encrypt its keys ({dev} is a development")


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (
            ["application", "show", "app_aaaaaaaaaaaaaaaa", "--server", "http://127.0.0.1:8000"],
            "(an option of eport itself: eport --server URL application show ...)",
        ),
        (["ra", "list", "--verbose"], "(an option of eport itself: eport --verbose ra list ...)"),
    ],
)
def test_eport_options_after_the_command(args: list[str], expect: str) -> None:
    """--server or --verbose written after the command (as a script author adds it at the
    end) was only 'No such option'; the line now says where it goes. Exit 2, no request."""
    res = subprocess.run(
        [EPORT, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    line = one_line(res, 2, "No such option")
    assert line.endswith(expect), line


def test_ca_init_without_a_terminal_names_the_option_it_needs(tmp_path: Path) -> None:
    """eport ca init with no terminal and no officer passphrase told the user to use
    '--officer-keys-file', an option that does not exist; it names
    --officer-passphrase-file (and EPORT_OFFICER_PASSPHRASE), and nothing is made."""
    env = base_env()
    for member in ("customs", "commerce", "tax", "forex", "inspection"):
        env[f"EPORT_CUSTODIAN_PASSPHRASE_{member.upper()}"] = f"passphrase of {member} 123"
    data, out = tmp_path / "data", tmp_path / "ceremony"
    res = subprocess.run(
        [EPORT, "ca", "init", "--data-dir", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    one_line(res, 1, "--officer-passphrase-file FILE or EPORT_OFFICER_PASSPHRASE")
    helped = subprocess.run([EPORT, "ca", "init", "--help"], capture_output=True, text=True)
    assert "--officer-passphrase-file" in helped.stdout
    assert not data.exists() and not out.exists()


def _offline_env() -> dict[str, str]:
    """No EPORT_* settings, and EPORT_SERVER at a port nobody listens on: a command that
    sent anything would fail with 'cannot reach', not with the usage error expected."""
    env = base_env()
    env["EPORT_SERVER"] = f"http://127.0.0.1:{free_port()}"
    return env


def offline(*args: str, cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    """``eport ARGS`` with :func:`_offline_env` (plus ``extra``), nothing on stdin."""
    return subprocess.run(
        [*EPORT_CMD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_offline_env(), **extra},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def test_serve_with_a_config_file_it_cannot_read(tmp_path: Path) -> None:
    """eport serve with EPORT_CONFIG naming a missing file, or one that is not TOML, was
    'unexpected error: FileNotFoundError(2, ...)' (no file named) or 'TOMLDecodeError(...)',
    after it had made the data directory. One line names the file; nothing is made."""
    data = tmp_path / "data"
    missing, bad = tmp_path / "none.toml", tmp_path / "bad.toml"
    bad.write_text("[ca\n")
    cases = [
        (missing, f"{missing}: configuration file (EPORT_CONFIG): cannot be read: No such file"),
        (bad, f"{bad}: configuration file (EPORT_CONFIG): not valid TOML"),
    ]
    for config, expect in cases:
        env = _offline_env()
        env["EPORT_CONFIG"] = str(config)
        res = subprocess.run(
            [EPORT, "serve", "--dev", "--data-dir", str(data), "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        one_line(res, 1, expect)
    assert not data.exists()


def test_serve_without_dev_where_no_ca_is(tmp_path: Path) -> None:
    """eport serve without --dev on a directory holding no CA (--dev forgotten, or the
    wrong --data-dir) asked for EPORT_AUTH_KEY_PASSPHRASE, and once given it for
    EPORT_CA_KEY_PASSPHRASE, leaving an auth.db each time; only with both did it say
    there was no CA. It says so first, naming eport ca init and --dev; nothing is made."""
    data = tmp_path / "data"
    for extra in ({}, {"EPORT_AUTH_KEY_PASSPHRASE": "auth key passphrase"}):
        res = offline("serve", "--data-dir", str(data), "--port", str(free_port()), **extra)
        line = one_line(res, 1, f"no CA in {data} (no ca/root.crt): make one with `eport ca init")
        assert line.endswith("or start a development CA with --dev"), line
    assert not data.exists()


def test_a_session_file_that_is_not_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session file cut short or written over (not JSON) said "cannot read the session
    file ...: Expecting value: line 1 column 1 (char 0)", the parser's words, where one
    that is JSON but not a session says it is damaged and to log in again. Both say that."""
    from cli.session import session_file

    env = _offline_env()
    env["EPORT_CONFIG_DIR"] = str(tmp_path)
    monkeypatch.setenv("EPORT_CONFIG_DIR", str(tmp_path))
    path = session_file(env["EPORT_SERVER"])
    for damaged in (b"garbage\n", b'{"refresh_tok', b"\xff\xfe{}", b"{}"):
        path.write_bytes(damaged)
        for args in (["whoami"], ["token", "--service", "customs-declaration"], ["logout"]):
            res = subprocess.run(
                [*EPORT_CMD, *args],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                stdin=subprocess.DEVNULL,
            )
            line = one_line(res, 1, f"the session file {path} is damaged")
            assert line.endswith("run `eport login` again"), line


def test_status_of_a_certificate_naming_no_responder(tmp_path: Path) -> None:
    """eport status of a certificate with no AIA (a self-signed one, a partner's) and no
    chain.pem beside it said "no issuer certificate: give --issuer or keep chain.pem
    beside --cert"; given --issuer, it then said the certificate names no OCSP responder,
    which no issuer mends. That is said first."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "No AIA")])
    now = time.time()
    cert = x509.CertificateBuilder(
        name,
        name,
        key.public_key(),
        1,
        datetime.datetime.fromtimestamp(now - 60, datetime.UTC),
        datetime.datetime.fromtimestamp(now + 86400, datetime.UTC),
    ).sign(key, hashes.SHA256())
    path = tmp_path / "no-aia.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for extra in ([], ["--issuer", str(path)]):
        res = offline("status", "--cert", str(path), *extra)
        one_line(res, 1, "the certificate names no OCSP responder (no AIA extension)")


def test_a_share_file_that_is_not_one_is_named(tmp_path: Path) -> None:
    """eport ca unseal (and ceremony join) given a file that is not a share file said
    "not a share file (not JSON)", not which file, to a custodian holding several."""
    for content in (b"", b"-----BEGIN CERTIFICATE-----\n", b'{"format": "other"}'):
        share = tmp_path / "customs.share"
        share.write_bytes(content)
        for args in (["ca", "unseal"], ["ca", "ceremony", "join", "cer-3f9a0c2e7b1d4e56"]):
            res = offline(*args, "--share", str(share), "--fingerprint", "00")
            one_line(res, 1, f"{share}: not a share file (")


def test_a_missing_choice_is_one_line() -> None:
    """eport revoke without --reason printed click's list of the reasons one to a line
    ('Choose from:', then a tab and a reason on each of six lines): seven lines on
    stderr where every error is one. The reasons are listed on the one line."""
    res = offline("revoke", "--serial", "7e23")
    line = one_line(res, 2, "Missing option '--reason'. Choose from: keyCompromise, cessation")
    assert line.endswith("privilegeWithdrawn, unspecified (see 'eport revoke --help')"), line


@pytest.mark.parametrize("args", [[], ["cert"], ["ca", "ceremony"]])
def test_a_group_alone_shows_its_help(args: list[str]) -> None:
    """`eport` or `eport cert` alone printed its whole help behind "eport: error: Usage:"
    and with "(see 'eport cert --help')" stuck to its last line; the help is shown as it
    is (on stderr, exit 2: the command line ran nothing), its commands listed."""
    res = offline(*args)
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr.startswith(f"Usage: {' '.join(['eport', *args])} [OPTIONS] COMMAND")
    assert "\nCommands:\n" in res.stderr and "eport: error" not in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["token", "--service", " "], "--service"),
        (["enroll", "--code", "", "--profile", "enterprise", "--out", "new"], "--code"),
        (["enroll", "--profile", "", "--code", "0AWT-8B9X", "--out", "new"], "--profile"),
        (
            ["roles", "grant", "--operator", "", "--role", "declaration", "--cert", "c.pem"],
            "--operator",
        ),
    ],
)
def test_blank_values_are_usage_errors(args: list[str], option: str, tmp_path: Path) -> None:
    """An empty --service, --code, --profile or --operator was sent, and the server's
    refusal named its own fields ('code' is required; operator_id (string) and roles ...
    are required; audience (the service id) is required), exit 1. It is a usage error
    naming the option (exit 2), and nothing is sent or written."""
    res = offline(*args, cwd=tmp_path)
    one_line(res, 2, f"Invalid value for '{option}': must not be blank")
    assert list(tmp_path.iterdir()) == []


def test_a_certificate_given_as_the_key(sqlite_server: Server, tmp_path: Path) -> None:
    """--key naming the certificate (or chain.pem), the file beside the key, said 'cannot
    load key ...: not a PEM private key', as if the key were damaged; it says what the
    file holds, as --cert given a key file does. No session is opened."""
    server = sqlite_server
    cert = Path(server.officer()[1])
    before = _sessions(server)
    for wrong in (cert, cert.with_name("chain.pem")):
        res = server.eport("login", "--cert", str(cert), "--key", str(wrong), check=False)
        one_line(res, 1, f"{wrong} holds a PEM certificate, not a private key")
    # A PKCS#12 bundle (the --p12 of eport enroll) or any binary file: where the key is.
    bundle = tmp_path / "bundle.p12"
    bundle.write_bytes(b"\x30\x82\x0b\xfe\x02\x01\x03")
    res = server.eport("login", "--cert", str(cert), "--key", str(bundle), check=False)
    line = one_line(res, 1, f"cannot load key {bundle}: not a PEM private key")
    assert line.endswith("(for a PKCS#12 bundle, use the key.pem written beside it)"), line
    assert _sessions(server) == before


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["audit", "prove", "zz"], "SERIAL"),
        (["audit", "log", "--serial", "xyz"], "'--serial'"),
    ],
)
def test_audit_serials_that_cannot_be_one(args: list[str], hint: str) -> None:
    """A serial that is not hexadecimal was sent by eport audit log (HTTP 400, exit 1) and
    refused by eport audit prove with exit 1; as for eport revoke --serial, it is a usage
    error (exit 2) before any key is read. The forms people copy (colons, 0x) still pass."""
    res = offline(*args)
    one_line(res, 2, f"Invalid value for {hint}: ")
    for serial in ("7E:23:F4:E0", "0x7e23f4e0"):
        copied = [serial if a in ("zz", "xyz") else a for a in args]
        res = offline(*copied)
        assert res.returncode == 1 and "Invalid value" not in res.stderr, res.stderr


def test_a_front_proxys_own_limits_are_said_as_limits(sqlite_server: Server) -> None:
    """A front proxy's 429 (its rate limit) and 413 (its body limit) as HTML pages were
    said as "not the e-port API's JSON (is EPORT_SERVER … the e-port server's base URL?)",
    sending the user after a setting that was right (HTTP edges probe, session 27)."""
    import http.server
    import threading

    answers: list[tuple[int, dict[str, str]]] = []

    class Front(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            status, headers = answers[0]
            body = b"<html><body>nginx</body></html>"
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{front.server_address[1]}"
    apply = ["apply", "--uscc", fresh_uscc(), "--name", "Limited Trading Co., Ltd."]
    try:
        limiting = "is limiting requests (HTTP 429 Too Many Requests): try again "
        for headers, expect in (
            ({"Retry-After": "30"}, limiting + "in 30 s"),
            ({}, limiting + "later"),
        ):
            answers[:] = [(429, headers)]
            res = sqlite_server.eport(*apply, check=False, EPORT_SERVER=url)
            line = one_line(res, 1, expect)
            assert "EPORT_SERVER" not in line, line
        answers[:] = [(413, {})]
        res = sqlite_server.eport(*apply, check=False, EPORT_SERVER=url)
        one_line(res, 1, "refused the request as too large (HTTP 413")
    finally:
        front.shutdown()
        front.server_close()
