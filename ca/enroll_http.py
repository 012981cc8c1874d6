"""``POST /ca/v1/enroll`` answered before Flask routes anything: the CA's hottest write.

Flask's routing, request and response objects cost a real share of an enrollment's
budget (about a millisecond), so a JSON request with a plain ``Content-Length`` body is
read, parsed and answered here. The decision is the one the Flask view makes
(:func:`ca.api.enrollment`), and errors are answered through the app's own
:class:`ca.problems.ErrorAnswers`, so both send the same status, headers and bytes.

Whatever this path is not certain about goes on to Flask with the body intact: another
media type (Flask's 415, :func:`ca.wellformed.json_request_body`), no body, one over the
app's limit (Flask answers 413), a body that is not a JSON object or that
:mod:`ca.wellformed` refuses (Flask's 400 says why), a query string (none is read here;
Flask's edge check refuses NUL in one). Once the enrollment has been tried, nothing is
handed on: an unexpected failure is logged and answered 500 as Flask's handler would,
never tried a second time (the code may have been redeemed).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any, cast

from flask import Flask, Response
from werkzeug.http import HTTP_STATUS_CODES, parse_options_header

from ca.api import enrollment
from ca.app import EXTENSION, CAService, reload_hierarchy
from ca.errors import BadRequest, EPortError
from ca.problems import EXTENSION as PROBLEMS
from ca.problems import PROBLEM_JSON, ErrorAnswers, unexpected_headers
from ca.wellformed import JSON_MEDIA_TYPE, json_object

ENROLL_PATH = "/ca/v1/enroll"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _is_json(content_type: str) -> bool:
    """``application/json`` with any parameters, parsed as Werkzeug parses it for the
    view (``request.mimetype``): this path takes only what the view would read as JSON;
    the rest Flask refuses (415)."""
    return parse_options_header(content_type)[0].lower() == JSON_MEDIA_TYPE


def _content_length(environ: dict[str, Any]) -> int | None:
    """The body's declared length, read as Werkzeug reads it (ASCII digits only); None
    for a chunked body or a header that is absent or not a plain number."""
    if "HTTP_TRANSFER_ENCODING" in environ:
        return None
    value = str(environ.get("CONTENT_LENGTH") or "").strip()
    if not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as :func:`ca.api.json_body` reads it (:func:`ca.wellformed.json_object`),
    when that is a JSON object; None for what it refuses (Flask answers those)."""
    try:
        return json_object(body)
    except BadRequest:
        return None


def _status(code: int) -> str:
    return f"{code} {HTTP_STATUS_CODES[code].upper()}"  # as Werkzeug writes it


def install_enroll_fast_path(app: Flask) -> None:
    """Wrap ``app.wsgi_app`` so that ``POST /ca/v1/enroll`` with a JSON body of a
    declared length within ``MAX_CONTENT_LENGTH`` is answered without Flask's request
    machinery (a chunked body comes framed by its length, and a short one never comes:
    :mod:`ca.framing` sits outside this path). What the app's before-request hook does
    (:func:`ca.app.reload_hierarchy`: notice a changed hierarchy, unseal under joint
    custody) is done here too."""
    inner: WSGIApp = app.wsgi_app

    def enroll_first(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != ENROLL_PATH or environ.get("REQUEST_METHOD") != "POST":
            return inner(environ, start_response)
        if not _is_json(environ.get("CONTENT_TYPE", "")):
            return inner(environ, start_response)
        if environ.get("QUERY_STRING"):  # none is read; Flask's edge checks it (NUL: 400)
            return inner(environ, start_response)
        length = _content_length(environ)
        limit = app.config["MAX_CONTENT_LENGTH"]
        if not length or (limit is not None and length > limit):
            return inner(environ, start_response)
        body: bytes = environ["wsgi.input"].read(length)
        data = _json_object(body) if len(body) == length else None
        if data is None:
            environ["wsgi.input"] = io.BytesIO(body)  # Flask answers, from the same bytes
            return inner(environ, start_response)
        answers: ErrorAnswers = app.extensions[PROBLEMS]
        extra: list[tuple[str, str]] = []
        try:
            with app.app_context():
                reload_hierarchy(app)
                service: CAService = app.extensions[EXTENSION]
                status, doc = enrollment(service.authority, data)
                # jsonify's bytes and type, by construction (the app's response_class)
                resp = cast(Response, app.json.response(doc))
            out = resp.get_data()
            content_type = resp.headers["Content-Type"]
        except EPortError as err:
            status, out = answers.domain(err, ENROLL_PATH)
            content_type = PROBLEM_JSON
            extra = unexpected_headers(status)  # a 503's Retry-After, as Flask's handler
        except Exception:
            status, out = answers.unexpected("POST", ENROLL_PATH)
            content_type = PROBLEM_JSON
            extra = unexpected_headers(status)
        start_response(
            _status(status),
            [("Content-Type", content_type), ("Content-Length", str(len(out))), *extra],
        )
        return [out]

    app.wsgi_app = enroll_first  # type: ignore[method-assign]
