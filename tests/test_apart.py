"""The CA and the token service run apart (DESIGN.md: "production runs them apart"):
``eport serve --only ca`` on one data directory, ``eport serve --only auth`` on another
that holds only the CA's public files, behind examples/front_proxy/nginx.conf routing the
token service's paths to the second. Users drive them through the front with the CLI,
as they would one server."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authsvc.client import IntrospectionFailed, Introspector
from tests.conftest import (
    EPORT_CMD,
    Server,
    base_env,
    free_port,
    start_server,
    stop,
    wait_http,
)
from tests.helpers import (
    SERVICE_HOST,
    Relay,
    cert_of,
    creds,
    dev_issuer_key,
    enroll_enterprise,
    enroll_service,
    jrun,
    nginx,
    serial_clone,
    serial_of,
)
from tests.test_introspection_mtls import proxy_certificate

SITE = Path(__file__).resolve().parent.parent / "examples" / "front_proxy" / "nginx.conf"
AUTH_PASSPHRASE = "token-service-alone-passphrase"
SERVICE = "customs-declaration"
assert SERVICE_HOST.startswith(SERVICE + ".")


def copy_public_files(ca_data: Path, auth_data: Path) -> None:
    """What docs/token-service.md tells the token service's host to copy from the CA's."""
    src, dst = ca_data / "ca", auth_data / "ca"
    (dst / "issuers").mkdir(parents=True, exist_ok=True)
    for name in ("root.crt", "root.crl"):
        shutil.copy2(src / name, dst / name)
    for crt in (src / "issuers").glob("*.crt"):
        shutil.copy2(crt, dst / "issuers" / crt.name)


def serve_ca_alone(
    ca_data: Path, port: int | None = None, **env: str
) -> tuple[Server, subprocess.Popen[bytes]]:
    """``eport serve --only ca`` on ``ca_data``, one worker (on ``port``, else a free one),
    with the settings ``env``."""
    return start_server(ca_data, workers=1, port=port, args=("--only", "ca"), extra_env=env)


def serve_auth(
    auth_data: Path, port: int, env: dict[str, str], log: Path, workers: int = 1
) -> subprocess.Popen[bytes]:
    """``eport serve --only auth`` on ``auth_data``, once its discovery answers."""
    cmd = [*EPORT_CMD, "serve", "--only", "auth", "--data-dir", str(auth_data)]
    cmd += ["--port", str(port), "--workers", str(workers)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/.well-known/openid-configuration", proc, log)
    except Exception:
        stop(proc)
        raise
    return proc


def test_the_services_run_apart_behind_one_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    front_port, ca_port, auth_port = free_port(), free_port(), free_port()
    front = f"https://127.0.0.1:{front_port}"
    crt, key = proxy_certificate(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(crt))  # the CLI, and both servers, trust the front
    common = {"EPORT_PUBLIC_BASE_URL": front, "EPORT_TRUSTED_PROXIES": "127.0.0.1"}
    ca_data, auth_data = tmp_path / "ca-data", tmp_path / "auth-data"
    # status straight from the CA, over plain HTTP as RFC 5019 expects
    ca_srv, ca_proc = serve_ca_alone(
        ca_data, ca_port, **common, EPORT_STATUS_BASE_URL=f"http://127.0.0.1:{ca_port}"
    )
    auth_proc = None
    try:
        # The CA alone serves none of the token service's paths
        r = requests.get(ca_srv.url + "/.well-known/openid-configuration", timeout=10)
        assert r.status_code == 404, r.text
        copy_public_files(ca_data, auth_data)
        env = (
            base_env()
            | common
            | {
                "EPORT_AUTH_STATUS_MODE": "ocsp",
                "EPORT_AUTH_KEY_PASSPHRASE": AUTH_PASSPHRASE,
            }
        )
        auth_proc = serve_auth(auth_data, auth_port, env, tmp_path / "auth.log")
        r = requests.get(f"http://127.0.0.1:{auth_port}/ca/v1/health", timeout=10)
        assert r.status_code == 404, r.text  # and the token service none of the CA's
        # its own health says what it trusts, for a monitor of the host apart
        health = requests.get(f"http://127.0.0.1:{auth_port}/auth/health?ready", timeout=10)
        doc = health.json()
        assert health.status_code == 200 and doc["database"] == "ok", doc
        assert doc["status_mode"] == "ocsp"
        assert doc["trust"]["issuing_cas"] == len(list(ca_data.glob("ca/issuers/*.crt")))
        assert doc["trust"]["root_crl_next_update"].endswith("Z")
        ca_bundle = tmp_path / "eport-cas.pem"
        ca_bundle.write_bytes(
            b"".join(
                p.read_bytes()
                for p in [ca_data / "ca" / "root.crt", *sorted(ca_data.glob("ca/issuers/*.crt"))]
            )
        )
        site = (
            SITE.read_text()
            .replace("/etc/eport/tls/fullchain.pem", str(crt))
            .replace("/etc/eport/tls/key.pem", str(key))
            .replace("/etc/eport/eport-cas.pem", str(ca_bundle))
            .replace("127.0.0.1:8000;  # the token service", f"127.0.0.1:{auth_port};")
            .replace("127.0.0.1:8000;  # the CA", f"127.0.0.1:{ca_port};")
            .replace("0.0.0.0:443", f"127.0.0.1:{front_port}")
        )
        assert "server 127.0.0.1:8000" not in site
        with nginx(tmp_path, site, front_port):
            meta = requests.get(front + "/.well-known/openid-configuration", timeout=10).json()
            assert meta["issuer"] == front + "/auth"
            users = Server(front, ca_data, ca_srv.database_url, ca_srv.log)
            # An auditor logs in at the token service and reads the CA's audit API with
            # its token: the CA verifies it by the token service's JWKS, through the front.
            auditor = ca_data / "dev" / "auditors" / "tax"
            audit_cfg = str(tmp_path / "auditor-cfg")
            users.eport(
                "login",
                "--cert",
                str(auditor / "auditor.pem"),
                "--key",
                str(auditor / "auditor.key"),
                EPORT_CONFIG_DIR=audit_cfg,
                EPORT_PASSPHRASE=(auditor / "DEV-ONLY-passphrase.txt").read_text().strip(),
            )
            token = users.eport("token", "--service", "audit", EPORT_CONFIG_DIR=audit_cfg)
            r = requests.get(
                front + "/ca/v1/audit/events?limit=5",
                headers={"Authorization": f"Bearer {token.stdout.strip()}"},
                timeout=10,
            )
            assert r.status_code == 200 and r.json()["events"], r.text
            # An enterprise applies, is approved, enrolls (the CA) and logs in (the
            # token service), all at the one address.
            ent = enroll_enterprise(users, tmp_path, "Apart Trading Co.")
            cfg = str(tmp_path / "ent-cfg")
            users.eport("login", *creds(ent), EPORT_CONFIG_DIR=cfg)
            users.eport("token", "--service", "portal", EPORT_CONFIG_DIR=cfg)
            # A copy of its certificate made with the issuing CA's key (a new key, the
            # same serial) is not it: the CA's OCSP answer carries the hash of the one
            # it recorded (CertHash), so the token service apart finds it unknown.
            clone, clone_key = serial_clone(cert_of(ent), dev_issuer_key(ca_data, "enterprise"))
            thief = tmp_path / "thief"
            thief.mkdir()
            (thief / "cert.pem").write_bytes(clone.public_bytes(serialization.Encoding.PEM))
            (thief / "key.pem").write_bytes(
                clone_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"test-passphrase-123"),
                )
            )
            (thief / "key.pem").chmod(0o600)
            shutil.copy(ent / "chain.pem", thief / "chain.pem")
            stolen = users.eport(
                "login", *creds(thief), EPORT_CONFIG_DIR=str(tmp_path / "thief-cfg"), check=False
            )
            assert stolen.returncode == 1 and "unknown" in stolen.stderr, stolen.stderr
            # It revokes its certificate at the CA; the token service learns it by OCSP:
            # the session ends and the certificate logs in no more.
            users.eport(
                "revoke", *creds(ent), "--reason", "keyCompromise", "--serial", serial_of(ent)
            )
            again = users.eport("login", *creds(ent), EPORT_CONFIG_DIR=cfg, check=False)
            assert again.returncode != 0 and "revoked" in again.stderr, again.stderr
            after = users.eport("token", "--service", "portal", EPORT_CONFIG_DIR=cfg, check=False)
            assert after.returncode != 0, after.stdout
        # The token service's host holds no CA key and no CA database: only the public
        # files copied to it, its own database and its own (encrypted) keys.
        assert not (auth_data / "eport.db").exists()
        assert sorted(p.name for p in (auth_data / "ca").rglob("*") if p.is_file()) == sorted(
            ["root.crt", "root.crl", *(p.name for p in ca_data.glob("ca/issuers/*.crt"))]
        )
        assert "Traceback" not in (tmp_path / "auth.log").read_text()
    finally:
        if auth_proc is not None:
            stop(auth_proc)
        stop(ca_proc)


def _serve_alone(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [*EPORT_CMD, "serve", "--only", "auth", "--data-dir", str(data), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=base_env() | env, timeout=60, check=False
    )


def test_the_token_service_alone_says_what_it_lacks(tmp_path: Path) -> None:
    """Each refusal is one line, exit 1, and no server; none makes a database."""
    data = tmp_path / "auth-data"
    res = _serve_alone(data, "--port", "1")
    assert res.returncode == 1 and "has no root.crt, root.crl, issuers/*.crt" in res.stderr
    assert not data.exists()
    # The public files of a development CA, copied as told
    ca = tmp_path / "ca-data"
    from ca.config import CAConfig
    from ca.devinit import ensure_dev_ca

    ensure_dev_ca(CAConfig.load({"data_dir": ca, "dev": True}, environ={}))
    copy_public_files(ca, data)
    # the CA started on it (a slip of --data-dir) is told what the directory is
    for only in ((), ("--only", "ca")):
        cmd = [*EPORT_CMD, "serve", *only, "--data-dir", str(data), "--port", "1"]
        res = subprocess.run(cmd, capture_output=True, text=True, env=base_env(), timeout=60)
        assert res.returncode == 1 and "serve it with `eport serve --only auth`" in res.stderr
    res = _serve_alone(data)
    assert res.returncode == 1 and "set EPORT_AUTH_STATUS_MODE=ocsp" in res.stderr, res.stderr
    res = _serve_alone(data, EPORT_AUTH_STATUS_MODE="ocsp")
    assert res.returncode == 1 and "EPORT_AUTH_KEY_PASSPHRASE" in res.stderr, res.stderr
    res = _serve_alone(data, "--dev", EPORT_AUTH_STATUS_MODE="ocsp")
    assert res.returncode == 1 and "made by a CA's `eport serve --dev`" in res.stderr
    # A root CRL the root did not sign (another CA's) is refused before anything starts
    other = tmp_path / "other-ca"
    ensure_dev_ca(CAConfig.load({"data_dir": other, "dev": True}, environ={}))
    shutil.copy2(other / "ca" / "root.crl", data / "ca" / "root.crl")
    res = _serve_alone(data, EPORT_AUTH_STATUS_MODE="ocsp", EPORT_AUTH_KEY_PASSPHRASE="x" * 16)
    assert res.returncode == 1 and "cannot be used" in res.stderr, res.stderr
    assert not (data / "auth.db").exists()


def test_a_status_fault_is_a_503_not_a_verdict(tmp_path: Path) -> None:
    """The token service alone, its status by OCSP through a relay: when the CA's answer
    cannot be had (the responder says tryLater for one certificate, or the way to it is
    down), validation, introspection, refresh and login are 503 (retry), never a verdict
    on the token (401, "active": false) nor a 500; what needs no status (the key set) is
    served; and all works again once the responder answers."""
    ca_port = free_port()
    ca_url = f"http://127.0.0.1:{ca_port}"
    relay = Relay(ca_url)
    ca_data, auth_data = tmp_path / "ca-data", tmp_path / "auth-data"
    ca_srv, ca_proc = serve_ca_alone(ca_data, ca_port, EPORT_STATUS_BASE_URL=relay.url)
    auth_proc = None
    try:
        copy_public_files(ca_data, auth_data)
        auth_port = free_port()
        env = base_env() | {
            "EPORT_PUBLIC_BASE_URL": f"http://127.0.0.1:{auth_port}",
            "EPORT_AUTH_STATUS_MODE": "ocsp",
            "EPORT_AUTH_STATUS_TTL_SECONDS": "0",  # every use asks the CA
            "EPORT_AUTH_KEY_PASSPHRASE": AUTH_PASSPHRASE,
        }
        auth_proc = serve_auth(auth_data, auth_port, env, tmp_path / "auth.log")
        auth = Server(f"http://127.0.0.1:{auth_port}", ca_data, ca_srv.database_url, ca_srv.log)
        ent = enroll_enterprise(ca_srv, tmp_path, "Relay Trading Co.")
        grant = jrun(ca_srv, "operator", "add", "--name", "Relay Op", "--id", "R1", *creds(ent))
        op = tmp_path / "op"
        code = grant["enrollment_code"]
        jrun(ca_srv, "enroll", "--code", code, "--profile", "operator", "--out", str(op))
        svc = enroll_service(ca_srv, tmp_path)
        # the CA's URL beside the token service's: the grant names the operator's authorization
        alone = auth.eport("roles", "grant", "--operator", "R1", "--role", "declaration",
                           *creds(ent), check=False)  # fmt: skip
        assert alone.returncode == 1 and "(--ca-server URL or EPORT_CA_SERVER)" in alone.stderr
        auth.eport("roles", "grant", "--operator", "R1", "--role", "declaration", *creds(ent),
                   EPORT_CA_SERVER=ca_srv.url)  # fmt: skip
        cfg = str(tmp_path / "cfg")
        auth.eport("login", *creds(op), EPORT_CONFIG_DIR=cfg)
        token = auth.eport("token", "--service", SERVICE, EPORT_CONFIG_DIR=cfg).stdout.strip()
        headers = {"Authorization": f"Bearer {token}", "X-Eport-Service": SERVICE}

        def validate() -> requests.Response:
            return requests.get(auth.url + "/auth/validate", headers=headers, timeout=30)

        assert validate().status_code == 200
        introspector = Introspector(
            auth.url, svc / "cert.pem", svc / "key.pem", passphrase=b"test-passphrase-123"
        )
        with introspector as intro:
            assert intro.introspect(token).active
            relay.later = serial_of(op)  # tryLater for the operator's certificate only
            r = validate()
            assert r.status_code == 503 and r.headers["Retry-After"], (r.status_code, r.headers)
            with pytest.raises(IntrospectionFailed):
                intro.introspect(token)
        refresh = auth.eport("token", "--service", SERVICE, EPORT_CONFIG_DIR=cfg, check=False)
        assert refresh.returncode == 1 and "status could not be had" in refresh.stderr, refresh
        relay.later, relay.down = None, True
        assert validate().status_code == 503
        health = requests.get(auth.url + "/auth/health", timeout=10).json()
        assert health["ca_status"] == "failing" and health["status"] == "degraded", health
        assert relay.url not in json.dumps(health)  # public: no address
        again = auth.eport("login", *creds(op), EPORT_CONFIG_DIR=cfg, check=False)
        assert again.returncode == 1 and "status could not be had" in again.stderr, again
        assert requests.get(auth.url + "/auth/jwks.json", timeout=10).status_code == 200
        relay.down = False
        deadline = time.monotonic() + 20  # the responder is asked again after a pause
        while validate().status_code != 200:
            assert time.monotonic() < deadline, validate().status_code
            time.sleep(0.2)
        auth.eport("token", "--service", SERVICE, EPORT_CONFIG_DIR=cfg)
        deadline = time.monotonic() + 20  # OCSP answered; the sweep's CRL within seconds
        while (health := requests.get(auth.url + "/auth/health", timeout=10).json())[
            "ca_status"
        ] != "ok":
            assert time.monotonic() < deadline, health
            time.sleep(0.5)
        assert health["status"] == "ok", health
        assert "Traceback" not in (tmp_path / "auth.log").read_text()
    finally:
        relay.close()
        if auth_proc is not None:
            stop(auth_proc)
        stop(ca_proc)


def test_fetch_ca_writes_what_the_token_service_trusts_and_checks_it(tmp_path: Path) -> None:
    """eport auth fetch-ca takes the CA's public files from its API, pinned by the root's
    SHA-256 (or, later, the root already there); a root with another digest is refused and
    nothing is written; the token service alone serves from what it wrote; a second run
    writes nothing when nothing changed."""
    ca_srv, ca_proc = serve_ca_alone(tmp_path / "ca-data")
    auth_proc = None
    try:
        data = tmp_path / "auth-data"
        root = x509.load_pem_x509_certificate((tmp_path / "ca-data/ca/root.crt").read_bytes())
        digest = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
        fetch = ["auth", "fetch-ca", "--data-dir", str(data)]
        no_pin = ca_srv.eport(*fetch, check=False)
        assert no_pin.returncode == 1 and "give --root-sha256" in no_pin.stderr
        wrong = ca_srv.eport(*fetch, "--root-sha256", "0" * 64, check=False)
        assert wrong.returncode == 1 and "nothing was written" in wrong.stderr, wrong.stderr
        assert not (data / "ca").exists()
        colons = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
        first = json.loads(ca_srv.eport(*fetch, "--root-sha256", colons, "--json").stdout)
        issuers = sorted(p.stem for p in (tmp_path / "ca-data/ca/issuers").glob("*.crt"))
        assert first["generations"] == issuers and "root.crt" in first["changed"]
        for name in ("root.crt", "root.crl", *(f"issuers/{i}.crt" for i in issuers)):
            ours, theirs = data / "ca" / name, tmp_path / "ca-data" / "ca" / name
            if name.endswith(".crt"):
                assert x509.load_pem_x509_certificate(ours.read_bytes()) == (
                    x509.load_pem_x509_certificate(theirs.read_bytes())
                ), name
            else:
                assert ours.read_bytes() == theirs.read_bytes(), name
        token = (data / "ca" / "generation").read_text()
        again = ca_srv.eport(*fetch)  # pinned by the root now there
        assert "nothing changed" in again.stdout
        assert (data / "ca" / "generation").read_text() == token
        auth_port = free_port()
        env = base_env() | {
            "EPORT_PUBLIC_BASE_URL": f"http://127.0.0.1:{auth_port}",
            "EPORT_AUTH_STATUS_MODE": "ocsp",
            "EPORT_AUTH_KEY_PASSPHRASE": AUTH_PASSPHRASE,
        }
        auth_proc = serve_auth(data, auth_port, env, tmp_path / "auth.log")
        ent = enroll_enterprise(ca_srv, tmp_path, "Fetched Trust Co.")
        at_auth = Server(f"http://127.0.0.1:{auth_port}", data, "", tmp_path / "auth.log")
        at_auth.eport("login", *creds(ent), EPORT_CONFIG_DIR=str(tmp_path / "cfg"))
    finally:
        if auth_proc is not None:
            stop(auth_proc)
        stop(ca_proc)
