"""The hierarchy's generation file, ``<data_dir>/ca/generation``: "the CA files changed".

Whatever changes the hierarchy on disk (a quorum ceremony that makes or revokes an
issuing CA, the renewal of an OCSP responder certificate) writes the files first and
then replaces this file with a new random token; every process that serves from the
hierarchy (CA workers, token-service workers) watches it and reloads: the token service
and CA workers outside joint custody through :class:`GenerationWatch`, the custody
service (:mod:`ca.quorum_api`) by comparing :func:`read_generation` before each request.

Framework-free: :class:`GenerationWatch` costs one ``stat`` at most every ``every``
seconds and reads the token only when the stat changed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ca import hierarchy

log = logging.getLogger("eport.ca")

GENERATION_FILE = "generation"


def generation_path(data_dir: Path) -> Path:
    return hierarchy.ca_dir(data_dir) / GENERATION_FILE


def read_generation(data_dir: Path) -> str:
    """The current token; empty when nothing has changed the hierarchy since init."""
    try:
        return generation_path(data_dir).read_text().strip()
    except FileNotFoundError:
        return ""


def bump_generation(data_dir: Path) -> None:
    """Tell every process that the hierarchy on disk changed (they reload it)."""
    path = generation_path(data_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(os.urandom(8).hex() + "\n")
    tmp.replace(path)


_Signature = tuple[int, int, int, int] | None


class GenerationWatch:
    """Calls ``reload(token)`` once per change of the generation file.

    :meth:`poll` is cheap enough for every request: a clock compare, and at most every
    ``every`` seconds one ``stat`` (inode, size, mtime, ctime). Only a changed stat
    reads the token; the token is also re-read every ``reread`` seconds in case a
    replacement reused the inode within the file system's timestamp granularity.
    The token and stat are taken *before* ``reload`` runs, so a change made while it
    loads is seen by the next poll. A failing ``reload`` is logged and retried ``every``
    seconds later.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        every: float = 1.0,
        reread: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.path = generation_path(self.data_dir)
        self.every = every
        self.reread = reread
        self.clock = clock
        self.token = read_generation(self.data_dir)
        self._signature = self._stat()
        now = clock()
        self._next = now + every
        self._next_read = now + reread
        self._lock = threading.Lock()

    def _stat(self) -> _Signature:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def poll(self, reload: Callable[[str], None], *, immediately: bool = False) -> bool:
        """Run ``reload(token)`` if the generation changed since the last successful one
        (``immediately``: check now, e.g. right after this process changed it)."""
        now = self.clock()
        if now < self._next and not immediately:
            return False
        with self._lock:
            if now < self._next and not immediately:  # another thread checked meanwhile
                return False
            self._next = now + self.every
            signature = self._stat()
            if signature == self._signature and now < self._next_read and not immediately:
                return False
            self._next_read = now + self.reread
            token = read_generation(self.data_dir)
            if token == self.token:
                self._signature = signature
                return False
            try:
                reload(token)
            except Exception:
                log.exception(
                    "reloading the CA hierarchy (generation %s) failed; will retry", token
                )
                return False  # the stat stays "changed": the next poll tries again
            self.token, self._signature = token, signature
            return True
