"""Signed tree heads of the audit log, and the checks a monitor makes between two of them.

    SignedTreeHead
    ├── head   TreeHead: v, origin (which log), tree_size, root_hash, timestamp (epoch ms)
    ├── kid    the log key's id
    └── sig    Ed25519 over "istmo/v1/tree-head\\x00" + canonical JSON of head

A tree head means nothing until ``verify_tree_head`` has checked it against the pinned log
key and origin: there is no "unsigned but the root matches" path (B-48). Between verified
heads, ``same_size_fork`` spots a split view (B-49) and ``check_monotonic`` a rollback (B-50).
Whether a larger head *extends* a smaller one takes a consistency proof: that is
``broker.audit.merkle.verify_consistency``, and remembering heads, alarms and gossip are the
monitor's (shell) job.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.canonical import b64d, b64e, canonical_json
from schemas.envelope import parse_model
from schemas.errors import EnvelopeError, SignatureError
from schemas.keys import SigningKey, VerifyKey

__all__ = [
    "MAX_TREE_HEAD_BYTES",
    "ORIGIN_PATTERN",
    "SignedTreeHead",
    "TreeHead",
    "TreeHeadConflict",
    "check_monotonic",
    "open_tree_head",
    "parse_signed_tree_head",
    "same_size_fork",
    "sign_tree_head",
    "verify_tree_head",
]

MAX_TREE_HEAD_BYTES = 2048
# A schema-less URL-like name, as C2SP checkpoints use: "istmo.example/audit".
ORIGIN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
_DOMAIN = b"istmo/v1/tree-head\x00"
_EMPTY_ROOT_B64 = b64e(hashlib.sha256(b"").digest())
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)

# Canonical standard base64 of exactly 32 bytes (the last data character carries 4 bits and
# two zero bits) and of exactly 64 bytes (2 bits and four zero bits).
RootHashB64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
SignatureB64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{85}[AQgw]==$")]
SigningKid = Annotated[str, StringConstraints(pattern=r"^sig-[0-9a-f]{32}$")]
Origin = Annotated[str, StringConstraints(pattern=ORIGIN_PATTERN)]


class TreeHeadConflict(EnvelopeError):
    """Two verified tree heads of one log contradict each other (rollback or split view)."""

    default_code = "log_inconsistent"


class TreeHead(BaseModel):
    """The state of the log at ``tree_size`` entries.

    Attributes:
        v: format version, 1.
        origin: the log's name; a head of another log never verifies as this one's.
        tree_size: number of entries.
        root_hash: base64 of the 32-byte RFC 9162 root of the first ``tree_size`` entries.
        timestamp: when the log signed it, epoch milliseconds.
    """

    model_config = _STRICT

    v: Literal[1]
    origin: Origin
    tree_size: Annotated[int, Field(ge=0, le=2**53 - 1)]
    root_hash: RootHashB64
    timestamp: Annotated[int, Field(ge=0, le=2**50)]

    @model_validator(mode="after")
    def _empty_tree_root(self) -> TreeHead:
        if self.tree_size == 0 and self.root_hash != _EMPTY_ROOT_B64:
            raise ValueError("a tree of size 0 has the empty-tree root")
        return self

    def root(self) -> bytes:
        """The root hash as 32 bytes."""
        return b64d(self.root_hash, field="root_hash", max_bytes=32)


class SignedTreeHead(BaseModel):
    """A TreeHead signed by the log's key."""

    model_config = _STRICT

    head: TreeHead
    kid: SigningKid
    sig: SignatureB64


def _signed_bytes(head: TreeHead) -> bytes:
    return _DOMAIN + canonical_json(head.model_dump(mode="json"))


def sign_tree_head(head: TreeHead, key: SigningKey) -> SignedTreeHead:
    """Sign ``head`` with the log key (never the API's or an agency's key)."""
    return SignedTreeHead(
        head=head, kid=key.verify_key.kid, sig=b64e(key.sign(_signed_bytes(head)))
    )


def verify_tree_head(sth: SignedTreeHead, key: VerifyKey, origin: str) -> TreeHead:
    """Check ``sth`` against the pinned log key and the expected log name.

    Args:
        sth: the signed tree head, as parsed.
        key: the log's pinned verify key.
        origin: the name of the log the caller means to follow.

    Returns:
        The tree head, now safe to compare and to check proofs against.

    Raises:
        SignatureError: signed by another key (``unknown_key``), a bad signature
            (``signature_invalid``), or a head of another log (``origin_mismatch``).
    """
    # 1. The head names the pinned key.
    if sth.kid != key.kid:
        raise SignatureError("tree head is signed by an unknown key", code="unknown_key")
    # 2. The signature covers the domain-separated canonical head.
    key.verify(b64d(sth.sig, field="tree head sig", max_bytes=64), _signed_bytes(sth.head))
    # 3. It is a head of the log the caller follows, not of another log under the same key.
    if sth.head.origin != origin:
        raise SignatureError(
            f"tree head is for log {sth.head.origin!r}, not {origin[:128]!r}",
            code="origin_mismatch",
        )
    return sth.head


def parse_signed_tree_head(raw: bytes) -> SignedTreeHead:
    """Parse a signed tree head strictly (EnvelopeError on any fault). Does not verify it."""
    return parse_model(SignedTreeHead, raw, max_bytes=MAX_TREE_HEAD_BYTES, what="tree head")


def open_tree_head(raw: bytes, key: VerifyKey, origin: str) -> TreeHead:
    """``parse_signed_tree_head`` then ``verify_tree_head``.

    Raises:
        EnvelopeError: malformed.
        SignatureError: as ``verify_tree_head``.
    """
    return verify_tree_head(parse_signed_tree_head(raw), key, origin)


def _same_log(a: TreeHead, b: TreeHead) -> None:
    if a.origin != b.origin:
        raise ValueError(f"tree heads of different logs: {a.origin!r} and {b.origin!r}")


def same_size_fork(a: TreeHead, b: TreeHead) -> bool:
    """True when two verified heads of one log have the same size and different roots.

    Both heads are signed by the log, so the pair is proof that it showed two histories
    (a split view, B-49): keep both as evidence and stop trusting the log.

    Raises:
        ValueError: the heads are of different logs.
    """
    _same_log(a, b)
    return a.tree_size == b.tree_size and a.root_hash != b.root_hash


def check_monotonic(last: TreeHead, new: TreeHead) -> None:
    """Refuse a verified head that cannot follow the last verified one.

    This is the cheap check between heads; when ``new`` is larger, the caller must still
    verify a consistency proof from ``last`` to ``new``. Timestamps are not compared: a log
    whose clock stepped back is not a log that lied.

    Raises:
        TreeHeadConflict: ``new`` is smaller than ``last`` (code ``rollback``, B-50), or the
            same size with another root (code ``split_view``, B-49).
        ValueError: the heads are of different logs.
    """
    _same_log(last, new)
    if new.tree_size < last.tree_size:
        raise TreeHeadConflict(
            f"tree size {new.tree_size} is below the last verified size {last.tree_size}",
            code="rollback",
        )
    if same_size_fork(last, new):
        raise TreeHeadConflict(
            f"two roots for tree size {new.tree_size}: the log shows a split view",
            code="split_view",
        )
