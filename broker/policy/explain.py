"""Explaining policy decisions.

``Explanation`` answers "who would receive this, and why not the others?" for one
candidate agency. Pure: the engine in ``broker.policy.engine`` decides, this module only
combines and words the results. Simulation is ``broker.policy.simulate``.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.policy.model import Action, Decision

__all__ = ["Explanation", "explanation"]


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
    action: Action
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
