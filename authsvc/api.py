"""The token service's HTTP endpoints.

OAuth endpoints answer errors as RFC 6749 §5.2 ``{error, error_description}`` with
``Cache-Control: no-store``; the others as RFC 9457 problem documents.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from authsvc.app import EXTENSION, AuthService, utcnow
from authsvc.fastpath import gateway_answer, mtls_caller
from authsvc.keys import JWKS_MAX_AGE
from authsvc.oidc_api import authorization_code_grant, with_openid
from authsvc.principal import Principal
from authsvc.proxy import TrustedProxies, client_address, forwarded_certificate
from authsvc.service import (
    ACCESS_TOKEN_TYPE,
    JWT_BEARER,
    TOKEN_EXCHANGE,
    InvalidGrant,
    Login,
    Minted,
    OAuthError,
    SessionRecord,
)
from authsvc.tokens import InvalidToken, jose_header
from ca.errors import (
    BadRequest,
    EPortError,
    Forbidden,
    PayloadTooLarge,
    Unauthenticated,
    database_unavailable_cause,
)
from ca.policy import PRINTABLE_STRING
from ca.problems import (
    DATABASE_UNAVAILABLE_DETAIL,
    RETRY_AFTER_SECONDS,
    log_database_unavailable,
    request_instance,
)
from ca.signedreq import SCHEME, verify_http_request
from ca.wellformed import int_arg, json_object, only, refuse_non_json

bp = Blueprint("auth", __name__, url_prefix="/auth")
well_known = Blueprint("well_known", __name__)


@bp.before_request
def _keep_raw_body() -> None:
    # A signed request's bsh covers the exact body bytes; read and cache them before
    # form parsing would consume the stream.
    if request.method == "POST":
        request.get_data(cache=True, parse_form_data=False)


def svc() -> AuthService:
    service: AuthService = current_app.extensions[EXTENSION]
    return service


def no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


def form(name: str, *, required: bool = True) -> str | None:
    """The form parameter ``name``; RFC 6749 §3.1: parameters "MUST NOT be included more
    than once" (refused as the authorization_code grant refuses them: two parsers that
    disagree on which of two values counts make parameter pollution possible)."""
    if request.mimetype != "application/x-www-form-urlencoded":
        raise OAuthError("use application/x-www-form-urlencoded (RFC 6749 §4.1.3)")
    values = request.form.getlist(name)
    if len(values) > 1:
        raise OAuthError(f"{name} is given more than once")
    value = values[0] if values else None
    if required and not value:
        raise OAuthError(f"{name} is required")
    return value


OAUTH_ENDPOINTS = frozenset(
    {
        "auth.token",
        "auth.login_mtls",
        "auth.session_info",
        "auth.logout",
        "auth.revoke",
        "auth.introspect",
    }
)
"""The views that answer every client error as an RFC 6749 §5.2 document (their own
:class:`OAuthError`, the rest through :func:`as_oauth`), with ``Cache-Control:
no-store``; a body over the limit too (``authsvc.app``)."""


def as_oauth(err: EPortError) -> EPortError:
    """``err`` as an OAuth endpoint answers it (RFC 6749 §5.2): a caller whose
    authentication failed (a missing, bad or untrusted signed request or forwarded
    certificate) is 401 ``invalid_client``, with the same ``WWW-Authenticate``; an
    authenticated caller that may not use this grant (not a registered service) is
    ``unauthorized_client``; a request that cannot be read is ``invalid_request`` (413
    for a body over the limit); a token that went bad meanwhile is ``invalid_grant``.
    Anything else (a server-side failure) stays as it is."""
    out: OAuthError
    if isinstance(err, OAuthError):
        return err
    if isinstance(err, Unauthenticated):
        out = OAuthError(err.detail, error="invalid_client", status=401)
        out.challenge = err.challenge
    elif isinstance(err, Forbidden):
        out = OAuthError(err.detail, error="unauthorized_client")
    elif isinstance(err, PayloadTooLarge):
        out = OAuthError(err.detail, status=413)
    elif isinstance(err, BadRequest):
        out = OAuthError(err.detail)
    elif isinstance(err, InvalidToken):
        out = InvalidGrant(err.detail)
    else:
        return err
    return out


def oauth_endpoint(view: Callable[[], Response]) -> Callable[[], Response]:
    """A view of :data:`OAUTH_ENDPOINTS`: its errors go out through :func:`as_oauth`."""

    @functools.wraps(view)
    def answer() -> Response:
        try:
            return view()
        except EPortError as err:
            mapped = as_oauth(err)
            if mapped is err:
                raise
            raise mapped from None
        except Exception as exc:
            down = database_unavailable_cause(exc)
            if down is None:
                raise
            # RFC 6749 clients read {error, error_description}, not a problem document
            log_database_unavailable(request.method, request_instance(request.environ), down)
            unavailable = OAuthError(
                DATABASE_UNAVAILABLE_DETAIL, error="temporarily_unavailable", status=503
            )
            unavailable.retry_after = RETRY_AFTER_SECONDS
            raise unavailable from None

    return answer


def refusal(detail: str) -> EPortError:
    """The error for input refused at the edge (:func:`ca.wellformed.install_text_check`):
    an OAuth ``invalid_request`` at an OAuth endpoint, else a 400 problem."""
    if request.endpoint in OAUTH_ENDPOINTS:
        return OAuthError(detail)
    return BadRequest(detail)


def client_addr() -> str | None:
    """The client's address (behind a trusted proxy, from its X-Forwarded-For)."""
    return client_address(request.headers, request.remote_addr, proxies())


def proxies() -> TrustedProxies:
    return svc().proxies


def caller_principal(*, fresh: bool = False) -> Principal:
    """A registered party identified by a signed request or a trusted proxy's client cert;
    ``fresh``: its certificate's status asked of the CA now (a write that lasts)."""
    s = svc()
    mtls = mtls_caller(
        s.tokens, s.trust, request.headers, request.remote_addr, proxies(), utcnow(), fresh=fresh
    )
    if mtls is not None:
        return mtls
    scheme, _, signed = (request.headers.get("Authorization") or "").partition(" ")
    if scheme == SCHEME and signed.strip():
        try:
            jose_header(signed.strip())  # refused in plain words before the parsers speak
        except ValueError as exc:
            raise Unauthenticated(f"malformed signed request: {exc}") from None
    req = verify_http_request(
        request,
        trust=s.trust,
        replay=s.store,
        now=utcnow(),
        leeway=datetime.timedelta(seconds=s.config.leeway_seconds),
    )
    return s.tokens.signed_principal(req, fresh=fresh)


def session_json(rec: SessionRecord) -> dict[str, Any]:
    p = rec.principal
    return {
        "sid": rec.sid,
        "subject": p.subject,
        "subject_class": p.subject_class.value,
        "name": p.name,
        "uscc": p.uscc,
        "operator_id": p.operator_id,
        "agency_id": p.agency_id,
        "certificate_serial": rec.cert_serial,
        "x5t#S256": rec.cert_sha256,
        "created_at": _iso(rec.created_at),
        "expires_at": _iso(rec.expires_at),
    }


def _iso(dt: datetime.datetime) -> str:
    return dt.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def login_json(login: Login) -> dict[str, Any]:
    expires_in = int((login.session.expires_at - utcnow()).total_seconds())
    return {
        "token_type": "N_A",
        "refresh_token": login.refresh_token,
        "refresh_token_expires_in": expires_in,
        "session": session_json(login.session),
    }


def minted_json(m: Minted, issued_type: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "access_token": m.access_token,
        "token_type": "Bearer",
        "expires_in": m.expires_in,
        "scope": m.scope,
        "aud": m.audience,
    }
    if m.refresh_token:
        out["refresh_token"] = m.refresh_token
    if issued_type:
        out["issued_token_type"] = issued_type
    return out


# -- discovery and keys -------------------------------------------------------------------


def metadata() -> dict[str, Any]:
    iss = svc().config.issuer
    meta = {
        "issuer": iss,
        "token_endpoint": iss + "/token",
        "jwks_uri": iss + "/jwks.json",
        "introspection_endpoint": iss + "/introspect",
        "revocation_endpoint": iss + "/revoke",
        "grant_types_supported": [JWT_BEARER, "refresh_token", TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none", "tls_client_auth"],
        "introspection_endpoint_auth_methods_supported": [
            "tls_client_auth",
            "eport_signed_request",
        ],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "ES384", "EdDSA", "RS256"],
        "access_token_signing_alg_values_supported": ["ES256"],
        "tls_client_certificate_bound_access_tokens": True,
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "scopes_supported": sorted({sc for s in svc().access.services for sc in s.scopes}),
    }
    return with_openid(meta)  # the OpenID Connect provider's endpoints and features


# RFC 8414 §3.1 puts the metadata of issuer https://host/auth at
# /.well-known/oauth-authorization-server/auth; OpenID Connect Discovery 1.0 §4 at
# /auth/.well-known/openid-configuration. Both, and the host-root forms, are served.
@well_known.get("/.well-known/oauth-authorization-server")
@well_known.get("/.well-known/oauth-authorization-server/auth")
@bp.get("/.well-known/oauth-authorization-server")
def oauth_metadata() -> Response:
    return jsonify(metadata())


@well_known.get("/.well-known/openid-configuration")
@well_known.get("/.well-known/openid-configuration/auth")
@bp.get("/.well-known/openid-configuration")
def openid_configuration() -> Response:
    return jsonify(metadata())


@bp.get("/health")
def health() -> Response:
    """Liveness (200 while the process answers) with what a monitor of the token service
    needs, above all when it runs apart from the CA: its database's state, how it asks
    certificate status, the CA files it trusts as loaded (their generation, the issuing
    CAs, the end of the copied root CRL, which nothing renews on this host but a copy
    from the CA's). With ``?ready``: 503 while its database cannot be used."""
    from ca import hierarchy

    s = svc()
    out: dict[str, Any] = {"status": "ok", "database": "ok"}
    try:
        s.store.ping()
    except Exception as exc:
        if database_unavailable_cause(exc) is None:
            raise
        out.update(status="degraded", database="unavailable")
    out["status_mode"] = s.config.status_mode
    warnings: list[str] = []
    if s.live is not None:
        material = s.live.current()
        out["trust"] = {
            "generation": material.generation or None,
            "issuing_cas": len(material.anchors.intermediates),
            "revoked_issuing_cas": len(material.revoked),
        }
        now = datetime.datetime.now(datetime.UTC)
        # the root CRL of the trust loaded (a file being copied is not it); its end, and
        # the notice as it nears, in words with no path (this answer is public)
        ends = hierarchy.root_crl_next_update(material.root_crl)
        out["trust"]["root_crl_next_update"] = f"{ends:%Y-%m-%dT%H:%M:%SZ}" if ends else None
        notice = hierarchy.root_crl_notice(material.root_crl, now, dev=s.config.dev)
        if notice is not None:
            warnings.append(notice)
        responders = getattr(s.live.status_for, "responders", None)
        if responders is not None:  # status by OCSP: can the CA be asked now?
            failing = responders.failing()
            out["ca_status"] = "failing" if failing else "ok"
            if failing:
                out["status"] = "degraded"
                warnings.append(
                    "the CA's OCSP responder or CRL did not answer when last asked: logins, "
                    "refreshes and validations that need a certificate's status answer 503 "
                    "until it does"
                )
    if warnings:
        out["warnings"] = warnings
    resp = jsonify(out)
    resp.headers["Cache-Control"] = "no-store"
    if "ready" in request.args and out["database"] != "ok":
        resp.status_code = 503
        resp.headers["Retry-After"] = "5"
    return resp


@bp.get("/jwks.json")
def jwks() -> Response:
    resp = jsonify(svc().tokens.keys.jwks())
    resp.cache_control.public = True
    resp.cache_control.max_age = int(JWKS_MAX_AGE.total_seconds())
    return resp


# -- the token endpoint -------------------------------------------------------------------


@bp.post("/token")
@oauth_endpoint
def token() -> Response:
    grant = form("grant_type")
    s = svc()
    scope = form("scope", required=False)  # fewer scopes than the user has (narrowed)
    if grant == JWT_BEARER:
        service = form("audience", required=False) or None
        if scope is not None and service is None:
            raise OAuthError("scope needs an audience: the service whose scopes they are")
        login = s.tokens.login_assertion(form("assertion") or "", client_addr(), service, scope)
        out = login_json(login)
        if login.minted is not None:
            out.update(minted_json(login.minted))
        return no_store(jsonify(out))
    if grant == "refresh_token":
        audience, resource = form("audience", required=False), form("resource", required=False)
        if audience and resource and audience != resource:
            # one was taken and the other dropped without a word (fuzzing probe 24)
            raise OAuthError(
                f"audience {audience[:60]!r} and resource {resource[:60]!r} name two "
                "services: give one",
                error="invalid_target",
            )
        service = audience or resource
        if not service:
            raise OAuthError("audience (the service id) is required", error="invalid_target")
        minted = s.tokens.refresh(form("refresh_token") or "", service, client_addr(), scope)
        return no_store(jsonify(minted_json(minted)))
    if grant == TOKEN_EXCHANGE:
        caller = caller_principal()
        if form("subject_token_type") != ACCESS_TOKEN_TYPE:
            raise OAuthError(f"subject_token_type must be {ACCESS_TOKEN_TYPE}")
        if form("actor_token", required=False) or form("actor_token_type", required=False):
            # RFC 8693 §2.1: the actor here is the calling service, named by its own
            # certificate; an actor token was ignored without a word (token probe 24)
            raise OAuthError(
                "actor_token is not supported: the calling service's certificate names the "
                "actor (act.sub)"
            )
        target = form("audience") or ""
        resource = form("resource", required=False)
        if resource and resource != target:
            raise OAuthError(
                f"resource {resource[:60]!r} and audience {target[:60]!r} name two "
                "services: give the service id as audience",
                error="invalid_target",
            )
        minted = s.tokens.exchange(caller, form("subject_token") or "", target, scope)
        return no_store(jsonify(minted_json(minted, ACCESS_TOKEN_TYPE)))
    if grant == "authorization_code":
        return authorization_code_grant()  # OpenID Connect (authsvc/oidc_api.py)
    raise OAuthError(f"unsupported grant_type {grant!r}", error="unsupported_grant_type")


@bp.post("/login/mtls")
@oauth_endpoint
def login_mtls() -> Response:
    """Sign in with the client certificate a trusted TLS proxy verified and forwarded."""
    cert = forwarded_certificate(request.headers, request.remote_addr, proxies())
    if cert is None:
        raise OAuthError(
            "no client certificate was forwarded by a trusted proxy",
            error="invalid_client",
            status=401,
        )
    login = svc().tokens.login_certificate(cert, client_addr())
    return no_store(jsonify(login_json(login)))


@bp.post("/session")
@oauth_endpoint
def session_info() -> Response:
    """The session a refresh token belongs to (``eport whoami``); nothing is rotated."""
    rec = svc().tokens.session_of_refresh(form("refresh_token") or "", client_addr())
    return no_store(jsonify(session_json(rec)))


@bp.post("/logout")
@oauth_endpoint
def logout() -> Response:
    """End the SSO session everywhere: its tokens stop validating at once."""
    ended = svc().tokens.logout(form("refresh_token") or "", client_addr())
    return no_store(jsonify({"ended": ended}))


@bp.post("/revoke")
@oauth_endpoint
def revoke() -> Response:
    """RFC 7009 §2.1; §2.2: the answer is 200 whether or not the token was known."""
    svc().tokens.revoke(form("token") or "", form("token_type_hint", required=False), client_addr())
    resp = Response(status=200)
    del resp.headers["Content-Type"]  # no body, so no type (Werkzeug's default is HTML)
    return no_store(resp)


# -- validation for services --------------------------------------------------------------


@bp.post("/introspect")
@oauth_endpoint
def introspect() -> Response:
    """RFC 7662, for a registered service authenticated by its own certificate."""
    try:
        caller = caller_principal()
        result = svc().tokens.introspect(form("token") or "", caller)
    except (Unauthenticated, Forbidden) as exc:
        # RFC 7662 §2.3 / RFC 6749 §5.2: a caller that is not a registered service (401,
        # with the scheme services authenticate with).
        err = OAuthError(exc.detail, error="invalid_client", status=401)
        err.challenge = Unauthenticated.challenge
        raise err from None
    return no_store(jsonify(result))


@bp.get("/validate")
def validate() -> Response:
    """For a gateway's sub-request (nginx ``auth_request``); see :mod:`authsvc.fastpath`.
    GET is answered by the gateway's WSGI fast path before it gets here; HEAD and any
    mount without the fast path come here for the same decision."""
    s = svc()
    answer = gateway_answer(s.tokens, s.access, request.headers, request.remote_addr, proxies())
    resp = Response(status=answer.status, mimetype="text/plain")  # as the fast path's GET
    for name, value in answer.headers:
        resp.headers[name] = value
    return resp


# -- enterprise and auditors --------------------------------------------------------------


@bp.post("/v1/roles")
def grant_roles() -> Response:
    """The enterprise's legal person grants roles to one of its operators (signed)."""
    raw = request.get_data(cache=True)
    refuse_non_json(request.mimetype, raw)  # 415 before the signature: its jti unspent
    caller = caller_principal(fresh=True)
    # 400: not I-JSON, NUL, a lone surrogate; a member it does not read (fuzzing probe 24)
    data = only(json_object(raw), "a role grant", "operator_id", "roles", "authorization")
    op = data.get("operator_id")
    roles = data.get("roles")
    authorization = data.get("authorization")
    if (
        not isinstance(op, str)
        or not op
        or not isinstance(roles, list)
        or not all(isinstance(r, str) for r in roles)
    ):
        raise BadRequest("operator_id (string) and roles (list of strings) are required")
    if authorization is not None and (
        not isinstance(authorization, str)
        or len(authorization) > 64
        or not PRINTABLE_STRING.fullmatch(authorization)
    ):
        # a dnQualifier: PrintableString, within the column (200 characters answered 500 on
        # PostgreSQL: review, session 27)
        raise BadRequest(
            "authorization must be an operator certificate's dnQualifier (1 to 64 of "
            "A-Z a-z 0-9 space and '()+,-./:=?), as GET /ca/v1/operators/authorization names it"
        )
    known = frozenset(r.id for r in svc().access.roles)
    bound = authorization if roles else None
    stored = svc().tokens.grant_roles(caller, op, frozenset(roles), known, bound)
    doc = {"uscc": caller.uscc, "operator_id": stored, "roles": sorted(set(roles))}
    if bound is not None:
        doc["authorization"] = bound
    return jsonify(doc)


@bp.get("/v1/events")
def events() -> Response:
    """Logins, failures, exchanges, revocations and logouts: auditors and RA officers see
    all; anyone else only their own. Paged by ``after`` (the id of the last event of the
    previous page): no committed event is skipped (:meth:`SqlAuthStore.events`)."""
    from ca.policy import SubjectClass

    caller = caller_principal()
    subject = request.args.get("subject")
    if caller.subject_class not in (SubjectClass.AUDITOR, SubjectClass.AGENCY):
        subject = caller.subject
    # ASCII digits, as the CA's listings read them (a full-width "１" was taken as 1);
    # a limit outside 1-1000 is taken as the nearer end (docs/token-service.md), and
    # after stays below 2**63, the database's integers (past them, a driver error)
    limit = min(max(int_arg("limit", 100, -(2**63), 2**63 - 1), 1), 1000)
    after = max(int_arg("after", 0, -(2**63), 2**63 - 1), 0)
    return jsonify({"events": svc().store.events(subject=subject, limit=limit, after_id=after)})
