"""Access policy as data (authsvc/policy.py): the repository's services and access rules
load and answer who gets which scopes where; every bad file is refused at load with an
error naming the file and the exact line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from authsvc.policy import (
    AccessPolicy,
    Rule,
    UnknownRole,
    UnknownService,
    load_access_policy,
)
from ca.errors import PolicyError
from ca.policy import SubjectClass

REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"
MEMBERS = {"customs", "commerce", "tax", "forex", "inspection"}
EPORT_SERVICES = [
    "portal",
    "customs-declaration",
    "manifest",
    "tax-refund",
    "forex-verification",
    "inspection-booking",
    "sample-a",
    "sample-b",
    "audit",
]


@pytest.fixture(scope="module")
def policy() -> AccessPolicy:
    return load_access_policy(REPO_POLICIES)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A private copy of the repository's policies, for a test to change."""
    d = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, d)
    return d


def append(path: Path, block: str) -> int:
    """Append ``block`` after a blank line; return the line its first line lands on."""
    text = path.read_text()
    assert text.endswith("\n")
    path.write_text(text + "\n" + block)
    return text.count("\n") + 2


def replace(path: Path, old: str, new: str) -> int:
    """Replace the only occurrence of ``old``; return the line where it starts."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not unique in {path.name}"
    path.write_text(text.replace(old, new))
    return text[: text.index(old)].count("\n") + 1


def refused(directory: Path, path: Path, key: str, message: str = "", **kw: object) -> None:
    """Loading ``directory`` fails with an error naming ``path``, ``key`` (line and label)."""
    with pytest.raises(PolicyError) as info:
        load_access_policy(directory, **kw)  # type: ignore[arg-type]
    err = info.value
    assert (err.path, err.key) == (str(path), key), str(err)
    assert str(err).startswith(f"{path}: {key}: ")
    assert message in str(err)


# --- the repository's policies ----------------------------------------------------------


def test_repository_policies_load(policy: AccessPolicy) -> None:
    assert [s.id for s in policy.services] == EPORT_SERVICES
    assert {r.id for r in policy.roles} == {
        "data-entry",
        "declaration",
        "manifest",
        "inspection",
        "finance",
    }
    for rule in policy.rules:
        assert set(rule.scopes) <= set(policy.service(rule.service).scopes)
        assert rule.agencies <= MEMBERS
        if rule.subject_class is SubjectClass.AGENCY:
            assert rule.authorization and rule.agencies


def test_load_accepts_explicit_member_ids_and_a_string_directory() -> None:
    p = load_access_policy(str(REPO_POLICIES), MEMBERS)  # type: ignore[arg-type]
    assert len(p.services) == len(EPORT_SERVICES)


def test_service_lookups(policy: AccessPolicy) -> None:
    s = policy.service("customs-declaration")
    assert s.name == "Customs Declaration"
    assert s.audience == "https://customs-declaration.eport.example"
    assert s.identity == "customs-declaration.eport.example"
    assert s.scopes == (
        "declaration:read",
        "declaration:draft",
        "declaration:submit",
        "declaration:withdraw",
    )
    assert s.may_introspect
    assert s.exchange_to == ("manifest",)
    assert policy.service("audit").scopes == ("audit:read",)
    assert policy.service_by_audience("https://manifest.eport.example") is policy.service(
        "manifest"
    )
    assert policy.service_by_audience("https://manifest.eport.example/") is None
    assert policy.service_by_identity("Tax-Refund.eport.example") is policy.service("tax-refund")
    assert policy.service_by_identity("evil.example") is None
    portal = policy.service("portal")
    assert portal.redirect_uris == ("https://portal.eport.example/oidc/callback",)
    assert portal.backchannel_logout_uri == "https://portal.eport.example/oidc/backchannel-logout"


def test_unknown_service_is_a_domain_error(policy: AccessPolicy) -> None:
    with pytest.raises(UnknownService, match=r"unknown service 'nosuch' \(known: audit, ") as e:
        policy.service("nosuch")
    assert e.value.problem()["status"] == 404
    assert e.value.error == "invalid_target"
    with pytest.raises(UnknownService):
        policy.scopes_for("enterprise", service_id="nosuch")


def test_roles(policy: AccessPolicy) -> None:
    assert policy.role("finance").description.startswith("Applies for export tax rebates")
    with pytest.raises(UnknownRole, match="unknown operator role 'boss'"):
        policy.role("boss")


def test_enterprise_gets_everything_of_its_own(policy: AccessPolicy) -> None:
    assert policy.scopes_for("enterprise", service_id="customs-declaration") == (
        "declaration:draft",
        "declaration:read",
        "declaration:submit",
        "declaration:withdraw",
    )
    assert policy.scopes_for(SubjectClass.ENTERPRISE, service_id="tax-refund") == (
        "refund:apply",
        "refund:read",
    )
    assert policy.scopes_for("enterprise", service_id="audit") == ()
    assert [s.id for s in policy.services_for("enterprise")] == EPORT_SERVICES[:-1]


def test_operator_without_roles_gets_the_portal_only(policy: AccessPolicy) -> None:
    assert policy.scopes_for("operator", service_id="portal") == ("portal:use",)
    assert policy.scopes_for("operator", service_id="customs-declaration") == ()
    assert [s.id for s in policy.services_for("operator")] == ["portal"]


def test_operator_scopes_follow_roles(policy: AccessPolicy) -> None:
    def scopes(service: str, *roles: str) -> tuple[str, ...]:
        return policy.scopes_for("operator", service_id=service, roles=frozenset(roles))

    assert scopes("customs-declaration", "data-entry") == ("declaration:draft", "declaration:read")
    assert scopes("customs-declaration", "declaration") == (
        "declaration:draft",
        "declaration:read",
        "declaration:submit",
        "declaration:withdraw",
    )
    assert scopes("customs-declaration", "finance") == ("declaration:read",)
    assert scopes("tax-refund", "data-entry") == ()
    assert scopes("tax-refund", "finance") == ("refund:apply", "refund:read")
    # Two roles' rules add up, de-duplicated and sorted.
    assert scopes("customs-declaration", "data-entry", "finance") == (
        "declaration:draft",
        "declaration:read",
    )
    assert scopes("manifest", "data-entry", "manifest") == (
        "manifest:draft",
        "manifest:read",
        "manifest:submit",
    )
    # A role name no rule knows grants nothing.
    assert scopes("customs-declaration", "boss") == ()
    assert [s.id for s in policy.services_for("operator", frozenset({"finance"}))] == [
        "portal",
        "customs-declaration",
        "tax-refund",
        "forex-verification",
    ]


def test_a_rule_with_several_roles_needs_all_of_them(policy_dir: Path) -> None:
    append(
        policy_dir / "access.toml",
        '[[rule]]\nservice = "audit"\nsubject_class = "operator"\n'
        'roles = ["declaration", "finance"]\nscopes = ["audit:read"]\n',
    )
    p = load_access_policy(policy_dir)

    def scopes(*roles: str) -> tuple[str, ...]:
        return p.scopes_for("operator", service_id="audit", roles=frozenset(roles))

    assert scopes() == ()
    assert scopes("declaration") == ()
    assert scopes("finance") == ()
    assert scopes("declaration", "finance") == ("audit:read",)
    assert scopes("declaration", "finance", "data-entry") == ("audit:read",)


def test_agency_reads_only_under_an_authorization(policy: AccessPolicy) -> None:
    def scopes(service: str, agency: str | None) -> tuple[str, ...]:
        return policy.scopes_for("agency", service_id=service, agency_id=agency)

    assert scopes("customs-declaration", "customs") == ("declaration:read",)
    assert scopes("customs-declaration", "tax") == ("declaration:read",)
    assert scopes("customs-declaration", "commerce") == ()
    assert scopes("customs-declaration", None) == ()
    assert scopes("tax-refund", "customs") == ()
    assert scopes("portal", "customs") == ()
    assert [s.id for s in policy.services_for("agency", agency_id="tax")] == [
        "customs-declaration",
        "tax-refund",
        "forex-verification",
    ]
    assert policy.services_for("agency", agency_id="commerce") == []
    assert policy.authorization_for(
        "agency", service_id="customs-declaration", agency_id="tax"
    ) == ("GACC-2026-017: Customs authorizes Tax to read export declarations for rebate checks",)
    assert policy.authorization_for(
        "agency", service_id="forex-verification", agency_id="tax", scopes=["forex:read"]
    ) == (
        "SAFE-2026-011: Foreign Exchange authorizes Tax to read export receipts for rebate checks",
    )
    assert (
        policy.authorization_for(
            "agency", service_id="forex-verification", agency_id="tax", scopes=["forex:report"]
        )
        == ()
    )
    assert policy.authorization_for("agency", service_id="tax-refund", agency_id="customs") == ()
    assert policy.authorization_for("enterprise", service_id="customs-declaration") == ()


def test_agency_without_the_authorization_rule_gets_nothing(policy_dir: Path) -> None:
    access = policy_dir / "access.toml"
    text = access.read_text()
    rule = re.search(r"\[\[rule\]\]\n(?:[^\[\n].*\n)*?authorization = \"GACC-2026-017:.*\n", text)
    assert rule is not None
    access.write_text(text.replace(rule.group(0), ""))
    p = load_access_policy(policy_dir)
    assert p.scopes_for("agency", service_id="customs-declaration", agency_id="tax") == ()
    assert p.authorization_for("agency", service_id="customs-declaration", agency_id="tax") == ()
    assert p.scopes_for("agency", service_id="tax-refund", agency_id="tax") == ("refund:read",)
    assert p.scopes_for("agency", service_id="customs-declaration", agency_id="customs") == (
        "declaration:read",
    )


def test_auditor_reads_the_audit_log(policy: AccessPolicy) -> None:
    for agency in (*sorted(MEMBERS), None):
        assert policy.scopes_for("auditor", service_id="audit", agency_id=agency) == ("audit:read",)
        assert [s.id for s in policy.services_for("auditor", agency_id=agency)] == ["audit"]
    assert policy.scopes_for("agency", service_id="audit", agency_id="customs") == ()
    assert policy.scopes_for("operator", service_id="audit", roles=frozenset({"finance"})) == ()


def test_services_and_non_login_classes(policy: AccessPolicy) -> None:
    assert policy.scopes_for("service", service_id="portal") == ("portal:notify",)
    assert [s.id for s in policy.services_for("service")] == ["portal"]
    assert policy.services_for("ca") == []
    assert policy.services_for(SubjectClass.RESPONDER) == []
    with pytest.raises(ValueError, match="unknown subject class 'operater'"):
        policy.scopes_for("operater", service_id="portal")


def test_may_exchange(policy: AccessPolicy) -> None:
    assert policy.may_exchange("portal", "customs-declaration")
    assert policy.may_exchange("tax-refund", "forex-verification")
    assert policy.may_exchange("customs-declaration", "manifest")
    assert not policy.may_exchange("manifest", "customs-declaration")
    assert not policy.may_exchange("customs-declaration", "portal")
    assert not policy.may_exchange("portal", "audit")
    assert not policy.may_exchange("nosuch", "portal")
    assert not policy.may_exchange("portal", "nosuch")


def test_rule_line_points_at_its_header(policy: AccessPolicy) -> None:
    lines = (REPO_POLICIES / "access.toml").read_text().splitlines()
    assert len(policy.rules) == sum(1 for line in lines if line == "[[rule]]")
    for rule in policy.rules:
        assert lines[rule.line - 1] == "[[rule]]"
        assert lines[rule.line] == f'service = "{rule.service}"'


def test_rule_applies() -> None:
    r = Rule("x", SubjectClass.AGENCY, ("a:b",), agencies=frozenset({"tax"}))
    assert r.applies(frozenset(), "tax")
    assert not r.applies(frozenset(), "customs")
    assert not r.applies(frozenset(), None)


# --- bad services.toml --------------------------------------------------------------------

NEW_SERVICE = """\
[[service]]
id = "berth-booking"
name = "Berth Booking"
audience = "https://berth-booking.eport.example"
scopes = [
  "berth:read",
  "berth:book",
]
identity = "berth-booking.eport.example"
exchange_to = [
  "manifest",
  "portal",
]
"""
"""Appended to a copy of services.toml; the tests below change one thing in it."""

SERVICE_INDEX = len(EPORT_SERVICES)


def add_service(policy_dir: Path, old: str = "", new: str = "") -> tuple[Path, int]:
    """Append NEW_SERVICE with ``old`` replaced by ``new``; return the file and its line."""
    path = policy_dir / "services.toml"
    block = NEW_SERVICE.replace(old, new) if old else NEW_SERVICE
    assert block != NEW_SERVICE or not old
    return path, append(path, block)


def test_new_service_loads(policy_dir: Path) -> None:
    add_service(policy_dir)
    p = load_access_policy(policy_dir)
    assert p.service("berth-booking").exchange_to == ("manifest", "portal")
    assert p.service("berth-booking").may_introspect


def test_unknown_key_is_reported_on_its_line(policy_dir: Path) -> None:
    path, at = add_service(policy_dir, "exchange_to = [", 'colour = "blue"\nexchange_to = [')
    refused(policy_dir, path, f"line {at + 9}: service[{SERVICE_INDEX}].colour", "unknown key")


@pytest.mark.parametrize("key", ["id", "name", "audience", "scopes", "identity"])
def test_missing_required_key_points_at_the_header(policy_dir: Path, key: str) -> None:
    path = policy_dir / "services.toml"
    block = re.sub(rf"^{key} = (\[\n(  .*\n)*\]|.*)\n", "", NEW_SERVICE, count=1, flags=re.M)
    assert block != NEW_SERVICE
    at = append(path, block)
    refused(policy_dir, path, f"line {at}: service[{SERVICE_INDEX}].{key}", "required key")


def test_duplicate_service_id(policy_dir: Path) -> None:
    path, at = add_service(policy_dir, 'id = "berth-booking"', 'id = "manifest"')
    refused(policy_dir, path, f"line {at + 1}: service[{SERVICE_INDEX}].id", "duplicate service id")


def test_bad_service_id(policy_dir: Path) -> None:
    path, at = add_service(policy_dir, 'id = "berth-booking"', 'id = "Berth Booking"')
    refused(policy_dir, path, f"line {at + 1}: service[{SERVICE_INDEX}].id", "lower-case")


def test_exchange_to_unknown_service_names_the_item_line(policy_dir: Path) -> None:
    path, at = add_service(policy_dir, '  "portal",', '  "portl",')
    refused(
        policy_dir,
        path,
        f"line {at + 11}: service[{SERVICE_INDEX}].exchange_to[1]",
        "unknown service 'portl'",
    )


def test_exchange_to_itself(policy_dir: Path) -> None:
    path, at = add_service(policy_dir, '  "manifest",', '  "berth-booking",')
    refused(
        policy_dir,
        path,
        f"line {at + 10}: service[{SERVICE_INDEX}].exchange_to[0]",
        "does not exchange tokens for itself",
    )


def test_exchange_to_a_later_service_is_fine(policy_dir: Path) -> None:
    replace(policy_dir / "services.toml", 'exchange_to = ["manifest"]', 'exchange_to = ["audit"]')
    assert load_access_policy(policy_dir).may_exchange("customs-declaration", "audit")


def test_exchange_to_unknown_service_in_the_repository_file(policy_dir: Path) -> None:
    path = policy_dir / "services.toml"
    at = replace(path, '  "inspection-booking",\n]', '  "inspection",\n]')
    refused(policy_dir, path, f"line {at}: service[0].exchange_to[4]", "unknown service")


@pytest.mark.parametrize(
    "audience",
    [
        "http://berth.eport.example",
        "https://berth.eport.example/",
        "https://berth.eport.example?x=1",
        "https://berth.eport.example#top",
        "https://Berth.eport.example",
        "https://user@berth.eport.example",
        "https://",
        "https://berth.eport.example:99999",
        "https://berth_booking.eport.example",
        "berth-booking",
        "http://localhost:8080",
    ],
)
def test_bad_audience_url(policy_dir: Path, audience: str) -> None:
    path, at = add_service(
        policy_dir,
        'audience = "https://berth-booking.eport.example"',
        f'audience = "{audience}"',
    )
    refused(policy_dir, path, f"line {at + 3}: service[{SERVICE_INDEX}].audience", audience)


def test_audience_with_a_path_is_fine(policy_dir: Path) -> None:
    add_service(
        policy_dir,
        'audience = "https://berth-booking.eport.example"',
        'audience = "https://api.eport.example:8443/berth"',
    )
    p = load_access_policy(policy_dir)
    assert p.service_by_audience("https://api.eport.example:8443/berth") is not None


def test_duplicate_audience(policy_dir: Path) -> None:
    path, at = add_service(
        policy_dir, "https://berth-booking.eport.example", "https://manifest.eport.example"
    )
    refused(
        policy_dir,
        path,
        f"line {at + 3}: service[{SERVICE_INDEX}].audience",
        "audience already used by service 'manifest'",
    )


def test_duplicate_identity(policy_dir: Path) -> None:
    path, at = add_service(
        policy_dir, 'identity = "berth-booking.eport.example"', 'identity = "audit.eport.example"'
    )
    refused(
        policy_dir,
        path,
        f"line {at + 8}: service[{SERVICE_INDEX}].identity",
        "identity already used by service 'audit'",
    )


@pytest.mark.parametrize("identity", ["Berth.eport.example", "berth..example", "*.eport.example"])
def test_bad_identity(policy_dir: Path, identity: str) -> None:
    path, at = add_service(
        policy_dir, 'identity = "berth-booking.eport.example"', f'identity = "{identity}"'
    )
    refused(policy_dir, path, f"line {at + 8}: service[{SERVICE_INDEX}].identity", "DNS name")


def test_bad_scope_names_the_item_line(policy_dir: Path) -> None:
    path, at = add_service(policy_dir, '"berth:book"', '"Berth Book"')
    refused(
        policy_dir, path, f"line {at + 6}: service[{SERVICE_INDEX}].scopes[1]", "resource:action"
    )


def test_duplicate_scope(policy_dir: Path) -> None:
    path, at = add_service(policy_dir, '"berth:book"', '"berth:read"')
    refused(policy_dir, path, f"line {at + 6}: service[{SERVICE_INDEX}].scopes[1]", "listed twice")


def test_service_without_scopes(policy_dir: Path) -> None:
    path, at = add_service(
        policy_dir, 'scopes = [\n  "berth:read",\n  "berth:book",\n]', "scopes = []"
    )
    refused(policy_dir, path, f"line {at + 4}: service[{SERVICE_INDEX}].scopes", "at least one")


def test_wrong_type(policy_dir: Path) -> None:
    path, at = add_service(policy_dir, "exchange_to = [", 'may_introspect = "yes"\nexchange_to = [')
    refused(
        policy_dir,
        path,
        f"line {at + 9}: service[{SERVICE_INDEX}].may_introspect",
        "expected bool, got str",
    )


def test_scope_of_wrong_type(policy_dir: Path) -> None:
    path, at = add_service(policy_dir, '"berth:book"', "42")
    refused(policy_dir, path, f"line {at + 6}: service[{SERVICE_INDEX}].scopes[1]", "a string")


def test_may_introspect_false(policy_dir: Path) -> None:
    add_service(policy_dir, "exchange_to = [", "may_introspect = false\nexchange_to = [")
    assert not load_access_policy(policy_dir).service("berth-booking").may_introspect


@pytest.mark.parametrize(
    "uri",
    ["http://berth.eport.example/cb", "https://berth.eport.example/cb#x", "ftp://berth.example"],
)
def test_bad_redirect_uri(policy_dir: Path, uri: str) -> None:
    path, at = add_service(
        policy_dir,
        "exchange_to = [",
        f'redirect_uris = [\n  "https://berth.eport.example/ok",\n  "{uri}",\n]\nexchange_to = [',
    )
    refused(policy_dir, path, f"line {at + 11}: service[{SERVICE_INDEX}].redirect_uris[1]", uri)


def test_loopback_redirect_uri_is_fine(policy_dir: Path) -> None:
    add_service(
        policy_dir,
        "exchange_to = [",
        'redirect_uris = ["http://127.0.0.1:8765/cb", "http://localhost/cb"]\nexchange_to = [',
    )
    uris = load_access_policy(policy_dir).service("berth-booking").redirect_uris
    assert uris == ("http://127.0.0.1:8765/cb", "http://localhost/cb")


def test_bad_backchannel_logout_uri(policy_dir: Path) -> None:
    path = policy_dir / "services.toml"
    at = replace(
        path,
        'backchannel_logout_uri = "https://portal.eport.example/oidc/backchannel-logout"',
        'backchannel_logout_uri = "http://portal.eport.example/logout"',
    )
    refused(policy_dir, path, f"line {at}: service[0].backchannel_logout_uri", "https")


def test_id_token_signing_alg_is_registered_per_client(policy_dir: Path) -> None:
    """OpenID Connect Registration §2 ``id_token_signed_response_alg``: RS256 or ES256; a
    client that says nothing keeps ES256 (docs/oidc.md explains the departure from Core
    §3.1.3.7's RS256 default)."""
    assert load_access_policy(policy_dir).service("sample-a").id_token_signed_response_alg == (
        "ES256"
    )
    path = policy_dir / "services.toml"
    block = 'redirect_uris = ["https://sample-b.eport.example:8443/callback"]'
    replace(path, block, block + '\nid_token_signed_response_alg = "RS256"')
    p = load_access_policy(policy_dir)
    assert p.service("sample-b").id_token_signed_response_alg == "RS256"
    assert p.service("sample-a").id_token_signed_response_alg == "ES256"


@pytest.mark.parametrize("alg", ["HS256", "none", "rs256", "PS256"])
def test_bad_id_token_signing_alg(policy_dir: Path, alg: str) -> None:
    path = policy_dir / "services.toml"
    block = 'redirect_uris = ["https://sample-b.eport.example:8443/callback"]'
    at = replace(path, block, block + f'\nid_token_signed_response_alg = "{alg}"')
    i = EPORT_SERVICES.index("sample-b")
    key = f"line {at + 1}: service[{i}].id_token_signed_response_alg"
    refused(policy_dir, path, key, f"{alg!r} is not one of RS256, ES256")


def test_id_token_signing_alg_needs_a_web_client(policy_dir: Path) -> None:
    path, at = add_service(
        policy_dir, "exchange_to = [", 'id_token_signed_response_alg = "RS256"\nexchange_to = ['
    )
    key = f"line {at + 9}: service[{SERVICE_INDEX}].id_token_signed_response_alg"
    refused(policy_dir, path, key, "only a web client")


def test_unknown_top_level_key(policy_dir: Path) -> None:
    path = policy_dir / "services.toml"
    at = replace(path, '\n[[service]]\nid = "portal"', '\nversion = 2\n[[service]]\nid = "portal"')
    refused(policy_dir, path, f"line {at + 1}: version", "unknown key (expected service)")


def test_service_as_a_plain_table(tmp_path: Path) -> None:
    write_policies(tmp_path, services='# one\n\n[service]\nid = "portal"\n')
    refused(tmp_path, tmp_path / "services.toml", "line 3: service", "expected [[service]] tables")


def test_no_services(tmp_path: Path) -> None:
    write_policies(tmp_path, services="# none yet\n")
    refused(tmp_path, tmp_path / "services.toml", "line 1: service", "at least one")


def test_sub_table_is_an_unknown_key(policy_dir: Path) -> None:
    path, at = add_service(policy_dir)
    append(path, "[service.extra]\nx = 1\n")
    refused(policy_dir, path, f"line {at + 14}: service[{SERVICE_INDEX}].extra", "unknown key")


def test_invalid_toml_reports_the_parser_line(policy_dir: Path) -> None:
    path, at = add_service(policy_dir, 'name = "Berth Booking"', "name = Berth Booking")
    refused(policy_dir, path, f"line {at + 2}", "not valid TOML")


def test_missing_file(policy_dir: Path) -> None:
    (policy_dir / "services.toml").unlink()
    refused(policy_dir, policy_dir / "services.toml", "-", "file not found")


# --- bad access.toml ----------------------------------------------------------------------


def add_rule(policy_dir: Path, body: str) -> tuple[Path, int]:
    """Append a ``[[rule]]`` with ``body``; return the file and the header's line."""
    path = policy_dir / "access.toml"
    return path, append(path, "[[rule]]\n" + body)


RULE_INDEX = len(re.findall(r"^\[\[rule\]\]$", (REPO_POLICIES / "access.toml").read_text(), re.M))
"""The index of a rule appended to the repository's access.toml."""


def test_rule_index_matches_the_repository(policy: AccessPolicy) -> None:
    assert len(policy.rules) == RULE_INDEX


def test_unknown_service_in_a_rule(policy_dir: Path) -> None:
    path, at = add_rule(
        policy_dir, 'subject_class = "enterprise"\nservice = "berth"\nscopes = ["berth:read"]\n'
    )
    refused(
        policy_dir, path, f"line {at + 2}: rule[{RULE_INDEX}].service", "unknown service 'berth'"
    )


def test_scope_the_service_does_not_define(policy_dir: Path) -> None:
    path, at = add_rule(
        policy_dir,
        'service = "manifest"\nsubject_class = "enterprise"\n'
        'scopes = ["manifest:read", "declaration:read"]\n',
    )
    refused(
        policy_dir,
        path,
        f"line {at + 3}: rule[{RULE_INDEX}].scopes[1]",
        "service 'manifest' does not define scope 'declaration:read'",
    )


def test_scope_on_a_later_line_of_a_multi_line_list(policy_dir: Path) -> None:
    path, at = add_rule(
        policy_dir,
        'service = "manifest"\nsubject_class = "enterprise"\n'
        'scopes = [\n  "manifest:read",  # ] not the end\n\n  "manifest:delete",\n]\n',
    )
    refused(
        policy_dir,
        path,
        f"line {at + 6}: rule[{RULE_INDEX}].scopes[1]",
        "does not define scope 'manifest:delete'",
    )


def test_rule_without_scopes(policy_dir: Path) -> None:
    path, at = add_rule(policy_dir, 'service = "manifest"\nsubject_class = "enterprise"\n')
    refused(policy_dir, path, f"line {at}: rule[{RULE_INDEX}].scopes", "required key is missing")
    path.write_text(path.read_text() + "scopes = []\n")
    refused(policy_dir, path, f"line {at + 3}: rule[{RULE_INDEX}].scopes", "at least one scope")


def test_unknown_role_in_a_rule(policy_dir: Path) -> None:
    path, at = add_rule(
        policy_dir,
        'service = "manifest"\nsubject_class = "operator"\n'
        'roles = ["manifest", "captain"]\nscopes = ["manifest:read"]\n',
    )
    refused(
        policy_dir, path, f"line {at + 3}: rule[{RULE_INDEX}].roles[1]", "unknown role 'captain'"
    )


def test_roles_only_for_operators(policy_dir: Path) -> None:
    path, at = add_rule(
        policy_dir,
        'service = "manifest"\nsubject_class = "enterprise"\n'
        'scopes = ["manifest:read"]\nroles = ["manifest"]\n',
    )
    refused(policy_dir, path, f"line {at + 4}: rule[{RULE_INDEX}].roles", "only operator rules")


def test_empty_roles(policy_dir: Path) -> None:
    path, at = add_rule(
        policy_dir,
        'service = "manifest"\nsubject_class = "operator"\n'
        'roles = []\nscopes = ["manifest:read"]\n',
    )
    refused(policy_dir, path, f"line {at + 3}: rule[{RULE_INDEX}].roles", "omit roles")


@pytest.mark.parametrize("cls", ["operater", "ca", "responder", "Enterprise"])
def test_unknown_subject_class(policy_dir: Path, cls: str) -> None:
    path, at = add_rule(
        policy_dir, f'service = "manifest"\nsubject_class = "{cls}"\nscopes = ["manifest:read"]\n'
    )
    refused(
        policy_dir,
        path,
        f"line {at + 2}: rule[{RULE_INDEX}].subject_class",
        f"unknown subject class {cls!r} (known: enterprise, operator, agency, auditor, service)",
    )


AGENCY_RULE = """\
service = "manifest"
subject_class = "agency"
agencies = ["customs", "commerce"]
scopes = ["manifest:read"]
authorization = "GACC-2026-099: Customs authorizes Commerce to read manifests"
"""


def test_agency_rule_loads(policy_dir: Path) -> None:
    add_rule(policy_dir, AGENCY_RULE)
    p = load_access_policy(policy_dir)
    assert p.scopes_for("agency", service_id="manifest", agency_id="commerce") == ("manifest:read",)
    assert p.authorization_for("agency", service_id="manifest", agency_id="customs") == (
        "GACC-2026-002: Customs is the competent department for carrier manifests",
        "GACC-2026-099: Customs authorizes Commerce to read manifests",
    )


def test_unknown_agency(policy_dir: Path) -> None:
    path, at = add_rule(policy_dir, AGENCY_RULE.replace('"commerce"', '"police"'))
    refused(
        policy_dir,
        path,
        f"line {at + 3}: rule[{RULE_INDEX}].agencies[1]",
        "unknown member agency 'police'",
    )


def test_agencies_come_from_members_toml_or_the_caller(policy_dir: Path) -> None:
    path, at = add_rule(policy_dir, AGENCY_RULE)
    refused(
        policy_dir,
        path,
        f"line {at + 3}: rule[{RULE_INDEX}].agencies[1]",
        "unknown member agency 'commerce' (known: customs, forex, inspection, tax)",
        member_ids=MEMBERS - {"commerce"},
    )
    members = policy_dir / "members.toml"
    replace(members, 'id = "commerce"', 'id = "trade"')
    refused(policy_dir, path, f"line {at + 3}: rule[{RULE_INDEX}].agencies[1]", "'commerce'")


def test_agency_rule_without_authorization(policy_dir: Path) -> None:
    path, at = add_rule(policy_dir, AGENCY_RULE.replace("authorization = ", "# was: "))
    refused(
        policy_dir,
        path,
        f"line {at}: rule[{RULE_INDEX}].authorization",
        "only under the competent department's authorization",
    )


def test_agency_rule_with_a_blank_authorization(policy_dir: Path) -> None:
    path, at = add_rule(
        policy_dir, re.sub(r'authorization = ".*"', 'authorization = "  "', AGENCY_RULE)
    )
    refused(policy_dir, path, f"line {at + 5}: rule[{RULE_INDEX}].authorization", "empty")


def test_removing_an_authorization_from_the_repository_file(policy_dir: Path) -> None:
    path = policy_dir / "access.toml"
    old = 'authorization = "GACC-2026-017: Customs authorizes Tax'
    text = path.read_text()
    before = text[: text.index(old)]
    header = before[: before.rindex("[[rule]]")].count("\n") + 1
    index = before.count("[[rule]]") - 1
    path.write_text(text.replace(old, "# " + old))
    refused(policy_dir, path, f"line {header}: rule[{index}].authorization", "authorization")


def test_agency_rule_must_name_its_agencies(policy_dir: Path) -> None:
    path, at = add_rule(policy_dir, AGENCY_RULE.replace("agencies = ", "# agencies = "))
    refused(policy_dir, path, f"line {at}: rule[{RULE_INDEX}].agencies", "names the member")


def test_agencies_only_for_agency_and_auditor_rules(policy_dir: Path) -> None:
    path, at = add_rule(
        policy_dir,
        'service = "manifest"\nsubject_class = "operator"\n'
        'agencies = ["customs"]\nscopes = ["manifest:read"]\n',
    )
    refused(policy_dir, path, f"line {at + 3}: rule[{RULE_INDEX}].agencies", "only agency")


def test_auditor_rule_may_name_agencies(policy_dir: Path) -> None:
    add_rule(
        policy_dir,
        'service = "manifest"\nsubject_class = "auditor"\n'
        'agencies = ["customs"]\nscopes = ["manifest:read"]\n',
    )
    p = load_access_policy(policy_dir)
    assert p.scopes_for("auditor", service_id="manifest", agency_id="customs") == ("manifest:read",)
    assert p.scopes_for("auditor", service_id="manifest", agency_id="tax") == ()


def test_unknown_key_in_a_rule(policy_dir: Path) -> None:
    path, at = add_rule(
        policy_dir,
        'service = "manifest"\nsubject_class = "enterprise"\nscopes = ["manifest:read"]\n'
        'description = "fine"\nexpires = 2027-01-01\n',
    )
    refused(policy_dir, path, f"line {at + 5}: rule[{RULE_INDEX}].expires", "unknown key")


def test_duplicate_role_id(policy_dir: Path) -> None:
    path = policy_dir / "access.toml"
    at = replace(path, 'id = "finance"', 'id = "manifest"')
    refused(policy_dir, path, f"line {at}: role[4].id", "duplicate role id 'manifest'")


def test_role_without_description(policy_dir: Path) -> None:
    path = policy_dir / "access.toml"
    text = path.read_text()
    old = 'description = "Books and cancels inspections for the enterprise"\n'
    header = text[: text.index('id = "inspection"')].count("\n")
    path.write_text(text.replace(old, ""))
    refused(policy_dir, path, f"line {header}: role[3].description", "required key")


def test_unknown_top_level_key_in_access(policy_dir: Path) -> None:
    path = policy_dir / "access.toml"
    at = replace(path, '\n[[role]]\nid = "data-entry"', '\n[[grant]]\nid = "data-entry"')
    refused(policy_dir, path, f"line {at + 1}: grant", "unknown key (expected role, rule)")


# --- lines found past things that look like tables ------------------------------------------


def write_policies(directory: Path, services: str = "", access: str = "") -> None:
    directory.mkdir(exist_ok=True)
    (directory / "members.toml").write_text(
        'threshold = 1\n[[member]]\nid = "customs"\nname = "Customs"\ncustodian = "C"\n'
    )
    (directory / "services.toml").write_text(services)
    (directory / "access.toml").write_text(access)


TRICKY_SERVICES = '''\
# [[service]] in a comment does not count
[[service]]
id = "alpha"
name = """Alpha
[[service]]
id = "fake" """
audience = "https://alpha.example"
scopes = [ "a:read", # ]
  ["nested"] ]
identity = 'alpha.example'
'''


def test_lines_past_comments_and_multi_line_strings(tmp_path: Path) -> None:
    write_policies(tmp_path, services=TRICKY_SERVICES)
    refused(tmp_path, tmp_path / "services.toml", "line 9: service[0].scopes[1]", "a string")


TRICKY_ACCESS = """\
[[role]]
id = "clerk"
description = 'a [[rule]] = "x"'

[[rule]]  # first
service = "alpha"
subject_class = "enterprise"
scopes = ["a:read"]

[[ rule ]]
service = "alpha"
"subject_class" = "operator"
roles = [
  "clerk",
  "boss",
]
scopes = ["a:read"]
"""


def test_lines_past_quoted_keys_and_spaced_headers(tmp_path: Path) -> None:
    services = '[[service]]\nid = "alpha"\nname = "A"\naudience = "https://alpha.example"\n'
    services += 'scopes = ["a:read"]\nidentity = "alpha.example"\n'
    write_policies(tmp_path, services=services, access=TRICKY_ACCESS)
    refused(tmp_path, tmp_path / "access.toml", "line 15: rule[1].roles[1]", "unknown role 'boss'")
    good = TRICKY_ACCESS.replace('  "boss",\n', "")
    write_policies(tmp_path, services=services, access=good)
    p = load_access_policy(tmp_path)
    assert [r.line for r in p.rules] == [5, 10]
    assert p.scopes_for("operator", service_id="alpha", roles=frozenset({"clerk"})) == ("a:read",)
