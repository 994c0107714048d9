"""Who belongs to a community group now (ADR 18): the roster its next epoch must hold.

A group gathers the active agencies with an encryption key that are in its jurisdiction
(a state, a community its states belong to, or a regional centre's community; every
agency when it names none), follow its topic (any, when it names none) and hold at least
its clearance; its manager always, since it holds every epoch key. The roster digest
covers each member's encryption key id and clearance, so a rotated key or a changed
clearance makes a new epoch due, as a joining or leaving member does.

``roster`` is pure over a directory view (``DirectoryService`` is one); ``define`` records
a group an administrator defines. Left to others: storing epochs (``broker.store.groups``),
checking a posted one (``broker.relay.group_api``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from broker.audit import events
from broker.store.groups import GroupRow, define_group
from broker.store.registry import AgencyValues, Registry
from schemas.canonical import canonical_json
from schemas.directory import AgencyRecord
from schemas.envelope import GROUP_NAME_PATTERN
from schemas.errors import ConfigError
from schemas.labels import TOPICS

__all__ = ["GroupRule", "Roster", "RosterView", "define", "roster"]


@dataclass(frozen=True)
class GroupRule:
    """Whom a group gathers (``broker.store.groups.GroupRow`` has these fields)."""

    name: str
    manager: str
    jurisdiction: str | None
    topic: str | None
    min_clearance: int


@dataclass(frozen=True)
class Roster:
    """The members an epoch must hold now, with their encryption key ids, and the digest
    of members, keys and clearances."""

    members: tuple[tuple[str, str], ...]
    digest: str

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(a for a, _ in self.members)


class RosterView(Protocol):
    @property
    def agency_rows(self) -> Mapping[str, AgencyValues]: ...

    @property
    def records(self) -> Mapping[str, AgencyRecord]: ...

    @property
    def subscribers(self) -> Mapping[str, Sequence[str]]: ...

    @property
    def jurisdiction_parents(self) -> Mapping[str, tuple[str, ...]]: ...


def _in(a: AgencyValues, code: str, parents: Mapping[str, tuple[str, ...]]) -> bool:
    if a.state == code or (a.state is not None and code in parents.get(a.state, ())):
        return True
    return code in tuple(c for c in a.communities.split(",") if c)


def roster(rule: GroupRule, view: RosterView) -> Roster:
    """The roster of ``rule``'s group in ``view``. Empty when its manager is not an active
    agency with an encryption key: nobody can make an epoch then."""
    rows, records = view.agency_rows, view.records
    followers = set(view.subscribers.get(rule.topic, ())) if rule.topic is not None else None
    parents = view.jurisdiction_parents

    def eligible(aid: str) -> str | None:
        a, rec = rows.get(aid), records.get(aid)
        if a is None or rec is None or a.status != "active" or rec.encryption_key is None:
            return None
        return rec.encryption_key.kid

    manager_kid = eligible(rule.manager)
    if manager_kid is None:
        return Roster((), _digest([]))
    members: list[tuple[str, str, int]] = []
    for aid, a in rows.items():
        kid = eligible(aid)
        if kid is None:
            continue
        if aid != rule.manager:
            if a.clearance < rule.min_clearance:
                continue
            if followers is not None and aid not in followers:
                continue
            if rule.jurisdiction is not None and not _in(a, rule.jurisdiction, parents):
                continue
        members.append((aid, kid, a.clearance))
    members.sort()
    return Roster(tuple((a, k) for a, k, _ in members), _digest(members))


def _digest(members: list[tuple[str, str, int]]) -> str:
    rows = [[a, k, c] for a, k, c in members]
    return hashlib.sha256(b"istmo/v1/group-roster\x00" + canonical_json(rows)).hexdigest()


def define(
    registry: Registry,
    *,
    name: str,
    manager: str,
    jurisdiction: str | None,
    topic: str | None,
    min_clearance: int,
    actor: str,
    at: int,
) -> GroupRow:
    """Define (or redefine) a community group, audited. Its manager makes the first epoch
    (``istmo groups rotate``); a redefinition makes a new one due.

    Raises:
        ConfigError: an unknown manager, jurisdiction or topic, or a bad name or clearance.
    """
    if not re.fullmatch(GROUP_NAME_PATTERN, name):
        raise ConfigError(
            f"group name {name[:60]!r}: 1-48 letters, digits, '_', '.', ':' or '-'",
            code="bad_group",
        )
    if registry.agency(manager) is None:
        raise ConfigError(f"unknown agency {manager}", code="unknown_agency")
    if jurisdiction is not None and jurisdiction not in {j.code for j in registry.jurisdictions()}:
        raise ConfigError(f"unknown jurisdiction {jurisdiction}", code="unknown_label")
    if topic is not None and topic not in TOPICS:
        raise ConfigError(
            f"unknown topic {topic}: one of {', '.join(TOPICS)}", code="unknown_label"
        )
    if not 0 <= min_clearance <= 3:
        raise ConfigError("the least clearance is a level from 0 to 3", code="bad_group")
    row = GroupRow(
        name=name,
        manager=manager,
        jurisdiction=jurisdiction,
        topic=topic,
        min_clearance=min_clearance,
        defined_at=at // 1000,
    )
    event = events.group_defined(
        name,
        manager=manager,
        jurisdiction=jurisdiction,
        topic=topic,
        min_clearance=min_clearance,
        actor=actor,
        at=at,
    )
    define_group(registry, row, event)
    return row
