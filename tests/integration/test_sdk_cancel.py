"""``IstmoClient.receive`` stops when its task is cancelled, even when the cancellation
was swallowed below it: Python 3.11's ``asyncio.wait_for`` (inside nats-py's fetch) can
lose one that arrives as its wait completes, and a handler may catch one. Here the
handler swallows it, which is deterministic; the request stays counted on the task, and
receive must honour it instead of handing over the next bulletins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.sdk import ReceivedBulletin
from schemas.labels import Classification, Labels, Tlp
from tests.integration.stack_inproc import client, running_stack

LABELS = Labels(
    topic="border-incident",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("NI",),
)


async def test_a_swallowed_cancel_still_stops_receive(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        async with await client(stack, "hn-police") as hn:
            for i in range(3):
                await hn.publish(title=f"b{i}", text="x", labels=LABELS)
        seen: list[str] = []

        async def swallowing(b: ReceivedBulletin) -> None:
            seen.append(b.title)
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                pass  # swallowed, as wait_for on 3.11 sometimes does

        async with await client(stack, "ni-police") as ni:
            receiving = asyncio.create_task(ni.receive(swallowing, count=3, timeout=20))
            with pytest.raises(asyncio.CancelledError):
                await receiving
            assert len(seen) == 1  # the next two were handed back, not to the application
            # Handed back (nak, after HAND_BACK_DELAY_S), not lost: a later receive gets them.
            rest: list[str] = []

            async def keep(b: ReceivedBulletin) -> None:
                rest.append(b.title)

            assert await ni.receive(keep, count=2, timeout=20) == 2
            assert sorted(seen + rest) == ["b0", "b1", "b2"]
