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

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, SQLModel

from broker.audit import merkle
from broker.audit.merkle import Node, NodeId
from broker.store.db import display_url, is_sqlite, make_engine, open_schema
from broker.store.registry import BIGINT, AuditRow
from schemas.audit import AuditEvent
from schemas.canonical import b64e, canonical_json
from schemas.errors import AuditStoreError, ConfigError, EnvelopeError, SignatureError
from schemas.keys import SigningKey, VerifyKey
from schemas.monitor import Findings, Problem
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
    "queried_event",
    "same_event",
    "verify_on",
]

MAX_PAGE = 1000  # entries per search page
_VERIFY_CHUNK = 8192  # leaves between checks of the stored nodes
_PG_SEQUENCER_LOCK = 0x49_53_54_4D  # "ISTM": pg_advisory_xact_lock key of the writer


class LogEntryRow(SQLModel, table=True):
    __tablename__ = "log_entry"
    index: int = Field(primary_key=True, sa_type=BIGINT)
    event_seq: int = Field(unique=True, foreign_key="audit_event.seq", sa_type=BIGINT)
    leaf: bytes  # the exact bytes hashed: canonical JSON of the AuditEvent
    leaf_hash: bytes


class MerkleNodeRow(SQLModel, table=True):
    __tablename__ = "merkle_node"
    __table_args__ = {"sqlite_with_rowid": False}  # SQLAlchemy's own attribute
    level: int = Field(primary_key=True)
    idx: int = Field(primary_key=True, sa_type=BIGINT)
    hash: bytes


class TreeHeadRow(SQLModel, table=True):
    __tablename__ = "tree_head"
    tree_size: int = Field(primary_key=True, sa_type=BIGINT)
    root: bytes
    timestamp: int = Field(sa_type=BIGINT)
    kid: str = Field(max_length=40)
    sig: str = Field(max_length=100)
    raw: bytes  # the SignedTreeHead document, as served


_EVENT_COLUMNS = "seq, event_id, type, time, actor, subject, bulletin_id, reason, data"


class LogCorrupt(AuditStoreError):
    """The stored log contradicts itself or its signed tree heads."""

    default_code = "log_corrupt"


class MissingNode(LogCorrupt, LookupError):
    """A Merkle node the tree needs is not in ``merkle_node``."""


def entry_bytes(event_: AuditEvent) -> bytes:
    """The leaf of ``event_``: its canonical JSON (what ``leaf_hash`` hashes)."""
    return canonical_json(event_.model_dump(mode="json"))


def queried_event(
    actor: str, subject: str, query: Mapping[str, Any], rows: int, *, now_ms: int | None = None
) -> AuditEvent:
    """The ``audit.queried`` event of one auditor query: who asked, what (``subject``, e.g.
    ``audit.search``), the filter (None values left out) and how many rows it returned.

    Record it (``Registry.record``) before the rows are shown: no access without an audit
    event. The local CLI and the HTTP endpoints both use it.
    """
    data = {k: v for k, v in query.items() if v is not None}
    data["rows"] = rows
    return AuditEvent(
        event_id=f"audit-query:{uuid.uuid4()}",
        type="audit.queried",
        time=time.time_ns() // 1_000_000 if now_ms is None else now_ms,
        actor=actor[:200],
        subject=subject[:200],
        data=data,
    )


def outbox_bytes(fields: Sequence[Any]) -> bytes:
    """``entry_bytes`` straight from an ``audit_event`` row's event columns (``_EVENT_COLUMNS``
    without ``seq``), no model. Raises ValueError or TypeError on a hand-edited row."""
    event_id, type_, time_, actor, subject, bulletin_id, reason, data = fields
    return canonical_json(
        {
            "v": 1,
            "event_id": event_id,
            "type": type_,
            "time": time_,
            "actor": actor,
            "subject": subject,
            "bulletin_id": bulletin_id,
            "reason": reason,
            "data": json.loads(data),
        }
    )


def _row_bytes(row: Sequence[Any]) -> bytes:
    """``outbox_bytes`` of a whole ``audit_event`` row (``_EVENT_COLUMNS``, ``seq`` first)."""
    return outbox_bytes(row[1:])


def same_event(fields: Sequence[Any], leaf: bytes) -> bool:
    """Whether an outbox row's event columns (no ``seq``) encode to exactly ``leaf``."""
    try:
        return outbox_bytes(fields) == leaf
    except (ValueError, TypeError):  # a hand-edited outbox row
        return False


def event_clauses(
    *,
    agency: str | None = None,
    type_: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions on ``audit_event a`` and their bound values, for those given: the
    agency as actor or subject, the event type, and ``since_ms <= time < until_ms``."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if agency is not None:
        where.append("(a.actor = :agency OR a.subject = :agency)")
        params["agency"] = agency
    if type_ is not None:
        where.append("a.type = :type")
        params["type"] = type_
    if since_ms is not None:
        where.append("a.time >= :since")
        params["since"] = since_ms
    if until_ms is not None:
        where.append("a.time < :until")
        params["until"] = until_ms
    return where, params


@dataclass(frozen=True)
class LogEntry:
    """One entry: its position, the outbox row it came from, and the bytes hashed."""

    index: int
    event_seq: int
    leaf: bytes
    leaf_hash: bytes

    def event(self) -> dict[str, Any]:
        """The entry as JSON values (an ``AuditEvent`` dump).

        Raises:
            LogCorrupt: the stored bytes are not a JSON object (someone edited them).
        """
        try:
            value = json.loads(self.leaf)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise LogCorrupt(f"entry {self.index} is not an audit event: run `istmo audit verify`")
        return value


@dataclass(frozen=True)
class EntryFilter:
    """A search: every given field must match; entries after ``after_index``, in order.

    ``agency`` matches the actor or the subject (a routed or denied bulletin names the
    recipient as subject). Times are epoch milliseconds, ``until_ms`` exclusive.
    """

    agency: str | None = None
    bulletin_id: str | None = None
    type: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    after_index: int = -1
    limit: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE:
            raise ValueError(f"limit {self.limit} is outside 1..{MAX_PAGE}")
        if self.after_index < -1:
            raise ValueError(f"after_index {self.after_index} is below -1")


@dataclass(frozen=True)
class Integrated:
    """A committed batch: entries ``first_index .. first_index + count - 1`` and their head."""

    first_index: int
    count: int
    head: SignedTreeHead


@dataclass
class VerifyReport(Findings):
    """What ``AuditLog.verify_all`` checked, and the first problem if any."""

    pending: int = 0  # outbox rows not integrated yet


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
                self._cache[(level, idx)] = _blob(h)

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
            h = self._cache[(level, index)] = _blob(row[0])
        return h


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


def _blob(value: object) -> bytes:
    """A BLOB column's value as bytes. SQLite stores whatever it is given, so a hand-edited
    row may hold text or a number: compare it as bytes rather than crash."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def _head_from_row(row: Row[Any]) -> SignedTreeHead:
    return parse_signed_tree_head(_blob(row.raw))


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
                raise AuditStoreError(f"cannot open the audit log: {type(exc).__name__}") from exc
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
            raise AuditStoreError(f"the audit log refused a batch: {type(exc).__name__}") from exc

    def _integrate(
        self, conn: Connection, key: SigningKey, origin: str, now_ms: int, max_entries: int
    ) -> Integrated | None:
        store = SqlHashStore(conn)
        # 1. Where the log stands: the last signed head, and the last entry.
        size, last_seq = self._check_tip(conn, store, key.verify_key, origin)
        # 2. The outbox rows after the last integrated one, in seq order.
        rows = conn.execute(
            text(
                f"SELECT {_EVENT_COLUMNS} FROM audit_event WHERE seq > :s ORDER BY seq LIMIT :n"  # noqa: S608  # constant columns
            ),
            {"s": last_seq, "n": max_entries},
        ).all()
        if not rows:
            return None
        # 3. Entries and the nodes they complete (reads only the frontier, prefetched).
        try:
            leaves = [_row_bytes(r) for r in rows]
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
    def _read(self) -> AbstractContextManager[Connection]:
        """A read transaction: one snapshot for all its queries."""
        return self._reader.begin()

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
            return None if row is None else _blob(row.raw)

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
        return [(int(r.tree_size), _blob(r.raw)) for r in rows]

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
            return None if row is None else _entry(row)

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
        return [_entry(r) for r in rows]

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
        return [_entry(r) for r in reversed(rows)]

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
            return [_entry(r) for r in conn.execute(q, params)]

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
                yield _entry(r)
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
            raise AuditStoreError(f"cannot read the audit log: {type(exc).__name__}") from exc


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


def _entry(row: Any) -> LogEntry:
    return LogEntry(int(row[0]), int(row[1]), _blob(row[2]), _blob(row[3]))


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
        outbox = stream.execute(text(f"SELECT {_EVENT_COLUMNS} FROM audit_event ORDER BY seq"))  # noqa: S608  # constant columns
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
            leaf = _blob(raw_leaf)
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
            if _blob(stored_hash) != h:
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
            sth = parse_signed_tree_head(_blob(row.raw))
        except EnvelopeError as exc:
            bad(f"malformed: {exc}")
            return None
        head = sth.head
        if (head.tree_size, head.root(), head.timestamp, sth.kid, sth.sig) != (
            size,
            _blob(row.root),
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
                if got is None or _blob(got) != h:
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
            self.report.add(
                min(idx << level, self.size),
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
