"""Recomputing the audit log from its entries and checking everything stored against it
(``istmo audit verify`` on the broker's machine, ``istmo db copy`` before it commits).

Left to others: reading and writing the log (``broker.audit.log``), what an entry is
(``broker.audit.entries``), and verifying from outside through the HTTP API
(``clients.audit_verify``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from broker.audit import merkle
from broker.audit.entries import (
    EVENT_COLUMNS,
    blob,
    same_event,
)
from broker.audit.merkle import Node
from schemas.canonical import b64e
from schemas.errors import EnvelopeError, SignatureError
from schemas.keys import VerifyKey
from schemas.monitor import Findings
from schemas.treehead import (
    parse_signed_tree_head,
    verify_tree_head,
)

__all__ = ["VerifyReport", "verify_on"]

_VERIFY_CHUNK = 8192  # leaves between checks of the stored nodes


@dataclass
class VerifyReport(Findings):
    """What ``AuditLog.verify_all`` checked, and the first problem if any."""

    pending: int = 0  # outbox rows not integrated yet


class _Frontier:
    """A HashStore holding only the last node of each level: all that appending and
    roots need (``merkle.append_nodes`` reads left siblings, which are always the latest)."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, bytes]] = {}

    def get(self, level: int, index: int) -> bytes:
        got = self._last.get(level)
        if got is None or got[0] != index:
            raise KeyError((level, index))
        return got[1]

    def put(self, nodes: Iterable[Node]) -> None:
        for level, idx, h in nodes:
            self._last[level] = (idx, h)


def verify_on(
    conn: Connection,
    key: VerifyKey,
    origin: str,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """``AuditLog.verify_all``'s checks on a connection the caller holds: what it sees,
    uncommitted rows of its own transaction included (``istmo db copy`` verifies a copy
    before it commits)."""
    started = time.monotonic()
    report = VerifyReport()
    _Verifier(conn, key, origin, report, progress).run()
    report.seconds = time.monotonic() - started
    return report


@dataclass
class _Head:
    size: int
    root: bytes | None  # None when the head itself is bad (reported already)


@dataclass
class _Verifier:
    conn: Connection
    key: VerifyKey
    origin: str
    report: VerifyReport
    progress: Callable[[int, int], None] | None
    frontier: _Frontier = field(default_factory=_Frontier)
    size: int = 0  # leaves hashed into the rebuilt tree
    segment: list[bytes] = field(default_factory=list)
    new_nodes: list[Node] = field(default_factory=list)
    nodes_made: int = 0
    heads: list[_Head] = field(default_factory=list)
    next_head: int = 0
    total: int = 0
    vouched: int = 0  # entries below this size are covered by a good head so far

    def run(self) -> None:
        self._load_heads()
        self.total = int(
            self.conn.execute(text('SELECT COALESCE(MAX("index") + 1, 0) FROM log_entry')).scalar()
            or 0
        )
        self._heads_at(0)
        stream = self.conn.execution_options(yield_per=4096)
        entries = stream.execute(
            text('SELECT "index", event_seq, leaf, leaf_hash FROM log_entry ORDER BY "index"')
        )
        outbox = stream.execute(text(f"SELECT {EVENT_COLUMNS} FROM audit_event ORDER BY seq"))  # noqa: S608  # constant columns
        try:
            self._walk(entries, iter(outbox))
        finally:  # PostgreSQL streams through server-side cursors: close the unread rest
            outbox.close()
            entries.close()
        self._flush()
        self._check_nodes()
        self.report.entries = self.size
        self._finish()

    def _walk(self, entries: Any, outbox: Iterator[Any]) -> None:
        """Checks 2-4 over every stored entry beside the outbox, in index order."""
        ob = next(outbox, None)
        expected = 0
        signed = max((h.size for h in self.heads), default=0)
        for idx, seq, raw_leaf, stored_hash in entries:
            leaf = blob(raw_leaf)
            # 2. Consecutive indices; entry k is the k-th outbox row, with the same bytes.
            if idx != expected:
                self.report.add(expected, f"entry {expected} is missing (next stored: {idx})")
                expected = idx
            if ob is not None and ob[0] < seq:
                self.report.add(
                    idx,
                    f"entry {idx} holds audit event seq {seq}, but seq {ob[0]} comes first "
                    "in the outbox: an entry was deleted, reordered or skipped",
                )
                while ob is not None and ob[0] < seq:
                    ob = next(outbox, None)
            if ob is None or ob[0] != seq:
                self.report.add(
                    idx,
                    f"entry {idx} holds audit event seq {seq}, which is not the next outbox "
                    "event: entries reordered or duplicated",
                )
            else:
                if not same_event(ob[1:], leaf):
                    self.report.add(idx, f"entry {idx} differs from audit event seq {seq}")
                ob = next(outbox, None)
            if idx == signed:  # 4. every entry lies under a signed head
                self.report.add(
                    idx, f"entries {idx}..{self.total - 1} are covered by no signed tree head"
                )
            h = merkle.leaf_hash(leaf)
            if blob(stored_hash) != h:
                self.report.add(idx, f"entry {idx}: the stored leaf hash is not its bytes' hash")
            expected += 1
            # 3. The tree rebuilt from the bytes, flushed at every head and every chunk.
            self.segment.append(h)
            if self._at_head(self.size + len(self.segment)) or len(self.segment) >= _VERIFY_CHUNK:
                self._flush()

    # 1. heads ----------------------------------------------------------------------------
    def _load_heads(self) -> None:
        rows = self.conn.execute(
            text(
                "SELECT tree_size, root, timestamp, kid, sig, raw FROM tree_head ORDER BY tree_size"
            )
        ).all()
        prev = 0
        for row in rows:
            size = int(row.tree_size)
            root = self._check_head(row, size, prev)
            self.heads.append(_Head(size, root))
            prev = size
        self.report.heads = len(rows)

    def _check_head(self, row: Any, size: int, prev: int) -> bytes | None:
        def bad(why: str) -> None:
            self.report.add(prev, f"tree head at size {size}: {why}", max(size, prev + 1))

        try:
            sth = parse_signed_tree_head(blob(row.raw))
        except EnvelopeError as exc:
            bad(f"malformed: {exc}")
            return None
        head = sth.head
        if (head.tree_size, head.root(), head.timestamp, sth.kid, sth.sig) != (
            size,
            blob(row.root),
            row.timestamp,
            row.kid,
            row.sig,
        ):
            bad("its columns differ from its signed document")
            return None
        try:
            verify_tree_head(sth, self.key, self.origin)
        except SignatureError as exc:
            bad(f"{exc} (kid {sth.kid})")
            return None
        self.report.latest = head
        return head.root()

    def _at_head(self, size: int) -> bool:
        return self.next_head < len(self.heads) and self.heads[self.next_head].size == size

    def _heads_at(self, size: int) -> None:
        while self._at_head(size):
            h = self.heads[self.next_head]
            self.next_head += 1
            if h.root is None:
                continue  # a bad head, reported already: it vouches for nothing
            got = merkle.root(self.frontier, size) if size else merkle.EMPTY_ROOT
            if got != h.root:
                self.report.add(
                    self.vouched,
                    f"tree head at size {size} signs root {b64e(h.root)}, the entries give "
                    f"{b64e(got)}: entries {self.vouched}..{size - 1} were changed",
                    size,
                )
            else:
                self.vouched = size

    def _flush(self) -> None:
        if self.segment:
            nodes = merkle.append_nodes(self.frontier, self.size, self.segment)
            self.frontier.put(nodes)
            self.new_nodes.extend(nodes)
            self.size += len(self.segment)
            self.segment.clear()
        self._heads_at(self.size)
        if len(self.new_nodes) >= 2 * _VERIFY_CHUNK:
            self._check_nodes()
        if self.progress is not None:
            self.progress(self.size, self.total)

    def _check_nodes(self) -> None:
        by_level: dict[int, dict[int, bytes]] = {}
        for level, idx, h in self.new_nodes:
            by_level.setdefault(level, {})[idx] = h
        self.nodes_made += len(self.new_nodes)
        self.new_nodes.clear()
        for level, made in by_level.items():
            lo, hi = min(made), max(made)
            stored: dict[int, bytes] = dict(
                self.conn.execute(
                    text(
                        "SELECT idx, hash FROM merkle_node "
                        "WHERE level = :l AND idx BETWEEN :a AND :b"
                    ),
                    {"l": level, "a": lo, "b": hi},
                ).all()
            )
            for idx, h in made.items():
                got = stored.get(idx)
                if got is None or blob(got) != h:
                    first, last = idx << level, ((idx + 1) << level) - 1
                    what = "is missing" if got is None else "does not match the entries"
                    self.report.add(
                        first,
                        f"merkle node ({level}, {idx}) over entries {first}..{last} {what}",
                        last + 1,
                    )

    # 4. coverage --------------------------------------------------------------------------
    def _finish(self) -> None:
        for h in self.heads[self.next_head :]:
            self.report.add(
                self.size,
                f"tree head at size {h.size}, but the log holds only {self.size} entries: "
                f"entries from {self.size} on were removed",
                h.size,
            )
        extra = self.conn.execute(
            text(
                # CAST: PostgreSQL shifts an INTEGER within 32 bits
                "SELECT level, idx FROM merkle_node "
                "WHERE (idx + 1) * (CAST(1 AS BIGINT) << level) > :n "
                "ORDER BY idx * (CAST(1 AS BIGINT) << level) LIMIT 1"
            ),
            {"n": self.size},
        ).first()
        if extra is not None:
            level, idx = int(extra[0]), int(extra[1])
            # Its first entry beyond the log is the first one missing: the node may start
            # below the log's end (entries 36..39 when 37.. were removed).
            self.report.add(
                max(idx << level, self.size),
                f"merkle node ({level}, {idx}) lies beyond the {self.size} entries",
                (idx + 1) << level,
            )
        last_seq = self.conn.execute(
            text('SELECT event_seq FROM log_entry ORDER BY "index" DESC LIMIT 1')
        ).scalar()
        self.report.pending = int(
            self.conn.execute(
                text("SELECT COUNT(*) FROM audit_event WHERE seq > :s"), {"s": last_seq or 0}
            ).scalar()
            or 0
        )
