"""The initialization ceremony: hierarchy, its record in the log, first RA officers.

Shared by ``eport ca init`` (passphrases from the custodians) and the embedded
development default (``eport serve --dev``, passphrases generated and written to a
clearly named dev-only file). Every certificate made here goes through the same
factory and linter as any other, and every step is an event.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy.orm import sessionmaker

from ca import hierarchy, pkcs8, translog
from ca.authority import JointCA, certificate_record
from ca.config import CAConfig
from ca.custody import Established, Purpose
from ca.db import ANOTHER_CA, make_engine, upgrade
from ca.errors import Conflict, Sealed
from ca.issuance import CertificateFactory, IssuingCA
from ca.keys import KeyType
from ca.pkcs11 import TokenKeys
from ca.policy import Policies, SubjectClass
from ca.privatefiles import make_data_dir
from ca.records import Event, EventType
from ca.sealing import KeySealer
from ca.signer import write_private
from ca.stopping import STOPS, signal_handlers
from ca.store import SqlStore


@dataclass(frozen=True)
class Initialized:
    hierarchy: hierarchy.Hierarchy
    officers: dict[str, Path]
    """Member id → directory with officer.pem, officer.key (encrypted), chain.pem."""


def record_hierarchy(
    ca: JointCA, h: hierarchy.Hierarchy, actor: str, data_dir: Path | None = None
) -> None:
    """Store the CA certificates and log the ceremony (one transaction).

    Refused (:class:`Conflict`, nothing stored) when the database holds events already:
    one database holds one CA. :func:`ca.db.other_ca_records` said so before the keys
    were made, but two first starts on one empty database at once (two hosts started
    together) both pass that check; here, under the lock every log append takes first,
    the later of the two sees the events of the one that committed."""
    now = ca.clock()
    with ca.store.transaction() as tx:
        tx.hold_issuance()
        if tx.holds_events():
            raise Conflict(
                f"the database {ANOTHER_CA}; another CA was recorded in it while this one's "
                f"keys were made, so the new hierarchy in {hierarchy.ca_dir(data_dir or Path())}"
                " is recorded nowhere: remove it (and dev/ beside it, for a development CA)"
            )
        entries = [(h.root, "root", "root", {"role": "root"})]
        entries += [
            (i.certificate, "root", "issuing-ca", {"role": "issuing", "issuer_id": iid})
            for iid, i in sorted(h.issuers.items())
        ]
        # The OCSP responders too (delegated, no-check signers): their renewals and a
        # rotation's are logged, and these were not (revocation probe, F4).
        entries += [
            (r.certificate, iid, "ocsp-responder", {"role": "ocsp-responder"})
            for iid, r in sorted(h.responders.items())
        ]
        for cert, issuer, profile, details in entries:
            rec = certificate_record(cert, issuer, profile, None)
            tx.add_certificate(rec)
            tx.append_event(
                Event.about(EventType.CA_INITIALIZED, rec, actor=actor, at=now, details=details)
            )


def issue_officers(
    ca: JointCA,
    out_dir: Path,
    passphrase_of: Callable[[str], bytes],
    actor: str,
    label: str = "",
    *,
    subject_class: str = "agency",
    role: str = "RA Officer",
    file_stem: str = "officer",
) -> dict[str, Path]:
    """One credential per member agency (RA officers by default, or auditors), issued
    through the ordinary RA flow: application, approval at the ceremony, enrollment."""
    out: dict[str, Path] = {}
    profile = ca.policies.profiles_of(SubjectClass(subject_class))[0].name
    for member in ca.policies.members.members:
        app = ca.apply(
            subject_class,
            {"agency_id": member.id, "person_name": f"{member.name} {role}{label}"},
            applicant=actor,
        )
        grant = ca.approve_at_ceremony(app.id, actor)
        key = KeyType.P256.generate()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        issued = ca.enroll(grant.code, profile, csr.public_bytes(serialization.Encoding.PEM))
        d = out_dir / member.id
        d.mkdir(parents=True, exist_ok=True)
        write_private(
            d / f"{file_stem}.key",
            pkcs8.encrypt(key, passphrase_of(member.id)),
        )
        (d / f"{file_stem}.pem").write_bytes(
            issued.certificate.public_bytes(serialization.Encoding.PEM)
        )
        (d / "chain.pem").write_text(issued.chain_pem())
        out[member.id] = d
    return out


def custody_signer(data_dir: Path) -> Callable[[IssuingCA], None]:
    """What the init ceremony does with the new root before ``root.crt`` is written:
    sign the custody record written first, durably."""
    from ca import custody_files, custody_signature

    def sign(root: IssuingCA) -> None:
        record = custody_files.record_path(data_dir).read_bytes()
        custody_files.write_durably(
            custody_signature.signature_path(data_dir),
            custody_signature.sign_record(root.signer, root.certificate, record),
        )

    return sign


def initialize(
    cfg: CAConfig,
    policies: Policies,
    *,
    root_passphrase: bytes | KeySealer | None = None,
    ca_passphrase: bytes | KeySealer | None = None,
    officer_passphrase: Callable[[str], bytes],
    officer_dir: Path,
    actor: str,
    officer_label: str = "",
    auditor_dir: Path | None = None,
    custody_set: Established | None = None,
    token: TokenKeys | None = None,
    command: str = "eport ca init",
    out: Path | None = None,
    finish: bool = True,
    made: Sequence[Path] = (),
) -> Initialized:
    """Create the hierarchy in ``cfg.data_dir``, log it, and issue the first officers.

    The init is marked unfinished (:func:`ca.hierarchy.begin_init`, naming ``command``,
    the ceremony directory ``out`` and the paths the caller's run ``made``) before anything
    is made, and complete once all
    of it is written and committed; with ``finish=False`` the caller marks it complete
    (:func:`ca.hierarchy.finish_init`) after writing its own files.

    With ``custody_set`` the root key is wrapped by its root KEK and the other CA keys
    by its seal KEK, the public custody record is written beside the hierarchy, signed
    by the root (:mod:`ca.custody_signature`) and logged; the caller writes the share
    files and wipes the KEKs. With ``token`` the keys it holds are made in that PKCS#11
    token instead (:mod:`ca.pkcs11`).
    """
    from ca import custody_files
    from ca.app import build_authority

    if custody_set is not None:
        sealers = custody_files.sealers(custody_set.record, dict(custody_set.keks))
        root_passphrase, ca_passphrase = sealers[Purpose.ROOT], sealers[Purpose.SEAL]
    if root_passphrase is None or ca_passphrase is None:
        raise ValueError("initialize needs passphrases or a custody set")
    if hierarchy.exists(cfg.data_dir):
        raise FileExistsError(f"a CA hierarchy already exists in {cfg.data_dir}")
    hierarchy.begin_init(cfg.data_dir, command, out, made)
    if custody_set is not None:  # before the hierarchy, whose root signs it
        custody_files.write_record(cfg.data_dir, custody_set.record)

    make_data_dir(Path(cfg.data_dir))
    upgrade(cfg.sqlalchemy_url)
    engine = make_engine(cfg.sqlalchemy_url)
    try:
        store = SqlStore(
            sessionmaker(engine, expire_on_commit=False), event_sinks=(translog.append_event,)
        )
        h = hierarchy.create(
            policies,
            cfg.data_dir,
            root_passphrase=root_passphrase,
            ca_passphrase=ca_passphrase,
            factory=CertificateFactory(public_base_url=cfg.certificate_base_url),
            now=datetime.datetime.now(datetime.UTC),
            token=token,
            root_signs=None if custody_set is None else custody_signer(cfg.data_dir),
        )
        authority = build_authority(cfg, policies, h, store)
        record_hierarchy(authority, h, actor, Path(cfg.data_dir))
        if custody_set is not None:
            custody_files.record_custody(authority, custody_set.record, h.root, actor)
        officers = issue_officers(authority, officer_dir, officer_passphrase, actor, officer_label)
        if custody_set is not None:
            # Sign each issuer's first CRL now: a sealed server serves what is signed.
            from ca.status import StatusService

            StatusService(
                issuers=h.issuers, responders=h.responders, store=store, clock=authority.clock
            ).refresh()
        if auditor_dir is not None:
            issue_officers(
                authority,
                auditor_dir,
                officer_passphrase,
                actor,
                officer_label,
                subject_class="auditor",
                role="Auditor",
                file_stem="auditor",
            )
        _name_the_log(cfg, h, store)
    finally:
        engine.dispose()
    if finish:
        hierarchy.finish_init(cfg.data_dir)
    return Initialized(h, officers)


@dataclass(frozen=True)
class Unwind:
    """What a first init is about to make that does not exist yet, outermost first:
    what it removes when it fails or is interrupted before it completes. Nothing that
    existed before it started is removed, and nothing once it completed."""

    new: tuple[Path, ...]

    @classmethod
    def of(cls, *paths: Path) -> Unwind:
        return cls(tuple(p for p in paths if not os.path.lexists(p)))

    def outermost(self) -> list[Path]:
        """``new`` without the paths inside another of it: what to name for removal."""
        return [p for p in self.new if not any(p != q and p.is_relative_to(q) for q in self.new)]

    def remove(self) -> list[Path]:
        """Remove what of ``new`` is there now (a directory with all in it); the paths
        removed, each under none of the others. Ctrl-C does not cut it short."""
        removed: list[Path] = []
        with _uninterrupted():
            for path in self.new:
                if any(path.is_relative_to(r) for r in removed) or not os.path.lexists(path):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                if not os.path.lexists(path):
                    removed.append(path)
        return removed


def _name_the_log(cfg: CAConfig, h: hierarchy.Hierarchy, store: SqlStore) -> None:
    """Sign the log's first checkpoint now, with the origin of the base URL this CA is
    made for (``EPORT_PUBLIC_BASE_URL``, as its certificates carry it). The log keeps the
    origin of its first checkpoint for life (auditors pin it with the key), and that one
    was signed lazily, by whichever host an auditor asked first: a second host started
    without the setting named it ``127.0.0.1:9141/log`` for good (race probe, session 24).
    Under custody with the log key out of reach, the first server to sign names it, as
    before."""

    signer = translog.CheckpointSigner(translog.origin_for(cfg.public_base_url), h.log_signer)
    s = store.session_factory()
    try:
        signer.latest(s)
        s.commit()
    except Sealed:
        s.rollback()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP ignored for the block (in the main thread: the only one
    signals reach), so that a second signal does not cut the removal short."""
    with signal_handlers((signal.SIGINT, *STOPS), signal.SIG_IGN):
        yield
