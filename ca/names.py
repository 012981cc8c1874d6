"""Distinguished names as people read them (RFC 4514, with readable attribute names),
the member agency an officer's or auditor's organizationIdentifier names, and names as
the CA compares them (RFC 5280 §7.1, RFC 4518) and admits them (nothing unseen)."""

from __future__ import annotations

import unicodedata
import warnings

from cryptography import x509
from cryptography.x509.oid import NameOID

_DN_NAMES = {
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.DN_QUALIFIER: "dnQualifier",
}


def dn_string(name: x509.Name) -> str:
    """RFC 4514 string with readable names for organizationIdentifier, serialNumber and
    dnQualifier."""
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


# -- names as the CA compares and admits them ------------------------------------------------

DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x115F, 0x1160),  # HANGUL CHOSEONG FILLER..HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ..AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR
    (0x200B, 0x200F),  # ZERO WIDTH SPACE..RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x206F),  # WORD JOINER..NOMINAL DIGIT SHAPES (U+2065 unassigned)
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1..16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE (BOM)
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # unassigned
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT LETTER OVERLAP..UP STEP
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN BEAM..END PHRASE
    (0xE0000, 0xE0FFF),  # tags, VARIATION SELECTOR-17..256, unassigned
)
"""Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt, Unicode 14
to 16): characters a renderer shows as nothing when it has no glyph for them (UAX #44
§5.7.2). Many are format (Cf) or unassigned (Cn) characters, which names refuse by
category anyway; the others are letters (the Hangul fillers) and marks (variation
selectors, U+034F) that a category check lets through."""

BLANK_LOOKING = frozenset({0x115F, 0x1160, 0x2800, 0x3164, 0xFFA0})
"""Characters that are letters or symbols by category but are drawn as an empty space:
the Hangul fillers (also default-ignorable) and U+2800 BRAILLE PATTERN BLANK. A name of
them alone is certified as a blank ``CN``; inside one, they tell two names apart that
read the same."""

HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Unicode categories refused in names: controls (C0 and C1), format characters (bidi
overrides, zero-width ones, BOM), surrogates, private-use and unassigned code points,
line and paragraph separators."""


def _default_ignorable(code: int) -> bool:
    return any(low <= code <= high for low, high in DEFAULT_IGNORABLE)


def hidden_character(text: str) -> str | None:
    """The first character of ``text`` that a reader cannot see: one of
    :data:`HIDDEN_CATEGORIES`, a Default_Ignorable_Code_Point or :data:`BLANK_LOOKING`;
    None if every character shows (blanks show as blanks)."""
    for ch in text:
        code = ord(ch)
        if (
            unicodedata.category(ch) in HIDDEN_CATEGORIES
            or code in BLANK_LOOKING
            or _default_ignorable(code)
        ):
            return ch
    return None


def code_point(ch: str) -> str:
    """``ch`` as a reader of an error can look it up: ``U+3164 HANGUL FILLER``."""
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X} {name}" if name else f"U+{ord(ch):04X}"


def _ideograph(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(
        ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")
    )


def name_key(name: str) -> str:
    """The form in which two names are one name to a relying party, RFC 4518's string
    preparation (LDAP caseIgnoreMatch, which X.520 names follow: RFC 5280 §7.1) for
    Unicode: compatibility forms normalized (NFKC: full-width ``Ｌｉ`` is ``Li``, KANGXI
    RADICAL WORK U+2F2F is 工 U+5DE5), case folded (``str.casefold``), characters that show
    as nothing dropped (§2.2, "mapped to nothing"), and blanks collapsed to one (§2.6.1,
    insignificant space handling; U+3000 is a blank). A blank between two ideographs is
    dropped too: a two-character Chinese name is often written with an ideographic space
    in the middle to line it up with three-character ones (李　伟 is 李伟).

    Used to compare, never to store: the name certified is the one the applicant typed
    (NFC), since the compatibility forms are official ones too (full-width parentheses
    （） in a registered Chinese company name)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    shown = "".join(
        " " if ch.isspace() else ch
        for ch in folded
        if not (_default_ignorable(ord(ch)) or ord(ch) in BLANK_LOOKING)
    )
    key = ""
    for word in shown.split():
        if key and not (_ideograph(key[-1]) and _ideograph(word[0])):
            key += " "
        key += word
    return key


_DN_ATTRIBUTES = {label: oid for oid, label in _DN_NAMES.items()}


def _parsed(dn: str) -> x509.Name | None:
    try:
        return x509.Name.from_rfc4514_string(dn, _DN_ATTRIBUTES)
    except ValueError:  # not written by dn_string
        return None


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.hex()


def dn_key(dn: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The distinguished name ``dn`` (as :func:`dn_string` writes it) in the form in
    which two are one name to a relying party: each attribute's value as
    :func:`name_key` (RFC 4517 §4.2.15 distinguishedNameMatch compares each value by its
    own matching rule, caseIgnoreMatch for the directory strings of our subjects)."""
    name = _parsed(dn)
    if name is None:  # compared as one string
        return (((dn, name_key(dn)),),)
    return tuple(
        tuple(sorted((a.oid.dotted_string, name_key(_text(a.value))) for a in rdn))
        for rdn in name.rdns
    )


def spelled_apart(dn: str, other: str) -> list[tuple[str, str]]:
    """The values of ``dn`` and ``other`` (of one :func:`dn_key`) that are written
    differently, as pairs (``dn``'s, ``other``'s): what an RA officer is shown when a name
    is refused as another's."""
    mine, theirs = _parsed(dn), _parsed(other)
    if mine is None or theirs is None:
        return [] if dn == other else [(dn, other)]
    pairs = []
    for rdn, other_rdn in zip(mine.rdns, theirs.rdns, strict=False):
        for a, b in zip(
            sorted(rdn, key=lambda a: a.oid.dotted_string),
            sorted(other_rdn, key=lambda a: a.oid.dotted_string),
            strict=False,
        ):
            if a.value != b.value:
                pairs.append((_text(a.value), _text(b.value)))
    return pairs


def marked(name: str, beside: str) -> str:
    """``name`` with each character that is not ASCII and not in ``beside`` shown by its
    code point: ``王<U+2F2F KANGXI RADICAL WORK>`` beside ``王工``, so that a look-alike
    (or an invisible character in a name certified before they were refused) shows."""
    return "".join(ch if ch.isascii() or ch in beside else f"<{code_point(ch)}>" for ch in name)
