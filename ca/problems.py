"""Errors over HTTP as RFC 9457 problem+json, for both Flask apps (the CA and the token
service): one set of handlers, so every error of either looks the same."""

from __future__ import annotations

import logging

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

from ca.errors import EPortError, PayloadTooLarge, server_error_problem

log = logging.getLogger("eport.http")


def problem_response(err: EPortError) -> Response:
    body = err.problem(instance=request.path)
    resp = Response(json.dumps(body), status=err.status, mimetype="application/problem+json")
    return resp


def install_problem_handlers(app: Flask, max_body_bytes: int, unexpected_detail: str) -> None:
    """Every error as RFC 9457 problem+json: domain errors as they describe themselves,
    Werkzeug's HTTP errors (413 naming the limit), and anything unexpected as a logged
    500 whose body says ``unexpected_detail`` and nothing of the cause."""

    @app.errorhandler(EPortError)
    def _domain_error(err: EPortError) -> Response:
        if err.status >= 500:
            log.error("%s: %s", type(err).__name__, err.detail)
        return problem_response(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        if status == 413:
            return problem_response(
                PayloadTooLarge(f"request bodies are limited to {max_body_bytes} bytes")
            )
        body = {
            "type": "about:blank",
            "title": err.name,
            "status": status,
            "detail": err.description,
        }
        return Response(json.dumps(body), status=status, mimetype="application/problem+json")

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        body = server_error_problem(unexpected_detail)
        return Response(json.dumps(body), status=500, mimetype="application/problem+json")
