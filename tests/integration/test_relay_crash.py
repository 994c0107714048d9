"""No loss, no duplicates: SIGKILL the relay while 600 bulletins are in flight.

The relay runs as its own process (`istmo relay`) beside an embedded NATS; the test kills
it with SIGKILL mid-stream, starts a new one, and checks with the catalogue's harness that
every accepted bulletin reached each permitted recipient's application exactly once, and
nobody else's. On SQLite and on PostgreSQL (``storage``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import func, select

from broker.runtime.stack import Stack
from broker.store.registry import AuditRow, BulletinRow
from clients.sdk import ReceivedBulletin
from schemas.envelope import Content
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.sealing import seal
from schemas.subjects import DELIVER_STREAM, deliver_subject
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.storage_engines import ENGINES, Storage
from tests.waiting import eventually

N = 600
RECIPIENTS = ("bz-justice", "bz-military", "bz-police")
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("BZ",),
)
ISTMO = str(Path(sys.executable).parent / "istmo")


def spawn_relay(
    stack: Stack, log: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``istmo relay``; with how many times the log said "relay connected" before."""
    ready = log.read_text().count("relay connected") if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                ISTMO,
                "relay",
                "--data-dir",
                str(stack.settings.data_dir),
                "--nats-url",
                nats_url(stack),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
    return proc, ready


async def start_relay(stack: Stack, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc, ready = spawn_relay(stack, log, env)

    def connected() -> bool:
        assert proc.poll() is None, log.read_text()[-2000:]
        return log.read_text().count("relay connected") > ready

    await eventually(connected, what="the relay to connect", context=log.read_text)
    return proc


def stored(stack: Stack) -> int:
    assert stack.registry is not None
    with stack.registry.session() as s:
        return int(s.exec(select(func.count()).select_from(BulletinRow)).one())


@pytest.mark.slow
@pytest.mark.parametrize(
    "storage",
    [
        ENGINES[0],
        # Over a minute of load: on PostgreSQL with the fault tests (`-m long`), where F-11
        # and F-12 also kill things under load.
        pytest.param("postgresql", id="postgresql", marks=[pytest.mark.postgres, pytest.mark.long]),
    ],
    indirect=True,
)
async def test_sigkill_relay_under_load_loses_and_duplicates_nothing(
    storage: Storage, tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    async with running_stack(
        tmp_path / "istmo", with_relay=False, database_url=storage.pg_url
    ) as stack:
        relay = await start_relay(stack, log, storage.env())
        try:
            async with await client(stack, "gt-police") as gt:
                keys = await gt.resolve(LABELS)
                assert sorted(keys) == list(RECIPIENTS)
                envelopes = [
                    seal(
                        content=Content(title=f"p-{i}", text=f"bulletin p-{i}"),
                        labels=LABELS,
                        originator=gt.agency,
                        signing_key=gt.keystore.signing_key(),
                        recipients=keys,
                        now=int(time.time()),
                    )
                    for i in range(N)
                ]
                attempted = {e.header.bulletin_id for e in envelopes}
                acked: set[str] = set()
                killed_at = None
                for start in range(0, N, 50):
                    chunk = envelopes[start : start + 50]
                    await asyncio.gather(*(gt._publish_envelope(e) for e in chunk))
                    acked |= {e.header.bulletin_id for e in chunk}
                    done = stored(stack)
                    if killed_at is None and done >= 150:
                        relay.send_signal(signal.SIGKILL)
                        relay.wait()
                        killed_at = done
                        relay = await start_relay(stack, log, storage.env())
            if killed_at is None:  # the relay was slower than the publisher: kill now
                await eventually(
                    lambda: stored(stack) >= 150, what="150 bulletins stored", context=log.read_text
                )
                relay.send_signal(signal.SIGKILL)
                relay.wait()
                killed_at = stored(stack)
                relay = await start_relay(stack, log, storage.env())
            assert killed_at < N, "the kill must land while bulletins are in flight"
            print(f"\nkilled the relay with {killed_at} of {N} bulletins stored")

            # Every acked bulletin is eventually accepted (redelivery after the ack wait).
            await eventually(
                lambda: stored(stack),
                until=lambda n: n >= N,
                what=f"all {N} bulletins stored",
                timeout=240,
                interval=0.5,
                context=log.read_text,
            )
            assert stored(stack) == N, log.read_text()[-3000:]

            # Each permitted recipient's application sees each bulletin exactly once.
            for agency in RECIPIENTS:
                seen: Counter[str] = Counter()

                async def app(b: ReceivedBulletin, seen: Counter[str] = seen) -> None:
                    seen[b.id] += 1

                async with await client(stack, agency) as rc:
                    await rc.receive(app, count=N, timeout=120, batch=100)
                    assert await rc.receive(app, count=1, timeout=1) == 0
                lost = acked - set(seen)
                unexpected = set(seen) - attempted
                dup_visible = sum(seen.values()) - len(seen)
                assert (len(lost), len(unexpected), dup_visible) == (0, 0, 0), agency

            # Nobody else got anything: the delivery stream holds only their subjects.
            nc = await stack.connect_relay(nats_url(stack))
            try:
                info = await nc.jetstream().stream_info(
                    DELIVER_STREAM, subjects_filter="istmo.deliver.>"
                )
                routine = {deliver_subject(a, Precedence.ROUTINE) for a in RECIPIENTS}
                assert set(info.state.subjects or {}) == routine
            finally:
                await nc.close()

            # One accepted and one decided event per bulletin (ADR 8), routed to each.
            assert stack.registry is not None
            with stack.registry.session() as s:
                counts = dict(
                    s.exec(select(AuditRow.type, func.count()).group_by(AuditRow.type)).all()
                )
            assert counts["bulletin.accepted"] == N
            assert counts["bulletin.decided"] == N
            assert "bulletin.routed" not in counts
            registry = stack.registry
            routed = {
                frozenset(r.agency for r in registry.decisions(bid) if r.allowed) for bid in acked
            }
            assert routed == {frozenset(RECIPIENTS)}
            assert "bulletin.rejected" not in counts
        finally:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(relay.pid, signal.SIGKILL)
                relay.wait()
