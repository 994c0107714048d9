"""What a reply and a request for information are made of, before they are sealed
(ADR 16). Pure: the SDK asks the broker and seals (``IstmoClient.reply``, ``rfi``).

A reply starts from the labels the broker recorded of the bulletin it answers: the same
labels, naming that bulletin's originator (so the policy's TLP:RED, AMBER+STRICT and
need-to-know guards let it through). Its labels may be made stricter, never weaker: the
relay's policy refuses that, saying which label.

A request for information goes to agencies (``gt-police``), to states or communities
(``SICA``), or both (``to``). Without a deadline it gets its precedence's default
(``schemas.rfi.DEFAULT_DUE_S``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from clients.results import ReplyContext
from schemas.errors import EnvelopeError
from schemas.labels import Labels, Precedence
from schemas.rfi import MAX_DUE_S, default_due

__all__ = ["check_due", "reply_labels", "rfi_due", "split_addressees"]

_AGENCY = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")
_JURISDICTION = re.compile(r"^[A-Z]{2,8}$")


def reply_labels(context: ReplyContext, replier: str) -> Labels:
    """The labels of a reply from ``replier``: those of the bulletin it answers, naming
    that bulletin's originator unless it is the replier."""
    labels = context.labels
    named = set(labels.named)
    if context.originator != replier:
        named.add(context.originator)
    return labels.model_copy(update={"named": tuple(sorted(named))})


def split_addressees(to: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``to`` as (agencies, states and communities), each in the order given.

    Raises:
        EnvelopeError: ``malformed``: an entry is neither an agency id nor a code.
    """
    agencies: list[str] = []
    codes: list[str] = []
    for item in to:
        if _AGENCY.fullmatch(item):
            agencies.append(item)
        elif _JURISDICTION.fullmatch(item):
            codes.append(item)
        else:
            raise EnvelopeError(
                f"{item[:40]!r} is neither an agency id (gt-police) nor a state or "
                "community code (GT, SICA)",
                code="malformed",
            )
    if not agencies and not codes:
        raise EnvelopeError("an RFI needs at least one addressee", code="malformed")
    return tuple(dict.fromkeys(agencies)), tuple(dict.fromkeys(codes))


def rfi_due(precedence: Precedence, *, now: int, due_at: int | None) -> int:
    """When answers are due: ``due_at`` checked, or the precedence's default.

    Raises:
        EnvelopeError: ``bad_due`` (see ``check_due``).
    """
    due = default_due(precedence, now) if due_at is None else due_at
    check_due(due, now=now)
    return due


def check_due(due_at: int, *, now: int) -> None:
    """A deadline after ``now`` and at most ``MAX_DUE_S`` away.

    Raises:
        EnvelopeError: ``bad_due``, saying what to give instead.
    """
    if due_at <= now:
        raise EnvelopeError(
            "the deadline has passed already: give a time to come, like --due 2h",
            code="bad_due",
        )
    if due_at - now > MAX_DUE_S:
        raise EnvelopeError(
            f"the deadline is more than {MAX_DUE_S // 86400} days away: give a nearer one",
            code="bad_due",
        )
