"""The SDK's one error tree: what a service answers its caller when a token is not good.

Each class carries the RFC 6750 §3.1 ``error`` code and the HTTP status a resource
server answers with, so a framework adapter renders any of them the same way
(``WWW-Authenticate: Bearer error="..."``)::

    TokenError
    ├── MissingToken            401, no error code (RFC 6750 §3.1: no credentials sent)
    ├── MalformedRequest        400 invalid_request
    ├── InvalidToken            401 invalid_token
    │   ├── ExpiredToken            exp is past (RFC 7519 §4.1.4)
    │   ├── UnknownKey              kid not in the issuer's JWKS, even after a refetch
    │   ├── CertificateMismatch     cnf.x5t#S256 is not the presented certificate (RFC 8705 §3)
    │   └── InactiveToken           introspection answered active=false (RFC 7662 §2.2)
    ├── InsufficientScope       403 insufficient_scope, with the scopes needed
    │   └── EnterpriseRequired      the token names no enterprise (no uscc claim)
    └── ValidationUnavailable   503: the token could not be judged (a fault, not a verdict)
        ├── KeySetUnavailable       the JWKS or the issuer metadata could not be fetched
        └── IntrospectionFailed     the introspection endpoint refused or failed
            └── ServiceKeyUnusable      the service's own key file cannot be used
"""

from __future__ import annotations

from typing import ClassVar


class TokenError(Exception):
    """Base of every error the SDK raises on purpose."""

    error: ClassVar[str] = "invalid_token"
    """The RFC 6750 §3.1 error code ("" when none is to be sent)."""
    status: ClassVar[int] = 401
    """The HTTP status a resource server answers with."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    @property
    def public_description(self) -> str:
        """What a service may tell its caller: the description, which the SDK words for
        the token's holder (a fault overrides it, see :class:`ValidationUnavailable`)."""
        return self.description


class MissingToken(TokenError):
    """No bearer token in the request. RFC 6750 §3.1: "If the request lacks any
    authentication information ..., the resource server SHOULD NOT include an error
    code or other error information." """

    error = ""


class MalformedRequest(TokenError):
    """RFC 6750 §3.1 ``invalid_request``: e.g. an ``Authorization: Bearer`` with no token."""

    error = "invalid_request"
    status = 400


class InvalidToken(TokenError):
    """RFC 6750 §3.1 ``invalid_token``: "expired, revoked, malformed, or invalid for other
    reasons"."""


class ExpiredToken(InvalidToken):
    """The token's ``exp`` (RFC 7519 §4.1.4) is past, beyond the allowed leeway."""


class UnknownKey(InvalidToken):
    """The token's ``kid`` is not in the issuer's JWKS, even after a (rate-limited) refetch."""

    def __init__(self, description: str, kid: str) -> None:
        super().__init__(description)
        self.kid = kid


class CertificateMismatch(InvalidToken):
    """RFC 8705 §3: the token is bound (``cnf.x5t#S256``) to another certificate than the
    one the client presented, or the request presented none."""


class InactiveToken(InvalidToken):
    """The token service's introspection answered ``{"active": false}`` (RFC 7662 §2.2)."""


class InsufficientScope(TokenError):
    """RFC 6750 §3.1 ``insufficient_scope``: the token is good but lacks a scope."""

    error = "insufficient_scope"
    status = 403

    def __init__(self, description: str, required: tuple[str, ...]) -> None:
        super().__init__(description)
        self.required = required


class EnterpriseRequired(InsufficientScope):
    """The token is good but names no enterprise (it has no ``uscc`` claim), and the
    resource keeps its data per enterprise: an agency officer's, an auditor's or a
    service's token, or the access token of an OpenID Connect code flow whose client did
    not ask for the ``eport`` scope. Keyed by a ``uscc`` of None, every such caller would
    share one enterprise's data. RFC 6750 §3.1 ``insufficient_scope``, 403: "the request
    requires higher privileges than provided by the access token"; no ``scope`` to name,
    since for most of these subjects no scope gives one."""

    def __init__(self, description: str, subject: str) -> None:
        super().__init__(description, ())
        self.subject = subject
        """The token's ``sub``: who was refused (for the service's log)."""


class ValidationUnavailable(TokenError):
    """The token could not be judged: the token service or its keys are unreachable.

    A fault of the infrastructure, not a verdict on the token: a resource server answers
    503 (with ``Retry-After``), so that clients retry rather than log in again."""

    error = "temporarily_unavailable"
    status = 503

    @property
    def public_description(self) -> str:
        """The description names the issuer's or the introspection endpoint's URL, host,
        port and the transport's own words: internal addresses the service's callers must
        not see, and nothing they could act on. They are told only to come back."""
        return "the token could not be checked now; try again"


class KeySetUnavailable(ValidationUnavailable):
    """The issuer's metadata (RFC 8414) or JWKS (RFC 7517) could not be fetched or read."""


class IntrospectionFailed(ValidationUnavailable):
    """The introspection endpoint (RFC 7662) failed, or refused this service's credential."""


class ServiceKeyUnusable(IntrospectionFailed):
    """The service's own key file (an :class:`Introspector`'s ``service_key``) cannot be
    read or decrypted: no passphrase for an encrypted key, a wrong one, one for a key that
    is not encrypted, or a file that holds no PEM private key. A set-up mistake that
    retrying does not mend; raised when the introspector is made, naming the file."""

    def __init__(self, description: str, path: str) -> None:
        super().__init__(description)
        self.path = path
        """The key file, as it was given."""
