"""SIGTERM and SIGHUP handled as Ctrl-C is, while a command makes something it would
have to remove if cut short (``eport ca init``, the development CA's first start).

Their default action ends the process at once: an init so stopped left its keys and
files behind, for the next run to refuse with what to remove by hand. A service manager
stops with SIGTERM (systemd, ``docker stop``), and a closed terminal sends SIGHUP.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

STOPS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """SIGTERM (a service manager's stop, ``kill``) or SIGHUP (the terminal closed) in a
    :func:`stops_unwind` block: handled as Ctrl-C is, so what the block made is removed."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        super().__init__(self.signal)


def how_it_ended(exc: BaseException) -> str:
    """``was interrupted`` (Ctrl-C), ``was stopped by SIGTERM``, or ``failed``."""
    if isinstance(exc, Stopped):
        return f"was stopped by {exc.signal}"
    return "was interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@contextlib.contextmanager
def signal_handlers(
    signals: Iterable[signal.Signals], handler: Handler
) -> Iterator[dict[signal.Signals, Handler]]:
    """``handler`` for each of ``signals`` within the block, and their earlier handlers back
    after it; yields those earlier handlers. Only the main thread may set handlers (and
    only it runs them): elsewhere nothing changes and it yields an empty mapping."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    before = {s: signal.signal(s, handler) for s in signals}
    try:
        yield before
    finally:
        for s, earlier in before.items():
            signal.signal(s, earlier)


@contextlib.contextmanager
def stops_unwind() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM and SIGHUP raise :class:`Stopped`; their
    earlier handlers come back after it. Without this they ended the process at once, and
    an init cut short so left its keys and files for the next run to refuse."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signum)

    with signal_handlers(STOPS, stop):
        yield
