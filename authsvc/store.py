"""SQLAlchemy implementation of :class:`authsvc.service.AuthStore` (one short
transaction per call; uniqueness and single use enforced by the database)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Engine, delete, insert, literal_column, select, tuple_, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.sql.expression import ColumnClause

from authsvc.keys import StoredKey
from authsvc.models import (
    AuthEventRow,
    LoginFailureRow,
    OperatorRolesRow,
    RefreshTokenRow,
    RevokedTokenRow,
    SeenAssertionRow,
    SessionRow,
    SigningKeyRow,
)
from authsvc.principal import Principal
from authsvc.service import AuthEvent, RefreshRecord, SessionRecord
from ca.policy import SubjectClass
from ca.store import DbapiReads, reading, upsert, utc_from_db, writing


class SqlAuthStore:
    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory
        self.dbapi = DbapiReads(session_factory)

    def _read(self) -> AbstractContextManager[Session]:
        return reading(self.session_factory)

    def _tx(self) -> AbstractContextManager[Session]:
        return writing(self.session_factory)

    # -- replay ---------------------------------------------------------------------------

    def remember(self, jti: str, expires_at: datetime.datetime) -> bool:
        s = self.session_factory()
        try:
            # A Core INSERT: the primary key is the single-use check; the ORM's unit of
            # work would cost more than the write itself on this per-request path.
            s.execute(insert(SeenAssertionRow).values(jti=jti, expires_at=expires_at))
            s.commit()
            return True
        except IntegrityError:
            s.rollback()
            return False
        except BaseException:
            s.rollback()
            raise

    # -- sessions -------------------------------------------------------------------------

    def add_session(self, rec: SessionRecord, refresh_hash: str) -> None:
        p = rec.principal
        with self._tx() as s:
            s.add(
                SessionRow(
                    sid=rec.sid,
                    subject=p.subject,
                    subject_class=p.subject_class.value,
                    uscc=p.uscc,
                    operator_id=p.operator_id,
                    agency_id=p.agency_id or p.service_host,
                    name=p.name,
                    cert_serial=rec.cert_serial,
                    cert_sha256=rec.cert_sha256,
                    cert_der=rec.cert_der,
                    client_addr=rec.client_addr,
                    created_at=rec.created_at,
                    expires_at=rec.expires_at,
                )
            )
            s.add(RefreshTokenRow(token_hash=refresh_hash, sid=rec.sid, issued_at=rec.created_at))

    def get_session(self, sid: str) -> SessionRecord | None:
        with self._read() as s:
            row = s.get(SessionRow, sid)
            return _session(row) if row else None

    def end_session(self, sid: str, reason: str, at: datetime.datetime) -> bool:
        with self._tx() as s:
            res = s.execute(
                update(SessionRow)
                .where(SessionRow.sid == sid, SessionRow.ended_at.is_(None))
                .values(ended_at=at, end_reason=reason)
                .execution_options(synchronize_session=False)
            )
            return bool(res.rowcount == 1)  # type: ignore[attr-defined]

    def reauthenticated(self, sid: str, at: datetime.datetime) -> bool:
        with self._tx() as s:
            res = s.execute(
                update(SessionRow)
                .where(SessionRow.sid == sid, SessionRow.ended_at.is_(None))
                .values(authenticated_at=at)
                .execution_options(synchronize_session=False)
            )
            return bool(res.rowcount == 1)  # type: ignore[attr-defined]

    def open_session_serials(self, now: datetime.datetime) -> list[tuple[str, str]]:
        """(sid, certificate serial) of every open session: two short columns, no blobs."""
        with self._read() as s:
            q = select(SessionRow.sid, SessionRow.cert_serial).where(
                SessionRow.ended_at.is_(None), SessionRow.expires_at > now
            )
            return [(r[0], r[1]) for r in s.execute(q)]

    def token_state(
        self, jti: str, sid: str
    ) -> tuple[bool, tuple[datetime.datetime | None, datetime.datetime, str] | None]:
        """(is ``jti`` revoked, (ended_at, expires_at, cert x5t#S256) of session ``sid``):
        two primary-key reads on one pooled DBAPI connection, outside any write lock. The
        validation hot path; SQLAlchemy's ORM costs far more than the reads."""
        revoked_row, row = self.dbapi.fetch(
            ("SELECT 1 FROM auth_revoked_tokens WHERE jti = ?", (jti,)),
            ("SELECT ended_at, expires_at, cert_sha256 FROM auth_sessions WHERE sid = ?", (sid,)),
        )
        revoked = revoked_row is not None
        if row is None:
            return revoked, None
        return revoked, (utc_from_db(row[0]), utc_from_db(row[1]) or _EPOCH, str(row[2]))

    # -- refresh tokens -------------------------------------------------------------------

    def get_refresh(self, token_hash: str) -> RefreshRecord | None:
        with self._read() as s:
            row = s.get(RefreshTokenRow, token_hash)
            if row is None:
                return None
            return RefreshRecord(
                row.token_hash, row.sid, row.issued_at, row.used_at, row.successor_hash
            )

    def rotate_refresh(self, old_hash: str, new_hash: str, sid: str, at: datetime.datetime) -> bool:
        with self._tx() as s:
            res = s.execute(
                update(RefreshTokenRow)
                .where(RefreshTokenRow.token_hash == old_hash, RefreshTokenRow.used_at.is_(None))
                .values(used_at=at, successor_hash=new_hash)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return False
            s.add(RefreshTokenRow(token_hash=new_hash, sid=sid, issued_at=at))
            return True

    # -- access token revocation ----------------------------------------------------------

    def revoke_jti(self, jti: str, expires_at: datetime.datetime) -> bool:
        with self._tx() as s:
            # ON CONFLICT DO NOTHING: one token revoked on two hosts at once is stored
            # once, and only the request that stored it says so (its event is logged once).
            values = {"jti": jti, "expires_at": expires_at}
            res = s.execute(upsert(s, RevokedTokenRow, values, ["jti"]).do_nothing())
            return bool(res.rowcount == 1)  # type: ignore[attr-defined]

    def is_revoked(self, jti: str) -> bool:
        with self._read() as s:
            return s.get(RevokedTokenRow, jti) is not None

    # -- roles ----------------------------------------------------------------------------

    def get_roles(self, uscc: str, operator_id: str) -> frozenset[str]:
        with self._read() as s:
            row = s.get(OperatorRolesRow, (uscc, operator_id))
            return frozenset(json.loads(row.roles)) if row else frozenset()

    def set_roles(
        self,
        uscc: str,
        operator_id: str,
        roles: frozenset[str],
        by: str,
        at: datetime.datetime,
        event: AuthEvent | None = None,
    ) -> None:
        values = {
            "uscc": uscc,
            "operator_id": operator_id,
            "roles": json.dumps(sorted(roles)),
            "granted_by": by,
            "granted_at": at,
        }
        with self._tx() as s:
            # One upsert, then the event in the same transaction: an operator's first
            # grants on two hosts at once do not collide on the primary key (HTTP 500),
            # and the upsert's row lock orders the grants, so the last roles.granted
            # event (by id) is the grant the operator holds: the last writer wins.
            stmt = upsert(s, OperatorRolesRow, values, ["uscc", "operator_id"])
            s.execute(stmt.do_update(["roles", "granted_by", "granted_at"]))
            if event is not None:
                s.add(event_row(event))

    # -- failed logins --------------------------------------------------------------------

    def failures(
        self, key: str, now: datetime.datetime, window: datetime.timedelta
    ) -> tuple[int, datetime.datetime]:
        with self._read() as s:
            row = s.get(LoginFailureRow, key)
            if row is None or now - row.window_start > window:
                return 0, now
            return row.count, row.window_start + window

    def record_failure(self, key: str, now: datetime.datetime, window: datetime.timedelta) -> None:
        for attempt in (1, 2):
            try:
                with self._tx() as s:
                    row = s.get(LoginFailureRow, key, with_for_update=True, populate_existing=True)
                    if row is None:
                        s.add(LoginFailureRow(key=key, window_start=now, count=1))
                    elif now - row.window_start > window:
                        row.window_start = now
                        row.count = 1
                    else:
                        row.count += 1
                return
            except IntegrityError:
                # A key's first failure has no row to lock: another process (another
                # host) inserted it meanwhile. It exists now; lock it and count this one.
                if attempt == 2:
                    raise

    # -- events ---------------------------------------------------------------------------

    def add_event(self, ev: AuthEvent) -> None:
        with self._tx() as s:
            s.add(event_row(ev))

    def events(self, *, subject: str | None, limit: int, after_id: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events that follow event ``after_id`` in (writing transaction,
        id) order; on PostgreSQL only those whose writer, and every transaction that
        began writing before it, have ended.

        Why: on PostgreSQL ids come from a sequence at insert, not at commit, so paging
        by id alone skips an event whose transaction commits after a later id's. A
        transaction still writing when this page is read has a transaction id at or
        above the snapshot's xmin, and so has every one that begins later: whatever
        this page leaves out comes after its last event in this order, and a consumer
        that asks ``after`` that event's id next misses nothing. SQLite writes one
        transaction at a time and its ids follow commits: there every writer_xact is 0
        and the order is the id's. ``after_id`` names an event by its id; an id that
        is no event's (0, one past the last) stands after the event before it."""
        with self._read() as s:
            writer = s.scalar(
                select(AuthEventRow.writer_xact)
                .where(AuthEventRow.id <= after_id)
                .order_by(AuthEventRow.id.desc())
                .limit(1)
            )
            position = tuple_(AuthEventRow.writer_xact, AuthEventRow.id)
            q = select(AuthEventRow).where(
                position > tuple_(-1 if writer is None else writer, after_id)
            )
            if s.get_bind().dialect.name == "postgresql":
                q = q.where(AuthEventRow.writer_xact < _WRITING_HORIZON)
            if subject:
                q = q.where(AuthEventRow.subject == subject)
            rows = s.scalars(q.order_by(AuthEventRow.writer_xact, AuthEventRow.id).limit(limit))
            return [
                {
                    "id": r.id,
                    "at": r.at.isoformat().replace("+00:00", "Z"),
                    "type": r.type,
                    "subject": r.subject,
                    "sid": r.sid,
                    "cert_serial": r.cert_serial,
                    "client_addr": r.client_addr,
                    "service": r.service,
                    "detail": json.loads(r.detail),
                }
                for r in rows
            ]

    def cleanup(self, now: datetime.datetime) -> None:
        with self._tx() as s:
            s.execute(delete(SeenAssertionRow).where(SeenAssertionRow.expires_at < now))
            s.execute(delete(RevokedTokenRow).where(RevokedTokenRow.expires_at < now))

    # -- signing keys (authsvc.keys.KeyStore) ---------------------------------------------

    def list_keys(self) -> list[StoredKey]:
        with self._read() as s:
            return [
                _key(r) for r in s.scalars(select(SigningKeyRow).order_by(SigningKeyRow.created_at))
            ]

    def rotate_locked(self, mutate: Callable[[list[StoredKey]], list[StoredKey]]) -> None:
        """Change the signing keys under a lock: the rows' locks, and when there are none
        yet (the first start) SERIALIZABLE isolation on PostgreSQL, so that two hosts
        first started at once on an empty database do not both add a first active key;
        the one refused (SQLSTATE 40001) runs again and finds the other's keys."""
        for attempt in range(1, 6):
            try:
                with self._tx() as s:
                    real = s() if isinstance(s, scoped_session) else s
                    if not real.in_transaction() and real.get_bind().dialect.name != "sqlite":
                        # SQLite's BEGIN IMMEDIATE already makes this the only writer.
                        real.connection(execution_options={"isolation_level": "SERIALIZABLE"})
                    rows = list(s.scalars(select(SigningKeyRow).with_for_update()))
                    before = {r.kid: r for r in rows}
                    after = mutate([_key(r) for r in rows])
                    keep = {k.kid for k in after}
                    for kid, row in before.items():
                        if kid not in keep:
                            s.delete(row)
                    for k in after:
                        existing = before.get(k.kid)
                        if existing is not None:
                            row = existing
                        else:
                            row = SigningKeyRow(
                                kid=k.kid,
                                public_jwk=json.dumps(k.public_jwk),
                                private_pem=k.private_pem,
                                created_at=k.created_at,
                            )
                            s.add(row)
                        row.state = k.state
                        row.activated_at = k.activated_at
                        row.retired_at = k.retired_at
                        row.unpublish_at = k.unpublish_at
                return
            except OperationalError as exc:
                if getattr(exc.orig, "pgcode", None) != "40001" or attempt == 5:
                    raise


def settle_copied_events(engine: Engine) -> int:
    """PostgreSQL: give writer_xact 0 to the events written by transactions of another
    database server (a ``pg_restore`` into a new cluster, a logical copy), whose ids are at
    or past this server's next one; how many. Left as they are, they would stay held back
    until this server's ids passed theirs, and events written here would page before them.
    Run at every start (:func:`authsvc.app.upgrade`): usually it finds none, by index."""
    if engine.dialect.name != "postgresql":
        return 0
    with engine.begin() as conn:
        res = conn.execute(
            update(AuthEventRow)
            .where(AuthEventRow.writer_xact >= _NEXT_WRITER)
            .values(writer_xact=0)
        )
        return int(res.rowcount)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_WRITING_HORIZON: ColumnClause[int] = literal_column(
    "(pg_snapshot_xmin(pg_current_snapshot())::text)::bigint"
)
"""PostgreSQL: the oldest transaction still running when the statement's snapshot was
taken; every transaction below it has ended (committed or rolled back)."""
_NEXT_WRITER: ColumnClause[int] = literal_column(
    "(pg_snapshot_xmax(pg_current_snapshot())::text)::bigint"
)
"""PostgreSQL: the id the next transaction to write will take, or above; no transaction of
this server wrote with an id at or past it."""


def event_row(ev: AuthEvent) -> AuthEventRow:
    return AuthEventRow(
        at=ev.at,
        type=ev.type,
        subject=ev.subject,
        sid=ev.sid,
        cert_serial=ev.cert_serial,
        client_addr=ev.client_addr,
        service=ev.service,
        detail=json.dumps(ev.detail, sort_keys=True, ensure_ascii=False),
    )


def _key(r: SigningKeyRow) -> StoredKey:
    return StoredKey(
        kid=r.kid,
        state=r.state,
        public_jwk=json.loads(r.public_jwk),
        private_pem=r.private_pem,
        created_at=r.created_at,
        activated_at=r.activated_at,
        retired_at=r.retired_at,
        unpublish_at=r.unpublish_at,
    )


def _session(row: SessionRow) -> SessionRecord:
    cls = SubjectClass(row.subject_class)
    principal = Principal(
        subject=row.subject,
        subject_class=cls,
        name=row.name,
        uscc=row.uscc,
        operator_id=row.operator_id,
        agency_id=row.agency_id if cls is not SubjectClass.SERVICE else None,
        service_host=row.agency_id if cls is SubjectClass.SERVICE else None,
    )
    return SessionRecord(
        sid=row.sid,
        principal=principal,
        cert_serial=row.cert_serial,
        cert_sha256=row.cert_sha256,
        cert_der=row.cert_der,
        client_addr=row.client_addr,
        created_at=row.created_at,
        expires_at=row.expires_at,
        ended_at=row.ended_at,
        end_reason=row.end_reason,
        authenticated_at=row.authenticated_at,
    )
