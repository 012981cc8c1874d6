"""The verified-token cache (authsvc.tokens.VerifiedTokens): a cached token skips only its
signature check; key, issuer, audience and time are checked on every use."""

from __future__ import annotations

import datetime
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from authsvc.tokens import InvalidToken, VerifiedTokens, mint, verify

ISS = "https://eport.example/auth"
AUD = "https://customs-declaration.eport.example"
KID = "k" * 20
T0 = datetime.datetime(2026, 11, 27, 8, 0, tzinfo=datetime.UTC)
LEEWAY = datetime.timedelta(seconds=30)


def token(key: ec.EllipticCurvePrivateKey, **over: Any) -> str:
    now = int(T0.timestamp())
    claims = {
        "iss": ISS,
        "sub": "op:91350100M000100Y43:B100",
        "aud": AUD,
        "exp": now + 600,
        "iat": now,
        "jti": secrets.token_hex(8),
        "sid": "s1",
        **over,
    }
    return mint(claims, KID, key)


def check(tok: str, keys: dict[str, Any], cache: VerifiedTokens, **over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "public_key": keys.get,
        "issuer": ISS,
        "audience": AUD,
        "now": T0,
        "leeway": LEEWAY,
        "cache": cache,
        **over,
    }
    return verify(tok, **args)


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_a_cached_token_is_rechecked_for_key_audience_and_time(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    keys = {KID: key.public_key()}
    cache = VerifiedTokens()
    tok = token(key)
    first = check(tok, keys, cache)
    assert len(cache) == 1 and check(tok, keys, cache) == first
    first["sub"] = "mutated by a caller"  # callers get copies: the cache is not changed
    assert check(tok, keys, cache)["sub"] == "op:91350100M000100Y43:B100"
    with pytest.raises(InvalidToken, match="Audience"):
        check(tok, keys, cache, audience="https://manifest.eport.example")
    with pytest.raises(InvalidToken, match="issuer"):
        check(tok, keys, cache, issuer="https://evil.example/auth")
    with pytest.raises(InvalidToken, match="expired"):
        check(tok, keys, cache, now=T0 + datetime.timedelta(minutes=11))
    with pytest.raises(InvalidToken, match="no longer published"):
        check(tok, {}, cache)
    assert check(tok, keys, cache, audience=None)["aud"] == AUD  # introspection's view


def test_only_verified_tokens_enter_the_cache(key: ec.EllipticCurvePrivateKey) -> None:
    keys = {KID: key.public_key()}
    cache = VerifiedTokens()
    tok = token(key)
    h, p, s = tok.split(".")
    forged = f"{h}.{p}.{s[:-4]}{'AAAA' if s[-4:] != 'AAAA' else 'BBBB'}"
    other = ec.generate_private_key(ec.SECP256R1())
    for bad in (forged, token(other), token(key, aud="https://manifest.eport.example")):
        for _ in range(2):  # the second try must fail the same way: nothing was cached
            with pytest.raises(InvalidToken):
                check(bad, keys, cache)
    assert len(cache) == 0
    with pytest.raises(InvalidToken, match="compact JWS"):
        check(f"{h}.{p}!.{s}", keys, cache)


def test_the_cache_is_bounded(key: ec.EllipticCurvePrivateKey) -> None:
    keys = {KID: key.public_key()}
    cache = VerifiedTokens(size=2)
    a, b, c = token(key), token(key), token(key)
    for t in (a, b, c):
        check(t, keys, cache)
    assert len(cache) == 2 and cache.get(a) is None and cache.get(c) is not None
