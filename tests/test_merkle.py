"""The log's Merkle tree (ca/merkle.py) against RFC 9162 vectors and the auditor's verifier.

ca/merkle.py generates; cli/auditproof.py verifies; tests/vectors/merkle/make_vectors.py
holds the naive recursive RFC 9162 definitions both are compared with (it reproduces the
published Certificate Transparency / Trillian vectors before writing them).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca import merkle
from ca.merkle import MemoryTreeStore, MerkleTree, TreeRangeError
from cli import auditproof
from cli.auditproof import ProofError

VECTORS_DIR = Path(__file__).parent / "vectors" / "merkle"
VECTORS = json.loads((VECTORS_DIR / "rfc6962.json").read_text(encoding="utf-8"))
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaves"]]
ROOTS = [bytes.fromhex(x) for x in VECTORS["roots"]]
BIG = 300  # the largest tree the property tests draw from


def _load_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS_DIR / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()


def h(hexes: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


def entry(i: int) -> bytes:
    return b"issuance entry %d" % i


def build(entries: Sequence[bytes]) -> MerkleTree:
    tree = MerkleTree(MemoryTreeStore())
    tree.append_many(entries)
    return tree


@functools.cache
def big_tree() -> MerkleTree:
    return build([entry(i) for i in range(BIG)])


@functools.cache
def big_roots() -> tuple[bytes, ...]:
    return tuple(ref.mth([entry(i) for i in range(size)]) for size in range(BIG + 1))


# -- RFC 6962 reference vectors ------------------------------------------------------------


def test_leaf_and_node_hash_prefixes() -> None:
    assert merkle.leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        merkle.node_hash(b"L" * 32, b"R" * 32)
        == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    )
    assert merkle.EMPTY_ROOT == auditproof.EMPTY_ROOT == ROOTS[0]
    assert [merkle.leaf_hash(x) for x in LEAVES] == h(VECTORS["leaf_hashes"])
    assert [auditproof.leaf_hash(x) for x in LEAVES] == h(VECTORS["leaf_hashes"])


def test_vector_roots_at_every_size() -> None:
    assert ROOTS[1].hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert ROOTS[8].hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    one_by_one = MerkleTree(MemoryTreeStore())
    assert one_by_one.root() == ROOTS[0]
    for size, leaf in enumerate(LEAVES, start=1):
        assert one_by_one.append(leaf) == size - 1
        assert one_by_one.root() == ROOTS[size]
    batched = build(LEAVES)
    assert [batched.root(size) for size in range(9)] == ROOTS
    assert [one_by_one.root(size) for size in range(9)] == ROOTS


def test_vector_roots_from_leaf_hash_stream() -> None:
    hashes = h(VECTORS["leaf_hashes"])
    for size in range(9):
        assert auditproof.root_from_leaf_hashes(iter(hashes[:size])) == ROOTS[size]


@pytest.mark.parametrize("section", ["published", "derived"])
def test_vector_inclusion_proofs(section: str) -> None:
    tree = build(LEAVES)
    for case in VECTORS[section]["inclusion"]:
        index, size, expected = case["index"], case["size"], h(case["proof"])
        assert tree.inclusion_proof(index, size) == expected, case
        auditproof.verify_inclusion(
            merkle.leaf_hash(LEAVES[index]), index, size, expected, ROOTS[size]
        )


@pytest.mark.parametrize("section", ["published", "derived"])
def test_vector_consistency_proofs(section: str) -> None:
    tree = build(LEAVES)
    for case in VECTORS[section]["consistency"]:
        old, new, expected = case["old_size"], case["new_size"], h(case["proof"])
        assert tree.consistency_proof(old, new) == expected, case
        auditproof.verify_consistency(old, new, ROOTS[old], ROOTS[new], expected)


SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _inclusion_probes(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    """The corruptions Trillian's log verifier tests apply to each known inclusion proof."""
    probes = [
        ("index - 1", index - 1, size, proof, root, leaf),
        ("index + 1", index + 1, size, proof, root, leaf),
        ("index ^ 2", index ^ 2, size, proof, root, leaf),
        ("size * 2", index, size * 2, proof, root, leaf),
        ("size // 2", index, size // 2, proof, root, leaf),
        ("wrong leaf", index, size, proof, root, merkle.leaf_hash(b"WrongLeaf")),
        ("empty root", index, size, proof, merkle.EMPTY_ROOT, leaf),
        ("random root", index, size, proof, SOME_HASH, leaf),
        ("trailing root", index, size, [*proof, root], root, leaf),
        ("preceding root", index, size, [root, *proof], root, leaf),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        probes.append((f"bit flip in node {i}", index, size, flipped, root, leaf))
    if proof:
        probes.append(("removed node", index, size, proof[:-1], root, leaf))
    if len(proof) > 1:
        probes.append(("inserted node", index, size, [proof[0], SOME_HASH, *proof[1:]], root, leaf))
    return probes


def test_corrupted_vector_inclusion_proofs_are_rejected() -> None:
    for case in VECTORS["published"]["inclusion"]:
        index, size, proof = case["index"], case["size"], h(case["proof"])
        leaf = merkle.leaf_hash(LEAVES[index])
        for desc, i, n, p, root, lh in _inclusion_probes(index, size, proof, ROOTS[size], leaf):
            with pytest.raises(ProofError):
                auditproof.verify_inclusion(lh, i, n, p, root)
                pytest.fail(f"{desc} verified for leaf {index} of size {size}")


def test_corrupted_vector_consistency_proofs_are_rejected() -> None:
    for case in VECTORS["published"]["consistency"]:
        old, new, proof = case["old_size"], case["new_size"], h(case["proof"])
        if not proof:
            continue
        r1, r2 = ROOTS[old], ROOTS[new]
        probes = [
            (old - 1, new, r1, r2, proof),
            (old + 1, new, r1, r2, proof),
            (old ^ 2, new, r1, r2, proof),
            (old, new * 2, r1, r2, proof),
            (old, new // 2, r1, r2, proof),
            (old, new, SOME_HASH, r2, proof),
            (old, new, r1, SOME_HASH, proof),
            (old, new, r2, r1, proof),
            (old, new, r1, r2, []),
            (old, new, r1, r2, [*proof, r1]),
            (old, new, r1, r2, [*proof, r2]),
            (old, new, r1, r2, [r1, *proof]),
            (old, new, r1, r2, [r2, *proof]),
            (old, new, r1, r2, [proof[0], *proof]),
            (old, new, r1, r2, proof[:-1]),
        ]
        for i in range(len(proof)):
            flipped = list(proof)
            flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
            probes.append((old, new, r1, r2, flipped))
        for probe in probes:
            with pytest.raises(ProofError):
                auditproof.verify_consistency(*probe)
                pytest.fail(f"corrupted consistency proof verified: {probe[:2]}")


def test_trivial_consistency_cases() -> None:
    # The cases RFC 9162 §2.1.4.2 leaves out (0 < first < second), as decided in
    # cli/auditproof.verify_consistency; the table follows Trillian's verifier tests.
    empty, some = merkle.EMPTY_ROOT, SOME_HASH
    auditproof.verify_consistency(0, 0, empty, empty, [])
    auditproof.verify_consistency(0, 1, empty, some, [])
    auditproof.verify_consistency(1, 1, some, some, [])
    for args in [
        (0, 0, empty, some, []),  # one size, two roots
        (1, 1, empty, some, []),
        (1, 0, some, some, []),  # the log shrank
        (2, 1, some, some, []),
        (1, 2, some, some, []),  # empty proof
        (0, 0, empty, empty, [empty]),  # proof where none is due
        (0, 1, empty, some, [empty]),
        (1, 1, some, some, [empty]),
        (0, 1, some, some, []),  # not the root of the empty tree
    ]:
        with pytest.raises(ProofError):
            auditproof.verify_consistency(*args)


def test_single_entry_inclusion() -> None:
    leaf = merkle.leaf_hash(b"data")
    auditproof.verify_inclusion(leaf, 0, 1, [], leaf)
    for index, size in [(0, 0), (1, 0), (2, 1), (1, 1), (-1, 1)]:
        with pytest.raises(ProofError):
            auditproof.verify_inclusion(leaf, index, size, [], leaf)
    with pytest.raises(ProofError, match="32-byte"):
        auditproof.verify_inclusion(b"", 0, 1, [], leaf)
    with pytest.raises(ProofError, match="32-byte"):
        auditproof.verify_inclusion(leaf, 0, 1, [], b"")
    with pytest.raises(ProofError, match="32-byte"):
        auditproof.verify_inclusion(leaf, 0, 2, [b"short"], leaf)


def test_error_messages_say_what_failed() -> None:
    tree = big_tree()
    proof = tree.inclusion_proof(5, 100)
    leaf = merkle.leaf_hash(entry(5))
    with pytest.raises(ProofError, match="too many"):
        auditproof.verify_inclusion(leaf, 5, 100, [*proof, proof[0]], tree.root(100))
    with pytest.raises(ProofError, match="too few"):
        auditproof.verify_inclusion(leaf, 5, 100, proof[:-1], tree.root(100))
    with pytest.raises(ProofError, match="leads to root"):
        auditproof.verify_inclusion(leaf, 5, 100, proof, tree.root(99))
    with pytest.raises(ProofError, match="never shrinks"):
        auditproof.verify_consistency(9, 8, tree.root(9), tree.root(8), [])
    assert issubclass(ProofError, ValueError)


# -- exhaustive small trees ----------------------------------------------------------------


def test_every_proof_of_every_tree_up_to_64_matches_the_reference() -> None:
    entries = [entry(i) for i in range(64)]
    tree = build(entries)
    for size in range(1, 65):
        root = ref.mth(entries[:size])
        assert tree.root(size) == root
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == ref.path(index, entries[:size])
            auditproof.verify_inclusion(merkle.leaf_hash(entries[index]), index, size, proof, root)
        for old in range(1, size):
            proof = tree.consistency_proof(old, size)
            assert proof == ref.proof(old, entries[:size])
            auditproof.verify_consistency(old, size, tree.root(old), root, proof)


# -- property tests (Hypothesis) -----------------------------------------------------------


def _flip(proof: list[bytes], node: int, bit: int) -> list[bytes]:
    mutated = list(proof)
    target = bytearray(mutated[node])
    target[bit // 8] ^= 1 << (bit % 8)
    mutated[node] = bytes(target)
    return mutated


@settings(deadline=None)
@given(size=st.integers(1, BIG), data=st.data())
def test_inclusion_proofs_verify_and_mutations_fail(size: int, data: st.DataObject) -> None:
    tree, roots = big_tree(), big_roots()
    index = data.draw(st.integers(0, size - 1), label="index")
    leaf = merkle.leaf_hash(entry(index))
    proof = tree.inclusion_proof(index, size)
    assert tree.root(size) == roots[size]
    auditproof.verify_inclusion(leaf, index, size, proof, roots[size])

    if proof:
        node = data.draw(st.integers(0, len(proof) - 1), label="node")
        bit = data.draw(st.integers(0, 8 * merkle.HASH_SIZE - 1), label="bit")
        with pytest.raises(ProofError):
            auditproof.verify_inclusion(leaf, index, size, _flip(proof, node, bit), roots[size])
        with pytest.raises(ProofError):
            auditproof.verify_inclusion(
                leaf, index, size, proof[:node] + proof[node + 1 :], roots[size]
            )
    wrong_index = data.draw(st.integers(-2, BIG).filter(lambda i: i != index), label="wrong index")
    with pytest.raises(ProofError):
        auditproof.verify_inclusion(leaf, wrong_index, size, proof, roots[size])
    # A proof for one size, presented with another size and that size's true root.
    wrong_size = data.draw(st.integers(0, BIG).filter(lambda n: n != size), label="wrong size")
    with pytest.raises(ProofError):
        auditproof.verify_inclusion(leaf, index, wrong_size, proof, roots[wrong_size])
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra node")
    position = data.draw(st.integers(0, len(proof)), label="position")
    with pytest.raises(ProofError):
        auditproof.verify_inclusion(
            leaf, index, size, [*proof[:position], extra, *proof[position:]], roots[size]
        )
    with pytest.raises(ProofError):
        auditproof.verify_inclusion(
            merkle.leaf_hash(entry(index) + b"!"), index, size, proof, roots[size]
        )


@settings(deadline=None)
@given(new=st.integers(1, BIG), data=st.data())
def test_consistency_proofs_verify_and_mutations_fail(new: int, data: st.DataObject) -> None:
    tree, roots = big_tree(), big_roots()
    old = data.draw(st.integers(0, new), label="old")
    proof = tree.consistency_proof(old, new)
    auditproof.verify_consistency(old, new, roots[old], roots[new], proof)

    if proof:
        node = data.draw(st.integers(0, len(proof) - 1), label="node")
        bit = data.draw(st.integers(0, 8 * merkle.HASH_SIZE - 1), label="bit")
        with pytest.raises(ProofError):
            auditproof.verify_consistency(old, new, roots[old], roots[new], _flip(proof, node, bit))
        with pytest.raises(ProofError):
            auditproof.verify_consistency(
                old, new, roots[old], roots[new], proof[:node] + proof[node + 1 :]
            )
    # Other sizes with their true roots: the statement may be true, but not by this proof.
    wrong_old = data.draw(st.integers(0, new).filter(lambda m: m != old), label="wrong old")
    if tree.consistency_proof(wrong_old, new) != proof:
        with pytest.raises(ProofError):
            auditproof.verify_consistency(wrong_old, new, roots[wrong_old], roots[new], proof)
    wrong_new = data.draw(st.integers(old, BIG).filter(lambda n: n != new), label="wrong new")
    if tree.consistency_proof(old, wrong_new) != proof:
        with pytest.raises(ProofError):
            auditproof.verify_consistency(old, wrong_new, roots[old], roots[wrong_new], proof)
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra node")
    position = data.draw(st.integers(0, len(proof)), label="position")
    with pytest.raises(ProofError):
        auditproof.verify_consistency(
            old, new, roots[old], roots[new], [*proof[:position], extra, *proof[position:]]
        )
    if old < new:
        forged = data.draw(st.binary(min_size=32, max_size=32), label="forged old root")
        with pytest.raises(ProofError):
            auditproof.verify_consistency(old, new, forged, roots[new], proof)


@settings(deadline=None)
@given(size=st.integers(0, BIG))
def test_root_at_any_size_equals_the_naive_reference(size: int) -> None:
    assert big_tree().root(size) == ref.mth([entry(i) for i in range(size)])
    hashes = (merkle.leaf_hash(entry(i)) for i in range(size))
    assert auditproof.root_from_leaf_hashes(hashes) == big_roots()[size]


@settings(deadline=None)
@given(batches=st.lists(st.integers(0, 25), max_size=12))
def test_batched_appends_store_the_same_tree(batches: list[int]) -> None:
    one_by_one, batched = MemoryTreeStore(), MemoryTreeStore()
    single, many = MerkleTree(one_by_one), MerkleTree(batched)
    next_index = 0
    for count in batches:
        entries = [entry(next_index + i) for i in range(count)]
        assert many.append_many(entries) == range(next_index, next_index + count)
        for i, e in enumerate(entries):
            assert single.append(e) == next_index + i
        next_index += count
        assert many.root() == single.root() == big_roots()[next_index]
    assert one_by_one.get_many(list(one_by_one._nodes)) == batched.get_many(list(one_by_one._nodes))
    assert len(one_by_one) == len(batched) == 2 * next_index - bin(next_index).count("1")


# -- storage cost: O(log n) reads, never a rebuild ------------------------------------------


class CountingStore(MemoryTreeStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def get_many(self, keys: Sequence[tuple[int, int]], /) -> list[bytes]:
        self.calls.append(len(keys))
        return super().get_many(keys)


def test_each_operation_reads_the_store_once_with_logarithmic_keys() -> None:
    store = CountingStore()
    tree = MerkleTree(store)
    tree.append_many(entry(i) for i in range(1000))
    tree.append_many(entry(i) for i in range(1000, 1337))
    # One read each time: the perfect subtrees on the right edge (popcount of the size).
    assert store.calls == [bin(1000).count("1")]  # nothing to read for the empty tree
    for size in (1, 2, 3, 512, 513, 777, 1023, 1024, 1025, 1337):
        bound = 2 * (size - 1).bit_length()  # 2 * ceil(log2(size)) keys at most
        for index in {0, 1, size // 2, size - 2, size - 1} & set(range(size)):
            store.calls.clear()
            tree.inclusion_proof(index, size)
            assert len(store.calls) == (1 if size > 1 else 0)
            assert sum(store.calls) <= bound
        for old in {1, 2, size // 3, size - 1} & set(range(1, size)):
            store.calls.clear()
            tree.consistency_proof(old, size)
            assert len(store.calls) == 1 and store.calls[0] <= bound
        store.calls.clear()
        tree.root(size)
        assert store.calls == [bin(size).count("1")]


def test_append_writes_one_leaf_and_the_parents_it_completes() -> None:
    store = MemoryTreeStore()
    tree = MerkleTree(store)
    tree.append_many(entry(i) for i in range(7))
    nodes_before = len(store)
    tree.append(entry(7))  # index 7 = 0b111 completes three parents
    assert len(store) == nodes_before + 4
    assert store.get_many([(3, 0)]) == [big_roots()[8]]


# -- range checks and the store's append-only rule -----------------------------------------


def test_out_of_range_requests_raise_tree_range_error() -> None:
    tree = build(LEAVES)
    for call in [
        lambda: tree.inclusion_proof(8, 8),
        lambda: tree.inclusion_proof(-1, 8),
        lambda: tree.inclusion_proof(0, 0),
        lambda: tree.inclusion_proof(0, 9),
        lambda: tree.root(9),
        lambda: tree.root(-1),
        lambda: tree.consistency_proof(5, 4),
        lambda: tree.consistency_proof(-1, 4),
        lambda: tree.consistency_proof(1, 9),
        lambda: tree.leaf_hash_at(8),
    ]:
        with pytest.raises(TreeRangeError) as info:
            call()
        assert info.value.problem()["status"] == 400
    assert tree.consistency_proof(0, 8) == tree.consistency_proof(8, 8) == []
    assert tree.consistency_proof(3) == tree.consistency_proof(3, 8)
    assert tree.inclusion_proof(3) == tree.inclusion_proof(3, 8)
    assert tree.leaf_hash_at(3) == merkle.leaf_hash(LEAVES[3])
    assert tree.size() == 8


def test_leaf_hashes_are_checked_and_the_store_is_append_only() -> None:
    tree = MerkleTree(MemoryTreeStore())
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append_leaf_hash(b"short")
    assert tree.append_leaf_hashes([]) == range(0, 0)
    assert tree.append_leaf_hash(merkle.leaf_hash(b"x")) == 0
    with pytest.raises(ValueError, match="already stored"):
        tree.store.put_many([(0, 0, merkle.leaf_hash(b"y"))])
    with pytest.raises(LookupError):
        tree.store.get_many([(5, 0)])
    with pytest.raises(ProofError, match="leaf hash 1"):
        auditproof.root_from_leaf_hashes([merkle.leaf_hash(b"x"), b"short"])


def test_stream_root_of_a_large_log_matches_the_tree() -> None:
    size = (1 << 14) + 1234
    tree = build([entry(i) for i in range(size)])
    hashes = tree.store.get_many([(0, i) for i in range(size)])
    assert auditproof.root_from_leaf_hashes(hashes) == tree.root()
    assert auditproof.root_from_leaf_hashes(hashes[:4096]) == tree.root(4096)
