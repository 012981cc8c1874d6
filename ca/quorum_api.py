"""Joint custody over HTTP under ``/ca/v1/custody``: unseal, and quorum ceremonies.

* ``GET  /ca/v1/custody``                 the custody record (public), sealed or not, and
  this server instance's unseal ceremony (its X25519 key and fingerprint, progress);
* ``POST /ca/v1/custody/unseal``          a custodian's seal share, sealed to that key;
* ``POST /ca/v1/custody/ceremonies``      open a root-operation ceremony (an RA officer's
  signed request);
* ``GET  /ca/v1/custody/ceremonies/<id>`` its state;
* ``POST /ca/v1/custody/ceremonies/<id>/join`` a custodian's root share, sealed.

Several worker processes serve one server instance; they share the unseal through the
database and the boot key (:mod:`ca.bootkey`): before each request a sealed worker
looks up its instance's unseal ceremony, and a worker that sees the hierarchy's
generation file change reloads the hierarchy (a root ceremony made or revoked a CA).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from ca import bootkey, custody_files, hierarchy
from ca.ceremony_files import FileChanges, journal_path
from ca.config import CAConfig
from ca.custody import CustodyRecord, Purpose, ReconstructionFailed, wipe
from ca.custody_store import SqlCeremonyStore, SqlCeremonyTx
from ca.errors import BadRequest, Forbidden, NotFound, Sealed
from ca.generation import bump_generation, read_generation
from ca.policy import Policies, SubjectClass
from ca.quorum import Ceremony, CeremonyState, CeremonyTx, Operation, Outcome, Quorum
from ca.sealing import KekSealer
from ca.signer import SealedSigner, Signer
from ca.store import SqlStore

bp = Blueprint("custody", __name__, url_prefix="/ca/v1/custody")
log = logging.getLogger("eport.ca")
EXTENSION = "eport.custody"


def _kek_label(custody_id: str) -> str:
    return f"eport-seal-kek/v1/{custody_id}"


WIPE_EVERY = 60.0
"""Seconds between a worker's wipes of expired ceremonies' shares in the background (also
done whenever a ceremony is opened or joined)."""


class CustodyService:
    """One worker's view of custody: the sealed signers, the seal KEK once unsealed."""

    def __init__(
        self,
        app: Flask,
        cfg: CAConfig,
        policies: Policies,
        h: hierarchy.Hierarchy,
        store: SqlStore,
        record: CustodyRecord,
    ) -> None:
        self.app = app
        self.cfg = cfg
        self.policies = policies
        self.h = h
        self.store = store
        self.record = record
        self.boot = bootkey.current()
        self.generation = read_generation(cfg.data_dir)
        self._kek: bytearray | None = None
        self._lock = threading.RLock()
        self._wiped_at = -WIPE_EVERY  # the first request wipes
        from ca.root_ops import runners

        self.quorum = Quorum(
            record=record,
            boot=self.boot,
            store=SqlCeremonyStore(store),
            runners={Operation.UNSEAL: self._run_unseal, **runners(self)},
            clock=lambda: current_app.extensions["eport.ca"].clock(),
            # every worker reloads a ceremony's files once committed (or put back)
            file_changes=lambda cid: FileChanges(
                changed=lambda: bump_generation(cfg.data_dir),
                journal=journal_path(hierarchy.ca_dir(cfg.data_dir), cid),
            ),
            before_commit=self._publish_record,
        )

    def _publish_record(self, tx: CeremonyTx, c: Ceremony) -> None:
        """The ceremony's files go into the database's hierarchy record in its own
        transaction (:meth:`ca.crosshost.HierarchySync.publish_in_ceremony`)."""
        from ca.crosshost import HierarchySync
        from ca.crosshost_sql import TxHierarchyRecord, host_name

        assert isinstance(tx, SqlCeremonyTx)
        sync = HierarchySync(
            self.cfg.data_dir,
            TxHierarchyRecord(tx.s.connection()),
            host=host_name(self.cfg.data_dir),
            clock=current_app.extensions["eport.ca"].clock,
        )
        gen = sync.publish_in_ceremony()
        if gen is not None:
            log.info(
                "CA files published to the database (generation %s) with ceremony %s", gen, c.id
            )

    # -- keys ---------------------------------------------------------------------------

    def _slots(self, h: hierarchy.Hierarchy) -> list[tuple[Path, Signer]]:
        d = hierarchy.ca_dir(self.cfg.data_dir)
        out: list[tuple[Path, Signer]] = [(d / "log.key", h.log_signer)]
        out += [(d / "issuers" / f"{i}.key", ca.signer) for i, ca in h.issuers.items()]
        out += [(d / "responders" / f"{i}.key", r.signer) for i, r in h.responders.items()]
        return out

    @property
    def sealed(self) -> bool:
        return any(getattr(s, "sealed", False) for _, s in self._slots(self.h))

    def seal_sealer(self) -> KekSealer | None:
        """The seal KEK's sealer once unsealed (to wrap keys a ceremony makes)."""
        if self._kek is None:
            return None
        return KekSealer(self._kek, self.record.keys_id, Purpose.SEAL)

    def _unseal_with(self, kek: bytearray) -> None:
        self.record.check_kek(kek, Purpose.SEAL)
        sealer = KekSealer(kek, self.record.keys_id, Purpose.SEAL)
        for path, signer in self._slots(self.h):
            if getattr(signer, "sealed", False):
                assert isinstance(signer, SealedSigner)
                # A key file missing or damaged (the KEK opened the log key: the unseal
                # ceremony proved it) is lost, not a reason to keep every key sealed
                opened = hierarchy.unseal_or_lose(sealer, path, signer)
                if opened is not signer:
                    signer.unseal(opened)
        for notice in self.h.missing_keys().values():
            log.warning("Unsealed without a key: %s", notice)
        if self._kek is not None and self._kek is not kek:
            wipe(self._kek)
        self._kek = kek

    def wipe_expired_shares(self) -> None:
        """Blank the stored shares of ceremonies that expired, at most once a
        :data:`WIPE_EVERY` (called by the background refresher, never on a request's
        path: the wipe is a write, which on SQLite queues for the write lock)."""
        if time.monotonic() - self._wiped_at < WIPE_EVERY:
            return
        self._wiped_at = time.monotonic()
        try:
            self.quorum.wipe_expired()
        except Exception:  # a busy or unreachable database: the next period tries
            log.warning("could not wipe the shares of expired ceremonies", exc_info=True)

    def refresh(self) -> None:
        """Reload a changed hierarchy; unseal from this instance's unseal record if sealed."""
        with self._lock:
            gen = read_generation(self.cfg.data_dir)
            if gen != self.generation:
                self.reload()
                self.generation = gen
            if not self.sealed:
                return
            c = self.quorum.get_or_none(self.boot.unseal_ceremony_id)
            if c is None or c.state is not CeremonyState.DONE or c.secret is None:
                return
            # The unseal may predate a re-share: it keeps the KEKs, so the new check passes.
            kek = self.boot.unwrap(c.secret, _kek_label(c.custody_id))
            try:
                self._unseal_with(kek)
            except ReconstructionFailed:
                wipe(kek)

    def reload(self) -> None:
        """Build the CA service anew from the hierarchy on disk (after a root ceremony),
        with the custody record on disk (after ``eport ca reshare``)."""
        from ca.app import EXTENSION as CA_EXTENSION
        from ca.app import service_for
        from ca.audit_api import EXTENSION as AUDIT_EXTENSION

        record = custody_files.load_record(self.cfg.data_dir)
        if record.custody_id != self.record.custody_id:
            # A re-share keeps the KEKs: the one this worker holds passes the new check.
            # Anything else (a record that does not match) leaves the worker sealed.
            if self._kek is not None:
                try:
                    record.check_kek(self._kek, Purpose.SEAL)
                except ReconstructionFailed:
                    wipe(self._kek)
                    self._kek = None
            self.record = record
            self.quorum.record = record
        h = hierarchy.load(self.cfg.data_dir, self.seal_sealer())
        self.app.extensions[CA_EXTENSION] = service_for(self.cfg, self.policies, h, self.store)
        audit = self.app.extensions.get(AUDIT_EXTENSION)
        if audit is not None:
            audit.signer.key = h.log_signer  # the checkpoint signer keeps its origin
            self.app.extensions[AUDIT_EXTENSION] = dataclasses.replace(
                audit, public_key=h.log_public_key
            )
        self.h = h

    def _run_unseal(
        self, c: Ceremony, kek: bytearray, tx: CeremonyTx, changes: FileChanges
    ) -> Outcome:
        # Prove the KEK opens the keys before anyone relies on it: the log key, or, when
        # its file is lost (emergency plan §7: REPLACE-LOG-KEY), an issuing CA's key.
        sealer = KekSealer(kek, self.record.keys_id, Purpose.SEAL)
        d = hierarchy.ca_dir(self.cfg.data_dir)
        slots = [d / "log.key", *(d / "issuers" / f"{i}.key" for i in sorted(self.h.issuers))]
        first: Exception | None = None
        for path in slots:
            try:
                sealer.unseal(path)
                break
            except (OSError, Sealed) as exc:
                first = first or exc
        else:
            assert first is not None
            raise first
        return Outcome(
            {"unsealed": True, "boot_id": self.boot.id},
            secret=self.boot.wrap(kek, _kek_label(c.custody_id)),
        )

    # -- JSON -----------------------------------------------------------------------------

    def ceremony_json(self, c: Ceremony) -> dict[str, Any]:
        import base64

        from ca.api import iso

        return {
            "id": c.id,
            "operation": c.operation.value,
            "params": dict(c.params),
            # an open ceremony past its expiry takes no share: say so before a custodian
            # opens one (eport ca ceremony join refuses any state but open)
            "state": (
                "expired"
                if c.state is CeremonyState.OPEN and self.quorum.clock() >= c.expires_at
                else c.state.value
            ),
            "threshold": c.threshold,
            "progress": len(c.joined),
            "joined": list(c.joined),
            "custody_id": c.custody_id,
            "boot_id": c.boot_id,
            # False for one opened before this server instance started: its key is gone
            # with that instance, so it can never complete (open a new one)
            "this_instance": c.boot_id == self.quorum.boot.id,
            # False for one opened under a custody set re-shared since: no share of the
            # set in force is accepted for it (open a new one)
            "custody_current": c.custody_id == self.quorum.record.custody_id,
            "public_key": base64.b64encode(self.quorum.public_key(c.id)).decode(),
            "key_fingerprint": self.quorum.fingerprint(c.id),
            "purpose": c.operation.purpose.value,
            "opened_by": c.opened_by,
            "created_at": iso(c.created_at),
            "expires_at": iso(c.expires_at),
            "completed_at": iso(c.completed_at),
            "result": dict(c.result),
            # APPROVE-OFFICER: to the custodian whose join completed it, once; never stored
            **({"enrollment_code": c.handout} if c.handout else {}),
            **self._approving(c),
        }

    def _approving(self, c: Ceremony) -> dict[str, Any]:
        """For APPROVE-OFFICER, whom it approves: custodians see the member and the
        person, not only an application id, before they join."""
        if c.operation is not Operation.APPROVE_OFFICER:
            return {}
        from ca.app import EXTENSION as CA_EXTENSION

        ca = self.app.extensions[CA_EXTENSION].authority
        with ca.store.reading() as tx:
            app = tx.get_application(c.params.get("application", ""))
        if app is None:
            return {}
        return {
            "approving": {
                "application": app.id,
                "agency_id": app.vetted.get("agency_id"),
                "person_name": app.vetted.get("person_name"),
                "state": app.state.value,
            }
        }


def custody_service() -> CustodyService:
    svc: CustodyService = current_app.extensions[EXTENSION]
    return svc


def install_custody(
    app: Flask, cfg: CAConfig, policies: Policies, h: hierarchy.Hierarchy, store: SqlStore
) -> None:
    """Register the custody API when the hierarchy is under joint custody; otherwise its
    routes answer 404 saying why (a CA without custodians has no quorum ceremonies)."""
    if not custody_files.under_custody(cfg.data_dir):
        absent = Blueprint("custody_absent", __name__, url_prefix="/ca/v1/custody")

        @absent.route("", defaults={"rest": ""}, methods=["GET", "POST"])
        @absent.route("/<path:rest>", methods=["GET", "POST"])
        def _no_custody(rest: str) -> Any:
            raise NotFound(
                "this CA is not under joint custody (a development CA, or one whose keys "
                "are in a PKCS#11 token without custodians): it has no unseal and no quorum "
                "ceremonies; `eport ca init` makes a CA held by M of N custodians"
            )

        app.register_blueprint(absent)
        return
    from ca.custody_store import latest_reshare
    from ca.reshare import settle

    with app.app_context():
        settle(cfg.data_dir, latest_reshare(store))  # a re-share cut short by a crash
    svc = CustodyService(app, cfg, policies, h, store, custody_files.load_record(cfg.data_dir))
    app.extensions[EXTENSION] = svc
    app.register_blueprint(bp)

    @app.before_request
    def _refresh_custody() -> None:
        svc.refresh()


def _sealed_share() -> Any:
    from ca.api import json_body
    from ca.wellformed import only

    share = only(json_body(), "a custodian's share", "share").get("share")
    if not isinstance(share, dict):
        raise BadRequest("'share' must be a sealed share object (eport ca unseal/join)")
    return share


@bp.get("")
def custody_status() -> Response:
    svc = custody_service()
    from ca.custody_signature import check_local

    # Whether the record on disk is signed by the root (ca/custody_signature.py): an
    # unsigned one (made before records were signed) still works on its own host.
    unsigned = check_local(svc.cfg.data_dir)
    doc: dict[str, Any] = {
        "custody": svc.record.to_json(),
        "record_signature": {"verified": unsigned is None, "detail": unsigned},
        "sealed": svc.sealed,
        "boot_id": svc.boot.id,
    }
    if svc.sealed:
        doc["unseal"] = svc.ceremony_json(svc.quorum.unseal_ceremony())
    return jsonify(doc)


@bp.post("/unseal")
def unseal() -> Response:
    svc = custody_service()
    share = _sealed_share()
    if not svc.sealed:
        return jsonify({"sealed": False, "detail": "the CA is already unsealed"})
    c = svc.quorum.unseal_ceremony()
    c = svc.quorum.join(c.id, share)
    svc.refresh()
    doc: dict[str, Any] = {"sealed": svc.sealed, "ceremony": svc.ceremony_json(c)}
    missing = svc.h.missing_keys()
    if missing:  # unsealed without them: the custodians hear it first (as health says it)
        doc.update(missing_keys=sorted(missing), warnings=list(missing.values()))
    return jsonify(doc)


@bp.post("/ceremonies")
def start_ceremony() -> tuple[Response, int]:
    from ca.api import field, json_body, signed_caller
    from ca.wellformed import only

    signed = request.headers.get("Authorization") is not None
    if signed:
        caller = signed_caller()
        if caller.role is not SubjectClass.AGENCY:
            raise Forbidden("a quorum ceremony is opened by a member agency's RA officer")
    data = only(json_body(), "a ceremony", "operation", "params")
    op = Operation.parse(field(data, "operation"))
    params = data.get("params") or {}
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in params.items()
    ):
        raise BadRequest("'params' must be an object of strings")
    svc = custody_service()
    actor = caller.actor if signed else _unsigned_opener(op, params)
    from ca.root_ops import check_params

    check_params(svc, op, params)
    c = svc.quorum.start(op, params, actor)
    return jsonify(svc.ceremony_json(c)), 201


UNSIGNED_ACTOR = "unsigned:no-officer-in-force"
"""The opener a ceremony's record and events name when no RA officer was left to sign."""


def _unsigned_opener(op: Operation, params: dict[str, str]) -> str:
    """Who opens a ceremony without a signed request: nobody may, unless no member agency
    has an RA officer certificate in force (all revoked, or expired, with or without the
    issuing CA that issued them); then only the ceremonies that bring officers back:
    APPROVE-OFFICER, a rollover of the officers' issuing CA, and the root CRL. The
    quorum's M custodians, each told what the ceremony does before giving a share,
    authorize it; the opening only names it (docs/emergency-plan.md, runbook 8)."""
    from ca.api import svc as ca_svc
    from ca.errors import Unauthenticated

    authority = ca_svc().authority
    if authority.officers_in_force():
        raise Unauthenticated(
            "a quorum ceremony is opened by a member agency's RA officer's signed request "
            "(--cert/--key); an unsigned opening is accepted only while no member agency "
            "has an RA officer certificate in force"
        )
    issuer = authority.officer_issuer()
    if not (
        op in (Operation.APPROVE_OFFICER, Operation.ROOT_CRL)
        or (op is Operation.ROTATE_ISSUER and params.get("issuer") == issuer)
    ):
        raise Forbidden(
            "with no RA officer in force, a ceremony opened unsigned is one that brings "
            f"officers back: APPROVE-OFFICER, ROTATE-ISSUER issuer={issuer} or ROOT-CRL; "
            f"not {op.value}"
        )
    return UNSIGNED_ACTOR


@bp.get("/ceremonies/<ceremony_id>")
def ceremony(ceremony_id: str) -> Response:
    svc = custody_service()
    return jsonify(svc.ceremony_json(svc.quorum.get(ceremony_id)))


@bp.post("/ceremonies/<ceremony_id>/join")
def join(ceremony_id: str) -> Response:
    svc = custody_service()
    from ca.crosshost import host_lock

    # The M-th join runs the operation, which writes several ca/ files one after the
    # other (REVOKE-INTERMEDIATE: issuers/active.json, then the root CRL it signs): this
    # host's checks (ca.crosshost) wait, so that none publishes half a ceremony to the
    # other hosts of the database.
    with host_lock(svc.cfg.data_dir):
        # A ceremony that failed and could not put all its files back (a full disk)
        # left its journal: the files go back now, before anything reads them. The
        # join that retried it deleted that journal, and the files stayed ahead of the
        # database for good (custody probe, F1).
        from ca.app import settle_journals

        settle_journals(svc.cfg.data_dir, svc.store)
        # Another worker's ceremony may have changed the hierarchy since this one loaded
        # it (two rotations completing at once): the operation runs on the files as
        # they are now.
        svc.refresh()
        c = svc.quorum.join(ceremony_id, _sealed_share())
    if c.state is CeremonyState.DONE:
        svc.refresh()
        from ca.app import check_hierarchy_record

        check_hierarchy_record(current_app._get_current_object())  # type: ignore[attr-defined]
    return jsonify(svc.ceremony_json(c))
