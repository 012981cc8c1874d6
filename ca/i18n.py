"""The fixed texts of the pages people read in a browser, in English and Simplified Chinese.

Two web views have readers who are mostly Chinese enterprises, operators and member
agencies' staff: the token service's portal with its sign-in, sign-out and error pages
(``authsvc/templates/portal/``), and the auditors' view of the issuance log
(``ca/templates/audit/``). Their headings, labels, buttons, table headers, navigation and
the messages the views compose are shown in the language the browser asks for in
``Accept-Language`` (RFC 9110 §12.5.4), English when it asks for none of ours.

The catalog is a plain dict keyed by the English text (as gettext's msgid): a text shown
as English needs no entry, a Chinese page falls back to English for one that has none,
and ``tests/test_i18n_pages.py`` fails when a text in a template or view has no Chinese
entry. Texts may have ``{name}`` fields, filled by :func:`translate`.

What stays as it is, in every language: data (names, serials, DNs, USCCs, event types,
roles, scopes, dates), the ``detail`` of an error the API raised (the same words the CLI
prints and problem+json carries, which the support desk and the logs search for), and
every JSON body. No Flask here: each view passes Werkzeug's parsed
``request.accept_languages`` to :func:`choose`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from markupsafe import Markup, escape

ENGLISH = "en"
CHINESE = "zh-CN"
LANGUAGES = (ENGLISH, CHINESE)
"""The values of ``<html lang>`` and ``Content-Language``."""

TRADITIONAL = ("zh-tw", "zh-hk", "zh-mo", "zh-hant")
"""Chinese tags of Traditional script, which is not offered: they are passed over."""


def _offered(tag: str) -> str | None:
    """The page language a language tag (RFC 4647 basic range) asks for, or None."""
    tag = tag.strip().lower()
    if tag == "*" or tag == "en" or tag.startswith("en-"):
        return ENGLISH
    if tag == "zh" or tag.startswith("zh-"):
        if any(tag == t or tag.startswith(t + "-") for t in TRADITIONAL):
            return None
        return CHINESE  # zh, zh-CN, zh-Hans(-CN), zh-SG
    return None


def choose(accepted: Iterable[tuple[str, float]]) -> str:
    """The page's language for an ``Accept-Language`` (RFC 9110 §12.5.4) parsed as
    ``(tag, quality)`` pairs: the offered language of the highest quality, the first
    listed among equals; English when the header asks for none of ours. (Werkzeug's
    ``best_match`` prefers an exact match of any quality: ``en-US,zh-CN;q=0.9`` got
    Chinese.)"""
    ranked = sorted(
        ((q, i, tag) for i, (tag, q) in enumerate(accepted) if q > 0), key=lambda x: (-x[0], x[1])
    )
    for _q, _i, tag in ranked:
        language = _offered(tag)
        if language is not None:
            return language
    return ENGLISH


def translate(language: str, text: str, /, **fields: object) -> str:
    """``text`` (its English words, the catalog's key) in ``language``, fields filled in.

    The result is plain text, escaped when a template shows it. A field that is already
    markup (a link or ``<code>`` the template built with its own escaping) stays markup:
    then the catalog's text is escaped first and the other fields as they are filled in,
    so no translation is ever taken as HTML."""
    words = ZH_CN.get(text, text) if language == CHINESE else text
    if any(isinstance(v, Markup) for v in fields.values()):
        return escape(words).format(**fields)
    return words.format(**fields) if fields else words


@dataclass(frozen=True)
class PageTexts:
    """One page's texts: the templates call it as ``_("English text", field=value)``."""

    language: str

    def __call__(self, text: str, /, **fields: object) -> str:
        return translate(self.language, text, **fields)


def page_context(language: str) -> dict[str, object]:
    """What a page template needs: ``lang`` for ``<html lang>`` and ``_`` for its texts."""
    return {"lang": language, "_": PageTexts(language)}


# -- the catalog: English → Simplified Chinese --------------------------------------------

PORTAL: dict[str, str] = {
    # portal/base.html
    "E-Port Single Window": "电子口岸单一窗口",
    "One portal · one login · one-stop service": "一个门户 · 一次登录 · 一站式服务",
    "Sign-in is by certificates of the E-Port joint certification authority.": (
        "本站使用电子口岸联合证书认证机构颁发的数字证书登录。"
    ),
    # portal/index.html
    "Sign out": "退出登录",
    "Welcome, {name}": "欢迎您，{name}",
    "Signed in as": "登录身份",
    "Kind": "主体类别",
    "Enterprise (USCC)": "企业（统一社会信用代码）",
    "Operator id": "操作员编号",
    "Member agency": "成员机构",
    "Session": "会话",
    "since {started}, until {expires} at the latest": "自 {started} 起，最迟至 {expires}",
    "Certificate in use": "当前使用的证书",
    "Subject": "主体",
    "Issued by": "颁发者",
    "Serial": "序列号",
    "Valid": "有效期",
    "{start} to {end}": "{start} 至 {end}",
    "SHA-256 thumbprint": "SHA-256 指纹",
    "Status": "状态",
    "good (checked with the CA on every request)": "有效（每次请求均向 CA 核验）",
    "Your e-port services": "您的电子口岸服务",
    "signed in": "已登录",
    "Your enterprise has not granted you a role at any e-port service yet.": (
        "您所在的企业尚未在任何电子口岸服务中为您授予角色。"
    ),
    # portal/confirm_logout.html
    "Sign out?": "退出登录？",
    "Sign out of the e-port?": "要退出电子口岸吗？",
    "You are signed in as {name}.": "您当前的登录身份为 {name}。",
    "Signing out ends your session at every e-port service.": (
        "退出登录将结束您在所有电子口岸服务中的会话。"
    ),
    "Stay signed in": "保持登录",
    # portal/message.html
    "Sign in again": "重新登录",
    "Open the portal": "打开门户",
    # messages composed by authsvc/portal.py and authsvc/oidc_api.py
    "Sign in with your e-port certificate": "请使用电子口岸证书登录",
    "Your certificate cannot sign in": "您的证书无法登录",
    "The portal signs you in with the certificate on your smart card or key file. "
    "Present it to this site (your browser asks which one to use) and reload.": (
        "门户使用您智能卡或密钥文件中的证书为您登录。请向本站出示该证书"
        "（浏览器会询问使用哪一张），然后刷新本页。"
    ),
    "You are signed out": "您已退出登录",
    "Your e-port session has ended, and every e-port service you used in it was told.": (
        "您的电子口岸会话已结束，本次会话中使用过的每个电子口岸服务均已收到通知。"
    ),
    "Sign-out refused": "退出登录被拒绝",
    "{reason}. If you signed in again in another tab since this page was shown, "
    "open the portal and sign out from there.": (
        "{reason}。如果在此页面显示之后您又在其他标签页中重新登录过，请打开门户并在门户中退出登录。"
    ),
    "Nothing to sign out": "没有可退出的登录",
    "This browser sent no e-port sign-in with this request, so nothing was ended. "
    "If you signed out in another tab or window, you are signed out. A form sent "
    "from another site also comes without it: to be sure, open the portal; it "
    "shows whether you are signed in and signs you out.": (
        "此浏览器的这次请求未携带电子口岸登录信息，因此没有结束任何会话。"
        "如果您已在其他标签页或窗口中退出登录，则您已处于退出状态。"
        "从其他网站提交的表单同样不会携带登录信息：为确保已退出，请打开门户，"
        "门户会显示您是否仍处于登录状态，并可在那里退出登录。"
    ),
    "This sign-in request is not valid": "此登录请求无效",
    "{client} asks you to sign in. Present your e-port certificate "
    "(smart card or key file) to this site and try again.": (
        "{client} 请求您登录。请向本站出示您的电子口岸证书（智能卡或密钥文件），然后重试。"
    ),
    "This sign-out request is not valid": "此退出登录请求无效",
    "Page not found": "页面不存在",
    "There is no such page here. The portal lists the services you can use.": (
        "此处没有该页面。门户中列出了您可以使用的服务。"
    ),
    "Not a page to open": "无法打开此页面",
    "This address is not opened this way.": "此地址不能以这种方式打开。",
    "This request is not valid": "此请求无效",
}

SUBJECT_CLASSES: dict[str, str] = {
    # ca.policy.SubjectClass values, shown as the portal's "Kind" (as they are in English)
    "ca": "证书认证机构",
    "enterprise": "企业",
    "operator": "操作员",
    "agency": "成员机构工作人员",
    "auditor": "审计员",
    "service": "服务系统",
    "responder": "OCSP 响应服务",
}

AUDIT: dict[str, str] = {
    # audit/base.html
    "Audit": "审计",
    "E-Port Trust issuance log": "电子口岸证书颁发日志",
    "E-Port Trust · issuance transparency log": "电子口岸信任服务 · 证书颁发透明日志",
    "Checkpoint": "检查点",
    "Events": "事件",
    "session ends {time} UTC": "会话于 {time} UTC 结束",
    "({role}, USCC {uscc} only)": "（{role}，仅限统一社会信用代码 {uscc}）",
    "({role}, read-only)": "（{role}，只读）",
    "Read-only view. Verify independently with {verify} and {prove}.": (
        "只读视图。请使用 {verify} 和 {prove} 独立核验。"
    ),
    # audit/_events_table.html
    "Time (UTC)": "时间（UTC）",
    "Type": "类型",
    "Actor": "操作者",
    "USCC": "统一社会信用代码",
    "Profile": "证书模板",
    "No events match.": "没有符合条件的事件。",
    # audit/_proof.html
    "Inclusion proof (RFC 9162 §2.1.3)": "包含证明（RFC 9162 §2.1.3）",
    "Log entry": "日志条目",
    "{index} of {size}": "第 {index} 条，共 {size} 条",
    "Leaf hash": "叶哈希",
    "Checkpoint root": "检查点根哈希",
    "Audit path, deepest node first. Check it yourself, against a checkpoint "
    "verified with the log's key: {prove}.": (
        "审计路径，最深的节点在前。请自行核验，所用检查点须先以日志公钥验证：{prove}。"
    ),
    "Audit path, deepest node first. Check it yourself, against a checkpoint "
    "verified with the log's key: {prove} (certificates) or {verify}.": (
        "审计路径，最深的节点在前。请自行核验，所用检查点须先以日志公钥验证："
        "{prove}（证书）或 {verify}。"
    ),
    # audit/certificate.html
    "Certificate {serial}": "证书 {serial}",
    "Issuing CA": "颁发 CA",
    "SHA-256 (DER)": "SHA-256（DER）",
    "Logged entry (v1)": "日志中的条目（v1）",
    "The logged SHA-256 differs from the certificate on record.": (
        "日志中记录的 SHA-256 与存档证书的不一致。"
    ),
    "No issuance of this certificate is in the log's current checkpoint.": (
        "日志的当前检查点中没有该证书的颁发记录。"
    ),
    "History": "历史记录",
    # audit/entry.html
    "Entry {index}": "条目 {index}",
    "Log entry {index}": "日志条目 {index}",
    "Entry bytes (v1, canonical JSON)": "条目字节（v1，规范化 JSON）",
    # audit/events.html and the search form of audit/index.html
    "subject name contains": "主体名称包含",
    "subject name": "主体名称",
    "serial (hex)": "序列号（十六进制）",
    "serial": "序列号",
    "event type": "事件类型",
    "any type": "任意类型",
    "since (YYYY-MM-DD)": "起始日期（YYYY-MM-DD）",
    "since": "起始日期",
    "until (YYYY-MM-DD)": "截止日期（YYYY-MM-DD）",
    "until": "截止日期",
    "Search": "搜索",
    "Newest first, {count} shown.": "按时间从新到旧排列，显示 {count} 条。",
    "← Newest": "← 最新",
    "Older →": "更早 →",
    # audit/index.html
    "Current checkpoint": "当前检查点",
    "Log": "日志",
    "Tree size": "树大小",
    "{size} entries": "{size} 个条目",
    "Root hash": "根哈希",
    "Verifier key": "验证公钥",
    "Signed note (C2SP tlog-checkpoint)": "签名注记（C2SP tlog-checkpoint）",
    "Issuances and revocations per day": "每日颁发与吊销数量",
    "{first} to {last} (UTC): {issued} issued, {revoked} revoked.": (
        "{first} 至 {last}（UTC）：颁发 {issued} 张，吊销 {revoked} 张。"
    ),
    "{day}: {n} issued": "{day}：颁发 {n} 张",
    "{day}: {n} revoked": "{day}：吊销 {n} 张",
    "issued": "颁发",
    "revoked": "吊销",
    "Search events": "搜索事件",
    "Latest events": "最新事件",
    "All events →": "全部事件 →",
    "(none named here: {reason})": "（此处未给出：{reason}）",
    # audit/message.html
    "To open this view, ask for a one-time sign-in link with your auditor's "
    "(or RA officer's, or enterprise's) certificate:": (
        "如需打开此视图，请使用您的审计员（或 RA 审核员、企业）证书申请一次性登录链接："
    ),
    "and open the link it prints within 60 seconds. The session lasts 30 minutes.": (
        "并在 60 秒内打开它输出的链接。会话有效期为 30 分钟。"
    ),
}

ERROR_TITLES: dict[str, str] = {
    # the titles of ca.errors' and ca.translog's errors, which head the audit view's
    # error pages (their details stay as the API wrote them)
    "Internal error": "内部错误",
    "Bad request": "请求有误",
    "Invalid Unified Social Credit Code": "统一社会信用代码无效",
    "Unacceptable certificate signing request": "证书签名请求不可接受",
    "Key not allowed by the profile": "证书模板不允许使用此密钥",
    "Unknown certificate profile": "未知的证书模板",
    "Authentication required": "需要身份认证",
    "Signed request replayed": "签名请求被重放",
    "Not allowed": "不允许访问",
    "Profile not allowed for this enrollment code": "此注册码不允许使用该证书模板",
    "Not found": "未找到",
    "Conflict with the current state": "与当前状态冲突",
    "Invalid enrollment code": "注册码无效",
    "Request body too large": "请求体过大",
    "Not implemented": "尚未实现",
    "Unsupported media type": "不支持的媒体类型",
    "Certificate failed pre-issuance linting": "证书未通过颁发前检查",
    "Invalid policy file": "策略文件无效",
    "The CA is sealed": "CA 处于封存状态",
    "A CA key is missing": "缺少 CA 密钥",
    "The issuing CA is revoked": "颁发 CA 已被吊销",
    "The issuing CA has expired": "颁发 CA 已过期",
    "The issuing CA is not on this host": "颁发 CA 不在本主机上",
    "The database was upgraded by another release": "数据库已被其他版本升级",
    "Insufficient storage": "存储空间不足",
    "The database is damaged": "数据库已损坏",
    "Database unavailable": "数据库不可用",
    "The access token could not be checked": "无法核验访问令牌",
    "Refused to sign two roots for one tree size": "拒绝为同一树大小签署两个根",
    "This host's log key was rotated elsewhere": "本主机的日志密钥已在别处轮换",
    "The stored transparency log is inconsistent": "已存储的透明日志不一致",
}

HTTP_ERRORS: dict[str, str] = {
    # Werkzeug's names (in sentence case, as ca.auditweb shows them) and own descriptions
    # of the HTTP errors it answers itself on the audit view's paths
    "Method not allowed": "不允许使用此请求方法",
    "The requested URL was not found on the server. If you entered the URL manually "
    "please check your spelling and try again.": (
        "服务器上没有所请求的网址。如果网址是您手动输入的，请检查拼写后重试。"
    ),
    "The method is not allowed for the requested URL.": "所请求的网址不允许使用此请求方法。",
}

ZH_CN: dict[str, str] = {**PORTAL, **SUBJECT_CLASSES, **AUDIT, **ERROR_TITLES, **HTTP_ERRORS}
"""Every page text in Simplified Chinese, keyed by its English."""
