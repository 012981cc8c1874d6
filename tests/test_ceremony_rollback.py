"""A root ceremony whose transaction does not commit leaves the CA files as they were.

A real sealed custody server, unsealed by 3 custodians; a SQLite trigger (installed
from outside, as a full disk or a dropped connection would fail it) refuses the
``ceremony.completed`` event, the last write before the COMMIT, after the operation
has written its files. REVOKE-INTERMEDIATE, ROTATE-ISSUER and ROTATE-LOG-KEY then fail
at the M-th join: the database rolls back, and every ``ca/`` file must be
byte-identical to before (no new key or certificate file left either). Once the fault
is gone the same rollover ceremony completes and the CA issues from its new generation.

A server killed (SIGKILL) while a rollover's completing transaction is still open,
after its files were written, leaves them ahead of the database; the next start
restores them from the ceremony's journal before loading the hierarchy.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from ca.generation import read_generation
from tests.conftest import EPORT, Server, kill_hard, stop
from tests.helpers import cert_of
from tests.test_ca_init import init_ca, start_sealed, unseal
from tests.test_custody_ceremonies import (
    enroll,
    join,
    read_out,
    rotate,
    start,
    unsealed_custody_server,
)

_NOT_CA_FILES = ("generation", "crosshost.json", ".crosshost.lock")
"""The reload token (bumped again after an undo), this host's note and its lock."""


def ca_files(data: Path) -> dict[str, bytes]:
    d = data / "ca"
    return {
        p.relative_to(d).as_posix(): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name not in _NOT_CA_FILES
    }


def _fault(srv: Server, name: str, trigger: str | None) -> None:
    """Install the SQLite trigger ``name`` (``trigger``: its event and condition), which
    aborts the statement as a full disk would; or drop it (None)."""
    db = sqlite3.connect(srv.data_dir / "eport.db")
    try:
        if trigger is None:
            db.execute(f"DROP TRIGGER {name}")
        else:
            db.execute(
                f"CREATE TRIGGER {name} {trigger} "
                "BEGIN SELECT RAISE(ABORT, 'injected: database or disk is full'); END"
            )
        db.commit()
    finally:
        db.close()


def fail_completions(srv: Server, on: bool) -> None:
    """Make (or stop making) the completing transaction of every ceremony fail."""
    when = "BEFORE INSERT ON events WHEN NEW.type = 'ceremony.completed'"
    _fault(srv, "fail_completion", when if on else None)


def fail_publications(srv: Server, on: bool) -> None:
    """Make (or stop making) every publication of the hierarchy record fail."""
    _fault(srv, "fail_publication", "BEFORE UPDATE ON hierarchy_head" if on else None)


@pytest.mark.slow
def test_a_ceremony_that_does_not_commit_leaves_the_files_as_they_were(tmp_path: Path) -> None:
    with unsealed_custody_server(tmp_path) as (srv, out, tmp):
        before = ca_files(srv.data_dir)
        fail_completions(srv, True)
        ceremonies = {
            "REVOKE-INTERMEDIATE": str(
                start(srv, out, "REVOKE-INTERMEDIATE", "issuer=enterprise")["id"]
            ),
            "ROTATE-ISSUER": rotate(srv, out),
            "ROTATE-LOG-KEY": str(start(srv, out, "ROTATE-LOG-KEY")["id"]),
        }
        for op, cid in ceremonies.items():
            for m in ("customs", "tax"):
                join(srv, out, cid, m)
            failed = join(srv, out, cid, "forex", check=False)
            assert failed.returncode == 1, (op, failed.stdout, failed.stderr)
            assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
            assert "HTTP 500" in failed.stderr and "nothing was changed" in failed.stderr
            after = ca_files(srv.data_dir)
            assert sorted(after) == sorted(before), (op, set(after) ^ set(before))
            changed = [name for name in before if after[name] != before[name]]
            assert changed == [], (op, changed)
            status = json.loads(srv.eport("ca", "ceremony", "status", cid, "--json").stdout)
            assert status["state"] == "open" and status["progress"] == 2, (op, status)
        # The CA still issues from the generation it had (active.json kept it serving).
        old_issuer = x509.load_pem_x509_certificate(before["issuers/enterprise.crt"])
        cert_of(enroll(srv, out, tmp, "Still Issuing Co")).verify_directly_issued_by(old_issuer)

        # The fault is gone: the same rollover completes with the third share again.
        fail_completions(srv, False)
        done = json.loads(join(srv, out, ceremonies["ROTATE-ISSUER"], "forex").stdout)
        assert done["state"] == "done", done
        assert done["result"]["generation"] == "enterprise-2"
        new_issuer = x509.load_pem_x509_certificate(
            (srv.data_dir / "ca" / "issuers" / "enterprise-2.crt").read_bytes()
        )
        cert_of(enroll(srv, out, tmp, "New Generation Co")).verify_directly_issued_by(new_issuer)

        # The ceremony and the hierarchy record it leaves commit together: a record that
        # cannot be written fails the ceremony (before, it committed and the record named
        # the retired log key until the host's check after it, which a stale host read).
        before = ca_files(srv.data_dir)
        fail_publications(srv, True)
        failed = join(srv, out, ceremonies["ROTATE-LOG-KEY"], "forex", check=False)
        assert failed.returncode == 1 and "HTTP 500" in failed.stderr, failed.stderr
        assert ca_files(srv.data_dir) == before
        fail_publications(srv, False)
        done = json.loads(join(srv, out, ceremonies["ROTATE-LOG-KEY"], "forex").stdout)
        assert done["state"] == "done", done
        new_key = (srv.data_dir / "ca" / "log.pub").read_bytes()
        assert new_key != before["log.pub"]
        assert recorded_sha256(srv, "log.pub") == hashlib.sha256(new_key).hexdigest()


def recorded_sha256(srv: Server, name: str) -> str:
    db = sqlite3.connect(srv.data_dir / "eport.db")
    try:
        row = db.execute("SELECT sha256 FROM hierarchy_files WHERE path = ?", (name,)).fetchone()
    finally:
        db.close()
    return str(row[0])


@pytest.mark.slow
def test_a_server_killed_before_the_commit_restores_the_files_at_start(tmp_path: Path) -> None:
    data, out, _ = init_ca(tmp_path)
    srv, proc, fp = start_sealed(tmp_path, data)
    last: subprocess.Popen[bytes] | None = None
    try:
        for m in ("commerce", "tax", "forex"):
            unseal(srv, out, m, fp)
        before = ca_files(data)
        generation = read_generation(data)
        db = sqlite3.connect(data / "eport.db")
        try:  # the completing transaction stays open (busy) until the server is killed
            db.execute("CREATE TABLE slow (x INTEGER)")
            db.executemany("INSERT INTO slow VALUES (?)", [(i,) for i in range(2000)])
            db.execute(
                "CREATE TRIGGER slow_completion BEFORE INSERT ON events "
                "WHEN NEW.type = 'ceremony.completed' "
                "BEGIN SELECT count(*) FROM slow a, slow b, slow c; END"
            )
            db.commit()
        finally:
            db.close()
        cid = rotate(srv, out)
        for m in ("customs", "tax"):
            join(srv, out, cid, m)
        share = str(out / "shares" / "forex.share")
        last = subprocess.Popen(
            [
                EPORT,
                "ca",
                "ceremony",
                "join",
                cid,
                "--share",
                share,
                "--fingerprint",
                read_out(srv, cid),
            ],
            env=srv.env(EPORT_SHARE_PASSPHRASE="share passphrase of forex"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        active = data / "ca" / "issuers" / "active.json"
        deadline = time.monotonic() + 60
        while b"enterprise-2" not in (active.read_bytes() if active.exists() else b""):
            assert time.monotonic() < deadline and last.poll() is None, "the rollover never ran"
            time.sleep(0.05)
        # The workers are not told to reload files whose transaction may still roll back.
        assert read_generation(data) == generation
        kill_hard(proc)
        last.wait(timeout=60)
        # The files are ahead of the database: a new issuing CA nobody logged.
        assert (data / "ca" / "issuers" / "enterprise-2.crt").exists()
        assert list((data / "ca").glob("ceremony-*.journal"))
    finally:
        stop(proc)
        if last is not None and last.poll() is None:
            last.kill()
            last.wait()
    db = sqlite3.connect(data / "eport.db")
    db.execute("DROP TRIGGER slow_completion")
    db.commit()
    db.close()

    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        assert ca_files(data) == before
        assert f"ceremony {cid} did not commit" in srv.log.read_text()
        for m in ("commerce", "tax", "forex"):
            unseal(srv, out, m, fp)
        # The rollover is run again by a new ceremony (the old one died with its server).
        again = rotate(srv, out)
        for m in ("customs", "tax", "forex"):
            done = json.loads(join(srv, out, again, m).stdout)
        assert done["state"] == "done" and done["result"]["generation"] == "enterprise-2"
        new_issuer = x509.load_pem_x509_certificate(
            (data / "ca" / "issuers" / "enterprise-2.crt").read_bytes()
        )
        cert_of(enroll(srv, out, tmp_path, "After Crash Co")).verify_directly_issued_by(new_issuer)
    finally:
        stop(proc)


def _crash_during(changes_dir: Path, cid: str) -> dict[str, bytes]:
    """A ceremony's journal after two writes, and what a SIGKILL during the next writes
    leaves: the journal's own temporary file (killed while it was kept) and a file's
    (killed before its rename). Returns the ``ca/`` files as they were before."""
    from ca.ceremony_files import FileChanges, journal_path

    (changes_dir / "issuers").mkdir(parents=True)
    (changes_dir / "issuers" / "active.json").write_bytes(b'{"enterprise": "enterprise"}\n')
    before = ca_files(changes_dir.parent)
    changes = FileChanges(journal=journal_path(changes_dir, cid))
    changes.write(changes_dir / "issuers" / "enterprise-2.crt", b"new issuing CA\n")
    changes.write(changes_dir / "issuers" / "active.json", b'{"enterprise": "enterprise-2"}\n')
    journal = journal_path(changes_dir, cid)
    journal.with_name(journal.name + ".tmp-4242").write_bytes(journal.read_bytes()[:40])
    (changes_dir / "issuers" / "active.json.tmp-4243").write_bytes(b'{"enter')
    return before


@pytest.mark.parametrize("committed", [False, True])
def test_settle_leaves_no_temporary_file_of_a_killed_write(tmp_path: Path, committed: bool) -> None:
    from ca.ceremony_files import settle

    d = tmp_path / "ca"
    before = _crash_during(d, "cer-1")
    unrelated = d / "issuers" / "notes.tmp-draft"  # not a temporary file of ours
    unrelated.write_bytes(b"kept\n")
    restored = settle(d, lambda cid: committed)
    unrelated.unlink()
    after = ca_files(tmp_path)
    if committed:
        assert restored == []
        assert sorted(after) == ["issuers/active.json", "issuers/enterprise-2.crt"]
        assert after["issuers/active.json"] == b'{"enterprise": "enterprise-2"}\n'
    else:
        assert restored == ["cer-1"]
        assert after == before


def test_settle_drops_a_journal_killed_before_its_first_rename(tmp_path: Path) -> None:
    """Killed while the first journal was written: no file of the ceremony changed yet."""
    from ca.ceremony_files import settle, unsettled

    d = tmp_path / "ca"
    d.mkdir()
    (d / "ceremony-cer-2.journal.tmp-77").write_bytes(b'{"ceremony": "cer-2", "fi')
    assert unsettled(d)  # so the start settles it
    assert settle(d, lambda cid: False) == []
    assert list(d.iterdir()) == [] and not unsettled(d)
