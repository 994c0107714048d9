"""3. Latency: ``publish()`` returned in the SDK -> the recipient's application has the
decrypted, verified bulletin, at fixed offered loads; and bare JetStream publish -> pull
delivery in the same run, on the same nats-server.

Open-loop pacing: send ``i`` is started at ``t0 + i / rate`` whether or not earlier ones
have finished (at most ``MAX_IN_FLIGHT`` at once), for a bounded duration (``WINDOW_S``:
shorter at 1,000/s, a load the relay cannot keep up with, where a longer window only
lengthens the queue); the achieved rate is reported next to the offered one. Istmo:
gt-police publishes 2 KiB bulletins (drug-trafficking, RESTRICTED, TLP AMBER, releasable
to BZ: 3 recipients) with one ``istmo relay`` process running, and bz-police's SDK
receives them (``receive``, batch 16) in a process of its own (``bench/receiver.py``), as
a recipient ministry's application does on its own machine (until 2026-12-06 it shared
the benchmark's process and event loop with the publisher, which at 200/s became the
bottleneck; arrival and publish times are both ``time.perf_counter()``, one clock for
the machine on Linux); gt-police's client has heard
the relays' announcement before the load starts, as a long-running client has. Bare: a file stream
``BENCH_BARE`` with one durable pull consumer; the reader fetches as the SDK does.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from bench.context import Context
from bench.harness import BODY, BenchStack, Proc, empty_queue, stop_receiver
from bench.stats import drift, latency_summary
from bench.timing import phase
from clients.sdk import IstmoClient
from schemas.labels import Classification, Labels, Tlp
from schemas.subjects import INGEST_STREAM, RELAY_INGEST_DURABLE

NAME = "latency"
TITLE = "3. Publish -> application latency"
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("BZ",),
)
REUSES_RELAY = True  # the relay item 2 left running (one is started if none runs)
LOADS = (50, 200, 1000)
# quick? -> offered load -> seconds it is offered for (the same for Istmo and bare)
# Full mode: long enough that a level which does not settle shows it (``drift``): with 2 s
# windows at 200/s the p50 looked settled, with 6-8 s it kept growing (BENCHMARKS.md).
WINDOW_S = {True: {50: 0.6, 200: 0.5, 1000: 0.15}, False: {50: 6.0, 200: 8.0, 1000: 0.5}}
MAX_IN_FLIGHT = 256


async def paced(rate: float, seconds: float, send: Callable[[int], Awaitable[None]]) -> dict:  # type: ignore[type-arg]
    """Start ``send(i)`` at ``t0 + i / rate`` for ``seconds``; returns sent count and rate."""
    total = int(rate * seconds)
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    done = 0
    failed = 0

    async def one(i: int) -> None:
        nonlocal done, failed
        try:
            await send(i)
            done += 1
        except Exception:
            failed += 1
        finally:
            gate.release()

    t0 = time.perf_counter()
    hard_stop = t0 + seconds * 3 + 5  # bounded even when the sender cannot keep up
    async with asyncio.TaskGroup() as tg:
        for i in range(total):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() > hard_stop:
                break
            await gate.acquire()
            tg.create_task(one(i))
    elapsed = time.perf_counter() - t0
    return {
        "offered_per_s": rate,
        "offered": total,
        "sent": done,
        "failed": failed,
        "achieved_per_s": round(done / elapsed, 1),
    }


async def wait_relay_idle(js, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await js.consumer_info(INGEST_STREAM, RELAY_INGEST_DURABLE)
        if not info.num_pending and not info.num_ack_pending:
            return
        await asyncio.sleep(0.1)


async def istmo_level(
    stack: BenchStack,
    rate: float,
    seconds: float,
    tag: str,
    wait_s: float = 45,
    load_phase: str = "istmo loads",
) -> dict:  # type: ignore[type-arg]
    """One offered load through Istmo; its steps are timed as phases, the load itself
    (and the wait for its last arrivals) as ``load_phase``."""
    sent: dict[str, float] = {}
    arrivals = stack.root / f"arrivals-{tag.strip('-')}.txt"

    def got() -> dict[str, float]:
        seen: dict[str, float] = {}
        for line in arrivals.read_text().splitlines() if arrivals.exists() else ():
            bid, _, at = line.partition(" ")
            with contextlib.suppress(ValueError):
                seen[bid] = float(at)
        return seen

    async with await stack.client("gt-police") as gt:

        async def send(i: int) -> None:
            r = await gt.publish(title=f"{tag}{i}", text=BODY, labels=LABELS, wait=False)
            sent[r.bulletin_id] = time.perf_counter()

        with phase("empty the recipient's queue"):
            async with await stack.client("bz-police") as bz:
                left_over = await empty_queue(stack, bz)
        with phase("start the receiver"):
            receiver = start_receiver(stack, "bz-police", arrivals)
        try:
            with phase("hear the relays' announcement"):
                await announced(gt)
            with phase(load_phase):
                pacing = await paced(rate, seconds, send)
                deadline = time.monotonic() + wait_s  # bounded: an overloaded relay drops out
                while time.monotonic() < deadline and not set(sent) <= set(got()):
                    await asyncio.sleep(0.05)
        finally:
            with phase("stop the receiver"):
                receiver.stop()
    arrived = got()
    lat = [arrived[b] - t for b, t in sent.items() if b in arrived]  # in the order sent
    return {
        **pacing,
        **latency_summary(lat),
        **drift(lat),
        "window_s": seconds,
        "received": len(lat),
        "dropped_first": left_over,
    }


def start_receiver(stack: BenchStack, agency: str, out: Path) -> Proc:
    """``agency``'s application in a process of its own (``bench/receiver.py``), receiving
    and writing each bulletin's arrival to ``out``; started once it is receiving."""
    argv = [sys.executable, "-m", "bench.receiver", "--keystore", str(stack.keystore(agency))]
    argv += ["--nats-url", stack.nats_url, "--out", str(out)]
    argv += ["--dedupe", str(stack.root / f"{agency}.received.sqlite")]
    proc = Proc(f"{stack.name}: {agency} receiver", argv, stack.root / f"{out.stem}.log")
    proc.graceful = True
    proc.start()
    proc.wait_for("receiving", 60)
    return proc


async def announced(client: IstmoClient, timeout: float = 20.0) -> None:
    """Wait until ``client`` has heard the relays' announcement (at most one interval,
    5 s by default): an application's client, connected for a while, uses its resolve
    answers again (ADR 0009); one that has not heard it yet asks the relay before each
    bulletin, which is not the steady state this item measures."""
    cache = client.resolve_cache
    deadline = time.monotonic() + timeout
    while cache is not None and cache.versions is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def bare_level(js, rate: float, seconds: float, tag: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    body = BODY.encode()
    sub = await js.pull_subscribe_bind("bench-bare", stream="BENCH_BARE")
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(16, timeout=0.5)
            except TimeoutError:
                continue
            now = time.perf_counter()
            for m in msgs:
                got[m.metadata.sequence.stream] = now
                await m.ack()

    async def send(i: int) -> None:
        ack = await js.publish(f"bench.bare.{tag}", body)
        sent[ack.seq] = time.perf_counter()

    task = asyncio.create_task(reader())
    try:
        pacing = await paced(rate, seconds, send)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(sent) <= set(got):
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await stop_receiver(task)  # not waiting out its fetch (0.5 s a load)
        await sub.unsubscribe()
    lat = [got[s] - t for s, t in sent.items() if s in got]  # in the order sent
    return {
        **pacing,
        **latency_summary(lat),
        **drift(lat),
        "window_s": seconds,
        "received": len(lat),
    }


async def run(ctx: Context) -> dict[str, object]:
    stack = ctx.demo_stack()
    windows = WINDOW_S[ctx.quick]
    op = await stack.operator()
    js = op.jetstream(timeout=10)
    await js.add_stream(
        StreamConfig(name="BENCH_BARE", subjects=["bench.bare.>"], storage=StorageType.FILE)
    )
    await js.add_consumer(
        "BENCH_BARE", ConsumerConfig(durable_name="bench-bare", ack_policy=AckPolicy.EXPLICIT)
    )
    istmo_rows, bare_rows = [], []
    try:
        for rate in LOADS:
            with phase("bare JetStream loads"):
                b = await bare_level(js, rate, windows[rate], f"l{rate}")
            bare_rows.append(b)
            print(f"  bare JetStream at {rate}/s: {b}", flush=True)
        stack.ensure_relays(1)
        for rate in LOADS:
            with phase("wait for an idle relay"):
                await wait_relay_idle(js, float(ctx.pick(20, 30)))
            r = await istmo_level(stack, rate, windows[rate], f"l{rate}-", float(ctx.pick(15, 30)))
            istmo_rows.append(r)
            print(f"  istmo at {rate}/s: {r}", flush=True)
            stack.sample_peaks()
        with phase("wait for an idle relay"):
            await wait_relay_idle(js, 60)
    except BaseException:
        stack.stop_workers()
        raise
    finally:
        await js.delete_stream("BENCH_BARE")
        await op.close()
    ctx.note_self()
    return {
        "seconds_per_load": {str(rate): windows[rate] for rate in LOADS},
        "relay_processes": 1,
        "recipients": 3,
        "istmo": istmo_rows,
        "bare_jetstream": bare_rows,
    }
