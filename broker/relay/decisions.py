"""The policy's receive decisions on one bulletin, as the relay records them.

Pure. For each candidate the policy engine answered, this module says whether the
bulletin goes to it (allowed, and addressed by the originator's wraps), and what is
written down: a ``DecisionRow`` per candidate and a ``bulletin.routed`` or
``bulletin.denied`` event. A denial always carries a code and a reason: the deciding
policies' own, or, when no policy granted anything, that this is a default deny.

Left to others: asking the engine (``broker.relay.plan``), the policies themselves
(``broker.policy``), and committing rows and events (``broker.relay.worker``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from broker.audit import events
from broker.policy.model import Decision
from schemas.audit import AuditEvent

__all__ = ["DEFAULT_DENY", "Denial", "Routing", "decision_row", "denial_of", "route"]

DEFAULT_DENY = "no policy grants it (default deny): not releasable to it, and not named"


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
    """Who gets a bulletin, and the routed and denied events that say so."""

    deliver_to: tuple[str, ...]
    events: tuple[AuditEvent, ...]


def denial_of(dec: Decision) -> Denial:
    """The denial ``dec`` is (call it for a refused candidate only)."""
    return Denial(dec.agency, _deny_code(dec), dec.policy_ids, dec.reasons or _why_not(dec))


def decision_row(bulletin_id: str, dec: Decision) -> dict[str, object]:
    """A ``DecisionRow``'s columns as plain values (a fan-out makes dozens per bulletin;
    the registry inserts them in bulk)."""
    return {
        "bulletin_id": bulletin_id,
        "agency": dec.agency,
        "allowed": dec.allowed,
        "policy_ids": ",".join(dec.policy_ids),
        "reasons": json.dumps(list(dec.reasons or _why_not(dec))),
    }


def route(
    bulletin_id: str,
    *,
    originator: str,
    addressed: Sequence[str],
    decisions: Sequence[Decision],
    at: int,
) -> Routing:
    """Deliver to every candidate the policy allowed and the originator addressed; an
    event for each of those and for each refused candidate (an allowed candidate that
    was not addressed gets neither)."""
    deliver_to: list[str] = []
    trail: list[AuditEvent] = []
    for dec in decisions:
        if dec.allowed and dec.agency in addressed:
            deliver_to.append(dec.agency)
            trail.append(
                events.bulletin_routed(
                    bulletin_id,
                    dec.agency,
                    originator=originator,
                    policy_version=dec.policy_version,
                    directory_version=dec.directory_version,
                    policy_ids=dec.policy_ids,
                    at=at,
                )
            )
        elif not dec.allowed:
            trail.append(
                events.bulletin_denied(
                    bulletin_id,
                    dec.agency,
                    reason=_deny_code(dec),
                    originator=originator,
                    policy_version=dec.policy_version,
                    directory_version=dec.directory_version,
                    policy_ids=dec.policy_ids,
                    at=at,
                )
            )
    return Routing(tuple(deliver_to), tuple(trail))


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
