"""Community groups (ADR 18): a group defined, an epoch of it made current."""

from __future__ import annotations

from broker.audit.events._common import MAX
from schemas.audit import AuditEvent

__all__ = ["group_defined", "group_rotated"]


def group_defined(
    group: str,
    *,
    manager: str,
    jurisdiction: str | None,
    topic: str | None,
    min_clearance: int,
    actor: str,
    at: int,
) -> AuditEvent:
    """An administrator defined (or redefined) a community group and named its manager."""
    return AuditEvent(
        event_id=f"group-defined:{group}:{at}",
        type="group.defined",
        time=at,
        actor=actor[:MAX],
        subject=group,
        data={
            "manager": manager,
            "jurisdiction": jurisdiction,
            "topic": topic,
            "min_clearance": min_clearance,
        },
    )


def group_rotated(
    group: str, *, epoch: int, manager: str, members: int, kid: str, at: int
) -> AuditEvent:
    """Every member's wrap of a new epoch is in: bulletins may use it from now on, and no
    earlier epoch."""
    return AuditEvent(
        event_id=f"group-rotated:{group}:{epoch}",
        type="group.rotated",
        time=at,
        actor=manager,
        subject=group,
        data={"epoch": epoch, "members": members, "kid": kid},
    )
