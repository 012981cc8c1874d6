"""The pages people read, in Simplified Chinese and English (``ca/i18n.py``).

The token service's portal and its sign-in, sign-out and error pages, and the auditors'
view, against a real server: ``Accept-Language: zh-CN`` gets the Chinese texts and
``<html lang="zh-CN">``, English or no header the English ones (the default), every page
says ``Vary: Accept-Language`` and keeps its security headers; data and the API's error
details stay as they are, and JSON answers do not change at all. The catalog is checked
against the templates and views, so a new English text without its Chinese fails here.
Last, Debian's chromium with a Chinese locale (Playwright) reads both views.
"""

from __future__ import annotations

import ast
import json
import re
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import jinja2
import pytest
import requests
from jinja2 import nodes
from markupsafe import Markup
from werkzeug.datastructures import LanguageAccept
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.http import parse_accept_header

from ca import errors, i18n, translog
from ca.policy import SubjectClass
from tests.conftest import REPO, Server
from tests.helpers import chromium, serial_of
from tests.test_oidc import COOKIE, World, authorize, world  # noqa: F401  (a fixture)

TEMPLATES = (REPO / "authsvc" / "templates", REPO / "ca" / "templates")
VIEWS = (
    REPO / "authsvc" / "oidc_api.py",
    REPO / "authsvc" / "portal.py",
    REPO / "ca" / "auditweb.py",
)
ZH = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}
EN = {"Accept-Language": "en-US,en;q=0.9"}
CJK = re.compile(r"[\u4e00-\u9fff]")


# -- the catalog -------------------------------------------------------------------------


def template_calls() -> tuple[dict[str, set[str]], list[str]]:
    """The literal texts of every ``_("…")`` in the page templates (text → templates),
    and where a call's text is not a literal."""
    env = jinja2.Environment(autoescape=True)
    literal: dict[str, set[str]] = {}
    dynamic: list[str] = []
    for root in TEMPLATES:
        for path in sorted(root.rglob("*.html")):
            name = str(path.relative_to(root))
            for call in env.parse(path.read_text()).find_all(nodes.Call):
                if not (isinstance(call.node, nodes.Name) and call.node.name == "_"):
                    continue
                first = call.args[0] if call.args else None
                if isinstance(first, nodes.Const) and isinstance(first.value, str):
                    literal.setdefault(first.value, set()).add(name)
                else:
                    dynamic.append(name)
    return literal, dynamic


def view_calls() -> dict[str, set[str]]:
    """The literal texts the views translate: ``translated("…")`` and
    ``i18n.translate(language, "…")``."""
    found: dict[str, set[str]] = {}
    for path in VIEWS:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            position = {"translated": 0, "translate": 1}.get(name)
            if position is None or len(node.args) <= position:
                continue
            arg = node.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.setdefault(arg.value, set()).add(path.name)
    return found


def fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}


def error_titles() -> set[str]:
    """The titles of the errors an audit page may be headed with."""
    out: set[str] = {errors.EPortError.title}
    todo = list(errors.EPortError.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__ in (errors.__name__, translog.__name__):
            out.add(cls.title)
    return out


def http_errors() -> set[str]:
    """Werkzeug's own 404 and 405 on the audit view's paths: their names, in sentence
    case as ca.auditweb titles them, and their descriptions."""
    return {
        t for e in (NotFound(), MethodNotAllowed()) for t in (e.name.capitalize(), e.description)
    }


def test_every_text_of_the_pages_has_its_chinese() -> None:
    in_templates, dynamic = template_calls()
    in_views = view_calls()
    assert len(in_templates) > 80 and len(in_views) > 15  # the parsers found them
    missing = {t: w for t, w in {**in_templates, **in_views}.items() if t not in i18n.ZH_CN}
    assert not missing, f"texts with no Chinese in ca/i18n.py: {missing}"
    # The one text a template takes from data: the subject class, a word in Chinese.
    assert dynamic == ["portal/index.html"]
    assert {c.value for c in SubjectClass} == set(i18n.SUBJECT_CLASSES)
    assert error_titles() <= set(i18n.ERROR_TITLES), error_titles() - set(i18n.ERROR_TITLES)
    assert http_errors() <= set(i18n.ZH_CN), http_errors() - set(i18n.ZH_CN)
    # No stale entry, no entry in two sections (the later one won silently).
    used = set(in_templates) | set(in_views) | set(i18n.SUBJECT_CLASSES)
    used |= error_titles() | http_errors()
    assert set(i18n.ZH_CN) <= used, set(i18n.ZH_CN) - used
    sections = (i18n.PORTAL, i18n.SUBJECT_CLASSES, i18n.AUDIT, i18n.ERROR_TITLES, i18n.HTTP_ERRORS)
    assert sum(len(s) for s in sections) == len(i18n.ZH_CN)
    for english, chinese in i18n.ZH_CN.items():
        assert chinese.strip() and chinese != english, english
        assert fields(chinese) == fields(english), english
        assert CJK.search(chinese) or english in ("SHA-256 (DER)",), english


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        ("zh", "zh-CN"),
        ("zh-cn", "zh-CN"),
        ("zh-Hans-CN", "zh-CN"),
        ("fr, zh;q=0.5", "zh-CN"),
        ("en-US,en;q=0.9", "en"),
        ("en;q=0.5, zh-CN;q=0.4", "en"),
        ("zh-TW", "en"),  # Traditional Chinese is not offered
        ("fr", "en"),
        ("*", "en"),
        ("", "en"),
        # the quality decides, not an exact match (probe: en-US first got Chinese)
        ("en-US,zh-CN;q=0.9", "en"),
        ("en-GB;q=0.8, zh-CN;q=0.9", "zh-CN"),
        ("zh-TW, zh-CN;q=0.5, en;q=0.4", "zh-CN"),
        ("zh-Hant-TW, en;q=0.3", "en"),
        ("zh-CN;q=0, en;q=0.1", "en"),
    ],
)
def test_the_page_language_follows_accept_language(header: str, language: str) -> None:
    assert i18n.choose(parse_accept_header(header, LanguageAccept)) == language


def test_translations_are_never_markup() -> None:
    """A translation and a data field are text, escaped by the template; only a field the
    template built as markup (a link, ``<code>``) passes as markup."""
    plain = i18n.translate(i18n.CHINESE, "Welcome, {name}", name="<b>X</b>")
    assert plain == "欢迎您，<b>X</b>" and not isinstance(plain, Markup)
    link = Markup('<a href="/audit/entries/3">3</a>')
    mixed = i18n.translate(i18n.CHINESE, "{index} of {size}", index=link, size="<9>")
    assert isinstance(mixed, Markup)
    assert str(mixed) == '第 <a href="/audit/entries/3">3</a> 条，共 &lt;9&gt; 条'
    assert i18n.translate(i18n.ENGLISH, "{index} of {size}", index=link, size=9) == Markup(
        '<a href="/audit/entries/3">3</a> of 9'
    )
    assert i18n.translate(i18n.CHINESE, "not in the catalog {x}", x=1) == "not in the catalog 1"


# -- real pages --------------------------------------------------------------------------


def html_lang(r: requests.Response) -> str:
    found = re.search(r'<html lang="([^"]+)">', r.text)
    assert found, r.text[:200]
    return found.group(1)


def detail(r: requests.Response) -> str:
    found = re.search(r'<p class="detail">(.*?)</p>', r.text, re.S)
    assert found, r.text
    return found.group(1)


def vary(r: requests.Response) -> set[str]:
    return {v.strip().lower() for v in r.headers.get("Vary", "").split(",") if v.strip()}


def a_page(r: requests.Response, status: int, language: str, *words: str) -> None:
    """An HTML page in ``language`` with the given words and every browser header."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("text/html"), r.headers
    assert html_lang(r) == language
    assert r.headers["Content-Language"] == language
    assert "accept-language" in vary(r), r.headers
    for word in words:
        assert word in r.text, (word, r.text)
    if language == "en":  # no fixed text left in Chinese
        assert not CJK.search(r.text), r.text
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, csp
    assert "script-src" not in csp
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" in r.headers["Cache-Control"]


def get(url: str, lang: dict[str, str], **headers: str) -> requests.Response:
    return requests.get(url, headers={**lang, **headers}, allow_redirects=False, timeout=10)


def test_the_portal_and_its_sign_in_pages(world: World) -> None:  # noqa: F811
    url = world.server.url
    agent = world.agent()
    cert = {"X-SSL-Client-Cert": quote(agent.cert_pem or "")}

    # The portal, signed in by the certificate.
    r = get(url + "/portal/", ZH, **cert)
    a_page(r, 200, "zh-CN", "欢迎您，Operator W1", "退出登录", "当前使用的证书", "序列号")
    assert "您的电子口岸服务" in r.text and "电子口岸单一窗口" in r.text
    assert '<dd id="subject-class">操作员</dd>' in r.text
    assert serial_of(world.op) in r.text and "Customs Declaration" in r.text  # data as is
    assert r.headers["Referrer-Policy"] == "same-origin"
    cookie = r.cookies[COOKIE]
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    for lang in (EN, {}, {"Accept-Language": "fr"}):
        r = get(url + "/portal/", lang, **jar)
        a_page(r, 200, "en", "Welcome, Operator W1", ">Sign out<", "Certificate in use")
        assert '<dd id="subject-class">operator</dd>' in r.text

    # Sign out from a relying party: the confirmation page.
    r = get(url + "/auth/end_session?client_id=sample-a", ZH, **jar)
    a_page(r, 200, "zh-CN", "要退出电子口岸吗？", "<strong>Operator W1</strong>", "保持登录")
    r = get(url + "/auth/end_session?client_id=sample-a", EN, **jar)
    a_page(r, 200, "en", "Sign out of the e-port?", "Stay signed in")

    # A sign-out form refused: the page in Chinese, the reason as the API says it.
    zh, en = refused_sign_out(url, ZH, jar), refused_sign_out(url, EN, jar)
    a_page(zh, 403, "zh-CN", "退出登录被拒绝", "请打开门户并在门户中退出登录", "打开门户")
    a_page(en, 403, "en", "Sign-out refused", "open the portal and sign out from there")
    reason = detail(en).split(". If you signed in again")[0]
    assert reason and detail(zh).startswith(reason + "。"), (reason, detail(zh))
    # Nothing to sign out (no cookie).
    r = requests.post(url + "/portal/logout", headers=ZH, allow_redirects=False, timeout=10)
    a_page(r, 400, "zh-CN", "没有可退出的登录", "打开门户")

    # Sign-in asked by a relying party, with no certificate: its name (data) in Chinese text.
    flow = authorize(world.agent(), cert=False)
    r = get(flow.response.url, ZH)
    a_page(r, 401, "zh-CN", "请使用电子口岸证书登录", "Sample Web Service A 请求您登录")
    r = get(flow.response.url, {})
    a_page(r, 401, "en", "Sign in with your e-port certificate", "asks you to sign in")

    # The signed-out page, and the error pages of the browser's paths.
    a_page(get(url + "/portal/signed-out", ZH), 200, "zh-CN", "您已退出登录", "重新登录")
    a_page(get(url + "/portal/signed-out", EN), 200, "en", "You are signed out")
    a_page(get(url + "/portal/nope", ZH), 404, "zh-CN", "页面不存在", "门户中列出了")
    r = get(url + "/portal/logout", ZH)
    a_page(r, 405, "zh-CN", "无法打开此页面")
    assert r.headers["Allow"] == "OPTIONS, POST"
    bad = {"X-SSL-Client-Cert": "garbage"}
    zh, en = get(url + "/portal/", ZH, **bad), get(url + "/portal/", EN, **bad)
    a_page(zh, 400, "zh-CN", "此请求无效")
    a_page(en, 400, "en", "This request is not valid")
    assert detail(zh) == detail(en)  # the API's detail stays English: what logs and CLI say

    # JSON answers do not change with the language, nor say they vary with it.
    for path in ("/auth/.well-known/openid-configuration", "/auth/nope", "/auth/jwks.json"):
        zh, en = get(url + path, ZH), get(url + path, EN)
        assert zh.status_code == en.status_code, path
        assert zh.headers["Content-Type"] == en.headers["Content-Type"], path
        assert "json" in zh.headers["Content-Type"], path
        assert json.loads(zh.content) == json.loads(en.content), path
        assert "accept-language" not in vary(zh) and "Content-Language" not in zh.headers


def refused_sign_out(url: str, lang: dict[str, str], jar: dict[str, str]) -> requests.Response:
    return requests.post(
        url + "/portal/logout",
        data={"csrf_token": "wrong"},
        headers={**lang, **jar},
        allow_redirects=False,
        timeout=10,
    )


def login_url(server: Server) -> str:
    """A one-time link to the audit view, for the development auditor."""
    doc = json.loads(server.eport("audit", "web-login", *server.auditor(), "--json").stdout)
    url = doc["url"]
    assert isinstance(url, str) and url.startswith(server.url + "/audit/login?token=")
    return url


def test_the_audit_view(world: World) -> None:  # noqa: F811
    url = world.server.url
    # Anonymous: how to sign in, in Chinese; the command and the API's detail as they are.
    zh, en = get(url + "/audit/", ZH), get(url + "/audit/", EN)
    a_page(zh, 401, "zh-CN", "<h1>需要身份认证</h1>", "一次性登录链接", "eport audit web-login")
    a_page(en, 401, "en", "<h1>Authentication required</h1>", "one-time sign-in link")
    assert "sign in with `eport audit web-login` to open the audit view" in zh.text
    web = requests.Session()
    assert web.get(login_url(world.server), timeout=10).ok
    serial = serial_of(world.op)
    pages = {
        "/audit/": (
            ("当前检查点", "个条目", "每日颁发与吊销数量", "搜索事件", "只读视图"),
            ("Current checkpoint", " entries</dd>", "Issuances and revocations per day"),
        ),
        "/audit/events": (
            ("按时间从新到旧排列", "主体名称包含", "任意类型", "时间（UTC）", "统一社会信用代码"),
            ("Newest first", "subject name contains", "any type", "Time (UTC)"),
        ),
        f"/audit/certificates/{serial}": (
            (f"证书 {serial}", "包含证明", "颁发 CA", "历史记录", "eport audit prove"),
            (f"Certificate {serial}", "Inclusion proof", "Issuing CA", "History"),
        ),
        "/audit/entries/0": (
            ("日志条目 0", "条目字节", "包含证明", "ca.initialized"),
            ("Log entry 0", "Entry bytes", " of "),
        ),
    }
    for path, (chinese, english) in pages.items():
        r = web.get(url + path, headers=ZH, timeout=10)
        a_page(r, 200, "zh-CN", "检查点", "事件", "退出登录", *chinese)
        assert r.headers["Referrer-Policy"] == "no-referrer"
        r = web.get(url + path, headers=EN, timeout=10)
        a_page(r, 200, "en", "Checkpoint", "Events", "Sign out", *english)
    # Error pages: the title in Chinese, the detail as the API wrote it.
    r = web.get(url + "/audit/entries/99999999", headers=ZH, timeout=10)
    a_page(r, 404, "zh-CN", "<h1>未找到</h1>", "no entry 99999999")
    r = web.get(url + "/audit/nonexistent", headers=ZH, timeout=10)
    a_page(r, 404, "zh-CN", "<h1>未找到</h1>", "服务器上没有所请求的网址")
    r = web.get(url + "/audit/nonexistent", headers=EN, timeout=10)
    a_page(r, 404, "en", "<h1>Not found</h1>")
    css = web.get(url + "/audit/static/audit.css", headers=ZH, timeout=10)
    assert css.ok and "Content-Language" not in css.headers
    # The CLI's JSON endpoint answers problem+json, in no language.
    zh = requests.post(url + "/audit/session", headers=ZH, timeout=10)
    en = requests.post(url + "/audit/session", headers=EN, timeout=10)
    assert zh.status_code == 401 and zh.headers["Content-Type"] == "application/problem+json"
    assert zh.json() == en.json() and "Content-Language" not in zh.headers


@pytest.fixture(name="chromium")
def chromium_browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


def test_a_chinese_browser_reads_both_views(world: World, chromium: Any) -> None:  # noqa: F811
    url = world.server.url
    sent: list[str] = []
    # The portal: the browser sits where the trusted proxy would, forwarding its certificate.
    pem = (world.op / "cert.pem").read_text()
    context = chromium.new_context(
        locale="zh-CN", extra_http_headers={"X-SSL-Client-Cert": quote(pem)}
    )
    page = context.new_page()
    page.on("request", lambda req: sent.append(req.headers.get("accept-language", "")))
    assert page.goto(url + "/portal/").ok
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.locator("h1").inner_text() == "欢迎您，Operator W1"
    assert page.locator("#logout").inner_text() == "退出登录"
    assert page.locator("#subject-class").inner_text() == "操作员"
    assert page.title() == "Operator W1 · 电子口岸单一窗口"
    context.close()
    # The audit view, signed in by a one-time link.
    context = chromium.new_context(locale="zh-CN")
    page = context.new_page()
    page.on("request", lambda req: sent.append(req.headers.get("accept-language", "")))
    assert page.goto(login_url(world.server)).ok
    assert page.url == url + "/audit/"
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.locator("h1").inner_text() == "当前检查点"
    assert page.locator("#tree-size").inner_text().endswith(" 个条目")
    assert page.locator(".who button").inner_text() == "退出登录"
    assert page.title() == "检查点 · 电子口岸证书颁发日志"
    context.close()
    assert sent and all(v.startswith("zh-CN") for v in sent), sent
