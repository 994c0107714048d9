"""``broker.bus.pipeline.Pipeline``: at most ``depth`` tails run at once, every tail is
finished by ``drain``, and a failing tail neither stops the caller nor goes unnoticed."""

from __future__ import annotations

import asyncio
import logging

import pytest

from broker.bus.pipeline import Pipeline


async def test_a_full_pipeline_waits_for_its_oldest_tail() -> None:
    gates = [asyncio.Event() for _ in range(3)]
    done: list[int] = []

    async def tail(i: int) -> None:
        await gates[i].wait()
        done.append(i)

    pipe = Pipeline(2)
    await pipe.add(tail(0))
    await pipe.add(tail(1))
    third = asyncio.create_task(pipe.add(tail(2)))
    await asyncio.sleep(0)  # let it reach the wait
    assert not third.done()  # two running: the third waits
    assert len(pipe) == 2
    gates[1].set()
    await asyncio.sleep(0)
    assert not third.done()  # the oldest (0) is what it waits for, not any
    gates[0].set()
    await third
    assert done == [1, 0]
    gates[2].set()
    await pipe.drain()
    assert done == [1, 0, 2]
    assert len(pipe) == 0


async def test_finished_tails_free_their_place_at_once() -> None:
    pipe = Pipeline(1)
    for _ in range(5):
        await pipe.add(asyncio.sleep(0))
    await pipe.drain()
    assert len(pipe) == 0


async def test_a_failing_tail_is_logged_and_the_caller_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom() -> None:
        raise RuntimeError("tail broke")

    ran: list[str] = []

    async def fine() -> None:
        ran.append("fine")

    pipe = Pipeline(1)
    with caplog.at_level(logging.ERROR, logger="istmo.pipeline"):
        await pipe.add(boom())
        await pipe.add(fine())
        await pipe.drain()
    assert ran == ["fine"]
    assert "a pipelined tail failed" in caplog.text


async def test_a_cancelled_caller_still_lets_the_tail_finish() -> None:
    release = asyncio.Event()
    finished: list[bool] = []

    async def tail() -> None:
        await release.wait()
        finished.append(True)

    pipe = Pipeline(1)
    await pipe.add(tail())
    draining = asyncio.create_task(pipe.drain())
    await asyncio.sleep(0)
    draining.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await draining
    assert finished == [True]  # the acks of stored work are not abandoned


@pytest.mark.parametrize("depth", [0, -1])
def test_a_pipeline_needs_a_depth(depth: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Pipeline(depth)
