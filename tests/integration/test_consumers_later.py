"""Delivery consumers made after the stack is up (ADR 39), on a real nats-server.

A fresh start of a large directory makes only its first agencies' delivery consumers
before it says it is up, and the rest just after. Until an agency's consumers exist its
deliveries wait in the stream (a limits stream keeps them without a consumer); its SDK,
asking a consumer that is not there, hears "no responders" at once and asks again on its
next round, rather than taking the silence for an old broker and waiting a minute. The
later creation never replaces a consumer another writer made meanwhile (the relay's group
delivery gives members' consumers their group epochs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from broker.bus.server import ANY_PORT
from broker.bus.streams import create_agency_consumers, delivery_consumers, ensure_agency_consumer
from broker.config import Settings
from broker.runtime.health import retention_checks
from broker.runtime.stack import Stack
from schemas.subjects import DELIVER_STREAM, deliver_durables
from tests.integration.recall_kit import BZ, LABELS, take
from tests.integration.stack_inproc import client, nats_url, running_stack, serving
from tests.stackproc import free_port
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

SILENCED = "asking it less often"  # what the SDK logs when a consumer never answers


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["config", "operator"])
async def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    auth = None if request.param == "config" else "operator"
    async with running_stack(tmp_path_factory.mktemp("later") / "istmo", nats_auth=auth) as s:
        yield s


async def publish_to_bz(stack: Stack, title: str) -> str:
    async with await client(stack, "gt-police") as gt:
        result = await gt.publish(title=title, text=f"body of {title}", labels=LABELS)
    assert result.state == "accepted"
    assert tuple(sorted(result.routed)) == BZ
    return str(result.bulletin_id)


async def test_a_delivery_waits_for_a_consumer_made_after_it(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="istmo.sdk")
    assert stack.registry is not None
    nc = await stack.connect_relay(nats_url(stack))
    try:
        js = nc.jetstream(timeout=10)
        for durable in deliver_durables("bz-police"):
            await js.delete_consumer(DELIVER_STREAM, durable)
        bid = await publish_to_bz(stack, "before bz-police had a consumer")
        # What `istmo health` says meanwhile: one agency without its consumers.
        agencies = [u.agency for u in stack.registry.nats_users()]
        checks = await retention_checks(js, agencies, time.time())
        [lacking] = [c for c in checks if c.name == "consumers"]
        assert (lacking.level, lacking.value) == ("warn", 1.0)
        # Asked while there is none: nothing yet, and the SDK did not give up on it.
        assert (await take(stack, "bz-police", count=1, timeout=2)).bulletins == []
        assert SILENCED not in caplog.text
        await create_agency_consumers(nc, "bz-police")
        got = await take(stack, "bz-police", count=1, timeout=30)
        assert [b.id for b in got.bulletins] == [bid]
        checks = await retention_checks(js, agencies, time.time())
        assert [c for c in checks if c.name == "consumers"] == []
    finally:
        await nc.close()


async def test_a_later_creation_never_replaces_a_consumer(stack: Stack) -> None:
    nc = await stack.connect_relay(nats_url(stack))
    try:
        js = nc.jetstream(timeout=10)
        # The relay's group delivery made it first, reading a group epoch.
        await ensure_agency_consumer(js, "jm-police", groups=[("sica-all", 3)])
        await create_agency_consumers(nc, "jm-police")  # groups read before: none
        found = await delivery_consumers(js)
        for durable in deliver_durables("jm-police"):
            subjects = found[durable].filter_subjects or []
            assert any(".group.sica-all.3." in s for s in subjects), subjects
        await ensure_agency_consumer(js, "jm-police")  # as it was
    finally:
        await nc.close()


async def test_a_start_makes_consumers_after_it_is_up_then_again_after_a_restart(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "istmo"
    lines: list[str] = []

    def stack_on(data: Path) -> Stack:
        settings = Settings(
            data_dir=data, nats_port=ANY_PORT, nats_http_port=ANY_PORT, api_port=free_port()
        )
        stack = Stack(settings, out=lines.append)
        stack.consumers_before_up = 0  # every agency's after it is up
        return stack

    def made() -> bool:
        return any("delivery consumers made (" in line for line in lines)

    async with serving(stack_on(data_dir), "the stack to start") as up:
        await eventually(made, what="the stack to make every delivery consumer")
        assert up.registry is not None
        agencies = [u.agency for u in up.registry.nats_users()]
        shown = [line for line in lines if line.startswith(("consumers", "ready"))]
        assert shown[0].startswith(f"consumers {len(agencies)} agencies' delivery consumers")
        assert shown[1] == "ready; Ctrl-C stops"
        nc = await up.connect_relay(nats_url(up))
        try:
            js = nc.jetstream(timeout=10)
            found = await delivery_consumers(js)
            assert {d for a in agencies for d in deliver_durables(a)} <= set(found)
            for durable in deliver_durables("bz-police"):
                await js.delete_consumer(DELIVER_STREAM, durable)
        finally:
            await nc.close()
        bid = await publish_to_bz(up, "stored while bz-police has no consumer")
    # Started again: the one agency without consumers gets them after the start, and
    # what was stored for it meanwhile is delivered.
    lines.clear()
    async with serving(stack_on(data_dir), "the stack to start again") as up:
        await eventually(made, what="the stack to make bz-police's consumers")
        assert any(line.startswith("consumers 1 agencies'") for line in lines)
        got = await take(up, "bz-police", count=1, timeout=30)
        assert [b.id for b in got.bulletins] == [bid]
