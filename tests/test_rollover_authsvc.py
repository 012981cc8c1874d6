"""The token service follows a rollover without a restart: against a real sealed-then-
unsealed server (gunicorn, 2 workers, CA and token service mounted), the enterprise
issuing CA is rotated by quorum; an operator of the new generation logs in at once, one
of the old generation still does; after REVOKE-INTERMEDIATE of the old generation its
operator's login is refused and the session and access token it had go inactive."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509

from tests.conftest import Server
from tests.helpers import creds, enroll_operator
from tests.test_custody_ceremonies import enroll, join, rotate, start, unsealed_custody_server

SERVICE = "customs-declaration"
RELOAD_CHECK = 1.1
"""The token service stats the generation file at most once a second."""


def operator(srv: Server, out: Path, tmp: Path, name: str, op_id: str) -> Path:
    ent = enroll(srv, out, tmp, name)
    return enroll_operator(srv, ent, tmp, op_id, "declaration")


def login(srv: Server, who: Path, cfg: Path, check: bool = True) -> object:
    return srv.eport("login", *creds(who), "--json", check=check, EPORT_CONFIG_DIR=str(cfg))


def token_for(srv: Server, cfg: Path) -> str:
    res = srv.eport("token", "--service", SERVICE, EPORT_CONFIG_DIR=str(cfg))
    return res.stdout.strip()


def active(srv: Server, token: str) -> bool:
    r = requests.get(
        srv.url + "/auth/validate",
        headers={"Authorization": f"Bearer {token}", "X-Eport-Service": SERVICE},
        timeout=10,
    )
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def issued_by(d: Path, issuer: x509.Certificate) -> None:
    cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
    cert.verify_directly_issued_by(issuer)


@pytest.fixture(scope="module")
def custody_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with unsealed_custody_server(tmp_path_factory.mktemp("rollover")) as world:
        yield world


@pytest.mark.slow
def test_rollover_and_revocation_reach_the_token_service_without_restart(custody_server) -> None:  # type: ignore[no-untyped-def]
    srv, out, tmp = custody_server
    issuers = srv.data_dir / "ca" / "issuers"
    old_issuer = x509.load_pem_x509_certificate((issuers / "enterprise.crt").read_bytes())
    old_op = operator(srv, out, tmp, "Old Generation Trading Co.", "OLD1")
    issued_by(old_op, old_issuer)
    old_cfg = tmp / "cfg-old"
    login(srv, old_op, old_cfg)

    # Rotate the enterprise issuing CA by quorum (3 of 5), the server running throughout.
    cid = rotate(srv, out)
    for m in ("forex", "customs", "inspection"):
        last = join(srv, out, cid, m)
    assert json.loads(last.stdout)["result"]["generation"] == "enterprise-2"
    time.sleep(RELOAD_CHECK)
    new_issuer = x509.load_pem_x509_certificate((issuers / "enterprise-2.crt").read_bytes())
    # The enterprise's signed request to grant roles goes to the token service.
    new_op = operator(srv, out, tmp, "New Generation Trading Co.", "NEW1")
    issued_by(new_op, new_issuer)

    # The new generation logs in without a restart, in every worker (several logins are
    # spread over both gunicorn workers); the old generation still does too.
    new_cfg = tmp / "cfg-new"
    t0 = time.perf_counter()
    for _ in range(4):
        login(srv, new_op, new_cfg)
    print(f"\n4 logins under the new generation: {time.perf_counter() - t0:.2f} s")
    assert active(srv, token_for(srv, new_cfg))
    login(srv, old_op, old_cfg)
    old_token = token_for(srv, old_cfg)
    assert active(srv, old_token)

    # The old generation is compromised: REVOKE-INTERMEDIATE by quorum.
    doc = start(srv, out, "REVOKE-INTERMEDIATE", "issuer=enterprise", "reason=keyCompromise")
    for m in ("tax", "commerce", "forex"):
        last = join(srv, out, str(doc["id"]), m)
    assert json.loads(last.stdout)["result"]["serial"] == format(old_issuer.serial_number, "x")
    time.sleep(RELOAD_CHECK)

    refused = login(srv, old_op, tmp / "cfg-refused", check=False)
    assert refused.returncode == 1, refused.stdout  # type: ignore[attr-defined]
    assert "enterprise was revoked on the root CRL (keyCompromise)" in refused.stderr  # type: ignore[attr-defined]
    assert "\n" not in refused.stderr.strip()  # type: ignore[attr-defined]
    # Its session and its access token go inactive at their next status check (within
    # the token service's status cache lifetime, 2 s).
    deadline = time.monotonic() + 5
    while active(srv, old_token) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not active(srv, old_token)
    again = srv.eport("token", "--service", SERVICE, check=False, EPORT_CONFIG_DIR=str(old_cfg))
    assert again.returncode == 1 and "ended" in again.stderr, again.stderr
    # The new generation is untouched.
    login(srv, new_op, new_cfg)
    assert active(srv, token_for(srv, new_cfg))


def test_generation_watch_reloads_once_per_change_and_retries(tmp_path: Path) -> None:
    from ca.generation import GenerationWatch, bump_generation

    (tmp_path / "ca").mkdir()
    now = [0.0]
    watch = GenerationWatch(tmp_path, every=1.0, clock=lambda: now[0])
    seen: list[str] = []
    assert not watch.poll(seen.append)
    bump_generation(tmp_path)
    assert not watch.poll(seen.append) and seen == []  # at most one stat a second
    now[0] = 1.0
    assert watch.poll(seen.append) and len(seen) == 1
    now[0] = 2.0
    assert not watch.poll(seen.append) and len(seen) == 1  # once per change

    def failing(token: str) -> None:
        raise OSError("half-written hierarchy")

    bump_generation(tmp_path)
    now[0] = 3.0
    assert not watch.poll(failing)  # logged; the old material stays
    now[0] = 4.0
    assert watch.poll(seen.append) and len(seen) == 2  # retried a second later

    def bumped_meanwhile(token: str) -> None:
        seen.append(token)
        bump_generation(tmp_path)  # a change while loading is seen by the next poll

    bump_generation(tmp_path)
    now[0] = 5.0
    assert watch.poll(bumped_meanwhile)
    now[0] = 6.0
    assert watch.poll(seen.append) and len(seen) == 4 and seen[-1] != seen[-2]


def test_a_root_crl_the_root_did_not_sign_is_refused(tmp_path: Path) -> None:
    import datetime

    from authsvc.trust import build_material
    from ca import hierarchy
    from ca.crl import build_crl
    from ca.issuance import CertificateFactory, self_signed_root
    from ca.keys import KeyType
    from ca.policy import load_policies
    from ca.signer import SoftwareSigner
    from tests.conftest import REPO

    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    h = hierarchy.create(
        load_policies(REPO / "policies"),
        tmp_path,
        root_passphrase=b"r" * 12,
        ca_passphrase=b"c" * 12,
        factory=CertificateFactory(),
        now=now,
    )
    material = build_material(tmp_path, lambda issuers: None, "")  # type: ignore[arg-type,return-value]
    assert material.revoked == () and len(material.anchors.intermediates) == len(h.issuers)
    # A CRL under the root's name, signed by an impostor root with another key.
    impostor_key = SoftwareSigner(KeyType.P384.generate())
    impostor = self_signed_root(impostor_key, h.root.subject, now, datetime.timedelta(days=9))
    forged = build_crl(impostor, impostor_key, [], 99, now, now + datetime.timedelta(days=1))
    (tmp_path / "ca" / "root.crl").write_bytes(forged)
    with pytest.raises(ValueError, match="signature"):
        build_material(tmp_path, lambda issuers: None, "")  # type: ignore[arg-type,return-value]
