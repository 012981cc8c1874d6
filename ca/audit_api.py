"""The auditor's read-only API under ``/ca/v1/audit/``: checkpoints, entries, proofs, events.

Public (they reveal only hashes and the log's size): the signed checkpoint (C2SP
tlog-checkpoint in a C2SP signed note), the log's verifier key, inclusion proofs by
leaf index and consistency proofs (RFC 9162 §2.1.3, §2.1.4).

Signed requests (``Authorization: EPort-Signed``, :mod:`ca.signedreq`) for anything
that reveals what the CA did: auditors (profile class ``auditor``) and RA officers
(``agency``) read everything; an enterprise, or an operator it authorized, reads only
the events that carry its own USCC and proves only its own certificates; anyone else
is refused (403) and an unsigned request gets 401.

Entries are served as *entry bundles*: each entry as a big-endian uint16 length and
its bytes, back to back, in leaf order (the entry bundle layout of C2SP tlog-tiles),
up to 65,536 entries a request, so a million entries take sixteen requests.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import heapq
import itertools
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flask import Blueprint, Flask, Response, current_app, jsonify, request, stream_with_context
from sqlalchemy import CursorResult, Row, Select, String, and_, cast, func, select
from sqlalchemy.orm import Session, scoped_session

from ca import log_key_signature, translog
from ca.api import parse_serial, private_answers
from ca.authority import Caller
from ca.checkpoint import verifier_key
from ca.config import CAConfig
from ca.crl import ReasonCode
from ca.errors import (
    BadRequest,
    EPortError,
    Forbidden,
    NotFound,
    TokenCheckUnavailable,
    Unauthenticated,
)
from ca.hierarchy import Hierarchy
from ca.logentry import format_time
from ca.models import CertificateRow, CertificateStatusRow, EventRow, LogEntryRow, LogNodeRow
from ca.policy import SubjectClass
from ca.records import EventType
from ca.signedreq import SCHEME
from ca.store import folded, search_fold, utc_from_db
from ca.uscc import USCC
from ca.wellformed import int_arg, iso_time

log = logging.getLogger("eport.audit")
_Query = TypeVar("_Query", bound="Select[*tuple[Any, ...]]")

bp = Blueprint("audit_v1", __name__, url_prefix="/ca/v1/audit")

bp.after_request(private_answers)  # the CA API's rule: ca.api.private_answers


EXTENSION = "eport.audit"

MAX_BUNDLE = 65536
"""Entries per entry-bundle response."""
MAX_LEAF_HASHES = 16384
"""The most leaf hashes one answer of the public ``leaf-hashes`` carries (512 KiB): it
was 262,144 (8 MiB and about 0.3 s of a worker's CPU at that size of log), which anyone
could ask for again and again (probe of costly requests, F1)."""
MAX_EVENTS_PAGE = 10000
MERGED_TYPES = 4
"""Up to this many types a page is read type by type and merged (at most this many pages
read); more are read in one statement, sorted."""
CERTIFICATES_CHUNK = 20000
ISSUANCE_TYPES = (
    EventType.CA_INITIALIZED.value,
    EventType.CERTIFICATE_ISSUED.value,
    EventType.CERTIFICATE_RENEWED.value,
)
"""Events that put a certificate into the CA's records (each names serial and SHA-256)."""


@dataclass(frozen=True)
class AuditService:
    """The log's public identity and its checkpoint signer, kept in ``app.extensions``."""

    signer: translog.CheckpointSigner
    public_key: Ed25519PublicKey
    """The log's Ed25519 public key (``<data_dir>/ca/log.pub``)."""
    data_dir: str
    """Where the web view keeps its session secret."""
    public_base_url: str = "http://127.0.0.1:8000"
    """The CA's configured public base URL (``EPORT_PUBLIC_BASE_URL``): the web view's
    sign-in links are built on it, never on a request's ``Host`` or ``X-Forwarded-*``
    headers, and its session cookie is ``Secure`` when it is ``https``."""

    def origin(self, s: Session) -> str:
        """The checkpoint origin line, also the note key name."""
        return self.signer.origin(s)

    def log_public_key(self, s: Session) -> Ed25519PublicKey:
        """This host's log key, unless the database's hierarchy record names another
        (``ROTATE-LOG-KEY`` ran on another host): then :class:`ca.translog.LogKeyRetired`
        (503), as for signing. Naming the retired key made an auditor's verification
        through this host fail on the checkpoints it serves (signed with the new key);
        naming the record's key would make the database, which anyone who can write it
        can change, the authority for the key auditors trust. The host names no key
        until the ceremony host's ``ca/`` is copied to it."""
        translog.check_log_key(s, self.public_key, "it names no log key")
        return self.public_key

    def verifier_key(self, s: Session) -> str:
        return verifier_key(self.origin(s), self.log_public_key(s))


def install_audit(app: Flask, cfg: CAConfig, h: Hierarchy) -> None:
    """Register the audit API and the web view, with the hierarchy's log key."""
    public_key = h.log_public_key
    if not isinstance(public_key, Ed25519PublicKey):
        raise TypeError("the log key must be Ed25519 (C2SP signed-note type 0x01)")
    origin = translog.origin_for(cfg.public_base_url)
    app.extensions[EXTENSION] = AuditService(
        signer=translog.CheckpointSigner(origin, h.log_signer),
        public_key=public_key,
        data_dir=str(cfg.data_dir),
        public_base_url=cfg.public_base_url,
    )
    from ca.auditweb import bp as web_bp
    from ca.auditweb import html_http_error
    from ca.problems import HTML_ERRORS
    from ca.wellformed import install_safe_head

    app.register_blueprint(bp)
    app.register_blueprint(web_bp)
    install_safe_head(app, frozenset({"audit_web.login"}))  # a HEAD spends no sign-in link
    app.extensions[HTML_ERRORS] = html_http_error


def audit_service() -> AuditService:
    service: AuditService = current_app.extensions[EXTENSION]
    return service


def session() -> Session:
    from ca.app import session_of

    return session_of()


def read_session() -> Session:
    """The request's session for reading only: on SQLite a deferred ``BEGIN``, so that the
    public log's reads never queue for the write lock a writer holds (an open transaction,
    e.g. a signed request's replay check, is joined as it is)."""
    from ca.store import READ_ONLY

    s = session()
    real = s() if isinstance(s, scoped_session) else s
    if not real.in_transaction():
        real.connection(execution_options={READ_ONLY: True})
    return s


# -- who reads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """Who reads the log, and how much of it."""

    actor: str
    """``<profile>:<serial hex>`` of the reader's certificate."""
    role: str
    """The reader's subject class."""
    uscc: str | None
    """``None``: reads every entry; else only the entries that carry this USCC."""
    until: int | None = None
    """A token's reader: the token's ``exp`` (POSIX seconds). The web view's session of
    this reader ends then (it cannot outlive the token it was opened with)."""

    @property
    def reads_all(self) -> bool:
        return self.uscc is None


def reader_of(caller: Caller) -> Reader:
    """Auditors and RA officers read everything; an enterprise and its operators their own."""
    if caller.role in (SubjectClass.AUDITOR, SubjectClass.AGENCY):
        return Reader(caller.actor, caller.role.value, None)
    if caller.role in (SubjectClass.ENTERPRISE, SubjectClass.OPERATOR) and caller.uscc:
        return Reader(caller.actor, caller.role.value, caller.uscc)
    raise Forbidden(
        "the audit log is read by auditors, RA officers and enterprises, "
        f"not by a {caller.role.value} certificate"
    )


AUDIT_CHALLENGE = 'EPort-Signed realm="eport", Bearer realm="eport", scope="audit:read"'
"""The audit API's 401 challenge: a signed request, or an access token (RFC 6750)."""
TOKEN_REFUSED_CHALLENGE = (
    'EPort-Signed realm="eport", Bearer realm="eport", error="invalid_token", scope="audit:read"'
)
"""The challenge to an access token that was sent and refused (RFC 6750 §3.1)."""


def signed_reader() -> Reader:
    """The reader of this request: a signed request with the reader's certificate, or an
    access token of the token service for the audit API with the ``audit:read`` scope."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return token_reader(header[7:].strip())
    from ca.api import signed_caller

    try:
        return reader_of(signed_caller())
    except Unauthenticated as exc:
        exc.challenge = AUDIT_CHALLENGE
        if "Authorization" not in request.headers:  # said for the audit API's two ways
            exc.detail = (
                f"this call needs a signed request (Authorization: {SCHEME} ...) or an "
                "access token for the audit service (Authorization: Bearer ..., "
                "eport token --service audit)"
            )
        raise


def token_reader(token: str) -> Reader:
    """An RFC 9068 access token for the audit API, verified offline against the token
    service's JWKS (algorithm pinned, ``iss``/``aud``/``exp`` required). Offline
    validation sees a revoked login only when the token expires (at most 10 minutes);
    read-only access makes that acceptable here."""
    from authsvc.client import TokenError, TokenVerifier, ValidationUnavailable
    from ca.app import EXTENSION

    service = current_app.extensions[EXTENSION]
    cfg = service.config
    verifier = current_app.extensions.get("eport.audit.verifier")
    if verifier is None:
        issuer = cfg.token_issuer or cfg.public_base_url.rstrip("/") + "/auth"
        jwks_url = cfg.token_jwks_url or issuer + "/jwks.json"
        verifier = TokenVerifier(issuer, cfg.audit_token_audience, jwks_url=jwks_url)
        current_app.extensions["eport.audit.verifier"] = verifier
    try:
        claims = verifier.verify(token, required_scopes=("audit:read",))
    except ValidationUnavailable as exc:
        # the token service down or its keys unreadable: not the token's fault (a 401 made
        # clients drop good tokens)
        raise TokenCheckUnavailable(
            f"an audit API token could not be checked: {exc.description}"
        ) from None
    except TokenError as exc:
        # the public words: a fault's detail names the token service's internal URL
        # (SDK probe 24); the detail goes to this server's log
        if exc.public_description != exc.description:
            log.warning("an audit API token could not be checked: %s", exc.description)
        raise Unauthenticated(
            f"the access token is not good for the audit API: {exc.public_description}",
            challenge=TOKEN_REFUSED_CHALLENGE,
        ) from None
    cls = claims.subject_class or ""
    actor = f"token:{claims.subject}"
    until = claims.expires_at
    if cls in (SubjectClass.AUDITOR.value, SubjectClass.AGENCY.value):
        return Reader(actor, cls, None, until)
    if cls in (SubjectClass.ENTERPRISE.value, SubjectClass.OPERATOR.value) and claims.uscc:
        return Reader(actor, cls, claims.uscc, until)
    raise Forbidden(f"the audit log is not read by {cls or 'this subject'}")


def _require_all(reader: Reader, what: str) -> None:
    if not reader.reads_all:
        raise Forbidden(
            f"{what} is for auditors and RA officers; an enterprise reads its own events"
        )


# -- query arguments ----------------------------------------------------------------------


def normalize_serial(text: str) -> str:
    """Lower-case hex without leading zeros (``0x`` and colons allowed on input)."""
    return format(parse_serial(text), "x")


_CERTIFICATE_ACTOR = re.compile(r"([a-z][a-z0-9-]*):((?:0[xX])?[0-9A-Fa-f:]+)")


def _actor(text: str | None) -> str | None:
    """An ``actor`` filter: a certificate holder's (``<profile>:<serial>``,
    :func:`ca.authority.actor_of`) with its serial as ``serial`` reads one, in lower-case
    hex: ``agency:5A00D3B6…``, as ``openssl x509 -serial`` prints it, found nothing, a
    false all-clear when looking for what a compromised officer did (emergency-plan probe,
    session 27). Any other actor as given."""
    if text is None:
        return None
    found = _CERTIFICATE_ACTOR.fullmatch(text)
    if found is None:
        return text
    try:
        return f"{found[1]}:{normalize_serial(found[2])}"
    except EPortError:
        return text


def parse_time(name: str, text: str) -> datetime.datetime:
    """An ISO 8601 date or date and time, UTC when it names no offset."""
    return iso_time(name, text, naive=datetime.UTC)


@dataclass(frozen=True)
class EventFilter:
    """The selections ``eport audit log`` and the web view offer; all are ANDed."""

    types: tuple[str, ...] = ()
    uscc: str | None = None
    subject: str | None = None
    """Case-insensitive substring of the subject name."""
    profile: str | None = None
    issuer: str | None = None
    actor: str | None = None
    serial: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    """Exclusive upper bound."""

    @classmethod
    def from_args(cls, args: Any) -> EventFilter:
        def text(name: str) -> str | None:
            value = args.get(name)
            return value.strip() if isinstance(value, str) and value.strip() else None

        types: list[str] = []
        for raw in args.getlist("type"):
            for part in raw.split(","):
                part = part.strip()
                if not part:
                    continue
                try:
                    types.append(EventType(part).value)
                except ValueError:
                    known = ", ".join(t.value for t in EventType)
                    raise BadRequest(f"unknown event type {part!r} ({known})") from None
        uscc = text("uscc")
        serial = text("serial")
        since = text("since")
        until = text("until")
        start = parse_time("since", since) if since else None
        end = parse_time("until", until) if until else None
        if start is not None and end is not None and start >= end:
            # no event can match: a swapped pair, said rather than answered "no events"
            raise BadRequest(f"since ({start.isoformat()}) is not before until ({end.isoformat()})")
        return cls(
            types=tuple(types),
            uscc=str(USCC.parse(uscc)) if uscc else None,
            subject=text("subject"),
            profile=text("profile"),
            issuer=text("issuer"),
            actor=_actor(text("actor")),
            serial=normalize_serial(serial) if serial else None,
            since=start,
            until=end,
        )

    def for_reader(self, reader: Reader) -> EventFilter:
        """The filter narrowed to what ``reader`` may see."""
        if reader.reads_all:
            return self
        if self.uscc is not None and self.uscc != reader.uscc:
            raise Forbidden("an enterprise reads only the events of its own USCC")
        return EventFilter(**{**self.__dict__, "uscc": reader.uscc})

    def apply(self, query: _Query) -> _Query:
        if self.types:
            query = query.where(EventRow.type.in_(self.types))
        if self.uscc is not None:
            query = query.where(EventRow.uscc == self.uscc)
        if self.subject is not None:
            # NFKC and lower case on both sides: 'Ｗｅｉ', 'wei' and 'WEI' find
            # 'Ｌｉ Ｗｅｉ'; '李　伟' (an ideographic space, as typed) finds '李 伟'
            # (Chinese data probe)
            query = query.where(
                folded(EventRow.subject).contains(search_fold(self.subject), autoescape=True)
            )
        if self.profile is not None:
            query = query.where(EventRow.profile == self.profile)
        if self.issuer is not None:
            query = query.where(EventRow.issuer == self.issuer)
        if self.actor is not None:
            query = query.where(EventRow.actor == self.actor)
        if self.serial is not None:
            query = query.where(EventRow.serial == self.serial)
        if self.since is not None:
            query = query.where(EventRow.at >= self.since)
        if self.until is not None:
            query = query.where(EventRow.at < self.until)
        return query


EVENT_COLUMNS = (
    EventRow.id,
    EventRow.at,
    EventRow.type,
    EventRow.actor,
    EventRow.uscc,
    EventRow.subject,
    EventRow.profile,
    EventRow.issuer,
    EventRow.serial,
    EventRow.cert_sha256,
    EventRow.application_id,
    EventRow.details,
    EventRow.log_index,
)
"""The ``events`` columns a listing reads, in this order, as plain rows: a page of
10,000 events costs no ORM object, identity-map entry or expiry on rollback."""


def event_json(
    idx: int, row: Row[*tuple[Any, ...]], details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An event (a row of :data:`EVENT_COLUMNS`) as the CA's records hold it, with the
    log index of its entry.

    ``details``, when given, keeps the stored details already parsed, by their text: a
    page of events repeats a few texts (``{}`` for most), parsed once each. The parsed
    objects are shared between the events of a page and must not be changed.
    """
    # Unpacked by position: a row's attributes are looked up by name, twice as slow.
    (id_, at, type_, actor, uscc, subject, profile, issuer, serial, sha256, app, text, _) = row
    text = text or "{}"
    if details is None:
        parsed = json.loads(text)
    else:
        parsed = details.get(text)
        if parsed is None:
            parsed = details[text] = json.loads(text)
    return {
        "log_index": idx,
        "event_id": id_,
        "type": type_,
        "time": format_time(at),
        "actor": actor,
        "uscc": uscc,
        "subject": subject,
        "profile": profile,
        "issuer": issuer,
        "serial": serial,
        "cert_sha256": sha256,
        "application_id": app,
        "details": parsed,
    }


def find_events(
    s: Session,
    flt: EventFilter,
    *,
    after: int | None = None,
    before: int | None = None,
    limit: int = 100,
    newest_first: bool = False,
) -> list[tuple[int, Row[*tuple[Any, ...]]]]:
    """Logged events (rows of :data:`EVENT_COLUMNS`) with their log indices, ordered by
    log index, keyset-paged.

    Read from ``events`` alone, in the order of an index that ends in ``log_index``
    (``(type, log_index)``, ``(uscc, log_index)``, ``(serial, log_index)`` or
    ``log_index``): a page reads about ``limit`` rows, however many events match. A few
    types at once are read type by type (a page of each) and merged, as no index gives
    ``type IN (…)`` in log order.
    """
    types = tuple(dict.fromkeys(flt.types))
    if 1 < len(types) <= MERGED_TYPES:
        pages = [
            find_events(
                s,
                dataclasses.replace(flt, types=(t,)),
                after=after,
                before=before,
                limit=limit,
                newest_first=newest_first,
            )
            for t in types
        ]
        merged = heapq.merge(*pages, key=lambda found: found[0], reverse=newest_first)
        return list(itertools.islice(merged, limit))
    # Logged events: those whose leaf the log has (an event row with an index past the
    # head was never appended: a forged row, listed as logged before, log tamper probe)
    head = translog.read_head(s)[0]
    query = flt.apply(select(*EVENT_COLUMNS).where(EventRow.log_index < head))
    if after is not None:
        query = query.where(EventRow.log_index > after)
    if before is not None:
        query = query.where(EventRow.log_index < before)
    order = EventRow.log_index.desc() if newest_first else EventRow.log_index
    rows = s.execute(query.order_by(order).limit(limit)).all()
    return [(int(r.log_index or 0), r) for r in rows]


def count_events(s: Session, flt: EventFilter) -> int:
    """How many logged events match (counted on the filter's index where it has one)."""
    head = translog.read_head(s)[0]
    query = flt.apply(select(func.count()).select_from(EventRow).where(EventRow.log_index < head))
    return int(s.execute(query).scalar_one())


def issuance_entry(s: Session, serial: str) -> tuple[int, bytes, str | None] | None:
    """``(leaf index, entry, uscc)`` of the event that recorded certificate ``serial``."""
    row = s.execute(
        select(LogEntryRow.idx, LogEntryRow.entry, EventRow.uscc)
        .join(EventRow, EventRow.id == LogEntryRow.event_id)
        .where(EventRow.serial == serial, EventRow.type.in_(ISSUANCE_TYPES))
        .order_by(LogEntryRow.idx)
        .limit(1)
    ).first()
    return (int(row[0]), bytes(row[1]), row[2]) if row else None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _proof_json(nodes: Sequence[bytes]) -> list[str]:
    return [b64(n) for n in nodes]


def _committed(fn: Any) -> Any:
    """Run ``fn(session)`` in a transaction that is committed (checkpoints are stored)."""
    s = session()
    try:
        result = fn(s)
        s.commit()
    except BaseException:
        s.rollback()
        raise
    return result


# -- public: checkpoint, key, proofs ------------------------------------------------------


@bp.get("/checkpoint")
def checkpoint() -> Response:
    """The latest signed checkpoint (``?size=N``: the one signed for size N)."""
    svc = audit_service()
    size = request.args.get("size")
    if size is not None:
        wanted = int_arg("size", None, 0, 2**63 - 1)
        s = read_session()
        stored = svc.signer.stored(s, wanted)
        s.rollback()
        if stored is None:
            raise NotFound(f"no checkpoint was signed for tree size {wanted}")
        note = stored.note
    else:
        # The head's checkpoint, when one was signed, is read without the write lock;
        # a head that grew since is signed (and stored) in a write transaction.
        s = read_session()
        signed = svc.signer.stored(s, translog.read_head(s)[0])
        s.rollback()
        note = signed.note if signed is not None else _committed(svc.signer.latest).note
    resp = Response(note, mimetype="text/plain")
    resp.headers["Content-Type"] = "text/plain; charset=utf-8"
    resp.cache_control.no_store = True
    return resp


@bp.get("/log-key")
def log_key() -> Response:
    """The log's verifier key (C2SP signed-note) and origin. Pin it out of band."""
    svc = audit_service()
    s = read_session()
    pem = (
        svc.log_public_key(s)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    origin, key = svc.origin(s), svc.verifier_key(s)
    s.rollback()
    doc: dict[str, object] = {"origin": origin, "verifier_key": key, "public_key": pem}
    # offered only when it verifies for this key under this host's root; a changed or
    # damaged file is offered to nobody, and said (auditors with --root are refused)
    vouched, why = log_key_signature.state_of(Path(audit_service().data_dir), pem.encode())
    if vouched is not None:
        doc["root_signature"] = vouched
    elif why is not None:
        log.warning("ca/log.pub.sig is not the root's signature of the log key: %s", why)
    return jsonify(doc)


@bp.get("/log-key/handovers")
def log_key_handovers() -> Response:
    """The log's hand-over checkpoints, oldest first: each ``ROTATE-LOG-KEY`` signed the
    log's head with the retiring key and its successor, naming the successor
    (:meth:`ca.translog.CheckpointSigner.hand_over`); each ``REPLACE-LOG-KEY`` with the
    successor and the root key instead of a lost retiring key
    (:meth:`~ca.translog.CheckpointSigner.replace`). An auditor whose state pins an
    older key follows them to the current one (``eport audit verify``). Public, as
    checkpoints are; served by every host, a stale one included (it signs nothing here)."""
    s = read_session()
    found = translog.handovers(s)
    s.rollback()
    return jsonify(
        {"handovers": [{"tree_size": h.size, "checkpoint": h.note.decode()} for h in found]}
    )


def _tree_size(s: Session, name: str = "size") -> int:
    head = translog.read_head(s)[0]
    return int_arg(name, head, 0, head) if request.args.get(name) else head


@bp.get("/proof/inclusion")
def inclusion_proof() -> Response:
    """``PATH(index, D[size])`` (RFC 9162 §2.1.3.1) by ``index`` (public) or ``serial`` (signed).

    By serial the answer also carries the entry, so it needs a reader allowed to see
    it: an enterprise proves only its own certificates.
    """
    serial = request.args.get("serial")
    # The signed request's check first: it stores its jti, a write that a read-only
    # transaction opened before it could not take (SQLite refuses to upgrade a stale one).
    reader = signed_reader() if serial is not None else None
    s = read_session()
    size = _tree_size(s)
    out: dict[str, Any] = {"tree_size": size}
    if serial is not None:
        assert reader is not None
        found = issuance_entry(s, normalize_serial(serial))
        if found is None or (not reader.reads_all and found[2] != reader.uscc):
            raise NotFound(f"no logged issuance of certificate {normalize_serial(serial)}")
        index, entry, _ = found
        if index >= size:
            raise NotFound(
                f"certificate {normalize_serial(serial)} is entry {index}, "
                f"not in the tree of size {size} yet"
            )
        out["entry"] = b64(entry)
    else:
        index = int_arg("index", None, 0, max(size - 1, 0))
    out["index"] = index
    out["proof"] = _proof_json(translog.tree_at(s, size).inclusion_proof(index, size))
    s.rollback()
    return jsonify(out)


@bp.get("/proof/consistency")
def consistency_proof() -> Response:
    """``PROOF(from, D[to])`` (RFC 9162 §2.1.4.1); empty for ``from`` 0 or ``from == to``."""
    s = read_session()
    to = _tree_size(s, "to")
    old = int_arg("from", None, 0, to)
    proof = translog.tree_at(s, to).consistency_proof(old, to)
    s.rollback()
    return jsonify({"from": old, "to": to, "proof": _proof_json(proof)})


# -- signed: entries, events, certificates ------------------------------------------------


@bp.get("/entries")
def entries() -> Response:
    """An entry bundle of leaves ``[start, start + count)`` (uint16 length + entry, each).

    Stops early at the head, or at a leaf missing from storage: the response's
    ``Eport-Log-Count`` says how many entries it holds.
    """
    _require_all(signed_reader(), "reading the whole log")
    s = read_session()
    head = translog.read_head(s)[0]
    start = int_arg("start", 0, 0, 2**63 - 1)
    count = int_arg("count", MAX_BUNDLE, 1, MAX_BUNDLE)
    end = min(start + count, head)
    parts: list[bytes] = []
    served = 0
    if start < end:
        # The hot path of a full audit (a million rows): plain driver SQL, without the
        # ORM's per-row result processing.
        rows = _driver_sql(
            s,
            "SELECT idx, entry FROM log_entries WHERE idx >= {} AND idx < {} ORDER BY idx",
            start,
            end,
        )
        expected = start
        for idx, entry in rows:
            if idx != expected:
                break
            # A row changed behind the CA's back may hold text (SQLite's replace() gives
            # TEXT) or too many bytes: served as they are (the auditor names the entry
            # whose hash differs), or the bundle stops there, never a 500 (probe F8).
            data = entry.encode() if isinstance(entry, str) else bytes(entry)
            if len(data) > 0xFFFF:
                break
            parts.append(len(data).to_bytes(2, "big"))
            parts.append(data)
            expected += 1
        served = expected - start
    s.rollback()
    resp = Response(b"".join(parts), mimetype="application/octet-stream")
    resp.headers["Eport-Log-Start"] = str(start)
    resp.headers["Eport-Log-Count"] = str(served)
    resp.headers["Eport-Log-Size"] = str(head)
    resp.cache_control.no_store = True
    return resp


@bp.get("/events")
def events() -> Response:
    """Events in log order with filters; keyset-paged by ``after`` (the last log index seen).

    The first page (no ``after``) also carries ``total``, the number of matching events.
    """
    reader = signed_reader()
    unknown = sorted(set(request.args) - EVENT_QUERY)
    if unknown:
        # a misspelt filter ("usc=") answered every event: an export silently unfiltered
        named = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise BadRequest(
            f"unknown query parameter {named} (takes {', '.join(sorted(EVENT_QUERY))})"
        )
    flt = EventFilter.from_args(request.args).for_reader(reader)
    limit = int_arg("limit", 1000, 1, MAX_EVENTS_PAGE)
    # empty is absent, as int_arg reads every listing's parameters: after= read as 0
    # skipped event 0 and the total (HTTP edges probe, session 27)
    after = request.args.get("after") or None
    s = read_session()
    rows = find_events(
        s, flt, after=int_arg("after", 0, -1, 2**63 - 1) if after is not None else None, limit=limit
    )
    details: dict[str, Any] = {}
    out: dict[str, Any] = {"events": [event_json(idx, row, details) for idx, row in rows]}
    out["next"] = rows[-1][0] if len(rows) == limit else None
    if after is None:
        out["total"] = count_events(s, flt)
    s.rollback()
    return jsonify(out)


EVENT_QUERY = frozenset(
    {"type", "uscc", "subject", "profile", "issuer", "actor", "serial", "since", "until"}
    | {"limit", "after"}
)
"""The query parameters of ``GET /audit/events``: the filters and the paging."""


@bp.get("/event-digests")
def event_digests() -> Response:
    """For leaves ``[start, start + count)``: the leaf hash of each entry re-derived from the
    events table now (32 bytes each, in leaf order; zeros where the event row is gone).

    An auditor compares them with the entries it hashed: a difference means the CA's
    event records no longer say what the log recorded.
    """
    _require_all(signed_reader(), "reading the whole log")
    from ca.merkle import leaf_hash

    s = read_session()
    head = translog.read_head(s)[0]
    start = int_arg("start", 0, 0, 2**63 - 1)
    count = int_arg("count", MAX_BUNDLE, 1, MAX_BUNDLE)
    end = min(start + count, head)
    out = bytearray(32 * max(end - start, 0))
    if start < end:
        # The event must also say it is at this index (its log_index orders the CA's
        # listings and exports): one moved elsewhere (probe F7), or taken out of them
        # (log_index cleared: log tamper probe, session 26), reads as gone. So does one
        # whose stored time or serial is spelled otherwise than written: the entry
        # reads the same, but the listings' filters compare the stored text (a time
        # written with "T", a serial in capitals, was left out of --since or --serial).
        text_times = s.get_bind().dialect.name == "sqlite"  # PostgreSQL's has no spelling
        rows = s.execute(
            select(LogEntryRow.idx, EventRow, cast(EventRow.at, String).label("stored_at"))
            .join(
                EventRow,
                and_(EventRow.id == LogEntryRow.event_id, EventRow.log_index == LogEntryRow.idx),
            )
            .where(LogEntryRow.idx >= start, LogEntryRow.idx < end)
        )
        for idx, row, stored_at in rows:
            if text_times and stored_at not in _time_spellings(row.at):
                continue  # the time is text, which the filters compare as text
            if row.serial is not None and row.serial != _serial_spelling(row.serial):
                continue
            pos = (int(idx) - start) * 32
            out[pos : pos + 32] = leaf_hash(translog.entry_of(row))
    s.rollback()
    resp = Response(bytes(out), mimetype="application/octet-stream")
    resp.headers["Eport-Log-Start"] = str(start)
    resp.headers["Eport-Log-Count"] = str(max(end - start, 0))
    return resp


@bp.get("/certificates")
def certificates() -> Response:
    """Every certificate in the CA's records, one ``<serial hex> <sha256 hex>`` line each;
    with ``?detail=1``, one JSON array per line (JSON Lines) with what else the CA's
    answers are made of (:func:`_record_line`).

    What the CA's certificate listings, its OCSP and CRLs and its owners' rights are
    served from; auditors compare it with the log (``eport audit verify --full``).
    Streamed in serial order, in bounded memory.
    """
    _require_all(signed_reader(), "the list of every certificate")
    detail = request.args.get("detail") == "1"
    s = read_session()
    columns: tuple[Any, ...] = (CertificateRow.serial, CertificateRow.cert_sha256)
    if detail:
        columns += (
            CertificateRow.der,
            CertificateRow.uscc,
            CertificateRow.subject,
            CertificateRow.profile,
            CertificateRow.issuer_id,
            CertificateRow.log_index,
            CertificateStatusRow.state,
            CertificateStatusRow.reason,
            CertificateStatusRow.revoked_at,
            CertificateStatusRow.issuer_id,
            CertificateStatusRow.invalidity_date,
        )

    def lines() -> Iterator[bytes]:
        # Keyset chunks, each read in its own short transaction: a slow reader must
        # never hold a transaction open (on SQLite every transaction is a writer's).
        after = ""
        try:
            while True:
                q = select(*columns).where(CertificateRow.serial > after)
                if detail:
                    q = q.outerjoin(
                        CertificateStatusRow, CertificateStatusRow.serial == CertificateRow.serial
                    )
                batch = s.execute(q.order_by(CertificateRow.serial).limit(CERTIFICATES_CHUNK)).all()
                s.rollback()
                if not batch:
                    return
                if detail:
                    yield "".join(_record_line(row) for row in batch).encode()
                else:
                    yield "".join(f"{serial} {digest}\n" for serial, digest in batch).encode()
                after = batch[-1][0]
        finally:
            s.rollback()

    resp = Response(
        stream_with_context(lines()), mimetype="application/jsonl" if detail else "text/plain"
    )
    resp.cache_control.no_store = True
    return resp


def _time_spellings(at: datetime.datetime) -> tuple[str, str]:
    """The ways an event's time may be written into SQLite: SQLAlchemy's (microseconds
    always), which every insert of the CA's uses (the group writer's too, by the column
    type's bind processor), and the sqlite3 module's default (none when they are 0), for
    a row written by another tool. Both sort as times; one with a "T", or an offset,
    does not."""
    naive = at.astimezone(datetime.UTC).replace(tzinfo=None)
    return naive.strftime("%Y-%m-%d %H:%M:%S.%f"), naive.isoformat(" ")


def _serial_spelling(serial: str) -> str | None:
    """``serial`` as the CA writes it (lower-case hex, no leading zeros), or None."""
    try:
        return format(int(serial, 16), "x")
    except ValueError:
        return None


def _record_line(row: Row[Any]) -> str:
    """One certificate as ``?detail=1`` lists it, a JSON array: ``[serial, sha256,
    der_sha256, uscc, subject, profile, issuer, log_index, state, reason, at]``.
    ``sha256`` is the stored hash column (what lookups by hash use); ``der_sha256`` is
    null when the stored DER (what is served) hashes to it, else that hash; ``uscc`` to
    ``issuer`` (what an owner's rights and listings go by) and ``log_index`` (its listing
    key) must be its logged issuance's; ``state`` (``revoked``, ``hold``; null: good),
    ``reason`` (RFC 5280 name) and ``at`` (the entries' time format) are what OCSP and
    CRLs answer, which the log's status events must lead to. Then ``status_issuer``: the
    issuing CA the status row names when it is not the certificate's (its CRL, read by
    that id, leaves the certificate out while OCSP answers it revoked: log tamper probe,
    session 26), else null; and ``invalidity_date`` as the status event's details spell
    it (its CRL entry carries it), null when there is none."""
    (serial, digest, der, uscc, subject, profile, issuer, log_index, state, reason, at) = tuple(
        row
    )[:11]
    status_issuer, invalidity = tuple(row)[11:]
    der_digest = hashlib.sha256(bytes(der)).hexdigest()
    when = utc_from_db(at) if state is not None else None
    invalid = utc_from_db(invalidity) if state is not None else None
    doc = [
        serial,
        digest,
        None if der_digest == digest else der_digest,
        uscc,
        subject,
        profile,
        issuer,
        log_index,
        state,
        None if state is None or reason is None else ReasonCode(reason).rfc_name,
        None if when is None else format_time(when),
        status_issuer if state is not None and status_issuer != issuer else None,
        None if invalid is None else invalid.isoformat(),
    ]
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"


def _driver_sql(s: Session, sql: str, *params: int) -> CursorResult[*tuple[Any, ...]]:
    """``sql`` (``{}`` marks each parameter) as plain driver SQL, in the session's transaction."""
    conn = s.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return conn.exec_driver_sql(sql.format(*([mark] * len(params))), tuple(params))


@bp.get("/leaf-hashes")
def leaf_hashes() -> Response:
    """The stored leaf hashes ``[start, start + count)``, 32 bytes each (public: hashes only).

    An auditor recomputes the signed root from them, and then compares them with the
    hashes of the entries it downloaded to name the first entry that differs.
    """
    s = read_session()
    head = translog.read_head(s)[0]
    size = int_arg("size", head, 0, head)
    start = int_arg("start", 0, 0, 2**63 - 1)
    count = int_arg("count", MAX_LEAF_HASHES, 1, 2**63 - 1)
    # at most MAX_LEAF_HASHES whatever is asked (the CLI asks for more and pages on): a
    # public endpoint, whose answers anyone may ask for at the front's rate
    end = min(start + min(count, MAX_LEAF_HASHES), size)
    parts: list[bytes] = []
    if start < end:
        rows = s.execute(
            select(LogNodeRow.idx, LogNodeRow.hash)
            .where(LogNodeRow.level == 0, LogNodeRow.idx >= start, LogNodeRow.idx < end)
            .order_by(LogNodeRow.idx)
        )
        expected = start
        for idx, digest in rows:
            if idx != expected:
                break
            parts.append(bytes(digest))
            expected += 1
    s.rollback()
    resp = Response(b"".join(parts), mimetype="application/octet-stream")
    resp.headers["Eport-Log-Start"] = str(start)
    resp.headers["Eport-Log-Count"] = str(len(parts))
    return resp
