"""Authorization and disclosure fixes from probe 16, against a real server.

* F2: a relying party the user may not use gets ``access_denied`` with a generic
  description: not the USCC, operator id or officer's name (nor, with ``prompt=none``,
  why the certificate could not sign in; nor, at the token endpoint, who lost access).
  The details are in the token service's events.
* F5: a revoked or held *caller* certificate (introspection, token exchange,
  ``/auth/v1/roles``, ``/auth/v1/events``) failed to authenticate: 401 ``invalid_client``
  at the OAuth endpoints, a 401 problem at ``/auth/v1/``; the *subject*'s certificate in a
  login stays ``invalid_grant``.
* F6: the access token of the code flow, which the client can read, carries only the
  identity claims the granted OpenID scopes release (as UserInfo does).
* The OpenAPI document describes the audit API's ``audit:read`` Bearer token.

The server trusts 127.0.0.1 as its TLS-terminating proxy, as in ``test_oidc.py``, whose
browserless agent this reuses.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca.signedreq import sign_request
from tests.conftest import Server, start_server, stop
from tests.helpers import (
    cert_of,
    creds,
    enroll_enterprise,
    enroll_operator,
    enroll_service,
    jrun,
)
from tests.helpers import grant_roles as grant
from tests.test_oidc import Agent, authorize, redeem

PASSPHRASE = b"test-passphrase-123"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
GENERIC = "the user may not use this service"
IDENTITY = ("subject_class", "name", "uscc", "operator_id", "agency_id")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("probe16")
    server, proc = start_server(
        root / "data", extra_env={"EPORT_AUTH_TRUSTED_PROXIES": "127.0.0.1/32"}
    )
    try:
        yield server
    finally:
        stop(proc)


def signed(
    srv: Server,
    d: Path,
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str | None = None,
) -> requests.Response:
    """A request signed with the credential in ``d`` (cert.pem, key.pem)."""
    key = serialization.load_pem_private_key((d / "key.pem").read_bytes(), PASSPHRASE)
    chain = [x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())]
    now = datetime.datetime.now(datetime.UTC)
    jws = sign_request(key, chain, method, path, body, now)  # type: ignore[arg-type]
    headers = {"Authorization": f"EPort-Signed {jws}"}
    if content_type:
        headers["Content-Type"] = content_type
    return requests.request(method, srv.url + path, data=body, headers=headers, timeout=10)


def signed_form(srv: Server, d: Path, path: str, fields: dict[str, str]) -> requests.Response:
    body = urlencode(fields).encode()
    return signed(srv, d, "POST", path, body, "application/x-www-form-urlencoded")


def forwarded(d: Path) -> dict[str, str]:
    """The certificate in ``d`` as the trusted proxy forwards it (RFC 9440)."""
    der = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    return {"Client-Cert": ":" + base64.b64encode(der).decode() + ":"}


def serial(d: Path) -> str:
    return format(cert_of(d).serial_number, "x")


def cli_token(srv: Server, who: Path, cfg: Path, service: str) -> str:
    srv.eport("login", *creds(who), EPORT_CONFIG_DIR=str(cfg))
    return srv.eport("token", "--service", service, EPORT_CONFIG_DIR=str(cfg)).stdout.strip()


def auth_events(srv: Server) -> list[dict[str, Any]]:
    """The token service's events, as the development customs auditor reads them."""
    from cli.client import CAClient
    from cli.keyfiles import load_identity

    d = srv.dev / "auditors" / "customs"
    ident = load_identity(d / "auditor.pem", d / "auditor.key", d / "DEV-ONLY-passphrase.txt")
    events: list[dict[str, Any]] = CAClient(srv.url).call(
        "GET", "/auth/v1/events?limit=1000", identity=ident
    )["events"]
    return events


def settle() -> None:
    """Wait out the token service's status cache (2 s per certificate, in each of the
    server's processes): after it, every process has asked the CA afresh."""
    time.sleep(2.5)


def claims_of(token: str) -> dict[str, Any]:
    out: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return out


# -- F2 ----------------------------------------------------------------------------------


def test_access_denied_names_nobody_to_the_relying_party(srv: Server, tmp_path: Path) -> None:
    ent = enroll_enterprise(srv, tmp_path, "Denied Trading Co.")
    org_id = cert_of(ent).subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
    uscc_text = str(org_id[0].value).removeprefix("NTRCN-")
    op = enroll_operator(srv, ent, tmp_path, "Q7")  # no role: nothing at sample-a
    officer = srv.dev / "officers" / "customs"
    officer_pem = (officer / "officer.pem").read_text()
    officer_cert = x509.load_pem_x509_certificate(officer_pem.encode())
    officer_cn = str(officer_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    for agent, secrets_ in (
        (Agent(srv, (op / "cert.pem").read_text()), [uscc_text, "Q7", "Operator Q7", "op:"]),
        (Agent(srv, officer_pem), [officer_cn, "customs", "agency:"]),
    ):
        f = authorize(agent, "sample-a")
        assert f.response.status_code == 302, f.response.text
        assert f.query["error"] == ["access_denied"] and "code" not in f.query
        assert f.query["error_description"] == [GENERIC], f.query
        location = f.response.headers["Location"]
        for secret in secrets_:
            assert secret not in location and secret.replace(" ", "+") not in location, secret
    # Who was refused, and where, is in the token service's events (the user's own and
    # the auditors'), not in the redirect.
    denied = [e for e in auth_events(srv) if e["type"] == "oidc.denied"]
    subjects = {e["subject"] for e in denied}
    assert f"op:{uscc_text}:Q7" in subjects and f"agency:customs:{officer_cn}" in subjects
    assert all(e["service"] == "sample-a" for e in denied)


def test_prompt_none_and_late_refusals_name_nobody_either(srv: Server, tmp_path: Path) -> None:
    ent = enroll_enterprise(srv, tmp_path, "Quiet Trading Co.")
    op = enroll_operator(srv, ent, tmp_path, "Z9", "data-entry")
    # prompt=none with a held certificate: login_required, without the why.
    held = enroll_operator(srv, ent, tmp_path, "H1", "data-entry")
    jrun(srv, "suspend", "--serial", serial(held), *srv.officer())
    f = authorize(Agent(srv, (held / "cert.pem").read_text()), "sample-a", prompt="none")
    assert f.query["error"] == ["login_required"], f.query
    assert f.query["error_description"] == ["the e-port certificate cannot sign in"], f.query
    # The user lost access between the code and its redemption: refused at the token
    # endpoint (to the client) without naming the user.
    f = authorize(Agent(srv, (op / "cert.pem").read_text()), "sample-a")
    assert "code" in f.query, f.query
    grant(srv, ent, "Z9", "finance")  # data-entry taken away: nothing at sample-a
    r = redeem(srv, f)
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_scope",
        "error_description": GENERIC,
    }, r.text
    assert "Z9" not in r.text


# -- F5 ----------------------------------------------------------------------------------


def test_a_revoked_or_held_caller_fails_to_authenticate(srv: Server, tmp_path: Path) -> None:
    ent = enroll_enterprise(srv, tmp_path, "Caller Co.")
    op = enroll_operator(srv, ent, tmp_path, "C1", "declaration", "data-entry")
    token = cli_token(srv, op, tmp_path / "cfg-op", "customs-declaration")
    svc = enroll_service(srv, tmp_path, "customs-declaration.eport.example")
    introspect = {"token": token}
    exchange = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": ACCESS,
        "audience": "manifest",
    }
    mtls = srv.url + "/auth/introspect"
    # Controls: the good service introspects (signed and forwarded) and exchanges.
    assert signed_form(srv, svc, "/auth/introspect", introspect).json()["active"] is True
    r = requests.post(mtls, data=introspect, headers=forwarded(svc), timeout=10)
    assert r.json()["active"] is True
    assert signed_form(srv, svc, "/auth/token", exchange).status_code == 200

    def invalid_client(r: requests.Response) -> bool:
        return r.status_code == 401 and r.json()["error"] == "invalid_client"

    jrun(srv, "suspend", "--serial", serial(svc), *srv.officer())
    settle()
    r = signed_form(srv, svc, "/auth/introspect", introspect)
    assert invalid_client(r), r.text
    assert r.json()["error_description"].endswith("is on hold; it cannot authenticate a call")
    assert r.headers["WWW-Authenticate"].startswith("EPort-Signed")
    assert r.headers["Cache-Control"] == "no-store"
    r = requests.post(mtls, data=introspect, headers=forwarded(svc), timeout=10)
    assert invalid_client(r), r.text  # the fast path leaves it to the view: the same answer
    r = signed_form(srv, svc, "/auth/token", exchange)
    assert invalid_client(r), r.text
    assert "on hold" in r.json()["error_description"]
    jrun(srv, "resume", "--serial", serial(svc), *srv.officer())
    settle()
    assert signed_form(srv, svc, "/auth/introspect", introspect).status_code == 200
    jrun(srv, "revoke", "--serial", serial(svc), "--reason", "keyCompromise", *srv.officer())
    settle()
    r = signed_form(srv, svc, "/auth/token", exchange)
    assert invalid_client(r), r.text
    assert "is revoked" in r.json()["error_description"]

    # /auth/v1/: a 401 problem, not an OAuth error.
    held = enroll_enterprise(srv, tmp_path, "Held Co.")
    gone = enroll_enterprise(srv, tmp_path, "Gone Co.")
    roles = json.dumps(
        {"operator_id": "A1", "roles": ["declaration"], "authorization": "a1a1"}
    ).encode()

    def grant_roles() -> requests.Response:
        return signed(srv, held, "POST", "/auth/v1/roles", roles, "application/json")

    def read_events() -> requests.Response:
        return signed(srv, gone, "GET", "/auth/v1/events?limit=5")

    assert grant_roles().status_code == 200 and read_events().status_code == 200
    jrun(srv, "suspend", "--serial", serial(held), *srv.officer())
    jrun(srv, "revoke", "--serial", serial(gone), "--reason", "keyCompromise", *srv.officer())
    settle()
    for call, who, state in ((grant_roles, held, "on hold"), (read_events, gone, "revoked")):
        r = call()
        assert r.status_code == 401, r.text
        assert r.headers["Content-Type"] == "application/problem+json", r.text
        problem = r.json()
        assert problem["status"] == 401 and "error" not in problem
        assert problem["detail"] == (
            f"the certificate {serial(who)} is {state}; it cannot authenticate a call"
        )
        assert r.headers["WWW-Authenticate"].startswith("EPort-Signed")


def test_a_role_grant_asks_the_ca_now_not_the_status_cache(srv: Server, tmp_path: Path) -> None:
    """A role grant lasts beyond the request: signed by a certificate whose revocation the
    CA has answered, it is refused at once. With the status cached (2 s, per process) an
    enterprise that had just granted kept granting for two seconds after its
    keyCompromise (race probe, session 24)."""
    ent = enroll_enterprise(srv, tmp_path, "Cached Co.")
    roles = json.dumps(
        {"operator_id": "C1", "roles": ["declaration"], "authorization": "c1c1"}
    ).encode()
    for _ in range(6):  # every worker has the certificate's status (good) cached now
        r = signed(srv, ent, "POST", "/auth/v1/roles", roles, "application/json")
        assert r.status_code == 200, r.text
    # A member it does not read is refused, not dropped (fuzzing probe 24).
    r = signed(
        srv, ent, "POST", "/auth/v1/roles",
        json.dumps({"operator_id": "C1", "roles": [], "role": ["manifest"]}).encode(),
        "application/json",
    )  # fmt: skip
    assert (
        r.status_code == 400 and "takes operator_id, roles, authorization; not 'role'" in r.text
    ), r.text
    body = json.dumps({"reason": "keyCompromise"}).encode()
    r = signed(
        srv, ent, "POST", f"/ca/v1/certificates/{serial(ent)}/revoke", body, "application/json"
    )
    assert r.status_code == 200, r.text
    for _ in range(6):  # well within the cache's two seconds
        r = signed(srv, ent, "POST", "/auth/v1/roles", roles, "application/json")
        assert r.status_code == 401 and "is revoked" in r.json()["detail"], r.text


def test_the_subjects_own_certificate_in_a_login_stays_invalid_grant(
    srv: Server, tmp_path: Path
) -> None:
    """RFC 6749 §5.2: the grant (the user's certificate login) is what is bad."""
    ent = enroll_enterprise(srv, tmp_path, "Held Login Co.")
    jrun(srv, "suspend", "--serial", serial(ent), *srv.officer())
    r = requests.post(srv.url + "/auth/login/mtls", headers=forwarded(ent), timeout=10)
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_grant",
        "error_description": "the certificate is on hold",
    }, r.text


# -- F6 ----------------------------------------------------------------------------------


def test_the_code_flows_access_token_carries_only_what_the_scopes_release(
    srv: Server, tmp_path: Path
) -> None:
    ent = enroll_enterprise(srv, tmp_path, "Scoped Trading Co.")
    op = enroll_operator(srv, ent, tmp_path, "S5", "data-entry")
    cli = claims_of(cli_token(srv, op, tmp_path / "cfg", "sample-a"))
    assert {c: cli.get(c) for c in IDENTITY} == {
        "subject_class": "operator",
        "name": "Operator S5",
        "uscc": cli["uscc"],
        "operator_id": "S5",
        "agency_id": None,
    } and cli["uscc"]
    for scope, released in (
        ("openid", set()),
        ("openid profile", {"name"}),
        ("openid eport", {"subject_class", "uscc", "operator_id"}),
        ("openid profile eport", {"subject_class", "name", "uscc", "operator_id"}),
    ):
        agent = Agent(srv, (op / "cert.pem").read_text())
        f = authorize(agent, "sample-a", scope=scope)
        r = redeem(srv, f)
        assert r.status_code == 200, r.text
        at = r.json()["access_token"]
        claims = claims_of(at)
        assert {c for c in IDENTITY if c in claims} == released, (scope, claims)
        for c in released:
            assert claims[c] == cli[c], (scope, c)
        # What the token is for is unchanged: its subject, scopes, binding, session.
        assert claims["sub"] == cli["sub"] and claims["scope"] == "sample:use"
        assert claims["cnf"] == cli["cnf"] and claims["client_id"] == "sample-a"
        # UserInfo tells the client the same claims.
        info = requests.get(
            srv.url + "/auth/userinfo", headers={"Authorization": f"Bearer {at}"}, timeout=10
        ).json()
        assert set(info) - {"sub"} == released, (scope, info)
        # The token still validates at its service's gateway.
        v = requests.get(
            srv.url + "/auth/validate",
            headers={"Authorization": f"Bearer {at}", "X-Eport-Service": "sample-a"},
            timeout=10,
        )
        assert v.status_code == 200 and v.headers["X-Eport-Subject"] == cli["sub"]
        assert ("X-Eport-USCC" in v.headers) == ("uscc" in released)


# -- the OpenAPI document ---------------------------------------------------------------


def test_openapi_describes_the_audit_bearer_token(srv: Server, tmp_path: Path) -> None:
    doc = requests.get(srv.url + "/ca/v1/openapi.json", timeout=10).json()
    scheme = doc["components"]["securitySchemes"]["auditToken"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    either = [{"signedRequest": []}, {"auditToken": ["audit:read"]}]
    paths = {
        "/ca/v1/audit/entries": "?start=0&count=1",
        "/ca/v1/audit/events": "?limit=1",
        "/ca/v1/audit/event-digests": "",
        "/ca/v1/audit/certificates": "",
    }
    for path in paths:
        assert doc["paths"][path]["get"]["security"] == either, path
    inclusion = doc["paths"]["/ca/v1/audit/proof/inclusion"]["get"]["security"]
    assert inclusion == [{}, *either]  # by index: public
    named = {
        n
        for ops in doc["paths"].values()
        for o in ops.values()
        for r in o.get("security", [])
        for n in r
    }
    assert named == set(doc["components"]["securitySchemes"])
    # And what it says holds: an auditor's audit:read token reads each of them.
    auditor = srv.dev / "auditors" / "customs"
    cfg = tmp_path / "cfg"
    pw = (auditor / "DEV-ONLY-passphrase.txt").read_text().strip()
    srv.eport(
        "login",
        "--cert",
        str(auditor / "auditor.pem"),
        "--key",
        str(auditor / "auditor.key"),
        EPORT_CONFIG_DIR=str(cfg),
        EPORT_PASSPHRASE=pw,
    )
    token = srv.eport("token", "--service", "audit", EPORT_CONFIG_DIR=str(cfg)).stdout.strip()
    bearer = {"Authorization": f"Bearer {token}"}
    ent = enroll_enterprise(srv, tmp_path, "Logged Co.")
    paths["/ca/v1/audit/proof/inclusion"] = f"?serial={serial(ent)}"
    for path, query in paths.items():
        r = requests.get(srv.url + path + query, headers=bearer, timeout=10)
        assert r.status_code == 200, (path, r.text)
        assert requests.get(srv.url + path + query, timeout=10).status_code == 401, path
