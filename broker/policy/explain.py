"""Explaining policy decisions and simulating a candidate policy bundle.

``Explanation`` answers "who would receive this, and why not the others?" for one
candidate agency; ``simulate`` replays bulletins under the active and a candidate engine
and lists every decision that would change. Both are pure: the engines in
``broker.policy.engine`` do the deciding, this module only compares and words the results.

Left to others: choosing the bulletins to replay (the last N stored headers), printing,
and adopting a candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from broker.policy.engine import BulletinFacts, Decision, PolicyEngine

__all__ = ["Change", "Explanation", "explanation", "simulate"]


@dataclass(frozen=True)
class Explanation:
    """Why one agency may or may not take an action on one bulletin.

    Attributes:
        agency: the candidate agency.
        action: ``publish`` or ``receive``.
        allowed: the fail-closed decision, as ``PolicyEngine`` decides it.
        policy_ids: sorted ``@id``s of the deciding policies: the grants on an allow, the
            guards that blocked on a deny, none on a default deny or an error.
        reasons: the ``@reason`` of each of ``policy_ids``, in the same order.
        grants: sorted ``@id``s of the grants that matched, evaluated without the guards
            (so a blocked agency shows what would otherwise have let it in).
        grant_reasons: the ``@reason`` of each of ``grants``.
        errors: evaluation errors or "unknown agency"; any error is a deny.
        summary: one line, e.g. "DENY: blocked by guard.clearance (...)".
        policy_version: the bundle version that decided.
        directory_version: the directory version it decided over.
    """

    agency: str
    action: Literal["publish", "receive"]
    allowed: bool
    policy_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    grants: tuple[str, ...]
    grant_reasons: tuple[str, ...]
    errors: tuple[str, ...]
    summary: str
    policy_version: str
    directory_version: str


def explanation(decision: Decision, grants: Decision) -> Explanation:
    """Combine a full-set decision with the permit-only decision for the same agency."""
    matched = grants.policy_ids if not grants.errors else ()
    matched_reasons = grants.reasons if not grants.errors else ()
    return Explanation(
        agency=decision.agency,
        action=decision.action,
        allowed=decision.allowed,
        policy_ids=decision.policy_ids,
        reasons=decision.reasons,
        grants=matched,
        grant_reasons=matched_reasons,
        errors=decision.errors,
        summary=_summary(decision, matched),
        policy_version=decision.policy_version,
        directory_version=decision.directory_version,
    )


def _summary(decision: Decision, grants: tuple[str, ...]) -> str:
    described = ", ".join(
        f"{pid} ({reason})"
        for pid, reason in zip(decision.policy_ids, decision.reasons, strict=True)
    )
    if decision.allowed:
        return f"ALLOW: granted by {described}"
    if decision.errors:
        return f"DENY: {decision.errors[0]} (fail closed)"
    if not decision.policy_ids:
        return "DENY: no grant matched (default deny)"
    also = f"matching grants: {', '.join(grants)}" if grants else "no grant matched either"
    return f"DENY: blocked by {described}; {also}"


@dataclass(frozen=True)
class Change:
    """One decision that differs between the active and the candidate bundle.

    ``old`` and ``new`` are the whole decisions (allowed, sorted deciding ``@id``s and
    their reasons, both versions, errors) under the active and the candidate engine.
    """

    bulletin_id: str
    agency: str
    action: Literal["publish", "receive"]
    old: Decision
    new: Decision


def simulate(
    active: PolicyEngine,
    candidate: PolicyEngine,
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
