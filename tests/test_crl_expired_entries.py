"""A CRL leaves out a revoked certificate once a CRL issued after its notAfter carried it
(RFC 5280 §3.3), so an issuing CA's CRL does not grow with every revocation ever made
(probe of costly requests, F2); OCSP still answers "revoked" for it."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509

from ca.app import db
from ca.ocsp import Revoked
from tests.helpers import dev_ca_service, enterprise_at_ceremony, fresh_uscc
from tests.test_authority import signed_by


def test_an_expired_certificate_leaves_the_crl_after_one_crl_past_its_end(
    tmp_path: Path,
) -> None:
    with dev_ca_service({"data_dir": tmp_path / "data", "crl_refresh_seconds": 0}) as svc:
        real = svc.authority.clock
        svc.authority.clock = lambda: real() - datetime.timedelta(days=10)
        early = enterprise_at_ceremony(svc.authority, fresh_uscc(), "Early Co.")
        svc.authority.clock = real
        later = enterprise_at_ceremony(svc.authority, fresh_uscc(), "Later Co.")
        officer = svc.authority.caller(
            signed_by(Path(svc.config.data_dir) / "dev" / "officers" / "customs" / "officer.pem")
        )
        for issued in (early, later):
            svc.revocation.revoke(officer, issued.record.serial, "keyCompromise")
        db.session.remove()
        end = early.record.not_after
        assert later.record.not_after - end > datetime.timedelta(days=9)
        validity = svc.status.policy.crl_validity

        def listed(at: datetime.datetime) -> set[int]:
            svc.status.clock = lambda: at
            crl = x509.load_der_x509_crl(svc.status.crl("enterprise"))
            db.session.remove()
            assert crl.last_update_utc == at  # signed at that time
            return {r.serial_number for r in crl}

        both = {early.record.serial, later.record.serial}
        assert listed(end + validity) == both  # expired, and not yet on a CRL past its end
        assert listed(end + 2 * validity + datetime.timedelta(seconds=1)) == {later.record.serial}
        cert = x509.load_der_x509_certificate(early.record.der)
        assert isinstance(svc.status.status(cert), Revoked)
        db.session.remove()
