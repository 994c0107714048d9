"""The policy's receive decisions on one bulletin, as the relay records them.

Pure. For each candidate the policy engine answered, this module says whether the
bulletin goes to it (allowed, and addressed by the originator's wraps), and what is
written down (ADR 8): one ``DecisionRecordRow`` and one ``bulletin.decided`` event per
bulletin (more parts only for a broadcast to thousands), not a row and an event per
candidate. Both group the candidates by outcome (``routed``, ``unaddressed``, or the
denial code) and deciding policies. A refused or unaddressed group drawn from big classes
names their agency set by digest, less the agencies of it left out (ADR 36), so a record
does not grow with the candidates; small groups and the routed one list their agencies.
A denial always carries a code and a reason: the deciding policies' own, or, when no
policy granted anything, that this is a default deny.

Left to others: asking the engine (``broker.relay.plan``), the policies themselves
(``broker.policy``), and committing rows and events (``broker.relay.worker``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, filterfalse

from broker.audit import events
from broker.audit.events import SET_MIN_AGENCIES, DecisionGroup
from broker.policy.model import DecidedAlike, Decision
from broker.store.registry import DecisionRecordRow, Insert, row_values
from schemas.audit import AuditEvent, agency_set_digest

__all__ = ["DEFAULT_DENY", "Denial", "Routing", "denial_of", "route"]

DEFAULT_DENY = "no policy grants it (default deny): not releasable to it, and not named"
_Key = tuple[str, tuple[str, ...], tuple[str, ...]]  # outcome, policy ids, reasons
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
    """Who gets a bulletin, its decision record and the ``bulletin.decided`` event(s), and
    the agency sets they name by digest (ADR 36), each with its agencies, sorted."""

    deliver_to: tuple[str, ...]
    record: Insert  # a DecisionRecordRow's values
    events: tuple[AuditEvent, ...]
    listed: tuple[tuple[str, tuple[str, ...]], ...] = ()


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
    listed_from: int = SET_MIN_AGENCIES,
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
        listed_from: a refused or unaddressed group drawn from classes of more
            candidates than this is written by reference to their set (ADR 36).
    """
    wrapped = frozenset(addressed)
    # (outcome, policy ids, reasons) -> runs of agencies: the row keeps the reasons'
    # texts; the event, as before, the code and policies (the texts are in the policy set).
    grouped: dict[_Key, list[Iterable[str]]] = {}
    # For the groups that may be written by reference: the classes each is drawn from,
    # and the agencies of those classes it leaves out (routed ones).
    drawn: dict[_Key, tuple[list[tuple[str, ...]], list[str]]] = {}
    for alike in decided:
        dec = alike.decision
        if not dec.allowed:
            key = (_deny_code(dec), dec.policy_ids, dec.reasons or _why_not(dec))
            grouped.setdefault(key, []).append(alike.agencies)
            drawn.setdefault(key, ([], []))[0].append(alike.agencies)
            continue
        routed = wrapped & alike.members
        if routed:
            grouped.setdefault(("routed", dec.policy_ids, dec.reasons), []).append(routed)
        if len(routed) < len(alike.members):
            key = ("unaddressed", dec.policy_ids, dec.reasons)
            rest = filterfalse(routed.__contains__, alike.agencies) if routed else alike.agencies
            grouped.setdefault(key, []).append(rest)
            classes, left_out = drawn.setdefault(key, ([], []))
            classes.append(alike.agencies)
            left_out.extend(routed)
    keys = sorted(grouped, key=lambda k: (_ORDER.get(k[0], 2), k))
    sorted_runs: dict[_Key, list[str]] = {}

    def who(key: _Key) -> list[str]:
        """``key``'s agencies, sorted (made only for a group written in full)."""
        found = sorted_runs.get(key)
        if found is None:
            found = sorted_runs[key] = sorted(chain.from_iterable(grouped[key]))
        return found

    deliver_to = tuple(sorted(chain.from_iterable(who(k) for k in keys if k[0] == "routed")))
    listed: dict[str, tuple[str, ...]] = {}

    def by_reference(key: _Key) -> tuple[str, tuple[str, ...]] | None:
        """(digest, left out) if ``key``'s group is written by reference, else None."""
        classes, left_out = drawn.get(key, ((), ()))
        if sum(map(len, classes)) <= listed_from:
            return None
        digest, members = _listed(classes)
        listed[digest] = members
        return digest, tuple(sorted(left_out))

    refs = {k: by_reference(k) for k in keys}
    record = row_values(
        DecisionRecordRow,
        bulletin_id=bulletin_id,
        routed=",".join(deliver_to),
        groups=json.dumps(
            [_record_group(k, refs[k] or who(k)) for k in keys],
            separators=(",", ":"),
        ),
    )
    audited: dict[tuple[str, tuple[str, ...]], list[_Key]] = {}
    for k in keys:
        audited.setdefault(k[:2], []).append(k)
    groups = []
    for (outcome, policies), merged in audited.items():
        ref = refs[merged[0]] if len(merged) == 1 else None
        if len(merged) > 1 and all(refs[k] is not None for k in merged):
            # Same outcome and policies, other reasons (errors): one set for the event.
            classes = [c for k in merged for c in drawn[k][0]]
            digest, members = _listed(classes)
            listed[digest] = members
            ref = digest, tuple(sorted(chain.from_iterable(drawn[k][1] for k in merged)))
        if ref is not None:
            groups.append(DecisionGroup(outcome, policies, (), ref[0], ref[1]))
        else:
            agencies = sorted(chain.from_iterable(who(k) for k in merged))
            groups.append(DecisionGroup(outcome, policies, tuple(agencies)))
    trail = events.bulletin_decided(
        bulletin_id,
        originator=originator,
        policy_version=policy_version,
        directory_version=directory_version,
        groups=groups,
        at=at,
    )
    return Routing(deliver_to, record, trail, tuple(listed.items()))


def _record_group(key: _Key, written: tuple[str, tuple[str, ...]] | list[str]) -> dict[str, object]:
    """One group of the decision record: its agencies (a list), or the set they are
    drawn from and the agencies of it left out (a digest and a tuple; ADR 36)."""
    group: dict[str, object] = {
        "outcome": key[0],
        "policy_ids": list(key[1]),
        "reasons": list(key[2]),
    }
    if isinstance(written, list):
        group["agencies"] = written
    else:
        group["listed"], group["but"] = written[0], list(written[1])
    return group


# Sets of the engine's classes, by the identity of their agency tuples (which the engine
# keeps while it keeps its decisions): a wide topic's set is sorted and hashed once a
# second, not once a bulletin. Each entry holds its tuples, so an id is never reused.
_DIGESTS: dict[tuple[int, ...], tuple[tuple[tuple[str, ...], ...], str, tuple[str, ...]]] = {}
_KEPT_DIGESTS = 256


def _listed(classes: Sequence[tuple[str, ...]]) -> tuple[str, tuple[str, ...]]:
    """The digest and sorted agencies of the union of ``classes`` (no agency in two)."""
    key = tuple(map(id, classes))
    kept = _DIGESTS.get(key)
    if kept is not None and all(a is b for a, b in zip(kept[0], classes, strict=True)):
        return kept[1], kept[2]
    members = tuple(sorted(chain.from_iterable(classes)))
    digest = agency_set_digest(members)
    if len(_DIGESTS) >= _KEPT_DIGESTS:
        _DIGESTS.clear()
    _DIGESTS[key] = (tuple(classes), digest, members)
    return digest, members


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
