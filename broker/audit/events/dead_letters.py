"""What could not be delivered or processed, redriven, republished or lost."""

from __future__ import annotations

from broker.audit.events._common import (
    MAX,
)
from schemas.audit import AuditEvent, EventType

__all__ = [
    "delivery_dead_lettered",
    "delivery_redriven",
    "delivery_republished",
    "delivery_unrecoverable",
    "ingest_dead_lettered",
    "ingest_redriven",
]


# ---------------------------------------------------------------------------- dead letters
def delivery_dead_lettered(
    deliver_seq: int,
    recipient: str,
    *,
    bulletin_id: str | None,
    reason: str,
    deliveries: int,
    dead_seq: int | None,
    at: int,
) -> AuditEvent:
    """A delivery ran out of attempts; ``dead_seq`` is its copy in the dead-letter stream
    (None when the message was gone before it could be copied)."""
    data: dict[str, str | int | None] = {
        "recipient": recipient,
        "deliveries": deliveries,
        "deliver_seq": deliver_seq,
    }
    if dead_seq is not None:
        data["dead_seq"] = dead_seq
    return AuditEvent(
        event_id=f"dead:deliver:{deliver_seq}",
        type="delivery.dead_lettered",
        time=at,
        actor="relay",
        subject=recipient,
        bulletin_id=bulletin_id,
        reason=reason,
        data=dict(data),
    )


def ingest_dead_lettered(
    ingest_seq: int,
    sender: str,
    *,
    bulletin_id: str | None,
    deliveries: int,
    dead_seq: int,
    at: int,
) -> AuditEvent:
    """No relay could process an ingest message; ``dead_seq`` is its copy."""
    return AuditEvent(
        event_id=f"dead:ingest:{ingest_seq}",
        type="ingest.dead_lettered",
        time=at,
        actor="relay",
        subject=sender,
        bulletin_id=bulletin_id,
        reason="max_attempts",
        data={"ingest_seq": ingest_seq, "deliveries": deliveries, "dead_seq": dead_seq},
    )


def _redriven(
    type_: EventType,
    dead_seq: int | None,
    agency: str,
    *,
    bulletin_id: str | None,
    stream: str,
    new_seq: int,
    actor: str,
    at: int,
) -> AuditEvent:
    return AuditEvent(
        event_id=f"redrive:{dead_seq}",
        type=type_,
        time=at,
        actor=actor[:MAX],
        subject=agency,
        bulletin_id=bulletin_id,
        data={"dead_seq": dead_seq, "stream": stream, "new_seq": new_seq},
    )


def delivery_redriven(
    dead_seq: int | None,
    agency: str,
    *,
    bulletin_id: str | None,
    stream: str,
    new_seq: int,
    actor: str,
    at: int,
) -> AuditEvent:
    """An operator re-delivered dead letter ``dead_seq`` to its recipient ``agency`` (now
    ``new_seq`` of ``stream``)."""
    return _redriven(
        "delivery.redriven",
        dead_seq,
        agency,
        bulletin_id=bulletin_id,
        stream=stream,
        new_seq=new_seq,
        actor=actor,
        at=at,
    )


def ingest_redriven(
    dead_seq: int | None,
    agency: str,
    *,
    bulletin_id: str | None,
    stream: str,
    new_seq: int,
    actor: str,
    at: int,
) -> AuditEvent:
    """An operator put dead ingest letter ``dead_seq`` of its publisher ``agency`` back on
    ingest (now ``new_seq`` of ``stream``)."""
    return _redriven(
        "ingest.redriven",
        dead_seq,
        agency,
        bulletin_id=bulletin_id,
        stream=stream,
        new_seq=new_seq,
        actor=actor,
        at=at,
    )


def delivery_republished(
    bulletin_id: str,
    recipient: str,
    *,
    deliver_seq: int,
    same_msg_id: bool,
    actor: str,
    at: int,
) -> AuditEvent:
    """Reconciliation found a routed delivery missing from the stream and published it
    again from the archive."""
    return AuditEvent(
        event_id=f"republished:{bulletin_id}:{recipient}:{deliver_seq}",
        type="delivery.republished",
        time=at,
        actor=actor[:MAX],
        subject=recipient,
        bulletin_id=bulletin_id,
        reason="missing_from_stream",
        data={"deliver_seq": deliver_seq, "same_msg_id": same_msg_id},
    )


def delivery_unrecoverable(bulletin_id: str, recipient: str, *, actor: str, at: int) -> AuditEvent:
    """Reconciliation found a routed delivery missing and no copy to publish again."""
    return AuditEvent(
        event_id=f"unrecoverable:{bulletin_id}:{recipient}",
        type="delivery.unrecoverable",
        time=at,
        actor=actor[:MAX],
        subject=recipient,
        bulletin_id=bulletin_id,
        reason="no_copy",
        data={},
    )
