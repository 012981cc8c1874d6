"""Defects found by probing the ``eport`` command (QA probe 3), each driven through the
real command against a real server: what a user typed, what the command did, and what
it left on disk or on the server."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cli import keyfiles
from tests.conftest import EPORT, Server, free_port, need
from tests.helpers import enroll_enterprise, fresh_uscc
from tests.test_cli_errors import approved_code, offline, one_line
from tests.test_enrollment_flow import counts, jrun


def _private_regular(path: Path) -> None:
    """``path`` is a regular file of its own (not a symlink) with mode 0600."""
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)


def test_a_stale_temporary_file_does_not_make_the_key_readable(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """key.pem (and bundle.p12) were written through a fixed ``<name>.tmp`` opened with
    O_TRUNC: one left behind with mode 0644 made the new key 0644, and a symlink there
    was followed, the key written to wherever it pointed (and key.pem made that
    symlink). The key is now always a new 0600 regular file; what was left there is not
    touched."""
    server = sqlite_server
    # a stale 0644 key.pem.tmp and a symlinked bundle.p12.tmp
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "key.pem.tmp").write_bytes(b"")
    os.chmod(loose / "key.pem.tmp", 0o644)
    stolen_p12 = tmp_path / "stolen.p12"
    (loose / "bundle.p12.tmp").symlink_to(stolen_p12)
    code = approved_code(server, "Stale Temporary Co.")
    args = ["--code", code, "--profile", "enterprise", "--out", str(loose), "--p12"]
    jrun(server, "enroll", *args)
    _private_regular(loose / "key.pem")
    _private_regular(loose / "bundle.p12")
    assert not stolen_p12.exists()
    assert stat.S_IMODE(os.stat(loose / "key.pem.tmp").st_mode) == 0o644  # left as it was

    # a symlinked key.pem.tmp, at enrollment and at renewal
    stolen = tmp_path / "stolen.pem"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "key.pem.tmp").symlink_to(stolen)
    code = approved_code(server, "Symlinked Temporary Co.")
    jrun(server, "enroll", "--code", code, "--profile", "enterprise", "--out", str(linked))
    _private_regular(linked / "key.pem")
    assert not stolen.exists()

    renewed = tmp_path / "renewed"
    renewed.mkdir()
    (renewed / "key.pem.tmp").symlink_to(stolen)
    creds = ["--cert", str(loose / "cert.pem"), "--key", str(loose / "key.pem")]
    jrun(server, "renew", *creds, "--out", str(renewed))
    _private_regular(renewed / "key.pem")
    assert not stolen.exists()
    # nothing else is left beside the files written
    assert sorted(p.name for p in renewed.iterdir()) == [
        "cert.pem",
        "chain.pem",
        "key.pem",
        "key.pem.tmp",
    ]


def test_an_out_that_cannot_be_looked_at_is_one_line(sqlite_server: Server, tmp_path: Path) -> None:
    """--out with a name over NAME_MAX (or under a directory that may not be searched)
    made Path.exists() raise: 'eport: unexpected error: OSError(36, ...)' for enroll,
    renew and backup. It is 'cannot write OUT/key.pem: File name too long', exit 1,
    before a key is made or anything is sent: the code stays good."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Long Out Co.")
    code = approved_code(server, "Long Out Applicant Co.")
    long = tmp_path / ("a" * 300)
    before = counts(server)
    args = ["--code", code, "--profile", "enterprise", "--out", str(long / "x")]
    one_line(server.eport("enroll", *args, check=False), 1, f"cannot write {long}/x/key.pem: ")
    assert one_line(server.eport("enroll", *args, check=False), 1, "").endswith(
        ": File name too long"
    )
    creds = ["--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    res = server.eport("renew", *creds, "--out", str(long), check=False)
    one_line(res, 1, f"cannot write {long}/key.pem: File name too long")
    res = server.eport(
        "backup", "--data-dir", str(server.data_dir), "--out", f"{long}.tgz", check=False
    )
    one_line(res, 1, f"cannot write {long}.tgz: File name too long")
    assert counts(server) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [ent.name]
    # the code was not spent
    jrun(server, "enroll", "--code", code, "--profile", "enterprise", "--out", str(tmp_path / "ok"))


def test_an_out_under_a_directory_that_may_not_be_searched(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """The same for EACCES: run as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    (as the probe did), a directory of another user with mode 0700 cannot be searched."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to run the command without DAC override")
    server = sqlite_server
    code = approved_code(server, "Locked Out Co.")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    os.chown(locked, 65534, 65534)
    os.chmod(tmp_path, 0o755)
    before = counts(server)
    no_override = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    enroll = ["enroll", "--code", code, "--profile", "enterprise", "--out", str(locked / "x")]
    res = subprocess.run(
        [*no_override, EPORT, *enroll],
        capture_output=True,
        text=True,
        env=server.env(),
        timeout=60,
    )
    one_line(res, 1, f"cannot write {locked}/x/key.pem: Permission denied")
    assert counts(server) == before


def _run_to(server: Server, stdout: int | None, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``eport`` script with standard output closed (``None``, as ``>&-``) or
    sent to the file descriptor ``stdout``; standard output is then reported empty."""

    def close_stdout() -> None:
        os.close(1)

    res = subprocess.run(
        [EPORT, *args],
        stdout=subprocess.DEVNULL if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=server.env(),
        timeout=60,
        preexec_fn=close_stdout if stdout is None else None,
    )
    return subprocess.CompletedProcess(res.args, res.returncode, "", res.stderr)


def test_a_result_that_cannot_be_written_is_an_error(sqlite_server: Server, tmp_path: Path) -> None:
    """With standard output closed (``>&-``), eport ra approve made a one-time code, showed
    it nowhere and exited 0; a full standard output (``> /dev/full``) was 'unexpected
    error: OSError(28, ...)'. Both are now one line and exit 1, and where the result was
    a one-time code, the line says how to get a new one."""
    server = sqlite_server
    app = jrun(server, "apply", "--uscc", fresh_uscc(), "--name", "Closed Stdout Co.")["id"]
    res = _run_to(server, None, "ra", "approve", app, *server.officer())
    line = one_line(res, 1, "cannot write the result to standard output: it is closed; ")
    assert line.endswith(
        f"the enrollment code made for {app} is shown nowhere: an RA officer gets a new one "
        f"with eport ra new-code {app} (the lost one then stops working)"
    ), line
    # the code it made is the one a new code replaces
    assert "withdrew 1 unused code" in server.eport("ra", "new-code", app, *server.officer()).stdout

    ent = enroll_enterprise(server, tmp_path, "Full Stdout Co.")
    creds = ["--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        res = _run_to(server, full, "ra", "new-code", app, *server.officer(), "--json")
        one_line(res, 1, "standard output: No space left on device; the enrollment code made")
        res = _run_to(server, full, "operator", "add", "--name", "Li", "--id", "E1", *creds)
        line = one_line(res, 1, "cannot write the result to standard output: No space left")
        assert line.endswith(
            "the operator's enrollment code is shown nowhere: run eport operator add again "
            "with --id E1 for a new one (the lost one then stops working)"
        ), line
        res = _run_to(server, full, "cert", "show", str(ent / "cert.pem"))
        line = one_line(res, 1, "")
        assert (
            line
            == "eport: error: cannot write the result to standard output: No space left on device"
        )
        audit = ["audit", "log", *server.auditor(), "--format", "csv"]
        one_line(_run_to(server, full, *audit), 1, "standard output: No space left on device")
    finally:
        os.close(full)
    one_line(_run_to(server, None, "cert", "show", str(ent / "cert.pem")), 1, "it is closed")


def test_audit_prove_names_its_own_signer_options(sqlite_server: Server, tmp_path: Path) -> None:
    """eport audit prove without credentials said to pass '--cert and --key', but there
    --cert is the certificate to prove and the signer is --as-cert: following the advice
    could not work. It names --as-cert, and who may ask (an enterprise proves its own)."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Prove Own Co.")
    state = str(tmp_path / "audit-state.json")
    prove = ["audit", "prove", "--cert", str(ent / "cert.pem"), "--state", state]
    res = server.eport(*prove, check=False)
    assert res.returncode == 1 and res.stdout == "", res
    assert res.stderr.splitlines()[-1] == (
        "eport: error: this needs the certificate of who asks, an auditor's, an RA "
        "officer's or the enterprise's own: --as-cert and --key (or EPORT_CERT and "
        "EPORT_KEY); --cert names the certificate to prove"
    ), res.stderr
    res = server.eport(*prove, "--key", str(ent / "key.pem"), check=False)
    one_line(res, 1, "--as-cert and --key go together")
    # the advice works
    as_ent = ["--as-cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    server.eport(*prove, *as_ent)


def test_ids_serials_and_pairs_that_cannot_be_right_are_usage_errors(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """README: exit 2 'for a usage error: a mistyped command line, an application id or
    serial that cannot be one'. An application id without the app_ form, serial 0, a
    serial over 20 octets were sent (signed) and refused by the server with exit 1;
    MEMBER=FILE and KEY=VALUE without '=' were exit 1. All are usage errors now, and
    nothing is sent; the ids and serials the CA makes still go through."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Usage Errors Co.")
    creds = ["--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    init = ["ca", "init", "--data-dir", str(tmp_path / "c3"), "--out", str(tmp_path / "c3o")]
    before = counts(server)
    cases = [
        (["ra", "approve", "bogus", *server.officer()], "'bogus' is not an application id"),
        (["application", "show", "app_" + "a" * 17], "is not an application id"),
        (["application", "show", "app_0189"], "is not an application id"),
        (["application", "show", "app_zz"], "is not an application id"),  # too short
        (["revoke", "--serial", "00", "--reason", "superseded", *creds], "a serial is positive"),
        (
            ["revoke", "--serial", "1" * 41, "--reason", "superseded", *creds],
            "a serial has at most 20 octets (40 hexadecimal digits)",
        ),
        (["suspend", "--serial", "f" * 100_000, *creds], "'ffffffff"),
        (
            ["ca", "ceremony", "start", "ROTATE-ISSUER", "noequals", *server.officer()],
            "Invalid value for KEY=VALUE: 'noequals': expected KEY=VALUE",
        ),
        (
            [*init, "--custodian-passphrase", "customsnoequals"],
            "Invalid value for '--custodian-passphrase': 'customsnoequals': expected MEMBER=FILE",
        ),
        (
            [*init, "--custodian-passphrase", "bogus=pp.txt"],
            "Invalid value for --custodian-passphrase: 'bogus=pp.txt': expected MEMBER=FILE "
            "of a member",
        ),
    ]
    for args, expect in cases:
        line = one_line(server.eport(*args, check=False), 2, expect)
        assert len(line) < 300, line  # a 100,000-character value is not repeated
    assert counts(server) == before
    assert not (tmp_path / "c3").exists() and not (tmp_path / "c3o").exists()
    # what the CA makes passes: a real id (also in capitals), the serial 40 digits allow
    app = jrun(server, "apply", "--uscc", fresh_uscc(), "--name", "Real Id Co.")["id"]
    assert jrun(server, "application", "show", app.upper())["id"] == app
    res = server.eport(
        "revoke", "--serial", "8" + "0" * 39, "--reason", "superseded", *creds, check=False
    )
    one_line(res, 1, "HTTP 404")


def test_an_over_long_value_is_said_to_be_too_long(sqlite_server: Server) -> None:
    """A 100,000-character value that goes into the URL got the server's 414 reported as
    'is EPORT_SERVER the e-port server's base URL?' (and later as 'the request is not
    HTTP/1.1 this server reads'); it is said to be too long, naming the option. Errors
    that repeat such a value (a USCC, a file name) cut it at about 60 characters."""
    server = sqlite_server
    long = "A" * 100_000
    before = counts(server)
    expect = f"the request is too long for the server at {server.url} (HTTP 414 URI Too Long): "
    line = one_line(
        server.eport("ra", "list", *server.officer(), "--after", long, check=False), 1, ""
    )
    assert line == f"eport: error: {expect}--after (100000 characters) is too long", line
    audit = ["audit", "log", *server.auditor(), f"--subject={long}"]
    line = one_line(server.eport(*audit, check=False), 1, "")
    assert line == f"eport: error: {expect}--subject (100000 characters) is too long", line
    line = one_line(server.eport("apply", "--uscc", long, "--name", "X", check=False), 1, "")
    assert line.startswith("eport: error: a USCC has 18 characters, 'AAAA") and len(line) < 200
    assert "A" * 60 not in line and "…" in line, line
    line = one_line(server.eport("cert", "show", long, check=False), 1, "")
    assert line == f"eport: error: cannot read certificate file {'A' * 59}…: File name too long"
    assert counts(server) == before


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("{url}?x=1", "has a query or a fragment ('?…' or '#…'), which a base URL has not"),
        ("{url}#frag", "has a query or a fragment"),
        ("{url}/?", "has a query or a fragment"),
        ("{url}/\udcff", "is not UTF-8 text (it has the byte 0xff)"),
        ("http://127.0.\udcfe0.1:8000", "is not UTF-8 text (it has the byte 0xfe)"),
    ],
)
def test_a_server_url_with_a_query_fragment_or_bytes_is_a_usage_error(
    sqlite_server: Server, url: str, expect: str
) -> None:
    """EPORT_SERVER with ?query or #fragment was taken, and the request path was joined
    after it ('the server has no /'); one with bytes that are not UTF-8 was sent
    percent-encoded, or failed as 'InvalidURL'. All are usage errors naming
    EPORT_SERVER, before anything is sent."""
    value = url.format(url=sqlite_server.url)
    res = sqlite_server.eport(
        "application", "show", "app_kltqt5qot2kccdps", check=False, EPORT_SERVER=value
    )
    line = one_line(res, 2, expect)
    assert line.startswith("eport: error: Invalid value for EPORT_SERVER: "), line


def test_a_renewal_that_reached_no_server_keeps_no_key(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """eport renew with the server down (connection refused: nothing was sent) kept
    OUT/key.pem and said 'the CA may have issued the certificate before the answer was
    lost'. It says nothing was sent, and removes the new key and the directory made for
    it: the same command later renews from the start."""
    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Server Down Co.")
    down = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "renewed" / "deeper"
    renew = ["renew", "--cert", str(ent / "cert.pem"), "--key", str(ent / "key.pem")]
    renew += ["--out", str(out)]
    res = server.eport("--server", down, *renew, check=False)
    line = one_line(res, 1, "")
    assert line == (
        f"eport: error: cannot reach the e-port server at {down} (is it running? set "
        "EPORT_SERVER or --server); nothing was sent, so nothing was issued"
    ), line
    assert not (tmp_path / "renewed").exists()
    assert jrun(server, *renew)["previous_serial"]


def _help(*command: str) -> str:
    """``eport COMMAND --help`` on one line (click wraps it to the terminal's width)."""
    res = subprocess.run(
        [EPORT, *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "1000"},
    )
    assert res.returncode == 0, res.stderr
    return " ".join(res.stdout.split())


def test_help_and_show_say_what_is_so(sqlite_server: Server, tmp_path: Path) -> None:
    """Help texts the probe found wrong: enroll --profile and apply --name left out the
    auditor; ra approve/new-code --profile did not say it repeats; audit prove's
    --passphrase-file did not name EPORT_PASSPHRASE; status said it prints in every case
    (not without a verified answer); auth rotate-keys' example fails within 5 minutes of
    a rotation without saying so; 'audit log --json' was 'Did you mean --since?'. And
    eport application show told an applicant whose certificate was issued to enroll."""
    assert "enterprise, operator, agency, auditor, service-tls" in _help("enroll")
    assert "auditor name (auditor)" in _help("apply")
    for command in ("approve", "new-code"):
        assert "Limit the code to this profile (repeatable;" in _help("ra", command)
    assert "EPORT_PASSPHRASE_FILE; else EPORT_PASSPHRASE, else a prompt" in _help("audit", "prove")
    status = _help("status")
    assert "in every case" not in status and "whenever a verified answer came" in status
    assert "less than 5 minutes ago" in _help("auth", "rotate-keys")
    res = sqlite_server.eport("audit", "log", "--json", check=False)
    line = one_line(res, 2, "")
    assert (
        line == "eport: error: No such option: --json (eport audit log exports with --format json)"
    )

    ent = enroll_enterprise(sqlite_server, tmp_path, "Issued Already Co.")
    app = ent.name.removeprefix("ent-")
    shown = sqlite_server.eport("application", "show", app).stdout
    assert shown.splitlines()[1:] == [
        "  enroll with the code the RA officer gives you (eport enroll --code CODE ...), "
        "unless a certificate was issued on it already",
        "  a code lapses (7 days after it is given, by default); for a lapsed or lost one, "
        f"an RA officer gives a new one (eport ra new-code {app})",
    ], shown


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "prove", "00"],
        ["audit", "prove", "0x" + "1" * 41],
        ["audit", "log", "--serial", "0:0"],
        ["audit", "log", "--serial", "f" * 41],
    ],
)
def test_audit_serials_out_of_range_are_usage_errors(args: list[str]) -> None:
    """eport audit prove and audit log --serial took serial 0 and serials over 20 octets
    (sent, and answered 'not in the log' or 400, exit 1), unlike eport revoke --serial:
    the same usage error (exit 2), before any key is read or anything sent."""
    line = one_line(offline(*args), 2, "is not a serial: a serial ")
    assert "is positive" in line or "has at most 20 octets (40 hexadecimal digits)" in line


def test_a_p12_bundle_opens_in_java_and_one_it_could_not_is_refused_first(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """bundle.p12 is for import into key stores, Java's among them. The JDK derives the
    PBES2 keys of a PKCS#12 from ASCII passwords only ("Password is not ASCII"), so a
    bundle with a Chinese passphrase was written and then refused by keytool as "keystore
    password was incorrect". --p12 with such a passphrase is refused before a key is made
    or the code used (at renewal: before anything is sent); an ASCII one opens in keytool."""
    keytool = need("keytool")
    server = sqlite_server
    cjk = "厦门港口的密码钥匙"

    def java_opens(bundle: Path, passphrase: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [keytool, "-list", "-keystore", str(bundle), "-storetype", "PKCS12",
             "-storepass", passphrase],
            capture_output=True, text=True, timeout=60, env={**os.environ, "LANG": "C.UTF-8"},
        )  # fmt: skip

    code = approved_code(server, "Java Import Co.")
    before = counts(server)
    cjk_out = tmp_path / "cjk"
    args = ["enroll", "--code", code, "--profile", "enterprise", "--p12"]
    res = server.eport(*args, "--out", str(cjk_out), check=False, EPORT_PASSPHRASE=cjk)
    one_line(res, 1, "--p12: a PKCS#12 bundle whose passphrase is not ASCII does not open in Java")
    assert "the code is still unused" in res.stderr
    assert not (cjk_out / "key.pem").exists() and counts(server) == before

    out = tmp_path / "ascii"
    jrun(server, *args, "--out", str(out))  # the same code: it was not used
    listed = java_opens(out / "bundle.p12", "test-passphrase-123")
    assert listed.returncode == 0 and "PrivateKeyEntry" in listed.stdout, listed

    # What the refusal spares: such a bundle, written anyway, does not open in Java.
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), b"test-passphrase-123")
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    keyfiles.write_p12(tmp_path / "cjk.p12", key, cert, [], cjk.encode(), "eport-cjk")  # type: ignore[arg-type]
    refused = java_opens(tmp_path / "cjk.p12", cjk)
    assert refused.returncode != 0 and "password was incorrect" in refused.stdout, refused

    # A renewal takes the current key's passphrase: a non-ASCII one is refused for --p12
    # before the request, and says how to change it.
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("test-passphrase-123\n")
    new.write_text(cjk + "\n")
    server.eport(
        "key", "passwd", str(out / "key.pem"), "--passphrase-file", str(old),
        "--new-passphrase-file", str(new),
    )  # fmt: skip
    before = counts(server)
    creds = ["--cert", str(out / "cert.pem"), "--key", str(out / "key.pem")]
    res = server.eport(
        "renew", *creds, "--p12", "--out", str(tmp_path / "renewed"), check=False,
        EPORT_PASSPHRASE=cjk,
    )  # fmt: skip
    line = one_line(res, 1, "change it first (eport key passwd")
    assert str(out / "key.pem") in line
    assert counts(server) == before and not (tmp_path / "renewed" / "key.pem").exists()
