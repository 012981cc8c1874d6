"""Errors over HTTP as RFC 9457 problem+json, for both Flask apps (the CA and the token
service): one set of handlers, so every error of either looks the same."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from ca.errors import (
    BadRequest,
    DatabaseUnavailable,
    EPortError,
    PayloadTooLarge,
    StorageFull,
    database_unavailable_cause,
    server_error_problem,
    storage_full_cause,
)

log = logging.getLogger("eport.http")
PROBLEM_JSON = "application/problem+json"
EXTENSION = "eport.problems"
STORAGE_FULL_DETAIL = "the server's storage is full: try again once its operator has freed space"
DATABASE_UNAVAILABLE_DETAIL = (
    "the database is unavailable or busy: try again shortly. If the request changes "
    "something, whether it took effect is not known: look before sending it again (an "
    "enrollment or renewal sent again with the same key gets the certificate if it was "
    "issued, and uses no second code)"
)
RETRY_AFTER_SECONDS = 5


def log_database_unavailable(method: str, path: str, down: BaseException) -> None:
    """One line, no traceback: an outage is not a bug, nor a reason to flood the log."""
    why = " ".join(str(down).split())[:300]
    log.error("database unavailable on %s %s: %s: %s", method, path, type(down).__name__, why)


def log_retry(what: str, logger: logging.Logger) -> None:
    """A background task's failure, on ``logger`` (call it in the task's ``except``): a
    database that cannot be used now is one line each time (an outage is no bug, and the
    task runs every few seconds); anything else, the traceback. The CA's and the token
    service's background tasks use it. A full disk is one line too (the emergency plan
    §5: the refresher logged a traceback every 30 s while it lasted, crash probe s26)."""
    exc = sys.exc_info()[1]
    cause = database_unavailable_cause(exc)
    full = storage_full_cause(exc) if cause is None else None
    if cause is not None:
        why = " ".join(str(cause).split())[:200]
        logger.error("%s (the database is unavailable: %s)", what, why)
    elif full is not None:
        why = " ".join(str(full).split())[:200]
        logger.error("%s (the storage is full: %s)", what, why)
    else:
        logger.exception("%s", what)


def unexpected_headers(status: int) -> list[tuple[str, str]]:
    """Headers beyond the type and length for :meth:`ErrorAnswers.unexpected`'s answer:
    ``Retry-After`` on a 503 (RFC 9110 §10.2.3)."""
    return [("Retry-After", str(RETRY_AFTER_SECONDS))] if status == 503 else []


def unreadable_body(exc: BaseException) -> bool:
    """Whether ``exc`` is the WSGI server refusing the request body's framing as a view
    reads it: gunicorn raises its ParseException (a chunk size that is not hex, a chunk
    without its CRLF) or NoMoreData (the client closed mid-body) from ``wsgi.input``.
    That is the client's malformed request, not a failure of ours."""
    try:
        from gunicorn.http.errors import NoMoreData, ParseException
    except ImportError:  # another WSGI server
        return False
    return isinstance(exc, ParseException | NoMoreData)


PATH_SAFE = "/:@!$&'()*+,;="
"""What a URI path keeps as it is besides the unreserved characters (RFC 3986 §3.3:
pchar's sub-delims, ":" and "@", and the segments' "/"); the rest is percent-encoded."""


def request_instance(environ: Mapping[str, Any]) -> str:
    """The request's path as a problem's ``instance``, a URI reference (RFC 9457 §3.1.5):
    its octets as the client sent them (WSGI carries them as latin-1, PEP 3333),
    percent-encoded (RFC 3986 §2.1), so a NUL, another control character or a byte that
    is not UTF-8 is never written into the document as a character."""
    path = f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}" or "/"
    try:
        octets = path.encode("latin-1")
    except UnicodeEncodeError:  # a server that decoded the path itself
        octets = path.encode("utf-8", "surrogateescape")
    return quote(octets, safe=PATH_SAFE)


def problem_body(err: EPortError, instance: str, dumps: Callable[[Any], str]) -> bytes:
    """The problem document of ``err`` at ``instance`` (a URI reference: a request's
    through :func:`request_instance`) as ``dumps`` (the app's JSON provider) writes it;
    the answer's status is ``err.status``."""
    return dumps(err.problem(instance=instance)).encode()


def problem_response(err: EPortError) -> Response:
    body = problem_body(err, request_instance(request.environ), json.dumps)
    return _with_challenge(Response(body, status=err.status, mimetype=PROBLEM_JSON), err)


def _with_challenge(resp: Response, err: EPortError) -> Response:
    """A 401 names how to authenticate (``WWW-Authenticate``, RFC 9110 §15.5.2)."""
    if err.status == 401 and err.challenge:
        resp.headers["WWW-Authenticate"] = err.challenge
    return resp


@dataclass(frozen=True)
class ErrorAnswers:
    """An app's answers to a domain error and to an unexpected failure, without Flask:
    the handlers below and the WSGI fast paths (:mod:`ca.enroll_http`) answer and log
    through this one code. Kept in ``app.extensions[EXTENSION]``."""

    dumps: Callable[[Any], str]
    """The app's JSON writer (``app.json.dumps``)."""
    unexpected_detail: str
    """The ``detail`` of every unexpected 500; nothing about the cause goes out."""

    def domain(self, err: EPortError, instance: str) -> tuple[int, bytes]:
        """Status and problem+json body for ``err``; a server-side one (5xx) is logged."""
        if err.status >= 500:
            log.error("%s: %s", type(err).__name__, err.detail)
        return err.status, problem_body(err, instance, self.dumps)

    def unexpected(
        self, method: str, path: str, exc: BaseException | None = None
    ) -> tuple[int, bytes]:
        """The 500 for the exception being handled (call it in an ``except`` block): its
        traceback is logged, the body says only ``unexpected_detail``. A full disk or
        database is no bug: it is answered 507 (:class:`StorageFull`, which any client
        may retry once space is freed) and logged in one line, without a traceback, so
        a full disk does not also fill the log. ``path`` is a URI reference, as
        ``domain``'s ``instance``."""
        exc = exc or sys.exc_info()[1]
        full = storage_full_cause(exc)
        if full is not None:
            log.error("storage full on %s %s: %s", method, path, full)
            return 507, problem_body(StorageFull(STORAGE_FULL_DETAIL), path, self.dumps)
        down = database_unavailable_cause(exc)
        if down is not None:
            log_database_unavailable(method, path, down)
            problem = DatabaseUnavailable(DATABASE_UNAVAILABLE_DETAIL)
            return 503, problem_body(problem, path, self.dumps)
        log.exception("unexpected error on %s %s", method, path)
        return 500, self.dumps(server_error_problem(self.unexpected_detail)).encode()


def no_cache_of_private(resp: Response) -> Response:
    """Either service's rule for its answers (an ``after_request`` hook): none is sniffed as
    another type, and an answer to an authenticated or state-changing request (codes,
    vetted data, audit records, sessions, role grants) is never stored by a cache."""
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    private = request.method not in ("GET", "HEAD") or "Authorization" in request.headers
    if private and "Cache-Control" not in resp.headers:
        resp.cache_control.no_store = True
    return resp


HTML_ERRORS = "eport.html_errors"
"""``app.extensions`` key of an optional ``(HTTPException | EPortError) -> Response |
None``: a browser view (the audit view, the portal) answers errors on its own paths with a
page; None falls through to problem+json."""


def _http_detail(err: HTTPException, described_at: str) -> str:
    """Werkzeug's error in the API's words: its stock texts speak to someone who typed a
    URL ("If you entered the URL manually please check your spelling"). A view's own
    description is kept; a 404 names where the service's paths are described."""
    if err.description != type(err).description:
        return str(err.description)
    if isinstance(err, NotFound):
        return f"nothing is at {request.path[:200]!r}: {described_at}"
    if isinstance(err, MethodNotAllowed):
        allowed = ", ".join(sorted(err.valid_methods or ()))
        return f"{request.method[:20]} is not allowed here (allowed: {allowed})"
    return str(err.description)


def install_problem_handlers(
    app: Flask, max_body_bytes: int, unexpected_detail: str, described_at: str
) -> None:
    """Every error as RFC 9457 problem+json: domain errors as they describe themselves,
    Werkzeug's HTTP errors (413 naming the limit; 404 saying ``described_at``, where the
    service's paths are described), and anything unexpected as a logged 500 whose body
    says ``unexpected_detail`` and nothing of the cause."""

    answers = ErrorAnswers(app.json.dumps, unexpected_detail)
    app.extensions[EXTENSION] = answers

    @app.before_request
    def _relative_slash_redirect() -> Response | None:
        # Werkzeug's redirect of a path without its trailing slash (/portal → /portal/)
        # named the request's Host header in Location: a Host the client (or a cache in
        # front) sent came back as the redirect's target. Relative, it names none.
        exc = request.routing_exception
        if not isinstance(exc, RequestRedirect):
            return None
        parts = urlsplit(exc.new_url)
        answer = Response(status=exc.code)
        answer.headers["Location"] = urlunsplit(("", "", parts.path, parts.query, ""))
        return answer

    @app.errorhandler(EPortError)
    def _domain_error(err: EPortError) -> Response:
        page = app.extensions.get(HTML_ERRORS)
        if page is not None:  # a browser view's own page for its paths
            shown: Response | None = page(err)
            if shown is not None:
                return shown
        status, body = answers.domain(err, request_instance(request.environ))
        resp = _with_challenge(Response(body, status=status, mimetype=PROBLEM_JSON), err)
        resp.headers.extend(unexpected_headers(status))  # a 503's Retry-After
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        page = app.extensions.get(HTML_ERRORS)
        if page is not None:  # a browser view's own page for its paths
            answer: Response | None = page(err)
            if answer is not None:
                return answer
        status = err.code or 500
        if status == 413:
            return problem_response(
                PayloadTooLarge(f"request bodies are limited to {max_body_bytes} bytes")
            )
        body = {
            "type": "about:blank",
            "title": err.name,
            "status": status,
            "detail": _http_detail(err, described_at),
            "instance": request_instance(request.environ),
        }
        answer = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
        for name, value in err.get_headers():  # e.g. a 405's Allow (RFC 9110 §15.5.6)
            if name.lower() != "content-type":
                answer.headers.add(name, value)
        return answer

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        path = request_instance(request.environ)  # logged too: no control characters
        if unreadable_body(err):  # one line, no traceback, none of the client's bytes
            what = type(err).__name__
            log.warning("unreadable request body on %s %s: %s", request.method, path, what)
            return problem_response(
                BadRequest(f"the request body cannot be read as it is framed ({what})")
            )
        status, body = answers.unexpected(request.method, path, err)
        answer = Response(body, status=status, mimetype=PROBLEM_JSON)
        for name, value in unexpected_headers(status):
            answer.headers[name] = value
        return answer
