"""Token-signing keys and their rotation without a validation gap.

Two families of keys, each rotated on its own and published in the same JWKS (RFC 7517)
with its ``alg``:

* **ES256** (RFC 7518 §3.4, P-256): access tokens (RFC 9068), and ID and logout tokens of
  the OpenID Connect clients registered for ES256;
* **RS256** (RFC 7518 §3.3, RSA 3072 bits): ID and logout tokens of the clients registered
  for RS256 (OpenID Connect Core §15.1 makes RS256 mandatory to implement, Discovery 1.0
  §3 requires it in ``id_token_signing_alg_values_supported``). Nothing else is ever
  signed with it, and an RS256 key never verifies an access token.

Which key verifies a token is decided by the key's family, never by the token: a lookup
names the algorithm it expects (:meth:`KeyRing.public_key` answers only ES256 keys,
:meth:`KeyRing.verification_key` only keys of the algorithm asked for), so an RS256 token
is never checked with an EC key or the reverse (RFC 8725 §3.1).

A key goes ``next`` → ``active`` → ``retired`` → gone:

* a ``next`` key is published in the JWKS (RFC 7517) before it signs anything, so
  relying parties that refreshed their JWKS already know it when it starts signing;
* rotation makes ``next`` the ``active`` signer, retires the old active key and
  creates a new ``next``;
* a ``retired`` key stays published until every token it signed has expired
  (``unpublish_at`` = retirement + the longest token lifetime + leeway).

Each family has its own ``next``, ``active`` and ``retired`` keys; the family of a stored
key is the ``alg`` of its public JWK. A 3072-bit RSA key takes up to a second to make, so
it is never made while a request waits: the first keys of a family are made when a server
starts and finds none (:meth:`KeyRing.ensure`), and a rotation makes its new ``next`` keys
before it takes the store's lock.

Private keys are stored encrypted (PKCS#8 with the auth key passphrase). ``kid`` is
the RFC 7638 JWK thumbprint. Rotation is a command (``eport auth rotate-keys``) and a
schedule (:meth:`KeyRing.maybe_rotate`, called by every process; the store's lock
makes one of them do it).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca import pkcs8
from ca.errors import EPortError

ALG = "ES256"
"""The algorithm of access tokens and of everything that is not an RS256 ID token."""
RS256 = "RS256"
ALGS = (ALG, RS256)
"""The key families every token service holds."""
RSA_BITS = 3072
"""NIST SP 800-57 Part 1 §5.6.1: 3072-bit RSA for 128-bit security, as P-256."""

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
JWKS_MAX_AGE = datetime.timedelta(seconds=300)
"""How long relying parties may cache the JWKS (its Cache-Control max-age)."""


class KeyRotationTooSoon(EPortError):
    status = 409
    slug = "key-rotation-too-soon"
    title = "Key rotation too soon"


_RELOAD_MIN = datetime.timedelta(seconds=1)


@dataclass(frozen=True)
class StoredKey:
    kid: str
    state: str
    public_jwk: dict[str, Any]
    private_pem: bytes
    created_at: datetime.datetime
    activated_at: datetime.datetime | None = None
    retired_at: datetime.datetime | None = None
    unpublish_at: datetime.datetime | None = None

    @property
    def alg(self) -> str:
        """The key's family: the ``alg`` of its JWK (keys stored before RS256 keys
        existed are ES256 and say so)."""
        return str(self.public_jwk.get("alg", ALG))


class KeyStore(Protocol):
    def list_keys(self) -> list[StoredKey]: ...

    def rotate_locked(self, mutate: Callable[[list[StoredKey]], list[StoredKey]]) -> None:
        """Under an exclusive lock: read all keys, and write back what ``mutate`` returns."""
        ...


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_uint(n: int, size: int | None = None) -> str:
    """RFC 7518 §2 Base64urlUInt: big-endian, in the minimum number of octets (or
    ``size`` octets, for EC coordinates, RFC 7518 §6.2.1.2)."""
    return _b64(n.to_bytes(size or max(1, (n.bit_length() + 7) // 8), "big"))


def public_jwk(key: PublicKey) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPublicKey):
        rnums = key.public_numbers()
        jwk = {"e": _b64_uint(rnums.e), "kty": "RSA", "n": _b64_uint(rnums.n)}
        alg = RS256
    else:
        nums = key.public_numbers()
        jwk = {"crv": "P-256", "kty": "EC", "x": _b64_uint(nums.x, 32), "y": _b64_uint(nums.y, 32)}
        alg = ALG
    # RFC 7638 §3: the thumbprint hashes the required members in lexicographic order.
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
    kid = _b64(hashlib.sha256(canonical).digest())
    return {**jwk, "kid": kid, "use": "sig", "alg": alg}


def new_key(
    passphrase: bytes, now: datetime.datetime, alg: str = ALG, *, count: int | None = None
) -> StoredKey:
    """A ``next`` key of family ``alg`` (3072-bit RSA for RS256: up to a second's work),
    encrypted with ``count`` PBKDF2 iterations (None: :func:`ca.pkcs8.iterations`)."""
    private: PrivateKey
    if alg == ALG:
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == RS256:
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        raise ValueError(f"no signing keys for {alg!r}")
    jwk = public_jwk(private.public_key())
    pem = pkcs8.encrypt(private, passphrase, count=count)
    return StoredKey(kid=jwk["kid"], state="next", public_jwk=jwk, private_pem=pem, created_at=now)


def _activated(key: StoredKey, now: datetime.datetime) -> StoredKey:
    return StoredKey(**{**key.__dict__, "state": "active", "activated_at": now})


def _withdrawn(
    keys: list[StoredKey],
    algs: tuple[str, ...],
    now: datetime.datetime,
    signing: dict[str, StoredKey],
    fresh: dict[str, StoredKey],
    promoted: dict[str, str],
) -> list[StoredKey]:
    """``keys`` with every key of the families ``algs`` withdrawn now (retired, no longer
    published), ``signing``'s key of each family active and ``fresh``'s its next."""
    out: list[StoredKey] = []
    for k in keys:
        if k.alg not in algs:
            out.append(k)
        elif k.state == "retired" and k.unpublish_at is not None and k.unpublish_at <= now:
            continue  # withdrawn or expired before: nothing to keep
        else:
            out.append(
                StoredKey(
                    **{**k.__dict__, "state": "retired", "retired_at": now, "unpublish_at": now}
                )
            )
    for alg in algs:
        first = _activated(signing[alg], now)
        out += [first, fresh[alg]]
        promoted[alg] = first.kid
    return out


def _jwk_public_key(jwk: dict[str, Any]) -> PublicKey:
    if jwk["kty"] == "RSA":
        e = int.from_bytes(_b64d(jwk["e"]), "big")
        n = int.from_bytes(_b64d(jwk["n"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    x = int.from_bytes(_b64d(jwk["x"]), "big")
    y = int.from_bytes(_b64d(jwk["y"]), "big")
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


class KeyRing:
    """The signing keys in use and the published JWKS, re-read every ``refresh`` seconds
    so that a rotation made by another process is followed within that bound."""

    def __init__(
        self,
        store: KeyStore,
        passphrase: bytes,
        clock: Callable[[], datetime.datetime],
        *,
        max_token_lifetime: datetime.timedelta,
        rotation_period: datetime.timedelta = datetime.timedelta(days=30),
        refresh: datetime.timedelta = datetime.timedelta(seconds=5),
        key_file_count: int | None = None,
    ) -> None:
        self.store = store
        self.passphrase = passphrase
        self.key_file_count = key_file_count
        """PBKDF2 count of the keys it makes (None: :func:`ca.pkcs8.iterations`); the least
        for a development service, whose passphrase is in the clear in ``dev/``."""
        self.clock = clock
        self.max_token_lifetime = max_token_lifetime
        self.rotation_period = rotation_period
        self.refresh_every = refresh
        self._lock = threading.Lock()
        self._loaded_at: datetime.datetime | None = None
        self._signers: dict[str, tuple[str, PrivateKey]] = {}
        self._jwks: dict[str, Any] = {"keys": []}
        self._public: dict[str, tuple[str, PublicKey]] = {}

    def _new_key(self, now: datetime.datetime, alg: str) -> StoredKey:
        return new_key(self.passphrase, now, alg, count=self.key_file_count)

    def ensure(self) -> None:
        """Create the first active and next keys of every family that has none: on a
        new service both families, on one that had only ES256 keys the RS256 ones.

        Made under the store's lock, so that processes started together make them once;
        this happens at a server's start, before it answers requests."""
        now = self.clock()

        def mutate(keys: list[StoredKey]) -> list[StoredKey]:
            out = list(keys)
            for alg in ALGS:
                if any(k.state == "active" and k.alg == alg for k in keys):
                    continue
                first = _activated(self._new_key(now, alg), now)
                out += [first, self._new_key(now, alg)]
            return out

        self.store.rotate_locked(mutate)
        self._loaded_at = None

    def rotate(
        self, *, force: bool = False, algs: tuple[str, ...] = ALGS, compromised: bool = False
    ) -> dict[str, str]:
        """In each family of ``algs``: next → active, active → retired (published until
        its tokens expired), new next. The newly active ``kid`` of each family.

        Refused (unless ``force``) while a ``next`` key has been published for less than
        :data:`JWKS_MAX_AGE`: relying parties that cached the JWKS before it appeared
        would otherwise meet tokens of a key they have not seen.

        ``compromised``: the family's keys are withdrawn at once instead (active, next and
        retired alike: they are stored together, so whoever took one may hold all), a
        key made now signs, and a new next is published. Every process stops accepting
        tokens of the withdrawn keys at its next reload (``refresh_every``); relying
        parties with a cached JWKS meet the new key's tokens before they know it, and
        fetch the JWKS again (the SDK does so for an unknown ``kid``)."""
        now = self.clock()
        # Made before the lock is taken: an RSA key takes up to a second, and the lock
        # (SQLite's write lock) would hold up every login meanwhile.
        fresh = {alg: self._new_key(now, alg) for alg in algs}
        signing = {alg: self._new_key(now, alg) for alg in algs} if compromised else {}
        promoted: dict[str, str] = {}

        def mutate(keys: list[StoredKey]) -> list[StoredKey]:
            promoted.clear()
            if compromised:
                return _withdrawn(keys, algs, now, signing, fresh, promoted)
            for alg in algs:
                nxt_keys = [k for k in keys if k.state == "next" and k.alg == alg]
                if not force and nxt_keys and now - nxt_keys[0].created_at < JWKS_MAX_AGE:
                    age = int((now - nxt_keys[0].created_at).total_seconds())
                    raise KeyRotationTooSoon(
                        f"the next {alg} key was published {age} s ago; relying parties may "
                        f"cache the JWKS for {int(JWKS_MAX_AGE.total_seconds())} s (wait, or "
                        "force it)"
                    )
            out = []
            unpublish = now + self.max_token_lifetime + datetime.timedelta(minutes=5)
            nxt = {
                alg: next((k for k in keys if k.state == "next" and k.alg == alg), None)
                for alg in algs
            }
            for k in keys:
                if k.state == "retired" and k.unpublish_at is not None and k.unpublish_at < now:
                    continue  # every token it signed has expired
                if k.alg not in algs:
                    out.append(k)
                elif k.state == "active":
                    out.append(
                        StoredKey(
                            **{
                                **k.__dict__,
                                "state": "retired",
                                "retired_at": now,
                                "unpublish_at": unpublish,
                            }
                        )
                    )
                elif k.state == "next" and k is nxt[k.alg]:
                    out.append(_activated(k, now))
                    promoted[k.alg] = k.kid
                else:
                    out.append(k)
            for alg in algs:
                if nxt[alg] is None:  # no next key published: sign with a new one at once
                    first = _activated(self._new_key(now, alg), now)
                    out.append(first)
                    promoted[alg] = first.kid
                out.append(fresh[alg])
            return out

        self.store.rotate_locked(mutate)
        self._loaded_at = None
        return dict(promoted)

    def maybe_rotate(self) -> bool:
        """The schedule: rotate each family whose active key is older than the rotation
        period (the families were made at different times, so they rotate apart)."""
        now = self.clock()
        keys = self.store.list_keys()
        due = []
        for alg in ALGS:
            active = next((k for k in keys if k.state == "active" and k.alg == alg), None)
            since = active.activated_at if active is not None else None
            if since is None or now - since >= self.rotation_period:
                due.append(alg)
        if not due:
            return False
        try:
            self.rotate(algs=tuple(due))
        except KeyRotationTooSoon:
            # Another process's schedule rotated these between the read above and the
            # lock (every process runs the schedule): its new next keys are too young,
            # which is the sign. Nothing to do; not a failure to log.
            return False
        return True

    def _load(self, *, fresh: bool = False) -> None:
        now = self.clock()
        if not fresh and self._loaded_at is not None and now - self._loaded_at < self.refresh_every:
            return
        with self._lock:
            if (
                not fresh
                and self._loaded_at is not None
                and now - self._loaded_at < self.refresh_every
            ):
                return  # another thread reloaded while this one waited
            keys = self.store.list_keys()
            published = [
                k for k in keys if k.state != "retired" or (k.unpublish_at and k.unpublish_at > now)
            ]
            signers = dict(self._signers)
            for active in (k for k in keys if k.state == "active"):
                held = signers.get(active.alg)
                if held is None or held[0] != active.kid:
                    private = serialization.load_pem_private_key(
                        active.private_pem, self.passphrase
                    )
                    expected = (
                        rsa.RSAPrivateKey if active.alg == RS256 else ec.EllipticCurvePrivateKey
                    )
                    assert isinstance(private, expected)
                    signers[active.alg] = (active.kid, private)
            public = {k.kid: (k.alg, _jwk_public_key(k.public_jwk)) for k in published}
            # Swapped in whole: readers on other threads never see a half-built set.
            self._signers = signers
            self._jwks = {"keys": [k.public_jwk for k in published]}
            self._public = public
            self._loaded_at = now

    def _signer(self, alg: str) -> tuple[str, PrivateKey]:
        self._load()
        held = self._signers.get(alg)
        if held is None:
            raise RuntimeError(f"no active {alg} signing key; run the token service's set-up")
        return held

    def signer(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        """The ES256 key that signs access tokens (and everything but RS256 ID tokens)."""
        kid, key = self._signer(ALG)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return kid, key

    def id_token_signer(self, alg: str) -> tuple[str, PrivateKey]:
        """The active key of family ``alg`` (:data:`ALGS`), for ID and logout tokens."""
        if alg not in ALGS:
            raise ValueError(f"no signing keys for {alg!r}")
        return self._signer(alg)

    def jwks(self) -> dict[str, Any]:
        """The published keys as stored now: a relying party that meets a new ``kid`` in a
        token minted by another process must find it here, whichever process answers (the
        endpoint is fetched rarely: relying parties cache it)."""
        self._load(fresh=True)
        return self._jwks

    def _lookup(self, kid: str) -> tuple[str, PublicKey] | None:
        self._load()
        found = self._public.get(kid)
        now = self.clock()
        # An unknown kid may have just been published by another process: re-read, but at
        # most once a second, so random kids cannot turn into a database load.
        if found is None and self._loaded_at is not None and now - self._loaded_at > _RELOAD_MIN:
            self._loaded_at = None
            self._load()
            found = self._public.get(kid)
        return found

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        """The published ES256 key ``kid`` (access tokens); None for any other, an RS256
        key included."""
        found = self._lookup(kid)
        if found is None or found[0] != ALG or not isinstance(found[1], ec.EllipticCurvePublicKey):
            return None
        return found[1]

    def verification_key(self, kid: str, alg: str) -> PublicKey | None:
        """The published key ``kid`` if it is of family ``alg``; None otherwise (a token
        whose header names another algorithm than its key's family is never verified)."""
        found = self._lookup(kid)
        if found is None or found[0] != alg:
            return None
        return found[1]


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


MIN_NEW_PASSPHRASE = 12
"""The shortest EPORT_AUTH_KEY_PASSPHRASE new signing keys are made with (a custodian's
share passphrase has the same minimum)."""


def check_passphrase(
    store: KeyStore, passphrase: bytes, states: tuple[str, ...] = ("active", "next")
) -> None:
    """Refuse (EPortError, one line) a passphrase that does not open the stored active
    signing key: a server started with a wrong EPORT_AUTH_KEY_PASSPHRASE would answer
    every token request 500. Nothing stored yet: the keys about to be made are encrypted
    with it, so it must be at least :data:`MIN_NEW_PASSPHRASE` characters (the keys sit in
    the database, and in every backup of it)."""
    from ca.errors import EPortError

    signing = [k for k in store.list_keys() if k.state in states]
    if not signing:
        if len(passphrase) < MIN_NEW_PASSPHRASE:
            raise EPortError(
                f"EPORT_AUTH_KEY_PASSPHRASE must have at least {MIN_NEW_PASSPHRASE} "
                "characters: it encrypts the token service's signing keys, kept in its "
                "database and its backups"
            )
        return
    # Every key that signs or is to sign, of each family: a next key made by a host with
    # another passphrase (hosts share the database) was promoted by a rotation, and every
    # token request on every host then failed (PostgreSQL probe, F1).
    for key in signing:
        try:
            serialization.load_pem_private_key(key.private_pem, passphrase)
        except (ValueError, TypeError):
            raise EPortError(
                f"EPORT_AUTH_KEY_PASSPHRASE does not open the token service's {key.state} "
                f"{key.alg} signing key {key.kid} (the passphrase the keys were made with is "
                "needed; every host of the database uses the same one)"
            ) from None
