"""Flask glue for the SDK: ``@require_token(scope=...)`` on a view.

A bearer token (RFC 6750 §2.1, the ``Authorization`` header only: tokens in URLs leak
into logs) is verified by the app's :class:`TokenVerifier` (or :class:`Introspector`);
the claims go on ``flask.g.eport_claims``. Refusals follow RFC 6750 §3:

* no token: 401 with ``WWW-Authenticate: Bearer realm="<audience>"`` and no error code;
* a malformed ``Authorization`` header: 400 ``error="invalid_request"``;
* a bad token: 401 ``error="invalid_token"``;
* a good token without the scope: 403 ``error="insufficient_scope", scope="..."``;
* with ``enterprise=True``, a good token that names no enterprise (no ``uscc``): 403
  ``error="insufficient_scope"`` (:class:`EnterpriseRequired`);
* the token service unreachable: 503 with ``Retry-After`` (not a verdict on the token).

The body is ``{"error", "error_description"}`` (RFC 6749 §5.2 style), never cached. The
description is the error's :attr:`~TokenError.public_description`: a 503 says only
"try again", and its detail (which names internal URLs) goes to the ``eport.client``
log at warning level instead.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar, cast

from cryptography import x509
from flask import Flask, Response, current_app, g, request

from authsvc.client.claims import Claims
from authsvc.client.errors import (
    CertificateMismatch,
    InsufficientScope,
    MalformedRequest,
    MissingToken,
    TokenError,
    ValidationUnavailable,
)

EXTENSION = "eport.token_verifier"
log = logging.getLogger("eport.client")
F = TypeVar("F", bound=Callable[..., Any])
# RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E (no quote, no backslash).
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_SECTION = re.compile(r"§\s*")


def header_text(text: str) -> str:
    """``text`` as an RFC 6750 §3 quoted value: a section sign as the word (the SDK's
    texts cite RFCs by section, and "RFC 9068 ?4" read as a fault), any other character
    outside the allowed set as ``?``."""
    return _UNSAFE.sub("?", _SECTION.sub("section ", text))


class Verifier(Protocol):
    """What a view needs: :class:`TokenVerifier` or :class:`Introspector` both fit."""

    def verify(
        self,
        token: str,
        *,
        required_scopes: Iterable[str] = (),
        client_certificate: x509.Certificate | bytes | str | None = None,
    ) -> Claims: ...


def init_app(app: Flask, verifier: Verifier) -> None:
    """Make ``verifier`` the one ``@require_token`` uses in ``app``."""
    app.extensions[EXTENSION] = verifier


def bearer_token() -> str:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 §2.1)."""
    header = request.headers.get("Authorization")
    if not header:
        raise MissingToken("this resource needs a bearer token")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken("this resource needs a bearer token")
    token = token.strip()
    if not token or " " in token:
        raise MalformedRequest("the Authorization header holds no single bearer token")
    return token


def challenge(err: TokenError, realm: str | None, scope: Iterable[str] = ()) -> Response:
    """The RFC 6750 §3 answer to a refused request, with the error's public description
    (never a fault's detail: it names internal hosts)."""
    description = err.public_description
    params = []
    if realm:
        params.append(f'realm="{header_text(realm)}"')
    if err.error and not isinstance(err, ValidationUnavailable):
        params.append(f'error="{err.error}"')
        params.append(f'error_description="{header_text(description)}"')
    if isinstance(err, InsufficientScope) or scope:
        needed = err.required if isinstance(err, InsufficientScope) else tuple(scope)
        if needed:
            params.append(f'scope="{" ".join(needed)}"')
    body: dict[str, str] = {"error_description": description}
    if err.error:
        body = {"error": err.error, **body}
    resp = Response(json.dumps(body), status=err.status, mimetype="application/json")
    if err.status in (400, 401, 403):
        resp.headers["WWW-Authenticate"] = "Bearer" + (" " + ", ".join(params) if params else "")
    if isinstance(err, ValidationUnavailable):
        resp.headers["Retry-After"] = "5"
    resp.headers["Cache-Control"] = "no-store"
    return resp


def require_token(
    scope: str | Iterable[str] | None = None,
    *,
    verifier: Verifier | None = None,
    client_certificate: Callable[[], x509.Certificate | None] | None = None,
    enterprise: bool = False,
) -> Callable[[F], F]:
    """Decorate a view so that it runs only for a valid token holding ``scope`` (one scope
    or several, all required); the claims are on ``flask.g.eport_claims``.

    ``verifier`` defaults to the one given to :func:`init_app`. ``client_certificate``,
    if given, returns the client's mutual-TLS certificate for this request (e.g. from the
    proxy's header); the token must then be bound to it (RFC 8705 §3): the certificate is
    passed to the verifier's ``verify(..., client_certificate=)``, offline or by
    introspection alike.

    ``enterprise=True`` is for a resource that keeps its data per enterprise: the token
    must also name one (``uscc``, :meth:`Claims.require_enterprise`), or the request is
    refused 403 :class:`EnterpriseRequired`. Without it, a good token that has no ``uscc``
    (an agency officer's, a service's, an OpenID Connect token without the ``eport``
    scope) passes, and ``claims.uscc`` is None.
    """
    scopes = (scope,) if isinstance(scope, str) else tuple(scope or ())

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            v = verifier if verifier is not None else current_app.extensions.get(EXTENSION)
            if v is None:
                raise RuntimeError("call authsvc.client.init_app(app, verifier) first")
            realm = getattr(v, "audience", None)
            try:
                token = bearer_token()
                if client_certificate is None:
                    claims = v.verify(token, required_scopes=scopes)
                else:
                    cert = client_certificate()
                    if cert is None:  # refused before an introspection is spent on it
                        raise CertificateMismatch("the token needs the client's certificate")
                    claims = v.verify(token, required_scopes=scopes, client_certificate=cert)
                if enterprise:
                    claims.require_enterprise()
            except TokenError as err:
                if isinstance(err, ValidationUnavailable):
                    # the caller is told only to retry; the operator needs the detail
                    log.warning("a token could not be checked: %s", err.description)
                return challenge(err, realm, scopes if isinstance(err, MissingToken) else ())
            g.eport_claims = claims
            return view(*args, **kwargs)

        return cast(F, wrapped)

    return decorate
