"""F-20: a bulletin its recipient's handler always fails on is dead-lettered after the
delivery limit, audited, kept, and redriven once the handler is fixed; the same for an
ingest message no relay manages to process.

The delivery consumer of the failing agency is shortened for the test (MaxDeliver 3,
BackOff 0.5 s, 1 s instead of 10 and about 3 h), as an operator can with the JetStream
API; everything else runs as deployed: nats-server's max_deliver advisory, the relay's
dead-letter path, ``istmo admin dead-letters`` and ``istmo admin redrive``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from broker.bus.streams import ensure_agency_consumer
from broker.relay.dead_letters import DEAD_STREAM, INGEST_MAX_ATTEMPTS
from clients.sdk import ReceivedBulletin
from schemas.labels import Precedence
from schemas.subjects import INGEST_STREAM, RELAY_INGEST_DURABLE
from tests.faults.harness import (
    BZ_RECIPIENTS,
    Publisher,
    Recipient,
    RelayProcess,
    Target,
    audit_rows,
    check,
    connect,
    istmo,
    operator_connect,
    record_run,
)
from tests.stackproc import UpProcess
from tests.waiting import eventually

FAILING = "bz-police"
N = 3
MAX_DELIVER = 3

pytestmark = pytest.mark.slow


async def test_f20_handler_always_fails_dead_letter_then_redrive(
    up: UpProcess, figures: Path
) -> None:
    target = Target.of_up(up)
    op = await operator_connect(target)
    try:
        await ensure_agency_consumer(
            op.jetstream(timeout=10), FAILING, backoff_s=(0.5, 1.0), max_deliver=MAX_DELIVER
        )
        gt = await connect(target, "gt-police")
        pub = Publisher(gt)
        assert await pub.prepare() == BZ_RECIPIENTS
        for _ in range(N - 1):
            await pub.publish_one()
        # The last is a FLASH: its recipient's urgent consumer (ADR 7) dead-letters it.
        pub.labels = pub.labels.model_copy(update={"precedence": Precedence.FLASH})
        await pub.publish_one()
        assert len(pub.acked) == N
        bids = set(pub.attempted.values())
        healthy = [Recipient(a, await connect(target, a)) for a in BZ_RECIPIENTS if a != FAILING]
        for r in healthy:
            assert await r.drain(pub.acked, timeout=30, quiet=0.2)

        # The failing agency's handler throws on everything it gets.
        police = await connect(target, FAILING)
        failures = 0

        async def broken(_b: ReceivedBulletin) -> None:
            raise RuntimeError("handler broken")

        def dead() -> set[str]:
            return {
                e["bulletin_id"]
                for e in audit_rows(target, "delivery.dead_lettered")
                if e["subject"] == FAILING
            }

        async def fail_then_dead() -> set[str]:
            nonlocal failures
            try:
                await police.receive(broken, timeout=1.0, batch=16)
            except RuntimeError:
                failures += 1
            return dead()

        t0 = time.monotonic()
        await eventually(
            fail_then_dead,
            until=lambda got: got == bids,
            what=f"{N} dead letters after {MAX_DELIVER} failures each",
            timeout=180,
            interval=0,
            context=lambda: f"{failures} handler failures",
        )
        took = time.monotonic() - t0
        events = [e for e in audit_rows(target, "delivery.dead_lettered")]
        assert len(events) == N  # once each, though the advisory may be handled twice
        for e in events:
            assert (e["actor"], e["reason"]) == ("relay", "max_deliver")
            assert e["data"]["recipient"] == FAILING
            assert e["data"]["deliveries"] == MAX_DELIVER
        # Kept: a copy of each in ISTMO_DEAD (deletes and purges denied there).
        info = await op.jetstream().stream_info(DEAD_STREAM)
        assert info.state.messages == N
        assert info.config.deny_delete
        assert info.config.deny_purge
        # No longer offered to the agency.
        seen: list[str] = []

        async def fixed(b: ReceivedBulletin) -> None:
            seen.append(b.title)

        assert await police.receive(fixed, timeout=2) == 0

        # The agency sees its own dead letters (and another agency none of them).
        mine = await police.dead_letters()
        assert {d["bulletin_id"] for d in mine} == bids
        assert {(d["kind"], d["deliveries"]) for d in mine} == {("deliver", MAX_DELIVER)}
        assert await healthy[0].client.dead_letters() == []

        # Operators see them, and redrive them once the handler is fixed.
        listed = istmo(target, "admin", "dead-letters", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert {r["bulletin_id"] for r in rows} == bids
        assert {(r["kind"], r["agency"], r["redriven"]) for r in rows} == {
            ("deliver", FAILING, False)
        }
        done = istmo(target, "admin", "redrive", "--agency", FAILING)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{N} of {N} redriven" in done.stdout
        again = istmo(target, "admin", "redrive", "--agency", FAILING)
        assert "0 of 0 redriven" in again.stdout  # nothing pending: idempotent
        assert len(audit_rows(target, "delivery.redriven")) == N
        assert istmo(target, "admin", "dead-letters").stdout.startswith("no dead letters")
        assert await police.dead_letters() == []

        fixed_recipient = Recipient(FAILING, police)
        assert await fixed_recipient.drain(pub.acked, timeout=30)
        report = await check(target, [pub], [*healthy, fixed_recipient])
        print("\n" + report.summary())
        print(f"dead-lettered {N} after {MAX_DELIVER} deliveries in {took:.1f}s")
        record_run(
            figures,
            "F-20",
            report,
            bulletins=N,
            max_deliver=MAX_DELIVER,
            dead_letter_s=round(took, 2),
            handler_failures=failures,
        )
        assert report.ok, report.summary()
        for r in [*healthy, fixed_recipient]:
            await r.client.close()
        await gt.close()
    finally:
        await op.close()


async def test_f20_ingest_poison_dead_letter_then_redrive(
    up_no_relay: UpProcess, tmp_path: Path, figures: Path
) -> None:
    target = Target.of_up(up_no_relay)
    op = await operator_connect(target)
    relay = RelayProcess(target, tmp_path / "relay.log")
    try:
        gt = await connect(target, "gt-police")
        pub = Publisher(gt)
        relay.start()  # the relay answers the SDK's resolve
        await pub.prepare()
        relay.stop()
        poison = await pub.publish_one()
        poison_bid = pub.attempted[poison]
        # A relay worker that dies on it every time, as JetStream sees one: it takes the
        # message and never acks (nak: redelivered at once instead of after the ack wait).
        sub = await op.jetstream().pull_subscribe_bind(RELAY_INGEST_DURABLE, stream=INGEST_STREAM)
        for _ in range(INGEST_MAX_ATTEMPTS):
            (msg,) = await sub.fetch(1, timeout=5)
            await msg.nak()
        await sub.unsubscribe()
        for _ in range(4):
            await pub.publish_one()

        relay.start()
        await eventually(
            lambda: audit_rows(target, "ingest.dead_lettered"),
            what="the poison bulletin dead-lettered",
            context=relay.log.read_text,
        )
        (event,) = audit_rows(target, "ingest.dead_lettered")
        assert (event["bulletin_id"], event["subject"]) == (poison_bid, "gt-police")
        assert event["data"]["deliveries"] == INGEST_MAX_ATTEMPTS + 1
        recipients = [Recipient(a, await connect(target, a)) for a in BZ_RECIPIENTS]
        others = pub.acked - {poison}
        for r in recipients:
            assert await r.drain(others, timeout=30, quiet=0.5)
            assert poison not in {h for h, _ in r.visible}

        listed = istmo(target, "admin", "dead-letters", "--json")
        (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (row["kind"], row["bulletin_id"]) == ("ingest", poison_bid)
        done = istmo(target, "admin", "redrive", "--dead-seq", str(row["dead_seq"]))
        assert done.returncode == 0, done.stdout + done.stderr
        assert (event := audit_rows(target, "ingest.redriven")[0])["bulletin_id"] == poison_bid
        for r in recipients:
            assert await r.drain(pub.acked, timeout=30, quiet=0.5)
        report = await check(target, [pub], recipients)
        print("\n" + report.summary())
        record_run(figures, "F-20-ingest", report, ingest_attempts=INGEST_MAX_ATTEMPTS + 1)
        assert report.ok, report.summary()
        for r in recipients:
            await r.client.close()
        await gt.close()
    finally:
        relay.stop()
        await op.close()
        await asyncio.sleep(0)
