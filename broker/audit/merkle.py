"""RFC 9162 (section 2.1) Merkle tree math for the audit log: hashes, proofs, verifiers.

    leaf_hash(entry)        SHA-256(0x00 || entry)
    node_hash(left, right)  SHA-256(0x01 || left || right)
    root of no leaves       SHA-256("")

The log keeps the hash of every *perfect* subtree it has completed, addressed by
``(level, index)``: level 0 holds the leaf hashes, and node ``(level, index)`` covers leaves
``[index * 2**level, (index + 1) * 2**level)``. Any root, inclusion proof or consistency proof
of a tree of ``size`` leaves is then a fold of O(log size) stored hashes, never a rebuild.

Proof *generation* is split in two so a SQL store can fetch everything in one query:
``*_plan`` functions name the nodes (no reads), and ``root``/``inclusion_proof``/
``consistency_proof`` read them through a ``HashStore`` and fold them.

Proof *verification* follows RFC 9162 sections 2.1.3.2 and 2.1.4.2. The leaf index and the
tree sizes always come from the caller (from a signed tree head), never from the proof. The
hashes and verifiers live in ``schemas.merkle_verify`` (pure, for clients without the broker)
and are re-exported here.

Left to others: storing entries and nodes, choosing which sizes to sign, signing tree heads
(``schemas.treehead``), and checking that a stored node really is what it claims to be (the
``istmo audit verify`` shell recomputes the tree from the entries for that).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeAlias

# The verifiers are pure and live in ``schemas`` so the client can use them without the
# broker; they are re-exported here under their old names.
from schemas.merkle_verify import (
    EMPTY_ROOT,
    HASH_SIZE,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "HashStore",
    "MemoryHashStore",
    "Node",
    "NodeId",
    "ProofError",
    "append_nodes",
    "consistency_proof",
    "consistency_proof_plan",
    "fold",
    "inclusion_proof",
    "inclusion_proof_plan",
    "leaf_hash",
    "node_hash",
    "root",
    "root_plan",
    "verify_consistency",
    "verify_inclusion",
]

# (level, index): the perfect subtree over leaves [index * 2**level, (index + 1) * 2**level).
# (level, index, hash): such a subtree and its hash, as stored. Plain tuples, not named ones:
# appending makes millions of them, and they go straight into SQL ``executemany`` rows.
NodeId: TypeAlias = tuple[int, int]
Node: TypeAlias = tuple[int, int, bytes]


class HashStore(Protocol):
    """Read access to stored perfect-subtree hashes."""

    def get(self, level: int, index: int) -> bytes:
        """The hash of node ``(level, index)``.

        Raises:
            LookupError: the node is not stored (a store's own error may subclass it).
        """
        ...


# ---------------------------------------------------------------------------------------------
# Appending


def append_nodes(store: HashStore, size: int, leaf_hashes: Iterable[bytes]) -> list[Node]:
    """The nodes to persist when ``leaf_hashes`` are appended to a tree of ``size`` leaves.

    Every leaf and every perfect subtree the new leaves complete, in an order where each
    level's indices increase. Reads only the left siblings that predate the batch: at most
    one per level, so O(log size) per batch.

    Args:
        store: the nodes of the tree of ``size`` leaves.
        size: the number of leaves already in the tree.
        leaf_hashes: hashes (``leaf_hash(entry)``) of the new entries, in log order.

    Returns:
        ``(level, index, hash)`` nodes to store, in the same transaction as the entries they cover.

    Raises:
        ValueError: ``size`` is negative or a leaf hash is not 32 bytes.
    """
    if size < 0:
        raise ValueError(f"tree size {size} is negative")
    out: list[Node] = []
    pending: dict[int, bytes] = {}  # level -> hash of a left node completed in this batch
    index = size
    for h in leaf_hashes:
        if len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash at index {index} is {len(h)} bytes, want {HASH_SIZE}")
        level, i = 0, index
        out.append((0, i, h))
        while i & 1:  # a right child: its parent is now complete
            left = pending.pop(level, None)
            if left is None:
                left = store.get(level, i - 1)
            h = node_hash(left, h)
            level, i = level + 1, i >> 1
            out.append((level, i, h))
        pending[level] = h
        index += 1
    return out


class MemoryHashStore:
    """An in-memory ``HashStore`` (tests, benchmarks, a verifier rebuilding a tree)."""

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = []

    @property
    def size(self) -> int:
        """Number of leaves stored."""
        return len(self._levels[0]) if self._levels else 0

    def get(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0 or level >= len(self._levels):
            raise KeyError((level, index))
        row = self._levels[level]
        if index >= len(row):
            raise KeyError((level, index))
        return row[index]

    def put(self, nodes: Iterable[Node]) -> None:
        """Store ``nodes``; each level only grows, one index after the other.

        Raises:
            ValueError: a node skips or rewrites an index.
        """
        for level, index, h in nodes:
            while len(self._levels) <= level:
                self._levels.append([])
            row = self._levels[level]
            if index != len(row):
                raise ValueError(f"node ({level}, {index}) is not the next at level {level}")
            row.append(h)

    def append(self, leaf_hashes: Iterable[bytes]) -> int:
        """Append leaves and the subtrees they complete.

        Returns:
            The new tree size.
        """
        self.put(append_nodes(self, self.size, leaf_hashes))
        return self.size


# ---------------------------------------------------------------------------------------------
# Proof plans: which stored nodes make up each hash (pure, no reads)
#
# Each plan is a list of groups; a group is the perfect subtrees, left to right, whose fold
# is one hash. All groups but at most one hold a single node: the exception is the subtree on
# the right border of the tree, which is not perfect and is folded from O(log size) nodes.


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_nodes(start: int, end: int) -> tuple[NodeId, ...]:
    """The perfect subtrees, left to right, of the RFC 9162 subtree over ``[start, end)``.

    ``start`` is a multiple of the smallest power of two >= ``end - start``, as it is for
    every subtree that RFC 9162's recursion visits.
    """
    nodes: list[NodeId] = []
    width = end - start
    pos = start
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            nodes.append((level, pos >> level))
            pos += 1 << level
    return tuple(nodes)


def root_plan(size: int) -> tuple[NodeId, ...]:
    """The stored nodes whose fold is the root of the first ``size`` leaves (none if 0)."""
    if size < 0:
        raise ValueError(f"tree size {size} is negative")
    return _range_nodes(0, size)


def inclusion_proof_plan(index: int, size: int) -> list[tuple[NodeId, ...]]:
    """The groups of nodes for the inclusion proof of leaf ``index`` in a tree of ``size``.

    Follows RFC 9162 2.1.3.1 PATH(m, D[n]), top down, then lists the hashes bottom up.

    Raises:
        ValueError: unless 0 <= index < size.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    groups: list[tuple[NodeId, ...]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            groups.append(_range_nodes(lo + k, hi))
            hi = lo + k
        else:
            groups.append(_range_nodes(lo, lo + k))
            lo += k
    groups.reverse()
    return groups


def consistency_proof_plan(old_size: int, new_size: int) -> list[tuple[NodeId, ...]]:
    """The groups of nodes for the consistency proof between two tree sizes.

    Follows RFC 9162 2.1.4.1 SUBPROOF(m, D[n], b). Empty when ``old_size`` is 0 or equals
    ``new_size``: there is nothing to prove.

    Raises:
        ValueError: unless 0 <= old_size <= new_size.
    """
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    groups: list[tuple[NodeId, ...]] = []
    lo, hi, m = 0, new_size, old_size  # m: old leaves inside [lo, hi)
    old_root_is_known = True  # RFC 9162's b: the verifier already has MTH(D[lo:lo+m])
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            groups.append(_range_nodes(lo + k, hi))
            hi = lo + k
        else:
            groups.append(_range_nodes(lo, lo + k))
            lo, m = lo + k, m - k
            old_root_is_known = False
    if not old_root_is_known:
        groups.append(_range_nodes(lo, hi))
    groups.reverse()
    return groups


# ---------------------------------------------------------------------------------------------
# Reading plans from a store


def fold(hashes: Sequence[bytes]) -> bytes:
    """The hash of a subtree from its perfect subtrees' hashes, left to right.

    RFC 9162 splits a subtree at the largest power of two below its width, so the left part
    is always the next perfect subtree and the fold runs from the right.

    Raises:
        ValueError: ``hashes`` is empty.
    """
    if not hashes:
        raise ValueError("nothing to fold")
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _read(store: HashStore, group: tuple[NodeId, ...]) -> bytes:
    return fold([store.get(level, index) for level, index in group])


def root(store: HashStore, size: int) -> bytes:
    """The root hash of the first ``size`` leaves (``EMPTY_ROOT`` for 0).

    Reads popcount(size) stored nodes.
    """
    plan = root_plan(size)
    return _read(store, plan) if plan else EMPTY_ROOT


def inclusion_proof(store: HashStore, index: int, size: int) -> list[bytes]:
    """RFC 9162 inclusion proof of leaf ``index`` in the tree of the first ``size`` leaves.

    Reads at most 2 * log2(size) stored nodes. The caller checks that ``size`` is a size it
    has stored (and signed); the store raises ``LookupError`` for a node it does not hold.

    Raises:
        ValueError: unless 0 <= index < size.
    """
    return [_read(store, group) for group in inclusion_proof_plan(index, size)]


def consistency_proof(store: HashStore, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 consistency proof between the trees of ``old_size`` and ``new_size`` leaves.

    Reads at most 2 * log2(new_size) + 1 stored nodes.

    Raises:
        ValueError: unless 0 <= old_size <= new_size.
    """
    return [_read(store, group) for group in consistency_proof_plan(old_size, new_size)]
