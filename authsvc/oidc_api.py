"""The OpenID Connect provider's HTTP endpoints, on the token service's Flask app.

``/auth/authorize`` (OIDC Core §3.1.2), the ``authorization_code`` grant of the existing
``/auth/token`` (§3.1.3), ``/auth/userinfo`` (§5.3), ``/auth/end_session``
(RP-Initiated Logout 1.0), the provider's members of the token service's metadata
(:func:`with_openid`; ``authsvc/api.py`` serves it at the Discovery 1.0 §4 and RFC 8414 §3
locations), plus the back-channel logout loop. The protocol lives in :mod:`authsvc.oidc`.

The browser authenticates with its client certificate, forwarded by a trusted
TLS-terminating proxy (:mod:`authsvc.proxy`); the session cookie ``__Host-eport-sso`` is
``Secure``, ``HttpOnly``, ``SameSite=Lax`` (Lax, not Strict: a relying party on another
site sends the browser here by a top-level navigation, which must carry the cookie), host
only and path ``/`` (the ``__Host-`` prefix makes browsers enforce all that).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from cryptography import x509
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
)
from werkzeug.exceptions import HTTPException

from authsvc.app import EXTENSION as AUTH_EXTENSION
from authsvc.app import AuthService, db, utcnow
from authsvc.oidc import (
    AuthorizationError,
    AuthorizationRequest,
    InvalidClient,
    InvalidClientRequest,
    LogoutRequestError,
    OpenIDProvider,
    SignedIn,
    discovery,
)
from authsvc.oidc_store import SqlOIDCStore
from authsvc.proxy import client_address, forwarded_certificate
from authsvc.service import OAuthError
from authsvc.tokens import InvalidToken
from ca import i18n
from ca.errors import EPortError, Unauthenticated
from ca.problems import HTML_ERRORS, log_retry
from ca.wellformed import install_safe_head

log = logging.getLogger("eport.auth.oidc")

EXTENSION = "eport.oidc"
COOKIE = "__Host-eport-sso"
SIGNED_OUT = "/portal/signed-out"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""No script at all; forms post only here (a redirect after a logout form is to a
registered URI, which Chromium checks against ``form-action`` too: see :func:`page`)."""

bp = Blueprint("oidc", __name__, url_prefix="/auth", template_folder="templates")


# -- helpers shared with the portal ---------------------------------------------------


def provider() -> OpenIDProvider:
    p: OpenIDProvider = current_app.extensions[EXTENSION]
    return p


def auth() -> AuthService:
    s: AuthService = current_app.extensions[AUTH_EXTENSION]
    return s


def no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


def page(
    template: str, status: int = 200, *, form_action: str | None = None, **context: Any
) -> Response:
    """A server-rendered page with the browser-facing security headers, in the language
    the browser asks for (:func:`page_language`)."""
    language = page_language()
    resp = Response(
        render_template(template, **i18n.page_context(language), **context),
        status=status,
        mimetype="text/html",
    )
    # The same URL answers in English or Chinese: a cache must not give one reader's
    # language to another (RFC 9110 §12.5.5).
    resp.vary.add("Accept-Language")
    resp.headers["Content-Language"] = language
    csp = CSP
    if form_action:
        # Chromium applies form-action to the redirect that answers a form post as well.
        csp = csp.replace("form-action 'self'", f"form-action 'self' {form_action}")
    resp.headers["Content-Security-Policy"] = csp
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    # Not no-referrer: a browser then sends "Origin: null" with our own form posts.
    resp.headers["Referrer-Policy"] = "same-origin"
    return no_store(resp)


def redirect(location: str, code: int = 302) -> Response:
    """A redirect as a :class:`flask.Response` (``Location`` as given, never rebuilt)."""
    resp = Response(status=code)
    resp.headers["Location"] = location
    return resp


def page_language() -> str:
    """The page's language from the request's ``Accept-Language`` (English by default)."""
    return i18n.choose(request.accept_languages)


def translated(text: str, /, **fields: object) -> str:
    """``text``, a fixed English text of a page (:mod:`ca.i18n`'s key), in the page's
    language, fields filled in; a field that is data (a name, an error's detail) stays
    as it is."""
    return i18n.translate(page_language(), text, **fields)


def message(status: int, title: str, detail: str, **context: Any) -> Response:
    return page("portal/message.html", status, title=title, detail=detail, **context)


def presented_certificate() -> x509.Certificate | None:
    """The client certificate the trusted proxy verified and forwarded, if any."""
    return forwarded_certificate(request.headers, request.remote_addr, auth().proxies)


def client_addr() -> str | None:
    """The browser's address (behind a trusted proxy, from its X-Forwarded-For)."""
    return client_address(request.headers, request.remote_addr, auth().proxies)


def current() -> SignedIn | None:
    """The browser's live session from its cookie only (never opens one)."""
    return provider().current(request.cookies.get(COOKIE), None)


def top_level_navigation() -> bool:
    """Whether the browser says this request is a top-level page load (Fetch Metadata:
    ``Sec-Fetch-Dest: document``), or says nothing (a client that sends no fetch
    metadata). An image, script, fetch or frame that another site's page makes in the
    user's name comes without the SSO cookie (SameSite=Lax) but with the client
    certificate the browser already chose for this host: each one opened a session, and
    a hundred of them ended the user's real one (session cap; browser probe 24, F2)."""
    dest = request.headers.get("Sec-Fetch-Dest")
    return dest is None or dest == "document"


def sign_in(req: AuthorizationRequest | None = None) -> SignedIn | None:
    """The browser's live session, or a new one from the forwarded certificate
    (:meth:`authsvc.oidc.OpenIDProvider.authenticate`); the certificate counts only on a
    top-level page load (:func:`top_level_navigation`), so nothing else opens, ends or
    re-authenticates a session.

    Raises :class:`~authsvc.service.InvalidGrant` (and its kin) if the certificate may
    not sign in, :class:`~ca.errors.Unauthenticated` if a certificate header came from an
    untrusted address."""
    presented = presented_certificate()
    if not top_level_navigation():
        presented = None
    return provider().authenticate(request.cookies.get(COOKIE), presented, client_addr(), req)


def set_cookie(resp: Response, signed: SignedIn | None) -> Response:
    if signed is not None and signed.cookie is not None:
        resp.set_cookie(COOKIE, signed.cookie, secure=True, httponly=True, samesite="Lax", path="/")
    return resp


def clear_cookie(resp: Response) -> Response:
    resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return resp


def public_origin() -> str:
    parts = urlsplit(auth().config.public_base_url)
    return f"{parts.scheme}://{parts.netloc}"


def check_form(signed: SignedIn) -> None:
    """A form post must carry the session's CSRF token; a browser's ``Origin``, when
    sent, must be ours (defence in depth). Raises :class:`OAuthError` (403)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != public_origin():
        raise OAuthError(f"a form posted from {origin}", status=403)
    provider().check_csrf(signed, request.form.get("csrf_token"))


def refused_sign_out(exc: OAuthError) -> Response:
    """A sign-out form refused (its CSRF token or origin): the page says why and leads
    back to the portal, whose fresh form signs out. The token changes when the session is
    authenticated again (``prompt=login``, ``max_age``), so a form shown in another tab
    before that is refused (browser probe, F3)."""
    return message(
        403,
        translated("Sign-out refused"),
        translated(
            "{reason}. If you signed in again in another tab since this page was shown, "
            "open the portal and sign out from there.",
            reason=exc.detail,
        ),
        to_portal=True,
    )


def nothing_to_sign_out(target: str | None) -> Response:
    """A sign-out that came with no session to end. With a sign-in cookie whose session
    has ended, the cookie is dropped and the user is signed out. With none at all (a form
    posted from another site carries none: SameSite=Lax), nothing is ended and nothing is
    deleted: deleting the cookie left the session open, every service still signed in,
    and the browser without the cookie that a real sign-out needs (browser probe, F2)."""
    if COOKIE in request.cookies:
        return clear_cookie(no_store(redirect(target or SIGNED_OUT, code=303)))
    if target:
        # end_session's GET (a cookieless POST comes back as one): this browser holds no
        # session, so it is signed out
        return no_store(redirect(target, code=303))
    return no_store(
        message(
            400,
            translated("Nothing to sign out"),
            translated(
                "This browser sent no e-port sign-in with this request, so nothing was ended. "
                "If you signed out in another tab or window, you are signed out. A form sent "
                "from another site also comes without it: to be sure, open the portal; it "
                "shows whether you are signed in and signs you out."
            ),
            to_portal=True,
        )
    )


def log_out(signed: SignedIn, target: str | None) -> Response:
    """End the SSO session everywhere (back-channel logout included) and drop the cookie."""
    p = provider()
    p.end_session(signed.session.sid, "logout", client_addr())
    p.store.delete_browser_session(signed.browser.cookie_hash)
    resp = redirect(target or SIGNED_OUT, code=303)
    return clear_cookie(no_store(resp))


def params() -> dict[str, list[str]]:
    source = request.form if request.method == "POST" else request.args
    return {k: source.getlist(k) for k in source}


def _one(values: Mapping[str, list[str]], name: str) -> str | None:
    got = values.get(name) or []
    if len(got) > 1:
        raise LogoutRequestError(f"{name} is given more than once")
    return got[0] if got and got[0] else None


# -- discovery ------------------------------------------------------------------------


def with_openid(meta: dict[str, Any]) -> dict[str, Any]:
    """The token service's metadata with the provider's members (what is implemented)."""
    iss = str(meta["issuer"])
    scopes = [s for s in meta.get("scopes_supported", [])]
    out = {**meta, **discovery(iss, scopes)}
    grants = list(meta.get("grant_types_supported", []))
    if "authorization_code" not in grants:
        grants.insert(0, "authorization_code")
    out["grant_types_supported"] = grants
    return out


# -- the authorization endpoint -------------------------------------------------------


def as_get() -> Response:
    """A form posted from another site (a relying party's) comes without the SSO cookie
    (SameSite=Lax); the same request as a GET, a top-level navigation, carries it."""
    query = urlencode(list(request.form.items(multi=True)))
    return no_store(redirect(f"{request.path}?{query}", code=303))


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    if request.method == "POST" and COOKIE not in request.cookies:
        # Without the cookie the certificate opened a second session whose cookie
        # replaced the first's, and a later sign-out left the first open with its
        # services signed in (browser probe, F1).
        return as_get()
    p = provider()
    signed: SignedIn | None = None
    try:
        try:
            req = p.authorization_request(params())
        except InvalidClientRequest as exc:
            return message(400, translated("This sign-in request is not valid"), exc.detail)
        try:
            signed = sign_in(req)
        except Unauthenticated as exc:
            # A certificate header this server does not believe (from an address that is
            # not a trusted proxy): the reason stays in its log, never in the relying
            # party's redirect (it named the proxy's address); without prompt=none, the
            # user gets the sign-in page, as with no certificate at all.
            log.warning("authorization request: certificate not accepted: %s", exc.detail)
            if "none" in req.prompt:
                raise req.error(
                    "login_required", "the e-port certificate was not accepted"
                ) from None
            return message(
                401,
                translated("Sign in with your e-port certificate"),
                translated(
                    "{client} asks you to sign in. Present your e-port certificate "
                    "(smart card or key file) to this site and try again.",
                    client=req.client.name,
                ),
            )
        except OAuthError as exc:  # the certificate may not sign in (revoked, held…)
            if "none" in req.prompt:
                # Why (the certificate's status, its agency…) is the user's, and in the
                # login.failed event; the relying party learns only that no login happened.
                raise req.error("login_required", "the e-port certificate cannot sign in") from None
            return message(
                exc.status if exc.status != 400 else 403,
                translated("Your certificate cannot sign in"),
                exc.detail,
            )
        if signed is None:
            if "none" in req.prompt:
                if p.current(request.cookies.get(COOKIE), None) is not None:
                    raise req.error(
                        "login_required",
                        "the e-port session is older than max_age: a fresh certificate "
                        "login is needed",
                    )
                raise req.error("login_required", "no e-port session and no certificate")
            return message(
                401,
                translated("Sign in with your e-port certificate"),
                translated(
                    "{client} asks you to sign in. Present your e-port certificate "
                    "(smart card or key file) to this site and try again.",
                    client=req.client.name,
                ),
            )
        code = p.issue_code(req, signed)
        resp = redirect(p.success_redirect(req, code), code=302)
    except AuthorizationError as exc:
        resp = redirect(p.error_redirect(exc), code=302)
    resp.headers["Referrer-Policy"] = "no-referrer"
    return set_cookie(no_store(resp), signed)


# -- the token endpoint's authorization_code grant ------------------------------------


def authorization_code_grant() -> Response:
    """RFC 6749 §4.1.3 at ``/auth/token`` (called by :func:`authsvc.api.token`)."""
    form = request.form
    try:
        if request.authorization is not None or "client_secret" in form:
            raise InvalidClient(
                "client authentication here is 'none' (public clients with PKCE): "
                "send client_id and code_verifier, no secret"
            )
        for name in ("code", "client_id", "redirect_uri", "code_verifier"):
            if len(form.getlist(name)) > 1:
                raise OAuthError(f"{name} is given more than once")
        code = form.get("code")
        if not code:
            raise OAuthError("code is required")
        out = provider().redeem(
            code=code,
            client_id=form.get("client_id"),
            redirect_uri=form.get("redirect_uri"),
            code_verifier=form.get("code_verifier"),
            client_addr=client_addr(),
        )
    except InvalidClient as exc:
        # RFC 6749 §5.2: a 401 only for a client that tried the Authorization header, with
        # the challenge RFC 9110 §15.5.2 requires; a public client that did not is a 400.
        # The body as every other OAuth error writes it (authsvc.app's handler).
        tried = request.authorization is not None
        resp = Response(
            json.dumps(exc.oauth()), status=401 if tried else 400, mimetype="application/json"
        )
        if tried:
            resp.headers["WWW-Authenticate"] = 'Basic realm="eport"'
        return no_store(resp)
    return no_store(
        jsonify(
            {
                "access_token": out.access_token,
                "token_type": "Bearer",
                "expires_in": out.expires_in,
                "scope": out.scope,
                "id_token": out.id_token,
            }
        )
    )


# -- UserInfo -------------------------------------------------------------------------


@bp.route("/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    """OIDC Core §5.3, the access token as a Bearer token (RFC 6750 §2.1)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        resp = Response(status=401, mimetype="text/plain")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="eport"'
        return no_store(resp)
    try:
        claims = provider().userinfo(token.strip())
    except (InvalidToken, EPortError) as exc:
        resp = Response(status=401, mimetype="text/plain")
        resp.headers["WWW-Authenticate"] = (
            f'Bearer realm="eport", error="invalid_token", '
            f'error_description="{_challenge_text(exc.detail)}"'
        )
        return no_store(resp)
    return no_store(jsonify(claims))


def _challenge_text(text: str) -> str:
    """``text`` as an RFC 6750 §3 ``error_description``: printable ASCII but ``"`` and ``\\``."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in text)[:200]


# -- RP-Initiated Logout --------------------------------------------------------------


@bp.route("/end_session", methods=["GET", "POST"])
def end_session() -> Response:
    """RP-Initiated Logout 1.0 §2. A valid ``id_token_hint`` of this browser's session
    logs out at once; otherwise the user confirms with a form (logout CSRF).

    A POST without the SSO cookie (a relying party's form on another site: SameSite=Lax)
    is sent again as a GET, which carries it: answered from the POST, the browser went to
    the relying party's signed-out page while its session, and every other service, stayed
    signed in (browser probe 24, F1)."""
    if request.method == "POST" and COOKIE not in request.cookies:
        return as_get()
    p = provider()
    values = params()
    try:
        hint_raw = _one(values, "id_token_hint")
        client_id = _one(values, "client_id")
        target_uri = _one(values, "post_logout_redirect_uri")
        state = _one(values, "state")
        hint = p.verify_id_token_hint(hint_raw) if hint_raw else None
        target = p.logout_target(
            client_id=client_id,
            hint=hint,
            post_logout_redirect_uri=target_uri,
            state=state,
        )
    except LogoutRequestError as exc:
        return message(400, translated("This sign-out request is not valid"), exc.detail)
    signed = current()
    if signed is None:
        return nothing_to_sign_out(target)
    if hint is not None and hint.get("sid") == signed.session.sid:
        return log_out(signed, target)
    return page(
        "portal/confirm_logout.html",
        signed=signed,
        client_id=client_id or (hint or {}).get("aud"),
        post_logout_redirect_uri=target_uri,
        state=state,
        form_action=_origin_of(target),
    )


@bp.post("/end_session/confirm")
def end_session_confirm() -> Response:
    p = provider()
    signed = current()
    if signed is None:
        return nothing_to_sign_out(None)
    try:
        check_form(signed)
    except OAuthError as exc:
        return refused_sign_out(exc)
    values = params()
    try:
        target = p.logout_target(
            client_id=_one(values, "client_id"),
            hint=None,
            post_logout_redirect_uri=_one(values, "post_logout_redirect_uri"),
            state=_one(values, "state"),
        )
    except LogoutRequestError as exc:
        return message(400, translated("This sign-out request is not valid"), exc.detail)
    return log_out(signed, target)


def _origin_of(uri: str | None) -> str | None:
    if not uri:
        return None
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"


# -- wiring ---------------------------------------------------------------------------


def _post(url: str, form: Mapping[str, str], timeout: float) -> int:
    r = requests.post(url, data=dict(form), timeout=timeout, allow_redirects=False)
    return r.status_code


BROWSER_PATHS = ("/auth/authorize", "/auth/end_session", "/auth/end_session/confirm")
"""The token service's endpoints a person's browser is sent to (the portal's besides)."""


def browser_error_page(err: Any) -> Response | None:
    """A page, not problem+json, for an error on a path a person's browser opens (the
    portal, sign-in, sign-out): an unknown page, a method the page does not take, a NUL in
    a parameter, a certificate header the proxy sent unreadable. These showed raw JSON,
    which told an operator where the token service's endpoints are listed (browser probe
    24, F4). None elsewhere: API clients keep problem+json."""
    path = request.path
    if not (path == "/portal" or path.startswith("/portal/") or path in BROWSER_PATHS):
        return None
    if path.startswith("/portal/static/"):
        return None
    if isinstance(err, HTTPException):
        status = int(err.code or 500)
        if status == 404:
            answer = message(
                404,
                translated("Page not found"),
                translated(
                    "There is no such page here. The portal lists the services you can use."
                ),
                to_portal=True,
            )
        elif status == 405:
            answer = message(
                405,
                translated("Not a page to open"),
                translated("This address is not opened this way."),
                to_portal=True,
            )
            allowed = getattr(err, "valid_methods", None)
            if allowed:  # RFC 9110 §15.5.6
                answer.headers["Allow"] = ", ".join(sorted(allowed))
        else:
            return None
        return answer
    if isinstance(err, EPortError) and err.status == 400:
        return message(400, translated("This request is not valid"), err.detail, to_portal=True)
    return None


ACTING_GETS = frozenset({"oidc.authorize", "oidc.end_session", "portal.index"})
"""GET views that act (sign in, make a code, sign out): a HEAD on them does nothing."""


def init_app(app: Flask) -> OpenIDProvider:
    """Create the provider on the app's token service, register its blueprints (and the
    portal's), and start the back-channel logout loop."""
    from authsvc.portal import bp as portal_bp

    s: AuthService = app.extensions[AUTH_EXTENSION]
    store = SqlOIDCStore(
        lambda: db.session,  # type: ignore[arg-type,return-value]
        getattr(s.store, "check_schema", lambda: None),  # the token service's schema fence
    )
    p = OpenIDProvider(tokens=s.tokens, store=store, clock=utcnow, poster=_post)
    app.extensions[EXTENSION] = p
    app.register_blueprint(bp)
    app.register_blueprint(portal_bp)
    install_safe_head(app, ACTING_GETS)
    app.extensions[HTML_ERRORS] = browser_error_page
    if s.config.sweep_seconds > 0:
        _start_delivery(app, p, min(s.config.sweep_seconds, 1.0))
    return p


def _start_delivery(app: Flask, p: OpenIDProvider, every: float) -> None:
    """Back-channel logouts for sessions that ended without a browser logout (a revoked
    or held certificate found by the sweep, a CLI logout, refresh-token theft, expiry)."""

    def loop() -> None:
        stop = threading.Event()
        ticks = 0
        while not stop.wait(every):
            ticks += 1
            try:
                with app.app_context():
                    p.deliver_logouts()
                    if ticks % 300 == 0:
                        p.cleanup()
            except Exception:
                log_retry("back-channel logout delivery failed; will retry", log)

    threading.Thread(target=loop, name="oidc-backchannel", daemon=True).start()
