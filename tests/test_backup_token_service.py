"""Backup and restore of a token service run apart (docs/backup.md, "A token service's
own data directory"): its host holds its own database (the encrypted token-signing keys,
sessions, role grants, OpenID Connect clients) and copies of the CA's public files, and
no CA. ``eport backup`` of that directory while ``eport serve --only auth`` runs on it;
the host lost; ``eport restore`` into a fresh directory; the token service started again
on it: a token issued before the backup still validates (the same signing keys), the
user's session refreshes (``eport token``), the operator's role grant holds. On SQLite
and on a real PostgreSQL 15 (pg_dump / pg_restore, as the CA's databases).

And what a restore refuses, each in one line, changing nothing: a token service's
archive into a CA's directory or database, a CA's archive into a token service's
directory, the CA's log options for an archive without a log, an archive of the token
service of another CA over this one, one holding a CA's key, a restore under a running
token service.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.conftest import Postgres, Server, base_env, free_port, stop
from tests.helpers import SERVICE_HOST, assert_no_secret, creds, enroll_enterprise, jrun
from tests.test_apart import AUTH_PASSPHRASE, copy_public_files, serve_auth, serve_ca_alone
from tests.test_backup import backup, eport, members, refused, repack, restore, tree_digest

SERVICE = "customs-declaration"
assert SERVICE_HOST.startswith(SERVICE + ".")


def auth_env(port: int, **extra: str) -> dict[str, str]:
    """The token service alone's settings: status by OCSP, its key passphrase, its address."""
    return base_env() | {
        "EPORT_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "EPORT_AUTH_STATUS_MODE": "ocsp",
        "EPORT_AUTH_KEY_PASSPHRASE": AUTH_PASSPHRASE,
        **extra,
    }


def kids(url: str) -> set[str]:
    keys = requests.get(url + "/auth/jwks.json", timeout=10).json()["keys"]
    return {str(k["kid"]) for k in keys}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_token_service_s_host_is_backed_up_and_restored(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db_env: dict[str, str] = {}
    restored_env: dict[str, str] = {}
    if kind == "postgresql":
        pg: Postgres = request.getfixturevalue("postgres")
        db_env = {"EPORT_AUTH_DATABASE_URL": pg.createdb("eport_auth_apart_source")}
        restored_env = {"EPORT_AUTH_DATABASE_URL": pg.createdb("eport_auth_apart_restored")}
    ca_port, auth_port = free_port(), free_port()
    ca_data, auth_data = tmp_path / "ca-data", tmp_path / "auth-data"
    ca_srv, ca_proc = serve_ca_alone(
        ca_data, ca_port, EPORT_STATUS_BASE_URL=f"http://127.0.0.1:{ca_port}"
    )
    auth_proc = None
    try:
        copy_public_files(ca_data, auth_data)
        env = auth_env(auth_port, **db_env)
        auth_proc = serve_auth(auth_data, auth_port, env, tmp_path / "auth.log")
        auth = Server(f"http://127.0.0.1:{auth_port}", ca_data, ca_srv.database_url, ca_srv.log)
        ent = enroll_enterprise(ca_srv, tmp_path, f"Apart Backup {kind} Co.")
        grant = jrun(ca_srv, "operator", "add", "--name", "Backup Op", "--id", "B1", *creds(ent))
        op = tmp_path / "op"
        code = grant["enrollment_code"]
        jrun(ca_srv, "enroll", "--code", code, "--profile", "operator", "--out", str(op))
        # the CA's URL beside the token service's: the grant names the operator's authorization
        auth.eport("roles", "grant", "--operator", "B1", "--role", "declaration", *creds(ent),
                   EPORT_CA_SERVER=ca_srv.url)  # fmt: skip
        cfg = str(tmp_path / "cfg")
        auth.eport("login", *creds(op), EPORT_CONFIG_DIR=cfg)
        token = auth.eport("token", "--service", SERVICE, EPORT_CONFIG_DIR=cfg).stdout.strip()
        headers = {"Authorization": f"Bearer {token}", "X-Eport-Service": SERVICE}
        r = requests.get(auth.url + "/auth/validate", headers=headers, timeout=30)
        assert r.status_code == 200, r.status_code
        signing_keys = kids(auth.url)

        # Backed up while it runs; the output says what kind of backup it is
        archive = tmp_path / "auth-backup.tar.gz"
        made = backup(auth_data, archive, **db_env)
        assert made["instance"] == "token-service"
        assert made["manifest"]["instance"] == "token-service"
        assert made["manifest"]["log"] is None
        assert list(made["manifest"]["databases"]) == ["auth"]
        assert made["manifest"]["databases"]["auth"]["kind"] == kind
        said = eport(
            "backup", "--data-dir", str(auth_data), "--out", str(tmp_path / "b.tar.gz"), **db_env
        ).stdout
        assert "a token service's backup" in said and "token-signing keys" in said, said
    finally:
        if auth_proc is not None:
            stop(auth_proc)
    try:
        held = members(archive)
        ext = "sqlite" if kind == "sqlite" else "pgdump"
        assert sorted(held) == sorted(
            [
                "manifest.json",
                f"db/auth.{ext}",
                "files/ca/root.crt",
                "files/ca/root.crl",
                *(f"files/ca/issuers/{p.name}" for p in (auth_data / "ca" / "issuers").iterdir()),
            ]
        )
        # the signing keys are there encrypted only (never a clear PEM private key)
        assert_no_secret(held.items(), [AUTH_PASSPHRASE.encode()])
        assert (archive.stat().st_mode & 0o777) == 0o600

        # The host is lost: restored into a fresh directory (and, on PostgreSQL, database)
        new_data = tmp_path / "auth-restored"
        res = restore(archive, new_data, **restored_env)
        assert "token service's backup" in res.stdout and "auth database" in res.stdout, res
        assert "eport serve --only auth" in res.stdout
        assert not (new_data / "eport.db").exists()
        assert tree_digest(new_data / "ca") == tree_digest(auth_data / "ca")
        env = auth_env(auth_port, **restored_env)  # the same address: the tokens' issuer
        auth_proc = serve_auth(new_data, auth_port, env, tmp_path / "auth-restored.log")
        assert kids(auth.url) == signing_keys
        # A token issued before the backup validates: the token-signing keys survived
        r = requests.get(auth.url + "/auth/validate", headers=headers, timeout=30)
        assert r.status_code == 200, r.status_code
        # The session survived: the CLI refreshes it (the role grant too: the token names it)
        again = auth.eport("token", "--service", SERVICE, EPORT_CONFIG_DIR=cfg).stdout.strip()
        fresh = {"Authorization": f"Bearer {again}", "X-Eport-Service": SERVICE}
        r = requests.get(auth.url + "/auth/validate", headers=fresh, timeout=30)
        assert r.status_code == 200, r.status_code
        assert "Traceback" not in (tmp_path / "auth-restored.log").read_text()
    finally:
        if auth_proc is not None:
            stop(auth_proc)
        stop(ca_proc)


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A development CA's directory and its archive, a token service's own directory (the
    CA's public files, its database) and its archive; and the archive of the token
    service of another CA. Made offline: the token service's database by its migrations."""
    from authsvc.app import upgrade
    from ca.config import CAConfig
    from ca.devinit import ensure_dev_ca

    base = tmp_path_factory.mktemp("token-service-archives")
    out: dict[str, Path] = {}
    for name in ("", "other-"):
        ca = base / f"{name}ca-data"
        ensure_dev_ca(CAConfig.load({"data_dir": ca, "dev": True}, environ={}))
        auth = base / f"{name}auth-data"
        copy_public_files(ca, auth)
        upgrade(f"sqlite:///{auth / 'auth.db'}")
        out[f"{name}ca"], out[f"{name}auth"] = ca, auth
        for what in ("ca", "auth"):
            archive = base / f"{name}{what}.tar.gz"
            eport("backup", "--data-dir", str(out[f"{name}{what}"]), "--out", str(archive))
            out[f"{name}{what}-archive"] = archive
    return out


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def contents(root: Path) -> dict[str, str]:
    """:func:`tree_digest` without the empty lock a restore takes (ca.datalock)."""
    return {k: v for k, v in tree_digest(root).items() if k != "serve.lock"}


def test_archives_of_a_ca_and_of_a_token_service_are_never_crossed(
    instances: dict[str, Path], tmp_path: Path
) -> None:
    ca = copy_of(instances["ca"], tmp_path / "ca")
    auth = copy_of(instances["auth"], tmp_path / "auth")
    ca_before, auth_before = contents(ca), contents(auth)
    for force in ((), ("--force",)):
        # A token service's archive is never restored as a CA
        res = restore(instances["auth-archive"], ca, *force, check=False)
        refused(res, "is a token service's backup", f"{ca} holds a CA")
        # Nor a CA's into a token service's directory
        res = restore(instances["ca-archive"], auth, *force, check=False)
        refused(res, f"{auth} is a token service's data directory", "is a CA's backup")
    assert contents(ca) == ca_before and contents(auth) == auth_before
    # Nor into the CA's database, named by the settings, in an empty directory
    empty = tmp_path / "empty"
    shared = f"sqlite:///{tmp_path / 'one.db'}"
    res = restore(
        instances["auth-archive"],
        empty,
        check=False,
        EPORT_DATABASE_URL=shared,
        EPORT_AUTH_DATABASE_URL=shared,
    )
    refused(res, "EPORT_AUTH_DATABASE_URL names the CA's database")
    assert not empty.exists() and not (tmp_path / "one.db").exists()
    # A token service's archive has no log to prove: the log's options are refused
    for option in (("--checkpoint", str(tmp_path / "cp.txt")), ("--accept-loss",)):
        res = restore(instances["auth-archive"], empty, *option, check=False)
        refused(res, f"{option[0]}: for a CA's log", "token service's backup")
        assert not empty.exists()


def test_a_token_service_s_restore_keeps_the_ca_s_safety_rules(
    instances: dict[str, Path], tmp_path: Path
) -> None:
    from ca.datalock import hold_for_serving

    auth = copy_of(instances["auth"], tmp_path / "auth")
    before = contents(auth)
    archive = instances["auth-archive"]
    # Not over a directory in use without --force
    refused(restore(archive, auth, check=False), "not empty", "token service's database")
    # Never under a running token service (it holds the directory's lock for its life)
    fd = hold_for_serving(auth)
    try:
        refused(restore(archive, auth, "--force", check=False), "a server is running on")
    finally:
        os.close(fd)
    # Never over the token service of another CA
    other = instances["other-auth-archive"]
    refused(restore(other, auth, "--force", check=False), "this archive is of another CA")
    assert contents(auth) == before
    # A token service's archive holding a CA's key is refused as such, before anything
    forged = tmp_path / "forged.tar.gz"
    doc = json.loads(members(archive)["manifest.json"])
    key = b"a CA's root key (sealed)"
    doc["members"]["files/ca/root.key"] = {
        "sha256": hashlib.sha256(key).hexdigest(),
        "size": len(key),
        "mode": 0o600,
    }
    repack(
        archive,
        forged,
        {"manifest.json": json.dumps(doc).encode(), "files/ca/root.key": key},
        rehash=False,
    )
    refused(restore(forged, tmp_path / "t1", check=False), "holding files of a CA")
    assert not (tmp_path / "t1").exists()
    # With --force: what it replaces is kept, not deleted; the restored directory is served
    res = json.loads(restore(archive, auth, "--force", "--json").stdout)
    assert res["instance"] == "token-service" and len(res["set_aside"]) == 2, res
    kept = {Path(p).name.split(".replaced-")[0] for p in res["set_aside"]}
    assert kept == {"ca", "auth.db"}
    for p in res["set_aside"]:
        assert Path(p).exists()
    assert not (auth / "restore.incomplete").exists()
    assert tree_digest(auth / "ca") == tree_digest(instances["auth"] / "ca")
