"""A request body as its framing declares it, or no request at all (RFC 9112 §6).

Both apps read a body only once it is whole: a ``Content-Length`` body all of whose
octets arrived, or a chunked one that ended within the app's limit. The WSGI server does
not check this for them. Gunicorn marks its input as terminated
(``wsgi.input_terminated``), so neither Werkzeug nor a view's own ``read(length)``
notices a client that declared more octets than it sent and then closed its side: the
view would store what it got (an application, an enrollment that uses up its code). And a
chunked body has no declared length, so Werkzeug's limit stops reading at
``MAX_CONTENT_LENGTH`` without saying so, and the view parses a cut body.

:func:`install_body_framing` wraps an app's WSGI callable, outside its fast paths, so that:

- a body shorter than its ``Content-Length`` is a 400 problem, and no view runs;
- a chunked body over the limit is a 413 problem, as one declared over it is;
- a chunked body within the limit reaches the app as a ``Content-Length`` body, so the
  fast paths and the views read both framings the same way;
- framing the server refuses while the body is read (a chunk size that is not hex, the
  connection closed mid-chunk) is a 400 problem, as Flask's handler answers it;
- a body sent with a coding that nothing here decodes is refused before any view reads
  it: a transfer coding other than ``chunked`` (``gzip, chunked``: the server takes off
  the chunks, not the gzip) is a 501 problem (RFC 9112 §6.1), and a ``Content-Encoding``
  other than ``identity`` a 415 with ``Accept-Encoding: identity`` (RFC 9110 §12.5.3,
  RFC 7694 §3). Otherwise an app would act on octets that are not the representation
  the client declared, and a proxy that decodes them would see another request.

A body declared over the limit is left to the app, which refuses it (413; OCSP answers
``malformedRequest``) without reading it.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from ca.errors import (
    BadRequest,
    CodingNotImplemented,
    EPortError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ca.problems import EXTENSION as PROBLEMS
from ca.problems import PROBLEM_JSON, ErrorAnswers, request_instance, unreadable_body

log = logging.getLogger("eport.http")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def read_whole(stream: Any, wanted: int) -> bytes:
    """Up to ``wanted`` octets of ``stream``, fewer only at its end (a ``read`` may return
    less than asked without being at the end)."""
    parts: list[bytes] = []
    got = 0
    while got < wanted:
        part = stream.read(wanted - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _declared_length(environ: dict[str, Any]) -> int | None:
    value = str(environ.get("CONTENT_LENGTH") or "").strip()
    if value.isascii() and value.isdigit():
        return int(value)
    return None  # absent (a WSGI server refuses a malformed one before any app)


def _body(environ: dict[str, Any], limit: int | None) -> bytes | None:
    """The whole body, or None when the app is to see the request as it came (no body, or
    one declared over the limit). Raises :class:`ca.errors.EPortError` for a body that
    cannot be the request the client meant."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return None
    transfer = environ.get("HTTP_TRANSFER_ENCODING")
    content = str(environ.get("HTTP_CONTENT_ENCODING") or "")
    if transfer is not None:  # chunked: the server decodes it; ends at EOF
        _check_transfer_coding(str(transfer))
        body = bytes(stream.read()) if limit is None else read_whole(stream, limit + 1)
        if limit is not None and len(body) > limit:
            raise PayloadTooLarge(f"request bodies are limited to {limit} bytes")
        if body:  # an empty chunked body has nothing coded, as Content-Length: 0 has not
            _check_content_coding(content)
        return body
    declared = _declared_length(environ)
    if declared:
        _check_content_coding(content)
    if not declared or (limit is not None and declared > limit):
        return None
    body = read_whole(stream, declared)
    if len(body) < declared:
        raise BadRequest(
            f"the request body ended after {len(body)} of the {declared} bytes its "
            "Content-Length declares: nothing was done"
        )
    return body


def _check_transfer_coding(transfer: str) -> None:
    """Refuse a transfer coding other than chunked (see the module's notes)."""
    codings = [c.strip().lower() for c in transfer.split(",") if c.strip()]
    if codings and codings != ["chunked"]:
        raise CodingNotImplemented(
            f"the transfer coding {transfer.strip()[:60]!r} is not implemented: send the body "
            "chunked or with a Content-Length, and nothing else"
        )


def _check_content_coding(content: str) -> None:
    """Refuse a body's content coding other than identity (see the module's notes)."""
    coded = [c.strip().lower() for c in content.split(",") if c.strip()]
    if any(c != "identity" for c in coded):
        raise UnsupportedMediaType(
            f"the content coding {content.strip()[:60]!r} is not accepted: send the body "
            "as it is, without Content-Encoding",
        )


def body_framing(
    inner: WSGIApp,
    limit: int | None,
    answers: ErrorAnswers,
    oauth: Callable[[dict[str, Any]], bool] | None = None,
) -> WSGIApp:
    """``inner`` behind the framing check (see the module's notes); ``limit`` is the app's
    ``MAX_CONTENT_LENGTH``, ``answers`` its problem writer; ``oauth``, whether a request
    goes to an OAuth endpoint, whose refusals are RFC 6749 §5.2 ``invalid_request``."""

    def framed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            body = _body(environ, limit)
        except EPortError as err:
            if oauth is not None and oauth(environ):
                return _refuse_oauth(start_response, err)
            return _refuse(start_response, answers, err, environ)
        except Exception as exc:
            if not unreadable_body(exc):
                raise
            what = type(exc).__name__
            path = request_instance(environ)
            log.warning(
                "unreadable request body on %s %s: %s", environ["REQUEST_METHOD"], path, what
            )
            unreadable = BadRequest(f"the request body cannot be read as it is framed ({what})")
            if oauth is not None and oauth(environ):
                return _refuse_oauth(start_response, unreadable)
            return _refuse(start_response, answers, unreadable, environ)
        if body is not None:
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)  # now framed by its length
        return inner(environ, start_response)

    return framed


def _refuse(
    start_response: Callable[..., Any],
    answers: ErrorAnswers,
    err: EPortError,
    environ: dict[str, Any],
) -> Iterable[bytes]:
    status, out = answers.domain(err, request_instance(environ))
    headers = [("Content-Type", PROBLEM_JSON), ("Content-Length", str(len(out)))]
    if isinstance(err, UnsupportedMediaType):
        headers.append(("Accept-Encoding", "identity"))  # RFC 7694 §3
    start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", headers)
    return [out]


def _refuse_oauth(start_response: Callable[..., Any], err: EPortError) -> Iterable[bytes]:
    """The refusal at an OAuth endpoint, in its RFC's words (``{error,
    error_description}``), as its views and its 413 answer: a problem there was read by
    OAuth clients as a body they do not know (fuzzing probe 24)."""
    out = json.dumps(
        {"error": "invalid_request", "error_description": err.detail}, ensure_ascii=False
    ).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(out))),
        ("Cache-Control", "no-store"),
    ]
    if isinstance(err, UnsupportedMediaType):
        headers.append(("Accept-Encoding", "identity"))
    start_response(f"{err.status} {HTTP_STATUS_CODES[err.status].upper()}", headers)
    return [out]


def install_body_framing(app: Flask, oauth_endpoints: frozenset[str] | None = None) -> None:
    """Put the framing check in front of ``app``'s WSGI callable, fast paths included
    (install it last). Needs the app's problem handlers (:mod:`ca.problems`). A request
    for one of ``oauth_endpoints`` (Flask endpoint names) is refused in OAuth's words."""
    oauth = None
    if oauth_endpoints:

        def oauth(environ: dict[str, Any]) -> bool:  # the refusal's path only
            try:
                endpoint, _ = app.url_map.bind_to_environ(environ).match()
            except HTTPException:
                return False
            return endpoint in oauth_endpoints

    app.wsgi_app = body_framing(  # type: ignore[method-assign,assignment]
        app.wsgi_app, app.config["MAX_CONTENT_LENGTH"], app.extensions[PROBLEMS], oauth
    )
