"""Bulletins, receipts and agencies' requests: what the relay decides and records."""

from __future__ import annotations

from collections.abc import Sequence

from broker.audit.events._common import (
    MAX,
    one_off,
)
from schemas.audit import AuditEvent
from schemas.labels import Labels

__all__ = [
    "bulletin_accepted",
    "bulletin_denied",
    "bulletin_received",
    "bulletin_rejected",
    "bulletin_routed",
    "receipt_rejected",
    "request_rejected",
]


# ---------------------------------------------------------------------------- bulletins
def bulletin_accepted(
    bulletin_id: str,
    *,
    originator: str,
    labels: Labels,
    envelope_digest: str,
    recipients: Sequence[str],
    policy_version: str,
    directory_version: str,
    policy_ids: Sequence[str],
    at: int,
) -> AuditEvent:
    """The relay accepted a bulletin: its labels, digest, signed recipients and the
    publish decision's versions and policies."""
    return AuditEvent(
        event_id=f"{bulletin_id}:accepted",
        type="bulletin.accepted",
        time=at,
        actor=originator,
        subject=bulletin_id,
        bulletin_id=bulletin_id,
        data={
            "topic": labels.topic,
            "classification": labels.classification.value,
            "tlp": labels.tlp.value,
            "rel_to": labels.rel_to,
            "envelope_digest": envelope_digest,
            "recipients": tuple(recipients),
            "policy_version": policy_version,
            "directory_version": directory_version,
            "policy_ids": tuple(policy_ids),
        },
    )


def bulletin_routed(
    bulletin_id: str,
    recipient: str,
    *,
    originator: str,
    policy_version: str,
    directory_version: str,
    policy_ids: Sequence[str],
    at: int,
) -> AuditEvent:
    """The policy let ``recipient`` receive the bulletin, and it was addressed to it."""
    return AuditEvent(
        event_id=f"{bulletin_id}:routed:{recipient}",
        type="bulletin.routed",
        time=at,
        actor="relay",
        subject=recipient,
        bulletin_id=bulletin_id,
        data={
            "originator": originator,
            "policy_version": policy_version,
            "directory_version": directory_version,
            "policy_ids": tuple(policy_ids),
        },
    )


def bulletin_denied(
    bulletin_id: str,
    agency: str,
    *,
    reason: str,
    originator: str,
    policy_version: str,
    directory_version: str,
    policy_ids: Sequence[str],
    at: int,
) -> AuditEvent:
    """The policy refused ``agency`` the bulletin; ``reason`` is ``policy_deny``,
    ``default_deny`` or ``policy_error``."""
    return AuditEvent(
        event_id=f"{bulletin_id}:denied:{agency}",
        type="bulletin.denied",
        time=at,
        actor="relay",
        subject=agency,
        bulletin_id=bulletin_id,
        reason=reason,
        data={
            "originator": originator,
            "policy_version": policy_version,
            "directory_version": directory_version,
            "policy_ids": tuple(policy_ids),
        },
    )


def bulletin_rejected(
    ingest_seq: int,
    *,
    sender: str,
    bulletin_id: str | None,
    reason: str,
    message: str,
    size: int,
    at: int,
) -> AuditEvent:
    """The relay refused an ingest message (``reason`` is the refusal code). Filed under
    the stream sequence: a forged bulletin id never touches another agency's bulletin."""
    return AuditEvent(
        event_id=f"ingest:{ingest_seq}:rejected",
        type="bulletin.rejected",
        time=at,
        actor=sender,
        subject=bulletin_id or f"ingest:{ingest_seq}",
        bulletin_id=bulletin_id,
        reason=reason,
        data={"message": message[:MAX], "ingest_seq": ingest_seq, "size": size},
    )


def bulletin_received(
    bulletin_id: str, recipient: str, *, received_at: int, envelope_digest: str, at: int
) -> AuditEvent:
    """``recipient``'s signed receipt was verified."""
    return AuditEvent(
        event_id=f"{bulletin_id}:received:{recipient}",
        type="bulletin.received",
        time=at,
        actor=recipient,
        subject=bulletin_id,
        bulletin_id=bulletin_id,
        data={"received_at": received_at, "envelope_digest": envelope_digest},
    )


def receipt_rejected(
    receipt_seq: int, *, sender: str, reason: str, message: str, at: int
) -> AuditEvent:
    """The relay refused a receipt (stream sequence ``receipt_seq``)."""
    return AuditEvent(
        event_id=f"receipt:{receipt_seq}:rejected",
        type="receipt.rejected",
        time=at,
        actor=sender,
        subject=f"receipt:{receipt_seq}",
        reason=reason,
        data={"message": message[:MAX]},
    )


def request_rejected(caller: str, op: str, *, reason: str, message: str, at: int) -> AuditEvent:
    """An agency's request over NATS (``istmo.api.<caller>.<op>``) was refused."""
    return AuditEvent(
        event_id=one_off("request"),
        type="request.rejected",
        time=at,
        actor=caller,
        subject=f"api.{op}",
        reason=reason,
        data={"message": message[:MAX]},
    )
