"""``GET /auth/validate``: the gateway's sub-request (nginx ``auth_request``).

One framework-free decision, :func:`decide`, used twice: by the Flask view, and by a WSGI
fast path that answers the same request before Flask routes anything (validation is the
token service's hottest path, and Flask's request and response machinery costs more than
the check itself once the token's signature is cached, see
:class:`authsvc.tokens.VerifiedTokens`).

The audience is the service id in ``X-Eport-Service`` (set by the gateway's
configuration); ``X-Eport-Scope`` optionally names a scope the request needs. The answer
is 200 with identity headers, 401 (``WWW-Authenticate: Bearer error="invalid_token"``)
or 403 (``insufficient_scope``); never a body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from authsvc.principal import x5t_s256
from authsvc.proxy import Headers, TrustedProxies, forwarded_certificate
from authsvc.tokens import InvalidToken
from ca.errors import EPortError

PATH = "/auth/validate"
NO_STORE = ("Cache-Control", "no-store")
_IDENTITY = (
    ("uscc", "X-Eport-USCC"),
    ("operator_id", "X-Eport-Operator"),
    ("agency_id", "X-Eport-Agency"),
)
log = logging.getLogger(__name__)
_STATUS = {200: "200 OK", 401: "401 UNAUTHORIZED", 403: "403 FORBIDDEN"}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]


def _denied() -> Answer:
    return Answer(401, [("WWW-Authenticate", 'Bearer error="invalid_token"'), NO_STORE])


def decide(
    tokens: Any,
    access: Any,
    headers: Headers,
    remote_addr: str | None,
    proxies: TrustedProxies,
) -> Answer:
    """The gateway's answer for a request with these headers, from this address."""
    scheme, _, tok = (headers.get("Authorization") or "").partition(" ")
    service_id = headers.get("X-Eport-Service") or ""
    if scheme.lower() != "bearer" or not tok or not service_id:
        return _denied()
    try:
        service = access.service(service_id)
        claims = tokens.check_access_token(tok.strip(), service.audience)
    except (InvalidToken, EPortError):  # includes an unknown service id
        return _denied()
    # RFC 8705 §3: when the gateway forwards the client's TLS certificate, the token must
    # be bound to it (a stolen token is useless without the certificate's key).
    try:
        presented = forwarded_certificate(headers, remote_addr, proxies)
    except EPortError:
        return _denied()
    if presented is not None:
        cnf = claims.get("cnf")
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if bound != x5t_s256(presented):
            return _denied()
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
        ("X-Eport-Subject", str(claims["sub"])),
        ("X-Eport-Scope", " ".join(scopes)),
        ("X-Eport-Client", str(claims.get("client_id", ""))),
    ]
    out += [(name, str(claims[claim])) for claim, name in _IDENTITY if claims.get(claim)]
    out.append(NO_STORE)
    return Answer(200, out)


class _EnvironHeaders:
    """The request headers of a WSGI environ, by HTTP name (PEP 3333 ``HTTP_*`` keys)."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    def get(self, key: str) -> str | None:
        value = self.environ.get("HTTP_" + key.upper().replace("-", "_"))
        return value if isinstance(value, str) else None


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def fast_path(
    inner: WSGIApp,
    answer: Callable[[Headers, str | None], Answer],
) -> WSGIApp:
    """A WSGI app that answers ``GET /auth/validate`` with ``answer`` and passes every
    other request to ``inner``. The bytes are those the Flask view sends."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "GET":
            return inner(environ, start_response)
        try:
            a = answer(_EnvironHeaders(environ), environ.get("REMOTE_ADDR"))
        except Exception:
            log.exception("unexpected error on GET %s", PATH)
            body = json.dumps(
                {
                    "type": "about:blank",
                    "title": "Internal Server Error",
                    "status": 500,
                    "detail": "the server failed",
                }
            ).encode()
            start_response(
                "500 INTERNAL SERVER ERROR",
                [
                    ("Content-Type", "application/problem+json"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        start_response(
            _STATUS[a.status],
            [*a.headers, ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "0")],
        )
        return [b""]

    return app
