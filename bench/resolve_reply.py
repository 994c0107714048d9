"""How big the answer to "who may receive this?" is, and what a publish costs, at about 100
recipients (ADR 14). A script, not part of the bench report:

    python -m bench.resolve_reply [--agencies 140] [--rounds 20]

It starts the whole broker in this process (nats-server, relay, API) on a synthetic
directory (``bench/synthetic_directory.py``), then, as one agency publishing to every
agency the wide labels reach (``bench.harness.WIDE_LABELS``):

* the raw bytes of each answer the relay gives over NATS: ``resolve`` (recipients with
  their keys, a signed excerpt) and, on a broker that has it, ``recipients`` (ids only);
* the relay's cost of each answer (decide, sign, encode), in this process;
* ``resolve`` latency asking the relay every time (``resolve_cache=False``);
* ``publish`` latency (seal for every recipient, store, no wait for the relay's verdict),
  median and p90 over ``--rounds``: the first publish of a new client, publishes that ask
  the relay every time (``resolve_cache=False``), publishes whose answer is kept, and the
  first publish after one recipient rotated its keys.

It runs against whatever ``broker`` and ``clients`` are importable, so the same script
measures before and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.harness import WIDE_LABELS
from bench.synthetic_directory import write_policy_dir
from broker.bus.server import ANY_PORT, free_port
from broker.config import Settings
from broker.relay.agency_api import AgencyApi
from broker.runtime.stack import Stack
from clients.sdk import IstmoClient
from schemas.agency import ResolveRequest, encode_reply, encode_request
from schemas.subjects import API_OPS, api_subject

SENDER = "s0001-police"


async def _until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return {
        "min_ms": round(ordered[0] * 1000, 2),
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(p90 * 1000, 2),
    }


async def _timed(rounds: int, once: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    samples = []
    for n in range(rounds):
        started = time.perf_counter()
        await once(n)
        samples.append(time.perf_counter() - started)
    return _ms(samples)


async def _build(api: AgencyApi, op: str, ask: bytes) -> None:
    answer = api.handle(api_subject(SENDER, op), ask, now=int(time.time()))
    encode_reply(answer)


async def measure(stack: Stack, url: str, rounds: int) -> dict[str, Any]:
    keystore = stack.settings.keys_dir / f"{SENDER}.json"
    out: dict[str, Any] = {}
    ask = encode_request(ResolveRequest(labels=WIDE_LABELS))
    async with await IstmoClient.connect(keystore, url, resolve_cache=False) as raw:
        nc = raw._nc
        for op in ("resolve", "recipients"):
            if op not in API_OPS:
                continue
            reply = await nc.request(api_subject(SENDER, op), ask, timeout=10)
            out[f"{op}_reply_bytes"] = len(reply.data)
            if op == "resolve":
                out["recipients"] = len(json.loads(reply.data)["recipients"])

    async def publish(client: IstmoClient, n: int) -> None:
        await client.publish(title=f"t{n}", text="measured", labels=WIDE_LABELS, wait=False)

    # A new client's first publish (nothing known yet), once per round.
    firsts = []
    for n in range(max(3, rounds // 4)):
        async with await IstmoClient.connect(keystore, url) as fresh:
            started = time.perf_counter()
            await publish(fresh, n)
            firsts.append(time.perf_counter() - started)
    out["publish_first"] = _ms(firsts)

    # The relay's side alone, in this process: decide, build and encode each answer.
    assert stack.registry is not None
    assert stack.directory is not None
    api = AgencyApi(stack.settings, stack.registry, stack.directory)
    for op in ("resolve", "recipients"):
        if op in API_OPS:
            out[f"{op}_answer_built"] = await _timed(
                rounds,
                lambda _n, op=op: _build(api, op, ask),  # type: ignore[misc]
            )

    async with await IstmoClient.connect(keystore, url, resolve_cache=False) as uncached:
        await publish(uncached, -1)
        out["resolve_asking_every_time"] = await _timed(
            rounds, lambda _n: uncached.resolve(WIDE_LABELS)
        )
        out["publish_asking_every_time"] = await _timed(rounds, lambda n: publish(uncached, n))

    async with await IstmoClient.connect(keystore, url) as cached:
        cache = cached.resolve_cache
        assert cache is not None
        await _until(lambda: cache.versions is not None, "an announcement")
        await publish(cached, -1)
        out["publish_kept_answer"] = await _timed(rounds, lambda n: publish(cached, n))

        # One recipient rotates its keys: the next publish asks again.
        rotated = []
        recipients = sorted(await cached.resolve(WIDE_LABELS))
        for n in range(max(3, rounds // 4)):
            who = recipients[n % len(recipients)]
            before = cache.versions
            async with await IstmoClient.connect(
                stack.settings.keys_dir / f"{who}.json", url
            ) as other:
                await other.rotate_keys()
            await _until(
                lambda before=before: cache.versions not in (None, before),  # type: ignore[misc]
                "the new directory",
            )
            started = time.perf_counter()
            await publish(cached, n)
            rotated.append(time.perf_counter() - started)
        out["publish_after_a_rotation"] = _ms(rotated)
    return out


async def main_async(agencies: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="istmo-resolve-reply-") as tmp:
        root = Path(tmp)
        settings = Settings(
            data_dir=root / "istmo",
            policy_dir=write_policy_dir(root / "policies", agencies),
            nats_port=ANY_PORT,
            nats_http_port=ANY_PORT,
            api_port=free_port(),
        )
        stack = Stack(settings, out=lambda _line: None)
        stack.prepare()
        stop = asyncio.Event()
        up = asyncio.create_task(stack.up(stop))
        try:
            await _until(lambda: (root / "istmo" / "stack.json").exists() or up.done(), "stack")
            if up.done():
                up.result()
            result = await measure(stack, stack.nats_urls[0], rounds)
        finally:
            stop.set()
            await up
        return {"agencies": agencies, "rounds": rounds, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agencies", type=int, default=140)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.agencies, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
