"""Policy as data: the repository's policies load, and every bad file is refused at load
with an error naming the file and the key."""

from __future__ import annotations

import datetime
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from ca.errors import PolicyError, UnknownProfile
from ca.keys import KeyType
from ca.policy import Policies, SubjectClass, load_policies

REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"
PROFILES = {
    "enterprise",
    "operator",
    "agency",
    "service-tls",
    "issuing-ca",
    "auditor",
    "ocsp-responder",
}


@pytest.fixture(scope="module")
def policies() -> Policies:
    return load_policies(REPO_POLICIES)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A private copy of the repository's policies, for a test to corrupt."""
    d = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, d)
    return d


def edit(path: Path, change: Callable[[str], str]) -> None:
    old = path.read_text()
    new = change(old)
    assert new != old, "the corruption did not apply"
    path.write_text(new)


def sub(pattern: str, repl: str) -> Callable[[str], str]:
    """Replace the first match of ``pattern`` (multi-line) by the literal ``repl``."""
    return lambda text: re.sub(pattern, lambda _: repl, text, count=1, flags=re.M)


def refused(directory: Path, path: Path, key: str) -> PolicyError:
    """Load ``directory``; assert PolicyError naming ``path`` and ``key``; return it."""
    with pytest.raises(PolicyError) as info:
        load_policies(directory)
    err = info.value
    assert err.path == str(path)
    assert err.key == key
    assert str(path) in str(err)
    assert key in str(err)
    return err


# --- the repository's policies ----------------------------------------------------------


def test_repository_policies_load(policies: Policies) -> None:
    assert set(policies.profiles) == PROFILES
    assert policies.directory == REPO_POLICIES
    assert policies.members.threshold == 3
    ids = [m.id for m in policies.members.members]
    assert ids == ["customs", "commerce", "tax", "forex", "inspection"]
    customs = policies.members.get("customs")
    assert customs is not None
    assert customs.name == "Customs Authority"
    assert customs.custodian == "Customs key custodian"
    assert policies.members.get("nosuch") is None


def test_load_policies_accepts_a_string_directory() -> None:
    assert set(load_policies(str(REPO_POLICIES)).profiles) == PROFILES  # type: ignore[arg-type]


def test_enterprise_profile(policies: Policies) -> None:
    p = policies.profile("enterprise")
    assert p.name == "enterprise"
    assert p.subject_class is SubjectClass.ENTERPRISE
    assert p.issuer == "enterprise"
    assert p.validity == datetime.timedelta(days=730)
    assert KeyType.P256 in p.key_types
    assert KeyType.RSA2048 in p.key_types
    assert p.key_usage == frozenset({"digitalSignature"})
    assert p.extended_key_usage == (ExtendedKeyUsageOID.CLIENT_AUTH,)
    assert p.role_oid == ObjectIdentifier("1.3.6.1.5.5.7.13.2")
    assert not p.ca
    assert p.path_length is None
    assert p.template_fields() == {"legal_name", "uscc"}


def test_issuing_ca_profile(policies: Policies) -> None:
    p = policies.profile("issuing-ca")
    assert p.ca
    assert p.path_length == 0
    assert p.issuer == "root"
    assert p.subject_class is SubjectClass.CA
    assert {"keyCertSign", "cRLSign"} <= p.key_usage
    assert p.key_types == {KeyType.P256, KeyType.P384}
    assert p.extended_key_usage == ()


def test_service_profile_has_dns_template(policies: Policies) -> None:
    p = policies.profile("service-tls")
    assert p.san_dns == ("{service_host}",)
    assert p.build_dns_names({"service_host": "declare.eport.test", "agency_name": "Customs"}) == [
        "declare.eport.test"
    ]
    assert p.template_fields() == {"agency_name", "service_host"}
    assert p.extended_key_usage == (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )


def test_role_oids_are_distinct_and_lookup_works(policies: Policies) -> None:
    oids = [p.role_oid for p in policies.profiles.values()]
    assert len(set(oids)) == len(oids)
    for p in policies.profiles.values():
        assert policies.profile_for_oid(p.role_oid) is p
    assert policies.profile_for_oid(ObjectIdentifier("1.2.3.4")) is None


def test_profiles_of(policies: Policies) -> None:
    assert [p.name for p in policies.profiles_of(SubjectClass.OPERATOR)] == ["operator"]
    assert [p.name for p in policies.profiles_of(SubjectClass.AUDITOR)] == ["auditor"]


def test_unknown_profile(policies: Policies) -> None:
    with pytest.raises(UnknownProfile, match=r"unknown profile 'nosuch' \(known: agency, "):
        policies.profile("nosuch")


# --- build_subject ----------------------------------------------------------------------

VETTED = {"uscc": "91350100M000100Y43", "legal_name": "Fuzhou Port Trading Co., Ltd."}


def test_build_subject_from_vetted_data(policies: Policies) -> None:
    name = policies.profile("enterprise").build_subject(VETTED)
    assert name == x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, VETTED["legal_name"]),
            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, "NTRCN-91350100M000100Y43"),
            x509.NameAttribute(NameOID.COMMON_NAME, VETTED["legal_name"]),
        ]
    )


def test_build_subject_operator(policies: Policies) -> None:
    vetted = {**VETTED, "operator_id": "OP-0007", "operator_name": "Li Lei"}
    name = policies.profile("operator").build_subject({**vetted, "authorization": "b" * 16})
    assert name.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "OP-0007"
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Li Lei"
    # the authorization (the application issued on, without "app_": ca.issuance fills it)
    assert name.get_attributes_for_oid(NameOID.DN_QUALIFIER)[0].value == "b" * 16


def test_build_subject_missing_field_raises_key_error(policies: Policies) -> None:
    with pytest.raises(KeyError, match="uscc"):
        policies.profile("enterprise").build_subject({"legal_name": "X Co."})


def test_build_subject_ignores_unrelated_vetted_keys(policies: Policies) -> None:
    # Extra vetted data (e.g. a CN smuggled in by an applicant) never reaches the subject.
    name = policies.profile("enterprise").build_subject({**VETTED, "CN": "evil", "O": "evil"})
    assert all(attr.value != "evil" for attr in name)


def test_build_subject_empty_value_refused(policies: Policies) -> None:
    with pytest.raises(PolicyError, match="empty subject attribute"):
        policies.profile("enterprise").build_subject({"uscc": "X", "legal_name": "  "})


def test_build_subject_does_not_format_recursively(policies: Policies) -> None:
    # A vetted value that looks like a template is copied literally, not expanded.
    name = policies.profile("enterprise").build_subject({**VETTED, "legal_name": "{uscc}"})
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "{uscc}"


# --- bad profile files ------------------------------------------------------------------


@pytest.mark.parametrize("weak", ["rsa1024", "p192"])
def test_weak_key_types_refused(policy_dir: Path, weak: str) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r"^key_types = .*$", f'key_types = ["{weak}"]'))
    err = refused(policy_dir, path, "key_types[0]")
    assert weak in str(err)
    assert "not allowed" in str(err)


def test_weak_key_type_after_good_ones_is_located(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "operator.toml"
    edit(path, sub(r"^key_types = .*$", 'key_types = ["p256", "p384", "rsa1024"]'))
    refused(policy_dir, path, "key_types[2]")


def test_an_operator_profile_must_name_its_authorization(policy_dir: Path) -> None:
    """An operator.toml kept from an earlier release, without the dnQualifier of its
    authorization, was accepted: its operators' certificates named none, and roles went
    by the bare operator id again (roles probe, session 27). Refused at load."""
    path = policy_dir / "profiles" / "operator.toml"
    edit(path, lambda text: text.replace('  ["dnQualifier", "{authorization}"],\n', ""))
    err = refused(policy_dir, path, "subject")
    assert '["dnQualifier", "{authorization}"]' in str(err)
    # elsewhere in the subject, it is in no dnQualifier, where the token service reads it
    edit(
        path,
        lambda t: t.replace(
            '["CN", "{operator_name}"]', '["CN", "{operator_name} {authorization}"]'
        ),
    )
    refused(policy_dir, path, "subject")


def test_empty_key_types_refused(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "operator.toml"
    edit(path, sub(r"^key_types = .*$", "key_types = []"))
    refused(policy_dir, path, "key_types")


def test_unknown_key_usage(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "agency.toml"
    edit(path, sub(r"^key_usage = .*$", 'key_usage = ["digitalSignature", "signEverything"]'))
    err = refused(policy_dir, path, "key_usage[1]")
    assert "unknown key usage 'signEverything'" in str(err)


def test_unknown_extended_key_usage(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "agency.toml"
    edit(path, sub(r"^extended_key_usage = .*$", 'extended_key_usage = ["anyThing"]'))
    refused(policy_dir, path, "extended_key_usage[0]")


@pytest.mark.parametrize("oid", ["not-an-oid", "1.3.6.1.", "3.1.2", "1.03.4", "1", ""])
def test_bad_oid_string(policy_dir: Path, oid: str) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r"^policy_oids = .*$", f'policy_oids = ["{oid}"]'))
    err = refused(policy_dir, path, "policy_oids[0]")
    assert "not a dotted OID" in str(err)


@pytest.mark.parametrize("oid", ["1.40.1", "0.99", "1.2.3\\n"])
def test_oid_that_der_cannot_encode_is_a_policy_error(policy_dir: Path, oid: str) -> None:
    # Under arcs 0 and 1 the second arc is below 40 (X.660); a trailing newline is no OID.
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r"^policy_oids = .*$", f'policy_oids = ["{oid}"]'))
    refused(policy_dir, path, "policy_oids[0]")


def test_missing_subject(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r"^subject = \[\n(.*\n)*?\]\n", ""))
    err = refused(policy_dir, path, "subject")
    assert "required key is missing" in str(err)


def test_empty_subject(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r"^subject = \[\n(.*\n)*?\]\n", "subject = []\n"))
    refused(policy_dir, path, "subject")


def test_unknown_template_field(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r'\["CN", "\{legal_name\}"\]', '["CN", "{nosuch}"]'))
    err = refused(policy_dir, path, "subject[3]")
    assert "unknown template field 'nosuch'" in str(err)


@pytest.mark.parametrize(
    "tmpl", ["{uscc.__class__}", "{uscc[0]}", "{0}", "{}", "{uscc:{nosuch}}", "NTRCN-{uscc"]
)
def test_template_reaching_beyond_vetted_fields_refused(policy_dir: Path, tmpl: str) -> None:
    # Attribute access, indexing, positional fields, nested fields and malformed braces
    # would all fail (or leak) at issuance; they must fail at load.
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r'\["CN", "\{legal_name\}"\]', f'["CN", "{tmpl}"]'))
    refused(policy_dir, path, "subject[3]")


def test_unknown_subject_attribute(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r'\["CN", "\{legal_name\}"\]', '["emailAddress", "{legal_name}"]'))
    err = refused(policy_dir, path, "subject[3]")
    assert "unknown attribute 'emailAddress'" in str(err)


def test_subject_pair_shape(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r'\["CN", "\{legal_name\}"\]', '["CN"]'))
    refused(policy_dir, path, "subject[3]")


def test_unknown_san_template_field(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "service-tls.toml"
    edit(path, sub(r"^san_dns = .*$", 'san_dns = ["{service_host}", "{nosuch}.test"]'))
    refused(policy_dir, path, "san_dns[1]")


def test_unknown_extra_key(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "operator.toml"
    edit(path, lambda t: t + 'key_usages_typo = ["digitalSignature"]\n')
    err = refused(policy_dir, path, "key_usages_typo")
    assert "unknown key" in str(err)


def test_key_cert_sign_on_non_ca_profile(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r"^key_usage = .*$", 'key_usage = ["digitalSignature", "keyCertSign"]'))
    err = refused(policy_dir, path, "key_usage")
    assert "CA profiles only" in str(err)


def test_crl_sign_on_non_ca_profile(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "operator.toml"
    edit(path, sub(r"^key_usage = .*$", 'key_usage = ["digitalSignature", "cRLSign"]'))
    refused(policy_dir, path, "key_usage")


def test_ca_profile_without_key_cert_sign(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "issuing-ca.toml"
    edit(path, sub(r"^key_usage = .*$", 'key_usage = ["cRLSign", "digitalSignature"]'))
    refused(policy_dir, path, "key_usage")


def test_path_length_on_non_ca_profile(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, lambda t: t + "path_length = 0\n")
    refused(policy_dir, path, "path_length")


def test_negative_path_length_refused(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "issuing-ca.toml"
    edit(path, sub(r"^path_length = 0$", "path_length = -1"))
    refused(policy_dir, path, "path_length")


def test_ca_not_signed_by_root(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "issuing-ca.toml"
    edit(path, sub(r'^issuer = "root"$', 'issuer = "enterprise"'))
    refused(policy_dir, path, "issuer")


def test_duplicate_role_oid_across_profiles(policy_dir: Path) -> None:
    # operator.toml sorts after enterprise.toml, so it is the one named.
    path = policy_dir / "profiles" / "operator.toml"
    edit(path, sub(r"^policy_oids = .*$", 'policy_oids = ["1.3.6.1.5.5.7.13.2"]'))
    err = refused(policy_dir, path, "policy_oids[0]")
    assert "'enterprise'" in str(err)


def test_duplicate_oid_in_a_later_position_is_fine(policy_dir: Path) -> None:
    # Only the first OID names the role; a shared second policy OID is allowed.
    for name, role in (("enterprise", "2"), ("operator", "3")):
        edit(
            policy_dir / "profiles" / f"{name}.toml",
            sub(r"^policy_oids = .*$", f'policy_oids = ["1.3.6.1.5.5.7.13.{role}", "2.999.1"]'),
        )
    loaded = load_policies(policy_dir)
    assert loaded.profile("operator").policy_oids[1] == ObjectIdentifier("2.999.1")


@pytest.mark.parametrize(
    ("pattern", "repl", "key"),
    [
        (r'^subject_class = "enterprise"$', 'subject_class = "pirate"', "subject_class"),
        (r"^validity_days = 730$", "validity_days = 0", "validity_days"),
        (r"^validity_days = 730$", "validity_days = 9133", "validity_days"),
        (r"^validity_days = 730$", "validity_days = true", "validity_days"),
        (r"^validity_days = 730$", 'validity_days = "730"', "validity_days"),
        (r'^issuer = "enterprise"\n', "", "issuer"),
        (r"^key_types = .*$", 'key_types = "p256"', "key_types"),
        (r"^key_types = .*$", "key_types = [256]", "key_types[0]"),
    ],
)
def test_other_bad_values(policy_dir: Path, pattern: str, repl: str, key: str) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(pattern, repl))
    refused(policy_dir, path, key)


def test_bad_profile_file_name(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "Bad_Name.toml"
    shutil.copy(policy_dir / "profiles" / "agency.toml", path)
    refused(policy_dir, path, "(file name)")


def test_invalid_toml_profile(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "agency.toml"
    edit(path, lambda t: t + "key_usage = [\n")
    err = refused(policy_dir, path, "-")
    assert "not valid TOML" in str(err)


def test_no_profiles(policy_dir: Path) -> None:
    for f in (policy_dir / "profiles").glob("*.toml"):
        f.unlink()
    refused(policy_dir, policy_dir / "profiles", "-")


def test_issuing_ca_profile_required(policy_dir: Path) -> None:
    (policy_dir / "profiles" / "issuing-ca.toml").unlink()
    refused(policy_dir, policy_dir / "profiles", "issuing-ca")


# --- bad members.toml -------------------------------------------------------------------


def test_duplicate_member_id(policy_dir: Path) -> None:
    path = policy_dir / "members.toml"
    edit(path, sub(r'^id = "tax"$', 'id = "customs"'))
    err = refused(policy_dir, path, "member[2].id")
    assert "duplicate member id 'customs'" in str(err)


@pytest.mark.parametrize("bad_id", ["Customs", "c", "tax\\n", "x" * 33, "1tax"])
def test_bad_member_id(policy_dir: Path, bad_id: str) -> None:
    path = policy_dir / "members.toml"
    edit(path, sub(r'^id = "tax"$', f'id = "{bad_id}"'))
    refused(policy_dir, path, "member[2].id")


@pytest.mark.parametrize("threshold", [0, -1, 6])
def test_threshold_out_of_range(policy_dir: Path, threshold: int) -> None:
    path = policy_dir / "members.toml"
    edit(path, sub(r"^threshold = 3$", f"threshold = {threshold}"))
    err = refused(policy_dir, path, "threshold")
    assert "between 1 and the number of members (5)" in str(err)


@pytest.mark.parametrize("threshold", [1, 5])
def test_threshold_bounds_are_inclusive(policy_dir: Path, threshold: int) -> None:
    edit(policy_dir / "members.toml", sub(r"^threshold = 3$", f"threshold = {threshold}"))
    assert load_policies(policy_dir).members.threshold == threshold


def test_threshold_not_a_bool(policy_dir: Path) -> None:
    path = policy_dir / "members.toml"
    edit(path, sub(r"^threshold = 3$", "threshold = true"))
    refused(policy_dir, path, "threshold")


def test_missing_threshold(policy_dir: Path) -> None:
    path = policy_dir / "members.toml"
    edit(path, sub(r"^threshold = 3\n", ""))
    refused(policy_dir, path, "threshold")


def test_no_members(policy_dir: Path) -> None:
    path = policy_dir / "members.toml"
    path.write_text("threshold = 1\nmember = []\n")
    refused(policy_dir, path, "member")


def test_unknown_member_key(policy_dir: Path) -> None:
    path = policy_dir / "members.toml"
    edit(path, sub(r'^id = "forex"$', 'id = "forex"\nemail = "fx@example.test"'))
    refused(policy_dir, path, "member[3].email")


def test_member_missing_custodian(policy_dir: Path) -> None:
    path = policy_dir / "members.toml"
    edit(path, sub(r'^custodian = "Tax key custodian"\n', ""))
    refused(policy_dir, path, "member[2].custodian")


def test_one_custodian_for_two_members_is_refused(policy_dir: Path) -> None:
    """One person named custodian of two members would hold two shares of the root key:
    a quorum of three would then be two people."""
    path = policy_dir / "members.toml"
    edit(path, sub(r'^custodian = "Tax key custodian"$', 'custodian = "Customs key custodian"'))
    err = refused(policy_dir, path, "member[2].custodian")
    assert "also customs's custodian" in str(err), err


def test_a_blank_custodian_is_refused(policy_dir: Path) -> None:
    path = policy_dir / "members.toml"
    edit(path, sub(r'^custodian = "Tax key custodian"$', 'custodian = "  "'))
    refused(policy_dir, path, "member[2].custodian")


def test_more_than_255_members_is_refused(policy_dir: Path) -> None:
    """The root key's shares are numbered 1..255: the refusal said only "between 1 and
    the number of custodians" at ``eport ca init``."""
    path = policy_dir / "members.toml"
    members = "".join(
        f'[[member]]\nid = "m{i}"\nname = "M{i}"\ncustodian = "C{i}"\n' for i in range(256)
    )
    path.write_text("threshold = 200\n" + members)
    err = refused(policy_dir, path, "member")
    assert "at most 255" in str(err), err


def test_unknown_top_level_members_key(policy_dir: Path) -> None:
    path = policy_dir / "members.toml"
    edit(path, lambda t: "quorum = 3\n" + t)
    refused(policy_dir, path, "quorum")


def test_invalid_toml_members(policy_dir: Path) -> None:
    path = policy_dir / "members.toml"
    edit(path, lambda t: t.replace("threshold = 3", "threshold = = 3"))
    err = refused(policy_dir, path, "-")
    assert "not valid TOML" in str(err)


# --- what the CA needs of a policy set ----------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "key"),
    [
        ("enterprise", "enterprise"),
        ("operator", "operator"),
        ("agency", "agency"),
        ("auditor", "auditor"),
        ("service-tls", "service"),
        ("ocsp-responder", "ocsp-responder"),
    ],
)
def test_required_profiles(policy_dir: Path, profile: str, key: str) -> None:
    """A set without an enterprise (operator, service…) profile loaded, and an approval
    handed out a code for no profile; without agency, auditor or ocsp-responder a
    development CA failed half-made, naming no file."""
    (policy_dir / "profiles" / f"{profile}.toml").unlink()
    refused(policy_dir, policy_dir / "profiles", key)


def test_an_end_entity_profile_is_not_issued_by_root(policy_dir: Path) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r'^issuer = "enterprise"$', 'issuer = "root"'))
    assert "root signs CA profiles only" in str(refused(policy_dir, path, "issuer"))


@pytest.mark.parametrize("issuer", ["Enterprise", "", "*"])
def test_a_profile_issuer_is_an_issuing_ca_id(policy_dir: Path, issuer: str) -> None:
    path = policy_dir / "profiles" / "enterprise.toml"
    edit(path, sub(r'^issuer = "enterprise"$', f'issuer = "{issuer}"'))
    refused(policy_dir, path, "issuer")


def test_missing_members_file_and_dangling_profile_are_named(policy_dir: Path) -> None:
    """Both were "unexpected error: FileNotFoundError", naming no file."""
    link = policy_dir / "profiles" / "x.toml"
    link.symlink_to("/nonexistent/x.toml")
    assert "file not found" in str(refused(policy_dir, link, "-"))
    link.unlink()
    (policy_dir / "members.toml").unlink()
    refused(policy_dir, policy_dir / "members.toml", "-")


def test_a_missing_policies_directory_is_named(tmp_path: Path) -> None:
    for where in (tmp_path / "nowhere", Path("/etc/hostname")):
        with pytest.raises(PolicyError, match=f"^{where}: -: the policies directory"):
            load_policies(where)
