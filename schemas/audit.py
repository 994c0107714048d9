"""Audit events: metadata of every decision, never a title, a body, a key or a token."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["EVENT_TYPES", "AuditEvent", "EventType", "agency_set_digest"]

EventType = Literal[
    "bulletin.accepted",
    "bulletin.rejected",
    "bulletin.denied",
    "bulletin.routed",
    "bulletin.decided",
    "agencies.listed",
    "bulletin.received",
    "bulletin.withdrawn",
    "delivery.withdrawn",
    "rfi.overdue",
    "rfi.closed",
    "forward.requested",
    "forward.granted",
    "forward.refused",
    "bulletin.forwarded",
    "receipt.rejected",
    "request.rejected",
    "agency.enrolled",
    "key.registered",
    "subscription.added",
    "subscription.removed",
    "policy.adopted",
    "policy.rejected",
    "agency.suspended",
    "agency.reinstated",
    "agency.revoked",
    "key.revoked",
    "key.rotated",
    "auth.refused",
    "token.issued",
    "audit.queried",
    "delivery.dead_lettered",
    "delivery.redriven",
    "delivery.republished",
    "delivery.unrecoverable",
    "ingest.dead_lettered",
    "ingest.redriven",
    "console.login",
    "console.logout",
    "group.defined",
    "group.rotated",
    "desk.summary",
    "federation.passed",
    "federation.blocked",
    "federation.arrived",
    "federation.mismatch",
    "federation.refused",
    "jurisdiction.added",
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

Short = Annotated[str, StringConstraints(max_length=200)]
DataValue = str | int | bool | None | tuple[Short, ...]


class AuditEvent(BaseModel):
    """One audit event.

    Attributes:
        event_id: stable id, so a retried write is harmless (``<bulletin>:<type>:<agency>``
            style ids, or a random one for one-off events).
        type: what happened.
        time: when the broker recorded it, epoch milliseconds.
        actor: who acted: an agency id, ``relay`` or ``system``.
        subject: what it is about: a bulletin id, an agency id, a policy version.
        bulletin_id: the bulletin concerned, if any.
        reason: a short reason code for rejections and denials.
        data: further metadata (labels, policy version and ids, digests, counts).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = 1
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=160)]
    type: EventType
    time: Annotated[int, Field(ge=0, le=2**50)]
    actor: Short
    subject: Short
    bulletin_id: Short | None = None
    reason: Short | None = None
    data: dict[Short, DataValue] = Field(default_factory=dict, max_length=32)


def agency_set_digest(agencies: Sequence[str]) -> str:
    """The name of a set of agencies that ``bulletin.decided`` events and decision
    records refer to, and that an ``agencies.listed`` event lists (ADR 36): SHA-256, in
    lower-case hex, of its sorted ids as a JSON array without spaces (agency ids are
    ASCII, so this is also the array's canonical JSON)."""
    text = json.dumps(sorted(agencies), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
