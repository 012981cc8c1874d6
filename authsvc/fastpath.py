"""The token service's hot paths for services: ``GET /auth/validate`` (the gateway's
sub-request, nginx ``auth_request``) and ``POST /auth/introspect`` from a service whose
client certificate a trusted TLS proxy forwards.

Each is one framework-free decision used twice: by the Flask view, and by a WSGI fast
path that answers the same request before Flask routes anything (these are the token
service's hottest paths, and Flask's request and response machinery costs more than the
check itself once the token's signature is cached, see
:class:`authsvc.tokens.VerifiedTokens`). Whatever the fast path does not answer with
certainty (a signed request, a refused caller) goes on to Flask with the body intact;
an unexpected failure is logged and answered 500, as Flask's handler would.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, quote

from authsvc.principal import Principal, x5t_s256
from authsvc.proxy import HEADERS, Headers, TrustedProxies, forwarded_certificate
from authsvc.service import TokenService
from authsvc.tokens import InvalidToken
from ca.errors import EPortError
from ca.problems import PROBLEM_JSON, ErrorAnswers, unexpected_headers
from ca.signedreq import TrustAnchors

VALIDATE_PATH = "/auth/validate"
INTROSPECT_PATH = "/auth/introspect"
MAX_INTROSPECT_BODY = 16384
NO_STORE = ("Cache-Control", "no-store")
_IDENTITY = (
    ("uscc", "X-Eport-USCC"),
    ("operator_id", "X-Eport-Operator"),
    ("agency_id", "X-Eport-Agency"),
)
log = logging.getLogger(__name__)


class _OncePerInterval:
    """A warning any client can cause, logged at most once per ``interval`` seconds per
    process with how many were held back: 20,000 gateway sub-requests naming an unknown
    service wrote 20,000 lines (2.5 MB in 13 s) from one client (exhaustion probe, F6).
    The first is said at once (a misconfigured gateway is seen at its first request)."""

    def __init__(self, text: str, interval: float = 60.0) -> None:
        self.text = text
        self.interval = interval
        self.next_at = 0.0
        self.held = 0
        self.lock = threading.Lock()

    def say(self, arg: str) -> None:
        now = time.monotonic()
        with self.lock:
            if now < self.next_at:
                self.held += 1
                return
            held, self.held, self.next_at = self.held, 0, now + self.interval
        more = f" ({held} more since the last such line)" if held else ""
        log.warning(self.text + more, arg)


_UNKNOWN_SERVICE = _OncePerInterval("gateway sub-request for unknown service %r")
_STATUS = {
    200: "200 OK",
    400: "400 BAD REQUEST",
    401: "401 UNAUTHORIZED",
    403: "403 FORBIDDEN",
    503: "503 SERVICE UNAVAILABLE",
}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]


# What a 401 says in its error_description (RFC 6750 §3): fixed texts chosen by the
# reason, never the reason's own words (they quote PyJWT, a session's end reason, claim
# names) nor anything of the token. nginx passes this header on to the client. ASCII
# without quote or backslash (RFC 6750 §3: %x20-21 / %x23-5B / %x5D-7E).
EXPIRED = "the token has expired"
NOT_YET_VALID = "the token is not valid yet"
REVOKED = "the token was revoked"
SESSION_ENDED = "the token's session has ended"
OTHER_AUDIENCE = "the token is for another service"
NOT_OURS = "the token is malformed or not signed by a key the token service publishes"
OTHER_CERTIFICATE = "the token is bound to another certificate"
NO_CERTIFICATE = "this service needs the client certificate the token is bound to"
CERTIFICATE_REFUSED = "the forwarded client certificate is not accepted"
_WHY = {
    "token expired": EXPIRED,
    "token not yet valid": NOT_YET_VALID,
    "the token was revoked": REVOKED,
    "the session has ended": SESSION_ENDED,
    "the session has expired": SESSION_ENDED,
    "token rejected: Audience doesn't match": OTHER_AUDIENCE,
}


def why_invalid(detail: str) -> str:
    """The public ``error_description`` for an :class:`InvalidToken` of ``detail``."""
    if detail.startswith("the session ended: "):
        return SESSION_ENDED
    return _WHY.get(detail, NOT_OURS)


def _denied(why: str) -> Answer:
    challenge = f'Bearer error="invalid_token", error_description="{why}"'
    return Answer(401, [("WWW-Authenticate", challenge), NO_STORE])


def _unavailable() -> Answer:
    return Answer(503, [*unexpected_headers(503), NO_STORE])


def _no_credentials() -> Answer:
    """RFC 6750 §3.1: a request with no bearer token at all gets the challenge without an
    error code (the client may not have known it needed one); a bad token gets one."""
    return Answer(401, [("WWW-Authenticate", 'Bearer realm="eport"'), NO_STORE])


_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_text(value: str) -> str:
    """``value`` as an HTTP header value: UTF-8 percent-encoded (RFC 3986 §2.1) where it
    holds ``%`` or a character outside printable ASCII, unchanged elsewhere. A subject
    holds a person's name (``agency:customs:王小明``), which a response header cannot
    carry as it is (HTTP field values are ISO-8859-1 at most; the WSGI server refuses the
    response). Consumers decode with ``urllib.parse.unquote``."""
    return quote(value, safe=_HEADER_SAFE)


def gateway_answer(
    tokens: TokenService,
    access: Any,
    headers: Headers,
    remote_addr: str | None,
    proxies: TrustedProxies,
) -> Answer:
    """The answer to the gateway's sub-request with these headers, from this address.

    The audience is the service id in ``X-Eport-Service`` (set by the gateway's
    configuration); ``X-Eport-Scope`` optionally names a scope the request needs. 200
    with identity headers, 401 (``WWW-Authenticate: Bearer error="invalid_token",
    error_description="..."``, one of the fixed texts above) or 403
    (``insufficient_scope``); 400 when the gateway names no service this server knows
    (its configuration's fault, not the client's); never a body."""
    scheme, _, tok = (headers.get("Authorization") or "").partition(" ")
    service_id = headers.get("X-Eport-Service") or ""
    try:
        service = access.service(service_id) if service_id else None
    except EPortError:
        service = None
    if service is None:
        # The gateway's configuration names the service, not the client: a missing or
        # unknown one is the gateway's fault, told apart from a bad token (nginx turns a
        # 400 from auth_request into a 500 for the client, and logs it).
        _UNKNOWN_SERVICE.say(service_id[:80])
        return Answer(400, [NO_STORE])
    if scheme.lower() != "bearer" or not tok.strip():
        return _no_credentials()
    try:
        claims = tokens.check_access_token(tok.strip(), service.audience)
    except InvalidToken as exc:
        return _denied(why_invalid(exc.detail))
    except EPortError as exc:
        if exc.status >= 500:
            # Not judged (the CA's status or the database unavailable): a fault, which
            # the gateway must not take for a bad token (the client would drop it)
            log.warning("gateway: a token could not be judged: %s", exc.detail)
            return _unavailable()
        return _denied(NOT_OURS)
    # RFC 8705 §3: when the gateway forwards the client's TLS certificate, the token must
    # be bound to it: a stolen token is refused with another certificate. Without one, it
    # is a bearer token, unless the service requires the certificate (services.toml
    # require_certificate): then a thief who presents none is refused too (probe 24).
    try:
        presented = forwarded_certificate(headers, remote_addr, proxies)
    except EPortError:
        return _denied(CERTIFICATE_REFUSED)
    if presented is None and service.require_certificate:
        return _denied(NO_CERTIFICATE)
    if presented is not None:
        cnf = claims.get("cnf")
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if bound != x5t_s256(presented):
            return _denied(OTHER_CERTIFICATE)
    needed = headers.get("X-Eport-Scope")
    scopes = str(claims.get("scope", "")).split()
    if needed and needed not in scopes:
        return Answer(
            403,
            [
                NO_STORE,
                ("WWW-Authenticate", f'Bearer error="insufficient_scope", scope="{needed}"'),
            ],
        )
    out = [
        ("X-Eport-Subject", header_text(str(claims["sub"]))),
        ("X-Eport-Scope", header_text(" ".join(scopes))),
        ("X-Eport-Client", header_text(str(claims.get("client_id", "")))),
    ]
    out += [
        (name, header_text(str(claims[claim]))) for claim, name in _IDENTITY if claims.get(claim)
    ]
    out.append(NO_STORE)
    return Answer(200, out)


def mtls_caller(
    tokens: TokenService,
    trust: TrustAnchors,
    headers: Headers,
    remote_addr: str | None,
    proxies: TrustedProxies,
    now: datetime.datetime,
    *,
    fresh: bool = False,
) -> Principal | None:
    """The registered party whose client certificate a trusted proxy forwarded (chain
    validated, status good: asked now if ``fresh``); None without such a header; raises
    if it is not believable."""
    cert = forwarded_certificate(headers, remote_addr, proxies)
    if cert is None:
        return None
    trust.verify_chain(cert, now)
    tokens.require_good_caller(cert, fresh=fresh)
    return tokens.principal_of(cert)


def json_body(doc: dict[str, Any]) -> bytes:
    """JSON as the app's ``jsonify`` writes it outside debug mode (sorted, compact, UTF-8
    without ``\\u`` escapes, newline)."""
    return (
        json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    )


INTROSPECT_HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
]


class _EnvironHeaders:
    """The request headers of a WSGI environ, by HTTP name (PEP 3333 ``HTTP_*`` keys)."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    def get(self, key: str) -> str | None:
        value = self.environ.get("HTTP_" + key.upper().replace("-", "_"))
        return value if isinstance(value, str) else None


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _forwarded_form(environ: dict[str, Any]) -> bytes | None:
    """The body of a form POST that carries a forwarded client certificate and no other
    credential; None (stream untouched) for anything else."""
    if environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower() != (
        "application/x-www-form-urlencoded"
    ):
        return None
    if "HTTP_AUTHORIZATION" in environ:
        return None
    if not any("HTTP_" + h.upper().replace("-", "_") in environ for h in HEADERS):
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if not 0 < length <= MAX_INTROSPECT_BODY:
        return None
    body: bytes = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)  # for Flask, should it get the request
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _server_error(
    start_response: Callable[..., Any], errors: ErrorAnswers, method: str, path: str
) -> Iterable[bytes]:
    """The answer Flask's handler would send: a 500 (logged, nothing of the cause in the
    body), a 507 for full storage, a 503 for a database that cannot be used now."""
    status, body = errors.unexpected(method, path)
    start_response(
        f"{status} {HTTPStatus(status).phrase.upper()}",
        [
            ("Content-Type", PROBLEM_JSON),
            ("Content-Length", str(len(body))),
            *unexpected_headers(status),
        ],
    )
    return [body]


def fast_path(
    inner: WSGIApp,
    answer: Callable[[Headers, str | None], Answer],
    introspect: Callable[[Headers, str | None, str], dict[str, Any] | None],
    errors: ErrorAnswers,
) -> WSGIApp:
    """A WSGI app that answers ``GET /auth/validate`` with ``answer`` and ``POST
    /auth/introspect`` from a forwarded client certificate with ``introspect``; every
    other request goes to ``inner`` (Flask). ``introspect`` returns None, or raises an
    :class:`EPortError`, for what Flask must answer (no certificate, a refused caller):
    the body is left for it. The bytes are those the Flask views send."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        method = environ.get("REQUEST_METHOD")
        if environ.get("QUERY_STRING"):
            # none is read here: Flask's edge check refuses a NUL in one, as for HEAD (a GET
            # with ?x=%00 was answered 200 here, its HEAD 400: fuzzing probe 24)
            return inner(environ, start_response)
        if path == INTROSPECT_PATH and method == "POST":
            body = _forwarded_form(environ)
            if body and (b"%00" in body or b"\x00" in body):
                # a NUL in any field: Flask's form check answers the 400 that names it, as
                # for a signed request (token service probe, F3: 200 here before)
                return inner(environ, start_response)
            # Blank values counted too: ``token=&token=x`` is two, as Werkzeug reads it,
            # and Flask refuses a repeated parameter (RFC 6749 §3.1).
            form = parse_qs(body.decode("latin-1"), keep_blank_values=True) if body else {}
            tokens = form.get("token", [])
            if len(tokens) != 1 or not tokens[0]:
                return inner(environ, start_response)
            try:
                result = introspect(_EnvironHeaders(environ), environ.get("REMOTE_ADDR"), tokens[0])
            except EPortError:
                result = None  # Flask answers it, with the problem it deserves
            except Exception:
                return _server_error(start_response, errors, "POST", INTROSPECT_PATH)
            if result is None:
                return inner(environ, start_response)
            out = json_body(result)
            start_response("200 OK", [*INTROSPECT_HEADERS, ("Content-Length", str(len(out)))])
            return [out]
        if path != VALIDATE_PATH or method != "GET":
            return inner(environ, start_response)
        try:
            a = answer(_EnvironHeaders(environ), environ.get("REMOTE_ADDR"))
        except Exception:
            return _server_error(start_response, errors, "GET", VALIDATE_PATH)
        start_response(
            _STATUS[a.status],
            [*a.headers, ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "0")],
        )
        return [b""]

    return app
