"""The e-port portal at ``/portal/``: the "one portal, one login, one-stop service" front
door.

Server-rendered, no script. It shows who is signed in and with which certificate, and
the registered services the subject may use under ``policies/access.toml`` (each with its
name and link, and the scopes the subject has there). The browser signs in by presenting
its certificate to the TLS proxy; the same SSO session then lets every e-port web service
sign the user in through ``/auth/authorize`` without a prompt. Logout is a form with a
CSRF token and ends the session everywhere (back-channel logout included). Its texts
are in Simplified Chinese or English, as the browser's ``Accept-Language`` asks
(:mod:`ca.i18n`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID
from flask import Blueprint, Response

from authsvc.oidc import SignedIn
from authsvc.oidc_api import (
    auth,
    check_form,
    clear_cookie,
    current,
    log_out,
    message,
    nothing_to_sign_out,
    page,
    provider,
    refused_sign_out,
    set_cookie,
    sign_in,
    translated,
)
from authsvc.service import OAuthError
from ca.errors import Unauthenticated
from ca.names import dn_string

bp = Blueprint(
    "portal",
    __name__,
    url_prefix="/portal",
    template_folder="templates",
    static_folder="static/portal",
    static_url_path="/static",
)


@dataclass(frozen=True)
class ServiceLink:
    """One line of the portal's list."""

    id: str
    name: str
    url: str | None
    scopes: tuple[str, ...]
    signed_in: bool
    """Whether this service got a sign-in from this session."""


@dataclass(frozen=True)
class CertificateView:
    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    thumbprint: str


def _when(dt: datetime.datetime) -> str:
    return dt.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else dn_string(name)


def certificate_view(signed: SignedIn) -> CertificateView:
    cert = signed.session.certificate
    return CertificateView(
        subject=dn_string(cert.subject),
        issuer=_cn(cert.issuer),
        serial=signed.session.cert_serial,
        not_before=_when(cert.not_valid_before_utc),
        not_after=_when(cert.not_valid_after_utc),
        thumbprint=signed.session.cert_sha256,
    )


def services_of(signed: SignedIn) -> list[ServiceLink]:
    """The services the subject may use (``AccessPolicy.services_for``), in file order."""
    s = auth()
    p = signed.session.principal
    roles = s.tokens.roles_of(p, signed.session.certificate)
    used = set(provider().store.session_clients(signed.session.sid))
    out = []
    for service in s.access.services_for(p.subject_class.value, roles, p.agency_id):
        scopes = s.access.scopes_for(
            p.subject_class.value, service_id=service.id, roles=roles, agency_id=p.agency_id
        )
        out.append(ServiceLink(service.id, service.name, service.url, scopes, service.id in used))
    return out


@bp.get("/")
def index() -> Response:
    try:
        signed = sign_in()
    except Unauthenticated as exc:
        return message(401, translated("Sign in with your e-port certificate"), exc.detail)
    except OAuthError as exc:  # a certificate that is revoked, on hold, untrusted…
        return clear_cookie(
            message(
                exc.status if exc.status != 400 else 403,
                translated("Your certificate cannot sign in"),
                exc.detail,
            )
        )
    if signed is None:
        return message(
            401,
            translated("Sign in with your e-port certificate"),
            translated(
                "The portal signs you in with the certificate on your smart card or key file. "
                "Present it to this site (your browser asks which one to use) and reload."
            ),
        )
    resp = page(
        "portal/index.html",
        signed=signed,
        principal=signed.session.principal,
        certificate=certificate_view(signed),
        services=services_of(signed),
        started=_when(signed.session.created_at),
        expires=_when(signed.session.expires_at),
    )
    return set_cookie(resp, signed)


@bp.post("/logout")
def logout() -> Response:
    signed = current()
    if signed is None:
        return nothing_to_sign_out(None)
    try:
        check_form(signed)
    except OAuthError as exc:
        return refused_sign_out(exc)
    return log_out(signed, None)


@bp.get("/signed-out")
def signed_out() -> Response:
    """Never signs in by itself: the certificate would open a new session at once."""
    return message(
        200,
        translated("You are signed out"),
        translated(
            "Your e-port session has ended, and every e-port service you used in it was told."
        ),
        signed_out=True,
    )
