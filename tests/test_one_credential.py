"""An enterprise holds one legal-person credential (DESIGN.md, Domain notes).

Through the real server (SQLite and PostgreSQL) and the real ``eport`` command: a second
enterprise application of a USCC gets no code while the enterprise holds a certificate in
force (not expired, not revoked; one on hold counts) or another application holds a live
code; renewal still works; after a revocation or an expiry the enterprise applies again.
Two codes for one USCC (approvals made before the rule) redeemed at once issue one
certificate: the other enrollment is a 409 and stores nothing.
"""

from __future__ import annotations

import datetime
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, func, select

from ca.keys import KeyType
from ca.models import (
    ApplicationRow,
    CertificateRow,
    EnrollmentCodeRow,
    EventRow,
    LogEntryRow,
)
from cli.keyfiles import csr_for
from tests.conftest import Server
from tests.helpers import (
    creds,
    enroll_enterprise,
    enroll_operator,
    fresh_uscc,
    jrun,
    records_unguarded,
    row_counts,
    serial_of,
    server_authority,
)

TABLES = (ApplicationRow, CertificateRow, EnrollmentCodeRow, EventRow, LogEntryRow)


def counts(server: Server) -> dict[str, int]:
    """Rows of the tables an application, approval or issuance writes (the log's too)."""
    return row_counts(server.database_url, TABLES)


def refused(server: Server, *args: str) -> str:
    """Run ``eport args``: it must fail with one line on stderr; that line."""
    res = server.eport(*args, check=False)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stderr.startswith("eport: error: ") and res.stderr.count("\n") == 1, res.stderr
    return res.stderr


def apply(server: Server, uscc: str, name: str) -> str:
    return str(jrun(server, "apply", "--uscc", uscc, "--name", name)["id"])


def enroll(server: Server, code: str, out: Path) -> dict[str, Any]:
    return jrun(server, "enroll", "--code", code, "--profile", "enterprise", "--out", str(out))


@pytest.mark.slow
def test_a_second_credential_waits_for_the_first_to_end(server: Server, tmp_path: Path) -> None:
    """Refused while the certificate is in force, also after a renewal and while on hold;
    the holder renews meanwhile; once revoked, the waiting application is approved and
    enrolls."""
    uscc = fresh_uscc()
    ent = enroll_enterprise(server, tmp_path, "One Credential Co.", uscc=uscc)
    first = serial_of(ent)
    second = apply(server, uscc, "One Credential Co.")  # applying is allowed
    before = counts(server)
    line = refused(server, "ra", "approve", second, *server.officer())
    assert f"enterprise {uscc} already holds legal-person certificate {first}" in line, line
    assert "eport renew" in line and f"eport revoke --serial {first}" in line
    assert "keyCompromise" in line and "(HTTP 409)" in line
    json_mode = server.eport("ra", "approve", second, *server.officer(), "--json", check=False)
    assert json_mode.returncode == 1 and json_mode.stdout == "" and json_mode.stderr == line
    assert counts(server) == before
    assert jrun(server, "application", "show", second)["state"] == "pending"

    # The holder renews: a new key, the same credential (the old one stays valid until
    # it expires or is revoked), and the second application still waits.
    renewed = jrun(server, "renew", *creds(ent), "--out", str(tmp_path / "renewed"))
    new = renewed["serial"]
    line = refused(server, "ra", "approve", second, *server.officer())
    assert f"legal-person certificate {new}," in line, line  # the one that lasts longest
    jrun(server, "revoke", "--serial", first, "--reason", "superseded", *server.officer())

    # Suspended (a lost key, perhaps found again): still the enterprise's credential.
    jrun(server, "suspend", "--serial", new, *server.officer())
    before = counts(server)
    line = refused(server, "ra", "approve", second, *server.officer())
    assert f"legal-person certificate {new} (on hold)" in line, line
    assert counts(server) == before

    # Lost for good: an officer revokes it, and the enterprise enrolls anew.
    jrun(server, "revoke", "--serial", new, "--reason", "keyCompromise", *server.officer())
    grant = jrun(server, "ra", "approve", second, *server.officer())
    issued = enroll(server, grant["enrollment_code"], tmp_path / "again")
    assert issued["serial"] not in (first, new)
    # …which is now the one credential: a third application waits in turn.
    third = apply(server, uscc, "One Credential Co.")
    line = refused(server, "ra", "approve", third, *server.officer())
    assert f"legal-person certificate {issued['serial']}," in line, line


def test_a_credential_on_hold_renews_once_an_officer_lifts_the_hold(
    server: Server, tmp_path: Path
) -> None:
    """An enterprise's certificate on hold blocks a second application, and the refusal
    says how to go on: a held certificate signs nothing, so its holder renews only after
    an RA officer resumes it. Before, the refusal said "its holder renews it for a new
    key (eport renew)" alone, which the holder could not do."""
    uscc = fresh_uscc()
    ent = enroll_enterprise(server, tmp_path, "Held Credential Co.", uscc=uscc)
    serial = serial_of(ent)
    second = apply(server, uscc, "Held Credential Co.")
    jrun(server, "suspend", *creds(ent))  # the holder reports its key lost
    before = counts(server)
    line = refused(server, "ra", "approve", second, *server.officer())
    assert f"legal-person certificate {serial} (on hold)" in line, line
    assert (
        f"an RA officer lifts its hold (eport resume --serial {serial}) and its holder "
        "renews it for a new key (eport renew)"
    ) in line, line
    assert f"eport revoke --serial {serial}" in line and "keyCompromise" in line, line
    # A new code for its own application is refused the same way: before, the refusal
    # said "its holder renews it (eport renew)" alone.
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            first = conn.execute(
                select(CertificateRow.application_id).where(CertificateRow.serial == serial)
            ).scalar_one()
    finally:
        engine.dispose()
    line = refused(server, "ra", "new-code", first, *server.officer())
    assert f"application {first} has certificate {serial} on hold" in line, line
    assert f"an officer lifts its hold first (eport resume --serial {serial})" in line, line
    # Renewing straight away, as the hint said before, is refused: the key is on hold.
    line = refused(server, "renew", *creds(ent), "--out", str(tmp_path / "held"))
    assert "on hold" in line, line
    assert counts(server) == before
    # The key was found again: an officer lifts the hold, and the holder renews.
    jrun(server, "resume", "--serial", serial, *server.officer())
    renewed = jrun(server, "renew", *creds(ent), "--out", str(tmp_path / "renewed"))
    assert renewed["serial"] != serial


@pytest.mark.slow
def test_a_live_code_of_another_application_blocks_approval(server: Server, tmp_path: Path) -> None:
    """Two applications of one USCC: while the first holds a live code the second gets
    none (the answer names the first and how to withdraw it); withdrawn, it does. Other
    enterprises, and operators of this one, are not held back."""
    uscc = fresh_uscc()
    a = apply(server, uscc, "Twice Applied Co.")
    b = apply(server, uscc, "Twice Applied Co.")
    code_a = jrun(server, "ra", "approve", a, *server.officer())["enrollment_code"]
    before = counts(server)
    line = refused(server, "ra", "approve", b, *server.officer())
    assert f"application {a} approved" in line and f"eport ra withdraw {a}" in line, line
    assert counts(server) == before
    # Another enterprise is approved meanwhile.
    enroll_enterprise(server, tmp_path, "Neighbour Co.")
    jrun(server, "ra", "withdraw", a, "--reason", "applied twice", *server.officer())
    code_b = jrun(server, "ra", "approve", b, *server.officer())["enrollment_code"]
    gone = tmp_path / "a"
    refused(server, "enroll", "--code", code_a, "--profile", "enterprise", "--out", str(gone))
    ent = tmp_path / "b"
    enroll(server, code_b, ent)
    # Its operators are not legal persons: two enroll under the one credential.
    for op_id in ("E1", "E2"):
        enroll_operator(server, ent, tmp_path, op_id)


def test_an_expired_credential_does_not_count(server: Server, tmp_path: Path) -> None:
    """A certificate past its notAfter is no credential: the enterprise applies again."""
    uscc = fresh_uscc()
    with server_authority(server) as ca:
        real = ca.clock
        ca.clock = lambda: real() - datetime.timedelta(days=800)  # validity is 730 days
        app = ca.apply("enterprise", {"uscc": uscc, "legal_name": "Long Ago Co."})
        grant = ca.approve_at_ceremony(app.id, "test")
        old = ca.enroll(grant.code, "enterprise", csr_for(KeyType.P256.generate()))
    assert old.record.not_after < datetime.datetime.now(datetime.UTC)
    again = apply(server, uscc, "Long Ago Co.")
    code = jrun(server, "ra", "approve", again, *server.officer())["enrollment_code"]
    issued = enroll(server, code, tmp_path / "again")
    assert issued["serial"] != old.record.serial_hex


def approved_before_the_rule(server: Server, uscc: str, n: int) -> list[tuple[str, str]]:
    """``n`` enterprise applications of ``uscc``, each approved with a live code, as a
    database of a CA that approved them before this rule holds them (the approvals'
    check is left out): their ids and codes."""
    out = []
    with server_authority(server) as ca:
        ca._refuse_second_credential = lambda *_args: None
        for i in range(n):
            app = ca.apply("enterprise", {"uscc": uscc, "legal_name": f"Legacy {i} Co."})
            out.append((app.id, ca.approve_at_ceremony(app.id, "test:before-the-rule").code))
    return out


def enroll_at_once(server: Server, bodies: list[dict[str, str]]) -> list[requests.Response]:
    """POST each of ``bodies`` to /ca/v1/enroll, from threads released together."""
    start = threading.Barrier(len(bodies))
    answers: list[Any] = [None] * len(bodies)

    def post(i: int) -> None:
        start.wait()
        answers[i] = requests.post(server.url + "/ca/v1/enroll", json=bodies[i], timeout=60)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_two_codes_enrolling_at_once_issue_one_credential(server: Server, tmp_path: Path) -> None:
    """Two approved applications of one USCC redeem their codes at the same moment, on
    the server's two workers: one certificate, and the other enrollment a 409
    problem+json naming it, with nothing of it stored (its code stays unused)."""
    for _round in range(4):
        uscc = fresh_uscc()
        (app_a, code_a), (app_b, code_b) = approved_before_the_rule(server, uscc, 2)
        bodies = [
            {"code": c, "profile": "enterprise", "csr": csr_for(KeyType.P256.generate()).decode()}
            for c in (code_a, code_b)
        ]
        before = counts(server)
        answers = enroll_at_once(server, bodies)
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [201, 409], [r.text for r in answers]
        won = next(r for r in answers if r.status_code == 201).json()
        lost = next(r for r in answers if r.status_code == 409)
        assert lost.headers["Content-Type"] == "application/problem+json"
        problem = lost.json()
        assert problem["status"] == 409 and problem["serial"] == won["serial"], problem
        assert f"already holds legal-person certificate {won['serial']}" in problem["detail"]
        after = counts(server)
        one_more = {"certificates", "events", "log_entries"}
        assert after == {t: n + (t in one_more) for t, n in before.items()}, (before, after)
        engine = create_engine(server.database_url)
        try:
            with engine.connect() as conn:
                unused = conn.execute(
                    select(func.count()).where(
                        EnrollmentCodeRow.application_id.in_([app_a, app_b]),
                        EnrollmentCodeRow.used_at.is_(None),
                    )
                ).scalar_one()
                certs = conn.execute(
                    select(func.count()).where(CertificateRow.uscc == uscc)
                ).scalar_one()
        finally:
            engine.dispose()
        assert (unused, certs) == (1, 1)

    # Through the CLI, the loser's code is refused before a key is made, and an officer
    # gives its application no new code while the credential is in force.
    uscc = fresh_uscc()
    (_, code_a), (app_b, code_b) = approved_before_the_rule(server, uscc, 2)
    issued = enroll(server, code_a, tmp_path / "a")
    before = counts(server)
    line = refused(
        server, "enroll", "--code", code_b, "--profile", "enterprise", "--out", str(tmp_path / "b")
    )
    assert f"already holds legal-person certificate {issued['serial']}" in line, line
    assert "(HTTP 409)" in line and not (tmp_path / "b").exists()
    line = refused(server, "ra", "new-code", app_b, *server.officer())
    assert f"already holds legal-person certificate {issued['serial']}" in line, line
    assert counts(server) == before


def test_a_credential_renews_while_it_is_the_only_one_in_force(
    server: Server, tmp_path: Path
) -> None:
    """A renewal replaces the enterprise's one credential: the old and the renewed
    certificate overlap (services move without a gap), but neither renews again while
    the other is in force, so the USCC never holds three. Before, one certificate
    renewed twice left three legal-person certificates in force. Two renewals of one
    certificate sent at once: one is issued, the other a 409 that stores nothing."""
    ent = enroll_enterprise(server, tmp_path, "Renews Once Co.")
    first = serial_of(ent)
    renewed = jrun(server, "renew", *creds(ent), "--out", str(tmp_path / "r1"))
    new = renewed["serial"]
    before = counts(server)
    line = refused(server, "renew", *creds(ent), "--out", str(tmp_path / "r2"))
    # The hint names what lets a renewal through, knowing which renewed which (the log's
    # certificate.renewed events): the renewal ``new`` is the one to use, and it renews
    # once ``first`` is revoked. Before, it said both cases ("if NEW is FIRST's renewal,
    # use it ... else revoke it first"), a riddle (new user walk-through, session 26).
    assert f"certificate {first} was renewed already: enterprise" in line, line
    assert (
        f"holds its renewal {new}, in force until" in line
        and f"Use {new} (eport renew --cert with its cert.pem once {first} is revoked: "
        f"eport revoke --serial {first} --reason superseded)"
        in line
        and "(HTTP 409)" in line
    ), line
    # the renewed one neither, while the old one is in force: revoke it first
    line = refused(server, "renew", *creds(tmp_path / "r1"), "--out", str(tmp_path / "r3"))
    assert f"certificate {new} is the renewal of {first}, still in force until" in line, line
    assert f"revoke {first} first (eport revoke --serial {first} --reason superseded)" in line
    assert counts(server) == before
    jrun(server, "revoke", "--serial", first, "--reason", "superseded", *server.officer())
    third = jrun(server, "renew", *creds(tmp_path / "r1"), "--out", str(tmp_path / "r4"))
    assert third["serial"] not in (first, new)

    # Two renewals of the newest at once (two keys), the one before it revoked: one
    # certificate.
    jrun(server, "revoke", "--serial", new, "--reason", "superseded", *server.officer())
    before = counts(server)
    start = threading.Barrier(2)
    results: list[Any] = [None, None]

    def renew(i: int) -> None:
        start.wait()
        results[i] = server.eport(
            "renew", *creds(tmp_path / "r4"), "--out", str(tmp_path / f"race{i}"), "--json",
            check=False,
        )  # fmt: skip

    threads = [threading.Thread(target=renew, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], [(r.stdout, r.stderr) for r in results]
    lost = next(r for r in results if r.returncode == 1)
    assert f"certificate {third['serial']} was renewed already" in lost.stderr, lost.stderr
    after = counts(server)
    one_more = {"certificates", "events", "log_entries"}
    assert after == {t: n + (t in one_more) for t, n in before.items()}, (before, after)


def test_of_two_ending_in_the_same_second_the_later_issued_is_named(tmp_path: Path) -> None:
    """A renewal within the second of its certificate's issuance ends in the same second
    (notAfter and notBefore have whole seconds): the approval's refusal (the store's
    query) and the issuance's (the group writer's) both name the later issued, by the
    log's order, whatever the order of the serials and of the rows."""
    from sqlalchemy import delete, update
    from sqlalchemy.orm import sessionmaker

    from ca.db import make_engine, upgrade
    from ca.errors import Conflict
    from ca.groupwrite import IssuanceWriter
    from ca.records import CertificateRecord, Event, EventType, IssuanceWrite
    from ca.store import SqlStore

    url = f"sqlite:///{tmp_path / 'ca.db'}"
    upgrade(url)
    engine = make_engine(url)
    store = SqlStore(sessionmaker(engine, expire_on_commit=False))
    writer = IssuanceWriter(engine, fallback=lambda item: 0, log=False)
    uscc = fresh_uscc()
    issued = datetime.datetime(2026, 11, 28, 8, 20, 5, 120000, tzinfo=datetime.UTC)

    def record(serial: int) -> CertificateRecord:  # as an issuance makes it
        return CertificateRecord(
            serial=serial,
            issuer_id="enterprise",
            profile="enterprise",
            application_id=None,
            uscc=uscc,
            subject=f"CN=one credential {serial:x}",
            spki_sha256=f"{serial:064x}",
            cert_sha256=f"{serial + 1:064x}",
            not_before=issued.replace(microsecond=0),
            not_after=issued.replace(year=2028, microsecond=0),
            der=b"\x30\x00",
        )

    try:
        cases = [
            (0x7000, 0x1000, 1),
            (0x1000, 0x7000, 1),
            (0x7000, 0x1000, -1),
            (0x1000, 0x7000, -1),
        ]
        for first, renewal, stored in cases:
            with store.transaction() as tx:  # in either order: PostgreSQL keeps none
                for rec in [record(first), record(renewal)][::stored]:
                    tx.add_certificate(rec)
                for serial, index in ((first, 10), (renewal, 11)):  # the log's order
                    tx.s.execute(
                        update(CertificateRow)
                        .where(CertificateRow.serial == format(serial, "x"))
                        .values(log_index=index)
                    )
            with store.transaction() as tx:
                held = tx.credential_in_force(uscc, ["enterprise"], issued)
            assert held is not None and held[0].serial == renewal
            item = IssuanceWrite(
                record=record(0x9000),
                event=Event(type=EventType.CERTIFICATE_ISSUED, at=issued, actor="test"),
                now=issued,
                sole_credential=("enterprise",),
            )
            raw = engine.raw_connection()
            try:
                with pytest.raises(Conflict, match=f"legal-person certificate {renewal:x},"):
                    writer._refuse_second_credential(raw.cursor(), item, uscc)
            finally:
                raw.close()
            # a scratch database: emptied for the next case (past its guards, 0012)
            with records_unguarded(engine), store.transaction() as tx:
                tx.s.execute(delete(CertificateRow))
    finally:
        engine.dispose()
