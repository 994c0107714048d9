"""RFC 9162 (section 2.1) Merkle verification: what an auditor needs, and nothing else.

    leaf_hash(entry)        SHA-256(0x00 || entry)
    node_hash(left, right)  SHA-256(0x01 || left || right)
    root of no leaves       SHA-256("")  (EMPTY_ROOT)

``verify_inclusion`` and ``verify_consistency`` follow RFC 9162 sections 2.1.3.2 and
2.1.4.2; the leaf index and the tree sizes always come from the caller (from a verified
signed tree head), never from the proof. ``TreeBuilder`` recomputes the root of a log from
its leaf hashes, keeping only the right border of the tree (one hash per level).

Pure (hashlib and ``schemas.errors`` only), so the client package can verify a log over
HTTP without the broker installed. ``broker.audit.merkle`` re-exports these names and adds the
store side: appending, stored subtree hashes and proof generation.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from schemas.errors import EnvelopeError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "ProofError",
    "TreeBuilder",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(EnvelopeError):
    """An inclusion or consistency proof does not verify."""

    default_code = "proof_invalid"


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class TreeBuilder:
    """The root of a growing log from its leaf hashes, in O(log n) memory.

    Keeps the hashes of the perfect subtrees on the tree's right border (at most one per
    level, largest first); the RFC 9162 root of ``size`` leaves folds them from the right.

        tree = TreeBuilder()
        tree.extend(leaf_hash(e) for e in entries)
        tree.root()  # = the signed root of a head at tree.size
    """

    def __init__(self) -> None:
        self.size = 0
        self._border: list[tuple[int, bytes]] = []  # (level, hash), left to right

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash (32 bytes)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash at index {self.size} is {len(leaf)} bytes")
        level, h = 0, leaf
        while self._border and self._border[-1][0] == level:
            _, left = self._border.pop()
            level, h = level + 1, node_hash(left, h)
        self._border.append((level, h))
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def copy(self) -> TreeBuilder:
        """An independent builder at the same size (to try other leaves from here)."""
        twin = TreeBuilder()
        twin.size, twin._border = self.size, list(self._border)
        return twin

    def root(self) -> bytes:
        """The root hash of the leaves so far (``EMPTY_ROOT`` for none)."""
        if not self._border:
            return EMPTY_ROOT
        acc = self._border[-1][1]
        for _, h in reversed(self._border[:-1]):
            acc = node_hash(h, acc)
        return acc


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, want {HASH_SIZE}")


def _check_proof(proof: Sequence[bytes], want: int, what: str) -> None:
    if len(proof) != want:
        raise ProofError(f"{what} has {len(proof)} hashes, want {want}")
    for i, h in enumerate(proof):
        _check_hash(h, f"{what} hash {i}")


def _inclusion_length(index: int, size: int) -> tuple[int, int]:
    """(inner, border) hash counts of an inclusion proof (transparency-dev's decomposition)."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that the leaf hashed to ``leaf_hash`` is at ``index`` in the tree ``root``.

    RFC 9162 section 2.1.3.2. ``index`` and ``size`` come from the caller (the entry it
    asked about and a verified tree head), never from the proof.

    Args:
        leaf_hash: ``leaf_hash(entry)`` of the entry, 32 bytes.
        index: the entry's position in the log.
        size: the tree size of the signed tree head.
        proof: the inclusion proof, bottom up.
        root: the root hash of the signed tree head.

    Raises:
        ProofError: the proof does not show the leaf at ``index`` in this tree.
    """
    # 1. The index lies inside the tree, and every hash has the right size.
    if index < 0 or size < 0 or index >= size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root hash")
    # 2. The proof has exactly the number of hashes the position calls for.
    inner, border = _inclusion_length(index, size)
    _check_proof(proof, inner + border, "inclusion proof")
    # 3. Hash up from the leaf; fn/sn track the node on the path and the last node.
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:  # pragma: no cover - step 2 already fixed the length
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:  # the last node has no right sibling here: skip levels
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    # 4. The path reached the top, at the signed root.
    if sn != 0:  # pragma: no cover - step 2 already fixed the length
        raise ProofError("inclusion proof is too short")
    if not _same(r, root):
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``new_root`` of ``new_size`` leaves extends ``old_root``.

    RFC 9162 section 2.1.4.2, with the sizes from the caller's two verified tree heads. The
    edge cases:

    - ``old_size == new_size``: the proof is empty and the roots are equal;
    - ``old_size == 0``: the old root is ``EMPTY_ROOT``, the proof is empty, and any
      32-byte new root extends it (a consistency proof from the empty tree proves nothing
      more; the new tree head's signature is what counts);
    - a tree of size 0 has the root ``EMPTY_ROOT``, never anything else.

    Raises:
        ProofError: the new tree does not extend the old one, or the inputs are malformed.
    """
    # 1. Sizes: the log never shrinks.
    if old_size < 0 or new_size < 0:
        raise ProofError(f"tree sizes {old_size} and {new_size} must not be negative")
    if new_size < old_size:
        raise ProofError(f"new tree size {new_size} is smaller than old size {old_size}")
    # 2. The empty tree's root is known, and nothing is proved from it.
    if old_size == 0 and not _same(old_root, EMPTY_ROOT):
        raise ProofError("a tree of size 0 must have the empty-tree root")
    if new_size == old_size:
        if proof:
            raise ProofError(f"proof between equal sizes must be empty, got {len(proof)}")
        if not _same(old_root, new_root):
            raise ProofError(f"roots differ for the same tree size {old_size}")
        return
    if old_size == 0:
        if proof:
            raise ProofError(f"proof from the empty tree must be empty, got {len(proof)}")
        _check_hash(new_root, "new root hash")
        return
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    # 3. The proof has exactly the number of hashes the sizes call for. When old_size is a
    #    power of two, the old root is the first hash and the proof leaves it out.
    shift = (old_size & -old_size).bit_length() - 1  # trailing zero bits of old_size
    inner, border = _inclusion_length(old_size - 1, new_size)
    seeded = old_size == 1 << shift
    _check_proof(proof, (0 if seeded else 1) + inner - shift + border, "consistency proof")
    path = [old_root, *proof] if seeded else list(proof)
    # 4. Skip the levels where the old tree's last node is a right child of a perfect subtree
    #    the proof covers with one hash.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    # 5. Hash up twice: fr rebuilds the old root, sr the new one, from the same hashes.
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:  # pragma: no cover - step 3 already fixed the length
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    # 6. Both roots match and the path reached the top.
    if sn != 0:  # pragma: no cover - step 3 already fixed the length
        raise ProofError("consistency proof is too short")
    if not _same(fr, old_root):
        raise ProofError("consistency proof does not match the old root")
    if not _same(sr, new_root):
        raise ProofError("consistency proof does not match the new root")
