"""F-18: SIGKILL a recipient between receive and ack, again and again: no duplicate reaches
its application. F-19: an agency offline while bulletins flow receives everything when it
comes back.

F-18 runs the recipient as its own process (``tests.faults.harness receive``), whose
handler logs ``start`` when the SDK hands a bulletin over, holds it 200 ms, and logs
``done`` before returning (then the SDK records the id durably, acks and sends the
receipt). The test kills it with SIGKILL while a handler holds a bulletin, restarts it,
and repeats. Its delivery consumer is shortened for the test (redelivery after 2 s
instead of 30 s), as an operator can with the JetStream API.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from broker.bus.streams import ensure_agency_consumer
from tests.faults.harness import (
    BZ_RECIPIENTS,
    Publisher,
    Recipient,
    RecipientProcess,
    Target,
    all_seen,
    check,
    connect,
    operator_connect,
    record_run,
    wait_until,
)
from tests.stackproc import UpProcess

pytestmark = [pytest.mark.slow, pytest.mark.long]

VICTIM = "bz-police"


async def test_f18_sigkill_recipient_between_receive_and_ack(
    up: UpProcess, tmp_path: Path, figures: Path
) -> None:
    kills, n, rate = 10, 60, 20
    target = Target.of_up(up)
    op = await operator_connect(target)
    try:
        await ensure_agency_consumer(
            op.jetstream(timeout=10), VICTIM, backoff_s=(2.0,), max_deliver=20
        )
    finally:
        await op.close()
    gt = await connect(target, "gt-police")
    pub = Publisher(gt)
    assert await pub.prepare() == BZ_RECIPIENTS
    victim = RecipientProcess(target, VICTIM, tmp_path / "victim", hold_ms=200, batch=1)
    others = [Recipient(a, await connect(target, a)) for a in BZ_RECIPIENTS if a != VICTIM]
    killed = 0
    catch_up: list[float] = []
    try:
        victim.start()
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for r in others:
                tg.create_task(r.run(stop))
            publishing = tg.create_task(pub.run(rate=rate, count=n, duration=30))
            for _ in range(kills):
                if not await wait_until(victim.in_handler, timeout=20, interval=0.02):
                    break
                victim.kill()
                killed += 1
                t0 = time.monotonic()
                held = len(victim.visible)
                victim.start()
                # Recovery: until the restarted process completes a hand-off again.
                await wait_until(lambda h=held: len(victim.visible) > h, timeout=30)
                catch_up.append(time.monotonic() - t0)
            await publishing
            assert await wait_until(
                lambda: pub.acked <= {h for h, _ in victim.visible}, timeout=60
            ), f"{len(victim.visible)} of {len(pub.acked)} after {killed} kills"
            await wait_until(lambda: all_seen(pub, others), timeout=30)
            await asyncio.sleep(2.5)  # a redelivery still due would show now
            stop.set()
        victim.stop()
        report = await check(target, [pub], [*others, victim])
        print("\n" + report.summary())
        print(f"{killed} kills; recovery after each (s): {[round(x, 1) for x in catch_up]}")
        record_run(
            figures,
            "F-18",
            report,
            rate=rate,
            bulletins=n,
            kills=killed,
            recovery_s=[round(x, 2) for x in catch_up],
        )
        assert killed == kills
        victim_result = next(r for r in report.recipients if r.agency == VICTIM)
        # Each hand-off killed in its handler came back (a kill can land just after the
        # handler returned: then nothing comes back, and nothing may be seen twice).
        assert victim_result.dup_wire >= killed // 2
        assert report.ok, report.summary()
    finally:
        victim.kill()
        for r in others:
            await r.client.close()
        await gt.close()


async def test_f19_offline_agency_receives_everything_on_return(
    up: UpProcess, figures: Path
) -> None:
    rate, seconds = 50, 10
    target = Target.of_up(up)
    gt = await connect(target, "gt-police")
    pub = Publisher(gt)
    assert await pub.prepare() == BZ_RECIPIENTS
    online = [Recipient(a, await connect(target, a)) for a in BZ_RECIPIENTS if a != VICTIM]
    try:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for r in online:
                tg.create_task(r.run(stop))
            took = await pub.run(rate=rate, count=rate * seconds, duration=seconds + 20)
            await wait_until(lambda: all_seen(pub, online), timeout=60)
            stop.set()
        # The offline agency comes back: everything is waiting in its durable consumer.
        t0 = time.monotonic()
        back = Recipient(VICTIM, await connect(target, VICTIM))
        assert await back.drain(pub.acked, timeout=90, quiet=1.0)
        catch_up = time.monotonic() - t0
        report = await check(target, [pub], [*online, back])
        print("\n" + report.summary())
        print(f"published {len(pub.acked)} in {took:.1f}s; catch-up on return {catch_up:.1f}s")
        record_run(
            figures,
            "F-19",
            report,
            rate=rate,
            seconds=seconds,
            offline_backlog=len(pub.acked),
            catch_up_s=round(catch_up, 2),
        )
        assert report.ok, report.summary()
        await back.client.close()
    finally:
        for r in online:
            await r.client.close()
        await gt.close()
