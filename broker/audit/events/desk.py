"""A desk's access-log summary (ADR 31): every field the agency signed, so the event shows
what it said and an inspector can later check the desk's log against ``head_mac``."""

from __future__ import annotations

from schemas.audit import AuditEvent
from schemas.desk_summary import DeskSummary

__all__ = ["desk_summary", "desk_summary_subject"]


def desk_summary_subject(agency: str, log: str) -> str:
    """What a summary of ``agency``'s desk log ``log`` is about: ``desk:<agency>:<log>``."""
    return f"desk:{agency}:{log}"


def desk_summary(s: DeskSummary, *, at: int) -> AuditEvent:
    """The agency's signed summary ``s`` was recorded; its id is the log's and the
    range's first entry, so only one summary can follow another."""
    return AuditEvent(
        event_id=f"desk.summary:{s.agency}:{s.log}:{s.first_seq}",
        type="desk.summary",
        time=at,
        actor=s.agency,
        subject=desk_summary_subject(s.agency, s.log),
        data={
            "log": s.log,
            "first_seq": s.first_seq,
            "last_seq": s.last_seq,
            "entries": s.last_seq - s.first_seq + 1,
            "prev_mac": s.prev_mac,
            "head_mac": s.head_mac,
            "from_at": s.from_at,
            "to_at": s.to_at,
            "counts": tuple(f"{c.analyst}:{c.action}={c.n}" for c in s.counts),
            "issued_at": s.issued_at,
            "kid": s.kid,
            "sig": s.sig,
        },
    )
