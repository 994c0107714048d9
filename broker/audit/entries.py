"""What an audit-log entry is: its tables, its bytes, and how the outbox row it came from
is read and compared.

A leaf is the canonical JSON of the ``AuditEvent`` (``entry_bytes``), stored verbatim, so an
auditor hashes exactly what an export or the API hands out. The log that writes and serves
entries is ``broker.audit.log``; recomputing it is ``broker.audit.verify``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Field, SQLModel

from broker.store.registry import BIGINT
from schemas.audit import AuditEvent
from schemas.canonical import canonical_json
from schemas.errors import AuditStoreError

__all__ = [
    "EVENT_COLUMNS",
    "MAX_PAGE",
    "EntryFilter",
    "LogCorrupt",
    "LogEntry",
    "LogEntryRow",
    "MerkleNodeRow",
    "MissingNode",
    "TreeHeadRow",
    "blob",
    "entry_bytes",
    "entry_of_row",
    "event_clauses",
    "outbox_bytes",
    "row_bytes",
    "same_event",
]

MAX_PAGE = 1000  # entries per search page


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


EVENT_COLUMNS = "seq, event_id, type, time, actor, subject, bulletin_id, reason, data"


class LogCorrupt(AuditStoreError):
    """The stored log contradicts itself or its signed tree heads."""

    default_code = "log_corrupt"


class MissingNode(LogCorrupt, LookupError):
    """A Merkle node the tree needs is not in ``merkle_node``."""


def entry_bytes(event_: AuditEvent) -> bytes:
    """The leaf of ``event_``: its canonical JSON (what ``leaf_hash`` hashes)."""
    return canonical_json(event_.model_dump(mode="json"))


def outbox_bytes(fields: Sequence[Any]) -> bytes:
    """``entry_bytes`` straight from an ``audit_event`` row's event columns (``EVENT_COLUMNS``
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


def row_bytes(row: Sequence[Any]) -> bytes:
    """``outbox_bytes`` of a whole ``audit_event`` row (``EVENT_COLUMNS``, ``seq`` first)."""
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
    agency as actor or subject or among the candidates a ``bulletin.decided`` event lists
    (ADR 8), also through an agency set it names (ADR 36), the event type, and
    ``since_ms <= time < until_ms``."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if agency is not None:
        where.append(
            "(a.actor = :agency OR a.subject = :agency OR "
            "(a.type = 'bulletin.decided' AND (a.data LIKE :agency_like ESCAPE '\\' OR "
            "EXISTS (SELECT 1 FROM agency_set s WHERE s.agencies LIKE :agency_like "
            "ESCAPE '\\' AND a.data LIKE :any || s.digest || :any))))"
        )
        params["agency"] = agency
        params["any"] = "%"  # a set's digest anywhere in the data (hex: no wildcard in it)
        # The id as a JSON string in the event's data: quoted, so "gt-police" is not found
        # in "gt-police-hq"; LIKE's wildcards in what was asked are matched literally.
        quoted = json.dumps(agency).replace("\\", "\\\\")
        params["agency_like"] = "%" + quoted.replace("%", "\\%").replace("_", "\\_") + "%"
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

    ``agency`` matches the actor or the subject (the per-candidate ``bulletin.routed``
    and ``bulletin.denied`` events of logs before ADR 8 name the candidate as subject), or
    a candidate a ``bulletin.decided`` event lists. Times are epoch milliseconds,
    ``until_ms`` exclusive.
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


def blob(value: object) -> bytes:
    """A BLOB column's value as bytes. SQLite stores whatever it is given, so a hand-edited
    row may hold text or a number: compare it as bytes rather than crash."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def entry_of_row(row: Any) -> LogEntry:
    return LogEntry(int(row[0]), int(row[1]), blob(row[2]), blob(row[3]))
