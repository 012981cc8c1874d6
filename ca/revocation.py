"""Revocation, suspension (certificateHold) and resumption: RFC 5280 §5.3.1 semantics.

Framework-free. Who may change a certificate's status:

* an RA officer of a member agency: any certificate (revoke, suspend, resume);
* an enterprise (its legal-person certificate): its own certificates and those of
  its operators (revoke, suspend, resume of its operators);
* the holder of the certificate's private key (a signed request made with that very
  certificate): revoke with keyCompromise, or suspend. A holder cannot resume its
  own certificate: whoever found a lost key must not be able to lift the hold.

Revoking an enterprise certificate with cessationOfOperation ends the enterprise when it
was its last certificate in force: every operator certificate of that enterprise is
revoked in the same transaction, each with its own event and log entry (all written by a
few statements: the transaction holds the issuances' lock), and the operators' unused
codes are withdrawn. While another enterprise certificate of the same USCC is in force (a
renewal's, or one on hold), only the certificate named is revoked, and the answer names
the certificates that keep the enterprise going: an old certificate retired with that
reason after a renewal must not take every operator down with it.
Every change marks the issuer's CRL stale in the same transaction (the next fetch or
the background refresher signs a new one) and is an event of the transparency log.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.authority import Caller, JointCA, actor_of, signer_still_good
from ca.crl import ReasonCode
from ca.errors import BadRequest, Conflict, Forbidden, NotFound
from ca.names import member_agency_of
from ca.policy import SubjectClass
from ca.records import (
    CertificateRecord,
    Event,
    EventType,
    StatusRecord,
    StatusState,
    Transaction,
)

REVOCATION_REASONS: dict[str, ReasonCode] = {
    "unspecified": ReasonCode.UNSPECIFIED,
    "keyCompromise": ReasonCode.KEY_COMPROMISE,
    "affiliationChanged": ReasonCode.AFFILIATION_CHANGED,
    "superseded": ReasonCode.SUPERSEDED,
    "cessationOfOperation": ReasonCode.CESSATION_OF_OPERATION,
    "privilegeWithdrawn": ReasonCode.PRIVILEGE_WITHDRAWN,
}
"""The reasons ``eport revoke`` accepts (certificateHold is ``eport suspend``)."""

AfterCommit = Callable[[], None]
"""Work a listener leaves for after the commit, outside every lock (it must not fail the
change, which is done: it handles its own errors)."""

StatusListener = Callable[
    [Transaction, Sequence[tuple[CertificateRecord, StatusRecord | None]]], AfterCommit | None
]
"""Called in the transaction of status changes with each certificate's new status (None:
good): once for the certificate named, once for all the operators a cessation revokes.

The OCSP layer uses it to replace the certificates' pre-signed responses at once; for a
cessation's operators it returns their re-signing, which runs after the commit."""


@dataclass(frozen=True)
class StatusChange:
    record: CertificateRecord
    status: StatusRecord | None
    cascaded: tuple[CertificateRecord, ...] = ()
    kept_by: tuple[CertificateRecord, ...] = ()
    """For cessationOfOperation on an enterprise certificate: the enterprise's other
    certificates in force, because of which its operators were not revoked."""


STAFF_CLASSES = frozenset({SubjectClass.AGENCY, SubjectClass.AUDITOR, SubjectClass.SERVICE})
"""Subject classes of a member agency's own people and services."""


class Revocation:
    """Status changes of the joint CA's certificates."""

    def __init__(self, ca: JointCA, listeners: tuple[StatusListener, ...] = ()) -> None:
        self.ca = ca
        self.listeners = listeners

    # -- authorization --------------------------------------------------------------------

    def _may_manage(
        self, tx: Transaction, caller: Caller, rec: CertificateRecord, *, resume: bool = False
    ) -> str:
        """On what ground ``caller`` may change ``rec``: officer, enterprise or holder."""
        if caller.role is SubjectClass.AGENCY:
            staff_of = self._staff_agency(tx, rec)
            if staff_of is not None and staff_of != caller.agency_id:
                # As only its own officers vet a member's staff and services: an officer
                # of one member could otherwise revoke every officer of another, whose
                # successors nobody else may approve (authorization probe, F4).
                raise Forbidden(
                    f"only an officer of agency {staff_of!r} may change the status of its "
                    "officers', auditors' and services' certificates"
                )
            return "officer"
        own_enterprise = (
            caller.role is SubjectClass.ENTERPRISE
            and caller.uscc is not None
            and rec.uscc == caller.uscc
            and rec.profile in ("enterprise", "operator")
        )
        if own_enterprise and resume and rec.profile == "enterprise":
            # Its operators' holds only: a key that can sign for the enterprise must not
            # lift the hold put on one of the enterprise's certificates (a lost key).
            raise Forbidden(
                "an enterprise may lift the holds of its operators' certificates, not of its "
                "own; ask an RA officer"
            )
        if own_enterprise and not (resume and rec.serial == caller.serial):
            return "enterprise"
        if rec.serial == caller.serial:
            if resume:
                raise Forbidden("a certificate cannot lift its own hold; ask an RA officer")
            return "holder"  # possession of the key is proven by signing this request
        raise Forbidden("you may change the status only of your own certificates")

    def _staff_agency(self, tx: Transaction, rec: CertificateRecord) -> str | None:
        """The member agency whose staff or service ``rec`` certifies (its application's
        vetted agency), or None for an enterprise's and its operators' certificates, which
        every member's officers vet for the whole joint CA."""
        profile = self.ca.policies.profiles.get(rec.profile)
        if profile is None or profile.subject_class not in STAFF_CLASSES:
            return None
        app = tx.get_application(rec.application_id) if rec.application_id else None
        if app is not None and app.vetted.get("agency_id"):
            return str(app.vetted["agency_id"])
        cert = x509.load_der_x509_certificate(rec.der)
        ids = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
        # staff of no agency on record: no officer's, as no officer vetted it
        return (member_agency_of(str(ids[0].value)) if ids else None) or "?"

    def _load(self, tx: Transaction, serial: int) -> CertificateRecord:
        rec = tx.get_certificate(serial)
        if rec is None or rec.issuer_id == "root" or rec.profile in ("root", "issuing-ca"):
            # CA certificates are revoked by a quorum of custodians, not here.
            raise NotFound(f"no end-entity certificate with serial {serial:x}")
        return rec

    # -- changes --------------------------------------------------------------------------

    def revoke(
        self,
        caller: Caller,
        serial: int,
        reason_name: str,
        invalidity_date: datetime.datetime | None = None,
    ) -> StatusChange:
        """Revoke for good (RFC 5280 §5.3.1 reason); a held certificate may be revoked."""
        try:
            reason = REVOCATION_REASONS[reason_name]
        except KeyError:
            known = ", ".join(REVOCATION_REASONS)
            raise BadRequest(f"unknown reason {reason_name!r} (one of {known})") from None
        now = self.ca.clock()
        if invalidity_date is not None and invalidity_date > now:
            raise BadRequest("the invalidity date cannot be in the future")
        after: list[AfterCommit] = []
        with self.ca.store.transaction() as tx:
            rec = self._load(tx, serial)
            ground = self._may_manage(tx, caller, rec)
            if ground == "holder" and reason is not ReasonCode.KEY_COMPROMISE:
                raise Forbidden("the key holder may revoke only with reason keyCompromise")
            if invalidity_date is not None and invalidity_date < rec.not_before:
                # §5.3.2: when the key was compromised or the certificate became invalid;
                # before the certificate existed, it is a slip (a wrong year), not a fact.
                raise BadRequest(
                    f"the invalidity date {invalidity_date:%Y-%m-%dT%H:%M:%SZ} cannot be "
                    f"before the certificate's notBefore, {rec.not_before:%Y-%m-%dT%H:%M:%SZ}"
                )
            # Under the issuances' lock, which every status change takes first: a good
            # certificate has no status row to lock, so two changes of it at once (two
            # hosts, two workers) would both find it good and the later would overwrite
            # the earlier, a hold over a revocation. Taken first, the later one waits and
            # then sees the earlier; two cessations of one enterprise see each other too.
            # The lock is taken with a fresh look at the request's signer: revoked or held
            # since its request was checked (an officer's keyCompromise of an enterprise
            # committing while the enterprise revokes its operator), nothing is changed
            # (race probe, session 24: both were carried out, the later by a revoked key).
            signer_still_good(tx, caller)
            current = tx.get_status(serial, for_update=True)
            if current is not None and current.state is StatusState.REVOKED:
                raise Conflict(f"certificate {serial:x} is already revoked")
            ceased = rec.profile == "enterprise" and reason is ReasonCode.CESSATION_OF_OPERATION
            more: dict[str, str] = {}
            kept_by: list[CertificateRecord] = []
            others: list[CertificateRecord] = []
            if rec.profile == "enterprise":
                assert rec.uscc is not None
                others = _others_in_force(tx, rec, now)
            if ceased:
                kept_by = others
                ceased = not kept_by
                if kept_by:
                    more["enterprise_still_in_force"] = ",".join(k.serial_hex for k in kept_by)
            if rec.profile == "enterprise" and not others:
                assert rec.uscc is not None
                # The enterprise's last certificate in force goes, for whatever reason: its
                # operators' unused codes are withdrawn with it (a keyCompromise left the
                # codes its stolen key may have given enrolling operators of an enterprise
                # with no certificate: docs probe 24), under the issuances' lock, so that an
                # operator enrollment in flight either is stored first or finds its code
                # withdrawn. Only a cessation revokes the operators' certificates (below).
                withdrawn = tx.withdraw_codes_of(rec.uscc, SubjectClass.OPERATOR.value, now)
                if withdrawn:
                    more["operator_codes_withdrawn"] = str(withdrawn)
            elif rec.profile == "enterprise" and reason is ReasonCode.KEY_COMPROMISE:
                assert rec.uscc is not None
                # A renewal's certificate is still in force: the codes stay, but not those
                # the compromised key itself authorized (their applications name it as the
                # applicant), which a thief may have made; an officer may not withdraw an
                # operator authorization, so this is the way to stop them (review probe 24)
                withdrawn = tx.withdraw_codes_of(
                    rec.uscc,
                    SubjectClass.OPERATOR.value,
                    now,
                    applicant=actor_of(rec.profile, rec.serial),
                )
                if withdrawn:
                    more["operator_codes_withdrawn"] = str(withdrawn)
            status = self._set(
                tx, rec, StatusState.REVOKED, reason, invalidity_date, caller.actor, now, more=more
            )
            cascaded: list[CertificateRecord] = []
            if ceased:
                assert rec.uscc is not None
                # Every operator at once (status rows, events and log entries each by one
                # statement): thousands one by one held the issuances' lock for seconds.
                operators = tx.certificates_of_class(rec.uscc, "operator")
                current_ops = tx.get_statuses([op.serial for op in operators], for_update=True)
                for op in operators:
                    op_status = current_ops.get(op.serial)
                    if op_status is None or op_status.state is not StatusState.REVOKED:
                        cascaded.append(op)
                self._set_many(
                    tx,
                    cascaded,
                    StatusState.REVOKED,
                    reason,
                    None,
                    caller.actor,
                    now,
                    cause=rec.serial,
                    after=after,
                )
        for work in after:
            work()
        return StatusChange(rec, status, tuple(cascaded), tuple(kept_by))

    def suspend(self, caller: Caller, serial: int) -> StatusChange:
        """Put a certificate on hold (certificateHold, reason code 6): a lost key."""
        now = self.ca.clock()
        with self.ca.store.transaction() as tx:
            rec = self._load(tx, serial)
            self._may_manage(tx, caller, rec)
            signer_still_good(tx, caller)  # the lock before the status: see revoke
            current = tx.get_status(serial, for_update=True)
            if current is not None:
                state = "on hold" if current.state is StatusState.HOLD else "revoked"
                raise Conflict(f"certificate {serial:x} is already {state}")
            status = self._set(
                tx, rec, StatusState.HOLD, ReasonCode.CERTIFICATE_HOLD, None, caller.actor, now
            )
        return StatusChange(rec, status)

    def resume(self, caller: Caller, serial: int) -> StatusChange:
        """Lift a hold (RFC 5280 §5.3.1 removeFromCRL): only from hold, never from revoked."""
        now = self.ca.clock()
        with self.ca.store.transaction() as tx:
            rec = self._load(tx, serial)
            # The issuances' lock before the status row, as revoke and suspend take them
            # (the other way round, a revocation of this held certificate at the same
            # moment would deadlock with it), and the signer's status under it: see revoke.
            signer_still_good(tx, caller)
            current = tx.get_status(serial, for_update=True)
            if current is None and rec.serial == caller.serial:
                # It signed this request, so it is good: say that, not who may lift a hold.
                raise Conflict(f"certificate {serial:x} is not on hold")
            self._may_manage(tx, caller, rec, resume=True)
            if current is None:
                raise Conflict(f"certificate {serial:x} is not on hold")
            if current.state is StatusState.REVOKED:
                raise Conflict(f"certificate {serial:x} is revoked; revocation is final")
            issuer = self.ca.revoked_issuers.get(rec.issuer_id)
            if issuer is not None:
                raise Conflict(
                    f"certificate {serial:x} stays revoked: its issuing CA {rec.issuer_id} was "
                    f"revoked on the root CRL at {issuer.revoked_at:%Y-%m-%dT%H:%M:%SZ}; "
                    "a hold on it can no longer be lifted"
                )
            tx.delete_status(serial)
            tx.mark_crl_stale(rec.issuer_id)
            tx.append_event(
                Event.about(
                    EventType.CERTIFICATE_RESUMED,
                    rec,
                    actor=caller.actor,
                    at=now,
                    details={"held_since": current.revoked_at.isoformat()},
                )
            )
            for listener in self.listeners:
                listener(tx, [(rec, None)])  # one certificate: nothing is left for later
        return StatusChange(rec, None)

    def _set(
        self,
        tx: Transaction,
        rec: CertificateRecord,
        state: StatusState,
        reason: ReasonCode,
        invalidity_date: datetime.datetime | None,
        actor: str,
        now: datetime.datetime,
        more: Mapping[str, str] | None = None,
    ) -> StatusRecord:
        (status,) = self._set_many(tx, [rec], state, reason, invalidity_date, actor, now, more=more)
        return status

    def _set_many(
        self,
        tx: Transaction,
        recs: Sequence[CertificateRecord],
        state: StatusState,
        reason: ReasonCode,
        invalidity_date: datetime.datetime | None,
        actor: str,
        now: datetime.datetime,
        cause: int | None = None,
        more: Mapping[str, str] | None = None,
        after: list[AfterCommit] | None = None,
    ) -> list[StatusRecord]:
        """Give each of ``recs`` the status, with its own event (and log entry), its
        issuer's CRL marked stale and its OCSP response replaced, in ``tx``; what the
        listeners leave for after the commit is added to ``after``."""
        if not recs:
            return []
        statuses = [
            StatusRecord(
                serial=rec.serial,
                issuer_id=rec.issuer_id,
                state=state,
                revoked_at=now,
                reason=int(reason),
                invalidity_date=invalidity_date,
                changed_at=now,
            )
            for rec in recs
        ]
        tx.put_statuses(statuses)
        for issuer_id in dict.fromkeys(rec.issuer_id for rec in recs):
            tx.mark_crl_stale(issuer_id)
        details: dict[str, str] = {"reason": reason.rfc_name}
        if invalidity_date is not None:
            details["invalidity_date"] = invalidity_date.isoformat()
        if cause is not None:
            details["cascaded_from"] = format(cause, "x")
        details.update(more or {})
        kind = (
            EventType.CERTIFICATE_REVOKED
            if state is StatusState.REVOKED
            else EventType.CERTIFICATE_SUSPENDED
        )
        tx.append_events(
            [Event.about(kind, rec, actor=actor, at=now, details=details) for rec in recs]
        )
        for listener in self.listeners:
            work = listener(tx, list(zip(recs, statuses, strict=True)))
            if work is not None:
                assert after is not None, "a change of many certificates takes an after list"
                after.append(work)
        return statuses

    def status_of(self, serial: int) -> tuple[CertificateRecord | None, StatusRecord | None]:
        with self.ca.store.transaction() as tx:
            return tx.get_certificate(serial), tx.get_status(serial)


def _others_in_force(
    tx: Transaction, rec: CertificateRecord, now: datetime.datetime
) -> list[CertificateRecord]:
    """The enterprise certificates of ``rec``'s USCC, other than ``rec``, still in force:
    not expired and not revoked (one on hold may be resumed, so it counts)."""
    assert rec.uscc is not None
    out = []
    for other in tx.certificates_of_class(rec.uscc, "enterprise"):
        if other.serial == rec.serial or other.not_after <= now:
            continue
        status = tx.get_status(other.serial)
        if status is None or status.state is StatusState.HOLD:
            out.append(other)
    return out
