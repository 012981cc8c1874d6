"""What both services refuse at the edge, before a request's input goes any further.

JSON bodies are read as I-JSON (RFC 7493 §2): UTF-8 (RFC 8259 §8.1), no lone surrogate
(§2.1: a string must be Unicode text), finite numbers (§2.2: ``NaN``, ``Infinity`` and
``1e400`` are no IEEE 754 double), unique member names (§2.3). Beyond I-JSON, no string
anywhere in a request (body, URL path, query, form) may hold U+0000: PostgreSQL refuses
NUL in text, so it would fail the request deep inside a transaction (a 500) where SQLite
stored it. Such input is refused as a 400 problem naming where it was found; none of it
is stored, logged or echoed (the problem names the character by its code point).

A JSON body must also say it is JSON: a non-empty body whose media type is not
``application/json`` is refused with 415 before it is parsed. Otherwise a form on any
web site could make a visitor's browser post JSON text to the CA as ``text/plain`` or a
form (a "simple" request, sent without a CORS preflight: Fetch §2.2.2, the
CORS-safelisted request headers). Parameters are ignored (JSON text is UTF-8 and
``application/json`` defines none: RFC 8259 §8.1, §11). ``application/*+json`` types
(RFC 6839 §3.1) are refused too: no client of these APIs sends one, and each names a
format of its own, not these endpoints' objects.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ca.errors import BadRequest, EPortError, UnsupportedMediaType

if TYPE_CHECKING:  # the checks themselves are framework-free (ca.signedreq uses them)
    from flask import Flask

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""What no text of a request may hold: NUL, and a UTF-16 surrogate (Python's JSON reader
makes one of ``"\\ud800"``; no UTF-8 writer or database driver takes it)."""


def _character(ch: str) -> str:
    if ch == "\x00":
        return "a NUL character (U+0000)"
    return f"a lone surrogate (U+{ord(ch):04X}), which is not a Unicode character"


def check_text(value: str, where: str) -> None:
    """Raise :class:`BadRequest` if ``value`` holds NUL or a lone surrogate; ``where``
    names it for the client (e.g. ``"'reason'"``)."""
    found = UNSTORABLE.search(value)
    if found is not None:
        raise BadRequest(f"{where} holds {_character(found.group())}")


def unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, value in pairs:
        if name in doc:
            check_text(name, "a member name")
            raise BadRequest(f"member {name!r} appears twice in one object (RFC 7493 §2.3)")
        doc[name] = value
    return doc


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"the number {text[:20]} is out of range (RFC 7493 §2.2)")
    return value


def _no_constant(name: str) -> float:
    raise BadRequest(f"{name} is not a JSON number (RFC 8259 §6)")


def _check_strings(doc: Any) -> None:
    """Every member name and string of ``doc``, walked without recursion (a body may be
    nested as deep as the parser allowed), through :func:`check_text`."""
    todo: list[tuple[Any, str]] = [(doc, "the body")]
    while todo:
        value, where = todo.pop()
        if isinstance(value, str):
            check_text(value, where)
        elif isinstance(value, dict):
            for k, v in value.items():
                check_text(k, f"a member name in {where}")
                todo.append((v, repr(k) if where == "the body" else f"{where}[{k!r}]"))
        elif isinstance(value, list):
            todo.extend((v, f"{where}[{i}]") for i, v in enumerate(value))


def json_object(raw: bytes) -> dict[str, Any]:
    """The request body ``raw`` as a JSON object (I-JSON, no NUL); :class:`BadRequest`
    saying why it is not one. An empty body is an empty object."""
    if not raw:
        return {}
    try:
        text = raw.decode("utf-8-sig")  # RFC 8259 §8.1: a parser MAY ignore a BOM
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the body is not UTF-8 (RFC 8259 §8.1): byte {exc.start} is not valid"
        ) from None
    try:
        data = json.loads(
            text,
            object_pairs_hook=unique_members,
            parse_float=_finite,
            parse_constant=_no_constant,
        )
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's cap, not a JSON error
            raise BadRequest(
                f"the body is not JSON this API reads: a number of more than "
                f"{sys.get_int_max_str_digits()} digits"
            ) from None
        raise BadRequest(f"the body is not JSON: {exc}") from None
    except RecursionError:  # nested deeper than the parser's stack (a few KB of '[')
        raise BadRequest("the body is not JSON this API reads: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    if "\\u" in text:  # else no string holds NUL or a surrogate: the UTF-8 decoder refuses
        _check_strings(data)  # surrogates and the parser raw control characters
    return data


JSON_MEDIA_TYPE = "application/json"
"""The only media type a JSON body is read with (RFC 8259 §11)."""
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,64}")
"""A media type's essence that a refusal may name back (RFC 9110 §8.3.1 tokens,
lowercased); anything else is not echoed."""


def json_request_body(media_type: str, raw: bytes) -> dict[str, Any]:
    """:func:`json_object` of a request body ``raw`` sent as ``media_type`` (the
    Content-Type's type/subtype, lowercased, without parameters: Werkzeug's
    ``request.mimetype``). A non-empty body of any other type is
    :class:`UnsupportedMediaType` (415), refused before it is parsed; an empty one is an
    empty object whatever its type says."""
    refuse_non_json(media_type, raw)
    return json_object(raw)


def refuse_non_json(media_type: str, raw: bytes) -> None:
    """:class:`UnsupportedMediaType` (415) for a non-empty body ``raw`` not sent as
    ``application/json`` (see :func:`json_request_body`). A signed request to a JSON
    endpoint is checked so before its signature: a refused one does not spend its
    ``jti``, and the same request sent as JSON goes through."""
    if raw and media_type != JSON_MEDIA_TYPE:
        if not media_type:
            sent = "with no Content-Type"
        elif _MEDIA_TYPE.fullmatch(media_type):
            sent = f"as {media_type}"
        else:
            sent = "with a Content-Type that is not a media type"
        raise UnsupportedMediaType(
            f"this endpoint reads a JSON object: send the body as {JSON_MEDIA_TYPE} "
            f"(Content-Type: {JSON_MEDIA_TYPE}), not {sent}"
        )


def iso_time(name: str, text: str, *, naive: datetime.tzinfo | None = None) -> datetime.datetime:
    """``text`` as an ISO 8601 date or date and time, in UTC. A time without an offset is
    taken in ``naive`` (None: refused). Refused too: a time whose UTC value no
    ``datetime`` holds (``0001-01-01T00:00+23:59`` is in year 0)."""
    try:
        value = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or date and time") from None
    if value.tzinfo is None:
        if naive is None:
            raise BadRequest(f"{name} needs a time zone (e.g. Z)")
        value = value.replace(tzinfo=naive)
    try:
        return value.astimezone(datetime.UTC)
    except OverflowError:
        raise BadRequest(f"{name} is out of range (years 1 to 9999 in UTC)") from None


_BINARY_BODIES = frozenset({"status.ocsp_post"})
"""Endpoints whose body is not a form whatever its Content-Type says."""

TEXT_CHECK = "eport.text_check"
"""``app.extensions`` key of the hook :func:`install_text_check` installs."""


def install_text_check(app: Flask, refusal: Callable[[str], EPortError] = BadRequest) -> None:
    """Refuse, before any view runs, a request whose URL path, query parameters or form
    fields hold NUL (Werkzeug decodes invalid UTF-8 there as U+FFFD, so no surrogate
    reaches them), or whose form body is not UTF-8 (read once, here). ``refusal`` makes
    the error from its detail (the token service's OAuth endpoints answer in their RFC's
    format)."""

    from flask import request

    def check_request_text() -> None:
        try:
            check_text(request.path, "the URL path")
            for key, value in request.args.items(multi=True):
                check_text(key, "a query parameter name")
                check_text(value, f"the query parameter {key!r}")
            # A form is read only where a view was found for it: the router's 404 or
            # 405 comes first, and an OCSP request is DER whatever its Content-Type
            # (RFC 6960 §A.1; curl --data-binary says form): the responder answers it,
            # malformedRequest if need be, not a form error (standards probe, s26)
            if (
                request.mimetype == "application/x-www-form-urlencoded"
                and request.routing_exception is None
                and request.endpoint not in _BINARY_BODIES
            ):
                # Cached first: a signed request's body hash covers the exact bytes.
                raw = request.get_data(cache=True, parse_form_data=False)
                try:
                    # Werkzeug reads a form with a byte that is not UTF-8 as an empty one:
                    # "grant_type is required" answered a form that had it (fuzzing probe 24)
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadRequest(
                        "the form is not UTF-8: percent-encode every byte outside ASCII of a "
                        "UTF-8 value (RFC 6749 Appendix B)"
                    ) from None
                for key, value in request.form.items(multi=True):
                    check_text(key, "a form field name")
                    check_text(value, f"the form field {key!r}")
        except BadRequest as exc:
            raise refusal(exc.detail) from None

    app.extensions[TEXT_CHECK] = check_request_text
    app.before_request(check_request_text)


def install_safe_head(app: Flask, endpoints: frozenset[str]) -> None:
    """HEAD is safe (RFC 9110 §9.2.1): on the GET views in ``endpoints``, which act (spend
    a one-time sign-in link, sign a browser in, make an authorization code, sign out),
    a HEAD answers 200 with no body, ``no-store``, and does nothing. Flask runs a GET view
    for HEAD, so a link checker in mail or chat, which sends HEAD before a person clicks,
    spent an auditor's sign-in link, and a HEAD with the SSO cookie got a working code."""

    from flask import Response, request

    def safe_head() -> Response | None:
        if request.method != "HEAD" or request.endpoint not in endpoints:
            return None
        resp = Response(status=200, content_type="text/html; charset=utf-8")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    app.before_request(safe_head)


_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)


def int_arg(name: str, default: int | None, lo: int, hi: int) -> int:
    """The integer query parameter ``name`` of the request (either service's) within
    [lo, hi]; ``default`` when it is absent or empty (None: it is required)."""
    from flask import request

    given = request.args.getlist(name)
    if len(given) > 1:  # the first was taken, the others dropped without a word
        raise BadRequest(f"{name} is given {len(given)} times: give it once")
    raw = given[0] if given else None
    if raw is None or raw == "":
        if default is None:
            raise BadRequest(f"{name} is required")
        return default
    # ASCII digits as written: int() also takes blanks around them, "+5", "1_000" and
    # other scripts' digits (a full-width "１"), which no client means to send
    if not _INTEGER.fullmatch(raw):
        raise BadRequest(f"{name} must be an integer (ASCII digits)")
    value = int(raw)
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


def only(data: dict[str, Any], action: str, *names: str) -> dict[str, Any]:
    """``data`` when it has no member but ``names``; else a 400 naming the others. A
    member the endpoint does not read was dropped without a word: an officer's
    ``{"profile": ...}`` (for ``profiles``) approved with the default profiles; a
    misspelt member of a role grant was ignored."""
    extra = sorted(set(data).difference(names))
    if extra:
        named = ", ".join(repr(name[:40]) for name in extra[:5])
        if not names:
            raise BadRequest(f"{action} takes no parameters; the body is {{}} or none, not {named}")
        raise BadRequest(f"{action} takes {', '.join(names)}; not {named}")
    return data
