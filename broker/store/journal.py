"""Which agencies' directory records changed, in the order the changes committed (ADR 14).

A client keeps the signed records of the agencies it seals for; when the directory changes
it asks which of them to fetch again ("which records changed since the version I hold?").
The directory version was a digest of the whole directory, which says that something
changed but neither what nor in which order. So every transaction that changes an agency's
record (its row, or one of its signing or encryption keys) appends one row per such agency
to ``directory_change(serial, agency)``, in that transaction:

- ``serial`` grows in commit order: on PostgreSQL the writer holds the audit outbox's
  advisory lock (``Registry._lock_outbox``) when it inserts, as audit writers do; SQLite has
  one writer at a time. So a reader that sees serial N has seen every change up to N.
- The largest serial is the directory's record serial, the first part of its version
  (``schemas.directory.directory_version``). A change that is not journaled would leave
  the serial behind the records; every writer goes through ``Registry.change`` or
  ``Registry.record``, which journal what their rows touch (``touched_agencies``).
- The journal keeps its newest ``JOURNAL_KEEP`` rows; a client holding a version older than
  what is left is told "fetch everything you hold again".

Subscriptions and jurisdictions are not records (a client does not hold them) and are not
journaled: they change the version's digest, not its serial. Left to others: reading the
journal into a relay's view and answering clients (``broker.directory.service``,
``broker.directory.changes``), the transactions (``broker.store.registry``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sqlalchemy import BigInteger, Integer, func, select
from sqlalchemy.engine import Connection
from sqlmodel import Field, SQLModel, col

__all__ = [
    "JOURNALED_TABLES",
    "JOURNAL_KEEP",
    "DirectoryChangeRow",
    "journal_changes",
    "journal_serial",
    "journal_tail",
    "touched_agencies",
]

_BIGINT = BigInteger().with_variant(Integer(), "sqlite")
# Rows kept: a row per changed agency per change, so years of rotations at 10,000 agencies.
JOURNAL_KEEP = 50_000
# The tables of an agency's record, and the column that names the agency in each.
_RECORD_TABLES = {"agency": "id", "signing_key": "agency", "encryption_key": "agency"}
# The tables whose rows are part of an agency's directory record.
JOURNALED_TABLES = frozenset(_RECORD_TABLES)


class DirectoryChangeRow(SQLModel, table=True):
    """``agency``'s record changed in the transaction that appended this row."""

    __tablename__ = "directory_change"
    serial: int | None = Field(default=None, primary_key=True, sa_type=_BIGINT)
    agency: str = Field(max_length=32)


def touched_agencies(rows: Iterable[object]) -> set[str]:
    """The agencies whose records ``rows`` (ORM objects added, changed or deleted) are
    part of: agency rows and signing and encryption key rows; other rows are ignored."""
    touched: set[str] = set()
    for row in rows:
        column = _RECORD_TABLES.get(getattr(type(row), "__tablename__", ""))
        if column is not None:
            touched.add(getattr(row, column))
    return touched


def journal_changes(conn: Connection, agencies: Collection[str]) -> None:
    """Append a row per agency of ``agencies``, and drop the rows older than the newest
    ``JOURNAL_KEEP``. Run it in the transaction that changes their records, after
    ``Registry._lock_outbox`` (see the module docstring)."""
    if not agencies:
        return
    table = DirectoryChangeRow.__table__  # type: ignore[attr-defined]
    conn.execute(table.insert(), [{"agency": a} for a in sorted(agencies)])
    newest = conn.execute(select(func.max(table.c.serial))).scalar_one()
    conn.execute(table.delete().where(table.c.serial <= newest - JOURNAL_KEEP))


def journal_serial(conn: Connection) -> int:
    """The serial of the newest change committed (0: none yet)."""
    serial = conn.execute(select(func.max(col(DirectoryChangeRow.serial)))).scalar_one()
    return int(serial or 0)


def journal_tail(conn: Connection, *, upto: int, limit: int) -> tuple[list[tuple[int, str]], int]:
    """The newest ``limit`` changes up to serial ``upto``, oldest first, and the serial
    after which they are complete (every change after it, up to ``upto``, is among them).

    The journal is complete after the serial before its oldest row: rows are appended in
    serial order and only the oldest are dropped. Its first serial is 1, so a journal never
    pruned is complete after 0 (a rolled-back insert on PostgreSQL skips a serial, which
    only makes the answer more cautious).
    """
    serial = col(DirectoryChangeRow.serial)
    q = (
        select(serial, col(DirectoryChangeRow.agency))
        .where(serial <= upto)
        .order_by(serial.desc())
        .limit(limit)
    )
    rows = [(int(n or 0), str(a)) for n, a in conn.execute(q)]  # the key is never NULL
    rows.reverse()
    oldest: int | None = conn.execute(select(func.min(serial))).scalar_one()
    complete_after = oldest - 1 if oldest is not None else 0
    if len(rows) == limit:
        complete_after = max(complete_after, rows[0][0] - 1)
    return rows, complete_after
