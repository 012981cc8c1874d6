"""A sample e-port web service that signs its users in through the token service's
OpenID Connect provider, with Authlib's Flask client: no E-Port code at all, so it shows
(and the tests prove) that a standard third-party client works.

* Sign-in: the authorization code flow with PKCE S256 and a nonce (Authlib makes the
  verifier, nonce and state, keeps them in the signed Flask session, checks the state on
  return and validates the ID token against the provider's JWKS).
* The profile comes from the UserInfo endpoint.
* Sign-out: RP-initiated logout (Authlib's ``logout_redirect`` with ``id_token_hint``;
  the state is checked on return).
* Back-channel logout (OpenID Connect Back-Channel Logout 1.0): ``POST
  /backchannel-logout`` validates the logout token with joserfc (the JOSE library Authlib
  itself uses) and ends every local session of that ``sid``. Local sessions live on the
  server (the cookie holds only a random id), so they *can* be ended from the back channel.

Configuration (environment, or a mapping passed to ``create_app``):

``EPORT_ISSUER``        the provider's issuer, e.g. ``https://sso.eport.example:8443/auth``
``OIDC_CLIENT_ID``      this service's id in policies/services.toml (``sample-a``)
``PUBLIC_URL``          where browsers reach this service (``https://sample-a.eport.example:8443``)
``SERVICE_NAME``        shown on the page
``CA_BUNDLE``           PEM file of the CA that issued the provider's TLS certificate
``SECRET_KEY``          signs the Flask session cookie (random per start if unset)
``SESSION_COOKIE_NAME`` one per service when several share a host name
``ID_TOKEN_ALG``        the ``id_token_signed_response_alg`` policies/services.toml registers
                        for this client (``ES256``, the default, or ``RS256``): the one
                        algorithm its logout tokens are accepted in (Back-Channel Logout
                        §2.4: they are signed as the client's ID tokens are)

Run: ``flask --app 'examples.web_service.app:create_app()' run --port 5101``.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Flask, Response, abort, redirect, render_template_string, request, session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
REFETCH_SECONDS = 10.0
"""At most one forced JWKS fetch per this many seconds, for logout tokens naming an
unknown key."""


class _Every:
    """``due()`` is true at most once every ``seconds`` (thread-safe)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = -seconds
        self._lock = threading.Lock()

    def due(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.seconds:
                return False
            self._last = now
            return True


SETTINGS = (
    "EPORT_ISSUER",
    "OIDC_CLIENT_ID",
    "PUBLIC_URL",
    "SERVICE_NAME",
    "CA_BUNDLE",
    "SECRET_KEY",
    "SESSION_COOKIE_NAME",
    "ID_TOKEN_ALG",
)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ name }}</title></head>
<body>
<h1 id="service">{{ name }}</h1>
{% if user %}
<p id="who">Signed in as <strong id="user-name">{{ user.name }}</strong>
(<code id="user-sub">{{ user.sub }}</code>)</p>
<p>Your enterprise: <code id="user-uscc">{{ user.uscc or "-" }}</code>;
e-port session <code id="user-sid">{{ user.sid }}</code></p>
<form method="post" action="/logout">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<button type="submit" id="logout">Sign out of the e-port</button>
</form>
{% else %}
<p id="anonymous">You are not signed in.</p>
<p><a id="login" href="/login">Sign in with your e-port certificate</a></p>
{% endif %}
{% if note %}<p id="note">{{ note }}</p>{% endif %}
</body></html>
"""


@dataclass(frozen=True)
class Login:
    sub: str
    name: str
    uscc: str | None
    sid: str
    id_token: str
    at: float


class Logins:
    """Local sessions on the server, so that the back channel can end them. (Several
    processes would keep these in a shared store; a sample keeps them in memory.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Login] = {}
        self._seen_jti: dict[str, float] = {}

    def add(self, login: Login) -> str:
        local = secrets.token_urlsafe(24)
        with self._lock:
            self._by_id[local] = login
        return local

    def get(self, local: str | None) -> Login | None:
        with self._lock:
            return self._by_id.get(local or "")

    def drop(self, local: str | None) -> None:
        with self._lock:
            self._by_id.pop(local or "", None)

    def end(self, *, sid: str | None, sub: str | None) -> int:
        """End the local sessions of an e-port session (or of a subject): how many."""
        with self._lock:
            gone = [
                k
                for k, v in self._by_id.items()
                if (sid is not None and v.sid == sid) or (sid is None and v.sub == sub)
            ]
            for k in gone:
                del self._by_id[k]
            return len(gone)

    def first_use(self, jti: str, exp: float) -> bool:
        """Logout tokens are single use (Back-Channel Logout 1.0 §2.6, step 8)."""
        now = time.time()
        with self._lock:
            self._seen_jti = {k: v for k, v in self._seen_jti.items() if v > now}
            if jti in self._seen_jti:
                return False
            self._seen_jti[jti] = exp
            return True


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        EPORT_ISSUER="https://sso.eport.example:8443/auth",
        OIDC_CLIENT_ID="sample-a",
        PUBLIC_URL="https://sample-a.eport.example:8443",
        SERVICE_NAME="Sample Web Service A",
        SESSION_COOKIE_NAME="sample_session",
    )
    app.config.update({k: os.environ[k] for k in SETTINGS if os.environ.get(k)})
    app.config.update(config or {})
    cfg = app.config
    app.secret_key = cfg.get("SECRET_KEY") or secrets.token_hex(32)
    public = str(cfg["PUBLIC_URL"]).rstrip("/")
    # Secure cookies wherever browsers come over HTTPS; plain HTTP only on the loopback
    # address, for trying it out (OIDC allows http redirect URIs only there).
    where = urlsplit(public)
    loopback = where.scheme == "http" and where.hostname in ("127.0.0.1", "localhost", "::1")
    app.config.update(
        SESSION_COOKIE_SECURE=not loopback,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    issuer = str(cfg["EPORT_ISSUER"]).rstrip("/")
    client_id = str(cfg["OIDC_CLIENT_ID"])
    id_token_alg = str(cfg.get("ID_TOKEN_ALG") or "ES256")
    if id_token_alg not in ("ES256", "RS256"):
        raise ValueError(f"ID_TOKEN_ALG is ES256 or RS256, not {id_token_alg!r}")
    client_kwargs: dict[str, Any] = {
        "scope": "openid profile eport",
        "code_challenge_method": "S256",
        "token_endpoint_auth_method": "none",  # a public client: PKCE, no secret
        "default_timeout": 10,
    }
    if cfg.get("CA_BUNDLE"):
        # requests lets REQUESTS_CA_BUNDLE override a session's own CA bundle unless the
        # session ignores the environment: the configured bundle must win.
        client_kwargs.update(verify=cfg["CA_BUNDLE"], trust_env=False)
    oauth = OAuth(app)
    eport = oauth.register(
        "eport",
        client_id=client_id,
        client_secret=None,
        server_metadata_url=issuer + "/.well-known/openid-configuration",
        client_kwargs=client_kwargs,
    )
    logins = Logins()
    app.extensions["sample.logins"] = logins

    @app.after_request
    def _browser_headers(resp: Response) -> Response:
        # No other site may frame these pages (its sign-out button could be clicked
        # through an overlay: browser probe 24, F7), nor sniff their types.
        resp.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    def show(user: Login | None, note: str | None = None, status: int = 200) -> Response:
        csrf = session.setdefault("csrf", secrets.token_urlsafe(24)) if user else None
        html = render_template_string(
            PAGE, name=cfg["SERVICE_NAME"], user=user, csrf=csrf, note=note
        )
        resp = Response(html, status=status, mimetype="text/html")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.get("/")
    def home() -> Response:
        user = logins.get(session.get("login"))
        if user is None:
            session.pop("login", None)
        return show(user)

    @app.get("/login")
    def login() -> Any:
        return eport.authorize_redirect(public + "/callback")

    @app.get("/callback")
    def callback() -> Any:
        try:
            token = eport.authorize_access_token()
        except OAuthError as exc:  # a state mismatch, an error from the provider, a bad token
            return show(None, f"Sign-in failed: {exc.error}: {exc.description}", 400)
        claims = token["userinfo"]  # the validated ID token's claims
        profile = eport.userinfo(token=token)  # OpenID Connect Core §5.3
        if profile.get("sub") != claims["sub"]:  # §5.3.2: they must be the same subject
            return show(None, "Sign-in failed: UserInfo names another subject", 400)
        local = logins.add(
            Login(
                sub=claims["sub"],
                name=profile.get("name", claims["sub"]),
                uscc=profile.get("uscc"),
                sid=claims["sid"],
                id_token=token["id_token"],
                at=time.time(),
            )
        )
        session.clear()  # drop the sign-in's state; the local session id is new
        session["login"] = local
        return redirect("/")

    @app.post("/logout")
    def logout() -> Any:
        expected = session.get("csrf")
        if not expected or not secrets.compare_digest(
            str(request.form.get("csrf_token", "")), str(expected)
        ):
            abort(403)
        user = logins.get(session.get("login"))
        logins.drop(session.get("login"))
        session.clear()
        if user is None:
            return redirect("/")
        return eport.logout_redirect(
            post_logout_redirect_uri=public + "/signed-out", id_token_hint=user.id_token
        )

    @app.get("/signed-out")
    def signed_out() -> Response:
        try:
            eport.validate_logout_response()
        except OAuthError:
            return show(None, "Signed out here (the provider's answer carried no valid state).")
        return show(None, "You are signed out of the e-port.")

    refetch = _Every(REFETCH_SECONDS)

    @app.post("/backchannel-logout")
    def backchannel_logout() -> Response:
        """Back-Channel Logout 1.0 §2.6: validate the logout token, end the sessions."""
        raw = request.form.get("logout_token", "")
        try:
            claims = _logout_claims(raw, eport, issuer, client_id)
        except (JoseError, ValueError) as exc:
            body = {"error": "invalid_request", "error_description": str(exc)}
            resp = Response(json.dumps(body), status=400, mimetype="application/json")
            resp.headers["Cache-Control"] = "no-store"
            return resp
        ended = logins.end(sid=claims.get("sid"), sub=claims.get("sub"))
        app.logger.info("back-channel logout of %s: %d local sessions", claims.get("sid"), ended)
        resp = Response(status=200)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def _logout_claims(raw: str, client: Any, iss: str, aud: str) -> dict[str, Any]:
        if not raw:
            raise ValueError("logout_token is required")
        # Its kid first (no signature checked yet): a POST of garbage, or of a token naming
        # a key the provider never had, must not make this service fetch the JWKS each
        # time. Only an unknown kid fetches it again (the provider rotated its keys), and
        # at most once every REFETCH_SECONDS.
        kid = extract_compact(raw.encode()).protected.get("kid")
        keys = KeySet.import_key_set(client.fetch_jwk_set())
        if not any(k.kid == kid for k in keys.keys) and refetch.due():
            keys = KeySet.import_key_set(client.fetch_jwk_set(force=True))
        token = jwt.decode(raw, keys, algorithms=[id_token_alg])
        if token.header.get("typ") != "logout+jwt":
            raise ValueError("not a logout token (typ)")
        registry = jwt.JWTClaimsRegistry(
            leeway=60,
            iss={"essential": True, "value": iss},
            aud={"essential": True, "value": aud},
            iat={"essential": True},
            exp={"essential": True},
            jti={"essential": True},
        )
        registry.validate(token.claims)
        claims = dict(token.claims)
        events = claims.get("events")
        if not isinstance(events, dict) or BACKCHANNEL_EVENT not in events:
            raise ValueError("the logout token lacks the back-channel logout event")
        if "nonce" in claims:
            raise ValueError("a logout token never carries a nonce")
        if not claims.get("sid") and not claims.get("sub"):
            raise ValueError("the logout token names neither sid nor sub")
        if not logins.first_use(str(claims["jti"]), float(claims["exp"])):
            raise ValueError("logout token replayed")
        return claims

    return app
