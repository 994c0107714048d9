"""The agency API answers while the relay is held in a batch (``Relay(api_connect=...)``).

A batch is held deterministically, not by sleeping: the test takes SQLite's write lock, so
the relay's commit of the next bulletin waits for it, with the relay's event loop (here
also the test's) held all that time. Everything the test does meanwhile runs on a thread
of its own; the lock is let go before SQLite's busy timeout (10 s) would end the wait."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from broker.runtime.stack import Stack
from broker.store.db import sqlite_path
from schemas.envelope import Content, Envelope
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import seal
from schemas.subjects import INGEST_STREAM, RELAY_INGEST_DURABLE
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.waiting import eventually

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)


def ask_while_held(stack: Stack, held: Envelope, answered: str) -> tuple[str, str]:
    """On this thread's own loop: publish ``held``, wait until the relay took it (and is
    now waiting for the lock), then ask for the status of ``answered`` and of ``held``."""

    async def run() -> tuple[str, str]:
        relay_nc = await stack.connect_relay(nats_url(stack))
        try:
            async with await client(stack, "gt-police") as gt:
                await gt._publish_envelope(held)
                js = relay_nc.jetstream()

                async def taken() -> int:
                    info = await js.consumer_info(INGEST_STREAM, RELAY_INGEST_DURABLE)
                    return info.num_ack_pending

                await eventually(taken, until=lambda n: n == 1, what="the relay to take it")
                first = await gt.status(answered)
                second = await gt.status(held.header.bulletin_id)
                return first["state"], second["state"]
        finally:
            await relay_nc.close()

    return asyncio.run(run())


async def test_the_agency_api_answers_while_a_batch_waits_for_the_database(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        db = sqlite_path(stack.settings.db_url)
        assert db is not None
        async with await client(stack, "gt-police") as gt:
            first = await gt.publish(title="t", text="answered", labels=LABELS)
            held = seal(
                content=Content(title="t", text="held"),
                labels=LABELS,
                originator=gt.agency,
                signing_key=gt.keystore.signing_key(),
                recipients=await gt.resolve(LABELS),
                now=int(time.time()),
            )
        lock = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        try:
            lock.execute("BEGIN IMMEDIATE")  # the write lock: the relay's commit waits
            states = await asyncio.to_thread(ask_while_held, stack, held, first.bulletin_id)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        # Answered while the relay waited: the held bulletin was not recorded yet.
        assert states == ("accepted", "pending")
        async with await client(stack, "gt-police") as gt:
            done = await gt.wait_for_verdict(held.header.bulletin_id, timeout=60)
        assert done.state == "accepted"
