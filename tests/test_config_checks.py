"""``eport serve`` refuses a bad setting or policy set as it starts: one ``eport: error:``
line naming the variable (or the file and the key), a non-zero exit, and nothing made in
the data directory; and it keeps serving when a reload (SIGHUP) finds a bad policy edit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from ca.config import CAConfig
from cli.serve import worker_timeout
from tests.conftest import EPORT_CMD, base_env, free_port, start_server, stop

REPO_POLICIES = CAConfig.load({}, environ={}).policies_dir


def serve(data_dir: Path, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``eport serve --dev`` on a free port with ``env`` added to an environment without
    EPORT_* settings; a start that should fail (a timeout: it served)."""
    full = base_env()
    full.update(env)
    cmd = [*EPORT_CMD, "serve", "--dev", "--data-dir", str(data_dir), "--port", str(free_port())]
    return subprocess.run(
        [*cmd, *flags], capture_output=True, text=True, env=full, timeout=60, check=False
    )


def refused(res: subprocess.CompletedProcess[str], *expect: str) -> str:
    """The start failed (exit 1) in one ``eport: error:`` line holding each of ``expect``,
    before it announced anything."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Serving" not in res.stdout and "Created" not in res.stdout, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eport: error: "), res.stderr
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]


def made_nothing(data_dir: Path) -> None:
    """Nothing in ``data_dir``: settings and policies are checked before it is made."""
    left = {p.name for p in data_dir.iterdir()} if data_dir.exists() else set()
    assert left == set(), left


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        # F6: empty, another scheme, no scheme, a query or fragment
        ("EPORT_PUBLIC_BASE_URL", "", "empty"),
        ("EPORT_PUBLIC_BASE_URL", "ftp://eport.example", "not an absolute http"),
        ("EPORT_PUBLIC_BASE_URL", "eport.example.com", "not an absolute http"),
        ("EPORT_PUBLIC_BASE_URL", "https://eport.example/?x=1#frag", "query or a fragment"),
        ("EPORT_AUTH_PUBLIC_BASE_URL", "https://", "names no host"),
        ("EPORT_TOKEN_ISSUER", "issuer", "not an absolute http"),
        # F7: out of range, not finite
        ("EPORT_CRL_REFRESH_SECONDS", "-1", "0 (only on fetch) or from 0.1 to 86400 seconds"),
        ("EPORT_CRL_REFRESH_SECONDS", "inf", "finite"),
        ("EPORT_CODE_TTL_SECONDS", "0", "from 60 to"),
        ("EPORT_CODE_TTL_SECONDS", "999999999999999999", "from 60 to"),
        ("EPORT_MAX_BODY_BYTES", "-1", "bytes"),
        ("EPORT_CLOCK_SKEW_SECONDS", "99999999999", "from 0 to 600 seconds"),
        ("EPORT_RESPONDER_RENEW_DAYS", "100000", "from 1 to 180 days"),
        ("EPORT_AUTH_ACCESS_TOKEN_SECONDS", "-600", "from 1 to"),
        ("EPORT_AUTH_SESSION_SECONDS", "0", "from 1 to"),
        ("EPORT_AUTH_STATUS_TTL_SECONDS", "nan", "finite"),
        ("EPORT_AUTH_SWEEP_SECONDS", "-1", "0 (never)"),
        ("EPORT_AUTH_KEY_ROTATION_DAYS", "0", "from 1 to"),
        # F8: not an address, or every address
        ("EPORT_TRUSTED_PROXIES", "notanip", "not an address or a network"),
        ("EPORT_AUTH_TRUSTED_PROXIES", "10.0.0.300", "not an address or a network"),
        ("EPORT_TRUSTED_PROXIES", "127.0.0.1, 0.0.0.0/0", "trusts every address"),
        ("EPORT_AUTH_TRUSTED_PROXIES", "::/0", "trusts every address"),
        # F9: a boolean that is none
        ("EPORT_AUTH_DEV", "maybe", "true or false"),
        # F10: no policies directory
        ("EPORT_POLICIES_DIR", "/nonexistent/policies", "does not exist"),
        ("EPORT_POLICIES_DIR", "/etc/hostname", "is not a directory"),
        ("EPORT_POLICIES_DIR", "", "empty"),
    ],
)
def test_a_bad_setting_is_refused_before_anything_is_made(
    tmp_path: Path, variable: str, value: str, said: str
) -> None:
    """Each of these served (an empty base URL: certificates with no OCSP, CRL or
    caIssuers pointer), failed late with tracebacks from every worker, or was refused
    only after "Serving" and the development CA was made."""
    data = tmp_path / "data"
    refused(serve(data, **{variable: value}), f"eport: error: {variable}: ", said)
    assert not data.exists()


def test_a_misspelt_config_section_is_refused(tmp_path: Path) -> None:
    """F9: a ``[cA]`` table (its settings with it) was ignored without a word."""
    toml = tmp_path / "eport.toml"
    toml.write_text('[cA]\npublic_base_url = "https://ca.example"\n')
    data = tmp_path / "data"
    refused(serve(data, EPORT_CONFIG=str(toml)), str(toml), "unknown section [cA]")
    assert not data.exists()


def test_the_token_service_base_url_is_honoured(tmp_path: Path) -> None:
    """F9: EPORT_AUTH_PUBLIC_BASE_URL was replaced by http://HOST:PORT unless
    EPORT_PUBLIC_BASE_URL was set too."""
    srv, proc = start_server(
        tmp_path / "data", extra_env={"EPORT_AUTH_PUBLIC_BASE_URL": "https://auth.example.org"}
    )
    try:
        config = requests.get(srv.url + "/.well-known/openid-configuration", timeout=10).json()
        assert config["issuer"] == "https://auth.example.org/auth"
        assert "(issuer https://auth.example.org/auth)" in srv.log.read_text()
    finally:
        stop(proc)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, d)
    return d


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("missing-enterprise", "profiles: enterprise: no profile of subject class 'enterprise'"),
        ("missing-auditor", "profiles: auditor: no profile of subject class 'auditor'"),
        ("missing-responder", "profiles: ocsp-responder: the ocsp-responder profile is required"),
        ("missing-members", "members.toml: -: file not found"),
        ("dangling-profile", "profiles/x.toml: -: file not found"),
        ("ee-from-root", "profiles/enterprise.toml: issuer: root signs CA profiles only"),
        ("auth-profiles", "profiles/enterprise.toml: subject_class: unknown class 'company'"),
    ],
)
def test_a_bad_policy_set_is_refused_in_one_line(
    tmp_path: Path, policies: Path, change: str, said: str
) -> None:
    """F1, F3, F4, F5: a policy set without an enterprise (or auditor, or OCSP responder)
    profile served (an approval handed out a code for no profile, or the development CA
    failed half-made); a missing members.toml or a dangling profile symlink was
    "unexpected error: FileNotFoundError"; an end-entity profile issued by the root was
    accepted; EPORT_AUTH_POLICIES_DIR's own profiles were read by each worker only."""
    env = {"EPORT_POLICIES_DIR": str(policies)}
    profiles = policies / "profiles"
    if change == "missing-enterprise":
        (profiles / "enterprise.toml").unlink()
    elif change == "missing-auditor":
        (profiles / "auditor.toml").unlink()
    elif change == "missing-responder":
        (profiles / "ocsp-responder.toml").unlink()
    elif change == "missing-members":
        (policies / "members.toml").unlink()
    elif change == "dangling-profile":
        (profiles / "x.toml").symlink_to("/nonexistent/x.toml")
    elif change == "ee-from-root":
        edit(profiles / "enterprise.toml", 'issuer = "enterprise"', 'issuer = "root"')
    elif change == "auth-profiles":
        edit(profiles / "enterprise.toml", '"enterprise"', '"company"')
        env = {"EPORT_AUTH_POLICIES_DIR": str(policies)}
    data = tmp_path / "data"
    line = refused(serve(data, **env), said)
    assert str(policies) in line
    made_nothing(data)


def child_pids(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return {int(p) for p in out.stdout.split()}


def gunicorn_master(port: int) -> int:
    """The gunicorn master listening on ``port``: the test's process may be the zygote's
    launcher (tests/eport_launch.py), which passes a signal to the whole process group,
    workers included; a reload is a SIGHUP to the master alone."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    holders: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        holders[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    masters = [pid for pid, parent in holders.items() if parent not in holders]
    assert len(masters) == 1, holders
    return masters[0]


def _answers(url: str) -> None:
    for path in ("/ca/v1/health", "/.well-known/openid-configuration", "/auth/jwks.json"):
        assert requests.get(url + path, timeout=10).status_code == 200, path


def _wait_for(check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_reload_with_a_bad_policy_keeps_serving(tmp_path: Path, policies: Path) -> None:
    """F11: SIGHUP after a bad edit made every new worker fail to boot and the master
    exit: the CA and the token service were gone. The master checks the policies first:
    a bad set is one log line naming the file and the key, and the workers it has keep
    serving; a good set replaces them as before."""
    srv, proc = start_server(tmp_path / "data", extra_env={"EPORT_POLICIES_DIR": str(policies)})
    try:
        master = gunicorn_master(int(srv.url.rsplit(":", 1)[1]))
        workers = child_pids(master)
        assert len(workers) == 2, workers
        profile = policies / "profiles" / "enterprise.toml"
        good = profile.read_text()
        edit(profile, '"rsa2048"', '"rsa1024"')
        os.kill(master, signal.SIGHUP)
        _wait_for(lambda: "reload (SIGHUP) refused" in srv.log.read_text())
        time.sleep(2)  # a reload would have replaced the workers by now
        assert proc.poll() is None
        _answers(srv.url)
        assert child_pids(master) == workers
        line = next(x for x in srv.log.read_text().splitlines() if "refused" in x)
        assert f"{profile}: key_types[3]: key type 'rsa1024' is not allowed" in line
        assert "Traceback" not in srv.log.read_text()
        # A worker restarted while the bad file is there (a crash, the OOM killer) cannot
        # load it: it says so and exits for another try; the master and the other worker
        # keep serving (it was "Worker failed to boot" and the whole server stopped).
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: "worker booting: the policies cannot be loaded" in srv.log.read_text())
        assert proc.poll() is None
        _answers(srv.url)
        profile.write_text(good)
        os.kill(master, signal.SIGHUP)
        _wait_for(lambda: len(child_pids(master) - workers) == 2 and len(child_pids(master)) == 2)
        _answers(srv.url)
        assert proc.poll() is None
    finally:
        stop(proc)


def test_a_host_other_than_loopback_is_warned_about(tmp_path: Path) -> None:
    """F13: --host 0.0.0.0 served plain HTTP to the network without a word."""
    from cli.serve import start_warnings

    cfg = CAConfig.load({"data_dir": tmp_path, "dev": True}, environ={})
    (warning,) = start_warnings(cfg, None, "0.0.0.0")
    assert "listening on 0.0.0.0, not a loopback address, over plain HTTP" in warning
    assert "--dev" in warning
    for host in ("127.0.0.1", "::1", "localhost"):
        assert start_warnings(cfg, None, host) == []


@pytest.mark.slow
def test_issuers_and_wide_proxies_are_warned_about_at_start(tmp_path: Path, policies: Path) -> None:
    """F3, F8: a profile naming an issuing CA that does not exist served, and failed at
    enrollment with a 404; in --dev a typo made an extra issuing CA without a word; a
    proxy network of a sixteenth of IPv4 was trusted without a word."""
    profile = policies / "profiles" / "enterprise.toml"
    edit(profile, 'issuer = "enterprise"', 'issuer = "enterprize"')
    env = {"EPORT_POLICIES_DIR": str(policies), "EPORT_TRUSTED_PROXIES": "10.0.0.0/4"}
    data = tmp_path / "data"
    _, proc = start_server(data, extra_env=env)
    stop(proc)
    log = (tmp_path / next(p.name for p in tmp_path.glob("serve-*.log"))).read_text()
    assert f"WARNING: {profile}: issuer: the development CA has an issuing CA 'enterprize'" in log
    assert "include 0.0.0.0/4 (268435456 addresses)" in log
    edit(profile, 'issuer = "enterprize"', 'issuer = "other"')
    srv, proc = start_server(data, extra_env={"EPORT_POLICIES_DIR": str(policies)})
    stop(proc)
    assert f"WARNING: {profile}: issuer: this CA has no issuing CA 'other'" in srv.log.read_text()


@pytest.mark.slow
def test_status_urls_follow_their_own_base_and_a_moved_base_is_warned(tmp_path: Path) -> None:
    """EPORT_STATUS_BASE_URL: the status URLs in certificates (OCSP, CRL, caIssuers) may
    be plain http:// while the service's public base is https:// (RFC 5280, RFC 6960).
    And a server started with another base than its CA was made with (EPORT_PUBLIC_BASE_URL
    forgotten or changed) says so: new certificates would point elsewhere."""
    from cryptography import x509

    from tests.helpers import cert_of, enroll_enterprise

    data = tmp_path / "data"
    status = "http://status.eport.example"
    srv, proc = start_server(data, workers=1, extra_env={"EPORT_STATUS_BASE_URL": status})
    try:
        cert = cert_of(enroll_enterprise(srv, tmp_path, "Status Base Co."))
    finally:
        stop(proc)
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    urls = {d.access_location.value for d in aia}
    assert f"{status}/ocsp" in urls, urls
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value.startswith(f"{status}/crl/")
    # Started again without it: certificates would name this server's own address.
    srv, proc = start_server(data, workers=1)
    try:
        log = srv.log.read_text(errors="replace")
        assert f"the CA's certificates name {status}/crl/" in log, log
    finally:
        stop(proc)
    srv, proc = start_server(data, workers=1, extra_env={"EPORT_STATUS_BASE_URL": status})
    try:
        assert "the CA's certificates name" not in srv.log.read_text(errors="replace")
    finally:
        stop(proc)


def test_a_database_answer_deadline_past_gunicorns_timeout_lengthens_it() -> None:
    """gunicorn kills a sync worker that sends no heartbeat for its timeout (60 s): a
    database answer deadline set longer would never answer its 503. The worker timeout
    follows it; the default and 0 (no deadline) keep 60 s."""
    assert worker_timeout(CAConfig.load({}, environ={})) == 60
    assert worker_timeout(CAConfig.load({"database_answer_seconds": 0}, environ={})) == 60
    assert worker_timeout(CAConfig.load({"database_answer_seconds": 120}, environ={})) == 135
