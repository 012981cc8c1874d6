"""Log entries: the canonical bytes of one event in the issuance transparency log, version 1.

Each leaf of the RFC 9162 §2.1 Merkle tree is ``SHA-256(0x00 || entry)`` where
``entry`` is what :func:`encode` returns for one event: a JSON object (RFC 8259)
written in the canonical form of RFC 8785 (JCS) for the values it may hold, so that
one event has exactly one encoding and any JSON library can read it:

* UTF-8, no byte order mark, no insignificant white space;
* object members sorted by key (code point order; every key of v1 is ASCII);
* strings escaped as ECMAScript ``JSON.stringify`` does (``\\"``, ``\\\\``, ``\\b``, ``\\f``,
  ``\\n``, ``\\r``, ``\\t``, other controls as ``\\u00xx`` lower-case, nothing else);
* integers only, in the I-JSON safe range ``|n| <= 2**53 - 1``; no floating point;
* every member of the table below present, ``null`` where an event has no value.

======================  ========================================================
member                  value
======================  ========================================================
``v``                   ``1``, the version of this layout
``event_id``            the CA's event number (the events table's key)
``type``                :class:`ca.records.EventType` value, e.g. ``certificate.issued``
``time``                UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always six fraction digits)
``actor``               who acted: ``<profile>:<serial hex>`` of the signing certificate,
                        ``enrollment-code``, ``anonymous`` or ``ceremony:<name>``
``uscc``                subject's Unified Social Credit Code (GB 32100-2015) or null
``subject``             subject name (RFC 4514 DN of a certificate, or the applicant's name)
``profile``             certificate profile
``issuer``              issuing CA id (``root`` for CA certificates)
``serial``              certificate serial, lower-case hex without leading zeros
``cert_sha256``         SHA-256 of the certificate DER, lower-case hex
``application_id``      the RA application
``details``             an object of further facts (reasons, officer, previous serial…)
======================  ========================================================

An entry is at most 65,535 bytes: entry bundles length-prefix each entry with a
big-endian uint16, as C2SP tlog-tiles entry bundles do. The layout is documented,
with a test vector, in ``docs/log-format.md``; a later layout gets a new ``v``.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ca.errors import BadRequest

__all__ = [
    "MAX_ENTRY_SIZE",
    "VERSION",
    "EntryFormatError",
    "LogEntry",
    "decode",
    "encode",
    "format_time",
]

VERSION = 1
"""The layout :func:`encode` writes."""

MAX_ENTRY_SIZE = 0xFFFF
"""Entries are length-prefixed by a uint16 in entry bundles."""

_SAFE_INTEGER = (1 << 53) - 1
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_HEX = re.compile(r"[0-9a-f]+")
_KEYS = frozenset(
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
_OPTIONAL_TEXT = ("uscc", "subject", "profile", "issuer", "application_id")


class EntryFormatError(BadRequest):
    """Bytes that are not a canonical v1 log entry, or an event v1 cannot hold."""

    slug = "log-entry-format"
    title = "Not a canonical log entry"


def format_time(at: datetime.datetime) -> str:
    """``at`` in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (RFC 3339, fixed width)."""
    if at.tzinfo is None:
        raise EntryFormatError("log entry times must be timezone-aware")
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> datetime.datetime:
    if not _TIME.fullmatch(text):
        raise EntryFormatError(f"time {text[:40]!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    try:
        parsed = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise EntryFormatError(f"time {text!r} is not a valid date and time") from None
    return parsed.replace(tzinfo=datetime.UTC)


def _check_json_value(value: Any, where: str) -> None:
    """Only the JSON values whose canonical form is unambiguous: no floats, safe integers."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > _SAFE_INTEGER:
            raise EntryFormatError(f"{where} is an integer outside the I-JSON safe range")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EntryFormatError(f"{where} has a non-string key")
            _check_json_value(item, f"{where}.{key}")
        return
    raise EntryFormatError(f"{where} is a {type(value).__name__}; v1 entries hold no such value")


@dataclass(frozen=True)
class LogEntry:
    """One event as the log records it (layout v1)."""

    event_id: int
    """The CA's event number."""
    type: str
    """The event type, a :class:`ca.records.EventType` value."""
    time: datetime.datetime
    """When the change happened (UTC, microsecond precision)."""
    actor: str
    """Who acted (officer, subject or ceremony, by certificate where there is one)."""
    uscc: str | None = None
    """The subject enterprise's USCC."""
    subject: str | None = None
    """The subject's name."""
    profile: str | None = None
    """The certificate profile."""
    issuer: str | None = None
    """The issuing CA id."""
    serial: int | None = None
    """The certificate serial number."""
    cert_sha256: str | None = None
    """SHA-256 of the certificate DER, lower-case hex."""
    application_id: str | None = None
    """The RA application the event belongs to."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Further facts, JSON values without floating point."""

    def __post_init__(self) -> None:
        if type(self.event_id) is not int or not 0 <= self.event_id <= _SAFE_INTEGER:
            raise EntryFormatError(f"event id {self.event_id!r} is not a safe non-negative integer")
        if not isinstance(self.type, str) or not self.type:
            raise EntryFormatError("an entry needs an event type")
        if not isinstance(self.actor, str):
            raise EntryFormatError("an entry needs an actor")
        for name in _OPTIONAL_TEXT:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise EntryFormatError(f"{name} must be a string or null")
        if self.serial is not None and (type(self.serial) is not int or self.serial < 0):
            raise EntryFormatError("serial must be a non-negative integer")
        if self.cert_sha256 is not None and (
            len(self.cert_sha256) != 64 or not _HEX.fullmatch(self.cert_sha256)
        ):
            raise EntryFormatError("cert_sha256 must be 64 lower-case hex digits")
        if not isinstance(self.details, Mapping):
            raise EntryFormatError("details must be an object")
        _check_json_value(self.details, "details")
        format_time(self.time)

    def to_json(self) -> dict[str, Any]:
        """The v1 member table, with JSON values (what :func:`encode` serializes)."""
        return {
            "v": VERSION,
            "event_id": self.event_id,
            "type": self.type,
            "time": format_time(self.time),
            "actor": self.actor,
            "uscc": self.uscc,
            "subject": self.subject,
            "profile": self.profile,
            "issuer": self.issuer,
            "serial": format(self.serial, "x") if self.serial is not None else None,
            "cert_sha256": self.cert_sha256,
            "application_id": self.application_id,
            "details": dict(self.details),
        }


def _canonical(value: Mapping[str, Any]) -> bytes:
    # For strings, safe integers, booleans, null, arrays and objects with ASCII keys,
    # this spelling of json.dumps is byte for byte RFC 8785 (JCS).
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def encode(entry: LogEntry) -> bytes:
    """The canonical v1 bytes of ``entry``; raises :class:`EntryFormatError` if too large."""
    try:
        data = _canonical(entry.to_json())
    except UnicodeEncodeError:
        raise EntryFormatError("an entry string holds a lone surrogate (not UTF-8)") from None
    if len(data) > MAX_ENTRY_SIZE:
        raise EntryFormatError(
            f"event {entry.event_id} encodes to {len(data)} bytes; entries hold at most "
            f"{MAX_ENTRY_SIZE}"
        )
    return data


def decode(data: bytes) -> LogEntry:
    """Read a v1 entry; anything but the exact canonical bytes raises EntryFormatError."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EntryFormatError("entry is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise EntryFormatError("entry is not a JSON object")
    if doc.get("v") != VERSION:
        raise EntryFormatError(f"entry version {doc.get('v')!r} is not {VERSION}")
    if set(doc) != _KEYS:
        missing = sorted(_KEYS - set(doc))
        extra = sorted(set(doc) - _KEYS)
        raise EntryFormatError(f"entry members differ from v1 (missing {missing}, extra {extra})")
    serial = doc["serial"]
    if serial is not None and (not isinstance(serial, str) or not _HEX.fullmatch(serial)):
        raise EntryFormatError("serial must be lower-case hex")
    if not isinstance(doc["time"], str):
        raise EntryFormatError("time must be a string")
    entry = LogEntry(
        event_id=doc["event_id"],
        type=doc["type"],
        time=_parse_time(doc["time"]),
        actor=doc["actor"],
        uscc=doc["uscc"],
        subject=doc["subject"],
        profile=doc["profile"],
        issuer=doc["issuer"],
        serial=int(serial, 16) if serial is not None else None,
        cert_sha256=doc["cert_sha256"],
        application_id=doc["application_id"],
        details=doc["details"],
    )
    if encode(entry) != data:
        raise EntryFormatError("entry is not in canonical form")
    return entry
