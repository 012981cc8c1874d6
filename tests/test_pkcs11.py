"""CA and enterprise keys in a PKCS#11 token: SoftHSM2 tokens made in a temporary
directory, the real CLI and a real server whose issuing, OCSP, log and root keys sign
in the token (ca/pkcs11.py, docs/custody.md "Keys in an HSM")."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine

from ca import hierarchy
from ca.active_signature import verify_active
from ca.crl import build_crl
from ca.custody_signature import verify_record
from ca.issuance import CertificateFactory, IssuingCA
from ca.keys import KeyType
from ca.pkcs11 import Pkcs11Error, Pkcs11Signer, Pkcs11Uri, TokenKeys, generate, private_key
from ca.policy import load_policies
from cli.keyfiles import csr_for
from tests.conftest import EPORT, EPORT_CMD, REPO, Server, free_port, need, start_server, stop
from tests.helpers import assert_no_secret_in_tree, fresh_uscc
from tests.test_ca_init import custodian_env
from tests.test_ceremony_rollback import ca_files, fail_completions
from tests.test_custody_ceremonies import join, officer_args, start
from tests.test_reshare import PRESENT, reshare
from tests.test_responder_renewal import ask

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
CA_PIN = "ca-pin-7c1e93d0"
ENT_PIN = "ent-pin-42ab19f5"
SO_PIN = "so-pin-0b5d77"


class HSM:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "softhsm2.conf"
        self.ca_pin = root / "ca.pin"
        self.ent_pin = root / "ent.pin"

    @property
    def ca_uri(self) -> str:
        return f"pkcs11:token=eport-ca?module-path={MODULE}&pin-source=file:{self.ca_pin}"

    @property
    def ent_uri(self) -> str:
        return f"pkcs11:token=eport-ent?pin-source=file:{self.ent_pin}"

    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HSM]:
    """Two SoftHSM2 tokens (the CA's and an enterprise's) in a temporary directory; this
    process and every child see them through SOFTHSM2_CONF."""
    util = need("softhsm2-util", "/usr/bin/softhsm2-util")
    need("libsofthsm2.so", MODULE)
    h = HSM(tmp_path_factory.mktemp("hsm"))
    (h.root / "tokens").mkdir()
    h.conf.write_text(
        f"directories.tokendir = {h.root / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    h.ca_pin.write_text(CA_PIN + "\n")
    h.ent_pin.write_text(ENT_PIN + "\n")
    env = {**os.environ, **h.env()}
    for label, pin in (("eport-ca", CA_PIN), ("eport-ent", ENT_PIN), ("eport-unit", CA_PIN)):
        subprocess.run(
            [util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", pin],
            check=True,
            capture_output=True,
            env=env,
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(h.conf))
        mp.delenv("EPORT_PKCS11_PIN", raising=False)
        mp.delenv("EPORT_PKCS11_MODULE", raising=False)
        yield h


def unit_uri(hsm: HSM) -> str:
    return f"pkcs11:token=eport-unit?pin-source=file:{hsm.ca_pin}"


# -- URIs (RFC 7512) --------------------------------------------------------------------------


def test_rfc7512_examples_parse() -> None:
    # RFC 7512 §3 examples.
    u = Pkcs11Uri.parse(
        "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;"
        "model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial="
        "?pin-source=file:/etc/token_pin"
    )
    assert u.path["token"] == "The Software PKCS#11 Softtoken"
    assert u.path["manufacturer"] == "Snake Oil, Inc."
    assert u.id == bytes.fromhex("69953e5cf4bdec91")
    assert u.object == "my-certificate" and u.query["pin-source"] == "file:/etc/token_pin"
    u = Pkcs11Uri.parse("pkcs11:object=my-sign-key;type=private?module-name=mypkcs11")
    with pytest.raises(Pkcs11Error, match="module-path"):
        _ = u.module
    u = Pkcs11Uri.parse("pkcs11:token=A%20name;x-vendor=1?pin-value=123456")
    assert u.pin() == "123456"
    assert "123456" not in str(u.without_pin()) and "123456" not in repr(u)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://example.com/key", "not a PKCS#11 URI"),
        ("pkcs11:token=a;colour=blue", "'colour' is not supported"),
        ("pkcs11:token=a;id=%zz", "badly encoded"),
        ("pkcs11:token=a;token=b", "appears twice"),
        ("pkcs11:token=a?pin-value=1&pin-source=file:/x", "not both"),
        ("pkcs11:token", "has no value"),
        ("pkcs11:slot-id=x", "decimal"),
    ],
)
def test_bad_uris_are_refused(text: str, message: str) -> None:
    with pytest.raises(Pkcs11Error, match=message):
        Pkcs11Uri.parse(text)


_values = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)


@given(
    token=_values,
    obj=_values,
    key_id=st.binary(max_size=12),
    module=_values,
    pin_source=_values,
)
def test_uri_round_trip(token: str, obj: str, key_id: bytes, module: str, pin_source: str) -> None:
    base = Pkcs11Uri.parse(str(Pkcs11Uri({"token": token}, {"module-path": module})))
    assert base.path["token"] == token and base.query["module-path"] == module
    keyed = base.with_key(obj, key_id)
    again = Pkcs11Uri.parse(str(keyed))
    assert (again.object, again.id, again.path["token"]) == (obj, key_id, token)
    with_pin = Pkcs11Uri(again.path, {"pin-source": pin_source})
    assert Pkcs11Uri.parse(str(with_pin)).query == {"pin-source": pin_source}


# -- signing in the token ---------------------------------------------------------------------


@pytest.mark.parametrize("kt", [KeyType.P256, KeyType.P384, KeyType.ED25519, KeyType.RSA2048])
def test_token_signatures_verify_with_cryptography(hsm: HSM, kt: KeyType, tmp_path: Path) -> None:
    import pkcs11

    signer = generate(unit_uri(hsm), kt, f"unit {kt.value}")
    data = b"TBSCertificate bytes " + kt.value.encode()
    sig = signer.sign(data)
    pub = Pkcs11Signer(str(signer.uri)).public_key()  # read back from the token
    assert pub == signer.public_key() and signer.key_type is kt
    if isinstance(pub, ec.EllipticCurvePublicKey):
        assert sig[0] == 0x30  # DER Ecdsa-Sig-Value, not the token's raw r||s
        h = kt.hash_algorithm
        assert h is not None
        pub.verify(sig, data, ec.ECDSA(h))
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        pub.verify(sig, data)
    else:
        assert isinstance(pub, rsa.RSAPublicKey)
        pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    # Behind cryptography's private key interface the token key signs a PKCS#10 request
    # (openssl checks its self-signature) and a JWS (PyJWT, as login and signed requests).
    key = private_key(str(signer.uri))
    csr_file = tmp_path / "req.pem"
    csr_file.write_bytes(csr_for(key))
    res = subprocess.run(
        [need("openssl"), "req", "-in", str(csr_file), "-verify", "-noout"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and "verify OK" in res.stdout + res.stderr, res.stderr
    assert jwt.decode(jwt.encode({"n": 1}, key, kt.jws_alg), pub, [kt.jws_alg]) == {"n": 1}
    with pytest.raises(Pkcs11Error, match="cannot be exported"):
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    # The private key is sensitive and cannot leave the token.
    token = pkcs11.lib(MODULE).get_token(token_label="eport-unit")
    with token.open(rw=False) as s:
        priv = s.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, id=signer.uri.id)
        assert priv[pkcs11.Attribute.SENSITIVE] is True
        assert priv[pkcs11.Attribute.EXTRACTABLE] is False


def test_signer_survives_a_fork(hsm: HSM) -> None:
    """A gunicorn worker inherits the master's session; it must open its own."""
    signer = generate(unit_uri(hsm), KeyType.P256, "fork")
    data = b"signed in a forked child"
    signer.sign(data)  # the parent's session is open
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.write(w, signer.sign(data))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        child_sig = fh.read()
    os.waitpid(pid, 0)
    pub = signer.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(child_sig, data, ec.ECDSA(hashes.SHA256()))
    pub.verify(signer.sign(data), data, ec.ECDSA(hashes.SHA256()))  # parent still signs


def test_hierarchy_in_token_verifies_with_openssl(hsm: HSM, tmp_path: Path) -> None:
    """Root, issuing CA, responder and log keys made in the token: openssl verifies the
    certificates and CRLs they sign; the key files name the keys and hold no secret."""
    openssl = need("openssl")
    data = tmp_path / "data"
    policies = load_policies(REPO / "policies")
    now = datetime.datetime.now(datetime.UTC)
    hierarchy.create(
        policies,
        data,
        root_passphrase=b"unused root passphrase",
        ca_passphrase=b"unused ca passphrase",
        factory=CertificateFactory(public_base_url="http://ca.test"),
        now=now,
        token=TokenKeys(Pkcs11Uri.parse(unit_uri(hsm)), root=True),
    )
    d = hierarchy.ca_dir(data)
    for key_file in d.rglob("*.key"):
        blob = key_file.read_bytes()
        assert blob.startswith(b"PKCS11 pkcs11:token=eport-unit;object=eport%20"), key_file
        assert CA_PIN.encode() not in blob and b"PRIVATE KEY" not in blob
    loaded = hierarchy.load(data, None)  # no passphrase: token keys need no unsealing
    assert not loaded.sealed
    assert all(isinstance(i.signer, Pkcs11Signer) for i in loaded.issuers.values())
    assert isinstance(loaded.log_signer, Pkcs11Signer)
    # A leaf issued by a token-held issuing key, and a CRL signed by it.
    issuer = loaded.issuers["enterprise"]
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(issuer.certificate.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    leaf = _sign_with(builder, issuer)
    crl = build_crl(issuer.certificate, issuer.signer, [], 1, now, now + datetime.timedelta(days=1))
    files = {
        "root.pem": loaded.root.public_bytes(serialization.Encoding.PEM),
        "issuer.pem": issuer.certificate.public_bytes(serialization.Encoding.PEM),
        "leaf.pem": leaf.public_bytes(serialization.Encoding.PEM),
        "responder.pem": loaded.responders["enterprise"].certificate.public_bytes(
            serialization.Encoding.PEM
        ),
        "issuer.crl": crl,
    }
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)

    def ossl(*args: str) -> str:
        res = subprocess.run([openssl, *args], capture_output=True, text=True, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        return res.stdout + res.stderr

    assert "OK" in ossl("verify", "-CAfile", "root.pem", "issuer.pem")
    for leaf_file in ("leaf.pem", "responder.pem"):
        assert "OK" in ossl("verify", "-CAfile", "root.pem", "-untrusted", "issuer.pem", leaf_file)
    (d / "root.crl.pem").write_bytes(
        x509.load_der_x509_crl(loaded.root_crl).public_bytes(serialization.Encoding.PEM)
    )
    assert "verify OK" in ossl(
        "crl", "-in", str(d / "root.crl"), "-inform", "DER", "-CAfile", "root.pem", "-noout"
    )
    assert "verify OK" in ossl(
        "crl", "-in", "issuer.crl", "-inform", "DER", "-CAfile", "issuer.pem", "-noout"
    )


def _sign_with(builder: x509.CertificateBuilder, issuer: IssuingCA) -> x509.Certificate:
    """Sign ``builder``'s TBSCertificate with ``issuer``'s token key (as issuance does)."""
    signer = issuer.signer
    assert isinstance(signer, Pkcs11Signer)
    return builder.sign(private_key(signer.uri), hashes.SHA256())


# -- a real server with its keys in the token ----------------------------------------------------


def run(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*EPORT_CMD, *args], capture_output=True, text=True, env=env, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"eport {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def hsm_server(hsm: HSM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """`eport ca init --pkcs11-uri ... --pkcs11-root`, then `eport serve` (2 workers)."""
    tmp = tmp_path_factory.mktemp("hsm-ca")
    data, out = tmp / "data", tmp / "ceremony"
    # The CA's certificates name its CRL and OCSP URLs at init: on the port it will serve
    # (the default, 127.0.0.1:8000, may be another server's on a busy machine).
    port = free_port()
    env = {**custodian_env(), **hsm.env(), "EPORT_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
    res = run(
        "ca",
        "init",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--pkcs11-uri",
        hsm.ca_uri,
        "--pkcs11-root",
        env=env,
    )
    assert "Token:   root, issuing CA, OCSP and log keys in pkcs11:token=eport-ca" in res.stdout
    # the token's root key signed the custody record (ca/custody_signature.py)
    root = x509.load_pem_x509_certificate((out / "root.crt").read_bytes())
    verify_record(
        root, (out / "custody.json").read_bytes(), (out / "custody.json.sig").read_bytes()
    )
    srv, proc = start_server(data, dev=False, env=env, log_dir=tmp, port=port)
    try:
        yield srv, out
    finally:
        stop(proc)


@pytest.mark.slow
def test_server_with_keys_in_the_token(
    hsm: HSM, hsm_server: tuple[Server, Path], tmp_path: Path
) -> None:
    """One test (one server even under xdist): issuance, OCSP, SSO and signed requests
    with token keys; then the refusals; then no PIN anywhere."""
    issue_status_login(hsm, hsm_server, tmp_path / "flow")
    errors_are_one_line_and_change_nothing(hsm, hsm_server, tmp_path / "errors")
    new_responder_keys_in_the_token(hsm, hsm_server, tmp_path / "renewal")
    rotations_make_keys_in_the_token(hsm, hsm_server, tmp_path / "rotation")
    renewals_make_keys_in_the_token(hsm, hsm_server, tmp_path)
    a_reshare_signs_in_the_token(hsm, hsm_server, tmp_path / "reshare")
    no_pin_in_logs_or_data(hsm_server)


def approved(env: dict[str, str], officer: Path, name: str) -> dict[str, Any]:
    """An enterprise application made and approved through the CLI: the RA's grant."""
    app = json.loads(run("apply", "--uscc", fresh_uscc(), "--name", name, "--json", env=env).stdout)
    cert, key = str(officer / "officer.pem"), str(officer / "officer.key")
    res = run("ra", "approve", app["id"], "--cert", cert, "--key", key, "--json", env=env)
    grant = json.loads(res.stdout)
    assert isinstance(grant, dict)
    return grant


def issue_status_login(hsm: HSM, hsm_server: tuple[Server, Path], tmp_path: Path) -> None:
    srv, out = hsm_server
    assert "held in a PKCS#11 token: the CA starts unsealed" in srv.log.read_text()
    assert requests.get(srv.url + "/ca/v1/health", timeout=5).json()["sealed"] is False
    for key_file in (srv.data_dir / "ca").rglob("*.key"):
        assert key_file.read_bytes().startswith(b"PKCS11 "), key_file
    env = {**srv.env(EPORT_PASSPHRASE="officer passphrase"), **hsm.env()}
    officer = out / "officers" / "customs"
    grant = approved(env, officer, "Token Co.")
    ent = tmp_path / "ent"
    res = run(
        "enroll",
        "--code",
        grant["enrollment_code"],
        "--profile",
        "enterprise",
        "--out",
        str(ent),
        "--pkcs11-uri",
        hsm.ent_uri,
        env=env,
    )
    assert "for a key in the token" in res.stdout
    assert not (ent / "key.pem").exists()
    key_uri = (ent / "key.uri").read_text().strip()
    assert key_uri.startswith("pkcs11:token=eport-ent;object=eport%20") and ";id=%" in key_uri
    # labelled with the time and a random suffix: two keys made in one second differ
    assert re.search(r";object=eport%20\d{8}T\d{6}Z%20[0-9a-f]{6};", key_uri), key_uri
    assert key_uri.endswith(f"?pin-source=file:{hsm.ent_pin}")  # where the PIN is, not the PIN
    cert = x509.load_pem_x509_certificate((ent / "cert.pem").read_bytes())
    signer = Pkcs11Signer(key_uri)
    assert cert.public_key() == signer.public_key()  # the CSR's key is the token's
    # The certificate chains to the root, which the token's root key signed.
    openssl = need("openssl")
    root = srv.data_dir / "ca" / "root.crt"
    names = ("chain.pem", "cert.pem")
    ok = subprocess.run(
        [openssl, "verify", "-CAfile", str(root), "-untrusted", *(str(ent / n) for n in names)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    # OCSP: a response signed by the token-held responder key, verified by the CLI.
    assert (
        json.loads(run("status", "--cert", str(ent / "cert.pem"), "--json", env=env).stdout)[
            "status"
        ]
        == "good"
    )
    # Single sign-on with the token key (RFC 7523 assertion signed in the token).
    cfg = {**env, "EPORT_CONFIG_DIR": str(tmp_path / "cfg")}
    login = json.loads(
        run(
            "login",
            "--cert",
            str(ent / "cert.pem"),
            "--pkcs11-uri",
            key_uri,
            "--json",
            env=cfg,
        ).stdout
    )
    assert login["session"]["subject"]
    token = run("token", "--service", "customs-declaration", env=cfg).stdout.strip()
    assert token.count(".") == 2
    # A signed request with the token key (the key.uri file, PIN from the environment):
    # the enterprise suspends its own certificate, and the responder says so.
    run(
        "suspend",
        "--cert",
        str(ent / "cert.pem"),
        "--key",
        str(ent / "key.uri"),
        env={**env, "EPORT_PKCS11_PIN": ENT_PIN},
    )
    held = run("status", "--cert", str(ent / "cert.pem"), "--json", env=env, check=False)
    assert held.returncode == 4  # eport status's exit status for on hold
    assert json.loads(held.stdout)["status"] == "on-hold"
    # The log's checkpoints are signed by the token's Ed25519 key.
    from ca.checkpoint import parse_verifier_key, verify_note

    key_doc = requests.get(srv.url + "/ca/v1/audit/log-key", timeout=5).json()
    name, pub = parse_verifier_key(key_doc["verifier_key"])
    log_pub = serialization.load_pem_public_key((srv.data_dir / "ca" / "log.pub").read_bytes())
    assert pub == log_pub
    note = requests.get(srv.url + "/ca/v1/audit/checkpoint", timeout=5).content
    assert verify_note(note, name, pub).size > 0


def errors_are_one_line_and_change_nothing(
    hsm: HSM, hsm_server: tuple[Server, Path], tmp_path: Path
) -> None:
    srv, out = hsm_server
    env = {**srv.env(EPORT_PASSPHRASE="officer passphrase"), **hsm.env()}
    ent = tmp_path / "ent"
    officer = out / "officers" / "tax"
    grant = approved(env, officer, "Token Two Co.")
    before = _objects(hsm, "eport-ent")

    def refused(*args: str, message: str, extra: dict[str, str] | None = None) -> None:
        res = run(*args, env={**env, **(extra or {})}, check=False)
        assert res.returncode == 1, res.stdout
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], res.stderr
        assert ENT_PIN not in res.stderr + res.stdout and "wrong-pin-9" not in res.stderr

    enroll = ["enroll", "--code", grant["enrollment_code"], "--profile", "enterprise"]
    refused(
        *enroll,
        "--out",
        str(ent),
        "--pkcs11-uri",
        "pkcs11:token=eport-ent?pin-value=wrong-pin-9",
        message="wrong PIN for PKCS#11 token 'eport-ent'",
    )
    refused(
        *enroll,
        "--out",
        str(ent),
        "--pkcs11-uri",
        "pkcs11:token=no-such-token?pin-value=1234",
        message="no single PKCS#11 token with token 'no-such-token'",
    )
    refused(
        *enroll,
        "--out",
        str(ent),
        "--pkcs11-uri",
        "pkcs11:tokn=x",
        message="'tokn' is not supported",
    )
    # A code the CA refuses: the key made for it is deleted from the token again.
    refused(
        "enroll",
        "--code",
        "not-a-valid-code",
        "--profile",
        "enterprise",
        "--out",
        str(ent),
        "--pkcs11-uri",
        hsm.ent_uri,
        message="(HTTP 4",
    )
    assert _objects(hsm, "eport-ent") == before
    assert not ent.exists()
    # The code is still good: nothing above used it.
    run(*enroll, "--out", str(ent), "--pkcs11-uri", hsm.ent_uri, env=env)
    key_uri = (ent / "key.uri").read_text().strip().split("?")[0]
    login = ["login", "--cert", str(ent / "cert.pem")]
    cfg = {"EPORT_CONFIG_DIR": str(tmp_path / "cfg")}
    missing = re.sub(r"id=[^;?]*", "id=%00%01", key_uri)
    refused(
        *login,
        "--pkcs11-uri",
        f"{missing}?pin-source=file:{hsm.ent_pin}",
        message="no private key matching",
        extra=cfg,
    )
    refused(
        *login,
        "--pkcs11-uri",
        f"{key_uri}?pin-value=wrong-pin-9",
        message="wrong PIN",
        extra=cfg,
    )
    refused(*login, "--pkcs11-uri", key_uri, message="no PIN for PKCS#11 token", extra=cfg)
    assert not (tmp_path / "cfg").exists()
    # A server whose PIN is wrong does not start, and says why in one line.
    bad_pin = tmp_path / "bad.pin"
    bad_pin.write_text("wrong-pin-9\n")
    copy = tmp_path / "data-copy"
    shutil.copytree(srv.data_dir, copy)
    for key_file in (copy / "ca").rglob("*.key"):
        text = key_file.read_text()
        assert f"pin-source=file:{hsm.ca_pin}" in text  # the PIN file's path, not the PIN
        key_file.write_text(text.replace(str(hsm.ca_pin), str(bad_pin)))
    res = subprocess.run(
        [EPORT, "serve", "--data-dir", str(copy), "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={**custodian_env(), **hsm.env()},
        timeout=60,
    )
    assert res.returncode == 1
    assert res.stderr.strip() == "eport: error: wrong PIN for PKCS#11 token 'eport-ca'"


def test_a_token_key_whose_answer_is_lost_is_kept_and_used_again(
    hsm: HSM, sqlite_server: Server, tmp_path: Path
) -> None:
    """`eport enroll --pkcs11-uri` and `eport renew --key key.uri` whose answer is lost (a
    dropped connection, a gateway's 502) after the CA issued: the key stays in the token,
    OUT/key.uri names it, and one line says so and to run the same command again, which
    gets the certificate the CA issued for that key (no new key, no new certificate). A
    refusal (4xx) still deletes the key it made."""
    from tests.test_crash_recovery import BAD_GATEWAY, answer_dropping_proxy, approved_codes

    server = sqlite_server
    (code,) = approved_codes(server, 1)
    before = _objects(hsm, "eport-ent")
    ent = tmp_path / "ent"
    # The PIN in the URI itself: key.uri never holds it, the same command gives it again.
    enroll = ["enroll", "--code", code, "--profile", "enterprise", "--out", str(ent)]
    enroll += ["--pkcs11-uri", f"pkcs11:token=eport-ent?pin-value={ENT_PIN}"]

    def lost(args: list[str], drop: bytes, instead: bytes | None, **env: str) -> str:
        with answer_dropping_proxy(server.url, drop, instead) as proxy:
            res = server.eport("--server", proxy, *args, check=False, **env)
        assert res.returncode == 1, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "run the same command again" in lines[0], res.stderr
        assert ENT_PIN not in res.stderr + res.stdout
        return lines[0]

    line = lost(enroll, b"POST /ca/v1/enroll ", None)
    key_uri = (ent / "key.uri").read_text().strip()
    assert f"kept in the token as {key_uri} (named in {ent / 'key.uri'})" in line, line
    assert not (ent / "cert.pem").exists()
    assert _objects(hsm, "eport-ent") == before + 2  # the key pair is kept
    again = server.eport(*enroll)
    assert f"Using the token key kept by an earlier attempt: {key_uri}" in again.stderr
    assert "for a key in the token" in again.stdout and ENT_PIN not in again.stderr
    assert (ent / "key.uri").read_text().strip() == key_uri
    cert = x509.load_pem_x509_certificate((ent / "cert.pem").read_bytes())
    pin = {"EPORT_PKCS11_PIN": ENT_PIN}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EPORT_PKCS11_PIN", ENT_PIN)
        assert cert.public_key() == Pkcs11Signer(key_uri).public_key()
    assert _objects(hsm, "eport-ent") == before + 2  # no second key

    renewed = tmp_path / "renewed"
    renew = ["renew", "--cert", str(ent / "cert.pem"), "--key", str(ent / "key.uri")]
    renew += ["--out", str(renewed)]
    line = lost(renew, b"POST /ca/v1/renew ", BAD_GATEWAY, **pin)
    new_uri = (renewed / "key.uri").read_text().strip()
    assert "HTTP 502" in line and f"kept in the token as {new_uri}" in line, line
    assert _objects(hsm, "eport-ent") == before + 4
    doc = json.loads(server.eport(*renew, "--json", **pin).stdout)
    assert doc["key_uri"] == new_uri and doc["previous_serial"] == format(cert.serial_number, "x")
    new_cert = x509.load_pem_x509_certificate((renewed / "cert.pem").read_bytes())
    assert format(new_cert.serial_number, "x") == doc["serial"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EPORT_PKCS11_PIN", ENT_PIN)
        assert new_cert.public_key() == Pkcs11Signer(new_uri).public_key()
    assert _objects(hsm, "eport-ent") == before + 4
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            renewals = conn.exec_driver_sql(
                "SELECT serial FROM events WHERE type = 'certificate.renewed' AND details LIKE ?",
                (f'%"previous_serial": "{doc["previous_serial"]}"%',),
            ).all()
    finally:
        engine.dispose()
    assert [r[0] for r in renewals] == [doc["serial"]]  # renewed once, sent twice

    # Refused (4xx): the signing certificate is on hold; the key made is deleted again.
    server.eport(
        "suspend", "--cert", str(renewed / "cert.pem"), "--key", str(renewed / "key.uri"), **pin
    )
    refused_out = tmp_path / "refused"
    res = server.eport(
        "renew", "--cert", str(renewed / "cert.pem"), "--key", str(renewed / "key.uri"),
        "--out", str(refused_out), check=False, **pin,
    )  # fmt: skip
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "(HTTP 4" in res.stderr and not refused_out.exists()
    assert _objects(hsm, "eport-ent") == before + 4


def _objects(hsm: HSM, label: str, pin: str = ENT_PIN) -> int:
    """How many objects the token holds, counted by a separate process."""
    code = (
        "import pkcs11,sys;t=pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2]);"
        "s=t.open(user_pin=sys.argv[3]);print(len(list(s.get_objects())))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, MODULE, label, pin],
        capture_output=True,
        text=True,
        env={**os.environ, **hsm.env()},
        check=True,
    )
    return int(res.stdout)


def a_reshare_signs_in_the_token(hsm: HSM, hsm_server: tuple[Server, Path], tmp: Path) -> None:
    """``eport ca reshare`` of the CA whose root key is in the token: the token signs the
    new custody record (its PIN from the key file's pin-source), and the signature
    verifies under root.crt (ca/custody_signature.py)."""
    srv, out = hsm_server
    tmp.mkdir()
    shares = [out / "shares" / f"{m}.share" for m in PRESENT]
    res = reshare(srv.data_dir, tmp / "out", shares, tmp, **hsm.env())
    assert res.returncode == 0, res.stderr
    record = (srv.data_dir / "ca" / "custody.json").read_bytes()
    assert (
        record == (tmp / "out" / "custody.json").read_bytes() != (out / "custody.json").read_bytes()
    )
    root = x509.load_pem_x509_certificate((out / "root.crt").read_bytes())
    verify_record(root, record, (tmp / "out" / "custody.json.sig").read_bytes())


def no_pin_in_logs_or_data(hsm_server: tuple[Server, Path]) -> None:
    srv, out = hsm_server
    pins = [pin.encode() for pin in (CA_PIN, ENT_PIN, SO_PIN)]
    assert assert_no_secret_in_tree([srv.data_dir, out, srv.log], pins) > 20


def _in_token(path: Path, slot: str) -> bytes:
    """The key file ``path`` names a key of the CA token labelled ``eport <slot>``."""
    blob = path.read_bytes()
    label = urllib.parse.quote(f"eport {slot}", safe="")
    assert blob.startswith(f"PKCS11 pkcs11:token=eport-ca;object={label};id=%".encode()), blob
    return blob


def _no_software_key(d: Path) -> None:
    for path in d.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert b"PRIVATE KEY" not in blob, path
    assert not list(d.rglob("*.new"))


def new_responder_keys_in_the_token(
    hsm: HSM, hsm_server: tuple[Server, Path], tmp_path: Path
) -> None:
    """A forced responder renewal on the token-held server (never unsealed): the new
    keys are made in the token, and fresh OCSP responses are signed there."""
    srv, out = hsm_server
    tmp_path.mkdir()
    d = srv.data_dir / "ca" / "responders"
    ids = sorted(p.stem for p in d.glob("*.crt"))
    before = {i: (d / f"{i}.key").read_bytes() for i in ids}
    objects = _objects(hsm, "eport-ca", CA_PIN)
    res = srv.eport(
        "ca", "renew-responders", "--force", *officer_args(out), "--json",
        EPORT_PASSPHRASE="officer passphrase",
    )  # fmt: skip
    doc = json.loads(res.stdout)
    assert sorted(r["issuer"] for r in doc["renewed"]) == ids and doc["skipped"] == {}
    for i in ids:
        assert _in_token(d / f"{i}.key", f"responders/{i}") != before[i]
    _no_software_key(srv.data_dir / "ca")
    assert _objects(hsm, "eport-ca", CA_PIN) == objects + 2 * len(ids)  # a key pair each
    new = x509.load_pem_x509_certificate((d / "agency.crt").read_bytes())
    assert Pkcs11Signer(_in_token(d / "agency.key", "responders/agency")[7:].split(b"\n")[0]
                        .decode()).public_key() == new.public_key()  # fmt: skip
    new_file = tmp_path / "responder.pem"
    new_file.write_bytes((d / "agency.crt").read_bytes())
    issuer = srv.data_dir / "ca" / "issuers" / "agency.crt"
    officer = ["-cert", str(out / "officers" / "customs" / "officer.pem")]
    for n in range(4):  # both workers: fresh responses (a nonce), trusting only the new one
        res2, resp = ask(srv, issuer, officer, ["-VAfile", str(new_file)], tmp_path / f"{n}.der")
        assert "Response verify OK" in res2.stderr and ": good" in res2.stdout, res2
        assert resp.certificates[0].serial_number == new.serial_number


def rotations_make_keys_in_the_token(
    hsm: HSM, hsm_server: tuple[Server, Path], tmp_path: Path
) -> None:
    """`eport ca rotate enterprise` and ROTATE-LOG-KEY by quorum on the token-held
    server: the new issuing CA, its responder and the new log key are token keys; a
    certificate from the new generation validates and its OCSP status is good."""
    srv, out = hsm_server
    d = srv.data_dir / "ca"
    objects = _objects(hsm, "eport-ca", CA_PIN)
    # A rotation whose transaction does not commit leaves neither a file nor a key in the
    # token: the two key pairs it made there are destroyed (ca.ceremony_files).
    files = ca_files(srv.data_dir)
    fail_completions(srv, True)
    try:
        res = srv.eport(
            "ca", "rotate", "enterprise", *officer_args(out), "--json",
            EPORT_PASSPHRASE="officer passphrase",
        )  # fmt: skip
        cid = json.loads(res.stdout)["id"]
        for m in ("customs", "tax"):
            join(srv, out, cid, m)
        failed = join(srv, out, cid, "forex", check=False)
        assert failed.returncode == 1 and "HTTP 500" in failed.stderr, failed.stderr
    finally:
        fail_completions(srv, False)
    assert ca_files(srv.data_dir) == files
    assert _objects(hsm, "eport-ca", CA_PIN) == objects
    res = srv.eport(
        "ca", "rotate", "enterprise", *officer_args(out), "--json",
        EPORT_PASSPHRASE="officer passphrase",
    )  # fmt: skip
    cid = json.loads(res.stdout)["id"]
    for m in ("customs", "tax", "forex"):
        done = json.loads(join(srv, out, cid, m).stdout)
    assert done["state"] == "done", done
    gen = done["result"]["generation"]
    assert gen == "enterprise-2" and done["result"]["key"] == "pkcs11"
    # the token's root key signed the active.json that names it (ca/active_signature.py)
    root = x509.load_pem_x509_certificate((d / "root.crt").read_bytes())
    active = (d / "issuers" / "active.json").read_bytes()
    assert json.loads(active)["enterprise"] == gen
    assert verify_active(root, active, (d / "issuers" / "active.json.sig").read_bytes()) == 1
    _in_token(d / "issuers" / f"{gen}.key", f"issuers/{gen}")
    _in_token(d / "responders" / f"{gen}.key", f"responders/{gen}")
    log_before = _in_token(d / "log.key", "ca/log")
    cid = str(start(srv, out, "ROTATE-LOG-KEY")["id"])
    for m in ("commerce", "inspection", "forex"):
        done = json.loads(join(srv, out, cid, m).stdout)
    assert done["state"] == "done" and done["result"]["key"] == "pkcs11", done
    assert _in_token(d / "log.key", "ca/log") != log_before
    _no_software_key(srv.data_dir / "ca")
    assert _objects(hsm, "eport-ca", CA_PIN) == objects + 6  # three key pairs
    # A certificate from the new generation, signed in the token, validates; OCSP good.
    env = srv.env(EPORT_PASSPHRASE="officer passphrase")
    app = json.loads(
        run("apply", "--uscc", fresh_uscc(), "--name", "Rotated Co.", "--json", env=env).stdout
    )
    grant = json.loads(
        run("ra", "approve", app["id"], *officer_args(out, "tax"), "--json", env=env).stdout
    )
    ent = tmp_path / "ent"
    run("enroll", "--code", grant["enrollment_code"], "--profile", "enterprise", "--out",
        str(ent), env=env)  # fmt: skip
    cert = x509.load_pem_x509_certificate((ent / "cert.pem").read_bytes())
    new_ca = x509.load_pem_x509_certificate((d / "issuers" / f"{gen}.crt").read_bytes())
    cert.verify_directly_issued_by(new_ca)
    ok = subprocess.run(
        [need("openssl"), "verify", "-CAfile", str(d / "root.crt"), "-untrusted",
         str(ent / "chain.pem"), str(ent / "cert.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    status = json.loads(run("status", "--cert", str(ent / "cert.pem"), "--json", env=env).stdout)
    assert status["status"] == "good"
    # Checkpoints are now signed by the new log key in the token.
    from ca.checkpoint import parse_verifier_key, verify_note

    name, pub = parse_verifier_key(
        requests.get(srv.url + "/ca/v1/audit/log-key", timeout=5).json()["verifier_key"]
    )
    assert pub == serialization.load_pem_public_key((d / "log.pub").read_bytes())
    note = requests.get(srv.url + "/ca/v1/audit/checkpoint", timeout=5).content
    assert verify_note(note, name, pub).size > 0
    # The hand-over to it is signed in the token by the retired key and by the new one.
    [handover] = requests.get(srv.url + "/ca/v1/audit/log-key/handovers", timeout=5).json()[
        "handovers"
    ]
    retired = serialization.load_pem_public_key((d / "log-1.pub").read_bytes())
    for key in (retired, pub):
        cp = verify_note(handover["checkpoint"].encode(), name, key)  # type: ignore[arg-type]
        assert cp.size == handover["tree_size"]


def renewals_make_keys_in_the_token(
    hsm: HSM, hsm_server: tuple[Server, Path], tmp_path: Path
) -> None:
    """`eport renew --key key.uri`: the new key is made in the same token and the CSR
    signed there; `--new-pkcs11-uri` moves a file key's successor into a token; a
    refused renewal deletes the key it made."""
    srv, _ = hsm_server
    env = {**srv.env(EPORT_PASSPHRASE="officer passphrase"), **hsm.env()}
    objects = _objects(hsm, "eport-ent")
    # Refused: the certificate of tmp_path/flow was suspended (signed requests refused).
    suspended = tmp_path / "flow" / "ent"
    refused = tmp_path / "refused"
    res = run(
        "renew", "--cert", str(suspended / "cert.pem"), "--key", str(suspended / "key.uri"),
        "--out", str(refused), env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "(HTTP 4" in res.stderr and not refused.exists()
    assert _objects(hsm, "eport-ent") == objects  # the key made for it was deleted
    # Renewed in the token: the key of tmp_path/errors is a token key, so is the new one.
    current = tmp_path / "errors" / "ent"
    renewed = tmp_path / "renewed"
    res = run(
        "renew", "--cert", str(current / "cert.pem"), "--key", str(current / "key.uri"),
        "--out", str(renewed), "--json", env=env,
    )  # fmt: skip
    doc = json.loads(res.stdout)
    key_uri = (renewed / "key.uri").read_text().strip()
    assert doc["key_uri"] == key_uri and key_uri != (current / "key.uri").read_text().strip()
    assert key_uri.startswith("pkcs11:token=eport-ent;object=eport%20") and ";id=%" in key_uri
    assert key_uri.endswith(f"?pin-source=file:{hsm.ent_pin}")
    assert not (renewed / "key.pem").exists()
    assert _objects(hsm, "eport-ent") == objects + 2
    cert = x509.load_pem_x509_certificate((renewed / "cert.pem").read_bytes())
    assert format(cert.serial_number, "x") == doc["serial"]
    assert cert.public_key() == Pkcs11Signer(key_uri).public_key()
    assert doc["previous_serial"] == format(
        x509.load_pem_x509_certificate((current / "cert.pem").read_bytes()).serial_number, "x"
    )
    # The new certificate and token key sign in (RFC 7523 assertion signed in the token).
    cfg = {**env, "EPORT_CONFIG_DIR": str(tmp_path / "renewed-cfg")}
    login = ["login", "--cert", str(renewed / "cert.pem"), "--key", str(renewed / "key.uri")]
    assert json.loads(run(*login, "--json", env=cfg).stdout)["session"]["subject"]
    # A file key's successor made in a token (--new-pkcs11-uri): the enterprise of
    # tmp_path/rotation enrolled with a software key.
    moved = tmp_path / "moved"
    software = tmp_path / "rotation" / "ent"
    run(
        "renew", "--cert", str(software / "cert.pem"), "--key", str(software / "key.pem"),
        "--new-pkcs11-uri", hsm.ent_uri, "--out", str(moved), env=env,
    )  # fmt: skip
    assert not (moved / "key.pem").exists()
    cert = x509.load_pem_x509_certificate((moved / "cert.pem").read_bytes())
    assert cert.public_key() == Pkcs11Signer((moved / "key.uri").read_text().strip()).public_key()
    assert _objects(hsm, "eport-ent") == objects + 4
