"""The SQLAlchemy adapter of :class:`ca.quorum.CeremonyStore`, inside the CA's store.

A ceremony transaction is a :class:`ca.store.SqlStore` transaction, so the events it
appends go through the same sinks (the transparency log) and commit with it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ca.custody import RepeatedCustodian
from ca.custody_models import CeremonyRow, CeremonyShareRow
from ca.models import EventRow
from ca.quorum import Ceremony, CeremonyState, Operation
from ca.records import Event, EventType
from ca.store import SqlStore, SqlTransaction


def _ceremony(row: CeremonyRow, joined: list[str]) -> Ceremony:
    result = json.loads(row.result)
    done_by = result.pop("_joined", None)
    return Ceremony(
        id=row.id,
        operation=Operation(row.operation),
        params=json.loads(row.params),
        custody_id=row.custody_id,
        boot_id=row.boot_id,
        threshold=row.threshold,
        state=CeremonyState(row.state),
        opened_by=row.opened_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        joined=tuple(joined if done_by is None else done_by),
        completed_at=row.completed_at,
        result=result,
        secret=row.secret,
    )


class SqlCeremonyTx:
    def __init__(self, tx: SqlTransaction) -> None:
        self.tx = tx
        self.s = tx.s

    def insert_ceremony(self, c: Ceremony) -> bool:
        try:
            with self.s.begin_nested():
                self.s.add(
                    CeremonyRow(
                        id=c.id,
                        operation=c.operation.value,
                        params=json.dumps(dict(c.params), sort_keys=True),
                        custody_id=c.custody_id,
                        boot_id=c.boot_id,
                        threshold=c.threshold,
                        state=c.state.value,
                        opened_by=c.opened_by,
                        created_at=c.created_at,
                        expires_at=c.expires_at,
                        result="{}",
                    )
                )
        except IntegrityError:
            return False
        return True

    def get_ceremony(self, ceremony_id: str, *, for_update: bool = False) -> Ceremony | None:
        q = select(CeremonyRow).where(CeremonyRow.id == ceremony_id)
        if for_update:
            q = q.with_for_update()
        row = self.s.scalars(q).first()
        if row is None:
            return None
        members = self.s.scalars(
            select(CeremonyShareRow.member)
            .where(CeremonyShareRow.ceremony_id == ceremony_id)
            .order_by(CeremonyShareRow.received_at, CeremonyShareRow.member)
        ).all()
        return _ceremony(row, list(members))

    def add_share(
        self, ceremony_id: str, member: str, sealed: bytes, at: datetime.datetime
    ) -> None:
        try:
            with self.s.begin_nested():
                self.s.add(
                    CeremonyShareRow(
                        ceremony_id=ceremony_id, member=member, sealed=sealed, received_at=at
                    )
                )
        except IntegrityError:
            raise RepeatedCustodian(f"the custodian of {member} has already joined") from None

    def sealed_shares(self, ceremony_id: str) -> list[tuple[str, bytes]]:
        rows = self.s.execute(
            select(CeremonyShareRow.member, CeremonyShareRow.sealed).where(
                CeremonyShareRow.ceremony_id == ceremony_id
            )
        ).all()
        return [(str(m), bytes(b)) for m, b in rows]

    def finish(self, c: Ceremony) -> bool:
        result = dict(c.result, _joined=list(c.joined))
        res = self.s.execute(
            update(CeremonyRow)
            .where(CeremonyRow.id == c.id, CeremonyRow.state == CeremonyState.OPEN.value)
            .values(
                state=c.state.value,
                completed_at=c.completed_at,
                result=json.dumps(result, sort_keys=True),
                secret=c.secret,
            )
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return False
        self.s.execute(delete(CeremonyShareRow).where(CeremonyShareRow.ceremony_id == c.id))
        self.s.expire_all()
        return True

    def append_event(self, event: Event) -> int:
        return self.tx.append_event(event)

    def wipe_expired_shares(self, now: datetime.datetime) -> int:
        expired = select(CeremonyRow.id).where(
            CeremonyRow.state == CeremonyState.OPEN.value, CeremonyRow.expires_at <= now
        )
        res = self.s.execute(
            update(CeremonyShareRow)
            .where(CeremonyShareRow.ceremony_id.in_(expired), CeremonyShareRow.sealed != b"")
            .values(sealed=b"")
            .execution_options(synchronize_session=False)
        )
        return int(res.rowcount)  # type: ignore[attr-defined]


class SqlCeremonyStore:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @contextmanager
    def transaction(self) -> Iterator[SqlCeremonyTx]:
        with self.store.transaction() as tx:
            yield SqlCeremonyTx(tx)


def latest_reshare(store: SqlStore) -> dict[str, Any] | None:
    """The details of the last ``custody.reshared`` event in the log, if any."""
    with store.reading() as tx:
        details = tx.s.scalars(
            select(EventRow.details)
            .where(EventRow.type == EventType.CUSTODY_RESHARED.value)
            .order_by(EventRow.id.desc())
            .limit(1)
        ).first()
    if details is None:
        return None
    doc = json.loads(details)
    return doc if isinstance(doc, dict) else None


def ceremony_done(store: SqlStore, ceremony_id: str) -> bool:
    """Whether the database records the ceremony completed (its transaction committed)."""
    with store.reading() as tx:
        state = tx.s.scalars(select(CeremonyRow.state).where(CeremonyRow.id == ceremony_id)).first()
    return state == CeremonyState.DONE.value
