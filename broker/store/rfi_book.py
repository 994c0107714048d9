"""Queries over requests for information (ADR 16): where each stands, who acknowledged
and answered it, which are overdue, and the two changes made to an RFI row (closed, its
overdue alarm raised), each with its audit event in one transaction.

An acknowledgement is an addressee's signed receipt (``receipt``) and an answer an
addressee's accepted reply (``bulletin.in_reply_to``): read here, never written for an RFI.
Left to others: the tables (``broker.store.rfis``), what to record when (``broker.relay``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, exists, func, or_
from sqlmodel import Session, col, select

from broker.store.registry import BulletinRow, ReceiptRow, Registry
from broker.store.rfis import RfiAddresseeRow, RfiRow
from schemas.audit import AuditEvent

__all__ = [
    "RfiTally",
    "close_rfi",
    "due_unanswered",
    "mark_overdue",
    "overdue_count",
    "rfi",
    "rfis_of",
    "tally_rfis",
]


@dataclass(frozen=True)
class RfiTally:
    """Who an RFI reached, and which of them acknowledged (receipt) and answered (reply)."""

    addressees: tuple[str, ...]
    acknowledged_by: tuple[str, ...]
    answered_by: tuple[str, ...]


def rfi(registry: Registry, bulletin_id: str) -> RfiRow | None:
    """The RFI ``bulletin_id``, if that bulletin is one."""
    with registry.session() as s:
        return s.get(RfiRow, bulletin_id)


def rfis_of(registry: Registry, agency: str, *, closed: bool, limit: int) -> list[RfiRow]:
    """The RFIs ``agency`` asked and those routed to it, newest first, at most ``limit``;
    closed ones only if ``closed``."""
    with registry.session() as s:
        addressed = select(RfiAddresseeRow.rfi_id).where(RfiAddresseeRow.agency == agency)
        q = select(RfiRow).where(
            or_(col(RfiRow.asker) == agency, col(RfiRow.bulletin_id).in_(addressed))
        )
        if not closed:
            q = q.where(col(RfiRow.closed_at).is_(None))
        q = q.order_by(col(RfiRow.created_at).desc(), col(RfiRow.bulletin_id)).limit(limit)
        return list(s.exec(q))


def tally_rfis(registry: Registry, rfi_ids: Collection[str]) -> dict[str, RfiTally]:
    """Addressees, acknowledgements and answers of each of ``rfi_ids``, in three queries."""
    if not rfi_ids:
        return {}
    ids = list(rfi_ids)
    addressees: dict[str, set[str]] = {i: set() for i in ids}
    acked: dict[str, set[str]] = {i: set() for i in ids}
    answered: dict[str, set[str]] = {i: set() for i in ids}
    with registry.session() as s:
        q = select(RfiAddresseeRow).where(col(RfiAddresseeRow.rfi_id).in_(ids))
        for row in s.exec(q):
            addressees[row.rfi_id].add(row.agency)
        r = select(ReceiptRow.bulletin_id, ReceiptRow.recipient)
        for bid, who in s.exec(r.where(col(ReceiptRow.bulletin_id).in_(ids))):
            acked[bid].add(who)
        b = select(BulletinRow.in_reply_to, BulletinRow.originator)
        for answers, who in s.exec(b.where(col(BulletinRow.in_reply_to).in_(ids))):
            if answers is not None:
                answered[answers].add(who)
    return {
        i: RfiTally(
            tuple(sorted(addressees[i])),
            tuple(sorted(acked[i] & addressees[i])),
            tuple(sorted(answered[i] & addressees[i])),
        )
        for i in ids
    }


def _unanswered() -> ColumnElement[bool]:
    """SQL: no addressee of the RFI has a reply to it accepted."""
    return ~exists().where(
        and_(
            col(BulletinRow.in_reply_to) == col(RfiRow.bulletin_id),
            exists().where(
                and_(
                    col(RfiAddresseeRow.rfi_id) == col(RfiRow.bulletin_id),
                    col(RfiAddresseeRow.agency) == col(BulletinRow.originator),
                )
            ),
        )
    )


def due_unanswered(registry: Registry, *, now: int, limit: int = 100) -> list[RfiRow]:
    """RFIs due by ``now``, open (not closed), unanswered and not yet alarmed, oldest due
    first: those the overdue sweep raises the alarm for."""
    with registry.session() as s:
        q = (
            select(RfiRow)
            .where(RfiRow.due_at <= now)
            .where(col(RfiRow.closed_at).is_(None))
            .where(col(RfiRow.overdue_at).is_(None))
            .where(_unanswered())
            .order_by(col(RfiRow.due_at))
            .limit(limit)
        )
        return list(s.exec(q))


def overdue_count(registry: Registry, *, now: int) -> tuple[int, int | None]:
    """How many RFIs are overdue at ``now`` (due, not closed, unanswered), and the oldest
    one's due time (None: none)."""
    with registry.session() as s:
        q = (
            select(func.count(), func.min(RfiRow.due_at))
            .where(RfiRow.due_at <= now)
            .where(col(RfiRow.closed_at).is_(None))
            .where(_unanswered())
        )
        count, oldest = s.exec(q).one()
        return int(count), None if oldest is None else int(oldest)


def mark_overdue(registry: Registry, bulletin_id: str, *, at: int, event: AuditEvent) -> bool:
    """Record the overdue alarm of ``bulletin_id`` with its audit event, once: a second
    sweep (another relay's) changes nothing, and the event's id is the same.

    Returns:
        Whether this call raised it.

    Raises:
        AuditStoreError: the database refused.
    """
    current = rfi(registry, bulletin_id)
    if current is None or current.overdue_at is not None or current.closed_at is not None:
        return False

    def apply(s: Session) -> None:
        row = s.get(RfiRow, bulletin_id)
        if row is not None and row.overdue_at is None:
            row.overdue_at = at
            s.add(row)

    registry.change(apply, [event])
    return True


def close_rfi(registry: Registry, bulletin_id: str, *, at: int, event: AuditEvent) -> RfiRow:
    """Close the RFI ``bulletin_id`` at ``at`` with its audit event; closing it again
    keeps the first time (and the event's id is the same).

    Raises:
        AuditStoreError: the database refused.
        KeyError: no such RFI.
    """
    closed: list[RfiRow] = []

    def apply(s: Session) -> None:
        row = s.get(RfiRow, bulletin_id)
        if row is None:
            raise KeyError(bulletin_id)
        if row.closed_at is None:
            row.closed_at = at
            s.add(row)
        closed.append(row)

    registry.change(apply, [event])
    return closed[0]
