"""``eport audit``: the auditor's tools, a client of ``/ca/v1/audit/`` and nothing else.

Every check of the log here goes through :mod:`cli.auditproof`, the verifier written
apart from the server (RFC 9162 §2.1 hashing and proofs, C2SP signed-note and
tlog-checkpoint); entries are read by this module's own v1 reader. Nothing here
imports the server's tree, checkpoint or entry code.

* ``eport audit log``: the CA's events with filters, as a table, CSV or JSON, paged
  through the API in bounded memory, with a progress bar on long exports.
* ``eport audit verify``: the latest checkpoint's signature, its consistency with the
  checkpoint verified last time (a local state file, or ``--since``); with ``--full``
  every entry, the recomputed root, and the cross-check of the CA's certificate
  listings against the logged issuances. Exits non-zero naming the first entry that
  breaks.
* ``eport audit prove``: the inclusion proof of a certificate's issuance entry.
* ``eport audit web-login``: a one-time link that opens the read-only web view.
"""

from __future__ import annotations

import base64
import csv
import datetime
import errno
import hashlib
import json
import operator
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast
from urllib.parse import urlencode, urlsplit

import click
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ca.signedreq import SCHEME, sign_request
from ca.stopping import stops_unwind
from cli import auditproof, keyfiles
from cli.auditproof import AuditError, NotANoteError, VerifiedCheckpoint, VerifierKey
from cli.client import (
    DEFAULT_SERVER,
    CLIError,
    Identity,
    RemoteError,
    not_ours,
    parse,
    send,
)
from cli.keyfiles import identity_options
from cli.options import (
    MAX_SERIAL_DIGITS,
    clip,
    json_option,
    json_text,
    print_result,
    takes_utf8,
)

F = TypeVar("F", bound=Callable[..., Any])
API = "/ca/v1/audit"
BUNDLE = 65536
EVENT_TYPES = [
    "ca.initialized",
    "application.submitted",
    "application.approved",
    "application.rejected",
    "application.withdrawn",
    "application.code_reissued",
    "operator.authorized",
    "certificate.issued",
    "certificate.renewed",
    "certificate.revoked",
    "certificate.suspended",
    "certificate.resumed",
]
ISSUANCE = frozenset({"ca.initialized", "certificate.issued", "certificate.renewed"})
ENTRY_KEYS = frozenset(
    {
        "v",
        "event_id",
        "type",
        "time",
        "actor",
        "uscc",
        "subject",
        "profile",
        "issuer",
        "serial",
        "cert_sha256",
        "application_id",
        "details",
    }
)
COLUMNS = [
    "log_index",
    "event_id",
    "time",
    "type",
    "actor",
    "uscc",
    "subject",
    "profile",
    "issuer",
    "serial",
    "cert_sha256",
    "application_id",
    "details",
]


class VerificationFailed(CLIError):
    """The log failed a check; the message names what and where."""

    def __init__(self, message: str) -> None:
        super().__init__(f"log verification FAILED: {message}")


# -- entries (layout v1, docs/log-format.md), read independently of the server ----------


def read_entry(data: bytes, index: int) -> dict[str, Any]:
    """A v1 entry as a dict; raises VerificationFailed naming ``index`` if it is not one."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise VerificationFailed(f"entry {index} is not UTF-8 JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != 1 or doc.keys() != ENTRY_KEYS:
        raise VerificationFailed(f"entry {index} is not a version 1 log entry")
    return doc


_ISSUANCE_TYPES = tuple(b'"type":"%s"' % t.encode() for t in sorted(ISSUANCE))
STATUS_EVENTS = {
    "certificate.revoked": "revoked",
    "certificate.suspended": "hold",
    "certificate.resumed": None,
}
"""The log's status events and the state each leaves its certificate in (None: good)."""
_STATUS_TYPES = tuple(b'"type":"%s"' % t.encode() for t in sorted(STATUS_EVENTS))
FACTS = ("uscc", "subject", "profile", "issuer")
"""What an issuance entry says of its certificate beside its serial and hash, which the
CA's records must still say (an owner's rights and listings go by them)."""


def issuance_of(entry: bytes) -> tuple[str, str] | None:
    """``(serial, cert_sha256)`` of an issuance entry, else None, read straight off the bytes.

    Exact for canonical v1 entries, whose members are sorted: ``cert_sha256`` comes before
    ``details`` (the only member that can nest), so its first occurrence is the top-level
    one; ``serial`` and ``type`` come after it, so their last occurrences are. A million
    entries are read in a fraction of what a JSON parse would take.
    """
    at = entry.find(b'"cert_sha256":"')
    if at < 0:
        return None
    kind_at = entry.rfind(b'"type":"')
    if not entry.startswith(_ISSUANCE_TYPES, kind_at):
        return None
    serial_at = entry.rfind(b'"serial":"') + 10
    serial = entry[serial_at : entry.index(b'"', serial_at)]
    return serial.decode("ascii"), entry[at + 15 : at + 79].decode("ascii")


def canonical(doc: dict[str, Any]) -> bytes:
    """The canonical spelling (RFC 8785 for v1's values), to check an entry is canonical."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def split_bundle(data: bytes) -> list[bytes]:
    """The entries of a C2SP tlog-tiles style bundle: uint16 big-endian length, bytes."""
    out: list[bytes] = []
    append = out.append
    pos, end = 0, len(data)
    while pos < end:
        if pos + 2 > end:
            raise VerificationFailed("an entry bundle ends inside a length prefix")
        length = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if pos + length > end:
            raise VerificationFailed("an entry bundle ends inside an entry")
        append(data[pos : pos + length])
        pos += length
    return out


# -- HTTP -------------------------------------------------------------------------------


AUDITOR_CREDENTIALS = (
    "an auditor's (or RA officer's) certificate: --cert and --key (or EPORT_CERT and EPORT_KEY)"
)
PROVER_CREDENTIALS = (
    "the certificate of who asks, an auditor's, an RA officer's or the enterprise's own: "
    "--as-cert and --key (or EPORT_CERT and EPORT_KEY); --cert names the certificate to prove"
)


class AuditClient:
    """GETs against the audit API, signed with ``identity`` when one is given."""

    def __init__(
        self,
        server: str,
        identity: Identity | None,
        timeout: float = 120.0,
        *,
        credentials: str = AUDITOR_CREDENTIALS,
    ) -> None:
        self.server = server.rstrip("/")
        self.identity = identity
        self.timeout = timeout
        self.http = requests.Session()
        self.credentials = credentials
        """What a signed request without an identity needs, in the command's options."""

    def get(self, path: str, *, signed: bool = False, method: str = "GET") -> requests.Response:
        headers = {}
        if signed:
            if self.identity is None:
                raise CLIError(f"this needs {self.credentials}")
            token = sign_request(
                self.identity.key,
                self.identity.chain,
                method,
                path,
                b"",
                datetime.datetime.now(datetime.UTC),
            )
            headers["Authorization"] = f"{SCHEME} {token}"
        resp = send(
            self.http,
            method,
            self.server,
            self.server + path,
            headers=headers,
            timeout=self.timeout,
        )
        if resp.status_code >= 400:
            foreign = not_ours(resp, self.server)
            if foreign is not None:
                raise foreign
            raise RemoteError(resp.status_code, parse(resp, self.server))
        return resp

    def json(self, path: str, *, signed: bool = False, method: str = "GET") -> dict[str, Any]:
        resp = self.get(path, signed=signed, method=method)
        # Parsed once (a page of an export is megabytes); not_ours parses it again only
        # to say what is wrong with an answer that is not the API's.
        doc: Any = None
        if "json" in resp.headers.get("Content-Type", "").split(";")[0]:
            try:
                doc = parse(resp, self.server)
            except ValueError:
                doc = None
        if not isinstance(doc, dict):
            foreign = not_ours(resp, self.server)
            raise foreign or CLIError(f"the server at {self.server} answered no JSON object")
        return doc


def _b64_nodes(nodes: list[str]) -> list[bytes]:
    try:
        return [base64.b64decode(n, validate=True) for n in nodes]
    except ValueError:
        raise VerificationFailed("the server sent a proof that is not base64") from None


# -- the log key and the state file -----------------------------------------------------


def _key_id(name: str, raw: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n\x01" + raw).digest()[:4]


def verifier_from_public_key(name: str, public_key: Ed25519PublicKey) -> VerifierKey:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    encoded = base64.b64encode(b"\x01" + raw).decode()
    text = f"{name}+{_key_id(name, raw).hex()}+{encoded}"
    return VerifierKey.parse(text)


def _utc_time(text: str) -> datetime.datetime:
    """``text`` in UTC (UTC when it names no offset); OverflowError when that is outside
    the years 1 to 9999 (``0001-01-01T00:00+08:00``), which the server refuses too."""
    value = datetime.datetime.fromisoformat(text.strip())
    return (value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)).astimezone(
        datetime.UTC
    )


def iso_time(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An option's callback: an ISO 8601 date or date and time, as the server reads it,
    refused here (exit 2) in the option's name."""
    if value is not None:
        try:
            _utc_time(value)
        except ValueError:
            raise click.BadParameter(
                "not an ISO 8601 date or date and time (2026-11-20, 2026-11-20T08:00:00Z)",
                ctx,
                param,
            ) from None
        except OverflowError:
            raise click.BadParameter(
                f"{value!r} is out of range: in UTC it is not within the years 1 to 9999",
                ctx,
                param,
            ) from None
    return value


def load_log_key(value: str, origin: str) -> VerifierKey:
    """``--log-key``: a verifier key string, or a file holding one or the PEM ``log.pub``."""
    text = value
    path = Path(value)
    if "+" not in value or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise CLIError(
                f"--log-key {value}: neither a verifier key (NAME+HASH+KEY, as "
                f"GET /ca/v1/audit/log-key gives it) nor a readable file ({exc.strerror})"
            ) from None
        except UnicodeDecodeError:
            raise CLIError(
                f"--log-key {value}: the file is not text (a verifier key NAME+HASH+KEY, "
                "or the PEM log.pub)"
            ) from None
    if "-----BEGIN " in text and "-----BEGIN PUBLIC KEY-----" not in text:
        # a certificate (root.crt), a private key: PEM, but not the log's key
        kind = text.split("-----BEGIN ", 1)[1].split("-----", 1)[0].lower()
        raise CLIError(
            f"--log-key {value} holds a {kind[:40]}, not the log's key: give the log's "
            "verifier key (log.pub from the ceremony, or GET /ca/v1/audit/log-key)"
        )
    if "-----BEGIN PUBLIC KEY-----" in text:
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise CLIError(f"{value} is not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise CLIError(f"{value} is not an Ed25519 public key")
        return verifier_from_public_key(origin, key)
    try:
        return VerifierKey.parse(text.strip())
    except AuditError as exc:
        raise CLIError(f"--log-key: {exc}") from None


def _unsaved(path: Path, exc: OSError) -> str:
    return (
        f"the log verified, but its checkpoint cannot be kept in {path}: "
        f"{exc.strerror or exc} (choose the state file with --state or EPORT_AUDIT_STATE)"
    )


def default_state_path(server: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    netloc = urlsplit(server).netloc or server
    return Path(base) / "eport" / "audit" / (re.sub(r"[^A-Za-z0-9.-]", "_", netloc) + ".json")


@dataclass
class State:
    """What the auditor verified last: the log key it trusts and the last checkpoint."""

    verifier_key: str
    note: str

    @classmethod
    def load(cls, path: Path) -> State | None:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CLIError(f"cannot read the audit state file {path}: {exc}") from None
        try:
            return cls(verifier_key=str(doc["verifier_key"]), note=str(doc["checkpoint"]))
        except (KeyError, TypeError):
            raise CLIError(f"{path} is not an eport audit state file") from None

    def save(self, path: Path, checkpoint: VerifiedCheckpoint, server: str) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CLIError(_unsaved(path, exc)) from None
        doc = {
            "server": server,
            "origin": checkpoint.origin,
            "verifier_key": self.verifier_key,
            "tree_size": checkpoint.size,
            "root_hash": checkpoint.root_hash.hex(),
            "checkpoint": self.note,
            "verified_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
            tmp.replace(path)
        except OSError as exc:
            raise CLIError(_unsaved(path, exc)) from None


def resolve_key(
    client: AuditClient,
    log_key: str | None,
    state: State | None,
    origin: str,
    root: x509.Certificate | None = None,
) -> tuple[VerifierKey, VerifierKey | None, bool]:
    """The log key to start from: ``--log-key``, else the one pinned in the state file,
    else what the server says: checked under ``root`` (``--root``) when the root signed it
    (``ca/log.pub.sig``: :mod:`ca.log_key_signature`), else trusted on first use (reported
    on stderr). Returns that key, the key the log must be handed over to (``--log-key``
    when it differs from the state's: the pinned key is started from, and the log's
    hand-overs must lead to the one given), and whether the key was newly trusted."""
    if log_key:
        key = load_log_key(log_key, origin)
        if state is not None and str(key) != state.verifier_key:
            return VerifierKey.parse(state.verifier_key), key, False
        return key, None, False
    if state is not None:
        return VerifierKey.parse(state.verifier_key), None, False
    doc = client.json(f"{API}/log-key")
    key = VerifierKey.parse(str(doc["verifier_key"]))
    vouched = doc.get("root_signature")
    if root is not None and vouched is None:
        # fail closed: whoever stands between (or a server that dropped the field) could
        # otherwise make --root check nothing on first use
        raise VerificationFailed(
            f"the server offers no root signature of its log key {key}, so --root cannot "
            "vouch for it (a CA made before its root signed its log key, or a signature "
            "left out on the way): pin the key from the ceremony record instead "
            "(--log-key log.pub)"
        )
    if root is not None and vouched is not None:
        _check_root_vouches(root, key, vouched)
        fingerprint = root.fingerprint(hashes.SHA256()).hex()
        click.echo(
            f"eport: the log key {key} is signed by the root {fingerprint[:16]}… (--root): pinned",
            err=True,
        )
        return key, None, True
    why = (
        "give the root certificate (--root ROOT.crt) to check it under the root"
        if vouched is not None
        else "compare it with the ceremony record"
    )
    click.echo(
        f"eport: trusting the log key {key} on first use: {why}; pin it with --log-key",
        err=True,
    )
    return key, None, True


def _check_root_vouches(root: x509.Certificate, key: VerifierKey, vouched: object) -> None:
    """Raise :class:`VerificationFailed` unless ``vouched`` (the server's ``root_signature``)
    is ``root``'s signature of ``key``, checked by the auditor's own code
    (:func:`cli.auditproof.verify_root_log_key`), as every other check of the log is."""
    try:
        auditproof.verify_root_log_key(key, root, vouched)
    except AuditError as exc:
        raise VerificationFailed(
            f"the log key {key} the server names is not signed by the root given with --root: {exc}"
        ) from None


def verify_note(note: bytes, key: VerifierKey, what: str) -> VerifiedCheckpoint:
    try:
        return auditproof.verify_checkpoint(note, key)
    except AuditError as exc:
        raise VerificationFailed(f"{what}: {exc}") from None


def check_consistent(
    client: AuditClient, old: VerifiedCheckpoint, new: VerifiedCheckpoint, what: str
) -> None:
    """``old`` must be a prefix of ``new`` (RFC 9162 §2.1.4.2), or the log shrank or forked."""
    if old.origin != new.origin:
        raise VerificationFailed(f"{what} is of log {old.origin!r}, not {new.origin!r}")
    if new.size < old.size:
        raise VerificationFailed(
            f"the log shrank from {old.size} to {new.size} entries: entry {new.size} and "
            f"the {old.size - new.size - 1} after it were removed (truncated log)"
        )
    if new.size == old.size:
        if new.root_hash != old.root_hash:
            raise VerificationFailed(
                f"two different signed roots for tree size {new.size} ({old.root_hash.hex()} "
                f"and {new.root_hash.hex()}): the log forked"
            )
        return
    try:
        doc = client.json(
            f"{API}/proof/consistency?" + urlencode({"from": old.size, "to": new.size})
        )
    except RemoteError as exc:
        raise VerificationFailed(
            f"the server cannot prove its checkpoint of size {new.size} consistent with "
            f"{what} (size {old.size}): {exc}"
        ) from None
    try:
        auditproof.verify_consistency(
            old.size, new.size, old.root_hash, new.root_hash, _b64_nodes(doc["proof"])
        )
    except AuditError as exc:
        raise VerificationFailed(
            f"{what} (size {old.size}) is not a prefix of the log's checkpoint of size "
            f"{new.size}: the log was rewritten or forked ({exc})"
        ) from None


HANDOVER = "log-key-successor "
"""The extension line of a hand-over checkpoint starts with this, then the verifier key
of the log's next key (docs/log-format.md, "Hand-over checkpoints")."""


REPLACED = "log-key-replaced "
"""The extension line of a replacement checkpoint (the log key lost: REPLACE-LOG-KEY)
that names the key it retires; the joint root CA's key signs it instead of that key."""


@dataclass(frozen=True)
class Handover:
    """One hand-over followed: at ``size`` the log's key went from ``retired`` to
    ``successor``; ``by_root``: a replacement the root key vouched for, not signed by
    ``retired``."""

    size: int
    retired: VerifierKey
    successor: VerifierKey
    by_root: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "tree_size": self.size,
            "from": str(self.retired),
            "to": str(self.successor),
            "vouched_by_root": self.by_root,
        }


def _unverified_text(note: bytes) -> str:
    """A note's text, before any signature is checked (to read what it claims)."""
    decoded = note.decode("utf-8", "replace")
    return decoded[: max(decoded.rfind("\n\n"), 0) + 1]


def _replacement_of(
    note: bytes, key: VerifierKey, root: x509.Certificate | None
) -> VerifiedCheckpoint | None:
    """The checkpoint of ``note`` when it is a replacement of ``key`` (its
    :data:`REPLACED` line names ``key``) and the root key of ``root`` signed it; None
    when it replaces another key (or none); :class:`VerificationFailed` when it replaces
    ``key`` but no root is given or the root's signature does not verify."""
    lines = _unverified_text(note).split("\n")
    if f"{REPLACED}{key}" not in lines[3:]:
        return None
    size = lines[1][:20]
    if root is None:
        raise VerificationFailed(
            f"the log's key {key} was replaced at tree size {size} without its signature "
            "(lost or compromised: REPLACE-LOG-KEY), by a hand-over the joint root CA's key "
            "vouches for; give the root certificate you trust with --root FILE to follow it"
        )
    try:
        return auditproof.verify_root_checkpoint(note, root)
    except AuditError as exc:
        raise VerificationFailed(
            f"the replacement of the log's key {key} at tree size {size}: {exc}"
        ) from None


def handover_step(
    note: bytes, key: VerifierKey, root: x509.Certificate | None = None
) -> tuple[VerifiedCheckpoint, VerifierKey] | None:
    """The hand-over ``note`` makes from ``key``, the key trusted: the checkpoint ``key``
    signed, or, for a replacement of ``key`` (REPLACE-LOG-KEY), the root key of ``root``
    signed, and the successor it names, which co-signed it. None when neither signed it
    (another key's hand-over) or it hands the log over to ``key`` itself (behind us);
    :class:`VerificationFailed` for one signed so that names not exactly one valid
    successor key of the same log, or that the successor did not sign. The one rule of
    `eport audit verify` and of `eport restore`'s check of an archive's log key."""
    try:
        cp = auditproof.verify_checkpoint(note, key)
    except AuditError:
        replaced = _replacement_of(note, key, root)
        if replaced is None:
            return None
        cp = replaced
    where = f"the hand-over checkpoint of size {cp.size}"
    named = [line[len(HANDOVER) :] for line in cp.extensions if line.startswith(HANDOVER)]
    if len(named) != 1:
        raise VerificationFailed(
            f"{where}, signed by {key}, names {len(named)} successor keys, not one"
        )
    try:
        successor = VerifierKey.parse(named[0])
    except AuditError as exc:
        raise VerificationFailed(f"{where} names no valid successor key: {exc}") from None
    if str(successor) == str(key):
        return None
    if successor.name != key.name:
        raise VerificationFailed(
            f"{where} names a key of another log ({successor.name!r}, not {key.name!r})"
        )
    verify_note(note, successor, f"{where}, by its successor {successor}")
    return cp, successor


def follow_handovers(
    client: AuditClient,
    key: VerifierKey,
    previous: VerifiedCheckpoint | None,
    what: str,
    root: x509.Certificate | None = None,
) -> tuple[VerifierKey, VerifiedCheckpoint | None, str, list[Handover]]:
    """Follow the log's hand-over checkpoints from ``key``, the one trusted: each one
    ``key`` signed names its successor, which must have signed it too, and must extend
    ``previous`` (the last checkpoint trusted, called ``what``); the successor is then
    trusted, and the hand-over is the checkpoint the next one is checked against. Returns
    the key reached, the last checkpoint trusted, what to call it, and the hand-overs
    followed (none from a server of a release without them). ``root``: the root
    certificate the auditor trusts, to follow a replacement the root key vouched for."""
    try:
        doc = client.json(f"{API}/log-key/handovers")
    except RemoteError:
        return key, previous, what, []
    listed = doc.get("handovers") if isinstance(doc, dict) else None
    if not isinstance(listed, list) or not all(
        isinstance(item, dict) and isinstance(item.get("checkpoint"), str) for item in listed
    ):
        raise VerificationFailed(
            "the server's list of the log's hand-over checkpoints is not one "
            "({handovers: [{checkpoint}]} expected)"
        )
    hops: list[Handover] = []
    for item in listed:
        note = item["checkpoint"].encode()
        step = handover_step(note, key, root)
        if step is None:
            continue  # another key's hand-over, or the one to the key trusted: behind us
        cp, successor = step
        by_root = f"{REPLACED}{key}" in cp.extensions
        where = f"the hand-over checkpoint of size {cp.size}"
        if previous is not None:
            if previous.size > cp.size:
                raise VerificationFailed(
                    f"{what} (size {previous.size}) is signed by {key}, which handed the "
                    f"log over to {successor} at size {cp.size}: the retired key signed on"
                )
            check_consistent(client, previous, cp, what)
        hops.append(Handover(cp.size, key, successor, by_root))
        key, previous, what = successor, cp, where
    return key, previous, what, hops


def _handover_lines(hops: list[Handover]) -> list[str]:
    return [
        f"  log key handed over at size {h.size}: {h.retired} -> {h.successor} "
        + (
            "(the old key lost or compromised: the hand-over checkpoint is signed by the new "
            "key and vouched for by the root key given; the state now pins the new key)"
            if h.by_root
            else "(the hand-over checkpoint is signed by both; the state now pins the new key)"
        )
        for h in hops
    ]


def trusted_checkpoint(
    client: AuditClient,
    note: bytes,
    key: VerifierKey,
    previous: VerifiedCheckpoint | None,
    what: str,
    target: VerifierKey | None = None,
    root: x509.Certificate | None = None,
) -> tuple[VerifiedCheckpoint, VerifierKey, list[Handover]]:
    """The log's latest checkpoint ``note``, verified with ``key`` or, when the log's key
    was rotated since, with the key the log's hand-overs lead to from ``key``
    (:func:`follow_handovers`), and checked to extend ``previous`` (called ``what``).
    ``target``: the key those hand-overs must end at (``--log-key``); ``root``: the root
    certificate trusted (``--root``). Returns the checkpoint, the key that signed it, and
    the hand-overs followed."""
    pinned = key
    hops: list[Handover] = []
    try:
        cp = auditproof.verify_checkpoint(note, key)
    except AuditError as exc:
        key, previous, what, hops = follow_handovers(client, key, previous, what, root)
        if not hops:
            raise VerificationFailed(f"the log's checkpoint: {exc}") from None
        cp = verify_note(note, key, f"the log's checkpoint (after the hand-over to {key})")
    if target is not None and str(key) != str(target):
        raise CLIError(
            f"--log-key {target} differs from the key pinned in the state file ({pinned}), "
            "and the log's hand-overs do not lead from that key to it; use another --state "
            "to start over"
        )
    if previous is not None:
        check_consistent(client, previous, cp, what)
    return cp, key, hops


# -- downloading the log ----------------------------------------------------------------


R = TypeVar("R")


class Ahead(Generic[R]):
    """``fn(*args)`` run in a daemon thread, its result (or exception) at :meth:`result`:
    the next page asked for while this one is written or checked. Not an executor's
    worker: the interpreter joins those at exit, so an export or a verification stopped
    by Ctrl-C, SIGTERM or SIGHUP waited out the request in flight, up to its timeout,
    before it ended (crash probe, session 26)."""

    def __init__(self, fn: Callable[..., R], *args: Any) -> None:
        self._done = threading.Event()
        self._value: R | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(fn, args), daemon=True).start()

    def _run(self, fn: Callable[..., R], args: tuple[Any, ...]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # handed to the thread that asks for the result
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> R:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return cast(R, self._value)


def fetch_entries(
    client: AuditClient, start: int, end: int, on_page: Callable[[int], None]
) -> Iterator[tuple[int, list[bytes]]]:
    """Entry bundles ``[start, end)``, two requests in flight; yields (first index, entries)."""
    pages = list(range(start, end, BUNDLE))

    def get(first: int) -> tuple[int, list[bytes], int]:
        count = min(BUNDLE, end - first)
        resp = client.get(f"{API}/entries?start={first}&count={count}", signed=True)
        return first, split_bundle(resp.content), count

    ahead = [Ahead(get, p) for p in pages[:2]]
    following = 2
    while ahead:
        first, entries, asked = ahead.pop(0).result()
        if following < len(pages):
            ahead.append(Ahead(get, pages[following]))
            following += 1
        yield first, entries
        on_page(len(entries))
        if len(entries) < asked:
            return  # what is still in flight is let go


def fetch_leaf_hashes(client: AuditClient, size: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < size:
        resp = client.get(f"{API}/leaf-hashes?start={len(out)}&count={BUNDLE * 4}&size={size}")
        data = resp.content
        if not data:
            break
        out += [data[i : i + 32] for i in range(0, len(data), 32)]
    return out


def diagnose(client: AuditClient, cp: VerifiedCheckpoint, computed: list[bytes]) -> str:
    """Name the first entry whose hash differs from the log's leaf (authenticated by root)."""
    stored = fetch_leaf_hashes(client, cp.size)
    if len(stored) != cp.size or auditproof.root_from_leaf_hashes(stored) != cp.root_hash:
        return (
            f"the entries do not hash to the signed root of size {cp.size}, and the log's "
            "stored leaf hashes do not either: its tree storage was changed"
        )
    where = {digest: i for i, digest in enumerate(stored)}
    for i, (ours, theirs) in enumerate(zip(computed, stored, strict=False)):
        if ours == theirs:
            continue
        j = where.get(ours)
        if j is None:
            return (
                f"entry {i} was changed: it hashes to {ours.hex()}, but the log's leaf {i} "
                f"is {theirs.hex()}"
            )
        swapped = i + 1 < len(computed) and computed[i + 1] == theirs
        if j == i + 1 and not swapped:
            return f"entry {i} is missing: the entry served at {i} is the log's entry {j}"
        return f"entries {i} and {j} are out of order: the entry served at {i} is the log's {j}"
    return f"entry {len(computed)} is missing"


@dataclass
class FullResult:
    entries: int
    issuances: int
    certificates: int
    records_checked: int = 0
    """Certificates whose records (bytes, owner, profile, status) were compared with the
    log, not only their hashes (0 from a server of an older release)."""


@dataclass
class _Logged:
    """What the log says of the certificates, as :func:`verify_full` reads it."""

    hashes: dict[str, str]
    """serial → SHA-256 of every logged issuance"""
    position: dict[str, int]
    """serial → its issuance entry's index"""
    facts: dict[str, bytes]
    """serial → its issuance's :data:`FACTS` as the entry spells them (:func:`facts_of`)"""
    status: dict[str, tuple[int, Status | None]]
    """serial → (index of its last status entry, (state, reason, time, invalidity date)
    or None: good)"""
    passed: dict[str, list[tuple[int, Status | None] | None]] = field(default_factory=dict)
    """serial → every status the log gave it from a point on (None before any status
    entry: good), for the serials :func:`verify_full` follows there"""

    def read(self, index: int, entry: bytes) -> None:
        kind_at = entry.rfind(b'"type":"')
        if entry.startswith(_ISSUANCE_TYPES, kind_at):
            issuance = issuance_of(entry)
            if issuance is not None:
                serial = issuance[0]
                self.hashes[serial] = issuance[1]
                self.position[serial] = index
                self.facts[serial] = facts_of(entry)
        elif entry.startswith(_STATUS_TYPES, kind_at):
            doc = read_entry(entry, index)
            serial = doc["serial"]
            if isinstance(serial, str):
                state = STATUS_EVENTS[doc["type"]]
                details = doc["details"] if isinstance(doc["details"], dict) else {}
                now = None
                if state is not None:
                    invalid = details.get("invalidity_date")
                    now = (state, details.get("reason"), doc["time"], invalid)
                self.status[serial] = (index, now)
                followed = self.passed.get(serial)
                if followed is not None:
                    followed.append((index, now))


def facts_of(entry: bytes) -> bytes:
    """The JSON spellings of an issuance entry's :data:`FACTS`, read straight off its
    bytes as :func:`issuance_of` reads its serial: a canonical v1 entry's top-level
    members follow ``details`` (the only one that nests) in key order, so the last
    ``,"issuer":`` is the top-level one, and each value ends where the next member
    begins (a string value holds no unescaped quote)."""
    issuer = entry.rfind(b',"issuer":')
    profile = entry.find(b',"profile":', issuer)
    serial = entry.find(b',"serial":', profile)
    subject = entry.find(b',"subject":', serial)
    time_at = entry.find(b',"time":', subject)
    uscc = entry.find(b',"uscc":', time_at)
    end = entry.find(b',"v":', uscc)
    return b"\x00".join(
        (
            entry[uscc + 8 : end],
            entry[subject + 11 : time_at],
            entry[profile + 11 : serial],
            entry[issuer + 10 : profile],
        )
    )


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _spell(value: Any) -> str:
    """``value`` as a canonical v1 entry spells it (JSON, non-ASCII as it is)."""
    if value is None:
        return "null"
    if isinstance(value, str) and not _NEEDS_ESCAPE.search(value):
        return f'"{value}"'  # the usual case, without json.dumps's cost
    return json.dumps(value, ensure_ascii=False)


def _spelled(values: Listed) -> bytes:
    """A listed certificate's :data:`FACTS` as :func:`facts_of` gives an entry's."""
    return "\x00".join(map(_spell, values)).encode()


Listed = tuple[Any, ...]
"""A certificate as the CA lists it (``?detail=1``): ``(serial, sha256, der_sha256 or None,
uscc, subject, profile, issuer, log_index, state, reason, at, status_issuer or None,
invalidity_date or None)``; from a server of an older release without the last two, or
``(serial, sha256)`` only."""


def _listing(data: bytes) -> dict[str, Listed]:
    """The CA's certificate listing (``?detail=1``: a JSON array per line; a server of an
    older release answers ``<serial> <sha256>`` lines, then only the hashes are compared)."""
    if data.startswith(b"["):
        # one parse of the lines as an array (no JSON string holds a raw newline)
        rows = json.loads(b"[" + data.rstrip(b"\n").replace(b"\n", b",") + b"]")
        return {str(row[0]): tuple(row) for row in rows}
    out: dict[str, Listed] = {}
    for line in data.decode("ascii").splitlines():
        serial, digest = line.split(" ", 1)
        out[serial] = (serial, digest)
    return out


Status = tuple[str, str | None, str, str | None]
"""A certificate's status: state, reason, since, invalidity date (RFC 5280 §5.3.2)."""


def _status_text(status: Status | None) -> str:
    if status is None:
        return "good"
    state, reason, at, invalid = status
    invalidity = "" if invalid is None else f", invalid since {invalid}"
    return f"{'on hold' if state == 'hold' else state} ({reason}, since {at}{invalidity})"


def _check_listed(serial: str, row: Listed, logged: _Logged) -> str | None:
    """What the CA's record ``row`` of ``serial`` (listed) says that the log does not, of
    what never changes after issuance (its bytes, owner, profile, issuer, listing key);
    None when it agrees. Its status, which may change while the listing is read, is
    :func:`status_problem`'s."""
    where = f"entry {logged.position[serial]}: certificate {serial}"
    recorded = logged.hashes[serial]
    if row[1] != recorded:
        return f"{where} is listed by the CA with SHA-256 {row[1]}, but the log recorded {recorded}"
    if len(row) == 2:
        return None  # an older server's listing: hashes only
    if row[2] is not None:
        return (
            f"{where}: the CA's stored certificate (DER) hashes to {row[2]}, but the log "
            f"recorded {recorded}: it serves other bytes than it issued"
        )
    if _spelled(row[3:7]) != logged.facts[serial]:
        raws = logged.facts[serial].split(b"\x00")
        for name, value, raw in zip(FACTS, row[3:7], raws, strict=True):
            said = json.loads(raw)
            if value != said:
                return (
                    f"{where} is listed by the CA with {name} {value!r}, but its logged "
                    f"issuance says {said!r}"
                )
    if row[7] is not None and row[7] != logged.position[serial]:
        return f"{where} is listed by the CA at log index {row[7]}, not its issuance's"
    if len(row) > 11 and row[11] is not None:
        return (
            f"{where}: its status row in the CA's records names issuing CA {row[11]!r}, not "
            f"{row[6]!r}: the CRL of {row[6]!r} leaves it out while OCSP answers its status"
        )
    return None


def _instant(text: Any) -> Any:
    """An invalidity date as one spelling of its instant (UTC, ``+00:00``): an event
    recorded it as given before times were kept in UTC (before 2026-11-27), with the
    client's offset, and the CA's record holds the same instant in UTC."""
    if not isinstance(text, str):
        return text
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return text
    return when.astimezone(datetime.UTC).isoformat() if when.tzinfo else text


def _listed_status(row: Listed) -> Status | None:
    if len(row) == 2 or row[8] is None:
        return None
    return (row[8], row[9], row[10], _instant(row[12]) if len(row) > 12 else None)


def _logged_status(serial: str, logged: _Logged, row: Listed) -> Status | None:
    return _as_listed(logged.status.get(serial), row)


def _as_listed(last: tuple[int, Status | None] | None, row: Listed) -> Status | None:
    """A status the log gave (:attr:`_Logged.status`), as the listing ``row`` spells one."""
    if last is None or last[1] is None:
        return None
    if len(row) <= 12:  # an older server lists no invalidity date: not compared
        return (*last[1][:3], None)
    return (*last[1][:3], _instant(last[1][3]))


def status_problem(serial: str, row: Listed, logged: _Logged) -> str | None:
    """The difference between the status the CA's record ``row`` gives and the one the
    log's status events lead to, if any."""
    actual, expected = _listed_status(row), _logged_status(serial, logged, row)
    if actual == expected or len(row) == 2:
        return None
    last = logged.status.get(serial)
    said = "no status entry" if last is None else f"entry {last[0]}"
    return (
        f"certificate {serial} is {_status_text(actual)} in the CA's records (what OCSP "
        f"and CRLs answer), but the log's status events ({said}) leave it "
        f"{_status_text(expected)}"
    )


def verify_full(
    client: AuditClient,
    cp: VerifiedCheckpoint,
    key: VerifierKey,
    *,
    events: bool,
    progress: bool,
) -> tuple[FullResult, VerifiedCheckpoint, bytes | None]:
    """Download every entry, recompute the root, cross-check the certificate listings.

    Returns the result and, when certificates issued after ``cp`` had to be checked, the
    newer checkpoint verified on the way (and its note).
    """
    leaves: list[bytes] = []
    logged = _Logged({}, {}, {}, {})
    sha256 = hashlib.sha256

    def read(first: int, entries: list[bytes]) -> None:
        leaves.extend([sha256(b"\x00" + entry).digest() for entry in entries])
        for offset, entry in enumerate(entries):
            logged.read(first + offset, entry)

    # The CA's certificate records, fetched while the entries download. Asked for
    # after the checkpoint, so every certificate the checkpoint logged must be in it.
    listing = Ahead(lambda: client.get(f"{API}/certificates?detail=1", signed=True).content)
    with _progress(cp.size, "Verifying entries", progress) as bar:
        for first, entries in fetch_entries(client, 0, cp.size, bar.update):
            read(first, entries)
    if len(leaves) < cp.size:
        # Name where the served entries first part from the log's leaves (an entry
        # deleted and the gap closed: probe F5), else the first one not served.
        found = diagnose(client, cp, leaves)
        if found == f"entry {len(leaves)} is missing":
            found += f": the server serves {len(leaves)} of the checkpoint's {cp.size} entries"
        raise VerificationFailed(found)
    if auditproof.root_from_leaf_hashes(leaves) != cp.root_hash:
        raise VerificationFailed(diagnose(client, cp, leaves))
    listed = _listing(listing.result())
    if events:
        _check_event_records(client, cp, leaves, progress)
    newer, newer_note = cp, None
    # Listed but not logged by cp, or whose status differs from what cp's log says: issued
    # or changed while we verified, they must be explained by a newer checkpoint.
    unexplained = [s for s in listed if s not in logged.hashes]
    for serial in listed.keys() & logged.hashes.keys():
        problem = _check_listed(serial, listed[serial], logged)
        if problem is not None:
            raise VerificationFailed(problem)
        if status_problem(serial, listed[serial], logged) is not None:
            unexplained.append(serial)
    if unexplained:
        newer_note = client.get(f"{API}/checkpoint").content
        newer = verify_note(newer_note, key, "the newer checkpoint")
        check_consistent(client, cp, newer, "the checkpoint just verified")
        # Every status each of them passed through from cp on: the listing was read
        # after cp and before the newer checkpoint, so it shows one of them. The last
        # alone was compared, and a status changed twice meanwhile (held, then resumed)
        # was called tampering (race probe, session 27). A record that stays changed is
        # still found: the next verification compares it with its own checkpoint.
        logged.passed = {s: [logged.status.get(s)] for s in unexplained}
        for first, entries in fetch_entries(client, len(leaves), newer.size, lambda _n: None):
            read(first, entries)
        if auditproof.root_from_leaf_hashes(leaves) != newer.root_hash:
            raise VerificationFailed(diagnose(client, newer, leaves))
        if newer.size == cp.size and _log_key_missing(client):
            # No newer checkpoint to explain them: the server signs none (its log key is
            # missing: /ca/v1/health says), which is no proof of tampering; it was said
            # as one (emergency-plan probe, session 27). Not verified, in those words.
            raise CLIError(
                f"cannot verify the {len(unexplained)} certificate records changed or "
                f"issued after the log's newest checkpoint (size {cp.size}): the server "
                "signs no newer one (its log key is missing: see /ca/v1/health); "
                "the log up to that checkpoint verified"
            )
        for serial in sorted(unexplained):
            if serial not in logged.hashes:
                raise VerificationFailed(
                    f"certificate {serial} (SHA-256 {listed[serial][1]}) is in the "
                    "CA's listings but its issuance is not in the log"
                )
            problem = _check_listed(serial, listed[serial], logged)
            row = listed[serial]
            if problem is None and all(
                _listed_status(row) != _as_listed(state, row) for state in logged.passed[serial]
            ):
                problem = status_problem(serial, row, logged)
            if problem is not None:
                raise VerificationFailed(problem)
    for serial in sorted(logged.hashes.keys() - listed.keys(), key=logged.position.__getitem__):
        if logged.position[serial] < cp.size:
            raise VerificationFailed(
                f"entry {logged.position[serial]}: the logged issuance of certificate {serial} "
                "is missing from the CA's listings"
            )
    checked = sum(1 for row in listed.values() if len(row) > 2)
    return FullResult(len(leaves), len(logged.hashes), len(listed), checked), newer, newer_note


def _log_key_missing(client: AuditClient) -> bool:
    """Whether the server says it cannot sign checkpoints (``/ca/v1/health``'s
    ``missing_keys`` names the log's key); any doubt is no."""
    try:
        missing = client.json("/ca/v1/health").get("missing_keys")
    except (CLIError, ValueError, AttributeError):
        return False
    return isinstance(missing, list) and "log" in missing


def _check_event_records(
    client: AuditClient, cp: VerifiedCheckpoint, leaves: list[bytes], progress: bool
) -> None:
    """The CA's events table, re-encoded by the server, must give the logged entries."""
    with _progress(cp.size, "Comparing event records", progress) as bar:
        for first in range(0, cp.size, BUNDLE):
            count = min(BUNDLE, cp.size - first)
            data = client.get(
                f"{API}/event-digests?start={first}&count={count}", signed=True
            ).content
            for offset in range(count):
                digest = data[offset * 32 : offset * 32 + 32]
                if digest != leaves[first + offset]:
                    index = first + offset
                    raise VerificationFailed(
                        f"entry {index}: the CA's event record no longer matches the logged "
                        "entry (the event was changed or deleted after it was logged)"
                    )
            bar.update(count)


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress(total: int, label: str, enabled: bool) -> Any:
    if not enabled or total < BUNDLE:
        return _NoBar()
    return click.progressbar(length=total, label=label, file=sys.stderr)


# -- click ------------------------------------------------------------------------------


signer_options = identity_options("reader", required=False)
"""Optional --cert/--key/--passphrase-file of the reader (an auditor, RA officer or
enterprise): who signs the requests that need it."""


def state_options(f: F) -> F:
    f = click.option(
        "--log-key",
        envvar="EPORT_LOG_KEY",
        help="The log's verifier key (name+id+key), or a file with it or the PEM log.pub "
        "(env EPORT_LOG_KEY; else the key pinned in the state file).",
    )(f)
    f = click.option(
        "--state",
        "state_file",
        envvar="EPORT_AUDIT_STATE",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Where the last verified checkpoint is kept "
        "(default ~/.local/state/eport/audit/<server>.json; env EPORT_AUDIT_STATE).",
    )(f)
    f = click.option(
        "--root",
        "root_cert",
        envvar="EPORT_ROOT_CERT",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        callback=lambda ctx, param, value: keyfiles.load_certs(value)[0] if value else None,
        help="The joint root CA certificate you trust (PEM or DER; env EPORT_ROOT_CERT): "
        "a first verification pins the log key only if this root signed it (else it is "
        "trusted on first use), and a replacement of a lost log key is followed only "
        "if this root vouched for it (REPLACE-LOG-KEY).",
    )(f)
    return f


def _client(
    obj: Any,
    cert_file: Path | None,
    key_file: Path | None,
    pw: Path | None,
    *,
    cert_option: str = "--cert",
) -> AuditClient:
    """The audit API's client, signing as ``cert_file`` and ``key_file`` when given (the
    command's ``cert_option`` and --key)."""
    server = getattr(obj, "server", None) or DEFAULT_SERVER
    identity = None
    if cert_file is not None or key_file is not None:
        if cert_file is None or key_file is None:
            raise CLIError(f"{cert_option} and --key go together")
        identity = keyfiles.load_identity(cert_file, key_file, pw)
    if cert_option == "--as-cert":
        return AuditClient(server, identity, credentials=PROVER_CREDENTIALS)
    return AuditClient(server, identity)


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    print_result(json_text(data) if as_json else text)


@click.group("audit")
def audit() -> None:
    """Auditors: read the CA's events, verify the transparency log, prove inclusion.

    \b
      eport audit log --type certificate.issued --since 2026-01-01 --format csv --out x.csv
      eport audit verify --full            (checkpoint, consistency, every entry, listings)
      eport audit prove SERIAL             (or --cert FILE)
      eport audit web-login                (a one-time link to the web view at /audit/)

    Requests that read records are signed with an auditor's or RA officer's certificate
    (--cert/--key or EPORT_CERT/EPORT_KEY); an enterprise reads only its own events.
    """


@audit.command("log")
@signer_options
@click.option(
    "--type",
    "types",
    multiple=True,
    help="Only these event types (repeatable): " + ", ".join(EVENT_TYPES) + ", ….",
)
@click.option("--uscc", help="Only events of this enterprise (USCC).")
@click.option("--subject", help="Subject name contains this (case-insensitive).")
@click.option("--profile", help="Only this certificate profile.")
@click.option("--issuer", help="Only this issuing CA.")
@click.option("--actor", help="Only this actor (e.g. agency:1f3a…, enrollment-code).")
@click.option(
    "--serial",
    callback=lambda ctx, param, value: _serial_option(ctx, param, value),
    help="Only this certificate serial (hex).",
)
@click.option(
    "--since",
    callback=iso_time,
    help="From this time on (ISO 8601: 2026-11-20 or 2026-11-20T08:00:00Z; UTC unless it says).",
)
@click.option("--until", callback=iso_time, help="Before this time (ISO 8601).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="A readable table, or CSV / a JSON array for export (UTF-8; see --bom).",
)
@click.option(
    "--bom",
    is_flag=True,
    help="Start the CSV with a UTF-8 byte order mark: Excel needs it to read Chinese names "
    "(without one it takes the file for the system's code page, GBK in China). The CSV is "
    "UTF-8 with it even on a terminal of another encoding.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, None),
    help="At most this many events (default: 100 for a table, all for csv and json).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file instead of standard output (a new file: see --force).",
)
@click.option("--force", is_flag=True, help="Replace a file already at --out (refused by default).")
@click.pass_obj
def audit_log(
    obj: Any,
    cert_file: Path | None,
    key_file: Path | None,
    passphrase_file: Path | None,
    types: tuple[str, ...],
    uscc: str | None,
    subject: str | None,
    profile: str | None,
    issuer: str | None,
    actor: str | None,
    serial: str | None,
    since: str | None,
    until: str | None,
    fmt: str,
    bom: bool,
    limit: int | None,
    out: Path | None,
    force: bool,
) -> None:
    """List the CA's events (oldest first) with filters; export them as CSV or JSON.

    \b
      eport audit log --uscc 91350100M000100Y43                  (a table, 100 events)
      eport audit log --type certificate.issued --since 2026-01-01 --format csv --bom --out x.csv
    """
    if bom and fmt != "csv":
        raise click.UsageError("--bom goes with --format csv only")
    if since and until and _utc_time(since) >= _utc_time(until):
        raise click.UsageError(f"--since {since} is not before --until {until}")
    if force and out is None:
        raise click.UsageError("--force goes with --out only")
    if out is not None and not force and os.path.lexists(out):
        # Said before a passphrase is asked or anything is sent; an earlier export (the
        # one handed to an inspector) is not replaced by a rerun or a typo.
        raise CLIError(f"{out} exists: choose another --out, or pass --force to replace it")
    client = _client(obj, cert_file, key_file, passphrase_file)
    if client.identity is None:
        raise CLIError("eport audit log needs --cert and --key (or EPORT_CERT and EPORT_KEY)")
    if limit is None:
        limit = 100 if fmt == "table" else None
    base: list[tuple[str, str]] = [("type", t) for t in types]
    for name, value in (
        ("uscc", uscc),
        ("subject", subject),
        ("profile", profile),
        ("issuer", issuer),
        ("actor", actor),
        ("serial", serial),
        ("since", since),
        ("until", until),
    ):
        if value:
            base.append((name, value))
    page_size = 1000 if fmt == "table" else EXPORT_PAGE
    if out is None:
        if sys.stdout is None:  # closed (>&-): the export would go nowhere
            print_result("")
        if fmt == "csv":
            _csv_in_utf8(sys.stdout, bom)
        try:
            _write_events(client, base, fmt, limit, page_size, sys.stdout, False, bom)
            sys.stdout.flush()
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # a reader that stopped reading: click ends quietly
            raise CLIError(
                f"cannot write the result to standard output: {exc.strerror or exc}"
            ) from None
        return
    # Written beside OUT and moved there when complete: a failed or interrupted export
    # leaves no half file, and OUT as it was.
    part = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")
    try:
        # a new file of a unique name (O_EXCL, no symlink followed), the umask's mode
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
    except OSError as exc:
        raise CLIError(f"cannot write {out}: {exc.strerror}") from None
    try:
        # SIGTERM and SIGHUP unwind as Ctrl-C does: they ended the process at once and
        # left the part file, a whole copy of the events in the end (crash probe, s26)
        with stops_unwind(), open(fd, "w", encoding="utf-8", newline="") as stream:
            _write_events(client, base, fmt, limit, page_size, stream, True, bom)
            stream.flush()
            os.fsync(stream.fileno())  # the bytes are there before the name is
        _move_into_place(part, out, force)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _csv_in_utf8(stdout: Any, bom: bool) -> None:
    """Have standard output write a CSV export in UTF-8 (its rows ending CRLF, RFC 4180)
    whatever the locale's encoding, when it goes to a file or a program (``> x.csv``,
    ``| python …``) or ``bom`` asks for the byte order mark that tells Excel it is UTF-8:
    under a GBK or Latin-1 locale it wrote the mark as the text ``\\ufeff`` and names in
    GBK or as ``\\u`` escapes. On a terminal without ``bom``, the export is text shown
    in the terminal's encoding (``print_any_text``)."""
    if (bom or not stdout.isatty()) and hasattr(stdout, "reconfigure"):
        stdout.reconfigure(encoding="utf-8", newline="")


def _move_into_place(part: Path, out: Path, force: bool) -> None:
    """Give the complete export ``part`` its name ``out``. Without ``force`` a file made at
    ``out`` while the export ran is not replaced: the name is linked, which fails where
    one exists (a rename replaces it), then ``part`` removed."""
    made_meanwhile = CLIError(
        f"{out} exists (made while the export ran): choose another --out, "
        "or pass --force to replace it"
    )
    try:
        if force:
            part.replace(out)
            return
        try:
            os.link(part, out)
        except FileExistsError:
            raise made_meanwhile from None
        except OSError:
            # a file system without hard links (FAT, some shares): looked at, then renamed
            if os.path.lexists(out):
                raise made_meanwhile from None
            part.replace(out)
            return
    except OSError as exc:
        raise CLIError(f"cannot write {out}: {exc.strerror or exc}") from None
    part.unlink()


EXPORT_PAGE = 10000
"""Events an export asks for a request: the API's largest page."""
_CSV_PLAIN = operator.itemgetter(*COLUMNS[:-1])
"""A CSV row's columns but the last, ``details``, which is written as JSON (the csv
module writes ``None`` as an empty field)."""
_DETAILS_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode
_FORMULA_START = frozenset("=+-@\t\r")
"""What a spreadsheet takes a cell for a formula by (OWASP, "CSV Injection")."""


def _csv_row(ev: dict[str, Any]) -> list[Any]:
    """An event as a CSV row. A text cell that would start a formula gets a leading
    apostrophe, so a spreadsheet shows it as text: anyone may apply under a legal name
    such as ``=HYPERLINK("https://…?"&A1)``, and the export is made for Excel (``--bom``).
    ``--format json`` carries every value unchanged."""
    row: list[Any] = [
        "'" + v if isinstance(v, str) and v and v[0] in _FORMULA_START else v
        for v in _CSV_PLAIN(ev)
    ]
    row.append(_DETAILS_JSON(ev["details"]))  # a JSON object: starts with "{"
    return row


def _event_pages(
    client: AuditClient, base: list[tuple[str, str]], limit: int | None, page_size: int
) -> Iterator[dict[str, Any]]:
    """The pages of ``GET /events`` with ``base``'s filters, keyset-paged, until ``limit``
    events. The next page is asked for while the caller writes this one: the server reads
    and the CLI writes at the same time, with at most two pages in memory."""

    def get(after: int | None, want: int) -> dict[str, Any]:
        query = [*base, ("limit", str(want))]
        if after is not None:
            query.append(("after", str(after)))
        return client.json(f"{API}/events?" + urlencode(query), signed=True)

    seen = 0
    pending: Ahead[dict[str, Any]] | None = Ahead(
        get, None, page_size if limit is None else min(page_size, limit)
    )
    while pending is not None:
        doc = pending.result()
        seen += len(doc["events"])
        pending = None
        if doc.get("next") is not None and (limit is None or seen < limit):
            want = page_size if limit is None else min(page_size, limit - seen)
            pending = Ahead(get, int(doc["next"]), want)
        yield doc


def _write_events(
    client: AuditClient,
    base: list[tuple[str, str]],
    fmt: str,
    limit: int | None,
    page_size: int,
    stream: Any,
    to_file: bool,
    bom: bool = False,
) -> None:
    written = 0
    total: int | None = None
    bar: Any = _NoBar()
    writer = csv.writer(stream) if fmt == "csv" else None
    utf8 = takes_utf8(stream)  # else JSON in \u escapes: still JSON, in any encoding
    event_json = json.JSONEncoder(ensure_ascii=not utf8, sort_keys=True).encode
    rows_for_table: list[dict[str, Any]] = []

    def prelude() -> None:
        # Written once the first page came: a refusal of the query (a bad filter, a
        # credential the server refuses) leaves standard output empty, not half an export.
        if writer is not None:
            if bom:
                stream.write("\ufeff")
            writer.writerow(COLUMNS)
        if fmt == "json":
            stream.write("[")

    try:
        for doc in _event_pages(client, base, limit, page_size):
            if total is None:
                prelude()
                total = int(doc.get("total") or 0)
                shown = total if limit is None else min(total, limit)
                if fmt != "table" and shown > page_size and (to_file or not stream.isatty()):
                    bar = click.progressbar(length=shown, label="Exporting events", file=sys.stderr)
                    bar.__enter__()
            events = doc["events"]
            # A page at a time: the csv module's loop, and one write of a page's JSON.
            if fmt == "csv" and writer is not None:
                writer.writerows(map(_csv_row, events))
            elif fmt == "json":
                if events:
                    stream.write(
                        ("," if written else "") + "\n" + ",\n".join(map(event_json, events))
                    )
            else:
                rows_for_table.extend(events)
            written += len(events)
            bar.update(len(events))
    finally:
        bar.__exit__(None, None, None)
    if fmt == "json":
        stream.write("\n]\n")
    elif fmt == "table":
        stream.write(_table(rows_for_table, total or 0) + "\n")


def _table(events: list[dict[str, Any]], total: int) -> str:
    if not events:
        return "No events match."
    # as wide as the page's longest type (application.code_reissued is 25 characters):
    # a fixed 21 pushed that row's USCC, serial and subject out of their columns
    wide = max(21, *(len(ev["type"]) for ev in events))
    lines = [f"{'IDX':>6} {'TIME (UTC)':<19} {'TYPE':<{wide}} {'USCC':<18} {'SERIAL':<12} SUBJECT"]
    for ev in events:
        lines.append(
            f"{ev['log_index']:>6} {ev['time'][:19].replace('T', ' '):<19} {ev['type']:<{wide}} "
            f"{ev['uscc'] or '-':<18} {(ev['serial'] or '-')[:12]:<12} {ev['subject'] or ''}"
        )
    if total > len(events):
        lines.append(f"({len(events)} of {total} events; --limit, or --format csv to export all)")
    return "\n".join(lines)


@audit.command("verify")
@signer_options
@state_options
@click.option(
    "--since",
    "since_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A signed checkpoint (a file: another auditor's) the log must have grown from, "
    "checked besides the state's.",
)
@click.option(
    "--full",
    is_flag=True,
    help="Also download every entry, recompute the root, and cross-check the CA's "
    "certificate listings with the logged issuances (needs an auditor's or an RA "
    "officer's certificate).",
)
@click.option(
    "--events",
    is_flag=True,
    help="With --full: also check that the CA's event records still say what the log "
    "recorded (slower: the server re-encodes every event).",
)
@json_option
@click.pass_obj
def audit_verify(
    obj: Any,
    cert_file: Path | None,
    key_file: Path | None,
    passphrase_file: Path | None,
    state_file: Path | None,
    log_key: str | None,
    root_cert: x509.Certificate | None,
    since_file: Path | None,
    full: bool,
    events: bool,
    as_json: bool,
) -> None:
    """Verify the log: signed checkpoint, only grown since last time, (--full) every entry.

    Exits non-zero, naming the first entry or checkpoint that breaks, when the log was
    changed, truncated, reordered or forked. The checkpoint verified is kept in the state
    file for next time only when every check passed. After the log's key was rotated
    (ROTATE-LOG-KEY), the key the state pins is followed to the new one through the log's
    hand-over checkpoint, which both keys signed.

    \b
      eport audit verify --log-key log.pub      (the first time: pin the ceremony's key)
      eport audit verify --full
    """
    if events and not full:  # it checked nothing, and said nothing of it
        raise click.UsageError("--events checks the event records during --full: give both")
    started = time.perf_counter()
    client = _client(obj, cert_file, key_file, passphrase_file)
    state_path = state_file or default_state_path(client.server)
    state = State.load(state_path)
    note = client.get(f"{API}/checkpoint").content
    origin = note.split(b"\n", 1)[0].decode("utf-8", "replace")
    key, target, new_key = resolve_key(client, log_key, state, origin, root_cert)
    previous: VerifiedCheckpoint | None = None
    pinned: VerifiedCheckpoint | None = None
    what = ""
    if since_file is not None:
        try:
            previous = auditproof.verify_checkpoint(since_file.read_bytes(), key)
        except NotANoteError as exc:
            # an input slip (another file, an empty one), not a log that failed to verify
            raise click.BadParameter(
                f"{since_file} is not a signed checkpoint ({exc}; one is the text of GET "
                f"{API}/checkpoint)",
                param_hint="'--since'",
            ) from None
        except AuditError as exc:
            raise VerificationFailed(f"--since {since_file}: {exc}") from None
        what = f"the checkpoint in {since_file}"
    if state is not None:
        pinned = verify_note(state.note.encode(), key, f"the checkpoint in {state_path}")
        if previous is None:
            previous, pinned, what = pinned, None, "the checkpoint verified last time"
    # --since is checked besides the state's checkpoint, never instead of it: a log
    # rolled back and grown anew from before the state's checkpoint extends another
    # auditor's older one, and was then saved over the state's, the fork's evidence
    # lost (log tamper probe, session 26)
    if pinned is not None:
        trusted_checkpoint(
            client, note, key, pinned, "the checkpoint verified last time", target, root_cert
        )
    cp, key, hops = trusted_checkpoint(client, note, key, previous, what, target, root_cert)
    result: FullResult | None = None
    if full:
        progress = not as_json
        result, newer, newer_note = verify_full(client, cp, key, events=events, progress=progress)
        if newer_note is not None:
            cp, note = newer, newer_note
    State(str(key), note.decode()).save(state_path, cp, client.server)
    elapsed = time.perf_counter() - started
    data: dict[str, Any] = {
        "ok": True,
        "origin": cp.origin,
        "tree_size": cp.size,
        "root_hash": cp.root_hash.hex(),
        "log_key": str(key),
        "log_key_trusted_on_first_use": new_key,
        "handovers": [h.to_json() for h in hops],
        "previous_size": previous.size if previous else None,
        "state": str(state_path),
        "seconds": round(elapsed, 3),
    }
    lines = [
        f"Checkpoint of {cp.origin}: {cp.size} entries, root {cp.root_hash.hex()}",
        f"  signature: verified with {key}",
        *_handover_lines(hops),
    ]
    if previous is not None:
        grew = cp.size - previous.size
        how = f"grown by {grew}" if grew else "the same tree: nothing added, nothing changed"
        lines.append(f"  consistent with the checkpoint of size {previous.size} ({how})")
    else:
        lines.append("  first verification: no earlier checkpoint to compare with")
    if result is not None:
        data.update(
            entries=result.entries,
            issuances=result.issuances,
            certificates=result.certificates,
            records_checked=result.records_checked,
        )
        lines.append(f"  {result.entries} entries downloaded; their root matches the checkpoint")
        lines.append(
            f"  {result.certificates} certificates in the CA's listings, "
            f"{result.issuances} logged issuances: they agree"
            + (
                " (bytes, owner, profile and status too)"
                if result.records_checked == result.certificates
                else ""
            )
        )
        if events:
            lines.append("  every event record matches its log entry")
    lines.append(f"OK ({elapsed:.2f} s); state saved to {state_path}")
    _emit(as_json, data, "\n".join(lines))


@audit.command("prove")
@click.argument(
    "serial", required=False, callback=lambda ctx, param, value: _serial_option(ctx, param, value)
)
@click.option(
    "--cert",
    "cert_to_prove",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Prove this certificate (PEM or DER): its serial, and its SHA-256 must match.",
)
@click.option(
    "--as-cert",
    "cert_file",
    envvar="EPORT_CERT",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Who asks: the auditor's or enterprise's certificate (env EPORT_CERT).",
)
@click.option(
    "--key",
    "key_file",
    envvar="EPORT_KEY",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Its private key (env EPORT_KEY).",
)
@click.option(
    "--passphrase-file",
    envvar="EPORT_PASSPHRASE_FILE",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the key's passphrase (env EPORT_PASSPHRASE_FILE; else "
    "EPORT_PASSPHRASE, else a prompt).",
)
@state_options
@json_option
@click.pass_obj
def audit_prove(
    obj: Any,
    serial: str | None,
    cert_to_prove: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    passphrase_file: Path | None,
    state_file: Path | None,
    log_key: str | None,
    root_cert: x509.Certificate | None,
    as_json: bool,
) -> None:
    """Print and verify the inclusion proof of certificate SERIAL's issuance entry.

    The proof (RFC 9162 §2.1.3) is checked against the log's latest signed checkpoint,
    which is itself checked against the checkpoint verified last time (state file).

    \b
      eport audit prove 424c0a9c6479f602c14a98659dae2a16
      eport audit prove --cert ./ent/cert.pem       (its serial, and its SHA-256 checked)
    """
    der_sha256: str | None = None
    if cert_to_prove is not None:
        certs = keyfiles.load_certs(cert_to_prove)
        der = certs[0].public_bytes(serialization.Encoding.DER)
        der_sha256 = hashlib.sha256(der).hexdigest()
        from_file = format(certs[0].serial_number, "x")
        if serial and _norm_serial(serial) != from_file:
            raise CLIError(f"SERIAL {serial} is not the serial of {cert_to_prove} ({from_file})")
        serial = from_file
    if not serial:
        raise click.UsageError("give a SERIAL or --cert FILE")
    serial = _norm_serial(serial)
    client = _client(obj, cert_file, key_file, passphrase_file, cert_option="--as-cert")
    state_path = state_file or default_state_path(client.server)
    state = State.load(state_path)
    note = client.get(f"{API}/checkpoint").content
    origin = note.split(b"\n", 1)[0].decode("utf-8", "replace")
    key, target, _ = resolve_key(client, log_key, state, origin, root_cert)
    previous = None
    if state is not None:
        previous = verify_note(state.note.encode(), key, f"the checkpoint in {state_path}")
    what = "the checkpoint verified last time"
    cp, key, hops = trusted_checkpoint(client, note, key, previous, what, target, root_cert)
    doc = client.json(
        f"{API}/proof/inclusion?" + urlencode({"serial": serial, "size": cp.size}), signed=True
    )
    index = int(doc["index"])
    entry = base64.b64decode(doc["entry"], validate=True)
    fields = read_entry(entry, index)
    if canonical(fields) != entry:
        raise VerificationFailed(f"entry {index} is not in canonical form")
    if fields["serial"] != serial or fields["type"] not in ISSUANCE:
        raise VerificationFailed(f"entry {index} is not the issuance of certificate {serial}")
    if der_sha256 is not None and fields["cert_sha256"] != der_sha256:
        raise VerificationFailed(
            f"entry {index} logged certificate {serial} with SHA-256 {fields['cert_sha256']}, "
            f"but {cert_to_prove} has SHA-256 {der_sha256}: not the certificate the CA logged"
        )
    proof = _b64_nodes(doc["proof"])
    leaf = auditproof.leaf_hash(entry)
    try:
        auditproof.verify_inclusion(leaf, index, cp.size, proof, cp.root_hash)
    except AuditError as exc:
        raise VerificationFailed(f"entry {index}: {exc}") from None
    State(str(key), note.decode()).save(state_path, cp, client.server)
    data = {
        "ok": True,
        "serial": serial,
        "log_index": index,
        "tree_size": cp.size,
        "root_hash": cp.root_hash.hex(),
        "leaf_hash": leaf.hex(),
        "proof": [n.hex() for n in proof],
        "entry": fields,
        "checkpoint": note.decode(),
        "handovers": [h.to_json() for h in hops],
    }
    lines = [
        f"Certificate {serial}: {fields['type']} at {fields['time']}",
        f"  subject: {fields['subject']}",
        f"  USCC: {fields['uscc'] or '-'}   profile: {fields['profile']}   "
        f"issuer: {fields['issuer']}",
        f"  certificate SHA-256: {fields['cert_sha256']}"
        + ("  (matches the file)" if der_sha256 else ""),
        f"Log entry {index} of {cp.size}; leaf hash {leaf.hex()}",
        f"Inclusion proof ({len(proof)} nodes, RFC 9162 §2.1.3):",
        *[f"  {n.hex()}" for n in proof],
        f"Verified against the checkpoint of size {cp.size}, root {cp.root_hash.hex()}, "
        f"signed by {key.name}+{key.key_id.hex()}.",
        *_handover_lines(hops),
    ]
    _emit(as_json, data, "\n".join(lines))


def _norm_serial(text: str) -> str:
    """A serial as the log writes it: lower-case hexadecimal without leading zeros, from
    the forms people copy (``7E:23:F4…`` of openssl's text, ``0x7e23…``)."""
    cleaned = text.strip().lower().replace(":", "").removeprefix("0x")
    try:
        return format(int(cleaned, 16), "x")
    except ValueError:
        raise CLIError(f"{text!r} is not a hexadecimal serial") from None


def _serial_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A SERIAL argument or --serial: one that cannot be a serial is a usage error (exit
    2, as for eport revoke --serial) before anything is signed or sent."""
    if value is not None:
        hint = param.human_readable_name if isinstance(param, click.Argument) else None
        try:
            digits = _norm_serial(value)
        except CLIError:
            raise click.BadParameter(
                f"{clip(value)} is not a serial in hexadecimal "
                "(like 7e23f4e0bfc6ce42c66b4a4c40acbd99)",
                ctx,
                param,
                param_hint=hint,
            ) from None
        # as eport revoke --serial (cli.options.hex_serial): positive, at most 20 octets
        if digits == "0":
            raise click.BadParameter(
                f"{clip(value)} is not a serial: a serial is positive", ctx, param, hint
            )
        if len(digits) > MAX_SERIAL_DIGITS:
            raise click.BadParameter(
                f"{clip(value)} is not a serial: a serial has at most 20 octets "
                f"({MAX_SERIAL_DIGITS} hexadecimal digits)",
                ctx,
                param,
                hint,
            )
    return value


@audit.command("web-login")
@signer_options
@json_option
@click.pass_obj
def audit_web_login(
    obj: Any,
    cert_file: Path | None,
    key_file: Path | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Print a one-time link (valid 60 s) that opens the web view at /audit/ in a browser.

    The link is made from a request signed with your certificate; opening it sets a
    short session cookie (30 minutes) in that browser. Treat the link as a password.
    It points at the server's public base URL (EPORT_PUBLIC_BASE_URL, e.g. the TLS
    proxy's https address), whichever address this command reached the server by.

    \b
      eport audit web-login --cert auditor.pem --key auditor.key
    """
    client = _client(obj, cert_file, key_file, passphrase_file)
    doc = client.json("/audit/session", signed=True, method="POST")
    _emit(
        as_json,
        doc,
        f"Open this link within {doc['expires_in']} s (once):\n{doc['url']}",
    )
