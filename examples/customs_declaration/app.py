"""Customs Declaration: a sample e-port service that trusts the token service's tokens.

Reading declarations is checked offline (the SDK verifies the JWT against the JWKS);
submitting one is checked online by token introspection when the service has its
service-tls certificate configured, so that a logout or a revoked certificate stops a
submission within seconds rather than at the token's expiry. Without that certificate
submissions are checked offline too, and ``create_app`` says so in a warning naming the
routes and the settings that turn introspection on.

Declarations are kept per enterprise (the token's ``uscc``): every route that reads or
writes them requires a token that names one (``require_token(..., enterprise=True)``).
An agency officer's or a service's token, or an OpenID Connect token whose client did not
ask for the ``eport`` scope, has no ``uscc`` and is refused 403 ``insufficient_scope``,
rather than sharing one ``None`` enterprise with every other such caller.

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
import logging
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
INTROSPECTED = ("submit_declaration",)
"""The views written ``require_token(..., verifier=online)``: introspected when the
service has its certificate, checked offline (and warned about at start) when not."""
log = logging.getLogger("customs_declaration")


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
            # checked against every active answer: a service started with another
            # service's certificate would otherwise take that service's tokens
            audience=cfg["EPORT_AUDIENCE"],
        )

    declarations: list[dict[str, Any]] = []
    numbers = itertools.count(1)
    lock = threading.Lock()

    @app.get("/declarations")
    @require_token(scope="declaration:read", enterprise=True)  # offline (JWKS); needs a uscc
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
    # Introspection when EPORT_SERVICE_CERT is set. Otherwise ``online`` is None and
    # require_token falls back to the app's offline verifier: a token keeps submitting
    # after a logout or a revocation until its exp (+ 30 s leeway). Warned about below.
    @require_token(scope="declaration:submit", verifier=online, enterprise=True)
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

    if online is None:
        routes = [
            f"{method} {rule.rule}"
            for rule in app.url_map.iter_rules()
            if rule.endpoint in INTROSPECTED
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        ]
        log.warning(
            "EPORT_SERVICE_CERT is not set: %s checked OFFLINE, not by introspection; a "
            "token stays good there after a logout or a revocation until its exp (+ 30 s "
            "leeway). Set EPORT_SERVER, EPORT_SERVICE_CERT, EPORT_SERVICE_KEY and "
            "EPORT_SERVICE_KEY_PASSPHRASE_FILE to introspect them",
            ", ".join(routes) + (" is" if len(routes) == 1 else " are"),
        )
    return app


def _unquoted(value: str | None) -> str | None:
    return None if value is None else unquote(value)
