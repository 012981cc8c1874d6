"""Who is using a data directory: running servers share it, a restore takes it alone.

``eport serve`` holds a shared ``flock`` on ``<data_dir>/serve.lock`` for its whole life
(its gunicorn workers inherit it); ``eport restore`` takes it exclusively, without
waiting, and holds it until the restore is done. So a restore refuses to replace the
files and databases under a running server (whose processes would go on writing into
the replaced, unlinked files: lost entries, an undone re-share), and a server does not
start in the middle of a restore. The lock covers this host's servers of a directory;
servers elsewhere sharing a PostgreSQL database must be stopped by their operators.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ca.errors import Conflict
from ca.privatefiles import make_data_dir

LOCK_NAME = "serve.lock"
RESTORE_MARKER = "restore.incomplete"
"""Written by a restore before it changes the first database or file of the target and
removed after the last: found later, a restore was killed halfway (some databases or
files placed, others not) and the directory must not be served until one finishes."""


def interrupted_restore_refusal(data_dir: Path) -> str | None:
    """Why ``data_dir`` must not be served: an unfinished restore's marker; None when
    there is none."""
    if not (data_dir / RESTORE_MARKER).exists():
        return None
    return (
        f"a restore into {data_dir} did not finish (it was interrupted after it began to "
        "replace the databases and files): run `eport restore --from ARCHIVE --data-dir "
        f"{data_dir} --force` again before serving it"
    )


def _open(data_dir: Path) -> int:
    make_data_dir(data_dir)  # 0700 when new: it holds keys and databases
    return os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)


def hold_for_serving(data_dir: Path) -> int:
    """Take the shared lock for a server's life; the open descriptor (keep it open).
    Raises :class:`Conflict` while a restore holds the directory, or when one was
    interrupted there (:data:`RESTORE_MARKER`)."""
    fd = _open(data_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(
            f"a restore is running on {data_dir}: start the server when it has finished"
        ) from None
    refusal = interrupted_restore_refusal(data_dir)
    if refusal is not None:
        os.close(fd)
        raise Conflict(refusal)
    return fd


@contextmanager
def held_for_restore(data_dir: Path) -> Iterator[None]:
    """Hold the directory alone for a restore; :class:`Conflict` while a server runs on it.
    A restore that fails into a directory that did not exist leaves none behind."""
    existed = data_dir.exists()
    fd = _open(data_dir)
    done = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(
                f"a server is running on {data_dir} (eport serve holds {data_dir / LOCK_NAME}):"
                " stop it before restoring, or its processes go on writing into the files"
                " the restore replaces"
            ) from None
        yield
        done = True
    finally:
        if not done and not existed:
            (data_dir / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                data_dir.rmdir()  # only if the failed restore left it empty
        os.close(fd)
