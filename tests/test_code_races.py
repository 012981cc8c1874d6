"""A new code (or an operator authorized again) and a redemption of the old code, at once.

The real core on SQLite and on a real PostgreSQL server. Whichever commits first, the
application never ends with a certificate in force *and* a live code, and each side
fails, if at all, with its documented refusal: on PostgreSQL, locks taken in the wrong
order would surface here as the database's deadlock error.
"""

from __future__ import annotations

import datetime
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import func, select

from ca.ceremony import issue_officers
from ca.errors import Conflict, InvalidCode
from ca.keys import KeyType
from ca.models import CertificateRow, EnrollmentCodeRow
from ca.signedreq import SignedRequest
from tests.conftest import Postgres
from tests.helpers import fresh_uscc, in_process_ca

ROUNDS = 10


def csr_pem() -> bytes:
    key = KeyType.P256.generate()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def caller_of(ca: Any, pem: bytes) -> Any:
    cert = x509.load_pem_x509_certificate(pem)
    return ca.caller(SignedRequest(certificate=cert, chain=(cert,), claims={}))


def at_once(*calls: Callable[[], object]) -> list[object]:
    """Run ``calls`` in threads released together; each one's result or exception."""
    start = threading.Barrier(len(calls))
    out: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = calls[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def joint(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any, Any]]:
    url = ""
    if request.param == "postgres":
        pg: Postgres = request.getfixturevalue("postgres")
        # the whole node name, parameters too: one database per parametrized test
        url = pg.createdb("races_" + re.sub(r"\W", "_", request.node.name)[-40:])
    with in_process_ca(tmp_path, database_url=url) as (ca, _store, sessions):
        officers = issue_officers(ca, tmp_path / "officers", lambda _m: b"officer-pass", "t")
        officer = caller_of(ca, (officers["customs"] / "officer.pem").read_bytes())
        yield ca, sessions, officer


def standing(sessions: Any, app_ids: list[str]) -> tuple[int, int]:
    """Certificates issued on the applications, and their live codes (unused, not withdrawn,
    unexpired)."""
    now = datetime.datetime.now(datetime.UTC)
    with sessions() as s:
        certs = s.execute(
            select(func.count()).where(CertificateRow.application_id.in_(app_ids))
        ).scalar_one()
        live = s.execute(
            select(func.count()).where(
                EnrollmentCodeRow.application_id.in_(app_ids),
                EnrollmentCodeRow.used_at.is_(None),
                EnrollmentCodeRow.withdrawn_at.is_(None),
                EnrollmentCodeRow.expires_at > now,
            )
        ).scalar_one()
    return certs, live


def judge(enrolled: object, new_code: object, certs: int, live: int) -> None:
    """Whichever came first, a certificate in force and a live code never stand together."""
    if isinstance(enrolled, InvalidCode):
        # The new code came first: no certificate, and the new code is the only live one.
        assert not isinstance(new_code, Exception), new_code
        assert (certs, live) == (0, 1)
        return
    # The redemption came first: its certificate is in force, so no new code.
    assert not isinstance(enrolled, Exception), enrolled
    assert isinstance(new_code, Conflict) and "in force" in str(new_code), new_code
    assert (certs, live) == (1, 0)


def test_a_new_code_and_a_redemption_at_once(joint: tuple[Any, Any, Any]) -> None:
    ca, sessions, officer = joint
    for n in range(ROUNDS):
        app = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": f"Race {n} Co."})
        old, csr = ca.approve(officer, app.id), csr_pem()
        enrolled, new_code = at_once(
            lambda code=old.code, csr=csr: ca.enroll(code, "enterprise", csr),
            lambda app_id=app.id: ca.reissue_code(officer, app_id),
        )
        judge(enrolled, new_code, *standing(sessions, [app.id]))


def test_an_operator_authorized_again_and_a_redemption_at_once(
    joint: tuple[Any, Any, Any],
) -> None:
    ca, sessions, officer = joint
    grant = ca.approve(
        officer, ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "E"}).id
    )
    ent_cert = ca.enroll(grant.code, "enterprise", csr_pem()).certificate
    ent = caller_of(ca, ent_cert.public_bytes(serialization.Encoding.PEM))
    for n in range(ROUNDS):
        old, csr = ca.authorize_operator(ent, "Li Wei", f"R{n}"), csr_pem()
        enrolled, new_code = at_once(
            lambda code=old.code, csr=csr: ca.enroll(code, "operator", csr),
            lambda op_id=f"R{n}": ca.authorize_operator(ent, "Li Wei", op_id),
        )
        app_ids = [old.application.id]
        if not isinstance(new_code, Exception):
            app_ids.append(new_code.application.id)  # type: ignore[attr-defined]
        judge(enrolled, new_code, *standing(sessions, app_ids))


def test_one_key_one_holder_under_concurrent_enrollments(joint: tuple[Any, Any, Any]) -> None:
    """Two applications enroll the same key at once: it is checked before signing, when
    neither holds it yet, and again where the certificate is stored: one is refused."""
    ca, sessions, officer = joint
    for n in range(ROUNDS):
        key = KeyType.P256.generate()
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        csr = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]
        codes = [
            ca.approve(
                officer, ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": f"K{n}{i}"}).id
            )
            for i in range(2)
        ]
        first, second = at_once(
            *(lambda code=g.code, csr=csr: ca.enroll(code, "enterprise", csr) for g in codes)
        )
        refused = [r for r in (first, second) if isinstance(r, Exception)]
        assert len(refused) == 1, (first, second)
        assert isinstance(refused[0], Conflict) and "already certified" in str(refused[0])
        with sessions() as s:
            ids = [g.application.id for g in codes]
            held = s.execute(
                select(func.count()).where(CertificateRow.application_id.in_(ids))
            ).scalar_one()
        assert held == 1


@pytest.mark.parametrize("grouped", [True, False], ids=["group-commit", "session"])
def test_one_legal_person_credential_under_concurrent_enrollments(
    joint: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch, grouped: bool
) -> None:
    """Four approved applications of one USCC (approved before approvals checked for
    another) enroll at once: in one process their issuances share group commits, where
    each is checked after the ones stored before it in the same transaction (or, on the
    store's session path, which a store with other event sinks takes, one transaction
    each). One certificate; the others are refused, naming it, with nothing of them
    stored."""
    ca, sessions, _ = joint
    monkeypatch.setattr(ca.store, "_grouped", grouped)
    for n in range(ROUNDS if grouped else 3):
        uscc = fresh_uscc()
        with monkeypatch.context() as m:
            m.setattr(ca, "_refuse_second_credential", lambda *_args: None)
            codes = [
                ca.approve_at_ceremony(
                    ca.apply("enterprise", {"uscc": uscc, "legal_name": f"L{n}{i}"}).id, "t"
                )
                for i in range(4)
            ]
        csrs = [csr_pem() for _ in codes]
        results = at_once(
            *(
                lambda code=g.code, csr=csr: ca.enroll(code, "enterprise", csr)
                for g, csr in zip(codes, csrs, strict=True)
            )
        )
        issued = [r for r in results if not isinstance(r, Exception)]
        assert len(issued) == 1, results
        serial = issued[0].record.serial_hex  # type: ignore[attr-defined]
        for r in results:
            if isinstance(r, Exception):
                assert isinstance(r, Conflict), r
                assert f"already holds legal-person certificate {serial}" in str(r), r
        ids = [g.application.id for g in codes]
        assert standing(sessions, ids) == (1, 3)  # the refused codes stay unused


def log_index(sessions: Any, event_type: str, **match: str) -> int:
    """Where the one event of ``event_type`` matching ``match`` (event columns) stands in
    the Merkle log: the order of commits (on PostgreSQL event ids are drawn from a sequence
    before the log's lock is taken)."""
    from ca.models import EventRow, LogEntryRow

    q = (
        select(LogEntryRow.idx)
        .join(EventRow, EventRow.id == LogEntryRow.event_id)
        .where(EventRow.type == event_type)
        .filter_by(**match)
    )
    with sessions() as s:
        return int(s.scalars(q).one())


def race_with_revocation(
    joint: tuple[Any, Any, Any],
    name: str,
    prepare: Callable[[Any], Callable[[], object]],
    reason: str = "keyCompromise",
) -> tuple[object, int]:
    """A new enterprise certificate; ``prepare`` (given its holder, checked good) returns
    the act to run at the same moment as an officer's revocation of it (``reason``). The
    act's result or exception, and the revocation's place in the Merkle log."""
    from ca.revocation import Revocation

    ca, sessions, officer = joint
    grant = ca.approve(
        officer, ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": name}).id
    )
    cert = ca.enroll(grant.code, "enterprise", csr_pem()).certificate
    holder = caller_of(ca, cert.public_bytes(serialization.Encoding.PEM))
    serial = cert.serial_number
    act = prepare(holder)
    result, revoked = at_once(act, lambda: Revocation(ca).revoke(officer, serial, reason))
    assert not isinstance(revoked, Exception), revoked
    return result, log_index(sessions, "certificate.revoked", serial=format(serial, "x"))


def refused_as_revoked(result: object) -> bool:
    from ca.errors import Forbidden

    if isinstance(result, Exception):
        assert isinstance(result, Forbidden) and "revoked" in str(result), result
        return True
    return False


def test_a_renewal_and_the_revocation_of_its_certificate_at_once(
    joint: tuple[Any, Any, Any],
) -> None:
    """The holder renews while an officer revokes the certificate that signs the renewal
    (a compromised key): the renewal is stored before the revocation, or refused."""
    ca, sessions, _ = joint
    for n in range(ROUNDS):
        csr = csr_pem()
        renewed, revoked_at = race_with_revocation(
            joint, f"V{n}", lambda holder, csr=csr: lambda: ca.renew(holder, csr)
        )
        if not refused_as_revoked(renewed):
            serial = renewed.record.serial_hex  # type: ignore[attr-defined]
            renewed_at = log_index(sessions, "certificate.renewed", serial=serial)
            assert renewed_at < revoked_at, "a renewal stored after its signer was revoked"


def test_an_operator_authorized_while_the_enterprise_certificate_is_revoked(
    joint: tuple[Any, Any, Any],
) -> None:
    """A stolen enterprise key authorizes an operator while the enterprise's certificate
    is revoked: the authorization is logged before the revocation, or refused."""
    ca, sessions, _ = joint
    for n in range(ROUNDS):
        authorized, revoked_at = race_with_revocation(
            joint, f"S{n}", lambda ent, n=n: lambda: ca.authorize_operator(ent, "Rogue", f"X{n}")
        )
        if not refused_as_revoked(authorized):
            app_id = authorized.application.id  # type: ignore[attr-defined]
            authorized_at = log_index(sessions, "operator.authorized", application_id=app_id)
            assert authorized_at < revoked_at, "an operator authorized after the revocation"


def test_an_operator_enrolls_while_the_enterprise_ceases(joint: tuple[Any, Any, Any]) -> None:
    """An operator redeems its code while the enterprise's certificate is revoked for
    cessationOfOperation: the operator's certificate is stored first and revoked with the
    enterprise, or the code is found withdrawn; no operator certificate stays good."""
    from ca.models import CertificateStatusRow

    ca, sessions, _ = joint
    for n in range(ROUNDS):

        def prepare(ent: Any, n: int = n) -> Callable[[], object]:
            code, csr = ca.authorize_operator(ent, "Op", f"C{n}").code, csr_pem()
            return lambda: ca.enroll(code, "operator", csr)

        enrolled, _ = race_with_revocation(joint, f"C{n}", prepare, "cessationOfOperation")
        if isinstance(enrolled, Exception):
            assert isinstance(enrolled, InvalidCode) and "ceased" in str(enrolled), enrolled
            continue
        serial = enrolled.record.serial_hex  # type: ignore[attr-defined]
        with sessions() as s:
            state = s.get(CertificateStatusRow, serial)
        assert state is not None and state.state == "revoked", "an operator outlived cessation"


def test_a_status_change_signed_by_a_certificate_revoked_meanwhile_changes_nothing(
    joint: tuple[Any, Any, Any],
) -> None:
    """An enterprise holds, resumes or revokes its operator while an officer revokes the
    enterprise (keyCompromise): a request checked before that revocation committed, and
    carried out after it, acted with a revoked key (race probe, session 24). The caller
    below was made before the revocation, as the HTTP layer makes it; the change it signs
    comes after, and is refused with nothing written."""
    from ca.errors import Forbidden
    from ca.models import EventRow
    from ca.revocation import Revocation

    ca, sessions, officer = joint
    revocation = Revocation(ca)
    grant = ca.approve(
        officer, ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "E"}).id
    )
    ent_cert = ca.enroll(grant.code, "enterprise", csr_pem()).certificate
    ent = caller_of(ca, ent_cert.public_bytes(serialization.Encoding.PEM))
    held = ca.enroll(ca.authorize_operator(ent, "Li Wei", "H1").code, "operator", csr_pem())
    good = ca.enroll(ca.authorize_operator(ent, "Wang Fang", "G1").code, "operator", csr_pem())
    revocation.suspend(ent, held.record.serial)
    # keyCompromise, not cessationOfOperation: the operators are not revoked with it
    revocation.revoke(officer, ent_cert.serial_number, "keyCompromise")
    with sessions() as s:
        events = s.execute(select(func.count()).select_from(EventRow)).scalar_one()
    for change in (
        lambda: revocation.resume(ent, held.record.serial),
        lambda: revocation.suspend(ent, good.record.serial),
        lambda: revocation.revoke(ent, good.record.serial, "superseded"),
    ):
        with pytest.raises(Forbidden, match="was revoked meanwhile; nothing was changed"):
            change()
    with sessions() as s:
        assert s.execute(select(func.count()).select_from(EventRow)).scalar_one() == events
    assert revocation.status_of(good.record.serial)[1] is None  # still good
    held_status = revocation.status_of(held.record.serial)[1]
    assert held_status is not None and held_status.state.value == "hold"


def test_a_retry_overlapping_its_first_send_gets_the_same_certificate(
    joint: tuple[Any, Any, Any],
) -> None:
    """A client that timed out sends the same enrollment (one code, one CSR) or renewal
    (one signer, one new key) again while the first is still waiting to be written: every
    copy gets the one certificate, none is told its code was used or to make a new key
    (race probe, session 24: 403 and 409 for a certificate the client got)."""
    ca, sessions, officer = joint
    for n in range(4):
        app = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": f"Retry {n} Co."})
        code, csr = ca.approve(officer, app.id).code, csr_pem()
        results = at_once(*(lambda c=code, r=csr: ca.enroll(c, "enterprise", r) for _ in range(3)))
        assert all(not isinstance(r, Exception) for r in results), results
        serials = {r.record.serial for r in results}  # type: ignore[attr-defined]
        assert len(serials) == 1 and standing(sessions, [app.id]) == (1, 0)
        first = results[0].certificate  # type: ignore[attr-defined]
        holder = caller_of(ca, first.public_bytes(serialization.Encoding.PEM))
        new_key = csr_pem()
        renewed = at_once(*(lambda h=holder, k=new_key: ca.renew(h, k) for _ in range(3)))
        assert all(not isinstance(r, Exception) for r in renewed), renewed
        assert len({r.record.serial for r in renewed}) == 1  # type: ignore[attr-defined]
