"""The OpenID Connect provider against a real e-port server: the protocol, its attacks, and
two independent client libraries.

The server trusts 127.0.0.1 as its TLS-terminating proxy, so a test plays the browser
behind that proxy: it forwards the operator's certificate in ``X-SSL-Client-Cert`` (what
nginx's ``$ssl_client_escaped_cert`` carries) and sends the SSO cookie by hand (it is
``Secure``, and these requests go to the server behind where TLS would end). The real
browser, nginx and TLS are in ``test_browser_sso.py``.

Relying parties: the sample web service (``examples/web_service``, Authlib's Flask client)
as ``sample-a``, a raw back-channel receiver as ``sample-b``, and requests-oauthlib with
joserfc as the second independent client.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
import requests
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from tests.conftest import REPO, Server, free_port, start_server, stop
from tests.helpers import creds, enroll_enterprise, enroll_operator, jrun, serial_of

COOKIE = "__Host-eport-sso"
PUBLIC_PORT = 8443  # the sample deployment's port in policies/services.toml
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
BOUND = 5.0  # the token service's documented revocation bound, seconds


def write_policies(
    dest: Path, *, https_port: int = PUBLIC_PORT, backchannel: dict[str, str] | None = None
) -> Path:
    """A copy of ``policies/`` with the sample services' ports and back-channel URIs set."""
    shutil.copytree(REPO / "policies", dest)
    services = dest / "services.toml"
    text_ = services.read_text()
    if https_port != PUBLIC_PORT:
        text_ = text_.replace(f".eport.example:{PUBLIC_PORT}/", f".eport.example:{https_port}/")
    for client, uri in (backchannel or {}).items():
        port = {"sample-a": 5101, "sample-b": 5102}[client]
        text_ = text_.replace(f"http://127.0.0.1:{port}/backchannel-logout", uri)
    services.write_text(text_)
    return dest


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def redirect_uri(client: str, port: int = PUBLIC_PORT) -> str:
    return f"https://{client}.eport.example:{port}/callback"


class Receiver:
    """A relying party's back-channel endpoint that records what it is sent."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, list[str]]]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                outer.posts.append((self.path, parse_qs(body)))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tokens(self) -> list[str]:
        return [form["logout_token"][0] for _, form in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Agent:
    """A browserless user agent behind the trusted proxy: the certificate header and the
    SSO cookie, sent by hand."""

    def __init__(self, server: Server, cert_pem: str | None) -> None:
        self.server = server
        self.cert_pem = cert_pem
        self.cookie: str | None = None
        self.set_cookies: list[str] = []

    def headers(self, *, cert: bool = True) -> dict[str, str]:
        h: dict[str, str] = {}
        if self.cookie:
            h["Cookie"] = f"{COOKIE}={self.cookie}"
        if cert and self.cert_pem:
            h["X-SSL-Client-Cert"] = quote(self.cert_pem)
        return h

    def _keep(self, r: requests.Response) -> requests.Response:
        for raw in r.raw.headers.getlist("Set-Cookie"):
            self.set_cookies.append(raw)
            name, _, rest = raw.partition("=")
            if name == COOKIE:
                value = rest.split(";", 1)[0]
                self.cookie = value or None
        return r

    def get(self, url: str, *, cert: bool = True, **params: str) -> requests.Response:
        if not url.startswith("http"):
            url = self.server.url + url
        r = requests.get(
            url, params=params, headers=self.headers(cert=cert), allow_redirects=False, timeout=10
        )
        return self._keep(r)

    def post(
        self, path: str, data: dict[str, str], *, cert: bool = True, **headers: str
    ) -> requests.Response:
        r = requests.post(
            self.server.url + path,
            data=data,
            headers={**self.headers(cert=cert), **headers},
            allow_redirects=False,
            timeout=10,
        )
        return self._keep(r)


@dataclass
class Flow:
    """One authorization request and its answer."""

    client: str
    verifier: str
    params: dict[str, str]
    response: requests.Response
    query: dict[str, list[str]] = field(default_factory=dict)

    @property
    def code(self) -> str:
        return self.query["code"][0]


def authorize(
    agent: Agent, client: str = "sample-a", *, cert: bool = True, **overrides: str
) -> Flow:
    verifier, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": client,
        "redirect_uri": redirect_uri(client),
        "scope": "openid profile eport",
        "state": secrets.token_urlsafe(12),
        "nonce": secrets.token_urlsafe(12),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    params = {k: v for k, v in params.items() if v != "-"}
    r = agent.get("/auth/authorize", cert=cert, **params)
    flow = Flow(client, verifier, params, r)
    if r.status_code == 302:
        flow.query = parse_qs(urlsplit(r.headers["Location"]).query)
    return flow


def redeem(server: Server, flow: Flow, **overrides: str) -> requests.Response:
    data = {
        "grant_type": "authorization_code",
        "code": flow.code,
        "client_id": flow.client,
        "redirect_uri": flow.params["redirect_uri"],
        "code_verifier": flow.verifier,
    }
    data.update(overrides)
    data = {k: v for k, v in data.items() if v != "-"}
    return requests.post(server.url + "/auth/token", data=data, timeout=10)


def validate(server: Server, token: str, service: str = "sample-a") -> int:
    r = requests.get(
        server.url + "/auth/validate",
        headers={"Authorization": f"Bearer {token}", "X-Eport-Service": service},
        timeout=10,
    )
    return r.status_code


def keyset(server: Server) -> KeySet:
    return KeySet.import_key_set(requests.get(server.url + "/auth/jwks.json", timeout=10).json())


def verify_jwt(server: Server, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a token of ours, checked with joserfc (not the server's PyJWT)."""
    tok = jose_jwt.decode(token, keyset(server), algorithms=["ES256"])
    return dict(tok.header), dict(tok.claims)


@dataclass
class World:
    server: Server
    tmp: Path
    ent: Path
    op: Path
    receiver: Receiver
    example_port: int

    def agent(self, who: Path | None = None) -> Agent:
        pem = ((who or self.op) / "cert.pem").read_text()
        return Agent(self.server, pem)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("oidc")
    receiver = Receiver()
    example_port = free_port()
    policies = write_policies(
        tmp / "policies",
        backchannel={
            "sample-a": f"http://127.0.0.1:{example_port}/backchannel-logout",
            "sample-b": receiver.url + "/bc/sample-b",
        },
    )
    with serving(tmp, policies, receiver, example_port, "OIDC Trading Co.", "W1") as w:
        yield w


@contextlib.contextmanager
def serving(
    tmp: Path,
    policies: Path,
    receiver: Receiver,
    example_port: int,
    enterprise: str,
    operator: str,
) -> Iterator[World]:
    """A server with these policies behind a trusted TLS proxy (127.0.0.1), an enterprise
    and its operator (role data-entry) enrolled: the world the OIDC tests sign in to."""
    srv, proc = start_server(
        tmp / "data",
        extra_env={
            "EPORT_AUTH_TRUSTED_PROXIES": "127.0.0.1/32",
            "EPORT_POLICIES_DIR": str(policies),
        },
    )
    try:
        ent = enroll_enterprise(srv, tmp, enterprise)
        op = enroll_operator(srv, ent, tmp, operator)
        jrun(srv, "roles", "grant", "--operator", operator, "--role", "data-entry", *creds(ent))
        yield World(srv, tmp, ent, op, receiver, example_port)
    finally:
        stop(proc)
        receiver.close()


# -- discovery --------------------------------------------------------------------------


def test_discovery_lists_exactly_what_is_supported(world: World) -> None:
    srv = world.server
    issuer = srv.url + "/auth"
    doc = requests.get(issuer + "/.well-known/openid-configuration", timeout=10).json()
    # Discovery 1.0 §4.3: the issuer in the document is the one it was fetched for.
    assert doc["issuer"] == issuer
    for member in (  # Discovery 1.0 §3: REQUIRED members
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ):
        assert member in doc, member
    assert doc["response_types_supported"] == ["code"]
    assert doc["response_modes_supported"] == ["query"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["subject_types_supported"] == ["public"]
    # Discovery 1.0 §3: "The algorithm RS256 MUST be included" (test_oidc_rs256.py).
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert "none" in doc["token_endpoint_auth_methods_supported"]
    assert "client_secret_basic" not in doc["token_endpoint_auth_methods_supported"]
    assert "authorization_code" in doc["grant_types_supported"]
    assert "implicit" not in doc["grant_types_supported"]
    assert doc["scopes_supported"][:3] == ["openid", "profile", "eport"]
    assert doc["backchannel_logout_supported"] is True
    assert doc["backchannel_logout_session_supported"] is True
    assert doc["frontchannel_logout_supported"] is False
    # Defaults of Discovery 1.0 that would claim too much must be said explicitly.
    assert doc["request_uri_parameter_supported"] is False
    assert doc["request_parameter_supported"] is False
    assert doc["claims_parameter_supported"] is False
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert {"sub", "sid", "nonce", "auth_time", "at_hash"} <= set(doc["claims_supported"])
    # Every endpoint it names answers (and not with a 404).
    for member in ("authorization_endpoint", "userinfo_endpoint", "end_session_endpoint"):
        assert doc[member].startswith(issuer + "/")
        assert requests.get(doc[member], timeout=10).status_code != 404, member
    assert requests.get(doc["jwks_uri"], timeout=10).json()["keys"]
    # The same document where RFC 8414 §3 and the root well-known place it.
    for where in (
        "/.well-known/oauth-authorization-server/auth",
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ):
        assert requests.get(srv.url + where, timeout=10).json() == doc, where


def test_discovery_passes_authlibs_validators(world: World) -> None:
    """Authlib's readings of RFC 8414 and of OpenID Connect Discovery 1.0 §3, member by
    member: every one passes (RS256 is listed since ID tokens may be RS256)."""
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
    from authlib.oidc.discovery import OpenIDProviderMetadata

    doc = requests.get(world.server.url + "/auth/.well-known/openid-configuration", timeout=10)
    AuthorizationServerMetadata(doc.json()).validate()
    oidc = OpenIDProviderMetadata(doc.json())
    refused = {}
    for key in oidc.REGISTRY_KEYS:
        try:
            getattr(oidc, f"validate_{key}")()
        except ValueError as exc:
            refused[key] = str(exc)
    assert refused == {}
    oidc.validate()


# -- the flow -----------------------------------------------------------------------------


def test_code_flow_single_sign_on_and_tokens(world: World) -> None:
    srv = world.server
    agent = world.agent()
    a = authorize(agent, "sample-a")
    assert a.response.status_code == 302, a.response.text
    assert a.response.headers["Cache-Control"] == "no-store"
    location = a.response.headers["Location"]
    assert location.startswith(redirect_uri("sample-a") + "?")
    assert a.query["state"] == [a.params["state"]]
    assert a.query["iss"] == [srv.url + "/auth"]  # RFC 9207
    # The SSO cookie: Secure, HttpOnly, SameSite=Lax, host-only, path /.
    raw = next(c for c in agent.set_cookies if c.startswith(COOKIE + "="))
    attrs = {p.strip().split("=")[0].lower(): p.strip() for p in raw.split(";")[1:]}
    assert "secure" in attrs and "httponly" in attrs
    assert attrs["samesite"] == "SameSite=Lax" and attrs["path"] == "Path=/"
    assert "domain" not in attrs

    r = redeem(srv, a)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "Bearer" and "refresh_token" not in body
    header, claims = verify_jwt(srv, body["id_token"])
    assert header["typ"] == "JWT" and header["alg"] == "ES256"
    assert claims["iss"] == srv.url + "/auth" and claims["aud"] == "sample-a"
    assert claims["nonce"] == a.params["nonce"] and claims["sub"].endswith(":W1")
    digest = hashlib.sha256(body["access_token"].encode()).digest()[:16]
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert claims["exp"] - claims["iat"] <= 300 and claims["auth_time"] <= claims["iat"]
    sid = claims["sid"]
    # The access token is the service's, bound to the session, with the RP as client_id.
    _, at = verify_jwt(srv, body["access_token"])
    assert at["aud"] == "https://sample-a.eport.example" and at["client_id"] == "sample-a"
    assert at["sid"] == sid and at["scope"] == "sample:use"
    assert validate(srv, body["access_token"]) == 200
    # An ID token is not an access token (RFC 8725 §3.11: typ JWT vs at+jwt).
    assert validate(srv, body["id_token"]) == 401
    # UserInfo: the scopes' claims of the same subject.
    info = requests.get(
        srv.url + "/auth/userinfo",
        headers={"Authorization": "Bearer " + body["access_token"]},
        timeout=10,
    )
    assert info.status_code == 200 and info.headers["Cache-Control"] == "no-store"
    assert info.json()["sub"] == claims["sub"] and info.json()["name"] == "Operator W1"
    assert info.json()["subject_class"] == "operator" and info.json()["operator_id"] == "W1"

    # HEAD is safe (a link checker's): with the cookie it makes no code, and with a
    # certificate alone it opens no session, on the authorization endpoint or the portal.
    _verifier, challenge = pkce()
    params = dict(a.params, code_challenge=challenge, state="head")
    for url, who in (
        ("/auth/authorize", agent.headers(cert=False)),
        ("/portal/", world.agent().headers()),
    ):
        head = requests.head(srv.url + url, params=params, headers=who, timeout=10)
        assert head.status_code == 200 and head.headers["Cache-Control"] == "no-store"
        assert "Location" not in head.headers and "Set-Cookie" not in head.headers, url
    # Service B: the cookie alone (no certificate this time) gets a code, no prompt, same sid.
    b = authorize(agent, "sample-b", cert=False)
    assert b.response.status_code == 302 and "code" in b.query
    rb = redeem(srv, b)
    assert rb.status_code == 200, rb.text
    assert verify_jwt(srv, rb.json()["id_token"])[1]["sid"] == sid
    # The portal lists what the policy gives the operator, and where it is signed in.
    page = agent.get("/portal/", cert=False)
    assert page.status_code == 200
    for name in ("Sample Web Service A", "Sample Web Service B", "Customs Declaration"):
        assert name in page.text
    assert "Export Tax Rebate" not in page.text  # needs the finance role
    assert page.text.count('class="badge">signed in') == 2
    assert serial_of(world.op) in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "same-origin"  # no-referrer: "Origin: null"

    # prompt=none with the session: a code; without any session or certificate: an error.
    assert "code" in authorize(agent, "sample-a", cert=False, prompt="none").query
    anon = authorize(Agent(srv, None), "sample-a", prompt="none")
    assert anon.query["error"] == ["login_required"] and "code" not in anon.query
    assert authorize(Agent(srv, None), "sample-a").response.status_code == 401


def test_prompt_login_and_max_age_authenticate_again_and_keep_the_session(
    world: World,
) -> None:
    """A relying party's prompt=login or max_age (OIDC Core §3.1.2.1) has the holder
    present its certificate again: the same SSO session is re-authenticated (a later
    auth_time, a new cookie), so the other services it signed in to stay signed in: no
    back-channel logout, their tokens still valid."""
    srv = world.server
    op = enroll_operator(srv, world.ent, world.tmp, "W5")
    jrun(srv, "roles", "grant", "--operator", "W5", "--role", "data-entry", *creds(world.ent))
    agent = world.agent(op)
    first = redeem(srv, authorize(agent, "sample-b")).json()
    _, claims = verify_jwt(srv, first["id_token"])
    sid, auth_time = claims["sid"], claims["auth_time"]
    time.sleep(1.1)  # auth_time is in whole seconds

    def logouts() -> int:
        return sum(verify_jwt(srv, t)[1]["sid"] == sid for t in world.receiver.tokens())

    # max_age without the certificate: the sign-in page, or login_required; nothing ends.
    assert authorize(agent, "sample-a", cert=False, max_age="0").response.status_code == 401
    quiet = authorize(agent, "sample-a", cert=False, max_age="0", prompt="none")
    assert quiet.query["error"] == ["login_required"]
    assert "older than max_age" in quiet.query["error_description"][0], quiet.query
    for asks in ({"prompt": "login"}, {"max_age": "0"}):
        old_cookie = agent.cookie
        again = authorize(agent, "sample-a", **asks)
        assert again.response.status_code == 302 and "code" in again.query, again.response.text
        assert agent.cookie and agent.cookie != old_cookie  # a new cookie for the session
        _, renewed = verify_jwt(srv, redeem(srv, again).json()["id_token"])
        assert renewed["sid"] == sid and renewed["auth_time"] > auth_time, renewed
        auth_time = renewed["auth_time"]
        # The old cookie no longer holds the session.
        stale = Agent(srv, None)
        stale.cookie = old_cookie
        assert authorize(stale, "sample-b", prompt="none").query["error"] == ["login_required"]
        time.sleep(1.1)
    # max_age counts from the re-authentication: a fresh one needs no certificate.
    kept = authorize(agent, "sample-b", cert=False, max_age="3600")
    assert "code" in kept.query, kept.response.text
    assert verify_jwt(srv, redeem(srv, kept).json()["id_token"])[1]["auth_time"] == auth_time
    # Service B was never logged out, and its first access token is still good.
    assert validate(srv, first["access_token"], "sample-b") == 200
    time.sleep(1.0)  # the back channel would have been tried by now
    assert logouts() == 0
    # A certificate that may no longer sign in: refused, and the session is not re-opened.
    jrun(srv, "suspend", "--serial", serial_of(op), *creds(world.ent))
    held = authorize(agent, "sample-a", prompt="login")
    assert held.response.status_code == 403 and "hold" in held.response.text


def test_a_certificate_header_from_an_untrusted_address_is_no_sign_in(world: World) -> None:
    """A certificate header from an address that is no trusted proxy went to the relying
    party as login_required, prompt=none or not, with the server's reason in it ("…from
    127.0.0.2, which is not a trusted proxy"). Now the user gets the sign-in page, and
    prompt=none a login_required that names no address (the reason is in the log)."""
    _, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": "sample-a",
        "redirect_uri": redirect_uri("sample-a"),
        "scope": "openid",
        "state": "st",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    header = world.agent().headers()["X-SSL-Client-Cert"]  # a real operator's certificate
    host, port = world.server.url.removeprefix("http://").split(":")

    def from_127_0_0_2(query: dict[str, str]) -> tuple[int, str]:
        target = "/auth/authorize?" + urlencode(query)
        with socket.create_connection((host, int(port)), 10, ("127.0.0.2", 0)) as sock:
            sock.sendall(
                f"GET {target} HTTP/1.1\r\nHost: {host}\r\nX-SSL-Client-Cert: {header}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
        return int(head.split()[1]), head

    status, head = from_127_0_0_2(params)
    assert status == 401 and "127.0.0.2" not in head, head
    status, head = from_127_0_0_2({**params, "prompt": "none"})
    assert status == 302 and "error=login_required" in head, head
    assert "127.0.0.2" not in head and "proxy" not in head, head


def test_codes_are_stored_hashed_and_expire(world: World) -> None:
    from authsvc.oidc_models import AuthorizationCodeRow

    srv = world.server
    f = authorize(world.agent())
    h = hashlib.sha256(f.code.encode()).hexdigest()
    engine = create_engine(f"sqlite:///{world.server.data_dir / 'auth.db'}")
    try:
        with Session(engine) as db:
            assert (
                db.scalar(
                    select(AuthorizationCodeRow).where(AuthorizationCodeRow.code_hash == f.code)
                )
                is None
            )
            row = db.get(AuthorizationCodeRow, h)
            assert row is not None and row.redirect_uri == f.params["redirect_uri"]
            assert row.expires_at - row.created_at == datetime.timedelta(seconds=60)
            # Age the code past its lifetime: it is refused.
            row.expires_at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
            db.commit()
    finally:
        engine.dispose()
    r = redeem(srv, f)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert "expired" in r.json()["error_description"]
    assert r.headers["Cache-Control"] == "no-store"


# -- attacks -------------------------------------------------------------------------------


def test_code_replay_revokes_the_tokens_of_the_first_redemption(world: World) -> None:
    srv = world.server
    f = authorize(world.agent())
    first = redeem(srv, f)
    assert first.status_code == 200
    token = first.json()["access_token"]
    assert validate(srv, token) == 200
    again = redeem(srv, f)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert again.headers["Cache-Control"] == "no-store"
    assert validate(srv, token) == 401  # revoked by the replay
    r = requests.get(
        srv.url + "/auth/userinfo", headers={"Authorization": "Bearer " + token}, timeout=10
    )
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    # The challenge says why (RFC 6750 §3 error_description), in its allowed characters.
    why = r.headers["WWW-Authenticate"].split('error_description="', 1)[1].rstrip('"')
    assert why and all(" " <= c <= "~" and c not in '"\\' for c in why), why
    assert r.headers["Content-Type"].startswith("text/plain")
    # Garbage and unknown codes.
    assert redeem(srv, f, code="not-a-code").json()["error"] == "invalid_grant"


def test_redirect_uri_tampering(world: World) -> None:
    agent = world.agent()
    good = redirect_uri("sample-a")
    for bad in (
        good + "/",
        good + "?next=https://evil.example/",
        good.replace("/callback", "/callback/../evil"),
        good.replace("https://", "http://"),
        good.replace(":8443", ":8444"),
        good.replace("sample-a.eport.example", "sample-a.eport.example.evil.example"),
        "https://evil.example/callback",
        good.replace("https://", "https://evil.example@"),
        good.upper(),
        good + "#frag",
        redirect_uri("sample-b"),  # another client's
    ):
        f = authorize(agent, redirect_uri=bad)
        # Never sent anywhere: a page for the user (RFC 6749 §4.1.2.1).
        assert f.response.status_code == 400, bad
        assert "Location" not in f.response.headers, bad
        assert "not registered" in f.response.text
    missing = authorize(agent, redirect_uri="-")
    assert missing.response.status_code == 400 and "Location" not in missing.response.headers
    unknown = authorize(agent, client="evil-client")
    assert unknown.response.status_code == 400 and "Location" not in unknown.response.headers
    twice = (
        world.server.url
        + "/auth/authorize?"
        + urlencode([("client_id", "sample-a"), ("redirect_uri", good), ("redirect_uri", good)])
    )
    assert requests.get(twice, allow_redirects=False, timeout=10).status_code == 400
    # A code asked for one redirect URI is not redeemed for another.
    f = authorize(agent)
    r = redeem(world.server, f, redirect_uri=good + "/")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert redeem(world.server, f, redirect_uri="-").json()["error"] == "invalid_request"
    assert redeem(world.server, f).status_code == 200  # the refusals did not burn it


def test_non_ascii_parameters_are_refused_not_crashed(world: World) -> None:
    """A parameter compared in constant time may carry any character: a non-ASCII one got
    500 (hmac.compare_digest refuses such a str); it is an unregistered URI, a wrong
    redirect_uri or CSRF token like any other, and refusing it changes nothing."""
    srv = world.server
    agent = world.agent()
    good = redirect_uri("sample-a")
    f = authorize(agent, redirect_uri=good + "\u00e9")
    assert f.response.status_code == 400 and "not registered" in f.response.text
    assert "Location" not in f.response.headers
    f = authorize(agent)
    r = redeem(srv, f, redirect_uri=good + "\u00e9")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    token = redeem(srv, f).json()["access_token"]  # the refusal did not burn the code
    registered = f"https://sample-a.eport.example:{PUBLIC_PORT}/signed-out"
    r = agent.get(
        "/auth/end_session",
        cert=False,
        client_id="sample-a",
        post_logout_redirect_uri=registered + "\u00e9",
    )
    assert r.status_code == 400 and "not registered" in r.text
    assert agent.get("/portal/", cert=False).status_code == 200
    r = agent.post("/portal/logout", {"csrf_token": "\u00e9" * 43}, cert=False)
    assert r.status_code == 403
    assert validate(srv, token) == 200  # still signed in


def test_pkce_is_required_s256_only(world: World) -> None:
    srv = world.server
    agent = world.agent()
    for overrides, error in (
        ({"code_challenge": "-", "code_challenge_method": "-"}, "invalid_request"),
        ({"code_challenge_method": "-"}, "invalid_request"),  # the default would be plain
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": "S512"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
    ):
        f = authorize(agent, **overrides)
        assert f.response.status_code == 302, overrides
        assert f.query["error"] == [error] and "code" not in f.query, overrides
        assert f.query["state"] == [f.params["state"]]
    f = authorize(agent)
    assert redeem(srv, f, code_verifier="-").json()["error"] == "invalid_request"
    wrong = secrets.token_urlsafe(48)
    assert redeem(srv, f, code_verifier=wrong).json()["error"] == "invalid_grant"
    assert redeem(srv, f, code_verifier="x" * 42).json()["error"] == "invalid_grant"
    # The challenge itself is not a verifier (a "plain" downgrade).
    assert redeem(srv, f, code_verifier=f.params["code_challenge"]).status_code == 400
    assert redeem(srv, f).status_code == 200


def test_mix_up_of_clients(world: World) -> None:
    srv = world.server
    f = authorize(world.agent(), "sample-a")
    # B presents A's code (with its own redirect URI, or A's): refused.
    r = redeem(srv, f, client_id="sample-b", redirect_uri=redirect_uri("sample-b"))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = redeem(srv, f, client_id="sample-b")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # A client that is no web client, or no client at all.
    # RFC 6749 §5.2: no Authorization header tried, so 400 (a 401 must carry a challenge)
    r = redeem(srv, f, client_id="manifest")
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"
    r = redeem(srv, f, client_id="-")
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"
    assert "WWW-Authenticate" not in r.headers and r.headers["Cache-Control"] == "no-store"
    # Secrets are not a way in: every client is public.
    r = requests.post(
        srv.url + "/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": f.code,
            "redirect_uri": f.params["redirect_uri"],
            "code_verifier": f.verifier,
        },
        auth=("sample-a", "secret"),
        timeout=10,
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    # A's tokens are for A only.
    ok = redeem(srv, f)
    assert ok.status_code == 200
    assert validate(srv, ok.json()["access_token"], "sample-b") == 401
    assert verify_jwt(srv, ok.json()["id_token"])[1]["aud"] == "sample-a"


def test_authorization_request_errors(world: World) -> None:
    agent = world.agent()
    for overrides, error in (
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": "code id_token"}, "unsupported_response_type"),
        ({"response_type": "-"}, "invalid_request"),  # missing (RFC 6749 §4.1.2.1)
        ({"response_mode": "fragment"}, "invalid_request"),
        ({"response_mode": "form_post"}, "invalid_request"),
        ({"scope": "profile"}, "invalid_scope"),
        ({"scope": "openid admin:everything"}, "invalid_scope"),
        ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
        ({"request_uri": "https://evil.example/req"}, "request_uri_not_supported"),
        ({"prompt": "consent"}, "consent_required"),
        ({"prompt": "none login"}, "invalid_request"),
        ({"max_age": "soon"}, "invalid_request"),
        # str.isdigit() took "²" (then int() raised: a 500) and other scripts' digits
        ({"max_age": "²"}, "invalid_request"),
        ({"max_age": "١٢"}, "invalid_request"),
        ({"state": "s" * 2049}, "invalid_request"),  # was sent back whole in the Location
    ):
        f = authorize(agent, **overrides)
        assert f.response.status_code == 302, overrides
        assert f.query["error"] == [error], (overrides, f.query)
        assert f.query["iss"] == [world.server.url + "/auth"] and "code" not in f.query
    # A subject the policy gives nothing at the client: access_denied, no code.
    officer = (world.server.dev / "officers" / "customs" / "officer.pem").read_text()
    f = authorize(Agent(world.server, officer), "sample-a")
    assert f.query["error"] == ["access_denied"] and "code" not in f.query
    assert authorize(world.agent(world.ent), "sample-a").query.get("code")  # the enterprise
    f = authorize(
        world.agent(), "portal", redirect_uri="https://portal.eport.example/oidc/callback"
    )
    assert "code" in f.query  # every operator may use the portal


def test_open_redirects_on_end_session(world: World) -> None:
    srv = world.server
    agent = world.agent()
    f = authorize(agent)
    id_token = redeem(srv, f).json()["id_token"]
    registered = f"https://sample-a.eport.example:{PUBLIC_PORT}/signed-out"
    for params in (
        {"client_id": "sample-a", "post_logout_redirect_uri": "https://evil.example/"},
        {"client_id": "sample-a", "post_logout_redirect_uri": registered + "/../../evil"},
        {"client_id": "sample-a", "post_logout_redirect_uri": registered + "?x=1"},
        {"post_logout_redirect_uri": registered},  # no client to check it against
        {"client_id": "sample-b", "post_logout_redirect_uri": registered},  # A's URI for B
        {"id_token_hint": id_token, "client_id": "sample-b"},  # hint and client disagree
        {"id_token_hint": "not.a.jwt", "post_logout_redirect_uri": registered},
        {"client_id": "nobody", "post_logout_redirect_uri": registered},
    ):
        r = agent.get("/auth/end_session", cert=False, **params)
        assert r.status_code == 400, params
        assert "Location" not in r.headers, params
    # An access token is no ID token hint (typ at+jwt).
    at = redeem(srv, authorize(agent)).json()["access_token"]
    r = agent.get("/auth/end_session", cert=False, id_token_hint=at)
    assert r.status_code == 400
    # The session survived every refusal.
    assert agent.get("/portal/", cert=False).status_code == 200
    # Without a hint of this session the user is asked first (logout CSRF) …
    r = agent.get(
        "/auth/end_session",
        cert=False,
        client_id="sample-a",
        post_logout_redirect_uri=registered,
        state="s1",
    )
    assert r.status_code == 200 and 'name="csrf_token"' in r.text
    assert agent.get("/portal/", cert=False).status_code == 200
    # … and the form needs its CSRF token.
    form = {"client_id": "sample-a", "post_logout_redirect_uri": registered, "state": "s1"}
    assert agent.post("/auth/end_session/confirm", form, cert=False).status_code == 403
    assert agent.get("/portal/", cert=False).status_code == 200
    csrf = _csrf(r.text)
    tampered = {**form, "csrf_token": csrf, "post_logout_redirect_uri": "https://evil.example/"}
    r = agent.post("/auth/end_session/confirm", tampered, cert=False)
    assert r.status_code == 400 and "Location" not in r.headers
    r = agent.post("/auth/end_session/confirm", {**form, "csrf_token": csrf}, cert=False)
    assert r.status_code == 303 and r.headers["Location"] == registered + "?state=s1"
    assert agent.cookie is None  # cleared
    # With a valid hint of the current session: logged out at once, sent back with state.
    agent = world.agent()
    f = authorize(agent)
    id_token = redeem(srv, f).json()["id_token"]
    r = agent.get(
        "/auth/end_session",
        cert=False,
        id_token_hint=id_token,
        post_logout_redirect_uri=registered,
        state="s2",
    )
    assert r.status_code == 303 and r.headers["Location"] == registered + "?state=s2"
    assert agent.get("/portal/", cert=False).status_code == 401


def _csrf(html: str) -> str:
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def test_portal_logout_needs_its_csrf_token(world: World) -> None:
    srv = world.server
    agent = world.agent()
    page = agent.get("/portal/")
    assert page.status_code == 200
    csrf = _csrf(page.text)
    token = redeem(srv, authorize(agent, cert=False)).json()["access_token"]
    for form, headers in (
        ({}, {}),
        ({"csrf_token": "wrong"}, {}),
        ({"csrf_token": csrf[:-1]}, {}),
        ({"csrf_token": csrf}, {"Origin": "https://evil.example"}),
    ):
        r = agent.post("/portal/logout", form, cert=False, **headers)
        assert r.status_code == 403, (form, headers)
        assert validate(srv, token) == 200  # still signed in
    # Another browser's cookie with this page's token: no.
    other = world.agent()
    other.get("/portal/")
    assert other.post("/portal/logout", {"csrf_token": csrf}, cert=False).status_code == 403
    r = agent.post("/portal/logout", {"csrf_token": csrf}, cert=False, Origin=srv.url.rstrip("/"))
    assert r.status_code == 303 and r.headers["Location"] == "/portal/signed-out"
    assert agent.cookie is None
    assert validate(srv, token) == 401  # the session ended everywhere
    assert agent.get("/portal/signed-out", cert=False).status_code == 200


def test_cookieless_posts_neither_open_a_second_session_nor_drop_the_cookie(
    world: World,
) -> None:
    """A form posted from another site comes without the SSO cookie (SameSite=Lax).
    To /auth/authorize it opened a second session whose cookie replaced the first's, and a
    later sign-out left the first open; to a sign-out endpoint it deleted the cookie and
    left the session open, with every service still signed in (browser probe, F1, F2).
    A refused sign-out form leads back to the portal (F3)."""
    srv = world.server
    agent = world.agent()
    page = agent.get("/portal/")
    token = redeem(srv, authorize(agent, cert=False)).json()["access_token"]
    first = agent.cookie
    # /auth/authorize by POST without the cookie: the same request as a GET, which a
    # browser's top-level navigation sends with the cookie.
    _, challenge = pkce()
    form = {
        "response_type": "code", "client_id": "sample-b", "redirect_uri": redirect_uri("sample-b"),
        "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256",
    }  # fmt: skip
    stranger = world.agent()
    r = stranger.post("/auth/authorize", form)
    assert r.status_code == 303 and stranger.cookie is None, r.headers
    location = urlsplit(r.headers["Location"])
    assert location.path == "/auth/authorize"
    assert {k: v[0] for k, v in parse_qs(location.query).items()} == form
    r = agent.get(r.headers["Location"], cert=True)  # the browser follows with its cookie
    assert r.status_code == 302 and "code=" in r.headers["Location"]
    assert agent.cookie == first  # the session it had: no second one
    # Sign-out endpoints posted without the cookie: nothing ended, nothing deleted.
    for path in ("/portal/logout", "/auth/end_session/confirm"):
        r = stranger.post(path, {}, cert=False)
        assert r.status_code == 400 and "Nothing to sign out" in r.text, (path, r.text)
        assert not any(c.startswith(f"{COOKIE}=") for c in r.raw.headers.getlist("Set-Cookie"))
    assert validate(srv, token) == 200
    # A sign-out form whose token is stale: refused, with the way back to the portal.
    r = agent.post("/portal/logout", {"csrf_token": "stale" + _csrf(page.text)[5:]}, cert=False)
    assert r.status_code == 403 and "open the portal and sign out from there" in r.text
    assert 'href="/portal/"' in r.text
    assert validate(srv, token) == 200


def test_a_cookieless_end_session_post_comes_back_as_a_get_and_ends_the_session(
    world: World,
) -> None:
    """A relying party on another site signs out by form POST: the browser sends it
    without the SSO cookie (SameSite=Lax). It was sent on to the relying party's
    signed-out page while the session, and every service, stayed signed in (browser
    probe 24, F1). Now it comes back as a GET, which the browser sends with the cookie."""
    srv = world.server
    agent = world.agent()
    id_token = redeem(srv, authorize(agent)).json()["id_token"]
    token = redeem(srv, authorize(agent, cert=False)).json()["access_token"]
    registered = f"https://sample-a.eport.example:{PUBLIC_PORT}/signed-out"
    form = {"id_token_hint": id_token, "post_logout_redirect_uri": registered, "state": "x"}
    stranger = world.agent()  # the same browser's cross-site POST: no cookie
    r = stranger.post("/auth/end_session", form, cert=False)
    assert r.status_code == 303 and stranger.cookie is None
    location = urlsplit(r.headers["Location"])
    assert location.path == "/auth/end_session"
    assert {k: v[0] for k, v in parse_qs(location.query).items()} == form
    assert validate(srv, token) == 200  # nothing ended yet, and no one told it was
    r = agent.get(r.headers["Location"], cert=False)  # followed, with the cookie
    assert r.status_code == 303 and r.headers["Location"] == registered + "?state=x"
    assert validate(srv, token) == 401
    assert agent.get("/portal/", cert=False).status_code == 401


def test_only_a_top_level_page_load_signs_in_with_the_certificate(world: World) -> None:
    """Another site's page that embeds images of the portal or of /auth/authorize sends
    them without the SSO cookie but with the certificate the browser chose for this
    host: each opened a session, and past the session cap the user's real one ended
    (browser probe 24, F2). Fetch Metadata tells those loads apart."""
    srv = world.server
    agent = world.agent()
    assert agent.get("/portal/").status_code == 200  # no fetch metadata: a client, not a page
    token = redeem(srv, authorize(agent, cert=False)).json()["access_token"]
    headers = {"X-SSL-Client-Cert": quote(agent.cert_pem or "")}
    for dest in ("image", "iframe", "script", "empty"):
        r = requests.get(
            srv.url + "/portal/",
            headers={**headers, "Sec-Fetch-Dest": dest, "Sec-Fetch-Site": "cross-site"},
            allow_redirects=False,
            timeout=10,
        )
        assert r.status_code == 401 and "Set-Cookie" not in r.headers, dest
        _, challenge = pkce()
        params = {
            "response_type": "code", "client_id": "sample-a", "prompt": "none",
            "redirect_uri": redirect_uri("sample-a"), "scope": "openid", "state": "s",
            "code_challenge": challenge, "code_challenge_method": "S256",
        }  # fmt: skip
        r = requests.get(
            srv.url + "/auth/authorize",
            params=params,
            headers={**headers, "Sec-Fetch-Dest": dest, "Sec-Fetch-Site": "cross-site"},
            allow_redirects=False,
            timeout=10,
        )
        assert r.status_code == 302 and "Set-Cookie" not in r.headers, dest
        assert "error=login_required" in r.headers["Location"], dest
    # A page load from a relying party (a cross-site navigation) signs in as before.
    r = requests.get(
        srv.url + "/portal/",
        headers={**headers, "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "cross-site"},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 200 and COOKIE in r.headers.get("Set-Cookie", "")
    assert validate(srv, token) == 200  # the first session is still live


def test_browser_paths_answer_errors_with_pages(world: World) -> None:
    """An unknown portal page, a method a page does not take, a NUL in a sign-in parameter,
    an unreadable certificate header from the proxy: each was raw problem+json in the
    operator's browser, naming where the API's endpoints are listed (browser probe 24, F4).
    API paths keep problem+json."""
    url = world.server.url

    def page(r: requests.Response, status: int, words: str) -> None:
        assert r.status_code == status, (r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("text/html"), r.headers
        assert words in r.text and "openid-configuration" not in r.text, r.text
        assert r.headers["X-Frame-Options"] == "DENY"

    page(requests.get(url + "/portal/nope", timeout=10), 404, "Page not found")
    r = requests.get(url + "/portal/logout", timeout=10)
    page(r, 405, "Not a page to open")
    assert r.headers["Allow"] == "OPTIONS, POST", r.headers
    page(
        requests.get(url + "/auth/authorize", params={"client_id": "\x00"}, timeout=10),
        400,
        "U+0000",
    )
    page(
        requests.get(url + "/portal/", headers={"X-SSL-Client-Cert": "garbage"}, timeout=10),
        400,
        "This request is not valid",
    )
    r = requests.get(url + "/auth/nope", timeout=10)
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/problem+json"


# -- relying parties ---------------------------------------------------------------------


@contextlib.contextmanager
def sample_service(world: World, client: str = "sample-a", **settings: str) -> Iterator[Any]:
    """The sample web service (Authlib) on the port the policy names for its back channel."""
    from examples.web_service.app import create_app

    app = create_app(
        {
            "EPORT_ISSUER": world.server.url + "/auth",
            "OIDC_CLIENT_ID": client,
            "PUBLIC_URL": f"https://{client}.eport.example:{PUBLIC_PORT}",
            "SERVICE_NAME": client,
            "SECRET_KEY": "test-" + client,
            **settings,
        }
    )
    http = make_server("127.0.0.1", world.example_port, app, threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield app
    finally:
        http.shutdown()
        http.server_close()


def test_authlib_client_state_mismatch_and_backchannel_logout(world: World) -> None:
    """The sample service, a third-party client (Authlib), against the provider; it runs
    under a WSGI test client for the browser side (its pages are behind TLS in the
    browser test) and on a real port for the token service's back channel."""
    agent = world.agent()
    with sample_service(world) as app:
        web = app.test_client()
        base = f"https://sample-a.eport.example:{PUBLIC_PORT}"
        start = web.get("/login", base_url=base)
        assert start.status_code == 302
        authz = urlsplit(start.headers["Location"])
        q = parse_qs(authz.query)
        assert q["code_challenge_method"] == ["S256"] and q["nonce"] and q["state"]
        back = agent.get(start.headers["Location"])
        assert back.status_code == 302
        callback = urlsplit(back.headers["Location"])
        returned = parse_qs(callback.query)
        # A forged state (CSRF on the redirect endpoint): the client refuses.
        forged = web.get(
            "/callback?" + urlencode({"code": returned["code"][0], "state": "forged"}),
            base_url=base,
        )
        assert forged.status_code == 400 and b"mismatching_state" in forged.data
        assert b"not signed in" in web.get("/", base_url=base).data
        # The real answer signs the user in (code redeemed, ID token checked, UserInfo).
        ok = web.get(callback.path + "?" + callback.query, base_url=base)
        assert ok.status_code == 302, ok.data
        page = web.get("/", base_url=base)
        home = page.data.decode()
        assert "Operator W1" in home
        # no other site frames it (its sign-out button: browser probe 24, F7)
        assert page.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        sid = home.split('id="user-sid">')[1].split("<")[0]
        # An error from the provider is shown, not followed.
        err = web.get("/callback?error=access_denied&state=x", base_url=base)
        assert err.status_code == 400
        # Logout at the portal: the token service posts a logout token to the sample
        # service (Back-Channel Logout 1.0), which ends its local session.
        page = agent.get("/portal/", cert=False)
        r = agent.post("/portal/logout", {"csrf_token": _csrf(page.text)}, cert=False)
        assert r.status_code == 303
        assert b"not signed in" in web.get("/", base_url=base).data
        assert sid


def test_second_client_library_requests_oauthlib(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests-oauthlib (oauthlib) drives the flow; joserfc checks the ID token."""
    from requests_oauthlib import OAuth2Session

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the test server is plain HTTP
    # The token response names the scope granted, which is more than asked (the service's
    # own scopes, from the access policy): RFC 6749 §5.1 requires saying so.
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    srv = world.server
    agent = world.agent()
    doc = requests.get(srv.url + "/auth/.well-known/openid-configuration", timeout=10).json()
    client = OAuth2Session(
        "sample-b",
        redirect_uri=redirect_uri("sample-b"),
        scope=["openid", "profile"],
        pkce="S256",
    )
    url, state = client.authorization_url(doc["authorization_endpoint"], nonce="n-0S6_WzA2Mj")
    back = agent.get(url)
    assert back.status_code == 302
    token = client.fetch_token(
        doc["token_endpoint"],
        authorization_response=back.headers["Location"],
        include_client_id=True,
    )
    keys = KeySet.import_key_set(requests.get(doc["jwks_uri"], timeout=10).json())
    id_token = jose_jwt.decode(token["id_token"], keys, algorithms=["ES256"])
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": doc["issuer"]},
        aud={"essential": True, "value": "sample-b"},
        nonce={"essential": True, "value": "n-0S6_WzA2Mj"},
        sid={"essential": True},
    ).validate(id_token.claims)
    info = client.get(doc["userinfo_endpoint"]).json()
    assert info == {"sub": id_token.claims["sub"], "name": "Operator W1"}  # openid profile
    assert state


def test_revocation_ends_the_browser_session_and_tells_the_clients(world: World) -> None:
    srv = world.server
    op = enroll_operator(srv, world.ent, world.tmp, "W2")
    jrun(srv, "roles", "grant", "--operator", "W2", "--role", "data-entry", *creds(world.ent))
    agent = world.agent(op)
    f = authorize(agent, "sample-b")
    id_token = redeem(srv, f).json()["id_token"]
    sid = verify_jwt(srv, id_token)[1]["sid"]
    before = len(world.receiver.posts)
    jrun(srv, "revoke", "--serial", serial_of(op), "--reason", "keyCompromise", *creds(world.ent))
    t1 = time.monotonic()
    while authorize(agent, "sample-b", cert=False, prompt="none").query.get("code"):
        assert time.monotonic() - t1 < BOUND, "the session outlived the revocation bound"
        time.sleep(0.1)
    # Its certificate cannot sign in again either.
    refused = agent.get("/portal/")
    assert refused.status_code == 403 and "revoked" in refused.text
    # The client that got a code in the session is told (the background delivery loop).
    while not any(verify_jwt(srv, t)[1].get("sid") == sid for t in world.receiver.tokens()):
        assert time.monotonic() - t1 < BOUND + 2, "no back-channel logout"
        time.sleep(0.1)
    header, claims = verify_jwt(srv, world.receiver.tokens()[-1])
    assert header["typ"] == "logout+jwt"
    assert claims["events"] == {BACKCHANNEL_EVENT: {}} and "nonce" not in claims
    assert claims["aud"] == "sample-b" and claims["iss"] == srv.url + "/auth"
    assert claims["sub"].endswith(":W2") and claims["jti"]
    assert len(world.receiver.posts) > before
    assert world.receiver.posts[-1][0] == "/bc/sample-b"


def test_backchannel_logout_is_retried(world: World) -> None:
    """A relying party that fails the first delivery gets the logout token again later."""
    srv = world.server
    agent = world.agent()
    sid = verify_jwt(srv, redeem(srv, authorize(agent, "sample-b")).json()["id_token"])[1]["sid"]

    def sent() -> int:
        return sum(verify_jwt(srv, t)[1]["sid"] == sid for t in world.receiver.tokens())

    world.receiver.status = 503
    try:
        page = agent.get("/portal/", cert=False)
        r = agent.post("/portal/logout", {"csrf_token": _csrf(page.text)}, cert=False)
        assert r.status_code == 303  # the logout does not wait for the relying party
        assert sent() == 1
    finally:
        world.receiver.status = 200
    t0 = time.monotonic()
    while sent() < 2:
        assert time.monotonic() - t0 < 8, "not retried"
        time.sleep(0.1)
    time.sleep(1.5)
    assert sent() == 2  # delivered: not sent again


def test_the_sample_service_does_not_fetch_the_jwks_for_garbage(world: World) -> None:
    """Its back-channel endpoint fetched the provider's JWKS again (forced) for every
    POST whose token did not verify, garbage included: anyone could make it hammer the
    provider. Garbage is refused without a fetch; a token naming an unknown key forces
    at most one fetch per interval."""
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec

    with sample_service(world) as app:
        client = app.extensions["authlib.integrations.flask_client"].create_client("eport")
        forced: list[bool] = []
        fetch = client.fetch_jwk_set

        def counting(force: bool = False) -> Any:
            forced.append(force)
            return fetch(force=force)

        client.fetch_jwk_set = counting
        web = app.test_client()
        for garbage in ("x", "a.b.c", "e30.e30.sig"):
            r = web.post("/backchannel-logout", data={"logout_token": garbage})
            assert r.status_code == 400 and r.json["error"] == "invalid_request"
        assert True not in forced
        stranger = ec.generate_private_key(ec.SECP256R1())
        for n in range(3):
            token = pyjwt.encode({"n": n}, stranger, "ES256", headers={"kid": "nobody"})
            r = web.post("/backchannel-logout", data={"logout_token": token})
            assert r.status_code == 400
        assert forced.count(True) == 1, forced


def test_the_trailing_slash_redirect_names_no_host(world: World) -> None:
    """/portal → /portal/ was Werkzeug's absolute redirect built from the request's Host
    header: a Host the client sent came back as the target (a poisoned cache could send
    users elsewhere). The Location is relative now."""
    for path, query in (("/portal", ""), ("/portal", "?x=1"), ("/audit", "")):
        r = requests.get(
            world.server.url + path + query,
            headers={"Host": "evil.example"},
            allow_redirects=False,
            timeout=10,
        )
        assert r.status_code == 308, (path, r.status_code)
        assert r.headers["Location"] == path + "/" + query, r.headers["Location"]
