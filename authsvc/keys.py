"""Token-signing keys (ES256, RFC 7518 §3.4) and their rotation without a validation gap.

A key goes ``next`` → ``active`` → ``retired`` → gone:

* a ``next`` key is published in the JWKS (RFC 7517) before it signs anything, so
  relying parties that refreshed their JWKS already know it when it starts signing;
* rotation makes ``next`` the ``active`` signer, retires the old active key and
  creates a new ``next``;
* a ``retired`` key stays published until every token it signed has expired
  (``unpublish_at`` = retirement + the longest token lifetime + leeway).

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
from cryptography.hazmat.primitives.asymmetric import ec

from ca.errors import EPortError

ALG = "ES256"
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


class KeyStore(Protocol):
    def list_keys(self) -> list[StoredKey]: ...

    def rotate_locked(self, mutate: Callable[[list[StoredKey]], list[StoredKey]]) -> None:
        """Under an exclusive lock: read all keys, and write back what ``mutate`` returns."""
        ...


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    nums = key.public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    jwk = {"crv": "P-256", "kty": "EC", "x": b64(nums.x), "y": b64(nums.y)}
    # RFC 7638 §3: the thumbprint hashes the required members in lexicographic order.
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    return {**jwk, "kid": kid, "use": "sig", "alg": ALG}


def new_key(passphrase: bytes, now: datetime.datetime) -> StoredKey:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(private.public_key())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    return StoredKey(kid=jwk["kid"], state="next", public_jwk=jwk, private_pem=pem, created_at=now)


class KeyRing:
    """The signing key in use and the published JWKS, re-read every ``refresh`` seconds
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
    ) -> None:
        self.store = store
        self.passphrase = passphrase
        self.clock = clock
        self.max_token_lifetime = max_token_lifetime
        self.rotation_period = rotation_period
        self.refresh_every = refresh
        self._lock = threading.Lock()
        self._loaded_at: datetime.datetime | None = None
        self._signer: tuple[str, ec.EllipticCurvePrivateKey] | None = None
        self._jwks: dict[str, Any] = {"keys": []}
        self._public: dict[str, ec.EllipticCurvePublicKey] = {}

    def ensure(self) -> None:
        """Create the first active and next keys if there are none."""
        now = self.clock()

        def mutate(keys: list[StoredKey]) -> list[StoredKey]:
            if any(k.state == "active" for k in keys):
                return keys
            first = new_key(self.passphrase, now)
            first = StoredKey(**{**first.__dict__, "state": "active", "activated_at": now})
            return [*keys, first, new_key(self.passphrase, now)]

        self.store.rotate_locked(mutate)
        self._loaded_at = None

    def rotate(self, *, force: bool = False) -> str:
        """next → active, active → retired (published until its tokens expired), new next.

        Refused (unless ``force``) while the ``next`` key has been published for less than
        :data:`JWKS_MAX_AGE`: relying parties that cached the JWKS before it appeared
        would otherwise meet tokens of a key they have not seen."""
        now = self.clock()
        promoted: list[str] = []

        def mutate(keys: list[StoredKey]) -> list[StoredKey]:
            nxt_keys = [k for k in keys if k.state == "next"]
            if not force and nxt_keys and now - nxt_keys[0].created_at < JWKS_MAX_AGE:
                age = int((now - nxt_keys[0].created_at).total_seconds())
                raise KeyRotationTooSoon(
                    f"the next key was published {age} s ago; relying parties may cache the "
                    f"JWKS for {int(JWKS_MAX_AGE.total_seconds())} s (wait, or force it)"
                )
            out = []
            unpublish = now + self.max_token_lifetime + datetime.timedelta(minutes=5)
            nxt = [k for k in keys if k.state == "next"]
            for k in keys:
                if k.state == "active":
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
                elif k.state == "next" and k is nxt[0]:
                    out.append(StoredKey(**{**k.__dict__, "state": "active", "activated_at": now}))
                    promoted.append(k.kid)
                elif k.state == "retired" and k.unpublish_at is not None and k.unpublish_at < now:
                    continue  # every token it signed has expired
                else:
                    out.append(k)
            if not nxt:
                first = new_key(self.passphrase, now)
                out.append(StoredKey(**{**first.__dict__, "state": "active", "activated_at": now}))
                promoted.append(first.kid)
            out.append(new_key(self.passphrase, now))
            return out

        self.store.rotate_locked(mutate)
        self._loaded_at = None
        return promoted[0]

    def maybe_rotate(self) -> bool:
        """The schedule: rotate when the active key is older than the rotation period."""
        now = self.clock()
        active = [k for k in self.store.list_keys() if k.state == "active"]
        if (
            active
            and active[0].activated_at
            and now - active[0].activated_at < self.rotation_period
        ):
            return False
        self.rotate()
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
            active = next((k for k in keys if k.state == "active"), None)
            if active is not None and (self._signer is None or self._signer[0] != active.kid):
                private = serialization.load_pem_private_key(active.private_pem, self.passphrase)
                assert isinstance(private, ec.EllipticCurvePrivateKey)
                self._signer = (active.kid, private)
            public: dict[str, ec.EllipticCurvePublicKey] = {}
            for k in published:
                jwk = k.public_jwk
                x = int.from_bytes(_b64d(jwk["x"]), "big")
                y = int.from_bytes(_b64d(jwk["y"]), "big")
                public[k.kid] = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
            # Swapped in whole: readers on other threads never see a half-built set.
            self._jwks = {"keys": [k.public_jwk for k in published]}
            self._public = public
            self._loaded_at = now

    def signer(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        self._load()
        if self._signer is None:
            raise RuntimeError("no active signing key; run the token service's set-up")
        return self._signer

    def jwks(self) -> dict[str, Any]:
        """The published keys as stored now: a relying party that meets a new ``kid`` in a
        token minted by another process must find it here, whichever process answers (the
        endpoint is fetched rarely: relying parties cache it)."""
        self._load(fresh=True)
        return self._jwks

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        self._load()
        key = self._public.get(kid)
        now = self.clock()
        # An unknown kid may have just been published by another process: re-read, but at
        # most once a second, so random kids cannot turn into a database load.
        if key is None and self._loaded_at is not None and now - self._loaded_at > _RELOAD_MIN:
            self._loaded_at = None
            self._load()
            key = self._public.get(kid)
        return key


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def check_passphrase(store: KeyStore, passphrase: bytes) -> None:
    """Refuse (EPortError, one line) a passphrase that does not open the stored active
    signing key: a server started with a wrong EPORT_AUTH_KEY_PASSPHRASE would answer
    every token request 500. Nothing stored yet: nothing to check."""
    from ca.errors import EPortError

    active = next((k for k in store.list_keys() if k.state == "active"), None)
    if active is None:
        return
    try:
        serialization.load_pem_private_key(active.private_pem, passphrase)
    except (ValueError, TypeError):
        raise EPortError(
            "EPORT_AUTH_KEY_PASSPHRASE does not open the token service's signing keys "
            "(the passphrase they were made with is needed)"
        ) from None
