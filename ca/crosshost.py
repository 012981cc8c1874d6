"""Several hosts of one database: the ``ca/`` files each should have, and what a host does
when its own differ (docs/ca.md, "Several hosts on one PostgreSQL database").

Each host signs with the keys and certificates of its own data directory. A quorum
ceremony (a rollover, a revoked issuing CA, a root CRL, a new log key) or a re-share
changes them on the host that ran it, and a forced OCSP responder renewal renews that
host's responders only. The database carries the signal:

* the **hierarchy record** (``hierarchy_head``, ``hierarchy_files``): the SHA-256 of every
  file of the hierarchy (:func:`local_files`) as the last host that changed them had
  them, and the bytes of the public ones. A generation number orders the publications;
  each host notes the one its files match in ``ca/crosshost.json``.
* the **responder token**: a forced responder renewal sets a new random token; a host
  whose note holds another renews its own responders (a new key of its own: no key ever
  travels) and notes it.

What a host does with a record newer than its note (:meth:`HierarchySync.check`):

* public files it can verify on its own (the root CRL, signed by its root and numbered
  higher; ``custody.json`` with ``custody.json.sig``, only together and only when the
  signature verifies over those very bytes under its own ``root.crt``
  (:mod:`ca.custody_signature`), the record is ordered after this host's own (its signed
  ``sequence``) and it is not a record this host saw a re-share replace;
  ``issuers/active.json`` with ``issuers/active.json.sig``, likewise together, verified
  under its own root and ordered after its own by the signature's ``sequence``
  (:mod:`ca.active_signature`); the old log keys ``log-<n>.pub``) are written into its
  ``ca/`` and its workers reload them (:mod:`ca.generation`);
* files that need a private key it does not have (a new issuing CA generation, a new log
  key) cannot come through the database: the host reports itself **stale**, naming
  them and the manual step (copy the ceremony host's ``ca/``). ``eport serve`` refuses to
  start so, ``GET /ca/v1/health`` says so, and the server logs it once.

A host whose note matches the record but whose files differ changed them itself (a
ceremony, a re-share): it publishes them, raising the generation by a conditional
update, so that two hosts changing theirs at once end with one published and the other
stale. A database without a record (before migration 0007) gets the first host's. A
custody record and signature that do not verify together (a re-share cut short between
writing the two) are not published: the record keeps the last pair that did
(:func:`custody_held_back`), and the other hosts with it. Nor is an ``issuers/active.json``
its signature does not verify (edited by hand: it serves this host alone,
:func:`active_held_back`).

Framework-free: the record's storage is passed in (:class:`Record`), the clock too.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509

from ca import custody_files, hierarchy
from ca.active_signature import ActiveSignatureRefused, sequence_of, verify_active
from ca.custody_files import write_durably
from ca.custody_signature import RecordSignatureRefused, archived_signature_path, verify_record

log = logging.getLogger("eport.ca")

NOTE_FILE = "crosshost.json"
LOCK_FILE = ".crosshost.lock"
MANUAL_STEP = (
    "stop this host and copy the ceremony host's ca/ directory over this host's "
    '(docs/ca.md, "Several hosts on one PostgreSQL database"), then start it again'
)

_PUBLIC = re.compile(
    r"^(root\.crt|root\.crl|custody\.json(\.sig)?|log(-[0-9]+)?\.pub|log\.pub\.sig"
    r"|issuers/[^/]+\.crt"
    r"|issuers/active\.json(\.sig)?)$"
)
_PICKED_UP = re.compile(r"^(root\.crl|log-[0-9]+\.pub)$")
"""Public files a host takes from the record one by one: nothing it signs with depends on
a key it lacks (the root CRL is checked against its own root first). The custody record
and ``issuers/active.json`` are each taken as a pair with their root signature
(:data:`CUSTODY_PAIR`, :data:`ACTIVE_PAIR`)."""
CUSTODY_PAIR = ("custody.json.sig", "custody.json")
"""Taken together or not at all, when the signature verifies under this host's root;
written in this order (the signature first), as a re-share installs them."""
ACTIVE_PAIR = ("issuers/active.json", "issuers/active.json.sig")
"""Taken together or not at all, when the signature verifies under this host's root and
is ordered after this host's own (:mod:`ca.active_signature`); written in this order
(the file first): the order is the signature's, so a pick-up cut between the two leaves
this host's order as it was, and the next check takes the pair again."""


@dataclass(frozen=True)
class Published:
    """One file of the hierarchy: its SHA-256, and its bytes when it is public."""

    sha256: str
    data: bytes | None = None


@dataclass(frozen=True)
class Head:
    generation: int
    responders_token: str | None


class Record(Protocol):
    """Where the hierarchy record is kept (:mod:`ca.crosshost_sql`)."""

    def head(self) -> Head | None: ...

    def files(self) -> dict[str, Published]: ...

    def publish(
        self, after: int | None, files: Mapping[str, Published], by: str, at: datetime.datetime
    ) -> int | None:
        """Replace the record by ``files`` as generation ``after + 1`` (the first, 1,
        when ``after`` is None), only if it is still at ``after``: the new generation, or
        None when another host published first."""
        ...

    def force_responders(self, token: str, at: datetime.datetime) -> None: ...


def local_files(data_dir: Path) -> dict[str, Published]:
    """The hierarchy's files in ``data_dir`` that every host of one database shares: the
    root, its CRL, the custody record and its signature, the log keys, the issuing CAs
    and which of them issue. Not the OCSP responders (each host renews its own), nor work
    or note files."""
    d = hierarchy.ca_dir(data_dir)
    paths = [
        d / n for n in ("root.crt", "root.crl", "root.key", *CUSTODY_PAIR, "log.pub", "log.pub.sig")
    ]
    paths += [d / "log.key", *sorted(d.glob("log-*.pub"))]
    paths += sorted((d / "issuers").glob("*.crt")) + sorted((d / "issuers").glob("*.key"))
    paths += [d / name for name in ACTIVE_PAIR]
    out: dict[str, Published] = {}
    for p in paths:
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            continue
        name = p.relative_to(d).as_posix()
        public = _PUBLIC.match(name) is not None
        out[name] = Published(hashlib.sha256(data).hexdigest(), data if public else None)
    return out


@dataclass(frozen=True)
class Note:
    """What this host's files match: a generation of the record, a responder token."""

    generation: int = 0
    responders_token: str | None = None
    record: str | None = None
    """The digest of that generation's record (:func:`record_digest`): a database restored
    from a backup uses generation numbers again for other files, and a note of the same
    number must not pass for a match. None in a note written before it was kept."""


def read_note(data_dir: Path) -> Note:
    try:
        doc = json.loads((hierarchy.ca_dir(data_dir) / NOTE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return Note()
    return Note(int(doc.get("generation", 0)), doc.get("responders_token"), doc.get("record"))


def write_note(data_dir: Path, note: Note) -> None:
    doc = {
        "generation": note.generation,
        "responders_token": note.responders_token,
        "record": note.record,
    }
    write_durably(hierarchy.ca_dir(data_dir) / NOTE_FILE, (json.dumps(doc) + "\n").encode())


@contextmanager
def host_lock(data_dir: Path) -> Iterator[None]:
    """One process of this host at a time compares, publishes, picks up or renews."""
    with open(hierarchy.ca_dir(data_dir) / LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Outcome:
    """What one check found and did."""

    generation: int
    picked_up: tuple[str, ...] = ()
    """Public files written from the record."""
    published: bool = False
    missing: tuple[str, ...] = ()
    """Files whose record this host cannot take: it is stale while this is not empty."""
    responders_due: bool = False
    """Another host forced a responder renewal this host has not followed yet."""
    responders_token: str | None = None
    """The record's token of the last forced responder renewal."""
    notes: tuple[str, ...] = field(default=())
    restored: int | None = None
    """The generation this host last matched, when the record is not that one nor newer
    (the database was restored from a backup): nothing was taken from it."""
    custody_held: str | None = None
    """Why this host's own custody record and signature were not published (they do not
    verify together: :func:`custody_held_back`); the record keeps the pair it had."""
    active_held: str | None = None
    """Why this host's own ``issuers/active.json`` and its signature were not published
    (:func:`active_held_back`: edited by hand here, say); the record keeps the pair it had."""

    @property
    def stale(self) -> bool:
        return bool(self.missing)

    def held_back_warning(self) -> str | None:
        """The line that says which of this host's signed pairs were not published, and
        why."""
        lines = []
        if self.custody_held is not None:
            lines.append(
                f"this host's custody record and signature are not published to the "
                f"database's record ({self.custody_held}); the other hosts keep the last pair "
                "published. A re-share cut short between the two files is finished when "
                "this server starts again (or by the next eport ca reshare)"
            )
        if self.active_held is not None:
            lines.append(
                f"this host's issuers/active.json is not published to the database's record "
                f"({self.active_held}); this host issues from the generations it names, "
                "the other hosts keep the last one published. The next ceremony run here "
                "that writes it (ROTATE-ISSUER, ISSUE-INTERMEDIATE, REVOKE-INTERMEDIATE) "
                "signs it"
            )
        return "; ".join(lines) or None

    def warning(self) -> str | None:
        """The one line an operator reads (health, log, ``eport serve``)."""
        if not self.missing:
            return None
        if self.restored is not None:
            return (
                f"this host's CA files do not follow the database's record: its generation "
                f"{self.generation} is not the record this host last matched (its generation "
                f"{self.restored}); was the database restored from a backup? "
                f"{', '.join(self.missing)} differ here and nothing is taken from it; "
                + MANUAL_STEP.replace("the ceremony host's", "the restored host's")
            )
        refused = f" (refused: {'; '.join(self.notes)})" if self.notes else ""
        return (
            f"this host's CA files are behind the database's record (generation "
            f"{self.generation}, published by the host that ran the last ceremony): "
            f"{', '.join(self.missing)} differ or are missing here and cannot be taken "
            f"from the database (new keys stay on the host that made them{refused}); "
            f"{MANUAL_STEP}"
        )


def _root_crl_ok(data_dir: Path, new: bytes) -> str | None:
    """Why the root CRL of the record may not replace this host's (None: it may)."""
    d = hierarchy.ca_dir(data_dir)
    root = x509.load_pem_x509_certificate((d / "root.crt").read_bytes())
    try:
        crl = x509.load_der_x509_crl(new)
    except ValueError:
        return "not a CRL"
    if not crl.is_signature_valid(root.public_key()):  # type: ignore[arg-type]
        return "not signed by this host's root"
    ours = x509.load_der_x509_crl((d / "root.crl").read_bytes())

    def number(c: x509.CertificateRevocationList) -> int:
        return int(c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)

    if number(crl) <= number(ours):
        return "not newer than this host's"
    return None


def _checked(data_dir: Path, name: str, data: bytes) -> str | None:
    if name == "root.crl":
        return _root_crl_ok(data_dir, data)
    if name in ("custody.json", "issuers/active.json"):
        try:
            doc = json.loads(data)
        except ValueError:
            return "not JSON"
        if not isinstance(doc, dict):
            return "not a JSON object"
        if name == "custody.json":
            from ca.custody import CustodyRecord

            try:
                CustodyRecord.from_json(doc)
            except Exception:
                return "not a custody record"
    return None


def _custody_refused(data_dir: Path, published: Mapping[str, Published]) -> str | None:
    """Why the record's custody record and signature may not replace this host's (None:
    they may): the pair must be whole and the signature must verify over the record's
    very bytes under this host's own ``root.crt``. The database is no authority for who
    the custodians are: whoever can write it could otherwise plant a record that makes
    this host refuse the real custodians' shares."""
    record, signature = published.get("custody.json"), published.get("custody.json.sig")
    if record is None or record.data is None:
        return "the database's record holds no custody record"
    if hashlib.sha256(record.data).hexdigest() != record.sha256:
        return "the database's custody record does not match its digest"
    why = _checked(data_dir, "custody.json", record.data)
    if why is not None:
        return f"the database's custody.json is {why}"
    local = _read(data_dir, "custody.json")
    theirs, ours = _custody_id(record.data), _custody_id(local)
    if theirs and theirs != ours and custody_files.archived_path(data_dir, theirs).exists():
        # Signed by this root, but a re-share replaced it. For records of before the
        # signed sequence (below), the replaced records this host keeps are what tells
        # an old one put back.
        return (
            f"the database's custody record is custody set {theirs}, which a re-share "
            f"replaced (this host keeps it as ca/custody-{theirs}.json): an older record "
            "put back into the database is not taken"
        )
    refused = "the database's custody record is not signed by this host's root"
    if signature is None or signature.data is None:
        return (
            f"{refused}: it has no signature (a record written before custody records were "
            "signed, or its signature was removed; a re-share on the ceremony host signs it)"
        )
    if hashlib.sha256(signature.data).hexdigest() != signature.sha256:
        return f"{refused}: its signature does not match its digest"
    root = x509.load_pem_x509_certificate((hierarchy.ca_dir(data_dir) / "root.crt").read_bytes())
    try:
        verify_record(root, record.data, signature.data)
    except RecordSignatureRefused as exc:
        return f"{refused}: {exc.detail}"
    # Only now is its sequence the root's word. A record of before sequences reads as 0:
    # two such records cannot be told apart by it (the archive check above stays for them).
    theirs_seq, ours_seq = _custody_sequence(record.data), _custody_sequence(local)
    if (
        record.data != local
        and theirs_seq is not None
        and ours_seq is not None
        and (theirs_seq or ours_seq)
        and theirs_seq <= ours_seq
    ):
        return (
            f"the database's custody record (custody set {theirs}, sequence {theirs_seq}) is "
            f"not ordered after this host's (custody set {ours}, sequence {ours_seq}): a "
            "record a re-share replaced, put back into the database, is not taken"
        )
    return None


def custody_behind(data_dir: Path, published: Mapping[str, Published]) -> str | None:
    """Why a re-share may not run on this host (None: it may): the database's record
    holds a custody record this host would take in place of its own (signed by its root,
    and ordered after its own; between records of before the sequence, one it never
    replaced: :func:`_custody_refused`). This host missed a re-share (it was down, or its
    ``ca/`` is an old copy); a re-share here would sign a record of a sequence another
    record already has, which every other host refuses, and the old shares this host
    still takes are the ones that re-share retired.
    """
    local = _read(data_dir, "custody.json")
    record = published.get("custody.json")
    if local is None or record is None or record.data is None or record.data == local:
        return None
    if _custody_refused(data_dir, published) is not None:
        return None  # not a record this host would take: nothing newer is known
    return (
        f"this host's custody record ({_custody_named(local)}) is behind the database's "
        f"({_custody_named(record.data)}): a re-share replaced it on another host. Start "
        "eport serve here once so that this host takes the newer record, or re-share on an "
        "up-to-date host"
    )


def _custody_named(data: bytes) -> str:
    """A custody record as a refusal names it: its set, and its sequence when it has one."""
    sequence = _custody_sequence(data)
    named = f"custody set {_custody_id(data)}"
    return f"{named}, sequence {sequence}" if sequence else named


def custody_held_back(data_dir: Path, local: Mapping[str, Published]) -> str | None:
    """Why this host's own ``custody.json`` and ``custody.json.sig`` (of
    :func:`local_files`) may not be published (None: they may). A pair whose signature
    does not verify over the record under this host's ``root.crt`` (a re-share that died
    between writing its new signature and its new record, which :func:`ca.reshare.settle`
    finishes at the next start) would make every other host refuse it and stay stale
    for it; held back, the record keeps the last pair that verified. A record without a
    signature (written before records were signed) is published as before: no host
    takes it, but hosts whose ``ca/`` is a copy of this one match it."""
    signature, record = local.get("custody.json.sig"), local.get("custody.json")
    if signature is None or signature.data is None:
        return None
    if record is None or record.data is None:
        return "ca/custody.json.sig has no ca/custody.json beside it"
    root = x509.load_pem_x509_certificate((hierarchy.ca_dir(data_dir) / "root.crt").read_bytes())
    try:
        verify_record(root, record.data, signature.data)
    except RecordSignatureRefused as exc:
        return f"ca/custody.json.sig does not verify over ca/custody.json: {exc.detail}"
    return None


def _active_refused(data_dir: Path, published: Mapping[str, Published]) -> str | None:
    """Why the record's ``issuers/active.json`` and its signature may not replace this
    host's (None: they may): the pair must be whole, the signature must verify over the
    file's very bytes under this host's own ``root.crt`` (:mod:`ca.active_signature`),
    and its sequence must be higher than this host's own signature's (0 without one).
    The database is no authority for which generation issues: whoever can write it could
    otherwise switch every host back to an older generation, or stop issuance."""
    active, signature = (published.get(n) for n in ACTIVE_PAIR)
    if active is None or active.data is None:
        return "the database's record holds no issuers/active.json"
    if hashlib.sha256(active.data).hexdigest() != active.sha256:
        return "the database's issuers/active.json does not match its digest"
    why = _checked(data_dir, ACTIVE_PAIR[0], active.data)
    if why is not None:
        return f"the database's issuers/active.json is {why}"
    refused = "the database's issuers/active.json is not signed by this host's root"
    if signature is None or signature.data is None:
        return (
            f"{refused}: it has no signature (written before active.json was signed, or "
            "edited by hand on the host that published it; the next ceremony that writes "
            "it signs it)"
        )
    if hashlib.sha256(signature.data).hexdigest() != signature.sha256:
        return f"{refused}: its signature does not match its digest"
    root = x509.load_pem_x509_certificate((hierarchy.ca_dir(data_dir) / "root.crt").read_bytes())
    try:
        theirs = verify_active(root, active.data, signature.data)
    except ActiveSignatureRefused as exc:
        return f"{refused}: {exc.detail}"
    ours = sequence_of(_read(data_dir, ACTIVE_PAIR[1]))
    if theirs <= ours:
        return (
            f"the database's issuers/active.json (sequence {theirs}) is not ordered after "
            f"this host's (sequence {ours}): an older one, put back into the database, is "
            "not taken"
        )
    return None


def _active_edited_here(
    data_dir: Path, local: Mapping[str, Published], published: Mapping[str, Published]
) -> bool:
    """Whether this host's ``issuers/active.json`` departs from the record's only by an
    edit made here (by hand): the record holds the very signature this host has, with the
    file it was made over; or neither holds a signature and the record no file. Such a
    file serves this host alone (:func:`active_held_back`) and is not a reason to be stale
    when another host publishes something else."""
    ours_sig = local.get(ACTIVE_PAIR[1])
    theirs, theirs_sig = (published.get(n) for n in ACTIVE_PAIR)
    if ours_sig is None and theirs_sig is None:
        return theirs is None
    if ours_sig is None or theirs_sig is None or ours_sig.sha256 != theirs_sig.sha256:
        return False
    if theirs is None or theirs.data is None or theirs_sig.data is None:
        return False
    if hashlib.sha256(theirs.data).hexdigest() != theirs.sha256:
        return False
    root = x509.load_pem_x509_certificate((hierarchy.ca_dir(data_dir) / "root.crt").read_bytes())
    try:
        verify_active(root, theirs.data, theirs_sig.data)
    except ActiveSignatureRefused:
        return False  # the record's file was changed under this host's signature
    return True


def active_held_back(data_dir: Path, local: Mapping[str, Published]) -> str | None:
    """Why this host's own ``issuers/active.json`` and its signature (of
    :func:`local_files`) may not be published (None: they may, or there are none): the
    signature must verify over the file under this host's ``root.crt``. A file edited by
    hand here (allowed: it serves this host) is not signed, and would make every other
    host refuse it and stay stale for it; held back, the record keeps the last pair that
    verified."""
    active, signature = (local.get(n) for n in ACTIVE_PAIR)
    if active is None and signature is None:
        return None
    if active is None or active.data is None:
        return "ca/issuers/active.json.sig has no ca/issuers/active.json beside it"
    if signature is None or signature.data is None:
        return "it has no signature by the root: edited by hand here?"
    root = x509.load_pem_x509_certificate((hierarchy.ca_dir(data_dir) / "root.crt").read_bytes())
    try:
        verify_active(root, active.data, signature.data)
    except ActiveSignatureRefused as exc:
        return f"ca/issuers/active.json.sig does not verify over it: {exc.detail}"
    return None


@dataclass(frozen=True)
class _Publishable:
    files: dict[str, Published]
    custody: str | None = None
    """Why the custody pair was held back (:func:`custody_held_back`)."""
    active: str | None = None
    """Why the active.json pair was held back (:func:`active_held_back`)."""


def _publishable(
    data_dir: Path,
    local: Mapping[str, Published],
    published: Mapping[str, Published],
    *,
    first: bool = False,
) -> _Publishable:
    """What this host publishes of its files: all of them, but a signed pair (the custody
    record, ``issuers/active.json``) that is held back (:func:`custody_held_back`,
    :func:`active_held_back`), whose place the record's own pair keeps (none, when the
    record has none). A pair the record already holds as this host has it is not held
    back: it is published as it is. ``first``: the database has no record yet, and an
    ``issuers/active.json`` of before signatures (none beside it) is published as it is,
    as the custody record of before signatures is: no host takes it, but hosts whose
    ``ca/`` is a copy of this one (upgraded together) match it."""
    files = dict(local)
    why: dict[tuple[str, str], str] = {}
    for pair, held_back in ((CUSTODY_PAIR, custody_held_back), (ACTIVE_PAIR, active_held_back)):
        reason = held_back(data_dir, local)
        if first and pair is ACTIVE_PAIR and local.get(ACTIVE_PAIR[1]) is None:
            reason = None
        if reason is None or all(
            (local.get(n) and local[n].sha256) == (published.get(n) and published[n].sha256)
            for n in pair
        ):
            continue
        why[pair] = reason
        files = {k: v for k, v in files.items() if k not in pair}
        files.update({k: v for k, v in published.items() if k in pair})
    return _Publishable(files, why.get(CUSTODY_PAIR), why.get(ACTIVE_PAIR))


def _read(data_dir: Path, name: str) -> bytes | None:
    try:
        return (hierarchy.ca_dir(data_dir) / name).read_bytes()
    except FileNotFoundError:
        return None


def _custody_sequence(data: bytes | None) -> int | None:
    """The order a custody record carries (:attr:`ca.custody.CustodyRecord.sequence`, 0
    for a record without one); None: no record, or not one that reads."""
    from ca.custody import CustodyRecord

    if data is None:
        return None
    try:
        return CustodyRecord.from_json(json.loads(data)).sequence
    except Exception:
        return None


def _custody_id(data: bytes | None) -> str | None:
    """The custody id a custody record names (None: no record, or no id that can name a
    file: a record from the database names a path here only through it)."""
    try:
        doc = json.loads(data) if data is not None else None
    except ValueError:
        return None
    custody_id = doc.get("custody_id") if isinstance(doc, dict) else None
    if isinstance(custody_id, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,100}", custody_id):
        return custody_id
    return None


def _keep_replaced_custody(data_dir: Path) -> None:
    """Before a custody record taken from the record replaces this host's: keep this
    host's as ``ca/custody-<id>.json`` (with its signature), as a re-share keeps the one it
    replaces, so that it is never taken back from the database (:func:`_custody_refused`)."""
    record = _read(data_dir, "custody.json")
    custody_id = _custody_id(record)
    if record is None or custody_id is None:
        return
    signature = _read(data_dir, "custody.json.sig")
    if signature is not None:
        write_durably(archived_signature_path(data_dir, custody_id), signature)
    write_durably(custody_files.archived_path(data_dir, custody_id), record)


class HierarchySync:
    """One host's comparison of its ``ca/`` with the record (call under :func:`host_lock`)."""

    def __init__(
        self,
        data_dir: Path,
        record: Record,
        *,
        host: str,
        clock: Callable[[], datetime.datetime],
        bump: Callable[[Path], None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.record = record
        self.host = host
        self.clock = clock
        if bump is None:
            from ca.generation import bump_generation

            bump = bump_generation
        self.bump = bump

    def check(self) -> Outcome:
        head = self.record.head()
        note = read_note(self.data_dir)
        local = local_files(self.data_dir)
        if head is None:  # a database without a record: this host's files are it
            ours = _publishable(self.data_dir, local, {}, first=True)
            gen = self.record.publish(None, ours.files, self.host, self.clock())
            if gen is not None:
                digest = record_digest(ours.files)
                write_note(self.data_dir, Note(gen, note.responders_token, digest))
                return Outcome(
                    gen, published=True, custody_held=ours.custody, active_held=ours.active
                )
            head = self.record.head()
            assert head is not None
        published = self.record.files()
        for _ in range(3):  # the files of the generation read: a publication between the
            again = self.record.head()  # two reads would pass for a restored record
            if again is None or again.generation == head.generation:
                break
            head, published = again, self.record.files()
        token = head.responders_token
        due = token is not None and token != note.responders_token
        digest = record_digest(published)
        if _same(local, published):
            if (note.generation, note.record) != (head.generation, digest):
                write_note(self.data_dir, Note(head.generation, note.responders_token, digest))
            return Outcome(head.generation, responders_due=due, responders_token=token)
        if note.generation == head.generation and note.record in (None, digest):
            # This host changed its files since it matched the record: a ceremony or a
            # re-share ran here. Publish them (unless another host just did), but a custody
            # pair that does not verify.
            ours = _publishable(self.data_dir, local, published)
            if _same(ours.files, published):  # only a held-back pair differs
                return Outcome(
                    head.generation,
                    responders_due=due,
                    responders_token=token,
                    custody_held=ours.custody,
                    active_held=ours.active,
                )
            gen = self.record.publish(head.generation, ours.files, self.host, self.clock())
            if gen is not None:
                digest = record_digest(ours.files)
                write_note(self.data_dir, Note(gen, note.responders_token, digest))
                return Outcome(
                    gen,
                    published=True,
                    responders_due=due,
                    responders_token=token,
                    custody_held=ours.custody,
                    active_held=ours.active,
                )
            head = self.record.head()
            assert head is not None
            published = self.record.files()
        # A host that never matched a record (its first start on a database a newer
        # release filled from another host's files) cannot tell which files are newer:
        # it takes nothing and says so. Nor can one whose note is of a generation the
        # record has not reached, or of the same number with other files: the database
        # was restored from a backup (or its record dropped), and what it holds is not
        # newer than what this host has; the restored host's ca/ is to be copied.
        if note.generation > head.generation or (
            note.generation == head.generation and note.record != digest
        ):
            return self._follow(head, local, published, due, take=False, restored=note.generation)
        return self._follow(head, local, published, due, take=note.generation > 0)

    def _follow(
        self,
        head: Head,
        local: dict[str, Published],
        published: dict[str, Published],
        due: bool,
        *,
        take: bool,
        restored: int | None = None,
    ) -> Outcome:
        """Take what can be taken from a newer record; name what cannot (``restored``: the
        note's generation, when the record is not newer and nothing is taken)."""
        d = hierarchy.ca_dir(self.data_dir)
        picked: list[str] = []
        missing: list[str] = []
        notes: list[str] = []

        def differs(name: str) -> bool:
            theirs, ours = published.get(name), local.get(name)
            return (theirs and theirs.sha256) != (ours and ours.sha256)

        pair = [n for n in CUSTODY_PAIR if differs(n)]
        if pair:
            why = _custody_refused(self.data_dir, published) if take else None
            if take and why is None:
                if "custody.json" in pair:
                    _keep_replaced_custody(self.data_dir)
                for name in pair:  # the signature first, as a re-share installs them
                    data = published[name].data
                    assert data is not None
                    write_durably(d / name, data)
                    picked.append(name)
            else:
                if why is not None:
                    notes.append(why)
                missing += pair
        pair = [n for n in ACTIVE_PAIR if differs(n)]
        if pair and not (take and _active_edited_here(self.data_dir, local, published)):
            why = _active_refused(self.data_dir, published) if take else None
            if take and why is None:
                for name in pair:  # the file first: this host's order is the signature's
                    data = published[name].data
                    assert data is not None
                    write_durably(d / name, data)
                    picked.append(name)
            else:
                if why is not None:
                    notes.append(why)
                missing += pair
        for name in sorted(set(local) | set(published)):
            if name in CUSTODY_PAIR or name in ACTIVE_PAIR or not differs(name):
                continue
            theirs = published.get(name)
            if (
                take
                and theirs is not None
                and theirs.data is not None
                and _PICKED_UP.match(name)
                and hashlib.sha256(theirs.data).hexdigest() == theirs.sha256
            ):
                why = _checked(self.data_dir, name, theirs.data)
                if why is None:
                    # as a re-share writes custody.json: a crash leaves the old file or the new
                    write_durably(d / name, theirs.data)
                    picked.append(name)
                    continue
                notes.append(f"{name}: {why}")
            missing.append(name)
        picked.sort()
        missing.sort()
        if picked:
            self.bump(self.data_dir)  # every worker of this host reloads
        if not missing:
            write_note(
                self.data_dir,
                Note(
                    head.generation,
                    read_note(self.data_dir).responders_token,
                    record_digest(published),
                ),
            )
        return Outcome(
            head.generation,
            picked_up=tuple(picked),
            missing=tuple(missing),
            responders_due=due,
            responders_token=head.responders_token,
            notes=tuple(notes),
            restored=restored,
        )

    def publish_in_ceremony(self) -> int | None:
        """Publish this host's files as the record's next generation from inside a root
        ceremony's completing transaction (``self.record`` bound to it, its head row
        locked), so that the ceremony and the record it leaves commit together: no other
        host ever reads the record of before a ceremony beside the ceremony's own events
        (a stale host read the old ``log.pub`` there and signed a size after
        ``ROTATE-LOG-KEY`` with the retired key). Only when this host matched the record
        before (as :meth:`check` would publish); None otherwise, and nothing is written:
        the check after the commit then says what this host is. The note is written by
        that check, once the transaction has committed."""
        head = self.record.head()
        if head is None:
            return None
        note = read_note(self.data_dir)
        published = self.record.files()
        if note.generation != head.generation or note.record not in (
            None,
            record_digest(published),
        ):
            return None
        files = _publishable(self.data_dir, local_files(self.data_dir), published).files
        if _same(files, published):
            return None
        return self.record.publish(head.generation, files, self.host, self.clock())

    def responders_followed(self, token: str) -> None:
        """This host renewed its responders after the forced renewal ``token``."""
        note = read_note(self.data_dir)
        write_note(self.data_dir, Note(note.generation, token, note.record))

    def force_responders(self) -> str:
        """A forced renewal ran here: every other host follows it."""
        token = os.urandom(16).hex()
        self.record.force_responders(token, self.clock())
        self.responders_followed(token)
        return token


def record_digest(files: Mapping[str, Published]) -> str:
    """SHA-256 of a record's file names and digests: which files a generation holds."""
    doc = json.dumps({k: v.sha256 for k, v in files.items()}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def _same(local: Mapping[str, Published], published: Mapping[str, Published]) -> bool:
    return {k: v.sha256 for k, v in local.items()} == {k: v.sha256 for k, v in published.items()}
