"""Withdrawn and corrected bulletins in the registry (ADR 15, migration 0006).

``withdrawal`` keeps one row per bulletin its originator recalled: the signed withdrawal
as the recipients get it (so whichever relay finds the work unfinished can finish it), when
the broker recorded it, and once done, when, whom the withdrawal reached (``notified``)
and whose copy was removed before it reached them (``removed``). A correction is a
bulletin whose ``supersedes`` names the bulletin it corrects (``BulletinRow``; the
registry finds them, ``Registry.corrections``).

Left to others: the checks on a withdrawal and the work on the delivery stream
(``broker.relay.recall``), the rows' audit events (``broker.audit.events``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from sqlalchemy import BigInteger, Integer
from sqlmodel import Field, Session, SQLModel, col, select

from schemas.audit import AuditEvent

__all__ = [
    "WithdrawalRow",
    "complete_withdrawal",
    "unfinished_withdrawals",
    "withdrawal",
    "withdrawals",
]

_BIGINT = BigInteger().with_variant(Integer(), "sqlite")  # epoch seconds


class Registry(Protocol):
    """What these functions use of ``broker.store.registry.Registry`` (which imports this
    module for its table, so it is not imported back)."""

    def session(self) -> AbstractContextManager[Session]: ...

    def change(self, apply: Callable[[Session], None], events: Sequence[AuditEvent]) -> None: ...


class WithdrawalRow(SQLModel, table=True):
    """A bulletin its originator withdrew; ``completed_at`` is None while copies are
    still to be removed and recipients told."""

    __tablename__ = "withdrawal"
    bulletin_id: str = Field(primary_key=True, max_length=36)
    originator: str = Field(max_length=32)
    notice: str = Field(max_length=4096)  # the signed withdrawal, canonical JSON
    withdrawn_at: int = Field(sa_type=_BIGINT)
    completed_at: int | None = Field(default=None, index=True, sa_type=_BIGINT)
    removed: str = ""  # comma-separated, sorted
    notified: str = ""  # comma-separated, sorted
    copies_kept: int = 0

    @property
    def removed_from(self) -> tuple[str, ...]:
        return tuple(a for a in self.removed.split(",") if a)

    @property
    def notified_to(self) -> tuple[str, ...]:
        return tuple(a for a in self.notified.split(",") if a)


def withdrawal(registry: Registry, bulletin_id: str) -> WithdrawalRow | None:
    """The withdrawal of ``bulletin_id``, if its originator withdrew it."""
    with registry.session() as s:
        return s.get(WithdrawalRow, bulletin_id)


def withdrawals(registry: Registry, bulletin_ids: Collection[str]) -> dict[str, WithdrawalRow]:
    """The withdrawals of those of ``bulletin_ids`` that were withdrawn, in one query."""
    if not bulletin_ids:
        return {}
    with registry.session() as s:
        q = select(WithdrawalRow).where(col(WithdrawalRow.bulletin_id).in_(list(bulletin_ids)))
        return {row.bulletin_id: row for row in s.exec(q)}


def unfinished_withdrawals(
    registry: Registry, *, before: int, limit: int = 100
) -> list[WithdrawalRow]:
    """Withdrawals recorded before ``before`` (epoch seconds) and not finished, oldest
    first: a relay died between recording one and finishing it."""
    with registry.session() as s:
        q = (
            select(WithdrawalRow)
            .where(col(WithdrawalRow.completed_at).is_(None))
            .where(WithdrawalRow.withdrawn_at < before)
            .order_by(col(WithdrawalRow.withdrawn_at))
            .limit(limit)
        )
        return list(s.exec(q))


def complete_withdrawal(
    registry: Registry,
    bulletin_id: str,
    *,
    at: int,
    removed: Sequence[str],
    notified: Sequence[str],
    copies_kept: int,
    event: AuditEvent,
) -> None:
    """Record that the withdrawal of ``bulletin_id`` is done, with its audit event, in one
    transaction. A second completion (two relays finishing the same one) changes nothing
    but what it says: the audit event's id is the same, and the store keeps the first.

    Raises:
        AuditStoreError: the database refused.
    """

    def apply(s: Session) -> None:
        row = s.get(WithdrawalRow, bulletin_id)
        if row is None or row.completed_at is not None:
            return
        row.completed_at = at
        row.removed = ",".join(sorted(removed))
        row.notified = ",".join(sorted(notified))
        row.copies_kept = copies_kept
        s.add(row)

    registry.change(apply, [event])
