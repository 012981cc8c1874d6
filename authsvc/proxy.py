"""Client certificates forwarded by a TLS-terminating proxy, believed only from trusted
proxies.

Two header forms: RFC 9440 ``Client-Cert`` (a Structured Field byte sequence,
``:<base64 DER>:``) and the common nginx form ``X-SSL-Client-Cert`` (the PEM,
URL-escaped: ``$ssl_client_escaped_cert``). A request that carries either header from
an address that is not a configured trusted proxy is refused outright: the header is a
claim anyone can make, and silently ignoring it would hide a misconfiguration.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import unquote

from cryptography import x509

from ca.errors import BadRequest, Unauthenticated

HEADERS = ("Client-Cert", "X-SSL-Client-Cert")
FORWARDED_FOR = "X-Forwarded-For"
PROXY_SECRET = "X-Eport-Proxy-Secret"
"""The header a proxy proves itself with when ``EPORT_AUTH_PROXY_SECRET`` is set."""


class TrustedProxies:
    def __init__(self, entries: Iterable[str], secret: str = "") -> None:
        self.networks = [
            ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip()
        ]
        self._seen: dict[str, bool] = {}  # answers per address string (the fast paths)
        self._secret = secret.encode()

    def vouched(self, headers: Headers) -> bool:
        """Whether the request carries the proxies' secret (always, when none is set):
        from a trusted address, a process that is not the proxy (any process of the host,
        when the proxy reaches the service over loopback) cannot forge a forwarded
        certificate without it. Compared in constant time."""
        if not self._secret:
            return True
        given = headers.get(PROXY_SECRET)
        return given is not None and hmac.compare_digest(given.encode(), self._secret)

    def trusts(self, addr: str | None) -> bool:
        if not addr:
            return False
        known = self._seen.get(addr)
        if known is None:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                return False
            known = any(ip in net for net in self.networks)
            if len(self._seen) >= 1024:
                self._seen.clear()
            self._seen[addr] = known
        return known


class Headers(Protocol):
    def get(self, key: str) -> str | None: ...


def client_address(
    headers: Headers, remote_addr: str | None, proxies: TrustedProxies
) -> str | None:
    """The address of the client a request comes from, for failed-login counts and events.

    From a peer that is not a trusted proxy: the peer's own address (an
    ``X-Forwarded-For`` it sends is a claim anyone can make, and is ignored). From a
    trusted proxy: the nearest address in its ``X-Forwarded-For`` that is not itself a
    trusted proxy, read from the right (each proxy appends the address it got the request
    from; whatever lies left of that may be the client's own invention). Without the
    header, or with an entry that is not an IP address, the proxy's address: every client
    behind it then shares one count, as before."""
    if not proxies.trusts(remote_addr) or not proxies.vouched(headers):
        return remote_addr
    value = headers.get(FORWARDED_FOR)
    if not value:
        return remote_addr
    for entry in reversed(value.split(",")):
        addr = entry.strip()
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            return remote_addr
        if not proxies.trusts(addr):
            return addr
    return remote_addr


def forwarded_certificate(
    headers: Headers, remote_addr: str | None, proxies: TrustedProxies
) -> x509.Certificate | None:
    """The forwarded client certificate, None if there is none; raises if not believable."""
    get = headers.get
    present = [h for h in HEADERS if get(h)]
    if not present:
        return None
    if not proxies.trusts(remote_addr):
        raise Unauthenticated(
            f"{present[0]} header from {remote_addr}, which is not a trusted proxy"
        )
    if not proxies.vouched(headers):
        raise Unauthenticated(
            f"{present[0]} header from {remote_addr} without the proxies' secret "
            f"({PROXY_SECRET}, EPORT_AUTH_PROXY_SECRET)"
        )
    value = str(get(present[0])).strip()
    try:
        if present[0] == "Client-Cert":
            if not (value.startswith(":") and value.endswith(":")):
                raise ValueError("not an RFC 8941 byte sequence")
            return x509.load_der_x509_certificate(base64.b64decode(value[1:-1], validate=True))
        return x509.load_pem_x509_certificate(unquote(value).encode())
    except ValueError:
        # cryptography's text names its parser's internals; the proxy's operator needs
        # to know which header and what it must hold
        what = (
            "an RFC 9440 byte sequence of the DER certificate"
            if present[0] == "Client-Cert"
            else "the URL-escaped PEM certificate"
        )
        raise BadRequest(
            f"unreadable {present[0]} header from the proxy: it must hold {what}"
        ) from None
