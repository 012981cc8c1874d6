"""Relying parties' endpoints, outside ``/ca/v1`` so any static server or CDN can mirror
them: ``/ocsp`` (RFC 6960 Appendix A: POST ``application/ocsp-request``, GET with the
base64 request in the path) and ``/crl/<issuer>.crl`` (RFC 5280 §5, DER, RFC 2585 media
type ``application/pkix-crl``)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from cryptography.x509 import ocsp as x509_ocsp
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.http import http_date

from ca import ocsp
from ca.app import EXTENSION, CAService
from ca.errors import NotFound

status_bp = Blueprint("status", __name__)
MAX_OCSP_REQUEST = 4096
"""A request for a handful of certificates is a few hundred bytes; more is refused."""


def _svc() -> CAService:
    service: CAService = current_app.extensions[EXTENSION]
    return service


OCSP_CACHE_CONTROL = "public, max-age=60, no-transform, must-revalidate"
"""RFC 5019 §6.2: caching proxies may keep a response until its nextUpdate; a status change
replaces it at the origin at once, so the shared-cache lifetime is kept short. A proxy must
not alter the signed bytes (no-transform) nor serve them stale (must-revalidate)."""


def ocsp_headers(der: bytes) -> list[tuple[str, str]]:
    """The headers of an OCSP answer (RFC 5019 §6.2): its type, length, caching, an entity
    tag (the SHA-1 of the response, as §6.2 suggests) that a cache revalidates by, and for
    an answer about one certificate ``Last-Modified`` (its thisUpdate) and ``Expires`` (its
    nextUpdate; ``max-age`` rules where both are read). Both paths send them, so the
    pre-signed and the full answer look alike."""
    headers = [
        ("Content-Type", "application/ocsp-response"),
        ("Content-Length", str(len(der))),
        ("Cache-Control", OCSP_CACHE_CONTROL),
        ("ETag", '"' + hashlib.sha1(der).hexdigest() + '"'),  # noqa: S324 (an entity tag)
    ]
    try:  # a few microseconds; an error answer or one about several has no single time
        parsed = x509_ocsp.load_der_ocsp_response(der)
        this_update, next_update = parsed.this_update_utc, parsed.next_update_utc
    except ValueError:
        return headers
    headers.append(("Last-Modified", http_date(this_update)))
    if next_update is not None:
        headers.append(("Expires", http_date(next_update)))
    return headers


def _ocsp_response(der: bytes) -> Response:
    return Response(der, headers=ocsp_headers(der))


def install_ocsp_fast_path(app: Flask) -> None:
    """Answer canonical OCSP POSTs (one SHA-1 CertID, no nonce: what OpenSSL, browsers
    and our clients send) from their pre-signed response before Flask routes anything.

    The answer is the same bytes the blueprint below would send; everything else (GET,
    nonces, SHA-2 CertIDs, unknown serials, responses due for re-signing, malformed
    requests) falls through to it with the body intact. OCSP is the CA's hottest path,
    and Flask's per-request machinery costs more than the lookup itself."""
    inner = app.wsgi_app

    def ocsp_first(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") == "/ocsp" and environ.get("REQUEST_METHOD") == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if 0 < length <= MAX_OCSP_REQUEST:
                body = environ["wsgi.input"].read(length)
                service: CAService = app.extensions[EXTENSION]
                der = service.status.pre_signed(body)
                if der is not None:
                    start_response("200 OK", ocsp_headers(der))
                    return [der]
                environ["wsgi.input"] = io.BytesIO(body)
        return inner(environ, start_response)

    app.wsgi_app = ocsp_first  # type: ignore[method-assign]


@status_bp.post("/ocsp")
def ocsp_post() -> Response:
    if request.content_length is not None and request.content_length > MAX_OCSP_REQUEST:
        return _ocsp_response(ocsp.error_response(ocsp.ResponseStatus.MALFORMED_REQUEST))
    body = request.get_data(cache=False)
    if len(body) > MAX_OCSP_REQUEST:
        return _ocsp_response(ocsp.error_response(ocsp.ResponseStatus.MALFORMED_REQUEST))
    return _ocsp_response(_svc().status.respond(body))


@status_bp.get("/ocsp/<path:encoded>")
def ocsp_get(encoded: str) -> Response:
    if len(encoded) > MAX_OCSP_REQUEST * 2:
        return _ocsp_response(ocsp.error_response(ocsp.ResponseStatus.MALFORMED_REQUEST))
    try:
        der = ocsp.request_from_get_path(unquote(encoded))
    except ocsp.MalformedRequest:
        return _ocsp_response(ocsp.error_response(ocsp.ResponseStatus.MALFORMED_REQUEST))
    return _ocsp_response(_svc().status.respond(der))


@status_bp.get("/crl/<issuer_id>.crl")
def crl(issuer_id: str) -> Response:
    s = _svc()
    if issuer_id == "root":
        der = s.root_crl
    elif issuer_id in s.status.issuers:
        der = s.status.crl(issuer_id)
    else:
        raise NotFound(f"no CRL for issuer {issuer_id!r}")
    resp = Response(der, mimetype="application/pkix-crl")
    resp.cache_control.public = True
    resp.cache_control.max_age = 30
    # A strong validator: a relying party that polls (the token service's session sweep,
    # every 2 s per worker) gets 304 and no body until the CRL is signed anew
    resp.set_etag(hashlib.sha256(der).hexdigest()[:32])
    resp.make_conditional(request)  # in place: 304 and no body for a match
    return resp
