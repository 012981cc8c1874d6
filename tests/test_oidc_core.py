"""The OpenID Connect provider's core (authsvc/oidc.py) with its clock and back-channel
transport in the test's hands: the code lifetime to the second, a replay racing the first
redemption, the back-channel outbox (retries with backoff, giving up, leases across
processes, clients without a back channel, a session ended by a held certificate).

The stores are the real SQL ones on a SQLite file; the token service is the real one, with
a status source the test sets.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.orm import sessionmaker

import authsvc.oidc_store
import authsvc.store
from authsvc.app import upgrade
from authsvc.keys import KeyRing
from authsvc.oidc import (
    CodeRecord,
    InvalidClient,
    LogoutRequestError,
    OIDCSettings,
    OpenIDProvider,
    SignedIn,
    s256,
)
from authsvc.oidc_store import SqlOIDCStore
from authsvc.policy import load_access_policy
from authsvc.principal import Principal, x5t_s256
from authsvc.service import InvalidGrant, SessionRecord, Settings, TokenService
from authsvc.store import SqlAuthStore
from authsvc.tokens import InvalidToken
from ca.db import make_engine
from ca.ocsp import CertStatus, Good, OnHold
from ca.policy import SubjectClass, load_policies
from ca.signedreq import TrustAnchors
from tests.conftest import REPO

T0 = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)
ISSUER = "https://sso.eport.example/auth"


@dataclass
class Clock:
    now: datetime.datetime = T0

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@dataclass
class Status:
    value: CertStatus = field(default_factory=Good)

    def status(self, cert: x509.Certificate) -> CertStatus:
        return self.value


@dataclass
class Poster:
    """The back-channel transport: records every POST, answers ``status``."""

    status: int = 200
    posts: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __call__(self, url: str, form: Mapping[str, str], timeout: float) -> int:
        self.posts.append((url, dict(form)))
        return self.status


def certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Operator C1")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0 - datetime.timedelta(days=1))
        .not_valid_after(T0 + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


@dataclass
class Rig:
    provider: OpenIDProvider
    tokens: TokenService
    clock: Clock
    status: Status
    poster: Poster
    store: SqlOIDCStore
    cert: x509.Certificate
    sessions: Any

    def session(self, sid: str = "sid-1") -> SignedIn:
        p = Principal(
            "op:91350100MA1000001X:C1",
            SubjectClass.OPERATOR,
            "Operator C1",
            uscc="91350100MA1000001X",
            operator_id="C1",
        )
        rec = SessionRecord(
            sid=sid,
            principal=p,
            cert_serial=format(self.cert.serial_number, "x"),
            cert_sha256=x5t_s256(self.cert),
            cert_der=self.cert.public_bytes(serialization.Encoding.DER),
            client_addr=None,
            created_at=self.clock(),
            expires_at=self.clock() + datetime.timedelta(hours=8),
        )
        self.tokens.store.add_session(rec, hashlib.sha256(sid.encode()).hexdigest())
        self.tokens.store.set_roles("91350100MA1000001X", "C1", frozenset({"data-entry"}), "t", T0)
        return SignedIn(browser=None, session=rec)  # type: ignore[arg-type]  (no cookie here)

    def code(self, signed: SignedIn, client: str = "sample-a") -> tuple[str, str]:
        verifier = "v" * 43
        req = self.provider.authorization_request(
            {
                "response_type": ["code"],
                "client_id": [client],
                "redirect_uri": [f"https://{client}.eport.example:8443/callback"],
                "scope": ["openid"],
                "code_challenge": [s256(verifier)],
                "code_challenge_method": ["S256"],
                "nonce": ["n"],
            }
        )
        return self.provider.issue_code(req, signed), verifier

    def redeem(self, code: str, verifier: str, client: str = "sample-a") -> Any:
        return self.provider.redeem(
            code=code,
            client_id=client,
            redirect_uri=f"https://{client}.eport.example:8443/callback",
            code_verifier=verifier,
            client_addr=None,
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    upgrade(url)  # the Alembic history, a002 included
    engine = make_engine(url)  # WAL, BEGIN IMMEDIATE: as the server's
    sessions = sessionmaker(engine, expire_on_commit=False)
    auth_store = SqlAuthStore(sessions)
    clock = Clock()
    status = Status()
    keys = KeyRing(
        auth_store, b"test-passphrase", clock, max_token_lifetime=datetime.timedelta(minutes=10)
    )
    keys.ensure()
    policies_dir = REPO / "policies"
    tokens = TokenService(
        settings=Settings(issuer=ISSUER),
        store=auth_store,
        keys=keys,
        trust=TrustAnchors(roots=(), intermediates=()),
        status=status,
        policies=load_policies(policies_dir),
        access=load_access_policy(policies_dir),
        clock=clock,
        issuing_cas=dict,
    )
    store = SqlOIDCStore(sessions)
    poster = Poster()
    provider = OpenIDProvider(tokens=tokens, store=store, clock=clock, poster=poster)
    try:
        yield Rig(provider, tokens, clock, status, poster, store, certificate(), sessions)
    finally:
        engine.dispose()


def test_code_lives_exactly_sixty_seconds(rig: Rig) -> None:
    signed = rig.session()
    code, verifier = rig.code(signed)
    rig.clock.advance(59.9)
    assert rig.redeem(code, verifier).id_token
    code, verifier = rig.code(signed)
    rig.clock.advance(60)
    with pytest.raises(InvalidGrant, match="expired"):
        rig.redeem(code, verifier)


def test_a_used_code_that_fails_its_bindings_revokes_nothing(rig: Rig) -> None:
    """Whoever saw a used code (a log, a browser's history) sends it as another client,
    or without the PKCE verifier: refused, as any code failing its bindings is, without
    calling it a replay: the rightful client's token stays valid. Before, any registered
    client's request with the used code revoked it (token service probe, F2)."""
    signed = rig.session()
    code, verifier = rig.code(signed)
    first = rig.redeem(code, verifier)
    jti = jwt.decode(first.access_token, options={"verify_signature": False})["jti"]
    with pytest.raises(InvalidGrant, match="another client"):
        rig.redeem(code, verifier, client="sample-b")
    with pytest.raises(InvalidGrant, match="PKCE"):
        rig.redeem(code, "w" * 43)
    assert not rig.tokens.store.is_revoked(jti)
    events = [e["type"] for e in rig.tokens.store.events(subject=None, limit=100, after_id=0)]
    assert "code.replayed" not in events
    # Its own client sending it again is a replay: revoked.
    with pytest.raises(InvalidGrant, match="already used"):
        rig.redeem(code, verifier)
    assert rig.tokens.store.is_revoked(jti)


def test_a_replay_racing_the_first_redemption_revokes_its_token(rig: Rig) -> None:
    signed = rig.session()
    code, verifier = rig.code(signed)
    h = hashlib.sha256(code.encode()).hexdigest()
    stale: CodeRecord | None = rig.store.get_code(h)  # read before the first redemption
    first = rig.redeem(code, verifier)
    jti = jwt.decode(first.access_token, options={"verify_signature": False})["jti"]
    assert not rig.tokens.store.is_revoked(jti)
    # The second redemption read the code while it was still unused; it loses the
    # conditional UPDATE, and its token is never handed out.
    real_get = rig.store.get_code
    reads = iter([stale])

    def racing_read(code_hash: str) -> CodeRecord | None:
        return next(reads, None) or real_get(code_hash)  # stale once, then the truth

    rig.store.get_code = racing_read  # type: ignore[method-assign]
    try:
        with pytest.raises(InvalidGrant, match="already used"):
            rig.redeem(code, verifier)
    finally:
        rig.store.get_code = real_get  # type: ignore[method-assign]
    assert rig.tokens.store.is_revoked(jti)
    # Exactly one token.issued event: the winner's.
    events = [e for e in rig.tokens.store.events(subject=None, limit=100, after_id=0)]
    assert [e["type"] for e in events].count("token.issued") == 1
    assert [e["type"] for e in events].count("code.replayed") == 1


def test_a_replay_that_fails_to_record_changes_nothing_and_a_later_one_records_it_all(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay's mark, its revocation of the first token and its event are one
    transaction: a fault writing the event leaves none of them, and the next replay
    writes all three."""
    signed = rig.session()
    code, verifier = rig.code(signed)
    h = hashlib.sha256(code.encode()).hexdigest()
    jti = jwt.decode(rig.redeem(code, verifier).access_token, options={"verify_signature": False})[
        "jti"
    ]

    def replayed_events() -> int:
        events = rig.tokens.store.events(subject=None, limit=100, after_id=0)
        return [e["type"] for e in events].count("code.replayed")

    real = authsvc.store.event_row

    def failing(ev: Any) -> Any:
        if ev.type == "code.replayed":
            raise RuntimeError("the disk went away")
        return real(ev)

    for module in (authsvc.store, authsvc.oidc_store):
        monkeypatch.setattr(module, "event_row", failing)
    with pytest.raises(RuntimeError, match="disk went away"):
        rig.redeem(code, verifier)
    stored = rig.store.get_code(h)
    assert stored is not None and stored.replayed_at is None
    assert not rig.tokens.store.is_revoked(jti) and replayed_events() == 0
    monkeypatch.undo()
    with pytest.raises(InvalidGrant, match="already used"):
        rig.redeem(code, verifier)
    stored = rig.store.get_code(h)
    assert stored is not None and stored.replayed_at is not None
    assert rig.tokens.store.is_revoked(jti) and replayed_events() == 1


def test_backchannel_retries_with_backoff_then_gives_up(rig: Rig) -> None:
    signed = rig.session()
    rig.code(signed, "sample-b")
    rig.poster.status = 503
    rig.provider.end_session(signed.session.sid, "logout", None)
    assert len(rig.poster.posts) == 1
    url, form = rig.poster.posts[0]
    assert url == "http://127.0.0.1:5102/backchannel-logout"
    header = jwt.get_unverified_header(form["logout_token"])
    assert header["typ"] == "logout+jwt"
    # Not before the backoff: 2 s, then 4, 8, 16, 32; six attempts in all.
    rig.clock.advance(1.9)
    assert rig.provider.deliver_logouts() == 0 and len(rig.poster.posts) == 1
    rig.clock.advance(0.2)
    rig.provider.deliver_logouts()
    for backoff in (4, 8, 16, 32):
        assert len(rig.poster.posts) == 2 + [4, 8, 16, 32].index(backoff)
        rig.clock.advance(backoff - 0.2)
        rig.provider.deliver_logouts()  # too early
        rig.clock.advance(0.3)
        rig.provider.deliver_logouts()
    assert len(rig.poster.posts) == 6
    rig.clock.advance(3600)
    rig.poster.status = 200
    assert rig.provider.deliver_logouts() == 0 and len(rig.poster.posts) == 6  # gave up


def test_a_delivery_that_succeeds_is_not_sent_again(rig: Rig) -> None:
    signed = rig.session()
    rig.code(signed, "sample-a")
    rig.code(signed, "sample-a")  # a second code to the same client: one delivery
    rig.code(signed, "sample-b")
    rig.provider.end_session(signed.session.sid, "logout", None)
    assert sorted(u for u, _ in rig.poster.posts) == [
        "http://127.0.0.1:5101/backchannel-logout",
        "http://127.0.0.1:5102/backchannel-logout",
    ]
    rig.clock.advance(3600)
    assert rig.provider.deliver_logouts() == 0 and len(rig.poster.posts) == 2


def test_a_lease_keeps_a_second_process_from_sending_it_too(rig: Rig) -> None:
    signed = rig.session()
    rig.code(signed, "sample-b")
    rig.tokens.store.end_session(signed.session.sid, "elsewhere", rig.clock())
    now = rig.clock()
    lease = now + datetime.timedelta(seconds=30)
    first = rig.store.claim_logouts(now, lease, None, 10)
    second = rig.store.claim_logouts(now, lease, None, 10)  # another process, same moment
    assert len(first) == 1 and second == []
    # A process that died holding the lease: another takes it over when it runs out.
    rig.clock.advance(31)
    assert rig.provider.deliver_logouts() == 1


def test_a_held_certificate_ends_the_session_and_the_loop_tells_the_clients(rig: Rig) -> None:
    signed = rig.session()
    rig.code(signed, "sample-b")
    assert rig.provider.deliver_logouts() == 0  # the session lives: nothing owed
    rig.status.value = OnHold(since=rig.clock())
    rig.clock.advance(3)  # past the status cache
    assert rig.tokens.sweep() == 1
    assert rig.provider.deliver_logouts() == 1
    claims = jwt.decode(rig.poster.posts[0][1]["logout_token"], options={"verify_signature": False})
    assert claims["sid"] == signed.session.sid and claims["aud"] == "sample-b"


def test_clients_are_web_services_with_redirect_uris(rig: Rig) -> None:
    assert rig.provider.client("sample-a").redirect_uris
    for not_a_client in ("manifest", "nosuch", None, ""):
        with pytest.raises(InvalidClient):
            rig.provider.client(not_a_client)
    # A client without a back channel (the portal registers one; manifest is no client):
    # a session with no codes owes nothing.
    signed = rig.session()
    rig.provider.end_session(signed.session.sid, "logout", None)
    assert rig.poster.posts == []
    settings = OIDCSettings()
    assert settings.code_lifetime == datetime.timedelta(seconds=60)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _reheaded(token: str, **header: Any) -> str:
    """``token`` with header members changed, its payload and signature kept."""
    h, payload, sig = token.split(".")
    old = json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))
    return ".".join([_b64(json.dumps({**old, **header}).encode()), payload, sig])


def test_id_and_logout_tokens_are_signed_as_the_client_registered(rig: Rig) -> None:
    signed = rig.session()
    keys = rig.tokens.keys
    es = rig.provider.client("sample-a")
    assert es.id_token_signed_response_alg == "ES256"  # registered without one: ES256
    rs = dataclasses.replace(es, id_token_signed_response_alg="RS256")
    for client, alg in ((es, "ES256"), (rs, "RS256")):
        tok = rig.provider.id_token(signed.session, client, nonce="n", access_token="at")
        header = jwt.get_unverified_header(tok)
        assert header == {"alg": alg, "typ": "JWT", "kid": keys.id_token_signer(alg)[0]}
        claims = rig.provider.verify_id_token_hint(tok)
        assert claims["sid"] == signed.session.sid and claims["aud"] == "sample-a"
        # Back-Channel Logout 1.0 §2.4: the same keys as the client's ID tokens.
        logout = rig.provider.logout_token(client, "sid-1", "op:x")
        assert jwt.get_unverified_header(logout)["alg"] == alg
    # The access token of the flow stays ES256 whatever the client's ID tokens are.
    code, verifier = rig.code(signed)
    assert jwt.get_unverified_header(rig.redeem(code, verifier).access_token)["alg"] == "ES256"


def test_id_token_hints_cannot_choose_how_they_are_verified(rig: Rig) -> None:
    """RFC 8725 §3.1: the key's family decides the algorithm; an RS256 token is never
    checked with an EC key or the reverse, ``none`` and HMAC are refused."""
    signed = rig.session()
    keys = rig.tokens.keys
    rs = dataclasses.replace(rig.provider.client("sample-a"), id_token_signed_response_alg="RS256")
    es = rig.provider.client("sample-a")
    rs_tok = rig.provider.id_token(signed.session, rs, nonce=None, access_token=None)
    es_tok = rig.provider.id_token(signed.session, es, nonce=None, access_token=None)
    rsa_kid, rsa_key = keys.id_token_signer("RS256")
    rsa_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    h, _, _ = rs_tok.split(".")
    hs_input = _reheaded(rs_tok, alg="HS256").rsplit(".", 1)[0]
    hs = hs_input + "." + _b64(hmac.new(rsa_pem, hs_input.encode(), "sha256").digest())
    tampered_claims = {**jwt.decode(rs_tok, options={"verify_signature": False}), "sub": "x"}
    forged = {
        "RS256 token relabelled ES256": _reheaded(rs_tok, alg="ES256"),
        "ES256 token relabelled RS256": _reheaded(es_tok, alg="RS256"),
        "RS256 signature under the ES256 key's kid": _reheaded(rs_tok, kid=keys.signer()[0]),
        "ES256 signature under the RS256 key's kid": _reheaded(es_tok, kid=rsa_kid),
        "alg none": _reheaded(rs_tok, alg="none").rsplit(".", 1)[0] + ".",
        "HS256 keyed with the RSA public key": hs,
        "PS256": _reheaded(rs_tok, alg="PS256"),
        "payload changed": ".".join(
            [h, _b64(json.dumps(tampered_claims).encode()), rs_tok.split(".")[2]]
        ),
    }
    for what, token in forged.items():
        with pytest.raises(LogoutRequestError):
            rig.provider.verify_id_token_hint(token)
            pytest.fail(what)
    # Neither is an access token (typ JWT, and the RS256 one not even ES256).
    for tok in (rs_tok, es_tok):
        with pytest.raises(InvalidToken):
            rig.tokens.check_access_token(tok, None)


def test_the_sample_web_service_keeps_cookies_secure_off_the_loopback() -> None:
    """examples/web_service: Secure session cookies wherever browsers come over HTTPS;
    plain HTTP only on the loopback address, for trying the client out."""
    from examples.web_service.app import create_app

    def secure(public: str) -> bool:
        app = create_app({"PUBLIC_URL": public, "EPORT_ISSUER": "http://127.0.0.1:9/auth"})
        return bool(app.config["SESSION_COOKIE_SECURE"])

    assert secure("https://sample-a.eport.example:8443")
    assert secure("http://sample-a.eport.example")  # not loopback: still Secure
    assert not secure("http://127.0.0.1:5191")
    assert not secure("http://localhost:5191")
    assert secure("http://localhost.evil.example")  # a name that only starts like it


def test_a_browser_logout_and_its_event_commit_together_or_not_at_all(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logout event was written in a transaction of its own after the session's end:
    a failure between them ended the session with no event. A failure while the event is
    written now leaves the session open (nothing happened), and the next logout ends it
    with exactly one event naming the reason."""
    import authsvc.store as store_module

    signed = rig.session()
    sid = signed.session.sid

    def broken(event: Any) -> Any:
        raise RuntimeError("the event cannot be written")

    with monkeypatch.context() as m:
        m.setattr(store_module, "event_row", broken)
        with pytest.raises(RuntimeError):
            rig.provider.end_session(sid, "logout", "198.51.100.7")
    rec = rig.tokens.store.get_session(sid)
    assert rec is not None and rec.ended_at is None
    assert rig.provider.end_session(sid, "logout", "198.51.100.7")
    assert not rig.provider.end_session(sid, "logout", "198.51.100.7")  # already ended
    events = rig.tokens.store.events(subject=None, limit=100, after_id=0)
    logouts = [e for e in events if e["type"] == "logout"]
    assert len(logouts) == 1 and logouts[0]["sid"] == sid, logouts
