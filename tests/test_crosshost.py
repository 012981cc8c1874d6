"""The hierarchy record of several hosts (ca/crosshost.py) on a real SQLite database:
a host behind the record takes only a root CRL it can check itself, and says which
files it could not take."""

from __future__ import annotations

import datetime
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine

from ca import hierarchy
from ca.crosshost import HierarchySync, read_note
from ca.crosshost_sql import SqlHierarchyRecord
from ca.db import make_engine, upgrade
from ca.issuance import CertificateFactory
from ca.keys import KeyType
from ca.policy import load_policies
from ca.sealing import PassphraseSealer
from tests.conftest import REPO

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the path of every file and directory ``os.fsync`` is called on."""
    import os

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.fixture
def record(tmp_path: Path) -> Iterator[SqlHierarchyRecord]:
    """The hierarchy record in a fresh CA database (SQLite, at head), as hosts share it."""
    url = f"sqlite:///{tmp_path / 'eport.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        yield SqlHierarchyRecord(engine)
    finally:
        engine.dispose()


def _hosts(tmp: Path) -> tuple[Path, Path]:
    a = tmp / "a"
    hierarchy.create(
        load_policies(REPO / "policies"),
        a,
        root_passphrase=b"root-pass",
        ca_passphrase=b"ca-pass",
        factory=CertificateFactory(),
        now=NOW,
    )
    b = tmp / "b"
    shutil.copytree(a, b)
    return a, b


ACTIVE = ("issuers/active.json", "issuers/active.json.sig")
"""``issuers/active.json`` and the root's signature of it, taken together or not at all."""


def write_active(d: Path, text: str) -> tuple[bytes, bytes]:
    """``issuers/active.json`` written on host ``d`` as a ceremony there writes it: with the
    root's signature, ordered after the host's own (the file first, then the signature).
    Returns the pair's bytes."""
    from ca.active_signature import next_signature
    from ca.sealing import PassphraseSealer

    root = x509.load_pem_x509_certificate((d / "ca" / "root.crt").read_bytes())
    signer = PassphraseSealer(b"root-pass").unseal(d / "ca" / "root.key")
    data = text.encode()
    sig = next_signature(d, signer, root, data)
    (d / "ca" / "issuers" / "active.json").write_bytes(data)
    (d / "ca" / "issuers" / "active.json.sig").write_bytes(sig)
    return data, sig


def _foreign_root_crl(data: Path, number: int) -> bytes:
    """A root CRL naming this root as its issuer, signed by another key."""
    root = x509.load_pem_x509_certificate((data / "ca" / "root.crt").read_bytes())
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(NOW)
        .next_update(NOW + datetime.timedelta(days=30))
        .add_extension(x509.CRLNumber(number), critical=False)
        .sign(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
    )
    return crl.public_bytes(serialization.Encoding.DER)


def test_a_root_crl_the_host_cannot_check_is_not_taken(
    tmp_path: Path, record: SqlHierarchyRecord
) -> None:
    a, b = _hosts(tmp_path)
    bumped: list[Path] = []

    def sync(d: Path) -> HierarchySync:
        return HierarchySync(d, record, host=d.name, clock=lambda: NOW, bump=bumped.append)

    assert sync(a).check().published  # the first host's files are the record
    assert not sync(b).check().stale and read_note(b).generation == 1
    # host A's root CRL replaced by one its root did not sign (a tampered record)
    before = (b / "ca" / "root.crl").read_bytes()
    (a / "ca" / "root.crl").write_bytes(_foreign_root_crl(a, 7))
    assert sync(a).check().published
    got = sync(b).check()
    assert got.missing == ("root.crl",) and got.picked_up == ()
    warning = got.warning()
    assert warning is not None and "not signed by this host's root" in warning
    assert (b / "ca" / "root.crl").read_bytes() == before and bumped == []
    assert read_note(b).generation == 1  # still behind: it says so at every check
    # a new issuing CA's key (written by a ceremony on A) never comes through
    (a / "ca" / "root.crl").write_bytes(before)
    key = (a / "ca" / "issuers" / "enterprise.key").read_bytes()
    (a / "ca" / "issuers" / "enterprise-2.key").write_bytes(key)
    assert sync(a).check().published
    got = sync(b).check()
    assert got.missing == ("issuers/enterprise-2.key",)
    assert not (b / "ca" / "issuers" / "enterprise-2.key").exists()
    files = record.files()
    assert files["issuers/enterprise-2.key"].data is None  # only its digest is stored
    assert files["root.crt"].data is not None
    # a host that never matched a record takes nothing from it, even a public file
    c = tmp_path / "c"
    shutil.copytree(b, c, ignore=shutil.ignore_patterns("crosshost.json"))
    (a / "ca" / "issuers" / "enterprise-2.key").unlink()
    write_active(a, '{"enterprise": ""}\n')
    assert sync(a).check().published
    got = sync(c).check()
    assert got.missing == ACTIVE and got.picked_up == ()
    assert not (c / "ca" / "issuers" / "active.json").exists()
    got = sync(b).check()  # which one that matched before does take it
    assert got.picked_up == ACTIVE and not got.stale
    assert bumped == [b]


def test_a_restored_record_is_neither_rolled_back_into_nor_overwritten_by_a_host(
    tmp_path: Path,
) -> None:
    """The shared database restored from a backup (``eport restore``) brings back an older
    record, and its generation numbers are used again. A host that matched a later record
    before the restore took the older public files from it (its newer ``active.json``
    rolled back), and one that had been down found its note's generation equal to the
    record's after the restored host published again, took its own older files for a
    change of its own and published them over the newer record. Now both take nothing,
    publish nothing and say they are stale (copy the restored host's ``ca/``)."""
    a, b = _hosts(tmp_path)
    first = write_active(a, '{"enterprise": ""}\n')
    for name, data in zip(ACTIVE, first, strict=True):
        (b / "ca" / name).write_bytes(data)
    db = tmp_path / "eport.db"
    url = f"sqlite:///{db}"
    upgrade(url)
    bumped: list[Path] = []

    def sync(engine: Engine, d: Path) -> HierarchySync:
        record = SqlHierarchyRecord(engine)
        return HierarchySync(d, record, host=d.name, clock=lambda: NOW, bump=bumped.append)

    engine = make_engine(url)
    try:
        assert sync(engine, a).check().published  # generation 1
        assert not sync(engine, b).check().stale
    finally:
        engine.dispose()
    # the backup: the database and host A's data directory, as they are now
    shutil.copy(db, tmp_path / "backup.db")
    shutil.copytree(a, tmp_path / "a-backup")
    engine = make_engine(url)
    try:
        write_active(a, '{"service": ""}\n')
        assert sync(engine, a).check().generation == 2
        assert sync(engine, b).check().picked_up == ACTIVE
        assert read_note(b).generation == 2
    finally:
        engine.dispose()
    c = tmp_path / "c"  # a host like B that is down from now on
    shutil.copytree(b, c)
    # the restore: the database and host A's data directory from the backup
    shutil.copy(tmp_path / "backup.db", db)
    shutil.rmtree(a)
    shutil.copytree(tmp_path / "a-backup", a)
    engine = make_engine(url)
    try:
        record = SqlHierarchyRecord(engine)
        head = record.head()
        assert head is not None and head.generation == 1
        # B, up during the restore: nothing older taken, stale, and it says why
        got = sync(engine, b).check()
        assert got.picked_up == () and got.missing == ACTIVE, got
        warning = got.warning()
        assert warning is not None and "restored" in warning, warning
        assert (b / "ca" / "issuers" / "active.json").read_text() == '{"service": ""}\n'
        assert read_note(b).generation == 2
        # A changes its files again: generation 2 once more, with other files
        write_active(a, '{"agency": ""}\n')
        assert sync(engine, a).check().generation == 2
        # C, back up: its note says 2 as the record does, but not this record
        got = sync(engine, c).check()
        assert not got.published and got.missing == ACTIVE, got
        warning = got.warning()
        assert warning is not None and "restored" in warning, warning
        assert "copy the restored host's ca/ directory" in warning, warning
        head = record.head()
        assert head is not None and head.generation == 2
        assert record.files()["issuers/active.json"].data == b'{"agency": ""}\n'
        assert (c / "ca" / "issuers" / "active.json").read_text() == '{"service": ""}\n'
        assert bumped == [b]  # only B's pick-up before the restore
        # the manual step: A's ca/ copied over C's; C is current again
        shutil.rmtree(c / "ca")
        shutil.copytree(a / "ca", c / "ca")
        assert not sync(engine, c).check().stale
    finally:
        engine.dispose()


def test_files_taken_from_the_record_and_the_note_are_written_durably(
    tmp_path: Path, record: SqlHierarchyRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A picked-up ``custody.json``, ``issuers/active.json`` or root CRL, and the note, are
    written as a re-share writes ``custody.json`` (``write_durably``: the new bytes synced
    before the rename, the directory after it), so that a crash or power loss right after
    leaves the old file or the new one, never an empty or torn one the host cannot start
    (or unseal) with. Before, they were renamed into place unsynced."""

    a, b = _hosts(tmp_path)

    def sync(d: Path) -> HierarchySync:
        return HierarchySync(d, record, host=d.name, clock=lambda: NOW, bump=lambda _: None)

    assert sync(a).check().published
    assert not sync(b).check().stale
    write_active(a, '{"enterprise": ""}\n')
    assert sync(a).check().published
    synced = record_fsyncs(monkeypatch)
    got = sync(b).check()
    assert got.picked_up == ACTIVE and not got.stale
    issuers, ca = b / "ca" / "issuers", b / "ca"
    # each file's bytes before its rename (a temporary name), its directory after it
    assert any(s.startswith(str(issuers / "active.json.tmp")) for s in synced), synced
    assert any(s.startswith(str(issuers / "active.json.sig.tmp")) for s in synced), synced
    assert str(issuers) in synced, synced
    assert any(s.startswith(str(ca / "crosshost.json.tmp")) for s in synced), synced
    assert str(ca) in synced, synced


def test_a_publication_between_the_head_and_the_files_read_is_no_restore(
    tmp_path: Path,
    record: SqlHierarchyRecord,
) -> None:
    """A check reads the record's head, then its files (two reads): another host that
    publishes in between must not make the files look like a restored record's (which
    would refuse the host's start with a false "restored" warning); the check reads the
    head again and follows the newer generation as usual."""
    a, b = _hosts(tmp_path)

    def sync(d: Path, rec: Any = record) -> HierarchySync:
        return HierarchySync(d, rec, host=d.name, clock=lambda: NOW, bump=lambda _: None)

    assert sync(a).check().published
    assert not sync(b).check().stale

    class Racing:
        """The record as B reads it: host A publishes just before B's first files()."""

        raced = False

        def head(self) -> Any:
            return record.head()

        def files(self) -> Any:
            if not self.raced:
                self.raced = True
                write_active(a, '{"enterprise": ""}\n')
                assert sync(a).check().published
            return record.files()

        def publish(self, *args: Any) -> Any:
            return record.publish(*args)

        def force_responders(self, *args: Any) -> Any:
            return record.force_responders(*args)

    got = sync(b, Racing()).check()
    assert got.restored is None and not got.stale, got.warning()
    assert got.picked_up == ACTIVE and got.generation == 2


def test_a_ceremony_s_files_are_written_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files a quorum ceremony writes (``issuers/active.json``, ``root.crl``, new
    issuer and log key files) are fsynced before their rename and their directory after
    it, as the files taken from the record are: before, a power loss right after a
    ceremony could leave an empty one, which the CA cannot start with."""

    from ca import root_ops
    from ca.active_signature import verify_active
    from ca.ceremony_files import FileChanges
    from ca.issuance import IssuingCA
    from tests.test_custody_signature import root_of

    (tmp_path / "ca" / "issuers").mkdir(parents=True)
    signer, cert = root_of(KeyType.P384)
    synced = record_fsyncs(monkeypatch)
    changes = FileChanges()
    root = IssuingCA("root", cert, signer)
    root_ops._write_active(changes, tmp_path, {"enterprise": "enterprise-2"}, root)
    changes.write(tmp_path / "ca" / "root.crl", b"der")
    issuers, ca = tmp_path / "ca" / "issuers", tmp_path / "ca"
    assert any(s.startswith(str(issuers / "active.json.tmp")) for s in synced), synced
    assert any(s.startswith(str(issuers / "active.json.sig.tmp")) for s in synced), synced
    assert any(s.startswith(str(ca / "root.crl.tmp")) for s in synced), synced
    assert str(issuers) in synced and str(ca) in synced, synced
    assert root_ops.read_active(tmp_path) == {"enterprise": "enterprise-2"}
    # signed by the root, the first in order; the next ceremony's is the second
    active, sig = (issuers / "active.json").read_bytes(), (issuers / "active.json.sig").read_bytes()
    assert verify_active(cert, active, sig) == 1
    changes.committed()
    root_ops._write_active(changes, tmp_path, {"enterprise": "enterprise-3"}, root)
    active, sig = (issuers / "active.json").read_bytes(), (issuers / "active.json.sig").read_bytes()
    assert verify_active(cert, active, sig) == 2


def test_a_custody_record_is_taken_only_with_its_root_signature(
    tmp_path: Path, record: SqlHierarchyRecord
) -> None:
    """``custody.json`` decides which share files open the KEKs. It was taken from the
    record after a syntax check alone, so whoever could write the database could plant
    one on every host (it opens nothing, but the hosts then refuse the real custodians).
    Now the record and its root signature (``custody.json.sig``) are taken together, and
    only when the signature verifies over those very bytes under the host's own root;
    otherwise the host keeps both and is stale, saying why."""
    from ca.crosshost import Published
    from ca.custody import establish
    from ca.custody_files import record_bytes
    from ca.custody_signature import sign_record, verify_record
    from ca.sealing import PassphraseSealer
    from tests.test_custody_signature import root_of

    a, b = _hosts(tmp_path)
    bumped: list[Path] = []

    def sync(d: Path) -> HierarchySync:
        return HierarchySync(d, record, host=d.name, clock=lambda: NOW, bump=bumped.append)

    def custody(threshold: int) -> bytes:
        made = establish([(m, m) for m in ("customs", "tax", "forex")], threshold)
        made.wipe()
        return record_bytes(made.record)

    root = x509.load_pem_x509_certificate((a / "ca" / "root.crt").read_bytes())
    signer = PassphraseSealer(b"root-pass").unseal(a / "ca" / "root.key")
    assert sync(a).check().published
    assert not sync(b).check().stale
    # a re-share on A: a new record and the root's signature of it; B takes the pair
    signed = custody(2)
    (a / "ca" / "custody.json").write_bytes(signed)
    (a / "ca" / "custody.json.sig").write_bytes(sign_record(signer, root, signed))
    assert sync(a).check().published
    got = sync(b).check()
    assert got.picked_up == ("custody.json", "custody.json.sig") and not got.stale, got
    assert (b / "ca" / "custody.json").read_bytes() == signed
    verify_record(root, signed, (b / "ca" / "custody.json.sig").read_bytes())
    assert bumped == [b]
    genuine = (b / "ca" / "custody.json.sig").read_bytes()
    published = record.files()

    # The record as someone who can write the database plants it.
    foreign_signer, foreign_root = root_of(KeyType.P384)
    changed = signed.replace(b'"threshold": 2', b'"threshold": 3')
    planted = custody(3)
    cases = [
        ({"custody.json": changed}, "its signature is of another custody record"),
        (
            {"custody.json": planted, "custody.json.sig": None},
            "it has no signature (a record written before custody records were signed",
        ),
        (
            {
                "custody.json": planted,
                "custody.json.sig": sign_record(foreign_signer, foreign_root, planted),
            },
            "its signature names another root",
        ),
        ({"custody.json.sig": b"{}"}, "its signature file is not of format"),
    ]
    for edits, needle in cases:
        files = dict(published)
        for name, data in edits.items():
            if data is None:
                del files[name]
            else:
                files[name] = Published(hashlib.sha256(data).hexdigest(), data)
        head = record.head()
        assert head is not None
        assert record.publish(head.generation, files, "attacker", NOW) is not None
        got = sync(b).check()
        assert got.picked_up == () and got.missing == tuple(sorted(edits)), (needle, got)
        warning = got.warning()
        assert warning is not None, needle
        assert "the database's custody record is not signed by this host's root: " in warning
        assert needle in warning, warning
        # neither file of the pair was written: B keeps the record and signature it had
        assert (b / "ca" / "custody.json").read_bytes() == signed
        assert (b / "ca" / "custody.json.sig").read_bytes() == genuine
        assert bumped == [b]


def test_a_custody_record_a_reshare_replaced_is_not_taken_back(
    tmp_path: Path, record: SqlHierarchyRecord
) -> None:
    """A record a re-share replaced is signed by the same root, and a record of before
    ordered records carries no order: put back into the database, it verified and was
    taken, and the custodians' old share files (which they were asked to destroy) counted
    there again. A host now keeps the record it replaces as ``ca/custody-<id>.json`` (as
    the re-share host does) and takes none of those back. (Records with a ``sequence``:
    :func:`test_a_custody_record_is_taken_only_when_ordered_after_the_host_s`.)"""
    from ca.custody import establish
    from ca.custody_files import archived_path, record_bytes
    from ca.custody_signature import archived_signature_path, sign_record
    from ca.sealing import PassphraseSealer

    a, b = _hosts(tmp_path)
    bumped: list[Path] = []

    def sync(d: Path) -> HierarchySync:
        return HierarchySync(d, record, host=d.name, clock=lambda: NOW, bump=bumped.append)

    root = x509.load_pem_x509_certificate((a / "ca" / "root.crt").read_bytes())
    signer = PassphraseSealer(b"root-pass").unseal(a / "ca" / "root.key")

    def reshare_on_a() -> tuple[str, bytes, bytes]:
        # records of before the sequence: only the kept records tell an old one
        made = establish([(m, m) for m in ("customs", "tax", "forex")], 2, sequence=0)
        made.wipe()
        data = record_bytes(made.record)
        sig = sign_record(signer, root, data)
        (a / "ca" / "custody.json.sig").write_bytes(sig)
        (a / "ca" / "custody.json").write_bytes(data)
        assert sync(a).check().published
        return made.record.custody_id, data, sig

    assert sync(a).check().published
    assert not sync(b).check().stale
    first_id, first, first_sig = reshare_on_a()
    assert sync(b).check().picked_up == ("custody.json", "custody.json.sig")
    old_files = record.files()
    second_id, second, second_sig = reshare_on_a()
    assert sync(b).check().picked_up == ("custody.json", "custody.json.sig")
    # B keeps what it replaced, as the re-share host keeps it
    assert archived_path(b, first_id).read_bytes() == first
    assert archived_signature_path(b, first_id).read_bytes() == first_sig
    assert not archived_path(b, second_id).exists()  # the one in force is not "replaced"
    # the first record, genuinely signed, put back into the database
    head = record.head()
    assert head is not None
    assert record.publish(head.generation, old_files, "attacker", NOW) is not None
    got = sync(b).check()
    assert got.picked_up == () and got.missing == ("custody.json", "custody.json.sig"), got
    warning = got.warning()
    assert warning is not None and f"custody set {first_id}, which a re-share replaced" in (
        warning
    ), warning
    assert (b / "ca" / "custody.json").read_bytes() == second
    assert (b / "ca" / "custody.json.sig").read_bytes() == second_sig
    assert len(bumped) == 2


def test_a_custody_record_is_taken_only_when_ordered_after_the_host_s(
    tmp_path: Path, record: SqlHierarchyRecord
) -> None:
    """A host that was down through two re-shares never had the middle record, so it
    kept no copy of it and took it when someone with write access to the database put it
    back (genuinely signed, but replaced: its custodians' old share files counted again).
    A record now carries its order inside the signed bytes (``sequence``: 1 at init, one
    more at each re-share), and a host takes only one ordered after its own; a record of
    before the order reads as 0."""
    from ca.crosshost import Published
    from ca.custody import establish
    from ca.custody_files import archived_path, record_bytes
    from ca.custody_signature import sign_record
    from ca.sealing import PassphraseSealer

    a, b = _hosts(tmp_path)
    bumped: list[Path] = []

    def sync(d: Path) -> HierarchySync:
        return HierarchySync(d, record, host=d.name, clock=lambda: NOW, bump=bumped.append)

    root = x509.load_pem_x509_certificate((a / "ca" / "root.crt").read_bytes())
    signer = PassphraseSealer(b"root-pass").unseal(a / "ca" / "root.key")

    def signed(sequence: int) -> tuple[str, bytes, bytes]:
        made = establish([(m, m) for m in ("customs", "tax", "forex")], 2, sequence=sequence)
        made.wipe()
        data = record_bytes(made.record)
        assert (b'"sequence": ' in data) is (sequence > 0)  # a record of before has none
        return made.record.custody_id, data, sign_record(signer, root, data)

    def reshare_on_a(sequence: int) -> tuple[str, bytes, bytes]:
        custody_id, data, sig = signed(sequence)
        (a / "ca" / "custody.json.sig").write_bytes(sig)
        (a / "ca" / "custody.json").write_bytes(data)
        assert sync(a).check().published
        return custody_id, data, sig

    def put_back(files: dict[str, Published]) -> None:
        head = record.head()
        assert head is not None
        assert record.publish(head.generation, files, "attacker", NOW) is not None

    def with_pair(data: bytes, sig: bytes) -> dict[str, Published]:
        files = record.files()
        for name, content in (("custody.json", data), ("custody.json.sig", sig)):
            files[name] = Published(hashlib.sha256(content).hexdigest(), content)
        return files

    assert sync(a).check().published
    assert not sync(b).check().stale
    # a record of before the order, then the first ordered one: each taken in turn
    for sequence in (0, 1):
        _, data, _ = reshare_on_a(sequence)
        assert sync(b).check().picked_up == ("custody.json", "custody.json.sig")
        assert (b / "ca" / "custody.json").read_bytes() == data
    # B is down through two re-shares on A: it never has the second record
    second_id, _, _ = reshare_on_a(2)
    middle = record.files()
    third_id, third, third_sig = reshare_on_a(3)
    assert sync(b).check().picked_up == ("custody.json", "custody.json.sig")
    assert (b / "ca" / "custody.json").read_bytes() == third
    assert not archived_path(b, second_id).exists()  # nothing kept tells it is old
    taken = len(bumped)

    _, fork, fork_sig = signed(3)
    _, legacy, legacy_sig = signed(0)
    cases = [
        (middle, f"(custody set {second_id}, sequence 2) is not ordered after this host's"),
        (with_pair(fork, fork_sig), "sequence 3) is not ordered after this host's"),
        (with_pair(legacy, legacy_sig), "sequence 0) is not ordered after this host's"),
    ]
    for files, needle in cases:
        put_back(files)
        got = sync(b).check()
        assert got.picked_up == () and got.missing == ("custody.json", "custody.json.sig"), got
        warning = got.warning()
        assert warning is not None and needle in warning, warning
        assert f"(custody set {third_id}, sequence 3)" in warning, warning
        assert "put back into the database, is not taken" in warning, warning
        assert (b / "ca" / "custody.json").read_bytes() == third
        assert (b / "ca" / "custody.json.sig").read_bytes() == third_sig
        assert len(bumped) == taken
    # the next genuine re-share is taken again
    _, fourth, fourth_sig = signed(4)
    put_back(with_pair(fourth, fourth_sig))
    got = sync(b).check()
    assert got.picked_up == ("custody.json", "custody.json.sig") and not got.stale, got
    assert (b / "ca" / "custody.json").read_bytes() == fourth
    assert archived_path(b, third_id).read_bytes() == third


def test_a_custody_pair_that_does_not_verify_is_not_published(
    tmp_path: Path, record: SqlHierarchyRecord
) -> None:
    """``eport ca reshare`` writes the new signature, then the new record. Cut between
    the two while the server ran, the host published the new signature beside the old
    record; every other host refused that pair and stayed stale until the next start or
    re-share settled it. Now a host publishes its custody pair only when its signature
    verifies over its record; its other files are published, the record keeping the last
    good pair, and the host says why."""
    from ca.custody import establish
    from ca.custody_files import record_bytes
    from ca.custody_signature import sign_record, verify_record
    from ca.sealing import PassphraseSealer

    a, b = _hosts(tmp_path)
    root = x509.load_pem_x509_certificate((a / "ca" / "root.crt").read_bytes())
    signer = PassphraseSealer(b"root-pass").unseal(a / "ca" / "root.key")

    def sync(d: Path) -> HierarchySync:
        return HierarchySync(d, record, host=d.name, clock=lambda: NOW, bump=lambda _: None)

    def signed(sequence: int) -> tuple[bytes, bytes]:
        made = establish([(m, m) for m in ("customs", "tax", "forex")], 2, sequence=sequence)
        made.wipe()
        data = record_bytes(made.record)
        return data, sign_record(signer, root, data)

    first, first_sig = signed(1)
    for d in (a, b):
        (d / "ca" / "custody.json").write_bytes(first)
        (d / "ca" / "custody.json.sig").write_bytes(first_sig)
    assert sync(a).check().published
    assert not sync(b).check().stale
    good = record.files()

    # the re-share on A dies between the new signature and the new record
    second, second_sig = signed(2)
    (a / "ca" / "custody.json.sig").write_bytes(second_sig)
    got = sync(a).check()
    assert not got.published and not got.stale, got
    line = got.held_back_warning()
    assert line is not None and line.startswith(
        "this host's custody record and signature are not published to the database's record "
        "(ca/custody.json.sig does not verify over ca/custody.json: its signature is of "
        "another custody record"
    ), line
    assert "the other hosts keep the last pair published" in line, line
    assert record.files() == good
    assert sync(a).check().custody_held == got.custody_held  # and nothing published later either
    assert record.files() == good
    # A's other changes are published, with the last good pair
    (a / "ca" / "log-1.pub").write_bytes((a / "ca" / "log.pub").read_bytes())
    got = sync(a).check()
    assert got.published and got.custody_held is not None, got
    published = record.files()
    assert "log-1.pub" in published
    assert {k: published[k] for k in ("custody.json", "custody.json.sig")} == {
        k: good[k] for k in ("custody.json", "custody.json.sig")
    }
    got = sync(b).check()
    assert got.picked_up == ("log-1.pub",) and not got.stale, got
    assert (b / "ca" / "custody.json").read_bytes() == first
    # the re-share finished (as settle does at the next start): the pair is published
    (a / "ca" / "custody.json").write_bytes(second)
    got = sync(a).check()
    assert got.published and got.custody_held is None, got
    published = record.files()
    verify_record(
        root, published["custody.json"].data or b"", published["custody.json.sig"].data or b""
    )
    got = sync(b).check()
    assert got.picked_up == ("custody.json", "custody.json.sig") and not got.stale, got
    assert (b / "ca" / "custody.json").read_bytes() == second


def test_active_json_is_taken_only_with_its_root_signature_in_order(
    tmp_path: Path, record: SqlHierarchyRecord
) -> None:
    """``issuers/active.json`` says which generation of each issuing CA issues. It was
    taken from the record after a JSON syntax check alone, so whoever could write the
    database could switch every host back to an older generation it still holds (one the
    root never revoked) or stop issuance (``""``). Now the file and the root's signature
    of it (``issuers/active.json.sig``, over its bytes and a sequence) are taken together,
    and only when the signature verifies under the host's own root and is ordered after
    the host's own; otherwise the host keeps both and is stale, saying why."""
    import json

    from ca.active_signature import sign_active, verify_active
    from ca.crosshost import Published
    from tests.test_custody_signature import root_of

    a, b = _hosts(tmp_path)
    bumped: list[Path] = []

    def sync(d: Path) -> HierarchySync:
        return HierarchySync(d, record, host=d.name, clock=lambda: NOW, bump=bumped.append)

    def plant(edits: dict[str, bytes | None]) -> None:
        files = record.files()
        for name, data in edits.items():
            if data is None:
                files.pop(name, None)
            else:
                files[name] = Published(hashlib.sha256(data).hexdigest(), data)
        head = record.head()
        assert head is not None
        assert record.publish(head.generation, files, "attacker", NOW) is not None

    root = x509.load_pem_x509_certificate((a / "ca" / "root.crt").read_bytes())
    signer = PassphraseSealer(b"root-pass").unseal(a / "ca" / "root.key")
    assert sync(a).check().published
    assert not sync(b).check().stale
    # two ceremonies on A (a rollover, then a rollover of another issuing CA): B takes each
    first = write_active(a, '{"enterprise": "enterprise-2"}\n')
    assert sync(a).check().published
    assert sync(b).check().picked_up == ACTIVE
    second = write_active(a, '{"agency": "agency-2", "enterprise": "enterprise-2"}\n')
    assert verify_active(root, *second) == 2
    assert sync(a).check().published
    got = sync(b).check()
    assert got.picked_up == ACTIVE and not got.stale, got
    assert [(b / "ca" / n).read_bytes() for n in ACTIVE] == list(second)
    assert bumped == [b, b]

    # The pair as someone who can write the database plants it.
    foreign_signer, foreign_root = root_of(KeyType.P384)
    stopped = b'{"agency": "", "enterprise": ""}\n'
    fork = sign_active(signer, root, b'{"enterprise": "enterprise"}\n', 2)
    cases: list[tuple[dict[str, bytes | None], tuple[str, ...], str]] = [
        (  # the file changed under its genuine signature
            {"issuers/active.json": stopped},
            ("issuers/active.json",),
            "is not signed by this host's root: its signature is of another active.json",
        ),
        (
            {"issuers/active.json": stopped, "issuers/active.json.sig": None},
            ACTIVE,
            "is not signed by this host's root: it has no signature",
        ),
        (
            {
                "issuers/active.json": stopped,
                "issuers/active.json.sig": sign_active(foreign_signer, foreign_root, stopped, 9),
            },
            ACTIVE,
            "is not signed by this host's root: its signature names another root",
        ),
        (  # a higher sequence claimed in the genuine signature
            {
                "issuers/active.json.sig": json.dumps(
                    {**json.loads(second[1]), "sequence": 3}
                ).encode()
            },
            ("issuers/active.json.sig",),
            "its signature does not verify under this host's root.crt",
        ),
        (  # the first rollover's pair, genuinely signed, put back
            dict(zip(ACTIVE, first, strict=True)),
            ACTIVE,
            "(sequence 1) is not ordered after this host's (sequence 2)",
        ),
        (  # another file the root signed as the second (hosts that raced)
            {"issuers/active.json": b'{"enterprise": "enterprise"}\n', ACTIVE[1]: fork},
            ACTIVE,
            "(sequence 2) is not ordered after this host's (sequence 2)",
        ),
    ]
    for edits, missing, needle in cases:
        plant(edits)
        got = sync(b).check()
        assert got.picked_up == () and got.missing == missing, (needle, got)
        warning = got.warning()
        assert warning is not None and needle in warning, (needle, warning)
        assert "the database's issuers/active.json" in warning, warning
        assert [(b / "ca" / n).read_bytes() for n in ACTIVE] == list(second)
        assert bumped == [b, b]
        plant(dict(zip(ACTIVE, second, strict=True)))  # the genuine pair back
        assert not sync(b).check().stale
    # the next genuine ceremony's pair is taken again
    assert not sync(a).check().stale  # A follows the record's generations (the same pair)
    third = write_active(a, '{"agency": "", "enterprise": "enterprise-2"}\n')
    assert verify_active(root, *third) == 3
    assert sync(a).check().published
    got = sync(b).check()
    assert got.picked_up == ACTIVE and not got.stale, got
    assert [(b / "ca" / n).read_bytes() for n in ACTIVE] == list(third)


def test_an_active_json_edited_by_hand_serves_its_own_host_alone(
    tmp_path: Path, record: SqlHierarchyRecord
) -> None:
    """``issuers/active.json`` may be edited by hand (emergency-plan.md): the host issues
    from what it names. Unsigned, every other host would refuse it and stay stale for it,
    and refuse to start; so the editing host does not publish it (the record keeps the
    last signed pair, and the host says so), while its other changes are published; and
    a host whose own edit is all that differs from the record is not stale for it."""
    a, b = _hosts(tmp_path)

    def sync(d: Path) -> HierarchySync:
        return HierarchySync(d, record, host=d.name, clock=lambda: NOW, bump=lambda _: None)

    # a host of before signed active.json, its file edited by hand: not published
    assert sync(a).check().published
    assert not sync(b).check().stale
    (a / "ca" / "issuers" / "active.json").write_text('{"service": ""}\n')
    got = sync(a).check()
    assert not got.published and not got.stale, got
    line = got.held_back_warning()
    assert line is not None and line.startswith(
        "this host's issuers/active.json is not published to the database's record (it has "
        "no signature by the root: edited by hand here?)"
    ), line
    assert "issuers/active.json" not in record.files()
    assert not sync(b).check().stale
    # a ceremony on A signs its next one: published, and B takes it
    signed = write_active(a, '{"enterprise": "enterprise-2"}\n')
    got = sync(a).check()
    assert got.published and got.active_held is None and got.held_back_warning() is None
    assert sync(b).check().picked_up == ACTIVE
    good = record.files()
    # edited by hand again (its signature beside it): held back, the record keeps the
    # signed pair, and A's other changes are published with it
    (a / "ca" / "issuers" / "active.json").write_text('{"enterprise": ""}\n')
    (a / "ca" / "log-1.pub").write_bytes((a / "ca" / "log.pub").read_bytes())
    got = sync(a).check()
    assert got.published and not got.stale, got
    assert got.active_held is not None
    assert "its signature is of another active.json" in got.active_held
    published = record.files()
    assert "log-1.pub" in published
    assert {n: published[n] for n in ACTIVE} == {n: good[n] for n in ACTIVE}
    got = sync(b).check()
    assert got.picked_up == ("log-1.pub",) and not got.stale, got
    assert [(b / "ca" / n).read_bytes() for n in ACTIVE] == list(signed)
    # B edits its own by hand; A publishes something else: B takes that, keeps its edit
    (b / "ca" / "issuers" / "active.json").write_text('{"agency": ""}\n')
    (a / "ca" / "log-2.pub").write_bytes((a / "ca" / "log.pub").read_bytes())
    assert sync(a).check().published
    got = sync(b).check()
    assert got.picked_up == ("log-2.pub",) and not got.stale, got
    assert (b / "ca" / "issuers" / "active.json").read_text() == '{"agency": ""}\n'
    got = sync(b).check()
    assert not got.published and got.active_held is not None and not got.stale, got


def test_a_first_record_holds_an_unsigned_active_json_its_copies_match(
    tmp_path: Path, record: SqlHierarchyRecord
) -> None:
    """A database of before the record (migration 0007) gets the first host's files; an
    ``issuers/active.json`` of a rollover before signatures is among them (published as
    it is: no host takes it, but the other hosts, copies of the first, match it). Held
    back like a file edited by hand, the record would lack it, and every other host
    would be stale for it and refuse to start."""
    a, b = _hosts(tmp_path)
    for d in (a, b):
        (d / "ca" / "issuers" / "active.json").write_text('{"enterprise": "enterprise"}\n')

    def sync(d: Path) -> HierarchySync:
        return HierarchySync(d, record, host=d.name, clock=lambda: NOW, bump=lambda _: None)

    got = sync(a).check()
    assert got.published and got.active_held is None, got
    assert record.files()["issuers/active.json"].data == b'{"enterprise": "enterprise"}\n'
    got = sync(b).check()
    assert not got.stale and got.held_back_warning() is None, got
