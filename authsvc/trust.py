"""The token service's trust in the joint CA, reloaded when the CA's hierarchy changes.

The token service depends on the CA only through public files under ``<data_dir>/ca/``:
``root.crt``, ``issuers/*.crt`` (every issuing CA generation) and ``root.crl`` (the
root's CRL, signed at quorum ceremonies). From them it builds one immutable
:class:`TrustMaterial`: the trust anchors for path validation, the status source for
the same issuing CAs, and the issuing CAs revoked on the root CRL (RFC 5280 §6.3).

A rollover (``eport ca rotate``) or a ``REVOKE-INTERMEDIATE`` ceremony rewrites these
files and then the generation file (:mod:`ca.generation`); :class:`LiveTrust` notices
(one ``stat`` at most every second) and builds the new material, which every request
that starts afterwards uses as a whole: each request pins one snapshot, so its chain
validation and its status checks never mix two generations.

A certificate under a revoked issuing CA is refused at login (its chain is refused
with the root CRL's reason), and its status reads ``Revoked`` with the CA's revocation
time and reason, so sessions opened with it end (and their access tokens stop
introspecting as active) at their next status check, within ``status_ttl``.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from authsvc.service import StatusSource
from ca import hierarchy
from ca.crl import ReasonCode
from ca.errors import Sealed, Unauthenticated
from ca.generation import GenerationWatch
from ca.ocsp import CertStatus, Revoked
from ca.signedreq import TrustAnchors

log = logging.getLogger("eport.auth")

StatusFactory = Callable[[Mapping[str, x509.Certificate]], StatusSource]
"""Issuing CA id → certificate, to the status source that answers for them."""


@dataclass(frozen=True)
class PublicHierarchy:
    """The CA's public files: what a token service needs and may copy to another host."""

    root: x509.Certificate
    issuers: dict[str, x509.Certificate]
    """Every issuing CA generation by its id (``enterprise``, ``enterprise-2``…)."""
    root_crl: bytes
    """The root's CRL, DER."""


def read_public(data_dir: Path) -> PublicHierarchy:
    d = hierarchy.ca_dir(data_dir)
    if not hierarchy.exists(data_dir):
        raise Sealed(f"no CA hierarchy in {d}; run `eport ca init` or `eport serve --dev`")
    return PublicHierarchy(
        root=x509.load_pem_x509_certificate((d / "root.crt").read_bytes()),
        issuers={
            crt.stem: x509.load_pem_x509_certificate(crt.read_bytes())
            for crt in sorted((d / "issuers").glob("*.crt"))
        },
        root_crl=(d / "root.crl").read_bytes(),
    )


def revoked_on_root_crl(public: PublicHierarchy) -> dict[str, Revoked]:
    """The issuing CAs the root CRL lists, with their revocation time and reason.

    The CRL must be the root's and verify under the root's key (RFC 5280 §6.3.3 (f),
    (g)); anything else raises ``ValueError`` and the caller keeps what it had."""
    crl = x509.load_der_x509_crl(public.root_crl)
    if crl.issuer != public.root.subject:
        raise ValueError("root.crl is not issued by the root")
    if not crl.is_signature_valid(public.root.public_key()):  # type: ignore[arg-type]
        raise ValueError("root.crl's signature does not verify under the root key")
    out: dict[str, Revoked] = {}
    for issuer_id, cert in public.issuers.items():
        if cert.issuer != public.root.subject:
            continue
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is None:
            continue
        reason: ReasonCode | None = None
        try:
            flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            reason = next((r for r in ReasonCode if r.rfc_name == flag.value), None)
        except x509.ExtensionNotFound:
            pass
        out[issuer_id] = Revoked(entry.revocation_date_utc, reason)
    return out


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` issued ``cert``: same name, then the key identifiers (RFC 5280
    §4.2.1.1; generations of one issuing CA share their name), else the signature."""
    if cert.issuer != ca.subject:
        return False
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        aki = ski = None  # type: ignore[assignment]
    if aki is not None and ski is not None and aki.key_identifier is not None:
        return aki.key_identifier == ski.digest
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class TrustMaterial:
    """One generation of the hierarchy as the token service trusts it (immutable)."""

    generation: str
    anchors: TrustAnchors
    """The root; every issuing CA generation not revoked on the root CRL."""
    status: StatusSource
    """Answers for the same issuing CAs."""
    revoked: tuple[tuple[str, x509.Certificate, Revoked], ...]
    """Issuing CAs revoked on the root CRL: id, certificate, revocation."""

    def revoked_issuer(self, cert: x509.Certificate) -> tuple[str, Revoked] | None:
        for issuer_id, ca, revocation in self.revoked:
            if issued_by(cert, ca):
                return issuer_id, revocation
        return None

    def status_of(self, cert: x509.Certificate) -> CertStatus:
        hit = self.revoked_issuer(cert)
        if hit is not None:
            return hit[1]  # RFC 5280 §6.3: a certificate under a revoked CA is revoked
        return self.status.status(cert)

    def verify_chain(
        self, leaf: x509.Certificate, now: datetime.datetime
    ) -> list[x509.Certificate]:
        hit = self.revoked_issuer(leaf)
        if hit is not None:
            issuer_id, revocation = hit
            why = f" ({revocation.reason.rfc_name})" if revocation.reason is not None else ""
            raise Unauthenticated(
                f"certificate is not trusted: its issuing CA {issuer_id} was revoked on the "
                f"root CRL{why}"
            )
        return self.anchors.verify_chain(leaf, now)


def build_material(data_dir: Path, status_for: StatusFactory, generation: str) -> TrustMaterial:
    public = read_public(data_dir)
    revoked = revoked_on_root_crl(public)
    good = {i: c for i, c in public.issuers.items() if i not in revoked}
    return TrustMaterial(
        generation=generation,
        anchors=TrustAnchors(roots=(public.root,), intermediates=tuple(good.values())),
        status=status_for(good),
        revoked=tuple((i, public.issuers[i], r) for i, r in sorted(revoked.items())),
    )


class LiveTrust:
    """The current :class:`TrustMaterial`, rebuilt when ``<data_dir>/ca/generation``
    changes; a request pins one snapshot (:meth:`pin`/:meth:`unpin`)."""

    def __init__(self, data_dir: Path, status_for: StatusFactory, *, every: float = 1.0) -> None:
        self.data_dir = Path(data_dir)
        self.status_for = status_for
        self.watch = GenerationWatch(self.data_dir, every=every)  # before reading the files
        self._material = build_material(self.data_dir, status_for, self.watch.token)
        self._local = threading.local()

    def _reload(self, token: str) -> None:
        material = build_material(self.data_dir, self.status_for, token)
        self._material = material  # one reference: new requests see all of it or none
        log.info(
            "token service: CA hierarchy reloaded (generation %s; %d issuing CAs trusted, "
            "%d revoked)",
            token,
            len(material.anchors.intermediates),
            len(material.revoked),
        )

    def refresh(self) -> TrustMaterial:
        """The latest material, reloaded first if the generation changed."""
        self.watch.poll(self._reload)
        return self._material

    def pin(self) -> None:
        """Use one snapshot for the rest of this thread's request."""
        self._local.material = self.refresh()

    def unpin(self) -> None:
        self._local.material = None

    def current(self) -> TrustMaterial:
        pinned: TrustMaterial | None = getattr(self._local, "material", None)
        return pinned if pinned is not None else self.refresh()


class LiveAnchors(TrustAnchors):
    """:class:`~ca.signedreq.TrustAnchors` that validate against the live material."""

    def __init__(self, live: LiveTrust) -> None:  # sets no dataclass field: all are live
        object.__setattr__(self, "_live", live)

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return self._live.current().anchors.roots

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        return self._live.current().anchors.intermediates

    def verify_chain(
        self, leaf: x509.Certificate, now: datetime.datetime
    ) -> list[x509.Certificate]:
        return self._live.current().verify_chain(leaf, now)

    def __repr__(self) -> str:
        return f"LiveAnchors({self._live.data_dir})"

    _live: LiveTrust


class LiveStatus:
    """The status source of the live material (remote CA: one OCSP request each)."""

    def __init__(self, live: LiveTrust) -> None:
        self._live = live

    def status(self, cert: x509.Certificate) -> CertStatus:
        return self._live.current().status_of(cert)


class LiveBatchStatus(LiveStatus):
    """The embedded CA's status source, which also answers in batches (the sweep)."""

    def not_good(self, serials: list[int]) -> set[int]:
        status = self._live.current().status  # StatusService; the protocol has no not_good
        batch: Callable[[list[int]], set[int]] = getattr(status, "not_good")  # noqa: B009
        return batch(serials)
