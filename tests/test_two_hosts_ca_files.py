"""Two hosts, one PostgreSQL database: a change of one host's ``ca/`` files reaches the
other, or the other says that it cannot (docs/ca.md, "Several hosts"; ca/crosshost.py).

* A forced OCSP responder renewal sent to host A: host B renews its own responders
  within seconds, once, and A does not renew again. Before, B signed with the old
  responder key until its own expiry-driven renewal (about 60 days), and the responses
  it signed were stored and served by A too.
* Quorum ceremonies on host A of a CA under joint custody: a revoked issuing CA (public:
  the root CRL, ``issuers/active.json``) is taken by host B within seconds; a rollover,
  whose new key only A has, makes B say it is stale (health, one log line), refuse to
  start in one line naming the manual step, and start again once A's ``ca/`` is copied.
  Before, B kept issuing from the revoked issuing CA, served the old root CRL, accepted
  signed requests under the revoked CA, and reported nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ca.active_signature import verify_active
from ca.checkpoint import Checkpoint, parse_verifier_key, verify_note
from tests.conftest import EPORT, Postgres, Server, free_port, start_server, stop
from tests.helpers import fresh_uscc
from tests.test_ca_init import custodian_env, unseal
from tests.test_custody_ceremonies import join, officer_args, rotate, start
from tests.test_reshare import NEW, PRESENT, refused, reshare
from tests.test_two_hosts import enterprise, ocsp_status, rows, signed_post, two_hosts

FAST = {"EPORT_CRL_REFRESH_SECONDS": "0.5"}
"""Each worker compares its files with the database's record on every refresher cycle."""


def eventually(what: str, probe: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def responder_serials(data_dir: Path) -> dict[str, int]:
    d = data_dir / "ca" / "responders"
    return {
        p.stem: x509.load_pem_x509_certificate(p.read_bytes()).serial_number
        for p in sorted(d.glob("*.crt"))
    }


def health(srv: Server) -> dict[str, Any]:
    r = requests.get(srv.url + "/ca/v1/health", timeout=10)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


@pytest.mark.slow
def test_a_forced_responder_renewal_on_one_host_is_followed_by_the_other(
    postgres: Postgres, tmp_path: Path
) -> None:
    with two_hosts(postgres, tmp_path, "eport_follow_responders", extra_env=FAST) as hosts:
        ident = enterprise(hosts)
        issuer = x509.load_pem_x509_certificate(
            (hosts.a.data_dir / "ca" / "issuers" / "enterprise.crt").read_bytes()
        )
        old = responder_serials(hosts.b.data_dir)
        assert old == responder_serials(hosts.a.data_dir)  # copies of one data directory
        hosts.a.eport("ca", "renew-responders", "--force", *hosts.a.officer(), "--json")
        renewed_a = responder_serials(hosts.a.data_dir)
        assert set(renewed_a.values()).isdisjoint(old.values())

        def followed() -> dict[str, int] | None:
            now = responder_serials(hosts.b.data_dir)
            return now if set(now.values()).isdisjoint(old.values()) else None

        renewed_b = eventually("host B kept the old responders", followed)
        time.sleep(1.1)  # B's other worker reloads at its next check of the generation file
        # its own new keys and certificates: nothing travelled from host A
        assert set(renewed_b.values()).isdisjoint(renewed_a.values())
        # a status change made on host B is answered with its new responder, on both
        serial = format(ident.chain[0].serial_number, "x")
        r = signed_post(hosts.b, f"/ca/v1/certificates/{serial}/suspend", {}, hosts.officer)
        assert r.status_code == 200, r.text
        signer = eventually(
            "host B's workers did not reload their responders",
            lambda: _answered_by(hosts.b, ident.chain[0], issuer, renewed_b["enterprise"]),
        )
        assert signer
        assert ocsp_status(hosts.a, ident.chain[0], issuer) == "HOLD"
        # once each: neither host renews again after the other (no ping-pong)
        time.sleep(2)
        assert responder_serials(hosts.a.data_dir) == renewed_a
        assert responder_serials(hosts.b.data_dir) == renewed_b
        follows = rows(
            hosts.database_url,
            "SELECT count(*) FROM events WHERE type = 'certificate.issued'"
            " AND profile = 'ocsp-responder' AND actor = 'system:responder-follow'",
        )
        assert follows == [(len(old),)]
        for srv in hosts.both():
            doc = health(srv)
            assert doc["hierarchy"] == "current" and "warnings" not in doc, doc
        assert "Followed another host's forced OCSP responder renewal" in hosts.b.log.read_text()


def _answered_by(
    srv: Server, cert: x509.Certificate, issuer: x509.Certificate, responder: int
) -> bool:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    r = requests.post(
        srv.url + "/ocsp",
        data=req.public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
        timeout=10,
    )
    resp = ocsp.load_der_ocsp_response(r.content)
    return bool(resp.certificates) and resp.certificates[0].serial_number == responder


def ca_init(data: Path, out: Path, env: dict[str, str]) -> None:
    """``eport ca init`` of a CA under joint custody into ``data``, its shares in ``out``."""
    made = subprocess.run(
        [EPORT, "ca", "init", "--data-dir", str(data), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr


def _start_custody_host(
    data: Path, db: str, env: dict[str, str], port: int, out: Path
) -> tuple[Server, subprocess.Popen[bytes]]:
    srv, proc = start_server(data, db, dev=False, env=env, port=port, log_dir=data.parent)
    found = re.search(r"Unseal key fingerprint: ([0-9a-f:]+)", srv.log.read_text())
    assert found, srv.log.read_text()
    for m in ("commerce", "tax", "forex"):
        unseal(srv, out, m, found.group(1))
    return srv, proc


def two_custody_hosts(
    postgres: Postgres, tmp_path: Path, name: str
) -> tuple[str, dict[str, str], tuple[int, int], tuple[Path, Path], Path]:
    """A CA under joint custody made on host A (``eport ca init``, ceremony files in
    ``out``) and host B's data directory a copy of A's, on one new PostgreSQL database
    ``name``: the database's URL, the hosts' environment, their ports, their data
    directories and ``out``. Neither host is started."""
    db = postgres.createdb(name)
    auth = postgres.createdb(f"{name}_auth")
    ports = free_port(), free_port()
    env = {
        **custodian_env(),
        **FAST,
        "EPORT_DATABASE_URL": db,
        "EPORT_AUTH_DATABASE_URL": auth,
        "EPORT_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports[0]}",
    }
    a_data, b_data, out = tmp_path / "a" / "data", tmp_path / "b" / "data", tmp_path / "out"
    a_data.parent.mkdir()
    b_data.parent.mkdir()
    ca_init(a_data, out, env)
    shutil.copytree(a_data, b_data, ignore=shutil.ignore_patterns("serve.lock"))
    return db, env, ports, (a_data, b_data), out


@pytest.mark.slow
def test_quorum_ceremonies_on_one_host_reach_the_other_or_it_says_so(
    postgres: Postgres, tmp_path: Path
) -> None:
    db, env, (port_a, port_b), (a_data, b_data), out = two_custody_hosts(
        postgres, tmp_path, "eport_ceremony_hosts"
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        a, procs["a"] = _start_custody_host(a_data, db, env, port_a, out)
        b, procs["b"] = _start_custody_host(b_data, db, env, port_b, out)
        service = x509.load_pem_x509_certificate(
            (a_data / "ca" / "issuers" / "service.crt").read_bytes()
        )

        # 1. REVOKE-INTERMEDIATE on A: public files only; host B takes them by itself.
        doc = start(a, out, "REVOKE-INTERMEDIATE", "issuer=service", "reason=keyCompromise")
        for m in ("inspection", "tax", "customs"):
            join(a, out, str(doc["id"]), m)

        def b_lists_the_revoked_ca() -> bool:
            der = requests.get(b.url + "/crl/root.crl", timeout=10).content
            crl = x509.load_der_x509_crl(der)
            return crl.get_revoked_certificate_by_serial_number(service.serial_number) is not None

        eventually("host B serves the old root CRL", b_lists_the_revoked_ca)
        eventually(
            "host B still issues from the revoked issuing CA",
            lambda: (
                "service" not in requests.get(b.url + "/ca/v1/ca", timeout=10).json()["issuers"]
            ),
        )
        assert health(b)["hierarchy"] == "current"
        took = "Took issuers/active.json, issuers/active.json.sig, root.crl from the database"
        assert took in b.log.read_text()
        # the file that stops issuing from it came with the root's signature, the first
        # in order, published by A and taken by B as a pair
        root = x509.load_pem_x509_certificate((a_data / "ca" / "root.crt").read_bytes())
        revoked_pair = active_pair(a_data)
        assert verify_active(root, *revoked_pair) == 1
        assert active_pair(b_data) == revoked_pair
        assert [published(db, n) for n in ACTIVE] == revoked_pair

        # 2. ROTATE-ISSUER on A: the new issuing CA's key is only on A. B says so.
        cid = rotate(a, out)
        for m in ("forex", "customs", "commerce"):
            join(a, out, cid, m)
        stale = eventually("host B does not say it is stale", lambda: _stale(b))
        warning = " ".join(stale["warnings"])
        assert "issuers/enterprise-2.crt" in warning and "issuers/enterprise-2.key" in warning
        assert "copy the ceremony host's ca/ directory" in warning
        # active.json, signed as the second, was taken: B is stale for the keys alone
        assert "active.json" not in warning, warning
        assert verify_active(root, *active_pair(a_data)) == 2
        assert active_pair(b_data) == active_pair(a_data)
        assert health(a)["hierarchy"] == "current"
        logged = [ln for ln in b.log.read_text().splitlines() if "are behind the database" in ln]
        assert len({ln.split("eport.ca", 1)[-1] for ln in logged}) == 1, logged
        # B no longer issues from the superseded generation (it took active.json), and
        # says where to enroll: a host that has the new one (it said "issuing CA
        # 'enterprise' is not configured", 404); the code is not spent, and A takes it.
        assert "enterprise" not in requests.get(b.url + "/ca/v1/ca", timeout=10).json()["issuers"]
        app = json.loads(
            b.eport("apply", "--uscc", fresh_uscc(), "--name", "Stale Host Co", "--json").stdout
        )
        grant = json.loads(
            b.eport(
                "ra",
                "approve",
                app["id"],
                *officer_args(out, "tax"),
                "--json",
                EPORT_PASSPHRASE="officer passphrase",
            ).stdout
        )
        code = ["--code", grant["enrollment_code"], "--profile", "enterprise", "--json"]
        on_b = b.eport("enroll", *code, "--out", str(tmp_path / "on-b"), check=False)
        assert on_b.returncode == 1 and "(HTTP 503)" in on_b.stderr, on_b.stderr
        assert "issues from enterprise-2, whose certificate and key this host does not have" in (
            on_b.stderr
        )
        on_a = json.loads(a.eport("enroll", *code, "--out", str(tmp_path / "on-a")).stdout)
        assert on_a["issuer"] == "enterprise-2", on_a
        # restarted as it is, B is refused in one line naming the manual step
        stop(procs.pop("b"))
        refused = subprocess.run(
            [EPORT, "serve", "--data-dir", str(b_data), "--port", str(port_b)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert refused.returncode == 1, refused.stdout + refused.stderr
        errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("eport: error:")]
        assert len(errors) == 1 and "issuers/enterprise-2.key" in errors[0], refused.stderr
        assert "copy the ceremony host's ca/ directory" in errors[0]
        # refused before a sealed start announces a fingerprint to unseal it with
        assert "Unseal key fingerprint" not in refused.stdout, refused.stdout
        assert refused.stderr.strip().splitlines() == errors, refused.stderr
        # the manual step: A's ca/ copied over B's; B starts and is current
        shutil.rmtree(b_data / "ca")
        shutil.copytree(a_data / "ca", b_data / "ca")
        b, procs["b"] = _start_custody_host(b_data, db, env, port_b, out)
        assert health(b)["hierarchy"] == "current"
        assert "enterprise-2" in requests.get(b.url + "/ca/v1/ca", timeout=10).json()["issuers"]

        # 3. ROTATE-LOG-KEY on A: the new log key is only on A. B, its key retired, signs
        # no checkpoint: it serves the newest one stored. Before, B signed the next tree
        # size with the old key, and that note (one per size, for good) was what A served
        # too, failing every auditor who had taken A's new key.
        old_key = log_key(a)
        signed = checkpoint(a, old_key)
        audit_state = tmp_path / "auditor-state.json"
        a.eport("audit", "verify", "--state", str(audit_state), "--log-key", old_key)
        cid = str(start(a, out, "ROTATE-LOG-KEY")["id"])
        for m in ("commerce", "inspection", "forex"):
            join(a, out, cid, m)
        eventually("A still names its old log key", lambda: log_key(a) != old_key)
        new_key = log_key(a)
        stale = eventually("host B does not say it is stale", lambda: _stale(b))
        assert "log.key" in " ".join(stale["warnings"]), stale
        # The ceremony's transaction stored the log's hand-over checkpoint, signed by the
        # old key and the new one, so B, which signs nothing, serves a note of the new key
        # at once: before anyone asked A for a checkpoint (B served the retired key's until
        # then, and an auditor verifying through B with A's key failed).
        via_b = checkpoint(b, new_key)
        assert via_b.size > signed.size  # the ceremony's events are in the log
        assert checkpoint(a, new_key) == via_b
        r = requests.get(b.url + f"/ca/v1/audit/checkpoint?size={signed.size}", timeout=10)
        name, public = parse_verifier_key(old_key)
        assert verify_note(r.content, name, public) == signed  # earlier sizes: the old key
        # B names no log key: its own log.pub is retired (an auditor verifying through B
        # failed with "signed note has no signature by" the old key), and the record's
        # is not one B was given (the database is no authority for the key auditors
        # trust: whoever can write it could name theirs). A current host names it.
        r = requests.get(b.url + "/ca/v1/audit/log-key", timeout=10)
        assert r.status_code == 503, r.text
        assert r.headers["Content-Type"] == "application/problem+json"
        assert "ask a current host for the log's key" in r.json()["detail"], r.json()
        assert log_key(a) == new_key
        # An auditor whose state pins the old key follows the hand-over to the new one
        # through B, which serves the hand-overs from the database and the newest
        # checkpoint A signed (the log grew after the rotation).
        a.eport("apply", "--uscc", fresh_uscc(), "--name", "After The Rotation Co")
        grown = checkpoint(a, new_key)
        assert grown.size > via_b.size
        verified = b.eport("audit", "verify", "--state", str(audit_state), "--json")
        doc = json.loads(verified.stdout)
        assert doc["tree_size"] == grown.size and doc["log_key"] == new_key
        assert doc["handovers"] == [
            {"tree_size": via_b.size, "from": old_key, "to": new_key, "vouched_by_root": False}
        ]

        # 4. A re-share on A (its server running): the new custody record and the root's
        # signature of it reach B together (B, stale for the log key, still takes the
        # public files it can check). Then custody records planted in the database by
        # SQL, as anyone who can write it could (a changed one, forged or unsigned, and
        # the genuine one the re-share replaced): neither host takes one, and both say
        # why. Before, a host took custody.json from the record after a syntax check.
        shares = [out / "shares" / f"{m}.share" for m in PRESENT]
        res = reshare(a_data, tmp_path / "reshare", shares, tmp_path, EPORT_DATABASE_URL=db)
        assert res.returncode == 0, res.stderr
        new_id = json.loads(res.stdout)["custody_id"]
        genuine = (a_data / "ca" / "custody.json").read_bytes()

        def b_custody() -> dict[str, Any] | None:
            doc: dict[str, Any] = requests.get(b.url + "/ca/v1/custody", timeout=10).json()
            return doc if doc["custody"]["custody_id"] == new_id else None

        state = eventually("host B did not take the re-shared record", b_custody)
        assert state["record_signature"] == {"verified": True, "detail": None}, state
        assert (b_data / "ca" / "custody.json").read_bytes() == genuine
        assert "Took custody.json, custody.json.sig from the database" in b.log.read_text()
        planted = genuine.replace(b'"threshold": 3', b'"threshold": 2')
        assert planted != genuine
        # forged as well as it can be without the root key: this root's name, the
        # planted record's digest, a signature by another P-384 key
        forged = json.loads((a_data / "ca" / "custody.json.sig").read_bytes())
        forged["record_sha256"] = hashlib.sha256(planted).hexdigest()
        forged["signature"] = base64.b64encode(
            ec.generate_private_key(ec.SECP384R1()).sign(planted, ec.ECDSA(hashes.SHA384()))
        ).decode()
        refusal = "the database's custody record is not signed by this host's root: "
        replaced = json.loads((out / "custody.json").read_text())["custody_id"]
        for files, why in (
            (
                {"custody.json": planted, "custody.json.sig": json.dumps(forged).encode()},
                refusal + "its signature does not verify under this host's root.crt",
            ),
            ({"custody.json": planted, "custody.json.sig": None}, refusal + "it has no signature"),
            (  # init's record, genuinely signed, which the re-share replaced, put back
                {
                    "custody.json": (out / "custody.json").read_bytes(),
                    "custody.json.sig": (out / "custody.json.sig").read_bytes(),
                },
                f"custody set {replaced}, which a re-share replaced",
            ),
        ):
            plant(db, files)
            for srv in (b, a):  # the ceremony host is behind the planted record too
                stale = eventually(
                    f"{srv.url} does not refuse the planted record ({why})",
                    lambda srv=srv, why=why: _refusing(srv, why),
                )
                assert "custody.json" in " ".join(stale["warnings"]), stale
            for d in (a_data, b_data):
                assert (d / "ca" / "custody.json").read_bytes() == genuine
            assert b_custody() is not None

        # 5. issuers/active.json planted by SQL: switched back to the generations the
        # ceremonies replaced (unsigned), and the REVOKE-INTERMEDIATE's genuine pair put
        # back (signed, but first in order). Neither host takes one; both say why. Before,
        # every host took active.json from the record after a JSON syntax check.
        current = active_pair(a_data)
        refusal = "the database's issuers/active.json "
        for files, why in (
            (
                {
                    "issuers/active.json": b'{"enterprise": "enterprise", "service": "service"}\n',
                    "issuers/active.json.sig": None,
                },
                refusal + "is not signed by this host's root: it has no signature",
            ),
            (
                dict(zip(ACTIVE, revoked_pair, strict=True)),
                refusal + "(sequence 1) is not ordered after this host's (sequence 2)",
            ),
        ):
            plant(db, files)
            for srv in (b, a):
                stale = eventually(
                    f"{srv.url} does not refuse the planted active.json ({why})",
                    lambda srv=srv, why=why: _refusing(srv, why),
                )
                assert "issuers/active.json" in " ".join(stale["warnings"]), stale
            for d in (a_data, b_data):
                assert active_pair(d) == current
            for srv in (a, b):
                issuers = requests.get(srv.url + "/ca/v1/ca", timeout=10).json()["issuers"]
                assert "enterprise-2" in issuers and "service" not in issuers, issuers
    finally:
        for p in procs.values():
            stop(p)


@pytest.mark.slow
def test_a_host_down_through_two_reshares_takes_no_middle_record_put_back(
    postgres: Postgres, tmp_path: Path
) -> None:
    """Host B is down while host A re-shares twice (custody records of sequence 2, then
    3). B never had the middle record, so it kept no copy that would tell it is old;
    when someone who can write the database put that record back (genuinely signed by
    the root), B took it, and the middle custody set's share files counted there again.
    B now takes the newest record at its start and refuses the middle one by its signed
    order; A refuses it too (it kept it when it replaced it)."""
    db, env, (port_a, port_b), (a_data, b_data), out = two_custody_hosts(
        postgres, tmp_path, "eport_custody_order"
    )

    def serve(data: Path, port: int) -> tuple[Server, subprocess.Popen[bytes]]:
        # sealed: comparing with the record and the health need no unseal
        return start_server(data, db, dev=False, env=env, port=port, log_dir=data.parent)

    def published(name: str) -> bytes:
        (data,) = rows(db, f"SELECT data FROM hierarchy_files WHERE path = '{name}'")
        return bytes(data[0])

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        a, procs["a"] = serve(a_data, port_a)
        b, procs["b"] = serve(b_data, port_b)
        assert health(b)["hierarchy"] == "current"
        stop(procs.pop("b"))  # B is down through both re-shares
        # two re-shares on A, the second by the share files of the first
        first = tmp_path / "reshare-1"
        shares = [out / "shares" / f"{m}.share" for m in PRESENT]
        res = reshare(a_data, first, shares, tmp_path, EPORT_DATABASE_URL=db)
        assert res.returncode == 0 and json.loads(res.stdout)["sequence"] == 2, res.stderr
        middle_record = (a_data / "ca" / "custody.json").read_bytes()
        middle_id = json.loads(middle_record)["custody_id"]
        eventually(
            "host A did not publish its re-share",
            lambda: published("custody.json") == middle_record,
        )
        middle = {name: published(name) for name in ("custody.json", "custody.json.sig")}
        res = reshare(
            a_data,
            tmp_path / "reshare-2",
            [first / "shares" / f"{m}.share" for m in PRESENT],
            tmp_path,
            EPORT_DATABASE_URL=db,
            **{f"EPORT_SHARE_PASSPHRASE_{m.upper()}": NEW.format(m) for m in PRESENT},
        )
        assert res.returncode == 0 and json.loads(res.stdout)["sequence"] == 3, res.stderr
        newest = (a_data / "ca" / "custody.json").read_bytes()
        eventually(
            "host A did not publish its re-share", lambda: published("custody.json") == newest
        )
        newest_id = json.loads(newest)["custody_id"]
        # A re-share on B while it is behind: B's record still takes the first share
        # files, which would sign a second record of sequence 2 that every host refuses
        before = (b_data / "ca" / "custody.json").read_bytes()
        res = reshare(b_data, tmp_path / "reshare-on-b", shares, tmp_path, EPORT_DATABASE_URL=db)
        refused(res, f"sequence 1) is behind the database's (custody set {newest_id}, sequence 3)")
        assert (b_data / "ca" / "custody.json").read_bytes() == before
        assert not (tmp_path / "reshare-on-b" / "shares").exists()
        b, procs["b"] = serve(b_data, port_b)  # takes the newest record as it starts
        assert (b_data / "ca" / "custody.json").read_bytes() == newest
        assert health(b)["hierarchy"] == "current"
        assert not (b_data / "ca" / f"custody-{middle_id}.json").exists()
        plant(db, middle)  # the middle record, put back
        stale = eventually(
            "host B does not refuse the middle record",
            lambda: _refusing(
                b,
                f"(custody set {middle_id}, sequence 2) is not ordered after this host's "
                f"(custody set {newest_id}, sequence 3)",
            ),
        )
        assert "custody.json" in " ".join(stale["warnings"]), stale
        eventually(
            "host A does not refuse the middle record",
            lambda: _refusing(a, f"custody set {middle_id}, which a re-share replaced"),
        )
        for d in (a_data, b_data):
            assert (d / "ca" / "custody.json").read_bytes() == newest
    finally:
        for p in procs.values():
            stop(p)


def log_key(srv: Server) -> str:
    r = requests.get(srv.url + "/ca/v1/audit/log-key", timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["verifier_key"])


def checkpoint(srv: Server, key: str) -> Checkpoint:
    """The host's latest checkpoint, verified with ``key`` (a verifier key string)."""
    r = requests.get(srv.url + "/ca/v1/audit/checkpoint", timeout=10)
    assert r.status_code == 200, r.text
    name, public = parse_verifier_key(key)
    return verify_note(r.content, name, public)


def _stale(srv: Server) -> dict[str, Any] | None:
    doc = health(srv)
    return doc if doc["hierarchy"] == "stale" else None


def _refusing(srv: Server, words: str) -> dict[str, Any] | None:
    doc = _stale(srv)
    return doc if doc is not None and words in " ".join(doc["warnings"]) else None


ACTIVE = ("issuers/active.json", "issuers/active.json.sig")
"""``issuers/active.json`` and the root's signature of it (ca/active_signature.py)."""


def active_pair(data: Path) -> list[bytes]:
    return [(data / "ca" / name).read_bytes() for name in ACTIVE]


def published(url: str, name: str) -> bytes:
    """The bytes of ``name`` in the database's hierarchy record."""
    (data,) = rows(url, f"SELECT data FROM hierarchy_files WHERE path = '{name}'")
    return bytes(data[0])


def plant(url: str, files: dict[str, bytes | None]) -> None:
    """Edit the database's hierarchy record as an attacker who can write it would: the
    given files' bytes and digests replaced (None: the row deleted), as a new generation."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for path, data in files.items():
                conn.execute(text("DELETE FROM hierarchy_files WHERE path = :p"), {"p": path})
                if data is not None:
                    conn.execute(
                        text(
                            "INSERT INTO hierarchy_files (path, sha256, data) VALUES (:p, :s, :d)"
                        ),
                        {"p": path, "s": hashlib.sha256(data).hexdigest(), "d": data},
                    )
            conn.execute(text("UPDATE hierarchy_head SET generation = generation + 1"))
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_ceremony_writes_its_files_while_no_check_can_publish_half_of_them(
    tmp_path: Path,
) -> None:
    """REVOKE-INTERMEDIATE writes ``issuers/active.json``, then signs and writes the root
    CRL. The host's check (every refresher cycle, on every worker) took no part in that:
    run in between, it published the ceremony's first file alone as a generation of the
    record, and the other hosts took half a ceremony (seen as two pick-ups, generations 2
    and 3, in this file's two-host test). The M-th join now runs the operation under the
    host's crosshost lock: while anything else holds it (here the test, as a check would),
    the ceremony's files stay as they were; released, the ceremony completes and its
    files are published as one generation."""
    import fcntl
    import hashlib
    import sqlite3
    import threading

    port = free_port()
    env = {
        **custodian_env(),
        **FAST,
        "EPORT_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }
    data, out = tmp_path / "a" / "data", tmp_path / "out"
    data.parent.mkdir()
    ca_init(data, out, env)
    srv, proc = _start_custody_host(data, "", env, port, out)
    db = data / "eport.db"
    try:

        def head() -> int:
            with sqlite3.connect(db) as conn:
                return int(conn.execute("SELECT generation FROM hierarchy_head").fetchone()[0])

        gen = head()
        doc = start(srv, out, "REVOKE-INTERMEDIATE", "issuer=service", "reason=keyCompromise")
        for m in ("inspection", "tax"):
            join(srv, out, str(doc["id"]), m)
        active = data / "ca" / "issuers" / "active.json"
        crl = (data / "ca" / "root.crl").read_bytes()
        before = active.read_bytes() if active.exists() else None
        joined: list[subprocess.CompletedProcess[str]] = []
        with open(data / "ca" / ".crosshost.lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            last = threading.Thread(
                target=lambda: joined.append(join(srv, out, str(doc["id"]), "customs"))
            )
            last.start()
            time.sleep(4)
            # the operation waits for the lock: not one of its files is written yet
            assert (active.read_bytes() if active.exists() else None) == before
            assert (data / "ca" / "root.crl").read_bytes() == crl
            assert last.is_alive() and not joined
        last.join(60)
        assert joined and joined[0].returncode == 0, joined
        assert active.read_bytes() != before and (data / "ca" / "root.crl").read_bytes() != crl
        # published once, whole: the record's newest generation holds both files
        eventually("the ceremony's files were not published", lambda: head() > gen)
        time.sleep(1.5)  # a few more refresher cycles: nothing more to publish
        assert head() == gen + 1
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT path, sha256 FROM hierarchy_files").fetchall()
        digests = {path: sha for path, sha in rows}
        assert digests["issuers/active.json"] == hashlib.sha256(active.read_bytes()).hexdigest()
        assert (
            digests["root.crl"]
            == hashlib.sha256((data / "ca" / "root.crl").read_bytes()).hexdigest()
        )
    finally:
        stop(proc)
