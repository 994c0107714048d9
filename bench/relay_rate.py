"""One relay-rate measurement: seal a backlog, publish it, start the workers, time the
drain of the shared ingest consumer. Items 1, 2, 7 and 9 use it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bench.harness import BenchStack, drain, publish_backlog, purge_ingest, seal_backlog
from clients.sdk import IstmoClient
from schemas.errors import BusUnavailable
from schemas.keys import EncryptionPublicKey
from schemas.labels import Labels

__all__ = ["backlog_rate", "resolve_with_relay"]


async def backlog_rate(
    stack: BenchStack,
    sender: IstmoClient,
    recipients: dict[str, EncryptionPublicKey],
    bulletins: int,
    start_workers: Callable[[], object],
    *,
    timeout: float,
    labels: Labels | None = None,
) -> dict[str, object]:
    """Bulletins per second the workers ``start_workers`` starts take off a backlog of
    ``bulletins`` (each sealed for ``recipients``). The workers are stopped and whatever a
    time-capped run left is purged before returning."""
    kw = {"labels": labels} if labels is not None else {}
    envs = seal_backlog(sender, recipients, bulletins, **kw)  # type: ignore[arg-type]
    pub_s = await publish_backlog(sender, envs)
    op = await stack.operator()
    try:
        js = op.jetstream(timeout=10)
        start_workers()
        result = await drain(js, bulletins, timeout=timeout, stack=stack)
        said = [
            line[-300:]
            for w in stack.workers
            for line in w.output().splitlines()
            if "WARNING" in line or "ERROR" in line or "failed" in line
        ]
        if said:
            result["worker_warnings"] = said[-3:]  # what the workers logged, for the reader
        stack.stop_workers()
        if not result["drained"]:
            await purge_ingest(js)
    finally:
        stack.stop_workers()
        await op.close()
    result["backlog"] = bulletins
    result["ingest_publish_per_s"] = round(bulletins / pub_s, 1)
    return result


async def resolve_with_relay(
    stack: BenchStack, client: IstmoClient, labels: Labels
) -> dict[str, EncryptionPublicKey]:
    """``client.resolve(labels)``: the relay answers agency requests, so start one for the
    question if none runs (and stop it again, leaving the ingest consumer idle)."""
    started = not stack.workers
    if started:
        stack.start_relays(1)
    try:
        for _ in range(50):  # "relay connected" is printed just before it subscribes
            try:
                return dict(await client.resolve(labels))
            except BusUnavailable:
                await asyncio.sleep(0.2)
        return dict(await client.resolve(labels))
    finally:
        if started:
            stack.stop_workers()
