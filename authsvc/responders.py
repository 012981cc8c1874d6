"""How the token service asks a remote CA's OCSP responders (``EPORT_AUTH_STATUS_MODE=ocsp``).

:class:`Responders` is the transport :class:`ca.ocsp_client.OCSPStatusSource` posts its
requests through (and :class:`ca.ocsp_client.IssuingCRLs`, the session sweep's, gets its
CRLs through: :meth:`Responders.get`): one HTTP session, a deadline per request, and
every failure to get an answer (no connection, a timeout, an HTTP error such as a front
proxy's 429 or 502) raised as :class:`ca.ocsp_client.StatusUnavailable`, which the token
service answers 503: a fault, not a verdict on anyone's certificate.

A responder that failed is not asked again for :attr:`Responders.pause` seconds, and then
by one request at a time until it answers: while the CA is down or hangs, the token
service's request threads fail fast instead of each waiting out the deadline, so that
what does not need the CA (the key set, tokens already judged within the status cache)
goes on being served.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import requests

from ca.ocsp_client import StatusUnavailable

CONNECT_SECONDS = 2.0
"""The deadline to connect to a responder."""
ANSWER_SECONDS = 5.0
"""The deadline between bytes of its answer."""
PAUSE_SECONDS = 2.0
"""How long a responder that failed is not asked again."""
MAX_CRL_BYTES = 256 * 1024 * 1024
"""A CRL larger is refused unread (a million entries take about 40 MB)."""


class Responders:
    """``post(url, body) -> bytes`` for OCSP requests (RFC 6960 Appendix A.1, POST)."""

    def __init__(
        self,
        http: requests.Session | None = None,
        *,
        pause: float = PAUSE_SECONDS,
        timeout: tuple[float, float] = (CONNECT_SECONDS, ANSWER_SECONDS),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http or requests.Session()
        self.pause = pause
        self.timeout = timeout
        self.clock = clock
        self._down: dict[str, float] = {}
        """Responder URL → until when it is taken as down (while one request probes it,
        until that request's deadline)."""
        self._lock = threading.Lock()
        self._crls: dict[str, tuple[str | None, str | None, bytes]] = {}
        """CRL URL → the validators of its last answer (ETag, Last-Modified) and its bytes,
        when it had any (the sweeper's thread alone asks)."""

    def __call__(self, url: str, body: bytes) -> bytes:
        self._may_ask(url)
        try:
            r = self.http.post(
                url,
                data=body,
                headers={"Content-Type": "application/ocsp-request"},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            self._failed(url)
            raise StatusUnavailable(
                f"the OCSP responder at {url} could not be asked ({type(exc).__name__})"
            ) from None
        if r.status_code != 200:
            self._failed(url)
            raise StatusUnavailable(f"the OCSP responder at {url} answered HTTP {r.status_code}")
        with self._lock:
            self._down.pop(url, None)
        return r.content

    def get(self, url: str) -> bytes:
        """A CRL (RFC 5280 §4.2.1.13, ``application/pkix-crl``), asking caches on the way
        to revalidate it (RFC 9111 §5.2.1.4): the CA's answer allows them 30 s. When the
        last answer from ``url`` had a validator (``ETag``, ``Last-Modified``) the request
        is conditional (RFC 9110 §13.1), and a 304 gives the bytes held."""
        self._may_ask(url)
        headers = {"Accept": "application/pkix-crl", "Cache-Control": "no-cache"}
        held = self._crls.get(url)
        if held is not None:
            etag, modified, _ = held
            if etag:
                headers["If-None-Match"] = etag
            if modified:
                headers["If-Modified-Since"] = modified
        try:
            with self.http.get(
                url, headers=headers, timeout=self.timeout, allow_redirects=False, stream=True
            ) as r:
                if r.status_code == 304 and held is not None:
                    with self._lock:
                        self._down.pop(url, None)
                    return held[2]
                if r.status_code != 200:
                    self._failed(url)
                    raise StatusUnavailable(f"the CRL at {url} answered HTTP {r.status_code}")
                body = bytearray()
                for chunk in r.iter_content(1 << 16):
                    body += chunk
                    if len(body) > MAX_CRL_BYTES:
                        self._failed(url)
                        raise StatusUnavailable(f"the CRL at {url} is over {MAX_CRL_BYTES} bytes")
            validators = (r.headers.get("ETag"), r.headers.get("Last-Modified"))
        except requests.RequestException as exc:
            self._failed(url)
            raise StatusUnavailable(
                f"the CRL at {url} could not be had ({type(exc).__name__})"
            ) from None
        with self._lock:
            self._down.pop(url, None)
        if any(validators):
            self._crls[url] = (*validators, bytes(body))
        else:
            self._crls.pop(url, None)
        return bytes(body)

    def failing(self) -> int:
        """How many responder and CRL addresses failed when last asked and have not
        answered since (``/auth/health``: the CA cannot be asked for status now)."""
        with self._lock:
            return len(self._down)

    def _may_ask(self, url: str) -> None:
        now = self.clock()
        with self._lock:
            until = self._down.get(url)
            if until is None:
                return
            if now < until:
                raise StatusUnavailable(
                    f"{url} failed less than {self.pause:g} s ago (or is being asked "
                    "again by another request): not asked"
                )
            # this request probes it; the others fail fast until it has its answer
            self._down[url] = now + sum(self.timeout) + self.pause

    def _failed(self, url: str) -> None:
        with self._lock:
            self._down[url] = self.clock() + self.pause
