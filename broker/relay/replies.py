"""Replies and requests for information, as the relay checks them (ADR 16). Pure: the
caller reads what the registry recorded of the bulletin a reply answers (``Answered``).

A reply is a bulletin whose signed header names the bulletin it answers
(``in_reply_to``) and its thread. The broker never reads either bulletin, so everything
here is decided from the signed headers it recorded: who originated the bulletin answered,
its labels and to whom it was routed. Each check fails closed:

  1. the bulletin answered was accepted, and the replier is its originator or was routed
     it; otherwise ``unknown_in_reply_to``, the same for an id that does not exist and one
     the replier never received, so a reply is no way to learn which ids exist;
  2. the reply's thread is the thread of the bulletin answered (its own id if it started
     one), otherwise ``wrong_thread``;
  3. its labels are not weaker, and it reaches only its audience: both are the policy's
     (``guard.reply-*`` in ``policies/base.cedar``), over the ``ReplyFacts`` made here.

A request for information (``rfi_due`` in the header) is checked once the policy has
decided its recipients (``check_rfi``): its deadline is at most ``MAX_DUE_S`` away, every
agency it names was allowed by the policy, and it reached someone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from broker.policy.model import Decision, ReplyFacts
from schemas.envelope import Header
from schemas.errors import EnvelopeError
from schemas.labels import Labels
from schemas.rfi import MAX_DUE_S

__all__ = ["Answered", "audience_of", "check_reply", "check_rfi", "releasable_within"]


@dataclass(frozen=True)
class Answered:
    """What the relay recorded of a bulletin that a reply answers.

    Attributes:
        bulletin_id: its id.
        originator: its originator.
        labels: its labels.
        routed: the agencies it was delivered to.
        thread: its thread: the id of the thread's first bulletin (its own, if it is one).
        reply_all: its originator lets replies reach every recipient.
        releasable_within: its ``rel_to`` and every state belonging to one of them
            (``releasable_within``), sorted.
        rfi_due: when answers are due, if it is a request for information.
    """

    bulletin_id: str
    originator: str
    labels: Labels
    routed: frozenset[str]
    thread: str
    reply_all: bool
    releasable_within: tuple[str, ...]
    rfi_due: int | None = None


def releasable_within(
    rel_to: Iterable[str], parents: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """``rel_to`` and every jurisdiction that belongs to one of them at any depth (a state
    of a community on it, a state of a community inside one), sorted: a reply releasable
    to any of these is releasable no wider than ``rel_to``."""
    within = set(rel_to)
    changed = True
    while changed:
        changed = False
        for code, ups in parents.items():
            if code not in within and within.intersection(ups):
                within.add(code)
                changed = True
    return tuple(sorted(within))


def audience_of(answered: Answered, replier: str) -> tuple[str, ...]:
    """Who a reply from ``replier`` may reach, sorted: the originator of the bulletin it
    answers, and that bulletin's other recipients if its originator allowed reply-all or
    is the replier (an originator following up its own bulletin); never the replier."""
    everyone = answered.reply_all or replier == answered.originator
    reach = {answered.originator} | (set(answered.routed) if everyone else set())
    return tuple(sorted(reach - {replier}))


def check_reply(header: Header, answered: Answered | None, sender: str) -> ReplyFacts | None:
    """Steps 1-2 on a bulletin's signed header; what the policy needs to decide step 3.

    Args:
        header: the bulletin's signed header.
        answered: what the registry holds of ``header.in_reply_to`` (None: nothing).
        sender: the publishing agency (its originator, by the ingest checks).

    Returns:
        None for a bulletin that answers nothing; for a reply, its ``ReplyFacts``.

    Raises:
        EnvelopeError: ``unknown_in_reply_to`` or ``wrong_thread``.
    """
    if header.in_reply_to is None:
        return None
    # 1. Answered, and received (or sent) by the replier: one refusal for both.
    if answered is None or sender not in answered.routed | {answered.originator}:
        raise EnvelopeError(
            "answers no bulletin you received: reply to the id of a bulletin `istmo "
            "receive` handed you",
            code="unknown_in_reply_to",
        )
    # 2. The thread it joins is that bulletin's.
    if header.thread != answered.thread:
        raise EnvelopeError(
            "names another thread than the bulletin it answers: use the thread that "
            "`istmo reply` (or reply_context) gives",
            code="wrong_thread",
        )
    return ReplyFacts(
        labels=answered.labels,
        releasable_within=answered.releasable_within,
        audience=audience_of(answered, sender),
    )


def check_rfi(header: Header, decisions: Sequence[Decision], routed: Sequence[str]) -> None:
    """A request for information, once its recipients are decided.

    Raises:
        EnvelopeError: ``bad_due`` (more than ``MAX_DUE_S`` ahead), ``rfi_addressee_denied``
            (naming the agency and the policies that refused it), ``rfi_no_addressee``.
    """
    if header.rfi_due is None:
        return
    if header.rfi_due - header.created_at > MAX_DUE_S:
        raise EnvelopeError(
            f"answers are due {header.rfi_due - header.created_at} s after it was asked, "
            f"more than the {MAX_DUE_S // 86400} days allowed: give a nearer --due",
            code="bad_due",
        )
    refused = {d.agency: d for d in decisions if not d.allowed}
    for agency in header.labels.named:
        d = refused.get(agency)
        if d is not None:
            why = "; ".join(
                f"{pid}: {reason}" for pid, reason in zip(d.policy_ids, d.reasons, strict=False)
            )
            raise EnvelopeError(
                f"the policy does not let {agency} receive this request "
                f"({why or 'no policy grants it'}): leave it out of --to, or ask with "
                "labels it may receive (`istmo preview` says who may)",
                code="rfi_addressee_denied",
            )
    if not routed:
        raise EnvelopeError(
            "this request reached no agency: ask agencies the policy lets receive it "
            "(`istmo preview` says who may)",
            code="rfi_no_addressee",
        )
