"""Domain records and the storage interface the framework-free core works against.

The SQLAlchemy adapter (``ca/store.py``) implements :class:`Store`; the core never
imports SQLAlchemy. One :meth:`Store.transaction` is one database transaction: a
change and its event commit together or not at all.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ca.errors import Conflict, Forbidden, InvalidCode
from ca.names import marked, spelled_apart


@enum.unique
class ApplicationState(enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@enum.unique
class EventType(enum.Enum):
    """What the append-only event table records (each a later transparency-log entry)."""

    CA_INITIALIZED = "ca.initialized"
    APPLICATION_SUBMITTED = "application.submitted"
    APPLICATION_APPROVED = "application.approved"
    APPLICATION_REJECTED = "application.rejected"
    APPLICATION_WITHDRAWN = "application.withdrawn"
    """An RA officer withdrew an approval before the applicant enrolled: the application
    reads as rejected, and its live codes were withdrawn in the same transaction."""
    CODE_REISSUED = "application.code_reissued"
    """An RA officer gave an approved application a new enrollment code (the last one was
    lost or expired); its unused codes stopped working in the same transaction."""
    OPERATOR_AUTHORIZED = "operator.authorized"
    CERTIFICATE_ISSUED = "certificate.issued"
    CERTIFICATE_RENEWED = "certificate.renewed"
    CERTIFICATE_REVOKED = "certificate.revoked"
    CERTIFICATE_SUSPENDED = "certificate.suspended"
    CERTIFICATE_RESUMED = "certificate.resumed"
    CUSTODY_ESTABLISHED = "custody.established"
    """The root and seal KEKs were split among the custodians (public record in details)."""
    CUSTODY_RESHARED = "custody.reshared"
    """M custodians re-shared both KEKs to a new custody set (``eport ca reshare``)."""
    CEREMONY_STARTED = "ceremony.started"
    CEREMONY_JOINED = "ceremony.joined"
    CEREMONY_COMPLETED = "ceremony.completed"
    """A quorum operation ran (unseal or a root operation), with the custodians' identities."""


@dataclass(frozen=True)
class Application:
    """A request to be certified, with the data the RA vets."""

    id: str
    subject_class: str
    """``enterprise``, ``operator``, ``agency`` or ``service``."""
    uscc: str | None
    vetted: Mapping[str, str]
    """The subject data the certificate is built from (legal name, operator id, …)."""
    state: ApplicationState
    created_at: datetime.datetime
    applicant: str
    """Who applied: ``anonymous`` for a public application, else a certificate identity."""
    decided_by: str | None = None
    decided_at: datetime.datetime | None = None
    reason: str | None = None


@dataclass(frozen=True)
class EnrollmentCode:
    """A one-time code, stored only as its SHA-256 hash."""

    code_hash: str
    application_id: str
    profiles: tuple[str, ...]
    expires_at: datetime.datetime
    used_at: datetime.datetime | None = None
    withdrawn_at: datetime.datetime | None = None
    """When this code was withdrawn unused: a newer code of the application replaced it,
    its approval was withdrawn, or (an operator's) its enterprise ceased operation."""


KEY_CERTIFIED = "this public key is already certified; generate a new key"
"""The refusal of a key some certificate holds: one key, one holder."""
CODE_USED = (
    "this enrollment code was already used: running the same eport enroll again (its key "
    "file kept) gets that certificate again; for another, renew it (eport renew) or apply "
    "again"
)
CODE_WITHDRAWN = (
    "this enrollment code was withdrawn: a newer code replaced it (use the one given last), "
    "its approval was withdrawn (eport application show APP_ID says why), "
    "or its enterprise ceased operation or lost its last certificate in force (it "
    "authorizes the operator again, eport operator add, once it holds one)"
)


CODE_REFUSALS = {
    "used": CODE_USED,
    "withdrawn": CODE_WITHDRAWN,
    "expired": "this enrollment code has expired; an RA officer can give the application "
    "a new one (eport ra new-code APP_ID)",
}


OPERATOR_CODE_EXPIRED = (
    "this enrollment code has expired; the enterprise's legal person authorizes the "
    "operator id again for a new one (eport operator add)"
)


def code_state(code: EnrollmentCode, now: datetime.datetime) -> str:
    """``used``, ``withdrawn``, ``expired`` or ``live``: what redeeming ``code`` would meet."""
    if code.used_at is not None:
        return "used"
    if code.withdrawn_at is not None:
        return "withdrawn"
    return "expired" if code.expires_at <= now else "live"


def code_refusal(code: EnrollmentCode | None, now: datetime.datetime) -> InvalidCode | None:
    """Why ``code`` cannot be redeemed at ``now``; None when it can."""
    if code is None:
        return InvalidCode(
            "unknown enrollment code: check it against the one the RA officer gave you "
            "(or, for an operator, its enterprise)"
        )
    state = code_state(code, now)
    if state == "expired" and "operator" in code.profiles:
        # an operator's code comes from its enterprise, not from an RA officer (who is
        # refused: eport ra new-code of an operator application is a 403)
        return InvalidCode(OPERATOR_CODE_EXPIRED)
    return None if state == "live" else InvalidCode(CODE_REFUSALS[state])


@dataclass(frozen=True)
class CertificateRecord:
    serial: int
    issuer_id: str
    profile: str
    application_id: str | None
    uscc: str | None
    subject: str
    spki_sha256: str
    cert_sha256: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    der: bytes = field(repr=False)
    created_at: datetime.datetime | None = None

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")


@dataclass(frozen=True)
class Event:
    """One append-only event; written in the transaction of the change it records."""

    type: EventType
    at: datetime.datetime
    actor: str
    uscc: str | None = None
    subject: str | None = None
    profile: str | None = None
    issuer: str | None = None
    serial: int | None = None
    cert_sha256: str | None = None
    application_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None

    @classmethod
    def about(
        cls,
        type: EventType,
        rec: CertificateRecord,
        *,
        actor: str,
        at: datetime.datetime,
        details: Mapping[str, Any] | None = None,
    ) -> Event:
        """An event about certificate ``rec``, named as the record names it."""
        return cls(
            type=type,
            at=at,
            actor=actor,
            uscc=rec.uscc,
            subject=rec.subject,
            profile=rec.profile,
            issuer=rec.issuer_id,
            serial=rec.serial,
            cert_sha256=rec.cert_sha256,
            application_id=rec.application_id,
            details=details or {},
        )


@enum.unique
class StatusState(enum.Enum):
    REVOKED = "revoked"
    HOLD = "hold"
    """certificateHold (RFC 5280 §5.3.1): suspended, e.g. a lost key; may be resumed."""


@dataclass(frozen=True)
class StatusRecord:
    """A certificate that is not good: revoked for good, or on hold."""

    serial: int
    issuer_id: str
    state: StatusState
    revoked_at: datetime.datetime
    reason: int | None
    """RFC 5280 §5.3.1 CRLReason code (6, certificateHold, for a hold)."""
    invalidity_date: datetime.datetime | None
    changed_at: datetime.datetime


class Transaction(Protocol):
    def add_application(self, app: Application) -> None: ...

    def get_application(self, app_id: str, *, for_update: bool = False) -> Application | None: ...

    def set_application_state(
        self,
        app_id: str,
        expected: ApplicationState,
        new: ApplicationState,
        decided_by: str,
        at: datetime.datetime,
        reason: str | None,
    ) -> bool:
        """Compare-and-set the state; False if it was no longer ``expected``."""
        ...

    def applications_of(self, uscc: str, subject_class: str) -> list[Application]:
        """The enterprise's applications of one subject class, oldest first."""
        ...

    def operator_applications(self, uscc: str, operator_id: str) -> list[Application]:
        """The enterprise's authorizations of one operator id, oldest first."""
        ...

    def list_applications(
        self, state: ApplicationState | None, limit: int, after: int = -1, offset: int = 0
    ) -> list[tuple[int, Application]]:
        """Applications (of ``state``, or all) whose listing key is above ``after``, in key
        order, each with its key; ``offset`` rows skipped first (older clients' paging).
        The key only grows in commit order, so paging by it skips and repeats nothing."""
        ...

    def add_code(self, code: EnrollmentCode) -> None: ...

    def redeem_code(self, code_hash: str, now: datetime.datetime) -> EnrollmentCode | None:
        """Mark the code used if it is unused and unexpired (one atomic UPDATE)."""
        ...

    def find_code(self, code_hash: str) -> EnrollmentCode | None: ...

    def hold_issuance(self) -> None:
        """Wait for, and hold to the end of this transaction, the lock each issuance takes
        first, before changing codes or certificates an issuance in flight may write: the
        change then orders itself wholly before or after that issuance (a row lock taken
        the other way round deadlocks with it)."""
        ...

    def holds_events(self) -> bool:
        """Whether the database holds any event (of this CA, or of another one)."""
        ...

    def last_codes(self, app_ids: list[str]) -> dict[str, EnrollmentCode]:
        """The code given last (latest expiry) to each of the applications that has one."""
        ...

    def withdraw_codes(self, app_ids: Sequence[str], now: datetime.datetime) -> int:
        """Withdraw the live codes (unused, unexpired, not withdrawn) of the applications at
        ``now``: no redemption passes one afterwards. How many there were."""
        ...

    def withdraw_codes_of(
        self,
        uscc: str,
        subject_class: str,
        now: datetime.datetime,
        applicant: str | None = None,
    ) -> int:
        """:meth:`withdraw_codes` of every application of the enterprise ``uscc`` of one
        subject class (by one statement, however many there are); only those
        ``applicant`` made (an actor: ``enterprise:<serial>``), if given."""
        ...

    def certificates_of_application(self, app_id: str) -> list[CertificateRecord]: ...

    def operators_not_enrolled(self, uscc: str, after: str, limit: int) -> list[Application]: ...

    def add_certificate(self, rec: CertificateRecord) -> None: ...

    def get_certificate(self, serial: int) -> CertificateRecord | None: ...

    def certificates(
        self, *, uscc: str | None, limit: int, after: int = -1, offset: int = 0
    ) -> list[tuple[int, CertificateRecord]]:
        """Certificates (of the enterprise ``uscc``, or all) as :meth:`list_applications`."""
        ...

    def key_holders(self, spki_sha256: str) -> list[CertificateRecord]: ...

    def renewed_from(self, serial: int) -> int | None:
        """The serial of the certificate whose holder renewed into certificate ``serial``
        (its ``certificate.renewed`` event's ``previous_serial``); None if it was not
        issued by a renewal."""
        ...

    def append_event(self, event: Event) -> int: ...

    def append_events(self, events: Sequence[Event]) -> list[int]:
        """Append ``events`` in order, as :meth:`append_event` would one by one (each its
        own row and log entry), in fewer statements; their ids."""
        ...

    def get_status(self, serial: int, *, for_update: bool = False) -> StatusRecord | None: ...

    def get_statuses(
        self, serials: Sequence[int], *, for_update: bool = False
    ) -> dict[int, StatusRecord]:
        """The status rows of those of ``serials`` that have one, by serial."""
        ...

    def put_status(self, rec: StatusRecord) -> None:
        """Insert or replace the status row of ``rec.serial``."""
        ...

    def put_statuses(self, recs: Sequence[StatusRecord]) -> None:
        """Insert or replace the status rows of ``recs``."""
        ...

    def delete_status(self, serial: int) -> None: ...

    def mark_crl_stale(self, issuer_id: str) -> None: ...

    def certificates_of_class(self, uscc: str, profile: str) -> list[CertificateRecord]: ...

    def staff_in_force(
        self, profiles: Sequence[str], now: datetime.datetime
    ) -> list[CertificateRecord]:
        """The certificates of ``profiles`` with no USCC (a member agency's staff) that can
        sign at ``now``: not expired, not revoked, not on hold."""
        ...

    def named_in_force(
        self,
        subject: str,
        profiles: Sequence[str],
        now: datetime.datetime,
        void_issuers: Collection[str] = (),
    ) -> CertificateRecord | None:
        """A certificate of ``profiles`` with no USCC (a member agency's staff) whose
        subject is ``subject`` (:func:`ca.names.dn_string`) as a relying party compares
        names (:func:`ca.names.dn_key`: case, width, compatibility forms and blanks set
        aside), not expired and not revoked (one on hold counts), or None. Certificates
        of ``void_issuers`` (generations revoked on the root CRL) are not in force."""
        ...

    def credential_in_force(
        self,
        uscc: str,
        profiles: Sequence[str],
        now: datetime.datetime,
        besides: int | None = None,
        void_issuers: Collection[str] = (),
    ) -> tuple[CertificateRecord, bool] | None:
        """The certificate of ``profiles`` of the enterprise ``uscc`` in force at ``now``
        that lasts longest (of two ending in the same second, the later issued), other
        than serial ``besides`` (a renewal's signer), and whether it is on hold (it
        counts: a hold may be lifted); None if there is none. In force: not expired, not
        revoked, not issued by one of ``void_issuers`` (revoked on the root CRL)."""
        ...


@dataclass(frozen=True, slots=True)
class IssuanceWrite:
    """What one issuance stores, all or nothing: the certificate, its event, and (for an
    enrollment) the redemption of the one-time code, at ``now``."""

    record: CertificateRecord
    event: Event
    code_hash: str | None = None
    now: datetime.datetime | None = None
    signed_by: int | None = None
    """The serial of the certificate whose signed request asked for this issuance (a
    renewal): checked good when the request came, and again where it is stored, so that
    a revocation or hold that commits first refuses it (:func:`signer_refusal`)."""
    void_issuers: tuple[str, ...] = ()
    """Issuing CA generations revoked on the root CRL: a certificate of theirs is not in
    force for :attr:`sole_credential` (its enterprise is vetted and enrolled anew)."""
    sole_credential: tuple[str, ...] = ()
    """For an enrollment or renewal of an enterprise's legal-person credential: the
    profiles of that credential. The record's USCC may hold one such certificate in force
    (not expired at ``now``, not revoked; one on hold counts), besides a renewal's signer
    (``signed_by``: the credential it replaces), so the issuance is refused where it is
    stored, with nothing of it stored, if one is there (:func:`credential_refusal`);
    concurrent enrollments and renewals are decided there one at a time."""
    sole_name: tuple[str, ...] = ()
    """For an enrollment of a member agency's staff (an officer, an auditor): the profile
    whose holders are one person per name in an agency (the one-name rule: a second holder
    of the record's subject, compared as RFC 5280 §7.1 compares names, would be the same
    user at every e-port service). A certificate of that name in force (not expired, not
    revoked; one on hold counts) refuses the issuance where it is stored, with nothing of
    it stored (:func:`same_name_refusal`): two approvals of one name made before either
    enrolled are decided there, one at a time."""
    enterprise_not_held: tuple[str, ...] = ()
    """For an enrollment of an enterprise's operator: the profiles of the enterprise's
    legal-person credential. One of the record's USCC on hold refuses the issuance where it
    is stored, the code left unused (:func:`held_enterprise_refusal`): an enrollment
    checked before a hold committed was issued after it (race probe, session 27)."""


def refuse_held_enterprise(
    tx: Transaction,
    uscc: str,
    profiles: Sequence[str],
    now: datetime.datetime,
    void_issuers: Collection[str] = (),
) -> None:
    """:func:`held_enterprise_refusal` when the legal-person credential of ``uscc`` in force
    that lasts longest (:meth:`Transaction.credential_in_force`) is on hold: the rule the
    check before signing and the session path apply (the group writer applies it in SQL,
    ``ca.groupwrite._CREDENTIAL_IN_FORCE``)."""
    found = tx.credential_in_force(uscc, profiles, now, void_issuers=void_issuers)
    if found is not None and found[1]:
        raise held_enterprise_refusal(uscc, found[0].serial_hex)


def held_enterprise_refusal(uscc: str, serial_hex: str) -> Conflict:
    """The refusal of an operator's enrollment while its enterprise's legal-person
    certificate ``serial_hex`` is on hold: a hold is the lost or stolen key's first answer,
    and codes that key gave enrolled operators meanwhile (business rules probe, session
    26). The code stays unused: it enrolls once the hold is lifted (a revocation withdraws
    it)."""
    return Conflict(
        f"enterprise {uscc}'s legal-person certificate {serial_hex} is on hold: its "
        "operators' enrollment codes enroll once an RA officer lifts the hold "
        f"(eport resume --serial {serial_hex}); this code stays unused",
        serial=serial_hex,
    )


def signer_refusal(serial: int, state: str) -> Forbidden:
    """The refusal of a signed request (a renewal, an RA decision, an operator's
    authorization) whose signing certificate became ``state`` (a :class:`StatusState`
    value) after the request was checked."""
    became = "revoked" if state == StatusState.REVOKED.value else "put on hold"
    return Forbidden(
        f"the certificate {serial:x} that signed this request was {became} meanwhile; "
        "nothing was changed"
    )


def credential_refusal(
    uscc: str,
    serial_hex: str,
    not_after: datetime.datetime,
    *,
    on_hold: bool = False,
    renewing: int | None = None,
    held_renews: bool | None = None,
) -> Conflict:
    """The refusal of a second legal-person credential for the enterprise ``uscc``: its
    certificate ``serial_hex`` is in force until ``not_after`` (``on_hold``: suspended,
    which may be lifted). DESIGN.md, Domain notes: an enterprise holds one. The detail
    says what to do instead; the problem document carries the serial as ``serial``.
    ``renewing``: the serial of the credential whose renewal is refused, as the other
    one is in force beside it."""
    held = " (on hold)" if on_hold else ""
    if renewing is not None and held_renews is not None:
        # which of the two renewed the other is known (the log's certificate.renewed
        # events): say what to do, not both cases (new user walk-through, session 26)
        signer = format(renewing, "x")
        until = f"{not_after:%Y-%m-%dT%H:%M:%SZ}"
        if held_renews:
            return Conflict(
                f"certificate {signer} was renewed already: enterprise {uscc} holds its "
                f"renewal {serial_hex}{held}, in force until {until}, and an enterprise holds "
                f"one legal-person credential. Use {serial_hex} (eport renew --cert with its "
                f"cert.pem once {signer} is revoked: eport revoke --serial {signer} --reason "
                "superseded)",
                serial=serial_hex,
            )
        return Conflict(
            f"certificate {signer} is the renewal of {serial_hex}{held}, still in force until "
            f"{until} beside it, and an enterprise holds one legal-person credential: revoke "
            f"{serial_hex} first (eport revoke --serial {serial_hex} --reason superseded), "
            f"then renew {signer}",
            serial=serial_hex,
        )
    if renewing is not None:
        # Either of the two renews only once the other is revoked, so the hint names the
        # revocation in both cases: "renew with it" alone was refused the same way.
        signer = format(renewing, "x")
        return Conflict(
            f"enterprise {uscc} holds legal-person certificate {serial_hex}{held} beside "
            f"{signer}, in force until {not_after:%Y-%m-%dT%H:%M:%SZ}: a renewal replaces an "
            "enterprise's one credential, so only a certificate that is the only one in "
            f"force renews; if {serial_hex} is {signer}'s renewal, use it: it renews once "
            f"{signer} is revoked (eport revoke --serial {signer} --reason superseded, then "
            f"eport renew --cert ITS_CERT), else revoke it first (eport revoke --serial "
            f"{serial_hex} --reason superseded)",
            serial=serial_hex,
        )
    # A certificate on hold signs nothing, so its holder cannot renew it until an RA
    # officer lifts the hold (docs/status.md: an enterprise never resumes its own).
    renews = (
        f"an RA officer lifts its hold (eport resume --serial {serial_hex}) and its holder "
        "renews it for a new key (eport renew)"
        if on_hold
        else "its holder renews it for a new key (eport renew)"
    )
    return Conflict(
        f"enterprise {uscc} already holds legal-person certificate {serial_hex}{held}, in "
        f"force until {not_after:%Y-%m-%dT%H:%M:%SZ} (an enterprise holds one): {renews}, "
        f"or it is revoked first (eport revoke --serial {serial_hex} --reason superseded; "
        "a lost key: an RA officer revokes it, --reason keyCompromise)",
        serial=serial_hex,
    )


def same_name_refusal(
    subject: str, held_subject: str, serial_hex: str, profile: str, not_after: datetime.datetime
) -> Conflict:
    """The refusal of a member agency's second staff certificate of one name (the
    one-name rule): ``held_subject`` holds ``serial_hex`` (``profile``), in force until
    ``not_after``, and reads as ``subject``. The detail shows the holder's name as
    certified, its look-alike characters by code point; the problem document carries the
    serial as ``certificate``."""
    apart = "".join(
        f"; {mine!r} is the same name as {marked(theirs, mine)!r}, as certified"
        for mine, theirs in spelled_apart(subject, held_subject)[:1]
    )
    return Conflict(
        f"{held_subject} already holds certificate {serial_hex} ({profile}, in force until "
        f"{not_after:%Y-%m-%dT%H:%M:%SZ}){apart}: every e-port service would take a second "
        "one of that name for the same person (names are compared as RFC 5280 §7.1 says: "
        "case, width, compatibility forms and blanks set aside). The same person renews it "
        "(eport renew), or it is revoked first; another person applies under a name that "
        "tells them apart",
        certificate=serial_hex,
    )


class Store(Protocol):
    def transaction(self) -> AbstractContextManager[Transaction]: ...

    def commit_issuance(self, item: IssuanceWrite) -> int:
        """Store ``item`` durably in one transaction (which may be shared with other
        issuances: group commit); the event's id. Raises :class:`~ca.errors.InvalidCode`
        if the code was redeemed or expired meanwhile, :class:`~ca.errors.Conflict` on a
        serial collision; then nothing of ``item`` is stored."""
        ...

    def reading(self) -> AbstractContextManager[Transaction]:
        """A transaction that only reads: it never waits for (or holds) the write lock."""
        ...

    def enrollment_facts(
        self, code_hash: str, spki_sha256: str
    ) -> tuple[EnrollmentCode | None, Application | None, CertificateRecord | None]:
        """Before signing an enrollment (reads only, never the write lock): the code, its
        application, and a certificate already issued for the key, if any. Advisory:
        the redemption that commits with the certificate decides."""
        ...

    def remember(self, jti: str, expires_at: datetime.datetime) -> bool: ...
