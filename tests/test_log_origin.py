"""The transparency log's name (the origin line of its checkpoints, C2SP tlog-checkpoint)
is the one of the base URL the CA was made for, whichever host an auditor asks first.

It was fixed by the first checkpoint signed, lazily, by the first host asked: a second
host on the same data directory, started without ``EPORT_PUBLIC_BASE_URL``, renamed the
log after its own address for good (race probe, session 24)."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.conftest import start_server, stop


def test_the_first_checkpoint_is_signed_when_the_ca_is_made(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, first_proc = start_server(data)  # makes the development CA, for its own URL
    try:
        second, second_proc = start_server(data)  # another address, no base URL setting
        try:
            note = requests.get(second.url + "/ca/v1/audit/checkpoint", timeout=10).text
            named = first.url.removeprefix("http://") + "/log"
            assert note.splitlines()[0] == named, note
            again = requests.get(first.url + "/ca/v1/audit/checkpoint", timeout=10).text
            assert again.splitlines()[0] == named, again
        finally:
            stop(second_proc)
    finally:
        stop(first_proc)
