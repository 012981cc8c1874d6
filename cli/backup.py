"""``eport backup`` and ``eport restore``: one archive of a CA instance, and proof on
restore that its log is what auditors were shown.

The archive format and the database copies are :mod:`ca.backup`. The log checks of a
restore go through the auditor's own verifier (:mod:`cli.auditproof`: RFC 9162 roots,
C2SP signed checkpoints) and :mod:`cli.audit`'s entry reader, not the server's tree
code: the restored entries must rebuild the root of the backup's own checkpoint, and
of the checkpoint last published to auditors (``--checkpoint``) when the backup holds
that many entries.

A token service run apart has a data directory of its own (its database, copies of the
CA's public files, no CA): ``eport backup`` of it makes a token service's archive, which
``eport restore`` puts back only into a token service's directory, with the same safety
rules and no log to prove.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cli import auditproof, options
from cli.audit import handover_step, issuance_of, load_log_key, verifier_from_public_key
from cli.auditproof import AuditError, VerifiedCheckpoint, VerifierKey
from cli.client import CLIError, fetch
from cli.options import json_option, json_text, print_result

if TYPE_CHECKING:  # SQLAlchemy is imported only by the commands that use it
    from sqlalchemy import Connection

    from ca.backup import Archive, BackupResult

data_dir_option = options.data_dir_option(
    "The instance's data directory (env EPORT_DATA_DIR); its databases come from the "
    "same settings as `eport serve` (EPORT_DATABASE_URL, EPORT_AUTH_DATABASE_URL)."
)


def _databases(data_dir: Path, *, for_backup: bool) -> dict[str, str]:
    from authsvc.config import AuthConfig
    from ca.backup import TOKEN_SERVICE, instance_of
    from ca.config import CAConfig

    ca_url = CAConfig.load({"data_dir": data_dir}).sqlalchemy_url
    auth_url = AuthConfig.load({"data_dir": data_dir}).sqlalchemy_url
    if for_backup and instance_of(data_dir) == TOKEN_SERVICE:
        # A token service's own directory: no CA database there, its own one always
        return {"auth": auth_url}
    out = {"ca": ca_url}
    # A CA served without the token service has no auth.db: nothing to back up there.
    if not for_backup or not auth_url.startswith("sqlite") or (data_dir / "auth.db").exists():
        out["auth"] = auth_url
    return out


def _short(digest: bytes | str) -> str:
    text = digest.hex() if isinstance(digest, bytes) else digest
    return text[:16] + "…"


@click.command("backup")
@data_dir_option
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The archive to write (tar.gz, mode 0600; written whole, then renamed).",
)
@click.option(
    "--include-dev",
    is_flag=True,
    help="Also keep DATA_DIR/dev/: development credentials, passphrases in the clear. "
    "Left out by default.",
)
@click.option(
    "--force", is_flag=True, help="Replace an archive already at --out (refused by default)."
)
@json_option
def backup_command(
    data_dir: Path, out: Path, include_dev: bool, force: bool, as_json: bool
) -> None:
    """Back up a CA instance while it runs: databases, sealed keys, public files.

    \b
    SQLite is copied with its online backup API, PostgreSQL with pg_dump in one
    snapshot; keys stay sealed (their bytes are copied, nothing is unwrapped). The
    manifest records the SHA-256 of every member and the log's size, root and latest
    signed checkpoint. Restore with `eport restore --from FILE`. On a token service's
    own data directory (`eport serve --only auth`, no CA there): its database (its
    encrypted token-signing keys, sessions, role grants, OpenID Connect clients) and
    its copies of the CA's public files.

    \b
      eport backup --data-dir /srv/eport --out /backups/eport-2026-11-28.tar.gz
    """
    from ca.backup import (
        TOKEN_SERVICE,
        create_backup,
        refuse_unfinished_restore,
        staging_prefix,
    )

    refuse_unfinished_restore(data_dir)  # before --out is looked at or made
    where = out.parent
    try:
        exists, where_exists = out.exists(), where.exists()
    except OSError as exc:  # a directory that may not be searched, a name too long
        raise CLIError(f"cannot write {out}: {exc.strerror or exc}") from None
    if exists and not force:
        # It may be the last good backup: never replaced by a typo or a rerun.
        raise CLIError(f"{out} exists: choose another --out, or pass --force to replace it")
    # Said before the databases are read, rather than as an OSError after
    if where_exists and not where.is_dir():
        raise CLIError(f"cannot write {out}: {where} is not a directory")
    try:
        where.mkdir(parents=True, exist_ok=True)
        # as the backup will; named as its staging is, so that a backup killed between
        # the two calls leaves what the next one removes (crash probe, session 26)
        os.rmdir(tempfile.mkdtemp(prefix=staging_prefix(out), dir=where))
    except OSError as exc:
        raise CLIError(f"cannot write {out}: {exc.strerror or exc}") from None
    result = create_backup(
        data_dir, _databases(data_dir, for_backup=True), out, include_dev=include_dev
    )
    if result.stale_removed:
        click.echo(
            f"Removed {result.stale_removed} work file(s) left beside {out.name} by an "
            "interrupted backup.",
            err=True,
        )
    m = result.manifest
    log = m["log"]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    files = [name for name in m["members"] if name.startswith("files/")]
    data = {
        "ok": True,
        "archive": str(result.path),
        "bytes": result.bytes,
        "sha256": digest,
        "seconds": round(result.seconds, 3),
        "manifest": {k: v for k, v in m.items() if k != "members"},
        "members": len(m["members"]),
    }
    if m["instance"] == TOKEN_SERVICE:
        data["instance"] = TOKEN_SERVICE
        lines = _token_service_backup_lines(data_dir, result.path, result, m, digest)
        print_result(json_text(data) if as_json else "\n".join(lines))
        return
    data["instance"] = "ca"
    checkpoint = log["checkpoint"]
    cp_size = checkpoint.split("\n")[1] if checkpoint else None
    lines = [
        f"Backed up {data_dir} to {result.path} ({result.bytes / 1e6:.2f} MB, "
        f"{result.seconds:.2f} s)",
        *[
            f"  {name} database ({db['kind']})"
            + (f": the same database as {db['same_as']}" if "same_as" in db else "")
            for name, db in m["databases"].items()
        ],
        f"  {log['certificates']} certificates; log of {log['size']} entries, root "
        f"{_short(log['root_hash'])}; latest signed checkpoint: "
        + (f"size {cp_size}" if cp_size is not None else "none"),
        f"  {len(files)} files of ca/"
        + (" and dev/" if m["includes_dev_credentials"] else "")
        + " (keys copied sealed: nothing was unwrapped)",
        *[f"  left out: {why}" for why in m["excluded"]],
        f"SHA-256 of the archive: {digest}",
    ]
    if m["includes_dev_credentials"]:
        click.secho(
            "WARNING: this archive holds development passphrases in the clear (--include-dev).",
            fg="yellow",
            err=True,
        )
    print_result(json_text(data) if as_json else "\n".join(lines))


def _token_service_backup_lines(
    data_dir: Path, path: Path, result: BackupResult, m: dict[str, Any], digest: str
) -> list[str]:
    """What ``eport backup`` says of a token service's own data directory."""
    (kind,) = (db["kind"] for db in m["databases"].values())
    files = [name for name in m["members"] if name.startswith("files/ca/")]
    return [
        f"Backed up the token service's data directory {data_dir} (a token service's "
        f"backup: no CA there) to {path} ({result.bytes / 1e6:.2f} MB, "
        f"{result.seconds:.2f} s)",
        f"  auth database ({kind}): token-signing keys (encrypted with "
        "EPORT_AUTH_KEY_PASSPHRASE: keep it apart), sessions, role grants, OpenID Connect "
        "clients",
        f"  {len(files)} public files of the CA copied to ca/ (no key: the CA is backed up "
        "on its own host)",
        *[f"  left out: {why}" for why in m["excluded"]],
        f"SHA-256 of the archive: {digest}",
    ]


# -- restore ----------------------------------------------------------------------------


def _archive_log_key(archive: Archive, name: str) -> VerifierKey | None:
    """The archive's current log key, ``files/ca/log.pub``."""
    return _pem_log_key(archive.staging / "files" / "ca" / "log.pub", name)


def _read_handovers(
    conn: Connection | None, read: Callable[[Connection], list[bytes]]
) -> list[bytes] | None:
    from sqlalchemy.exc import SQLAlchemyError

    from ca.backup import BackupError

    if conn is None:
        return None
    try:
        return read(conn)
    except (SQLAlchemyError, ValueError) as exc:
        raise BackupError(
            f"the archive's CA database cannot be read ({type(exc).__name__}); nothing was restored"
        ) from None


def _archive_log_keys(archive: Archive, origin: str) -> list[VerifierKey]:
    """The log's public keys in the archive: ``log.pub`` and the rotated ``log-N.pub``."""
    keys: list[VerifierKey] = []
    ca_files = archive.staging / "files" / "ca"
    for path in sorted(ca_files.glob("log*.pub")):
        key = serialization.load_pem_public_key(path.read_bytes())
        if isinstance(key, Ed25519PublicKey):
            keys.append(verifier_from_public_key(origin, key))
    return keys


def _pem_log_key(path: Path, name: str) -> VerifierKey | None:
    """The Ed25519 log key in the PEM file ``path`` as a verifier key named ``name``; None
    when there is none there."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError):
        return None
    return verifier_from_public_key(name, key) if isinstance(key, Ed25519PublicKey) else None


def _same_key(a: VerifierKey, b: VerifierKey) -> bool:
    return hmac.compare_digest(a.public_key, b.public_key)


def _leads_to(
    start: VerifierKey,
    goal: VerifierKey,
    handovers: list[bytes],
    root: x509.Certificate | None = None,
) -> bool:
    """Whether the log's hand-over checkpoints ``handovers`` (oldest first) lead from the
    key ``start`` to ``goal``, followed as `eport audit verify` follows them
    (:func:`cli.audit.handover_step`): each signed by the key trusted so far, naming one
    successor of the same log, which signed it too. A hand-over that step refuses is not
    followed here: the archive is then refused as of another log, which is the safe side.
    ``root``: the root certificate trusted to vouch for a replacement of a lost log key
    (REPLACE-LOG-KEY): the instance's own, never one read from the archive alone."""
    key = start
    for note in handovers:
        if _same_key(key, goal):
            break
        try:
            # A key read from a PEM file (log.pub, --log-key) carries no name of its own:
            # it is named after the log whose note it checks; its bytes are what is trusted.
            origin = note.split(b"\n", 1)[0].decode("utf-8")
            key = verifier_from_public_key(
                origin, Ed25519PublicKey.from_public_bytes(key.public_key)
            )
            step = handover_step(note, key, root)
        except (ValueError, CLIError):  # a first line that is not UTF-8, a malformed hand-over
            continue  # not one followed
        if step is not None:
            key = step[1]
    return _same_key(key, goal)


@dataclass(frozen=True)
class _Pin:
    """A log key the archive's must be, or hand the log over to: ``--log-key``, the key
    an auditor's state file pins, the key of the instance being replaced."""

    key: VerifierKey
    source: str
    also: tuple[VerifierKey, ...] = ()
    """Older keys of the same log (the instance's rotated ``log-N.pub``)."""


def check_log_key(
    pins: list[_Pin],
    archive_key: VerifierKey | None,
    handovers: list[bytes],
    root: x509.Certificate | None = None,
) -> None:
    """Refuse an archive of another log: its key (``files/ca/log.pub``) must be each pinned
    key, one of its older keys, or reached from it by the hand-overs the archive's log
    holds. Whatever --accept-loss says: it accepts a shorter prefix of the same log only."""
    from ca.backup import BackupError

    for pin in pins:
        if archive_key is None:
            raise BackupError(
                f"this archive is of another log, or damaged: it holds no Ed25519 log key "
                f"(files/ca/log.pub) to compare with {pin.source}; nothing was restored"
            )
        if any(_same_key(k, archive_key) for k in (pin.key, *pin.also)):
            continue
        if _leads_to(pin.key, archive_key, handovers, root):
            continue
        raise BackupError(
            f"this archive is of another CA/log: its log key (files/ca/log.pub, "
            f"{_short(archive_key.public_key)}) is not {pin.source} "
            f"({_short(pin.key.public_key)}), and no hand-over in its log leads from that key "
            "to it; nothing was restored (--accept-loss accepts a shorter backup of the same "
            "log only)"
        )


def _root_of_archive(archive: Archive) -> x509.Certificate:
    from ca.backup import BackupError

    try:
        return x509.load_pem_x509_certificate((archive.staged("files/ca/root.crt")).read_bytes())
    except (OSError, ValueError):
        raise BackupError(
            f"{archive.path} holds no readable root certificate (files/ca/root.crt); nothing "
            "was restored"
        ) from None


def check_same_instance(
    archive: Archive, data_dir: Path, ca_url: str | None, archive_root: x509.Certificate
) -> None:
    """Restoring over an existing instance (--force): the archive's root must be the
    instance's (its ``ca/root.crt``, and the roots its CA database records; a token
    service's directory, ``ca_url`` None, has no CA database)."""
    from ca.backup import BackupError, target_roots

    der = archive_root.public_bytes(serialization.Encoding.DER)
    serial = format(archive_root.serial_number, "x")
    here = data_dir / "ca" / "root.crt"
    theirs: x509.Certificate | None = None
    with contextlib.suppress(OSError, ValueError):
        theirs = x509.load_pem_x509_certificate(here.read_bytes())
    if theirs is not None and theirs.public_bytes(serialization.Encoding.DER) != der:
        raise BackupError(
            f"this archive is of another CA: its root certificate (serial {serial[:16]}…) is "
            f"not the root of the instance in {data_dir} (serial "
            f"{format(theirs.serial_number, 'x')[:16]}…, {here}); nothing was restored, "
            "whatever --accept-loss says (restore it into an empty directory)"
        )
    roots = target_roots(ca_url) if ca_url is not None else {}
    if roots and serial not in roots:
        raise BackupError(
            f"this archive is of another CA: its root certificate (serial {serial[:16]}…) is "
            f"not among the roots the database being replaced records; nothing was "
            "restored, whatever --accept-loss says (restore it into an empty database)"
        )


def _instance_pin(data_dir: Path, name: str) -> _Pin | None:
    """The log key of the instance being replaced, and its older keys."""
    ca_files = data_dir / "ca"
    current = _pem_log_key(ca_files / "log.pub", name)
    if current is None:
        return None
    older = [_pem_log_key(p, name) for p in sorted(ca_files.glob("log-*.pub"))]
    return _Pin(
        current,
        f"the log key of the instance in {data_dir}",
        tuple(k for k in older if k is not None),
    )


def _verify_with(note: bytes, keys: list[VerifierKey], what: str) -> VerifiedCheckpoint:
    from ca.backup import BackupError

    errors: list[str] = []
    for key in keys:
        try:
            return auditproof.verify_checkpoint(note, key)
        except AuditError as exc:
            errors.append(str(exc))
    raise BackupError(
        f"{what} does not verify with the log key"
        + (f": {errors[0]}" if errors else " (no log key to check it with)")
    )


def _read_published(value: str) -> tuple[bytes, str | None]:
    """The published checkpoint note from a URL, a note file or an audit state file; and the
    log key an auditor pinned, when the state file has one."""
    if value.startswith(("http://", "https://")):
        try:
            resp = fetch("GET", value, timeout=30)
        except requests.RequestException as exc:
            raise CLIError(f"cannot fetch the checkpoint at {value}: {exc}") from None
        if resp.status_code != 200:
            raise CLIError(f"cannot fetch the checkpoint at {value}: HTTP {resp.status_code}")
        return resp.content, None
    try:
        blob = Path(value).read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read --checkpoint {value}: {exc.strerror}") from None
    if blob.lstrip().startswith(b"{"):
        try:
            doc = json.loads(blob)
            return str(doc["checkpoint"]).encode(), str(doc["verifier_key"])
        except (ValueError, KeyError, TypeError):
            raise CLIError(f"{value} is not a checkpoint nor an eport audit state file") from None
    return blob, None


def _root_of(leaves: list[bytes], size: int) -> bytes:
    return auditproof.root_from_leaf_hashes(leaves[:size])


def make_log_check(
    archive: Archive,
    backup_cp: VerifiedCheckpoint | None,
    published: VerifiedCheckpoint | None,
    report: dict[str, Any],
    key_check: Callable[[list[bytes]], None] | None = None,
) -> Callable[[Connection], None]:
    """The check :func:`ca.backup.restore` runs on the CA database before it is put in place.

    ``key_check``: the log key check (:func:`check_log_key`) that needs the archive's
    hand-over checkpoints, when they could not be read before (PostgreSQL)."""
    from ca.backup import (
        BackupError,
        check_same_ca,
        iter_certificates,
        iter_log_entries,
        read_handovers,
        read_log_state,
    )

    expected = archive.ca_log

    def check(conn: Connection) -> None:
        # What `eport serve` would refuse afterwards: records and files of two CAs.
        check_same_ca(conn, archive.staged("files/ca/root.crt").read_bytes())
        if key_check is not None:
            key_check(read_handovers(conn))
        state = read_log_state(conn)
        if (state.size, state.root_hash) != (expected.size, expected.root_hash):
            raise BackupError(
                f"the archive's database holds a log of {state.size} entries (root "
                f"{_short(state.root_hash)}), its manifest says {expected.size} "
                f"({_short(expected.root_hash)})"
            )
        leaves: list[bytes] = []
        logged: dict[str, str] = {}
        position: dict[str, int] = {}
        for idx, entry in iter_log_entries(conn):
            if idx != len(leaves):
                raise BackupError(f"log entry {len(leaves)} is missing from the archive")
            leaves.append(auditproof.leaf_hash(entry))
            issued = issuance_of(entry)
            if issued is not None:
                logged[issued[0]] = issued[1]
                position[issued[0]] = idx
        if len(leaves) != expected.size:
            raise BackupError(
                f"the archive holds {len(leaves)} log entries, its log head says {expected.size}"
            )
        root = _root_of(leaves, len(leaves))
        if root != expected.root_hash:
            raise BackupError(
                f"the archive's {len(leaves)} log entries rebuild root {_short(root)}, not the "
                f"log head's {_short(expected.root_hash)}: entries were changed"
            )
        for what, cp in (("the backup's own checkpoint", backup_cp), ("--checkpoint", published)):
            if cp is None or cp.size > len(leaves):
                continue
            if _root_of(leaves, cp.size) != cp.root_hash:
                raise BackupError(
                    f"the first {cp.size} restored log entries do not rebuild the root of "
                    f"{what} (size {cp.size}): the backup's log is not the log that was "
                    "published"
                )
        listed = dict(iter_certificates(conn))
        for serial, digest in sorted(listed.items()):
            if logged.get(serial) != digest:
                raise BackupError(
                    f"certificate {serial} is in the archive's records but its issuance is "
                    "not in its log"
                )
        for serial in sorted(logged.keys() - listed.keys(), key=position.__getitem__):
            raise BackupError(
                f"log entry {position[serial]}: certificate {serial} was logged but is "
                "missing from the archive's records"
            )
        report.update(entries=len(leaves), certificates=len(listed), issuances=len(logged))

    return check


@click.command("restore")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The archive `eport backup` wrote.",
)
@data_dir_option
@click.option(
    "--checkpoint",
    "checkpoint",
    help="The checkpoint last published to auditors: a file holding the signed note "
    "(GET /ca/v1/audit/checkpoint), an `eport audit verify` state file, or a URL.",
)
@click.option(
    "--log-key",
    help="The log's verifier key (or a file with it or the PEM log.pub) to check "
    "--checkpoint with; default: the key pinned in the state file, else the archive's.",
)
@click.option(
    "--accept-loss",
    is_flag=True,
    help="Restore even when --checkpoint is larger than the backup's log (entries logged "
    "after the backup are lost; auditors will see the log shrink). Only a backup of the "
    "same log: another CA's or log's archive is refused all the same.",
)
@click.option("--force", is_flag=True, help="Replace the CA files and databases already there.")
@json_option
def restore_command(
    source: Path,
    data_dir: Path,
    checkpoint: str | None,
    log_key: str | None,
    accept_loss: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Restore a backup into DATA_DIR and its databases, then prove its log.

    \b
    Every member is checked against the manifest's SHA-256 before anything is written.
    The restored log entries must rebuild the root of the backup's checkpoint and, with
    --checkpoint, of the checkpoint last published to auditors; a published checkpoint
    larger than the backup means entries were lost: refused unless --accept-loss. Stop
    the server first; it starts sealed after a restore. A token service's backup (made
    on its own data directory) goes back only into a token service's directory, a CA's
    never into one.

    \b
      eport restore --from /backups/eport-2026-11-28.tar.gz --data-dir /srv/eport \\
          --checkpoint https://eport.example/ca/v1/audit/checkpoint
    """
    from ca.backup import (
        TOKEN_SERVICE,
        BackupError,
        open_archive,
        read_handovers,
        remove_stale_staging,
        restore,
        target_log_size,
    )
    from ca.datalock import held_for_restore
    from ca.hierarchy import public_copy_only

    # Said in one line before anything is read: a directory that cannot be made here
    # (under a file, on /proc) was an OSError from deep inside the restore
    made_in = next(d for d in (data_dir, *data_dir.absolute().parents) if d.exists())
    if not made_in.is_dir():
        raise CLIError(f"cannot restore into {data_dir}: {made_in} is not a directory")
    try:
        # named as a restore's staging, which the next restore of this target removes
        tag = data_dir.resolve().name
        os.rmdir(tempfile.mkdtemp(prefix=f".eport-restore-{tag}-", dir=made_in))
    except OSError as exc:
        raise CLIError(f"cannot restore into {data_dir}: {exc.strerror or exc}") from None
    # This host's servers share the directory's lock for their life; the restore holds
    # it alone throughout, or not at all.
    with held_for_restore(data_dir):
        started = time.perf_counter()
        databases = _databases(data_dir, for_backup=False)
        staging_parent = data_dir.resolve().parent
        tag = data_dir.resolve().name
        if remove_stale_staging(staging_parent, tag):
            click.echo("Removed the staging left by an interrupted restore.", err=True)
        with open_archive(source, staging_parent, tag) as archive:
            if archive.instance == TOKEN_SERVICE:
                given = [
                    option
                    for option, value in (
                        ("--checkpoint", checkpoint),
                        ("--log-key", log_key),
                        ("--accept-loss", accept_loss),
                    )
                    if value
                ]
                if given:
                    raise CLIError(
                        f"{' and '.join(given)}: for a CA's log, and {source} is a token "
                        "service's backup, which holds none; restore it without them"
                    )
                text = _restore_token_service(archive, source, data_dir, databases, force, as_json)
                print_result(text)
                return
            if public_copy_only(data_dir):
                raise BackupError(
                    f"{data_dir} is a token service's data directory (the CA's public files "
                    f"only, no CA key or database) and {source} is a CA's backup: restore it "
                    "into the CA's data directory; nothing was restored"
                )
            log = archive.ca_log
            if "auth" not in archive.manifest["databases"]:
                databases.pop("auth", None)
            shared = archive.manifest["databases"].get("auth", {}).get("same_as") == "ca"
            if shared and databases.get("auth", databases["ca"]) != databases["ca"]:
                # its tables went into the CA database, and the token service's stayed
                # empty: sessions, refresh tokens, role grants and keys lost, said nowhere
                raise CLIError(
                    "the archive holds the token service's tables in the CA's database (one "
                    "database served both when it was made): restore it with "
                    "EPORT_AUTH_DATABASE_URL the same as EPORT_DATABASE_URL"
                )
            origin = (log.checkpoint or b"").split(b"\n", 1)[0].decode("utf-8", "replace")
            published_note, pinned = (
                (None, None) if checkpoint is None else _read_published(checkpoint)
            )
            if published_note is not None and not origin:
                origin = published_note.split(b"\n", 1)[0].decode("utf-8", "replace")
            keys = _archive_log_keys(archive, origin) if origin else []
            backup_cp = None
            if log.checkpoint is not None:
                backup_cp = _verify_with(log.checkpoint, keys, "the backup's checkpoint")
            # The keys the archive's log key must be (or be handed over to): given with
            # --log-key, pinned by an auditor's state file, or the replaced instance's.
            name = origin or "eport-log"
            pins: list[_Pin] = []
            if log_key:
                pins.append(_Pin(load_log_key(log_key, name), "--log-key"))
            if pinned:
                try:
                    pins.append(_Pin(VerifierKey.parse(pinned), "the key pinned in the state file"))
                except AuditError as exc:
                    raise CLIError(
                        f"{checkpoint}: the pinned verifier key is malformed: {exc}"
                    ) from None
            archive_root = _root_of_archive(archive)
            vouching: x509.Certificate | None = None  # a root trusted to vouch (REPLACE-LOG-KEY)
            if force:
                check_same_instance(archive, data_dir, databases["ca"], archive_root)
                vouching = archive_root  # the instance's own root, checked just above
                here = _instance_pin(data_dir, name)
                if here is not None:
                    pins.append(here)
            archive_key = _archive_log_key(archive, name)
            deferred: Callable[[list[bytes]], None] | None = None
            same = archive_key is not None and all(
                any(_same_key(k, archive_key) for k in (p.key, *p.also)) for p in pins
            )
            if pins and not same:  # a hand-over to follow, or another log's archive
                with archive.sqlite_ca_database() as conn:
                    handovers = _read_handovers(conn, read_handovers)
                if handovers is not None:
                    check_log_key(pins, archive_key, handovers, vouching)
                else:  # PostgreSQL: checked on the restored database, before any file
                    pins_now = list(pins)

                    def deferred(found: list[bytes]) -> None:
                        check_log_key(pins_now, archive_key, found, vouching)

            published = None
            key_source = "the archive's log key"
            if published_note is not None:
                trusted = keys
                if log_key:
                    trusted, key_source = [pins[0].key], "--log-key"
                elif pinned:
                    trusted, key_source = [pins[0].key], "the key pinned in the state file"
                published = _verify_with(published_note, trusted, "--checkpoint")
                if backup_cp is not None and published.origin != backup_cp.origin:
                    raise BackupError(
                        f"--checkpoint is of log {published.origin!r}, the backup of "
                        f"{backup_cp.origin!r}"
                    )
            lost = 0
            # The database being replaced knows how far its log got, checkpoint or not.
            current = target_log_size(databases["ca"]) if force else 0
            if current > log.size and (published is None or published.size < current):
                lost = current - log.size
                message = (
                    f"the log in place has {current} entries, the backup's {log.size}: {lost} "
                    f"entries (indices {log.size} to {current - 1}) were logged after this "
                    "backup and would be lost"
                )
                _losing(message, "who saw a larger checkpoint", accept_loss)
            if published is not None and published.size > log.size:
                lost = published.size - log.size
                message = (
                    f"the published checkpoint has {published.size} entries, the backup's log "
                    f"{log.size}: {lost} entries (indices {log.size} to {published.size - 1}) "
                    "were logged after this backup and are not in it"
                )
                _losing(message, "holding that checkpoint", accept_loss)
            report: dict[str, Any] = {}
            result = restore(
                archive,
                data_dir,
                databases,
                force=force,
                check=make_log_check(archive, backup_cp, published, report, deferred),
            )
            manifest = archive.manifest
        elapsed = time.perf_counter() - started
        data: dict[str, Any] = {
            "ok": True,
            "data_dir": str(result.data_dir),
            "files": result.files,
            "databases": result.databases,
            "log_size": log.size,
            "root_hash": log.root_hash.hex(),
            "backup_checkpoint_size": backup_cp.size if backup_cp else None,
            "published_checkpoint_size": published.size if published else None,
            "lost_entries": lost,
            "set_aside": [str(p) for p in result.set_aside],
            "seconds": round(elapsed, 3),
            **report,
        }
        lines = [
            f"Restored {source} (made {manifest['created_at']}) into {result.data_dir} "
            f"({elapsed:.2f} s)",
            *[f"  {name} database: {where}" for name, where in result.databases.items()],
            f"  {result.files} files; keys are still sealed",
            f"  log: {log.size} entries rebuild the root {_short(log.root_hash)}; "
            f"{report['certificates']} certificate records and {report['issuances']} logged "
            "issuances agree",
        ]
        if backup_cp is not None:
            lines.append(f"  the backup's own checkpoint (size {backup_cp.size}) is rebuilt")
        if published is not None and not lost:
            lines.append(
                f"  the published checkpoint (size {published.size}, checked with {key_source}) is "
                f"a prefix of the restored log: nothing it covered was lost or changed"
            )
        elif published is not None:
            lines.append(f"  {lost} entries LOST since the published checkpoint (--accept-loss)")
        elif lost:
            lines.append(f"  {lost} entries LOST that the replaced log held (--accept-loss)")
        else:
            lines.append(
                "  no --checkpoint given: not compared with what auditors were shown "
                "(run `eport audit verify --full --since CHECKPOINT` once the server is up)"
            )
        steps = []
        if result.set_aside:
            lines.append("  what --force replaced is kept, not deleted:")
            lines += [f"    {p}" for p in result.set_aside]
            steps.append(
                "move what --force replaced (above) to the archive kept for five years, "
                "then delete it here (docs/backup.md)"
            )
        if manifest.get("dev_instance") and not manifest.get("includes_dev_credentials"):
            steps.append(
                f"a development instance: its credentials (dev/) are not in backups; copy them "
                f"back to {result.data_dir}/dev/ before `eport serve --dev`"
            )
        if any(where.startswith("postgresql") for where in result.databases.values()):
            steps.append(
                "other hosts of this PostgreSQL database: with their servers stopped, copy "
                f"{result.data_dir}/ca/ over each one's ca/ before it starts again "
                "(docs/backup.md)"
            )
        if manifest.get("custody"):
            steps.append(
                "`eport serve` starts SEALED: M custodians unseal it (`eport ca unseal`, "
                "docs/emergency-plan.md runbook 1)"
            )
        if lost:
            # A ceremony is logged: what was lost after the backup may have been one, and
            # the restored ca/ is as it was before it (emergency-plan probe, session 27: a
            # REVOKE-INTERMEDIATE undone without a word, its issuing CA active again)
            steps.append(
                "the lost entries may hold ceremonies (a REVOKE-INTERMEDIATE, a rotation, a "
                "re-share, ROOT-CRL, REPLACE-LOG-KEY): ca/ is as the backup left it. Ask the "
                "auditors for the lost entries' ceremony.completed events (or the "
                "custodians), and do each again once unsealed, a revocation first; a CRL "
                "signed from now on is numbered above any published before (docs/emergency-"
                "plan.md runbook 4)"
            )
        steps.append(
            "tokens: a token-signing key withdrawn since the backup (`eport auth rotate-keys "
            "--compromised`) is back: withdraw it again (docs/emergency-plan.md runbook 10)"
        )
        steps.append("`eport audit verify --full --since CHECKPOINT` against the restored server")
        data["next"] = steps
        lines += ["Next:", *(f"  {step}" for step in steps)]
        print_result(json_text(data) if as_json else "\n".join(lines))


def _restore_token_service(
    archive: Archive,
    source: Path,
    data_dir: Path,
    databases: dict[str, str],
    force: bool,
    as_json: bool,
) -> str:
    """Restore a token service's backup into ``data_dir`` (held for the restore) and its
    own database; what to print. Never into a CA's directory or database."""
    from ca.backup import BackupError, check_token_service_database, holds_ca, restore

    started = time.perf_counter()
    if holds_ca(data_dir):
        raise BackupError(
            f"{source} is a token service's backup and {data_dir} holds a CA: restore it into "
            "the token service's own data directory (the one `eport serve --only auth` "
            "serves), never a CA's; nothing was restored"
        )
    if databases["auth"] == databases["ca"]:
        raise BackupError(
            f"{source} is a token service's backup and EPORT_AUTH_DATABASE_URL names the CA's "
            "database (EPORT_DATABASE_URL): restore it into the token service's own database; "
            "nothing was restored"
        )
    if force:  # never over the token service of another CA
        check_same_instance(archive, data_dir, None, _root_of_archive(archive))
    result = restore(
        archive,
        data_dir,
        {"auth": databases["auth"]},
        force=force,
        check=check_token_service_database,
    )
    elapsed = time.perf_counter() - started
    manifest = archive.manifest
    steps = []
    lines = [
        f"Restored the token service's backup {source} (made {manifest['created_at']}) into "
        f"{result.data_dir} ({elapsed:.2f} s)",
        *[f"  {name} database: {where}" for name, where in result.databases.items()],
        f"  {result.files} files (the CA's public files in ca/); the token-signing keys are "
        "still encrypted",
    ]
    if result.set_aside:
        lines.append("  what --force replaced is kept, not deleted:")
        lines += [f"    {p}" for p in result.set_aside]
        steps.append("check what --force replaced (above), then delete it here")
    steps += [
        f"`eport serve --only auth --data-dir {result.data_dir}` with the settings it ran "
        "with: EPORT_AUTH_KEY_PASSPHRASE (the keys are encrypted with it), "
        "EPORT_PUBLIC_BASE_URL (the tokens' issuer), EPORT_AUTH_STATUS_MODE=ocsp",
        "if a ceremony ran on the CA since this backup, fetch its public files again: "
        f"`eport --server CA_URL auth fetch-ca --data-dir {result.data_dir}` "
        '(docs/token-service.md, "Running apart")',
    ]
    lines += ["Next:", *(f"  {step}" for step in steps)]
    data: dict[str, Any] = {
        "ok": True,
        "instance": "token-service",
        "data_dir": str(result.data_dir),
        "files": result.files,
        "databases": result.databases,
        "set_aside": [str(p) for p in result.set_aside],
        "seconds": round(elapsed, 3),
        "next": steps,
    }
    return json_text(data) if as_json else "\n".join(lines)


def _losing(message: str, auditors: str, accept_loss: bool) -> None:
    """A restore that would lose logged entries (``message`` says which): refused, or with
    --accept-loss done with a warning. ``auditors`` says which auditors see the log shrink."""
    from ca.backup import BackupError

    if not accept_loss:
        raise BackupError(
            f"{message}; restore a newer backup, or pass --accept-loss (auditors {auditors} "
            "will see the log shrink: tell them)"
        )
    click.secho(f"WARNING: {message}; restoring anyway (--accept-loss)", fg="red", err=True)
