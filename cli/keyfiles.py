"""Local key handling for the CLI: keys are made here and never leave this machine.

Private keys are written as encrypted PKCS#8 (RFC 5958 with PBES2) with mode 0600; one
read with a mode that lets its group or others at it is used with a warning (on POSIX).
The passphrase comes from ``--passphrase-file``, ``EPORT_PASSPHRASE`` or a prompt.
A key can also stay in a PKCS#11 token: ``--key`` (alias ``--pkcs11-uri``) then takes
an RFC 7512 URI, or a file holding one (``key.uri`` from ``eport enroll --pkcs11-uri``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from ca import pkcs8
from ca.keys import KeyType
from ca.signer import write_private
from cli.client import CLIError, Identity
from cli.options import GivenSecret, no_line_reason, read_secret, stdin_is_terminal


def passphrase(
    file: Path | None, *, new: bool, what: str = "key", env: str | None = "EPORT_PASSPHRASE"
) -> bytes:
    """The passphrase of a key: file, then the environment variable ``env`` (None: none),
    then an interactive prompt."""
    return passphrase_and_source(file, new=new, what=what, env=env)[0]


def passphrase_and_source(
    file: Path | None, *, new: bool, what: str = "key", env: str | None = "EPORT_PASSPHRASE"
) -> tuple[bytes, str]:
    """:func:`passphrase`, and where it came from, for an error to name (never the
    passphrase itself): "--passphrase-file FILE" (or the variable that named the file),
    ``env``, "standard input", or "" when it was typed at the terminal."""
    given, source = given_passphrase(file, new=new, what=what, env=env)
    return given.encoded, source


def given_passphrase(
    file: Path | None, *, new: bool, what: str = "key", env: str | None = "EPORT_PASSPHRASE"
) -> tuple[GivenSecret, str]:
    """:func:`passphrase_and_source`, as given: the same text is the same passphrase from
    every source in any locale (a Chinese one typed in a GBK terminal, and the file Notepad
    saved it in, as GBK or as UTF-8 with a byte order mark, :func:`~cli.options.secret_text`);
    and the bytes earlier releases took for it, which a key they made opens with."""
    if file is not None:
        source = f"{_named_by(file)} {file}"
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise CLIError(f"cannot read passphrase file {file}: {exc.strerror}") from None
        given = GivenSecret.from_bytes(raw.rstrip(b"\r\n"))
        if not given.text:
            raise CLIError(f"the passphrase file {file} is empty")
    elif env is not None and os.environ.get(env):
        # Python decoded the variable's bytes with the file system's (the locale's) encoding
        given = GivenSecret.from_text(os.environ[env], sys.getfilesystemencoding())
        source = env
    else:
        source = "" if stdin_is_terminal() else "standard input"
        while True:
            try:
                given = read_secret(f"Passphrase for the {what}", confirm=new)
            except click.Abort as exc:
                # without a variable: eport key passwd's new passphrase, which has a file
                # option of its own (it said "a passphrase file", naming no option)
                ways = "--passphrase-file, EPORT_PASSPHRASE" if env else "--new-passphrase-file"
                raise CLIError(
                    f"a passphrase is needed: use {ways}, a terminal or a pipe{no_line_reason(exc)}"
                ) from None
            if not (new and len(given.text) < 8 and stdin_is_terminal()):
                break
            # typed twice at a terminal: ask again rather than end the command (an
            # enrollment would be run anew from its start)
            click.echo("The passphrase must have at least 8 characters; type another.", err=True)
    if new and len(given.text) < 8:
        raise CLIError("the passphrase must have at least 8 characters")
    return given, source


def _named_by(file: Path) -> str:
    """The option of the running command that gave ``file`` (``--passphrase-file``), or the
    environment variable it came from (``EPORT_PASSPHRASE_FILE``)."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        for param in ctx.command.params:
            if not isinstance(param, click.Option) or param.name is None:
                continue
            if ctx.params.get(param.name) != file:
                continue
            envvar = param.envvar if isinstance(param.envvar, str) else None
            if envvar and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT:
                return envvar
            return max(param.opts, key=len)
        ctx = ctx.parent
    return "the passphrase file"


def new_key(key_type: str) -> CertificateIssuerPrivateKeyTypes:
    return KeyType(key_type).generate()


def csr_for(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """A PKCS#10 request (RFC 2986) with an empty subject: the CA names the subject."""
    algorithm: hashes.SHA256 | hashes.SHA384 | None = hashes.SHA256()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = None
    elif KeyType.of(key) is KeyType.P384:
        algorithm = hashes.SHA384()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM)


def write_key(path: Path, key: CertificateIssuerPrivateKeyTypes, pw: bytes) -> None:
    write_private(path, pkcs8.encrypt(key, pw))


P12_NOT_ASCII = (
    "a PKCS#12 bundle whose passphrase is not ASCII does not open in Java (the JDK's "
    'KeyStore and keytool refuse it: "Password is not ASCII")'
)


def p12_passphrase_ok(pw: bytes) -> bool:
    """Whether a bundle.p12 encrypted with ``pw`` opens everywhere it is imported: the
    JDK (17) derives its PBES2 keys only from ASCII passwords."""
    return pw.isascii()


def write_p12(
    path: Path,
    key: CertificateIssuerPrivateKeyTypes,
    cert: x509.Certificate,
    chain: list[x509.Certificate],
    pw: bytes,
    name: str,
) -> None:
    data = pkcs12.serialize_key_and_certificates(
        name.encode(),
        key,  # type: ignore[arg-type]
        cert,
        chain,
        serialization.BestAvailableEncryption(pw),
    )
    write_private(path, data)


def load_key(path: Path | str, pw_file: Path | None) -> CertificateIssuerPrivateKeyTypes:
    """A key file's private key, or the token key a ``pkcs11:`` URI (or a file with one)
    names: that one signs in the token (:mod:`ca.pkcs11`), with the URI's PIN source."""
    return key_and_passphrase(path, pw_file)[0]


def key_and_passphrase(
    path: Path | str, pw_file: Path | None
) -> tuple[CertificateIssuerPrivateKeyTypes, bytes | None]:
    """:func:`load_key`, and the passphrase that opened the key file (None for a token
    key or a key file in the clear), as a new key is made with it (its text in UTF-8),
    even when the key, made by an earlier release, opened with the bytes it took."""
    if isinstance(path, str) and path.startswith(PKCS11_SCHEME):
        return token_key(path), None
    path = Path(path)
    try:
        data, exposed = read_private(path)
    except OSError as exc:
        raise CLIError(f"cannot read key file {path}: {exc.strerror}") from None
    if data.startswith(PKCS11_SCHEME.encode()):
        token = token_key(data.decode().strip())
        if exposed and b"pin-value=" in data:  # the token's PIN, in the clear
            warn_exposed(path, exposed)
        return token, None
    labels = re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)
    if labels and not any(label.endswith(b"PRIVATE KEY") for label in labels):
        # cert.pem given for --key (the two options side by side): said as load_certs
        # says the reverse, not as a key that "cannot be loaded"
        what = labels[0].decode().lower()
        raise CLIError(f"{path} holds a PEM {what}, not a private key")
    encrypted = b"ENCRYPTED" in data
    given, source = (
        given_passphrase(pw_file, new=False, what=f"key {path.name}") if encrypted else (None, "")
    )
    try:
        key = _open_key(data, given)
    except (ValueError, TypeError):
        msg = "not a PEM private key"
        if encrypted:
            # where the passphrase came from: a stale EPORT_PASSPHRASE left in the
            # environment, or the file of another key, is the usual cause
            msg = f"wrong passphrase{f' (from {source})' if source else ''} or {msg}"
        if not labels:  # binary: a DER key, or the bundle.p12 an enrollment wrote beside it
            msg += " (for a PKCS#12 bundle, use the key.pem written beside it)"
        raise CLIError(f"cannot load key {path}: {msg}") from None
    if exposed:
        # Said once the key is known to be one (not for a certificate given as --key),
        # not refused: the key is encrypted under its passphrase (a key in the clear is
        # still read, so that `eport key passwd` can encrypt it, 0600).
        warn_exposed(path, exposed)
    return key, None if given is None else given.encoded


def _open_key(data: bytes, given: GivenSecret | None) -> Any:
    """The private key of the PEM ``data``, opened with ``given``'s bytes, then with the
    bytes an earlier release took for the same passphrase if they differ (a key it made
    from a GBK file or pipe, or a file with a byte order mark); ValueError when neither
    opens it."""
    if given is None:
        return serialization.load_pem_private_key(data, None)
    *before, last = given.candidates
    for pw in before:
        with contextlib.suppress(ValueError, TypeError):
            return serialization.load_pem_private_key(data, pw)
    return serialization.load_pem_private_key(data, last)


def exposure(st: os.stat_result) -> str | None:
    """What a private file's mode (``st``, POSIX) lets others than its owner do with it,
    as "readable by others (mode 0644)"; None when it lets no one else at it, for what is
    not a regular file (a pipe: ``--key <(pass show key)``), and where files have no
    POSIX mode (Windows)."""
    if os.name != "posix" or not stat.S_ISREG(st.st_mode):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return None
    how = (
        "readable by others"
        if mode & 0o004
        else "readable by its group"
        if mode & 0o040
        else "writable by others"
        if mode & 0o002
        else "writable by its group"
        if mode & 0o020
        else "open to its group or others"
    )
    return f"{how} (mode {mode:04o})"


def read_private(path: Path) -> tuple[bytes, str | None]:
    """The bytes of a file that should be its owner's alone (a key, a session), and its
    :func:`exposure`, both of the file opened (not of a name that may be swapped)."""
    with path.open("rb") as fh:
        exposed = exposure(os.fstat(fh.fileno()))
        return fh.read(), exposed


def warn_exposed(path: Path, exposed: str) -> None:
    """One warning line on standard error: ``path``, a private key, is ``exposed``."""
    click.secho(
        f"WARNING: {path} is {exposed}; chmod 600 {shlex.quote(str(path))}",
        fg="yellow",
        err=True,
    )


def load_certs(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read certificate file {path}: {exc.strerror}") from None
    labels = re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)
    if labels and b"CERTIFICATE" not in labels:
        what = labels[0].decode().lower()
        raise CLIError(f"{path} holds a PEM {what}, not a certificate")
    try:
        if labels:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        # cryptography's own text names its parser's internals; the user needs the file.
        if labels:
            raise CLIError(f"{path}: its PEM certificate is damaged and cannot be read") from None
        raise CLIError(
            f"{path} is not a certificate in PEM or DER (for a PKCS#12 bundle, "
            "use the cert.pem written beside it)"
        ) from None


PKCS11_SCHEME = "pkcs11:"


def token_key(uri: str) -> CertificateIssuerPrivateKeyTypes:
    from ca import pkcs11

    return pkcs11.private_key(uri)


class KeyRef(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.5
    """A key file (a :class:`Path`), or a ``pkcs11:`` URI kept as the string it is."""

    name = "FILE|URI"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.startswith(PKCS11_SCHEME):
            return value
        return Path(value)


def load_identity(cert: Path, key: Path | str, pw_file: Path | None) -> Identity:
    """The certificate (with its chain: chain.pem beside it when present) and key."""
    return identity_and_passphrase(cert, key, pw_file)[0]


def identity_and_passphrase(
    cert: Path, key: Path | str, pw_file: Path | None
) -> tuple[Identity, bytes | None]:
    """:func:`load_identity`, and the passphrase that opened its key file (None for a
    token key or a key file in the clear): a renewal encrypts the new key with it."""
    certs = load_certs(cert)
    chain_file = cert.with_name("chain.pem")
    if len(certs) == 1 and chain_file.exists() and chain_file != cert:
        certs += load_certs(chain_file)
    private, pw = key_and_passphrase(key, pw_file)
    if certs[0].public_key() != private.public_key():
        raise CLIError(f"the key {key} does not belong to the certificate {cert}")
    # The root is not sent: the server trusts its own root.
    chain = [c for c in certs if c.issuer != c.subject or c is certs[0]]
    return Identity(chain, private), pw


F = TypeVar("F", bound=Callable[..., Any])


def identity_options(role: str, *, required: bool = True) -> Callable[[F], F]:
    """--cert/--key/--passphrase-file of whoever signs the command's requests
    (``required=False``: only some of the command's requests are signed)."""

    def deco(f: F) -> F:
        f = click.option(
            "--passphrase-file",
            envvar="EPORT_PASSPHRASE_FILE",
            type=click.Path(path_type=Path, dir_okay=False),
            help="File holding the key's passphrase (env EPORT_PASSPHRASE_FILE; "
            "else EPORT_PASSPHRASE, else a prompt, or a pipe's first line, waited for "
            "EPORT_PIPE_WAIT_SECONDS, 30).",
        )(f)
        f = click.option(
            "--key",
            "--pkcs11-uri",
            "key_file",
            required=required,
            envvar="EPORT_KEY",
            type=KeyRef(),
            help=f"The {role}'s encrypted private key, PKCS#8 PEM (env EPORT_KEY); or "
            "the PKCS#11 URI of a token key (pkcs11:token=...;object=...?pin-source=file:PIN), "
            "or a file holding one.",
        )(f)
        f = click.option(
            "--cert",
            "cert_file",
            required=required,
            envvar="EPORT_CERT",
            type=click.Path(path_type=Path, dir_okay=False),
            help=f"The {role}'s certificate, PEM; chain.pem beside it is sent too "
            "(env EPORT_CERT).",
        )(f)
        return f

    return deco
