"""Signed tree heads: sign, verify, tamper, wrong key, origin, rollback and split view.

Catalogue items: B-48 (valid root but bad or unknown signature, or another origin), B-49
(same size, different roots), B-50 (a smaller size than the last verified), S-07 (without the
log key, no new head verifies).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from broker.audit.merkle import (
    EMPTY_ROOT,
    MemoryHashStore,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from schemas.canonical import b64e, canonical_json
from schemas.errors import EnvelopeError, SignatureError
from schemas.ids import AgencyId, BulletinId
from schemas.keys import SigningKey
from schemas.receipt import sign_receipt
from schemas.treehead import (
    SignedTreeHead,
    TreeHead,
    TreeHeadConflict,
    check_monotonic,
    open_tree_head,
    parse_signed_tree_head,
    same_size_fork,
    sign_tree_head,
    verify_tree_head,
)

ORIGIN = "istmo.example/audit"
LOG_KEY = SigningKey(bytes(range(32)))
OTHER_KEY = SigningKey(bytes(range(1, 33)))
ROOT_A = hashlib.sha256(b"a").digest()
ROOT_B = hashlib.sha256(b"b").digest()


def head(size: int = 5, root_hash: bytes = ROOT_A, **kw: Any) -> TreeHead:
    fields: dict[str, Any] = {
        "v": 1,
        "origin": ORIGIN,
        "tree_size": size,
        "root_hash": b64e(root_hash),
        "timestamp": 1_767_225_600_000,
    }
    return TreeHead(**{**fields, **kw})


def wire(sth: SignedTreeHead) -> dict[str, Any]:
    return sth.model_dump(mode="json")


def raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


# ---------------------------------------------------------------------------------------------
# Sign and verify


def test_sign_verify_round_trip() -> None:
    h = head()
    sth = sign_tree_head(h, LOG_KEY)
    assert sth.kid == LOG_KEY.verify_key.kid
    assert verify_tree_head(sth, LOG_KEY.verify_key, ORIGIN) == h
    assert h.root() == ROOT_A
    encoded = sth.model_dump_json().encode()
    assert parse_signed_tree_head(encoded) == sth
    assert open_tree_head(encoded, LOG_KEY.verify_key, ORIGIN) == h


def test_signature_is_over_the_domain_separated_canonical_head() -> None:
    h = head()
    sth = sign_tree_head(h, LOG_KEY)
    message = b"istmo/v1/tree-head\x00" + canonical_json(h.model_dump(mode="json"))
    LOG_KEY.verify_key.verify(base64.b64decode(sth.sig), message)
    # The same key's signature over the bare canonical head (another protocol) is refused.
    bare = sth.model_copy(update={"sig": b64e(LOG_KEY.sign(canonical_json(wire(sth)["head"])))})
    with pytest.raises(SignatureError):
        verify_tree_head(bare, LOG_KEY.verify_key, ORIGIN)


@pytest.mark.parametrize(
    "change",
    [
        {"tree_size": 6},
        {"tree_size": 4},
        {"root_hash": b64e(ROOT_B)},
        {"timestamp": 1_767_225_600_001},
        {"origin": "istmo.example/other"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_tampered_head_rejected(change: dict[str, Any]) -> None:
    sth = sign_tree_head(head(), LOG_KEY)
    forged = sth.model_copy(update={"head": sth.head.model_copy(update=change)})
    with pytest.raises(SignatureError) as exc:
        verify_tree_head(forged, LOG_KEY.verify_key, ORIGIN)
    assert exc.value.code == "signature_invalid"


def test_wrong_key_rejected() -> None:
    sth = sign_tree_head(head(), OTHER_KEY)
    with pytest.raises(SignatureError) as exc:
        verify_tree_head(sth, LOG_KEY.verify_key, ORIGIN)
    assert exc.value.code == "unknown_key"
    # Claiming the log key's id does not help a head signed by another key.
    relabelled = sth.model_copy(update={"kid": LOG_KEY.verify_key.kid})
    with pytest.raises(SignatureError) as exc:
        verify_tree_head(relabelled, LOG_KEY.verify_key, ORIGIN)
    assert exc.value.code == "signature_invalid"


def test_valid_root_with_bad_signature_rejected() -> None:
    """B-48: a root the auditor computed itself still needs the log's signature."""
    store = MemoryHashStore()
    store.append(leaf_hash(b"entry %d" % i) for i in range(5))
    honest = sign_tree_head(head(5, root(store, 5)), LOG_KEY)
    sig = bytearray(base64.b64decode(honest.sig))
    sig[0] ^= 1
    for bad in (b64e(bytes(sig)), b64e(bytes(64))):
        with pytest.raises(SignatureError):
            verify_tree_head(honest.model_copy(update={"sig": bad}), LOG_KEY.verify_key, ORIGIN)
    unsigned = wire(honest)
    del unsigned["sig"]
    with pytest.raises(EnvelopeError):
        open_tree_head(raw(unsigned), LOG_KEY.verify_key, ORIGIN)
    for empty in ("", None):
        with pytest.raises(EnvelopeError):
            open_tree_head(raw({**wire(honest), "sig": empty}), LOG_KEY.verify_key, ORIGIN)


def test_origin_mismatch_rejected() -> None:
    """A head of another log signed by the same key is not a head of this log."""
    sth = sign_tree_head(head(origin="istmo.example/staging"), LOG_KEY)
    with pytest.raises(SignatureError) as exc:
        verify_tree_head(sth, LOG_KEY.verify_key, ORIGIN)
    assert exc.value.code == "origin_mismatch"
    assert "istmo.example/staging" in str(exc.value)


def test_db_only_attacker_cannot_make_a_head() -> None:
    """S-07: with every byte of the DB but not the log key, a new head does not verify."""
    sth = sign_tree_head(head(5), LOG_KEY)
    grown = sth.model_copy(update={"head": head(6, ROOT_B)})
    with pytest.raises(SignatureError):
        verify_tree_head(grown, LOG_KEY.verify_key, ORIGIN)
    # Nor does a signature another Istmo key made over other bytes (a receipt, say).
    receipt = sign_receipt(
        bulletin_id=BulletinId("00000000-0000-4000-8000-000000000000"),
        originator=AgencyId("agency-a"),
        recipient=AgencyId("agency-b"),
        envelope_digest="0" * 64,
        received_at=1,
        key=LOG_KEY,
    )
    spliced = grown.model_copy(update={"sig": receipt.sig})
    with pytest.raises(SignatureError):
        verify_tree_head(spliced, LOG_KEY.verify_key, ORIGIN)


# ---------------------------------------------------------------------------------------------
# Strict parsing


GOOD = wire(sign_tree_head(head(), LOG_KEY))


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(GOOD))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("desc", "doc", "code"),
    [
        ("unknown field", {**GOOD, "extra": 1}, "malformed"),
        ("unknown head field", _with(("head", "extra"), 1), "malformed"),
        ("version 2", _with(("head", "v"), 2), "unsupported_version"),
        ("negative size", _with(("head", "tree_size"), -1), "malformed"),
        ("size as string", _with(("head", "tree_size"), "5"), "malformed"),
        ("size as bool", _with(("head", "tree_size"), True), "malformed"),
        ("size too large", _with(("head", "tree_size"), 2**53), "malformed"),
        ("root of 31 bytes", _with(("head", "root_hash"), b64e(bytes(31))), "malformed"),
        ("root of 33 bytes", _with(("head", "root_hash"), b64e(bytes(33))), "malformed"),
        ("root not canonical", _with(("head", "root_hash"), b64e(ROOT_A)[:42] + "B="), "malformed"),
        ("root urlsafe", _with(("head", "root_hash"), "_" * 43 + "="), "malformed"),
        ("empty root", _with(("head", "root_hash"), ""), "malformed"),
        ("size 0 with a root", _with(("head", "tree_size"), 0), "malformed"),
        ("empty origin", _with(("head", "origin"), ""), "malformed"),
        ("origin with space", _with(("head", "origin"), "istmo example"), "malformed"),
        ("origin too long", _with(("head", "origin"), "a" * 129), "malformed"),
        ("negative time", _with(("head", "timestamp"), -1), "malformed"),
        ("kem kid", _with(("kid",), "kem-" + "0" * 32), "malformed"),
        ("sig of 63 bytes", _with(("sig",), b64e(bytes(63))), "malformed"),
        ("sig not canonical", _with(("sig",), b64e(bytes(64))[:85] + "B=="), "malformed"),
        ("no head", {k: v for k, v in GOOD.items() if k != "head"}, "malformed"),
    ],
)
def test_parse_refuses(desc: str, doc: dict[str, Any], code: str) -> None:
    with pytest.raises(EnvelopeError) as exc:
        parse_signed_tree_head(raw(doc))
    assert exc.value.code == code, desc


@pytest.mark.parametrize(
    ("desc", "data", "code"),
    [
        ("duplicate key", raw(GOOD)[:-1] + b', "kid": "x"}', "malformed"),
        ("float", raw(GOOD).replace(b'"tree_size": 5', b'"tree_size": 5.0'), "malformed"),
        ("oversized", b" " * 4096 + raw(GOOD), "oversized"),
        ("not JSON", b"{", "malformed"),
    ],
)
def test_parse_refuses_bytes(desc: str, data: bytes, code: str) -> None:
    with pytest.raises(EnvelopeError) as exc:
        parse_signed_tree_head(data)
    assert exc.value.code == code, desc


def test_empty_tree_head() -> None:
    h = head(0, EMPTY_ROOT)
    assert verify_tree_head(sign_tree_head(h, LOG_KEY), LOG_KEY.verify_key, ORIGIN) == h
    with pytest.raises(ValueError, match="empty-tree root"):
        head(0, ROOT_A)


def test_json_schema_is_strict() -> None:
    for model in (TreeHead, SignedTreeHead):
        schema = model.model_json_schema(mode="validation")
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
    props = TreeHead.model_json_schema()["properties"]
    assert props["tree_size"]["minimum"] == 0
    assert props["v"]["const"] == 1


# ---------------------------------------------------------------------------------------------
# Between heads: split view (B-49) and rollback (B-50)


def test_same_size_fork() -> None:
    a = head(5, ROOT_A)
    assert same_size_fork(a, head(5, ROOT_B))
    assert not same_size_fork(a, head(5, ROOT_A, timestamp=1_767_225_700_000))  # re-signed
    assert not same_size_fork(a, head(6, ROOT_B))  # growth: a consistency proof decides
    with pytest.raises(ValueError, match="different logs"):
        same_size_fork(a, head(5, ROOT_B, origin="istmo.example/other"))


def test_check_monotonic() -> None:
    last = head(5, ROOT_A)
    check_monotonic(last, head(5, ROOT_A))
    check_monotonic(last, head(9, ROOT_B))
    with pytest.raises(TreeHeadConflict) as exc:
        check_monotonic(last, head(4, ROOT_B))
    assert exc.value.code == "rollback"
    assert str(exc.value) == "tree size 4 is below the last verified size 5"
    with pytest.raises(TreeHeadConflict) as exc:
        check_monotonic(last, head(5, ROOT_B))
    assert exc.value.code == "split_view"
    assert isinstance(exc.value, EnvelopeError)
    with pytest.raises(ValueError, match="different logs"):
        check_monotonic(last, head(9, ROOT_B, origin="istmo.example/other"))


def test_restore_from_old_backup_is_caught() -> None:
    """S-06 / B-50: the log is restored to size 3 and regrown to 6 with other entries."""
    honest = MemoryHashStore()
    honest.append(leaf_hash(b"entry %d" % i) for i in range(5))
    seen = verify_tree_head(
        sign_tree_head(head(5, root(honest, 5)), LOG_KEY), LOG_KEY.verify_key, ORIGIN
    )
    restored = MemoryHashStore()
    restored.append(leaf_hash(b"entry %d" % i) for i in range(3))
    rolled_back = head(3, root(restored, 3))
    with pytest.raises(TreeHeadConflict):
        check_monotonic(seen, rolled_back)
    restored.append(leaf_hash(b"new entry %d" % i) for i in range(3))
    regrown = head(6, root(restored, 6))
    check_monotonic(seen, regrown)  # sizes alone cannot tell: the proof must
    with pytest.raises(EnvelopeError, match="old root"):
        verify_consistency(5, 6, seen.root(), regrown.root(), consistency_proof(restored, 5, 6))


def test_auditor_flow_with_a_verified_head() -> None:
    """Proofs are checked against the size and root of a verified head, never the proof's."""
    store = MemoryHashStore()
    store.append(leaf_hash(b"entry %d" % i) for i in range(10))
    old = open_tree_head(
        sign_tree_head(head(7, root(store, 7)), LOG_KEY).model_dump_json().encode(),
        LOG_KEY.verify_key,
        ORIGIN,
    )
    new = verify_tree_head(
        sign_tree_head(head(10, root(store, 10)), LOG_KEY), LOG_KEY.verify_key, ORIGIN
    )
    check_monotonic(old, new)
    verify_consistency(
        old.tree_size, new.tree_size, old.root(), new.root(), consistency_proof(store, 7, 10)
    )
    verify_inclusion(
        leaf_hash(b"entry 8"), 8, new.tree_size, inclusion_proof(store, 8, 10), new.root()
    )
