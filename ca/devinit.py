"""The embedded development joint CA, created on the first ``eport serve --dev``.

Everything here is for development only and says so in its file names: the
passphrases that unseal the CA keys and the officers' keys are written in the
clear to ``<data_dir>/dev/DEV-ONLY-passphrases.toml``. Production uses
``eport ca init`` and custodians (M of N).
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ca import hierarchy, pkcs8
from ca.ceremony import Unwind, initialize
from ca.config import CAConfig
from ca.db import other_ca_records, upgrade
from ca.errors import EPortError
from ca.privatefiles import SIDE_FILES, make_data_dir, sqlite_file
from ca.signer import write_private
from ca.stopping import how_it_ended, stops_unwind

log = logging.getLogger("eport.ca")

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
    """Create the development joint CA on first start; return its files if it was made now.

    One first start at a time per data directory (an ``flock`` on the directory): two
    servers started at once on a fresh directory (two may serve one directory) had the
    second take the first's CA in the making for one a start had left unfinished."""
    data = Path(cfg.data_dir)
    make_data_dir(data)
    fd = os.open(data, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another first start: wait for it, then use its CA
        with stops_unwind():  # SIGTERM or SIGHUP then unwinds a first start, as Ctrl-C does
            return _ensure_dev_ca(cfg)
    finally:
        os.close(fd)  # and the lock with it


def _refuse_after_interrupted_restore(data: Path) -> None:
    """A restore into a new directory killed before it placed anything leaves only its
    staging beside the directory (``ca.backup.open_archive``): a first start there made a
    new, different CA where the restored one was to be."""
    if hierarchy.exists(data):
        return
    from ca.backup import stale_staging

    where = data.resolve()
    left = stale_staging(where.parent, where.name)
    if left:
        raise EPortError(
            f"an interrupted restore into {data} left {left[0]}: run the same eport restore "
            "again (it removes what was left); to make a new development CA here instead, "
            "remove that directory first"
        )


def _ensure_dev_ca(cfg: CAConfig) -> DevFiles | None:
    from ca.policy import load_policies

    # Taken before anything is made: what a first start that fails or is interrupted
    # before it completes removes (only what it made), so that the next start makes the
    # CA afresh. kill -9 leaves ca/init.unfinished, which the next start names.
    unwind = _first_start_unwind(cfg)
    _refuse_after_interrupted_restore(Path(cfg.data_dir))
    make_data_dir(Path(cfg.data_dir))
    upgrade(cfg.sqlalchemy_url)
    marker = dev_dir(cfg.data_dir) / COMPLETE_MARKER
    advice = hierarchy.unfinished_init_advice(cfg.data_dir)
    if advice is not None:
        raise EPortError(advice)
    if marker.exists():
        _renew_root_crl(cfg)
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
    try:
        hierarchy.begin_init(cfg.data_dir, "eport serve --dev")
        passphrases = new_passphrases(cfg.data_dir, [m.id for m in policies.members.members])
        officer_dir = dev_dir(cfg.data_dir) / "officers"
        with pkcs8.passphrase_beside_key():
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
                command="eport serve --dev",
                finish=False,
            )
        for mid, d in done.officers.items():
            pw = (passphrases[f"officer_{mid}"] + "\n").encode()
            write_private(d / "DEV-ONLY-passphrase.txt", pw)
            write_private(dev_dir(cfg.data_dir) / "auditors" / mid / "DEV-ONLY-passphrase.txt", pw)
        write_private(marker, b"development joint CA complete\n")
        hierarchy.finish_init(cfg.data_dir)  # the last step: from here on the CA is complete
    except BaseException as exc:
        said = _unwind_first_start(unwind, exc, cfg)
        if said is not None and isinstance(exc, KeyboardInterrupt):
            raise EPortError(said) from None  # the one line of a Ctrl-C
        if said is not None:
            log.warning("%s", said)  # the error itself follows
        raise
    return DevFiles(
        dev_dir=dev_dir(cfg.data_dir),
        passphrases=dev_dir(cfg.data_dir) / PASSPHRASE_FILE,
        officers=done.officers,
    )


def _renew_root_crl(cfg: CAConfig) -> None:
    """A development CA's root CRL, signed again at start once it is within
    :data:`~ca.hierarchy.ROOT_CRL_NOTICE` of its nextUpdate or past it, or its thisUpdate
    is in the future (the clock was ahead when it was signed). A production CA's
    is renewed by a quorum ROOT-CRL ceremony; a development CA has no custodians, and its
    root key's passphrase is in the development file, so nothing else would ever renew it
    and every chain check against the root CRL failed a year after the first start. Same
    number rule and database record as the ceremony (:func:`ca.root_ops.next_root_crl`);
    the file is written before the transaction commits (a crash between leaves a CRL the
    next number goes past)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from sqlalchemy.orm import sessionmaker

    from ca.custody_files import write_durably
    from ca.db import make_engine
    from ca.issuance import IssuingCA
    from ca.root_ops import next_root_crl
    from ca.signer import SoftwareSigner
    from ca.store import SqlStore

    d = hierarchy.ca_dir(cfg.data_dir)
    now = now_utc().replace(microsecond=0)
    current = (d / "root.crl").read_bytes()
    if hierarchy.root_crl_notice(current, now) is None:
        return
    signed, ended = hierarchy.root_crl_times(current)
    passphrase = read_passphrases(cfg.data_dir)["root_key_passphrase"].encode()
    key = serialization.load_pem_private_key((d / "root.key").read_bytes(), passphrase)
    root = IssuingCA(
        "root",
        x509.load_pem_x509_certificate((d / "root.crt").read_bytes()),
        SoftwareSigner(key),  # type: ignore[arg-type]  # the root's P-384 key
    )
    engine = make_engine(cfg.sqlalchemy_url)
    try:
        store = SqlStore(sessionmaker(engine, expire_on_commit=False))
        with store.transaction() as tx:
            der, number, _ = next_root_crl(tx, root, Path(cfg.data_dir), now)
            write_durably(d / "root.crl", der, 0o644)
    finally:
        engine.dispose()
    if signed > now:
        why = f"its thisUpdate {signed:%Y-%m-%dT%H:%M:%SZ} was in the future"
    elif ended is not None and ended <= now:
        why = f"it ended at {ended:%Y-%m-%dT%H:%M:%SZ}"
    else:
        why = f"it was to end at {ended:%Y-%m-%dT%H:%M:%SZ}" if ended else "it had no end"
    until = hierarchy.root_crl_next_update(der)
    log.warning(
        "Renewed the development CA's root CRL (%s): number %d, next update %s",
        why,
        number,
        f"{until:%Y-%m-%dT%H:%M:%SZ}" if until is not None else "none",
    )


def _first_start_unwind(cfg: CAConfig) -> Unwind:
    """What a first start is about to make that is not there yet: ca/, dev/, and the
    CA's SQLite database (the data directory itself is the server's: it holds its lock)."""
    database = sqlite_file(cfg.sqlalchemy_url)
    databases = [] if database is None else [database]
    databases += [database.with_name(database.name + s) for s in SIDE_FILES] if database else []
    return Unwind.of(hierarchy.ca_dir(cfg.data_dir), dev_dir(cfg.data_dir), *databases)


def _unwind_first_start(unwind: Unwind, exc: BaseException, cfg: CAConfig) -> str | None:
    """After a first start failed or was interrupted before its CA was complete: remove
    what it made; what to say about it, in one line (and what is left to do, if any)."""
    removed = unwind.remove()
    what = how_it_ended(exc)
    advice = hierarchy.unfinished_init_advice(cfg.data_dir)
    if advice is None and other_ca_records(cfg.sqlalchemy_url) is not None:
        advice = (
            "its records stay in the database: start again with an empty one (EPORT_DATABASE_URL)"
        )
    if advice is None and not removed:
        return None
    gone = f"removed what it had made ({', '.join(str(p) for p in removed)})" if removed else ""
    rest = advice or "the next start makes the development CA afresh"
    return f"the development CA's first start {what}: {'; '.join(x for x in (gone, rest) if x)}"
