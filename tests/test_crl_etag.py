"""GET /crl/<issuer>.crl carries a strong ETag and answers a poll with If-None-Match by
304 and no body until the CRL is signed anew (the token service apart polls it every 2 s
in each worker to sweep sessions)."""

from __future__ import annotations

from pathlib import Path

import requests
from cryptography import x509

from tests.conftest import Server
from tests.helpers import enroll_enterprise, serial_of


def test_a_crl_poll_is_a_304_until_the_crl_changes(sqlite_server: Server, tmp_path: Path) -> None:
    url = sqlite_server.url + "/crl/enterprise.crl"
    first = requests.get(url, timeout=10)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag.startswith('"')
    x509.load_der_x509_crl(first.content)  # a CRL
    again = requests.get(url, headers={"If-None-Match": etag}, timeout=10)
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    ent = enroll_enterprise(sqlite_server, tmp_path, "Polled Co.")
    sqlite_server.eport(
        "revoke", "--serial", serial_of(ent), "--reason", "keyCompromise", *sqlite_server.officer()
    )
    changed = requests.get(url, headers={"If-None-Match": etag}, timeout=10)
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    crl = x509.load_der_x509_crl(changed.content)
    assert crl.get_revoked_certificate_by_serial_number(int(serial_of(ent), 16)) is not None
