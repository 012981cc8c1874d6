"""An RA officer changes the status of another member agency's officers, auditors and
services no more than it vets them (authorization probe, F4): a customs officer could
revoke every tax officer, and as only tax officers approve tax staff, tax could never
have an officer again. Enterprises and operators stay every member's to manage."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from tests.conftest import Server
from tests.helpers import enroll_enterprise, enroll_service, jrun, serial_of


def _serial(server: Server, role: str, agency: str) -> str:
    pem = (server.dev / f"{role}s" / agency / f"{role}.pem").read_bytes()
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


def test_an_officer_manages_only_its_own_agencys_staff(server: Server, tmp_path: Path) -> None:
    customs, tax = server.officer("customs"), server.officer("tax")
    for target in (_serial(server, "officer", "tax"), _serial(server, "auditor", "tax")):
        for action in (["revoke", "--reason", "privilegeWithdrawn"], ["suspend"]):
            res = server.eport(*action, "--serial", target, *customs, check=False)
            assert res.returncode == 1, res
            assert "only an officer of agency 'tax' may change the status" in res.stderr
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    # the tax officer still signs: nothing was changed
    assert jrun(server, "ra", "list", *tax)["applications"] is not None
    # a customs-vetted service: tax may not touch it, customs may
    svc = serial_of(enroll_service(server, tmp_path, "scope.eport.example"))
    res = server.eport("suspend", "--serial", svc, *tax, check=False)
    assert res.returncode == 1 and "agency 'customs'" in res.stderr, res
    assert jrun(server, "suspend", "--serial", svc, *customs)["status"] == "on-hold"
    # an enterprise is the whole joint CA's: any member's officer may act on it
    ent = serial_of(enroll_enterprise(server, tmp_path, "Scope Trading Co."))
    assert jrun(server, "suspend", "--serial", ent, *tax)["status"] == "on-hold"
    assert jrun(server, "resume", "--serial", ent, *customs)["status"] == "good"
    # its own agency's auditor: the tax officer may
    auditor = _serial(server, "auditor", "tax")
    assert jrun(server, "suspend", "--serial", auditor, *tax)["status"] == "on-hold"
    assert jrun(server, "resume", "--serial", auditor, *tax)["status"] == "good"


def _cn(server: Server, role: str, agency: str) -> str:
    pem = (server.dev / f"{role}s" / agency / f"{role}.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def test_a_second_person_of_one_name_in_an_agency_is_refused(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """Officers and auditors are ``agency:<member>:<name>`` at every service: a second
    certificate of the same agency and name in force would merge two people there
    (authorization probe, F3). The approval is refused, naming the certificate."""
    server = sqlite_server
    customs = server.officer("customs")
    for cls, role in (("agency", "officer"), ("auditor", "auditor")):
        name = _cn(server, role, "customs")
        app = jrun(server, "apply", "--class", cls, "--agency", "customs", "--name", name)["id"]
        res = server.eport("ra", "approve", app, *customs, check=False)
        assert res.returncode == 1, res
        line = res.stderr.strip()
        assert (
            "\n" not in line
            and f"already holds certificate {_serial(server, role, 'customs')}" in line
        )
        assert jrun(server, "application", "show", app)["state"] == "pending"
        # the same name in another agency is another person: approved
        other = jrun(server, "apply", "--class", cls, "--agency", "tax", "--name", name)["id"]
        assert jrun(server, "ra", "approve", other, *server.officer("tax"))["enrollment_code"]
    # a name that tells them apart is approved
    app = jrun(
        server,
        "apply",
        "--class",
        "agency",
        "--agency",
        "customs",
        "--name",
        _cn(server, "officer", "customs") + " (Xiamen)",
    )["id"]
    assert jrun(server, "ra", "approve", app, *customs)["enrollment_code"]


def test_health_names_a_member_left_without_officers(tmp_path: Path) -> None:
    import requests

    from tests.conftest import start_server, stop

    srv, proc = start_server(tmp_path / "d", workers=1)
    try:
        assert "warnings" not in requests.get(srv.url + "/ca/v1/health", timeout=10).json()
        srv.eport("revoke", "--reason", "keyCompromise", *srv.officer("tax"))
        health = requests.get(srv.url + "/ca/v1/health", timeout=10).json()
        assert any("member agency tax has no RA officer" in w for w in health["warnings"])
        assert health["status"] == "ok"
    finally:
        stop(proc)
