"""Runbook 4 of docs/emergency-plan.md, a lost database, end to end: ``eport backup``
while a real server (2 gunicorn workers) keeps issuing, the data directory deleted,
``eport restore`` proving the restored log against the checkpoint auditors were shown,
the server started again, ``eport audit verify --full`` passing. On SQLite and on a
real PostgreSQL 15 (pg_dump / pg_restore of the same major version).

Also what a restore must refuse, changing nothing: entries lost since a published
checkpoint, a corrupted or truncated archive, a doctored log whose manifest was
re-hashed, a non-empty target.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import sqlite3
import subprocess
import tarfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import requests

from ca.config import CAConfig
from ca.devinit import ensure_dev_ca
from ca.keys import KeyType
from cli import keyfiles
from cli.client import CAClient
from tests.conftest import (
    EPORT_CMD,
    Postgres,
    Server,
    base_env,
    dev_credentials,
    start_server,
    stop,
)
from tests.helpers import assert_no_secret, enroll_enterprise, fresh_uscc

ISSUANCE_TYPES = {"ca.initialized", "certificate.issued", "certificate.renewed"}


def eport(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """The real ``eport`` command, without a server."""
    full = base_env()
    full.update(env)
    res = subprocess.run([*EPORT_CMD, *args], capture_output=True, text=True, env=full, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"eport {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def restore(
    archive: Path, target: Path, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """``eport restore --from ARCHIVE --data-dir TARGET ARGS...``."""
    return eport(
        "restore", "--from", str(archive), "--data-dir", str(target), *args, check=check, **env
    )


def backup(data: Path, archive: Path, **env: str) -> dict[str, Any]:
    """``eport backup --data-dir DATA --out ARCHIVE --json``: its JSON report."""
    doc = json.loads(
        eport("backup", "--data-dir", str(data), "--out", str(archive), "--json", **env).stdout
    )
    assert isinstance(doc, dict)
    return doc


def refused(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one error line of a command that must have failed."""
    assert res.returncode != 0, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eport: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its SHA-256: what "unchanged" means."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        out = {}
        for info in tar:
            fh = tar.extractfile(info)
            assert fh is not None
            out[info.name] = fh.read()
    return out


def repack(archive: Path, out: Path, changed: dict[str, bytes], rehash: bool) -> None:
    """``archive`` with some members replaced; with ``rehash`` the manifest is updated too
    (what someone doctoring a backup would do), else it is left as it was."""
    items = members(archive)
    items.update(changed)
    manifest = json.loads(items["manifest.json"])
    if rehash:
        for name, data in changed.items():
            manifest["members"][name].update(
                sha256=hashlib.sha256(data).hexdigest(), size=len(data)
            )
        items["manifest.json"] = json.dumps(manifest).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in items.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.write_bytes(buf.getvalue())


def dev_passphrases(dev: Path) -> list[bytes]:
    values = tomllib.loads((dev / "DEV-ONLY-passphrases.toml").read_text())
    found = [str(v).encode() for v in values.values()]
    found += [p.read_bytes().strip() for p in dev.rglob("DEV-ONLY-passphrase.txt")]
    assert len(found) > 5
    return found


def assert_no_dev_secret(archive: Path, dev: Path) -> None:
    """No clear private key and no development passphrase in any member."""
    needles = dev_passphrases(dev)
    items = members(archive)
    assert not [n for n in items if n.startswith("files/dev/") or n.endswith(".secret")]
    assert_no_secret(items.items(), needles)
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in items["files/ca/issuers/enterprise.key"]
    assert (archive.stat().st_mode & 0o777) == 0o600


def snapshot_is_consistent(db_file: Path) -> tuple[int, int]:
    """Every certificate row of the backed-up database has its logged issuance (same
    SHA-256) and every logged issuance its row; the log is gapless. (certificates, entries)"""
    conn = sqlite3.connect(db_file)
    try:
        rows = dict(conn.execute("SELECT serial, cert_sha256 FROM certificates"))
        entries = conn.execute("SELECT idx, entry FROM log_entries ORDER BY idx").fetchall()
        head = conn.execute("SELECT size FROM log_head").fetchone()[0]
    finally:
        conn.close()
    assert [idx for idx, _ in entries] == list(range(head))
    logged = {}
    for _, entry in entries:
        doc = json.loads(entry)
        if doc["type"] in ISSUANCE_TYPES:
            logged[doc["serial"]] = doc["cert_sha256"]
    assert logged == rows
    return len(rows), head


class Issuer(threading.Thread):
    """Keeps enrolling enterprises over the API until stopped."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stopping = threading.Event()
        self.issued: list[str] = []
        self.error: BaseException | None = None
        d = server.dev / "officers" / "customs"
        self.officer = keyfiles.load_identity(
            d / "officer.pem", d / "officer.key", d / "DEV-ONLY-passphrase.txt"
        )

    def run(self) -> None:
        client = CAClient(self.server.url)
        try:
            while not self.stopping.is_set():
                app = client.call(
                    "POST",
                    "/ca/v1/applications",
                    {"subject_class": "enterprise", "uscc": fresh_uscc(), "legal_name": "Bk Co"},
                )
                grant = client.call(
                    "POST", f"/ca/v1/ra/applications/{app['id']}/approve", {}, self.officer
                )
                csr = keyfiles.csr_for(KeyType.P256.generate()).decode()
                cert = client.call(
                    "POST",
                    "/ca/v1/enroll",
                    {"code": grant["enrollment_code"], "profile": "enterprise", "csr": csr},
                )
                self.issued.append(cert["serial"])
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.issued) < count and time.monotonic() < deadline and self.error is None:
            time.sleep(0.05)
        assert self.error is None, self.error
        assert len(self.issued) >= count


def verify_full(url: str, dev: Path, state: Path, since: Path) -> dict[str, Any]:
    res = eport(
        "--server",
        url,
        "audit",
        "verify",
        "--full",
        "--since",
        str(since),
        "--state",
        str(state),
        *dev_credentials(dev, "auditor"),
        "--json",
    )
    doc = json.loads(res.stdout)
    assert isinstance(doc, dict) and doc["ok"]
    return doc


@pytest.mark.slow
def test_lost_database_sqlite_online_backup_restore_verify(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv, proc = start_server(data)
    try:
        for i in range(2):
            enroll_enterprise(srv, tmp_path, f"Backup Trading {i} Co., Ltd.")
        # What auditors were shown before the backup: a state file and the raw note.
        state = tmp_path / "auditor-state.json"
        srv.eport("audit", "verify", "--state", str(state), *srv.auditor())
        before = tmp_path / "before.checkpoint"
        before.write_bytes(requests.get(srv.url + "/ca/v1/audit/checkpoint", timeout=10).content)

        issuer = Issuer(srv)
        issuer.start()
        try:
            issuer.wait_for(2)
            archive = tmp_path / "backups" / "eport.tar.gz"
            took = time.perf_counter()
            made = backup(data, archive)
            took = time.perf_counter() - took
            issued_by_then = len(issuer.issued)
            issuer.wait_for(issued_by_then + 2)  # issuance went on after the backup
        finally:
            issuer.stopping.set()
            issuer.join(60)
        assert issuer.error is None, issuer.error
        # Published after more issuance: a checkpoint the backup cannot reach.
        after = tmp_path / "after.checkpoint"
        after.write_bytes(requests.get(srv.url + "/ca/v1/audit/checkpoint", timeout=10).content)
        # An auditor who verified that far (its state pins the entries the backup lacks)
        saw_after = tmp_path / "auditor-saw-after.json"
        srv.eport("audit", "verify", "--state", str(saw_after), *srv.auditor())
    finally:
        stop(proc)

    manifest = made["manifest"]
    assert manifest["databases"]["ca"]["kind"] == "sqlite"
    assert manifest["databases"]["auth"]["kind"] == "sqlite"
    backed_size = manifest["log"]["size"]
    print(f"\nonline backup of {backed_size} entries: {took:.2f} s ({made['bytes']} bytes)")

    # Consistent: taken mid-issuance, every certificate row has its entry and vice versa.
    items = members(archive)
    (tmp_path / "snapshot.sqlite").write_bytes(items["db/ca.sqlite"])
    certificates, entries = snapshot_is_consistent(tmp_path / "snapshot.sqlite")
    assert entries == backed_size and certificates == manifest["log"]["certificates"]
    assert_no_dev_secret(archive, data / "dev")

    # The database (and the whole data directory) is lost. The development credentials
    # are kept apart, as custodians keep their shares: they are not in backups.
    dev_copy = tmp_path / "dev-credentials"
    shutil.copytree(data / "dev", dev_copy)
    shutil.rmtree(data)

    published_after = int(after.read_text().split("\n")[1])
    lost = published_after - backed_size
    assert lost >= 2
    line = refused(
        restore(archive, data, "--checkpoint", str(after), check=False),
        f"{lost} entries",
        f"has {published_after} entries",
        "--accept-loss",
    )
    assert str(backed_size) in line
    assert not data.exists(), "a refused restore writes nothing"
    assert not list(tmp_path.glob(".eport-restore-*"))

    took = time.perf_counter()
    done = json.loads(restore(archive, data, "--checkpoint", str(state), "--json").stdout)
    took = time.perf_counter() - took
    print(f"restore and log check: {took:.2f} s")
    assert done["lost_entries"] == 0 and done["entries"] == backed_size
    assert not any("other hosts" in step for step in done["next"])  # SQLite: one host
    assert done["published_checkpoint_size"] == int(before.read_text().split("\n")[1])
    assert not (data / "dev").exists() and not (data / "ca" / "audit-web.secret").exists()
    assert (data / "ca" / "issuers" / "enterprise.key").stat().st_mode & 0o777 == 0o600
    # Its directories private, as init makes them (a restored ca/ was 0755).
    for d in [data / "ca", *(p for p in (data / "ca").rglob("*") if p.is_dir())]:
        assert d.stat().st_mode & 0o077 == 0, (d, oct(d.stat().st_mode))

    shutil.copytree(dev_copy, data / "dev")
    srv, proc = start_server(data)
    try:
        first = verify_full(srv.url, data / "dev", tmp_path / "s1.json", before)
        assert first["tree_size"] >= backed_size and first["previous_size"] < backed_size
        assert first["certificates"] == certificates
        # The restored instance is unsealed with its development key: it issues again.
        enroll_enterprise(srv, tmp_path, "After Restore Co., Ltd.")
        again = verify_full(srv.url, data / "dev", tmp_path / "s1.json", before)
        assert again["certificates"] == certificates + 1
        # The log grew anew from the backup: to the auditor who saw further it shrank (or
        # forked), even when it names an older checkpoint (--since) the new one extends.
        # Its state is checked besides --since, and kept (it was saved over, the fork's
        # evidence lost: log tamper probe, session 26).
        pinned = saw_after.read_text()
        res = eport(
            "--server",
            srv.url,
            "audit",
            "verify",
            "--since",
            str(before),
            "--state",
            str(saw_after),
            *dev_credentials(data / "dev", "auditor"),
            check=False,
        )
        assert res.returncode == 1 and "FAILED" in res.stderr, (res.stdout, res.stderr)
        assert "the log shrank from" in res.stderr, res.stderr
        assert saw_after.read_text() == pinned
    finally:
        stop(proc)


@pytest.mark.slow
def test_restore_never_runs_under_a_server_nor_shrinks_the_log_in_place(tmp_path: Path) -> None:
    """A restore over a running server's directory is refused (its processes would go on
    writing into the replaced files), and a server does not start during a restore. Over
    a stopped one, a backup older than the log in place is refused without --accept-loss,
    even with no --checkpoint: the database being replaced knows how far its log got."""
    from ca.datalock import held_for_restore

    data = tmp_path / "data"
    srv, proc = start_server(data)
    try:
        enroll_enterprise(srv, tmp_path, "Before Backup Co., Ltd.")
        archive = tmp_path / "eport.tar.gz"
        backed = backup(data, archive)["manifest"]["log"]["size"]
        enroll_enterprise(srv, tmp_path, "After Backup Co., Ltd.")
        before = tree_digest(data)
        refused(restore(archive, data, "--force", check=False), "a server is running on")
        assert tree_digest(data) == before
    finally:
        stop(proc)
    with sqlite3.connect(data / "eport.db") as conn:
        (in_place,) = conn.execute("SELECT size FROM log_head").fetchone()
    assert in_place > backed
    with held_for_restore(data):
        res = eport("serve", "--dev", "--data-dir", str(data), "--port", "1", check=False)
        assert res.returncode == 1 and "a restore is running on" in res.stderr, res.stderr
    before = tree_digest(data)
    refused(
        restore(archive, data, "--force", check=False),
        f"the log in place has {in_place} entries, the backup's {backed}",
        "--accept-loss",
    )
    assert tree_digest(data) == before
    # A restore killed outright left its staging beside the target: the next one removes it.
    stale = tmp_path / f".eport-restore-{data.name}-killed"
    (stale / "db").mkdir(parents=True)
    other = tmp_path / ".eport-restore-another-target-x"  # not ours: left alone
    other.mkdir()
    with sqlite3.connect(data / "eport.db") as conn:
        certificates = conn.execute("SELECT count(*) FROM certificates").fetchone()[0]
    res = restore(archive, data, "--force", "--accept-loss", "--json")
    assert json.loads(res.stdout)["lost_entries"] == in_place - backed
    # what the lost entries may have held, ceremonies included (emergency-plan probe, s27)
    steps = json.loads(res.stdout)["next"]
    assert any("the lost entries may hold ceremonies" in step for step in steps), steps
    assert "Removed the staging left by an interrupted restore" in res.stderr
    assert not stale.exists() and other.exists()
    # What --force replaced is kept beside it, its WAL's commits too, not deleted: the
    # certificate issued after the backup is still on record there (upgrade probe 24).
    kept = sorted(p.name for p in data.iterdir() if ".replaced-" in p.name)
    assert [n for n in kept if n.startswith("eport.db.")], kept
    assert [n for n in kept if n.startswith("ca.replaced-")], kept
    copy = next(data.glob("eport.db.replaced-*[0-9]Z"))
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT count(*) FROM certificates").fetchone()[0] == certificates
    with sqlite3.connect(data / "eport.db") as conn:
        assert conn.execute("SELECT count(*) FROM certificates").fetchone()[0] < certificates
    assert sorted(json.loads(res.stdout)["set_aside"]) == sorted(
        str(data / n) for n in kept if not n.endswith(("-wal", "-shm"))
    )


@pytest.fixture(scope="module")
def offline_instance(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A development CA made without a server, and its backup (offline)."""
    root = tmp_path_factory.mktemp("offline")
    data = root / "data"
    ensure_dev_ca(CAConfig(data_dir=data, dev=True))
    archive = root / "eport.tar.gz"
    eport("backup", "--data-dir", str(data), "--out", str(archive))
    return data, archive


@pytest.mark.slow
def test_restore_refuses_and_changes_nothing(
    offline_instance: tuple[Path, Path], tmp_path: Path
) -> None:
    _, archive = offline_instance
    target = tmp_path / "restored"
    restore(archive, target)
    (target / "dev").mkdir()
    (target / "dev" / "keep.txt").write_text("not in the archive\n")
    unchanged = tree_digest(target)

    # A non-empty target without --force.
    refused(
        restore(archive, target, check=False),
        "not empty",
        "--force",
    )
    # A byte flipped in the compressed stream; a truncated file; a member changed with
    # the manifest left alone: even with --force, nothing is written.
    blob = archive.read_bytes()
    flipped = tmp_path / "flipped.tar.gz"
    flipped.write_bytes(
        blob[: len(blob) // 2] + bytes([blob[len(blob) // 2] ^ 0x40]) + blob[len(blob) // 2 + 1 :]
    )
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(blob[: len(blob) * 2 // 3])
    changed = tmp_path / "changed.tar.gz"
    crt = members(archive)["files/ca/root.crt"]
    repack(archive, changed, {"files/ca/root.crt": crt.replace(b"A", b"B", 1)}, rehash=False)
    for bad, needle in (
        (flipped, "corrupted"),
        (truncated, "corrupted or truncated"),
        (changed, "files/ca/root.crt does not match its SHA-256"),
    ):
        refused(
            restore(bad, target, "--force", check=False),
            needle,
        )
        assert tree_digest(target) == unchanged, bad.name
    assert not list(tmp_path.glob(".eport-restore-*"))

    # A doctored log whose manifest was re-hashed to match: the entries no longer
    # rebuild the log's root, and the restore stops before writing.
    snapshot = tmp_path / "ca.sqlite"
    snapshot.write_bytes(members(archive)["db/ca.sqlite"])
    conn = sqlite3.connect(snapshot)
    with conn:
        entry = conn.execute("SELECT entry FROM log_entries WHERE idx = 3").fetchone()[0]
        conn.execute("DROP TRIGGER eport_keep_log_entries_update")  # the doctor's first step
        conn.execute(
            "UPDATE log_entries SET entry = ? WHERE idx = 3",
            (entry.replace(b'"actor":"', b'"actor":"x', 1),),
        )
    conn.close()
    doctored = tmp_path / "doctored.tar.gz"
    repack(archive, doctored, {"db/ca.sqlite": snapshot.read_bytes()}, rehash=True)
    refused(
        restore(doctored, target, "--force", check=False),
        "rebuild root",
        "entries were changed",
    )
    assert tree_digest(target) == unchanged

    # --force replaces the CA files and databases and leaves the rest.
    (target / "ca" / "stale.crt").write_text("from another instance\n")
    restore(archive, target, "--force")
    assert not (target / "ca" / "stale.crt").exists()
    assert (target / "dev" / "keep.txt").exists()


KILL_AFTER_FIRST_DATABASE = """
import os, shutil, signal, sys
move = shutil.move
def move_then_die(src, dst, *args, **kwargs):
    out = move(src, dst, *args, **kwargs)
    if str(dst).endswith("eport.db"):  # the CA database is placed, ca/ not yet
        os.kill(os.getpid(), signal.SIGKILL)
    return out
shutil.move = move_then_die
from cli.main import main
sys.argv = ["eport", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_restore_killed_halfway_is_never_served(
    offline_instance: tuple[Path, Path], tmp_path: Path
) -> None:
    """``eport restore`` killed (SIGKILL) after it placed the CA database and before it
    placed ``ca/``: ``eport serve`` refuses the half-restored directory in one line and
    creates nothing there; a restore without ``--force`` says the last one was
    interrupted; with ``--force`` it completes, the server starts, ``eport audit verify
    --full`` passes and issuance works."""
    import sys

    from tests.conftest import free_port

    data, archive = offline_instance
    target = tmp_path / "restored"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_AFTER_FIRST_DATABASE,
            "restore",
            "--from",
            str(archive),
            "--data-dir",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    assert (target / "eport.db").is_file() and not (target / "ca").exists()
    shutil.copytree(data / "dev", target / "dev")  # a dev instance's runbook step

    serve = eport(
        "serve", "--dev", "--data-dir", str(target), "--port", str(free_port()), check=False
    )
    refused(serve, "did not finish", "--force")
    assert not (target / "ca").exists()
    again = restore(archive, target, check=False)
    assert again.returncode == 1
    # the killed restore's staging is removed first, and said so
    assert again.stderr.splitlines()[0] == "Removed the staging left by an interrupted restore."
    assert "was interrupted halfway: run it again with --force" in again.stderr.splitlines()[1]

    restore(archive, target, "--force")
    assert not (target / "restore.incomplete").exists()
    srv, proc = start_server(target)
    try:
        srv.eport("audit", "verify", "--full", "--state", str(tmp_path / "a.json"), *srv.auditor())
        enroll_enterprise(srv, tmp_path)
    finally:
        stop(proc)


def test_a_first_start_beside_an_interrupted_restore_makes_no_new_ca(tmp_path: Path) -> None:
    """A restore into a new directory killed before it placed anything leaves its staging
    beside the directory (with the databases' copies): ``eport serve --dev`` there made a
    brand-new, different CA where the restored one was to be. It refuses in one line and
    makes nothing; once the staging is gone, the first start proceeds."""
    from tests.conftest import free_port

    target = tmp_path / "restored"
    target.mkdir()
    staging = tmp_path / ".eport-restore-restored-k1ll3d"
    staging.mkdir()
    serve = eport(
        "serve", "--dev", "--data-dir", str(target), "--port", str(free_port()), check=False
    )
    assert serve.returncode == 1, serve.stdout + serve.stderr
    line = serve.stderr.strip().splitlines()[-1]  # after the --dev warning
    assert line.startswith(f"eport: error: an interrupted restore into {target} left {staging}")
    assert "run the same eport restore again" in line, line
    assert not (target / "ca").exists() and not (target / "eport.db").exists()
    staging.rmdir()
    from ca.config import CAConfig
    from ca.devinit import ensure_dev_ca

    assert ensure_dev_ca(CAConfig.load({"dev": True, "data_dir": target}, environ={})) is not None


def killed_at(call: str) -> str:
    """A Python script that runs ``eport`` (its arguments) and SIGKILLs itself at its
    first ``os.<call>``."""
    return f"""
import os, signal, sys
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
os.{call} = die
from cli.main import main
sys.argv = ["eport", *sys.argv[1:]]
main()
"""


KILL_BEFORE_RENAME = killed_at("replace")  # the archive is written, not yet renamed


def test_a_killed_backup_leaves_no_archive_and_the_next_one_cleans_up(
    offline_instance: tuple[Path, Path], tmp_path: Path
) -> None:
    """``eport backup`` killed (SIGKILL) after writing its archive, before renaming it: no
    file has the archive's name; its unfinished archive and staging (database copies)
    are hidden beside it, and the next backup to the same name removes them, says so,
    and writes an archive that restores."""
    import sys

    data, _ = offline_instance
    out = tmp_path / "backups" / "eport.tar.gz"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_BEFORE_RENAME,
            "backup",
            "--data-dir",
            str(data),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    left = sorted(p.name for p in out.parent.iterdir())
    assert not out.exists() and len(left) == 2, left
    assert left[0].startswith(".eport-backup-eport.tar.gz.") and left[1].endswith(".tmp")

    again = eport("backup", "--data-dir", str(data), "--out", str(out))
    assert "Removed 2 work file(s) left beside eport.tar.gz by an interrupted backup." in (
        again.stderr
    )
    assert [p.name for p in out.parent.iterdir()] == ["eport.tar.gz"]
    restore(out, tmp_path / "restored")


KILL_AT_THE_WRITE_CHECK = killed_at("rmdir")  # the directory made to see --out is writable


def test_a_backup_killed_at_its_write_check_leaves_what_the_next_one_removes(
    offline_instance: tuple[Path, Path], tmp_path: Path
) -> None:
    """The empty directory made to see that --out's directory is writable, left by a
    backup killed before it was removed, was named unlike a backup's work files and so
    stayed for good (crash probe, session 26): named as its staging now, the next backup
    removes it."""
    import sys

    data, _ = offline_instance
    out = tmp_path / "backups" / "eport.tar.gz"
    command = [sys.executable, "-c", KILL_AT_THE_WRITE_CHECK, "backup", "--data-dir", str(data)]
    killed = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == -9, killed.stderr
    (left,) = out.parent.iterdir()
    assert left.is_dir() and left.name.startswith(".eport-backup-eport.tar.gz."), left
    again = eport("backup", "--data-dir", str(data), "--out", str(out))
    assert "Removed 1 work file(s)" in again.stderr, again.stderr
    assert [p.name for p in out.parent.iterdir()] == ["eport.tar.gz"]


def test_a_restore_onto_a_full_disk_blames_the_disk_not_the_archive(
    offline_instance: tuple[Path, Path], tmp_path: Path
) -> None:
    """A good archive restored onto a full file system: one line that names the lack of
    space and says the archive was not found damaged (it said "corrupted or truncated"
    before, which could make an operator throw away a good backup); nothing is left on
    the disk; once space is freed the same restore succeeds."""
    from tests.test_crash_recovery import fill, small_tmpfs

    _, archive = offline_instance
    with small_tmpfs(tmp_path / "small", "4m") as small:
        fill(small / "filler")
        res = restore(archive, small / "data", check=False)
        refused(res, "no space left to unpack the archive", "was not found damaged")
        assert "corrupted" not in res.stderr
        assert sorted(p.name for p in small.iterdir()) == ["filler"]
        (small / "filler").unlink()
        restore(archive, small / "data")


def test_include_dev_is_explicit(offline_instance: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = offline_instance
    archive = tmp_path / "with-dev.tar.gz"
    res = eport("backup", "--data-dir", str(data), "--out", str(archive), "--include-dev")
    assert "WARNING" in res.stderr and "in the clear" in res.stderr
    # An archive already there may be the last good backup: kept unless --force.
    kept, inode = archive.read_bytes(), archive.stat().st_ino
    again = eport("backup", "--data-dir", str(data), "--out", str(archive), check=False)
    assert refused(again, f"{archive} exists", "--force") and archive.read_bytes() == kept
    assert archive.stat().st_ino == inode
    eport("backup", "--data-dir", str(data), "--out", str(archive), "--include-dev", "--force")
    # written whole beside it, then renamed over it (the same second may give equal bytes)
    assert archive.stat().st_ino != inode
    assert "files/dev/DEV-ONLY-passphrases.toml" in members(archive)
    target = tmp_path / "restored"
    out = restore(archive, target).stdout
    assert (target / "dev" / ".complete").exists()
    assert "copy them back" not in out


def test_a_restored_dev_instance_is_not_called_a_failed_first_start(
    offline_instance: tuple[Path, Path], tmp_path: Path
) -> None:
    """A backup leaves dev/ out, so ``eport serve --dev`` on the restored instance found a
    CA without its development credentials and called it an interrupted first start:
    "remove that directory and start again", which would delete the restored CA. It now
    says to copy dev/ back first."""
    data, _ = offline_instance
    archive = tmp_path / "no-dev.tar.gz"
    eport("backup", "--data-dir", str(data), "--out", str(archive))
    target = tmp_path / "restored"
    restore(archive, target)
    res = eport("serve", "--dev", "--data-dir", str(target), "--port", "1", check=False)
    *warning, line = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(warning) == 1 and "development mode" in warning[0]
    assert line.startswith("eport: error: ") and "without its development credentials" in line
    assert line.index("copy the instance's dev/ back") < line.index("remove the directory")
    assert (target / "ca" / "root.crt").exists()


@pytest.mark.postgres
@pytest.mark.slow
def test_lost_database_postgres(postgres: Postgres, tmp_path: Path) -> None:
    source_db = postgres.createdb("eport_backup_source")
    data = tmp_path / "data"
    srv, proc = start_server(data, source_db)
    try:
        enroll_enterprise(srv, tmp_path, "Postgres Backup Co., Ltd.")
        state = tmp_path / "auditor-state.json"
        srv.eport("audit", "verify", "--state", str(state), *srv.auditor())
        before = tmp_path / "before.checkpoint"
        before.write_text(json.loads(state.read_text())["checkpoint"])
        archive = tmp_path / "pg.tar.gz"
        # The database URL's password reaches pg_dump in PGPASSWORD, never on its
        # command line, where ps shows it (it did: crash probe, session 26). The cluster
        # trusts local connections, so the password is only carried, not checked.
        from sqlalchemy.engine import make_url

        from ca.backup import pg_tool

        secret = "not-on-argv-7d1c"
        with_password = make_url(source_db).set(password=secret)
        seen = tmp_path / "pg_dump.seen"
        recorder = tmp_path / "pg-recorder"
        recorder.mkdir()
        (recorder / "pg_dump").write_text(
            f'#!/bin/sh\nprintf "%s\\n" "$*" >> {seen}\n'
            f'printf "PGPASSWORD=%s\\n" "$PGPASSWORD" >> {seen}\n'
            f'exec {pg_tool("pg_dump")} "$@"\n'
        )
        (recorder / "pg_dump").chmod(0o755)
        made = backup(
            data,
            archive,
            EPORT_DATABASE_URL=with_password.render_as_string(hide_password=False),
            EPORT_PG_BIN=str(recorder),
        )
        lines = seen.read_text().splitlines()
        assert f"PGPASSWORD={secret}" in lines, lines
        assert not any(secret in line for line in lines if not line.startswith("PGPASSWORD=")), (
            lines
        )
    finally:
        stop(proc)
    assert made["manifest"]["databases"]["ca"]["kind"] == "postgresql"
    assert "db/ca.pgdump" in members(archive)
    assert_no_dev_secret(archive, data / "dev")

    dev_copy = tmp_path / "dev-credentials"
    shutil.copytree(data / "dev", dev_copy)
    shutil.rmtree(data)
    # The old database still holds tables: not a target without --force.
    refused(
        restore(archive, data, check=False, EPORT_DATABASE_URL=source_db),
        "eport_backup_source",
        "not empty",
    )
    # A SQLite target for a PostgreSQL backup.
    refused(
        restore(archive, data, check=False),
        "postgresql",
        "EPORT_DATABASE_URL",
    )
    assert not data.exists()

    target_db = postgres.createdb("eport_backup_restored")
    done = json.loads(
        restore(
            archive, data, "--checkpoint", str(state), "--json", EPORT_DATABASE_URL=target_db
        ).stdout
    )
    assert done["lost_entries"] == 0 and done["entries"] == made["manifest"]["log"]["size"]
    # Several hosts may share this database: each needs this host's ca/ (docs/backup.md).
    assert any(f"copy {data}/ca/ over each one's ca/" in step for step in done["next"]), done
    shutil.copytree(dev_copy, data / "dev")
    srv, proc = start_server(data, target_db)
    try:
        doc = verify_full(srv.url, data / "dev", tmp_path / "s.json", before)
        assert doc["certificates"] == made["manifest"]["log"]["certificates"]
    finally:
        stop(proc)

    # --force over this instance keeps the database it replaces as a pg_dump, made before
    # the restore marks the directory: a dump that fails (a full disk) leaves the instance
    # as it was and servable, not "a restore interrupted halfway" (review probe 24).
    from ca.backup import pg_tool
    from ca.datalock import RESTORE_MARKER

    tools = tmp_path / "pg-bin"
    tools.mkdir()
    (tools / "pg_dump").write_text(
        "#!/bin/sh\necho 'pg_dump: error: could not write to output file: "
        "No space left on device' >&2\nexit 1\n"
    )
    (tools / "pg_dump").chmod(0o755)
    (tools / "pg_restore").symlink_to(pg_tool("pg_restore"))
    before_force = tree_digest(data)
    refused(
        restore(
            archive, data, "--force", check=False,
            EPORT_DATABASE_URL=target_db, EPORT_PG_BIN=str(tools),
        ),
        "No space left on device",
        "nothing was restored or replaced",
    )  # fmt: skip
    assert tree_digest(data) == before_force and not (data / RESTORE_MARKER).exists()
    done = json.loads(
        restore(archive, data, "--force", "--json", EPORT_DATABASE_URL=target_db).stdout
    )
    kept = [Path(p) for p in done["set_aside"]]
    assert any(p.name.startswith("ca-database.replaced-") for p in kept), kept
    assert all(p.exists() and p.stat().st_mode & 0o077 == 0 for p in kept), kept


def test_one_database_for_both_is_restored_into_one(postgres: Postgres, tmp_path: Path) -> None:
    """One PostgreSQL database served both services when the archive was made: restored
    with the token service's URL naming another database (or none: its SQLite file), its
    tables went into the CA's database and its own stayed empty, so sessions, refresh
    tokens, role grants and signing keys were lost without a word (PostgreSQL probe, F3).
    Refused before anything is written; restored into one, the token service keeps them."""
    shared = postgres.createdb("eport_shared_source")
    both = {"EPORT_DATABASE_URL": shared, "EPORT_AUTH_DATABASE_URL": shared}
    data = tmp_path / "data"
    srv, proc = start_server(data, shared, extra_env={"EPORT_AUTH_DATABASE_URL": shared})
    try:
        enroll_enterprise(srv, tmp_path, "Shared Database Co., Ltd.")
        archive = tmp_path / "shared.tar.gz"
        made = backup(data, archive, **both)
    finally:
        stop(proc)
    assert made["manifest"]["databases"]["auth"] == {"kind": "postgresql", "same_as": "ca"}
    target = postgres.createdb("eport_shared_target")
    apart = postgres.createdb("eport_shared_apart")
    restored = tmp_path / "restored"
    for auth in ({"EPORT_AUTH_DATABASE_URL": apart}, {}):
        refused(
            restore(archive, restored, check=False, EPORT_DATABASE_URL=target, **auth),
            "holds the token service's tables in the CA's database",
            "EPORT_AUTH_DATABASE_URL the same as EPORT_DATABASE_URL",
        )
        assert not restored.exists()
    restore(archive, restored, EPORT_DATABASE_URL=target, EPORT_AUTH_DATABASE_URL=target)
    from sqlalchemy import create_engine

    from ca.config import with_driver

    engine = create_engine(with_driver(target))
    try:
        with engine.connect() as conn:
            keys = conn.exec_driver_sql("SELECT count(*) FROM auth_signing_keys").scalar_one()
    finally:
        engine.dispose()
    assert keys > 0


@pytest.mark.slow
def test_lost_database_under_custody_restores_sealed(tmp_path: Path) -> None:
    """A production (joint custody) instance: the backup holds only wrapped keys; the
    restored server starts sealed, M custodians unseal it, the log verifies."""
    from tests.test_ca_init import init_ca, start_sealed, unseal

    data, out, _ = init_ca(tmp_path)
    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        for member in ("customs", "tax", "forex"):
            unseal(srv, out, member, fp)
        before = tmp_path / "before.checkpoint"
        before.write_bytes(requests.get(srv.url + "/ca/v1/audit/checkpoint", timeout=10).content)
        archive = tmp_path / "custody.tar.gz"
        # No passphrase, share or key is needed to back up: nothing is unwrapped.
        made = backup(data, archive)
    finally:
        stop(proc)
    assert made["manifest"]["custody"] is True
    items = members(archive)
    keys = [name for name in items if name.endswith(".key")]
    assert len(keys) >= 7
    for name in keys:
        assert items[name].startswith(b"-----BEGIN EPORT WRAPPED PRIVATE KEY-----"), name
    assert_no_secret(items.items(), [b"share passphrase of", b"officer passphrase"])

    shutil.rmtree(data)
    done = restore(archive, data, "--checkpoint", str(before))
    assert "starts SEALED" in done.stdout
    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        assert requests.get(srv.url + "/ca/v1/health", timeout=10).json()["sealed"] is True
        for member in ("commerce", "inspection", "customs"):
            unseal(srv, out, member, fp)
        assert requests.get(srv.url + "/ca/v1/health", timeout=10).json()["sealed"] is False
        officer = out / "officers" / "customs"
        res = srv.eport(
            "audit",
            "verify",
            "--full",
            "--since",
            str(before),
            "--state",
            str(tmp_path / "state.json"),
            "--cert",
            str(officer / "officer.pem"),
            "--key",
            str(officer / "officer.key"),
            "--json",
            EPORT_PASSPHRASE="officer passphrase",
        )
        doc = json.loads(res.stdout)
        assert doc["ok"] and doc["tree_size"] >= made["manifest"]["log"]["size"]
    finally:
        stop(proc)


def test_a_crash_s_leftover_temporary_files_are_not_backed_up(tmp_path: Path) -> None:
    """A crash in the middle of a durable write (custody record, a ceremony's files)
    leaves ``<name>.tmp-<pid>`` beside the file: a work file, left out of the archive
    like ``<name>.tmp``, so a restore never brings back half-written bytes."""
    data = tmp_path / "data"
    ensure_dev_ca(CAConfig(data_dir=data, dev=True))
    (data / "ca" / "custody.json.tmp-4242").write_bytes(b"{")
    (data / "ca" / "issuers" / "active.json.tmp-77").write_bytes(b"")
    (data / "ca" / "root.crl.tmp-91").write_bytes(b"0")  # a ceremony's restore, cut short
    archive = tmp_path / "eport.tar.gz"
    eport("backup", "--data-dir", str(data), "--out", str(archive))
    names = members(archive)
    assert not [n for n in names if ".tmp" in n], names
    assert "files/ca/root.crt" in names
