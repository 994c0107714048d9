"""A relay answers the push waits its own API loop keeps for the batches it decides, on
its own connection (``PushDoor.answer``), with a real nats-server in both NATS modes.

The wait comes from an agency's account through its import of the API, as an SDK sends
it; the answer goes from another connection of account ISTMO than the one that heard
the request (the relay's main one, not its API thread's). The bundle for the other
relays, published first, then reaches the API loop with nothing left to answer: the
agency's next wait is not pushed the same bulletin again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.msg import Msg

from broker.relay.push import PushDoor, push_first
from schemas.agency import KIND_HEADER, PUSH_KIND, PUSH_STATE_HEADER, PushRequest
from schemas.canonical import canonical_json
from schemas.labels import Precedence
from schemas.push import PUSH_FRAMES_HEADER, PushFrame, decode_push_frames
from schemas.subjects import api_subject
from tests.conftest import NatsStack
from tests.waiting import eventually

AGENCY = "ni-police"
OTHER = "gt-police"  # routed the same bulletin, waits nowhere


@pytest.mark.parametrize("auth", ["config", "operator"])
async def test_the_relay_answers_its_own_waits_once_on_its_own_connection(
    nats_stack: Callable[..., Awaitable[NatsStack]], auth: str
) -> None:
    stack = await nats_stack([AGENCY, OTHER], auth=auth)
    api_nc = await stack.connect_relay()  # the API thread's connection
    main_nc = await stack.connect_relay()  # the relay loop's own
    door = PushDoor()

    async def on_api(msg: Msg) -> None:
        await door.wait(api_nc, AGENCY, msg.reply, PushRequest.model_validate_json(msg.data).wait_s)

    await api_nc.subscribe(api_subject(AGENCY, "push"), cb=on_api)
    stop = asyncio.Event()
    serving = asyncio.create_task(door.serve(api_nc, stop))
    await eventually(lambda: door.serving, what="the door hearing bundles")

    agency = await stack.connect_agency(AGENCY)
    answers: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = agency.new_inbox()
    await agency.subscribe(f"{inbox}.*", cb=answers.put)

    async def ask(n: int, wait_s: int) -> None:
        body = canonical_json(PushRequest(wait_s=wait_s).model_dump(mode="json"))
        await agency.publish(api_subject(AGENCY, "push"), body, reply=f"{inbox}.{n}")
        await eventually(lambda: len(door.waits) == 1, what=f"wait {n} kept")

    try:
        await ask(1, 30)
        frame = PushFrame(Precedence.ROUTINE, b"sealed-envelope", (AGENCY, OTHER))
        await push_first(main_nc, [frame])  # for every relay's waits
        assert await door.answer(main_nc, [frame]) == 1
        first = await asyncio.wait_for(answers.get(), 30)
        assert first.subject == f"{inbox}.1"
        assert (first.headers or {})[KIND_HEADER] == PUSH_KIND
        count = int((first.headers or {})[PUSH_FRAMES_HEADER])
        assert [f.envelope for f in decode_push_frames(first.data, count=count)] == [
            b"sealed-envelope"
        ]
        # Asked again at once, as the SDK does: the bundle is not pushed a second time.
        await ask(2, 1)
        again = await asyncio.wait_for(answers.get(), 30)
        assert again.subject == f"{inbox}.2"
        assert again.data == b""
        assert (again.headers or {})[PUSH_STATE_HEADER] == "idle"
        assert answers.empty()
    finally:
        stop.set()
        await serving
