"""Requests to forward a bulletin, and the originator's answers (ADR 20, migration 0009).

``forward_request`` keeps one row per (bulletin, forwarder, new recipient): why the
forwarder asks (its words, shown to the originator), when, and once the originator
answered, its signed grant or its refusal. A forward itself is a bulletin whose
``forward_of`` names the bulletin it passes on (``BulletinRow``).

Not an audit table: the state is filled in afterwards (the audit log has
``forward.requested``, ``forward.granted`` and ``forward.refused``).

Left to others: the checks (``broker.relay.forwards``), the audit events
(``broker.audit.events``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from sqlalchemy import BigInteger, Integer
from sqlmodel import Field, Session, SQLModel, col, select

from schemas.audit import AuditEvent

__all__ = [
    "ForwardRequestRow",
    "decide_forward_request",
    "forward_request",
    "forward_requests_to",
    "record_forward_request",
]

_BIGINT = BigInteger().with_variant(Integer(), "sqlite")  # epoch seconds


class Registry(Protocol):
    """What these functions use of ``broker.store.registry.Registry``."""

    def session(self) -> AbstractContextManager[Session]: ...

    def change(self, apply: Callable[[Session], None], events: Sequence[AuditEvent]) -> None: ...


class ForwardRequestRow(SQLModel, table=True):
    """A recipient's request to pass one bulletin on to one more agency.

    ``state`` is ``pending``, ``granted`` (``signed_grant`` holds the originator's signed grant,
    canonical JSON) or ``refused`` (``refusal`` holds the originator's words)."""

    __tablename__ = "forward_request"
    id: str = Field(primary_key=True, max_length=20)
    bulletin_id: str = Field(max_length=36)
    originator: str = Field(index=True, max_length=32)
    forwarder: str = Field(max_length=32)
    recipient: str = Field(max_length=32)
    reason: str | None = Field(default=None, max_length=280)
    requested_at: int = Field(sa_type=_BIGINT)
    state: str = Field(max_length=8)
    decided_at: int | None = Field(default=None, sa_type=_BIGINT)
    signed_grant: str | None = Field(default=None, max_length=4096)
    refusal: str | None = Field(default=None, max_length=280)


def forward_request(registry: Registry, request_id: str) -> ForwardRequestRow | None:
    """The request ``request_id``, if there is one."""
    with registry.session() as s:
        return s.get(ForwardRequestRow, request_id)


def forward_requests_to(
    registry: Registry, originator: str, *, pending_only: bool, limit: int
) -> list[ForwardRequestRow]:
    """The newest ``limit`` requests to forward ``originator``'s bulletins, oldest first."""
    with registry.session() as s:
        q = select(ForwardRequestRow).where(ForwardRequestRow.originator == originator)
        if pending_only:
            q = q.where(ForwardRequestRow.state == "pending")
        q = q.order_by(col(ForwardRequestRow.requested_at).desc(), col(ForwardRequestRow.id))
        return list(reversed(list(s.exec(q.limit(limit)))))


def record_forward_request(
    registry: Registry, row: ForwardRequestRow, event: AuditEvent
) -> ForwardRequestRow:
    """Insert ``row`` with its audit event in one transaction, unless a request with its
    id is there already. Returns the request as recorded (the first, if asked again).

    Raises:
        AuditStoreError: the database refused.
    """

    def apply(s: Session) -> None:
        if s.get(ForwardRequestRow, row.id) is None:
            s.add(ForwardRequestRow.model_validate(row.model_dump()))

    known = forward_request(registry, row.id)
    if known is not None:
        return known
    registry.change(apply, [event])
    return forward_request(registry, row.id) or row


def decide_forward_request(
    registry: Registry,
    request_id: str,
    *,
    at: int,
    grant: str | None,
    refusal: str | None,
    event: AuditEvent,
) -> None:
    """Record the originator's answer to a pending request, with its audit event, in one
    transaction. An answered request keeps its first answer.

    Raises:
        AuditStoreError: the database refused.
    """

    def apply(s: Session) -> None:
        row = s.get(ForwardRequestRow, request_id)
        if row is None or row.state != "pending":
            return
        row.state = "granted" if grant is not None else "refused"
        row.decided_at = at
        row.signed_grant = grant
        row.refusal = refusal
        s.add(row)

    registry.change(apply, [event])
