"""The SDK's durable record of bulletins already handed to the application, and of the
withdrawals it applied.

JetStream delivers at least once and its dedupe window is minutes, so the SDK itself
remembers, in SQLite with ``synchronous=FULL``, every bulletin id it handed over and
who originated it (a withdrawal must come from that originator, ADR 15), and every
withdrawal it told the application of (so a copy that arrives after its withdrawal is
dropped, and the application is told once). Besides ids, digests and times it keeps the
envelope of each bulletin handed over, sealed as it came (ciphertext: never a title, a
body, a reason or a key in clear), so that the agency can forward it later (ADR 20); a
withdrawal drops it.

Group commit (issue 15). Every write goes to one writer thread with its own SQLite
connection, in the order queued. The writer takes what waits, opens a write transaction,
takes whatever was queued meanwhile too, writes it all and commits once (one fsync,
``synchronous=FULL`` kept), then resolves each write's future: done once it is durable,
``DedupeWriteError`` if the transaction failed (nothing of it was written). A thread
rather than ``asyncio.to_thread``: one connection lives on one thread, the queue gives
the order and the batches for free, and an event loop only waits for a future, never for
the disk. ``queue_handed`` and ``queue_withdrawal`` return the future without waiting
(the SDK's receive loop goes on to the next bulletin while the fsync runs, and acks a
bulletin only once its own record is durable); ``handed``, ``remember``, ``hold`` and
``remember_withdrawal`` wait for it, as before.

Reads run on the caller's connection (WAL: they never wait for the writer) and see what
is queued but not yet committed, so a copy arriving while its record is pending is not
handed twice, and a withdrawal of a bulletin just handed over finds it. A write that
failed is no longer seen: its bulletin, not acked, comes back and is handed over again.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DedupeStore", "DedupeWriteError", "Record"]

log = logging.getLogger(__name__)

# How long a connection waits for another's lock (a second process on the same file).
BUSY_TIMEOUT_S = 5.0

# A queued write: done once durable, or failed with DedupeWriteError.
Record = Future[None]


class DedupeWriteError(Exception):
    """A queued write was not made durable (its transaction failed and was rolled back)."""


@dataclass(eq=False)
class _Write:
    """One queued write for one bulletin id: a ``handed`` row (``digest`` set), a ``held``
    envelope (``envelope`` set), and/or a withdrawal (``withdrawn_by`` set), applied in
    that order as ``remember``, ``hold`` and ``remember_withdrawal`` always did."""

    bulletin_id: str
    done: Record
    digest: str | None = None
    handed_at: int = 0
    originator: str | None = None
    envelope: bytes | None = None
    withdrawn_by: str | None = None
    withdrawn_at: int = 0

    def apply(self, db: sqlite3.Connection) -> None:
        bid = self.bulletin_id
        if self.digest is not None:
            db.execute(
                "INSERT OR IGNORE INTO handed (bulletin_id, envelope_digest, handed_at,"
                " originator) VALUES (?, ?, ?, ?)",
                (bid, self.digest, self.handed_at, self.originator),
            )
        if self.envelope is not None:
            db.execute("INSERT OR IGNORE INTO held VALUES (?, ?)", (bid, self.envelope))
        if self.withdrawn_by is not None:
            db.execute(
                "INSERT OR IGNORE INTO withdrawn VALUES (?, ?, ?)",
                (bid, self.withdrawn_by, self.withdrawn_at),
            )
            db.execute("DELETE FROM held WHERE bulletin_id = ?", (bid,))


def _connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    db = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=check_same_thread
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # per connection: the writer's is the one that counts
    return db


class DedupeStore:
    """Bulletin ids already handed to this agency's application, and withdrawals applied.

    ``commits`` counts the transactions the writer committed (each one fsync)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS handed ("
            " bulletin_id TEXT PRIMARY KEY,"
            " envelope_digest TEXT NOT NULL,"
            " handed_at INTEGER NOT NULL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(handed)")}
        if "originator" not in columns:
            # A store made before ADR 15: its rows keep NULL (their originator unknown).
            self._db.execute("ALTER TABLE handed ADD COLUMN originator TEXT")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS held (bulletin_id TEXT PRIMARY KEY, envelope BLOB NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS withdrawn ("
            " bulletin_id TEXT PRIMARY KEY,"
            " originator TEXT NOT NULL,"
            " withdrawn_at INTEGER NOT NULL)"
        )
        self.commits = 0
        # Writes queued and not yet committed (or failed), by bulletin id, in queue order;
        # guarded by _lock, which also keeps the queue's order that of these lists.
        self._pending: dict[str, list[_Write]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._writer_db = _connect(path, check_same_thread=False)
        self._writer = threading.Thread(target=self._write, name="istmo-dedupe", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ reads
    def _queued(self, bulletin_id: str) -> list[_Write]:
        """The writes pending for ``bulletin_id``. Taken before the database is read: a
        write committed in between is then in both, and applying it again changes
        nothing (each is an insert-if-absent or a delete)."""
        with self._lock:
            return list(self._pending.get(bulletin_id, ()))

    def seen(self, bulletin_id: str) -> bool:
        return self.handed_at(bulletin_id) is not None

    def handed_record(self, bulletin_id: str) -> tuple[int | None, Record | None]:
        """When the bulletin was handed to the application (None: never), and the future
        of its record if that is not durable yet (None: it is, or there is none)."""
        queued = self._queued(bulletin_id)
        row = self._db.execute(
            "SELECT handed_at FROM handed WHERE bulletin_id = ?", (bulletin_id,)
        ).fetchone()
        if row is not None:
            return int(row[0]), None
        for w in queued:
            if w.digest is not None:
                return w.handed_at, w.done
        return None, None

    def handed_at(self, bulletin_id: str) -> int | None:
        """When the bulletin was handed to the application (None: never)."""
        return self.handed_record(bulletin_id)[0]

    def handed_by(self, bulletin_id: str) -> tuple[bool, str | None]:
        """Whether the bulletin was handed to the application, and its originator (None
        if it was not, or was handed by an SDK before ADR 15, which did not keep it)."""
        queued = self._queued(bulletin_id)
        row = self._db.execute(
            "SELECT originator FROM handed WHERE bulletin_id = ?", (bulletin_id,)
        ).fetchone()
        if row is not None:
            return True, row[0]
        for w in queued:
            if w.digest is not None:
                return True, w.originator
        return False, None

    def held(self, bulletin_id: str) -> bytes | None:
        """The sealed envelope of a bulletin handed over (None: not kept)."""
        queued = self._queued(bulletin_id)
        row = self._db.execute(
            "SELECT envelope FROM held WHERE bulletin_id = ?", (bulletin_id,)
        ).fetchone()
        envelope = None if row is None else bytes(row[0])
        for w in queued:  # as the writer will apply them
            if w.envelope is not None and envelope is None:
                envelope = w.envelope
            if w.withdrawn_by is not None:
                envelope = None
        return envelope

    def withdrawn_by(self, bulletin_id: str) -> str | None:
        """The originator whose withdrawal of ``bulletin_id`` was applied (None: none)."""
        queued = self._queued(bulletin_id)
        row = self._db.execute(
            "SELECT originator FROM withdrawn WHERE bulletin_id = ?", (bulletin_id,)
        ).fetchone()
        if row is not None:
            return str(row[0])
        for w in queued:
            if w.withdrawn_by is not None:
                return w.withdrawn_by
        return None

    def count(self) -> int:
        """How many bulletins were handed over (pending records included)."""
        with self._lock:
            queued = [b for b, ws in self._pending.items() if any(w.digest for w in ws)]
        # One statement, one snapshot: a queued record committed since is counted once.
        total, committed = self._db.execute(
            "SELECT (SELECT count(*) FROM handed),"
            " (SELECT count(*) FROM handed WHERE bulletin_id IN (SELECT value FROM json_each(?)))",
            (json.dumps(queued),),
        ).fetchone()
        return int(total) - int(committed) + len(queued)

    # ------------------------------------------------------------------ writes
    def queue_handed(
        self,
        bulletin_id: str,
        envelope_digest: str,
        handed_at: int,
        originator: str,
        envelope: bytes,
    ) -> Record:
        """Queue ``remember`` and ``hold`` of one bulletin, for one transaction (never one
        without the other); its future is done once both are durable."""
        return self._queue_write(
            _Write(
                bulletin_id,
                Future(),
                digest=envelope_digest,
                handed_at=handed_at,
                originator=originator,
                envelope=envelope,
            )
        )

    def queue_withdrawal(self, bulletin_id: str, originator: str, withdrawn_at: int) -> Record:
        """Queue ``remember_withdrawal``; its future is done once it is durable."""
        return self._queue_write(
            _Write(bulletin_id, Future(), withdrawn_by=originator, withdrawn_at=withdrawn_at)
        )

    def handed(
        self,
        bulletin_id: str,
        envelope_digest: str,
        handed_at: int,
        originator: str,
        envelope: bytes,
    ) -> None:
        """``queue_handed``, waiting until it is durable.

        Raises:
            DedupeWriteError: it was not written."""
        self.queue_handed(bulletin_id, envelope_digest, handed_at, originator, envelope).result()

    def remember(
        self,
        bulletin_id: str,
        envelope_digest: str,
        handed_at: int,
        originator: str | None = None,
    ) -> None:
        """Record a bulletin handed over (the first record stays), durably on return."""
        write = _Write(
            bulletin_id,
            Future(),
            digest=envelope_digest,
            handed_at=handed_at,
            originator=originator,
        )
        self._queue_write(write).result()

    def hold(self, bulletin_id: str, envelope: bytes) -> None:
        """Keep a handed bulletin's envelope, still sealed, for a later forward."""
        self._queue_write(_Write(bulletin_id, Future(), envelope=envelope)).result()

    def remember_withdrawal(self, bulletin_id: str, originator: str, withdrawn_at: int) -> None:
        """Record that the application was told of this withdrawal (once: the first stays),
        and drop the bulletin's envelope; durably on return."""
        self.queue_withdrawal(bulletin_id, originator, withdrawn_at).result()

    def _queue_write(self, write: _Write) -> Record:
        # Running from the start: a waiter that gives up cannot cancel a write under way.
        write.done.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                raise DedupeWriteError("the dedupe store is closed")
            self._pending.setdefault(write.bulletin_id, []).append(write)
            self._queue.put(write)
        return write.done

    def _write(self) -> None:
        """The writer thread: one transaction for everything queued, until closed."""
        db = self._writer_db
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                if not self._commit(db, first):
                    return
        finally:
            db.close()

    def _commit(self, db: sqlite3.Connection, first: _Write) -> bool:
        """Commit ``first`` and what is queued once the write lock is held; resolve their
        futures. False once the store is closing (everything before it is committed)."""
        batch = [first]
        going_on = True
        error: BaseException | None = None
        try:
            db.execute("BEGIN IMMEDIATE")
            while True:  # what came while the lock was taken joins this transaction
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    going_on = False
                    break
                batch.append(more)
            for w in batch:
                w.apply(db)
            db.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            error = exc
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # rolled back by SQLite already
            # No content: ids, envelopes or keys never reach the log.
            log.error(
                "the dedupe store could not commit %d records (%s); their bulletins are"
                " not acked and will come back",
                len(batch),
                _error_name(exc),
            )
        with self._lock:
            for w in batch:
                queued = self._pending[w.bulletin_id]
                queued.remove(w)
                if not queued:
                    del self._pending[w.bulletin_id]
        for w in batch:
            if error is None:
                w.done.set_result(None)
            else:
                failed = DedupeWriteError(f"not made durable ({_error_name(error)})")
                w.done.set_exception(failed)
        return going_on

    def close(self) -> None:
        """Commit what is queued, stop the writer, close. Closing twice does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._writer.join()
        self._db.close()


def _error_name(exc: BaseException) -> str:
    """The error's kind, e.g. ``sqlite3.OperationalError SQLITE_FULL``, not its message."""
    name = f"{type(exc).__module__}.{type(exc).__name__}"
    code = getattr(exc, "sqlite_errorname", None)
    return f"{name} {code}" if code else name
