"""The session sweep costs one batch status read, whatever the number of sessions."""

from __future__ import annotations

import datetime
from typing import Any

from authsvc.service import TokenService


class Store:
    def __init__(self, sessions: dict[str, str]) -> None:
        self.sessions = sessions  # sid -> certificate serial (hex)

    def open_session_serials(self, now: datetime.datetime) -> list[tuple[str, str]]:
        return list(self.sessions.items())


class BatchStatus:
    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.calls: list[list[int]] = []

    def not_good(self, serials: list[int]) -> set[int]:
        self.calls.append(serials)
        return self.bad & set(serials)

    def status(self, cert: Any) -> Any:
        raise AssertionError("the sweep must not ask certificate by certificate")


def test_sweep_is_one_batch_read_and_ends_only_bad_sessions() -> None:
    sessions = {f"s{i}": format(0x1000 + i % 7, "x") for i in range(3000)}  # 7 certificates
    status = BatchStatus(bad={0x1003})
    svc = TokenService.__new__(TokenService)
    svc.store = Store(sessions)  # type: ignore[assignment]
    svc.status_source = status
    svc.clock = lambda: datetime.datetime(2026, 11, 26, tzinfo=datetime.UTC)
    checked: list[str] = []

    def live_session(sid: str, *, fresh_status: bool = False) -> None:
        checked.append(sid)
        from authsvc.tokens import InvalidToken

        raise InvalidToken("certificate revoked")

    svc.live_session = live_session  # type: ignore[method-assign]
    ended = svc.sweep()
    assert len(status.calls) == 1 and sorted(status.calls[0]) == list(range(0x1000, 0x1007))
    expected = {sid for sid, serial in sessions.items() if serial == "1003"}
    assert set(checked) == expected and ended == len(expected)
