"""`eport ca reshare` (docs/emergency-plan.md, runbook 3): a custodian's share is lost,
three custodians of a 3-of-5 set re-share both KEKs to new share files. The running
server takes the new custody record at once and stays unsealed; after a restart it
unseals with new shares only, a root ceremony runs with new shares, old shares are
refused with a clear error, and the log verifies with the re-share in it. Refusals
(fewer than M, a repeated custodian, a wrong passphrase, a share of another custody
set) change nothing."""

from __future__ import annotations

import base64
import datetime
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from sqlalchemy.orm import sessionmaker

from ca import custody_files, translog
from ca import reshare as core
from ca.custody import (
    CustodyRecord,
    Purpose,
    ShareRejected,
    establish,
    open_share_file,
    seal_share_file,
)
from ca.custody_signature import (
    RecordSignatureRefused,
    archived_signature_path,
    signature_path,
    verify_record,
)
from ca.custody_store import latest_reshare
from ca.db import make_engine
from ca.share_transport import seal_share
from ca.store import SqlStore
from tests.conftest import EPORT, Server, stop
from tests.helpers import assert_no_secret_in_tree
from tests.test_ca_init import MEMBERS, custodian_env, init_ca, start_sealed, unseal
from tests.test_custody_ceremonies import join, officer_args, root_crl, start

OLD = "share passphrase of {}"
NEW = "new passphrase of {}"
LOST = "inspection"
PRESENT = ("customs", "tax", "forex")


def reshare(
    data: Path, out: Path, shares: list[Path], tmp: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    args = [EPORT, "ca", "reshare", "--data-dir", str(data), "--out", str(out), "--json"]
    args += [a for s in shares for a in ("--share", str(s))]
    for m in MEMBERS:
        pw = tmp / f"new-{m}.txt"
        pw.write_text(NEW.format(m) + "\n")
        args += ["--custodian-passphrase", f"{m}={pw}"]
    full = custodian_env()
    full.update({f"EPORT_SHARE_PASSPHRASE_{m.upper()}": OLD.format(m) for m in MEMBERS})
    full.update(env)
    return subprocess.run(args, capture_output=True, text=True, env=full, timeout=120)


def refused(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eport: error: "), res.stderr
    assert needle in lines[0], lines[0]


def send_old_seal_share(srv: Server, out: Path, ceremony: dict[str, Any]) -> requests.Response:
    """The tax custodian's seal share of the first custody set (in ``out``), sealed to the
    unseal ``ceremony`` and posted past the CLI, which would refuse it first."""
    share = open_share_file(
        (out / "shares" / "tax.share").read_bytes(), OLD.format("tax").encode()
    ).share(Purpose.SEAL)
    sealed = seal_share(share, ceremony["id"], base64.b64decode(ceremony["public_key"]))
    return requests.post(srv.url + "/ca/v1/custody/unseal", json={"share": sealed}, timeout=5)


def reshare_events(data: Path) -> list[dict[str, object]]:
    with sqlite3.connect(data / "eport.db") as db:
        rows = db.execute("SELECT details FROM events WHERE type = 'custody.reshared'").fetchall()
    return [json.loads(r[0]) for r in rows]


@pytest.mark.slow
def test_refusals_change_nothing(tmp_path: Path) -> None:
    data, out, _ = init_ca(tmp_path)
    shares = out / "shares"
    record = (data / "ca" / "custody.json").read_bytes()
    before = sorted(p.name for p in (data / "ca").iterdir())
    # A share file of another custody set (same members, its own KEKs).
    other = establish([(m, m) for m in MEMBERS], 3)
    foreign = tmp_path / "foreign-forex.share"
    foreign.write_bytes(
        seal_share_file(other.record, other.shares["forex"], OLD.format("forex").encode())
    )
    other.wipe()
    not_a_share = tmp_path / "notes.txt"  # a custodian's other file, given by mistake
    not_a_share.write_text("the share is in the safe\n")
    cases = [
        ([shares / "customs.share", shares / "tax.share"], {}, "re-sharing needs 3 custodians"),
        (
            [shares / "customs.share", shares / "tax.share", shares / "customs.share"],
            {},
            "the custodian of customs presented two share files",
        ),
        (
            [shares / "customs.share", shares / "tax.share", shares / "forex.share"],
            {"EPORT_SHARE_PASSPHRASE_TAX": "not the passphrase"},
            "wrong passphrase",
        ),
        (
            [shares / "customs.share", shares / "tax.share", foreign],
            {},
            f"belongs to custody set {other.record.custody_id}, not to the one in force",
        ),
        (
            [shares / "customs.share", not_a_share, shares / "tax.share"],
            {},
            f"{not_a_share}: not a share file",
        ),
    ]
    for i, (files, env, needle) in enumerate(cases):
        res = reshare(data, tmp_path / f"out-{i}", files, tmp_path, **env)
        refused(res, needle)
        assert not (tmp_path / f"out-{i}").exists()
    # An --out that holds share files is never overwritten.
    refused(reshare(data, out, [shares / f"{m}.share" for m in PRESENT], tmp_path), "empty --out")
    assert (data / "ca" / "custody.json").read_bytes() == record
    assert sorted(p.name for p in (data / "ca").iterdir()) == before
    assert reshare_events(data) == []


def unseal_new(srv: Server, out: Path, member: str, fp: str) -> dict[str, object]:
    res = srv.eport(
        "ca",
        "unseal",
        "--share",
        str(out / "shares" / f"{member}.share"),
        "--fingerprint",
        fp,
        "--json",
        EPORT_SHARE_PASSPHRASE=NEW.format(member),
    )
    doc: dict[str, object] = json.loads(res.stdout)
    return doc


@pytest.mark.slow
def test_reshare_then_restart_unseal_and_root_ceremony(tmp_path: Path) -> None:
    data, out, ceremony = init_ca(tmp_path)
    old_record = CustodyRecord.from_json(json.loads((out / "custody.json").read_text()))
    # the records' order, inside the signed bytes: 1 at init, one more at each re-share
    assert old_record.sequence == 1 and ceremony["sequence"] == 1
    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        for m in ("commerce", "tax", "forex"):
            unseal(srv, out, m, fp)
        # The share of inspection is lost: customs, tax and forex re-share, server running.
        new_out = tmp_path / "reshare"
        t0 = time.perf_counter()
        res = reshare(data, new_out, [out / "shares" / f"{m}.share" for m in PRESENT], tmp_path)
        elapsed = time.perf_counter() - t0
        assert res.returncode == 0, res.stderr
        print(f"\neport ca reshare (3 old shares opened, 5 new share files): {elapsed:.2f} s")
        doc = json.loads(res.stdout)
        new_id = doc["custody_id"]
        assert doc["previous_custody_id"] == old_record.custody_id != new_id
        assert doc["participants"] == list(PRESENT) and doc["members"] == list(MEMBERS)
        new_record = json.loads((data / "ca" / "custody.json").read_text())
        assert new_record == json.loads((new_out / "custody.json").read_text())
        assert new_record["custody_id"] == new_id and new_record["threshold"] == 3
        assert new_record["sequence"] == doc["sequence"] == 2
        assert new_record["keys_custody_id"] == old_record.custody_id
        kept = data / "ca" / f"custody-{old_record.custody_id}.json"
        assert CustodyRecord.from_json(json.loads(kept.read_text())) == old_record
        # the new record is signed by the root, and OUT has the signature beside it
        root = x509.load_pem_x509_certificate((out / "root.crt").read_bytes())
        sig = signature_path(data).read_bytes()
        assert (new_out / "custody.json.sig").read_bytes() == sig
        verify_record(root, (new_out / "custody.json").read_bytes(), sig)
        # Every worker of the running server takes the new record and stays unsealed
        # (the KEKs were kept).
        for _ in range(6):
            state = requests.get(srv.url + "/ca/v1/custody", timeout=5).json()
            assert state["custody"]["custody_id"] == new_id and state["sealed"] is False
            assert state["custody"]["sequence"] == 2
            assert state["record_signature"] == {"verified": True, "detail": None}, state
    finally:
        stop(proc)

    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        state = requests.get(srv.url + "/ca/v1/custody", timeout=5).json()
        assert state["sealed"] is True and state["custody"]["custody_id"] == new_id
        # An old share: the CLI refuses to send it, and the server refuses it if sent.
        old = unseal(srv, out, "customs", fp, check=False)
        refused(old, f"this share belongs to custody set {old_record.custody_id}")  # type: ignore[arg-type]
        r = send_old_seal_share(srv, out, state["unseal"])
        assert r.status_code == 400 and r.headers["Content-Type"] == "application/problem+json"
        assert f"custody set {old_record.custody_id}, not {new_id}" in r.json()["detail"]
        # Three new shares unseal it, the lost custodian's new share among them.
        t0 = time.perf_counter()
        for i, m in enumerate((LOST, "commerce", "tax"), start=1):
            step = unseal_new(srv, new_out, m, fp)
            assert step["ceremony"]["progress"] == i  # type: ignore[index]
        print(f"unseal with 3 new shares: {time.perf_counter() - t0:.2f} s")
        assert step["sealed"] is False
        # A root ceremony with the new shares; an old share is refused.
        started = start(srv, out, "ROOT-CRL")
        cid = str(started["id"])
        assert started["custody_id"] == new_id
        stale = join(srv, out, cid, "forex", check=False, passphrase=OLD)
        refused(stale, f"this share belongs to custody set {old_record.custody_id}")
        for m in ("forex", LOST, "customs"):
            last = join(srv, new_out, cid, m, passphrase=NEW)
        done = json.loads(last.stdout)
        assert done["state"] == "done"
        crl = root_crl(srv)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        assert (
            done["result"]["root_crl_number"]
            == number
            >= int(crl.last_update_utc.timestamp()) * 1000
        )
        root = x509.load_pem_x509_certificate((out / "root.crt").read_bytes())
        assert root_crl(srv).is_signature_valid(root.public_key())  # type: ignore[arg-type]

        # The log verifies, and holds the re-share with who took part.
        verified = srv.eport("audit", "verify", "--state", str(tmp_path / "audit.json"), "--json")
        assert json.loads(verified.stdout)["ok"] is True
        logged = json.loads(
            srv.eport(
                "audit",
                "log",
                "--type",
                "custody.reshared",
                "--format",
                "json",
                *officer_args(out, "tax"),
                EPORT_PASSPHRASE="officer passphrase",
            ).stdout
        )
        assert len(logged) == 1
        details = logged[0]["details"]
        assert details["custody_id"] == new_id
        assert details["previous_custody_id"] == old_record.custody_id
        assert details["threshold"] == 3 and details["keks"] == "kept"
        assert details["sequence"] == 2  # the log says which record is the newest
        assert [p["member"] for p in details["participants"]] == list(PRESENT)
        assert [c["member"] for c in details["custodians"]] == list(MEMBERS)
        assert details["custodians"] == new_record["custodians"]
        assert reshare_events(data) == [details]
    finally:
        stop(proc)

    assert_no_secret_in_clear(
        [data, out, new_out, *tmp_path.glob("serve-*.log")],
        share_dirs={out: OLD, new_out: NEW},
    )


def assert_no_secret_in_clear(roots: list[Path], share_dirs: dict[Path, str]) -> None:
    """The KEKs (rebuilt from the new share files), every old and new share value and
    every passphrase appear nowhere in clear (raw, hex or base64), and no unencrypted
    private key is stored (:func:`tests.helpers.assert_no_secret_in_tree`)."""
    needles: list[bytes] = []
    records = {}
    for d, phrase in share_dirs.items():
        record = CustodyRecord.from_json(json.loads((d / "custody.json").read_text()))
        files = [
            open_share_file((d / "shares" / f"{m}.share").read_bytes(), phrase.format(m).encode())
            for m in MEMBERS
        ]
        records[d] = record
        needles += [phrase.format(m).encode() for m in MEMBERS]
        for purpose in Purpose:
            needles += [f.share(purpose).value for f in files]
            kek = record.combine([f.share(purpose) for f in files], purpose)
            needles.append(bytes(kek))
    assert len(set(needles)) == len(needles) - 2  # the KEKs were kept: both sets rebuild them
    assert assert_no_secret_in_tree(roots, needles) > 30


def test_a_crash_midway_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two crash points of a re-share, in process against the real database: before
    the commit the old set stays in force; after it (here once the new root signature is
    written but not the record), `settle` (run by the server at start and by the next
    `eport ca reshare`) installs the logged record and its signature, never one without
    the other. Both records are signed by the root (init signed the first). Meanwhile
    this host publishes no pair that does not verify to the database's hierarchy record
    (it published the new signature beside the old record, which every other host
    refused until the re-share was settled): the record keeps the last good pair."""
    from ca.crosshost import HierarchySync
    from ca.crosshost_sql import SqlHierarchyRecord

    data, out, _ = init_ca(tmp_path)
    record = custody_files.load_record(data)
    old_bytes = custody_files.record_path(data).read_bytes()
    root = x509.load_pem_x509_certificate((data / "ca" / "root.crt").read_bytes())
    old_sig = signature_path(data).read_bytes()
    verify_record(root, old_bytes, old_sig)  # eport ca init signed it
    assert (out / "custody.json.sig").read_bytes() == old_sig
    engine = make_engine(f"sqlite:///{data / 'eport.db'}")
    store = SqlStore(sessionmaker(engine), event_sinks=(translog.append_event,))
    opened = [
        open_share_file((out / "shares" / f"{m}.share").read_bytes(), OLD.format(m).encode())
        for m in PRESENT
    ]
    members = [(m, m) for m in MEMBERS]
    written: dict[str, bytes] = {}
    hierarchy_record = SqlHierarchyRecord(engine)
    sync = HierarchySync(
        data,
        hierarchy_record,
        host="this host",
        clock=lambda: datetime.datetime.now(datetime.UTC),
        bump=lambda _: None,
    )
    assert sync.check().published

    def published_pair() -> tuple[bytes | None, bytes | None]:
        files = hierarchy_record.files()
        return files["custody.json"].data, files["custody.json.sig"].data

    def write_shares(new: CustodyRecord, shares: Any) -> None:
        for m in MEMBERS:
            written[m] = seal_share_file(new, shares[m], NEW.format(m).encode(), work_factor=2**14)

    class DiesAtCommit:
        @contextmanager
        def transaction(self) -> Iterator[Any]:
            with store.transaction() as tx:
                yield tx
                raise RuntimeError("power cut")

    now = datetime.datetime.now(datetime.UTC)
    try:
        rebuilt = core.rebuild(data, record, opened)
        with pytest.raises(RuntimeError):
            core.reshare(data, DiesAtCommit(), rebuilt, members, 3, write_shares, now=now)  # type: ignore[arg-type]
        assert custody_files.record_path(data).read_bytes() == old_bytes
        assert reshare_events(data) == [] and core.settle(data, latest_reshare(store)) is None
        assert custody_files.record_path(data).read_bytes() == old_bytes

        def dies(*_: object) -> None:
            raise RuntimeError("power cut")

        monkeypatch.setattr("ca.custody_files.write_record", dies)
        with pytest.raises(RuntimeError):
            core.reshare(data, store, rebuilt, members, 3, write_shares, now=now)
        rebuilt.wipe()
        monkeypatch.undo()
        assert custody_files.record_path(data).read_bytes() == old_bytes
        assert signature_path(data).read_bytes() != old_sig  # the new one, written first
        got = sync.check()  # as the running server's refresher would, before it is settled
        assert not got.published and not got.stale and got.custody_held is not None, got
        assert "its signature is of another custody record" in got.custody_held, got
        assert published_pair() == (old_bytes, old_sig)
        (logged,) = reshare_events(data)
        assert core.settle(data, latest_reshare(store)) == logged["custody_id"]
        installed = custody_files.load_record(data)
        assert installed.custody_id == logged["custody_id"] != record.custody_id
        assert installed.sequence == record.sequence + 1 == 2
        got = sync.check()
        assert got.published and got.custody_held is None, got
        assert published_pair() == (
            custody_files.record_path(data).read_bytes(),
            signature_path(data).read_bytes(),
        )
        assert core.settle(data, latest_reshare(store)) is None  # done once
        # the pair in force, and the replaced pair kept by its id, verify under root.crt
        verify_record(
            root, custody_files.record_path(data).read_bytes(), signature_path(data).read_bytes()
        )
        kept = custody_files.archived_path(data, record.custody_id).read_bytes()
        assert kept == old_bytes
        verify_record(root, kept, archived_signature_path(data, record.custody_id).read_bytes())
        with pytest.raises(RecordSignatureRefused, match="of another custody record"):
            verify_record(root, old_bytes, signature_path(data).read_bytes())
        # The new share files of the logged re-share rebuild the (kept) KEKs; old ones are
        # refused.
        new_files = [
            open_share_file(written[m], NEW.format(m).encode()) for m in (LOST, "tax", "forex")
        ]
        core.rebuild(data, installed, new_files).wipe()
        with pytest.raises(ShareRejected, match="not to the one in force"):
            core.rebuild(data, installed, opened)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_ceremony_opened_before_a_reshare_says_it_cannot_complete(tmp_path: Path) -> None:
    """docs/custody.md: a ceremony opened under the old custody set is closed by a
    re-share. Its status says so, and a custodian who joins it with a new share file is
    told to ask for a new ceremony (before: the CLI called the new share "a share of an
    earlier custody set", and told them that only the new share files count)."""
    data, out, _ = init_ca(tmp_path)
    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        for m in ("commerce", "tax", "forex"):
            unseal(srv, out, m, fp)
        started = start(srv, out, "ROOT-CRL")
        cid = str(started["id"])
        join(srv, out, cid, "tax")
        new_out = tmp_path / "reshare"
        res = reshare(data, new_out, [out / "shares" / f"{m}.share" for m in PRESENT], tmp_path)
        assert res.returncode == 0, res.stderr
        old_id, new_id = started["custody_id"], json.loads(res.stdout)["custody_id"]
        status = srv.eport("ca", "ceremony", "status", cid)
        assert f"opened for custody set {old_id}, which has been re-shared since" in status.stdout
        assert "cannot complete" in status.stdout
        doc = json.loads(srv.eport("ca", "ceremony", "status", cid, "--json").stdout)
        assert doc["state"] == "open" and doc["custody_current"] is False
        late = join(srv, new_out, cid, "customs", check=False, passphrase=NEW)
        refused(late, f"ceremony {cid} was opened for custody set {old_id}")
        assert "open a new one" in late.stderr and "earlier custody set" not in late.stderr
        assert json.loads(srv.eport("ca", "ceremony", "status", cid, "--json").stdout)[
            "joined"
        ] == ["tax"]
        # A ceremony opened now is of the new set, and its status says nothing of the kind.
        fresh = start(srv, out, "ROOT-CRL")
        assert fresh["custody_id"] == new_id and fresh["custody_current"] is True
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_sealed_server_unsealing_during_a_reshare_says_to_restart(tmp_path: Path) -> None:
    """docs/custody.md: a sealed server that was unsealing under the old set cannot
    finish; restart it and unseal with new shares (runbook 3). Both the CLI (a new share)
    and the server (an old share) say so (before: the CLI called the new share "a share
    of an earlier custody set", and the server said "open a new one", which no one can do
    for an unseal ceremony)."""
    data, out, _ = init_ca(tmp_path)
    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        unseal(srv, out, "commerce", fp)
        new_out = tmp_path / "reshare"
        res = reshare(data, new_out, [out / "shares" / f"{m}.share" for m in PRESENT], tmp_path)
        assert res.returncode == 0, res.stderr
        state = requests.get(srv.url + "/ca/v1/custody", timeout=5).json()
        ceremony = state["unseal"]
        assert state["sealed"] is True and ceremony["custody_current"] is False
        late = unseal(srv, new_out, "tax", fp, check=False, passphrase=NEW)
        refused(late, f"ceremony {ceremony['id']} was opened for custody set")
        assert "restarted and unsealed with the new share files" in late.stderr
        assert "earlier custody set" not in late.stderr
        # An old share, sent past the CLI: the server refuses it with the same advice.
        r = send_old_seal_share(srv, out, ceremony)
        assert r.status_code == 409 and r.headers["Content-Type"] == "application/problem+json"
        detail = r.json()["detail"]
        assert "restart the server and unseal it with the new share files" in detail
        assert "open a new one" not in detail
        after = requests.get(srv.url + "/ca/v1/custody", timeout=5).json()
        assert after["sealed"] is True and after["unseal"]["progress"] == 1
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_new_share_at_a_server_of_before_the_reshare_is_not_called_earlier(
    tmp_path: Path,
) -> None:
    """docs/backup.md: an instance restored from a backup made before a re-share needs
    the share files of that time. A custodian who brings a new share file to it is told
    so (before: "a share of an earlier custody set (after a re-share only the new share
    files count)", the opposite of the case and of what to do)."""
    import shutil

    data, out, _ = init_ca(tmp_path)
    # The data directory as a backup taken before the re-share holds it (server stopped).
    before = tmp_path / "before"
    shutil.copytree(data, before)
    (tmp_path / "before.port").write_text((tmp_path / "data.port").read_text())
    new_out = tmp_path / "reshare"
    res = reshare(data, new_out, [out / "shares" / f"{m}.share" for m in PRESENT], tmp_path)
    assert res.returncode == 0, res.stderr
    new_id = json.loads(res.stdout)["custody_id"]
    srv, proc, fp = start_sealed(tmp_path, before)
    try:
        state = requests.get(srv.url + "/ca/v1/custody", timeout=5).json()
        old_id = state["custody"]["custody_id"]
        assert old_id != new_id and state["unseal"]["custody_current"] is True
        res = unseal(srv, new_out, "tax", fp, check=False, passphrase=NEW)
        refused(res, f"this share belongs to custody set {new_id}; the ceremony is for {old_id}")
        assert "earlier custody set" not in res.stderr
        assert "restored from a backup made before a re-share" in res.stderr
        # The share files of that time unseal it.
        for m in ("commerce", "tax", "forex"):
            unseal(srv, out, m, fp)
        assert requests.get(srv.url + "/ca/v1/health", timeout=5).json()["sealed"] is False
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_running_server_publishes_no_custody_pair_a_crash_cut_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/ca.md, "Several hosts on one PostgreSQL database": ``eport ca reshare`` dies
    between writing the new signature and the new record while the server runs. The
    server's next check published that pair (the new signature beside the old record),
    which every other host of the database refused, staying stale until the next start.
    Now it keeps the last good pair in the database's record, says why once in each
    worker's log and in its health, and publishes the settled pair once restarted."""
    from ca.crosshost_sql import SqlHierarchyRecord

    data, out, _ = init_ca(tmp_path)
    old_bytes = custody_files.record_path(data).read_bytes()
    old_sig = signature_path(data).read_bytes()
    root = x509.load_pem_x509_certificate((data / "ca" / "root.crt").read_bytes())
    engine = make_engine(f"sqlite:///{data / 'eport.db'}")
    hierarchy_record = SqlHierarchyRecord(engine)
    line = "custody record and signature are not published to the database's record"

    def published_pair() -> tuple[bytes | None, bytes | None]:
        files = hierarchy_record.files()
        return files["custody.json"].data, files["custody.json.sig"].data

    fast = {"EPORT_CRL_REFRESH_SECONDS": "0.3"}  # the check runs on each refresher cycle
    try:
        srv, proc, _ = start_sealed(tmp_path, data, extra_env=fast)
        try:
            assert published_pair() == (old_bytes, old_sig)
            store = SqlStore(sessionmaker(engine), event_sinks=(translog.append_event,))
            record = custody_files.load_record(data)
            opened = [
                open_share_file(
                    (out / "shares" / f"{m}.share").read_bytes(), OLD.format(m).encode()
                )
                for m in PRESENT
            ]

            def write_shares(new: CustodyRecord, shares: Any) -> None:
                for m in MEMBERS:
                    seal_share_file(new, shares[m], NEW.format(m).encode(), work_factor=2**14)

            def dies(*_: object) -> None:
                raise RuntimeError("power cut")

            rebuilt = core.rebuild(data, record, opened)
            monkeypatch.setattr("ca.custody_files.write_record", dies)
            try:
                with pytest.raises(RuntimeError):
                    core.reshare(
                        data,
                        store,
                        rebuilt,
                        [(m, m) for m in MEMBERS],
                        3,
                        write_shares,
                        now=datetime.datetime.now(datetime.UTC),
                    )
            finally:
                rebuilt.wipe()
                monkeypatch.undo()
            assert custody_files.record_path(data).read_bytes() == old_bytes
            new_sig = signature_path(data).read_bytes()
            assert new_sig != old_sig
            time.sleep(1.5)  # several checks of each worker
            assert published_pair() == (old_bytes, old_sig)
            warned: list[str] = []
            for _ in range(100):
                health = requests.get(srv.url + "/ca/v1/health", timeout=5).json()
                warned = [w for w in health.get("warnings", []) if line in w]
                if warned:
                    break
                time.sleep(0.1)
            assert warned and "its signature is of another custody record" in warned[0], health
            assert health["hierarchy"] == "current", health
            time.sleep(1.5)
            assert published_pair() == (old_bytes, old_sig)
            logged = [ln for ln in srv.log.read_text().splitlines() if line in ln]
            assert 1 <= len(logged) <= 2, logged  # once per worker (two), not per check
        finally:
            stop(proc)
        # A restart settles the re-share and publishes the pair, which verifies.
        srv, proc, _ = start_sealed(tmp_path, data, extra_env=fast)
        try:
            for _ in range(100):
                if published_pair()[1] == new_sig:
                    break
                time.sleep(0.1)
            record_bytes, signature = published_pair()
            assert (
                signature == new_sig
                and record_bytes == custody_files.record_path(data).read_bytes()
            )
            verify_record(root, record_bytes or b"", signature)
            assert custody_files.load_record(data).sequence == 2
        finally:
            stop(proc)
    finally:
        engine.dispose()
