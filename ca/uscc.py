"""The Unified Social Credit Code (统一社会信用代码), GB 32100-2015.

Eighteen characters from the 31-symbol alphabet ``0-9A-HJ-NP-RTUWXY`` (no I, O, S,
V, Z): registration authority (1), organization category (1), administrative
division (6, digits), organization code (9, with its own GB 11714 check character),
and a check character (1). The check character is computed modulo 31 with the
weights 3^i mod 31 (§4.4 and Annex B of the standard).

The first character may be a letter (e.g. ``N`` for rural economic organizations
or ``Y`` for other registrations), which some validators wrongly refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from ca.errors import InvalidUSCC

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
FULL_WIDTH_TO_ASCII = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
"""Full-width ASCII forms (and the ideographic space) to ASCII: what GB 32100-2015's
characters become when typed with a Chinese input method in full-width mode."""

_VALUE = {ch: i for i, ch in enumerate(ALPHABET)}
_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


_LOOKALIKE = {"O": "0", "I": "1", "Z": "2", "S": "5", "V": "U"}
"""The letters a USCC never has, by the character they are mistaken for."""


def _meant(ch: str) -> str:
    """`` (did you mean '0'?)`` for a letter a USCC never has that reads as one it has."""
    meant = _LOOKALIKE.get(ch)
    return f" (did you mean {meant!r}?)" if meant else ""


def check_character(body: str) -> str:
    """The GB 32100-2015 check character of the first 17 characters ``body``."""
    if len(body) != 17:
        raise InvalidUSCC(f"expected 17 characters before the check character, got {len(body)}")
    total = 0
    for i, ch in enumerate(body):
        try:
            total += _VALUE[ch] * _WEIGHTS[i]
        except KeyError:
            raise InvalidUSCC(
                f"character {ch!r} at position {i + 1} is not in the USCC alphabet "
                "0-9A-HJ-NP-RTUWXY" + _meant(ch)
            ) from None
    return ALPHABET[(31 - total % 31) % 31]


@dataclass(frozen=True, slots=True)
class USCC:
    """A Unified Social Credit Code whose alphabet, length and check character are valid."""

    value: str

    def __post_init__(self) -> None:
        v = self.value
        if len(v) != 18:
            raise InvalidUSCC(f"a USCC has 18 characters, {v!r} has {len(v)}")
        for i, ch in enumerate(v):
            if ch not in _VALUE:
                raise InvalidUSCC(
                    f"character {ch!r} at position {i + 1} of {v!r} is not in the USCC "
                    "alphabet 0-9A-HJ-NP-RTUWXY" + _meant(ch)
                )
        if not v[2:8].isdigit():
            raise InvalidUSCC(f"the administrative division code {v[2:8]!r} must be 6 digits")
        expected = check_character(v[:17])
        if v[17] != expected:
            raise InvalidUSCC(
                f"check character of {v!r} is {v[17]!r}, GB 32100-2015 gives {expected!r}"
            )

    @classmethod
    def parse(cls, text: str) -> USCC:
        """Parse user input: surrounding blanks are dropped, full-width forms (a Chinese
        input method's ９１３５…, U+FF01-FF5E) read as their ASCII letters and digits, and
        letters upper-cased."""
        return cls(text.translate(FULL_WIDTH_TO_ASCII).strip().upper())

    def __str__(self) -> str:
        return self.value
