"""Custodians whose share file is kept by their own PKCS#11 token (two SoftHSM2 tokens
made here): `eport ca init --custodian-token`, a real sealed server unsealed by three
custodians of whom two open their share in their token, a ROOT-CRL ceremony joined
with a token share, `eport ca reshare` from and to token shares, the refusals (wrong
PIN, missing token, someone else's token) and the no-secret scan (docs/custody.md
"A custodian's share in the custodian's token")."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509

from ca.custody import CustodyRecord, Purpose, Share, share_file_header
from ca.pkcs11 import Pkcs11Uri
from tests.conftest import EPORT_CMD, REPO, Server, need, stop
from tests.test_ca_init import MEMBERS, custodian_env, start_sealed
from tests.test_custody_ceremonies import read_out, root_crl, start

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SO_PIN = "so-pin-c1a0e2"
PINS = {"commerce": "commerce-pin-5d2e81", "tax": "tax-pin-93b7c4"}
ON_TOKENS = tuple(PINS)


@dataclass
class Tokens:
    root: Path

    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    def pin_file(self, member: str) -> Path:
        return self.root / f"{member}.pin"

    def uri(self, member: str, token: str | None = None) -> str:
        label = token or f"custodian-{member}"
        return f"pkcs11:token={label}?pin-source=file:{self.pin_file(member)}"

    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf())}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tokens]:
    """Two custodians' tokens (commerce's and tax's), each with its own PIN."""
    util = need("softhsm2-util", "/usr/bin/softhsm2-util")
    need("libsofthsm2.so", MODULE)
    t = Tokens(tmp_path_factory.mktemp("custodian-tokens"))
    (t.root / "tokens").mkdir()
    t.conf().write_text(
        f"directories.tokendir = {t.root / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    for member, pin in PINS.items():
        t.pin_file(member).write_text(pin + "\n")
        label = f"custodian-{member}"
        subprocess.run(
            [util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", pin],
            check=True,
            capture_output=True,
            env={**os.environ, **t.env()},
        )
    yield t


# SoftHSM2 reads SOFTHSM2_CONF once per process (C_Initialize): every token operation of
# these tests runs in a child process, so this module and tests/test_pkcs11.py, each with
# its own token directory, can share an xdist worker.
_CHILD = """
import json, sys
import pkcs11
from ca.custody import open_share_file, share_file_header
from ca.pkcs11 import Pkcs11Uri, TokenShareKey

job = json.load(sys.stdin)
if job["op"] == "keys":
    token = pkcs11.lib(job["module"]).get_token(token_label=job["token"])
    with token.open(user_pin=job["pin"]) as s:
        keys = s.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY})
        A = pkcs11.Attribute
        print(json.dumps([
            {"label": k.label, "sensitive": k[A.SENSITIVE], "extractable": k[A.EXTRACTABLE],
             "wrap": k[A.WRAP], "sign": k[A.SIGN], "decrypt": k[A.DECRYPT],
             "bytes": k[A.VALUE_LEN]}
            for k in keys
        ]))
else:
    out = {}
    for path, uri, passphrase in job["files"]:
        blob = open(path, "rb").read()
        header = share_file_header(blob)
        opener = (
            TokenShareKey.for_file(header["token"]["key"], Pkcs11Uri.parse(uri))
            if "token" in header
            else passphrase.encode()
        )
        shares = open_share_file(blob, opener).shares
        out[path] = {p.value: s.value.hex() for p, s in shares.items()}
    print(json.dumps(out))
"""


def child(tokens: Tokens, job: dict[str, object]) -> object:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env={**os.environ, **tokens.env()},
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def token_keys(tokens: Tokens, member: str) -> list[dict[str, object]]:
    """The AES keys in ``member``'s token and their attributes."""
    job = {"op": "keys", "module": MODULE, "token": f"custodian-{member}", "pin": PINS[member]}
    keys = child(tokens, job)
    assert isinstance(keys, list)
    return keys


def secret_keys(tokens: Tokens, member: str) -> list[str]:
    return sorted(str(k["label"]) for k in token_keys(tokens, member))


def open_shares(tokens: Tokens, files: list[tuple[Path, str]]) -> dict[str, dict[Purpose, bytes]]:
    """Open share files (member's token, else the member's passphrase) in a child."""
    job = {
        "op": "open",
        "files": [
            [str(f), tokens.uri(m) if m in ON_TOKENS else None, f"share passphrase of {m}"]
            for f, m in files
        ],
    }
    opened = child(tokens, job)
    assert isinstance(opened, dict)
    return {
        f: {Purpose(p): bytes.fromhex(v) for p, v in values.items()} for f, values in opened.items()
    }


def eport(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [*EPORT_CMD, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"eport {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def token_args(tokens: Tokens, option: str = "--custodian-token") -> list[str]:
    return [a for m in ON_TOKENS for a in (option, f"{m}={tokens.uri(m)}")]


@pytest.fixture(scope="module")
def token_ca(
    tokens: Tokens, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path, str, Path]]:
    """`eport ca init` with commerce's and tax's shares on their tokens; a sealed server."""
    tmp = tmp_path_factory.mktemp("token-custody")
    data, out = tmp / "data", tmp / "ceremony"
    env = {**custodian_env(), **tokens.env()}
    res = eport(
        "ca", "init", "--data-dir", str(data), "--out", str(out), *token_args(tokens), env=env
    )
    for m in ON_TOKENS:
        assert f"(key in pkcs11:token=custodian-{m};object=eport%20share%20cust-" in res.stdout
    srv, proc, fp = start_sealed(tmp, data)
    try:
        yield srv, out, fp, tmp
    finally:
        stop(proc)


def share(out: Path, member: str) -> Path:
    return out / "shares" / f"{member}.share"


def unseal_state(srv: Server) -> dict[str, object]:
    doc: dict[str, object] = requests.get(srv.url + "/ca/v1/custody", timeout=5).json()
    return doc


@pytest.mark.slow
def test_token_shares_unseal_join_and_reshare(
    tokens: Tokens, token_ca: tuple[Server, Path, str, Path]
) -> None:
    """One server (module scope) for the whole story, in order."""
    srv, out, fp, tmp = token_ca
    share_files_say_how_they_open(tokens, out, srv.data_dir)
    refusals_send_nothing(tokens, srv, out, fp)
    timings = unseal_with_two_token_shares(tokens, srv, out, fp)
    root_crl_joined_with_a_token_share(tokens, srv, out)
    reshare_from_and_to_tokens(tokens, srv, out, tmp)
    no_share_or_pin_in_clear(tokens, srv, out, tmp)
    print(
        "\nunseal (CLI run, share opened + sent): token share "
        f"{min(timings['token']):.2f}-{max(timings['token']):.2f} s, passphrase share "
        f"{timings['passphrase'][0]:.2f} s"
    )


def share_files_say_how_they_open(tokens: Tokens, out: Path, data: Path) -> None:
    record = CustodyRecord.from_json(json.loads((data / "ca" / "custody.json").read_text()))
    for m in MEMBERS:
        header = share_file_header(share(out, m).read_bytes())
        if m in ON_TOKENS:
            assert "kdf" not in header
            assert header["token"]["mechanism"] == "CKM_AES_GCM"
            key = Pkcs11Uri.parse(header["token"]["key"])
            assert key.path["token"] == f"custodian-{m}" and key.id is not None
            assert not key.query  # no module path, PIN or PIN file recorded
            assert secret_keys(tokens, m) == [f"eport share {record.custody_id} {m}"]
        else:
            assert header["kdf"]["name"] == "scrypt" and "token" not in header
    # The key is made non-extractable and for encryption only.
    (key,) = token_keys(tokens, "tax")
    assert key["sensitive"] is True and key["extractable"] is False
    assert key["wrap"] is False and key["sign"] is False and key["decrypt"] is True
    assert key["bytes"] == 32


def refusals_send_nothing(tokens: Tokens, srv: Server, out: Path, fp: str) -> None:
    env = {**srv.env(), **tokens.env()}

    def refused(member: str, uri: str | None, message: str, **extra: str) -> None:
        args = ["ca", "unseal", "--share", str(share(out, member)), "--fingerprint", fp]
        if uri is not None:
            args += ["--pkcs11-uri", uri]
        res = eport(*args, env={**env, **extra}, check=False)
        assert res.returncode == 1, res.stdout
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], res.stderr
        assert all(p not in res.stderr for p in PINS.values())
        assert "wrong-pin" not in res.stderr

    refused("commerce", "pkcs11:token=custodian-commerce?pin-value=wrong-pin-1", "wrong PIN")
    refused("commerce", "pkcs11:token=nobody?pin-value=x", "no single PKCS#11 token")
    refused(
        "commerce",
        tokens.uri("tax"),
        "token 'custodian-tax' does not hold the key of this share file",
    )
    refused("tax", None, "the PIN of Tax key custodian's PKCS#11 token is needed")
    refused("forex", tokens.uri("tax"), "is opened with a passphrase, not a PKCS#11 token")
    # A changed header fails the token's GCM tag (the header is associated data).
    doc = json.loads(share(out, "tax").read_text())
    doc["threshold"] = 1
    changed = out / "changed-tax.share"
    changed.write_text(json.dumps(doc))
    res = eport(
        "ca", "unseal", "--share", str(changed), "--pkcs11-uri", tokens.uri("tax"),
        "--fingerprint", fp, env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 1 and "does not open this share file" in res.stderr, res.stderr
    changed.unlink()
    state = unseal_state(srv)
    assert state["sealed"] is True and state["unseal"]["progress"] == 0  # type: ignore[index]


def unseal_with_two_token_shares(
    tokens: Tokens, srv: Server, out: Path, fp: str
) -> dict[str, list[float]]:
    env = {**srv.env(), **tokens.env()}
    timings: dict[str, list[float]] = {"token": [], "passphrase": []}
    for m in ("commerce", "forex", "tax"):
        args = ["ca", "unseal", "--share", str(share(out, m)), "--fingerprint", fp, "--json"]
        extra = {"EPORT_SHARE_PASSPHRASE": f"share passphrase of {m}"}
        if m in ON_TOKENS:
            args += ["--pkcs11-uri", tokens.uri(m)]
            extra = {}
        t0 = time.perf_counter()
        doc = json.loads(eport(*args, env={**env, **extra}).stdout)
        timings["token" if m in ON_TOKENS else "passphrase"].append(time.perf_counter() - t0)
        assert m in doc["ceremony"]["joined"]
    assert doc["sealed"] is False
    assert requests.get(srv.url + "/ca/v1/health", timeout=5).json()["sealed"] is False
    return timings


def root_crl_joined_with_a_token_share(tokens: Tokens, srv: Server, out: Path) -> None:
    before = root_crl(srv).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    cid = str(start(srv, out, "ROOT-CRL")["id"])
    env = {**srv.env(), **tokens.env()}
    fp = read_out(srv, cid)
    for m in ("customs", "tax", "inspection"):
        args = ["ca", "ceremony", "join", cid, "--share", str(share(out, m)), "--json"]
        args += ["--fingerprint", fp]
        # tax's token is found by the label its share file records; the PIN comes from
        # EPORT_PKCS11_PIN, the module from SoftHSM2's default path.
        extra = (
            {"EPORT_PKCS11_PIN": PINS[m]}
            if m in ON_TOKENS
            else {"EPORT_SHARE_PASSPHRASE": f"share passphrase of {m}"}
        )
        doc = json.loads(eport(*args, env={**env, **extra}).stdout)
    assert doc["state"] == "done" and doc["joined"] == ["customs", "tax", "inspection"]
    after = root_crl(srv).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert after > before  # and by the clock: ca.crl.next_crl_number
    assert after >= int(root_crl(srv).last_update_utc.timestamp()) * 1000


def reshare_from_and_to_tokens(tokens: Tokens, srv: Server, out: Path, tmp: Path) -> None:
    """Three current shares (two opened in their tokens) re-shared; commerce's new share
    goes to its token again, tax's to a passphrase; the new files open, the old don't count."""
    new_out = tmp / "reshare"
    env = {
        **custodian_env(),
        **tokens.env(),
        "EPORT_SHARE_PASSPHRASE_FOREX": "share passphrase of forex",
    }
    res = eport(
        "ca", "reshare", "--data-dir", str(srv.data_dir), "--out", str(new_out),
        "--share", str(share(out, "commerce")), "--share", str(share(out, "tax")),
        "--share", str(share(out, "forex")),
        *token_args(tokens, "--share-token"),
        "--custodian-token", f"commerce={tokens.uri('commerce')}", "--json",
        env=env,
    )  # fmt: skip
    doc = json.loads(res.stdout)
    assert doc["participants"] == ["commerce", "tax", "forex"]
    new = CustodyRecord.from_json(json.loads((new_out / "custody.json").read_text()))
    assert "token_key" in doc["shares"]["commerce"] and "token_key" not in doc["shares"]["tax"]
    assert secret_keys(tokens, "commerce") == sorted(
        f"eport share {cid} commerce" for cid in (doc["previous_custody_id"], new.custody_id)
    )
    path = share(new_out, "commerce")
    opened = open_shares(tokens, [(path, "commerce")])[str(path)]
    fresh = share_file_header(path.read_bytes())
    assert fresh["custody_id"] == new.custody_id
    for purpose, value in opened.items():
        new.verify_share(Share(new.custody_id, purpose, "commerce", fresh["index"], value))
    assert "kdf" in share_file_header(share(new_out, "tax").read_bytes())


def no_share_or_pin_in_clear(tokens: Tokens, srv: Server, out: Path, tmp: Path) -> None:
    """Every share value (opened here with the tokens and passphrases) and every PIN is
    absent from the data directory, the ceremony directories and the server's log."""
    secrets: list[bytes] = [p.encode() for p in PINS.values()]
    files = [(share(d, m), m) for d in (out, tmp / "reshare") for m in MEMBERS]
    for values in open_shares(tokens, files).values():
        for value in values.values():
            secrets += [value, value.hex().encode(), base64.b64encode(value)]
    assert len(secrets) == 2 + 2 * 5 * 2 * 3
    files = [p for p in tmp.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm"))]
    assert len(files) > 30 and srv.log in files
    for path in files:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            continue
        for secret in secrets:
            assert secret not in blob, path


def test_init_with_a_wrong_custodian_pin_makes_nothing(tokens: Tokens, tmp_path: Path) -> None:
    before = secret_keys(tokens, "tax")
    res = eport(
        "ca", "init", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
        "--custodian-token", "tax=pkcs11:token=custodian-tax?pin-value=wrong-pin-2",
        env={**custodian_env(), **tokens.env()}, check=False,
    )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip() == "eport: error: wrong PIN for PKCS#11 token 'custodian-tax'"
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
    assert secret_keys(tokens, "tax") == before
