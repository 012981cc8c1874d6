"""The hierarchy record of :mod:`ca.crosshost` in the CA's database (migration 0007).

Portable SQL: the head row (id = 1) is made by an insert that the primary key lets only
one host win, and raised by an ``UPDATE ... WHERE generation = <read>`` that only one
host's publication passes; the file rows are replaced in that same transaction.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ca.crosshost import Head, HierarchySync, Outcome, Published, host_lock
from ca.models import HierarchyFileRow, HierarchyHeadRow
from ca.store import READ_ONLY

_H: Table = HierarchyHeadRow.__table__  # type: ignore[assignment]
_F: Table = HierarchyFileRow.__table__  # type: ignore[assignment]


def _head(conn: Connection, *, lock: bool = False) -> Head | None:
    q = select(_H.c.generation, _H.c.responders_token).where(_H.c.id == 1)
    row = conn.execute(q.with_for_update() if lock else q).first()
    return None if row is None else Head(int(row[0]), row[1])


def _files(conn: Connection) -> dict[str, Published]:
    rows = conn.execute(select(_F.c.path, _F.c.sha256, _F.c.data)).all()
    return {str(p): Published(str(s), bytes(d) if d is not None else None) for p, s, d in rows}


def _publish(
    conn: Connection,
    after: int | None,
    files: Mapping[str, Published],
    by: str,
    at: datetime.datetime,
) -> int | None:
    """In ``conn``'s transaction: the record replaced by ``files`` as the generation after
    ``after`` (the head row made when ``after`` is None), or None if it is no longer at
    ``after``. A head row another host made first raises ``IntegrityError``."""
    gen = 1 if after is None else after + 1
    if after is None:
        conn.execute(
            insert(_H).values(id=1, generation=gen, published_at=at, published_by=by[:120])
        )
    else:
        done = conn.execute(
            update(_H)
            .where(_H.c.id == 1, _H.c.generation == after)
            .values(generation=gen, published_at=at, published_by=by[:120])
        )
        if done.rowcount != 1:
            return None
    conn.execute(delete(_F))
    if files:
        conn.execute(
            insert(_F),
            [{"path": k, "sha256": v.sha256, "data": v.data} for k, v in files.items()],
        )
    return gen


class SqlHierarchyRecord:
    """The record, each call in a transaction of its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def head(self) -> Head | None:
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            return _head(conn)

    def files(self) -> dict[str, Published]:
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            return _files(conn)

    def publish(
        self, after: int | None, files: Mapping[str, Published], by: str, at: datetime.datetime
    ) -> int | None:
        try:
            with self.engine.begin() as conn:
                return _publish(conn, after, files, by, at)
        except IntegrityError:  # another host made the head row first
            return None

    def force_responders(self, token: str, at: datetime.datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(_H)
                .where(_H.c.id == 1)
                .values(responders_token=token, responders_forced_at=at)
            )


class TxHierarchyRecord:
    """The record read and published inside a transaction someone else commits (a root
    ceremony's, :meth:`ca.crosshost.HierarchySync.publish_in_ceremony`): the head row is
    read with a row lock (PostgreSQL; SQLite's writer holds the database), so no other
    host publishes between the read and the conditional update."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def head(self) -> Head | None:
        return _head(self.conn, lock=True)

    def files(self) -> dict[str, Published]:
        return _files(self.conn)

    def publish(
        self, after: int | None, files: Mapping[str, Published], by: str, at: datetime.datetime
    ) -> int | None:
        if after is None:  # never asked: a database without a record is published at start
            return None
        return _publish(self.conn, after, files, by, at)

    def force_responders(self, token: str, at: datetime.datetime) -> None:
        raise NotImplementedError("a forced responder renewal is not part of a ceremony")


def host_name(data_dir: Path) -> str:
    """How the record names a host: its host name and data directory."""
    import socket

    return f"{socket.gethostname()} {data_dir}"


def hierarchy_sync(
    engine: Engine, data_dir: Path, clock: Callable[[], datetime.datetime]
) -> HierarchySync:
    """This host's comparison with the record in ``engine``'s database; the host is named
    in the record by its host name and data directory."""
    return HierarchySync(
        data_dir, SqlHierarchyRecord(engine), host=host_name(data_dir), clock=clock
    )


def check_at_start(url: str, data_dir: Path) -> Outcome:
    """``eport serve``'s comparison before any worker starts (:mod:`ca.crosshost`)."""
    from ca.db import make_engine

    engine = make_engine(url)
    try:
        with host_lock(data_dir):
            return hierarchy_sync(
                engine, data_dir, lambda: datetime.datetime.now(datetime.UTC)
            ).check()
    finally:
        engine.dispose()
