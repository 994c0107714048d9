"""Simulating a candidate policy bundle: replay bulletins under the active and the
candidate engine and list every decision that would change.

Pure: the engines decide, this module compares. Left to others: choosing the bulletins to
replay (the last N stored headers), printing, and adopting a candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from broker.policy.model import Action, BulletinFacts, Decider, Decision

__all__ = ["Change", "simulate"]


@dataclass(frozen=True)
class Change:
    """One decision that differs between the active and the candidate bundle.

    ``old`` and ``new`` are the whole decisions (allowed, sorted deciding ``@id``s and
    their reasons, both versions, errors) under the active and the candidate engine.
    """

    bulletin_id: str
    agency: str
    action: Action
    old: Decision
    new: Decision


def simulate(
    active: Decider,
    candidate: Decider,
    cases: Sequence[tuple[BulletinFacts, Sequence[str]]],
    now: int,
    *,
    include_reason_changes: bool = False,
) -> list[Change]:
    """Replay bulletins under both engines; list every decision that would change.

    For each case, the originator's ``publish`` decision and each candidate agency's
    ``receive`` decision are compared. Build both engines over the same directory rows
    (each against its own bundle's schema) so that only the policies differ.

    Args:
        active: the engine in use.
        candidate: the engine built from the candidate bundle.
        cases: bulletins, each with the agencies to decide for.
        now: the decision time (epoch seconds) for every case.
        include_reason_changes: also report decisions whose outcome stays but whose
            deciding ``@id``s change (a renamed or an extra guard).

    Returns:
        The changes, in case order, the publish decision before the receive decisions.
    """
    changes: list[Change] = []
    for facts, agencies in cases:
        old = [active.decide_publish(facts, now), *active.decide_receive(facts, agencies, now)]
        new = [
            candidate.decide_publish(facts, now),
            *candidate.decide_receive(facts, agencies, now),
        ]
        for o, n in zip(old, new, strict=True):
            changed = o.allowed != n.allowed
            if changed or (include_reason_changes and o.policy_ids != n.policy_ids):
                changes.append(Change(facts.bulletin_id, o.agency, o.action, o, n))
    return changes
