"""Embargo and precedence: when and in which order the relay delivers (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from broker.relay.worker import Relay
from clients.sdk import PublishRejected, ReceivedBulletin
from schemas.envelope import Content
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.sealing import seal
from schemas.subjects import DELIVER_STREAM
from tests.clocks import ManualClock
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.storage_engines import Storage
from tests.waiting import eventually


def labels(precedence: Precedence = Precedence.ROUTINE) -> Labels:
    return Labels(
        topic="border-incident",
        classification=Classification.RESTRICTED,
        tlp=Tlp.AMBER,
        rel_to=("NI",),
        precedence=precedence,
    )


async def test_flash_is_delivered_before_the_routine_backlog(
    storage: Storage, tmp_path: Path
) -> None:
    async with running_stack(
        tmp_path / "istmo", with_relay=False, database_url=storage.pg_url
    ) as stack:
        assert stack.registry is not None
        assert stack.directory is not None
        nc = await stack.connect_relay(nats_url(stack))
        try:
            stop = asyncio.Event()
            first = asyncio.create_task(
                Relay(stack.settings, stack.registry, stack.directory, nc).run(stop)
            )
            async with await client(stack, "hn-police") as hn:
                keys = await hn.resolve(labels())
                stop.set()
                await first  # the relay is down while a backlog builds up
                backlog = [
                    seal(
                        content=Content(title=f"r{i}", text="routine"),
                        labels=labels(Precedence.ROUTINE if i < 20 else Precedence.FLASH),
                        originator=hn.agency,
                        signing_key=hn.keystore.signing_key(),
                        recipients=keys,
                        now=int(time.time()),
                    )
                    for i in range(21)
                ]
                for env in backlog:  # FLASH last
                    await hn._publish_envelope(env)
            stop = asyncio.Event()
            second = asyncio.create_task(
                Relay(stack.settings, stack.registry, stack.directory, nc).run(stop)
            )
            js = nc.jetstream(timeout=10)

            async def queued() -> int:  # an offline recipient's queue, filled by the relay
                info = await js.stream_info(
                    DELIVER_STREAM, subjects_filter="istmo.deliver.ni-police.>"
                )
                return sum((info.state.subjects or {}).values())

            await eventually(queued, until=lambda n: n == 21, what="21 copies queued for ni-police")
            order: list[str] = []

            async def app(b: ReceivedBulletin) -> None:
                order.append(b.labels.precedence.value)

            async with await client(stack, "ni-police") as ni:
                assert await ni.receive(app, count=21, timeout=20) == 21
            stop.set()
            await second
        finally:
            await nc.close()
    assert order[0] == "FLASH"
    assert order[1:] == ["ROUTINE"] * 20


async def test_embargoed_bulletin_waits_for_its_time(storage: Storage, tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo", database_url=storage.pg_url) as stack:
        got: list[tuple[str, float]] = []

        async def app(b: ReceivedBulletin) -> None:
            got.append((b.id, time.time()))

        async with await client(stack, "hn-police") as hn:
            not_before = int(time.time()) + 3
            result = await hn.publish(
                title="t", text="embargoed", labels=labels(), not_before=not_before
            )
            assert result.state == "embargoed"
            async with await client(stack, "ni-police") as ni:
                assert await ni.receive(app, count=1, timeout=1.5) == 0
                assert await ni.receive(app, count=1, timeout=15) == 1
        assert got[0][0] == result.bulletin_id
        assert got[0][1] >= not_before
        async with await client(stack, "hn-police") as hn:
            st = await hn.status(result.bulletin_id)
        assert st["state"] == "accepted"


async def test_the_relay_decides_by_its_own_clock(storage: Storage, tmp_path: Path) -> None:
    """A relay is handed its clock: moved an hour ahead after the bulletin was resolved and
    sealed (its agency API answers by the same clock), it finds the bulletin with a minute
    to live expired, and stamps the refusal with its own time; nothing waits for an hour."""
    async with running_stack(
        tmp_path / "istmo", with_relay=False, database_url=storage.pg_url
    ) as stack:
        assert stack.registry is not None
        assert stack.directory is not None
        clock = ManualClock.at(int(time.time()))
        nc = await stack.connect_relay(nats_url(stack))
        stop = asyncio.Event()
        relay = Relay(stack.settings, stack.registry, stack.directory, nc, clock=clock)
        task = asyncio.create_task(relay.run(stop))
        try:
            async with await client(stack, "hn-police") as hn:
                expires_at = int(time.time()) + 60
                recipients = await hn.resolve(labels(), expires_at=expires_at)
                env = seal(
                    content=Content(title="t", text="b"),
                    labels=labels(),
                    originator="hn-police",
                    signing_key=hn.keystore.signing_key(),
                    recipients=recipients,
                    now=int(time.time()),
                    expires_at=expires_at,
                )
                clock.advance(3600)
                await hn._publish_envelope(env)
                with pytest.raises(PublishRejected) as err:
                    await hn.wait_for_verdict(env.header.bulletin_id)
        finally:
            stop.set()
            await task
            await nc.close()
        assert err.value.code == "expired"
        (row,) = stack.registry.audit_events(type_="bulletin.rejected")
        assert row.time == clock.now_ms()
