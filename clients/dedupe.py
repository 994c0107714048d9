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
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["DedupeStore"]


class DedupeStore:
    """Bulletin ids already handed to this agency's application, and withdrawals applied."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
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

    def seen(self, bulletin_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM handed WHERE bulletin_id = ?", (bulletin_id,)
        ).fetchone()
        return row is not None

    def handed_at(self, bulletin_id: str) -> int | None:
        """When the bulletin was handed to the application (None: never)."""
        row = self._db.execute(
            "SELECT handed_at FROM handed WHERE bulletin_id = ?", (bulletin_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def handed_by(self, bulletin_id: str) -> tuple[bool, str | None]:
        """Whether the bulletin was handed to the application, and its originator (None
        if it was not, or was handed by an SDK before ADR 15, which did not keep it)."""
        row = self._db.execute(
            "SELECT originator FROM handed WHERE bulletin_id = ?", (bulletin_id,)
        ).fetchone()
        return (False, None) if row is None else (True, row[0])

    def remember(
        self,
        bulletin_id: str,
        envelope_digest: str,
        handed_at: int,
        originator: str | None = None,
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO handed (bulletin_id, envelope_digest, handed_at, originator)"
            " VALUES (?, ?, ?, ?)",
            (bulletin_id, envelope_digest, handed_at, originator),
        )

    def handed(
        self,
        bulletin_id: str,
        envelope_digest: str,
        handed_at: int,
        originator: str,
        envelope: bytes,
    ) -> None:
        """``remember`` and ``hold`` in one transaction: one durable write (one fsync)
        per bulletin handed over instead of two, and never one without the other."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self.remember(bulletin_id, envelope_digest, handed_at, originator)
            self.hold(bulletin_id, envelope)

    def hold(self, bulletin_id: str, envelope: bytes) -> None:
        """Keep a handed bulletin's envelope, still sealed, for a later forward."""
        self._db.execute("INSERT OR IGNORE INTO held VALUES (?, ?)", (bulletin_id, envelope))

    def held(self, bulletin_id: str) -> bytes | None:
        """The sealed envelope of a bulletin handed over (None: not kept)."""
        row = self._db.execute(
            "SELECT envelope FROM held WHERE bulletin_id = ?", (bulletin_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def withdrawn_by(self, bulletin_id: str) -> str | None:
        """The originator whose withdrawal of ``bulletin_id`` was applied (None: none)."""
        row = self._db.execute(
            "SELECT originator FROM withdrawn WHERE bulletin_id = ?", (bulletin_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def remember_withdrawal(self, bulletin_id: str, originator: str, withdrawn_at: int) -> None:
        """Record that the application was told of this withdrawal (once: the first stays)."""
        self._db.execute(
            "INSERT OR IGNORE INTO withdrawn VALUES (?, ?, ?)",
            (bulletin_id, originator, withdrawn_at),
        )
        self._db.execute("DELETE FROM held WHERE bulletin_id = ?", (bulletin_id,))

    def count(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM handed").fetchone()
        return int(n)

    def close(self) -> None:
        self._db.close()
