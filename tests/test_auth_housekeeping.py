"""The token service's housekeeping (findings 15 F4, F5): its sweeper deletes sessions,
refresh tokens and failed-login counts that no check needs any more, in small batches,
and keeps the audit events; one subject holds at most 100 open sessions (a login
beyond ends its oldest); failed logins of IPv6 clients are counted per /64."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from authsvc import store as store_module
from authsvc.app import upgrade
from authsvc.models import AuthEventRow, LoginFailureRow, RefreshTokenRow, SessionRow
from authsvc.oidc_models import BrowserSessionRow, SessionClientRow
from authsvc.principal import Principal, x5t_s256
from authsvc.service import JWT_BEARER, SessionRecord
from authsvc.store import (
    MAX_SESSIONS_PER_SUBJECT,
    TOO_MANY_SESSIONS,
    SqlAuthStore,
    failure_key,
)
from ca.db import make_engine
from ca.policy import SubjectClass
from cli.client import Identity
from cli.keyfiles import load_identity
from cli.session import assertion
from tests.conftest import Server, start_server, stop
from tests.helpers import enroll_enterprise

PROXY = "127.0.0.2"
"""The address the test server trusts as its TLS proxy (its X-Forwarded-For is believed)."""
JUNK = "eyJhbGciOiJFUzI1NiJ9.e30.AA"
"""A login assertion that fails before any certificate: it counts against the address."""


@dataclass
class World:
    server: Server
    tmp: Path
    engine: Engine

    def db(self) -> Session:
        return sessionmaker(self.engine, expire_on_commit=False)()

    def enterprise(self, name: str) -> Identity:
        ent = enroll_enterprise(self.server, self.tmp, name)
        return load_identity(ent / "cert.pem", ent / "key.pem", self.tmp / "pw.txt")


@pytest.fixture(scope="module", name="w")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server on SQLite behind the trusted proxy :data:`PROXY`, whose sweeper beats
    every 0.1 s (so its cleanup, every 30 beats, runs every 3 s)."""
    root = tmp_path_factory.mktemp("housekeeping")
    extra = {"EPORT_AUTH_TRUSTED_PROXIES": f"{PROXY}/32", "EPORT_AUTH_SWEEP_SECONDS": "0.1"}
    srv, proc = start_server(root / "data", workers=1, extra_env=extra)
    engine = make_engine(f"sqlite:///{srv.data_dir / 'auth.db'}")
    try:
        (root / "pw.txt").write_text("test-passphrase-123")
        yield World(srv, root, engine)
    finally:
        engine.dispose()
        stop(proc)


class _FromAddress(HTTPAdapter):
    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def from_proxy() -> requests.Session:
    s = requests.Session()
    s.mount("http://", _FromAddress(PROXY))
    return s


def login(w: World, ident: Identity) -> dict[str, Any]:
    endpoint = w.server.url + "/auth/token"
    jws = assertion(ident, endpoint, x5t_s256(ident.chain[0]))
    r = requests.post(endpoint, data={"grant_type": JWT_BEARER, "assertion": jws}, timeout=30)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def refresh(w: World, rt: str) -> str:
    fields = {"grant_type": "refresh_token", "refresh_token": rt, "audience": "portal"}
    r = requests.post(w.server.url + "/auth/token", data=fields, timeout=30)
    assert r.status_code == 200, r.text
    successor: str = r.json()["refresh_token"]
    return successor


def whoami(w: World, rt: str) -> requests.Response:
    return requests.post(w.server.url + "/auth/session", data={"refresh_token": rt}, timeout=30)


def junk_login(w: World, client: str) -> int:
    r = from_proxy().post(
        w.server.url + "/auth/token",
        data={"grant_type": JWT_BEARER, "assertion": JUNK},
        headers={"X-Forwarded-For": client},
        timeout=30,
    )
    return r.status_code


def eventually(what: Callable[[], bool], timeout: float = 20) -> None:
    """Wait for the server's sweeper (cleanup every 3 s here) to make ``what`` true."""
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "the sweeper did not purge in time"
        time.sleep(0.25)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# -- sessions per subject ------------------------------------------------------------------------


def test_a_login_beyond_the_subject_s_session_limit_ends_its_oldest_session(w: World) -> None:
    """One certificate opened 978 sessions in 35 s, all open at once. Now the subject's
    oldest sessions end as newer ones pass the limit, each with a ``session.ended``
    event; the newest 100 stay usable."""
    ident = w.enterprise("Many Sessions Co.")
    logins = [login(w, ident) for _ in range(MAX_SESSIONS_PER_SUBJECT + 2)]
    subject = logins[0]["session"]["subject"]
    first, second = (x["session"]["sid"] for x in logins[:2])
    with w.db() as s:
        open_ = s.scalar(
            select(func.count())
            .select_from(SessionRow)
            .where(SessionRow.subject == subject, SessionRow.ended_at.is_(None))
        )
        ended = s.execute(
            select(AuthEventRow.sid, AuthEventRow.detail).where(
                AuthEventRow.subject == subject, AuthEventRow.type == "session.ended"
            )
        ).all()
        reasons = {
            sid: reason
            for sid, reason in s.execute(
                select(SessionRow.sid, SessionRow.end_reason).where(
                    SessionRow.sid.in_([first, second])
                )
            )
        }
    assert open_ == MAX_SESSIONS_PER_SUBJECT
    assert {sid for sid, _ in ended} == {first, second}, ended
    assert all(TOO_MANY_SESSIONS in detail for _, detail in ended), ended
    assert reasons == {first: TOO_MANY_SESSIONS, second: TOO_MANY_SESSIONS}
    r = whoami(w, logins[0]["refresh_token"])
    assert r.status_code == 400 and "ended" in r.json()["error_description"], r.text
    for newer in (logins[2], logins[-1]):
        r = whoami(w, newer["refresh_token"])
        assert r.status_code == 200 and r.json()["sid"] == newer["session"]["sid"], r.text


# -- the purge -------------------------------------------------------------------------------------


def _age(w: World, sid: str, **values: datetime.datetime) -> None:
    with w.db() as s:
        s.execute(update(SessionRow).where(SessionRow.sid == sid).values(**values))
        s.commit()


def test_the_sweeper_purges_dead_sessions_and_stale_failure_counts_and_keeps_events(
    w: World,
) -> None:
    """Sessions that expired or ended more than a day ago go, with their refresh tokens
    (used ones too) and browser cookies; a live session keeps its whole refresh chain
    (reuse detection needs it), and an ended session whose back-channel logout is still
    owed waits for it. Failure counts of ended windows go, current ones stay. No event
    is deleted. Before, nothing deleted from these tables."""
    ident = w.enterprise("Purged Sessions Co.")
    names = ("expired", "ended", "live", "owed")
    logins = {name: login(w, ident) for name in names}
    sid = {name: doc["session"]["sid"] for name, doc in logins.items()}
    rt = refresh(w, refresh(w, logins["expired"]["refresh_token"]))  # a chain of three
    live_rt = refresh(w, logins["live"]["refresh_token"])
    r = requests.post(
        w.server.url + "/auth/logout",
        data={"refresh_token": logins["ended"]["refresh_token"]},
        timeout=30,
    )
    assert r.json() == {"ended": True}, r.text
    long_ago = now() - datetime.timedelta(days=2)
    opened = long_ago - datetime.timedelta(hours=8)
    _age(w, sid["expired"], created_at=opened, expires_at=long_ago)
    _age(w, sid["ended"], ended_at=long_ago)
    _age(w, sid["owed"], ended_at=long_ago)
    with w.db() as s:
        s.add(
            BrowserSessionRow(
                cookie_hash="c" * 64, sid=sid["expired"], csrf_token="x", created_at=opened
            )
        )
        # A back-channel logout owed to a client, not due yet (the delivery loop waits).
        s.add(
            SessionClientRow(
                sid=sid["owed"],
                client_id="some-client",
                first_at=opened,
                next_at=now() + datetime.timedelta(days=1),
                attempts=0,
            )
        )
        stale = now() - datetime.timedelta(minutes=6)
        s.add(LoginFailureRow(key="addr:198.51.100.7", window_start=stale, count=3))
        s.add(LoginFailureRow(key="addr:198.51.100.8", window_start=now(), count=3))
        s.commit()
        events = set(s.scalars(select(AuthEventRow.id)))

    def sessions() -> set[str]:
        with w.db() as s:
            return set(s.scalars(select(SessionRow.sid).where(SessionRow.sid.in_(sid.values()))))

    eventually(lambda: sessions() == {sid["live"], sid["owed"]})
    eventually(lambda: "addr:198.51.100.7" not in failure_keys(w))
    assert "addr:198.51.100.8" in failure_keys(w)  # its window is on
    with w.db() as s:
        tokens = {
            owner: n
            for owner, n in s.execute(
                select(RefreshTokenRow.sid, func.count())
                .where(RefreshTokenRow.sid.in_(sid.values()))
                .group_by(RefreshTokenRow.sid)
            )
        }
        cookies = s.scalar(
            select(func.count())
            .select_from(BrowserSessionRow)
            .where(BrowserSessionRow.sid == sid["expired"])
        )
        kept = set(s.scalars(select(AuthEventRow.id)))
    assert tokens == {sid["live"]: 2, sid["owed"]: 1}, tokens
    assert cookies == 0
    assert events <= kept  # the audit record stays whole
    # The live session works on, and its used token is still known as a used one.
    assert whoami(w, live_rt).status_code == 200
    r = whoami(w, logins["live"]["refresh_token"])
    assert r.status_code == 400 and "used" in r.json()["error_description"], r.text
    # A purged session's token is refused as any unknown one is.
    r = whoami(w, rt)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    # Once the owed logout is done (delivered or given up), its session goes too.
    with w.db() as s:
        s.execute(
            update(SessionClientRow)
            .where(SessionClientRow.sid == sid["owed"])
            .values(done_at=now())
        )
        s.commit()
    eventually(lambda: sessions() == {sid["live"]})


def failure_keys(w: World) -> set[str]:
    with w.db() as s:
        return set(s.scalars(select(LoginFailureRow.key)))


def test_the_purge_deletes_in_small_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call deletes at most PURGE_BATCHES batches (of sessions, a fifth of
    PURGE_BATCH), one short write transaction each; later calls finish the backlog."""
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        store = SqlAuthStore(sessionmaker(engine, expire_on_commit=False))
        t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        window = datetime.timedelta(minutes=5)
        for i in range(50):
            who = Principal(f"ent:{i}", SubjectClass.ENTERPRISE, "Batch Co.")
            rec = SessionRecord(
                f"s{i:03}", who, "1", "x", b"", None, t0, t0 + datetime.timedelta(hours=8)
            )
            store.add_session(rec, f"rt{i:03}")
        for i in range(40):
            store.record_failure(f"addr:192.0.2.{i}", t0, window)
        monkeypatch.setattr(store_module, "PURGE_BATCH", 10)
        monkeypatch.setattr(store_module, "PURGE_BATCHES", 3)
        later = t0 + datetime.timedelta(days=2)
        calls = [store.cleanup(later, failure_window=window)]
        while any(calls[-1].values()):
            calls.append(store.cleanup(later, failure_window=window))
        assert calls[0] == {
            "auth_seen_jti": 0,
            "auth_revoked_tokens": 0,
            "auth_sessions": 6,
            "auth_login_failures": 30,
        }, calls[0]
        assert [c["auth_sessions"] for c in calls] == [6] * 8 + [2, 0], calls
        assert [c["auth_login_failures"] for c in calls[:3]] == [30, 10, 0], calls
        with sessionmaker(engine)() as s:
            for table in (SessionRow, RefreshTokenRow, LoginFailureRow):
                assert s.scalar(select(func.count()).select_from(table)) == 0, table
    finally:
        engine.dispose()


# -- failed logins per IPv6 /64 ------------------------------------------------------------------


def test_failed_logins_of_one_ipv6_64_share_one_count(w: World) -> None:
    """300 addresses of one /64 each had their own budget of 50 failures (never 429).
    Now the /64 is one client: 50 failures, then 429; another /64 has its own; IPv4
    clients are still counted by address. Events keep the full address. The count's row
    is purged once its window has ended."""
    codes = [junk_login(w, f"2001:db8:1:2::{i:x}") for i in range(1, 56)]
    assert codes == [400] * 50 + [429] * 5, codes
    assert junk_login(w, "2001:db8:1:3::1") == 400  # the next /64 is another client
    assert [junk_login(w, f"203.0.113.{i}") for i in range(1, 56)] == [400] * 55
    net = "addr:2001:db8:1:2::/64"
    keys = failure_keys(w)
    assert net in keys and not [k for k in keys if k.startswith("addr:2001:db8:1:2::")][1:], keys
    with w.db() as s:
        row = s.get(LoginFailureRow, net)
        assert row is not None and row.count == 50
        failed = select(AuthEventRow.client_addr).where(AuthEventRow.type == "login.failed")
        assert {"2001:db8:1:2::7", "2001:db8:1:2::32"} <= set(s.scalars(failed))
        ended = now() - datetime.timedelta(minutes=6)
        s.execute(
            update(LoginFailureRow).where(LoginFailureRow.key == net).values(window_start=ended)
        )
        s.commit()
    eventually(lambda: net not in failure_keys(w))
    assert junk_login(w, "2001:db8:1:2::ffff") == 400


def test_failure_keys() -> None:
    assert failure_key("addr:2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "addr:2001:db8:1:2::/64"
    assert failure_key("addr:2001:DB8:1:2::1") == "addr:2001:db8:1:2::/64"
    assert failure_key("addr:::ffff:192.0.2.7") == "addr:192.0.2.7"
    assert failure_key("addr:192.0.2.7") == "addr:192.0.2.7"
    assert failure_key("addr:None") == "addr:None"
    assert failure_key("cert:abc") == "cert:abc"


def test_events_older_than_the_retention_are_purged_and_kept_for_ever_by_default(
    tmp_path: Path,
) -> None:
    """EPORT_AUTH_EVENT_RETENTION_DAYS: auth_events grew for good (soak probe: about 700
    rows a minute under load). With a retention the sweeper's cleanup deletes the older
    ones; without (the default, 0) none."""
    from authsvc.config import AuthConfig
    from authsvc.service import AuthEvent
    from ca.errors import PolicyError

    url = f"sqlite:///{tmp_path / 'auth.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        store = SqlAuthStore(sessionmaker(engine, expire_on_commit=False))
        now = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
        for days in (400, 200, 100, 1):
            store.add_event(AuthEvent("login", now - datetime.timedelta(days=days), f"ent:{days}"))

        def subjects() -> set[str | None]:
            with sessionmaker(engine)() as s:
                return set(s.scalars(select(AuthEventRow.subject)))

        assert "auth_events" not in store.cleanup(now)
        assert subjects() == {"ent:400", "ent:200", "ent:100", "ent:1"}
        half_year = datetime.timedelta(days=183)
        assert store.cleanup(now, keep_events=half_year)["auth_events"] == 2
        assert subjects() == {"ent:100", "ent:1"}
    finally:
        engine.dispose()
    cfg = AuthConfig.load(environ={"EPORT_AUTH_EVENT_RETENTION_DAYS": "365"})
    assert cfg.event_retention_days == 365
    assert AuthConfig.load(environ={}).event_retention_days == 0
    with pytest.raises(PolicyError, match="183"):
        AuthConfig.load(environ={"EPORT_AUTH_EVENT_RETENTION_DAYS": "30"})
