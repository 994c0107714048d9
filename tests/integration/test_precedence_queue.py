"""Precedence in the recipient's queue (ADR 7): what waits for an offline agency is handed
over FLASH and IMMEDIATE first, however much ROUTINE was queued before them; and what an
Istmo before ADR 7 queued on ``istmo.deliver.<agency>`` is still received after an upgrade.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.runtime.health import retention_checks
from broker.runtime.stack import Stack
from clients.sdk import IstmoClient, ReceivedBulletin
from schemas.envelope import Content
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.sealing import encode_envelope, seal
from schemas.subjects import (
    DELIVER_STREAM,
    deliver_durable,
    deliver_durables,
    deliver_subject,
    legacy_deliver_subject,
    urgent_durable,
)
from tests.conftest import NatsStack
from tests.integration.stack_inproc import (
    client,
    nats_url,
    running_stack,
    start_relay,
    stop_relay,
)
from tests.waiting import eventually

NatsStackFactory = Callable[[list[str]], Awaitable[NatsStack]]  # conftest's nats_stack
PUBLISHER = "hn-police"
RECIPIENT = "ni-police"


def labels(precedence: Precedence) -> Labels:
    return Labels(
        topic="border-incident",
        classification=Classification.RESTRICTED,
        tlp=Tlp.AMBER,
        rel_to=("NI",),
        precedence=precedence,
    )


async def queue_for_offline_recipient(stack: Stack, precedences: Sequence[Precedence]) -> None:
    """The publisher sends one bulletin per precedence, in that order, while the recipient
    receives nothing; returns once the relay has queued every one for the recipient."""
    async with await client(stack, PUBLISHER) as hn:
        keys = await hn.resolve(labels(Precedence.ROUTINE))
        assert RECIPIENT in keys
        for i, precedence in enumerate(precedences):
            env = seal(
                content=Content(title=f"{precedence.value} {i}", text="queued"),
                labels=labels(precedence),
                originator=hn.agency,
                signing_key=hn.keystore.signing_key(),
                recipients=keys,
                now=int(time.time()),
            )
            await hn._publish_envelope(env)
    nc = await stack.connect_relay(nats_url(stack))
    try:
        js = nc.jetstream(timeout=5)

        async def all_queued() -> bool:
            infos = [await js.consumer_info(DELIVER_STREAM, d) for d in deliver_durables(RECIPIENT)]
            return sum(int(i.num_pending or 0) for i in infos) == len(precedences)

        await eventually(all_queued, what="the relay to queue every bulletin", timeout=120)
    finally:
        await nc.close()


async def received_order(ni: IstmoClient, count: int) -> list[str]:
    order: list[str] = []

    async def app(b: ReceivedBulletin) -> None:
        order.append(b.labels.precedence.value)

    assert await ni.receive(app, count=count, timeout=60) == count
    return order


async def test_a_flash_overtakes_500_routine_bulletins_queued_before_it(tmp_path: Path) -> None:
    """Issue 15.5: the recipient comes back to 500 ROUTINE bulletins and then one FLASH."""
    async with running_stack(tmp_path / "istmo") as stack:
        await queue_for_offline_recipient(stack, [Precedence.ROUTINE] * 500 + [Precedence.FLASH])
        async with await client(stack, RECIPIENT) as ni:
            order = await received_order(ni, 2)
    assert order == ["FLASH", "ROUTINE"]


async def test_each_precedence_overtakes_the_ones_below_it(tmp_path: Path) -> None:
    """FLASH before IMMEDIATE (both on the urgent consumer, sorted within the batch), both
    before PRIORITY, which goes before ROUTINE; one precedence keeps its arrival order."""
    published = [
        Precedence.ROUTINE,
        Precedence.IMMEDIATE,
        Precedence.PRIORITY,
        Precedence.FLASH,
        Precedence.ROUTINE,
        Precedence.IMMEDIATE,
    ]
    async with running_stack(tmp_path / "istmo") as stack:
        await queue_for_offline_recipient(stack, published)
        async with await client(stack, RECIPIENT) as ni:
            order = await received_order(ni, len(published))
    assert order == ["FLASH", "IMMEDIATE", "IMMEDIATE", "PRIORITY", "ROUTINE", "ROUTINE"]


async def test_deliveries_an_older_istmo_queued_survive_the_upgrade(tmp_path: Path) -> None:
    """A data directory an Istmo before ADR 7 left: its delivery stream has only
    ``istmo.deliver.*`` and a cap of 20,000 consumers, the agency one consumer filtered on
    ``istmo.deliver.<agency>``, and a bulletin waits there. ``istmo up`` brings the stream
    and consumers up to date in place, and the recipient receives the waiting bulletin."""
    data_dir = tmp_path / "istmo"
    # The stream is swapped with no relay running (one still binding would meet no stream
    # and stop, taking the stack down); the relay runs only for the publisher's resolve.
    async with running_stack(data_dir, with_relay=False) as stack:
        relay = await start_relay(stack, PUBLISHER, labels(Precedence.FLASH))
        try:
            async with await client(stack, PUBLISHER) as hn:
                keys = await hn.resolve(labels(Precedence.FLASH))
                env = seal(
                    content=Content(title="old", text="queued before the upgrade"),
                    labels=labels(Precedence.FLASH),
                    originator=hn.agency,
                    signing_key=hn.keystore.signing_key(),
                    recipients=keys,
                    now=int(time.time()),
                )
        finally:
            await stop_relay(relay)
        nc = await stack.connect_relay(nats_url(stack))
        try:
            js = nc.jetstream(timeout=5)
            # The stream and the agency's consumer as the older Istmo made them.
            config = (await js.stream_info(DELIVER_STREAM)).config
            config.subjects = ["istmo.deliver.*"]
            config.max_consumers = 20_000
            await js.delete_stream(DELIVER_STREAM)
            await js.add_stream(config)
            durable = deliver_durable(RECIPIENT)
            await js.add_consumer(
                DELIVER_STREAM,
                ConsumerConfig(
                    name=durable,
                    durable_name=durable,
                    filter_subject=legacy_deliver_subject(RECIPIENT),
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=30.0,
                    max_deliver=10,
                ),
            )
            bid = env.header.bulletin_id
            await js.publish(
                legacy_deliver_subject(RECIPIENT),
                encode_envelope(env),
                headers={"Nats-Msg-Id": f"{bid}:{RECIPIENT}"},
            )
        finally:
            await nc.close()

    async with running_stack(data_dir) as stack:
        nc = await stack.connect_relay(nats_url(stack))
        try:
            js = nc.jetstream(timeout=5)
            info = await js.stream_info(DELIVER_STREAM)
            # Per precedence (ADR 7) and the group epochs' copies (ADR 21), added in place.
            assert info.config.subjects == [
                "istmo.deliver.*",
                "istmo.deliver.*.*",
                "istmo.deliver.group.*.*.*",
            ]
            assert info.config.max_consumers == 20_000  # nats-server cannot change it
            old = await js.consumer_info(DELIVER_STREAM, deliver_durable(RECIPIENT))
            assert legacy_deliver_subject(RECIPIENT) in (old.config.filter_subjects or [])
            assert old.num_pending == 1
            urgent = await js.consumer_info(DELIVER_STREAM, urgent_durable(RECIPIENT))
            assert urgent.num_pending == 0
        finally:
            await nc.close()
        got: list[str] = []

        async def app(b: ReceivedBulletin) -> None:
            got.append(b.id)

        async with await client(stack, RECIPIENT) as ni:
            assert await ni.receive(app, count=1, timeout=30) == 1
        assert got == [env.header.bulletin_id]


async def test_health_counts_what_waits_on_either_consumer(nats_stack: NatsStackFactory) -> None:
    stack = await nats_stack([RECIPIENT])
    relay = await stack.connect_relay()
    js = relay.jetstream(timeout=5)
    await js.publish(deliver_subject(RECIPIENT, Precedence.FLASH), b"urgent")
    await js.publish(deliver_subject(RECIPIENT, Precedence.ROUTINE), b"routine")
    await js.publish(legacy_deliver_subject(RECIPIENT), b"queued by an older Istmo")
    _, check = await retention_checks(js, [RECIPIENT], now=time.time() + 600)
    assert check.name == f"retention.{RECIPIENT}"
    assert check.detail.startswith(f"{RECIPIENT}: 3 deliveries waiting, the oldest for 10 min")
