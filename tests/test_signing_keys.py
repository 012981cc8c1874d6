"""The token service's signing keys (authsvc/keys.py): an ES256 family (access tokens) and
an RS256 family (ID tokens of clients registered for RS256), each made, stored encrypted,
rotated and published the same way, and never used for the other's tokens.

The store is the real SQL one on a SQLite file; the clock is the test's.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy.orm import sessionmaker

import authsvc.keys
from authsvc.app import upgrade
from authsvc.keys import KeyRing, KeyRotationTooSoon, StoredKey, new_key
from authsvc.store import SqlAuthStore
from ca.db import make_engine

T0 = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)
PASSPHRASE = b"test-passphrase"


@dataclass
class Clock:
    now: datetime.datetime = T0

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += datetime.timedelta(**kw)


@dataclass
class Rig:
    store: SqlAuthStore
    clock: Clock

    def ring(self) -> KeyRing:
        """A server process's key ring (each process has its own, over one store)."""
        return KeyRing(
            self.store, PASSPHRASE, self.clock, max_token_lifetime=datetime.timedelta(minutes=10)
        )

    def stored(self, alg: str | None = None, state: str | None = None) -> list[StoredKey]:
        return [
            k
            for k in self.store.list_keys()
            if (alg is None or k.alg == alg) and (state is None or k.state == state)
        ]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        yield Rig(SqlAuthStore(sessionmaker(engine, expire_on_commit=False)), Clock())
    finally:
        engine.dispose()


def test_a_new_service_makes_both_families(rig: Rig) -> None:
    ring = rig.ring()
    ring.ensure()
    for alg in ("ES256", "RS256"):
        assert len(rig.stored(alg, "active")) == 1 and len(rig.stored(alg, "next")) == 1, alg
    # Stored encrypted with the passphrase; the RSA keys are 3072 bits.
    for k in rig.stored("RS256"):
        assert b"ENCRYPTED PRIVATE KEY" in k.private_pem
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(k.private_pem, None)
        private = serialization.load_pem_private_key(k.private_pem, PASSPHRASE)
        assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 3072
    # Published: both families, each key with its alg, its RFC 7638 thumbprint as kid
    # (computed by joserfc), and no private member.
    jwks = ring.jwks()["keys"]
    assert sorted(k["alg"] for k in jwks) == ["ES256", "ES256", "RS256", "RS256"]
    for jwk in jwks:
        cls = RSAKey if jwk["alg"] == "RS256" else ECKey
        assert jwk["kty"] == ("RSA" if jwk["alg"] == "RS256" else "EC")
        assert cls.import_key(jwk).thumbprint() == jwk["kid"] and jwk["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    # A second process starting on the same store makes nothing more.
    rig.ring().ensure()
    assert len(rig.stored()) == 4


def test_a_service_that_had_only_es256_keys_gets_rs256_keys_and_keeps_its_own(rig: Rig) -> None:
    """An upgrade: the stored ES256 keys (as an earlier version made them) stay what they
    were; the RS256 family is added beside them."""

    def only_es256(keys: list[StoredKey]) -> list[StoredKey]:
        first = new_key(PASSPHRASE, T0)
        first = StoredKey(**{**first.__dict__, "state": "active", "activated_at": T0})
        return [first, new_key(PASSPHRASE, T0)]

    rig.store.rotate_locked(only_es256)
    before = {k.kid: k for k in rig.stored()}
    rig.clock.advance(days=3)
    rig.ring().ensure()
    assert {k.kid: k for k in rig.stored("ES256")} == before
    assert len(rig.stored("RS256", "active")) == 1 and len(rig.stored("RS256", "next")) == 1


def test_each_family_answers_only_for_its_own_algorithm(rig: Rig) -> None:
    ring = rig.ring()
    ring.ensure()
    ec_kid, ec_key = ring.signer()
    rsa_kid, rsa_key = ring.id_token_signer("RS256")
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert ring.id_token_signer("ES256")[0] == ec_kid
    # Access tokens are verified with public_key(): ES256 keys only.
    assert ring.public_key(ec_kid) is not None
    assert ring.public_key(rsa_kid) is None
    # ID tokens with verification_key(kid, the header's alg): the key's family must match.
    assert isinstance(ring.verification_key(rsa_kid, "RS256"), rsa.RSAPublicKey)
    assert isinstance(ring.verification_key(ec_kid, "ES256"), ec.EllipticCurvePublicKey)
    for kid, alg in ((rsa_kid, "ES256"), (ec_kid, "RS256"), (rsa_kid, "HS256"), (ec_kid, "none")):
        assert ring.verification_key(kid, alg) is None, (kid, alg)
    for alg in ("HS256", "none", "PS256"):
        with pytest.raises(ValueError):
            ring.id_token_signer(alg)


def test_rotation_rotates_both_families_without_a_gap(rig: Rig) -> None:
    ring = rig.ring()
    ring.ensure()
    rsa_active = rig.stored("RS256", "active")[0].kid
    rsa_next = rig.stored("RS256", "next")[0].kid
    ec_next = rig.stored("ES256", "next")[0].kid
    # Too soon for either family's next key: refused, nothing changed.
    with pytest.raises(KeyRotationTooSoon, match="next ES256 key was published 0 s ago"):
        ring.rotate()
    rig.clock.advance(seconds=301)
    promoted = ring.rotate()
    assert promoted == {"ES256": ec_next, "RS256": rsa_next}
    assert ring.id_token_signer("RS256")[0] == rsa_next  # the key published beforehand
    retired = rig.stored("RS256", "retired")
    assert [k.kid for k in retired] == [rsa_active]
    assert retired[0].unpublish_at == rig.clock() + datetime.timedelta(minutes=15)
    published = {k["kid"] for k in ring.jwks()["keys"]}
    assert rsa_active in published  # its ID tokens still verify
    new_next = rig.stored("RS256", "next")[0].kid
    assert new_next in published and new_next not in (rsa_active, rsa_next)
    # Once every token the retired key signed has expired, the next rotation drops it.
    rig.clock.advance(minutes=16)
    ring.rotate()
    assert rsa_active not in {k["kid"] for k in ring.jwks()["keys"]}
    assert len(rig.stored("RS256")) == 3  # the retired one, the active, the next


def test_the_schedule_rotates_each_family_when_its_own_key_is_due(rig: Rig) -> None:
    ring = rig.ring()
    ring.ensure()
    assert not ring.maybe_rotate()
    rig.clock.advance(days=30)
    # Only RS256 is due: its family was made later (an upgrade) in this store.
    es_active = rig.stored("ES256", "active")[0]
    rig.store.rotate_locked(
        lambda keys: [
            StoredKey(**{**k.__dict__, "activated_at": rig.clock() - datetime.timedelta(days=1)})
            if k.kid == es_active.kid
            else k
            for k in keys
        ]
    )
    rs_active = rig.stored("RS256", "active")[0].kid
    assert ring.maybe_rotate()
    assert rig.stored("ES256", "active")[0].kid == es_active.kid
    assert rig.stored("RS256", "active")[0].kid != rs_active


def test_rsa_keys_are_made_before_the_lock_is_taken(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3072-bit RSA key takes up to a second: a rotation (the schedule runs it in a
    serving process) makes it first, and holds the store's lock only to write."""
    ring = rig.ring()
    ring.ensure()
    rig.clock.advance(seconds=301)
    locked = False
    made_while_locked: list[bool] = []
    real_rotate_locked = rig.store.rotate_locked
    real_generate: Callable[..., rsa.RSAPrivateKey] = rsa.generate_private_key

    def rotate_locked(mutate: Callable[[list[StoredKey]], list[StoredKey]]) -> None:
        nonlocal locked
        locked = True
        try:
            real_rotate_locked(mutate)
        finally:
            locked = False

    def generate(*args: object, **kw: object) -> rsa.RSAPrivateKey:
        made_while_locked.append(locked)
        return real_generate(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rig.store, "rotate_locked", rotate_locked)
    monkeypatch.setattr(authsvc.keys.rsa, "generate_private_key", generate)
    ring.rotate()
    assert made_while_locked == [False]


def test_two_processes_due_at_once_rotate_once_without_an_error(rig: Rig) -> None:
    """Every process runs the schedule: two that both read the keys as due before either
    rotated must rotate once between them, and the second must not fail (it logged a
    KeyRotationTooSoon traceback and skipped its sweep's cleanup)."""
    first, second = rig.ring(), rig.ring()
    first.ensure()
    rig.clock.advance(days=31)
    seen_due = rig.store.list_keys()  # what the second process read before the first won

    class Stale:
        """The store as the second process saw it: its first read predates the rotation."""

        def __init__(self) -> None:
            self.reads = 0

        def list_keys(self) -> list[StoredKey]:
            self.reads += 1
            return seen_due if self.reads == 1 else rig.store.list_keys()

        def rotate_locked(self, mutate: Callable[[list[StoredKey]], list[StoredKey]]) -> None:
            rig.store.rotate_locked(mutate)

    assert first.maybe_rotate()
    rotated = {k.kid: k.state for k in rig.store.list_keys()}
    late = KeyRing(
        Stale(), PASSPHRASE, rig.clock, max_token_lifetime=datetime.timedelta(minutes=10)
    )
    assert late.maybe_rotate() is False
    assert {k.kid: k.state for k in rig.store.list_keys()} == rotated  # rotated once
    assert second.maybe_rotate() is False  # and a fresh read finds nothing due
