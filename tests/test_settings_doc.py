"""docs/settings.md names every setting of both services, with the variable the code
reads, and marks as secret exactly those read from ``*_FILE`` too."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from authsvc.config import AuthConfig
from ca.config import CAConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def _rows(heading: str) -> dict[str, tuple[str, bool]]:
    """The table under ``heading``: key -> (variable, marked secret)."""
    text = DOC.read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, bool]] = {}
    for line in section.splitlines():
        m = re.match(r"\| `(\w+)` \| `(EPORT_\w+)`( \*\(secret\)\*)? \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), bool(m.group(3)))
    return rows


@pytest.mark.parametrize(
    ("cls", "heading", "prefix"),
    [(CAConfig, "The CA", "EPORT_"), (AuthConfig, "The token service", "EPORT_AUTH_")],
)
def test_every_setting_is_documented(cls: type, heading: str, prefix: str) -> None:
    rows = _rows(heading)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(rows) == set(fields), set(rows) ^ set(fields)
    for name, (variable, secret) in rows.items():
        assert variable == prefix + name.upper(), (name, variable)
        assert secret == bool(fields[name].metadata.get("secret")), name
        assert fields[name].repr is not secret, name  # a secret is never in repr


def test_documented_variables_are_the_ones_read(tmp_path: Path) -> None:
    """Each documented variable really sets its key (a typo in the page, or a variable
    renamed in the code, fails here)."""
    for cls, heading in ((CAConfig, "The CA"), (AuthConfig, "The token service")):
        for name, (variable, _) in _rows(heading).items():
            default = getattr(cls.load(environ={}), name)
            got = getattr(cls.load(environ={variable: _other(name, default, tmp_path)}), name)
            assert got != default, (variable, got)


def _other(name: str, default: object, tmp_path: Path) -> str:
    """A valid value of setting ``name`` other than its ``default``."""
    if isinstance(default, Path):
        return str(tmp_path)
    if isinstance(default, bool):
        return "true"
    if isinstance(default, tuple):
        return "192.0.2.1"
    if name == "request_max_lifetime_seconds":  # its default is its upper bound
        return "60"
    if name == "event_retention_days":  # 0 (for ever), else six months at least
        return "400"
    if isinstance(default, int | float):
        return "0.5" if name == "lint_sample_rate" else str(default + 1)
    if name.endswith("database_url"):
        return "postgresql://u:p@db.example/e"
    if name == "status_mode":
        return "ocsp"
    if "url" in name or name in ("token_issuer", "audit_token_audience"):
        return "https://x.example"
    return "p" * 32
