"""Re-sharing the custody KEKs: a lost share, a custodian who leaves or joins.

``eport ca reshare`` is a local ceremony on the CA host, like ``eport ca init``: M
custodians of the current custody set present their share files (each types the
passphrase), which rebuild **both** KEKs (root and seal: a share file holds a share of
each); the KEKs are proven on the keys they wrap (``root.key``, ``log.key``) and split
anew among the members ``policies/members.toml`` names now, into a new custody set (a
new custody id, new share files encrypted to new passphrases, new fingerprints and
check values). Every old share is refused from then on: fingerprints and check values
are bound to the custody id.

The KEKs are kept, not replaced: the wrapped keys stay as they are, bound to the
custody id they were wrapped under (:attr:`ca.custody.CustodyRecord.keys_id`), so the
change in force is one file (``ca/custody.json``) and a running, unsealed server
carries on with the KEK it holds. ``docs/custody.md`` says what this costs.

The new record is signed by the root key (opened by the rebuilt root KEK) before
anything is written: ``ca/custody.json.sig`` (:mod:`ca.custody_signature`), which the
other hosts of a shared database require before they take the record from it. Its
``sequence`` is one more than the replaced record's
(:attr:`ca.custody.CustodyRecord.sequence`): those hosts take no record that is not
ordered after their own.

Order, so that a crash at any point loses nothing:

1. the new share files are written (the caller's ``write_shares``);
2. the current record and its signature (if it has one) are kept as
   ``ca/custody-<old id>.json`` and ``.json.sig``, and the new ones written as
   ``ca/custody-<new id>.json`` and ``.json.sig`` (all public);
3. one database transaction logs ``custody.reshared``: the commit point;
4. ``ca/custody.json.sig`` then ``ca/custody.json`` are replaced by the new ones
   (temporary file, fsync, rename) and the generation file tells running workers to
   reload them.

A crash before 3 leaves the old custody set in force (the new share files open nothing:
their record was never installed). A crash between 3 and the end of 4 is finished by
:func:`settle`, which the server runs at start and ``eport ca reshare`` before anything
else: it installs the record the log's last re-share names and its signature, if
``custody.json`` is the one that re-share replaced (as it still is when only the new
signature was written).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ca import custody_files, custody_signature, hierarchy
from ca.authority import dn_string
from ca.custody import (
    CustodyError,
    CustodyRecord,
    NotEnoughShares,
    Purpose,
    RepeatedCustodian,
    Share,
    ShareFile,
    ShareRejected,
    establish,
    is_wrapped,
    wipe,
)
from ca.errors import Conflict
from ca.records import Event, EventType, Store
from ca.sealing import KekSealer

log = logging.getLogger(__name__)

WriteShares = Callable[[CustodyRecord, Mapping[str, Mapping[Purpose, Share]]], None]
"""Writes each member's new shares to its share file (encrypted to its passphrase)."""


@dataclass(frozen=True)
class Rebuilt:
    """Both KEKs, rebuilt from the share files of ``participants`` (secret until wiped)."""

    record: CustodyRecord
    """The custody set the shares belong to (the one in force)."""
    participants: tuple[str, ...]
    """The members whose custodians presented a share, in order."""
    keks: Mapping[Purpose, bytearray] = field(repr=False)

    def wipe(self) -> None:
        for kek in self.keks.values():
            wipe(kek)


def check_presented(record: CustodyRecord, presented: Sequence[tuple[str, str]]) -> list[str]:
    """The members of ``presented`` (each share file's member and custody id), in order,
    if they can rebuild ``record``'s KEKs: share files of that custody set, of distinct
    custodians, at least ``threshold`` of them. Both are in a share file's clear header,
    so ``eport ca reshare`` checks them before it asks any passphrase; :func:`rebuild`
    checks them again once the files are opened (and authenticated)."""
    members: list[str] = []
    for member, custody_id in presented:
        if custody_id != record.custody_id:
            raise ShareRejected(
                f"the share file of {member} belongs to custody set {custody_id}, not to "
                f"the one in force ({record.custody_id})"
            )
        if member in members:
            raise RepeatedCustodian(f"the custodian of {member} presented two share files")
        members.append(member)
    if len(members) < record.threshold:
        raise NotEnoughShares(
            f"{len(members)} share files; re-sharing needs {record.threshold} custodians of "
            f"custody set {record.custody_id}"
        )
    return members


def rebuild(data_dir: Path, record: CustodyRecord, files: Sequence[ShareFile]) -> Rebuilt:
    """Rebuild and prove both KEKs from ``threshold`` share files of distinct custodians.

    A share file of another custody set, a repeated custodian, fewer than ``threshold``
    files, a corrupted share or KEKs that do not open the keys raise; nothing is kept.
    """
    members = check_presented(record, [(f.member, f.custody_id) for f in files])
    keks: dict[Purpose, bytearray] = {}
    try:
        for purpose in Purpose:
            keks[purpose] = record.combine([f.share(purpose) for f in files], purpose)
        d = hierarchy.ca_dir(data_dir)
        # The check values say the KEKs are right; opening a key proves the record and the
        # keys on disk go together before anything is re-shared (a key held in a PKCS#11
        # token is not wrapped: its file only names it).
        for purpose, path in ((Purpose.ROOT, d / "root.key"), (Purpose.SEAL, d / "log.key")):
            if is_wrapped(path.read_bytes()):
                KekSealer(keks[purpose], record.keys_id, purpose).unseal(path)
    except BaseException:
        for kek in keks.values():
            wipe(kek)
        raise
    return Rebuilt(record, tuple(members), keks)


def reshare(
    data_dir: Path,
    store: Store,
    rebuilt: Rebuilt,
    custodians: Sequence[tuple[str, str]],
    threshold: int,
    write_shares: WriteShares,
    *,
    now: datetime.datetime,
    actor: str = "ceremony:reshare",
) -> CustodyRecord:
    """Split the rebuilt KEKs ``threshold``-of-N among ``custodians`` and put the new
    custody set in force (see the module docstring for the order). The caller wipes
    ``rebuilt``."""
    old = rebuilt.record
    path = custody_files.record_path(data_dir)
    old_bytes = path.read_bytes()
    if CustodyRecord.from_json(json.loads(old_bytes)).custody_id != old.custody_id:
        raise Conflict("the custody record changed during the ceremony; start again")
    root = x509.load_pem_x509_certificate((hierarchy.ca_dir(data_dir) / "root.crt").read_bytes())
    # One more than the record it replaces, inside the signed bytes: a host of a shared
    # database takes no record ordered at or below its own (ca/crosshost.py).
    made = establish(custodians, threshold, keks=rebuilt.keks, sequence=old.sequence + 1)
    try:
        new = replace(made.record, keys_custody_id=old.keys_id)
        new_bytes = custody_files.record_bytes(new)
        # Signed before anything is written: a root key that cannot sign changes nothing.
        signature = sign_with_root(data_dir, rebuilt, root, new_bytes)
        write_shares(new, made.shares)
    finally:
        made.wipe()
    custody_files.write_durably(custody_files.archived_path(data_dir, old.custody_id), old_bytes)
    try:  # a record of before signed custody records has none to keep
        old_signature = custody_signature.signature_path(data_dir).read_bytes()
    except FileNotFoundError:
        pass
    else:
        custody_files.write_durably(
            custody_signature.archived_signature_path(data_dir, old.custody_id), old_signature
        )
    custody_files.write_durably(
        custody_signature.archived_signature_path(data_dir, new.custody_id), signature
    )
    custody_files.write_durably(custody_files.archived_path(data_dir, new.custody_id), new_bytes)
    with store.transaction() as tx:
        tx.append_event(
            Event(
                type=EventType.CUSTODY_RESHARED,
                at=now,
                actor=actor,
                subject=dn_string(root.subject),
                issuer="root",
                serial=root.serial_number,
                cert_sha256=root.fingerprint(hashes.SHA256()).hex(),
                details=reshare_details(old, new, rebuilt.participants),
            )
        )
    install(data_dir, new, signature)
    return new


def sign_with_root(
    data_dir: Path, rebuilt: Rebuilt, root: x509.Certificate, record: bytes
) -> bytes:
    """The root's signature file of ``record`` (:mod:`ca.custody_signature`): the rebuilt
    root KEK opens ``root.key`` (a key in a PKCS#11 token signs there) for this one
    signature."""
    sealer = KekSealer(rebuilt.keks[Purpose.ROOT], rebuilt.record.keys_id, Purpose.ROOT)
    signer = sealer.unseal(hierarchy.ca_dir(data_dir) / "root.key")
    return custody_signature.sign_record(signer, root, record)


def reshare_details(
    old: CustodyRecord, new: CustodyRecord, participants: Sequence[str]
) -> dict[str, Any]:
    """The logged facts of a re-share (all public)."""
    details = custody_files.public_details(new)
    details.update(
        previous_custody_id=old.custody_id,
        previous_threshold=old.threshold,
        keys_custody_id=new.keys_id,
        keks="kept",
        participants=[
            {
                "member": m,
                "custodian": old.entry(m).custodian,
                "fingerprints": {p.value: old.entry(m).fingerprints[p] for p in Purpose},
            }
            for m in participants
        ],
        added=[m for m in new.members if m not in old.members],
        removed=[m for m in old.members if m not in new.members],
    )
    return details


def install(data_dir: Path, record: CustodyRecord, signature: bytes | None) -> None:
    """Put ``record`` in force with its root ``signature`` and tell running workers to
    reload it. The signature is written first, so a crash between the two leaves the
    record the log's re-share replaced, which :func:`settle` installs again (never the
    new record beside the old signature); both under the host lock, so no check of this
    host publishes one without the other (:mod:`ca.crosshost`). ``signature`` None: a
    re-share logged before records were signed; a signature left from before is removed."""
    from ca.crosshost import host_lock
    from ca.generation import bump_generation

    path = custody_signature.signature_path(data_dir)
    with host_lock(data_dir):
        if signature is not None:
            custody_files.write_durably(path, signature)
        else:
            custody_files.remove_durably(path)
        custody_files.write_record(data_dir, record)
    bump_generation(data_dir)


def settle(data_dir: Path, last_reshare: Mapping[str, Any] | None) -> str | None:
    """Finish a re-share that was logged but whose record was not installed (a crash
    between its commit and the rename). Only rolls forward, from exactly the record that
    re-share replaced. Returns the custody id installed, if any."""
    if last_reshare is None:
        return None
    current = custody_files.load_record(data_dir)
    new_id = str(last_reshare.get("custody_id", ""))
    if new_id == current.custody_id or last_reshare.get("previous_custody_id") != (
        current.custody_id
    ):
        return None
    path = custody_files.archived_path(data_dir, new_id)
    try:
        record = CustodyRecord.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CustodyError(
            f"the log says custody set {current.custody_id} was re-shared as {new_id}, "
            f"but {path} is missing"
        ) from None
    if record.custody_id != new_id:
        raise CustodyError(f"{path} does not hold custody set {new_id}")
    try:
        signature: bytes | None = custody_signature.archived_signature_path(
            data_dir, new_id
        ).read_bytes()
    except FileNotFoundError:
        signature = None
    install(data_dir, record, signature)
    log.warning("finished the re-share to custody set %s (its record was not installed)", new_id)
    return new_id
