"""Introspection by mutual TLS through a real nginx (Debian's): the SDK's Introspector
with ``tls_client_auth=True`` presents the service certificate to the TLS proxy
(``examples/introspection_proxy/nginx.conf``, ports and files replaced), which checks it
against the joint CA and forwards it to the token service (RFC 8705, RFC 9440 forms)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authsvc.client import InactiveToken, IntrospectionFailed, Introspector
from tests.conftest import REPO, Server, free_port, start_server, stop
from tests.helpers import enroll_service, nginx
from tests.test_auth_services import operator_with_token

SITE = REPO / "examples" / "introspection_proxy" / "nginx.conf"
PASSPHRASE = b"test-passphrase-123"


@dataclass
class Proxy:
    url: str
    ca_file: Path
    server: Server
    tmp: Path


def proxy_certificate(tmp: Path) -> tuple[Path, Path]:
    """The proxy's own TLS certificate (self-signed, for 127.0.0.1) and key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e-port TLS proxy (test)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt, pem_key = tmp / "proxy.crt", tmp / "proxy.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem_key


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("mtls")
    srv, proc = start_server(tmp / "data", extra_env={"EPORT_TRUSTED_PROXIES": "127.0.0.1"})
    try:
        crt, key = proxy_certificate(tmp)
        ca = srv.data_dir / "ca"
        bundle = tmp / "eport-cas.pem"
        bundle.write_bytes(
            b"".join(p.read_bytes() for p in [ca / "root.crt", *sorted(ca.glob("issuers/*.crt"))])
        )
        port = free_port()
        site = (
            SITE.read_text()
            .replace("/etc/eport/proxy.crt", str(crt))
            .replace("/etc/eport/proxy.key", str(key))
            .replace("/etc/eport/eport-cas.pem", str(bundle))
            .replace("127.0.0.1:8000", srv.url.removeprefix("http://"))
            .replace("127.0.0.1:8443", f"127.0.0.1:{port}")
        )
        with nginx(tmp, site, port):
            yield Proxy(f"https://127.0.0.1:{port}", crt, srv, tmp)
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_service_introspects_over_mutual_tls(proxy: Proxy, tmp_path: Path) -> None:
    srv = proxy.server
    op = operator_with_token(srv, tmp_path)
    svc = enroll_service(srv, tmp_path, "customs-declaration.eport.example")
    other = enroll_service(srv, tmp_path, "manifest.eport.example")

    def introspector(d: Path) -> Introspector:
        return Introspector(
            proxy.url,
            d / "cert.pem",
            d / "key.pem",
            passphrase=PASSPHRASE,
            tls_client_auth=True,
            ca_file=proxy.ca_file,
        )

    with introspector(svc) as intro:
        claims = intro.verify(op["token"], required_scopes=["declaration:submit"])
        assert claims.subject.startswith("op:") and claims.subject.endswith(":S1")
        # The same answer as the signed call, which goes to the token service directly.
        with Introspector(srv.url, svc / "cert.pem", svc / "key.pem", passphrase=PASSPHRASE) as s:
            assert s.introspect(op["token"]).raw == intro.introspect(op["token"]).raw
        assert not intro.introspect("garbage").active
        # Revocation (RFC 7009) reaches the mTLS answer too.
        doomed = srv.eport(
            "token", "--service", "customs-declaration", EPORT_CONFIG_DIR=str(op["cfg"])
        ).stdout.strip()
        assert intro.introspect(doomed).active
        requests.post(srv.url + "/auth/revoke", data={"token": doomed}, timeout=10)
        with pytest.raises(InactiveToken):
            intro.verify(doomed)
    # A NUL in a form field: the 400 that names it, as for a signed request (the fast
    # path answered 200 before: token service probe, F3).
    key = serialization.load_pem_private_key((svc / "key.pem").read_bytes(), PASSPHRASE)
    plain = tmp_path / "svc-plain.key"
    plain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for body, field in ((f"token={op['token']}&x=%00", "x"), (f"token={op['token']}%00", "token")):
        r = requests.post(
            proxy.url + "/auth/introspect",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            verify=proxy.ca_file,
            cert=(str(svc / "cert.pem"), str(plain)),
            timeout=10,
        )
        assert r.status_code == 400 and f"'{field}'" in r.json()["error_description"], r.text
    # Another registered service: that token is not of its audience.
    with introspector(other) as intro:
        assert intro.introspect(op["token"]).raw == {"active": False}
    # An operator's certificate passes the proxy (it is the joint CA's) but is no service.
    with introspector(op["op"]) as intro, pytest.raises(IntrospectionFailed, match="401"):
        intro.introspect(op["token"])
    # No client certificate: nginx refuses before the token service is asked.
    r = requests.post(
        proxy.url + "/auth/introspect",
        data={"token": op["token"]},
        verify=proxy.ca_file,
        timeout=10,
    )
    assert r.status_code == 400 and "No required SSL certificate" in r.text
    # A certificate from another CA: the TLS proxy refuses it too.
    crt, key = proxy_certificate(tmp_path)
    r = requests.post(
        proxy.url + "/auth/introspect",
        data={"token": op["token"]},
        verify=proxy.ca_file,
        cert=(str(crt), str(key)),
        timeout=10,
    )
    assert r.status_code == 400 and "certificate error" in r.text
    # mTLS needs files and https.
    with pytest.raises(ValueError, match="https"):
        Introspector(
            srv.url, svc / "cert.pem", svc / "key.pem", passphrase=PASSPHRASE, tls_client_auth=True
        )
