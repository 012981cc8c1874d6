"""Chinese names end to end against a real ``eport serve --dev``: an enterprise, its
operators and the certificates made for them, with names as Chinese enterprises write
them (full-width parentheses and letters, U+3000 spaces, long registered names)."""

from __future__ import annotations

import csv
import datetime
import io
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import requests
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, inspect

from ca.signedreq import SCHEME, sign_request
from cli.keyfiles import load_identity
from tests.conftest import EPORT, PG_BIN, Postgres, Server, base_env, free_port
from tests.helpers import cert_of, creds, enroll_enterprise, fresh_uscc, jrun

# 36 characters, 108 bytes of UTF-8: a registered name of this length is common.
LONG_NAME = "厦门象屿保税区（ＡＢＣ）国际物流供应链管理服务集团股份有限公司厦门分公司"
# X.520 ub-organization-name and ub-common-name are 64 characters (RFC 5280 App. A).
AT_BOUND = "厦" * 62 + "公司"


def _subject_attr(path: Path, oid: object) -> str:
    values = cert_of(path).subject.get_attributes_for_oid(oid)  # type: ignore[arg-type]
    assert len(values) == 1
    return str(values[0].value)


@pytest.mark.parametrize("name", [LONG_NAME, AT_BOUND])
def test_a_long_chinese_name_is_certified_as_registered(
    sqlite_server: Server, tmp_path: Path, name: str
) -> None:
    """X.520 bounds O and CN at 64 characters, not 64 bytes: a name of 36 or 64 Chinese
    characters (108 or 192 bytes) was refused with 'longer than 64 bytes (UTF-8)'."""
    assert len(name) <= 64 < len(name.encode())
    ent = enroll_enterprise(sqlite_server, tmp_path, f"\u3000{name}\u3000")
    assert _subject_attr(ent, NameOID.ORGANIZATION_NAME) == name  # U+3000 trimmed
    assert _subject_attr(ent, NameOID.COMMON_NAME) == name

    operator = name[:40] + "（李伟）"
    grant = jrun(sqlite_server, "operator", "add", "--name", operator, "--id", "E1", *creds(ent))
    out = tmp_path / "op"
    jrun(sqlite_server, "enroll", "--code", grant["enrollment_code"], "--profile", "operator",
         "--out", str(out))  # fmt: skip
    assert _subject_attr(out, NameOID.COMMON_NAME) == operator
    assert _subject_attr(out, NameOID.ORGANIZATION_NAME) == name
    # read back by the CLI and the token service with no warning on stderr
    shown = sqlite_server.eport("cert", "show", str(out / "cert.pem"))
    assert f"CN={operator}," in shown.stdout and shown.stderr == ""
    cfg = str(tmp_path / "cfg")
    login = sqlite_server.eport("login", *creds(out), "--json", EPORT_CONFIG_DIR=cfg)
    assert login.stderr == ""
    who = sqlite_server.eport("whoami", "--json", EPORT_CONFIG_DIR=cfg)
    assert json.loads(who.stdout)["name"] == operator

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed (make sysdeps installs it)")
    shown = subprocess.run(
        [openssl, "x509", "-in", str(ent / "cert.pem"), "-noout", "-subject", "-nameopt", "utf8"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"O={name}, " in shown and shown.rstrip().endswith(f"CN={name}")
    parsed = subprocess.run(
        [openssl, "asn1parse", "-in", str(ent / "cert.pem")],
        capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    assert parsed.count(f"UTF8STRING        :{name}") == 2


def test_json_over_http_carries_chinese_as_utf8(sqlite_server: Server, tmp_path: Path) -> None:
    """JSON over HTTP is UTF-8 (RFC 8259 §8.1): the CA's answers, its problem documents
    and the token service's answers carry the names as written, not as \\u escapes
    (Flask's default), so that curl shows them; the media types stay Flask's."""
    srv = sqlite_server
    name = "厦门报关服务有限公司"
    ent = enroll_enterprise(srv, tmp_path, name)

    def utf8(r: requests.Response, media_type: str, *texts: str) -> None:
        assert r.headers["Content-Type"] == media_type, r.headers
        for text in texts:
            assert text.encode() in r.content, (text, r.content)
        assert b"\\u" not in r.content, r.content

    pw = tmp_path / "pw.txt"
    pw.write_text("test-passphrase-123")
    signer = load_identity(ent / "cert.pem", ent / "key.pem", pw)
    body = json.dumps({"name": "陈静", "operator_id": "U8"}).encode()
    jws = sign_request(
        signer.key,
        signer.chain,
        "POST",
        "/ca/v1/operators",
        body,
        datetime.datetime.now(datetime.UTC),
    )
    added = requests.post(
        f"{srv.url}/ca/v1/operators",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"{SCHEME} {jws}"},
        timeout=10,
    )
    assert added.status_code == 201, added.text
    utf8(added, "application/json", '"operator_name":"陈静"', name)
    grant = added.json()
    missing = requests.get(f"{srv.url}/ca/v1/issuers/{name}.cer", timeout=10)
    assert missing.status_code == 404
    utf8(missing, "application/problem+json", f"'{name}'")
    out = tmp_path / "op"
    jrun(srv, "enroll", "--code", grant["enrollment_code"], "--profile", "operator",
         "--out", str(out))  # fmt: skip
    cfg = tmp_path / "cfg"
    srv.eport("login", *creds(out), EPORT_CONFIG_DIR=str(cfg))
    (saved,) = cfg.glob("session-*.json")
    refresh = json.loads(saved.read_text())["refresh_token"]
    session = requests.post(f"{srv.url}/auth/session", data={"refresh_token": refresh}, timeout=10)
    assert session.status_code == 200, session.text
    utf8(session, "application/json", '"name":"陈静"')
    # the CLI decodes the JSON: what it prints is as before
    who = srv.eport("whoami", EPORT_CONFIG_DIR=str(cfg)).stdout
    assert "Name:         陈静\n" in who


def test_a_name_over_64_characters_is_refused_and_changes_nothing(
    sqlite_server: Server, tmp_path: Path
) -> None:
    ent = enroll_enterprise(sqlite_server, tmp_path, "厦门港务贸易有限公司")
    before = jrun(sqlite_server, "ra", "list", *sqlite_server.officer())["applications"]
    res = sqlite_server.eport("apply", "--uscc", fresh_uscc(), "--name", "厦" * 65, check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "eport: error: the legal name (legal_name) has 65 characters, more than the 64 "
        "allowed (HTTP 400)"
    ]
    res = sqlite_server.eport(
        "operator", "add", "--name", "李" * 65, "--id", "E2", *creds(ent), check=False
    )
    assert res.returncode == 1
    assert "operator name has 65 characters, more than the 64 allowed" in res.stderr
    # an operator id typed in full width (a serialNumber, PrintableString) is refused,
    # saying what to type instead
    res = sqlite_server.eport(
        "operator", "add", "--name", "李伟", "--id", "Ｅ１０２４", *creds(ent), check=False
    )
    assert res.returncode == 1
    assert res.stderr.rstrip().endswith(
        "('Ｅ１０２４' is typed in full width: type it as 'E1024') (HTTP 400)"
    )
    after = jrun(sqlite_server, "ra", "list", *sqlite_server.officer())["applications"]
    assert after == before


def test_an_audit_export_for_excel_carries_a_bom(sqlite_server: Server, tmp_path: Path) -> None:
    """Excel opens a CSV without a byte order mark in the system's code page (GBK on a
    Chinese Windows) and shows UTF-8 names as mojibake; --bom writes the mark it needs.
    Without --bom the CSV is plain UTF-8, as before, for programs."""
    name = "厦门（ＡＢＣ）报关行有限公司"
    enroll_enterprise(sqlite_server, tmp_path, name)
    who = sqlite_server.auditor()
    query = ["audit", "log", *who, "--subject", "报关行", "--format", "csv"]

    excel = tmp_path / "events.csv"
    sqlite_server.eport(*query, "--bom", "--out", str(excel))
    raw = excel.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbflog_index,")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert {r["subject"] for r in rows if r["type"] == "application.submitted"} == {name}

    piped = sqlite_server.eport(*query, "--bom").stdout
    assert piped.startswith("\ufefflog_index,") and name in piped
    plain = sqlite_server.eport(*query).stdout
    assert plain.startswith("log_index,") and name in plain

    res = sqlite_server.eport("audit", "log", *who, "--format", "json", "--bom", check=False)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("eport: error: --bom goes with --format csv only")


def test_a_uscc_typed_in_full_width_is_the_same_code(sqlite_server: Server) -> None:
    """A Chinese input method in full-width mode types ９１３５…ＭＡ…; that was refused
    ('character '９' at position 1 ... is not in the USCC alphabet')."""
    uscc = fresh_uscc()
    typed = "".join(chr(ord(c) + 0xFEE0) for c in uscc)
    app = jrun(sqlite_server, "apply", "--uscc", typed, "--name", "全角代码贸易有限公司")
    shown = jrun(sqlite_server, "ra", "list", *sqlite_server.officer())["applications"]
    assert [a["uscc"] for a in shown if a["id"] == app["id"]] == [uscc]
    # the CA reads it so too (a client that sends it as typed)
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{sqlite_server.url}/ca/v1/applications",
            data=json.dumps(
                {"subject_class": "enterprise", "uscc": typed, "legal_name": "全角直达有限公司"}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
    ) as resp:
        assert json.load(resp)["uscc"] == uscc


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_output_that_cannot_hold_chinese_still_prints(
    sqlite_server: Server, tmp_path: Path, encoding: str
) -> None:
    """Output to a file on a Windows (cp1252) or Latin-1 system: a Chinese name made
    eport fail after the work was done ('unexpected error: UnicodeEncodeError(...)',
    the whole output escaped in one line). Text now shows \\u escapes; --json is
    ASCII JSON that reads back as the name."""
    name = "厦门港务贸易有限公司"
    ent = enroll_enterprise(sqlite_server, tmp_path, name)
    env = {"PYTHONIOENCODING": encoding}
    shown = sqlite_server.eport("cert", "show", str(ent / "cert.pem"), **env)
    assert shown.stdout.startswith("Subject:     CN=\\u53a6\\u95e8") and shown.stderr == ""
    cert = json.loads(
        sqlite_server.eport("cert", "show", str(ent / "cert.pem"), "--json", **env).stdout
    )
    assert f"O={name}," in json.dumps(cert, ensure_ascii=False)
    grant = sqlite_server.eport(
        "operator", "add", "--name", "李伟", "--id", "E3", *creds(ent), "--json", **env
    )
    assert (
        grant.stdout.isascii()
        and json.loads(grant.stdout)["application"]["subject"]["operator_name"] == "李伟"
    )
    exported = sqlite_server.eport(
        "audit", "log", *sqlite_server.auditor(), "--subject", "李伟", "--format", "json", **env
    ).stdout
    assert exported.isascii() and "李伟" in {e["subject"] for e in json.loads(exported)}


@pytest.mark.postgres
def test_a_postgresql_database_that_cannot_hold_chinese_is_refused_at_start(
    postgres: Postgres, tmp_path: Path
) -> None:
    """A cluster made under the C locale is SQL_ASCII (Debian's pg_createcluster does so
    on a server with LANG=C): eport serve started on it, and every application with a
    Chinese name was 'the server failed; nothing was changed (HTTP 500)'. It now refuses
    to start in one line, for the CA's and for the token service's database, before any
    table is made."""
    urls = {}
    for enc in ("SQL_ASCII", "LATIN1"):
        name = f"eport_{enc.lower()}_{free_port()}"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "createdb"), "-h", "127.0.0.1",
             "-p", str(postgres.port), "-E", enc, "-T", "template0", "--locale=C", name],
            check=True, capture_output=True,
        )  # fmt: skip
        urls[enc] = postgres.url(name)
    for setting, enc, what in (
        ("EPORT_DATABASE_URL", "SQL_ASCII", "CA"),
        ("EPORT_AUTH_DATABASE_URL", "LATIN1", "token service"),
    ):
        env = base_env()
        env[setting] = urls[enc]
        res = subprocess.run(
            [EPORT, "serve", "--dev", "--data-dir", str(tmp_path / enc), "--port",
             str(free_port())],
            capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert res.returncode == 1, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("WARNING")]
        assert lines == [
            f"eport: error: the {what} database {urls[enc]} is in the encoding {enc}, which "
            "cannot hold Chinese names: use a database created with ENCODING 'UTF8' "
            "(createdb -E UTF8 -T template0 NAME)"
        ]
        engine = create_engine(urls[enc])
        try:
            assert inspect(engine).get_table_names() == []
        finally:
            engine.dispose()
