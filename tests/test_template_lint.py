"""``eport serve`` lints every profile's certificate template once, before its workers
start, and refuses in one line a template pkilint finds an error in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ca.config import CAConfig
from tests.conftest import EPORT, free_port, start_server, stop


def _serve(data_dir: Path, policies: Path) -> subprocess.CompletedProcess[str]:
    cmd = [EPORT, "serve", "--dev", "--data-dir", str(data_dir), "--port", str(free_port())]
    env = {"EPORT_POLICIES_DIR": str(policies), "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def test_a_template_that_does_not_lint_stops_the_server_in_one_line(tmp_path: Path) -> None:
    """A profile whose template makes an invalid certificate (here a DNS name with a
    space) was refused by every gunicorn worker as it booted: a traceback from each and
    "Worker failed to boot". The master lints the templates before the workers start: one
    line naming the profile and pkilint's finding, exit 1, on a new data directory and on
    one whose CA was made with the good policies."""
    policies = tmp_path / "policies"
    shutil.copytree(CAConfig.load({}).policies_dir, policies)
    existing = tmp_path / "existing"
    _, proc = start_server(existing, extra_env={"EPORT_POLICIES_DIR": str(policies)})
    stop(proc)
    profile = policies / "profiles" / "service-tls.toml"
    text = profile.read_text()
    assert 'san_dns = ["{service_host}"]' in text
    profile.write_text(text.replace('["{service_host}"]', '["bad host {service_host}"]'))
    for data_dir in (existing, tmp_path / "new"):
        res = _serve(data_dir, policies)
        assert res.returncode == 1, res.stderr
        assert "Traceback" not in res.stderr and "Worker" not in res.stderr, res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("eport: error: profile 'service-tls': its certificate template"), (
            last
        )
        assert "invalid_domain_name_syntax" in last and "bad host" in last, last
        assert "Serving" not in res.stdout
