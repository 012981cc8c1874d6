"""The token service as a Flask application: ``create_app(config)``.

A thin adapter around :class:`authsvc.service.TokenService`. It depends on the joint CA
only through certificates (the root and issuing CA certificates), certificate status
(:class:`ca.status.StatusService` on the embedded CA's database, or OCSP for a remote
CA) and policy data; never through the CA's tables directly.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from flask import Flask, Response, json, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from authsvc.config import AuthConfig
from authsvc.keys import KeyRing
from authsvc.models import AuthBase
from authsvc.proxy import TrustedProxies
from authsvc.service import OAuthError, Settings, StatusSource, TokenService
from authsvc.store import SqlAuthStore, settle_copied_events
from authsvc.trust import (
    LiveAnchors,
    LiveBatchStatus,
    LiveRemoteStatus,
    LiveTrust,
    StatusFactory,
)
from ca import pkcs8
from ca.db import engine_options, make_engine
from ca.errors import EPortError, PayloadTooLarge
from ca.names import accept_names_up_to_64_characters
from ca.policy import load_policies
from ca.problems import EXTENSION as PROBLEMS
from ca.problems import (
    install_problem_handlers,
    log_retry,
    no_cache_of_private,
    problem_response,
)
from ca.signedreq import TrustAnchors
from ca.store import configure_engine

log = logging.getLogger("eport.auth")
db = SQLAlchemy(metadata=AuthBase.metadata)
EXTENSION = "eport.auth"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "authsvc_alembic_version"
"""The token service's own Alembic version table (its history is apart from the CA's)."""
SCHEMA_HEAD = "a005"
"""The newest revision of these migrations (checked against Alembic's head by
``tests/test_upgrades.py``); a database at it is not handed to Alembic."""
MIGRATION_LOCK = 0x6570_6F72_7402
"""PostgreSQL advisory lock key of the token service's migrations ("eport" and 2)."""


@dataclass(frozen=True)
class AuthService:
    config: AuthConfig
    tokens: TokenService
    store: SqlAuthStore
    trust: TrustAnchors
    access: Any
    proxies: TrustedProxies
    """The configured TLS proxies whose forwarded client certificates are believed."""
    live: LiveTrust | None = None
    """The CA files it trusts as loaded (``/auth/health`` reports them)."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def upgrade(url: str) -> None:
    from ca.db import migrate, recorded_revisions, refuse_other_encoding

    refuse_other_encoding(url, "token service")
    if recorded_revisions(url, VERSION_TABLE) != {SCHEMA_HEAD}:
        migrate(url, MIGRATIONS, VERSION_TABLE, "token service")
    if make_url(url).get_backend_name() != "postgresql":
        return
    engine = make_engine(url)
    try:
        settled = settle_copied_events(engine)
    finally:
        engine.dispose()
    if settled:
        log.warning(
            "%d token service events written on another database server (restored?) "
            "now page as events from before revision a003",
            settled,
        )


def key_passphrase(cfg: AuthConfig) -> bytes:
    if cfg.key_passphrase:
        return cfg.key_passphrase.encode()
    if cfg.dev:
        from ca.devinit import read_passphrases

        return read_passphrases(cfg.data_dir)["auth_key_passphrase"].encode()
    hint = ""
    from ca.devinit import PASSPHRASE_FILE, dev_dir

    if (dev_dir(cfg.data_dir) / PASSPHRASE_FILE).is_file():  # a development data directory
        hint = f" ({cfg.data_dir} is a development one: add --dev)"
    raise EPortError(f"the token service needs EPORT_AUTH_KEY_PASSPHRASE to encrypt its keys{hint}")


def status_factory(cfg: AuthConfig) -> StatusFactory:
    """How the token service asks for certificate status, given the issuing CAs it trusts.

    The connection (an HTTP session, or the embedded CA's database engine) is made once;
    each hierarchy reload only builds a new source over it."""
    if cfg.status_mode == "ocsp":
        from authsvc.responders import Responders
        from ca.ocsp_client import IssuingCRLs, OCSPStatusSource

        post = Responders()
        # the session sweep's CRLs (one GET per issuing CA and sweep, not one OCSP request
        # per session), kept across reloads
        crls = IssuingCRLs(post.get, logger=log)

        class Remote:
            """Status sources over one transport, which /auth/health reads."""

            responders = post

            def __call__(self, issuers: Mapping[str, x509.Certificate]) -> StatusSource:
                return OCSPStatusSource(list(issuers.values()), post, crls=crls)

        return Remote()
    from ca.issuance import IssuingCA
    from ca.signer import SealedSigner
    from ca.status import StatusService
    from ca.store import SqlStore

    engine = make_engine(cfg.ca_sqlalchemy_url, cfg.pool_bounds)
    store = SqlStore(sessionmaker(engine, expire_on_commit=False))

    def local(issuers: Mapping[str, x509.Certificate]) -> StatusSource:
        # Public certificates only: no CA key is opened by the token service.
        cas = {i: IssuingCA(i, c, SealedSigner(c.public_key())) for i, c in issuers.items()}
        return StatusService(issuers=cas, responders={}, store=store, clock=utcnow)

    return local


def create_app(config: AuthConfig | Mapping[str, Any] | None = None) -> Flask:
    """The token service's Flask app; ``config`` is an :class:`AuthConfig` or overrides."""
    cfg = config if isinstance(config, AuthConfig) else AuthConfig.load(config)
    accept_names_up_to_64_characters()
    app = Flask("authsvc")
    app.config["SQLALCHEMY_DATABASE_URI"] = cfg.sqlalchemy_url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(cfg.sqlalchemy_url, cfg.pool_bounds)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    # JSON over HTTP is UTF-8 (RFC 8259 §8.1): names as written, not \u escapes; the
    # fast path's json_body writes the same bytes.
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)
    policies = load_policies(cfg.policies_dir)
    from authsvc.policy import load_access_policy

    access = load_access_policy(cfg.policies_dir, {m.id for m in policies.members.members})
    # The CA's public files; reloaded in every worker when a ceremony changes them.
    live = LiveTrust(cfg.data_dir, status_factory(cfg))
    trust = LiveAnchors(live)
    status = LiveRemoteStatus(live) if cfg.status_mode == "ocsp" else LiveBatchStatus(live)
    store = SqlAuthStore(lambda: db.session)  # type: ignore[arg-type,return-value]
    settings = Settings(
        issuer=cfg.issuer,
        access_token_lifetime=datetime.timedelta(seconds=cfg.access_token_seconds),
        session_lifetime=datetime.timedelta(seconds=cfg.session_seconds),
        leeway=datetime.timedelta(seconds=cfg.leeway_seconds),
        status_ttl=datetime.timedelta(seconds=cfg.status_ttl_seconds),
    )
    keys = KeyRing(
        store,
        key_passphrase(cfg),
        utcnow,
        max_token_lifetime=settings.access_token_lifetime,
        rotation_period=datetime.timedelta(days=cfg.key_rotation_days),
        # the development passphrase is in the clear beside them (ca.pkcs8)
        key_file_count=pkcs8.MIN_ITERATIONS if cfg.dev and not cfg.key_passphrase else None,
    )
    with app.app_context():
        keys.ensure()
    tokens = TokenService(
        settings=settings,
        store=store,
        keys=keys,
        trust=trust,
        status=status,
        policies=policies,
        access=access,
        clock=utcnow,
        issuing_cas=lambda: live.current().issuers,
    )
    app.extensions[EXTENSION] = AuthService(
        cfg,
        tokens,
        store,
        trust,
        access,
        TrustedProxies(cfg.trusted_proxies, cfg.proxy_secret),
        live,
    )

    # as the CA's: the events list names sessions, addresses and serials
    app.after_request(no_cache_of_private)

    @app.before_request
    def _pin_trust() -> None:
        live.pin()  # one stat at most every second; a changed hierarchy is reloaded here

    @app.teardown_request
    def _unpin_trust(_exc: BaseException | None) -> None:
        live.unpin()

    from authsvc.api import bp, refusal, well_known
    from ca.wellformed import install_text_check

    install_text_check(app, refusal)  # NUL in a path, query or form: 400 before any view
    app.register_blueprint(bp)
    app.register_blueprint(well_known)
    from authsvc.oidc_api import init_app as init_oidc

    init_oidc(app)  # the OpenID Connect provider and the portal

    @app.errorhandler(OAuthError)
    def _oauth(err: OAuthError) -> Response:
        resp = Response(json.dumps(err.oauth()), status=err.status, mimetype="application/json")
        resp.headers["Cache-Control"] = "no-store"
        if err.challenge:
            resp.headers["WWW-Authenticate"] = err.challenge
        if err.retry_after is not None:
            resp.headers["Retry-After"] = str(err.retry_after)
        return resp

    install_problem_handlers(
        app,
        cfg.max_body_bytes,
        "the server failed",
        "the token service's endpoints are listed at /auth/.well-known/openid-configuration",
    )

    @app.errorhandler(413)
    def _too_large(_err: Exception) -> Response:
        # Werkzeug's 413 for a body declared over MAX_CONTENT_LENGTH, raised as the body
        # is first read (before any view): OAuth-shaped at an OAuth endpoint, else the
        # problem ca.problems answers. A chunked body over the limit is refused earlier,
        # by ca.framing, as a problem.
        from authsvc.api import OAUTH_ENDPOINTS

        detail = f"request bodies are limited to {cfg.max_body_bytes} bytes"
        if request.endpoint in OAUTH_ENDPOINTS:
            return _oauth(OAuthError(detail, status=413))
        return problem_response(PayloadTooLarge(detail))

    _install_fast_paths(app)
    from authsvc.api import OAUTH_ENDPOINTS
    from ca.framing import install_body_framing

    # outermost: a body is whole before any path reads it
    install_body_framing(app, OAUTH_ENDPOINTS)
    if cfg.sweep_seconds > 0:
        keep = cfg.event_retention_days
        events = datetime.timedelta(days=keep) if keep else None
        _start_sweeper(app, tokens, keys, store, live, cfg.sweep_seconds, events)
    return app


def _install_fast_paths(app: Flask) -> None:
    """``GET /auth/validate`` and introspection by a forwarded client certificate,
    answered before Flask routes them (see authsvc.fastpath)."""
    from authsvc import fastpath
    from authsvc.proxy import Headers

    def answer(headers: Headers, remote_addr: str | None) -> fastpath.Answer:
        s: AuthService = app.extensions[EXTENSION]
        with app.app_context():
            return fastpath.gateway_answer(s.tokens, s.access, headers, remote_addr, s.proxies)

    def introspect(headers: Headers, remote_addr: str | None, token: str) -> dict[str, Any] | None:
        s: AuthService = app.extensions[EXTENSION]
        with app.app_context():
            caller = fastpath.mtls_caller(
                s.tokens, s.trust, headers, remote_addr, s.proxies, utcnow()
            )
            return None if caller is None else s.tokens.introspect(token, caller)

    app.wsgi_app = fastpath.fast_path(  # type: ignore[method-assign,assignment]
        app.wsgi_app, answer, introspect, app.extensions[PROBLEMS]
    )


def _start_sweeper(
    app: Flask,
    tokens: TokenService,
    keys: KeyRing,
    store: SqlAuthStore,
    live: LiveTrust,
    every: float,
    keep_events: datetime.timedelta | None = None,
) -> None:
    """End sessions of revoked or held certificates even when nobody asks (by the embedded
    CA's status table, or a remote CA's CRLs: :meth:`TokenService.sweep`); rotate keys on
    schedule; every 30 beats (a minute by default) delete the rows nothing needs any more
    (expired replay and revocation rows, sessions and their refresh tokens a day after
    they ended, failed-login counts whose window ended: :meth:`SqlAuthStore.cleanup`);
    notice a changed CA hierarchy even when no request comes."""

    def loop() -> None:
        stop = threading.Event()
        ticks = 0
        while not stop.wait(every):
            ticks += 1
            # three tasks, each on its own: one that fails (a CRL that cannot be used, a
            # database that cannot) does not stop the others
            try:
                live.refresh()
                with app.app_context():
                    tokens.sweep()
            except Exception:
                log_retry("token service sweep failed; will retry", log)
            if ticks % 30 != 0:
                continue
            try:
                with app.app_context():
                    keys.maybe_rotate()
            except Exception:
                log_retry("token service key rotation failed; will retry", log)
            try:
                with app.app_context():
                    store.cleanup(
                        utcnow(),
                        failure_window=tokens.settings.failure_window,
                        leeway=tokens.settings.leeway,
                        keep_events=keep_events,
                    )
            except Exception:
                log_retry("token service cleanup failed; will retry", log)

    threading.Thread(target=loop, name="auth-sweeper", daemon=True).start()
