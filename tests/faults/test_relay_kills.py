"""F-02 (single-node profile): SIGKILL the relay repeatedly under load.

``istmo up --no-relay`` runs NATS, the API and the sequencer; the relay is its own
process, killed with SIGKILL ten times, a few seconds apart, while a publisher sends 30
bulletins/s to Belize's three ministries, which receive all along. After the load, the
checker must find nothing lost, nothing unexpected, no duplicate reaching an application,
and an audit log that verifies with one ``bulletin.accepted`` per acked bulletin and one
receipt per bulletin an application saw. F-01 (the cluster profile) is in
``tests/cluster/test_cluster_faults.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.harness import (
    RelayProcess,
    Target,
    accepted_count,
    all_seen,
    bz_load,
    check,
    record_run,
    wait_until,
)
from tests.stackproc import UpProcess

# Minutes of load and faults: on demand (`./scripts/test -m long`), not in the default run.
pytestmark = pytest.mark.long

# The catalogue's DEV profile proposes 100 bulletins/s (to calibrate). Each Belize ministry's
# SDK takes about 35 bulletins/s here (decrypt, verify, store its receipt, ack), so 30/s,
# for as long as ten kills take.
RATE = 30  # bulletins/s
SECONDS = 70
KILLS = 10
KILL_EVERY_S = 3.0


@pytest.mark.slow
async def test_f02_sigkill_relay_repeatedly_under_load(
    up_no_relay: UpProcess, tmp_path: Path, figures: Path
) -> None:
    target = Target.of_up(up_no_relay)
    relay = RelayProcess(target, tmp_path / "relay.log")
    relay.start()
    recovery: list[float] = []
    try:
        pub, recipients = await bz_load(target)
        stop = asyncio.Event()

        async def killer() -> None:
            for _ in range(KILLS):
                await asyncio.sleep(KILL_EVERY_S)
                relay.kill()
                killed = time.monotonic()
                before = await asyncio.to_thread(accepted_count, target)
                await asyncio.to_thread(relay.start)
                # Recovery: from the kill until the new relay accepts a bulletin again.
                await wait_until(
                    lambda b=before: accepted_count(target) > b, timeout=30, interval=0.05
                )
                recovery.append(time.monotonic() - killed)

        async with asyncio.TaskGroup() as tg:
            for r in recipients:
                tg.create_task(r.run(stop))
            kills = tg.create_task(killer())
            took = await pub.run(rate=RATE, count=RATE * SECONDS, duration=SECONDS + 10)
            await kills
            # Batches the killed relays held come back after the ack wait (30 s).
            await wait_until(
                lambda: all_seen(pub, recipients),
                timeout=90,
            )
            await asyncio.sleep(1.0)  # late duplicates would show now
            stop.set()
        report = await check(target, [pub], recipients)
        for r in recipients:
            await r.client.close()
        await pub.client.close()
        print("\n" + report.summary())
        print(f"publish took {took:.1f}s; recovery after each kill (s): {recovery}")
        record_run(
            figures,
            "F-02",
            report,
            rate=RATE,
            seconds=SECONDS,
            kills=KILLS,
            recipients=len(recipients),
            recovery_s=[round(x, 2) for x in recovery],
        )
        assert len(recovery) == KILLS
        assert report.acked > 0
        assert report.unknown == 0, pub.errors
        assert report.ok, report.summary()
    finally:
        relay.stop()
