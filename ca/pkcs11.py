"""CA and enterprise keys held in a PKCS#11 token (an HSM, a smart card, SoftHSM2).

* :class:`Pkcs11Uri` parses and writes RFC 7512 URIs
  (``pkcs11:token=eport-ca;object=issuers%2Fenterprise;id=%a1%b2?pin-source=file:/etc/pin``).
* :class:`Pkcs11Signer` is a :class:`~ca.signer.Signer` whose private key never leaves
  the token: ECDSA with ``CKM_ECDSA`` over a digest computed here (PKCS#11 v2.40 §2.3.6;
  the token returns raw r‖s, re-encoded as the DER ``Ecdsa-Sig-Value`` of RFC 5480 §2.2
  for X.509), Ed25519 with ``CKM_EDDSA`` (RFC 8032, PKCS#11 v3.0 §2.3.14), RSA with
  ``CKM_SHA256_RSA_PKCS`` / ``CKM_SHA384_RSA_PKCS``.
* :func:`generate` makes a key pair in the token (sensitive, never extractable) and
  returns the URI naming it; :func:`write_reference` records that URI (never a PIN)
  with the public key in a CA key file (``ca/issuers/enterprise.key``).
* :func:`private_key` wraps a token key in ``cryptography``'s private key interfaces,
  so the CSR builder and PyJWT sign with it (the CLI's ``--key pkcs11:...``).
* :class:`TokenShareKey` is an AES-256 key made in a custodian's own token that
  encrypts that custodian's share file (``CKM_AES_GCM`` computed by the token,
  PKCS#11 v2.40 §2.11.4): the file opens only where the token and its PIN are.

Sessions: one per token and process, opened on first use and logged in with the PIN
from ``pin-source`` (a file), ``pin-value`` or ``EPORT_PKCS11_PIN``. A forked child
(a gunicorn worker) re-initializes the library and opens its own session, as PKCS#11
requires (v2.40 §6.6.1); one lock per module serializes operations on its sessions and
its re-initialization. A token that went away (or dropped the session or the objects
found in it) is looked for again after ``C_Finalize``/``C_Initialize``, at most once
every :data:`REINITIALIZE_INTERVAL` seconds per process, so that every worker signs
again once it is back (SoftHSM2 reads its slots only at ``C_Initialize``).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from asn1crypto.core import ObjectIdentifier, OctetString
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    encode_dss_signature,
)

from ca.errors import KEY_LOST_DETAIL, KeyLost, Sealed
from ca.keys import KeyType

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MODULE_ENV = "EPORT_PKCS11_MODULE"
PIN_ENV = "EPORT_PKCS11_PIN"
REFERENCE_PREFIX = b"PKCS11 "

# RFC 7512 §2.3: the path and query attributes this consumer understands.
_PATH_ATTRS = frozenset(
    {
        "token",
        "manufacturer",
        "serial",
        "model",
        "library-manufacturer",
        "library-description",
        "library-version",
        "slot-id",
        "slot-description",
        "slot-manufacturer",
        "object",
        "type",
        "id",
    }
)
_QUERY_ATTRS = frozenset({"pin-source", "pin-value", "module-name", "module-path"})
# RFC 7512 §2.3: besides RFC 3986 unreserved characters, a value may hold these unescaped
# (pk11-path-res-avail, pk11-query-res-avail); everything else is percent-encoded.
_SAFE_PATH = ":[]@!$'()*+,=&"
_SAFE_QUERY = ":[]@!$'()*+,=/?|"

_CURVE_OIDS = {KeyType.P256: "1.2.840.10045.3.1.7", KeyType.P384: "1.3.132.0.34"}
_CURVES: dict[str, ec.EllipticCurve] = {
    "1.2.840.10045.3.1.7": ec.SECP256R1(),
    "1.3.132.0.34": ec.SECP384R1(),
}
_ED25519_OID = "1.3.101.112"  # RFC 8410 id-Ed25519, as PKCS#11 v3.0 names the curve


PUBLIC_DETAIL = "the CA's key token is unavailable: try again later (the server's log says why)"
"""The ``detail`` of a :class:`Pkcs11Error` over HTTP: the server's own detail names its
module path, token and key labels, and is for its log (``ca.problems`` logs every 5xx)."""


class Pkcs11Error(Sealed):
    """A token key cannot be reached: bad URI, module, token, PIN or object (503)."""

    slug = "key-unavailable"
    title = "A key in the PKCS#11 token is unavailable"
    public_detail = PUBLIC_DETAIL
    """None of the server's paths or labels (the server's log says :attr:`detail`)."""


class _NotOne(Pkcs11Error):
    """The URI matches no object, or several."""


class KeyMissing(_NotOne, KeyLost):
    """The token is there and the PIN works, but the key the URI names is not in it: deleted,
    or lost with a token that was re-initialized (503 ``key-missing``; the CA's
    emergency plan, §7). Unlike a token that went away, asking again soon will not help."""

    slug = "key-missing"
    title = "A CA key is missing from its PKCS#11 token"
    public_detail = KEY_LOST_DETAIL


class _Unreachable(Pkcs11Error):
    """The token cannot be found or reached through the module as this process sees it:
    it may be gone, or back while this process's view of the slots is not."""


_DROPPED = (
    pkcs11.SessionClosed,
    pkcs11.SessionHandleInvalid,
    pkcs11.DeviceRemoved,
    pkcs11.TokenNotPresent,
    pkcs11.ObjectHandleInvalid,
    pkcs11.KeyHandleInvalid,
)
"""What an operation raises when the token dropped this process's session, or the objects
found through it (a token removed, or gone and back: SoftHSM2 invalidates the handles of
objects whose files went away)."""

_TOKEN_GONE = (
    pkcs11.NoSuchToken,
    pkcs11.TokenNotPresent,
    pkcs11.TokenNotRecognised,
    pkcs11.DeviceRemoved,
    pkcs11.DeviceError,
    pkcs11.SlotIDInvalid,
    pkcs11.SessionHandleInvalid,
    pkcs11.GeneralError,
    pkcs11.UserAlreadyLoggedIn,
    pkcs11.UserPinNotInitialized,
)
"""What finding the token or logging in to it raises when it is gone, or when this
process's view of it is stale (SoftHSM2 answers ``CKR_GENERAL_ERROR`` for a token whose
directory went away until it is re-initialized, and, seen under load in a worker whose
token came back, ``CKR_USER_PIN_NOT_INITIALIZED``; a session the token dropped may still
hold the login): worth another look after ``C_Finalize``/``C_Initialize``. A token whose
user PIN really is not set still fails after that look, with the same name."""

MISSING_RECHECK = 5.0
"""Seconds during which one process does not look again for a key it found missing: each
look re-initializes the module (see :meth:`_Token.key`), which voids every session of it
in the process, so a lost key asked for by every request must not cost one each time."""

REINITIALIZE_INTERVAL = 1.0
"""Seconds between two re-initializations of a module by one process because a token
could not be found: a token that stays away costs each request one failed look-up, not
a ``C_Finalize``/``C_Initialize`` (which also voids every session of the module)."""


@dataclass(frozen=True)
class Pkcs11Uri:
    """An RFC 7512 PKCS#11 URI naming a token and (for a key) an object in it."""

    path: Mapping[str, str] = field(default_factory=dict)
    """Path attributes, percent-decoded (``token``, ``object``, ``serial``…);
    ``id`` is kept here in its percent-encoded form (it is bytes, see :attr:`id`)."""
    query: Mapping[str, str] = field(default_factory=dict)
    """Query attributes, percent-decoded (``module-path``, ``pin-source``, ``pin-value``)."""

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """Parse ``text``; anything this consumer cannot honour is refused (RFC 7512 §2.3)."""
        text = text.strip()
        if not text.lower().startswith("pkcs11:"):
            raise Pkcs11Error(
                f"not a PKCS#11 URI (RFC 7512): it must start with 'pkcs11:': {_shown(text)}"
            )
        body = text[len("pkcs11:") :]
        path_part, _, query_part = body.partition("?")
        path: dict[str, str] = {}
        query: dict[str, str] = {}
        for part, sep, known, out in (
            (path_part, ";", _PATH_ATTRS, path),
            (query_part, "&", _QUERY_ATTRS, query),
        ):
            for item in filter(None, part.split(sep)):
                name, eq, value = item.partition("=")
                name = name.strip().lower()
                if not eq:
                    raise Pkcs11Error(f"PKCS#11 URI attribute {name!r} has no value")
                if name.startswith("x-"):
                    continue  # vendor extensions (RFC 7512 §2.3) we do not use
                if name not in known:
                    raise Pkcs11Error(f"PKCS#11 URI attribute {name!r} is not supported")
                if name in out:
                    raise Pkcs11Error(f"PKCS#11 URI attribute {name!r} appears twice")
                try:
                    decoded = _unquote_bytes(value)
                    out[name] = value if name == "id" else decoded.decode("utf-8")
                except (ValueError, UnicodeDecodeError):
                    raise Pkcs11Error(f"PKCS#11 URI attribute {name!r} is badly encoded") from None
        uri = cls(path, query)
        uri.id  # noqa: B018 (validates the encoding)
        if "pin-value" in query and "pin-source" in query:
            raise Pkcs11Error("a PKCS#11 URI gives either pin-value or pin-source, not both")
        if "slot-id" in path and not path["slot-id"].isdigit():
            raise Pkcs11Error("PKCS#11 URI slot-id must be a decimal number")
        return uri

    def __str__(self) -> str:
        parts = []
        for name, value in self.path.items():
            encoded = value if name == "id" else urllib.parse.quote(value, safe=_SAFE_PATH)
            parts.append(f"{name}={encoded}")
        text = "pkcs11:" + ";".join(parts)
        if self.query:
            text += "?" + "&".join(
                f"{n}={urllib.parse.quote(v, safe=_SAFE_QUERY)}" for n, v in self.query.items()
            )
        return text

    def __repr__(self) -> str:
        return f"Pkcs11Uri({self.without_pin()})"

    @property
    def id(self) -> bytes | None:
        raw = self.path.get("id")
        if raw is None:
            return None
        try:
            return _unquote_bytes(raw)
        except ValueError:
            raise Pkcs11Error("PKCS#11 URI attribute 'id' is badly encoded") from None

    @property
    def object(self) -> str | None:
        return self.path.get("object")

    @property
    def module(self) -> str:
        """``module-path``, else ``EPORT_PKCS11_MODULE``, else SoftHSM2's module."""
        if "module-name" in self.query and "module-path" not in self.query:
            raise Pkcs11Error("give the PKCS#11 module as module-path=/path/to/module.so")
        return self.query.get("module-path") or os.environ.get(MODULE_ENV) or DEFAULT_MODULE

    @property
    def token_label(self) -> str:
        return self.path.get("token") or self.path.get("serial") or self.path.get("slot-id", "")

    def with_key(self, label: str, key_id: bytes) -> Pkcs11Uri:
        """This token's URI naming one key (``object`` and ``id``)."""
        path = {k: v for k, v in self.path.items() if k not in ("object", "id", "type")}
        path.update(object=label, id="".join(f"%{b:02x}" for b in key_id))
        return replace(self, path=path)

    def token_only(self) -> Pkcs11Uri:
        """This URI naming its token only (no ``object``, ``id``, ``type``): where to make
        another key beside the one it names."""
        path = {k: v for k, v in self.path.items() if k not in ("object", "id", "type")}
        return replace(self, path=path)

    def without_pin(self) -> Pkcs11Uri:
        """The URI to store or show: a ``pin-value`` is dropped (``pin-source`` stays)."""
        return replace(self, query={k: v for k, v in self.query.items() if k != "pin-value"})

    def pin(self) -> str:
        """The user PIN: ``pin-value``, the file ``pin-source`` names, or ``EPORT_PKCS11_PIN``."""
        if "pin-value" in self.query:
            return self.query["pin-value"]
        source = self.query.get("pin-source")
        if source is not None:
            name = source[len("file:") :] if source.startswith("file:") else source
            if name.startswith("//"):
                name = urllib.parse.urlsplit("file:" + name).path
            try:
                return Path(name).read_text().rstrip("\r\n")
            except OSError as exc:
                raise Pkcs11Error(f"cannot read the PIN file {name}: {exc.strerror}") from None
        if os.environ.get(PIN_ENV):
            return os.environ[PIN_ENV]
        raise Pkcs11Error(
            f"no PIN for PKCS#11 token {self.token_label!r}: add ?pin-source=file:PATH to the "
            f"URI or set {PIN_ENV}"
        )


def _unquote_bytes(value: str) -> bytes:
    out = bytearray()
    i = 0
    raw = value.encode("utf-8")
    while i < len(raw):
        if raw[i : i + 1] == b"%":
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2:
                raise ValueError("truncated percent-encoding")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def _shown(text: str) -> str:
    """A URI as an error message may show it: without any pin-value."""
    head, sep, query = text.partition("?")
    if not sep:
        return head[:200]
    kept = [q for q in query.split("&") if not q.lower().startswith("pin-value=")]
    return (head + ("?" + "&".join(kept) if kept else ""))[:200]


# -- sessions ---------------------------------------------------------------------------------

T = TypeVar("T")


class _Module:
    """One PKCS#11 module (library) as this process initialized it, and its tokens."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        """Held for every operation on a session of this module and for its
        (re-)initialization, which voids them all (PKCS#11 v2.40 §5.4: C_Finalize)."""
        self.tokens: list[_Token] = []
        self._pid = -1
        self._reinitialized_at = -math.inf

    def load(self) -> Any:
        """The library, initialized in this process (call with :attr:`lock` held)."""
        try:
            lib = pkcs11.lib(self.path)
        except pkcs11.PKCS11Error as exc:
            raise Pkcs11Error(
                f"cannot load the PKCS#11 module {self.path}: {_load_failure(self.path, exc)}"
            ) from None
        if self._pid == -1:
            self._pid = os.getpid()
        elif self._pid != os.getpid():
            # PKCS#11 v2.40 §6.6.1: a forked child must initialize the library again
            # (every session inherited from the parent is void).
            self._restart(lib)
        return lib

    def reinitialize(self, *, force: bool) -> bool:
        """``C_Finalize`` and ``C_Initialize`` (call with :attr:`lock` held), as a restarted
        process would: the module reads its slots and tokens again, and every session of
        it in this process is closed first. Unless ``force``, at most once every
        :data:`REINITIALIZE_INTERVAL` seconds; returns whether it ran."""
        if not force and time.monotonic() - self._reinitialized_at < REINITIALIZE_INTERVAL:
            return False
        lib = self.load()
        self._restart(lib)
        return True

    def _restart(self, lib: Any) -> None:
        for token in list(self.tokens):
            token.drop()
        self._reinitialized_at = time.monotonic()
        with contextlib.suppress(pkcs11.PKCS11Error):
            lib.finalize()
        try:
            lib.initialize()
        except pkcs11.PKCS11Error as exc:  # the next pkcs11.lib() tries again
            raise Pkcs11Error(
                f"cannot initialize the PKCS#11 module {self.path} again: "
                f"{_load_failure(self.path, exc)}"
            ) from None
        self._pid = os.getpid()


class _Token:
    """One process's session with one token, logged in; re-opened after a fork."""

    def __init__(self, module: _Module, selector: tuple[str, str]) -> None:
        self.module = module
        self.selector = selector
        self.lock = module.lock
        self._pid = -1
        self._session: Any = None
        self._keys: dict[tuple[Any, ...], Any] = {}
        self.missing: dict[tuple[Any, ...], float] = {}
        """``(name, object class)`` of the keys found missing by this process's last look,
        and when (``time.monotonic``): a forked worker inherits the entries of the checks
        ``eport serve`` made before the fork."""

    def _open(self, pin: str) -> Any:
        """A new logged-in session. A token this process cannot find or reach is looked
        for again once after re-initializing the module (rate-limited: see
        :meth:`_Module.reinitialize`): it may be back while this process's view of the
        module's slots is still the one from before it went away."""
        try:
            return self._login(self.module.load(), pin)
        except _Unreachable as exc:
            detail = exc.detail
        if self.module.reinitialize(force=False):
            try:
                return self._login(self.module.load(), pin)
            except _Unreachable as exc:
                detail = exc.detail
        raise Pkcs11Error(detail)

    def _login(self, lib: Any, pin: str) -> Any:
        name, value = self.selector
        try:
            if name == "slot-id":
                slot = next((s for s in lib.get_slots() if s.slot_id == int(value)), None)
                if slot is None:
                    raise pkcs11.NoSuchToken(f"slot {value}")
                token = slot.get_token()
            elif name == "serial":
                token = lib.get_token(token_serial=value.encode())
            else:
                token = lib.get_token(token_label=value)
        except (pkcs11.NoSuchToken, pkcs11.MultipleTokensReturned):
            raise _Unreachable(
                f"no single PKCS#11 token with {name} {value!r} in {self.module.path}"
            ) from None
        except _TOKEN_GONE as exc:
            raise _Unreachable(
                f"cannot reach PKCS#11 token {value!r} in {self.module.path}: {_name(exc)}"
            ) from None
        try:
            return token.open(user_pin=pin, rw=True)
        except pkcs11.PinIncorrect:
            raise Pkcs11Error(f"wrong PIN for PKCS#11 token {value!r}") from None
        except pkcs11.PinLocked:
            raise Pkcs11Error(f"the PIN of PKCS#11 token {value!r} is locked") from None
        except _TOKEN_GONE as exc:
            raise _Unreachable(
                f"cannot log in to PKCS#11 token {value!r} in {self.module.path}: {_name(exc)}"
            ) from None
        except pkcs11.PKCS11Error as exc:
            raise Pkcs11Error(f"cannot log in to PKCS#11 token {value!r}: {_name(exc)}") from None

    def session(self, uri: Pkcs11Uri) -> Any:
        """The logged-in session of this process (call with :attr:`lock` held)."""
        if self._session is None or self._pid != os.getpid():
            self.drop()
            self._session = self._open(uri.pin())
            self._pid = os.getpid()
        return self._session

    def drop(self) -> None:
        """Forget the session and the objects found through it (call with :attr:`lock`
        held). One this process opened is closed (logging out, so that the next one can
        log in); one inherited over a fork is the parent's and is left alone."""
        session, self._session = self._session, None
        self._keys.clear()
        if session is not None and self._pid == os.getpid():
            with contextlib.suppress(pkcs11.PKCS11Error):
                session.close()

    def run(self, uri: Pkcs11Uri, op: Callable[[Any], T]) -> T:
        """``op(session)`` under the lock; a session the token dropped (or whose objects it
        dropped) is re-opened once, the token looked for again if need be (:meth:`_open`).
        ``op`` finds its objects through :meth:`key` (never keeps them from an earlier
        session), so that the second try uses the new session's."""
        with self.lock:
            try:
                return op(self.session(uri))
            except _DROPPED:
                self.drop()
            try:
                return op(self.session(uri))
            except _DROPPED as exc:
                self.drop()
                raise Pkcs11Error(
                    f"PKCS#11 token {self.selector[1]!r} in {self.module.path} dropped the "
                    f"session again: {_name(exc)}"
                ) from None

    def forget(self, uri: Pkcs11Uri) -> None:
        with self.lock:
            name = str(uri.without_pin())
            for k in [k for k in self._keys if k[0] == name]:
                del self._keys[k]

    def key(self, uri: Pkcs11Uri, object_class: Any, name: str | None = None) -> Any:
        """The object ``uri`` names (by ``object`` label and/or ``id``), cached per session
        under ``name`` (``str(uri.without_pin())``, which callers may have computed)."""
        cache = (name or str(uri.without_pin()), object_class)

        def find(session: Any) -> Any:
            if cache in self._keys:
                return self._keys[cache]
            attrs: dict[Any, Any] = {pkcs11.Attribute.CLASS: object_class}
            if uri.object is not None:
                attrs[pkcs11.Attribute.LABEL] = uri.object
            if uri.id is not None:
                attrs[pkcs11.Attribute.ID] = uri.id
            if len(attrs) == 1:
                raise Pkcs11Error("the PKCS#11 URI names no key: give object= and/or id=")
            found = list(session.get_objects(attrs))
            if len(found) != 1:
                kind, shown = _class_name(object_class), uri.without_pin()
                if not found:
                    raise KeyMissing(f"no {kind} matching {shown} in the token")
                raise _NotOne(f"{len(found)} keys, not one {kind} matching {shown} in the token")
            self._keys[cache] = found[0]
            return found[0]

        with self.lock:
            age = time.monotonic() - self.missing.get(cache, -math.inf)
            if age < MISSING_RECHECK:
                raise KeyMissing(
                    f"no {_class_name(object_class)} matching {uri.without_pin()} in the token "
                    f"(looked for {age:.1f} s ago)"
                )
            try:
                return self.run(uri, find)
            except _NotOne:
                # A key another process made may stay invisible to this one's view of the
                # token (SoftHSM2 indexes its object files per process;
                # softhsm/SoftHSMv2#358): look again after re-initializing the module, as a
                # restarted process would.
                self.module.reinitialize(force=True)
                try:
                    return self.run(uri, find)
                except KeyMissing:
                    self.missing[cache] = time.monotonic()
                    raise
            finally:
                if cache in self._keys:
                    self.missing.pop(cache, None)

    def is_missing(self, name: str) -> bool:
        """Whether this process's last look for a key named ``name`` found it missing (read
        without the module's lock: a health check must not wait for a slow token)."""
        return any(n == name for n, _ in list(self.missing))


_modules: dict[str, _Module] = {}
_tokens: dict[tuple[str, tuple[str, str]], _Token] = {}
_tokens_lock = threading.Lock()
"""Guards :data:`_modules` and :data:`_tokens`; a module's lock is never taken under it."""


def _token(uri: Pkcs11Uri) -> _Token:
    for name in ("token", "serial", "slot-id"):
        if name in uri.path:
            selector = (name, uri.path[name])
            break
    else:
        raise Pkcs11Error("the PKCS#11 URI names no token: give token=LABEL (or serial=, slot-id=)")
    key = (uri.module, selector)
    with _tokens_lock:
        if key not in _tokens:
            module = _modules.setdefault(uri.module, _Module(uri.module))
            _tokens[key] = _Token(module, selector)
            module.tokens.append(_tokens[key])
        return _tokens[key]


def _load_failure(path: str, exc: BaseException) -> str:
    """Why ``pkcs11.lib(path)`` failed: python-pkcs11's own message (the library could not
    be loaded), else the return value of the module's ``C_Initialize`` (or
    ``C_GetFunctionList``), which an exception carries as its class and no message."""
    if str(exc):
        return str(exc)
    why = f"it loaded, but its initialization failed ({type(exc).__name__})"
    if "softhsm" in Path(path).name.lower():
        conf = os.environ.get("SOFTHSM2_CONF")
        where = f"SOFTHSM2_CONF={conf}" if conf else "/etc/softhsm/softhsm2.conf"
        why += f": check SoftHSM2's configuration ({where}) and the token directory it names"
    return why


def _name(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _class_name(object_class: Any) -> str:
    if object_class == pkcs11.ObjectClass.SECRET_KEY:
        return "secret key"
    return "private key" if object_class == pkcs11.ObjectClass.PRIVATE_KEY else "public key"


# -- keys -------------------------------------------------------------------------------------


def _public_from_object(obj: Any) -> CertificatePublicKeyTypes:
    kt = obj[pkcs11.Attribute.KEY_TYPE]
    if kt == pkcs11.KeyType.RSA:
        n = int.from_bytes(obj[pkcs11.Attribute.MODULUS], "big")
        e = int.from_bytes(obj[pkcs11.Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    params = obj[pkcs11.Attribute.EC_PARAMS]
    point = bytes(OctetString.load(obj[pkcs11.Attribute.EC_POINT]).native)
    if kt == pkcs11.KeyType.EC_EDWARDS:
        return ed25519.Ed25519PublicKey.from_public_bytes(point)
    if kt == pkcs11.KeyType.EC:
        oid = ObjectIdentifier.load(params).dotted
        curve = _CURVES.get(oid)
        if curve is None:
            raise Pkcs11Error(f"the token key's curve {oid} is not P-256 or P-384")
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    raise Pkcs11Error(f"the token key's type {kt!r} is not supported")


class Pkcs11Signer:
    """A :class:`~ca.signer.Signer` whose private key stays in a PKCS#11 token."""

    def __init__(self, uri: Pkcs11Uri | str, public_key: CertificatePublicKeyTypes | None = None):
        self.uri = Pkcs11Uri.parse(uri) if isinstance(uri, str) else uri
        self._token = _token(self.uri)
        self._name = str(self.uri.without_pin())
        self._public = public_key
        self._type: KeyType | None = None
        self._checked_pid = -1

    @property
    def key_type(self) -> KeyType:
        if self._type is None:
            self._type = KeyType.of(self.public_key())
        return self._type

    def public_key(self) -> CertificatePublicKeyTypes:
        """The expected public key (from the reference file), else read from the token."""
        if self._public is None:
            self._public = self.token_public_key()
        return self._public

    def token_public_key(self) -> CertificatePublicKeyTypes:
        def read(_session: Any) -> CertificatePublicKeyTypes:
            pub = self._token.key(self.uri, pkcs11.ObjectClass.PUBLIC_KEY, self._name)
            return _public_from_object(pub)

        return self._token.run(self.uri, read)

    @property
    def missing(self) -> bool:
        """Whether this process's last look for this key found it missing from the token
        (:class:`KeyMissing`); answered without asking the token."""
        return self._token.is_missing(self._name)

    def check(self) -> None:
        """Open the session and prove the token holds the expected key (once a process)."""
        if self._checked_pid == os.getpid():
            return
        if self._public is not None and self.token_public_key() != self._public:
            raise Pkcs11Error(f"the token key {self.uri.without_pin()} is not the expected key")
        self._token.key(self.uri, pkcs11.ObjectClass.PRIVATE_KEY)
        self._checked_pid = os.getpid()

    def _raw(self, data: bytes, mechanism: Any) -> bytes:
        self.check()

        def op(_session: Any) -> bytes:
            key = self._token.key(self.uri, pkcs11.ObjectClass.PRIVATE_KEY, self._name)
            try:
                return bytes(key.sign(data, mechanism=mechanism))
            except _DROPPED:
                raise  # the token dropped the session or the key: run() opens a new one
            except pkcs11.PKCS11Error as exc:
                raise Pkcs11Error(
                    f"the token refused to sign with {self.uri.without_pin()}: {_name(exc)}"
                ) from None

        return self._token.run(self.uri, op)

    def sign_ecdsa(self, data: bytes, algorithm: hashes.HashAlgorithm | Prehashed) -> bytes:
        """ECDSA as DER ``Ecdsa-Sig-Value``: hash here, ``CKM_ECDSA`` over the digest."""
        if isinstance(algorithm, Prehashed):
            digest = data
        else:
            h = hashes.Hash(algorithm)
            h.update(data)
            digest = h.finalize()
        raw = self._raw(digest, pkcs11.Mechanism.ECDSA)
        half = len(raw) // 2
        r, s = int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        return encode_dss_signature(r, s)

    def sign_rsa(self, data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        mechanisms = {
            "sha256": pkcs11.Mechanism.SHA256_RSA_PKCS,
            "sha384": pkcs11.Mechanism.SHA384_RSA_PKCS,
            "sha512": pkcs11.Mechanism.SHA512_RSA_PKCS,
        }
        if algorithm.name not in mechanisms:
            raise Pkcs11Error(f"RSA with {algorithm.name} is not supported")
        return self._raw(data, mechanisms[algorithm.name])

    def sign(self, data: bytes) -> bytes:
        """The X.509 signature of ``data`` (RFC 5480 ECDSA DER, RFC 8410 Ed25519, PKCS#1 v1.5)."""
        kt = self.key_type
        if kt is KeyType.ED25519:
            return self._raw(data, pkcs11.Mechanism.EDDSA)
        h = kt.hash_algorithm
        assert h is not None
        if kt in (KeyType.P256, KeyType.P384):
            return self.sign_ecdsa(data, h)
        return self.sign_rsa(data, h)

    def __repr__(self) -> str:
        return f"Pkcs11Signer({self.uri.without_pin()})"


def generate(
    uri: Pkcs11Uri | str,
    key_type: KeyType,
    label: str,
    made: list[Pkcs11Uri] | None = None,
) -> Pkcs11Signer:
    """A new key pair of ``key_type`` made in the token ``uri`` names: the private key
    is sensitive, never extractable, and can only sign. Returns its signer; the
    signer's ``uri`` names the new key (``object=label;id=<8 random bytes>``).
    ``made``: the new key's URI is appended to it before the token is asked, so that a
    run stopped at any point (even inside this call) knows every key it may have made."""
    base = Pkcs11Uri.parse(uri) if isinstance(uri, str) else uri
    key_id = os.urandom(8)
    keyed = base.with_key(label, key_id)
    if made is not None:
        made.append(keyed)
    token = _token(base)
    common = {pkcs11.Attribute.TOKEN: True, pkcs11.Attribute.LABEL: label}
    private = {
        **common,
        pkcs11.Attribute.PRIVATE: True,
        pkcs11.Attribute.SENSITIVE: True,
        pkcs11.Attribute.EXTRACTABLE: False,
        pkcs11.Attribute.SIGN: True,
        pkcs11.Attribute.DECRYPT: False,
        pkcs11.Attribute.UNWRAP: False,
        pkcs11.Attribute.DERIVE: False,
    }
    public = {
        **common,
        pkcs11.Attribute.VERIFY: True,
        pkcs11.Attribute.ENCRYPT: False,
        pkcs11.Attribute.WRAP: False,
    }

    def make(session: Any) -> None:
        try:
            if key_type in _CURVE_OIDS or key_type is KeyType.ED25519:
                if key_type is KeyType.ED25519:
                    pkt = pkcs11.KeyType.EC_EDWARDS
                    oid = _ED25519_OID
                else:
                    pkt, oid = pkcs11.KeyType.EC, _CURVE_OIDS[key_type]
                params = session.create_domain_parameters(
                    pkt, {pkcs11.Attribute.EC_PARAMS: ObjectIdentifier(oid).dump()}, local=True
                )
                params.generate_keypair(
                    id=key_id, store=True, public_template=public, private_template=private
                )
            else:
                bits = int(key_type.value[3:])
                session.generate_keypair(
                    pkcs11.KeyType.RSA,
                    bits,
                    id=key_id,
                    store=True,
                    public_template={
                        **public,
                        pkcs11.Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01",
                    },
                    private_template=private,
                )
        except pkcs11.PKCS11Error as exc:
            raise Pkcs11Error(
                f"the token {base.token_label!r} cannot make a {key_type.value} key: {_name(exc)}"
            ) from None

    token.run(base, make)
    signer = Pkcs11Signer(keyed)
    signer.public_key()
    return signer


# -- CA key files that refer to a token key -----------------------------------------------------


def is_reference(path: Path) -> bool:
    """Whether the CA key file ``path`` names a token key rather than holding a sealed key."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(REFERENCE_PREFIX)) == REFERENCE_PREFIX
    except FileNotFoundError:
        return False


def write_reference(path: Path, signer: Pkcs11Signer) -> None:
    """Write ``PKCS11 <uri>`` (no PIN) and the public key (PEM) to the key file ``path``."""
    from ca.signer import write_private

    pem = signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_private(path, REFERENCE_PREFIX + str(signer.uri.without_pin()).encode() + b"\n" + pem)


def read_reference(path: Path) -> Pkcs11Signer:
    """The signer a key file written by :func:`write_reference` names; the token is opened
    (and its key checked against the recorded public key) on first use."""
    blob = path.read_bytes()
    if not blob.startswith(REFERENCE_PREFIX):
        raise Pkcs11Error(f"{path.name} does not name a PKCS#11 key")
    line, _, pem = blob.partition(b"\n")
    try:
        public = serialization.load_pem_public_key(pem)
        uri = Pkcs11Uri.parse(line[len(REFERENCE_PREFIX) :].decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise Pkcs11Error(f"{path.name} is a damaged PKCS#11 key reference: {exc}") from None
    return Pkcs11Signer(uri, public)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TokenKeys:
    """Where ``eport ca init --pkcs11-uri`` makes the CA keys: one token, and whether the
    root key goes there too (else it stays wrapped by the custody root KEK)."""

    uri: Pkcs11Uri
    root: bool = False
    made: list[Pkcs11Uri] = field(default_factory=list, compare=False, repr=False)
    """Every key :meth:`generate` made (or was making) in the token, in order: what an
    init cut short destroys (:meth:`destroy_made`)."""

    def holds(self, path: Path) -> bool:
        """Whether the key of the CA key file ``path`` is made in the token."""
        from ca.sealing import slot_of

        return self.root or slot_of(path) != "ca/root"

    def generate(self, key_type: KeyType, path: Path) -> Pkcs11Signer:
        """Make the key of ``path`` in the token (labelled ``eport issuers/enterprise``),
        and write the reference to it at ``path``."""
        from ca.sealing import slot_of

        signer = generate(self.uri, key_type, f"eport {slot_of(path)}", self.made)
        write_reference(path, signer)
        return signer

    def destroy_made(self) -> tuple[list[Pkcs11Uri], list[Pkcs11Uri]]:
        """Delete from the token every key :meth:`generate` made: an init cut short leaves
        none behind (their labels are those of a live CA's keys). Returns the keys
        destroyed and those that could not be (the token gone, the PIN refused), each
        named by its label and ``CKA_ID`` (:func:`key_name`) for the user to delete."""
        gone: list[Pkcs11Uri] = []
        kept: list[Pkcs11Uri] = []
        for uri in self.made:
            try:
                destroy(uri)
            except Exception:  # each key on its own: one that fails leaves the others gone
                kept.append(uri)
            else:
                gone.append(uri)
        self.made.clear()
        return gone, kept


# -- a token key behind cryptography's private key interfaces ----------------------------------


class _NotExportable:
    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise Pkcs11Error("a key in a PKCS#11 token cannot be exported")

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        return self


class TokenECKey(_NotExportable, ec.EllipticCurvePrivateKey):
    """A P-256/P-384 token key as ``cryptography`` sees a private key: the CSR builder and
    PyJWT call :meth:`sign`, which runs ``CKM_ECDSA`` in the token."""

    def __init__(self, signer: Pkcs11Signer) -> None:
        self.signer = signer
        pub = signer.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        self._public = pub

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise Pkcs11Error("this token key can only sign")

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def sign(self, data: Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise Pkcs11Error("this token key signs ECDSA only")
        return self.signer.sign_ecdsa(bytes(data), signature_algorithm.algorithm)

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise Pkcs11Error("a key in a PKCS#11 token cannot be exported")


class TokenEd25519Key(_NotExportable, ed25519.Ed25519PrivateKey):
    """An Ed25519 token key as ``cryptography`` sees one (``CKM_EDDSA``)."""

    def __init__(self, signer: Pkcs11Signer) -> None:
        self.signer = signer
        pub = signer.public_key()
        assert isinstance(pub, ed25519.Ed25519PublicKey)
        self._public = pub

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public

    def private_bytes_raw(self) -> bytes:
        raise Pkcs11Error("a key in a PKCS#11 token cannot be exported")

    def sign(self, data: Any) -> bytes:
        return self.signer.sign(bytes(data))


class TokenRSAKey(_NotExportable, rsa.RSAPrivateKey):
    """An RSA token key as ``cryptography`` sees one (PKCS#1 v1.5 only)."""

    def __init__(self, signer: Pkcs11Signer) -> None:
        self.signer = signer
        pub = signer.public_key()
        assert isinstance(pub, rsa.RSAPublicKey)
        self._public = pub

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        raise Pkcs11Error("this token key can only sign")

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def sign(
        self,
        data: Any,
        padding_: padding.AsymmetricPadding,
        algorithm: Any,
    ) -> bytes:
        if not isinstance(padding_, padding.PKCS1v15) or not isinstance(
            algorithm, hashes.HashAlgorithm
        ):
            raise Pkcs11Error("this token key signs RSA PKCS#1 v1.5 only")
        return self.signer.sign_rsa(bytes(data), algorithm)

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise Pkcs11Error("a key in a PKCS#11 token cannot be exported")


TokenKey = TokenECKey | TokenEd25519Key | TokenRSAKey


def private_key(uri: Pkcs11Uri | str) -> TokenKey:
    """The token key ``uri`` names, usable wherever ``cryptography`` wants a private key
    for signing (CSR builder, PyJWT); it logs in to the token and checks the key now."""
    signer = Pkcs11Signer(uri)
    signer.check()
    pub = signer.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        KeyType.of(pub)
        return TokenECKey(signer)
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return TokenEd25519Key(signer)
    if isinstance(pub, rsa.RSAPublicKey):
        return TokenRSAKey(signer)
    raise Pkcs11Error(f"the token key {signer.uri.without_pin()} has an unsupported type")


def login(uri: Pkcs11Uri) -> None:
    """Open this process's session with the token ``uri`` names (module, token, PIN)."""
    _token(uri).run(uri, lambda _s: None)


def key_name(uri: Pkcs11Uri) -> str:
    """A token key as a person finds it with ``pkcs11-tool --list-objects``: its label and
    ``CKA_ID`` in hex (``'eport issuers/agency' id 3f9a…``)."""
    key_id = uri.id.hex() if uri.id is not None else "?"
    return f"{uri.object!r} id {key_id}"


def destroy(uri: Pkcs11Uri) -> None:
    """Delete the key pair ``uri`` names (by its ``id``) from the token: used when a key
    made for an enrollment was not certified."""
    key_id = uri.id
    if key_id is None:
        raise Pkcs11Error("only a key named by its id= can be deleted")

    def op(session: Any) -> None:
        for obj in list(session.get_objects({pkcs11.Attribute.ID: key_id})):
            obj.destroy()

    token = _token(uri)
    token.run(uri, op)
    token.forget(uri)


# -- a custodian's share file encrypted by a key in the custodian's token -------------------------

SHARE_KEY_MECHANISM = "CKM_AES_GCM"
_SELECTORS = ("token", "serial", "slot-id")


@dataclass(frozen=True)
class TokenShareKey:
    """An AES-256 secret key in a custodian's PKCS#11 token that encrypts and decrypts
    that custodian's share file with AES-GCM inside the token (``CKM_AES_GCM``).

    The key is sensitive and never extractable, and it can only encrypt and decrypt
    (no wrap, unwrap, sign or derive): whoever holds the share file still needs the
    token and its PIN, and whoever holds the token and PIN still needs the file. The
    share file's header records :meth:`stored_uri` (token, object label and id: no
    module path or PIN, which belong to the host that opens it).
    """

    uri: Pkcs11Uri
    """Names the key (``object`` and ``id``); its query says how to reach the token."""

    @classmethod
    def generate(cls, token_uri: Pkcs11Uri, label: str) -> TokenShareKey:
        """A new key in the token ``token_uri`` names, labelled ``label``."""
        key_id = os.urandom(8)
        keyed = token_uri.with_key(label, key_id)
        template = {
            pkcs11.Attribute.TOKEN: True,
            pkcs11.Attribute.PRIVATE: True,
            pkcs11.Attribute.SENSITIVE: True,
            pkcs11.Attribute.EXTRACTABLE: False,
            pkcs11.Attribute.ENCRYPT: True,
            pkcs11.Attribute.DECRYPT: True,
            pkcs11.Attribute.WRAP: False,
            pkcs11.Attribute.UNWRAP: False,
            pkcs11.Attribute.SIGN: False,
            pkcs11.Attribute.VERIFY: False,
            pkcs11.Attribute.DERIVE: False,
        }

        def make(session: Any) -> None:
            try:
                session.generate_key(
                    pkcs11.KeyType.AES, 256, id=key_id, label=label, store=True, template=template
                )
            except pkcs11.PKCS11Error as exc:
                raise Pkcs11Error(
                    f"the token {token_uri.token_label!r} cannot make an AES-256 key: {_name(exc)}"
                ) from None

        _token(token_uri).run(token_uri, make)
        return cls(keyed)

    @classmethod
    def for_file(cls, stored: str, given: Pkcs11Uri | None = None) -> TokenShareKey:
        """The key a share file's header names (``stored``), reached through ``given``
        (the custodian's ``--pkcs11-uri``: module, PIN source, and the token if it was
        relabelled); without ``given``, the module and PIN come from the environment."""
        named = Pkcs11Uri.parse(stored)
        if named.id is None or named.object is None:
            raise Pkcs11Error("the share file names no token key (object= and id=)")
        if given is None:
            return cls(named)
        selector = given if any(s in given.path for s in _SELECTORS) else named
        path = {k: v for k, v in selector.path.items() if k in _SELECTORS}
        path.update(object=named.path["object"], id=named.path["id"])
        return cls(Pkcs11Uri(path, dict(given.query)))

    def stored_uri(self) -> str:
        """What the share file records: the key's path attributes only."""
        return str(Pkcs11Uri(dict(self.uri.path)))

    @property
    def label(self) -> str:
        return self.uri.token_label

    def header(self) -> dict[str, Any]:
        """The share file's header entry that says how it is opened."""
        return {"token": {"mechanism": SHARE_KEY_MECHANISM, "key": self.stored_uri()}}

    def _run(self, op: Callable[[Any], T]) -> T:
        token = _token(self.uri)

        def keyed(_session: Any) -> T:
            try:
                key = token.key(self.uri, pkcs11.ObjectClass.SECRET_KEY)
            except Pkcs11Error as exc:
                if "matching" not in exc.detail:
                    raise  # module, token or PIN: the message says which
                raise Pkcs11Error(
                    f"token {self.label!r} does not hold the key of this share file "
                    f"({self.uri.object}): not this custodian's token"
                ) from None
            return op(key)

        return token.run(self.uri, keyed)

    def encrypt(self, nonce: bytes, plain: bytes, aad: bytes) -> bytes:
        """AES-256-GCM in the token: ciphertext ‖ 16-byte tag."""

        def op(key: Any) -> bytes:
            try:
                return bytes(
                    key.encrypt(
                        plain,
                        mechanism=pkcs11.Mechanism.AES_GCM,
                        mechanism_param=pkcs11.GCMParams(nonce, aad),
                    )
                )
            except pkcs11.PKCS11Error as exc:
                raise Pkcs11Error(
                    f"the token {self.label!r} cannot encrypt with AES-GCM: {_name(exc)}"
                ) from None

        return self._run(op)

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytearray:
        """Open what :meth:`encrypt` made; a wrong key or any change to the ciphertext or
        associated data fails the GCM tag in the token (raises :class:`Pkcs11Error`)."""

        def op(key: Any) -> bytearray:
            try:
                return bytearray(
                    key.decrypt(
                        ciphertext,
                        mechanism=pkcs11.Mechanism.AES_GCM,
                        mechanism_param=pkcs11.GCMParams(nonce, aad),
                    )
                )
            except _DROPPED:
                raise
            except pkcs11.PKCS11Error:
                raise Pkcs11Error(
                    f"the key in token {self.label!r} does not open this share file "
                    "(not this custodian's key, or the file was changed)"
                ) from None

        return self._run(op)

    def destroy(self) -> None:
        """Delete the key from the token (a share file made for a ceremony that failed)."""
        key_id = self.uri.id

        def op(session: Any) -> None:
            attrs = {
                pkcs11.Attribute.ID: key_id,
                pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
            }
            for obj in list(session.get_objects(attrs)):
                obj.destroy()

        token = _token(self.uri)
        token.run(self.uri, op)
        token.forget(self.uri)

    def __repr__(self) -> str:
        return f"TokenShareKey({self.uri.without_pin()})"
