"""EPORT_AUTH_PROXY_SECRET: where the TLS proxy reaches the token service over loopback,
every process of the host comes from a trusted address. Found by a deployment probe:
`curl -H "X-SSL-Client-Cert: <an enterprise's public certificate>"` to
/auth/login/mtls on 127.0.0.1 opened a session as that enterprise, without its key. With
the secret set, a forwarded certificate is believed only with X-Eport-Proxy-Secret."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.conftest import start_server, stop
from tests.helpers import enroll_enterprise
from tests.test_config_checks import refused, serve

SECRET = "k3n1Zr8yq0VbQ4wX2sTfH7mJc9PdLa6e"  # 32 characters, as a proxy's config holds it


@pytest.mark.parametrize("given", ["variable", "file"])
def test_a_forwarded_certificate_needs_the_proxy_secret(tmp_path: Path, given: str) -> None:
    """The secret set in the environment, or in a file ``EPORT_AUTH_PROXY_SECRET_FILE``
    names (a Docker secret, a systemd credential)."""
    extra = {"EPORT_AUTH_TRUSTED_PROXIES": "127.0.0.1/32", "EPORT_AUTH_PROXY_SECRET": SECRET}
    if given == "file":
        (tmp_path / "proxy-secret").write_text(SECRET + "\n")
        del extra["EPORT_AUTH_PROXY_SECRET"]
        extra["EPORT_AUTH_PROXY_SECRET_FILE"] = str(tmp_path / "proxy-secret")
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


def test_a_secret_file_that_cannot_be_read_is_refused_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    refused(
        serve(tmp_path / "d", EPORT_AUTH_KEY_PASSPHRASE_FILE=str(missing)),
        f"EPORT_AUTH_KEY_PASSPHRASE_FILE: {missing}: cannot be read",
    )
    assert not (tmp_path / "d").exists()
