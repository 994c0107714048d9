"""Verify a whole audit log from its HTTP API alone, on the auditor's machine.

``verify_remote`` trusts nothing the server says without a check: the log key (compared with
a pinned ``log.pub`` when one is given), every signed tree head (signature under that key,
for the log's origin), every entry (its leaf hash is the hash of the bytes served, and those
bytes are a canonical audit event), the root of the tree rebuilt from the entries at every
signed size, inclusion proofs of a sample of entries, and consistency proofs from a sample
of earlier heads to the latest one.

When a signed root does not match the entries, consistency proofs from the log's own store
place the change: the first entry whose prefix no longer extends to the signed root. An
entry edited in the database is named by its index; a careful attacker who also recomputed
the stored nodes is caught at the start of the first head range that no longer matches.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from clients.audit_api import (
    DEFAULT_ORIGIN,
    AuditApi,
    RemoteLogError,
    parse_hash,
    pinned_key,
)
from clients.oauth import ApiError
from schemas.audit import AuditEvent
from schemas.canonical import b64d, b64e
from schemas.errors import EnvelopeError, SignatureError
from schemas.keys import VerifyKey
from schemas.merkle_verify import (
    ProofError,
    TreeBuilder,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from schemas.monitor import Findings
from schemas.treehead import SignedTreeHead, parse_signed_tree_head, verify_tree_head

__all__ = ["DEFAULT_SAMPLE", "MAX_LEAF_BYTES", "RemoteReport", "verify_remote"]

DEFAULT_SAMPLE = 32  # inclusion proofs, and consistency proofs from earlier heads
MAX_LEAF_BYTES = 64 * 1024


def _canonical(value: Any) -> bytes | None:
    """``schemas.canonical.canonical_json`` for a value ``json.loads`` made, or None.

    The same encoding without its walk over the value: an audit event has already passed
    the strict model, and a value that re-encodes to the exact bytes served (sorted keys, no
    white space, UTF-8, one of each key) is canonical. Lone surrogates fail to encode.
    """
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except ValueError:  # UnicodeEncodeError included
        return None


@dataclass
class RemoteReport(Findings):
    """What ``verify_remote`` checked, and the first problem if any."""

    url: str = ""
    kid: str = ""
    pinned: bool = False
    inclusion: int = 0  # inclusion proofs checked
    consistency: int = 0  # consistency proofs checked


@dataclass
class _Head:
    size: int
    root: bytes | None  # None: the head itself is bad (reported already)


@dataclass
class _Verifier:
    api: AuditApi
    key: VerifyKey
    origin: str
    report: RemoteReport
    progress: Callable[[int, int], None] | None
    heads: list[_Head] = field(default_factory=list)
    next_head: int = 0
    tree: TreeBuilder = field(default_factory=TreeBuilder)
    base: TreeBuilder = field(default_factory=TreeBuilder)  # the tree at ``vouched``
    since_vouched: list[bytes] | None = field(default_factory=list)  # None: stop bisecting
    vouched: int = 0  # entries below this size match a good signed head
    wanted: dict[int, bytes | None] = field(default_factory=dict)  # sampled index -> leaf hash

    # 1. heads -------------------------------------------------------------------------
    def check_heads(self, listed: list[SignedTreeHead], latest: SignedTreeHead) -> None:
        prev = 0
        for sth in listed:
            size = sth.head.tree_size
            self.heads.append(_Head(size, self._check_head(sth, size, prev)))
            prev = size
        self.report.heads = len(listed)
        n = latest.head.tree_size
        if not listed or listed[-1].head.tree_size != n:
            self.report.add(prev, f"the latest tree head (size {n}) is missing from the list", n)
            self.heads.append(_Head(n, self._check_head(latest, n, prev)))
        elif listed[-1] != latest:
            self.report.add(
                prev,
                f"the server served two different tree heads at size {n}: a split view",
                n,
            )

    def _check_head(self, sth: SignedTreeHead, size: int, prev: int) -> bytes | None:
        try:
            head = verify_tree_head(sth, self.key, self.origin)
        except SignatureError as exc:
            self.report.add(prev, f"tree head at size {size}: {exc} (kid {sth.kid})", size)
            return None
        self.report.latest = head
        return head.root()

    # 2. entries -----------------------------------------------------------------------
    async def check_entries(self, size: int) -> None:
        await self._heads_at(0)
        expected = 0
        while expected < size:
            page = await self.api.entries(expected - 1)
            before = expected
            for doc in page:
                idx = self._index(doc)
                if idx >= size:
                    break
                if idx < expected:
                    self.report.add(idx, f"entry {idx} was served twice or out of order")
                    continue
                if idx != expected:
                    self.report.add(expected, f"entry {expected} is missing (next served: {idx})")
                    expected = idx
                leaf = self._leaf(idx, doc)
                self.tree.append(leaf)
                if self.since_vouched is not None:
                    self.since_vouched.append(leaf)
                if idx in self.wanted:
                    self.wanted[idx] = leaf
                expected += 1
                await self._heads_at(self.tree.size)
            if expected == before:
                break  # an empty page, or one that does not advance: the rest is missing
            if self.progress is not None:
                self.progress(expected, size)
        if expected < size:
            self.report.add(
                expected,
                f"entries from {expected} on are missing: the latest signed head has size {size}",
                size,
            )
        self.report.entries = self.tree.size
        for head in self.heads[self.next_head :]:
            self.report.add(
                self.tree.size,
                f"tree head at size {head.size}, but the log serves only {self.tree.size} entries",
                head.size,
            )
        if self.progress is not None:
            self.progress(expected, size)

    @staticmethod
    def _index(doc: Any) -> int:
        idx = doc.get("index") if isinstance(doc, dict) else None
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise RemoteLogError("the server sent an entry without a valid index")
        return idx

    def _leaf(self, idx: int, doc: dict[str, Any]) -> bytes:
        """The leaf hash of the bytes served (what the tree is rebuilt from)."""
        try:
            leaf = b64d(str(doc.get("leaf")), field="leaf", max_bytes=MAX_LEAF_BYTES)
        except EnvelopeError as exc:
            raise RemoteLogError(f"entry {idx}: the server sent no leaf bytes") from exc
        h = leaf_hash(leaf)
        try:
            stored = parse_hash(doc.get("leaf_hash"), "leaf hash")
        except RemoteLogError:
            stored = None
        if stored != h:
            self.report.add(idx, f"entry {idx}: the stored leaf hash is not its bytes' hash")
        try:
            AuditEvent.model_validate_json(leaf)  # strict: no floats, no unknown fields
            value = json.loads(leaf)
        except (ValidationError, ValueError, RecursionError):
            self.report.add(idx, f"entry {idx} is not an audit event")
            return h
        if _canonical(value) != leaf:
            self.report.add(idx, f"entry {idx} is not canonical JSON")
        elif doc.get("entry") != value:
            self.report.add(idx, f"entry {idx}: the event served is not the one its bytes hold")
        return h

    async def _heads_at(self, size: int) -> None:
        """Check every signed head at ``size`` against the tree rebuilt so far."""
        while self.next_head < len(self.heads) and self.heads[self.next_head].size == size:
            h = self.heads[self.next_head]
            self.next_head += 1
            if h.root is None:
                continue  # a bad head, reported already: it vouches for nothing
            got = self.tree.root()
            if got == h.root:
                self.vouched = size
                self.base = self.tree.copy()
                if self.since_vouched is not None:
                    self.since_vouched = []
                continue
            await self._locate(size, h.root, got)

    async def _locate(self, size: int, signed: bytes, got: bytes) -> None:
        """The signed root at ``size`` is not the entries': find the first changed entry.

        A consistency proof from ``m`` to ``size``, built from the log's stored nodes and
        checked against the root of the first ``m`` entries served, holds exactly when
        those ``m`` entries are the ones the log signed. Bisect for the largest such ``m``.
        """
        changed = (
            f"tree head at size {size} signs root {b64e(signed)}, the entries give "
            f"{b64e(got)}: entries {self.vouched}..{size - 1} were changed"
        )
        leaves, self.since_vouched = self.since_vouched, None  # bisect the first range only
        lo, hi = self.vouched, size
        if leaves is None or (lo > 0 and not await self._extends(lo, leaves, size, signed)):
            self.report.add(lo, changed, size)  # the log's proofs cannot place it
            return
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await self._extends(mid, leaves, size, signed):
                lo = mid
            else:
                hi = mid
        if lo == 0:  # entry 0, or proofs that place nothing: the same first index
            self.report.add(0, changed, size)
            return
        self.report.add(
            lo,
            f"entry {lo} is not the entry the log signed: {changed}; consistency proofs "
            f"from the log's store hold for the first {lo} entries and fail from entry {lo} on",
            size,
        )

    async def _extends(self, m: int, leaves: list[bytes], size: int, signed: bytes) -> bool:
        tree = self.base.copy()
        tree.extend(leaves[: m - self.vouched])
        try:
            proof = await self.api.consistency(m, size)
            verify_consistency(m, size, tree.root(), signed, proof)
        except (ProofError, RemoteLogError):
            return False
        except ApiError as exc:
            if exc.status == 400:
                return False
            raise
        return True

    # 3. proofs ------------------------------------------------------------------------
    async def check_proofs(self, latest: _Head, sample: int) -> None:
        if latest.root is None or sample <= 0:
            return
        size = latest.size
        for idx, h in sorted(self.wanted.items()):
            if h is None:
                continue  # never served: reported already
            try:
                proof = await self.api.inclusion(idx, size)
                verify_inclusion(h, idx, size, proof, latest.root)
            except (ProofError, RemoteLogError) as exc:
                # The entry matched the signed roots: the stored nodes the proof comes from
                # do not. Somewhere in idx..size-1, so it ranks after any entry problem.
                self.report.add(
                    idx,
                    f"the inclusion proof of entry {idx} in size {size} fails ({exc}): the "
                    "log's stored nodes do not match its signed root",
                    size,
                )
            except ApiError as exc:
                if exc.status != 400:
                    raise
                self.report.add(
                    idx, f"the log gives no inclusion proof of entry {idx}: {exc}", size
                )
            self.report.inclusion += 1
        good = [(h.size, h.root) for h in self.heads if h.root is not None and 0 < h.size < size]
        for old, root in _spread(good, sample):
            try:
                proof = await self.api.consistency(old, size)
                verify_consistency(old, size, root, latest.root, proof)
            except (ProofError, RemoteLogError) as exc:
                self.report.add(old, f"tree heads at sizes {old} and {size}: {exc}", size)
            except ApiError as exc:
                if exc.status != 400:
                    raise
                self.report.add(old, f"no consistency proof from size {old} to {size}: {exc}")
            self.report.consistency += 1


def _spread(items: list[Any], n: int) -> list[Any]:
    """At most ``n`` of ``items``, evenly spread, first and last included."""
    if len(items) <= n:
        return items
    if n == 1:
        return [items[-1]]
    step = (len(items) - 1) / (n - 1)
    return [items[round(i * step)] for i in range(n)]


def _sample_indices(size: int, n: int) -> list[int]:
    if size <= n:
        return list(range(size))
    picked = {0, size - 1}
    picked.update(secrets.SystemRandom().sample(range(1, size - 1), max(0, n - 2)))
    return sorted(picked)


async def verify_remote(
    api: AuditApi,
    *,
    pinned: VerifyKey | None,
    origin: str = DEFAULT_ORIGIN,
    sample: int = DEFAULT_SAMPLE,
    progress: Callable[[int, int], None] | None = None,
) -> RemoteReport:
    """Verify the whole log behind ``api`` up to its latest signed tree head.

    The log key's half of a verification only: a report that is ``ok`` does not show the
    log was not truncated and re-signed by whoever holds that key. ``verify_command``
    (``clients.audit_verify``) adds the witness quorum, and requires it.

    Args:
        api: the audit endpoints, as an auditor.
        pinned: the log key to hold the log to; None takes the server's (say so to the user).
        origin: the log's name.
        sample: how many entries get an inclusion proof, and earlier heads a consistency
            proof to the latest (0: none).
        progress: called with (entries checked, entries to check) after each page.

    Returns:
        The report; ``report.first`` names the first bad index, None if all is well.

    Raises:
        LogAltered: the server's key is not the pinned one, or the log is another log.
        RemoteLogError: an answer is malformed. ApiError, ApiUnavailable: HTTP failed.
    """
    started = time.monotonic()
    key = await pinned_key(api, pinned, origin)
    report = RemoteReport(url=api.base_url, kid=key.kid, pinned=pinned is not None)
    raw = await api.latest_head()
    if raw is None:
        report.seconds = time.monotonic() - started
        return report
    try:
        latest = parse_signed_tree_head(raw)
    except EnvelopeError as exc:
        raise RemoteLogError(f"the latest tree head is malformed: {exc}") from exc
    size = latest.head.tree_size
    v = _Verifier(api, key, origin, report, progress)
    v.check_heads(await api.heads(size), latest)
    v.wanted = dict.fromkeys(_sample_indices(size, sample))
    await v.check_entries(size)
    await v.check_proofs(v.heads[-1], sample)
    report.seconds = time.monotonic() - started
    return report
