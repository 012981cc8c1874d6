"""Upgrades keep data: a database made by an older release, with real rows in it, is
brought to today's schema by ``eport serve`` without loss, and the CA and the token
service go on working on it. No old checkout is needed: a CA is made and used at head,
its database taken down to each older revision with the migrations' own downgrades
and up again, and every row compared; a schema built revision by revision from an empty
database is compared with the models. On SQLite and a real PostgreSQL."""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, inspect, text

import authsvc.oidc_models  # noqa: F401  (the token service's OpenID Connect tables)
import ca.custody_models  # noqa: F401  (the CA's custody tables)
from authsvc.app import MIGRATIONS as AUTH_MIGRATIONS
from authsvc.app import VERSION_TABLE as AUTH_VERSION_TABLE
from authsvc.app import upgrade as auth_upgrade
from authsvc.models import AuthBase
from ca.db import MIGRATIONS as CA_MIGRATIONS
from ca.db import upgrade as ca_upgrade
from ca.models import Base
from tests import conftest
from tests.conftest import EPORT, Postgres, base_env, start_server, stop
from tests.helpers import (
    cert_of,
    creds,
    enroll_enterprise,
    enroll_operator,
    fresh_uscc,
    jrun,
    serial_of,
)

CA_REVISIONS = [
    "0001",
    "0002",
    "0003",
    "0004",
    "0005",
    "0006",
    "0007",
    "0008",
    "0009",
    "0010",
    "0011",
]
"""Every CA revision before head (0011)."""
AUTH_REVISIONS = ["a001", "a002", "a003", "a004"]
"""Every token service revision before head (a005)."""
SERVICE = "customs-declaration"
_databases = itertools.count()


def alembic_config(migrations: Path, url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def rows(url: str) -> dict[str, list[str]]:
    """Every row of every table but Alembic's, each as sorted JSON of its columns."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            out: dict[str, list[str]] = {}
            for table in insp.get_table_names():
                if table.endswith("alembic_version"):
                    continue
                got = conn.execute(text(f"SELECT * FROM {table}")).mappings().all()
                out[table] = sorted(
                    json.dumps(dict(r), sort_keys=True, default=_plain) for r in got
                )
            return out
    finally:
        engine.dispose()


def _plain(value: object) -> str:
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return repr(value)


def without(snapshot: dict[str, list[str]], table: str, *columns: str) -> dict[str, list[str]]:
    """``snapshot`` with ``columns`` of ``table`` left out."""
    out = dict(snapshot)
    kept = []
    for row in snapshot[table]:
        doc = json.loads(row)
        for c in columns:
            doc.pop(c, None)
        kept.append(json.dumps(doc, sort_keys=True))
    out[table] = sorted(kept)
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str:
    """A new empty CA database: a PostgreSQL one, or "" for the data directory's SQLite."""
    if request.param == "sqlite":
        return ""
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.createdb(f"eport_upgrades_{next(_databases)}")


@pytest.fixture
def same_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Servers started by this test listen on one port: a restarted development CA keeps
    the URLs its certificates name (OCSP) and its tokens' issuer, as after an upgrade."""
    port = conftest.free_port()
    monkeypatch.setattr(conftest, "free_port", lambda: port)
    yield port


@pytest.mark.slow
def test_an_upgrade_keeps_every_row_and_the_ca_works(
    database: str, tmp_path: Path, same_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CA used at head (certificates good, revoked, on hold; a withdrawn code, and an
    approved application's unused one; an operator's session and token) is taken down to
    0009, 0008, 0007, 0006, 0005, 0004, 0003 and 0002 and up again each time: every row is as it
    was (a code withdrawn since 0004 stays unusable below it; the record of the CA files,
    new in 0007, goes with its tables and is made again by the next start; each event's log
    index, dropped below 0008, is filled again from the log, and each application's and
    certificate's listing key, dropped below 0009, from the events), and the server started
    again on it
    lists the
    certificates, answers their status by OCSP, passes a full audit, keeps the session
    and the token, refuses the withdrawn code and issues on the unused one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # every eport run's files (session, audit state)
    data = tmp_path / "data"
    env = {"HOME": str(home)}
    srv, proc = start_server(data, database, workers=1, extra_env=env)
    try:
        ent = enroll_enterprise(srv, tmp_path, "Upgrade Trading Co., Ltd.", **env)
        op = enroll_operator(srv, ent, tmp_path, "U1", "declaration")
        revoked = enroll_operator(srv, ent, tmp_path, "U2")
        srv.eport("revoke", "--reason", "keyCompromise", *creds(revoked))
        held = enroll_operator(srv, ent, tmp_path, "U3")
        srv.eport("suspend", *creds(held))
        app = jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", "Later Trading Co., Ltd.")
        withdrawn = jrun(srv, "ra", "approve", app["id"], *srv.officer())["enrollment_code"]
        unused = jrun(srv, "ra", "new-code", app["id"], *srv.officer())["enrollment_code"]
        srv.eport("login", *creds(op), **env)
        token = srv.eport("token", "--service", SERVICE, **env).stdout.strip()
    finally:
        stop(proc)

    ca_url = srv.database_url
    auth_url = f"sqlite:///{data / 'auth.db'}"
    ca_before, auth_before = rows(ca_url), rows(auth_url)
    assert len(ca_before["certificates"]) > 10 and ca_before["log_entries"]
    assert any('"withdrawn_at": null' not in r for r in ca_before["enrollment_codes"])
    assert auth_before["auth_sessions"] and auth_before["auth_signing_keys"]

    record = ("hierarchy_head", "hierarchy_files")  # 0007: the CA files every host shares
    assert all(ca_before[t] for t in record)
    record_before = {t: ca_before.pop(t) for t in record}
    ca_cfg = alembic_config(CA_MIGRATIONS, ca_url)
    # 0001 has no certificate status and no log: a CA cannot run on what it keeps.
    for rev in reversed(CA_REVISIONS[1:]):
        command.downgrade(ca_cfg, rev)
        ca_upgrade(ca_url)
        after = rows(ca_url)
        kept = {t: after.pop(t) for t in record}  # dropped below 0007, else as it was
        assert kept == (record_before if rev >= "0007" else {t: [] for t in record}), rev
        if rev >= "0004":
            assert after == ca_before, rev
        else:  # the withdrawn mark is new in 0004: below it, a withdrawn code expires
            lost = ("withdrawn_at", "expires_at")
            assert without(after, "enrollment_codes", *lost) == without(
                ca_before, "enrollment_codes", *lost
            ), rev
            ca_before = after
    auth_cfg = alembic_config(AUTH_MIGRATIONS, auth_url)
    # The operator's grant is bound to its authorization (a005); below a005 the binding
    # is dropped, and bound again at the grant's next use (below).
    bound = "auth_operator_roles", "bound_authorization"
    assert all('"bound_authorization": null' not in r for r in auth_before[bound[0]])
    for rev in AUTH_REVISIONS:
        command.downgrade(auth_cfg, rev)
        auth_upgrade(auth_url)
        assert without(rows(auth_url), *bound) == without(auth_before, *bound), rev

    srv, proc = start_server(data, database, workers=1, extra_env=env)
    try:
        assert all(rows(ca_url)[t] for t in record)  # made again from the data directory
        listed = srv.eport("cert", "list", "--uscc", app_uscc(ent), *creds(ent)).stdout
        assert serial_of(ent) in listed and serial_of(op) in listed, listed
        assert srv.eport("status", "--cert", str(ent / "cert.pem")).stdout.endswith(": good\n")
        # eport status exits 3 for revoked, 4 for on hold
        res = srv.eport("status", "--cert", str(revoked / "cert.pem"), check=False)
        assert res.returncode == 3 and "revoked since" in res.stdout
        res = srv.eport("status", "--cert", str(held / "cert.pem"), check=False)
        assert res.returncode == 4 and "on hold since" in res.stdout
        srv.eport("audit", "verify", "--full", *srv.auditor(), **env)
        assert "Operator U1" in srv.eport("whoami", **env).stdout  # the session is kept
        headers = {"Authorization": f"Bearer {token}", "X-Eport-Service": SERVICE}
        assert requests.get(srv.url + "/auth/validate", headers=headers, timeout=10).ok
        again = srv.eport("token", "--service", SERVICE, "--scope", "declaration:submit", **env)
        assert again.stdout.strip()  # the grant, unbound by the downgrades, is bound again
        assert rows(auth_url)[bound[0]] == auth_before[bound[0]]
        enroll = ("enroll", "--profile", "enterprise", "--out")
        again = srv.eport(*enroll, str(tmp_path / "again"), "--code", withdrawn, check=False)
        assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
        assert "withdrawn" in again.stderr or "expired" in again.stderr, again.stderr
        srv.eport(*enroll, str(tmp_path / "later"), "--code", unused)  # a new issuance
    finally:
        stop(proc)


def app_uscc(ent: Path) -> str:
    """The USCC of an enterprise certificate (organizationIdentifier NTRCN-<USCC>)."""
    oid = NameOID.ORGANIZATION_IDENTIFIER
    value = cert_of(ent).subject.get_attributes_for_oid(oid)[0].value
    return str(value).removeprefix("NTRCN-")


def schema_drift(url: str) -> list[Any]:
    """What Alembic's autogenerate would change to make the schema at ``url`` the
    models' (both services' tables in one database), types compared."""
    engine = create_engine(url)
    drift: list[Any] = []
    try:
        with engine.connect() as conn:
            services = ((Base.metadata, "alembic_version"), (AuthBase.metadata, AUTH_VERSION_TABLE))
            for metadata, table in services:
                opts = {"version_table": table, "compare_type": True}
                for diff in compare_metadata(MigrationContext.configure(conn, opts=opts), metadata):
                    kind, obj = (diff[0], diff[1]) if isinstance(diff, tuple) else ("", None)
                    owner = getattr(obj, "table", obj)
                    if kind in ("remove_table", "remove_index") and (
                        getattr(owner, "name", "") not in metadata.tables
                    ):
                        continue  # the other service's table, or its index
                    drift.append(diff)
    finally:
        engine.dispose()
    return drift


@pytest.mark.parametrize(
    "ca_rev,auth_rev", [(r, "a001") for r in CA_REVISIONS] + [(CA_REVISIONS[-1], "a002")]
)
def test_a_schema_made_by_an_old_release_upgrades_to_the_models(
    database: str, tmp_path: Path, ca_rev: str, auth_rev: str
) -> None:
    """An empty database taken to an old revision and then to head has exactly the
    schema of the models (nothing missing, nothing extra, the same types)."""
    url = database or f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(CA_MIGRATIONS, url), ca_rev)
    command.upgrade(alembic_config(AUTH_MIGRATIONS, url), auth_rev)
    ca_upgrade(url)
    auth_upgrade(url)
    assert schema_drift(url) == []


def test_0011_folds_the_operator_id_lookup_key(database: str, tmp_path: Path) -> None:
    """Operator applications stored at 0010 with their ids as typed are found folded after
    the upgrade: ``e1`` finds ``E1``'s authorization (X.520 caseIgnoreMatch)."""
    from sqlalchemy.orm import sessionmaker

    from ca.store import SqlStore

    url = database or f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(CA_MIGRATIONS, url), "0010")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO applications (id, subject_class, uscc, vetted, state, "
                    "created_at, applicant, operator_id) VALUES ('app_e1', 'operator', "
                    "'91350100M000100Y43', '{\"operator_id\": \"E1\"}', 'approved', "
                    ":at, 'enterprise:1', 'E1')"
                ),
                {"at": "2026-11-29 04:00:00"},
            )
        ca_upgrade(url)
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT operator_id FROM applications")).scalar_one()
        assert stored == "e1"
        store = SqlStore(sessionmaker(engine))
        with store.transaction() as tx:
            found = tx.operator_applications("91350100M000100Y43", "e1")
            assert [a.id for a in found] == ["app_e1"]
            assert found[0].vetted["operator_id"] == "E1"  # as typed
        # A server of release 0010 still running after the upgrade writes an id as typed:
        # the next start folds it too (before, eport operator add --id e2 missed E2's
        # authorization while its certificate was in force: upgrade probe, session 24).
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO applications (id, subject_class, uscc, vetted, state, "
                    "created_at, applicant, operator_id) VALUES ('app_e2', 'operator', "
                    "'91350100M000100Y43', '{\"operator_id\": \"E2\"}', 'approved', "
                    ":at, 'enterprise:1', 'E2')"
                ),
                {"at": "2026-11-29 05:00:00"},
            )
        with store.transaction() as tx:
            assert tx.operator_applications("91350100M000100Y43", "e2") == []
        ca_upgrade(url)
        with store.transaction() as tx:
            found = tx.operator_applications("91350100M000100Y43", "E2")
            assert [a.id for a in found] == ["app_e2"]
    finally:
        engine.dispose()


def test_an_upgrade_names_operator_ids_in_force_twice(
    database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Releases before 0011 told operator ids apart by case: ``E3`` and ``e3`` were two
    authorizations, each certified. 0011 folds them to one id without a word, and both
    certificates stay in force (upgrade probe, session 27): the upgrade names them. One
    revoked, or expired, is not named."""
    url = database or f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(CA_MIGRATIONS, url), "0010")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for n, (op_id, uscc, not_after) in enumerate(
                [
                    ("E3", "91350100M000100Y43", later),
                    ("e3", "91350100M000100Y43", later),
                    ("E4", "91350100M000100Y43", later),  # one authorization of E4
                    ("X9", "91350100M000100Y43", later),
                    ("x9", "91350100M000100Y43", later - datetime.timedelta(days=60)),
                ]
            ):
                conn.execute(
                    text(
                        "INSERT INTO applications (id, subject_class, uscc, vetted, state, "
                        "created_at, applicant, operator_id) VALUES (:id, 'operator', :uscc, "
                        "'{}', 'approved', :at, 'enterprise:1', :op)"
                    ),
                    {"id": f"app_{n}", "uscc": uscc, "at": later, "op": op_id},
                )
                conn.execute(
                    text(
                        "INSERT INTO certificates (serial, issuer_id, profile, application_id, "
                        "uscc, subject, spki_sha256, cert_sha256, not_before, not_after, der, "
                        "created_at) VALUES (:serial, 'enterprise', 'operator', :app, :uscc, "
                        "'CN=x', :spki, :sha, :nb, :na, :der, :nb)"
                    ),
                    {
                        "serial": f"{n + 1:032x}", "app": f"app_{n}", "uscc": uscc,
                        "spki": f"{n:064x}", "sha": f"{n + 100:064x}",
                        "nb": later - datetime.timedelta(days=400), "na": not_after,
                        "der": b"0",
                    },
                )  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="eport"):
            ca_upgrade(url)
        said = [r.getMessage() for r in caplog.records]
        named = [m for m in said if "more than one authorization" in m]
        assert len(named) == 1, caplog.text
        assert "1 operator ids" in named[0] and "91350100M000100Y43 'e3' (2)" in named[0]
        assert "x9" not in named[0] and "e4" not in named[0]
    finally:
        engine.dispose()


def test_a_database_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    """A release rolled back after an upgrade meets a revision it does not know: eport
    serve says so in one line and changes nothing, for either service's database."""
    env = base_env()
    env["HOME"] = str(tmp_path)
    cases = (("eport.db", "alembic_version", "0099"), ("auth.db", AUTH_VERSION_TABLE, "a099"))
    for db, table, rev in cases:
        data = tmp_path / db.split(".")[0]
        data.mkdir()
        url = f"sqlite:///{data / db}"
        (ca_upgrade if db == "eport.db" else auth_upgrade)(url)
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {table} SET version_num = :v"), {"v": rev})
        engine.dispose()
        before = (data / db).read_bytes()
        res = subprocess.run(
            [EPORT, "serve", "--dev", "--data-dir", str(data), "--port", "1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert res.returncode == 1, res.stderr
        line = res.stderr.splitlines()[-1]
        assert line.startswith("eport: error: the ") and f"at schema revision {rev}, " in line
        assert "newer release" in line, line
        assert (data / db).read_bytes() == before
        assert not (data / "ca").exists()


@pytest.mark.slow
def test_servers_starting_together_upgrade_once(postgres: Postgres) -> None:
    """Several hosts start eport serve together on one PostgreSQL database (a new one,
    or one of an older release): each runs the migrations, one after the other, and
    every one starts; before, the second failed on the first's tables and columns."""
    script = (
        "import sys; from ca.db import upgrade; from authsvc.app import upgrade as au\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
        "upgrade(sys.argv[1]); au(sys.argv[1]); print('done', flush=True)\n"
    )
    for start in ("", "0004", "0002"):
        url = postgres.createdb(f"eport_together_{start or 'new'}")
        if start:
            command.upgrade(alembic_config(CA_MIGRATIONS, url), start)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=60) for p in procs]
        for p, (out, err) in zip(procs, results, strict=True):
            assert p.returncode == 0 and out == "done\n", (start, err[-600:])
        assert schema_drift(url) == []


def test_a_ca_made_before_the_log_is_refused_unchanged(tmp_path: Path) -> None:
    """A development CA of the 0001 prototype (no root CRL, no log key: made before the
    transparency log) cannot be served by this release: eport serve says so in one line
    before any schema is upgraded, instead of upgrading its database and then failing
    in every gunicorn worker."""
    data = tmp_path / "data"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "E-Port Joint Root CA")])
    now = datetime.datetime.now(datetime.UTC)
    root = x509.CertificateBuilder(
        name,
        name,
        key.public_key(),
        x509.random_serial_number(),
        now,
        now + datetime.timedelta(days=1),
    ).sign(key, hashes.SHA256())
    for file in ("ca/root.crt", "ca/issuers/enterprise.crt"):
        (data / file).parent.mkdir(parents=True, exist_ok=True)
        (data / file).write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (data / "dev").mkdir()
    (data / "dev" / ".complete").write_text("development joint CA complete\n")
    url = f"sqlite:///{data / 'eport.db'}"
    command.upgrade(alembic_config(CA_MIGRATIONS, url), "0001")
    before = (data / "eport.db").read_bytes()
    env = base_env()
    env["HOME"] = str(tmp_path)
    res = subprocess.run(
        [EPORT, "serve", "--dev", "--data-dir", str(data), "--port", str(conftest.free_port())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    assert res.stderr.splitlines()[-1] == (
        f"eport: error: the CA hierarchy in {data / 'ca'} is incomplete (root.crl, log.pub, "
        "log.key missing): one made before the transparency log (schema 0001) cannot be "
        "served; a damaged one is restored from its backup (eport restore)"
    )
    assert (data / "eport.db").read_bytes() == before
    assert not (data / "auth.db").exists()


def test_a_database_at_head_is_not_handed_to_alembic(tmp_path: Path) -> None:
    """Each schema's SCHEMA_HEAD constant is Alembic's head (a new migration without it would
    leave databases a revision behind: this fails first). A database recorded at head is
    upgraded without importing Alembic (about 0.3 s of every start); one behind is
    migrated, and one of a newer release still refused by name."""
    from alembic.script import ScriptDirectory

    from authsvc.app import SCHEMA_HEAD as AUTH_HEAD
    from ca.db import SCHEMA_HEAD as CA_HEAD

    for migrations, head, url_of in (
        (CA_MIGRATIONS, CA_HEAD, "ca"),
        (AUTH_MIGRATIONS, AUTH_HEAD, "auth"),
    ):
        cfg = alembic_config(migrations, f"sqlite:///{tmp_path / (url_of + '-probe.db')}")
        assert ScriptDirectory.from_config(cfg).get_heads() == [head]
    ca_url, auth_url = (f"sqlite:///{tmp_path / name}" for name in ("eport.db", "auth.db"))
    probe = (
        "import sys; from ca.db import upgrade; from authsvc.app import upgrade as auth; "
        f"upgrade({ca_url!r}); auth({auth_url!r}); print('alembic' in sys.modules)"
    )

    def upgrade_in_a_new_process() -> str:
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert upgrade_in_a_new_process() == "True"  # new databases: migrated
    assert upgrade_in_a_new_process() == "False"  # at head: Alembic not even imported
    command.downgrade(alembic_config(CA_MIGRATIONS, ca_url), CA_REVISIONS[-1])
    assert upgrade_in_a_new_process() == "True"  # one behind: migrated again
    engine = create_engine(ca_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == CA_HEAD
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.returncode != 0 and "schema revision 0099" in run.stderr, run.stderr


def test_the_database_refuses_to_delete_or_rewrite_the_records(
    database: str, tmp_path: Path
) -> None:
    """Migration 0012: a DELETE (or, on PostgreSQL, TRUNCATE) of events, log entries,
    certificates, applications or checkpoints, or an UPDATE of what such a row records,
    is refused by the database itself, whoever sends it; the listing keys eport fills in
    after the fact (log_index) and an application's decision still change. Before, one
    mistyped statement deleted certificate records the law keeps five years (upgrade
    probe, session 24)."""
    from sqlalchemy.exc import IntegrityError

    from ca.config import CAConfig
    from ca.devinit import ensure_dev_ca

    url = database or f"sqlite:///{tmp_path / 'data' / 'eport.db'}"
    ensure_dev_ca(CAConfig(data_dir=tmp_path / "data", dev=True, database_url=database))
    engine = create_engine(url)
    refused = (
        "DELETE FROM events",
        "DELETE FROM log_entries WHERE idx = 0",
        "DELETE FROM certificates",
        "DELETE FROM applications",
        "DELETE FROM checkpoints",
        "UPDATE events SET actor = 'forged'",
        "UPDATE events SET details = '{}'",
        "UPDATE log_entries SET event_id = event_id",
        "UPDATE certificates SET der = der",
        "UPDATE certificates SET not_after = not_after",
        "UPDATE applications SET vetted = '{}'",
        "UPDATE checkpoints SET note = note",
        *(
            ("TRUNCATE events", "TRUNCATE certificates CASCADE")
            if engine.dialect.name == "postgresql"
            else ()
        ),
    )
    try:
        with engine.connect() as conn:
            before = {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("events", "log_entries", "certificates", "applications", "checkpoints")
            }
        assert all(before.values()), before
        for statement in refused:
            with (
                pytest.raises(IntegrityError, match="the CA keeps its records"),
                engine.begin() as conn,
            ):
                conn.execute(text(statement))
        with engine.begin() as conn:  # what eport itself changes after the fact
            conn.execute(text("UPDATE events SET log_index = log_index"))
            conn.execute(text("UPDATE certificates SET log_index = log_index"))
            conn.execute(text("UPDATE applications SET reason = reason, log_index = log_index"))
        with engine.connect() as conn:
            after = {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in before
            }
        assert after == before
    finally:
        engine.dispose()


@pytest.mark.slow
def test_servers_starting_together_on_new_sqlite_files_migrate_once(tmp_path: Path) -> None:
    """Two servers started at once on a new data directory both read "no revision" and
    both ran the migrations: the second failed on the first's tables ("table
    oidc_browser_sessions already exists", clean-clone CI, session 24). The migrations
    of one SQLite file now run one process at a time, and the second finds them done."""
    probe = (
        "import sys, time; from ca.db import upgrade; from authsvc.app import upgrade as auth; "
        "time.sleep(max(0.0, float(sys.argv[3]) - time.time())); "
        "auth(sys.argv[2]); upgrade(sys.argv[1])"  # eport serve's order
    )
    for n in range(3):
        d = tmp_path / f"d{n}"
        d.mkdir()
        urls = [f"sqlite:///{d / 'eport.db'}", f"sqlite:///{d / 'auth.db'}"]
        at = str(time.time() + 2.5)  # every process imported by then: they start together
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", probe, *urls, at], stderr=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        errors = [proc.communicate(timeout=120)[1] for proc in procs]
        assert all(proc.returncode == 0 for proc in procs), errors
        from authsvc.app import SCHEMA_HEAD as AUTH_HEAD
        from ca.db import SCHEMA_HEAD as CA_HEAD
        from ca.db import recorded_revisions

        assert recorded_revisions(urls[0], "alembic_version") == {CA_HEAD}
        assert recorded_revisions(urls[1], AUTH_VERSION_TABLE) == {AUTH_HEAD}


def test_the_ca_app_loads_the_issuance_writer_with_itself() -> None:
    """The group writer was imported at the first issuance: a release installed over a
    running server's files (an upgrade before the restart) mixed into it and made every
    enrollment a 500 (security probe, session 26). The CA's app module loads it, so the
    master that ``eport serve`` forks its workers from holds the code it started with."""
    res = subprocess.run(
        [sys.executable, "-c", "import sys, ca.app; print('ca.groupwrite' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr[-2000:]
