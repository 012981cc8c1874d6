"""Quorum ceremonies: an operation that runs once M custodians have presented shares.

Framework-free: storage, clock and the operations are passed in. A ceremony is
opened for one :class:`Operation` with its parameters and gets an X25519 key
(derived from the server's boot key, :mod:`ca.bootkey`); custodians join with their
share sealed to that key (:mod:`ca.share_transport`). Each share is opened and
checked against the public custody record on arrival: a wrong or corrupted share, a
share of another ceremony or custody set, a share for the other key-encryption key,
or a custodian who already joined is refused and nothing is stored. When the M-th
share arrives, in the same database transaction: every stored share is opened again,
the KEK is rebuilt and checked, the operation runs, the ceremony is marked done with
a compare-and-set (so it runs exactly once), the stored shares are deleted, and the
completion is logged with the custodians' identities; the KEK is wiped in any case.
The operation writes its files through a :class:`~ca.ceremony_files.FileChanges`: if the
transaction does not commit, they are put back as they were before the error is raised.
"""

from __future__ import annotations

import datetime
import enum
import json
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ca.bootkey import BootKey
from ca.ceremony_files import FileChanges
from ca.custody import CustodyRecord, Purpose, RepeatedCustodian, ShareRejected, wipe
from ca.errors import BadRequest, Conflict, NotFound
from ca.records import Event, EventType
from ca.share_transport import key_fingerprint, open_share, raw_public

Clock = Callable[[], datetime.datetime]
log = logging.getLogger("eport.ca")


@enum.unique
class Operation(enum.Enum):
    """What a quorum may do; all but ``UNSEAL`` use the root key."""

    UNSEAL = "UNSEAL"
    ISSUE_INTERMEDIATE = "ISSUE-INTERMEDIATE"
    REVOKE_INTERMEDIATE = "REVOKE-INTERMEDIATE"
    ROOT_CRL = "ROOT-CRL"
    ROTATE_LOG_KEY = "ROTATE-LOG-KEY"
    REPLACE_LOG_KEY = "REPLACE-LOG-KEY"
    """The log key lost (or compromised): a new one, the hand-over vouched for by the root
    key instead of signed by the key it retires (docs/emergency-plan.md §7)."""
    ROTATE_ISSUER = "ROTATE-ISSUER"
    APPROVE_OFFICER = "APPROVE-OFFICER"
    """A member agency left with no RA officer in force gets one: only its own officers
    approve its staff, so no single other member may (docs/emergency-plan.md)."""

    @property
    def purpose(self) -> Purpose:
        return Purpose.SEAL if self is Operation.UNSEAL else Purpose.ROOT

    @classmethod
    def parse(cls, text: str) -> Operation:
        try:
            return cls(text.upper())
        except ValueError:
            known = ", ".join(o.value for o in cls if o is not cls.UNSEAL)
            raise BadRequest(f"unknown ceremony operation {text!r} ({known})") from None


@enum.unique
class CeremonyState(enum.Enum):
    OPEN = "open"
    DONE = "done"


class CeremonyClosed(Conflict):
    slug = "ceremony-closed"
    title = "The ceremony is not open"


@dataclass(frozen=True)
class Ceremony:
    id: str
    operation: Operation
    params: Mapping[str, str]
    custody_id: str
    boot_id: str
    """The server instance whose boot key holds the ceremony's private key."""
    threshold: int
    state: CeremonyState
    opened_by: str
    created_at: datetime.datetime
    expires_at: datetime.datetime
    joined: tuple[str, ...] = ()
    """Members whose custodians presented a valid share, in order."""
    completed_at: datetime.datetime | None = None
    result: Mapping[str, Any] = field(default_factory=dict)
    secret: bytes | None = field(default=None, repr=False)
    """UNSEAL only: the seal KEK wrapped by the boot key."""
    handout: str | None = field(default=None, repr=False, compare=False)
    """APPROVE-OFFICER only, in the answer to the completing join and never stored: the
    new officer's one-time enrollment code (the database keeps its hash, as for any)."""


@dataclass(frozen=True)
class Outcome:
    """What an operation returns: public facts (logged) and, for UNSEAL, a wrapped secret."""

    result: Mapping[str, Any]
    secret: bytes | None = field(default=None, repr=False)
    handout: str | None = field(default=None, repr=False)
    """Given once to the custodian whose join completed the ceremony, never stored."""
    after_event: Callable[[CeremonyTx], object] | None = field(default=None, repr=False)
    """Run in the completing transaction once the ``ceremony.completed`` event is
    appended (``ROTATE-LOG-KEY`` signs the log's hand-over checkpoint there, which must
    include that event); a failure fails the ceremony like any other."""


class CeremonyTx(Protocol):
    def insert_ceremony(self, c: Ceremony) -> bool:
        """False if a ceremony with this id exists."""
        ...

    def get_ceremony(self, ceremony_id: str, *, for_update: bool = False) -> Ceremony | None: ...

    def add_share(
        self, ceremony_id: str, member: str, sealed: bytes, at: datetime.datetime
    ) -> None: ...

    def sealed_shares(self, ceremony_id: str) -> list[tuple[str, bytes]]: ...

    def finish(self, c: Ceremony) -> bool:
        """Compare-and-set open → done with the result; deletes the stored shares."""
        ...

    def append_event(self, event: Event) -> int: ...

    def wipe_expired_shares(self, now: datetime.datetime) -> int:
        """Blank the sealed shares of open ceremonies past their expiry (the rows stay:
        who joined); how many were blanked."""
        ...


class CeremonyStore(Protocol):
    def transaction(self) -> AbstractContextManager[CeremonyTx]: ...


Runner = Callable[[Ceremony, bytearray, CeremonyTx, FileChanges], Outcome]
"""Runs an operation with the rebuilt KEK inside the completing transaction; it writes
its files through the :class:`~ca.ceremony_files.FileChanges` (undone on rollback)."""


class Quorum:
    """Opens ceremonies and takes shares; see the module docstring."""

    def __init__(
        self,
        *,
        record: CustodyRecord,
        boot: BootKey,
        store: CeremonyStore,
        runners: Mapping[Operation, Runner],
        clock: Clock,
        ttl: datetime.timedelta = datetime.timedelta(hours=4),
        random_bytes: Callable[[int], bytes] = os.urandom,
        file_changes: Callable[[str], FileChanges] = lambda ceremony_id: FileChanges(),
        before_commit: Callable[[CeremonyTx, Ceremony], None] | None = None,
    ) -> None:
        self.record = record
        self.boot = boot
        self.store = store
        self.runners = runners
        self.clock = clock
        self.ttl = ttl
        self.random_bytes = random_bytes
        self.file_changes = file_changes
        self.before_commit = before_commit
        """Called last in a root operation's completing transaction, after its files are
        written (the CA publishes them to the database's hierarchy record there)."""

    def public_key(self, ceremony_id: str) -> bytes:
        return raw_public(self.boot.ceremony_key(ceremony_id).public_key())

    def fingerprint(self, ceremony_id: str) -> str:
        return key_fingerprint(self.public_key(ceremony_id))

    def _new(self, cid: str, op: Operation, params: Mapping[str, str], actor: str) -> Ceremony:
        now = self.clock()
        return Ceremony(
            id=cid,
            operation=op,
            params=dict(params),
            custody_id=self.record.custody_id,
            boot_id=self.boot.id,
            threshold=self.record.threshold,
            state=CeremonyState.OPEN,
            opened_by=actor,
            created_at=now,
            expires_at=now + self.ttl,
        )

    def _started(self, c: Ceremony) -> Event:
        return Event(
            type=EventType.CEREMONY_STARTED,
            at=c.created_at,
            actor=c.opened_by,
            details={
                "ceremony": c.id,
                "operation": c.operation.value,
                "params": dict(c.params),
                "custody_id": c.custody_id,
                "threshold": c.threshold,
                "key_fingerprint": self.fingerprint(c.id),
            },
        )

    def start(self, op: Operation, params: Mapping[str, str], actor: str) -> Ceremony:
        """Open a root-operation ceremony; nothing is signed until M custodians join."""
        if op is Operation.UNSEAL:
            raise BadRequest("unsealing has its own ceremony (eport ca unseal)")
        if op not in self.runners:
            raise BadRequest(f"this server cannot run {op.value}")
        c = self._new("cer-" + self.random_bytes(8).hex(), op, params, actor)
        with self.store.transaction() as tx:
            self._wipe_expired(tx)
            tx.insert_ceremony(c)
            tx.append_event(self._started(c))
        return c

    def unseal_ceremony(self) -> Ceremony:
        """This boot's unseal ceremony, opened on first use (by any worker)."""
        cid = self.boot.unseal_ceremony_id
        with self.store.transaction() as tx:
            c = tx.get_ceremony(cid)
            if c is not None:
                return c
            c = self._new(cid, Operation.UNSEAL, {}, "system:boot")
            c = replace(c, expires_at=c.created_at + datetime.timedelta(days=3650))
            if tx.insert_ceremony(c):
                tx.append_event(self._started(c))
        with self.store.transaction() as tx:
            found = tx.get_ceremony(cid)
        assert found is not None
        return found

    def wipe_expired(self) -> None:
        """Blank the stored shares of every ceremony that has expired (its own transaction)."""
        with self.store.transaction() as tx:
            self._wipe_expired(tx)

    def _wipe_expired(self, tx: CeremonyTx) -> None:
        """Shares of a ceremony that expired are never combined: they are not kept (each
        is a custodian's root or seal share, sealed only to this server's boot key)."""
        wiped = tx.wipe_expired_shares(self.clock())
        if wiped:
            log.info("wiped %d stored shares of expired ceremonies", wiped)

    def get_or_none(self, ceremony_id: str) -> Ceremony | None:
        with self.store.transaction() as tx:
            return tx.get_ceremony(ceremony_id)

    def get(self, ceremony_id: str) -> Ceremony:
        with self.store.transaction() as tx:
            c = tx.get_ceremony(ceremony_id)
        if c is None:
            raise NotFound(f"no ceremony {ceremony_id!r}")
        return c

    def join(self, ceremony_id: str, sealed: Any) -> Ceremony:
        """Take one custodian's sealed share; run the operation when it is the M-th.

        The operation's files are undone when the transaction does not commit (the
        operation, the ceremony's events or the COMMIT failed): the database and the
        files stay as they were, and the ceremony stays open for the M-th share again."""
        self.wipe_expired()
        changes = self.file_changes(ceremony_id)
        try:
            c = self._join(ceremony_id, sealed, changes)
        except BaseException:
            try:
                changes.undo()
            except Exception as exc:  # one line: a full disk is said once, not traced
                log.error(
                    "a failed ceremony's files were not all put back (%s): the next join "
                    "or start puts them back from its journal",
                    exc,
                )
            raise
        try:
            changes.committed()
        except OSError:  # committed all the same: the next start drops the journal
            log.exception(
                "ceremony %s committed; its journal or the generation file was not written",
                ceremony_id,
            )
        return c

    def _join(self, ceremony_id: str, sealed: Any, changes: FileChanges) -> Ceremony:
        with self.store.transaction() as tx:
            c = tx.get_ceremony(ceremony_id, for_update=True)
            if c is None:
                raise NotFound(f"no ceremony {ceremony_id!r}")
            if c.boot_id != self.boot.id:
                raise CeremonyClosed(
                    f"ceremony {c.id} was opened by another server instance (restarted?); "
                    "open a new one"
                )
            if c.state is not CeremonyState.OPEN:
                raise CeremonyClosed(f"ceremony {c.id} is {c.state.value}")
            if c.custody_id != self.record.custody_id:
                # An unseal ceremony is opened once per server instance: no one can open
                # another, a restart does (docs/emergency-plan.md, runbook 3).
                then = (
                    "restart the server and unseal it with the new share files"
                    if c.operation is Operation.UNSEAL
                    else "open a new one"
                )
                raise CeremonyClosed(
                    f"ceremony {c.id} was opened for custody set {c.custody_id}, which was "
                    f"re-shared as {self.record.custody_id}; {then}"
                )
            now = self.clock()
            if now >= c.expires_at:
                raise CeremonyClosed(f"ceremony {c.id} expired; open a new one")
            key = self.boot.ceremony_key(c.id)
            share = open_share(sealed, c.id, key)
            if share.purpose is not c.operation.purpose:
                raise ShareRejected(
                    f"{c.operation.value} needs the {c.operation.purpose.value} share, "
                    f"not the {share.purpose.value} share"
                )
            self.record.verify_share(share)
            if share.member in c.joined:
                raise RepeatedCustodian(f"the custodian of {share.member} has already joined")
            tx.add_share(c.id, share.member, json.dumps(sealed).encode(), now)
            entry = self.record.entry(share.member)
            tx.append_event(
                Event(
                    type=EventType.CEREMONY_JOINED,
                    at=now,
                    actor=f"custodian:{share.member}",
                    details={
                        "ceremony": c.id,
                        "operation": c.operation.value,
                        "member": share.member,
                        "custodian": entry.custodian,
                        "share_fingerprint": share.fingerprint,
                    },
                )
            )
            c = replace(c, joined=(*c.joined, share.member))
            if len(c.joined) < c.threshold:
                return c
            return self._complete(tx, c, key, now, changes)

    def _complete(
        self,
        tx: CeremonyTx,
        c: Ceremony,
        key: Any,
        now: datetime.datetime,
        changes: FileChanges,
    ) -> Ceremony:
        shares = [open_share(json.loads(blob), c.id, key) for _, blob in tx.sealed_shares(c.id)]
        kek = self.record.combine(shares, c.operation.purpose)
        try:
            outcome = self.runners[c.operation](c, kek, tx, changes)
        finally:
            wipe(kek)
        done = replace(
            c,
            state=CeremonyState.DONE,
            completed_at=now,
            result=dict(outcome.result),
            secret=outcome.secret,
        )
        if not tx.finish(done):
            raise CeremonyClosed(f"ceremony {c.id} was completed by another request")
        custodians = [
            {"member": m, "custodian": self.record.entry(m).custodian} for m in done.joined
        ]
        tx.append_event(
            Event(
                type=EventType.CEREMONY_COMPLETED,
                at=now,
                actor=f"ceremony:{c.id}",
                details={
                    "ceremony": c.id,
                    "operation": c.operation.value,
                    "params": dict(c.params),
                    "custody_id": c.custody_id,
                    "custodians": custodians,
                    "result": dict(outcome.result),
                },
            )
        )
        if outcome.after_event is not None:
            outcome.after_event(tx)
        if self.before_commit is not None and c.operation is not Operation.UNSEAL:
            self.before_commit(tx, done)
        return replace(done, handout=outcome.handout)
