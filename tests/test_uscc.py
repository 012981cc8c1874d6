"""GB 32100-2015 Unified Social Credit Code: alphabet, length, division code, check character."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.errors import BadRequest, InvalidUSCC
from ca.uscc import ALPHABET, USCC, check_character

# A published code (Fujian), and the check character GB 32100-2015 Annex B gives it.
KNOWN_VALID = "91350100M000100Y43"

FORBIDDEN = "IOSVZ"


def with_check(body: str) -> str:
    return body + check_character(body)


def test_alphabet_is_the_31_symbols_of_the_standard() -> None:
    assert len(ALPHABET) == 31
    assert len(set(ALPHABET)) == 31
    assert set(ALPHABET).isdisjoint(FORBIDDEN)
    assert ALPHABET[:10] == "0123456789"


def test_known_valid_code_parses() -> None:
    code = USCC(KNOWN_VALID)
    assert code.value == KNOWN_VALID
    assert str(code) == KNOWN_VALID
    assert check_character(KNOWN_VALID[:17]) == "3"


def test_check_character_worked_example() -> None:
    # Weighted sum of 91350100M000100Y4 with weights 3^i mod 31 is 648; 648 mod 31 = 28;
    # 31 - 28 = 3.
    assert check_character("91350100M000100Y4") == "3"
    # When the sum is a multiple of 31 the check character is "0", not ALPHABET[31].
    assert check_character("0" * 17) == "0"


def test_check_character_known_vectors() -> None:
    # Body of all "1": the sum of the weights 3^i mod 31 is 305 = 9*31 + 26 -> 31 - 26 = 5.
    assert check_character("1" * 17) == "5"
    # A single "Y" (value 30) first: 30*1 = 30 -> 31 - 30 = 1.
    assert check_character("Y" + "0" * 16) == "1"
    # A single "1" at the last position: weight 28 -> 31 - 28 = 3.
    assert check_character("0" * 16 + "1") == "3"


@pytest.mark.parametrize("first", ["N", "Y", "1", "5", "9", "A", "G"])
def test_registration_authority_letters_are_accepted(first: str) -> None:
    # python-stdnum refuses a letter in the first position; the standard allows it
    # (N: rural economic organizations, Y: other registration authorities).
    code = with_check(first + "1" + "110000" + "MA0000000")
    assert len(code) == 18
    assert USCC(code).value == code


def test_parse_strips_and_upper_cases() -> None:
    assert USCC.parse("  91350100m000100y43\n").value == KNOWN_VALID
    assert USCC.parse(KNOWN_VALID) == USCC(KNOWN_VALID)


def test_parse_reads_full_width_forms_as_ascii() -> None:
    """A Chinese input method in full-width mode types ９１３５…; such a code is the
    same code. Other look-alikes (superscripts, circled digits) stay refused."""
    full = "".join(chr(ord(c) + 0xFEE0) for c in KNOWN_VALID)
    assert USCC.parse(f"\u3000{full}\u3000").value == KNOWN_VALID
    assert USCC.parse(full.lower()).value == KNOWN_VALID
    assert USCC.parse("９１３５０１００ｍ０００１００ｙ４３").value == KNOWN_VALID
    with pytest.raises(InvalidUSCC):
        USCC.parse("\u2460" + KNOWN_VALID[1:])


def test_uscc_is_frozen() -> None:
    code = USCC(KNOWN_VALID)
    with pytest.raises(AttributeError):
        code.value = "x"  # type: ignore[misc]


def test_invalid_uscc_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as info:
        USCC("")
    assert info.value.status == 400
    assert info.value.problem()["type"] == "urn:eport:problem:invalid-uscc"


def test_wrong_check_character() -> None:
    wrong = KNOWN_VALID[:17] + "4"
    with pytest.raises(InvalidUSCC, match=r"check character of .* is '4', GB 32100-2015 gives '3'"):
        USCC(wrong)


@pytest.mark.parametrize("bad", list(FORBIDDEN))
def test_forbidden_letters_are_refused(bad: str) -> None:
    code = KNOWN_VALID[:8] + bad + KNOWN_VALID[9:]
    with pytest.raises(InvalidUSCC, match=rf"character '{bad}' at position 9 .*not in the USCC"):
        USCC(code)


@pytest.mark.parametrize("bad", list(FORBIDDEN))
def test_forbidden_letters_are_refused_by_check_character(bad: str) -> None:
    with pytest.raises(InvalidUSCC, match=rf"character '{bad}' at position 1 "):
        check_character(bad + "0" * 16)


def test_lowercase_is_refused_without_parse() -> None:
    with pytest.raises(InvalidUSCC, match="'m' at position 9"):
        USCC(KNOWN_VALID.lower())
    # ...and parse upper-cases it into the valid code.
    assert USCC.parse(KNOWN_VALID.lower()).value == KNOWN_VALID


def test_lowercase_forbidden_letter_still_refused_after_parse() -> None:
    code = KNOWN_VALID[:8] + "o" + KNOWN_VALID[9:]
    with pytest.raises(InvalidUSCC, match="'O' at position 9"):
        USCC.parse(code)
    # the letter taken for the digit it looks like is named (new user walk-through)
    with pytest.raises(InvalidUSCC, match=r"\(did you mean '0'\?\)"):
        USCC.parse(code)
    with pytest.raises(InvalidUSCC, match=r"'I' at position 9 .*\(did you mean '1'\?\)"):
        USCC.parse(KNOWN_VALID[:8] + "I" + KNOWN_VALID[9:])


@pytest.mark.parametrize("bad", ["-", " ", "é", "０", "Ⅰ"])
def test_other_characters_are_refused(bad: str) -> None:
    with pytest.raises(InvalidUSCC, match="not in the USCC alphabet"):
        USCC(KNOWN_VALID[:10] + bad + KNOWN_VALID[11:])


@pytest.mark.parametrize(
    "text", ["", "9", KNOWN_VALID[:17], KNOWN_VALID + "0", KNOWN_VALID + KNOWN_VALID]
)
def test_wrong_length(text: str) -> None:
    with pytest.raises(InvalidUSCC, match=rf"a USCC has 18 characters, .* has {len(text)}"):
        USCC(text)


def test_check_character_needs_17_characters() -> None:
    with pytest.raises(InvalidUSCC, match=r"expected 17 characters .*got 16"):
        check_character("0" * 16)
    with pytest.raises(InvalidUSCC, match="got 18"):
        check_character(KNOWN_VALID)


@pytest.mark.parametrize("pos", range(2, 8))
def test_administrative_division_must_be_digits(pos: int) -> None:
    body = KNOWN_VALID[:pos] + "A" + KNOWN_VALID[pos + 1 : 17]
    # A correct check character, so only the division code is wrong.
    code = with_check(body)
    with pytest.raises(InvalidUSCC, match=r"administrative division code .* must be 6 digits"):
        USCC(code)


# --- properties ---------------------------------------------------------------------------

ALNUM = st.sampled_from(ALPHABET)
DIGIT = st.sampled_from("0123456789")
BODIES = st.tuples(
    st.text(ALNUM, min_size=2, max_size=2),
    st.text(DIGIT, min_size=6, max_size=6),
    st.text(ALNUM, min_size=9, max_size=9),
).map("".join)


@given(BODIES)
def test_any_body_with_its_check_character_parses(body: str) -> None:
    code = with_check(body)
    assert USCC(code).value == code
    assert USCC.parse(code.lower()).value == code


@given(BODIES, st.integers(min_value=0, max_value=17), st.integers(min_value=1, max_value=30))
def test_every_single_substitution_is_detected(body: str, pos: int, shift: int) -> None:
    code = with_check(body)
    # Another alphabet character: shifting the value by 1..30 modulo 31 never lands on itself.
    new = ALPHABET[(ALPHABET.index(code[pos]) + shift) % 31]
    assert new != code[pos]
    mutated = code[:pos] + new + code[pos + 1 :]
    with pytest.raises(InvalidUSCC):
        USCC(mutated)
    if pos < 17 and not (2 <= pos < 8 and not new.isdigit()):
        # The check character is what catches it (weights are invertible mod 31).
        assert check_character(mutated[:17]) != code[17]


@given(BODIES)
def test_check_character_is_in_alphabet(body: str) -> None:
    assert check_character(body) in ALPHABET
