"""The policy's receive decisions on one bulletin, as the relay records them.

Pure. For each candidate the policy engine answered, this module says whether the
bulletin goes to it (allowed, and addressed by the originator's wraps), and what is
written down (ADR 8): one ``DecisionRecordRow`` and one ``bulletin.decided`` event per
bulletin (more parts only for a broadcast to thousands), not a row and an event per
candidate. Both group the candidates by outcome (``routed``, ``unaddressed``, or the
denial code) and deciding policies, so a record grows with the number of candidates by
one agency id each. A denial always carries a code and a reason: the deciding policies'
own, or, when no policy granted anything, that this is a default deny.

Left to others: asking the engine (``broker.relay.plan``), the policies themselves
(``broker.policy``), and committing rows and events (``broker.relay.worker``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from broker.audit import events
from broker.audit.events import DecisionGroup
from broker.policy.model import Decision
from broker.store.registry import DecisionRecordRow, Insert, row_values
from schemas.audit import AuditEvent

__all__ = ["DEFAULT_DENY", "Denial", "Routing", "denial_of", "route"]

DEFAULT_DENY = "no policy grants it (default deny): not releasable to it, and not named"
# Groups in this order: who got it, who was allowed but not addressed, then the denials.
_ORDER = {"routed": 0, "unaddressed": 1}


@dataclass(frozen=True)
class Denial:
    """A candidate the policy refused the bulletin.

    Attributes:
        agency: the candidate.
        code: ``policy_deny`` (a policy forbade it), ``default_deny`` (none granted it)
            or ``policy_error`` (the policy could not be evaluated: fail closed).
        policy_ids: the deciding policies (none on a default deny).
        reasons: their reasons, or what the relay says instead.
    """

    agency: str
    code: str
    policy_ids: tuple[str, ...]
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Routing:
    """Who gets a bulletin, its decision record and the ``bulletin.decided`` event(s)."""

    deliver_to: tuple[str, ...]
    record: Insert  # a DecisionRecordRow's values
    events: tuple[AuditEvent, ...]


def denial_of(dec: Decision) -> Denial:
    """The denial ``dec`` is (call it for a refused candidate only)."""
    return Denial(dec.agency, _deny_code(dec), dec.policy_ids, dec.reasons or _why_not(dec))


def route(
    bulletin_id: str,
    *,
    originator: str,
    addressed: Sequence[str],
    decisions: Sequence[Decision],
    policy_version: str,
    directory_version: str,
    at: int,
) -> Routing:
    """Deliver to every candidate the policy allowed and the originator addressed; record
    every decision, grouped, in one row and one event (see the module docstring).

    Args:
        bulletin_id: the bulletin.
        originator: its originator.
        addressed: its signed recipients.
        decisions: the engine's receive decision on each candidate.
        policy_version: the policy set the decisions were made under.
        directory_version: the directory they were made over.
        at: the decision time, epoch milliseconds.
    """
    wrapped = set(addressed)
    # (outcome, policy ids, reasons) -> agencies: the row keeps the reasons' texts; the
    # event, as before, the code and policies (the texts are in the policy set).
    grouped: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for dec in decisions:
        if dec.allowed:
            outcome = "routed" if dec.agency in wrapped else "unaddressed"
            key = (outcome, dec.policy_ids, dec.reasons)
        else:
            key = (_deny_code(dec), dec.policy_ids, dec.reasons or _why_not(dec))
        grouped.setdefault(key, []).append(dec.agency)
    keys = sorted(grouped, key=lambda k: (_ORDER.get(k[0], 2), k))
    deliver_to = tuple(sorted(a for k in keys if k[0] == "routed" for a in grouped[k]))
    record = row_values(
        DecisionRecordRow,
        bulletin_id=bulletin_id,
        routed=",".join(deliver_to),
        groups=json.dumps(
            [
                {
                    "outcome": k[0],
                    "policy_ids": list(k[1]),
                    "reasons": list(k[2]),
                    "agencies": sorted(grouped[k]),
                }
                for k in keys
            ],
            separators=(",", ":"),
        ),
    )
    audited: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for k in keys:
        audited.setdefault(k[:2], []).extend(grouped[k])
    trail = events.bulletin_decided(
        bulletin_id,
        originator=originator,
        policy_version=policy_version,
        directory_version=directory_version,
        groups=[DecisionGroup(o, p, tuple(sorted(a))) for (o, p), a in audited.items()],
        at=at,
    )
    return Routing(deliver_to, record, trail)


def _deny_code(dec: Decision) -> str:
    if dec.errors:
        return "policy_error"
    return "policy_deny" if dec.policy_ids else "default_deny"


def _why_not(dec: Decision) -> tuple[str, ...]:
    """A denial no policy forbade is a default deny: say so rather than nothing."""
    if dec.allowed:
        return ()
    if dec.errors:
        return ("the policy could not be evaluated (fail closed): " + dec.errors[0],)
    return (DEFAULT_DENY,)
