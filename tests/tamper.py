"""Writing to a running stack's SQLite database as an attacker with the file would, or to
a store's tables as their owner could."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import Connection, text


def drop_append_only(conn: Connection, tables: Iterable[str]) -> None:
    """Drop the append-only triggers of ``tables`` (migrations 0001 and 0013), as the
    tables' owner can, on SQLite or PostgreSQL."""
    pg = conn.dialect.name == "postgresql"
    for t in tables:
        for verb in ("update", "delete", "truncate") if pg else ("update", "delete"):
            on = f" ON {t}" if pg else ""
            conn.execute(text(f"DROP TRIGGER IF EXISTS {t}_no_{verb}{on}"))


def attack(db: Path, change: Callable[[sqlite3.Connection], None]) -> None:
    """Drop the append-only triggers of database file ``db``, then ``change`` rows, in
    one transaction."""
    with sqlite3.connect(db, timeout=60) as conn:
        # The write lock first, waiting up to the timeout: a read snapshot that turns into a
        # write after a running stack's sequencer has committed fails at once ("database is
        # locked", whatever the timeout).
        conn.execute("BEGIN IMMEDIATE")
        triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        for (name,) in triggers.fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        change(conn)
