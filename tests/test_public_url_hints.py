"""A client that reaches the server by another address than its public base URL (a
restored host checked before it goes behind its proxy) is told which address the
server expects, not only "Audience doesn't match" (deployment probe, F13)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import start_server, stop
from tests.helpers import creds, enroll_enterprise

PUBLIC = "https://sso.eport.example"


def test_a_login_signed_for_another_address_names_the_public_one(tmp_path: Path) -> None:
    srv, proc = start_server(
        tmp_path / "data", workers=1, extra_env={"EPORT_AUTH_PUBLIC_BASE_URL": PUBLIC}
    )
    try:
        ent = enroll_enterprise(srv, tmp_path, "Restored Host Trading Co.")
        res = srv.eport("login", *creds(ent), EPORT_CONFIG_DIR=str(tmp_path / "c"), check=False)
        assert res.returncode == 1, res
        line = res.stderr.strip()
        assert "\n" not in line, line
        assert f"audience (aud) is '{srv.url}/auth/token', not {PUBLIC}/auth/token" in line, line
        assert "EPORT_PUBLIC_BASE_URL" in line, line
        assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.json"))
    finally:
        stop(proc)
