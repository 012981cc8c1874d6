"""A PKCS#11 token that goes away for a moment and comes back: every worker of a real
server signs again without a restart, and while it is away an enrollee gets a 503
problem that names no server path (ca/pkcs11.py, docs/custody.md "Keys in an HSM").

SoftHSM2 reads its slot list at ``C_Initialize`` only (per process): a worker that
looked for the token while its directory was gone must re-initialize the module to see
it again, and it does so at most once every ``REINITIALIZE_INTERVAL`` seconds while the
token stays away. A token is "removed" by moving its directory out of SoftHSM2's
token directory, as the probe that found it did."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.pkcs11 import REINITIALIZE_INTERVAL
from tests.conftest import REPO, Server, base_env, free_port, need, start_server, stop
from tests.helpers import fresh_uscc
from tests.test_ca_init import custodian_env
from tests.test_pkcs11 import CA_PIN, HSM, MODULE, SO_PIN, run

WORKERS = 2
AFTER = 8
"""Enrollments that must all succeed once the token is back (both workers get some)."""


def make_hsm(root: Path) -> HSM:
    """SoftHSM2 configured to keep its tokens in ``root/tokens``, with one token
    ``eport-ca`` (PIN in ``root/ca.pin``); ``root/away`` is where it goes when removed."""
    util = need("softhsm2-util", "/usr/bin/softhsm2-util")
    need("libsofthsm2.so", MODULE)
    hsm = HSM(root)
    (root / "tokens").mkdir(parents=True)
    (root / "away").mkdir()
    hsm.conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    hsm.ca_pin.write_text(CA_PIN + "\n")
    subprocess.run(
        [util, "--init-token", "--free", "--label", "eport-ca", "--so-pin", SO_PIN,
         "--pin", CA_PIN],
        check=True, capture_output=True, env={**os.environ, **hsm.env()},
    )  # fmt: skip
    return hsm


def move_all(src: Path, dst: Path) -> None:
    for entry in os.listdir(src):
        shutil.move(src / entry, dst / entry)


def token_ca(root: Path) -> tuple[HSM, Path, Path, dict[str, str], int]:
    """``eport ca init --pkcs11-uri`` into a new SoftHSM2 token under ``root``: the token,
    the data directory, the ceremony's output, the environment it was made with (the
    custodians' passphrases, the token's configuration) and the port its URLs name."""
    hsm = make_hsm(root / "hsm")
    env = {**custodian_env(), **hsm.env()}
    data, out = root / "data", root / "ceremony"
    port = free_port()
    env["EPORT_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    run("ca", "init", "--data-dir", str(data), "--out", str(out), "--pkcs11-uri", hsm.ca_uri,
        env=env)  # fmt: skip
    return hsm, data, out, env, port


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[tuple[HSM, Server, Path]]:
    """A SoftHSM2 token holding the CA's online keys (``eport ca init --pkcs11-uri``),
    and ``eport serve`` with two workers on it."""
    hsm, data, out, env, port = token_ca(tmp_path)
    srv, proc = start_server(data, workers=WORKERS, dev=False, env=env, log_dir=tmp_path, port=port)
    try:
        yield hsm, srv, out
    finally:
        stop(proc)


def codes(srv: Server, out: Path, hsm: HSM, n: int) -> list[str]:
    """``n`` enterprise enrollment codes: applied for and approved through the CLI."""
    env = {**srv.env(EPORT_PASSPHRASE="officer passphrase"), **hsm.env()}
    officer = out / "officers" / "customs"
    cred = ["--cert", str(officer / "officer.pem"), "--key", str(officer / "officer.key")]
    found = []
    for i in range(n):
        app = json.loads(
            run("apply", "--uscc", fresh_uscc(), "--name", f"Token Gone Co. {i}", "--json",
                env=env).stdout
        )  # fmt: skip
        grant = json.loads(run("ra", "approve", app["id"], *cred, "--json", env=env).stdout)
        found.append(grant["enrollment_code"])
    return found


def enroll(srv: Server, code: str) -> requests.Response:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ignored")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    body = {
        "code": code,
        "profile": "enterprise",
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
    }
    return requests.post(srv.url + "/ca/v1/enroll", json=body, timeout=30)


@pytest.mark.slow
def test_every_worker_signs_again_once_the_token_is_back(
    token_server: tuple[HSM, Server, Path],
) -> None:
    hsm, srv, out = token_server
    during = 2 * WORKERS + 2
    todo = codes(srv, out, hsm, 1 + during + AFTER)
    first = enroll(srv, todo.pop())
    assert first.status_code == 201, first.text

    tokens, away = hsm.root / "tokens", hsm.root / "away"
    move_all(tokens, away)
    # Concurrent requests, so that both workers (and several threads of each) meet the
    # missing token.
    with ThreadPoolExecutor(during) as pool:
        refused = list(pool.map(lambda c: enroll(srv, c), [todo.pop() for _ in range(during)]))
    assert [r.status_code for r in refused] == [503] * during, [r.text for r in refused]
    for r in refused:
        assert r.headers["Content-Type"] == "application/problem+json"
        doc = r.json()
        assert doc["type"] == "urn:eport:problem:key-unavailable", doc
        # what the server's operator needs (module path, token label) stays in its log
        assert MODULE not in doc["detail"] and "/" not in doc["detail"], doc
        assert "eport-ca" not in doc["detail"], doc
    log = srv.log.read_text()
    assert "eport-ca" in log and MODULE in log

    move_all(away, tokens)
    # A worker looks for the token again at most once every REINITIALIZE_INTERVAL; under
    # a loaded machine its first looks may still miss it. An enrollment refused with 503
    # leaves its code unused: the refused ones are tried again until all are issued.
    time.sleep(REINITIALIZE_INTERVAL + 0.5)
    started = time.monotonic()
    issued: dict[str, requests.Response] = {}
    refusals: set[str] = set()
    while len(issued) < AFTER and time.monotonic() - started < 20:
        left = [c for c in todo if c not in issued]
        with ThreadPoolExecutor(4) as pool:
            for code, r in zip(left, pool.map(lambda c: enroll(srv, c), left), strict=True):
                if r.status_code == 201:
                    issued[code] = r
                else:
                    assert r.status_code == 503, r.text
                    assert r.json()["type"] == "urn:eport:problem:key-unavailable", r.text
                    refusals.add(r.json()["detail"])
        time.sleep(0.3)
    assert len(todo) == AFTER
    assert len(issued) == AFTER, (sorted(refusals), srv.log.read_text()[-3000:])


# -- one process, several threads -----------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, os, shutil, sys, threading, time
    from pathlib import Path
    from ca import pkcs11
    from ca.keys import KeyType

    def move_all(src, dst):
        for entry in os.listdir(src):
            shutil.move(src / entry, dst / entry)

    root, uri = Path(sys.argv[1]), sys.argv[2]
    signer = pkcs11.generate(uri, KeyType.P256, "recovery")
    signer.sign(b"before")
    restarts = []  # every C_Finalize/C_Initialize of the module in this process
    restart = pkcs11._Module._restart
    def counted(module, lib):
        restarts.append(time.monotonic())
        restart(module, lib)
    pkcs11._Module._restart = counted

    def signing(seconds):
        # 4 threads sign for `seconds`: how many signed, and the other outcomes
        outcomes = []
        def sign():
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    signer.sign(b"data")
                    outcomes.append("signed")
                except pkcs11.Pkcs11Error as exc:
                    outcomes.append(exc.detail)
                except Exception as exc:
                    outcomes.append(f"unexpected {exc!r}")
        threads = [threading.Thread(target=sign) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return {"signed": outcomes.count("signed"),
                "failed": sorted(set(outcomes) - {"signed"}), "tries": len(outcomes)}

    move_all(root / "tokens", root / "away")
    gone = signing(2.0)
    gone["restarts"] = len(restarts)
    move_all(root / "away", root / "tokens")
    time.sleep(pkcs11.REINITIALIZE_INTERVAL)
    print(json.dumps({"gone": gone, "back": signing(0.5)}))
    """
)


def test_threads_sign_again_and_a_missing_token_is_looked_for_at_most_once_a_second(
    tmp_path: Path,
) -> None:
    """Four threads of one process sign while the token is away and after it is back:
    while it is away, each signature fails in a Pkcs11Error (nothing else) and the module
    is re-initialized at most once per REINITIALIZE_INTERVAL, not once per signature;
    once it is back, every signature of every thread succeeds. (A child process: the
    module's state is per process and this one's may serve other tests' tokens.)"""
    hsm = make_hsm(tmp_path / "hsm")
    uri = f"pkcs11:token=eport-ca?module-path={MODULE}&pin-source=file:{hsm.ca_pin}"
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(hsm.root), uri],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, **hsm.env(), "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    gone, back = doc["gone"], doc["back"]
    assert gone["tries"] > 100 and gone["signed"] < gone["tries"], gone
    assert all(not f.startswith("unexpected") for f in gone["failed"]), gone
    assert all(MODULE in f and "eport-ca" in f for f in gone["failed"]), gone
    assert 1 <= gone["restarts"] <= 2.0 / REINITIALIZE_INTERVAL + 1, gone
    assert back["failed"] == [] and back["signed"] > 0, back


def test_a_module_that_fails_to_initialize_says_why() -> None:
    """SoftHSM2 without its configuration: C_Initialize fails with CKR_GENERAL_ERROR,
    an exception without a message; the refusal names it and where to look, never an
    empty cause after the colon."""
    env = base_env()
    code = (
        "from ca.pkcs11 import Pkcs11Error, Pkcs11Uri, login\n"
        "try:\n login(Pkcs11Uri.parse('pkcs11:token=eport-ca?pin-value=1'))\n"
        "except Pkcs11Error as exc:\n print(exc.detail)\n"
    )
    need("libsofthsm2.so", MODULE)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**env, "SOFTHSM2_CONF": "/nonexistent", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert line.startswith(f"cannot load the PKCS#11 module {MODULE}: "), line
    assert "GeneralError" in line and "SOFTHSM2_CONF=/nonexistent" in line, line


class _FakeToken:
    """A token whose login answers ``CKR_USER_PIN_NOT_INITIALIZED`` until the module is
    initialized again ``heals_after`` times (SoftHSM2's stale view of a token that came
    back, as a worker saw it under load in session 18's CI failure)."""

    def __init__(self, lib: _FakeLib) -> None:
        self.lib = lib

    def open(self, user_pin: str, rw: bool) -> object:
        import pkcs11 as p11

        if self.lib.initialized < self.lib.heals_after:
            raise p11.UserPinNotInitialized()
        return object()  # a session


class _FakeLib:
    def __init__(self, heals_after: int) -> None:
        self.heals_after = heals_after
        self.initialized = 0
        self.finalized = 0

    def get_token(self, token_label: str) -> _FakeToken:
        return _FakeToken(self)

    def finalize(self) -> None:
        self.finalized += 1

    def initialize(self) -> None:
        self.initialized += 1


@pytest.mark.parametrize("heals_after", [1, 99])
def test_a_stale_pin_not_initialized_answer_makes_the_process_look_again_once(
    monkeypatch: pytest.MonkeyPatch, heals_after: int
) -> None:
    """Deterministic, with a module stand-in: a login refused with UserPinNotInitialized
    re-initializes the module (C_Finalize, C_Initialize) and logs in again; a token whose
    PIN really is not set fails after that one look, naming the return code. Before the
    fix (session 19) that code was not among those worth another look, and the worker
    answered 503 until restarted."""
    import ca.pkcs11 as mod

    lib = _FakeLib(heals_after)
    monkeypatch.setattr(mod.pkcs11, "lib", lambda path: lib)
    module = mod._Module("/fake/module.so")
    token = mod._Token(module, ("token", "eport-ca"))
    module.tokens.append(token)
    uri = mod.Pkcs11Uri.parse("pkcs11:token=eport-ca;object=k?pin-value=1234")
    with module.lock:
        if heals_after == 1:
            assert token.session(uri) is not None
            assert (lib.finalized, lib.initialized) == (1, 1)
        else:
            with pytest.raises(mod.Pkcs11Error, match="UserPinNotInitialized"):
                token.session(uri)
            assert lib.initialized == 1  # one more look, not a loop
