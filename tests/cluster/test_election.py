"""``broker.bus.election`` against a real NATS KV bucket: one holder at a time, a stale holder
cannot renew, the lease lapses on the holder's own clock, a clean release hands over at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from broker.bus.election import Election, ElectionTiming
from schemas.errors import ConfigError

StackFactory = Callable[[list[str]], Awaitable[Any]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_one_holder_and_fencing_by_the_holders_clock(nats_stack: StackFactory) -> None:
    stack = await nats_stack([])
    relay = await stack.connect_relay()
    js = relay.jetstream(timeout=5)
    clock = Clock()
    a = Election(js, "sequencer", "A", clock=clock)
    b = Election(js, "sequencer", "B", clock=clock)
    await a.open()
    await b.open()

    lease = await a.try_acquire()
    assert lease is not None
    assert await b.try_acquire() is None  # taken
    assert await b.leader() == "A"
    assert lease.valid()
    assert lease.deadline == pytest.approx(1000.0 + 6.0 - 1.0)

    clock.now += 2.0
    assert await a.renew()
    assert lease.deadline == pytest.approx(1002.0 + 5.0)

    # Paused past its lease on its own clock: it may not append, and may not renew.
    clock.now += 5.5
    assert not lease.valid()
    assert not await a.renew()
    assert a.lease is None


async def test_a_stale_revision_cannot_renew_and_release_hands_over(
    nats_stack: StackFactory,
) -> None:
    stack = await nats_stack([])
    relay = await stack.connect_relay()
    js = relay.jetstream(timeout=5)
    a = Election(js, "sequencer", "A")
    b = Election(js, "sequencer", "B")
    await a.open()
    await b.open()
    lease = await a.try_acquire()
    assert lease is not None
    good = lease.revision
    lease.revision = good + 1000  # as if someone else had written the key since
    assert not await a.renew()
    assert a.lease is None

    # The real holder's revision still stands; a release with it frees the key at once.
    a.lease = lease
    lease.revision = good
    await a.release()
    assert await b.leader() is None
    assert await b.try_acquire() is not None
    assert await b.leader() == "B"


def test_timing_that_cannot_fence_is_refused() -> None:
    with pytest.raises(ConfigError, match="renew"):
        ElectionTiming(ttl_s=3.0, renew_s=2.0, margin_s=1.0, request_s=1.5).check()
    ElectionTiming().check()
