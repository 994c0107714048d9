"""A nak without a delay comes back at once, whatever the consumer's backoff (measured on
nats-server 2.15.1), so the SDK never sends one: it hands a bulletin back with
``HAND_BACK_DELAY_S``. A raw NATS client that naks at once spends a delivery attempt per
nak, and ten of them dead-letter the bulletin (docs/sdk.md); this test says so, and fails
the day nats-server applies the backoff to such a nak."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker.relay.dead_letters import list_dead_letters
from clients.queues import HAND_BACK_DELAY_S, hand_back
from schemas.labels import Classification, Labels, Tlp
from schemas.subjects import DELIVER_STREAM, deliver_durable
from tests.integration.stack_inproc import client, running_stack
from tests.waiting import eventually

LABELS = Labels(
    topic="border-incident",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("NI",),
)


async def test_the_sdk_hands_back_later_and_a_raw_nak_comes_back_at_once(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        async with await client(stack, "hn-police") as hn:
            await hn.publish(title="nak canary", text="x", labels=LABELS)
        async with await client(stack, "ni-police") as ni:
            sub = await ni._js.pull_subscribe_bind(
                deliver_durable("ni-police"), stream=DELIVER_STREAM
            )
            (msg,) = await sub.fetch(1, timeout=20)
            assert msg.metadata.num_delivered == 1
            # The SDK's hand-back: nothing comes back before its delay.
            await hand_back([msg])
            handed_at = time.monotonic()
            with pytest.raises(TimeoutError):
                await sub.fetch(1, timeout=HAND_BACK_DELAY_S / 5)
            (msg,) = await sub.fetch(1, timeout=30)
            assert msg.metadata.num_delivered == 2
            assert time.monotonic() - handed_at >= HAND_BACK_DELAY_S * 0.9
            # A raw client's nak without a delay: back at once, an attempt each time.
            started = time.monotonic()
            attempts = [msg.metadata.num_delivered]
            await msg.nak()
            while attempts[-1] < 10:
                (msg,) = await sub.fetch(1, timeout=10)
                attempts.append(msg.metadata.num_delivered)
                await msg.nak()
            burned_s = time.monotonic() - started
            # The next pull finds it over max_deliver: nats-server publishes the advisory
            # the relay dead-letters it by, and offers it no more.
            with pytest.raises(TimeoutError):
                await sub.fetch(1, timeout=1)
            await sub.unsubscribe()
        assert attempts == list(range(2, 11))
        assert burned_s < 30  # nine attempts, not spaced by the consumer's 30 s backoff
        assert stack.registry is not None
        registry = stack.registry
        (dead,) = await eventually(
            lambda: list_dead_letters(registry, agency="ni-police"),
            what="the delivery dead-lettered after ten immediate naks",
        )
        assert dead.deliveries == 10
