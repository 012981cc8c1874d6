"""Fixtures that start real servers: the e-port server under gunicorn, PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.eport_launch import KILL_ALL

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EPORT = str(BIN / "eport")
"""The real console script: what ``eport serve`` and the tests of the script itself run."""
ZYGOTE_SOCKET = os.path.join(tempfile.gettempdir(), f"eport-zygote-{os.getpid()}.sock")
EPORT_CMD = (
    [EPORT]
    if os.environ.get("EPORT_TEST_EXEC") == "1"
    else [sys.executable, "-S", str(REPO / "tests" / "eport_launch.py"), ZYGOTE_SOCKET, EPORT]
)
"""How the tests run an ``eport`` command to completion: the real command in a child of
this session's CLI zygote (tests/zygote.py), which imported the CLI once; the real
script when the zygote is not there. ``EPORT_TEST_EXEC=1``: always the real script."""
PG_BIN = Path("/usr/lib/postgresql/15/bin")
IN_CI = os.environ.get("CI") == "true"

TEST_SETTINGS = {"EPORT_KEY_KDF_ITERATIONS": "2048"}
"""Settings of every ``eport`` the tests run, and of this process. Key files take the least
PBKDF2 count (ca.pkcs8): the suite makes and opens thousands, which at the default of
600,000 would cost it minutes. tests/test_key_files.py checks the default without it."""
os.environ.update(TEST_SETTINGS)


def base_env() -> dict[str, str]:
    """This environment without the user's own EPORT_* settings, with :data:`TEST_SETTINGS`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPORT_")}
    env.update(TEST_SETTINGS)
    return env


def need(tool: str, path: str | None = None) -> str:
    """The path of a system tool; outside CI a missing one skips, in CI it fails."""
    found = path if path and os.path.exists(path) else shutil.which(tool)
    if found:
        return found
    if IN_CI:
        pytest.fail(f"{tool} is required in CI (the Makefile's sysdeps installs it)")
    pytest.skip(f"{tool} is not installed")


FIRST = (
    "test_reshare", "test_two_hosts_ca_files", "test_upgrades", "test_two_hosts",
    "test_ca_init", "test_database_outage", "test_init_interrupted", "test_auth_races",
    "test_status_flow", "test_backup", "test_cli_errors", "test_enrollment_flow",
)  # fmt: skip
"""The modules that take longest (30-95 s of one worker each, measured in session 19),
longest first. ``make test`` hands whole modules to its three workers in collection
order (``--dist loadfile``); alphabetical order left one of them ending the run alone."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The :data:`FIRST` modules first, in that order; the rest as collected."""
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(rank))
               if isinstance(item, pytest.Function) and item.module is not None
               else len(rank))  # fmt: skip


def _port_block() -> range:
    """This test process's ports: one block of 2,000 of 20000-31999 per xdist worker, so
    that two workers never hand out the same port (one picked twice at random went to
    two servers starting at once, and one failed "Address already in use")."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    start = 20000 + (int(worker) if worker.isdigit() else 0) % 6 * 2000
    return range(start, start + 2000)


_PORTS = _port_block()
_next_port = random.randrange(len(_PORTS))


def free_port() -> int:
    """A port free now, chosen below Linux's ephemeral range (32768-60999): a port the
    kernel picked (a port-0 listener, an outgoing connection's source port) could be
    taken by another test's socket before the server binds it, and that server's
    health then answered for this one. Each call takes the next port of this process's
    block (:func:`_port_block`), so none is handed out twice before 2,000 others."""
    global _next_port
    while True:
        port = _PORTS[_next_port % len(_PORTS)]
        _next_port += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_hard(proc)


def kill_hard(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a command started in its own session (a server: its master and workers at
    once, as a crash would), and reap it. Through the zygote's launcher, that is its
    :data:`~tests.eport_launch.KILL_ALL` signal: the launcher kills the command's group
    before it dies itself."""
    with contextlib.suppress(ProcessLookupError):
        try:  # still the launcher? (it runs the real script itself when it cannot fork one)
            launcher = b"eport_launch.py" in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        except FileNotFoundError:
            launcher = False
        if launcher:
            os.kill(proc.pid, KILL_ALL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def dev_credentials(dev: Path, role: str, agency: str = "customs") -> list[str]:
    """The CLI flags of a development credential under ``dev`` (``eport serve --dev``):
    ``role`` is ``officer`` or ``auditor``."""
    d = dev / f"{role}s" / agency
    return [
        "--cert",
        str(d / f"{role}.pem"),
        "--key",
        str(d / f"{role}.key"),
        "--passphrase-file",
        str(d / "DEV-ONLY-passphrase.txt"),
    ]


@dataclass
class Server:
    url: str
    data_dir: Path
    database_url: str
    log: Path

    @property
    def dev(self) -> Path:
        return self.data_dir / "dev"

    def officer(self, agency: str = "customs") -> list[str]:
        return dev_credentials(self.dev, "officer", agency)

    def auditor(self, agency: str = "customs") -> list[str]:
        return dev_credentials(self.dev, "auditor", agency)

    def env(self, **extra: str) -> dict[str, str]:
        env = base_env()
        env.update(EPORT_SERVER=self.url, EPORT_PASSPHRASE="test-passphrase-123")
        env.update(extra)
        return env

    def eport(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the real ``eport`` command against this server."""
        res = subprocess.run(
            [*EPORT_CMD, *args], capture_output=True, text=True, env=self.env(**env), timeout=60
        )
        if check and res.returncode != 0:
            raise AssertionError(f"eport {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
        return res


def start_server(
    data_dir: Path,
    database_url: str = "",
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    *,
    dev: bool = True,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
    port: int | None = None,
    args: tuple[str, ...] = (),
) -> tuple[Server, subprocess.Popen[bytes]]:
    """``eport serve`` (``--dev`` unless ``dev`` is False) on a free port, started in its
    own session, once it answers /ca/v1/health. ``env`` replaces the environment (default:
    this one without EPORT_* settings); ``extra_env`` is added to it. The log is
    ``serve-<port>.log`` in ``log_dir`` (default: beside the data directory). ``port``:
    one chosen earlier (a CA made by ``eport ca init`` names its URLs before it serves).
    ``args``: more options of ``eport serve`` (``--only ca``)."""
    port = port or free_port()
    log = (log_dir or data_dir.parent) / f"serve-{port}.log"
    if env is None:
        env = base_env()
    env = dict(env)
    if database_url:
        env["EPORT_DATABASE_URL"] = database_url
    env.update(extra_env or {})
    cmd = [*EPORT_CMD, "serve", *(["--dev"] if dev else []), "--data-dir", str(data_dir)]
    cmd += ["--port", str(port), "--workers", str(workers), *args]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/ca/v1/health", proc, log)
        _check_ours(url, data_dir, proc, log)
    except Exception:
        stop(proc)
        raise
    return Server(url, data_dir, database_url or f"sqlite:///{data_dir / 'eport.db'}", log), proc


def _check_ours(url: str, data_dir: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    """The server that answered is this one: its root is the data directory's (another
    test's server on the same port answered health too, and the test then talked to it)."""
    root = data_dir / "ca" / "root.crt"
    if not root.exists():
        return
    served = requests.get(url + "/ca/v1/ca", timeout=10).json()["root"]
    if served.strip() != root.read_text().strip() or proc.poll() is not None:
        raise RuntimeError(f"another server answers on {url}:\n{log.read_text()}")


@dataclass
class Postgres:
    port: int
    data: Path
    start_args: tuple[str, ...] = ()
    """``pg_ctl``'s arguments that start it again after a stop (:func:`pg_ctl`)."""

    def url(self, db: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{db}"

    def createdb(self, name: str) -> str:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                name,
            ],
            check=True,
            capture_output=True,
        )
        return self.url(name)


@pytest.fixture(scope="session", autouse=True)
def cli_zygote() -> Iterator[None]:
    """This test process's CLI zygote (see :data:`EPORT_CMD`), stopped at the end."""
    if EPORT_CMD == [EPORT]:
        yield
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ZYGOTE_SOCKET)
    log = open(f"{ZYGOTE_SOCKET}.log", "wb")  # noqa: SIM115 (kept open while it runs)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "zygote.py"), ZYGOTE_SOCKET],
        stdin=subprocess.PIPE,  # its end tells the zygote this process is gone
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not os.path.exists(ZYGOTE_SOCKET) and proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    try:
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the zygote ends (a killed test process closes it as well)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop(proc)
        log.close()
        for leftover in (ZYGOTE_SOCKET, f"{ZYGOTE_SOCKET}.log"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL 15 server in a temporary directory, on a free loopback port."""
    with postgres_cluster() as pg:
        yield pg


def pg_ctl(pg: Postgres, *args: str) -> None:
    """``pg_ctl`` on ``pg``'s cluster (as the postgres user), e.g. ``stop -m immediate``."""
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(pg.data), *args],
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """A PostgreSQL 15 cluster of one's own (the session's is shared by the tests of this
    process: stop it, and theirs fail), removed at the end."""
    need("initdb", str(PG_BIN / "initdb"))
    need("runuser")
    base = Path(tempfile.mkdtemp(prefix="eport-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_pg,
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *as_pg,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(base / "pg.log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield Postgres(port, data, ("-o", opts, "-l", str(base / "pg.log"), "-w", "start"))
    finally:
        subprocess.run(
            [*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The e-port server with a fresh development CA, on SQLite and on PostgreSQL."""
    db = ""
    if request.param == "postgres":
        pg: Postgres = request.getfixturevalue("postgres")
        db = pg.createdb("eport_" + request.module.__name__.rsplit(".", 1)[-1].lower())
    root = tmp_path_factory.mktemp(f"srv-{request.param}")
    srv, proc = start_server(root / "data", db)
    try:
        yield srv
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("srv")
    srv, proc = start_server(root / "data")
    try:
        yield srv
    finally:
        stop(proc)
