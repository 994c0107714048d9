"""One active sequencer, elected through a NATS KV lease on the 3-node cluster.

Two ``istmo sequencer --standby`` processes compete for the lease while the broker runs
on the cluster (``istmo up`` itself stands aside: ``with_sequencer=False``). Audit events
are written into the outbox throughout. The tests SIGKILL the leader, and SIGSTOP it past
the lease's TTL and then SIGCONT it, and check that the standby took over, that the old
leader appended nothing after its pause, and that the log has every outbox row exactly once,
in order, and verifies. Takeover times are printed, not asserted (the bound below only
ends a hung run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.audit.log import AuditLog
from broker.audit.sequencer import DEFAULT_ORIGIN, log_verify_key
from broker.runtime.stack import Stack
from broker.store.registry import Registry
from schemas.audit import AuditEvent
from tests.cluster.conftest import running_cluster_stack
from tests.stackproc import pause
from tests.waiting import eventually

ISTMO = str(Path(sys.executable).parent / "istmo")
GIVE_UP_S = 120.0  # only so that a broken election ends the run


def events(n: int, start: int) -> list[AuditEvent]:
    return [
        AuditEvent(
            event_id=f"election-{i}",
            type="bulletin.accepted",
            time=1_767_225_600_000 + i,
            actor="gt-police",
            subject="gt-police",
            bulletin_id=f"00000000-0000-4000-8000-{i:012d}",
            data={"n": i},
        )
        for i in range(start, start + n)
    ]


def start_sequencer(stack: Stack, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                ISTMO,
                "sequencer",
                "--standby",
                "--batch",
                "50",
                "--data-dir",
                str(stack.settings.data_dir),
                "--nats-url",
                ",".join(stack.nats_urls),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def read(log: Path) -> str:
    return log.read_text()


async def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], count: int = 1) -> float:
    """Wait until ``text`` appears ``count`` times in ``log``; returns when (monotonic)."""

    def seen() -> bool:
        assert proc.poll() is None, read(log)[-2000:]
        return read(log).count(text) >= count

    await eventually(
        seen, what=f"{text!r} in {log.name}", timeout=GIVE_UP_S, context=lambda: read(log)
    )
    return time.monotonic()


def log_size(db: Path) -> int:
    with sqlite3.connect(db, timeout=10) as conn:
        row = conn.execute("SELECT COALESCE(MAX(tree_size), 0) FROM tree_head").fetchone()
        return int(row[0])


async def wait_size(db: Path, size: int) -> None:
    await eventually(
        lambda: log_size(db), until=lambda n: n >= size, what=f"a log of {size}", timeout=GIVE_UP_S
    )


def assert_log_complete(stack: Stack, total_new: int, before: int) -> None:
    """Every outbox row once, in seq order, no gap, and the whole log verifies."""
    db = stack.settings.data_dir / "istmo.db"
    with sqlite3.connect(db, timeout=60) as conn:
        rows = conn.execute('SELECT "index", event_seq FROM log_entry ORDER BY "index"').fetchall()
        outbox = [r[0] for r in conn.execute("SELECT seq FROM audit_event ORDER BY seq")]
    assert [r[0] for r in rows] == list(range(len(rows)))  # no gaps, no repeats
    assert [r[1] for r in rows] == outbox  # every outbox row exactly once, in order
    assert len(rows) == before + total_new
    log = AuditLog(stack.settings.db_url)
    try:
        key = log_verify_key(stack.settings.broker_dir)
        assert key is not None
        report = log.verify_all(key, DEFAULT_ORIGIN)
    finally:
        log.close()
    assert report.ok, report.first
    assert report.pending == 0


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Pair:
    """Two ``--standby`` sequencers on a running cluster stack: ``a`` leads, ``b`` stands by."""

    stack: Stack
    db: Path
    registry: Registry
    log_a: Path
    log_b: Path
    a: subprocess.Popen[bytes]
    b: subprocess.Popen[bytes]


@contextlib.asynccontextmanager
async def leader_and_standby(tmp_path: Path) -> AsyncIterator[Pair]:
    """A cluster stack without its own sequencer, and two sequencers: A leading (started
    first), then B standing by. Both are stopped at the end."""
    async with running_cluster_stack(tmp_path / "istmo", with_sequencer=False) as stack:
        registry = Registry(stack.settings.db_url)
        log_a, log_b = tmp_path / "seq-a.log", tmp_path / "seq-b.log"
        a = start_sequencer(stack, log_a)
        b = None
        try:
            await wait_for(log_a, "sequencer: leading", a)
            b = start_sequencer(stack, log_b)
            await wait_for(log_b, "standing by", b)
            yield Pair(stack, stack.settings.data_dir / "istmo.db", registry, log_a, log_b, a, b)
        finally:
            stop(a)
            if b is not None:
                stop(b)
            registry.close()


@pytest.mark.slow
async def test_standby_takes_over_when_the_leader_is_killed(tmp_path: Path) -> None:
    async with leader_and_standby(tmp_path) as pair:
        stack, db, registry = pair.stack, pair.db, pair.registry
        log_b, a, b = pair.log_b, pair.a, pair.b
        before = log_size(db)  # the demo directory's enrolments
        registry.record([], events(500, 0))
        await wait_size(db, before + 200)  # A is integrating
        registry.record([], events(500, 500))  # a backlog when A dies
        killed = time.monotonic()
        a.send_signal(signal.SIGKILL)
        a.wait()
        size_at_kill = log_size(db)
        registry.record([], events(500, 1000))  # writers go on
        took_over = await wait_for(log_b, "sequencer: leading", b)
        print(f"\ntakeover after SIGKILL: {took_over - killed:.2f} s (lease TTL 6 s)")
        await wait_size(db, before + 1500)
        assert size_at_kill < before + 1500
        assert_log_complete(stack, 1500, before)


@pytest.mark.slow
async def test_a_leader_paused_past_its_lease_appends_nothing_when_resumed(
    tmp_path: Path,
) -> None:
    async with leader_and_standby(tmp_path) as pair:
        stack, db, registry = pair.stack, pair.db, pair.registry
        log_a, log_b, a, b = pair.log_a, pair.log_b, pair.a, pair.b
        before = log_size(db)
        registry.record([], events(300, 0))
        await wait_size(db, before + 300)  # A drained the outbox and idles
        await asyncio.sleep(0.5)
        paused = time.monotonic()
        pause(a.pid)
        size_at_pause = log_size(db)
        took_over = await wait_for(log_b, "sequencer: leading", b)
        print(f"\ntakeover after SIGSTOP: {took_over - paused:.2f} s (lease TTL 6 s)")
        registry.record([], events(300, 300))
        await wait_size(db, before + 600)  # B integrates
        # A wakes with rows waiting in the outbox: it must stand down, not append.
        registry.record([], events(400, 600))
        a.send_signal(signal.SIGCONT)
        await wait_for(log_a, "standing down", a)
        await wait_for(log_a, "standing by", a, count=1)
        await wait_size(db, before + 1000)
        text = read(log_a)
        sizes = [int(s) for s in re.findall(r"lease lapsed at log size (\d+)", text)]
        # Its last batch is the one before the pause: nothing appended after it.
        assert sizes, text[-2000:]
        assert sizes[-1] <= size_at_pause, text[-2000:]
        assert a.poll() is None  # it stands by again, alive
        assert_log_complete(stack, 1000, before)
