"""Policy as data: certificate profiles and member agencies, validated at load.

Files live in ``policies/`` (TOML). Every error names the file and the key, so an
operator who edits a profile learns at start what is wrong, never at issuance.
"""

from __future__ import annotations

import datetime
import enum
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from ca.errors import PolicyError
from ca.keys import KeyType


@enum.unique
class SubjectClass(enum.Enum):
    """Who a profile certifies; an enrollment code is bound to one class."""

    CA = "ca"
    ENTERPRISE = "enterprise"
    OPERATOR = "operator"
    AGENCY = "agency"
    AUDITOR = "auditor"
    SERVICE = "service"
    RESPONDER = "responder"
    """Delegated OCSP responders (RFC 6960 §4.2.2.2), one per issuing CA."""


EVERY_ISSUER = "*"
"""The ``issuer`` of a profile every issuing CA uses for itself (OCSP responders)."""

REQUIRED_PROFILES: Mapping[str, SubjectClass] = {
    "issuing-ca": SubjectClass.CA,
    "ocsp-responder": SubjectClass.RESPONDER,
}
"""Profiles the CA looks up by name (a ceremony issues the issuing CAs and their OCSP
responders with them)."""

REQUIRED_CLASSES = (
    SubjectClass.ENTERPRISE,
    SubjectClass.OPERATOR,
    SubjectClass.AGENCY,
    SubjectClass.AUDITOR,
    SubjectClass.SERVICE,
)
"""Classes applications are made for, each needing a profile: without one an approval
handed out a code for no profile, and a development CA failed half-made (its RA officers
and auditors are enrolled with the first profile of their class)."""


NAME_ATTRIBUTES: Mapping[str, ObjectIdentifier] = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "organizationIdentifier": NameOID.ORGANIZATION_IDENTIFIER,
    "dnQualifier": NameOID.DN_QUALIFIER,
}

KEY_USAGES = (
    "digitalSignature",
    "contentCommitment",
    "keyEncipherment",
    "dataEncipherment",
    "keyAgreement",
    "keyCertSign",
    "cRLSign",
)

EXTENDED_KEY_USAGES: Mapping[str, ObjectIdentifier] = {
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}

TEMPLATE_FIELDS = frozenset(
    {
        "uscc",
        "legal_name",
        "operator_name",
        "operator_id",
        "agency_id",
        "agency_name",
        "person_name",
        "service_host",
        "ca_name",
        "authorization",
    }
)

_EXAMPLE_PROFILE = {
    SubjectClass.ENTERPRISE: "enterprise",
    SubjectClass.OPERATOR: "operator",
    SubjectClass.AGENCY: "agency",
    SubjectClass.AUDITOR: "auditor",
    SubjectClass.SERVICE: "service-tls",
}


PRINTABLE_STRING = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]+")
"""X.680's PrintableString characters: an operator id (the certificate's serialNumber)
and an authorization (its dnQualifier) are made of them alone."""


def authorization_label(application_id: str) -> str:
    """The ``{authorization}`` template field of a certificate issued on the application
    ``application_id``: the id without its ``app_`` prefix (a PrintableString, as
    dnQualifier must be). The operator profile puts it in the subject's dnQualifier
    (X.520: disambiguating information for names that would otherwise be the same): it
    names the enterprise's authorization of that operator. Renewals keep it; authorizing
    the operator id again (another person, or after a cessation) gives another, so the
    token service binds an operator's roles to it, not to the bare operator id."""
    return application_id.removeprefix("app_")


def authorization_of(cert: x509.Certificate) -> str | None:
    """The subject's dnQualifier (:func:`authorization_label`); None when it has none (a
    profile without it, or a certificate issued before it existed)."""
    values = cert.subject.get_attributes_for_oid(NameOID.DN_QUALIFIER)
    if len(values) != 1 or not isinstance(values[0].value, str) or not values[0].value:
        return None
    return values[0].value


_OID_RE = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_ID_RE = re.compile(r"[a-z][a-z0-9-]{1,31}")


@dataclass(frozen=True)
class Profile:
    """A certificate profile (RFC 5280 §4): what the CA puts in a certificate of one kind."""

    name: str
    """The file's stem, e.g. ``enterprise``; what ``--profile`` names."""
    description: str
    subject_class: SubjectClass
    """Which applications (and enrollment codes) this profile serves."""
    issuer: str
    """The issuing CA id that signs it (``root`` for issuing CAs)."""
    validity: datetime.timedelta
    key_types: frozenset[KeyType]
    key_usage: frozenset[str]
    """RFC 5280 §4.2.1.3 bits, always critical."""
    extended_key_usage: tuple[ObjectIdentifier, ...]
    policy_oids: tuple[ObjectIdentifier, ...]
    """certificatePolicies (§4.2.1.4); the first OID identifies the profile, hence the role."""
    subject: tuple[tuple[ObjectIdentifier, str], ...]
    """(attribute, template) pairs; templates are filled from vetted data only."""
    san_dns: tuple[str, ...] = ()
    ca: bool = False
    path_length: int | None = None
    ocsp_nocheck: bool = False
    """id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1), for delegated OCSP responders."""
    status_urls: bool = True
    """Whether certificates carry AIA (OCSP, caIssuers) and CRL distribution points."""

    @property
    def role_oid(self) -> ObjectIdentifier:
        return self.policy_oids[0]

    def template_fields(self) -> frozenset[str]:
        fields: set[str] = set()
        for _, tmpl in self.subject:
            fields.update(_placeholders(tmpl))
        for tmpl in self.san_dns:
            fields.update(_placeholders(tmpl))
        return frozenset(fields)

    def build_subject(self, vetted: Mapping[str, str]) -> x509.Name:
        """The subject DN from vetted data (never from a CSR); UTF8String except C."""
        attrs = []
        for oid, tmpl in self.subject:
            value = tmpl.format_map(_Strict(vetted))
            if not value.strip():
                raise PolicyError(self.name, str(oid.dotted_string), "empty subject attribute")
            bound = UPPER_BOUNDS.get(oid)
            if bound is not None and len(value) > bound:
                raise PolicyError(
                    self.name, str(oid.dotted_string), f"longer than {bound} characters (X.520)"
                )
            attrs.append(_name_attribute(oid, value))
        return x509.Name(attrs)

    def build_dns_names(self, vetted: Mapping[str, str]) -> list[str]:
        return [t.format_map(_Strict(vetted)) for t in self.san_dns]


class _Strict(dict[str, str]):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


UPPER_BOUNDS = {NameOID.COMMON_NAME: 64, NameOID.ORGANIZATION_NAME: 64}
"""X.520 upper bounds (RFC 5280 Appendix A: ub-common-name, ub-organization-name) of
the subject attributes filled from an applicant's name. X.680 counts a UTF8String's size
in characters, not octets: 64 Chinese characters fit (192 bytes of UTF-8)."""


def _name_attribute(oid: ObjectIdentifier, value: str) -> x509.NameAttribute[str]:
    """The UTF8String attribute ``value``, within its upper bound in characters.

    cryptography counts commonName's bound of 64 in UTF-8 bytes and refuses a longer
    value, so a CN of 22 Chinese characters (66 bytes) would be refused though X.520
    allows 64 characters; such a value is made with that check off (its warning is
    silenced by :func:`ca.names.accept_names_up_to_64_characters`)."""
    if oid in UPPER_BOUNDS and len(value.encode()) > 64:
        return x509.NameAttribute(oid, value, _validate=False)
    return x509.NameAttribute(oid, value)


def _placeholders(tmpl: str) -> set[str]:
    """Every field ``tmpl`` fills, nested ones too; ``{}`` gives ``""``. Bad braces: ValueError."""
    fields: set[str] = set()
    for _, f, spec, _ in string.Formatter().parse(tmpl):
        if f is not None:
            fields.add(f)
            fields.update(_placeholders(spec or ""))
    return fields


def _check_template(r: _Reader, key: str, tmpl: str) -> None:
    try:
        bad = _placeholders(tmpl) - TEMPLATE_FIELDS
    except ValueError as exc:
        raise r.fail(key, f"malformed template {tmpl!r}: {exc}") from None
    if bad:
        raise r.fail(key, f"unknown template field {sorted(bad)[0]!r}")


@dataclass(frozen=True)
class Member:
    """A member agency: it runs an RA desk and names one root-key custodian."""

    id: str
    name: str
    custodian: str


@dataclass(frozen=True)
class Members:
    threshold: int
    members: tuple[Member, ...]

    def get(self, member_id: str) -> Member | None:
        for m in self.members:
            if m.id == member_id:
                return m
        return None


@dataclass(frozen=True)
class Policies:
    """Everything in ``policies/``, validated."""

    directory: Path
    profiles: Mapping[str, Profile]
    members: Members

    def profile(self, name: str) -> Profile:
        from ca.errors import UnknownProfile

        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles))
            raise UnknownProfile(f"unknown profile {name[:60]!r} (known: {known})") from None

    def profile_for_oid(self, oid: ObjectIdentifier) -> Profile | None:
        for p in self.profiles.values():
            if p.role_oid == oid:
                return p
        return None

    def profiles_of(self, cls: SubjectClass) -> list[Profile]:
        return [p for p in self.profiles.values() if p.subject_class is cls]


class _Reader:
    """Reads one TOML table and reports errors with the file and key."""

    def __init__(self, path: Path, data: Mapping[str, Any], prefix: str = "") -> None:
        self.path = path
        self.data = data
        self.prefix = prefix
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> PolicyError:
        return PolicyError(str(self.path), self.prefix + key, message)

    def get(self, key: str, typ: type, default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "required key is missing")
            return default
        value = self.data[key]
        if typ is int and isinstance(value, bool):
            raise self.fail(key, "expected an integer")
        if not isinstance(value, typ):
            raise self.fail(key, f"expected {typ.__name__}, got {type(value).__name__}")
        return value

    def strings(self, key: str, default: Any = ...) -> list[str]:
        value = self.get(key, list, default)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]", "expected a string")
        return list(value)

    def no_extra(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.fail(extra[0], "unknown key")


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(str(path), "-", f"not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (TOML 1.0 "Spec")
        raise PolicyError(str(path), "-", f"not UTF-8: byte {exc.start} is not valid") from None
    except IsADirectoryError:
        raise PolicyError(str(path), "-", "is a directory, not a TOML file") from None
    except FileNotFoundError:
        # a dangling symlink too: it was "unexpected error: FileNotFoundError", no path
        raise PolicyError(str(path), "-", "file not found") from None
    except OSError as exc:
        raise PolicyError(str(path), "-", f"cannot be read: {exc.strerror or exc}") from None


def load_profile(path: Path) -> Profile:
    r = _Reader(path, _load_toml(path))
    name = path.stem
    if not _ID_RE.fullmatch(name):
        raise r.fail("(file name)", "profile names are lower-case letters, digits and '-'")
    cls_name = r.get("subject_class", str)
    try:
        subject_class = SubjectClass(cls_name)
    except ValueError:
        known = ", ".join(c.value for c in SubjectClass)
        raise r.fail("subject_class", f"unknown class {cls_name!r} (known: {known})") from None
    days = r.get("validity_days", int)
    if not 1 <= days <= 9132:
        raise r.fail("validity_days", "must be between 1 and 9132 days")
    key_types: set[KeyType] = set()
    for i, kt in enumerate(r.strings("key_types")):
        try:
            key_types.add(KeyType(kt))
        except ValueError:
            known = ", ".join(k.value for k in KeyType)
            raise r.fail(
                f"key_types[{i}]",
                f"key type {kt!r} is not allowed (known: {known}; no RSA below 2048, no P-192)",
            ) from None
    if not key_types:
        raise r.fail("key_types", "at least one key type is required")
    usages = r.strings("key_usage")
    for i, ku in enumerate(usages):
        if ku not in KEY_USAGES:
            raise r.fail(f"key_usage[{i}]", f"unknown key usage {ku!r}")
    if not usages:
        raise r.fail("key_usage", "at least one key usage is required (RFC 5280 §4.2.1.3)")
    ekus = []
    for i, e in enumerate(r.strings("extended_key_usage", [])):
        if e not in EXTENDED_KEY_USAGES:
            raise r.fail(f"extended_key_usage[{i}]", f"unknown extended key usage {e!r}")
        ekus.append(EXTENDED_KEY_USAGES[e])
    oids = []
    for i, o in enumerate(r.strings("policy_oids")):
        if not _OID_RE.fullmatch(o):
            raise r.fail(f"policy_oids[{i}]", f"{o!r} is not a dotted OID")
        try:
            oids.append(ObjectIdentifier(o))
        except ValueError:  # e.g. a second arc above 39 under arcs 0 and 1 (X.660)
            raise r.fail(f"policy_oids[{i}]", f"{o!r} is not a valid OID") from None
    if not oids:
        raise r.fail("policy_oids", "the first policy OID names the profile's role")
    subject: list[tuple[ObjectIdentifier, str]] = []
    for i, pair in enumerate(r.get("subject", list)):
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise r.fail(f"subject[{i}]", "expected [attribute, template]")
        attr, tmpl = pair
        if attr not in NAME_ATTRIBUTES:
            raise r.fail(f"subject[{i}]", f"unknown attribute {attr!r}")
        _check_template(r, f"subject[{i}]", tmpl)
        subject.append((NAME_ATTRIBUTES[attr], tmpl))
    if not subject:
        raise r.fail("subject", "a subject template is required")
    san = r.strings("san_dns", [])
    for i, tmpl in enumerate(san):
        _check_template(r, f"san_dns[{i}]", tmpl)
    is_ca = r.get("ca", bool, False)
    path_length = r.get("path_length", int, None)
    if is_ca and ("keyCertSign" not in usages):
        raise r.fail("key_usage", "a CA profile needs keyCertSign")
    if not is_ca and ({"keyCertSign", "cRLSign"} & set(usages)):
        raise r.fail("key_usage", "keyCertSign/cRLSign are for CA profiles only")
    if not is_ca and path_length is not None:
        raise r.fail("path_length", "only CA profiles have a path length")
    if path_length is not None and path_length < 0:
        raise r.fail("path_length", "must be 0 or more (RFC 5280 §4.2.1.9)")
    issuer = r.get("issuer", str)
    if not is_ca and issuer == "root":
        # the root signs issuing CAs only, at a quorum ceremony, never an end entity
        raise r.fail("issuer", "root signs CA profiles only: name an issuing CA id")
    if issuer not in ("root", EVERY_ISSUER) and not _ID_RE.fullmatch(issuer):
        raise r.fail(
            "issuer", f"{issuer[:40]!r} is not an issuing CA id (lower-case letters, digits, '-')"
        )
    if issuer == EVERY_ISSUER and subject_class is not SubjectClass.RESPONDER:
        raise r.fail("issuer", "'*' (every issuing CA) is for OCSP responder profiles only")
    profile = Profile(
        name=name,
        description=r.get("description", str, ""),
        subject_class=subject_class,
        issuer=issuer,
        validity=datetime.timedelta(days=days),
        key_types=frozenset(key_types),
        key_usage=frozenset(usages),
        extended_key_usage=tuple(ekus),
        policy_oids=tuple(oids),
        subject=tuple(subject),
        san_dns=tuple(san),
        ca=is_ca,
        path_length=path_length,
        ocsp_nocheck=r.get("ocsp_nocheck", bool, False),
        status_urls=r.get("status_urls", bool, True),
    )
    if (
        subject_class is SubjectClass.OPERATOR
        and (
            NameOID.DN_QUALIFIER,
            "{authorization}",
        )
        not in profile.subject
    ):
        # The token service binds an operator's roles to it, read from the dnQualifier
        # alone: without it, the next person given an operator id got the roles granted
        # to the one before (roles probe, session 27: an operator.toml kept from an
        # earlier release, accepted silently; review: {authorization} elsewhere)
        raise r.fail(
            "subject",
            'an operator profile names its authorization: add ["dnQualifier", '
            '"{authorization}"] (the token service binds operators\' roles to it)',
        )
    r.no_extra()
    return profile


def load_members(path: Path) -> Members:
    r = _Reader(path, _load_toml(path))
    threshold = r.get("threshold", int)
    members: list[Member] = []
    seen: set[str] = set()
    for i, raw in enumerate(r.get("member", list)):
        if not isinstance(raw, dict):
            raise r.fail(f"member[{i}]", "expected a table")
        m = _Reader(path, raw, prefix=f"member[{i}].")
        mid = m.get("id", str)
        if not _ID_RE.fullmatch(mid):
            raise m.fail("id", "member ids are lower-case letters, digits and '-'")
        if mid in seen:
            raise m.fail("id", f"duplicate member id {mid!r}")
        seen.add(mid)
        custodian = m.get("custodian", str)
        if not custodian.strip():
            raise m.fail("custodian", "names the person who holds this member's share")
        held_by = next((o.id for o in members if o.custodian.strip() == custodian.strip()), None)
        if held_by is not None:
            raise m.fail(
                "custodian",
                f"{custodian!r} is also {held_by}'s custodian: one person would hold two "
                "shares of the root key",
            )
        members.append(Member(id=mid, name=m.get("name", str), custodian=custodian))
        m.no_extra()
    r.no_extra()
    if not members:
        raise r.fail("member", "at least one member agency is required")
    if len(members) > 255:
        raise r.fail("member", "at most 255 member agencies (the root key's shares are 1..255)")
    if not 1 <= threshold <= len(members):
        raise r.fail("threshold", f"must be between 1 and the number of members ({len(members)})")
    return Members(threshold=threshold, members=tuple(members))


def load_policies(directory: Path) -> Policies:
    """Load and validate ``members.toml`` and ``profiles/*.toml`` under ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        said = "does not exist" if not directory.exists() else "is not a directory"
        raise PolicyError(str(directory), "-", f"the policies directory {said}")
    members = load_members(directory / "members.toml")
    profiles: dict[str, Profile] = {}
    oids: dict[ObjectIdentifier, str] = {}
    files = sorted((directory / "profiles").glob("*.toml"))
    if not files:
        raise PolicyError(str(directory / "profiles"), "-", "no profile files")
    for path in files:
        p = load_profile(path)
        if p.role_oid in oids:
            raise PolicyError(
                str(path), "policy_oids[0]", f"same role OID as profile {oids[p.role_oid]!r}"
            )
        oids[p.role_oid] = p.name
        profiles[p.name] = p
    for p in profiles.values():
        if p.ca and p.issuer != "root":
            raise PolicyError(
                f"{directory}/profiles/{p.name}.toml", "issuer", "CAs are signed by root"
            )
    for name, cls in REQUIRED_PROFILES.items():
        if name not in profiles:
            raise PolicyError(
                str(directory / "profiles"), name, f"the {name} profile is required ({name}.toml)"
            )
        if profiles[name].subject_class is not cls:
            raise PolicyError(
                f"{directory}/profiles/{name}.toml",
                "subject_class",
                f"the {name} profile is of class {cls.value!r}",
            )
        if KeyType.P256 not in profiles[name].key_types:
            # said here, not by `eport ca init` or a development CA's start after they
            # began making keys (settings probe, session 22)
            raise PolicyError(
                f"{directory}/profiles/{name}.toml",
                "key_types",
                "must allow p256: the CA makes its issuing CA and OCSP responder keys "
                "P-256 (other key types for them are not supported)",
            )
    for cls in REQUIRED_CLASSES:
        if not any(p.subject_class is cls for p in profiles.values()):
            raise PolicyError(
                str(directory / "profiles"),
                cls.value,
                f"no profile of subject class {cls.value!r}: one is required "
                f"(the repository's is profiles/{_EXAMPLE_PROFILE[cls]}.toml)",
            )
    return Policies(directory=directory, profiles=profiles, members=members)
