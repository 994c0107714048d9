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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, filterfalse

from broker.audit import events
from broker.audit.events import DecisionGroup
from broker.policy.model import DecidedAlike, Decision
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
    decided: Sequence[DecidedAlike],
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
        decided: the engine's receive decisions on the candidates, in classes decided
            alike (``PolicyEngine.receive_classes``): the work here is per class and
            per group, the agencies only copied and sorted.
        policy_version: the policy set the decisions were made under.
        directory_version: the directory they were made over.
        at: the decision time, epoch milliseconds.
    """
    wrapped = frozenset(addressed)
    # (outcome, policy ids, reasons) -> runs of agencies: the row keeps the reasons'
    # texts; the event, as before, the code and policies (the texts are in the policy set).
    grouped: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[Iterable[str]]] = {}
    for alike in decided:
        dec = alike.decision
        if not dec.allowed:
            key = (_deny_code(dec), dec.policy_ids, dec.reasons or _why_not(dec))
            grouped.setdefault(key, []).append(alike.agencies)
            continue
        routed = wrapped & alike.members
        if routed:
            grouped.setdefault(("routed", dec.policy_ids, dec.reasons), []).append(routed)
        if len(routed) < len(alike.members):
            rest = filterfalse(routed.__contains__, alike.agencies) if routed else alike.agencies
            grouped.setdefault(("unaddressed", dec.policy_ids, dec.reasons), []).append(rest)
    keys = sorted(grouped, key=lambda k: (_ORDER.get(k[0], 2), k))
    who = {k: sorted(chain.from_iterable(grouped[k])) for k in keys}
    deliver_to = tuple(sorted(chain.from_iterable(who[k] for k in keys if k[0] == "routed")))
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
                    "agencies": who[k],
                }
                for k in keys
            ],
            separators=(",", ":"),
        ),
    )
    audited: dict[tuple[str, tuple[str, ...]], list[list[str]]] = {}
    for k in keys:
        audited.setdefault(k[:2], []).append(who[k])
    trail = events.bulletin_decided(
        bulletin_id,
        originator=originator,
        policy_version=policy_version,
        directory_version=directory_version,
        groups=[
            DecisionGroup(o, p, tuple(a[0] if len(a) == 1 else sorted(chain.from_iterable(a))))
            for (o, p), a in audited.items()
        ],
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
