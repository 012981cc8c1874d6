"""examples/front_proxy/nginx.conf, the public TLS front the docs prescribe, run as
written (paths and ports replaced) in front of a real server: it limits what anyone may
call without a credential (applications), and it shields eport serve from clients that
send half a request, which stop a bare gunicorn answering (exhaustion probe, F1, F2)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import requests

from tests.conftest import free_port, start_server, stop
from tests.helpers import fresh_uscc, nginx
from tests.test_introspection_mtls import proxy_certificate

SITE = Path(__file__).resolve().parent.parent / "examples" / "front_proxy" / "nginx.conf"


def _half_requests(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send half a request line's headers and then nothing."""
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /ca/v1/health HTTP/1.1\r\nHost: x\r\n")
        held.append(s)
    return held


def test_the_front_limits_applications_and_shields_the_server(tmp_path: Path) -> None:
    srv, proc = start_server(
        tmp_path / "data", workers=1, extra_env={"EPORT_TRUSTED_PROXIES": "127.0.0.1"}
    )
    try:
        # A bare server: one worker of four threads, four half-sent requests, and it
        # answers nobody.
        bare_port = int(srv.url.rsplit(":", 1)[1])
        held = _half_requests(bare_port, 4)
        try:
            requests.get(srv.url + "/ca/v1/health", timeout=2)
            raise AssertionError("the bare server answered while its threads were held")
        except requests.exceptions.ReadTimeout:
            pass
        finally:
            for s in held:
                s.close()
        crt, key = proxy_certificate(tmp_path)
        ca = srv.data_dir / "ca"
        bundle = tmp_path / "eport-cas.pem"
        bundle.write_bytes(
            b"".join(p.read_bytes() for p in [ca / "root.crt", *sorted(ca.glob("issuers/*.crt"))])
        )
        port = free_port()
        site = (
            SITE.read_text()
            .replace("/etc/eport/tls/fullchain.pem", str(crt))
            .replace("/etc/eport/tls/key.pem", str(key))
            .replace("/etc/eport/eport-cas.pem", str(bundle))
            .replace("127.0.0.1:8000", srv.url.removeprefix("http://"))
            .replace("0.0.0.0:443", f"127.0.0.1:{port}")
        )
        front = f"https://127.0.0.1:{port}"
        with nginx(tmp_path, site, port):
            held = _half_requests(port, 50)
            try:
                t0 = time.monotonic()
                r = requests.get(front + "/ca/v1/health", verify=str(crt), timeout=5)
                assert r.status_code == 200 and time.monotonic() - t0 < 2, r.text
            finally:
                for s in held:
                    s.close()
            answers = []
            for i in range(12):  # 6 a minute, a burst of 5: the first six pass
                body = {"subject_class": "enterprise", "uscc": fresh_uscc(), "legal_name": f"R{i}"}
                answers.append(
                    requests.post(
                        front + "/ca/v1/applications", json=body, verify=str(crt), timeout=10
                    ).status_code
                )
            assert answers[:6] == [201] * 6 and answers[6:] == [429] * 6, answers
            # other endpoints keep their own budget
            r = requests.get(front + "/ca/v1/health", verify=str(crt), timeout=5)
            assert r.status_code == 200
    finally:
        stop(proc)
