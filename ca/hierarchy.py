"""The joint CA's hierarchy on disk: a root and one issuing CA per subject class.

Layout under ``<data_dir>/ca/``::

    root.crt              the root certificate (self-signed, P-384)
    root.key              the root key, wrapped by the custody root KEK (only a quorum
                          ceremony opens it), or encrypted PKCS#8 (development CA)
    custody.json          the public custody record: share fingerprints, threshold, checks
    custody.json.sig      the root's signature of it (:mod:`ca.custody_signature`)
    issuers/<id>.crt      issuing CA certificates (pathLen 0), one per subject class
    issuers/<id>.key      their keys, sealed at rest (seal KEK, or a passphrase in dev)
    responders/<id>.crt   each issuing CA's delegated OCSP responder (RFC 6960 §4.2.2.2)
    responders/<id>.key   its key, sealed
    log.pub, log.key      the Ed25519 key of the transparency log's checkpoints (sealed)
    issuers/active.json   after a rollover: issuer id → the generation that issues now
    issuers/active.json.sig  the root's signature of it, in order (:mod:`ca.active_signature`)
    root.crl              the root's CRL (DER), signed at ceremonies
    init.unfinished       only while the init ceremony runs (:func:`begin_init`): a CA
                          whose init was cut short keeps it and is never served

Every key access goes through :class:`~ca.signer.Signer`, so M-of-N custody and
PKCS#11 tokens replace the software signers without touching issuance.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca.crl import build_crl
from ca.errors import EPortError, Sealed
from ca.issuance import MIN_ISSUED_VALIDITY, CertificateFactory, IssuingCA, self_signed_root
from ca.keys import KeyType
from ca.policy import EVERY_ISSUER, Policies, Profile
from ca.sealing import KeySealer, sealer_of
from ca.signer import SealedSigner, Signer, SoftwareSigner

if TYPE_CHECKING:
    from ca.pkcs11 import TokenKeys

ROOT_NAME = "E-Port Joint Root CA"
ROOT_VALIDITY = datetime.timedelta(days=20 * 365)
ROOT_CRL_VALIDITY = datetime.timedelta(days=365)
ROOT_CRL_NOTICE = datetime.timedelta(days=30)
"""How long before the root CRL's nextUpdate the server starts warning: only a quorum
ceremony (ROOT-CRL) can sign the next one, and custodians need time to meet."""
ACTIVE_FILE = "active.json"
ISSUING_NAMES = {
    "enterprise": "E-Port Enterprise Issuing CA",
    "agency": "E-Port Agency Issuing CA",
    "service": "E-Port Service Issuing CA",
}


@dataclass(frozen=True)
class Hierarchy:
    root: x509.Certificate
    root_crl: bytes
    """The root's CRL, DER (signed at the last ceremony)."""
    issuers: dict[str, IssuingCA]
    responders: dict[str, IssuingCA]
    """Issuing CA id → its delegated OCSP responder certificate and signer."""
    log_signer: Signer
    """The Ed25519 key that signs the transparency log's checkpoints."""
    active: Mapping[str, str] = field(default_factory=dict)
    """Issuer id → the generation (an id in ``issuers``) new certificates come from;
    empty string: none (its CA was revoked). Written by a rollover ceremony."""

    def issuing(self) -> dict[str, IssuingCA]:
        """The issuing CAs by the ids profiles name, rollovers applied; every generation
        also stays under its own id (for its CRLs, OCSP responses and chains)."""
        out = dict(self.issuers)
        for alias, gen in self.active.items():
            if gen in self.issuers:
                out[alias] = self.issuers[gen]
            else:
                out.pop(alias, None)
        return out

    def unavailable(self) -> dict[str, str]:
        """Issuer id → the generation ``active`` names for it that this host does not
        have (a rollover ran on another host and its new key is there alone)."""
        return {a: g for a, g in self.active.items() if g and g not in self.issuers}

    @property
    def sealed(self) -> bool:
        return any(getattr(i.signer, "sealed", False) for i in self.issuers.values())

    def missing_keys(self, *, dev: bool = False) -> dict[str, str]:
        """Key slot (``issuers/enterprise-2``) → what operators must hear, for each CA key
        this process found lost: missing from its PKCS#11 token
        (:class:`ca.pkcs11.KeyMissing`), or its key file missing, unreadable or damaged
        while the others opened (:meth:`ca.signer.SealedSigner.lose`); what no longer
        works, and what replaces the key. ``dev``: a development CA, which has no
        custodians for a rollover. Answered without asking a token."""
        issuing = self.issuing()
        out: dict[str, str] = {}
        for gen, ca in sorted(self.issuers.items()):
            lost = _how_lost(ca.signer)
            if lost is None:
                continue
            where, restore = lost
            base = generation_base(gen)
            if issuing.get(base) is not ca:
                out[f"issuers/{gen}"] = (
                    f"the key of issuing CA generation {gen}, which no longer issues, {where}: "
                    f"its CRL is not signed again and its OCSP responder cannot be renewed; "
                    f"{restore} and restart, or, once its certificates are renewed, revoke the "
                    f"generation (eport ca ceremony start REVOKE-INTERMEDIATE issuer={gen}); "
                    f"{EMERGENCY_PLAN}"
                )
            elif dev:
                out[f"issuers/{gen}"] = (
                    f"the key of issuing CA {gen} {where}: enrollments and renewals of its "
                    f"profiles are refused (503 key-missing); a development CA has no "
                    f"custodians for the rollover that would replace it: stop the server, "
                    f"remove its data directory and start again for a new development CA"
                )
            else:
                out[f"issuers/{gen}"] = (
                    f"the key of issuing CA {gen} {where}: enrollments and renewals of its "
                    f"profiles are refused (503 key-missing) and its CRL is not signed again; "
                    f"{restore} and restart, or replace the generation by a rollover ceremony "
                    f"(eport ca rotate {base}); {EMERGENCY_PLAN}"
                )
        for gen, responder in sorted(self.responders.items()):
            lost = _how_lost(responder.signer)
            if lost is not None:
                out[f"responders/{gen}"] = (
                    f"the OCSP responder key of issuing CA {gen} {lost[0]}: OCSP requests "
                    f"that need a new signature get tryLater; `eport ca renew-responders "
                    f"--force` makes a new responder key; {EMERGENCY_PLAN}"
                )
        lost = _how_lost(self.log_signer)
        if lost is not None:
            where, restore = lost
            replace = (
                "a development CA has no custodians for the ceremony that would replace it: "
                "stop the server, remove its data directory and start again for a new "
                "development CA"
                if dev
                else f"{restore} and restart, or replace the key by the ceremony the root "
                "quorum vouches for (eport ca ceremony start REPLACE-LOG-KEY)"
            )
            out["log"] = (
                f"the transparency log's key {where}: no checkpoint is signed anew (auditors "
                f"get the newest one signed; issuance and its log entries go on); {replace}; "
                f"{EMERGENCY_PLAN}"
            )
        return out

    @property
    def log_public_key(self) -> object:
        return self.log_signer.public_key()


def issuing_profile(policies: Policies, issuer_id: str) -> Profile:
    """The ``issuing-ca`` profile for the issuing CA ``issuer_id``, asserting the policy
    OIDs of every profile it issues (those naming it, and those of every issuer: the OCSP
    responder's), in file order. It asserted only its own OID, so policy-aware path
    validation (RFC 5280 §6.1, ``openssl verify -policy P -explicit_policy``) found no
    valid policy for any certificate (key-type probe, F9)."""
    base = policies.profile("issuing-ca")
    issued = [
        oid
        for p in policies.profiles.values()
        if not p.ca and p.issuer in (issuer_id, EVERY_ISSUER)
        for oid in p.policy_oids
    ]
    if not issued:
        return base
    return dataclasses.replace(base, policy_oids=tuple(dict.fromkeys(issued)))


def generation_base(generation: str) -> str:
    """The issuer id profiles name for an issuing CA generation: ``enterprise`` for
    ``enterprise`` and ``enterprise-2`` (a base id has no hyphen: :mod:`ca.root_ops`)."""
    base, sep, n = generation.rpartition("-")
    return base if sep and n.isdigit() else generation


EMERGENCY_PLAN = "docs/emergency-plan.md §7"


def _how_lost(signer: Signer) -> tuple[str, str] | None:
    """For a key this process found lost: where it went missing, and how it comes back."""
    why = getattr(signer, "lost", None)
    if why:  # a key file (ca.signer.SealedSigner.lose)
        return f"cannot be opened ({why})", "restore the key file from the data directory's backup"
    if getattr(signer, "missing", False):  # ca.pkcs11.Pkcs11Signer
        return "is missing from its PKCS#11 token", "put the key back from the token's backup"
    return None


def log_key_lost(h: Hierarchy) -> bool:
    """Whether this process found the log key lost (its file, or in its token)."""
    return _how_lost(h.log_signer) is not None


def issuing_ids(policies: Policies) -> list[str]:
    return sorted(
        {p.issuer for p in policies.profiles.values() if not p.ca and p.issuer != EVERY_ISSUER}
    )


def ca_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "ca"


def exists(data_dir: Path) -> bool:
    """``root.crt`` is there: a CA, or what an init that did not finish left (for that,
    :func:`unfinished_init`)."""
    return (ca_dir(data_dir) / "root.crt").exists()


UNFINISHED_FILE = "init.unfinished"
"""Written durably before the init ceremony makes anything in ``ca/``, removed durably
once everything is written and committed (keys, database records, custody record, first
officers and CRLs, the ceremony's own files): ``root.crt`` is written before the
database records and the officers, so it cannot mark a complete init. A CA made by an
earlier release has no such file and is complete (:func:`ca.db.unrecorded_root` tells
one of those that was cut short)."""


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def begin_init(
    data_dir: Path, command: str, out: Path | None = None, made: Sequence[Path] = ()
) -> None:
    """Mark the init ceremony of ``data_dir`` as started (``command``: what runs it;
    ``out``: where it writes its own files; ``made``: the paths it is about to create,
    none of which exists yet), durably, before it makes anything there."""
    from ca.privatefiles import make_data_dir
    from ca.signer import write_private

    make_data_dir(Path(data_dir))
    d = ca_dir(data_dir)
    d.mkdir(mode=0o700, exist_ok=True)
    note: dict[str, Any] = {
        "command": command,
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if out is not None:
        note["out"] = str(Path(out).absolute())
    if made:
        # what a kill -9 leaves for the next run to name: only these, never the files
        # that were there before (a data or --out directory of the user's own)
        note["made"] = [str(Path(p).absolute()) for p in made]
    write_private(d / UNFINISHED_FILE, (json.dumps(note) + "\n").encode())
    _sync_dir(d)


def finish_init(data_dir: Path) -> None:
    """The init ceremony's last step: the CA is complete (durably)."""
    d = ca_dir(data_dir)
    (d / UNFINISHED_FILE).unlink(missing_ok=True)
    _sync_dir(d)


def unfinished_init(data_dir: Path) -> dict[str, Any] | None:
    """What :func:`begin_init` noted, if the init ceremony of ``data_dir`` started and
    did not finish (interrupted, killed, or failed); None otherwise."""
    path = ca_dir(data_dir) / UNFINISHED_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        note = json.loads(text)
    except ValueError:  # torn: the note is only for the message
        return {}
    if not isinstance(note, dict):
        return {}
    made = note.pop("made", None)
    kept: dict[str, Any] = {str(k): str(v) for k, v in note.items()}
    if isinstance(made, list) and all(isinstance(p, str) for p in made):
        kept["made"] = [Path(p) for p in made]
    return kept


def _listed(paths: Sequence[Path]) -> str:
    names = [str(p) for p in paths]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def unfinished_init_advice(data_dir: Path) -> str | None:
    """One sentence on an init of ``data_dir`` that did not finish and what to do (None
    if none): remove what it left, and run it again. Nothing of it was ever served."""
    note = unfinished_init(data_dir)
    if note is None:
        return None
    command = note.get("command", "eport ca init")
    started = f" (started {note['started']})" if "started" in note else ""
    out = note.get("out")
    # (`eport ca init` only) the paths it made (outermost only, as noted) still there:
    # what existed before it, a data or --out directory of the user's own, is not among
    # them ("remove the --out directory" was "remove ." for `--out .`)
    made = [p for p in note.get("made", []) if os.path.lexists(p)]
    if made:
        return (
            f"an earlier `{command}` of {data_dir}{started} did not finish (interrupted or "
            f"failed): what it made is an incomplete CA, never served; remove {_listed(made)} "
            "and run `eport ca init` again (only those: none of them was there before it)"
        )
    if command == "eport serve --dev":
        return (
            f"the first start of `eport serve --dev` in {data_dir}{started} did not finish "
            f"making its development CA: remove {data_dir} and start again"
        )
    left = f"{data_dir}" + (f" (and share files in {out})" if out else "")
    remove = f"{data_dir}" + (f" and {out}" if out else " and that init's --out directory")
    return (
        f"an earlier `{command}` of {data_dir}{started} did not finish (interrupted or "
        f"failed): it left an incomplete CA in {left}, never served; remove {remove} and "
        "run `eport ca init` again"
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)


def create(
    policies: Policies,
    data_dir: Path,
    *,
    root_passphrase: bytes | KeySealer,
    ca_passphrase: bytes | KeySealer,
    factory: CertificateFactory,
    now: datetime.datetime,
    token: TokenKeys | None = None,
    root_signs: Callable[[IssuingCA], None] | None = None,
) -> Hierarchy:
    """The ceremony's key generation: root, then each issuing CA signed by the root.

    The root key is sealed to ``root_passphrase`` (a passphrase, or the custody root
    KEK's sealer) and dropped from memory when this returns; the issuing keys are
    sealed to ``ca_passphrase`` (a passphrase, or the seal KEK's sealer). With
    ``token``, the keys it holds are made in that PKCS#11 token instead and their key
    files only name them (:mod:`ca.pkcs11`). ``root_signs`` is called with the root
    (certificate and signer) before ``root.crt`` is written, for anything else the
    ceremony signs with the root key (the custody record's signature).
    """
    root_sealer, ca_sealer = sealer_of(root_passphrase), sealer_of(ca_passphrase)
    d = ca_dir(data_dir)
    if exists(data_dir):
        raise FileExistsError(f"a CA hierarchy already exists in {d}")
    d.mkdir(parents=True, exist_ok=True)

    def new_signer(kt: KeyType, path: Path) -> Signer:
        if token is not None and token.holds(path):
            return token.generate(kt, path)
        key = kt.generate()
        ca_sealer.seal(key, path)
        return SoftwareSigner(key)

    root_key = None
    if token is not None and token.holds(d / "root.key"):
        root_signer: Signer = token.generate(KeyType.P384, d / "root.key")
    else:
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
    issuers: dict[str, IssuingCA] = {}
    for issuer_id in issuing_ids(policies):
        signer = new_signer(KeyType.P256, d / "issuers" / f"{issuer_id}.key")
        name = ISSUING_NAMES.get(issuer_id, f"E-Port {issuer_id.title()} Issuing CA")
        profile = issuing_profile(policies, issuer_id)
        cert = factory.issue(profile, root, signer.public_key(), {"ca_name": name}, now)
        _write_cert(d / "issuers" / f"{issuer_id}.crt", cert)
        issuers[issuer_id] = IssuingCA(issuer_id, cert, signer)
    responders: dict[str, IssuingCA] = {}
    responder_profile = policies.profile("ocsp-responder")
    for issuer_id, issuer in issuers.items():
        signer = new_signer(KeyType.P256, d / "responders" / f"{issuer_id}.key")
        cert = factory.issue(
            responder_profile,
            issuer,
            signer.public_key(),
            {"ca_name": issuer_ca_name(issuer)},
            now,
        )
        _write_cert(d / "responders" / f"{issuer_id}.crt", cert)
        responders[issuer_id] = IssuingCA(issuer_id, cert, signer)
    log_signer = new_signer(KeyType.ED25519, d / "log.key")
    log_pub = log_signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (d / "log.pub").write_bytes(log_pub)
    from ca.log_key_signature import SIGNATURE_FILE, sign_log_key

    # the root vouches for the log's key: auditors check it under the root they trust
    (d / SIGNATURE_FILE).write_bytes(sign_log_key(root_signer, root_cert, log_pub))
    # The root's CRL is signed only at ceremonies; it lists revoked issuing CAs.
    (d / "root.crl").write_bytes(
        build_crl(
            root_cert, root_signer, [], 1, now.replace(microsecond=0), now + ROOT_CRL_VALIDITY
        )
    )
    if root_signs is not None:
        root_signs(root)
    if root_key is not None:
        root_sealer.seal(root_key, d / "root.key")
    # Last of the hierarchy's files, but no mark of a complete init: the database records
    # and the officers come after it (ca.ceremony.initialize; UNFINISHED_FILE marks that)
    _write_cert(d / "root.crt", root_cert)
    del root_key, root_signer, root
    return Hierarchy(
        root=root_cert,
        root_crl=(d / "root.crl").read_bytes(),
        issuers=issuers,
        responders=responders,
        log_signer=log_signer,
    )


def issuer_ca_name(issuer: IssuingCA) -> str:
    attrs = issuer.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else issuer.id


def _load_signer(
    cert_or_pub: object, key_file: Path, passphrase: bytes | KeySealer | None
) -> Signer:
    from ca import pkcs11

    if pkcs11.is_reference(key_file):  # held in a token: nothing to unseal
        return pkcs11.read_reference(key_file)
    public = cert_or_pub.public_key() if isinstance(cert_or_pub, x509.Certificate) else cert_or_pub
    sealed = SealedSigner(public)  # type: ignore[arg-type]
    if passphrase is None:
        return sealed
    return unseal_or_lose(sealer_of(passphrase), key_file, sealed)


def unseal_or_lose(sealer: KeySealer, key_file: Path, sealed: SealedSigner) -> Signer:
    """The key of ``key_file`` as ``sealer`` opens it; a file that is missing, unreadable
    or damaged leaves ``sealed`` lost (:meth:`~ca.signer.SealedSigner.lose`) and returns
    it: the other keys serve without it (:func:`load` refuses when they cannot)."""
    from ca.sealing import slot_of

    try:
        return sealer.unseal(key_file)
    except (OSError, Sealed) as exc:
        why = exc.strerror if isinstance(exc, OSError) else exc.detail
        sealed.lose(f"{slot_of(key_file)}.key: {why}")
        return sealed


def _refuse_lost(h: Hierarchy) -> None:
    """A hierarchy whose every issuing CA key did not open: a wrong passphrase or seal
    KEK, or a damaged directory, rather than one lost key. The log key alone lost is
    served degraded (:meth:`Hierarchy.missing_keys`): ``REPLACE-LOG-KEY`` replaces it."""
    issuers = [getattr(i.signer, "lost", None) for i in h.issuers.values()]
    if issuers and all(issuers):
        raise Sealed(
            f"no issuing CA key opens ({issuers[0]}): is the CA key passphrase right? A "
            f"damaged directory is restored from its backup ({EMERGENCY_PLAN})"
        )


def check_complete(data_dir: Path) -> None:
    """Refuse, in one line, a hierarchy whose init did not finish
    (:func:`unfinished_init`), or without the files every CA of this release has (a
    development CA made before the transparency log and the root CRL, schema 0001, or a
    damaged directory), instead of a missing-file error in each worker."""
    advice = unfinished_init_advice(data_dir)
    if advice is not None:
        raise EPortError(f"the CA in {ca_dir(data_dir)} cannot be used: {advice}")
    d = ca_dir(data_dir)
    missing = [name for name in ("root.crl", "log.pub") if not (d / name).exists()]
    if "log.pub" in missing and not (d / "log.key").exists():
        missing.append("log.key")  # a log key file alone gone is a lost key (missing_keys)
    if missing and public_copy_only(data_dir):
        raise EPortError(
            f"{d} holds only copies of a CA's public files (root.crt, root.crl, issuers/*.crt), "
            "as a token service run apart has them, and no CA: serve it with `eport serve "
            "--only auth`, or give --data-dir the CA's own directory"
        )
    if missing:
        raise EPortError(
            f"the CA hierarchy in {d} is incomplete ({', '.join(missing)} missing): one made "
            "before the transparency log (schema 0001) cannot be served; a damaged one is "
            "restored from its backup (eport restore)"
        )


def public_copy_only(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds the CA's public files a token service run apart is given
    (``eport serve --only auth``) and nothing of a CA: no key, no log, no database."""
    d = ca_dir(data_dir)
    made_by_a_ca = ("log.pub", "log.key", "custody.json", "root.key")
    return (
        (d / "root.crt").is_file()
        and not any((d / name).exists() for name in made_by_a_ca)
        and not any((d / "issuers").glob("*.key"))
        and not (Path(data_dir) / "eport.db").exists()
    )


def load(data_dir: Path, ca_passphrase: bytes | KeySealer | None) -> Hierarchy:
    """Read the hierarchy; without a passphrase (or the seal KEK's sealer) the keys stay
    sealed: :class:`~ca.signer.SealedSigner` objects that a later unseal opens in place."""
    d = ca_dir(data_dir)
    if not exists(data_dir):
        raise Sealed(f"no CA hierarchy in {d}; run `eport ca init` or `eport serve --dev`")
    check_complete(data_dir)
    root = x509.load_pem_x509_certificate((d / "root.crt").read_bytes())
    issuers: dict[str, IssuingCA] = {}
    for crt in sorted((d / "issuers").glob("*.crt")):
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        issuers[crt.stem] = IssuingCA(
            crt.stem, cert, _load_signer(cert, crt.with_suffix(".key"), ca_passphrase)
        )
    responders: dict[str, IssuingCA] = {}
    for crt in sorted((d / "responders").glob("*.crt")):
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        responders[crt.stem] = IssuingCA(
            crt.stem, cert, _load_signer(cert, crt.with_suffix(".key"), ca_passphrase)
        )
    log_public = serialization.load_pem_public_key((d / "log.pub").read_bytes())
    log_signer = _load_signer(log_public, d / "log.key", ca_passphrase)
    active_file = d / "issuers" / ACTIVE_FILE
    active = json.loads(active_file.read_text()) if active_file.exists() else {}
    h = Hierarchy(
        root=root,
        root_crl=(d / "root.crl").read_bytes(),
        issuers=issuers,
        responders=responders,
        log_signer=log_signer,
        active={str(k): str(v) for k, v in active.items()},
    )
    _refuse_lost(h)
    return h


@functools.lru_cache(maxsize=4)
def root_crl_times(root_crl: bytes) -> tuple[datetime.datetime, datetime.datetime | None]:
    """The thisUpdate and nextUpdate of the root CRL (DER); nextUpdate None if it has none
    (RFC 5280 §5.1.2.5). Cached: ``/ca/v1/health`` (asked by every load balancer's probe)
    reads them on every call, and the root CRL changes only at a ceremony."""
    crl = x509.load_der_x509_crl(root_crl)
    return crl.last_update_utc, crl.next_update_utc


def root_crl_next_update(root_crl: bytes) -> datetime.datetime | None:
    """The nextUpdate of the root CRL (DER), None if it has none."""
    return root_crl_times(root_crl)[1]


def issuer_notices(
    issuers: Mapping[str, IssuingCA], policies: Policies, now: datetime.datetime
) -> list[str]:
    """What operators must hear about the issuing CAs the profiles issue from: one that
    has ended (or ends within :data:`ca.issuance.MIN_ISSUED_VALIDITY`), from which
    nothing is issued; one that can no longer cover a whole certificate of its longest
    profile, whose certificates are cut to its end. Each names the rollover."""
    notices: list[str] = []
    for name in issuing_ids(policies):
        ca = issuers.get(name)
        if ca is None:  # its generation revoked with no successor, or not on this host
            notices.append(
                f"issuing CA {name} issues from no generation this host holds: the "
                f"enrollments and renewals of its profiles are refused; a rollover ceremony "
                f"(eport ca rotate {name}) makes one, or copy ca/ from the host that ran it"
            )
            continue
        ends = ca.certificate.not_valid_after_utc
        when = f"{ends:%Y-%m-%dT%H:%M:%SZ}"
        rotate = f"a rollover ceremony (eport ca rotate {name}) makes a new generation"
        profiles = [p for p in policies.profiles.values() if p.issuer == name and not p.ca]
        longest = max(profiles, key=lambda p: p.validity, default=None)
        if ends - now < MIN_ISSUED_VALIDITY:
            state = f"expired at {when}" if now >= ends else f"ends at {when}"
            notices.append(
                f"issuing CA {ca.id} {state}: its enrollments and renewals are refused; {rotate}"
            )
        elif longest is not None and ends - now < longest.validity:
            notices.append(
                f"issuing CA {ca.id} ends at {when}: certificates of profile "
                f"{longest.name!r} ({longest.validity.days} days) are cut short to its end; "
                f"{rotate}"
            )
    return notices


def root_crl_notice(root_crl: bytes, now: datetime.datetime, *, dev: bool = False) -> str | None:
    """What operators must hear when the root CRL's nextUpdate is within
    :data:`ROOT_CRL_NOTICE` of ``now`` or past: the server keeps serving it (nothing
    else can sign one), and relying parties that check the root CRL refuse every
    certificate once it has expired. None while it is far off. ``dev``: a development
    CA, which signs a new one at its next start (:mod:`ca.devinit`), not at a ceremony.

    Also one whose thisUpdate is in ``now``'s future, signed while the clock ran ahead and
    then corrected: relying parties refuse it as not yet valid ("CRL is not yet valid"),
    so every chain checked against it fails until the clock catches up."""
    signed, due = root_crl_times(root_crl)
    if signed > now:
        state = f"is not valid until {signed:%Y-%m-%dT%H:%M:%SZ} (thisUpdate, in the future)"
    elif due is None or now < due - ROOT_CRL_NOTICE:
        return None
    else:
        when = f"{due:%Y-%m-%dT%H:%M:%SZ}"
        state = f"expired at {when}" if now >= due else f"expires at {when}"
        state += " (nextUpdate)"
    if dev:
        return (
            f"the root CRL {state}; the development CA signs a new one when "
            "it next starts (restart eport serve --dev)"
        )
    return (
        f"the root CRL {state}; M custodians sign a new one with a ROOT-CRL "
        "ceremony (eport ca ceremony start ROOT-CRL)"
    )
