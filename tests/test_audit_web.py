"""The auditor's web view at /audit/ in a real headless browser (Debian's chromium, driven by
Playwright for Python), against the real server.

Sign-in through ``eport audit web-login``; the checkpoint, the chart (its SVG bars must
render with a size), event search and paging, a certificate's detail whose inclusion
proof is checked here with cli/auditproof.py; an enterprise sees only its own; no
request leaves the server; a screenshot goes to docs/audit-web.png.

The chart needs history over several days, which a fresh server lacks: besides real
enrollments and a revocation, the test appends a few synthetic backdated events (actor
``test:seed``) through the CA's own SQL store and log sink, so the log stays consistent.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy.orm import sessionmaker

from ca import translog
from ca.db import make_engine
from ca.records import Event, EventType
from ca.store import SqlStore
from cli import auditproof
from tests.conftest import REPO, Server
from tests.helpers import chromium
from tests.test_audit_cli import enroll_concurrently

# The picture in docs/ is refreshed only on request (EPORT_UPDATE_SCREENSHOTS=1), so a
# test run never leaves the work tree changed; otherwise it goes to a temporary file.
SCREENSHOT = (
    REPO / "docs" / "audit-web.png"
    if os.environ.get("EPORT_UPDATE_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "eport-audit-web.png"
)


def seed_history(server: Server) -> None:
    engine = make_engine(server.database_url)
    try:
        store = SqlStore(
            sessionmaker(engine, expire_on_commit=False), event_sinks=(translog.append_event,)
        )
        now = datetime.datetime.now(datetime.UTC)
        for day in range(25, 0, -1):
            issued = (day * 7) % 5 + (2 if day % 6 == 0 else 0)
            revoked = 1 if day % 4 == 0 else 0
            for n in range(issued + revoked):
                kind = EventType.CERTIFICATE_ISSUED if n < issued else EventType.CERTIFICATE_REVOKED
                with store.transaction() as tx:
                    tx.append_event(
                        Event(
                            type=kind,
                            at=now - datetime.timedelta(days=day, minutes=n),
                            actor="test:seed",
                            subject=f"Seeded history {day}-{n}",
                            details={"synthetic": True},
                        )
                    )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def login_url(server: Server, *identity: str) -> str:
    doc = json.loads(server.eport("audit", "web-login", *identity, "--json").stdout)
    url = doc["url"]
    assert isinstance(url, str) and url.startswith(server.url + "/audit/login?token=")
    return url


def test_web_view(sqlite_server: Server, browser: Any, tmp_path: Path) -> None:
    server = sqlite_server
    seed_history(server)
    issued = enroll_concurrently(server, 4)
    server.eport(
        "revoke", "--serial", issued[0]["serial"], "--reason", "keyCompromise", *server.officer()
    )

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))

    # Anonymous: 401 and how to sign in; no cookie, no data.
    resp = page.goto(server.url + "/audit/")
    assert resp.status == 401
    assert "eport audit web-login" in page.content()
    assert "Seeded history" not in page.content()

    url = login_url(server, *server.auditor())
    # A link checker's HEAD (mail, chat) neither signs in nor spends the link.
    head = requests.head(url, timeout=10, allow_redirects=False)
    assert head.status_code == 200 and "Set-Cookie" not in head.headers
    resp = page.goto(url)
    assert resp.ok and page.url == server.url + "/audit/"
    copied_before = next(c["value"] for c in page.context.cookies() if c["name"] == "eport_audit")
    csp = resp.headers.get("content-security-policy", "")
    assert "default-src 'none'" in csp and "script-src" not in csp
    cookie = next(c for c in context.cookies() if c["name"] == "eport_audit")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/audit"

    # The checkpoint shown is the log's signed one.
    note = requests.get(server.url + "/ca/v1/audit/checkpoint", timeout=10).content
    key = requests.get(server.url + "/ca/v1/audit/log-key", timeout=10).json()["verifier_key"]
    cp = auditproof.verify_checkpoint(note, key)
    assert page.locator("#tree-size").inner_text() == f"{cp.size} entries"
    assert page.locator("#root-hash").inner_text() == cp.root_hash.hex()

    # The chart renders: bars with a real size on screen, both series.
    bars = page.locator("#chart rect.bar")
    assert bars.count() > 10
    boxes = [bars.nth(i).bounding_box() for i in range(bars.count())]
    assert all(b is not None and b["height"] > 0 and b["width"] > 0 for b in boxes)
    assert page.locator("#chart rect.bar.revoked").count() >= 6
    assert page.locator("#chart rect.bar.issued").count() >= 20
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # A reused link opens nothing.
    assert page.goto(url).status == 401

    # Search by subject name, then open the certificate and check its proof ourselves.
    page.goto(server.url + "/audit/")
    page.fill("input[name=q]", "Audit Co 2")
    page.click("form.search button")
    page.wait_for_url("**/audit/events?**")
    rows = page.locator("table.events tbody tr")
    assert rows.count() == 3  # submitted, approved, issued
    assert "Audit Co 2" in rows.first.inner_text()
    page.locator("table.events tbody tr.t-certificate-issued td:last-child a").click()
    page.wait_for_url("**/audit/certificates/**")
    assert "Inclusion proof" in page.content()
    serial = page.url.rsplit("/", 1)[-1]
    raw = page.locator("#proof pre.note").text_content().encode()
    nodes = [bytes.fromhex(t) for t in page.locator("ol.proof li").all_inner_texts()]
    index = int(page.locator("#proof dl.facts dd a").inner_text())
    size = int(page.locator("#proof dl.facts dd").first.inner_text().split(" of ")[1])
    fresh = auditproof.verify_checkpoint(
        requests.get(f"{server.url}/ca/v1/audit/checkpoint?size={size}", timeout=10).content, key
    )
    auditproof.verify_inclusion(
        auditproof.leaf_hash(raw), index, fresh.size, nodes, fresh.root_hash
    )
    assert json.loads(raw)["serial"] == serial
    assert hashlib.sha256(b"\x00" + raw).hexdigest() in page.content()

    # The revoked certificate shows its revocation in its history.
    page.goto(f"{server.url}/audit/certificates/{issued[0]['serial']}")
    assert page.locator("tr.t-certificate-revoked").count() == 1

    # Paging: 50 a page, newest first, "Older" goes on without overlap.
    page.goto(server.url + "/audit/events")
    first_page = page.locator("table.events tbody tr td:first-child").all_inner_texts()
    assert len(first_page) == 50 and int(first_page[0]) >= cp.size - 1
    page.click("#older")
    second_page = page.locator("table.events tbody tr td:first-child").all_inner_texts()
    assert second_page and int(second_page[0]) == int(first_page[-1]) - 1

    # An entry page with its proof.
    page.goto(f"{server.url}/audit/entries/0")
    assert "ca.initialized" in page.content() and page.locator("ol.proof li").count() > 0

    assert all(u.startswith(server.url) for u in requested), "the view loads nothing from outside"

    # An unknown page or a malformed entry index: the view's own HTML page, with its headers.
    for bad in ("/audit/nonexistent", "/audit/entries/abc"):
        r = requests.get(server.url + bad, cookies={"eport_audit": copied_before}, timeout=10)
        assert r.status_code == 404 and r.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        assert "<h1>Not found</h1>" in r.text, bad  # one title, routed or the view's own
    r = requests.post(server.url + "/audit/session", timeout=10)  # the CLI's JSON endpoint
    assert r.status_code == 401 and r.headers["Content-Type"] == "application/problem+json"
    # Sign out: the session is gone, on the server too (a copy of the cookie opens nothing).
    page.goto(server.url + "/audit/")
    copied = next(c["value"] for c in context.cookies() if c["name"] == "eport_audit")
    jar = {"eport_audit": copied}
    assert requests.get(server.url + "/audit/", cookies=jar, timeout=10).status_code == 200
    page.click(".who button")
    assert page.goto(server.url + "/audit/").status == 401
    after = requests.get(server.url + "/audit/", cookies=jar, timeout=10)
    assert after.status_code == 401 and "signed out" in after.text
    context.close()


def test_enterprise_sees_only_its_own(sqlite_server: Server, browser: Any, tmp_path: Path) -> None:
    server = sqlite_server
    uscc_app = json.loads(
        server.eport(
            "apply", "--uscc", "91350100M000100Y43", "--name", "Web Own Co", "--json"
        ).stdout
    )
    grant = json.loads(
        server.eport("ra", "approve", uscc_app["id"], *server.officer(), "--json").stdout
    )
    out = tmp_path / "ent"
    mine = json.loads(
        server.eport(
            "enroll",
            "--code",
            grant["enrollment_code"],
            "--profile",
            "enterprise",
            "--out",
            str(out),
            "--json",
        ).stdout
    )
    others = enroll_concurrently(server, 1)
    context = browser.new_context()
    page = context.new_page()
    page.goto(login_url(server, "--cert", str(out / "cert.pem"), "--key", str(out / "key.pem")))
    assert "USCC 91350100M000100Y43 only" in page.content()
    page.goto(server.url + "/audit/events")
    usccs = set(page.locator("table.events tbody tr td:nth-child(5)").all_inner_texts())
    assert usccs == {"91350100M000100Y43"}
    assert page.goto(f"{server.url}/audit/certificates/{mine['serial']}").ok
    assert page.goto(f"{server.url}/audit/certificates/{others[0]['serial']}").status == 404
    assert page.goto(f"{server.url}/audit/events?uscc={others[0]['uscc']}").status == 403
    context.close()


def test_session_ends_when_the_readers_certificate_is_held(
    sqlite_server: Server, tmp_path: Path
) -> None:
    """A web session, and a link not yet opened, stop reading once the certificate that
    signed in is put on hold (a lost key); lifting the hold lets the session read again.
    No browser needed: the cookie is the session."""
    from tests.helpers import creds, enroll_enterprise, serial_of

    server = sqlite_server
    ent = enroll_enterprise(server, tmp_path, "Held Reader Co")
    serial = serial_of(ent)
    web = requests.Session()
    assert web.get(login_url(server, *creds(ent)), timeout=10).ok
    assert web.get(server.url + "/audit/", timeout=10).status_code == 200
    unopened = login_url(server, *creds(ent))

    server.eport("suspend", "--serial", serial, *creds(ent))  # the holder: a lost key
    for page in ("/audit/", "/audit/events", f"/audit/certificates/{serial}"):
        r = web.get(server.url + page, timeout=10)
        assert r.status_code == 401, (page, r.status_code)
        assert f"the certificate {serial} this session was opened with is on hold" in r.text
    fresh = requests.Session()
    r = fresh.get(unopened, timeout=10)
    assert r.status_code == 401 and "on hold" in r.text
    assert "eport_audit" not in fresh.cookies

    server.eport("resume", "--serial", serial, *server.officer())
    assert web.get(server.url + "/audit/events", timeout=10).status_code == 200
    assert fresh.get(unopened, timeout=10).ok  # the refused link was not spent


def test_indices_past_the_databases_integers(sqlite_server: Server) -> None:
    """An entry index or a page's ``before`` beyond a 64-bit integer is a 404 / 400 page,
    not a 500 from the database driver (OverflowError)."""
    server = sqlite_server
    web = requests.Session()
    assert web.get(login_url(server, *server.auditor()), timeout=10).ok
    for index in (2**63 - 1, 10**23):
        r = web.get(f"{server.url}/audit/entries/{index}", timeout=10)
        assert r.status_code == 404 and "no entry" in r.text, index
    # ASCII digits as the API reads them: the route took "٣" for 3 and "05" for 5
    for number in ("%D9%A3", "05", "+1", "-1"):
        r = web.get(f"{server.url}/audit/entries/{number}", timeout=10)
        assert r.status_code == 404 and "an entry is named by its log index" in r.text, number
        assert r.headers["Content-Type"].startswith("text/html"), number
    for before in (str(10**23), "-1", "\uff11"):
        r = web.get(server.url + "/audit/events", params={"before": before}, timeout=10)
        assert r.status_code == 400 and "before must be a log index" in r.text, before
    assert web.get(server.url + "/audit/events", params={"before": "1"}, timeout=10).ok


def test_a_host_werkzeug_cannot_route_is_a_400_not_a_500(sqlite_server: Server) -> None:
    """A Host with an empty label or one over 63 characters leaves Flask no URL adapter:
    the view's error page (its url_for) answered 500 with a traceback in the log, to
    anyone, for every such request (HTTP edges probe, session 27). A 400 problem, as the
    API's paths answer, and the same path and two slashes reach the token service."""
    for host in ("a..b", "a" * 64, "a" * 64 + ".example"):
        for path in ("/audit/", "/audit/login", "/audit/nowhere"):
            r = requests.get(sqlite_server.url + path, headers={"Host": host}, timeout=10)
            assert r.status_code == 400, (host, path, r.status_code, r.text[:200])
            assert r.headers["Content-Type"].startswith("application/problem+json")
    # the combined server routed //auth/... to the CA, whose 404 said no such path
    r = requests.get(sqlite_server.url + "//auth/health", timeout=10)
    assert r.ok, (r.status_code, r.text[:200])
