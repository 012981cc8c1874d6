"""The pre-signed OCSP response a refresh stores never replaces one a status change stored
meanwhile: a worker that read a certificate's old "good" response and its status, then
signed a fresh "good", must not overwrite the "revoked" response a revocation committed
while it signed (it would be served as current until the next refresh, hours later).

On PostgreSQL the two transactions really interleave (read committed: the refresh reads,
the revocation commits, the refresh writes); SQLite's writers take the write lock first, so
there only the conditional write itself is checked."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import sessionmaker

from ca.db import make_engine, upgrade
from ca.status import RESIGN
from ca.store import SqlStore
from tests.conftest import Postgres

SERIAL = 0x5EED
T0 = datetime.datetime(2026, 11, 27, 8, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)


@contextlib.contextmanager
def _store(url: str) -> Iterator[SqlStore]:
    upgrade(url)
    engine = make_engine(url)
    try:
        yield SqlStore(sessionmaker(engine, expire_on_commit=False))
    finally:
        engine.dispose()


def _pg_url(pg: Postgres, tmp_path_factory: pytest.TempPathFactory) -> str:
    return pg.createdb(f"eport_ocsp_store_{tmp_path_factory.mktemp('db').name.lower()}")


@pytest.fixture(params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('ocsp-store') / 'eport.db'}"
    else:
        url = _pg_url(request.getfixturevalue("postgres"), tmp_path_factory)
    with _store(url) as s:
        yield s


def stored(store: SqlStore) -> tuple[bytes, datetime.datetime]:
    with store.transaction() as tx:
        cached = tx.cached_ocsp(SERIAL)
    assert cached is not None
    return bytes(cached[0]), cached[1]


def put(store: SqlStore, der: bytes, at: datetime.datetime, **kw: object) -> None:
    with store.transaction() as tx:
        tx.store_ocsp(SERIAL, "enterprise", der, at, at + 24 * HOUR, **kw)  # type: ignore[arg-type]


def test_a_refresh_replaces_only_the_response_it_read(store: SqlStore) -> None:
    put(store, b"good, signed at T0", T0)
    # A refresh based on the response of T0 replaces it.
    put(store, b"good, signed at T0+12h", T0 + 12 * HOUR, superseding=T0)
    assert stored(store) == (b"good, signed at T0+12h", T0 + 12 * HOUR)
    # A refresh based on a response no longer stored changes nothing.
    put(store, b"stale refresh", T0 + 13 * HOUR, superseding=T0)
    assert stored(store) == (b"good, signed at T0+12h", T0 + 12 * HOUR)
    # A status change replaces whatever is stored.
    put(store, b"revoked", T0 + 14 * HOUR)
    assert stored(store) == (b"revoked", T0 + 14 * HOUR)


def test_a_revocation_committed_during_a_refresh_stays(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with _store(_pg_url(postgres, tmp_path_factory)) as store:
        refresh_racing_a_revocation(store)


def refresh_racing_a_revocation(store: SqlStore) -> None:
    put(store, b"good, signed at T0", T0)
    with store.transaction() as refresh:  # reads the old response, then signs for a while
        cached = refresh.cached_ocsp(SERIAL)
        assert cached is not None and cached[1] == T0
        put(store, b"revoked", T0 + HOUR)  # the revocation commits meanwhile
        refresh.store_ocsp(
            SERIAL,
            "enterprise",
            b"good, signed from the status read before the revocation",
            T0 + 2 * HOUR,
            T0 + 26 * HOUR,
            superseding=cached[1],
        )
    assert stored(store) == (b"revoked", T0 + HOUR)


def cease(store: SqlStore) -> None:
    """What a cessation's transaction stores for each operator: the placeholder response."""
    with store.transaction() as tx:
        tx.store_ocsp_many([(SERIAL, "enterprise", b"", RESIGN, RESIGN)])


def test_a_cessations_placeholder_is_replaced_only_by_a_new_signature(store: SqlStore) -> None:
    """A cessation stores placeholders (no response, always due) for its operators and signs
    their responses after the commit. A refresh based on the response read before, or a
    first answer, leaves the placeholder; the signing after the commit (or one on demand)
    replaces it once, and a later batch based on the placeholder changes nothing."""
    put(store, b"good, signed at T0", T0)
    cease(store)
    assert stored(store) == (b"", RESIGN)
    put(store, b"stale refresh", T0 + 13 * HOUR, superseding=T0)
    put(store, b"first answer", T0 + 13 * HOUR, replace=False)
    assert stored(store) == (b"", RESIGN)
    put(store, b"revoked, signed on demand", T0 + 14 * HOUR, superseding=RESIGN)
    assert stored(store) == (b"revoked, signed on demand", T0 + 14 * HOUR)
    with store.transaction() as tx:  # the batch after the commit, late: it leaves that one
        batch = [(SERIAL, "enterprise", b"late batch", T0 + 15 * HOUR, T0 + 39 * HOUR)]
        tx.store_ocsp_many(batch, superseding=RESIGN)
    assert stored(store) == (b"revoked, signed on demand", T0 + 14 * HOUR)


def test_a_cessation_committed_during_a_refresh_keeps_its_placeholder(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with _store(_pg_url(postgres, tmp_path_factory)) as store:
        put(store, b"good, signed at T0", T0)
        with store.transaction() as refresh:  # reads the old response, then signs
            cached = refresh.cached_ocsp(SERIAL)
            assert cached is not None and cached[1] == T0
            cease(store)  # the cessation commits meanwhile
            refresh.store_ocsp(
                SERIAL,
                "enterprise",
                b"good, signed from the status read before the cessation",
                T0 + 2 * HOUR,
                T0 + 26 * HOUR,
                superseding=cached[1],
            )
        assert stored(store) == (b"", RESIGN)
