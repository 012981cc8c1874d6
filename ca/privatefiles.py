"""The data directory and its SQLite databases, readable by the server's user only.

``eport.db`` and ``auth.db`` hold vetted enterprise data, enrollment-code, session and
refresh-token hashes: like the keys and passphrase files (0600), they are no one else's
to read, whatever the umask. A data directory is created 0700 and a SQLite database
file 0600 before SQLite first opens it; SQLite gives its ``-wal``, ``-shm`` and
``-journal`` files the database file's own mode. Databases made by an earlier release
(0644 under umask 0022) are tightened by ``eport serve`` (:func:`tighten_sqlite`).
PostgreSQL's files are the database server's business: nothing to do here.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from sqlalchemy.engine import URL, make_url

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SIDE_FILES = ("-wal", "-shm", "-journal")


def make_data_dir(path: Path) -> None:
    """Create ``path`` (and missing parents, with the usual mode) as a private directory;
    an existing directory is left as it is."""
    Path(path).mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for any other backend, an in-memory
    database, or a URI filename (``file:…?mode=ro``: opened, never created, here)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def create_sqlite_file(url: str | URL) -> None:
    """Create the SQLite database file of ``url`` empty and 0600 if it does not exist yet
    (an empty file is an empty database to SQLite), so that SQLite never creates it with
    the umask's mode."""
    path = sqlite_file(url)
    if path is None or path.exists() or not path.parent.is_dir():
        return
    with contextlib.suppress(FileExistsError):  # another process made it first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))


def tighten_sqlite(url: str | URL) -> list[Path]:
    """Make the existing SQLite database file of ``url`` and its side files 0600 where
    group or others may read or write them; the files changed."""
    path = sqlite_file(url)
    if path is None:
        return []
    changed = []
    for candidate in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(candidate, PRIVATE_FILE)
            changed.append(candidate)
    return changed


def sqlite_files_lost(database: Path) -> str | None:
    """What of a SQLite database this process has open was deleted under it, or None.

    A ``-wal`` file deleted while the server runs takes every commit since the last
    checkpoint with it at the next start (answered 201 and 200, then gone), and a
    connection opened after the deletion starts a new one beside the old: the database
    is damaged. SQLite writes on into the deleted file without an error, so this is
    looked for in the process's open files (``/proc/self/fd``, Linux; elsewhere it is
    not seen)."""
    db = os.path.realpath(database)
    # (a path that is not there is no database this process has open: the token service
    # on PostgreSQL has no auth.db; one deleted while open shows in the scan below)
    ours = {db + suffix for suffix in ("", "-wal", "-shm")}
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        name = target.removesuffix(" (deleted)")
        if name != target and name in ours:
            return f"{name} was deleted while the server had it open"
    return None
