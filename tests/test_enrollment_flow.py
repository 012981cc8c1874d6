"""The spine end to end: real server (gunicorn), real CLI, SQLite and PostgreSQL.

Artifacts are checked with independent implementations: ``openssl verify`` for
chains, ``openssl pkcs12`` for bundles, ``openssl x509`` for subjects.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, select

from ca.models import ApplicationRow, CertificateRow, EnrollmentCodeRow, EventRow
from tests.conftest import EPORT, Server
from tests.helpers import creds, fresh_uscc, row_counts

USCC = "91350100M000100Y43"
NAME = "Xiamen Harbour Trading Co., Ltd."


def counts(server: Server) -> dict[str, int]:
    return row_counts(
        server.database_url, (ApplicationRow, CertificateRow, EnrollmentCodeRow, EventRow)
    )


def jrun(server: Server, *args: str, **env: str) -> dict:
    res = server.eport(*args, "--json", **env)
    out = json.loads(res.stdout)
    assert isinstance(out, dict)
    return out


def enterprise(
    server: Server, tmp: Path, uscc: str | None = None, name: str = NAME, key_type: str = "p256"
) -> Path:
    app = jrun(server, "apply", "--uscc", uscc or fresh_uscc(), "--name", name)
    grant = jrun(server, "ra", "approve", app["id"], *server.officer())
    out = tmp / f"ent-{app['id']}"
    jrun(
        server,
        "enroll",
        "--code",
        grant["enrollment_code"],
        "--profile",
        "enterprise",
        "--out",
        str(out),
        "--key-type",
        key_type,
    )
    return out


def openssl_verify(server: Server, cert: Path, chain: Path) -> None:
    res = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            str(server.data_dir / "ca" / "root.crt"),
            "-untrusted",
            str(chain),
            str(cert),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and f"{cert}: OK" in res.stdout, res.stdout + res.stderr


def test_walkthrough(server: Server, tmp_path: Path) -> None:
    """apply → ra list → approve → enroll (--p12) → operator add → enroll → renew → list."""
    uscc = fresh_uscc()  # an enterprise holds one legal-person credential
    app = jrun(server, "apply", "--uscc", uscc, "--name", NAME)
    assert app["state"] == "pending" and app["id"].startswith("app_")

    pending = jrun(server, "ra", "list", *server.officer("tax"))
    assert app["id"] in [a["id"] for a in pending["applications"]]
    human = server.eport("ra", "list", *server.officer("tax")).stdout
    assert app["id"] in human and NAME in human

    grant = jrun(server, "ra", "approve", app["id"], *server.officer("customs"))
    code = grant["enrollment_code"]
    assert len(code.replace("-", "")) == 32 and grant["profiles"] == ["enterprise"]
    decided = grant["application"]
    assert decided["state"] == "approved" and decided["decided_at"]
    assert decided["decided_by"].startswith("agency:")

    out = tmp_path / "xiamen"
    issued = jrun(
        server, "enroll", "--code", code, "--profile", "enterprise", "--out", str(out), "--p12"
    )
    for name in ("key.pem", "cert.pem", "chain.pem", "bundle.p12"):
        assert (out / name).exists()
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (out / "key.pem").read_bytes()
    openssl_verify(server, out / "cert.pem", out / "chain.pem")
    p12 = subprocess.run(
        [
            "openssl",
            "pkcs12",
            "-in",
            str(out / "bundle.p12"),
            "-nokeys",
            "-passin",
            "pass:test-passphrase-123",
        ],
        capture_output=True,
        text=True,
    )
    assert p12.returncode == 0 and "Enterprise Issuing CA" in p12.stdout, p12.stderr

    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert format(cert.serial_number, "x") == issued["serial"]
    org_id = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)[0].value
    assert org_id == f"NTRCN-{uscc}"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == NAME

    # The enterprise authorizes an operator; the operator enrolls with an Ed25519 key.
    ent = ["--cert", str(out / "cert.pem"), "--key", str(out / "key.pem")]
    op_grant = jrun(server, "operator", "add", "--name", "Li Wei", "--id", "E1024", *ent)
    assert op_grant["profiles"] == ["operator"]
    # Officers see it, named as its certificate will be (the operator, not the enterprise).
    listed = server.eport("ra", "list", "--state", "approved", *server.officer()).stdout
    row = next(line for line in listed.splitlines() if op_grant["application"]["id"] in line)
    assert row.split()[2:4] == ["live", "operator"] and row.endswith(f"{uscc}  Li Wei"), row
    op_out = tmp_path / "li-wei"
    jrun(
        server,
        "enroll",
        "--code",
        op_grant["enrollment_code"],
        "--profile",
        "operator",
        "--out",
        str(op_out),
        "--key-type",
        "ed25519",
    )
    subj = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(op_out / "cert.pem"),
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
        capture_output=True,
        text=True,
    ).stdout
    assert "CN=Li Wei" in subj and "serialNumber=E1024" in subj and f"NTRCN-{uscc}" in subj
    openssl_verify(server, op_out / "cert.pem", op_out / "chain.pem")

    # Renewal: a new key, the same vetted subject.
    renewed = jrun(server, "renew", *ent, "--out", str(tmp_path / "renewed"))
    new = x509.load_pem_x509_certificate((tmp_path / "renewed" / "cert.pem").read_bytes())
    assert new.subject == cert.subject and new.public_key() != cert.public_key()
    assert renewed["previous_serial"] == issued["serial"]
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            event = conn.execute(
                select(EventRow.type, EventRow.actor, EventRow.details).where(
                    EventRow.serial == renewed["serial"]
                )
            ).one()
    finally:
        engine.dispose()
    assert event.type == "certificate.renewed"
    assert event.actor == f"enterprise:{issued['serial']}"  # the holder who asked
    assert json.loads(event.details) == {"previous_serial": issued["serial"]}

    listing = jrun(server, "cert", "list", "--uscc", uscc, *ent)
    serials = {c["serial"] for c in listing["certificates"]}
    assert {issued["serial"], renewed["serial"]} <= serials and len(serials) >= 3
    assert {c["status"] for c in listing["certificates"]} == {"good"}
    # an auditor is told where its listing is, not that it is "an enterprise"
    res = server.eport("cert", "list", "--uscc", uscc, *server.auditor(), check=False)
    assert res.returncode == 1 and "an auditor certificate lists no certificates" in res.stderr
    # The listing says which are in force: a held operator certificate reads on-hold.
    op_serial = format(
        x509.load_pem_x509_certificate((op_out / "cert.pem").read_bytes()).serial_number, "x"
    )
    jrun(server, "suspend", "--serial", op_serial, *server.officer())
    table = server.eport("cert", "list", "--uscc", uscc, *ent).stdout
    (line,) = [row for row in table.splitlines() if row.startswith(op_serial)]
    assert line.split()[1:3] == ["operator", "on-hold"], table
    held = jrun(server, "cert", "list", "--uscc", uscc, *ent)["certificates"]
    (op_doc,) = [c for c in held if c["serial"] == op_serial]
    assert op_doc["status"] == "on-hold" and op_doc["since"].endswith("Z")
    jrun(server, "resume", "--serial", op_serial, *server.officer())

    shown = jrun(server, "cert", "show", str(out / "cert.pem"))
    assert shown["certificates"][0]["serial"] == issued["serial"]
    # The files beside it are not certificates: said in the user's terms, one line.
    damaged = tmp_path / "damaged.pem"
    damaged.write_bytes((out / "cert.pem").read_bytes().replace(b"M", b"!", 3))
    for path, expect in (
        (out / "key.pem", "holds a PEM encrypted private key, not a certificate"),
        (out / "bundle.p12", "is not a certificate in PEM or DER (for a PKCS#12 bundle"),
        (damaged, ": its PEM certificate is damaged and cannot be read"),
    ):
        res = server.eport("cert", "show", str(path), check=False)
        assert res.returncode == 1 and res.stderr.startswith(f"eport: error: {path}")
        assert expect in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("key_type", ["p384", "rsa3072"])
def test_key_types(server: Server, tmp_path: Path, key_type: str) -> None:
    uscc = {"p384": "91110000600037341L", "rsa3072": "91310000MA1FL4CT3U"}[key_type]
    from ca.uscc import USCC as Code

    Code.parse(uscc)
    out = enterprise(server, tmp_path, uscc, f"Key type {key_type} Co.", key_type)
    openssl_verify(server, out / "cert.pem", out / "chain.pem")


def test_bad_input_changes_nothing(server: Server, tmp_path: Path) -> None:
    """Every refusal is one clear line, a non-zero exit, and no new row anywhere."""
    app = jrun(server, "apply", "--uscc", "91440300MA5DC1XJ1G", "--name", "Shenzhen Bad Input Co.")
    grant = jrun(server, "ra", "approve", app["id"], *server.officer())
    code = grant["enrollment_code"]
    pending = jrun(server, "apply", "--uscc", fresh_uscc(), "--name", "Pending Bad Input Co.")
    before = counts(server)

    def refused(*args: str, expect: str) -> None:
        res = server.eport(*args, check=False)
        assert res.returncode != 0
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("eport: error:"), res.stderr
        assert expect in lines[0], lines[0]

    refused("apply", "--uscc", "91350100M000100Y44", "--name", "X", expect="check character")
    # An officer's unknown profile is answered with the profiles this application takes,
    # not every profile of the CA (issuing-ca, ocsp-responder: never an officer's to give)
    refused(
        "ra",
        "approve",
        pending["id"],
        "--profile",
        "enterprize",
        *server.officer(),
        expect="unknown profile 'enterprize' (for this enterprise application: enterprise)",
    )
    refused("apply", "--uscc", "91350100M000100I43", "--name", "X", expect="alphabet")
    # Command-line mistakes are said in the options' names, exit 2, nothing sent.
    for args, expect in (
        (("--uscc", USCC), "Missing option '--name'"),
        (("--uscc", USCC, "--name", " "), "Invalid value for '--name': must not be blank"),
        (("--name", "X"), "Missing option '--uscc'"),
        (("--class", "agency", "--name", "X"), "Missing option '--agency'"),
        (
            ("--class", "agency", "--agency", "customs", "--uscc", USCC, "--name", "X"),
            "--uscc goes with --class enterprise (the default) only",
        ),
        (("--uscc", USCC, "--agency", "customs", "--name", "X"), "--agency goes with --class"),
    ):
        res = server.eport("apply", *args, check=False)
        assert res.returncode == 2 and expect in res.stderr, res.stderr
    refused(
        "enroll",
        "--code",
        code,
        "--profile",
        "nosuch",
        "--out",
        str(tmp_path / "a"),
        expect="unknown profile 'nosuch'; this code allows enterprise",
    )
    refused(
        "enroll",
        "--code",
        code,
        "--profile",
        "operator",
        "--out",
        str(tmp_path / "b"),
        expect="not 'operator'",
    )
    refused(
        "enroll",
        "--code",
        "0000-0000-0000-0000-0000-0000-0000-0000",
        "--profile",
        "enterprise",
        "--out",
        str(tmp_path / "c"),
        expect="unknown enrollment code",
    )
    # A second approval (the first's answer lost with its code) says the way back.
    again = "already approved; if its enrollment code was lost, an RA officer gives a new one "
    again += f"(eport ra new-code {app['id']})"
    refused("ra", "approve", app["id"], *server.officer(), expect=again)
    refused("ra", "approve", "app_nosuchnosuchnosu", *server.officer(), expect="no application")
    refused(
        "ra", "reject", app["id"], "--reason", "late", *server.officer(), expect="already approved"
    )
    # An enterprise certificate is not an officer's.
    ent = enterprise(server, tmp_path, "91350200MA2Y0XQK4D", "Role Check Co.")
    before = counts(server)
    refused(
        "ra",
        "list",
        "--cert",
        str(ent / "cert.pem"),
        "--key",
        str(ent / "key.pem"),
        expect="needs an agency certificate",
    )
    # An enterprise may not list another enterprise's certificates.
    refused(
        "cert",
        "list",
        "--uscc",
        USCC,
        "--cert",
        str(ent / "cert.pem"),
        "--key",
        str(ent / "key.pem"),
        expect="only its own",
    )
    # A key that does not match the certificate is caught before anything is sent.
    refused(
        "ra",
        "list",
        "--cert",
        str(ent / "cert.pem"),
        *server.officer()[2:],
        expect="does not belong",
    )
    assert counts(server) == before
    # Garbage over HTTP: problem+json, no new row.
    import requests

    for body in (b"not json", b"[]", b'{"code": 1, "profile": "enterprise", "csr": "x"}'):
        r = requests.post(
            server.url + "/ca/v1/enroll",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 400 and r.headers["Content-Type"] == "application/problem+json"
    for csr in (
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "garbage",
        "MIIB",
    ):
        r = requests.post(
            server.url + "/ca/v1/enroll",
            json={"code": code, "profile": "enterprise", "csr": csr},
            timeout=10,
        )
        assert r.status_code == 400 and r.json()["type"] == "urn:eport:problem:bad-csr", r.text
    r = requests.post(server.url + "/ca/v1/applications", data=b"x" * 70000, timeout=10)
    assert r.status_code == 413 and r.json()["status"] == 413
    assert counts(server) == before
    # The code is still good after all those refusals.
    jrun(server, "enroll", "--code", code, "--profile", "enterprise", "--out", str(tmp_path / "ok"))


def test_reject(server: Server) -> None:
    app = jrun(server, "apply", "--uscc", "91350100MA31WDXY2A", "--name", "Rejected Co.")
    out = jrun(
        server,
        "ra",
        "reject",
        app["id"],
        "--reason",
        "documents incomplete",
        *server.officer("forex"),
    )
    assert out["state"] == "rejected" and out["reason"] == "documents incomplete"
    listed = jrun(server, "ra", "list", "--state", "rejected", *server.officer())
    assert app["id"] in {a["id"] for a in listed["applications"]}


def test_the_applicant_sees_where_its_application_stands(server: Server) -> None:
    """With nothing but the id: pending, approved (never the code), rejected with the
    reason; none of the vetted data; an unknown id is one line of error."""
    import requests

    app = jrun(server, "apply", "--uscc", "91350100MA31WDXY2A", "--name", "Waiting Co.")
    shown = server.eport("application", "show", app["id"]).stdout
    assert shown.startswith(f"Application {app['id']} (enterprise): pending since "), shown
    grant = jrun(server, "ra", "approve", app["id"], *server.officer())
    doc = jrun(server, "application", "show", app["id"])
    assert doc["state"] == "approved" and doc["decided_at"] and doc["reason"] is None
    assert grant["enrollment_code"] not in json.dumps(doc)
    other = jrun(server, "apply", "--uscc", "91350100MA31WDXY2A", "--name", "Refused Co.")
    server.eport("ra", "reject", other["id"], "--reason", "seal missing", *server.officer())
    shown = server.eport("application", "show", other["id"]).stdout
    assert "rejected since" in shown and "  reason: seal missing" in shown, shown
    r = requests.get(f"{server.url}/ca/v1/applications/{other['id']}", timeout=10)
    assert r.headers["Cache-Control"] == "no-store"
    assert set(r.json()) == {
        "id",
        "subject_class",
        "state",
        "created_at",
        "decided_at",
        "reason",
        "pending_until",
    }
    assert "Refused Co." not in r.text and "91350100MA31WDXY2A" not in r.text
    # An approval found wrong before enrollment is withdrawn: its code stops working.
    wrong = jrun(server, "apply", "--uscc", fresh_uscc(), "--name", "Wrong Co.")
    code = jrun(server, "ra", "approve", wrong["id"], *server.officer())["enrollment_code"]
    said = server.eport(
        "ra", "withdraw", wrong["id"], "--reason", "licence revoked", *server.officer()
    ).stdout
    assert said == f"Withdrew the approval of {wrong['id']}: licence revoked\n", said
    shown = server.eport("application", "show", wrong["id"]).stdout
    assert "rejected since" in shown and "  reason: licence revoked" in shown, shown
    late = server.eport(
        "enroll", "--code", code, "--profile", "enterprise", "--out", "/nonexistent/x", check=False
    )
    assert late.returncode == 1 and "its approval was withdrawn" in late.stderr, late.stderr
    missing = server.eport("application", "show", "app_nosuchnosuchnosu", check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
    assert (
        "no application 'app_nosuchnosuchnosu'" in missing.stderr and "HTTP 404" in missing.stderr
    )
    too_long = requests.get(f"{server.url}/ca/v1/applications/{'a' * 500}", timeout=10)
    assert too_long.status_code == 404
    # An operator's authorization: its code comes from the enterprise, and an RA officer
    # is refused a new one (the show said to ask an officer: roles probe, session 27)
    from tests.helpers import enroll_enterprise

    ent = enroll_enterprise(server, Path(server.data_dir).parent / "show-ent", "Show Co.")
    op = jrun(server, "operator", "add", "--name", "Show Op", "--id", "SH1", *creds(ent))
    shown = server.eport("application", "show", op["application"]["id"]).stdout
    assert "the code your enterprise gave you" in shown and "eport operator add" in shown
    assert "RA officer" not in shown and "ra new-code" not in shown, shown


def test_a_lost_code_is_replaced(server: Server, tmp_path: Path) -> None:
    """An officer gives an approved application a new code: the lost one stops working,
    the new one enrolls; none while the certificate is in force; after a revocation,
    one again; every new code is in the audit log."""
    uscc = fresh_uscc()  # an enterprise holds one legal-person credential
    app = jrun(server, "apply", "--uscc", uscc, "--name", "Lost Code Trading Co.")
    lost = jrun(server, "ra", "approve", app["id"], *server.officer())
    fresh = jrun(server, "ra", "new-code", app["id"], *server.officer("tax"))
    assert fresh["withdrawn_codes"] == 1 and fresh["profiles"] == ["enterprise"]
    assert fresh["enrollment_code"] != lost["enrollment_code"]
    enroll = ("enroll", "--profile", "enterprise", "--out")
    old = server.eport(
        *enroll, str(tmp_path / "old"), "--code", lost["enrollment_code"], check=False
    )
    assert old.returncode == 1 and old.stderr.count("\n") == 1, old.stderr
    assert "a newer code replaced it" in old.stderr, old.stderr

    def code_state() -> object:
        listed = jrun(server, "ra", "list", "--state", "approved", *server.officer())
        return next(a["code"]["state"] for a in listed["applications"] if a["id"] == app["id"])

    assert code_state() == "live"  # the new one
    issued = jrun(server, *enroll, str(tmp_path / "new"), "--code", fresh["enrollment_code"])
    assert code_state() == "used"
    table = server.eport("ra", "list", "--state", "approved", *server.officer()).stdout
    assert f"{app['id']}     approved  used       enterprise" in table, table
    openssl_verify(server, tmp_path / "new" / "cert.pem", tmp_path / "new" / "chain.pem")
    # The enterprise authorizes an operator again for a lost code: the same, one level down.
    ent = ["--cert", str(tmp_path / "new" / "cert.pem"), "--key", str(tmp_path / "new" / "key.pem")]
    add = ("operator", "add", "--name", "Lu Lan", "--id", "LC1", *ent)
    first = jrun(server, *add)
    second = server.eport(*add).stdout
    assert second.startswith("Operator Lu Lan (LC1) authorized (withdrew 1 unused code).\n"), second
    code = second.split("Enrollment code: ")[1].split()[0]
    old_op = server.eport(
        "enroll",
        "--profile",
        "operator",
        "--out",
        str(tmp_path / "o1"),
        "--code",
        first["enrollment_code"],
        check=False,
    )
    assert old_op.returncode == 1 and "a newer code replaced it" in old_op.stderr
    jrun(server, "enroll", "--profile", "operator", "--out", str(tmp_path / "o2"), "--code", code)
    third = server.eport(*add, check=False)
    assert third.returncode == 1 and third.stderr.count("\n") == 1, third.stderr
    assert "operator LC1 has certificate" in third.stderr and "in force" in third.stderr
    before = counts(server)
    refused = server.eport("ra", "new-code", app["id"], *server.officer(), check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"{issued['serial']} in force" in refused.stderr and "HTTP 409" in refused.stderr
    assert counts(server) == before
    server.eport(
        "revoke", "--serial", issued["serial"], "--reason", "keyCompromise", *server.officer()
    )
    text = server.eport("ra", "new-code", app["id"], *server.officer()).stdout
    assert text.startswith(f"New code for {app['id']}.\nEnrollment code: "), text
    logged = json.loads(
        server.eport(
            "audit",
            "log",
            *server.auditor(),
            "--type",
            "application.code_reissued",
            "--format",
            "json",
        ).stdout
    )
    mine = [e for e in logged if e["application_id"] == app["id"]]
    assert len(mine) == 2, logged


def test_an_officer_gives_no_code_for_an_operator(sqlite_server: Server, tmp_path: Path) -> None:
    """The enterprise alone authorizes its operators: an RA officer's new code for an
    operator's application brought back an operator the enterprise had withdrawn (its
    certificate revoked), with a fresh certificate. Refused (403), nothing written; the
    enterprise's own re-authorization still works."""
    server = sqlite_server
    ent = enterprise(server, tmp_path, name="Withdrawn Operator Co.")
    creds = ["--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    grant = jrun(server, "operator", "add", "--name", "Gone Staff", "--id", "GONE1", *creds)
    op = jrun(
        server,
        "enroll",
        "--code",
        grant["enrollment_code"],
        "--profile",
        "operator",
        "--out",
        str(tmp_path / "op"),
    )
    server.eport(
        "revoke", "--serial", op["serial"], "--reason", "affiliationChanged", *creds
    )  # the enterprise withdraws its operator
    app_id = grant["application"]["id"]
    before = counts(server)
    for officer in (server.officer(), server.officer("tax")):
        refused = server.eport("ra", "new-code", app_id, *officer, check=False)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "comes from its enterprise" in refused.stderr and "HTTP 403" in refused.stderr
    assert counts(server) == before
    again = jrun(server, "operator", "add", "--name", "Gone Staff", "--id", "GONE1", *creds)
    assert again["enrollment_code"]


def test_a_code_that_will_not_do_is_said_before_the_passphrase(
    server: Server, tmp_path: Path
) -> None:
    """eport enroll asks the CA whether the code would enroll that profile before it makes
    a key and asks for its passphrase: a used code, a profile typo, or a code that never
    was are refused first, with no prompt and nothing written. The check itself
    (POST /ca/v1/enroll/check) redeems nothing and logs nothing."""
    import requests

    app = jrun(server, "apply", "--uscc", fresh_uscc(), "--name", "Check First Co.")
    code = jrun(server, "ra", "approve", app["id"], *server.officer())["enrollment_code"]
    before = counts(server)
    r = requests.post(
        server.url + "/ca/v1/enroll/check", json={"code": code, "profile": "enterprise"}, timeout=10
    )
    assert r.status_code == 200 and r.json()["profiles"] == ["enterprise"], r.text
    assert r.json()["expires_at"] and r.headers["Cache-Control"] == "no-store"
    assert counts(server) == before
    jrun(server, "enroll", "--code", code, "--profile", "enterprise", "--out", str(tmp_path / "e"))
    env = server.env()
    del env["EPORT_PASSPHRASE"]  # a prompt would be needed: none must come
    before = counts(server)
    for args, expect in (
        ((code, "enterprise"), "or apply again (HTTP 403)"),
        ((code, "enterprize"), "or apply again (HTTP 403)"),
        ((code.replace(code[0], "Z" if code[0] != "Z" else "Y"), "enterprise"), "(HTTP 403)"),
    ):
        res = subprocess.run(
            [
                EPORT,
                "enroll",
                "--code",
                args[0],
                "--profile",
                args[1],
                "--out",
                str(tmp_path / "x"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
        )
        assert res.returncode == 1 and res.stderr.startswith("eport: error: "), res
        assert expect in res.stderr and "passphrase" not in res.stderr, res.stderr
        assert not (tmp_path / "x").exists()
    assert counts(server) == before
    other = jrun(server, "apply", "--uscc", fresh_uscc(), "--name", "Typo Co.")
    live = jrun(server, "ra", "approve", other["id"], *server.officer())["enrollment_code"]
    res = subprocess.run(
        [EPORT, "enroll", "--code", live, "--profile", "enterprize", "--out", str(tmp_path / "y")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 1, res
    assert "unknown profile 'enterprize'; this code allows enterprise (HTTP 400)" in res.stderr
    r = requests.post(server.url + "/ca/v1/enroll/check", json={"code": live}, timeout=10)
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/problem+json"


def test_passphrase_from_a_pipe(sqlite_server: Server, tmp_path: Path) -> None:
    """Without a terminal the key's passphrase is the first line of stdin, read with no
    prompt or warning; with nothing there, one line of error and nothing is issued."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    server = sqlite_server
    uscc = fresh_uscc()  # an enterprise holds one legal-person credential
    app = jrun(server, "apply", "--uscc", uscc, "--name", "Pipe Co.")
    code = jrun(server, "ra", "approve", app["id"], *server.officer())["enrollment_code"]
    env = server.env()
    del env["EPORT_PASSPHRASE"]
    args = [EPORT, "enroll", "--code", code, "--profile", "enterprise", "--out"]
    before = counts(server)
    empty = subprocess.run(
        [*args, str(tmp_path / "none")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
    )
    assert empty.returncode == 1 and empty.stdout == "", empty
    assert empty.stderr == (
        "eport: error: a passphrase is needed: use --passphrase-file, EPORT_PASSPHRASE, "
        "a terminal or a pipe\n"
    )
    assert counts(server) == before
    piped = subprocess.run(
        [*args, str(tmp_path / "ok")],
        input="piped passphrase\n",
        capture_output=True,
        text=True,
        env=env,
    )
    assert piped.returncode == 0 and piped.stderr == "", piped
    key = load_pem_private_key((tmp_path / "ok" / "key.pem").read_bytes(), b"piped passphrase")
    cert = x509.load_pem_x509_certificate((tmp_path / "ok" / "cert.pem").read_bytes())
    assert cert.public_key() == key.public_key()


def test_renewal_encrypts_the_new_key_with_the_passphrase_typed_once(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """Without EPORT_PASSPHRASE the passphrase is asked once, for the current key, and
    the new key is written under it (as ``eport renew --help`` says): one line piped."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    server = sqlite_server
    ent = enterprise(server, tmp_path, name="Renew Pipe Co.")
    env = server.env()
    del env["EPORT_PASSPHRASE"]
    renewed = subprocess.run(
        [EPORT, "renew", *creds(ent), "--out", str(tmp_path / "renewed"), "--json"],
        input="test-passphrase-123\n",
        capture_output=True,
        text=True,
        env=env,
    )
    assert renewed.returncode == 0 and renewed.stderr == "", renewed
    key = load_pem_private_key(
        (tmp_path / "renewed" / "key.pem").read_bytes(), b"test-passphrase-123"
    )
    cert = x509.load_pem_x509_certificate((tmp_path / "renewed" / "cert.pem").read_bytes())
    assert cert.public_key() == key.public_key()
    assert json.loads(renewed.stdout)["serial"] == format(cert.serial_number, "x")


def test_openapi_and_problem(server: Server) -> None:
    import requests

    doc = requests.get(server.url + "/ca/v1/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1") and "/ca/v1/enroll" in doc["paths"]
    r = requests.get(server.url + "/ca/v1/nosuch", timeout=10)
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/problem+json"
    r = requests.delete(server.url + "/ca/v1/enroll", timeout=10)
    assert r.status_code == 405 and r.headers["Content-Type"] == "application/problem+json"
    assert [m.strip() for m in r.headers["Allow"].split(",")].count("POST") == 1
    # Every 401 says how to authenticate (RFC 9110 §15.5.2): a signed request, and for the
    # audit API an access token too; the token service's introspection likewise.
    for path, challenge in (
        ("/ca/v1/ra/applications", 'EPort-Signed realm="eport"'),
        ("/ca/v1/audit/events", 'EPort-Signed realm="eport", Bearer realm="eport"'),
    ):
        r = requests.get(server.url + path, timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith(challenge)
    # and the audit API's detail names its second way in too, as its challenge does
    assert "or an access token for the audit service (Authorization: Bearer" in r.json()["detail"]
    r = requests.get(
        server.url + "/ca/v1/audit/events", headers={"Authorization": "Bearer x.y.z"}, timeout=10
    )
    assert r.status_code == 401 and "Bearer" in r.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]  # RFC 6750 §3.1
    # A development CA has no custodians: its custody routes say so, not only 'not found'.
    r = requests.get(server.url + "/ca/v1/custody/ceremonies/cer-x", timeout=10)
    assert r.status_code == 404 and "not under joint custody" in r.json()["detail"]
    res = server.eport("ca", "ceremony", "status", "cer-x", check=False)
    assert res.returncode == 1 and "this CA is not under joint custody" in res.stderr
    r = requests.post(server.url + "/auth/introspect", data={"token": "x"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert r.headers["WWW-Authenticate"] == 'EPort-Signed realm="eport"'


def test_openapi_lists_every_route(sqlite_server: Server) -> None:
    """Every /ca/v1 route the app serves is described in its OpenAPI document."""
    import re

    import requests

    from ca.app import create_app

    doc = requests.get(sqlite_server.url + "/ca/v1/openapi.json", timeout=10).json()
    app = create_app({"data_dir": sqlite_server.data_dir, "dev": True, "crl_refresh_seconds": 0})
    routes = {
        re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", r.rule)
        for r in app.url_map.iter_rules()
        # (not the development CA's refusal of the custody routes: a 404 saying why)
        if r.rule.startswith("/ca/v1/") and not r.endpoint.startswith("custody_absent.")
    }
    assert routes <= set(doc["paths"]), sorted(routes - set(doc["paths"]))


def test_openapi_says_the_media_types_served(sqlite_server: Server) -> None:
    """The audit log's checkpoint, leaf hashes and certificate listing are text or
    octets, not the JSON the document said (a generated client decoded them as JSON)."""
    import requests

    url = sqlite_server.url
    doc = requests.get(url + "/ca/v1/openapi.json", timeout=10).json()
    officer = sqlite_server.officer()
    for path, query, signed in (
        ("/ca/v1/audit/checkpoint", "", False),
        ("/ca/v1/audit/leaf-hashes", "?start=0&count=1", False),
        ("/ca/v1/audit/log-key", "", False),
        ("/ca/v1/health", "?ready", False),
        ("/ca/v1/audit/certificates", "", True),
        ("/ca/v1/audit/certificates", "?detail=1", True),
        ("/ca/v1/audit/event-digests", "?start=0&count=1", True),
    ):
        op = doc["paths"][path]["get"]
        documented = set(op["responses"]["200"]["content"])
        names = {p["name"] for p in op.get("parameters", [])}
        assert {q.split("=")[0] for q in query.lstrip("?").split("&") if q} <= names, path
        headers = {}
        if signed:
            import datetime

            from ca.signedreq import SCHEME, sign_request
            from cli.keyfiles import load_identity

            who = load_identity(Path(officer[1]), Path(officer[3]), Path(officer[5]))
            now = datetime.datetime.now(datetime.UTC)
            jws = sign_request(who.key, who.chain, "GET", path + query, b"", now)  # type: ignore[arg-type]
            headers["Authorization"] = f"{SCHEME} {jws}"
        answer = requests.get(url + path + query, headers=headers, timeout=10)
        assert answer.status_code == 200, (path, answer.text[:200])
        served = answer.headers["Content-Type"].split(";")[0]
        assert served in documented, (path, query, served, documented)


def test_openapi_lists_415_where_a_json_body_is_read(sqlite_server: Server) -> None:
    """Every operation that takes a JSON body lists the 415 a body of another type gets,
    and the public ones answer it (signed ones check the signature first: a 401)."""
    import requests

    url = sqlite_server.url
    doc = requests.get(url + "/ca/v1/openapi.json", timeout=10).json()
    posts = {path: ops["post"] for path, ops in doc["paths"].items() if "post" in ops}
    bodies = {path for path, op in posts.items() if "requestBody" in op}
    # every one: the status changes (suspend, resume) read none, or {}
    assert set(posts) == bodies
    for path in bodies:
        assert list(posts[path]["requestBody"]["content"]) == ["application/json"], path
        ref = posts[path]["responses"]["415"]["$ref"]
        assert doc["components"]["responses"][ref.rsplit("/", 1)[1]]["content"], path
    for path in ("/ca/v1/applications", "/ca/v1/enroll", "/ca/v1/enroll/check"):
        assert "security" not in posts[path]
        r = requests.post(
            url + path, data=b"{}", headers={"Content-Type": "text/plain"}, timeout=10
        )
        assert r.status_code == 415 and r.headers["Content-Type"] == "application/problem+json"


def test_enrollment_checks_before_signing(server: Server) -> None:
    """The checks read before anything is signed (code with its application, a certificate
    already holding the key), on both databases: a used code and a certified key are
    refused over HTTP with problem+json, and nothing is stored."""
    import requests
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def code_for(name: str) -> str:
        app = jrun(server, "apply", "--uscc", fresh_uscc(), "--name", name)
        return str(jrun(server, "ra", "approve", app["id"], *server.officer())["enrollment_code"])

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )

    def enroll(code: str) -> requests.Response:
        body = {"code": code, "profile": "enterprise", "csr": csr}
        return requests.post(server.url + "/ca/v1/enroll", json=body, timeout=30)

    first = code_for("Checks First Co.")
    assert enroll(first).status_code == 201
    other = code_for("Checks Other Co.")
    before = counts(server)
    again = enroll(first)  # the same key: its certificate sent again (a lost answer)
    assert again.status_code == 200 and again.json()["application_id"], again.text
    fresh = ec.generate_private_key(ec.SECP256R1())
    other_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(fresh, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    body = {"code": first, "profile": "enterprise", "csr": other_csr}
    used = requests.post(server.url + "/ca/v1/enroll", json=body, timeout=30)
    assert used.status_code == 403 and "already used" in used.json()["detail"], used.text
    held = enroll(other)
    assert held.status_code == 409 and "another subject" in held.json()["detail"], held.text
    assert held.headers["Content-Type"] == "application/problem+json"
    assert counts(server) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["apply", "--uscc", "91350100M000100Y43", "--name", "Two", "Words"], "extra argument"),
        (["enroll"], "Missing option '--code'"),
        (["no-such-command"], "No such command"),
        (["enroll", "--code", "X", "--key-type", "p192"], "--key-type"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    """A mistyped command line: one line on stderr naming the problem and where --help
    is, exit 2, nothing on stdout (no server is needed to say so)."""
    res = subprocess.run(
        [EPORT, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eport: error: ") and message in lines[0]
    assert "--help" in lines[0]


def test_hostile_json_is_a_clear_400(sqlite_server: Server) -> None:
    """JSON nested past the parser's stack, and a lone surrogate where a code or a name
    goes, are answered 400 problem+json like any bad body (they were unhandled 500s),
    through Flask and through the enrollment's fast path alike; nothing is stored."""
    import requests

    server = sqlite_server
    before = counts(server)
    logged = len(server.log.read_text())
    deep = "[" * 3000 + "]" * 3000
    for path in ("/ca/v1/applications", "/ca/v1/enroll", "/ca/v1/enroll/check"):
        r = requests.post(
            server.url + path, data=deep, headers={"Content-Type": "application/json"}, timeout=10
        )
        assert r.status_code == 400, (path, r.text)
        assert r.headers["Content-Type"] == "application/problem+json"
        assert "nested too deeply" in r.json()["detail"]
    for path, body in (
        ("/ca/v1/enroll/check", '{"code": "ABCD\\udc00", "profile": "enterprise"}'),
        ("/ca/v1/applications", '{"uscc": "91350100M000100Y43", "legal_name": "A\\udc00B"}'),
    ):
        r = requests.post(
            server.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=10
        )
        assert r.status_code == 400 and r.headers["Content-Type"] == "application/problem+json"
    assert counts(server) == before
    assert "Traceback" not in server.log.read_text()[logged:]


def test_private_answers_are_not_cached(sqlite_server: Server) -> None:
    """Answers to state-changing or authenticated requests (they carry enrollment codes,
    vetted data, audit records) say no-store and nosniff; public reads stay cacheable."""
    import requests

    url = sqlite_server.url
    r = requests.post(
        url + "/ca/v1/applications",
        json={"uscc": USCC, "legal_name": "Cache Test Co."},
        timeout=10,
    )
    assert r.status_code == 201 and r.headers["Cache-Control"] == "no-store"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    bogus = {"Authorization": "EPort-Signed not.a.jws"}
    for path in ("/ca/v1/ra/applications", "/ca/v1/audit/events"):
        r = requests.get(url + path, headers=bogus, timeout=10)
        assert r.status_code == 401 and r.headers["Cache-Control"] == "no-store", path
    r = requests.get(url + "/ca/v1/issuers/enterprise.cer", timeout=10)
    assert r.status_code == 200 and r.headers.get("Cache-Control") != "no-store"


def test_approving_an_enrolled_application_names_its_certificate(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """Approved again once it enrolled, an application was told to get a new code (eport
    ra new-code), which is then refused as its certificate is in force (new user
    walk-through, session 26): the refusal names the certificate instead."""
    server = sqlite_server
    app = json.loads(
        server.eport(
            "apply", "--uscc", fresh_uscc(), "--name", "Enrolled Twice Co.", "--json"
        ).stdout
    )
    grant = json.loads(server.eport("ra", "approve", app["id"], *server.officer(), "--json").stdout)
    out = tmp_path / "ent"
    issued = json.loads(
        server.eport(
            "enroll", "--code", grant["enrollment_code"], "--profile", "enterprise",
            "--out", str(out), "--json",
        ).stdout
    )  # fmt: skip
    res = server.eport("ra", "approve", app["id"], *server.officer(), check=False)
    assert res.returncode == 1, res.stderr
    assert f"certificate {issued['serial']} was issued on it: it needs no new code" in res.stderr
    res = server.eport("ra", "new-code", app["id"], *server.officer(), check=False)
    assert res.returncode == 1 and f"revoke --serial {issued['serial']} --reason" in res.stderr


def test_an_operators_renewal_names_the_enterprise_as_it_is_now(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """An enterprise changes its legal name by applying again (an officer vets the new
    name); its operators' renewals kept the name of their authorization, so their
    certificates named the old one for good (business rules probe, session 26). A
    renewal now names the enterprise as its legal-person certificate in force does,
    and keeps the operator's own authorization (dnQualifier)."""
    from tests.helpers import enroll_enterprise, enroll_operator, serial_of

    srv = sqlite_server
    uscc = fresh_uscc()
    old_ent = enroll_enterprise(srv, tmp_path, "Old Name Trading Co., Ltd.", uscc=uscc)
    op = enroll_operator(srv, old_ent, tmp_path, "NC1")
    srv.eport("revoke", "--serial", serial_of(old_ent), "--reason", "superseded", *srv.officer())
    new_ent = enroll_enterprise(srv, tmp_path, "New Name Trading Co., Ltd.", uscc=uscc)

    def name_of(d: Path, oid: x509.ObjectIdentifier) -> str:
        cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
        return str(cert.subject.get_attributes_for_oid(oid)[0].value)

    assert name_of(new_ent, NameOID.ORGANIZATION_NAME) == "New Name Trading Co., Ltd."
    renewed = tmp_path / "renewed"
    jrun(srv, "renew", *creds(op), "--out", str(renewed))
    assert name_of(renewed, NameOID.ORGANIZATION_NAME) == "New Name Trading Co., Ltd."
    for oid in (NameOID.SERIAL_NUMBER, NameOID.COMMON_NAME, NameOID.DN_QUALIFIER):
        assert name_of(renewed, oid) == name_of(op, oid)
    assert name_of(op, NameOID.ORGANIZATION_NAME) == "Old Name Trading Co., Ltd."
