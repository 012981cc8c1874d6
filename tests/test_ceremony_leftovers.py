"""A root ceremony that failed and could not put all its files back (a full disk during
its undo) leaves its journal; the next join puts the files back before anything reads
them, as the next start does.

Before (custody probe, session 22): the retry of such a ceremony made a new journal
object whose empty undo deleted the old journal, so nothing ever put the files back:
``issuers/active.json`` named a generation whose key and certificate were gone, RA
officers' signed requests were refused, and no ceremony could be opened to repair it."""

from __future__ import annotations

import base64
import errno
import json
from pathlib import Path

import pytest

from ca import ceremony_files
from ca.ceremony_files import FileChanges, journal_path, settle
from tests.helpers import health_of
from tests.test_custody_ceremonies import enroll, join, rotate, unsealed_custody_server


def test_a_retry_keeps_the_journal_an_undo_that_failed_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "ca"
    d.mkdir()
    f = d / "active.json"
    f.write_bytes(b"old")
    journal = journal_path(d, "c1")
    first = FileChanges(journal=journal)
    first.write(f, b"new")

    def full(path: Path, data: bytes, mode: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ceremony_files, "_put", full)
    with pytest.raises(OSError):
        first.undo()
    monkeypatch.undo()
    assert f.read_bytes() == b"new" and journal.exists()
    retry = FileChanges(journal=journal)
    retry.undo()  # the retry failed before it wrote anything
    assert journal.exists(), "the retry dropped the journal it did not write"
    assert settle(d, lambda cid: False) == ["c1"]
    assert f.read_bytes() == b"old" and not journal.exists()


@pytest.mark.slow
def test_the_next_join_puts_back_what_a_failed_undo_left(tmp_path: Path) -> None:
    """A rollover whose M-th join failed and whose undo left ``issuers/active.json``
    naming a generation that does not exist (its journal kept): the M-th join of the
    retry puts the file back first, then rotates, and the CA issues from the new
    generation."""
    with unsealed_custody_server(tmp_path) as (srv, out, tmp):
        d = srv.data_dir / "ca"
        cid = rotate(srv, out)
        for m in ("customs", "tax"):
            join(srv, out, cid, m)
        active = d / "issuers" / "active.json"
        before = active.read_bytes() if active.exists() else None  # none at first
        # what a failed undo leaves: the file ahead of the database, and its journal
        journal_path(d, cid).write_text(
            json.dumps(
                {
                    "ceremony": cid,
                    "files": [
                        {
                            "path": "issuers/active.json",
                            "before": None if before is None else base64.b64encode(before).decode(),
                            "mode": 0o644,
                        }
                    ],
                }
            )
        )
        active.write_text(json.dumps({"enterprise": "enterprise-9"}))
        health = health_of(srv.url)
        assert health["status"] == "degraded" and health["hierarchy"] == "unsettled", health
        done = json.loads(join(srv, out, cid, "forex").stdout)
        assert done["state"] == "done" and done["result"]["generation"] == "enterprise-2", done
        assert json.loads(active.read_text())["enterprise"] == "enterprise-2"
        assert not journal_path(d, cid).exists()
        assert "ceremony " + cid + " did not commit" in srv.log.read_text()
        enroll(srv, out, tmp, "After The Leftover Co")  # issues from enterprise-2
        assert health_of(srv.url)["hierarchy"] == "current"
