"""The token service's trust in the joint CA, reloaded when the CA's hierarchy changes.

The token service depends on the CA only through public files under ``<data_dir>/ca/``:
``root.crt``, ``issuers/*.crt`` (every issuing CA generation) and ``root.crl`` (the
root's CRL, signed at quorum ceremonies). From them it builds one immutable
:class:`TrustMaterial`: the trust anchors for path validation, the status source for
the same issuing CAs, and the issuing CAs revoked on the root CRL (RFC 5280 §6.3;
the check is :mod:`ca.trust`'s, which the CA's own signed requests use too).

A rollover (``eport ca rotate``) or a ``REVOKE-INTERMEDIATE`` ceremony rewrites these
files and then the generation file (:mod:`ca.generation`); :class:`LiveTrust` notices
(a few ``stat`` calls at most every second) and builds the new material, which every
request that starts afterwards uses as a whole: each request pins one snapshot, so its
chain validation and its status checks never mix two generations. On a host of its own
the files are copied, in whatever order: a change of the public files themselves is
noticed as well, so an issuing CA certificate copied after the generation file is taken
up a second later; a file not yet whole is one line in the log, the material loaded
before is kept. A certificate whose issuing CA is not among the copied files is refused
saying so.

A certificate under a revoked issuing CA is refused at login (its chain is refused
with the root CRL's reason), and its status reads ``Revoked`` with the CA's revocation
time and reason, so sessions opened with it end (and their access tokens stop
introspecting as active) at their next status check, within ``status_ttl``.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from authsvc.service import StatusSource
from ca import hierarchy
from ca.errors import Sealed, Unauthenticated
from ca.generation import GenerationWatch
from ca.ocsp import CertStatus
from ca.signedreq import TrustAnchors
from ca.trust import RevokedIssuer, RootCheckedAnchors, anchors_for, issued_by

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


@dataclass(frozen=True)
class TrustMaterial:
    """One generation of the hierarchy as the token service trusts it (immutable)."""

    generation: str
    anchors: RootCheckedAnchors
    """The root; every issuing CA generation not revoked on the root CRL (the revoked
    ones are refused by name, :mod:`ca.trust`)."""
    status: StatusSource
    """Answers for the same issuing CAs."""
    issuers: Mapping[str, x509.Certificate]
    """Every issuing CA generation by its id, revoked ones included (their certificates
    fail the chain check): which one issued a certificate is checked against its
    profile's issuer (:func:`authsvc.principal.identify`)."""
    root_crl: bytes = b""
    """The root CRL these anchors were checked against (DER), for ``/auth/health``."""

    @property
    def revoked(self) -> tuple[RevokedIssuer, ...]:
        """Issuing CAs revoked on the root CRL: id, certificate, revocation."""
        return self.anchors.revoked

    def status_of(self, cert: x509.Certificate) -> CertStatus:
        hit = self.anchors.revoked_issuer(cert)
        if hit is not None:
            return hit[1]  # RFC 5280 §6.3: a certificate under a revoked CA is revoked
        return self.status.status(cert)

    def verify_chain(
        self, leaf: x509.Certificate, now: datetime.datetime
    ) -> list[x509.Certificate]:
        try:
            return self.anchors.verify_chain(leaf, now)
        except Unauthenticated:
            if leaf.issuer not in {r.subject for r in self.anchors.roots} and not any(
                issued_by(leaf, ca) for ca in self.issuers.values()
            ):
                # the path builder's "candidates exhausted" says nothing of the cause: a
                # rollover's new generation not copied here (yet), or another CA's
                raise Unauthenticated(
                    "certificate is not trusted: it is issued by an issuing CA this token "
                    f"service does not have ({leaf.issuer.rfc4514_string()}): copy the CA's "
                    "issuers/*.crt if it is one of the CA's"
                ) from None
            raise


def build_material(data_dir: Path, status_for: StatusFactory, generation: str) -> TrustMaterial:
    """Raises ``ValueError`` for a root CRL the root did not sign (the caller keeps what
    it had)."""
    public = read_public(data_dir)
    anchors = anchors_for(public.root, public.issuers, public.root_crl)
    revoked = {i for i, _, _ in anchors.revoked}
    good = {i: c for i, c in public.issuers.items() if i not in revoked}
    return TrustMaterial(
        generation=generation,
        anchors=anchors,
        status=status_for(good),
        issuers=public.issuers,
        root_crl=public.root_crl,
    )


class LiveTrust:
    """The current :class:`TrustMaterial`, rebuilt when ``<data_dir>/ca/generation`` or
    one of the public files changes; a request pins one snapshot
    (:meth:`pin`/:meth:`unpin`)."""

    def __init__(self, data_dir: Path, status_for: StatusFactory, *, every: float = 1.0) -> None:
        self.data_dir = Path(data_dir)
        self.status_for = status_for
        # before reading the files; the files too: on another host they are copied
        self.watch = GenerationWatch(self.data_dir, every=every, files=True)
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
        """The latest material, reloaded first if the generation or the files changed."""
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


class LiveRemoteStatus(LiveStatus):
    """The remote CA's status source: by OCSP for each use; the session sweep reads the
    issuing CAs' CRLs instead (:meth:`ca.ocsp_client.OCSPStatusSource.not_good_on_crls`),
    so that it asks nothing per session."""

    def not_good_on_crls(
        self, serials: Iterable[int], certificate_of: Callable[[int], x509.Certificate | None]
    ) -> set[int]:
        status = self._live.current().status  # OCSPStatusSource; the protocol has neither
        on_crls: Callable[..., set[int]] = getattr(status, "not_good_on_crls")  # noqa: B009
        return on_crls(serials, certificate_of)
