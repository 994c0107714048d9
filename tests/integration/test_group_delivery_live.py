"""Group delivery on a live stack (ADR 21): nats-server, relay, SQLite and the SDK.

rc-drugs manages SICA-drugs (the SICA agencies following drug-trafficking, with the two
regional centres). Once its epoch is current, the relay's sweep brings every member's two
delivery consumers to read the epoch's group subjects; from then on a bulletin sealed
under the group is stored once for the group, and every member receives and opens it
exactly once, with a receipt. Proven here, besides: a non-member's consumers hold nothing
of it, a member suspended (and left out of the next epoch) is stored no copy of later
bulletins, and a recall removes the one copy for every member that had not fetched it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT, set_agency_status
from broker.runtime.stack import Stack
from broker.store.groups import current_epochs, ready_epochs
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.sealing import parse_envelope
from schemas.subjects import (
    DELIVER_STREAM,
    deliver_durables,
    deliver_subject,
    group_deliver_subject,
)
from tests.integration.recall_kit import take
from tests.integration.stack_inproc import client, running_stack
from tests.integration.test_group_keys_live import GROUP, MANAGER, define_group
from tests.waiting import eventually

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.slow,
]  # slow: run first (tests/conftest.py)

GT, HN, SV = "gt-police", "hn-police", "sv-police"
OUTSIDER = "jm-police"  # CARICOM: in no SICA group
FLASH = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
    source_grade="A1",
    precedence=Precedence.FLASH,
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(
        tmp_path_factory.mktemp("gdeliver") / "istmo", group_delivery_sweep_s=0.2
    ) as s:
        await define_group(s)
        await ready(s, 1)
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def broker_nc(stack: Stack) -> AsyncIterator[NATS]:
    nc = await stack.connect_relay(stack.nats_urls[0])
    yield nc
    await nc.close()


async def ready(stack: Stack, epoch: int) -> frozenset[str]:
    """Wait for the relay's sweep to open delivery for ``epoch``; its members."""
    assert stack.registry is not None
    registry = stack.registry

    def opened() -> bool:
        return (GROUP, epoch) in ready_epochs(registry, [(GROUP, epoch)])

    await eventually(opened, what=f"group delivery for epoch {epoch}", timeout=60)
    return ready_epochs(registry, [(GROUP, epoch)])[(GROUP, epoch)]


async def next_epoch(stack: Stack) -> tuple[int, frozenset[str]]:
    """The manager makes the group's next epoch (after a directory change it has heard
    of); once the relay opened its delivery, that epoch and its members."""
    assert stack.registry is not None
    async with await client(stack, MANAGER) as rc:

        async def rotated() -> bool:
            return any(r.rotated for r in await rc.rotate_groups())

        await eventually(rotated, what="the manager to make the next epoch")
    epoch = current_epochs(stack.registry, [GROUP])[GROUP].epoch
    return epoch, await ready(stack, epoch)


async def stored_for(nc: NATS, subject: str) -> int:
    info = await nc.jetstream(timeout=5).stream_info(DELIVER_STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def pending(nc: NATS, agency: str) -> int:
    js = nc.jetstream(timeout=5)
    total = 0
    for durable in deliver_durables(agency):
        total += int((await js.consumer_info(DELIVER_STREAM, durable)).num_pending or 0)
    return total


async def receive_all(stack: Stack, agencies: list[str], *, count: int) -> dict[str, list[str]]:
    """What each agency's application is handed within a few seconds (ids)."""

    async def one(agency: str) -> tuple[str, list[str]]:
        got = await take(stack, agency, count=count, timeout=10)
        return agency, [b.id for b in got.bulletins]

    out: dict[str, list[str]] = {}
    for i in range(0, len(agencies), 8):  # a few connections at a time
        for agency, ids in await asyncio.gather(*(one(a) for a in agencies[i : i + 8])):
            out[agency] = ids
    return out


async def test_a_group_bulletin_is_stored_once_and_each_member_opens_it_once(
    stack: Stack, broker_nc: NATS
) -> None:
    members = await ready(stack, 1)
    assert {GT, HN, SV, MANAGER} <= members
    shared = group_deliver_subject(GROUP, 1, Precedence.FLASH)
    before = await stored_for(broker_nc, shared)
    async with await client(stack, GT) as gt:
        result = await gt.publish(title="flash", text="to the group", labels=FLASH, groups=True)
    assert result.state == "accepted"
    assert set(result.routed) == members - {GT}
    # One copy for the whole group, none for any member on its own subject.
    assert await stored_for(broker_nc, shared) == before + 1
    msg = await broker_nc.jetstream().get_last_msg(DELIVER_STREAM, shared)
    assert parse_envelope(msg.data).header.bulletin_id == result.bulletin_id
    for member in (HN, SV, MANAGER):
        with pytest.raises(NotFoundError):
            await broker_nc.jetstream().get_last_msg(
                DELIVER_STREAM, deliver_subject(member, Precedence.FLASH)
            )
    # Every member receives and opens it, exactly once; the originator (a member) is
    # handed nothing of its own bulletin.
    got = await receive_all(stack, sorted(members), count=2)
    assert got[GT] == []
    assert {a: ids for a, ids in got.items() if a != GT} == {
        a: [result.bulletin_id] for a in members - {GT}
    }
    assert {a: await pending(broker_nc, a) for a in sorted(members)} == dict.fromkeys(
        sorted(members), 0
    )
    # Receipts from every member reach the originator.
    async with await client(stack, GT) as gt:

        async def all_receipted() -> bool:
            report = await gt.receipts(result.bulletin_id)
            return {a for a, at in report.recipients if at is not None} == members - {GT}

        await eventually(all_receipted, what="every member's receipt")


async def test_a_non_member_holds_nothing_of_a_group_copy(stack: Stack, broker_nc: NATS) -> None:
    members = await ready(stack, 1)
    assert OUTSIDER not in members
    js = broker_nc.jetstream(timeout=5)
    for durable in deliver_durables(OUTSIDER):
        info = await js.consumer_info(DELIVER_STREAM, durable)
        assert not [s for s in info.config.filter_subjects or () if ".group." in s]
        assert info.num_pending == 0
    for durable in deliver_durables(HN):
        info = await js.consumer_info(DELIVER_STREAM, durable)
        assert [s for s in info.config.filter_subjects or () if ".group." in s]


async def test_a_recall_removes_the_group_copy_for_members_that_had_not_fetched_it(
    stack: Stack, broker_nc: NATS
) -> None:
    members = await ready(stack, 1)
    shared = group_deliver_subject(GROUP, 1, Precedence.FLASH)
    async with await client(stack, GT) as gt:
        result = await gt.publish(title="wrong", text="sent in error", labels=FLASH, groups=True)
        assert result.state == "accepted"
        held = await stored_for(broker_nc, shared)
        recalled = await gt.recall(result.bulletin_id, reason="sent in error")
    assert recalled.state == "done"
    # Nobody had fetched it: the one copy is gone and no member is told anything.
    assert set(recalled.removed) == members - {GT}
    assert recalled.notified == ()
    assert await stored_for(broker_nc, shared) == held - 1
    got = await take(stack, HN, count=1, timeout=2)
    assert got.bulletins == []
    assert got.withdrawals == []


async def test_a_suspended_member_is_stored_no_copy_of_later_bulletins(
    stack: Stack, broker_nc: NATS
) -> None:
    assert stack.registry is not None
    await ready(stack, 1)
    await take(stack, SV, count=10, timeout=1)  # drain
    set_agency_status(stack.registry, SV, "suspended", actor="test", note="group delivery")
    await broker_nc.publish(CONTROL_DIRECTORY_SUBJECT, b"{}")
    epoch, members = await next_epoch(stack)
    assert SV not in members
    waiting = await pending(broker_nc, SV)
    async with await client(stack, GT) as gt:
        result = await gt.publish(title="later", text="after", labels=FLASH, groups=True)
    assert result.state == "accepted"
    assert SV not in result.routed
    shared = group_deliver_subject(GROUP, epoch, Precedence.FLASH)
    assert await stored_for(broker_nc, shared) == 1
    got = await take(stack, HN, count=1, timeout=10)
    assert [b.id for b in got.bulletins] == [result.bulletin_id]
    # The suspended agency's consumers gained nothing: not the copy, not a subject.
    assert await pending(broker_nc, SV) == waiting
    js = broker_nc.jetstream(timeout=5)
    for durable in deliver_durables(SV):
        info = await js.consumer_info(DELIVER_STREAM, durable)
        assert not any(f".{epoch}." in s for s in info.config.filter_subjects or ())
    set_agency_status(stack.registry, SV, "active", actor="test", note="group delivery")
    await broker_nc.publish(CONTROL_DIRECTORY_SUBJECT, b"{}")
