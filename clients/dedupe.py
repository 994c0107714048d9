"""The SDK's durable record of bulletins already handed to the application.

JetStream delivers at least once and its dedupe window is minutes, so the SDK itself
remembers, in SQLite with ``synchronous=FULL``, every bulletin id it handed over. The
store holds ids, digests and times only: never a title, a body or a key.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["DedupeStore"]


class DedupeStore:
    """Bulletin ids already handed to this agency's application."""

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

    def remember(self, bulletin_id: str, envelope_digest: str, handed_at: int) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO handed VALUES (?, ?, ?)",
            (bulletin_id, envelope_digest, handed_at),
        )

    def count(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM handed").fetchone()
        return int(n)

    def close(self) -> None:
        self._db.close()
