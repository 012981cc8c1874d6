"""The ``eport`` command under locales that are not UTF-8 (zh_CN.GBK, zh_CN.GB18030,
en_US.ISO-8859-1, C): a passphrase is the same from a file, the environment, a pipe and
the prompt, and a key made before from its raw bytes still opens; a CSV export is UTF-8;
an argument in UTF-8 under such a locale is said to be the locale's fault. Each runs the
real console script in the locale, built with ``localedef`` (its LC_CTYPE, all that
decides an encoding) into a temporary directory: a test skips only where localedef is
missing outside CI."""

from __future__ import annotations

import codecs
import csv
import io
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import EPORT, IN_CI, Server, base_env, need
from tests.helpers import fresh_uscc, jrun

PASSPHRASE = "国门口岸二零二六"
"""A Chinese passphrase of 8 characters, in GBK and GB18030 alike."""

LOCALES = {
    "zh_CN.GBK": ("zh_CN", "GBK", "gbk"),
    "zh_CN.GB18030": ("zh_CN", "GB18030", "gb18030"),
    "en_US.ISO-8859-1": ("en_US", "ISO-8859-1", "iso8859-1"),
}
"""Locale name: (source, charmap, Python's codec name of its encoding)."""

NOWHERE = "http://127.0.0.1:9"
"""A server nothing answers at: the errors tested come before anything is sent."""


@pytest.fixture(scope="module")
def locale_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LOCPATH directory holding :data:`LOCALES`: only their LC_CTYPE (copied from the
    system's source), which is built in a second where the whole of zh_CN takes ten."""
    localedef = need("localedef")
    root = tmp_path_factory.mktemp("locale")
    for name, (source, charmap, codec) in LOCALES.items():
        src = root / f"{name}.src"
        src.write_text(f'LC_CTYPE\ncopy "{source}"\nEND LC_CTYPE\n')
        # -c: written although the other categories are missing (warnings, exit 1)
        made = subprocess.run(
            [localedef, "-c", "-i", str(src), "-f", charmap, str(root / name)],
            capture_output=True,
            text=True,
        )
        env = in_locale(root, name)
        seen = subprocess.run(
            [sys.executable, "-c", PREFERRED], env=env, capture_output=True
        ).stdout.decode()
        if seen.strip() != codec:
            why = f"localedef did not make {name}: {made.stderr[-300:]} (Python sees {seen!r})"
            if IN_CI:
                pytest.fail(why)
            pytest.skip(why)
    return root


PREFERRED = "import codecs, locale; print(codecs.lookup(locale.getpreferredencoding(False)).name)"


def in_locale(root: Path | None, name: str, **extra: str) -> dict[str, str]:
    """The tests' environment in the locale ``name`` (found in ``root``), with Python
    reading it as any program does (no UTF-8 mode, no PYTHONIOENCODING)."""
    env = {
        k: v
        for k, v in base_env().items()
        if not k.startswith("LC_") and k not in ("LANG", "LANGUAGE", "PYTHONIOENCODING")
    }
    env.update(LC_ALL=name, PYTHONUTF8="0", EPORT_SERVER=NOWHERE)
    if root is not None:
        env["LOCPATH"] = str(root)
    env.update(extra)
    return env


def eport(
    *args: str | bytes, env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The real ``eport`` script, its output as the bytes it wrote."""
    return subprocess.run(
        [EPORT, *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=env,
        timeout=60,
    )


def typed(*args: str, secret: bytes, env: dict[str, str]) -> tuple[int, bytes]:
    """``eport ARGS`` at a terminal (a pseudo-terminal) where ``secret`` is typed at its
    prompt, as a terminal sends it: its exit status and what the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its standard streams and /dev/tty
        try:
            os.execve(EPORT, [EPORT, *args], env)
        finally:
            os._exit(127)
    shown, sent, deadline = b"", False, time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the command ended, the terminal closed
            break
        if not data:
            break
        shown += data
        if not sent and shown.rstrip().endswith(b":"):
            time.sleep(0.3)  # its echo turned off
            os.write(fd, secret + b"\r")
            sent = True
    os.close(fd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), shown


def clear_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return key


def opens_with(path: Path, pw: bytes) -> bool:
    try:
        serialization.load_pem_private_key(path.read_bytes(), pw)
    except ValueError:
        return False
    return True


def no_passphrase_in(*outputs: bytes) -> None:
    """No form of :data:`PASSPHRASE` in what a command wrote."""
    forms = {PASSPHRASE.encode(c) for c in ("utf-8", "gbk", "gb18030")}
    forms |= {ascii(f)[2:-1].encode() for f in forms}  # as repr shows bytes: \xb9\xfa…
    for out in outputs:
        assert not any(f in out for f in forms), out


@pytest.mark.parametrize("name", ["zh_CN.GBK", "zh_CN.GB18030"])
def test_a_chinese_passphrase_is_the_same_typed_set_piped_or_in_a_file(
    locale_dir: Path, tmp_path: Path, name: str
) -> None:
    """In a GBK (GB18030) terminal the passphrase typed or set in EPORT_PASSPHRASE was
    the text in UTF-8, but the same one from --passphrase-file (saved there, in GBK) or
    a pipe was its GBK bytes: a key made one way did not open the other. Each is now
    the text in UTF-8, the key as one made in a UTF-8 terminal."""
    native = PASSPHRASE.encode(LOCALES[name][2])
    env = in_locale(locale_dir, name)
    notepad = tmp_path / "pw.txt"
    notepad.write_bytes(native + b"\r\n")
    key = tmp_path / "key.pem"
    clear_key(key)
    made = eport("key", "passwd", str(key), "--new-passphrase-file", str(notepad), env=env)
    assert made.returncode == 0, made.stderr
    assert opens_with(key, PASSPHRASE.encode()) and not opens_with(key, native)

    # each source opens it, and keeps it (--new-passphrase-file again)
    keep = ["key", "passwd", str(key), "--new-passphrase-file", str(notepad)]
    from_env = in_locale(locale_dir, name, EPORT_PASSPHRASE=os.fsdecode(native))
    runs = [
        eport(*keep, env=from_env),
        eport(*keep, env=env, stdin=native + b"\n"),
        eport(*keep, "--passphrase-file", str(notepad), env=env),
    ]
    for res in runs:
        assert res.returncode == 0, res.stderr.decode(errors="replace")
    status, shown = typed(*keep, secret=native, env=env)
    assert status == 0, shown.decode(errors="replace")
    assert opens_with(key, PASSPHRASE.encode())
    no_passphrase_in(made.stdout, made.stderr, shown, *(r.stdout + r.stderr for r in runs))

    # a key made from the pipe opens with the passphrase typed in a UTF-8 terminal
    clear_key(key)
    piped = eport("key", "passwd", str(key), env=env, stdin=native + b"\n")
    assert piped.returncode == 0, piped.stderr
    status, shown = typed(
        "key",
        "passwd",
        str(key),
        "--new-passphrase-file",
        str(notepad),
        secret=PASSPHRASE.encode(),
        env=in_locale(None, "C.UTF-8"),
    )
    assert status == 0, shown.decode(errors="replace")


def test_a_passphrase_file_notepad_saved_opens_the_key(tmp_path: Path) -> None:
    """Windows Notepad saves UTF-8 with a byte order mark, and CRLF: the mark was taken
    as part of the passphrase, which was then "wrong" for a key made with it typed; and
    a key made from that file did not open with the passphrase typed."""
    env = in_locale(None, "C.UTF-8")
    notepad = tmp_path / "pw.txt"
    notepad.write_bytes(codecs.BOM_UTF8 + PASSPHRASE.encode() + b"\r\n")
    typed_key = tmp_path / "typed.pem"
    clear_key(typed_key)
    made = eport("key", "passwd", str(typed_key), env=env, stdin=PASSPHRASE.encode() + b"\n")
    assert made.returncode == 0, made.stderr
    res = eport(
        "key",
        "passwd",
        str(typed_key),
        "--passphrase-file",
        str(notepad),
        "--new-passphrase-file",
        str(notepad),
        env=env,
    )
    assert res.returncode == 0, res.stderr
    # and made from the file, it is the passphrase without the mark
    assert opens_with(typed_key, PASSPHRASE.encode())
    assert not opens_with(typed_key, codecs.BOM_UTF8 + PASSPHRASE.encode())
    no_passphrase_in(made.stdout, made.stderr, res.stdout, res.stderr)


def test_a_key_an_earlier_release_made_from_a_file_still_opens(
    locale_dir: Path, tmp_path: Path
) -> None:
    """Earlier releases encrypted a key with a passphrase file's bytes as they were (GBK;
    a byte order mark kept): that key opens with the same file (the bytes are tried when
    the text's UTF-8 does not open it), and `eport key passwd` with the same file brings
    it to the passphrase's UTF-8, which a new key is always made with."""
    env = in_locale(locale_dir, "zh_CN.GBK")
    gbk = PASSPHRASE.encode("gbk")
    gbk_file = tmp_path / "gbk.txt"
    gbk_file.write_bytes(gbk + b"\n")
    bom_file = tmp_path / "bom.txt"
    bom_file.write_bytes(codecs.BOM_UTF8 + PASSPHRASE.encode() + b"\r\n")
    for file, before in ((gbk_file, gbk), (bom_file, codecs.BOM_UTF8 + PASSPHRASE.encode())):
        key = tmp_path / "old.pem"
        pem = clear_key(key).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(before),
        )
        key.write_bytes(pem)
        res = eport(
            "key",
            "passwd",
            str(key),
            "--passphrase-file",
            str(file),
            "--new-passphrase-file",
            str(file),
            env=env,
        )
        assert res.returncode == 0, res.stderr
        assert opens_with(key, PASSPHRASE.encode()) and not opens_with(key, before)
        no_passphrase_in(res.stdout, res.stderr)


def test_a_passphrase_typed_in_another_encoding_is_not_shown(tmp_path: Path) -> None:
    """GBK typed in a terminal whose locale is UTF-8 ended in 'unexpected error:
    UnicodeDecodeError('utf-8', b'\\xb9\\xfa…')': every byte of the passphrase on the
    screen (and in a captured log)."""
    key = tmp_path / "key.pem"
    clear_key(key)
    made = eport("key", "passwd", str(key), env=in_locale(None, "C.UTF-8"), stdin=b"x" * 12 + b"\n")
    assert made.returncode == 0, made.stderr
    status, shown = typed(
        "key", "passwd", str(key), secret=PASSPHRASE.encode("gbk"), env=in_locale(None, "C.UTF-8")
    )
    assert status == 1
    assert (
        b"the passphrase typed is not UTF-8 text, the locale's encoding (LC_ALL=C.UTF-8)" in shown
    )
    no_passphrase_in(shown)


@pytest.mark.parametrize("name", ["zh_CN.GBK", "zh_CN.GB18030", "en_US.ISO-8859-1"])
def test_a_csv_export_is_utf8_in_any_locale(
    sqlite_server: Server, locale_dir: Path, name: str
) -> None:
    """`eport audit log --format csv --bom` on standard output in a GBK locale wrote the
    byte order mark as the text '\\ufeff' and the names in GBK (GB18030: the mark in
    GB18030, Latin-1: names as \\u escapes), which Excel, told UTF-8 by the mark, showed
    as mojibake. With --bom, and whenever standard output is not a terminal, it is
    UTF-8."""
    legal_name = "厦门港务贸易有限公司"
    uscc = fresh_uscc()
    jrun(sqlite_server, "apply", "--uscc", uscc, "--name", legal_name)
    env = in_locale(locale_dir, name, EPORT_SERVER=sqlite_server.url)
    query = ["audit", "log", *sqlite_server.auditor(), "--uscc", uscc, "--format", "csv"]
    for bom in (True, False):
        res = eport(*query, *(["--bom"] if bom else []), env=env)
        assert res.returncode == 0, res.stderr.decode(errors="replace")
        assert res.stdout.startswith(codecs.BOM_UTF8 if bom else b"log_index,")
        text = res.stdout.decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        assert [r["subject"] for r in rows] == [legal_name]
        assert text.endswith("\r\n") and "\r\r" not in text


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (
            "zh_CN.GBK",
            "locale's encoding is GBK (LC_ALL=zh_CN.GBK), so eport could not read "
            "it: set LC_ALL=zh_CN.UTF-8 (a UTF-8 locale, as the text is)",
        ),
        (
            "C",
            "locale's encoding is ASCII (LC_ALL=C), so eport could not read it: set "
            "LC_ALL=C.UTF-8 (a UTF-8 locale, as the text is)",
        ),
    ],
)
def test_utf8_under_a_locale_that_is_not_says_so(
    request: pytest.FixtureRequest, name: str, said: str
) -> None:
    """`eport apply --name 厦门港务` (UTF-8, as the terminal sent it) under LC_ALL=zh_CN.GBK
    or LC_ALL=C said the name 'is not UTF-8 text … give it in UTF-8': it is; the locale
    is what is wrong, and the error now says which setting to change."""
    root = request.getfixturevalue("locale_dir") if name in LOCALES else None
    env = in_locale(root, name)
    res = eport("apply", "--uscc", fresh_uscc(), "--name", "厦门港务".encode(), env=env)
    assert res.returncode == 2
    assert res.stderr.decode() == (
        f"eport: error: a value on the command line or in the environment is UTF-8 text, but "
        f"the {said}\n"
    )
    # bytes that are not UTF-8 under a UTF-8 locale: said as before
    res = eport(
        "apply",
        "--uscc",
        fresh_uscc(),
        "--name",
        "厦门".encode("gbk"),
        env=in_locale(None, "C.UTF-8"),
    )
    assert res.returncode == 2
    assert b"is not UTF-8 text (it has the byte 0xcf); give it in UTF-8" in res.stderr
