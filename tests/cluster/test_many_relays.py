"""Many relays share the ingest consumer: two ``istmo relay`` processes on the 3-node cluster.

``istmo up --cluster 3 --no-relay`` runs NATS, the API and the sequencer; two relay
processes join the shared durable consumer through all three URLs. A publisher sends 200
bulletins to Belize's three ministries, which receive all along. The checker must find
nothing lost, nothing unexpected, no duplicate reaching an application, one
``bulletin.accepted`` per bulletin, and both relays must have done part of the work.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.faults.harness import (
    RelayProcess,
    Target,
    all_seen,
    bz_load,
    check,
    wait_until,
)
from tests.stackproc import UpProcess

RATE = 20  # bulletins/s
COUNT = 200


def processed(log: Path) -> int:
    found = re.findall(r"relay stopped after (\d+) ingest messages", log.read_text())
    assert found, log.read_text()[-2000:]
    return int(found[-1])


@pytest.mark.slow
async def test_two_relays_share_the_work_and_process_each_bulletin_once(
    up_cluster: UpProcess, tmp_path: Path
) -> None:
    target = Target.of_cluster(up_cluster)
    assert len(target.nats_urls) == 3
    relays = [RelayProcess(target, tmp_path / f"relay-{i}.log") for i in (1, 2)]
    for relay in relays:
        await asyncio.to_thread(relay.start)
    try:
        pub, recipients = await bz_load(target)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for r in recipients:
                tg.create_task(r.run(stop))
            await pub.run(rate=RATE, count=COUNT, duration=COUNT / RATE + 20)
            await wait_until(
                lambda: all_seen(pub, recipients),
                timeout=60,
            )
            await asyncio.sleep(1.0)  # late duplicates would show now
            stop.set()
        report = await check(target, [pub], recipients)
        for r in recipients:
            await r.client.close()
        await pub.client.close()
    finally:
        for relay in relays:
            await asyncio.to_thread(relay.stop)
    shares = [processed(relay.log) for relay in relays]
    print("\n" + report.summary())
    print(f"ingest messages per relay: {shares}")
    assert report.acked == COUNT
    assert report.ok, report.summary()
    assert report.accepted_audited == COUNT  # one bulletin.accepted each
    assert all(n > 0 for n in shares), shares  # both relays did work
    assert sum(shares) >= COUNT
