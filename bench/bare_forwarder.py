"""The bare forwarder: exactly the relay's NATS work, and nothing else.

    python -m bench.bare_forwarder --nats-url URL --seed-file FILE --recipients a,b,c

Pulls from the relay's shared ingest consumer (same durable, same batch size as the
relay's ``relay_batch``), publishes each message to ``istmo.deliver.<r>`` for every
recipient (``Nats-Msg-Id = <stream seq>:<r>``, awaiting JetStream's ack, concurrently, at
most ``IN_FLIGHT`` at once, as the relay does), publishes one event to the audit stream,
then acks the ingest message with ``ack_sync``. No parsing, verification, policy, or
audit store: the recipients come from the command line. The ratio of the real relay's
rate to this one's is the cost of security. Runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import nats
import nats.errors
from nats.aio.msg import Msg

from schemas.subjects import INGEST_STREAM, RELAY_INGEST_DURABLE, deliver_subject

BATCH = 64  # broker.config.Settings.relay_batch
# JetStream publishes awaiting their acks at once, as broker.relay.worker.IN_FLIGHT: without a
# cap a batch of 64 bulletins to 60 agencies made nats-server answer 429 (too many
# requests) and the forwarder never drained it.
IN_FLIGHT = 256


async def forward(url: str, seed: str, recipients: list[str]) -> None:
    stop = asyncio.Event()
    waiting: set[asyncio.Future[list[Msg]]] = set()  # a fetch that has taken nothing yet

    def on_signal() -> None:
        # Stop at once when idle (a fetch waiting for messages); a batch being forwarded
        # is finished and acked first.
        stop.set()
        for fetch in waiting:
            fetch.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    nc = await nats.connect(url, nkeys_seed_str=seed, name="bench-bare-forwarder")
    js = nc.jetstream(timeout=10)
    sub = await js.pull_subscribe_bind(RELAY_INGEST_DURABLE, stream=INGEST_STREAM)
    print("ready", flush=True)
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def publish(subject: str, data: bytes, msg_id: str) -> None:
        async with gate:
            await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})

    async def one(msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        await asyncio.gather(
            *(publish(deliver_subject(r), msg.data, f"{seq}:{r}") for r in recipients),
            publish(
                "istmo.audit.bench",
                b'{"type":"bulletin.accepted","seq":%d}' % seq,
                f"audit:{seq}",
            ),
        )

    try:
        while not stop.is_set():
            fetch = asyncio.ensure_future(sub.fetch(BATCH, timeout=0.5))
            waiting.add(fetch)
            try:
                msgs = await fetch
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                break  # stopped while idle
            finally:
                waiting.discard(fetch)
            try:
                await asyncio.gather(*(one(m) for m in msgs))
                await asyncio.gather(*(m.ack_sync() for m in msgs))
            except (nats.errors.Error, TimeoutError) as exc:
                # As the relay: the batch is not acked and comes back (at once: nak).
                print(f"batch of {len(msgs)} failed ({type(exc).__name__}: {exc}); nak", flush=True)
                await asyncio.gather(*(m.nak() for m in msgs), return_exceptions=True)
    finally:
        await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nats-url", required=True)
    ap.add_argument("--seed-file", type=Path, required=True)
    ap.add_argument("--recipients", required=True, help="comma-separated agency ids")
    args = ap.parse_args()
    recipients = [r for r in args.recipients.split(",") if r]
    asyncio.run(forward(args.nats_url, args.seed_file.read_text().strip(), recipients))


if __name__ == "__main__":
    main()
