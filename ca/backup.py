"""Consistent online backups of a CA instance, and their restore.

A backup is one gzip-compressed tar archive (``eport backup``):

* ``manifest.json`` first: the format and its version, when it was made, each
  database's kind, the SHA-256, size and mode of every other member, and the
  transparency log as the backed-up database holds it (tree size, root hash, the
  latest signed checkpoint);
* ``db/ca.sqlite`` or ``db/ca.pgdump``, and ``db/auth.*`` for the token service's
  own database (its signing keys, encrypted, live there);
* ``files/ca/…``: the hierarchy's certificates, its **sealed** keys (copied byte for
  byte: nothing is ever unwrapped), the custody record, the root CRL, the log's
  public keys;
* ``files/dev/…`` only when asked for: the development credentials of an
  ``eport serve --dev`` instance hold passphrases in the clear.

A token service run apart (``eport serve --only auth``) has a data directory of its own
with no CA in it (:func:`ca.hierarchy.public_copy_only`): its backup (``"instance":
"token-service"`` in the manifest) holds its own database as ``db/auth.*`` (token-signing
keys, encrypted; sessions; role grants; OpenID Connect clients), the copies of the CA's
public files as ``files/ca/…``, and no log. Such an archive is restored only into a token
service's directory, and a CA's archive never into one.

Consistency while the server runs. SQLite is copied with its online backup API
(``sqlite3_backup_step(-1)``: one read transaction, so one snapshot, while writers
go on under WAL). PostgreSQL is dumped by ``pg_dump`` inside a snapshot this module
exports (``pg_export_snapshot()``, ``pg_dump --snapshot``), and the log facts of the
manifest are read in that same snapshot. Key files change only in ceremonies; they are
read before and after the database copy, and the copy is redone if they changed.

Restore (``eport restore``) checks every member against the manifest before writing
anything, refuses a non-empty target unless forced, and calls back a log check on the
database it is about to put in place (SQLite: the staged copy, before any write;
PostgreSQL: the restored database, before any file is placed).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import glob
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ca import hierarchy, translog
from ca.datalock import LOCK_NAME, RESTORE_MARKER
from ca.errors import EPortError
from ca.merkle import EMPTY_ROOT

__all__ = [
    "CA",
    "FORMAT",
    "TOKEN_SERVICE",
    "VERSION",
    "Archive",
    "BackupError",
    "BackupResult",
    "LogState",
    "RestoreResult",
    "check_same_ca",
    "check_token_service_database",
    "create_backup",
    "holds_ca",
    "instance_of",
    "iter_certificates",
    "iter_log_entries",
    "open_archive",
    "read_handovers",
    "read_log_state",
    "refuse_unfinished_restore",
    "restore",
    "root_records",
    "target_roots",
]

FORMAT = "eport-backup"
VERSION = 1
MANIFEST = "manifest.json"

CA = "ca"
"""The manifest's ``instance`` of a CA's data directory (an archive without one is a CA's:
archives made before token services were backed up)."""
TOKEN_SERVICE = "token-service"
"""The manifest's ``instance`` of a token service's own data directory: its database and
the copies of the CA's public files, no CA (:func:`ca.hierarchy.public_copy_only`)."""
INSTANCES = (CA, TOKEN_SERVICE)


def instance_of(data_dir: Path) -> str:
    """What the data directory ``data_dir`` is: :data:`TOKEN_SERVICE` when it holds the
    CA's public files and nothing of a CA (what ``eport serve --only auth`` serves on a
    host of its own), else :data:`CA`."""
    return TOKEN_SERVICE if hierarchy.public_copy_only(Path(data_dir)) else CA


def holds_ca(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds a CA (its files, or its embedded database): a token
    service's archive is never restored there."""
    data_dir = Path(data_dir)
    return (hierarchy.exists(data_dir) and not hierarchy.public_copy_only(data_dir)) or (
        data_dir / "eport.db"
    ).exists()


EXCLUDED_CA_FILES = {
    "audit-web.secret": "the web view's session key, in the clear; a new one is made on "
    "first use (open web sessions end)",
}
"""Files of ``<data_dir>/ca/`` left out of every backup, and why."""

_SKIPPED = re.compile(r"(\.tmp|\.tmp-[0-9]+|\.new|\.lock)$")
"""Work files of an operation in progress (atomic writes, ``write_durably``'s
``<name>.tmp-<pid>``, also a failed ceremony's restore's (:mod:`ca.ceremony_files`),
responder renewal). A ceremony's journal is kept: restored with the database, it makes
the files agree with it at the next start."""

_MEMBER = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_ATTEMPTS = 3
_CHUNK = 1 << 20


class BackupError(EPortError):
    """A backup cannot be made, or an archive cannot be restored; nothing was changed."""

    status = 400
    slug = "backup"
    title = "Backup or restore refused"


@dataclass(frozen=True)
class LogState:
    """The transparency log as one database snapshot holds it."""

    size: int
    root_hash: bytes
    checkpoint: bytes | None
    """The latest signed checkpoint stored (C2SP signed note), if any."""
    certificates: int

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root_hash": self.root_hash.hex(),
            "checkpoint": self.checkpoint.decode("utf-8") if self.checkpoint else None,
            "certificates": self.certificates,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LogState:
        note = doc.get("checkpoint")
        return cls(
            size=int(doc["size"]),
            root_hash=bytes.fromhex(str(doc["root_hash"])),
            checkpoint=note.encode("utf-8") if isinstance(note, str) else None,
            certificates=int(doc["certificates"]),
        )


# -- reading a database snapshot ---------------------------------------------------------


def read_log_state(conn: Connection) -> LogState:
    """Head, latest checkpoint and certificate count, in ``conn``'s transaction.

    The head's root is recomputed from the stored perfect subtrees (``O(log n)``), as
    the server does before it signs: a snapshot whose head disagrees with its tree
    storage is refused.
    """
    head = conn.execute(text("SELECT size, root_hash FROM log_head WHERE id = 1")).first()
    size, root = (0, EMPTY_ROOT) if head is None else (int(head[0]), bytes(head[1]))
    if size:
        with Session(bind=conn) as session:
            stored = translog.tree_at(session, size).root(size)
        if stored != root:
            raise BackupError(
                f"the log head says root {root.hex()} for {size} entries, but its stored "
                f"subtrees give {stored.hex()}: the log storage is damaged"
            )
    note = conn.execute(text("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1")).scalar()
    count = conn.execute(text("SELECT count(*) FROM certificates")).scalar_one()
    return LogState(size, root, bytes(note) if note is not None else None, int(count))


def iter_log_entries(conn: Connection, chunk: int = 20000) -> Iterator[tuple[int, bytes]]:
    """``(index, entry bytes)`` of every stored log entry, in index order, in chunks."""
    after = -1
    while True:
        rows = conn.execute(
            text("SELECT idx, entry FROM log_entries WHERE idx > :after ORDER BY idx LIMIT :n"),
            {"after": after, "n": chunk},
        ).all()
        if not rows:
            return
        for idx, entry in rows:
            yield int(idx), bytes(entry)
        after = int(rows[-1][0])


def read_handovers(conn: Connection) -> list[bytes]:
    """The log's hand-over checkpoints (signed notes) the database holds, oldest first:
    each ``ROTATE-LOG-KEY`` signed one with the retiring key and its successor
    (:func:`ca.translog.handovers`). Verified by the caller, with the auditor's code."""
    with Session(bind=conn) as session:
        return [bytes(head.note) for head in translog.handovers(session)]


def root_records(conn: Connection) -> dict[str, str]:
    """``serial hex → SHA-256 hex`` of the root certificates the CA database records
    (what ``eport serve`` compares with ``ca/root.crt``, :func:`ca.db.foreign_root`)."""
    rows = conn.execute(
        text("SELECT serial, cert_sha256 FROM certificates WHERE profile = 'root'")
    ).all()
    return {str(serial).lower(): str(digest).lower() for serial, digest in rows}


def check_same_ca(conn: Connection, root_pem: bytes) -> None:
    """The CA database in ``conn`` must hold the records of the CA whose root is
    ``root_pem`` (the archive's ``files/ca/root.crt``): the check ``eport serve`` makes
    (:func:`ca.db.foreign_root`: the root is among the roots the database records), and
    its record of the hierarchy's files (:mod:`ca.crosshost`), when it has one, names
    that same ``root.crt``. Raises :class:`BackupError`."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        root = x509.load_pem_x509_certificate(root_pem)
    except ValueError:
        raise BackupError("the archive's files/ca/root.crt is not a certificate") from None
    serial = format(root.serial_number, "x")
    digest = hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest()
    roots = root_records(conn)
    recorded = None
    if inspect(conn).has_table("hierarchy_files"):
        recorded = conn.execute(
            text("SELECT sha256 FROM hierarchy_files WHERE path = 'root.crt'")
        ).scalar()
    if (roots and roots.get(serial) != digest) or (
        recorded is not None and str(recorded) != hashlib.sha256(root_pem).hexdigest()
    ):
        raise BackupError(
            "the archive's database holds the records of another CA (its root is not the "
            "one in files/ca/root.crt): its database and ca/ files come from different "
            "CAs; nothing was restored"
        )


def check_token_service_database(conn: Connection) -> None:
    """The database in ``conn`` (a token service's archive's, about to be put in place)
    must be an eport token service's: it has the table of its token-signing keys. Raises
    :class:`BackupError`."""
    if not inspect(conn).has_table("auth_signing_keys"):
        raise BackupError(
            "the archive's token service database has no token-signing keys table "
            "(auth_signing_keys): it is not an eport token service's database; nothing was "
            "restored"
        )


def iter_certificates(conn: Connection) -> Iterator[tuple[str, str]]:
    """``(serial hex, SHA-256 hex of the DER)`` of every certificate record."""
    for serial, digest in conn.execute(text("SELECT serial, cert_sha256 FROM certificates")):
        yield str(serial), str(digest)


# -- database kinds --------------------------------------------------------------------


def _kind(url: str) -> str:
    backend = make_url(url).get_backend_name()
    if backend in ("sqlite", "postgresql"):
        return backend
    raise BackupError(f"cannot back up a {backend} database (SQLite and PostgreSQL only)")


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"{url} is not a SQLite database file")
    return Path(database)


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URI for the PostgreSQL tools, and their environment.

    The password travels in ``PGPASSWORD``, never on a command line.
    """
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    # URL.set(password=None) leaves the password as it is (None means "unchanged"), which
    # put it on pg_dump's and pg_restore's command lines, for ps to show (crash probe, s26)
    bare = parsed._replace(drivername="postgresql", password=None)
    uri = bare.render_as_string(hide_password=False)
    return uri, env


def pg_tool(name: str) -> str:
    """``pg_dump``/``pg_restore``: ``$EPORT_PG_BIN``, else the newest Debian
    ``/usr/lib/postgresql/N/bin``, else ``PATH``. A newer client reads older servers."""
    override = os.environ.get("EPORT_PG_BIN")
    candidates = [str(Path(override) / name)] if override else []

    def major(path: str) -> int:
        match = re.search(r"/postgresql/(\d+)/bin/", path)
        return int(match.group(1)) if match else 0

    candidates += sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=major, reverse=True)
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found:
        return found
    raise BackupError(f"{name} is not installed (PostgreSQL client tools; or set EPORT_PG_BIN)")


def _run_pg(args: list[str], env: dict[str, str], what: str) -> None:
    res = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
        raise BackupError(f"{what} failed: {lines[0] if lines else f'exit {res.returncode}'}")


# -- making a backup --------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    data: bytes
    mode: int


def _snapshot_files(data_dir: Path, include_dev: bool) -> dict[str, _File]:
    """The member name (``files/…``) and bytes of every file to keep, read now."""
    out: dict[str, _File] = {}
    roots = ["ca", "dev"] if include_dev else ["ca"]
    for top in roots:
        base = data_dir / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(data_dir).as_posix()
            if path.is_symlink() or not path.is_file() or _SKIPPED.search(path.name):
                continue
            if top == "ca" and path.relative_to(base).as_posix() in EXCLUDED_CA_FILES:
                continue
            if not _MEMBER.fullmatch(rel):
                raise BackupError(f"cannot back up {path}: unexpected characters in its name")
            out["files/" + rel] = _File(path.read_bytes(), path.stat().st_mode & 0o777)
    return out


def _digests(files: Mapping[str, _File]) -> dict[str, str]:
    return {name: hashlib.sha256(f.data).hexdigest() for name, f in files.items()}


def _backup_sqlite(source: Path, staged: Path) -> None:
    if not source.is_file():
        raise BackupError(f"the database {source} does not exist")
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(staged)
    try:
        # pages=-1 (the default): the whole copy is one step under one read
        # transaction, i.e. one snapshot, while the server's writers go on (WAL).
        src.backup(dst)
        # The copy is a single self-contained file; the server sets WAL again on open.
        dst.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            # the copy's side is full (the source only reads): name it, not the source
            raise BackupError(
                f"cannot copy the database {source}: the disk the backup is written to is "
                "full (the source is only read); free space there, or give --out on another "
                "disk, and run it again"
            ) from None
        raise BackupError(f"cannot copy the database {source}: {exc}") from None
    finally:
        dst.close()
        src.close()


@contextlib.contextmanager
def _read_sqlite(path: Path) -> Iterator[Connection]:
    engine = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _dump_postgres(url: str, staged: Path, read_log: bool) -> LogState | None:
    """``pg_dump`` (custom format) in a snapshot exported by a transaction that also
    reads the log facts, so the manifest describes exactly the dumped data."""
    uri, env = _libpq(url)
    tool = pg_tool("pg_dump")
    engine = create_engine(url)
    state: LogState | None = None
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
                state = read_log_state(conn) if read_log else None
                _run_pg(
                    [
                        tool,
                        "--format=custom",
                        "--no-owner",
                        "--no-privileges",
                        f"--snapshot={snapshot}",
                        f"--file={staged}",
                        f"--dbname={uri}",
                    ],
                    env,
                    "pg_dump",
                )
    finally:
        engine.dispose()
    return state


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: dict[str, Any]
    bytes: int
    seconds: float
    stale_removed: int = 0
    """Work files of killed backups to the same ``out`` removed first."""


_TMP_SUFFIX = ".tmp"


def staging_prefix(out: Path, pid: int | None = None) -> str:
    return f".eport-backup-{out.name}.{os.getpid() if pid is None else pid}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_backup_work(out: Path) -> int:
    """Remove what backups to ``out`` killed before their rename left beside it: the
    unfinished archive ``.<name>.<pid>.tmp`` (never the final name, so never taken for a
    backup, but as large as one) and the staging directory with its database copies.
    Only those of processes no longer running; the number removed."""
    removed = 0
    name = out.name
    for path in out.parent.glob(f".{glob.escape(name)}.*{_TMP_SUFFIX}"):
        pid = path.name[len(name) + 2 : -len(_TMP_SUFFIX)]
        if pid.isdigit() and not _alive(int(pid)) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    prefix = staging_prefix(out, 0)[: -len("0-")]
    for path in out.parent.glob(f"{glob.escape(prefix)}*-*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _add(tar: tarfile.TarFile, name: str, size: int, mode: int, mtime: int, fh: IO[bytes]) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = mtime
    tar.addfile(info, fh)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def refuse_unfinished_restore(data_dir: Path) -> None:
    """A data directory whose restore did not finish (``restore.incomplete``) may hold a
    new database beside old ``ca/`` files: ``eport serve`` refuses it, and so does a
    backup (it would become "the last good backup")."""
    marker = Path(data_dir) / RESTORE_MARKER
    if marker.exists():
        raise BackupError(
            f"a restore into {data_dir} did not finish ({marker} is there): its files and "
            "databases may be of two backups; finish it with `eport restore --from ARCHIVE "
            f"--data-dir {data_dir} --force` before backing it up; nothing was written"
        )


def create_backup(
    data_dir: Path,
    databases: Mapping[str, str],
    out: Path,
    *,
    include_dev: bool = False,
    clock: Callable[[], datetime.datetime] | None = None,
) -> BackupResult:
    """Back up the instance in ``data_dir`` whose databases are ``{"ca": url, "auth": url}``
    into ``out`` (written to a temporary file, mode 0600, then renamed).

    A token service's own data directory (:func:`instance_of`) is backed up with its own
    database only (``databases["auth"]``; the CA's, if given, is not read: there is none
    on that host) and the copies of the CA's public files; its manifest holds no log."""
    import time

    started = time.perf_counter()
    now = (clock or (lambda: datetime.datetime.now(datetime.UTC)))()
    data_dir = Path(data_dir)
    refuse_unfinished_restore(data_dir)
    if not (data_dir / "ca" / "root.crt").is_file():
        raise BackupError(f"{data_dir} holds no CA (no ca/root.crt)")
    instance = instance_of(data_dir)
    if instance == TOKEN_SERVICE:
        if "auth" not in databases:
            raise BackupError(f"{data_dir} is a token service's data directory: no database given")
        databases = {"auth": databases["auth"]}
    out = Path(out).resolve()
    if out.is_relative_to(data_dir.resolve()):
        raise BackupError("write the backup outside the data directory it backs up")
    out.parent.mkdir(parents=True, exist_ok=True)
    kinds = {name: _kind(url) for name, url in databases.items()}
    removed = remove_stale_backup_work(out)
    with tempfile.TemporaryDirectory(prefix=staging_prefix(out), dir=out.parent) as tmp:
        staging = Path(tmp)
        for _attempt in range(_ATTEMPTS):
            before = _snapshot_files(data_dir, include_dev)
            dbs: dict[str, dict[str, Any]] = {}
            staged: dict[str, Path] = {}
            log: LogState | None = None
            for name, url in databases.items():
                same = next((n for n in dbs if databases[n] == url), None)
                if same is not None:
                    dbs[name] = {"kind": kinds[name], "same_as": same}
                    continue
                if kinds[name] == "sqlite":
                    member = f"db/{name}.sqlite"
                    path = staging / f"{name}.sqlite"
                    path.unlink(missing_ok=True)
                    _backup_sqlite(_sqlite_path(url), path)
                    if name == "ca":
                        with _read_sqlite(path) as conn:
                            log = read_log_state(conn)
                else:
                    member = f"db/{name}.pgdump"
                    path = staging / f"{name}.pgdump"
                    path.unlink(missing_ok=True)
                    state = _dump_postgres(url, path, read_log=name == "ca")
                    log = state if name == "ca" else log
                dbs[name] = {"kind": kinds[name], "member": member}
                staged[member] = path
            after = _snapshot_files(data_dir, include_dev)
            if _digests(before) == _digests(after):
                break
        else:
            raise BackupError(
                f"the key files in {data_dir} kept changing during {_ATTEMPTS} copies "
                "(a ceremony in progress?); try again when it is done"
            )
        if log is None and instance == CA:
            raise BackupError("no CA database to back up")
        members: dict[str, dict[str, Any]] = {}
        for member, path in staged.items():
            members[member] = {
                "sha256": _sha256_file(path),
                "size": path.stat().st_size,
                "mode": 0o600,
            }
        for member, f in after.items():
            members[member] = {
                "sha256": hashlib.sha256(f.data).hexdigest(),
                "size": len(f.data),
                "mode": f.mode,
            }
        excluded = (
            [f"ca/{name}: {why}" for name, why in EXCLUDED_CA_FILES.items()]
            if instance == CA
            else []
        )
        dev = (data_dir / "dev").is_dir()
        if dev and not include_dev:
            excluded.append(
                "dev/: development credentials (passphrases in the clear); --include-dev"
            )
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "instance": instance,
            "created_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "source": str(data_dir.resolve()),
            "custody": (data_dir / "ca" / "custody.json").is_file(),
            "dev_instance": (data_dir / "dev" / ".complete").is_file(),
            "includes_dev_credentials": include_dev and dev,
            "databases": dbs,
            "log": log.to_json() if log is not None else None,
            "members": members,
            "excluded": excluded,
        }
        blob = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        tmp_out = out.with_name(f".{out.name}.{os.getpid()}{_TMP_SUFFIX}")
        fd = os.open(tmp_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw:
                with (
                    gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz,
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
                ):
                    mtime = int(now.timestamp())
                    _add(tar, MANIFEST, len(blob), 0o600, mtime, io.BytesIO(blob))
                    for member, path in staged.items():
                        with open(path, "rb") as fh:
                            _add(tar, member, path.stat().st_size, 0o600, mtime, fh)
                    for member, f in after.items():
                        _add(tar, member, len(f.data), f.mode, mtime, io.BytesIO(f.data))
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp_out, out)
        except BaseException:
            tmp_out.unlink(missing_ok=True)
            raise
    return BackupResult(out, manifest, out.stat().st_size, time.perf_counter() - started, removed)


# -- reading an archive -----------------------------------------------------------------


@dataclass
class Archive:
    """An archive whose every member was checked against its manifest, staged on disk."""

    path: Path
    manifest: dict[str, Any]
    staging: Path
    log: LogState | None
    """The CA's log as the backup holds it; None in a token service's archive."""

    def staged(self, member: str) -> Path:
        return self.staging / member

    @property
    def instance(self) -> str:
        """:data:`CA` or :data:`TOKEN_SERVICE`: what kind of data directory was backed up."""
        return str(self.manifest.get("instance", CA))

    @property
    def ca_log(self) -> LogState:
        """The log of a CA's archive (:class:`BackupError` for a token service's)."""
        if self.log is None:
            raise BackupError(f"{self.path} is a token service's backup: it holds no CA log")
        return self.log

    @property
    def database_kinds(self) -> dict[str, str]:
        return {name: str(db["kind"]) for name, db in self.manifest["databases"].items()}

    @contextlib.contextmanager
    def sqlite_ca_database(self) -> Iterator[Connection | None]:
        """A read-only connection to the staged CA database when it is SQLite (read before
        anything is written); None for PostgreSQL (readable only once restored)."""
        db = self.manifest["databases"].get("ca", {})
        if db.get("kind") != "sqlite":
            yield None
            return
        with _read_sqlite(self.staged(db["member"])) as conn:
            yield conn

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DATABASE_MEMBERS = {"sqlite": "sqlite", "postgresql": "pgdump"}
"""A database's kind, and the extension of its member ``db/<name>.<ext>``."""

_DATABASE_MAGIC = {"sqlite": b"SQLite format 3\x00", "postgresql": b"PGDMP"}
"""How a SQLite database file and a ``pg_dump --format=custom`` archive begin."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mode_ok(mode: Any) -> bool:
    """A member's mode as :func:`create_backup` records it (``st_mode & 0o777``, files
    written 0o600 or by the umask): the owner reads and writes, nobody executes, others
    do not write; never setuid, setgid or sticky bits."""
    return (
        _is_int(mode)
        and 0 <= mode <= 0o777
        and mode & 0o600 == 0o600
        and not mode & 0o111
        and not mode & 0o002
    )


def _check_manifest(doc: Any, path: Path) -> dict[str, Any]:
    """The whole manifest's structure, checked before any member is read or anything
    written: every member of the kind and place a restore puts in place, every field
    of the type it is used as. Raises :class:`BackupError` (one line)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"{path} is not an eport backup (no eport manifest)")
    if doc.get("version") != VERSION:
        raise BackupError(
            f"{path} is an eport backup of format version {doc.get('version')}; this eport "
            f"reads version {VERSION}"
        )

    def bad(what: str) -> BackupError:
        return BackupError(f"{path}: malformed manifest: {what}; nothing was restored")

    instance = doc.get("instance", CA)
    if instance not in INSTANCES:
        raise bad(f"instance is {str(instance)[:30]!r} (ca or token-service)")

    members = doc.get("members")
    databases = doc.get("databases")
    if not isinstance(members, dict) or not isinstance(databases, dict):
        raise BackupError(f"{path}: the manifest lists no members")
    for key in ("custody", "dev_instance", "includes_dev_credentials"):
        if key in doc and not isinstance(doc[key], bool):
            raise bad(f"{key} is not true or false")
    if not isinstance(doc.get("created_at"), str):
        raise bad("created_at is not a date")
    with_dev = doc.get("includes_dev_credentials") is True
    for name, meta in members.items():
        if (
            not isinstance(name, str)
            or not _MEMBER.fullmatch(name)
            or ".." in PurePosixPath(name).parts
            or not name.startswith(("db/", "files/"))
            or not isinstance(meta, dict)
            or not re.fullmatch("[0-9a-f]{64}", str(meta.get("sha256")))
        ):
            raise BackupError(f"{path}: the manifest names an invalid member {str(name)[:60]!r}")
        shown = name[:60]
        if not _is_int(meta.get("size")) or meta["size"] < 0:
            raise bad(f"the size of {shown} is not a number of bytes")
        if not _mode_ok(meta.get("mode")):
            mode = meta.get("mode")
            said = oct(mode) if isinstance(mode, int) and not isinstance(mode, bool) else repr(mode)
            raise bad(
                f"the mode of {shown} is {said}: a backup records modes such as 0o600 and "
                "0o644 (owner read-write, no execute, not writable by others)"
            )
        if name.startswith("files/"):
            rel = name[len("files/") :]
            placed = rel.startswith("ca/") or (with_dev and rel.startswith("dev/"))
            if (
                not placed
                or rel[len("ca/") :] in EXCLUDED_CA_FILES
                or _SKIPPED.search(PurePosixPath(name).name)
            ):
                raise bad(f"{shown} is not a member a restore puts in place")
    # The databases: the CA's and the token service's, each of a known kind, in its own
    # member db/<name>.<ext>, or the same database as another entry ("same_as"). A token
    # service's own directory has its own database only.
    if instance == TOKEN_SERVICE:
        auth = databases.get("auth")
        if set(databases) != {"auth"} or not isinstance(auth, dict) or "same_as" in auth:
            raise bad("a token service's backup holds its own database only (databases.auth)")
    elif "ca" not in databases:
        raise bad("no CA database (databases.ca)")
    used: set[str] = set()
    for name, db in databases.items():
        if name not in ("ca", "auth"):
            raise bad(f"unknown database {str(name)[:30]!r} (ca and auth only)")
        if not isinstance(db, dict) or db.get("kind") not in _DATABASE_MEMBERS:
            raise bad(f"databases.{name} is not a database of a known kind (sqlite, postgresql)")
        if "same_as" in db:
            other = databases.get(db["same_as"]) if isinstance(db["same_as"], str) else None
            if (
                name == "ca"
                or "member" in db
                or db["same_as"] == name
                or not isinstance(other, dict)
                or "same_as" in other
                or other.get("kind") != db["kind"]
            ):
                raise bad(f"databases.{name}.same_as does not name another database entry")
            continue
        member = f"db/{name}.{_DATABASE_MEMBERS[db['kind']]}"
        if db.get("member") != member or member not in members:
            raise bad(f"databases.{name} does not name its own member {member}")
        used.add(member)
    for name in members:
        if name.startswith("db/") and name not in used:
            raise bad(f"{name[:60]} is not a member a restore puts in place")
    if "files/ca/root.crt" not in members:
        raise bad("no root certificate (files/ca/root.crt)")
    log = doc.get("log")
    if instance == TOKEN_SERVICE:
        if log is not None:
            raise bad("a token service's backup holds no CA log (log is not null)")
        return doc
    if (
        not isinstance(log, dict)
        or not _is_int(log.get("size"))
        or log["size"] < 0
        or not _is_int(log.get("certificates"))
        or log["certificates"] < 0
        or not re.fullmatch("[0-9a-f]{64}", str(log.get("root_hash")))
        or not isinstance(log.get("checkpoint"), str | None)
    ):
        raise bad(
            "the log is not {size, root_hash, checkpoint, certificates} (a number, 64 hex "
            "digits, a signed note or null, a number)"
        )
    return doc


def open_archive(path: Path, staging_parent: Path, tag: str = "") -> Archive:
    """Read ``path`` into a staging directory under ``staging_parent``, checking every member's
    SHA-256 and size against the manifest; any difference, missing or extra member, or a
    damaged gzip/tar stream raises :class:`BackupError` and leaves nothing behind.

    ``tag`` (the target data directory's name) goes into the staging directory's name:
    a restore killed outright leaves its staging behind, and the next restore of the same
    target, holding that target alone (:mod:`ca.datalock`), removes it
    (:func:`remove_stale_staging`)."""
    path = Path(path)
    if not path.is_file():
        raise BackupError(f"no backup archive at {path}")
    staging_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".eport-restore-{tag}-", dir=staging_parent))
    try:
        manifest = _extract(path, staging)
        log = manifest["log"]
        return Archive(path, manifest, staging, None if log is None else LogState.from_json(log))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def stale_staging(staging_parent: Path, tag: str) -> list[Path]:
    """What killed restores of the target ``tag`` left in ``staging_parent``."""
    return sorted(p for p in staging_parent.glob(f".eport-restore-{tag}-*") if p.is_dir())


def remove_stale_staging(staging_parent: Path, tag: str) -> int:
    """Remove what killed restores of the target ``tag`` left in ``staging_parent``; call
    it holding that target alone. How many were removed."""
    stale = stale_staging(staging_parent, tag)
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def _private_dirs(top: Path, path: Path) -> None:
    """``path`` and its missing parents below ``top``, each made 0700 (as ``eport ca
    init`` makes the CA's directories): a restored ``ca/`` was 0755 (the keys in it 0600)."""
    missing = []
    while path != top and not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700)
        os.chmod(d, 0o700)  # whatever the umask


def _extract(path: Path, staging: Path) -> dict[str, Any]:
    manifest: dict[str, Any] | None = None
    seen: set[str] = set()
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for info in tar:
                if manifest is None:
                    if info.name != MANIFEST or not info.isfile() or info.size > 16 << 20:
                        raise BackupError(f"{path} is not an eport backup (no manifest first)")
                    fh = tar.extractfile(info)
                    assert fh is not None
                    try:
                        doc = json.loads(fh.read())
                    except ValueError:
                        raise BackupError(f"{path}: the manifest is not JSON") from None
                    manifest = _check_manifest(doc, path)
                    continue
                meta = manifest["members"].get(info.name)
                if meta is None or not info.isfile() or info.name in seen:
                    raise BackupError(f"{path}: unexpected member {info.name[:60]!r}")
                seen.add(info.name)
                target = staging / info.name
                _private_dirs(staging, target.parent)
                src = tar.extractfile(info)
                assert src is not None
                h = hashlib.sha256()
                size = 0
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as dst:
                    while block := src.read(_CHUNK):
                        h.update(block)
                        size += len(block)
                        dst.write(block)
                if h.hexdigest() != meta["sha256"] or size != int(meta.get("size", -1)):
                    raise BackupError(
                        f"{path} is corrupted: {info.name} does not match its SHA-256 in the "
                        "manifest; nothing was restored"
                    )
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # Writing the staging copy failed: the archive may be perfectly good.
            raise BackupError(
                f"no space left to unpack the archive in {staging.parent} ({exc.strerror}): "
                f"free space there and run the restore again; {path} was not found "
                "damaged; nothing was restored"
            ) from None
        if isinstance(exc, FileNotFoundError | PermissionError):
            raise BackupError(f"cannot read {path}: {exc.strerror}") from None
        raise BackupError(
            f"{path} is corrupted or truncated ({type(exc).__name__}: {exc}); nothing was restored"
        ) from None
    if manifest is None:
        raise BackupError(f"{path} is empty")
    missing = sorted(set(manifest["members"]) - seen)
    if missing:
        raise BackupError(f"{path} is truncated: {missing[0]} is missing; nothing was restored")
    if manifest.get("instance") == TOKEN_SERVICE and not hierarchy.public_copy_only(
        staging / "files"
    ):
        # Placed, a CA's key, log key or custody record would make the token service's
        # directory look like a CA's (eport serve, the next backup and restore go by that)
        raise BackupError(
            f"{path} is a token service's backup holding files of a CA (keys, the log's key "
            "or a custody record), not only the CA's public files; nothing was restored"
        )
    for name, db in manifest["databases"].items():
        if "member" in db:
            with open(staging / db["member"], "rb") as fh:
                magic = _DATABASE_MAGIC[db["kind"]]
                if fh.read(len(magic)) != magic:
                    raise BackupError(
                        f"{path}: {db['member']} (the {name} database) is not a {db['kind']} "
                        "database; nothing was restored"
                    )
    return manifest


# -- restoring --------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    data_dir: Path
    files: int
    databases: dict[str, str]
    """name → where it went (a file path, or the PostgreSQL URL without password)."""
    set_aside: tuple[Path, ...] = ()
    """What ``--force`` replaced, kept under ``data_dir`` (:func:`_set_aside`)."""


def _set_aside(path: Path, stamp: str) -> Path | None:
    """Move ``path`` (a file, or a directory: ``ca/``) to ``<name>.replaced-<stamp>``
    beside it, if it exists; where it went. A restore with ``--force`` deleted what it
    replaced, certificate records in force included when the backup was older (upgrade
    probe, session 24), against the Electronic Signature Law's five years; the operator
    deletes the copy once it is checked (docs/backup.md)."""
    if not path.exists():
        return None
    kept = path.with_name(f"{path.name}.replaced-{stamp}")
    path.rename(kept)
    return kept


def _sqlite_leftovers(path: Path) -> list[Path]:
    return [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))]


def _pg_is_empty(url: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            count = conn.execute(
                text(
                    "SELECT count(*) FROM information_schema.tables "
                    "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                )
            ).scalar_one()
    except Exception as exc:  # any driver error: one line for the operator
        raise BackupError(f"cannot reach the target database: {str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    return int(count) == 0


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def _read_target(url: str) -> Iterator[Connection | None]:
    """A connection to the database about to be replaced, to read it only; None when
    there is no SQLite file. A read-only SQLite connection to a WAL database creates its
    ``-wal`` and ``-shm`` files: those it made are removed after, so that a refused
    restore leaves the target as it was."""
    made: list[Path] = []
    if _kind(url) == "sqlite":
        path = _sqlite_path(url)
        if not path.exists():
            yield None
            return
        made = [p for p in _sqlite_leftovers(path)[1:] if not p.exists()]
        engine = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
    else:
        engine = create_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()
        for side in made:
            side.unlink(missing_ok=True)


def target_roots(url: str) -> dict[str, str]:
    """The root certificates the CA database at ``url`` (about to be replaced) records,
    as :func:`root_records`: empty when there is no database or nothing to read."""
    try:
        with _read_target(url) as conn:
            return {} if conn is None else root_records(conn)
    except Exception:  # no certificates table (not a CA database yet) or nothing to read
        return {}


def target_log_size(url: str) -> int:
    """How many entries the log of the CA database at ``url`` (about to be replaced)
    holds: 0 when there is no database or no log yet. A restore that would shrink it
    loses what it logged after the backup."""
    try:
        with _read_target(url) as conn:
            if conn is None:
                return 0
            head = conn.execute(text("SELECT size FROM log_head WHERE id = 1")).first()
            return int(head[0]) if head is not None else 0
    except Exception:  # no log_head table (not a CA database yet) or nothing to read
        return 0


def non_empty_targets(archive: Archive, data_dir: Path, databases: Mapping[str, str]) -> list[str]:
    """What restoring into ``data_dir`` and ``databases`` would overwrite."""
    found: list[str] = []
    if data_dir.is_dir() and any(p.name != LOCK_NAME for p in data_dir.iterdir()):
        found.append(str(data_dir))
    for name, db in archive.manifest["databases"].items():
        if "same_as" in db:
            continue
        url = databases[name]
        if db["kind"] == "sqlite":
            path = _sqlite_path(url)
            if path.exists() and not path.resolve().is_relative_to(data_dir.resolve()):
                found.append(str(path))
        elif not _pg_is_empty(url):
            found.append(f"the database {_safe_url(url)}")
    return found


def _unreadable(exc: SQLAlchemyError, what: str = "CA") -> BackupError:
    cause = str(getattr(exc, "orig", exc)).splitlines()[0][:120]
    return BackupError(
        f"the archive's {what} database cannot be read as an eport {what} database ({cause}); "
        "nothing was restored"
    )


def restore(
    archive: Archive,
    data_dir: Path,
    databases: Mapping[str, str],
    *,
    force: bool,
    check: Callable[[Connection], None],
) -> RestoreResult:
    """Restore ``archive`` into ``data_dir`` and the databases at ``databases``.

    ``check`` is given a connection to the CA database about to be put in place (a token
    service's archive: its own database) and raises to stop the restore: for SQLite it
    runs on the staged copy before anything is written; for PostgreSQL on the restored
    database, before any file is placed.
    """
    data_dir = Path(data_dir)
    kinds = archive.database_kinds
    # What is checked, and what --force replaces, by the kind of directory backed up
    checked, what, replaces = (
        ("ca", "CA", "the CA files and databases")
        if archive.instance == CA
        else ("auth", "token service", "the token service's database and the CA's public files")
    )
    for name, kind in kinds.items():
        if name not in databases:
            raise BackupError(f"the archive holds a {name} database, and no target was given")
        target = _kind(databases[name])
        if target != kind:
            hint = "unset EPORT_DATABASE_URL" if kind == "sqlite" else "set EPORT_DATABASE_URL"
            if name == "auth":
                hint = hint.replace("EPORT_", "EPORT_AUTH_")
            raise BackupError(
                f"the archive's {name} database is {kind}, the target is {target}: {hint} "
                "(restore into the same kind of database; migrating between them is not "
                "supported)"
            )
    occupied = non_empty_targets(archive, data_dir, databases)
    if occupied and not force and (data_dir / RESTORE_MARKER).exists():
        raise BackupError(
            f"an earlier restore into {data_dir} was interrupted halfway: run it again with "
            f"--force (it replaces {replaces} there)"
        )
    if occupied and not force:
        raise BackupError(
            f"refusing to restore over {occupied[0]}: it is not empty (--force replaces "
            f"{replaces} there)"
        )
    # The CA database first: the others may be the same database ("same_as").
    dbs = dict(sorted(archive.manifest["databases"].items(), key=lambda item: item[0] != "ca"))
    checked_db = dbs[checked]
    if checked_db["kind"] == "sqlite":
        try:
            with _read_sqlite(archive.staged(checked_db["member"])) as conn:
                check(conn)
        except SQLAlchemyError as exc:
            raise _unreadable(exc, what) from None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    kept: list[Path] = []
    data_dir.mkdir(parents=True, exist_ok=True)
    if force:
        # What --clean will drop, kept first as a pg_dump (pg_restore brings it back), and
        # before the marker: a dump that fails (a full disk) leaves the instance as it was
        # and servable, not marked as a restore interrupted halfway (review probe 24).
        for name, db in dbs.items():
            if db["kind"] == "postgresql" and "same_as" not in db:
                url = databases[name]
                if not _pg_is_empty(url):
                    aside = data_dir / f"{name}-database.replaced-{stamp}.dump"
                    try:
                        _dump_postgres(url, aside, read_log=False)
                    except BackupError as exc:
                        aside.unlink(missing_ok=True)
                        raise BackupError(
                            f"{exc.detail}; nothing was restored or replaced: --force keeps "
                            f"the {name} database it replaces as a dump in {data_dir} first, "
                            "and that failed (is the disk full?)"
                        ) from None
                    os.chmod(aside, 0o600)
                    kept.append(aside)
    # From here on the target changes: marked, so that a restore killed before the last
    # file is placed leaves a directory no server starts on (ca.datalock).
    marker = data_dir / RESTORE_MARKER
    with open(marker, "wb") as fh:
        fh.write(b"an eport restore began here and has not finished\n")
        fh.flush()
        os.fsync(fh.fileno())
    placed: dict[str, str] = {}
    for name, db in dbs.items():
        if "same_as" in db:
            placed[name] = placed[db["same_as"]]
            continue
        url = databases[name]
        staged = archive.staged(db["member"])
        if db["kind"] == "postgresql":
            uri, env = _libpq(url)
            args = [pg_tool("pg_restore"), "--no-owner", "--no-privileges"]
            args += ["--single-transaction", "--exit-on-error"]
            if force:
                args += ["--clean", "--if-exists"]
            _run_pg(
                [*args, f"--dbname={uri}", str(staged)], env, f"pg_restore of the {name} database"
            )
            placed[name] = _safe_url(url)
            if name == checked:
                engine = create_engine(url)
                try:
                    try:
                        with engine.connect() as conn:
                            check(conn)
                    except SQLAlchemyError as exc:
                        raise _unreadable(exc, what) from None
                except BackupError as exc:
                    triggers = (
                        " (its records' triggers refuse DELETE and TRUNCATE)"
                        if name == "ca"
                        else ""
                    )
                    raise BackupError(
                        f"{exc.detail} (the database {_safe_url(url)} was restored and fails "
                        "this check; no file was placed: restore into it again with --force, "
                        f"or drop its tables first{triggers})"
                    ) from None
                finally:
                    engine.dispose()
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, db in dbs.items():
        if "same_as" in db or db["kind"] != "sqlite":
            continue
        db_file = _sqlite_path(databases[name])
        db_file.parent.mkdir(parents=True, exist_ok=True)
        # The database with its -wal and -shm, renamed alike (SQLite finds a database's
        # WAL by its name), so the copy opens with every commit it had.
        for leftover in _sqlite_leftovers(db_file):
            if leftover.name.endswith("-journal"):
                leftover.unlink(missing_ok=True)
                continue
            suffix = leftover.name[len(db_file.name) :]
            if leftover.exists():
                renamed = db_file.with_name(f"{db_file.name}.replaced-{stamp}{suffix}")
                leftover.rename(renamed)
                if not suffix:
                    kept.append(renamed)
        shutil.move(archive.staged(db["member"]), db_file)
        placed[name] = str(db_file)
    files = 0
    staged_files = archive.staging / "files"
    for top in ("ca", "dev"):
        source = staged_files / top
        if not source.is_dir():
            continue
        dest = data_dir / top
        replaced = _set_aside(dest, stamp)
        if replaced is not None:
            kept.append(replaced)
        for member, meta in archive.manifest["members"].items():
            if member.startswith(f"files/{top}/"):
                os.chmod(archive.staged(member), meta["mode"])  # checked: _mode_ok
                files += 1
        shutil.move(source, dest)
    marker.unlink()
    return RestoreResult(data_dir, files, placed, tuple(kept))
