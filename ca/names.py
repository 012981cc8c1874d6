"""Distinguished names as people read them (RFC 4514, with readable attribute names),
and the member agency an officer's or auditor's organizationIdentifier names."""

from __future__ import annotations

import warnings

from cryptography import x509
from cryptography.x509.oid import NameOID

_DN_NAMES = {
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    NameOID.SERIAL_NUMBER: "serialNumber",
}


def dn_string(name: x509.Name) -> str:
    """RFC 4514 string with readable names for organizationIdentifier and serialNumber."""
    return name.rfc4514_string(_DN_NAMES)


BYTE_COUNTED_NAME_WARNING = r"Attribute's length must be >= 1 and <= 64, but it was \d+"
"""The warning ``cryptography`` gives on reading a commonName of more than 64 UTF-8
bytes. X.520's ub-common-name (RFC 5280 Appendix A) counts characters, as pkilint and
zlint do: a CN of 22 to 64 Chinese characters (66 to 192 bytes) is well formed."""


def accept_names_up_to_64_characters() -> None:
    """Silence :data:`BYTE_COUNTED_NAME_WARNING` in this process (the CLI and both
    services call it first): each certificate of a long Chinese name read would otherwise
    print a warning on stderr. The CA bounds names in characters itself (``ca.policy``)."""
    warnings.filterwarnings("ignore", message=BYTE_COUNTED_NAME_WARNING, category=UserWarning)


AGENCY_ID_PREFIX = "GV:CN-"
"""organizationIdentifier of a member agency's people: ``GV:CN-<member id>``.

ETSI EN 319 412-1 §5.1.4 defines the legal-person schemes VAT, NTR, PSD and LEI, and
for any other identifier two characters of a national scheme followed by ``:``, then
the country and ``-`` and the reference; ``GV:`` is the joint CA's scheme for its
member agencies' ids (``policies/members.toml``)."""

LEGACY_AGENCY_ID_PREFIX = "GOVCN-"
"""The form agency and auditor certificates carried before ``GV:CN-``. "GOV" is no
ETSI scheme, and the CA/Browser Forum's S/MIME requirements define it without a
reference; such certificates are honoured until they expire."""


def member_agency_of(organization_identifier: str) -> str | None:
    """The member id in an agency officer's or auditor's organizationIdentifier, or
    None if it names no member agency."""
    for prefix in (AGENCY_ID_PREFIX, LEGACY_AGENCY_ID_PREFIX):
        if organization_identifier.startswith(prefix):
            return organization_identifier[len(prefix) :] or None
    return None
