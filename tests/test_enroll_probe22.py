"""Findings of the probes of session 22 (enrollment and RA; the custody probe's CLI
line), each driven through the CLI as a user would: a service host longer than a
commonName may hold, an invalid IDNA A-label, names and operator ids that differ only in
letter case, a --key-type that a rerun with a kept key cannot honour, the JSON times of
`eport cert show`, and a read-only or full disk said in one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import EPORT_CMD, Server, base_env, free_port, stop, wait_http
from tests.helpers import creds, enroll_enterprise, enroll_operator, jrun
from tests.test_crash_recovery import enrollment_with_its_answer_lost

PW = {"EPORT_PASSPHRASE": "test-passphrase-123"}


def _one_line_refusal(server: Server, *args: str) -> str:
    res = server.eport(*args, check=False)
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eport: error: "), res.stderr
    return lines[0]


def test_a_service_host_the_certificate_cannot_name_is_refused_at_apply(
    sqlite_server: Server,
) -> None:
    """A host of 65-253 characters was taken, then every enrollment failed with a 500
    ("Invalid policy file"): the service-tls profile names it in the CN too (64 at most).
    An A-label whose Punycode does not decode (xn--zz) was certified."""
    long_host = ".".join(["abcdefghij"] * 7) + ".example"  # 84 characters
    line = _one_line_refusal(
        sqlite_server, "apply", "--class", "service", "--agency", "customs", "--name", long_host
    )
    assert "at most 64 characters" in line and "commonName" in line, line
    line = _one_line_refusal(
        sqlite_server, "apply", "--class", "service", "--agency", "customs",
        "--name", "xn--zz.example",
    )  # fmt: skip
    assert "not a valid IDNA A-label" in line, line
    ok = jrun(
        sqlite_server, "apply", "--class", "service", "--agency", "customs",
        "--name", "xn--fiqs8s.example",
    )  # fmt: skip
    assert ok["id"].startswith("app_")


def test_names_and_operator_ids_differing_only_in_case_are_one(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """X.500 compares names ignoring case (RFC 5280 §7.1): "wang fang" is the DN of "Wang
    Fang" to a relying party, and e1 the serialNumber of E1. A second credential of the
    same name or operator id in force is refused, as one spelled the same is."""
    server = sqlite_server
    officer = [*server.officer()]
    first = jrun(server, "apply", "--class", "agency", "--agency", "customs",
                 "--name", "Case Probe Officer")  # fmt: skip
    code = jrun(server, "ra", "approve", first["id"], *officer)["enrollment_code"]
    server.eport("enroll", "--code", code, "--profile", "agency",
                 "--out", str(tmp_path / "officer"), **PW)  # fmt: skip
    again = jrun(server, "apply", "--class", "agency", "--agency", "customs",
                 "--name", "case probe officer")  # fmt: skip
    line = _one_line_refusal(server, "ra", "approve", again["id"], *officer)
    assert "already holds certificate" in line, line

    # An operator id: e1 is E1's serialNumber to a relying party (migration 0011).
    ent = enroll_enterprise(server, tmp_path)
    enroll_operator(server, ent, tmp_path, "CaseOp1")
    line = _one_line_refusal(
        server, "operator", "add", "--name", "Another Person", "--id", "caseop1", *creds(ent)
    )
    assert "operator caseop1" in line and "in force" in line, line


def test_a_rerun_with_a_kept_key_says_the_key_type_asked_for_is_not_used(
    sqlite_server: Server, tmp_path: Path
) -> None:
    _code, out, args = enrollment_with_its_answer_lost(sqlite_server, tmp_path)
    again = sqlite_server.eport(*args, "--key-type", "rsa2048")
    assert "WARNING: --key-type rsa2048 is not used: the kept key is p256" in again.stderr
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    doc = json.loads(sqlite_server.eport("cert", "show", str(out / "cert.pem"), "--json").stdout)
    [shown] = doc["certificates"]
    # the times as every other --json answer writes them
    assert shown["not_after"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert shown["not_before"].endswith("Z")


def test_a_read_only_or_full_disk_is_said_in_one_line() -> None:
    """`eport ca init` on a read-only data directory said `unexpected error:
    OSError(30, 'Read-only file system')` (custody probe, F3)."""
    import errno

    from cli.main import _storage_trouble

    said = _storage_trouble(OSError(errno.EROFS, "Read-only file system", "/srv/eport"))
    assert said is not None and said.startswith("/srv/eport is on a read-only file system")
    assert "is on a full disk" in str(_storage_trouble(OSError(errno.ENOSPC, "No space")))
    assert _storage_trouble(OSError(errno.ENOENT, "No such file", "/x")) is None
    assert _storage_trouble(ValueError("not storage")) is None


@pytest.mark.slow
def test_serve_takes_the_data_dir_and_dev_from_the_settings(tmp_path: Path) -> None:
    """`eport serve` always passed its --data-dir default (var) and --dev over the
    settings: the EPORT_CONFIG file's [ca] data_dir and EPORT_DEV were ignored, and so,
    silently, was an EPORT_AUTH_DATA_DIR elsewhere, which it now refuses in one line (the
    token service reads the CA's certificates from the CA's data directory)."""
    data, auth = tmp_path / "from-config", tmp_path / "auth-own"
    config = tmp_path / "eport.toml"
    config.write_text(f'[ca]\ndata_dir = "{data}"\n')
    port = free_port()
    env = {**base_env(), "EPORT_CONFIG": str(config), "EPORT_DEV": "true"}
    refused = subprocess.run(
        [*EPORT_CMD, "serve", "--port", str(port)], capture_output=True, text=True,
        env={**env, "EPORT_AUTH_DATA_DIR": str(auth)}, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "EPORT_AUTH_DATA_DIR" in refused.stderr and not auth.exists()
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [*EPORT_CMD, "serve", "--port", str(port), "--workers", "1"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/ca/v1/health", proc, log)
        assert (data / "ca" / "root.crt").is_file(), log.read_text()
        assert (data / "eport.db").is_file() and (data / "auth.db").is_file()
        assert not (tmp_path / "var").exists()
    finally:
        stop(proc)


def test_an_issuing_ca_profile_without_p256_is_refused_at_load(tmp_path: Path) -> None:
    """The CA makes its issuing CA and responder keys P-256: a profile that did not allow
    it passed the load, and `eport ca init` or a development CA's first start failed after
    they had begun making keys (settings probe, session 22)."""
    import re
    import shutil

    from ca.errors import PolicyError
    from ca.policy import load_policies

    repo = Path(__file__).resolve().parent.parent / "policies"
    for name in ("issuing-ca", "ocsp-responder"):
        policies = tmp_path / name
        shutil.copytree(repo, policies)
        profile = policies / "profiles" / f"{name}.toml"
        text = re.sub(r"(?m)^key_types = .*$", 'key_types = ["p384"]', profile.read_text())
        profile.write_text(text)
        with pytest.raises(PolicyError, match="key_types: must allow p256") as refused:
            load_policies(policies)
        assert f"{name}.toml" in str(refused.value)
