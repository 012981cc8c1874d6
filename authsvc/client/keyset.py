"""The issuer's signing keys: metadata discovery (RFC 8414) and a cached JWKS (RFC 7517).

Keys are parsed once per fetch into ready-to-use public keys, indexed by ``kid``; the
hot path is one dict lookup. The set is fetched again:

* when it is older than ``cache_ttl`` (by one caller, while the others go on with the
  keys they have; a failed refresh keeps the old keys and is retried after
  ``min_refetch_interval``);
* when a token names a ``kid`` the set lacks (the token service publishes a key before it
  signs with it, so this happens only after a rotation the cache has not seen) — at most
  once per ``min_refetch_interval``, however many tokens with unknown ``kid`` arrive, so
  that forged tokens cannot make a service flood the token service.

Only EC P-256 signature keys for ES256 are kept (RFC 7518 §3.4); other members of the set
are ignored, never trusted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
import requests
import urllib3
from cryptography.hazmat.primitives.asymmetric import ec

from authsvc.client.errors import KeySetUnavailable, UnknownKey

log = logging.getLogger("eport.client")
MAX_DOCUMENT_BYTES = 256 * 1024


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be, in the order they are tried.

    1. RFC 8414 §3.1: ``/.well-known/oauth-authorization-server`` inserted between the
       host and the issuer's path;
    2. OpenID Connect Discovery 1.0 §4: ``<issuer>/.well-known/openid-configuration``;
    3. the host's root ``/.well-known/oauth-authorization-server`` (what a server that
       serves one issuer per host answers).

    Whichever answers, its ``issuer`` must equal ours exactly (RFC 8414 §3.3), so a
    document for another issuer on the same host is never used.
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")

    def at(p: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, p, "", ""))

    urls = [at("/.well-known/oauth-authorization-server" + path)]
    urls.append(at(path + "/.well-known/openid-configuration"))  # also for a bare host
    if path:
        urls.append(at("/.well-known/oauth-authorization-server"))
    return urls


def _get_json(http: requests.Session, url: str, timeout: float) -> Any:
    """The JSON document at ``url``, read to at most :data:`MAX_DOCUMENT_BYTES`.

    Redirects are not followed: the keys that decide which tokens are good must come from
    the address configured or named by the issuer's own metadata, not from wherever that
    address points to (another origin). The body is streamed and counted, so a huge
    answer costs at most the limit, not a download of all of it.
    """
    headers = {"Accept": "application/json"}
    with http.get(
        url, timeout=timeout, headers=headers, allow_redirects=False, stream=True
    ) as resp:
        if resp.is_redirect:
            where = resp.headers.get("Location", "")
            raise KeySetUnavailable(
                f"{url} answered HTTP {resp.status_code}, a redirect to {where[:200]!r}: "
                "redirects are not followed for keys; configure the final URL"
            )
        if resp.status_code != 200:
            raise KeySetUnavailable(f"{url} answered HTTP {resp.status_code}")
        too_large = f"{url} answered a document larger than {MAX_DOCUMENT_BYTES} bytes"
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
            raise KeySetUnavailable(too_large)
        body = bytearray()
        for chunk in resp.iter_content(chunk_size=16 * 1024):
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:  # decoded bytes: a gzip bomb stops here too
                raise KeySetUnavailable(too_large)
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError):  # nested past the parser's stack: not a key set
        raise KeySetUnavailable(f"{url} did not answer JSON") from None


def discover_jwks_uri(
    issuer: str, http: requests.Session, timeout: float, key: str = "jwks_uri"
) -> str:
    """The ``jwks_uri`` (or another endpoint named ``key``) of ``issuer``'s metadata."""
    problems = []
    for url in metadata_urls(issuer):
        try:
            doc = _get_json(http, url, timeout)
        except (KeySetUnavailable, requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            problems.append(str(exc))
            continue
        if not isinstance(doc, dict) or doc.get("issuer") != issuer:
            # RFC 8414 §3.3: the issuer must match exactly; say what it is, for a typo
            named = doc.get("issuer") if isinstance(doc, dict) else None
            problems.append(
                f"{url} describes issuer {named!r}, not {issuer!r}"
                if isinstance(named, str)
                else f"{url} names no issuer"
            )
            continue
        value = doc.get(key)
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            raise KeySetUnavailable(f"the metadata at {url} has no usable {key}")
        return value
    raise KeySetUnavailable(f"no metadata for issuer {issuer}: " + "; ".join(problems))


def parse_jwks(doc: Any) -> dict[str, ec.EllipticCurvePublicKey]:
    """The ES256 verification keys of a JWK set, by ``kid``; other keys are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeySetUnavailable(
            "the JWKS is not a JSON object with a keys array (RFC 7517 section 5)"
        )
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if (
            not isinstance(kid, str)
            or jwk.get("kty") != "EC"
            or jwk.get("crv") != "P-256"
            or jwk.get("alg", "ES256") != "ES256"
            or jwk.get("use", "sig") != "sig"
            or "d" in jwk  # a private key published by mistake is not used
        ):
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm="ES256").key
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable JWK %r: %s", kid, exc)
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            keys[kid] = key
    return keys


class KeySet:
    """The issuer's published keys, fetched over HTTP and cached (thread-safe)."""

    def __init__(
        self,
        jwks_url: Callable[[], str],
        http: requests.Session,
        *,
        min_refetch_interval: float = 10.0,
        cache_ttl: float = 300.0,
        timeout: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._jwks_url = jwks_url
        self._http = http
        self.min_refetch_interval = min_refetch_interval
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        self._monotonic = monotonic
        self._keys: Mapping[str, ec.EllipticCurvePublicKey] = {}
        self._fresh_until = float("-inf")  # refetch when the monotonic clock passes this
        self._last_attempt = float("-inf")
        self._loaded = False
        self._lock = threading.Lock()
        self.fetches = 0
        """How many times the JWKS was requested (for monitoring and tests)."""

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def get(self, kid: str) -> ec.EllipticCurvePublicKey:
        """The key ``kid``; :class:`UnknownKey` or :class:`KeySetUnavailable` otherwise."""
        now = self._monotonic()
        if now >= self._fresh_until or not self._loaded:
            self._refresh_stale(now)
        key = self._keys.get(kid)
        if key is not None:
            return key
        with self._lock:
            key = self._keys.get(kid)  # another thread may have just fetched it
            if key is None and self._monotonic() - self._last_attempt >= self.min_refetch_interval:
                self._fetch()
                key = self._keys.get(kid)
        if key is None:
            raise UnknownKey("the token is signed by a key the issuer does not publish", kid)
        return key

    def refresh(self) -> None:
        """Fetch the JWKS now, whatever the cache's age."""
        with self._lock:
            self._fetch()

    def _refresh_stale(self, now: float) -> None:
        if not self._loaded:
            with self._lock:  # the first fetch: every caller needs it
                if self._loaded:
                    return
                if now - self._last_attempt < self.min_refetch_interval:
                    raise KeySetUnavailable(
                        "the issuer's keys could not be fetched; retrying shortly"
                    )
                self._fetch()
            return
        # Stale but usable: one caller refreshes, the others go on with the keys they have.
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._monotonic() >= self._fresh_until:
                try:
                    self._fetch()
                except KeySetUnavailable as exc:
                    log.warning("keeping the cached JWKS: %s", exc.description)
        finally:
            self._lock.release()

    def _fetch(self) -> None:
        """Under the lock: fetch and parse the set; on failure, back off."""
        self._last_attempt = self._monotonic()
        self.fetches += 1
        try:
            url = self._jwks_url()
            keys = parse_jwks(_get_json(self._http, url, self.timeout))
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            # urllib3's own errors (LocationParseError: a host name it cannot parse) are
            # not wrapped by requests on every path
            self._fresh_until = self._last_attempt + self.min_refetch_interval
            raise KeySetUnavailable(f"cannot fetch the issuer's JWKS: {exc}") from None
        except KeySetUnavailable:
            self._fresh_until = self._last_attempt + self.min_refetch_interval
            raise
        self._keys = keys  # one reference swap: readers never see a half-built set
        self._loaded = True
        self._fresh_until = self._last_attempt + self.cache_ttl
