"""A large push holds the relay's copies back until it is out (ADR 38), on a real
nats-server: ``push_first`` returns once a relay's ``PushDoor`` has answered its waits and
said so, and after ``PUSH_HOLD_S`` at most when no relay answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

from broker.relay.push import HOLD_ABOVE, PUSH_SUBJECT, PushDoor, push_first
from schemas.labels import Precedence
from schemas.push import PUSH_FRAMES_HEADER, PushFrame, decode_push_frames, encode_push_frames
from tests.waiting import eventually

StackFactory = Callable[[list[str]], Awaitable[Any]]  # conftest's NatsStack
ENVELOPE = b'{"not":"opened by the relay"}'


async def test_a_large_push_returns_once_the_waits_are_answered(
    nats_stack: StackFactory,
) -> None:
    stack = await nats_stack(["gt-police"])
    relay = await stack.connect_relay()
    api = await stack.connect_relay()  # the API loop's own connection, as in a relay
    door = PushDoor()
    stop = asyncio.Event()
    serving = asyncio.create_task(door.serve(api, stop))
    got: list[Msg] = []

    async def on_answer(msg: Msg) -> None:
        got.append(msg)

    waiting = [f"ag-{i:03d}" for i in range(10)]
    for agency in waiting:
        await relay.subscribe(f"_INBOX.test.{agency}", cb=on_answer)
        await door.wait(api, agency, f"_INBOX.test.{agency}", 30)
    await relay.flush()
    await api.flush()
    recipients = waiting + [f"ag-{i:03d}" for i in range(10, HOLD_ABOVE)]
    try:
        await eventually(lambda: door.serving, what="the door to listen")
        # Held as long as it takes the door to answer: the bound is for relays that are away.
        assert (
            await push_first(
                relay, [PushFrame(Precedence.FLASH, ENVELOPE, tuple(recipients))], hold_s=120
            )
            == 1
        )
        await relay.flush()
        # Answered before push_first returned: the replies were at the server already.
        assert sorted(m.subject for m in got) == sorted(f"_INBOX.test.{a}" for a in waiting)
        for m in got:
            assert (m.headers or {}).get(PUSH_FRAMES_HEADER) == "1"
            assert decode_push_frames(m.data, count=1) == [PushFrame(Precedence.FLASH, ENVELOPE)]
        again = encode_push_frames([PushFrame(Precedence.FLASH, ENVELOPE, tuple(waiting))])
        assert await door.deliver(api, again) == 0  # taken: none left
        assert len(door.waits) == 0
    finally:
        stop.set()
        await serving


async def test_with_no_relay_answering_the_hold_ends(nats_stack: StackFactory) -> None:
    stack = await nats_stack(["gt-police"])
    relay = await stack.connect_relay()
    recipients = [f"ag-{i:03d}" for i in range(HOLD_ABOVE)]
    # No relay listens (no responders): nothing to wait for.
    assert (
        await push_first(
            relay, [PushFrame(Precedence.FLASH, ENVELOPE, tuple(recipients))], hold_s=600
        )
        == 0
    )
    # One listens and never answers: the copies are stored after the hold's bound.
    heard: list[Msg] = []

    async def silent(msg: Msg) -> None:
        heard.append(msg)

    await relay.subscribe(PUSH_SUBJECT, cb=silent)
    await relay.flush()
    assert (
        await push_first(
            relay, [PushFrame(Precedence.FLASH, ENVELOPE, tuple(recipients))], hold_s=0.2
        )
        == 0
    )
    await eventually(lambda: len(heard) == 1, what="the push heard")
    # Below the threshold nothing is held (and nothing waits for an answer).
    assert (
        await push_first(
            relay, [PushFrame(Precedence.FLASH, ENVELOPE, tuple(recipients[: HOLD_ABOVE - 1]))]
        )
        == 0
    )
