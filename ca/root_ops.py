"""The root operations a quorum runs with the rebuilt root key (RFC 5280 §4, §5).

Each runner is called by :class:`ca.quorum.Quorum` inside the completing transaction,
with the root KEK rebuilt from M shares; it opens the root key only for the operation
and drops it (the KEK is wiped by the caller). Files are written before the
transaction commits, through the ceremony's :class:`~ca.ceremony_files.FileChanges`,
which puts them back if it does not commit; once it has committed (or the files are
back) the hierarchy's generation file tells every worker to reload
(:mod:`ca.quorum_api`), never before.

* ``ROOT-CRL``: sign a new root CRL listing every revoked issuing CA.
* ``REVOKE-INTERMEDIATE issuer=ID [reason=…]``: revoke an issuing CA (by generation
  id), stop issuing from it, and sign the root CRL.
* ``ISSUE-INTERMEDIATE issuer=ID`` and ``ROTATE-ISSUER issuer=ID`` (``eport ca rotate``):
  a new issuing CA generation (same name, new key, its own OCSP responder) that new
  certificates come from at once; the older generation keeps signing its CRLs and
  OCSP responses until its last certificate expires. ``ROTATE-ISSUER`` names an issuing
  CA that exists (checked when the ceremony is opened: :func:`check_params`).
* ``ROTATE-LOG-KEY``: a new Ed25519 checkpoint key for the transparency log; the old
  public key is kept beside it (``log-<n>.pub``) for verifying older checkpoints.
* ``REPLACE-LOG-KEY``: the same when the log key is lost (or compromised): the hand-over
  checkpoint is signed by the new key and by the root key the quorum opened, instead of
  by the key it retires.

``REVOKE-INTERMEDIATE``, ``ISSUE-INTERMEDIATE`` and ``ROTATE-ISSUER`` write
``issuers/active.json`` with the root's signature of it (``issuers/active.json.sig``,
ordered after this host's previous one: :mod:`ca.active_signature`), without which the
other hosts of a shared database do not take it.

New keys go where the keys they succeed are (:mod:`ca.keyhome`): generated in the
PKCS#11 token that holds them, else sealed by the seal KEK the unsealed worker holds.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca import active_signature, hierarchy, translog
from ca.authority import certificate_record
from ca.ceremony_files import FileChanges
from ca.crl import ReasonCode, RevokedEntry, build_crl, next_crl_number
from ca.custody import Purpose
from ca.errors import BadRequest, Conflict, NotFound
from ca.issuance import IssuingCA
from ca.keyhome import KeyHome, NewKey, key_home
from ca.keys import KeyType
from ca.log_key_signature import SIGNATURE_FILE as LOG_KEY_SIGNATURE
from ca.log_key_signature import sign_log_key
from ca.quorum import Ceremony, CeremonyTx, Operation, Outcome, Runner
from ca.records import Event, EventType, StatusRecord, StatusState
from ca.sealing import KekSealer

if TYPE_CHECKING:
    from ca.quorum_api import CustodyService

ACTIVE_FILE = hierarchy.ACTIVE_FILE

_REASONS = {r.rfc_name: r for r in ReasonCode}
_CA_REASONS = (
    ReasonCode.KEY_COMPROMISE,
    ReasonCode.CA_COMPROMISE,
    ReasonCode.SUPERSEDED,
    ReasonCode.CESSATION_OF_OPERATION,
    ReasonCode.UNSPECIFIED,
)


def _ca_reason(name: str) -> ReasonCode:
    reason = _REASONS.get(name)
    if reason not in _CA_REASONS:
        raise BadRequest(f"reason {name!r} does not apply to a CA certificate")
    assert reason is not None
    return reason


def _issuer_id(base: str) -> str:
    if not base or not base.replace("_", "").isalnum() or not base.islower():
        raise BadRequest("issuer=ID names the issuing CA (lower-case letters and digits)")
    return base


def _current_generation(h: hierarchy.Hierarchy, active: dict[str, str], base: str) -> str | None:
    return active.get(base) if base in active else (base if base in h.issuers else None)


PARAMETERS: dict[Operation, tuple[str, ...]] = {
    Operation.ISSUE_INTERMEDIATE: ("issuer",),
    Operation.ROTATE_ISSUER: ("issuer",),
    Operation.REVOKE_INTERMEDIATE: ("issuer", "reason"),
    Operation.APPROVE_OFFICER: ("application",),
}
"""The parameters each operation reads (none for the others): any other is refused."""


def check_params(svc: CustodyService, op: Operation, params: dict[str, str]) -> None:
    """Refuse when a ceremony is opened what its operation would refuse at the M-th
    join: custodians are not called to a ceremony that cannot complete, and a rotation
    of a misspelt issuer does not make a new issuing CA."""
    taken = PARAMETERS.get(op, ())
    unknown = sorted(set(params) - set(taken))
    if unknown:
        # a misspelt key ("reson=") was stored and ignored: the ceremony did its default
        named = ", ".join(repr(k[:40]) for k in unknown[:5])
        takes = f"takes {', '.join(taken)}" if taken else "takes no parameters"
        raise BadRequest(f"{op.value} {takes}; not {named}")
    issuer = params.get("issuer", "")
    if op in (Operation.ISSUE_INTERMEDIATE, Operation.ROTATE_ISSUER):
        _issuer_id(issuer)
        active = read_active(Path(svc.cfg.data_dir))
        if _current_generation(svc.h, active, issuer) is None:
            known = sorted(set(svc.h.issuers) - set(active.values()) | set(active))
            if op is Operation.ROTATE_ISSUER:
                raise BadRequest(f"no issuing CA {issuer!r} to rotate (one of: {', '.join(known)})")
            # A first generation of a new issuing CA only for an issuer a profile names:
            # a misspelt one would make a CA certificate nothing issues from.
            issued_from = _issuers_named(svc.policies)
            if issuer not in issued_from:
                raise BadRequest(
                    f"no issuing CA {issuer!r}, and no profile in the policies issues from "
                    f"it (issuing CAs: {', '.join(known)}; profiles name: "
                    f"{', '.join(sorted(issued_from))})"
                )
    elif op is Operation.APPROVE_OFFICER:
        _check_officer_application(svc, params.get("application", ""))
    elif op is Operation.ROTATE_LOG_KEY and hierarchy.log_key_lost(svc.h):
        # its hand-over is signed by the key it retires: it would fail at the M-th join
        raise BadRequest(
            "the transparency log's key is lost, so it cannot sign the hand-over "
            "ROTATE-LOG-KEY makes: open REPLACE-LOG-KEY, whose hand-over the root key "
            f"vouches for ({hierarchy.EMERGENCY_PLAN})"
        )
    elif op is Operation.REVOKE_INTERMEDIATE:
        if issuer not in svc.h.issuers:
            raise BadRequest(f"no issuing CA {issuer!r} (name a generation, e.g. enterprise-2)")
        _ca_reason(params.get("reason", "keyCompromise"))
        with svc.store.reading() as tx:  # as the M-th join would find it (a 409 there)
            revoked = tx.get_status(svc.h.issuers[issuer].certificate.serial_number)
        if revoked is not None:
            raise Conflict(f"issuing CA {issuer} is already revoked on the root CRL")


def _check_officer_application(svc: CustodyService, app_id: str) -> None:
    """An APPROVE-OFFICER ceremony is opened only for what its M-th join would approve
    (:meth:`ca.authority.JointCA.check_officer_application`)."""
    from ca.app import EXTENSION as CA_EXTENSION

    if not app_id:
        raise BadRequest("APPROVE-OFFICER needs application=APP_ID (eport apply --class agency)")
    ca = svc.app.extensions[CA_EXTENSION].authority
    with ca.store.reading() as tx:
        app = tx.get_application(app_id)
        if app is None:
            raise NotFound(f"no application {app_id!r}")
        ca.check_officer_application(tx, app)


def _issuers_named(policies: Any) -> set[str]:
    """The issuing CA ids the profiles issue from (not the root, not any issuer)."""
    return {p.issuer for p in policies.profiles.values() if p.issuer not in ("root", "*")}


def read_active(data_dir: Path) -> dict[str, str]:
    path = hierarchy.ca_dir(data_dir) / "issuers" / ACTIVE_FILE
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    return {str(k): str(v) for k, v in doc.items()}


def _write_active(
    changes: FileChanges, data_dir: Path, active: dict[str, str], root: IssuingCA
) -> None:
    """Write ``issuers/active.json`` and the root's signature of it, ordered after this
    host's previous one (:mod:`ca.active_signature`): the other hosts of the database take
    the file only with it. The file first, then the signature: this host's order is the
    signature's, so a pick-up from the record cut between the two (:mod:`ca.crosshost`)
    leaves this host's order as it was and the next check takes the pair again; here
    both are in the ceremony's journal and put back together if it does not commit."""
    path = hierarchy.ca_dir(data_dir) / "issuers" / ACTIVE_FILE
    data = (json.dumps(active, indent=2, sort_keys=True) + "\n").encode()
    signature = active_signature.next_signature(data_dir, root.signer, root.certificate, data)
    changes.write(path, data)
    changes.write(active_signature.signature_path(data_dir), signature)


def _sql(tx: CeremonyTx) -> Any:
    return tx.tx  # type: ignore[attr-defined]  # the SQL transaction under the ceremony's


def next_root_crl(
    sql: Any, root: IssuingCA, data_dir: Path, now: datetime.datetime
) -> tuple[bytes, int, list[RevokedEntry]]:
    """The next root CRL (DER), signed by ``root`` inside the SQL transaction ``sql``: every
    revoked issuing CA, numbered above both the database's and ``ca/root.crl``'s
    (:func:`ca.crl.next_crl_number`), valid :data:`~ca.hierarchy.ROOT_CRL_VALIDITY` (or
    to the root's own end, if that comes first); the database's CRL state records it.
    The caller writes the file (before the transaction commits)."""
    d = hierarchy.ca_dir(data_dir)
    current = x509.load_der_x509_crl((d / "root.crl").read_bytes())
    on_disk = current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    sql.ensure_crl_state("root")
    state = sql.crl_state("root", for_update=True)
    number = next_crl_number(max(int(state.crl_number), int(on_disk)), now)
    now = now.replace(microsecond=0)
    entries = [
        RevokedEntry(
            serial=st.serial,
            revoked_at=st.revoked_at,
            reason=ReasonCode(st.reason) if st.reason is not None else None,
            invalidity_date=st.invalidity_date,
        )
        for st in sql.revoked_entries("root")
    ]
    until = now + hierarchy.ROOT_CRL_VALIDITY
    if now < root.certificate.not_valid_after_utc < until:
        until = root.certificate.not_valid_after_utc  # no promise past the root's own end
    der = build_crl(root.certificate, root.signer, entries, number, now, until)
    state.crl_number = number
    state.this_update = now
    state.next_update = until
    state.der = der
    state.stale = False
    return der, number, entries


class RootOperations:
    """The runners, bound to one worker's custody service."""

    def __init__(self, svc: CustodyService) -> None:
        self.svc = svc

    @property
    def data_dir(self) -> Path:
        return Path(self.svc.cfg.data_dir)

    def _root(self, kek: bytearray) -> IssuingCA:
        sealer = KekSealer(kek, self.svc.record.keys_id, Purpose.ROOT)
        signer = sealer.unseal(hierarchy.ca_dir(self.data_dir) / "root.key")
        return IssuingCA("root", self.svc.h.root, signer)

    def _home(self, op: Operation, *existing: Path) -> KeyHome:
        """Where the operation's new keys go: the PKCS#11 token the first existing key
        file of ``existing`` names, else sealed by the seal KEK (503 while sealed)."""
        return key_home(existing, self.svc.seal_sealer(), op.value)

    def _now(self) -> datetime.datetime:
        return self.svc.quorum.clock()

    # -- the root CRL ----------------------------------------------------------------------

    def _sign_root_crl(
        self, root: IssuingCA, tx: CeremonyTx, changes: FileChanges
    ) -> dict[str, Any]:
        der, number, entries = next_root_crl(_sql(tx), root, self.data_dir, self._now())
        changes.write(hierarchy.ca_dir(self.data_dir) / "root.crl", der)
        return {
            "root_crl_number": number,
            "revoked": [format(e.serial, "x") for e in entries],
            "root_crl_sha256": hashlib.sha256(der).hexdigest(),
        }

    def root_crl(
        self, c: Ceremony, kek: bytearray, tx: CeremonyTx, changes: FileChanges
    ) -> Outcome:
        return Outcome(self._sign_root_crl(self._root(kek), tx, changes))

    # -- revoking an issuing CA ------------------------------------------------------------

    def revoke_intermediate(
        self, c: Ceremony, kek: bytearray, tx: CeremonyTx, changes: FileChanges
    ) -> Outcome:
        target = c.params.get("issuer", "")
        active = read_active(self.data_dir)
        gen = target  # a generation id, exactly: never resolved through active.json
        issuer = self.svc.h.issuers.get(gen)
        if issuer is None:
            raise BadRequest(f"no issuing CA {target!r} (name a generation, e.g. enterprise-2)")
        reason = _ca_reason(c.params.get("reason", "keyCompromise"))
        root = self._root(kek)
        sql = _sql(tx)
        serial = issuer.certificate.serial_number
        if sql.get_status(serial) is not None:
            raise Conflict(f"issuing CA {gen} is already revoked")
        now = self._now()
        sql.put_status(
            StatusRecord(serial, "root", StatusState.REVOKED, now, int(reason), None, now)
        )
        # Its responder's pre-signed answers (good, on hold) are no longer served from the
        # moment this commits: a worker that has not reloaded the hierarchy yet would still
        # hand them out on the pre-signed path; the full path reloads first.
        from ca.status import RESIGN

        sql.make_ocsp_due(gen, RESIGN)
        rec = certificate_record(issuer.certificate, "root", "issuing-ca", None)
        sql.append_event(
            Event.about(
                EventType.CERTIFICATE_REVOKED,
                rec,
                actor=f"ceremony:{c.id}",
                at=now,
                details={"reason": reason.rfc_name, "issuer_id": gen},
            )
        )
        stopped = [alias for alias, g in active.items() if g == gen]
        if gen in self.svc.h.issuers and gen not in active.values() and gen not in active:
            stopped.append(gen)  # a first generation serves under its own id
        for alias in stopped:
            active[alias] = ""
        if stopped:
            _write_active(changes, self.data_dir, active, root)
        result = self._sign_root_crl(root, tx, changes)
        result.update(issuer=gen, serial=format(serial, "x"), reason=reason.rfc_name)
        result["stopped_issuing"] = stopped
        return Outcome(result)

    # -- a new issuing CA generation -------------------------------------------------------

    def issue_intermediate(
        self, c: Ceremony, kek: bytearray, tx: CeremonyTx, changes: FileChanges
    ) -> Outcome:
        base = _issuer_id(c.params.get("issuer", ""))
        h = self.svc.h
        d = hierarchy.ca_dir(self.data_dir)
        active = read_active(self.data_dir)
        previous = _current_generation(h, active, base)
        if c.operation is Operation.ROTATE_ISSUER and previous is None:
            raise BadRequest(f"no issuing CA {base!r} to rotate")
        home = self._home(
            c.operation,
            *(d / "issuers" / f"{i}.key" for i in (previous, base) if i),
            d / "log.key",
        )
        root = self._root(kek)
        n = 1
        gen = base
        while (d / "issuers" / f"{gen}.crt").exists():
            n += 1
            gen = f"{base}-{n}"
        if previous and previous not in h.issuers:
            # This worker's hierarchy predates another ceremony's new generation (the
            # join reloads it first; a host's files changed by hand would do it too).
            raise Conflict(
                f"the hierarchy changed while this ceremony ran ({base} is now {previous}); "
                "join again"
            )
        if previous:
            name = hierarchy.issuer_ca_name(h.issuers[previous])
        elif base in h.issuers:
            name = hierarchy.issuer_ca_name(h.issuers[base])
        else:
            name = hierarchy.ISSUING_NAMES.get(base, f"E-Port {base.title()} Issuing CA")
        now = self._now()
        key_file, rkey_file = d / "issuers" / f"{gen}.key", d / "responders" / f"{gen}.key"
        # Discarded (a token key destroyed) and their files removed if the ceremony fails.
        key = home.new(KeyType.P256, key_file)
        changes.made(key)
        rkey = home.new(KeyType.P256, rkey_file)
        changes.made(rkey)
        result = self._issue_generation(
            c, tx, changes, home, gen, name, previous, root, (key, rkey), now, base=base
        )
        if gen != base:
            active[base] = gen
            _write_active(changes, self.data_dir, active, root)
        result.update(issuer=base)
        return Outcome(result)

    def _issue_generation(
        self,
        c: Ceremony,
        tx: CeremonyTx,
        changes: FileChanges,
        home: KeyHome,
        gen: str,
        name: str,
        previous: str | None,
        root: IssuingCA,
        keys: tuple[NewKey, NewKey],
        now: datetime.datetime,
        *,
        base: str,
    ) -> dict[str, Any]:
        """Certify the new generation's keys, record them, and write its files."""
        factory = self.svc.app.extensions["eport.ca"].authority.factory
        policies = self.svc.policies
        d = hierarchy.ca_dir(self.data_dir)
        key, rkey = keys
        cert = factory.issue(
            hierarchy.issuing_profile(policies, base), root, key.public_key, {"ca_name": name}, now
        )
        new_ca = IssuingCA(gen, cert, key.signer)
        rcert = factory.issue(
            policies.profile("ocsp-responder"), new_ca, rkey.public_key, {"ca_name": name}, now
        )
        sql = _sql(tx)
        for made, issuer_id, profile, details in (
            (cert, "root", "issuing-ca", {"role": "issuing", "issuer_id": gen}),
            (rcert, gen, "ocsp-responder", {"role": "ocsp-responder"}),
        ):
            rec = certificate_record(made, issuer_id, profile, None)
            sql.add_certificate(rec)
            sql.append_event(
                Event.about(
                    EventType.CERTIFICATE_ISSUED,
                    rec,
                    actor=f"ceremony:{c.id}",
                    at=now,
                    details={**details, "replaces": previous} if previous else details,
                )
            )
        changes.store(key, d / "issuers" / f"{gen}.key")
        changes.store(rkey, d / "responders" / f"{gen}.key")
        pem = serialization.Encoding.PEM
        changes.write(d / "responders" / f"{gen}.crt", rcert.public_bytes(pem))
        changes.write(d / "issuers" / f"{gen}.crt", cert.public_bytes(pem))
        return {
            "generation": gen,
            "replaces": previous,
            "serial": format(cert.serial_number, "x"),
            "sha256": cert.fingerprint(hashes.SHA256()).hex(),
            "subject": certificate_record(cert, "root", "issuing-ca", None).subject,
            "key": "pkcs11" if home.token is not None else "sealed",
        }

    # -- the log key -----------------------------------------------------------------------

    def rotate_log_key(
        self, c: Ceremony, kek: bytearray, tx: CeremonyTx, changes: FileChanges
    ) -> Outcome:
        d = hierarchy.ca_dir(self.data_dir)
        home = self._home(c.operation, d / "log.key")
        root = self._root(kek)  # a root operation: the quorum opened the root key
        signer = self._log_checkpoints((d / "log.pub").read_bytes())
        key, result = self._new_log_key(home, changes, root)

        def hand_over(done: CeremonyTx) -> object:
            return signer.hand_over(_sql(done).s, key.signer)

        return Outcome(result, after_event=hand_over)

    def replace_log_key(
        self, c: Ceremony, kek: bytearray, tx: CeremonyTx, changes: FileChanges
    ) -> Outcome:
        """A new log key when the current one is lost (or compromised): the hand-over
        checkpoint is signed by the successor and by the root key the quorum opened, not
        by the key it retires (:meth:`ca.translog.CheckpointSigner.replace`)."""
        from ca.audit_api import audit_service

        d = hierarchy.ca_dir(self.data_dir)
        # the token of the log key's reference file, or of the issuing CAs' when it is gone
        home = self._home(c.operation, d / "log.key", *sorted((d / "issuers").glob("*.key")))
        root = self._root(kek)
        retired = serialization.load_pem_public_key((d / "log.pub").read_bytes())
        checkpoints = audit_service().signer  # for the log's origin, not its key
        key, result = self._new_log_key(home, changes, root)
        result["vouched_by_root_sha256"] = root.certificate.fingerprint(hashes.SHA256()).hex()

        def replace(done: CeremonyTx) -> object:
            return checkpoints.replace(
                _sql(done).s, key.signer, retired, root.signer, root.certificate
            )

        return Outcome(result, after_event=replace)

    def _new_log_key(
        self, home: KeyHome, changes: FileChanges, root: IssuingCA
    ) -> tuple[NewKey, dict[str, Any]]:
        """A new Ed25519 log key made where ``home`` says, written as ``log.key`` and
        ``log.pub`` with the ``root``'s signature of it (``log.pub.sig``), the old public
        key kept as ``log-<n>.pub`` (the old files come back and the key is destroyed if
        the ceremony fails); the ceremony's result."""
        d = hierarchy.ca_dir(self.data_dir)
        old = (d / "log.pub").read_bytes()
        n = 1
        while (d / f"log-{n}.pub").exists():
            n += 1
        key = home.new(KeyType.ED25519, d / "log.key")
        changes.made(key)  # destroyed in its token if the ceremony fails
        new = key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        changes.write(d / f"log-{n}.pub", old)
        changes.store(key, d / "log.key")  # the old log.key (if any) comes back on failure
        changes.write(d / "log.pub", new)
        signature = sign_log_key(root.signer, root.certificate, new)
        changes.write(d / LOG_KEY_SIGNATURE, signature)
        return key, {
            "previous_key_sha256": hashlib.sha256(old).hexdigest(),
            "key_sha256": hashlib.sha256(new).hexdigest(),
            "previous_key_file": f"log-{n}.pub",
            "key": "pkcs11" if home.token is not None else "sealed",
        }

    def _log_checkpoints(self, retiring: bytes) -> translog.CheckpointSigner:
        """This worker's checkpoint signer, which must hold the key ``retiring`` (the PEM
        of ``log.pub`` as the ceremony found it) to sign the hand-over with it."""
        from ca.audit_api import audit_service

        signer = audit_service().signer
        if translog.log_key_pem(signer.key.public_key()) != retiring:
            raise Conflict(
                "this worker's log key is not the one ca/log.pub names (the CA files changed "
                "under it): it cannot sign the log's hand-over to the new key; nothing was "
                "changed, join again"
            )
        return signer


def _approve_officer(svc: CustodyService) -> Runner:
    def run(c: Ceremony, kek: bytearray, tx: CeremonyTx, changes: FileChanges) -> Outcome:
        from ca.api import iso
        from ca.app import EXTENSION as CA_EXTENSION

        ca = svc.app.extensions[CA_EXTENSION].authority
        grant = ca.approve_officer_by_quorum(_sql(tx), c.params.get("application", ""), c.id)
        vetted = grant.application.vetted
        return Outcome(
            {
                "application": grant.application.id,
                "agency_id": str(vetted.get("agency_id")),
                "person_name": str(vetted.get("person_name")),
                "profiles": list(grant.profiles),
                "code_expires_at": iso(grant.expires_at),
            },
            handout=grant.code,
        )

    return run


def runners(svc: CustodyService) -> dict[Operation, Runner]:
    ops = RootOperations(svc)
    return {
        Operation.ROOT_CRL: ops.root_crl,
        Operation.REVOKE_INTERMEDIATE: ops.revoke_intermediate,
        Operation.ISSUE_INTERMEDIATE: ops.issue_intermediate,
        Operation.ROTATE_ISSUER: ops.issue_intermediate,
        Operation.ROTATE_LOG_KEY: ops.rotate_log_key,
        Operation.REPLACE_LOG_KEY: ops.replace_log_key,
        Operation.APPROVE_OFFICER: _approve_officer(svc),
    }
