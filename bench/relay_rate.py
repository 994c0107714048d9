"""One relay-rate measurement: seal a backlog, publish it, let the workers drain it, time
the drain of the shared ingest consumer. Items 1, 2, 7 and 9 use it.

The relays' ingest consumer is paused (a JetStream consumer pause) while the backlog is
sealed and published, so the workers can start meanwhile, or already run from an earlier
measurement, without taking a bulletin before the whole backlog is there. The backlog's
last bulletin is published just after the pause is lifted: a new message makes
nats-server hand the backlog to the workers' waiting pull requests at once (lifting the
pause alone does not: a worker would take its first batch only at its next pull, up to
0.5 s later). The drain is timed from its first take to its last ack (``drain``: each
end between two polls of the consumer, the first look being that last publish).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from nats.js import JetStreamContext

from bench.harness import (
    BenchStack,
    cpu_s,
    drain,
    publish_backlog,
    purge_ingest,
    seal_backlog,
)
from clients.sdk import IstmoClient
from schemas.errors import BusUnavailable
from schemas.keys import EncryptionPublicKey
from schemas.labels import Labels
from schemas.subjects import INGEST_STREAM, RELAY_INGEST_DURABLE

__all__ = ["backlog_rate", "pause_ingest", "resolve_with_relay", "resume_ingest"]

_FOREVER = "2099-01-01T00:00:00Z"


async def pause_ingest(js: JetStreamContext) -> None:
    """Hold the relays' ingest consumer: nothing is handed to a worker until resumed."""
    await js.pause_consumer(INGEST_STREAM, RELAY_INGEST_DURABLE, _FOREVER)


async def resume_ingest(js: JetStreamContext) -> None:
    await js.resume_consumer(INGEST_STREAM, RELAY_INGEST_DURABLE)


async def backlog_rate(
    stack: BenchStack,
    sender: IstmoClient,
    recipients: dict[str, EncryptionPublicKey],
    bulletins: int,
    start_workers: Callable[[], object],
    *,
    timeout: float,
    labels: Labels | None = None,
    keep_workers: bool = False,
    senders: Sequence[IstmoClient] = (),
) -> dict[str, object]:
    """Bulletins per second the workers take off a backlog of ``bulletins`` (each sealed
    for ``recipients``), from ``sender``, or from ``sender`` and ``senders`` in turn (each
    bulletin from the next originator, as a region's traffic comes).

    ``start_workers`` (called in a thread while the backlog is sealed and published)
    starts the workers, or makes sure they run (``stack.ensure_relays``). They are stopped
    before returning, unless ``keep_workers`` and the backlog was drained; whatever a
    time-capped run left is purged.
    """
    kw = {"labels": labels} if labels is not None else {}
    op = await stack.operator()
    try:
        js = op.jetstream(timeout=10)
        await pause_ingest(js)
        try:
            starting = asyncio.create_task(asyncio.to_thread(start_workers))
            try:
                # Round robin: bulletin i from originator i mod k.
                everyone, k = [sender, *senders], 1 + len(senders)
                sealed = [
                    seal_backlog(c, recipients, len(range(i, bulletins, k)), **kw)  # type: ignore[arg-type]
                    for i, c in enumerate(everyone)
                ]
                envs = [sealed[i % k][i // k] for i in range(bulletins)]
                by = [everyone[i % k] for i in range(bulletins)] if senders else []
                pub_s = await publish_backlog(sender, envs[:-1], by=by[:-1])
            finally:
                await starting
        finally:
            await resume_ingest(js)
        released = time.perf_counter()
        cpu_before = _cpu(stack)
        pub_s += await publish_backlog(sender, envs[-1:], by=by[-1:])
        result = await drain(js, bulletins, timeout=timeout, stack=stack, released=released)
        result["cpu_ms_per_bulletin"] = _cpu_per_bulletin(cpu_before, _cpu(stack), bulletins)
        said = [
            line[-300:]
            for w in stack.workers
            for line in w.output().splitlines()
            if "WARNING" in line or "ERROR" in line or "failed" in line
        ]
        if said:
            result["worker_warnings"] = said[-3:]  # what the workers logged, for the reader
        if not (keep_workers and result["drained"]):
            stack.stop_workers()
        if not result["drained"]:
            await purge_ingest(js)
    except BaseException:
        stack.stop_workers()
        raise
    finally:
        await op.close()
    result["backlog"] = bulletins
    result["ingest_publish_per_s"] = round(bulletins / pub_s, 1)
    return result


def _cpu(stack: BenchStack) -> dict[str, float]:
    """CPU seconds used so far by the workers (summed), by nats-server and by ``istmo up``
    (the API and the sequencer, which writes the relays' audit events to the log)."""
    workers = [cpu_s(w.pid) for w in stack.workers if w.alive()]
    seen = {"workers": sum(c for c in workers if c is not None)}
    nats = cpu_s(stack.nats_server_pid())
    if nats is not None:
        seen["nats_server"] = nats
    up = cpu_s(stack.up.pid) if stack.up is not None and stack.up.alive() else None
    if up is not None:
        seen["up"] = up
    return seen


def _cpu_per_bulletin(
    before: dict[str, float], after: dict[str, float], bulletins: int
) -> dict[str, float]:
    """Milliseconds of CPU a bulletin cost each side while the backlog drained: where the
    time goes on a machine whose cores the relays and nats-server share (the clock tick
    is 10 ms, so a small backlog gives a rough figure)."""
    return {
        k: round((after[k] - before[k]) * 1000 / max(bulletins, 1), 3) for k in after if k in before
    }


async def resolve_with_relay(
    stack: BenchStack, client: IstmoClient, labels: Labels, *, keep_relay: bool = False
) -> dict[str, EncryptionPublicKey]:
    """``client.resolve(labels)``: the relay answers agency requests, so start one for the
    question if none runs (and stop it again unless ``keep_relay``). The answer is kept
    on the stack: the same question is asked of the relay once per stack."""
    key = (client.agency, labels)
    if key in stack.resolved:
        return dict(stack.resolved[key])
    started = not any(w.alive() for w in stack.workers)
    if started:
        stack.ensure_relays(1)
    try:
        # "relay connected" is printed just before it subscribes: retry for a while.
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = dict(await client.resolve(labels))
                break
            except BusUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        if started and not keep_relay:
            stack.stop_workers()
    stack.resolved[key] = answer
    return dict(answer)
