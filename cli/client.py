"""A thin HTTP client of the CA API; problem documents become :class:`RemoteError`."""

from __future__ import annotations

import datetime
import json
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca.signedreq import SCHEME, sign_request

DEFAULT_SERVER = "http://127.0.0.1:8000"


class CLIError(Exception):
    """An error the CLI reports as one line and a non-zero exit."""


class NotSent(CLIError):
    """No request reached the server: the connection was refused or not made, or its host
    name did not resolve. Whatever the request was to do, it did not happen."""


class RemoteError(CLIError):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        # RFC 9457 (the CA, the token service's APIs) or RFC 6749 §5.2 (its OAuth endpoints)
        detail = (
            problem.get("detail")
            or problem.get("error_description")
            or problem.get("title")
            or problem.get("error")
            or "request failed"
        )
        super().__init__(f"{detail} (HTTP {status})")


def check_server(value: str) -> str | None:
    """Why ``value`` cannot be the e-port server's base URL, or None when it can: an
    ``http://`` or ``https://`` URL with a host (and, if any, a port that parses), with
    no query or fragment (a path is joined after them: ``…?x=1/ca/v1/…``), in UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # bytes of the environment that are not UTF-8
        byte = ord(value[exc.start]) - 0xDC00
        if not 0x80 <= byte <= 0xFF:
            return "is not UTF-8 text"
        return f"is not UTF-8 text (it has the byte 0x{byte:02x})"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port that is not one)
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "names no host"
    if "?" in value or "#" in value:
        return "has a query or a fragment ('?…' or '#…'), which a base URL has not"
    return None


def _unverified(exc: BaseException) -> bool:
    """Whether an SSL error's cause is a certificate that did not verify."""
    import ssl

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        nested = cur.args[0] if cur.args and isinstance(cur.args[0], BaseException) else None
        reason = getattr(cur, "reason", None)  # urllib3's; an ssl error's is a string
        if not isinstance(reason, BaseException):
            reason = None
        cur = nested or reason or cur.__cause__ or cur.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def send(
    http: requests.Session, method: str, server: str, url: str, **kwargs: Any
) -> requests.Response:
    """One request to the e-port server at ``server``: a connection, TLS, name or time
    failure is one line (:class:`CLIError`) naming the server, never a traceback."""
    try:
        resp = http.request(method, url, **kwargs)
    except requests.exceptions.SSLError as exc:
        if _unverified(exc):
            raise NotSent(
                f"the TLS certificate of {server} is not trusted here: give the CA that "
                "issued it in REQUESTS_CA_BUNDLE (a PEM file), or check EPORT_SERVER"
            ) from None
        raise NotSent(
            f"cannot make a TLS connection to {server} "
            "(an http:// server given as https://? check EPORT_SERVER or --server)"
        ) from None
    except requests.ConnectTimeout:
        raise NotSent(f"the server at {server} did not accept a connection in time") from None
    except requests.Timeout:
        raise CLIError(f"the server at {server} did not answer in time") from None
    except requests.ConnectionError as exc:
        if _unresolved(exc):
            raise NotSent(
                f"cannot find the host of {server} (check EPORT_SERVER or --server)"
            ) from None
        if _not_connected(exc):
            raise NotSent(
                f"cannot reach the e-port server at {server} "
                "(is it running? set EPORT_SERVER or --server)"
            ) from None
        # connected, and the connection closed before an answer: the request may have
        # been sent (and done)
        raise CLIError(
            f"the connection to the e-port server at {server} was lost before it answered"
        ) from None
    except requests.RequestException as exc:
        raise CLIError(f"cannot send a request to {server}: {type(exc).__name__}") from None
    if resp.status_code == 414:
        # The server's HTTP layer refused the request line before any API read it: a value
        # that went into the URL (a path segment, a query parameter) is too long. Said so,
        # not as a server that is not the e-port API's.
        raise CLIError(
            f"the request is too long for the server at {server} (HTTP 414 URI Too Long): "
            f"{_longest_value()} is too long"
        )
    return resp


def _longest_value() -> str:
    """The command-line value that made a request too long, named by its option (the
    longest argument of the command line), else "a value given" (one from the
    environment). Read from the command line itself: a request may be sent from a
    thread, where click's context is not at hand."""
    import sys

    args = sys.argv[1:]
    if not args or max(map(len, args)) <= 1000:  # the URLs the CLI makes are short
        return "a value given"
    i = max(range(len(args)), key=lambda k: len(args[k]))
    name, sep, value = args[i].partition("=")
    if not (args[i].startswith("--") and sep):
        name, value = "an argument", args[i]
        if i > 0 and args[i - 1].startswith("-"):
            name = args[i - 1]
    return f"{name} ({len(value)} characters)"


def _not_connected(exc: requests.ConnectionError) -> bool:
    """The connection was never made (refused, no route): nothing was sent."""
    from urllib3.exceptions import NewConnectionError

    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _unresolved(exc: requests.ConnectionError) -> bool:
    """The connection failed because the host's name did not resolve."""
    from urllib3.exceptions import NameResolutionError

    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NameResolutionError)


def not_ours(resp: requests.Response, server: str) -> CLIError | None:
    """An answer that did not come from an e-port API (a web page, another server's
    JSON, a route that does not exist there): the one line to say instead of its body."""
    kind = resp.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    status = f"HTTP {resp.status_code} {resp.reason}".strip()
    # a proxy's 502, 503 or 504 page is the server's trouble, not a wrong URL
    hint = (
        ""
        if resp.status_code in (502, 503, 504)
        else " (is EPORT_SERVER or --server the e-port server's base URL?)"
    )
    if "json" not in kind:
        return CLIError(
            f"the server at {server} answered {status} with {kind}, not the e-port API's JSON{hint}"
        )
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return CLIError(
            f"the server at {server} answered {status} with JSON that is not the e-port API's{hint}"
        )
    # Flask's own 404 for a path no route serves: the base URL is not the server's
    if resp.status_code == 404 and doc.get("type") == "about:blank":
        return CLIError(
            f"the server at {server} has no {urlsplit(resp.url).path} "
            "(is EPORT_SERVER or --server the e-port server's base URL, with no path?)"
        )
    return None


class Identity:
    """A certificate chain and its private key, used to sign privileged requests."""

    def __init__(
        self, chain: list[x509.Certificate], key: CertificateIssuerPrivateKeyTypes
    ) -> None:
        self.chain = chain
        self.key = key


class CAClient:
    def __init__(self, server: str, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.http = requests.Session()
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        identity: Identity | None = None,
    ) -> dict[str, Any]:
        """Send one request; ``path`` includes any query string, exactly as signed."""
        # UTF-8 (RFC 8259 §8.1); an argument whose bytes were not UTF-8 (Python hands them on
        # as lone surrogates) fails here, before anything is sent: main() says which byte
        data = (
            json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            if body is not None
            else b""
        )
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if identity is not None:
            token = sign_request(
                identity.key,
                identity.chain,
                method,
                path,
                data,
                datetime.datetime.now(datetime.UTC),
            )
            headers["Authorization"] = f"{SCHEME} {token}"
        resp = send(
            self.http,
            method,
            self.server,
            self.server + path,
            data=data or None,
            headers=headers,
            timeout=self.timeout,
        )
        foreign = not_ours(resp, self.server)
        if foreign is not None:
            raise foreign
        doc: dict[str, Any] = resp.json()
        if resp.status_code >= 400:
            raise RemoteError(resp.status_code, doc)
        return doc
