"""Offline verification of e-port access tokens: RFC 9068 JWTs checked against the JWKS.

The rules (RFC 8725, the JWT BCP, and RFC 9068 §4):

* the algorithm is pinned to ES256 (§3.1 BCP: never taken from the token); ``none``,
  HMAC and everything else are refused before a key is looked up;
* ``typ`` must be ``at+jwt`` (RFC 9068 §4 step 2; the ``application/`` form is accepted,
  RFC 7515 §4.1.9), so an ID token or a signed request is never taken for an access
  token;
* the key is found by ``kid`` only among the issuer's published keys; ``jku``, ``jwk``,
  ``x5u`` and ``x5c`` headers are never followed, and a ``crit`` header is refused
  (RFC 7515 §4.1.11: we understand no extension);
* ``iss`` must equal the configured issuer, ``aud`` must contain this service's audience;
  ``iss``, ``sub``, ``aud``, ``exp``, ``iat``, ``jti`` and ``client_id`` are required
  (RFC 9068 §2.2); ``exp``, ``nbf`` and ``iat`` are judged with a small leeway by the
  clock passed in.

Certificate-bound tokens (RFC 8705 §3): when the service sees the client's TLS
certificate, ``verify(..., client_certificate=cert)`` also checks ``cnf.x5t#S256``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import jwt
import requests
from cryptography import x509

from authsvc.client.claims import Claims, claims_from, numeric_date
from authsvc.client.errors import ExpiredToken, InvalidToken
from authsvc.client.keyset import KeySet, discover_jwks_uri

ALGORITHMS = ["ES256"]
TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# RFC 9068 §2.2: "iss", "exp", "aud", "sub", "client_id", "iat" and "jti" are REQUIRED.
REQUIRED = ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"]
MAX_TOKEN_LENGTH = 8192
_DECODE_OPTIONS: Any = {
    "require": REQUIRED,
    # Times are judged below against the clock passed in, not PyJWT's wall clock.
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
}


def _seconds(value: float | datetime.timedelta) -> float:
    return value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)


def _header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS, unverified (only to choose the key)."""
    segment = token[: token.index(".")]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):  # "[[[…": past the parser's stack
        raise InvalidToken("the token header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise InvalidToken("the token header is not a JSON object")
    return header


class TokenVerifier:
    """Verifies access tokens for one service (``audience``) from one issuer, offline.

    ``jwks_url`` defaults to the ``jwks_uri`` of the issuer's metadata (RFC 8414),
    discovered on first use. Keys are cached ``cache_ttl`` seconds and fetched again on an
    unknown ``kid`` at most once per ``min_refetch_interval`` seconds. ``clock`` returns
    the time in seconds since the epoch (``time.time``), for ``exp``/``iat``/``nbf``.

    Thread-safe: one verifier is meant to be shared by every request of a process.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        *,
        leeway: float | datetime.timedelta = 30.0,
        http: requests.Session | None = None,
        min_refetch_interval: float = 10.0,
        cache_ttl: float = 300.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("a verifier needs the issuer and this service's audience")
        self.issuer = issuer
        self.audience = audience
        self.leeway = _seconds(leeway)
        self._own_http = http is None
        self.http = http if http is not None else requests.Session()
        self.timeout = timeout
        self._clock = clock
        self._jwks_url = jwks_url
        self._discover_lock = threading.Lock()
        self.keys = KeySet(
            self.jwks_url,
            self.http,
            min_refetch_interval=min_refetch_interval,
            cache_ttl=cache_ttl,
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the HTTP session, if the verifier made it."""
        if self._own_http:
            self.http.close()

    def __enter__(self) -> TokenVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def jwks_url(self) -> str:
        """The JWKS URL: configured, or discovered once from the issuer's metadata."""
        if self._jwks_url is None:
            with self._discover_lock:
                if self._jwks_url is None:
                    self._jwks_url = discover_jwks_uri(self.issuer, self.http, self.timeout)
        return self._jwks_url

    def verify(
        self,
        token: str,
        *,
        required_scopes: Iterable[str] | str = (),
        client_certificate: x509.Certificate | bytes | str | None = None,
    ) -> Claims:
        """The claims of a valid token for this service; a :class:`TokenError` otherwise.

        ``required_scopes``: every one must be in the token's ``scope``
        (:class:`InsufficientScope`). ``client_certificate``: the certificate (or its DER)
        the client presented over mutual TLS; the token must be bound to it (RFC 8705).
        """
        if (
            not isinstance(token, str)
            or len(token) > MAX_TOKEN_LENGTH
            # base64url and dots only: a lone surrogate (which json.loads makes of
            # "\ud800" in a request body) raised UnicodeEncodeError inside PyJWT
            or not token.isascii()
            or token.count(".") != 2  # a JWE (5 parts) or anything else is not ours
        ):
            raise InvalidToken("the token is not a compact JWS")
        header = _header(token)
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken("the token's algorithm must be ES256")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in TOKEN_TYPES:
            raise InvalidToken("the token's typ must be at+jwt (RFC 9068 section 4)")
        if "crit" in header:
            raise InvalidToken("the token names critical header extensions we do not know")
        kid = header.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= 128:
            raise InvalidToken("the token has no usable kid")
        key = self.keys.get(kid)
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options=_DECODE_OPTIONS,
            )
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token lacks the claim {exc.claim}") from None
        except jwt.PyJWTError as exc:
            # PyJWT's words ("Invalid crypto padding") say nothing to the token's holder
            # and would reach the service's callers: they stay on the cause, for a debugger.
            raise InvalidToken("the token is malformed") from exc
        claims = claims_from(payload)
        if not claims.client_id:  # present (PyJWT's require) but ""
            raise InvalidToken("claim client_id must be a non-empty string")
        now = self._clock()
        nbf = numeric_date(payload.get("nbf", claims.issued_at), "nbf")
        if claims.expires_at <= now - self.leeway:
            raise ExpiredToken("the token has expired")
        if claims.issued_at > now + self.leeway or nbf > now + self.leeway:
            raise InvalidToken("the token is not valid yet (iat or nbf in the future)")
        if required_scopes:
            claims.require_scopes(required_scopes)
        if client_certificate is not None:
            claims.require_certificate(client_certificate)
        return claims
