"""`eport ca init`, then `eport serve` without --dev: sealed keys, real passphrases."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import requests

from tests.conftest import EPORT, Server, free_port, stop, wait_http


def test_init_then_serve_sealed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = tmp_path / "ceremony"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPORT_")}
    env.update(
        EPORT_ROOT_PASSPHRASE="root passphrase of the ceremony",
        EPORT_CA_KEY_PASSPHRASE="issuing keys passphrase",
        EPORT_OFFICER_PASSPHRASE="officer passphrase",
        EPORT_AUTH_KEY_PASSPHRASE="token signing keys passphrase",
    )
    res = subprocess.run(
        [EPORT, "ca", "init", "--data-dir", str(data), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert set(record["officers"]) == {"customs", "commerce", "tax", "forex", "inspection"}
    assert record["threshold"] == 3
    # No key is stored in the clear anywhere.
    for path in [*data.rglob("*.key"), *out.rglob("*.key")]:
        assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"), path
    for path in [*data.rglob("*"), *out.rglob("*")]:
        if path.is_file():
            blob = path.read_bytes()
            assert (
                b"issuing keys passphrase" not in blob
                and b"root passphrase of the ceremony" not in blob
            )
    # A second init refuses.
    again = subprocess.run(
        [EPORT, "ca", "init", "--data-dir", str(data), "--out", str(tmp_path / "o2")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 1 and "already holds a CA" in again.stderr

    # Without the passphrase the server refuses to start; with it, it serves.
    port = free_port()
    log = tmp_path / "serve.log"
    bad_env = dict(env, EPORT_CA_KEY_PASSPHRASE="wrong passphrase!")
    bad = subprocess.run(
        [EPORT, "serve", "--data-dir", str(data), "--port", str(port), "--workers", "1"],
        capture_output=True,
        text=True,
        env=bad_env,
        timeout=60,
    )
    assert bad.returncode != 0 and "cannot unseal" in (bad.stdout + bad.stderr)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [EPORT, "serve", "--data-dir", str(data), "--port", str(port), "--workers", "1"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ca/v1/health", proc, log)
        assert requests.get(url + "/ca/v1/health", timeout=5).json()["sealed"] is False
        srv = Server(url, data, f"sqlite:///{data / 'eport.db'}", log)
        app = json.loads(
            srv.eport(
                "apply", "--uscc", "91350100M000100Y43", "--name", "Prod Co.", "--json"
            ).stdout
        )
        officer = out / "officers" / "tax"
        grant = srv.eport(
            "ra",
            "approve",
            app["id"],
            "--cert",
            str(officer / "officer.pem"),
            "--key",
            str(officer / "officer.key"),
            "--json",
            EPORT_PASSPHRASE="officer passphrase",
        )
        assert json.loads(grant.stdout)["enrollment_code"]
    finally:
        stop(proc)
