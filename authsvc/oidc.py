"""The OpenID Connect provider core: browser sign-in on the certificate login.

Framework-free: the token service (:class:`authsvc.service.TokenService`: sessions, keys,
policy), storage (:class:`OIDCStore`), clock and the back-channel HTTP transport come in.

What it implements, and where each rule comes from:

* **Authorization code flow** (OpenID Connect Core 1.0 §3.1, RFC 6749 §4.1) with
  ``response_type=code`` only, ``response_mode=query`` only, and the issuer in every
  authorization response (RFC 9207). Codes are 256-bit random, stored only as SHA-256,
  live :attr:`OIDCSettings.code_lifetime` (60 s), are redeemed once (a conditional
  UPDATE in the database), and are bound to the client, the exact redirect URI, the
  PKCE challenge, the nonce and the SSO session. A second redemption revokes the access
  token the first one produced (RFC 6749 §4.1.2: "SHOULD revoke (when possible) all
  tokens previously issued based on that authorization code").
* **PKCE** (RFC 7636) is required of every client and only ``S256`` is accepted (§4.2;
  ``plain`` is refused as OAuth 2.0 Security BCP, RFC 9700 §2.1.1, recommends).
* **Clients** are the services of ``policies/services.toml`` that register
  ``redirect_uris``; the client id is the service id. They are public clients
  (``token_endpoint_auth_method=none``): PKCE, the exact redirect URI and single-use
  codes protect the code; the RP needs no secret to store.
* **ID tokens** (Core §2) are JWS signed with the token service's rotating keys, RS256
  or ES256 as the client registered (``id_token_signed_response_alg`` in policy; ES256
  when it says nothing, see :attr:`Client.id_token_signed_response_alg`), ``typ: JWT``
  (distinct from access tokens' ``at+jwt``, RFC 8725 §3.11), with ``sid``,
  ``auth_time``, ``nonce`` and ``at_hash`` (Core §3.1.3.6). Discovery 1.0 §3 lists both
  algorithms, RS256 first ("The algorithm RS256 MUST be included").
* **UserInfo** (Core §5.3) answers an access token issued by this flow.
* **RP-Initiated Logout 1.0**: ``post_logout_redirect_uri`` must be registered for the
  client exactly; without a valid ``id_token_hint`` of the current session the user is
  asked to confirm (a form with a CSRF token).
* **Back-Channel Logout 1.0**: when an SSO session ends, for whatever reason (logout,
  revoked or suspended certificate, refresh-token theft, expiry), every client that got a
  code in it and registers a ``backchannel_logout_uri`` is sent a logout token
  (``typ: logout+jwt``, §2.4) naming the ``sid``, signed as its ID tokens are ("The same
  keys are used to sign ... Logout Tokens as are used for ID Tokens", §2.4). Deliveries
  are an outbox in the database (claimed with a lease, so several processes never send one
  twice at once), retried with backoff.

The browser's SSO cookie is a separate random secret (stored hashed) mapped to the session
id: the ``sid`` is handed to every relying party in tokens, so it must never be what
authenticates a browser.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jwt
from cryptography import x509

from authsvc.keys import ALG as ES256
from authsvc.keys import RS256
from authsvc.policy import ID_TOKEN_ALGS
from authsvc.principal import x5t_s256
from authsvc.service import (
    AuthEvent,
    InvalidGrant,
    OAuthError,
    SessionRecord,
    TokenService,
)
from authsvc.tokens import InvalidToken
from ca.errors import EPortError

log = logging.getLogger("eport.auth.oidc")

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
ID_TOKEN_TYP = "JWT"
LOGOUT_TOKEN_TYP = "logout+jwt"
OIDC_SCOPES = ("openid", "profile", "eport")
"""``openid`` (required), ``profile`` (``name``) and ``eport`` (the subject's class and its
enterprise, operator or agency ids)."""
CLAIMS_BY_SCOPE: Mapping[str, tuple[str, ...]] = {
    "openid": ("sub",),
    "profile": ("name",),
    "eport": ("subject_class", "uscc", "operator_id", "agency_id"),
}
PROMPTS = frozenset({"none", "login"})
ACCESS_DENIED = "the user may not use this service"
"""The ``error_description`` a relying party gets with ``access_denied`` (and at the
token endpoint when the user lost access meanwhile): nothing of who the user is. A
relying party the policy does not let this user use has been released nothing, so it
must not learn the USCC, operator id or officer's name from the refusal (it, and its
access log, proxies and the browser's history, see the redirect URL); the details are
in the token service's ``oidc.denied`` event and log (:meth:`OpenIDProvider.denied`)."""

_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
"""BASE64URL(SHA-256(verifier)) without padding: always 43 characters (RFC 7636 §4.2)."""
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
"""RFC 7636 §4.1: unreserved characters, 43 to 128 of them."""
_MAX_PARAM = 2048


# -- errors --------------------------------------------------------------------------------


class InvalidClientRequest(OAuthError):
    """An unknown client or an unregistered redirect URI.

    RFC 6749 §4.1.2.1: the server "SHOULD inform the resource owner of the error and MUST
    NOT automatically redirect the user-agent to the invalid redirection URI": shown to the
    user as a page, never sent anywhere.
    """

    error = "invalid_request"


class AuthorizationError(OAuthError):
    """An authorization request error sent back to the client at its registered redirect
    URI, with ``state`` and ``iss`` (RFC 6749 §4.1.2.1, OIDC Core §3.1.2.6, RFC 9207)."""

    def __init__(self, detail: str, *, error: str, redirect_uri: str, state: str | None) -> None:
        super().__init__(detail, error=error)
        self.redirect_uri = redirect_uri
        self.state = state


class InvalidClient(OAuthError):
    """RFC 6749 §5.2 ``invalid_client``: unknown client, or an authentication method this
    server does not offer (every client is public)."""

    status = 401
    error = "invalid_client"


class LogoutRequestError(OAuthError):
    """An RP-initiated logout request that names an unregistered post-logout URI, an id
    token hint that is not ours, or disagreeing clients: answered with a page, never a
    redirect (no open redirect)."""

    error = "invalid_request"


# -- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """A registered web service that signs users in here (a public OIDC client)."""

    id: str
    """The service id in ``policies/services.toml``; also the ``aud`` of its ID tokens."""
    name: str
    redirect_uris: tuple[str, ...]
    """Compared as exact strings (RFC 6749 §3.1.2.3, OAuth 2.0 Security BCP §4.1.3)."""
    post_logout_redirect_uris: tuple[str, ...] = ()
    backchannel_logout_uri: str | None = None
    id_token_signed_response_alg: str = ES256
    """``RS256`` or ``ES256``: how its ID and logout tokens are signed. A registration
    that says nothing gets ES256, not the RS256 of OpenID Connect Core §3.1.3.7 (a
    departure, documented in docs/oidc.md): the clients registered before RS256 keys
    existed verify ES256, and a silent change of algorithm would lock their users out."""


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated authorization request (OIDC Core §3.1.2.1)."""

    client: Client
    redirect_uri: str
    state: str | None
    scopes: tuple[str, ...]
    code_challenge: str
    """BASE64URL(SHA-256(code_verifier)); the method is always S256."""
    nonce: str | None
    prompt: frozenset[str] = frozenset()
    max_age: int | None = None

    def error(self, error: str, detail: str) -> AuthorizationError:
        return AuthorizationError(
            detail, error=error, redirect_uri=self.redirect_uri, state=self.state
        )


@dataclass(frozen=True)
class BrowserSession:
    """A browser's hold on an SSO session: the cookie (hashed) and its CSRF token."""

    cookie_hash: str
    sid: str
    csrf_token: str
    """Every form the browser posts while signed in carries this (synchronizer token)."""
    created_at: datetime.datetime


@dataclass(frozen=True)
class SignedIn:
    """The browser session of a request and the SSO session it holds, checked live."""

    browser: BrowserSession
    session: SessionRecord
    cookie: str | None = None
    """Set when this request opened the session: the cookie value to send."""


@dataclass(frozen=True)
class CodeRecord:
    """An authorization code (its SHA-256 only) and everything it is bound to."""

    code_hash: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    sid: str
    scope: str
    created_at: datetime.datetime
    expires_at: datetime.datetime
    used_at: datetime.datetime | None = None
    access_jti: str | None = None
    access_expires_at: datetime.datetime | None = None
    replayed_at: datetime.datetime | None = None


@dataclass(frozen=True)
class PendingLogout:
    """A back-channel logout owed to one client for one ended session."""

    sid: str
    client_id: str
    subject: str
    attempts: int


@dataclass(frozen=True)
class TokenResponse:
    """RFC 6749 §5.1 plus OIDC Core §3.1.3.3 ``id_token``."""

    access_token: str
    expires_in: int
    scope: str
    id_token: str


@dataclass(frozen=True)
class OIDCSettings:
    code_lifetime: datetime.timedelta = datetime.timedelta(seconds=60)
    """RFC 6749 §4.1.2: "A maximum authorization code lifetime of 10 minutes is
    RECOMMENDED"; a browser redirect takes well under a second."""
    id_token_lifetime: datetime.timedelta = datetime.timedelta(minutes=5)
    logout_token_lifetime: datetime.timedelta = datetime.timedelta(minutes=2)
    logout_lease: datetime.timedelta = datetime.timedelta(seconds=30)
    """How long a process that claimed a delivery has before another may try it."""
    logout_attempts: int = 6
    """Deliveries tried per client and session (backoff 2, 4, 8… s) before giving up."""
    backchannel_timeout: float = 3.0
    keep_codes: datetime.timedelta = datetime.timedelta(hours=1)
    """Used codes are kept this long after they expire, so that a late replay still
    finds (and revokes) the access token they produced: longer than its lifetime."""


class Poster(Protocol):
    """Back-channel transport: POST a form, return the HTTP status (raise if unreachable)."""

    def __call__(self, url: str, form: Mapping[str, str], timeout: float) -> int: ...


class OIDCStore(Protocol):
    def add_browser_session(self, rec: BrowserSession) -> None: ...

    def get_browser_session(self, cookie_hash: str) -> BrowserSession | None: ...

    def delete_browser_session(self, cookie_hash: str) -> None: ...

    def add_code(self, rec: CodeRecord) -> None: ...

    def get_code(self, code_hash: str) -> CodeRecord | None: ...

    def redeem_code(
        self,
        code_hash: str,
        at: datetime.datetime,
        jti: str,
        expires_at: datetime.datetime,
        event: AuthEvent,
    ) -> bool:
        """Mark the code used, with the access token it produced, if it was unused (one
        conditional UPDATE), and record ``event`` in the same transaction; False (and no
        event) if another redemption came first."""
        ...

    def mark_replayed(
        self, code: CodeRecord, at: datetime.datetime, event: Callable[[CodeRecord], AuthEvent]
    ) -> CodeRecord:
        """Record a second redemption of ``code`` in one transaction: the code marked
        replayed, the access token it produced revoked, and ``event(the code as it now
        stands)`` (``code`` itself if its row is gone). The code as it now stands."""
        ...

    def code_by_access_jti(self, jti: str) -> CodeRecord | None: ...

    def add_session_client(self, sid: str, client_id: str, at: datetime.datetime) -> None:
        """Remember that ``client_id`` got a code in session ``sid`` (idempotent)."""
        ...

    def session_clients(self, sid: str) -> list[str]: ...

    def claim_logouts(
        self,
        now: datetime.datetime,
        lease_until: datetime.datetime,
        sid: str | None,
        limit: int,
    ) -> list[PendingLogout]:
        """Pending deliveries of ended or expired sessions (only ``sid``'s, if given) that
        are due, each leased until ``lease_until`` so that no other process sends it."""
        ...

    def logout_done(
        self, sid: str, client_id: str, at: datetime.datetime, *, delivered: bool
    ) -> None: ...

    def logout_retry(self, sid: str, client_id: str, next_at: datetime.datetime) -> None: ...

    def cleanup(self, now: datetime.datetime, keep_codes: datetime.timedelta) -> None: ...


def released_claims(scope: str) -> frozenset[str]:
    """The identity claims the OpenID scopes in ``scope`` release (:data:`CLAIMS_BY_SCOPE`):
    what UserInfo answers, and all the access token of the code flow may carry."""
    return frozenset(c for sc in scope.split() for c in CLAIMS_BY_SCOPE.get(sc, ()))


def same(a: str, b: str) -> bool:
    """``a == b`` in constant time, for any text: :func:`hmac.compare_digest` raises
    TypeError on a ``str`` with a non-ASCII character, which a request can carry in any
    parameter; their UTF-8 bytes compare the same way."""
    return hmac.compare_digest(a.encode(), b.encode())


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def s256(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def at_hash(access_token: str) -> str:
    """OIDC Core §3.1.3.6: the left half of the hash of the ID token's ``alg`` over the
    access token: SHA-256 for both RS256 and ES256."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def with_query(uri: str, params: Mapping[str, str | None]) -> str:
    """``uri`` with ``params`` appended to its query, keeping the query it had
    (RFC 6749 §3.1.2: "MUST retain the query component")."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(k, v) for k, v in params.items() if v is not None]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def _single(params: Mapping[str, list[str]], name: str) -> str | None:
    """A parameter's one value; RFC 6749 §3.1: "MUST NOT be included more than once"."""
    values = params.get(name) or []
    if len(values) > 1:
        raise OAuthError(f"{name} is given more than once")
    if not values or values[0] == "":
        return None
    if len(values[0]) > _MAX_PARAM:
        raise OAuthError(f"{name} is too long")
    return values[0]


class OpenIDProvider:
    def __init__(
        self,
        *,
        tokens: TokenService,
        store: OIDCStore,
        clock: Callable[[], datetime.datetime],
        poster: Poster,
        settings: OIDCSettings | None = None,
    ) -> None:
        self.tokens = tokens
        self.store = store
        self.clock = clock
        self.poster = poster
        self.settings = settings or OIDCSettings()

    @property
    def issuer(self) -> str:
        return self.tokens.settings.issuer

    # -- clients ------------------------------------------------------------------------

    def client(self, client_id: str | None) -> Client:
        """The registered web client ``client_id``; :class:`InvalidClient` otherwise."""
        if not client_id:
            raise InvalidClient("client_id is required")
        try:
            service = self.tokens.access.service(client_id)
        except EPortError:
            raise InvalidClient(f"unknown client {client_id!r}") from None
        uris = tuple(getattr(service, "redirect_uris", ()))
        if not uris:
            raise InvalidClient(f"{client_id!r} is not registered as a web client")
        return Client(
            id=service.id,
            name=service.name,
            redirect_uris=uris,
            post_logout_redirect_uris=tuple(getattr(service, "post_logout_redirect_uris", ())),
            backchannel_logout_uri=getattr(service, "backchannel_logout_uri", None),
            id_token_signed_response_alg=getattr(service, "id_token_signed_response_alg", ES256),
        )

    # -- the authorization endpoint -----------------------------------------------------

    def authorization_request(self, params: Mapping[str, list[str]]) -> AuthorizationRequest:
        """Validate an authorization request (OIDC Core §3.1.2.2).

        Problems with ``client_id`` or ``redirect_uri`` raise :class:`InvalidClientRequest`
        (shown to the user); every other problem raises :class:`AuthorizationError`, which
        goes back to the client's (now known good) redirect URI.
        """
        try:
            client_id = _single(params, "client_id")
            redirect_uri = _single(params, "redirect_uri")
        except OAuthError as exc:
            raise InvalidClientRequest(exc.detail) from None
        try:
            client = self.client(client_id)
        except InvalidClient as exc:
            raise InvalidClientRequest(exc.detail) from None
        if redirect_uri is None:
            raise InvalidClientRequest("redirect_uri is required (OpenID Connect Core §3.1.2.1)")
        # Exact string comparison, no normalisation, no prefix or pattern matching.
        if not any(same(redirect_uri, r) for r in client.redirect_uris):
            raise InvalidClientRequest(
                f"redirect_uri is not registered for {client.id!r} (it must match exactly)"
            )
        state_values = params.get("state") or []
        state = state_values[0] if len(state_values) == 1 else None
        # Capped as every other parameter: it comes back in the Location (a 60 kB state
        # POSTed made a 60 kB header, which a front proxy answers 502). Not reflected.
        state_too_long = state is not None and len(state) > _MAX_PARAM
        if state_too_long:
            state = None

        def fail(error: str, detail: str) -> AuthorizationError:
            return AuthorizationError(detail, error=error, redirect_uri=redirect_uri, state=state)

        if len(state_values) > 1:
            raise fail("invalid_request", "state is given more than once")
        if state_too_long:
            raise fail("invalid_request", f"state is too long (at most {_MAX_PARAM} characters)")
        try:
            one = {
                name: _single(params, name)
                for name in (
                    "response_type",
                    "response_mode",
                    "scope",
                    "code_challenge",
                    "code_challenge_method",
                    "nonce",
                    "prompt",
                    "max_age",
                    "request",
                    "request_uri",
                )
            }
        except OAuthError as exc:
            raise fail("invalid_request", exc.detail) from None
        if one["request"] is not None:
            raise fail("request_not_supported", "request objects are not supported")
        if one["request_uri"] is not None:
            raise fail("request_uri_not_supported", "request_uri is not supported")
        if one["response_type"] is None:  # RFC 6749 §4.1.2.1: a required parameter missing
            raise fail("invalid_request", "response_type is required (response_type=code)")
        if one["response_type"] != "code":
            raise fail(
                "unsupported_response_type",
                "only response_type=code (the authorization code flow) is supported",
            )
        if one["response_mode"] not in (None, "query"):
            raise fail("invalid_request", "only response_mode=query is supported")
        scopes = tuple(dict.fromkeys((one["scope"] or "").split()))
        if "openid" not in scopes:
            raise fail("invalid_scope", "scope must include openid")
        unknown = [s for s in scopes if s not in OIDC_SCOPES]
        if unknown:
            raise fail(
                "invalid_scope",
                f"unsupported scope {unknown[0]!r} (supported: {', '.join(OIDC_SCOPES)}); "
                "the access token's scopes follow the access policy",
            )
        challenge = one["code_challenge"]
        method = one["code_challenge_method"]
        if challenge is None:
            raise fail("invalid_request", "code_challenge is required (PKCE, RFC 7636)")
        if method != "S256":
            raise fail(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            )
        if not _CHALLENGE.fullmatch(challenge):
            raise fail("invalid_request", "code_challenge is not a base64url SHA-256 hash")
        prompt = frozenset((one["prompt"] or "").split())
        if prompt - PROMPTS:
            unsupported = sorted(prompt - PROMPTS)[0]
            error = {
                "consent": "consent_required",
                "select_account": "account_selection_required",
            }.get(unsupported, "invalid_request")
            raise fail(error, f"prompt={unsupported} is not supported")
        if "none" in prompt and len(prompt) > 1:
            raise fail("invalid_request", "prompt=none cannot be combined with other values")
        max_age = None
        if one["max_age"] is not None:
            # ASCII digits: str.isdigit() also takes "²" (int() then raised: a 500) and
            # other scripts' digits
            text = one["max_age"]
            if not (text.isascii() and text.isdigit()) or len(text) > 9:
                raise fail("invalid_request", "max_age must be a non-negative integer")
            max_age = int(one["max_age"])
        return AuthorizationRequest(
            client=client,
            redirect_uri=redirect_uri,
            state=state,
            scopes=scopes,
            code_challenge=challenge,
            nonce=one["nonce"],
            prompt=prompt,
            max_age=max_age,
        )

    def needs_login(self, req: AuthorizationRequest, current: SignedIn | None) -> bool:
        """Whether the request asks for a fresh certificate login (``prompt=login``, or a
        session older than ``max_age``; OIDC Core §3.1.2.1)."""
        if current is None or "login" in req.prompt:
            return True
        if req.max_age is None:
            return False
        age = self.clock() - current.session.auth_time
        return age.total_seconds() > req.max_age

    def issue_code(self, req: AuthorizationRequest, current: SignedIn) -> str:
        """A code for ``req`` in the browser's session; ``access_denied`` if the policy
        gives the subject nothing at the client's service."""
        session = current.session
        p = session.principal
        roles = self.tokens.roles_of(p, session.certificate)
        scopes = self.tokens.access.scopes_for(
            p.subject_class.value, service_id=req.client.id, roles=roles, agency_id=p.agency_id
        )
        if not scopes:
            self.denied(session, req.client.id, "authorize")
            raise req.error("access_denied", ACCESS_DENIED)
        now = self.clock()
        code = secrets.token_urlsafe(32)
        self.store.add_code(
            CodeRecord(
                code_hash=sha256_hex(code),
                client_id=req.client.id,
                redirect_uri=req.redirect_uri,
                code_challenge=req.code_challenge,
                nonce=req.nonce,
                sid=session.sid,
                scope=" ".join(req.scopes),
                created_at=now,
                expires_at=now + self.settings.code_lifetime,
            )
        )
        self.store.add_session_client(session.sid, req.client.id, now)
        return code

    def denied(self, session: SessionRecord, client_id: str, at: str) -> None:
        """Record that the policy gives ``session``'s subject nothing at ``client_id``:
        who, and which client, go to the token service's events (readable by the user
        and by auditors), never to the relying party, which is told only
        :data:`ACCESS_DENIED`."""
        p = session.principal
        why = f"{p.subject_class.value} {p.subject} has no scope at {client_id}"
        log.info("OpenID Connect %s refused: %s", at, why)
        self.tokens.store.add_event(
            AuthEvent(
                "oidc.denied",
                self.clock(),
                p.subject,
                session.sid,
                session.cert_serial,
                service=client_id,
                detail={"why": why, "at": at},
            )
        )

    def success_redirect(self, req: AuthorizationRequest, code: str) -> str:
        """RFC 6749 §4.1.2 with RFC 9207 ``iss``."""
        return with_query(req.redirect_uri, {"code": code, "state": req.state, "iss": self.issuer})

    def error_redirect(self, err: AuthorizationError) -> str:
        return with_query(
            err.redirect_uri,
            {
                "error": err.error,
                "error_description": err.detail,
                "state": err.state,
                "iss": self.issuer,
            },
        )

    # -- browser sessions ---------------------------------------------------------------

    def current(self, cookie: str | None, presented: x509.Certificate | None) -> SignedIn | None:
        """The live session the browser's cookie holds, or None.

        A session ended elsewhere (logout, a revoked or held certificate, expiry) drops
        the browser's hold on it. When the proxy forwards a certificate other than the one
        the session was opened with, the browser has switched certificates: its old session
        ends (with back-channel logouts) and None tells the caller to sign in anew.
        """
        if not cookie or len(cookie) > 128:
            return None
        h = sha256_hex(cookie)
        browser = self.store.get_browser_session(h)
        if browser is None:
            return None
        try:
            session = self.tokens.live_session(browser.sid)
        except InvalidToken:
            self.store.delete_browser_session(h)
            return None
        if presented is not None and x5t_s256(presented) != session.cert_sha256:
            self.end_session(session.sid, "the browser presented another certificate", None)
            self.store.delete_browser_session(h)
            return None
        return SignedIn(browser, session)

    def authenticate(
        self,
        cookie: str | None,
        presented: x509.Certificate | None,
        client_addr: str | None,
        request: AuthorizationRequest | None = None,
    ) -> SignedIn | None:
        """The browser's live session, or a new one from the certificate the proxy
        forwarded; None when there is neither.

        A request that asks for a fresh login (:meth:`needs_login`) is answered by the
        certificate again: the session it opened is re-authenticated in place (checked as
        a login, its auth time now) and kept, so no other relying party is logged out; the
        browser gets a new cookie for it. Without a certificate it gets None.
        :meth:`current` has already ended the session if the browser presents another
        certificate. Raises :class:`~authsvc.service.InvalidGrant` if the certificate may
        not sign in (the session is kept).
        """
        signed = self.current(cookie, presented)
        if signed is not None and (request is None or not self.needs_login(request, signed)):
            return signed
        if presented is None:
            return None
        if signed is not None:
            again = self.tokens.reauthenticate(signed.session, presented, client_addr, "browser")
            self.store.delete_browser_session(signed.browser.cookie_hash)
            if again is not None:
                return self._hold(again)
            # ended meanwhile, or the certificate signs in as someone else now: a new session
            self.end_session(signed.session.sid, "signed in again", client_addr)
        return self.sign_in(presented, client_addr)

    def sign_in(self, cert: x509.Certificate, client_addr: str | None) -> SignedIn:
        """A certificate login (the same SSO session as the CLI's) held by a new cookie.

        Raises :class:`~authsvc.service.InvalidGrant` for a certificate that is not
        good (untrusted, revoked, held, not a subject that signs in)."""
        login = self.tokens.login_certificate(cert, client_addr, via="browser")
        return self._hold(login.session)

    def _hold(self, session: SessionRecord) -> SignedIn:
        """A new browser cookie (and CSRF token) holding ``session``."""
        cookie = secrets.token_urlsafe(32)
        browser = BrowserSession(
            cookie_hash=sha256_hex(cookie),
            sid=session.sid,
            csrf_token=secrets.token_urlsafe(32),
            created_at=self.clock(),
        )
        self.store.add_browser_session(browser)
        return SignedIn(browser, session, cookie)

    @staticmethod
    def check_csrf(current: SignedIn, token: str | None) -> None:
        """Verification raises: the form's token must be the session's, compared in
        constant time."""
        if not token or not same(token, current.browser.csrf_token):
            raise OAuthError("the form's CSRF token is missing or wrong", status=403)

    # -- the token endpoint -------------------------------------------------------------

    def redeem(
        self,
        *,
        code: str,
        client_id: str | None,
        redirect_uri: str | None,
        code_verifier: str | None,
        client_addr: str | None,
    ) -> TokenResponse:
        """RFC 6749 §4.1.3 and RFC 7636 §4.6: exchange a code for tokens, once."""
        client = self.client(client_id)
        if not redirect_uri:
            raise OAuthError("redirect_uri is required (RFC 6749 §4.1.3)")
        if not code_verifier:
            raise OAuthError("code_verifier is required (PKCE, RFC 7636 §4.5)")
        now = self.clock()
        h = sha256_hex(code)
        rec = self.store.get_code(h)
        if rec is None:
            raise InvalidGrant("unknown authorization code")
        # The code is bound to what the authorization request said (mix-up, injection).
        # Checked before a replay is called one: a used code that fails its own bindings
        # comes from someone who saw it (a log, a browser's history), not from its client,
        # and must not revoke the rightful client's token (token service probe, F2).
        if rec.client_id != client.id:
            raise InvalidGrant("the authorization code was issued to another client")
        if not same(rec.redirect_uri, redirect_uri):
            raise InvalidGrant("redirect_uri differs from the authorization request's")
        if not _VERIFIER.fullmatch(code_verifier):
            raise InvalidGrant("code_verifier is not 43-128 unreserved characters (RFC 7636)")
        if not same(s256(code_verifier), rec.code_challenge):
            raise InvalidGrant("code_verifier does not match the code_challenge (PKCE)")
        if rec.used_at is not None:
            self._replayed(rec, client_addr)
        if rec.expires_at <= now:
            raise InvalidGrant("the authorization code has expired")
        try:
            session = self.tokens.live_session(rec.sid)
        except InvalidToken as exc:
            raise InvalidGrant(exc.detail) from None
        # Mint, then redeem and record the token in one conditional UPDATE: of concurrent
        # redemptions exactly one wins, and its token is on the code before anyone can
        # replay it; a loser's token is never handed out.
        try:
            minted = self.tokens.mint_for(
                session, client.id, client_id=client.id, release=released_claims(rec.scope)
            )
        except OAuthError as exc:
            if exc.error != "invalid_scope":
                raise
            # The user's access went away between the code and its redemption (roles
            # revoked): refused as at /authorize, without naming the user to the client.
            self.denied(session, client.id, "token")
            raise OAuthError(ACCESS_DENIED, error="invalid_scope", status=exc.status) from None
        claims = jwt.decode(minted.access_token, options={"verify_signature": False})
        jti = str(claims["jti"])
        exp = datetime.datetime.fromtimestamp(int(claims["exp"]), datetime.UTC)
        issued = AuthEvent.of_session(
            "token.issued",
            now,
            session.sid,
            session,
            client_addr=client_addr,
            service=client.id,
            detail={"grant": "authorization_code"},
        )
        if not self.store.redeem_code(h, now, jti, exp, issued):
            self._replayed(self.store.get_code(h) or rec, client_addr)
        id_token = self.id_token(session, client, nonce=rec.nonce, access_token=minted.access_token)
        return TokenResponse(
            access_token=minted.access_token,
            expires_in=minted.expires_in,
            scope=" ".join([*rec.scope.split(), *minted.scope.split()]),
            id_token=id_token,
        )

    def _replayed(self, rec: CodeRecord, client_addr: str | None) -> NoReturn:
        """A used code presented again: revoke what it produced, refuse (RFC 6749 §4.1.2)."""
        now = self.clock()

        def replayed(after: CodeRecord) -> AuthEvent:
            return AuthEvent(
                "code.replayed",
                now,
                sid=rec.sid,
                client_addr=client_addr,
                service=rec.client_id,
                detail={"revoked_jti": after.access_jti},
            )

        self.store.mark_replayed(rec, now, replayed)
        raise InvalidGrant("the authorization code was already used; its tokens are revoked")

    # -- tokens -------------------------------------------------------------------------

    def _sign(self, claims: dict[str, Any], typ: str, alg: str) -> str:
        """Signed with the active key of family ``alg``; the header's ``alg`` is the
        family's, never anything else."""
        kid, key = self.tokens.keys.id_token_signer(alg)
        return jwt.encode(claims, key, algorithm=alg, headers={"typ": typ, "kid": kid})

    def id_token(
        self,
        session: SessionRecord,
        client: Client,
        *,
        nonce: str | None,
        access_token: str | None,
    ) -> str:
        """OIDC Core §2 and §3.1.3.6."""
        now = self.clock()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": session.principal.subject,
            "aud": client.id,
            "exp": int((now + self.settings.id_token_lifetime).timestamp()),
            "iat": int(now.timestamp()),
            "auth_time": int(session.auth_time.timestamp()),
            "sid": session.sid,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["at_hash"] = at_hash(access_token)
        return self._sign(claims, ID_TOKEN_TYP, client.id_token_signed_response_alg)

    def userinfo(self, access_token: str) -> dict[str, Any]:
        """OIDC Core §5.3: the claims of the access token's scopes, for a token issued by
        the code flow whose session still lives; :class:`InvalidToken` otherwise."""
        claims = self.tokens.check_access_token(access_token, None)
        rec = self.store.code_by_access_jti(str(claims["jti"]))
        if rec is None:
            raise InvalidToken("the token was not issued to an OpenID Connect client")
        session = self.tokens.live_session(rec.sid)
        p = session.principal
        values: dict[str, Any] = {
            "sub": p.subject,
            "name": p.name,
            "subject_class": p.subject_class.value,
            "uscc": p.uscc,
            "operator_id": p.operator_id,
            "agency_id": p.agency_id,
        }
        out: dict[str, Any] = {}
        for scope in rec.scope.split():
            for claim in CLAIMS_BY_SCOPE.get(scope, ()):
                if values.get(claim) is not None:
                    out[claim] = values[claim]
        return out

    def verify_id_token_hint(self, hint: str) -> dict[str, Any]:
        """An ID token this provider issued (RP-Initiated Logout §2: an expired one is
        still a good hint). Raises :class:`LogoutRequestError`."""
        try:
            header = jwt.get_unverified_header(hint)
        except jwt.PyJWTError:
            raise LogoutRequestError("id_token_hint is not a JWT") from None
        alg = header.get("alg")
        if alg not in ID_TOKEN_ALGS or header.get("typ") != ID_TOKEN_TYP:
            raise LogoutRequestError("id_token_hint is not an ID token of this provider")
        kid = header.get("kid")
        # Only a key of the family the header names: an RS256 header never gets an EC key
        # (nor the reverse), so the header cannot choose how its signature is checked.
        key = self.tokens.keys.verification_key(kid, alg) if isinstance(kid, str) else None
        if key is None:
            raise LogoutRequestError("id_token_hint is signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                hint,
                key=key,
                algorithms=[alg],
                issuer=self.issuer,
                options={
                    "require": ["iss", "sub", "aud", "sid"],
                    "verify_aud": False,
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise LogoutRequestError(f"id_token_hint rejected: {exc}") from None
        if not isinstance(claims.get("aud"), str):
            raise LogoutRequestError("id_token_hint has no single audience")
        return claims

    def logout_token(self, client: Client, sid: str, subject: str) -> str:
        """Back-Channel Logout 1.0 §2.4: ``iss``, ``aud``, ``iat``, ``exp``, ``jti``,
        ``sub``, ``sid``, ``events``; never a ``nonce``; ``typ: logout+jwt``."""
        now = self.clock()
        return self._sign(
            {
                "iss": self.issuer,
                "aud": client.id,
                "iat": int(now.timestamp()),
                "exp": int((now + self.settings.logout_token_lifetime).timestamp()),
                "jti": secrets.token_urlsafe(16),
                "sub": subject,
                "sid": sid,
                "events": {BACKCHANNEL_EVENT: {}},
            },
            LOGOUT_TOKEN_TYP,
            client.id_token_signed_response_alg,
        )

    # -- logout -------------------------------------------------------------------------

    def logout_target(
        self,
        *,
        client_id: str | None,
        hint: dict[str, Any] | None,
        post_logout_redirect_uri: str | None,
        state: str | None,
    ) -> str | None:
        """Where the browser goes after logout: a registered ``post_logout_redirect_uri``
        of the client (named by ``client_id`` or the hint's ``aud``), with ``state``; None
        when none was asked for. Anything unregistered raises (no open redirect)."""
        hinted = hint.get("aud") if hint else None
        if client_id and hinted and client_id != hinted:
            raise LogoutRequestError("client_id and the id_token_hint's audience differ")
        named = client_id or hinted
        if post_logout_redirect_uri is None:
            return None
        if not named:
            raise LogoutRequestError(
                "post_logout_redirect_uri needs client_id or id_token_hint to be checked"
            )
        try:
            client = self.client(str(named))
        except InvalidClient as exc:
            raise LogoutRequestError(exc.detail) from None
        if not any(same(post_logout_redirect_uri, u) for u in client.post_logout_redirect_uris):
            raise LogoutRequestError(
                f"post_logout_redirect_uri is not registered for {client.id!r}"
            )
        return with_query(post_logout_redirect_uri, {"state": state})

    def end_session(self, sid: str, reason: str, client_addr: str | None) -> bool:
        """End the SSO session (its tokens stop validating at once) and tell every client
        that got a code in it, now; False if it had already ended."""
        now = self.clock()
        event = AuthEvent.of_session(
            "logout",
            now,
            sid,
            self.tokens.store.get_session(sid),
            client_addr=client_addr,
            detail={"reason": reason},
        )
        # The event in the end's transaction (only if this call ended it): a crash
        # between two transactions lost it, and a concurrent writer could log between
        ended = self.tokens.store.end_session(sid, reason, now, event)
        self.deliver_logouts(sid=sid)
        return ended

    def deliver_logouts(self, *, sid: str | None = None, limit: int = 50) -> int:
        """Send the back-channel logouts that are due; how many were delivered.

        Called for one session right after a logout, and by every process's background
        loop for sessions that ended any other way."""
        now = self.clock()
        pending = self.store.claim_logouts(now, now + self.settings.logout_lease, sid, limit)
        delivered = 0
        for item in pending:
            if self._deliver(item):
                delivered += 1
        return delivered

    def _deliver(self, item: PendingLogout) -> bool:
        now = self.clock()
        try:
            client = self.client(item.client_id)
        except InvalidClient:
            client = None
        if client is None or not client.backchannel_logout_uri:
            self.store.logout_done(item.sid, item.client_id, now, delivered=False)
            return False
        token = self.logout_token(client, item.sid, item.subject)
        try:
            status = self.poster(
                client.backchannel_logout_uri,
                {"logout_token": token},
                self.settings.backchannel_timeout,
            )
        except Exception as exc:  # unreachable, timed out: retried
            status = 0
            log.warning("back-channel logout to %s failed: %s", client.id, exc)
        if 200 <= status < 300:
            self.store.logout_done(item.sid, item.client_id, self.clock(), delivered=True)
            return True
        attempts = item.attempts + 1
        if attempts >= self.settings.logout_attempts:
            log.warning("back-channel logout to %s gave up after %d attempts", client.id, attempts)
            self.store.logout_done(item.sid, item.client_id, self.clock(), delivered=False)
            return False
        backoff = datetime.timedelta(seconds=2**attempts)
        self.store.logout_retry(item.sid, item.client_id, self.clock() + backoff)
        return False

    def cleanup(self) -> None:
        self.store.cleanup(self.clock(), self.settings.keep_codes)


def discovery(issuer: str, service_scopes: Iterable[str]) -> dict[str, Any]:
    """The OpenID Connect Discovery 1.0 §3 / RFC 8414 §2 members of what is implemented
    here; merged into the token service's metadata. Every list names exactly what works."""
    return {
        "authorization_endpoint": issuer + "/authorize",
        "userinfo_endpoint": issuer + "/userinfo",
        "end_session_endpoint": issuer + "/end_session",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "prompt_values_supported": sorted(PROMPTS),
        # Discovery 1.0 §3: "The algorithm RS256 MUST be included"; each client gets the
        # one it registered (Client.id_token_signed_response_alg).
        "id_token_signing_alg_values_supported": [RS256, ES256],
        "claims_supported": sorted(
            {"iss", "aud", "exp", "iat", "auth_time", "nonce", "sid", "at_hash"}
            | {c for cs in CLAIMS_BY_SCOPE.values() for c in cs}
        ),
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "require_request_uri_registration": False,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": False,
        "scopes_supported": [*OIDC_SCOPES, *sorted(set(service_scopes))],
    }


__all__ = [
    "AuthorizationError",
    "AuthorizationRequest",
    "BrowserSession",
    "Client",
    "CodeRecord",
    "InvalidClient",
    "InvalidClientRequest",
    "LogoutRequestError",
    "OIDCSettings",
    "OIDCStore",
    "OpenIDProvider",
    "PendingLogout",
    "SignedIn",
    "TokenResponse",
    "discovery",
]
