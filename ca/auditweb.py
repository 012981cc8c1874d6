"""The auditor's read-only web view at ``/audit/``: checkpoint, events, certificates, chart.

Server-rendered HTML with no script and no external asset (the machines that show it
may have no internet): one stylesheet from this server, the chart an inline SVG.

Browser sign-in, without passwords: ``eport audit web-login`` sends a signed request
(:mod:`ca.signedreq`, the auditor's certificate key) to ``POST /audit/session`` and
gets a one-time link, valid 60 seconds, on the configured public base URL (never on the
request's ``Host``: behind a TLS proxy that would be the proxy's upstream, over
``http``); opening it sets a session cookie for 30 minutes (``HttpOnly``,
``SameSite=Strict``, ``Path=/audit``, ``Secure`` when that base URL is https).
Link and cookie are HMAC-SHA256 tokens under a random key kept in
``<data_dir>/ca/audit-web.secret`` (made on first use, mode 0600; every process and
host serving the view must share it); the link's id is remembered in the replay store
shared by every process, so a link opens one session only. The session carries the
reader's rights, the same as the API's: auditors and RA officers see everything, an
enterprise or its operator only the events with its own USCC. Every page is a GET
that changes nothing; the only other form is "sign out", which ends the session on the
server too (its id is remembered in the same shared store until it would have expired),
so a copy of the cookie opens nothing afterwards. Every page, and the link, check the
certificate that signed in: once it is revoked or on hold, the session is refused.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.globals import request_ctx
from sqlalchemy import Date, cast, func, select
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from ca import i18n, translog
from ca.audit_api import (
    EventFilter,
    Reader,
    audit_service,
    event_json,
    find_events,
    issuance_entry,
    normalize_serial,
    session,
    signed_reader,
)
from ca.errors import BadRequest, EPortError, NotFound, Unauthenticated
from ca.logentry import decode
from ca.merkle import leaf_hash
from ca.models import CertificateRow, EventRow
from ca.records import EventType, StatusState

bp = Blueprint(
    "audit_web",
    __name__,
    url_prefix="/audit",
    template_folder="templates",
    static_folder="static/audit",
    static_url_path="/static",
)

COOKIE = "eport_audit"
LOGIN_TTL = 60
SESSION_TTL = 30 * 60
PAGE = 50
CHART_DAYS = 30
ISSUED = (EventType.CERTIFICATE_ISSUED.value, EventType.CERTIFICATE_RENEWED.value)
REVOKED = (EventType.CERTIFICATE_REVOKED.value,)
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


# -- tokens -------------------------------------------------------------------------------


def _secret() -> bytes:
    """The view's HMAC key, made once per data directory (atomically, for every worker)."""
    path = Path(audit_service().data_dir) / "ca" / "audit-web.secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
    try:
        os.link(tmp, path)  # fails if another process made it first: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(kind: str, payload: str) -> bytes:
    return hmac.new(
        _secret(), f"eport-audit-web/1/{kind}/{payload}".encode(), hashlib.sha256
    ).digest()


def make_token(kind: str, claims: dict[str, Any]) -> str:
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{payload}.{_b64(_mac(kind, payload))}"


def read_token(kind: str, token: str, now: datetime.datetime) -> dict[str, Any]:
    """The claims of a token of ``kind``; raises :class:`Unauthenticated` if it fails."""
    payload, _, mac = token.partition(".")
    try:
        good = hmac.compare_digest(_unb64(mac), _mac(kind, payload))
        claims = json.loads(_unb64(payload)) if good else None
    except (ValueError, TypeError):
        claims = None
    if not isinstance(claims, dict):
        raise Unauthenticated("this sign-in link or session is not valid")
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now.timestamp():
        raise Unauthenticated("this sign-in link or session has expired")
    return claims


@dataclass(frozen=True)
class WebReader:
    reader: Reader
    expires: datetime.datetime


def current_reader() -> WebReader:
    token = request.cookies.get(COOKIE)
    if not token:
        raise Unauthenticated("sign in with `eport audit web-login` to open the audit view")
    claims = read_token("session", token, _now())
    sid = claims.get("sid")
    if not isinstance(sid, str) or _signed_out(sid):
        raise Unauthenticated("this session was signed out; sign in again")
    reader = Reader(str(claims["actor"]), str(claims["role"]), claims.get("uscc"))
    _refuse_unless_good(reader.actor)
    return WebReader(reader, datetime.datetime.fromtimestamp(claims["exp"], datetime.UTC))


def _refuse_unless_good(actor: str) -> None:
    """Refuse a link or session whose reader signed in with a certificate that has been
    revoked or put on hold since: a web session lasts 30 minutes, and a reader whose
    certificate can no longer sign a request must not read on for that long. ``actor``
    is ``<profile>:<serial hex>`` (a signed request's); a token's reader
    (``token:<sub>``) was judged by its token when it signed in."""
    from ca.api import svc

    kind, _, serial_hex = actor.partition(":")
    if kind == "token":
        return
    try:
        serial = int(serial_hex, 16)
    except ValueError:
        raise Unauthenticated("this sign-in link or session is not valid") from None
    with svc().store.reading() as tx:
        status = tx.get_status(serial)
    if status is not None:
        state = "revoked" if status.state is StatusState.REVOKED else "on hold"
        raise Unauthenticated(
            f"the certificate {serial:x} this session was opened with is {state}; "
            "the session has ended"
        )


def _now() -> datetime.datetime:
    from ca.api import svc

    return svc().clock()


def _signed_out(sid: str) -> bool:
    from ca.api import svc

    return svc().store.remembered(SIGNED_OUT + sid)


SIGNED_OUT = "audit-web-out:"
"""Prefix of a signed-out session's id in the replay store, which every process shares:
signing out ends the session on the server, not only in the browser that asked (a copy
of the cookie opens nothing afterwards)."""


# -- sign-in ------------------------------------------------------------------------------


@bp.post("/session")
def new_session() -> Response:
    """A one-time sign-in link for the signed requester (``eport audit web-login``)."""
    reader = signed_reader()
    now = _now()
    exp = int(now.timestamp()) + LOGIN_TTL
    link: dict[str, Any] = {
        "actor": reader.actor,
        "role": reader.role,
        "uscc": reader.uscc,
        "exp": exp if reader.until is None else min(exp, reader.until),
        "jti": secrets.token_urlsafe(18),
    }
    if reader.until is not None:
        link["until"] = reader.until  # an access token's reader: its session ends with it
    token = make_token("login", link)
    url = audit_service().public_base_url.rstrip("/") + url_for("audit_web.login", token=token)
    resp = make_response({"url": url, "expires_in": LOGIN_TTL, "reader": reader.actor})
    resp.cache_control.no_store = True
    return resp


@bp.get("/login")
def login() -> BaseResponse:
    from ca.api import svc

    now = _now()
    claims = read_token("login", request.args.get("token", ""), now)
    _refuse_unless_good(str(claims["actor"]))  # before the link's one use is spent
    expires = datetime.datetime.fromtimestamp(claims["exp"], datetime.UTC)
    if not svc().store.remember("audit-web:" + str(claims["jti"]), expires):
        raise Unauthenticated("this sign-in link was already used; ask for a new one")
    exp = int(now.timestamp()) + SESSION_TTL
    until = claims.get("until")
    if isinstance(until, int):
        exp = min(exp, until)
    session_claims = {
        "actor": claims["actor"],
        "role": claims["role"],
        "uscc": claims["uscc"],
        "exp": exp,
        "sid": secrets.token_urlsafe(18),
    }
    resp = redirect(url_for("audit_web.index"), code=303)
    # Lax, not Strict: a link opened from another site (mail, chat, a ticket) redirects
    # to the view in a cross-site chain, where a Strict cookie is not sent: the view
    # answered 401 and the link was spent (browser probe, F4). The view is read-only
    # (GET), and its one form (sign out) is a POST, which a Lax cookie does not join
    # from another site.
    resp.set_cookie(
        COOKIE,
        make_token("session", session_claims),
        max_age=exp - int(now.timestamp()),
        path="/audit",
        secure=_secure_cookie(),
        httponly=True,
        samesite="Lax",
    )
    return resp


@bp.post("/logout")
def logout() -> BaseResponse:
    from ca.api import svc

    token = request.cookies.get(COOKIE)
    if token:
        try:
            claims = read_token("session", token, _now())
        except Unauthenticated:
            claims = {}  # expired or not ours: nothing to end
        sid, exp = claims.get("sid"), claims.get("exp")
        if isinstance(sid, str) and isinstance(exp, int):
            until = datetime.datetime.fromtimestamp(exp, datetime.UTC)
            svc().store.remember(SIGNED_OUT + sid, until)
    resp = redirect(url_for("audit_web.index"), code=303)
    resp.delete_cookie(
        COOKIE, path="/audit", secure=_secure_cookie(), httponly=True, samesite="Lax"
    )
    return resp


def _secure_cookie() -> bool:
    """``Secure`` whenever the view's public base URL is https: behind a TLS-terminating
    proxy the request reaching this server is plain HTTP, and its ``X-Forwarded-Proto``
    is a header anyone could send. A development server over plain HTTP (the default
    base URL, ``http://127.0.0.1:8000``) sets none, as before."""
    base = audit_service().public_base_url
    return base.lower().startswith("https://") or request.is_secure


@bp.after_request
def _headers(resp: Response) -> Response:
    if resp.mimetype == "text/html":
        # A page answers in the reader's language: a cache must not give one reader's
        # to another (RFC 9110 §12.5.5).
        resp.vary.add("Accept-Language")
        resp.headers["Content-Language"] = _language()
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "DENY"
    if not request.path.startswith("/audit/static/"):
        resp.cache_control.no_store = True
    return resp


@bp.errorhandler(EPortError)
def _error(err: EPortError) -> Response:
    if request.path == "/audit/session":  # the CLI's JSON endpoint: problem+json
        from ca.problems import problem_response

        return problem_response(err)
    return _page(err.title, err.detail, err.status)


def _page(title: str, detail: str, status: int) -> Response:
    """An error page: its title (the error's kind) in the reader's language, its detail
    as the API wrote it (the words the CLI prints and the logs hold)."""
    title = i18n.translate(_language(), title)
    error = {"title": title, "detail": detail, "status": status}
    resp = make_response(_render("audit/message.html", error=error, web=None), status)
    return resp


def _language() -> str:
    """The page's language from the request's ``Accept-Language`` (English by default)."""
    return i18n.choose(request.accept_languages)


def _render(template: str, **context: Any) -> str:
    """A page of the view in the reader's language (:mod:`ca.i18n`)."""
    return render_template(template, **i18n.page_context(_language()), **context)


def html_http_error(err: Any) -> Response | None:
    """The view's page for an HTTP error on its paths (an unknown page, a malformed
    entry index): HTML like its other answers, not the API's problem+json."""
    path = request.path
    if not isinstance(err, HTTPException):
        return None  # the view answers its own errors (EPortError) itself
    if not path.startswith("/audit/") or path == "/audit/session":
        return None
    if path.startswith("/audit/static/"):
        return None
    if request_ctx.url_adapter is None:
        # No URL adapter (a Host with an empty label, or one over 63 characters: Werkzeug's
        # BadHost): the page's url_for cannot run, and answered 500 with a traceback in the
        # log for every such request (HTTP edges probe, session 27). The API's problem.
        return None
    # not routed to the blueprint, so its after_request does not run: its headers here.
    # Titled in sentence case, as the view's own errors are ("Not found").
    title = str(err.name).capitalize()
    detail = str(err.description)
    if err.description == type(err).description:  # Werkzeug's own words, not an error's
        detail = i18n.translate(_language(), detail)
    answer = _headers(_page(title, detail, int(err.code or 500)))
    allowed = getattr(err, "valid_methods", None)
    if err.code == 405 and allowed:  # RFC 9110 §15.5.6: a 405 says what is allowed
        answer.headers["Allow"] = ", ".join(sorted(allowed))
    return answer


# -- pages --------------------------------------------------------------------------------


def _checkpoint(s: Session) -> translog.SignedHead:
    head = audit_service().signer.latest(s)
    s.commit()
    return head


def _day(s: Session) -> Any:
    if s.get_bind().dialect.name == "sqlite":
        return func.date(EventRow.at)
    return cast(func.timezone("UTC", EventRow.at), Date)


def chart(s: Session, reader: Reader, today: datetime.date) -> dict[str, Any]:
    """Issuances and revocations per UTC day over the last :data:`CHART_DAYS` days, as SVG
    geometry: ``bars`` (x, y, width, height, kind, day, n), axis ticks, and totals."""
    first = today - datetime.timedelta(days=CHART_DAYS - 1)
    day = _day(s)
    query = (
        select(day, EventRow.type, func.count())
        .where(
            EventRow.type.in_(ISSUED + REVOKED),
            EventRow.at >= datetime.datetime.combine(first, datetime.time(), datetime.UTC),
        )
        .group_by(day, EventRow.type)
    )
    if not reader.reads_all:
        query = query.where(EventRow.uscc == reader.uscc)
    counts: dict[tuple[str, str], int] = {}
    for d, kind, n in s.execute(query):
        key = (str(d)[:10], "revoked" if kind in REVOKED else "issued")
        counts[key] = counts.get(key, 0) + int(n)
    days = [first + datetime.timedelta(days=i) for i in range(CHART_DAYS)]
    peak = max(counts.values(), default=0)
    top = max(peak, 1)
    width, height, left, bottom, plot_h = 760, 240, 40, 28, 190
    slot = (width - left - 10) / CHART_DAYS
    bar_w = max(slot / 2 - 2, 2)
    bars = []
    for i, d in enumerate(days):
        for j, kind in enumerate(("issued", "revoked")):
            n = counts.get((d.isoformat(), kind), 0)
            if not n:
                continue
            h = plot_h * n / top
            bars.append(
                {
                    "x": round(left + i * slot + 1 + j * (bar_w + 1), 1),
                    "y": round(height - bottom - h, 1),
                    "w": round(bar_w, 1),
                    "h": round(h, 1),
                    "kind": kind,
                    "day": d.isoformat(),  # the page words its label (ca.i18n)
                    "n": n,
                }
            )
    ticks = [
        {"x": round(left + i * slot + slot / 2, 1), "label": d.strftime("%m-%d")}
        for i, d in enumerate(days)
        if i % 5 == 0 or i == CHART_DAYS - 1
    ]
    grid = sorted({0, top // 2, top}) if top > 1 else [0, 1]
    return {
        "width": width,
        "height": height,
        "left": left,
        "base": height - bottom,
        "plot_h": plot_h,
        "bars": bars,
        "ticks": ticks,
        "grid": [{"y": round(height - bottom - plot_h * g / top, 1), "label": g} for g in grid],
        "issued": sum(n for (_, k), n in counts.items() if k == "issued"),
        "revoked": sum(n for (_, k), n in counts.items() if k == "revoked"),
        "first": first.isoformat(),
        "last": today.isoformat(),
    }


@bp.get("/")
def index() -> str:
    web = current_reader()
    s = session()
    head = _checkpoint(s)
    recent = find_events(s, EventFilter().for_reader(web.reader), limit=10, newest_first=True)
    graph = chart(s, web.reader, _now().date())
    origin = audit_service().origin(s)
    try:
        key = audit_service().verifier_key(s)
    except translog.LogKeyRetired as exc:
        key = i18n.translate(_language(), "(none named here: {reason})", reason=exc.detail)
    s.rollback()
    return _render(
        "audit/index.html",
        web=web,
        head=head,
        note=head.note.decode(),
        verifier_key=key,
        origin=origin,
        root_b64=base64.b64encode(head.root_hash).decode(),
        events=[event_json(i, r) for i, r in recent],
        chart=graph,
        types=[t.value for t in EventType],
    )


@bp.get("/events")
def events() -> str:
    web = current_reader()
    args = request.args
    flt = _web_filter().for_reader(web.reader)
    before = args.get("before")
    if before and not (before.isascii() and before.isdigit()):
        raise BadRequest("before must be a log index")
    before_idx = int(before) if before else None
    if before_idx is not None and not 0 <= before_idx < 2**63:  # the database's integers
        raise BadRequest("before must be a log index")
    s = session()
    rows = find_events(s, flt, before=before_idx, limit=PAGE, newest_first=True)
    s.rollback()
    older = rows[-1][0] if len(rows) == PAGE else None
    query = {k: v for k, v in args.items() if k != "before" and v}
    return _render(
        "audit/events.html",
        web=web,
        events=[event_json(i, r) for i, r in rows],
        older=older,
        query=query,
        args=args,
        types=[t.value for t in EventType],
    )


class _Args(dict[str, str]):
    """Query arguments in the shape :meth:`EventFilter.from_args` reads."""

    def getlist(self, name: str) -> list[str]:
        value = self.get(name)
        return [value] if value else []


def _web_filter() -> EventFilter:
    args = request.args
    return EventFilter.from_args(
        _Args(
            subject=args.get("q", ""),
            type=args.get("type", ""),
            uscc=args.get("uscc", ""),
            serial=args.get("serial", ""),
            since=args.get("since", ""),
            until=args.get("until", ""),
        )
    )


def _proof(s: Session, index: int, head: translog.SignedHead) -> list[str]:
    return [n.hex() for n in translog.tree_at(s, head.size).inclusion_proof(index, head.size)]


@bp.get("/certificates/<serial>")
def certificate(serial: str) -> str:
    web = current_reader()
    serial = normalize_serial(serial)
    s = session()
    row = s.get(CertificateRow, serial)
    if row is None or not (web.reader.reads_all or row.uscc == web.reader.uscc):
        raise NotFound(f"no certificate {serial} in your view of the CA's records")
    head = _checkpoint(s)
    found = issuance_entry(s, serial)
    entry = proof = None
    index = None
    if found is not None and found[0] < head.size:
        index, data, _ = found
        entry = {"raw": data.decode(), "leaf": leaf_hash(data).hex(), "fields": decode(data)}
        proof = _proof(s, index, head)
    history = find_events(s, EventFilter(serial=serial).for_reader(web.reader), limit=100)
    s.rollback()
    return _render(
        "audit/certificate.html",
        web=web,
        cert=row,
        head=head,
        index=index,
        entry=entry,
        proof=proof,
        history=[event_json(i, r) for i, r in history],
    )


@bp.get("/entries/<number>")
def entry(number: str) -> str:
    # ASCII digits as the API reads them, not the route converter's: it took other
    # scripts' digits ("٣" showed entry 3) and leading zeros ("05")
    if not (number.isascii() and number.isdigit()) or (number != "0" and number[0] == "0"):
        raise NotFound(f"no entry {number[:40]!r}: an entry is named by its log index")
    index = int(number)
    web = current_reader()
    s = session()
    head = _checkpoint(s)
    if index >= head.size:  # asked first: an index past the database's integers is too
        raise NotFound(f"no entry {index} in your view of the log")
    rows = find_events(
        s, EventFilter().for_reader(web.reader), after=index - 1, before=index + 1, limit=1
    )
    if not rows:
        raise NotFound(f"no entry {index} in your view of the log")
    from ca.models import LogEntryRow

    data = bytes(s.execute(select(LogEntryRow.entry).where(LogEntryRow.idx == index)).scalar_one())
    proof = _proof(s, index, head)
    s.rollback()
    return _render(
        "audit/entry.html",
        web=web,
        head=head,
        index=index,
        event=event_json(*rows[0]),
        raw=data.decode(),
        leaf=leaf_hash(data).hex(),
        proof=proof,
    )
