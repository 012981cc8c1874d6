"""Joint custody core: M-of-N sharing of the key-encryption keys (Hypothesis properties),
wrapped keys, share files and shares sealed to a ceremony key."""

from __future__ import annotations

import itertools
import json

import pytest
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ca import custody
from ca.custody import (
    CustodyError,
    NotEnoughShares,
    Purpose,
    ReconstructionFailed,
    RepeatedCustodian,
    Share,
    ShareRejected,
)
from ca.share_transport import key_fingerprint, open_share, raw_public, seal_share

MEMBERS = [("customs", "C"), ("commerce", "M"), ("tax", "T"), ("forex", "F"), ("inspection", "I")]


@st.composite
def custody_sets(draw: st.DrawFn) -> tuple[custody.Established, list[int]]:
    n = draw(st.integers(1, 5))
    m = draw(st.integers(1, n))
    made = custody.establish(MEMBERS[:n], m)
    order = draw(st.permutations(list(range(n))))
    return made, order


def shares_of(made: custody.Established, purpose: Purpose, idx: list[int]) -> list[Share]:
    members = made.record.members
    return [made.shares[members[i]][purpose] for i in idx]


@settings(max_examples=40, deadline=None)
@given(custody_sets(), st.sampled_from(list(Purpose)))
def test_any_m_of_n_reconstruct(case: tuple[custody.Established, list[int]], p: Purpose) -> None:
    made, order = case
    m = made.record.threshold
    for subset in itertools.combinations(order, m):
        kek = made.record.combine(shares_of(made, p, list(subset)), p)
        assert kek == made.keks[p]
    # More than M shares are fine too (M distinct custodians are used).
    assert made.record.combine(shares_of(made, p, order), p) == made.keks[p]


@settings(max_examples=40, deadline=None)
@given(custody_sets(), st.sampled_from(list(Purpose)))
def test_m_minus_one_shares_do_not_reconstruct(
    case: tuple[custody.Established, list[int]], p: Purpose
) -> None:
    made, order = case
    m = made.record.threshold
    few = shares_of(made, p, order[: m - 1])
    with pytest.raises(NotEnoughShares):
        made.record.combine(few, p)
    if m >= 2:
        # Interpolating M-1 points (bypassing the count) gives a key that fails the check.
        guess = Shamir.combine([(s.index, s.value) for s in few])
        assert guess != bytes(made.keks[p])
        with pytest.raises(ReconstructionFailed):
            made.record.check_kek(guess, p)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5), st.data())
def test_shares_of_two_custody_sets_never_mix(n: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(2, n))
    a = custody.establish(MEMBERS[:n], m)
    b = custody.establish(MEMBERS[:n], m)
    k = data.draw(st.integers(1, m - 1))  # how many of the M come from set B
    mixed = shares_of(a, Purpose.ROOT, list(range(m - k))) + shares_of(
        b, Purpose.ROOT, list(range(m - k, m))
    )
    for rec in (a.record, b.record):
        with pytest.raises(ShareRejected):
            rec.combine(mixed, Purpose.ROOT)
    # Even interpolated behind the record's back, the mix fails the authentication check.
    raw = Shamir.combine([(s.index, s.value) for s in mixed])
    for made in (a, b):
        with pytest.raises(ReconstructionFailed):
            made.record.check_kek(raw, Purpose.ROOT)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 15), st.integers(0, 7), st.sampled_from(list(Purpose)))
def test_corrupted_share_is_detected_before_use(byte: int, bit: int, p: Purpose) -> None:
    made = custody.establish(MEMBERS, 3)
    good = shares_of(made, p, [0, 1, 2])
    value = bytearray(good[1].value)
    value[byte] ^= 1 << bit
    bad = Share(good[1].custody_id, p, good[1].member, good[1].index, bytes(value))
    with pytest.raises(ShareRejected):
        made.record.verify_share(bad)
    with pytest.raises(ShareRejected):
        made.record.combine([good[0], bad, good[2]], p)


def test_share_bound_to_member_index_and_purpose() -> None:
    made = custody.establish(MEMBERS, 3)
    s = made.shares["tax"][Purpose.ROOT]
    for forged in (
        Share(s.custody_id, s.purpose, "customs", s.index, s.value),
        Share(s.custody_id, s.purpose, s.member, s.index + 1, s.value),
        Share(s.custody_id, Purpose.SEAL, s.member, s.index, s.value),
        Share("cust-other", s.purpose, s.member, s.index, s.value),
    ):
        with pytest.raises(ShareRejected):
            made.record.verify_share(forged)
    with pytest.raises(ShareRejected):  # a seal share cannot rebuild the root KEK
        made.record.combine(shares_of(made, Purpose.SEAL, [0, 1, 2]), Purpose.ROOT)


def test_repeated_custodian_is_refused() -> None:
    made = custody.establish(MEMBERS, 3)
    s = shares_of(made, Purpose.ROOT, [0, 1])
    with pytest.raises(RepeatedCustodian):
        made.record.combine([s[0], s[1], s[0]], Purpose.ROOT)


def test_root_and_seal_keks_are_independent() -> None:
    made = custody.establish(MEMBERS, 3)
    assert made.keks[Purpose.ROOT] != made.keks[Purpose.SEAL]
    with pytest.raises(ReconstructionFailed):
        made.record.check_kek(made.keks[Purpose.SEAL], Purpose.ROOT)


def test_record_round_trip_has_no_secret() -> None:
    made = custody.establish(MEMBERS, 3)
    doc = made.record.to_json()
    text = json.dumps(doc)
    for per in made.shares.values():
        for s in per.values():
            assert s.value.hex() not in text
    for kek in made.keks.values():
        assert bytes(kek).hex() not in text
    assert custody.CustodyRecord.from_json(json.loads(text)) == made.record
    assert "value" not in repr(made.shares["tax"][Purpose.ROOT]).lower().replace("values", "")


def test_record_sequence_round_trips_and_a_record_of_before_reads_as_0() -> None:
    """The record's order (``sequence``) is in its JSON, so in the bytes the root signs;
    a record written before it has none, reads as 0, and is written back byte for byte
    (its signature must still verify after a re-share's ``settle`` rewrites it)."""
    from ca.custody_files import record_bytes

    made = custody.establish(MEMBERS, 3)
    made.wipe()
    assert made.record.sequence == 1 and made.record.to_json()["sequence"] == 1
    legacy = made.record.to_json()
    del legacy["sequence"]
    before = (json.dumps(legacy, indent=2, sort_keys=True) + "\n").encode()
    record = custody.CustodyRecord.from_json(json.loads(before))
    assert record.sequence == 0 and record_bytes(record) == before
    ordered = dict(legacy, sequence=7)
    assert custody.CustodyRecord.from_json(ordered).sequence == 7
    for bad in (-1, True, "2", 1.5, None):
        with pytest.raises(CustodyError, match="sequence"):
            custody.CustodyRecord.from_json(dict(legacy, sequence=bad))


def test_reshare_keeps_the_kek_and_changes_every_share() -> None:
    made = custody.establish(MEMBERS, 3)
    again = custody.establish(MEMBERS[:4], 2, keks=made.keks)
    assert again.record.custody_id != made.record.custody_id
    kek = again.record.combine(shares_of(again, Purpose.ROOT, [2, 3]), Purpose.ROOT)
    assert kek == made.keks[Purpose.ROOT]
    with pytest.raises(ShareRejected):  # old shares are useless for the new set
        again.record.combine(shares_of(made, Purpose.ROOT, [0, 1]), Purpose.ROOT)


def test_establish_refuses_bad_parameters() -> None:
    with pytest.raises(CustodyError):
        custody.establish(MEMBERS, 6)
    with pytest.raises(CustodyError):
        custody.establish(MEMBERS, 0)
    with pytest.raises(CustodyError):
        custody.establish([("a", "A"), ("a", "B")], 1)


def test_wrapped_key_opens_only_in_its_slot() -> None:
    made = custody.establish(MEMBERS, 3)
    kek = made.keks[Purpose.SEAL]
    cid = made.record.custody_id
    key = ec.generate_private_key(ec.SECP256R1())
    blob = custody.wrap_key(kek, cid, Purpose.SEAL, "issuers/enterprise", key)
    assert custody.is_wrapped(blob)
    assert custody.wrapped_header(blob)["name"] == "issuers/enterprise"
    opened = custody.unwrap_key(kek, cid, Purpose.SEAL, "issuers/enterprise", blob)
    assert opened.public_key() == key.public_key()
    for args in (
        (made.keks[Purpose.ROOT], cid, Purpose.SEAL, "issuers/enterprise"),
        (kek, "cust-other", Purpose.SEAL, "issuers/enterprise"),
        (kek, cid, Purpose.ROOT, "issuers/enterprise"),
        (kek, cid, Purpose.SEAL, "issuers/agency"),
    ):
        with pytest.raises(CustodyError):
            custody.unwrap_key(*args, blob)
    for pos in (40, len(blob) - 40):
        tampered = bytearray(blob)
        tampered[pos] = ord("A") if tampered[pos] != ord("A") else ord("B")
        with pytest.raises(CustodyError):
            custody.unwrap_key(kek, cid, Purpose.SEAL, "issuers/enterprise", bytes(tampered))


def test_share_file_round_trip_and_refusals() -> None:
    made = custody.establish(MEMBERS, 3)
    blob = custody.seal_share_file(made.record, made.shares["forex"], b"forex passphrase 1")
    for s in made.shares["forex"].values():
        assert s.value.hex().encode() not in blob and s.value not in blob
    assert b"forex passphrase 1" not in blob
    header = custody.share_file_header(blob)
    assert header["member"] == "forex" and header["threshold"] == 3
    opened = custody.open_share_file(blob, b"forex passphrase 1")
    assert opened.shares == made.shares["forex"]
    with pytest.raises(ShareRejected):
        custody.open_share_file(blob, b"wrong passphrase!!")
    doc = json.loads(blob)
    doc["member"] = "customs"  # the header is authenticated
    with pytest.raises(ShareRejected):
        custody.open_share_file(json.dumps(doc).encode(), b"forex passphrase 1")
    with pytest.raises(ShareRejected):
        custody.open_share_file(b"not json", b"x")
    # A malformed field is named (it was AES-GCM's ValueError "Nonce must be between 8 and
    # 128 bytes" out of the CLI, or "string indices must be integers" for a kdf string).
    for key, value, field in (
        ("nonce", "AAAA", "nonce"),
        ("kdf", "scrypt", "kdf"),
        ("kdf", {"name": "scrypt", "n": "x"}, "kdf"),
    ):
        doc = {**json.loads(blob), key: value}
        with pytest.raises(ShareRejected) as e:
            custody.open_share_file(json.dumps(doc).encode(), b"forex passphrase 1")
        assert e.value.detail == f"malformed share file: its {field} is not as eport writes it"


def test_sealed_share_opens_only_for_its_ceremony() -> None:
    made = custody.establish(MEMBERS, 3)
    share = made.shares["tax"][Purpose.ROOT]
    key = X25519PrivateKey.generate()
    pub = raw_public(key.public_key())
    sealed = seal_share(share, "cer-1", pub)
    assert share.value.hex() not in json.dumps(sealed)
    assert open_share(sealed, "cer-1", key) == share
    with pytest.raises(ShareRejected):
        open_share(sealed, "cer-2", key)
    with pytest.raises(ShareRejected):
        open_share(dict(sealed, ceremony="cer-2"), "cer-2", key)
    with pytest.raises(ShareRejected):
        open_share(sealed, "cer-1", X25519PrivateKey.generate())
    with pytest.raises(ShareRejected):
        open_share(dict(sealed, member="customs"), "cer-1", key)
    assert len(key_fingerprint(pub)) == 39


def test_a_ceremony_nobody_joined_yet_says_so() -> None:
    """``eport ca ceremony status`` of a new ceremony printed "0 of 3 custodians ()"."""
    from cli.custody import _progress

    assert _progress({"progress": 0, "threshold": 3, "joined": []}) == (
        "0 of 3 custodians (none yet)"
    )
    assert _progress({"progress": 2, "threshold": 3, "joined": ["customs", "tax"]}) == (
        "2 of 3 custodians (customs, tax)"
    )


def test_a_custody_record_the_policies_no_longer_match_is_said() -> None:
    """A member taken out of policies/members.toml kept its share and its officers' powers
    on a running server, and health said nothing until a re-share (custody probe, F5)."""
    made = custody.establish(MEMBERS[:5], 3)
    assert custody.members_notice(made.record, MEMBERS[:5], 3) is None
    said = custody.members_notice(made.record, MEMBERS[:4], 3)
    assert said is not None and f"shares held by {MEMBERS[4][0]}, whom the policies no" in said
    assert "eport ca reshare" in said
    said = custody.members_notice(made.record, MEMBERS[:5], 2)
    assert said is not None and "a quorum of 3, not the policies' 2" in said
