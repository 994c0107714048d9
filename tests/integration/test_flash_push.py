"""Bulletins pushed ahead of their queued copies (ADR 38, ADR 43), on a real stack.

A relay answers an agency's open ``push`` wait with the bulletins of a decided batch
routed to it (every one while the relay keeps up, only FLASH and IMMEDIATE ones under a
backlog), once their decisions are recorded; the SDK hands them over and receipts them,
never ahead of a bulletin that waited longer in its queue, and only acks the queued copy
when it comes. Nothing is ever pushed to an agency the bulletin was not routed to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.manager import JetStreamManager
from sqlmodel import select

from broker.relay.push import PUSH_ALL_BELOW
from broker.runtime.stack import Stack
from broker.store.registry import AuditRow
from clients.sdk import IstmoClient, ReceivedBulletin
from schemas.agency import KIND_HEADER, PUSH_KIND, PUSH_STATE_HEADER, PushRequest
from schemas.canonical import canonical_json
from schemas.labels import Precedence
from schemas.push import PUSH_FRAMES_HEADER, decode_push_frames
from schemas.sealing import parse_envelope
from schemas.subjects import (
    DELIVER_STREAM,
    INGEST_STREAM,
    RELAY_INGEST_DURABLE,
    api_subject,
    deliver_durable,
    deliver_subject,
    delivery_msg_id,
    urgent_durable,
)
from tests.integration.stack_inproc import (
    client,
    nats_url,
    running_stack,
    start_relay,
    stop_relay,
)
from tests.integration.test_precedence_queue import PUBLISHER, RECIPIENT, labels
from tests.waiting import eventually

# The queue tests' publisher, recipient and labels (releasable to NI only).
OUTSIDER = "gt-police"  # not releasable: rel_to names NI only


def push_body(wait_s: int) -> bytes:
    return canonical_json(PushRequest(wait_s=wait_s).model_dump(mode="json"))


async def wait_open(agency: IstmoClient, wait_s: int) -> asyncio.Future[Msg]:
    """Send ``agency``'s push wait; returns its answer to come. Returns once the relay has
    taken the wait: a later request of the same connection is answered after it (one
    relay answers a connection's requests in order)."""
    nc: NATS = agency._nc
    answer: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_answer(msg: Msg) -> None:
        if not answer.done():
            answer.set_result(msg)

    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=on_answer, max_msgs=1)
    await nc.publish(api_subject(agency.agency, "push"), push_body(wait_s), reply=inbox)
    await agency.withheld()  # answered after the wait was taken
    return answer


def pushed_ids(msg: Msg) -> list[tuple[Precedence, str]]:
    """(precedence, bulletin id) of each bulletin a push answer carries."""
    assert (msg.headers or {}).get(KIND_HEADER) == PUSH_KIND
    count = int((msg.headers or {})[PUSH_FRAMES_HEADER])
    return [
        (f.precedence, parse_envelope(f.envelope).header.bulletin_id)
        for f in decode_push_frames(msg.data, count=count)
    ]


async def emptied(answer: asyncio.Future[Msg]) -> str | None:
    """Why a wait was answered without a bulletin (``Istmo-Push``); fails if it carried
    one."""
    msg = await asyncio.wait_for(answer, 60)
    assert msg.data == b""
    return (msg.headers or {}).get(PUSH_STATE_HEADER)


async def publish(stack: Stack, precedence: Precedence) -> str:
    async with await client(stack, PUBLISHER) as hn:
        result = await hn.publish(title="boats", text="two boats", labels=labels(precedence))
    return result.bulletin_id


async def test_a_flash_bulletin_answers_the_recipients_wait_and_nobody_elses(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        async with await client(stack, RECIPIENT) as ni, await client(stack, OUTSIDER) as gt:
            pushed = await wait_open(ni, 30)
            idle = await wait_open(gt, 2)
            bid = await publish(stack, Precedence.FLASH)
            msg = await asyncio.wait_for(pushed, 60)
            assert pushed_ids(msg) == [(Precedence.FLASH, bid)]
            # The agency not routed the bulletin only sees its wait run out.
            assert await emptied(idle) == "idle"


async def test_a_routine_bulletin_is_pushed_while_the_relay_keeps_up(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        async with await client(stack, RECIPIENT) as ni, await client(stack, OUTSIDER) as gt:
            pushed = await wait_open(ni, 30)
            idle = await wait_open(gt, 2)
            bid = await publish(stack, Precedence.ROUTINE)
            assert pushed_ids(await asyncio.wait_for(pushed, 60)) == [(Precedence.ROUTINE, bid)]
            assert await emptied(idle) == "idle"


@pytest.mark.parametrize(
    ("relay_batch", "routine"),
    [
        (64, PUSH_ALL_BELOW),  # a batch of PUSH_ALL_BELOW or more: behind its traffic
        (4, 4),  # a full batch, however small the relay's batches are
    ],
)
async def test_under_a_backlog_only_urgent_bulletins_are_pushed_all_in_one_answer(
    tmp_path: Path, relay_batch: int, routine: int
) -> None:
    """A batch of PUSH_ALL_BELOW bulletins or more, or a full one, means the relay fell
    behind: its ROUTINE ones are only queued, and the urgent ones of a batch reach the
    wait together, most urgent first."""
    async with running_stack(tmp_path / "istmo", relay_batch=relay_batch) as stack:
        nc = await stack.connect_relay(nats_url(stack))
        jsm = nc.jsm()
        await jsm.pause_consumer(INGEST_STREAM, RELAY_INGEST_DURABLE, "2099-01-01T00:00:00Z")
        try:
            async with await client(stack, PUBLISHER) as hn:
                # Stored for the relay, which decides them in as few batches as it may.
                for _ in range(routine):
                    await hn.publish(
                        title="b", text="t", labels=labels(Precedence.ROUTINE), wait=False
                    )
                urgent = [
                    (
                        await hn.publish(title="b", text="t", labels=labels(p), wait=False)
                    ).bulletin_id
                    for p in (Precedence.IMMEDIATE, Precedence.FLASH)
                ]
            async with await client(stack, RECIPIENT) as ni:
                pushed = await wait_open(ni, 30)
                await jsm.resume_consumer(INGEST_STREAM, RELAY_INGEST_DURABLE)
                got = pushed_ids(await asyncio.wait_for(pushed, 60))
        finally:
            await nc.close()
        # With batches of 4 the urgent two come after a full batch, in a batch of their own.
        assert got == [(Precedence.FLASH, urgent[1]), (Precedence.IMMEDIATE, urgent[0])]


async def test_a_newer_wait_replaces_the_older(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        async with await client(stack, RECIPIENT) as ni:
            older = await wait_open(ni, 30)
            newer = await wait_open(ni, 30)
            assert await emptied(older) == "replaced"
            bid = await publish(stack, Precedence.IMMEDIATE)
            got = await asyncio.wait_for(newer, 60)
            assert pushed_ids(got) == [(Precedence.IMMEDIATE, bid)]


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"wait_s":0}', b'{"wait_s":31}', b'{"wait_s":5,"more":1}', b"x" * 70_000],
)
async def test_a_bad_wait_is_refused_and_audited(tmp_path: Path, body: bytes) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        async with await client(stack, RECIPIENT) as ni:
            nc: NATS = ni._nc
            try:
                answer = await nc.request(api_subject(RECIPIENT, "push"), body, timeout=30)
            except nats.errors.MaxPayloadError:
                return  # over NATS's own limit: it never left
            assert b'"error"' in answer.data
        assert stack.registry is not None
        with stack.registry.session() as s:
            rows = list(s.exec(select(AuditRow).where(AuditRow.type == "request.rejected")))
        assert [r.actor for r in rows] == [RECIPIENT]


@contextlib.asynccontextmanager
async def urgent_queue_paused(stack: Stack) -> AsyncIterator[JetStreamManager]:
    """The recipient's urgent consumer holds its deliveries for now: whatever the SDK
    hands over meanwhile was pushed. Resumed at the end."""
    nc = await stack.connect_relay(nats_url(stack))
    jsm = nc.jsm()
    try:
        await jsm.pause_consumer(DELIVER_STREAM, urgent_durable(RECIPIENT), "2099-01-01T00:00:00Z")
        yield jsm
    finally:
        await jsm.resume_consumer(DELIVER_STREAM, urgent_durable(RECIPIENT))
        await nc.close()


async def pushed_while_receiving(stack: Stack, handed: list[ReceivedBulletin]) -> list[str]:
    """Publish FLASH bulletins, one per try, until the running receive has handed one
    more over (its wait opens a moment after it starts, and again after a relay
    restarts); returns every id published."""
    published: list[str] = []
    before = len(handed)

    async def one_handed() -> bool:
        if len(handed) == before:
            published.append(await publish(stack, Precedence.FLASH))
        return len(handed) > before

    await eventually(one_handed, what="a pushed bulletin handed over", interval=0.2)
    return published


async def settled(stack: Stack, handed: list[ReceivedBulletin], published: list[str]) -> None:
    """Every bulletin published is handed over once, and its queued copy acked."""
    nc = await stack.connect_relay(nats_url(stack))
    js = nc.jetstream(timeout=10)

    async def clean() -> bool:
        info = await js.consumer_info(DELIVER_STREAM, urgent_durable(RECIPIENT))
        return info.num_pending == 0 and info.num_ack_pending == 0

    try:
        await eventually(
            lambda: len(handed) >= len(published), what="every bulletin handed", timeout=120
        )
        await eventually(clean, what="the queued copies acked", timeout=120)
    finally:
        await nc.close()
    assert sorted(b.id for b in handed) == sorted(published)


async def test_the_sdk_hands_a_pushed_flash_once_and_settles_its_queued_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the queue held, the bulletin handed over can only have been pushed; once the
    queue runs again its queued copy is acked, not handed twice, and the receipt is
    stored. A later copy under that bulletin's delivery id is acked by its id alone,
    unread (here it is not even an envelope); one under any other id is read, and
    dropped as what it is."""
    handed: list[ReceivedBulletin] = []

    async def app(b: ReceivedBulletin) -> None:
        handed.append(b)

    async with running_stack(tmp_path / "istmo", duplicate_window_s=1) as stack:
        async with await client(stack, RECIPIENT) as ni:
            receiving = asyncio.create_task(ni.receive(app, timeout=600))
            try:
                async with urgent_queue_paused(stack):
                    published = await pushed_while_receiving(stack, handed)
                    first = handed[0].id
                    async with await client(stack, PUBLISHER) as hn:
                        await eventually(
                            lambda: hn.receipts(first),
                            until=lambda r: dict(r.recipients)[RECIPIENT] is not None,
                            what="the pushed bulletin's receipt",
                        )
                await settled(stack, handed, published)
                caplog.set_level(logging.WARNING, logger="istmo.sdk")
                nc = await stack.connect_relay(nats_url(stack))
                js = nc.jetstream(timeout=10)

                async def stored(msg_id: str) -> bool:
                    """Stored once the stream's duplicate window (1 s here) let it in."""
                    ack = await js.publish(
                        deliver_subject(RECIPIENT, Precedence.FLASH),
                        b"not an envelope",
                        headers={"Nats-Msg-Id": msg_id},
                    )
                    return not ack.duplicate

                try:
                    known = delivery_msg_id(first, RECIPIENT)
                    for msg_id in (known, f"{known}:r1"):
                        await eventually(lambda m=msg_id: stored(m), what=f"{msg_id} stored")
                finally:
                    await nc.close()
                await settled(stack, handed, published)
                dropped = [r for r in caplog.records if "non-Istmo message" in r.getMessage()]
                assert len(dropped) == 1
            finally:
                receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiving


async def test_after_a_relay_restart_the_sdk_waits_again(tmp_path: Path) -> None:
    """The relay answers every wait it keeps as it stops; the SDK asks again (of no relay
    at first: no responders, then again), and the next relay pushes."""
    handed: list[ReceivedBulletin] = []

    async def app(b: ReceivedBulletin) -> None:
        handed.append(b)

    async with running_stack(tmp_path / "istmo", with_relay=False) as stack:
        relay = await start_relay(stack, RECIPIENT, labels(Precedence.FLASH))
        async with await client(stack, RECIPIENT) as ni:
            receiving = asyncio.create_task(ni.receive(app, timeout=600))
            try:
                async with urgent_queue_paused(stack):
                    published = await pushed_while_receiving(stack, handed)
                    await stop_relay(relay)
                    relay = await start_relay(stack, RECIPIENT, labels(Precedence.FLASH))
                    published += await pushed_while_receiving(stack, handed)
                await settled(stack, handed, published)
            finally:
                receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiving
                await stop_relay(relay)


@pytest.mark.parametrize("immediate", [0, 2])
async def test_a_pushed_routine_bulletin_never_overtakes_one_that_waited_longer(
    tmp_path: Path, immediate: int
) -> None:
    """Three ROUTINE bulletins (and ``immediate`` IMMEDIATE ones, in the urgent queue)
    wait; the receiver takes one at a time, and while it handles the first another
    ROUTINE one is published and pushed to it. It is handed over after all of them, most
    urgent first, and its queued copy is settled, not handed twice. With IMMEDIATE ones
    waiting, both queues are asked at once while the push waits (each for one): the
    IMMEDIATE one is taken and the ROUTINE one it gave kept for the next round."""
    handed: list[ReceivedBulletin] = []
    async with running_stack(tmp_path / "istmo") as stack:
        older = [await publish(stack, Precedence.ROUTINE) for _ in range(3)]
        urgent = [await publish(stack, Precedence.IMMEDIATE) for _ in range(immediate)]
        newer: list[str] = []
        nc = await stack.connect_relay(nats_url(stack))
        js = nc.jetstream(timeout=10)

        async def queued_copy_stored() -> bool:
            info = await js.consumer_info(DELIVER_STREAM, deliver_durable(RECIPIENT))
            return info.num_pending + info.num_ack_pending >= 4

        async def app(b: ReceivedBulletin) -> None:
            handed.append(b)
            if len(handed) == 1:
                # Pushed before its copy is stored, so it is there by then.
                newer.append(await publish(stack, Precedence.ROUTINE))
                await eventually(queued_copy_stored, what="the newer bulletin's copy")

        try:
            async with await client(stack, RECIPIENT) as ni:
                await ni.receive(app, count=4 + immediate, timeout=120, batch=1)
                await eventually(
                    lambda: ni.receive(app, timeout=0.5), until=lambda n: n == 0, what="no more"
                )
        finally:
            await nc.close()
        assert [b.id for b in handed] == [*urgent, *older, *newer]
