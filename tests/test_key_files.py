"""Encrypted key files (ca.pkcs8): PBES2 with PBKDF2-HMAC-SHA256 at 600,000 iterations by
default, read by OpenSSL, and every key file the CA reads still opens.

The rest of the suite writes its keys with the least count (tests/conftest.py,
``TEST_SETTINGS``); the tests here that check the default unset it first.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from ca import pkcs8
from ca.config import CAConfig
from ca.devinit import ensure_dev_ca
from cli import keyfiles
from tests.conftest import EPORT_CMD, base_env, need
from tests.helpers import immutable

P256 = ec.generate_private_key(ec.SECP256R1())
KEYS = {
    "p256": P256,
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
    "rsa2048": rsa.generate_private_key(65537, 2048),
}


def private_der(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def as_written_before(passphrase: bytes) -> bytes:
    """:data:`P256` as key files were written before ca.pkcs8 (``cryptography``'s 2,048)."""
    return P256.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def openssl_iterations(path: Path) -> int:
    """The PBKDF2 count of a key file as OpenSSL parses it (not our own decoder)."""
    out = subprocess.run(
        [need("openssl"), "asn1parse", "-in", str(path)], capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if ":PBKDF2" in line)
    # after the OID: the salt (OCTET STRING), then the count (INTEGER, in hex)
    count = next(line for line in lines[at:] if "prim: INTEGER" in line)
    assert ":hmacWithSHA256" in out and ":aes-256-cbc" in out, out
    return int(count.rsplit(":", 1)[1], 16)


def test_a_key_file_takes_600000_iterations_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(pkcs8.ITERATIONS_ENV)
    path = tmp_path / "key.pem"
    keyfiles.write_key(path, P256, b"correct horse battery")
    assert path.stat().st_mode & 0o777 == 0o600
    assert openssl_iterations(path) == 600_000 == pkcs8.count_of(path.read_bytes())
    # OpenSSL decrypts it to the same key, and refuses a wrong passphrase
    openssl = need("openssl")
    der = subprocess.run(
        [
            openssl,
            "pkey",
            "-in",
            str(path),
            "-passin",
            "pass:correct horse battery",
            "-outform",
            "DER",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert serialization.load_der_private_key(der, None).private_numbers() == P256.private_numbers()  # type: ignore[union-attr]
    wrong = subprocess.run(
        [openssl, "pkey", "-in", str(path), "-passin", "pass:correct horse batterx", "-noout"],
        capture_output=True,
    )
    assert wrong.returncode != 0
    pw_file = tmp_path / "pw"
    pw_file.write_text("correct horse battery\n")
    assert private_der(keyfiles.load_key(path, pw_file)) == private_der(P256)


def test_the_setting_sets_the_count_and_a_bad_one_stops_eport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(pkcs8.ITERATIONS_ENV, "31337")
    path = tmp_path / "key.pem"
    keyfiles.write_key(path, P256, b"correct horse battery")
    assert openssl_iterations(path) == 31337
    for bad in ("12", "2047", "six hundred", "1e6", "100000001"):
        monkeypatch.setenv(pkcs8.ITERATIONS_ENV, bad)
        with pytest.raises(pkcs8.KdfSettingError, match="EPORT_KEY_KDF_ITERATIONS"):
            pkcs8.encrypt(P256, b"correct horse battery")
    res = subprocess.run(
        [*EPORT_CMD, "cert", "show", str(path)],
        capture_output=True,
        text=True,
        env={**base_env(), pkcs8.ITERATIONS_ENV: "1000"},
        timeout=60,
    )
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "eport: error: EPORT_KEY_KDF_ITERATIONS must be a whole number from 2,048 to "
        "100,000,000 (got '1000'); unset, it is 600,000"
    ]


@settings(max_examples=25, deadline=None)
@given(
    which=st.sampled_from(sorted(KEYS)),
    passphrase=st.binary(min_size=1, max_size=80),
)
def test_round_trip_through_cryptography(which: str, passphrase: bytes) -> None:
    key = KEYS[which]
    pem = pkcs8.encrypt(key, passphrase, count=pkcs8.MIN_ITERATIONS)
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert pkcs8.count_of(pem) == pkcs8.MIN_ITERATIONS
    opened = serialization.load_pem_private_key(pem, passphrase)
    assert private_der(opened) == private_der(key)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(pem, passphrase + b"x")


def test_salt_and_iv_are_fresh_for_each_file() -> None:
    a = pkcs8.encrypt(P256, b"correct horse battery", count=pkcs8.MIN_ITERATIONS)
    b = pkcs8.encrypt(P256, b"correct horse battery", count=pkcs8.MIN_ITERATIONS)
    assert a != b


def test_key_files_openssl_wrote_still_open(tmp_path: Path) -> None:
    """Keys made before this change (``cryptography``'s 2,048) or by ``openssl`` itself,
    with another count, open where the CLI reads a key."""
    openssl = need("openssl")
    plain = tmp_path / "plain.pem"
    plain.write_bytes(
        P256.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    theirs = tmp_path / "theirs.pem"
    subprocess.run(
        [
            openssl,
            "pkcs8",
            "-topk8",
            "-in",
            str(plain),
            "-out",
            str(theirs),
            "-v2",
            "aes-128-cbc",
            "-iter",
            "4096",
            "-passout",
            "pass:correct horse battery",
        ],
        check=True,
        capture_output=True,
    )
    older = tmp_path / "older.pem"
    older.write_bytes(as_written_before(b"correct horse battery"))
    pw_file = tmp_path / "pw"
    pw_file.write_text("correct horse battery\n")
    for path, count in ((theirs, 4096), (older, 2048)):
        assert pkcs8.count_of(path.read_bytes()) == count
        key = keyfiles.load_key(path, pw_file)
        assert private_der(key) == private_der(P256)


def test_the_development_ca_writes_its_keys_with_the_least_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their passphrases are in dev/DEV-ONLY-*: a slow derivation would protect nothing."""
    monkeypatch.delenv(pkcs8.ITERATIONS_ENV)
    data = tmp_path / "data"
    ensure_dev_ca(CAConfig(data_dir=data, dev=True))
    keys = [p for p in data.rglob("*.key") if b"ENCRYPTED PRIVATE KEY" in p.read_bytes()]
    assert {p.relative_to(data).parts[0] for p in keys} >= {"ca", "dev"}
    assert {pkcs8.count_of(p.read_bytes()) for p in keys} == {pkcs8.MIN_ITERATIONS}
    # the token service's signing keys too, under the passphrase in dev/
    from authsvc.app import create_app, upgrade
    from authsvc.config import AuthConfig

    auth = AuthConfig.load({"data_dir": data, "dev": True}, environ={})
    upgrade(auth.sqlalchemy_url)
    create_app(auth)
    with sqlite3.connect(data / "auth.db") as db:
        pems = [row[0] for row in db.execute("SELECT private_pem FROM auth_signing_keys")]
    assert len(pems) == 4 and {pkcs8.count_of(p) for p in pems} == {pkcs8.MIN_ITERATIONS}
    # and outside that block the default holds again
    assert pkcs8.count_of(pkcs8.encrypt(P256, b"correct horse battery")) == 600_000


def run_eport(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EPORT_CMD, *args],
        capture_output=True,
        text=True,
        env={**base_env(), **env},
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_key_passwd_encrypts_a_key_again_and_bad_input_changes_nothing(tmp_path: Path) -> None:
    """``eport key passwd``: an older key file (2,048) under a new passphrase and the
    current count; a wrong passphrase, a short new one or a token key leave it as it was."""
    key = tmp_path / "key.pem"
    key.write_bytes(as_written_before(b"old passphrase"))
    key.chmod(0o600)
    old, new, short = tmp_path / "old", tmp_path / "new", tmp_path / "short"
    old.write_text("old passphrase\n")
    new.write_text("new passphrase\n")
    short.write_text("seven77\n")
    before = key.read_bytes()
    for args, says in (
        (["--passphrase-file", str(new), "--new-passphrase-file", str(new)], "wrong passphrase"),
        (["--passphrase-file", str(old), "--new-passphrase-file", str(short)], "at least 8"),
        (["--passphrase-file", str(old)], "a passphrase is needed: use --new-passphrase-file,"),
    ):
        res = run_eport("key", "passwd", str(key), *args)
        assert res.returncode == 1, res
        assert len(res.stderr.splitlines()) == 1 and says in res.stderr, res.stderr
        assert key.read_bytes() == before
    with immutable(tmp_path):
        res = run_eport(
            "key", "passwd", str(key), "--passphrase-file", str(old),
            "--new-passphrase-file", str(new),
        )  # fmt: skip
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"eport: error: cannot write {key}: Operation not permitted; it is unchanged"
    ], res.stderr
    assert key.read_bytes() == before
    (tmp_path / "bundle.p12").write_bytes(b"not looked at")
    res = run_eport(
        "key", "passwd", str(key), "--passphrase-file", str(old), "--new-passphrase-file",
        str(new), "--json", EPORT_KEY_KDF_ITERATIONS="5000",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert (doc["iterations"], doc["previous_iterations"]) == (5000, 2048)
    assert doc["bundle_p12"] == str(tmp_path / "bundle.p12")
    assert openssl_iterations(key) == 5000
    assert key.stat().st_mode & 0o777 == 0o600
    assert private_der(keyfiles.load_key(key, new)) == private_der(P256)
    with pytest.raises(Exception, match="wrong passphrase"):
        keyfiles.load_key(key, old)
    token = tmp_path / "key.uri"
    token.write_text("pkcs11:token=eport;object=k\n")
    res = run_eport("key", "passwd", str(token), "--passphrase-file", str(old))
    assert res.returncode == 1 and "names a key in a PKCS#11 token" in res.stderr
