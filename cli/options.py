"""Options several ``eport`` commands share, spelled and defaulted the same everywhere."""

from __future__ import annotations

import codecs
import errno
import json
import locale
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def takes_utf8(stream: Any) -> bool:
    """Whether ``stream`` encodes text as UTF-8 (a Windows code page, or a locale such as
    en_US.ISO-8859-1, cannot hold every Chinese name)."""
    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "utf-8").name == "utf-8"
    except LookupError:
        return False


def json_text(data: Any) -> str:
    """One JSON object for standard output: names as they are on a UTF-8 stream, else
    as ``\\u`` escapes, so that it is still JSON (RFC 8259 §8.1: UTF-8; ASCII is) and no
    name makes printing fail."""
    return json.dumps(data, ensure_ascii=not takes_utf8(sys.stdout), sort_keys=True)


def print_result(text: str, lost: str = "") -> None:
    """Print a command's result on standard output, flushed: a closed standard output
    (``>&-``) or one that cannot be written (``> /dev/full``, an I/O error) is an error
    (exit 1) saying so, and ``lost`` what to do about a result shown nowhere else (a
    one-time code). click.echo drops text when there is no standard output at all, and
    the command exited 0 having made a code nobody saw. A reader that stopped reading (a
    broken pipe: ``| head -1``) is click's to end quietly, as before."""
    from cli.client import CLIError

    stream = sys.stdout
    if stream is None:
        raise CLIError(f"cannot write the result to standard output: it is closed{lost}")
    try:
        click.echo(text, file=stream)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise
        why = exc.strerror or str(exc)
        raise CLIError(f"cannot write the result to standard output: {why}{lost}") from None


def print_any_text() -> None:
    """Let standard output and error print text their encoding cannot hold as ``\\u``
    escapes (``\\u53a6``) instead of failing after the work was done, as a Chinese name
    did when output went to a file on a Windows or Latin-1 system."""
    for stream in (sys.stdout, sys.stderr):
        if not takes_utf8(stream) and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def not_utf8_text(exc: UnicodeEncodeError) -> str:
    """The one line for a value of the command line or the environment that Python could
    not decode (``exc``: it met the lone surrogates it decoded those bytes to). When its
    bytes are UTF-8, the locale is what is wrong (``LC_ALL=zh_CN.GBK`` in a UTF-8
    terminal, or ``LC_ALL=C``), and the line says which setting to change; else it names
    the value's first byte that is not UTF-8 (the value may be a secret: nothing more)."""
    text = str(exc.object)
    byte = ord(text[exc.start]) - 0xDC00
    start, end = exc.start, exc.end
    while start > 0 and ord(text[start - 1]) > 0x7F:
        start -= 1
    while end < len(text) and ord(text[end]) > 0x7F:
        end += 1
    try:
        # the bytes as they were given (Python decoded them with the file system's
        # encoding, the locale's), read as UTF-8
        os.fsencode(text[start:end]).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return (
            "a value on the command line or in the environment is not UTF-8 text (it has "
            f"the byte 0x{byte:02x}); give it in UTF-8"
        )
    encoding, name = _locale_in_effect()
    value = os.environ.get(name, "")
    language = value.partition(".")[0].partition("@")[0]
    utf8 = f"{language}.UTF-8" if language not in ("", "C", "POSIX") else "C.UTF-8"
    where = f"{name}={value}" if name else "no LANG set"
    return (
        "a value on the command line or in the environment is UTF-8 text, but the "
        f"locale's encoding is {encoding} ({where}), so eport could not read it: set "
        f"{name or 'LANG'}={utf8} (a UTF-8 locale, as the text is)"
    )


def _locale_in_effect() -> tuple[str, str]:
    """The locale's encoding as Python reads text in it ("GBK", "ASCII" for C), and the
    variable that chose the locale's (LC_ALL, LC_CTYPE or LANG; "" when none is set)."""
    encoding = codecs.lookup(locale.getpreferredencoding(False)).name.upper()
    return encoding, next((n for n in ("LC_ALL", "LC_CTYPE", "LANG") if os.environ.get(n)), "")


def not_blank(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An option's callback: text that is empty or only blanks is refused on the command
    line (exit 2), in the option's own name, before anything is sent."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be blank", ctx, param)
    return value


QUOTED = 60
"""How many characters of a value a one-line error repeats (:func:`clip`)."""


def clip(value: object, limit: int = QUOTED) -> str:
    """``value`` quoted as ``repr`` does, cut to about ``limit`` characters with "…": an
    error line repeated a 100,000-character argument in full."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 2] + "…" + text[-1]


# What goes into a URL path as one segment: anything else ('a/b', '../x', 'x?y', bytes
# that are not UTF-8) would address another resource than the one named, or none
_APP_ID = re.compile(r"[A-Za-z0-9_-]+")
_HEX = re.compile(r"[0-9A-Fa-f]+")
# The CA makes an application id as "app_" and the lower-case RFC 4648 base32 of 10
# random bytes (ca.authority): 16 characters of a-z and 2-7, the same in every release.
# Up to 16 are taken, so a shorter made-up id still reaches the server's 404.
_REAL_APP_ID = re.compile(r"app_[a-z2-7]{16}", re.IGNORECASE)
MAX_SERIAL_DIGITS = 40
"""RFC 5280 §4.1.2.2: a serial has at most 20 octets, 40 hexadecimal digits (the CA
takes 0 < serial < 2**160)."""


def application_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An argument's callback: an application id (``app_`` and base32 letters and digits,
    16 as ``eport apply`` prints it), else a usage error (exit 2) before anything is
    sent. Given in capitals, it is read in lower case, as the CA writes it."""
    if not _REAL_APP_ID.fullmatch(value):
        raise click.BadParameter(
            f"{clip(value)} is not an application id (like app_6thyonihy3ild7iv)", ctx, param
        )
    return value.lower()


def ceremony_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An argument's callback: a ceremony id (``cer-`` and hexadecimal, as ``eport ca
    ceremony start`` prints it), else a usage error (exit 2) before anything is sent."""
    if not _APP_ID.fullmatch(value):
        raise click.BadParameter(
            f"{value!r} is not a ceremony id (like cer-3f9a0c2e7b1d4e56)", ctx, param
        )
    return value


def hex_serial(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An option's callback: a certificate serial in hexadecimal, as ``eport cert show``
    prints it, else a usage error (exit 2) before anything is sent."""
    value = not_blank(ctx, param, value)
    if value is None:
        return None
    if not _HEX.fullmatch(value):
        raise click.BadParameter(
            f"{clip(value)} is not a serial in hexadecimal (like 7e23f4e0bfc6ce42c66b4a4c40acbd99)",
            ctx,
            param,
        )
    if not value.strip("0"):
        raise click.BadParameter(f"{clip(value)} is not a serial: a serial is positive", ctx, param)
    if len(value.lstrip("0")) > MAX_SERIAL_DIGITS:
        raise click.BadParameter(
            f"{clip(value)} is not a serial: a serial has at most 20 octets "
            f"({MAX_SERIAL_DIGITS} hexadecimal digits)",
            ctx,
            param,
        )
    return value


def member_pairs(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    """A repeatable option's callback: each value is MEMBER=FILE (or MEMBER=URI, as the
    option's metavar says), else a usage error (exit 2) before anything is read or made.
    Whether MEMBER is a member is for the command, which reads the policies."""
    form = param.metavar or "MEMBER=VALUE"
    for item in value:
        member, sep, _ = item.partition("=")
        if not sep or not member:
            raise click.BadParameter(f"{clip(item)}: expected {form}", ctx, param)
    return value


def data_dir_option(help: str) -> Decorator:
    """``--data-dir`` (env ``EPORT_DATA_DIR``, default ``var``), described for this command."""
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("var"),
        show_default=True,
        envvar="EPORT_DATA_DIR",
        help=help,
    )


def policies_option(help: str) -> Decorator:
    """``--policies DIR`` (default: the repository's ``policies/``)."""
    return click.option(
        "--policies",
        "policies_dir",
        type=click.Path(path_type=Path, file_okay=False, exists=True),
        default=None,
        help=help,
    )


PIPE_WAIT = 30.0
"""How long (seconds) a passphrase is waited for on standard input that is not a terminal,
by default: a pipe that stays open and sends nothing (``(sleep 600) | eport …``) held the
command silently until it closed. ``EPORT_PIPE_WAIT_SECONDS`` sets another (0: no limit),
for a password tool that asks its own passphrase first (``gpg -d pass.gpg | eport …``)."""


def pipe_wait() -> float:
    """The wait for a piped passphrase: ``EPORT_PIPE_WAIT_SECONDS`` or :data:`PIPE_WAIT`;
    0 waits for as long as the pipe stays open."""
    raw = os.environ.get("EPORT_PIPE_WAIT_SECONDS", "").strip()
    if not raw:
        return PIPE_WAIT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise click.UsageError(
            f"EPORT_PIPE_WAIT_SECONDS must be a number of seconds (0: no limit), not {raw[:20]!r}"
        )
    return value if value > 0 else math.inf


PIPE_NOTICE = 2.0
"""After how long (seconds) of that wait standard error says what the command waits for."""


class NoLine(click.Abort):
    """No passphrase came from standard input, for a reason the one line of the error says
    (:func:`no_line_reason`): it is closed, or it sent no line in time."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def no_line_reason(exc: click.Abort) -> str:
    """What to add to the error line of a command that got no passphrase (``exc``):
    " (standard input is closed)", or nothing for a pipe that sent an empty line or none."""
    return f" ({exc.reason})" if isinstance(exc, NoLine) else ""


def stdin_is_terminal() -> bool:
    """Whether standard input is a terminal; False when it is closed (``<&-``: Python's
    sys.stdin is then None, and ``sys.stdin.isatty()`` was an 'unexpected error')."""
    return sys.stdin is not None and sys.stdin.isatty()


@dataclass(frozen=True)
class GivenSecret:
    """A passphrase as it was given (a file, the environment, a pipe or the prompt): the
    same text gives the same :attr:`encoded` bytes from every source, in any locale."""

    text: str
    """What it says (:func:`secret_text`); bytes that were text in no encoding at hand
    are in it as lone surrogates (surrogateescape)."""
    earlier: bytes
    """The bytes earlier releases took for it: a file's or a pipe's as they were (a
    leading byte order mark kept), the UTF-8 of what the locale decoded of a variable or
    of what was typed. A key they made opens with these."""

    @property
    def encoded(self) -> bytes:
        """The bytes a key is encrypted with: :attr:`text` in UTF-8."""
        return self.text.encode("utf-8", "surrogateescape")

    @property
    def candidates(self) -> tuple[bytes, ...]:
        """What opens a key: :attr:`encoded`, then :attr:`earlier` if it differs (for a key
        made before); never used to make one."""
        return tuple(dict.fromkeys((self.encoded, self.earlier)))

    @classmethod
    def from_bytes(cls, raw: bytes) -> GivenSecret:
        """A passphrase given as the bytes ``raw`` (a file's or a pipe's line, its end
        dropped)."""
        return cls(secret_text(raw), raw)

    @classmethod
    def from_text(cls, value: str, encoding: str) -> GivenSecret:
        """A passphrase Python decoded from ``encoding`` (typed at the terminal, or an
        environment variable): its bytes are taken back, and read as any other source's."""
        try:
            raw = value.encode(encoding, "surrogateescape")
        except (UnicodeEncodeError, LookupError):  # not decoded from it: text as it is
            return cls(value, value.encode("utf-8", "surrogateescape"))
        return cls(secret_text(raw), value.encode("utf-8", "surrogateescape"))


def secret_text(raw: bytes) -> str:
    """The text of a passphrase given as the bytes ``raw``, the same whatever the source
    and the locale: bytes that are UTF-8 are read as UTF-8; others in the locale's
    encoding (GBK in a zh_CN.GBK terminal, and in the file Notepad saved there) when they
    are text in it; else kept as they are (surrogateescape). A leading UTF-8 byte order
    mark (Windows Notepad writes one) is not part of it."""
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode(locale.getpreferredencoding(False))
    except (UnicodeDecodeError, LookupError):
        return raw.decode("utf-8", "surrogateescape")


def secret_prompt(label: str, *, confirm: bool = False) -> str:
    """The text of :func:`read_secret` (:attr:`GivenSecret.text`)."""
    return read_secret(label, confirm=confirm).text


def read_secret(label: str, *, confirm: bool = False) -> GivenSecret:
    """A passphrase typed at the terminal (hidden; ``confirm`` asks twice), or the first
    line of a pipe when stdin is not a terminal (no prompt: ``printf '%s\\n' "$PASS" |
    eport …``), waited for :data:`PIPE_WAIT` seconds at most; either read as
    :func:`secret_text` says.
    :class:`click.Abort` when there is none (:class:`NoLine` when stdin is closed or sent
    no line in time); :class:`KeyboardInterrupt` for Ctrl-C at the prompt."""
    if sys.stdin is None:
        raise NoLine("standard input is closed")
    if sys.stdin.isatty():
        try:
            typed = str(click.prompt(label, hide_input=True, confirmation_prompt=confirm, err=True))
        except click.Abort as exc:
            # Ctrl-C is the person stopping the command ("Aborted."), not a missing
            # passphrase; click.prompt says both with Abort, Ctrl-C as its context
            if isinstance(exc.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            raise
        except UnicodeDecodeError:
            # what the terminal sent is not text in the locale's encoding (a GBK terminal
            # under a UTF-8 locale); the error's own text would repeat every byte typed
            click.echo(err=True)  # the line getpass ends once it has read one
            raise _not_typed_in_locale() from None
        # decoded by getpass in the locale's encoding: the bytes the terminal sent
        return GivenSecret.from_text(typed, locale.getpreferredencoding(False))
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's stream)
        line = stdin.readline()
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
    else:
        line = _first_line(fd, label)
    line = line.rstrip(b"\r\n")
    if not line:
        raise click.Abort
    return GivenSecret.from_bytes(line)


def _not_typed_in_locale() -> Exception:
    """The error for a passphrase typed in another encoding than the locale's."""
    from cli.client import CLIError

    encoding, name = _locale_in_effect()
    where = f" ({name}={os.environ[name]})" if name else ""
    return CLIError(
        f"the passphrase typed is not {encoding} text, the locale's encoding{where}: set the "
        "locale to the terminal's encoding, or give the passphrase in a file"
    )


def _first_line(fd: int, label: str) -> bytes:
    """The first line of ``fd`` (without its end), read a byte at a time, so that nothing
    after it is taken from the next reader (``eport key passwd`` reads two lines), within
    :data:`PIPE_WAIT` seconds; after :data:`PIPE_NOTICE` of them standard error says what
    is waited for, once. :class:`NoLine` when none came in time."""
    import os
    import select
    import time

    limit = pipe_wait()
    start = time.monotonic()
    told = False
    line = bytearray()
    while True:
        waited = time.monotonic() - start
        if waited >= limit:
            raise NoLine(
                f"standard input, not a terminal, sent no line in {limit:g} s "
                "(EPORT_PIPE_WAIT_SECONDS sets the wait)"
            )
        wait = limit - waited if told else min(limit, PIPE_NOTICE) - waited
        try:
            ready = select.select([fd], [], [], None if wait == math.inf else max(wait, 0))[0]
        except (OSError, ValueError):  # an fd select cannot wait on: read as before
            ready = [fd]
        if not ready:
            if not told and time.monotonic() - start >= PIPE_NOTICE:
                how_long = "as long as it is open" if limit == math.inf else f"up to {limit:g} s"
                click.echo(
                    f"eport: waiting {how_long} for a line on standard input "
                    f"(not a terminal): {label}",
                    err=True,
                )
                told = True
            continue
        byte = os.read(fd, 1)
        if not byte or byte == b"\n":
            return bytes(line)
        line += byte
