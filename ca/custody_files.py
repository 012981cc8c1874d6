"""The custody record on disk, beside the hierarchy: ``<data_dir>/ca/custody.json``.

Public (no secret): the custody id, the threshold, each custodian's share
fingerprints and the KEK check values. Its presence marks a hierarchy whose keys are
wrapped by custody KEKs rather than passphrases.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ca.authority import JointCA, dn_string
from ca.custody import CustodyRecord, Purpose
from ca.hierarchy import ca_dir
from ca.records import Event, EventType
from ca.sealing import KekSealer

RECORD_FILE = "custody.json"


def record_path(data_dir: Path) -> Path:
    return ca_dir(data_dir) / RECORD_FILE


def under_custody(data_dir: Path) -> bool:
    return record_path(data_dir).exists()


def load_record(data_dir: Path) -> CustodyRecord:
    return CustodyRecord.from_json(json.loads(record_path(data_dir).read_text()))


def archived_path(data_dir: Path, custody_id: str) -> Path:
    """Where a custody record is kept by id: the one a re-share replaced, or is installing."""
    return ca_dir(data_dir) / f"custody-{custody_id}.json"


def record_bytes(record: CustodyRecord) -> bytes:
    return (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode()


def write_durably(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a temporary file, fsync it, rename it over ``path``, fsync the
    directory: a crash leaves the old file or the new one, never a torn one. ``mode``:
    the file's permissions (default: the umask's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{_TEMPORARY}{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with open(fd, "wb") as fh:
        if mode is not None:
            os.fchmod(fh.fileno(), mode)  # a leftover temporary file keeps its own mode
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    sync_dir(path.parent)


_TEMPORARY = ".tmp-"
""":func:`write_durably`'s temporary file is ``<name>.tmp-<pid>``."""


def leftover_temporaries(directory: Path, names: str) -> list[Path]:
    """The temporary files :func:`write_durably` left in ``directory`` when its process
    was killed before the rename, for the files whose names match the glob ``names``."""
    return sorted(
        p
        for p in Path(directory).glob(names + _TEMPORARY + "*")
        if p.name.rpartition(_TEMPORARY)[2].isdigit()
    )


def remove_durably(path: Path) -> None:
    """Remove ``path`` if it exists, and fsync its directory: the removal survives a
    power loss."""
    path.unlink(missing_ok=True)
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """fsync a directory: a rename or unlink in it survives a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_record(data_dir: Path, record: CustodyRecord) -> None:
    write_durably(record_path(data_dir), record_bytes(record))


def sealers(record: CustodyRecord, keks: dict[Purpose, bytearray]) -> dict[Purpose, KekSealer]:
    return {p: KekSealer(k, record.keys_id, p) for p, k in keks.items()}


def record_custody(ca: JointCA, record: CustodyRecord, root: x509.Certificate, actor: str) -> None:
    """Log the custody set: threshold, custodians and share fingerprints (all public)."""
    with ca.store.transaction() as tx:
        tx.append_event(
            Event(
                type=EventType.CUSTODY_ESTABLISHED,
                at=ca.clock(),
                actor=actor,
                subject=dn_string(root.subject),
                issuer="root",
                serial=root.serial_number,
                cert_sha256=root.fingerprint(hashes.SHA256()).hex(),
                details=public_details(record),
            )
        )


def public_details(record: CustodyRecord) -> dict[str, Any]:
    """The logged facts of a custody set (``custody.established``, ``custody.reshared``):
    its order too, so the log says which record is the newest."""
    return {
        "custody_id": record.custody_id,
        "sequence": record.sequence,
        "threshold": record.threshold,
        "custodians": [
            {
                "member": c.member,
                "custodian": c.custodian,
                "index": c.index,
                "fingerprints": {p.value: c.fingerprints[p] for p in Purpose},
            }
            for c in record.custodians
        ],
    }
