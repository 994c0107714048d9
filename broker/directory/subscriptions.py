"""What each agency follows: its topic subscriptions, set by administrators.

Need-to-know is decided centrally, so only administrators change subscriptions (the HTTP
API, scope ``admin``, and ``istmo admin subscriptions``); an agency may read its own. A
change replaces an agency's whole set: the topics added and removed, and one audit event
per topic (``subscription.added`` / ``subscription.removed``, the administrator as actor),
commit in one transaction. A running stack then rebuilds its directory: an agency no
longer following a topic is no longer a candidate recipient of bulletins about it.

Left to others: telling the running stack (``broker.api.enrol.apply_directory_change``,
``broker.runtime.control.notify_running_stack``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, select

from broker.audit import events
from broker.clock import SYSTEM_CLOCK, Clock
from broker.store.registry import AgencyRow, Registry, SubscriptionRow
from schemas.errors import ConfigError
from schemas.labels import TOPICS

__all__ = ["SubscriptionChange", "set_subscriptions", "subscriptions_of"]


@dataclass(frozen=True)
class SubscriptionChange:
    """The outcome of ``set_subscriptions``: the new set, in ``TOPICS`` order."""

    agency: str
    topics: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def _ordered(topics: Iterable[str]) -> tuple[str, ...]:
    wanted = set(topics)
    return tuple(t for t in TOPICS if t in wanted)


def _current(s: Session, agency: str) -> set[str]:
    q = select(SubscriptionRow).where(SubscriptionRow.agency == agency)
    return {row.topic for row in s.exec(q)}


def subscriptions_of(registry: Registry, agency: str) -> tuple[str, ...] | None:
    """The topics ``agency`` follows, in ``TOPICS`` order; None if there is no such agency."""
    with registry.session() as s:
        if s.get(AgencyRow, agency) is None:
            return None
        return _ordered(_current(s, agency))


def set_subscriptions(
    registry: Registry,
    agency: str,
    topics: Iterable[str],
    actor: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> SubscriptionChange:
    """Make ``topics`` the whole set ``agency`` follows (duplicates count once).

    Raises:
        ConfigError: ``unknown_agency``, ``unknown_topic`` (naming the topics there are),
            or ``conflict`` if another change landed between reading and writing.
        AuditStoreError: the database refused the transaction.
    """
    wanted = list(dict.fromkeys(topics))
    unknown = [i for i, t in enumerate(topics) if t not in TOPICS]
    if unknown:
        raise ConfigError(
            f"topics[{unknown[0]}] is not a topic; topics are: {', '.join(TOPICS)}",
            code="unknown_topic",
        )
    with registry.session() as s:
        if s.get(AgencyRow, agency) is None:
            raise ConfigError("no such agency", code="unknown_agency")
        before = _current(s, agency)
    added = _ordered(set(wanted) - before)
    removed = _ordered(before - set(wanted))
    change = SubscriptionChange(agency, _ordered(wanted), added, removed)
    if not change.changed:
        return change

    def apply(s: Session) -> None:
        if _current(s, agency) != before:
            raise ConfigError(
                f"the subscriptions of {agency} changed meanwhile; try again", code="conflict"
            )
        for topic in removed:
            row = s.get(SubscriptionRow, (agency, topic))
            if row is not None:
                s.delete(row)
        for topic in added:
            s.add(SubscriptionRow(agency=agency, topic=topic))

    at = clock.now_ms()
    trail = [events.subscription_added(agency, t, actor=actor, at=at) for t in added]
    trail += [events.subscription_removed(agency, t, actor=actor, at=at) for t in removed]
    registry.change(apply, trail)
    return change
