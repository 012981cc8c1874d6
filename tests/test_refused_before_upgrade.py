"""A start that is refused changes nothing: another CA's database, or a database of a
newer release, was refused only after ``eport serve`` had upgraded both schemas
(upgrade probe, finding 2). Each schema's recorded revision is left as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import start_server, stop
from tests.test_config_checks import refused, serve


def _version(db: Path, table: str) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute(f"SELECT version_num FROM {table}").fetchone()[0])


def _set_version(db: Path, table: str, version: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE {table} SET version_num = ?", (version,))


def _auth_as_left_at(data: Path, revision: str) -> None:
    """The token service's database of ``data`` taken down to ``revision`` by its own
    migrations, as a release of that revision left it."""
    from alembic import command

    from authsvc.app import MIGRATIONS
    from tests.test_upgrades import alembic_config

    command.downgrade(alembic_config(MIGRATIONS, f"sqlite:///{data / 'auth.db'}"), revision)


def test_nothing_is_upgraded_before_a_refusal(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for d in (ours, theirs):  # two development CAs, each made and stopped
        _, proc = start_server(d, workers=1)
        stop(proc)
    # Another CA's database, of an older schema revision (as an older release left it):
    # refused, and left at its revision.
    _set_version(theirs / "eport.db", "alembic_version", "0009")
    res = serve(ours, EPORT_DATABASE_URL=f"sqlite:///{theirs / 'eport.db'}")
    refused(res, "holds the records of another CA")
    assert _version(theirs / "eport.db", "alembic_version") == "0009"
    # Our own CA database from a newer release, our token service's from an older one:
    # refused for the newer one before the older is touched.
    _set_version(ours / "eport.db", "alembic_version", "9999")
    _set_version(ours / "auth.db", "authsvc_alembic_version", "a003")
    refused(serve(ours), "schema revision 9999, which this release does not know")
    assert _version(ours / "auth.db", "authsvc_alembic_version") == "a003"


def test_a_start_that_upgrades_says_so_first(tmp_path: Path) -> None:
    """An upgrade of a large database takes a while with nothing served: the start
    says which schema it upgrades, from what, before it does (upgrade probe, finding 3)."""
    data = tmp_path / "d"
    _, proc = start_server(data, workers=1)
    stop(proc)
    _auth_as_left_at(data, "a003")  # as a release before a004 left it
    srv, proc = start_server(data, workers=1)
    try:
        out = srv.log.read_text()
        said = "Upgrading the token service database schema from a003 to a005"
        assert said in out and out.index(said) < out.index("Serving the joint CA"), out
        assert "Upgrading the CA database" not in out
        assert _version(data / "auth.db", "authsvc_alembic_version") == "a005"
    finally:
        stop(proc)


def test_a_server_whose_database_another_release_upgraded_writes_nothing(
    tmp_path: Path,
) -> None:
    """An old server left running while a newer release upgraded the database went on
    writing by its old rules (upgrade probe, finding 1). A server now re-reads the schema
    revision every two seconds and, once it is not its own, refuses every write with a
    503 (reads go on); it writes again once the revision is its own."""
    import time

    import requests

    from ca.db import SCHEMA_HEAD
    from tests.helpers import fresh_uscc, jrun

    data = tmp_path / "d"
    srv, proc = start_server(data, workers=1)
    try:
        app = jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", "Before Co.")["id"]
        code = jrun(srv, "ra", "approve", app, *srv.officer())["enrollment_code"]
        _set_version(data / "eport.db", "alembic_version", "9999")  # a newer release's
        time.sleep(2.5)
        res = srv.eport("apply", "--uscc", fresh_uscc(), "--name", "After Co.", check=False)
        assert (
            res.returncode == 1
            and f"schema revision 9999, not this server's {SCHEMA_HEAD}" in res.stderr
        )
        out = tmp_path / "late"
        res = srv.eport(
            "enroll", "--code", code, "--profile", "enterprise", "--out", str(out), check=False
        )
        assert res.returncode == 1 and "nothing was issued" in res.stderr, res.stderr
        health = requests.get(srv.url + "/ca/v1/health", timeout=10)
        assert health.status_code == 200  # alive, and says why it is not ready
        assert health.json()["database"] == "upgraded", health.text
        assert any("schema revision 9999" in w for w in health.json()["warnings"])
        # not ready: a load balancer sends writes to the hosts of the new release
        assert requests.get(srv.url + "/ca/v1/health?ready", timeout=10).status_code == 503
        assert jrun(srv, "application", "show", app)["state"] == "approved"
        _set_version(data / "eport.db", "alembic_version", SCHEMA_HEAD)
        time.sleep(2.5)
        jrun(srv, "enroll", "--code", code, "--profile", "enterprise", "--out", str(out))
        assert requests.get(srv.url + "/ca/v1/health?ready", timeout=10).status_code == 200
    finally:
        stop(proc)


def test_a_token_service_whose_database_another_release_upgraded_writes_nothing(
    tmp_path: Path,
) -> None:
    """The CA's store refused to write under another release's schema; the token
    service's went on writing sessions, refresh tokens and logouts (PostgreSQL probe, F5).
    It now re-reads its own schema revision as the CA's does and refuses every write (a
    login: one line, nothing stored); it writes again once the revision is its own."""
    import time

    from authsvc.app import SCHEMA_HEAD as AUTH_HEAD
    from authsvc.app import VERSION_TABLE as AUTH_TABLE
    from tests.helpers import creds, enroll_enterprise

    data = tmp_path / "d"
    srv, proc = start_server(data, workers=1)
    try:
        ent = enroll_enterprise(srv, tmp_path, "Token Fence Co.")
        cfg = tmp_path / "cfg"
        srv.eport("login", *creds(ent), EPORT_CONFIG_DIR=str(cfg))
        _set_version(data / "auth.db", AUTH_TABLE, "a999")  # a newer release's
        time.sleep(2.5)
        res = srv.eport("login", *creds(ent), check=False, EPORT_CONFIG_DIR=str(cfg))
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"schema revision a999, not this server's {AUTH_HEAD}" in res.stderr, res.stderr
        with sqlite3.connect(data / "auth.db") as conn:
            (sessions,) = conn.execute("SELECT count(*) FROM auth_sessions").fetchone()
        assert sessions == 1  # the first login's, and nothing more
        _set_version(data / "auth.db", AUTH_TABLE, AUTH_HEAD)
        time.sleep(2.5)
        srv.eport("login", *creds(ent), EPORT_CONFIG_DIR=str(cfg))
    finally:
        stop(proc)


def test_a_start_refused_for_a_passphrase_or_a_template_upgrades_nothing(
    tmp_path: Path,
) -> None:
    """A wrong EPORT_AUTH_KEY_PASSPHRASE, or a profile whose template pkilint refuses, was
    refused only after both schemas were upgraded: the release before could not run
    again (upgrade probe, session 27). Now each is refused with both left as they were."""
    import shutil

    data = tmp_path / "d"
    _, proc = start_server(data, workers=1)
    stop(proc)
    _auth_as_left_at(data, "a004")  # as the release before a005 left it
    res = serve(data, EPORT_AUTH_KEY_PASSPHRASE="not the passphrase of these keys")
    refused(res, "EPORT_AUTH_KEY_PASSPHRASE does not open")
    assert "Upgrading" not in res.stdout, res.stdout
    assert _version(data / "auth.db", "authsvc_alembic_version") == "a004"
    policies = tmp_path / "policies"
    shutil.copytree(Path(__file__).resolve().parents[1] / "policies", policies)
    service = policies / "profiles" / "service-tls.toml"
    text = service.read_text()
    assert text.count('san_dns = ["{service_host}"]') == 1
    service.write_text(
        text.replace('san_dns = ["{service_host}"]', 'san_dns = ["bad host {service_host}"]')
    )
    res = serve(data, EPORT_POLICIES_DIR=str(policies))
    refused(res, "profile 'service-tls': its certificate template does not lint")
    assert "Upgrading" not in res.stdout, res.stdout
    assert _version(data / "auth.db", "authsvc_alembic_version") == "a004"
    # The same start with the right settings upgrades it.
    _, proc = start_server(data, workers=1)
    stop(proc)
    assert _version(data / "auth.db", "authsvc_alembic_version") == "a005"
