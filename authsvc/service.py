"""The token service's core: certificate login, SSO sessions, access tokens, validation.

Framework-free: storage (:class:`AuthStore`), clock, keys, trust anchors, certificate
status and policy come in. Standards: RFC 7523 (JWT bearer login assertion), RFC 9068
(access tokens), RFC 8705 (``cnf.x5t#S256``), RFC 7662 (introspection), RFC 7009
(revocation), RFC 8693 (token exchange, ``act``), RFC 6749 §5.2 (errors).

Revocation reaches tokens within :attr:`TokenService.status_ttl` (default 2 s, the
documented bound being 5 s): every introspection and gateway validation checks the
session in the database and the login certificate's status through the status
interface (cached per certificate for at most ``status_ttl``); a revoked or held
certificate ends the session, so no new token is minted either. A background sweep
(:meth:`TokenService.sweep`) ends sessions of revoked certificates even when nobody asks.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import math
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authsvc.keys import KeyRing
from authsvc.principal import Principal, identify, x5t_s256
from authsvc.tokens import InvalidToken, VerifiedTokens, jose_header, mint, verify
from ca.errors import BadRequest, EPortError, Forbidden, Replayed, Unauthenticated
from ca.ocsp import CertStatus, Good
from ca.policy import Policies, SubjectClass, authorization_of
from ca.signedreq import ReplayStore, SignedRequest, TrustAnchors, verify_certificate_jwt

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class OAuthError(EPortError):
    """An OAuth error (RFC 6749 §5.2): rendered as ``{error, error_description}``."""

    status = 400
    error = "invalid_request"
    retry_after: int | None = None
    """Seconds after which the same request may succeed (``Retry-After``, RFC 9110
    §10.2.3), when the refusal is for a while."""

    def __init__(self, detail: str, *, error: str | None = None, status: int | None = None) -> None:
        super().__init__(detail)
        if error:
            self.error = error
        if status:
            self.status = status  # type: ignore[misc]

    def oauth(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.detail}


class InvalidGrant(OAuthError):
    """RFC 6749 §5.2 ``invalid_grant``: the assertion or refresh token is not good."""

    error = "invalid_grant"


class TooManyFailures(OAuthError):
    """Too many failed logins in the window (RFC 6585 §4 429, with ``Retry-After``)."""

    status = 429
    error = "slow_down"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class StatusSource(Protocol):
    def status(self, cert: x509.Certificate) -> CertStatus: ...


class PolicyView(Protocol):
    """What the core needs of ``authsvc.policy.AccessPolicy``."""

    def service(self, service_id: str) -> Any: ...

    def service_by_audience(self, audience: str) -> Any: ...

    def service_by_identity(self, dns_name: str) -> Any: ...

    def scopes_for(
        self,
        subject_class: str,
        *,
        service_id: str,
        roles: frozenset[str] = frozenset(),
        agency_id: str | None = None,
    ) -> tuple[str, ...]: ...

    def may_exchange(self, from_service_id: str, to_service_id: str) -> bool: ...


IDENTITY_CLAIMS = ("sub", "subject_class", "name", "uscc", "operator_id", "agency_id")
"""The claims of an access token that describe its subject: each must be its session's."""

SessionState = tuple[datetime.datetime | None, datetime.datetime, str, dict[str, str | None]]
"""(ended_at, expires_at, certificate x5t#S256, identity by :data:`IDENTITY_CLAIMS`) of a
session, as the validation hot path reads it."""


def identity_of(p: Principal) -> dict[str, str | None]:
    """A principal's values of :data:`IDENTITY_CLAIMS`."""
    values = (p.subject, p.subject_class.value, p.name, p.uscc, p.operator_id, p.agency_id)
    return dict(zip(IDENTITY_CLAIMS, values, strict=True))


def check_bound(claims: dict[str, Any], cert_sha256: str, identity: dict[str, str | None]) -> None:
    """Refuse a token whose ``cnf`` or subject claims are not its session's: the service
    mints none, so one is forged with a signing key taken from it (until that key is
    withdrawn: ``eport auth rotate-keys --compromised``), naming another subject or
    another enterprise in a live session of its own."""
    cnf = claims.get("cnf")
    if not isinstance(cnf, dict) or cnf.get("x5t#S256") != cert_sha256:
        raise InvalidToken("the token is not bound to its session's certificate")
    for claim, value in identity.items():
        if (claim == "sub" or claim in claims) and claims.get(claim) != value:
            raise InvalidToken(f"the token's {claim} is not its session's")


@dataclass(frozen=True)
class SessionRecord:
    sid: str
    principal: Principal
    cert_serial: str
    cert_sha256: str
    cert_der: bytes
    client_addr: str | None
    created_at: datetime.datetime
    expires_at: datetime.datetime
    ended_at: datetime.datetime | None = None
    end_reason: str | None = None
    authenticated_at: datetime.datetime | None = None
    """When the holder last proved its key again in this session (None: never since it
    opened); see :attr:`auth_time`."""

    @property
    def auth_time(self) -> datetime.datetime:
        """When the holder last authenticated: OIDC's ``auth_time``, what ``max_age``
        counts from."""
        return self.authenticated_at or self.created_at

    @functools.cached_property
    def certificate(self) -> x509.Certificate:
        """Parsed once per record (its status check and its roles both read it)."""
        return x509.load_der_x509_certificate(self.cert_der)


@dataclass(frozen=True)
class RefreshRecord:
    token_hash: str
    sid: str
    issued_at: datetime.datetime
    used_at: datetime.datetime | None
    successor_hash: str | None


@dataclass(frozen=True)
class AuthEvent:
    type: str
    at: datetime.datetime
    subject: str | None = None
    sid: str | None = None
    cert_serial: str | None = None
    client_addr: str | None = None
    service: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_session(
        cls,
        type: str,
        at: datetime.datetime,
        sid: str,
        session: SessionRecord | None,
        *,
        client_addr: str | None = None,
        service: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuthEvent:
        """An event about session ``sid`` (a token issued in it, its end), naming its
        subject and certificate when the session is on record (``session``, read by the
        caller; None once it is gone)."""
        return cls(
            type,
            at,
            session.principal.subject if session else None,
            sid,
            session.cert_serial if session else None,
            client_addr,
            service,
            detail or {},
        )


Rotation = Literal["rotated", "used", "ended"]
"""What :meth:`AuthStore.rotate_refresh` did: rotated the token, or refused because it was
used meanwhile, or because its session had ended."""


class AuthStore(ReplayStore, Protocol):
    def add_session(
        self, rec: SessionRecord, refresh_hash: str, event: AuthEvent | None = None
    ) -> None:
        """Store the session, its first refresh token and ``event`` in one transaction."""
        ...

    def get_session(self, sid: str) -> SessionRecord | None: ...

    def end_session(
        self, sid: str, reason: str, at: datetime.datetime, event: AuthEvent | None = None
    ) -> bool:
        """End it if still open (one conditional UPDATE), with ``event`` in the same
        transaction; False if it was already ended (and nothing is logged)."""
        ...

    def reauthenticated(self, sid: str, at: datetime.datetime) -> bool:
        """Record that the session's holder authenticated again at ``at``, if it is still
        open (one conditional UPDATE); False if it had ended."""
        ...

    def open_session_serials(self, now: datetime.datetime) -> list[tuple[str, str]]:
        """(sid, certificate serial hex) of every open, unexpired session."""
        ...

    def get_refresh(self, token_hash: str) -> RefreshRecord | None: ...

    def rotate_refresh(
        self,
        old_hash: str,
        new_hash: str,
        sid: str,
        at: datetime.datetime,
        event: AuthEvent | None = None,
    ) -> Rotation:
        """Mark ``old_hash`` used, add ``new_hash`` and ``event``, if ``old_hash`` was unused
        and session ``sid`` is still open, both decided in that one transaction with the
        session's row locked: a session ended (logout, reuse) meanwhile gets no rotation."""
        ...

    def revoke_jti(
        self, jti: str, expires_at: datetime.datetime, event: AuthEvent | None = None
    ) -> bool:
        """Revoke ``jti``, a token that expires at ``expires_at`` (its ``exp``); the
        revocation is kept until that plus the clock leeway, as long as validation accepts
        the token. True if this call revoked it (not before); ``event`` is then added in
        the same transaction."""
        ...

    def is_revoked(self, jti: str) -> bool: ...

    def get_roles(
        self,
        uscc: str,
        operator_id: str,
        authorization: str | None = None,
        event: AuthEvent | None = None,
    ) -> frozenset[str]:
        """The operator's roles under ``authorization``; a grant not bound yet is bound
        to it, with ``event`` (see :meth:`authsvc.store.SqlAuthStore.get_roles`)."""
        ...

    def set_roles(
        self,
        uscc: str,
        operator_id: str,
        roles: frozenset[str],
        by: str,
        at: datetime.datetime,
        event: AuthEvent | None = None,
        authorization: str | None = None,
    ) -> None:
        """Replace the operator's roles, for ``authorization``, and add ``event`` in one
        transaction: of grants at once, the last one's event is logged last (the last
        writer wins)."""
        ...

    def failures(
        self, key: str, now: datetime.datetime, window: datetime.timedelta
    ) -> tuple[int, datetime.datetime]:
        """The failures counted for ``key`` in its window, and when that window ends
        (``now`` when none is counted)."""
        ...

    def record_failure(
        self, key: str, now: datetime.datetime, window: datetime.timedelta
    ) -> None: ...

    def add_event(self, ev: AuthEvent) -> None: ...

    def events(self, *, subject: str | None, limit: int, after_id: int) -> list[dict[str, Any]]: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Settings:
    issuer: str
    """The ``iss`` of every token (the token service's public base URL + ``/auth``)."""
    access_token_lifetime: datetime.timedelta = datetime.timedelta(minutes=10)
    session_lifetime: datetime.timedelta = datetime.timedelta(hours=8)
    leeway: datetime.timedelta = datetime.timedelta(seconds=30)
    refresh_grace: datetime.timedelta = datetime.timedelta(seconds=10)
    """A refresh token used again within this window after its first use (two
    concurrent refreshes of one client) is refused without ending the session; later
    reuse is theft and ends the whole session (OAuth 2.0 Security BCP §4.14.2)."""
    status_ttl: datetime.timedelta = datetime.timedelta(seconds=2)
    failure_window: datetime.timedelta = datetime.timedelta(minutes=5)
    max_failures: int = 10
    """Failed logins per certificate in ``failure_window`` before it is refused (429)."""
    max_failures_per_address: int = 50
    """Failed logins per client address (higher: many users may share one NAT address)."""

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"


@dataclass(frozen=True)
class Minted:
    access_token: str
    expires_in: int
    scope: str
    audience: str
    refresh_token: str | None = None


@dataclass(frozen=True)
class Login:
    session: SessionRecord
    refresh_token: str
    minted: Minted | None = None
    """The access token for the service a login named (RFC 8693 ``audience``), if any."""


class TokenService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: AuthStore,
        keys: KeyRing,
        trust: TrustAnchors,
        status: StatusSource,
        policies: Policies,
        access: PolicyView,
        clock: Callable[[], datetime.datetime],
        issuing_cas: Callable[[], Mapping[str, x509.Certificate]],
    ) -> None:
        """``issuing_cas``: every issuing CA generation of the joint CA by its id, as now
        published (a rollover adds one); a certificate must come from its profile's."""
        self.settings = settings
        self.store = store
        self.keys = keys
        self.trust = trust
        self.status_source = status
        self.policies = policies
        self.access = access
        self.clock = clock
        self.issuing_cas = issuing_cas
        self._status_cache: dict[str, tuple[datetime.datetime, CertStatus]] = {}
        self._verified = VerifiedTokens()
        self._principals: dict[x509.Certificate, Principal] = {}
        self._status_lock = threading.Lock()

    # -- certificate status ---------------------------------------------------------------

    def cert_status(self, cert: x509.Certificate, *, fresh: bool = False) -> CertStatus:
        key = x5t_s256(cert)
        now = self.clock()
        if not fresh:
            hit = self._status_cache.get(key)
            if hit is not None and now - hit[0] < self.settings.status_ttl:
                return hit[1]
        st = self.status_source.status(cert)
        with self._status_lock:
            if len(self._status_cache) > 50_000:
                self._status_cache.clear()
            self._status_cache[key] = (now, st)
        return st

    def require_good(self, cert: x509.Certificate, *, fresh: bool) -> None:
        """The certificate of a grant's subject (a login assertion, a certificate login)
        must be good: :class:`InvalidGrant` otherwise (RFC 6749 §5.2, the grant is bad).
        A *caller*'s certificate is :meth:`require_good_caller`'s."""
        st = self.cert_status(cert, fresh=fresh)
        if not isinstance(st, Good):
            raise InvalidGrant(f"the certificate is {_status_name(st)}")

    def require_good_caller(self, cert: x509.Certificate, *, fresh: bool = False) -> None:
        """The certificate a caller authenticates with (a signed request, or a client
        certificate a trusted proxy forwarded) must be good: :class:`Unauthenticated`
        otherwise. The caller failed to authenticate, so OAuth endpoints answer 401
        ``invalid_client`` (RFC 6749 §5.2, RFC 7662 §2.3) and ``/auth/v1/…`` a 401
        problem, as the CA answers the same signer. Before, it was ``invalid_grant``,
        which an introspecting service reads as a verdict on the token it asked about.

        ``fresh``: a write that lasts (a role grant) asks the CA now, as a login does; the
        status cached for ``status_ttl`` (2 s) let an enterprise whose revocation had been
        answered grant roles for two more seconds (race probe, session 24). Introspection
        and exchange, which make nothing that outlives the caller's status, keep the
        cache."""
        st = self.cert_status(cert, fresh=fresh)
        if not isinstance(st, Good):
            raise Unauthenticated(
                f"the certificate {cert.serial_number:x} is {_status_name(st)}; "
                "it cannot authenticate a call"
            )

    # -- login ----------------------------------------------------------------------------

    def _check_rate(self, keys: list[str]) -> None:
        now = self.clock()
        until: datetime.datetime | None = None
        for k in keys:
            limit = (
                self.settings.max_failures_per_address
                if k.startswith("addr:")
                else self.settings.max_failures
            )
            count, ends = self.store.failures(k, now, self.settings.failure_window)
            if count >= limit:
                until = ends if until is None else max(until, ends)
        if until is not None:
            # Every key over its limit stays refused until its window ends: the latest.
            left = max(math.ceil((until - now).total_seconds()), 1)
            raise TooManyFailures(f"too many failed logins; try again in {left} s", left)

    def _fail(self, keys: list[str], event: AuthEvent) -> None:
        now = self.clock()
        for k in keys:
            self.store.record_failure(k, now, self.settings.failure_window)
        self.store.add_event(event)

    def login_assertion(
        self,
        assertion: str,
        client_addr: str | None,
        service_id: str | None = None,
        requested: str | None = None,
    ) -> Login:
        """RFC 7523 §2.1: a JWT signed with the certificate's key, the chain in ``x5c``.

        With ``service_id`` (RFC 8693 ``audience``), also an access token for that
        service, of the ``requested`` scopes only if given (:func:`narrowed`). Everything
        that can refuse the login, the service and the subject's access to it included, is
        decided before the assertion's ``jti`` is spent: a refused login opens no session,
        logs no ``login`` and may be sent again."""
        addr_key = f"addr:{client_addr}"
        cert_key = _assertion_cert_key(assertion)
        keys = [addr_key] + ([cert_key] if cert_key else [])
        self._check_rate(keys)
        now = self.clock()
        signed_by_holder = False
        decided: dict[str, Any] = {}

        def before_spending(claims: dict[str, Any]) -> None:
            # Called once the signature by x5c[0]'s key, the chain and the times are
            # verified, before the jti is recorded (ca.signedreq.verify_certificate_jwt).
            nonlocal signed_by_holder
            signed_by_holder = True
            cert = _assertion_leaf(assertion)
            principal = identify(cert, self.policies, self.issuing_cas())
            # RFC 7523 §3: sub names the principal; we accept its subject id or the
            # certificate's x5t#S256 thumbprint (what a client knows without policy data).
            if claims.get("sub") not in (principal.subject, x5t_s256(cert)):
                raise InvalidGrant(f"assertion sub must be {principal.subject!r} or the x5t#S256")
            self.require_good(cert, fresh=True)
            decided["principal"] = principal
            if service_id is not None:
                # invalid_target or invalid_scope: not a failed login (nothing counted)
                decided["access"] = self._access(principal, cert, service_id, requested)

        try:
            try:
                jose_header(assertion)  # refused in plain words before the parsers speak
            except ValueError as exc:
                raise Unauthenticated(f"malformed login assertion: {exc}") from None
            verified = verify_certificate_jwt(
                assertion,
                typ="JWT",
                audience=self.settings.token_endpoint,
                required=("iss", "sub", "aud", "exp", "iat", "jti"),
                trust=self.trust,
                replay=self.store,
                now=now,
                leeway=self.settings.leeway,
                what="login assertion",
                check=before_spending,
            )
        except (Unauthenticated, Forbidden, InvalidGrant) as exc:
            # A certificate is public: anyone can name it in x5c. Only a failure after its
            # key's signature verified counts against it; the rest count against the
            # address alone, or a stranger could lock the holder out of login.
            # A replay was signed by the holder once, but sent again by whoever saw it:
            # counted against the certificate, ten replays locked its holder out.
            holders = signed_by_holder and not isinstance(exc, Replayed)
            self._fail(
                keys if holders else [addr_key],
                AuthEvent("login.failed", now, client_addr=client_addr, detail={"why": exc.detail}),
            )
            if isinstance(exc, InvalidGrant):
                raise
            raise InvalidGrant(exc.detail) from None
        login = self._open_session(
            verified.certificate, decided["principal"], client_addr, "assertion"
        )
        if service_id is None:
            return login
        service, scopes = decided["access"]
        return dataclasses.replace(login, minted=self._mint(login.session, service, scopes))

    def login_certificate(
        self, cert: x509.Certificate, client_addr: str | None, via: str = "mtls"
    ) -> Login:
        """A client certificate a trusted TLS proxy verified and forwarded (RFC 9440)."""
        principal, _ = self._check_certificate_login(cert, client_addr, via)
        return self._open_session(cert, principal, client_addr, via)

    def _check_certificate_login(
        self, cert: x509.Certificate, client_addr: str | None, via: str
    ) -> tuple[Principal, datetime.datetime]:
        """A certificate login's checks (rate limits, chain, who it is under the policies,
        status asked fresh): its principal and the time, or :class:`InvalidGrant` (counted
        as a failed login)."""
        keys = [f"addr:{client_addr}", f"cert:{x5t_s256(cert)}"]
        self._check_rate(keys)
        now = self.clock()
        try:
            self.trust.verify_chain(cert, now)
            principal = identify(cert, self.policies, self.issuing_cas())
            self.require_good(cert, fresh=True)
        except (Unauthenticated, Forbidden, InvalidGrant) as exc:
            self._fail(
                keys,
                AuthEvent(
                    "login.failed",
                    now,
                    client_addr=client_addr,
                    detail={"why": exc.detail, "via": via},
                ),
            )
            raise InvalidGrant(exc.detail) from None
        return principal, now

    def reauthenticate(
        self, session: SessionRecord, cert: x509.Certificate, client_addr: str | None, via: str
    ) -> SessionRecord | None:
        """The holder of ``session`` authenticates again with the certificate the session
        was opened with (a relying party's ``prompt=login`` or ``max_age``): checked as a
        login is (chain, who it is under the policies now, status asked fresh, rate
        limits), then the session's auth time moves to now and it stays open, so no other
        service is logged out. None if the session ended meanwhile, or if the certificate
        no longer signs in as the session's principal (a policy changed): the caller ends
        it and opens a new one. Raises :class:`InvalidGrant` as :meth:`login_certificate`
        does; the session is kept."""
        if x5t_s256(cert) != session.cert_sha256:
            raise ValueError("re-authentication is with the session's own certificate")
        principal, now = self._check_certificate_login(cert, client_addr, via)
        if principal != session.principal:
            return None
        if not self.store.reauthenticated(session.sid, now):
            return None
        self.store.add_event(
            AuthEvent(
                "login",
                now,
                session.principal.subject,
                session.sid,
                session.cert_serial,
                client_addr,
                detail={"via": via, "session": "kept"},
            )
        )
        return dataclasses.replace(session, authenticated_at=now)

    def _open_session(
        self, cert: x509.Certificate, principal: Principal, client_addr: str | None, via: str
    ) -> Login:
        now = self.clock()
        sid = secrets.token_urlsafe(24)
        refresh = secrets.token_urlsafe(32)
        # A session proves no more than its certificate does: it ends at the certificate's
        # notAfter (RFC 5280 §4.1.2.5) if that comes before the session lifetime.
        expires_at = min(now + self.settings.session_lifetime, cert.not_valid_after_utc)
        rec = SessionRecord(
            sid=sid,
            principal=principal,
            cert_serial=format(cert.serial_number, "x"),
            cert_sha256=x5t_s256(cert),
            cert_der=cert.public_bytes(serialization.Encoding.DER),
            client_addr=client_addr,
            created_at=now,
            expires_at=expires_at,
        )
        # The login event in the session's own transaction (findings 19 F4).
        login = AuthEvent(
            "login", now, principal.subject, sid, rec.cert_serial, client_addr, detail={"via": via}
        )
        self.store.add_session(rec, token_hash(refresh), login)
        return Login(rec, refresh)

    # -- sessions ---------------------------------------------------------------------------

    def live_session(self, sid: str, *, fresh_status: bool = False) -> SessionRecord:
        """The open session ``sid``; ends it if its certificate is no longer good."""
        rec = self.store.get_session(sid)
        now = self.clock()
        if rec is None or rec.ended_at is not None:
            raise InvalidToken("the session has ended")
        if rec.expires_at <= now:
            raise InvalidToken("the session has expired")
        st = self.cert_status(rec.certificate, fresh=fresh_status)
        if not isinstance(st, Good):
            reason = f"certificate {type(st).__name__.lower()}"
            event = AuthEvent.of_session("session.ended", now, sid, rec, detail={"reason": reason})
            self.store.end_session(sid, reason, now, event)
            raise InvalidToken(f"the session ended: {reason}")
        return rec

    def refresh(
        self,
        refresh_token: str,
        service_id: str,
        client_addr: str | None,
        requested: str | None = None,
    ) -> Minted:
        """A new access token for ``service_id`` from the session (of the ``requested``
        scopes only, if given: RFC 6749 §6), and a rotated refresh token."""
        now = self.clock()
        h = token_hash(refresh_token)
        rt = self.store.get_refresh(h)
        if rt is None:
            raise InvalidGrant("unknown refresh token")
        if rt.used_at is not None:
            self._refuse_reuse(rt, rt.used_at, now, client_addr)
        try:
            session = self.live_session(rt.sid)
        except InvalidToken as exc:
            raise InvalidGrant(exc.detail) from None
        # Mint first: a refusal (unknown service, no access) must leave the refresh token
        # usable; a token minted for a lost rotation race is simply never handed out.
        minted = self.mint_for(session, service_id, requested=requested)
        new = secrets.token_urlsafe(32)
        issued = AuthEvent.of_session(
            "token.issued", now, session.sid, session, client_addr=client_addr, service=service_id
        )
        # The session is checked again where the token rotates, under its row's lock: a
        # logout or reuse detection that ended it since live_session() read it wins, and
        # the token minted above is never handed out (findings 19 F1).
        rotation = self.store.rotate_refresh(h, token_hash(new), rt.sid, now, issued)
        if rotation == "ended":
            raise InvalidGrant("the session has ended")
        if rotation == "used":
            raise InvalidGrant("refresh token already used (concurrent refresh); use its successor")
        return Minted(minted.access_token, minted.expires_in, minted.scope, minted.audience, new)

    def _refuse_reuse(
        self,
        rt: RefreshRecord,
        used_at: datetime.datetime,
        now: datetime.datetime,
        client_addr: str | None,
    ) -> NoReturn:
        """Refuse a refresh token that was used already. Within ``refresh_grace`` of its
        first use (two concurrent refreshes of one client) nothing else happens; later it
        is theft (OAuth 2.0 Security BCP §4.14.2): the whole session ends."""
        if now - used_at <= self.settings.refresh_grace:
            raise InvalidGrant("refresh token already used (concurrent refresh); use its successor")
        event = AuthEvent.of_session(
            "session.ended",
            now,
            rt.sid,
            self.store.get_session(rt.sid),
            client_addr=client_addr,
            detail={"reason": "refresh token reuse"},
        )
        self.store.end_session(rt.sid, "refresh token reuse", now, event)
        raise InvalidGrant("refresh token reused: the session is ended")

    def mint_for(
        self,
        session: SessionRecord,
        service_id: str,
        act: dict[str, Any] | None = None,
        *,
        client_id: str = "eport-cli",
        release: frozenset[str] | None = None,
        requested: str | None = None,
    ) -> Minted:
        """An access token of ``session`` for ``service_id``; ``release``: see
        :meth:`_mint`; ``requested``: :func:`narrowed`."""
        service, scopes = self._access(
            session.principal, session.certificate, service_id, requested
        )
        return self._mint(session, service, scopes, act, client_id=client_id, release=release)

    def _access(
        self,
        p: Principal,
        certificate: x509.Certificate,
        service_id: str,
        requested: str | None = None,
    ) -> tuple[Any, tuple[str, ...]]:
        """The service ``service_id`` and the scopes ``p`` has there (those ``requested``
        of them, if given: :func:`narrowed`); raises the OAuth error (``invalid_target``,
        ``invalid_scope``) if there are none, or one requested is not among them."""
        try:
            service = self.access.service(service_id)
        except EPortError as exc:  # its detail names the known services
            raise OAuthError(exc.detail, error="invalid_target") from None
        roles = self.roles_of(p, certificate)
        scopes = self.access.scopes_for(
            p.subject_class.value, service_id=service.id, roles=roles, agency_id=p.agency_id
        )
        if not scopes:
            raise OAuthError(
                f"{p.subject_class.value} {p.subject} has no access to {service.id}",
                error="invalid_scope",
            )  # 400: RFC 6749 §5.2 names no other status for it (standards probe, s26)
        return service, narrowed(tuple(scopes), requested, f"{p.subject} at {service.id}")

    def _mint(
        self,
        session: SessionRecord,
        service: Any,
        scopes: tuple[str, ...],
        act: dict[str, Any] | None = None,
        *,
        client_id: str = "eport-cli",
        release: frozenset[str] | None = None,
    ) -> Minted:
        """An RFC 9068 access token. ``release``: which of the claims that describe the
        subject beyond ``sub`` (``subject_class``, ``name``, ``uscc``, ``operator_id``,
        ``agency_id``) it may carry; None, all that apply. An OpenID Connect
        client reads the token of its code flow (it is its own service's), so that token
        carries only what the scopes it was granted release (``profile``: ``name``;
        ``eport``: the class and ids), as UserInfo does; ``sub`` is always there."""
        p = session.principal
        now = self.clock()
        # Never past its session's end (so never past the login certificate's notAfter):
        # an offline validator (JWKS) cannot see the session.
        exp = min(now + self.settings.access_token_lifetime, session.expires_at)
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": p.subject,
            "aud": service.audience,
            "exp": int(exp.timestamp()),
            "iat": int(now.timestamp()),
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id if act is None else act["sub"],
            "scope": " ".join(scopes),
            "sid": session.sid,
            "cnf": {"x5t#S256": session.cert_sha256},
        }
        identity = {
            "subject_class": p.subject_class.value,
            "name": p.name,
            "uscc": p.uscc or None,
            "operator_id": p.operator_id or None,
            "agency_id": p.agency_id or None,
        }
        for claim, value in identity.items():
            if value is not None and (release is None or claim in release):
                claims[claim] = value
        if act is not None:
            claims["act"] = act
        kid, key = self.keys.signer()
        token = mint(claims, kid, key)
        return Minted(
            token,
            claims["exp"] - claims["iat"],
            claims["scope"],
            service.audience,
        )

    # -- validation -------------------------------------------------------------------------

    def check_access_token(self, token: str, audience: str | None) -> dict[str, Any]:
        """Signature, claims, revocation, session and certificate status; raises if inactive."""
        claims = verify(
            token,
            public_key=self.keys.public_key,
            issuer=self.settings.issuer,
            audience=audience,
            now=self.clock(),
            leeway=self.settings.leeway,
            cache=self._verified,
            max_lifetime=self.settings.access_token_lifetime,
        )
        sid = claims.get("sid")
        if not isinstance(sid, str):
            raise InvalidToken("the token names no session")
        fast = getattr(self.store, "token_state", None)
        if fast is not None:
            # The hot path: revocation and session state in one short read; when the
            # certificate's status is in the cache and good, nothing else is needed.
            revoked, state = fast(str(claims["jti"]), sid)
            if revoked:
                raise InvalidToken("the token was revoked")
            if state is None or state[0] is not None:
                raise InvalidToken("the session has ended")
            now = self.clock()
            if state[1] <= now:
                raise InvalidToken("the session has expired")
            check_bound(claims, state[2], state[3])
            hit = self._status_cache.get(state[2])
            if (
                hit is not None
                and now - hit[0] < self.settings.status_ttl
                and isinstance(hit[1], Good)
            ):
                return claims
        elif self.store.is_revoked(str(claims["jti"])):
            raise InvalidToken("the token was revoked")
        rec = self.live_session(sid)
        check_bound(claims, rec.cert_sha256, identity_of(rec.principal))
        return claims

    def introspect(self, token: str, caller: Principal) -> dict[str, Any]:
        """RFC 7662: ``{"active": false}`` for anything not good; a service sees only
        tokens issued for its own audience (no data goes out without authorization)."""
        service = self._service_of(caller)
        if not getattr(service, "may_introspect", True):
            raise Forbidden(f"service {service.id} may not introspect tokens")
        try:
            claims = self.check_access_token(token, service.audience)
        except InvalidToken:
            return {"active": False}
        except EPortError as exc:
            if exc.status >= 500:  # the token could not be judged: a fault, not "inactive"
                raise
            return {"active": False}
        return {"active": True, "token_type": "Bearer", **claims}

    def _service_of(self, caller: Principal) -> Any:
        if caller.subject_class is not SubjectClass.SERVICE or not caller.service_host:
            raise Forbidden("only a registered e-port service may do this")
        service = self.access.service_by_identity(caller.service_host)
        if service is None:
            raise Forbidden(f"{caller.service_host} is not a registered e-port service")
        owner = service.agency
        if owner is None:
            # no member named as its operator: any member's officer could certify its host
            # name, so no certificate speaks for it (fail closed, not open)
            raise Forbidden(
                f"{caller.service_host} names no operating member agency (agency in "
                "services.toml): no certificate speaks for it here"
            )
        if caller.service_agency != owner:
            # any member's RA officer can certify any host name: only the operating
            # member's certificate speaks for the service (authorization probe, F1)
            raise Forbidden(
                f"{caller.service_host} is operated by member agency {owner}: its "
                f"certificate must be one that agency vetted, not "
                f"{caller.service_agency or 'another'}'s"
            )
        return service

    def exchange(
        self,
        caller: Principal,
        subject_token: str,
        target_service_id: str,
        requested: str | None = None,
    ) -> Minted:
        """RFC 8693: a token for another service on the user's behalf, with ``act``; of the
        ``requested`` scopes only, if given (§2.1 ``scope``, :func:`narrowed`)."""
        service = self._service_of(caller)
        if not self.access.may_exchange(service.id, target_service_id):
            # RFC 8693 §2.2.2: a target the server will not issue for is invalid_target,
            # 400 as every RFC 6749 §5.2 error but invalid_client (was 403
            # unauthorized_client: token service probe)
            raise OAuthError(
                f"{service.id} may not act for users at {target_service_id}",
                error="invalid_target",
            )
        try:
            claims = self.check_access_token(subject_token, service.audience)
        except InvalidToken as exc:
            raise InvalidGrant(f"subject_token: {exc.detail}") from None
        session = self.live_session(str(claims["sid"]))
        act = {"sub": caller.subject}
        if isinstance(claims.get("act"), dict):
            act["act"] = claims["act"]  # RFC 8693 §4.1: nested for a chain of delegation
        minted = self.mint_for(session, target_service_id, act=act, requested=requested)
        self.store.add_event(
            AuthEvent(
                "token.exchanged",
                self.clock(),
                session.principal.subject,
                session.sid,
                service=target_service_id,
                detail={"actor": caller.subject},
            )
        )
        return minted

    # -- ending things ------------------------------------------------------------------------

    def revoke(self, token: str, hint: str | None, client_addr: str | None = None) -> None:
        """RFC 7009: revoke an access token (until its exp) or a refresh token (its session).

        Unknown or invalid tokens are not an error (§2.2). Anyone holding a token may revoke
        it (no client authentication), so the event names the session's subject and the
        address it came from, the only trace of who ended it (token probe 24: a session
        ended by its refresh token was logged with neither)."""
        now = self.clock()
        if hint != "refresh_token" and token.count(".") == 2:
            try:
                claims = verify(
                    token,
                    public_key=self.keys.public_key,
                    issuer=self.settings.issuer,
                    audience=None,
                    now=now,
                    leeway=self.settings.leeway,
                    max_lifetime=self.settings.access_token_lifetime,
                )
            except InvalidToken:
                return
            exp = datetime.datetime.fromtimestamp(claims["exp"], datetime.UTC)
            event = AuthEvent(
                "token.revoked",
                now,
                str(claims["sub"]),
                str(claims.get("sid")),
                client_addr=client_addr,
                detail={"jti": claims["jti"]},
            )
            # Logged in the revocation's transaction, and only by the call that stored it
            # (here or on another host at once).
            self.store.revoke_jti(str(claims["jti"]), exp, event)
            return
        rt = self.store.get_refresh(token_hash(token))
        if rt is not None:
            ended = AuthEvent.of_session(
                "session.ended",
                now,
                rt.sid,
                self.store.get_session(rt.sid),
                client_addr=client_addr,
                detail={"reason": "refresh token revoked"},
            )
            self.store.end_session(rt.sid, "refresh token revoked", now, ended)

    def logout(self, refresh_token: str, client_addr: str | None) -> bool:
        now = self.clock()
        rt = self.store.get_refresh(token_hash(refresh_token))
        if rt is None:
            return False
        event = AuthEvent.of_session(
            "logout", now, rt.sid, self.store.get_session(rt.sid), client_addr=client_addr
        )
        # The event in the end's own transaction (findings 19 F4), logged once.
        return self.store.end_session(rt.sid, "logout", now, event)

    def session_of_refresh(
        self, refresh_token: str, client_addr: str | None = None
    ) -> SessionRecord:
        """The session of a refresh token that is still the session's current one; a
        used one is refused as :meth:`refresh` refuses it (a reuse after the grace ends
        the session)."""
        rt = self.store.get_refresh(token_hash(refresh_token))
        if rt is None:
            raise InvalidGrant("unknown session")
        if rt.used_at is not None:
            self._refuse_reuse(rt, rt.used_at, self.clock(), client_addr)
        try:
            return self.live_session(rt.sid)
        except InvalidToken as exc:
            raise InvalidGrant(exc.detail) from None

    def sweep(self) -> int:
        """End open sessions whose certificate is no longer good; returns how many.

        Cost grows with the number of distinct certificates, not sessions: sessions are
        grouped by certificate, and a status source that can answer in batches is asked
        once for all of them: the embedded CA (``not_good``: one read per 500 serials),
        or a remote CA by its issuing CAs' CRLs (``not_good_on_crls``: one GET per
        issuing CA, RFC 5280 §6.3; each certificate is read from its session once, to
        know its issuing CA and CRL). Only the suspects it names are asked one by one
        (fresh), and their sessions ended; a CRL that cannot be had names none. A source
        that cannot answer in batches is asked per certificate, through the cache."""
        now = self.clock()
        by_serial: dict[str, list[str]] = {}
        for sid, serial in self.store.open_session_serials(now):
            by_serial.setdefault(serial, []).append(sid)
        if not by_serial:
            return 0
        on_crls = getattr(self.status_source, "not_good_on_crls", None)
        batch = getattr(self.status_source, "not_good", None)
        suspects: list[str]
        if on_crls is not None:
            numbers = {int(s, 16): s for s in by_serial}

            def certificate_of(serial: int) -> x509.Certificate | None:
                rec = self.store.get_session(by_serial[numbers[serial]][0])
                return None if rec is None else rec.certificate

            bad = on_crls(list(numbers), certificate_of)
            suspects = [s for n, s in numbers.items() if n in bad]
        elif batch is not None:
            bad = batch([int(s, 16) for s in by_serial])
            suspects = [s for s in by_serial if int(s, 16) in bad]
        else:
            suspects = []
            for serial, sids in by_serial.items():
                rec = self.store.get_session(sids[0])
                if rec is None:
                    continue
                try:
                    if not isinstance(self.cert_status(rec.certificate), Good):
                        suspects.append(serial)
                except EPortError:
                    continue  # status unavailable: decided on the next call
        ended = 0
        for serial in suspects:
            for sid in by_serial[serial]:
                try:
                    self.live_session(sid, fresh_status=True)
                except InvalidToken:
                    ended += 1
                except EPortError:
                    continue
        return ended

    # -- operator roles -----------------------------------------------------------------------

    def grant_roles(
        self,
        caller: Principal,
        operator_id: str,
        roles: frozenset[str],
        known: frozenset[str],
        authorization: str | None = None,
    ) -> str:
        """Replace the roles of the caller's operator ``operator_id``, for its
        ``authorization`` (the dnQualifier of its certificates: the CA's current
        authorization of the id, which ``eport roles grant`` reads from the CA); returns
        the id as stored (:func:`ca.authority.operator_id_of`, the CA's rule for the id).
        The operator need not be enrolled yet. No roles (a clear) need no authorization."""
        if caller.subject_class is not SubjectClass.ENTERPRISE or caller.uscc is None:
            raise Forbidden("only the enterprise's legal-person certificate grants operator roles")
        from ca.authority import operator_id_of

        operator_id = operator_id_of(operator_id)
        unknown = roles - known
        if unknown:  # /auth/v1/roles is no OAuth endpoint: a problem (RFC 9457)
            raise BadRequest(
                f"unknown role {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})"
            )
        if roles and not authorization:
            # For the authorization it is granted to: a grant bound at its first use went
            # to whoever used it first, the next person given a departed operator's id
            # included (roles probe, session 27)
            raise BadRequest(
                "authorization is required: the operator's current authorization, as "
                "GET /ca/v1/operators/authorization?operator_id=ID answers it (eport roles "
                "grant asks it)"
            )
        now = self.clock()
        event = AuthEvent(
            "roles.granted",
            now,
            caller.subject,
            detail={"operator_id": operator_id, "roles": sorted(roles)}
            | ({"authorization": authorization} if authorization else {}),
        )
        self.store.set_roles(
            caller.uscc, operator_id, roles, caller.subject, now, event, authorization
        )
        return operator_id

    def roles_of(self, p: Principal, certificate: x509.Certificate) -> frozenset[str]:
        """The roles the enterprise granted the operator ``p`` (none for any other class):
        those of its grant, if granted to the authorization ``certificate`` (``p``'s)
        names (:func:`ca.policy.authorization_of`; the next person given a
        departed operator's id, or the operators of an enterprise that ceased and applied
        again, have none until granted them); a grant of an earlier release, made before
        grants named their authorization, is bound at its first use by a certificate that
        names one (the store logs ``roles.bound``)."""
        if p.subject_class is not SubjectClass.OPERATOR or not p.uscc or not p.operator_id:
            return frozenset()
        authorization = authorization_of(certificate)
        event = None
        if authorization is not None:
            detail = {"operator_id": p.operator_id, "authorization": authorization}
            event = AuthEvent("roles.bound", self.clock(), p.subject, detail=detail)
        return self.store.get_roles(p.uscc, p.operator_id, authorization, event)

    def signed_principal(self, req: SignedRequest, *, fresh: bool = False) -> Principal:
        self.require_good_caller(req.certificate, fresh=fresh)
        return self.principal_of(req.certificate)

    def principal_of(self, cert: x509.Certificate) -> Principal:
        """:func:`identify` of a validated certificate, remembered per certificate (the
        policies it reads are fixed for the life of the process)."""
        known = self._principals.get(cert)
        if known is None:
            known = identify(cert, self.policies, self.issuing_cas())
            if len(self._principals) >= 4096:
                self._principals.clear()
            self._principals[cert] = known
        return known


def narrowed(granted: tuple[str, ...], requested: str | None, where: str) -> tuple[str, ...]:
    """The scopes a token gets: all ``granted`` (the policies' for the subject there), or,
    when the client asks for fewer (the ``scope`` parameter: RFC 6749 §3.3 and §6, RFC 8693
    §2.1), those, in the policies' order. A scope not granted is ``invalid_scope`` (400):
    the parameter was ignored, so a client asking for less got every scope of the user,
    and one asking for more learned nothing (probe 24)."""
    if requested is None:
        return granted
    asked = requested.split(" ")
    if not requested or "" in asked:
        raise OAuthError(
            "scope must be scope names separated by single spaces (RFC 6749 §3.3)",
            error="invalid_scope",
        )
    missing = sorted(set(asked) - set(granted))
    if missing:
        raise OAuthError(
            f"scope {missing[0][:60]!r} is not granted to {where} (granted: {' '.join(granted)})",
            error="invalid_scope",
        )
    return tuple(g for g in granted if g in asked)


def _status_name(st: CertStatus) -> str:
    """A status that is not good, in words: ``revoked``, ``on hold``, ``unknown``."""
    return type(st).__name__.lower().replace("onhold", "on hold")


def _assertion_leaf(assertion: str) -> x509.Certificate:
    """The certificate in the assertion's ``x5c[0]``; call it once the assertion's
    signature by that certificate's key has been verified."""
    import base64

    from ca.signedreq import unverified_header

    x5c = unverified_header(assertion)["x5c"]
    return x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))


def _assertion_cert_key(assertion: str) -> str | None:
    """The failure-counter key of the certificate in an assertion's x5c (unverified)."""
    import base64

    from ca.signedreq import unverified_header

    try:
        x5c = unverified_header(assertion).get("x5c")
        der = base64.b64decode(x5c[0], validate=True)  # type: ignore[index]
    except Exception:
        return None
    digest = hashlib.sha256(der).digest()
    return "cert:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
