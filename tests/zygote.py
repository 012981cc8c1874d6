"""The test session's CLI zygote: the real ``eport`` command, imported once, forked per run.

The suite runs ``eport`` about two thousand times, and ``eport serve`` over three
hundred; each run used to spend a quarter of a second of CPU importing the CLI (click,
cryptography, requests, the CA's modules) before doing anything, each server start
nearly a second more (Flask, SQLAlchemy, Alembic, gunicorn, pkilint).
``python tests/zygote.py SOCKET`` imports all that once and then, for each connection
from ``tests/eport_launch.py``, forks a child that takes the launcher's standard
streams, argv, environment, working directory, umask and SIGINT disposition and runs
``cli.main:main`` exactly as the console script does. The command's code, its
arguments, its streams and its exit status are the real ones; only the import is
shared. The zygote answers "exec" (the launcher then runs the real script) when the
environment changes how the interpreter itself starts (``PYTHON*``, ``LANG``, ``LC_*``).

Single-threaded on purpose (forking a process with threads is unsafe): one selector
loop over the listening socket, each launcher's connection (EOF: the launcher was
killed, so its child is killed too), each child's pidfd (readable: it exited) and
stdin, a pipe from the test process (EOF: the test process ended, so the zygote ends;
the commands it forked run on to their own end).
``EPORT_TEST_EXEC=1`` in the test session's environment bypasses all this.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import json
import os
import pkgutil
import selectors
import signal
import socket
import sys
import tempfile
import time
import traceback
from typing import Any

_STARTUP_ENV = ("PYTHON", "LANG", "LC_")


def _startup_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_STARTUP_ENV)}


_SERVER_IMPORTS = (
    # what `eport serve` imports beyond the project's own modules (from a start's
    # -X importtime): the WSGI server, migrations, the second database's driver
    "gunicorn.arbiter",
    "gunicorn.glogging",
    "gunicorn.workers.sync",
    "gunicorn.workers.gthread",
    "gunicorn.ctl.server",
    "gunicorn_h1c",
    "alembic.command",
    "alembic.config",
    "alembic.migration",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql",
    "psycopg2",
    "logging.config",
    "flask_sqlalchemy.cli",
    "concurrent.futures.thread",
)


def preload() -> None:
    """Import every module of the CLI (the lazily loaded commands too), of the two apps
    (for ``eport serve``; their migrations excepted: Alembic runs those from their
    files), and what the server imports from elsewhere."""
    import authsvc
    import ca
    import cli

    for package in (cli, ca, authsvc):
        for info in pkgutil.iter_modules(package.__path__):
            if info.name != "migrations":
                importlib.import_module(f"{package.__name__}.{info.name}")
    for name in _SERVER_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _streams() -> None:
    """Fresh standard streams on fds 0-2, made as the interpreter makes them at start
    (same encoding and errors: the environment's interpreter settings are the zygote's;
    stderr line-buffered; stdout line-buffered only at a terminal)."""
    enc_in, err_in = sys.stdin.encoding, sys.stdin.errors
    enc_out, err_out = sys.stdout.encoding, sys.stdout.errors
    enc_err = sys.stderr.encoding
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding=enc_in, errors=err_in
    )
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
        encoding=enc_out,
        errors=err_out,
        line_buffering=os.isatty(1),
    )
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
        encoding=enc_err,
        errors="backslashreplace",
        line_buffering=True,
    )


def _exit_code(value: Any) -> int:
    """What the interpreter makes of ``sys.exit(value)``."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


def _child(request: dict[str, Any], fds: list[int]) -> int:
    os.setpgid(0, 0)  # the zygote kills the group if the launcher dies
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(int(request["umask"]))
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    ignored = request["sigint_ignored"]
    signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
    tempfile.tempdir = None
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(sys.argv[0])  # as for the console script
    _streams()
    gc.enable()
    from cli.main import main

    try:
        main()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            code = code or 120  # as the interpreter does when it cannot flush stdout
    return code


def serve(path: str) -> None:
    preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    gc.collect()
    gc.freeze()  # the children share the imported modules' pages
    startup = _startup_settings(dict(os.environ))
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, ("accept",))
    # stdin is a pipe from the test process: EOF when it ends, even killed (SIGKILL
    # runs no teardown), and the zygote then ends too instead of lingering
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, ("parent",))
    watched: set[socket.socket] = set()  # launchers whose child runs and who are alive
    sys.stdout.flush()
    sys.stderr.flush()
    while True:
        for key, _ in sel.select():
            kind = key.data[0]
            if kind == "accept":
                conn, _ = listener.accept()
                try:
                    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
                    request = json.loads(data)
                except (OSError, ValueError):
                    conn.close()
                    continue
                if len(fds) != 3 or _startup_settings(request["env"]) != startup:
                    for fd in fds:
                        os.close(fd)
                    conn.sendall(b"exec")
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:  # the command
                    code = 1
                    try:
                        for other in list(sel.get_map().values()):
                            os.close(other.fd)  # the listener, launchers, pidfds
                        sel.close()
                        conn.close()
                        code = _child(request, fds)
                    finally:
                        os._exit(code)
                with contextlib.suppress(OSError):
                    os.setpgid(pid, pid)  # before any kill: the child may not have run yet
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                conn.sendall(f"pid {pid}".encode())
                sel.register(pidfd, selectors.EVENT_READ, ("exit", conn, pid))
                sel.register(conn, selectors.EVENT_READ, ("conn", pid))
                watched.add(conn)
            elif kind == "parent":
                if not os.read(key.fd, 4096):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    return
            elif kind == "exit":
                _, conn, pid = key.data
                sel.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                if conn in watched:
                    sel.unregister(conn)
                    watched.discard(conn)
                    with contextlib.suppress(OSError):
                        conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}".encode())
                conn.close()
            else:  # the launcher's end closed before its child exited: it was killed
                _, pid = key.data
                sel.unregister(key.fileobj)
                watched.discard(key.fileobj)  # type: ignore[arg-type]
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    gc.disable()  # the imports make long-lived objects only
    serve(sys.argv[1])
