"""An agency's local archive of the bulletins it received: SQLite, content sealed at rest.

What the broker sees in clear stays in clear columns here too, so that the archive can
be listed and filtered without opening anything: the bulletin id, originator, topic,
classification, TLP, precedence, times, and the ids of its thread, the bulletin it answers
and the one it corrects. Everything else (title, body, caveats, the rest of the labels,
attachment names and keys, a withdrawal's reason) is sealed per row under the archive key
(``clients.archive_keys``). Read/unread and flags (a closed set) are the desk's own.

Rows are numbered by ``seq``, which only grows (``AUTOINCREMENT``: a number is never used
again), and each gets an archive time in microseconds, ``added_us``, that grows with it:
paging by either is an index range, never a scan (the TAXII server pages by them).
Full-text search is in memory (``clients.archive_search``), built on first use. This
module leaves receiving to the SDK (``clients.inbox_commands`` hands it bulletins).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from clients.archive_keys import (
    ArchiveHeader,
    ArchiveSecret,
    derive_subkey,
    new_archive_key,
    open_archive_key,
    open_row,
    seal_row,
)
from clients.archive_search import SearchIndex
from clients.results import ReceivedAttachment, ReceivedBulletin, Withdrawn
from schemas.canonical import b64d, b64e
from schemas.errors import ConfigError
from schemas.labels import Labels

__all__ = [
    "FLAGS",
    "MAX_PAGE",
    "Archive",
    "ArchiveEntry",
    "ArchiveFilter",
    "ArchivedBulletin",
    "archive_path",
]

FLAGS: Final = ("starred", "follow-up", "done")
MAX_PAGE = 1000
# 2: the partner region a bulletin that crossed a partner link came from (ADR 33).
_SCHEMA_VERSION = 2
_COLUMNS = (
    "seq, id, originator, topic, classification, tlp, precedence, created_at, received_at,"
    " added_us, expires_at, thread, in_reply_to, supersedes, is_read, flags, withdrawn_at,"
    " region"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bulletins (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    originator TEXT NOT NULL,
    topic TEXT NOT NULL,
    classification TEXT NOT NULL,
    tlp TEXT NOT NULL,
    precedence TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    added_us INTEGER NOT NULL UNIQUE,
    expires_at INTEGER,
    thread TEXT,
    in_reply_to TEXT,
    supersedes TEXT,
    is_read INTEGER NOT NULL DEFAULT 0,
    flags INTEGER NOT NULL DEFAULT 0,
    withdrawn_at INTEGER,
    withdrawal BLOB,
    sealed BLOB NOT NULL,
    region TEXT
);
CREATE INDEX IF NOT EXISTS bulletins_topic ON bulletins (topic, seq);
CREATE INDEX IF NOT EXISTS bulletins_created ON bulletins (created_at);
CREATE INDEX IF NOT EXISTS bulletins_thread ON bulletins (thread);
"""


def archive_path(keystore_path: Path) -> Path:
    """Where an agency's archive is kept by default: beside its keystore."""
    return keystore_path.with_name(keystore_path.stem + ".archive.sqlite")


@dataclass(frozen=True)
class ArchiveFilter:
    """Which bulletins to list; each field None (or False) matches all."""

    topic: str | None = None
    precedence: str | None = None
    classification: str | None = None
    tlp: str | None = None
    originator: str | None = None
    since: int | None = None  # created at or after, epoch seconds
    until: int | None = None  # created before
    unread: bool = False
    flag: str | None = None
    thread: str | None = None
    before_seq: int | None = None  # archived before this row (a page's keyset)
    after_seq: int | None = None  # archived after this row

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters."""
        terms: list[str] = []
        params: list[Any] = []
        for column in ("topic", "precedence", "classification", "tlp", "originator"):
            value = getattr(self, column)
            if value is not None:
                terms.append(f"{column} = ?")
                params.append(value)
        if self.since is not None:
            terms.append("created_at >= ?")
            params.append(self.since)
        if self.until is not None:
            terms.append("created_at < ?")
            params.append(self.until)
        if self.unread:
            terms.append("is_read = 0")
        if self.flag is not None:
            terms.append("flags & ? != 0")
            params.append(_flag_bit(self.flag))
        if self.thread is not None:
            terms.append("(thread = ? OR id = ?)")
            params += [self.thread, self.thread]
        if self.before_seq is not None:
            terms.append("seq < ?")
            params.append(self.before_seq)
        if self.after_seq is not None:
            terms.append("seq > ?")
            params.append(self.after_seq)
        return (" AND ".join(terms) or "1"), params


@dataclass(frozen=True)
class ArchiveEntry:
    """A row's clear columns: what the broker saw, and the desk's own marks."""

    seq: int
    id: str
    originator: str
    topic: str
    classification: str
    tlp: str
    precedence: str
    created_at: int
    received_at: int
    added_us: int
    expires_at: int | None
    thread: str | None
    in_reply_to: str | None
    supersedes: str | None
    read: bool
    flags: tuple[str, ...]
    withdrawn_at: int | None
    region: str | None = None  # the partner region it came from, if it crossed a link

    @property
    def sender(self) -> str:
        """The originator, with its partner region if it crossed a link."""
        return self.originator if self.region is None else f"{self.originator} ({self.region})"

    def to_json(self) -> dict[str, Any]:
        shown = {k: v for k, v in self.__dict__.items() if k != "flags"}
        shown["flags"] = list(self.flags)
        return shown


@dataclass(frozen=True)
class ArchivedBulletin:
    """A row opened: its clear columns, the bulletin, and a withdrawal's reason."""

    entry: ArchiveEntry
    bulletin: ReceivedBulletin
    withdrawal_reason: str | None = None


def _flag_bit(flag: str) -> int:
    if flag not in FLAGS:
        raise ConfigError(f"no flag {flag[:40]!r}", hint=f"flags are {', '.join(FLAGS)}")
    return 1 << FLAGS.index(flag)


def _entry(row: Sequence[Any]) -> ArchiveEntry:
    flags = tuple(f for i, f in enumerate(FLAGS) if row[15] & (1 << i))
    return ArchiveEntry(
        seq=row[0],
        id=row[1],
        originator=row[2],
        topic=row[3],
        classification=row[4],
        tlp=row[5],
        precedence=row[6],
        created_at=row[7],
        received_at=row[8],
        added_us=row[9],
        expires_at=row[10],
        thread=row[11],
        in_reply_to=row[12],
        supersedes=row[13],
        read=bool(row[14]),
        flags=flags,
        withdrawn_at=row[16],
        region=row[17],
    )


def _content(b: ReceivedBulletin) -> bytes:
    """What is sealed of a bulletin: all of it (the clear columns are copies)."""
    doc = {
        "id": b.id,
        "originator": b.originator,
        "labels": b.labels.model_dump(mode="json", exclude_none=True),
        "title": b.title,
        "body": b.body,
        "created_at": b.created_at,
        "received_at": b.received_at,
        "caveats": list(b.caveats),
        "expires_at": b.expires_at,
        "supersedes": b.supersedes,
        "in_reply_to": b.in_reply_to,
        "thread": b.thread,
        "reply_all": b.reply_all,
        "rfi_due": b.rfi_due,
        "signed_kid": b.signed_kid,
        "attachments": [
            {
                "index": a.index,
                "name": a.name,
                "media_type": a.media_type,
                "size": a.size,
                "chunks": a.chunks,
                "chunk_size": a.chunk_size,
                "digest": a.digest,
                "key": b64e(a.key),
                # A forward's file is the original's, sealed under its id (ADR 20).
                **({"original": a.original} if a.original is not None else {}),
            }
            for a in b.attachments
        ],
        **({"acknowledges": True} if b.acknowledges else {}),
        **({"region": b.region} if b.region is not None else {}),
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _bulletin(raw: bytes) -> ReceivedBulletin:
    doc = json.loads(raw)
    attachments = tuple(
        ReceivedAttachment(**{**a, "key": b64d(a["key"], field="key", max_bytes=64)})
        for a in doc.pop("attachments")
    )
    labels = Labels.model_validate_json(json.dumps(doc.pop("labels")))
    return ReceivedBulletin(
        **{**doc, "caveats": tuple(doc["caveats"])}, labels=labels, attachments=attachments
    )


class Archive:
    """One agency's archive file, open."""

    def __init__(self, db: sqlite3.Connection, key: bytes, agency: str, path: Path) -> None:
        self._db = db
        self._key = key
        self.agency = agency
        self.path = path
        self._index: SearchIndex | None = None
        self._indexed_to = 0

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: Path,
        agency: str,
        secret: Callable[[], ArchiveSecret],
        *,
        create: bool = True,
    ) -> Archive:
        """Open (or, with ``create``, make) the archive at ``path`` for ``agency``.

        Args:
            secret: called once, for the passphrase or key file the archive key is
                wrapped under.

        Raises:
            ConfigError: no archive and not ``create``; readable by others; not an
                archive; another agency's; the wrong passphrase or key file.
        """
        fresh = not path.exists()
        if fresh and not create:
            raise ConfigError(
                f"no archive at {path}", hint="receive into it first with `istmo inbox sync`"
            )
        if fresh:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        elif path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"archive {path} is readable by others", hint=f"chmod 600 {path}")
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, _SCHEMA_VERSION):
                raise ConfigError(f"archive {path} is of a newer Istmo (schema {version})")
            if version == 1:
                db.execute("ALTER TABLE bulletins ADD COLUMN region TEXT")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path} is not an Istmo archive ({exc})") from exc
        try:
            key = cls._unwrapped_key(db, path, agency, secret)
        except BaseException:
            db.close()
            raise
        return cls(db, key, agency, path)

    @staticmethod
    def _unwrapped_key(
        db: sqlite3.Connection, path: Path, agency: str, secret: Callable[[], ArchiveSecret]
    ) -> bytes:
        row = db.execute("SELECT v FROM meta WHERE k = 'header'").fetchone()
        if row is None:
            key, header = new_archive_key(agency, secret())
            db.execute("INSERT INTO meta (k, v) VALUES ('header', ?)", (header.model_dump_json(),))
            return key
        try:
            header = ArchiveHeader.model_validate_json(row[0])
        except ValidationError as exc:
            raise ConfigError(f"archive {path} has a damaged header") from exc
        if header.agency != agency:
            raise ConfigError(
                f"archive {path} is {header.agency}'s, not {agency}'s",
                hint="give --archive the file of the agency you act as",
            )
        try:
            return open_archive_key(header, secret())
        except ConfigError as exc:
            raise ConfigError(f"archive {path}: {exc}", hint=exc.hint) from exc

    def subkey(self, purpose: str) -> bytes:
        """A 256-bit key for ``purpose`` derived from the archive key (HKDF-SHA256), for
        what else lives in the archive file and must not be forgeable without the
        passphrase or key file (the desk's access log)."""
        return derive_subkey(self._key, purpose)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def add(self, b: ReceivedBulletin, *, now_us: int | None = None) -> int | None:
        """Keep ``b``; its sequence number, or None if it was kept already (a redelivery).

        Durable when it returns (``synchronous=FULL``): the SDK acks only after."""
        sealed = seal_row(self._key, b.id, "content", _content(b))
        lab = b.labels
        now = time.time_ns() // 1000 if now_us is None else now_us
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM bulletins WHERE id = ?", (b.id,)).fetchone():
                db.execute("ROLLBACK")
                return None
            (last,) = db.execute("SELECT coalesce(max(added_us), 0) FROM bulletins").fetchone()
            cur = db.execute(
                "INSERT INTO bulletins (id, originator, topic, classification, tlp, precedence,"
                " created_at, received_at, added_us, expires_at, thread, in_reply_to,"
                " supersedes, sealed, region) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    b.id,
                    b.originator,
                    lab.topic,
                    lab.classification.value,
                    lab.tlp.value,
                    lab.precedence.value,
                    b.created_at,
                    b.received_at,
                    max(now, last + 1),
                    b.expires_at,
                    b.thread,
                    b.in_reply_to,
                    b.supersedes,
                    sealed,
                    b.region,
                ),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        seq = int(cur.lastrowid or 0)
        if self._index is not None:
            self._index_to()
        return seq

    def withdraw(self, w: Withdrawn) -> bool:
        """Mark ``w``'s bulletin withdrawn by its originator, keeping the reason sealed;
        False if the archive does not hold it from that originator."""
        sealed = seal_row(self._key, w.id, "withdrawal", w.reason.encode())
        cur = self._db.execute(
            "UPDATE bulletins SET withdrawn_at = ?, withdrawal = ?"
            " WHERE id = ? AND originator = ? AND withdrawn_at IS NULL",
            (w.withdrawn_at, sealed, w.id, w.originator),
        )
        return cur.rowcount == 1

    def mark_read(self, bulletin_id: str, read: bool = True) -> bool:
        cur = self._db.execute(
            "UPDATE bulletins SET is_read = ? WHERE id = ?", (int(read), bulletin_id)
        )
        return cur.rowcount == 1

    def flag(self, bulletin_id: str, flag: str, on: bool = True) -> bool:
        """Set or clear ``flag`` (one of ``FLAGS``); False if there is no such bulletin.

        Raises:
            ConfigError: not one of ``FLAGS``.
        """
        bit = _flag_bit(flag)
        sql = "flags | ?" if on else "flags & ~?"
        cur = self._db.execute(
            f"UPDATE bulletins SET flags = {sql} WHERE id = ?",  # noqa: S608 -- one of two fixed strings
            (bit, bulletin_id),
        )
        return cur.rowcount == 1

    # ------------------------------------------------------------------ reading
    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM bulletins").fetchone()[0])

    def entries(
        self, where: ArchiveFilter, *, limit: int = 50, oldest: bool = False
    ) -> list[ArchiveEntry]:
        """The newest bulletins ``where`` matches (the oldest ones if ``oldest``: a page
        after ``where.after_seq``), newest first (clear columns only)."""
        cond, params = where.where()
        order = "ASC" if oldest else "DESC"
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM bulletins WHERE {cond} ORDER BY seq {order} LIMIT ?",  # noqa: S608 -- fixed columns and order, parameters bound
            [*params, _bounded(limit)],
        )
        found = [_entry(r) for r in rows]
        return found[::-1] if oldest else found

    def get(self, bulletin_id: str) -> ArchivedBulletin | None:
        """The bulletin ``bulletin_id``, opened; None if the archive does not hold it.

        Raises:
            ConfigError: its row was altered.
        """
        row = self._db.execute(
            f"SELECT {_COLUMNS}, sealed, withdrawal FROM bulletins WHERE id = ?",  # noqa: S608 -- fixed columns
            (bulletin_id,),
        ).fetchone()
        return None if row is None else self._opened(row)

    def _opened(self, row: Sequence[Any]) -> ArchivedBulletin:
        entry = _entry(row)
        b = _bulletin(open_row(self._key, entry.id, "content", row[18]))
        shown = (b.id, b.originator, b.labels.topic, b.region)
        if shown != (entry.id, entry.originator, entry.topic, entry.region):
            raise ConfigError(f"archive row {entry.id} was altered: its columns do not match")
        reason = None
        if row[19] is not None:
            reason = open_row(self._key, entry.id, "withdrawal", row[19]).decode()
        return ArchivedBulletin(entry, b, reason)

    def after(
        self,
        topic: str,
        *,
        after_seq: int = 0,
        after_us: int = 0,
        limit: int = 100,
        tlps: Sequence[str] = (),
        replies: bool | None = None,
        now: int | None = None,
    ) -> list[ArchivedBulletin]:
        """Bulletins on ``topic`` past ``after_seq`` and archived after ``after_us``, in
        archive order, opened: at most ``limit``. Withdrawn and expired ones are left
        out; so are TLP levels not in ``tlps`` (if given), and replies or non-replies as
        ``replies`` says. An index range on (topic, seq), never a scan."""
        cond = "topic = ? AND seq > ? AND added_us > ? AND withdrawn_at IS NULL"
        cond += " AND (expires_at IS NULL OR expires_at > ?)"
        params: list[Any] = [topic, after_seq, after_us, int(time.time()) if now is None else now]
        if tlps:
            cond += f" AND tlp IN ({', '.join('?' * len(tlps))})"
            params += list(tlps)
        if replies is not None:
            cond += " AND in_reply_to IS NOT NULL" if replies else " AND in_reply_to IS NULL"
        rows = self._db.execute(
            f"SELECT {_COLUMNS}, sealed, withdrawal FROM bulletins WHERE {cond}"  # noqa: S608 -- fixed text, parameters bound
            " ORDER BY seq LIMIT ?",
            [*params, _bounded(limit)],
        )
        return [self._opened(r) for r in rows]

    def seq_after_us(self, after_us: int) -> int:
        """The last sequence number archived at or before ``after_us`` (0: none)."""
        row = self._db.execute(
            "SELECT coalesce(max(seq), 0) FROM bulletins WHERE added_us <= ?", (after_us,)
        ).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------ search
    def search(
        self, query: str, where: ArchiveFilter, *, limit: int = 50, oldest: bool = False
    ) -> list[ArchiveEntry]:
        """Bulletins holding every word of ``query`` that ``where`` matches, newest first:
        the newest ``limit`` (the oldest if ``oldest``). The first search builds the
        in-memory index from every row (ADR 23).

        Raises:
            ConfigError: an empty or too long query.
        """
        index = self._index_to()
        try:
            hits = index.search(query, limit=max(1, index.size))
        except ValueError as exc:
            raise ConfigError(str(exc), hint="search for a few words") from exc
        found: list[ArchiveEntry] = []
        cond, params = where.where()
        order = "ASC" if oldest else "DESC"
        for chunk in _chunks(hits[::-1] if oldest else hits, 500):
            marks = ", ".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM bulletins WHERE seq IN ({marks}) AND {cond}"  # noqa: S608 -- placeholders and a fixed order only
                f" ORDER BY seq {order}",
                [*chunk, *params],
            )
            found += [_entry(r) for r in rows]
            if len(found) >= limit:
                break
        found = found[: _bounded(limit)]
        return found[::-1] if oldest else found

    def _index_to(self) -> SearchIndex:
        """The in-memory index, brought up to the newest row."""
        index = self._index
        if index is None:
            index = self._index = SearchIndex()
        rows = self._db.execute(
            "SELECT seq, id, sealed FROM bulletins WHERE seq > ? ORDER BY seq",
            (self._indexed_to,),
        )
        for seq, bid, sealed in rows:
            b = _bulletin(open_row(self._key, bid, "content", sealed))
            index.add(seq, [b.title, b.body, *(a.name for a in b.attachments)])
            self._indexed_to = seq
        return index

    def index_size(self) -> int:
        """How many bulletins the in-memory index holds (0 until the first search)."""
        return 0 if self._index is None else self._index.size


def _bounded(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ConfigError(f"a limit is 1 to {MAX_PAGE}", hint="ask for fewer at once")
    return limit


def _chunks(values: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]
