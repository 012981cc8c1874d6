"""Services and proxies: token exchange (RFC 8693) authenticated by a service
certificate, and certificate login forwarded by a trusted TLS proxy (RFC 9440)."""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.signedreq import sign_request
from tests.conftest import Server, start_server, stop
from tests.helpers import creds, enroll_enterprise, enroll_service, jrun

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


def signed_form(srv: Server, d: Path, path: str, fields: dict[str, str]) -> requests.Response:
    key = serialization.load_pem_private_key((d / "key.pem").read_bytes(), b"test-passphrase-123")
    chain = [x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())]
    body = urlencode(fields).encode()
    jws = sign_request(key, chain, "POST", path, body, datetime.datetime.now(datetime.UTC))  # type: ignore[arg-type]
    return requests.post(
        srv.url + path,
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": f"EPort-Signed {jws}",
        },
        timeout=10,
    )


@pytest.fixture(scope="module")
def operator(sqlite_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return operator_with_token(sqlite_server, tmp_path_factory.mktemp("svc"))


def operator_with_token(srv: Server, tmp: Path, name: str = "Sun Li") -> dict[str, Any]:
    """An operator with roles, logged in, and its access token for customs-declaration."""
    ent = enroll_enterprise(srv, tmp, "Exchange Co.")
    grant = jrun(srv, "operator", "add", "--name", name, "--id", "S1", *creds(ent))
    op = tmp / "op"
    jrun(
        srv, "enroll", "--code", grant["enrollment_code"], "--profile", "operator", "--out", str(op)
    )
    jrun(
        srv,
        "roles",
        "grant",
        "--operator",
        "S1",
        "--role",
        "declaration",
        "--role",
        "data-entry",
        *creds(ent),
    )
    cfg = tmp / "cfg"
    srv.eport("login", *creds(op), EPORT_CONFIG_DIR=str(cfg))
    token = srv.eport(
        "token", "--service", "customs-declaration", EPORT_CONFIG_DIR=str(cfg)
    ).stdout.strip()
    return {"tmp": tmp, "op": op, "token": token, "cfg": cfg}


def test_token_exchange_with_act(sqlite_server: Server, operator: dict[str, Any]) -> None:
    srv = sqlite_server
    svc = enroll_service(srv, operator["tmp"], "customs-declaration.eport.example")
    fields = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": operator["token"],
        "subject_token_type": ACCESS,
        "audience": "manifest",
    }
    r = signed_form(srv, svc, "/auth/token", fields)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    out = r.json()
    assert out["issued_token_type"] == ACCESS
    claims = jwt.decode(out["access_token"], options={"verify_signature": False})
    assert claims["act"] == {"sub": "svc:customs-declaration.eport.example"}
    assert (
        claims["aud"] == "https://manifest.eport.example"
        and claims["sub"] == "op:" + claims["uscc"] + ":S1"
    )
    v = requests.get(
        srv.url + "/auth/validate",
        headers={"Authorization": "Bearer " + out["access_token"], "X-Eport-Service": "manifest"},
        timeout=10,
    )
    assert (
        v.status_code == 200
        and v.headers["X-Eport-Client"] == "svc:customs-declaration.eport.example"
    )
    # Delegation the policy does not allow.
    r = signed_form(srv, svc, "/auth/token", {**fields, "audience": "tax-refund"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_target"
    # A service may only exchange tokens issued to itself.
    other = enroll_service(srv, operator["tmp"], "manifest.eport.example")
    r = signed_form(srv, other, "/auth/token", {**fields, "audience": "customs-declaration"})
    assert r.status_code in (400, 403)
    # Without the service's signature: refused.
    r = requests.post(srv.url + "/auth/token", data=fields, timeout=10)
    assert r.status_code == 401
    # Introspection by the service of its own token: active, with the claims.
    r = signed_form(srv, svc, "/auth/introspect", {"token": operator["token"]})
    assert r.status_code == 200 and r.json()["active"] is True and r.json()["sub"] == claims["sub"]
    r = signed_form(srv, other, "/auth/introspect", {"token": operator["token"]})
    assert r.json() == {"active": False}  # another audience's token reveals nothing
    # A caller that is not a registered service: RFC 6749 §5.2 invalid_client.
    r = signed_form(srv, operator["op"], "/auth/introspect", {"token": operator["token"]})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that trusts 127.0.0.1 as its TLS-terminating proxy."""
    root = tmp_path_factory.mktemp("proxied")
    srv, proc = start_server(
        root / "data", extra_env={"EPORT_AUTH_TRUSTED_PROXIES": "127.0.0.1/32"}
    )
    try:
        yield srv
    finally:
        stop(proc)


def test_mtls_login_only_through_a_trusted_proxy(
    proxied: Server, sqlite_server: Server, tmp_path: Path
) -> None:
    ent = enroll_enterprise(proxied, tmp_path, "Browser Co.")
    cert = x509.load_pem_x509_certificate((ent / "cert.pem").read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    rfc9440 = {"Client-Cert": ":" + base64.b64encode(der).decode() + ":"}
    nginx = {"X-SSL-Client-Cert": quote(cert.public_bytes(serialization.Encoding.PEM).decode())}
    for headers in (rfc9440, nginx):
        r = requests.post(proxied.url + "/auth/login/mtls", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["session"]["subject"].startswith("ent:")
    # The same header from an address that is not a trusted proxy: refused, loudly.
    ent2 = enroll_enterprise(sqlite_server, tmp_path, "Spoof Co.")
    der2 = x509.load_pem_x509_certificate((ent2 / "cert.pem").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    r = requests.post(
        sqlite_server.url + "/auth/login/mtls",
        headers={"Client-Cert": ":" + base64.b64encode(der2).decode() + ":"},
        timeout=10,
    )
    assert r.status_code == 401 and "not a trusted proxy" in json.dumps(r.json())
    # Garbage in the header.
    r = requests.post(
        proxied.url + "/auth/login/mtls", headers={"Client-Cert": ":AAAA:"}, timeout=10
    )
    assert r.status_code == 400
    assert "Client-Cert header from the proxy: it must hold an RFC 9440" in r.text
    r = requests.post(
        proxied.url + "/auth/login/mtls", headers={"X-SSL-Client-Cert": "garbage"}, timeout=10
    )
    assert r.status_code == 400 and "the URL-escaped PEM certificate" in r.text
    assert "cryptography.io" not in r.text  # the parser's own words stay here
    # No header at all.
    r = requests.post(proxied.url + "/auth/login/mtls", timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_certificate_bound_tokens_at_the_gateway(proxied: Server, tmp_path: Path) -> None:
    """RFC 8705: with the client certificate forwarded, a token validates only with the
    certificate it was issued for."""
    ent = enroll_enterprise(proxied, tmp_path, "Bound Co.")
    other = enroll_enterprise(proxied, tmp_path, "Thief Co.")
    cfg = tmp_path / "cfg"
    proxied.eport("login", *creds(ent), EPORT_CONFIG_DIR=str(cfg))
    token = proxied.eport("token", "--service", "portal", EPORT_CONFIG_DIR=str(cfg)).stdout.strip()

    def header(d: Path) -> dict[str, str]:
        der = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        return {"Client-Cert": ":" + base64.b64encode(der).decode() + ":"}

    base = {"Authorization": f"Bearer {token}", "X-Eport-Service": "portal"}
    url = proxied.url + "/auth/validate"
    assert requests.get(url, headers=base, timeout=10).status_code == 200
    assert requests.get(url, headers={**base, **header(ent)}, timeout=10).status_code == 200
    assert requests.get(url, headers={**base, **header(other)}, timeout=10).status_code == 401


def test_a_service_that_requires_the_certificate_refuses_a_token_without_one(
    tmp_path: Path,
) -> None:
    """services.toml ``require_certificate``: the gateway takes a token for that service
    only with the client certificate it is bound to. Without it, a thief who sends no
    certificate used the token as a bearer token (probe 24); GET (the fast path) and
    HEAD (the Flask view) decide alike."""
    import shutil

    from tests.conftest import REPO

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    services = policies / "services.toml"
    text = services.read_text()
    marker = 'id = "portal"\n'
    assert marker in text
    services.write_text(text.replace(marker, marker + "require_certificate = true\n", 1))
    srv, proc = start_server(
        tmp_path / "data",
        extra_env={
            "EPORT_AUTH_TRUSTED_PROXIES": "127.0.0.1/32",
            "EPORT_POLICIES_DIR": str(policies),
        },
    )
    try:
        ent = enroll_enterprise(srv, tmp_path, "Required Co.")
        cfg = tmp_path / "cfg"
        srv.eport("login", *creds(ent), EPORT_CONFIG_DIR=str(cfg))
        token = srv.eport("token", "--service", "portal", EPORT_CONFIG_DIR=str(cfg)).stdout
        der = x509.load_pem_x509_certificate((ent / "cert.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        bound = {"Client-Cert": ":" + base64.b64encode(der).decode() + ":"}
        url = srv.url + "/auth/validate"
        for service, needs in (("portal", True), ("customs-declaration", False)):
            if service != "portal":
                token = srv.eport("token", "--service", service, EPORT_CONFIG_DIR=str(cfg)).stdout
            base = {"Authorization": f"Bearer {token.strip()}", "X-Eport-Service": service}
            for method in ("GET", "HEAD"):
                bare = requests.request(method, url, headers=base, timeout=10)
                assert bare.status_code == (401 if needs else 200), (service, method)
                with_cert = requests.request(method, url, headers={**base, **bound}, timeout=10)
                assert with_cert.status_code == 200, (service, method)
    finally:
        stop(proc)
    # A value that is no boolean: refused at load, naming the file and the key.
    services.write_text(text.replace(marker, marker + 'require_certificate = "yes"\n', 1))
    from authsvc.policy import load_services
    from ca.errors import PolicyError

    with pytest.raises(PolicyError, match="require_certificate"):
        load_services(services)


def test_introspection_over_mtls_answers_as_the_signed_call(
    proxied: Server, sqlite_server: Server, tmp_path: Path
) -> None:
    """A service behind the TLS proxy introspects with its client certificate (RFC 8705
    tls_client_auth; answered by the WSGI fast path, authsvc.fastpath); the answers are the
    ones the signed call (the Flask view) gives, byte for byte (the operator's Chinese name
    in UTF-8, not \\u escapes), and every refusal is the Flask view's."""
    srv = proxied
    op = operator_with_token(srv, tmp_path, "孙立")
    svc = enroll_service(srv, tmp_path, "customs-declaration.eport.example")
    other = enroll_service(srv, tmp_path, "manifest.eport.example")

    def cert_headers(d: Path) -> tuple[dict[str, str], dict[str, str]]:
        cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
        der = cert.public_bytes(serialization.Encoding.DER)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return (
            {"Client-Cert": ":" + base64.b64encode(der).decode() + ":"},
            {"X-SSL-Client-Cert": quote(pem)},
        )

    def mtls(server: Server, headers: dict[str, str], token: str) -> requests.Response:
        return requests.post(
            server.url + "/auth/introspect", data={"token": token}, headers=headers, timeout=10
        )

    revoked = srv.eport(
        "token", "--service", "customs-declaration", EPORT_CONFIG_DIR=str(op["cfg"])
    ).stdout.strip()
    requests.post(srv.url + "/auth/revoke", data={"token": revoked}, timeout=10)
    for token in (op["token"], revoked, "garbage", op["token"] + "x"):
        signed = signed_form(srv, svc, "/auth/introspect", {"token": token})
        assert signed.status_code == 200
        for headers in cert_headers(svc):
            r = mtls(srv, headers, token)
            assert r.status_code == 200 and r.content == signed.content, token
            assert r.headers["Cache-Control"] == "no-store" and r.headers["Pragma"] == "no-cache"
            assert r.headers["Content-Type"] == signed.headers["Content-Type"]
    active = mtls(srv, cert_headers(svc)[0], op["token"])
    assert active.json()["active"] is True and '"name":"孙立"'.encode() in active.content
    # Another service's certificate: that token is not of its audience.
    assert mtls(srv, cert_headers(other)[0], op["token"]).json() == {"active": False}
    # Not a service: invalid_client, as from the signed call.
    r = mtls(srv, cert_headers(op["op"])[0], op["token"])
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    # The header from an address that is not a trusted proxy; a garbage header.
    r = mtls(sqlite_server, cert_headers(svc)[0], op["token"])
    assert r.status_code == 401 and "not a trusted proxy" in r.text
    assert mtls(srv, {"Client-Cert": ":AAAA:"}, op["token"]).status_code == 400
    # No token: the OAuth error of the Flask view.
    r = requests.post(
        srv.url + "/auth/introspect", data={}, headers=cert_headers(svc)[0], timeout=10
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def _auth_events(srv: Server) -> list[dict[str, Any]]:
    """The token service's events, as the development customs auditor reads them."""
    from cli.client import CAClient
    from cli.keyfiles import load_identity

    d = srv.data_dir / "dev" / "auditors" / "customs"
    ident = load_identity(d / "auditor.pem", d / "auditor.key", d / "DEV-ONLY-passphrase.txt")
    events: list[dict[str, Any]] = CAClient(srv.url).call(
        "GET", "/auth/v1/events?limit=1000", identity=ident
    )["events"]
    return events


def test_failed_logins_count_per_client_behind_a_trusted_proxy(
    proxied: Server, sqlite_server: Server, tmp_path: Path
) -> None:
    """Behind the TLS proxy every request comes from the proxy's address: failed logins
    counted per that address let one stranger with 50 junk assertions lock every user
    out of login for five minutes. From a trusted proxy the client is the nearest
    untrusted address of X-Forwarded-For; from anyone else that header is ignored."""
    from tests.test_auth_flow import _assertion, _load

    def login(assertion: str, forwarded_for: str) -> requests.Response:
        return requests.post(
            proxied.url + "/auth/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": assertion,
            },
            headers={"X-Forwarded-For": forwarded_for},
            timeout=10,
        )

    # The stranger varies what it writes itself; the proxy appends its real address.
    junk = [login("junk", f"10.0.{i}.1, 203.0.113.7").status_code for i in range(51)]
    assert junk[:50] == [400] * 50 and junk[50] == 429
    # Everyone else behind the same proxy still signs in: with an assertion, and with a
    # certificate the proxy forwards.
    ent = enroll_enterprise(proxied, tmp_path, "Behind Proxy Co.")
    cert, key, chain = _load(ent)
    r = login(_assertion(proxied, cert, key, chain), "198.51.100.9")
    assert r.status_code == 200, r.text
    der = cert.public_bytes(serialization.Encoding.DER)
    r = requests.post(
        proxied.url + "/auth/login/mtls",
        headers={
            "Client-Cert": ":" + base64.b64encode(der).decode() + ":",
            "X-Forwarded-For": "198.51.100.10",
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    failed = [e for e in _auth_events(proxied) if e["type"] == "login.failed"]
    assert len([e for e in failed if e["client_addr"] == "203.0.113.7"]) == 50
    logins = {e["client_addr"] for e in _auth_events(proxied) if e["type"] == "login"}
    assert {"198.51.100.9", "198.51.100.10"} <= logins
    # A server that trusts no proxy believes no X-Forwarded-For.
    r = requests.post(
        sqlite_server.url + "/auth/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "junk"},
        headers={"X-Forwarded-For": "198.51.100.77"},
        timeout=10,
    )
    assert r.status_code == 400
    addrs = {e["client_addr"] for e in _auth_events(sqlite_server) if e["type"] == "login.failed"}
    assert "127.0.0.1" in addrs and "198.51.100.77" not in addrs
    # Nor the scheme (or host) a client forwards: the trailing-slash redirect is relative,
    # on the scheme and host the request came in with.
    for path in ("/audit", "/portal"):
        r = requests.get(
            sqlite_server.url + path,
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
            allow_redirects=False,
            timeout=10,
        )
        assert r.status_code == 308 and r.headers["Location"] == path + "/", r.headers


def test_a_trusted_proxy_network_written_with_host_bits_still_serves(tmp_path: Path) -> None:
    """EPORT_TRUSTED_PROXIES=127.0.0.1/8 (a network written with its host bits, which
    the services read as 127.0.0.0/8): eport serve starts, and the scheme forwarded from
    that network is believed, as its client certificates and addresses are. gunicorn's
    own check of forwarded_allow_ips refuses such a network. (The trailing-slash redirect
    that showed the scheme is relative now: it names no scheme or host.)"""
    srv, proc = start_server(
        tmp_path / "data", workers=1, extra_env={"EPORT_TRUSTED_PROXIES": "127.0.0.1/8"}
    )
    try:
        r = requests.get(
            srv.url + "/audit",
            headers={"X-Forwarded-Proto": "https"},
            allow_redirects=False,
            timeout=10,
        )
        assert r.status_code == 308 and r.headers["Location"] == "/audit/", r.headers
        assert requests.get(srv.url + "/ca/v1/health", timeout=10).json()["status"] == "ok"
    finally:
        stop(proc)


def test_events_after_an_id_past_the_databases_integers(sqlite_server: Server) -> None:
    """GET /auth/v1/events?after= beyond a 64-bit integer: a 400 problem, not a 500 from
    the database driver (OverflowError)."""
    from cli.client import CAClient, RemoteError
    from cli.keyfiles import load_identity

    d = sqlite_server.data_dir / "dev" / "auditors" / "customs"
    ident = load_identity(d / "auditor.pem", d / "auditor.key", d / "DEV-ONLY-passphrase.txt")
    client = CAClient(sqlite_server.url)
    with pytest.raises(RemoteError) as refused:
        client.call("GET", f"/auth/v1/events?after={10**23}", identity=ident)
    assert refused.value.status == 400
    assert f"after must be between {-(2**63)} and {2**63 - 1}" in str(refused.value)
    assert "events" in client.call("GET", f"/auth/v1/events?after={2**63 - 1}", identity=ident)
    # ASCII digits only, as the CA's listings (a full-width one was taken as 1)
    for query in ("limit=%EF%BC%91", "after=%EF%BC%91", "limit=1_0", "limit=+5"):
        with pytest.raises(RemoteError) as refused:
            client.call("GET", f"/auth/v1/events?{query}", identity=ident)
        assert refused.value.status == 400, query
        assert "must be an integer (ASCII digits)" in str(refused.value), query


def test_gateway_names_a_subject_with_a_non_ascii_name(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """An officer's subject carries its name (agency:customs:王小明): /auth/validate
    answered every token of such a subject 500 (a response header cannot hold it as it
    is). The name arrives percent-encoded UTF-8, by the fast path (GET) and the view
    (HEAD) alike; an ASCII subject is unchanged."""
    from urllib.parse import unquote

    srv = sqlite_server
    app = jrun(srv, "apply", "--class", "agency", "--agency", "customs", "--name", "王小明")
    grant = jrun(srv, "ra", "approve", app["id"], *srv.officer())
    out = tmp_path / "officer-wang"
    jrun(
        srv,
        "enroll",
        "--code",
        grant["enrollment_code"],
        "--profile",
        "agency",
        "--out",
        str(out),
    )
    cfg = tmp_path / "cfg"
    srv.eport("login", *creds(out), EPORT_CONFIG_DIR=str(cfg))
    token = srv.eport(
        "token", "--service", "customs-declaration", EPORT_CONFIG_DIR=str(cfg)
    ).stdout.strip()
    sub = jwt.decode(token, options={"verify_signature": False})["sub"]
    assert sub == "agency:customs:王小明"
    headers = {"Authorization": f"Bearer {token}", "X-Eport-Service": "customs-declaration"}
    for method in ("GET", "HEAD"):
        r = requests.request(method, srv.url + "/auth/validate", headers=headers, timeout=10)
        assert r.status_code == 200, (method, r.status_code)
        assert r.headers["X-Eport-Subject"] == "agency:customs:%E7%8E%8B%E5%B0%8F%E6%98%8E"
        assert unquote(r.headers["X-Eport-Subject"]) == sub
        assert r.headers["X-Eport-Agency"] == "customs"


def exchange_for_manifest(subject_token: str) -> dict[str, str]:
    """The form of an RFC 8693 exchange of ``subject_token`` for a manifest token."""
    return {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS,
        "audience": "manifest",
    }


def test_a_client_asks_for_fewer_scopes_never_more(sqlite_server: Server, tmp_path: Path) -> None:
    """RFC 6749 §3.3 and §6, RFC 8693 §2.1: ``scope`` narrows the token to what the client
    asks, among what the user has there; a scope not granted is ``invalid_scope``. The
    parameter was ignored: a client asking for less got every scope of the user (probe
    24). And a refresh naming two services (audience and resource) is refused, not
    answered for one of them."""
    srv = sqlite_server
    op = operator_with_token(srv, tmp_path, "Scope Li")
    svc = enroll_service(srv, tmp_path, "customs-declaration.eport.example")
    base = exchange_for_manifest(op["token"])

    def scopes(r: requests.Response) -> list[str]:
        assert r.status_code == 200, r.text
        claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
        assert claims["scope"] == r.json()["scope"]
        return str(claims["scope"]).split(" ")

    every = scopes(signed_form(srv, svc, "/auth/token", base))
    assert len(every) >= 2, every  # the policies give this operator several at manifest
    assert scopes(signed_form(srv, svc, "/auth/token", {**base, "scope": every[-1]})) == [every[-1]]
    for bad in ("admin:all", f"{every[0]} admin:all", "", f"{every[0]}  {every[1]}"):
        r = signed_form(srv, svc, "/auth/token", {**base, "scope": bad})
        assert r.status_code == 400 and r.json()["error"] == "invalid_scope", (bad, r.text)

    rt = json.loads(next(op["cfg"].glob("session-*.json")).read_text())["refresh_token"]
    refresh = {"grant_type": "refresh_token", "refresh_token": rt, "audience": "manifest"}
    r = requests.post(srv.url + "/auth/token", data={**refresh, "scope": "admin:all"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope", r.text
    r = requests.post(
        srv.url + "/auth/token", data={**refresh, "resource": "tax-refund"}, timeout=10
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_target", r.text
    # Refused requests left the refresh token usable (nothing rotated).
    r = requests.post(srv.url + "/auth/token", data={**refresh, "scope": every[0]}, timeout=10)
    assert scopes(r) == [every[0]]


def test_exchange_refuses_what_it_would_ignore_and_revocation_names_who(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """RFC 8693 §2.1: an actor_token, or a resource naming another service than the
    audience, was ignored and a token issued anyway (token probe 24); refused now. And
    a session ended by its refresh token at /auth/revoke (RFC 7009: anyone holding it
    may) is logged with its subject and the address it came from, as a logout is."""
    srv = sqlite_server
    op = operator_with_token(srv, tmp_path, "Revoke Li")
    svc = enroll_service(srv, tmp_path, "customs-declaration.eport.example")
    base = exchange_for_manifest(op["token"])
    for extra, error in (
        ({"actor_token": "garbage", "actor_token_type": ACCESS}, "invalid_request"),
        ({"resource": "tax-refund"}, "invalid_target"),
    ):
        r = signed_form(srv, svc, "/auth/token", {**base, **extra})
        assert r.status_code == 400 and r.json()["error"] == error, (extra, r.text)
    assert signed_form(srv, svc, "/auth/token", {**base, "resource": "manifest"}).ok

    rt = json.loads(next(op["cfg"].glob("session-*.json")).read_text())["refresh_token"]
    r = requests.post(
        srv.url + "/auth/revoke",
        data={"token": rt, "token_type_hint": "refresh_token"},
        timeout=10,
    )
    assert r.status_code == 200
    ended = [e for e in _auth_events(srv) if e["type"] == "session.ended"][-1]
    subject = ended["subject"] or ""
    assert subject.startswith("op:") and subject.endswith(":S1"), ended
    assert ended["client_addr"] == "127.0.0.1" and ended["detail"]["reason"] == (
        "refresh token revoked"
    ), ended
