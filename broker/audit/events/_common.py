"""What every event constructor shares: the schema's string limit, the shape of data,
one-off ids."""

from __future__ import annotations

import uuid
from typing import Literal

from schemas.agency_status import Status
from schemas.audit import EventType

__all__ = ["MAX", "STATUS_EVENT", "KeyUse", "Refusal", "Value", "one_off"]

MAX = 200  # the schema's limit on actor, subject, reason and every string in data
KeyUse = Literal["signing", "encryption", "nats"]
Refusal = Literal["auth.refused", "request.rejected"]
Value = str | int | bool | None | tuple[str, ...]  # what an event's data may hold
STATUS_EVENT: dict[Status, EventType] = {
    "active": "agency.reinstated",
    "suspended": "agency.suspended",
    "revoked": "agency.revoked",
}


def one_off(prefix: str) -> str:
    """A fresh id for an event that happens once and has no natural key."""
    return f"{prefix}:{uuid.uuid4()}"
