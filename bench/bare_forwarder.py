"""The bare forwarder: exactly the relay's NATS work, and nothing else.

    python -m bench.bare_forwarder --nats-url URL --seed-file FILE --recipients a,b,c

Pulls from the relay's shared ingest consumer (same durable, same batch size as the
relay's ``relay_batch``) and, as the relay does, stores the whole fetched batch's
deliveries (one to ``istmo.deliver.<r>`` for every recipient, ``Nats-Msg-Id = <stream
seq>:<r>``) and one more message per bulletin (an event on the audit stream, for the
relay's archive copy) as JetStream atomic batches with the relay's own publisher
(``broker.bus.batch.publish_batch``, the two streams at once), then acks the ingest
messages as plain publishes with one flush; like the relay, it fetches the next batch
while one is flushed (``broker.bus.pipeline``, the relay's depth). No parsing,
verification, policy, or audit store: the recipients come from the command line. The
ratio of the real relay's rate to this one's is the cost of security. Runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import nats
import nats.errors
from nats.aio.msg import Msg

from broker.bus.batch import Message, publish_batch
from broker.bus.pipeline import Pipeline
from broker.relay.worker import PIPELINE_DEPTH
from schemas.labels import Precedence
from schemas.subjects import (
    AUDIT_STREAM,
    DELIVER_STREAM,
    INGEST_STREAM,
    RELAY_INGEST_DURABLE,
    deliver_subject,
)

BATCH = 64  # broker.config.Settings.relay_batch


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

    async def forward_batch(msgs: list[Msg]) -> None:
        deliveries, events = [], []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            deliveries += [
                Message(deliver_subject(r, Precedence.ROUTINE), msg.data, f"{seq}:{r}")
                for r in recipients
            ]
            event = b'{"type":"bulletin.accepted","seq":%d}' % seq
            events.append(Message("istmo.audit.bench", event, f"audit:{seq}"))
        await asyncio.gather(
            publish_batch(nc, AUDIT_STREAM, events),
            publish_batch(nc, DELIVER_STREAM, deliveries),
        )

    async def forward_and_ack(msgs: list[Msg]) -> None:
        try:
            await forward_batch(msgs)
        except (nats.errors.Error, TimeoutError) as exc:
            # As the relay: the batch is not acked and comes back.
            print(f"batch of {len(msgs)} failed ({type(exc).__name__}: {exc}); nak", flush=True)
            await asyncio.gather(*(m.nak() for m in msgs), return_exceptions=True)
            return
        # As the relay: acks as plain publishes, written out with one flush.
        for m in msgs:
            await m.ack()
        await nc.flush()

    # As the relay: the next batch is fetched while this one's flush and acks are awaited.
    tails = Pipeline(PIPELINE_DEPTH)
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
            await tails.add(forward_and_ack(msgs))
    finally:
        await tails.drain()
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
