"""The joint CA as a Flask application: ``create_app(config)``.

A thin adapter: it wires configuration, policies, the hierarchy's signers and the
SQLAlchemy store into the framework-free :class:`~ca.authority.JointCA`, and renders
every :class:`~ca.errors.EPortError` as an RFC 9457 problem document.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

# The issuance writer is made at the first issuance (ca.store imports it then, as it
# imports ca.store): loaded with the app instead, so that a server serves the code it
# started with, not a module installed on disk while it runs (security probe, session 26:
# an upgrade of the files under a running server was a 500 at every enrollment).
import ca.groupwrite  # noqa: F401
from ca import ceremony_files, crosshost, devinit, hierarchy, responders, translog
from ca.authority import Clock, JointCA, utcnow
from ca.config import CAConfig
from ca.db import engine_options
from ca.errors import IssuerExpired, LintFailed, Sealed
from ca.generation import GenerationWatch
from ca.issuance import TEMPLATES_LINTED, CertificateFactory
from ca.lint import CertificateLinter
from ca.models import Base
from ca.names import accept_names_up_to_64_characters
from ca.policy import EVERY_ISSUER, Policies, load_policies
from ca.problems import install_problem_handlers, log_retry
from ca.records import Store
from ca.revocation import Revocation
from ca.sealing import KeySealer, PassphraseSealer
from ca.signedreq import TrustAnchors
from ca.status import StatusService
from ca.store import SqlStore, configure_engine
from ca.trust import RootCheckedAnchors, anchors_for

if TYPE_CHECKING:
    from ca.issuance import IssuingCA
    from ca.ocsp import Revoked

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
    hierarchy: hierarchy.Hierarchy
    """The CA files it was built from (its signers are the ones issuance and status use)."""

    @property
    def root_crl(self) -> bytes:
        return self.hierarchy.root_crl


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
    trust: RootCheckedAnchors | None = None,
) -> JointCA:
    """The authority on hierarchy ``h``; ``trust``: its anchors, when the caller has read
    the root CRL already (:func:`anchors_for`)."""
    import datetime

    rate = cfg.lint_sample_rate
    sampler = (lambda: True) if rate >= 1.0 else (lambda: random.random() < rate)
    factory = CertificateFactory(
        CertificateLinter(),
        lint_sampler=sampler,
        public_base_url=cfg.certificate_base_url,
        template_memo=TEMPLATES_LINTED,
    )
    lint_templates(factory, policies, h.issuers, clock())
    if trust is None:
        trust = anchors_for(h.root, {i: c.certificate for i, c in h.issuers.items()}, h.root_crl)
    revoked = {issuer_id: revocation for issuer_id, _, revocation in trust.revoked}
    issuing = h.issuing()
    _warn_revoked_issuing(issuing, policies, revoked)
    return JointCA(
        policies=policies,
        issuers=issuing,
        revoked_issuers=revoked,
        unavailable_issuers=h.unavailable(),
        root=h.root,
        store=store,
        factory=factory,
        clock=clock,
        code_ttl=datetime.timedelta(seconds=cfg.code_ttl_seconds),
        application_ttl=datetime.timedelta(days=cfg.application_days),
    )


def lint_templates(
    factory: CertificateFactory,
    policies: Policies,
    issuers: Mapping[str, IssuingCA],
    now: datetime.datetime,
) -> None:
    """Lint every end-entity profile's template under the issuer it names (any issuer for
    a profile of every issuer): :class:`~ca.errors.LintFailed` on an error."""
    for profile in policies.profiles.values():
        if profile.issuer == EVERY_ISSUER:
            issuer = next(iter(issuers.values()), None)
        else:
            issuer = issuers.get(profile.issuer)
        if issuer is not None and not profile.ca:
            try:
                factory.lint_template(profile, issuer, now)
            except IssuerExpired as exc:
                # Nothing is issued from it (the authority refuses), but the server starts:
                # status (OCSP, CRLs) of every generation, the token service, and the
                # rollover ceremony that replaces it need it running.
                log.warning(
                    "profile %r: %s; its enrollments and renewals are refused", profile.name, exc
                )
            except LintFailed as exc:
                found = "; ".join(exc.extra.get("findings", ())) or exc.detail
                raise LintFailed(
                    f"profile {profile.name!r}: its certificate template does not lint "
                    f"(nothing can be issued from it): {found}",
                    **exc.extra,
                ) from None


def prelint_templates(cfg: CAConfig) -> None:
    """Lint the templates once in ``eport serve``'s master process, before the workers
    fork: they inherit :data:`~ca.issuance.TEMPLATES_LINTED` and find them passed. The
    hierarchy is read without a passphrase: no key is unsealed, no token opened.
    :class:`~ca.errors.LintFailed` or :class:`~ca.errors.PolicyError` if one fails."""
    factory = CertificateFactory(
        CertificateLinter(),
        public_base_url=cfg.certificate_base_url,
        template_memo=TEMPLATES_LINTED,
    )
    policies = load_policies(cfg.policies_dir)
    issuers = hierarchy.load(cfg.data_dir, None).issuers  # no passphrase: keys stay sealed
    lint_templates(factory, policies, issuers, utcnow())


def _warn_revoked_issuing(
    issuing: Mapping[str, IssuingCA], policies: Policies, revoked: Mapping[str, Revoked]
) -> None:
    """Log the issuing CAs the profiles would issue from (``issuers/active.json`` names
    them) that the root's CRL revokes: their enrollments and renewals are refused."""
    for name in hierarchy.issuing_ids(policies):
        ca = issuing.get(name)
        if ca is not None and ca.id in revoked:
            log.warning(
                "issuing CA %s would issue from %s, which the root's CRL revokes: its "
                "profiles' enrollments and renewals are refused",
                name,
                ca.id,
            )


def create_app(config: CAConfig | Mapping[str, Any] | None = None) -> Flask:
    """The CA's Flask app; ``config`` is a :class:`CAConfig` or a dict of overrides."""
    cfg = config if isinstance(config, CAConfig) else CAConfig.load(config)
    accept_names_up_to_64_characters()
    app = Flask("ca")
    app.config["SQLALCHEMY_DATABASE_URI"] = cfg.sqlalchemy_url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(cfg.sqlalchemy_url, cfg.pool_bounds)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # JSON over HTTP is UTF-8 (RFC 8259 §8.1): names as written, not \u escapes.
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)
    policies = load_policies(cfg.policies_dir)
    watch = GenerationWatch(cfg.data_dir)  # before loading: a later change is noticed
    responders.settle(cfg.data_dir)
    store = SqlStore(
        lambda: db.session,  # type: ignore[arg-type,return-value]
        event_sinks=(translog.append_event,),
    )
    settle_ceremonies(app, cfg.data_dir, store)
    h = hierarchy.load(cfg.data_dir, ca_passphrase(cfg))
    app.extensions[EXTENSION] = service_for(cfg, policies, h, store)
    warn_operators(app)
    if cfg.crl_refresh_seconds > 0:
        _start_refresher(app, cfg.crl_refresh_seconds)

    from ca.api import bp
    from ca.audit_api import install_audit
    from ca.enroll_http import install_enroll_fast_path
    from ca.quorum_api import install_custody
    from ca.status_http import install_ocsp_fast_path, status_bp

    app.register_blueprint(bp)
    app.register_blueprint(status_bp)
    with app.app_context():
        store.bind(db.engine)  # the OCSP fast path reads outside any request context
    install_ocsp_fast_path(app)
    install_enroll_fast_path(app)
    install_audit(app, cfg, h)
    install_custody(app, cfg, policies, h, store)
    _install_reload(app, cfg, policies, store, watch)
    check_hierarchy_record(app)  # other hosts' ceremonies and forced responder renewals
    if ca_passphrase(cfg) is not None:  # outside joint custody the keys are open now
        _renew_due_responders(app)

    from ca.wellformed import install_text_check

    install_text_check(app)  # NUL in a path, query or form: 400 before any view
    install_problem_handlers(
        app,
        cfg.max_body_bytes,
        "the server failed; nothing was changed",
        "the CA's API is described at /ca/v1/openapi.json",
    )
    from ca.framing import install_body_framing

    install_body_framing(app)  # outermost: a body is whole before any path reads it
    return app


def settle_ceremonies(app: Flask, data_dir: Path, store: SqlStore) -> None:
    """Restore the files of a root ceremony a crash cut short between its file writes and
    its COMMIT, before the hierarchy is loaded or published to other hosts
    (:func:`settle_journals`)."""
    if not ceremony_files.unsettled(hierarchy.ca_dir(data_dir)):
        return
    # A completing ceremony holds the host lock until its journal is gone.
    with app.app_context(), crosshost.host_lock(data_dir):
        settle_journals(data_dir, store)


def settle_journals(data_dir: Path, store: SqlStore) -> None:
    """Put back the files of every ceremony journal left in ``ca/`` whose ceremony the
    database does not record done (a crash before its COMMIT, or an undo a full disk cut
    short: :func:`ca.ceremony_files.settle`); every running worker then reloads. The
    caller holds the host lock (a start, or a ceremony's join); raises, the journals
    kept, when the files cannot be written (the disk still full)."""
    from ca.custody_store import ceremony_done
    from ca.generation import bump_generation

    d = hierarchy.ca_dir(data_dir)
    if ceremony_files.unsettled(d) and ceremony_files.settle(
        d, lambda cid: ceremony_done(store, cid)
    ):
        bump_generation(data_dir)


def service_for(
    cfg: CAConfig, policies: Policies, h: hierarchy.Hierarchy, store: SqlStore
) -> CAService:
    """Everything built on the hierarchy; rebuilt when a quorum ceremony changes it."""
    # Signed requests trust the issuing CAs the root CRL does not list: a certificate
    # under a generation revoked by REVOKE-INTERMEDIATE is refused (401) by name;
    # nothing is issued from one (the authority); and its responder answers revoked.
    trust = anchors_for(h.root, {i: c.certificate for i, c in h.issuers.items()}, h.root_crl)
    authority = build_authority(cfg, policies, h, store, trust=trust)
    status = StatusService(
        issuers=h.issuers,
        responders=h.responders,
        store=store,
        clock=utcnow,
        revoked_issuers={issuer_id: revocation for issuer_id, _, revocation in trust.revoked},
    )
    revocation = Revocation(authority, listeners=(status.on_status_change,))
    return CAService(cfg, authority, trust, store, utcnow, status, revocation, h)


def _start_refresher(app: Flask, every: float) -> None:
    """Re-sign stale or ageing CRLs in the background (changes are debounced to one CRL);
    renew OCSP responder certificates that are about to expire."""
    import threading

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(every):
            check_hierarchy_record(app)
            reload_hierarchy(app)
            warn_operators(app)
            _wipe_expired_shares(app)
            try:
                with app.app_context():
                    app.extensions[EXTENSION].status.refresh()
            except Sealed:
                pass  # a sealed server serves what is signed; unsealing resumes signing
            except Exception:
                log_retry("CRL refresh failed; will retry", log)
            _renew_due_responders(app)

    threading.Thread(target=loop, name="crl-refresher", daemon=True).start()


def _wipe_expired_shares(app: Flask) -> None:
    """The stored shares of expired ceremonies blanked (joint custody only)."""
    from ca.quorum_api import EXTENSION as CUSTODY

    custody = app.extensions.get(CUSTODY)
    if custody is not None:
        with app.app_context():
            custody.wipe_expired_shares()


NOTICES_WARNED = "eport.ca.root_crl_warned"
NOTICES_EVERY = datetime.timedelta(hours=24)


def warn_operators(app: Flask) -> None:
    """Log a warning (at start, then at most once a day in a long-running server) while
    the root CRL's nextUpdate is near or past (only a quorum ceremony renews it), an
    issuing CA ends, officers lapse, or a CA key is lost."""
    s: CAService = app.extensions[EXTENSION]
    now = s.clock()
    last = app.extensions.get(NOTICES_WARNED)
    if last is not None and now - last < NOTICES_EVERY:
        return
    notices = [hierarchy.root_crl_notice(s.root_crl, now, dev=s.config.dev)]
    notices += hierarchy.issuer_notices(s.authority.issuers, s.authority.policies, now)
    notices += s.hierarchy.missing_keys(dev=s.config.dev).values()
    try:
        with app.app_context():  # its store's sessions are the app's
            notices += s.authority.officer_notices(now)
    except Exception as exc:  # the database away: said by the tasks that need it
        from ca.errors import database_unavailable_cause

        if database_unavailable_cause(exc) is None:
            raise
    for notice in filter(None, notices):
        app.extensions[NOTICES_WARNED] = now
        log.warning("%s", notice[0].upper() + notice[1:])


# -- reloading the hierarchy, renewing OCSP responders --------------------------------------

RELOAD = "eport.ca.reload"


def _install_reload(
    app: Flask, cfg: CAConfig, policies: Policies, store: SqlStore, watch: GenerationWatch
) -> None:
    """Outside joint custody, reload the hierarchy when its generation file changes
    (under custody :class:`ca.quorum_api.CustodyService` does, re-unsealing)."""
    from ca.quorum_api import EXTENSION as CUSTODY

    if CUSTODY in app.extensions:
        return

    def reload(token: str) -> None:
        from ca.audit_api import EXTENSION as AUDIT

        h = hierarchy.load(cfg.data_dir, ca_passphrase(cfg))
        app.extensions[EXTENSION] = service_for(cfg, policies, h, store)
        audit = app.extensions.get(AUDIT)
        if audit is not None:
            audit.signer.key = h.log_signer  # the checkpoint signer keeps its origin
            app.extensions[AUDIT] = dataclasses.replace(audit, public_key=h.log_public_key)
        log.info("CA hierarchy reloaded (generation %s)", token)

    def poll(immediately: bool = False) -> None:
        watch.poll(reload, immediately=immediately)

    app.extensions[RELOAD] = poll
    app.before_request(poll)


def reload_hierarchy(app: Flask, *, immediately: bool = False) -> None:
    """Reload a changed hierarchy in this worker (``immediately``: not waiting for the
    next periodic check)."""
    from ca.quorum_api import EXTENSION as CUSTODY

    custody = app.extensions.get(CUSTODY)
    if custody is not None:
        with app.app_context():
            custody.refresh()
    elif RELOAD in app.extensions:
        app.extensions[RELOAD](immediately=immediately)


def responder_sealer(app: Flask) -> KeySealer | None:
    """What seals a new responder key: the seal KEK this worker holds once unsealed
    (joint custody), or the CA passphrase; None while sealed."""
    from ca.quorum_api import EXTENSION as CUSTODY

    custody = app.extensions.get(CUSTODY)
    if custody is not None:
        sealer: KeySealer | None = custody.seal_sealer()
        return sealer
    passphrase = ca_passphrase(app.extensions[EXTENSION].config)
    return PassphraseSealer(passphrase) if passphrase is not None else None


def renew_responders(
    app: Flask, *, force: bool = False, actor: str = responders.ACTOR
) -> responders.Outcome:
    """Renew the OCSP responder certificates that are due (all with ``force``); this
    worker reloads at once, the others at their next check. Raises Sealed (503).

    A forced renewal is also recorded in the database, and every other host of it
    renews its own responders at its next check (:func:`check_hierarchy_record`)."""
    if not force:
        return _renew_responders(app, force=False, actor=actor)
    data_dir = app.extensions[EXTENSION].config.data_dir
    with crosshost.host_lock(data_dir):  # this host's checks wait: none follows it again
        outcome = _renew_responders(app, force=True, actor=actor)
        if outcome.renewed:
            with app.app_context():
                _hierarchy_sync(app).force_responders()
    return outcome


def _renew_responders(app: Flask, *, force: bool, actor: str) -> responders.Outcome:
    s: CAService = app.extensions[EXTENSION]
    outcome = responders.ResponderRenewal(
        data_dir=s.config.data_dir,
        issuers=s.status.issuers,
        factory=s.authority.factory,
        profile=s.authority.policies.profile(responders.PROFILE),
        store=s.store,
        sealer=responder_sealer(app),
        clock=s.clock,
        window=datetime.timedelta(days=s.config.responder_renew_days),
    ).run(force=force, actor=actor)
    if outcome.renewed:
        log.warning(
            "OCSP responder certificates renewed: %s",
            ", ".join(f"{r.issuer_id} ({r.certificate.serial_number:x})" for r in outcome.renewed),
        )
        reload_hierarchy(app, immediately=True)
    return outcome


def _renew_due_responders(app: Flask) -> None:
    """The periodic check: no I/O unless a responder in memory is due."""
    try:
        with app.app_context():
            s: CAService = app.extensions[EXTENSION]
            pairs = [(r.certificate, r.issuer) for r in s.status.responders.values()]
            window = datetime.timedelta(days=s.config.responder_renew_days)
            validity = s.authority.policies.profile(responders.PROFILE).validity
            if not responders.any_due(pairs, s.clock(), window, validity):
                return
            # Sealed: Sealed is raised before any I/O and the next check after the unseal
            # renews; keys in a PKCS#11 token need no seal KEK (ca.keyhome).
            renew_responders(app)
    except Sealed:
        pass
    except Exception:
        log_retry("OCSP responder renewal failed; will retry", log)


# -- other hosts of the same database (ca.crosshost) ---------------------------------------

CROSSHOST = "eport.ca.crosshost"
FOLLOWER = "system:responder-follow"
"""The actor of a responder renewal that follows another host's forced one."""


@dataclass
class CrossHostState:
    """This worker's last comparison with the database's hierarchy record."""

    stale: str | None = None
    """Why this host serves older CA files than the record (None: it does not)."""
    responders_pending: bool = False
    """Another host forced a responder renewal this one could not follow yet (sealed)."""
    held_back: str | None = None
    """Why this host's custody record and signature, or its ``issuers/active.json`` and
    signature, are not published (None: they are, or need not be):
    :meth:`ca.crosshost.Outcome.held_back_warning`."""

    def warnings(self) -> list[str]:
        out = [self.stale] if self.stale else []
        if self.held_back:
            out.append(self.held_back)
        if self.responders_pending:
            out.append(
                "another host forced an OCSP responder renewal: this host renews its own "
                "responders once unsealed, and signs with the previous ones until then"
            )
        return out


def _hierarchy_sync(app: Flask) -> crosshost.HierarchySync:
    from ca.crosshost_sql import hierarchy_sync

    s: CAService = app.extensions[EXTENSION]
    return hierarchy_sync(db.engine, s.config.data_dir, s.clock)


def check_hierarchy_record(app: Flask) -> None:
    """Compare this host's CA files with the database's record (:mod:`ca.crosshost`):
    publish a change made here, take the public files another host's ceremony changed,
    follow a forced responder renewal, and say (health, one log line) what cannot be
    taken. At worker start, after a ceremony here, and on each refresher cycle."""
    state: CrossHostState = app.extensions.setdefault(CROSSHOST, CrossHostState())
    data_dir = app.extensions[EXTENSION].config.data_dir
    try:
        with app.app_context(), crosshost.host_lock(data_dir):
            sync = _hierarchy_sync(app)
            outcome = sync.check()
            if outcome.responders_due and outcome.responders_token is not None:
                try:
                    renewed = _renew_responders(app, force=True, actor=FOLLOWER)
                except Sealed:
                    state.responders_pending = True
                else:
                    sync.responders_followed(outcome.responders_token)
                    state.responders_pending = False
                    log.warning(
                        "Followed another host's forced OCSP responder renewal: renewed %s",
                        ", ".join(r.issuer_id for r in renewed.renewed) or "none",
                    )
            else:
                state.responders_pending = False
    except Exception:
        log_retry("comparing the CA files with the database's record failed; will retry", log)
        return
    if outcome.published:
        log.info("CA files published to the database (generation %s)", outcome.generation)
    if outcome.picked_up:
        log.warning(
            "Took %s from the database's record (generation %s): another host's ceremony "
            "changed them",
            ", ".join(outcome.picked_up),
            outcome.generation,
        )
        reload_hierarchy(app, immediately=True)
    state.stale = _log_change(
        state.stale, outcome.warning(), "This host's CA files match the database's record again"
    )
    state.held_back = _log_change(
        state.held_back,
        outcome.held_back_warning(),
        "This host's signed CA files verify together again (nothing is held back)",
    )


def _log_change(before: str | None, now: str | None, cleared: str) -> str | None:
    """Log a warning once, when it appears or changes, and ``cleared`` once it is gone
    (every worker checks every cycle; the log says each change once per worker)."""
    if now is not None and now != before:
        log.warning("%s", now[0].upper() + now[1:])
    elif now is None and before is not None:
        log.warning("%s", cleared)
    return now


def session_of() -> Session:
    return db.session  # type: ignore[return-value]
