"""Benchmark: ``eport audit log --format csv|json --out FILE``, the auditor's export.

A log of ``--entries`` events (default 100,000: for each synthetic enterprise its
application, the officer's approval and the issuance, made by ``translog.py``'s
``build_big_log``) under ``eport serve --dev`` (gunicorn, 2 workers); the real CLI
exports one type (``certificate.issued``, a third of the events) and every event, as CSV
and as JSON, once each. For each export: the rows, the wall time, rows per second, and
the CPU time per 1,000 rows of the CLI and of the server's processes (CPU time is the
steadier figure on a shared machine: the wall time also waits for other work). A ratio
to an older version cannot be printed by one run: run it at both commits with
``--keep`` (the log is made once and reused).

Usage: ``python bench/audit_export.py [--entries 100000] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from translog import BIN, build_big_log, start_server, stop

EXPORTS = {
    "one type, CSV": ["--type", "certificate.issued", "--format", "csv"],
    "one type, JSON": ["--type", "certificate.issued", "--format", "json"],
    "every event, CSV": ["--format", "csv"],
    "every event, JSON": ["--format", "json"],
}


def group_cpu(pgid: int) -> float:
    """CPU seconds used so far by the live processes of process group ``pgid``."""
    ticks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rows_in(path: Path, fmt: str) -> int:
    with path.open("rb") as fh:
        lines = sum(1 for _ in fh)
    return lines - (1 if fmt == "csv" else 2)  # the header; or the brackets' lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the log in this directory")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="eport-bench-export-"))
    try:
        data_dir = (args.keep or tmp) / "exportlog"
        build_big_log(data_dir, args.entries)
        auditor = data_dir / "dev" / "auditors" / "customs"
        who = ["--cert", str(auditor / "auditor.pem"), "--key", str(auditor / "auditor.key")]
        who += ["--passphrase-file", str(auditor / "DEV-ONLY-passphrase.txt")]
        proc, url = start_server(data_dir)
        out = tmp / "export.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPORT_")}
        env["HOME"] = str(tmp)
        try:
            warm = [str(BIN / "eport"), "--server", url, "audit", "log", *who, "--limit", "1000"]
            subprocess.run(warm, env=env, capture_output=True, check=True)  # workers warmed
            one = os.getloadavg()[0]
            print(f"Load average {one:.2f} on {os.cpu_count()} CPUs")
            print(f"{'export':<19} {'rows':>8} {'wall':>7} {'rows/s':>8}  CPU ms / 1,000 rows")
            for name, fmt_args in EXPORTS.items():
                before = group_cpu(proc.pid)
                start = time.perf_counter()
                cmd = [str(BIN / "eport"), "--server", url, "audit", "log", *who, *fmt_args]
                cli = subprocess.Popen(
                    [*cmd, "--out", str(out)],
                    env=env,
                    stderr=subprocess.DEVNULL,
                )
                _, status, usage = os.wait4(cli.pid, 0)
                wall = time.perf_counter() - start
                if status != 0:
                    raise RuntimeError(f"the export {name} failed ({status})")
                time.sleep(0.2)  # the worker's last accounting
                server = group_cpu(proc.pid) - before
                rows = rows_in(out, fmt_args[-1])
                per = 1e6 / rows
                cli_cpu = usage.ru_utime + usage.ru_stime
                print(
                    f"{name:<19} {rows:>8,} {wall:>6.2f}s {rows / wall:>8,.0f}  "
                    f"CLI {cli_cpu * per:5.1f}, server {server * per:5.1f}"
                )
        finally:
            stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
