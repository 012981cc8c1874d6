"""The OpenAPI 3.1 description of ``/ca/v1/`` served at ``/ca/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_SIGNED: list[dict[str, list[str]]] = [{"signedRequest": []}]


def _op(
    summary: str,
    *,
    body: str | None = None,
    ok: str = "200",
    result: str = "Object",
    signed: bool = False,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {
                "description": "success",
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{result}"}}
                },
            },
            "default": _PROBLEM,
        },
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    if signed:
        op["security"] = _SIGNED
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
            "RFC 9457 problem documents. Signed calls carry `Authorization: EPort-Signed <JWS>`.",
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
            "/ca/v1/ra/applications": {
                "get": _op(
                    "List applications (RA officer)",
                    signed=True,
                    result="ApplicationList",
                    params=[
                        _q("state", "pending (default), approved, rejected or all"),
                        _q("limit", "page size (1-1000)", "integer"),
                        _q("offset", "rows to skip", "integer"),
                    ],
                )
            },
            "/ca/v1/ra/applications/{app_id}/approve": {
                "post": _op(
                    "Approve; returns a one-time enrollment code",
                    signed=True,
                    body="ApproveRequest",
                    result="CodeGrant",
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
                "post": _op(
                    "Redeem an enrollment code with a PKCS#10 CSR",
                    body="EnrollRequest",
                    ok="201",
                    result="Issued",
                )
            },
            "/ca/v1/operators": {
                "post": _op(
                    "Authorize an operator (enterprise)",
                    signed=True,
                    body="OperatorRequest",
                    ok="201",
                    result="CodeGrant",
                )
            },
            "/ca/v1/renew": {
                "post": _op(
                    "Renew with a new key (current holder)",
                    signed=True,
                    body="RenewRequest",
                    ok="201",
                    result="Issued",
                )
            },
            "/ca/v1/certificates": {
                "get": _op(
                    "List certificates of an enterprise",
                    signed=True,
                    result="CertificateList",
                    params=[
                        _q("uscc", "the enterprise's USCC"),
                        _q("limit", "page size", "integer"),
                        _q("offset", "rows to skip", "integer"),
                    ],
                )
            },
            "/ca/v1/ca": {"get": _op("Root and issuing CA certificates (PEM)")},
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
            "/ca/v1/health": {"get": _op("Liveness and seal state")},
            "/ca/v1/openapi.json": {"get": _op("This document")},
        },
        "components": {
            "securitySchemes": {
                "signedRequest": {
                    "type": "http",
                    "scheme": "EPort-Signed",
                    "description": "Compact JWS (RFC 7515) with x5c, aud = 'METHOD path', "
                    "iat/exp (<= 5 min), unique jti, bsh = base64url SHA-256 of the body.",
                }
            },
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem details",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            },
            "schemas": {
                "Object": s(),
                "Problem": s(
                    properties={
                        "type": string,
                        "title": string,
                        "status": {"type": "integer"},
                        "detail": string,
                        "instance": string,
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
                    }
                ),
                "Application": s(
                    properties={
                        "id": string,
                        "subject_class": string,
                        "uscc": {"type": ["string", "null"]},
                        "subject": s(),
                        "state": {"enum": ["pending", "approved", "rejected"]},
                        "created_at": string,
                    },
                    required=["id", "state"],
                ),
                "ApplicationList": s(
                    properties={
                        "applications": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Application"},
                        }
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
                    }
                ),
                "EnrollRequest": s(
                    properties={"code": string, "profile": string, "csr": string},
                    required=["code", "profile", "csr"],
                ),
                "OperatorRequest": s(
                    properties={"name": string, "operator_id": string},
                    required=["name", "operator_id"],
                ),
                "RenewRequest": s(properties={"csr": string}, required=["csr"]),
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
                        }
                    }
                ),
            },
        },
    }
