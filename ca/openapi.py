"""The OpenAPI 3.1 description of ``/ca/v1/`` served at ``/ca/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_NOT_JSON = {"$ref": "#/components/responses/UnsupportedMediaType"}
_SIGNED: list[dict[str, list[str]]] = [{"signedRequest": []}]
_AUDIT_READER: list[dict[str, list[str]]] = [
    {"signedRequest": []},
    {"auditToken": ["audit:read"]},
]
"""The audit API's readers (``ca/audit_api.py`` ``signed_reader``): a signed request, or
instead an access token for the ``audit`` service with the ``audit:read`` scope
(docs/audit.md). Alternatives: either one is enough."""


_PENDING_UNTIL = {
    "description": "A pending application: when it can no longer be approved "
    "(EPORT_APPLICATION_DAYS after it was made; the applicant then applies again). "
    "null once decided.",
    "type": ["string", "null"],
}


def _with_response(op: dict[str, Any], status: str, why: str, result: str) -> dict[str, Any]:
    """``op`` with one more success answer."""
    op["responses"][status] = {
        "description": why,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{result}"}}},
    }
    return op


def _op(
    summary: str,
    *,
    body: str | None = None,
    body_required: bool = True,
    ok: str = "200",
    result: str = "Object",
    signed: bool = False,
    security: list[dict[str, list[str]]] | None = None,
    params: list[dict[str, Any]] | None = None,
    media: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation; ``signed``: a signed request is required, ``security``: these
    requirements instead (OpenAPI 3.1 §4.8.30, alternatives; ``{}`` is none at all);
    ``media``: the success answer's content when it is not a JSON ``result``."""
    content = media or {"application/json": {"schema": {"$ref": f"#/components/schemas/{result}"}}}
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {"description": "success", "content": content},
            "default": _PROBLEM,
        },
    }
    if body:
        # json_body (ca/api.py): a body sent as any other type is a 415
        op["responses"]["415"] = _NOT_JSON
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    if signed:
        op["security"] = _SIGNED
    if security is not None:
        op["security"] = security
    if params:
        op["parameters"] = params
    return op


def _q(name: str, desc: str, typ: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": desc,
        "schema": {"type": typ},
    }


_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_OCTETS: dict[str, Any] = {"application/octet-stream": {}}
_RANGE = [_q("start", "first leaf", "integer"), _q("count", "number of leaves", "integer")]
_EMPTY_BODY = {
    "required": False,
    "description": "none, or {} (anything else is a 400)",
    "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
}
_SERIAL = {"name": "serial", "in": "path", "required": True, "schema": {"type": "string"}}
_PAGE_PARAMS = [
    _q(
        "after",
        "the cursor of the last page ('next'); absent: the first page. Invalid: 400",
    ),
    {
        **_q(
            "offset",
            "deprecated, for clients of a release before cursors: rows to skip (answered "
            "with next_offset); may skip or repeat rows changed between pages. Not with "
            "'after'",
            "integer",
        ),
        "deprecated": True,
    },
]
_PAGE_LINKS: dict[str, Any] = {
    "next": {
        "type": ["string", "null"],
        "description": "an opaque cursor: send it back as 'after' for the next page; null "
        "on the last. Rows are in log order (oldest first): none is skipped or repeated "
        "when rows are decided or added between pages",
    },
    "next_offset": {
        "type": ["integer", "null"],
        "description": "only when the request gave 'offset' (deprecated): the offset of "
        "the next page; null on the last",
    },
}
_APP_ID = {"name": "app_id", "in": "path", "required": True, "schema": {"type": "string"}}


def s(**kw: Any) -> dict[str, Any]:
    """A JSON Schema object type."""
    return {"type": "object", **kw}


def openapi_document() -> dict[str, Any]:
    string = {"type": "string"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "E-Port joint CA",
            "version": "1",
            "description": "Applications, RA vetting, enrollment and renewal. Errors are "
            "RFC 9457 problem documents. Signed calls carry `Authorization: EPort-Signed <JWS>`. "
            "Bodies are sent as application/json (parameters such as charset are ignored; any "
            "other type, application/*+json included, is refused: 415) and are I-JSON "
            "(RFC 7493: UTF-8, no lone surrogate, finite numbers, unique member names); "
            "U+0000 in a body, path or query is refused (400).",
        },
        "paths": {
            "/ca/v1/applications": {
                "post": _op(
                    "Apply for a certificate",
                    body="ApplicationRequest",
                    ok="201",
                    result="Application",
                )
            },
            "/ca/v1/applications/{app_id}": {
                "get": _op(
                    "An application's state and a rejection's reason (for its applicant)",
                    result="ApplicationStatus",
                    params=[_APP_ID],
                )
            },
            "/ca/v1/ra/applications": {
                "get": _op(
                    "List applications (RA officer)",
                    signed=True,
                    result="ApplicationList",
                    params=[
                        _q("state", "pending (default), approved, rejected or all"),
                        _q("limit", "page size (1-1000)", "integer"),
                        *_PAGE_PARAMS,
                    ],
                )
            },
            "/ca/v1/ra/applications/{app_id}/approve": {
                "post": _op(
                    "Approve; returns a one-time enrollment code. 409 for an enterprise "
                    "application while its USCC holds a legal-person certificate in force "
                    "(problem member serial) or another of its applications a live code "
                    "(problem member application)",
                    signed=True,
                    body="ApproveRequest",
                    result="CodeGrant",
                    params=[_APP_ID],
                )
            },
            "/ca/v1/ra/applications/{app_id}/code": {
                "post": _op(
                    "New enrollment code for an approved application (the last one lost or "
                    "expired; its unused codes end); 409 while one of its certificates is in "
                    "force or, for an enterprise, its USCC holds a legal-person certificate in "
                    "force (problem member serial)",
                    signed=True,
                    body="ApproveRequest",
                    ok="201",
                    result="CodeGrant",
                    params=[_APP_ID],
                )
            },
            "/ca/v1/ra/applications/{app_id}/withdraw": {
                "post": _op(
                    "Withdraw an approval before enrollment (its codes end; it reads as "
                    "rejected); 409 while one of its certificates is in force",
                    signed=True,
                    body="RejectRequest",
                    result="Application",
                    params=[_APP_ID],
                )
            },
            "/ca/v1/ra/applications/{app_id}/reject": {
                "post": _op(
                    "Reject with a reason",
                    signed=True,
                    body="RejectRequest",
                    result="Application",
                    params=[_APP_ID],
                )
            },
            "/ca/v1/enroll": {
                "post": _with_response(
                    _op(
                        "Redeem an enrollment code with a PKCS#10 CSR; 409 for an enterprise "
                        "profile while its USCC holds a legal-person certificate in force "
                        "(problem member serial; nothing is stored, the code stays unused); "
                        "503 while sealed, or when the profile's issuing CA is revoked on the "
                        "root CRL (issuer-revoked) or on another host only (issuer-unavailable)",
                        body="EnrollRequest",
                        ok="201",
                        result="Issued",
                    ),
                    "200",
                    "the certificate this used code already got for the CSR's key, sent "
                    "again (its first answer was lost); nothing is issued",
                    "Issued",
                )
            },
            "/ca/v1/enroll/check": {
                "post": _op(
                    "Whether a code would enroll a profile now (redeems nothing)",
                    body="CodeCheckRequest",
                    result="CodeCheck",
                )
            },
            "/ca/v1/operators": {
                "post": _op(
                    "Authorize an operator (enterprise)",
                    signed=True,
                    body="OperatorRequest",
                    ok="201",
                    result="CodeGrant",
                ),
                "get": _op(
                    "The calling enterprise's operator authorizations not enrolled yet "
                    "(operators: application, operator_id, name, authorized_at, "
                    "authorized_by, code {state: live or lapsed, expires_at}; next: the "
                    "'after' of the next page, or null)",
                    signed=True,
                    params=[
                        _q("limit", "page size (1-1000, default 100)", "integer"),
                        _q("after", "the last application id of the previous page"),
                    ],
                ),
            },
            "/ca/v1/operators/authorization": {
                "get": _op(
                    "The calling enterprise's current authorization of an operator id "
                    "(operator_id, application, authorization: the dnQualifier of its "
                    "certificates, authorized_at); 404 for an id not authorized",
                    signed=True,
                    params=[
                        {
                            **_q("operator_id", "the operator id (eport operator add --id)"),
                            "required": True,
                        }
                    ],
                )
            },
            "/ca/v1/operators/{app_id}/withdraw": {
                "post": _op(
                    "Withdraw an operator authorization before the operator enrolled "
                    "(enterprise; its code ends, it reads as rejected); 409 once a "
                    "certificate issued on it is in force",
                    signed=True,
                    body="RejectRequest",
                    result="Application",
                    params=[_APP_ID],
                )
            },
            "/ca/v1/renew": {
                "post": _with_response(
                    _op(
                        "Renew with a new key (current holder)",
                        signed=True,
                        body="RenewRequest",
                        ok="201",
                        result="Issued",
                    ),
                    "200",
                    "the certificate a renewal signed with the same certificate already got "
                    "for the CSR's key, sent again (its first answer was lost); nothing is "
                    "issued",
                    "Issued",
                )
            },
            "/ca/v1/certificates": {
                "get": _op(
                    "List certificates of an enterprise",
                    signed=True,
                    result="CertificateList",
                    params=[
                        _q("uscc", "the enterprise's USCC"),
                        _q("limit", "page size (1-1000)", "integer"),
                        *_PAGE_PARAMS,
                    ],
                )
            },
            "/ca/v1/responders/renew": {
                "post": _op(
                    "Renew the OCSP responder certificates that are due ({force: true}: all;"
                    " RA officer; 503 while sealed)",
                    signed=True,
                    body="RespondersRenewRequest",
                    body_required=False,
                )
            },
            "/ca/v1/ca": {
                "get": _op(
                    "Root and issuing CA certificates (PEM): issuers (those that issue "
                    "now) and generations (every issuing CA generation by its id)"
                )
            },
            "/ca/v1/issuers/{issuer_id}.cer": {
                "get": {
                    "summary": "A CA certificate, DER (AIA caIssuers)",
                    "parameters": [
                        {
                            "name": "issuer_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "DER certificate",
                            "content": {"application/pkix-cert": {}},
                        },
                        "default": _PROBLEM,
                    },
                }
            },
            "/ca/v1/health": {
                "get": _op(
                    "Liveness, seal state, the database's state (ok, unavailable, upgraded "
                    "by another release (writes refused), or damaged: a SQLite file deleted "
                    "under the server; with ?ready, a "
                    "readiness check: 503 unless ok), the root CRL's "
                    "nextUpdate, whether this host's CA files match the database's record "
                    "(hierarchy: current, stale or unsettled), CA keys missing from their "
                    "PKCS#11 token "
                    "(missing_keys; status degraded) and warnings",
                    params=[
                        {
                            **_q("ready", "present (any value): a readiness check"),
                            "allowEmptyValue": True,
                        }
                    ],
                )
            },
            "/ca/v1/openapi.json": {"get": _op("This document")},
            "/ca/v1/certificates/{serial}/revoke": {
                "post": _op(
                    "Revoke (RFC 5280 reason; officer, enterprise or key holder)",
                    signed=True,
                    body="RevokeRequest",
                    params=[_SERIAL],
                )
            },
            "/ca/v1/certificates/{serial}/suspend": {
                "post": {
                    **_op("Put on hold (certificateHold)", signed=True, params=[_SERIAL]),
                    "requestBody": _EMPTY_BODY,
                    "responses": {**_op("")["responses"], "415": _NOT_JSON},
                }
            },
            "/ca/v1/certificates/{serial}/resume": {
                "post": {
                    **_op(
                        "Lift a hold (officer, or the enterprise for its operators)",
                        signed=True,
                        params=[_SERIAL],
                    ),
                    "requestBody": _EMPTY_BODY,
                    "responses": {**_op("")["responses"], "415": _NOT_JSON},
                }
            },
            # The issuance transparency log (RFC 9162, C2SP tlog-checkpoint): see docs/audit.md.
            "/ca/v1/audit/checkpoint": {
                "get": _op(
                    "Latest signed checkpoint, a C2SP signed note (?size=N: the one signed "
                    "for size N)",
                    params=[_q("size", "tree size", "integer")],
                    media=_TEXT,
                )
            },
            "/ca/v1/audit/log-key": {"get": _op("The log's verifier key and origin")},
            "/ca/v1/audit/log-key/handovers": {
                "get": _op(
                    "The log's hand-over checkpoints, oldest first: each signed by a retired "
                    "log key and its successor, which its extension line names, or (the old "
                    "key lost: REPLACE-LOG-KEY) by the successor and the joint root CA's key"
                )
            },
            "/ca/v1/audit/proof/inclusion": {
                "get": _op(
                    "Inclusion proof by leaf index (public) or by serial (signed or audit:read)",
                    security=[{}, *_AUDIT_READER],
                    params=[
                        _q("index", "leaf index", "integer"),
                        _q("serial", "certificate serial (hex)"),
                        _q("size", "tree size", "integer"),
                    ],
                )
            },
            "/ca/v1/audit/proof/consistency": {
                "get": _op(
                    "Consistency proof between two tree sizes",
                    params=[_q("from", "older size", "integer"), _q("to", "newer size", "integer")],
                )
            },
            "/ca/v1/audit/entries": {
                "get": {
                    "summary": "Entries [start, start+count), uint16 length + entry",
                    "security": _AUDIT_READER,
                    "parameters": [
                        _q("start", "first leaf", "integer"),
                        _q("count", "number of leaves", "integer"),
                    ],
                    "responses": {
                        "200": {
                            "description": "entry bundle",
                            "content": {"application/octet-stream": {}},
                        },
                        "default": _PROBLEM,
                    },
                }
            },
            "/ca/v1/audit/events": {
                "get": _op(
                    "Events in log order, filtered, keyset-paged by `after` (signed or audit:read)",
                    security=_AUDIT_READER,
                    params=[
                        _q("after", "last log index seen", "integer"),
                        _q("limit", "page size", "integer"),
                        _q("uscc", "enterprise"),
                        _q("type", "event type; repeated or comma-separated: any of them"),
                        _q("serial", "certificate serial"),
                        _q("subject", "case-insensitive part of the subject name"),
                        _q("profile", "certificate profile"),
                        _q("issuer", "issuing CA id"),
                        _q("actor", "who acted"),
                        _q("since", "ISO 8601 date or time, UTC unless it names an offset"),
                        _q("until", "ISO 8601 date or time, UTC unless it names an offset"),
                    ],
                )
            },
            "/ca/v1/audit/event-digests": {
                "get": _op(
                    "Leaf hashes re-derived from the event records [start, start+count), "
                    "32 bytes each (signed or audit:read)",
                    security=_AUDIT_READER,
                    params=_RANGE,
                    media=_OCTETS,
                )
            },
            "/ca/v1/audit/certificates": {
                "get": _op(
                    "Every certificate on record: '<serial> <sha256>' lines; with ?detail=1, "
                    "one JSON array per line (serial, sha256, der_sha256, uscc, subject, "
                    "profile, issuer, log_index, state, reason, at) (signed or audit:read)",
                    security=_AUDIT_READER,
                    params=[_q("detail", "1: the detailed lines (application/jsonl)")],
                    media={**_TEXT, "application/jsonl": {"schema": {"type": "string"}}},
                )
            },
            "/ca/v1/audit/leaf-hashes": {
                "get": _op(
                    "Stored leaf hashes [start, start+count) of the tree of the given size, "
                    "32 bytes each",
                    params=[_q("size", "tree size", "integer"), *_RANGE],
                    media=_OCTETS,
                )
            },
            # Joint custody (docs/custody.md)
            "/ca/v1/custody": {"get": _op("Seal state and custody record")},
            "/ca/v1/custody/unseal": {
                "post": _op(
                    "Submit one custodian's share, sealed to the server's boot key (the "
                    "answer names CA keys the unseal went without: missing_keys, warnings)",
                    body="SealedShareRequest",
                )
            },
            "/ca/v1/custody/ceremonies": {
                "post": _op(
                    "Open a quorum ceremony (RA officer; unsigned only while no member agency "
                    "has an RA officer in force, and only APPROVE-OFFICER, ROOT-CRL or "
                    "ROTATE-ISSUER of the officers' issuing CA)",
                    security=[*_SIGNED, {}],
                    body="CeremonyRequest",
                    ok="201",
                )
            },
            "/ca/v1/custody/ceremonies/{ceremony_id}": {
                "get": _op(
                    "A ceremony's state",
                    params=[
                        {
                            "name": "ceremony_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                )
            },
            "/ca/v1/custody/ceremonies/{ceremony_id}/join": {
                "post": _op(
                    "Join with a share sealed to the ceremony's key",
                    body="SealedShareRequest",
                    params=[
                        {
                            "name": "ceremony_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                )
            },
        },
        "components": {
            "securitySchemes": {
                "signedRequest": {
                    "type": "http",
                    "scheme": "EPort-Signed",
                    "description": "Compact JWS (RFC 7515) with x5c, aud = 'METHOD path', "
                    "iat/exp (<= 5 min), unique jti, bsh = base64url SHA-256 of the body.",
                },
                "auditToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The audit API only: an RFC 9068 access token of the token "
                    "service for the 'audit' service (eport login, then eport token --service "
                    "audit), with the audit:read scope; RFC 6750 Authorization: Bearer. "
                    "Verified offline against the token service's JWKS (docs/audit.md).",
                },
            },
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem details",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                },
                "UnsupportedMediaType": {
                    "description": "the body was not sent as application/json (RFC 9110 "
                    "§15.5.16): nothing was read or changed; the problem's detail names what "
                    "to send",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                },
            },
            "schemas": {
                "Object": s(),
                "Problem": s(
                    properties={
                        "type": string,
                        "title": string,
                        "status": {"type": "integer"},
                        "detail": string,
                        # the request's path, percent-encoded as sent (RFC 9457 §3.1.5)
                        "instance": {"type": "string", "format": "uri-reference"},
                    },
                    required=["type", "title", "status"],
                ),
                "ApplicationRequest": s(
                    properties={
                        "subject_class": {"enum": ["enterprise", "agency", "auditor", "service"]},
                        "uscc": string,
                        "legal_name": string,
                        "agency_id": string,
                        "person_name": string,
                        "service_host": string,
                    },
                    # each class takes its own fields; another member is a 400
                    additionalProperties=False,
                ),
                "Application": s(
                    properties={
                        "id": string,
                        "subject_class": string,
                        "uscc": {"type": ["string", "null"]},
                        "subject": s(),
                        "state": {"enum": ["pending", "approved", "rejected"]},
                        "created_at": string,
                        "pending_until": _PENDING_UNTIL,
                        "code": {
                            "description": "RA listings only: the code given last, or null",
                            "type": ["object", "null"],
                            "properties": {
                                "state": {"enum": ["live", "used", "expired", "withdrawn"]},
                                "expires_at": string,
                            },
                        },
                    },
                    required=["id", "state"],
                ),
                "ApplicationStatus": s(
                    properties={
                        "id": string,
                        "subject_class": string,
                        "state": {"enum": ["pending", "approved", "rejected"]},
                        "created_at": string,
                        "decided_at": {"type": ["string", "null"]},
                        "reason": {"type": ["string", "null"]},
                        "pending_until": _PENDING_UNTIL,
                    },
                    required=["id", "state"],
                ),
                "ApplicationList": s(
                    properties={
                        "applications": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Application"},
                        },
                        **_PAGE_LINKS,
                    }
                ),
                "ApproveRequest": s(properties={"profiles": {"type": "array", "items": string}}),
                "RejectRequest": s(properties={"reason": string}, required=["reason"]),
                "CodeGrant": s(
                    properties={
                        "application": {"$ref": "#/components/schemas/Application"},
                        "enrollment_code": string,
                        "expires_at": string,
                        "profiles": {"type": "array", "items": string},
                        "withdrawn_codes": {
                            "type": "integer",
                            "description": "how many unused codes of the application (a new "
                            "code) or of the operator id (authorized again) this one ended",
                        },
                        "authorization": {
                            "type": "object",
                            "description": "an operator's authorization (POST /ca/v1/operators "
                            "only): application (whose id names it), authorization (its "
                            "certificates' dnQualifier), continues (an earlier one's, authorized "
                            "again before anyone enrolled: its role grants stand)",
                        },
                    }
                ),
                "EnrollRequest": s(
                    properties={"code": string, "profile": string, "csr": string},
                    required=["code", "profile", "csr"],
                ),
                "CodeCheckRequest": s(
                    properties={"code": string, "profile": string}, required=["code", "profile"]
                ),
                "CodeCheck": s(
                    properties={
                        "profiles": {"type": "array", "items": string},
                        "expires_at": string,
                    },
                    required=["profiles", "expires_at"],
                ),
                "OperatorRequest": s(
                    properties={"name": string, "operator_id": string},
                    required=["name", "operator_id"],
                ),
                "RevokeRequest": s(
                    properties={"reason": string, "invalidity_date": string}, required=["reason"]
                ),
                "RenewRequest": s(properties={"csr": string}, required=["csr"]),
                "RespondersRenewRequest": s(properties={"force": {"type": "boolean"}}),
                "SealedShareRequest": s(
                    properties={
                        "share": s(description="a custodian's share sealed by eport ca unseal/join")
                    },
                    required=["share"],
                ),
                "CeremonyRequest": s(
                    properties={
                        "operation": string,
                        "params": s(additionalProperties=string),
                    },
                    required=["operation"],
                ),
                "Certificate": s(
                    properties={
                        "serial": string,
                        "issuer": string,
                        "profile": string,
                        "subject": string,
                        "uscc": {"type": ["string", "null"]},
                        "not_before": string,
                        "not_after": string,
                        "sha256": string,
                        "certificate": string,
                        "status": {
                            "type": "string",
                            "enum": ["good", "on-hold", "revoked", "expired"],
                            "description": "in a listing: the certificate's status now",
                        },
                        "since": {"type": "string", "description": "when it was revoked or held"},
                        "issuing_ca_revoked": {"type": "boolean"},
                    }
                ),
                "Issued": s(
                    properties={"serial": string, "certificate": string, "chain": string},
                    required=["serial", "certificate", "chain"],
                ),
                "CertificateList": s(
                    properties={
                        "certificates": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Certificate"},
                        },
                        **_PAGE_LINKS,
                    }
                ),
            },
        },
    }
