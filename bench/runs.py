"""What the peer benchmarks (``ocsp.py``, ``auth.py``) share beyond ``issuance.py``'s load
client: their common options, the load report, steady runs on a quiet machine, a time
limit, and cleanup of servers and the working directory."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of a run: machine quietness, retries, time limit, working directory."""
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="seconds to wait, at most, for the rest of the machine to go idle before each run",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="runs disturbed by other processes are repeated up to this many times",
    )
    p.add_argument("--time-limit", type=float, default=300.0, help="abort after this many s")
    p.add_argument("--tmp", type=Path, default=None, help="parent of the temporary data dir")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir")


def run_in_workdir(
    args: argparse.Namespace, prefix: str, run: Callable[[Path, kit.Servers, float], int]
) -> int:
    """``run(workdir, servers, started)`` in a new temporary directory, aborted after
    ``args.time_limit`` s (exit 124) or on SIGTERM; every server it started is stopped and
    the directory removed (unless ``args.keep``) however it ends."""
    if args.quick:
        args.seconds, args.warmup = 3.0, 1.0
        args.time_limit = min(args.time_limit, 180.0)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=args.tmp))
    servers = kit.Servers(workdir)

    def on_signal(sig: int, _frame: Any) -> None:
        if sig == signal.SIGALRM:
            print(f"\nABORTED: over the time limit of {args.time_limit:g} s", flush=True)
        raise SystemExit(124 if sig == signal.SIGALRM else 128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.setitimer(signal.ITIMER_REAL, args.time_limit)
    try:
        return run(workdir, servers, started)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for server in list(servers.running):
            stop(servers, server)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
