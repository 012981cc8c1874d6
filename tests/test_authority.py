"""The core's refusals: each changes nothing (the core on a real SQLite database)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import csr as acsr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from ca import hierarchy, translog
from ca.app import build_authority
from ca.authority import Caller, Issued, JointCA, hash_code, parse_csr
from ca.ceremony import issue_officers
from ca.config import CAConfig
from ca.db import make_engine, upgrade
from ca.errors import (
    BadCSR,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidCode,
    InvalidUSCC,
    NotFound,
    ProfileNotAllowed,
)
from ca.issuance import CertificateFactory
from ca.keys import KeyType
from ca.models import ApplicationRow, CertificateRow, EnrollmentCodeRow, EventRow
from ca.policy import Members, load_policies
from ca.records import Application, code_state
from ca.revocation import Revocation
from ca.signedreq import SignedRequest
from ca.store import SqlStore
from tests.helpers import fresh_uscc

REPO = Path(__file__).resolve().parent.parent
TABLES = (ApplicationRow, CertificateRow, EnrollmentCodeRow, EventRow)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[JointCA, sessionmaker, Path]]:  # type: ignore[type-arg]
    cfg = CAConfig.load({"data_dir": tmp_path})
    upgrade(cfg.sqlalchemy_url)
    policies = load_policies(REPO / "policies")
    h = hierarchy.create(
        policies,
        tmp_path,
        root_passphrase=b"r" * 12,
        ca_passphrase=b"c" * 12,
        factory=CertificateFactory(),
        now=datetime.datetime.now(datetime.UTC),
    )
    engine = make_engine(cfg.sqlalchemy_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    # with the Merkle log, as the server's: its leaf indices are the listings' keys
    ca = build_authority(cfg, policies, h, SqlStore(sessions, (translog.append_event,)))
    officers = issue_officers(ca, tmp_path / "officers", lambda _m: b"officer-pass", "test")
    yield ca, sessions, officers["customs"]
    engine.dispose()


def counts(sessions: sessionmaker) -> list[int]:  # type: ignore[type-arg]
    with sessions() as s:
        return [s.execute(select(func.count()).select_from(t)).scalar_one() for t in TABLES]


def csr(key: object) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(
            key,
            hashes.SHA256(),  # type: ignore[arg-type]
        )
        .public_bytes(serialization.Encoding.PEM)
    )


def signed_by(cert_path: Path) -> SignedRequest:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return SignedRequest(certificate=cert, chain=(cert,), claims={})


def last_event(sessions: sessionmaker) -> EventRow:  # type: ignore[type-arg]
    with sessions() as s:
        ev = s.scalars(select(EventRow).order_by(EventRow.id.desc())).first()
    assert ev is not None
    return ev


def enrolled_enterprise(
    ca: JointCA, officer: Caller, tmp_path: Path, name: str, uscc: str | None = None
) -> tuple[Caller, Issued]:
    """An enterprise approved and enrolled: its certificate as a signed request's caller.
    ``uscc``: a fresh one by default (an enterprise holds one legal-person credential)."""
    data = {"uscc": uscc or fresh_uscc(), "legal_name": name}
    grant = ca.approve(officer, ca.apply("enterprise", data).id)
    issued = ca.enroll(grant.code, "enterprise", csr(KeyType.P256.generate()))
    path = tmp_path / f"{issued.record.serial_hex}.pem"
    path.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
    return ca.caller(signed_by(path)), issued


def test_csr_signed_by_another_key_is_refused(env: tuple) -> None:  # type: ignore[type-arg]
    ca, sessions, _ = env
    grant = ca.approve_at_ceremony(
        ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "PoP Co."}).id, "t"
    )
    mine, theirs = KeyType.P256.generate(), KeyType.P256.generate()
    # Graft my public key into a request signed by another key: no proof of possession.
    a = acsr.CertificationRequest.load(
        x509.load_pem_x509_csr(csr(mine)).public_bytes(serialization.Encoding.DER)
    )
    b = acsr.CertificationRequest.load(
        x509.load_pem_x509_csr(csr(theirs)).public_bytes(serialization.Encoding.DER)
    )
    forged = acsr.CertificationRequest(
        {
            "certification_request_info": a["certification_request_info"],
            "signature_algorithm": b["signature_algorithm"],
            "signature": b["signature"],
        }
    ).dump()
    before = counts(sessions)
    with pytest.raises(BadCSR, match="proof of possession"):
        ca.enroll(grant.code, "enterprise", forged)
    assert counts(sessions) == before


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"\x30\x03\x02\x01\x01",  # DER of the wrong type
    ],
)
def test_unparseable_csr(data: bytes) -> None:
    """Refused in the request's terms: the detail named cryptography's parser internals
    ("error parsing asn1 value: ParseError { kind: ShortData { needed: 92 } }")."""
    with pytest.raises(BadCSR, match=r"^not a PKCS#10 certificate request \(RFC 2986; ") as e:
        parse_csr(data)
    assert "ParseError" not in e.value.detail and "asn1" not in e.value.detail, e.value.detail


def test_a_pem_request_with_more_after_it_is_refused() -> None:
    """The PEM reader certified the first of two requests, or one followed by text, where
    DER with trailing bytes is refused: one request alone, blanks around it allowed."""
    one, two = csr(KeyType.P256.generate()), csr(KeyType.P256.generate())
    for data in (one + two, one + b"trailing text\n", one.rstrip() + b"x"):
        with pytest.raises(BadCSR, match="more after its PEM block"):
            parse_csr(data)
    assert parse_csr(b"\n  " + one + b"\n\n").public_key() is not None


def test_certificate_instead_of_csr(env: tuple) -> None:  # type: ignore[type-arg]
    _, _, officer = env
    with pytest.raises(BadCSR):
        parse_csr((officer / "officer.pem").read_bytes())


def test_officer_of_a_non_member_agency_is_refused(env: tuple) -> None:  # type: ignore[type-arg]
    ca, _, officer = env
    assert ca.caller(signed_by(officer / "officer.pem")).agency_id == "customs"
    # The customs agency leaves the joint CA: its officer's certificate gives no role.
    members = ca.policies.members
    ca.policies = dataclasses.replace(
        ca.policies,
        members=Members(members.threshold, tuple(m for m in members.members if m.id != "customs")),
    )
    with pytest.raises(Forbidden, match="not a member"):
        ca.caller(signed_by(officer / "officer.pem"))


def test_operator_cannot_authorize_operators(env: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    app = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Roles Co."})
    grant = ca.approve(officer_caller, app.id)
    ent = ca.enroll(grant.code, "enterprise", csr(KeyType.P256.generate()))
    (tmp_path / "ent.pem").write_bytes(ent.certificate.public_bytes(serialization.Encoding.PEM))
    ent_caller = ca.caller(signed_by(tmp_path / "ent.pem"))
    op_grant = ca.authorize_operator(ent_caller, "Li Wei", "E1024")
    op = ca.enroll(op_grant.code, "operator", csr(KeyType.P256.generate()))
    (tmp_path / "op.pem").write_bytes(op.certificate.public_bytes(serialization.Encoding.PEM))
    op_caller = ca.caller(signed_by(tmp_path / "op.pem"))
    assert op_caller.uscc == "91350100M000100Y43"
    before = counts(sessions)
    with pytest.raises(Forbidden, match="enterprise certificate"):
        ca.authorize_operator(op_caller, "Eve", "E666")
    with pytest.raises(Forbidden):
        ca.approve(ent_caller, app.id)
    with pytest.raises(BadRequest, match="operator id"):
        ca.authorize_operator(ent_caller, "Wang Fang", "身份证")
    assert counts(sessions) == before
    # An enterprise code cannot be used for another class's profile.
    g2 = ca.approve(
        officer_caller,
        ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Roles Two Co."}).id,
    )
    with pytest.raises(ProfileNotAllowed):
        ca.enroll(g2.code, "agency", csr(KeyType.P256.generate()))


@pytest.mark.parametrize(
    ("data", "err"),
    [
        ({"uscc": "91350100M000100Y44", "legal_name": "X"}, InvalidUSCC),
        ({"uscc": "91350100M000100Y43", "legal_name": ""}, BadRequest),
        ({"uscc": "91350100M000100Y43", "legal_name": "A\x00B"}, BadRequest),
        # C1 controls (a terminal's CSI), bidi overrides, zero-width and separator
        # characters, a lone surrogate, a name of nothing visible: refused
        ({"uscc": "91350100M000100Y43", "legal_name": "Evil\x9b2J Co"}, BadRequest),
        ({"uscc": "91350100M000100Y43", "legal_name": "Trade\u202eoC"}, BadRequest),
        ({"uscc": "91350100M000100Y43", "legal_name": "Xia\u200bmen"}, BadRequest),
        ({"uscc": "91350100M000100Y43", "legal_name": "\ufeffXiamen"}, BadRequest),
        ({"uscc": "91350100M000100Y43", "legal_name": "A\udc00B"}, BadRequest),
        ({"uscc": "91350100M000100Y43", "legal_name": "\u200b\u200b"}, BadRequest),
        ({"uscc": "91350100M000100Y43", "legal_name": "-- . --"}, BadRequest),
        # controls and separators str.split() takes for blanks: refused, not made spaces
        *(
            ({"uscc": "91350100M000100Y43", "legal_name": f"Mut{c}Co"}, BadRequest)
            for c in ("\u2028", "\u2029", "\x1c", "\x1f", "\x85", "\x0b", "\t", "\n")
        ),
        ({"uscc": "91350100M000100Y43", "legal_name": "Mut C\x1c"}, BadRequest),
        (
            {"uscc": "91350100M000100Y43", "legal_name": "名" * 65},
            BadRequest,
        ),  # 65 characters > ub-organization-name (64)
    ],
)
def test_bad_applications_change_nothing(env: tuple, data: dict, err: type) -> None:  # type: ignore[type-arg]
    ca, sessions, _ = env
    before = counts(sessions)
    with pytest.raises(err):
        ca.apply("enterprise", data)
    with pytest.raises(BadRequest):
        ca.apply("agency", {"agency_id": "nosuch", "person_name": "X"})
    with pytest.raises(BadRequest):
        ca.apply("service", {"agency_id": "customs", "service_host": "not a host"})
    with pytest.raises(BadRequest):
        ca.apply("operator", {"uscc": "91350100M000100Y43"})
    assert counts(sessions) == before


def test_a_new_code_ends_the_unused_one(env: tuple) -> None:  # type: ignore[type-arg]
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    app = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Lost Code Co."})
    lost = ca.approve(officer_caller, app.id)
    before = counts(sessions)
    fresh = ca.reissue_code(officer_caller, app.id)
    assert fresh.withdrawn == 1 and fresh.profiles == lost.profiles == ("enterprise",)
    assert fresh.code != lost.code and fresh.expires_at > ca.clock()
    # One code row and one event more, and nothing else.
    assert counts(sessions) == [before[0], before[1], before[2] + 1, before[3] + 1]
    ev = last_event(sessions)
    assert ev.type == "application.code_reissued"
    assert ev.application_id == app.id and ev.actor == officer_caller.actor
    assert json.loads(ev.details)["withdrawn_codes"] == 1
    with sessions() as s:
        row = s.get(EnrollmentCodeRow, hash_code(lost.code))
    assert row is not None and row.withdrawn_at is not None and row.used_at is None
    assert row.expires_at == lost.expires_at  # ended by its mark, its expiry kept
    with pytest.raises(InvalidCode, match="withdrawn: a newer code replaced it"):
        ca.enroll(lost.code, "enterprise", csr(KeyType.P256.generate()))
    issued = ca.enroll(fresh.code, "enterprise", csr(KeyType.P256.generate()))
    assert issued.record.application_id == app.id


def test_a_code_typed_with_look_alike_letters_is_the_same_code(env: tuple) -> None:  # type: ignore[type-arg]
    """Codes are Crockford base32, which reads the letters it leaves out (O, I, L) as
    the digits they look like; a code typed from paper with ``O`` for ``0`` was "unknown"."""
    from ca.authority import normalize_code

    assert normalize_code(" ol-Io 23 ") == "011023"
    ca, _, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    app = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Paper Co."})
    code = ca.approve(officer_caller, app.id).code
    typed = code.lower().replace("0", "O").replace("1", "l")
    issued = ca.enroll(typed, "enterprise", csr(KeyType.P256.generate()))
    assert issued.record.application_id == app.id


def test_a_new_code_for_an_expired_one(env: tuple) -> None:  # type: ignore[type-arg]
    ca, _, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    app = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Late Co."})
    old = ca.approve(officer_caller, app.id)
    start = ca.clock()
    ca.clock = lambda: start + datetime.timedelta(days=8)
    with pytest.raises(InvalidCode, match=r"has expired.*eport ra new-code"):
        ca.enroll(old.code, "enterprise", csr(KeyType.P256.generate()))
    last = {a.id: c for _, a, c in ca.list_applications(officer_caller, None, limit=1000)}
    assert last[app.id] is not None and code_state(last[app.id], ca.clock()) == "expired"
    fresh = ca.reissue_code(officer_caller, app.id)
    assert fresh.withdrawn == 0  # the expired one was no longer live
    assert ca.enroll(fresh.code, "enterprise", csr(KeyType.P256.generate())).record.serial


def test_no_new_code_while_a_certificate_is_in_force(env: tuple) -> None:  # type: ignore[type-arg]
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    app = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Holder Co."})
    issued = ca.enroll(
        ca.approve(officer_caller, app.id).code, "enterprise", csr(KeyType.P256.generate())
    )
    revocation = Revocation(ca)
    serial = issued.record.serial
    before = counts(sessions)
    with pytest.raises(Conflict, match=rf"{issued.record.serial_hex} in force.*eport renew"):
        ca.reissue_code(officer_caller, app.id)
    # Suspended is still in force (it may be resumed).
    revocation.suspend(officer_caller, serial)
    before = counts(sessions)
    with pytest.raises(Conflict, match="in force"):
        ca.reissue_code(officer_caller, app.id)
    assert counts(sessions) == before
    # Revoked (a lost key): the application may enroll again with a new code.
    revocation.revoke(officer_caller, serial, "keyCompromise")
    fresh = ca.reissue_code(officer_caller, app.id)
    assert fresh.withdrawn == 0
    again = ca.enroll(fresh.code, "enterprise", csr(KeyType.P256.generate()))
    assert again.record.application_id == app.id and again.record.serial != serial
    # An expired certificate is no longer in force either.
    later = again.record.not_after + datetime.timedelta(seconds=1)
    ca.clock = lambda: later
    assert ca.reissue_code(officer_caller, app.id).withdrawn == 0


def test_new_code_refusals_change_nothing(env: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    pending = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Wait Co."})
    approved = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Ok Co."})
    grant = ca.approve(officer_caller, approved.id)
    rejected = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "No Co."})
    ca.reject(officer_caller, rejected.id, "documents incomplete")
    staff = ca.apply("agency", {"agency_id": "tax", "person_name": "Zhang Min"})
    ca.approve_at_ceremony(staff.id, "test")
    ent = ca.enroll(
        ca.approve(
            officer_caller,
            ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "E Co."}).id,
        ).code,
        "enterprise",
        csr(KeyType.P256.generate()),
    )
    (tmp_path / "ent.pem").write_bytes(ent.certificate.public_bytes(serialization.Encoding.PEM))
    ent_caller = ca.caller(signed_by(tmp_path / "ent.pem"))
    before = counts(sessions)
    with pytest.raises(Conflict, match="is pending"):
        ca.reissue_code(officer_caller, pending.id)
    with pytest.raises(Conflict, match="is rejected"):
        ca.reissue_code(officer_caller, rejected.id)
    with pytest.raises(NotFound):
        ca.reissue_code(officer_caller, "app_nosuch")
    with pytest.raises(Forbidden):  # an enterprise is no RA officer
        ca.reissue_code(ent_caller, approved.id)
    with pytest.raises(Forbidden, match="agency 'tax'"):  # a customs officer, tax's staff
        ca.reissue_code(officer_caller, staff.id)
    with pytest.raises(ProfileNotAllowed):
        ca.reissue_code(officer_caller, approved.id, ["agency"])
    assert counts(sessions) == before
    # The refusals left the approved application's code live.
    assert ca.enroll(grant.code, "enterprise", csr(KeyType.P256.generate())).record.serial


def test_authorizing_an_operator_again(env: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    ent, _ = enrolled_enterprise(ca, officer_caller, tmp_path, "Again Co.")
    other, _ = enrolled_enterprise(ca, officer_caller, tmp_path, "Other Co.", "91350100MA31WDXY2A")
    lost = ca.authorize_operator(ent, "Li Wei", "E1")
    assert lost.withdrawn == 0
    assert ca.authorize_operator(other, "Li Wei", "E1").withdrawn == 0  # another enterprise
    fresh = ca.authorize_operator(ent, "Li Wei", "E1")
    assert fresh.withdrawn == 1
    ev = last_event(sessions)
    assert ev.type == "operator.authorized"
    assert json.loads(ev.details)["withdrawn_codes"] == 1
    with pytest.raises(InvalidCode, match="withdrawn: a newer code replaced it"):
        ca.enroll(lost.code, "operator", csr(KeyType.P256.generate()))
    op = ca.enroll(fresh.code, "operator", csr(KeyType.P256.generate()))
    assert ca.authorize_operator(ent, "Wang Fang", "E2").withdrawn == 0  # another operator
    before = counts(sessions)
    with pytest.raises(Conflict, match=rf"operator E1 has certificate {op.record.serial_hex}"):
        ca.authorize_operator(ent, "Li Wei", "E1")
    assert counts(sessions) == before
    # The enterprise revokes its operator's certificate (a lost key): authorized again.
    Revocation(ca).revoke(ent, op.record.serial, "keyCompromise")
    again = ca.authorize_operator(ent, "Li Wei", "E1")
    assert again.withdrawn == 0
    assert ca.enroll(again.code, "operator", csr(KeyType.P256.generate())).record.serial


def test_cessation_withdraws_the_operators_unused_codes(env: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """The enterprise ceases (its certificate revoked for cessationOfOperation): its
    operators' certificates are revoked with it, and their unused codes withdrawn."""
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    ent_caller, ent = enrolled_enterprise(ca, officer_caller, tmp_path, "Ceasing Co.")
    enrolled = ca.authorize_operator(ent_caller, "Li Wei", "E1")
    op = ca.enroll(enrolled.code, "operator", csr(KeyType.P256.generate()))
    unused = [ca.authorize_operator(ent_caller, "Wang Fang", f"E{i}") for i in (2, 3)]
    change = Revocation(ca).revoke(officer_caller, ent.record.serial, "cessationOfOperation")
    assert [c.serial for c in change.cascaded] == [op.record.serial]
    with sessions() as s:
        ev = s.scalars(
            select(EventRow).where(
                EventRow.type == "certificate.revoked", EventRow.serial == ent.record.serial_hex
            )
        ).one()
    assert json.loads(ev.details)["operator_codes_withdrawn"] == "2"
    for g in unused:
        with pytest.raises(InvalidCode, match="its enterprise ceased operation"):
            ca.enroll(g.code, "operator", csr(KeyType.P256.generate()))


def test_any_revocation_of_the_last_enterprise_certificate_withdraws_operator_codes(
    env: tuple,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    """An officer revokes an enterprise's only certificate for keyCompromise: the codes
    its (stolen) key gave its operators are withdrawn with it. They enrolled operators of
    an enterprise with no certificate in force (docs probe 24); only a cessation revokes
    the operators' certificates, so an enrolled operator stays. While a renewal's
    certificate is in force, the codes stay."""
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    ent_caller, ent = enrolled_enterprise(ca, officer_caller, tmp_path, "Compromised Co.")
    enrolled = ca.enroll(
        ca.authorize_operator(ent_caller, "Li Wei", "K1").code,
        "operator",
        csr(KeyType.P256.generate()),
    )
    unused = ca.authorize_operator(ent_caller, "Wang Fang", "K2")
    change = Revocation(ca).revoke(officer_caller, ent.record.serial, "keyCompromise")
    assert change.cascaded == ()
    details = json.loads(last_event(sessions).details)
    assert details["operator_codes_withdrawn"] == "1", details
    with pytest.raises(InvalidCode, match="lost its last certificate in force"):
        ca.enroll(unused.code, "operator", csr(KeyType.P256.generate()))
    with ca.store.reading() as tx:
        assert tx.get_status(enrolled.record.serial) is None  # not a cessation: still good
    # With a renewal in force, a keyCompromise of the old certificate withdraws the codes
    # that key authorized (a thief's, perhaps: review probe 24), not the renewal's; another
    # reason (superseded) leaves every code as it is.
    renewing_caller, old = enrolled_enterprise(ca, officer_caller, tmp_path, "Renewed Co.")
    by_old = ca.authorize_operator(renewing_caller, "Zhao Min", "K3")
    renewed = ca.renew(renewing_caller, csr(KeyType.P256.generate()))
    (tmp_path / "renewed.pem").write_bytes(
        renewed.certificate.public_bytes(serialization.Encoding.PEM)
    )
    by_new = ca.authorize_operator(ca.caller(signed_by(tmp_path / "renewed.pem")), "Qian", "K4")
    Revocation(ca).revoke(officer_caller, old.record.serial, "keyCompromise")
    assert json.loads(last_event(sessions).details)["operator_codes_withdrawn"] == "1"
    with pytest.raises(InvalidCode, match="withdrawn"):
        ca.enroll(by_old.code, "operator", csr(KeyType.P256.generate()))
    assert ca.enroll(by_new.code, "operator", csr(KeyType.P256.generate())).record.serial
    retiring_caller, retired = enrolled_enterprise(ca, officer_caller, tmp_path, "Retired Co.")
    kept = ca.authorize_operator(retiring_caller, "Sun Li", "K5")
    ca.renew(retiring_caller, csr(KeyType.P256.generate()))
    Revocation(ca).revoke(officer_caller, retired.record.serial, "superseded")
    assert "operator_codes_withdrawn" not in json.loads(last_event(sessions).details)
    assert ca.enroll(kept.code, "operator", csr(KeyType.P256.generate())).record.serial


def test_cessation_of_a_certificate_a_renewal_replaced_keeps_the_operators(
    env: tuple,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    """cessationOfOperation on an enterprise certificate while a renewal's is in force
    revokes only that one: the operators' certificates and codes stay, the event and the
    answer name the certificate in force. Revoking that one for cessation ends them."""
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    old_caller, old = enrolled_enterprise(ca, officer_caller, tmp_path, "Renewing Co.")
    op = ca.enroll(
        ca.authorize_operator(old_caller, "Li Wei", "E1").code,
        "operator",
        csr(KeyType.P256.generate()),
    )
    unused = ca.authorize_operator(old_caller, "Wang Fang", "E2")
    new = ca.renew(old_caller, csr(KeyType.P256.generate()))
    revocation = Revocation(ca)
    change = revocation.revoke(old_caller, old.record.serial, "cessationOfOperation")
    assert change.cascaded == ()
    assert [k.serial for k in change.kept_by] == [new.record.serial]
    ev = last_event(sessions)
    assert ev.type == "certificate.revoked" and ev.serial == old.record.serial_hex
    details = json.loads(ev.details)
    assert details["enterprise_still_in_force"] == new.record.serial_hex
    assert "operator_codes_withdrawn" not in details
    with ca.store.reading() as tx:
        assert tx.get_status(op.record.serial) is None  # still good
    # The unused operator code still enrolls (here, under the renewed certificate).
    second = ca.enroll(unused.code, "operator", csr(KeyType.P256.generate()))
    # A renewal's certificate on hold still keeps the enterprise going. (The third comes
    # by renewing the second: an enterprise holds one legal-person credential, so a new
    # enrollment is refused while one is in force.)
    (tmp_path / "new.pem").write_bytes(new.certificate.public_bytes(serialization.Encoding.PEM))
    third = ca.renew(ca.caller(signed_by(tmp_path / "new.pem")), csr(KeyType.P256.generate()))
    revocation.suspend(officer_caller, new.record.serial)
    change = revocation.revoke(officer_caller, third.record.serial, "cessationOfOperation")
    assert change.cascaded == () and [k.serial for k in change.kept_by] == [new.record.serial]
    # The last certificate in force goes: the enterprise has ceased, its operators too.
    revocation.resume(officer_caller, new.record.serial)
    change = revocation.revoke(officer_caller, new.record.serial, "cessationOfOperation")
    assert change.kept_by == ()
    assert sorted(c.serial for c in change.cascaded) == sorted(
        [op.record.serial, second.record.serial]
    )


def test_a_request_whose_signer_is_revoked_in_flight_is_refused(env: tuple) -> None:  # type: ignore[type-arg]
    """The signer was good when the request was checked and is revoked before its write:
    approve, reject and a new code refuse it where they write, and change nothing."""
    ca, sessions, officer = env
    in_flight = ca.caller(signed_by(officer / "officer.pem"))  # checked good
    other = ca.caller(signed_by(officer.parent / "tax" / "officer.pem"))
    pending = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "In Flight"})
    approved = ca.approve(
        other, ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "A"}).id
    )
    # its holder revokes it (another agency's officer may not: test_staff_status_scope)
    Revocation(ca).revoke(
        ca.caller(signed_by(officer / "officer.pem")), in_flight.serial, "keyCompromise"
    )
    before = counts(sessions)
    for act in (
        lambda: ca.approve(in_flight, pending.id),
        lambda: ca.reject(in_flight, pending.id, "no"),
        lambda: ca.reissue_code(in_flight, approved.application.id),
    ):
        with pytest.raises(
            Forbidden, match=f"{in_flight.serial:x} that signed this request was revoked"
        ):
            act()
    assert counts(sessions) == before
    assert ca.application(pending.id).state.value == "pending"


def test_an_approval_is_withdrawn_before_enrollment(env: tuple) -> None:  # type: ignore[type-arg]
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    app = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Mistake Co."})
    grant = ca.approve(officer_caller, app.id)
    pending = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Wait Co."})
    before = counts(sessions)
    with pytest.raises(Conflict, match="only an approved application can be withdrawn"):
        ca.withdraw(officer_caller, pending.id, "x")
    with pytest.raises(BadRequest, match="needs a reason"):
        ca.withdraw(officer_caller, app.id, "  ")
    assert counts(sessions) == before
    withdrawn = ca.withdraw(officer_caller, app.id, "seal does not match the licence")
    assert withdrawn.state.value == "rejected" and withdrawn.reason.startswith("seal")
    ev = last_event(sessions)
    assert ev.type == "application.withdrawn"
    assert json.loads(ev.details)["withdrawn_codes"] == 1
    with pytest.raises(InvalidCode, match="its approval was withdrawn"):
        ca.enroll(grant.code, "enterprise", csr(KeyType.P256.generate()))
    with pytest.raises(Conflict, match="is rejected"):  # and no new code for it
        ca.reissue_code(officer_caller, app.id)
    # Once it enrolled, its certificate must be revoked first.
    other = ca.apply("enterprise", {"uscc": "91350100M000100Y43", "legal_name": "Enrolled Co."})
    issued = ca.enroll(
        ca.approve(officer_caller, other.id).code, "enterprise", csr(KeyType.P256.generate())
    )
    before = counts(sessions)
    with pytest.raises(Conflict, match=f"{issued.record.serial_hex} in force.*eport revoke"):
        ca.withdraw(officer_caller, other.id, "too late")
    assert counts(sessions) == before


@contextlib.contextmanager
def selects_from(engine: Any, *tables: str) -> Iterator[list[tuple[str, Any]]]:
    """The SELECT statements (with their parameters) run on ``engine`` from any of
    ``tables`` while the block runs."""
    from sqlalchemy import event

    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cur: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT") and any(
            f"FROM {t}" in statement for t in tables
        ):
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def query_plan(engine: Any, statement: str, params: Any) -> str:
    """SQLite's plan of one statement, its steps joined by ' | '."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
    return " | ".join(str(r[-1]) for r in rows)


def test_operator_lookups_and_listings_read_indexes(env: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """At scale (thousands of operators per enterprise, of applications per state) the
    statements of ``authorize_operator`` and of the RA listing read an index in the order
    they need: the earlier authorizations of one operator id by (uscc, operator_id), not
    every operator application of the enterprise; a page of applications after a cursor
    by (state, log_index) or log_index, and of all certificates or an enterprise's by
    log_index or (uscc, log_index), not a sort of them all (SQLite's query plan)."""
    from ca.records import ApplicationState

    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    ent, _ = enrolled_enterprise(ca, officer_caller, tmp_path, "Plan Co.")
    for i in range(3):
        ca.authorize_operator(ent, f"Operator {i}", f"E{i}")
    engine = sessions.kw["bind"]
    with selects_from(engine, "applications", "certificates") as lookups:
        again = ca.authorize_operator(ent, "Operator 1", "E1")
    with selects_from(engine, "applications", "certificates") as listings:
        for state in (ApplicationState.APPROVED, None):
            ca.list_applications(officer_caller, state, 2, after=1)
    with selects_from(engine, "applications", "certificates") as cert_pages:
        ca.certificates(officer_caller, None, 2, after=1)  # every certificate, an officer's
        ca.certificates(officer_caller, ent.uscc, 2, after=1)  # an enterprise's
    assert again.withdrawn == 1  # E1's earlier code, found through the index

    def plan(statement: str, params: Any) -> str:
        return query_plan(engine, statement, params)

    lookup_plans = [plan(*s) for s in lookups]
    assert any(
        "ix_applications_uscc_operator (uscc=? AND operator_id=?)" in p for p in lookup_plans
    ), lookup_plans
    listing_plans = [plan(*s) for s in listings]
    assert len(listing_plans) == 2, listing_plans
    assert "ix_applications_state_log_index (state=? AND log_index>?)" in listing_plans[0], (
        listing_plans
    )
    assert "ix_applications_log_index (log_index>?)" in listing_plans[1], listing_plans
    assert not any("TEMP B-TREE" in p for p in listing_plans), listing_plans
    cert_plans = [plan(*s) for s in cert_pages]
    assert len(cert_plans) == 2, cert_plans
    assert "ix_certificates_log_index (log_index>?)" in cert_plans[0], cert_plans
    assert "ix_certificates_uscc_log_index (uscc=? AND log_index>?)" in cert_plans[1], cert_plans
    assert not any("TEMP B-TREE" in p for p in cert_plans), cert_plans


def applying_again(
    ca: JointCA, officer: Path, tmp_path: Path, name: str
) -> tuple[Caller, Issued, Application]:
    """An enrolled enterprise with three operators, and a second enterprise application of
    its USCC (pending): the enterprise's caller, its certificate, that application."""
    ent, issued = enrolled_enterprise(
        ca, ca.caller(signed_by(officer / "officer.pem")), tmp_path, name
    )
    assert ent.uscc is not None
    for i in range(3):
        ca.authorize_operator(ent, f"Operator {i}", f"{name[0]}{i}")
    return ent, issued, ca.apply("enterprise", {"uscc": ent.uscc, "legal_name": name})


def test_an_enterprise_s_other_applications_are_read_by_index(env: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """An enterprise approval or new code looks for the USCC's other enterprise
    applications (one with a live code refuses it): by (uscc, operator_id IS NULL), not
    by reading every application of the USCC, its operators' too (an enterprise with
    5,000 operators: about 1.5 ms per approval, under the issuances' lock)."""
    ca, sessions, officer = env
    ent, _, second = applying_again(ca, officer, tmp_path, "Lookup Co.")
    assert ent.uscc is not None
    engine = sessions.kw["bind"]
    with selects_from(engine, "applications") as seen, ca.store.reading() as tx:
        found = tx.applications_of(ent.uscc, "enterprise")
    assert {a.subject_class for a in found} == {"enterprise"}
    assert second.id in {a.id for a in found} and len(found) == 2
    assert len(seen) == 1, seen
    plan = query_plan(engine, *seen[0])
    assert "ix_applications_uscc_operator (uscc=? AND operator_id=?)" in plan, plan


def test_the_legal_person_credential_checks_read_an_index(env: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """The one-legal-person-credential check runs under the issuances' lock for every
    enterprise approval, new code and enrollment: it reads the USCC's enterprise
    certificates not expired by (uscc, profile, not_after), not every certificate of the
    USCC (an enterprise's thousands of operators' certificates, which (uscc, log_index)
    gave it: 1.7-6.8 ms a check at 5,000 on SQLite, 20-28 ms at 25,000, all other
    issuances waiting). Both statements: the store's (an approval, refused here) and the
    group writer's, where the enrollment is stored (SQLite's query plan)."""
    from ca import groupwrite

    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    ent, issued, second = applying_again(ca, officer, tmp_path, "Plan Co.")
    assert ent.uscc is not None
    engine = sessions.kw["bind"]
    held = f"legal-person certificate {issued.record.serial_hex}"
    with selects_from(engine, "certificates") as seen, pytest.raises(Conflict, match=held):
        ca.approve(officer_caller, second.id)

    def plan(statement: str, params: Any) -> str:
        return query_plan(engine, statement, params)

    index = "ix_certificates_uscc_profile_not_after (uscc=? AND profile=? AND not_after>?)"
    checks = [plan(*s) for s in seen if "not_after >" in s[0]]
    assert checks and all(index in p for p in checks), [plan(*s) for s in seen]
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None).isoformat(sep=" ")
    stored = plan(groupwrite._CREDENTIAL_IN_FORCE, (ent.uscc, "enterprise", now, "", "revoked"))
    assert index in stored, stored


def test_nothing_is_issued_from_an_issuing_ca_at_or_near_its_end(env: tuple) -> None:  # type: ignore[type-arg]
    """A leaf is cut to its issuer's end: past it, the CA signed a certificate that ended
    before it began, with an expired CA key, used the code and logged it (time probe,
    finding 1). Less than a day before the end, and after it, the enrollment is refused
    before anything is signed or used; the code enrolls from the next generation."""
    from ca.app import lint_templates
    from ca.errors import IssuerExpired

    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    ends = ca.issuers["enterprise"].certificate.not_valid_after_utc
    real = ca.clock
    ca.clock = lambda: ends - datetime.timedelta(days=3)
    app = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Tide Co."})
    grant = ca.approve(officer_caller, app.id)
    before = counts(sessions)
    for at, said in (
        (ends - datetime.timedelta(hours=12), "ends at"),
        (ends + datetime.timedelta(seconds=1), "expired at"),
    ):
        ca.clock = lambda at=at: at  # type: ignore[misc]
        with pytest.raises(IssuerExpired, match=f"issuing CA enterprise {said} .*eport ca rotate"):
            ca.enroll(grant.code, "enterprise", csr(KeyType.P256.generate()))
        # The check the CLI makes before it makes a key says so too (it passed, and the
        # key was made for an enrollment sure to fail).
        with pytest.raises(IssuerExpired, match=f"issuing CA enterprise {said} "):
            ca.check_code(grant.code, "enterprise")
        assert counts(sessions) == before  # nothing signed, stored or used
        notices = hierarchy.issuer_notices(ca.issuers, ca.policies, at)
        assert any(f"issuing CA enterprise {said}" in n and "refused" in n for n in notices)
        # the server still starts (status, the token service, the rollover need it)
        lint_templates(CertificateFactory(), ca.policies, ca.issuers, at)
    # within the longest profile's validity of the end: certificates are cut short, said
    soon = ends - datetime.timedelta(days=100)
    notices = hierarchy.issuer_notices(ca.issuers, ca.policies, soon)
    assert any("enterprise" in n and "cut short" in n for n in notices), notices
    assert hierarchy.issuer_notices(ca.issuers, ca.policies, real()) == []
    ca.clock = lambda: ends - datetime.timedelta(days=2)
    issued = ca.enroll(grant.code, "enterprise", csr(KeyType.P256.generate()))
    assert issued.certificate.not_valid_after_utc == ends  # cut to the issuer's end


def test_officers_under_a_revoked_issuing_ca_are_none_in_force(env: tuple) -> None:  # type: ignore[type-arg]
    """The officers' issuing CA revoked on the root CRL (runbook 2 for the agency CA):
    their certificates sign nothing (401), yet they counted as in force, so the unsigned
    opening that brings officers back was refused too and no ceremony could ever be
    opened again (custody probe, F1). They count for nothing now, and each member is
    told it has no officer."""
    from ca.crl import ReasonCode
    from ca.ocsp import Revoked

    ca, _, _ = env
    assert ca.officers_in_force()
    generation = ca.issuers[ca.officer_issuer()].id
    ca.revoked_issuers = {generation: Revoked(ca.clock(), ReasonCode.KEY_COMPROMISE)}
    assert not ca.officers_in_force()
    notices = ca.officer_notices(ca.clock())
    for member in ca.policies.members.members:
        assert any(n.startswith(f"member agency {member.id} has no RA officer") for n in notices)


def test_an_operator_certificate_under_a_revoked_generation_is_in_force_for_nobody(
    env: tuple,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    """Runbook 2 re-enrolls the operators after REVOKE-INTERMEDIATE: their old
    certificates validate nowhere and cannot renew, yet `eport operator add` of the same
    id was refused as "in force", naming `eport renew` (runbook probe 24)."""
    from ca.crl import ReasonCode
    from ca.ocsp import Revoked

    ca, _, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    ent_caller, _ = enrolled_enterprise(ca, officer_caller, tmp_path, "Rollover Co.")
    ca.enroll(
        ca.authorize_operator(ent_caller, "Li Wei", "R1").code,
        "operator",
        csr(KeyType.P256.generate()),
    )
    with pytest.raises(Conflict, match="operator R1 has certificate"):
        ca.authorize_operator(ent_caller, "Li Wei", "R1")
    generation = ca.issuers["enterprise"].id
    ca.revoked_issuers = {generation: Revoked(ca.clock(), ReasonCode.KEY_COMPROMISE)}
    assert ca.authorize_operator(ent_caller, "Li Wei", "R1").code


def test_a_profile_whose_generation_is_revoked_without_successor_says_so(env: tuple) -> None:  # type: ignore[type-arg]
    """REVOKE-INTERMEDIATE of the current generation, no rollover first: active.json names
    none, and enrollments said "issuing CA 'enterprise' is not configured" (404), where
    the emergency plan promises the 503 issuer-revoked naming the rollover (custody
    probe, F3). Said at the code check too, before a key is made."""
    from ca.crl import ReasonCode
    from ca.errors import IssuerRevoked
    from ca.ocsp import Revoked

    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    app = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Stopped Co."})
    grant = ca.approve(officer_caller, app.id)
    gen = ca.issuers.pop("enterprise").id
    ca.revoked_issuers = {gen: Revoked(ca.clock(), ReasonCode.KEY_COMPROMISE)}
    before = counts(sessions)
    said = f"issuing CA 'enterprise' issues from no generation: {gen} is revoked on the root"
    for attempt in (
        lambda: ca.check_code(grant.code, "enterprise"),
        lambda: ca.enroll(grant.code, "enterprise", csr(KeyType.P256.generate())),
    ):
        with pytest.raises(IssuerRevoked, match=said) as err:
            attempt()
        assert "eport ca rotate enterprise" in err.value.detail
    assert counts(sessions) == before
    notices = hierarchy.issuer_notices(ca.issuers, ca.policies, ca.clock())
    assert any(n.startswith("issuing CA enterprise issues from no generation") for n in notices)


def test_members_running_out_of_officers_are_warned_of(env: tuple) -> None:  # type: ignore[type-arg]
    """Only a member's own officers approve its staff, and the first officers all end on
    one day: the server warns a month before a member's last officer certificate ends,
    and names the way back once it has none (time probe, finding 4)."""
    ca, _, officer = env
    assert ca.officer_notices(ca.clock()) == []
    ends = ca.caller(signed_by(officer / "officer.pem")).certificate.not_valid_after_utc
    soon = ca.officer_notices(ends - datetime.timedelta(days=10))
    assert any(
        n.startswith("the last RA officer certificate of member agency customs ends at")
        for n in soon
    ), soon
    assert not ca.officer_notices(ends - datetime.timedelta(days=40))
    tax = ca.caller(signed_by(officer.parent / "tax" / "officer.pem"))
    Revocation(ca).revoke(tax, tax.serial, "keyCompromise")
    gone = ca.officer_notices(ca.clock())
    assert gone == [
        "member agency tax has no RA officer certificate in force: nobody may approve its "
        "staff; a quorum's APPROVE-OFFICER ceremony gives it one (docs/emergency-plan.md, "
        "runbook 8)"
    ]


def test_a_member_s_last_auditor_ending_is_warned_of(env: tuple) -> None:  # type: ignore[type-arg]
    """Officers were warned of 30 days ahead; a member's auditors were not, and its review
    of the log stopped with them (time probe)."""
    ca, _, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    app = ca.apply("auditor", {"agency_id": "customs", "person_name": "Audrey Auditor"})
    grant = ca.approve(officer_caller, app.id)
    issued = ca.enroll(grant.code, grant.profiles[0], csr(KeyType.P256.generate()))
    ends = issued.certificate.not_valid_after_utc
    said = "the last auditor certificate of member agency customs ends at"
    assert any(n.startswith(said) for n in ca.officer_notices(ends - datetime.timedelta(days=10)))
    assert not any(
        n.startswith(said) for n in ca.officer_notices(ends - datetime.timedelta(days=40))
    )


def test_an_expired_operator_code_names_the_enterprise_not_an_officer(  # type: ignore[no-untyped-def]
    env: tuple,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    """An operator's code comes from its enterprise: the expired-code refusal sent the
    operator to an RA officer's eport ra new-code, which refuses (time probe, finding 5)."""
    ca, _, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    app = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Late Operator Co."})
    ent = ca.enroll(
        ca.approve(officer_caller, app.id).code, "enterprise", csr(KeyType.P256.generate())
    )
    (tmp_path / "ent.pem").write_bytes(ent.certificate.public_bytes(serialization.Encoding.PEM))
    grant = ca.authorize_operator(ca.caller(signed_by(tmp_path / "ent.pem")), "Li Wei", "E7")
    start = ca.clock()
    ca.clock = lambda: start + datetime.timedelta(days=8)
    with pytest.raises(
        InvalidCode, match=r"has expired; the enterprise's legal person .*eport operator add"
    ):
        ca.enroll(grant.code, "operator", csr(KeyType.P256.generate()))


def test_officers_cut_to_the_agency_cas_end_are_told_to_roll_it_over(env: tuple) -> None:  # type: ignore[type-arg]
    """An officer certificate issued near the agency issuing CA's end is cut to it, and a
    renewal would be too: the notice names the rollover, not a renewal (verification
    probe, F4)."""
    ca, _, _ = env
    agency_end = ca.issuers["agency"].certificate.not_valid_after_utc
    ca.clock = lambda: agency_end - datetime.timedelta(days=20)
    app = ca.apply("agency", {"agency_id": "customs", "person_name": "Late Officer"})
    grant = ca.approve_at_ceremony(app.id, "ceremony:test")
    issued = ca.enroll(grant.code, "agency", csr(KeyType.P256.generate()))
    assert issued.certificate.not_valid_after_utc == agency_end
    notices = ca.officer_notices(agency_end - datetime.timedelta(days=10))
    (customs,) = [n for n in notices if "member agency customs" in n]
    assert "with the issuing CA that issued it" in customs and "eport ca rotate agency" in customs


def test_a_stale_application_is_no_longer_approved(env: tuple) -> None:  # type: ignore[type-arg]
    """EPORT_APPLICATION_DAYS (90 by default): an application that waited longer is not
    approved (its vetting would rest on stale evidence) and nothing is written; it may
    still be rejected, and the applicant applies again."""
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    timely = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Timely Co."})
    stale = ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": "Stale Co."})
    assert ca.pending_until(stale) == stale.created_at + datetime.timedelta(days=90)
    start = ca.clock()
    ca.clock = lambda: start + datetime.timedelta(days=89, hours=23)
    assert ca.approve(officer_caller, timely.id).code
    assert ca.pending_until(ca.application(timely.id)) is None  # decided
    ca.clock = lambda: stale.created_at + datetime.timedelta(days=90)
    before = counts(sessions)
    with pytest.raises(Conflict, match=r"more than 90 days ago.*applies again \(eport apply\)"):
        ca.approve(officer_caller, stale.id)
    assert counts(sessions) == before
    assert ca.reject(officer_caller, stale.id, "waited too long").state.value == "rejected"
    again = ca.apply("enterprise", {"uscc": stale.uscc, "legal_name": "Stale Co."})
    assert ca.approve(officer_caller, again.id).code


def test_the_one_name_rule_compares_names_as_relying_parties_do(  # type: ignore[no-untyped-def]
    env: tuple,  # type: ignore[type-arg]
    monkeypatch,
) -> None:
    """RFC 5280 §7.1 (RFC 4518): 王⼯ (KANGXI RADICAL WORK) is 王工; a name certified
    before invisible characters were refused ("Wang<U+FE0F>Gong") is "WangGong". Refused
    at an officer's approval and at a ceremony's, naming the holder's name as certified;
    nothing is written."""
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    staff = ca.apply("agency", {"agency_id": "customs", "person_name": "王⼯"})
    ca.enroll(ca.approve(officer_caller, staff.id).code, "agency", csr(KeyType.P256.generate()))
    vetted = ca._vet_input
    legacy = {"agency_id": "customs", "agency_name": ca.policies.members.get("customs").name}
    monkeypatch.setattr(
        ca, "_vet_input", lambda _c, _d: ({**legacy, "person_name": "Wang\ufe0fGong"}, None)
    )
    old = ca.apply("agency", {})
    monkeypatch.setattr(ca, "_vet_input", vetted)
    ca.enroll(ca.approve_at_ceremony(old.id, "test").code, "agency", csr(KeyType.P256.generate()))
    same = ca.apply("agency", {"agency_id": "customs", "person_name": "王工"})
    later = ca.apply("agency", {"agency_id": "customs", "person_name": "WangGong"})
    before = counts(sessions)
    with pytest.raises(Conflict, match="'王工' is the same name as '王<U\\+2F2F KANGXI RADICAL"):
        ca.approve(officer_caller, same.id)
    with pytest.raises(Conflict, match="'WangGong' is the same name as 'Wang<U\\+FE0F VARIATION"):
        ca.approve_at_ceremony(later.id, "test")
    assert counts(sessions) == before
    assert ca.application(same.id).state.value == "pending"


@pytest.mark.parametrize("field", ["legal_name", "person_name", "operator_name", "operator_id"])
def test_invisible_characters_are_refused_in_every_name_field(  # type: ignore[no-untyped-def]
    env: tuple,  # type: ignore[type-arg]
    tmp_path: Path,
    field: str,
) -> None:
    ca, sessions, officer = env
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    ent, _ = enrolled_enterprise(ca, officer_caller, tmp_path, "Field Probe Co.")
    before = counts(sessions)
    for ch, said in (
        ("\u3164", "U+3164 HANGUL FILLER"),
        ("\U000e0100", "U+E0100 VARIATION SELECTOR-17"),
    ):
        with pytest.raises(
            BadRequest, match=r"invisible or control character \(" + re.escape(said)
        ):
            if field == "legal_name":
                ca.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": f"A{ch}B Co."})
            elif field == "person_name":
                ca.apply("auditor", {"agency_id": "customs", "person_name": f"A{ch}B"})
            elif field == "operator_name":
                ca.authorize_operator(ent, f"Li{ch}Wei", "E1")
            else:
                ca.authorize_operator(ent, "Li Wei", f"E{ch}1")
    assert counts(sessions) == before


@pytest.mark.parametrize("grouped", [True, False], ids=["group-writer", "session"])
def test_a_hold_committed_after_an_operator_code_was_checked_refuses_it(
    env: tuple,  # type: ignore[type-arg]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    grouped: bool,
) -> None:
    """An operator's enrollment checked its enterprise's hold before signing only: one
    checked just before the hold committed was issued after it (race probe, session 27:
    5 of 8 rounds). Decided where it is stored, on both write paths: refused, the code
    unused, and it enrolls once the hold is lifted."""
    ca, sessions, officer = env
    ca.store._grouped = grouped
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    ent_caller, ent = enrolled_enterprise(ca, officer_caller, tmp_path, "Held Meanwhile Co.")
    grant = ca.authorize_operator(ent_caller, "Li Wei", "H1")
    Revocation(ca).suspend(officer_caller, ent.record.serial)
    # the check before signing ran before the hold committed
    monkeypatch.setattr(ca, "_refuse_held_enterprise", lambda *a: None)
    before = counts(sessions)
    with pytest.raises(Conflict, match=f"{ent.record.serial_hex} is on hold: .*stays unused"):
        ca.enroll(grant.code, "operator", csr(KeyType.P256.generate()))
    assert counts(sessions) == before
    Revocation(ca).resume(officer_caller, ent.record.serial)
    op = ca.enroll(grant.code, "operator", csr(KeyType.P256.generate()))
    assert op.record.profile == "operator"


@pytest.mark.parametrize("grouped", [True, False], ids=["group-writer", "session"])
def test_a_renewed_enterprise_s_old_certificate_on_hold_holds_no_operator(
    env: tuple,  # type: ignore[type-arg]
    tmp_path: Path,
    grouped: bool,
) -> None:
    """The hold that refuses an operator's enrollment is that of the enterprise's
    credential lasting longest, on every write path: the group writer read any one, so an
    enterprise that renewed and had its old certificate held got its operators refused
    there, after signing, while the session path issued them (review, session 27)."""
    ca, _, officer = env
    ca.store._grouped = grouped
    officer_caller = ca.caller(signed_by(officer / "officer.pem"))
    old_caller, old = enrolled_enterprise(ca, officer_caller, tmp_path, "Renewed Held Co.")
    renewed = ca.renew(old_caller, csr(KeyType.P256.generate()))
    path = tmp_path / "renewed.pem"
    path.write_bytes(renewed.certificate.public_bytes(serialization.Encoding.PEM))
    new_caller = ca.caller(signed_by(path))
    Revocation(ca).suspend(officer_caller, old.record.serial)
    grant = ca.authorize_operator(new_caller, "Li Wei", "RH1")
    op = ca.enroll(grant.code, "operator", csr(KeyType.P256.generate()))
    assert op.record.profile == "operator"
