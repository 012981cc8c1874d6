"""The clock stepped back (a wrong time corrected, a host restored): a CRL or a pre-signed
OCSP response signed before has a thisUpdate in this host's future, which relying parties
take as not yet valid. They are signed again at once, not served until the clock catches
up. ``openssl verify -attime`` is the relying party, at the corrected time."""

from __future__ import annotations

import dataclasses
import datetime
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as xocsp

from ca.app import CAService, db
from tests.conftest import need
from tests.helpers import dev_ca_service, enterprise_at_ceremony
from tests.test_cessation import ocsp_request

AHEAD = datetime.timedelta(hours=3)
"""How far ahead the host's clock was when the CRL or response was signed."""


@dataclass(frozen=True)
class Stepped:
    svc: CAService
    cert: x509.Certificate
    t0: datetime.datetime
    """The clock, ahead, when the CRL or the response was signed."""
    back: datetime.datetime
    """The same clock stepped back to the right time: after the certificates' notBefore."""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stepped]:
    """The development CA's service in this process and one enterprise certificate (one
    for both tests: the one's CRL and the other's OCSP response do not meet)."""
    data = tmp_path_factory.mktemp("step") / "data"
    with dev_ca_service({"data_dir": data, "crl_refresh_seconds": 0}) as svc:
        issued = enterprise_at_ceremony(svc.authority, "91350100M000100Y43", "Step Co.")
        db.session.remove()
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        back = now + datetime.timedelta(minutes=1)
        cert = x509.load_der_x509_certificate(issued.record.der)
        yield Stepped(svc, cert, back + AHEAD, back)


def openssl_accepts_crl(tmp: Path, run: Stepped, crl: bytes) -> str:
    """``openssl verify -crl_check`` of the certificate with ``crl``, at the stepped-back
    time."""
    svc, cert, back = run.svc, run.cert, run.back
    issuer = svc.status.issuers["enterprise"].certificate
    root = Path(svc.config.data_dir) / "ca" / "root.crt"
    pem = serialization.Encoding.PEM
    (tmp / "chain.pem").write_bytes(root.read_bytes() + issuer.public_bytes(pem))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(pem))
    (tmp / "crl.pem").write_bytes(x509.load_der_x509_crl(crl).public_bytes(pem))
    res = subprocess.run(
        [
            need("openssl"),
            "verify",
            "-attime",
            str(int(back.timestamp())),
            "-crl_check",
            "-CAfile",
            str(tmp / "chain.pem"),
            "-CRLfile",
            str(tmp / "crl.pem"),
            str(tmp / "cert.pem"),
        ],
        capture_output=True,
        text=True,
    )
    return res.stdout + res.stderr


def test_a_crl_from_the_future_is_signed_again(service: Stepped, tmp_path: Path) -> None:
    svc, t0, back = service.svc, service.t0, service.back
    svc.status.clock = lambda: t0
    before = x509.load_der_x509_crl(svc.status.crl("enterprise"))
    assert before.last_update_utc == t0
    assert "CRL is not yet valid" in openssl_accepts_crl(
        tmp_path, service, svc.status.crl("enterprise")
    )
    db.session.remove()

    svc.status.clock = lambda: back
    der = svc.status.crl("enterprise")
    after = x509.load_der_x509_crl(der)
    assert after.last_update_utc == back
    assert after.next_update_utc is not None and after.next_update_utc > back
    number = x509.CRLNumber
    assert (
        after.extensions.get_extension_for_class(number).value.crl_number
        == before.extensions.get_extension_for_class(number).value.crl_number + 1
    )
    assert openssl_accepts_crl(tmp_path, service, der).strip().endswith("cert.pem: OK")
    db.session.remove()
    assert svc.status.crl("enterprise") == der  # and it is kept from then on


def test_a_pre_signed_ocsp_response_from_the_future_is_signed_again(
    service: Stepped,
) -> None:
    svc, cert, t0, back = service.svc, service.cert, service.t0, service.back
    issuer = svc.status.issuers["enterprise"].certificate
    req = ocsp_request(cert, issuer)
    svc.status.clock = lambda: t0
    svc.status.respond(req)
    db.session.remove()
    stored = svc.status.pre_signed(req)
    assert stored is not None
    assert xocsp.load_der_ocsp_response(stored).this_update_utc == t0

    svc.status.clock = lambda: back
    assert svc.status.pre_signed(req) is None  # the fast path leaves it to the full one
    answer = xocsp.load_der_ocsp_response(svc.status.respond(req))
    assert answer.this_update_utc == back
    assert answer.next_update_utc is not None and answer.next_update_utc > back
    db.session.remove()
    again = svc.status.pre_signed(req)
    assert again is not None and xocsp.load_der_ocsp_response(again).this_update_utc == back


def test_a_responder_certificate_from_the_future_is_renewed(
    service: Stepped, caplog: pytest.LogCaptureFixture
) -> None:
    """Responder certificates renewed while the clock ran ahead have a notBefore in the
    corrected clock's future: every OCSP answer was ``internalError`` until the clock
    caught up, as the renewal looked only at notAfter. The periodic check (and a start)
    now renews them, and OCSP answers at once."""
    from flask import current_app

    from ca.app import EXTENSION, _renew_due_responders, renew_responders

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    svc, cert, t0, back = service.svc, service.cert, service.t0, service.back
    issuer = svc.status.issuers["enterprise"].certificate
    req = ocsp_request(cert, issuer)
    app.extensions[EXTENSION] = dataclasses.replace(svc, clock=lambda: t0)
    renew_responders(app, force=True)  # made while the clock ran ahead
    db.session.remove()
    svc = app.extensions[EXTENSION]
    ahead = svc.status.responders["enterprise"].certificate
    assert ahead.not_valid_before_utc == t0
    # Before the check: internalError, and the log says why (once a minute, not per answer).
    svc.status.clock = lambda: back
    fresh = (  # with a nonce: signed now, never a stored answer
        xocsp.OCSPRequestBuilder()
        .add_certificate(cert, issuer, hashes.SHA1())
        .add_extension(x509.OCSPNonce(b"step-back-nonce!"), critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    for _ in range(3):
        failed = xocsp.load_der_ocsp_response(svc.status.respond(fresh))
        assert failed.response_status is xocsp.OCSPResponseStatus.INTERNAL_ERROR
    db.session.remove()
    said = [r.getMessage() for r in caplog.records if "cannot sign" in r.getMessage()]
    assert len(said) == 1 and "outside the responder certificate's validity" in said[0], said
    assert "renew-responders --force" in said[0]

    app.extensions[EXTENSION] = dataclasses.replace(svc, clock=lambda: back)
    svc.status.clock = lambda: back
    _renew_due_responders(app)
    db.session.remove()
    svc = app.extensions[EXTENSION]
    svc.status.clock = lambda: back
    now = svc.status.responders["enterprise"].certificate
    assert now.serial_number != ahead.serial_number and now.not_valid_before_utc <= back
    for request in (req, fresh):
        answer = xocsp.load_der_ocsp_response(svc.status.respond(request))
        assert answer.response_status is xocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status is xocsp.OCSPCertStatus.GOOD


def test_a_crl_signed_while_this_process_waited_is_not_signed_again_older(
    service: Stepped,
) -> None:
    """A process reads the time, then waits for the CRL row's lock while another signs
    the CRL. Compared with the time read before the wait, that CRL looked like one from
    before a clock step back and was signed again with an older thisUpdate under a higher
    number, which OpenSSL passes over for the older CRL (two-host probe, session 27). The
    time is read again once the row is locked: the CRL just signed is the answer."""
    svc, t0 = service.svc, service.t0
    status = svc.status
    status.clock = lambda: t0
    signed = status.crl("enterprise")
    db.session.remove()
    waited = t0 - datetime.timedelta(seconds=1)  # read before the wait for the lock
    issuer = status.issuers["enterprise"]
    assert status._sign_crl("enterprise", issuer, waited) == signed
