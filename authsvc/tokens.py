"""JWT access tokens (RFC 9068) signed with ES256 and verified strictly (RFC 8725).

Verification pins the algorithm (ES256 only), requires ``typ: at+jwt`` and the
claims ``iss``, ``sub``, ``aud``, ``exp``, ``iat`` and ``jti``, finds the key by
``kid`` only among the service's own published keys (``jku``, ``jwk``, ``x5u`` and
``x5c`` headers are never followed), and allows a small, configured clock leeway.
"""

from __future__ import annotations

import datetime
import re
import threading
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from ca.errors import EPortError
from ca.signedreq import compact_header, is_numeric_date

ACCESS_TOKEN_TYP = "at+jwt"
_KID = re.compile(r"[A-Za-z0-9_-]{16,64}")


class InvalidToken(EPortError):
    """A token that is malformed, forged, expired, for another audience, or revoked."""

    status = 401
    slug = "invalid-token"
    title = "Invalid token"
    challenge: str | None = 'Bearer realm="eport", error="invalid_token"'


def jose_header(token: str) -> dict[str, Any]:
    """The protected header of a compact JWS (:func:`ca.signedreq.compact_header`), its
    refusal (ValueError) in plain words rather than the base64 or JSON parser's own
    ("Invalid base64-encoded string: number of data characters…", "Expecting property
    name enclosed in double quotes…")."""
    header: dict[str, Any] | None
    try:
        header = compact_header(token)
    except ValueError as exc:
        if str(exc) == "not a compact JWS":  # its shape or its characters
            raise ValueError(
                "not a compact JWS (three base64url parts separated by dots)"
            ) from None
        header = None
    # Past compact_header's pattern every character is base64url's: a part decodes unless
    # its length is one more than a multiple of 4 (RFC 4648 §5, unpadded).
    if any(len(part) % 4 == 1 for part in token.split(".")):
        raise ValueError("not a compact JWS: its parts are not base64url")
    if header is None:
        raise ValueError("the JOSE header is not a JSON object")
    return header


def mint(claims: dict[str, Any], kid: str, key: ec.EllipticCurvePrivateKey) -> str:
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": ACCESS_TOKEN_TYP, "kid": kid})


class VerifiedTokens:
    """Tokens whose signature, ``iss`` and required claims were verified, by token string.

    A service presents the same access token on every request of a user for the token's
    lifetime; its ES256 signature (and PyJWT's parsing) need not be checked again: the
    same bytes verify the same way. What can change is re-checked on every use: the
    signing key must still be published, and the audience, expiry and the token's
    revocation and session state (by the caller). Bounded: the oldest entries go first.
    """

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._items: dict[str, tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> tuple[str, dict[str, Any]] | None:
        return self._items.get(token)

    def put(self, token: str, kid: str, claims: dict[str, Any]) -> None:
        with self._lock:
            while len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))
            self._items[token] = (kid, claims)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _check_times(
    claims: dict[str, Any],
    now: datetime.datetime,
    leeway: datetime.timedelta,
    max_lifetime: datetime.timedelta | None,
) -> None:
    ts = now.timestamp()
    slack = leeway.total_seconds()
    exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", claims["iat"])
    if not all(is_numeric_date(t) for t in (exp, iat, nbf)):
        raise InvalidToken("token times must be finite numbers")
    if max_lifetime is not None and exp - iat > max_lifetime.total_seconds():
        raise InvalidToken(
            f"token lives longer than {max_lifetime.total_seconds():g} s (exp - iat), "
            "more than this service issues"
        )
    if exp <= ts - slack:
        raise InvalidToken("token expired")
    if nbf > ts + slack or iat > ts + slack:
        raise InvalidToken("token not yet valid")


def verify(
    token: str,
    *,
    public_key: Callable[[str], ec.EllipticCurvePublicKey | None],
    issuer: str,
    audience: str | None,
    now: datetime.datetime,
    leeway: datetime.timedelta,
    cache: VerifiedTokens | None = None,
    max_lifetime: datetime.timedelta | None = None,
) -> dict[str, Any]:
    """The claims of a valid access token; :class:`InvalidToken` otherwise.

    ``audience`` None skips the audience check (introspection reports ``aud`` instead).
    ``exp``, ``iat`` and ``nbf`` must be finite numbers; with ``max_lifetime`` (the
    lifetime this service gives its tokens), ``exp`` no later than ``iat`` plus it.
    With ``cache``, a token verified before skips the signature check (see
    :class:`VerifiedTokens`); everything else is checked as for a new token.
    """
    if not isinstance(token, str) or len(token) > 8192:
        raise InvalidToken("not a compact JWS")
    hit = cache.get(token) if cache is not None else None
    if hit is not None:
        if public_key(hit[0]) is None:
            raise InvalidToken("token signed by a key that is no longer published")
        seen = hit[1]
        if seen["iss"] != issuer:
            raise InvalidToken("token rejected: Invalid issuer")
        if audience is not None:
            aud = seen["aud"]
            if audience != aud and not (isinstance(aud, list) and audience in aud):
                raise InvalidToken("token rejected: Audience doesn't match")
        _check_times(seen, now, leeway, max_lifetime)
        return dict(seen)
    try:
        header = jose_header(token)
    except ValueError as exc:
        raise InvalidToken(f"malformed token: {exc}") from None
    if header.get("alg") != "ES256":
        raise InvalidToken("token algorithm must be ES256")
    if header.get("typ") != ACCESS_TOKEN_TYP:
        raise InvalidToken("token typ must be at+jwt (RFC 9068)")
    kid: Any = header.get("kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise InvalidToken("token kid is missing or malformed")
    key = public_key(kid)
    if key is None:
        raise InvalidToken("token signed by an unknown key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=["ES256"],
            issuer=issuer,
            audience=audience,
            leeway=leeway,
            options={
                "require": ["iss", "sub", "aud", "exp", "iat", "jti"],
                "verify_aud": audience is not None,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"token rejected: {exc}") from None
    _check_times(claims, now, leeway, max_lifetime)
    if cache is not None:
        cache.put(token, kid, claims)
        return dict(claims)
    return claims
