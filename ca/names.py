"""Distinguished names as people read them (RFC 4514, with readable attribute names)."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

_DN_NAMES = {
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    NameOID.SERIAL_NUMBER: "serialNumber",
}


def dn_string(name: x509.Name) -> str:
    """RFC 4514 string with readable names for organizationIdentifier and serialNumber."""
    return name.rfc4514_string(_DN_NAMES)
