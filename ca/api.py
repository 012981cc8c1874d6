"""The CA's HTTP API under ``/ca/v1/`` (JSON; errors are RFC 9457 problem+json).

Public: applying, enrolling with a one-time code, reading the CA certificates.
Signed (``Authorization: EPort-Signed <JWS>``, see :mod:`ca.signedreq`): everything
an RA officer, an enterprise or a certificate holder does.
"""

from __future__ import annotations

import base64
import datetime
import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, current_app, jsonify, request

from ca import hierarchy
from ca.app import EXTENSION, CAService
from ca.authority import Caller, CodeGrant, Issued, JointCA, authorization_id
from ca.crl import ReasonCode
from ca.errors import BadRequest, Forbidden, NotFound
from ca.openapi import openapi_document
from ca.policy import SubjectClass, authorization_label
from ca.problems import no_cache_of_private
from ca.records import (
    Application,
    ApplicationState,
    CertificateRecord,
    StatusRecord,
    StatusState,
    code_state,
)
from ca.revocation import StatusChange
from ca.signedreq import verify_http_request
from ca.wellformed import int_arg, iso_time, json_request_body, only, refuse_non_json

bp = Blueprint("ca_v1", __name__, url_prefix="/ca/v1")


@bp.after_request
def private_answers(resp: Response) -> Response:
    """Answers to authenticated or state-changing requests (enrollment codes, vetted data,
    audit records) are never stored by a cache; none is sniffed as another type. Not the
    enrollment's: it carries a public certificate, and its WSGI fast path
    (:mod:`ca.enroll_http`) answers byte for byte as this view does."""
    if request.path == "/ca/v1/enroll":
        return resp
    return no_cache_of_private(resp)


def svc() -> CAService:
    service: CAService = current_app.extensions[EXTENSION]
    return service


def json_body() -> dict[str, Any]:
    """The request's body as a JSON object, refused at the edge as :mod:`ca.wellformed`
    says: 415 when a body is sent as anything but ``application/json`` (a cross-site
    form's ``text/plain``), 400 when it is not I-JSON or holds NUL or a lone surrogate.
    Every view that reads a body reads it here. The body is read first, so one over the
    limit is a 413 whatever its type. A signed request's body type is checked before its
    signature (:func:`signed_caller`), so a 415 does not spend its ``jti``."""
    return json_request_body(request.mimetype, request.get_data(cache=True))


def field(data: dict[str, Any], name: str, *, required: bool = True) -> Any:
    value = data.get(name)
    if required and (value is None or value == ""):
        raise BadRequest(f"{name!r} is required")
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a string")
    return value


def signed_caller() -> Caller:
    """The caller of a signed request. Every signed CA endpoint reads JSON or no body: one
    sent as anything else is refused (415) first, before its ``jti`` is spent."""
    s = svc()
    refuse_non_json(request.mimetype, request.get_data(cache=True))
    req = verify_http_request(
        request,
        trust=s.trust,
        replay=s.store,
        now=s.clock(),
        leeway=datetime.timedelta(seconds=s.config.clock_skew_seconds),
        max_lifetime=datetime.timedelta(seconds=s.config.request_max_lifetime_seconds),
    )
    return s.authority.caller(req)


def iso(dt: datetime.datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def app_json(app: Application, pending_until: datetime.datetime | None = None) -> dict[str, Any]:
    """An application as officers and its applicant see it; ``pending_until``: when a
    pending one can no longer be approved (:meth:`ca.authority.JointCA.pending_until`)."""
    return {
        "id": app.id,
        "subject_class": app.subject_class,
        "uscc": app.uscc,
        "subject": dict(app.vetted),
        "state": app.state.value,
        "created_at": iso(app.created_at),
        "applicant": app.applicant,
        "decided_by": app.decided_by,
        "decided_at": iso(app.decided_at),
        "reason": app.reason,
        "pending_until": iso(pending_until),
    }


def grant_json(grant: CodeGrant) -> dict[str, Any]:
    return {
        "application": app_json(grant.application),
        "enrollment_code": grant.code,
        "expires_at": iso(grant.expires_at),
        "profiles": list(grant.profiles),
        "withdrawn_codes": grant.withdrawn,
    }


def cert_json(rec: CertificateRecord, *, with_pem: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "serial": rec.serial_hex,
        "issuer": rec.issuer_id,
        "profile": rec.profile,
        "subject": rec.subject,
        "uscc": rec.uscc,
        "not_before": iso(rec.not_before),
        "not_after": iso(rec.not_after),
        "sha256": rec.cert_sha256,
        "application_id": rec.application_id,
    }
    if with_pem:
        out["certificate"] = certificate_pem(rec.der)
    return out


def certificate_pem(der: bytes) -> str:
    """RFC 7468 PEM of a DER certificate (64-character lines), from the stored bytes: no
    second DER encoding of the certificate object."""
    b64 = base64.b64encode(der).decode("ascii")
    lines = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"


def issued_json(issued: Issued) -> dict[str, Any]:
    out = cert_json(issued.record, with_pem=True)
    out["chain"] = issued.chain_pem()
    return out


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


@bp.get("/health")
def health() -> Response:
    """Liveness (200 while the process answers) with what a monitor needs to know:
    sealed, the database's state, the root CRL's end, the CA files' state, CA keys
    lost (missing from their token, or their key files unreadable). With ``?ready`` it is
    a readiness check: 503 while the database cannot be used (a lost key leaves the rest
    serving: still ready)."""
    from sqlalchemy import text

    from ca.errors import DatabaseDamaged, SchemaMoved, database_unavailable_cause
    from ca.privatefiles import sqlite_file, sqlite_files_lost

    s = svc()
    sealed = any(getattr(i.signer, "sealed", False) for i in s.authority.issuers.values())
    out: dict[str, Any] = {"status": "ok", "sealed": sealed, "database": "ok"}
    try:
        with s.store.reading() as tx:
            tx.s.execute(text("SELECT 1"))
    except Exception as exc:
        if database_unavailable_cause(exc) is None:
            raise
        out.update(status="degraded", database="unavailable")
    warnings: list[str] = []
    if out["database"] == "ok":
        try:
            s.store.check_schema()  # as every write checks it (at most every few seconds)
        except DatabaseDamaged:
            pass  # its file deleted: said below
        except SchemaMoved as exc:
            # writes are refused (503 schema-upgraded): not ready, so a load balancer sends
            # them to a host of the release that upgraded the database
            out.update(status="degraded", database="upgraded")
            warnings.append(exc.detail)
    # the CA's SQLite database, and the token service's beside it (its default)
    files = [sqlite_file(s.config.sqlalchemy_url), Path(s.config.data_dir) / "auth.db"]
    lost = next(
        (said for f in files if f is not None and (said := sqlite_files_lost(f)) is not None),
        None,
    )
    if lost is not None:
        # Commits since go with the deleted file at the next start: not ready, and said.
        out.update(status="degraded", database="damaged")
        warnings.append(
            f"{lost}: what was written since is lost when the server stops; stop it, keep "
            "the data directory as it is, and restore the database from a backup "
            "(docs/backup.md)"
        )
    # Only a quorum ceremony (or a development CA's start) signs the root CRL: monitoring
    # sees its end coming.
    out["root_crl_next_update"] = iso(hierarchy.root_crl_next_update(s.root_crl))
    notice = hierarchy.root_crl_notice(s.root_crl, s.clock(), dev=s.config.dev)
    warnings += [notice] if notice is not None else []
    warnings += hierarchy.issuer_notices(s.authority.issuers, s.authority.policies, s.clock())
    if out["database"] == "ok":
        warnings += s.authority.officer_notices(s.clock())
    # Another host of the database changed the CA files (ca.crosshost): "stale" while
    # this host serves older ones it cannot update by itself.
    from ca.app import CROSSHOST, CrossHostState

    crosshost: CrossHostState | None = current_app.extensions.get(CROSSHOST)
    out["hierarchy"] = "stale" if crosshost is not None and crosshost.stale else "current"
    if crosshost is not None:
        warnings += crosshost.warnings()
    # CA keys this worker found lost (missing from their PKCS#11 token at the start's
    # check, which every worker inherits, or since; a key file that did not open): the
    # rest serves, so readiness stays.
    missing = s.hierarchy.missing_keys(dev=s.config.dev)
    if missing:
        out.update(status="degraded", missing_keys=sorted(missing))
        warnings += missing.values()
    # A ceremony that failed and could not put its files back (a full disk): they may be
    # ahead of the database until the next join or start settles its journal.
    from ca import log_key_signature
    from ca.custody import members_notice
    from ca.quorum_api import EXTENSION as CUSTODY

    custody = current_app.extensions.get(CUSTODY)
    if custody is not None:  # a member added or taken out of the policies, not re-shared
        members = s.authority.policies.members
        said = members_notice(
            custody.record,
            [(m.id, m.custodian) for m in members.members],
            members.threshold,
        )
        if said is not None:
            warnings.append(said)
    from ca.ceremony_files import unsettled

    log_pub = hierarchy.ca_dir(s.config.data_dir) / "log.pub"
    if log_pub.exists():
        _, why = log_key_signature.state_of(Path(s.config.data_dir), log_pub.read_bytes())
        if why is not None:
            warnings.append(
                f"ca/log.pub.sig is not the root's signature of the log key ({why}): "
                "auditors checking the log key under the root (audit verify --root) are "
                "refused; restore the file from the data directory's backup"
            )
    if unsettled(hierarchy.ca_dir(s.config.data_dir)):
        out.update(status="degraded", hierarchy="unsettled")
        warnings.append(
            "a failed ceremony's CA files were not all put back (a full disk?): free the "
            "space, then the next ceremony join or a restart puts them back from its "
            "journal (docs/emergency-plan.md §5)"
        )
    if warnings:
        out["warnings"] = warnings
    resp = jsonify(out)
    if "ready" in request.args and out["database"] != "ok":
        resp.status_code = 503
        resp.headers["Retry-After"] = "5"
    return resp


@bp.get("/ca")
def ca_certificates() -> Response:
    """The root and the issuing CA certificates (PEM), for building chains: ``issuers``
    those that issue now, ``generations`` every generation by its id (revoked ones too:
    their certificates are refused by name), which a token service run apart trusts
    (``eport auth fetch-ca``)."""
    s = svc()
    pem = serialization.Encoding.PEM
    return jsonify(
        {
            "root": s.authority.root.public_bytes(pem).decode(),
            "issuers": {
                i.id: i.certificate.public_bytes(pem).decode() for i in s.authority.issuers.values()
            },
            "generations": {
                gen: issuer.certificate.public_bytes(pem).decode()
                for gen, issuer in sorted(s.status.issuers.items())
            },
        }
    )


@bp.get("/issuers/<issuer_id>.cer")
def issuer_certificate(issuer_id: str) -> Response:
    """An issuing CA's (or the root's) certificate, DER: the AIA caIssuers target (RFC 5280
    §4.2.2.1, media type application/pkix-cert per RFC 2585)."""
    s = svc()
    if issuer_id == "root":
        cert = s.authority.root
    else:
        # Every generation under its own id: after a rollover the URL in older
        # certificates still names the CA that signed them.
        issuer = s.status.issuers.get(issuer_id)
        if issuer is None:
            raise NotFound(f"no issuing CA {issuer_id!r}")
        cert = issuer.certificate
    resp = Response(cert.public_bytes(serialization.Encoding.DER), mimetype="application/pkix-cert")
    resp.cache_control.public = True
    resp.cache_control.max_age = 86400
    return resp


@bp.post("/applications")
def apply() -> tuple[Response, int]:
    data = json_body()
    # Only a missing member means the default: "" or null is a class nobody can apply for.
    subject_class = data.get("subject_class", "enterprise")
    if not isinstance(subject_class, str):
        raise BadRequest("'subject_class' must be a string: enterprise, agency, auditor or service")
    fields = {k: v for k, v in data.items() if k != "subject_class"}
    authority = svc().authority
    app = authority.apply(subject_class, fields, applicant="anonymous")
    return jsonify(app_json(app, authority.pending_until(app))), 201


@bp.get("/applications/<app_id>")
def application_status(app_id: str) -> Response:
    """What the applicant sees of its application: its state, and a rejection's reason;
    not the vetted data (whoever learns an id learns no more than that)."""
    authority = svc().authority
    app = authority.application(app_id)
    resp = jsonify(
        {
            "id": app.id,
            "subject_class": app.subject_class,
            "state": app.state.value,
            "created_at": iso(app.created_at),
            "decided_at": iso(app.decided_at),
            "reason": app.reason,
            "pending_until": iso(authority.pending_until(app)),
        }
    )
    resp.headers["Cache-Control"] = "no-store"
    return resp


_CURSOR_PREFIX = "v1:"
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,40}")


def listing_cursor(key: int) -> str:
    """The opaque ``next`` of a listing page: where the next one starts (after the row of
    listing key ``key``, ``ca/models.py`` "Listing keys"). Clients only send it back."""
    raw = f"{_CURSOR_PREFIX}{key}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _after_arg() -> int:
    """The listing key the ``after`` cursor names (-1: none given, the first page)."""
    text = request.args.get("after")
    if text is None or text == "":
        return -1
    bad = BadRequest(
        "'after' is not a cursor this listing gave: send back the 'next' of the last page "
        "as it came (eport: --after), or leave it out for the first page"
    )
    if not _CURSOR.fullmatch(text):
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    digits = raw.removeprefix(_CURSOR_PREFIX)
    if not raw.startswith(_CURSOR_PREFIX) or not digits.isdigit() or len(digits) > 18:
        raise bad
    return int(digits)


def _page_args() -> tuple[int, int, int | None]:
    """``limit``, ``after`` (a listing key) and ``offset`` of a listing; ``offset`` is None
    unless the client sent one. Paging by offset is kept for clients of a release before
    cursors (which send it, read ``next_offset``, and may skip or repeat rows changed
    between pages); it goes over the same order, and never with a cursor."""
    limit = int_arg("limit", 100, 1, 1000)
    after = _after_arg()
    offset = None
    if request.args.get("offset") not in (None, ""):
        if after >= 0:
            raise BadRequest("give 'after' (a cursor) or 'offset', not both")
        offset = int_arg("offset", 0, 0, 10**9)
    return limit, after, offset


def _page_links(keys: list[int], limit: int, offset: int | None) -> dict[str, Any]:
    """``next`` (a cursor, or None on the last page) of a page read with ``limit + 1``
    rows asked (the extra one tells a next page exists without taking a whole page); with
    ``offset`` also the older clients' ``next_offset``."""
    more = len(keys) > limit
    out: dict[str, Any] = {"next": listing_cursor(keys[limit - 1]) if more else None}
    if offset is not None:
        out["next_offset"] = offset + limit if more else None
    return out


@bp.get("/ra/applications")
def list_applications() -> Response:
    caller = signed_caller()
    state_arg = request.args.get("state", "pending")
    state = None if state_arg == "all" else _state(state_arg)
    limit, after, offset = _page_args()
    authority = svc().authority
    listed = authority.list_applications(caller, state, limit + 1, after, offset or 0)
    now = authority.clock()
    return jsonify(
        {
            "applications": [
                {
                    **app_json(app, authority.pending_until(app)),
                    "code": None
                    if code is None
                    else {"state": code_state(code, now), "expires_at": iso(code.expires_at)},
                }
                for _, app, code in listed[:limit]
            ],
            **_page_links([key for key, _, _ in listed], limit, offset),
        }
    )


def _state(value: str) -> ApplicationState:
    try:
        return ApplicationState(value)
    except ValueError:
        raise BadRequest(f"unknown state {value!r} (pending, approved, rejected, all)") from None


def profiles_arg(data: dict[str, Any]) -> list[str] | None:
    profiles = data.get("profiles")
    if profiles is not None and (
        not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles)
    ):
        raise BadRequest("'profiles' must be a list of profile names")
    return profiles


@bp.post("/ra/applications/<app_id>/approve")
def approve(app_id: str) -> Response:
    caller = signed_caller()
    data = only(json_body(), "an approval", "profiles")
    grant = svc().authority.approve(caller, app_id, profiles_arg(data))
    return jsonify(grant_json(grant))


@bp.post("/ra/applications/<app_id>/withdraw")
def withdraw(app_id: str) -> Response:
    """Withdraw an approval before the applicant enrolled (its codes stop working)."""
    caller = signed_caller()
    data = only(json_body(), "a withdrawal", "reason")
    app = svc().authority.withdraw(caller, app_id, field(data, "reason"))
    return jsonify(app_json(app))


@bp.post("/ra/applications/<app_id>/code")
def reissue_code(app_id: str) -> tuple[Response, int]:
    """A new enrollment code for an approved application (the last one lost or expired)."""
    caller = signed_caller()
    data = only(json_body(), "a new code", "profiles")
    grant = svc().authority.reissue_code(caller, app_id, profiles_arg(data))
    return jsonify(grant_json(grant)), 201


@bp.post("/ra/applications/<app_id>/reject")
def reject(app_id: str) -> Response:
    caller = signed_caller()
    data = only(json_body(), "a rejection", "reason")
    app = svc().authority.reject(caller, app_id, field(data, "reason"))
    return jsonify(app_json(app))


def enrollment(authority: JointCA, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``POST /enroll`` from its JSON body: status and JSON document, or an EPortError.
    Framework-free: the view below and the WSGI fast path (:mod:`ca.enroll_http`) both
    answer through it."""
    only(data, "an enrollment", "code", "profile", "csr")
    issued = authority.enroll(field(data, "code"), field(data, "profile"), field(data, "csr"))
    # 200: the certificate this code already got for this key, sent again (a lost answer)
    return 200 if issued.replayed else 201, issued_json(issued)


@bp.post("/enroll")
def enroll() -> tuple[Response, int]:
    status, doc = enrollment(svc().authority, json_body())
    return jsonify(doc), status


@bp.post("/enroll/check")
def check_code() -> Response:
    """Would this code enroll this profile now? The refusal ``/enroll`` would give, or the
    code's profiles and expiry; nothing is redeemed (the code stays in the body, never in
    a URL or a log)."""
    data = only(json_body(), "a code check", "code", "profile")
    rec = svc().authority.check_code(field(data, "code"), field(data, "profile"))
    resp = jsonify({"profiles": list(rec.profiles), "expires_at": iso(rec.expires_at)})
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/operators")
def authorize_operator() -> tuple[Response, int]:
    caller = signed_caller()
    data = only(json_body(), "an operator's authorization", "name", "operator_id")
    grant = svc().authority.authorize_operator(
        caller, field(data, "name"), field(data, "operator_id")
    )
    doc = {**grant_json(grant), "authorization": authorization_json(grant.application)}
    return jsonify(doc), 201


def authorization_json(app: Application) -> dict[str, Any]:
    """An operator application's authorization: ``application``, the one whose id names it;
    ``authorization``, its certificates' dnQualifier; ``continues``, whether it is an
    earlier application's, authorized again before anyone enrolled (its role grants
    stand) rather than a new one (grants are made anew)."""
    named_by = authorization_id(app)
    return {
        "application": named_by,
        "authorization": authorization_label(named_by),
        "continues": named_by != app.id,
    }


@bp.get("/operators")
def pending_operators() -> Response:
    """The calling enterprise's operator authorizations not enrolled yet, by application
    id (``after``: the last one of the previous page)."""
    caller = signed_caller()
    limit = int_arg("limit", 100, 1, 1000)
    after = request.args.get("after", "")
    if after and (
        len(after) > 64
        or not after.replace("_", "").isascii()
        or not after.replace("_", "").isalnum()
    ):
        raise BadRequest("after must be an application id (the last of the previous page)")
    # one more than asked: a full last page is not said to have more
    found = svc().authority.pending_operators(caller, after, limit + 1)
    apps, more = found[:limit], len(found) > limit
    codes = svc().authority.last_codes([a.id for a in apps])
    now = svc().clock()
    rows = []
    for a in apps:
        code = codes.get(a.id)
        state = (
            "withdrawn"
            if code is None or code.withdrawn_at is not None
            else "used"
            if code.used_at is not None
            else "lapsed"
            if code.expires_at <= now
            else "live"
        )
        rows.append(
            {
                "application": a.id,
                "operator_id": a.vetted.get("operator_id"),
                "name": a.vetted.get("operator_name"),
                "authorized_at": iso(a.decided_at or a.created_at),
                "authorized_by": a.decided_by,
                "code": {"state": state, "expires_at": iso(code.expires_at) if code else None},
            }
        )
    return jsonify({"operators": rows, "next": apps[-1].id if more else None})


@bp.get("/operators/authorization")
def operator_authorization() -> Response:
    """The calling enterprise's current authorization of ``operator_id`` (enterprise
    signed): what ``eport roles grant`` binds a grant to."""
    caller = signed_caller()
    operator_id = request.args.get("operator_id")
    if not operator_id:
        raise BadRequest("operator_id is required")
    app = svc().authority.operator_authorization(caller, operator_id)
    return jsonify(
        {
            "operator_id": app.vetted.get("operator_id"),
            **authorization_json(app),
            "authorized_at": iso(app.created_at),
        }
    )


@bp.post("/operators/<app_id>/withdraw")
def withdraw_operator(app_id: str) -> Response:
    """The enterprise withdraws an operator authorization before the operator enrolled:
    its code stops working, and the application reads as rejected with the reason."""
    caller = signed_caller()
    data = only(json_body(), "a withdrawal", "reason")
    app = svc().authority.withdraw_operator(caller, app_id, field(data, "reason"))
    return jsonify(app_json(app))


@bp.post("/renew")
def renew() -> tuple[Response, int]:
    caller = signed_caller()
    data = only(json_body(), "a renewal", "csr")
    issued = svc().authority.renew(caller, field(data, "csr"))
    # 200: the certificate this signer's renewal already got for this key (a lost answer)
    return jsonify(issued_json(issued)), 200 if issued.replayed else 201


_HEX = re.compile(r"[0-9a-f]+", re.ASCII)


def parse_serial(text: str) -> int:
    """A certificate serial number as the API takes it: hexadecimal, ``0x`` and colons
    allowed, case and surrounding blanks ignored; positive, at most 20 octets (RFC 5280
    §4.1.2.2). Every endpoint that takes one reads it here, so ``-5`` is the same 400
    everywhere (``int(text, 16)`` alone also takes a sign and ``_`` separators)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not _HEX.fullmatch(cleaned):
        raise BadRequest(f"{text[:60]!r} is not a hexadecimal serial number")
    value = int(cleaned, 16)
    if not 0 < value < 1 << 160:
        raise BadRequest("a serial number is a positive integer of at most 20 octets")
    return value


def status_json(change: StatusChange) -> dict[str, Any]:
    st = change.status
    out: dict[str, Any] = {
        "serial": change.record.serial_hex,
        "subject": change.record.subject,
        "status": "good" if st is None else ("on-hold" if st.state.value == "hold" else "revoked"),
    }
    if st is not None:
        out["since"] = iso(st.revoked_at)
        out["reason"] = ReasonCode(st.reason).rfc_name if st.reason is not None else None
        out["invalidity_date"] = iso(st.invalidity_date)
    if change.cascaded:
        out["cascaded"] = [c.serial_hex for c in change.cascaded]
    if change.kept_by:
        out["enterprise_still_in_force"] = [c.serial_hex for c in change.kept_by]
    ca_revoked = svc().authority.revoked_issuers.get(change.record.issuer_id)
    if st is not None and ca_revoked is not None and ca_revoked.revoked_at < st.revoked_at:
        # What OCSP, CRLs and eport status answer: revoked since its issuing CA was
        # (revocation probe, session 27: the change's later time alone was said)
        out["issuing_ca_revoked"] = {
            "issuer": change.record.issuer_id,
            "at": iso(ca_revoked.revoked_at),
        }
    return out


@bp.post("/certificates/<serial>/revoke")
def revoke(serial: str) -> Response:
    caller = signed_caller()
    data = only(json_body(), "a revocation", "reason", "invalidity_date")
    invalidity = field(data, "invalidity_date", required=False)
    when = iso_time("invalidity_date", invalidity) if invalidity else None
    change = svc().revocation.revoke(caller, parse_serial(serial), field(data, "reason"), when)
    return jsonify(status_json(change))


def no_parameters(action: str) -> None:
    """An action that takes no parameters reads its body all the same: none, or an empty
    JSON object. Anything else (not JSON, a member the client meant to say something with)
    is a 400 before the action, as every other endpoint refuses such a body."""
    only(json_body(), action)


@bp.post("/certificates/<serial>/suspend")
def suspend(serial: str) -> Response:
    caller = signed_caller()
    no_parameters("a suspension")
    return jsonify(status_json(svc().revocation.suspend(caller, parse_serial(serial))))


@bp.post("/certificates/<serial>/resume")
def resume(serial: str) -> Response:
    caller = signed_caller()
    no_parameters("a resumption")
    return jsonify(status_json(svc().revocation.resume(caller, parse_serial(serial))))


@bp.get("/certificates")
def certificates() -> Response:
    caller = signed_caller()
    uscc = request.args.get("uscc")
    limit, after, offset = _page_args()
    service = svc()
    recs = service.authority.certificates(caller, uscc, limit + 1, after, offset or 0)
    page = [r for _, r in recs[:limit]]
    with service.store.reading() as tx:
        statuses = tx.get_statuses([r.serial for r in page])
    now = service.clock()
    listed = []
    for r in page:
        doc = cert_json(r, with_pem=True)
        doc.update(_listed_status(r, statuses.get(r.serial), now))
        listed.append(doc)
    return jsonify({"certificates": listed, **_page_links([key for key, _ in recs], limit, offset)})


def _listed_status(
    rec: CertificateRecord, st: StatusRecord | None, now: datetime.datetime
) -> dict[str, Any]:
    """A listed certificate's ``status`` (good, on-hold, revoked or expired) and, for the
    first two changes, ``since``: which of an enterprise's certificates is in force."""
    ca_revoked = svc().authority.revoked_issuers.get(rec.issuer_id)
    own_first = ca_revoked is None or (st is not None and st.revoked_at <= ca_revoked.revoked_at)
    if st is not None and st.state is StatusState.REVOKED and own_first:
        return {"status": "revoked", "since": iso(st.revoked_at)}
    # Revoked with its issuing CA before any revocation of its own, as OCSP answers
    # (ca.status.under_revoked_issuer): its own later one listed its time (revocation
    # probe, session 27)
    if ca_revoked is not None:
        return {
            "status": "revoked",
            "since": iso(ca_revoked.revoked_at),
            "issuing_ca_revoked": True,
        }
    if rec.not_after <= now:
        return {"status": "expired"}  # a hold on it no longer matters
    if st is not None:
        return {"status": "on-hold", "since": iso(st.revoked_at)}
    return {"status": "good"}


@bp.post("/responders/renew")
def renew_responders() -> Response:
    """Renew the delegated OCSP responder certificates that are due, or all of them
    with ``{"force": true}`` (a member agency's RA officer; 503 while sealed)."""
    from ca.app import renew_responders as renew

    caller = signed_caller()
    if caller.role is not SubjectClass.AGENCY:
        raise Forbidden("OCSP responders are renewed at a member agency RA officer's request")
    force = only(json_body(), "a responder renewal", "force").get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("'force' must be true or false")
    return jsonify(renew(current_app, force=force, actor=caller.actor).to_json())
