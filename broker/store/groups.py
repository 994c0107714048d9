"""Community groups and their epochs in the registry (ADR 18, migration 0009).

``community_group`` holds each group an administrator defined: its manager and whom it
gathers (a jurisdiction or every agency, a topic's followers or all, a least clearance).
``group_epoch`` holds each epoch its manager posted: the signed statement, the members,
the roster digest it was made for (members, their encryption keys and clearances) and,
once every member's wrap is in, when it became current. ``group_wrap`` holds the wraps,
one per member: HPKE ciphertext the broker cannot open.

``delivery_at`` (ADR 21, migration 0011) says when every member's delivery consumers read
an epoch's group subjects: from then on the relay stores one copy of a bulletin for the
epoch's members instead of one each.

Left to others: who the roster is (``broker.directory.groups``), the checks on a post
(``broker.relay.group_api``) and on a bulletin's cover (``broker.relay.cover``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import BigInteger, Integer
from sqlmodel import Field, Session, SQLModel, col, select

from schemas.audit import AuditEvent
from schemas.groups import SignedEpoch

__all__ = [
    "CurrentEpoch",
    "EpochMembers",
    "GroupEpochRow",
    "GroupRow",
    "GroupWrapRow",
    "current_epochs",
    "define_group",
    "delivery_epochs",
    "epoch_members",
    "epoch_row",
    "epochs_awaiting_delivery",
    "group_rows",
    "mark_delivery_ready",
    "member_wraps",
    "newest_epoch",
    "ready_epochs",
    "store_wraps",
]

_BIGINT = BigInteger().with_variant(Integer(), "sqlite")


class Registry(Protocol):
    """What these functions use of ``broker.store.registry.Registry``."""

    def session(self) -> AbstractContextManager[Session]: ...

    def change(self, apply: Callable[[Session], None], events: Sequence[AuditEvent]) -> None: ...

    def insert_new(self, table: Any) -> Any: ...


class GroupRow(SQLModel, table=True):
    """A community group: ``jurisdiction`` None gathers every state and community,
    ``topic`` None every topic's followers alike."""

    __tablename__ = "community_group"
    name: str = Field(primary_key=True, max_length=48)
    manager: str = Field(max_length=32)
    jurisdiction: str | None = Field(default=None, max_length=16)
    topic: str | None = Field(default=None, max_length=64)
    min_clearance: int = 0
    defined_at: int = Field(sa_type=_BIGINT)


class GroupEpochRow(SQLModel, table=True):
    """One epoch of a group; ``current_at`` is set once every member's wrap is stored."""

    __tablename__ = "group_epoch"
    group: str = Field(primary_key=True, max_length=48)
    epoch: int = Field(primary_key=True, sa_type=_BIGINT)
    manager: str = Field(max_length=32)
    kid: str = Field(max_length=35)
    statement: str  # the SignedEpoch, canonical JSON
    members: str  # comma-separated, sorted
    roster: str = Field(max_length=64)  # digest of the roster it was made for
    posted_at: int = Field(sa_type=_BIGINT)
    current_at: int | None = Field(default=None, sa_type=_BIGINT)
    # Once every member's consumers read its group subjects (ADR 21, migration 0011).
    delivery_at: int | None = Field(default=None, sa_type=_BIGINT)

    @property
    def member_ids(self) -> tuple[str, ...]:
        return tuple(a for a in self.members.split(",") if a)


class GroupWrapRow(SQLModel, table=True):
    """A member's wrap of an epoch key (HPKE to its encryption key ``kid``)."""

    __tablename__ = "group_wrap"
    group: str = Field(primary_key=True, max_length=48)
    epoch: int = Field(primary_key=True, sa_type=_BIGINT)
    agency: str = Field(primary_key=True, max_length=32, index=True)
    kid: str = Field(max_length=36)
    kem: str = Field(max_length=16)
    enc: str


@dataclass(frozen=True)
class CurrentEpoch:
    """What the relay checks a bulletin's group wrap against: the newest current epoch."""

    group: str
    epoch: int
    kid: str
    members: frozenset[str]
    roster: str
    statement: str


@dataclass(frozen=True)
class EpochMembers:
    """An epoch's members as recorded, and their count and digest as its manager signed
    them: what a bulletin addressed to the epoch as a whole names (ADR 37)."""

    members: frozenset[str]
    count: int
    digest: str


def epoch_members(
    registry: Registry, pairs: Collection[tuple[str, int]]
) -> dict[tuple[str, int], EpochMembers]:
    """The members of each of ``pairs`` that became current (an epoch posted but never
    completed is left out: no bulletin may use it)."""
    if not pairs:
        return {}
    out: dict[tuple[str, int], EpochMembers] = {}
    with registry.session() as s:
        for group, epoch in sorted(set(pairs)):
            row = s.get(GroupEpochRow, (group, epoch))
            if row is None or row.current_at is None:
                continue
            st = SignedEpoch.model_validate_json(row.statement).statement
            out[(group, epoch)] = EpochMembers(
                frozenset(row.member_ids), st.member_count, st.members_digest
            )
    return out


def define_group(registry: Registry, row: GroupRow, event: AuditEvent) -> None:
    """Add or redefine a group, with its audit event, in one transaction.

    Raises:
        AuditStoreError: the database refused.
    """

    def apply(s: Session) -> None:
        old = s.get(GroupRow, row.name)
        if old is None:
            s.add(row)
            return
        for field in ("manager", "jurisdiction", "topic", "min_clearance", "defined_at"):
            setattr(old, field, getattr(row, field))
        s.add(old)

    registry.change(apply, [event])


def group_rows(registry: Registry) -> list[GroupRow]:
    with registry.session() as s:
        return list(s.exec(select(GroupRow).order_by(col(GroupRow.name))))


def current_epochs(
    registry: Registry, groups: Collection[str] | None = None
) -> dict[str, CurrentEpoch]:
    """The newest current epoch of each group (of ``groups``, or all), in one query."""
    with registry.session() as s:
        q = select(GroupEpochRow).where(col(GroupEpochRow.current_at).is_not(None))
        if groups is not None:
            if not groups:
                return {}
            q = q.where(col(GroupEpochRow.group).in_(list(groups)))
        newest: dict[str, GroupEpochRow] = {}
        for row in s.exec(q):
            if row.group not in newest or row.epoch > newest[row.group].epoch:
                newest[row.group] = row
    return {
        g: CurrentEpoch(g, r.epoch, r.kid, frozenset(r.member_ids), r.roster, r.statement)
        for g, r in newest.items()
    }


def epoch_row(registry: Registry, group: str, epoch: int) -> GroupEpochRow | None:
    with registry.session() as s:
        return s.get(GroupEpochRow, (group, epoch))


def newest_epoch(registry: Registry, group: str) -> GroupEpochRow | None:
    """The newest epoch posted of ``group``, current or not."""
    with registry.session() as s:
        q = (
            select(GroupEpochRow)
            .where(GroupEpochRow.group == group)
            .order_by(col(GroupEpochRow.epoch).desc())
            .limit(1)
        )
        return s.exec(q).first()


def store_wraps(
    registry: Registry,
    epoch: GroupEpochRow,
    wraps: Sequence[GroupWrapRow],
    *,
    event_of: Callable[[int], AuditEvent],
    now: int,
) -> tuple[int, int, bool]:
    """Store ``epoch`` (if new) and ``wraps`` (those already there are kept); once every
    member has a wrap, make the epoch current, with the event ``event_of(now)``, in the
    same transaction.

    Returns:
        (wraps stored for the epoch, members without a wrap, whether it is current).

    Raises:
        AuditStoreError: the database refused.
    """
    result: list[tuple[int, int, bool]] = []
    events: list[AuditEvent] = []

    def apply(s: Session) -> None:
        row = s.get(GroupEpochRow, (epoch.group, epoch.epoch))
        if row is None:
            row = GroupEpochRow.model_validate(epoch.model_dump())
            s.add(row)
            s.flush()
        have = set(
            s.exec(
                select(GroupWrapRow.agency).where(
                    GroupWrapRow.group == epoch.group, GroupWrapRow.epoch == epoch.epoch
                )
            )
        )
        for w in wraps:
            if w.agency not in have:
                s.add(GroupWrapRow.model_validate(w.model_dump()))
                have.add(w.agency)
        members = set(row.member_ids)
        missing = len(members - have)
        if missing == 0 and row.current_at is None:
            row.current_at = now
            s.add(row)
            events.append(event_of(now))
        result.append((len(have & members), missing, row.current_at is not None))

    # The event is known only inside the transaction: ``change`` writes the events it is
    # given after ``apply``, so the list is filled before it reads it.
    registry.change(apply, events)
    return result[0]


def member_wraps(
    registry: Registry, agency: str, wanted: Collection[tuple[str, int]]
) -> list[tuple[GroupEpochRow, GroupWrapRow]]:
    """``agency``'s wraps of the ``wanted`` (group, epoch) pairs that are current or were,
    with their epochs."""
    if not wanted:
        return []
    out: list[tuple[GroupEpochRow, GroupWrapRow]] = []
    with registry.session() as s:
        for group, epoch in sorted(set(wanted)):
            row = s.get(GroupEpochRow, (group, epoch))
            if row is None or row.current_at is None:
                continue
            wrap = s.get(GroupWrapRow, (group, epoch, agency))
            if wrap is not None:
                out.append((row, wrap))
    return out


def delivery_epochs(registry: Registry, *, since: int) -> dict[str, list[tuple[str, int]]]:
    """For each agency, the (group, epoch) pairs whose shared copies its delivery consumers
    must read (ADR 21): every epoch it is a member of that is current, or was current
    until ``since`` (epoch seconds) or later: older ones' copies have left the stream.
    One query."""
    with registry.session() as s:
        q = select(GroupEpochRow).where(col(GroupEpochRow.current_at).is_not(None))
        by_group: dict[str, list[GroupEpochRow]] = {}
        for row in s.exec(q):
            by_group.setdefault(row.group, []).append(row)
    out: dict[str, list[tuple[str, int]]] = {}
    for rows in by_group.values():
        rows.sort(key=lambda r: r.epoch)
        for row, after in zip(rows, [*rows[1:], None], strict=True):
            ended = after.current_at if after is not None else None
            if ended is not None and ended < since:
                continue
            for agency in row.member_ids:
                out.setdefault(agency, []).append((row.group, row.epoch))
    return out


def epochs_awaiting_delivery(registry: Registry) -> list[GroupEpochRow]:
    """Current epochs whose members' consumers are not yet known to read their copies."""
    with registry.session() as s:
        q = select(GroupEpochRow).where(
            col(GroupEpochRow.current_at).is_not(None), col(GroupEpochRow.delivery_at).is_(None)
        )
        return list(s.exec(q.order_by(col(GroupEpochRow.group), col(GroupEpochRow.epoch))))


def mark_delivery_ready(registry: Registry, pairs: Collection[tuple[str, int]], now: int) -> None:
    """Record that every member of each (group, epoch) reads its copies (not audited: it
    changes how bulletins are stored, not who may open them; each bulletin's routing is).

    Raises:
        AuditStoreError: the database refused.
    """

    def apply(s: Session) -> None:
        for group, epoch in pairs:
            row = s.get(GroupEpochRow, (group, epoch))
            if row is not None and row.delivery_at is None:
                row.delivery_at = now
                s.add(row)

    registry.change(apply, [])


def ready_epochs(
    registry: Registry, pairs: Collection[tuple[str, int]]
) -> dict[tuple[str, int], frozenset[str]]:
    """The members of each of ``pairs`` whose copies its members' consumers read (its
    ``delivery_at`` is set); the others are left out."""
    if not pairs:
        return {}
    out: dict[tuple[str, int], frozenset[str]] = {}
    with registry.session() as s:
        for group, epoch in sorted(set(pairs)):
            row = s.get(GroupEpochRow, (group, epoch))
            if row is not None and row.delivery_at is not None:
                out[(group, epoch)] = frozenset(row.member_ids)
    return out
