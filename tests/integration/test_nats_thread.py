"""A service thread (``broker.bus.nats_thread.NatsThread``) that is still connecting gives
up when its process stops: a relay whose nats-server died while it started its agency API
and attachments threads used to wait the whole start timeout (30 s) for a connection
nats-py retries for ever, and its stack missed its own stop.

The connection is real: nats-py against a loopback port nothing listens on."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client as NATS

from broker.bus.nats_thread import NatsThread
from schemas.errors import BusUnavailable
from tests.stackproc import free_port
from tests.waiting import eventually


def unreachable() -> NatsThread:
    """A thread whose connection is retried for ever (as the relay's are), to a port that
    nothing listens on; it would serve until stopped."""
    url = f"nats://127.0.0.1:{free_port()}"

    async def connect() -> NATS:
        return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                                  connect_timeout=1)  # fmt: skip

    async def serve(nc: NATS, stop: asyncio.Event, ready: object) -> None:
        raise AssertionError("never connected, never served")

    return NatsThread("istmo-test-unreachable", connect, serve)


async def test_a_thread_still_connecting_gives_up_when_its_caller_stops() -> None:
    thread = unreachable()
    stop = asyncio.Event()
    starting = asyncio.create_task(thread.start(timeout=600, stop=stop))
    await eventually(lambda: thread._task is not None, what="the thread to be connecting")
    stop.set()
    # Long before the start's own timeout: the wait is for the condition, the bound only
    # keeps a regression from hanging the suite.
    with pytest.raises(BusUnavailable, match="was stopped before it was ready"):
        await asyncio.wait_for(starting, 120)
    await thread.stop(timeout=120)
    assert not thread._thread.is_alive()


async def test_a_thread_stopped_before_its_loop_runs_does_not_connect() -> None:
    thread = unreachable()
    await thread.stop(timeout=1)  # never started: nothing to join
    with pytest.raises(BusUnavailable, match="was stopped before it was ready"):
        await thread.start(timeout=600)
    await thread.stop(timeout=120)
    assert not thread._thread.is_alive()
