"""authsvc.responders: the token service's transport to a remote CA's OCSP responders.
A failure to get an answer is a 503 fault (StatusUnavailable), and a responder that
failed is left alone for a pause, then probed by one request at a time."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests
from cryptography.x509 import ocsp

from authsvc.responders import Responders
from ca.ocsp_client import OCSPError, StatusUnavailable, check_response
from tests.helpers import self_signed

URL = "http://ca.internal/ocsp"


class Answer:
    def __init__(self, status: int, content: bytes = b"answer") -> None:
        self.status_code = status
        self.content = content


class FakeHTTP:
    """A session whose ``post`` answers from a script (an exception, or an Answer)."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls = 0
        self.gate: threading.Event | None = None

    def post(self, url: str, **kwargs: Any) -> Answer:
        self.calls += 1
        assert kwargs["allow_redirects"] is False
        if self.gate is not None:
            self.gate.wait(10)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, Answer)
        return step


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_responder_that_cannot_be_reached_is_a_503_and_left_alone_for_a_pause() -> None:
    http = FakeHTTP(requests.ConnectionError("refused"), Answer(200))
    clock = Clock()
    post = Responders(http, pause=2.0, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(StatusUnavailable) as first:
        post(URL, b"req")
    assert first.value.status == 503 and URL in first.value.detail
    assert URL not in first.value.problem()["detail"]  # the log's, not the client's
    clock.now += 1.9
    with pytest.raises(StatusUnavailable, match="not asked"):
        post(URL, b"req")
    assert http.calls == 1  # failed fast, without a connection
    clock.now += 0.2
    assert post(URL, b"req") == b"answer"
    assert http.calls == 2


@pytest.mark.parametrize("status", [429, 502, 404])
def test_an_http_error_is_a_503(status: int) -> None:
    http = FakeHTTP(Answer(status, b"<html>"))
    with pytest.raises(StatusUnavailable, match=f"answered HTTP {status}"):
        Responders(http)(URL, b"req")  # type: ignore[arg-type]


def test_one_request_at_a_time_probes_a_responder_that_failed() -> None:
    http = FakeHTTP(requests.Timeout("slow"), Answer(200), Answer(200))
    clock = Clock()
    post = Responders(http, pause=2.0, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(StatusUnavailable):
        post(URL, b"req")
    clock.now += 3
    http.gate = threading.Event()
    probe_answer: list[bytes] = []
    probe = threading.Thread(target=lambda: probe_answer.append(post(URL, b"req")))
    probe.start()
    while http.calls < 2:  # the probe is in flight
        threading.Event().wait(0.01)
    with pytest.raises(StatusUnavailable, match="being asked again"):
        post(URL, b"req")
    http.gate.set()
    probe.join(10)
    assert probe_answer == [b"answer"] and http.calls == 2
    assert post(URL, b"req") == b"answer"  # it answers: asked as usual again
    assert http.calls == 3


@pytest.mark.parametrize(("code", "unavailable"), [(3, True), (2, True), (1, False), (6, False)])
def test_try_later_is_a_fault_and_other_refusals_an_error(code: int, unavailable: bool) -> None:
    """RFC 6960 §2.3: tryLater (3) and internalError (2) say nothing of the certificate:
    503; malformedRequest (1) and unauthorized (6) are the 502 OCSPError as before."""
    cert, _ = self_signed("leaf")
    der = bytes([0x30, 0x03, 0x0A, 0x01, code])
    assert ocsp.load_der_ocsp_response(der).response_status.value == code
    with pytest.raises(OCSPError) as err:
        check_response(der, cert, cert, nonce=None, now=cert.not_valid_before_utc)
    assert isinstance(err.value, StatusUnavailable) is unavailable
    assert err.value.status == (503 if unavailable else 502)
