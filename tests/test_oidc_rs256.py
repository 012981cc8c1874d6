"""RS256 ID tokens against a real e-port server: OpenID Connect Discovery 1.0 §3 ("The
algorithm RS256 MUST be included" in ``id_token_signing_alg_values_supported``) and a
client registered with ``id_token_signed_response_alg = "RS256"`` in policy.

``sample-b`` is registered for RS256 here, ``sample-a`` says nothing (ES256, as every
client registered before RS256 keys existed). The RS256 ID tokens are verified by
relying-party code that is not ours: joserfc against the published JWKS (an RP that
accepts RS256 only) and the sample web service's Authlib client; the forgeries go to the
one place the provider itself verifies ID tokens (``id_token_hint``) and to the places
that take access tokens. Rotation: ``eport auth rotate-keys`` rotates the RSA key too.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from tests.conftest import free_port
from tests.helpers import jrun
from tests.test_oidc import (
    PUBLIC_PORT,
    Agent,
    Receiver,
    World,
    authorize,
    redeem,
    redirect_uri,
    sample_service,
    serving,
    validate,
    write_policies,
)

RS_CLIENT = "sample-b"
ES_CLIENT = "sample-a"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("oidc-rs256")
    receiver = Receiver()
    example_port = free_port()
    policies = write_policies(
        tmp / "policies",
        backchannel={
            ES_CLIENT: receiver.url + "/bc/sample-a",
            RS_CLIENT: receiver.url + "/bc/sample-b",
        },
    )
    services = policies / "services.toml"
    line = f'redirect_uris = ["{redirect_uri(RS_CLIENT)}"]'
    text = services.read_text()
    assert text.count(line) == 1
    services.write_text(text.replace(line, line + '\nid_token_signed_response_alg = "RS256"'))
    with serving(tmp, policies, receiver, example_port, "RS256 Trading Co.", "R1") as w:
        yield w


def discovery(world: World) -> dict[str, Any]:
    url = world.server.url + "/auth/.well-known/openid-configuration"
    doc: dict[str, Any] = requests.get(url, timeout=10).json()
    return doc


def jwks(world: World) -> dict[str, Any]:
    doc: dict[str, Any] = requests.get(discovery(world)["jwks_uri"], timeout=10).json()
    return doc


def insisting_on(alg: str, world: World, token: str, **expected: str) -> dict[str, Any]:
    """What a relying party that accepts ``alg`` only does with an ID token: joserfc, the
    JWKS as published, the claims it must check (OIDC Core §3.1.3.7)."""
    tok = jose_jwt.decode(token, KeySet.import_key_set(jwks(world)), algorithms=[alg])
    jose_jwt.JWTClaimsRegistry(
        now=int(time.time()),
        leeway=30,
        iss={"essential": True, "value": world.server.url + "/auth"},
        exp={"essential": True},
        iat={"essential": True},
        sid={"essential": True},
        **{k: {"essential": True, "value": v} for k, v in expected.items()},
    ).validate(tok.claims)
    return {"header": dict(tok.header), "claims": dict(tok.claims)}


def code_flow(agent: Agent, client: str, **params: str) -> dict[str, Any]:
    f = authorize(agent, client, **params)
    assert f.response.status_code == 302 and "code" in f.query, f.response.headers
    r = redeem(agent.server, f)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    body["nonce"] = f.params["nonce"]
    return body


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def reheaded(token: str, **header: Any) -> str:
    h, payload, sig = token.split(".")
    old = json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))
    return ".".join([b64(json.dumps({**old, **header}).encode()), payload, sig])


# -- discovery and the JWKS ---------------------------------------------------------------


def test_discovery_lists_rs256_and_passes_authlibs_validators(world: World) -> None:
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
    from authlib.oidc.discovery import OpenIDProviderMetadata

    doc = discovery(world)
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    # Access tokens are not ID tokens: still ES256 only.
    assert doc["access_token_signing_alg_values_supported"] == ["ES256"]
    AuthorizationServerMetadata(doc).validate()
    OpenIDProviderMetadata(doc).validate()  # every member, RS256 included


def test_the_jwks_publishes_both_families(world: World) -> None:
    keys = jwks(world)["keys"]
    by_alg: dict[str, list[dict[str, Any]]] = {}
    for k in keys:
        by_alg.setdefault(k["alg"], []).append(k)
    assert sorted(by_alg) == ["ES256", "RS256"]
    # active + next of each (+ a retired one of each once the rotation test has run)
    assert len(by_alg["ES256"]) >= 2 and len(by_alg["RS256"]) == len(by_alg["ES256"])
    for k in by_alg["RS256"]:
        assert k["kty"] == "RSA" and k["use"] == "sig" and k["e"] == "AQAB"
        n = base64.urlsafe_b64decode(k["n"] + "=" * (-len(k["n"]) % 4))
        assert len(n) * 8 == 3072 and n[0] & 0x80  # minimal octets, 3072 bits
        assert RSAKey.import_key(k).thumbprint() == k["kid"]  # RFC 7638, as joserfc sees it
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(k)


# -- the flow -----------------------------------------------------------------------------


def test_an_rs256_client_gets_rs256_id_tokens_and_an_es256_client_is_unchanged(
    world: World,
) -> None:
    srv = world.server
    agent = world.agent()
    rs = code_flow(agent, RS_CLIENT)
    got = insisting_on("RS256", world, rs["id_token"], aud=RS_CLIENT, nonce=rs["nonce"])
    header, claims = got["header"], got["claims"]
    assert header["typ"] == "JWT" and header["alg"] == "RS256"
    rsa_kids = {k["kid"] for k in jwks(world)["keys"] if k["alg"] == "RS256"}
    assert header["kid"] in rsa_kids
    # OIDC Core §3.1.3.6: at_hash with RS256's hash, SHA-256.
    digest = hashlib.sha256(rs["access_token"].encode()).digest()[:16]
    assert claims["at_hash"] == b64(digest) and claims["sub"].endswith(":R1")
    # An RP that insists on ES256 does not take it (the header's alg is not its choice).
    with pytest.raises(JoseError):
        jose_jwt.decode(rs["id_token"], KeySet.import_key_set(jwks(world)), algorithms=["ES256"])
    # The access token of the same flow is ES256, as every access token, and works.
    assert (
        jose_jwt.decode(
            rs["access_token"], KeySet.import_key_set(jwks(world)), algorithms=["ES256"]
        ).header["typ"]
        == "at+jwt"
    )
    assert validate(srv, rs["access_token"], RS_CLIENT) == 200
    # The ES256 client (registered without an alg), in the same SSO session: as before.
    es = code_flow(agent, ES_CLIENT)
    got_es = insisting_on("ES256", world, es["id_token"], aud=ES_CLIENT, nonce=es["nonce"])
    assert got_es["header"]["alg"] == "ES256" and got_es["claims"]["sid"] == claims["sid"]
    assert got_es["header"]["kid"] not in rsa_kids


def test_an_rs256_id_token_is_no_access_token(world: World) -> None:
    srv = world.server
    rs = code_flow(world.agent(), RS_CLIENT)
    for service in (RS_CLIENT, ES_CLIENT):
        assert validate(srv, rs["id_token"], service) == 401
    info = requests.get(
        srv.url + "/auth/userinfo",
        headers={"Authorization": "Bearer " + rs["id_token"]},
        timeout=10,
    )
    assert info.status_code == 401 and 'error="invalid_token"' in info.headers["WWW-Authenticate"]
    # An access token forged as RS256 under the RSA key's kid: refused before any key.
    claims = jose_jwt.decode(
        rs["access_token"], KeySet.import_key_set(jwks(world)), algorithms=["ES256"]
    ).claims
    rs_kid = jose_jwt.decode(
        rs["id_token"], KeySet.import_key_set(jwks(world)), algorithms=["RS256"]
    ).header["kid"]
    forged = ".".join(
        [
            b64(json.dumps({"alg": "RS256", "typ": "at+jwt", "kid": rs_kid}).encode()),
            b64(json.dumps(claims).encode()),
            rs["id_token"].split(".")[2],
        ]
    )
    assert validate(srv, forged, RS_CLIENT) == 401


def test_the_authlib_sample_service_signs_in_with_rs256(world: World) -> None:
    """The sample web service (Authlib's Flask client, no E-Port code) registered for RS256,
    told to accept RS256 ID tokens only: Authlib validates the ID token against the JWKS
    and signs the user in. Its back channel (``ID_TOKEN_ALG=RS256``) then takes the RS256
    logout token the provider sends when the user signs out, and ends the local session."""
    agent = world.agent()
    with sample_service(world, RS_CLIENT, ID_TOKEN_ALG="RS256") as app:
        client = app.extensions["authlib.integrations.flask_client"].create_client("eport")
        with app.app_context():
            metadata = client.load_server_metadata()  # fetched once, then kept
        # Authlib takes the algorithms it accepts from the provider's metadata: narrow it.
        metadata["id_token_signing_alg_values_supported"] = ["RS256"]
        web = app.test_client()
        base = f"https://{RS_CLIENT}.eport.example:{PUBLIC_PORT}"
        start = web.get("/login", base_url=base)
        assert start.status_code == 302
        back = agent.get(start.headers["Location"])
        assert back.status_code == 302
        callback = urlsplit(back.headers["Location"])
        ok = web.get(callback.path + "?" + callback.query, base_url=base)
        assert ok.status_code == 302, ok.data
        assert "Operator R1" in web.get("/", base_url=base).data.decode()
        (login,) = app.extensions["sample.logins"]._by_id.values()
        header = json.loads(base64.urlsafe_b64decode(login.id_token.split(".")[0] + "==="))
        assert header["alg"] == "RS256"

        sid = json.loads(base64.urlsafe_b64decode(login.id_token.split(".")[1] + "==="))["sid"]
        before = len(world.receiver.posts)
        registered = f"https://{RS_CLIENT}.eport.example:{PUBLIC_PORT}/signed-out"
        out = agent.get(
            "/auth/end_session",
            cert=False,
            id_token_hint=login.id_token,
            post_logout_redirect_uri=registered,
        )
        assert out.status_code == 303
        deadline = time.monotonic() + 10
        while True:  # the policy sends sample-b's logout token to the test's receiver
            sent = [
                form["logout_token"][0]
                for path, form in world.receiver.posts[before:]
                if path.endswith(RS_CLIENT)
            ]
            if sent:
                break
            assert time.monotonic() < deadline, world.receiver.posts
            time.sleep(0.2)
        (token,) = sent
        assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==="))["alg"] == "RS256"
        ended = web.post("/backchannel-logout", data={"logout_token": token}, base_url=base)
        assert ended.status_code == 200, ended.data
        assert not app.extensions["sample.logins"]._by_id, sid


# -- forgeries where the provider verifies an ID token -----------------------------------


def test_forged_and_alg_swapped_id_token_hints_are_refused(world: World) -> None:
    srv = world.server
    agent = world.agent()
    rs = code_flow(agent, RS_CLIENT)
    es = code_flow(agent, ES_CLIENT)
    keys = jwks(world)["keys"]
    rs_tok, es_tok = rs["id_token"], es["id_token"]
    rs_kid = json.loads(base64.urlsafe_b64decode(rs_tok.split(".")[0] + "==="))["kid"]
    ec_kid = json.loads(base64.urlsafe_b64decode(es_tok.split(".")[0] + "==="))["kid"]
    rsa_jwk = next(k for k in keys if k["kid"] == rs_kid)
    rsa_pem = RSAKey.import_key(rsa_jwk).as_pem(private=False)
    hs_input = reheaded(rs_tok, alg="HS256").rsplit(".", 1)[0]
    hs = hs_input + "." + b64(hmac.new(rsa_pem, hs_input.encode(), "sha256").digest())
    h, payload, sig = rs_tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    registered = f"https://{RS_CLIENT}.eport.example:{PUBLIC_PORT}/signed-out"
    forged = {
        "RS256 token relabelled ES256": reheaded(rs_tok, alg="ES256"),
        "ES256 token relabelled RS256": reheaded(es_tok, alg="RS256"),
        "RS256 signature under the EC key's kid": reheaded(rs_tok, kid=ec_kid),
        "ES256 signature under the RSA key's kid": reheaded(es_tok, kid=rs_kid),
        "alg none": reheaded(rs_tok, alg="none").rsplit(".", 1)[0] + ".",
        "HS256 keyed with the published RSA key": hs,
        "sid changed": ".".join([h, b64(json.dumps({**claims, "sid": "x"}).encode()), sig]),
        "signature cut": rs_tok[:-10],
    }
    for what, token in forged.items():
        r = agent.get(
            "/auth/end_session",
            cert=False,
            id_token_hint=token,
            post_logout_redirect_uri=registered,
        )
        assert r.status_code == 400 and "Location" not in r.headers, what
        assert "not valid" in r.text, what
    assert agent.get("/portal/", cert=False).status_code == 200  # still signed in
    # The genuine RS256 hint of this session logs out at once; the back channel tells
    # both clients, each with a logout token signed as its ID tokens are (Back-Channel
    # Logout 1.0 §2.4: "The same keys are used to sign ... as are used for ID Tokens").
    before = len(world.receiver.posts)
    r = agent.get(
        "/auth/end_session",
        cert=False,
        id_token_hint=rs_tok,
        post_logout_redirect_uri=registered,
        state="s",
    )
    assert r.status_code == 303 and r.headers["Location"] == registered + "?state=s"
    assert validate(srv, rs["access_token"], RS_CLIENT) == 401
    deadline = time.monotonic() + 10
    while True:
        mine = [
            (path, form["logout_token"][0])
            for path, form in world.receiver.posts[before:]
            if json.loads(base64.urlsafe_b64decode(form["logout_token"][0].split(".")[1] + "==="))[
                "sid"
            ]
            == claims["sid"]
        ]
        if len(mine) == 2:
            break
        assert time.monotonic() < deadline, world.receiver.posts
        time.sleep(0.2)
    key_set = KeySet.import_key_set(jwks(world))
    for path, token in mine:
        alg = "RS256" if path.endswith(RS_CLIENT) else "ES256"
        tok = jose_jwt.decode(token, key_set, algorithms=[alg])
        assert tok.header["typ"] == "logout+jwt" and tok.claims["aud"] == path.rsplit("/", 1)[1]


# -- rotation -----------------------------------------------------------------------------


def test_key_rotation_covers_the_rsa_key(world: World) -> None:
    srv = world.server
    agent = world.agent()
    old = code_flow(agent, RS_CLIENT)["id_token"]
    old_kid = jose_jwt.decode(old, KeySet.import_key_set(jwks(world)), algorithms=["RS256"]).header[
        "kid"
    ]
    published_next = {
        k["kid"] for k in jwks(world)["keys"] if k["alg"] == "RS256" and k["kid"] != old_kid
    }
    out = jrun(srv, "auth", "rotate-keys", "--data-dir", str(srv.data_dir), "--dev", "--force")
    promoted = out["active_by_alg"]
    assert out["active"] == promoted["ES256"]
    # The new RSA signer is the key that was already published as next.
    assert {promoted["RS256"]} == published_next
    states = {k["kid"]: (k["state"], k["alg"]) for k in out["keys"]}
    assert states[old_kid] == ("retired", "RS256")
    assert states[promoted["RS256"]] == ("active", "RS256")
    deadline = time.monotonic() + 20  # every server process re-reads its keys within 5 s
    while True:
        new = code_flow(agent, RS_CLIENT)
        kid = jose_jwt.decode(
            new["id_token"], KeySet.import_key_set(jwks(world)), algorithms=["RS256"]
        ).header["kid"]
        if kid == promoted["RS256"]:
            break
        assert time.monotonic() < deadline, "the server did not start signing with the new key"
        time.sleep(0.5)
    insisting_on("RS256", world, new["id_token"], aud=RS_CLIENT, nonce=new["nonce"])
    # The ID token signed before the rotation still verifies: its key stays published.
    published = {k["kid"]: k["alg"] for k in jwks(world)["keys"]}
    assert published[old_kid] == "RS256" and published[promoted["RS256"]] == "RS256"
    insisting_on("RS256", world, old, aud=RS_CLIENT)
    # Access tokens moved to the new ES256 key, not to an RSA one.
    at_kid = jose_jwt.decode(
        new["access_token"], KeySet.import_key_set(jwks(world)), algorithms=["ES256"]
    ).header["kid"]
    assert published[at_kid] == "ES256"


@pytest.mark.slow
def test_one_key_family_rotates_alone(world: World) -> None:
    """``--alg`` rotates one family and leaves the other's keys as they were (an emergency
    rotation of the access tokens' key need not touch the RSA keys, nor wait for them)."""
    srv = world.server
    args = ("auth", "rotate-keys", "--data-dir", str(srv.data_dir), "--dev")
    before = {k["kid"]: k["state"] for k in jrun(srv, *args, "--alg", "RS256", "--force")["keys"]}
    early = srv.eport(*args, check=False)  # both next keys younger than the JWKS max-age
    assert early.returncode == 1 and "use --force)" in early.stderr, early.stderr
    assert "--alg" not in early.stderr  # it would be refused the same way
    _age_next_key(srv.data_dir / "auth.db", "ES256")
    early = srv.eport(*args, check=False)  # only the RS256 next key is new
    assert early.returncode == 1, early.stderr
    assert "--alg ES256 to rotate that family alone" in early.stderr, early.stderr
    out = jrun(srv, *args, "--alg", "ES256")  # not forced: its next key is old enough
    assert out["rotated"] == ["ES256"]
    after = {k["kid"]: (k["state"], k["alg"]) for k in out["keys"]}
    rsa = {kid: st for kid, (st, alg) in after.items() if alg == "RS256"}
    assert rsa == {kid: before[kid] for kid in rsa}  # no RSA key made, moved or dropped
    assert before[out["active"]] == "next"  # the ES256 key published as next now signs
    assert out["active_by_alg"]["RS256"] in rsa and rsa[out["active_by_alg"]["RS256"]] == "active"


def _age_next_key(auth_db: Path, alg: str) -> None:
    """Date the ``next`` key of ``alg`` 10 minutes back, past the JWKS max-age (the
    server's clock is not the test's to move)."""
    with sqlite3.connect(auth_db) as conn:
        rows = conn.execute(
            "SELECT kid, public_jwk, created_at FROM auth_signing_keys WHERE state = 'next'"
        ).fetchall()
        (kid, created), *more = [(k, c) for k, j, c in rows if json.loads(j).get("alg") == alg]
        assert not more, rows
        old = datetime.datetime.fromisoformat(created) - datetime.timedelta(minutes=10)
        conn.execute(
            "UPDATE auth_signing_keys SET created_at = ? WHERE kid = ?",
            (old.strftime("%Y-%m-%d %H:%M:%S.%f"), kid),
        )
