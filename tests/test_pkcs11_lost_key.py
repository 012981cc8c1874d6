"""A CA key lost from its PKCS#11 token for good (deleted, or gone with a re-initialized
token): the server starts degraded and says so, the lost issuing CA's enrollments are
refused with 503 key-missing while the rest serves, and the rollover ceremony that
replaces the key runs (docs/emergency-plan.md §7; ca/pkcs11.py ``KeyMissing``).

SoftHSM2 tokens in a temporary directory; a key is "lost" by destroying its objects in
the token, as an operator's mistake or a token re-initialized without its backup would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from ca import pkcs11
from ca.errors import KEY_LOST_DETAIL
from tests.conftest import REPO, need, start_server, stop
from tests.helpers import health_of, until
from tests.test_custody_ceremonies import join, officer_args, rotate, start
from tests.test_pkcs11 import MODULE, run
from tests.test_pkcs11_recovery import codes, enroll, make_hsm, token_ca

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from ca import pkcs11
    from ca.keys import KeyType

    token_uri = sys.argv[1]
    label = "eport lost-key-test"
    restarts = 0
    reinitialize = pkcs11._Module.reinitialize

    def counting(self, *, force):
        global restarts
        ran = reinitialize(self, force=force)
        restarts += ran
        return ran

    pkcs11._Module.reinitialize = counting
    made = pkcs11.generate(token_uri, KeyType.P256, label)
    by_label = token_uri.replace("eport-ca", "eport-ca;object=eport%20lost-key-test", 1)
    signer = pkcs11.Pkcs11Signer(by_label)
    signer.sign(b"present")
    out = {"missing_before": signer.missing}
    pkcs11.destroy(made.uri)

    def attempt():
        try:
            signer.sign(b"lost")
        except pkcs11.KeyMissing as exc:
            return ["KeyMissing", exc.problem()["type"], exc.problem()["detail"], exc.detail]
        except Exception as exc:
            return ["unexpected", type(exc).__name__, str(exc)]
        return ["signed"]

    before = restarts
    out["first"] = attempt()
    out["first_restarts"] = restarts - before
    out["missing"] = signer.missing
    before, started = restarts, time.monotonic()
    out["again"] = [attempt() for _ in range(200)]
    out["again_seconds"] = time.monotonic() - started
    out["again_restarts"] = restarts - before
    # Past the window it is looked for again; put back (a new key under its label, as a
    # restore from the token's backup would), it is found and no longer missing.
    pkcs11.MISSING_RECHECK = 0.0
    before = restarts
    out["later"] = attempt()
    out["later_restarts"] = restarts - before
    pkcs11.generate(token_uri, KeyType.P256, label)
    pkcs11.Pkcs11Signer(by_label).sign(b"restored")
    out["missing_after_restore"] = signer.missing
    print(json.dumps(out))
    """
)


def test_a_lost_key_is_looked_for_again_at_most_every_few_seconds(tmp_path: Path) -> None:
    """A key deleted from a token that is there: each signature fails with KeyMissing
    (503 key-missing, a detail that names nothing of the server), the module is
    re-initialized for the first look only, not for each of the 200 signatures asked for
    within MISSING_RECHECK; past it the key is looked for again, and once back it is found
    and no longer missing. (A child process: the module's state is per process.)"""
    hsm = make_hsm(tmp_path / "hsm")
    uri = f"pkcs11:token=eport-ca?module-path={MODULE}&pin-source=file:{hsm.ca_pin}"
    res = subprocess.run(
        [sys.executable, "-c", CHILD, uri],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, **hsm.env(), "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["missing_before"] is False
    kind, problem_type, public, detail = doc["first"]
    assert kind == "KeyMissing" and problem_type == "urn:eport:problem:key-missing", doc
    assert public == KEY_LOST_DETAIL and "eport-ca" not in public and MODULE not in public
    assert "eport%20lost-key-test" in detail and "in the token" in detail
    assert doc["first_restarts"] == 1 and doc["missing"] is True, doc
    assert doc["again_seconds"] < pkcs11.MISSING_RECHECK, doc  # else the window is moot
    assert all(a[0] == "KeyMissing" and "looked for" in a[3] for a in doc["again"]), doc
    assert doc["again_restarts"] == 0, doc
    assert doc["later"][0] == "KeyMissing" and "looked for" not in doc["later"][3], doc
    assert doc["later_restarts"] == 1, doc
    assert doc["missing_after_restore"] is False, doc


def _destroy(env: dict[str, str], *key_files: Path) -> None:
    """Destroy the token objects the CA key files name (another process: this one's
    module state is left alone)."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom ca import pkcs11\n"
        "for f in sys.argv[1:]:\n    pkcs11.destroy(pkcs11.read_reference(Path(f)).uri)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, *map(str, key_files)],
        check=True, capture_output=True, cwd=REPO, timeout=60,
        env={**env, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


@pytest.mark.slow
def test_a_lost_issuing_ca_key_leaves_the_rest_serving_until_a_rollover_replaces_it(
    tmp_path: Path,
) -> None:
    hsm, data, out, env, port = token_ca(tmp_path)
    d = data / "ca"
    _destroy(env, d / "issuers" / "enterprise.key", d / "responders" / "agency.key")

    # The server starts, degraded: one warning per lost key, saying what replaces it.
    srv, proc = start_server(data, dev=False, env=env, log_dir=tmp_path, port=port)
    try:
        warnings = [ln for ln in srv.log.read_text().splitlines() if ln.startswith("WARNING: the")]
        assert len(warnings) == 2, srv.log.read_text()
        assert "issuing CA enterprise is missing" in warnings[0]
        assert "eport ca rotate enterprise" in warnings[0]
        assert "OCSP responder key of issuing CA agency" in warnings[1]
        assert "renew-responders --force" in warnings[1]
        health = health_of(srv.url)
        assert health["status"] == "degraded", health
        assert health["missing_keys"] == ["issuers/enterprise", "responders/agency"], health
        assert health["database"] == "ok" and health["sealed"] is False
        # Still ready: the rest of the CA serves.
        assert requests.get(srv.url + "/ca/v1/health?ready", timeout=10).status_code == 200

        # Enrollment from the lost issuer: 503 key-missing, through the CLI one line; the
        # code stays unused (it enrolls after the rollover, below).
        code, second = codes(srv, out, hsm, 2)
        r = enroll(srv, code)
        assert r.status_code == 503, r.text
        assert r.json()["type"] == "urn:eport:problem:key-missing"
        assert r.json()["detail"] == KEY_LOST_DETAIL
        cli_env = {**srv.env(EPORT_PASSPHRASE="enterprise passphrase"), **hsm.env()}
        ent = tmp_path / "ent"
        res = run("enroll", "--code", second, "--profile", "enterprise", "--out", str(ent),
                  env=cli_env, check=False)  # fmt: skip
        assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
        assert "a CA key this request needs is missing or damaged" in res.stderr
        assert "nothing was issued" in res.stderr and (ent / "key.pem").exists()
        assert "KeyMissing: no public key matching" in srv.log.read_text()

        # The rest signs: the responders of the other issuers are renewed (their issuing
        # CA keys sign), the lost generation's is left, saying why.
        res = srv.eport(
            "ca", "renew-responders", "--force", *officer_args(out), "--json",
            EPORT_PASSPHRASE="officer passphrase",
        )  # fmt: skip
        doc = json.loads(res.stdout)
        assert sorted(x["issuer"] for x in doc["renewed"]) == ["agency", "service"], doc
        assert doc["skipped"] == {
            "enterprise": "the issuing CA's key is missing (emergency plan, section 7)"
        }, doc
        openssl = need("openssl")
        for issuer in ("agency", "service"):
            ok = subprocess.run(
                [openssl, "verify", "-CAfile", str(d / "root.crt"),
                 "-untrusted", str(d / "issuers" / f"{issuer}.crt"),
                 str(d / "responders" / f"{issuer}.crt")],
                capture_output=True, text=True,
            )  # fmt: skip
            assert ok.returncode == 0, ok.stderr
        wait_for = ["issuers/enterprise"]
        assert until(lambda: health_of(srv.url).get("missing_keys") == wait_for), health_of(srv.url)

        # The rollover ceremony replaces the lost generation; the refused codes enroll.
        cid = rotate(srv, out)
        for m in ("customs", "tax", "forex"):
            done = json.loads(join(srv, out, cid, m).stdout)
        assert done["state"] == "done" and done["result"]["generation"] == "enterprise-2", done
        assert until(lambda: enroll(srv, code).status_code == 201)
        run("enroll", "--code", second, "--profile", "enterprise", "--out", str(ent),
            env=cli_env)  # fmt: skip
        ok = subprocess.run(
            [openssl, "verify", "-CAfile", str(d / "root.crt"),
             "-untrusted", str(ent / "chain.pem"), str(ent / "cert.pem")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        health = health_of(srv.url)
        assert health["missing_keys"] == ["issuers/enterprise"], health
        warned = health["warnings"]
        assert isinstance(warned, list)
        notice = next(w for w in warned if w.startswith("the key of issuing CA"))
        assert "no longer issues" in notice and "REVOKE-INTERMEDIATE issuer=enterprise" in notice
    finally:
        stop(proc)

    # A restart with the old generation's key still lost: started, and said so.
    (tmp_path / "again").mkdir()
    srv, proc = start_server(data, dev=False, env=env, log_dir=tmp_path / "again", port=port)
    try:
        log = srv.log.read_text()
        assert "WARNING: the key of issuing CA generation enterprise, which no longer issues" in log
        assert health_of(srv.url)["missing_keys"] == ["issuers/enterprise"]
    finally:
        stop(proc)

    # The log key lost too: the server starts, says so, and REPLACE-LOG-KEY makes the new
    # log key in the token, the hand-over vouched for by the root (tests/test_lost_log_key).
    _destroy(env, d / "log.key")
    (tmp_path / "log").mkdir()
    srv, proc = start_server(data, dev=False, env=env, log_dir=tmp_path / "log", port=port)
    try:
        assert "WARNING: the transparency log's key is missing from its PKCS#11 token" in (
            srv.log.read_text()
        )
        assert health_of(srv.url)["missing_keys"] == ["issuers/enterprise", "log"]
        cid = str(start(srv, out, "REPLACE-LOG-KEY")["id"])
        for m in ("customs", "tax", "forex"):
            done = json.loads(join(srv, out, cid, m).stdout)
        assert done["state"] == "done" and done["result"]["key"] == "pkcs11", done
        assert pkcs11.is_reference(d / "log.key")
        assert until(lambda: health_of(srv.url)["missing_keys"] == ["issuers/enterprise"])
        res = srv.eport("audit", "verify", "--state", str(tmp_path / "audit.json"),
                        "--log-key", str(d / "log.pub"), "--json")  # fmt: skip
        assert json.loads(res.stdout)["tree_size"] > 0  # a checkpoint the token key signed
    finally:
        stop(proc)
