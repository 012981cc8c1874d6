"""The issuance benchmark's in-process parts still run against today's schema.

``make bench`` is not part of the suite (its numbers need a quiet machine), but its floor
replays the CA's own SQL statements (``ca.groupwrite``, ``ca.store``, ``ca.translog``) with
its own parameters, so a migration that changes one stops the benchmark, unnoticed until
someone runs it. This runs those parts on a handful of enrollments: they must store what
they say and leave a log whose root the auditor's code recomputes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    sys.path.insert(0, str(BENCH))
    try:
        import issuance

        mint = issuance.CodeMint(tmp_path / "data")
        try:
            yield issuance, mint
        finally:
            mint.close()
    finally:
        sys.path.remove(str(BENCH))


def test_the_floor_and_the_in_process_enrollment_run_on_the_current_schema(
    bench: tuple[Any, Any],
) -> None:
    issuance, mint = bench
    certs_before, events_before = mint.stored()
    per_enrollment, _ = issuance.enroll_cpu(mint, 3)
    assert per_enrollment > 0
    certs, events = mint.stored()
    assert certs == certs_before + 3 + 20  # 20 warm-up enrollments, then the 3 measured
    assert events == events_before + 3 + 20

    floor = issuance.floor_cpu(mint, 3)  # raises if the log's root does not recompute
    assert floor.csr > 0 and floor.sign > 0 and floor.verify > 0 and floor.store > floor.flush
