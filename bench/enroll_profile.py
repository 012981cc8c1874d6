"""Where the server's CPU goes in one enrollment: ``POST /ca/v1/enroll`` in-process.

The app ``eport serve --dev`` runs (``create_app``), on a fresh data directory with its real
SQLite database (WAL, ``synchronous=FULL``), called through Flask's test client: no HTTP
server and no socket, so the numbers are the handler's own. Codes and CSRs are made before
the clock starts (``bench/issuance.py``'s ``CodeMint``). CPU time is this process's
(``time.process_time``), which a busy machine disturbs far less than wall-clock rates.

Prints the CPU milliseconds per enrollment (best and median of batches of 50), then the
time spent in each step of the enrollment path; ``--profile`` adds cProfile's top functions
(by CPU time, not wall time). ``--lint-rate`` is ``EPORT_LINT_SAMPLE_RATE`` (default 1.0,
the CA's default).

Usage: ``python bench/enroll_profile.py [-n 400] [--lint-rate 0.0] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import issuance as bench  # bench/issuance.py: its CodeMint and CSRs

STEPS: defaultdict[str, float] = defaultdict(float)


def _timed(owner: Any, name: str, label: str) -> None:
    """Wrap ``owner.name`` so that its CPU time adds up under ``label`` (skipped when the
    code measured, e.g. an older checkout through ``PYTHONPATH``, has no such step)."""
    inner: Callable[..., Any] | None = getattr(owner, name, None)
    if inner is None:
        return
    STEPS[label] = 0.0  # printed in this order

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            STEPS[label] += time.process_time() - start

    setattr(owner, name, wrapper)


def instrument() -> None:
    import ca.authority
    import ca.issuance
    import ca.lint
    import ca.store
    import ca.translog

    _timed(ca.authority.JointCA, "enroll", "JointCA.enroll (all of the below and the rest)")
    _timed(ca.authority, "parse_csr", "  parse and verify the CSR")
    _timed(ca.issuance.CertificateFactory, "issue", "  CertificateFactory.issue")
    _timed(ca.lint.CertificateLinter, "check", "    pkilint")
    _timed(ca.issuance, "sign_draft", "    sign with the CA key and verify")
    _timed(ca.store.SqlStore, "enrollment_facts", "  read: code, application, key holder")
    _timed(ca.authority, "_record", "  the certificate's record (hashes, DN string)")
    for name in ("find_code", "get_application", "key_holders"):  # before enrollment_facts
        _timed(ca.store.SqlTransaction, name, f"  read: {name}")
    for name in ("redeem_code", "add_certificate", "append_event"):
        _timed(ca.store.SqlTransaction, name, f"  write: {name}")
    _timed(ca.translog, "append_events", "    Merkle log append (in append_event)")
    try:
        import ca.groupwrite
    except ImportError:  # an older checkout: writes through the session above
        return
    w = ca.groupwrite.IssuanceWriter
    _timed(w, "_transaction", "  write: the group's transaction (all of the below)")
    _timed(w, "_write_one", "    code, certificate and event rows")
    _timed(ca.translog, "append_entries", "    Merkle log append")
    _timed(w, "_commit", "    COMMIT")
    _timed(w, "_sync_wal", "  fsync of the WAL (after the write lock)")  # before WalSync
    sync = getattr(ca.groupwrite, "WalSync", None)
    if sync is not None:
        _timed(sync, "sync", "  flush of the WAL (after the write lock)")
    _timed(ca.issuance.CertificateFactory, "check_key", "    the subject key's checks")
    _timed(ca.issuance.CertificateFactory, "tbs_builder", "    subject and extensions")
    _timed(ca.authority, "certificate_record", "  the certificate's record")
    import ca.api

    _timed(ca.api, "issued_json", "the answer's JSON document")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=400, help="enrollments measured (default 400)")
    p.add_argument("--lint-rate", default="1.0", help="EPORT_LINT_SAMPLE_RATE (default 1.0)")
    p.add_argument("--profile", action="store_true", help="also print cProfile's top functions")
    args = p.parse_args(argv)
    instrument()

    from ca.app import create_app
    from ca.config import CAConfig

    data_dir = Path(tempfile.mkdtemp(prefix="enroll-profile-"))
    warm = 20
    mint = bench.CodeMint(data_dir)
    codes = mint.codes(args.n + warm)
    mint.close()  # its connections run with synchronous=OFF; the app below opens its own
    csrs = bench.make_csrs(args.n + warm, "profile")
    cfg = CAConfig.load(
        {"data_dir": data_dir, "dev": True}, environ={"EPORT_LINT_SAMPLE_RATE": args.lint_rate}
    )
    client = create_app(cfg).test_client()
    bodies = [
        json.dumps({"code": code, "profile": "enterprise", "csr": csr})
        for code, csr in zip(codes, csrs, strict=True)
    ]

    def enroll(body: str) -> None:
        resp = client.post("/ca/v1/enroll", data=body, content_type="application/json")
        if resp.status_code != 201:
            raise SystemExit(f"enroll failed: {resp.status_code} {resp.get_data(as_text=True)}")

    for body in bodies[:warm]:
        enroll(body)
    for label in STEPS:
        STEPS[label] = 0.0
    profiler = cProfile.Profile(time.process_time) if args.profile else None
    batches: list[float] = []
    measured = bodies[warm:]
    if profiler:
        profiler.enable()
    for i in range(0, len(measured), 50):
        batch = measured[i : i + 50]
        start = time.process_time()
        for body in batch:
            enroll(body)
        batches.append((time.process_time() - start) / len(batch) * 1000)
    if profiler:
        profiler.disable()
    batches.sort()
    import ca

    print(f"CA code: {Path(ca.__file__).resolve().parent}")
    print(
        f"lint rate {args.lint_rate}: {len(measured)} enrollments in-process, CPU ms per "
        f"enrollment: best batch {batches[0]:.2f}, median {batches[len(batches) // 2]:.2f}"
        + (" (under cProfile)" if profiler else "")
    )
    for label, seconds in STEPS.items():
        if seconds > 0:  # steps the measured code does not take are left out
            print(f"  {label:55s} {seconds / len(measured) * 1000:6.3f} ms")
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
