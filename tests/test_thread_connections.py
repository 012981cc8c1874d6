"""ca.store.ThreadConnections: one DBAPI connection per thread of a SQLite file, out of
the pool, made anew after a fork or a dispose; and DbapiReads on them reading what other
connections committed (no read snapshot kept between reads)."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from ca.store import DbapiReads, ThreadConnections, configure_engine


def _engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    configure_engine(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    return engine


def test_one_connection_per_thread_out_of_the_pool(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    conns = ThreadConnections(engine)
    mine = conns.get()
    assert conns.get() is mine  # the same one on every call of this thread
    assert mine.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # the pool's hook ran
    other: list[object] = []
    t = threading.Thread(target=lambda: other.append(conns.get()))
    t.start()
    t.join()
    assert other and other[0] is not mine
    assert engine.pool.checkedout() == 0  # detached: the pool does not count them
    engine.dispose()


def test_a_thread_that_ends_takes_its_connection_with_it(tmp_path: Path) -> None:
    """A server that starts a thread per request (werkzeug's) must not pile connections
    up: each is closed when its thread ends."""
    import gc

    engine = _engine(tmp_path)
    conns = ThreadConnections(engine)
    seen: list[object] = []
    for _ in range(5):
        t = threading.Thread(target=lambda: seen.append(conns.get()))
        t.start()
        t.join()
    gc.collect()
    for conn in seen:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")  # type: ignore[attr-defined]
    mine = conns.get()
    assert mine.execute("SELECT 1").fetchone() == (1,)  # this thread's lives on
    engine.dispose()


def test_dispose_closes_them_and_the_next_get_makes_a_new_one(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    conns = ThreadConnections(engine)
    first = conns.get()
    engine.dispose()
    try:
        first.execute("SELECT 1")
        closed = False
    except Exception:
        closed = True
    assert closed
    second = conns.get()
    assert second is not first and second.execute("SELECT 1").fetchone() == (1,)
    conns.drop()
    assert conns.get() is not second
    engine.dispose()


def test_a_forked_child_makes_its_own(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    conns = ThreadConnections(engine)
    parent = conns.get()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new connection, which works
        ok = conns.get() is not parent and conns.get().execute("SELECT 1").fetchone() == (1,)
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert parent.execute("SELECT 1").fetchone() == (1,)  # the parent's still works
    engine.dispose()


def test_reads_see_what_others_committed_since(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    reads = DbapiReads(lambda: None)  # type: ignore[arg-type, return-value]
    reads.bind(engine)
    query = ("SELECT v FROM t WHERE k = ?", (1,))
    assert reads.fetch(query) == [None]
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1, 'one')")
    assert reads.fetch(query, ("SELECT count(*) FROM t", ())) == [("one",), (1,)]
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE t SET v = 'uno' WHERE k = 1")
    assert reads.fetch(query) == [("uno",)]
    engine.dispose()
