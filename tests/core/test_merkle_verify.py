"""``schemas.merkle_verify``: the verifiers the client uses without the broker, and
``TreeBuilder``, checked against the store-based tree of ``broker.audit.merkle``."""

from __future__ import annotations

import hashlib

import pytest

from broker.audit import merkle
from schemas import merkle_verify
from schemas.merkle_verify import EMPTY_ROOT, TreeBuilder, leaf_hash


def test_broker_merkle_re_exports_the_same_objects() -> None:
    for name in (
        "EMPTY_ROOT",
        "HASH_SIZE",
        "ProofError",
        "leaf_hash",
        "node_hash",
        "verify_consistency",
        "verify_inclusion",
    ):
        assert getattr(merkle, name) is getattr(merkle_verify, name)
        assert name in merkle.__all__


def test_tree_builder_gives_every_root_the_store_gives() -> None:
    store, tree = merkle.MemoryHashStore(), TreeBuilder()
    assert tree.root() == EMPTY_ROOT == hashlib.sha256(b"").digest()
    for i in range(300):
        h = leaf_hash(i.to_bytes(4, "big"))
        store.append([h])
        tree.append(h)
        assert tree.size == store.size
        assert tree.root() == merkle.root(store, store.size)


def test_a_copy_grows_on_its_own() -> None:
    tree = TreeBuilder()
    tree.extend(leaf_hash(bytes([i])) for i in range(5))
    twin = tree.copy()
    twin.append(leaf_hash(b"x"))
    assert (tree.size, twin.size) == (5, 6)
    store = merkle.MemoryHashStore()
    store.append([leaf_hash(bytes([i])) for i in range(5)])
    assert tree.root() == merkle.root(store, 5)


def test_a_leaf_hash_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="31 bytes"):
        TreeBuilder().append(b"\x00" * 31)
