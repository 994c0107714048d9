"""Bringing members' delivery consumers to read their group epochs' shared copies (ADR 21).

An epoch becomes current when its manager's last page of wraps is in (ADR 18); bulletins
sealed under it are then stored once per recipient until this module has, for every
member, updated both its delivery consumers to read the epoch's group subjects
(``istmo.deliver.group.<group>.<epoch>.<precedence>``) and recorded the epoch's
``delivery_at``. From then on the relay stores one copy for all of them
(``broker.relay.fanout``).

Each consumer's filter is the whole list, recomputed from the registry every time
(``broker.store.groups.delivery_epochs``): the agency's own subjects and every epoch it is
a member of whose copies may still be in the stream (current, or superseded less than the
stream's max age ago). Nothing is added by reading the consumer first, so two writers
agree on the result once they have read the same registry; after its updates a pass
reads the registry again and updates the members whose list changed meanwhile, before it
records anything.

A member is never given an epoch's subject before that epoch is current, and no bulletin
is stored on it before every member reads it; so a new member gets no copy from before
it joined (those are on an older epoch's subject), and a removed one none from after.
Left to others: the tables (``broker.store.groups``), the consumers
(``broker.bus.streams.ensure_agency_consumer``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping

from nats.js import JetStreamContext

from broker.bus.streams import ensure_agency_consumer
from broker.store.groups import (
    delivery_epochs,
    epochs_awaiting_delivery,
    mark_delivery_ready,
)
from broker.store.registry import Registry

__all__ = ["IN_FLIGHT", "open_group_delivery", "update_consumers"]

log = logging.getLogger("istmo.group_delivery")

# Consumer updates in flight at once: nats-server answered 1,000 in 0.3 s this way.
IN_FLIGHT = 64
_PASSES = 3  # a registry that keeps changing under a pass is tried again next sweep


async def update_consumers(
    js: JetStreamContext,
    agencies: Collection[str],
    wanted: Mapping[str, list[tuple[str, int]]],
) -> None:
    """Set the filter of both delivery consumers of each of ``agencies`` to its own
    subjects and those of ``wanted[agency]``.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses a consumer.
    """
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(agency: str) -> None:
        async with gate:
            await ensure_agency_consumer(js, agency, groups=wanted.get(agency, ()))

    async with asyncio.TaskGroup() as tg:
        for agency in sorted(agencies):
            tg.create_task(one(agency))


async def open_group_delivery(
    js: JetStreamContext, registry: Registry, *, since: int, now: int
) -> int:
    """Bring the members of every current epoch not yet ready to read its copies, then
    record it ready; how many epochs became ready.

    Args:
        since: epoch seconds; epochs superseded before it are left out of the filters
            (their copies have left the stream: now less its max age).
        now: the time recorded as ``delivery_at``.

    Raises:
        BusUnavailable: JetStream does not answer (nothing is recorded; try again).
        ConfigError: JetStream refuses a consumer.
        AuditStoreError: the database refused.
    """
    awaiting = epochs_awaiting_delivery(registry)
    if not awaiting:
        return 0
    members = {m for row in awaiting for m in row.member_ids}
    wanted = await asyncio.to_thread(delivery_epochs, registry, since=since)
    todo = set(members)
    for _ in range(_PASSES):
        await update_consumers(js, todo, wanted)
        again = await asyncio.to_thread(delivery_epochs, registry, since=since)
        todo = {a for a in members if again.get(a) != wanted.get(a)}
        wanted = again
        if not todo:
            break
    else:
        log.warning("group epochs kept changing while their members were updated; next sweep")
        return 0
    pairs = [(row.group, row.epoch) for row in awaiting]
    mark_delivery_ready(registry, pairs, now)
    log.info(
        "group delivery open for %s: %d members' consumers read their copies",
        ", ".join(f"{g}#{e}" for g, e in pairs),
        len(members),
    )
    return len(pairs)
