"""The bare backbone of item 10 (broadcast): one message reaching N pull consumers of a
JetStream stream, with nothing of Istmo's in the way. ``python -m bench.bare_broadcast
[N ...] [--rounds R] [--ack later]``.

A fresh nats-server from the pinned wheel (JetStream on file, ``sync_interval: always``,
loopback, its own port) gets a stream and N durable pull consumers shaped like Istmo's
urgent consumers: each filters its own agency's FLASH and IMMEDIATE subjects and a group
epoch's two subjects, explicit acks. This process (over one connection per 200
consumers, as ``bench.broadcast`` does) puts one ``MSG.NEXT`` request on each, then
publishes one message of ``--size`` bytes on the group's FLASH subject and notes when each
consumer's copy arrives: p50, p99 and max from the publish, and when JetStream stored it.
``--ack now`` acks each copy as it arrives (as a recipient does); ``--ack later`` acks
them all once every copy is in, to see what the acks cost the fan-out.

It prints one JSON line per N; nothing is written to ``bench/results``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from broker.bus.server import find_nats_server, server_environment

STREAM = "BARE_DELIVER"
GROUP_SUBJECT = "bare.deliver.group.G.1"
PER_CONNECTION = 200


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def _start(root: Path, sync: str) -> tuple[subprocess.Popen[bytes], str]:
    conf = root / "nats.conf"
    conf.write_text(
        "listen: 127.0.0.1:-1\n"
        f'jetstream {{ store_dir: "{root / "js"}", sync_interval: {sync} }}\n'
        "max_payload: 2MB\n"
    )
    log = root / "nats.log"
    proc = subprocess.Popen(
        [str(find_nats_server(None)), "-c", str(conf), "-l", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=server_environment(),  # as the stack runs it
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        found = re.search(r"Listening for client connections on 127\.0\.0\.1:(\d+)", text)
        if found and "Server is ready" in text:
            return proc, f"nats://127.0.0.1:{found.group(1)}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nats-server did not start: " + log.read_text()[-2000:])


async def _consumers(nc: NATS, n: int, one_filter: bool) -> list[str]:
    js = nc.jetstream(timeout=60)
    await js.add_stream(
        StreamConfig(
            name=STREAM,
            subjects=["bare.deliver.*.*", "bare.deliver.group.*.*.*"],
            storage=StorageType.FILE,
            max_consumers=20_000,
        )
    )
    names = [f"a{i:05d}" for i in range(n)]
    sem = asyncio.Semaphore(64)

    async def add(name: str) -> None:
        async with sem:
            await js.add_consumer(
                STREAM,
                ConsumerConfig(
                    durable_name=f"urgent-{name}",
                    filter_subjects=[f"{GROUP_SUBJECT}.flash"]
                    if one_filter
                    else [
                        f"bare.deliver.{name}.flash",
                        f"bare.deliver.{name}.immediate",
                        f"{GROUP_SUBJECT}.flash",
                        f"{GROUP_SUBJECT}.immediate",
                    ],
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=30,
                ),
            )

    await asyncio.gather(*(add(x) for x in names))
    return names


async def _round(
    ncs: list[NATS], names: list[str], size: int, ack_later: bool
) -> tuple[list[float], float]:
    """Arrival ms of each consumer's copy from the publish, and when it was stored."""
    arrived: dict[str, float] = {}
    replies: list[tuple[NATS, str]] = []
    stored = 0.0
    done = asyncio.Event()

    def on_msg_for(name: str, rc: NATS) -> Callable[[Msg], Awaitable[None]]:
        async def on_msg(msg: Msg) -> None:
            nonlocal stored
            if not msg.data:
                return
            arrived.setdefault(name, time.perf_counter())
            if msg.reply:
                stored = msg.metadata.timestamp.timestamp()
                if ack_later:
                    replies.append((rc, msg.reply))
                else:
                    await rc.publish(msg.reply, b"+ACK")
            if len(arrived) == len(names):
                done.set()

        return on_msg

    subs = []
    body = json.dumps({"batch": 1, "expires": 60_000_000_000}).encode()
    for i, name in enumerate(names):
        rc = ncs[i % len(ncs)]
        inbox = f"_INBOX.bare.{name}"
        subs.append(await rc.subscribe(inbox, cb=on_msg_for(name, rc)))
        await rc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.urgent-{name}", body, reply=inbox)
    for rc in ncs:
        await rc.flush(timeout=60)
    t0, wall0 = time.perf_counter(), time.time()
    await ncs[0].jetstream().publish(f"{GROUP_SUBJECT}.flash", b"x" * size)
    await asyncio.wait_for(done.wait(), 120)
    for rc, reply in replies:
        await rc.publish(reply, b"+ACK")
    for sub in subs:
        await sub.unsubscribe()
    for rc in ncs:
        await rc.flush(timeout=60)
    return [(t - t0) * 1000 for t in arrived.values()], (stored - wall0) * 1000


async def measure(
    n: int, rounds: int, size: int, ack_later: bool, one_filter: bool = False, sync: str = "always"
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="istmo-bare-broadcast-") as tmp:
        proc, url = _start(Path(tmp), sync)
        try:
            ncs = [await nats.connect(url) for _ in range(max(1, -(-n // PER_CONNECTION)))]
            try:
                names = await _consumers(ncs[0], n, one_filter)
                ms: list[float] = []
                stored: list[float] = []
                for _ in range(rounds):
                    got, at = await _round(ncs, names, size, ack_later)
                    ms += got
                    stored.append(at)
            finally:
                for nc in ncs:
                    await nc.close()
        finally:
            proc.kill()  # its store is thrown away with the directory
            proc.wait(timeout=30)
    return {
        "consumers": n,
        "rounds": rounds,
        "bytes": size,
        "ack": "later" if ack_later else "now",
        "filters": 1 if one_filter else 4,
        "sync_interval": sync,
        "stored_p50_ms": round(_pct(stored, 0.5), 1),
        "delivered_p50_ms": round(_pct(ms, 0.5), 1),
        "delivered_p99_ms": round(_pct(ms, 0.99), 1),
        "delivered_max_ms": round(max(ms), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, nargs="*", default=[3500])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--ack", choices=("now", "later"), default="now")
    ap.add_argument("--one-filter", action="store_true", help="the group's subject only")
    ap.add_argument("--sync", default="always", help="JetStream's sync_interval (e.g. 2m)")
    args = ap.parse_args()
    for n in args.n:
        row = asyncio.run(
            measure(n, args.rounds, args.size, args.ack == "later", args.one_filter, args.sync)
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
