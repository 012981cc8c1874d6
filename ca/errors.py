"""One typed error tree for the joint CA, rendered once.

Every error is also an RFC 9457 problem document: ``type`` is a stable URI under
``urn:eport:problem:``, ``title`` a short summary of the kind of problem, ``status``
the HTTP status code, and ``detail`` the explanation of this occurrence. The CLI
prints ``detail`` as its one line; the HTTP layer renders :meth:`EPortError.problem`.
"""

from __future__ import annotations

import errno
import sqlite3
from typing import Any, ClassVar


class EPortError(Exception):
    """Base of every error the CA and its clients raise on purpose."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"
    challenge: str | None = None
    """For a 401: the ``WWW-Authenticate`` it sends (RFC 9110 §11.6.1), how to
    authenticate where it was raised."""
    public_detail: ClassVar[str | None] = None
    """The problem document's ``detail`` when :attr:`detail` is for the server's log only
    (it names module paths, token labels, key files): clients get this instead."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return f"urn:eport:problem:{self.slug}"

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 problem document (members ``type``, ``title``, ``status``, ``detail``)."""
        doc: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.public_detail or self.detail,
        }
        if instance is not None:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc


class BadRequest(EPortError):
    """The request is malformed: wrong JSON, missing member, unparseable PEM/DER."""

    status = 400
    slug = "bad-request"
    title = "Bad request"


class InvalidUSCC(BadRequest):
    """A Unified Social Credit Code fails GB 32100-2015 (alphabet, length or check character)."""

    slug = "invalid-uscc"
    title = "Invalid Unified Social Credit Code"


class BadCSR(BadRequest):
    """A PKCS#10 request (RFC 2986) that cannot be parsed or fails proof of possession."""

    slug = "bad-csr"
    title = "Unacceptable certificate signing request"


class WeakKey(BadRequest):
    """A public key the profile does not allow (type, size, or curve)."""

    slug = "weak-key"
    title = "Key not allowed by the profile"


class UnknownProfile(BadRequest):
    slug = "unknown-profile"
    title = "Unknown certificate profile"


class Unauthenticated(EPortError):
    """A signed request that is missing, malformed, expired, replayed or not trusted."""

    status = 401
    slug = "unauthenticated"
    title = "Authentication required"
    challenge: str | None = 'EPort-Signed realm="eport"'
    """A signed request; the audit API, which also takes access tokens, names both."""

    def __init__(self, detail: str, *, challenge: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        if challenge is not None:
            self.challenge = challenge


class Replayed(Unauthenticated):
    slug = "replayed"
    title = "Signed request replayed"


class Forbidden(EPortError):
    """The caller is authenticated but its role does not allow the action."""

    status = 403
    slug = "forbidden"
    title = "Not allowed"


class ProfileNotAllowed(Forbidden):
    slug = "profile-not-allowed"
    title = "Profile not allowed for this enrollment code"


class NotFound(EPortError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(EPortError):
    """The action conflicts with the current state (already decided, key already certified)."""

    status = 409
    slug = "conflict"
    title = "Conflict with the current state"


class InvalidCode(EPortError):
    """An enrollment code that is unknown, already used, or expired."""

    status = 403
    slug = "invalid-enrollment-code"
    title = "Invalid enrollment code"


class PayloadTooLarge(EPortError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class CodingNotImplemented(EPortError):
    """A request framed with a transfer coding other than ``chunked`` (``gzip, chunked``):
    the server takes off the chunks but decodes no other coding, so the body is not the
    one the client sent; RFC 9112 §6.1 answers 501."""

    status = 501
    slug = "transfer-coding-not-implemented"
    title = "Not implemented"


class UnsupportedMediaType(EPortError):
    """A body sent with a media type the endpoint does not read (RFC 9110 §15.5.16): a
    JSON endpoint is sent ``text/plain`` or a form. The detail names what to send."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class LintFailed(EPortError):
    """Pre-issuance linting found an error in the to-be-signed certificate; nothing was signed."""

    status = 500
    slug = "lint-failed"
    title = "Certificate failed pre-issuance linting"


class PolicyError(EPortError):
    """A file in ``policies/`` is invalid; the message names the file and the key."""

    slug = "policy-error"
    title = "Invalid policy file"

    def __init__(self, path: str, key: str, message: str) -> None:
        super().__init__(f"{path}: {key}: {message}")
        self.path = path
        self.key = key


class Sealed(EPortError):
    """The CA's issuing keys are not available (sealed); issuance is refused."""

    status = 503
    slug = "sealed"
    title = "The CA is sealed"


KEY_LOST_DETAIL = (
    "a CA key this request needs is missing or damaged: retrying will not help until the "
    "CA's operators restore the key or replace it (the server's log says which)"
)


class KeyLost(Sealed):
    """One CA key cannot be used while the others can: its key file missing, unreadable or
    damaged, or (:class:`ca.pkcs11.KeyMissing`) the key gone from its PKCS#11 token. 503
    ``key-missing``; unlike a sealed CA, asking again soon will not help (the CA's
    emergency plan, section 7). ``detail`` names the key, for the server's log."""

    slug = "key-missing"
    title = "A CA key is missing"
    public_detail = KEY_LOST_DETAIL


class IssuerRevoked(EPortError):
    """The issuing CA a profile issues from is revoked on the root's CRL."""

    status = 503
    slug = "issuer-revoked"
    title = "The issuing CA is revoked"


class IssuerExpired(EPortError):
    """The issuing CA a profile issues from has expired, or ends too soon to issue a
    certificate worth having: nothing is signed, no code is used."""

    status = 503
    slug = "issuer-expired"
    title = "The issuing CA has expired"


class IssuerUnavailable(EPortError):
    """The issuing CA generation a profile issues from is on another host only."""

    status = 503
    slug = "issuer-unavailable"
    title = "The issuing CA is not on this host"


class SchemaMoved(EPortError):
    """The database's schema is no longer this release's: a newer release upgraded it
    while this server ran. Its rules are not the schema's any more, so it writes nothing
    (reads go on) until it is stopped and the new release started."""

    status = 503
    slug = "schema-upgraded"
    title = "The database was upgraded by another release"


class DatabaseDamaged(EPortError):
    """The server's SQLite database file (or its ``-wal``) was deleted while the server had
    it open: what it would write goes into a file no later start reads (certificates
    issued, then lost and never revocable: emergency-plan probe, session 27). It writes
    nothing more; the database is restored (docs/emergency-plan.md, runbook 4)."""

    status = 503
    slug = "database-damaged"
    title = "The database is damaged"


class NotDurable(EPortError):
    """An issuance committed whose write-ahead log could not be flushed to disk: visible,
    but perhaps lost in a crash. Never handed out as issued (nor found again as a replay
    of itself), and never said as a full disk (507: nothing was stored). 503: it may or
    may not be stored."""

    status = 503
    slug = "database-unavailable"
    title = "Database unavailable"


class StorageFull(EPortError):
    """The server's storage is full (SQLite's ``SQLITE_FULL``, ``ENOSPC``, PostgreSQL's
    ``disk_full``): the write was rolled back, nothing is wrong with the request, and it can
    be sent again once space is freed. 507 Insufficient Storage (RFC 4918 §11.5)."""

    status = 507
    slug = "storage-full"
    title = "Insufficient storage"


class TokenCheckUnavailable(EPortError):
    """An access token could not be checked: the token service's keys could not be had (a
    fault, not a verdict on the token): 503, to be retried."""

    status = 503
    slug = "token-check-unavailable"
    title = "The access token could not be checked"
    public_detail = (
        "the token service's keys could not be fetched to check the access token; try again shortly"
    )


class DatabaseUnavailable(EPortError):
    """The database cannot be reached or used now (a lost or refused connection, a lock
    not granted in time, a file opened read-only): 503, to be retried. A change asked
    for may or may not have committed (its acknowledgement can be what was lost)."""

    status = 503
    slug = "database-unavailable"
    title = "Database unavailable"


def server_error_problem(detail: str = "the server failed") -> dict[str, Any]:
    """The RFC 9457 body of an unexpected failure: nothing about its cause goes out."""
    return {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": detail,
    }


SQLITE_UNAVAILABLE = {5: "busy", 6: "locked", 8: "read-only", 10: "I/O error", 14: "cannot open"}
"""SQLite's primary result codes (sqlite3.h) that say the database cannot be used now
(``SQLITE_BUSY``, ``SQLITE_LOCKED``, ``SQLITE_READONLY``, ``SQLITE_IOERR``,
``SQLITE_CANTOPEN``), not that the request or our code is wrong."""


SQLITE_READONLY = 8


def opened_read_only(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error in its chain) is SQLite's ``SQLITE_READONLY``: its
    connection opened the file read-only (it was not writable then), and stays so however
    the file's permissions change after. Such a connection is to be closed, not kept."""
    cause = database_unavailable_cause(exc)
    code = getattr(cause, "sqlite_errorcode", None)
    return isinstance(cause, sqlite3.Error) and code is not None and code & 0xFF == SQLITE_READONLY


def database_unavailable_cause(exc: BaseException | None) -> BaseException | None:
    """The error in ``exc``'s chain that says the database cannot be reached or used now:
    a connection lost or refused, a lock not granted in time, a statement cancelled, a
    database opened read-only (PostgreSQL's driver's ``OperationalError`` and
    ``InterfaceError``, SQLite's busy, locked, read-only, I/O and open errors), no pooled
    connection free in time (SQLAlchemy's ``TimeoutError``: every one of
    ``EPORT_DB_POOL_SIZE`` + ``EPORT_DB_MAX_OVERFLOW`` in use for
    ``EPORT_DB_POOL_TIMEOUT_SECONDS``); None when the failure is something else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _pool_timeout(exc):
            return exc
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in SQLITE_UNAVAILABLE:
                return exc
        elif type(exc).__module__.startswith("psycopg2") and any(
            c.__name__ in ("OperationalError", "InterfaceError") for c in type(exc).__mro__
        ):
            return exc
        orig = getattr(exc, "orig", None)
        exc = orig if isinstance(orig, BaseException) else exc.__cause__ or exc.__context__
    return None


def _pool_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLAlchemy's pool checkout timeout, told by name: this module
    does not import SQLAlchemy (the pool's ``TimeoutError`` is no DBAPI error, so it was
    a 500 "the server failed" with a traceback)."""
    return any(
        c.__module__ == "sqlalchemy.exc" and c.__name__ == "TimeoutError" for c in type(exc).__mro__
    )


SQLITE_FULL = 13
"""SQLite's result code for "database or disk is full" (sqlite3.h)."""
PG_DISK_FULL = "53100"
"""PostgreSQL's SQLSTATE ``disk_full`` (Appendix A, class 53: insufficient resources)."""


def storage_full_cause(exc: BaseException | None) -> BaseException | None:
    """The error in ``exc``'s chain (SQLAlchemy's ``orig``, ``__cause__``, ``__context__``)
    that says the storage is full: ``ENOSPC``/``EDQUOT``, SQLite's ``SQLITE_FULL`` or
    PostgreSQL's ``disk_full``; None when the failure is something else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:
            return exc
        if getattr(exc, "pgcode", None) == PG_DISK_FULL:
            return exc
        orig = getattr(exc, "orig", None)
        exc = orig if isinstance(orig, BaseException) else exc.__cause__ or exc.__context__
    return None
