"""The transparency log's storage: entry format v1, SQL tree store, append sink, checkpoints.

In-process against a real SQLite database (migrated with Alembic, engine configured as
the server's); the server-level behaviour (several processes, PostgreSQL) is in
tests/test_audit_cli.py. Every root and proof is checked with cli/auditproof.py, the
auditor's independent verifier.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ca import logentry, translog
from ca.checkpoint import verifier_key
from ca.db import make_engine, upgrade
from ca.errors import Sealed
from ca.logentry import EntryFormatError, LogEntry
from ca.merkle import EMPTY_ROOT, MemoryTreeStore, MerkleTree, leaf_hash
from ca.models import (
    CheckpointRow,
    EventRow,
    HierarchyFileRow,
    LogEntryRow,
    LogHeadRow,
    LogNodeRow,
)
from ca.records import Event, EventType
from ca.signer import SealedSigner
from ca.store import SqlStore
from cli import auditproof
from tests.helpers import records_unguarded

T0 = datetime.datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=datetime.UTC)

# The test vector of docs/log-format.md ("Entry serialization (v1)").
VECTOR_ENTRY = LogEntry(
    event_id=42,
    type="certificate.issued",
    time=T0,
    actor="enrollment-code",
    uscc="91350100M000100Y43",
    subject="CN=Xiamen Harbour Trading Co.\\, Ltd.,organizationIdentifier=NTRCN-91350100M000100Y43",
    profile="enterprise",
    issuer="enterprise",
    serial=0x1F2E3D4C5B6A79880123456789ABCDEF,
    cert_sha256="ab" * 32,
    application_id="app_q3xkz7bmw4d2c5ya",
    details={},
)
VECTOR_BYTES = (
    b'{"actor":"enrollment-code","application_id":"app_q3xkz7bmw4d2c5ya",'
    b'"cert_sha256":"' + b"ab" * 32 + b'","details":{},"event_id":42,'
    b'"issuer":"enterprise","profile":"enterprise",'
    b'"serial":"1f2e3d4c5b6a79880123456789abcdef",'
    b'"subject":"CN=Xiamen Harbour Trading Co.\\\\, Ltd.,'
    b'organizationIdentifier=NTRCN-91350100M000100Y43",'
    b'"time":"2026-03-01T08:30:15.123456Z","type":"certificate.issued",'
    b'"uscc":"91350100M000100Y43","v":1}'
)
VECTOR_LEAF = "b05b8a866e4368f01328eb830574458fabb5308f3019dd7f189cfb00b00ca594"


# -- entry format v1 ----------------------------------------------------------------------


def test_entry_vector() -> None:
    data = logentry.encode(VECTOR_ENTRY)
    assert data == VECTOR_BYTES
    assert leaf_hash(data).hex() == VECTOR_LEAF
    assert logentry.decode(data) == VECTOR_ENTRY


def test_entry_is_deterministic_whatever_the_detail_order() -> None:
    a = LogEntry(1, "x", T0, "a", details={"b": 1, "a": [1, "é", None], "c": {"z": 1, "y": 2}})
    b = LogEntry(1, "x", T0, "a", details={"c": {"y": 2, "z": 1}, "a": [1, "é", None], "b": 1})
    assert logentry.encode(a) == logentry.encode(b)
    assert "é".encode() in logentry.encode(a)  # UTF-8, not \\u escapes


@pytest.mark.parametrize(
    "bad",
    [
        b'{"v":1}',
        VECTOR_BYTES.replace(b'"v":1', b'"v":2'),
        VECTOR_BYTES.replace(b'"event_id":42,', b'"event_id":42, '),  # not canonical
        VECTOR_BYTES.replace(b'"details":{},', b'"details":{},"extra":1,'),
        VECTOR_BYTES.replace(b"1f2e3d", b"01f2e3d"),  # leading zero in serial
        VECTOR_BYTES.replace(b".123456Z", b"Z"),
        b"\xff",
        b"[]",
    ],
)
def test_decode_refuses_anything_not_canonical_v1(bad: bytes) -> None:
    with pytest.raises(EntryFormatError):
        logentry.decode(bad)


@pytest.mark.parametrize(
    "details",
    [{"x": 1.5}, {"x": 2**60}, {"x": float("nan")}, {"x": b"bytes"}, {"x": "\ud800"}],
)
def test_encode_refuses_values_without_one_canonical_form(details: dict[str, Any]) -> None:
    with pytest.raises(EntryFormatError):
        logentry.encode(LogEntry(1, "x", T0, "a", details=details))


def test_encode_refuses_oversized_and_naive_entries() -> None:
    with pytest.raises(EntryFormatError):
        logentry.encode(LogEntry(1, "x", T0, "a", details={"x": "y" * 70000}))
    with pytest.raises(EntryFormatError):
        LogEntry(1, "x", T0.replace(tzinfo=None), "a")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
optional_text = st.none() | st.text(max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    event_id=st.integers(0, 2**53 - 1),
    kind=st.text(min_size=1, max_size=30),
    at=st.datetimes(
        min_value=datetime.datetime(1970, 1, 1),
        max_value=datetime.datetime(9999, 1, 1),
        timezones=st.just(datetime.UTC),
    ),
    actor=st.text(max_size=40),
    uscc=optional_text,
    subject=optional_text,
    serial=st.none() | st.integers(0, 2**160),
    cert=st.none() | st.binary(min_size=32, max_size=32).map(bytes.hex),
    details=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
)
def test_entry_round_trip(
    event_id: int,
    kind: str,
    at: datetime.datetime,
    actor: str,
    uscc: str | None,
    subject: str | None,
    serial: int | None,
    cert: str | None,
    details: dict[str, Any],
) -> None:
    entry = LogEntry(
        event_id, kind, at, actor, uscc, subject, "p", "i", serial, cert, None, details
    )
    data = logentry.encode(entry)
    decoded = logentry.decode(data)
    assert logentry.encode(decoded) == data
    assert decoded.time == entry.time and decoded.serial == serial
    # The auditor's reader accepts it, and the canonical spelling is the same.
    from cli.audit import canonical, read_entry

    assert canonical(read_entry(data, 0)) == data


# -- the SQL store ------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    upgrade(url)
    eng = make_engine(url)
    try:
        yield eng
    finally:
        eng.dispose()


def make_store(engine: Engine) -> SqlStore:
    return SqlStore(
        sessionmaker(engine, expire_on_commit=False), event_sinks=(translog.append_event,)
    )


def record(store: SqlStore, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with store.transaction() as tx:
            tx.append_event(
                Event(
                    type=EventType.CERTIFICATE_ISSUED,
                    at=T0 + datetime.timedelta(seconds=i),
                    actor="enrollment-code",
                    uscc="91350100M000100Y43",
                    subject=f"CN=Subject {i}",
                    profile="enterprise",
                    issuer="enterprise",
                    serial=1000 + i,
                    cert_sha256=hashlib.sha256(b"%d" % i).hexdigest(),
                    details={"i": i},
                )
            )


def test_append_commits_with_its_event_and_matches_a_memory_tree(engine: Engine) -> None:
    store = make_store(engine)
    record(store, 37)
    with Session(engine) as s:
        entries = [bytes(e) for e in s.scalars(select(LogEntryRow.entry).order_by(LogEntryRow.idx))]
        events = s.scalars(select(EventRow).order_by(EventRow.id)).all()
        assert [logentry.decode(e).event_id for e in entries] == [ev.id for ev in events]
        assert [translog.entry_of(ev) for ev in events] == entries
        size, root = translog.read_head(s)
        assert size == 37
        memory = MerkleTree(MemoryTreeStore())
        memory.append_many(entries)
        assert root == memory.root() == auditproof.root_from_leaf_hashes(map(leaf_hash, entries))
        tree = translog.tree_at(s)
        for m in (1, 16, 31, 37):
            assert tree.root(m) == memory.root(m)
            auditproof.verify_inclusion(
                leaf_hash(entries[m - 1]), m - 1, 37, tree.inclusion_proof(m - 1, 37), root
            )
            auditproof.verify_consistency(m, 37, tree.root(m), root, tree.consistency_proof(m, 37))


def test_a_failed_transaction_appends_nothing(engine: Engine) -> None:
    store = make_store(engine)
    record(store, 3)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.append_event(Event(type=EventType.CERTIFICATE_REVOKED, at=T0, actor="x"))
        raise RuntimeError("the change failed after its event was written")
    with Session(engine) as s:
        assert translog.read_head(s)[0] == 3
        assert s.scalar(select(func.count()).select_from(LogEntryRow)) == 3
        assert s.scalar(select(func.count()).select_from(EventRow)) == 3


def test_get_many_is_one_select(engine: Engine) -> None:
    store = make_store(engine)
    record(store, 100)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    with Session(engine) as s:
        tree = translog.tree_at(s, 100)
        tree.size()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            proof = tree.inclusion_proof(57, 100)
            consistency = tree.consistency_proof(37, 100)
        finally:
            event.remove(engine, "before_cursor_execute", seen)
    node_reads = [q for q in statements if "log_nodes" in q]
    assert len(node_reads) == 2, statements  # one per proof
    assert len(proof) == 7 and consistency


def test_first_append_backfills_events_that_predate_the_log(engine: Engine) -> None:
    """A database made before the log existed: its first append logs every earlier event."""
    record(SqlStore(sessionmaker(engine, expire_on_commit=False)), 5)  # no sink: no log
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(LogEntryRow)) == 0
    record(make_store(engine), 2, start=5)
    with Session(engine) as s:
        ids = list(s.scalars(select(LogEntryRow.event_id).order_by(LogEntryRow.idx)))
        assert ids == list(range(1, 8))
        assert translog.read_head(s)[0] == 7


def test_a_first_hold_of_the_issuance_lock_backfills_too(engine: Engine) -> None:
    """The same database, whose first logged transaction takes the issuances' lock before
    writing its event (a new code, an approval): the lock creates the head, and the
    events made before the log are logged first, then its own."""
    record(SqlStore(sessionmaker(engine, expire_on_commit=False)), 5)  # no sink: no log
    with make_store(engine).transaction() as tx:
        tx.hold_issuance()
        tx.append_event(Event(type=EventType.APPLICATION_APPROVED, at=T0, actor="x"))
    with Session(engine) as s:
        ids = list(s.scalars(select(LogEntryRow.event_id).order_by(LogEntryRow.idx)))
        assert ids == list(range(1, 7))
        assert translog.read_head(s)[0] == 6


def test_a_missed_lock_fails_instead_of_forking(engine: Engine) -> None:
    """Two appenders that both believe the head is at n collide on the primary keys."""
    store = make_store(engine)
    record(store, 4)
    with Session(engine) as s:
        tree = MerkleTree(translog.SqlTreeStore(s, 3))  # a stale view of the head
        with pytest.raises(IntegrityError):
            tree.append(b"a forged fourth entry")
            s.flush()


# -- checkpoints --------------------------------------------------------------------------


def test_checkpoints_never_sign_two_roots_for_one_size(engine: Engine) -> None:
    key = Ed25519PrivateKey.generate()
    signer = translog.CheckpointSigner("eport.test/log", key, clock=lambda: T0)
    store = make_store(engine)
    record(store, 5)
    with Session(engine) as s:
        head = signer.latest(s)
        s.commit()
        assert head.size == 5
        cp = auditproof.verify_checkpoint(
            head.note, verifier_key("eport.test/log", key.public_key())
        )
        assert (cp.size, cp.root_hash) == (5, translog.read_head(s)[1])
        # The same size again: the stored note, byte for byte.
        assert signer.sign(s, 5, head.root_hash) == head.note
        with pytest.raises(translog.ForkRefused, match="refusing to sign root"):
            signer.sign(s, 5, hashlib.sha256(b"another tree").digest())
        # Another process racing on the same size with another root loses on the key.
        other = translog.CheckpointSigner("eport.test/log", key, clock=lambda: T0)
        with pytest.raises(translog.ForkRefused):
            other.sign(s, 5, EMPTY_ROOT)
        assert s.scalar(select(func.count()).select_from(CheckpointRow)) == 1


def test_checkpoint_refuses_a_head_that_disagrees_with_its_nodes(engine: Engine) -> None:
    key = Ed25519PrivateKey.generate()
    signer = translog.CheckpointSigner("eport.test/log", key)
    record(make_store(engine), 3)
    with Session(engine) as s:
        s.execute(
            LogNodeRow.__table__.update()
            .where(LogNodeRow.level == 0, LogNodeRow.idx == 2)
            .values(hash=b"\x00" * 32)
        )
        with pytest.raises(translog.LogCorrupted):
            signer.latest(s)


def test_checkpoints_are_signed_only_for_a_log_that_extends_the_last_one(
    engine: Engine,
) -> None:
    """A log rewritten with its nodes rebuilt to match (entry 2 changed, its parents and
    the head recomputed), or cut below the newest checkpoint, passed every check of its
    own and was signed: a second history under the log's key (log tamper probe, session
    26). Refused now: the first entries must still give the root signed for them."""
    from ca.merkle import node_hash

    key = Ed25519PrivateKey.generate()
    signer = translog.CheckpointSigner("eport.test/log", key)
    store = make_store(engine)
    record(store, 5)
    with Session(engine) as s:
        signed = signer.latest(s)
        s.commit()
    assert signed.size == 5
    # A head read before another process appended and signed a larger size (PostgreSQL's
    # READ COMMITTED): the smaller size read is still signed, not taken for a cut log
    # (review of session 26: a 500 log-corrupted at GET checkpoint under load)
    with Session(engine) as s:
        size4_root = translog.tree_at(s, 5).root(4)
        note = signer.sign(s, 4, size4_root)
        s.rollback()
    assert note.split(b"\n")[1] == b"4"
    with Session(engine) as s, pytest.raises(translog.LogCorrupted, match="read for them"):
        signer.sign(s, 4, hashlib.sha256(b"not the log's").digest())

    def nodes(s: Session) -> dict[tuple[int, int], bytes]:
        rows = s.execute(select(LogNodeRow.level, LogNodeRow.idx, LogNodeRow.hash))
        return {(int(a), int(b)): bytes(h) for a, b, h in rows}

    with records_unguarded(engine), Session(engine) as s:
        n = nodes(s)
        forged = leaf_hash(b"another entry 2")
        pair = node_hash(forged, n[(0, 3)])
        four = node_hash(n[(1, 0)], pair)
        for (level, idx), value in {(0, 2): forged, (1, 1): pair, (2, 0): four}.items():
            s.execute(
                LogNodeRow.__table__.update()
                .where(LogNodeRow.level == level, LogNodeRow.idx == idx)
                .values(hash=value)
            )
        s.execute(LogHeadRow.__table__.update().values(root_hash=node_hash(four, n[(0, 4)])))
        s.commit()
    record(store, 1, start=5)  # appended on the rewritten nodes: a consistent tree of 6
    with Session(engine) as s:
        size, root = translog.read_head(s)
        assert size == 6 and translog.tree_at(s, 6).root(6) == root
        with pytest.raises(translog.LogCorrupted, match="first 5 entries no longer give"):
            signer.latest(s)
        # nor, behind a head read early, a smaller size of the rewritten history
        forged_four = translog.tree_at(s, 6).root(4)
        with pytest.raises(translog.LogCorrupted, match="first 5 entries no longer give"):
            signer.sign(s, 4, forged_four)
        assert signer.newest_stored(s) == signed  # nothing was stored
    # cut below the checkpoint (entries 4 and 5 and their nodes gone, the head moved back)
    with records_unguarded(engine), Session(engine) as s:
        s.execute(LogNodeRow.__table__.delete().where(LogNodeRow.idx >= 2, LogNodeRow.level == 1))
        s.execute(LogNodeRow.__table__.delete().where(LogNodeRow.idx >= 4, LogNodeRow.level == 0))
        s.execute(LogEntryRow.__table__.delete().where(LogEntryRow.idx >= 4))
        s.execute(LogHeadRow.__table__.update().values(size=4, root_hash=nodes(s)[(2, 0)]))
        s.commit()
    with Session(engine) as s, pytest.raises(translog.LogCorrupted, match="log that shrank"):
        signer.latest(s)


def test_sealed_log_key_serves_the_newest_stored_checkpoint(engine: Engine) -> None:
    key = Ed25519PrivateKey.generate()
    record(make_store(engine), 2)
    with Session(engine) as s:
        signed = translog.CheckpointSigner("eport.test/log", key).latest(s)
        s.commit()
    record(make_store(engine), 1, start=2)
    sealed = translog.CheckpointSigner("eport.test/log", SealedSigner(key.public_key()))
    # a log with none stored (past the records' guards, migration 0012)
    with records_unguarded(engine), Session(engine) as s:
        assert sealed.latest(s) == signed
        s.execute(CheckpointRow.__table__.delete())
        with pytest.raises(Sealed):
            sealed.latest(s)


def test_a_log_key_the_hierarchy_record_no_longer_names_signs_nothing(engine: Engine) -> None:
    """After ROTATE-LOG-KEY on another host the record names the new ``log.pub``: the
    retired key serves the newest stored checkpoint and signs no new size (two hosts
    over HTTP: tests/test_two_hosts_ca_files.py)."""
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()

    def publish(key: Ed25519PrivateKey) -> None:
        pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        with Session(engine) as s:
            s.merge(HierarchyFileRow(path="log.pub", sha256=hashlib.sha256(pem).hexdigest()))
            s.commit()

    record(make_store(engine), 2)
    publish(old)
    with Session(engine) as s:
        signed = translog.CheckpointSigner("eport.test/log", old).latest(s)
        s.commit()
    assert signed.size == 2
    record(make_store(engine), 1, start=2)
    publish(new)
    with records_unguarded(engine), Session(engine) as s:  # deletes checkpoints below
        assert translog.CheckpointSigner("eport.test/log", old).latest(s) == signed
        assert translog.CheckpointSigner("eport.test/log", new).latest(s).size == 3
        s.execute(CheckpointRow.__table__.delete())
        with pytest.raises(translog.LogKeyRetired):
            translog.CheckpointSigner("eport.test/log", old).latest(s)


def test_empty_log_checkpoint(engine: Engine) -> None:
    key = Ed25519PrivateKey.generate()
    with Session(engine) as s:
        head = translog.CheckpointSigner("eport.test/log", key).latest(s)
        assert (head.size, head.root_hash) == (0, EMPTY_ROOT)
        assert s.get(LogHeadRow, translog.HEAD_ID) is None


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000/log"),
        ("https://ca.eport.example/", "ca.eport.example/log"),
        ("https://eport.example/pki", "eport.example/pki/log"),
    ],
)
def test_origin(url: str, origin: str) -> None:
    assert translog.origin_for(url) == origin


def test_origin_sticks_to_the_first_checkpoint(engine: Engine) -> None:
    """A log keeps its name when the CA's public URL (say, a development port) changes."""
    key = Ed25519PrivateKey.generate()
    record(make_store(engine), 2)
    with Session(engine) as s:
        translog.CheckpointSigner("old.example/log", key).latest(s)
        s.commit()
    record(make_store(engine), 1, start=2)
    moved = translog.CheckpointSigner("new.example/log", key)
    with Session(engine) as s:
        assert moved.latest(s).note.startswith(b"old.example/log\n3\n")
        assert moved.origin(s) == "old.example/log"
