"""The embedded development joint CA, created on the first ``eport serve --dev``.

Everything here is for development only and says so in its file names: the
passphrases that unseal the CA keys and the officers' keys are written in the
clear to ``<data_dir>/dev/DEV-ONLY-passphrases.toml``. Production uses
``eport ca init`` and custodians (M of N).
"""

from __future__ import annotations

import datetime
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca import hierarchy
from ca.authority import JointCA, _record
from ca.config import CAConfig
from ca.errors import EPortError
from ca.keys import KeyType
from ca.records import Event, EventType
from ca.signer import write_private

PASSPHRASE_FILE = "DEV-ONLY-passphrases.toml"
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class DevFiles:
    dev_dir: Path
    passphrases: Path
    officers: dict[str, Path]


def dev_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "dev"


def read_passphrases(data_dir: Path) -> dict[str, str]:
    path = dev_dir(data_dir) / PASSPHRASE_FILE
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    return {k: str(v) for k, v in data.items()}


def new_passphrases(data_dir: Path, member_ids: list[str]) -> dict[str, str]:
    values = {
        "root_key_passphrase": secrets.token_urlsafe(24),
        "ca_key_passphrase": secrets.token_urlsafe(24),
    }
    for mid in member_ids:
        values[f"officer_{mid}"] = secrets.token_urlsafe(18)
    lines = [
        "# DEVELOPMENT ONLY. These passphrases unseal the development CA's keys and the",
        "# development RA officers' keys. A production CA never writes such a file.",
    ]
    lines += [f'{k} = "{v}"' for k, v in values.items()]
    write_private(dev_dir(data_dir) / PASSPHRASE_FILE, ("\n".join(lines) + "\n").encode())
    return values


def record_hierarchy(ca: JointCA, h: hierarchy.Hierarchy, actor: str) -> None:
    """Store the CA certificates and log the ceremony (one transaction)."""
    now = ca.clock()
    with ca.store.transaction() as tx:
        root_rec = _record(h.root, "root", "root", None)
        tx.add_certificate(root_rec)
        tx.append_event(
            Event(
                type=EventType.CA_INITIALIZED,
                at=now,
                actor=actor,
                subject=root_rec.subject,
                profile="root",
                issuer="root",
                serial=root_rec.serial,
                cert_sha256=root_rec.cert_sha256,
                details={"role": "root"},
            )
        )
        for issuer_id, issuer in sorted(h.issuers.items()):
            rec = _record(issuer.certificate, "root", "issuing-ca", None)
            tx.add_certificate(rec)
            tx.append_event(
                Event(
                    type=EventType.CA_INITIALIZED,
                    at=now,
                    actor=actor,
                    subject=rec.subject,
                    profile="issuing-ca",
                    issuer="root",
                    serial=rec.serial,
                    cert_sha256=rec.cert_sha256,
                    details={"role": "issuing", "issuer_id": issuer_id},
                )
            )


def issue_officers(ca: JointCA, data_dir: Path, passphrases: dict[str, str]) -> dict[str, Path]:
    """One RA officer credential per member agency, through the ordinary RA flow."""
    out: dict[str, Path] = {}
    for member in ca.policies.members.members:
        app = ca.apply(
            "agency",
            {"agency_id": member.id, "person_name": f"{member.name} RA Officer (development)"},
            applicant="ceremony:dev-init",
        )
        grant = ca.approve_at_ceremony(app.id, "ceremony:dev-init")
        key = KeyType.P256.generate()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        issued = ca.enroll(grant.code, "agency", csr.public_bytes(serialization.Encoding.PEM))
        d = dev_dir(data_dir) / "officers" / member.id
        d.mkdir(parents=True, exist_ok=True)
        write_private(
            d / "officer.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(passphrases[f"officer_{member.id}"].encode()),
            ),
        )
        (d / "officer.pem").write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
        (d / "chain.pem").write_text(issued.chain_pem())
        write_private(
            d / "DEV-ONLY-passphrase.txt", (passphrases[f"officer_{member.id}"] + "\n").encode()
        )
        out[member.id] = d
    return out


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def ensure_dev_ca(cfg: CAConfig) -> DevFiles | None:
    """Create the development joint CA on first start; return its files if it was made now."""
    from sqlalchemy.orm import sessionmaker

    from ca.app import build_authority
    from ca.db import make_engine, upgrade
    from ca.policy import load_policies
    from ca.store import SqlStore

    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    upgrade(cfg.sqlalchemy_url)
    marker = dev_dir(cfg.data_dir) / COMPLETE_MARKER
    if marker.exists():
        return None
    if hierarchy.exists(cfg.data_dir) or (dev_dir(cfg.data_dir) / PASSPHRASE_FILE).exists():
        raise EPortError(
            f"{cfg.data_dir} holds an incomplete development CA (an earlier first start "
            "was interrupted); remove that directory and start again"
        )
    policies = load_policies(cfg.policies_dir)
    passphrases = new_passphrases(cfg.data_dir, [m.id for m in policies.members.members])
    engine = make_engine(cfg.sqlalchemy_url)
    try:
        store = SqlStore(sessionmaker(engine, expire_on_commit=False))
        from ca.issuance import CertificateFactory

        h = hierarchy.create(
            policies,
            cfg.data_dir,
            root_passphrase=passphrases["root_key_passphrase"].encode(),
            ca_passphrase=passphrases["ca_key_passphrase"].encode(),
            factory=CertificateFactory(),
            now=now_utc(),
        )
        authority = build_authority(cfg, policies, h, store)
        record_hierarchy(authority, h, "ceremony:dev-init")
        officers = issue_officers(authority, cfg.data_dir, passphrases)
    finally:
        engine.dispose()
    marker.write_text("development joint CA complete\n")
    return DevFiles(
        dev_dir=dev_dir(cfg.data_dir),
        passphrases=dev_dir(cfg.data_dir) / PASSPHRASE_FILE,
        officers=officers,
    )
