"""Receipts are judged, recorded and acked a batch at a time (SQLite and PostgreSQL): a
forged receipt in the middle of a batch is refused and audited without holding back the
good ones, and a batch whose acks were lost comes back and is recorded once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nats.aio.msg import Msg

from broker.relay.worker import Relay
from clients.keystore import load_keystore
from schemas.canonical import canonical_json
from schemas.ids import AgencyId, BulletinId
from schemas.keys import SigningKey
from schemas.labels import Classification, Labels, Tlp
from schemas.receipt import Receipt, sign_receipt
from schemas.subjects import RECEIPT_STREAM, RELAY_RECEIPT_DURABLE, gated_subject
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.storage_engines import Storage
from tests.waiting import eventually

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)


def lost_acks(msg: Msg) -> Msg:
    """A copy of ``msg`` whose acks go to a consumer that does not exist: processed, but
    as if its acks never reached JetStream."""
    parts = msg.reply.split(".")  # $JS.ACK.<stream>.<consumer>.<counts...>
    parts[3] = "nobody"
    return Msg(_client=msg._client, subject=msg.subject, reply=".".join(parts), data=msg.data)


async def test_a_forged_receipt_is_refused_and_a_redelivered_batch_recorded_once(
    storage: Storage, tmp_path: Path
) -> None:
    async with running_stack(
        tmp_path / "istmo", with_relay=False, database_url=storage.pg_url
    ) as stack:
        registry, directory = stack.registry, stack.directory
        assert registry is not None
        assert directory is not None
        nc = await stack.connect_relay(nats_url(stack))
        js = nc.jetstream()
        relay = Relay(stack.settings, registry, directory, nc)
        try:
            stop = asyncio.Event()
            running = asyncio.create_task(relay.run(stop))
            async with await client(stack, "gt-police") as gt:
                result = await gt.publish(title="t", text="receipts in a batch", labels=LABELS)
            stop.set()
            await running  # the receipts wait on their stream while no relay runs
            bid = result.bulletin_id
            first, second = sorted(result.routed)[:2]
            digest = registry.bulletin(bid).envelope_digest  # type: ignore[union-attr]

            def receipt(recipient: str) -> Receipt:
                keystore = stack.settings.keys_dir / f"{recipient}.json"
                key: SigningKey = load_keystore(keystore).signing_key()
                return sign_receipt(
                    bulletin_id=BulletinId(bid),
                    originator=AgencyId("gt-police"),
                    recipient=AgencyId(recipient),
                    envelope_digest=digest,
                    received_at=int(time.time()),
                    key=key,
                )

            forged = receipt(second).model_copy(update={"received_at": 1})
            for who, r in ((first, receipt(first)), (second, forged), (second, receipt(second))):
                await js.publish(
                    gated_subject("receipt", who), canonical_json(r.model_dump(mode="json"))
                )

            sub = await js.pull_subscribe_bind(RELAY_RECEIPT_DURABLE, stream=RECEIPT_STREAM)
            msgs: list[Msg] = []
            while len(msgs) < 3:
                msgs += await sub.fetch(3 - len(msgs), timeout=10)
            forged_seq = msgs[1].metadata.sequence.stream
            # 1. The batch is recorded, but its acks are lost.
            await relay._receipt_batch([lost_acks(m) for m in msgs])
            assert sorted(r.recipient for r in registry.receipts(bid)) == [first, second]
            for m in msgs:  # sooner than the ack wait
                await m.nak()
            # 2. It comes back to the relay, which records nothing new.
            stop = asyncio.Event()
            running = asyncio.create_task(relay.run(stop))

            async def taken() -> tuple[int, int, int]:
                info = await js.consumer_info(RECEIPT_STREAM, RELAY_RECEIPT_DURABLE)
                return info.num_pending, info.num_ack_pending, info.num_redelivered

            await eventually(taken, until=lambda t: t[:2] == (0, 0), what="the redelivery")
            stop.set()
            await running
        finally:
            await nc.close()
        assert sorted(r.recipient for r in registry.receipts(bid)) == [first, second]
        received = registry.audit_events(bulletin_id=bid, type_="bulletin.received")
        assert sorted(e.actor for e in received) == [first, second]
        refused = registry.audit_events(type_="receipt.rejected")
        assert [(e.subject, e.reason, e.actor) for e in refused] == [
            (f"receipt:{forged_seq}", "signature_invalid", second)
        ]
