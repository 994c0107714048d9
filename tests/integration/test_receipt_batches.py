"""Receipts are judged, recorded and acked a batch at a time (SQLite and PostgreSQL): a
forged receipt in the middle of a batch is refused and audited without holding back the
good ones, and a batch whose acks were lost comes back and is recorded once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker.directory.service import DirectoryService
from broker.relay.worker import Relay
from broker.runtime.stack import Stack
from broker.store.db import sqlite_path
from broker.store.registry import Registry
from clients.keystore import load_keystore
from schemas.audit import AuditEvent
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


@dataclass
class Relayed:
    """A stack without a relay of its own, the relay the test drives, and one bulletin
    gt-police published that it decided while it ran (its receipts then wait on their
    stream, no relay taking them)."""

    stack: Stack
    registry: Registry
    directory: DirectoryService
    nc: NATS
    js: JetStreamContext
    relay: Relay
    bid: str
    routed: tuple[str, ...]
    digest: str

    def receipt(self, recipient: str, *, key_of: str | None = None) -> Receipt:
        """``recipient``'s receipt of the bulletin, signed with ``key_of``'s key (its own
        by default)."""
        keystore = self.stack.settings.keys_dir / f"{key_of or recipient}.json"
        key: SigningKey = load_keystore(keystore).signing_key()
        return sign_receipt(
            bulletin_id=BulletinId(self.bid),
            originator=AgencyId("gt-police"),
            recipient=AgencyId(recipient),
            envelope_digest=self.digest,
            received_at=int(time.time()),
            key=key,
        )


@contextlib.asynccontextmanager
async def one_bulletin_relayed(
    storage: Storage, tmp_path: Path, text: str
) -> AsyncIterator[Relayed]:
    async with running_stack(
        tmp_path / "istmo", with_relay=False, database_url=storage.pg_url
    ) as stack:
        registry, directory = stack.registry, stack.directory
        assert registry is not None
        assert directory is not None
        nc = await stack.connect_relay(nats_url(stack))
        relay = Relay(stack.settings, registry, directory, nc)
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop))
        try:
            async with await client(stack, "gt-police") as gt:
                result = await gt.publish(title="t", text=text, labels=LABELS)
        finally:
            stop.set()
            await running  # the receipts wait on their stream while no relay runs
        bulletin = registry.bulletin(result.bulletin_id)
        assert bulletin is not None
        yield Relayed(
            stack, registry, directory, nc, nc.jetstream(), relay, result.bulletin_id,
            tuple(result.routed), bulletin.envelope_digest,
        )  # fmt: skip


async def test_a_forged_receipt_is_refused_and_a_redelivered_batch_recorded_once(
    storage: Storage, tmp_path: Path
) -> None:
    async with one_bulletin_relayed(storage, tmp_path, "receipts in a batch") as r:
        registry, js, relay, bid, nc = r.registry, r.js, r.relay, r.bid, r.nc
        try:
            first, second = sorted(r.routed)[:2]
            receipt = r.receipt
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


async def test_receipts_for_another_agencys_delivery_are_refused_and_repeats_recorded_once(
    storage: Storage, tmp_path: Path
) -> None:
    """One batch of hostile receipts beside a good one and its repeat, judged against the
    decisions read for the whole batch at once: each refusal audited with its reason, the
    good receipt recorded once, also when it comes again in a later batch."""
    async with one_bulletin_relayed(storage, tmp_path, "hostile receipts") as r:
        stack, registry, js, relay, bid, nc = r.stack, r.registry, r.js, r.relay, r.bid, r.nc
        try:
            first, second = sorted(r.routed)[:2]
            # An agency the bulletin did not go to, with a signing key of its own.
            outsider = next(
                a
                for a in sorted(r.directory.records)
                if a not in r.routed
                and a != "gt-police"
                and (stack.settings.keys_dir / f"{a}.json").exists()
            )
            signed = r.receipt

            good = signed(first)
            sent = [
                (first, good),
                (first, good),  # the same receipt twice in one batch
                (outsider, signed(outsider)),  # for a delivery that was another's
                (outsider, signed(first, key_of=outsider)),  # naming another recipient
                (second, signed(second, key_of=outsider)),  # signed with another's key
                (second, signed(second).model_copy(update={"received_at": 1})),  # forged
            ]
            for who, r in sent:
                await js.publish(
                    gated_subject("receipt", who), canonical_json(r.model_dump(mode="json"))
                )
            sub = await js.pull_subscribe_bind(RELAY_RECEIPT_DURABLE, stream=RECEIPT_STREAM)

            async def take(n: int) -> list[Msg]:
                msgs: list[Msg] = []
                while len(msgs) < n:
                    msgs += await sub.fetch(n - len(msgs), timeout=10)
                return msgs

            msgs = await take(len(sent))
            seqs = [m.metadata.sequence.stream for m in msgs]
            await relay._receipt_batch(msgs)
            # The good receipt once more, as a recipient's SDK sends it after a crash.
            await js.publish(
                gated_subject("receipt", first), canonical_json(good.model_dump(mode="json"))
            )
            await relay._receipt_batch(await take(1))

            async def unsettled() -> tuple[int, int]:
                info = await js.consumer_info(RECEIPT_STREAM, RELAY_RECEIPT_DURABLE)
                return info.num_pending, info.num_ack_pending

            # Each acked or termed: none comes back.
            await eventually(unsettled, until=lambda t: t == (0, 0), what="every receipt settled")
        finally:
            await nc.close()
        assert [(r.recipient, r.signature) for r in registry.receipts(bid)] == [(first, good.sig)]
        received = registry.audit_events(bulletin_id=bid, type_="bulletin.received")
        assert [e.actor for e in received] == [first]
        refused = registry.audit_events(type_="receipt.rejected")
        assert [(e.subject, e.reason, e.actor) for e in refused] == [
            (f"receipt:{seqs[2]}", "unknown_bulletin", outsider),
            (f"receipt:{seqs[3]}", "originator_mismatch", outsider),
            (f"receipt:{seqs[4]}", "key_not_bound_to_sender", second),
            (f"receipt:{seqs[5]}", "signature_invalid", second),
        ]


def test_an_events_data_is_stored_as_its_json_dump(tmp_path: Path) -> None:
    """The audit rows keep the canonical JSON of each event's data as before, every kind
    of value alike (tuples as lists), and read back as the event recorded."""
    registry = Registry(f"sqlite:///{tmp_path / 'istmo.db'}")
    try:
        event = AuditEvent(
            event_id="receipt:1:rejected",
            type="receipt.rejected",
            time=1_780_000_000_000,
            actor="hn-police",
            subject="receipt:1",
            reason="malformed",
            data={"b": ("x", "y\u00e9"), "a": 7, "t": True, "n": None, "s": 'q"\\'},
        )
        registry.record_receipts([], [event])
        (row,) = registry.audit_events(type_="receipt.rejected")
        want = event.model_dump(mode="json")["data"]
        assert row.data == json.dumps(want, sort_keys=True, separators=(",", ":"))
        assert row.to_event() == event
    finally:
        registry.close()


async def test_a_receipt_batch_whose_commit_fails_is_handed_back_and_recorded_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay commits a receipt batch while it judges the next; a commit that fails
    (here: the receipt table is away, a real SQLite error) acks nothing, hands the batch
    back, and the batch is recorded once when it returns after the table is back."""
    async with running_stack(tmp_path / "istmo", with_relay=False) as stack:
        registry, directory = stack.registry, stack.directory
        assert registry is not None
        assert directory is not None
        path = sqlite_path(stack.settings.db_url)
        assert path is not None
        nc = await stack.connect_relay(nats_url(stack))
        js = nc.jetstream()
        relay = Relay(stack.settings, registry, directory, nc)
        stop = asyncio.Event()
        try:
            running = asyncio.create_task(relay.run(stop))
            async with await client(stack, "gt-police") as gt:
                result = await gt.publish(title="t", text="a commit that fails", labels=LABELS)
            first = sorted(result.routed)[0]
            digest = registry.bulletin(result.bulletin_id).envelope_digest  # type: ignore[union-attr]
            good = sign_receipt(
                bulletin_id=BulletinId(result.bulletin_id),
                originator=AgencyId("gt-police"),
                recipient=AgencyId(first),
                envelope_digest=digest,
                received_at=int(time.time()),
                key=load_keystore(stack.settings.keys_dir / f"{first}.json").signing_key(),
            )

            def rename(old: str, new: str) -> None:
                con = sqlite3.connect(path, timeout=30)
                try:
                    con.execute(f"ALTER TABLE {old} RENAME TO {new}")
                    con.commit()
                finally:
                    con.close()

            async def consumer() -> tuple[int, int, int]:
                info = await js.consumer_info(RECEIPT_STREAM, RELAY_RECEIPT_DURABLE)
                return info.num_pending, info.num_ack_pending, info.num_redelivered

            rename("receipt", "receipt_away")
            await js.publish(
                gated_subject("receipt", first), canonical_json(good.model_dump(mode="json"))
            )
            # Judged, not recorded, handed back, and taken again: nothing acked meanwhile.
            await eventually(consumer, until=lambda c: c[2] >= 1, what="the batch handed back")
            rename("receipt_away", "receipt")
            await eventually(consumer, until=lambda c: c[:2] == (0, 0), what="the receipt settled")
            stop.set()
            await running
        finally:
            stop.set()
            await nc.close()
        assert [r.recipient for r in registry.receipts(result.bulletin_id)] == [first]
        received = registry.audit_events(bulletin_id=result.bulletin_id, type_="bulletin.received")
        assert [e.actor for e in received] == [first]
    # The pipelined commit's own failure path, not the loop's.
    assert "receipt batch of 1 not recorded" in caplog.text
