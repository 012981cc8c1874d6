"""Access policy as data: the registered e-port services and who gets which scopes where.

Two TOML files in ``policies/``, validated at load:

- ``services.toml``: the relying parties, each one audience (RFC 9068 §3 ``aud``), the
  scopes it defines (RFC 6749 §3.3 scope tokens, written ``resource:action``), the DNS
  name of its service-tls certificate (how it authenticates for RFC 7662 introspection
  and RFC 8693 token exchange), and the services it may exchange a user's token for.
- ``access.toml``: the roles an enterprise may grant its operators, and the rules that
  grant scopes at a service to a subject class.

Every error names the file and the line: ``tomllib`` keeps no positions, so
:class:`_Layout` re-reads the (already valid) text to find where each table, key and
array item starts. The key in :class:`~ca.errors.PolicyError` reads
``line 12: rule[3].scopes[1]`` (indexes count from 0, as in ``ca.policy``).
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ca.errors import BadRequest, NotFound, PolicyError
from ca.policy import SubjectClass, load_members, load_policies

RULE_CLASSES = (
    SubjectClass.ENTERPRISE,
    SubjectClass.OPERATOR,
    SubjectClass.AGENCY,
    SubjectClass.AUDITOR,
    SubjectClass.SERVICE,
)
"""The subject classes a rule may name; CAs and OCSP responders never log in."""

_ID_RE = re.compile(r"[a-z][a-z0-9-]{1,31}")
_SCOPE_RE = re.compile(r"[a-z][a-z0-9-]*:[a-z][a-z0-9-]*")
ID_TOKEN_ALGS = ("RS256", "ES256")
"""The ID token signing algorithms a web client may register (the token service holds a
key family for each, authsvc.keys)."""
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]"})


class UnknownService(NotFound):
    """A service id that ``policies/services.toml`` does not register.

    At the token endpoint this is RFC 8707 §2 / RFC 8693 §2.2.2 ``invalid_target``.
    """

    slug = "unknown-service"
    title = "Unknown e-port service"
    error: ClassVar[str] = "invalid_target"


class UnknownRole(BadRequest):
    """An operator role that ``policies/access.toml`` does not define."""

    slug = "unknown-role"
    title = "Unknown operator role"


@dataclass(frozen=True)
class Service:
    """A registered e-port service: one relying party, one token audience."""

    id: str
    """Stable id, e.g. ``customs-declaration``; what ``eport token --service`` names."""
    name: str
    """Human name, shown by the portal."""
    audience: str
    """The ``aud`` of its access tokens (RFC 9068 §3): an https URL, compared as a string."""
    scopes: tuple[str, ...]
    """The scopes it defines, in file order."""
    identity: str
    """The DNS name in its service-tls certificate; authenticates introspection and exchange."""
    may_introspect: bool = True
    """Whether it may call the introspection endpoint (RFC 7662 §2.1)."""
    exchange_to: tuple[str, ...] = ()
    """Services it may obtain tokens for on a user's behalf (RFC 8693 delegation)."""
    url: str | None = None
    """Its home page, for the portal."""
    redirect_uris: tuple[str, ...] = ()
    """OIDC web client redirect URIs (RFC 6749 §3.1.2), matched exactly."""
    backchannel_logout_uri: str | None = None
    """OpenID Connect Back-Channel Logout 1.0 endpoint."""
    agency: str | None = None
    """The member agency that operates it (``members.toml`` id): its service-tls
    certificate counts only if that agency vetted it (the certificate's O is the
    member's name). Unset, any member's service certificate for its identity counts:
    any member's RA officer could then make one (authorization probe, F1)."""
    post_logout_redirect_uris: tuple[str, ...] = ()
    """Where RP-initiated logout may send the browser back (OpenID Connect RP-Initiated
    Logout 1.0 §3), matched exactly; the end-session endpoint redirects nowhere else."""
    require_certificate: bool = False
    """Whether the gateway (``/auth/validate``) takes its tokens only with the client
    certificate they are bound to (``cnf``, RFC 8705 §3): a token sent without any client
    certificate is refused as a stolen one would be. Unset, such a token is checked as a
    bearer token (a browser or client that presents no certificate to the service)."""
    id_token_signed_response_alg: str = "ES256"
    """How a web client's ID tokens (and its back-channel logout tokens, Back-Channel
    Logout 1.0 §2.4) are signed: ``RS256`` or ``ES256`` (OpenID Connect Dynamic Client
    Registration 1.0 §2). Left out it is ES256, not Core §3.1.3.7's RS256: the clients
    registered before RS256 existed verify ES256 and keep getting it."""


@dataclass(frozen=True)
class Role:
    """A role an enterprise's legal person may grant to its operators."""

    id: str
    description: str


@dataclass(frozen=True)
class Rule:
    """Grants ``scopes`` at ``service`` to one subject class, under conditions."""

    service: str
    """The service id."""
    subject_class: SubjectClass
    scopes: tuple[str, ...]
    roles: frozenset[str] = frozenset()
    """Operator rules: the operator must hold ALL of these roles; empty: every operator."""
    agencies: frozenset[str] = frozenset()
    """Agency and auditor rules: the member agencies it applies to; empty: every member
    (auditor rules only; an agency rule always names its agencies)."""
    authorization: str | None = None
    """The competent department's authorization that opens this data; required for agencies."""
    line: int = 0
    """Where the rule's ``[[rule]]`` header is in ``access.toml``, for audit records."""

    def applies(self, roles: frozenset[str], agency_id: str | None) -> bool:
        """Whether a subject of this rule's class with these roles/agency gets its scopes."""
        if not self.roles <= roles:
            return False
        return not self.agencies or agency_id in self.agencies


def _subject_class(value: str | SubjectClass) -> SubjectClass:
    if isinstance(value, SubjectClass):
        return value
    try:
        return SubjectClass(value)
    except ValueError:
        known = ", ".join(c.value for c in SubjectClass)
        raise ValueError(f"unknown subject class {value!r} (known: {known})") from None


@dataclass(frozen=True)
class AccessPolicy:
    """Everything in ``services.toml`` and ``access.toml``, validated; the token service's
    only source of who may have which scope at which audience."""

    services: tuple[Service, ...]
    roles: tuple[Role, ...]
    rules: tuple[Rule, ...]
    _by_id: Mapping[str, Service] = field(init=False, repr=False, compare=False)
    _by_audience: Mapping[str, Service] = field(init=False, repr=False, compare=False)
    _by_identity: Mapping[str, Service] = field(init=False, repr=False, compare=False)
    _rules_at: Mapping[tuple[SubjectClass, str], tuple[Rule, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_id = {s.id: s for s in self.services}
        rules_at: dict[tuple[SubjectClass, str], list[Rule]] = {}
        for rule in self.rules:
            if rule.service not in by_id:
                raise ValueError(f"rule for unknown service {rule.service!r}")
            rules_at.setdefault((rule.subject_class, rule.service), []).append(rule)
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_by_audience", {s.audience: s for s in self.services})
        object.__setattr__(self, "_by_identity", {s.identity: s for s in self.services})
        object.__setattr__(self, "_rules_at", {k: tuple(v) for k, v in rules_at.items()})

    def service(self, service_id: str) -> Service:
        """The registered service; :class:`UnknownService` if there is none."""
        try:
            return self._by_id[service_id]
        except KeyError:
            known = ", ".join(sorted(self._by_id))
            raise UnknownService(f"unknown service {service_id[:60]!r} (known: {known})") from None

    def service_by_audience(self, audience: str) -> Service | None:
        """The service whose tokens carry this ``aud`` (exact string match, RFC 7519 §4.1.3)."""
        return self._by_audience.get(audience)

    def service_by_identity(self, dns_name: str) -> Service | None:
        """The service whose service-tls certificate names ``dns_name``."""
        return self._by_identity.get(dns_name.lower())

    def role(self, role_id: str) -> Role:
        """The operator role; :class:`UnknownRole` if there is none."""
        for r in self.roles:
            if r.id == role_id:
                return r
        known = ", ".join(r.id for r in self.roles)
        raise UnknownRole(f"unknown operator role {role_id!r} (known: {known})")

    def _rules(
        self,
        subject_class: str | SubjectClass,
        service_id: str,
        roles: frozenset[str],
        agency_id: str | None,
    ) -> list[Rule]:
        cls = _subject_class(subject_class)
        self.service(service_id)
        return [r for r in self._rules_at.get((cls, service_id), ()) if r.applies(roles, agency_id)]

    def scopes_for(
        self,
        subject_class: str | SubjectClass,
        *,
        service_id: str,
        roles: frozenset[str] = frozenset(),
        agency_id: str | None = None,
    ) -> tuple[str, ...]:
        """The scopes a subject gets at a service, sorted and de-duplicated; empty: no access.

        ``roles`` are the operator's roles its enterprise granted; ``agency_id`` the member
        agency of an agency officer or auditor. Raises :class:`UnknownService`.
        """
        scopes: set[str] = set()
        for rule in self._rules(subject_class, service_id, roles, agency_id):
            scopes.update(rule.scopes)
        return tuple(sorted(scopes))

    def services_for(
        self,
        subject_class: str | SubjectClass,
        roles: frozenset[str] = frozenset(),
        agency_id: str | None = None,
    ) -> list[Service]:
        """The services where the subject has some scope, in file order (the portal's list)."""
        return [
            s
            for s in self.services
            if self.scopes_for(subject_class, service_id=s.id, roles=roles, agency_id=agency_id)
        ]

    def may_exchange(self, from_service_id: str, to_service_id: str) -> bool:
        """Whether ``from`` may exchange a user's token for one at ``to`` (RFC 8693)."""
        source = self._by_id.get(from_service_id)
        return source is not None and to_service_id in source.exchange_to

    def authorization_for(
        self,
        subject_class: str | SubjectClass,
        *,
        service_id: str,
        roles: frozenset[str] = frozenset(),
        agency_id: str | None = None,
        scopes: Iterable[str] | None = None,
    ) -> tuple[str, ...]:
        """The authorization references of the rules that grant this subject access at the
        service (only those granting one of ``scopes``, if given), sorted; what a token's
        audit record cites when an agency reads enterprise data."""
        wanted = None if scopes is None else set(scopes)
        refs = {
            r.authorization
            for r in self._rules(subject_class, service_id, roles, agency_id)
            if r.authorization is not None and (wanted is None or wanted & set(r.scopes))
        }
        return tuple(sorted(refs))


# --- where things are in a TOML text ------------------------------------------------------

_Where = tuple[str | None, int | None, str]
"""(array-of-tables name or table name or None for the root, index or None, key)."""


def _dotted(text: str) -> list[str]:
    """The segments of a TOML dotted key or table name, quotes removed (input is valid)."""
    parts: list[str] = []
    current = ""
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                current += text[i : i + 2]
                i += 2
                continue
            if c == quote:
                quote = ""
            else:
                current += c
        elif c in "\"'":
            quote = c
        elif c == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += c
        i += 1
    parts.append(current.strip())
    return parts


class _Layout:
    """Where tables, keys and array items start in a valid TOML text (1-based lines).

    ``tomllib`` has already accepted the text, so this scanner only tracks what can hide a
    ``[`` or ``=``: strings (all four kinds), comments, arrays and inline tables.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.headers: dict[str, list[int]] = {}
        """Array-of-tables name -> the line of each ``[[name]]`` header."""
        self.keys: dict[_Where, int] = {}
        self.items: dict[_Where, list[int]] = {}
        """A key whose value is an array -> the line where each element starts."""
        # A construct this scanner misreads may cost an error its line, never the load.
        with contextlib.suppress(IndexError):
            self._scan()

    def _advance(self, n: int) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def _blank(self, newlines: bool) -> None:
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t\r" or (newlines and c == "\n"):
                self._advance(1)
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _string_end(self, i: int) -> int:
        """The index just past the string that starts at ``i``."""
        text = self.text
        q = text[i]
        if text.startswith(q * 3, i):
            j = i + 3
            while not text.startswith(q * 3, j):
                j += 2 if (q == '"' and text[j] == "\\") else 1
            j += 3
            while j < len(text) and text[j] == q:  # up to two quotes may close the content
                j += 1
            return j
        j = i + 1
        while text[j] != q:
            j += 2 if (q == '"' and text[j] == "\\") else 1
        return j + 1

    def _find(self, stop: str) -> int:
        """The index of the next ``stop`` character outside quotes, from ``self.pos``."""
        i = self.pos
        while self.text[i] != stop:
            i = self._string_end(i) if self.text[i] in "\"'" else i + 1
        return i

    def _value(self, items: list[int] | None) -> None:
        text = self.text
        c = text[self.pos]
        if c in "[{":
            close = "]" if c == "[" else "}"
            self._advance(1)
            while True:
                self._blank(newlines=True)
                c = text[self.pos]
                if c == close:
                    self._advance(1)
                    return
                if c == ",":
                    self._advance(1)
                elif close == "]":
                    if items is not None:
                        items.append(self.line)
                    self._value(None)
                else:
                    self.pos = self._find("=") + 1
                    self._blank(newlines=False)
                    self._value(None)
        elif c in "\"'":
            self._advance(self._string_end(self.pos) - self.pos)
        else:
            while self.pos < len(text) and text[self.pos] not in ",]}\n#":
                self.pos += 1

    def _scan(self) -> None:
        table: str | None = None
        index: int | None = None
        while True:
            self._blank(newlines=True)
            if self.pos >= len(self.text):
                return
            line = self.line
            if self.text[self.pos] == "[":
                is_array = self.text.startswith("[[", self.pos)
                self.pos += 2 if is_array else 1
                end = self._find("]")
                name = _dotted(self.text[self.pos : end])
                self.pos = end + (2 if is_array else 1)
                head = name[0]
                if len(name) == 1 and is_array:
                    lines = self.headers.setdefault(head, [])
                    lines.append(line)
                    table, index = head, len(lines) - 1
                    continue
                if len(name) == 1:
                    self.keys.setdefault((None, None, head), line)
                    table, index = head, None
                    continue
                # A sub-table of a table: report it as the parent's key; its own keys are
                # not tracked (no policy file has sub-tables, so any is an unknown key).
                parent = len(self.headers[head]) - 1 if head in self.headers else None
                self.keys.setdefault((head, parent, name[1]), line)
                table, index = ".".join(name), None
                continue
            eq = self._find("=")
            where: _Where = (table, index, _dotted(self.text[self.pos : eq])[0])
            self.keys.setdefault(where, line)
            self.pos = eq + 1
            self._blank(newlines=False)
            items: list[int] = []
            self._value(items)
            self.items.setdefault(where, items)


# --- reading policy files -----------------------------------------------------------------


class _Source:
    """One policy file: its parsed data and where everything in it is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise PolicyError(str(path), "-", "file not found") from None
        except IsADirectoryError:
            raise PolicyError(str(path), "-", "is a directory, not a TOML file") from None
        except UnicodeDecodeError as exc:
            raise PolicyError(str(path), "-", f"not UTF-8: {exc}") from None
        try:
            self.data: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"at line (\d+)", str(exc))
            key = f"line {m.group(1)}" if m else "-"
            raise PolicyError(str(path), key, f"not valid TOML: {exc}") from exc
        self.layout = _Layout(text)

    def line(self, table: str | None, index: int | None, key: str | None, item: int | None) -> int:
        """The line of the item, else of the key, else of the table's header, else 1."""
        layout = self.layout
        if key is not None:
            where: _Where = (table, index, key)
            items = layout.items.get(where, [])
            if item is not None and item < len(items):
                return items[item]
            if where in layout.keys:
                return layout.keys[where]
            if table is None and key in layout.headers:  # an unexpected [[key]] array
                return layout.headers[key][0]
        if table is not None and index is not None:
            headers = layout.headers.get(table, [])
            if index < len(headers):
                return headers[index]
        if table is not None and (None, None, table) in layout.keys:
            return layout.keys[(None, None, table)]
        return 1

    def fail(
        self,
        table: str | None,
        index: int | None,
        key: str | None,
        message: str,
        item: int | None = None,
    ) -> PolicyError:
        label = ""
        if table is not None:
            label = table if index is None else f"{table}[{index}]"
        if key is not None:
            label = f"{label}.{key}" if label else key
        if item is not None:
            label += f"[{item}]"
        where = f"line {self.line(table, index, key, item)}: {label or '-'}"
        return PolicyError(str(self.path), where, message)

    def tables(self, name: str) -> list[_Table]:
        """The ``[[name]]`` tables of the file, as readers."""
        if name not in self.data:
            return []
        raw = self.data[name]
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            raise self.fail(None, None, name, f"expected [[{name}]] tables")
        return [_Table(self, t, name, i) for i, t in enumerate(raw)]

    def no_extra(self, *allowed: str) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.fail(None, None, key, f"unknown key (expected {', '.join(allowed)})")


class _Table:
    """Typed reads from one ``[[table]]``; errors carry the file, line and key."""

    def __init__(self, source: _Source, data: Mapping[str, Any], name: str, index: int) -> None:
        self.source = source
        self.data = data
        self.name = name
        self.index = index
        self.used: set[str] = set()

    @property
    def line(self) -> int:
        return self.source.line(self.name, self.index, None, None)

    def fail(self, key: str | None, message: str, item: int | None = None) -> PolicyError:
        """An error at ``key`` (its ``item``); a missing key points at the table's header."""
        return self.source.fail(self.name, self.index, key, message, item)

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, typ: type, default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "required key is missing")
            return default
        value = self.data[key]
        if not isinstance(value, typ):
            raise self.fail(key, f"expected {typ.__name__}, got {type(value).__name__}")
        if isinstance(value, str) and not value.strip():
            raise self.fail(key, "must not be empty")
        return value

    def strings(self, key: str, default: Any = ...) -> list[str]:
        value = self.get(key, list, default)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(key, "expected a string", item=i)
        return list(value)

    def unique_strings(self, key: str, default: Any = ...) -> list[str]:
        values = self.strings(key, default)
        for i, v in enumerate(values):
            if v in values[:i]:
                raise self.fail(key, f"{v!r} is listed twice", item=i)
        return values

    def no_extra(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.fail(key, "unknown key")


def _check_host(host: str) -> bool:
    """A lower-case DNS name of LDH labels (RFC 1123 §2.1), at most 253 characters."""
    return len(host) <= 253 and all(_DNS_LABEL_RE.fullmatch(lab) for lab in host.split("."))


def _url_problem(value: str, *, audience: bool = False) -> str | None:
    """Why ``value`` is not an acceptable URL here, or None.

    https only, except http to a loopback host for local clients (RFC 8252 §7.3); never
    user info or a fragment (RFC 6749 §3.1.2). An audience is also an identifier compared
    as a string (RFC 7519 §4.1.3), so it has one spelling: no query, no trailing slash.
    """
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        return f"{value!r} is not a URL: {exc}"
    if "@" in parts.netloc:
        return f"{value!r} must not carry user info"
    host = re.sub(r":[0-9]*$", "", parts.netloc)
    loopback = host in _LOOPBACK
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback and not audience):
        return f"{value!r} must be an https URL"
    if not loopback and not (host and _check_host(host)):
        return f"{value!r} must name its host as a lower-case DNS name"
    if parts.fragment or "#" in value:
        return f"{value!r} must not have a fragment"
    if audience and ("?" in value or value.endswith("/")):
        return f"audience {value!r} must have no query and no trailing slash"
    return None


def _check_id(t: _Table, key: str, seen: Mapping[str, object], kind: str) -> str:
    value: str = t.get(key, str)
    if not _ID_RE.fullmatch(value):
        raise t.fail(key, f"{kind} ids are 2-32 lower-case letters, digits and '-'")
    if value in seen:
        raise t.fail(key, f"duplicate {kind} id {value!r}")
    return value


def _url(t: _Table, key: str, *, audience: bool = False, item: int | None = None) -> None:
    value = t.data[key] if item is None else t.data[key][item]
    problem = _url_problem(value, audience=audience)
    if problem:
        raise t.fail(key, problem, item=item)


def load_services(path: Path) -> tuple[Service, ...]:
    """Load and validate ``services.toml``."""
    src = _Source(path)
    src.no_extra("service")
    services: dict[str, Service] = {}
    audiences: dict[str, str] = {}
    identities: dict[str, str] = {}
    exchanges: list[tuple[_Table, list[str]]] = []
    for t in src.tables("service"):
        sid = _check_id(t, "id", services, "service")
        name = t.get("name", str)
        audience = t.get("audience", str)
        _url(t, "audience", audience=True)
        if audience in audiences:
            raise t.fail("audience", f"audience already used by service {audiences[audience]!r}")
        url = t.get("url", str, None)
        if url is not None:
            _url(t, "url")
        scopes = t.unique_strings("scopes")
        for i, scope in enumerate(scopes):
            if not _SCOPE_RE.fullmatch(scope):
                raise t.fail(
                    "scopes", f"scope {scope!r} is not 'resource:action' (lower case)", item=i
                )
        if not scopes:
            raise t.fail("scopes", "a service defines at least one scope")
        identity = t.get("identity", str)
        if not _check_host(identity):
            raise t.fail("identity", f"{identity!r} is not a lower-case DNS name")
        if identity in identities:
            raise t.fail("identity", f"identity already used by service {identities[identity]!r}")
        exchange_to = t.unique_strings("exchange_to", [])
        redirect_uris = t.unique_strings("redirect_uris", [])
        for i in range(len(redirect_uris)):
            _url(t, "redirect_uris", item=i)
        logout = t.get("backchannel_logout_uri", str, None)
        if logout is not None:
            _url(t, "backchannel_logout_uri")
        post_logout = t.unique_strings("post_logout_redirect_uris", [])
        for i in range(len(post_logout)):
            _url(t, "post_logout_redirect_uris", item=i)
        id_token_alg = t.get("id_token_signed_response_alg", str, "ES256")
        if id_token_alg not in ID_TOKEN_ALGS:
            raise t.fail(
                "id_token_signed_response_alg",
                f"{id_token_alg!r} is not one of {', '.join(ID_TOKEN_ALGS)}",
            )
        if t.has("id_token_signed_response_alg") and not redirect_uris:
            raise t.fail(
                "id_token_signed_response_alg",
                "only a web client (one with redirect_uris) gets ID tokens",
            )
        services[sid] = Service(
            id=sid,
            name=name,
            audience=audience,
            scopes=tuple(scopes),
            identity=identity,
            may_introspect=t.get("may_introspect", bool, True),
            exchange_to=tuple(exchange_to),
            url=url,
            redirect_uris=tuple(redirect_uris),
            backchannel_logout_uri=logout,
            post_logout_redirect_uris=tuple(post_logout),
            id_token_signed_response_alg=id_token_alg,
            agency=t.get("agency", str, None),
            require_certificate=t.get("require_certificate", bool, False),
        )
        audiences[audience] = sid
        identities[identity] = sid
        exchanges.append((t, exchange_to))
        t.no_extra()
    if not services:
        raise src.fail(None, None, "service", "at least one [[service]] is required")
    # exchange_to may name a service defined further down, so check it once all are read.
    for t, targets in exchanges:
        for i, target in enumerate(targets):
            if target not in services:
                known = ", ".join(services)
                raise t.fail("exchange_to", f"unknown service {target!r} (known: {known})", i)
            if target == t.data["id"]:
                raise t.fail("exchange_to", "a service does not exchange tokens for itself", i)
    return tuple(services.values())


def load_access(
    path: Path, services: Iterable[Service], member_ids: Iterable[str]
) -> tuple[tuple[Role, ...], tuple[Rule, ...]]:
    """Load and validate ``access.toml`` against the services and member agencies."""
    by_id = {s.id: s for s in services}
    members = set(member_ids)
    src = _Source(path)
    src.no_extra("role", "rule")
    roles: dict[str, Role] = {}
    for t in src.tables("role"):
        rid = _check_id(t, "id", roles, "role")
        roles[rid] = Role(id=rid, description=t.get("description", str))
        t.no_extra()
    rules: list[Rule] = []
    for t in src.tables("rule"):
        sid = t.get("service", str)
        service = by_id.get(sid)
        if service is None:
            raise t.fail("service", f"unknown service {sid!r} (known: {', '.join(by_id)})")
        class_name = t.get("subject_class", str)
        cls = next((c for c in RULE_CLASSES if c.value == class_name), None)
        if cls is None:
            known = ", ".join(c.value for c in RULE_CLASSES)
            raise t.fail("subject_class", f"unknown subject class {class_name!r} (known: {known})")
        scopes = t.unique_strings("scopes")
        for i, scope in enumerate(scopes):
            if scope not in service.scopes:
                raise t.fail(
                    "scopes",
                    f"service {sid!r} does not define scope {scope!r} "
                    f"(it defines: {', '.join(service.scopes)})",
                    item=i,
                )
        if not scopes:
            raise t.fail("scopes", "a rule grants at least one scope")
        rule_roles = t.unique_strings("roles", [])
        if t.has("roles"):
            if cls is not SubjectClass.OPERATOR:
                raise t.fail("roles", "only operator rules name roles")
            if not rule_roles:
                raise t.fail("roles", "omit roles (rather than list none) for every operator")
        for i, role in enumerate(rule_roles):
            if role not in roles:
                raise t.fail("roles", f"unknown role {role!r} (known: {', '.join(roles)})", item=i)
        agencies = t.unique_strings("agencies", [])
        if t.has("agencies"):
            if cls not in (SubjectClass.AGENCY, SubjectClass.AUDITOR):
                raise t.fail("agencies", "only agency and auditor rules name agencies")
            if not agencies:
                raise t.fail("agencies", "omit agencies (rather than list none) for every member")
        elif cls is SubjectClass.AGENCY:
            raise t.fail("agencies", "an agency rule names the member agencies it authorizes")
        for i, agency in enumerate(agencies):
            if agency not in members:
                known = ", ".join(sorted(members))
                raise t.fail(
                    "agencies", f"unknown member agency {agency!r} (known: {known})", item=i
                )
        authorization = t.get("authorization", str, None)
        if cls is SubjectClass.AGENCY and authorization is None:
            raise t.fail(
                "authorization",
                "an agency reads enterprise data only under the competent department's "
                "authorization: name it",
            )
        t.get("description", str, None)
        t.no_extra()
        rules.append(
            Rule(
                service=sid,
                subject_class=cls,
                scopes=tuple(scopes),
                roles=frozenset(rule_roles),
                agencies=frozenset(agencies),
                authorization=authorization,
                line=t.line,
            )
        )
    return tuple(roles.values()), tuple(rules)


def load_access_policy(directory: Path, member_ids: set[str] | None = None) -> AccessPolicy:
    """Load and validate ``services.toml`` and ``access.toml`` under ``directory``.

    ``member_ids`` are the member agencies rules may name; by default those of
    ``members.toml`` in the same directory.

    With ``member_ids`` (the CA's members: ``eport serve``'s start check, and each
    worker), the directory's own ``members.toml`` and ``profiles/`` are loaded and
    checked too, as the token service loads them (:func:`ca.policy.load_policies`), and a
    rule may name only an agency of both: a bad profile or members file under
    ``EPORT_AUTH_POLICIES_DIR`` was found only by every worker, after "Serving".
    """
    directory = Path(directory)
    if member_ids is None:
        member_ids = {m.id for m in load_members(directory / "members.toml").members}
    else:
        own = {m.id for m in load_policies(directory).members.members}
        member_ids = set(member_ids) & own
    services = load_services(directory / "services.toml")
    for s in services:
        if s.agency is not None and s.agency not in member_ids:
            known = ", ".join(sorted(member_ids))
            raise PolicyError(
                str(directory / "services.toml"),
                f"service {s.id!r}: agency",
                f"unknown member agency {s.agency!r} (known: {known})",
            )
    roles, rules = load_access(directory / "access.toml", services, member_ids)
    return AccessPolicy(services=services, roles=roles, rules=rules)
