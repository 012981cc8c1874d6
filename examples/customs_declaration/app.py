"""Customs Declaration: a sample e-port service that trusts the token service's tokens.

Reading declarations is checked offline (the SDK verifies the JWT against the JWKS);
submitting one is checked online by token introspection when the service has its
service-tls certificate configured, so that a logout or a revoked certificate stops a
submission within seconds rather than at the token's expiry.

Configuration (environment, or a mapping passed to ``create_app``):

``EPORT_ISSUER``    the token service's issuer, e.g. ``http://127.0.0.1:8000/auth``
``EPORT_AUDIENCE``  this service's audience (policies/services.toml)
``EPORT_JWKS_URL``  optional; default: discovered from the issuer's metadata
``EPORT_SERVER`` + ``EPORT_SERVICE_CERT`` + ``EPORT_SERVICE_KEY`` (+
``EPORT_SERVICE_KEY_PASSPHRASE_FILE``)  optional; submissions are then introspected

Run: ``flask --app examples/customs_declaration/app.py run --port 5080``.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from flask import Flask, g, jsonify, request
from flask.typing import ResponseReturnValue

from authsvc.client import Introspector, TokenVerifier, init_app, require_token

SETTINGS = (
    "EPORT_ISSUER",
    "EPORT_AUDIENCE",
    "EPORT_JWKS_URL",
    "EPORT_SERVER",
    "EPORT_SERVICE_CERT",
    "EPORT_SERVICE_KEY",
    "EPORT_SERVICE_KEY_PASSPHRASE_FILE",
)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        EPORT_ISSUER="http://127.0.0.1:8000/auth",
        EPORT_AUDIENCE="https://customs-declaration.eport.example",
    )
    app.config.update({k: os.environ[k] for k in SETTINGS if os.environ.get(k)})
    app.config.update(config or {})
    cfg = app.config
    verifier = TokenVerifier(cfg["EPORT_ISSUER"], cfg["EPORT_AUDIENCE"], cfg.get("EPORT_JWKS_URL"))
    init_app(app, verifier)  # the default for every @require_token below
    online: Introspector | None = None
    if cfg.get("EPORT_SERVICE_CERT"):
        pw_file = cfg.get("EPORT_SERVICE_KEY_PASSPHRASE_FILE")
        online = Introspector(
            cfg["EPORT_SERVER"],
            cfg["EPORT_SERVICE_CERT"],
            cfg["EPORT_SERVICE_KEY"],
            passphrase=Path(pw_file).read_text().strip().encode() if pw_file else None,
        )

    declarations: list[dict[str, Any]] = []
    numbers = itertools.count(1)
    lock = threading.Lock()

    @app.get("/declarations")
    @require_token(scope="declaration:read")
    def list_declarations() -> ResponseReturnValue:
        claims = g.eport_claims
        with lock:
            mine = [d for d in declarations if d["uscc"] == claims.uscc]
        return jsonify(
            subject=claims.subject,
            uscc=claims.uscc,
            # Set by the gateway (nginx auth_request) when the service runs behind one;
            # percent-encoded where it holds a non-ASCII name.
            gateway_subject=_unquoted(request.headers.get("X-Eport-Subject")),
            # Every identity header the gateway passed on, as received.
            gateway_headers={
                k: v for k, v in request.headers.items() if k.lower().startswith("x-eport-")
            },
            declarations=mine,
        )

    @app.post("/declarations")
    @require_token(scope="declaration:submit", verifier=online)
    def submit_declaration() -> ResponseReturnValue:
        claims = g.eport_claims
        body = request.get_json(silent=True) or {}
        with lock:
            decl = {
                "id": f"D{next(numbers):06d}",
                "uscc": claims.uscc,
                "declared_by": claims.subject,
                "goods": str(body.get("goods", "")),
                "status": "submitted",
            }
            declarations.append(decl)
        return jsonify(decl), 201

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return {"status": "ok"}

    return app


def _unquoted(value: str | None) -> str | None:
    return None if value is None else unquote(value)
