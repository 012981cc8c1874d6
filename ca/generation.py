"""The hierarchy's generation file, ``<data_dir>/ca/generation``: "the CA files changed".

Whatever changes the hierarchy on disk (a quorum ceremony that makes or revokes an
issuing CA, the renewal of an OCSP responder certificate) writes the files first and
then replaces this file with a new random token; every process that serves from the
hierarchy (CA workers, token-service workers) watches it and reloads: the token service
and CA workers outside joint custody through :class:`GenerationWatch`, the custody
service (:mod:`ca.quorum_api`) by comparing :func:`read_generation` before each request.

Framework-free: :class:`GenerationWatch` costs one ``stat`` at most every ``every``
seconds and reads the token only when the stat changed.

A token service on another host has these files copied to it by hand or by a script, in
whatever order (docs/token-service.md, "Running apart"): its watch (``files=True``) also
follows the public files themselves, so that an issuing CA certificate copied after the
generation file is still taken up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ca import hierarchy
from ca.errors import EPortError

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


_Stat = tuple[int, int, int, int] | None
_Signature = tuple[object, ...]

PUBLIC_FILES = ("root.crt", "root.crl")
"""With ``issuers/*.crt``: what a token service on another host copies (and watches)."""
EXPECTED_FAILURES = (OSError, ValueError, EPortError)
"""What a reload of files being written or copied raises (a missing file, a half-written
certificate or CRL, a hierarchy not there yet): one line in the log, not a traceback."""


def _stat(path: Path | str) -> _Stat:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    # the inode and the ctime too: a copy that keeps the source's mtime (cp -p, shutil.copy2)
    # of a file of the same size still changes the ctime
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class GenerationWatch:
    """Calls ``reload(token)`` once per change of the generation file (``files``: also
    once per change of :data:`PUBLIC_FILES` or of ``issuers/*.crt``).

    :meth:`poll` is cheap enough for every request: a clock compare, and at most every
    ``every`` seconds one ``stat`` (inode, size, mtime, ctime) of the generation file
    (``files``: also of the public files, and one listing of ``issuers/``). Only a
    changed stat reads the token; the token is also re-read every ``reread`` seconds in
    case a replacement reused the inode within the file system's timestamp granularity.
    The token and stat are taken *before* ``reload`` runs, so a change made while it
    loads is seen by the next poll. A failing ``reload`` is retried ``every`` seconds
    later and logged once per change of the files (a file being copied fails until it is
    whole): one line for :data:`EXPECTED_FAILURES`, the traceback for anything else.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        every: float = 1.0,
        reread: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        files: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.path = generation_path(self.data_dir)
        self.every = every
        self.reread = reread
        self.clock = clock
        self.files = files
        self.token = read_generation(self.data_dir)
        self._signature = self._stat()
        self._failed: tuple[str, _Signature, str] | None = None
        """The token, signature and error of the last failed reload (logged once)."""
        now = clock()
        self._next = now + every
        self._next_read = now + reread
        self._lock = threading.Lock()

    def _stat(self) -> _Signature:
        if not self.files:
            return (_stat(self.path),)
        d = hierarchy.ca_dir(self.data_dir)
        stats: list[object] = [_stat(self.path), *(_stat(d / name) for name in PUBLIC_FILES)]
        try:
            with os.scandir(d / "issuers") as it:
                crts = sorted(e.path for e in it if e.name.endswith(".crt"))
        except (FileNotFoundError, NotADirectoryError):
            crts = []
        stats += [(crt, _stat(crt)) for crt in crts]
        return tuple(stats)

    def poll(self, reload: Callable[[str], None], *, immediately: bool = False) -> bool:
        """Run ``reload(token)`` if the generation (``files``: or a public file) changed
        since the last successful one (``immediately``: check now, e.g. right after this
        process changed it)."""
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
            if token == self.token and (not self.files or signature == self._signature):
                self._signature = signature
                return False
            try:
                reload(token)
            except Exception as exc:
                self._log_failure(token, signature, exc)
                return False  # the stat stays "changed": the next poll tries again
            if self._failed is not None:
                log.warning("the CA hierarchy (generation %s) reloaded after all", token)
            self.token, self._signature, self._failed = token, signature, None
            return True

    def _log_failure(self, token: str, signature: _Signature, exc: Exception) -> None:
        """Once per change: the same half-copied file fails every second until it is
        whole, in every worker."""
        why = _one_line(exc)
        failed = (token, signature, why)
        if failed == self._failed:
            return
        self._failed = failed
        if isinstance(exc, EXPECTED_FAILURES):
            log.warning(
                "reloading the CA hierarchy (generation %s) failed (%s); the one loaded "
                "before is kept until the files read whole",
                token or "-",
                why,
            )
        else:
            log.exception("reloading the CA hierarchy (generation %s) failed; will retry", token)
