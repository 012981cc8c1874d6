"""Names that read the same, and names that show as nothing (name look-alike probe).

1. The one-name rule of a member agency's staff (one person, one certificate in force
   per name) compared names by ASCII case only: 王⼯ (U+2F2F KANGXI RADICAL WORK) and 王工,
   "Li Wei" and full-width "Ｌｉ Ｗｅｉ", 李伟 and 李　伟 were certified to one agency,
   separate users (``agency:customs:<name>``) that read the same everywhere. Names are
   now compared as RFC 5280 §7.1 asks (RFC 4518: NFKC, case folding, blanks), and kept as
   typed.
2. A name of U+3164 HANGUL FILLER alone was certified as a blank ``CN``; variation
   selectors, U+034F, U+2800 and the other Hangul fillers passed inside names. Every
   default-ignorable or blank-looking character is refused, naming its code point.

Driven through the real server and CLI, with the comparison and the refusal unit-tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.models import ApplicationRow, CertificateRow, EnrollmentCodeRow, EventRow
from ca.names import code_point, dn_key, hidden_character, marked, name_key, spelled_apart
from tests.conftest import Server
from tests.helpers import creds, enroll_enterprise, jrun, row_counts

TABLES = (ApplicationRow, CertificateRow, EnrollmentCodeRow, EventRow)


def _one_line_refusal(server: Server, *args: str) -> str:
    res = server.eport(*args, check=False)
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eport: error: "), res.stderr
    return lines[0]


def _staff(
    server: Server, tmp: Path, name: str, *, cls: str = "agency", agency: str = "customs"
) -> x509.Certificate:
    """A member agency's officer (or auditor) named ``name``, applied for, approved by
    the agency's development officer and enrolled: its certificate."""
    app = jrun(server, "apply", "--class", cls, "--agency", agency, "--name", name)
    grant = jrun(server, "ra", "approve", app["id"], *server.officer(agency))
    out = tmp / app["id"]
    jrun(server, "enroll", "--code", grant["enrollment_code"], "--profile", cls, "--out", str(out))
    return x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())


def _cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


# -- 1. names that read the same ---------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "applied", "shown"),
    [
        ("王⼯", "王工", "王<U+2F2F KANGXI RADICAL WORK>"),
        ("Li Wei", "Ｌｉ Ｗｅｉ", "Li Wei"),
        ("李伟", "李　伟", "李伟"),
        ("Zhao Lei", "ZHAO  LEI", "Zhao Lei"),
    ],
)
def test_a_name_that_reads_as_one_in_force_is_refused_naming_it(
    sqlite_server: Server, tmp_path: Path, held: str, applied: str, shown: str
) -> None:
    """Each pair was certified twice to customs; the second is now refused at approval,
    the refusal naming the holder's name as certified (a look-alike character by its code
    point) and its serial. Another agency's staff of that name is another person."""
    server = sqlite_server
    first = _staff(server, tmp_path, held)
    assert _cn(first) == held  # certified as typed: no NFKC of the stored name
    app = jrun(server, "apply", "--class", "agency", "--agency", "customs", "--name", applied)
    before = row_counts(server.database_url, TABLES)
    line = _one_line_refusal(server, "ra", "approve", app["id"], *server.officer())
    assert "already holds certificate" in line and format(first.serial_number, "x") in line
    assert f"is the same name as '{shown}', as certified" in line and "(HTTP 409)" in line
    assert row_counts(server.database_url, TABLES) == before
    # the same name in another agency: another person, certified
    other = _staff(server, tmp_path, applied, agency="tax")
    assert _cn(other) == " ".join(applied.split())


def test_an_auditor_s_look_alike_name_is_refused_too(sqlite_server: Server, tmp_path: Path) -> None:
    """Auditors are ``audit:<member>:<CN>`` to every service: the same rule."""
    server = sqlite_server
    _staff(server, tmp_path, "Qian Audit", cls="auditor")
    app = jrun(server, "apply", "--class", "auditor", "--agency", "customs",
               "--name", "ＱＩＡＮ ａｕｄｉｔ")  # fmt: skip
    line = _one_line_refusal(server, "ra", "approve", app["id"], *server.officer())
    assert "already holds certificate" in line and "'Qian Audit', as certified" in line


def test_two_approvals_of_one_name_enroll_one(server: Server, tmp_path: Path) -> None:
    """Two look-alike names of one agency, both approved before either enrolled (an
    approval sees certificates, not codes): the first enrolls, and the second is refused
    where the issuance is stored, with nothing of it stored and its code unused, so it
    enrolls once the first is revoked. The CLI says so before it makes a key."""
    apps = [
        jrun(server, "apply", "--class", "agency", "--agency", "customs", "--name", name)
        for name in ("Sun Hai", "ＳＵＮ　ＨＡＩ")
    ]
    codes = [
        jrun(server, "ra", "approve", a["id"], *server.officer())["enrollment_code"] for a in apps
    ]
    first = jrun(server, "enroll", "--code", codes[0], "--profile", "agency",
                 "--out", str(tmp_path / "a"))  # fmt: skip
    before = row_counts(server.database_url, TABLES)
    line = _one_line_refusal(
        server, "enroll", "--code", codes[1], "--profile", "agency", "--out", str(tmp_path / "b")
    )
    assert f"already holds certificate {first['serial']}" in line, line
    assert "'ＳＵＮ ＨＡＩ' is the same name as 'Sun Hai', as certified" in line, line
    assert "(HTTP 409)" in line and not (tmp_path / "b").exists()
    # the check the CLI asks before it makes a key says so
    check = {"code": codes[1], "profile": "agency"}
    got = requests.post(server.url + "/ca/v1/enroll/check", json=check, timeout=30)
    assert got.status_code == 409 and got.json()["certificate"] == first["serial"], got.text
    # straight to the API, past that check: refused where it is stored
    from ca.keys import KeyType
    from cli.keyfiles import csr_for

    body = {"code": codes[1], "profile": "agency", "csr": csr_for(KeyType.P256.generate()).decode()}
    got = requests.post(server.url + "/ca/v1/enroll", json=body, timeout=30)
    assert got.status_code == 409, got.text
    assert got.headers["Content-Type"] == "application/problem+json"
    assert got.json()["certificate"] == first["serial"], got.json()
    assert "is the same name as 'Sun Hai', as certified" in got.json()["detail"]
    assert row_counts(server.database_url, TABLES) == before
    # the code was not used: once the first is revoked, it enrolls
    jrun(server, "revoke", "--serial", first["serial"], "--reason", "superseded",
         *server.officer())  # fmt: skip
    second = jrun(server, "enroll", "--code", codes[1], "--profile", "agency",
                  "--out", str(tmp_path / "b"))  # fmt: skip
    assert second["serial"] != first["serial"]


def test_both_ways_of_storing_an_issuance_keep_the_one_name_rule(tmp_path: Path) -> None:
    """The group writer and the session's way (used while the log has no head) refuse a
    staff certificate whose name is in force, revoked ones and other profiles aside."""
    import datetime

    from sqlalchemy.orm import sessionmaker

    from ca.db import make_engine, upgrade
    from ca.errors import Conflict
    from ca.groupwrite import IssuanceWriter
    from ca.records import (
        CertificateRecord,
        Event,
        EventType,
        IssuanceWrite,
        StatusRecord,
        StatusState,
    )
    from ca.store import SqlStore

    url = f"sqlite:///{tmp_path / 'ca.db'}"
    upgrade(url)
    engine = make_engine(url)
    store = SqlStore(sessionmaker(engine, expire_on_commit=False))
    writer = IssuanceWriter(engine, fallback=lambda item: 0, log=False)
    now = datetime.datetime(2026, 11, 29, 9, 0, tzinfo=datetime.UTC)

    def record(
        serial: int, name: str, profile: str = "agency", issuer: str = "agency"
    ) -> CertificateRecord:
        return CertificateRecord(
            serial=serial,
            issuer_id=issuer,
            profile=profile,
            application_id=None,
            uscc=None,
            subject=f"CN={name},OU=customs,O=E-Port",
            spki_sha256=f"{serial:064x}",
            cert_sha256=f"{serial + 1:064x}",
            not_before=now,
            not_after=now.replace(year=2028),
            der=b"\x30\x00",
        )

    def item(name: str) -> IssuanceWrite:
        ev = Event(type=EventType.CERTIFICATE_ISSUED, at=now, actor="test")
        return IssuanceWrite(
            record(0x9000, name), ev, now=now, sole_name=("agency",), void_issuers=("agency-0",)
        )

    try:
        with store.transaction() as tx:
            tx.add_certificate(record(0x1000, "王工"))
            tx.add_certificate(record(0x2000, "Gone Name"))
            tx.add_certificate(record(0x3000, "Auditor Name", profile="auditor"))
            # of a generation revoked on the root CRL (REVOKE-INTERMEDIATE): not in force
            tx.add_certificate(record(0x5000, "Void Name", issuer="agency-0"))
            tx.put_status(StatusRecord(0x2000, "agency", StatusState.REVOKED, now, 4, None, now))
        raw = engine.raw_connection()
        try:
            with pytest.raises(Conflict, match=r"already holds certificate 1000 \(agency"):
                writer._refuse_same_name(raw.cursor(), item("王⼯"))
            for free in ("gone name", "Auditor Name", "王二", "void name"):
                writer._refuse_same_name(raw.cursor(), item(free))
        finally:
            raw.close()
        with pytest.raises(Conflict, match="is the same name as '王<U"):
            store.commit_by_session(item("王⼯"))
        assert store.commit_by_session(item("GONE NAME")) > 0
        with store.transaction() as tx:  # and the approval's query
            assert (
                tx.named_in_force("CN=Void Name,OU=customs,O=E-Port", ["agency"], now) is not None
            )
            assert (
                tx.named_in_force(
                    "CN=Void Name,OU=customs,O=E-Port", ["agency"], now, ("agency-0",)
                )
                is None
            )
    finally:
        engine.dispose()


def test_names_that_read_differently_are_different_names(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """The fold is no wider than RFC 4518: a blank between Latin words counts, and a
    different character is a different name."""
    server = sqlite_server
    _staff(server, tmp_path, "Sun Li")
    assert _cn(_staff(server, tmp_path, "SunLi")) == "SunLi"
    _staff(server, tmp_path, "王甲")
    assert _cn(_staff(server, tmp_path, "王乙")) == "王乙"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("王⼯", "王工"),  # U+2F2F KANGXI RADICAL WORK, U+5DE5
        ("Li Wei", "Ｌｉ Ｗｅｉ"),  # full width
        ("李伟", "李　伟"),  # U+3000 between two ideographs
        ("李伟", "李 伟"),
        ("Wang Fang", "wang  fang"),
        ("Straße", "STRASSE"),  # full case folding, not lower()
        ("厦门（国际）港务", "厦门(国际)港务"),
        ("A\ufe0fB", "AB"),  # a certified name from before such characters were refused
        ("ǅ", "dž"),  # a compatibility digraph
    ],
)
def test_name_key_makes_look_alikes_one(a: str, b: str) -> None:
    assert name_key(a) == name_key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [("Li Wei", "LiWei"), ("Li Wei", "Li Wie"), ("王甲", "王乙"), ("Wang (A)", "Wang A")],
)
def test_name_key_keeps_different_names_apart(a: str, b: str) -> None:
    assert name_key(a) != name_key(b)


def test_dn_key_compares_each_value_and_keeps_structure() -> None:
    base = "OU=Registration Authority,organizationIdentifier=GV:CN-customs,C=CN"
    shouted = "OU=REGISTRATION AUTHORITY,organizationIdentifier=GV:CN-CUSTOMS,C=cn"
    assert dn_key(f"CN=王⼯,{base}") == dn_key(f"CN=王工,{shouted}")
    # an escaped comma in a value is not a new attribute, whatever its width
    assert dn_key(f"CN=Wang\\, Fang,{base}") != dn_key(f"CN=Wang,OU=Fang,{base}")
    assert dn_key(f"CN=Wang\\, Fang,{base}") == dn_key(f"CN=wang， fang,{base}")
    assert dn_key(f"CN=A,{base}") != dn_key(f"CN=A,{base.replace('customs', 'tax')}")
    assert spelled_apart(f"CN=王工,{base}", f"CN=王⼯,{base}") == [("王工", "王⼯")]
    assert marked("王⼯", "王工") == "王<U+2F2F KANGXI RADICAL WORK>"


# -- 2. names that show as nothing -------------------------------------------------------

INVISIBLE = [
    ("\ufe0f", "U+FE0F VARIATION SELECTOR-16"),
    ("\U000e0100", "U+E0100 VARIATION SELECTOR-17"),
    ("\u034f", "U+034F COMBINING GRAPHEME JOINER"),
    ("\u2800", "U+2800 BRAILLE PATTERN BLANK"),
    ("\u115f", "U+115F HANGUL CHOSEONG FILLER"),
    ("\u1160", "U+1160 HANGUL JUNGSEONG FILLER"),
    ("\u3164", "U+3164 HANGUL FILLER"),
    ("\uffa0", "U+FFA0 HALFWIDTH HANGUL FILLER"),
    ("\u180b", "U+180B MONGOLIAN FREE VARIATION SELECTOR ONE"),
    ("\u17b4", "U+17B4 KHMER VOWEL INHERENT AQ"),
    ("\u200b", "U+200B ZERO WIDTH SPACE"),
]


@pytest.mark.parametrize(("ch", "said"), INVISIBLE)
def test_an_invisible_character_is_refused_in_every_name(
    sqlite_server: Server, tmp_path: Path, ch: str, said: str
) -> None:
    """In an agency officer's, an auditor's, an enterprise's and an operator's name: one
    line naming the code point, 400, nothing written."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, f"Invisible Probe {ord(ch):X} Co.")
    before = row_counts(server.database_url, TABLES)
    attempts = [
        ("apply", "--class", "agency", "--agency", "customs", "--name", f"Wang{ch}Gong"),
        ("apply", "--class", "auditor", "--agency", "customs", "--name", f"王{ch}工"),
        ("apply", "--uscc", "91350100M000100Y43", "--name", f"Harbour{ch} Trading Co."),
        ("operator", "add", "--name", f"Li{ch} Wei", "--id", "E7", *creds(ent)),
    ]
    for args in attempts:
        line = _one_line_refusal(server, *args)
        assert f"contains an invisible or control character ({said})" in line, line
        assert "(HTTP 400)" in line, line
    assert row_counts(server.database_url, TABLES) == before


@pytest.mark.parametrize("name", ["\u3164", "\u3164 \u2800", "\u115f\u1160", "\u3000\ufe0f"])
def test_a_name_of_blanks_and_invisible_characters_is_empty(
    sqlite_server: Server, name: str
) -> None:
    """``--name $'\\u3164'`` was certified as ``CN=ㅤ``, shown blank everywhere."""
    server = sqlite_server
    before = row_counts(server.database_url, TABLES)
    line = _one_line_refusal(
        server, "apply", "--class", "agency", "--agency", "customs", "--name", name
    )
    assert "the name (person_name) is empty: it has only blank or invisible characters (U+" in line
    assert row_counts(server.database_url, TABLES) == before


def test_hidden_character_finds_every_default_ignorable_code_point() -> None:
    """Unicode's Default_Ignorable_Code_Point list (DerivedCoreProperties.txt), spot
    checked at each range's ends, and the blank-looking symbols; visible names pass."""
    for code in (
        0xAD, 0x34F, 0x61C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180F, 0x200B,
        0x200F, 0x202A, 0x202E, 0x2060, 0x206F, 0x3164, 0xFE00, 0xFE0F, 0xFEFF, 0xFFA0,
        0xFFF0, 0xFFF8, 0x1BCA0, 0x1BCA3, 0x1D173, 0x1D17A, 0xE0000, 0xE0001, 0xE007F,
        0xE0100, 0xE01EF, 0xE0FFF, 0x2800,
    ):  # fmt: skip
        assert hidden_character(f"a{chr(code)}b") == chr(code), hex(code)
    for name in ("厦门（国际）港务有限公司", "阿依古丽·买买提", "김민수", "さとう", "Ｌｉ Ｗｅｉ"):
        assert hidden_character(name) is None, name
    assert code_point("\u3164") == "U+3164 HANGUL FILLER"
    assert code_point("\U000e0fff") == "U+E0FFF"  # unassigned: no name
