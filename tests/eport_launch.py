"""Run one ``eport`` command in a child of the test session's CLI zygote (tests/zygote.py).

``python -S tests/eport_launch.py SOCKET EPORT ARGS...``: hands this process's argv,
environment, working directory, umask, SIGINT disposition and standard streams to the
zygote, which forks a child that has already imported the CLI and runs ``eport ARGS...``
in it; this process then exits as that child did (by the same signal, if one killed
it). Signals sent to this process are passed on to the child's process group, and a
SIGKILL of this process kills the child.
When the zygote is not there, or the command cannot run in it faithfully (an interpreter
setting in the environment differs), it runs the real ``EPORT`` script instead.

Started with ``-S``: only the standard library, so that it costs a few milliseconds.
"""

import contextlib
import json
import os
import signal
import socket
import sys

KILL_ALL = signal.SIGRTMIN + 1
"""Sent to this process: SIGKILL the command's whole process group (a server and its
workers at once, as a crash would); this process then dies by SIGKILL too. A SIGKILL
of this process alone kills them as well, but a moment later (the zygote sees it)."""


def _run_real(eport: str, args: list[str]) -> None:
    os.execv(eport, [eport, *args])


def main() -> None:
    path, eport, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(path)
    except OSError:
        _run_real(eport, args)
    mask = os.umask(0)
    os.umask(mask)
    request = {
        "argv": [eport, *args],
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "umask": mask,
        # as inherited (a shell's background job ignores SIGINT), before any forwarding
        "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
    }
    socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
    reply = sock.recv(64).decode()
    if not reply.startswith("pid "):  # "exec": run it as a new process
        sock.close()
        _run_real(eport, args)
    child = int(reply.split()[1])

    def forward(signum: int, _frame: object) -> None:
        # the child leads its own process group (a server's workers are in it), as
        # this process leads the one a test signals
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL if signum == KILL_ALL else signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, KILL_ALL):
        signal.signal(signum, forward)
    status = sock.recv(64).decode()
    if not status.startswith("exit "):
        os._exit(1)  # the zygote went away without telling
    code = int(status.split()[1])
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    main()
