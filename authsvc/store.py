"""SQLAlchemy implementation of :class:`authsvc.service.AuthStore` (one short
transaction per call; uniqueness and single use enforced by the database)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    delete,
    exists,
    insert,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
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
from authsvc.oidc_models import BrowserSessionRow, SessionClientRow
from authsvc.principal import Principal
from authsvc.service import (
    IDENTITY_CLAIMS,
    AuthEvent,
    RefreshRecord,
    Rotation,
    SessionRecord,
    SessionState,
)
from ca.policy import SubjectClass
from ca.store import DbapiReads, SchemaFence, reading, upsert, utc_from_db, writing

MAX_SESSIONS_PER_SUBJECT = 100
"""Open SSO sessions one subject may hold; a login beyond it ends the subject's oldest
(:meth:`SqlAuthStore.add_session`). Google's OAuth does the same with 100 refresh tokens
per account and client: a holder who lost a session file can always log in again,
while a loop of logins cannot grow the live sessions without bound."""
SESSION_RETENTION = datetime.timedelta(days=1)
"""How long a session is kept after it ended or expired (:meth:`SqlAuthStore.cleanup`).
Nothing needs it for long: a token of a session whose row is gone is refused as "the
session has ended" and its refresh token as unknown, as they would be with the row; a
day keeps the plainer answers ("has expired", ``eport logout`` ending nothing) for a
client that comes back the next morning."""
PURGE_BATCH = 500
"""Rows deleted per write transaction by :meth:`SqlAuthStore.cleanup`: the write lock
(all of SQLite) is held for milliseconds, and logins queue behind no long delete."""
REVOCATION_LEEWAY = datetime.timedelta(seconds=600)
"""How long past its token's ``exp`` a revocation is kept when :meth:`SqlAuthStore.cleanup`
is not told the clock leeway: the most ``EPORT_AUTH_LEEWAY_SECONDS`` allows, so no
configured leeway outlasts it."""
PURGE_BATCHES = 20
"""Batches per table per :meth:`SqlAuthStore.cleanup` call: a backlog (the first run after
an upgrade) is worked off over several calls, and the sweeper that calls it keeps its
2-second beat for revoked certificates."""


class SqlAuthStore:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        max_sessions_per_subject: int = MAX_SESSIONS_PER_SUBJECT,
    ) -> None:
        self.session_factory = session_factory
        self.dbapi = DbapiReads(session_factory)
        self.max_sessions_per_subject = max_sessions_per_subject
        self._fence = SchemaFence(self.dbapi)

    def check_schema(self) -> None:
        """Refuse to write (503 ``schema-upgraded``) once the token service's database is
        at another release's schema revision, as the CA's store does: an old server left
        running wrote sessions, refresh tokens and keys by its own rules (PostgreSQL
        probe). Re-read at most every two seconds; reads are never refused."""
        from authsvc.app import SCHEMA_HEAD, VERSION_TABLE

        self._fence.check(VERSION_TABLE, SCHEMA_HEAD)

    def _read(self) -> AbstractContextManager[Session]:
        return reading(self.session_factory)

    def ping(self) -> None:
        """One trivial read: raises what the database raises when it cannot be used."""
        with self._read() as session:
            session.execute(text("SELECT 1"))

    def _tx(self) -> AbstractContextManager[Session]:
        self.check_schema()
        return writing(self.session_factory)

    # -- replay ---------------------------------------------------------------------------

    def remember(self, jti: str, expires_at: datetime.datetime) -> bool:
        self.check_schema()
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

    def add_session(
        self, rec: SessionRecord, refresh_hash: str, event: AuthEvent | None = None
    ) -> None:
        """Store a new session and its first refresh token, and ``event`` (its ``login``)
        in the same transaction: a process killed between two transactions left sessions
        with no ``login`` in the audit record (findings 19 F4). If its subject would then
        hold more than ``max_sessions_per_subject`` open sessions, the oldest end ("too
        many sessions", a ``session.ended`` event each) in the same transaction: a
        certificate holder logging in in a loop opened sessions without limit (978 in
        35 s, findings 15 F4). Ended, not refused: a refusal would lock out a holder whose
        sessions were lost with a laptop until they expire. Their clients get back-channel
        logouts as for any ended session.

        The logins of one subject count its open sessions one at a time: on PostgreSQL
        under a transaction-scoped advisory lock on the subject (SQLite lets one
        transaction write at a time already). Without it, each of N logins at once read
        the same sessions under READ COMMITTED and ended the same oldest one, leaving the
        subject up to N - 1 over (121 open after 240 parallel logins, findings 19 F3)."""
        p = rec.principal
        with self._tx() as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(
                    text("SELECT pg_advisory_xact_lock(:space, :key)"),
                    {"space": SUBJECT_LOCK_SPACE, "key": _lock_key(p.subject)},
                )
            oldest = s.execute(
                select(SessionRow.sid, SessionRow.cert_serial)
                .where(
                    SessionRow.subject == p.subject,
                    SessionRow.ended_at.is_(None),
                    SessionRow.expires_at > rec.created_at,
                )
                .order_by(SessionRow.created_at.desc(), SessionRow.sid.desc())
                .offset(max(self.max_sessions_per_subject - 1, 0))
            ).all()
            for sid, serial in oldest:
                ended = s.execute(
                    update(SessionRow)
                    .where(SessionRow.sid == sid, SessionRow.ended_at.is_(None))
                    .values(ended_at=rec.created_at, end_reason=TOO_MANY_SESSIONS)
                    .execution_options(synchronize_session=False)
                )
                if ended.rowcount == 1:  # type: ignore[attr-defined]
                    s.add(
                        event_row(
                            AuthEvent(
                                "session.ended",
                                rec.created_at,
                                p.subject,
                                sid,
                                serial,
                                rec.client_addr,
                                detail={
                                    "reason": TOO_MANY_SESSIONS,
                                    "limit": self.max_sessions_per_subject,
                                },
                            )
                        )
                    )
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
            if event is not None:
                s.add(event_row(event))

    def get_session(self, sid: str) -> SessionRecord | None:
        with self._read() as s:
            row = s.get(SessionRow, sid)
            return _session(row) if row else None

    def end_session(
        self, sid: str, reason: str, at: datetime.datetime, event: AuthEvent | None = None
    ) -> bool:
        """End the session if still open, and add ``event`` with the end in one transaction
        (only when this call ended it): a crash between two transactions lost the event
        (findings 19 F4)."""
        with self._tx() as s:
            res = s.execute(
                update(SessionRow)
                .where(SessionRow.sid == sid, SessionRow.ended_at.is_(None))
                .values(ended_at=at, end_reason=reason)
                .execution_options(synchronize_session=False)
            )
            ended = bool(res.rowcount == 1)  # type: ignore[attr-defined]
            if ended and event is not None:
                s.add(event_row(event))
            return ended

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

    def token_state(self, jti: str, sid: str) -> tuple[bool, SessionState | None]:
        """(is ``jti`` revoked, the state of session ``sid``): two primary-key reads on one
        pooled DBAPI connection, outside any write lock. The validation hot path;
        SQLAlchemy's ORM costs far more than the reads."""
        revoked_row, row = self.dbapi.fetch(
            ("SELECT 1 FROM auth_revoked_tokens WHERE jti = ?", (jti,)),
            (
                "SELECT ended_at, expires_at, cert_sha256, subject, subject_class, name, uscc, "
                "operator_id, agency_id FROM auth_sessions WHERE sid = ?",
                (sid,),
            ),
        )
        revoked = revoked_row is not None
        if row is None:
            return revoked, None
        identity = dict(zip(IDENTITY_CLAIMS, row[3:], strict=True))
        return revoked, (utc_from_db(row[0]), utc_from_db(row[1]) or _EPOCH, str(row[2]), identity)

    # -- refresh tokens -------------------------------------------------------------------

    def get_refresh(self, token_hash: str) -> RefreshRecord | None:
        with self._read() as s:
            row = s.get(RefreshTokenRow, token_hash)
            if row is None:
                return None
            return RefreshRecord(
                row.token_hash, row.sid, row.issued_at, row.used_at, row.successor_hash
            )

    def rotate_refresh(
        self,
        old_hash: str,
        new_hash: str,
        sid: str,
        at: datetime.datetime,
        event: AuthEvent | None = None,
    ) -> Rotation:
        """Mark ``old_hash`` used, add ``new_hash`` and ``event`` (``token.issued``), in one
        transaction that first locks session ``sid``'s row and finds it still open.

        Why the lock: the caller read the session open before it minted; a logout (or a
        reuse detection) that ended it in between let the rotation go on, and an access
        token was handed out after ``/auth/logout`` had answered "ended" (findings 19 F1).
        Under the row lock (PostgreSQL ``SELECT ... FOR UPDATE``, which reads the newest
        committed row; SQLite's ``BEGIN IMMEDIATE`` makes this the only writer) an end
        either committed before, and the rotation is refused, or waits for it to commit:
        the refresh then came first."""
        with self._tx() as s:
            ended_at = s.execute(
                select(SessionRow.ended_at).where(SessionRow.sid == sid).with_for_update()
            ).first()
            if ended_at is None or ended_at[0] is not None:
                return "ended"
            res = s.execute(
                update(RefreshTokenRow)
                .where(RefreshTokenRow.token_hash == old_hash, RefreshTokenRow.used_at.is_(None))
                .values(used_at=at, successor_hash=new_hash)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return "used"
            s.add(RefreshTokenRow(token_hash=new_hash, sid=sid, issued_at=at))
            if event is not None:
                s.add(event_row(event))
            return "rotated"

    # -- access token revocation ----------------------------------------------------------

    def revoke_jti(
        self, jti: str, expires_at: datetime.datetime, event: AuthEvent | None = None
    ) -> bool:
        with self._tx() as s:
            # ON CONFLICT DO NOTHING: one token revoked on two hosts at once is stored
            # once, and only the request that stored it says so (its event is logged once,
            # in the revocation's transaction).
            values = {"jti": jti, "expires_at": expires_at}
            res = s.execute(upsert(s, RevokedTokenRow, values, ["jti"]).do_nothing())
            revoked = bool(res.rowcount == 1)  # type: ignore[attr-defined]
            if revoked and event is not None:
                s.add(event_row(event))
            return revoked

    def is_revoked(self, jti: str) -> bool:
        with self._read() as s:
            return s.get(RevokedTokenRow, jti) is not None

    # -- roles ----------------------------------------------------------------------------

    def get_roles(
        self,
        uscc: str,
        operator_id: str,
        authorization: str | None = None,
        event: AuthEvent | None = None,
    ) -> frozenset[str]:
        """The roles of the operator ``operator_id`` of ``uscc`` under ``authorization``
        (its certificate's: :func:`ca.policy.authorization_of`). A grant is for the
        authorization it was granted to: another (a later holder of the id, or of the
        USCC's operators after a cessation) gets none. A certificate naming none was issued
        before authorizations were named; in force (as every caller here is), it is of the
        id's current authorization, the one a grant since names. A grant of an earlier
        release names none: bound here to the first certificate that names one, with
        ``event`` in the same transaction."""
        with self._read() as s:
            row = s.get(OperatorRolesRow, (uscc, operator_id))
            if row is None:
                return frozenset()
            roles, bound = row.roles, row.bound_authorization
        if bound is None and authorization is not None:
            with self._tx() as s:
                # Bound once: of two first logins at once, the first bound wins and the
                # other reads it; a grant replaced meanwhile is bound as it now is.
                res = s.execute(
                    update(OperatorRolesRow)
                    .where(
                        OperatorRolesRow.uscc == uscc,
                        OperatorRolesRow.operator_id == operator_id,
                        OperatorRolesRow.bound_authorization.is_(None),
                    )
                    .values(bound_authorization=authorization)
                )
                if res.rowcount == 1 and event is not None:  # type: ignore[attr-defined]
                    s.add(event_row(event))
                row = s.get(OperatorRolesRow, (uscc, operator_id))
                if row is None:
                    return frozenset()
                roles, bound = row.roles, row.bound_authorization
        if bound is not None and authorization is not None and bound != authorization:
            return frozenset()
        return frozenset(json.loads(roles))

    def set_roles(
        self,
        uscc: str,
        operator_id: str,
        roles: frozenset[str],
        by: str,
        at: datetime.datetime,
        event: AuthEvent | None = None,
        authorization: str | None = None,
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
            # A grant is for the authorization it names (get_roles)
            values["bound_authorization"] = authorization
            stmt = upsert(s, OperatorRolesRow, values, ["uscc", "operator_id"])
            s.execute(stmt.do_update(["roles", "granted_by", "granted_at", "bound_authorization"]))
            if event is not None:
                s.add(event_row(event))

    # -- failed logins --------------------------------------------------------------------

    def failures(
        self, key: str, now: datetime.datetime, window: datetime.timedelta
    ) -> tuple[int, datetime.datetime]:
        key = failure_key(key)
        with self._read() as s:
            row = s.get(LoginFailureRow, key)
            if row is None or now - row.window_start > window:
                return 0, now
            return row.count, row.window_start + window

    def record_failure(self, key: str, now: datetime.datetime, window: datetime.timedelta) -> None:
        key = failure_key(key)
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

    def cleanup(
        self,
        now: datetime.datetime,
        *,
        failure_window: datetime.timedelta | None = None,
        keep_sessions: datetime.timedelta = SESSION_RETENTION,
        leeway: datetime.timedelta = REVOCATION_LEEWAY,
        keep_events: datetime.timedelta | None = None,
    ) -> dict[str, int]:
        """Delete the rows no check can need any more; how many of each table. Called by
        every process's sweeper (once a minute by default), in batches of
        :data:`PURGE_BATCH` rows, each its own short write transaction.

        - spent login-assertion ``jti``s once expired (they are stored with ``exp`` +
          leeway), and revoked access tokens once their ``exp`` + ``leeway`` (the
          validation clock leeway) has passed: validation accepts a token until then, and a
          revocation purged at ``exp`` let a revoked token validate again for the leeway's
          30 s (findings 19 F5). Rows are stored with the token's ``exp``, so the leeway is
          added here, and covers the rows stored before this rule too;
        - sessions ended or expired more than ``keep_sessions`` ago, with their refresh
          tokens (reuse detection guards a live session only) and the browser cookies
          that held them, unless a back-channel logout of theirs is still owed (its
          delivery reads the session's subject): those wait until it is done or given up;
        - failed-login counts whose window (``failure_window``) has ended, which count
          for nothing (:meth:`failures`).

        ``auth_events`` is the audit record, and names the session, subject, certificate
        and address itself: kept for good, or, with ``keep_events``
        (``EPORT_AUTH_EVENT_RETENTION_DAYS``), deleted once older than that. Before,
        nothing deleted sessions, refresh tokens or failure counts (findings 15 F4)."""
        unrevoked = now - leeway  # a token whose exp is before this validates nowhere
        done = {
            "auth_seen_jti": self._purge(
                select(SeenAssertionRow.jti).where(SeenAssertionRow.expires_at < now),
                lambda keys: [
                    delete(SeenAssertionRow).where(
                        SeenAssertionRow.jti.in_(keys), SeenAssertionRow.expires_at < now
                    )
                ],
            ),
            "auth_revoked_tokens": self._purge(
                select(RevokedTokenRow.jti).where(RevokedTokenRow.expires_at < unrevoked),
                lambda keys: [
                    delete(RevokedTokenRow).where(
                        RevokedTokenRow.jti.in_(keys), RevokedTokenRow.expires_at < unrevoked
                    )
                ],
            ),
        }
        gone = now - keep_sessions
        owed = exists().where(
            SessionClientRow.sid == SessionRow.sid, SessionClientRow.done_at.is_(None)
        )
        over: ColumnElement[bool] = or_(SessionRow.expires_at < gone, SessionRow.ended_at < gone)

        def sessions(sids: Sequence[str]) -> list[Any]:
            still = select(SessionRow.sid).where(SessionRow.sid.in_(sids), over, ~owed)
            return [
                delete(RefreshTokenRow).where(RefreshTokenRow.sid.in_(still)),
                delete(BrowserSessionRow).where(BrowserSessionRow.sid.in_(still)),
                delete(SessionRow).where(SessionRow.sid.in_(sids), over, ~owed),
            ]

        # Sessions by hundreds: each takes its refresh tokens (one per refresh) along.
        done["auth_sessions"] = self._purge(
            select(SessionRow.sid).where(over, ~owed), sessions, batch=max(PURGE_BATCH // 5, 1)
        )
        if failure_window is not None:
            stale = now - failure_window
            done["auth_login_failures"] = self._purge(
                select(LoginFailureRow.key).where(LoginFailureRow.window_start < stale),
                lambda keys: [
                    # The condition again: a failure counted meanwhile restarted the window.
                    delete(LoginFailureRow).where(
                        LoginFailureRow.key.in_(keys), LoginFailureRow.window_start < stale
                    )
                ],
                read_all=True,
            )
        if keep_events is not None:
            # about 700 a minute under a busy port's load (soak probe): without a
            # retention, a month of them is hundreds of megabytes
            old = now - keep_events
            done["auth_events"] = self._purge(
                select(AuthEventRow.id).where(AuthEventRow.at < old).order_by(AuthEventRow.id),
                lambda keys: [
                    delete(AuthEventRow).where(AuthEventRow.id.in_(keys), AuthEventRow.at < old)
                ],
            )
        return done

    def _purge(
        self,
        candidates: Select[str] | Select[int],
        deletes: Callable[[Sequence[Any]], list[Any]],
        *,
        batch: int | None = None,
        read_all: bool = False,
    ) -> int:
        """Run ``deletes`` for the keys ``candidates`` selects, ``batch`` keys per write
        transaction and at most :data:`PURGE_BATCHES` batches; the keys are read outside
        the write lock, and each delete states its condition again (another process may
        have changed the row since). ``read_all``: read every batch's keys at once (a table
        without an index on the condition is scanned once, not once per batch). How many
        rows the last statement of ``deletes`` removed."""
        batch = batch or PURGE_BATCH
        most = batch * PURGE_BATCHES
        removed = 0
        pending: list[str] = []
        for _ in range(PURGE_BATCHES):
            if not pending:
                with self._read() as s:
                    pending = list(s.scalars(candidates.limit(most if read_all else batch)))
                if not pending:
                    break
            keys, pending = pending[:batch], pending[batch:]
            with self._tx() as s:
                for stmt in deletes(keys):
                    res = s.execute(stmt.execution_options(synchronize_session=False))
                removed += int(res.rowcount)  # type: ignore[attr-defined]
            if len(keys) < batch:
                break
        return removed

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


SUBJECT_LOCK_SPACE = 0x6570_6F72
"""PostgreSQL: the first key ("epor") of the advisory locks that order one subject's logins
(:meth:`SqlAuthStore.add_session`); the second is :func:`_lock_key` of the subject. Two-key
advisory locks do not share a key space with the one-key migration locks."""


def _lock_key(subject: str) -> int:
    """A stable signed 32-bit key for ``subject`` (two subjects may share one: they then
    only wait for each other's logins)."""
    return int.from_bytes(hashlib.sha256(subject.encode()).digest()[:4], "big", signed=True)


TOO_MANY_SESSIONS = "too many sessions"
"""Why a session ended for a newer one of its subject (:data:`MAX_SESSIONS_PER_SUBJECT`)."""


def failure_key(key: str) -> str:
    """The failed-login counter a key counts in: an IPv6 client address by its /64
    (``addr:2001:db8::/64``), everything else as it is (IPv4 addresses, IPv4-mapped IPv6
    ones included, by address; certificates by fingerprint).

    Why: an IPv6 client holds a whole /64 (RFC 4291 §2.5.4: a subnet's hosts pick their
    interface ids; privacy addresses, RFC 8981, change them by themselves), so counted
    by full address it had 2^64 budgets of 50 failures: 300 addresses of one /64 wrote
    300 ``login.failed`` events and counter rows, none refused (findings 15 F5). A /64
    is one subscriber's link, as one IPv4 address is one NAT's. Here, where every
    caller's count is read and written, rather than where the keys are made."""
    if not key.startswith("addr:"):
        return key
    try:
        addr = ipaddress.ip_address(key[5:])
    except ValueError:
        return key
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"addr:{addr.ipv4_mapped}"
        net = ipaddress.IPv6Network((int(addr) >> 64 << 64, 64))
        return f"addr:{net}"
    return key


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
