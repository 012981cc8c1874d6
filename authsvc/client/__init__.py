"""The SDK an e-port service uses to validate the token service's access tokens.

Three ways, one result (:class:`Claims`) and one error tree (:class:`TokenError`):

* offline: :class:`TokenVerifier` checks RFC 9068 JWTs against the issuer's JWKS;
* online: :class:`Introspector` asks the token service (RFC 7662), signed with the
  service's own certificate, and sees a logout or revocation within seconds;
* in Flask: ``@require_token(scope=...)`` puts the claims on ``flask.g.eport_claims``.

The core imports no web framework; the Flask glue (:mod:`authsvc.client.flask_ext`)
is imported only when ``require_token`` or ``init_app`` is first used.

    verifier = TokenVerifier("https://eport.example/auth",
                             "https://customs-declaration.eport.example")
    claims = verifier.verify(token, required_scopes=["declaration:read"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authsvc.client.claims import Claims, certificate_thumbprint
from authsvc.client.errors import (
    CertificateMismatch,
    EnterpriseRequired,
    ExpiredToken,
    InactiveToken,
    InsufficientScope,
    IntrospectionFailed,
    InvalidToken,
    KeySetUnavailable,
    MalformedRequest,
    MissingToken,
    ServiceKeyUnusable,
    TokenError,
    UnknownKey,
    ValidationUnavailable,
)
from authsvc.client.introspection import Introspection, Introspector
from authsvc.client.keyset import KeySet
from authsvc.client.verifier import TokenVerifier

if TYPE_CHECKING:
    from authsvc.client.flask_ext import init_app, require_token

__all__ = [
    "CertificateMismatch",
    "Claims",
    "EnterpriseRequired",
    "ExpiredToken",
    "InactiveToken",
    "InsufficientScope",
    "Introspection",
    "IntrospectionFailed",
    "Introspector",
    "InvalidToken",
    "KeySet",
    "KeySetUnavailable",
    "MalformedRequest",
    "MissingToken",
    "ServiceKeyUnusable",
    "TokenError",
    "TokenVerifier",
    "UnknownKey",
    "ValidationUnavailable",
    "certificate_thumbprint",
    "init_app",
    "require_token",
]


def __getattr__(name: str) -> Any:
    if name in ("require_token", "init_app"):
        from authsvc.client import flask_ext

        return getattr(flask_ext, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
