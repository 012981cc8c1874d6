"""JWT access tokens (RFC 9068) signed with ES256 and verified strictly (RFC 8725).

Verification pins the algorithm (ES256 only), requires ``typ: at+jwt`` and the
claims ``iss``, ``sub``, ``aud``, ``exp``, ``iat`` and ``jti``, finds the key by
``kid`` only among the service's own published keys (``jku``, ``jwk``, ``x5u`` and
``x5c`` headers are never followed), and allows a small, configured clock leeway.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from ca.errors import EPortError

ACCESS_TOKEN_TYP = "at+jwt"
_KID = re.compile(r"[A-Za-z0-9_-]{16,64}")


class InvalidToken(EPortError):
    """A token that is malformed, forged, expired, for another audience, or revoked."""

    status = 401
    slug = "invalid-token"
    title = "Invalid token"


def mint(claims: dict[str, Any], kid: str, key: ec.EllipticCurvePrivateKey) -> str:
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": ACCESS_TOKEN_TYP, "kid": kid})


def verify(
    token: str,
    *,
    public_key: Callable[[str], ec.EllipticCurvePublicKey | None],
    issuer: str,
    audience: str | None,
    now: datetime.datetime,
    leeway: datetime.timedelta,
) -> dict[str, Any]:
    """The claims of a valid access token; :class:`InvalidToken` otherwise.

    ``audience`` None skips the audience check (introspection reports ``aud`` instead).
    """
    if not isinstance(token, str) or len(token) > 8192 or token.count(".") != 2:
        raise InvalidToken("not a compact JWS")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"malformed token header: {exc}") from None
    if header.get("alg") != "ES256":
        raise InvalidToken("token algorithm must be ES256")
    if header.get("typ") != ACCESS_TOKEN_TYP:
        raise InvalidToken("token typ must be at+jwt (RFC 9068)")
    kid = header.get("kid")
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
    ts = now.timestamp()
    slack = leeway.total_seconds()
    exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", claims["iat"])
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (exp, iat, nbf)):
        raise InvalidToken("token times must be numbers")
    if exp <= ts - slack:
        raise InvalidToken("token expired")
    if nbf > ts + slack or iat > ts + slack:
        raise InvalidToken("token not yet valid")
    return claims
