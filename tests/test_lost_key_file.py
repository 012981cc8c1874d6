"""A CA key file lost or damaged while the others open (deleted by mistake, a bad disk
block): the server unseals, or starts, without that key and says so, the rest serves,
and the rollover ceremony that replaces an issuing CA's key runs. Before, the unseal of a
CA under custody answered every later request, health included, with a 500 and a
traceback in the log; a CA unsealed by passphrase did not start at all
(docs/emergency-plan.md §7; ca/signer.py ``SealedSigner.lose``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import requests

from ca.errors import KEY_LOST_DETAIL
from tests.conftest import Server, free_port, need, start_server, stop
from tests.helpers import enroll_enterprise, fresh_uscc, health_of, unsealed_by_passphrase, until
from tests.test_ca_init import init_ca, start_sealed, unseal
from tests.test_custody_ceremonies import join, officer_args, rotate
from tests.test_pkcs11_recovery import enroll

PW = {"EPORT_PASSPHRASE": "officer passphrase"}


def _code(srv: Server, out: Path) -> str:
    app = json.loads(
        srv.eport("apply", "--uscc", fresh_uscc(), "--name", "Lost File Co.", "--json").stdout
    )
    res = srv.eport("ra", "approve", app["id"], *officer_args(out), "--json", **PW)
    code: str = json.loads(res.stdout)["enrollment_code"]
    return code


@pytest.mark.slow
def test_an_unseal_without_one_key_file_serves_the_rest_until_a_rollover(tmp_path: Path) -> None:
    data, out, _ = init_ca(tmp_path)
    d = data / "ca"
    (d / "issuers" / "enterprise.key").unlink()
    (d / "responders" / "agency.key").write_bytes(b"a bad disk block\n")
    srv, proc, fp = start_sealed(tmp_path, data)
    try:
        assert health_of(srv.url)["sealed"] is True
        for m in ("commerce", "tax", "forex"):
            res = unseal(srv, out, m, fp)
        done = json.loads(res.stdout)
        assert done["sealed"] is False, res.stdout
        # the custodian whose share unsealed it hears what is missing
        assert done["missing_keys"] == ["issuers/enterprise", "responders/agency"], done
        assert res.stderr.count("WARNING: the ") == 2, res.stderr
        health = health_of(srv.url)
        assert health["status"] == "degraded" and health["sealed"] is False, health
        assert health["missing_keys"] == ["issuers/enterprise", "responders/agency"], health
        warned = health["warnings"]
        assert isinstance(warned, list)
        assert any("issuers/enterprise.key: No such file or directory" in w for w in warned)
        assert any(w.startswith("the OCSP responder key of issuing CA agency") for w in warned)
        assert requests.get(srv.url + "/ca/v1/health?ready", timeout=10).status_code == 200
        log = srv.log.read_text()
        assert "Unsealed without a key: the key of issuing CA enterprise" in log
        assert "Traceback" not in log

        # The lost issuer's enrollment: 503 key-missing, the code unused.
        code = _code(srv, out)
        r = enroll(srv, code)
        assert r.status_code == 503 and r.json()["type"] == "urn:eport:problem:key-missing"
        assert r.json()["detail"] == KEY_LOST_DETAIL
        assert "KeyLost: cannot sign: the CA key file issuers/enterprise.key" in (
            srv.log.read_text()
        )

        # The rest signs: responders renewed, but the lost generation's.
        res = srv.eport(
            "ca", "renew-responders", "--force", *officer_args(out), "--json", **PW
        )  # fmt: skip
        doc = json.loads(res.stdout)
        assert sorted(x["issuer"] for x in doc["renewed"]) == ["agency", "service"], doc
        assert list(doc["skipped"]) == ["enterprise"], doc
        assert until(lambda: health_of(srv.url).get("missing_keys") == ["issuers/enterprise"])

        # The rollover replaces the lost key; the refused code enrolls from the new
        # generation, whose chain openssl verifies.
        cid = rotate(srv, out)
        for m in ("customs", "tax", "forex"):
            done = json.loads(join(srv, out, cid, m).stdout)
        assert done["state"] == "done" and done["result"]["generation"] == "enterprise-2", done
        assert until(lambda: enroll(srv, code).status_code == 201)
        ent = enroll_enterprise(srv, tmp_path, officer=officer_args(out), **PW)
        ok = subprocess.run(
            [need("openssl"), "verify", "-CAfile", str(d / "root.crt"),
             "-untrusted", str(ent / "chain.pem"), str(ent / "cert.pem")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        notice = next(
            str(w)
            for w in health_of(srv.url)["warnings"]  # type: ignore[attr-defined]
            if str(w).startswith("the key of issuing CA generation enterprise,")
        )
        assert "REVOKE-INTERMEDIATE issuer=enterprise" in notice
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_ca_unsealed_by_passphrase_starts_without_a_lost_key_file(tmp_path: Path) -> None:
    """The development CA (keys under a passphrase), restarted with one issuing CA's key
    file gone: it starts, says so, and issues from the others; a wrong passphrase still
    refuses the start in one line."""
    data = tmp_path / "data"
    srv, proc = start_server(data, workers=1)
    stop(proc)
    (data / "ca" / "issuers" / "service.key").unlink()
    srv, proc = start_server(data, workers=1, dev=False, extra_env=unsealed_by_passphrase(data))
    try:
        log = srv.log.read_text()
        assert "WARNING: the key of issuing CA service cannot be opened" in log, log
        assert health_of(srv.url)["missing_keys"] == ["issuers/service"]
        enroll_enterprise(srv, tmp_path)  # from the enterprise issuing CA
    finally:
        stop(proc)
    # Served as the development CA (--dev), which has no custodians for a rollover: the
    # advice is a new development CA.
    srv, proc = start_server(data, workers=1)
    try:
        warned = health_of(srv.url)["warnings"]
        assert isinstance(warned, list)
        notice = next(w for w in warned if w.startswith("the key of issuing CA service"))
        assert "remove its data directory" in notice and "eport ca rotate" not in notice
    finally:
        stop(proc)
    wrong = {**unsealed_by_passphrase(data), "EPORT_CA_KEY_PASSPHRASE": "not the passphrase"}
    res = srv.eport("serve", "--data-dir", str(data), "--port", str(free_port()), check=False,
                    **wrong)  # fmt: skip
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "no issuing CA key opens" in res.stderr and "passphrase" in res.stderr
