"""Relying parties' endpoints, outside ``/ca/v1`` so any static server or CDN can mirror
them: ``/ocsp`` (RFC 6960 Appendix A: POST ``application/ocsp-request``, GET with the
base64 request in the path) and ``/crl/<issuer>.crl`` (RFC 5280 §5, DER, RFC 2585 media
type ``application/pkix-crl``)."""

from __future__ import annotations

from urllib.parse import unquote

from flask import Blueprint, Response, current_app, request

from ca import ocsp
from ca.app import EXTENSION, CAService
from ca.errors import NotFound

status_bp = Blueprint("status", __name__)
MAX_OCSP_REQUEST = 4096
"""A request for a handful of certificates is a few hundred bytes; more is refused."""


def _svc() -> CAService:
    service: CAService = current_app.extensions[EXTENSION]
    return service


def _ocsp_response(der: bytes) -> Response:
    resp = Response(der, mimetype="application/ocsp-response")
    # RFC 5019 §6: caching proxies may keep a response until its nextUpdate; a status
    # change replaces it at the origin at once, so keep the shared-cache lifetime short.
    resp.cache_control.public = True
    resp.cache_control.max_age = 60
    return resp


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
    return resp
