"""Signed checkpoints: ca/checkpoint.py signs, and both it and cli/auditproof.py verify.

External anchors: the golang.org/x/mod/sumdb/note example (key, text and the exact
signed note, reproduced byte for byte since Ed25519 is deterministic) and the
published sum.golang.org verifier key, whose key ID must come out as 033de0ae.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from ca import checkpoint as cp
from ca.checkpoint import Checkpoint, CheckpointError
from ca.errors import EPortError
from ca.signer import SoftwareSigner
from cli import auditproof

# golang.org/x/mod/sumdb/note, package documentation example (note.go) and note_test.go.
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + (
        "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgK"
        "vqfqdngotpRZb6KE6RyyBwJnAM=\n"
    ).encode()
)
# The Go checksum database's published verifier key (cmd/go, GOSUMDB default).
SUMDB_VERIFIER_KEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"

# RFC 8032 §7.1 TEST 1 key pair.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")

ORIGIN = "eport.example/log"
ROOT = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")


def go_private_key() -> Ed25519PrivateKey:
    encoded = GO_SIGNER_KEY.split("+", 4)[4]
    raw = base64.b64decode(encoded)
    assert raw[0] == 0x01
    return Ed25519PrivateKey.from_private_bytes(raw[1:])


def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)


def signed(checkpoint: Checkpoint, name: str = ORIGIN) -> bytes:
    return cp.sign_note(checkpoint.body(), name, log_key())


def both_reject(note: bytes, name: str = ORIGIN, public: Ed25519PublicKey | None = None) -> None:
    public = public or log_key().public_key()
    with pytest.raises(CheckpointError):
        cp.verify_note(note, name, public)
    with pytest.raises(auditproof.CheckpointError):
        auditproof.verify_checkpoint(note, cp.verifier_key(name, public))


# -- key IDs and verifier keys -------------------------------------------------------------


def test_key_id_matches_a_hand_computed_value() -> None:
    public = log_key().public_key()
    assert public.public_bytes_raw() == RFC8032_PUBLIC
    # SHA-256("eport.example/log" || 0x0A || 0x01 || public key)[:4], worked out by hand once:
    assert (
        hashlib.sha256(ORIGIN.encode() + b"\n\x01" + RFC8032_PUBLIC).digest()[:4].hex()
        == "0e69b742"
    )
    assert cp.key_id(ORIGIN, public) == bytes.fromhex("0e69b742")
    assert cp.verifier_key(ORIGIN, public) == (
        "eport.example/log+0e69b742+AddamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea"
    )


def test_published_verifier_keys_parse_with_their_key_ids() -> None:
    for text, name, hex_id in [
        (GO_VERIFIER_KEY, "PeterNeumann", "c74f20a3"),
        (SUMDB_VERIFIER_KEY, "sum.golang.org", "033de0ae"),
    ]:
        parsed_name, public = cp.parse_verifier_key(text)
        assert parsed_name == name
        assert cp.key_id(name, public).hex() == hex_id
        assert cp.verifier_key(name, public) == text
        key = auditproof.VerifierKey.parse(text)
        assert (key.name, key.key_id.hex(), str(key)) == (name, hex_id, text)
    assert cp.verifier_key("PeterNeumann", go_private_key().public_key()) == GO_VERIFIER_KEY


@pytest.mark.parametrize(
    "text",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong ID
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper-case hex
        "PeterNeumanm+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong name
        "PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # type 0x02
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # bad base64
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_mangled_verifier_keys_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        cp.parse_verifier_key(text)
    with pytest.raises(auditproof.CheckpointError):
        auditproof.VerifierKey.parse(text)


# -- the signed-note format ----------------------------------------------------------------


def test_go_sumdb_note_is_reproduced_byte_for_byte() -> None:
    note = cp.sign_note(GO_TEXT, "PeterNeumann", go_private_key())
    assert note == GO_NOTE
    _, public = cp.parse_verifier_key(GO_VERIFIER_KEY)
    assert cp.open_note(GO_NOTE, "PeterNeumann", public) == GO_TEXT
    assert auditproof.open_note(GO_NOTE, auditproof.VerifierKey.parse(GO_VERIFIER_KEY)) == GO_TEXT


def test_signature_line_covers_the_exact_text_bytes() -> None:
    checkpoint = Checkpoint(ORIGIN, 8, ROOT)
    body = checkpoint.body()
    assert body == b"eport.example/log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    note = signed(checkpoint)
    assert note.startswith(body + b"\n\xe2\x80\x94 eport.example/log ")  # blank line, U+2014, space
    assert note.endswith(b"\n") and note.count(b"\n") == 5
    blob = base64.b64decode(note[len(body) + 1 :].decode().split(" ")[2])
    assert len(blob) == 4 + 64
    assert blob[:4] == bytes.fromhex("0e69b742")
    log_key().public_key().verify(blob[4:], body)  # raises if not over exactly the body
    assert blob[4:] == log_key().sign(body)  # Ed25519 is deterministic (RFC 8032)


def test_checkpoint_round_trip_through_both_verifiers() -> None:
    checkpoint = Checkpoint(ORIGIN, 1_000_000, ROOT, ("ext one", "ext two"))
    note = signed(checkpoint)
    assert cp.verify_note(note, ORIGIN, log_key().public_key(), origin=ORIGIN) == checkpoint
    seen = auditproof.verify_checkpoint(
        note, cp.verifier_key(ORIGIN, log_key().public_key()), origin=ORIGIN
    )
    assert (seen.origin, seen.size, seen.root_hash, seen.extensions) == (
        ORIGIN,
        1_000_000,
        ROOT,
        ("ext one", "ext two"),
    )


def test_other_signatures_are_ignored_but_a_bad_one_by_the_log_key_is_not() -> None:
    checkpoint = Checkpoint(ORIGIN, 8, ROOT)
    note = signed(checkpoint)
    witness = cp.sign_note(checkpoint.body(), "witness.example", Ed25519PrivateKey.generate())
    witness_line = witness[len(checkpoint.body()) + 1 :]
    cosigned = note + witness_line
    same_name_other_key = cp.sign_note(checkpoint.body(), ORIGIN, Ed25519PrivateKey.generate())
    rotated = note + same_name_other_key[len(checkpoint.body()) + 1 :]
    for accepted in (
        cosigned,
        rotated,
        checkpoint.body() + b"\n" + witness_line + note[len(checkpoint.body()) + 1 :],
    ):
        assert cp.verify_note(accepted, ORIGIN, log_key().public_key()) == checkpoint
        auditproof.verify_checkpoint(accepted, cp.verifier_key(ORIGIN, log_key().public_key()))
    # Same name and key ID but a signature that does not verify: the whole note is rejected.
    line = note[len(checkpoint.body()) + 1 :].decode()
    prefix, blob = line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[10] ^= 1
    forged = f"{prefix} {base64.b64encode(bytes(raw)).decode()}\n".encode()
    both_reject(note + forged)
    both_reject(cosigned.replace(note[len(checkpoint.body()) + 1 :], b""))  # witness only


def test_tampered_size_root_or_origin_is_rejected() -> None:
    checkpoint = Checkpoint(ORIGIN, 8, ROOT)
    note = signed(checkpoint)
    other_root = base64.b64encode(bytes(32)).decode().encode()
    for tampered in [
        note.replace(b"\n8\n", b"\n9\n", 1),
        note.replace(b"\n8\n", b"\n08\n", 1),
        note.replace(base64.b64encode(ROOT), other_root, 1),
        note.replace(b"eport.example/log\n", b"eport.example/lag\n", 1),
        b"x" + note,
        note.replace(b"\n\n", b"\nextension\n\n", 1),
    ]:
        assert tampered != note
        both_reject(tampered)


def test_wrong_key_or_wrong_name_is_rejected() -> None:
    note = signed(Checkpoint(ORIGIN, 8, ROOT))
    both_reject(note, ORIGIN, Ed25519PrivateKey.generate().public_key())
    both_reject(note, "eport.example/other")
    with pytest.raises(CheckpointError, match="no signature by"):
        cp.verify_note(note, ORIGIN, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(CheckpointError, match="not the expected"):
        cp.verify_note(note, ORIGIN, log_key().public_key(), origin="eport.example/else")
    with pytest.raises(auditproof.CheckpointError, match="not the expected"):
        auditproof.verify_checkpoint(
            note, cp.verifier_key(ORIGIN, log_key().public_key()), origin="eport.example/else"
        )


def test_malformed_notes_are_rejected() -> None:
    body = Checkpoint(ORIGIN, 8, ROOT).body()
    note = signed(Checkpoint(ORIGIN, 8, ROOT))
    sig_line = note[len(body) + 1 :]
    too_many = note + sig_line.replace(ORIGIN.encode(), b"w.example", 1) * cp.MAX_SIGNATURES
    for bad in [
        body,  # no signatures at all
        note[:-1],  # last signature line not terminated
        note.replace(b"\n\n", b"\n", 1),  # no blank line
        note.replace("\u2014".encode(), b"-", 1),  # hyphen instead of em dash
        note.replace("\u2014 ".encode(), "\u2014".encode(), 1),  # no space after the dash
        note + b"not a signature\n",
        note[:-2] + b"!\n",  # bad base64
        note.replace(b"\n8\n", b"\n8\r\n", 1),  # control character
        note.replace(b"eport", b"\xffport", 1),  # not UTF-8
        note + "\u2014 w.example AAAA\n".encode(),  # signature shorter than a key ID + 1
        too_many,
    ]:
        both_reject(bad)


# -- the checkpoint body (C2SP tlog-checkpoint) --------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"eport.example/log\n8\n",  # two lines
        b"eport.example/log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=",  # no final newline
        b"\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",  # empty origin
        b"eport.example/log\n08\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",  # leading zero
        b"eport.example/log\n+8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
        b"eport.example/log\n-1\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
        "eport.example/log\n\u0668\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n".encode(),
        b"eport.example/log\n18446744073709551616\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
        b"eport.example/log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg\n",  # no padding
        b"eport.example/log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyh=\n",  # not canonical
        b"eport.example/log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz-Nw7_RgQyg=\n",  # URL alphabet
        b"eport.example/log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQw==\n",  # 31 bytes
        # an empty extension line
        b"eport.example/log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n",
        b"eport.example/log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\na\n\nb\n",
        b"eport.example/log\n8\xff\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
    ],
)
def test_malformed_checkpoint_bodies_are_rejected(body: bytes) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(body)


def test_largest_tree_size_parses() -> None:
    body = (
        b"eport.example/log\n18446744073709551615\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    )
    assert Checkpoint.parse(body).size == (1 << 64) - 1
    assert Checkpoint.parse(body.replace(b"18446744073709551615", b"0")).size == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": ""},
        {"origin": "two\nlines"},
        {"origin": "tab\there"},
        {"size": -1},
        {"size": 1 << 64},
        {"size": True},
        {"root_hash": ROOT[:31]},
        {"extensions": ("",)},
        {"extensions": ("a\nb",)},
    ],
)
def test_checkpoint_values_check_their_own_rules(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"origin": ORIGIN, "size": 8, "root_hash": ROOT, **kwargs}
    with pytest.raises(CheckpointError):
        Checkpoint(**fields)  # type: ignore[arg-type]


_line = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), min_size=1
).filter(lambda s: not any(ord(c) < 0x20 for c in s))


@given(
    origin=_line,
    size=st.integers(0, (1 << 64) - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_line, max_size=3).map(tuple),
)
def test_checkpoint_body_round_trip(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    checkpoint = Checkpoint(origin, size, root, extensions)
    assert Checkpoint.parse(checkpoint.body()) == checkpoint
    note = signed(checkpoint)
    assert cp.verify_note(note, ORIGIN, log_key().public_key()) == checkpoint
    seen = auditproof.verify_checkpoint(note, cp.verifier_key(ORIGIN, log_key().public_key()))
    assert (seen.origin, seen.size, seen.root_hash, seen.extensions) == (
        origin,
        size,
        root,
        extensions,
    )


# -- signers: any key behind a sign() -----------------------------------------------------


class TokenKey:
    """Stands for a PKCS#11 token: it only exposes sign() and public_key()."""

    def __init__(self, key: Ed25519PrivateKey, *, faulty: bool = False) -> None:
        self._key = key
        self._faulty = faulty
        self.signed: list[bytes] = []

    def sign(self, data: bytes) -> bytes:
        self.signed.append(data)
        signature = self._key.sign(data)
        return bytes(64) if self._faulty else signature

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()


def test_any_key_object_can_sign() -> None:
    body = Checkpoint(ORIGIN, 8, ROOT).body()
    token = TokenKey(log_key())
    assert cp.sign_note(body, ORIGIN, token) == signed(Checkpoint(ORIGIN, 8, ROOT))
    assert token.signed == [body]
    assert cp.sign_note(body, ORIGIN, SoftwareSigner(log_key())) == signed(
        Checkpoint(ORIGIN, 8, ROOT)
    )


def test_signing_refuses_what_nobody_could_verify() -> None:
    body = Checkpoint(ORIGIN, 8, ROOT).body()
    with pytest.raises(CheckpointError, match="does not verify"):
        cp.sign_note(body, ORIGIN, TokenKey(log_key(), faulty=True))
    with pytest.raises(CheckpointError, match="Ed25519"):
        cp.sign_note(body, ORIGIN, generate_private_key(SECP256R1()))  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="newline"):
        cp.sign_note(body[:-1], ORIGIN, log_key())
    with pytest.raises(CheckpointError, match="control"):
        cp.sign_note(b"a\tb\n", ORIGIN, log_key())
    for name in ("", "a b", "a+b", "a\u00a0b"):
        with pytest.raises(CheckpointError, match="key name"):
            cp.sign_note(body, name, log_key())


def test_checkpoint_error_is_a_problem_document() -> None:
    with pytest.raises(CheckpointError) as info:
        Checkpoint.parse(b"nope\n")
    assert isinstance(info.value, EPortError)
    problem = info.value.problem()
    assert problem["status"] == 400
    assert problem["type"] == "urn:eport:problem:invalid-checkpoint"
