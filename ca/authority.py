"""The joint CA's core: applications, RA vetting, enrollment codes, issuance, renewal.

Framework-free: storage (:class:`~ca.records.Store`), clock and randomness come in.
Every state change appends its :class:`~ca.records.Event` in the same transaction.
Flows follow DESIGN.md §Key flows 2 (enrollment); CSRs are RFC 2986 PKCS#10.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import hashlib
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca.errors import (
    BadCSR,
    BadRequest,
    Conflict,
    EPortError,
    Forbidden,
    IssuerExpired,
    IssuerRevoked,
    IssuerUnavailable,
    NotDurable,
    NotFound,
    ProfileNotAllowed,
    Unauthenticated,
    UnknownProfile,
)
from ca.hierarchy import generation_base
from ca.issuance import MIN_ISSUED_VALIDITY, CertificateFactory, IssuingCA, spki_sha256
from ca.names import code_point, hidden_character, member_agency_of
from ca.names import dn_string as dn_string  # re-exported for older callers
from ca.policy import PRINTABLE_STRING, Policies, Profile, SubjectClass
from ca.records import (
    KEY_CERTIFIED,
    Application,
    ApplicationState,
    CertificateRecord,
    EnrollmentCode,
    Event,
    EventType,
    IssuanceWrite,
    StatusState,
    Store,
    Transaction,
    code_refusal,
    code_state,
    credential_refusal,
    refuse_held_enterprise,
    same_name_refusal,
    signer_refusal,
)
from ca.signedreq import SignedRequest
from ca.uscc import FULL_WIDTH_TO_ASCII, USCC

if TYPE_CHECKING:
    from ca.ocsp import Revoked

Clock = Callable[[], datetime.datetime]
RandomBytes = Callable[[int], bytes]

_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
MAX_NAME = 200
UB_NAME = 64
"""X.520 upper bound of organizationName and commonName, in characters (X.680 counts a
UTF8String's size in characters, not UTF-8 bytes): a Chinese company name may have 64."""
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?"
)


def _a_label_ok(label: str) -> bool:
    """A label is not an A-label (``xn--``), or its Punycode decodes to one that encodes
    back to it (RFC 5890 §2.3.2.1): ``xn--zz`` is refused by certificate linters."""
    if not label.startswith("xn--"):
        return True
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        return False
    return (
        bool(decoded) and not decoded.isascii() and decoded.encode("punycode").decode() == label[4:]
    )


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


_CODE_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
"""Crockford base32 reads the letters it leaves out as the digits they look like: a code
typed from paper with ``O`` for ``0`` is the same code."""


def normalize_code(code: str) -> str:
    return code.strip().upper().replace("-", "").replace(" ", "").translate(_CODE_LOOKALIKES)


def hash_code(code: str) -> str:
    """Codes carry 160 random bits, so a plain SHA-256 is a safe one-way store."""
    return hashlib.sha256(normalize_code(code).encode()).hexdigest()


def new_code(random_bytes: RandomBytes) -> str:
    """A 160-bit one-time code, 32 Crockford base32 characters in groups of four."""
    n = int.from_bytes(random_bytes(20), "big")
    chars = []
    for _ in range(32):
        n, r = divmod(n, 32)
        chars.append(_CODE_ALPHABET[r])
    s = "".join(chars)
    return "-".join(s[i : i + 4] for i in range(0, 32, 4))


def parse_csr(data: str | bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request from PEM or DER whose self-signature verifies (proof of possession)."""
    raw = data.encode() if isinstance(data, str) else data
    pem = raw.lstrip().startswith(b"-----BEGIN")
    if pem:
        # The PEM reader takes the first block and ignores what follows it (a second
        # request, a certificate, text), as DER's does not: one request, alone.
        end = raw.find(b"-----END ")
        close = raw.find(b"-----", end + 9) if end >= 0 else -1
        if close >= 0 and raw[close + 5 :].strip():
            raise BadCSR(
                "the request has more after its PEM block: send one CERTIFICATE REQUEST alone"
            )
    try:
        csr = x509.load_pem_x509_csr(raw) if pem else x509.load_der_x509_csr(raw)
    except x509.InvalidVersion as exc:  # a 500 with a traceback, for anyone (key-type probe)
        raise BadCSR(
            f"the request's version is {exc.parsed_version}: PKCS#10 knows only v1, 0 "
            "(RFC 2986 §4.1)"
        ) from None
    except ValueError:
        # cryptography's text names its parser's internals ("ParseError { kind: ShortData
        # { needed: 92 } }"); the client needs to know what was expected
        form = "PEM 'CERTIFICATE REQUEST'" if pem else "DER, or PEM"
        raise BadCSR(
            f"not a PKCS#10 certificate request (RFC 2986; {form}): it cannot be read"
        ) from None
    spki = csr.public_key_algorithm_oid.dotted_string  # type: ignore[attr-defined]
    if spki not in _CERTIFIED_KEY_ALGORITHMS:
        # cryptography reads an id-RSASSA-PSS key as an RSA key, and the certificate
        # then said rsaEncryption: not the key the holder has (OpenSSL refuses to pair
        # them), with its restriction to PSS dropped (key-type probe, F1)
        raise BadCSR(
            f"the request's key is of algorithm {spki}: the CA certifies rsaEncryption, "
            "id-ecPublicKey (P-256, P-384) and Ed25519 keys (RFC 5280 §4.1.2.7)"
        )
    try:
        hashed = csr.signature_hash_algorithm
    except Exception:  # an algorithm cryptography does not know (MD5 with some builds)
        hashed = None
    if hashed is not None and hashed.name in ("sha1", "md5"):
        raise BadCSR(
            f"the request is signed with {hashed.name.upper()}, which is not accepted: "
            "sign it with SHA-256 or stronger"
        )
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported key or algorithm inside the CSR
        raise BadCSR(f"cannot check the request's signature: {exc}") from None
    if not valid:
        raise BadCSR("the request's signature does not verify (no proof of possession)")
    return csr


_CERTIFIED_KEY_ALGORITHMS = frozenset({"1.2.840.113549.1.1.1", "1.2.840.10045.2.1", "1.3.101.112"})
"""rsaEncryption, id-ecPublicKey and id-Ed25519 (RFC 8017, 5480, 8410)."""


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


@dataclass(frozen=True)
class Caller:
    """Who made a signed request, as the joint CA sees it."""

    profile: Profile
    serial: int
    subject: str
    uscc: str | None
    agency_id: str | None
    certificate: x509.Certificate

    @property
    def actor(self) -> str:
        return actor_of(self.profile.name, self.serial)

    @property
    def role(self) -> SubjectClass:
        return self.profile.subject_class


def actor_of(profile: str, serial: int) -> str:
    """How events and applications name the holder of a certificate who acted (signed a
    request): ``<profile>:<serial in hex>``, as :attr:`Caller.actor`."""
    return f"{profile}:{serial:x}"


@dataclass(frozen=True)
class Issued:
    record: CertificateRecord
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    replayed: bool = False
    """Issued earlier, by the same code (or the same signer's renewal) for the same key:
    an enrollment or renewal whose answer was lost is answered again
    (:meth:`JointCA.enroll`, :meth:`JointCA.renew`); nothing new was issued or written."""

    def chain_pem(self) -> str:
        return "".join(map(_pem, self.chain))


@functools.lru_cache(maxsize=64)
def _pem(cert: x509.Certificate) -> str:
    """The PEM of a CA certificate (a chain's members repeat in every answer)."""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


OFFICER_NOTICE = datetime.timedelta(days=30)
"""How long before a member's last RA officer certificate ends the server warns."""
_ONE_NAME_CLASSES = frozenset({SubjectClass.AGENCY, SubjectClass.AUDITOR})
"""A member agency's staff: one person per name in an agency (the one-name rule)."""


@dataclass(frozen=True)
class CodeGrant:
    application: Application
    code: str
    expires_at: datetime.datetime
    profiles: tuple[str, ...]
    withdrawn: int = 0
    """How many live codes were withdrawn for this one (a new code for the application,
    or an operator id authorized again)."""


class JointCA:
    """The RA workflow and issuance of the joint CA."""

    def __init__(
        self,
        *,
        policies: Policies,
        issuers: Mapping[str, IssuingCA],
        root: x509.Certificate,
        store: Store,
        factory: CertificateFactory,
        clock: Clock = utcnow,
        random_bytes: RandomBytes = os.urandom,
        code_ttl: datetime.timedelta = datetime.timedelta(days=7),
        application_ttl: datetime.timedelta = datetime.timedelta(days=90),
        revoked_issuers: Mapping[str, Revoked] | None = None,
        unavailable_issuers: Mapping[str, str] | None = None,
    ) -> None:
        self.policies = policies
        self.issuers = dict(issuers)
        self.revoked_issuers = dict(revoked_issuers or {})
        """Issuing CA id → its revocation on the root's CRL: nothing is issued from one, even
        if ``issuers/active.json`` names it (edited by hand; from a database someone
        changed, a host takes it only signed by the root: :mod:`ca.active_signature`)."""
        self.unavailable_issuers = dict(unavailable_issuers or {})
        """Issuer id → the generation it issues from, which this host does not have."""
        self.root = root
        self.store = store
        self.factory = factory
        self.clock = clock
        self.random_bytes = random_bytes
        self.code_ttl = code_ttl
        self.application_ttl = application_ttl
        """How long a pending application may wait for its approval (EPORT_APPLICATION_DAYS)."""

    # -- who is calling ---------------------------------------------------------------------

    def caller(self, req: SignedRequest) -> Caller:
        """Map a verified signed request to a role by the certificate's policy OID."""
        cert = req.certificate
        try:
            policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
        except x509.ExtensionNotFound:
            raise Forbidden("the certificate names no e-port profile") from None
        profile = None
        for info in policies:
            profile = self.policies.profile_for_oid(info.policy_identifier)
            if profile is not None:
                break
        if profile is None or profile.ca:
            raise Forbidden("the certificate's profile gives no role at this CA")
        issuer = self.issuers.get(profile.issuer)
        if issuer is None or cert.issuer != issuer.certificate.subject:
            raise Forbidden("the certificate was not issued by its profile's issuing CA")
        org_id = _attr(cert.subject, NameOID.ORGANIZATION_IDENTIFIER) or ""
        uscc = org_id[6:] if org_id.startswith("NTRCN-") else None
        agency = member_agency_of(org_id)
        with self.store.reading() as tx:
            status = tx.get_status(cert.serial_number)
            record = tx.get_certificate(cert.serial_number) if status is None else None
        if status is not None:
            state = "revoked" if status.state is StatusState.REVOKED else "on hold"
            who = {
                SubjectClass.OPERATOR: "its enterprise or an RA officer",
                SubjectClass.AGENCY: "another RA officer of its agency",
                SubjectClass.AUDITOR: "an RA officer of its agency",
            }.get(profile.subject_class, "an RA officer")
            lift = (
                f": {who} lifts the hold, eport resume --serial {cert.serial_number:x}"
                if status.state is StatusState.HOLD
                else ""
            )
            raise Unauthenticated(
                f"the certificate {cert.serial_number:x} is {state}; it cannot sign requests{lift}"
            )
        # Allow-list, as the token service's status interface: a certificate this CA has no
        # record of (signed outside issuance, or lost with a database restored from before
        # it) signs nothing here, even though it chains to a live issuing CA.
        der = cert.public_bytes(serialization.Encoding.DER)
        if record is None or record.cert_sha256 != hashlib.sha256(der).hexdigest():
            raise Unauthenticated(
                f"the certificate {cert.serial_number:x} is not one this CA issued (it has "
                "no record of it); it cannot sign requests"
            )
        is_agency = profile.subject_class in (SubjectClass.AGENCY, SubjectClass.AUDITOR)
        if is_agency and (agency is None or self.policies.members.get(agency) is None):
            raise Forbidden(f"agency {agency!r} is not a member of the joint CA")
        return Caller(
            profile=profile,
            serial=cert.serial_number,
            subject=dn_string(cert.subject),
            uscc=uscc,
            agency_id=agency,
            certificate=cert,
        )

    def _require(self, caller: Caller, *roles: SubjectClass) -> None:
        if caller.role not in roles:
            need = " or ".join(_with_article(r.value) for r in roles)
            raise Forbidden(f"this action needs {need} certificate, not {caller.role.value}")

    # -- applications -----------------------------------------------------------------------

    def apply(
        self, subject_class: str, data: Mapping[str, object], applicant: str = "anonymous"
    ) -> Application:
        """Record an application; the RA vets it before any code is given."""
        vetted, uscc = self._vet_input(subject_class, data)
        now = self.clock()
        app = Application(
            id="app_" + base64.b32encode(self.random_bytes(10)).decode().lower(),
            subject_class=subject_class,
            uscc=uscc,
            vetted=vetted,
            state=ApplicationState.PENDING,
            created_at=now,
            applicant=applicant,
        )
        with self.store.transaction() as tx:
            tx.add_application(app)
            tx.append_event(
                Event(
                    type=EventType.APPLICATION_SUBMITTED,
                    at=now,
                    actor=applicant,
                    uscc=uscc,
                    subject=_display_name(vetted),
                    application_id=app.id,
                    details={"subject_class": subject_class},
                )
            )
        return app

    def _vet_input(
        self, subject_class: str, data: Mapping[str, object]
    ) -> tuple[dict[str, str], str | None]:
        """The vetted fields of an application of ``subject_class``. A member the class does
        not take is refused, not dropped: an agency's application "with" a USCC, or a
        mistyped field name, would otherwise be stored as if it said nothing."""
        taken = _APPLICATION_FIELDS.get(subject_class)
        if taken is not None:
            unknown = sorted(set(data) - taken)
            if unknown:
                named = ", ".join(repr(k[:40]) for k in unknown[:5])
                raise BadRequest(
                    f"an application of class {subject_class} takes "
                    f"{', '.join(sorted(taken))}; not {named}"
                )
        strings: dict[str, str] = {}
        for k, v in data.items():  # JSON: a number or an object is not a name
            if not isinstance(v, str):
                raise BadRequest(f"{k[:40]!r} must be a string")
            strings[k] = v
        return self._vetted(subject_class, strings)

    def _vetted(
        self, subject_class: str, data: Mapping[str, str]
    ) -> tuple[dict[str, str], str | None]:
        def text(key: str, limit: int = MAX_NAME) -> str:
            what = _FIELD_WORDS.get(key, key)
            value = data.get(key)
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(f"{what} is required")
            return _clean(value, what, limit)

        if subject_class == SubjectClass.ENTERPRISE.value:
            if not str(data.get("uscc") or "").strip():
                raise BadRequest("the enterprise's USCC (uscc) is required")
            uscc = str(USCC.parse(str(data.get("uscc"))))
            return {"uscc": uscc, "legal_name": text("legal_name", UB_NAME)}, uscc
        if subject_class in (SubjectClass.AGENCY.value, SubjectClass.AUDITOR.value):
            member = self.policies.members.get(text("agency_id"))
            if member is None:
                raise BadRequest(f"{data.get('agency_id')!r} is not a member agency")
            return {
                "agency_id": member.id,
                "agency_name": member.name,
                "person_name": text("person_name", UB_NAME),
            }, None
        if subject_class == SubjectClass.SERVICE.value:
            member = self.policies.members.get(text("agency_id"))
            if member is None:
                raise BadRequest(f"{data.get('agency_id')!r} is not a member agency")
            host = text("service_host", 253).lower()
            if not _HOSTNAME.fullmatch(host):
                raise BadRequest(f"{host!r} is not a DNS host name (RFC 1123 letters, digits, '-')")
            if len(host) > UB_NAME:
                # the service-tls profile names the host in the subject's CN too, whose
                # X.520 bound is 64: a longer one passed here and failed every enrollment
                # with a 500 (enrollment probe, F1)
                raise BadRequest(
                    f"a service host name has at most {UB_NAME} characters (it is also the "
                    f"certificate's commonName, X.520 ub-common-name); {host[:40]!r}... has "
                    f"{len(host)}"
                )
            bad = next((label for label in host.split(".") if not _a_label_ok(label)), None)
            if bad is not None:
                raise BadRequest(
                    f"{bad!r} in {host!r} starts with 'xn--' but is not a valid IDNA A-label "
                    "(RFC 5890: its Punycode must decode)"
                )
            return {
                "agency_id": member.id,
                "agency_name": member.name,
                "service_host": host,
            }, None
        raise BadRequest(
            f"cannot apply for class {subject_class!r} (enterprise, agency, auditor or service; "
            "operators are authorized by their enterprise)"
        )

    def application(self, app_id: str) -> Application:
        """An application, for its applicant: holding its id (80 random bits, given only
        to the applicant and the RA) is what makes one the applicant."""
        with self.store.reading() as tx:
            app = tx.get_application(app_id) if len(app_id) <= 40 else None
        if app is None:
            raise NotFound(f"no application {app_id!r}")
        return app

    @property
    def _void(self) -> tuple[str, ...]:
        """The revoked generations (:attr:`revoked_issuers`): their certificates are in
        force for nobody (the one-credential rule, an operator id authorized again)."""
        return tuple(sorted(self.revoked_issuers))

    def list_applications(
        self,
        caller: Caller,
        state: ApplicationState | None,
        limit: int = 100,
        after: int = -1,
        offset: int = 0,
    ) -> list[tuple[int, Application, EnrollmentCode | None]]:
        """A page of applications for an officer, after the listing key ``after`` (see
        :meth:`Transaction.list_applications`): each with its key and its last code (None:
        never given one), so that an approved one whose code expired unused can be told
        from the rest."""
        self._require(caller, SubjectClass.AGENCY)
        with self.store.reading() as tx:
            apps = tx.list_applications(state, limit, after, offset)
            last = tx.last_codes([a.id for _, a in apps])
        return [(key, a, last.get(a.id)) for key, a in apps]

    def pending_until(self, app: Application) -> datetime.datetime | None:
        """When a pending application can no longer be approved (None: it is decided)."""
        if app.state is not ApplicationState.PENDING:
            return None
        return app.created_at + self.application_ttl

    def _refuse_stale(self, app: Application, now: datetime.datetime) -> None:
        """An application older than :attr:`application_ttl` is not approved: its vetting
        would rest on evidence of then (a register's extract, an agency's letter)."""
        until = self.pending_until(app)
        if until is not None and now >= until:
            days = self.application_ttl.days
            raise Conflict(
                f"application {app.id} was made on {app.created_at:%Y-%m-%d}, more than "
                f"{days} days ago, and is no longer approved: the applicant applies again "
                "(eport apply); an RA officer may still reject it"
            )

    def approve(
        self, caller: Caller, app_id: str, profiles: Sequence[str] | None = None
    ) -> CodeGrant:
        """Approve a pending application and give its one-time enrollment code."""
        self._require(caller, SubjectClass.AGENCY)
        return self._approve(app_id, profiles, caller.actor, caller, {"officer": caller.subject})

    def approve_at_ceremony(self, app_id: str, actor: str) -> CodeGrant:
        """Approval recorded as part of a key ceremony (the development set-up's officers)."""
        return self._approve(app_id, None, actor, None, {"ceremony": actor})

    def _approve(
        self,
        app_id: str,
        profiles: Sequence[str] | None,
        actor: str,
        caller: Caller | None,
        details: Mapping[str, str],
    ) -> CodeGrant:
        with self.store.transaction() as tx:
            return self._approve_in(tx, app_id, profiles, actor, caller, details)

    def approve_officer_by_quorum(self, tx: Transaction, app_id: str, ceremony: str) -> CodeGrant:
        """Approve, in an APPROVE-OFFICER ceremony's transaction, a member agency's RA
        officer: the way back for a member with no officer in force (all revoked, or
        expired), as only its own officers approve its staff."""
        app = tx.get_application(app_id)
        if app is None:
            raise NotFound(f"no application {app_id!r}")
        self.check_officer_application(tx, app)
        actor = f"ceremony:{ceremony}"
        return self._approve_in(tx, app_id, None, actor, None, {"ceremony": ceremony})

    def check_officer_application(self, tx: Transaction, app: Application) -> None:
        """What an APPROVE-OFFICER ceremony must hold, checked when it is opened and again
        at its completing join: the application is a pending officer's of a member with no
        RA officer in force (one that has any approves its own staff), and no officer of
        that member and name is in force (the one-name rule, said before custodians gather)."""
        if app.subject_class != SubjectClass.AGENCY.value:
            raise BadRequest(
                f"application {app.id} is for {_with_article(app.subject_class)} "
                "certificate; APPROVE-OFFICER approves only an RA officer of a member agency "
                "(eport apply --class agency)"
            )
        if app.state is not ApplicationState.PENDING:
            raise Conflict(f"application {app.id} is already {app.state.value}")
        member = str(app.vetted.get("agency_id"))
        now = self.clock()
        self._refuse_stale(app, now)
        ends = self._officers_last_end(tx, now).get(member)
        if ends is not None:
            raise Conflict(
                f"member agency {member} has an RA officer certificate in force (until "
                f"{ends:%Y-%m-%dT%H:%M:%SZ}): its own officers approve its staff "
                "(eport ra approve); APPROVE-OFFICER is for a member with none"
            )
        self._refuse_same_name(tx, app, now)

    def _approve_in(
        self,
        tx: Transaction,
        app_id: str,
        profiles: Sequence[str] | None,
        actor: str,
        caller: Caller | None,
        details: Mapping[str, str],
    ) -> CodeGrant:
        now = self.clock()
        app = self._locked_application(tx, app_id, caller)
        if caller is not None:
            signer_still_good(tx, caller)
        else:
            tx.hold_issuance()  # as an officer's approval: see _refuse_second_credential
        allowed = self._profiles_for(app, profiles)
        if app.state is ApplicationState.APPROVED:
            # The answer to the approval may have been lost with its code: say the way back,
            # unless it enrolled already (a new code is then refused: new user walk-through)
            issued = tx.certificates_of_application(app_id)
            if issued:
                raise Conflict(
                    f"application {app_id} is already approved, and certificate "
                    f"{issued[-1].serial_hex} was issued on it: it needs no new code (its "
                    "holder renews it, eport renew)"
                )
            raise Conflict(
                f"application {app_id} is already approved; if its enrollment code was lost, "
                f"an RA officer gives a new one (eport ra new-code {app_id})"
            )
        if app.state is not ApplicationState.PENDING:
            raise Conflict(f"application {app_id} is already {app.state.value}")
        self._refuse_stale(app, now)
        self._refuse_second_credential(tx, app, now)
        if not tx.set_application_state(
            app_id, ApplicationState.PENDING, ApplicationState.APPROVED, actor, now, None
        ):
            raise Conflict(f"application {app_id} was decided concurrently")
        app = dataclasses.replace(
            app, state=ApplicationState.APPROVED, decided_by=actor, decided_at=now
        )
        grant = self._grant_code(tx, app, allowed, now)
        tx.append_event(
            _application_event(
                EventType.APPLICATION_APPROVED,
                app,
                actor,
                now,
                {"profiles": list(allowed), **details},
            )
        )
        return grant

    def reject(self, caller: Caller, app_id: str, reason: str) -> Application:
        """Reject a pending application, with a reason the applicant sees."""
        return self._turn_down(caller, app_id, reason, ApplicationState.PENDING)

    def withdraw(self, caller: Caller, app_id: str, reason: str) -> Application:
        """Withdraw the approval of an application (a vetting error found before it
        enrolled): its live codes are withdrawn and it reads as rejected, with the reason.
        Refused while a certificate issued on it is in force: an officer revokes it first.
        """
        return self._turn_down(caller, app_id, reason, ApplicationState.APPROVED)

    def withdraw_operator(self, caller: Caller, app_id: str, reason: str) -> Application:
        """The enterprise withdraws its own operator's authorization (its approval, made
        by :meth:`authorize_operator`) before the operator enrolled, as an officer withdraws
        an approval (:meth:`withdraw`)."""
        return self._turn_down(
            caller, app_id, reason, ApplicationState.APPROVED, by_enterprise=True
        )

    def pending_operators(self, caller: Caller, after: str, limit: int) -> list[Application]:
        """The calling enterprise's operator authorizations not enrolled yet (a code given,
        no certificate issued on it), by application id after ``after``: what it may still
        withdraw (:meth:`withdraw`)."""
        self._require(caller, SubjectClass.ENTERPRISE)
        assert caller.uscc is not None
        with self.store.reading() as tx:
            return tx.operators_not_enrolled(caller.uscc, after, limit)

    def operator_authorization(self, caller: Caller, operator_id: str) -> Application:
        """The calling enterprise's current authorization of ``operator_id``: its latest
        operator application still approved (the one a certificate of the id is issued,
        or will be, on). What a role grant is bound to (``eport roles grant``): roles are
        the enterprise's grant to one authorization, never to the next person given the
        id. :class:`NotFound` for an id the enterprise has not authorized."""
        self._require(caller, SubjectClass.ENTERPRISE)
        assert caller.uscc is not None
        clean_id = operator_id_of(operator_id)
        with self.store.reading() as tx:
            apps = tx.operator_applications(caller.uscc, clean_id)
        approved = [a for a in apps if a.state is ApplicationState.APPROVED]
        if not approved:
            raise NotFound(
                f"enterprise {caller.uscc} has no authorization of operator {clean_id}: "
                f'authorize it first (eport operator add --id {clean_id} --name "…")'
            )
        return max(approved, key=lambda a: (a.created_at, a.id))

    def last_codes(self, app_ids: list[str]) -> dict[str, EnrollmentCode]:
        """The code given last to each of ``app_ids`` that has one."""
        with self.store.reading() as tx:
            return tx.last_codes(app_ids)

    def _turn_down(
        self,
        caller: Caller,
        app_id: str,
        reason: str,
        expected: ApplicationState,
        *,
        by_enterprise: bool = False,
    ) -> Application:
        # ``by_enterprise``: an enterprise withdraws its own operator's authorization; every
        # other decision is an RA officer's
        self._require(caller, SubjectClass.ENTERPRISE if by_enterprise else SubjectClass.AGENCY)
        reason = " ".join((reason or "").split())
        if not reason:
            raise BadRequest("a rejection needs a reason")
        control = next((c for c in reason if unicodedata.category(c) in _CONTROLS), None)
        if control is not None:
            raise BadRequest(
                f"the reason contains a control or format character (U+{ord(control):04X}); "
                "it is shown as it is to the applicant, in a terminal"
            )
        if len(reason) > 500:
            raise BadRequest("the reason is longer than 500 characters")
        now = self.clock()
        with self.store.transaction() as tx:
            app = self._locked_application(tx, app_id, caller)
            if by_enterprise and (
                app.subject_class != SubjectClass.OPERATOR.value or app.uscc != caller.uscc
            ):
                raise Forbidden(
                    f"application {app_id} is not an operator authorization of this "
                    "enterprise: an enterprise withdraws only its own (eport operator list)"
                )
            if not by_enterprise and app.subject_class == SubjectClass.OPERATOR.value:
                # The enterprise alone authorizes and withdraws its operators (as for a new
                # code, reissue_code): any member's officer withdrew one (probe 24).
                raise Forbidden(
                    f"application {app_id} is an enterprise's authorization of its operator: "
                    "the enterprise withdraws it (eport operator withdraw); a compromised "
                    "enterprise key's codes end when an officer revokes the certificate "
                    "that gave them with reason keyCompromise"
                )
            signer_still_good(tx, caller)
            who = "enterprise" if by_enterprise else "officer"
            details: dict[str, object] = {"reason": reason, who: caller.subject}
            if expected is ApplicationState.PENDING:
                event_type = EventType.APPLICATION_REJECTED
                if app.state is not expected:
                    raise Conflict(f"application {app_id} is already {app.state.value}")
            else:
                event_type = EventType.APPLICATION_WITHDRAWN
                if app.state is not expected:
                    raise Conflict(
                        f"application {app_id} is {app.state.value}; only an approved "
                        "application can be withdrawn"
                    )
                _refuse_in_force(
                    tx,
                    [app],
                    now,
                    f"application {app_id}",
                    "revoke it first (eport revoke)"
                    if by_enterprise
                    else "an officer revokes it first (eport revoke)",
                    void=self._void,
                )
                details["withdrawn_codes"] = tx.withdraw_codes([app_id], now)
            if not tx.set_application_state(
                app_id, expected, ApplicationState.REJECTED, caller.actor, now, reason
            ):
                raise Conflict(f"application {app_id} was decided concurrently")
            tx.append_event(_application_event(event_type, app, caller.actor, now, details))
            updated = tx.get_application(app_id)
        assert updated is not None
        return updated

    def reissue_code(
        self, caller: Caller, app_id: str, profiles: Sequence[str] | None = None
    ) -> CodeGrant:
        """A new one-time code for an approved application whose code was lost or expired.

        The application's unused codes end in the same transaction, so one code at most is
        live. While a certificate issued on the application is in force (not expired, not
        revoked; a suspended one may be resumed), no code is given: its holder renews with
        it, or an officer revokes it first (a lost key). The new code allows the profiles of
        the last one unless ``profiles`` names others of the application's class. Not for an
        operator's application: its enterprise authorizes the operator again instead.
        """
        self._require(caller, SubjectClass.AGENCY)
        now = self.clock()
        with self.store.transaction() as tx:
            app = self._locked_application(tx, app_id, caller)
            if app.subject_class == SubjectClass.OPERATOR.value:
                # The enterprise alone authorizes its operators: a code from an officer
                # would bring back an operator it withdrew (revoked), or outlive the
                # enterprise itself. Its own `eport operator add` gives a new code.
                raise Forbidden(
                    "an operator's enrollment code comes from its enterprise, not from an RA "
                    "officer: the enterprise authorizes the operator id again "
                    "(eport operator add)"
                )
            # The application's row, then the lock of issuances, then the codes: an
            # issuance locks the log head and then its code, an approval the application
            # and then the head.
            signer_still_good(tx, caller)
            if app.state is not ApplicationState.APPROVED:
                raise Conflict(
                    f"application {app_id} is {app.state.value}; only an approved "
                    "application gets a new code"
                )
            _refuse_in_force(
                tx,
                [app],
                now,
                f"application {app_id}",
                "its holder renews it (eport renew), or an officer revokes it first "
                "(eport revoke --serial SERIAL --reason REASON)",
                held_remedy="a certificate on hold signs nothing, so an officer lifts its hold "
                "first (eport resume --serial SERIAL) and its holder renews it (eport renew), or "
                "an officer revokes it (eport revoke --serial SERIAL --reason REASON)",
                void=self._void,
            )
            self._refuse_second_credential(tx, app, now)
            last = tx.last_codes([app_id]).get(app_id)
            if profiles or last is None:
                allowed = self._profiles_for(app, profiles)
            else:
                allowed = last.profiles
            withdrawn = tx.withdraw_codes([app_id], now)
            grant = self._grant_code(tx, app, allowed, now)
            tx.append_event(
                _application_event(
                    EventType.CODE_REISSUED,
                    app,
                    caller.actor,
                    now,
                    {
                        "profiles": list(allowed),
                        "officer": caller.subject,
                        "withdrawn_codes": withdrawn,
                    },
                )
            )
        return dataclasses.replace(grant, withdrawn=withdrawn)

    @functools.cached_property
    def _legal_person_profiles(self) -> tuple[str, ...]:
        """The profiles of an enterprise's legal-person credential (its class's profiles),
        read once from the policies this CA was made with."""
        return tuple(sorted(p.name for p in self.policies.profiles_of(SubjectClass.ENTERPRISE)))

    def _refuse_second_credential(
        self, tx: Transaction, app: Application, now: datetime.datetime
    ) -> None:
        """An enterprise holds one legal-person credential (DESIGN.md, Domain notes), so
        an enterprise application gets no code (approval, new code) while its USCC holds
        one in force (not expired, not revoked; one on hold counts: a hold is lifted, or
        the certificate revoked, first), or while another of its enterprise applications
        holds a live code (that one enrolls, or is withdrawn, first). Call it holding the
        issuances' lock (:meth:`Transaction.hold_issuance`): approvals and new codes are
        then decided one at a time, and an enrollment in flight has either stored its
        certificate (seen here) or will meet the check where it is stored
        (:attr:`IssuanceWrite.sole_credential`), which decides in the end."""
        if SubjectClass(app.subject_class) in _ONE_NAME_CLASSES:
            self._refuse_same_name(tx, app, now)
            return
        if app.subject_class != SubjectClass.ENTERPRISE.value or app.uscc is None:
            return  # operators and services are not legal persons
        self._refuse_credential_held(tx, app, now)
        others = [
            a.id
            for a in tx.applications_of(app.uscc, SubjectClass.ENTERPRISE.value)
            if a.id != app.id and a.state is ApplicationState.APPROVED
        ]
        for other_id, code in tx.last_codes(others).items():
            if code_state(code, now) == "live":
                raise Conflict(
                    f"enterprise {app.uscc} has application {other_id} approved, its "
                    f"enrollment code live until {code.expires_at:%Y-%m-%dT%H:%M:%SZ}; an "
                    "enterprise holds one legal-person credential: that application enrolls, "
                    f"or an officer withdraws it first (eport ra withdraw {other_id} --reason …)",
                    application=other_id,
                )

    def _refuse_same_name(self, tx: Transaction, app: Application, now: datetime.datetime) -> None:
        """A member agency's officers and auditors are known to every e-port service by
        their agency and name (``agency:customs:<name>``): a second person of one agency
        with the same name in force would be the same user at every service, each seeing
        the other's records (authorization probe, F3). Refuse (Conflict naming the
        certificate) while a certificate of the same subject is in force: the same person
        renews it, or it is revoked first; another person applies under a name that tells
        them apart.

        "The same" as RFC 5280 §7.1 compares names (RFC 4518 string preparation,
        :func:`ca.names.dn_key`): case, full width, compatibility forms (王⼯ with KANGXI
        RADICAL WORK is 王工) and blanks set aside. Two such names read the same to a
        person, so they are one user whatever a service compares; the refusal shows the
        holder's name as certified, its look-alike characters by code point."""
        for profile in self.policies.profiles_of(SubjectClass(app.subject_class)):
            subject = dn_string(profile.build_subject(app.vetted))
            held = tx.named_in_force(subject, [profile.name], now, self._void)
            if held is not None:
                raise same_name_refusal(
                    subject, held.subject, held.serial_hex, profile.name, held.not_after
                )

    def _refuse_credential_held(
        self, tx: Transaction, app: Application, now: datetime.datetime
    ) -> None:
        """Refuse (Conflict naming its serial) while ``app``'s USCC holds a legal-person
        credential in force."""
        if app.uscc is None:
            return
        found = tx.credential_in_force(
            app.uscc, self._legal_person_profiles, now, void_issuers=self._void
        )
        if found is not None:
            held, on_hold = found
            raise credential_refusal(app.uscc, held.serial_hex, held.not_after, on_hold=on_hold)

    def _locked_application(
        self, tx: Transaction, app_id: str, caller: Caller | None
    ) -> Application:
        """The application, its row locked for this transaction, when ``caller`` (if any: a
        ceremony decides for the whole CA) may decide it."""
        app = tx.get_application(app_id, for_update=True)
        if app is None:
            raise NotFound(f"no application {app_id!r}")
        if caller is not None:
            self._check_officer_scope(caller, app)
        return app

    def _check_officer_scope(self, caller: Caller, app: Application) -> None:
        # An officer vets enterprises for the whole joint CA, but agency staff and
        # agency services only for the officer's own agency.
        own = app.vetted.get("agency_id")
        if own is not None and own != caller.agency_id:
            raise Forbidden(f"only an officer of agency {own!r} may decide this application")

    def _profiles_for(self, app: Application, requested: Sequence[str] | None) -> tuple[str, ...]:
        cls = SubjectClass(app.subject_class)
        fitting = [p.name for p in self.policies.profiles_of(cls)]
        if not requested:
            return tuple(sorted(fitting))
        for name in requested:
            if name not in self.policies.profiles:
                # the profiles this application can take, not every profile of the CA
                # (issuing-ca, ocsp-responder: no officer grants a code for those)
                raise UnknownProfile(
                    f"unknown profile {name[:60]!r} (for this {cls.value} application: "
                    f"{', '.join(sorted(fitting))})"
                )
            profile = self.policies.profile(name)
            if profile.subject_class is not cls:
                raise ProfileNotAllowed(
                    f"profile {name!r} is for {profile.subject_class.value}, "
                    f"not for a {cls.value} application"
                )
        return tuple(sorted(set(requested)))

    def _grant_code(
        self, tx: Transaction, app: Application, profiles: tuple[str, ...], now: datetime.datetime
    ) -> CodeGrant:
        code = new_code(self.random_bytes)
        expires = now + self.code_ttl
        tx.add_code(
            EnrollmentCode(
                code_hash=hash_code(code),
                application_id=app.id,
                profiles=profiles,
                expires_at=expires,
            )
        )
        return CodeGrant(application=app, code=code, expires_at=expires, profiles=profiles)

    # -- operators --------------------------------------------------------------------------

    def authorize_operator(self, caller: Caller, name: str, operator_id: str) -> CodeGrant:
        """The enterprise's legal person authorizes an operator: an approved application.

        Authorizing an operator id again (a lost or expired code, a corrected name) ends
        the unused codes of its earlier authorizations, so one code at most is live per
        operator; it is refused while a certificate of that operator id is in force.
        """
        self._require(caller, SubjectClass.ENTERPRISE)
        with self.store.reading() as tx:
            record = tx.get_certificate(caller.serial)
            parent = (
                tx.get_application(record.application_id)
                if record and record.application_id
                else None
            )
        if parent is None or parent.uscc is None:
            raise Forbidden("the enterprise certificate is not on record at this CA")
        vetted, _ = self._vet_input(
            SubjectClass.ENTERPRISE.value,
            {"uscc": parent.uscc, "legal_name": parent.vetted["legal_name"]},
        )
        clean_name = _clean(name, "operator name", UB_NAME)
        clean_id = operator_id_of(operator_id)
        vetted.update({"operator_name": clean_name, "operator_id": clean_id})
        now = self.clock()
        app = Application(
            id="app_" + base64.b32encode(self.random_bytes(10)).decode().lower(),
            subject_class=SubjectClass.OPERATOR.value,
            uscc=parent.uscc,
            vetted=vetted,
            state=ApplicationState.APPROVED,
            created_at=now,
            applicant=caller.actor,
            decided_by=caller.actor,
            decided_at=now,
        )
        profiles = tuple(sorted(p.name for p in self.policies.profiles_of(SubjectClass.OPERATOR)))
        with self.store.transaction() as tx:
            # The enterprise's row lock orders its authorizations (PostgreSQL), so two at
            # once for one operator cannot both leave a code live.
            tx.get_application(parent.id, for_update=True)
            signer_still_good(tx, caller)  # and the issuances' lock, before the codes' rows
            earlier = tx.operator_applications(parent.uscc, clean_id)
            _refuse_in_force(
                tx,
                earlier,
                now,
                f"operator {clean_id}",
                "the operator renews it (eport renew), or the enterprise revokes it first "
                "(eport revoke --serial SERIAL --reason REASON)",
                void=self._void,
            )
            withdrawn = tx.withdraw_codes([a.id for a in earlier], now)
            # Authorized again before anyone enrolled on the last authorization (a code
            # lost or lapsed, a name corrected): the same authorization, so the roles
            # granted to it are kept; after one was enrolled, another person may hold the
            # id: a new one (review, session 27: a lost code lost the operator's roles)
            extra = {"enterprise_application": parent.id}
            last = max(
                (a for a in earlier if a.state is ApplicationState.APPROVED),
                key=lambda a: (a.created_at, a.id),
                default=None,
            )
            if (
                last is not None
                and last.vetted.get("enterprise_application") == parent.id
                and not tx.certificates_of_application(last.id)
            ):
                extra["authorization_of"] = authorization_id(last)
            app = dataclasses.replace(app, vetted={**app.vetted, **extra})
            tx.add_application(app)
            grant = self._grant_code(tx, app, profiles, now)
            details: dict[str, object] = {"operator_id": clean_id, "profiles": list(profiles)}
            if withdrawn:
                details["withdrawn_codes"] = withdrawn
            tx.append_event(
                _application_event(EventType.OPERATOR_AUTHORIZED, app, caller.actor, now, details)
            )
        return dataclasses.replace(grant, withdrawn=withdrawn)

    # -- issuance ---------------------------------------------------------------------------

    def enroll(self, code: str, profile_name: str, csr_data: str | bytes) -> Issued:
        """Redeem a one-time code with a CSR: check, lint, sign, store with its event."""
        _require_code(code)
        csr = parse_csr(csr_data)
        public_key = csr.public_key()
        code_hash = hash_code(code)
        now = self.clock()
        # Checked before anything is linted or signed, outside any transaction; the
        # redemption below, which commits with the certificate, decides again.
        spki = spki_sha256(public_key)
        rec, app, holder = self.store.enrollment_facts(code_hash, spki)
        replay = self._issued_on(rec, holder, profile_name)
        if replay is not None:
            return replay
        try:
            self._refuse_code(rec, profile_name, now)
            assert app is not None
            _refuse_certified_key([holder] if holder else [], app.id)
        except EPortError:
            # The code and the key's holder are two reads (enrollment_facts): a copy of
            # this request committing between them reads as a code unused and a key held
            # by someone else. Read again, that is the replay (see below).
            replay = self._replay_of(code_hash, spki, profile_name)
            if replay is not None:
                return replay
            raise
        profile = self.policies.profile(profile_name)
        if profile.subject_class is SubjectClass.OPERATOR and app.uscc is not None:
            with self.store.reading() as tx:
                self._refuse_held_enterprise(tx, app.uscc, now)
        issuer = self._issuer_for(profile)
        cert = self.factory.issue(
            profile, issuer, public_key, app.vetted, now, authorization=authorization_id(app)
        )
        record = certificate_record(cert, issuer.id, profile.name, app, spki)
        event = Event.about(EventType.CERTIFICATE_ISSUED, record, actor="enrollment-code", at=now)
        # A legal-person credential is refused where it is stored if the enterprise holds
        # one in force by then (an approval checked this, but two approvals made before
        # that check, or an enrollment racing another, are decided only there); so is a
        # member agency's staff certificate of a name in force (the one-name rule).
        sole = (
            self._legal_person_profiles if profile.subject_class is SubjectClass.ENTERPRISE else ()
        )
        one_name = (profile.name,) if profile.subject_class in _ONE_NAME_CLASSES else ()
        # and an operator's while its enterprise's credential is on hold, decided there too
        not_held = (
            self._legal_person_profiles if profile.subject_class is SubjectClass.OPERATOR else ()
        )
        try:
            self.store.commit_issuance(
                IssuanceWrite(
                    record,
                    event,
                    code_hash,
                    now,
                    sole_credential=sole,
                    void_issuers=self._void,
                    sole_name=one_name,
                    enterprise_not_held=not_held,
                )
            )
        except NotDurable:
            raise  # stored, perhaps not for good: never handed out (nor found as a replay)
        except EPortError:
            # The same request sent again while the first was still waiting to be written
            # (a client that timed out and retried): both passed the check above, the
            # first redeemed the code, and this one was told its code was used, or to
            # make a new key, for a certificate it got (race probe, session 24). Asked
            # again now, that is the replay; any other refusal stands.
            replay = self._replay_of(code_hash, spki, profile_name)
            if replay is not None:
                return replay
            raise
        return Issued(record, cert, self._chain(issuer))

    def _replay_of(self, code_hash: str, spki: str, profile_name: str) -> Issued | None:
        """:meth:`_issued_on`, of the code and key read afresh: asked after a refusal, for a
        copy of the same request that committed meanwhile."""
        rec, _, holder = self.store.enrollment_facts(code_hash, spki)
        return self._issued_on(rec, holder, profile_name)

    def _issued_on(
        self, rec: EnrollmentCode | None, holder: CertificateRecord | None, profile_name: str
    ) -> Issued | None:
        """The certificate a used code already got for this very key and profile: the
        answer to an enrollment whose answer was lost (the server was killed, or the
        connection dropped, after the commit), asked again. The caller knows the code and
        proved possession of the key (the CSR's signature, checked by ``parse_csr``); one
        key has one holder, so this is the certificate that redeemed the code's
        application with it. Nothing is written; a different key is refused as before."""
        if rec is None or rec.used_at is None or holder is None:
            return None
        if holder.application_id != rec.application_id or holder.profile != profile_name:
            return None
        issuer = next((i for i in self.issuers.values() if i.id == holder.issuer_id), None)
        if issuer is None:
            return None
        with self.store.reading() as tx:  # a replay only: the enrollment path reads nothing more
            _refuse_replay_of_bad(tx, holder, self.clock())
        cert = x509.load_der_x509_certificate(holder.der)
        return Issued(holder, cert, self._chain(issuer), replayed=True)

    def check_code(self, code: str, profile_name: str) -> EnrollmentCode:
        """Whether ``code`` would enroll a ``profile_name`` certificate now: the refusal
        :meth:`enroll` would give (an unknown, used, expired or withdrawn code, a profile it
        does not allow), or the live code. Redeems nothing and writes nothing: the CLI asks
        before it makes a key and asks for the key's passphrase."""
        _require_code(code)
        rec, app, _ = self.store.enrollment_facts(hash_code(code), "")
        now = self.clock()
        self._refuse_code(rec, profile_name, now)
        assert rec is not None
        # An issuing CA that cannot issue now (in its last day, ended, revoked, not on this
        # host): said before a key is made, not after, as a 503 the enrollment would give.
        self._issuer_for(self.policies.profile(profile_name))
        subject_class = self.policies.profile(profile_name).subject_class
        if app is not None and subject_class is SubjectClass.ENTERPRISE:
            with self.store.reading() as tx:  # what the issuance would meet now
                self._refuse_credential_held(tx, app, now)
        elif app is not None and subject_class in _ONE_NAME_CLASSES:
            with self.store.reading() as tx:
                self._refuse_same_name(tx, app, now)
        elif app is not None and subject_class is SubjectClass.OPERATOR and app.uscc:
            with self.store.reading() as tx:
                self._refuse_held_enterprise(tx, app.uscc, now)
        return rec

    def _refuse_held_enterprise(self, tx: Transaction, uscc: str, now: datetime.datetime) -> None:
        """Refuse (Conflict) an operator's enrollment while its enterprise's legal-person
        credential is on hold: a hold is the lost or stolen key's first answer, and codes
        that key gave enrolled operators meanwhile (business rules probe, session 26). The
        code stays unused: it enrolls once the hold is lifted (a revocation withdraws it)."""
        refuse_held_enterprise(tx, uscc, self._legal_person_profiles, now, self._void)

    def _refuse_code(
        self, rec: EnrollmentCode | None, profile_name: str, now: datetime.datetime
    ) -> None:
        """Refuse a code that is not live now, or does not allow ``profile_name``."""
        refusal = code_refusal(rec, now)
        if refusal is not None:
            raise refusal
        assert rec is not None
        if profile_name not in rec.profiles:
            allowed = ", ".join(rec.profiles)
            if profile_name not in self.policies.profiles:  # a typo: name what would do
                raise UnknownProfile(
                    f"unknown profile {profile_name[:60]!r}; this code allows {allowed}"
                )
            raise ProfileNotAllowed(f"this code allows {allowed}, not {profile_name[:60]!r}")

    def renew(self, caller: Caller, csr_data: str | bytes) -> Issued:
        """A new certificate for a new key, same vetted subject, by the current holder; or,
        for a key this holder's renewal already got certified, that certificate again
        (``replayed``: its first answer was lost)."""
        csr = parse_csr(csr_data)
        now = self.clock()
        with self.store.reading() as tx:
            current = tx.get_certificate(caller.serial)
            if current is None or current.application_id is None:
                raise Forbidden("the certificate is not on record at this CA")
            app = tx.get_application(current.application_id)
            assert app is not None
            if spki_sha256(csr.public_key()) == current.spki_sha256:
                raise Conflict("renewal needs a new key; the request reuses the current one")
            holders = tx.key_holders(spki_sha256(csr.public_key()))
            replay = self._renewed_on(tx, holders, current)
            if replay is not None:
                return replay
            _refuse_certified_key(holders, app.id)
            vetted = self._named_as_now(tx, app, now)
        profile = self.policies.profile(current.profile)
        issuer = self._issuer_for(profile)
        cert = self.factory.issue(
            profile, issuer, csr.public_key(), vetted, now, authorization=authorization_id(app)
        )
        record = certificate_record(cert, issuer.id, profile.name, app)
        event = Event.about(
            EventType.CERTIFICATE_RENEWED,
            record,
            actor=caller.actor,
            at=now,
            details={"previous_serial": format(caller.serial, "x")},
        )
        # A legal-person credential renews while it is its enterprise's only one in force:
        # decided where it is stored, so two renewals of one certificate (or of the old one
        # and of its renewal) at once give one.
        sole = (
            self._legal_person_profiles if profile.subject_class is SubjectClass.ENTERPRISE else ()
        )
        try:
            self.store.commit_issuance(
                IssuanceWrite(
                    record,
                    event,
                    now=now,
                    signed_by=caller.serial,
                    sole_credential=sole,
                    void_issuers=self._void,
                )
            )
        except NotDurable:
            raise  # as enroll
        except EPortError as exc:
            # A retry of this renewal overlapping the first: see enroll
            with self.store.reading() as tx:
                holders = tx.key_holders(spki_sha256(csr.public_key()))
                replay = self._renewed_on(tx, holders, current)
                other = getattr(exc, "extra", {}).get("serial") if sole else None
                if replay is None and isinstance(other, str):
                    better = self._which_renewed(tx, caller.serial, other, record.uscc)
                    if better is not None:
                        raise better from None
            if replay is not None:
                return replay
            raise
        return Issued(record, cert, self._chain(issuer))

    def _named_as_now(
        self, tx: Transaction, app: Application, now: datetime.datetime
    ) -> Mapping[str, str]:
        """The vetted data a renewal on ``app`` names: an operator's, with its enterprise's
        legal name as an officer vetted it for the legal-person certificate in force (or
        on hold). An enterprise changes its name by applying again; its operators'
        renewals kept the name of their authorization, so their certificates named the
        old one for good (business rules probe, session 26). Anything else: as vetted."""
        if app.subject_class != SubjectClass.OPERATOR.value or app.uscc is None:
            return app.vetted
        found = tx.credential_in_force(
            app.uscc, self._legal_person_profiles, now, void_issuers=self._void
        )
        if found is None or found[0].application_id is None:
            return app.vetted
        parent = tx.get_application(found[0].application_id)
        name = parent.vetted.get("legal_name") if parent is not None else None
        if not name or name == app.vetted.get("legal_name"):
            return app.vetted
        return {**app.vetted, "legal_name": name}

    @staticmethod
    def _which_renewed(
        tx: Transaction, signer: int, other_hex: str, uscc: str | None
    ) -> Conflict | None:
        """The refusal of a legal-person renewal beside another credential in force, said
        with which of the two renewed the other (:func:`credential_refusal`), when one did."""
        other = int(other_hex, 16)
        if tx.renewed_from(other) == signer:
            held_renews = True
        elif tx.renewed_from(signer) == other:
            held_renews = False
        else:
            return None
        rec = tx.get_certificate(other)
        if rec is None or uscc is None:
            return None
        status = tx.get_status(other)
        on_hold = status is not None and status.state is StatusState.HOLD
        return credential_refusal(
            uscc, other_hex, rec.not_after, on_hold=on_hold, renewing=signer,
            held_renews=held_renews,
        )  # fmt: skip

    def _renewed_on(
        self,
        tx: Transaction,
        holders: Sequence[CertificateRecord],
        current: CertificateRecord,
    ) -> Issued | None:
        """The certificate this very signer's renewal already got for the CSR's key: the
        answer to a renewal whose answer was lost (the server was killed, or the
        connection dropped, after the commit), asked again with a new signed request. The
        caller signed with ``current`` and proved possession of the new key (the CSR's
        signature); one key has one holder, so this is the certificate that renewed
        ``current`` with it (same application, its ``certificate.renewed`` event's
        ``previous_serial`` is ``current``). Nothing is written; any other certified key
        is refused as before."""
        for holder in holders:
            if holder.application_id != current.application_id:
                continue
            if tx.renewed_from(holder.serial) != current.serial:
                continue
            issuer = next((i for i in self.issuers.values() if i.id == holder.issuer_id), None)
            if issuer is None:
                return None
            _refuse_replay_of_bad(tx, holder, self.clock())
            cert = x509.load_der_x509_certificate(holder.der)
            return Issued(holder, cert, self._chain(issuer), replayed=True)
        return None

    def _issuer_for(self, profile: Profile) -> IssuingCA:
        try:
            issuer = self.issuers[profile.issuer]
        except KeyError:
            gen = self.unavailable_issuers.get(profile.issuer)
            if gen is not None:
                raise IssuerUnavailable(
                    f"issuing CA {profile.issuer!r} issues from {gen}, whose certificate and "
                    "key this host does not have (a rollover ran on another host, and this "
                    "host's CA files are behind): send the request to a host that has them; "
                    "nothing was used here"
                ) from None
            stopped = sorted(
                (r.revoked_at, g)
                for g, r in self.revoked_issuers.items()
                if generation_base(g) == profile.issuer
            )
            if stopped:  # its current generation revoked with no successor (active.json "")
                at, gen = stopped[-1]
                raise IssuerRevoked(
                    f"issuing CA {profile.issuer!r} issues from no generation: {gen} is "
                    f"revoked on the root CRL (revoked {at:%Y-%m-%dT%H:%M:%SZ}) and none "
                    f"replaced it. A rollover ceremony (eport ca rotate {profile.issuer}) "
                    "makes a new one; nothing was used here"
                ) from None
            raise NotFound(f"issuing CA {profile.issuer!r} is not configured") from None
        revoked = self.revoked_issuers.get(issuer.id)
        if revoked is not None:
            reason = f", {revoked.reason.rfc_name}" if revoked.reason is not None else ""
            raise IssuerRevoked(
                f"issuing CA {profile.issuer!r} would issue from {issuer.id}, which the root's "
                f"CRL revokes (revoked {revoked.revoked_at:%Y-%m-%dT%H:%M:%SZ}{reason}): "
                "nothing is issued from it. ca/issuers/active.json names a revoked "
                "generation; a rollover ceremony (eport ca rotate) makes a new one"
            )
        ends = issuer.certificate.not_valid_after_utc
        if ends - self.clock() < MIN_ISSUED_VALIDITY:
            # A leaf never outlives its issuer (RFC 5280 §6.1.3: it would not validate), so
            # its notAfter is cut to the issuer's: past it, the certificate would end before
            # it began (signed by an expired CA, its code used up, logged as issued).
            raise IssuerExpired(
                f"issuing CA {issuer.id} {'expired' if ends <= self.clock() else 'ends'} at "
                f"{ends:%Y-%m-%dT%H:%M:%SZ}: nothing is issued from it less than a day "
                f"before its end. A rollover ceremony (eport ca rotate {profile.issuer}) "
                "makes a new generation; nothing was used here"
            )
        return issuer

    def _officers_last_end(
        self, tx: Transaction, now: datetime.datetime, staff: SubjectClass = SubjectClass.AGENCY
    ) -> dict[str, datetime.datetime]:
        """Each member agency with an RA officer certificate (``staff``: of that class, an
        auditor's) in force at ``now`` (not expired, revoked or on hold, nor issued by a
        generation the root CRL revokes: such an officer signs nothing, and counting it
        refused the unsigned opening that brings officers back, for good), and when its
        last one ends."""
        profiles = [p.name for p in self.policies.profiles_of(staff)]
        last: dict[str, datetime.datetime] = {}
        for rec in tx.staff_in_force(profiles, now):
            if rec.issuer_id in self.revoked_issuers:
                continue
            cert = x509.load_der_x509_certificate(rec.der)
            member = member_agency_of(_attr(cert.subject, NameOID.ORGANIZATION_IDENTIFIER) or "")
            if member is not None and (member not in last or rec.not_after > last[member]):
                last[member] = rec.not_after
        return last

    def officers_in_force(self) -> bool:
        """Whether any member agency has an RA officer certificate in force now. None: a
        quorum ceremony that brings officers back may be opened unsigned
        (:mod:`ca.quorum_api`), as nobody is left to sign its opening."""
        with self.store.reading() as tx:
            return bool(self._officers_last_end(tx, self.clock()))

    def officer_issuer(self) -> str:
        """The issuing CA id the RA officers' profile issues from ('' if none)."""
        officer_profiles = self.policies.profiles_of(SubjectClass.AGENCY)
        return officer_profiles[0].issuer if officer_profiles else ""

    def officer_notices(self, now: datetime.datetime) -> list[str]:
        """What operators must hear about the member agencies' RA officers: a member with
        none in force (nobody may approve its staff: a quorum's APPROVE-OFFICER is the way
        back), or whose last one ends within :data:`OFFICER_NOTICE` (renew it first: the
        officers made by ``eport ca init`` all end on the same day)."""
        with self.store.reading() as tx:
            last = self._officers_last_end(tx, now)
            auditors = self._officers_last_end(tx, now, SubjectClass.AUDITOR)
        agency_issuer = self.officer_issuer()
        issuing = self.issuers.get(agency_issuer)
        agency_end = issuing.certificate.not_valid_after_utc if issuing is not None else None
        notices: list[str] = []
        for m in self.policies.members.members:
            ends = last.get(m.id)
            if ends is None:
                notices.append(
                    f"member agency {m.id} has no RA officer certificate in force: nobody may "
                    "approve its staff; a quorum's APPROVE-OFFICER ceremony gives it one "
                    "(docs/emergency-plan.md, runbook 8)"
                )
            elif ends - now < OFFICER_NOTICE:
                when = f"{ends:%Y-%m-%dT%H:%M:%SZ}"
                if agency_end is not None and ends >= agency_end - datetime.timedelta(seconds=1):
                    # cut to its issuing CA's end: a renewal would be cut (and near the end,
                    # refused) the same way; only a rollover, which an officer opens, helps
                    notices.append(
                        f"the last RA officer certificate of member agency {m.id} ends at "
                        f"{when}, with the issuing CA that issued it: an officer opens its "
                        f"rollover now (eport ca rotate {agency_issuer}), then renews"
                    )
                else:
                    notices.append(
                        f"the last RA officer certificate of member agency {m.id} ends at "
                        f"{when}: its holder renews it (eport renew), or an officer of "
                        f"{m.id} approves another, before then"
                    )
            # Auditors too (a member may have none): its review of the log stops with them.
            audit_ends = auditors.get(m.id)
            if audit_ends is not None and audit_ends - now < OFFICER_NOTICE:
                notices.append(
                    f"the last auditor certificate of member agency {m.id} ends at "
                    f"{audit_ends:%Y-%m-%dT%H:%M:%SZ}: its holder renews it (eport renew), "
                    f"or an officer of {m.id} approves another, before then"
                )
        return notices

    def _chain(self, issuer: IssuingCA) -> tuple[x509.Certificate, ...]:
        return (issuer.certificate, self.root)

    # -- listings ---------------------------------------------------------------------------

    def certificates(
        self,
        caller: Caller,
        uscc: str | None,
        limit: int = 100,
        after: int = -1,
        offset: int = 0,
    ) -> list[tuple[int, CertificateRecord]]:
        """A page of certificates (an enterprise's own, or any for an RA officer) after the
        listing key ``after``, each with its key."""
        if uscc is not None:
            uscc = str(USCC.parse(uscc))
        own = caller.uscc is not None and uscc == caller.uscc
        if caller.role is not SubjectClass.AGENCY and not own:
            if caller.uscc is None:  # an auditor, a service: the audit API is theirs
                raise Forbidden(
                    f"{_with_article(caller.role.value)} certificate lists no certificates "
                    "here: RA officers list any, an enterprise and its operators their own "
                    "(--uscc); auditors read /ca/v1/audit/certificates"
                )
            raise Forbidden("an enterprise may list only its own certificates (--uscc)")
        with self.store.reading() as tx:
            return tx.certificates(uscc=uscc, limit=limit, after=after, offset=offset)


_APPLICATION_FIELDS: dict[str, frozenset[str]] = {
    SubjectClass.ENTERPRISE.value: frozenset({"uscc", "legal_name"}),
    SubjectClass.AGENCY.value: frozenset({"agency_id", "person_name"}),
    SubjectClass.AUDITOR.value: frozenset({"agency_id", "person_name"}),
    SubjectClass.SERVICE.value: frozenset({"agency_id", "service_host"}),
}
"""The members an application of each class is made of (besides ``subject_class``)."""


def _refuse_certified_key(holders: Sequence[CertificateRecord], app_id: str) -> None:
    """One key, one holder: refuse a key any certificate already holds."""
    for h in holders:
        if h.application_id != app_id:
            raise Conflict("this public key is already certified to another subject")
        raise Conflict(KEY_CERTIFIED)


def _refuse_replay_of_bad(
    tx: Transaction, holder: CertificateRecord, now: datetime.datetime
) -> None:
    """Refuse to send again a certificate that has since been revoked, put on hold or
    expired: its first answer was lost, and a 200 would let the CLI save it and say it was
    issued, as if it were good. The key stays certified to it (one key, one holder)."""
    if holder.not_after < now:
        raise Conflict(
            f"the certificate {holder.serial_hex} issued for this key expired on "
            f"{holder.not_after:%Y-%m-%dT%H:%M:%SZ}; it is not sent again: the key is spent "
            "(ask for a new enrollment code)"
        )
    status = tx.get_status(holder.serial)
    if status is None:
        return
    if status.state is StatusState.HOLD:
        raise Conflict(
            f"the certificate {holder.serial_hex} issued for this key is on hold (suspended); "
            "it is sent again once resumed (eport resume)"
        )
    raise Conflict(
        f"the certificate {holder.serial_hex} issued for this key has been revoked; it is not "
        "sent again: the key is spent"
    )


def _require_code(code: object) -> None:
    if not isinstance(code, str) or not normalize_code(code):
        raise BadRequest("an enrollment code is required")
    if not code.isascii():  # codes are Crockford base32 and dashes
        raise BadRequest("not an enrollment code: it has characters no code has")


def _with_article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


_CONTROLS = frozenset({"Cc", "Cf", "Cs"})
"""Unicode categories refused in a rejection's reason (free text, unlike a name): C0 and
C1 controls (a terminal's escape sequences, BEL), format characters (bidi overrides) and
surrogates."""


_FIELD_WORDS = {
    "legal_name": "the legal name (legal_name)",
    "person_name": "the name (person_name)",
    "service_host": "the service's host name (service_host)",
    "agency_id": "the agency (agency_id)",
}
"""An application's fields in words, with the API's name: `eport apply --name` of 65
characters was refused as "legal_name has 65 characters", a name the CLI user never
typed (operator names already read "operator name")."""


def authorization_id(app: Application) -> str:
    """The application whose id names ``app``'s authorization (an operator certificate's
    dnQualifier: :func:`ca.policy.authorization_label`): its own, or, for an operator
    authorized again before anyone enrolled on the authorization before, that one's."""
    return app.vetted.get("authorization_of") or app.id


def operator_id_of(value: str) -> str:
    """``value`` as an operator id (``eport operator add --id``): blanks collapsed, no
    invisible or control character, 1 to 64 characters, PrintableString's only, since it
    becomes the operator certificate's subject serialNumber (X.520). The token service
    grants roles by it with the same rule. :class:`BadRequest` naming the rule (and the
    ASCII form of an id typed in full width)."""
    clean_id = _clean(value, "operator id", 64)
    if not PRINTABLE_STRING.fullmatch(clean_id):
        ascii_form = clean_id.translate(FULL_WIDTH_TO_ASCII)
        hint = (
            f" ({clean_id!r} is typed in full width: type it as {ascii_form!r})"
            if ascii_form != clean_id and PRINTABLE_STRING.fullmatch(ascii_form)
            else ""
        )
        raise BadRequest("operator id may use only A-Z a-z 0-9 space and '()+,-./:=?" + hint)
    return clean_id


def _clean(value: str, what: str, limit: int = MAX_NAME) -> str:
    """Collapse blanks (NFC); refuse empty, invisible or control characters, a name with
    no letter or digit, or over ``limit`` characters (Unicode code points).

    Invisible: :func:`ca.names.hidden_character` (controls, format characters, private-use
    and unassigned code points, line and paragraph separators, Unicode's default-ignorable
    code points such as variation selectors and U+034F, and the blank-looking Hangul
    fillers and U+2800). A certificate shows its names as they are, and an RA officer
    reads them in a terminal: none of these may make a name look like another, or blank.
    The name is kept as typed otherwise (no NFKC: full-width （） are the official form of
    a Chinese company name); :func:`ca.names.name_key` compares names."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{what} is required")
    # Looked for before blanks are collapsed: str.split() takes C0 separators (U+001C to
    # U+001F), tabs, NEL and the line and paragraph separators for blanks, so those came
    # through as spaces (fuzzing probe 24). Space characters (Zs, U+3000 too) collapse.
    unseen = hidden_character(value)
    if unseen is None:
        value = unicodedata.normalize("NFC", " ".join(value.split()))
        unseen = hidden_character(value)
    if unseen is not None:
        if all(c.isspace() or hidden_character(c) for c in value):
            raise BadRequest(
                f"{what} is empty: it has only blank or invisible characters ({code_point(unseen)})"
            )
        raise BadRequest(
            f"{what} contains an invisible or control character ({code_point(unseen)}); "
            "names are shown as they are, in certificates and to RA officers"
        )
    if not any(unicodedata.category(c)[0] in "LN" for c in value):
        raise BadRequest(f"{what} has no letter or digit")
    if len(value) > limit:
        raise BadRequest(f"{what} has {len(value)} characters, more than the {limit} allowed")
    return value


def _display_name(vetted: Mapping[str, str]) -> str:
    for key in ("operator_name", "person_name", "legal_name", "service_host", "ca_name"):
        if key in vetted:
            return vetted[key]
    return ""


def signer_still_good(tx: Transaction, caller: Caller) -> None:
    """Take the issuances' lock, then refuse if the certificate that signed the request,
    good when the request came, has been revoked or put on hold since. A revocation
    appends to the log under that lock: one that committed first is seen here, one
    committing later is ordered after this transaction."""
    tx.hold_issuance()
    status = tx.get_status(caller.serial)
    if status is not None:
        raise signer_refusal(caller.serial, status.state.value)


def _refuse_in_force(
    tx: Transaction,
    apps: Sequence[Application],
    now: datetime.datetime,
    who: str,
    remedy: str,
    held_remedy: str | None = None,
    *,
    void: Sequence[str] = (),
) -> None:
    """Refuse (Conflict) while a certificate issued on one of ``apps`` is in force: not
    expired, not revoked, not under an issuing CA generation in ``void`` (revoked on the
    root CRL: it validates nowhere, and cannot renew); a suspended one may be resumed
    (``held_remedy``, with SERIAL for its serial, is then said instead of ``remedy`` where
    that asks it to sign). Call it holding the issuances' lock
    (:meth:`Transaction.hold_issuance`), before withdrawing the apps' codes: an enrollment
    redeeming one of them has then either committed (its certificate is seen here) or will
    find its code withdrawn."""
    for app in apps:
        for rec in tx.certificates_of_application(app.id):
            if rec.issuer_id in void:
                # after REVOKE-INTERMEDIATE, runbook 2 re-enrolls the operators: the old
                # operator certificate was "in force" and "renews" (which it cannot) was
                # the remedy said (runbook probe 24)
                continue
            status = tx.get_status(rec.serial)
            if rec.not_after <= now or (
                status is not None and status.state is not StatusState.HOLD
            ):
                continue
            if status is not None and held_remedy is not None:
                # A certificate on hold signs nothing: "its holder renews it" cannot be
                # followed until the hold is lifted.
                raise Conflict(
                    f"{who} has certificate {rec.serial_hex} on hold, in force until "
                    f"{rec.not_after:%Y-%m-%dT%H:%M:%SZ}: "
                    + held_remedy.replace("SERIAL", rec.serial_hex)
                )
            raise Conflict(
                f"{who} has certificate {rec.serial_hex} in force until "
                f"{rec.not_after:%Y-%m-%dT%H:%M:%SZ}: " + remedy.replace("SERIAL", rec.serial_hex)
            )


def _application_event(
    type: EventType,
    app: Application,
    actor: str,
    at: datetime.datetime,
    details: Mapping[str, object],
) -> Event:
    """The event of a decision on ``app``: an approval, a rejection or withdrawal, a new
    code, an operator's authorization (its subject: the vetted display name)."""
    return Event(
        type=type,
        at=at,
        actor=actor,
        uscc=app.uscc,
        subject=_display_name(app.vetted),
        application_id=app.id,
        details=details,
    )


def certificate_record(
    cert: x509.Certificate,
    issuer_id: str,
    profile: str,
    app: Application | None,
    spki: str | None = None,
) -> CertificateRecord:
    """The record of ``cert``; ``spki``: its key's SHA-256 when the caller has it already."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return CertificateRecord(
        serial=cert.serial_number,
        issuer_id=issuer_id,
        profile=profile,
        application_id=app.id if app else None,
        uscc=app.uscc if app else None,
        subject=dn_string(cert.subject),
        spki_sha256=spki or spki_sha256(cert.public_key()),
        cert_sha256=hashlib.sha256(der).hexdigest(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        der=der,
    )
