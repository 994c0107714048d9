"""A bulletin whose decision record the database refuses holds back none of its batch.

The relay commits a batch's records on a thread while it decides the next batch
(``Relay._record_deliver_settle``). If that commit fails for a reason retrying cannot
cure, each bulletin's record is tried alone: the others are recorded and delivered, and
the one refused is neither delivered nor acked (it comes back, and is dead-lettered
after its attempts). The refusal here is the database's own: a trigger that aborts the
insert of one bulletin.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from nats.js.api import ConsumerInfo

from broker.runtime.stack import Stack
from schemas.envelope import Content
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import seal
from schemas.subjects import INGEST_STREAM, RELAY_INGEST_DURABLE
from tests.integration.stack_inproc import (
    client,
    nats_url,
    running_stack,
    start_relay,
    stop_relay,
)
from tests.waiting import eventually

PUBLISHER = "gt-police"
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)


async def ingest_consumer(stack: Stack) -> ConsumerInfo:
    nc = await stack.connect_relay(nats_url(stack))
    try:
        info: ConsumerInfo = await nc.jetstream(timeout=5).consumer_info(
            INGEST_STREAM, RELAY_INGEST_DURABLE
        )
        return info
    finally:
        await nc.close()


async def test_a_refused_record_holds_back_none_of_its_batch(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo", with_relay=False) as stack:
        relay = await start_relay(stack, PUBLISHER, LABELS)
        async with await client(stack, PUBLISHER) as gt:
            keys = await gt.resolve(LABELS)
            envs = [
                seal(
                    content=Content(title=f"bulletin {i}", text="one batch"),
                    labels=LABELS,
                    originator=gt.agency,
                    signing_key=gt.keystore.signing_key(),
                    recipients=keys,
                    now=int(time.time()),
                )
                for i in range(3)
            ]
        await stop_relay(relay)
        ids = [e.header.bulletin_id for e in envs]
        refused = ids[1]
        with sqlite3.connect(stack.settings.data_dir / "istmo.db") as db:
            db.execute(
                "CREATE TRIGGER refuse_one BEFORE INSERT ON bulletin"
                f" WHEN NEW.id = '{refused}'"
                " BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
            )
        # All three wait in the ingest stream; the relay takes them as one batch.
        async with await client(stack, PUBLISHER) as gt:
            for env in envs:
                await gt._publish_envelope(env)
        relay = await start_relay(stack, PUBLISHER, LABELS)
        try:
            assert stack.registry is not None
            registry = stack.registry
            kept = await eventually(
                lambda: registry.bulletins(ids),
                until=lambda found: {ids[0], ids[2]} <= set(found),
                what="the other two bulletins recorded",
            )
            assert refused not in kept

            # Delivered and acked, the other two; the refused one stays unacked.
            async def settled() -> ConsumerInfo:
                return await ingest_consumer(stack)

            def only_refused_unacked(i: ConsumerInfo) -> bool:
                return (i.num_ack_pending, i.num_pending) == (1, 0)

            await eventually(
                settled,
                until=only_refused_unacked,
                what="the two acked and the refused one left pending",
            )
            assert refused not in registry.bulletins(ids)
        finally:
            await stop_relay(relay)
