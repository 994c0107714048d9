"""RFC 9162 Merkle math: the transparency-dev vectors, a reference oracle, hostile proofs.

Catalogue items: B-46 (mutated inclusion proofs), B-47 (consistency forgery where old entries
were prepended or rewritten). The oracle below is RFC 9162 section 2.1 written as literally
as possible (recursive, no store), so the store-based code is checked against the RFC's own
definitions, not against itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.merkle import (
    EMPTY_ROOT,
    MemoryHashStore,
    ProofError,
    append_nodes,
    consistency_proof,
    consistency_proof_plan,
    fold,
    inclusion_proof,
    inclusion_proof_plan,
    leaf_hash,
    node_hash,
    root,
    root_plan,
    verify_consistency,
    verify_inclusion,
)
from schemas.errors import EnvelopeError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc9162"


# ---------------------------------------------------------------------------------------------
# RFC 9162 section 2.1, literally: the oracle


def ref_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def entry(i: int) -> bytes:
    return b"audit entry %d" % i


def build(entries: Sequence[bytes]) -> MemoryHashStore:
    store = MemoryHashStore()
    store.append(leaf_hash(e) for e in entries)
    return store


def rejects(check: Callable[[], None]) -> bool:
    try:
        check()
    except ProofError:
        return True
    return False


# A shared log for the property tests: twice the largest size they draw, for size * 2.
MAX_SIZE = 300
ENTRIES = [entry(i) for i in range(2 * MAX_SIZE)]
STORE = build(ENTRIES)
ROOTS = [root(STORE, n) for n in range(2 * MAX_SIZE + 1)]


# ---------------------------------------------------------------------------------------------
# Hashes


def test_hashes_are_rfc9162() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    # Domain separation: a leaf can never pass for a node over the same 64 bytes.
    assert leaf_hash(b"a" * 32 + b"b" * 32) != node_hash(b"a" * 32, b"b" * 32)


def test_empty_tree() -> None:
    store = MemoryHashStore()
    assert store.size == 0
    assert root(store, 0) == EMPTY_ROOT
    assert root_plan(0) == ()
    assert consistency_proof(store, 0, 0) == []


# ---------------------------------------------------------------------------------------------
# The transparency-dev vectors (tests/vectors/rfc9162)


def _vector_files() -> list[Path]:
    return sorted(VECTORS.rglob("*.json"))


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def test_vector_set_is_complete() -> None:
    files = _vector_files()
    cases = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    inclusion = [c for c in cases if "leafIdx" in c]
    consistency = [c for c in cases if "size1" in c]
    assert len(inclusion) == 98
    assert len(consistency) == 98
    assert sum(not c["wantErr"] for c in cases) == 12  # the rest must be rejected
    assert (VECTORS / "LICENSE").is_file()


@pytest.mark.parametrize(
    "path", _vector_files(), ids=lambda p: p.relative_to(VECTORS).as_posix().removesuffix(".json")
)
def test_rfc9162_vector(path: Path) -> None:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    proof = [_b64(p) for p in case["proof"] or []]

    def check() -> None:
        if "leafIdx" in case:
            verify_inclusion(
                _b64(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, _b64(case["root"])
            )
        else:
            verify_consistency(
                case["size1"], case["size2"], _b64(case["root1"]), _b64(case["root2"]), proof
            )

    assert rejects(check) is case["wantErr"], case["desc"]


# ---------------------------------------------------------------------------------------------
# Store-based roots and proofs equal the RFC's, exhaustively for small trees


@pytest.mark.parametrize("size", range(0, 65))
def test_roots_and_proofs_match_the_rfc(size: int) -> None:
    d = ENTRIES[:size]
    assert root(STORE, size) == ref_mth(d)
    for m in range(size):
        proof = inclusion_proof(STORE, m, size)
        assert proof == ref_path(m, d)
        verify_inclusion(leaf_hash(d[m]), m, size, proof, ROOTS[size])
    for m in range(1, size + 1):
        proof = consistency_proof(STORE, m, size)
        assert proof == (ref_subproof(m, d, True) if m < size else [])
        verify_consistency(m, size, ROOTS[m], ROOTS[size], proof)


def test_batch_boundaries_do_not_change_the_tree() -> None:
    rng = random.Random(7)
    store = MemoryHashStore()
    while store.size < 500:
        n = rng.choice([0, 1, 1, 2, 3, 7, 16, 33])
        before = store.size
        assert store.append(leaf_hash(e) for e in ENTRIES[before : before + n]) == before + n
    for size in (0, 1, 2, 3, 255, 256, 257, 500):
        assert root(store, size) == ROOTS[size]
    for level in range(9):
        for index in range(500 >> level):
            assert store.get(level, index) == STORE.get(level, index)


def test_append_nodes_lists_every_completed_subtree() -> None:
    store = MemoryHashStore()
    store.append(leaf_hash(e) for e in ENTRIES[:3])
    nodes = append_nodes(store, 3, [leaf_hash(ENTRIES[3]), leaf_hash(ENTRIES[4])])
    assert [(level, index) for level, index, _ in nodes] == [(0, 3), (1, 1), (2, 0), (0, 4)]
    assert nodes[2][2] == ref_mth(ENTRIES[:4])
    assert append_nodes(store, 3, []) == []


def test_append_refuses_bad_input() -> None:
    store = MemoryHashStore()
    with pytest.raises(ValueError, match="31 bytes"):
        append_nodes(store, 0, [b"x" * 31])
    with pytest.raises(ValueError, match="negative"):
        append_nodes(store, -1, [])
    store.append([leaf_hash(b"a")])
    with pytest.raises(ValueError, match="not the next"):
        store.put([(0, 0, leaf_hash(b"b"))])  # a rewrite
    with pytest.raises(ValueError, match="not the next"):
        store.put([(0, 2, leaf_hash(b"b"))])  # a gap
    with pytest.raises(KeyError):
        store.get(0, 1)
    with pytest.raises(KeyError):
        store.get(1, 0)
    with pytest.raises(KeyError):
        store.get(-1, 0)


def test_proofs_beyond_the_store_raise_lookup_error() -> None:
    store = build(ENTRIES[:5])
    with pytest.raises(LookupError):
        inclusion_proof(store, 0, 6)
    with pytest.raises(LookupError):
        root(store, 8)


@pytest.mark.parametrize(
    ("plan", "args", "match"),
    [
        (inclusion_proof_plan, (0, 0), "outside"),
        (inclusion_proof_plan, (5, 5), "outside"),
        (inclusion_proof_plan, (-1, 5), "outside"),
        (consistency_proof_plan, (5, 4), "no consistency proof"),
        (consistency_proof_plan, (-1, 4), "no consistency proof"),
        (root_plan, (-1,), "negative"),
    ],
)
def test_plans_refuse_impossible_requests(
    plan: Callable[..., object], args: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        plan(*args)


def test_plans_name_perfect_subtrees() -> None:
    assert root_plan(13) == ((3, 0), (2, 2), (0, 12))
    # Leaf 0 of 13: siblings leaf 1, [2,4), [4,8), then the right border [8,13) folded.
    assert inclusion_proof_plan(0, 13) == [
        ((0, 1),),
        ((1, 1),),
        ((2, 1),),
        ((2, 2), (0, 12)),
    ]
    assert consistency_proof_plan(4, 4) == []
    assert consistency_proof_plan(0, 9) == []
    with pytest.raises(ValueError, match="nothing"):
        fold([])


# ---------------------------------------------------------------------------------------------
# Verifier edge cases, one table


H = leaf_hash(ENTRIES[0])


@pytest.mark.parametrize(
    ("desc", "args"),
    [
        ("size 0", (H, 0, 0, [], EMPTY_ROOT)),
        ("index == size", (H, 1, 1, [], H)),
        ("index > size", (H, 7, 3, [], ROOTS[3])),
        ("negative index", (H, -1, 3, [], ROOTS[3])),
        ("negative size", (H, 0, -1, [], ROOTS[3])),
        ("short leaf hash", (H[:31], 0, 1, [], H[:31])),
        ("empty root", (H, 0, 1, [], b"")),
        ("long root", (H, 0, 1, [], H + b"\x00")),
        ("extra hash for size 1", (H, 0, 1, [H], H)),
        ("missing hash", (H, 0, 2, [], ROOTS[2])),
        ("short proof hash", (H, 0, 2, [leaf_hash(ENTRIES[1])[:31]], ROOTS[2])),
        ("another leaf", (leaf_hash(ENTRIES[1]), 0, 1, [], ROOTS[1])),
        ("the root as leaf", (ROOTS[2], 0, 2, [leaf_hash(ENTRIES[1])], ROOTS[2])),
    ],
)
def test_inclusion_edge_cases_rejected(desc: str, args: tuple[Any, ...]) -> None:
    with pytest.raises(ProofError) as exc:
        verify_inclusion(*args)
    assert exc.value.code == "proof_invalid"
    assert isinstance(exc.value, EnvelopeError)


def test_single_leaf_tree_root_is_its_leaf_hash() -> None:
    verify_inclusion(H, 0, 1, [], ROOTS[1])
    assert ROOTS[1] == H


@pytest.mark.parametrize(
    ("desc", "args", "ok"),
    [
        ("0 -> 0, empty roots", (0, 0, EMPTY_ROOT, EMPTY_ROOT, []), True),
        ("0 -> 0, other root", (0, 0, H, H, []), False),
        ("0 -> 0, proof given", (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]), False),
        ("0 -> 5, empty proof", (0, 5, EMPTY_ROOT, ROOTS[5], []), True),
        ("0 -> 5, old root not empty", (0, 5, ROOTS[5], ROOTS[5], []), False),
        ("0 -> 5, proof given", (0, 5, EMPTY_ROOT, ROOTS[5], [ROOTS[5]]), False),
        ("0 -> 5, short new root", (0, 5, EMPTY_ROOT, ROOTS[5][:16], []), False),
        ("3 -> 3", (3, 3, ROOTS[3], ROOTS[3], []), True),
        ("3 -> 3, roots differ", (3, 3, ROOTS[3], ROOTS[4], []), False),
        ("3 -> 3, proof given", (3, 3, ROOTS[3], ROOTS[3], [H]), False),
        ("5 -> 3", (5, 3, ROOTS[5], ROOTS[3], []), False),
        ("negative", (-1, 3, EMPTY_ROOT, ROOTS[3], []), False),
        ("3 -> 5, empty proof", (3, 5, ROOTS[3], ROOTS[5], []), False),
        ("3 -> 5, short old root", (3, 5, ROOTS[3][:31], ROOTS[5], [H, H, H]), False),
        ("3 -> 5, empty new root", (3, 5, ROOTS[3], b"", [H, H, H]), False),
        ("4 -> 8, old root given twice", (4, 8, ROOTS[4], ROOTS[8], [ROOTS[4], ROOTS[8]]), False),
    ],
)
def test_consistency_edge_cases(desc: str, args: tuple[Any, ...], ok: bool) -> None:
    assert rejects(lambda: verify_consistency(*args)) is not ok


# ---------------------------------------------------------------------------------------------
# B-46: generated proofs verify; every single mutation is rejected


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _proof_mutations(proof: list[bytes], bit: int) -> list[tuple[str, list[bytes]]]:
    out: list[tuple[str, list[bytes]]] = [
        ("extra trailing hash", [*proof, H]),
        ("extra leading hash", [H, *proof]),
        ("extra trailing copy", [*proof, proof[-1]] if proof else [H]),
    ]
    for i in range(len(proof)):
        out.append((f"missing hash {i}", proof[:i] + proof[i + 1 :]))
        out.append((f"hash {i} flipped", [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]]))
    if len(proof) > 1:
        out.append(("swapped hashes", [proof[1], proof[0], *proof[2:]]))
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_inclusion_proofs_verify_and_mutations_fail(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX_SIZE), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    bit = data.draw(st.integers(0, 255), label="bit")
    leaf, root_hash = leaf_hash(ENTRIES[index]), ROOTS[size]
    proof = inclusion_proof(STORE, index, size)
    verify_inclusion(leaf, index, size, proof, root_hash)

    cases: list[tuple[str, tuple[Any, ...]]] = [
        ("index + 1", (leaf, index + 1, size, proof, root_hash)),
        ("index - 1", (leaf, index - 1, size, proof, root_hash)),
        ("size * 2", (leaf, index, size * 2, proof, root_hash)),
        ("size // 2", (leaf, index, size // 2, proof, root_hash)),
        ("leaf bit flipped", (_flip(leaf, bit), index, size, proof, root_hash)),
        ("root bit flipped", (leaf, index, size, proof, _flip(root_hash, bit))),
        ("empty root", (leaf, index, size, proof, b"")),
        ("empty-tree root", (leaf, index, size, proof, EMPTY_ROOT)),
        ("root of size * 2", (leaf, index, size, proof, ROOTS[size * 2])),
        ("other leaf", (leaf_hash(ENTRIES[index - 1]), index, size, proof, root_hash)),
    ]
    cases += [(d, (leaf, index, size, p, root_hash)) for d, p in _proof_mutations(proof, bit)]
    for desc, args in cases:
        assert rejects(lambda args=args: verify_inclusion(*args)), desc


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_consistency_proofs_verify_and_mutations_fail(data: st.DataObject) -> None:
    new = data.draw(st.integers(2, MAX_SIZE), label="new")
    old = data.draw(st.integers(1, new - 1), label="old")
    bit = data.draw(st.integers(0, 255), label="bit")
    r1, r2 = ROOTS[old], ROOTS[new]
    proof = consistency_proof(STORE, old, new)
    verify_consistency(old, new, r1, r2, proof)

    cases: list[tuple[str, tuple[Any, ...]]] = [
        ("old + 1", (old + 1, new, r1, r2, proof)),
        ("old - 1", (old - 1, new, r1, r2, proof)),
        ("old * 2", (old * 2, new, r1, r2, proof)),
        ("old // 2", (old // 2, new, r1, r2, proof)),
        ("new * 2", (old, new * 2, r1, r2, proof)),
        ("new // 2", (old, new // 2, r1, r2, proof)),
        ("swapped roots", (old, new, r2, r1, proof)),
        ("old root bit flipped", (old, new, _flip(r1, bit), r2, proof)),
        ("new root bit flipped", (old, new, r1, _flip(r2, bit), proof)),
        ("empty old root", (old, new, b"", r2, proof)),
        ("empty new root", (old, new, r1, b"", proof)),
        ("root of another old size", (old, new, ROOTS[old - 1], r2, proof)),
    ]
    cases += [(d, (old, new, r1, r2, p)) for d, p in _proof_mutations(proof, bit)]
    for desc, args in cases:
        assert rejects(lambda args=args: verify_consistency(*args)), desc


def test_sizes_are_bound_by_the_signed_head_not_by_the_root() -> None:
    """What the verifiers cannot catch, and why tree heads sign size and root together.

    RFC 9162 roots do not commit to the tree size: the proof of leaf 0 in a tree of 3 has
    the shape of one in a tree of 4, so it verifies against the size-3 root with either
    size. B-46's mutations (index +-1, size * 2 or // 2) never hit this; size +- 1 can.
    """
    proof = inclusion_proof(STORE, 0, 3)
    verify_inclusion(leaf_hash(ENTRIES[0]), 0, 4, proof, ROOTS[3])


# ---------------------------------------------------------------------------------------------
# B-47: a history with old entries prepended or rewritten cannot be proven consistent


def _every_proof_from(forged: MemoryHashStore, old: int, new: int) -> list[list[bytes]]:
    """Honest proofs from the forged tree for every old size, plus hand-made splices."""
    proofs = [consistency_proof(forged, m, new) for m in range(1, new)]
    proofs += [inclusion_proof(forged, i, new) for i in range(new)]
    nodes = [forged.get(level, index) for level in range(8) for index in range(new >> level)]
    proofs += [[h] for h in nodes] + [[a, b] for a in nodes[:40] for b in nodes[:40]]
    return proofs


@pytest.mark.parametrize("old", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize(
    "how", ["prepend one", "prepend old-size", "rewrite first", "rewrite last"]
)
def test_consistency_forgery_rejected(old: int, how: str) -> None:
    honest = ENTRIES[:old]
    if how == "prepend one":
        history = [b"forged", *honest]
    elif how == "prepend old-size":
        # The old tree becomes the right half: a verifier that takes positions from the
        # proof (pymerkle 6.1.0) accepts [left-half root] with "old root on the right".
        history = [b"forged %d" % i for i in range(old)] + honest
    elif how == "rewrite first":
        history = [b"rewritten", *honest[1:]]
    else:
        history = [*honest[:-1], b"rewritten"]
    history += [b"later %d" % i for i in range(3)]
    new = len(history)
    forged = build(history)
    new_root = root(forged, new)
    for proof in _every_proof_from(forged, old, new):
        assert rejects(
            lambda proof=proof: verify_consistency(old, new, ROOTS[old], new_root, proof)
        )


def test_pymerkle_style_right_half_forgery_rejected() -> None:
    """The old tree (size 4) placed as the right half of a new tree of size 8."""
    left = build([b"forged %d" % i for i in range(4)])
    forged_root = node_hash(root(left, 4), ROOTS[4])
    assert forged_root == ref_mth([b"forged %d" % i for i in range(4)] + ENTRIES[:4])
    for proof in ([root(left, 4)], [ROOTS[4], root(left, 4)], [root(left, 4), ROOTS[4]]):
        assert rejects(lambda proof=proof: verify_consistency(4, 8, ROOTS[4], forged_root, proof))


# ---------------------------------------------------------------------------------------------
# O(log n) stored-hash reads


class CountingStore:
    """A HashStore that counts reads (a fake of the port, wrapping the real memory store)."""

    def __init__(self, inner: MemoryHashStore) -> None:
        self.inner = inner
        self.reads = 0

    def get(self, level: int, index: int) -> bytes:
        self.reads += 1
        return self.inner.get(level, index)


@pytest.fixture(scope="module")
def big_store() -> MemoryHashStore:
    store = MemoryHashStore()
    store.append(leaf_hash(b"%d" % i) for i in range(100_000))
    return store


def test_proofs_read_o_log_n_hashes(big_store: MemoryHashStore) -> None:
    counting = CountingStore(big_store)
    rng = random.Random(1)
    sizes = [100_000, 99_999, 65_536, 65_537, 2**16 - 1, *rng.sample(range(2, 100_001), 200)]
    worst = {"root": 0, "inclusion": 0, "consistency": 0}
    for size in sizes:
        bound = 2 * math.ceil(math.log2(size))
        indices = {0, size - 1, size // 2, *rng.sample(range(size), 5)}
        olds = {1, size - 1, size // 2, *rng.sample(range(1, size), 5)}
        for kind, calls in (
            ("root", [lambda s=size: root(counting, s)]),
            ("inclusion", [lambda i=i, s=size: inclusion_proof(counting, i, s) for i in indices]),
            ("consistency", [lambda m=m, s=size: consistency_proof(counting, m, s) for m in olds]),
        ):
            for call in calls:
                counting.reads = 0
                call()
                assert counting.reads <= bound, (kind, size)
                worst[kind] = max(worst[kind], counting.reads)
    assert worst["root"] <= 17
    assert worst["inclusion"] <= 34
    assert worst["consistency"] <= 34


def test_append_reads_o_log_n_hashes(big_store: MemoryHashStore) -> None:
    copy = MemoryHashStore()
    copy.put(
        (level, index, big_store.get(level, index))
        for level in range(17)
        for index in range(100_000 >> level)
    )
    counting = CountingStore(copy)
    for batch in (1, 1, 7, 100, 1):
        counting.reads = 0
        size = copy.size
        copy.put(append_nodes(counting, size, [leaf_hash(b"new %d" % i) for i in range(batch)]))
        assert counting.reads <= math.ceil(math.log2(size))
    assert root(copy, copy.size) == ref_mth(
        [b"%d" % i for i in range(100_000)]
        + [b"new %d" % i for i in (0, 0, *range(7), *range(100), 0)]
    )
