"""Urgent bulletins pushed ahead of their queued copies (ADR 38), on a real stack.

A relay answers an agency's open ``push`` wait with a FLASH or IMMEDIATE bulletin routed
to it, once the queued copies are stored; the SDK hands it over and receipts it, and only
acks the queued copy when it comes. Nothing else is ever pushed, and never to an agency
the bulletin was not routed to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.manager import JetStreamManager
from sqlmodel import select

from broker.runtime.stack import Stack
from broker.store.registry import AuditRow
from clients.sdk import IstmoClient, ReceivedBulletin
from schemas.agency import KIND_HEADER, PUSH_KIND, PUSH_STATE_HEADER, PushRequest
from schemas.canonical import canonical_json
from schemas.labels import Precedence
from schemas.sealing import parse_envelope
from schemas.subjects import DELIVER_STREAM, api_subject, urgent_durable
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
            assert (msg.headers or {}).get(KIND_HEADER) == PUSH_KIND
            assert parse_envelope(msg.data).header.bulletin_id == bid
            # The agency not routed the bulletin only sees its wait run out.
            assert await emptied(idle) == "idle"


async def test_routine_bulletins_are_only_queued(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        async with await client(stack, RECIPIENT) as ni:
            idle = await wait_open(ni, 2)
            await publish(stack, Precedence.ROUTINE)
            assert await emptied(idle) == "idle"


async def test_a_newer_wait_replaces_the_older(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        async with await client(stack, RECIPIENT) as ni:
            older = await wait_open(ni, 30)
            newer = await wait_open(ni, 30)
            assert await emptied(older) == "replaced"
            bid = await publish(stack, Precedence.IMMEDIATE)
            got = await asyncio.wait_for(newer, 60)
            assert parse_envelope(got.data).header.bulletin_id == bid


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
    tmp_path: Path,
) -> None:
    """With the queue held, the bulletin handed over can only have been pushed; once the
    queue runs again its queued copy is acked, not handed twice, and the receipt is
    stored."""
    handed: list[ReceivedBulletin] = []

    async def app(b: ReceivedBulletin) -> None:
        handed.append(b)

    async with running_stack(tmp_path / "istmo") as stack:
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
