"""Signed requests: a short-lived JWS made with the caller's certificate key.

Privileged calls carry ``Authorization: EPort-Signed <compact JWS>`` (RFC 7515).
The protected header holds ``alg`` (pinned to the leaf key's type), ``typ``
``eport-req+jwt`` and ``x5c`` (RFC 7515 §4.1.6, the leaf first). The payload
(RFC 7519 claims) binds the request: ``aud`` = ``"<METHOD> <path>"``, ``iat``,
``exp`` (at most five minutes after ``iat``), a unique ``jti``, and ``bsh``, the
base64url SHA-256 of the exact body bytes. The chain is validated with
``cryptography.x509.verification`` (client verifier; the web-PKI requirement of a
subjectAltName is relaxed because our subjects are organisations and people).

The token service reuses this module for the RFC 7523 login assertion.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.errors import BadRequest, Replayed, Unauthenticated, WeakKey
from ca.keys import KeyType
from ca.wellformed import UNSTORABLE, unique_members

SCHEME = "EPort-Signed"
TYP = "eport-req+jwt"
MAX_LIFETIME = datetime.timedelta(minutes=5)

NOT_BEFORE_LEEWAY = datetime.timedelta(seconds=30)
"""How far ahead of this server's clock a certificate's notBefore may be and the
certificate still be taken (:meth:`TrustAnchors.verify_chain`): as ``iat``'s default
leeway (``EPORT_CLOCK_SKEW_SECONDS``)."""
CHAIN_CACHE_SECONDS = 10.0
"""How long a validated chain is reused for the same leaf (status is checked apart)."""
_COMPACT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def body_hash(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


def audience(method: str, path: str) -> str:
    return f"{method.upper()} {path}"


def sign_request(
    key: CertificateIssuerPrivateKeyTypes,
    chain: Sequence[x509.Certificate],
    method: str,
    path: str,
    body: bytes,
    now: datetime.datetime,
    lifetime: datetime.timedelta = datetime.timedelta(minutes=2),
) -> str:
    """The compact JWS to send as ``Authorization: EPort-Signed <jws>``."""
    kt = KeyType.of(key)
    iat = int(now.timestamp())
    claims = {
        "aud": audience(method, path),
        "iat": iat,
        "exp": iat + int(lifetime.total_seconds()),
        "jti": secrets.token_urlsafe(18),
        "bsh": body_hash(body),
    }
    headers = {
        "typ": TYP,
        "x5c": [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain
        ],
    }
    return jwt.encode(claims, key, algorithm=kt.jws_alg, headers=headers)  # type: ignore[arg-type]


class ReplayStore(Protocol):
    def remember(self, jti: str, expires_at: datetime.datetime) -> bool:
        """Record ``jti``; False if it was seen before (shared by every server process)."""
        ...


_ENCOUNTERED = re.compile(r" \(encountered processing <Certificate\(.*\)>\)$", re.DOTALL)
"""The tail of a cryptography VerificationError's text: the certificate's repr."""


@dataclass(frozen=True)
class TrustAnchors:
    """The joint CA's roots and the issuing CAs under them.

    A chain validated for a leaf is reused for that same certificate (compared by its
    DER) for :data:`CHAIN_CACHE_SECONDS`, and only at times inside every certificate's
    validity: a service or user presents the same certificate on every call, and path
    building costs more than the rest of a request. Revocation is not part of this
    check (callers ask the status interface each time); a new set of anchors (a
    rollover) starts with an empty cache."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    _verified: dict[
        x509.Certificate,
        tuple[float, datetime.datetime, datetime.datetime, tuple[x509.Certificate, ...]],
    ] = field(default_factory=dict, compare=False, hash=False, repr=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, compare=False, hash=False, repr=False
    )
    _next_sweep: list[float] = field(
        default_factory=lambda: [0.0], compare=False, hash=False, repr=False
    )
    """When expired chains are next dropped (one element: the dataclass is frozen)."""

    def verify_chain(
        self, leaf: x509.Certificate, now: datetime.datetime
    ) -> list[x509.Certificate]:
        """Validate ``leaf`` for client authentication; the chain, leaf first.

        A leaf whose notBefore is at most :data:`NOT_BEFORE_LEEWAY` ahead of ``now`` is
        judged at its notBefore: a certificate just issued by a host whose clock is a few
        seconds ahead of this one's was refused for its first seconds ("not valid before"),
        while the requests it signs get that leeway on ``iat``."""
        ahead = leaf.not_valid_before_utc - now
        if datetime.timedelta(0) < ahead <= NOT_BEFORE_LEEWAY:
            now = leaf.not_valid_before_utc
        hit = self._verified.get(leaf)
        mono = time.monotonic()
        if hit is not None and mono < hit[0] and hit[1] <= now < hit[2]:
            return list(hit[3])
        chain = self._build_chain(leaf, now)
        entry = (
            mono + CHAIN_CACHE_SECONDS,
            max(c.not_valid_before_utc for c in chain),
            min(c.not_valid_after_utc for c in chain),
            tuple(chain),
        )
        with self._lock:
            if mono >= self._next_sweep[0]:
                # Chains are reused for seconds only: drop the expired ones, with the
                # parsed certificates they hold (about 20 KB each), at most every
                # CHAIN_CACHE_SECONDS. Only clearing at 4,096 kept a worker 90 MB larger
                # for good once that many certificates had signed in (soak probe).
                for stale in [k for k, v in self._verified.items() if v[0] <= mono]:
                    del self._verified[stale]
                self._next_sweep[0] = mono + CHAIN_CACHE_SECONDS
            if len(self._verified) >= 4096:
                self._verified.clear()
            self._verified[leaf] = entry
        return chain

    def _why_refused(
        self, leaf: x509.Certificate, now: datetime.datetime, exc: xv.VerificationError
    ) -> str:
        """Say "expired" (or "not yet valid") only of a leaf one of our issuing CAs signed:
        a foreign certificate stays "not trusted" in the verifier's words."""
        why = _out_of_validity(leaf, now)
        from ca.ocsp_client import issuer_among  # the server's side: the CLI signs only

        if why is not None and issuer_among(leaf, self.intermediates) is not None:
            return why
        # The verifier's reason, without the Python repr it ends with ("(encountered
        # processing <Certificate(subject=<Name(CN=...)>, ...)>)"), which tells a client
        # nothing the reason does not
        reason = _ENCOUNTERED.sub("", str(exc))
        return f"certificate is not trusted: {reason}"

    def _build_chain(
        self, leaf: x509.Certificate, now: datetime.datetime
    ) -> list[x509.Certificate]:
        ee_policy = xv.ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, xv.Criticality.AGNOSTIC, None
        )
        verifier = (
            xv.PolicyBuilder()
            .store(xv.Store(list(self.roots)))
            .time(now)
            .max_chain_depth(2)
            .extension_policies(
                ca_policy=xv.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
            )
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(leaf, list(self.intermediates))
        except xv.VerificationError as exc:
            raise Unauthenticated(self._why_refused(leaf, now, exc)) from exc
        # The verifier accepts a leaf with no EKU at all (RFC 5280: any purpose); a
        # credential for signed requests must name clientAuth.
        try:
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            raise Unauthenticated(
                "certificate is not trusted: it lacks the clientAuth EKU"
            ) from None
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise Unauthenticated("certificate is not trusted: it lacks the clientAuth EKU")
        return list(verified.chain)


@dataclass(frozen=True)
class SignedRequest:
    """A verified signed request: who made it, with which chain, and its claims."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    claims: dict[str, Any]


def parse_authorization(header: str | None) -> str:
    if not header:
        raise Unauthenticated(f"this call needs a signed request (Authorization: {SCHEME} ...)")
    scheme, _, token = header.partition(" ")
    if scheme != SCHEME or not token.strip():
        raise Unauthenticated(f"expected the {SCHEME} authorization scheme")
    return token.strip()


def verify_request(
    token: str,
    *,
    method: str,
    path: str,
    body: bytes,
    trust: TrustAnchors,
    replay: ReplayStore,
    now: datetime.datetime,
    leeway: datetime.timedelta = datetime.timedelta(seconds=30),
    expected_aud: str | Sequence[str] | None = None,
    max_lifetime: datetime.timedelta = MAX_LIFETIME,
) -> SignedRequest:
    """Verify a signed request and record its ``jti``; raise :class:`Unauthenticated`.
    ``expected_aud``: the audience (or any of the audiences) that stand for this request,
    ``audience(method, path)`` by default."""

    def body_matches(claims: dict[str, Any]) -> None:
        # As bytes: compare_digest refuses a str with a non-ASCII character (TypeError).
        if not hmac.compare_digest(str(claims["bsh"]).encode(), body_hash(body).encode()):
            raise Unauthenticated("the body does not match the signed body hash (bsh)")

    return verify_certificate_jwt(
        token,
        typ=TYP,
        audience=expected_aud or audience(method, path),
        required=("aud", "exp", "iat", "jti", "bsh"),
        trust=trust,
        replay=replay,
        now=now,
        leeway=leeway,
        what="signed request",
        check=body_matches,
        max_lifetime=max_lifetime,
    )


class HttpRequest(Protocol):
    """What :func:`verify_http_request` reads of a request (Werkzeug's has it all)."""

    @property
    def headers(self) -> Any: ...

    @property
    def method(self) -> str: ...

    @property
    def script_root(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def query_string(self) -> bytes: ...

    def get_data(self, cache: bool = True) -> bytes: ...

    @property
    def environ(self) -> Any: ...


def verify_http_request(
    request: HttpRequest,
    *,
    trust: TrustAnchors,
    replay: ReplayStore,
    now: datetime.datetime,
    leeway: datetime.timedelta,
    max_lifetime: datetime.timedelta = MAX_LIFETIME,
) -> SignedRequest:
    """:func:`verify_request` of an HTTP request: its ``Authorization`` header, method,
    exact body, and the path as the client signed it (mount point, path and query).

    A client signs the path it sends. One that escapes only what a URL must (our CLI,
    whose HTTP library escapes a non-ASCII character after signing it as written) matches
    the decoded path; one that signs its escapes (``app_%E5%8E%A6``, ``%2e%2e``) matches
    the path as sent (``RAW_URI``), which the WSGI server keeps. Both name the resource
    the server routes to, so either is the request's audience: a signature over an
    escaped path met "Audience doesn't match" (401) instead of the answer for that path."""
    path = request.script_root + request.path
    if request.query_string:
        path += "?" + request.query_string.decode("ascii", "replace")
    auds = [audience(request.method, path)]
    sent = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if isinstance(sent, str) and sent.startswith("/") and sent != path:
        auds.append(audience(request.method, sent))
    return verify_request(
        parse_authorization(request.headers.get("Authorization")),
        method=request.method,
        path=path,
        expected_aud=auds,
        body=request.get_data(cache=True),
        trust=trust,
        replay=replay,
        now=now,
        leeway=leeway,
        max_lifetime=max_lifetime,
    )


def verify_certificate_jwt(
    token: str,
    *,
    typ: str,
    audience: str | Sequence[str],
    required: tuple[str, ...],
    trust: TrustAnchors,
    replay: ReplayStore,
    now: datetime.datetime,
    leeway: datetime.timedelta,
    what: str,
    check: Callable[[dict[str, Any]], None] | None = None,
    max_lifetime: datetime.timedelta = MAX_LIFETIME,
) -> SignedRequest:
    """A JWS signed by the key of the first certificate of its ``x5c`` chain.

    Shared by signed requests and the token service's RFC 7523 login assertions: the
    chain is validated to the joint CA, ``alg`` is pinned to the leaf key's type,
    ``aud`` must be ``audience``, the lifetime is at most five minutes, time claims are
    judged against ``now`` (with ``leeway``), and ``jti`` is single use (``replay``).
    ``jku``, ``jwk``, ``x5u`` and ``kid`` headers are never used to find a key.
    """
    leaf, _ = _leaf_from_header(token, typ, what)
    verified_chain = trust.verify_chain(leaf, now)
    try:
        kt = KeyType.of(leaf.public_key())
    except WeakKey as exc:
        raise Unauthenticated(str(exc)) from exc
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=leaf.public_key(),  # type: ignore[arg-type]
            algorithms=[kt.jws_alg],
            audience=audience,
            leeway=leeway,
            # PyJWT would judge exp, iat and nbf by the wall clock; they are judged below
            # by the ``now`` passed in.
            options={
                "require": list(required),
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidAudienceError as exc:
        # the signature held (PyJWT checks it first): say what was signed for and what
        # this server expects, so a client that reached it by another address than its
        # public one can tell (it was "Audience doesn't match", naming neither)
        sent = jwt.decode(token, options={"verify_signature": False}).get("aud")
        wanted = [audience] if isinstance(audience, str) else list(audience)
        hint = (
            " (a URL under this server's public base URL, EPORT_PUBLIC_BASE_URL: reach "
            "the server by that address)"
            if all(w.startswith(("https://", "http://")) for w in wanted)
            else " (the request's method and path)"
        )
        raise Unauthenticated(
            f"{what} rejected: its audience (aud) is {str(sent)[:200]!r}, not "
            f"{' or '.join(wanted)}{hint}"
        ) from exc
    except jwt.InvalidAlgorithmError as exc:
        # say which alg the key signs with: PyJWT's words named neither (key types probe,
        # session 27)
        try:
            sent_alg = str(jwt.get_unverified_header(token).get("alg"))[:40]
        except jwt.PyJWTError:
            sent_alg = "?"
        raise Unauthenticated(
            f"{what} rejected: a {kt.value} key signs with {kt.jws_alg} (x5c[0]'s key), "
            f"not {sent_alg!r}"
        ) from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"{what} rejected: {exc}") from exc
    _refuse_twice_named(token, what)
    iat = claims["iat"]
    exp = claims["exp"]
    nbf = claims.get("nbf", iat)
    if not all(is_numeric_date(t) for t in (iat, exp, nbf)):
        raise Unauthenticated(
            "iat, exp and nbf must be numbers of seconds since 1970 before the year 10000 "
            "(RFC 7519 §2 NumericDate)"
        )
    # at most five minutes (RFC 7515 requests of this CA are short-lived); a server may
    # allow less (EPORT_REQUEST_MAX_LIFETIME_SECONDS), never more
    longest = min(max_lifetime, MAX_LIFETIME).total_seconds()
    if exp - iat > longest:
        said = "5 minutes" if longest == MAX_LIFETIME.total_seconds() else f"{longest:g} s"
        raise Unauthenticated(f"{what} lives longer than {said} (exp - iat)")
    # A client whose clock is off by more than the leeway sees these: each names the
    # claim's time and the server's, so the holder can tell a wrong clock from a bug.
    skew = f"is the client's clock right? (leeway {leeway.total_seconds():g} s)"
    if iat > now.timestamp() + leeway.total_seconds():
        raise Unauthenticated(
            f"{what} issued in the future (iat {_stamp(iat)}, server time {_stamp(now)}): {skew}"
        )
    if nbf > now.timestamp() + leeway.total_seconds():
        raise Unauthenticated(
            f"{what} not yet valid (nbf {_stamp(nbf)}, server time {_stamp(now)}): {skew}"
        )
    if exp <= now.timestamp() - leeway.total_seconds():
        raise Unauthenticated(
            f"{what} expired (exp {_stamp(exp)}, server time {_stamp(now)}): {skew}"
        )
    jti = claims["jti"]
    if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
        raise Unauthenticated("jti must be a string of 8 to 128 characters")
    if UNSTORABLE.search(jti):  # it is stored (replay): no database takes these
        raise Unauthenticated("jti must not hold NUL or a lone surrogate")
    if check is not None:
        check(claims)  # before the jti is recorded: a refused token burns nothing
    expires = datetime.datetime.fromtimestamp(exp, datetime.UTC) + leeway
    if not replay.remember(jti, expires):
        raise Replayed(f"this {what} was already used (jti replay)")
    return SignedRequest(certificate=leaf, chain=tuple(verified_chain), claims=claims)


def _out_of_validity(cert: x509.Certificate, now: datetime.datetime) -> str | None:
    """The holder's words for a leaf refused only because ``now`` is outside its validity
    period (RFC 5280 §4.1.2.5), or None. The verifier says "cert is not valid at
    validation time" and names the certificate by its repr."""
    at = f"server time {_stamp(now)}"
    if now > cert.not_valid_after_utc:
        return (
            f"certificate is not trusted: it expired at {_stamp(cert.not_valid_after_utc)} "
            f"({at}); an expired certificate signs nothing, and cannot be renewed: its "
            "holder enrolls again with a new code (an RA officer's eport ra new-code APP_ID; "
            "for an operator, the enterprise's eport operator add)"
        )
    if now < cert.not_valid_before_utc:
        return (
            f"certificate is not trusted: it is not valid before "
            f"{_stamp(cert.not_valid_before_utc)} ({at}; is a clock wrong?)"
        )
    return None


def _stamp(when: float | datetime.datetime) -> str:
    """A NumericDate (RFC 7519 §2) or a time as UTC ISO 8601, whole seconds; a number no
    datetime holds as itself."""
    try:
        if not isinstance(when, datetime.datetime):
            when = datetime.datetime.fromtimestamp(when, datetime.UTC)
        return f"{when.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"
    except (OverflowError, ValueError, OSError):
        return f"{when:g}" if isinstance(when, float) else str(when)


LAST_TIME = 253402300799
"""9999-12-31T23:59:59Z as a NumericDate: the last second a ``datetime`` holds."""


def is_numeric_date(value: object) -> bool:
    """A NumericDate (RFC 7519 §2) a ``datetime`` holds: NaN and the infinities (which
    Python's JSON reader takes) compare false; an integer of 400 digits is a number
    ``math.isfinite`` cannot take (OverflowError: a 500 for any certificate holder,
    fuzzing probe 24, F1)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and -LAST_TIME <= value <= LAST_TIME
    )


def compact_header(token: str) -> dict[str, Any]:
    """The protected header of a compact JWS (RFC 7515 §7.1), strictly: three unpadded
    base64url segments (the signature may be empty, for PyJWT to refuse with its own
    words), checked by the regex engine before anything is decoded (PyJWT's own check
    walks each segment a character at a time; it still runs in decode). ValueError if
    the token is not one."""
    if not isinstance(token, str) or not _COMPACT.fullmatch(token.encode("ascii", "replace")):
        raise ValueError("not a compact JWS")
    segment = token[: token.index(".")]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (ValueError, binascii.Error):  # the decoder's words count characters
        raise ValueError("its header is not base64url (RFC 7515 §2)") from None
    try:
        header = json.loads(raw, object_pairs_hook=unique_members)
    except BadRequest as exc:
        raise ValueError(f"its header {exc.detail}") from None
    except (ValueError, RecursionError):  # the parser's words say no more; "[[[…" nested
        # past the parser's stack raised RecursionError, a 500 wherever a token is read
        raise ValueError("its header is not a JSON object (RFC 7515 §4)") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


def _refuse_twice_named(token: str, what: str) -> None:
    """Refuse claims that name a member twice (RFC 7515 §4 and RFC 7519 §4: a JWS with
    duplicate names is rejected, or the last taken; PyJWT takes the last): another
    reader of the same bytes (a log, a proxy) may take the first, and see another
    audience than the one checked here. Run after the signature held."""
    first = token.index(".") + 1
    segment = token[first : token.index(".", first)]
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    try:
        json.loads(raw, object_pairs_hook=unique_members)
    except BadRequest as exc:
        raise Unauthenticated(f"{what} rejected: its claims: {exc.detail}") from None


def unverified_header(token: str, what: str = "signed request") -> dict[str, Any]:
    """:func:`compact_header`, refused as :class:`Unauthenticated`."""
    try:
        return compact_header(token)
    except ValueError as exc:
        raise Unauthenticated(f"malformed {what}: {exc}") from None


def _leaf_from_header(
    token: str, typ: str = TYP, what: str = "signed request"
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    header = unverified_header(token, what)
    if header.get("typ") != typ:
        raise Unauthenticated(f"{what} typ must be {typ!r}")
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
        raise Unauthenticated(f"{what} lacks its x5c certificate chain")
    if len(x5c) > 4:
        raise Unauthenticated("x5c chain too long")
    certs = []
    for i, item in enumerate(x5c):
        try:
            der = base64.b64decode(item, validate=True)
        except ValueError:
            raise Unauthenticated(f"x5c[{i}] is not base64 (RFC 7515 §4.1.6)") from None
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError:  # the parser's text names its internals ("ParseError { kind: …")
            raise Unauthenticated(f"x5c[{i}] is not a DER X.509 certificate") from None
    return certs[0], certs[1:]
