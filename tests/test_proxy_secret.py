"""EPORT_AUTH_PROXY_SECRET: where the TLS proxy reaches the token service over loopback,
every process of the host comes from a trusted address. Found by a deployment probe:
`curl -H "X-SSL-Client-Cert: <an enterprise's public certificate>"` to
/auth/login/mtls on 127.0.0.1 opened a session as that enterprise, without its key. With
the secret set, a forwarded certificate is believed only with X-Eport-Proxy-Secret."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import requests

from tests.conftest import start_server, stop
from tests.helpers import enroll_enterprise
from tests.test_config_checks import refused, serve

SECRET = "k3n1Zr8yq0VbQ4wX2sTfH7mJc9PdLa6e"  # 32 characters, as a proxy's config holds it


def test_a_forwarded_certificate_needs_the_proxy_secret(tmp_path: Path) -> None:
    extra = {"EPORT_AUTH_TRUSTED_PROXIES": "127.0.0.1/32", "EPORT_AUTH_PROXY_SECRET": SECRET}
    srv, proc = start_server(tmp_path / "data", workers=1, extra_env=extra)
    try:
        ent = enroll_enterprise(srv, tmp_path, "Proxy Secret Trading Co.")
        forwarded = {"X-SSL-Client-Cert": quote((ent / "cert.pem").read_text())}
        for path, form in (("/auth/login/mtls", None), ("/auth/introspect", {"token": "x"})):
            for secret in (None, "", SECRET[:-1] + "x", SECRET + "x"):
                headers = dict(forwarded)
                if secret is not None:
                    headers["X-Eport-Proxy-Secret"] = secret
                r = requests.post(srv.url + path, headers=headers, data=form, timeout=30)
                assert r.status_code == 401, (path, secret, r.text)
                assert r.json()["error"] == "invalid_client"
                assert "without the proxies' secret" in r.json()["error_description"]
                assert SECRET not in r.text
        ok = requests.post(
            srv.url + "/auth/login/mtls",
            headers={**forwarded, "X-Eport-Proxy-Secret": SECRET},
            timeout=30,
        )
        assert ok.status_code == 200 and ok.json()["refresh_token"], ok.text
        assert SECRET not in srv.log.read_text(errors="replace")
    finally:
        stop(proc)


def test_a_short_proxy_secret_is_refused_at_start(tmp_path: Path) -> None:
    line = refused(
        serve(tmp_path / "d", EPORT_AUTH_PROXY_SECRET="short"),
        "proxy_secret",
        "at least 32 characters",
    )
    assert "short" not in line.replace("proxy_secret", "")
    assert not (tmp_path / "d").exists()
