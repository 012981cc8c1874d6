"""The CLI's SSO session: a refresh token kept in the user's config directory (0600).

``eport login`` signs an RFC 7523 assertion with the certificate's key once; ``eport
token`` then gets access tokens for any service from the refresh token alone, rotating
it on every use, until the session ends (``eport logout``, 8 h, or revocation).

The refresh token is a bearer secret kept in the clear: whoever reads the file can get
tokens in the user's name. A session file its group or others may read or write (POSIX
mode) is refused, as ssh refuses such a private key; ``eport login`` again ends that
session and keeps the new one 0600.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
import shlex
import tempfile
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization

from ca.keys import KeyType
from ca.signer import write_private
from cli.client import CLIError, Identity, not_ours, parse, send
from cli.keyfiles import read_private


def config_dir() -> Path:
    base = os.environ.get("EPORT_CONFIG_DIR") or os.environ.get("XDG_CONFIG_HOME")
    root = Path(base) if base else Path.home() / ".config"
    return root / "eport" if not os.environ.get("EPORT_CONFIG_DIR") else root


def session_file(server: str) -> Path:
    safe = server.rstrip("/").split("://", 1)[-1].replace("/", "_").replace(":", "_")
    return config_dir() / f"session-{safe}.json"


def save(server: str, data: dict[str, Any]) -> Path:
    path = session_file(server)
    try:
        write_private(path, json.dumps(data, indent=2).encode())
    except OSError as exc:
        raise CLIError(_unwritable(path, exc)) from None
    return path


def check_writable(server: str) -> None:
    """The session file can be written: said before a session is opened or its refresh
    token rotated, which a file that cannot be saved would leave orphaned."""
    path = session_file(server)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a new file of a unique name beside it, as write_private makes: a fixed name
        # would follow a symlink left there
        fd, probe = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CLIError(_unwritable(path, exc)) from None


def _unwritable(path: Path, exc: OSError) -> str:
    return (
        f"cannot save the session in {path}: {exc.strerror or exc} "
        "(set EPORT_CONFIG_DIR to a directory you can write)"
    )


def load(server: str, *, exposed_ok: bool = False) -> dict[str, Any]:
    """The session kept for ``server``. One in a file others than the user may read or
    write is refused (:class:`CLIError`) unless ``exposed_ok``: its refresh token may
    have been copied (or the file replaced), and it is a password in the clear."""
    path = session_file(server)
    try:
        raw, exposed = read_private(path)
        data = json.loads(raw)
    except FileNotFoundError:
        raise CLIError(
            f"not logged in to {server}; run `eport login --cert ... --key ...`"
        ) from None
    except ValueError:  # not JSON (or not UTF-8): cut short, or written over
        raise CLIError(
            f"the session file {path} is damaged (not JSON); run `eport login` again"
        ) from None
    except OSError as exc:
        raise CLIError(f"cannot read the session file {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict) or "refresh_token" not in data:
        raise CLIError(f"the session file {path} is damaged; run `eport login` again")
    if exposed and not exposed_ok:
        raise CLIError(
            f"the session file {path} is {exposed}, and its refresh token works for "
            "anyone who copied it: run `eport login` again (it ends this session), or "
            f"chmod 600 {shlex.quote(str(path))} if no one else can have read it"
        )
    return data


def saved(server: str) -> dict[str, Any] | None:
    """The session kept for ``server``, or None when there is none that can be read; for
    ``eport login`` to end it, so one in a file others may read is read too (ending it
    is what its exposure calls for)."""
    try:
        return load(server, exposed_ok=True)
    except CLIError:
        return None


def forget(server: str) -> None:
    session_file(server).unlink(missing_ok=True)


def assertion(ident: Identity, token_endpoint: str, subject: str) -> str:
    """An RFC 7523 §3 JWT: iss/sub the subject, aud the token endpoint, 2-minute life."""
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    claims = {
        "iss": subject,
        "sub": subject,
        "aud": token_endpoint,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_urlsafe(18),
    }
    headers = {
        "typ": "JWT",
        "x5c": [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
            for c in ident.chain
        ],
    }
    alg = KeyType.of(ident.key).jws_alg
    return jwt.encode(claims, ident.key, algorithm=alg, headers=headers)  # type: ignore[arg-type]


def post_form(server: str, path: str, data: dict[str, str], timeout: float = 30) -> dict[str, Any]:
    """POST a form to the token service at ``server`` + ``path``: its JSON answer, or one
    line (:class:`CLIError`) for an OAuth error (RFC 6749 §5.2), a problem document, or an
    answer that is not the token service's."""
    with requests.Session() as http:
        r = send(http, "POST", server, server.rstrip("/") + path, data=data, timeout=timeout)
    foreign = not_ours(r, server)
    if foreign is not None:
        raise foreign
    doc: dict[str, Any] = parse(r, server)
    if r.status_code >= 400:
        msg = doc.get("error_description") or doc.get("detail") or r.reason
        err = doc.get("error")
        if err == "invalid_grant" and "refresh_token" in data:
            # the session this file holds is over (logout, a hold, a revocation, its end)
            msg = f"{msg}; log in again: eport login --cert CERT --key KEY"
        raise CLIError(f"{msg} ({err})" if err else f"{msg} (HTTP {r.status_code})")
    return doc
