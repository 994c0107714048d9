"""Requests for information (ADR 16): the deadlines and states both sides agree on.

An RFI is a bulletin whose signed header carries ``rfi_due``: by when its originator
wants answers. Answers are replies to it. The broker keeps, as metadata only, whom it
asked, when answers are due, who acknowledged it (a signed receipt) and who answered (a
signed reply), and says the RFI is ``overdue`` once the due time passed with no answer.

Left to others: the header field (``schemas.envelope``), what the broker records and when
it raises the alarm (``broker.store.rfis``, ``broker.relay.rfis``), and the wire replies
(``schemas.agency``).
"""

from __future__ import annotations

from typing import Literal, get_args

from schemas.labels import Precedence

__all__ = [
    "DEFAULT_DUE_S",
    "MAX_DUE_S",
    "RFI_STATES",
    "RfiState",
    "default_due",
    "rfi_state",
]

# How long the addressees have when the originator names no deadline, by precedence.
DEFAULT_DUE_S: dict[Precedence, int] = {
    Precedence.FLASH: 10 * 60,
    Precedence.IMMEDIATE: 30 * 60,
    Precedence.PRIORITY: 3 * 3600,
    Precedence.ROUTINE: 12 * 3600,
}
# The furthest deadline an RFI may set: 30 days after it was created.
MAX_DUE_S = 30 * 86400

RfiState = Literal["open", "acknowledged", "answered", "closed", "overdue"]
RFI_STATES: tuple[str, ...] = get_args(RfiState)


def default_due(precedence: Precedence, created_at: int) -> int:
    """The deadline of an RFI created at ``created_at`` (epoch seconds) that names none."""
    return created_at + DEFAULT_DUE_S[Precedence(precedence)]


def rfi_state(
    *, due_at: int, now: int, acknowledged: bool, answered: bool, closed: bool
) -> RfiState:
    """Where an RFI stands at ``now``: closed by its originator, else answered (a reply
    from an addressee), else overdue once ``due_at`` passed, else acknowledged (a receipt
    from an addressee), else open."""
    if closed:
        return "closed"
    if answered:
        return "answered"
    if now >= due_at:
        return "overdue"
    return "acknowledged" if acknowledged else "open"
