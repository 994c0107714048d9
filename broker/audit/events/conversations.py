"""Requests for information (ADR 16): the events of an RFI's life that nothing else
records. Its creation is its ``bulletin.accepted`` (with ``rfi_due``), an acknowledgement
an addressee's ``bulletin.received``, an answer the reply's ``bulletin.accepted`` (with
``in_reply_to``)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.audit import AuditEvent

__all__ = ["rfi_closed", "rfi_overdue"]


def rfi_overdue(
    rfi_id: str, *, asker: str, due_at: int, addressees: Sequence[str], at: int
) -> AuditEvent:
    """An RFI's due time passed with no answer from any addressee: the broker raised its
    alarm, once per RFI (the id is the RFI's)."""
    return AuditEvent(
        event_id=f"{rfi_id}:rfi.overdue",
        type="rfi.overdue",
        time=at,
        actor="relay",
        subject=rfi_id,
        bulletin_id=rfi_id,
        data={"asker": asker, "due_at": due_at, "addressees": tuple(addressees)},
    )


def rfi_closed(rfi_id: str, *, asker: str, answered_by: Sequence[str], at: int) -> AuditEvent:
    """Its asker closed an RFI; who had answered by then."""
    return AuditEvent(
        event_id=f"{rfi_id}:rfi.closed",
        type="rfi.closed",
        time=at,
        actor=asker,
        subject=rfi_id,
        bulletin_id=rfi_id,
        data={"answered_by": tuple(answered_by)},
    )
