"""What ``eport restore`` must refuse before it writes anything, found by probing backup
and restore: an archive of another CA or log (even with ``--accept-loss``), an archive
whose database and ``ca/`` files belong to different CAs, a malformed manifest; and
what ``eport backup`` must refuse: a data directory whose restore never finished.

Each archive is forged here from a real backup, its manifest re-hashed as a forger
would; each refusal is one ``eport: error:`` line, exit 1, the target unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ca.config import CAConfig
from ca.devinit import ensure_dev_ca
from tests.conftest import start_server, stop
from tests.helpers import enroll_enterprise
from tests.test_backup import eport, members, refused, restore, tree_digest


def forge(
    archive: Path,
    out: Path,
    changed: dict[str, bytes] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    modes: dict[str, int] | None = None,
) -> Path:
    """``archive`` with members replaced or added (``changed``), its manifest re-hashed to
    match, then edited by ``edit``: what someone doctoring a backup would do."""
    items = members(archive)
    items.update(changed or {})
    manifest = json.loads(items.pop("manifest.json"))
    for name, data in items.items():
        meta = manifest["members"].setdefault(name, {"mode": 0o600})
        meta.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    if edit is not None:
        edit(manifest)
    with tarfile.open(out, "w:gz") as tar:
        for name, data in [("manifest.json", json.dumps(manifest).encode()), *items.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = (modes or {}).get(name, 0o600)
            tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two unrelated development CAs (other roots, other log keys), a backup of each, and
    an auditor's state file of the first (it pins the first CA's log key), made by
    ``eport audit verify`` against its running server."""
    root = tmp_path_factory.mktemp("two-cas")
    out: dict[str, Path] = {}
    for name in ("a", "b"):
        data = root / name
        ensure_dev_ca(CAConfig(data_dir=data, dev=True))
        out[name] = data
    srv, proc = start_server(out["a"], workers=1)
    try:
        enroll_enterprise(srv, root, "Restore Checks Co., Ltd.")  # a's log is the longer
        state = root / "auditor-a.json"
        srv.eport("audit", "verify", "--state", str(state), *srv.auditor())
    finally:
        stop(proc)
    out["state"] = state
    for name in ("a", "b"):
        archive = root / f"{name}.tar.gz"
        eport("backup", "--data-dir", str(out[name]), "--out", str(archive))
        out[f"{name}.tar.gz"] = archive
    return out


def test_an_archive_of_another_log_is_refused_whatever_accept_loss_says(
    two_cas: dict[str, Path], tmp_path: Path
) -> None:
    """The auditor's state file pins CA a's log key; CA b's archive (its checkpoint signed
    by b's own key) was restored and called "N entries lost" with
    --accept-loss. Now it is refused in one line, with --checkpoint or --log-key, and so
    is a's own archive whose log key was swapped for another (a forger's)."""
    state, a_archive, b_archive = two_cas["state"], two_cas["a.tar.gz"], two_cas["b.tar.gz"]
    b_log = json.loads(members(b_archive)["manifest.json"])["log"]
    # b never served a checkpoint, but its first was signed as it was made (the log's
    # name, tests/test_log_origin.py): by b's own key, which the state does not pin
    assert b_log["checkpoint"] is not None and b_log["size"] > 0
    assert json.loads(state.read_text())["tree_size"] > b_log["size"]  # "entries lost"
    target = tmp_path / "restored"
    for args in (
        ("--checkpoint", str(state), "--accept-loss"),
        ("--checkpoint", str(state)),
        ("--log-key", str(two_cas["a"] / "ca" / "log.pub"), "--accept-loss"),
    ):
        refused(restore(b_archive, target, *args, check=False), "this archive is of another CA/log")
        assert not target.exists(), args

    # a's archive with its log key replaced and its checkpoint dropped, re-hashed.
    swapped = forge(
        a_archive,
        tmp_path / "swapped.tar.gz",
        {"files/ca/log.pub": (two_cas["b"] / "ca" / "log.pub").read_bytes()},
        lambda m: m["log"].update(checkpoint=None),
    )
    refused(
        restore(swapped, target, "--checkpoint", str(state), "--accept-loss", check=False),
        "this archive is of another CA/log",
        "the key pinned in the state file",
    )
    assert not target.exists()
    # The CA's own archive still restores against the auditor's state.
    done = json.loads(restore(a_archive, target, "--checkpoint", str(state), "--json").stdout)
    assert done["ok"] and done["lost_entries"] == 0


def test_force_never_replaces_an_instance_with_another_ca(
    two_cas: dict[str, Path], tmp_path: Path
) -> None:
    """--force --accept-loss over a's instance with b's archive replaced a by b ("N entries
    would be lost"); now refused in one line, the instance byte for byte unchanged."""
    instance = tmp_path / "a"
    shutil.copytree(two_cas["a"], instance)
    before = tree_digest(instance)
    refused(
        restore(two_cas["b.tar.gz"], instance, "--force", "--accept-loss", check=False),
        "this archive is of another CA",
        "is not the root of the instance",
    )
    assert tree_digest(instance) == before
    # Without its ca/ (lost), the database being replaced still names its root.
    shutil.rmtree(instance / "ca")
    before = tree_digest(instance)
    refused(
        restore(two_cas["b.tar.gz"], instance, "--force", "--accept-loss", check=False),
        "this archive is of another CA",
        "not among the roots the database being replaced records",
    )
    assert tree_digest(instance) == before
    # Its own archive replaces it.
    restore(two_cas["a.tar.gz"], instance, "--force", "--accept-loss")


def test_an_archive_mixing_two_cas_is_refused_before_anything_is_written(
    two_cas: dict[str, Path], tmp_path: Path
) -> None:
    """a's databases with b's ca/ files, the manifest re-hashed (and its checkpoint, which
    b's log key does not verify, dropped): restore said "Restored ..." and only `eport
    serve` refused the result ("holds the records of another CA"). Now the restore makes
    that check first: one line, nothing written, even with --force over an instance."""
    b_files = {n: d for n, d in members(two_cas["b.tar.gz"]).items() if n.startswith("files/")}
    mixed = forge(
        two_cas["a.tar.gz"],
        tmp_path / "mixed.tar.gz",
        b_files,
        lambda m: m["log"].update(checkpoint=None),
    )
    target = tmp_path / "restored"
    refused(restore(mixed, target, check=False), "holds the records of another CA")
    assert not target.exists()
    instance = tmp_path / "b"
    shutil.copytree(two_cas["b"], instance)
    (instance / "serve.lock").touch()  # the directory's lock, which any restore takes
    before = tree_digest(instance)
    refused(
        restore(mixed, instance, "--force", "--accept-loss", check=False),
        "holds the records of another CA",
        "files/ca/root.crt",
    )
    assert tree_digest(instance) == before


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit of the manifest: ``value`` at ``manifest[keys[0]][keys[1]]...``."""

    def edit(manifest: dict[str, Any]) -> None:
        node = manifest
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("no-databases", _set("databases", value={}), "no CA database"),
    ("ca-a-string", _set("databases", "ca", value="sqlite"), "databases.ca is not a database"),
    ("kind-unknown", _set("databases", "ca", "kind", value="mysql"), "known kind"),
    (
        "ca-member-elsewhere",
        _set("databases", "ca", "member", value="files/ca/root.crt"),
        "databases.ca",
    ),
    (
        "same-as-nowhere",
        _set("databases", "auth", value={"kind": "sqlite", "same_as": "zzz"}),
        "same_as",
    ),
    (
        "auth-in-ca-member",
        _set("databases", "auth", value={"kind": "sqlite", "member": "db/ca.sqlite"}),
        "databases.auth does not name its own member db/auth.sqlite",
    ),
    ("log-empty", _set("log", value={}), "the log is not"),
    ("log-null", _set("log", value=None), "the log is not"),
    ("log-size-text", _set("log", "size", value="x"), "the log is not"),
    ("checkpoint-number", _set("log", "checkpoint", value=7), "the log is not"),
    (
        "mode-text",
        _set("members", "files/ca/root.crt", "mode", value="abc"),
        "the mode of files/ca/root.crt",
    ),
    ("mode-7777", _set("members", "files/ca/root.key", "mode", value=0o7777), "0o7777"),
    ("mode-777", _set("members", "files/ca/root.key", "mode", value=0o777), "0o777"),
    (
        "size-null",
        _set("members", "files/ca/root.crt", "size", value=None),
        "size of files/ca/root.crt",
    ),
]


@pytest.mark.parametrize(
    ("edit", "needle"), [(e, n) for _, e, n in MALFORMED], ids=[i for i, _, _ in MALFORMED]
)
def test_a_malformed_manifest_is_one_line_and_writes_nothing(
    two_cas: dict[str, Path], tmp_path: Path, edit: Callable[[dict[str, Any]], None], needle: str
) -> None:
    """Each of these gave "eport: unexpected error: KeyError/TypeError/..." (one left a
    half-restored directory after writing restore.incomplete; mode 0o7777 restored
    root.key as 0777). Now one line naming what is wrong, exit 1, nothing written: into
    an empty target, nor over an instance with --force."""
    bad = forge(two_cas["a.tar.gz"], tmp_path / "bad.tar.gz", edit=edit)
    target = tmp_path / "restored"
    res = restore(bad, target, check=False)
    assert res.returncode == 1
    refused(res, needle)
    assert not target.exists()
    instance = tmp_path / "a"
    shutil.copytree(two_cas["a"], instance)
    before = tree_digest(instance)
    refused(restore(bad, instance, "--force", check=False), needle)
    assert tree_digest(instance) == before
    assert not list(tmp_path.glob(".eport-restore-*"))


@pytest.mark.parametrize("extra", ["files/dev/x", "files/zzz/x", "db/x", "files/ca/x.tmp"])
def test_a_member_the_restore_does_not_place_is_refused(
    two_cas: dict[str, Path], tmp_path: Path, extra: str
) -> None:
    """Extra members (re-hashed into the manifest) were placed (dev/x into a custody
    instance) or silently ignored; now refused, nothing written."""
    bad = forge(two_cas["a.tar.gz"], tmp_path / "extra.tar.gz", {extra: b"x\n"})
    target = tmp_path / "restored"
    refused(
        restore(bad, target, check=False),
        "malformed manifest",
        f"{extra} is not a member a restore puts in place",
    )
    assert not target.exists()


def test_database_members_must_be_databases(two_cas: dict[str, Path], tmp_path: Path) -> None:
    """A CA database member that is not SQLite, or SQLite without the CA's tables, gave
    "unexpected error: DatabaseError"; now one line, nothing written."""
    target = tmp_path / "restored"
    text_db = forge(two_cas["a.tar.gz"], tmp_path / "t.tar.gz", {"db/ca.sqlite": b"no\n"})
    refused(restore(text_db, target, check=False), "db/ca.sqlite (the ca database) is not a")
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
    empty_db = forge(
        two_cas["a.tar.gz"],
        tmp_path / "e.tar.gz",
        {"db/ca.sqlite": empty.read_bytes()},
        lambda m: m["log"].update(checkpoint=None),
    )
    refused(restore(empty_db, target, check=False), "cannot be read as an eport CA database")
    assert not target.exists()


def test_backup_refuses_a_directory_whose_restore_did_not_finish(
    two_cas: dict[str, Path], tmp_path: Path
) -> None:
    """A restore killed halfway leaves restore.incomplete, and `eport serve` refuses the
    directory; `eport backup` archived it without a word ("Backed up ..."), making a
    possibly mixed snapshot the last good backup. Now refused in one line naming the
    file and the way out; no archive, not even --out's directory, is made. Once the
    restore is finished with --force, the backup is made."""
    data = tmp_path / "data"
    restore(two_cas["a.tar.gz"], data)
    (data / "restore.incomplete").write_text("an eport restore began here\n")
    out = tmp_path / "backups" / "eport.tar.gz"
    res = eport("backup", "--data-dir", str(data), "--out", str(out), check=False)
    assert res.returncode == 1
    refused(res, f"{data / 'restore.incomplete'}", "did not finish", "--force")
    assert not out.parent.exists()
    restore(two_cas["a.tar.gz"], data, "--force")
    eport("backup", "--data-dir", str(data), "--out", str(out))
    assert out.is_file()


@pytest.mark.slow
def test_a_key_pinned_before_the_log_key_s_rotation_is_followed_by_its_hand_over(
    tmp_path: Path,
) -> None:
    """A real ROTATE-LOG-KEY after an auditor pinned the old key: a backup made after it
    holds the new log.pub, and the restore follows the log's hand-over checkpoint (signed
    by both keys, in the archive's database) from the pinned key to it. The same archive
    with another log.pub (its own checkpoint dropped) is refused: the hand-over leads
    elsewhere."""
    from tests.test_custody_ceremonies import audit_verify, join, start, unsealed_custody_server

    with unsealed_custody_server(tmp_path / "custody") as (srv, out, _):
        state = tmp_path / "audit.json"
        old_key = audit_verify(srv, state)["log_key"]
        cid = str(start(srv, out, "ROTATE-LOG-KEY")["id"])
        for member in ("customs", "tax", "forex"):
            join(srv, out, cid, member)
        archive = tmp_path / "rotated.tar.gz"
        eport("backup", "--data-dir", str(srv.data_dir), "--out", str(archive))
    assert json.loads(state.read_text())["verifier_key"] == old_key
    assert any(n.startswith("files/ca/log-") for n in members(archive)), "a rotated key"

    done = restore(archive, tmp_path / "restored", "--checkpoint", str(state), "--json")
    assert json.loads(done.stdout)["lost_entries"] == 0
    # The old key as a PEM file (--log-key), with nothing in the archive naming the log
    # (its checkpoint dropped): the key is followed by its bytes all the same.
    [rotated] = [n for n in members(archive) if n.startswith("files/ca/log-")]
    old_pem = tmp_path / "old-log.pub"
    old_pem.write_bytes(members(archive)[rotated])
    unnamed = forge(
        archive, tmp_path / "unnamed.tar.gz", edit=lambda m: m["log"].update(checkpoint=None)
    )
    restore(unnamed, tmp_path / "restored-2", "--log-key", str(old_pem))

    stranger = tmp_path / "stranger"
    ensure_dev_ca(CAConfig(data_dir=stranger, dev=True))
    swapped = forge(
        archive,
        tmp_path / "swapped.tar.gz",
        {"files/ca/log.pub": (stranger / "ca" / "log.pub").read_bytes()},
        lambda m: m["log"].update(checkpoint=None),
    )
    target = tmp_path / "swapped-target"
    refused(
        restore(swapped, target, "--checkpoint", str(state), "--accept-loss", check=False),
        "this archive is of another CA/log",
        "no hand-over in its log leads from that key to it",
    )
    assert not target.exists()


@pytest.mark.slow
def test_a_replacement_of_the_log_key_is_followed_only_over_its_own_instance(
    tmp_path: Path,
) -> None:
    """REPLACE-LOG-KEY after an auditor pinned the old key: its hand-over is vouched for by
    the root key, not signed by the old one. Restored over the instance (--force), whose
    root is checked first, the replacement is followed from the pinned key; into a new
    directory the archive's own root would vouch for its own log key, so it is refused."""
    from tests.test_custody_ceremonies import audit_verify, join, start, unsealed_custody_server

    with unsealed_custody_server(tmp_path / "custody") as (srv, out, _):
        state = tmp_path / "audit.json"
        audit_verify(srv, state)
        cid = str(start(srv, out, "REPLACE-LOG-KEY")["id"])
        for member in ("customs", "tax", "forex"):
            join(srv, out, cid, member)
        archive = tmp_path / "replaced.tar.gz"
        eport("backup", "--data-dir", str(srv.data_dir), "--out", str(archive))
        data = srv.data_dir
    target = tmp_path / "elsewhere"
    refused(
        restore(archive, target, "--checkpoint", str(state), check=False),
        "this archive is of another CA/log",
    )
    assert not target.exists()
    done = restore(archive, data, "--force", "--checkpoint", str(state), "--json")
    assert json.loads(done.stdout)["lost_entries"] == 0
