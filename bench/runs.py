"""What the peer benchmarks (``ocsp.py``, ``auth.py``) share beyond ``issuance.py``'s load
client: the load report, steady runs on a quiet machine, and cleanup of servers."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

import issuance as kit


def load_report(when: str) -> float:
    """Print the load average; warn when other work would make the numbers unreliable."""
    one, five, fifteen = os.getloadavg()
    cpus = os.cpu_count() or 1
    print(f"Load average {when}: {one:.2f} {five:.2f} {fifteen:.2f} on {cpus} CPUs", flush=True)
    if one > 0.5 * cpus:
        print(
            f"WARNING: the 1-minute load average ({one:.2f}) is high for {cpus} CPUs: other "
            "work is running, the numbers below are low and noisy (ratios within this run "
            "are the meaningful part).",
            flush=True,
        )
    return one


def steady(run: Callable[[], kit.Row], quiet_wait: float, retries: int) -> kit.Row:
    """``run`` once the rest of the machine is quiet (waiting at most ``quiet_wait`` s); again,
    up to ``retries`` times, while other processes used more than ``kit.NOISY_CORES`` during
    it. The least disturbed attempt is kept."""
    kept: kit.Row | None = None
    for attempt in range(1 + retries):
        kit.wait_quiet(quiet_wait)
        row = run()
        if kept is None or row.other_cpu < kept.other_cpu:
            kept = row
        if row.other_cpu <= kit.NOISY_CORES:
            break
        if attempt < retries:
            print(f"    (others used {row.other_cpu:.2f} cores meanwhile: again)", flush=True)
    assert kept is not None
    return kept


def disturbed(*rows: kit.Row | None) -> str:
    """A warning for a ratio whose rows other processes disturbed, or ''."""
    worst = max((r.other_cpu for r in rows if r is not None), default=0.0)
    if worst <= kit.NOISY_CORES:
        return ""
    return f"  (UNRELIABLE: others used {worst:.2f} cores)"


def sweep(sid: int) -> None:
    """SIGKILL whatever is left of the session ``sid`` of a server this benchmark started
    (each by its pid: e.g. a responder that made itself a process group of its own)."""
    for pid in kit.session_cpu(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def stop(servers: kit.Servers, server: kit.Server) -> None:
    servers.stop(server)
    sweep(server.proc.pid)
