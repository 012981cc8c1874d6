"""The embedded development joint CA, created on the first ``eport serve --dev``.

Everything here is for development only and says so in its file names: the
passphrases that unseal the CA keys and the officers' keys are written in the
clear to ``<data_dir>/dev/DEV-ONLY-passphrases.toml``. Production uses
``eport ca init`` and custodians (M of N).
"""

from __future__ import annotations

import datetime
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ca import hierarchy
from ca.ceremony import initialize
from ca.config import CAConfig
from ca.db import other_ca_records, upgrade
from ca.errors import EPortError
from ca.privatefiles import make_data_dir
from ca.signer import write_private

PASSPHRASE_FILE = "DEV-ONLY-passphrases.toml"
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class DevFiles:
    dev_dir: Path
    passphrases: Path
    officers: dict[str, Path]


def dev_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "dev"


def read_passphrases(data_dir: Path) -> dict[str, str]:
    path = dev_dir(data_dir) / PASSPHRASE_FILE
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    return {k: str(v) for k, v in data.items()}


def new_passphrases(data_dir: Path, member_ids: list[str]) -> dict[str, str]:
    values = {
        "root_key_passphrase": secrets.token_urlsafe(24),
        "ca_key_passphrase": secrets.token_urlsafe(24),
        "auth_key_passphrase": secrets.token_urlsafe(24),
    }
    for mid in member_ids:
        values[f"officer_{mid}"] = secrets.token_urlsafe(18)
    lines = [
        "# DEVELOPMENT ONLY. These passphrases unseal the development CA's keys and the",
        "# development RA officers' keys. A production CA never writes such a file.",
    ]
    lines += [f'{k} = "{v}"' for k, v in values.items()]
    write_private(dev_dir(data_dir) / PASSPHRASE_FILE, ("\n".join(lines) + "\n").encode())
    return values


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def ensure_dev_ca(cfg: CAConfig) -> DevFiles | None:
    """Create the development joint CA on first start; return its files if it was made now."""
    from ca.policy import load_policies

    make_data_dir(Path(cfg.data_dir))
    upgrade(cfg.sqlalchemy_url)
    marker = dev_dir(cfg.data_dir) / COMPLETE_MARKER
    if marker.exists():
        return None
    if hierarchy.exists(cfg.data_dir) and not dev_dir(cfg.data_dir).exists():
        # what a restore leaves (a backup leaves dev/ out): deleting it loses the CA
        raise EPortError(
            f"{cfg.data_dir} holds a CA without its development credentials "
            f"({dev_dir(cfg.data_dir)} is missing): if it was restored from a backup, copy "
            "the instance's dev/ back there first (docs/backup.md); only if a first start "
            "was interrupted before it wrote them, remove the directory and start again"
        )
    if hierarchy.exists(cfg.data_dir) or (dev_dir(cfg.data_dir) / PASSPHRASE_FILE).exists():
        raise EPortError(
            f"{cfg.data_dir} holds an incomplete development CA (an earlier first start "
            "was interrupted); remove that directory and start again"
        )
    refusal = other_ca_records(cfg.sqlalchemy_url)
    if refusal is not None:
        raise EPortError(refusal)
    policies = load_policies(cfg.policies_dir)
    passphrases = new_passphrases(cfg.data_dir, [m.id for m in policies.members.members])
    officer_dir = dev_dir(cfg.data_dir) / "officers"
    done = initialize(
        cfg,
        policies,
        root_passphrase=passphrases["root_key_passphrase"].encode(),
        ca_passphrase=passphrases["ca_key_passphrase"].encode(),
        officer_passphrase=lambda mid: passphrases[f"officer_{mid}"].encode(),
        officer_dir=officer_dir,
        actor="ceremony:dev-init",
        officer_label=" (development)",
        auditor_dir=dev_dir(cfg.data_dir) / "auditors",
    )
    for mid, d in done.officers.items():
        pw = (passphrases[f"officer_{mid}"] + "\n").encode()
        write_private(d / "DEV-ONLY-passphrase.txt", pw)
        write_private(dev_dir(cfg.data_dir) / "auditors" / mid / "DEV-ONLY-passphrase.txt", pw)
    marker.write_text("development joint CA complete\n")
    return DevFiles(
        dev_dir=dev_dir(cfg.data_dir),
        passphrases=dev_dir(cfg.data_dir) / PASSPHRASE_FILE,
        officers=done.officers,
    )
