"""The joint CA as a Flask application: ``create_app(config)``.

A thin adapter: it wires configuration, policies, the hierarchy's signers and the
SQLAlchemy store into the framework-free :class:`~ca.authority.JointCA`, and renders
every :class:`~ca.errors.EPortError` as an RFC 9457 problem document.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, json, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from ca import devinit, hierarchy, translog
from ca.authority import Clock, JointCA, utcnow
from ca.config import CAConfig
from ca.db import engine_options
from ca.errors import EPortError, PayloadTooLarge, Sealed
from ca.issuance import CertificateFactory
from ca.lint import CertificateLinter
from ca.models import Base
from ca.policy import EVERY_ISSUER, Policies, load_policies
from ca.records import Store
from ca.revocation import Revocation
from ca.signedreq import TrustAnchors
from ca.status import StatusService
from ca.store import SqlStore, configure_engine

log = logging.getLogger("eport.ca")
db = SQLAlchemy(metadata=Base.metadata)
EXTENSION = "eport.ca"


@dataclass(frozen=True)
class CAService:
    """What the HTTP layer needs, kept in ``app.extensions``."""

    config: CAConfig
    authority: JointCA
    trust: TrustAnchors
    store: SqlStore
    clock: Clock
    status: StatusService
    revocation: Revocation
    root_crl: bytes


def ca_passphrase(cfg: CAConfig) -> bytes | None:
    if cfg.ca_key_passphrase:
        return cfg.ca_key_passphrase.encode()
    if cfg.dev:
        return devinit.read_passphrases(cfg.data_dir)["ca_key_passphrase"].encode()
    return None


def build_authority(
    cfg: CAConfig,
    policies: Policies,
    h: hierarchy.Hierarchy,
    store: Store,
    clock: Clock = utcnow,
) -> JointCA:
    import datetime

    rate = cfg.lint_sample_rate
    sampler = (lambda: True) if rate >= 1.0 else (lambda: random.random() < rate)
    factory = CertificateFactory(
        CertificateLinter(), lint_sampler=sampler, public_base_url=cfg.public_base_url
    )
    now = clock()
    for profile in policies.profiles.values():
        if profile.issuer == EVERY_ISSUER:
            issuer = next(iter(h.issuers.values()), None)
        else:
            issuer = h.issuers.get(profile.issuer)
        if issuer is not None and not profile.ca:
            factory.lint_template(profile, issuer, now)
    return JointCA(
        policies=policies,
        issuers=h.issuing(),
        root=h.root,
        store=store,
        factory=factory,
        clock=clock,
        code_ttl=datetime.timedelta(seconds=cfg.code_ttl_seconds),
    )


def problem_response(err: EPortError) -> Response:
    body = err.problem(instance=request.path)
    resp = Response(json.dumps(body), status=err.status, mimetype="application/problem+json")
    return resp


def create_app(config: CAConfig | Mapping[str, Any] | None = None) -> Flask:
    """The CA's Flask app; ``config`` is a :class:`CAConfig` or a dict of overrides."""
    cfg = config if isinstance(config, CAConfig) else CAConfig.load(config)
    app = Flask("ca")
    app.config["SQLALCHEMY_DATABASE_URI"] = cfg.sqlalchemy_url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(cfg.sqlalchemy_url)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)
    policies = load_policies(cfg.policies_dir)
    h = hierarchy.load(cfg.data_dir, ca_passphrase(cfg))
    store = SqlStore(
        lambda: db.session,  # type: ignore[arg-type,return-value]
        event_sinks=(translog.append_event,),
    )
    service = service_for(cfg, policies, h, store)
    passphrase = ca_passphrase(cfg)
    if passphrase is not None:
        from ca.ceremony import renew_responders

        with app.app_context():
            if renew_responders(service.authority, h, cfg.data_dir, passphrase):
                h = hierarchy.load(cfg.data_dir, passphrase)
                service = service_for(cfg, policies, h, store)
    app.extensions[EXTENSION] = service
    if cfg.crl_refresh_seconds > 0:
        _start_refresher(app, cfg.crl_refresh_seconds)

    from ca.api import bp
    from ca.audit_api import install_audit
    from ca.quorum_api import install_custody
    from ca.status_http import install_ocsp_fast_path, status_bp

    app.register_blueprint(bp)
    app.register_blueprint(status_bp)
    with app.app_context():
        store.bind(db.engine)  # the OCSP fast path reads outside any request context
    install_ocsp_fast_path(app)
    install_audit(app, cfg, h)
    install_custody(app, cfg, policies, h, store)

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
                PayloadTooLarge(f"request bodies are limited to {cfg.max_body_bytes} bytes")
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
        body = {
            "type": "about:blank",
            "title": "Internal Server Error",
            "status": 500,
            "detail": "the server failed; nothing was changed",
        }
        return Response(json.dumps(body), status=500, mimetype="application/problem+json")

    return app


def service_for(
    cfg: CAConfig, policies: Policies, h: hierarchy.Hierarchy, store: SqlStore
) -> CAService:
    """Everything built on the hierarchy; rebuilt when a quorum ceremony changes it."""
    authority = build_authority(cfg, policies, h, store)
    trust = TrustAnchors(
        roots=(h.root,), intermediates=tuple(i.certificate for i in h.issuers.values())
    )
    status = StatusService(issuers=h.issuers, responders=h.responders, store=store, clock=utcnow)
    revocation = Revocation(authority, listeners=(status.on_status_change,))
    return CAService(cfg, authority, trust, store, utcnow, status, revocation, h.root_crl)


def _start_refresher(app: Flask, every: float) -> None:
    """Re-sign stale or ageing CRLs in the background (changes are debounced to one CRL)."""
    import threading

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(every):
            try:
                with app.app_context():
                    app.extensions[EXTENSION].status.refresh()
            except Sealed:
                pass  # a sealed server serves what is signed; unsealing resumes signing
            except Exception:
                log.exception("CRL refresh failed; will retry")

    threading.Thread(target=loop, name="crl-refresher", daemon=True).start()


def session_of() -> Session:
    return db.session  # type: ignore[return-value]
