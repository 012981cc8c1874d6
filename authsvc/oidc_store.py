"""SQLAlchemy implementation of :class:`authsvc.oidc.OIDCStore`: one short transaction per
call; single use of codes and single delivery of logouts enforced by conditional UPDATEs
(portable SQL: no row locks; the one upsert is :func:`ca.store.upsert`, for either database)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from authsvc.models import RevokedTokenRow, SessionRow
from authsvc.oidc import BrowserSession, CodeRecord, PendingLogout
from authsvc.oidc_models import AuthorizationCodeRow, BrowserSessionRow, SessionClientRow
from authsvc.service import AuthEvent
from authsvc.store import event_row
from ca.store import reading, upsert, writing


class SqlOIDCStore:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        check_schema: Callable[[], None] = lambda: None,
    ) -> None:
        self.session_factory = session_factory
        self.check_schema = check_schema
        """The token service store's schema fence (:meth:`SqlAuthStore.check_schema`):
        checked before every write, as the token service's own."""

    def _tx(self) -> AbstractContextManager[Session]:
        self.check_schema()
        return writing(self.session_factory)

    def _read(self) -> AbstractContextManager[Session]:
        return reading(self.session_factory)

    # -- browser sessions -------------------------------------------------------------

    def add_browser_session(self, rec: BrowserSession) -> None:
        with self._tx() as s:
            s.add(
                BrowserSessionRow(
                    cookie_hash=rec.cookie_hash,
                    sid=rec.sid,
                    csrf_token=rec.csrf_token,
                    created_at=rec.created_at,
                )
            )

    def get_browser_session(self, cookie_hash: str) -> BrowserSession | None:
        with self._read() as s:
            row = s.get(BrowserSessionRow, cookie_hash)
            if row is None:
                return None
            return BrowserSession(row.cookie_hash, row.sid, row.csrf_token, row.created_at)

    def delete_browser_session(self, cookie_hash: str) -> None:
        with self._tx() as s:
            s.execute(delete(BrowserSessionRow).where(BrowserSessionRow.cookie_hash == cookie_hash))

    # -- codes ------------------------------------------------------------------------

    def add_code(self, rec: CodeRecord) -> None:
        with self._tx() as s:
            s.add(
                AuthorizationCodeRow(
                    code_hash=rec.code_hash,
                    client_id=rec.client_id,
                    redirect_uri=rec.redirect_uri,
                    code_challenge=rec.code_challenge,
                    nonce=rec.nonce,
                    sid=rec.sid,
                    scope=rec.scope,
                    created_at=rec.created_at,
                    expires_at=rec.expires_at,
                )
            )

    def get_code(self, code_hash: str) -> CodeRecord | None:
        with self._read() as s:
            row = s.get(AuthorizationCodeRow, code_hash)
            return _code(row) if row else None

    def redeem_code(
        self,
        code_hash: str,
        at: datetime.datetime,
        jti: str,
        expires_at: datetime.datetime,
        event: AuthEvent,
    ) -> bool:
        with self._tx() as s:
            res = s.execute(
                update(AuthorizationCodeRow)
                .where(
                    AuthorizationCodeRow.code_hash == code_hash,
                    AuthorizationCodeRow.used_at.is_(None),
                )
                .values(used_at=at, access_jti=jti, access_expires_at=expires_at)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return False
            # The token service's event row, in this transaction: one commit per redemption.
            s.add(event_row(event))
            return True

    def mark_replayed(
        self, code: CodeRecord, at: datetime.datetime, event: Callable[[CodeRecord], AuthEvent]
    ) -> CodeRecord:
        # One transaction: a crash between the mark, the revocation and the event lost
        # the revocation or the event (the replay is refused all the same).
        with self._tx() as s:
            s.execute(
                update(AuthorizationCodeRow)
                .where(
                    AuthorizationCodeRow.code_hash == code.code_hash,
                    AuthorizationCodeRow.replayed_at.is_(None),
                )
                .values(replayed_at=at)
                .execution_options(synchronize_session=False)
            )
            row = s.get(AuthorizationCodeRow, code.code_hash)
            after = _code(row) if row is not None else code
            if after.access_jti and after.access_expires_at:
                values = {"jti": after.access_jti, "expires_at": after.access_expires_at}
                s.execute(upsert(s, RevokedTokenRow, values, ["jti"]).do_nothing())
            s.add(event_row(event(after)))
            return after

    def code_by_access_jti(self, jti: str) -> CodeRecord | None:
        with self._read() as s:
            row = s.scalars(
                select(AuthorizationCodeRow).where(AuthorizationCodeRow.access_jti == jti)
            ).first()
            return _code(row) if row else None

    # -- back-channel logout outbox ---------------------------------------------------

    def add_session_client(self, sid: str, client_id: str, at: datetime.datetime) -> None:
        with self._read() as r:
            if r.get(SessionClientRow, (sid, client_id)) is not None:
                return  # the common case: a second code for the client in the session
        self.check_schema()
        s = self.session_factory()
        try:
            if s.get(SessionClientRow, (sid, client_id)) is None:
                s.add(
                    SessionClientRow(
                        sid=sid, client_id=client_id, first_at=at, next_at=at, attempts=0
                    )
                )
            s.commit()
        except IntegrityError:
            s.rollback()  # another request of the same session added it first
        except BaseException:
            s.rollback()
            raise

    def session_clients(self, sid: str) -> list[str]:
        with self._read() as s:
            q = (
                select(SessionClientRow.client_id)
                .where(SessionClientRow.sid == sid)
                .order_by(SessionClientRow.first_at)
            )
            return list(s.scalars(q))

    def claim_logouts(
        self,
        now: datetime.datetime,
        lease_until: datetime.datetime,
        sid: str | None,
        limit: int,
    ) -> list[PendingLogout]:
        with self._read() as s:
            q = (
                select(SessionClientRow, SessionRow.subject)
                .join(SessionRow, SessionRow.sid == SessionClientRow.sid)
                .where(
                    SessionClientRow.done_at.is_(None),
                    SessionClientRow.next_at <= now,
                    or_(SessionRow.ended_at.is_not(None), SessionRow.expires_at <= now),
                )
                .limit(limit)
            )
            if sid is not None:
                q = q.where(SessionClientRow.sid == sid)
            candidates = [(r.sid, r.client_id, r.attempts, subject) for r, subject in s.execute(q)]
        claimed: list[PendingLogout] = []
        for c_sid, client_id, attempts, subject in candidates:
            with self._tx() as s:
                res = s.execute(
                    update(SessionClientRow)
                    .where(
                        SessionClientRow.sid == c_sid,
                        SessionClientRow.client_id == client_id,
                        SessionClientRow.done_at.is_(None),
                        SessionClientRow.next_at <= now,
                    )
                    .values(next_at=lease_until)
                    .execution_options(synchronize_session=False)
                )
                if res.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(PendingLogout(c_sid, client_id, subject, attempts))
        return claimed

    def logout_done(
        self, sid: str, client_id: str, at: datetime.datetime, *, delivered: bool
    ) -> None:
        with self._tx() as s:
            s.execute(
                update(SessionClientRow)
                .where(SessionClientRow.sid == sid, SessionClientRow.client_id == client_id)
                .values(done_at=at, delivered_at=at if delivered else None)
                .execution_options(synchronize_session=False)
            )

    def logout_retry(self, sid: str, client_id: str, next_at: datetime.datetime) -> None:
        with self._tx() as s:
            s.execute(
                update(SessionClientRow)
                .where(SessionClientRow.sid == sid, SessionClientRow.client_id == client_id)
                .values(next_at=next_at, attempts=SessionClientRow.attempts + 1)
                .execution_options(synchronize_session=False)
            )

    def cleanup(self, now: datetime.datetime, keep_codes: datetime.timedelta) -> None:
        ended = select(SessionRow.sid).where(
            or_(SessionRow.ended_at.is_not(None), SessionRow.expires_at <= now)
        )
        with self._tx() as s:
            s.execute(
                delete(AuthorizationCodeRow).where(
                    AuthorizationCodeRow.expires_at < now - keep_codes
                )
            )
            s.execute(delete(BrowserSessionRow).where(BrowserSessionRow.sid.in_(ended)))
            s.execute(delete(SessionClientRow).where(SessionClientRow.done_at < now - keep_codes))


def _code(row: AuthorizationCodeRow) -> CodeRecord:
    return CodeRecord(
        code_hash=row.code_hash,
        client_id=row.client_id,
        redirect_uri=row.redirect_uri,
        code_challenge=row.code_challenge,
        nonce=row.nonce,
        sid=row.sid,
        scope=row.scope,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
        access_jti=row.access_jti,
        access_expires_at=row.access_expires_at,
        replayed_at=row.replayed_at,
    )
