"""GET /ca/v1/audit/leaf-hashes answers at most MAX_LEAF_HASHES hashes, whatever is asked
(anyone may ask; it was 262,144 a time), and the pages still rebuild the signed root."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca import audit_api, translog
from ca.app import create_app, db
from ca.config import CAConfig
from ca.devinit import ensure_dev_ca
from cli import auditproof
from tests.helpers import enterprise_at_ceremony, fresh_uscc


def test_leaf_hashes_come_in_bounded_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = CAConfig.load({"dev": True, "data_dir": tmp_path}, environ={})
    ensure_dev_ca(cfg)
    app = create_app(cfg)
    from ca.app import EXTENSION

    with app.app_context():
        service = app.extensions[EXTENSION]
        for i in range(3):
            enterprise_at_ceremony(service.authority, fresh_uscc(), f"Page Co. {i}")
        db.session.remove()
    client = app.test_client()
    with app.app_context():
        size, root = translog.read_head(db.session)
        db.session.remove()
    assert size > 5
    monkeypatch.setattr(audit_api, "MAX_LEAF_HASHES", 4)
    hashes: list[bytes] = []
    while len(hashes) < size:
        r = client.get(f"/ca/v1/audit/leaf-hashes?start={len(hashes)}&count=100000&size={size}")
        got = r.get_data()
        assert r.status_code == 200 and 0 < len(got) <= 4 * 32
        assert int(r.headers["Eport-Log-Count"]) == len(got) // 32
        hashes += [got[i : i + 32] for i in range(0, len(got), 32)]
    assert len(hashes) == size
    assert auditproof.root_from_leaf_hashes(hashes) == root
    with app.app_context():
        db.engine.dispose()
