"""The claims of a verified e-port access token (RFC 9068 §2.2, RFC 8705 §3.1).

One value object for both ways of checking a token: offline (:class:`TokenVerifier`)
and online (:class:`Introspector`, whose RFC 7662 answer carries the same members).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authsvc.client.errors import (
    CertificateMismatch,
    EnterpriseRequired,
    InsufficientScope,
    InvalidToken,
)

NO_ENTERPRISE = (
    "the token names no enterprise (it has no uscc claim): this resource serves "
    "enterprises and their operators; an OpenID Connect client gets uscc with the eport scope"
)
"""What :class:`EnterpriseRequired` says (ASCII, without quotes: it goes into a
``WWW-Authenticate`` header, RFC 6750 §3)."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a service may rely on once a token is verified."""

    subject: str
    """``sub``: the stable subject id (``op:<USCC>:<operator id>``, ``ent:<USCC>``,
    ``agency:<member>:<name>``, ``svc:<DNS name>``)."""
    issuer: str
    """``iss``: the token service's issuer URL."""
    audience: str | tuple[str, ...]
    """``aud``: this service's audience (RFC 9068 §3: one resource)."""
    expires_at: int
    """``exp``, seconds since the epoch."""
    issued_at: int
    """``iat``, seconds since the epoch."""
    token_id: str
    """``jti``: unique per token; what RFC 7009 revocation names."""
    scopes: frozenset[str]
    """``scope`` (RFC 9068 §2.2.3.1), split on spaces."""
    client_id: str | None = None
    """``client_id``: the client the token was issued to (``eport-cli``, or the acting
    service's subject after a token exchange)."""
    session_id: str | None = None
    """``sid``: the single sign-on session; logout ends every token of it."""
    subject_class: str | None = None
    """enterprise, operator, agency, auditor or service."""
    name: str | None = None
    """The subject's display name (the certificate's CN)."""
    uscc: str | None = None
    """The enterprise's Unified Social Credit Code (GB 32100-2015), for enterprises and
    their operators."""
    operator_id: str | None = None
    """The operator's id at the enterprise."""
    agency_id: str | None = None
    """The member agency, for agency officers and auditors."""
    certificate_thumbprint: str | None = None
    """``cnf.x5t#S256``: base64url SHA-256 of the login certificate (RFC 8705 §3.1)."""
    actor: Mapping[str, Any] | None = None
    """``act`` (RFC 8693 §4.1): the service acting on the subject's behalf, if any."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Every claim as received (read-only)."""

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def require_scopes(self, required: Iterable[str] | str) -> None:
        """Raise :class:`InsufficientScope` unless every scope in ``required`` is granted;
        a single string is one scope (it was read a character at a time)."""
        needed = (required,) if isinstance(required, str) else tuple(required)
        missing = [s for s in needed if s not in self.scopes]
        if missing:
            raise InsufficientScope(f"the token lacks the scope {missing[0]}", needed)

    def require_enterprise(self) -> str:
        """The enterprise's USCC, for a resource that keeps its data per enterprise;
        :class:`EnterpriseRequired` (403) when the token names none.

        ``uscc`` is in the tokens of enterprises and their operators minted by ``eport
        token`` (or an exchange), and in a code-flow access token only when its OpenID
        Connect client was granted the ``eport`` scope; an agency officer's, an auditor's
        or a service's token never has one. A service that used ``claims.uscc`` as its
        tenant key put every caller without one in a single shared ``None`` tenant."""
        if not self.uscc:
            raise EnterpriseRequired(NO_ENTERPRISE, self.subject)
        return self.uscc

    def require_certificate(self, certificate: x509.Certificate | bytes | str) -> None:
        """RFC 8705 §3: the token must be bound to ``certificate`` (a certificate or its
        DER), the client certificate of the mutual-TLS connection the token came on."""
        if self.certificate_thumbprint is None:
            raise CertificateMismatch("the token is not bound to a certificate")
        presented = certificate_thumbprint(certificate)
        if not hmac.compare_digest(self.certificate_thumbprint, presented):
            raise CertificateMismatch("the token is bound to another certificate")


def certificate_thumbprint(certificate: x509.Certificate | bytes | str) -> str:
    """``x5t#S256`` of a certificate (RFC 8705 §3.1): base64url SHA-256 of its DER. The
    certificate, its DER, or its PEM (as a TLS front forwards it; a PEM string raised
    AttributeError); a PEM that is not a certificate is :class:`CertificateMismatch`."""
    pem: bytes | None = None
    if isinstance(certificate, str):
        pem = certificate.encode()
    elif isinstance(certificate, bytes) and certificate.startswith(b"-----BEGIN"):
        pem = certificate
    if pem is not None:
        try:
            der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        except ValueError:
            raise CertificateMismatch("the client certificate is not a PEM certificate") from None
    elif isinstance(certificate, bytes):
        der = certificate
    else:
        assert not isinstance(certificate, str)
        der = certificate.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def _opt_str(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidToken(f"claim {name} must be a string")
    return value


def _req_str(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"claim {name} must be a non-empty string")
    return value


_LAST_TIME = 253402300799  # 9999-12-31T23:59:59Z (the SDK imports nothing of the CA)


def numeric_date(value: Any, name: str) -> int:
    """``value`` as claim ``name``, a NumericDate (RFC 7519 §2): a finite number. NaN
    (which Python's JSON reader takes) compares false with every time, so a ``nbf`` of
    NaN was never in the future; int() of NaN or Infinity raised ValueError or
    OverflowError instead of :class:`InvalidToken`, and so did ``math.isfinite`` of an
    integer of hundreds of digits. Held to the years a ``datetime`` holds (1 to 9999)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not -_LAST_TIME <= value <= _LAST_TIME
    ):
        raise InvalidToken(
            f"claim {name} must be a number of seconds before year 10000 "
            "(RFC 7519 section 2 NumericDate)"
        )
    return int(value)


def _time(payload: Mapping[str, Any], name: str) -> int:
    return numeric_date(payload.get(name), name)


def claims_from(payload: Mapping[str, Any]) -> Claims:
    """The :class:`Claims` of a payload whose signature (or introspection) is checked;
    :class:`InvalidToken` if a claim has the wrong type or a required one is missing."""
    aud = payload.get("aud")
    audience: str | tuple[str, ...]
    if isinstance(aud, str):
        audience = aud
    elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        audience = tuple(aud)
    else:
        raise InvalidToken("claim aud must be a string or a list of strings")
    scope = payload.get("scope", "")
    if not isinstance(scope, str):
        raise InvalidToken("claim scope must be a space-separated string (RFC 9068 section 2.2.3)")
    cnf = payload.get("cnf")
    thumb = None
    if cnf is not None:
        if not isinstance(cnf, dict):
            raise InvalidToken("claim cnf must be an object (RFC 7800 section 3.1)")
        thumb = _opt_str(cnf, "x5t#S256")
    act = payload.get("act")
    if act is not None and not isinstance(act, dict):
        raise InvalidToken("claim act must be an object (RFC 8693 section 4.1)")
    return Claims(
        subject=_req_str(payload, "sub"),
        issuer=_req_str(payload, "iss"),
        audience=audience,
        expires_at=_time(payload, "exp"),
        issued_at=_time(payload, "iat"),
        token_id=_req_str(payload, "jti"),
        scopes=frozenset(scope.split()),
        client_id=_opt_str(payload, "client_id"),
        session_id=_opt_str(payload, "sid"),
        subject_class=_opt_str(payload, "subject_class"),
        name=_opt_str(payload, "name"),
        uscc=_opt_str(payload, "uscc"),
        operator_id=_opt_str(payload, "operator_id"),
        agency_id=_opt_str(payload, "agency_id"),
        certificate_thumbprint=thumb,
        actor=MappingProxyType(act) if act is not None else None,
        raw=MappingProxyType(payload if isinstance(payload, dict) else dict(payload)),
    )
