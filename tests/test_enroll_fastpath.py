"""``POST /ca/v1/enroll`` on the WSGI fast path (ca.enroll_http): the same answers as the
Flask view, byte for byte, without Flask's request machinery; whatever it is not sure of
goes to Flask with the body intact; an unexpected failure is a 500, never a second try.

The fast path reads no query string, so the same request sent with one (``?via=flask``,
which the view ignores) is the Flask view's answer to compare with; a body not sent as
``application/json`` is Flask's 415, never the fast path's."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, jsonify, request, request_started
from werkzeug.test import EnvironBuilder

from ca.app import EXTENSION, RELOAD, create_app
from ca.config import CAConfig
from ca.devinit import ensure_dev_ca
from ca.errors import Sealed
from ca.wellformed import TEXT_CHECK
from cli.serve import combined
from tests.conftest import Server
from tests.helpers import fresh_uscc, jrun

PATH = "/ca/v1/enroll"
VIA_FLASK = {"QUERY_STRING": "via=flask"}
"""What sends a request down Flask's path (the fast path hands on any query string)."""
NAME = "快速通道贸易有限公司"
"""The enterprises' legal name: the answers carry it as UTF-8 (RFC 8259 §8.1)."""


def csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ignored")])
    req = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return req.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class CA:
    app: Flask
    data_dir: Path
    flask_requests: list[str]
    """Paths of the requests Flask's request machinery dispatched (``request_started``)."""

    def code(self) -> tuple[str, str]:
        """A fresh enterprise enrollment code and its application id."""
        with self.app.app_context():
            authority = self.app.extensions[EXTENSION].authority
            a = authority.apply("enterprise", {"uscc": fresh_uscc(), "legal_name": NAME}, "test")
            return authority.approve_at_ceremony(a.id, "ceremony:test").code, a.id

    def certificates(self, app_id: str | None = None) -> int:
        with contextlib.closing(sqlite3.connect(self.data_dir / "eport.db")) as db:
            if app_id is None:
                return int(db.execute("SELECT count(*) FROM certificates").fetchone()[0])
            q = "SELECT count(*) FROM certificates WHERE application_id = ?"
            return int(db.execute(q, (app_id,)).fetchone()[0])


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CA]:
    data_dir = tmp_path_factory.mktemp("enroll-fast") / "data"
    cfg = CAConfig.load({"data_dir": data_dir, "dev": True}, environ={})
    ensure_dev_ca(cfg)
    app = create_app(cfg)
    seen: list[str] = []

    def started(sender: Flask, **_kw: Any) -> None:
        seen.append(request.path)

    request_started.connect(started, app)
    yield CA(app, data_dir, seen)
    request_started.disconnect(started, app)


@dataclass(frozen=True)
class Answer:
    status: str
    headers: dict[str, str]
    body: bytes


def call(
    wsgi: Any, body: bytes, content_type: str | None = "application/json", **environ: Any
) -> Answer:
    env = EnvironBuilder(path=PATH, method="POST", data=body, content_type=content_type)
    e = env.get_environ()
    e.update(environ)
    got: list[Any] = []
    out = b"".join(wsgi(e, lambda s, h, exc=None: got.append((s, h))))
    status, headers = got[0]
    return Answer(status, dict(headers), out)


def both(ca: CA, body: bytes) -> tuple[Answer, Answer]:
    """The fast path's answer and Flask's (:data:`VIA_FLASK`) to ``body``, both sent as
    application/json; asserts which of them Flask dispatched."""
    before = len(ca.flask_requests)
    fast = call(ca.app, body)
    assert len(ca.flask_requests) == before, "the fast path let Flask answer"
    slow = call(ca.app, body, **VIA_FLASK)
    assert len(ca.flask_requests) == before + 1
    return fast, slow


def test_the_app_runs_no_hook_the_fast_path_skips(ca: CA, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CA app's before-request hooks are the hierarchy poll, which the fast path runs
    too (ca.app.reload_hierarchy), and the edge's text check (ca.wellformed), which it
    needs not: its path is fixed, a query string goes on to Flask, and the body is read
    by the same ca.wellformed.json_object; the trailing-slash redirect made relative
    (ca.problems), which its path never meets (/ca/v1/enroll is no redirect); and the
    safe HEAD of the audit view's sign-in link (ca.wellformed.install_safe_head), which a
    POST never meets. A new hook must be weighed against it."""
    hooks = [ca.app.extensions[RELOAD], ca.app.extensions[TEXT_CHECK]]
    (funcs,) = dict(ca.app.before_request_funcs).values()
    others = [f for f in funcs if f not in hooks]
    assert sorted(f.__name__ for f in others) == ["_relative_slash_redirect", "safe_head"], funcs
    assert [f for f in funcs if f in hooks] == hooks
    polls: list[bool] = []
    poll = ca.app.extensions[RELOAD]
    monkeypatch.setitem(
        ca.app.extensions, RELOAD, lambda immediately=False: polls.append(immediately) or poll()
    )
    call(ca.app, b'{"code": "x"}')
    assert polls == [False]


def test_enrollment_is_answered_as_the_view_would_and_only_once(ca: CA) -> None:
    answers = []
    for environ in ({}, VIA_FLASK):  # fast path, then Flask
        code, app_id = ca.code()
        body = json.dumps({"code": code, "profile": "enterprise", "csr": csr()}).encode()
        before = len(ca.flask_requests)
        a = call(ca.app, body, **environ)
        assert len(ca.flask_requests) == before + bool(environ)
        assert a.status == "201 CREATED", a.body
        assert ca.certificates(app_id) == 1
        answers.append((a, code, app_id, body))
    (fast, code, app_id, body), (slow, *_) = answers
    assert fast.headers == {
        "Content-Type": "application/json",
        "Content-Length": str(len(fast.body)),
    }
    assert slow.headers == {
        "Content-Type": "application/json",
        "Content-Length": str(len(slow.body)),
    }
    doc, slow_doc = json.loads(fast.body), json.loads(slow.body)
    assert list(doc) == list(slow_doc)  # same members in the same order
    assert {k: type(v) for k, v in doc.items()} == {k: type(v) for k, v in slow_doc.items()}
    with ca.app.app_context():
        assert fast.body == jsonify(doc).get_data()  # jsonify's bytes for its document
    assert f"CN={NAME}".encode() in fast.body and b"\\u" not in fast.body  # not escaped
    cert = x509.load_pem_x509_certificate(doc["certificate"].encode())
    assert format(cert.serial_number, "x") == doc["serial"].lstrip("0")
    assert doc["profile"] == "enterprise" and doc["application_id"] == app_id

    # The code is spent: refused with any other key on either path, the same way, and
    # nothing more stored; the same request again (a lost answer) gets its certificate.
    total = ca.certificates()
    other = json.dumps({"code": code, "profile": "enterprise", "csr": csr()}).encode()
    again, flask_again = both(ca, other)
    assert again == flask_again and again.status == "403 FORBIDDEN"
    assert json.loads(again.body)["detail"].startswith("this enrollment code was already used: ")
    replay, flask_replay = both(ca, body)
    assert replay == flask_replay and replay.status == "200 OK"
    assert json.loads(replay.body)["serial"] == doc["serial"]
    assert ca.certificates(app_id) == 1 and ca.certificates() == total


def _refusals(code: str) -> dict[str, tuple[dict[str, Any], int, str]]:
    good = csr()
    return {
        "unknown code": (
            {"code": "ZZZZ-ZZZZ-ZZZZ", "profile": "enterprise", "csr": good},
            403,
            "unknown enrollment code",
        ),
        "profile not allowed": (
            {"code": code, "profile": "operator", "csr": good},
            403,
            "this code allows enterprise, not 'operator'",
        ),
        "unknown profile": ({"code": code, "profile": "nope", "csr": good}, 400, "nope"),
        "bad csr": ({"code": code, "profile": "enterprise", "csr": "not a CSR"}, 400, ""),
        "missing code": ({"profile": "enterprise", "csr": good}, 400, "'code' is required"),
        "empty profile": (
            {"code": code, "profile": "", "csr": good},
            400,
            "'profile' is required",
        ),
        "csr not a string": (
            {"code": code, "profile": "enterprise", "csr": 5},
            400,
            "'csr' must be a string",
        ),
        "code not a string": (
            {"code": [code], "profile": "enterprise", "csr": good},
            400,
            "'code' must be a string",
        ),
    }


def test_every_refusal_is_the_views_problem_byte_for_byte(ca: CA) -> None:
    code, app_id = ca.code()
    total = ca.certificates()
    for name, (doc, status, detail) in _refusals(code).items():
        fast, slow = both(ca, json.dumps(doc).encode())
        assert fast == slow, name
        assert fast.status.startswith(f"{status} "), (name, fast.body)
        assert fast.headers["Content-Type"] == "application/problem+json", name
        assert fast.headers["Content-Length"] == str(len(fast.body)), name
        problem = json.loads(fast.body)
        assert problem["status"] == status and problem["instance"] == PATH, name
        assert detail in problem["detail"], (name, problem)
    assert ca.certificates() == total
    # None of them spent the code.
    ok = call(ca.app, json.dumps({"code": code, "profile": "enterprise", "csr": csr()}).encode())
    assert ok.status == "201 CREATED" and ca.certificates(app_id) == 1


@pytest.mark.parametrize(
    ("what", "body", "environ", "status"),
    [
        ("not JSON", b"{nope", {}, 400),
        ("a JSON array", b'["code"]', {}, 400),
        ("an empty body", b"", {}, 400),
        ("over the limit", b'{"code": "x"}', {"CONTENT_LENGTH": str(1 << 20)}, 413),
        ("a number Werkzeug refuses", b'{"code": "x"}', {"CONTENT_LENGTH": "1_3"}, 400),
    ],
)
def test_what_it_is_not_sure_of_goes_to_flask_with_the_body(
    ca: CA, what: str, body: bytes, environ: dict[str, Any], status: int
) -> None:
    before = len(ca.flask_requests)
    a = call(ca.app, body, **environ)
    assert ca.flask_requests[before:] == [PATH], what
    assert a.status.startswith(f"{status} "), (what, a.body)
    assert a.headers["Content-Type"] == "application/problem+json"


def test_flask_gets_the_body_intact(ca: CA) -> None:
    """A body the fast path read and handed on: Flask's view reads the very bytes."""
    code, app_id = ca.code()
    doc = {"code": code, "profile": "enterprise", "csr": csr()}
    for content_type in ("application/json; charset=utf-8", "APPLICATION/JSON"):
        before = len(ca.flask_requests)
        bad = call(ca.app, json.dumps([doc]).encode(), content_type)  # read, then refused
        assert ca.flask_requests[before:] == [PATH]
        assert json.loads(bad.body)["detail"] == "the body must be a JSON object"
    # The charset parameter does not keep a request off the fast path.
    before = len(ca.flask_requests)
    a = call(ca.app, json.dumps(doc).encode(), "application/json; charset=utf-8")
    assert a.status == "201 CREATED" and len(ca.flask_requests) == before
    assert ca.certificates(app_id) == 1
    # A body shorter than its Content-Length is refused before either reads it
    # (ca.framing), and a chunked one reaches the fast path framed by its length.
    before = len(ca.flask_requests)
    short = call(ca.app, b'{"code": "x"}', CONTENT_LENGTH="40")
    assert ca.flask_requests[before:] == [] and short.status.startswith("400 ")
    assert "ended after 13 of the 40 bytes" in json.loads(short.body)["detail"]
    chunked = call(ca.app, b'{"code": "x"}', HTTP_TRANSFER_ENCODING="chunked")
    assert ca.flask_requests[before:] == [] and chunked.status.startswith("400 ")
    assert json.loads(chunked.body)["detail"] == "'profile' is required"


NOT_JSON = [
    "text/plain",
    "text/plain;charset=UTF-8",  # what a browser's fetch() sends a string as
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    None,  # fetch() of a Blob: no Content-Type at all, still no preflight
    "application/json, text/plain",
    "application/jsonp",
    "application/merge-patch+json",
    "application/json\x0b",  # str.strip() takes \x0b for a space; Werkzeug does not
]


@pytest.mark.parametrize(
    ("content_type", "fast"),
    [
        ("application/json", True),
        ("Application/JSON ; charset=utf-8", True),
        ("application/json;", True),
        *((ct, False) for ct in NOT_JSON),
    ],
)
def test_every_media_type_is_answered_as_flask_answers_it(
    ca: CA, content_type: str | None, fast: bool
) -> None:
    """The fast path takes exactly what the view reads as JSON (Werkzeug's parse of the
    Content-Type); any other type is Flask's 415, byte for byte the same either way."""
    body = json.dumps({"code": "ZZZZ-ZZZZ-ZZZZ", "profile": "enterprise", "csr": csr()})
    before = len(ca.flask_requests)
    a = call(ca.app, body.encode(), content_type)
    assert len(ca.flask_requests) == before + (not fast)
    slow = call(ca.app, body.encode(), content_type, **VIA_FLASK)
    assert a == slow
    problem = json.loads(a.body)
    if fast:
        assert a.status == "403 FORBIDDEN", problem
        return
    assert a.status == "415 UNSUPPORTED MEDIA TYPE", problem
    assert a.headers["Content-Type"] == "application/problem+json"
    assert problem["type"] == "urn:eport:problem:unsupported-media-type"
    assert "send the body as application/json" in problem["detail"]


@pytest.mark.parametrize("content_type", NOT_JSON[:5])
def test_a_code_posted_as_a_form_or_text_is_not_spent(ca: CA, content_type: str | None) -> None:
    """A cross-site form or fetch() posts a good enrollment as text or a form: 415,
    nothing issued, and the code still enrolls when sent as JSON."""
    code, app_id = ca.code()
    body = json.dumps({"code": code, "profile": "enterprise", "csr": csr()}).encode()
    refused = call(ca.app, body, content_type)
    assert refused.status.startswith("415 "), refused.body
    assert ca.certificates(app_id) == 0
    assert call(ca.app, body).status == "201 CREATED"
    assert ca.certificates(app_id) == 1


@pytest.mark.parametrize("failure", [RuntimeError("database gone"), Sealed("keys sealed")])
def test_a_failure_is_answered_as_flask_would_and_not_retried(
    ca: CA,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
) -> None:
    calls: list[str] = []

    def broken(code: str, profile: str, csr: str) -> Any:
        calls.append(code)
        raise failure

    authority = ca.app.extensions[EXTENSION].authority
    monkeypatch.setattr(authority, "enroll", broken)
    secret = "SECRET-CODE-0000"
    body = json.dumps({"code": secret, "profile": "enterprise", "csr": csr()}).encode()
    with caplog.at_level(logging.ERROR, logger="eport.http"):
        before = len(ca.flask_requests)
        fast = call(ca.app, body)
        assert calls == [secret] and len(ca.flask_requests) == before  # no second try
        fast_log = [r.getMessage() for r in caplog.records]
        logged = caplog.text
        caplog.clear()
        slow = call(ca.app, body, **VIA_FLASK)
        assert calls == [secret, secret] and len(ca.flask_requests) == before + 1
        slow_log = [r.getMessage() for r in caplog.records]
        logged += caplog.text
    assert fast == slow
    assert fast.status == (
        "503 SERVICE UNAVAILABLE" if isinstance(failure, Sealed) else "500 INTERNAL SERVER ERROR"
    )
    assert fast.headers["Content-Type"] == "application/problem+json"
    if isinstance(failure, Sealed):
        assert fast_log == slow_log == ["Sealed: keys sealed"]
    else:
        assert json.loads(fast.body)["detail"] == "the server failed; nothing was changed"
        assert fast_log == slow_log == [f"unexpected error on POST {PATH}"]
    assert secret not in logged and "BEGIN CERTIFICATE REQUEST" not in logged
    assert "database gone" not in fast.body.decode()


def test_the_combined_server_routes_enrollment_to_the_fast_path(ca: CA) -> None:
    """``eport serve`` mounts the CA app under a dispatcher: it sees the same PATH_INFO."""

    def auth(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise AssertionError("routed to the token service")

    code, app_id = ca.code()
    body = json.dumps({"code": code, "profile": "enterprise", "csr": csr()}).encode()
    before = len(ca.flask_requests)
    a = call(combined(ca.app, auth), body)
    assert a.status == "201 CREATED" and len(ca.flask_requests) == before
    assert ca.certificates(app_id) == 1


def test_through_gunicorn(sqlite_server: Server) -> None:
    """Over HTTP: issued once; the used code refused alike on both paths (Flask's taken
    by a query string, and by a chunked body, which only Flask reads)."""
    srv = sqlite_server
    app = jrun(srv, "apply", "--uscc", fresh_uscc(), "--name", "Gunicorn Co.")
    code = jrun(srv, "ra", "approve", app["id"], *srv.officer())["enrollment_code"]
    doc = {"code": code, "profile": "enterprise", "csr": csr()}
    url = srv.url + PATH
    r = requests.post(url, json=doc, timeout=30)
    assert r.status_code == 201 and r.headers["Content-Type"] == "application/json"
    assert r.json()["application_id"] == app["id"]
    # The same key again gets its certificate again (a lost answer); another key is refused.
    assert requests.post(url, json=doc, timeout=30).json()["serial"] == r.json()["serial"]
    body = json.dumps({**doc, "csr": csr()}).encode()
    refusals = [
        requests.post(u, data=body, headers={"Content-Type": "application/json"}, timeout=30)
        for u in (url, url + "?via=flask")
    ]
    refusals.append(
        requests.post(
            url,
            data=iter([body[:10], body[10:]]),
            timeout=30,
            headers={"Content-Type": "application/json"},
        )
    )
    for resp in refusals:
        assert resp.status_code == 403
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.content == refusals[0].content
    assert json.loads(refusals[0].content)["detail"].startswith(
        "this enrollment code was already used: "
    )
    with contextlib.closing(sqlite3.connect(srv.data_dir / "eport.db")) as db:
        q = "SELECT count(*) FROM certificates WHERE application_id = ?"
        assert db.execute(q, (app["id"],)).fetchone()[0] == 1
