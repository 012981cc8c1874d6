"""The Merkle tree of the issuance transparency log (RFC 9162 §2.1).

Hashing is RFC 9162 §2.1.1 with SHA-256: the hash of an empty tree is
``SHA-256()``, a leaf is ``SHA-256(0x00 || entry)`` and an interior node is
``SHA-256(0x01 || left || right)``; a tree of ``n > 1`` leaves splits at ``k``, the
largest power of two smaller than ``n``.

Storage model. A :class:`TreeStore` keeps the hash of every *perfect* subtree,
keyed by ``(level, index)``: the node at ``(level, index)`` covers leaves
``[index * 2**level, (index + 1) * 2**level)``. Such a node never changes once its
last leaf exists, so the store is append-only. Every subtree the RFC algorithms
touch (``MTH(D[a:b])`` with ``a`` aligned to the largest power of two not above
``b - a``) is a left-to-right run of at most ``log2(b - a) + 1`` perfect subtrees,
so a root at any size, an inclusion proof (§2.1.3.1) and a consistency proof
(§2.1.4.1) each cost one :meth:`TreeStore.get_many` call of ``O(log n)`` keys and
``O(log n)`` hashes, never a rebuild of the tree.

This module is framework-free; the SQL store lives with the models and only has
to satisfy :class:`TreeStore`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from ca.errors import BadRequest

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MemoryTreeStore",
    "MerkleTree",
    "TreeRangeError",
    "TreeStore",
    "leaf_hash",
    "node_hash",
]

HASH_SIZE = 32
"""Bytes in every hash of the log (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""``MTH({}) = HASH()``, the root of the empty tree (RFC 9162 §2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

NodeKey = tuple[int, int]
"""``(level, index)`` of a perfect subtree: leaves ``[index << level, (index + 1) << level)``."""


class TreeRangeError(BadRequest):
    """A leaf index or tree size the log does not have, or a size pair out of order."""

    slug = "tree-range"
    title = "Leaf index or tree size out of range"


def leaf_hash(entry: bytes) -> bytes:
    """``MTH({d}) = HASH(0x00 || d)``, the hash of a leaf holding ``entry`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``HASH(0x01 || left || right)``, an interior node (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class TreeStore(Protocol):
    """Append-only storage of perfect-subtree hashes, keyed by ``(level, index)``.

    The tree writes only through :meth:`put_many`, once per append batch, with the
    new leaves (level 0) and every parent they complete. An implementation must make
    each batch atomic (one transaction) and must not be written by two appenders at
    once: the caller serializes appends, e.g. by holding a row lock on the log head
    for the whole issuance transaction. A unique key on ``(level, index)`` turns a
    missed lock into a failed transaction instead of a forked tree. Reads need no
    lock: stored nodes never change.
    """

    def size(self) -> int:
        """The number of leaves stored (the number of level-0 nodes)."""
        ...

    def get_many(self, keys: Sequence[NodeKey], /) -> Sequence[bytes]:
        """The hashes at ``keys``, in the same order; a missing key raises :class:`LookupError`.

        Called once per root, proof or append, with ``O(log n)`` keys, so that a SQL
        store answers it with one ``SELECT``.
        """
        ...

    def put_many(self, items: Sequence[tuple[int, int, bytes]], /) -> None:
        """Store ``(level, index, hash)`` triples: new leaves and the parents they complete."""
        ...


class MemoryTreeStore:
    """A :class:`TreeStore` in a dict, for tests and tools; it refuses to rewrite a node."""

    def __init__(self) -> None:
        self._nodes: dict[NodeKey, bytes] = {}
        self._size = 0

    def size(self) -> int:
        return self._size

    def get_many(self, keys: Sequence[NodeKey], /) -> list[bytes]:
        nodes = self._nodes
        try:
            return [nodes[key] for key in keys]
        except KeyError as exc:
            raise LookupError(f"no stored node at (level, index) {exc.args[0]}") from None

    def put_many(self, items: Sequence[tuple[int, int, bytes]], /) -> None:
        nodes = self._nodes
        for level, index, digest in items:
            old = nodes.get((level, index))
            if old is not None and old != digest:
                raise ValueError(f"node ({level}, {index}) is already stored with another hash")
        size = self._size
        for level, index, digest in items:
            nodes[(level, index)] = digest
            if level == 0 and index >= size:
                size = index + 1
        self._size = size

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"MemoryTreeStore(size={self._size}, nodes={len(self._nodes)})"


def _split(n: int) -> int:
    """``k``, the largest power of two strictly smaller than ``n > 1`` (RFC 9162 §2.1.1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _perfect_subtrees(start: int, end: int) -> list[NodeKey]:
    """The perfect subtrees, left to right, whose fold is ``MTH(D[start:end])``.

    Requires ``start`` to be a multiple of the largest power of two not above
    ``end - start``, which holds for every subtree the RFC 9162 recursion visits:
    then ``MTH`` splits off the largest perfect subtree on the left at each step.
    """
    keys: list[NodeKey] = []
    while start < end:
        level = (end - start).bit_length() - 1
        assert start & ((1 << level) - 1) == 0, "subtree is not aligned"
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Combine a run of perfect subtrees (largest first) into their ``MTH``, right to left."""
    digest = hashes[-1]
    for left in reversed(hashes[:-1]):
        digest = node_hash(left, digest)
    return digest


class MerkleTree:
    """The RFC 9162 Merkle tree of a log whose nodes live in a :class:`TreeStore`.

    The tree holds no state of its own: several processes may share one store.
    Sizes and indices are checked against :meth:`size` and raise
    :class:`TreeRangeError`.
    """

    def __init__(self, store: TreeStore) -> None:
        self._store = store

    @property
    def store(self) -> TreeStore:
        return self._store

    def size(self) -> int:
        """The number of leaves in the tree now."""
        return self._store.size()

    # -- appending -------------------------------------------------------------------------

    def append(self, entry: bytes) -> int:
        """Append one entry (hashed as a leaf) and return its leaf index.

        Cost: one read of ``popcount(n)`` stored nodes, ``1 + t`` hashes and writes
        where ``t`` is the number of trailing one bits of ``n`` (2 on average).
        """
        return self.append_leaf_hashes([leaf_hash(entry)]).start

    def append_leaf_hash(self, digest: bytes) -> int:
        """Append a leaf whose hash ``HASH(0x00 || entry)`` the caller computed."""
        return self.append_leaf_hashes([digest]).start

    def append_many(self, entries: Iterable[bytes]) -> range:
        """Append entries in order; return the range of leaf indices they received."""
        return self.append_leaf_hashes([leaf_hash(entry) for entry in entries])

    def append_leaf_hashes(self, digests: Iterable[bytes]) -> range:
        """Append leaf hashes in order; return the range of leaf indices they received.

        One :meth:`TreeStore.get_many` of the ``O(log n)`` perfect subtrees on the
        right edge of the current tree, then one :meth:`TreeStore.put_many` of the ``b``
        leaves of the batch and the fewer than ``b + log2(n + b)`` parents they complete.
        """
        leaves = list(digests)
        for digest in leaves:
            if not isinstance(digest, bytes) or len(digest) != HASH_SIZE:
                raise ValueError(f"a leaf hash is {HASH_SIZE} bytes")
        size = self._store.size()
        if not leaves:
            return range(size, size)
        # The right edge of the tree: the perfect subtrees of the binary decomposition
        # of ``size``, largest first. A new leaf completes a parent exactly where it
        # meets the smallest of them, like a carry in binary addition.
        edge_keys = _perfect_subtrees(0, size)
        edge = list(self._store.get_many(edge_keys)) if edge_keys else []
        writes: list[tuple[int, int, bytes]] = []
        for index, digest in enumerate(leaves, start=size):
            writes.append((0, index, digest))
            level, position = 0, index
            while position & 1:
                digest = node_hash(edge.pop(), digest)
                level += 1
                position >>= 1
                writes.append((level, position, digest))
            edge.append(digest)
        self._store.put_many(writes)
        return range(size, size + len(leaves))

    # -- reading ---------------------------------------------------------------------------

    def leaf_hash_at(self, index: int) -> bytes:
        """The stored leaf hash at ``index``."""
        self._check_index(index, self._store.size())
        return self._store.get_many([(0, index)])[0]

    def root(self, size: int | None = None) -> bytes:
        """``MTH(D[0:size])``, the root hash at ``size`` (default: now), RFC 9162 §2.1.1.

        ``O(log size)``: one read of ``popcount(size)`` perfect subtrees and as many
        hashes. The empty tree's root is :data:`EMPTY_ROOT`.
        """
        size = self._resolve_size(size)
        if size == 0:
            return EMPTY_ROOT
        return self._subtree_hashes([(0, size)])[0]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """``PATH(index, D[0:size])``, the audit path of leaf ``index`` (RFC 9162 §2.1.3.1).

        Nodes come deepest first, as RFC 9162 §2.1.3.2 verifies them. ``O(log size)``:
        one read of at most ``2 * ceil(log2(size))`` perfect subtrees.
        """
        size = self._resolve_size(size)
        self._check_index(index, size)
        # PATH(m, D[n]) for n > 1: with k the split, m < k gives
        # PATH(m, D[0:k]) : MTH(D[k:n]), else PATH(m - k, D[k:n]) : MTH(D[0:k]).
        # Walk down from the root collecting the sibling ranges, then reverse.
        ranges: list[tuple[int, int]] = []
        start, end = 0, size
        while end - start > 1:
            middle = start + _split(end - start)
            if index < middle:
                ranges.append((middle, end))
                end = middle
            else:
                ranges.append((start, middle))
                start = middle
        ranges.reverse()
        return self._subtree_hashes(ranges)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """``PROOF(old_size, D[0:new_size])`` (RFC 9162 §2.1.4.1).

        Empty when ``old_size`` is 0 or equals ``new_size`` (nothing to prove).
        Nodes come in the order RFC 9162 §2.1.4.2 verifies them. ``O(log new_size)``:
        one read of at most ``2 * ceil(log2(new_size))`` perfect subtrees.
        """
        new_size = self._resolve_size(new_size)
        if not 0 <= old_size <= new_size:
            raise TreeRangeError(
                f"no consistency proof from size {old_size} to size {new_size}",
                old_size=old_size,
                new_size=new_size,
            )
        if old_size in (0, new_size):
            return []
        # SUBPROOF(m, D[n], b): for m == n it is {} when b is true (the verifier
        # holds MTH(D[m])) and {MTH(D[m])} otherwise; for m < n, with k the split,
        # m <= k gives SUBPROOF(m, D[0:k], b) : MTH(D[k:n]) and m > k gives
        # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]). PROOF is SUBPROOF(m, D[n], true).
        ranges: list[tuple[int, int]] = []
        start, end, whole = 0, new_size, True
        while old_size != end:
            middle = start + _split(end - start)
            if old_size <= middle:
                ranges.append((middle, end))
                end = middle
            else:
                ranges.append((start, middle))
                start = middle
                whole = False
        if not whole:
            ranges.append((start, end))
        ranges.reverse()
        return self._subtree_hashes(ranges)

    # -- internals -------------------------------------------------------------------------

    def _resolve_size(self, size: int | None) -> int:
        current = self._store.size()
        if size is None:
            return current
        if not 0 <= size <= current:
            raise TreeRangeError(
                f"tree size {size} is out of range: the log has {current} entries",
                tree_size=size,
            )
        return size

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not 0 <= index < size:
            raise TreeRangeError(
                f"leaf index {index} is out of range for tree size {size}",
                leaf_index=index,
                tree_size=size,
            )

    def _subtree_hashes(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """``MTH(D[a:b])`` for each ``(a, b)``, read from the store in one call."""
        plans = [_perfect_subtrees(start, end) for start, end in ranges]
        keys = list(dict.fromkeys(key for plan in plans for key in plan))
        if not keys:
            return []
        found = dict(zip(keys, self._store.get_many(keys), strict=True))
        return [_fold([found[key] for key in plan]) for plan in plans]
