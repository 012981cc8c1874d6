"""The token service under concurrency (findings 19), on SQLite and on a real PostgreSQL 15,
through the real server:

- F5: a revoked access token stays refused, by ``/auth/validate`` and by introspection,
  for the whole clock leeway past its ``exp`` (the sweeper purged the revocation at
  ``exp``, and the token validated again);
- F1: a refresh racing a logout either completes before the session ends or is refused
  (an access token was handed out after ``/auth/logout`` answered "ended");
- F3: parallel logins of one subject leave it at most 100 open sessions (PostgreSQL left
  up to 121);
- F4: login, refresh and logout write their event in the transaction of their change (so
  the event order is the order of the changes).
"""

from __future__ import annotations

import datetime
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from authsvc.models import AuthEventRow, RevokedTokenRow, SessionRow
from authsvc.principal import x5t_s256
from authsvc.service import JWT_BEARER
from authsvc.store import MAX_SESSIONS_PER_SUBJECT
from ca.db import make_engine
from ca.signedreq import sign_request
from cli.client import Identity
from cli.keyfiles import load_identity
from cli.session import assertion
from tests.conftest import Postgres, Server, start_server, stop
from tests.helpers import enroll_enterprise, enroll_service

TOKEN_SECONDS = 3
"""The access-token lifetime of the test server: a revoked token's expiry comes soon."""
LEEWAY_SECONDS = 8
"""The test server's clock leeway: a token validates until ``exp`` + this."""
SERVICE = "customs-declaration"


@dataclass
class World:
    server: Server
    tmp: Path
    engine: Engine
    dialect: str
    ident: Identity
    service: Path

    def db(self) -> Session:
        return sessionmaker(self.engine, expire_on_commit=False)()


@pytest.fixture(scope="module", params=["sqlite", "postgres"], name="w")
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """A server of 3 workers whose sweeper beats every 0.1 s (its purge runs every 3 s),
    with 3-second access tokens and an 8-second leeway; an enterprise and the
    customs-declaration service enrolled."""
    extra = {
        "EPORT_AUTH_SWEEP_SECONDS": "0.1",
        "EPORT_AUTH_ACCESS_TOKEN_SECONDS": str(TOKEN_SECONDS),
        "EPORT_AUTH_LEEWAY_SECONDS": str(LEEWAY_SECONDS),
    }
    ca_db = auth_db = ""
    if request.param == "postgres":
        pg: Postgres = request.getfixturevalue("postgres")
        ca_db = pg.createdb("eport_races_ca")
        auth_db = extra["EPORT_AUTH_DATABASE_URL"] = pg.createdb("eport_races_auth")
    root = tmp_path_factory.mktemp(f"races-{request.param}")
    srv, proc = start_server(root / "data", ca_db, workers=3, extra_env=extra)
    engine = make_engine(auth_db or f"sqlite:///{srv.data_dir / 'auth.db'}")
    try:
        (root / "pw.txt").write_text("test-passphrase-123")
        ent = enroll_enterprise(srv, root, "Racing Co.")
        ident = load_identity(ent / "cert.pem", ent / "key.pem", root / "pw.txt")
        service = enroll_service(srv, root)
        yield World(srv, root, engine, request.param, ident, service)
    finally:
        engine.dispose()
        stop(proc)


def login(w: World, ident: Identity | None = None) -> dict[str, Any]:
    ident = ident or w.ident
    endpoint = w.server.url + "/auth/token"
    jws = assertion(ident, endpoint, x5t_s256(ident.chain[0]))
    r = requests.post(endpoint, data={"grant_type": JWT_BEARER, "assertion": jws}, timeout=60)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def refresh(w: World, rt: str, audience: str = SERVICE) -> requests.Response:
    fields = {"grant_type": "refresh_token", "refresh_token": rt, "audience": audience}
    return requests.post(w.server.url + "/auth/token", data=fields, timeout=60)


def logout(w: World, rt: str) -> requests.Response:
    return requests.post(w.server.url + "/auth/logout", data={"refresh_token": rt}, timeout=60)


def validate(w: World, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "X-Eport-Service": SERVICE}
    return requests.get(w.server.url + "/auth/validate", headers=headers, timeout=30).status_code


def introspect(w: World, token: str) -> dict[str, Any]:
    """RFC 7662 by the customs-declaration service, a signed request with its certificate."""
    d = w.service
    key = serialization.load_pem_private_key((d / "key.pem").read_bytes(), b"test-passphrase-123")
    chain = [x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())]
    body = urlencode({"token": token}).encode()
    now = datetime.datetime.now(datetime.UTC)
    jws = sign_request(key, chain, "POST", "/auth/introspect", body, now)  # type: ignore[arg-type]
    r = requests.post(
        w.server.url + "/auth/introspect",
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": f"EPort-Signed {jws}",
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def at_once(*calls: Callable[[], requests.Response]) -> list[requests.Response]:
    """Send ``calls`` from threads released together."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], requests.Response]) -> requests.Response:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as ex:
        return list(ex.map(run, calls))


def events_of(w: World, sid: str) -> list[str]:
    """The session's event types, by event id."""
    with w.db() as s:
        q = select(AuthEventRow.type).where(AuthEventRow.sid == sid).order_by(AuthEventRow.id)
        return list(s.scalars(q))


# -- F5: a revocation is kept for the leeway past exp ------------------------------------------


def test_a_revoked_token_stays_refused_through_the_leeway_past_its_expiry(w: World) -> None:
    """The sweeper deleted a revocation once its token's ``exp`` passed, but validation
    takes a token until ``exp`` + leeway: in between, the revoked token validated 200
    again (30 s with the defaults). Now the revocation stays until ``exp`` + leeway:
    ``/auth/validate`` and introspection refuse the token all along, while a token of
    the same session that was not revoked is still taken in that window (the leeway is
    in force); after it, the revocation is purged."""
    rt = login(w)["refresh_token"]
    first = refresh(w, rt)
    assert first.status_code == 200, first.text
    kept = refresh(w, first.json()["refresh_token"]).json()["access_token"]
    token = first.json()["access_token"]
    r = requests.post(w.server.url + "/auth/revoke", data={"token": token}, timeout=30)
    assert r.status_code == 200, r.text
    assert validate(w, token) == 401
    assert introspect(w, token) == {"active": False}
    with w.db() as s:
        row = s.get(RevokedTokenRow, token_jti(token))
        assert row is not None
        exp = row.expires_at.replace(tzinfo=datetime.UTC)
    # The purge runs every 3 s: poll from the revocation to 1 s before exp + leeway.
    end = exp + datetime.timedelta(seconds=LEEWAY_SECONDS - 1)
    past_exp = 0
    while (now := datetime.datetime.now(datetime.UTC)) < end:
        assert validate(w, token) == 401, f"revoked token taken at exp{now - exp}"
        assert introspect(w, token) == {"active": False}, f"at exp{now - exp}"
        if now > exp + datetime.timedelta(seconds=1):
            past_exp += 1
            assert validate(w, kept) == 200  # within the leeway: still taken
        time.sleep(0.3)
    assert past_exp >= 5
    with w.db() as s:
        assert s.get(RevokedTokenRow, token_jti(token)) is not None

    def purged() -> bool:
        with w.db() as s:
            return s.get(RevokedTokenRow, token_jti(token)) is None

    deadline = time.monotonic() + 20
    while not purged():
        assert time.monotonic() < deadline, "the revocation was never purged"
        time.sleep(0.3)
    assert validate(w, token) == 401  # expired now


def token_jti(token: str) -> str:
    jti: str = jwt.decode(token, options={"verify_signature": False})["jti"]
    return jti


# -- F1: a refresh racing a logout ------------------------------------------------------------


def test_a_refresh_racing_a_logout_completes_before_it_or_is_refused(w: World) -> None:
    """A refresh and a logout of one session at once: the refresh read the session open,
    minted, and rotated after the logout had ended the session, so an access token was
    handed out after ``/auth/logout`` answered ``ended`` (40 of 40 rounds on SQLite).
    Now the rotation checks the session under its row's lock: a refresh that answers
    200 rotated before the logout (its ``token.issued`` event, written with the
    rotation, comes before the ``logout``), or it is refused, "the session has ended"."""
    for _ in range(30):
        rt = login(w)["refresh_token"]
        sid = refresh_sid(w, rt)
        out, bye = at_once(lambda rt=rt: refresh(w, rt), lambda rt=rt: logout(w, rt))
        assert bye.status_code == 200 and bye.json() == {"ended": True}, bye.text
        events = events_of(w, sid)
        if out.status_code == 200:
            assert events == ["login", "token.issued", "logout"], events
        else:
            assert out.status_code == 400, out.text
            assert out.json()["error_description"] == "the session has ended", out.text
            assert events == ["login", "logout"], events


def refresh_sid(w: World, rt: str) -> str:
    r = requests.post(w.server.url + "/auth/session", data={"refresh_token": rt}, timeout=30)
    assert r.status_code == 200, r.text
    sid: str = r.json()["sid"]
    return sid


@pytest.mark.parametrize("w", ["postgres"], indirect=True)  # row locks: SQLite has one writer
def test_a_refresh_held_at_its_rotation_is_refused_once_a_logout_ended_the_session(
    w: World,
) -> None:
    """PostgreSQL, made deterministic: the test holds the refresh token's row lock, so the
    refresh waits where it rotates, after it read the session open and minted. Before, a
    logout then ended the session at once (200), and the released refresh still rotated
    and answered 200 with an access token. Now the rotation first locks the session row:
    the logout waits for the refresh, which completes first, and only then ends the
    session (``token.issued`` before ``logout``)."""
    assert w.dialect == "postgres"
    rt = login(w)["refresh_token"]
    sid = refresh_sid(w, rt)
    h = hashlib.sha256(rt.encode()).hexdigest()
    holder = w.engine.connect()
    tx = holder.begin()
    holder.execute(
        text("SELECT 1 FROM auth_refresh_tokens WHERE token_hash = :h FOR UPDATE"), {"h": h}
    )
    with ThreadPoolExecutor(2) as ex:
        out = ex.submit(refresh, w, rt)
        wait_for_lock_waiters(w, 1)
        bye = ex.submit(logout, w, rt)
        time.sleep(1.0)  # the logout either finished (before) or waits for the refresh
        logged_out_first = bye.done()
        tx.commit()
        holder.close()
        answer, ended = out.result(30), bye.result(30)
    assert ended.status_code == 200 and ended.json() == {"ended": True}, ended.text
    events = events_of(w, sid)
    if answer.status_code == 200:
        assert not logged_out_first, "an access token was handed out after the logout"
        assert events == ["login", "token.issued", "logout"], events
    else:
        assert answer.json()["error_description"] == "the session has ended", answer.text
        assert events == ["login", "logout"], events


def wait_for_lock_waiters(w: World, n: int) -> None:
    """Until ``n`` backends of the server wait for a row lock."""
    deadline = time.monotonic() + 20
    q = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    while True:
        with w.engine.connect() as c:
            if c.scalar(q) >= n:
                return
        assert time.monotonic() < deadline, "the refresh never reached its rotation"
        time.sleep(0.05)


# -- F3: the session cap under parallel logins ---------------------------------------------


def test_parallel_logins_of_one_subject_leave_at_most_the_cap_open(w: World) -> None:
    """On PostgreSQL each of N parallel logins read the same open sessions without a lock
    and ended the same oldest one: 240 logins left 121 open. Now one subject's logins
    count its sessions one at a time: exactly the cap stays open, and every session that
    ended has its one ``session.ended`` event."""
    ent = enroll_enterprise(w.server, w.tmp, "Many Logins Co.")
    ident = load_identity(ent / "cert.pem", ent / "key.pem", w.tmp / "pw.txt")
    endpoint = w.server.url + "/auth/token"
    n = MAX_SESSIONS_PER_SUBJECT + 80
    jwss = [assertion(ident, endpoint, x5t_s256(ident.chain[0])) for _ in range(n)]

    def one(jws: str) -> tuple[int, str]:
        data = {"grant_type": JWT_BEARER, "assertion": jws}
        r = requests.post(endpoint, data=data, timeout=60)
        return r.status_code, r.json()["session"]["subject"] if r.status_code == 200 else r.text

    with ThreadPoolExecutor(24) as ex:
        answers = list(ex.map(one, jwss))
    assert [code for code, _ in answers] == [200] * n, answers
    subject = answers[0][1]  # no login after: a sequential one would mend an excess
    with w.db() as s:
        open_ = s.scalar(
            select(func.count())
            .select_from(SessionRow)
            .where(SessionRow.subject == subject, SessionRow.ended_at.is_(None))
        )
        ended = s.scalar(
            select(func.count())
            .select_from(SessionRow)
            .where(SessionRow.subject == subject, SessionRow.ended_at.is_not(None))
        )
        notices = s.scalar(
            select(func.count())
            .select_from(AuthEventRow)
            .where(AuthEventRow.subject == subject, AuthEventRow.type == "session.ended")
        )
        logins = s.scalar(
            select(func.count())
            .select_from(AuthEventRow)
            .where(AuthEventRow.subject == subject, AuthEventRow.type == "login")
        )
    assert (open_, ended, notices, logins) == (
        MAX_SESSIONS_PER_SUBJECT,
        n - MAX_SESSIONS_PER_SUBJECT,
        n - MAX_SESSIONS_PER_SUBJECT,
        n,
    )
