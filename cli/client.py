"""A thin HTTP client of the CA API; problem documents become :class:`RemoteError`."""

from __future__ import annotations

import datetime
import json
import os
import ssl
import time
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


class ForeignAnswer(CLIError):
    """An answer that did not come from an e-port API (:func:`not_ours`), with its HTTP
    status: a 4xx of another server, or of a proxy that did not forward the request, means
    the CA did nothing with it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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


class NotTheAPI(CLIError):
    """An answer that is JSON, but not the e-port API's: it lacks a member every answer of
    that request has (another server's JSON at EPORT_SERVER)."""


class Answer(dict[str, Any]):
    """A JSON object of the server's answer (:func:`parse`), nested ones too: a member it
    lacks is :class:`NotTheAPI` naming it and the server, not a ``KeyError('state')`` that
    every command said as an 'unexpected error' for another server's ``{"hello": …}``."""

    __slots__ = ()
    server = ""
    """The base URL of the server that answered it, for the error (set by :func:`parse`)."""

    def __missing__(self, key: str) -> Any:
        at = f" at {self.server}" if self.server else ""
        raise NotTheAPI(
            f"the answer of the server{at} has no {key!r}: it is not the e-port API's "
            "(is EPORT_SERVER or --server the e-port server's base URL?)"
        )


def parse(resp: requests.Response, server: str) -> Any:
    """The JSON of ``resp``, each of its objects an :class:`Answer` naming ``server``
    (ValueError for a body that is not JSON, as ``resp.json()`` raises)."""
    # one class for the answer, not the server's name in each object: an export's page
    # holds thousands
    answer = type("Answer", (Answer,), {"__slots__": (), "server": server})
    return json.loads(resp.content, object_pairs_hook=answer)


def check_server(value: str) -> str | None:
    """Why ``value`` cannot be the e-port server's base URL, or None when it can: an
    ``http://`` or ``https://`` URL with a host (and, if any, a port that parses), with
    no query or fragment (a path is joined after them: ``…?x=1/ca/v1/…``), in UTF-8,
    not empty and with no blank anywhere (RFC 3986 has none)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # bytes of the environment that are not UTF-8
        byte = ord(value[exc.start]) - 0xDC00
        if not 0x80 <= byte <= 0xFF:
            return "is not UTF-8 text"
        return f"is not UTF-8 text (it has the byte 0x{byte:02x})"
    if not value:
        return "is empty"
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        # urlsplit drops leading blanks and takes "127.0.0.1 " as a host name
        return "has a blank or a control character in it, which a URL has not"
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


def _verify_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure an SSL error was caused by, if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        nested = cur.args[0] if cur.args and isinstance(cur.args[0], BaseException) else None
        reason = getattr(cur, "reason", None)  # urllib3's; an ssl error's is a string
        if not isinstance(reason, BaseException):
            reason = None
        cur = nested or reason or cur.__cause__ or cur.__context__
    return None


def _unverified(exc: BaseException) -> bool:
    """Whether an SSL error's cause is a certificate that did not verify."""
    return _verify_error(exc) is not None or "CERTIFICATE_VERIFY_FAILED" in str(exc)


_NAME_MISMATCH = (62, 64)
"""OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: a
certificate that verified, issued for another host name (or address)."""


def _other_name(exc: BaseException) -> bool:
    """Whether an SSL error is a trusted certificate for another host name than the URL's."""
    failure = _verify_error(exc)
    if failure is not None:
        return failure.verify_code in _NAME_MISMATCH
    return "Hostname mismatch" in str(exc) or "IP address mismatch" in str(exc)


def _ca_bundle() -> tuple[str, str] | None:
    """The variable naming the CA certificates requests trusts instead of its own, and the
    file it names, as requests picks them (REQUESTS_CA_BUNDLE, else CURL_CA_BUNDLE)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        value = os.environ.get(name)
        if value:
            return name, value
    return None


def _check_ca_bundle(url: str) -> None:
    """Before a request to an ``https://`` URL: a CA bundle variable naming no file is one
    line naming both (requests raised an OSError, an 'unexpected error')."""
    bundle = _ca_bundle()
    if bundle is None or not url.lower().startswith("https:"):
        return
    name, path = bundle
    if not os.path.exists(path):
        raise NotSent(
            f"{name} names {path}, which does not exist: give there the PEM file of the CA "
            f"that issued the server's TLS certificate, or unset {name}"
        )


def _unusable_bundle() -> tuple[str, str] | None:
    """The CA bundle variable and its file, when that file holds no PEM certificate (a
    TLS failure then came from it, not from the server)."""
    bundle = _ca_bundle()
    if bundle is None or os.path.isdir(bundle[1]):  # a directory is read lazily, by hash
        return None
    try:
        ssl.create_default_context(cafile=bundle[1])
    except (ssl.SSLError, OSError, ValueError):
        return bundle
    return None


BODY_CHUNK = 65536
"""The most of an answer's body read at once (whatever has come, up to this)."""


def _read_within(resp: requests.Response, deadline: float) -> None:
    """Read the body of ``resp`` (sent with ``stream=True``) whole before ``deadline`` (of
    :func:`time.monotonic`), into ``resp.content``: each wait for more is cut to the time
    left, so a server that sends a byte every few seconds cannot hold the command (the
    ``timeout`` of requests bounds each read of the socket, not the answer). Errors as
    requests raises them: :class:`requests.ReadTimeout` when the deadline passes."""
    from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError
    from urllib3.exceptions import SSLError as BodySSLError

    raw = resp.raw
    sock = _socket_of(raw)
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise requests.ReadTimeout("the whole answer did not come in time")
            if sock is not None:
                try:
                    sock.settimeout(left)
                except OSError:  # closed: the rest of the answer is in the reader's buffer
                    sock = None
            chunk = raw.read1(BODY_CHUNK, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
    except (ReadTimeoutError, TimeoutError) as exc:
        resp.close()
        raise requests.ReadTimeout(exc) from None
    except ProtocolError as exc:  # closed before the whole answer came
        resp.close()
        raise requests.ConnectionError(exc) from None
    except DecodeError as exc:
        resp.close()
        raise requests.exceptions.ContentDecodingError(exc) from None
    except BodySSLError as exc:
        resp.close()
        raise requests.exceptions.SSLError(exc) from None
    except BaseException:
        resp.close()
        raise
    # what requests does when it reads a body itself (Response.content)
    resp._content = b"".join(chunks)
    resp._content_consumed = True  # type: ignore[attr-defined]
    resp.close()  # the connection goes back to the pool, for the next request


def fetch(method: str, url: str, *, timeout: float, **kwargs: Any) -> requests.Response:
    """``requests.request``, its answer read whole within ``timeout`` seconds
    (:func:`_read_within`), for a URL of another server than the e-port API's (an OCSP
    responder, a CRL, a published checkpoint); errors are requests' own."""
    deadline = time.monotonic() + timeout
    with requests.Session() as http:
        resp = http.request(method, url, timeout=timeout, stream=True, **kwargs)
        _read_within(resp, deadline)
    return resp


def _socket_of(raw: Any) -> Any:
    """The socket an answer is read from, or None: the pool's connection's, else (a server
    that closes the connection after its answer, which urllib3 lets go of at once) the one
    under http.client's reader."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None:
        reader = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(reader, "raw", None), "_sock", None)
    return sock if hasattr(sock, "settimeout") else None


def send(
    http: requests.Session,
    method: str,
    server: str,
    url: str,
    *,
    timeout: float,
    **kwargs: Any,
) -> requests.Response:
    """One request to the e-port server at ``server``, its answer read whole within
    ``timeout`` seconds of its start (the connection and the answer's head: within
    ``timeout`` of each read): a connection, TLS, name or time failure is one line
    (:class:`CLIError`) naming the server, never a traceback."""
    deadline = time.monotonic() + timeout
    _check_ca_bundle(url)
    try:
        resp = http.request(method, url, timeout=timeout, stream=True, **kwargs)
        _read_within(resp, deadline)
    except requests.exceptions.SSLError as exc:
        if _other_name(exc):
            host = urlsplit(url).hostname
            raise NotSent(
                f"the TLS certificate of {server} does not match its host name {host}: it "
                "was issued for another name; check EPORT_SERVER (or --server)"
            ) from None
        if _unverified(exc):
            raise NotSent(
                f"the TLS certificate of {server} is not trusted here: give the CA that "
                "issued it in REQUESTS_CA_BUNDLE (a PEM file), or check EPORT_SERVER"
            ) from None
        bundle = _unusable_bundle()
        if bundle is not None:
            raise NotSent(
                f"{bundle[0]} names {bundle[1]}, which holds no PEM certificate: give there "
                f"the CA that issued the TLS certificate of {server}, as PEM"
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


def not_ours(resp: requests.Response, server: str) -> ForeignAnswer | None:
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
    code = resp.status_code
    if "json" not in kind and code in (413, 429):
        # A front proxy's own limits (docs/ca.md, the front): not a wrong URL either (HTTP
        # edges probe, session 27)
        if code == 429:
            wait = resp.headers.get("Retry-After", "").strip()
            later = f"try again in {wait} s" if wait.isdigit() else "try again later"
            said = f"the server at {server} is limiting requests ({status}): {later}"
        else:
            said = f"the server at {server} refused the request as too large ({status})"
        return ForeignAnswer(said, code)
    if "json" not in kind:
        return ForeignAnswer(
            f"the server at {server} answered {status} with {kind}, not the e-port API's "
            f"JSON{hint}",
            code,
        )
    try:
        doc = parse(resp, server)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return ForeignAnswer(
            f"the server at {server} answered {status} with JSON that is not the e-port "
            f"API's{hint}",
            code,
        )
    # Flask's own 404 for a path no route serves: the base URL is not the server's
    if resp.status_code == 404 and doc.get("type") == "about:blank":
        return ForeignAnswer(
            f"the server at {server} has no {urlsplit(resp.url).path} "
            "(is EPORT_SERVER or --server the e-port server's base URL, with no path?)",
            code,
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
        doc: dict[str, Any] = parse(resp, self.server)
        if resp.status_code >= 400:
            raise RemoteError(resp.status_code, doc)
        return doc
