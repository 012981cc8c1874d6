"""A cessation of an enterprise with hundreds of operators, on the CA core as the server
wires it (``create_app``: the Merkle log sink, the OCSP listener), on SQLite and PostgreSQL.

Its operators are revoked in one transaction under the issuances' lock, which blocks
every enrollment, renewal and revocation of the host (SQLite) or of the database
(PostgreSQL) while it runs: their status rows, events, log entries and OCSP placeholders
are written by a few statements, not a dozen per operator (5,000 operators held the lock
11 s on SQLite and 19-25 s on PostgreSQL). All or nothing still; their OCSP responses are
signed after the commit, and until then every answer is signed from the status row.
The end-to-end check (CLI, OCSP over HTTP, CRL, ``eport audit verify --full``) is
``tests/test_status_flow.py::test_a_cessation_of_hundreds_of_operators``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as xocsp
from sqlalchemy import event, text

from ca import translog
from ca.app import CAService, db
from ca.crl import ReasonCode
from ca.ocsp import Good, Revoked
from ca.ocsp_client import check_response
from ca.signedreq import SignedRequest
from ca.status import StatusService
from tests.conftest import Postgres
from tests.helpers import add_operators, dev_ca_service, enterprise_at_ceremony

USCC = "91350100M000100Y43"
NAME = "Wide Closing Co."
OPERATORS = 300


@pytest.fixture(params=["sqlite", "postgres"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[CAService, Any, int]]:
    """The development CA's service in this process, an enterprise with ``OPERATORS``
    operators, and the enterprise certificate's serial."""
    overrides: dict[str, Any] = {"data_dir": tmp_path / "data"}
    overrides["crl_refresh_seconds"] = 0
    if request.param == "postgres":
        pg: Postgres = request.getfixturevalue("postgres")
        overrides["database_url"] = pg.createdb(f"eport_cessation_{tmp_path.name.lower()}")
    with dev_ca_service(overrides) as svc:
        ent = enterprise_at_ceremony(svc.authority, USCC, NAME)
        made = add_operators(svc.authority, USCC, NAME, OPERATORS)
        db.session.remove()
        yield svc, made, ent.record.serial


def officer(svc: CAService) -> Any:
    path = svc.config.data_dir / "dev" / "officers" / "customs" / "officer.pem"
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return svc.authority.caller(SignedRequest(certificate=cert, chain=(cert,), claims={}))


def counts(svc: CAService) -> dict[str, int]:
    tables = ("certificate_status", "events", "log_entries", "log_nodes", "ocsp_responses")
    with db.engine.connect() as conn:
        out = {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in tables}
        out["withdrawn codes"] = int(
            conn.execute(
                text("SELECT count(*) FROM enrollment_codes WHERE withdrawn_at IS NOT NULL")
            ).scalar_one()
        )
    return out


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """The common request (SHA-1 CertID, no nonce): the one pre-signed responses answer."""
    req = xocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    return req.public_bytes(serialization.Encoding.DER)


def test_a_cessation_writes_its_operators_by_a_few_statements(
    service: tuple[CAService, list[x509.Certificate], int],
) -> None:
    """300 operators revoked: every one with its status row, event and log entry, by a few
    dozen statements in all (one by one it was about 3,300, eleven per operator, all under
    the issuances' lock; SQLite adds one per event, see below), and its pre-signed response
    signed again after the commit."""
    svc, made, ent_serial = service
    statements: list[str] = []

    def count(_conn: Any, _cur: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    before = counts(svc)
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        change = svc.revocation.revoke(officer(svc), ent_serial, "cessationOfOperation")
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert {c.serial for c in change.cascaded} == {c.serial_number for c in made}
    # SQLite's dialect inserts rows whose ids it returns in order one by one (in process:
    # no round trips); everything else goes by a few statements for all the operators.
    one_by_one = OPERATORS + 1 if db.engine.dialect.name == "sqlite" else 0
    assert len(statements) < 60 + one_by_one, len(statements)
    after = counts(svc)
    assert after["certificate_status"] - before["certificate_status"] == OPERATORS + 1
    assert after["events"] - before["events"] == OPERATORS + 1
    assert after["log_entries"] - before["log_entries"] == OPERATORS + 1
    with db.engine.connect() as conn:
        unlogged = conn.execute(
            text(
                "SELECT count(*) FROM events e LEFT JOIN log_entries l ON l.event_id = e.id"
                " WHERE l.idx IS NULL"
            )
        ).scalar_one()
        head = conn.execute(text("SELECT size FROM log_head")).scalar_one()
        due = conn.execute(
            text("SELECT count(*) FROM ocsp_responses WHERE this_update < :y2000"),
            {"y2000": datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)},
        ).scalar_one()
    assert unlogged == 0 and head == after["log_entries"] and due == 0
    size, root = translog.read_head(db.session())
    assert translog.tree_at(db.session(), size).root(size) == root  # the stored tree agrees
    db.session.remove()


@pytest.mark.parametrize("fault", ["log", "ocsp"])
def test_a_cessation_that_fails_midway_changes_nothing(
    service: tuple[CAService, list[x509.Certificate], int],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    """The process fails while the operators' log entries are appended, or while their OCSP
    placeholders are stored, after their status rows and events were written: nothing of
    the cessation stays (not even the enterprise's own revocation or its withdrawn
    codes), and it then runs whole."""
    svc, made, ent_serial = service
    svc.authority.authorize_operator(
        svc.authority.caller(
            SignedRequest(
                certificate=(ent := enterprise_cert(svc, ent_serial)), chain=(ent,), claims={}
            )
        ),
        "Unused Code",
        "U1",
    )
    before = counts(svc)

    class Crash(RuntimeError):
        pass

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise Crash(fault)

    with monkeypatch.context() as m:
        if fault == "log":
            real = translog.append_entries

            def append_entries(sql: Any, size: int, rows: Any) -> range:
                if len(rows) > 1:  # the operators' batch, after the enterprise's entry
                    crash()
                return real(sql, size, rows)

            m.setattr(translog, "append_entries", append_entries)
        else:
            from ca.store import SqlTransaction

            m.setattr(SqlTransaction, "store_ocsp_many", crash)
        with pytest.raises(Crash):
            svc.revocation.revoke(officer(svc), ent_serial, "cessationOfOperation")
        db.session.remove()
    assert counts(svc) == before
    assert svc.status.status_by_serial("enterprise", made[0].serial_number) == Good()
    change = svc.revocation.revoke(officer(svc), ent_serial, "cessationOfOperation")
    assert len(change.cascaded) == OPERATORS
    after = counts(svc)
    assert after["events"] - before["events"] == OPERATORS + 1
    assert after["withdrawn codes"] - before["withdrawn codes"] == 1


def enterprise_cert(svc: CAService, serial: int) -> x509.Certificate:
    with svc.store.reading() as tx:
        rec = tx.get_certificate(serial)
    assert rec is not None
    return x509.load_der_x509_certificate(rec.der)


def test_until_signed_again_the_responder_answers_from_the_status(
    service: tuple[CAService, list[x509.Certificate], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between the commit and the re-signing of the operators' responses (or if that
    re-signing never happens: the process dies), the 'good' response stored before is
    never served: the fast path passes, the responder signs 'revoked' from the status row
    and stores it, and that stored answer is then served."""
    svc, made, ent_serial = service
    issuer = svc.status.issuers["enterprise"].certificate
    cert = made[7]
    req = ocsp_request(cert, issuer)
    now = datetime.datetime.now(datetime.UTC)
    assert isinstance(
        check_response(svc.status.respond(req), cert, issuer, nonce=None, now=now), Good
    )
    good = svc.status.pre_signed(req)
    assert good is not None  # the 'good' answer is now pre-signed and stored

    monkeypatch.setattr(StatusService, "_resign", lambda _self, _changes: None)
    svc.revocation.revoke(officer(svc), ent_serial, "cessationOfOperation")
    db.session.remove()
    assert svc.status.pre_signed(req) is None  # the placeholder: never the old 'good'
    answer = check_response(svc.status.respond(req), cert, issuer, nonce=None, now=now)
    assert isinstance(answer, Revoked) and answer.reason is ReasonCode.CESSATION_OF_OPERATION
    db.session.remove()
    stored = svc.status.pre_signed(req)
    assert stored is not None and stored != good
    assert isinstance(check_response(stored, cert, issuer, nonce=None, now=now), Revoked)
