"""Certificate status for relying parties: OCSP (RFC 6960), CRLs (RFC 5280 §5), and the
status interface the token service uses.

Framework-free. Correctness across several server processes comes from the
database, never from process memory:

* a status change replaces the certificate's pre-signed OCSP response **in the same
  transaction** (a :data:`~ca.revocation.StatusListener`), so every process serves
  the new answer from the moment the change commits; a cessation's operators get a
  placeholder that is always due (:data:`RESIGN`) there, so every answer is signed from
  the status row until their responses, signed after the commit, replace it;
* OCSP answers are read from the ``ocsp_responses`` table (one primary-key read);
  a response older than half its validity is re-signed and stored on demand;
* CRL numbers come from a row-locked counter per issuer (``crl_state``): two
  processes can never sign the same number or go backwards. A status change marks
  the issuer's CRL stale in its transaction; the next fetch (or the periodic
  refresher) signs one new CRL for any number of changes since (debounce), and a CRL
  is also re-signed before its nextUpdate.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca import ocsp
from ca.crl import ReasonCode, RevokedEntry, build_crl, next_crl_number
from ca.errors import Sealed, database_unavailable_cause, storage_full_cause
from ca.issuance import IssuingCA
from ca.ocsp import CertStatus, Good, OnHold, Revoked, Unknown
from ca.records import CertificateRecord, StatusRecord, StatusState

log = logging.getLogger("eport.ca")

RESIGN = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
"""thisUpdate (and nextUpdate) of a stored placeholder response (no DER): the status
changed and the response is yet to be signed. It is always due for re-signing, so the fast
path never serves it and the canonical path signs from the status row; and a refresh that
read the response before the change (``superseding`` its thisUpdate) replaces neither it
nor the response that replaces it."""

RESIGN_BATCH = 500
"""Responses signed and stored per transaction after a change of many certificates."""


class StatusTables(Protocol):
    """What this module needs from a transaction (implemented by ``ca.store``)."""

    def get_certificate(self, serial: int) -> CertificateRecord | None: ...

    def get_status(self, serial: int, *, for_update: bool = False) -> StatusRecord | None: ...

    def cached_ocsp(
        self, serial: int
    ) -> tuple[bytes, datetime.datetime, datetime.datetime] | None: ...

    def store_ocsp(
        self,
        serial: int,
        issuer_id: str,
        der: bytes,
        this_update: datetime.datetime,
        next_update: datetime.datetime,
        *,
        replace: bool = True,
        superseding: datetime.datetime | None = None,
    ) -> None: ...

    def store_ocsp_many(
        self,
        responses: Sequence[tuple[int, str, bytes, datetime.datetime, datetime.datetime]],
        *,
        superseding: datetime.datetime | None = None,
    ) -> None: ...

    def crl_state(self, issuer_id: str, *, for_update: bool = False) -> Any: ...

    def ensure_crl_state(self, issuer_id: str) -> None: ...

    def revoked_entries(
        self, issuer_id: str, expired_before: datetime.datetime | None = None
    ) -> Iterator[StatusRecord]: ...


class StatusStore(Protocol):
    def transaction(self) -> AbstractContextManager[Any]: ...


def to_cert_status(
    rec: CertificateRecord | None, st: StatusRecord | None, issuer_id: str
) -> CertStatus:
    if rec is None or rec.issuer_id != issuer_id:
        return Unknown()
    if st is None:
        return Good()
    if st.state is StatusState.HOLD:
        return OnHold(st.revoked_at)
    reason = ReasonCode(st.reason) if st.reason is not None else None
    return Revoked(st.revoked_at, reason)


def _recorded_hash(rec: CertificateRecord | None, issuer_id: str) -> bytes | None:
    """The SHA-256 of the certificate the CA recorded under a serial of ``issuer_id``, for
    an OCSP answer's CertHash (:mod:`ca.ocsp`); None for a serial it has no record of."""
    if rec is None or rec.issuer_id != issuer_id:
        return None
    return bytes.fromhex(rec.cert_sha256)


_COMPROMISE = frozenset(
    {ReasonCode.KEY_COMPROMISE, ReasonCode.CA_COMPROMISE, ReasonCode.AA_COMPROMISE}
)


def under_revoked_issuer(status: CertStatus, issuer: Revoked | None) -> CertStatus:
    """``status`` of a certificate whose issuing CA ``issuer`` revoked on the root CRL
    (None: it is not): a good or held certificate is revoked from the CA's revocation on
    (RFC 6960 §2.7; a hold can no longer be lifted to good), with reason cACompromise when
    the CA's key was compromised, else the CA's own reason. Its own earlier revocation,
    and unknown, stand; its own later one does not move the time back."""
    if issuer is None or isinstance(status, Unknown):
        return status
    if isinstance(status, Revoked) and status.revoked_at <= issuer.revoked_at:
        return status
    reason = ReasonCode.CA_COMPROMISE if issuer.reason in _COMPROMISE else issuer.reason
    return Revoked(issuer.revoked_at, reason)


@dataclass(frozen=True)
class StatusPolicy:
    ocsp_validity: datetime.timedelta = datetime.timedelta(hours=24)
    """nextUpdate - thisUpdate of OCSP responses; re-signed after half of it."""
    crl_validity: datetime.timedelta = datetime.timedelta(days=2)
    """nextUpdate - thisUpdate of CRLs; re-signed a quarter before nextUpdate."""


class StatusService:
    """OCSP responder, CRL issuer and in-process status source of the joint CA."""

    def __init__(
        self,
        *,
        issuers: Mapping[str, IssuingCA],
        responders: Mapping[str, IssuingCA],
        store: StatusStore,
        clock: Callable[[], datetime.datetime],
        policy: StatusPolicy = StatusPolicy(),
        revoked_issuers: Mapping[str, Revoked] | None = None,
    ) -> None:
        self.issuers = dict(issuers)
        self.revoked_issuers = dict(revoked_issuers or {})
        """Issuing CAs revoked on the root CRL (``REVOKE-INTERMEDIATE``): their responders
        answer revoked for every certificate they issued, signed on each request."""
        self.store = store
        self.clock = clock
        self.policy = policy
        self.responders: dict[str, ocsp.Responder] = {}
        for issuer_id, delegate in responders.items():
            issuer = self.issuers.get(issuer_id)
            if issuer is not None:
                self.responders[issuer_id] = ocsp.Responder(
                    issuer=issuer.certificate,
                    certificate=delegate.certificate,
                    signer=delegate.signer,
                )
        self._by_responder = {id(r): i for i, r in self.responders.items()}
        self._said_cannot_sign: dict[str, float] = {}
        self._said_not_stored = -math.inf
        self._crl_lock = threading.Lock()

    # -- the status interface ---------------------------------------------------------------

    def issuer_of(self, cert: x509.Certificate) -> str | None:
        for issuer_id, issuer in self.issuers.items():
            if cert.issuer == issuer.certificate.subject:
                try:
                    cert.verify_directly_issued_by(issuer.certificate)
                except Exception:  # noqa: S112 - another issuer with the same name
                    continue
                return issuer_id
        return None

    def status(self, cert: x509.Certificate) -> CertStatus:
        """``Good | Revoked(time, reason) | OnHold | Unknown`` of ``cert`` (DESIGN.md flow 3).

        Unknown unless ``cert`` is, byte for byte, the certificate the CA recorded under
        its serial: a certificate made with an issuing CA's key outside issuance (a stolen
        key, a mis-issuance) that copies a recorded serial is not that certificate
        (security probe, session 26: such a clone, naming another enterprise, logged in
        as it at the token service), as the CA refuses it as a signer (``JointCA.caller``).
        OCSP, which names a certificate by its serial alone, answers the serial."""
        issuer_id = self.issuer_of(cert)
        if issuer_id is None:
            return Unknown()
        digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        return self.status_by_serial(issuer_id, cert.serial_number, digest)

    def not_good(self, serials: list[int]) -> set[int]:
        """The serials among ``serials`` that are revoked or on hold (a batch status read)."""
        batch = getattr(self.store, "not_good", None)
        if batch is not None:
            result: set[int] = batch(serials)
            return result
        with self.store.transaction() as tx:
            return {n for n in serials if tx.get_status(n) is not None}

    def status_by_serial(
        self, issuer_id: str, serial: int, cert_sha256: str | None = None
    ) -> CertStatus:
        """The status of ``serial``; with ``cert_sha256`` (the presented certificate's),
        a record of another certificate under that serial is none: Unknown."""
        with self.store.transaction() as tx:
            rec = tx.get_certificate(serial)
            if rec is not None and cert_sha256 is not None and rec.cert_sha256 != cert_sha256:
                rec = None
            return self._status(rec, tx.get_status(serial), issuer_id)

    def _status(
        self, rec: CertificateRecord | None, st: StatusRecord | None, issuer_id: str
    ) -> CertStatus:
        return under_revoked_issuer(
            to_cert_status(rec, st, issuer_id), self.revoked_issuers.get(issuer_id)
        )

    # -- OCSP ---------------------------------------------------------------------------------

    def respond(self, request_der: bytes) -> bytes:
        """The DER OCSPResponse for a DER OCSPRequest; never raises on bad input.

        A sealed server answers from pre-signed responses; what it would have to sign
        gets ``tryLater`` (RFC 6960 §2.3)."""
        try:
            return self._respond(request_der)
        except Sealed:
            return ocsp.error_response(ocsp.ResponseStatus.TRY_LATER)
        except Exception as exc:
            # A database that cannot be used now: OCSP's own "try later" (RFC 6960 §2.3),
            # which an OCSP client understands, not an HTTP error it does not.
            full = storage_full_cause(exc)
            if full is not None:  # a pending status change could not be signed and stored
                log.error("OCSP: the storage is full (%s); answered tryLater", full)
                return ocsp.error_response(ocsp.ResponseStatus.TRY_LATER)
            cause = database_unavailable_cause(exc)
            if cause is None:
                raise
            why = " ".join(str(cause).split())[:300]  # one line: PostgreSQL's ends in \n
            log.error("OCSP: the database is unavailable (%s); answered tryLater", why)
            return ocsp.error_response(ocsp.ResponseStatus.TRY_LATER)

    def _respond(self, request_der: bytes) -> bytes:
        fast = self._pre_signed(request_der)
        if fast is not None:
            return fast
        try:
            info = ocsp.parse_request(request_der)
        except ocsp.MalformedRequest:
            return ocsp.error_response(ocsp.ResponseStatus.MALFORMED_REQUEST)
        responder = ocsp.match_issuer(self.responders.values(), info.cert_ids[0])
        if responder is None or any(not responder.answers_for(c) for c in info.cert_ids):
            return ocsp.error_response(ocsp.ResponseStatus.UNAUTHORIZED)
        issuer_id = self._by_responder[id(responder)]
        now = self.clock().replace(microsecond=0)
        # A revoked generation's answers are never stored: they only read (no write lock).
        begin = self.store.transaction
        if issuer_id in self.revoked_issuers:
            begin = getattr(self.store, "reading", None) or begin
        signed: list[bytes] = []
        try:
            with begin() as tx:
                if len(info.cert_ids) == 1 and info.nonce is None:
                    cert_id = info.cert_ids[0]
                    serial = cert_id.serial_number
                    if cert_id == responder.cert_id(serial) and cert_id.null_parameters:
                        try:
                            signed.append(self._canonical(tx, responder, issuer_id, serial, now))
                        except ValueError as exc:
                            return self._cannot_sign(issuer_id, exc)
                        return signed[0]
                answers = []
                cert_hashes: dict[int, bytes] = {}
                for cert_id in info.cert_ids:
                    serial = cert_id.serial_number
                    rec = tx.get_certificate(serial)
                    status = self._status(rec, tx.get_status(serial), issuer_id)
                    answers.append((cert_id, status))
                    digest = _recorded_hash(rec, issuer_id)
                    if digest is not None:
                        cert_hashes[serial] = digest
        except Exception as exc:
            # Signed from the committed status, but not stored (a full disk): the answer
            # stands; only its reuse is lost. tryLater was answered to the common request
            # with no nonce (emergency-plan probe, session 27).
            full = storage_full_cause(exc) if signed else None
            if full is None:
                raise
            tick = time.monotonic()
            if tick - self._said_not_stored >= 60:
                self._said_not_stored = tick
                log.error("OCSP: the storage is full (%s); answers are signed, not stored", full)
            return signed[0]
        try:
            until = now + self.policy.ocsp_validity
            return ocsp.build_response_multi(
                responder, answers, now, until, now, info.nonce, cert_hashes
            )
        except ValueError as exc:  # e.g. the responder certificate has expired: never a 500
            return self._cannot_sign(issuer_id, exc)

    def _cannot_sign(self, issuer_id: str, exc: ValueError) -> bytes:
        """``internalError`` for an answer the responder cannot sign (its certificate has
        expired, or is not valid yet), said in the log at most once a minute per issuer:
        the answer itself says nothing of why."""
        tick = time.monotonic()
        if tick - self._said_cannot_sign.get(issuer_id, -math.inf) >= 60:
            self._said_cannot_sign[issuer_id] = tick
            issuer = self.issuers.get(issuer_id)
            ended = issuer.certificate.not_valid_after_utc if issuer is not None else None
            if ended is not None and ended <= self.clock():
                remedy = f"the issuing CA expired at {ended:%Y-%m-%dT%H:%M:%SZ}, and with it "
                remedy += "every certificate it issued"
            else:
                remedy = "eport ca renew-responders --force makes new responder certificates"
            log.error(
                "OCSP: the responder of %s cannot sign (%s); answered internalError: %s",
                issuer_id,
                exc,
                remedy,
            )
        return ocsp.error_response(ocsp.ResponseStatus.INTERNAL_ERROR)

    def pre_signed(self, request_der: bytes) -> bytes | None:
        """The stored answer to a canonical request, or None (then :meth:`respond`)."""
        try:
            return self._pre_signed(request_der)
        except Exception:  # any doubt: the full path decides, and reports
            return None

    def _pre_signed(self, request_der: bytes) -> bytes | None:
        """The hot path: a canonical request answered from its stored pre-signed response
        (one read, no signature, no write lock); None sends it down the full path."""
        read = getattr(self.store, "read_ocsp", None)
        if read is None:
            return None
        hit = ocsp.canonical_request(request_der, self.responders.values())
        if hit is None:
            return None
        if self._by_responder[id(hit[0])] in self.revoked_issuers:
            return None  # its stored answers predate the CA's revocation: signed anew
        cached = read(hit[1])
        if cached is None:
            return None
        der, this_update = cached
        if not _current(this_update, self.clock(), self.policy.ocsp_validity / 2):
            return None  # due for re-signing: the full path stores a fresh one
        if not ocsp.names_cert_id(der, *hit):
            return None  # stored for the same serial of another issuer: the full path
        return bytes(der)

    def _canonical(
        self,
        tx: StatusTables,
        responder: ocsp.Responder,
        issuer_id: str,
        serial: int,
        now: datetime.datetime,
    ) -> bytes:
        """The pre-signed response for a SHA-1 CertID without nonce (the common request)."""
        rec = tx.get_certificate(serial)
        known = rec is not None and rec.issuer_id == issuer_id
        if issuer_id in self.revoked_issuers:
            # Signed on each request, never stored: a process that has not yet reloaded
            # the hierarchy may still store a good answer for it.
            known = False
        cached = tx.cached_ocsp(serial) if known else None
        if cached is not None:
            der, this_update, _ = cached
            if _current(this_update, now, self.policy.ocsp_validity / 2):
                return der
        status = self._status(rec, tx.get_status(serial), issuer_id)
        der = ocsp.build_response(
            responder,
            responder.cert_id(serial),
            status,
            now,
            now + self.policy.ocsp_validity,
            now,
            cert_hash=_recorded_hash(rec, issuer_id),
        )
        if known:
            # A refresh replaces only the response it read: a status change committed
            # meanwhile (another process, another host) stored the answer that must stay.
            tx.store_ocsp(
                serial,
                issuer_id,
                der,
                now,
                now + self.policy.ocsp_validity,
                replace=cached is not None,
                superseding=cached[1] if cached is not None else None,
            )
        return der

    def on_status_change(
        self, tx: Any, changes: Sequence[tuple[CertificateRecord, StatusRecord | None]]
    ) -> Callable[[], None] | None:
        """Replace the pre-signed OCSP responses of the changed certificates in the
        transaction of the change (a :data:`~ca.revocation.StatusListener`).

        One certificate: its new response is signed and stored here. Many (a cessation's
        operators): each stored response is replaced by a placeholder that is always due
        (:data:`RESIGN`), by one statement, and the returned work signs their new
        responses after the commit, outside the write lock. From the commit on, every
        process answers for them from the status row (the full path signs on demand), never
        from the response stored before.

        A sealed CA cannot sign: the change is recorded all the same (an RA officer
        revokes a compromised key before the custodians have gathered), with the
        placeholder; its responder answers ``tryLater`` for it until it is unsealed."""
        now = self.clock().replace(microsecond=0)
        if len(changes) == 1:
            rec, status = changes[0]
            responder = self.responders.get(rec.issuer_id)
            if responder is not None:
                try:
                    der = ocsp.build_response(
                        responder,
                        responder.cert_id(rec.serial),
                        self._status(rec, status, rec.issuer_id),
                        now,
                        now + self.policy.ocsp_validity,
                        now,
                        cert_hash=_recorded_hash(rec, rec.issuer_id),
                    )
                except Sealed:
                    tx.store_ocsp_many([(rec.serial, rec.issuer_id, b"", RESIGN, RESIGN)])
                    return None
                tx.store_ocsp(rec.serial, rec.issuer_id, der, now, now + self.policy.ocsp_validity)
            return None
        mine = [(rec, status) for rec, status in changes if rec.issuer_id in self.responders]
        tx.store_ocsp_many([(rec.serial, rec.issuer_id, b"", RESIGN, RESIGN) for rec, _ in mine])
        return functools.partial(self._resign, mine) if mine else None

    def _resign(self, changes: Sequence[tuple[CertificateRecord, StatusRecord | None]]) -> None:
        """Sign and store the responses :meth:`on_status_change` left due, a batch per short
        transaction; each replaces only its placeholder (one signed on demand meanwhile, or
        a later change's, stays). A failure leaves the rest due: answered on demand."""
        try:
            for i in range(0, len(changes), RESIGN_BATCH):
                now = self.clock().replace(microsecond=0)
                until = now + self.policy.ocsp_validity
                signed = []
                for rec, status in changes[i : i + RESIGN_BATCH]:
                    responder = self.responders[rec.issuer_id]
                    der = ocsp.build_response(
                        responder,
                        responder.cert_id(rec.serial),
                        self._status(rec, status, rec.issuer_id),
                        now,
                        until,
                        now,
                        cert_hash=_recorded_hash(rec, rec.issuer_id),
                    )
                    signed.append((rec.serial, rec.issuer_id, der, now, until))
                with self.store.transaction() as tx:
                    tx.store_ocsp_many(signed, superseding=RESIGN)
        except Exception:
            log.warning(
                "pre-signing the OCSP responses of %d changed certificates stopped; those "
                "left are signed when asked for",
                len(changes),
                exc_info=True,
            )

    # -- CRLs ---------------------------------------------------------------------------------

    def crl(self, issuer_id: str) -> bytes:
        """The issuer's current full CRL (DER), signed anew when stale or near nextUpdate."""
        issuer = self.issuers[issuer_id]
        now = self.clock().replace(microsecond=0)
        # The common case reads only (SQLite: no write lock, so a writer holding it does not
        # hold up relying parties); signing anew takes the write transaction below.
        read = getattr(self.store, "reading", None) or self.store.transaction
        with read() as tx:
            state = tx.crl_state(issuer_id)
            if state is not None and self._fresh(state, now):
                return bytes(state.der)
            last = (bytes(state.der), state.next_update) if state and state.der else None
        try:
            return self._sign_crl(issuer_id, issuer, now)
        except Exception as exc:
            # A full disk: the new CRL cannot be stored with its number, and one not stored
            # would be signed again under the same number. The last one stored is still a
            # valid CRL until its nextUpdate: served, and said in the log.
            full = storage_full_cause(exc)
            if full is None or last is None or last[1] is None or not now < last[1]:
                raise
            log.error(
                "CRL of %s: the storage is full (%s); served the last one signed", issuer_id, full
            )
            return last[0]

    def _sign_crl(self, issuer_id: str, issuer: IssuingCA, now: datetime.datetime) -> bytes:
        with self._crl_lock, self.store.transaction() as tx:
            tx.ensure_crl_state(issuer_id)
            state = tx.crl_state(issuer_id, for_update=True)
            # The time read again once the row is locked: a CRL another process signed
            # while this one waited for the lock is from after the ``now`` read before,
            # and was taken for one from before a clock step back, so signed again with an
            # older thisUpdate than its own (two-host probe, session 27: a later number
            # with an earlier date, which OpenSSL passes over for the older CRL).
            locked_at = self.clock()
            now = max(now, locked_at.replace(microsecond=0))
            if self._fresh(state, now):  # another process signed it meanwhile
                return bytes(state.der)
            # in milliseconds: ``now``, the thisUpdate, is whole seconds
            number = next_crl_number(int(state.crl_number), locked_at)
            try:
                der = build_crl(
                    issuer.certificate,
                    issuer.signer,
                    # An entry stays until a CRL issued after its certificate expired
                    # carried it (RFC 5280 §3.3): CRLs are re-signed at least every
                    # three quarters of crl_validity (the refresher, every 30 s by
                    # default), so those issued from notAfter + twice crl_validity on
                    # leave it out, and a CRL stops growing with every revocation ever
                    # made (probe of costly requests, F2). OCSP still answers for it.
                    (
                        _entry(st)
                        for st in tx.revoked_entries(
                            issuer_id, expired_before=now - 2 * self.policy.crl_validity
                        )
                    ),
                    number,
                    now,
                    now + self.policy.crl_validity,
                )
            except Sealed:
                if state.der is None:
                    raise
                return bytes(state.der)  # sealed: the last CRL signed is still the answer
            state.crl_number = number
            state.this_update = now
            state.next_update = now + self.policy.crl_validity
            state.der = der
            state.stale = False
            return der

    def _fresh(self, state: Any, now: datetime.datetime) -> bool:
        if state is None or state.der is None or state.stale or state.next_update is None:
            return False
        if state.this_update is not None and state.this_update > now:
            return False  # see _current: signed before the clock was stepped back
        return bool(now < state.next_update - self.policy.crl_validity / 4)

    def refresh(self) -> None:
        """Sign every stale or nearly expired CRL (the periodic refresher calls this)."""
        for issuer_id in self.issuers:
            self.crl(issuer_id)


def _current(
    this_update: datetime.datetime, now: datetime.datetime, keep: datetime.timedelta
) -> bool:
    """A stored response signed at ``this_update`` is still the answer at ``now``: less
    than ``keep`` old, and not from this host's future. After the clock was stepped back
    (a wrong time corrected, a host restored), a response or CRL signed before has a
    thisUpdate that relying parties take as not yet valid (OpenSSL refuses such a CRL
    outright); it was served until the clock caught up. Now it is signed again at once."""
    return this_update <= now < this_update + keep


def _entry(st: StatusRecord) -> RevokedEntry:
    reason = ReasonCode(st.reason) if st.reason is not None else None
    return RevokedEntry(
        serial=st.serial,
        revoked_at=st.revoked_at,
        reason=reason,
        invalidity_date=st.invalidity_date,
    )
