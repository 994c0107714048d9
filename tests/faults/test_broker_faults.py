"""F-03: SIGSTOP a relay past the ack wait; F-16: the NATS store is full; F-17: the
database disk is full. Each under load, each checked with the catalogue's harness.

Shortened for the test, as an operator can (JetStream API): the relays' ingest ack wait
(3 s instead of 30 s, F-03 and F-17) and the ingest stream's byte limit (F-16, standing
in for a full JetStream volume: nats-server answers a publish the same way). F-17 puts the
SQLite database on its own 16 MiB tmpfs and fills it (root only; skipped otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js.api import ConsumerConfig

from schemas.subjects import INGEST_STREAM, RELAY_INGEST_DURABLE
from tests.faults.harness import (
    BZ_RECIPIENTS,
    Publisher,
    Recipient,
    RelayProcess,
    Target,
    all_seen,
    audit_rows,
    bz_load,
    check,
    connect,
    istmo,
    operator_connect,
    record_run,
    wait_until,
)
from tests.stackproc import UpProcess

pytestmark = [pytest.mark.slow, pytest.mark.long]

SHORT_ACK_WAIT_S = 3.0


async def shorten_ingest_ack_wait(target: Target) -> None:
    op = await operator_connect(target)
    try:
        js = op.jetstream(timeout=10)
        config: ConsumerConfig = (
            await js.consumer_info(INGEST_STREAM, RELAY_INGEST_DURABLE)
        ).config
        config.ack_wait = SHORT_ACK_WAIT_S
        await js.add_consumer(INGEST_STREAM, config)
    finally:
        await op.close()


async def test_f03_sigstop_relay_past_the_ack_wait(
    up_no_relay: UpProcess, tmp_path: Path, figures: Path
) -> None:
    rate, seconds, stop_s = 50, 12, 2 * SHORT_ACK_WAIT_S + 2
    target = Target.of_up(up_no_relay)
    stalled, other = (RelayProcess(target, tmp_path / f"relay-{i}.log") for i in (1, 2))
    stalled.start()
    other.start()
    try:
        await shorten_ingest_ack_wait(target)
        pub, recipients = await bz_load(target)
        done = asyncio.Event()

        async def stall() -> float:
            await asyncio.sleep(3)
            stalled.signal(signal.SIGSTOP)
            await asyncio.sleep(stop_s)
            stalled.signal(signal.SIGCONT)
            t0 = time.monotonic()
            await wait_until(lambda: all_seen(pub, recipients) and done.is_set(), timeout=60)
            return time.monotonic() - t0

        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for r in recipients:
                tg.create_task(r.run(stop))
            stalling = tg.create_task(stall())
            await pub.run(rate=rate, count=rate * seconds, duration=seconds + 10)
            done.set()
            settle = await stalling
            await asyncio.sleep(SHORT_ACK_WAIT_S + 1)  # late redeliveries would show now
            stop.set()
        report = await check(target, [pub], recipients)
        print("\n" + report.summary())
        print(f"stopped {stop_s}s (ack wait {SHORT_ACK_WAIT_S}s); settled {settle:.1f}s after")
        record_run(
            figures,
            "F-03",
            report,
            rate=rate,
            seconds=seconds,
            sigstop_s=stop_s,
            ack_wait_s=SHORT_ACK_WAIT_S,
            settled_after_sigcont_s=round(settle, 2),
        )
        assert report.ok, report.summary()
        for r in recipients:
            await r.client.close()
        await pub.client.close()
    finally:
        stalled.stop()
        other.stop()


async def test_f16_nats_store_full(up_no_relay: UpProcess, tmp_path: Path, figures: Path) -> None:
    target = Target.of_up(up_no_relay)
    relay = RelayProcess(target, tmp_path / "relay.log")
    relay.start()
    op = await operator_connect(target)
    js = op.jetstream(timeout=10)
    try:
        gt = await connect(target, "gt-police")
        pub = Publisher(gt, retries=1)
        assert await pub.prepare() == BZ_RECIPIENTS
        relay.stop()  # ingest accumulates while the store fills
        info = await js.stream_info(INGEST_STREAM)
        config = info.config
        config.max_bytes = info.state.bytes + 64 * 1024
        await js.update_stream(config)
        for _ in range(60):
            await pub.publish_one()
        assert pub.acked
        assert pub.unknown, "the store never filled up"
        errors = " | ".join(pub.errors)
        print(f"\nSDK errors while full: {errors}")
        assert "store is full" in errors
        full = await js.stream_info(INGEST_STREAM)
        assert full.state.messages == len(pub.acked)  # nothing half-stored

        # Space returns: the limit goes back, the relay comes back, publishers retry.
        t0 = time.monotonic()
        config.max_bytes = -1
        await js.update_stream(config)
        relay.start()
        await pub.retry_unknown()
        assert not pub.unknown, pub.errors
        recipients = [Recipient(a, await connect(target, a)) for a in BZ_RECIPIENTS]
        for r in recipients:
            assert await r.drain(pub.acked, timeout=60, quiet=0.5)
        recovery = time.monotonic() - t0
        report = await check(target, [pub], recipients)
        print(report.summary())
        record_run(
            figures,
            "F-16",
            report,
            refused_while_full=len(pub.attempted) - full.state.messages,
            stored_while_full=full.state.messages,
            recovery_s=round(recovery, 2),
        )
        assert report.ok, report.summary()
        for r in recipients:
            await r.client.close()
        await gt.close()
    finally:
        await op.close()
        relay.stop()


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("F-17 mounts a tmpfs for the database: needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path) -> Path:
    """Fill ``fs`` to the last byte with one file; returns it."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for block in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)
    return filler


async def test_f17_database_disk_full(
    tmp_path: Path, figures: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tmpfs(tmp_path / "dbfs", "16m") as fs:
        db_url = f"sqlite:///{fs / 'istmo.db'}"
        monkeypatch.setenv("ISTMO_DATABASE_URL", db_url)
        up = UpProcess(tmp_path / "istmo").start()
        try:
            target = Target.of_up(up, db_url=db_url)
            await shorten_ingest_ack_wait(target)
            pub, recipients = await bz_load(target)
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for r in recipients:
                    tg.create_task(r.run(stop))
                await pub.run(rate=20, count=20, duration=10)
                assert await wait_until(lambda: all_seen(pub, recipients), timeout=30), [
                    (len(r.visible), dict(r.errors)) for r in recipients
                ]
                filler = fill(fs)
                accepted_before = len(audit_rows(target, "bulletin.accepted"))
                # NATS still takes bulletins; the relay cannot record them, so it acks
                # nothing and delivers nothing (back-pressure), and does not die.
                await pub.run(rate=20, count=30, duration=10)
                await asyncio.sleep(2 * SHORT_ACK_WAIT_S)
                stuck = len(audit_rows(target, "bulletin.accepted"))
                delivered_while_full = sum(len(r.visible) for r in recipients) - 20 * 3
                assert up.proc is not None
                assert up.proc.poll() is None, up.output[-2000:]
                # The operator's alarm names the full volume.
                full = await asyncio.to_thread(istmo, target, "health", "--json")
                volume = {c["name"]: c for c in json.loads(full.stdout)["checks"]}[
                    "database.volume"
                ]
                assert full.returncode == 3, full.stdout + full.stderr
                assert volume["level"] == "alarm", volume
                assert str(fs) in volume["detail"]
                t0 = time.monotonic()
                filler.unlink()
                assert await wait_until(lambda: all_seen(pub, recipients), timeout=60)
                recovery = time.monotonic() - t0
                cleared = await asyncio.to_thread(istmo, target, "health", "--json")
                assert {c["name"]: c for c in json.loads(cleared.stdout)["checks"]}[
                    "database.volume"
                ]["level"] in ("ok", "warn")  # 16 MiB holding the database
                await asyncio.sleep(1.0)
                stop.set()
            report = await check(target, [pub], recipients)
            print("\n" + report.summary())
            print(f"accepted while full: {stuck - accepted_before}; recovery {recovery:.1f}s")
            record_run(
                figures,
                "F-17",
                report,
                rate=20,
                published_while_full=30,
                accepted_while_full=stuck - accepted_before,
                delivered_while_full=delivered_while_full,
                recovery_s=round(recovery, 2),
            )
            # SQLite first fills the free pages it already holds; then it refuses, and the
            # relay records, delivers and acks nothing more until space returns.
            assert stuck - accepted_before < 30
            assert delivered_while_full <= (stuck - accepted_before) * len(BZ_RECIPIENTS)
            assert report.ok, report.summary()
            for r in recipients:
                await r.client.close()
            await pub.client.close()
        finally:
            up.stop()
