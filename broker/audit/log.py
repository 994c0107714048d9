"""The audit log's SQL store: entries, Merkle nodes and every signed tree head.

    audit_event   the registry's outbox: events commit with the action they record
        │  integrate(): one transaction per batch, in ``seq`` order
        ▼
    log_entry     index (0, 1, 2, ...) -> event_seq (UNIQUE), leaf bytes, leaf hash
    merkle_node   (level, idx) -> hash of every perfect subtree (``broker.audit.merkle``)
    tree_head     tree_size -> root, timestamp, kid, sig, and the signed document as served

A batch's entries, the nodes they complete and the tree head signed over them commit
together, so every entry is covered by a signed head and an outbox row is integrated at
most once (``event_seq`` is UNIQUE, and the next batch starts after the last integrated
``seq``, read in the same transaction). All three tables are append-only at the database
level (triggers made by the migration, as for ``audit_event``: UPDATE and DELETE refused,
and TRUNCATE on PostgreSQL). Writers cannot interleave: on SQLite the writer takes the write
lock at BEGIN (``BEGIN IMMEDIATE``); on PostgreSQL it takes a transaction-level advisory
lock (``pg_advisory_xact_lock``) before it reads the log's tip, so two sequencers, on one
machine or several, append one after the other.

A leaf is the canonical JSON of the ``AuditEvent`` (``entry_bytes``), stored verbatim, so an
auditor hashes exactly what an export or the API hands out.

Left to others: choosing batch sizes, holding the log key and staying the only sequencer
(``broker.audit.sequencer``), the command line (``broker.cli.audit``), the auditors' HTTP
endpoints (``broker.api.audit``), and the Merkle math (``broker.audit.merkle``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import SQLAlchemyError

from broker.audit import merkle
from broker.audit.entries import (
    EVENT_COLUMNS,
    MAX_PAGE,
    EntryFilter,
    LogCorrupt,
    LogEntry,
    LogEntryRow,
    MerkleNodeRow,
    MissingNode,
    TreeHeadRow,
    blob,
    entry_bytes,
    entry_of_row,
    event_clauses,
    outbox_bytes,
    row_bytes,
    same_event,
)
from broker.audit.merkle import Node, NodeId
from broker.audit.verify import VerifyReport, verify_on
from broker.store.db import (
    display_url,
    is_sqlite,
    make_engine,
    open_schema,
    store_error,
    store_errors,
)
from broker.store.registry import AuditRow
from schemas.canonical import b64e
from schemas.errors import ConfigError, EnvelopeError
from schemas.keys import SigningKey, VerifyKey
from schemas.monitor import Problem
from schemas.treehead import (
    SignedTreeHead,
    TreeHead,
    parse_signed_tree_head,
    sign_tree_head,
    verify_tree_head,
)

__all__ = [
    "MAX_PAGE",
    "AuditLog",
    "EntryFilter",
    "Integrated",
    "LogCorrupt",
    "LogEntry",
    "LogEntryRow",
    "MerkleNodeRow",
    "MissingNode",
    "Problem",
    "SqlHashStore",
    "TreeHeadRow",
    "VerifyReport",
    "entry_bytes",
    "event_clauses",
    "outbox_bytes",
    "same_event",
    "verify_on",
]

_PG_SEQUENCER_LOCK = 0x49_53_54_4D  # "ISTM": pg_advisory_xact_lock key of the writer


@dataclass(frozen=True)
class Integrated:
    """A committed batch: entries ``first_index .. first_index + count - 1`` and their head."""

    first_index: int
    count: int
    head: SignedTreeHead


class SqlHashStore:
    """``merkle.HashStore`` over ``merkle_node`` through one connection.

    ``prefetch`` loads a proof's or a root's nodes in one query; ``get`` falls back to one
    query per node.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._cache: dict[NodeId, bytes] = {}

    def prefetch(self, ids: Iterable[NodeId]) -> None:
        wanted = sorted({i for i in ids if i not in self._cache})
        for start in range(0, len(wanted), 200):
            part = wanted[start : start + 200]
            where = " OR ".join(f"(level = :l{n} AND idx = :i{n})" for n in range(len(part)))
            params: dict[str, int] = {}
            for n, (level, idx) in enumerate(part):
                params[f"l{n}"], params[f"i{n}"] = level, idx
            q = text(f"SELECT level, idx, hash FROM merkle_node WHERE {where}")  # noqa: S608  # placeholders only
            for level, idx, h in self._conn.execute(q, params):
                self._cache[(level, idx)] = blob(h)

    def remember(self, nodes: Iterable[Node]) -> None:
        for level, idx, h in nodes:
            self._cache[(level, idx)] = h

    def get(self, level: int, index: int) -> bytes:
        h = self._cache.get((level, index))
        if h is None:
            row = self._conn.execute(
                text("SELECT hash FROM merkle_node WHERE level = :l AND idx = :i"),
                {"l": level, "i": index},
            ).first()
            if row is None:
                raise MissingNode(f"merkle node ({level}, {index}) is not stored")
            h = self._cache[(level, index)] = blob(row[0])
        return h


def _sqlite_setup(immediate: bool) -> tuple[Callable[..., None], Callable[[Connection], None]]:
    def connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    def begin(conn: Connection) -> None:
        # IMMEDIATE: the writer holds the write lock from its first read, so what it read
        # (the log's size, the last integrated seq) cannot change before it commits.
        # Readers get a plain BEGIN: one snapshot for every query of a transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return connect, begin


def _engine(url: str, *, writer: bool) -> Engine:
    if is_sqlite(url):
        engine = make_engine(url)
        connect, begin = _sqlite_setup(writer)
        event.listen(engine, "connect", connect)
        event.listen(engine, "begin", begin)
        return engine
    # PostgreSQL: readers see one snapshot; the writer serializes on an advisory lock.
    return make_engine(url, isolation_level="READ COMMITTED" if writer else "REPEATABLE READ")


def _head_from_row(row: Row[Any]) -> SignedTreeHead:
    return parse_signed_tree_head(blob(row.raw))


class AuditLog:
    """The log in the registry's database (same URL)."""

    def __init__(self, url: str) -> None:
        """Open the log in the registry's database.

        Raises:
            ConfigError: the database has no ``audit_event`` table (not an Istmo registry),
                or is not at the schema revision this Istmo runs on (SQLite is upgraded).
            AuditStoreError: the database refused.
        """
        self.url = url
        self._writer = _engine(url, writer=True)
        self._reader = _engine(url, writer=False)
        self._sqlite = self._writer.dialect.name == "sqlite"
        try:
            if not self._sqlite:  # an empty database: say `istmo db upgrade`, not "no registry"
                open_schema(self._reader, url, auto_upgrade=False)
            try:
                if not inspect(self._reader).has_table(AuditRow.__tablename__):
                    raise ConfigError(
                        f"no Istmo registry in {display_url(url)}: it has no audit_event table"
                    )
            except SQLAlchemyError as exc:
                raise store_error("opening the audit log", exc) from exc
            if self._sqlite:
                open_schema(self._reader, url, auto_upgrade=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._writer.dispose()
        self._reader.dispose()

    # ------------------------------------------------------------------ integrating
    def integrate(
        self, key: SigningKey, origin: str, *, now_ms: int, max_entries: int
    ) -> Integrated | None:
        """Integrate up to ``max_entries`` outbox rows, in ``seq`` order, in one transaction.

        Args:
            key: the log key; it also checks the last head before the tree is extended.
            origin: the log's name, signed into the head.
            now_ms: the head's timestamp, epoch milliseconds.
            max_entries: batch size.

        Returns:
            The batch and its signed tree head, or None when no outbox row is waiting.

        Raises:
            LogCorrupt: the stored tree is not the one the log key last signed.
            AuditStoreError: the database refused (nothing was integrated).
        """
        if max_entries < 1:
            raise ValueError(f"max_entries {max_entries} must be at least 1")
        try:
            with self._writer.begin() as conn:
                if not self._sqlite:
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SEQUENCER_LOCK}
                    )
                return self._integrate(conn, key, origin, now_ms, max_entries)
        except SQLAlchemyError as exc:
            raise store_error("a batch of the audit log", exc) from exc

    def _integrate(
        self, conn: Connection, key: SigningKey, origin: str, now_ms: int, max_entries: int
    ) -> Integrated | None:
        store = SqlHashStore(conn)
        # 1. Where the log stands: the last signed head, and the last entry.
        size, last_seq = self._check_tip(conn, store, key.verify_key, origin)
        # 2. The outbox rows after the last integrated one, in seq order.
        rows = conn.execute(
            text(
                f"SELECT {EVENT_COLUMNS} FROM audit_event WHERE seq > :s ORDER BY seq LIMIT :n"  # noqa: S608  # constant columns
            ),
            {"s": last_seq, "n": max_entries},
        ).all()
        if not rows:
            return None
        # 3. Entries and the nodes they complete (reads only the frontier, prefetched).
        try:
            leaves = [row_bytes(r) for r in rows]
        except (ValueError, TypeError) as exc:  # only a hand-edited outbox row gets here
            raise LogCorrupt(f"an outbox row after seq {last_seq} is not an audit event") from exc
        hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
        nodes = merkle.append_nodes(store, size, hashes)
        store.remember(nodes)
        conn.execute(
            LogEntryRow.__table__.insert(),  # type: ignore[attr-defined]
            [
                {"index": size + i, "event_seq": r[0], "leaf": leaf, "leaf_hash": h}
                for i, (r, leaf, h) in enumerate(zip(rows, leaves, hashes, strict=True))
            ],
        )
        conn.execute(
            MerkleNodeRow.__table__.insert(),  # type: ignore[attr-defined]
            [{"level": lv, "idx": ix, "hash": h} for lv, ix, h in nodes],
        )
        # 4. The head over the new size, signed, in the same transaction.
        new_size = size + len(rows)
        head = TreeHead(
            v=1,
            origin=origin,
            tree_size=new_size,
            root_hash=b64e(merkle.root(store, new_size)),
            timestamp=now_ms,
        )
        sth = sign_tree_head(head, key)
        conn.execute(
            TreeHeadRow.__table__.insert(),  # type: ignore[attr-defined]
            {
                "tree_size": new_size,
                "root": head.root(),
                "timestamp": now_ms,
                "kid": sth.kid,
                "sig": sth.sig,
                "raw": sth.model_dump_json().encode(),
            },
        )
        return Integrated(size, len(rows), sth)

    def _check_tip(
        self, conn: Connection, store: SqlHashStore, key: VerifyKey, origin: str
    ) -> tuple[int, int]:
        """The size and last integrated seq, once the tip is what the log key signed.

        The sequencer never signs over a tree it did not build: the last head must verify
        under the log key, the last entry must sit at its size, and the frontier nodes the
        next batch hashes onto must fold to its root.
        """
        head_row = conn.execute(
            text("SELECT tree_size, raw FROM tree_head ORDER BY tree_size DESC LIMIT 1")
        ).first()
        last = conn.execute(
            text('SELECT "index", event_seq FROM log_entry ORDER BY "index" DESC LIMIT 1')
        ).first()
        if head_row is None:
            if last is not None:
                raise LogCorrupt("the log has entries but no signed tree head")
            return 0, 0
        size = int(head_row.tree_size)
        try:
            head = verify_tree_head(_head_from_row(head_row), key, origin)
        except EnvelopeError as exc:
            raise LogCorrupt(f"the last tree head (size {size}) does not verify: {exc}") from exc
        if head.tree_size != size or last is None or int(last[0]) != size - 1:
            end = "none" if last is None else int(last[0])
            raise LogCorrupt(f"the last tree head has size {size}, the last entry index is {end}")
        store.prefetch(merkle.root_plan(size))
        if merkle.root(store, size) != head.root():
            raise LogCorrupt(f"the stored tree does not fold to the signed root at size {size}")
        return size, int(last.event_seq)

    # ------------------------------------------------------------------ reading
    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction: one snapshot for all its queries; a database error in it is
        the store's ``AuditStoreError`` (``broker.store.db.store_errors``)."""
        with store_errors("a read of the audit log"), self._reader.begin() as conn:
            yield conn

    def latest_head(self) -> SignedTreeHead | None:
        """The last signed tree head, as stored (verify it before trusting it)."""
        with self._read() as conn:
            row = conn.execute(
                text("SELECT raw FROM tree_head ORDER BY tree_size DESC LIMIT 1")
            ).first()
            return None if row is None else _head_from_row(row)

    def head_document(self, tree_size: int | None = None) -> bytes | None:
        """The signed tree head at ``tree_size`` (the latest if None) exactly as stored, the
        bytes the log served since it signed them; None if there is none."""
        with self._read() as conn:
            if tree_size is None:
                q = text("SELECT raw FROM tree_head ORDER BY tree_size DESC LIMIT 1")
                row = conn.execute(q).first()
            else:
                q = text("SELECT raw FROM tree_head WHERE tree_size = :n")
                row = conn.execute(q, {"n": tree_size}).first()
            return None if row is None else blob(row.raw)

    def head_documents(
        self, after_size: int = -1, limit: int = MAX_PAGE
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` (1..MAX_PAGE) signed tree heads above ``after_size``, smallest
        first: (tree size, the document as stored)."""
        limit = max(1, min(limit, MAX_PAGE))
        with self._read() as conn:
            rows = conn.execute(
                text(
                    "SELECT tree_size, raw FROM tree_head WHERE tree_size > :a "
                    "ORDER BY tree_size LIMIT :n"
                ),
                {"a": after_size, "n": limit},
            ).all()
        return [(int(r.tree_size), blob(r.raw)) for r in rows]

    def head(self, tree_size: int) -> SignedTreeHead | None:
        """The signed tree head at ``tree_size``, if the log signed one."""
        with self._read() as conn:
            row = conn.execute(
                text("SELECT raw FROM tree_head WHERE tree_size = :n"), {"n": tree_size}
            ).first()
            return None if row is None else _head_from_row(row)

    def size(self) -> int:
        """The size of the last signed tree head (0 for an empty log)."""
        with self._read() as conn:
            n = conn.execute(text("SELECT MAX(tree_size) FROM tree_head")).scalar()
            return int(n or 0)

    def pending(self) -> int:
        """Outbox rows waiting for the sequencer."""
        return self.pending_since()[0]

    def pending_since(self) -> tuple[int, int | None]:
        """Outbox rows waiting for the sequencer, and the oldest one's time (ms), if any."""
        with self._read() as conn:
            last = conn.execute(
                text('SELECT event_seq FROM log_entry ORDER BY "index" DESC LIMIT 1')
            ).scalar()
            row = conn.execute(
                text("SELECT COUNT(*), MIN(time) FROM audit_event WHERE seq > :s"),
                {"s": last or 0},
            ).one()
            return int(row[0] or 0), None if row[1] is None else int(row[1])

    def _signed_size(self, conn: Connection, tree_size: int) -> None:
        found = conn.execute(
            text("SELECT 1 FROM tree_head WHERE tree_size = :n"), {"n": tree_size}
        ).first()
        if found is None:
            raise LookupError(f"the log signed no tree head at size {tree_size}")

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the signed tree of ``tree_size``.

        One query for O(log n) stored nodes.

        Raises:
            ValueError: ``index`` is outside the tree.
            LookupError: no head was signed at ``tree_size`` (``MissingNode``: a node is gone).
        """
        plan = merkle.inclusion_proof_plan(index, tree_size)
        with self._read() as conn:
            self._signed_size(conn, tree_size)
            store = SqlHashStore(conn)
            store.prefetch(n for group in plan for n in group)
            return merkle.inclusion_proof(store, index, tree_size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof between two signed tree sizes.

        ``old_size`` may be any size up to ``new_size`` (a monitor's last head may predate a
        truncation); ``new_size`` must be a signed size.

        Raises:
            ValueError: unless 0 <= old_size <= new_size.
            LookupError: no head was signed at ``new_size``, or a node is gone.
        """
        plan = merkle.consistency_proof_plan(old_size, new_size)
        with self._read() as conn:
            self._signed_size(conn, new_size)
            store = SqlHashStore(conn)
            store.prefetch(n for group in plan for n in group)
            return merkle.consistency_proof(store, old_size, new_size)

    def entry(self, index: int) -> LogEntry | None:
        with self._read() as conn:
            row = conn.execute(
                text(
                    'SELECT "index", event_seq, leaf, leaf_hash FROM log_entry WHERE "index" = :i'
                ),
                {"i": index},
            ).first()
            return None if row is None else entry_of_row(row)

    def entries(self, after_index: int = -1, limit: int = MAX_PAGE) -> list[LogEntry]:
        """Up to ``limit`` (1..MAX_PAGE) entries after ``after_index``, in index order, as
        stored (whatever the outbox holds: a verifier must see every stored entry)."""
        limit = max(1, min(limit, MAX_PAGE))
        with self._read() as conn:
            rows = conn.execute(
                text(
                    'SELECT "index", event_seq, leaf, leaf_hash FROM log_entry '
                    'WHERE "index" > :a ORDER BY "index" LIMIT :n'
                ),
                {"a": after_index, "n": limit},
            ).all()
        return [entry_of_row(r) for r in rows]

    def tail(self, n: int) -> list[LogEntry]:
        """The last ``n`` (1..MAX_PAGE) entries, oldest first."""
        n = max(1, min(n, MAX_PAGE))
        with self._read() as conn:
            rows = conn.execute(
                text(
                    'SELECT "index", event_seq, leaf, leaf_hash FROM log_entry '
                    'ORDER BY "index" DESC LIMIT :n'
                ),
                {"n": n},
            ).all()
        return [entry_of_row(r) for r in reversed(rows)]

    def search(self, f: EntryFilter) -> list[LogEntry]:
        """Entries matching ``f``, by index, at most ``f.limit`` (a page: go on from the last
        index with ``after_index``)."""
        where, params = event_clauses(
            agency=f.agency, type_=f.type, since_ms=f.since_ms, until_ms=f.until_ms
        )
        where.append('e."index" > :after')
        params.update(after=f.after_index, limit=f.limit)
        if f.bulletin_id is not None:
            where.append("a.bulletin_id = :bulletin")
            params["bulletin"] = f.bulletin_id
        q = text(
            'SELECT e."index", e.event_seq, e.leaf, e.leaf_hash FROM log_entry e '  # noqa: S608  # fixed clauses, values bound
            "JOIN audit_event a ON a.seq = e.event_seq "
            f'WHERE {" AND ".join(where)} ORDER BY e."index" LIMIT :limit'
        )
        with self._read() as conn:
            return [entry_of_row(r) for r in conn.execute(q, params)]

    def key_entries(self, agencies: Iterable[str], limit: int) -> dict[str, list[LogEntry]]:
        """Per agency, its newest ``limit`` (1..MAX_PAGE) ``key.registered`` entries (the
        key's owner is the event's subject), oldest first (ADR 28). One query."""
        limit = max(1, min(limit, MAX_PAGE))
        wanted = sorted(set(agencies))
        out: dict[str, list[LogEntry]] = {a: [] for a in wanted}
        if not wanted:
            return out
        names = ", ".join(f":a{i}" for i in range(len(wanted)))
        q = text(
            'SELECT e."index", e.event_seq, e.leaf, e.leaf_hash, a.subject FROM log_entry e '  # noqa: S608  # placeholders only
            "JOIN audit_event a ON a.seq = e.event_seq "
            f"WHERE a.type = 'key.registered' AND a.subject IN ({names}) "
            'ORDER BY e."index" DESC'
        )
        with self._read() as conn:
            rows = conn.execute(q, {f"a{i}": a for i, a in enumerate(wanted)}).all()
        for r in rows:
            kept = out[str(r[4])]
            if len(kept) < limit:
                kept.append(entry_of_row(r))
        for kept in out.values():
            kept.reverse()
        return out

    def inclusion_proofs(
        self, wanted: Iterable[tuple[int, int]]
    ) -> dict[tuple[int, int], list[bytes]]:
        """``inclusion_proof`` of each (index, tree size), in one read transaction and one
        query per 200 nodes.

        Raises:
            ValueError, LookupError: as ``inclusion_proof``.
        """
        asked = sorted(set(wanted))
        plans = {w: merkle.inclusion_proof_plan(*w) for w in asked}
        with self._read() as conn:
            for size in {s for _i, s in asked}:
                self._signed_size(conn, size)
            store = SqlHashStore(conn)
            store.prefetch(n for plan in plans.values() for group in plan for n in group)
            return {w: merkle.inclusion_proof(store, *w) for w in asked}

    def iter_entries(self, after_index: int = -1, *, page: int = 5000) -> Iterator[LogEntry]:
        """Every entry after ``after_index`` in order, a page per short read transaction."""
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    text(
                        'SELECT "index", event_seq, leaf, leaf_hash FROM log_entry '
                        'WHERE "index" > :a ORDER BY "index" LIMIT :n'
                    ),
                    {"a": after_index, "n": page},
                ).all()
            if not rows:
                return
            for r in rows:
                yield entry_of_row(r)
            after_index = int(rows[-1][0])

    # ------------------------------------------------------------------ verifying
    def verify_all(
        self,
        key: VerifyKey,
        origin: str,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> VerifyReport:
        """Recompute the log from its entries and check everything stored against it.

        In one read snapshot:
          1. every tree head parses, its columns match its document, and it verifies under
             ``key`` for ``origin``;
          2. entries have consecutive indices from 0, each one's leaf hash is the hash of
             its bytes, and entry ``k`` is the ``k``-th outbox row in ``seq`` order with
             the same canonical bytes;
          3. the tree rebuilt from the entries' bytes has every signed root, and every
             stored node equals the rebuilt one (no node beyond the entries);
          4. every entry is covered by a signed head, and no head outgrows the entries.

        Args:
            key: the log's verify key (pinned by the caller).
            origin: the log's name.
            progress: called with (entries checked, entries in the log) now and then.

        Returns:
            The report; ``report.first`` is the lowest-index problem, None if all is well.
        """
        try:
            with self._read() as conn:
                return verify_on(conn, key, origin, progress=progress)
        except SQLAlchemyError as exc:
            raise store_error("a read of the audit log", exc) from exc


_shared: dict[str, AuditLog] = {}
_shared_lock = threading.Lock()


def shared_log(url: str) -> AuditLog:
    """One reading ``AuditLog`` per database for the whole process, opened on first use:
    every app and console page over ``url`` shares its connection pools, which then
    live as long as the process (an app dropped without closing leaks none)."""
    with _shared_lock:
        if url not in _shared:
            _shared[url] = AuditLog(url)
        return _shared[url]
