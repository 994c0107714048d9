"""F-14: reconciliation finds every delivery missing from JetStream and re-publishes it.

The delivery stream denies deletes and purges (``deny_delete`` cannot be turned off
again, nats-server refuses: err 10052), so an operator cannot remove single deliveries
through the JetStream API. What an operator *can* do is remove the whole stream
(``nats stream rm ISTMO_DELIVER``), which the next start recreates empty: every pending
delivery is gone. The test does exactly that, through the JetStream API, after one
recipient received everything and while two were offline; then ``istmo reconcile`` must
find 100% of the gaps, re-publish them from the envelope archive, and a second run must
find none; each recipient's application sees each bulletin once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from broker.audit.events import decided_groups
from broker.relay.reconcile import ARCHIVE_STREAM
from schemas.subjects import DELIVER_STREAM
from tests.faults.harness import (
    BZ_RECIPIENTS,
    Publisher,
    Recipient,
    Target,
    audit_rows,
    check,
    connect,
    istmo,
    operator_connect,
    record_run,
)
from tests.stackproc import UpProcess

N = 20

pytestmark = pytest.mark.slow


async def test_f14_reconcile_restores_a_deleted_delivery_stream(
    up: UpProcess, figures: Path
) -> None:
    target = Target.of_up(up)
    gt = await connect(target, "gt-police")
    pub = Publisher(gt)
    assert await pub.prepare() == BZ_RECIPIENTS
    for _ in range(N):
        await pub.publish_one()
    assert len(pub.acked) == N
    online, *offline = BZ_RECIPIENTS
    first = Recipient(online, await connect(target, online))
    assert await first.drain(pub.acked, timeout=30, quiet=0.2)
    await first.client.close()
    await gt.close()

    # Let the relay finish (every bulletin archived and routed), then lose the stream.
    decided = audit_rows(target, "bulletin.decided")
    routed = [
        (row["bulletin_id"], a)
        for row in decided
        for g in decided_groups(row["data"])
        if g.outcome == "routed"
        for a in g.agencies
    ]
    assert (len(decided), len(set(routed))) == (N, N * len(BZ_RECIPIENTS))
    op = await operator_connect(target)
    try:
        js = op.jetstream(timeout=10)
        assert (await js.stream_info(ARCHIVE_STREAM)).state.messages == N
        assert await js.delete_stream(DELIVER_STREAM)
    finally:
        await op.close()
    up.stop()
    up.start()  # recreates ISTMO_DELIVER (empty) and every agency's consumer

    dry = istmo(target, "reconcile", "--dry-run", "--json", "--since", "1h")
    assert dry.returncode == 1, dry.stderr
    assert json.loads(dry.stdout)["gaps"] == N * len(BZ_RECIPIENTS)
    run = istmo(target, "reconcile", "--json", "--since", "1h", "--batch", "25")
    assert run.returncode == 1, run.stderr  # bounded: 25 now, the rest next time
    first_run = json.loads(run.stdout)
    assert (first_run["republished"], first_run["remaining"]) == (25, N * 3 - 25)
    run = istmo(target, "reconcile", "--json", "--since", "1h")
    assert run.returncode == 0, run.stdout + run.stderr
    second = json.loads(run.stdout)
    assert second["gaps"] == N * 3 - 25
    assert second["republished"] == N * 3 - 25
    assert second["unrecoverable"] == 0
    again = json.loads(istmo(target, "reconcile", "--json", "--since", "1h").stdout)
    assert (again["gaps"], again["present"]) == (0, N * 3)  # idempotent
    events = audit_rows(target, "delivery.republished")
    assert len(events) == N * 3
    assert {(e["bulletin_id"], e["subject"]) for e in events} == {
        (bid, a) for bid in pub.attempted.values() for a in BZ_RECIPIENTS
    }

    # Every recipient sees each bulletin once: the one that had them all gets nothing new
    # (its SDK's dedupe store), the two that were offline get everything.
    first.client = await connect(target, online)
    recipients = [first] + [Recipient(a, await connect(target, a)) for a in offline]
    for r in recipients:
        assert await r.drain(pub.acked, timeout=30, quiet=0.5)
    report = await check(target, [pub], recipients)
    print("\n" + report.summary())
    record_run(
        figures,
        "F-14",
        report,
        bulletins=N,
        gaps_injected=N * 3,
        gaps_found=first_run["gaps"],
        republished=first_run["republished"] + second["republished"],
    )
    assert report.ok, report.summary()
    assert first.deliveries, "the recipient that had everything saw the republished copies"
    for r in recipients:
        await r.client.close()
    await asyncio.sleep(0)
