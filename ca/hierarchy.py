"""The joint CA's hierarchy on disk: a root and one issuing CA per subject class.

Layout under ``<data_dir>/ca/``::

    root.crt            the root certificate (self-signed, P-384)
    root.key            the root key, encrypted PKCS#8 (only ceremonies open it)
    issuers/<id>.crt    issuing CA certificates (pathLen 0), one per subject class
    issuers/<id>.key    their keys, sealed (encrypted PKCS#8) at rest

Every key access goes through :class:`~ca.signer.Signer`, so M-of-N custody and
PKCS#11 tokens replace the software signers without touching issuance.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca.errors import Sealed
from ca.issuance import CertificateFactory, IssuingCA, self_signed_root
from ca.keys import KeyType
from ca.policy import Policies
from ca.signer import SealedSigner, SoftwareSigner, seal_key, unseal_key

ROOT_NAME = "E-Port Joint Root CA"
ROOT_VALIDITY = datetime.timedelta(days=20 * 365)
ISSUING_NAMES = {
    "enterprise": "E-Port Enterprise Issuing CA",
    "agency": "E-Port Agency Issuing CA",
    "service": "E-Port Service Issuing CA",
}


@dataclass(frozen=True)
class Hierarchy:
    root: x509.Certificate
    issuers: dict[str, IssuingCA]

    @property
    def sealed(self) -> bool:
        return any(isinstance(i.signer, SealedSigner) for i in self.issuers.values())


def issuing_ids(policies: Policies) -> list[str]:
    return sorted({p.issuer for p in policies.profiles.values() if not p.ca})


def ca_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "ca"


def exists(data_dir: Path) -> bool:
    return (ca_dir(data_dir) / "root.crt").exists()


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)


def create(
    policies: Policies,
    data_dir: Path,
    *,
    root_passphrase: bytes,
    ca_passphrase: bytes,
    factory: CertificateFactory,
    now: datetime.datetime,
) -> Hierarchy:
    """The ceremony's key generation: root, then each issuing CA signed by the root.

    The root key is sealed to ``root_passphrase`` and dropped from memory when this
    returns; the issuing keys are sealed to ``ca_passphrase``.
    """
    d = ca_dir(data_dir)
    if exists(data_dir):
        raise FileExistsError(f"a CA hierarchy already exists in {d}")
    d.mkdir(parents=True, exist_ok=True)
    root_key = KeyType.P384.generate()
    root_signer = SoftwareSigner(root_key)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "E-Port Joint Certification Authority"),
            x509.NameAttribute(NameOID.COMMON_NAME, ROOT_NAME),
        ]
    )
    root_cert = self_signed_root(root_signer, subject, now, ROOT_VALIDITY)
    root = IssuingCA("root", root_cert, root_signer)
    profile = policies.profile("issuing-ca")
    issuers: dict[str, IssuingCA] = {}
    for issuer_id in issuing_ids(policies):
        key = KeyType.P256.generate()
        name = ISSUING_NAMES.get(issuer_id, f"E-Port {issuer_id.title()} Issuing CA")
        cert = factory.issue(profile, root, key.public_key(), {"ca_name": name}, now)
        seal_key(key, d / "issuers" / f"{issuer_id}.key", ca_passphrase)
        _write_cert(d / "issuers" / f"{issuer_id}.crt", cert)
        issuers[issuer_id] = IssuingCA(issuer_id, cert, SoftwareSigner(key))
    seal_key(root_key, d / "root.key", root_passphrase)
    _write_cert(d / "root.crt", root_cert)  # written last: its presence marks a complete init
    del root_key, root_signer, root
    return Hierarchy(root=root_cert, issuers=issuers)


def load(data_dir: Path, ca_passphrase: bytes | None) -> Hierarchy:
    """Read the hierarchy; without a passphrase the issuing keys stay sealed."""
    d = ca_dir(data_dir)
    if not exists(data_dir):
        raise Sealed(f"no CA hierarchy in {d}; run `eport ca init` or `eport serve --dev`")
    root = x509.load_pem_x509_certificate((d / "root.crt").read_bytes())
    issuers: dict[str, IssuingCA] = {}
    for crt in sorted((d / "issuers").glob("*.crt")):
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        issuer_id = crt.stem
        signer: SoftwareSigner | SealedSigner
        if ca_passphrase is None:
            signer = SealedSigner(cert.public_key())
        else:
            signer = unseal_key(crt.with_suffix(".key"), ca_passphrase)
        issuers[issuer_id] = IssuingCA(issuer_id, cert, signer)
    return Hierarchy(root=root, issuers=issuers)
