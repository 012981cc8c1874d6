"""The WSGI fast paths' routing (authsvc.fastpath.fast_path): what they answer, what they
leave to Flask (with the body intact), and an unexpected failure answered 500."""

from __future__ import annotations

import io
import json
from typing import Any

from authsvc.fastpath import Answer, fast_path
from ca.errors import Forbidden, server_error_problem
from ca.problems import ErrorAnswers

CERT = ":AAAA:"
ERRORS = ErrorAnswers(json.dumps, "the server failed")


def call(app: Any, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[str, bytes]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    environ.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    status: list[str] = []
    out = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    return status[0], out


def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Stands for Flask: echoes the body it was given."""
    start_response("299 FLASK", [])
    return [b"flask:" + environ["wsgi.input"].read()]


def test_answers_what_it_can_and_leaves_the_rest_to_flask() -> None:
    seen: list[str] = []

    def introspect(_h: Any, _addr: Any, token: str) -> dict[str, Any] | None:
        seen.append(token)
        if token == "refused":
            raise Forbidden("not a registered service")
        return None if token == "no-cert" else {"active": True, "sub": "op:x"}

    answer = lambda _h, _a: Answer(200, [("X-Eport-Subject", "op:x")])  # noqa: E731
    app = fast_path(inner, answer, introspect, ERRORS)
    status, body = call(app, "POST", "/auth/introspect", b"token=tok", CLIENT_CERT=CERT)
    assert status == "200 OK" and json.loads(body) == {"active": True, "sub": "op:x"}
    for token in ("refused", "no-cert"):  # Flask answers, and gets the body intact
        status, body = call(
            app, "POST", "/auth/introspect", f"token={token}".encode(), CLIENT_CERT=CERT
        )
        assert status == "299 FLASK" and body == f"flask:token={token}".encode()
    # A signed request, no certificate header, or no token: never looked at here.
    n = len(seen)
    for headers in ({"AUTHORIZATION": "EPort-Signed x", "CLIENT_CERT": CERT}, {}):
        assert call(app, "POST", "/auth/introspect", b"token=t", **headers)[0] == "299 FLASK"
    assert call(app, "POST", "/auth/introspect", b"x=1", CLIENT_CERT=CERT)[0] == "299 FLASK"
    assert len(seen) == n
    assert call(app, "GET", "/auth/validate")[0] == "200 OK"
    assert call(app, "HEAD", "/auth/validate")[0] == "299 FLASK"
    assert call(app, "GET", "/auth/jwks.json")[0] == "299 FLASK"


def test_an_unexpected_failure_is_a_500_problem_not_a_second_try() -> None:
    calls = {"flask": 0}

    def counting_inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls["flask"] += 1
        return inner(environ, start_response)

    def broken(*_a: Any) -> Any:
        raise RuntimeError("database gone")

    app = fast_path(counting_inner, broken, broken, ERRORS)
    for method, path, body in (
        ("GET", "/auth/validate", b""),
        ("POST", "/auth/introspect", b"token=t"),
    ):
        status, out = call(app, method, path, body, CLIENT_CERT=CERT)
        assert status.startswith("500") and json.loads(out)["status"] == 500
        # the body Flask's handler sends: the app's detail, nothing of the cause
        assert json.loads(out) == server_error_problem("the server failed")
    assert calls["flask"] == 0
