"""The ``ca/`` files a root ceremony changes before its transaction commits, undone if it
does not commit.

A root operation (:mod:`ca.root_ops`) runs inside the transaction that completes its
ceremony (:meth:`ca.quorum.Quorum.join`) and writes its files first: the root CRL,
``issuers/active.json``, new key and certificate files, the log keys. If anything fails
after a file was written (a later step of the operation, the ceremony's events, the
COMMIT itself), the database rolls back and :meth:`FileChanges.undo` puts every file
back as it was: the previous bytes (and mode) of a replaced file, or no file where
there was none; keys the operation made in a PKCS#11 token are destroyed. The
generation file (:mod:`ca.generation`), which makes every worker reload the hierarchy,
is bumped only once the transaction has committed (:meth:`FileChanges.committed`), so
no other worker loads files the database may still roll back.

A hard crash (kill -9, power loss) between the writes and the COMMIT cannot undo
anything then; so before the first file is written, and before each further one, the
journal is kept durably in ``ca/ceremony-<id>.journal`` (mode 0600: it holds the
previous bytes, sealed key files included), and removed once the transaction committed
or the files were restored. At the next start, before the hierarchy is loaded,
:func:`settle` finds a journal left behind and asks the database: a ceremony recorded
done committed (the journal is only dropped); any other was rolled back, and its files
are restored from the journal (a key file naming a PKCS#11 token key the ceremony made
has that key destroyed, best effort).
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("eport.ca")

JOURNAL_GLOB = "ceremony-*.journal"


def unsettled(ca_dir: Path) -> bool:
    """Whether a crash left anything for :func:`settle`: a journal, or a journal's
    temporary file (killed while writing the first journal: no file had changed yet)."""
    from ca.custody_files import leftover_temporaries

    return any(Path(ca_dir).glob(JOURNAL_GLOB)) or bool(
        leftover_temporaries(Path(ca_dir), JOURNAL_GLOB)
    )


def journal_path(ca_dir: Path, ceremony_id: str) -> Path:
    """Where the journal of ceremony ``ceremony_id`` is kept while it completes."""
    return Path(ca_dir) / f"ceremony-{ceremony_id}.journal"


class MadeKey(Protocol):
    """A key an operation made (:class:`ca.keyhome.NewKey`)."""

    def store(self, path: Path) -> None: ...

    def discard(self) -> None: ...


@dataclass(frozen=True)
class _Before:
    path: Path
    data: bytes | None
    """None: there was no file."""
    mode: int


def _put(path: Path, data: bytes, mode: int) -> None:
    """Restore or keep a file durably, with its mode (a key file keeps its 0600)."""
    from ca.custody_files import write_durably  # it imports ca.custody's users

    write_durably(path, data, mode)


def _remove(path: Path) -> None:
    from ca.custody_files import remove_durably

    remove_durably(path)


class FileChanges:
    """The journal of one ceremony's file writes: every write goes through it, and
    :meth:`undo` restores them all in reverse order. ``changed`` is called once the files
    written are in force: after the commit, or after an undo that restored any (the files
    stay as they were, but the caller may have reloaded them meanwhile).
    ``journal``: the file that keeps it across a crash (none: in memory only)."""

    def __init__(
        self, changed: Callable[[], None] | None = None, journal: Path | None = None
    ) -> None:
        self._before: list[_Before] = []
        self._seen: set[Path] = set()
        self._keys: list[MadeKey] = []
        self._changed = changed
        self._journal = journal
        self._kept = False
        """Whether this object wrote the journal: only then is it this object's to drop
        (a retry of a ceremony whose undo failed must not drop the journal it left)."""

    def _keep(self) -> None:
        if self._journal is None:
            return
        self._kept = True
        doc = {
            "ceremony": self._journal.name.removeprefix("ceremony-").removesuffix(".journal"),
            "files": [
                {
                    "path": os.path.relpath(b.path, self._journal.parent),
                    "before": None if b.data is None else base64.b64encode(b.data).decode(),
                    "mode": b.mode,
                }
                for b in self._before
            ],
        }
        _put(self._journal, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)

    def _drop_journal(self) -> None:
        if self._kept and self._journal is not None and self._journal.exists():
            _remove(self._journal)
        self._kept = False

    def committed(self) -> None:
        """The transaction committed: the files written are the ones in force."""
        wrote = bool(self._before)
        self._before, self._seen, self._keys = [], set(), []
        self._drop_journal()
        if wrote and self._changed is not None:
            self._changed()

    def _replacing(self, path: Path) -> None:
        """``path`` is about to be written: keep what it holds now (only the first time)."""
        path = Path(path)
        if path in self._seen:
            return
        try:
            st = path.stat()
            before = _Before(path, path.read_bytes(), st.st_mode & 0o777)
        except FileNotFoundError:
            before = _Before(path, None, 0o644)
        self._seen.add(path)
        self._before.append(before)
        self._keep()  # on disk before the file changes

    def write(self, path: Path, data: bytes) -> None:
        """Write a ceremony's file durably (:func:`ca.custody_files.write_durably`): a power
        loss right after it leaves the old file or the new one, never a torn one."""
        from ca.custody_files import write_durably

        self._replacing(path)
        write_durably(path, data)

    def store(self, key: MadeKey, path: Path) -> None:
        """Write ``key``'s key file (sealed, or its token reference) at ``path``."""
        self._replacing(path)
        key.store(path)

    def made(self, key: MadeKey) -> None:
        """A key the operation made: discarded (a token key destroyed) on undo."""
        self._keys.append(key)

    def undo(self) -> None:
        """Put every file back as it was, newest first, and discard the keys made. A file
        that cannot be restored is logged (with the others still restored) and the first
        error raised at the end."""
        failed: BaseException | None = None
        for before in reversed(self._before):
            try:
                if before.data is None:
                    _remove(before.path)
                else:
                    _put(before.path, before.data, before.mode)
            except Exception as exc:
                log.error("could not restore %s after a failed ceremony: %s", before.path, exc)
                failed = failed or exc
        for key in reversed(self._keys):
            try:
                key.discard()
            except Exception as exc:  # a token that cannot be reached keeps an unused key
                log.error("could not discard a key made by a failed ceremony: %s", exc)
        restored = bool(self._before)
        if failed is not None:
            raise failed  # the journal stays: the next join or start finishes the restore
        self._before, self._seen, self._keys = [], set(), []
        self._drop_journal()
        if restored and self._changed is not None:
            try:
                self._changed()
            except OSError as exc:  # the files are back; the workers reload at the next change
                log.error("a failed ceremony's files were put back, but %s", exc)


def _destroy_token_key(path: Path, before: bytes | None) -> None:
    """A key file the ceremony wrote names a token key it made: destroy that key."""
    from ca import pkcs11

    try:
        now = path.read_bytes()
    except FileNotFoundError:
        return
    if now == before or not pkcs11.is_reference(path):
        return
    with contextlib.suppress(pkcs11.Pkcs11Error):
        pkcs11.destroy(pkcs11.read_reference(path).uri)


def settle(ca_dir: Path, committed: Callable[[str], bool]) -> list[str]:
    """Finish what a crash between a ceremony's file writes and its COMMIT left (at start,
    before the hierarchy is loaded, under :func:`ca.crosshost.host_lock`, which a
    completing ceremony holds). ``committed(id)``: whether the database records the
    ceremony done. Restores the files of every journal whose ceremony did not commit, and
    drops every journal and the temporary files of the writes the crash cut short; returns
    the ids of the ceremonies whose files it restored."""
    from ca.custody_files import leftover_temporaries

    restored: list[str] = []
    for journal in sorted(Path(ca_dir).glob(JOURNAL_GLOB)):
        doc: dict[str, Any] = json.loads(journal.read_text())
        cid = str(doc["ceremony"])
        if not committed(cid):
            for entry in reversed(doc["files"]):
                path = Path(ca_dir) / entry["path"]
                before = None if entry["before"] is None else base64.b64decode(entry["before"])
                _destroy_token_key(path, before)
                if before is None:
                    _remove(path)
                else:
                    _put(path, before, int(entry["mode"]))
            names = ", ".join(str(e["path"]) for e in doc["files"])
            log.warning(
                "ceremony %s did not commit before the server stopped: its files were "
                "restored (%s); open a new ceremony",
                cid,
                names,
            )
            restored.append(cid)
        for entry in doc["files"]:  # a write the crash cut short left its temporary file
            path = Path(ca_dir) / entry["path"]
            for temporary in leftover_temporaries(path.parent, glob.escape(path.name)):
                _remove(temporary)
        _remove(journal)
    for temporary in leftover_temporaries(Path(ca_dir), JOURNAL_GLOB):
        _remove(temporary)  # a journal being written when the crash came
    return restored
