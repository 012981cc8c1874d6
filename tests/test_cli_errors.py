"""The ``eport`` command where a script author or a careless person meets it: every
failure is one line on stderr with no traceback, a non-zero exit (2 for a mistyped
command line), nothing on stdout, and nothing changed on the server."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import Server
from tests.helpers import fresh_uscc, jrun, serial_of
from tests.test_enrollment_flow import counts


def one_line(res: subprocess.CompletedProcess[str], code: int, expect: str) -> str:
    """``res`` failed with ``code`` in one ``eport: error:`` line holding ``expect``."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert res.stdout == "", res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eport: error: "), res.stderr
    assert expect in lines[0], lines[0]
    assert "Traceback" not in res.stderr and "unexpected error" not in res.stderr
    return lines[0]


def approved_code(server: Server, name: str) -> str:
    app = jrun(server, "apply", "--uscc", fresh_uscc(), "--name", name)
    grant = jrun(server, "ra", "approve", app["id"], *server.officer())
    return str(grant["enrollment_code"])


def test_an_out_that_cannot_be_written_spends_no_code(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """An enrollment or renewal whose --out cannot be written is refused before the CA
    issues anything: the code stays good and the current certificate is still the only
    one, rather than a certificate issued for a key that was then lost."""
    server = sqlite_server
    code = approved_code(server, "Unwritable Out Co.")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    before = counts(server)
    for out in (blocker / "sub", blocker / "sub" / "deeper"):
        args = ["--code", code, "--profile", "enterprise", "--out", str(out), "--json"]
        one_line(server.eport("enroll", *args, check=False), 1, f"cannot write {out}/key.pem")
    assert counts(server) == before
    # A refusal by the CA leaves no key file or directory behind either.
    refused = tmp_path / "new" / "dir"
    res = server.eport(
        "enroll", "--code", code, "--profile", "operator", "--out", str(refused), check=False
    )
    one_line(res, 1, "not 'operator'")
    assert not (tmp_path / "new").exists()
    # The code is still good.
    ok = tmp_path / "ok"
    jrun(server, "enroll", "--code", code, "--profile", "enterprise", "--out", str(ok))
    assert (ok / "key.pem").exists() and (ok / "cert.pem").exists()

    before = counts(server)
    res = server.eport(
        "renew",
        "--cert",
        str(ok / "cert.pem"),
        "--key",
        str(ok / "key.pem"),
        "--out",
        str(blocker / "renewed"),
        check=False,
    )
    one_line(res, 1, f"cannot write {blocker / 'renewed'}/key.pem")
    assert counts(server) == before
    renewed = jrun(server, "renew", "--cert", str(ok / "cert.pem"), "--key", str(ok / "key.pem"))
    assert renewed["previous_serial"] == serial_of(ok)
