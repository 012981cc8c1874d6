"""Online token checks: OAuth 2.0 Token Introspection (RFC 7662) as a registered service.

The service authenticates with its own service-tls certificate, one of two ways:

* a signed request (the default): ``Authorization: EPort-Signed <jws>`` (see
  :mod:`ca.signedreq`), whose JWS binds the method, the path and a hash of the exact form
  body, with a single-use ``jti``; works over plain HTTP inside a trusted network;
* mutual TLS (``tls_client_auth=True``, RFC 8705 §2.1): the certificate and key are
  presented in the TLS handshake to the e-port TLS proxy, which checks them and forwards
  the certificate to the token service (RFC 9440 ``Client-Cert`` or nginx's
  ``X-SSL-Client-Cert``); no per-call signature and no per-call database write, so it is
  the fast way for busy services (see ``examples/introspection_proxy/nginx.conf``).
The token service answers ``active: true`` only for a token of this service's own
audience whose session and login certificate are still good (within the documented 5 s of
a logout or revocation); anything else is ``{"active": false}`` (RFC 7662 §2.2).

Use it where a revocation must take effect within seconds (payments, submissions);
offline verification (:class:`TokenVerifier`) trusts a token until its ``exp``.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from requests.adapters import HTTPAdapter

from authsvc.client.claims import Claims, claims_from
from authsvc.client.errors import (
    InactiveToken,
    IntrospectionFailed,
    InvalidToken,
    ServiceKeyUnusable,
)
from ca.signedreq import SCHEME, sign_request

INTROSPECTION_PATH = "/auth/introspect"
log = logging.getLogger("eport.client")
ACCESS_TOKEN_HINT = "access_token"  # RFC 7662 §2.1 token_type_hint
_SIGNING_KEYS = (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)

CertificateSource = x509.Certificate | Sequence[x509.Certificate] | str | Path
KeySource = CertificateIssuerPrivateKeyTypes | str | Path


@dataclass(frozen=True)
class Introspection:
    """An RFC 7662 §2.2 answer."""

    active: bool
    claims: Claims | None
    """The token's claims when ``active``; None otherwise."""
    raw: dict[str, Any]
    """The response members as received."""


def _load_chain(source: CertificateSource) -> list[x509.Certificate]:
    if isinstance(source, x509.Certificate):
        return [source]
    if isinstance(source, str | Path):
        path = Path(source)
        certs = x509.load_pem_x509_certificates(path.read_bytes())
        chain_file = path.with_name("chain.pem")
        if len(certs) == 1 and chain_file.exists() and chain_file != path:
            certs += x509.load_pem_x509_certificates(chain_file.read_bytes())
        # The token service trusts its own roots; only the leaf and issuing CAs are sent.
        return [c for i, c in enumerate(certs) if i == 0 or c.issuer != c.subject]
    return list(source)


_ENCRYPTED_PEM = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")
"""What an encrypted PEM key holds: PKCS#8 (what ``eport enroll`` writes) or OpenSSL's
traditional form."""


def _load_key(source: KeySource, passphrase: bytes | None) -> CertificateIssuerPrivateKeyTypes:
    """The key of a key object, or of a PEM file decrypted with ``passphrase``;
    :class:`ServiceKeyUnusable` naming the file and what to change when the file cannot
    be read or decrypted (cryptography's own ``TypeError``/``ValueError`` named neither)."""
    if not isinstance(source, str | Path):
        return source
    where = str(source)
    try:
        pem = Path(source).read_bytes()
    except OSError as exc:
        raise ServiceKeyUnusable(
            f"cannot read the service key {where}: {exc.strerror or exc}", where
        ) from None
    encrypted = any(marker in pem for marker in _ENCRYPTED_PEM)
    if encrypted and passphrase is None:
        raise ServiceKeyUnusable(
            f"the service key {where} is encrypted and no passphrase was given: pass its "
            "passphrase as Introspector(..., passphrase=b'...')",
            where,
        )
    try:
        key = serialization.load_pem_private_key(pem, passphrase)
    except TypeError:
        if encrypted:  # not bytes: a caller's type error, not the file's
            raise
        raise ServiceKeyUnusable(
            f"the service key {where} is not encrypted, but a passphrase was given: "
            "pass passphrase=None",
            where,
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        if encrypted:
            raise ServiceKeyUnusable(
                f"the passphrase does not decrypt the service key {where}: check "
                "Introspector's passphrase= (the key's passphrase as bytes; a newline read "
                "from a file with it is part of it)",
                where,
            ) from None
        raise ServiceKeyUnusable(
            f"{where} holds no PEM private key: give the service-tls certificate's key "
            "(key.pem beside cert.pem) as the service key",
            where,
        ) from None
    if not isinstance(key, _SIGNING_KEYS):
        raise ValueError(f"{source} does not hold a key of a service-tls certificate")
    return key


def _conventional_audience(cert: x509.Certificate) -> str | None:
    """``https://<DNS name>`` of a service-tls certificate: the audience the registry
    (``policies/services.toml``) gives a service whose ``identity`` is that name; None
    for a certificate that names no host."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    hosts = san.get_values_for_type(x509.DNSName)
    return f"https://{hosts[0]}" if hosts else None


class _ClientCertificateAdapter(HTTPAdapter):
    """Connections made with one SSL context: the service's client certificate."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


def client_tls_context(
    cert_file: str | Path,
    key_file: str | Path,
    passphrase: bytes | None,
    ca_file: str | Path | None = None,
) -> ssl.SSLContext:
    """A TLS client context presenting the service's certificate (and verifying the
    proxy's certificate against ``ca_file``, or the system's roots)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file), password=passphrase)
    return ctx


class Introspector:
    """Asks the token service whether a token is active, as the service ``service_cert``.

    ``server`` is the e-port server's base URL (``EPORT_SERVER``); ``endpoint`` overrides
    the introspection URL (the ``introspection_endpoint`` of the issuer's metadata).
    ``service_cert`` is the service-tls certificate (a PEM file, with ``chain.pem`` beside
    it, or certificate objects, leaf first); ``service_key`` its private key (a PEM file,
    decrypted with ``passphrase``, or a key object).

    ``tls_client_auth=True`` authenticates by mutual TLS instead of signing each call: the
    certificate and key must then be PEM files, ``endpoint``/``server`` the HTTPS URL of
    the e-port TLS proxy, and ``ca_file`` the CA bundle that proxy's certificate chains to
    (default: the system's roots). ``http``, if given, gets the client certificate mounted
    for ``https://``.

    ``audience`` is this service's audience (its ``audience`` in ``policies/services.toml``):
    the ``realm`` of ``require_token``'s challenges (RFC 6750 §3), as for a
    :class:`TokenVerifier`. When given, an active answer whose ``aud`` does not hold it is
    :class:`IntrospectionFailed` (the token service judged the token for another service:
    this one runs with another's credential). When omitted, it is ``https://`` and the
    certificate's DNS name, the registry's convention, used for the realm only, and the
    constructor logs a warning (``eport.client``) saying that the answers' audience goes
    unchecked.

    A key file that cannot be used (encrypted and no ``passphrase``, a wrong one, one
    given for a key that is not encrypted, no PEM key at all) is
    :class:`ServiceKeyUnusable`, naming the file.
    """

    def __init__(
        self,
        server: str,
        service_cert: CertificateSource,
        service_key: KeySource,
        *,
        passphrase: bytes | None = None,
        endpoint: str | None = None,
        http: requests.Session | None = None,
        timeout: float = 5.0,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        tls_client_auth: bool = False,
        ca_file: str | Path | None = None,
        audience: str | None = None,
    ) -> None:
        self.endpoint = endpoint or server.rstrip("/") + INTROSPECTION_PATH
        self.tls_client_auth = tls_client_auth
        parts = urlsplit(self.endpoint)
        self._signed_path = parts.path + ("?" + parts.query if parts.query else "")
        self.chain = _load_chain(service_cert)
        if not self.chain:
            raise ValueError("the service certificate is missing")
        self._key = _load_key(service_key, passphrase)
        if self.chain[0].public_key() != self._key.public_key():
            raise ValueError("the service key does not belong to the service certificate")
        self._checks_audience = bool(audience)
        self.audience = audience if audience else _conventional_audience(self.chain[0])
        """The audience this service validates tokens for (see the class's docstring)."""
        if not audience:
            # Said once, when the service starts: every call would repeat it. The token
            # service answers for the caller's credential's audience, so a service started
            # with another's certificate would take that service's tokens unnoticed.
            log.warning(
                "Introspector for %s: no audience= given, so an active answer for another "
                "service's audience is not refused (taking %s as the realm only); pass "
                "audience= (this service's audience in policies/services.toml)",
                self.endpoint,
                self.audience,
            )
        self._own_http = http is None
        self.http = http if http is not None else requests.Session()
        if tls_client_auth:
            if not isinstance(service_cert, str | Path) or not isinstance(service_key, str | Path):
                raise ValueError("tls_client_auth needs the certificate and key as PEM files")
            if parts.scheme != "https":
                raise ValueError(f"tls_client_auth needs an https:// endpoint, not {self.endpoint}")
            context = client_tls_context(service_cert, service_key, passphrase, ca_file)
            self.http.mount("https://", _ClientCertificateAdapter(context))
        self.timeout = timeout
        self._clock = clock

    def close(self) -> None:
        """Close the HTTP session, if the introspector made it."""
        if self._own_http:
            self.http.close()

    def __enter__(self) -> Introspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def introspect(self, token: str, token_type_hint: str = ACCESS_TOKEN_HINT) -> Introspection:
        """The token service's answer for ``token`` (RFC 7662 §2.1 request, §2.2 answer);
        :class:`InvalidToken` for a string no token can be (it cannot even be sent)."""
        try:
            body = urlencode({"token": token, "token_type_hint": token_type_hint}).encode()
        except UnicodeEncodeError:
            # a lone surrogate ("\ud800" in a JSON body becomes one): not UTF-8, so no
            # form can carry it, and no token holds one
            raise InvalidToken("the token is not a compact JWS") from None
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        if not self.tls_client_auth:
            signed = sign_request(
                self._key, self.chain, "POST", self._signed_path, body, self._clock()
            )
            headers["Authorization"] = f"{SCHEME} {signed}"
        try:
            resp = self.http.post(self.endpoint, data=body, headers=headers, timeout=self.timeout)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise IntrospectionFailed(f"cannot reach {self.endpoint}: {exc}") from None
        try:
            doc = resp.json()
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's stack
            doc = None
        if resp.status_code != 200 or not isinstance(doc, dict):
            why = ""
            if isinstance(doc, dict):
                why = str(doc.get("error_description") or doc.get("detail") or "")
            # 401/403: this service's own credential was refused (the token was not
            # judged: still a 503 upstream). The token service says why (a certificate
            # not trusted, a clock that is off, a service not registered…) and its words
            # are the ones to act on: a guess beside them misled (a wrong clock read as a
            # wrong certificate). The guess is for a refusal that gives no reason (a TLS
            # proxy's error page), where it is the likely cause.
            setup = (
                " (this service's credential was refused: check its certificate and "
                "that it is a registered service; retrying will not help)"
                if resp.status_code in (401, 403) and not why.strip()
                else ""
            )
            raise IntrospectionFailed(
                f"introspection answered HTTP {resp.status_code}"
                + (f": {why}" if why else "")
                + setup
            )
        if doc.get("active") is not True:
            return Introspection(False, None, doc)
        try:
            claims = claims_from(doc)
        except InvalidToken as exc:
            raise IntrospectionFailed(f"malformed introspection answer: {exc}") from None
        return Introspection(True, claims, doc)

    def verify(
        self,
        token: str,
        *,
        required_scopes: Iterable[str] | str = (),
        client_certificate: x509.Certificate | bytes | str | None = None,
    ) -> Claims:
        """The claims of an active token; :class:`InactiveToken` (or another
        :class:`TokenError`) otherwise.

        ``required_scopes``: every one must be in the token's ``scope``
        (:class:`InsufficientScope`). ``client_certificate``: the certificate (or its DER
        or PEM) the client presented over mutual TLS; the token must be bound to it
        (RFC 8705 §3, :class:`CertificateMismatch`), as :meth:`TokenVerifier.verify`
        checks: the answer carries the token's ``cnf``, but the token service cannot see
        the connection the token came to this service on.
        """
        result = self.introspect(token)
        claims = result.claims
        if claims is None:
            raise InactiveToken("the token is not active")
        if self._checks_audience and self.audience not in _audiences(claims.audience):
            raise IntrospectionFailed(
                f"the token service judged the token for {claims.audience!r}, not this "
                f"service's audience {self.audience!r}: this service introspects with "
                "another service's credential, or its audience is mistyped"
            )
        if required_scopes:
            claims.require_scopes(required_scopes)
        if client_certificate is not None:
            claims.require_certificate(client_certificate)
        return claims


def _audiences(aud: str | tuple[str, ...]) -> tuple[str, ...]:
    return (aud,) if isinstance(aud, str) else aud
