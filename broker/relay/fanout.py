"""Which copies of an accepted bulletin the relay stores (ADR 21): pure.

A bulletin sealed under community group keys (ADR 18) opens for every member of each
group epoch it uses. When the members' delivery consumers all read that epoch's group
subject (its ``delivery_at`` is recorded), one copy on the group subject reaches them all;
everyone else it is routed to gets a copy of its own, as before. A group copy is used only
if every member it reaches is routed this bulletin or is its originator (who sealed it):
the relay's cover check (``broker.relay.cover``) already makes that so, and this repeats
it where the copies are made, so no path can hand a member a bulletin it was not routed.

A routed member whose deliveries are sourced to its state's node (ADR 30) gets a copy of
its own besides: group copies are not sourced to state nodes (ADR 30's amendment says
why), so the group copy alone would never reach it there. It never changes who is routed:
a member not routed is never given any copy, of its own or shared.

Left to others: who is routed (``broker.relay.plan``), which epochs are ready
(``broker.store.groups.ready_epochs``), storing the copies (``broker.relay.worker``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Fanout", "fan_out"]


@dataclass(frozen=True)
class Fanout:
    """The copies to store: one per (group, epoch) in ``shared``, one per recipient in
    ``individual`` (in the order they were routed)."""

    shared: tuple[tuple[str, int], ...]
    individual: tuple[str, ...]


def fan_out(
    deliver_to: Sequence[str],
    *,
    originator: str | None,
    groups: Sequence[tuple[str, int]],
    ready: Mapping[tuple[str, int], frozenset[str]],
    on_nodes: Collection[str] = frozenset(),
) -> Fanout:
    """Split ``deliver_to`` into group copies and copies of their own.

    Args:
        deliver_to: the recipients the bulletin is routed to.
        originator: its signed originator (a member that is not addressed still reads
            its group's copy; its SDK drops what does not address it).
        groups: the (group, epoch) pairs its envelope uses, in envelope order.
        ready: the members of each epoch whose copies its members' consumers read.
        on_nodes: agencies whose deliveries reach a state node, where no group copy
            goes: each routed one gets a copy of its own even when a group copy is
            stored for its epoch.
    """
    routed = set(deliver_to)
    readers = routed | ({originator} if originator else set())
    shared: list[tuple[str, int]] = []
    covered: set[str] = set()
    for pair in dict.fromkeys(groups):
        members = ready.get(pair)
        if members is None or not members or not members <= readers:
            continue
        shared.append(pair)
        covered |= members
    covered -= set(on_nodes)
    return Fanout(tuple(shared), tuple(r for r in deliver_to if r not in covered))
