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
        listed_from: a refused or unaddressed group whose agency set (the engine's kept
            classes it is drawn from) holds more agencies than this is written by
            reference to that set (ADR 36).
    """
    wrapped = frozenset(addressed)
    # (outcome, policy ids, reasons) -> runs of agencies: the row keeps the reasons'
    # texts; the event, as before, the code and policies (the texts are in the policy set).
    grouped: dict[_Key, list[Iterable[str]]] = {}
    # For the groups that may be written by reference: their classes, each with the
    # agencies of it the group leaves out (those routed).
    drawn: dict[_Key, list[tuple[DecidedAlike, frozenset[str]]]] = {}
    for alike in decided:
        dec = alike.decision
        if not dec.allowed:
            key = (_deny_code(dec), dec.policy_ids, dec.reasons or _why_not(dec))
            grouped.setdefault(key, []).append(alike.agencies)
            drawn.setdefault(key, []).append((alike, frozenset()))
            continue
        routed = _routed(wrapped, alike)
        if routed:
            grouped.setdefault(("routed", dec.policy_ids, dec.reasons), []).append(routed)
        if len(routed) < len(alike.agencies):
            key = ("unaddressed", dec.policy_ids, dec.reasons)
            rest = filterfalse(routed.__contains__, alike.agencies) if routed else alike.agencies
            grouped.setdefault(key, []).append(rest)
            drawn.setdefault(key, []).append((alike, routed))
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

    def by_reference(key: _Key) -> _ByReference | None:
        """How ``key``'s group is written by reference, or None to list it in full."""
        found = _by_reference(drawn.get(key, []), listed_from)
        if found is not None:
            listed[found.digest] = found.members
        return found

    refs = {k: by_reference(k) for k in keys}
    rows: list[dict[str, object]] = []
    for k in keys:
        ref = refs[k]
        if ref is None:
            rows.append(_record_group(k, who(k)))
            continue
        rows.append(_record_group(k, (ref.digest, ref.but)))
        if ref.loose:
            rows.append(_record_group(k, list(ref.loose)))
    record = row_values(
        DecisionRecordRow,
        bulletin_id=bulletin_id,
        routed=",".join(deliver_to),
        groups=json.dumps(rows, separators=(",", ":")),
    )
    audited: dict[tuple[str, tuple[str, ...]], list[_Key]] = {}
    for k in keys:
        audited.setdefault(k[:2], []).append(k)
    groups = []
    for (outcome, policies), merged in audited.items():
        ref = refs[merged[0]] if len(merged) == 1 else None
        if ref is None:
            # In full; also keys of the same outcome and policies that differ only in
            # their reasons (errors), which the event does not keep apart.
            agencies = sorted(chain.from_iterable(who(k) for k in merged))
            groups.append(DecisionGroup(outcome, policies, tuple(agencies)))
            continue
        groups.append(DecisionGroup(outcome, policies, (), ref.digest, ref.but))
        if ref.loose:
            groups.append(DecisionGroup(outcome, policies, ref.loose))
    trail = events.bulletin_decided(
        bulletin_id,
        originator=originator,
        policy_version=policy_version,
        directory_version=directory_version,
        groups=groups,
        at=at,
    )
    return Routing(deliver_to, record, trail, tuple(listed.items()))


@dataclass(frozen=True)
class _ByReference:
    """A group written as an agency set (``digest``, its sorted ``members``) less ``but``,
    and ``loose``, its agencies outside that set (listed in a group of their own)."""

    digest: str
    members: tuple[str, ...]
    but: tuple[str, ...]
    loose: tuple[str, ...]


def _by_reference(
    entries: Sequence[tuple[DecidedAlike, frozenset[str]]], listed_from: int
) -> _ByReference | None:
    """A refused or unaddressed group by reference, given its classes and what of each it
    leaves out (routed agencies); None if it is better listed in full.

    The set is the engine's kept classes the group's classes are what is left of (ADR 35,
    amended): the same tuples for every bulletin on the topic, whoever publishes it, so
    their set is recorded once. Left out of it: what the engine took out of those classes
    for this bulletin, and the routed, unless the group has them back through a class of
    its own; the group's agencies outside the set are ``loose``. A group of classes the
    engine did not keep (classed on their own) is the set of those classes, less the
    routed.
    """
    kept = [(alike, routed) for alike, routed in entries if alike.base is not None]
    if not kept:
        sources = [alike.agencies for alike, _ in entries]
        left_out = {a for _, routed in entries for a in routed}
        loose: set[str] = set()
    else:
        sources = [alike.base for alike, _ in kept if alike.base is not None]
        # The group's agencies in classes of their own, which may be in those sets.
        alone = {
            a
            for alike, routed in entries
            if alike.base is None
            for a in alike.agencies
            if a not in routed
        }
        left_out = {a for alike, routed in kept for a in (*alike.cut, *routed)} - alone
        whole = [_members_of(s) for s in sources]
        loose = {a for a in alone if not any(a in w for w in whole)}
    size = sum(map(len, sources))
    in_group = size - len(left_out) + len(loose)
    if size <= listed_from or len(left_out) + len(loose) >= in_group:
        return None
    digest, members = _listed(sources)
    return _ByReference(digest, members, tuple(sorted(left_out)), tuple(sorted(loose)))


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


_MEMBERS: dict[int, tuple[tuple[str, ...], frozenset[str]]] = {}


def _members_of(kept: tuple[str, ...]) -> frozenset[str]:
    """A kept class's agencies as a set, made once per class (by identity, as above)."""
    found = _MEMBERS.get(id(kept))
    if found is not None and found[0] is kept:
        return found[1]
    members = frozenset(kept)
    if len(_MEMBERS) >= _KEPT_DIGESTS:
        _MEMBERS.clear()
    _MEMBERS[id(kept)] = (kept, members)
    return members


def _routed(wrapped: frozenset[str], alike: DecidedAlike) -> frozenset[str]:
    """The agencies of ``alike`` that ``wrapped`` holds. A class drawn from one the engine
    keeps is that class less what it cut: its set is made once per kept class, not once
    per bulletin (a new originator's bulletin brings new classes, of kept members)."""
    if alike.base is None:
        return wrapped & alike.members
    found = wrapped & _members_of(alike.base)
    return found.difference(alike.cut) if alike.cut else found


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
