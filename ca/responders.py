"""Renewal of the delegated OCSP responder certificates (RFC 6960 §4.2.2.2).

Each issuing CA generation answers OCSP through one delegated responder
(``responders/<id>.crt``, its key sealed in ``responders/<id>.key``), made with the
``ocsp-responder`` profile: short-lived (90 days) because it carries
id-pkix-ocsp-nocheck (§4.2.2.2.1), so nobody checks its own status. An unsealed server
renews it before it expires: every worker's refresher checks the expiry dates it holds
(no I/O), and ``eport ca renew-responders [--force]`` asks for it on demand.

Renewal of one responder, under a file lock so one process does it:

1. a new P-256 key; the certificate is issued by the issuing CA through the same
   factory and linter as every certificate;
2. the key is sealed like the hierarchy's other keys (the seal KEK the unsealed worker
   holds, or the CA passphrase outside joint custody) beside its final place
   (``<id>.key.new``: the same sealing slot), the certificate likewise; when the
   current responder key is in a PKCS#11 token, the new one is generated in that
   token instead and ``<id>.key.new`` names it (:mod:`ca.keyhome`), so a token-held
   server renews without any seal KEK (a failed renewal deletes the new token key);
3. one database transaction stores the certificate and appends its
   ``certificate.issued`` event (the transparency log's event sink runs in it);
4. after the commit the old certificate is kept in ``responders/retired/`` and the
   key, then the certificate, are renamed into place;
5. the generation file is bumped once (:mod:`ca.generation`): every CA worker reloads
   the hierarchy, and so does the token service.

Responses already signed by the old responder stay valid until their nextUpdate:
each carries the old responder certificate, which is still valid for at least the
renewal window, and the pre-signed response is replaced by one from the new
responder when it is re-signed (after half its validity) or when the status changes.

Not renewed: a generation revoked on the root (its key is not trusted), an issuing
CA that has expired, and (unless forced) a responder that a new certificate would
not outlive because its issuing CA expires first.
"""

from __future__ import annotations

import datetime
import fcntl
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca import hierarchy
from ca.authority import certificate_record
from ca.errors import Sealed
from ca.issuance import CertificateFactory, IssuingCA
from ca.keyhome import discard_file, key_home
from ca.keys import KeyType
from ca.policy import Profile
from ca.records import Event, EventType, Store
from ca.sealing import KeySealer

RENEW_BEFORE = datetime.timedelta(days=30)
"""The default window: a responder expiring within it is renewed."""
ACTOR = "system:responder-renewal"
PROFILE = "ocsp-responder"
WHAT = "renewing an OCSP responder certificate"
RETIRED = "retired"


def _hex(serial: int) -> str:
    return format(serial, "x")


def renewal_due(
    responder: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime.datetime,
    window: datetime.timedelta,
    validity: datetime.timedelta,
) -> bool:
    """Whether ``responder`` expires within ``window`` and a new certificate from
    ``issuer`` (capped at the issuer's notAfter) would outlive it, or is not valid yet: one
    made while the clock ran ahead, then corrected, signs nothing until the clock catches
    up (every OCSP answer was ``internalError``), where a new one from now signs at once."""
    if responder.not_valid_before_utc > now:
        return issuer.not_valid_after_utc > now
    if responder.not_valid_after_utc - now >= window:
        return False
    return min(now + validity, issuer.not_valid_after_utc) > responder.not_valid_after_utc


def any_due(
    pairs: Iterable[tuple[x509.Certificate, x509.Certificate]],
    now: datetime.datetime,
    window: datetime.timedelta,
    validity: datetime.timedelta,
) -> bool:
    """The refresher's cheap check over (responder, issuer) certificates in memory."""
    return any(renewal_due(r, i, now, window, validity) for r, i in pairs)


@dataclass(frozen=True)
class Renewal:
    """One responder certificate replaced."""

    issuer_id: str
    certificate: x509.Certificate
    previous: x509.Certificate

    def to_json(self) -> dict[str, Any]:
        def when(dt: datetime.datetime) -> str:
            return dt.replace(microsecond=0).isoformat().replace("+00:00", "Z")

        return {
            "issuer": self.issuer_id,
            "serial": _hex(self.certificate.serial_number),
            "not_after": when(self.certificate.not_valid_after_utc),
            "previous_serial": _hex(self.previous.serial_number),
            "previous_not_after": when(self.previous.not_valid_after_utc),
        }


@dataclass(frozen=True)
class Outcome:
    renewed: tuple[Renewal, ...]
    skipped: dict[str, str]
    """Issuer id → why its responder was left as it is."""

    def to_json(self) -> dict[str, Any]:
        return {"renewed": [r.to_json() for r in self.renewed], "skipped": dict(self.skipped)}


class ResponderRenewal:
    """Renews the responders of ``issuers`` (generation id → issuing CA, unsealed)."""

    def __init__(
        self,
        *,
        data_dir: Path,
        issuers: Mapping[str, IssuingCA],
        factory: CertificateFactory,
        profile: Profile,
        store: Store,
        sealer: KeySealer | None,
        clock: Callable[[], datetime.datetime],
        window: datetime.timedelta = RENEW_BEFORE,
        bump: Callable[[Path], None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.issuers = issuers
        self.factory = factory
        self.profile = profile
        self.store = store
        self.sealer = sealer
        self.clock = clock
        self.window = window
        if bump is None:
            from ca.generation import bump_generation

            bump = bump_generation
        self.bump = bump

    @property
    def dir(self) -> Path:
        return hierarchy.ca_dir(self.data_dir) / "responders"

    def run(self, *, force: bool = False, actor: str = ACTOR) -> Outcome:
        """Renew every responder that is due (all of them with ``force``).

        Raises :class:`~ca.errors.Sealed` (503) when the server cannot make and store a
        key: an issuing CA key still sealed, or no sealer (a sealed server) for a
        responder whose key is not in a PKCS#11 token (:mod:`ca.keyhome`)."""
        if any(getattr(i.signer, "sealed", False) for i in self.issuers.values()):
            raise Sealed("renewing OCSP responder certificates needs an unsealed CA")
        if self.sealer is None:
            for issuer_id in self.issuers:
                key_home([self.dir / f"{issuer_id}.key"], None, WHAT)  # raises unless in a token
        renewed: list[Renewal] = []
        skipped: dict[str, str] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".renew.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process at a time; re-read under it
            try:
                for issuer_id in sorted(self.issuers):
                    why = self._renew_one(issuer_id, force, actor, renewed)
                    if why:
                        skipped[issuer_id] = why
            finally:
                if renewed:
                    self.bump(self.data_dir)
        return Outcome(tuple(renewed), skipped)

    def _revoked(self, issuer: IssuingCA) -> bool:
        with self.store.reading() as tx:
            return tx.get_status(issuer.certificate.serial_number) is not None

    def _renew_one(
        self, issuer_id: str, force: bool, actor: str, renewed: list[Renewal]
    ) -> str | None:
        issuer = self.issuers[issuer_id]
        crt = self.dir / f"{issuer_id}.crt"
        if not crt.exists():
            return "no responder certificate"
        current = x509.load_pem_x509_certificate(crt.read_bytes())  # as on disk now
        now = self.clock()
        if issuer.certificate.not_valid_after_utc <= now:
            return "the issuing CA has expired"
        if self._revoked(issuer):
            return "the issuing CA is revoked"
        if not force and not renewal_due(
            current, issuer.certificate, now, self.window, self.profile.validity
        ):
            return "not due"
        if _key_missing(issuer):
            return "the issuing CA's key is missing (emergency plan, section 7)"
        key_new = self.dir / f"{issuer_id}.key.new"
        crt_new = self.dir / f"{issuer_id}.crt.new"
        # The new key goes where the current one is: its token, or sealed like it.
        home = key_home([self.dir / f"{issuer_id}.key"], self.sealer, WHAT)
        key = home.new(KeyType.P256, key_new)  # same slot as <id>.key (ca.sealing.slot_of)
        try:
            cert = self.factory.issue(
                self.profile,
                issuer,
                key.public_key,
                {"ca_name": hierarchy.issuer_ca_name(issuer)},
                now,
            )
            key.store(key_new)
            crt_new.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            rec = certificate_record(cert, issuer_id, self.profile.name, None)
            with self.store.transaction() as tx:
                tx.add_certificate(rec)
                tx.append_event(
                    Event.about(
                        EventType.CERTIFICATE_ISSUED,
                        rec,
                        actor=actor,
                        at=now,
                        details={
                            "role": "ocsp-responder",
                            "renews": _hex(current.serial_number),
                            "trigger": "forced"
                            if force
                            else "not-yet-valid"
                            if current.not_valid_before_utc > now
                            else "expiring",
                        },
                    )
                )
        except BaseException:
            key_new.unlink(missing_ok=True)
            crt_new.unlink(missing_ok=True)
            key.discard()
            raise
        retired = self.dir / RETIRED
        retired.mkdir(exist_ok=True)
        (retired / f"{issuer_id}-{_hex(current.serial_number)}.crt").write_bytes(crt.read_bytes())
        os.replace(key_new, self.dir / f"{issuer_id}.key")
        os.replace(crt_new, crt)
        renewed.append(Renewal(issuer_id, cert, current))
        return None


def _key_missing(issuer: IssuingCA) -> bool:
    """Whether ``issuer``'s key is lost: a key file that did not open when the others did,
    or a PKCS#11 token key the token no longer holds (looked for again at most every
    :data:`ca.pkcs11.MISSING_RECHECK` seconds). A generation whose key was lost cannot
    sign a responder certificate; the others are renewed."""
    from ca.pkcs11 import KeyMissing, Pkcs11Signer

    if getattr(issuer.signer, "lost", None):  # a key file that did not open
        return True
    if not isinstance(issuer.signer, Pkcs11Signer):
        return False
    try:
        issuer.signer.check()
    except KeyMissing:
        return True
    return False


def settle(data_dir: Path) -> list[str]:
    """Finish or undo a renewal that a crash cut short (at start, before loading).

    The key is renamed into place before the certificate: a ``<id>.crt.new`` without
    its ``.key.new`` means the key is already in place, so the certificate follows it
    (roll forward). Both ``.new`` files present: the renewal had not moved anything;
    they are removed (a committed issuance then stays logged, never deployed) and the
    next check renews again. Returns the issuer ids it touched."""
    d = hierarchy.ca_dir(data_dir) / "responders"
    if not d.is_dir():
        return []
    touched: list[str] = []
    with open(d / ".renew.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for crt_new in sorted(d.glob("*.crt.new")):
            issuer_id = crt_new.name.removesuffix(".crt.new")
            key_new = d / f"{issuer_id}.key.new"
            if key_new.exists():
                discard_file(key_new)
                crt_new.unlink()
            else:
                os.replace(crt_new, d / f"{issuer_id}.crt")
            touched.append(issuer_id)
        for key_new in sorted(d.glob("*.key.new")):  # crashed before the certificate
            discard_file(key_new)
            touched.append(key_new.name.removesuffix(".key.new"))
    return touched
